//! A client connection's life after the handshake: served while requests come, parked while
//! idle (HTTP/1), closed when idle too long or when the client stops reading.
//!
//! hyper keeps a read buffer and a header write buffer (8 KiB each) and its connection state
//! for as long as a connection lives, even when the client has gone quiet between requests; a
//! browser holds several such connections open for minutes. Like nginx, which frees its buffers
//! on every keep-alive connection, certgate *parks* an HTTP/1 connection that has been idle for
//! [`PARK_AFTER`]: hyper's connection is ended without closing the TLS stream, which frees its
//! buffers, and the task waits for the client's next bytes holding only the TLS stream. Then a
//! fresh hyper connection takes over, with any bytes hyper had already read replayed first.
//! A busy connection never parks, so the hot path pays nothing for this.
//!
//! The same loop holds every connection (HTTP/2 too) to `keepalive_timeout` and to
//! `send_timeout`: a client that takes nothing of what certgate sends for that long (a slow-read
//! attack, or a client that went away without a FIN) is disconnected, as nginx's `send_timeout`
//! does, rather than holding its connection and a backend connection forever.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper::server::conn::http1;
use hyper::service::Service;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

use crate::proxy::readahead::ReadAhead;
use crate::response::body::ProxyBody;
use crate::response::in_flight::InFlight;

/// How long an HTTP/1 connection must be idle (no request in flight) before it is parked. Long
/// enough that a client sending ten or more requests a second never parks; short enough that
/// the connections a browser keeps for later give their memory back at once.
pub const PARK_AFTER: Duration = Duration::from_millis(100);

/// How long closing a parked connection (TLS close_notify, then FIN) may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// How writes to one client are going, and whether its connection is being parked: recorded by
/// [`ClientIo`], read by the loops here.
#[derive(Debug)]
pub struct IoState {
    epoch: std::time::Instant,
    /// Set while an idle HTTP/1 connection is being parked: hyper's closing of the connection
    /// must then leave the TLS stream open.
    parking: AtomicBool,
    /// 0 while writes to the client go through; else 1 + the time (ms since `epoch`) a write
    /// first found the client's socket full, for `send_timeout`.
    stalled_ms: AtomicU64,
}

impl Default for IoState {
    fn default() -> Self {
        IoState {
            epoch: std::time::Instant::now(),
            parking: AtomicBool::new(false),
            stalled_ms: AtomicU64::new(0),
        }
    }
}

impl IoState {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// A write to the client found its socket full.
    fn write_blocked(&self) {
        if self.stalled_ms.load(Ordering::Relaxed) == 0 {
            self.stalled_ms.store(self.now_ms() + 1, Ordering::Relaxed);
        }
    }

    /// A write to the client went through.
    fn write_went(&self) {
        if self.stalled_ms.load(Ordering::Relaxed) != 0 {
            self.stalled_ms.store(0, Ordering::Relaxed);
        }
    }

    /// How long writes to the client have been blocked (zero while they go through).
    fn stalled_for(&self) -> Duration {
        match self.stalled_ms.load(Ordering::Relaxed) {
            0 => Duration::ZERO,
            since => Duration::from_millis(self.now_ms().saturating_sub(since - 1)),
        }
    }

    fn set_parking(&self, parking: bool) {
        self.parking.store(parking, Ordering::Release);
    }

    fn parking(&self) -> bool {
        self.parking.load(Ordering::Acquire)
    }
}

/// The deadlines a client connection is held to.
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    /// `[limits] keepalive_timeout`: no request in flight for this long closes it.
    pub keepalive: Duration,
    /// `[limits] send_timeout`: writes to the client blocked for this long drop it.
    pub send: Duration,
}

impl Deadlines {
    /// How often a connection looks for a stalled client: often enough that a stall is caught
    /// within an eighth of `send` after it expires, rarely enough that an idle HTTP/2
    /// connection (which is not parked) costs no CPU worth counting: with the default 60 s,
    /// every 7.5 s instead of ten times a second, which cost 4 % of a core per 1,000 idle
    /// connections.
    fn stall_check(&self) -> Duration {
        (self.send / 8).max(Duration::from_millis(10))
    }

    /// Whether the client has stopped reading for longer than `send`; logs it.
    fn stalled(&self, peer: SocketAddr, io: &IoState) -> bool {
        let stalled_for = io.stalled_for();
        if stalled_for < self.send {
            return false;
        }
        tracing::info!(%peer, ?stalled_for, "closing connection: the client stopped reading (send_timeout)");
        true
    }
}

/// What the loops watch on a connection: its requests (idle time, unread bodies) and its writes.
#[derive(Clone, Copy)]
pub struct Watch<'a> {
    /// The connection's requests.
    pub requests: &'a InFlight,
    /// Its writes and parking.
    pub io: &'a IoState,
}

