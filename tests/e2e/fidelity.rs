//! Request fidelity: what the backend and the auth service are told is the request the client
//! made, one way only. Host, cookies, framing, method names and header counts follow RFC
//! 9110/9112/9113, and everything a client could invent about its origin is stripped.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt as _, Full};

use crate::common::*;

/// An auth service that admits everything and records the headers of each check.
async fn recording_auth() -> (std::net::SocketAddr, Arc<Mutex<Vec<HeaderMap>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let s = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let s = s.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    s.lock().unwrap().push(req.headers().clone());
                    async move {
                        let _ = req.into_body().collect().await;
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    (addr, seen)
}

fn forward_auth_routes(auth: std::net::SocketAddr) -> String {
    format!(
        "[forward_auth]\nurl = \"http://{auth}/auth\"\ntimeout = \"2s\"\n\n[[route]]\npath = \"/fa\"\naction = \"allow\"\nauth = \"forward\"\n"
    )
}

fn h2_get(uri: &str) -> http::request::Builder {
    Request::get(uri)
}

/// The auth service is asked about the normalized target that is forwarded, not the spelling
/// the client sent: `/fa/public/../secret` is `/fa/secret` to both.
#[tokio::test]
async fn forward_auth_is_asked_about_the_forwarded_target() {
    let (auth, asked) = recording_auth().await;
    let backend = Backend::start().await;
    let proxy = Proxy::start(backend.addr, &forward_auth_routes(auth)).await;
    for target in [
        "/fa/public/../secret",
        "/fa/public/%2e%2e/secret",
        "//fa/%73ecret",
    ] {
        let req = format!("GET {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        let (status, text) = raw(proxy.addr, alice(), req.as_bytes()).await;
        assert_eq!(status, 200, "{target}: {text}");
    }
    let backend_saw: Vec<String> = backend.seen().into_iter().map(|s| s.target).collect();
    assert_eq!(backend_saw, ["/fa/secret"; 3]);
    let auth_saw: Vec<String> = asked
        .lock()
        .unwrap()
        .iter()
        .map(|h| h["x-original-uri"].to_str().unwrap().to_string())
        .collect();
    assert_eq!(auth_saw, ["/fa/secret"; 3]);
}

/// Over HTTP/2 the auth service gets the Host the backend gets (`:authority`), with
/// X-Forwarded-Host; a `host` field that differs from `:authority` is refused as ambiguous,
/// and one alone stands in for it.
#[tokio::test]
async fn forward_auth_over_http2_gets_the_backends_host() {
    let (auth, asked) = recording_auth().await;
    let backend = Backend::start().await;
    let proxy = Proxy::start(backend.addr, &forward_auth_routes(auth)).await;
    let mut send = h2(proxy.addr, client_config(Some(&test_pki().alice), &["h2"])).await;

    let req = h2_get("https://good.example/fa/x").body(empty()).unwrap();
    let got = read(send.send_request(req).await.unwrap()).await;
    assert_eq!(got.status, 200, "{}", got.body);
    let seen = backend.only();
    assert_eq!(seen.headers["host"], "good.example");
    let checked = asked.lock().unwrap()[0].clone();
    assert_eq!(checked["host"], "good.example");
    assert_eq!(checked["x-forwarded-host"], "good.example");

    let req = h2_get("https://good.example/fa/x")
        .header("host", "evil.example")
        .body(empty())
        .unwrap();
    let got = read(send.send_request(req).await.unwrap()).await;
    assert_eq!(got.status, 400, "{}", got.body);
    assert!(
        got.body.contains("differs from its :authority"),
        "{}",
        got.body
    );
    assert_eq!(asked.lock().unwrap().len(), 1, "the auth service was asked");
    assert_eq!(backend.seen().len(), 1);
}

/// An HTTP/2 request whose cookies come as separate fields (as Chromium sends them) reaches an
/// HTTP/1.1 backend, and the auth service, as one `Cookie` joined with "; " (RFC 9113 §8.2.3).
#[tokio::test]
async fn http2_cookie_crumbs_are_joined() {
    let (auth, asked) = recording_auth().await;
    let backend = Backend::start().await;
    let proxy = Proxy::start(backend.addr, &forward_auth_routes(auth)).await;
    let mut send = h2(proxy.addr, client_config(Some(&test_pki().alice), &["h2"])).await;
    for path in ["/plain", "/fa/x"] {
        let req = h2_get(&format!("https://localhost{path}"))
            .header("cookie", "alpha=1")
            .header("cookie", "beta=2")
            .header("cookie", "access-token=secret")
            .body(empty())
            .unwrap();
        let got = read(send.send_request(req).await.unwrap()).await;
        assert_eq!(got.status, 200, "{}", got.body);
    }
    for seen in backend.seen() {
        let cookies: Vec<_> = seen.headers.get_all("cookie").iter().collect();
        assert_eq!(
            cookies,
            ["alpha=1; beta=2; access-token=secret"],
            "{}",
            seen.target
        );
    }
    let checked = asked.lock().unwrap()[0].clone();
    let cookies: Vec<_> = checked.get_all("cookie").iter().collect();
    assert_eq!(cookies, ["alpha=1; beta=2; access-token=secret"]);
}

/// HTTP/1.1 requests without a Host, with two, or with userinfo in it get 400 and never reach
/// the backend; `Connection: Host` does not make certgate drop the Host.
#[tokio::test]
async fn http1_host_must_be_one_plain_authority() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(backend.addr, "").await;
    for (req, why) in [
        ("GET /x HTTP/1.1\r\nConnection: close\r\n\r\n", "no Host"),
        (
            "GET /x HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\nConnection: close\r\n\r\n",
            "more than one Host",
        ),
        (
            "GET /x HTTP/1.1\r\nHost: user@evil.example\r\nConnection: close\r\n\r\n",
            "user information",
        ),
    ] {
        let (status, text) = raw(proxy.addr, alice(), req.as_bytes()).await;
        assert_eq!(status, 400, "{req:?}: {text}");
        assert!(text.contains(why), "{req:?}: {text}");
    }
    assert!(backend.seen().is_empty(), "{:#?}", backend.seen());
    let (status, text) = raw(
        proxy.addr,
        alice(),
        b"GET /x HTTP/1.1\r\nHost: good.example\r\nConnection: close, Host\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let seen = backend.only();
    assert_eq!(seen.headers["host"], "good.example");
    assert_eq!(seen.headers["x-forwarded-host"], "good.example");
}

/// HTTP/2: userinfo in `:authority` is refused; a request with a `host` field and no
/// `:authority` is forwarded with that Host, not the backend's address.
#[tokio::test]
async fn http2_authority_rules() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(backend.addr, "").await;
    let mut send = h2(proxy.addr, client_config(Some(&test_pki().alice), &["h2"])).await;
    let req = h2_get("https://user@evil.example/x").body(empty()).unwrap();
    let got = read(send.send_request(req).await.unwrap()).await;
    assert_eq!(got.status, 400, "{}", got.body);
    assert!(backend.seen().is_empty());

    // hyper's HTTP/2 client sends no :authority for a URI without one.
    let req = h2_get("/y")
        .header("host", "named.example")
        .body(empty())
        .unwrap();
    let got = read(send.send_request(req).await.unwrap()).await;
    assert_eq!(got.status, 200, "{}", got.body);
    assert_eq!(backend.only().headers["host"], "named.example");
}

/// A repeated, equal HTTP/2 `content-length` is forwarded once; more than 100 header fields
/// over HTTP/2 get 431 as they do over HTTP/1.1.
#[tokio::test]
async fn http2_framing_and_header_count() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(backend.addr, "").await;
    let mut send = h2(proxy.addr, client_config(Some(&test_pki().alice), &["h2"])).await;
    let req = Request::post("https://localhost/upload-small")
        .header("content-length", "3")
        .header("content-length", "3")
        .body(full("abc"))
        .unwrap();
    let got = read(send.send_request(req).await.unwrap()).await;
    assert_eq!(got.status, 200, "{}", got.body);
    let seen = backend.only();
    let lengths: Vec<_> = seen.headers.get_all("content-length").iter().collect();
    assert_eq!(lengths, ["3"]);

    let mut req = h2_get("https://localhost/many");
    for i in 0..150 {
        req = req.header(format!("x-h-{i}"), "1");
    }
    let got = read(send.send_request(req.body(empty()).unwrap()).await.unwrap()).await;
    assert_eq!(got.status, 431, "{}", got.body);
    assert_eq!(got.json()["error"], "request_header_fields_too_large");

    let mut head = String::from("GET /many HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for i in 0..150 {
        head.push_str(&format!("x-h-{i}: 1\r\n"));
    }
    head.push_str("\r\n");
    let (status, _) = raw(proxy.addr, alice(), head.as_bytes()).await;
    assert_eq!(status, 431);
    assert_eq!(backend.seen().len(), 1);
}

