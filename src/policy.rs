//! What happens to a request before anything is forwarded, in the order of spec §8: request
//! form → path normalization → route match → method → route IP list → client certificate
//! requirement and identity allow-list → bearer token or forward auth → rate limit → (body size,
//! enforced while forwarding). The first failing check answers. The result is the exact target
//! to forward with the headers the checks add, or a [`Reject`] saying which rule refused it.

use std::sync::Arc;

use http::uri::PathAndQuery;
use http::{HeaderName, HeaderValue, Method, Request, Version};

use crate::config::Config;
use crate::forward::{ConnInfo, HeaderPolicy};
use crate::forward_auth::ForwardAuth;
use crate::jwt::JwtVerifier;
use crate::ratelimit::{Key, KeyBy, Zone};
use crate::reply::Reject;
use crate::routes::{self, Action, Auth, Route};

/// A request that passed every check.
#[derive(Debug)]
pub struct Admitted {
    /// Path (normalized, prefix stripped) and query to send to the backend.
    pub target: PathAndQuery,
    /// Headers the checks add (JWT subject, forward-auth copies).
    pub extra: Vec<(HeaderName, HeaderValue)>,
    /// Body limit for this request.
    pub max_body: u64,
    /// The index of the matched route, if any.
    pub route: Option<usize>,
}

/// Routes and everything they refer to.
#[derive(Debug)]
pub struct Policy {
    routes: Vec<Route>,
    zones: Vec<Arc<Zone>>,
    jwt: Option<Arc<JwtVerifier>>,
    forward_auth: Option<ForwardAuth>,
    max_body: u64,
}