/// Awaits a connection that was asked to finish, still dropping it if the client stops
/// reading: `None` then.
async fn finish<F: Future + Unpin>(
    conn: &mut F,
    peer: SocketAddr,
    io: &IoState,
    deadlines: Deadlines,
) -> Option<F::Output> {
    loop {
        tokio::select! {
            r = &mut *conn => return Some(r),
            () = tokio::time::sleep(deadlines.stall_check()) => {
                if deadlines.stalled(peer, io) {
                    return None;
                }
            }
        }
    }
}

/// The client's TLS stream (boxed: moving it between hyper and the parked task moves a pointer,
/// and the connection task stays small) as hyper sees it: bytes hyper had read before the connection was
/// parked are replayed first, and hyper's shutdown leaves the stream open while parking.
pub struct ClientIo {
    inner: TokioIo<Box<TlsStream<ReadAhead>>>,
    replay: Bytes,
    state: Arc<IoState>,
}

impl ClientIo {
    /// Wraps a client's TLS stream; `state` learns when writes to it block.
    pub fn new(tls: Box<TlsStream<ReadAhead>>, state: Arc<IoState>) -> ClientIo {
        ClientIo {
            inner: TokioIo::new(tls),
            replay: Bytes::new(),
            state,
        }
    }

    /// Notes a write's outcome for `send_timeout`.
    fn track<T>(&self, r: Poll<T>) -> Poll<T> {
        if r.is_pending() {
            self.state.write_blocked();
        } else {
            self.state.write_went();
        }
        r
    }

    fn tcp(&self) -> &TcpStream {
        self.inner.inner().get_ref().0.tcp()
    }

    /// Bytes already read from the socket but not yet taken by TLS.
    fn has_buffered(&self) -> bool {
        self.inner.inner().get_ref().0.has_buffered()
    }
}

impl Read for ClientIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        if self.replay.is_empty() {
            return Pin::new(&mut self.inner).poll_read(cx, buf);
        }
        let n = self.replay.len().min(buf.remaining());
        buf.put_slice(&self.replay[..n]);
        self.replay.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl Write for ClientIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.track(r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.track(r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.track(r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Parking: everything hyper wrote must reach the client, but the stream stays open.
        let r = if self.state.parking() {
            Pin::new(&mut self.inner).poll_flush(cx)
        } else {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        };
        self.track(r)
    }
}

/// Why a connection ended badly.
pub type ConnError = Box<dyn std::error::Error + Send + Sync>;

/// What ended one hyper connection.
enum Outcome {
    /// The connection is over (closed by either side, upgraded, failed, or told to close).
    Ended(Result<(), ConnError>),
    /// Parked: the TLS stream and the bytes hyper had read but not used.
    Parked(ClientIo, Bytes),
}

/// Serves an HTTP/1 connection until it ends: hyper while requests come, parked while idle.
/// `close` ends it gracefully (shutdown, a failed re-check); `deadlines` bound how long it may
/// stay idle, parked or not, and how long its client may stop reading. `builder` is asked for
/// the current settings each time hyper takes over, so a reload's limits apply from the next
/// request on.
pub async fn serve<S, B>(
    peer: SocketAddr,
    tls: Box<TlsStream<ReadAhead>>,
    service: S,
    builder: B,
    close: &CancellationToken,
    requests: &InFlight,
    deadlines: Deadlines,
) -> Result<(), ConnError>
where
    S: Service<Request<Incoming>, Response = Response<ProxyBody>> + Clone + Unpin + Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::Future: Send + 'static,
    B: Fn() -> http1::Builder,
{
    let keepalive = deadlines.keepalive;
    let state = Arc::new(IoState::default());
    let mut io = ClientIo::new(tls, state.clone());
    // One park per idle period: a client that dribbles a request head must not restart hyper's
    // head timeout by getting parked again and again.
    let mut parked_at = None;
    let mut parks = 0u64;
    loop {
        // Boxed, so a parked connection's task holds a pointer rather than hyper's state.
        let conn = Box::new(
            builder()
                .serve_connection(io, service.clone())
                .with_upgrades(),
        );
        let watch = Watch {
            requests,
            io: &state,
        };
        match run(peer, conn, close, watch, deadlines, &mut parked_at).await {
            Outcome::Ended(r) => return r,
            Outcome::Parked(parked, read) => {
                parks += 1;
                tracing::debug!(%peer, parks, buffered = read.len(), "idle connection parked");
                io = parked;
                state.set_parking(false);
                if !read.is_empty() {
                    io.replay = read;
                    continue;
                }
                if io.has_buffered() {
                    continue;
                }
            }
        }
        let idle_left = keepalive.saturating_sub(requests.idle_for());
        tokio::select! {
            r = io.tcp().readable() => {
                r?;
            }
            () = close.cancelled() => return close_parked(io).await,
            () = tokio::time::sleep(idle_left) => {
                tracing::debug!(idle_for = ?requests.idle_for(), "closing idle connection");
                return close_parked(io).await;
            }
        }
    }
}

/// Drives one hyper connection until it ends, or parks it once it has been idle for
/// [`PARK_AFTER`], or closes it gracefully when told to or idle for `keepalive`.
async fn run<S>(
    peer: SocketAddr,
    mut conn: Box<http1::UpgradeableConnection<ClientIo, S>>,
    close: &CancellationToken,
    Watch { requests, io }: Watch<'_>,
    deadlines: Deadlines,
    parked_at: &mut Option<u64>,
) -> Outcome
where
    S: Service<Request<Incoming>, Response = Response<ProxyBody>> + Unpin,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::Future: Send + 'static,
{
    let keepalive = deadlines.keepalive;
    let timer = tokio::time::sleep(PARK_AFTER.min(keepalive));
    tokio::pin!(timer);
    let mut idle_for = Duration::ZERO;
    let park = loop {
        tokio::select! {
            r = Pin::new(&mut *conn) => return Outcome::Ended(r.map_err(Into::into)),
            () = close.cancelled() => break false,
            () = timer.as_mut() => {
                if deadlines.stalled(peer, io) {
                    return Outcome::Ended(Err("the client stopped reading".into()));
                }
                idle_for = requests.idle_for();
                if idle_for >= keepalive {
                    tracing::debug!(?idle_for, "closing idle connection");
                    break false;
                }
                // hyper keeps a connection only once the request body was read to its end; one
                // it will close by itself must not be parked.
                if idle_for >= PARK_AFTER
                    && !requests.body_pending()
                    && *parked_at != Some(requests.stamp())
                {
                    break true;
                }
                let next = if idle_for < PARK_AFTER {
                    PARK_AFTER - idle_for
                } else {
                    keepalive - idle_for
                };
                let next = next.min(deadlines.stall_check());
                timer.as_mut().reset(tokio::time::Instant::now() + next);
            }
        }
    };
    if park {
        tracing::debug!(%peer, ?idle_for, "parking idle connection");
    }
    io.set_parking(park);
    Pin::new(&mut *conn).graceful_shutdown();
    let Some(r) = finish(&mut conn, peer, io, deadlines).await else {
        io.set_parking(false);
        return Outcome::Ended(Err("the client stopped reading".into()));
    };
    if !park || r.is_err() {
        io.set_parking(false);
        return Outcome::Ended(r.map_err(Into::into));
    }
    *parked_at = Some(requests.stamp());
    match conn.into_parts() {
        Some(parts) => Outcome::Parked(parts.io, parts.read_buf),
        None => Outcome::Ended(Ok(())),
    }
}

/// Closes a parked connection as hyper would have: TLS close_notify, then FIN.
async fn close_parked(mut io: ClientIo) -> Result<(), ConnError> {
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, io.inner.inner_mut().shutdown()).await;
    Ok(())
}

