//! Access policy beyond the certificate: IP lists, connection limits, identity allow-lists,
//! certificate-only routes, methods, rate limits, bearer tokens, forward auth, body limits,
//! security headers, strip_prefix — every refusal end to end over real TLS.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Frame;
use jsonwebtoken::{Algorithm, EncodingKey, Header};

use crate::common::*;

const LIMIT: Duration = Duration::from_secs(30);

/// A POST with `headers` and `body` on a fresh HTTP/1.1 connection.
async fn send(
    proxy: std::net::SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: ReqBody,
) -> Got {
    let mut s = h1(proxy, cfg).await;
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    read(
        tokio::time::timeout(LIMIT, s.send_request(b.body(body).unwrap()))
            .await
            .unwrap()
            .unwrap(),
    )
    .await
}

fn anonymous() -> Arc<rustls::ClientConfig> {
    client_config(None, &["http/1.1"])
}

/// `[access] allow_ips`: a peer outside the list is closed before the TLS handshake and logged;
/// inside the list it is served.
#[tokio::test]
async fn peer_outside_allow_ips_is_closed_before_the_handshake() {
    let (logs, _guard) = LogCapture::start();
    let backend = Backend::start().await;
    let closed = Proxy::start(
        backend.addr,
        "[access]\nallow_ips = [\"10.0.0.0/8\", \"fd00::/8\"]",
    )
    .await;
    let err = tls_connect(closed.addr, alice())
        .await
        .expect_err("handshake completed");
    assert!(!err.to_string().is_empty());
    let line = logs.wait_for(&["connection refused", "allow_ips"]).await;
    assert!(line.contains("peer=127.0.0.1:"), "{line}");
    assert!(
        !logs.text().contains("TLS handshake failed"),
        "a handshake was attempted"
    );
    let open = Proxy::start(backend.addr, "[access]\nallow_ips = [\"127.0.0.0/8\"]").await;
    assert_eq!(get_once(open.addr, alice(), "/").await.status, 200);
    assert_eq!(backend.seen().len(), 1);
}

