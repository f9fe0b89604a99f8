//! The config file, in two stages: a raw serde mirror of the TOML (unknown keys rejected, every
//! value that needs checking kept with its position), then [`Config`], the validated runtime
//! form with parsed addresses, loaded certificates and compiled routes. Nothing downstream sees a
//! raw string.
//!
//! Validation does not stop at the first problem: every problem found is collected, each naming
//! the file, the key, the line and column, and what to do, so `certgate check` can list them all.

use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use std::num::NonZeroU32;
use std::sync::Arc;

use http::{HeaderName, HeaderValue};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use toml::Spanned;

mod raw;

use raw::*;

use crate::ops::logging::LogFormat;
use crate::policy::access::IpList;
use crate::policy::forward_auth::ForwardAuthConfig;
use crate::policy::jwt::{JwtSettings, JwtVerifier};
use crate::policy::ratelimit::{Rate, RateLimitZone};
use crate::policy::routes::{Action, Auth, IdentityAllow, Route, RouteError};
use crate::policy::shared::{OnUnavailable, SharedConfig};
use crate::queue::QueueSettings;
use crate::tls::identity::HeaderNames;
use crate::tls::{ClientAuth, OnFailure, Tls, TlsVersion};
use crate::upstream::{Balance, HealthSettings, ServerSettings, Upstream};

/// Where `certgate run` and `check` look when neither `-c` nor `$CERTGATE_CONFIG` is given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/certgate/certgate.toml";

/// Security headers added to every response unless the backend set them (nginx
/// `add_header ... always`); HSTS only when configured, since it outlives a mistake.
const DEFAULT_RESPONSE_HEADERS: &[(&str, &str)] = &[
    ("x-frame-options", "DENY"),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
];

/// Long enough for a model inference to finish after SIGTERM, short enough for systemd's
/// default 90 s stop timeout.
const DEFAULT_SHUTDOWN_TIMEOUT: &str = "30s";
/// nginx's `ssl_handshake_timeout` default is 60 s; 10 s is plenty for a real client and limits
/// what a slow-loris costs before it has proven anything.
const DEFAULT_HANDSHAKE_TIMEOUT: &str = "10s";
/// The usual place of a Gradio app.
const DEFAULT_UPSTREAM_URL: &str = "http://127.0.0.1:7860";
/// nginx `keepalive 32` in the classic guide.
const DEFAULT_MAX_IDLE: usize = 32;
/// A shared check adds a round trip to Redis to a request; past this, the replica decides
/// alone (spec §12).
const DEFAULT_SHARED_TIMEOUT: &str = "25ms";
const DEFAULT_SHARED_PREFIX: &str = "certgate:";
/// Gradio forgets a session about an hour after the browser left; a binding outlives that.
const DEFAULT_AFFINITY_TIMEOUT: &str = "60m";
/// nginx's `max_fails=1 fail_timeout=10s`, with three failures: one refused connect during a
/// backend restart should not take a server out.
const DEFAULT_MAX_FAILS: u32 = 3;
const DEFAULT_FAIL_TIMEOUT: &str = "10s";
/// Active checks (HAProxy's `inter 2s rise 2 fall 3`, slower: a WebUI is not a database).
const DEFAULT_HEALTH_INTERVAL: &str = "5s";
const DEFAULT_HEALTH_TIMEOUT: &str = "2s";
const DEFAULT_HEALTH_RISE: u32 = 2;
const DEFAULT_HEALTH_FALL: u32 = 3;
/// nginx's `proxy_connect_timeout` default.
const DEFAULT_CONNECT_TIMEOUT: &str = "30s";
/// nginx's `proxy_read_timeout` default; a model that takes longer should stream.
const DEFAULT_RESPONSE_TIMEOUT: &str = "60s";
/// nginx's `proxy_read_timeout` applies between reads too; Gradio's SSE heartbeat is 15 s.
const DEFAULT_IDLE_TIMEOUT: &str = "60s";
/// The classic guide's `client_max_body_size 50M`; nginx's own 1 MiB default breaks image
/// uploads to a WebUI.
const DEFAULT_MAX_BODY: &str = "50MiB";
/// One job at a time: a GPU that runs one inference at once.
const DEFAULT_QUEUE_SLOTS: usize = 1;
/// One running job per person: the others wait their turn.
const DEFAULT_QUEUE_PER_IDENTITY: usize = 1;
/// Enough for a batch of a few jobs; a flood beyond it is refused, so memory stays bounded.
const DEFAULT_QUEUE_MAX_WAITING: usize = 16;
/// A person behind a few long jobs still gets an answer, and a dead backend frees the wait.
const DEFAULT_QUEUE_MAX_WAIT: &str = "10m";
/// Far above what one machine's backend can serve, low enough to keep file descriptors for
/// the admin side and the backend pool.
const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// A browser opens at most ~6 HTTP/1.1 connections per host; 256 leaves room for NAT.
const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 256;
/// nginx's `client_header_timeout` is 60 s; a real client sends its head at once.
const DEFAULT_HEADER_READ_TIMEOUT: &str = "30s";
/// How often the reload watcher looks for changed files: cheap (a hash of a few small files)
/// and quick enough that a revoked client is out within seconds of the new CRL landing.
const DEFAULT_RELOAD_WATCH: &str = "10s";
/// nginx's `keepalive_timeout` default.
const DEFAULT_KEEPALIVE_TIMEOUT: &str = "75s";
/// nginx's `send_timeout` default.
const DEFAULT_SEND_TIMEOUT: &str = "60s";
/// nginx's `client_body_timeout` default: a client on a slow link still sends something every
/// few seconds, and one that sends nothing for a minute has gone or is holding a backend
/// connection open on purpose.
const DEFAULT_BODY_TIMEOUT: &str = "60s";
/// A browser that lacks the right certificate fails a handful of times; a scanner fails
/// thousands. 20 a minute costs a few milliseconds of CPU per minute per address.
const DEFAULT_HANDSHAKE_FAILURES: &str = "20/m";
/// Clock skew tolerated on `exp`/`nbf`.
const DEFAULT_JWT_LEEWAY: &str = "30s";
/// nginx's `auth_request` has no own timeout; a token check that takes longer is broken.
const DEFAULT_FORWARD_AUTH_TIMEOUT: &str = "5s";

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

