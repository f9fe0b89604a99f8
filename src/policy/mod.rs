//! What happens to a request before anything is forwarded, in the order of spec §8: request
//! form → path normalization → route match → method → route IP list → client certificate
//! requirement and identity allow-list → bearer token or forward auth → rate limit → (body size,
//! enforced while forwarding). The first failing check answers. The result is the exact target
//! to forward with the headers the checks add, or a `Reject` saying which rule refused it.

pub(crate) mod access;
pub(crate) mod forward_auth;
pub(crate) mod jwt;
pub(crate) mod ratelimit;
pub mod routes;
pub(crate) mod shared;

use std::sync::Arc;

use http::uri::PathAndQuery;
use http::{HeaderName, HeaderValue, Method, Request, Version, header};

use crate::response::reply::{Check, Reject, Rule};
use crate::tls::identity::Peer;
use crate::upstream::{HeaderPolicy, Outbound};
use forward_auth::{ForwardAuth, ForwardAuthConfig};
use jwt::JwtVerifier;
use ratelimit::{Key, KeyBy, RateLimitZone, Zone};
use routes::{Action, Auth, Route};

/// What a [`Policy`] is built from: the validated routes and the sections they refer to.
#[derive(Debug, Clone, Copy)]
pub struct Settings<'a> {
    /// `[[route]]`, in order.
    pub routes: &'a [Route],
    /// `[[rate_limit]]` zones, by index.
    pub zones: &'a [RateLimitZone],
    /// `[[queue]]`, by index.
    pub queues: &'a [crate::queue::QueueSettings],
    /// `[jwt]`.
    pub jwt: Option<&'a Arc<JwtVerifier>>,
    /// `[forward_auth]`.
    pub forward_auth: Option<&'a ForwardAuthConfig>,
    /// `[limits] max_body`.
    pub max_body: u64,
    /// `[shared]`: zones kept in Redis.
    pub shared: Option<&'a shared::SharedConfig>,
}

impl Settings<'_> {
    /// Header names only certgate may set because a check sets them: the JWT subject header and
    /// forward auth's copied headers. A client's own are stripped like the identity headers.
    pub fn owned_headers(&self) -> Vec<HeaderName> {
        let mut names = Vec::new();
        if let Some(j) = self.jwt {
            names.push(j.subject_header.clone());
        }
        if let Some(f) = self.forward_auth {
            names.extend(f.copy_headers.iter().cloned());
        }
        names
    }
}

/// Routes and everything they refer to.
#[derive(Debug)]
pub struct Policy {
    routes: Vec<Route>,
    zones: Vec<Arc<Zone>>,
    /// Per zone: kept per replica (`scope = "local"`, or no `[shared]`).
    zone_local: Vec<bool>,
    shared: Option<Arc<shared::SharedLimits>>,
    jwt: Option<Arc<JwtVerifier>>,
    forward_auth: Option<ForwardAuth>,
    max_body: u64,
    /// Per `[[queue]]`: who a person is, and whether a job is a Gradio event.
    queue_keys: Vec<(crate::queue::KeyBy, bool)>,
}