/// `max_connections_per_ip`: the connection over the limit is closed at once; after one closes
/// there is room again.
#[tokio::test]
async fn connections_over_the_per_ip_limit_are_closed() {
    let (logs, _guard) = LogCapture::start();
    let backend = Backend::start().await;
    let proxy = Proxy::start(backend.addr, "[limits]\nmax_connections_per_ip = 2").await;
    let mut a = h1(proxy.addr, alice()).await;
    let mut b = h1(proxy.addr, alice()).await;
    assert_eq!(get1(&mut a, "/a", &[]).await.status, 200);
    assert_eq!(get1(&mut b, "/b", &[]).await.status, 200);
    assert!(
        tls_connect(proxy.addr, alice()).await.is_err(),
        "third connection was served"
    );
    logs.wait_for(&["connection refused", "max_connections_per_ip reached"])
        .await;
    drop(a);
    // The proxy notices the close asynchronously; retry until the place is free (bounded).
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        if let Ok(tls) = tls_connect(proxy.addr, alice()).await {
            let (mut s, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                    .await
                    .unwrap();
            tokio::spawn(conn);
            if let Ok(resp) = s
                .send_request(
                    Request::get("/c")
                        .header("host", "localhost")
                        .body(empty())
                        .unwrap(),
                )
                .await
            {
                assert_eq!(resp.status(), 200);
                break;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the closed connection's place was never released"
        );
        tokio::task::yield_now().await;
    }
}

const OPTIONAL: &str = "client_auth = \"optional\"";

/// One listener serves a public path to anyone and a certificate-only path only to certificate
/// holders (403 naming the need), an OU-restricted path only to that OU, and a CN and a
/// fingerprint list exactly.
#[tokio::test]
async fn client_cert_routes_and_identity_allow_lists() {
    let pki = test_pki();
    let backend = Backend::start().await;
    let inter_fp = {
        let id =
            certgate::tls::identity::ClientIdentity::from_der(&pki.inter_client.chain[0]).unwrap();
        id.fingerprint
    };
    let routes = format!(
        r#"
[[route]]
path = "/health"
action = "allow"

[[route]]
path = "/admin"
action = "allow"
allow = {{ ou = ["Admin"] }}

[[route]]
path = "/by-cn"
action = "allow"
allow = {{ cn = ["inter-client", "someone-else"] }}

[[route]]
path = "/by-fingerprint"
action = "allow"
allow = {{ fingerprint = ["{inter_fp}"] }}

[[route]]
path = "/"
action = "allow"
client_cert = "required"
"#
    );
    let proxy = Proxy::start_with(&test_config(backend.addr, OPTIONAL, &routes)).await;
    let inter = client_config(Some(&pki.inter_client), &["http/1.1"]);

    assert_eq!(
        get_once(proxy.addr, anonymous(), "/health").await.status,
        200
    );
    let got = get_once(proxy.addr, anonymous(), "/ui").await;
    assert_eq!(got.status, 403);
    assert!(
        got.json()["message"]
            .as_str()
            .unwrap()
            .contains("requires a client certificate"),
        "{}",
        got.body
    );
    assert_eq!(get_once(proxy.addr, alice(), "/ui").await.status, 200);

    assert_eq!(
        get_once(proxy.addr, alice(), "/admin/users").await.status,
        200
    );
    let got = get_once(proxy.addr, inter.clone(), "/admin/users").await;
    assert_eq!(got.status, 403);
    let msg = got.json()["message"].as_str().unwrap().to_string();
    assert!(
        msg.contains("CN=inter-client") && msg.contains("allow list of route \"/admin\""),
        "{msg}"
    );
    assert_eq!(
        get_once(proxy.addr, anonymous(), "/admin").await.status,
        403
    );

    assert_eq!(
        get_once(proxy.addr, inter.clone(), "/by-cn").await.status,
        200
    );
    assert_eq!(get_once(proxy.addr, alice(), "/by-cn").await.status, 403);
    assert_eq!(
        get_once(proxy.addr, inter, "/by-fingerprint").await.status,
        200
    );
    assert_eq!(
        get_once(proxy.addr, alice(), "/by-fingerprint")
            .await
            .status,
        403
    );

    let reached: Vec<String> = backend.seen().into_iter().map(|s| s.target).collect();
    assert_eq!(
        reached,
        [
            "/health",
            "/ui",
            "/admin/users",
            "/by-cn",
            "/by-fingerprint"
        ]
    );
}

/// A route's `allow_ips` refuses a client outside it with 403 naming the rule.
#[tokio::test]
async fn route_allow_ips_refuses_with_403() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(
        backend.addr,
        "[[route]]\npath = \"/internal\"\naction = \"allow\"\nallow_ips = [\"10.0.0.0/8\"]\n",
    )
    .await;
    let got = get_once(proxy.addr, alice(), "/internal/x").await;
    assert_eq!(got.status, 403);
    assert!(
        got.json()["message"]
            .as_str()
            .unwrap()
            .contains("127.0.0.1 is not on the allow_ips list"),
        "{}",
        got.body
    );
    assert_eq!(
        get_once(proxy.addr, alice(), "/elsewhere").await.status,
        200
    );
    assert_eq!(backend.seen().len(), 1);
}

/// GET on a POST-only route: 405 with `Allow`.
#[tokio::test]
async fn wrong_method_is_405_with_allow() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(
        backend.addr,
        "[[route]]\npath = \"/api/colorize\"\nmethods = [\"POST\"]\naction = \"allow\"\n",
    )
    .await;
    let got = get_once(proxy.addr, alice(), "/api/colorize").await;
    assert_eq!(got.status, 405);
    assert_eq!(got.headers["allow"], "POST");
    assert_eq!(got.json()["error"], "method_not_allowed");
    let got = send(proxy.addr, alice(), "POST", "/api/colorize", &[], full("x")).await;
    assert_eq!(got.status, 200);
    assert_eq!(backend.seen().len(), 1);
}

