//! Header hygiene for every request that leaves certgate, to the backend or to the forward-auth
//! service: hop-by-hop headers removed, everything a client could use to lie about itself
//! stripped in every spelling, then the proxy's own values set (strip before inject).

use std::borrow::Cow;
use std::net::SocketAddr;

use http::{HeaderMap, HeaderName, HeaderValue, Request, Version, header};

use crate::tls::identity::{HeaderNames, IdentityHeaders, Peer};

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

// Built at compile time: `from_static` at run time validates the name on every request.
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Hop-by-hop headers (RFC 9110 §7.6.1, RFC 9112 §7), besides `Upgrade` and those that
/// `Connection` names.
static HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

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
    pub fn sanitize(&self, headers: &mut HeaderMap, websocket: bool, peer: &Peer) {
        let host = headers.get(header::HOST).cloned();
        remove_hop_by_hop(headers, websocket);
        join_cookies(headers);
        self.strip_spoofable(headers);
        // Room for what follows at once: growing the map rehashes it, twice per request when
        // left to `insert`.
        headers.reserve(4 + peer.headers.len());
        headers.insert(X_REAL_IP.clone(), peer.ip.clone());
        headers.insert(X_FORWARDED_FOR.clone(), peer.ip.clone());
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("https"));
        if let Some(host) = host {
            headers.insert(X_FORWARDED_HOST.clone(), host);
        }
        for (name, value) in peer.headers.iter() {
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

/// HTTP/1.1 `Connection: upgrade` + `Upgrade: websocket`.
pub(super) fn is_websocket_upgrade<B>(req: &Request<B>) -> bool {
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
pub(super) fn declared_repeated(headers: &HeaderMap) -> Option<HeaderValue> {
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
pub(super) fn remove_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // One pass over the names finds which are there (HTTP/2 requests carry none, responses
    // from nginx or uvicorn only `Connection: keep-alive`); only those are looked up to be
    // removed, each lookup being a hash and a probe.
    let mut present = 0u8;
    let mut upgrade = false;
    for name in headers.keys() {
        // Every hop-by-hop name is 2, 7, 10, 16 or 17 bytes long: most names are told apart
        // by their length alone, without comparing them with each of the seven.
        if !matches!(name.as_str().len(), 2 | 7 | 10 | 16 | 17) {
            continue;
        }
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == name) {
            present |= 1 << i;
        } else if name == header::UPGRADE {
            upgrade = true;
        }
    }
    if present & 1 != 0 && !only_persistence(headers) {
        // `Connection` (first in the list) names more.
        let listed: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|t| !t.eq_ignore_ascii_case("keep-alive"))
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .filter(|n| !protected(n))
            .collect();
        for name in listed {
            if !(keep_upgrade && name == header::UPGRADE) {
                headers.remove(name);
            }
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else if upgrade {
        headers.remove(header::UPGRADE);
    }
}

/// `Connection` says only `keep-alive` or `close` (nearly every one does): it names no other
/// header, and the token-by-token walk can be skipped.
fn only_persistence(headers: &HeaderMap) -> bool {
    let mut all = headers.get_all(header::CONNECTION).iter();
    match (all.next(), all.next()) {
        (Some(v), None) => {
            let v = v.as_bytes();
            v.eq_ignore_ascii_case(b"keep-alive") || v.eq_ignore_ascii_case(b"close")
        }
        _ => false,
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
    let peer = Peer {
        addr: SocketAddr::from(([127, 0, 0, 1], 1)),
        ip: HeaderValue::from_static("127.0.0.1"),
        identity: None,
        headers: IdentityHeaders::render(&names, None),
    };
    policy.sanitize(&mut headers, false, &peer);
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
    fn the_length_filter_lets_every_hop_by_hop_name_through() {
        for name in HOP_BY_HOP.iter().chain([&header::UPGRADE]) {
            let mut h = HeaderMap::new();
            h.insert(name, HeaderValue::from_static("x"));
            h.insert("x-kept", HeaderValue::from_static("1"));
            remove_hop_by_hop(&mut h, false);
            assert_eq!(h.len(), 1, "{name} survived");
        }
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
