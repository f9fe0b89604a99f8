//! Hostile clients and broken backends: request smuggling, HTTP/2 floods, slow and abandoned
//! connections, handshake floods, a backend that closes keep-alives early — and nothing gets
//! through to the backend that should not.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::*;

const LIMIT: Duration = Duration::from_secs(30);

/// Reads whatever the server sends until it closes (bounded), over an existing TLS stream.
async fn read_all(tls: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(LIMIT, tls.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// HTTP/1 framing attacks each get a 4xx, the connection is closed, and nothing reaches the
/// backend.
#[tokio::test]
async fn malformed_framing_is_refused_and_closes() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(backend.addr, "").await;
    let long_header = format!("X-Big: {}\r\n", "a".repeat(70 * 1024));
    let many_headers: String = (0..150).map(|i| format!("X-H{i}: v\r\n")).collect();
    let cases: Vec<(&str, String, &[u16])> = vec![
        (
            "differing content-lengths",
            "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"
                .into(),
            &[400],
        ),
        (
            "transfer-encoding gzip",
            "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n".into(),
            &[400, 501],
        ),
        (
            "transfer-encoding chunked, gzip",
            "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n".into(),
            &[400, 501],
        ),
        (
            "obs-fold",
            "GET /a HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n b\r\n\r\n".into(),
            &[400],
        ),
        (
            "space before colon",
            "GET /a HTTP/1.1\r\nHost: x\r\nX-Bad : v\r\n\r\n".into(),
            &[400],
        ),
        (
            "invalid header name",
            "GET /a HTTP/1.1\r\nHost: x\r\nX(Bad): v\r\n\r\n".into(),
            &[400],
        ),
        (
            "control character in value",
            "GET /a HTTP/1.1\r\nHost: x\r\nX-Bad: a\x01b\r\n\r\n".into(),
            &[400],
        ),
        (
            "header block over 64 KiB",
            format!("GET /a HTTP/1.1\r\nHost: x\r\n{long_header}\r\n"),
            &[431],
        ),
        (
            "more than 100 headers",
            format!("GET /a HTTP/1.1\r\nHost: x\r\n{many_headers}\r\n"),
            &[431],
        ),
        (
            "request line over the limit",
            format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(70 * 1024)),
            &[414, 431, 400],
        ),
    ];
    for (name, request, want) in cases {
        let mut tls = tls_connect(proxy.addr, alice()).await.unwrap();
        tls.write_all(request.as_bytes()).await.unwrap();
        let text = read_all(&mut tls).await;
        let status: u16 = text
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        assert!(want.contains(&status), "{name}: got {status}: {text:.200}");
    }
    assert!(
        backend.seen().is_empty(),
        "reached the backend: {:?}",
        backend.seen()
    );
}

/// Content-Length and Transfer-Encoding together (the classic smuggling setup): certgate
/// (hyper) follows RFC 9112 — Transfer-Encoding wins, Content-Length is dropped — re-frames the
/// request for the backend, and closes the client connection after answering. The bytes hidden
/// after the chunked body never become a second request at the backend.
#[tokio::test]
async fn cl_te_smuggling_is_reframed_not_passed_through() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(
        backend.addr,
        "[[route]]\npath = \"/admin\"\naction = \"deny\"\n",
    )
    .await;
    let smuggle = "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 60\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1\r\nHost: x\r\nX-Smuggled: 1\r\n\r\n";
    let mut tls = tls_connect(proxy.addr, alice()).await.unwrap();
    tls.write_all(smuggle.as_bytes()).await.unwrap();
    let text = read_all(&mut tls).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert_eq!(
        text.matches("HTTP/1.1 ").count(),
        1,
        "a second response came back: {text}"
    );
    let seen = backend.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].target, "/upload");
    assert!(
        !seen[0].headers.contains_key("content-length") || seen[0].headers["content-length"] == "0"
    );
    assert!(seen.iter().all(|s| !s.headers.contains_key("x-smuggled")));
}

