//! `[forward_auth]`: nginx `auth_request` for operators who keep their token service. For each
//! request on a route with `auth = "forward"`, certgate sends the auth service a GET (whatever
//! the client's method — the seed's Flask `/auth` accepts only GET, as nginx's subrequest is)
//! with the client's headers and no body, plus `X-Original-URI`, `X-Original-Method` and the
//! client identity headers. A 2xx admits and its `copy_headers` are added to the request to the
//! backend; a 401 or 403 is returned to the client; anything else — the service down, slow or
//! failing — refuses the request (503/504), never admits it.

use std::time::Duration;

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt as _, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::response::reply::{Check, Reject, Rule};
use std::sync::Arc;

use crate::tls::identity::Peer;
use crate::upstream::HeaderPolicy;

/// The configured auth service.
#[derive(Debug)]
pub struct ForwardAuth {
    client: Client<HttpConnector, Empty<Bytes>>,
    url: Uri,
    timeout: Duration,
    copy_headers: Vec<HeaderName>,
    /// What the auth request is cleaned with: the same as the backend's requests.
    headers: Arc<HeaderPolicy>,
}

impl ForwardAuth {
    /// A client for the configured service.
    pub fn new(config: &ForwardAuthConfig, headers: Arc<HeaderPolicy>) -> ForwardAuth {
        let timeout = config.timeout;
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(4))
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector);
        ForwardAuth {
            client,
            url: config.url.clone(),
            timeout,
            copy_headers: config.copy_headers.clone(),
            headers,
        }
    }

    /// Asks the auth service about one request.
    ///
    /// # Errors
    /// 401/403 as the service answered, 503 when it is unreachable or fails, 504 when it is slow.
    pub async fn check(
        &self,
        headers: &HeaderMap,
        method: &Method,
        target: &PathAndQuery,
        host: &HeaderValue,
        peer: &Peer,
    ) -> Result<Vec<(HeaderName, HeaderValue)>, Reject> {
        let mut req = Request::get(self.url.clone())
            .body(Empty::new())
            .map_err(|e| {
                Reject::service_unavailable(format!("cannot build the auth request: {e}"))
            })?;
        let h = req.headers_mut();
        for (name, value) in headers {
            if name != header::CONTENT_LENGTH && name != header::HOST {
                h.append(name.clone(), value.clone());
            }
        }
        // The Host the backend will get, so the service judges the same request.
        h.insert(header::HOST, host.clone());
        self.headers.sanitize(h, false, peer);
        if let Ok(v) = HeaderValue::from_str(target.as_str()) {
            h.insert(HeaderName::from_static("x-original-uri"), v);
        }
        if let Ok(v) = HeaderValue::from_str(method.as_str()) {
            h.insert(HeaderName::from_static("x-original-method"), v);
        }
        let resp = match tokio::time::timeout(self.timeout, self.client.request(req)).await {
            Ok(Ok(resp)) => resp,
            Ok(Err(e)) => {
                tracing::warn!(peer = %peer.addr, url = %self.url, error = %e, "auth service request failed");
                return Err(Reject::service_unavailable(
                    "The authentication service is unavailable; try again later.",
                ));
            }
            Err(_) => {
                tracing::warn!(peer = %peer.addr, url = %self.url, "auth service did not answer in time");
                return Err(Reject::gateway_timeout(
                    "The authentication service did not answer in time; try again later.",
                ));
            }
        };
        let status = resp.status();
        let (parts, body) = resp.into_parts();
        // The answer's body is not used; read it (bounded by the timeout) so the connection
        // can go back to the pool.
        let _ = tokio::time::timeout(self.timeout, body.collect()).await;
        if status.is_success() {
            let mut copied = Vec::new();
            for name in &self.copy_headers {
                for v in parts.headers.get_all(name) {
                    copied.push((name.clone(), v.clone()));
                }
            }
            return Ok(copied);
        }
        let mut reject = match status {
            StatusCode::UNAUTHORIZED => {
                Reject::unauthorized_plain("The authentication service refused the credentials.")
            }
            StatusCode::FORBIDDEN => Reject::forbidden(
                "The authentication service refused access.",
                Rule::bare(Check::ForwardAuth),
            ),
            other => {
                tracing::warn!(peer = %peer.addr, url = %self.url, status = other.as_u16(), "auth service answered with an error");
                return Err(Reject::service_unavailable(
                    "The authentication service failed; try again later.",
                ));
            }
        };
        reject.rule = Some(Box::new(Rule::bare(Check::ForwardAuth)));
        if let Some(v) = parts.headers.get(header::WWW_AUTHENTICATE) {
            reject.headers.push((header::WWW_AUTHENTICATE, v.clone()));
        }
        Err(reject)
    }
}

/// `[forward_auth]`, validated.
#[derive(Debug, Clone)]
pub struct ForwardAuthConfig {
    /// The auth service.
    pub url: http::Uri,
    /// Longest wait.
    pub timeout: Duration,
    /// Headers copied from a 2xx answer.
    pub copy_headers: Vec<HeaderName>,
}
