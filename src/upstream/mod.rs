//! Forwarding a request that passed the policy to the backend: the pooled HTTP/1.1 client,
//! streaming in both directions, the one retry a keep-alive race deserves, WebSocket tunnels
//! ([`websocket`]), and the mapping of backend failures to 502 / 504. What the request carries
//! is decided in [`headers`]. Upstream groups and balancing will live here.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderName, HeaderValue, Request, Response, StatusCode, Uri, Version, header};
use hyper::body::Body as _;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio_util::task::TaskTracker;

use crate::ops::metrics::Metrics;
use crate::response::body::{LimitedBody, Overflow, ProxyBody};
use crate::response::in_flight::InFlight;
use crate::response::reply::Reject;
use crate::tls::identity::Peer;

mod headers;
mod websocket;

pub use headers::HeaderPolicy;
#[doc(hidden)]
pub use headers::fuzz_sanitize;

/// uvicorn (Gradio) closes idle keep-alive connections after 5 s; closing ours first means the
/// pool never hands out a connection the backend is about to close.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(4);

/// What the policy decided to send for an admitted request.
#[derive(Debug)]
pub struct Outbound {
    /// Path (normalized, prefix stripped) and query.
    pub target: PathAndQuery,
    /// The Host the client named (its `Host`, or `:authority` over HTTP/2), checked.
    pub host: HeaderValue,
    /// Headers the checks add (the JWT subject, forward auth's copies).
    pub extra: Vec<(HeaderName, HeaderValue)>,
    /// Body limit for this request.
    pub max_body: u64,
}

/// Where a request comes from, as forwarding needs it.
#[derive(Clone, Copy)]
pub struct Origin<'a> {
    /// Who the client is.
    pub peer: &'a Peer,
    /// Its connection's requests: told when the request body has been read to its end.
    pub requests: &'a Arc<InFlight>,
    /// Where a WebSocket tunnel runs, so shutdown can wait for it.
    pub tunnels: &'a TaskTracker,
}

/// The pooled client and what it needs to rewrite requests.
#[derive(Debug)]
pub struct Forwarder {
    client: Client<HttpConnector, LimitedBody>,
    authority: Authority,
    response_timeout: Duration,
    idle_timeout: Duration,
    headers: Arc<HeaderPolicy>,
    metrics: Arc<Metrics>,
}

impl Forwarder {
    /// A forwarder for one backend.
    pub fn new(
        upstream: &Upstream,
        headers: Arc<HeaderPolicy>,
        metrics: Arc<Metrics>,
    ) -> Forwarder {
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
            headers,
            metrics,
        }
    }

    /// Sends `req` to the backend as `out` says (target, Host, added headers, with its body cut
    /// off at `max_body`), and returns the backend's response, streamed.
    ///
    /// # Errors
    /// 413 over `max_body`, 502 / 504 when the backend cannot be reached or does not answer in
    /// time.
    pub async fn forward(
        &self,
        req: Request<Incoming>,
        out: Outbound,
        origin: Origin<'_>,
    ) -> Result<Response<ProxyBody>, Reject> {
        let Outbound {
            target,
            host,
            extra,
            max_body,
        } = out;
        let peer = origin.peer.addr;
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max_body) {
            crate::response::body::drain(req.into_body());
            return Err(Reject::payload_too_large(max_body));
        }
        let overflow = std::sync::Arc::new(Overflow::default());
        let mut req =
            req.map(|b| LimitedBody::new(b, max_body, overflow.clone(), origin.requests.clone()));
        let websocket = headers::is_websocket_upgrade(&req);
        let fields = req.headers_mut();
        fields.insert(header::HOST, host);
        // The policy refused differing lengths; equal repeats (legal over HTTP/2, where nothing
        // merges them) go on as one.
        if let Some(len) = headers::declared_repeated(fields) {
            fields.insert(header::CONTENT_LENGTH, len);
        }
        self.headers.sanitize(fields, websocket, origin.peer);
        for (name, value) in extra {
            fields.append(name, value);
        }
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(Scheme::HTTP);
        parts.authority = Some(self.authority.clone());
        parts.path_and_query = Some(target);
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
            tracing::debug!(%peer, error = %e, "backend closed a pooled connection; retrying once");
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
                    return Err(Reject::payload_too_large(max_body));
                }
                return Err(self.upstream_error(&e, peer));
            }
            Err(_) => {
                self.metrics.upstream_error("timeout");
                tracing::warn!(
                    %peer,
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
            let upstream_resp = Response::from_parts(parts.clone(), body);
            websocket::tunnel(client_upgrade, upstream_resp, peer, origin.tunnels);
            return Ok(Response::from_parts(parts, ProxyBody::empty()));
        }
        headers::remove_hop_by_hop(&mut parts.headers, false);
        Ok(Response::from_parts(
            parts,
            ProxyBody::stream(body, self.idle_timeout),
        ))
    }

    fn upstream_error(&self, e: &hyper_util::client::legacy::Error, peer: SocketAddr) -> Reject {
        let cause = std::error::Error::source(e)
            .map(ToString::to_string)
            .unwrap_or_else(|| e.to_string());
        tracing::warn!(
            %peer,
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
