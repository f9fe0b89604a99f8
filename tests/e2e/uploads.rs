//! Request bodies and the backend's clock: a client's stalled upload gets 408 after
//! `[limits] body_timeout` and never counts against a server (one client cannot take a whole
//! group out of service), `response_timeout` runs from the end of the request body (a slow but
//! steady upload is not a backend's delay), and what a server does itself — reading a body and
//! never answering, or not taking the body at all — is still its 504 and its failure.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::*;

const LIMIT: Duration = Duration::from_secs(30);

fn server(addr: SocketAddr) -> String {
    format!("{{ url = \"http://{addr}\" }}")
}

/// Two servers, round robin, each down after two failures; `response_timeout` 500 ms and
/// `body_timeout` 1 s; the admin listener for `/readyz`.
fn pair_config(a: SocketAddr, b: SocketAddr, max_fails: u32) -> String {
    test_config_servers(
        &[server(a), server(b)],
        &format!(
            "balance = \"round_robin\"\nresponse_timeout = \"500ms\"\nmax_fails = {max_fails}\nfail_timeout = \"60s\"\n[upstream.health]\nenabled = false\n"
        ),
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n[limits]\nbody_timeout = \"1s\"\n",
    )
}

/// Sends a request head announcing a 100-byte body and never sends the body; returns the
/// response certgate sends, read until it closes the connection.
async fn stall(addr: SocketAddr) -> String {
    let mut tls = tls_connect(addr, alice()).await.expect("TLS connect");
    tls.write_all(b"POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(LIMIT, tls.read_to_end(&mut got))
        .await
        .expect("an answer, then the connection closed")
        .ok();
    String::from_utf8_lossy(&got).into_owned()
}

/// Clients that send a head with `Content-Length` and then nothing get 408
/// `request_timeout` after `body_timeout` (not 504 after `response_timeout`), logged as the
/// client's refusal; eight of them, four per server, leave both servers healthy: no "upstream
/// server is down", `/readyz` 200, and other clients are served by both.
#[tokio::test]
async fn stalled_uploads_get_408_and_take_no_server_out() {
    let (logs, _guard) = LogCapture::start();
    let a = Backend::start().await;
    let b = Backend::start().await;
    let proxy = Proxy::start_with(&pair_config(a.addr, b.addr, 2)).await;
    let stalls: Vec<_> = (0..8).map(|_| tokio::spawn(stall(proxy.addr))).collect();
    for s in stalls {
        let got = s.await.unwrap();
        assert!(got.starts_with("HTTP/1.1 408"), "{got}");
        assert!(got.contains("\"error\":\"request_timeout\""), "{got}");
    }
    let (status, text) = admin_get(proxy.admin.unwrap(), "/readyz").await;
    assert_eq!(status, 200, "{text}");
    for _ in 0..4 {
        assert_eq!(get_once(proxy.addr, alice(), "/ok").await.status, 200);
    }
    assert!(a.seen().iter().any(|s| s.target == "/ok"));
    assert!(b.seen().iter().any(|s| s.target == "/ok"));
    let text = logs.text();
    assert!(!text.contains("upstream server is down"), "{text}");
    assert!(
        text.contains("body_timeout"),
        "the refusal names its rule: {text}"
    );
}

/// Posts `len` bytes to `/never` (a path both servers take and never answer) through a proxy
/// in front of two servers with `max_fails = 1`: the status certgate answers, once the first
/// server was reported down for it. `what` says what a timeout means.
async fn never_answered(len: usize, what: &str) -> u16 {
    let (logs, _guard) = LogCapture::start();
    let a = Backend::start().await;
    let b = Backend::start().await;
    let proxy = Proxy::start_with(&pair_config(a.addr, b.addr, 1)).await;
    let mut send = h1(proxy.addr, alice()).await;
    let req = http::Request::post("/never")
        .header("host", "localhost")
        .body(full(vec![b'x'; len]))
        .unwrap();
    let resp = tokio::time::timeout(LIMIT, send.send_request(req))
        .await
        .expect(what)
        .unwrap();
    let status = read(resp).await.status.as_u16();
    logs.wait_for(&["upstream server is down", &a.addr.to_string()])
        .await;
    status
}

/// A server that reads the whole body and never answers is the server's fault: 504 after
/// `response_timeout` from the end of the body, counted, and with `max_fails = 1` it is down.
#[tokio::test]
async fn a_server_that_reads_the_body_and_never_answers_is_504_and_counted() {
    assert_eq!(never_answered(100, "answered").await, 504);
}

/// A server that stops taking the request body (it never reads it) cannot hold the request
/// for ever: `response_timeout` after the last chunk it took, 504, counted against it.
#[tokio::test]
async fn a_server_that_takes_nothing_of_the_body_is_504_and_counted() {
    // Far more than the sockets between certgate and the backend hold.
    assert_eq!(
        never_answered(32 << 20, "answered, not held for ever").await,
        504
    );
}

/// The connection to a server that takes nothing of the body is given up at its 504: hyper
/// would otherwise try for ever to flush the body into it, holding the client's body, so the
/// client's upload (and its connection to certgate) was never let go. The client's connection
/// ends once the 504 is answered.
#[tokio::test]
async fn a_server_that_takes_nothing_of_the_body_does_not_hold_the_client() {
    let a = Backend::start().await;
    let b = Backend::start().await;
    let proxy = Proxy::start_with(&pair_config(a.addr, b.addr, 1)).await;
    let tls = tls_connect(proxy.addr, alice()).await.expect("TLS connect");
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let req = http::Request::post("/never")
        .header("host", "localhost")
        .body(full(vec![b'x'; 32 << 20]))
        .unwrap();
    let resp = tokio::time::timeout(LIMIT, send.send_request(req))
        .await
        .expect("answered")
        .unwrap();
    assert_eq!(resp.status(), 504);
    drop((resp, send));
    tokio::time::timeout(Duration::from_secs(10), conn)
        .await
        .expect("the client's connection let go, not held by the backend's")
        .unwrap()
        .ok();
}

/// A client that writes its whole body before it reads (Python's `http.client`, `requests`)
/// reads the 504 of a server that takes nothing of the body: the rest of the body is read and
/// thrown away, as a refused upload's is, instead of the connection being reset under the
/// client's writes.
#[tokio::test]
async fn a_client_writing_its_whole_body_reads_the_504() {
    let a = Backend::start().await;
    let b = Backend::start().await;
    let proxy = Proxy::start_with(&pair_config(a.addr, b.addr, 1)).await;
    let got = upload_whole_then_read(proxy.addr, "/never", "answered").await;
    assert!(got.starts_with("HTTP/1.1 504"), "{got}");
}

/// A client as Python's `http.client` is one: it writes a 32 MiB body whole over HTTP/1.1 to
/// `path`, then reads the answer to the end; what it read, or a panic saying `what` when that
/// takes longer than [`LIMIT`].
async fn upload_whole_then_read(proxy: SocketAddr, path: &str, what: &str) -> String {
    let mut tls = tls_connect(proxy, alice()).await.expect("TLS connect");
    let len = 32 << 20;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
    );
    let mut got = Vec::new();
    tokio::time::timeout(LIMIT, async {
        tls.write_all(head.as_bytes()).await?;
        tls.write_all(&vec![b'x'; len]).await?;
        tls.flush().await?;
        tls.read_to_end(&mut got).await
    })
    .await
    .expect(what)
    .ok();
    String::from_utf8_lossy(&got).into_owned()
}

