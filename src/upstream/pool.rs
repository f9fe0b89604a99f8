//! One server's keep-alive connections, on hyper's connection-level HTTP/1.1 client.
//!
//! hyper-util's pooled client did the same job for any scheme, protocol and key: per request it
//! raced a pool checkout against a lazy connect, wrapped the connection in a weak-referenced
//! guard, looked the pool up by (scheme, authority) and rewrote the URI; callgrind counted
//! ~7,000 instructions per request there, a tenth of certgate's whole cost of a proxied
//! request. A server has one address and speaks HTTP/1.1, so its pool is a stack of idle
//! senders behind a mutex: the newest idle connection is used first (warm, and the oldest
//! ones expire), a connection comes back when the response body is done with, and a sender
//! whose connection closed is skipped.
//!
//! The idle cap tolerates bursts. nginx's `keepalive 32` closes every connection returned over
//! the cap, so 64 requests in flight against a cap of 32 open and close a backend connection
//! every ~15 requests, for ever (a connect, an accept and a TCP handshake each, on both sides).
//! Here the pool keeps as many idle connections as were in use at once within the last
//! [`PEAK_WINDOW`] when that is more than the cap: a steady load reconnects never, and once the
//! load falls the extra connections close with the idle timeout like any other.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use http::uri::Authority;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::response::body::LimitedBody;

/// Why a request got no response.
#[derive(Debug, thiserror::Error)]
pub(super) enum SendError {
    /// No connection: nothing of the request was sent.
    #[error("cannot connect: {0}")]
    Connect(#[source] io::Error),
    /// The connection broke, or the backend's answer was not HTTP.
    #[error(transparent)]
    Http(#[from] hyper::Error),
    /// Like `Http`, on a connection reused from the idle pool: the only kind a keep-alive
    /// race can explain (the backend closed it while idle, as the request went out).
    #[error(transparent)]
    Reused(hyper::Error),
}

impl SendError {
    /// Nothing of the request reached the server.
    pub(super) fn is_connect(&self) -> bool {
        matches!(self, SendError::Connect(_))
    }

    /// A pooled idle connection the backend had closed, found out only by sending on it; the
    /// request may not have been read, and an idempotent one may be sent again. A fresh
    /// connection that breaks is not one: the backend read the request and closed without
    /// answering, and sending it again would run it twice (spec §4).
    pub(super) fn is_stale_connection(&self) -> bool {
        match self {
            SendError::Connect(_) | SendError::Http(_) => false,
            SendError::Reused(e) => e.is_incomplete_message() || e.is_canceled() || e.is_closed(),
        }
    }

    /// What happened, in the words of the innermost cause.
    pub(super) fn cause(&self) -> String {
        match self {
            SendError::Connect(e) => e.to_string(),
            SendError::Http(e) | SendError::Reused(e) => {
                std::error::Error::source(e).map_or_else(|| e.to_string(), |s| format!("{e}: {s}"))
            }
        }
    }
}

/// How long the most connections in use at once keeps idle ones beyond the cap.
const PEAK_WINDOW: Duration = Duration::from_secs(10);

/// An idle connection and when it became idle.
struct Idle {
    sender: Conn,
    since: Instant,
}

/// A connection to the server: the sender, and the task that drives its HTTP/1.1 state.
struct Conn {
    sender: SendRequest<LimitedBody>,
    task: tokio::task::AbortHandle,
}

impl Conn {
    fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }
}

/// Aborts a connection's task unless disarmed: a request given up before its answer (the
/// response timeout) leaves hyper flushing the request body into a server that may never take
/// it, and even its shutdown flushes first, so the task, the body and the client's connection
/// behind it would be held for ever.
struct AbortUnlessAnswered(Option<tokio::task::AbortHandle>);

impl Drop for AbortUnlessAnswered {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

/// One server's connections; see the module doc.
pub(super) struct Pool {
    authority: Authority,
    connect_timeout: Duration,
    /// Idle connections kept; 0 closes each after its response.
    max_idle: usize,
    /// An idle connection older than this is closed rather than used: the backend may be about
    /// to close it (uvicorn does after 5 s).
    idle_timeout: Duration,
    state: Mutex<State>,
    /// A task closes expired idle connections while there are any.
    reaping: AtomicBool,
}

/// The connections, idle and lent.
#[derive(Default)]
struct State {
    /// Oldest first; taken from the end.
    idle: Vec<Idle>,
    /// Lent to requests now.
    lent: usize,
    /// The most lent at once since `peak_at`...
    peak: usize,
    /// ...which is when that many were last lent, or when the window restarted.
    peak_at: Option<Instant>,
}

impl State {
    fn lend(&mut self, now: Instant) {
        self.lent += 1;
        if self.lent >= self.peak || self.peak_at.is_none_or(|t| now - t >= PEAK_WINDOW) {
            self.peak = self.lent;
            self.peak_at = Some(now);
        }
    }

