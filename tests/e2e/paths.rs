//! Path rules against every spelling a client might try: each trick gets 400 or 403 and never
//! reaches the backend; what is allowed reaches it normalized.

use http::Request;

use crate::common::*;

const RULES: &str = r#"
[[route]]
path = "/gradio_api/upload"
action = "allow"

[[route]]
path = "/gradio_api"
action = "deny"

[[route]]
path = "/queue/data"
action = "deny"
"#;

/// Each request target, sent verbatim, with the status it must get.
const TRICKS: &[(&str, u16)] = &[
    ("/gradio_api/info", 403),
    ("/GRADIO_API/info", 403),
    ("/Gradio_Api", 403),
    ("/gr%61dio_api/info", 403),
    ("/%67radio_api/info", 403),
    ("//gradio_api//info", 403),
    ("/./gradio_api/./info", 403),
    ("/x/../gradio_api/info", 403),
    ("/x/%2e%2e/gradio_api/info", 403),
    ("/x/%2E./gradio_api/info", 403),
    ("/gradio_api/info?x=/ok", 403),
    ("/queue/data", 403),
    ("/queue//data/", 403),
    ("/gradio_api%2finfo", 400),
    ("/gradio_api%2Finfo", 400),
    ("/gradio_api%5cinfo", 400),
    ("/gradio_api\\info", 400),
    ("/gradio_api/info%00", 400),
    ("/gradio_api/info%0a", 400),
    ("/gradio_api/%zz", 400),
    ("/%2e%2e/gradio_api/info", 400),
    ("/../gradio_api/info", 400),
    ("/..", 400),
    ("https://localhost/gradio_api/info", 400),
    ("http://localhost/anything", 400),
];

/// Path parameters (`;x`, raw or `%3B`) on any segment: a backend that strips them before
/// routing (Tomcat, Jetty, Spring) sees the denied path, so the rule must too (spec §5).
const PARAMETER_TRICKS: &[(&str, u16)] = &[
    ("/gradio_api;x/info", 403),
    ("/gradio_api/info;x", 403),
    ("/GRADIO_API;x", 403),
    ("/gradio_api;/info", 403),
    ("/gradio_api%3Bx/info", 403),
    ("/gradio_api%3bjsessionid=1/info", 403),
    ("/;x/gradio_api/info", 403),
    ("/queue;a=b/data;c", 403),
    ("/x/..;/gradio_api/info", 400),
    ("/x/.;/gradio_api/info", 400),
    ("/x/%2e%2e%3b/gradio_api/info", 400),
];

/// Path tricks against deny rules, sent as raw bytes over real TLS.
#[tokio::test]
async fn path_tricks_are_refused_and_never_reach_the_backend() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(backend.addr, RULES).await;
    for (target, want) in TRICKS {
        let req = format!("GET {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        let (status, text) = raw(proxy.addr, alice(), req.as_bytes()).await;
        assert_eq!(status, *want, "{target}: {text}");
        if status == 403 || text.contains("application/json") {
            let body = &text[text.find("\r\n\r\n").unwrap() + 4..];
            let json: serde_json::Value =
                serde_json::from_str(body).unwrap_or_else(|_| panic!("{text}"));
            let code = if status == 403 {
                "forbidden"
            } else {
                "bad_request"
            };
            assert_eq!(json["error"], code, "{target}");
        }
    }
    assert!(
        backend.seen().is_empty(),
        "reached the backend: {:#?}",
        backend.seen()
    );
}

/// Path parameters do not slip past deny rules over HTTP/1.1, sent as raw bytes.
#[tokio::test]
async fn path_parameters_do_not_slip_past_deny_rules_over_http1() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(backend.addr, RULES).await;
    for (target, want) in PARAMETER_TRICKS {
        let req = format!("GET {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        let (status, text) = raw(proxy.addr, alice(), req.as_bytes()).await;
        assert_eq!(status, *want, "{target}: {text}");
    }
    assert!(backend.seen().is_empty(), "{:#?}", backend.seen());
}

/// The same over HTTP/2, on one connection; an allowed path with parameters is forwarded with
/// them, as sent.
#[tokio::test]
async fn path_parameters_do_not_slip_past_deny_rules_over_http2() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(backend.addr, RULES).await;
    let mut send = h2(proxy.addr, client_config(Some(&test_pki().alice), &["h2"])).await;
    for (target, want) in PARAMETER_TRICKS {
        let req = Request::get(format!("https://localhost{target}"))
            .body(empty())
            .unwrap();
        let got = read(send.send_request(req).await.unwrap()).await;
        assert_eq!(got.status.as_u16(), *want, "{target}: {}", got.body);
    }
    assert!(backend.seen().is_empty(), "{:#?}", backend.seen());
    let req = Request::get("https://localhost/gradio_api/upload;v=1?upload_id=2")
        .body(empty())
        .unwrap();
    let got = read(send.send_request(req).await.unwrap()).await;
    assert_eq!(got.status, 200, "{}", got.body);
    assert_eq!(backend.only().target, "/gradio_api/upload;v=1?upload_id=2");
}

/// CONNECT is refused.
#[tokio::test]
async fn connect_method_is_refused() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(backend.addr, RULES).await;
    let (status, _) = raw(
        proxy.addr,
        alice(),
        b"CONNECT localhost:7860 HTTP/1.1\r\nHost: localhost:7860\r\n\r\n",
    )
    .await;
    assert_eq!(status, 400);
    assert!(backend.seen().is_empty());
}

