//! Listeners, the accept loop, the TLS handshake with its timeout, one task per connection
//! serving HTTP/1.1 and HTTP/2, the plain-HTTP redirect listener, and graceful shutdown.
//!
//! Per-connection work happens once, in the connection's task: the handshake, the client
//! identity and its rendered headers. Per-request work is only the policy check and the forward.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderName, HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulConnection;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::access::{ConnGuard, ConnLimits, IpList};
use crate::access_log::AccessRecord;
use crate::body::ProxyBody;
use crate::config::{Config, HeaderNames};
use crate::forward::{ConnInfo, Forwarder, HeaderPolicy};
use crate::identity::{ClientIdentity, IdentityHeaders};
use crate::policy::Policy;
use crate::tls::{self, TlsError};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A listener could not be bound (address in use, no permission).
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The TLS configuration was refused.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// Everything a connection task needs, shared.
struct State {
    acceptor: TlsAcceptor,
    handshake_timeout: Duration,
    http: auto::Builder<TokioExecutor>,
    policy: Policy,
    forwarder: Forwarder,
    headers: HeaderNames,
    access_log: bool,
    allow_ips: IpList,
    limits: Arc<ConnLimits>,
    response_headers: Vec<(HeaderName, HeaderValue)>,
}

/// How often idle rate-limit keys are forgotten.
const EVICT_EVERY: Duration = Duration::from_secs(60);

/// A bound, ready-to-run proxy.
pub struct Server {
    https: TcpListener,
    redirect: Option<TcpListener>,
    state: Arc<State>,
    shutdown_timeout: Duration,
}

impl Server {
    /// Builds the TLS state and binds the listeners.
    ///
    /// # Errors
    /// [`ServerError::Tls`] for an unusable certificate setup, [`ServerError::Bind`] naming the
    /// address that could not be bound.
    pub async fn bind(config: &Config) -> Result<Server, ServerError> {
        let tls = tls::server_config(&config.tls)?;
        let https = bind(config.listen.https).await?;
        let redirect = match config.listen.http_redirect {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        let mut http = auto::Builder::new(TokioExecutor::new());
        // Without a timer hyper silently disables its header-read timeout.
        http.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(config.limits.header_read_timeout);
        http.http2().timer(TokioTimer::new());
        let policy = Policy::new(config);
        let owned = policy.owned_headers();
        let header_policy = HeaderPolicy::new(&config.headers, owned.iter());
        Ok(Server {
            https,
            redirect,
            shutdown_timeout: config.listen.shutdown_timeout,
            state: Arc::new(State {
                acceptor: TlsAcceptor::from(tls),
                handshake_timeout: config.tls.handshake_timeout,
                http,
                policy,
                forwarder: Forwarder::new(&config.upstream, header_policy),
                headers: config.headers.clone(),
                access_log: config.log.access,
                allow_ips: config.allow_ips.clone(),
                limits: ConnLimits::new(
                    config.limits.max_connections,
                    config.limits.max_connections_per_ip,
                ),
                response_headers: config.response_headers.clone(),
            }),
        })
    }

    /// The address the HTTPS listener is bound to (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        // A bound listener always has an address; fall back to unspecified for the type's sake.
        self.https
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// The address of the redirect listener, if one is configured.
    pub fn redirect_addr(&self) -> Option<SocketAddr> {
        self.redirect.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Serves until `shutdown` completes, then stops accepting and lets requests in flight
    /// finish for up to `listen.shutdown_timeout`.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let tracker = TaskTracker::new();
        let cancel = CancellationToken::new();
        let https_port = self.local_addr().port();
        tracing::info!(
            https = %self.local_addr(),
            redirect = ?self.redirect_addr(),
            "certgate listening"
        );
        tokio::pin!(shutdown);
        let mut evict = tokio::time::interval(EVICT_EVERY);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                accepted = self.https.accept() => match accepted {
                    Ok((tcp, peer)) => {
                        if let Some(guard) = admit(&self.state, peer) {
                            let state = self.state.clone();
                            let cancel = cancel.clone();
                            tracker.spawn(serve_tls(state, tcp, peer, cancel, guard));
                        }
                    }
                    Err(e) => accept_error(e).await,
                },
                accepted = accept_opt(self.redirect.as_ref()) => match accepted {
                    Ok((tcp, peer)) => {
                        if let Some(guard) = admit(&self.state, peer) {
                            let headers = self.state.response_headers.clone();
                            tracker.spawn(serve_redirect(tcp, peer, https_port, cancel.clone(), headers, guard));
                        }
                    }
                    Err(e) => accept_error(e).await,
                },
                _ = evict.tick() => self.state.policy.evict_idle(),
            }
        }
        drop(self.https);
        drop(self.redirect);
        tracker.close();
        tracing::info!(
            connections = tracker.len(),
            grace = ?self.shutdown_timeout,
            "shutting down: no new connections; waiting for requests in flight"
        );
        cancel.cancel();
        if tokio::time::timeout(self.shutdown_timeout, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                connections = tracker.len(),
                "shutdown timeout reached; closing the remaining connections"
            );
        } else {
            tracing::info!("all connections finished");
        }
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { addr, source })
}