/// The access conditions of `direct`, the allow route that matches the path `via` forwards
/// after its `strip_prefix`, checked on a request `via` admitted: what refuses the stripped
/// path asked directly refuses it this way too, since the backend cannot tell the two apart.
/// A token `direct` requires and `via` does not is refused rather than asked for: the request
/// was never meant to carry one for that route. A rate limit or body limit is not access and
/// stays `via`'s.
fn after_strip<B>(
    direct: &Route,
    via: &Route,
    req: &Request<B>,
    peer: &Peer,
    prefix: &str,
) -> Result<(), Reject> {
    let rules = &direct.rules;
    let label = &direct.label;
    let refuse = |why: String, check: Check| {
        Err(Reject::forbidden(
            format!(
                "{why} (the path after strip_prefix {prefix:?} is route {:?}'s).",
                direct.path
            ),
            Rule::on(label, check),
        ))
    };
    if !rules.allows_method(req.method()) {
        let mut r = Reject::method_not_allowed(
            req.method(),
            &rules.allow_header(),
            Rule::on(label, Check::Methods),
        );
        r.message = format!(
            "{} is not allowed on route {:?}, which the path after strip_prefix {prefix:?} is; allowed: {}.",
            req.method(),
            direct.path,
            rules.allow_header()
        );
        return Err(r);
    }
    if !rules.allow_ips.allows(peer.addr.ip()) {
        return refuse(
            format!(
                "Your address {} is not on its allow_ips list",
                peer.addr.ip()
            ),
            Check::AllowIps,
        );
    }
    if rules.client_cert_required && peer.identity.is_none() {
        return refuse("It requires a client certificate".into(), Check::ClientCert);
    }
    if let (Some(allow), Some(id)) = (&rules.allow, &peer.identity)
        && !allow.admits(id)
    {
        return refuse(
            format!(
                "Your certificate ({}) is not on its allow list",
                id.subject_dn
            ),
            Check::Allow,
        );
    }
    let check = match rules.auth {
        Auth::Jwt => Check::Jwt,
        Auth::Forward => Check::ForwardAuth,
        Auth::None => return Ok(()),
    };
    if rules.auth != via.rules.auth {
        return refuse(
            "It requires its own authentication; ask it directly".into(),
            check,
        );
    }
    Ok(())
}

impl Policy {
    /// Builds the policy from a validated config. A zone that `previous` has with the same
    /// name, key, rate and burst is carried over with its buckets, so a reload does not hand
    /// every client a fresh burst.
    /// `headers` is what forward auth's requests are cleaned with, as the backend's are.
    pub fn new(
        settings: &Settings<'_>,
        headers: Arc<HeaderPolicy>,
        metrics: &Arc<crate::ops::metrics::Metrics>,
        previous: Option<&Policy>,
    ) -> Policy {
        // The Redis connection survives a reload that keeps the same [shared] section.
        let shared = settings.shared.map(|config| {
            previous
                .and_then(|p| p.shared.as_ref())
                .filter(|s| s.same_as(config))
                .cloned()
                .unwrap_or_else(|| shared::SharedLimits::new(config.clone(), metrics.clone()))
        });
        let zones = settings
            .zones
            .iter()
            .map(|z| {
                previous
                    .and_then(|p| {
                        p.zones
                            .iter()
                            .find(|old| old.same_as(&z.name, z.key_by, z.rate, z.burst))
                    })
                    .cloned()
                    .unwrap_or_else(|| Arc::new(Zone::new(&z.name, z.key_by, z.rate, z.burst)))
            })
            .collect();
        Policy {
            routes: settings.routes.to_vec(),
            zones,
            zone_local: settings
                .zones
                .iter()
                .map(|z| z.local || settings.shared.is_none())
                .collect(),
            shared,
            jwt: settings.jwt.cloned(),
            forward_auth: settings.forward_auth.map(|f| ForwardAuth::new(f, headers)),
            max_body: settings.max_body,
            queue_keys: settings
                .queues
                .iter()
                .map(|q| (q.key, q.protocol == crate::queue::Protocol::Gradio))
                .collect(),
        }
    }

    /// Counts a request in zone `z`: in Redis for a shared zone (with `on_unavailable` while
    /// Redis cannot answer), else in the replica's own limiter.
    async fn limit(&self, z: usize, zone: &Zone, key: &Key) -> Result<(), std::time::Duration> {
        let Some(shared) = self.shared.as_ref().filter(|_| !self.zone_local[z]) else {
            return zone.check(key);
        };
        match shared.check(zone, key).await {
            shared::Verdict::Admit => Ok(()),
            shared::Verdict::Wait(wait) => Err(wait),
            shared::Verdict::Unavailable => match shared.on_unavailable() {
                shared::OnUnavailable::Local => zone.check(key),
                shared::OnUnavailable::Allow => Ok(()),
                shared::OnUnavailable::Deny => Err(std::time::Duration::from_secs(1)),
            },
        }
    }

