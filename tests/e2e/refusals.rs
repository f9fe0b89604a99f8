//! Refused uploads: a client still sending its body when certgate refuses the request reads
//! the refusal (status and JSON body), never a reset connection or a stream error, over HTTP/1.1
//! and HTTP/2, with Python's `http.client` and `requests` and with curl, at body sizes from
//! 20 KB to 3 MiB.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::common::*;

/// The JWT secret the refusal config names (no token is ever sent).
const SECRET: &str = "0123456789abcdef0123456789abcdef-refusals";

/// Body sizes the issue reproduced failures at.
const SIZES: [usize; 4] = [20_000, 200_000, 2 << 20, 3 << 20];

/// Each refusal under test: the path, the status and the JSON `error` code it must get.
const REFUSALS: [(&str, u16, &str); 4] = [
    ("/internal/upload", 403, "forbidden"),
    ("/api/colorize", 401, "unauthorized"),
    ("/readonly/upload", 405, "method_not_allowed"),
    ("/small/upload", 413, "payload_too_large"),
];

/// A proxy whose routes refuse each path of [`REFUSALS`] for its own reason.
async fn refusing_proxy(dir: &Path) -> (Proxy, Backend) {
    let backend = Backend::start().await;
    std::fs::write(dir.join("jwt.secret"), format!("{SECRET}\n")).unwrap();
    let extra = format!(
        r#"
[jwt]
algorithms = ["HS256"]
secret_file = "{}"

[[route]]
path = "/internal"
action = "deny"

[[route]]
path = "/api"
action = "allow"
auth = "jwt"

[[route]]
path = "/readonly"
action = "allow"
methods = ["GET"]

[[route]]
path = "/small"
action = "allow"
max_body = "10KiB"
"#,
        dir.join("jwt.secret").display()
    );
    let proxy = Proxy::start(backend.addr, &extra).await;
    (proxy, backend)
}

fn pem_paths(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let pki = test_pki();
    let (cert, key) = pki.alice.write_pem(dir, "alice");
    (pki.dir.join("ca.crt"), cert, key)
}

