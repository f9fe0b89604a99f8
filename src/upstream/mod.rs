//! Forwarding a request that passed the policy to the backend: header hygiene (hop-by-hop
//! removal, stripping everything a client could use to lie about itself, then injecting the
//! proxy's own values), the pooled HTTP/1.1 client, streaming in both directions, WebSocket
//! upgrades, and the mapping of backend failures to 502 / 504.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{
    HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, Uri, Version, header,
};
use hyper::body::Body as _;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use crate::ops::metrics::Metrics;
use crate::response::body::{LimitedBody, Overflow, ProxyBody};
use crate::response::in_flight::InFlight;
use crate::response::reply::Reject;
use crate::tls::identity::{ClientIdentity, HeaderNames, IdentityHeaders};

/// uvicorn (Gradio) closes idle keep-alive connections after 5 s; closing ours first means the
/// pool never hands out a connection the backend is about to close.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(4);

/// Headers that describe the client and that only the proxy may set, besides the configured
/// identity header names. Compared after folding `_` to `-`, because some backends (WSGI, PHP)
/// read `X_SSL_Client_DN` and `X-SSL-Client-DN` as the same variable.
const SPOOFABLE: &[&str] = &[
    "x-real-ip",
    "forwarded",
    "client-cert",
    "client-cert-chain",
    "x-gradio-server",
    // Header-based single sign-on: backends behind an authenticating proxy trust these.
    "remote-user",
    "x-remote-user",
    // The client address as CDNs and other proxies name it; as first hop, certgate has none
    // in front of it, so each of these from a client is invented.
    "true-client-ip",
    "x-client-ip",
    "cf-connecting-ip",
    "x-cluster-client-ip",
    "fastly-client-ip",
    "x-envoy-external-address",
    // The original request as auth_request-style subrequests describe it.
    "x-original-uri",
    "x-original-method",
    "x-original-host",
    "x-host",
];

/// Prefixes of spoofable header families: every `X-Forwarded-*` (the proxy is the first hop, so
/// any such header from the client is invented), every `X-Original-Forwarded-*`, every
/// `Ssl-Client-*`, and every `X-SSL-Client-*` even when its injection is turned off in
/// `[headers]`.
const SPOOFABLE_PREFIXES: &[&str] = &[
    "x-forwarded-",
    "x-original-forwarded-",
    "ssl-client-",
    "x-ssl-client-",
];

/// Per-connection facts the forwarder needs, computed once after the handshake.
#[derive(Debug)]
pub struct ConnInfo {
    /// The client's address, IPv4-mapped IPv6 folded to IPv4.
    pub peer: SocketAddr,
    /// The client's IP as a header value.
    pub peer_ip: HeaderValue,
    /// The verified client identity, if a certificate was presented.
    pub identity: Option<Arc<ClientIdentity>>,
    /// Identity headers, rendered once.
    pub identity_headers: IdentityHeaders,
    /// The chain the client presented (leaf first), to re-check after a reload.
    pub chain: Vec<rustls_pki_types::CertificateDer<'static>>,
    /// The runtime generation this connection's certificate was last checked against.
    pub generation: std::sync::atomic::AtomicU64,
    /// Cancelled to close this connection gracefully (after a failed re-check, or idle).
    pub close: tokio_util::sync::CancellationToken,
    /// The connection's requests in flight, for the idle timeout.
    pub requests: Arc<InFlight>,
    /// Where upgraded connections (WebSockets) run, so shutdown can wait for them.
    pub tunnels: tokio_util::task::TaskTracker,
}

/// What is removed from and set on every request that leaves certgate (to the backend, or to
/// the forward-auth service): strip before inject.
#[derive(Debug, Clone)]
pub struct HeaderPolicy {
    /// Names only certgate may set, besides the fixed ones: the configured identity headers,
    /// the JWT subject header, forward-auth's copied headers; lower case, `_` folded to `-`.
    strip: Vec<String>,
}

