//! A real backend on 127.0.0.1:0 that records every request that reaches it. Special paths:
//! `/sse` (one event, then a second after `release()`), `/slow` (answers after `release()`),
//! `/never` (never answers), `/upload` (counts a streamed body; `arrived()` fires on its first
//! bytes), `/ws` (WebSocket-style upgrade, then echoes bytes), `/big` (1 MiB), `/framed` (sets
//! its own `X-Frame-Options`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Notify;

type Body = BoxBody<Bytes, Infallible>;

/// One request as the backend saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// Path and query, exactly as received.
    pub target: String,
    pub version: Version,
    pub headers: HeaderMap,
    pub conn: usize,
}

#[derive(Default)]
struct Shared {
    seen: Mutex<Vec<Seen>>,
    release: Notify,
    arrived: Notify,
    connections: AtomicUsize,
    uploaded: AtomicUsize,
    /// The accept loop and every connection, so `stop` can end them all like a killed process.
    tasks: Mutex<Vec<tokio::task::AbortHandle>>,
}

#[derive(Clone)]
pub struct Backend {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Backend {
    pub async fn start() -> Backend {
        Backend::start_on("127.0.0.1:0".parse().unwrap()).await
    }

    /// A backend on `addr` (a port a stopped backend used: a process that comes back).
    pub async fn start_on(addr: SocketAddr) -> Backend {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let conn = s.connections.fetch_add(1, Ordering::SeqCst);
                let s2 = s.clone();
                let task = tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let s = s2.clone();
                        async move { Ok::<_, Infallible>(serve(s, conn, req).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(tcp), svc)
                        .await;
                });
                s.tasks.lock().unwrap().push(task.abort_handle());
            }
        });
        shared.tasks.lock().unwrap().push(accept.abort_handle());
        Backend { addr, shared }
    }

    /// Ends the listener and every open connection at once, like a killed process: the port
    /// refuses connections afterwards.
    pub async fn stop(&self) {
        let tasks: Vec<_> = self.shared.tasks.lock().unwrap().drain(..).collect();
        for t in &tasks {
            t.abort();
        }
        // Until the listener is really closed, a connect could still succeed.
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(self.addr).await.is_err() {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("backend {} did not stop", self.addr);
    }

    /// Every request seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().unwrap().clone()
    }

    /// The only request seen; panics unless exactly one arrived.
    pub fn only(&self) -> Seen {
        let seen = self.seen();
        assert_eq!(seen.len(), 1, "expected exactly one request, got {seen:#?}");
        seen.into_iter().next().unwrap()
    }

    /// How many TCP connections the proxy opened to it.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Body bytes `/upload` received in all, including bodies cut off midway.
    pub fn uploaded(&self) -> usize {
        self.shared.uploaded.load(Ordering::SeqCst)
    }

    /// Lets one waiting `/sse` or `/slow` go on.
    pub fn release(&self) {
        self.shared.release.notify_one();
    }

    /// Waits until `/slow` or `/upload` has started.
    pub async fn arrived(&self) {
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            self.shared.arrived.notified(),
        )
        .await
        .expect("backend request did not arrive");
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()).boxed());
    *r.status_mut() = status;
    r
}

async fn serve(s: Arc<Shared>, conn: usize, mut req: Request<Incoming>) -> Response<Body> {
    let target = req
        .uri()
        .path_and_query()
        .map_or("/".to_string(), |p| p.to_string());
    s.seen.lock().unwrap().push(Seen {
        method: req.method().to_string(),
        target: target.clone(),
        version: req.version(),
        headers: req.headers().clone(),
        conn,
    });
    match req.uri().path() {
        "/sse" => {
            let (mut tx, body) = http_body_util::channel::Channel::<Bytes, Infallible>::new(4);
            tokio::spawn(async move {
                let _ = tx
                    .send(Frame::data(Bytes::from_static(b"data: one\n\n")))
                    .await;
                s.release.notified().await;
                let _ = tx
                    .send(Frame::data(Bytes::from_static(b"data: two\n\n")))
                    .await;
            });
            let mut r = Response::new(body.boxed());
            r.headers_mut()
                .insert("content-type", "text/event-stream".parse().unwrap());
            r
        }
        "/slow" => {
            s.arrived.notify_one();
            s.release.notified().await;
            text(StatusCode::OK, "slow done")
        }
        "/never" => std::future::pending().await,
        "/upload" => {
            let mut body = req.into_body();
            let mut total = 0usize;
            let mut first = true;
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else {
                    return text(StatusCode::BAD_REQUEST, "body error");
                };
                if let Some(d) = frame.data_ref() {
                    total += d.len();
                    s.uploaded.fetch_add(d.len(), Ordering::SeqCst);
                    if first && total > 0 {
                        first = false;
                        s.arrived.notify_one();
                    }
                }
            }
            text(StatusCode::OK, total.to_string())
        }
        "/big" => text(StatusCode::OK, vec![b'x'; 1 << 20]),
        "/endless" => {
            // Streams until the reader goes away.
            let (mut tx, body) = http_body_util::channel::Channel::<Bytes, Infallible>::new(4);
            tokio::spawn(async move {
                let chunk = Bytes::from(vec![b'e'; 64 * 1024]);
                while tx.send(Frame::data(chunk.clone())).await.is_ok() {}
            });
            Response::new(body.boxed())
        }
        "/framed" => {
            let mut r = text(StatusCode::OK, "framed");
            r.headers_mut()
                .insert("x-frame-options", "SAMEORIGIN".parse().unwrap());
            r
        }
        "/ws" => {
            let on_upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                if let Ok(up) = on_upgrade.await {
                    let mut io = TokioIo::new(up);
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = io.read(&mut buf).await {
                        if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            });
            let mut r = text(StatusCode::SWITCHING_PROTOCOLS, Bytes::new());
            r.headers_mut()
                .insert("connection", "upgrade".parse().unwrap());
            r.headers_mut()
                .insert("upgrade", "websocket".parse().unwrap());
            r.headers_mut().insert(
                "sec-websocket-accept",
                "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".parse().unwrap(),
            );
            r
        }
        _ => {
            let mut r = text(StatusCode::OK, format!("backend saw {target}"));
            r.headers_mut()
                .insert("keep-alive", "timeout=5".parse().unwrap());
            r.headers_mut().insert("x-backend", "1".parse().unwrap());
            r
        }
    }
}

/// A raw TCP backend that answers each connection with `response` and closes, for HTTP/1.0 and
/// broken-backend cases.
pub async fn raw_backend(response: &'static [u8]) -> SocketAddr {
    raw_backend_seq(&[response]).await
}

/// Like [`raw_backend`], connection `i` getting `responses[i]` (the last one repeating).
pub async fn raw_backend_seq(responses: &[&'static [u8]]) -> SocketAddr {
    let responses = responses.to_vec();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        for i in 0.. {
            let Ok((mut tcp, _)) = listener.accept().await else {
                return;
            };
            let response = responses[i.min(responses.len() - 1)];
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = tcp.write_all(response).await;
                let _ = tcp.shutdown().await;
            });
        }
    });
    addr
}

/// An address where nothing listens.
pub async fn dead_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}