    /// The Redis store, with `[shared]`.
    pub(crate) fn shared(&self) -> Option<&Arc<shared::SharedLimits>> {
        self.shared.as_ref()
    }

    /// Forgets idle rate-limit keys.
    pub fn evict_idle(&self) {
        for z in &self.zones {
            z.evict_idle();
        }
    }

    /// Runs every check on one request and says what to send to the backend. The index of
    /// the route the request matched goes to `matched_route` whatever the outcome (the
    /// per-route counters count refusals too).
    ///
    /// # Errors
    /// The `Reject` of the first check that fails.
    pub async fn check<B>(
        &self,
        req: &Request<B>,
        peer: &Peer,
        matched_route: &mut Option<usize>,
    ) -> Result<Outbound, Reject> {
        let host = check_form(req)?;
        let path = routes::normalize(req.uri().path())
            .map_err(|e| Reject::bad_request(format!("Bad request path: {e}.")))?;
        let matched = routes::first_match(&self.routes, &path);
        let mut extra = Vec::new();
        let mut max_body = self.max_body;
        let mut forwarded = None;
        let mut group = 0;
        let mut queue = None;
        if let Some((i, route)) = matched {
            *matched_route = Some(i);
            let label = &route.label;
            if route.action == Action::Deny {
                return Err(Reject::forbidden(
                    format!(
                        "Access to this path is denied by the proxy's route {:?}.",
                        route.path
                    ),
                    Rule::on(label, Check::Deny),
                ));
            }
            if let Some(prefix) = &route.rules.strip_prefix {
                let stripped = routes::strip_prefix(&path, prefix);
                // `/api/internal` with `strip_prefix = "/api"` reaches the backend as
                // `/internal`: a deny rule that refuses `/internal` asked directly must refuse
                // it this way too, since the backend cannot tell the two apart.
                if let Some(deny) =
                    routes::deny_after_strip(&self.routes, &stripped, route.rules.upstream)
                {
                    return Err(Reject::forbidden(
                        format!(
                            "Access to this path is denied by the proxy's route {:?} (the path after strip_prefix {prefix:?}).",
                            deny.path
                        ),
                        Rule::on(label, Check::DenyAfterStrip(deny.label.clone())),
                    ));
                }
                // Likewise a route that admits the stripped path only on conditions (`/admin`
                // for one identity) keeps them: `/api/admin` is `/admin` to the backend. Not
                // one that strips a prefix itself: what it forwards is another path.
                if let Some((_, direct)) =
                    routes::first_match(&self.routes, &stripped).filter(|(_, r)| {
                        r.action == Action::Allow
                            && !r.is_catch_all()
                            && r.rules.strip_prefix.is_none()
                            && r.rules.upstream == route.rules.upstream
                    })
                {
                    after_strip(direct, route, req, peer, prefix)?;
                }
                forwarded = Some(stripped);
            }
            let rules = &route.rules;
            if !rules.allows_method(req.method()) {
                return Err(Reject::method_not_allowed(
                    req.method(),
                    &rules.allow_header(),
                    Rule::on(label, Check::Methods),
                ));
            }
            if !rules.allow_ips.allows(peer.addr.ip()) {
                return Err(Reject::forbidden(
                    format!(
                        "Your address {} is not on the allow_ips list of route {:?}.",
                        peer.addr.ip(),
                        route.path
                    ),
                    Rule::on(label, Check::AllowIps),
                ));
            }
            if rules.client_cert_required && peer.identity.is_none() {
                return Err(Reject::forbidden(
                    format!(
                        "Route {:?} requires a client certificate; connect with one issued by this server's CA.",
                        route.path
                    ),
                    Rule::on(label, Check::ClientCert),
                ));
            }
            if let (Some(allow), Some(id)) = (&rules.allow, &peer.identity)
                && !allow.admits(id)
            {
                return Err(Reject::forbidden(
                    format!(
                        "Your certificate ({}) is not on the allow list of route {:?}.",
                        id.subject_dn, route.path
                    ),
                    Rule::on(label, Check::Allow),
                ));
            }
            // The JWT subject, or the first header forward auth copied: who a queue's
            // `key = "subject"` counts turns by.
            let mut queue_subject: Option<String> = None;
            match rules.auth {
                Auth::None => {}
                Auth::Jwt => {
                    let Some(jwt) = &self.jwt else {
                        // Config validation refuses auth = "jwt" without [jwt].
                        return Err(Reject::service_unavailable(
                            "Token checking is not configured.",
                        ));
                    };
                    let subject = JwtVerifier::token_from(req.headers())
                        .and_then(|t| jwt.verify(t))
                        .map_err(|e| {
                            let mut r = Reject::invalid_token(&e.to_string());
                            r.rule = Some(Box::new(Rule::on(label, Check::Jwt)));
                            r
                        })?;
                    let value = HeaderValue::from_str(&subject).map_err(|_| {
                        Reject::invalid_token("the subject claim cannot be sent as a header")
                    })?;
                    extra.push((jwt.subject_header.clone(), value));
                    queue_subject = Some(subject);
                }
                Auth::Forward => {
                    let Some(fa) = &self.forward_auth else {
                        return Err(Reject::service_unavailable(
                            "Forward authentication is not configured.",
                        ));
                    };
                    // What the auth service is asked about is exactly what will be forwarded.
                    let target = target(req, forwarded.as_ref().unwrap_or(&path))?;
                    let copied = fa
                        .check(req.headers(), req.method(), &target, &host, peer)
                        .await
                        .map_err(|mut r| {
                            r.rule = Some(Box::new(Rule::on(label, Check::ForwardAuth)));
                            r
                        })?;
                    queue_subject = copied
                        .first()
                        .and_then(|(_, v)| v.to_str().ok())
                        .map(str::to_owned);
                    extra.extend(copied);
                }
            }
            if let Some((z, zone)) = rules
                .rate_limit
                .and_then(|z| self.zones.get(z).map(|zone| (z, zone)))
            {
                let key = match (zone.key_by, &peer.identity) {
                    (KeyBy::Client, Some(id)) => Key::Cert(Arc::from(id.fingerprint.as_str())),
                    _ => Key::Ip(peer.addr.ip()),
                };
                if let Err(wait) = self.limit(z, zone, &key).await {
                    let mut r = Reject::too_many_requests(&zone.name, wait);
                    r.rule = Some(Box::new(Rule::on(
                        label,
                        Check::RateLimit(zone.name.as_str().into()),
                    )));
                    return Err(r);
                }
            }
            if let Some(mb) = rules.max_body {
                max_body = mb;
            }
            group = rules.upstream;
            if let Some(q) = rules.queue
                && let Some(&(key, gradio)) = self.queue_keys.get(q)
                // A Gradio job starts with a POST (join, call); the call's result stream
                // (a GET under the same route) is how it ends, and must not wait its turn.
                && (!gradio || req.method() == Method::POST)
            {
                queue = Some(crate::queue::Ticket {
                    queue: q,
                    person: person(Some(key), peer, queue_subject),
                });
            }
        }
        let target = target(req, forwarded.as_ref().unwrap_or(&path))?;
        Ok(Outbound {
            target,
            host,
            extra,
            max_body,
            group,
            queue,
        })
    }
}

