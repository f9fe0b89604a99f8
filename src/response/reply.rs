//! The answers certgate makes itself: JSON errors of the shape
//! `{"error": "<code>", "message": "<one sentence a person can act on>"}` (spec §6).

use std::fmt;
use std::sync::Arc;

use http::{HeaderName, HeaderValue, Response, StatusCode, header};

use crate::response::body::ProxyBody;

/// The check that refused a request (spec §8's order), for the log line, the access log's
/// `rule` field and the `denied` metric. Typed, so nothing downstream parses a label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// A `deny` route.
    Deny,
    /// A `deny` route (its label here) that matches the path forwarded after the matched
    /// route's `strip_prefix`.
    DenyAfterStrip(Arc<str>),
    /// The route's `methods`.
    Methods,
    /// The route's `allow_ips`.
    AllowIps,
    /// The route needs a client certificate.
    ClientCert,
    /// The route's identity `allow` list.
    Allow,
    /// A bearer token.
    Jwt,
    /// The forward-auth service.
    ForwardAuth,
    /// A rate-limit zone (its name).
    RateLimit(Arc<str>),
    /// The body limit.
    MaxBody,
    /// `[limits] body_timeout`: the client's body went silent.
    BodyTimeout,
    /// The re-check of an open connection's certificate after a reload (why it failed).
    Recheck(&'static str),
    /// `on_failure = "help"`: the connection's certificate was missing or refused (why).
    Certificate(&'static str),
    /// An invitation link that gives nothing (unknown, used, expired).
    Invitation,
    /// The operator's page's `[console] allow`.
    Console,
    /// A queue (its name) refused the job: full, or its wait timed out.
    Queue(Arc<str>),
}

/// Which check refused a request, and on which route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The check.
    pub check: Check,
    /// The matched route's label (`route[2] /api`), when the check belongs to one.
    pub route: Option<Arc<str>>,
}

impl Rule {
    /// A check outside any route.
    pub fn bare(check: Check) -> Rule {
        Rule { check, route: None }
    }