/// A burst: exactly `burst` admitted, then 429 with `Retry-After`; keyed per client
/// certificate, so another client has its own bucket. (The rate is one a minute, so nothing
/// refills while the test runs; the refill itself is unit-tested on a fake clock.)
#[tokio::test]
async fn burst_over_the_rate_limit_gets_429_with_retry_after() {
    let backend = Backend::start().await;
    let extra = r#"
[[rate_limit]]
name = "api"
key = "client"
rate = "1/m"
burst = 5

[[route]]
path = "/api"
action = "allow"
rate_limit = "api"
"#;
    let proxy = Proxy::start(backend.addr, extra).await;
    let mut s = h1(proxy.addr, alice()).await;
    for i in 0..5 {
        assert_eq!(get1(&mut s, "/api/x", &[]).await.status, 200, "request {i}");
    }
    let got = get1(&mut s, "/api/x", &[]).await;
    assert_eq!(got.status, 429);
    assert_eq!(got.json()["error"], "too_many_requests");
    let retry: u64 = got.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    // Unlimited paths are not counted.
    assert_eq!(get1(&mut s, "/other", &[]).await.status, 200);
    let inter = client_config(Some(&test_pki().inter_client), &["http/1.1"]);
    assert_eq!(get_once(proxy.addr, inter, "/api/x").await.status, 200);
    assert_eq!(backend.seen().len(), 7);
}

