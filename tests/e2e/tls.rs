//! Client-certificate enforcement: who gets through the handshake, who does not, and what the
//! log says about each refusal.

use std::sync::Arc;

use crate::common::*;

/// Starts a backend and a proxy, runs `client`, and asserts it was refused with `reason` in the
/// log next to the client's address, and that nothing reached the backend.
async fn assert_refused_with(cfg: Arc<rustls::ClientConfig>, reason: &str) {
    let (logs, _guard) = LogCapture::start();
    let backend = Backend::start().await;
    let proxy = Proxy::start(backend.addr, "").await;
    assert_refused(proxy.addr, cfg).await;
    let line = logs
        .wait_for(&["TLS handshake failed", &format!("reason=\"{reason}\"")])
        .await;
    assert!(line.contains("peer=127.0.0.1:"), "{line}");
    assert!(
        backend.seen().is_empty(),
        "backend saw {:?}",
        backend.seen()
    );
}

/// A client with a certificate from the CA gets through and the backend sees it.
#[tokio::test]
async fn valid_client_certificate_is_accepted() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(backend.addr, "").await;
    let got = get_once(proxy.addr, alice(), "/hello").await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body, "backend saw /hello");
    assert_eq!(backend.only().headers["x-ssl-client-verify"], "SUCCESS");
}

/// No certificate: refused at the handshake, logged as "no certificate".
#[tokio::test]
async fn no_certificate_is_refused() {
    assert_refused_with(client_config(None, &["http/1.1"]), "no certificate").await;
}

/// A certificate from another CA whose DN copies ours, with a subject copying a real client.
#[tokio::test]
async fn other_ca_with_copied_dn_is_refused() {
    let pki = test_pki();
    assert_refused_with(client_config(Some(&pki.impostor), &[]), "unknown issuer").await;
}

#[tokio::test]
async fn expired_certificate_is_refused() {
    assert_refused_with(client_config(Some(&test_pki().expired), &[]), "expired").await;
}

#[tokio::test]
async fn not_yet_valid_certificate_is_refused() {
    assert_refused_with(
        client_config(Some(&test_pki().not_yet_valid), &[]),
        "not yet valid",
    )
    .await;
}

/// A certificate listed in the configured CRL.
#[tokio::test]
async fn revoked_certificate_is_refused() {
    assert_refused_with(client_config(Some(&test_pki().revoked), &[]), "revoked").await;
}

/// A serverAuth-only certificate from our own CA is not a client certificate.
#[tokio::test]
async fn server_only_certificate_is_refused_as_client() {
    assert_refused_with(
        client_config(Some(&test_pki().server_only), &[]),
        "wrong key usage",
    )
    .await;
}

/// A client certificate whose keyUsage has keyEncipherment but not digitalSignature cannot
/// authenticate (it is not a signing key; OpenSSL's `ssl_client` purpose refuses it too), while
/// the same CA's certificate with digitalSignature passes.
#[tokio::test]
async fn key_usage_without_digital_signature_is_refused() {
    use rcgen::KeyUsagePurpose::{DigitalSignature, KeyEncipherment};
    let no_sign = client_with_key_usage("encipher-only", vec![KeyEncipherment]);
    assert_refused_with(client_config(Some(&no_sign), &[]), "wrong key usage").await;
    let backend = Backend::start().await;
    let proxy = Proxy::start(backend.addr, "").await;
    let signs = client_with_key_usage("signs", vec![DigitalSignature, KeyEncipherment]);
    let got = get_once(proxy.addr, client_config(Some(&signs), &[]), "/").await;
    assert_eq!(got.status, 200);
}

#[tokio::test]
async fn certificate_without_its_key_is_refused() {
    assert_refused_with(without_its_key(), "bad signature").await;
}

/// A leaf issued by an intermediate is accepted when the client sends the intermediate, and
/// refused when it does not.
#[tokio::test]
async fn intermediate_issued_client_is_accepted_with_its_chain() {
    let pki = test_pki();
    let backend = Backend::start().await;
    let proxy = Proxy::start(backend.addr, "").await;
    let got = get_once(
        proxy.addr,
        client_config(Some(&pki.inter_client), &[]),
        "/x",
    )
    .await;
    assert_eq!(got.status, 200);
    let seen = backend.only();
    assert_eq!(seen.headers["x-ssl-client-dn"], "CN=inter-client");
    assert_eq!(
        seen.headers["x-ssl-client-i-dn"],
        "CN=certgate test intermediate"
    );

    let leaf_only = Identity {
        chain: vec![pki.inter_client.chain[0].clone()],
        key: pki.inter_client.key.clone_key(),
    };
    assert_refused(proxy.addr, client_config(Some(&leaf_only), &[])).await;
}

/// Resumption would skip the certificate and revocation checks: a client that caches sessions
/// still gets a full handshake on its second connection, in TLS 1.3 and in TLS 1.2.
#[tokio::test]
async fn second_connection_does_a_full_handshake() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(backend.addr, "").await;
    for versions in [
        &[&rustls::version::TLS13][..],
        &[&rustls::version::TLS12][..],
    ] {
        let cfg = client_config_versions(Some(&test_pki().alice), &["http/1.1"], versions);
        for round in 0..2 {
            let mut send = {
                let tls = tls_connect(proxy.addr, cfg.clone()).await.unwrap();
                assert_eq!(
                    tls.get_ref().1.handshake_kind(),
                    Some(rustls::HandshakeKind::Full),
                    "round {round} with {versions:?}"
                );
                let (send, conn) =
                    hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                        .await
                        .unwrap();
                tokio::spawn(conn);
                send
            };
            // A full exchange, so a TLS 1.3 ticket would have arrived if one were sent.
            assert_eq!(get1(&mut send, "/", &[]).await.status, 200);
        }
    }
}