/// `[limits]`, validated.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest request body, bytes.
    pub max_body: u64,
    /// Open connections, whole daemon.
    pub max_connections: usize,
    /// Open connections per client IP.
    pub max_connections_per_ip: usize,
    /// HTTP/1 request-head deadline.
    pub header_read_timeout: Duration,
    /// Idle connection deadline.
    pub keepalive_timeout: Duration,
    /// `[limits] send_timeout`: a client that takes nothing of what certgate sends for this
    /// long is disconnected (nginx `send_timeout`).
    pub send_timeout: Duration,
    /// `[limits] body_timeout`: the longest silence between two reads of a request body
    /// (nginx `client_body_timeout`); the client then gets 408.
    pub body_timeout: Duration,
    /// Failed handshakes allowed per IP.
    pub handshake_failures_per_ip: Rate,
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

    fn certs(
        &mut self,
        key: &str,
        value: &Spanned<String>,
    ) -> Option<(PathBuf, Vec<CertificateDer<'static>>)> {
        let (path, bytes) = self.read_file(key, value)?;
        let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(&bytes).collect();
        let msg = match certs {
            Ok(c) if c.is_empty() => {
                "no PEM certificate (-----BEGIN CERTIFICATE-----) found".into()
            }
            Ok(c) => match c.iter().enumerate().find_map(|(i, der)| {
                x509_parser::parse_x509_certificate(der)
                    .err()
                    .map(|e| format!("certificate #{} is not valid X.509: {e}", i + 1))
            }) {
                None => return Some((path, c)),
                Some(m) => m,
            },
            Err(e) => format!("not a valid PEM certificate file: {e}"),
        };
        self.problem(
            key,
            Some(value.span()),
            format!("{}: {msg}", path.display()),
        );
        None
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

    fn count(&mut self, key: &str, v: Option<&Spanned<usize>>, default: usize) -> usize {
        match v {
            None => default,
            Some(n) if *n.get_ref() > 0 => *n.get_ref(),
            Some(n) => {
                self.problem(key, Some(n.span()), "must be at least 1");
                default
            }
        }
    }

    fn limits(&mut self, raw: &RawLimits) -> Limits {
        Limits {
            max_body: self.size("limits.max_body", raw.max_body.as_ref(), DEFAULT_MAX_BODY),
            max_connections: self.count(
                "limits.max_connections",
                raw.max_connections.as_ref(),
                DEFAULT_MAX_CONNECTIONS,
            ),
            max_connections_per_ip: self.count(
                "limits.max_connections_per_ip",
                raw.max_connections_per_ip.as_ref(),
                DEFAULT_MAX_CONNECTIONS_PER_IP,
            ),
            header_read_timeout: self.duration(
                "limits.header_read_timeout",
                raw.header_read_timeout.as_ref(),
                DEFAULT_HEADER_READ_TIMEOUT,
            ),
            keepalive_timeout: self.duration(
                "limits.keepalive_timeout",
                raw.keepalive_timeout.as_ref(),
                DEFAULT_KEEPALIVE_TIMEOUT,
            ),
            send_timeout: self.duration(
                "limits.send_timeout",
                raw.send_timeout.as_ref(),
                DEFAULT_SEND_TIMEOUT,
            ),
            body_timeout: self.duration(
                "limits.body_timeout",
                raw.body_timeout.as_ref(),
                DEFAULT_BODY_TIMEOUT,
            ),
            handshake_failures_per_ip: match &raw.handshake_failures_per_ip {
                None => Rate::parse(DEFAULT_HANDSHAKE_FAILURES).unwrap_or(Rate {
                    count: NonZeroU32::MIN,
                    per: Duration::from_secs(3),
                }),
                Some(v) => Rate::parse(v.get_ref()).unwrap_or_else(|m| {
                    self.problem("limits.handshake_failures_per_ip", Some(v.span()), m);
                    Rate {
                        count: NonZeroU32::MIN,
                        per: Duration::from_secs(3),
                    }
                }),
            },
        }
    }

    fn rate_limits(&mut self, raw: &[RawRateLimit]) -> Vec<RateLimitZone> {
        let mut zones: Vec<RateLimitZone> = Vec::new();
        for (i, z) in raw.iter().enumerate() {
            let name = z.name.get_ref().trim().to_string();
            if name.is_empty() || zones.iter().any(|other| other.name == name) {
                self.problem(
                    &format!("rate_limit[{i}].name"),
                    Some(z.name.span()),
                    format!("{name:?}: zone names must be unique and not empty"),
                );
            }
            let rate = match Rate::parse(z.rate.get_ref()) {
                Ok(r) => r,
                Err(m) => {
                    self.problem(&format!("rate_limit[{i}].rate"), Some(z.rate.span()), m);
                    continue;
                }
            };
            let burst = match &z.burst {
                None => NonZeroU32::MIN,
                Some(b) => NonZeroU32::new(*b.get_ref()).unwrap_or_else(|| {
                    self.problem(
                        &format!("rate_limit[{i}].burst"),
                        Some(b.span()),
                        "must be at least 1",
                    );
                    NonZeroU32::MIN
                }),
            };
            let local = match z.scope.as_ref().map(|s| s.get_ref().as_str()) {
                None | Some("shared") => false,
                Some("local") => true,
                Some(other) => {
                    self.problem(
                        &format!("rate_limit[{i}].scope"),
                        z.scope.as_ref().map(Spanned::span),
                        format!("{other:?}: use \"shared\" or \"local\""),
                    );
                    false
                }
            };
            zones.push(RateLimitZone {
                local,
                name,
                key_by: z.key,
                rate,
                burst,
            });
        }
        zones
    }

    fn queues(&mut self, raw: &[RawQueue]) -> Vec<QueueSettings> {
        let mut queues: Vec<QueueSettings> = Vec::new();
        for (i, q) in raw.iter().enumerate() {
            let key = |k: &str| format!("queue[{i}].{k}");
            let name = q.name.get_ref().trim().to_string();
            if name.is_empty() || queues.iter().any(|other| other.name == name) {
                self.problem(
                    &key("name"),
                    Some(q.name.span()),
                    format!("{name:?}: queue names must be unique and not empty"),
                );
            }
            queues.push(QueueSettings {
                name,
                slots: self.count(&key("slots"), q.slots.as_ref(), DEFAULT_QUEUE_SLOTS),
                per_identity: self.count(
                    &key("per_identity"),
                    q.per_identity.as_ref(),
                    DEFAULT_QUEUE_PER_IDENTITY,
                ),
                max_waiting: self.count(
                    &key("max_waiting"),
                    q.max_waiting.as_ref(),
                    DEFAULT_QUEUE_MAX_WAITING,
                ),
                max_wait: self.duration(
                    &key("max_wait"),
                    q.max_wait.as_ref(),
                    DEFAULT_QUEUE_MAX_WAIT,
                ),
                key: q
                    .key
                    .as_ref()
                    .map_or(crate::queue::KeyBy::Client, |k| *k.get_ref()),
                protocol: q
                    .protocol
                    .as_ref()
                    .map_or(crate::queue::Protocol::Http, |p| *p.get_ref()),
            });
        }
        queues
    }

    /// `[shared]`. The password (in `password_file`, or in the URL) never reaches a message.
    fn shared(&mut self, raw: &RawShared) -> Option<SharedConfig> {
        let url = raw.redis.get_ref().trim();
        let shown = redact_password(url);
        let info = match redis::IntoConnectionInfo::into_connection_info(url) {
            Ok(info) => Some(info),
            Err(e) => {
                self.problem(
                    "shared.redis",
                    Some(raw.redis.span()),
                    format!(
                        "{shown:?} is not a Redis URL ({}); give redis://host:port/db",
                        e.category()
                    ),
                );
                None
            }
        };
        let password = match &raw.password_file {
            None => None,
            Some(file) => {
                let (path, bytes) = self.read_file("shared.password_file", file)?;
                let pw = String::from_utf8(bytes)
                    .map(|s| s.trim_end_matches(['\r', '\n']).to_string())
                    .unwrap_or_default();
                if pw.is_empty() {
                    self.problem(
                        "shared.password_file",
                        Some(file.span()),
                        format!("{}: the password file is empty", path.display()),
                    );
                    return None;
                }
                Some(pw)
            }
        };
        let timeout = self.duration(
            "shared.timeout",
            raw.timeout.as_ref(),
            DEFAULT_SHARED_TIMEOUT,
        );
        let on_unavailable = match raw.on_unavailable.as_ref().map(|o| o.get_ref().as_str()) {
            None | Some("local") => OnUnavailable::Local,
            Some("allow") => OnUnavailable::Allow,
            Some("deny") => OnUnavailable::Deny,
            Some(other) => {
                self.problem(
                    "shared.on_unavailable",
                    raw.on_unavailable.as_ref().map(Spanned::span),
                    format!("{other:?}: use \"local\", \"allow\" or \"deny\""),
                );
                OnUnavailable::Local
            }
        };
        let tls_ca = match &raw.tls_ca {
            None => None,
            Some(file) => Some(self.read_file("shared.tls_ca", file)?.1),
        };
        let mut info = info?;
        let tls = matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. });
        let tls_ca = match tls_ca {
            Some(ca) if tls => Some(ca),
            None if tls => match system_roots() {
                Ok(roots) => Some(roots),
                Err(e) => {
                    self.problem(
                        "shared.redis",
                        Some(raw.redis.span()),
                        format!(
                            "{shown:?}: the system's CA roots could not be read ({e}); \
                             give shared.tls_ca"
                        ),
                    );
                    return None;
                }
            },
            _ => None,
        };
        if let Some(pw) = password {
            let settings = info.redis_settings().clone().set_password(pw);
            info = info.set_redis_settings(settings);
        }
        Some(SharedConfig {
            info,
            shown,
            timeout,
            on_unavailable,
            key_prefix: raw
                .key_prefix
                .clone()
                .unwrap_or_else(|| DEFAULT_SHARED_PREFIX.to_string()),
            tls_ca,
        })
    }

    fn header_name(&mut self, key: &str, v: &Spanned<String>) -> Option<HeaderName> {
        match HeaderName::from_bytes(v.get_ref().trim().as_bytes()) {
            Ok(n) => Some(n),
            Err(_) => {
                self.problem(
                    key,
                    Some(v.span()),
                    format!("{:?} is not a valid header name", v.get_ref()),
                );
                None
            }
        }
    }

    fn jwt(&mut self, raw: &RawJwt) -> Option<Arc<JwtVerifier>> {
        let leeway = match &raw.leeway {
            Some(v) if matches!(v.get_ref().trim(), "0" | "0s") => Duration::ZERO,
            other => self.duration("jwt.leeway", other.as_ref(), DEFAULT_JWT_LEEWAY),
        };
        let subject_header = match &raw.subject_header {
            None => HeaderName::from_static("x-auth-subject"),
            Some(h) => self.header_name("jwt.subject_header", h)?,
        };
        let secret = raw.secret_file.as_ref().map(|v| self.path(v));
        let public = raw.public_key_file.as_ref().map(|v| self.path(v));
        let jwks = raw.jwks_file.as_ref().map(|v| self.path(v));
        self.files
            .extend([&secret, &public, &jwks].into_iter().flatten().cloned());
        let settings = JwtSettings {
            algorithms: raw.algorithms.get_ref(),
            secret_file: secret.as_deref(),
            public_key_file: public.as_deref(),
            jwks_file: jwks.as_deref(),
            issuer: raw.issuer.clone(),
            audience: raw.audience.clone(),
            leeway,
            subject_claim: raw
                .subject_claim
                .clone()
                .unwrap_or_else(|| "sub".to_string()),
            subject_header,
        };
        match JwtVerifier::new(&settings) {
            Ok(v) => Some(Arc::new(v)),
            Err(problems) => {
                for (key, msg) in problems {
                    let span = match key {
                        "jwt.secret_file" => raw.secret_file.as_ref().map(Spanned::span),
                        "jwt.public_key_file" => raw.public_key_file.as_ref().map(Spanned::span),
                        "jwt.jwks_file" => raw.jwks_file.as_ref().map(Spanned::span),
                        _ => None,
                    }
                    .or_else(|| Some(raw.algorithms.span()));
                    self.problem(key, span, msg);
                }
                None
            }
        }
    }

    fn forward_auth(&mut self, raw: &RawForwardAuth) -> Option<ForwardAuthConfig> {
        let timeout = self.duration(
            "forward_auth.timeout",
            raw.timeout.as_ref(),
            DEFAULT_FORWARD_AUTH_TIMEOUT,
        );
        let copy_headers = raw
            .copy_headers
            .iter()
            .filter_map(|h| self.header_name("forward_auth.copy_headers", h))
            .collect();
        match raw.url.get_ref().trim().parse::<http::Uri>() {
            Ok(u) if u.scheme_str() == Some("http") && u.authority().is_some() => {
                Some(ForwardAuthConfig {
                    url: u,
                    timeout,
                    copy_headers,
                })
            }
            _ => {
                self.problem(
                    "forward_auth.url",
                    Some(raw.url.span()),
                    format!(
                        "{:?}: give a plain http:// URL like \"http://127.0.0.1:5000/auth\"",
                        raw.url.get_ref()
                    ),
                );
                None
            }
        }
    }

    fn response_headers(
        &mut self,
        raw: Option<&std::collections::BTreeMap<String, Spanned<String>>>,
    ) -> Vec<(HeaderName, HeaderValue)> {
        let mut out: Vec<(HeaderName, HeaderValue)> = DEFAULT_RESPONSE_HEADERS
            .iter()
            .map(|(n, v)| (HeaderName::from_static(n), HeaderValue::from_static(v)))
            .collect();
        for (name, value) in raw.into_iter().flatten() {
            let key = format!("response_headers.{name:?}");
            let Ok(hn) = HeaderName::from_bytes(name.trim().as_bytes()) else {
                self.problem(&key, Some(value.span()), "not a valid header name");
                continue;
            };
            out.retain(|(n, _)| *n != hn);
            if value.get_ref().is_empty() {
                // "" turns a default off.
                continue;
            }
            match HeaderValue::from_str(value.get_ref()) {
                Ok(v) => out.push((hn, v)),
                Err(_) => self.problem(&key, Some(value.span()), "not a valid header value"),
            }
        }
        out
    }

    fn route_rules(&mut self, i: usize, r: &RawRoute, route: &mut Route, known: &Known<'_>) {
        let key = |k: &str| format!("route[{i}].{k}");
        let mut rules = std::mem::take(&mut route.rules);
        if let Some(methods) = &r.methods {
            let mut list = Vec::new();
            for m in methods.get_ref() {
                match http::Method::from_bytes(m.trim().to_ascii_uppercase().as_bytes()) {
                    Ok(m) if m != http::Method::CONNECT => list.push(m),
                    _ => self.problem(
                        &key("methods"),
                        Some(methods.span()),
                        format!("{m:?} is not a usable HTTP method"),
                    ),
                }
            }
            if list.is_empty() {
                self.problem(
                    &key("methods"),
                    Some(methods.span()),
                    "list at least one method, or leave methods out to allow all",
                );
            }
            rules.methods = Some(list);
        }
        rules.allow_ips = self.ip_list(&key("allow_ips"), &r.allow_ips);
        if let Some(cc) = &r.client_cert {
            match cc.get_ref().as_str() {
                "required" => rules.client_cert_required = true,
                "optional" => {}
                other => self.problem(
                    &key("client_cert"),
                    Some(cc.span()),
                    format!("{other:?}: use \"required\" or \"optional\""),
                ),
            }
        }
        if let Some(a) = &r.allow {
            // An identity allow-list implies the route needs a certificate.
            rules.client_cert_required = true;
            rules.allow = Some(self.identity_allow(&key("allow.fingerprint"), r.path.span(), a));
        }
        rules.auth = r.auth;
        match r.auth {
            Auth::Jwt if !known.jwt => self.problem(
                &key("auth"),
                Some(r.path.span()),
                "auth = \"jwt\" needs a [jwt] section",
            ),
            Auth::Forward if !known.forward_auth => self.problem(
                &key("auth"),
                Some(r.path.span()),
                "auth = \"forward\" needs a [forward_auth] section",
            ),
            _ => {}
        }
        if let Some(z) = &r.rate_limit {
            match known
                .zones
                .iter()
                .position(|zone| zone.name == *z.get_ref())
            {
                Some(idx) => rules.rate_limit = Some(idx),
                None => self.problem(
                    &key("rate_limit"),
                    Some(z.span()),
                    format!(
                        "no [[rate_limit]] zone named {:?} (zones: {})",
                        z.get_ref(),
                        known
                            .zones
                            .iter()
                            .map(|z| z.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ),
            }
        }
        if let Some(q) = &r.queue {
            self.route_queue(i, r, q, &mut rules, known);
        }
        if let Some(mb) = &r.max_body {
            rules.max_body = Some(self.size(&key("max_body"), Some(mb), DEFAULT_MAX_BODY));
        }
        if let Some(u) = &r.upstream {
            match known.groups.iter().position(|g| *g == u.get_ref().as_str()) {
                Some(g) => {
                    rules.upstream = g + 1;
                    rules.upstream_named = true;
                }
                None => self.problem(
                    &key("upstream"),
                    Some(u.span()),
                    format!(
                        "no [upstreams.{}] group (groups: {})",
                        u.get_ref(),
                        if known.groups.is_empty() {
                            "none".to_string()
                        } else {
                            known.groups.join(", ")
                        }
                    ),
                ),
            }
        }
        if let Some(sp) = &r.strip_prefix {
            let prefix = sp.get_ref().trim_end_matches('/');
            let route_path = crate::policy::routes::normalize(&route.path).ok();
            let ok = prefix.is_ascii()
                && crate::policy::routes::normalize(prefix).is_ok_and(|n| n.as_str() == prefix)
                && Route::new(prefix, Action::Allow)
                    .ok()
                    .zip(route_path)
                    .is_some_and(|(p, rp)| p.matches(&rp));
            if ok {
                rules.strip_prefix = Some(prefix.to_string());
            } else {
                self.problem(
                    &key("strip_prefix"),
                    Some(sp.span()),
                    format!(
                        "{:?} must be a plain path that the route's path {:?} starts with, like \"/api\"",
                        sp.get_ref(),
                        route.path
                    ),
                );
            }
        }
        route.rules = rules;
    }

    /// A route's `queue`: a queue that exists, whose person key the route can tell (a subject
    /// needs the route's `auth`), and whose protocol fits the route's path (a Gradio job
    /// starts at a queue join or a REST call).
    fn route_queue(
        &mut self,
        i: usize,
        r: &RawRoute,
        q: &Spanned<String>,
        rules: &mut crate::policy::routes::RouteRules,
        known: &Known<'_>,
    ) {
        let key = format!("route[{i}].queue");
        let Some(idx) = known.queues.iter().position(|s| s.name == *q.get_ref()) else {
            let names: Vec<&str> = known.queues.iter().map(|s| s.name.as_str()).collect();
            self.problem(
                &key,
                Some(q.span()),
                format!(
                    "no [[queue]] named {:?} (queues: {})",
                    q.get_ref(),
                    if names.is_empty() {
                        "none".to_string()
                    } else {
                        names.join(", ")
                    }
                ),
            );
            return;
        };
        let settings = &known.queues[idx];
        if settings.key == crate::queue::KeyBy::Subject && r.auth == Auth::None {
            self.problem(
                &key,
                Some(q.span()),
                format!(
                    "queue {:?} tells people apart by key = \"subject\", but this route has no auth to give a subject; set auth = \"jwt\" or \"forward\" on the route, or key = \"client\" on the queue",
                    settings.name
                ),
            );
        }
        if settings.protocol == crate::queue::Protocol::Gradio
            && !crate::queue::gradio::is_job_entry(r.path.get_ref())
        {
            self.problem(
                &key,
                Some(q.span()),
                format!(
                    "queue {:?} has protocol = \"gradio\", but route {:?} is not a Gradio queue join or REST call (its path must end in /queue/join, like /gradio_api/queue/join, or name the /call/ entry, like /gradio_api/call); give other routes a protocol = \"http\" queue",
                    settings.name,
                    r.path.get_ref()
                ),
            );
        }
        rules.queue = Some(idx);
    }

    fn tls(&mut self, raw: &RawTls) -> Option<Tls> {
        let chain = self.certs("tls.cert", &raw.cert);
        let key = self
            .read_file("tls.key", &raw.key)
            .and_then(
                |(path, bytes)| match PrivateKeyDer::from_pem_slice(&bytes) {
                    Ok(k) => Some((path, k)),
                    Err(e) => {
                        self.problem(
                            "tls.key",
                            Some(raw.key.span()),
                            format!(
                                "{}: no usable private key (PEM PKCS#8, PKCS#1 or SEC1): {e}",
                                path.display()
                            ),
                        );
                        None
                    }
                },
            );
        if let (Some((cert_path, chain)), Some((key_path, key))) = (&chain, &key)
            && let Err(e) = crate::tls::check_key_matches(chain, key)
        {
            self.problem(
                "tls.key",
                Some(raw.key.span()),
                format!(
                    "{}: {e} (certificate {})",
                    key_path.display(),
                    cert_path.display()
                ),
            );
        }
        let cas = self.certs("tls.client_ca", &raw.client_ca);
        if let Some((path, cas)) = &cas {
            for (i, der) in cas.iter().enumerate() {
                if let Ok((_, c)) = x509_parser::parse_x509_certificate(der)
                    && !c.is_ca()
                {
                    self.problem(
                            "tls.client_ca",
                            Some(raw.client_ca.span()),
                            format!(
                                "{}: certificate #{} ({}) is not a CA certificate (basicConstraints CA:TRUE)",
                                path.display(),
                                i + 1,
                                c.subject()
                            ),
                        );
                }
            }
        }
        let mut crls = Vec::new();
        let mut crl_paths = Vec::new();
        for v in &raw.crl {
            let Some((path, bytes)) = self.read_file("tls.crl", v) else {
                continue;
            };
            let parsed: Result<Vec<CertificateRevocationListDer<'static>>, _> =
                CertificateRevocationListDer::pem_slice_iter(&bytes).collect();
            let ders = match parsed {
                Ok(pems) if !pems.is_empty() => pems,
                // No PEM section at all: the file may be DER.
                Ok(_) | Err(rustls_pki_types::pem::Error::NoItemsFound) => {
                    vec![CertificateRevocationListDer::from(bytes)]
                }
                Err(e) => {
                    self.problem(
                        "tls.crl",
                        Some(v.span()),
                        format!("{}: not a valid PEM CRL: {e}", path.display()),
                    );
                    continue;
                }
            };
            for der in ders {
                if let Err(e) = x509_parser::parse_x509_crl(&der) {
                    self.problem(
                        "tls.crl",
                        Some(v.span()),
                        format!("{}: not a CRL (PEM or DER): {e}", path.display()),
                    );
                    continue;
                }
                crls.push(der);
                crl_paths.push(path.clone());
            }
        }
        let min_version = match raw.min_version.as_ref().map(|v| (v, v.get_ref().trim())) {
            None | Some((_, "1.2")) => TlsVersion::Tls12,
            Some((_, "1.3")) => TlsVersion::Tls13,
            Some((v, other)) => {
                self.problem(
                    "tls.min_version",
                    Some(v.span()),
                    format!("unsupported TLS version {other:?}; use \"1.2\" or \"1.3\""),
                );
                TlsVersion::Tls12
            }
        };
        let handshake_timeout = self.duration(
            "tls.handshake_timeout",
            raw.handshake_timeout.as_ref(),
            DEFAULT_HANDSHAKE_TIMEOUT,
        );
        let help_contact = raw.help_contact.as_ref().and_then(|c| {
            let text = c.get_ref().trim();
            if text.chars().any(char::is_control) || text.chars().count() > 500 {
                self.problem(
                    "tls.help_contact",
                    Some(c.span()),
                    "one line of at most 500 characters, no control characters",
                );
                None
            } else {
                (!text.is_empty()).then(|| text.to_string())
            }
        });
        let (cert_path, cert_chain) = chain?;
        let (key_path, key) = key?;
        let (client_ca_path, client_cas) = cas?;
        Some(Tls {
            cert_path,
            key_path,
            client_ca_path,
            crl_paths,
            cert_chain,
            key,
            client_cas,
            crls,
            client_auth: raw.client_auth,
            min_version,
            handshake_timeout,
            crl_expired: raw.crl_expired,
            on_failure: raw.on_failure,
            help_contact,
        })
    }

    /// An identity allow-list (a route's `allow`, `[console] allow`); `span` is where a bad
    /// fingerprint is reported.
    fn identity_allow(&mut self, key: &str, span: Range<usize>, a: &RawAllow) -> IdentityAllow {
        let fingerprint: Vec<String> = a
            .fingerprint
            .iter()
            .map(|f| f.replace(':', "").to_ascii_lowercase())
            .collect();
        for f in &fingerprint {
            if f.len() != 64 || !f.chars().all(|c| c.is_ascii_hexdigit()) {
                self.problem(
                    key,
                    Some(span.clone()),
                    format!("{f:?} is not a SHA-256 fingerprint (64 hex digits)"),
                );
            }
        }
        IdentityAllow {
            names: crate::tls::identity::IdentityNames {
                cn: a.cn.clone(),
                ou: a.ou.clone(),
                o: a.o.clone(),
                san_dns: a.san_dns.clone(),
                san_email: a.san_email.clone(),
                san_uri: a.san_uri.clone(),
            },
            fingerprint,
        }
    }

    /// `[console]`: a path of its own (no route's, not the invitation links') and a non-empty
    /// `allow` (the page names everyone who came in: it is never open to every client).
    fn console(
        &mut self,
        section: &Spanned<RawConsole>,
        routes: &[Route],
    ) -> Option<crate::console::Settings> {
        let raw = section.get_ref();
        let (path, span) = match &raw.path {
            Some(p) => (p.get_ref().trim().to_string(), Some(p.span())),
            None => (
                crate::console::DEFAULT_PATH.to_string(),
                Some(section.span()),
            ),
        };
        let Some(allow) = &raw.allow else {
            self.problem(
                "console.allow",
                span.clone(),
                "required: name who may read the operator's page, e.g. allow = { ou = [\"Admin\"] }",
            );
            return None;
        };
        let a = allow.get_ref();
        let allow = self.identity_allow("console.allow.fingerprint", allow.span(), a);
        let n = &allow.names;
        if n.cn.is_empty()
            && n.ou.is_empty()
            && n.o.is_empty()
            && n.san_dns.is_empty()
            && n.san_email.is_empty()
            && n.san_uri.is_empty()
            && allow.fingerprint.is_empty()
        {
            self.problem(
                "console.allow",
                Some(
                    raw.allow
                        .as_ref()
                        .map_or_else(|| section.span(), Spanned::span),
                ),
                "empty: list at least one cn, ou, o, san_dns, san_email, san_uri or fingerprint",
            );
            return None;
        }
        if path.trim_matches('/').is_empty() {
            self.problem(
                "console.path",
                span,
                "\"/\" would hide the whole site behind the page; give it a path of its own",
            );
            return None;
        }
        let settings = match crate::console::Settings::new(&path, allow) {
            Ok(s) => s,
            Err(e) => {
                self.problem("console.path", span, e.to_string());
                return None;
            }
        };
        // One path, one owner: the page is answered before any route, so a route under it (or
        // above it, other than the catch-all) would silently lose part of its paths.
        let prefix = |a: &str, b: &str| {
            let (a, b) = (
                a.trim_end_matches('/').to_ascii_lowercase(),
                b.trim_end_matches('/').to_ascii_lowercase(),
            );
            b == a || b.starts_with(&format!("{a}/"))
        };
        for (i, r) in routes.iter().enumerate() {
            if !r.is_catch_all() && (prefix(&r.path, &path) || prefix(&path, &r.path)) {
                self.problem(
                    "console.path",
                    span.clone(),
                    format!(
                        "{path:?} collides with route[{i}] path {:?}; give the console a path of its own",
                        r.path
                    ),
                );
            }
        }
        let enroll = crate::onboarding::invites::LINK_PREFIX;
        if prefix(&path, enroll) || prefix(enroll, &path) {
            self.problem(
                "console.path",
                span,
                format!("{path:?} collides with the invitation links under {enroll:?}"),
            );
        }
        Some(settings)
    }

    /// `[enroll] dir`: an existing folder, reachable only when a browser without a
    /// certificate can complete the handshake.
    fn enroll(&mut self, raw: &RawEnroll, tls: &RawTls) -> Option<PathBuf> {
        let dir = self.path(&raw.dir);
        // Absolute: the sandbox grants this folder by path, and the log names it.
        let dir = std::path::absolute(&dir).unwrap_or(dir);
        if tls.on_failure != OnFailure::Help && tls.client_auth != ClientAuth::Optional {
            self.problem(
                "enroll.dir",
                Some(raw.dir.span()),
                "invitation links are for browsers without a certificate, and this [tls] refuses \
                 their handshake: set [tls] on_failure = \"help\" (or client_auth = \"optional\")",
            );
            return None;
        }
        match std::fs::metadata(&dir) {
            Ok(m) if m.is_dir() => Some(dir),
            Ok(_) => {
                self.problem(
                    "enroll.dir",
                    Some(raw.dir.span()),
                    format!("{}: not a folder", dir.display()),
                );
                None
            }
            Err(e) => {
                self.problem(
                    "enroll.dir",
                    Some(raw.dir.span()),
                    format!(
                        "{}: {e}; `certgate certs invite --enroll-dir {}` creates it",
                        dir.display(),
                        dir.display()
                    ),
                );
                None
            }
        }
    }

    /// One server URL: plain `http://host:port`, nothing else.
    fn server_url(&mut self, key: &str, url: &Spanned<String>) -> Option<http::uri::Authority> {
        let span = (url.span() != (0..0)).then(|| url.span());
        match url.get_ref().trim().parse::<http::Uri>() {
            Ok(u) if u.scheme_str() != Some("http") => {
                self.problem(
                    key,
                    span,
                    format!(
                        "{:?}: only plain http:// backends are supported (the backend sits on loopback or a private network)",
                        url.get_ref()
                    ),
                );
                None
            }
            Ok(u) if !matches!(u.path(), "" | "/") || u.query().is_some() => {
                self.problem(
                    key,
                    span,
                    format!(
                        "{:?}: give only scheme, host and port, like \"http://127.0.0.1:7860\"; the request path is forwarded as it is",
                        url.get_ref()
                    ),
                );
                None
            }
            Ok(u) => u.authority().cloned(),
            Err(e) => {
                self.problem(key, span, format!("{:?} is not a URL: {e}", url.get_ref()));
                None
            }
        }
    }

    /// `[upstream]` (`key` = "upstream", `name` = "default") or `[upstreams.NAME]`.
    fn upstream(&mut self, key: &str, name: &str, raw: &RawUpstream) -> Option<Upstream> {
        let k = |sub: &str| format!("{key}.{sub}");
        let mut servers = Vec::new();
        let mut ok = true;
        match (&raw.url, &raw.servers) {
            (Some(url), Some(list)) => {
                self.problem(
                    &k("servers"),
                    Some(list.span()),
                    format!("give url or servers, not both (url = {:?})", url.get_ref()),
                );
                ok = false;
            }
            (url, None) => {
                let default_url = Spanned::new(0..0, DEFAULT_UPSTREAM_URL.to_string());
                let url = url.as_ref().unwrap_or(&default_url);
                match self.server_url(&k("url"), url) {
                    Some(authority) => servers.push(ServerSettings {
                        url: url.get_ref().trim().to_string(),
                        authority,
                        weight: 1,
                        drain: false,
                    }),
                    None => ok = false,
                }
            }
            (None, Some(list)) => {
                if list.get_ref().is_empty() {
                    self.problem(
                        &k("servers"),
                        Some(list.span()),
                        "list at least one server, like [{ url = \"http://127.0.0.1:7860\" }]",
                    );
                    ok = false;
                }
                for (i, s) in list.get_ref().iter().enumerate() {
                    let skey = format!("{key}.servers[{i}]");
                    let Some(authority) = self.server_url(&format!("{skey}.url"), &s.url) else {
                        ok = false;
                        continue;
                    };
                    let weight = match &s.weight {
                        Some(w) if *w.get_ref() == 0 => {
                            self.problem(
                                &format!("{skey}.weight"),
                                Some(w.span()),
                                "a weight of 0 would send nothing; use drain = true to stop new clients",
                            );
                            ok = false;
                            1
                        }
                        Some(w) => *w.get_ref(),
                        None => 1,
                    };
                    if servers
                        .iter()
                        .any(|o: &ServerSettings| o.authority == authority)
                    {
                        self.problem(
                            &format!("{skey}.url"),
                            Some(s.url.span()),
                            format!("{:?} is listed twice in this group", s.url.get_ref()),
                        );
                        ok = false;
                        continue;
                    }
                    servers.push(ServerSettings {
                        url: s.url.get_ref().trim().to_string(),
                        authority,
                        weight,
                        drain: s.drain,
                    });
                }
            }
        }
        let balance = match raw.balance.as_ref().map(|b| b.get_ref().as_str()) {
            None | Some("identity") => Balance::Identity,
            Some("least_requests") => Balance::LeastRequests,
            Some("round_robin") => Balance::RoundRobin,
            Some(other) => {
                self.problem(
                    &k("balance"),
                    raw.balance.as_ref().map(Spanned::span),
                    format!("{other:?}: use \"identity\", \"least_requests\" or \"round_robin\""),
                );
                Balance::Identity
            }
        };
        let affinity_timeout = self.duration(
            &k("affinity_timeout"),
            raw.affinity_timeout.as_ref(),
            DEFAULT_AFFINITY_TIMEOUT,
        );
        let fail_timeout = self.duration(
            &k("fail_timeout"),
            raw.fail_timeout.as_ref(),
            DEFAULT_FAIL_TIMEOUT,
        );
        let health_raw = raw.health.as_ref();
        let health = if health_raw.and_then(|h| h.enabled) == Some(false) {
            None
        } else {
            let default_health = RawHealth::default();
            let h = health_raw.unwrap_or(&default_health);
            let path = h.path.as_ref().map_or("/", |p| p.get_ref().as_str());
            let path = match path.parse::<http::uri::PathAndQuery>() {
                Ok(p) if path.starts_with('/') => Some(p),
                _ => {
                    self.problem(
                        &k("health.path"),
                        h.path.as_ref().map(Spanned::span),
                        format!("{path:?}: give an absolute path like \"/\" or \"/healthz\""),
                    );
                    None
                }
            };
            let count = |this: &mut Self, sub: &str, v: &Option<Spanned<u32>>, default: u32| match v
            {
                Some(n) if *n.get_ref() == 0 => {
                    this.problem(&k(sub), Some(n.span()), "give 1 or more");
                    default
                }
                Some(n) => *n.get_ref(),
                None => default,
            };
            let rise = count(self, "health.rise", &h.rise, DEFAULT_HEALTH_RISE);
            let fall = count(self, "health.fall", &h.fall, DEFAULT_HEALTH_FALL);
            let interval = self.duration(
                &k("health.interval"),
                h.interval.as_ref(),
                DEFAULT_HEALTH_INTERVAL,
            );
            let timeout = self.duration(
                &k("health.timeout"),
                h.timeout.as_ref(),
                DEFAULT_HEALTH_TIMEOUT,
            );
            path.map(|path| HealthSettings {
                path,
                interval,
                timeout,
                rise,
                fall,
            })
        };
        let max_idle_connections = raw.max_idle_connections.unwrap_or(DEFAULT_MAX_IDLE);
        let connect_timeout = self.duration(
            &k("connect_timeout"),
            raw.connect_timeout.as_ref(),
            DEFAULT_CONNECT_TIMEOUT,
        );
        let response_timeout = self.duration(
            &k("response_timeout"),
            raw.response_timeout.as_ref(),
            DEFAULT_RESPONSE_TIMEOUT,
        );
        let idle_timeout = self.duration(
            &k("idle_timeout"),
            raw.idle_timeout.as_ref(),
            DEFAULT_IDLE_TIMEOUT,
        );
        ok.then(|| Upstream {
            name: name.to_string(),
            servers,
            balance,
            affinity_timeout,
            health,
            max_fails: raw.max_fails.unwrap_or(DEFAULT_MAX_FAILS),
            fail_timeout,
            max_idle_connections,
            connect_timeout,
            response_timeout,
            idle_timeout,
        })
    }

    fn headers(&mut self, raw: &RawHeaders) -> HeaderNames {
        use crate::tls::identity::HeaderProfile;
        let defaults = HeaderNames::default();
        let profile = match &raw.profile {
            None => HeaderProfile::Nginx,
            Some(p) => match p.get_ref().as_str() {
                "nginx" => HeaderProfile::Nginx,
                "rfc9440" => HeaderProfile::Rfc9440,
                "xfcc" => HeaderProfile::Xfcc,
                other => {
                    self.problem(
                        "headers.profile",
                        Some(p.span()),
                        format!("{other:?}: use \"nginx\", \"rfc9440\" or \"xfcc\""),
                    );
                    HeaderProfile::Nginx
                }
            },
        };
        if profile != HeaderProfile::Nginx {
            // The names belong to the nginx profile; setting one beside another profile would
            // look as if it did something.
            for (key, v) in [
                ("verify", &raw.verify),
                ("subject_dn", &raw.subject_dn),
                ("issuer_dn", &raw.issuer_dn),
                ("cert", &raw.cert),
                ("serial", &raw.serial),
                ("fingerprint", &raw.fingerprint),
            ] {
                if let Some(v) = v {
                    self.problem(
                        &format!("headers.{key}"),
                        Some(v.span()),
                        format!(
                            "header names apply to profile = \"nginx\"; profile {:?} sets its own headers",
                            profile.as_str()
                        ),
                    );
                }
            }
        }
        let mut one = |key: &str, v: &Option<Spanned<String>>, default: Option<HeaderName>| {
            let Some(v) = v else { return default };
            let name = v.get_ref().trim();
            if name.is_empty() {
                return None;
            }
            match HeaderName::from_bytes(name.as_bytes()) {
                Ok(h) => Some(h),
                Err(_) => {
                    self.problem(
                        key,
                        Some(v.span()),
                        format!("{name:?} is not a valid header name"),
                    );
                    None
                }
            }
        };
        HeaderNames {
            profile,
            verify: one("headers.verify", &raw.verify, defaults.verify),
            subject_dn: one("headers.subject_dn", &raw.subject_dn, defaults.subject_dn),
            issuer_dn: one("headers.issuer_dn", &raw.issuer_dn, defaults.issuer_dn),
            cert: one("headers.cert", &raw.cert, defaults.cert),
            serial: one("headers.serial", &raw.serial, defaults.serial),
            fingerprint: one(
                "headers.fingerprint",
                &raw.fingerprint,
                defaults.fingerprint,
            ),
        }
    }
}

/// The system's CA roots as one PEM bundle, read once per process: at start-up, before the
/// sandbox closes `/etc/ssl` (a reload after that reuses them). The Redis client verifies
/// `rediss://` against them when `tls_ca` is not set; left to itself it would read them again
/// on every connect, which the sandbox refuses.
fn system_roots() -> Result<Vec<u8>, String> {
    static ROOTS: std::sync::OnceLock<Result<Vec<u8>, String>> = std::sync::OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            if found.certs.is_empty() {
                return Err(match found.errors.first() {
                    Some(e) => e.to_string(),
                    None => "none found".to_string(),
                });
            }
            let pems: Vec<pem::Pem> = found
                .certs
                .iter()
                .map(|c| pem::Pem::new("CERTIFICATE", c.as_ref()))
                .collect();
            Ok(pem::encode_many(&pems).into_bytes())
        })
        .clone()
}