const SECRET: &str = "0123456789abcdef0123456789abcdef-test-secret";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn hs256(claims: serde_json::Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn jwt_config(backend: std::net::SocketAddr, dir: &std::path::Path, jwt: &str) -> String {
    std::fs::write(dir.join("jwt.secret"), format!("{SECRET}\n")).unwrap();
    test_config(
        backend,
        "",
        &format!("{jwt}\n[[route]]\npath = \"/api\"\naction = \"allow\"\nauth = \"jwt\"\n"),
    )
}

/// Bearer tokens: a valid one admits and its `user_id` reaches the backend in the subject
/// header (a spoofed one is stripped); every kind of bad token gets 401 with the reason in
/// `WWW-Authenticate`, and nothing reaches the backend.
#[tokio::test]
async fn jwt_refusals_each_say_why() {
    let dir = scratch_dir("jwt");
    let backend = Backend::start().await;
    let jwt = format!(
        "[jwt]\nalgorithms = [\"HS256\"]\nsecret_file = \"{}\"\nissuer = \"deoldify_api_gateway\"\naudience = \"colorize\"\nleeway = \"0s\"\nsubject_claim = \"user_id\"\n",
        dir.join("jwt.secret").display()
    );
    let proxy = Proxy::start_with(&jwt_config(backend.addr, &dir, &jwt)).await;
    let base = serde_json::json!({"user_id": "alice", "iss": "deoldify_api_gateway", "aud": "colorize", "exp": now() + 600});
    let with = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut c = base.clone();
        f(&mut c);
        hs256(c)
    };
    let good = hs256(base.clone());
    let bearer = |t: &str| format!("Bearer {t}");

    let got = get_once_h(
        proxy.addr,
        "/api/ok",
        &[
            ("authorization", &bearer(&good)),
            ("x-auth-subject", "root"),
        ],
    )
    .await;
    assert_eq!(got.status, 200, "{}", got.body);
    let seen = backend.only();
    assert_eq!(
        seen.headers
            .get_all("x-auth-subject")
            .iter()
            .collect::<Vec<_>>(),
        ["alice"]
    );

    let mut parts = good.split('.').map(str::to_string).collect::<Vec<_>>();
    parts[2] = format!("{}A", &parts[2][..parts[2].len() - 1].replace('A', "B"));
    let bad_sig = parts.join(".");
    let none = {
        use base64::Engine as _;
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.",
            e.encode(br#"{"alg":"none","typ":"JWT"}"#),
            e.encode(base.to_string())
        )
    };
    // Signed with the right key, but naming a critical extension certgate does not implement.
    let crit = {
        use base64::Engine as _;
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let input = format!(
            "{}.{}",
            e.encode(br#"{"alg":"HS256","typ":"JWT","crit":["exp2"],"exp2":1}"#),
            e.encode(base.to_string())
        );
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, SECRET.as_bytes());
        let sig = aws_lc_rs::hmac::sign(&key, input.as_bytes());
        format!("{input}.{}", e.encode(sig.as_ref()))
    };
    let hs512 = jsonwebtoken::encode(
        &Header::new(Algorithm::HS512),
        &base,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    type Case<'a> = (String, Vec<(&'a str, String)>, &'a str);
    let cases: Vec<Case> = vec![
        ("missing".into(), vec![], "missing bearer token"),
        ("query only".into(), vec![], "missing bearer token"),
        (
            "malformed".into(),
            vec![("authorization", bearer("not.a.jwt"))],
            "malformed token",
        ),
        (
            "bad signature".into(),
            vec![("authorization", bearer(&bad_sig))],
            "bad signature",
        ),
        (
            "expired".into(),
            vec![(
                "authorization",
                bearer(&with(&|c| c["exp"] = (now() - 60).into())),
            )],
            "token expired",
        ),
        (
            "not yet valid".into(),
            vec![(
                "authorization",
                bearer(&with(&|c| c["nbf"] = (now() + 600).into())),
            )],
            "token not yet valid",
        ),
        (
            "wrong iss".into(),
            vec![(
                "authorization",
                bearer(&with(&|c| c["iss"] = "someone".into())),
            )],
            "wrong issuer",
        ),
        (
            "wrong aud".into(),
            vec![(
                "authorization",
                bearer(&with(&|c| c["aud"] = "other".into())),
            )],
            "wrong audience",
        ),
        (
            "no subject".into(),
            vec![(
                "authorization",
                bearer(&with(&|c| {
                    c.as_object_mut().unwrap().remove("user_id");
                })),
            )],
            "missing claim user_id",
        ),
        (
            "no exp".into(),
            vec![(
                "authorization",
                bearer(&with(&|c| {
                    c.as_object_mut().unwrap().remove("exp");
                })),
            )],
            "missing claim exp",
        ),
        (
            "alg none".into(),
            vec![("authorization", bearer(&none))],
            "algorithm none is not allowed",
        ),
        (
            "alg not listed".into(),
            vec![("authorization", bearer(&hs512))],
            "algorithm HS512 is not allowed",
        ),
        (
            "unknown crit".into(),
            vec![("authorization", bearer(&crit))],
            "unsupported critical header parameter",
        ),
    ];
    for (name, headers, why) in cases {
        let path = if name == "query only" {
            format!("/api/x?token={good}&access_token={good}")
        } else {
            "/api/x".to_string()
        };
        let hs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let got = get_once_h(proxy.addr, &path, &hs).await;
        assert_eq!(got.status, 401, "{name}: {}", got.body);
        assert_eq!(got.json()["error"], "unauthorized", "{name}");
        let www = got.headers["www-authenticate"].to_str().unwrap();
        assert_eq!(
            www,
            format!("Bearer error=\"invalid_token\", error_description=\"{why}\""),
            "{name}"
        );
    }
    assert_eq!(backend.seen().len(), 1);
}

async fn get_once_h(addr: std::net::SocketAddr, path: &str, headers: &[(&str, &str)]) -> Got {
    let mut s = h1(addr, alice()).await;
    get1(&mut s, path, headers).await
}