impl HeaderPolicy {
    /// A policy that also strips `extra` (the JWT subject header, forward-auth's headers).
    pub fn new<'a>(
        names: &'a HeaderNames,
        extra: impl IntoIterator<Item = &'a HeaderName>,
    ) -> HeaderPolicy {
        HeaderPolicy {
            strip: names
                .all()
                .chain(extra)
                .map(|n| n.as_str().replace('_', "-"))
                .collect(),
        }
    }

    /// Removes hop-by-hop and spoofable headers, then sets the forwarding and identity headers.
    /// `Host` is left to the caller, who sets it first: it becomes `X-Forwarded-Host`. Cookie
    /// fields are joined into one (HTTP/2 clients send each cookie as its own field, RFC 9113
    /// §8.2.3, and an HTTP/1.1 backend reads only one).
    pub fn sanitize(&self, headers: &mut HeaderMap, websocket: bool, conn: &ConnInfo) {
        let host = headers.get(header::HOST).cloned();
        remove_hop_by_hop(headers, websocket);
        join_cookies(headers);
        self.strip_spoofable(headers);
        headers.insert(HeaderName::from_static("x-real-ip"), conn.peer_ip.clone());
        headers.insert(
            HeaderName::from_static("x-forwarded-for"),
            conn.peer_ip.clone(),
        );
        headers.insert(
            HeaderName::from_static("x-forwarded-proto"),
            HeaderValue::from_static("https"),
        );
        if let Some(host) = host {
            headers.insert(HeaderName::from_static("x-forwarded-host"), host);
        }
        for (name, value) in conn.identity_headers.iter() {
            headers.insert(name.clone(), value.clone());
        }
    }

    /// Removes every header the client could use to lie about itself (spec §4).
    fn strip_spoofable(&self, headers: &mut HeaderMap) {
        let doomed: Vec<HeaderName> = headers
            .keys()
            .filter(|name| {
                let n = name.as_str();
                let n: Cow<'_, str> = if n.contains('_') {
                    Cow::Owned(n.replace('_', "-"))
                } else {
                    Cow::Borrowed(n)
                };
                SPOOFABLE.contains(&n.as_ref())
                    || SPOOFABLE_PREFIXES.iter().any(|p| n.starts_with(p))
                    || self.strip.iter().any(|c| c == n.as_ref())
            })
            .cloned()
            .collect();
        for name in doomed {
            headers.remove(name);
        }
    }
}

/// The pooled client and what it needs to rewrite requests.
#[derive(Debug)]
pub struct Forwarder {
    client: Client<HttpConnector, LimitedBody>,
    authority: Authority,
    response_timeout: Duration,
    idle_timeout: Duration,
    policy: HeaderPolicy,
    metrics: Arc<Metrics>,
}

