//! `[shared]`: the Redis that replicas share rate limits and bindings through. Its password never
//! reaches a message: every URL shown is redacted first.

use toml::Spanned;

use super::Validator;
use super::raw::RawShared;
use crate::policy::shared::{OnUnavailable, SharedConfig};

/// A shared check adds a round trip to Redis to a request; past this, the replica decides
/// alone (spec §12).
const DEFAULT_SHARED_TIMEOUT: &str = "25ms";
const DEFAULT_SHARED_PREFIX: &str = "certgate:";

impl Validator<'_> {
    /// `[shared]`. The password (in `password_file`, or in the URL) never reaches a message.
    pub(super) fn shared(&mut self, raw: &RawShared) -> Option<SharedConfig> {
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
}