/// A server that answers before it has read the body (here `403` at once) and then reads no
/// more of it: once its answer is sent the connection to it is closed and the rest of the
/// client's body read and thrown away, so a client that writes its whole body before reading
/// gets the answer. The connection was left flushing the body into the server for ever, and
/// the client's upload with it.
#[tokio::test]
async fn a_server_answering_before_the_body_does_not_hold_the_client() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                if tcp.read(&mut byte).await.unwrap_or(0) == 0 {
                    break;
                }
                head.push(byte[0]);
            }
            tcp.write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 4\r\n\r\nnope")
                .await
                .unwrap();
            // Open, never read again.
            held.push(tcp);
        }
    });
    let proxy = Proxy::start_with(&test_config(backend, "", "")).await;
    let got = upload_whole_then_read(
        proxy.addr,
        "/upload",
        "the client let go, not held by the server's connection",
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 403"), "{got}");
    assert!(got.ends_with("nope"), "{got}");
    server.abort();
}

/// A slow but steady upload that takes longer in all than `response_timeout` (eight chunks
/// 200 ms apart against 500 ms) reaches the backend whole and gets its 200: the response is
/// timed from the end of the body, and no gap comes near `body_timeout`.
#[tokio::test]
async fn a_slow_steady_upload_longer_than_response_timeout_succeeds() {
    let a = Backend::start().await;
    let b = Backend::start().await;
    let proxy = Proxy::start_with(&pair_config(a.addr, b.addr, 1)).await;
    let mut send = h1(proxy.addr, alice()).await;
    let (mut tx, body) = http_body_util::channel::Channel::<Bytes, BoxError>::new(1);
    let req = http::Request::post("/upload")
        .header("host", "localhost")
        .header("content-length", "8000")
        .body(body.boxed())
        .unwrap();
    let uploader = tokio::spawn(async move {
        for _ in 0..8 {
            // The client's pace is what is under test, not a wait for something to happen.
            tokio::time::sleep(Duration::from_millis(200)).await;
            tx.send(Frame::data(Bytes::from(vec![b'u'; 1000])))
                .await
                .unwrap();
        }
    });
    let started = std::time::Instant::now();
    let resp = tokio::time::timeout(LIMIT, send.send_request(req))
        .await
        .expect("answered")
        .unwrap();
    let got = read(resp).await;
    assert_eq!(got.status, 200, "{}", got.body);
    assert_eq!(got.body, "8000");
    assert!(started.elapsed() >= Duration::from_millis(1500));
    uploader.await.unwrap();
}