    /// A check of the route labelled `route`.
    pub fn on(route: &Arc<str>, check: Check) -> Rule {
        Rule {
            check,
            route: Some(route.clone()),
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let (Some(route), Check::DenyAfterStrip(deny)) = (&self.route, &self.check) {
            return write!(f, "{deny} deny (after {route} strip_prefix)");
        }
        if let Some(route) = &self.route {
            write!(f, "{route} ")?;
        }
        match &self.check {
            Check::Deny => f.write_str("deny"),
            Check::DenyAfterStrip(deny) => write!(f, "{deny} deny (after strip_prefix)"),
            Check::Methods => f.write_str("methods"),
            Check::AllowIps => f.write_str("allow_ips"),
            Check::ClientCert => f.write_str("client_cert"),
            Check::Allow => f.write_str("allow"),
            Check::Jwt => f.write_str("jwt"),
            Check::ForwardAuth => f.write_str("forward_auth"),
            Check::RateLimit(zone) => write!(f, "rate_limit {zone}"),
            Check::MaxBody => f.write_str("max_body"),
            Check::BodyTimeout => f.write_str("body_timeout"),
            Check::Recheck(why) => write!(f, "recheck {why}"),
            Check::Certificate(why) => write!(f, "certificate {why}"),
            Check::Invitation => f.write_str("invitation"),
            Check::Console => f.write_str("console allow"),
            Check::Queue(name) => write!(f, "queue {name}"),
        }
    }
}

/// `Retry-After` in whole seconds, rounded up, at least 1.
fn whole_seconds(d: std::time::Duration) -> u64 {
    (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
}

/// A refusal or failure, before it is rendered.
#[derive(Debug, Clone)]
pub struct Reject {
    /// HTTP status.
    pub status: StatusCode,
    /// Machine-readable code, e.g. `forbidden`.
    pub code: &'static str,
    /// One sentence for a person.
    pub message: String,
    /// The check that refused it, for the logs and metrics (boxed: a `Reject` travels in every
    /// `Result` of the request path, and refusals are the rare case).
    pub rule: Option<Box<Rule>>,
    /// Extra response headers (`WWW-Authenticate`, `Allow`, `Retry-After`).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// An HTML page for a person, answered instead of the JSON (the help page).
    pub page: Option<Box<str>>,
}

impl Reject {
    /// 400 `bad_request`.
    pub fn bad_request(message: impl Into<String>) -> Reject {
        Reject::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 403 `forbidden`.
    pub fn forbidden(message: impl Into<String>, rule: Rule) -> Reject {
        Reject {
            rule: Some(Box::new(rule)),
            ..Reject::new(StatusCode::FORBIDDEN, "forbidden", message)
        }
    }

    /// 401 `unauthorized` for a bearer token, with RFC 6750's `WWW-Authenticate`.
    pub fn invalid_token(why: &str) -> Reject {
        let mut r = Reject::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            format!("Bearer token refused: {why}."),
        );
        // `why` comes from a fixed set of messages; quotes are escaped all the same.
        let header = format!(
            "Bearer error=\"invalid_token\", error_description=\"{}\"",
            why.replace('\\', "\\\\").replace('"', "\\\"")
        );
        if let Ok(v) = HeaderValue::from_str(&header) {
            r.headers.push((header::WWW_AUTHENTICATE, v));
        }
        r
    }

    /// 401 `unauthorized` without a bearer challenge (forward auth).
    pub fn unauthorized_plain(message: impl Into<String>) -> Reject {
        Reject::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 405 `method_not_allowed` with `Allow`.
    pub fn method_not_allowed(method: &http::Method, allow: &str, rule: Rule) -> Reject {
        let mut r = Reject::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{method} is not allowed here; allowed: {allow}."),
        );
        r.rule = Some(Box::new(rule));
        if let Ok(v) = HeaderValue::from_str(allow) {
            r.headers.push((header::ALLOW, v));
        }
        r
    }

    /// 413 `payload_too_large`.
    pub fn payload_too_large(limit: u64) -> Reject {
        let mut r = Reject::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!(
                "The request body is larger than the limit of {}.",
                bytesize::ByteSize::b(limit).display().iec()
            ),
        );
        r.rule = Some(Box::new(Rule::bare(Check::MaxBody)));
        r
    }

    /// 408 `request_timeout`: the client sent nothing of its request body for `idle`
    /// (`[limits] body_timeout`). The client's fault, never the backend's.
    pub fn request_timeout(idle: std::time::Duration) -> Reject {
        let mut r = Reject::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!(
                "The request body stopped arriving: nothing came for {}; send it again.",
                humantime::format_duration(idle)
            ),
        );
        r.rule = Some(Box::new(Rule::bare(Check::BodyTimeout)));
        r
    }