async fn accept_opt(l: Option<&TcpListener>) -> std::io::Result<(TcpStream, SocketAddr)> {
    match l {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

/// Out of file descriptors, most likely: log and back off instead of spinning.
async fn accept_error(e: std::io::Error) {
    tracing::error!(error = %e, "accept failed");
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// The checks made on a bare TCP connection, before any TLS work: the IP allow-list and the
/// connection limits. A refused peer is logged and closed at once.
fn admit(state: &State, peer: SocketAddr) -> Option<ConnGuard> {
    let peer = canonical(peer);
    if !state.allow_ips.allows(peer.ip()) {
        tracing::warn!(%peer, reason = "address not in [access] allow_ips", "connection refused");
        return None;
    }
    match state.limits.try_acquire(peer.ip()) {
        Ok(guard) => Some(guard),
        Err(hit) => {
            tracing::warn!(%peer, reason = hit.reason(), open = state.limits.open(), "connection refused");
            None
        }
    }
}

fn canonical(peer: SocketAddr) -> SocketAddr {
    SocketAddr::new(peer.ip().to_canonical(), peer.port())
}

async fn serve_tls(
    state: Arc<State>,
    tcp: TcpStream,
    peer: SocketAddr,
    cancel: CancellationToken,
    _guard: ConnGuard,
) {
    let peer = canonical(peer);
    let _ = tcp.set_nodelay(true);
    let handshake = tokio::time::timeout(state.handshake_timeout, state.acceptor.accept(tcp));
    let tls = tokio::select! {
        r = handshake => r,
        () = cancel.cancelled() => return,
    };
    let tls = match tls {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::warn!(%peer, reason = tls::failure_reason(&e), detail = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::warn!(%peer, reason = "timeout", "TLS handshake failed");
            return;
        }
    };
    let identity = match tls.get_ref().1.peer_certificates().and_then(|c| c.first()) {
        None => None,
        Some(der) => match ClientIdentity::from_der(der) {
            Ok(id) => Some(Arc::new(id)),
            Err(e) => {
                tracing::warn!(%peer, reason = "unparsable certificate", detail = %e, "TLS handshake failed");
                return;
            }
        },
    };
    tracing::debug!(
        %peer,
        subject_dn = identity.as_ref().map_or("-", |i| i.subject_dn.as_str()),
        "TLS handshake complete"
    );
    let conn = Arc::new(ConnInfo {
        peer,
        peer_ip: HeaderValue::from_str(&peer.ip().to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown")),
        identity_headers: IdentityHeaders::render(&state.headers, identity.as_deref()),
        identity,
    });
    let svc_state = state.clone();
    let service = service_fn(move |req| {
        let state = svc_state.clone();
        let conn = conn.clone();
        async move { Ok::<_, Infallible>(handle(&state, &conn, req).await) }
    });
    let connection = state
        .http
        .serve_connection_with_upgrades(TokioIo::new(tls), service);
    if let Err(e) = until_cancelled(connection, &cancel).await {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// Drives a connection; on shutdown asks it to finish gracefully (HTTP/1: after the request in
/// flight; HTTP/2: GOAWAY, then the open streams) and waits for that.
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

async fn handle(state: &State, conn: &ConnInfo, req: Request<Incoming>) -> Response<ProxyBody> {
    let start = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let result = match state
        .policy
        .check(&req, conn, state.forwarder.policy())
        .await
    {
        Ok(admitted) => {
            state
                .forwarder
                .forward(
                    req,
                    admitted.target,
                    conn,
                    admitted.extra,
                    admitted.max_body,
                )
                .await
        }
        Err(reject) => Err(reject),
    };
    let dn = conn.identity.as_ref().map(|i| i.subject_dn.as_str());
    let (mut resp, rule) = match result {
        Ok(resp) => (resp, None),
        Err(reject) => {
            if reject.status.is_client_error() {
                tracing::info!(
                    peer = %conn.peer,
                    reason = reject.message.as_str(),
                    subject_dn = dn.unwrap_or("-"),
                    path = path.as_str(),
                    status = reject.status.as_u16(),
                    rule = reject.rule.as_deref().unwrap_or("-"),
                    "request refused"
                );
            }
            (reject.to_response(), reject.rule)
        }
    };
    add_response_headers(&mut resp, &state.response_headers);
    if state.access_log {
        let status = resp.status().as_u16();
        resp.body_mut().set_log(AccessRecord {
            start,
            peer: conn.peer,
            identity: conn.identity.clone(),
            method,
            path,
            status,
            rule,
            error: None,
        });
    }
    resp
}

/// `[response_headers]` on every response, certgate's own included; a header the backend set
/// itself is left as it is.
fn add_response_headers(resp: &mut Response<ProxyBody>, headers: &[(HeaderName, HeaderValue)]) {
    for (name, value) in headers {
        if !resp.headers().contains_key(name) {
            resp.headers_mut().insert(name.clone(), value.clone());
        }
    }
}

/// The plain-HTTP listener: every request gets a 301 to the same host, path and query over
/// HTTPS, with the HTTPS port kept when it is not 443. Nothing is ever proxied in clear text.
async fn serve_redirect(
    tcp: TcpStream,
    peer: SocketAddr,
    https_port: u16,
    cancel: CancellationToken,
    headers: Vec<(HeaderName, HeaderValue)>,
    _guard: ConnGuard,
) {
    let headers = Arc::new(headers);
    let service = service_fn(move |req: Request<Incoming>| {
        let headers = headers.clone();
        async move {
            let mut resp = redirect_response(&req, https_port);
            add_response_headers(&mut resp, &headers);
            Ok::<_, Infallible>(resp)
        }
    });
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new());
    let connection = http.serve_connection(TokioIo::new(tcp), service);
    if let Err(e) = until_cancelled(connection, &cancel).await {
        tracing::debug!(peer = %canonical(peer), error = %e, "redirect connection ended with an error");
    }
}

fn redirect_response<B>(req: &Request<B>, https_port: u16) -> Response<ProxyBody> {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.parse::<http::uri::Authority>().ok());
    let Some(host) = host else {
        return crate::reply::Reject::bad_request("A Host header is required.").to_response();
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

/// Completes on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        match (term, int) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM received"),
                    _ = int.recv() => tracing::info!("SIGINT received"),
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
