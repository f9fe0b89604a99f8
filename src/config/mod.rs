//! The config file, in two stages: a raw serde mirror of the TOML (unknown keys rejected, every
//! value that needs checking kept with its position), then [`Config`], the validated runtime
//! form with parsed addresses, loaded certificates and compiled routes. Nothing downstream sees a
//! raw string.
//!
//! Validation does not stop at the first problem: every problem found is collected, each naming
//! the file, the key, the line and column, and what to do, so `certgate check` can list them all.
//!
//! Each section is checked and built in a file named for it (`tls`, `upstream`, `routes`,
//! `limits`, `queue`, `auth`, `shared`, `headers`, `enroll`, `console`); this file keeps
//! [`Config`], loading, the error type, and the helpers every section shares (positions,
//! durations, sizes, addresses, paths).

use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use std::sync::Arc;

use http::{HeaderName, HeaderValue};
use toml::Spanned;

mod auth;
mod console;
mod enroll;
mod headers;
mod limits;
mod queue;
mod raw;
mod routes;
mod shared;
mod tls;
mod upstream;

pub use limits::Limits;
use raw::*;

use crate::ops::logging::LogFormat;
use crate::policy::access::IpList;
use crate::policy::forward_auth::ForwardAuthConfig;
use crate::policy::jwt::JwtVerifier;
use crate::policy::ratelimit::RateLimitZone;
use crate::policy::routes::{Route, RouteError};
use crate::policy::shared::SharedConfig;
use crate::queue::QueueSettings;
use crate::tls::Tls;
use crate::tls::identity::HeaderNames;
use crate::upstream::Upstream;

/// Where `certgate run` and `check` look when neither `-c` nor `$CERTGATE_CONFIG` is given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/certgate/certgate.toml";

/// Long enough for a model inference to finish after SIGTERM, short enough for systemd's
/// default 90 s stop timeout.
const DEFAULT_SHUTDOWN_TIMEOUT: &str = "30s";
/// How often the reload watcher looks for changed files: cheap (a hash of a few small files)
/// and quick enough that a revoked client is out within seconds of the new CRL landing.
const DEFAULT_RELOAD_WATCH: &str = "10s";

/// Everything that can go wrong loading a config. Callers branch on it for the exit code.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file itself could not be read.
    #[error("{}: cannot read config file: {source}", path.display())]
    Read {
        /// The config file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file was read but is not a valid config; every problem found is listed.
    #[error("{}", ProblemList(.0))]
    Invalid(Vec<Problem>),
}

struct ProblemList<'a>(&'a [Problem]);

impl fmt::Display for ProblemList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        write!(
            f,
            "{n} problem{} in the configuration",
            if n == 1 { "" } else { "s" }
        )?;
        for p in self.0 {
            write!(f, "\n  {p}")?;
        }
        Ok(())
    }
}

