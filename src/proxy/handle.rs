//! One request on an admitted connection. The inner handler runs the checks in order — the
//! connection's re-check after a reload, the policy, the forward — and returns the backend's
//! response or the [`Reject`] of the first check that failed. The outer handler is the one place
//! that logs a refusal, counts it, renders it, adds `[response_headers]`, and hangs the access
//! record (with the request's in-flight guard) on the response body.

use std::time::Instant;

use http::{HeaderName, HeaderValue, Method, Request, Response, Version, header};
use hyper::body::Incoming;

use super::conn::Conn;
use super::runtime::{Runtime, Shared};
use crate::onboarding::Enrolled;
use crate::response::access_log::AccessRecord;
use crate::response::body::ProxyBody;
use crate::response::reply::{Check, Reject};

/// What is known about a request as it goes through the checks; becomes its access record.
struct Context {
    start: Instant,
    method: Method,
    version: Version,
    /// The path as received, when the access log wants it (refusals take it anyway).
    path: Option<String>,
    /// The path as received, taken when a check refused the request and `path` was not kept.
    refused_path: Option<String>,
    /// The matched route, for the per-route counters.
    route: Option<usize>,
    /// The connection must close after this answer (its certificate failed the re-check).
    closing: bool,
}

/// Answers one request: the backend's response, or certgate's own.
pub(super) async fn handle(
    shared: &Shared,
    conn: &Conn,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    let request = conn
        .requests
        .begin(!hyper::body::Body::is_end_stream(req.body()));
    let rt = shared.current();
    let mut cx = Context {
        start: Instant::now(),
        method: req.method().clone(),
        version: req.version(),
        path: rt.access_log.then(|| loggable_path(&rt, req.uri().path())),
        refused_path: None,
        route: None,
        closing: false,
    };
    let (mut resp, rule) = match inner(&rt, conn, req, &mut cx).await {
        Ok(resp) => (resp, None),
        Err(reject) => {
            let rule = reject.rule.as_ref().map(ToString::to_string);
            if reject.status.is_client_error() {
                let label = rule.as_deref().unwrap_or("-");
                shared.metrics.denied(label);
                if let Some(Check::RateLimit(zone)) = reject.rule.as_ref().map(|r| &r.check) {
                    shared.metrics.rate_limited(zone);
                }
                tracing::info!(
                    peer = %conn.peer.addr,
                    reason = reject.message.as_str(),
                    subject_dn = conn.peer.identity.as_ref().map_or("-", |i| i.subject_dn.as_str()),
                    path = cx.path.as_deref().or(cx.refused_path.as_deref()).unwrap_or("-"),
                    status = reject.status.as_u16(),
                    rule = label,
                    "request refused"
                );
            }
            (reject.to_response(), rule)
        }
    };
    if cx.closing {
        if cx.version <= Version::HTTP_11 {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        conn.close.cancel();
    }
    add_response_headers(&mut resp, &rt.response_headers);
    let status = resp.status().as_u16();
    resp.body_mut().set_log(AccessRecord {
        start: cx.start,
        peer: conn.peer.addr,
        identity: conn.peer.identity.clone(),
        method: cx.method,
        path: cx.path,
        status,
        rule,
        error: None,
        counters: cx
            .route
            .and_then(|i| rt.route_counters.get(i))
            .unwrap_or(&rt.none_counters)
            .clone(),
        log: rt.access_log,
        metrics: shared.metrics.clone(),
        request,
    });
    resp
}

/// The checks, then the forward.
async fn inner(
    rt: &Runtime,
    conn: &Conn,
    req: Request<Incoming>,
    cx: &mut Context,
) -> Result<Response<ProxyBody>, Reject> {
    // Only a refusal needs the path when the access log is off: taken then, not per request.
    let refused = |cx: &mut Context, req: &Request<Incoming>| {
        if cx.path.is_none() {
            cx.refused_path = Some(loggable_path(rt, req.uri().path()));
        }
    };
    // Certgate's own: invitation links answer any connection, and a connection whose
    // certificate was refused gets the help page whatever it asks for.
    if rt.onboarding.claims(req.uri().path()) {
        let _counted = rt.onboarding.one_at_a_time().await;
        // An address over its limit is refused at accept; one that went over on a connection
        // it still holds (HTTP/2 streams, keep-alive) is refused here, before any lookup.
        if let Some(wait) = rt.handshake_throttle.blocked_for(conn.peer.addr.ip()) {
            // And the connection goes, as the address's next one would be refused.
            cx.closing = true;
            refused(cx, &req);
            return Err(rt.onboarding.locked_out(wait, req.headers()));
        }
        return match rt
            .onboarding
            .enroll(req.method(), req.uri().path(), req.headers())
            .await
        {
            Enrolled::Served(resp) => Ok(resp),
            Enrolled::Refused { reject, guessed } => {
                if guessed {
                    super::conn::throttle(rt, conn.peer.addr);
                }
                refused(cx, &req);
                Err(reject)
            }
        };
    }
    if let Some(problem) = &conn.problem {
        refused(cx, &req);
        return Err(rt.onboarding.help(problem, req.headers()));
    }
    if let Err(mut reject) = conn.recheck(rt) {
        cx.closing = true;
        refused(cx, &req);
        // In help mode a certificate that a reload refuses (revoked while connected) gets the
        // page too, under the re-check's rule.
        if rt.help_on_failure
            && let Some(Check::Recheck(reason)) = reject.rule.as_ref().map(|r| r.check.clone())
        {
            let mut help = rt.onboarding.help(&conn.problem_now(reason), req.headers());
            help.rule = reject.rule.take();
            return Err(help);
        }
        return Err(reject);
    }
    let out = match rt.policy.check(&req, &conn.peer, &mut cx.route).await {
        Ok(out) => out,
        Err(reject) => {
            refused(cx, &req);
            return Err(reject);
        }
    };
    rt.forwarder.forward(req, out, conn.origin()).await
}

/// The path as the logs may show it: an invitation link's token is a credential until it is
/// used, so it never reaches a log line.
fn loggable_path(rt: &Runtime, path: &str) -> String {
    if rt.onboarding.claims(path) {
        format!("{}…", crate::onboarding::invites::LINK_PREFIX)
    } else {
        path.to_owned()
    }
}

/// `[response_headers]` on every response, certgate's own included; a header the backend set
/// itself is left as it is.
pub(super) fn add_response_headers(
    resp: &mut Response<ProxyBody>,
    headers: &[(HeaderName, HeaderValue)],
) {
    for (name, value) in headers {
        // One lookup where `contains_key` and `insert` took two.
        if let header::Entry::Vacant(slot) = resp.headers_mut().entry(name) {
            slot.insert(value.clone());
        }
    }
}