/// `client_auth = "optional"`: no certificate is let in with Verify NONE and no other identity
/// header; an invalid certificate is still refused.
#[tokio::test]
async fn optional_mode_admits_anonymous_but_not_invalid() {
    let backend = Backend::start().await;
    let proxy =
        Proxy::start_with(&test_config(backend.addr, "client_auth = \"optional\"", "")).await;
    let got = get_once(proxy.addr, client_config(None, &["http/1.1"]), "/public").await;
    assert_eq!(got.status, 200);
    let seen = backend.only();
    assert_eq!(seen.headers["x-ssl-client-verify"], "NONE");
    for h in [
        "x-ssl-client-dn",
        "x-ssl-client-i-dn",
        "x-ssl-client-cert",
        "x-ssl-client-serial",
        "x-ssl-client-fingerprint",
    ] {
        assert!(
            !seen.headers.contains_key(h),
            "{h} present without a certificate"
        );
    }
    assert_refused(proxy.addr, client_config(Some(&test_pki().expired), &[])).await;
    assert_refused(proxy.addr, client_config(Some(&test_pki().impostor), &[])).await;
    assert_eq!(backend.seen().len(), 1);
}

/// `min_version = "1.3"` refuses a TLS 1.2-only client; the default accepts it.
#[tokio::test]
async fn min_version_13_refuses_tls12() {
    let backend = Backend::start().await;
    let proxy = Proxy::start_with(&test_config(backend.addr, "min_version = \"1.3\"", "")).await;
    let tls12 = client_config_versions(Some(&test_pki().alice), &[], &[&rustls::version::TLS12]);
    assert!(tls_connect(proxy.addr, tls12.clone()).await.is_err());
    let default = Proxy::start(backend.addr, "").await;
    assert_eq!(get_once(default.addr, tls12, "/").await.status, 200);
}

/// A client that connects and sends nothing is cut off after the handshake timeout and logged.
#[tokio::test]
async fn silent_client_hits_the_handshake_timeout() {
    let (logs, _guard) = LogCapture::start();
    let backend = Backend::start().await;
    let proxy = Proxy::start_with(&test_config(
        backend.addr,
        "handshake_timeout = \"300ms\"",
        "",
    ))
    .await;
    let mut tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tokio::io::AsyncReadExt::read(&mut tcp, &mut buf),
    )
    .await
    .expect("server did not close the silent connection");
    assert!(matches!(n, Ok(0) | Err(_)));
    logs.wait_for(&["TLS handshake failed", "reason=\"timeout\""])
        .await;
}

/// curl, a second TLS implementation (OpenSSL), with and without the client certificate.
#[tokio::test]
async fn curl_with_and_without_client_certificate() {
    let pki = test_pki();
    let backend = Backend::start().await;
    let proxy = Proxy::start(backend.addr, "").await;
    let url = format!("https://localhost:{}/curl", proxy.addr.port());
    let resolve = format!("localhost:{}:127.0.0.1", proxy.addr.port());
    let d = |f: &str| pki.dir.join(f).display().to_string();
    let with = tokio::process::Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "20",
            "--resolve",
            &resolve,
            "--cacert",
            &d("ca.crt"),
        ])
        .args(["--cert", &d("alice.crt"), "--key", &d("alice.key"), &url])
        .output()
        .await
        .expect("curl is installed");
    assert!(
        with.status.success(),
        "{}",
        String::from_utf8_lossy(&with.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&with.stdout), "backend saw /curl");
    let without = tokio::process::Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "20",
            "--resolve",
            &resolve,
            "--cacert",
            &d("ca.crt"),
            &url,
        ])
        .output()
        .await
        .unwrap();
    assert!(!without.status.success());
    assert_eq!(backend.seen().len(), 1);
}

/// A client that leaves Nagle's algorithm on gets the first answer on a new TLS 1.3 connection
/// at once, not after the kernel's 40 ms delayed ACK of its Finished (certgate sends nothing
/// after the handshake: no session tickets). The bound, 20 ms, is far above the fix (~2 ms on
/// loopback) and far below the stall (~44 ms before it); the median of seven connections is
/// taken so one slow scheduling does not decide.
#[tokio::test]
async fn a_nagle_client_is_not_stalled_after_the_handshake() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(backend.addr, "").await;
    let pki = test_pki();
    let python = python();
    let out = tokio::process::Command::new(&python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/e2e/tools/nagle_client.py"
        ))
        .arg("127.0.0.1")
        .arg(proxy.addr.port().to_string())
        .arg(pki.dir.join("ca.crt"))
        .arg(pki.dir.join("alice.crt"))
        .arg(pki.dir.join("alice.key"))
        .arg("7")
        .kill_on_drop(true)
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {python}: {e}"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut ms: Vec<f64> = serde_json::from_slice(&out.stdout).unwrap();
    ms.sort_by(f64::total_cmp);
    assert!(ms[3] < 20.0, "time to first byte, ms: {ms:?}");
    assert_eq!(backend.seen().len(), 7);
}