/// Algorithm confusion: with ES256 configured, an HS256 token "signed" with the public key as
/// the secret is refused; with both HS256 and ES256 configured it is refused too, because HMAC
/// tokens are checked only against the secret. An ES256 token signed by the key passes.
#[tokio::test]
async fn algorithm_confusion_is_refused() {
    let dir = scratch_dir("jwt-confusion");
    let backend = Backend::start().await;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let public_pem = key.public_key_pem();
    std::fs::write(dir.join("jwt.pub.pem"), &public_pem).unwrap();
    let claims = serde_json::json!({"sub": "mallory", "exp": now() + 600});
    let confused = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(public_pem.as_bytes()),
    )
    .unwrap();
    let es = jsonwebtoken::encode(
        &Header::new(Algorithm::ES256),
        &claims,
        &EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap(),
    )
    .unwrap();
    for (algs, secret, want) in [
        ("[\"ES256\"]", false, "algorithm HS256 is not allowed"),
        ("[\"HS256\", \"ES256\"]", true, "bad signature"),
    ] {
        let mut jwt = format!(
            "[jwt]\nalgorithms = {algs}\npublic_key_file = \"{}\"\n",
            dir.join("jwt.pub.pem").display()
        );
        if secret {
            jwt.push_str(&format!(
                "secret_file = \"{}\"\n",
                dir.join("jwt.secret").display()
            ));
        }
        let proxy = Proxy::start_with(&jwt_config(backend.addr, &dir, &jwt)).await;
        let got = get_once_h(
            proxy.addr,
            "/api",
            &[("authorization", &format!("Bearer {confused}"))],
        )
        .await;
        assert_eq!(got.status, 401, "{algs}");
        assert!(
            got.headers["www-authenticate"]
                .to_str()
                .unwrap()
                .contains(want),
            "{algs}: {:?}",
            got.headers
        );
        let got = get_once_h(
            proxy.addr,
            "/api",
            &[("authorization", &format!("Bearer {es}"))],
        )
        .await;
        assert_eq!(got.status, 200, "{algs}: {}", got.body);
    }
    assert_eq!(backend.seen().len(), 2);
    assert!(
        backend
            .seen()
            .iter()
            .all(|s| s.headers["x-auth-subject"] == "mallory")
    );
}

/// One request to the forward-auth service: method, URI, headers, body length.
type AuthRequest = (String, String, HeaderMap, usize);

/// What the forward-auth service saw.
#[derive(Clone, Default)]
struct AuthSeen(Arc<Mutex<Vec<AuthRequest>>>);

/// A Flask-like `/auth`: GET only; `Bearer good` → 200 with X-User-Id; `Bearer slow` never
/// answers; anything else → 401 with a challenge.
async fn auth_service(seen: AuthSeen) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let seen = seen.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let seen = seen.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let body_len = body
                            .collect()
                            .await
                            .map(|b| b.to_bytes().len())
                            .unwrap_or(0);
                        seen.0.lock().unwrap().push((
                            parts.method.to_string(),
                            parts.uri.to_string(),
                            parts.headers.clone(),
                            body_len,
                        ));
                        let auth = parts
                            .headers
                            .get("authorization")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("");
                        let mut resp = Response::new(Full::new(Bytes::from_static(b"{}")));
                        if parts.method != http::Method::GET {
                            *resp.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
                        } else if auth == "Bearer good" {
                            resp.headers_mut()
                                .insert("x-user-id", "u-42".parse().unwrap());
                        } else if auth == "Bearer slow" {
                            std::future::pending::<()>().await;
                        } else if auth == "Bearer broken" {
                            *resp.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                        } else {
                            *resp.status_mut() = StatusCode::UNAUTHORIZED;
                            resp.headers_mut().insert(
                                "www-authenticate",
                                "Bearer realm=\"deoldify\"".parse().unwrap(),
                            );
                        }
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    addr
}

fn forward_auth_config(backend: std::net::SocketAddr, auth: std::net::SocketAddr) -> String {
    test_config(
        backend,
        "",
        &format!(
            "[forward_auth]\nurl = \"http://{auth}/auth\"\ntimeout = \"500ms\"\ncopy_headers = [\"X-User-Id\"]\n\n[[route]]\npath = \"/api\"\naction = \"allow\"\nauth = \"forward\"\n"
        ),
    )
}