/// One thing wrong with the configuration, with where it is.
#[derive(Debug, Clone)]
pub struct Problem {
    /// The config file.
    pub file: PathBuf,
    /// Line and column (1-based) of the offending value in the config file, when known.
    pub at: Option<(usize, usize)>,
    /// The dotted key, e.g. `tls.cert` or `route[2].path`.
    pub key: String,
    /// What is wrong and, where it helps, what to do.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some((line, col)) = self.at {
            write!(f, ":{line}:{col}")?;
        }
        if self.key.is_empty() {
            write!(f, ": {}", self.message)
        } else {
            write!(f, ": {}: {}", self.key, self.message)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Stage 2: the validated runtime config.

/// The validated configuration.
#[derive(Debug)]
pub struct Config {
    /// The file it was loaded from.
    pub path: PathBuf,
    /// `[listen]`
    pub listen: Listen,
    /// `[tls]`, with every file loaded.
    pub tls: Tls,
    /// `[upstream]`: the default group.
    pub upstream: Upstream,
    /// `[upstreams.NAME]`, by name.
    pub upstreams: Vec<Upstream>,
    /// `[headers]`
    pub headers: HeaderNames,
    /// `[[route]]`, compiled, in file order.
    pub routes: Vec<Route>,
    /// `[log]`
    pub log: Log,
    /// `[limits]`
    pub limits: Limits,
    /// `[access] allow_ips`
    pub allow_ips: IpList,
    /// `[[rate_limit]]` zones, in file order (routes refer to them by index).
    pub rate_limits: Vec<RateLimitZone>,
    /// `[[queue]]`, in file order (routes refer to them by index).
    pub queues: Vec<QueueSettings>,
    /// `[jwt]`, with its keys loaded.
    pub jwt: Option<Arc<JwtVerifier>>,
    /// `[forward_auth]`
    pub forward_auth: Option<ForwardAuthConfig>,
    /// `[shared]`: rate limits kept in Redis.
    pub shared: Option<SharedConfig>,
    /// `[response_headers]`, merged with the defaults.
    pub response_headers: Vec<(HeaderName, HeaderValue)>,
    /// `[admin] listen`
    pub admin: Option<SocketAddr>,
    /// `[reload] watch`; `None` when off.
    pub reload_watch: Option<Duration>,
    /// Every file this config was built from (itself included), for the reload watcher.
    pub files: Vec<PathBuf>,
    /// `[sandbox] landlock`
    pub landlock: bool,
    /// `[enroll] dir`: where invitations wait for their one download.
    pub enroll: Option<PathBuf>,
    /// `[console]`: the operator's page on the main listener.
    pub console: Option<crate::console::Settings>,
}

/// `[listen]`, validated.
#[derive(Debug, Clone)]
pub struct Listen {
    /// HTTPS listener address.
    pub https: SocketAddr,
    /// Plain-HTTP redirect listener address.
    pub http_redirect: Option<SocketAddr>,
    /// Grace period for requests in flight at shutdown.
    pub shutdown_timeout: Duration,
}

/// `[log]`, validated.
#[derive(Debug, Clone, Copy)]
pub struct Log {
    /// Text or JSON.
    pub format: LogFormat,
    /// One line per request.
    pub access: bool,
}

impl Config {
    /// What the request policy is built from.
    pub fn policy_settings(&self) -> crate::policy::Settings<'_> {
        crate::policy::Settings {
            routes: &self.routes,
            zones: &self.rate_limits,
            queues: &self.queues,
            jwt: self.jwt.as_ref(),
            forward_auth: self.forward_auth.as_ref(),
            max_body: self.limits.max_body,
            shared: self.shared.as_ref(),
        }
    }

    /// Reads, parses and validates the config file and every file it names.
    ///
    /// # Errors
    /// [`ConfigError::Read`] when the file cannot be read, [`ConfigError::Invalid`] with every
    /// problem found otherwise.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_str(&text, path)
    }

    /// Parses and validates config text that was read from `path` (used for messages and to
    /// resolve relative paths).
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] with every problem found.
    pub fn from_str(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let mut v = Validator {
            files: vec![path.to_path_buf()],
            file: path.to_path_buf(),
            text,
            base: path
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from(".")),
            problems: Vec::new(),
        };
        let raw: RawConfig = match toml::from_str(text) {
            Ok(raw) => raw,
            Err(e) => {
                let at = e.span().map(|s| v.line_col(s.start));
                v.problems.push(Problem {
                    file: v.file.clone(),
                    at,
                    key: String::new(),
                    message: e.message().trim().to_string(),
                });
                return Err(ConfigError::Invalid(v.problems));
            }
        };
        let config = v.validate(raw);
        match config {
            Some(c) if v.problems.is_empty() => Ok(c),
            _ => Err(ConfigError::Invalid(v.problems)),
        }
    }
}

/// What routes may refer to.
struct Known<'a> {
    zones: &'a [RateLimitZone],
    queues: &'a [QueueSettings],
    jwt: bool,
    forward_auth: bool,
    /// `[upstreams.NAME]` names, in the order the forwarder holds them (after the default).
    groups: &'a [&'a str],
}

struct Validator<'a> {
    /// Every file read, for the reload watcher.
    files: Vec<PathBuf>,
    file: PathBuf,
    text: &'a str,
    base: PathBuf,
    problems: Vec<Problem>,
}

