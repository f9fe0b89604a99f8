//! The admin listener (`[admin] listen`, plain HTTP, meant for loopback): `/metrics` in the
//! Prometheus text format, `/livez` (the process answers), `/readyz` (the config is loaded and
//! the backend accepts a TCP connection), `/usage` (each queue's people: running, waiting, jobs
//! done, busy seconds, last seen; spec §15), and at `/` the operator's page (spec §16): the
//! listener is the operator's own, so it has no allow-list.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;

use crate::proxy::runtime::Shared;
use crate::response::body::ProxyBody;

/// How long `/readyz` waits for the backend to accept a connection.
const READY_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Serves one admin connection.
pub async fn serve(tcp: TcpStream, shared: Arc<Shared>) {
    let service = service_fn(move |req: Request<Incoming>| {
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(answer(&shared, &req).await) }
    });
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10));
    let _ = http.serve_connection(TokioIo::new(tcp), service).await;
}

/// Whether `req` names this listener by an IP address or as `localhost`. The page names every
/// person who came in and has no allow-list here, and a browser lets a web page read whatever
/// its own name serves: under any other name the request may come from a page that rebound its
/// name to 127.0.0.1 (DNS rebinding). An address or `localhost` is never another site's origin.
/// A request without a name (HTTP/1.0) is no browser's.
fn named_locally(req: &Request<Incoming>) -> bool {
    let authority = match req.uri().authority() {
        Some(a) => a.clone(),
        None => match req.headers().get(header::HOST) {
            None => return true,
            Some(v) => match v.to_str().ok().and_then(|h| h.parse().ok()) {
                Some(a) => a,
                None => return false,
            },
        },
    };
    is_local_name(authority.host())
}

fn is_local_name(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok()
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    r
}

async fn answer(shared: &Shared, req: &Request<Incoming>) -> Response<ProxyBody> {
    match req.uri().path() {
        "/metrics" => text(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            shared.metrics.render(shared.limits.open()),
        ),
        "/livez" => text(StatusCode::OK, "text/plain", "ok\n".into()),
        "/" if !named_locally(req) => text(
            StatusCode::FORBIDDEN,
            "text/plain",
            "forbidden: the operator's page is served here only under an address or localhost, \
             like http://127.0.0.1:PORT/ or http://localhost:PORT/\n"
                .into(),
        ),
        "/" => super::page::answer(shared, &shared.current(), req.uri().query(), req.headers()),
        "/usage" => {
            let rt = shared.current();
            let queues: Vec<serde_json::Value> =
                rt.forwarder.queues().iter().map(|q| q.usage()).collect();
            let mut body = serde_json::json!({ "queues": queues }).to_string();
            body.push('\n');
            text(StatusCode::OK, "application/json", body)
        }
        "/readyz" => {
            let (down, single) = shared.current().forwarder.readiness();
            if let Some(why) = down {
                return text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!("not ready: {why}\n"),
                );
            }
            // Several servers: their health checks say it; one: it must take a connection.
            let Some(upstream) = single else {
                return text(StatusCode::OK, "text/plain", "ready\n".into());
            };
            let addr = match upstream.port_u16() {
                Some(_) => upstream.as_str().to_string(),
                None => format!("{}:80", upstream.host()),
            };
            match tokio::time::timeout(READY_CONNECT_TIMEOUT, TcpStream::connect(&addr)).await {
                Ok(Ok(_)) => text(StatusCode::OK, "text/plain", "ready\n".into()),
                Ok(Err(e)) => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!("not ready: backend {addr} refuses connections: {e}\n"),
                ),
                Err(_) => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!("not ready: backend {addr} did not accept a connection in time\n"),
                ),
            }
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /, /metrics, /livez, /readyz or /usage\n".into(),
        ),
    }
}