    /// Idle connections allowed now: the cap, or what the recent peak needs beyond those lent.
    fn room(&self, max_idle: usize, now: Instant) -> usize {
        let recent = self.peak_at.is_some_and(|t| now - t < PEAK_WINDOW);
        let burst = if recent {
            self.peak.saturating_sub(self.lent)
        } else {
            0
        };
        max_idle.max(burst)
    }
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("authority", &self.authority)
            .field("max_idle", &self.max_idle)
            .finish_non_exhaustive()
    }
}

impl Pool {
    /// A pool of connections to `authority` (host and port).
    pub(super) fn new(
        authority: Authority,
        connect_timeout: Duration,
        max_idle: usize,
        idle_timeout: Duration,
    ) -> Pool {
        Pool {
            authority,
            connect_timeout,
            max_idle,
            idle_timeout,
            state: Mutex::new(State::default()),
            reaping: AtomicBool::new(false),
        }
    }

    /// Sends `req` (origin-form target, Host set) on an idle connection, or a new one, and
    /// returns the response with the lease that gives the connection back when dropped. A
    /// pooled connection found closed before the request went out is passed over for the next,
    /// request and body intact.
    pub(super) async fn send(
        self: &Arc<Self>,
        mut req: Request<LimitedBody>,
    ) -> Result<(Response<Incoming>, Lease), SendError> {
        while let Some(mut conn) = self.checkout() {
            // Counted as lent by the checkout; dropped on an error, the lease counts it back.
            let mut lease = self.lease();
            let mut guard = AbortUnlessAnswered(Some(conn.task.clone()));
            match conn.sender.try_send_request(req).await {
                Ok(resp) => {
                    guard.0 = None;
                    lease.sender = Some(conn);
                    return Ok((resp, lease));
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) => {
                        // Never sent: the connection was closed already.
                        guard.0 = None;
                        req = unsent;
                    }
                    None => return Err(SendError::Reused(e.into_error())),
                },
            }
        }
        let mut conn = self.connect().await?;
        // Lent from here, so a burst's new connections count towards its peak.
        self.lock().lend(Instant::now());
        let mut lease = self.lease();
        let mut guard = AbortUnlessAnswered(Some(conn.task.clone()));
        let resp = conn.sender.send_request(req).await?;
        guard.0 = None;
        lease.sender = Some(conn);
        Ok((resp, lease))
    }

    /// A lease for a connection counted as lent, without the connection yet.
    fn lease(self: &Arc<Self>) -> Lease {
        Lease {
            pool: self.clone(),
            sender: None,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The newest idle connection that is still open, counted as lent; expired ones are
    /// closed on the way. A connection that fails after the checkout is given back through its
    /// lease like any other (closed, it is dropped there).
    fn checkout(self: &Arc<Self>) -> Option<Conn> {
        let now = Instant::now();
        let mut state = self.lock();
        let mut i = state.idle.len();
        while i > 0 {
            i -= 1;
            let entry = &state.idle[i];
            if now.duration_since(entry.since) >= self.idle_timeout {
                // This one and every older one below it.
                state.idle.drain(..=i);
                return None;
            }
            if entry.sender.is_closed() {
                state.idle.remove(i);
            } else if entry.sender.sender.is_ready() {
                let sender = state.idle.remove(i).sender;
                state.lend(now);
                return Some(sender);
            }
            // Else still finishing its last response: left for the next request.
        }
        None
    }

    /// A lent connection back (`None`: it is not coming back).
    fn give_back(self: &Arc<Self>, sender: Option<Conn>) {
        let now = Instant::now();
        let mut state = self.lock();
        state.lent = state.lent.saturating_sub(1);
        let Some(sender) = sender.filter(|s| !s.is_closed() && self.max_idle > 0) else {
            return;
        };
        if state.idle.len() >= state.room(self.max_idle, now) {
            // Over the cap the oldest goes: the newest are the ones the backend keeps longest.
            state.idle.remove(0);
        }
        state.idle.push(Idle { sender, since: now });
        drop(state);
        if !self.reaping.swap(true, Ordering::AcqRel) {
            tokio::spawn(reap(Arc::downgrade(self), self.idle_timeout / 2));
        }
    }

    /// Closes idle connections past their time, and those over the cap once the burst that
    /// needed them is over. Returns how many stay idle.
    fn expire(&self) -> usize {
        let now = Instant::now();
        let mut state = self.lock();
        state
            .idle
            .retain(|e| now.duration_since(e.since) < self.idle_timeout && !e.sender.is_closed());
        let room = state.room(self.max_idle, now);
        if state.idle.len() > room {
            let extra = state.idle.len() - room;
            state.idle.drain(..extra);
        }
        state.idle.len()
    }

    /// A new connection, its HTTP/1.1 state driven by a task of its own.
    async fn connect(&self) -> Result<Conn, SendError> {
        let deadline = Instant::now() + self.connect_timeout;
        let timed_out = || {
            SendError::Connect(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "no connection within {}",
                    humantime::format_duration(self.connect_timeout)
                ),
            ))
        };
        let host = self.authority.host();
        let port = self.authority.port_u16().unwrap_or(80);
        // An IP literal needs no lookup (the common case: 127.0.0.1:7860).
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let addrs: Vec<std::net::SocketAddr> = match host.parse::<std::net::IpAddr>() {
            Ok(ip) => vec![(ip, port).into()],
            Err(_) => tokio::time::timeout_at(deadline, tokio::net::lookup_host((host, port)))
                .await
                .map_err(|_| timed_out())?
                .map_err(SendError::Connect)?
                .collect(),
        };
        let mut last = io::Error::new(io::ErrorKind::NotFound, format!("{host} has no address"));
        let mut stream = None;
        for addr in addrs {
            match tokio::time::timeout_at(deadline, TcpStream::connect(addr)).await {
                Err(_) => return Err(timed_out()),
                Ok(Ok(s)) => {
                    stream = Some(s);
                    break;
                }
                Ok(Err(e)) => last = e,
            }
        }
        let stream = stream.ok_or(SendError::Connect(last))?;
        stream.set_nodelay(true).map_err(SendError::Connect)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        let authority = self.authority.clone();
        let task = tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(upstream = %authority, error = %e, "backend connection ended with an error");
            }
        })
        .abort_handle();
        Ok(Conn { sender, task })
    }
}