/// What is allowed reaches the backend normalized, re-encoded where it must be, with the query
/// unchanged; segment matching does not catch `/gradio_apix`, and the first match wins.
#[tokio::test]
async fn allowed_paths_reach_the_backend_normalized() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(backend.addr, RULES).await;
    let cases = [
        ("/a//b/./c/../d?x=%2F&y=a%20b", "/a/b/d?x=%2F&y=a%20b"),
        ("/gradio_apix", "/gradio_apix"),
        (
            "/gradio_api/upload?upload_id=1",
            "/gradio_api/upload?upload_id=1",
        ),
        ("/file%3Dname%20with%20space", "/file=name%20with%20space"),
        ("/caf%C3%A9/%7Euser", "/caf%C3%A9/~user"),
        ("/queue/join", "/queue/join"),
    ];
    let mut send = h1(proxy.addr, alice()).await;
    for (sent, _) in &cases {
        assert_eq!(get1(&mut send, sent, &[]).await.status, 200, "{sent}");
    }
    let seen: Vec<String> = backend.seen().into_iter().map(|s| s.target).collect();
    let want: Vec<String> = cases.iter().map(|(_, w)| w.to_string()).collect();
    assert_eq!(seen, want);
}

/// The denial is a JSON 403 that names the rule, and it is logged with the client and the rule.
#[tokio::test]
async fn denial_is_json_and_logged_with_the_rule() {
    let (logs, _guard) = LogCapture::start();
    let backend = Backend::start().await;
    let proxy = Proxy::start(backend.addr, RULES).await;
    let got = get_once(proxy.addr, alice(), "/gradio_api/info").await;
    assert_eq!(got.status, 403);
    assert_eq!(got.headers["content-type"], "application/json");
    let json = got.json();
    assert_eq!(json["error"], "forbidden");
    assert!(
        json["message"].as_str().unwrap().contains("/gradio_api"),
        "{json}"
    );
    let line = logs
        .wait_for(&["request refused", "route[1] /gradio_api deny"])
        .await;
    assert!(
        line.contains("subject_dn=\"CN=admin@face.analyze"),
        "{line}"
    );
    assert!(line.contains("peer=127.0.0.1:"), "{line}");
}

/// The shipped `config/certgate.toml` loads (with the test PKI under the file names it uses),
/// closes Gradio's programmatic API surface, and keeps every path the browser UI needs open,
/// for Gradio 4 and Gradio 5/6.
#[test]
fn shipped_gradio_config_closes_the_api_and_keeps_the_ui() {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/certgate.toml"))
            .unwrap();
    let pki = test_pki();
    let config = certgate::config::Config::from_str(&text, &pki.dir.join("certgate.toml"))
        .unwrap_or_else(|e| panic!("{e}"));
    let decide = |path: &str| {
        let path = path.split('?').next().unwrap();
        let norm = certgate::policy::routes::normalize(path).unwrap();
        match certgate::policy::routes::first_match(&config.routes, &norm) {
            Some((_, r)) if r.action == certgate::policy::routes::Action::Deny => Err(403),
            _ => Ok(()),
        }
    };
    for ui in [
        "/",
        "/assets/index-abc123.js",
        "/theme.css",
        "/config",
        "/gradio_api/queue/join",
        "/gradio_api/queue/data?session_hash=abc",
        "/gradio_api/heartbeat/abc",
        "/gradio_api/upload?upload_id=x",
        "/gradio_api/upload_progress?upload_id=x",
        "/gradio_api/file=/tmp/gradio/abc/image.png",
        "/gradio_api/startup-events",
        "/queue/join",
        "/queue/data?session_hash=abc",
        "/upload",
        "/file=/tmp/gradio/abc/out.png",
        "/heartbeat/abc",
    ] {
        assert!(decide(ui).is_ok(), "UI path {ui} is blocked");
    }
    for api in [
        "/gradio_api/info",
        "/gradio_api/openapi.json",
        "/gradio_api/run/predict",
        "/gradio_api/api/predict",
        "/gradio_api/call/predict",
        "/gradio_api/call/predict/event-id",
        "/gradio_api/mcp/sse",
        "/gradio_api/monitoring",
        "/monitoring",
        "/info",
        "/run/predict",
        "/api/predict",
        "/call/predict",
        "/GRADIO_API/Info",
        "/gradio_api//info/",
    ] {
        assert_eq!(decide(api), Err(403), "API path {api} is open");
    }
}

/// `[listen] http_redirect`: every plain-HTTP request gets a 301 to the same host, path and query
/// on the HTTPS port, and nothing is proxied in clear text.
#[tokio::test]
async fn http_redirect_listener_only_redirects() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let backend = Backend::start().await;
    let toml = test_config(backend.addr, "", "").replace(
        "shutdown_timeout",
        "http_redirect = \"127.0.0.1:0\"\nshutdown_timeout",
    );
    let proxy = Proxy::start_with(&toml).await;
    let redirect = proxy.redirect.expect("redirect listener");
    let mut tcp = tokio::net::TcpStream::connect(redirect).await.unwrap();
    tcp.write_all(b"GET /gradio_api/queue/data?session_hash=a%20b HTTP/1.1\r\nHost: example.com:8080\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    tcp.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 301"), "{out}");
    let want = format!(
        "location: https://example.com:{}/gradio_api/queue/data?session_hash=a%20b",
        proxy.addr.port()
    );
    assert!(
        out.to_ascii_lowercase()
            .contains(&want.to_ascii_lowercase()),
        "{out}"
    );
    assert!(backend.seen().is_empty());
}
