//! Operations: reload without dropping anyone, revocation that bites at once on open
//! connections, CRL freshness, metrics, health endpoints.

use std::path::Path;
use std::time::Duration;

use certgate::pki::{self, Profile, Revoked, San, Spec};
use http::Request;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::*;

const LIMIT: Duration = Duration::from_secs(30);

fn serial_of(der: &[u8]) -> rcgen::SerialNumber {
    let (_, c) = x509_parser::parse_x509_certificate(der).unwrap();
    rcgen::SerialNumber::from_slice(c.raw_serial())
}

/// Writes a CRL revoking `revoked` (DER certificates) into `dir/ca.crl`, valid for `days`.
pub(crate) fn write_crl(dir: &Path, revoked: &[&[u8]], days: i64) {
    let now = time::OffsetDateTime::now_utc();
    let list: Vec<Revoked> = revoked
        .iter()
        .map(|der| Revoked {
            serial: serial_of(der),
            at: now - time::Duration::minutes(1),
            reason: Some(rcgen::RevocationReason::AffiliationChanged),
        })
        .collect();
    let crl = pki::crl(&test_pki().ca, &list, 100, days).unwrap();
    pki::write_file(&dir.join("ca.crl"), crl.as_bytes(), 0o644).unwrap();
}

/// A new server certificate from the test CA, written over `dir/server.crt` and `.key`.
fn rotate_server_cert(dir: &Path) -> String {
    let mut spec = Spec::new(Profile::Server, "localhost", 30);
    spec.sans = vec![San::Dns("localhost".into()), San::Ip([127, 0, 0, 1].into())];
    let new = pki::issue(&spec, Some(&test_pki().ca)).unwrap();
    pki::write_file(&dir.join("server.key"), new.key_pem().as_bytes(), 0o600).unwrap();
    let chain = format!("{}{}", new.cert_pem, test_pki().ca.cert_pem);
    pki::write_file(&dir.join("server.crt"), chain.as_bytes(), 0o644).unwrap();
    new.serial_hex()
}

async fn server_serial(addr: std::net::SocketAddr) -> String {
    let tls = tls_connect(addr, alice()).await.unwrap();
    let der = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    let (_, c) = x509_parser::parse_x509_certificate(&der).unwrap();
    c.raw_serial().iter().map(|b| format!("{b:02X}")).collect()
}

