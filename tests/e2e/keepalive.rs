//! Idle HTTP/1 keep-alive connections are parked (hyper's buffers freed, only the TLS stream
//! kept) and pick up where they left off: bytes a client sent before the park are not lost, the
//! keep-alive timeout and shutdown still end them, and a connection with an unread request body
//! is never parked.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::common::*;

const LIMIT: Duration = Duration::from_secs(30);

/// Reads one HTTP/1 response with a Content-Length body: (status, body).
async fn response(tls: &mut TlsStream<TcpStream>) -> (u16, String) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                let status = head[9..12].parse().unwrap();
                let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).to_string();
                return (status, body);
            }
        }
        let n = tokio::time::timeout(LIMIT, tls.read(&mut chunk))
            .await
            .expect("response timed out")
            .unwrap();
        assert!(n > 0, "connection closed before a whole response");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Sends `GET path` on an open connection and reads the response.
async fn get(tls: &mut TlsStream<TcpStream>, path: &str) -> (u16, String) {
    send_get(tls, path).await;
    response(tls).await
}

async fn send_get(tls: &mut TlsStream<TcpStream>, path: &str) {
    tls.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
}

/// The server closed the connection (EOF or reset) within the limit.
async fn closed(tls: &mut TlsStream<TcpStream>) -> bool {
    let mut b = [0u8; 64];
    matches!(
        tokio::time::timeout(LIMIT, tls.read(&mut b)).await,
        Ok(Ok(0) | Err(_))
    )
}

fn port_of(tls: &TlsStream<TcpStream>) -> String {
    format!(":{} ", tls.get_ref().0.local_addr().unwrap().port())
}

/// A connection goes idle and is parked with half a request head already sent; the rest
/// arrives later and the request is served from the bytes hyper had read plus the new ones.
/// Parked again after that request, it serves the next one too: one TLS session throughout.
#[tokio::test]
async fn idle_connections_are_parked_and_resume() {
    let (logs, _guard) = LogCapture::start();
    let backend = Backend::start().await;
    let proxy = Proxy::start(backend.addr, "").await;
    let mut tls = tls_connect(proxy.addr, alice()).await.unwrap();
    let me = port_of(&tls);
    assert_eq!(
        get(&mut tls, "/one").await,
        (200, "backend saw /one".into())
    );

    tls.write_all(b"GET /two HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let line = logs
        .wait_for(&["idle connection parked", &me, "parks=1"])
        .await;
    assert!(line.contains("buffered=28"), "{line}");
    tls.write_all(b"X-Late: yes\r\n\r\n").await.unwrap();
    assert_eq!(response(&mut tls).await, (200, "backend saw /two".into()));

    logs.wait_for(&["idle connection parked", &me, "parks=2", "buffered=0"])
        .await;
    assert_eq!(
        get(&mut tls, "/three").await,
        (200, "backend saw /three".into())
    );

    let seen = backend.seen();
    assert_eq!(
        seen.iter().map(|s| s.target.as_str()).collect::<Vec<_>>(),
        ["/one", "/two", "/three"]
    );
    assert_eq!(seen[1].headers["x-late"], "yes");
    assert_eq!(
        logs.text().matches("TLS handshake complete").count(),
        1,
        "one handshake for the three requests"
    );
}

/// A parked connection is still closed by `keepalive_timeout` (not by the far longer head
/// timeout), and by a graceful shutdown, which does not wait for it.
#[tokio::test]
async fn parked_connections_close_when_idle_too_long_and_on_shutdown() {
    let (logs, _guard) = LogCapture::start();
    let backend = Backend::start().await;
    let proxy = Proxy::start(
        backend.addr,
        "[limits]\nheader_read_timeout = \"60s\"\nkeepalive_timeout = \"1s\"\n",
    )
    .await;
    let mut tls = tls_connect(proxy.addr, alice()).await.unwrap();
    let me = port_of(&tls);
    assert_eq!(get(&mut tls, "/a").await.0, 200);
    logs.wait_for(&["idle connection parked", &me]).await;
    assert!(
        closed(&mut tls).await,
        "parked connection outlived keepalive_timeout"
    );
    logs.wait_for(&["closing idle connection"]).await;

    let mut proxy = Proxy::start(backend.addr, "").await;
    let mut tls = tls_connect(proxy.addr, alice()).await.unwrap();
    let me = port_of(&tls);
    assert_eq!(get(&mut tls, "/b").await.0, 200);
    logs.wait_for(&["idle connection parked", &me]).await;
    let done = proxy.shutdown();
    assert!(
        closed(&mut tls).await,
        "parked connection kept open by shutdown"
    );
    tokio::time::timeout(LIMIT, done)
        .await
        .expect("shutdown waited on a parked connection")
        .unwrap();
}

/// hyper keeps a connection only once the request body has been read to its end; a connection
/// whose body is still being drained (a 413 here) must not be parked, or what follows the body
/// could be taken for the next request. Another connection that parks meanwhile shows that the
/// first one was idle long enough to have been.
#[tokio::test]
async fn a_connection_with_an_unread_body_is_not_parked() {
    let (logs, _guard) = LogCapture::start();
    let backend = Backend::start().await;
    let proxy = Proxy::start(backend.addr, "[limits]\nmax_body = \"100\"\n").await;
    let mut a = tls_connect(proxy.addr, alice()).await.unwrap();
    let a_port = port_of(&a);
    a.write_all(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n0123456789")
        .await
        .unwrap();
    assert_eq!(response(&mut a).await.0, 413);

    // Another connection parks twice: the first has been idle at least as long, twice over.
    let mut b = tls_connect(proxy.addr, alice()).await.unwrap();
    let b_port = port_of(&b);
    for (path, parks) in [("/b1", "parks=1"), ("/b2", "parks=2")] {
        assert_eq!(get(&mut b, path).await.0, 200);
        logs.wait_for(&["idle connection parked", &b_port, parks])
            .await;
    }
    assert!(
        !logs
            .text()
            .lines()
            .any(|l| l.contains("parking idle connection") && l.contains(&a_port)),
        "a connection with an unread body was parked"
    );

    // The rest of the body, then a second request on the same connection.
    a.write_all(&[b'z'; 990]).await.unwrap();
    assert_eq!(get(&mut a, "/a2").await, (200, "backend saw /a2".into()));
    assert!(backend.seen().iter().all(|s| s.target != "/up"));
}

/// A client that stops reading in the middle of a response (a slow-read attack, or a client
/// gone without a FIN) is dropped after `send_timeout`, rather than holding its connection and
/// a backend connection forever.
#[tokio::test]
async fn a_client_that_stops_reading_is_dropped_after_send_timeout() {
    let (logs, _guard) = LogCapture::start();
    let backend = Backend::start().await;
    let proxy = Proxy::start(backend.addr, "[limits]\nsend_timeout = \"500ms\"\n").await;
    let mut tls = tls_connect(proxy.addr, alice()).await.unwrap();
    let me = port_of(&tls);
    send_get(&mut tls, "/endless").await;
    // Not reading: the socket buffers fill, certgate's writes block, and then it gives up.
    logs.wait_for(&["the client stopped reading", &me]).await;
    let mut sink = vec![0u8; 1 << 20];
    let ended = tokio::time::timeout(LIMIT, async {
        loop {
            match tls.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the connection stayed open");
}