/// A client that goes away in the middle of its upload is its own failure, not the backend's:
/// no "backend request failed" (nor a protocol failure counted for the server), the request is
/// logged as refused (400), and the server stays in service.
#[tokio::test]
async fn a_client_leaving_mid_upload_is_not_the_servers_failure() {
    let (logs, _guard) = LogCapture::start();
    let a = Backend::start().await;
    let b = Backend::start().await;
    let proxy = Proxy::start_with(&pair_config(a.addr, b.addr, 1)).await;
    // Round robin: the first goes to a, the second to b.
    for server in [&a, &b] {
        let mut tls = tls_connect(proxy.addr, alice()).await.expect("TLS connect");
        tls.write_all(
            b"POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100000\r\n\r\n",
        )
        .await
        .unwrap();
        tls.write_all(&[b'x'; 1000]).await.unwrap();
        tls.flush().await.unwrap();
        // The backend has the upload's first bytes: the request is under way.
        server.arrived().await;
        drop(tls);
    }
    logs.wait_count("status=400", 2).await;
    let text = logs.text();
    assert!(!text.contains("backend request failed"), "{text}");
    assert!(!text.contains("upstream server is down"), "{text}");
    let (status, _) = admin_get(proxy.admin.unwrap(), "/readyz").await;
    assert_eq!(status, 200);
}

/// Over HTTP/2 too: a stream whose head announces a body that never comes gets 408
/// `request_timeout` after `body_timeout`, and the connection's other streams are served.
#[tokio::test]
async fn a_stalled_http2_upload_gets_408() {
    let a = Backend::start().await;
    let b = Backend::start().await;
    let proxy = Proxy::start_with(&pair_config(a.addr, b.addr, 1)).await;
    let mut send = h2(proxy.addr, client_config(Some(&test_pki().alice), &["h2"])).await;
    // The sender is kept and never used: the body never comes.
    let (_tx, body) = http_body_util::channel::Channel::<Bytes, BoxError>::new(1);
    let req = http::Request::post(format!("https://localhost:{}/upload", proxy.addr.port()))
        .header("content-length", "100")
        .body(body.boxed())
        .unwrap();
    let resp = tokio::time::timeout(LIMIT, send.send_request(req))
        .await
        .expect("answered")
        .unwrap();
    let got = read(resp).await;
    assert_eq!(got.status, 408, "{}", got.body);
    assert_eq!(got.json()["error"], "request_timeout");
    send.ready().await.unwrap();
    let req = http::Request::get(format!("https://localhost:{}/ok", proxy.addr.port()))
        .body(empty())
        .unwrap();
    assert_eq!(
        read(send.send_request(req).await.unwrap()).await.status,
        200
    );
}