impl Forwarder {
    /// A forwarder for one backend.
    pub fn new(upstream: &Upstream, policy: HeaderPolicy, metrics: Arc<Metrics>) -> Forwarder {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(upstream.connect_timeout));
        connector.set_nodelay(true);
        connector.enforce_http(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_max_idle_per_host(upstream.max_idle_connections)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector);
        Forwarder {
            client,
            authority: upstream.authority.clone(),
            response_timeout: upstream.response_timeout,
            idle_timeout: upstream.idle_timeout,
            policy,
            metrics,
        }
    }

    /// The header policy, shared with forward auth.
    pub fn policy(&self) -> &HeaderPolicy {
        &self.policy
    }

    /// Sends `req` to the backend at `path` with the checked `host`, with `extra` headers (the JWT subject, forward
    /// auth's copies) and its body cut off at `max_body`, and returns the backend's response,
    /// streamed.
    ///
    /// # Errors
    /// 413 over `max_body`, 502 / 504 when the backend cannot be reached or does not answer in
    /// time.
    pub async fn forward(
        &self,
        req: Request<Incoming>,
        path: PathAndQuery,
        host: HeaderValue,
        conn: &ConnInfo,
        extra: Vec<(HeaderName, HeaderValue)>,
        max_body: u64,
    ) -> Result<Response<ProxyBody>, Reject> {
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max_body) {
            crate::response::body::drain(req.into_body());
            return Err(Reject::payload_too_large(max_body, "max_body".to_string()));
        }
        let overflow = std::sync::Arc::new(Overflow::default());
        let mut req =
            req.map(|b| LimitedBody::new(b, max_body, overflow.clone(), conn.requests.clone()));
        let websocket = is_websocket_upgrade(&req);
        let headers = req.headers_mut();
        headers.insert(header::HOST, host);
        // The policy refused differing lengths; equal repeats (legal over HTTP/2, where nothing
        // merges them) go on as one.
        if let Some(len) = declared_repeated(headers) {
            headers.insert(header::CONTENT_LENGTH, len);
        }
        self.policy.sanitize(headers, websocket, conn);
        for (name, value) in extra {
            headers.append(name, value);
        }
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(Scheme::HTTP);
        parts.authority = Some(self.authority.clone());
        parts.path_and_query = Some(path);
        *req.uri_mut() = Uri::from_parts(parts)
            .map_err(|e| Reject::bad_request(format!("cannot build the backend URI: {e}")))?;
        *req.version_mut() = Version::HTTP_11;

        let client_upgrade = websocket.then(|| hyper::upgrade::on(&mut req));
        // An idempotent request without a body can be sent again if the pooled connection
        // turns out to have been closed by the backend before any byte of an answer came back
        // (a keep-alive race no pool can rule out).
        let replay = (!websocket && is_idempotent(req.method()) && req.body().is_end_stream())
            .then(|| {
                let mut b = Request::builder()
                    .method(req.method().clone())
                    .uri(req.uri().clone())
                    .version(req.version());
                if let Some(h) = b.headers_mut() {
                    h.clone_from(req.headers());
                }
                b
            });

        let deadline = tokio::time::Instant::now() + self.response_timeout;
        let mut sent = tokio::time::timeout_at(deadline, self.client.request(req)).await;
        if let (Ok(Err(e)), Some(replay)) = (&sent, replay)
            && is_retryable(e)
        {
            tracing::debug!(peer = %conn.peer, error = %e, "backend closed a pooled connection; retrying once");
            self.metrics.upstream_error("retried");
            if let Ok(again) = replay.body(LimitedBody::empty()) {
                sent = tokio::time::timeout_at(deadline, self.client.request(again)).await;
            }
        }
        let resp = match sent {
            Ok(Ok(resp)) => resp,
            Ok(Err(e)) => {
                if overflow.hit() {
                    if let Some(rest) = overflow.take_rest() {
                        crate::response::body::drain(rest);
                    }
                    return Err(Reject::payload_too_large(max_body, "max_body".to_string()));
                }
                return Err(self.upstream_error(&e, conn));
            }
            Err(_) => {
                self.metrics.upstream_error("timeout");
                tracing::warn!(
                    peer = %conn.peer,
                    upstream = %self.authority,
                    timeout = ?self.response_timeout,
                    "backend did not answer in time"
                );
                return Err(Reject::gateway_timeout(format!(
                    "The backend did not send a response within {}; try again later.",
                    humantime::format_duration(self.response_timeout)
                )));
            }
        };

        let (mut parts, body) = resp.into_parts();
        parts.version = Version::HTTP_11;
        if let (Some(client_upgrade), StatusCode::SWITCHING_PROTOCOLS) =
            (client_upgrade, parts.status)
        {
            let mut upstream_resp = Response::from_parts(parts.clone(), body);
            let upstream_upgrade = hyper::upgrade::on(&mut upstream_resp);
            let peer = conn.peer;
            conn.tunnels.spawn(async move {
                match tokio::try_join!(client_upgrade, upstream_upgrade) {
                    Ok((client, upstream)) => {
                        let mut client = TokioIo::new(client);
                        let mut upstream = TokioIo::new(upstream);
                        if let Err(e) =
                            tokio::io::copy_bidirectional(&mut client, &mut upstream).await
                        {
                            tracing::debug!(%peer, error = %e, "websocket tunnel ended");
                        }
                    }
                    Err(e) => tracing::warn!(%peer, error = %e, "websocket upgrade failed"),
                }
            });
            return Ok(Response::from_parts(parts, ProxyBody::empty()));
        }
        remove_hop_by_hop(&mut parts.headers, false);
        Ok(Response::from_parts(
            parts,
            ProxyBody::stream(body, self.idle_timeout),
        ))
    }

    fn upstream_error(&self, e: &hyper_util::client::legacy::Error, conn: &ConnInfo) -> Reject {
        let cause = std::error::Error::source(e)
            .map(ToString::to_string)
            .unwrap_or_else(|| e.to_string());
        tracing::warn!(
            peer = %conn.peer,
            upstream = %self.authority,
            error = %cause,
            connect = e.is_connect(),
            "backend request failed"
        );
        self.metrics.upstream_error(if e.is_connect() {
            "connect"
        } else {
            "protocol"
        });
        if e.is_connect() {
            Reject::bad_gateway(format!(
                "certgate cannot connect to the backend at {} ({cause}); check that it is running.",
                self.authority
            ))
        } else {
            Reject::bad_gateway(
                "The backend closed the connection or sent an invalid response.".to_string(),
            )
        }
    }
}

