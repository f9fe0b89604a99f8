//! Noticing that an HTTP/1.1 client hung up while its job waits, without reading its body.
//!
//! A waiting job's body is not read ahead (the backend gets it as the client sends it, when the
//! turn comes), so hyper does not read the connection and cannot see it close: an upload whose
//! client gave up would wait for its turn and then reach the backend broken off. HTTP/2 has a
//! stream reset for this, and a bodyless HTTP/1.1 request is watched by hyper itself. For the
//! rest, a [`Hangup`] holds a second descriptor of the connection's socket and waits on it for
//! the peer's FIN (epoll's `EPOLLRDHUP`), which data arriving does not trigger: nothing is read,
//! so hyper later reads every byte the client sent.

use std::os::fd::{AsFd, OwnedFd};

use tokio::io::Interest;

/// A watch on one client connection's socket for the client closing its side.
#[derive(Debug)]
pub struct Hangup(OwnedFd);

impl Hangup {
    /// A watch on `socket`, or `None` when the descriptor cannot be duplicated (out of file
    /// descriptors: the job then waits unwatched, as it would without this).
    pub fn of(socket: &impl AsFd) -> Option<Hangup> {
        socket.as_fd().try_clone_to_owned().ok().map(Hangup)
    }

    /// Resolves once the client has closed its side of the connection; pends for ever
    /// otherwise, and where the socket cannot be watched.
    pub async fn closed(&self) {
        // A descriptor of its own for each wait: registered with the runtime while the job
        // waits, and closed (unregistered) with it. Closing a duplicate leaves the connection.
        let watch = self
            .0
            .try_clone()
            .ok()
            .and_then(|fd| tokio::net::TcpStream::from_std(std::net::TcpStream::from(fd)).ok());
        let Some(watch) = watch else {
            return std::future::pending().await;
        };
        loop {
            let Ok(ready) = watch.ready(Interest::READABLE).await else {
                return std::future::pending().await;
            };
            if ready.is_read_closed() {
                return;
            }
            // Data from the client is hyper's to read: the readiness is cleared without
            // reading, so only the next edge (more data, or the FIN) wakes this again.
            let _ = watch.try_io(Interest::READABLE, || {
                Err::<(), _>(std::io::ErrorKind::WouldBlock.into())
            });
        }
    }
}