/// Raw HTTP/2 frames over TLS, for floods hyper's client would never send.
mod h2raw {
    pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// HPACK: :method GET, :scheme https, :path /, :authority localhost (literal, not indexed).
    pub fn get_headers() -> Vec<u8> {
        let mut h = vec![0x82, 0x87, 0x84, 0x01, 9];
        h.extend_from_slice(b"localhost");
        h
    }

    pub const SETTINGS: u8 = 0x4;
    pub const HEADERS: u8 = 0x1;
    pub const RST_STREAM: u8 = 0x3;
    pub const CONTINUATION: u8 = 0x9;
    pub const GOAWAY: u8 = 0x7;
    pub const END_STREAM: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
}

/// Reads frames until a GOAWAY arrives or the connection closes; returns whether GOAWAY came.
async fn saw_goaway(tls: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>) -> bool {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    let result = tokio::time::timeout(LIMIT, async {
        loop {
            let n = match tls.read(&mut chunk).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => n,
            };
            buf.extend_from_slice(&chunk[..n]);
            let mut at = 0;
            while buf.len() >= at + 9 {
                let len = (usize::from(buf[at]) << 16)
                    | (usize::from(buf[at + 1]) << 8)
                    | usize::from(buf[at + 2]);
                if buf[at + 3] == h2raw::GOAWAY {
                    return true;
                }
                if buf.len() < at + 9 + len {
                    break;
                }
                at += 9 + len;
            }
            buf.drain(..at);
        }
    })
    .await;
    result.unwrap_or(false)
}

async fn h2_conn(
    addr: std::net::SocketAddr,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut tls = tls_connect(addr, client_config(Some(&test_pki().alice), &["h2"]))
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    tls.write_all(h2raw::PREFACE).await.unwrap();
    tls.write_all(&h2raw::frame(h2raw::SETTINGS, 0, 0, &[]))
        .await
        .unwrap();
    tls
}

/// Rapid reset (CVE-2023-44487): streams opened and reset at once, thousands of times, get a
/// GOAWAY; a client on another connection keeps being served.
#[tokio::test]
async fn h2_rapid_reset_gets_goaway() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(backend.addr, "").await;
    let mut tls = h2_conn(proxy.addr).await;
    let mut burst = Vec::new();
    for i in 0..2000u32 {
        let id = 1 + 2 * i;
        burst.extend(h2raw::frame(
            h2raw::HEADERS,
            h2raw::END_HEADERS | h2raw::END_STREAM,
            id,
            &h2raw::get_headers(),
        ));
        burst.extend(h2raw::frame(h2raw::RST_STREAM, 0, id, &8u32.to_be_bytes()));
    }
    let _ = tls.write_all(&burst).await;
    assert!(
        saw_goaway(&mut tls).await,
        "no GOAWAY after a rapid-reset flood"
    );
    assert_eq!(
        get_once(proxy.addr, alice(), "/other-client").await.status,
        200
    );
}

/// CONTINUATION flood: a header block that never ends gets a GOAWAY (bounded by the header
/// list size), not unbounded memory.
#[tokio::test]
async fn h2_continuation_flood_gets_goaway() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(backend.addr, "").await;
    let mut tls = h2_conn(proxy.addr).await;
    let mut flood = h2raw::frame(h2raw::HEADERS, 0, 1, &h2raw::get_headers());
    // Literal header field without indexing, new name: "x-f" = 4000 bytes of 'a', repeated.
    let mut field = vec![0x00, 3, b'x', b'-', b'f', 0x7f];
    let mut n = 4000 - 127;
    while n >= 128 {
        field.push((n % 128) as u8 | 0x80);
        n /= 128;
    }
    field.push(n as u8);
    field.extend(std::iter::repeat_n(b'a', 4000));
    for _ in 0..100 {
        flood.extend(h2raw::frame(h2raw::CONTINUATION, 0, 1, &field));
    }
    let _ = tls.write_all(&flood).await;
    assert!(
        saw_goaway(&mut tls).await,
        "no GOAWAY after a CONTINUATION flood"
    );
    assert!(backend.seen().is_empty());
}

