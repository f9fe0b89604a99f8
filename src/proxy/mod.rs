//! The daemon: [`Server`] binds the listeners and runs the accept loop (the checks on a bare TCP
//! connection come first: IP allow-list, connection limits, the handshake throttle), the
//! housekeeping and the reload watcher, and shuts down gracefully.
//!
//! - `conn`: one client connection, its handshake and its state, served until it ends;
//!   `keepalive` holds it to its deadlines and parks it while idle, `readahead` reads the
//!   socket in large pieces while a body streams.
//! - `handle`: one request — the checks, the forward, the one place refusals are rendered.
//! - [`runtime`]: everything built from one config, swapped whole on reload.
//! - `http`: hyper's protocol limits; `redirect` the plain-HTTP listener; `admin` the
//!   metrics and health listener (and the operator's page at `/`); `page` the operator's page
//!   with the daemon's own state; `signals` SIGTERM, SIGINT and SIGHUP.
//!
//! Per-connection work happens once, in the connection's task: the handshake, the client
//! identity and its rendered headers. Per-request work is only what differs per request: a
//! generation check (re-verifying the certificate after a reload), the policy, the forward.

mod admin;
mod conn;
mod handle;
mod http;
mod keepalive;
mod page;
mod readahead;
mod redirect;
pub mod runtime;
mod signals;

pub use signals::Signals;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::policy::access::ConnGuard;
use crate::tls::TlsError;
use runtime::Shared;

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
                        let peer = canonical(peer);
                        if let Some(guard) = admit(&self.shared, peer) {
                            let shared = self.shared.clone();
                            tracker.spawn(conn::serve(shared, tcp, peer, cancel.clone(), guard));
                        }
                    }
                    Err(e) => accept_error(e).await,
                },
                accepted = accept_opt(self.redirect.as_ref()) => match accepted {
                    Ok((tcp, peer)) => {
                        let peer = canonical(peer);
                        if let Some(guard) = admit(&self.shared, peer) {
                            let shared = self.shared.clone();
                            tracker.spawn(redirect::serve(shared, tcp, peer, https_port, cancel.clone(), guard));
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
                    let rt = self.shared.current();
                    rt.policy.evict_idle();
                    // Blocks that ran out and idle failure counters: without this, every
                    // address that ever failed a handshake stayed in memory.
                    rt.handshake_throttle.evict();
                    rt.forwarder.housekeeping();
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
        // Jobs still waiting in a queue will not get their turn now: answered 503 at once.
        self.shared.current().forwarder.queues().close();
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
