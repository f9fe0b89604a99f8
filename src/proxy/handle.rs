//! One request on an admitted connection. The inner handler runs the checks in order — the
//! connection's re-check after a reload, the policy, the forward — and returns the backend's
//! response or the [`Reject`] of the first check that failed. The outer handler is the one place
//! that logs a refusal, counts it, renders it, has the refused request's unread body read and
//! thrown away (so a client still uploading reads the refusal), adds `[response_headers]`, and
//! hangs the access record (with the request's in-flight guard) on the response body.

use std::time::Instant;

use http::{HeaderName, HeaderValue, Method, Request, Response, Version, header};
use hyper::body::Incoming;

use super::conn::Conn;
use super::runtime::{Runtime, Shared};
use crate::onboarding::Enrolled;
use crate::response::access_log::AccessRecord;
use crate::response::body::ProxyBody;
use crate::response::reply::{Check, Reject, Rule};

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
    /// The body of a request a check refused, still to be dealt with once the refusal is made.
    unread: Option<Incoming>,
    /// The refused request asked for `100 Continue` before sending its body.
    expects_continue: bool,
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
    // Declared, not counted: counting would mean a hook on every body frame.
    let bytes_in = if rt.record {
        req.headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .unwrap_or(0)
    } else {
        0
    };
    let mut cx = Context {
        start: Instant::now(),
        method: req.method().clone(),
        version: req.version(),
        path: rt.access_log.then(|| loggable_path(&rt, req.uri().path())),
        refused_path: None,
        route: None,
        closing: false,
        unread: None,
        expects_continue: false,
    };
    let (mut resp, rule) = match inner(shared, &rt, conn, req, &mut cx).await {
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
                if rt.record {
                    record_refusal(shared, conn, &reject, label);
                }
            }
            if let Some(body) = cx.unread.take() {
                crate::response::body::discard_refused(body, cx.expects_continue, &conn.requests);
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
    let queue_wait = resp.extensions().get::<crate::queue::Waited>().map(|w| w.0);
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
        bytes_in,
        ledger: rt.record.then(|| shared.ledger.clone()),
        queue_wait,
    });
    resp
}

/// Keeps a refused request for the operator's page. A connection whose certificate was refused
/// (help mode) was kept once, at its handshake, not once per request.
fn record_refusal(shared: &Shared, conn: &Conn, reject: &Reject, label: &str) {
    let check = reject.rule.as_ref().map(|r| &r.check);
    if matches!(check, Some(Check::Certificate(_))) {
        return;
    }
    shared.console.refused(crate::console::store::RefusalNote {
        addr: conn.peer.addr.ip(),
        identity: conn.peer.identity.as_ref(),
        subject: None,
        reason: if label == "-" { reject.code } else { label },
        words: &reject.message,
        rate_limited: matches!(check, Some(Check::RateLimit(_))),
        revoked: matches!(check, Some(Check::Recheck("revoked"))),
    });
}

/// The checks, then the forward.
async fn inner(
    shared: &Shared,
    rt: &Runtime,
    conn: &Conn,
    req: Request<Incoming>,
    cx: &mut Context,
) -> Result<Response<ProxyBody>, Reject> {
    // Only a refusal needs the path when the access log is off: taken then, not per request.
    // The body is kept: dropped here, unread, it would cut the client off before it reads the
    // refusal (see `discard_refused`).
    let refused = |cx: &mut Context, req: Request<Incoming>| {
        if cx.path.is_none() {
            cx.refused_path = Some(loggable_path(rt, req.uri().path()));
        }
        cx.expects_continue = req
            .headers()
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        cx.unread = Some(req.into_body());
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
            let locked_out = rt.onboarding.locked_out(wait, req.headers());
            refused(cx, req);
            return Err(locked_out);
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
                refused(cx, req);
                Err(reject)
            }
        };
    }
    if let Some(problem) = &conn.problem {
        let help = rt.onboarding.help(problem, req.headers());
        refused(cx, req);
        return Err(help);
    }
    if let Err(mut reject) = conn.recheck(rt) {
        cx.closing = true;
        // In help mode a certificate that a reload refuses (revoked while connected) gets the
        // page too, under the re-check's rule.
        if rt.help_on_failure
            && let Some(Check::Recheck(reason)) = reject.rule.as_ref().map(|r| r.check.clone())
        {
            let mut help = rt.onboarding.help(&conn.problem_now(reason), req.headers());
            help.rule = reject.rule.take();
            refused(cx, req);
            return Err(help);
        }
        refused(cx, req);
        return Err(reject);
    }
    // The operator's page: answered here, before any route, so no spelling of its path is
    // ever forwarded.
    if let Some(console) = &rt.console
        && console.claims(req.uri().path())
    {
        if !console.admits(conn.peer.identity.as_deref()) {
            refused(cx, req);
            return Err(Reject::forbidden(
                match &conn.peer.identity {
                    Some(id) => format!(
                        "This page is for the operators named in [console] allow; your certificate ({}) is not on it.",
                        id.subject_dn
                    ),
                    None => "This page is for the operators named in [console] allow; connect with their client certificate.".to_string(),
                },
                Rule::bare(Check::Console),
            ));
        }
        if req.method() != Method::GET && req.method() != Method::HEAD {
            let reject =
                Reject::method_not_allowed(req.method(), "GET, HEAD", Rule::bare(Check::Console));
            refused(cx, req);
            return Err(reject);
        }
        return Ok(super::page::answer(
            shared,
            rt,
            req.uri().query(),
            req.headers(),
        ));
    }
    let out = match rt.policy.check(&req, &conn.peer, &mut cx.route).await {
        Ok(out) => out,
        Err(reject) => {
            refused(cx, req);
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
