//! Stage 1: the file as serde reads it. Every section mirrors the TOML with
//! `deny_unknown_fields`, and values keep their spans (`Spanned`) so that stage 2 can name the
//! line and column of a bad value. Nothing here is interpreted.

use serde::Deserialize;
use toml::Spanned;

use crate::ops::logging::LogFormat;
use crate::policy::ratelimit::KeyBy;
use crate::policy::routes::{Action, Auth};
use crate::tls::{ClientAuth, CrlExpired, OnFailure};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) listen: RawListen,
    pub(super) tls: RawTls,
    #[serde(default)]
    pub(super) upstream: RawUpstream,
    /// `[shared]`: rate limits kept in Redis.
    pub(super) shared: Option<RawShared>,
    /// Named groups: `[upstreams.NAME]`.
    #[serde(default)]
    pub(super) upstreams: std::collections::BTreeMap<String, RawUpstream>,
    #[serde(default)]
    pub(super) headers: RawHeaders,
    #[serde(default, rename = "route")]
    pub(super) routes: Vec<RawRoute>,
    #[serde(default)]
    pub(super) log: RawLog,
    #[serde(default)]
    pub(super) limits: RawLimits,
    #[serde(default)]
    pub(super) access: RawAccess,
    #[serde(default, rename = "rate_limit")]
    pub(super) rate_limits: Vec<RawRateLimit>,
    #[serde(default, rename = "queue")]
    pub(super) queues: Vec<RawQueue>,
    pub(super) jwt: Option<RawJwt>,
    pub(super) forward_auth: Option<RawForwardAuth>,
    pub(super) response_headers: Option<std::collections::BTreeMap<String, Spanned<String>>>,
    pub(super) admin: Option<RawAdmin>,
    #[serde(default)]
    pub(super) reload: RawReload,
    #[serde(default)]
    pub(super) sandbox: RawSandbox,
    pub(super) enroll: Option<RawEnroll>,
    pub(super) console: Option<Spanned<RawConsole>>,
}

/// `[admin]`
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    /// Plain-HTTP listener for /metrics, /livez, /readyz; keep it on loopback.
    pub(super) listen: Spanned<String>,
}

/// `[reload]`
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawReload {
    /// Poll interval for content changes, or "off".
    pub(super) watch: Option<Spanned<String>>,
}

/// `[limits]`
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    /// Largest request body (nginx `client_max_body_size`).
    pub(super) max_body: Option<Spanned<String>>,
    /// Open connections, whole daemon.
    pub(super) max_connections: Option<Spanned<usize>>,
    /// Open connections per client IP, counted before the handshake.
    pub(super) max_connections_per_ip: Option<Spanned<usize>>,
    /// HTTP/1: the whole request head must arrive within this.
    pub(super) header_read_timeout: Option<Spanned<String>>,
    /// An idle client connection (no request in flight) is closed after this.
    pub(super) keepalive_timeout: Option<Spanned<String>>,
    pub(super) send_timeout: Option<Spanned<String>>,
    /// The longest silence between two reads of a request body (nginx
    /// `client_body_timeout`): the client gets 408, and the backend is not blamed.
    pub(super) body_timeout: Option<Spanned<String>>,
    /// Failed handshakes allowed per IP (`N/s`, `N/m`, `N/h`) before it is cut off.
    pub(super) handshake_failures_per_ip: Option<Spanned<String>>,
}

/// `[sandbox]`
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSandbox {
    /// Restrict the file system with Landlock after start-up.
    pub(super) landlock: Option<bool>,
}

/// `[access]`
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAccess {
    /// Client IPs or CIDR blocks allowed to connect; empty: everyone.
    #[serde(default)]
    pub(super) allow_ips: Vec<Spanned<String>>,
}

/// `[[rate_limit]]`
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRateLimit {
    /// Zone name, used by routes.
    pub(super) name: Spanned<String>,
    /// `client` (certificate fingerprint, else IP) or `ip`.
    #[serde(default = "default_key_by")]
    pub(super) key: KeyBy,
    /// `N/s`, `N/m` or `N/h`.
    pub(super) rate: Spanned<String>,
    /// Requests allowed at once.
    pub(super) burst: Option<Spanned<u32>>,
    /// `shared` (the default with `[shared]`) or `local`.
    pub(super) scope: Option<Spanned<String>>,
}