impl Validator<'_> {
    fn line_col(&self, offset: usize) -> (usize, usize) {
        let before = &self.text[..offset.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        (line, col)
    }

    fn problem(&mut self, key: &str, span: Option<Range<usize>>, message: impl Into<String>) {
        let at = span.map(|s| self.line_col(s.start));
        self.problems.push(Problem {
            file: self.file.clone(),
            at,
            key: key.to_string(),
            message: message.into(),
        });
    }

    fn duration(&mut self, key: &str, value: Option<&Spanned<String>>, default: &str) -> Duration {
        let Some(value) = value else {
            // Defaults are constants that parse; a failure here is a bug caught by the tests.
            return humantime::parse_duration(default).unwrap_or(Duration::from_secs(30));
        };
        match humantime::parse_duration(value.get_ref().trim()) {
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                self.problem(key, Some(value.span()), "must be longer than zero");
                Duration::from_secs(1)
            }
            Err(e) => {
                self.problem(
                    key,
                    Some(value.span()),
                    format!(
                        "invalid duration {:?} ({e}); write it like \"500ms\", \"30s\" or \"5m\"",
                        value.get_ref()
                    ),
                );
                Duration::from_secs(1)
            }
        }
    }

    fn addr(&mut self, key: &str, value: &Spanned<String>) -> Option<SocketAddr> {
        match value.get_ref().trim().parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.problem(
                    key,
                    Some(value.span()),
                    format!(
                        "invalid address {:?}; write IP:PORT like \"0.0.0.0:443\" or \"[::]:443\"",
                        value.get_ref()
                    ),
                );
                None
            }
        }
    }

    fn path(&self, value: &Spanned<String>) -> PathBuf {
        let p = Path::new(value.get_ref());
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }

    fn read_file(&mut self, key: &str, value: &Spanned<String>) -> Option<(PathBuf, Vec<u8>)> {
        let path = self.path(value);
        self.files.push(path.clone());
        match std::fs::read(&path) {
            Ok(bytes) => Some((path, bytes)),
            Err(e) => {
                self.problem(
                    key,
                    Some(value.span()),
                    format!("{}: cannot read: {e}", path.display()),
                );
                None
            }
        }
    }

    fn validate(&mut self, raw: RawConfig) -> Option<Config> {
        // [listen]
        let https = self.addr("listen.https", &raw.listen.https);
        let http_redirect = raw
            .listen
            .http_redirect
            .as_ref()
            .and_then(|v| self.addr("listen.http_redirect", v));
        let shutdown_timeout = self.duration(
            "listen.shutdown_timeout",
            raw.listen.shutdown_timeout.as_ref(),
            DEFAULT_SHUTDOWN_TIMEOUT,
        );

        // [tls]
        let tls = self.tls(&raw.tls);

        // [upstream] and [upstreams.NAME]
        let upstream = self.upstream("upstream", "default", &raw.upstream);
        let mut upstreams = Vec::new();
        for (name, group) in &raw.upstreams {
            if let Some(g) = self.upstream(&format!("upstreams.{name}"), name, group) {
                upstreams.push(g);
            }
        }

        // [headers]
        let headers = self.headers(&raw.headers);

        let limits = self.limits(&raw.limits);
        let allow_ips = self.ip_list("access.allow_ips", &raw.access.allow_ips);
        let rate_limits = self.rate_limits(&raw.rate_limits);
        let queues = self.queues(&raw.queues);
        let shared = raw.shared.as_ref().and_then(|s| self.shared(s));
        let jwt = raw.jwt.as_ref().and_then(|j| self.jwt(j));
        let forward_auth = raw.forward_auth.as_ref().and_then(|f| self.forward_auth(f));
        let response_headers = self.response_headers(raw.response_headers.as_ref());
        let admin = raw
            .admin
            .as_ref()
            .and_then(|a| self.addr("admin.listen", &a.listen));
        let reload_watch = match &raw.reload.watch {
            Some(v) if v.get_ref().trim() == "off" => None,
            other => Some(self.duration("reload.watch", other.as_ref(), DEFAULT_RELOAD_WATCH)),
        };

        // [[route]]: a section that is present but has problems of its own is reported once,
        // there; routes that use it are not told it is missing.
        let groups: Vec<&str> = raw.upstreams.keys().map(String::as_str).collect();
        let known = Known {
            zones: &rate_limits,
            queues: &queues,
            jwt: raw.jwt.is_some(),
            forward_auth: raw.forward_auth.is_some(),
            groups: &groups,
        };
        let mut routes = Vec::new();
        for (i, r) in raw.routes.iter().enumerate() {
            match Route::new(r.path.get_ref(), r.action) {
                Ok(mut route) => {
                    route.label = format!("route[{i}] {}", route.path).into();
                    self.route_rules(i, r, &mut route, &known);
                    routes.push(route);
                }
                Err(e @ RouteError::Invalid { .. }) => self.problem(
                    &format!("route[{i}].path"),
                    Some(r.path.span()),
                    e.to_string(),
                ),
            }
        }

        let enroll = raw.enroll.as_ref().and_then(|e| self.enroll(e, &raw.tls));
        let console = raw.console.as_ref().and_then(|c| self.console(c, &routes));

        let log = Log {
            format: raw.log.format,
            access: raw.log.access.unwrap_or(true),
        };

        Some(Config {
            path: self.file.clone(),
            listen: Listen {
                https: https?,
                http_redirect,
                shutdown_timeout,
            },
            tls: tls?,
            upstream: upstream?,
            upstreams,
            headers,
            routes,
            log,
            limits,
            allow_ips,
            rate_limits,
            queues,
            shared,
            jwt,
            forward_auth,
            response_headers,
            admin,
            reload_watch,
            files: std::mem::take(&mut self.files),
            landlock: raw.sandbox.landlock.unwrap_or(true),
            enroll,
            console,
        })
    }

    fn size(&mut self, key: &str, value: Option<&Spanned<String>>, default: &str) -> u64 {
        let parse = |s: &str| s.trim().parse::<bytesize::ByteSize>().map(|b| b.as_u64());
        let Some(value) = value else {
            return parse(default).unwrap_or(50 << 20);
        };
        match parse(value.get_ref()) {
            Ok(n) if n > 0 => n,
            _ => {
                self.problem(
                    key,
                    Some(value.span()),
                    format!(
                        "invalid size {:?}; write it like \"50MiB\", \"512KiB\" or \"1GB\"",
                        value.get_ref()
                    ),
                );
                1
            }
        }
    }

    fn ip_list(&mut self, key: &str, items: &[Spanned<String>]) -> IpList {
        let strings: Vec<&str> = items.iter().map(|i| i.get_ref().as_str()).collect();
        match IpList::parse(&strings) {
            Ok(l) => l,
            Err((i, msg)) => {
                self.problem(key, Some(items[i].span()), msg);
                IpList::default()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::tls::DEFAULT_HANDSHAKE_TIMEOUT;
    use super::upstream::{
        DEFAULT_CONNECT_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_RESPONSE_TIMEOUT,
    };
    use super::*;

    pub(super) fn problems(text: &str) -> Vec<Problem> {
        match Config::from_str(text, Path::new("/nonexistent/certgate.toml")) {
            Err(ConfigError::Invalid(p)) => p,
            other => panic!("expected problems, got {other:?}"),
        }
    }

    #[test]
    fn unknown_key_names_line_and_column() {
        let p = problems(
            "[listen]\nhttps = \"127.0.0.1:8443\"\nhttpz = 1\n[tls]\ncert=\"a\"\nkey=\"b\"\nclient_ca=\"c\"\n",
        );
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].at, Some((3, 1)));
        assert!(p[0].message.contains("httpz"), "{}", p[0].message);
    }

    #[test]
    fn every_problem_is_listed_not_just_the_first() {
        let p = problems(
            "[listen]\nhttps = \"nope\"\nshutdown_timeout = \"soon\"\n[tls]\ncert=\"a.crt\"\nkey=\"b.key\"\nclient_ca=\"c.crt\"\nhandshake_timeout=\"10 parsecs\"\n",
        );
        let keys: Vec<_> = p.iter().map(|p| p.key.as_str()).collect();
        for k in [
            "listen.https",
            "listen.shutdown_timeout",
            "tls.cert",
            "tls.key",
            "tls.client_ca",
            "tls.handshake_timeout",
        ] {
            assert!(keys.contains(&k), "{k} missing from {keys:?}");
        }
        let dur = p
            .iter()
            .find(|p| p.key == "listen.shutdown_timeout")
            .unwrap();
        assert_eq!(dur.at, Some((3, 20)));
    }

    #[test]
    fn default_durations_parse() {
        for d in [
            DEFAULT_SHUTDOWN_TIMEOUT,
            DEFAULT_HANDSHAKE_TIMEOUT,
            DEFAULT_CONNECT_TIMEOUT,
            DEFAULT_RESPONSE_TIMEOUT,
            DEFAULT_IDLE_TIMEOUT,
        ] {
            assert!(humantime::parse_duration(d).is_ok(), "{d}");
        }
    }

    /// Each section's validation, one bad value at a time: the problem names the key, says what
    /// is wrong, and points at a line inside the section that holds it.
    #[test]
    fn each_bad_value_is_named_with_its_key_and_line() {
        let base =
            "[listen]\nhttps = \"127.0.0.1:8443\"\n[tls]\ncert=\"a\"\nkey=\"b\"\nclient_ca=\"c\"\n";
        let base_lines = base.lines().count();
        let cases: &[(&str, &str, &str)] = &[
            (
                "[limits]\nmax_body = \"lots\"",
                "limits.max_body",
                "invalid size",
            ),
            (
                "[limits]\nhandshake_failures_per_ip = \"20 per minute\"",
                "limits.handshake_failures_per_ip",
                "20 per minute",
            ),
            (
                "[access]\nallow_ips = [\"10.0.0.0/33\"]",
                "access.allow_ips",
                "neither an IP address nor a CIDR block",
            ),
            ("[upstream]\nurl = \"ftp://x\"", "upstream.url", "ftp://x"),
            (
                "[headers]\nverify = \"bad header\"",
                "headers.verify",
                "not a valid header name",
            ),
            (
                "[headers]\nprofile = \"apache\"",
                "headers.profile",
                "apache",
            ),
            (
                "[[route]]\npath = \"api\"\naction = \"deny\"",
                "route[0].path",
                "not a usable route path",
            ),
            (
                "[[route]]\npath = \"/a\"\naction = \"allow\"\nmethods = []",
                "route[0].methods",
                "at least one method",
            ),
            (
                "[[route]]\npath = \"/a\"\naction = \"allow\"\nstrip_prefix = \"/b\"",
                "route[0].strip_prefix",
                "must be a plain path",
            ),
            (
                "[[route]]\npath = \"/a\"\naction = \"allow\"\nauth = \"jwt\"",
                "route[0].auth",
                "needs a [jwt] section",
            ),
            (
                "[[route]]\npath = \"/a\"\naction = \"allow\"\nrate_limit = \"nope\"",
                "route[0].rate_limit",
                "no [[rate_limit]] zone named",
            ),
            (
                "[[queue]]\nname = \"gpu\"\nslots = 0",
                "queue[0].slots",
                "at least 1",
            ),
            (
                "[[queue]]\nname = \"gpu\"\nmax_wait = \"forever\"",
                "queue[0].max_wait",
                "forever",
            ),
            (
                "[[route]]\npath = \"/a\"\naction = \"allow\"\nqueue = \"gpu\"",
                "route[0].queue",
                "no [[queue]] named \"gpu\" (queues: none)",
            ),
            (
                "[[queue]]\nname = \"gpu\"\nkey = \"subject\"\n[[route]]\npath = \"/a\"\naction = \"allow\"\nqueue = \"gpu\"",
                "route[0].queue",
                "no auth to give a subject",
            ),
            (
                "[[queue]]\nname = \"gpu\"\nprotocol = \"gradio\"\n[[route]]\npath = \"/gradio_api\"\naction = \"allow\"\nqueue = \"gpu\"",
                "route[0].queue",
                "not a Gradio queue join or REST call",
            ),
            ("[reload]\nwatch = \"often\"", "reload.watch", "often"),
            ("[admin]\nlisten = \"nowhere\"", "admin.listen", "nowhere"),
        ];
        for (section, key, says) in cases {
            let p = problems(&format!("{base}{section}\n"));
            let found = p
                .iter()
                .find(|p| p.key == *key)
                .unwrap_or_else(|| panic!("no problem for {key} in {p:?}"));
            assert!(found.message.contains(says), "{key}: {}", found.message);
            let (line, _) = found
                .at
                .unwrap_or_else(|| panic!("{key}: no line and column"));
            assert!(
                line > base_lines,
                "{key}: line {line} is not in its section"
            );
            let others: Vec<_> = p
                .iter()
                .filter(|p| !p.key.starts_with("tls.") && p.key != *key)
                .collect();
            assert!(others.is_empty(), "{key}: unrelated problems {others:?}");
        }
    }
}
