//! The WebUI keeps working through the proxy: streaming both ways, SSE event by event,
//! WebSockets, pooled keep-alive, HTTP/1.0 backends; and backend failures become clear JSON
//! errors instead of hangs.

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::BodyExt;
use hyper::body::Frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::backend::{dead_addr, raw_backend, raw_backend_seq};
use crate::common::*;

const LIMIT: Duration = Duration::from_secs(20);

/// `text/event-stream` reaches the client event by event: the first event arrives while the
/// backend is still holding the second.
#[tokio::test]
async fn sse_events_arrive_one_by_one() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(backend.addr, "").await;
    let mut send = h1(proxy.addr, alice()).await;
    let req = Request::get("/sse")
        .header("host", "localhost")
        .body(empty())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.into_body();
    let first = tokio::time::timeout(LIMIT, body.frame())
        .await
        .expect("first event was held back");
    assert_eq!(
        first.unwrap().unwrap().into_data().unwrap(),
        "data: one\n\n"
    );
    backend.release();
    let second = tokio::time::timeout(LIMIT, body.frame()).await.unwrap();
    assert_eq!(
        second.unwrap().unwrap().into_data().unwrap(),
        "data: two\n\n"
    );
}

/// A 50 MiB upload is streamed: the backend has its first bytes before the client has sent the
/// rest, and receives every byte.
#[tokio::test]
async fn upload_is_streamed_not_buffered() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(backend.addr, "").await;
    let (mut tx, body) = http_body_util::channel::Channel::<Bytes, BoxError>::new(2);
    let mut send = h1(proxy.addr, alice()).await;
    let req = Request::post("/upload")
        .header("host", "localhost")
        .header("content-length", (50usize << 20).to_string())
        .body(body.boxed())
        .unwrap();
    let resp = tokio::spawn(async move { send.send_request(req).await });
    let chunk = Bytes::from(vec![7u8; 1 << 20]);
    tx.send(Frame::data(chunk.clone())).await.unwrap();
    // Nothing more is sent until the backend has the first megabyte.
    backend.arrived().await;
    for _ in 1..50 {
        tx.send(Frame::data(chunk.clone())).await.unwrap();
    }
    drop(tx);
    let got = read(
        tokio::time::timeout(LIMIT, resp)
            .await
            .unwrap()
            .unwrap()
            .unwrap(),
    )
    .await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body, (50usize << 20).to_string());
}