/// `[[queue]]`
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawQueue {
    /// Queue name, used by routes.
    pub(super) name: Spanned<String>,
    /// Jobs the backend runs at once, per server.
    pub(super) slots: Option<Spanned<usize>>,
    /// Jobs of one person at the backend at once.
    pub(super) per_identity: Option<Spanned<usize>>,
    /// Jobs of one person waiting in certgate.
    pub(super) max_waiting: Option<Spanned<usize>>,
    /// Longest wait.
    pub(super) max_wait: Option<Spanned<String>>,
    /// `client`, `ip` or `subject`.
    pub(super) key: Option<Spanned<crate::queue::KeyBy>>,
    /// `http` or `gradio`.
    pub(super) protocol: Option<Spanned<crate::queue::Protocol>>,
}

pub(super) fn default_key_by() -> KeyBy {
    KeyBy::Client
}

/// `[jwt]`
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawJwt {
    /// Allowed algorithms; required, no default.
    pub(super) algorithms: Spanned<Vec<String>>,
    /// HMAC secret.
    pub(super) secret_file: Option<Spanned<String>>,
    /// PEM public key.
    pub(super) public_key_file: Option<Spanned<String>>,
    /// JWKS.
    pub(super) jwks_file: Option<Spanned<String>>,
    /// Expected `iss`.
    pub(super) issuer: Option<String>,
    /// Expected `aud`.
    pub(super) audience: Option<String>,
    /// Clock leeway for `exp`/`nbf`.
    pub(super) leeway: Option<Spanned<String>>,
    /// Claim forwarded as the subject.
    pub(super) subject_claim: Option<String>,
    /// Header it is forwarded in.
    pub(super) subject_header: Option<Spanned<String>>,
}

/// `[forward_auth]`
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawForwardAuth {
    /// The auth service, plain HTTP.
    pub(super) url: Spanned<String>,
    /// Longest wait for its answer.
    pub(super) timeout: Option<Spanned<String>>,
    /// Headers copied from its 2xx answer to the backend request.
    #[serde(default)]
    pub(super) copy_headers: Vec<Spanned<String>>,
}

/// `[listen]`
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListen {
    /// Address of the HTTPS listener. Required.
    pub(super) https: Spanned<String>,
    /// Optional plain-HTTP listener that only redirects to HTTPS.
    pub(super) http_redirect: Option<Spanned<String>>,
    /// How long requests in flight may take to finish after SIGTERM/SIGINT.
    pub(super) shutdown_timeout: Option<Spanned<String>>,
}

/// `[tls]`
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    /// Server certificate chain, PEM, leaf first. Required.
    pub(super) cert: Spanned<String>,
    /// Server private key, PEM (PKCS#8, PKCS#1 or SEC1). Required.
    pub(super) key: Spanned<String>,
    /// PEM bundle of the CAs whose client certificates are accepted. Required.
    pub(super) client_ca: Spanned<String>,
    /// CRLs, PEM or DER.
    #[serde(default)]
    pub(super) crl: Vec<Spanned<String>>,
    /// Whether a client certificate is required.
    #[serde(default)]
    pub(super) client_auth: ClientAuth,
    /// Lowest TLS version accepted: "1.2" or "1.3".
    pub(super) min_version: Option<Spanned<String>>,
    /// Longest time a TLS handshake may take.
    pub(super) handshake_timeout: Option<Spanned<String>>,
    /// What a CRL past its next update means.
    #[serde(default)]
    pub(super) crl_expired: CrlExpired,
    /// "close" or "help": what a client without a valid certificate meets.
    #[serde(default)]
    pub(super) on_failure: OnFailure,
    /// One line on the help page: whom to ask.
    pub(super) help_contact: Option<Spanned<String>>,
}

/// `[console]`
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConsole {
    /// Where the operator's page is served on the main listener.
    pub(super) path: Option<Spanned<String>>,
    /// The identities that may read it, as a route's `allow`; required.
    pub(super) allow: Option<Spanned<RawAllow>>,
}

/// `[enroll]`
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEnroll {
    /// Where `certgate certs invite` stores invitations.
    pub(super) dir: Spanned<String>,
}

/// `[upstream]`
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstream {
    /// The backend's base URL (one server).
    pub(super) url: Option<Spanned<String>>,
    /// Several servers of one app, instead of `url`.
    pub(super) servers: Option<Spanned<Vec<RawServer>>>,
    /// `identity`, `least_requests` or `round_robin`.
    pub(super) balance: Option<Spanned<String>>,
    /// How long a client's binding to a server lasts unseen.
    pub(super) affinity_timeout: Option<Spanned<String>>,
    /// Active health checks.
    pub(super) health: Option<RawHealth>,
    /// Passive checks: failures of real requests...
    pub(super) max_fails: Option<u32>,
    /// ...within this long mark a server down for this long.
    pub(super) fail_timeout: Option<Spanned<String>>,
    /// Pooled keep-alive connections kept per backend.
    pub(super) max_idle_connections: Option<usize>,
    /// Longest wait for a TCP connection to the backend.
    pub(super) connect_timeout: Option<Spanned<String>>,
    /// Longest wait for the backend's response headers, from the end of the request body.
    pub(super) response_timeout: Option<Spanned<String>>,
    /// Longest silence inside a streaming body.
    pub(super) idle_timeout: Option<Spanned<String>>,
}

