//! WebSocket tunnels: once client and backend have both switched protocols, bytes are copied
//! both ways until either side closes. Tunnels run on the daemon's tracker, so a graceful
//! shutdown waits for open WebSockets as it does for requests in flight.

use std::net::SocketAddr;

use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio_util::task::TaskTracker;

/// Joins the client's upgraded connection to the backend's once both are ready.
pub(super) fn tunnel(
    client: OnUpgrade,
    mut backend: http::Response<Incoming>,
    peer: SocketAddr,
    tunnels: &TaskTracker,
    permit: Option<crate::queue::Permit>,
) {
    let backend = hyper::upgrade::on(&mut backend);
    tunnels.spawn(async move {
        // On a queued route the tunnel is the job: its slot frees when the tunnel closes.
        let _permit = permit;
        match tokio::try_join!(client, backend) {
            Ok((client, backend)) => {
                let mut client = TokioIo::new(client);
                let mut backend = TokioIo::new(backend);
                if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut backend).await {
                    tracing::debug!(%peer, error = %e, "websocket tunnel ended");
                }
            }
            Err(e) => tracing::warn!(%peer, error = %e, "websocket upgrade failed"),
        }
    });
}