/// A client revoked while it holds an open keep-alive connection (HTTP/1.1 and HTTP/2): its
/// next request is refused with 403 "certificate revoked" and the connection is closed; a second
/// client on another connection is unaffected; a new connection from the revoked client fails
/// at the handshake.
#[tokio::test]
async fn revocation_bites_open_keepalive_connections() {
    let (logs, _guard) = LogCapture::start();
    let backend = Backend::start().await;
    let path = own_config("revoke-live", backend.addr, "", "");
    let proxy = Proxy::start_file(&path).await;
    let pki = test_pki();
    let mut h1_alice = h1(proxy.addr, alice()).await;
    let mut h2_alice = h2(proxy.addr, client_config(Some(&pki.alice), &["h2"])).await;
    let mut other = h1(
        proxy.addr,
        client_config(Some(&pki.inter_client), &["http/1.1"]),
    )
    .await;
    let url = |p: &str| format!("https://localhost:{}{p}", proxy.addr.port());
    assert_eq!(get1(&mut h1_alice, "/before", &[]).await.status, 200);
    let r = h2_alice
        .send_request(Request::get(url("/before2")).body(empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(get1(&mut other, "/before3", &[]).await.status, 200);

    write_crl(path.parent().unwrap(), &[&pki.alice.chain[0]], 30);
    let report = proxy.shared.reload("test").await.expect("reload");
    assert!(
        report
            .changes
            .iter()
            .any(|c| c.contains("ca.crl replaced (1 -> 1 revoked)")),
        "{:?}",
        report.changes
    );

    let got = get1(&mut h1_alice, "/after", &[]).await;
    assert_eq!(got.status, 403);
    assert!(
        got.json()["message"]
            .as_str()
            .unwrap()
            .contains("certificate revoked"),
        "{}",
        got.body
    );
    assert_eq!(got.headers["connection"], "close");
    let next = h1_alice
        .send_request(
            Request::get("/again")
                .header("host", "localhost")
                .body(empty())
                .unwrap(),
        )
        .await;
    assert!(next.is_err(), "the revoked client's connection stayed open");

    let r = h2_alice
        .send_request(Request::get(url("/after2")).body(empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let next = tokio::time::timeout(LIMIT, async {
        h2_alice.ready().await?;
        h2_alice
            .send_request(Request::get(url("/again2")).body(empty()).unwrap())
            .await
    })
    .await
    .expect("hang");
    assert!(
        next.is_err(),
        "the revoked client's HTTP/2 connection stayed open"
    );

    assert_eq!(get1(&mut other, "/after3", &[]).await.status, 200);
    assert_refused(proxy.addr, alice()).await;
    logs.wait_for(&["request refused", "recheck revoked"]).await;
    let targets: Vec<String> = backend.seen().into_iter().map(|s| s.target).collect();
    assert_eq!(targets, ["/before", "/before2", "/before3", "/after3"]);
}

/// The server certificate is rotated while an SSE stream and a WebSocket are open: both keep
/// flowing, and a new connection sees the new certificate's serial.
#[tokio::test]
async fn certificate_rotation_keeps_streams_open() {
    let backend = Backend::start().await;
    let path = own_config("rotate", backend.addr, "", "");
    let proxy = Proxy::start_file(&path).await;
    let old_serial = server_serial(proxy.addr).await;

    let mut sse_conn = h1(proxy.addr, alice()).await;
    let sse = sse_conn
        .send_request(
            Request::get("/sse")
                .header("host", "localhost")
                .body(empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let mut sse = sse.into_body();
    assert_eq!(
        sse.frame().await.unwrap().unwrap().into_data().unwrap(),
        "data: one\n\n"
    );

    let (_, mut ws) = open_websocket(proxy.addr).await;
    ws.write_all(b"before").await.unwrap();
    let mut buf = [0u8; 6];
    ws.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"before");

    let new_serial = rotate_server_cert(path.parent().unwrap());
    let report = proxy.shared.reload("test").await.expect("reload");
    assert!(
        report
            .changes
            .iter()
            .any(|c| c.contains(&format!("{old_serial} -> {new_serial}"))),
        "{:?}",
        report.changes
    );

    backend.release();
    let second = tokio::time::timeout(LIMIT, sse.frame()).await.unwrap();
    assert_eq!(
        second.unwrap().unwrap().into_data().unwrap(),
        "data: two\n\n"
    );
    ws.write_all(b"after!").await.unwrap();
    tokio::time::timeout(LIMIT, ws.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"after!");
    assert_eq!(server_serial(proxy.addr).await, new_serial);
}

/// A CRL replaced with garbage: the reload fails naming the file, the old CRL stays in force
/// (the revoked client is still out, the valid one still in), and the failure is counted.
#[tokio::test]
async fn garbage_crl_keeps_the_old_state() {
    let backend = Backend::start().await;
    let path = own_config(
        "garbage-crl",
        backend.addr,
        "",
        "[admin]\nlisten = \"127.0.0.1:0\"\n",
    );
    let proxy = Proxy::start_file(&path).await;
    let crl = path.parent().unwrap().join("ca.crl");
    std::fs::write(
        &crl,
        "-----BEGIN X509 CRL-----\ngarbage\n-----END X509 CRL-----\n",
    )
    .unwrap();
    let err = proxy
        .shared
        .reload("test")
        .await
        .expect_err("garbage accepted");
    let msg = err.to_string();
    assert!(
        msg.contains(&crl.display().to_string()) && msg.contains("tls.crl"),
        "{msg}"
    );
    assert_refused(proxy.addr, client_config(Some(&test_pki().revoked), &[])).await;
    assert_eq!(get_once(proxy.addr, alice(), "/still").await.status, 200);
    let metrics = admin_get(proxy.admin.unwrap(), "/metrics").await.1;
    assert!(
        metrics.contains("certgate_reloads_total{result=\"failure\"} 1"),
        "{metrics}"
    );
}

/// With `[reload] watch`, writing a new CRL is enough: the watcher notices the content change,
/// reloads, and the revoked client is out within the interval.
#[tokio::test]
async fn watched_crl_change_reloads_by_itself() {
    let (logs, _guard) = LogCapture::start();
    let backend = Backend::start().await;
    let path = own_config("watch", backend.addr, "", "[reload]\nwatch = \"100ms\"\n");
    let proxy = Proxy::start_file(&path).await;
    assert_eq!(get_once(proxy.addr, alice(), "/x").await.status, 200);
    write_crl(path.parent().unwrap(), &[&test_pki().alice.chain[0]], 30);
    logs.wait_for(&["reload complete", "file change"]).await;
    assert_refused(proxy.addr, alice()).await;
}

/// Reload under load: a bounded request loop (new connections and keep-alive) runs across 20
/// reloads with zero failed requests.
#[tokio::test]
async fn reload_under_load_fails_no_request() {
    let backend = Backend::start().await;
    let path = own_config("reload-load", backend.addr, "", "");
    let proxy = Proxy::start_file(&path).await;
    let addr = proxy.addr;
    let (done_tx, mut done_rx) = tokio::sync::watch::channel(false);
    let load = tokio::spawn(async move {
        let mut ok = 0usize;
        let mut failed = Vec::new();
        let mut keep = h1(addr, alice()).await;
        let mut i = 0usize;
        while !*done_rx.borrow_and_update() && i < 5_000 {
            i += 1;
            let got = if i.is_multiple_of(3) {
                let mut fresh = h1(addr, alice()).await;
                get1(&mut fresh, "/load", &[]).await
            } else {
                get1(&mut keep, "/load", &[]).await
            };
            if got.status == 200 {
                ok += 1
            } else {
                failed.push(got.status)
            }
        }
        (ok, failed)
    });
    for n in 0..20 {
        // Alternate between two server certificates so every reload really changes something.
        if n % 2 == 0 {
            rotate_server_cert(path.parent().unwrap());
        }
        proxy.shared.reload("test").await.expect("reload");
        tokio::task::yield_now().await;
    }
    done_tx.send(true).unwrap();
    let (ok, failed) = tokio::time::timeout(LIMIT, load).await.unwrap().unwrap();
    assert!(failed.is_empty(), "failed requests: {failed:?}");
    assert!(ok > 0);
}

/// `crl_expired = "reject"` (the default) refuses the clients of a CA whose CRL is past its
/// next update; `"warn"` accepts them and logs.
#[tokio::test]
async fn expired_crl_rejects_or_warns() {
    let (logs, _guard) = LogCapture::start();
    let backend = Backend::start().await;
    for (mode, accepted) in [("reject", false), ("warn", true)] {
        let path = own_config(
            &format!("crl-expired-{mode}"),
            backend.addr,
            &format!("crl_expired = \"{mode}\""),
            "",
        );
        // A CRL whose next update is already in the past.
        let now = time::OffsetDateTime::now_utc();
        let params = rcgen::CertificateRevocationListParams {
            this_update: now - time::Duration::days(10),
            next_update: now - time::Duration::days(1),
            crl_number: rcgen::SerialNumber::from(7u64),
            issuing_distribution_point: None,
            revoked_certs: vec![],
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        let issuer = rcgen::Issuer::from_ca_cert_pem(
            &test_pki().ca.cert_pem,
            rcgen::KeyPair::from_pem(&test_pki().ca.key_pem()).unwrap(),
        )
        .unwrap();
        let crl = params.signed_by(&issuer).unwrap().pem().unwrap();
        std::fs::write(path.parent().unwrap().join("ca.crl"), crl).unwrap();
        let proxy = Proxy::start_file(&path).await;
        if accepted {
            assert_eq!(get_once(proxy.addr, alice(), "/").await.status, 200);
            logs.wait_for(&["CRL is past its next update", "still accepted"])
                .await;
        } else {
            assert_refused(proxy.addr, alice()).await;
            logs.wait_for(&["TLS handshake failed", "reason=\"expired CRL\""])
                .await;
        }
    }
}

/// `/livez` answers; `/readyz` is 503 while the backend refuses connections and 200 once it
/// listens again.
#[tokio::test]
async fn readyz_follows_the_backend() {
    let dead = backend::dead_addr().await;
    let proxy = Proxy::start(dead, "[admin]\nlisten = \"127.0.0.1:0\"\n").await;
    let admin = proxy.admin.unwrap();
    assert_eq!(admin_get(admin, "/livez").await.0, 200);
    let (status, body) = admin_get(admin, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains(&dead.to_string()), "{body}");
    // The backend comes back on the same address.
    let listener = tokio::net::TcpListener::bind(dead).await.unwrap();
    let (status, _) = admin_get(admin, "/readyz").await;
    assert_eq!(status, 200);
    drop(listener);
    assert_eq!(admin_get(admin, "/nope").await.0, 404);
}

use crate::common::backend;

/// The metrics output after known traffic: requests by class and route, handshake failures by
/// reason, denials by rule, rate-limited, certificate and CRL gauges — parsed line by line.
#[tokio::test]
async fn metrics_count_known_traffic() {
    let backend = Backend::start().await;
    let extra = "[admin]\nlisten = \"127.0.0.1:0\"\n\n[[rate_limit]]\nname = \"api\"\nrate = \"1/m\"\nburst = 1\n\n[[route]]\npath = \"/limited\"\naction = \"allow\"\nrate_limit = \"api\"\n\n[[route]]\npath = \"/denied\"\naction = \"deny\"\n";
    let proxy = Proxy::start(backend.addr, extra).await;
    let mut s = h1(proxy.addr, alice()).await;
    for _ in 0..3 {
        assert_eq!(get1(&mut s, "/ok", &[]).await.status, 200);
    }
    assert_eq!(get1(&mut s, "/denied", &[]).await.status, 403);
    assert_eq!(get1(&mut s, "/limited", &[]).await.status, 200);
    assert_eq!(get1(&mut s, "/limited", &[]).await.status, 429);
    assert_refused(proxy.addr, client_config(None, &["http/1.1"])).await;
    assert_refused(proxy.addr, client_config(Some(&test_pki().expired), &[])).await;
    let (status, text) = admin_get(proxy.admin.unwrap(), "/metrics").await;
    assert_eq!(status, 200);
    let value = |series: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
            .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert_eq!(
        value("certgate_requests_total{class=\"2xx\",route=\"none\"}"),
        3.0
    );
    assert_eq!(
        value("certgate_requests_total{class=\"2xx\",route=\"route[0] /limited\"}"),
        1.0
    );
    assert_eq!(
        value("certgate_requests_total{class=\"4xx\",route=\"route[1] /denied\"}"),
        1.0
    );
    assert_eq!(
        value("certgate_denied_total{rule=\"route[1] /denied deny\"}"),
        1.0
    );
    assert_eq!(value("certgate_rate_limited_total{zone=\"api\"}"), 1.0);
    assert_eq!(
        value("certgate_tls_handshake_failures_total{reason=\"no certificate\"}"),
        1.0
    );
    assert_eq!(
        value("certgate_tls_handshake_failures_total{reason=\"expired\"}"),
        1.0
    );
    assert_eq!(value("certgate_request_duration_seconds_count"), 6.0);
    assert!(value("certgate_open_connections") >= 1.0);
    let not_after = value("certgate_server_certificate_not_after_seconds");
    assert!(not_after > time::OffsetDateTime::now_utc().unix_timestamp() as f64);
    assert!(value("certgate_crl_next_update_seconds{crl=\"ca.crl\"}") > 0.0);
    assert!(value("certgate_client_certificate_soonest_expiry_seconds") > 0.0);
    // The backend's URL (here on 127.0.0.1) labels the per-server metrics: it comes from the
    // config, not from a client.
    let backend_label = format!("server=\"http://{}\"", backend.addr);
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let line = line.replace(&backend_label, "");
        assert!(
            !line.contains("admin@face.analyze") && !line.contains("127.0.0.1"),
            "per-client label: {line}"
        );
    }
    assert_eq!(
        value(&format!(
            "certgate_upstream_server_requests_total{{upstream=\"default\",{backend_label}}}"
        )),
        4.0,
        "the three /ok and the admitted /limited"
    );
}