/// 1,000 connections that open and send nothing, and a few that drip a byte at a time, do not
/// stop a valid client from being served, and are all closed by the handshake timeout.
#[tokio::test]
async fn silent_and_dripping_connections_do_not_block_valid_clients() {
    let (logs, _guard) = LogCapture::start();
    let backend = Backend::start().await;
    let proxy = Proxy::start_with(&test_config(
        backend.addr,
        "handshake_timeout = \"1s\"",
        "[limits]\nmax_connections_per_ip = 2000\nhandshake_failures_per_ip = \"10000/m\"\n",
    ))
    .await;
    let mut idle = Vec::new();
    for _ in 0..1000 {
        idle.push(tokio::net::TcpStream::connect(proxy.addr).await.unwrap());
    }
    let mut drip = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    drip.write_all(&[0x16]).await.unwrap();
    assert_eq!(get_once(proxy.addr, alice(), "/served").await.status, 200);
    // Every silent connection is closed by the server within the timeout.
    let mut closed = 0;
    for mut s in idle {
        let mut b = [0u8; 1];
        if let Ok(Ok(0)) | Ok(Err(_)) = tokio::time::timeout(LIMIT, s.read(&mut b)).await {
            closed += 1;
        }
    }
    assert_eq!(closed, 1000);
    let mut b = [0u8; 1];
    assert!(matches!(
        tokio::time::timeout(LIMIT, drip.read(&mut b)).await,
        Ok(Ok(0)) | Ok(Err(_))
    ));
    assert!(logs.text().matches("reason=\"timeout\"").count() >= 1000);
}

