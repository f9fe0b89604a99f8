//! Bigger reads from a client that is sending a lot.
//!
//! rustls reads the socket one TLS record at a time (at most ~16 KiB per `recv`). During an
//! upload the socket holds far more than that, and every `recv` is a system call that also
//! sends a window update and wakes the sender. [`ReadAhead`] notices when a read filled all that
//! was asked for (more is then almost certainly waiting) and switches to reads of
//! [`BULK_READ`], handing the bytes to rustls from memory; as soon as the socket runs dry it
//! switches back and frees the buffer. A connection that is not streaming a body pays nothing:
//! no buffer, no copy.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// How much one read takes while a client streams a body.
pub const BULK_READ: usize = 128 * 1024;

/// A client's TCP stream with reads coalesced while it streams (see the module docs).
#[derive(Debug)]
pub struct ReadAhead {
    tcp: TcpStream,
    /// Bytes read but not yet handed out; no allocation outside bulk mode.
    buf: Vec<u8>,
    pos: usize,
    bulk: bool,
}

impl ReadAhead {
    /// Wraps `tcp`, in direct mode.
    pub fn new(tcp: TcpStream) -> ReadAhead {
        ReadAhead {
            tcp,
            buf: Vec::new(),
            pos: 0,
            bulk: false,
        }
    }

    /// The socket.
    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    /// Whether bytes are waiting here rather than in the socket.
    pub fn has_buffered(&self) -> bool {
        self.pos < self.buf.len()
    }
}

impl AsyncRead for ReadAhead {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.has_buffered() {
            let n = out.remaining().min(this.buf.len() - this.pos);
            out.put_slice(&this.buf[this.pos..this.pos + n]);
            this.pos += n;
            if this.pos == this.buf.len() {
                this.pos = 0;
                this.buf.clear();
                if !this.bulk {
                    this.buf = Vec::new();
                }
            }
            return Poll::Ready(Ok(()));
        }
        let want = out.remaining();
        if !this.bulk || want >= BULK_READ {
            let before = out.filled().len();
            ready!(Pin::new(&mut this.tcp).poll_read(cx, out))?;
            // A read that filled everything asked for: the socket probably holds more.
            this.bulk = want > 0 && out.filled().len() - before == want;
            return Poll::Ready(Ok(()));
        }
        this.buf.reserve_exact(BULK_READ);
        let mut rb = ReadBuf::uninit(&mut this.buf.spare_capacity_mut()[..BULK_READ]);
        match Pin::new(&mut this.tcp).poll_read(cx, &mut rb) {
            Poll::Pending => {
                // Dry: back to direct reads, and the buffer goes.
                this.bulk = false;
                this.buf = Vec::new();
                return Poll::Pending;
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Ready(Ok(())) => {}
        }
        let n = rb.filled().len();
        // SAFETY: `rb` was made over the spare capacity, and the first `n` bytes of it were
        // initialized by the read.
        #[allow(
            unsafe_code,
            reason = "reading into spare capacity without zeroing it first is the point of this buffer"
        )]
        unsafe {
            this.buf.set_len(n)
        };
        this.bulk = n == BULK_READ;
        if n == 0 {
            this.buf = Vec::new();
            return Poll::Ready(Ok(()));
        }
        let take = want.min(n);
        out.put_slice(&this.buf[..take]);
        this.pos = take;
        if take == n {
            this.pos = 0;
            this.buf.clear();
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for ReadAhead {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, ReadAhead) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, ReadAhead::new(server))
    }

    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 % 251) as u8).collect()
    }

    /// Reads of the size rustls makes get every byte in order, through both modes.
    #[tokio::test]
    async fn hands_out_every_byte_in_order() {
        let (mut client, mut ra) = pair().await;
        let data = pattern(3 << 20);
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await.unwrap();
            client.shutdown().await.unwrap();
        });
        let mut got = Vec::with_capacity(data.len());
        let mut buf = vec![0u8; 18 * 1024];
        loop {
            let want = 1 + got.len() % buf.len();
            let n = ra.read(&mut buf[..want]).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        writer.await.unwrap();
        assert!(got == data, "bytes lost or reordered");
    }

    /// A read that fills the request switches to bulk reads; once the socket is dry, the
    /// buffer is gone.
    #[tokio::test]
    async fn bulk_while_streaming_and_no_buffer_when_dry() {
        let (mut client, mut ra) = pair().await;
        // Small enough for loopback's initial window: all of it is queued once this returns.
        client.write_all(&pattern(48 * 1024)).await.unwrap();
        let mut buf = vec![0u8; 16 * 1024];
        assert_eq!(ra.read(&mut buf).await.unwrap(), buf.len());
        assert!(ra.bulk, "a full read should switch to bulk reads");
        assert_eq!(ra.read(&mut buf).await.unwrap(), buf.len());
        assert!(
            ra.has_buffered(),
            "a bulk read should take more than was asked"
        );
        assert!(ra.buf.capacity() >= BULK_READ);
        assert_eq!(ra.read(&mut buf).await.unwrap(), buf.len());
        // Dry now: one poll finds nothing, and the buffer is freed.
        let mut one = [0u8; 1];
        let mut rb = ReadBuf::new(&mut one);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(Pin::new(&mut ra).poll_read(&mut cx, &mut rb).is_pending());
        assert!(
            !ra.bulk && ra.buf.capacity() == 0,
            "the buffer outlived the stream"
        );
        // And a short read afterwards neither switches nor allocates.
        client.write_all(b"hi").await.unwrap();
        assert_eq!(ra.read(&mut buf).await.unwrap(), 2);
        assert!(!ra.bulk && ra.buf.capacity() == 0);
    }
}