/// Forward auth (nginx `auth_request`): a GET with the client's headers, no body,
/// X-Original-URI/-Method and the identity headers; 2xx admits and copies X-User-Id (a spoofed
/// one is stripped); 401 is returned with its challenge; a failing, slow or absent service
/// refuses (503/504), never admits.
#[tokio::test]
async fn forward_auth_admits_refuses_and_fails_closed() {
    let seen = AuthSeen::default();
    let auth = auth_service(seen.clone()).await;
    let backend = Backend::start().await;
    let proxy = Proxy::start_with(&forward_auth_config(backend.addr, auth)).await;

    let got = send(
        proxy.addr,
        alice(),
        "POST",
        "/api/colorize?size=big",
        &[
            ("authorization", "Bearer good"),
            ("x-user-id", "admin"),
            ("content-type", "image/png"),
        ],
        full(vec![9u8; 1000]),
    )
    .await;
    assert_eq!(got.status, 200, "{}", got.body);
    let b = backend.only();
    assert_eq!(b.method, "POST");
    assert_eq!(
        b.headers.get_all("x-user-id").iter().collect::<Vec<_>>(),
        ["u-42"]
    );
    let (method, uri, headers, body_len) = seen.0.lock().unwrap()[0].clone();
    assert_eq!(method, "GET");
    assert_eq!(uri, "/auth");
    assert_eq!(body_len, 0);
    assert_eq!(headers["x-original-uri"], "/api/colorize?size=big");
    assert_eq!(headers["x-original-method"], "POST");
    assert_eq!(headers["authorization"], "Bearer good");
    assert_eq!(headers["x-ssl-client-verify"], "SUCCESS");
    assert!(
        headers["x-ssl-client-dn"]
            .to_str()
            .unwrap()
            .starts_with("CN=admin@face.analyze")
    );
    assert!(
        !headers.contains_key("x-user-id"),
        "the client's X-User-Id reached the auth service"
    );

    let got = get_once_h(proxy.addr, "/api/x", &[("authorization", "Bearer wrong")]).await;
    assert_eq!(got.status, 401);
    assert_eq!(got.headers["www-authenticate"], "Bearer realm=\"deoldify\"");
    let got = get_once_h(proxy.addr, "/api/x", &[("authorization", "Bearer broken")]).await;
    assert_eq!(got.status, 503);
    let got = tokio::time::timeout(
        LIMIT,
        get_once_h(proxy.addr, "/api/x", &[("authorization", "Bearer slow")]),
    )
    .await
    .unwrap();
    assert_eq!(got.status, 504);
    assert_eq!(got.json()["error"], "gateway_timeout");

    let down = Proxy::start_with(&forward_auth_config(
        backend.addr,
        backend::dead_addr().await,
    ))
    .await;
    let got = get_once_h(down.addr, "/api/x", &[("authorization", "Bearer good")]).await;
    assert_eq!(got.status, 503);
    assert_eq!(got.json()["error"], "service_unavailable");
    assert_eq!(backend.seen().len(), 1);
}

use crate::common::backend;

const BODY_LIMIT: &str = "[limits]\nmax_body = \"50MiB\"\n";

/// A 51 MiB body with `Content-Length`: 413 before anything reaches the backend, and the client
/// (still sending) reads the 413 rather than a reset.
#[tokio::test]
async fn body_over_the_limit_with_content_length_is_413() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(backend.addr, BODY_LIMIT).await;
    let got = send(
        proxy.addr,
        alice(),
        "POST",
        "/upload",
        &[("content-length", &(51usize << 20).to_string())],
        full(vec![1u8; 51 << 20]),
    )
    .await;
    assert_eq!(got.status, 413);
    assert_eq!(got.json()["error"], "payload_too_large");
    assert!(backend.seen().is_empty());
}

