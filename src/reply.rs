//! The answers certgate makes itself: JSON errors of the shape
//! `{"error": "<code>", "message": "<one sentence a person can act on>"}` (spec §6).

use http::{HeaderValue, Response, StatusCode, header};

use crate::body::ProxyBody;

/// A refusal or failure, before it is rendered.
#[derive(Debug, Clone)]
pub struct Reject {
    /// HTTP status.
    pub status: StatusCode,
    /// Machine-readable code, e.g. `forbidden`.
    pub code: &'static str,
    /// One sentence for a person.
    pub message: String,
    /// The rule that refused it, for the access log.
    pub rule: Option<String>,
}

impl Reject {
    /// 400 `bad_request`.
    pub fn bad_request(message: impl Into<String>) -> Reject {
        Reject::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 403 `forbidden`.
    pub fn forbidden(message: impl Into<String>, rule: String) -> Reject {
        Reject {
            rule: Some(rule),
            ..Reject::new(StatusCode::FORBIDDEN, "forbidden", message)
        }
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
        }
    }

    /// Renders the JSON response.
    pub fn to_response(&self) -> Response<ProxyBody> {
        let body = serde_json::json!({ "error": self.code, "message": self.message }).to_string();
        let mut resp = Response::new(ProxyBody::full(body));
        *resp.status_mut() = self.status;
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        resp.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        resp
    }
}
