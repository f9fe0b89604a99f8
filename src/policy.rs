//! What happens to a request before anything is forwarded: the request form is checked, the
//! path normalized once, and the routes consulted in order. The result is either the exact path
//! and query to forward or a [`Reject`] saying why not.

use http::uri::PathAndQuery;
use http::{Method, Request, Version};

use crate::reply::Reject;
use crate::routes::{self, Action, Route};

/// Checks one request against the routes.
///
/// # Errors
/// 400 for a malformed or ambiguous request, 403 when a route denies it.
pub fn check<B>(req: &Request<B>, routes: &[Route]) -> Result<PathAndQuery, Reject> {
    if req.method() == Method::CONNECT {
        return Err(Reject::bad_request(
            "CONNECT is not supported: certgate is a reverse proxy, not a forward proxy.",
        ));
    }
    // HTTP/1 absolute-form (`GET http://host/path`) is what forward proxies receive; accepting it
    // would let a client name a host other than its Host header. HTTP/2 always carries scheme and
    // authority, so only HTTP/1 is refused.
    if req.version() <= Version::HTTP_11 && req.uri().scheme().is_some() {
        return Err(Reject::bad_request(
            "Absolute-form request targets are not accepted; send only the path.",
        ));
    }
    let path = routes::normalize(req.uri().path())
        .map_err(|e| Reject::bad_request(format!("Bad request path: {e}.")))?;
    if let Some((i, route)) = routes::first_match(routes, &path)
        && route.action == Action::Deny
    {
        return Err(Reject::forbidden(
            format!(
                "Access to this path is denied by the proxy's route {:?}.",
                route.path
            ),
            format!("route[{i}] deny {}", route.path),
        ));
    }
    let pq = match req.uri().query() {
        Some(q) => format!("{}?{q}", path.as_str()),
        None => path.as_str().to_string(),
    };
    PathAndQuery::try_from(pq).map_err(|e| Reject::bad_request(format!("Bad request target: {e}.")))
}