/// Who a queued request's person is, by the queue's `key`: a subject that forward auth did not
/// give (its service copied no header) counts as the client, so it still waits its turn.
fn person(
    key: Option<crate::queue::KeyBy>,
    peer: &Peer,
    subject: Option<String>,
) -> crate::queue::Person {
    use crate::queue::KeyBy;
    let id = peer.identity.as_deref();
    let fingerprint: Option<Arc<str>> = id.map(|i| Arc::from(i.fingerprint.as_str()));
    let ip = peer.addr.ip();
    // An IPv6 client counts by its /64: one host holds the whole network and can send each job
    // from a new address of it, each a new person with its own turn ahead of everyone else.
    let network = match ip.to_canonical() {
        std::net::IpAddr::V6(v6) => std::net::IpAddr::V6(std::net::Ipv6Addr::from_bits(
            v6.to_bits() & !((1u128 << 64) - 1),
        )),
        v4 => v4,
    };
    let key: Arc<str> = match (key, subject, &fingerprint) {
        (Some(KeyBy::Subject), Some(s), _) => format!("subject:{s}").into(),
        (Some(KeyBy::Ip), _, _) | (_, _, None) => format!("ip:{network}").into(),
        (_, _, Some(f)) => format!("cert:{f}").into(),
    };
    crate::queue::Person {
        key,
        subject_dn: id.map(|i| Arc::from(i.subject_dn.as_str())),
        fingerprint,
        ip,
    }
}