/// A client that stops sending in the middle of its request head is cut off by
/// `header_read_timeout` (after the handshake), and an idle keep-alive connection by
/// `keepalive_timeout`.
#[tokio::test]
async fn slow_head_and_idle_keepalive_are_closed() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(
        backend.addr,
        "[limits]\nheader_read_timeout = \"500ms\"\nkeepalive_timeout = \"500ms\"\n",
    )
    .await;
    let mut slow = tls_connect(proxy.addr, alice()).await.unwrap();
    slow.write_all(b"GET /slowloris HTTP/1.1\r\nHost: x\r\nX-A: ")
        .await
        .unwrap();
    let text = read_all(&mut slow).await;
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );

    // Drive the HTTP/2 connection ourselves, so the test can wait for the server to end it.
    let tls = tls_connect(proxy.addr, client_config(Some(&test_pki().alice), &["h2"]))
        .await
        .unwrap();
    let (mut h2c, conn) = hyper::client::conn::http2::handshake::<_, _, ReqBody>(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    let conn = tokio::spawn(conn);
    let url = format!("https://localhost:{}/idle", proxy.addr.port());
    let resp = h2c
        .send_request(http::Request::get(&url).body(empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // Idle from now: the server sends GOAWAY after the keep-alive timeout and the connection
    // ends on its own.
    tokio::time::timeout(LIMIT, conn)
        .await
        .expect("idle HTTP/2 connection was not closed")
        .unwrap()
        .ok();
    assert!(backend.seen().iter().all(|s| s.target != "/slowloris"));
}

/// Browsers abort handshakes routinely (a cancelled certificate chooser, speculative
/// preconnects): a client that closes or resets before its certificate was judged is logged but
/// does not count towards `handshake_failures_per_ip`, so an office behind one NAT address is
/// not locked out by them. A failed verification still counts (see the next test).
#[tokio::test]
async fn handshake_aborts_do_not_count_towards_the_throttle() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let (logs, _guard) = LogCapture::start();
    let backend = Backend::start().await;
    let proxy = Proxy::start(
        backend.addr,
        "[limits]\nhandshake_failures_per_ip = \"2/m\"\n",
    )
    .await;
    for i in 0..8 {
        let mut tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        if i % 2 == 0 {
            // The way a preconnect ends: ClientHello sent, the server's flight (with its
            // certificate request) read, then closed.
            let mut tls = rustls::ClientConnection::new(
                alice(),
                rustls_pki_types::ServerName::try_from("localhost").unwrap(),
            )
            .unwrap();
            let mut hello = Vec::new();
            tls.write_tls(&mut hello).unwrap();
            tcp.write_all(&hello).await.unwrap();
            let mut buf = [0u8; 4096];
            assert!(tcp.read(&mut buf).await.unwrap() > 0);
        }
        drop(tcp);
    }
    logs.wait_count("reason=\"client closed the connection\"", 8)
        .await;
    assert_eq!(
        get_once(proxy.addr, alice(), "/after-aborts").await.status,
        200
    );
    assert!(!logs.text().contains("too many failed handshakes"));
}

/// A scanner with bad certificates: after `handshake_failures_per_ip` failures its connections
/// are closed before the handshake (counted, logged once); a valid client from elsewhere would
/// be unaffected, and the block lifts as the rate drops.
#[tokio::test]
async fn handshake_floods_are_throttled() {
    let (logs, _guard) = LogCapture::start();
    let backend = Backend::start().await;
    let proxy = Proxy::start(
        backend.addr,
        "[limits]\nhandshake_failures_per_ip = \"5/m\"\n",
    )
    .await;
    for _ in 0..5 {
        assert_refused(proxy.addr, client_config(Some(&test_pki().impostor), &[])).await;
    }
    // The sixth failure puts the address over the limit...
    assert_refused(proxy.addr, client_config(Some(&test_pki().impostor), &[])).await;
    logs.wait_for(&["too many failed handshakes"]).await;
    let before = logs.text().matches("TLS handshake failed").count();
    // ...and from then on even a valid certificate from that address is cut off unseen.
    assert!(tls_connect(proxy.addr, alice()).await.is_err());
    assert!(
        tls_connect(proxy.addr, client_config(Some(&test_pki().impostor), &[]))
            .await
            .is_err()
    );
    assert_eq!(
        logs.text().matches("TLS handshake failed").count(),
        before,
        "a handshake was attempted"
    );
    assert_eq!(
        logs.text().matches("too many failed handshakes").count(),
        1,
        "logged more than once"
    );
}

/// A backend that closes keep-alive connections at its own short timeout — in the worst
/// case exactly as the next request arrives: this one answers the first request on each
/// connection and closes the connection when the second arrives, without a byte of answer.
/// 1,000 sequential requests, zero 502s: the idempotent ones are retried once on a fresh
/// connection.
#[tokio::test]
async fn backend_closing_keepalives_costs_no_502() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut got = Vec::new();
                for answer in [true, false] {
                    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tcp.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                    }
                    got.clear();
                    if answer {
                        let _ = tcp
                            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                            .await;
                    }
                }
                // Second request read: close without answering.
            });
        }
    });
    let proxy = Proxy::start(addr, "").await;
    let mut s = h1(proxy.addr, alice()).await;
    let mut bad = Vec::new();
    for i in 0..1000 {
        let got = get1(&mut s, "/flaky", &[]).await;
        if got.status != 200 {
            bad.push((i, got.status));
        }
    }
    assert!(
        bad.is_empty(),
        "{} failures: {:?}",
        bad.len(),
        &bad[..bad.len().min(10)]
    );
}

/// The keep-alive retry is for a pooled connection that died while idle, not for a fresh one:
/// a backend that reads a `DELETE` or a bodyless `PUT` on a new connection and closes without
/// answering receives it once, and the client gets 502; the request is never run twice.
#[tokio::test]
async fn idempotent_requests_are_not_replayed_on_a_fresh_connection() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                return;
            };
            let record = record.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let line = String::from_utf8_lossy(&got);
                let line = line.lines().next().unwrap_or_default().to_string();
                record.lock().unwrap().push(line);
                // Read, and closed without a byte of answer.
            });
        }
    });
    let proxy = Proxy::start(addr, "").await;
    let mut s = h1(proxy.addr, alice()).await;
    for (method, path) in [("DELETE", "/items/1"), ("PUT", "/items/2")] {
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost")
            .body(empty())
            .unwrap();
        let got = read(s.send_request(req).await.expect("response")).await;
        assert_eq!(got.status, 502, "{method}: {}", got.body);
    }
    assert_eq!(
        *seen.lock().unwrap(),
        ["DELETE /items/1 HTTP/1.1", "PUT /items/2 HTTP/1.1"],
        "a request reached the backend twice"
    );
}