/// HTTP/2 uploads and downloads are forwarded as HTTP/1.1.
#[tokio::test]
async fn http2_client_upload_and_download() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(backend.addr, "").await;
    let mut send = h2(proxy.addr, client_config(Some(&test_pki().alice), &["h2"])).await;
    let url = format!("https://localhost:{}", proxy.addr.port());
    let resp = send
        .send_request(
            Request::post(format!("{url}/upload"))
                .body(full(vec![1u8; 300_000]))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(read(resp).await.body, "300000");
    let resp = send
        .send_request(Request::get(format!("{url}/big")).body(empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(read(resp).await.body.len(), 1 << 20);
    assert!(
        backend
            .seen()
            .iter()
            .all(|s| s.version == http::Version::HTTP_11)
    );
}

/// A WebSocket upgrade is passed through and bytes flow both ways.
#[tokio::test]
async fn websocket_upgrade_passes_through() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(backend.addr, "").await;
    let (headers, mut io) = open_websocket(proxy.addr).await;
    assert_eq!(headers["upgrade"], "websocket");
    assert_eq!(
        headers["sec-websocket-accept"],
        "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    );
    // A masked text frame "hello", as a browser sends it; the backend echoes raw bytes.
    let frame = [
        0x81,
        0x85,
        1,
        2,
        3,
        4,
        b'h' ^ 1,
        b'e' ^ 2,
        b'l' ^ 3,
        b'l' ^ 4,
        b'o' ^ 1,
    ];
    io.write_all(&frame).await.unwrap();
    let mut back = [0u8; 11];
    tokio::time::timeout(LIMIT, io.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back, frame);
    let seen = backend.only();
    assert_eq!(seen.headers["upgrade"], "websocket");
    assert_eq!(seen.headers["x-ssl-client-verify"], "SUCCESS");
}

/// Sequential requests reuse one pooled backend connection; hop-by-hop response headers from the
/// backend are not passed on.
#[tokio::test]
async fn backend_connections_are_pooled() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(backend.addr, "").await;
    for _ in 0..5 {
        let got = get_once(proxy.addr, alice(), "/pooled").await;
        assert_eq!(got.status, 200);
        assert!(!got.headers.contains_key("keep-alive"));
        assert_eq!(got.headers["x-backend"], "1");
    }
    assert_eq!(backend.connections(), 1);
}

/// DeOldify's Flask server answers HTTP/1.0 and closes: the response arrives whole.
#[tokio::test]
async fn http10_backend_with_close_works() {
    let addr =
        raw_backend(b"HTTP/1.0 200 OK\r\nContent-Type: image/png\r\n\r\nPNGDATA-until-close").await;
    let proxy = Proxy::start(addr, "").await;
    let mut send = h1(proxy.addr, alice()).await;
    for _ in 0..2 {
        let got = get1(&mut send, "/colorize", &[]).await;
        assert_eq!(got.status, 200);
        assert_eq!(got.body, "PNGDATA-until-close");
        assert_eq!(got.headers["content-type"], "image/png");
    }
}

/// Backend down: 502 JSON saying so.
#[tokio::test]
async fn backend_down_is_502_json() {
    let proxy = Proxy::start(dead_addr().await, "").await;
    let got = get_once(proxy.addr, alice(), "/").await;
    assert_eq!(got.status, 502);
    assert_eq!(got.headers["content-type"], "application/json");
    let json = got.json();
    assert_eq!(json["error"], "bad_gateway");
    assert!(
        json["message"].as_str().unwrap().contains("cannot connect"),
        "{json}"
    );
}

/// Backend too slow: 504 JSON after `response_timeout`.
#[tokio::test]
async fn backend_too_slow_is_504_json() {
    let backend = Backend::start().await;
    let proxy = Proxy::start_upstream(backend.addr, "response_timeout = \"300ms\"").await;
    let got = tokio::time::timeout(LIMIT, get_once(proxy.addr, alice(), "/never"))
        .await
        .unwrap();
    assert_eq!(got.status, 504);
    assert_eq!(got.json()["error"], "gateway_timeout");
}

/// A backend that sends garbage instead of HTTP: 502.
#[tokio::test]
async fn malformed_backend_response_is_502() {
    let addr = raw_backend(b"SMTP ready\r\n\r\n").await;
    let proxy = Proxy::start(addr, "").await;
    let got = get_once(proxy.addr, alice(), "/").await;
    assert_eq!(got.status, 502);
    assert_eq!(got.json()["error"], "bad_gateway");
}

/// The backend dies mid-response: the client's body ends in an error (not a hang), and the next
/// request works (the pool dropped the broken connection).
#[tokio::test]
async fn backend_dying_mid_response_is_an_error_not_a_hang() {
    let addr = raw_backend_seq(&[
        b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nonly-this",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    ])
    .await;
    let proxy = Proxy::start(addr, "").await;
    let mut send = h1(proxy.addr, alice()).await;
    let req = Request::get("/")
        .header("host", "localhost")
        .body(empty())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = tokio::time::timeout(LIMIT, resp.into_body().collect())
        .await
        .expect("client hangs");
    assert!(body.is_err(), "truncated body was reported as complete");
    let got = get_once(proxy.addr, alice(), "/again").await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body, "ok");
}

/// A backend that goes silent inside a body longer than `idle_timeout` ends the response with an
/// error; one that keeps talking is never cut off (no total limit).
#[tokio::test]
async fn idle_backend_body_is_cut_off() {
    let backend = Backend::start().await;
    let proxy = Proxy::start_upstream(backend.addr, "idle_timeout = \"300ms\"").await;
    let mut send = h1(proxy.addr, alice()).await;
    let req = Request::get("/sse")
        .header("host", "localhost")
        .body(empty())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let body = tokio::time::timeout(LIMIT, resp.into_body().collect())
        .await
        .expect("hang");
    assert!(body.is_err());
}

/// Graceful shutdown waits for an open WebSocket like for a request in flight: the tunnel keeps
/// working after shutdown has begun, and shutdown completes once the client closes it.
#[tokio::test]
async fn shutdown_waits_for_open_websockets() {
    let backend = Backend::start().await;
    let mut proxy = Proxy::start(backend.addr, "").await;
    let (_, mut io) = open_websocket(proxy.addr).await;
    let stopping = proxy.shutdown();
    // New connections are refused, the open tunnel still carries data...
    let mut buf = [0u8; 5];
    io.write_all(b"still").await.unwrap();
    tokio::time::timeout(LIMIT, io.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"still");
    assert!(
        !stopping.is_finished(),
        "shutdown did not wait for the WebSocket"
    );
    // ...and shutdown ends when the client closes it.
    io.shutdown().await.unwrap();
    drop(io);
    tokio::time::timeout(LIMIT, stopping)
        .await
        .expect("shutdown hangs")
        .unwrap();
}

/// A backend that holds every response until `parties` requests are waiting, so each round of
/// `parties` concurrent requests needs that many backend connections at once; it counts the
/// connections opened and those closed.
struct BarrierBackend {
    addr: std::net::SocketAddr,
    opened: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    closed: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    closes: std::sync::Arc<tokio::sync::Notify>,
}

impl BarrierBackend {
    async fn start(parties: usize) -> BarrierBackend {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let opened = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicUsize::new(0));
        let closes = Arc::new(tokio::sync::Notify::new());
        let barrier = Arc::new(tokio::sync::Barrier::new(parties));
        let (o, c, n) = (opened.clone(), closed.clone(), closes.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                o.fetch_add(1, Ordering::SeqCst);
                let (barrier, c, n) = (barrier.clone(), c.clone(), n.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |_req| {
                        let barrier = barrier.clone();
                        async move {
                            barrier.wait().await;
                            Ok::<_, std::convert::Infallible>(http::Response::new(
                                http_body_util::Full::new(Bytes::from_static(b"ok")),
                            ))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                        .await;
                    c.fetch_add(1, Ordering::SeqCst);
                    n.notify_one();
                });
            }
        });
        BarrierBackend {
            addr,
            opened,
            closed,
            closes,
        }
    }

    fn opened(&self) -> usize {
        self.opened.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Waits up to `limit` until `n` connections have been closed (by the proxy: this backend
    /// never closes).
    async fn wait_closed(&self, n: usize, limit: Duration) {
        tokio::time::timeout(limit, async {
            while self.closed.load(std::sync::atomic::Ordering::SeqCst) < n {
                self.closes.notified().await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{n} backend connections were not closed"));
    }
}

/// Rounds of 6 concurrent requests against `max_idle_connections = 2`: the pool keeps the 6
/// connections a steady load needs (nginx's `keepalive 2` would close 4 after every round and
/// open them again: 22 connections over 5 rounds), and once the load is over the idle ones
/// close with the idle timeout.
#[tokio::test]
async fn pool_keeps_what_a_steady_burst_needs() {
    const PARALLEL: usize = 6;
    let backend = BarrierBackend::start(PARALLEL).await;
    let proxy = Proxy::start_upstream(backend.addr, "max_idle_connections = 2").await;
    let send = h2(proxy.addr, client_config(Some(&test_pki().alice), &["h2"])).await;
    for round in 0..5 {
        let mut all = tokio::task::JoinSet::new();
        for i in 0..PARALLEL {
            let mut send = send.clone();
            all.spawn(async move {
                let req = Request::get(format!("/r{round}/{i}"))
                    .header("host", "localhost")
                    .body(empty())
                    .unwrap();
                read(send.send_request(req).await.unwrap()).await.status
            });
        }
        let statuses = tokio::time::timeout(LIMIT, all.join_all())
            .await
            .expect("a round did not finish");
        assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    }
    assert_eq!(
        backend.opened(),
        PARALLEL,
        "connections were closed and opened again"
    );
    backend.wait_closed(PARALLEL, LIMIT).await;
}

/// `max_idle_connections = 0` keeps nothing: every request gets its own connection, closed
/// after its response — at once, not after the 4 s an idle connection may wait.
#[tokio::test]
async fn pool_of_zero_keeps_no_connection() {
    let backend = BarrierBackend::start(1).await;
    let proxy = Proxy::start_upstream(backend.addr, "max_idle_connections = 0").await;
    let mut send = h1(proxy.addr, alice()).await;
    for n in 1..=3 {
        assert_eq!(get1(&mut send, "/once", &[]).await.status, 200);
        backend.wait_closed(n, Duration::from_secs(2)).await;
        assert_eq!(backend.opened(), n);
    }
}