impl Policy {
    /// Builds the policy from a validated config. A zone that `previous` has with the same
    /// name, key, rate and burst is carried over with its buckets, so a reload does not hand
    /// every client a fresh burst.
    pub fn new(config: &Config, previous: Option<&Policy>) -> Policy {
        let zones = config
            .rate_limits
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
            routes: config.routes.clone(),
            zones,
            jwt: config.jwt.clone(),
            forward_auth: config
                .forward_auth
                .as_ref()
                .map(|f| ForwardAuth::new(f.url.clone(), f.timeout, f.copy_headers.clone())),
            max_body: config.limits.max_body,
        }
    }

    /// Header names only certgate may set because a check sets them.
    pub fn owned_headers(&self) -> Vec<HeaderName> {
        let mut names = Vec::new();
        if let Some(j) = &self.jwt {
            names.push(j.subject_header.clone());
        }
        if let Some(f) = &self.forward_auth {
            names.extend(f.copy_headers().iter().cloned());
        }
        names
    }

    /// Forgets idle rate-limit keys.
    pub fn evict_idle(&self) {
        for z in &self.zones {
            z.evict_idle();
        }
    }

    /// Runs every check on one request.
    ///
    /// # Errors
    /// The [`Reject`] of the first check that fails.
    pub async fn check<B>(
        &self,
        req: &Request<B>,
        conn: &ConnInfo,
        headers: &HeaderPolicy,
    ) -> Result<Admitted, Reject> {
        let mut matched_route = None;
        self.check_inner(req, conn, headers, &mut matched_route)
            .await
            .map_err(|mut r| {
                r.route = matched_route;
                r
            })
    }

    async fn check_inner<B>(
        &self,
        req: &Request<B>,
        conn: &ConnInfo,
        headers: &HeaderPolicy,
        matched_route: &mut Option<usize>,
    ) -> Result<Admitted, Reject> {
        if req.method() == Method::CONNECT {
            return Err(Reject::bad_request(
                "CONNECT is not supported: certgate is a reverse proxy, not a forward proxy.",
            ));
        }
        // HTTP/1 absolute-form (`GET http://host/path`) is what forward proxies receive;
        // accepting it would let a client name a host other than its Host header. HTTP/2 always
        // carries scheme and authority, so only HTTP/1 is refused.
        if req.version() <= Version::HTTP_11 && req.uri().scheme().is_some() {
            return Err(Reject::bad_request(
                "Absolute-form request targets are not accepted; send only the path.",
            ));
        }
        let path = routes::normalize(req.uri().path())
            .map_err(|e| Reject::bad_request(format!("Bad request path: {e}.")))?;
        let matched = routes::first_match(&self.routes, &path);
        let mut extra = Vec::new();
        let mut max_body = self.max_body;
        let mut path = path;
        let mut strip = None;
        if let Some((i, route)) = matched {
            *matched_route = Some(i);
            let label = &route.label;
            if route.action == Action::Deny {
                return Err(Reject::forbidden(
                    format!(
                        "Access to this path is denied by the proxy's route {:?}.",
                        route.path
                    ),
                    format!("{label} deny"),
                ));
            }
            let rules = &route.rules;
            if !rules.allows_method(req.method()) {
                return Err(Reject::method_not_allowed(
                    req.method(),
                    &rules.allow_header(),
                    format!("{label} methods"),
                ));
            }
            if !rules.allow_ips.allows(conn.peer.ip()) {
                return Err(Reject::forbidden(
                    format!(
                        "Your address {} is not on the allow_ips list of route {:?}.",
                        conn.peer.ip(),
                        route.path
                    ),
                    format!("{label} allow_ips"),
                ));
            }
            if rules.client_cert_required && conn.identity.is_none() {
                return Err(Reject::forbidden(
                    format!(
                        "Route {:?} requires a client certificate; connect with one issued by this server's CA.",
                        route.path
                    ),
                    format!("{label} client_cert"),
                ));
            }
            if let (Some(allow), Some(id)) = (&rules.allow, &conn.identity)
                && !allow.admits(id)
            {
                return Err(Reject::forbidden(
                    format!(
                        "Your certificate ({}) is not on the allow list of route {:?}.",
                        id.subject_dn, route.path
                    ),
                    format!("{label} allow"),
                ));
            }
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
                            r.rule = Some(format!("{label} jwt"));
                            r
                        })?;
                    let value = HeaderValue::from_str(&subject).map_err(|_| {
                        Reject::invalid_token("the subject claim cannot be sent as a header")
                    })?;
                    extra.push((jwt.subject_header.clone(), value));
                }
                Auth::Forward => {
                    let Some(fa) = &self.forward_auth else {
                        return Err(Reject::service_unavailable(
                            "Forward authentication is not configured.",
                        ));
                    };
                    let original = req
                        .uri()
                        .path_and_query()
                        .cloned()
                        .unwrap_or_else(|| PathAndQuery::from_static("/"));
                    let copied = fa
                        .check(req.headers(), req.method(), &original, conn, headers)
                        .await
                        .map_err(|mut r| {
                            r.rule = Some(format!("{label} forward_auth"));
                            r
                        })?;
                    extra.extend(copied);
                }
            }
            if let Some(zone) = rules.rate_limit.and_then(|z| self.zones.get(z)) {
                let key = match (zone.key_by, &conn.identity) {
                    (KeyBy::Client, Some(id)) => Key::Cert(Arc::from(id.fingerprint.as_str())),
                    _ => Key::Ip(conn.peer.ip()),
                };
                if let Err(wait) = zone.check(&key) {
                    let mut r = Reject::too_many_requests(&zone.name, wait);
                    r.rule = Some(format!("{label} rate_limit {}", zone.name));
                    return Err(r);
                }
            }
            if let Some(mb) = rules.max_body {
                max_body = mb;
            }
            if let Some(prefix) = &rules.strip_prefix {
                strip = Some(prefix);
            }
        }
        if let Some(prefix) = strip {
            path = routes::strip_prefix(&path, prefix);
        }
        // The path is what the client sent (already normal, nothing stripped): forward the
        // request's own path and query without building a new one.
        let target = match req.uri().path_and_query() {
            Some(pq) if strip.is_none() && pq.path() == path.as_str() => pq.clone(),
            _ => {
                let target = match req.uri().query() {
                    Some(q) => format!("{}?{q}", path.as_str()),
                    None => path.as_str().to_string(),
                };
                PathAndQuery::try_from(target)
                    .map_err(|e| Reject::bad_request(format!("Bad request target: {e}.")))?
            }
        };
        Ok(Admitted {
            target,
            extra,
            max_body,
            route: *matched_route,
        })
    }
}