/// Secrets never reach the log: a bearer token, an Authorization value, a client's private key
/// bytes and a .p12 password, all used during a run with debug logging.
#[tokio::test]
async fn secrets_never_reach_the_log() {
    let (logs, _guard) = LogCapture::start();
    let dir = scratch_dir("secrets");
    let secret = "0123456789abcdef0123456789abcdef-secret-in-file";
    std::fs::write(dir.join("jwt.secret"), secret).unwrap();
    let backend = Backend::start().await;
    let proxy = Proxy::start_with(&test_config(
        backend.addr,
        "",
        &format!(
            "[jwt]\nalgorithms = [\"HS256\"]\nsecret_file = \"{}\"\n\n[[route]]\npath = \"/api\"\naction = \"allow\"\nauth = \"jwt\"\n",
            dir.join("jwt.secret").display()
        ),
    ))
    .await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &serde_json::json!({"sub": "alice", "exp": now + 600}),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap();
    let mut s = h1(proxy.addr, alice()).await;
    assert_eq!(
        get1(
            &mut s,
            "/api/a",
            &[("authorization", &format!("Bearer {token}"))]
        )
        .await
        .status,
        200
    );
    assert_eq!(
        get1(
            &mut s,
            "/api/b",
            &[("authorization", "Bearer not-a-token-but-secret-ish")]
        )
        .await
        .status,
        401
    );
    assert_eq!(
        get1(
            &mut s,
            "/x",
            &[("authorization", "Basic dXNlcjpwYXNzd29yZA==")]
        )
        .await
        .status,
        200
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_certgate"))
        .args(["certs", "init-ca", "--dir"])
        .arg(dir.join("ca"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_certgate"))
        .args(["certs", "client", "--name", "p12user", "--p12", "--dir"])
        .arg(dir.join("ca"))
        .output()
        .unwrap();
    let p12_password = std::fs::read_to_string(dir.join("ca/p12user.p12.pass")).unwrap();
    let cli_stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let text = logs.text() + &cli_stderr;
    let key_pem = test_pki().alice.key.secret_der().to_vec();
    let key_b64 = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(&key_pem)
    };
    for (what, secret) in [
        ("token", token.as_str()),
        ("jwt secret", secret),
        ("bearer value", "not-a-token-but-secret-ish"),
        ("basic auth", "dXNlcjpwYXNzd29yZA=="),
        ("p12 password", p12_password.trim()),
        ("private key", &key_b64[..40]),
    ] {
        assert!(!text.contains(secret), "{what} appeared in the logs");
    }
    assert!(
        text.contains("request refused"),
        "the run did log: {text:.300}"
    );
}

/// Landlock: after start-up the daemon cannot read files outside its config's folders, so a
/// reload that points at a certificate elsewhere fails with a permission error (where the
/// kernel has Landlock; elsewhere the daemon says so and the check is skipped).
#[tokio::test]
async fn landlock_confines_file_access() {
    let backend = Backend::start().await;
    let dir = scratch_dir("landlock");
    let outside = scratch_dir("landlock-outside");
    for f in ["server.crt", "server.key", "ca-bundle.crt", "ca.crl"] {
        std::fs::copy(test_pki().dir.join(f), dir.join(f)).unwrap();
        std::fs::copy(test_pki().dir.join(f), outside.join(f)).unwrap();
    }
    let mut text = test_config(backend.addr, "", "");
    let path = dir.join("certgate.toml");
    std::fs::write(&path, &text).unwrap();
    let mut daemon = Daemon::start(&path);
    let sandbox = daemon.wait_for("sandbox:").await;
    daemon.wait_for("certgate listening").await;
    if sandbox.contains("no Landlock") || sandbox.contains("could not be applied") {
        eprintln!("skipping: {sandbox}");
        return;
    }
    assert!(sandbox.contains("landlock enforced"), "{sandbox}");
    text = text.replace(
        "cert = \"server.crt\"",
        &format!("cert = \"{}\"", outside.join("server.crt").display()),
    );
    std::fs::write(&path, &text).unwrap();
    daemon.signal("HUP");
    let failed = daemon.wait_for("reload failed").await;
    assert!(
        failed.contains("Permission denied") || failed.contains("permission denied"),
        "{failed}"
    );
    daemon.stop().await;
}

/// A Kubernetes Secret update, exactly as the kubelet does it: the files are links through
/// `..data`, which points at `..v1`; the update writes `..v2` (here with a CRL that revokes a
/// client) and swaps `..data` to it in one rename. With the sandbox on, the watch reloads and
/// the revoked client is refused from then on — no restart. (Skipped where the kernel has no
/// Landlock, since then there is nothing to get wrong.)
#[tokio::test]
async fn kubernetes_secret_swap_reloads_under_the_sandbox() {
    let backend = Backend::start().await;
    let dir = scratch_dir("k8s-secret");
    let secret = dir.join("secret");
    let files = ["server.crt", "server.key", "ca-bundle.crt", "ca.crl"];
    std::fs::create_dir_all(secret.join("..v1")).unwrap();
    for f in files {
        std::fs::copy(test_pki().dir.join(f), secret.join("..v1").join(f)).unwrap();
        std::os::unix::fs::symlink(format!("..data/{f}"), secret.join(f)).unwrap();
    }
    std::os::unix::fs::symlink("..v1", secret.join("..data")).unwrap();
    let leaving = custom_client(|p| {
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "leaves-today");
    });
    // The config comes from a ConfigMap mounted elsewhere, as in a Deployment: the secret's
    // folder is not beneath the config's.
    let s = secret.display();
    let text = test_config(backend.addr, "", "[reload]\nwatch = \"100ms\"\n")
        .replace("\"server.crt\"", &format!("\"{s}/server.crt\""))
        .replace("\"server.key\"", &format!("\"{s}/server.key\""))
        .replace("\"ca-bundle.crt\"", &format!("\"{s}/ca-bundle.crt\""))
        .replace("\"ca.crl\"", &format!("\"{s}/ca.crl\""));
    let conf = scratch_dir("k8s-configmap");
    let path = conf.join("certgate.toml");
    std::fs::write(&path, &text).unwrap();
    let mut daemon = Daemon::start(&path);
    let sandbox = daemon.wait_for("sandbox:").await;
    let listening = daemon.wait_for("certgate listening").await;
    if sandbox.contains("no Landlock") || sandbox.contains("could not be applied") {
        eprintln!("skipping: {sandbox}");
        return;
    }
    let addr: std::net::SocketAddr = listening
        .split("https=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap();
    let cfg = client_config(Some(&leaving), &[]);
    assert_eq!(get_once(addr, cfg.clone(), "/before").await.status, 200);

    // The update: a CRL that revokes the leaving client, in a fresh folder, then the swap.
    let serial = {
        use x509_parser::prelude::FromDer as _;
        let (_, cert) =
            x509_parser::certificate::X509Certificate::from_der(&leaving.chain[0]).unwrap();
        rcgen::SerialNumber::from_slice(cert.raw_serial())
    };
    let crl = certgate::pki::crl(
        &test_pki().ca,
        &[certgate::pki::Revoked {
            serial,
            at: time::OffsetDateTime::now_utc() - time::Duration::minutes(1),
            reason: Some(rcgen::RevocationReason::AffiliationChanged),
        }],
        2,
        30,
    )
    .unwrap();
    std::fs::create_dir_all(secret.join("..v2")).unwrap();
    for f in files {
        std::fs::copy(secret.join("..v1").join(f), secret.join("..v2").join(f)).unwrap();
    }
    std::fs::write(secret.join("..v2/ca.crl"), crl).unwrap();
    std::os::unix::fs::symlink("..v2", secret.join("..data_tmp")).unwrap();
    std::fs::rename(secret.join("..data_tmp"), secret.join("..data")).unwrap();
    std::fs::remove_dir_all(secret.join("..v1")).unwrap();

    daemon.wait_for("reload complete").await;
    assert_refused(addr, cfg).await;
    assert!(!daemon.log.contains("reload failed"), "{}", daemon.log);
    daemon.stop().await;
}