/// `[shared]`
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawShared {
    /// `redis://host:port/db` (or `rediss://` for TLS).
    pub(super) redis: Spanned<String>,
    /// A file holding the password; never logged.
    pub(super) password_file: Option<Spanned<String>>,
    /// Longest wait for one check.
    pub(super) timeout: Option<Spanned<String>>,
    /// `local`, `allow` or `deny`.
    pub(super) on_unavailable: Option<Spanned<String>>,
    /// Prepended to every key.
    pub(super) key_prefix: Option<String>,
    /// With `rediss://`: the CA bundle Redis's certificate must chain to (PEM); the system's
    /// roots without it.
    pub(super) tls_ca: Option<Spanned<String>>,
}

/// One of `servers = [...]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    /// `http://host:port`.
    pub(super) url: Spanned<String>,
    /// Share of new clients (default 1).
    pub(super) weight: Option<Spanned<u32>>,
    /// Keeps its bound clients, gets no new ones.
    #[serde(default)]
    pub(super) drain: bool,
}

/// `[upstream.health]`
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealth {
    /// `false` turns the active checks off.
    pub(super) enabled: Option<bool>,
    /// GET this path.
    pub(super) path: Option<Spanned<String>>,
    /// Between checks.
    pub(super) interval: Option<Spanned<String>>,
    /// For one answer.
    pub(super) timeout: Option<Spanned<String>>,
    /// Passes to be healthy again.
    pub(super) rise: Option<Spanned<u32>>,
    /// Failures to be down.
    pub(super) fall: Option<Spanned<u32>>,
}

/// `[headers]`: names of the injected identity headers; "" turns one off.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHeaders {
    pub(super) profile: Option<Spanned<String>>,
    pub(super) verify: Option<Spanned<String>>,
    pub(super) subject_dn: Option<Spanned<String>>,
    pub(super) issuer_dn: Option<Spanned<String>>,
    pub(super) cert: Option<Spanned<String>>,
    pub(super) serial: Option<Spanned<String>>,
    pub(super) fingerprint: Option<Spanned<String>>,
}

/// `[[route]]`
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    /// Segment prefix on the normalized path.
    pub(super) path: Spanned<String>,
    /// What to do with a match.
    pub(super) action: Action,
    /// Allowed methods; others get 405.
    pub(super) methods: Option<Spanned<Vec<String>>>,
    /// `"required"`: a verified client certificate is needed on this route.
    pub(super) client_cert: Option<Spanned<String>>,
    /// Certificate identities admitted.
    pub(super) allow: Option<RawAllow>,
    /// Client IPs allowed on this route.
    #[serde(default)]
    pub(super) allow_ips: Vec<Spanned<String>>,
    /// `none`, `jwt` or `forward`.
    #[serde(default)]
    pub(super) auth: Auth,
    /// A `[[rate_limit]]` zone name.
    pub(super) rate_limit: Option<Spanned<String>>,
    /// Body limit for this route.
    pub(super) max_body: Option<Spanned<String>>,
    /// Removed from the path before forwarding.
    pub(super) strip_prefix: Option<Spanned<String>>,
    /// An `[upstreams.NAME]` group; default `[upstream]`.
    pub(super) upstream: Option<Spanned<String>>,
    /// A `[[queue]]` name.
    pub(super) queue: Option<Spanned<String>>,
}

/// `allow = { cn = [...], ... }`
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAllow {
    #[serde(default)]
    pub(super) cn: Vec<String>,
    #[serde(default)]
    pub(super) ou: Vec<String>,
    #[serde(default)]
    pub(super) o: Vec<String>,
    #[serde(default)]
    pub(super) san_dns: Vec<String>,
    #[serde(default)]
    pub(super) san_email: Vec<String>,
    #[serde(default)]
    pub(super) san_uri: Vec<String>,
    #[serde(default)]
    pub(super) fingerprint: Vec<String>,
}

/// `[log]`
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    #[serde(default)]
    pub(super) format: LogFormat,
    pub(super) access: Option<bool>,
}
