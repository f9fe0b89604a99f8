//! Real TLS clients: rustls with or without a client identity, hyper HTTP/1.1 and HTTP/2 on top,
//! and a raw mode that writes exact bytes for requests hyper would refuse to send.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::pki::{Identity, test_pki};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type ReqBody = BoxBody<Bytes, BoxError>;

/// A client config trusting the test CA, presenting `id` if given, offering `alpn`.
pub fn client_config(id: Option<&Identity>, alpn: &[&str]) -> Arc<ClientConfig> {
    client_config_versions(id, alpn, rustls::DEFAULT_VERSIONS)
}

pub fn client_config_versions(
    id: Option<&Identity>,
    alpn: &[&str],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(test_pki().ca.cert.clone()).unwrap();
    let builder = ClientConfig::builder_with_provider(certgate::tls::provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots);
    let mut cfg = match id {
        Some(id) => builder
            .with_client_auth_cert(id.chain.clone(), id.key.clone_key())
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
    Arc::new(cfg)
}

/// Presents alice's certificate with someone else's key: no proof of possession.
#[derive(Debug)]
struct StolenCert(Arc<rustls::sign::CertifiedKey>);

impl rustls::client::ResolvesClientCert for StolenCert {
    fn resolve(
        &self,
        _: &[&[u8]],
        _: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
    fn has_certs(&self) -> bool {
        true
    }
}

/// A client that presents alice's certificate but signs with another key.
pub fn without_its_key() -> Arc<ClientConfig> {
    let pki = test_pki();
    let wrong_key = certgate::tls::provider()
        .key_provider
        .load_private_key(pki.revoked.key.clone_key())
        .unwrap();
    let stolen = rustls::sign::CertifiedKey::new(pki.alice.chain.clone(), wrong_key);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca.cert.clone()).unwrap();
    let cfg = ClientConfig::builder_with_provider(certgate::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_cert_resolver(Arc::new(StolenCert(Arc::new(stolen))));
    Arc::new(cfg)
}

/// The valid client `alice`, HTTP/1.1.
pub fn alice() -> Arc<ClientConfig> {
    client_config(Some(&test_pki().alice), &["http/1.1"])
}

pub async fn tls_connect(
    addr: SocketAddr,
    cfg: Arc<ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    TlsConnector::from(cfg)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

pub async fn h1(addr: SocketAddr, cfg: Arc<ClientConfig>) -> http1::SendRequest<ReqBody> {
    let tls = tls_connect(addr, cfg).await.expect("TLS connect");
    let (send, conn) = http1::handshake(TokioIo::new(tls))
        .await
        .expect("h1 handshake");
    tokio::spawn(conn.with_upgrades());
    send
}

pub async fn h2(addr: SocketAddr, cfg: Arc<ClientConfig>) -> http2::SendRequest<ReqBody> {
    let tls = tls_connect(addr, cfg).await.expect("TLS connect");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (send, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
        .await
        .expect("h2 handshake");
    tokio::spawn(conn);
    send
}

pub fn empty() -> ReqBody {
    Empty::new().map_err(|e| match e {}).boxed()
}

pub fn full(b: impl Into<Bytes>) -> ReqBody {
    Full::new(b.into()).map_err(|e| match e {}).boxed()
}

/// A response, read whole.
#[derive(Debug)]
pub struct Got {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Got {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// Sends a GET on an HTTP/1.1 connection.
pub async fn get1(
    send: &mut http1::SendRequest<ReqBody>,
    path: &str,
    headers: &[(&str, &str)],
) -> Got {
    let mut b = Request::get(path).header("host", "localhost");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let resp = send
        .send_request(b.body(empty()).unwrap())
        .await
        .expect("response");
    read(resp).await
}

pub async fn read(resp: http::Response<hyper::body::Incoming>) -> Got {
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Got {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// One GET over a fresh HTTP/1.1 connection with `cfg`.
pub async fn get_once(addr: SocketAddr, cfg: Arc<ClientConfig>, path: &str) -> Got {
    let mut send = h1(addr, cfg).await;
    get1(&mut send, path, &[]).await
}

/// Writes `request` verbatim over TLS and reads until the server closes or 10 s pass; returns
/// the status code and the raw response.
pub async fn raw(addr: SocketAddr, cfg: Arc<ClientConfig>, request: &[u8]) -> (u16, String) {
    let mut tls = tls_connect(addr, cfg).await.expect("TLS connect");
    tls.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match tls.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    out.extend_from_slice(&buf[..n]);
                    // One response is enough: stop at the end of a JSON error or a short body.
                    let s = String::from_utf8_lossy(&out);
                    if let Some(head_end) = s.find("\r\n\r\n") {
                        let head = &s[..head_end].to_ascii_lowercase();
                        if let Some(cl) = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length: "))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            && out.len() >= head_end + 4 + cl
                        {
                            break;
                        }
                    }
                }
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {text:?}"));
    (status, text)
}

/// Asserts that a TLS client with `cfg` cannot get a response: the handshake fails, or (TLS 1.3,
/// where the client finishes first) the first read fails with the server's alert.
pub async fn assert_refused(addr: SocketAddr, cfg: Arc<ClientConfig>) -> String {
    let tls = match tls_connect(addr, cfg).await {
        Err(e) => return e.to_string(),
        Ok(tls) => tls,
    };
    let (mut send, conn) = match http1::handshake::<_, ReqBody>(TokioIo::new(tls)).await {
        Ok(x) => x,
        Err(e) => return e.to_string(),
    };
    tokio::spawn(conn);
    let req = Request::get("/")
        .header("host", "localhost")
        .body(empty())
        .unwrap();
    match send.send_request(req).await {
        Ok(resp) => panic!(
            "expected the handshake to be refused, got {}",
            resp.status()
        ),
        Err(e) => format!("{e:?}"),
    }
}

/// A browser's WebSocket upgrade request for `path` (HTTP/1.1).
pub fn websocket_request(path: &str) -> Request<ReqBody> {
    Request::get(path)
        .header("host", "localhost")
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .body(empty())
        .unwrap()
}

/// Opens a WebSocket to `/ws` through the proxy over HTTP/1.1 (as a browser does) and returns
/// the 101 response's headers and the upgraded stream. Panics unless the answer is 101.
pub async fn open_websocket(addr: SocketAddr) -> (HeaderMap, TokioIo<hyper::upgrade::Upgraded>) {
    let mut send = h1(addr, alice()).await;
    let mut resp = send
        .send_request(websocket_request("/ws"))
        .await
        .expect("upgrade response");
    assert_eq!(resp.status(), 101);
    let upgraded = hyper::upgrade::on(&mut resp).await.expect("upgrade");
    (resp.headers().clone(), TokioIo::new(upgraded))
}

/// A GET on the admin listener (plain HTTP): status and body.
pub async fn admin_get(admin: std::net::SocketAddr, path: &str) -> (u16, String) {
    admin_get_as(admin, &admin.to_string(), path).await
}

/// `GET path` on the admin listener with `Host: host`, as a browser that reached it under that
/// name would ask.
pub async fn admin_get_as(admin: std::net::SocketAddr, host: &str, path: &str) -> (u16, String) {
    let tcp = tokio::net::TcpStream::connect(admin).await.unwrap();
    let (mut s, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let resp = s
        .send_request(
            Request::get(path)
                .header("host", host)
                .body(empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}