    /// 429 `too_many_requests` with `Retry-After` (whole seconds, at least 1).
    pub fn too_many_requests(zone: &str, retry_after: std::time::Duration) -> Reject {
        let secs = whole_seconds(retry_after);
        let mut r = Reject::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_requests",
            format!("Rate limit {zone:?} exceeded; retry in {secs} s."),
        );
        r.rule = Some(Box::new(Rule::bare(Check::RateLimit(zone.into()))));
        r.headers
            .push((header::RETRY_AFTER, HeaderValue::from(secs)));
        r
    }

    /// 429 `queue_full` with `Retry-After`: the person already has as many jobs waiting in
    /// queue `queue` as it holds.
    pub fn queue_full(queue: &str, retry_after: std::time::Duration) -> Reject {
        let secs = whole_seconds(retry_after);
        let mut r = Reject::new(
            StatusCode::TOO_MANY_REQUESTS,
            "queue_full",
            format!(
                "You already have as many jobs waiting in queue {queue:?} as it holds; retry in {secs} s, when one of them has started."
            ),
        );
        r.rule = Some(Box::new(Rule::bare(Check::Queue(queue.into()))));
        r.headers
            .push((header::RETRY_AFTER, HeaderValue::from(secs)));
        r
    }

    /// 503 `queue_timeout` with `Retry-After`: the job waited `max_wait` in queue `queue`.
    pub fn queue_timeout(
        queue: &str,
        max_wait: std::time::Duration,
        retry_after: std::time::Duration,
    ) -> Reject {
        let secs = whole_seconds(retry_after);
        let mut r = Reject::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "queue_timeout",
            format!(
                "Your job waited {} in queue {queue:?} without its turn coming; the backend is busy, retry in {secs} s.",
                humantime::format_duration(max_wait)
            ),
        );
        r.rule = Some(Box::new(Rule::bare(Check::Queue(queue.into()))));
        r.headers
            .push((header::RETRY_AFTER, HeaderValue::from(secs)));
        r
    }

    /// 503 `service_unavailable`: certgate shut down while the job waited in queue `queue`.
    pub fn queue_closed(queue: &str) -> Reject {
        let mut r = Reject::service_unavailable(format!(
            "certgate is shutting down; your job in queue {queue:?} did not start. Retry in a moment."
        ));
        r.headers
            .push((header::RETRY_AFTER, HeaderValue::from_static("5")));
        r
    }

    /// 431 `request_header_fields_too_large`.
    pub fn header_fields_too_large(message: impl Into<String>) -> Reject {
        Reject::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "request_header_fields_too_large",
            message,
        )
    }

    /// 501 `not_implemented`.
    pub fn not_implemented(message: impl Into<String>) -> Reject {
        Reject::new(StatusCode::NOT_IMPLEMENTED, "not_implemented", message)
    }

    /// 503 `service_unavailable`.
    pub fn service_unavailable(message: impl Into<String>) -> Reject {
        Reject::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "service_unavailable",
            message,
        )
    }

    /// 503 `no_healthy_backend` with `Retry-After`: every server of the group is down.
    pub fn no_healthy_backend(group: &str) -> Reject {
        let mut r = Reject::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_healthy_backend",
            format!(
                "No server of the upstream group {group:?} is healthy right now; try again in a few seconds."
            ),
        );
        r.headers
            .push((header::RETRY_AFTER, HeaderValue::from_static("5")));
        r
    }

    /// 502 `bad_gateway`.
    pub fn bad_gateway(message: impl Into<String>) -> Reject {
        Reject::new(StatusCode::BAD_GATEWAY, "bad_gateway", message)
    }

    /// 504 `gateway_timeout`.
    pub fn gateway_timeout(message: impl Into<String>) -> Reject {
        Reject::new(StatusCode::GATEWAY_TIMEOUT, "gateway_timeout", message)
    }

    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Reject {
        Reject {
            status,
            code,
            message: message.into(),
            rule: None,
            headers: Vec::new(),
            page: None,
        }
    }

    /// A refusal with its code and message (the JSON), and an optional HTML page for
    /// browsers.
    pub fn with_page(
        status: StatusCode,
        code: &'static str,
        message: impl Into<String>,
        rule: Rule,
        page: Option<String>,
    ) -> Reject {
        Reject {
            rule: Some(Box::new(rule)),
            page: page.map(String::into_boxed_str),
            ..Reject::new(status, code, message)
        }
    }

    /// Renders the response: the page when there is one, else the JSON.
    pub fn to_response(&self) -> Response<ProxyBody> {
        if let Some(page) = &self.page {
            let mut resp = html_response(self.status, page.to_string());
            for (name, value) in &self.headers {
                resp.headers_mut().append(name.clone(), value.clone());
            }
            return resp;
        }
        let body = serde_json::json!({ "error": self.code, "message": self.message }).to_string();
        let mut resp = Response::new(ProxyBody::full(body));
        *resp.status_mut() = self.status;
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        resp.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        for (name, value) in &self.headers {
            resp.headers_mut().append(name.clone(), value.clone());
        }
        resp
    }
}

/// A page certgate makes for a person: HTML, never cached or sniffed, and no `Referer` leaves
/// it (an invitation page's address is a secret). The caller adds its Content-Security-Policy.
pub fn html_response(status: StatusCode, body: String) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::full(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_read_as_the_log_lines_always_did() {
        let route: Arc<str> = Arc::from("route[1] /gradio_api");
        let cases = [
            (Rule::on(&route, Check::Deny), "route[1] /gradio_api deny"),
            (
                Rule::on(&route, Check::RateLimit("api".into())),
                "route[1] /gradio_api rate_limit api",
            ),
            (
                Rule::on(&route, Check::DenyAfterStrip("route[0] /internal".into())),
                "route[0] /internal deny (after route[1] /gradio_api strip_prefix)",
            ),
            (Rule::bare(Check::MaxBody), "max_body"),
            (Rule::bare(Check::Recheck("revoked")), "recheck revoked"),
            (Rule::bare(Check::ForwardAuth), "forward_auth"),
        ];
        for (rule, want) in cases {
            assert_eq!(rule.to_string(), want);
        }
    }
}