/// Python's `http.client` (raw body, written whole before the response is read) and
/// `requests` (a multipart upload, the DeOldify client) read every refusal — 403 deny route,
/// 401 missing token, 405 method, 413 body limit — at 20 KB, 200 KB, 2 MiB and 3 MiB, three
/// times each. Before refused bodies were drained, the client got `SSLEOFError` or a
/// connection reset on a good share of these.
#[tokio::test]
async fn python_clients_read_every_refusal_of_an_upload() {
    let dir = scratch_dir("refusals-python");
    let (proxy, backend) = refusing_proxy(&dir).await;
    let (ca, cert, key) = pem_paths(&dir);
    let cases: Vec<_> = REFUSALS
        .iter()
        .flat_map(|(path, status, error)| {
            SIZES.iter().map(move |size| {
                serde_json::json!({
                    "path": path, "size": size, "status": status, "error": error, "attempts": 3
                })
            })
        })
        .collect();
    let args = serde_json::json!({
        "port": proxy.addr.port(), "ca": ca, "cert": cert, "key": key, "cases": cases
    });
    let out = tokio::process::Command::new(python())
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/e2e/tools/upload_client.py"
        ))
        .arg(args.to_string())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(std::time::Duration::from_secs(240), out)
        .await
        .expect("the Python clients finish")
        .expect("python runs");
    assert!(
        out.status.success(),
        "upload_client.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let failures = report["failures"].as_array().unwrap();
    assert!(
        failures.is_empty(),
        "{} of {} uploads did not read the refusal:\n{}",
        failures.len(),
        failures.len() + report["ok"].as_u64().unwrap() as usize,
        failures
            .iter()
            .map(|f| f.as_str().unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(report["ok"], REFUSALS.len() * SIZES.len() * 3 * 2);
    assert!(
        backend.seen().is_empty(),
        "nothing refused reaches the backend"
    );
}

/// One curl upload of `body` to `path` over `http` (`--http1.1` or `--http2`): its exit
/// status, the status line's code and the body it printed.
async fn curl_upload(
    addr: SocketAddr,
    dir: &Path,
    http: &str,
    path: &str,
    body: &Path,
) -> (bool, String, String, String) {
    let (ca, cert, key) = pem_paths(dir);
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "30", http, "-X", "POST"])
        .arg("--resolve")
        .arg(format!("localhost:{}:127.0.0.1", addr.port()))
        .arg("--cacert")
        .arg(&ca)
        .arg("--cert")
        .arg(&cert)
        .arg("--key")
        .arg(&key)
        .arg("--data-binary")
        .arg(format!("@{}", body.display()))
        .args(["-w", "\n%{http_code}"])
        .arg(format!("https://localhost:{}{path}", addr.port()))
        .kill_on_drop(true)
        .output()
        .await
        .expect("curl is installed");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
    (
        out.status.success(),
        code.to_owned(),
        body.to_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// curl (OpenSSL, nghttp2) uploading to each refused path over HTTP/1.1 (where it sends
/// `Expect: 100-continue` from 1 MiB on) and HTTP/2 at every size, twice: it exits 0 having
/// printed the refusal. Over HTTP/2 the 3 MiB upload to a denied path used to end in
/// `curl: (92) Stream error in the HTTP/2 framing layer` (the stream was reset with CANCEL
/// before the response was sent); the stream must end cleanly or with RST_STREAM(NO_ERROR).
#[tokio::test]
async fn curl_reads_every_refusal_of_an_upload_over_both_protocols() {
    let dir = scratch_dir("refusals-curl");
    let (proxy, backend) = refusing_proxy(&dir).await;
    let mut failures = Vec::new();
    let mut tries = 0;
    for size in SIZES {
        let body = dir.join(format!("body-{size}"));
        std::fs::write(&body, vec![b'x'; size]).unwrap();
        for http in ["--http1.1", "--http2"] {
            for (path, status, error) in REFUSALS {
                for _ in 0..2 {
                    tries += 1;
                    let (ok, code, got, stderr) =
                        curl_upload(proxy.addr, &dir, http, path, &body).await;
                    let read_it = ok
                        && code == status.to_string()
                        && serde_json::from_str::<serde_json::Value>(&got)
                            .is_ok_and(|v| v["error"] == error);
                    if !read_it {
                        failures.push(format!(
                            "{http} {path} {size} B: exit ok={ok} code={code} body={got:?} {}",
                            stderr.trim()
                        ));
                    }
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {tries} curl uploads did not read the refusal:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        backend.seen().is_empty(),
        "nothing refused reaches the backend"
    );
}

/// A refused HTTP/1.1 upload whose body is read whole leaves the connection open: the next
/// request on it is served. (A refused body dropped unread made hyper close the connection.)
#[tokio::test]
async fn a_refused_upload_read_whole_keeps_the_connection() {
    let dir = scratch_dir("refusals-keep");
    let (proxy, backend) = refusing_proxy(&dir).await;
    let mut send = h1(proxy.addr, alice()).await;
    for path in ["/internal/upload", "/readonly/upload"] {
        let req = http::Request::post(path)
            .header("host", "localhost")
            .body(full(vec![b'x'; 200_000]))
            .unwrap();
        let got = read(send.send_request(req).await.expect("the refusal")).await;
        assert!(got.status.is_client_error(), "{got:?}");
        assert!(got.headers.get("connection").is_none(), "{got:?}");
        send.ready().await.expect("the connection stays open");
        assert_eq!(get1(&mut send, "/after", &[]).await.status, 200);
    }
    assert_eq!(backend.seen().len(), 2);
}

/// An HTTP/1.1 client that asked for `100 Continue` and waits for it before sending its body
/// reads the refusal without a `100 Continue` before it, and the connection then closes at
/// once: certgate does not wait (up to its 30 s drain bound) for a body the client was never
/// invited to send.
#[tokio::test]
async fn an_upload_waiting_for_100_continue_reads_the_refusal_and_is_let_go() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = scratch_dir("refusals-expect");
    let (proxy, _backend) = refusing_proxy(&dir).await;
    for path in ["/internal/upload", "/readonly/upload"] {
        let mut tls = tls_connect(proxy.addr, alice()).await.expect("TLS connect");
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1000000\r\nExpect: 100-continue\r\n\r\n"
        );
        tls.write_all(head.as_bytes()).await.unwrap();
        let mut got = Vec::new();
        tokio::time::timeout(std::time::Duration::from_secs(5), tls.read_to_end(&mut got))
            .await
            .expect("the connection closes after the refusal")
            .ok();
        let got = String::from_utf8_lossy(&got);
        assert!(got.starts_with("HTTP/1.1 40"), "{got}");
        assert!(!got.contains("100 Continue"), "{got}");
    }
}