/// Safe to send twice (RFC 9110 §9.2.2).
fn is_idempotent(m: &http::Method) -> bool {
    matches!(
        *m,
        http::Method::GET
            | http::Method::HEAD
            | http::Method::OPTIONS
            | http::Method::PUT
            | http::Method::DELETE
            | http::Method::TRACE
    )
}

/// The pooled connection died before the backend answered anything.
fn is_retryable(e: &hyper_util::client::legacy::Error) -> bool {
    if e.is_connect() {
        return false;
    }
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<hyper::Error>())
        .is_some_and(|h| h.is_incomplete_message() || h.is_canceled() || h.is_closed())
}

/// HTTP/1.1 `Connection: upgrade` + `Upgrade: websocket`.
fn is_websocket_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && has_token(req.headers(), &header::CONNECTION, "upgrade")
        && has_token(req.headers(), &header::UPGRADE, "websocket")
}

fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// The value of a Content-Length sent more than once (all copies equal, see the policy).
fn declared_repeated(headers: &HeaderMap) -> Option<HeaderValue> {
    let mut all = headers.get_all(header::CONTENT_LENGTH).iter();
    let first = all.next()?;
    all.next().is_some().then(|| first.clone())
}

/// Joins several Cookie fields into one with `"; "` (RFC 9113 §8.2.3, RFC 6265 §5.4).
fn join_cookies(headers: &mut HeaderMap) {
    let mut all = headers.get_all(header::COOKIE).iter();
    let (Some(_), Some(_)) = (all.next(), all.next()) else {
        return;
    };
    let mut joined = Vec::new();
    for v in headers.get_all(header::COOKIE) {
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(v.as_bytes());
    }
    // Joined from valid values with a valid separator, so it is valid too.
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, v);
    }
}

/// Headers that `Connection` cannot name away: the Host the request is for and its framing
/// are certgate's to decide, and the Connection option is a client's, not a way to drop them
/// (RFC 9110 §7.6.1 lists only hop-by-hop fields as removable).
fn protected(name: &HeaderName) -> bool {
    name == header::HOST || name == header::CONTENT_LENGTH
}

/// Removes hop-by-hop headers and every header named in `Connection` (except Host and
/// Content-Length, see [`protected`]); for a WebSocket upgrade keeps `Upgrade` and sends
/// `Connection: upgrade` on.
fn remove_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .filter(|n| !protected(n))
        .collect();
    for name in listed {
        if !(keep_upgrade && name == header::UPGRADE) {
            headers.remove(name);
        }
    }
    for name in [
        header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
    ] {
        headers.remove(name);
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
}

