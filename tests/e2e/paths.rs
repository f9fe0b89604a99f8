//! Path rules against every spelling a client might try: each trick gets 400 or 403 and never
//! reaches the backend; what is allowed reaches it normalized.

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
        .wait_for(&["request refused", "route[1] deny /gradio_api"])
        .await;
    assert!(
        line.contains("subject_dn=\"CN=admin@face.analyze"),
        "{line}"
    );
    assert!(line.contains("peer=127.0.0.1:"), "{line}");
}