/// Most header fields in a request, over HTTP/1 (hyper's parser, see `reload`) and HTTP/2
/// alike; beyond it, 431.
pub(crate) const MAX_HEADERS: usize = 100;

/// The checks on the request's form that come before its path (RFC 9110/9112/9113): the
/// method, the request target, framing, and the one Host it names, which is returned: the Host
/// the backend and the auth service are both sent.
///
/// # Errors
/// 400 for an ambiguous or malformed request, 431 for too many header fields, 501 for a
/// transfer coding other than chunked.
fn check_form<B>(req: &Request<B>) -> Result<HeaderValue, Reject> {
    let method = req.method();
    if method == Method::CONNECT {
        return Err(Reject::bad_request(
            "CONNECT is not supported: certgate is a reverse proxy, not a forward proxy.",
        ));
    }
    // Method names are case-sensitive (RFC 9110 §9.1): `get` is not GET, and a backend that
    // upper-cases it would run a method the routes' `methods` lists never saw. nginx: 400.
    if method.as_str().bytes().any(|b| b.is_ascii_lowercase()) {
        return Err(Reject::bad_request(format!(
            "Method names are case-sensitive: {:?} is not a method; use upper case, e.g. {:?}.",
            method.as_str(),
            method.as_str().to_ascii_uppercase()
        )));
    }
    // HTTP/1 absolute-form (`GET http://host/path`) is what forward proxies receive;
    // accepting it would let a client name a host other than its Host header. HTTP/2 always
    // carries scheme and authority, so only HTTP/1 is refused.
    if req.version() <= Version::HTTP_11 && req.uri().scheme().is_some() {
        return Err(Reject::bad_request(
            "Absolute-form request targets are not accepted; send only the path.",
        ));
    }
    let headers = req.headers();
    if headers.len() > MAX_HEADERS {
        return Err(Reject::header_fields_too_large(format!(
            "The request has {} header fields; at most {MAX_HEADERS} are accepted.",
            headers.len()
        )));
    }
    // hyper frames HTTP/1 bodies by a final `chunked` and would pass the other codings on as
    // if they were not there; nginx answers 501 for any coding but chunked.
    for te in headers.get_all(header::TRANSFER_ENCODING) {
        let only_chunked = te.to_str().is_ok_and(|v| {
            v.split(',')
                .all(|t| t.trim().eq_ignore_ascii_case("chunked"))
        });
        if !only_chunked {
            return Err(Reject::not_implemented(
                "Only the chunked transfer coding is supported in requests.",
            ));
        }
    }
    let mut lengths = headers.get_all(header::CONTENT_LENGTH).iter();
    if let Some(first) = lengths.next()
        && lengths.any(|v| v != first)
    {
        return Err(Reject::bad_request(
            "The request has conflicting Content-Length headers.",
        ));
    }
    request_host(req)
}