/// Fuzzing hook: sanitizes headers parsed from arbitrary bytes (`name:value` lines) and checks
/// that no client value survives under a name certgate owns. Not used by the daemon.
#[doc(hidden)]
pub fn fuzz_sanitize(data: &[u8]) {
    let mut headers = HeaderMap::new();
    for line in data.split(|b| *b == b'\n') {
        let Some(pos) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(&line[..pos]),
            HeaderValue::from_bytes(&line[pos + 1..]),
        ) {
            headers.append(n, v);
        }
    }
    let names = HeaderNames::default();
    let policy = HeaderPolicy::new(&names, []);
    let conn = ConnInfo {
        peer: SocketAddr::from(([127, 0, 0, 1], 1)),
        peer_ip: HeaderValue::from_static("127.0.0.1"),
        identity: None,
        identity_headers: IdentityHeaders::render(&names, None),
        chain: Vec::new(),
        generation: std::sync::atomic::AtomicU64::new(0),
        close: tokio_util::sync::CancellationToken::new(),
        requests: Arc::default(),
        tunnels: tokio_util::task::TaskTracker::new(),
    };
    policy.sanitize(&mut headers, false, &conn);
    let only = |n: &str, v: &str| {
        let all: Vec<_> = headers.get_all(n).iter().collect();
        assert!(all.len() == 1 && all[0] == v, "{n}: {all:?}");
    };
    only("x-ssl-client-verify", "NONE");
    only("x-real-ip", "127.0.0.1");
    only("x-forwarded-for", "127.0.0.1");
    only("x-forwarded-proto", "https");
    for name in headers.keys() {
        let n = name.as_str().replace('_', "-");
        assert!(
            n == "x-ssl-client-verify"
                || !(n.starts_with("x-ssl-client-") || n.starts_with("ssl-client-")),
            "{n} survived"
        );
        assert!(
            n == "x-real-ip" || !SPOOFABLE.contains(&n.as_str()),
            "{n} survived"
        );
        assert!(
            matches!(
                n.as_str(),
                "x-forwarded-for" | "x-forwarded-proto" | "x-forwarded-host"
            ) || n == "x-ssl-client-verify"
                || !SPOOFABLE_PREFIXES.iter().any(|p| n.starts_with(p)),
            "{n} survived"
        );
    }
}

/// `[upstream]`, validated.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// `scheme://host:port` of the backend, as given.
    pub url: String,
    /// The backend's authority (`host:port`), used to build request URIs.
    pub authority: http::uri::Authority,
    /// Pool size.
    pub max_idle_connections: usize,
    /// TCP connect limit.
    pub connect_timeout: Duration,
    /// Response-header limit.
    pub response_timeout: Duration,
    /// Longest silence inside a body.
    pub idle_timeout: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_listed_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, X-Secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        remove_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn connection_cannot_name_host_or_content_length_away() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("Host, Content-Length"),
        );
        h.insert(header::HOST, HeaderValue::from_static("a.example"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("3"));
        remove_hop_by_hop(&mut h, false);
        assert_eq!(h[header::HOST], "a.example");
        assert_eq!(h[header::CONTENT_LENGTH], "3");
    }

    #[test]
    fn fuzz_invariants_hold_for_every_spoofable_name() {
        let mut input = String::new();
        for name in SPOOFABLE {
            input.push_str(&format!("{name}:x\n{}:y\n", name.replace('-', "_")));
        }
        for prefix in SPOOFABLE_PREFIXES {
            input.push_str(&format!("{prefix}anything:z\n"));
        }
        fuzz_sanitize(input.as_bytes());
    }

    #[test]
    fn cookie_fields_are_joined() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("alpha=1"));
        h.append(header::COOKIE, HeaderValue::from_static("beta=2"));
        h.append(header::COOKIE, HeaderValue::from_static("token=x"));
        join_cookies(&mut h);
        let all: Vec<_> = h.get_all(header::COOKIE).iter().collect();
        assert_eq!(all, ["alpha=1; beta=2; token=x"]);
        let mut one = HeaderMap::new();
        one.append(header::COOKIE, HeaderValue::from_static("a=1; b=2"));
        join_cookies(&mut one);
        assert_eq!(one[header::COOKIE], "a=1; b=2");
    }

    #[test]
    fn websocket_keeps_upgrade() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        remove_hop_by_hop(&mut h, true);
        assert_eq!(h[header::CONNECTION], "upgrade");
        assert_eq!(h[header::UPGRADE], "websocket");
    }
}
