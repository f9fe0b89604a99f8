//! The plain-HTTP listener (`[listen] http_redirect`): every request gets a 301 to the same
//! host, path and query over HTTPS, with the HTTPS port kept when it is not 443. Nothing is
//! ever proxied in clear text.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulConnection;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::handle::add_response_headers;
use super::runtime::Shared;
use crate::policy::access::ConnGuard;
use crate::response::body::ProxyBody;
use crate::response::reply::Reject;

/// Drives a connection; on shutdown (or when the connection must close) asks it to finish
/// gracefully (HTTP/1: after the request in flight; HTTP/2: GOAWAY, then the open streams) and
/// waits for that.
async fn until_cancelled<C: GracefulConnection>(
    connection: C,
    cancel: &CancellationToken,
) -> Result<(), C::Error> {
    tokio::pin!(connection);
    tokio::select! {
        r = connection.as_mut() => r,
        () = cancel.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    }
}

/// The plain-HTTP listener: every request gets a 301 to the same host, path and query over
/// HTTPS, with the HTTPS port kept when it is not 443. Nothing is ever proxied in clear text.
pub(super) async fn serve(
    shared: Arc<Shared>,
    tcp: TcpStream,
    peer: SocketAddr,
    https_port: u16,
    cancel: CancellationToken,
    _guard: ConnGuard,
) {
    let service = service_fn(move |req: Request<Incoming>| {
        let shared = shared.clone();
        async move {
            let mut resp = redirect_response(&req, https_port);
            add_response_headers(&mut resp, &shared.current().response_headers);
            Ok::<_, Infallible>(resp)
        }
    });
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new());
    let connection = http.serve_connection(TokioIo::new(tcp), service);
    if let Err(e) = until_cancelled(connection, &cancel).await {
        tracing::debug!(%peer, error = %e, "redirect connection ended with an error");
    }
}

fn redirect_response<B>(req: &Request<B>, https_port: u16) -> Response<ProxyBody> {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.parse::<http::uri::Authority>().ok());
    let Some(host) = host else {
        return Reject::bad_request("A Host header is required.").to_response();
    };
    let pq = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let location = if https_port == 443 {
        format!("https://{}{pq}", host.host())
    } else {
        format!("https://{}:{https_port}{pq}", host.host())
    };
    let mut resp = Response::new(ProxyBody::empty());
    *resp.status_mut() = StatusCode::MOVED_PERMANENTLY;
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}