/// The one authority the request names: `:authority` over HTTP/2 (a `host` field beside it
/// must agree; alone, it is used), the single Host header over HTTP/1 (RFC 9112 §3.2: none or
/// several is a 400). Userinfo (`user@host`) is refused: it is deprecated in http(s) URIs and a
/// backend could read the host from either side of the `@`.
fn request_host<B>(req: &Request<B>) -> Result<HeaderValue, Reject> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(Reject::bad_request(
            "The request has more than one Host header.",
        ));
    }
    let value = match (req.version(), req.uri().authority(), host) {
        (Version::HTTP_2 | Version::HTTP_3, Some(authority), host) => {
            let value = HeaderValue::from_str(authority.as_str())
                .map_err(|_| Reject::bad_request("The request's :authority is not valid."))?;
            if host.is_some_and(|h| !h.as_bytes().eq_ignore_ascii_case(value.as_bytes())) {
                return Err(Reject::bad_request(
                    "The request's Host header differs from its :authority.",
                ));
            }
            // Already parsed as an authority by the HTTP/2 layer: checked here, not parsed
            // again.
            return checked_authority(authority).map(|()| value);
        }
        (_, _, Some(host)) => host.clone(),
        (_, _, None) => {
            return Err(Reject::bad_request(
                "The request has no Host header; send the name of the site you are asking for.",
            ));
        }
    };
    let authority = value
        .to_str()
        .ok()
        .and_then(|v| v.parse::<http::uri::Authority>().ok())
        .ok_or_else(|| Reject::bad_request("The request's Host is not a valid host name."))?;
    checked_authority(&authority).map(|()| value)
}

/// A host name is there, and no user information (`user@host`).
fn checked_authority(authority: &http::uri::Authority) -> Result<(), Reject> {
    if authority.host().is_empty() {
        return Err(Reject::bad_request(
            "The request's Host is not a valid host name.",
        ));
    }
    if authority.as_str().contains('@') {
        return Err(Reject::bad_request(
            "The request's Host carries user information (user@host), which is not accepted.",
        ));
    }
    Ok(())
}

/// The path and query to send: `path` (normalized, prefix stripped) and the query as the
/// client sent it.
fn target<B>(req: &Request<B>, path: &routes::NormalizedPath) -> Result<PathAndQuery, Reject> {
    // The path is what the client sent (already normal, nothing stripped): forward the
    // request's own path and query without building a new one.
    match req.uri().path_and_query() {
        Some(pq) if pq.path() == path.as_str() => Ok(pq.clone()),
        _ => {
            let target = match req.uri().query() {
                Some(q) => format!("{}?{q}", path.as_str()),
                None => path.as_str().to_string(),
            };
            PathAndQuery::try_from(target)
                .map_err(|e| Reject::bad_request(format!("Bad request target: {e}.")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(addr: &str) -> Peer {
        Peer {
            addr: addr.parse().unwrap(),
            ip: HeaderValue::from_static("-"),
            identity: None,
            headers: crate::tls::identity::IdentityHeaders::default(),
        }
    }

    /// A queue's person by IP is an IPv6 client's /64: addresses picked at will within one
    /// network are one person (one turn), another /64 is another; IPv4 stays per address.
    #[test]
    fn a_queue_counts_an_ipv6_client_by_its_64() {
        use crate::queue::KeyBy;
        let key = |addr: &str, by| person(Some(by), &peer(addr), None).key;
        let a = key("[2001:db8:1:2::1]:443", KeyBy::Ip);
        assert_eq!(&*a, "ip:2001:db8:1:2::");
        assert_eq!(a, key("[2001:db8:1:2:ffff:1234:5:6]:443", KeyBy::Ip));
        assert_eq!(a, key("[2001:db8:1:2::9]:443", KeyBy::Client));
        assert_ne!(a, key("[2001:db8:1:3::1]:443", KeyBy::Ip));
        assert_eq!(&*key("127.0.0.7:443", KeyBy::Ip), "ip:127.0.0.7");
        assert_eq!(&*key("[::ffff:10.0.0.7]:443", KeyBy::Ip), "ip:10.0.0.7");
        // What `/usage` shows as the person's address stays the one the job came from.
        let p = person(Some(KeyBy::Ip), &peer("[2001:db8:1:2::1]:443"), None);
        assert_eq!(p.ip.to_string(), "2001:db8:1:2::1");
    }
}