/// A connection lent to one request; given back to its pool when dropped, which the response
/// body does when it is done with.
pub(super) struct Lease {
    pool: Arc<Pool>,
    sender: Option<Conn>,
}

impl Lease {
    /// The connection is not coming back (it became a WebSocket tunnel).
    pub(super) fn forget(mut self) {
        self.sender = None;
    }

    /// The connection is closed and not given back: it is still sending a request body that
    /// the server, having answered, may never read.
    pub(super) fn abandon(mut self) {
        if let Some(conn) = self.sender.take() {
            conn.task.abort();
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.pool.give_back(self.sender.take());
    }
}

/// Closes a pool's expired idle connections every `every` while it has any, so a quiet server
/// holds none open for long; ends with the pool (a reload that drops the server).
async fn reap(pool: Weak<Pool>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(pool) = pool.upgrade() else { return };
        if pool.expire() == 0 {
            pool.reaping.store(false, Ordering::Release);
            // A connection given back between the two lines above found the flag still set.
            if pool.lock().idle.is_empty() || pool.reaping.swap(true, Ordering::AcqRel) {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lends `n` at `now` and gives them all back, as a burst does.
    fn burst(state: &mut State, n: usize, now: Instant) {
        for _ in 0..n {
            state.lend(now);
        }
        state.lent = 0;
    }

    #[test]
    fn a_burst_keeps_its_connections_for_the_window_then_the_cap_returns() {
        let start = Instant::now();
        let mut state = State::default();
        assert_eq!(state.room(2, start), 2);
        burst(&mut state, 6, start);
        assert_eq!(state.room(2, start), 6);
        assert_eq!(state.room(2, start + PEAK_WINDOW / 2), 6);
        assert_eq!(state.room(2, start + PEAK_WINDOW), 2);
    }

    #[test]
    fn a_steady_load_renews_its_peak() {
        let start = Instant::now();
        let mut state = State::default();
        burst(&mut state, 6, start);
        // The same six again before the window ends: the peak is still needed.
        let later = start + PEAK_WINDOW - Duration::from_secs(1);
        burst(&mut state, 6, later);
        assert_eq!(
            state.room(2, start + PEAK_WINDOW + Duration::from_secs(1)),
            6
        );
        // A smaller load after a quiet window starts a smaller peak.
        let quiet = later + PEAK_WINDOW;
        burst(&mut state, 3, quiet);
        assert_eq!(state.room(2, quiet), 3);
    }

    #[test]
    fn connections_still_lent_need_no_idle_room() {
        let now = Instant::now();
        let mut state = State::default();
        for _ in 0..6 {
            state.lend(now);
        }
        // Four of six back: the two still out will come back into room of their own.
        state.lent = 2;
        assert_eq!(state.room(0, now), 4);
    }
}
