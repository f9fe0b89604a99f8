//! Listeners, the accept loop, the TLS handshake with its timeout, one task per connection
//! serving HTTP/1.1 and HTTP/2, the plain-HTTP redirect listener, the admin listener, the reload
//! watcher, and graceful shutdown.
//!
//! Per-connection work happens once, in the connection's task: the handshake, the client
//! identity and its rendered headers. Per-request work is only what differs per request: a
//! generation check (re-verifying the certificate after a reload), the policy, the forward.

pub mod admin;
pub mod keepalive;
pub mod readahead;
pub mod runtime;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::{HeaderName, HeaderValue, Request, Response, StatusCode, Version, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulConnection;
use rustls_pki_types::UnixTime;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::policy::access::ConnGuard;
use crate::proxy::readahead::ReadAhead;
use crate::proxy::runtime::{Runtime, Shared};
use crate::response::access_log::AccessRecord;
use crate::response::body::ProxyBody;
use crate::response::in_flight::InFlight;
use crate::response::reply::Reject;
use crate::tls::identity::{ClientIdentity, IdentityHeaders};
use crate::tls::{self, TlsError};
use crate::upstream::ConnInfo;
use keepalive::ClientIo;

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
    /// Sockets passed by systemd could not be used.
    #[error("socket activation: {0}")]
    Activation(std::io::Error),
    /// The TLS configuration was refused.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// How often idle rate-limit keys are forgotten and CRL freshness is looked at.
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(60);
/// How often CRL freshness warnings repeat while a CRL is close to (or past) its next update.
const CRL_WARN_EVERY: Duration = Duration::from_secs(3600);

/// A bound, ready-to-run proxy.
pub struct Server {
    https: TcpListener,
    redirect: Option<TcpListener>,
    admin: Option<TcpListener>,
    shared: Arc<Shared>,
    shutdown_timeout: Duration,
}

impl Server {
    /// Builds the runtime and binds the listeners (or takes them from systemd socket
    /// activation when `LISTEN_FDS` names this process).
    ///
    /// # Errors
    /// [`ServerError::Tls`] for an unusable certificate setup, [`ServerError::Bind`] naming the
    /// address that could not be bound.
    pub async fn bind(config: &Config) -> Result<Server, ServerError> {
        let shared = Shared::new(config)?;
        let activated = crate::ops::systemd::activated().map_err(ServerError::Activation)?;
        let from_systemd = |l: std::net::TcpListener, addr| {
            TcpListener::from_std(l).map_err(|source| ServerError::Bind { addr, source })
        };
        let https = match activated.https {
            Some(l) => from_systemd(l, config.listen.https)?,
            None => bind(config.listen.https).await?,
        };
        let redirect = match (activated.http_redirect, config.listen.http_redirect) {
            (Some(l), addr) => Some(from_systemd(
                l,
                addr.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 80))),
            )?),
            (None, Some(addr)) => Some(bind(addr).await?),
            (None, None) => None,
        };
        let admin = match config.admin {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        Ok(Server {
            https,
            redirect,
            admin,
            shared,
            shutdown_timeout: config.listen.shutdown_timeout,
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

    /// The address of the admin listener, if one is configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The shared state, to reload it (SIGHUP, tests) or read metrics.
    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
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
            admin = ?self.admin_addr(),
            "certgate listening"
        );
        self.shared.warn_crl_freshness();
        tokio::spawn(watch_files(self.shared.clone(), cancel.clone()));
        if let Some(every) = crate::ops::systemd::watchdog_interval() {
            tokio::spawn(watchdog(every, cancel.clone()));
        }
        tokio::pin!(shutdown);
        let mut housekeeping = tokio::time::interval(HOUSEKEEPING_EVERY);
        let mut crl_warned = Instant::now();
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                accepted = self.https.accept() => match accepted {
                    Ok((tcp, peer)) => {
                        if let Some(guard) = admit(&self.shared, peer) {
                            let shared = self.shared.clone();
                            tracker.spawn(serve_tls(shared, tcp, peer, cancel.clone(), guard));
                        }
                    }
                    Err(e) => accept_error(e).await,
                },
                accepted = accept_opt(self.redirect.as_ref()) => match accepted {
                    Ok((tcp, peer)) => {
                        if let Some(guard) = admit(&self.shared, peer) {
                            let shared = self.shared.clone();
                            tracker.spawn(serve_redirect(shared, tcp, peer, https_port, cancel.clone(), guard));
                        }
                    }
                    Err(e) => accept_error(e).await,
                },
                accepted = accept_opt(self.admin.as_ref()) => match accepted {
                    Ok((tcp, _)) => {
                        tokio::spawn(crate::proxy::admin::serve(tcp, self.shared.clone()));
                    }
                    Err(e) => accept_error(e).await,
                },
                _ = housekeeping.tick() => {
                    self.shared.current().policy.evict_idle();
                    if crl_warned.elapsed() >= CRL_WARN_EVERY {
                        crl_warned = Instant::now();
                        self.shared.warn_crl_freshness();
                    }
                }
            }
        }
        crate::ops::systemd::stopping();
        drop(self.https);
        drop(self.redirect);
        drop(self.admin);
        tracker.close();
        tracing::info!(
            connections = tracker.len(),
            grace = ?self.shutdown_timeout,
            "shutting down: no new connections; waiting for requests in flight"
        );
        cancel.cancel();
        // WebSockets in flight are waited for like requests in flight, within the same grace.
        self.shared.tunnels.close();
        let everything = async {
            tracker.wait().await;
            self.shared.tunnels.wait().await;
        };
        if tokio::time::timeout(self.shutdown_timeout, everything)
            .await
            .is_err()
        {
            tracing::warn!(
                connections = tracker.len(),
                websockets = self.shared.tunnels.len(),
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

/// Polls the content of the config and every file it names; reloads when it changes.
async fn watch_files(shared: Arc<Shared>, cancel: CancellationToken) {
    let mut last = shared.fingerprint();
    loop {
        let Some(every) = shared.watch_interval() else {
            // Watching is off; look again later in case a SIGHUP reload turns it on.
            tokio::select! {
                () = tokio::time::sleep(HOUSEKEEPING_EVERY) => continue,
                () = cancel.cancelled() => return,
            }
        };
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = cancel.cancelled() => return,
        }
        let now = shared.fingerprint();
        if now != last {
            // Whether it succeeds or not, do not retry until the files change again.
            let _ = shared.reload("file change").await;
            last = shared.fingerprint();
        }
    }
}

async fn watchdog(every: Duration, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = tick.tick() => crate::ops::systemd::watchdog(),
            () = cancel.cancelled() => return,
        }
    }
}

