//! HTTP/1 keep-alive connections that cost little while idle.
//!
//! hyper keeps a read buffer and a header write buffer (8 KiB each) and its connection state
//! for as long as a connection lives, even when the client has gone quiet between requests; a
//! browser holds several such connections open for minutes. Like nginx, which frees its buffers
//! on every keep-alive connection, certgate *parks* an HTTP/1 connection that has been idle for
//! [`PARK_AFTER`]: hyper's connection is ended without closing the TLS stream, which frees its
//! buffers, and the task waits for the client's next bytes holding only the TLS stream. Then a
//! fresh hyper connection takes over, with any bytes hyper had already read replayed first.
//! A busy connection never parks, so the hot path pays nothing for this.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
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

use crate::body::ProxyBody;
use crate::forward::Activity;
use crate::readahead::ReadAhead;

/// How long an HTTP/1 connection must be idle (no request in flight) before it is parked. Long
/// enough that a client sending ten or more requests a second never parks; short enough that
/// the connections a browser keeps for later give their memory back at once.
pub const PARK_AFTER: Duration = Duration::from_millis(100);

/// How long closing a parked connection (TLS close_notify, then FIN) may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// The client's TLS stream (boxed: moving it between hyper and the parked task moves a pointer,
/// and the connection task stays small) as hyper sees it: bytes hyper had read before the connection was
/// parked are replayed first, and hyper's shutdown leaves the stream open while parking.
pub struct ClientIo {
    inner: TokioIo<Box<TlsStream<ReadAhead>>>,
    replay: Bytes,
    activity: Arc<Activity>,
}

impl ClientIo {
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
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Parking: everything hyper wrote must reach the client, but the stream stays open.
        if self.activity.parking() {
            Pin::new(&mut self.inner).poll_flush(cx)
        } else {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
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
/// `close` ends it gracefully (shutdown, a failed re-check); `keepalive` bounds how long it may
/// stay idle, parked or not. `builder` is asked for the current settings each time hyper takes
/// over, so a reload's limits apply from the next request on.
pub async fn serve<S, B>(
    peer: SocketAddr,
    tls: Box<TlsStream<ReadAhead>>,
    service: S,
    builder: B,
    close: &CancellationToken,
    activity: Arc<Activity>,
    keepalive: Duration,
) -> Result<(), ConnError>
where
    S: Service<Request<Incoming>, Response = Response<ProxyBody>> + Clone + Unpin + Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::Future: Send + 'static,
    B: Fn() -> http1::Builder,
{
    let mut io = ClientIo {
        inner: TokioIo::new(tls),
        replay: Bytes::new(),
        activity: activity.clone(),
    };
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
        match run(peer, conn, close, &activity, keepalive, &mut parked_at).await {
            Outcome::Ended(r) => return r,
            Outcome::Parked(parked, read) => {
                parks += 1;
                tracing::debug!(%peer, parks, buffered = read.len(), "idle connection parked");
                io = parked;
                activity.set_parking(false);
                if !read.is_empty() {
                    io.replay = read;
                    continue;
                }
                if io.has_buffered() {
                    continue;
                }
            }
        }
        let idle_left = keepalive.saturating_sub(activity.idle_for());
        tokio::select! {
            r = io.tcp().readable() => {
                r?;
            }
            () = close.cancelled() => return close_parked(io).await,
            () = tokio::time::sleep(idle_left) => {
                tracing::debug!(idle_for = ?activity.idle_for(), "closing idle connection");
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
    activity: &Activity,
    keepalive: Duration,
    parked_at: &mut Option<u64>,
) -> Outcome
where
    S: Service<Request<Incoming>, Response = Response<ProxyBody>> + Unpin,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::Future: Send + 'static,
{
    let timer = tokio::time::sleep(PARK_AFTER.min(keepalive));
    tokio::pin!(timer);
    let mut idle_for = Duration::ZERO;
    let park = loop {
        tokio::select! {
            r = Pin::new(&mut *conn) => return Outcome::Ended(r.map_err(Into::into)),
            () = close.cancelled() => break false,
            () = timer.as_mut() => {
                idle_for = activity.idle_for();
                if idle_for >= keepalive {
                    tracing::debug!(?idle_for, "closing idle connection");
                    break false;
                }
                // hyper keeps a connection only once the request body was read to its end; one
                // it will close by itself must not be parked.
                if idle_for >= PARK_AFTER
                    && !activity.body_pending()
                    && *parked_at != Some(activity.stamp())
                {
                    break true;
                }
                let next = if idle_for < PARK_AFTER {
                    PARK_AFTER - idle_for
                } else {
                    keepalive - idle_for
                };
                timer.as_mut().reset(tokio::time::Instant::now() + next);
            }
        }
    };
    if park {
        tracing::debug!(%peer, ?idle_for, "parking idle connection");
    }
    activity.set_parking(park);
    Pin::new(&mut *conn).graceful_shutdown();
    let r = Pin::new(&mut *conn).await;
    if !park || r.is_err() {
        activity.set_parking(false);
        return Outcome::Ended(r.map_err(Into::into));
    }
    *parked_at = Some(activity.stamp());
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