/// Headers a client could use to pose as someone or somewhere else, in every spelling, never
/// reach the backend; certgate's own values replace the ones it sets.
#[tokio::test]
async fn invented_origin_and_identity_headers_are_stripped() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(backend.addr, "").await;
    let invented = [
        "Remote-User",
        "X-Remote-User",
        "True-Client-IP",
        "X-Client-IP",
        "CF-Connecting-IP",
        "X-Cluster-Client-IP",
        "Fastly-Client-IP",
        "X-Original-Forwarded-For",
        "X-Envoy-External-Address",
        "X-Original-URI",
        "X-Original-Method",
        "X-Original-Host",
        "X-Host",
        "Remote_User",
        "x_client_ip",
    ];
    let mut send = h1(proxy.addr, alice()).await;
    let headers: Vec<(&str, &str)> = invented.iter().map(|n| (*n, "6.6.6.6")).collect();
    assert_eq!(get1(&mut send, "/x", &headers).await.status, 200);
    let seen = backend.only();
    for name in invented {
        assert!(
            !seen
                .headers
                .contains_key(name.to_ascii_lowercase().as_str()),
            "{name} reached the backend"
        );
    }
    assert_eq!(seen.headers["x-real-ip"], "127.0.0.1");
}

/// Lower-case methods are not methods (400, as nginx); a transfer coding other than chunked is
/// not implemented (501, as nginx). Neither reaches the backend.
#[tokio::test]
async fn lowercase_methods_and_unknown_transfer_codings_are_refused() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(backend.addr, "").await;
    let (status, text) = raw(
        proxy.addr,
        alice(),
        b"get /x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("case-sensitive"), "{text}");
    let (status, text) = raw(
        proxy.addr,
        alice(),
        b"POST /x HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(status, 501, "{text}");
    assert!(text.contains("not_implemented"), "{text}");
    assert!(backend.seen().is_empty(), "{:#?}", backend.seen());
}

/// After `strip_prefix`, the path the backend would get is checked against the deny rules too:
/// `/api/internal` reaches the backend as `/internal`, which is denied when asked directly. A
/// catch-all `/` deny (everything not allowed above it) does not count as such a rule.
#[tokio::test]
async fn strip_prefix_cannot_reach_a_denied_path() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(
        backend.addr,
        "[[route]]\npath = \"/internal\"\naction = \"deny\"\n\n[[route]]\npath = \"/api\"\naction = \"allow\"\nstrip_prefix = \"/api\"\n\n[[route]]\npath = \"/\"\naction = \"deny\"\n",
    )
    .await;
    let mut send = h1(proxy.addr, alice()).await;
    for path in ["/api/internal", "/api/INTERNAL/x", "/api;v=1/internal;y"] {
        let got = get1(&mut send, path, &[]).await;
        assert_eq!(got.status, 403, "{path}: {}", got.body);
        assert!(got.body.contains("after strip_prefix"), "{}", got.body);
    }
    assert!(backend.seen().is_empty(), "{:#?}", backend.seen());
    assert_eq!(get1(&mut send, "/api/colorize", &[]).await.status, 200);
    assert_eq!(get1(&mut send, "/other", &[]).await.status, 403);
    assert_eq!(backend.only().target, "/colorize");
}

/// Path parameters are ignored by every kind of route, not only deny rules: an identity
/// allow-list and a method list hold for `/admin;x/...` as for `/admin/...`.
#[tokio::test]
async fn path_parameters_do_not_slip_past_allow_conditions() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(
        backend.addr,
        "[[route]]\npath = \"/admin\"\naction = \"allow\"\nallow = { cn = [\"nobody\"] }\n\n[[route]]\npath = \"/api/colorize\"\naction = \"allow\"\nmethods = [\"POST\"]\n",
    )
    .await;
    let mut send = h1(proxy.addr, alice()).await;
    for (path, status) in [
        ("/admin;x/panel", 403),
        ("/ADMIN%3Bjsessionid=1", 403),
        ("/api;v=2/colorize", 405),
        ("/api/colorize;x", 405),
    ] {
        let got = get1(&mut send, path, &[]).await;
        assert_eq!(got.status, status, "{path}: {}", got.body);
    }
    assert!(backend.seen().is_empty(), "{:#?}", backend.seen());
}