/// A 51 MiB chunked body (no `Content-Length`): cut off before the limit, 413, and the backend
/// saw at most the limit.
#[tokio::test]
async fn chunked_body_over_the_limit_is_cut_off() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(backend.addr, BODY_LIMIT).await;
    let (mut tx, body) = http_body_util::channel::Channel::<Bytes, BoxError>::new(4);
    tokio::spawn(async move {
        let chunk = Bytes::from(vec![2u8; 1 << 20]);
        for _ in 0..51 {
            if tx.send(Frame::data(chunk.clone())).await.is_err() {
                return;
            }
        }
    });
    let got = send(proxy.addr, alice(), "POST", "/upload", &[], body.boxed()).await;
    assert_eq!(got.status, 413);
    assert!(
        backend.uploaded() <= 50 << 20,
        "backend saw {} bytes",
        backend.uploaded()
    );
    // A body under the limit still goes through, over HTTP/2 too.
    let mut s = h2(proxy.addr, client_config(Some(&test_pki().alice), &["h2"])).await;
    let resp = s
        .send_request(
            Request::post(format!("https://localhost:{}/upload", proxy.addr.port()))
                .body(full(vec![3u8; 1 << 20]))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(read(resp).await.body, (1usize << 20).to_string());
}

/// A per-route `max_body` overrides `[limits]`.
#[tokio::test]
async fn route_max_body_overrides_the_default() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(
        backend.addr,
        "[[route]]\npath = \"/upload\"\naction = \"allow\"\nmax_body = \"1KiB\"\n",
    )
    .await;
    let got = send(
        proxy.addr,
        alice(),
        "POST",
        "/upload",
        &[],
        full(vec![0u8; 2048]),
    )
    .await;
    assert_eq!(got.status, 413);
    let got = send(
        proxy.addr,
        alice(),
        "POST",
        "/upload",
        &[],
        full(vec![0u8; 1024]),
    )
    .await;
    assert_eq!(got.status, 200);
}

/// Security headers on every response — proxied, certgate's own errors — while a header the
/// backend set itself is left alone; "" turns a default off; HSTS only when configured.
#[tokio::test]
async fn security_headers_on_every_response() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(
        backend.addr,
        "[response_headers]\n\"Strict-Transport-Security\" = \"max-age=31536000\"\n\"Referrer-Policy\" = \"\"\n\n[[route]]\npath = \"/denied\"\naction = \"deny\"\n",
    )
    .await;
    for (path, status) in [("/ok", 200), ("/denied", 403), ("/%zz", 400)] {
        let got = get_once(proxy.addr, alice(), path).await;
        assert_eq!(got.status, status);
        assert_eq!(got.headers["x-frame-options"], "DENY", "{path}");
        assert_eq!(got.headers["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(
            got.headers["strict-transport-security"], "max-age=31536000",
            "{path}"
        );
        assert!(!got.headers.contains_key("referrer-policy"), "{path}");
    }
    let got = get_once(proxy.addr, alice(), "/framed").await;
    assert_eq!(
        got.headers
            .get_all("x-frame-options")
            .iter()
            .collect::<Vec<_>>(),
        ["SAMEORIGIN"]
    );
    let plain = Proxy::start(backend.addr, "").await;
    let got = get_once(plain.addr, alice(), "/ok").await;
    assert_eq!(got.headers["referrer-policy"], "no-referrer");
    assert!(!got.headers.contains_key("strict-transport-security"));
}