/// The URL with every credential in it replaced by `***`: what logs and `check` may show.
/// Every place the redis crate takes a password from (`redis::parse_redis_url`, then
/// `IntoConnectionInfo`): the password of `user:pass@` (TCP and TLS), and the `pass` query
/// parameter (`unix://`, `redis+unix://`); `password` and any parameter named like a secret
/// too, in any scheme and however percent-encoded, as a mistaken spelling still carries the
/// secret. A URL the crate does not parse keeps only its scheme and host-ish part, with any
/// user information and query hidden.
fn redact_password(url: &str) -> String {
    let Some(mut parsed) = redis::parse_redis_url(url) else {
        return redact_unparsed(url);
    };
    let mut changed = false;
    if parsed.password().is_some() {
        if parsed.set_password(Some("***")).is_err() {
            return redact_unparsed(url);
        }
        changed = true;
    }
    let secret = |k: &str| {
        let k = k.to_ascii_lowercase();
        k.contains("pass") || k == "auth" || k.contains("secret") || k.contains("token")
    };
    if parsed.query_pairs().any(|(k, _)| secret(&k)) {
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(k, v)| {
                let v = if secret(&k) {
                    "***".into()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
        changed = true;
    }
    if changed {
        parsed.to_string()
    } else {
        url.to_string()
    }
}

/// For a URL that does not parse: the scheme and address, user information and query hidden.
fn redact_unparsed(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(i) => (&url[..i + 3], &url[i + 3..]),
        None => ("", url),
    };
    let rest = match rest.rfind('@') {
        Some(at) => format!("***{}", &rest[at..]),
        None => rest.to_string(),
    };
    match rest.find(['?', '#']) {
        Some(q) => format!("{scheme}{}?***", &rest[..q]),
        None => format!("{scheme}{rest}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_redis_credential_form_is_redacted() {
        for (url, secret) in [
            ("redis://user:hunter2@127.0.0.1:6379/0", "hunter2"),
            ("redis://:hunter2@127.0.0.1:6379/0", "hunter2"),
            ("rediss://default:hunter2@redis.example:6380/1", "hunter2"),
            ("valkeys://u:hunter2@redis.example/0", "hunter2"),
            ("redis://user:hunt%65r2@127.0.0.1/0", "hunt%65r2"),
            ("unix:///run/redis.sock?pass=hunter2", "hunter2"),
            ("unix:///run/redis.sock?db=1&user=u&pass=hunter2", "hunter2"),
            ("redis+unix:///run/redis.sock?pass=hunter2&db=2", "hunter2"),
            ("valkey+unix:///run/redis.sock?pass=hunter2", "hunter2"),
            ("unix:///run/redis.sock?password=hunter2", "hunter2"),
            ("unix:///run/redis.sock?p%61ss=hunter2", "hunter2"),
            ("unix:///run/redis.sock?PASS=hunter2", "hunter2"),
            ("redis://127.0.0.1:6379/0?password=hunter2", "hunter2"),
            ("redis://user:hunter2@[::1]:6379/0", "hunter2"),
            ("redis://us er:hunter2@127.0.0.1/0", "hunter2"),
            ("redis//user:hunter2@host?pass=hunter2", "hunter2"),
        ] {
            let shown = redact_password(url);
            assert!(!shown.contains(secret), "{url} shown as {shown}");
            assert!(shown.contains("***"), "{url} shown as {shown}");
        }
    }

    #[test]
    fn redaction_keeps_what_locates_redis() {
        assert_eq!(
            redact_password("redis://user:pw@127.0.0.1:6379/0"),
            "redis://user:***@127.0.0.1:6379/0"
        );
        assert_eq!(
            redact_password("unix:///run/redis.sock?db=1&pass=pw"),
            "unix:///run/redis.sock?db=1&pass=***"
        );
        for plain in ["redis://127.0.0.1:6379/0", "unix:///run/redis.sock?db=1"] {
            assert_eq!(redact_password(plain), plain);
        }
    }

    fn problems(text: &str) -> Vec<Problem> {
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

    fn console_problems(extra: &str) -> Vec<Problem> {
        problems(&format!(
            "[listen]\nhttps = \"127.0.0.1:8443\"\n[tls]\ncert=\"a\"\nkey=\"b\"\nclient_ca=\"c\"\n{extra}"
        ))
        .into_iter()
        .filter(|p| p.key.starts_with("console"))
        .collect()
    }

    #[test]
    fn console_needs_a_non_empty_allow_and_a_path_of_its_own() {
        let p = console_problems("[console]\npath = \"/ops\"\n");
        assert_eq!(p.len(), 1);
        assert_eq!(
            (p[0].key.as_str(), p[0].at),
            ("console.allow", Some((8, 8)))
        );
        let p = console_problems("[console]\nallow = {}\n");
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(
            (p[0].key.as_str(), p[0].at),
            ("console.allow", Some((8, 9)))
        );
        assert!(p[0].message.contains("empty"), "{}", p[0].message);
        let p = console_problems(
            "[[route]]\npath = \"/ops/internal\"\naction = \"deny\"\n[console]\npath = \"/ops\"\nallow = { ou = [\"Admin\"] }\n",
        );
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(
            (p[0].key.as_str(), p[0].at),
            ("console.path", Some((11, 8)))
        );
        assert!(p[0].message.contains("route[0]"), "{}", p[0].message);
        let p = console_problems(
            "[console]\npath = \"/.well-known/certgate/enroll\"\nallow = { ou = [\"Admin\"] }\n",
        );
        assert!(
            p[0].message.contains("invitation links"),
            "{}",
            p[0].message
        );
        // The catch-all route and unrelated routes are no collision.
        assert!(
            console_problems(
                "[[route]]\npath = \"/gradio_api/info\"\naction = \"deny\"\n[[route]]\npath = \"/\"\naction = \"allow\"\n[console]\nallow = { ou = [\"Admin\"] }\n"
            )
            .is_empty()
        );
    }

    /// Routes may queue on a Gradio join or call, and by subject when they authenticate; the
    /// defaults of `[[queue]]` are those of spec §15.
    #[test]
    fn queues_accept_what_spec_15_allows() {
        let dir = std::env::temp_dir().join(format!("certgate-queue-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        use crate::pki::{Profile, Spec, issue};
        let ca = issue(&Spec::new(Profile::Ca, "Queue Test CA", 1), None).unwrap();
        let mut spec = Spec::new(Profile::Server, "localhost", 1);
        spec.sans = vec![crate::pki::San::parse("localhost").unwrap()];
        let server = issue(&spec, Some(&ca)).unwrap();
        std::fs::write(dir.join("ca.crt"), &ca.cert_pem).unwrap();
        std::fs::write(dir.join("s.crt"), &server.cert_pem).unwrap();
        std::fs::write(dir.join("s.key"), server.key_pem()).unwrap();
        std::fs::write(dir.join("jwt.secret"), "0123456789abcdef0123456789abcdef").unwrap();
        let text = "[listen]\nhttps = \"127.0.0.1:8443\"\n[tls]\ncert=\"s.crt\"\nkey=\"s.key\"\nclient_ca=\"ca.crt\"\n\
            [jwt]\nalgorithms = [\"HS256\"]\nsecret_file = \"jwt.secret\"\n\
            [[queue]]\nname = \"gpu\"\n\
            [[queue]]\nname = \"ui\"\nprotocol = \"gradio\"\nkey = \"subject\"\nslots = 2\n\
            [[route]]\npath = \"/gradio_api/queue/join\"\naction = \"allow\"\nauth = \"jwt\"\nqueue = \"ui\"\n\
            [[route]]\npath = \"/gradio_api/call\"\naction = \"allow\"\nauth = \"jwt\"\nqueue = \"ui\"\n\
            [[route]]\npath = \"/api/colorize\"\naction = \"allow\"\nqueue = \"gpu\"\n";
        let c = Config::from_str(text, &dir.join("certgate.toml")).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(c.queues.len(), 2);
        let gpu = &c.queues[0];
        assert_eq!(
            (gpu.slots, gpu.per_identity, gpu.max_waiting, gpu.max_wait),
            (1, 1, 16, Duration::from_secs(600))
        );
        assert_eq!(gpu.key, crate::queue::KeyBy::Client);
        assert_eq!(gpu.protocol, crate::queue::Protocol::Http);
        assert_eq!(c.queues[1].slots, 2);
        let queues: Vec<_> = c.routes.iter().map(|r| r.rules.queue).collect();
        assert_eq!(queues, [Some(1), Some(1), Some(0)]);
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