/// Drives an HTTP/2 connection until it ends, is told to close (shutdown, a failed re-check),
/// or has had no stream open for `keepalive`; then asks it to finish gracefully (GOAWAY, then
/// the open streams) and waits for that. A client that stops reading for `send` is dropped.
/// The checks live in the connection's own task: no extra task or timer per connection.
pub async fn drive<C>(
    peer: SocketAddr,
    mut connection: Pin<Box<C>>,
    close: &CancellationToken,
    Watch { requests, io }: Watch<'_>,
    deadlines: Deadlines,
) -> Result<(), ConnError>
where
    C: hyper_util::server::graceful::GracefulConnection,
    C::Error: Into<ConnError>,
{
    let idle = deadlines.keepalive;
    let timer = tokio::time::sleep(idle.min(deadlines.stall_check()));
    tokio::pin!(timer);
    loop {
        tokio::select! {
            r = connection.as_mut() => return r.map_err(Into::into),
            () = close.cancelled() => break,
            () = timer.as_mut() => {
                if deadlines.stalled(peer, io) {
                    return Err("the client stopped reading".into());
                }
                let idle_for = requests.idle_for();
                if idle_for >= idle {
                    tracing::debug!(?idle_for, "closing idle connection");
                    break;
                }
                let next = (idle - idle_for).min(deadlines.stall_check());
                timer.as_mut().reset(tokio::time::Instant::now() + next);
            }
        }
    }
    connection.as_mut().graceful_shutdown();
    match finish(&mut connection, peer, io, deadlines).await {
        Some(r) => r.map_err(Into::into),
        None => Err("the client stopped reading".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection that is not parked (HTTP/2, or HTTP/1 with a request in flight) wakes for
    /// the stall check an eighth of send_timeout apart, not every 100 ms.
    #[test]
    fn stall_checks_are_an_eighth_of_send_timeout_apart() {
        let at = |send| {
            Deadlines {
                keepalive: Duration::from_secs(75),
                send,
            }
            .stall_check()
        };
        assert_eq!(at(Duration::from_secs(60)), Duration::from_millis(7500));
        assert_eq!(
            at(Duration::from_millis(500)),
            Duration::from_micros(62_500)
        );
        assert_eq!(at(Duration::from_millis(1)), Duration::from_millis(10));
    }
}