/// `strip_prefix` cannot skip the conditions of the route that admits the stripped path: with
/// `/api` stripped, `/api/admin` reaches the backend as `/admin`, so `/admin`'s identity list
/// refuses it like `/admin` asked directly; so do another route's `allow_ips`, `methods`,
/// `client_cert` and a token it requires (refused: the stripped route never checked one). A
/// route without conditions, `/` (everything not listed above) and a route that strips a
/// prefix itself (it forwards another path) add nothing.
#[tokio::test]
async fn strip_prefix_keeps_the_conditions_of_the_stripped_paths_route() {
    let dir = scratch_dir("strip-conditions");
    std::fs::write(dir.join("jwt.secret"), format!("{SECRET}\n")).unwrap();
    let backend = Backend::start().await;
    let routes = format!(
        r#"
[jwt]
algorithms = ["HS256"]
secret_file = "{}"

[[route]]
path = "/admin"
action = "allow"
allow = {{ cn = ["nobody"] }}

[[route]]
path = "/local"
action = "allow"
allow_ips = ["10.0.0.0/8"]

[[route]]
path = "/readonly"
action = "allow"
methods = ["GET"]

[[route]]
path = "/members"
action = "allow"
client_cert = "required"

[[route]]
path = "/tokens"
action = "allow"
auth = "jwt"

[[route]]
path = "/open"
action = "allow"

[[route]]
path = "/v1"
action = "allow"
allow_ips = ["10.0.0.0/8"]
strip_prefix = "/v1"

[[route]]
path = "/api"
action = "allow"
strip_prefix = "/api"

[[route]]
path = "/"
action = "allow"
client_cert = "required"
"#,
        dir.join("jwt.secret").display()
    );
    let proxy = Proxy::start_with(&test_config(backend.addr, OPTIONAL, &routes)).await;
    let token = hs256(serde_json::json!({"sub": "alice", "exp": now() + 600}));
    for (path, via) in [
        ("/admin/x", "/api/admin/x"),
        ("/local", "/api/local"),
        ("/tokens", "/api/TOKENS;x/y"),
    ] {
        let direct = get_once(proxy.addr, alice(), path).await.status;
        assert!(direct == 403 || direct == 401, "{path}: {direct}");
        let got = get1(
            &mut h1(proxy.addr, alice()).await,
            via,
            &[("authorization", &format!("Bearer {token}"))],
        )
        .await;
        assert_eq!(got.status, 403, "{via}: {}", got.body);
        assert!(got.body.contains("after strip_prefix"), "{}", got.body);
    }
    let got = get_once(proxy.addr, anonymous(), "/api/members").await;
    assert_eq!(got.status, 403, "{}", got.body);
    let mut send = h1(proxy.addr, alice()).await;
    let post = Request::post("/api/readonly")
        .header("host", "localhost")
        .body(empty())
        .unwrap();
    let got = read(send.send_request(post).await.unwrap()).await;
    assert_eq!(got.status, 405, "{}", got.body);
    // What the stripped paths' routes admit goes through.
    for (who, path) in [
        (alice(), "/api/readonly"),
        (alice(), "/api/members"),
        (alice(), "/api/open"),
        (anonymous(), "/api/open"),
        (anonymous(), "/api/ui"),
        // `/v1` forwards `/v1/x` as `/x`: its conditions guard `/x`, not the `/v1/x` sent here.
        (alice(), "/api/v1/x"),
    ] {
        assert_eq!(get_once(proxy.addr, who, path).await.status, 200, "{path}");
    }
    let targets: Vec<String> = backend.seen().into_iter().map(|s| s.target).collect();
    assert_eq!(
        targets,
        ["/readonly", "/members", "/open", "/open", "/ui", "/v1/x"]
    );
}

/// `strip_prefix`: `/api/colorize` reaches the backend as `/colorize`, query kept.
#[tokio::test]
async fn strip_prefix_rewrites_the_path() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(
        backend.addr,
        "[[route]]\npath = \"/api/colorize\"\naction = \"allow\"\nstrip_prefix = \"/api\"\n",
    )
    .await;
    assert_eq!(
        get_once(proxy.addr, alice(), "/API/colorize?render_factor=35")
            .await
            .status,
        200
    );
    assert_eq!(
        get_once(proxy.addr, alice(), "/api/other").await.status,
        200
    );
    let targets: Vec<String> = backend.seen().into_iter().map(|s| s.target).collect();
    assert_eq!(targets, ["/colorize?render_factor=35", "/api/other"]);
}