/// The checks made on a bare TCP connection, before any TLS work: the IP allow-list and the
/// connection limits. A refused peer is logged and closed at once.
fn admit(shared: &Shared, peer: SocketAddr) -> Option<ConnGuard> {
    let peer = canonical(peer);
    let rt = shared.current();
    if rt.handshake_throttle.is_blocked(peer.ip()) {
        // Logged when the address was blocked; a line per refused connection would let a
        // scanner flood the log.
        shared
            .metrics
            .connection_refused("handshake_failures_per_ip");
        return None;
    }
    if !rt.allow_ips.allows(peer.ip()) {
        shared.metrics.connection_refused("allow_ips");
        tracing::warn!(%peer, reason = "address not in [access] allow_ips", "connection refused");
        return None;
    }
    match shared.limits.try_acquire(peer.ip()) {
        Ok(guard) => Some(guard),
        Err(hit) => {
            shared.metrics.connection_refused(hit.reason());
            tracing::warn!(%peer, reason = hit.reason(), open = shared.limits.open(), "connection refused");
            None
        }
    }
}

fn canonical(peer: SocketAddr) -> SocketAddr {
    SocketAddr::new(peer.ip().to_canonical(), peer.port())
}

async fn serve_tls(
    shared: Arc<Shared>,
    tcp: TcpStream,
    peer: SocketAddr,
    cancel: CancellationToken,
    _guard: ConnGuard,
) {
    let peer = canonical(peer);
    let _ = tcp.set_nodelay(true);
    // The runtime at accept time decides the handshake; later requests look at the current one.
    let rt = shared.current();
    // Boxed, like everything large that a connection holds for a while: the task itself stays
    // small, which is most of what an idle connection costs.
    // The stream is boxed inside the boxed handshake: no TLS state ever sits in the task.
    let handshake = Box::pin(async {
        tokio::time::timeout(
            rt.handshake_timeout,
            rt.acceptor.accept(ReadAhead::new(tcp)),
        )
        .await
        .map(|r| r.map(Box::new))
    });
    let tls = tokio::select! {
        r = handshake => r,
        () = cancel.cancelled() => return,
    };
    let tls = match tls {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            let reason = tls::failure_reason(&e);
            shared.metrics.handshake_failure(reason);
            tracing::warn!(%peer, reason, detail = %e, "TLS handshake failed");
            if tls::counts_as_failed_verification(&e) {
                throttle(&rt, peer);
            }
            return;
        }
        Err(_) => {
            shared.metrics.handshake_failure("timeout");
            tracing::warn!(%peer, reason = "timeout", "TLS handshake failed");
            throttle(&rt, peer);
            return;
        }
    };
    let chain: Vec<_> = tls
        .get_ref()
        .1
        .peer_certificates()
        .map(|c| c.iter().map(|d| d.clone().into_owned()).collect())
        .unwrap_or_default();
    let identity = match chain.first() {
        None => None,
        Some(der) => match ClientIdentity::from_der(der) {
            Ok(id) => {
                shared.metrics.client_cert_seen(id.not_after);
                Some(Arc::new(id))
            }
            Err(e) => {
                shared.metrics.handshake_failure("unparsable certificate");
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
    let close = cancel.child_token();
    let requests = Arc::new(InFlight::new());
    let conn = Arc::new(ConnInfo {
        peer,
        peer_ip: HeaderValue::from_str(&peer.ip().to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown")),
        identity_headers: IdentityHeaders::render(
            &rt.headers,
            identity.as_deref().map(|id| (id, chain.as_slice())),
        ),
        identity,
        chain,
        generation: AtomicU64::new(rt.generation),
        close: close.clone(),
        requests: requests.clone(),
        tunnels: shared.tunnels.clone(),
    });
    let svc_shared = shared.clone();
    let service = service_fn(move |req| {
        let shared = svc_shared.clone();
        let conn = conn.clone();
        async move { Ok::<_, Infallible>(handle(&shared, &conn, req).await) }
    });
    // ALPN decides the protocol, as RFC 9113 requires over TLS; without it, HTTP/1.1.
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let deadlines = keepalive::Deadlines {
        keepalive: rt.keepalive_timeout,
        send: rt.send_timeout,
    };
    let result = if h2 {
        let state = Arc::new(keepalive::IoState::default());
        let io = ClientIo::new(tls, state.clone());
        let connection = Box::pin(rt.http2.serve_connection(io, service));
        drop(rt);
        let watch = keepalive::Watch {
            requests: &requests,
            io: &state,
        };
        keepalive::drive(peer, connection, &close, watch, deadlines).await
    } else {
        // The settings current when hyper (re)takes the connection, not those at accept: a
        // parked connection must not keep an old runtime alive.
        drop(rt);
        let settings = move || shared.current().http1.clone();
        keepalive::serve(peer, tls, service, settings, &close, &requests, deadlines).await
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// Counts a failed handshake against its address; logs once when the address goes over
/// `handshake_failures_per_ip`.
fn throttle(rt: &Runtime, peer: SocketAddr) {
    if let Some(wait) = rt.handshake_throttle.failed(peer.ip()) {
        tracing::warn!(
            %peer,
            refused_for = ?wait,
            "too many failed handshakes from this address; refusing its connections before the handshake"
        );
    }
}

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

/// After a reload, a connection's certificate is checked again against the new CAs and CRLs
/// before its next request; a certificate the new state refuses ends the connection.
fn recheck(conn: &ConnInfo, rt: &Runtime) -> Result<(), Reject> {
    if conn.generation.load(Ordering::Acquire) == rt.generation {
        return Ok(());
    }
    let refused = |message: String, reason: &str| {
        let mut r = Reject::forbidden(message, format!("recheck {reason}"));
        r.rule = Some(format!("recheck {reason}"));
        r
    };
    match conn.chain.split_first() {
        None if rt.client_auth_required => {
            return Err(refused(
                "A client certificate is now required; reconnect with one.".into(),
                "no certificate",
            ));
        }
        None => {}
        Some((leaf, intermediates)) => {
            if let Err(e) = rt
                .verifier
                .verify_client_cert(leaf, intermediates, UnixTime::now())
            {
                let reason = tls::rustls_reason(&e);
                let message = match reason {
                    "revoked" => "Your client certificate has been revoked (certificate revoked).".to_string(),
                    "unknown issuer" => "Your client certificate's issuer is no longer trusted (issuer no longer trusted).".to_string(),
                    other => format!("Your client certificate is no longer accepted ({other})."),
                };
                return Err(refused(message, reason));
            }
        }
    }
    conn.generation.store(rt.generation, Ordering::Release);
    Ok(())
}

async fn handle(shared: &Shared, conn: &ConnInfo, req: Request<Incoming>) -> Response<ProxyBody> {
    let start = Instant::now();
    let request = conn
        .requests
        .begin(!hyper::body::Body::is_end_stream(req.body()));
    let rt = shared.current();
    let method = req.method().clone();
    let version = req.version();
    // Only the access log needs the path of every request; refusals take it when they happen.
    let path = rt.access_log.then(|| req.uri().path().to_owned());
    let mut route = None;
    let mut closing = false;
    let mut refused_path = None;
    let result = match recheck(conn, &rt) {
        Err(reject) => {
            closing = true;
            refused_path = Some(req.uri().path().to_owned());
            Err(reject)
        }
        Ok(()) => match rt.policy.check(&req, conn, rt.forwarder.policy()).await {
            Ok(admitted) => {
                route = admitted.route;
                rt.forwarder
                    .forward(
                        req,
                        admitted.target,
                        admitted.host,
                        conn,
                        admitted.extra,
                        admitted.max_body,
                    )
                    .await
            }
            Err(reject) => {
                refused_path = Some(req.uri().path().to_owned());
                Err(reject)
            }
        },
    };
    let dn = conn.identity.as_ref().map(|i| i.subject_dn.as_str());
    let (mut resp, rule) = match result {
        Ok(resp) => (resp, None),
        Err(reject) => {
            if reject.status.is_client_error() {
                let rule = reject.rule.as_deref().unwrap_or("-");
                shared.metrics.denied(rule);
                if reject.status == StatusCode::TOO_MANY_REQUESTS {
                    shared
                        .metrics
                        .rate_limited(rule.rsplit(' ').next().unwrap_or(rule));
                }
                tracing::info!(
                    peer = %conn.peer,
                    reason = reject.message.as_str(),
                    subject_dn = dn.unwrap_or("-"),
                    path = refused_path.as_deref().or(path.as_deref()).unwrap_or("-"),
                    status = reject.status.as_u16(),
                    rule,
                    "request refused"
                );
            }
            route = route.or(reject.route);
            (reject.to_response(), reject.rule)
        }
    };
    if closing {
        if version <= Version::HTTP_11 {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        conn.close.cancel();
    }
    add_response_headers(&mut resp, &rt.response_headers);
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
        counters: route
            .and_then(|i| rt.route_counters.get(i))
            .unwrap_or(&rt.none_counters)
            .clone(),
        log: rt.access_log,
        metrics: shared.metrics.clone(),
        request,
    });
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

/// SIGTERM, SIGINT and SIGHUP handlers, registered before the listeners announce themselves:
/// a signal that arrives right after "certgate listening" must find its handler in place, not
/// the default action (which for SIGHUP and SIGTERM ends the process at once).
pub struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
    #[cfg(unix)]
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    /// Registers the handlers; call inside the runtime.
    ///
    /// # Errors
    /// When the handlers cannot be installed.
    pub fn register() -> std::io::Result<Signals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Signals {
                term: signal(SignalKind::terminate())?,
                int: signal(SignalKind::interrupt())?,
                hup: signal(SignalKind::hangup())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Signals {})
    }

    /// Splits into the shutdown future (SIGTERM or SIGINT) and the reload task (SIGHUP).
    pub fn split(
        self,
        shared: Arc<Shared>,
    ) -> (
        impl Future<Output = ()> + Send + 'static,
        impl Future<Output = ()> + Send + 'static,
    ) {
        #[cfg(unix)]
        {
            let Signals {
                mut term,
                mut int,
                mut hup,
            } = self;
            let shutdown = async move {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM received"),
                    _ = int.recv() => tracing::info!("SIGINT received"),
                }
            };
            let reload = async move {
                while hup.recv().await.is_some() {
                    tracing::info!("SIGHUP received");
                    let _ = shared.reload("SIGHUP").await;
                }
            };
            (shutdown, reload)
        }
        #[cfg(not(unix))]
        {
            let _ = shared;
            (
                async {
                    let _ = tokio::signal::ctrl_c().await;
                },
                std::future::pending::<()>(),
            )
        }
    }
}
