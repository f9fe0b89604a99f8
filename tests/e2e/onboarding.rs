//! People without a working certificate (spec §13): `on_failure = "help"` answers a missing or
//! refused certificate with a page (HTML for browsers, JSON for the rest) and never forwards,
//! and `certs invite` links hand out a `.p12` once. Over real TLS, with rustls + hyper, curl,
//! openssl and NSS's pk12util as the other side.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use http::Request;
use rustls::ClientConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::common::*;

const HELP: &str =
    "on_failure = \"help\"\nhelp_contact = \"Ask <it@example.com> for a \\\"certificate\\\".\"";

/// One request on a fresh connection: method, path, and whether it asks for HTML.
async fn ask(
    addr: SocketAddr,
    cfg: Arc<ClientConfig>,
    method: &str,
    path: &str,
    html: bool,
) -> Got {
    let mut send = h1(addr, cfg).await;
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost");
    if html {
        b = b.header(
            "accept",
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
        );
    }
    let resp = send
        .send_request(b.body(empty()).unwrap())
        .await
        .expect("response");
    read(resp).await
}

/// The security headers every page of certgate's own carries.
fn assert_page_headers(got: &Got) {
    assert_eq!(got.headers["content-type"], "text/html; charset=utf-8");
    let csp = got.headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.starts_with("default-src 'none'; style-src 'sha256-"),
        "{csp}"
    );
    assert!(!csp.contains("unsafe"), "{csp}");
    assert_eq!(got.headers["cache-control"], "no-store");
    assert_eq!(got.headers["referrer-policy"], "no-referrer");
    for tag in ["<script", "<img", "<link", "<iframe", "<object", "<embed"] {
        assert!(!got.body.contains(tag), "{tag} on the page");
    }
}

/// Every reason a certificate is missing or refused gets its own page and JSON, the log line
/// and metric of a refused handshake, and nothing reaches the backend.
#[tokio::test]
async fn help_mode_names_each_reason_and_forwards_nothing() {
    let (logs, _guard) = LogCapture::start();
    let pki = test_pki();
    let backend = Backend::start().await;
    let proxy = Proxy::start_with(&test_config(
        backend.addr,
        HELP,
        "[limits]\nhandshake_failures_per_ip = \"1000/m\"\n",
    ))
    .await;
    let no_sign = client_with_key_usage(
        "encipher-only",
        vec![rcgen::KeyUsagePurpose::KeyEncipherment],
    );
    let cases: Vec<(Arc<ClientConfig>, &str, &str, &str)> = vec![
        (
            client_config(None, &["http/1.1"]),
            "no certificate",
            "client_certificate_required",
            "did not present a client certificate",
        ),
        (
            client_config(Some(&pki.expired), &[]),
            "expired",
            "client_certificate_invalid",
            "Your certificate expired on ",
        ),
        (
            client_config(Some(&pki.not_yet_valid), &[]),
            "not yet valid",
            "client_certificate_invalid",
            "Your certificate is valid only from ",
        ),
        (
            client_config(Some(&pki.revoked), &[]),
            "revoked",
            "client_certificate_invalid",
            "has been revoked",
        ),
        (
            client_config(Some(&pki.impostor), &[]),
            "unknown issuer",
            "client_certificate_invalid",
            "a certificate authority this site does not trust",
        ),
        (
            client_config(Some(&no_sign), &[]),
            "wrong key usage",
            "client_certificate_invalid",
            "not made for signing in",
        ),
    ];
    for (cfg, reason, code, sentence) in cases {
        let page = ask(proxy.addr, cfg.clone(), "GET", "/app?x=1", true).await;
        assert_eq!(page.status, 403, "{reason}");
        assert_page_headers(&page);
        assert!(page.body.contains(sentence), "{reason}: {}", page.body);
        assert!(
            page.body.contains(&format!("data-reason=\"{reason}\"")),
            "{reason}"
        );
        // The contact line, escaped.
        assert!(
            page.body
                .contains("Ask &lt;it@example.com&gt; for a &quot;certificate&quot;."),
            "{reason}"
        );
        for platform in [
            "Windows",
            "macOS",
            "Firefox",
            "iPhone",
            "Android",
            "Make the browser ask again",
        ] {
            assert!(page.body.contains(platform), "{reason}: no {platform}");
        }
        // The presented certificate, when there was one.
        assert_eq!(
            page.body.contains("id=\"fingerprint\""),
            reason != "no certificate",
            "{reason}"
        );
        let json = ask(proxy.addr, cfg, "GET", "/api/predict", false).await;
        assert_eq!(json.status, 403);
        assert_eq!(json.headers["content-type"], "application/json");
        let v = json.json();
        assert_eq!(v["error"], code, "{reason}");
        let message = v["message"].as_str().unwrap();
        assert!(message.contains(sentence), "{reason}: {message}");
        assert!(message.ends_with("for a \"certificate\"."), "{message}");
        logs.wait_for(&[
            "client certificate refused",
            &format!("reason=\"{reason}\""),
        ])
        .await;
    }
    // The expired certificate's page names its subject and its end date.
    let expired = ask(
        proxy.addr,
        client_config(Some(&pki.expired), &[]),
        "GET",
        "/",
        true,
    )
    .await;
    assert!(
        expired.body.contains("CN=expired-client"),
        "{}",
        expired.body
    );
    assert!(logs.text().contains("peer=127.0.0.1:"));
    assert!(
        backend.seen().is_empty(),
        "backend saw {:?}",
        backend.seen()
    );
    // A valid client is served as before.
    let got = get_once(proxy.addr, alice(), "/hello").await;
    assert_eq!(got.status, 200);
    assert_eq!(backend.only().headers["x-ssl-client-verify"], "SUCCESS");
}

/// Help mode never admits a client that cannot prove it holds the certificate's key: the
/// handshake fails as in close mode.
#[tokio::test]
async fn help_mode_still_demands_proof_of_possession() {
    let (logs, _guard) = LogCapture::start();
    let backend = Backend::start().await;
    let proxy = Proxy::start_with(&test_config(backend.addr, HELP, "")).await;
    assert_refused(proxy.addr, without_its_key()).await;
    logs.wait_for(&["TLS handshake failed", "reason=\"bad signature\""])
        .await;
    assert!(backend.seen().is_empty());
}

/// Over HTTP/2, and for a WebSocket upgrade, a refused certificate gets the same answer, and
/// close mode is unchanged (the handshake is refused).
#[tokio::test]
async fn help_mode_over_http2_and_for_websockets() {
    let backend = Backend::start().await;
    let proxy = Proxy::start_with(&test_config(backend.addr, HELP, "")).await;
    let mut send = h2(
        proxy.addr,
        client_config(Some(&test_pki().revoked), &["h2"]),
    )
    .await;
    let req = Request::get("https://localhost/queue/join")
        .header("accept", "text/html")
        .body(empty())
        .unwrap();
    let got = read(send.send_request(req).await.unwrap()).await;
    assert_eq!(got.status, 403);
    assert!(got.body.contains("has been revoked"));
    // A WebSocket upgrade without a certificate: refused, not upgraded.
    let mut send = h1(proxy.addr, client_config(None, &["http/1.1"])).await;
    let got = read(
        send.send_request(websocket_request("/queue/ws"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(got.status, 403);
    assert_eq!(got.json()["error"], "client_certificate_required");
    assert!(
        backend.seen().is_empty(),
        "backend saw {:?}",
        backend.seen()
    );

    let close = Proxy::start(backend.addr, "").await;
    assert_refused(close.addr, client_config(Some(&test_pki().revoked), &[])).await;
    assert_refused(close.addr, client_config(None, &["http/1.1"])).await;
}

/// A browser whose certificate is revoked while it is connected gets the revoked page on its
/// next request (and the connection closes), then on every new connection.
#[tokio::test]
async fn revoked_while_connected_gets_the_page() {
    let backend = Backend::start().await;
    let path = own_config("help-revoke-live", backend.addr, HELP, "");
    let proxy = Proxy::start_file(&path).await;
    let pki = test_pki();
    let mut conn = h1(proxy.addr, alice()).await;
    let html = [("accept", "text/html")];
    assert_eq!(get1(&mut conn, "/before", &html).await.status, 200);
    crate::ops::write_crl(path.parent().unwrap(), &[&pki.alice.chain[0]], 30);
    proxy.shared.reload("test").await.expect("reload");
    let got = get1(&mut conn, "/after", &html).await;
    assert_eq!(got.status, 403);
    assert!(got.body.contains("data-reason=\"revoked\""), "{}", got.body);
    assert!(got.body.contains("CN=admin@face.analyze"));
    assert_eq!(got.headers["connection"], "close");
    let again = ask(proxy.addr, alice(), "GET", "/", true).await;
    assert!(again.body.contains("has been revoked"));
    let seen: Vec<String> = backend.seen().into_iter().map(|s| s.target).collect();
    assert_eq!(seen, ["/before"]);
}

/// Whatever a certificate's fields hold, the page shows it as text.
#[tokio::test]
async fn certificate_fields_cannot_inject_markup() {
    let backend = Backend::start().await;
    let proxy = Proxy::start_with(&test_config(backend.addr, HELP, "")).await;
    let evil = custom_client(|p| {
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "<script>alert(\"cn\")</script>");
        p.distinguished_name.push(
            rcgen::DnType::OrganizationName,
            "\"><img src=x onerror=alert(1)>",
        );
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now - time::Duration::days(10);
        p.not_after = now - time::Duration::days(1);
    });
    let got = ask(
        proxy.addr,
        client_config(Some(&evil), &[]),
        "GET",
        "/",
        true,
    )
    .await;
    assert_eq!(got.status, 403);
    assert!(got.body.contains("expired on"));
    assert!(!got.body.contains("<script"), "{}", got.body);
    assert!(!got.body.contains("<img"), "{}", got.body);
    // Shown as text (RFC 2253 puts its own backslashes before the DN's specials).
    assert!(got.body.contains("&lt;script"), "{}", got.body);
    assert!(got.body.contains("&lt;img src=x"), "{}", got.body);
    assert_page_headers(&got);
}

/// With `client_auth = "optional"`, a client without a certificate is as before (routes that
/// need none serve it); an invalid certificate gets the help page instead of a failed handshake.
#[tokio::test]
async fn optional_mode_with_help() {
    let backend = Backend::start().await;
    let proxy = Proxy::start_with(&test_config(
        backend.addr,
        "client_auth = \"optional\"\non_failure = \"help\"",
        "[[route]]\npath = \"/public\"\naction = \"allow\"\n\n[[route]]\npath = \"/\"\naction = \"allow\"\nclient_cert = \"required\"\n",
    ))
    .await;
    let anon = client_config(None, &["http/1.1"]);
    assert_eq!(
        get_once(proxy.addr, anon.clone(), "/public/x").await.status,
        200
    );
    assert_eq!(get_once(proxy.addr, anon, "/private").await.status, 403);
    let expired = client_config(Some(&test_pki().expired), &[]);
    let got = get_once(proxy.addr, expired, "/public/x").await;
    assert_eq!(got.status, 403);
    assert_eq!(got.json()["error"], "client_certificate_invalid");
    assert_eq!(backend.seen().len(), 1);
}

/// Refused certificates in help mode count towards `handshake_failures_per_ip` as refused
/// handshakes do: past the limit the address is cut off before the handshake.
#[tokio::test]
async fn help_mode_failures_are_throttled() {
    let (logs, _guard) = LogCapture::start();
    let backend = Backend::start().await;
    let proxy = Proxy::start_with(&test_config(
        backend.addr,
        HELP,
        "[limits]\nhandshake_failures_per_ip = \"3/m\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n",
    ))
    .await;
    for _ in 0..4 {
        let got = get_once(
            proxy.addr,
            client_config(Some(&test_pki().impostor), &[]),
            "/",
        )
        .await;
        assert_eq!(got.status, 403);
    }
    logs.wait_for(&["too many failed handshakes"]).await;
    assert!(tls_connect(proxy.addr, alice()).await.is_err());
    // Counted in the handshake-failure metric under its reason, as a refused handshake is.
    let (_, metrics) = admin_get(proxy.admin.unwrap(), "/metrics").await;
    assert!(
        metrics.contains("certgate_tls_handshake_failures_total{reason=\"unknown issuer\"} 4"),
        "{metrics}"
    );
}

// ---- invitations ----

/// A CA made by `certs init-ca`, an enroll folder, and a help-mode proxy (the test PKI's server
/// certificate) that trusts that CA and serves the folder.
struct Site {
    dir: PathBuf,
    ca: PathBuf,
    enroll: PathBuf,
    config: PathBuf,
}

fn make_site(name: &str, tls_extra: &str, extra: &str) -> Site {
    let dir = scratch_dir(name);
    let ca = dir.join("ca");
    let enroll = dir.join("invites");
    certgate_ok(&["certs", "init-ca", "--dir", ca.to_str().unwrap()]);
    std::fs::create_dir(&enroll).unwrap();
    let pki = test_pki();
    let config = dir.join("certgate.toml");
    std::fs::write(
        &config,
        format!(
            "[listen]\nhttps = \"127.0.0.1:0\"\n\n[tls]\ncert = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\n{tls_extra}\n\n\
             [upstream]\nurl = \"http://127.0.0.1:9\"\n\n[enroll]\ndir = \"{}\"\n\n{extra}\n",
            pki.dir.join("server.crt").display(),
            pki.dir.join("server.key").display(),
            ca.join("ca.crt").display(),
            enroll.display(),
        ),
    )
    .unwrap();
    Site {
        dir,
        ca,
        enroll,
        config,
    }
}

impl Site {
    /// `certs invite` for `name`: the link's path.
    fn invite(&self, name: &str, extra: &[&str]) -> String {
        let mut args = vec![
            "certs",
            "invite",
            "--dir",
            self.ca.to_str().unwrap(),
            "--name",
            name,
            "--enroll-dir",
            self.enroll.to_str().unwrap(),
            "--url",
            "https://localhost:8443",
        ];
        args.extend_from_slice(extra);
        let out = certgate_ok(&args);
        let link = out
            .split_whitespace()
            .find(|w| w.starts_with("https://localhost:8443/.well-known/certgate/enroll/"))
            .unwrap_or_else(|| panic!("no link in {out}"));
        link.trim_start_matches("https://localhost:8443")
            .to_string()
    }
}

/// Moves the expiry of every invitation in `enroll` into the past (rather than wait for it).
fn age_invitations(enroll: &Path) {
    for entry in std::fs::read_dir(enroll).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            let mut v: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            v["expires"] = serde_json::json!(time::OffsetDateTime::now_utc().unix_timestamp() - 1);
            std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
        }
    }
}

/// `certs list`'s row for `name`.
fn list_row(ca: &str, name: &str) -> String {
    let table = certgate_ok(&["certs", "list", "--dir", ca]);
    table
        .lines()
        .find(|l| l.starts_with(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in {table}"))
        .to_string()
}

/// Files in `dir`, by name.
fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

fn password_on(page: &str) -> String {
    let start = page.find("id=\"password\">").expect("password on the page") + 14;
    page[start..][..page[start..].find('<').unwrap()].to_string()
}

/// The `.p12` opened with openssl: the client identity inside it.
fn identity_from_p12(p12: &Path, password: &str) -> Identity {
    let out = Command::new("openssl")
        .args(["pkcs12", "-in", p12.to_str().unwrap(), "-nodes", "-passin"])
        .arg(format!("pass:{password}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl pkcs12: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pem = out.stdout;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(&pem).unwrap();
    // The leaf only: the bundle carries the CA too, which a client does not send.
    Identity {
        chain: chain.into_iter().take(1).collect(),
        key,
    }
}

/// The whole invitation: `certs invite` prints a link; the page shows the password and works
/// until the bundle is downloaded; the download works once; the bundle opens with openssl and
/// NSS's pk12util; its certificate is admitted; `certs list` follows along.
#[tokio::test]
async fn an_invitation_link_hands_out_its_bundle_once() {
    let (logs, _guard) = LogCapture::start();
    let site = make_site("invite-once", "on_failure = \"help\"", "");
    let backend = Backend::start().await;
    std::fs::write(
        &site.config,
        std::fs::read_to_string(&site.config)
            .unwrap()
            .replace("http://127.0.0.1:9", &format!("http://{}", backend.addr)),
    )
    .unwrap();
    let check = certgate_cli(&["check", "-c", site.config.to_str().unwrap()]);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let proxy = Proxy::start_file(&site.config).await;
    let link = site.invite("bob@example.com", &["--o", "Example"]);
    let ca = site.ca.to_str().unwrap();
    assert!(certgate_ok(&["certs", "list", "--dir", ca]).contains("invited"));
    // Only a hash of the token names the files; the folder holds no link.
    let token = link.rsplit('/').next().unwrap();
    for entry in std::fs::read_dir(&site.enroll).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().into_string().unwrap();
        assert!(!name.contains(token));
        let content = std::fs::read(entry.path()).unwrap();
        assert!(!String::from_utf8_lossy(&content).contains(token));
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            entry.metadata().unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    // No certificate at all: the page, twice (it does not use the link up).
    let anon = client_config(None, &["http/1.1"]);
    let page = ask(proxy.addr, anon.clone(), "GET", &link, true).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert_page_headers(&page);
    assert!(page.body.contains("bob@example.com"));
    assert!(page.body.contains("method=\"post\""));
    let password = password_on(&page.body);
    assert_eq!(password.len(), 23, "{password}");
    let again = ask(proxy.addr, anon.clone(), "GET", &link, true).await;
    assert_eq!(password_on(&again.body), password);
    // The download.
    let got = {
        let mut send = h1(proxy.addr, anon.clone()).await;
        let req = Request::post(&link)
            .header("host", "localhost")
            .body(empty())
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "application/x-pkcs12");
        assert_eq!(
            resp.headers()["content-disposition"],
            "attachment; filename=\"bob@example.com.p12\""
        );
        use http_body_util::BodyExt as _;
        resp.into_body().collect().await.unwrap().to_bytes()
    };
    let p12 = site.dir.join("bob.p12");
    std::fs::write(&p12, &got).unwrap();
    // Once: the second download, and the page, say it is used.
    let second = ask(proxy.addr, anon.clone(), "POST", &link, false).await;
    assert_eq!(second.status, 410);
    assert_eq!(second.json()["error"], "gone");
    let used = ask(proxy.addr, anon.clone(), "GET", &link, true).await;
    assert_eq!(used.status, 410);
    assert!(used.body.contains("has been used"));
    assert!(!used.body.contains(&password));
    // NSS (the certificate store of Chrome and Firefox on Linux) imports it.
    let nss = site.dir.join("nssdb");
    std::fs::create_dir(&nss).unwrap();
    let db = format!("sql:{}", nss.display());
    assert!(
        Command::new("certutil")
            .args(["-N", "-d", &db, "--empty-password"])
            .status()
            .unwrap()
            .success()
    );
    let import = Command::new("pk12util")
        .args(["-i", p12.to_str().unwrap(), "-d", &db, "-W", &password])
        .output()
        .unwrap();
    assert!(
        import.status.success(),
        "pk12util: {}",
        String::from_utf8_lossy(&import.stderr)
    );
    let listed = Command::new("certutil")
        .args(["-L", "-d", &db])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&listed.stdout).contains("bob@example.com"));
    // openssl opens it, and its certificate is admitted.
    let bob = identity_from_p12(&p12, &password);
    let got = get_once(proxy.addr, client_config(Some(&bob), &[]), "/after-invite").await;
    assert_eq!(got.status, 200, "{}", got.body);
    assert_eq!(
        backend.only().headers["x-ssl-client-dn"],
        "CN=bob@example.com,O=Example"
    );
    assert!(!certgate_ok(&["certs", "list", "--dir", ca]).contains("invited"));
    // Downloaded, it stays a valid certificate after the link's expiry.
    age_invitations(&site.enroll);
    let row = list_row(ca, "bob@example.com");
    assert!(row.contains(" valid "), "{row}");
    // The token never reached a log line.
    assert!(logs.text().contains("invitation bundle downloaded"));
    assert!(!logs.text().contains(token), "the token was logged");
    // The daemon kept no key of the CA, and the CA folder keeps no key of bob's.
    assert!(!site.ca.join("bob@example.com.key").exists());
}

/// Expired, cancelled and unknown links give nothing; guessing counts towards the address's
/// handshake-failure throttle; `check` refuses `[enroll]` where no browser without a
/// certificate could reach it.
#[tokio::test]
async fn expired_cancelled_and_guessed_links() {
    let (logs, _guard) = LogCapture::start();
    let site = make_site(
        "invite-refused",
        "client_auth = \"optional\"",
        "[limits]\nhandshake_failures_per_ip = \"3/m\"\n",
    );
    let proxy = Proxy::start_file(&site.config).await;
    let anon = client_config(None, &["http/1.1"]);
    let ca = site.ca.to_str().unwrap();

    // Expired: the record says so (the test moves its expiry into the past rather than wait).
    let expired = site.invite("late", &["--expires", "1h"]);
    age_invitations(&site.enroll);
    let got = ask(proxy.addr, anon.clone(), "GET", &expired, true).await;
    assert_eq!(got.status, 410);
    assert!(got.body.contains("has expired"));
    assert_eq!(
        ask(proxy.addr, anon.clone(), "POST", &expired, false)
            .await
            .status,
        410
    );
    // The daemon deleted the expired bundle.
    assert_eq!(
        std::fs::read_dir(&site.enroll)
            .unwrap()
            .filter(|e| e
                .as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "p12"))
            .count(),
        0
    );
    // And `certs list` still calls it an expired invitation, not a valid certificate.
    let row = list_row(ca, "late");
    assert!(row.contains("invite expired"), "{row}");

    // Cancelled with `certs revoke`: the link answers 410 at once.
    let cancelled = site.invite("carol", &[]);
    let out = certgate_ok(&["certs", "revoke", "--dir", ca, "--name", "carol"]);
    assert!(out.contains("invitation for carol cancelled"), "{out}");
    assert_eq!(
        ask(proxy.addr, anon.clone(), "GET", &cancelled, false)
            .await
            .status,
        410
    );

    // Other methods.
    let got = ask(proxy.addr, anon.clone(), "DELETE", &cancelled, false).await;
    assert_eq!(got.status, 405);
    assert_eq!(got.headers["allow"], "GET, HEAD, POST");

    // Guessing: unknown tokens are 404s, and the fourth in a minute blocks the address.
    for guess in [
        "AAAAAAAAAAAAAAAAAAAAAA",
        "not-a-token",
        "AAAAAAAAAAAAAAAAAAAAAB/../x",
        "BBBBBBBBBBBBBBBBBBBBBA",
    ] {
        let got = ask(
            proxy.addr,
            anon.clone(),
            "GET",
            &format!("/.well-known/certgate/enroll/{guess}"),
            true,
        )
        .await;
        assert_eq!(got.status, 404, "{guess}");
        assert!(got.body.contains("not valid"));
    }
    logs.wait_for(&["too many failed handshakes"]).await;
    assert!(tls_connect(proxy.addr, anon).await.is_err());

    // [enroll] with close mode and required certificates: no browser could open the link.
    let strict = make_site("invite-unreachable", "", "");
    let out = certgate_cli(&["check", "-c", strict.config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("enroll.dir"), "{err}");
    assert!(err.contains("on_failure = \"help\""), "{err}");
}

/// Guesses on a connection the guesser already holds are throttled too: with
/// `handshake_failures_per_ip = "5/m"`, six wrong tokens on one HTTP/2 connection (and on one
/// HTTP/1.1 keep-alive connection) are 404s, the sixth putting the address over its limit; from
/// then on every invitation link on that connection, the right one included, answers 429 with
/// `Retry-After` and the connection closes, new connections are refused at accept, and once the
/// rate of failures drops the right link works again.
#[tokio::test]
async fn guesses_on_an_open_connection_are_locked_out() {
    let site = make_site(
        "invite-lockout",
        // Not help mode, where the connection without a certificate would count as a failure
        // too: here only the guesses count.
        "client_auth = \"optional\"",
        "[limits]\nhandshake_failures_per_ip = \"5/m\"\n",
    );
    let link = site.invite("dave", &[]);
    let guess = |i: usize| format!("/.well-known/certgate/enroll/{:A>21}{}", i, "A");
    let get = |path: &str, html: bool| {
        let mut b = Request::get(path).header("host", "localhost");
        if html {
            b = b.header("accept", "text/html");
        }
        b.body(empty()).unwrap()
    };

    // HTTP/2: one connection, one stream after another.
    let proxy = Proxy::start_file(&site.config).await;
    let mut send = h2(proxy.addr, client_config(None, &["h2"])).await;
    for i in 0..6 {
        let got = read(send.send_request(get(&guess(i), false)).await.unwrap()).await;
        assert_eq!(got.status, 404, "guess {i}: {}", got.body);
    }
    let got = read(send.send_request(get(&link, false)).await.unwrap()).await;
    assert_eq!(got.status, 429, "the right link, locked out: {}", got.body);
    assert_eq!(got.json()["error"], "too_many_requests");
    let retry: u64 = got.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=12).contains(&retry), "Retry-After {retry}");
    // The connection goes: a request that still makes it out is refused the same way.
    if let Ok(resp) = send.send_request(get(&guess(7), false)).await {
        assert_eq!(resp.status(), 429);
    }
    assert!(
        tls_connect(proxy.addr, client_config(None, &["h2"]))
            .await
            .is_err()
    );
    // Until the rate drops (one failure's worth: 12 s at 5/m), then the link works again.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut send = loop {
        if tls_connect(proxy.addr, client_config(None, &["h2"]))
            .await
            .is_ok()
        {
            break h2(proxy.addr, client_config(None, &["h2"])).await;
        }
        assert!(std::time::Instant::now() < deadline, "still refused");
        poll_pause().await;
    };
    let got = read(send.send_request(get(&link, true)).await.unwrap()).await;
    assert_eq!(got.status, 200, "{}", got.body);
    assert!(got.body.contains("dave"));

    // HTTP/1.1 keep-alive, against a proxy of its own (a throttle of its own): the same.
    let proxy = Proxy::start_file(&site.config).await;
    let mut send = h1(proxy.addr, client_config(None, &["http/1.1"])).await;
    for i in 0..6 {
        let got = read(send.send_request(get(&guess(i), false)).await.unwrap()).await;
        assert_eq!(got.status, 404, "guess {i}: {}", got.body);
        assert!(got.headers.get("connection").is_none(), "kept alive");
    }
    let got = read(send.send_request(get(&link, true)).await.unwrap()).await;
    assert_eq!(got.status, 429, "the right link, locked out: {}", got.body);
    assert_page_headers(&got);
    assert!(got.body.contains("Too many attempts"), "{}", got.body);
    assert!(!got.body.contains("id=\"password\""));
    assert!(got.headers.contains_key("retry-after"));
    assert_eq!(got.headers["connection"], "close");
    assert!(
        send.send_request(get(&link, false)).await.is_err(),
        "closed"
    );
}

/// Guesses sent all at once are throttled like guesses sent one after another: with
/// `handshake_failures_per_ip = "5/m"`, forty wrong tokens sent together as concurrent HTTP/2
/// streams over four connections opened beforehand get at most the six lookups (404s) that
/// sequential guesses get; every other one is refused (429) or never answered, as the
/// connections close.
#[tokio::test]
async fn concurrent_guesses_are_locked_out_too() {
    let site = make_site(
        "invite-lockout-concurrent",
        "client_auth = \"optional\"",
        "[limits]\nhandshake_failures_per_ip = \"5/m\"\n",
    );
    let proxy = Proxy::start_file(&site.config).await;
    let mut conns = Vec::new();
    for _ in 0..4 {
        conns.push(h2(proxy.addr, client_config(None, &["h2"])).await);
    }
    let mut guesses = tokio::task::JoinSet::new();
    for (c, send) in conns.iter().enumerate() {
        for i in 0..10 {
            let mut send = send.clone();
            let req = Request::get(format!("/.well-known/certgate/enroll/{c}{i:A>20}A"))
                .header("host", "localhost")
                .body(empty())
                .unwrap();
            guesses.spawn(async move {
                match send.send_request(req).await {
                    Ok(resp) => Some(read(resp).await.status.as_u16()),
                    Err(_) => None,
                }
            });
        }
    }
    let mut statuses = Vec::new();
    while let Some(got) = guesses.join_next().await {
        statuses.push(got.unwrap());
    }
    let looked_up = statuses.iter().filter(|s| **s == Some(404)).count();
    assert!(
        (1..=6).contains(&looked_up),
        "{looked_up} lookups: {statuses:?}"
    );
    assert!(
        statuses
            .iter()
            .all(|s| matches!(s, None | Some(404) | Some(429))),
        "{statuses:?}"
    );
}

/// `certs revoke` revokes first, always: when the invitation cannot be cancelled (its enroll
/// folder unusable) the certificate is revoked and in the CRL all the same, the failure is
/// reported after, with a non-zero exit, and running it again once the folder is back cancels
/// the link.
#[test]
fn revoke_revokes_even_when_the_invitation_cannot_be_cancelled() {
    let site = make_site("invite-revoke-first", "client_auth = \"optional\"", "");
    let ca = site.ca.to_str().unwrap();
    site.invite("erin", &[]);
    // The folder replaced by a file: the bundle cannot be deleted, whoever runs the command.
    let away = site.dir.join("invites-away");
    std::fs::rename(&site.enroll, &away).unwrap();
    std::fs::write(&site.enroll, b"not a folder").unwrap();
    let out = certgate_cli(&["certs", "revoke", "--dir", ca, "--name", "erin"]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stdout.contains("revoked erin"), "{stdout}");
    assert!(
        stderr.contains("cannot cancel the invitation for erin"),
        "{stderr}"
    );
    assert!(list_row(ca, "erin").contains("revoked"));
    let crl = Command::new("openssl")
        .args(["crl", "-noout", "-text", "-in"])
        .arg(site.ca.join("ca.crl"))
        .output()
        .unwrap();
    let crl = String::from_utf8_lossy(&crl.stdout);
    assert!(crl.contains("Revoked Certificates:"), "{crl}");
    // The folder back: the same command cancels the link and leaves the CRL as it is.
    std::fs::remove_file(&site.enroll).unwrap();
    std::fs::rename(&away, &site.enroll).unwrap();
    let out = certgate_ok(&["certs", "revoke", "--dir", ca, "--name", "erin"]);
    assert!(out.contains("already revoked"), "{out}");
    assert!(out.contains("invitation for erin cancelled"), "{out}");
    assert!(!files_in(&site.enroll).iter().any(|f| f.ends_with(".p12")));
}

/// `certs invite` records the certificate in the CA state before it makes the link live: when
/// the state cannot be written (here a file-size limit the state is over and the bundle under),
/// no invitation is stored, nothing is left in the CA folder, and the name is free.
#[test]
fn invite_records_the_certificate_before_the_link_is_live() {
    let site = make_site("invite-record-first", "client_auth = \"optional\"", "");
    let ca = site.ca.to_str().unwrap();
    let state = site.ca.join("certgate-ca.json");
    let mut n = 0;
    while std::fs::metadata(&state).unwrap().len() < 8 * 1024 {
        certgate_ok(&["certs", "client", "--dir", ca, "--name", &format!("c{n}")]);
        n += 1;
    }
    // `ulimit -f 6`: writes past 6 KiB fail with EFBIG (SIGXFSZ ignored, as the shell passes it
    // on through exec). The bundle (~2 KiB), the record and the certificate fit; the state does not.
    let out = Command::new("bash")
        .args(["-c", "trap '' XFSZ; ulimit -f 6; exec \"$@\"", "bash"])
        .arg(env!("CARGO_BIN_EXE_certgate"))
        .args([
            "certs",
            "invite",
            "--dir",
            ca,
            "--name",
            "frank",
            "--enroll-dir",
        ])
        .arg(&site.enroll)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("certgate-ca.json"), "{stderr}");
    assert_eq!(
        files_in(&site.enroll),
        Vec::<String>::new(),
        "a link went live"
    );
    assert!(!site.ca.join("frank.crt").exists());
    assert!(!certgate_ok(&["certs", "list", "--dir", ca]).contains("frank"));
    // Without the limit the same invitation goes through.
    site.invite("frank", &[]);
    assert!(list_row(ca, "frank").contains("invited"));
}

// ---- in a real browser ----

/// Chromium's `AutoSelectCertificateForUrls` policy for the loopback origins of this test:
/// Chromium then presents whatever client certificate its NSS database holds, as a person
/// choosing it would. Removed when dropped.
pub(crate) struct AutoSelectPolicy(PathBuf);

impl AutoSelectPolicy {
    fn install() -> AutoSelectPolicy {
        Self::install_as("help")
    }

    /// The policy under a file name of its own (`tag`): tests that run at once each keep theirs.
    pub(crate) fn install_as(tag: &str) -> AutoSelectPolicy {
        let dir = Path::new("/etc/chromium/policies/managed");
        std::fs::create_dir_all(dir).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (the browser test runs as root, as CI does)",
                dir.display()
            )
        });
        let path = dir.join(format!("certgate-e2e-{}-{tag}.json", std::process::id()));
        std::fs::write(
            &path,
            r#"{"AutoSelectCertificateForUrls": ["{\"pattern\":\"https://127.0.0.1:*\",\"filter\":{}}"]}"#,
        )
        .unwrap();
        AutoSelectPolicy(path)
    }
}

impl Drop for AutoSelectPolicy {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A browser profile home whose NSS database trusts the test CA (for the server) and holds
/// `p12` (a bundle and its password) when given.
pub(crate) fn browser_home(dir: &Path, name: &str, p12: Option<(&Path, &str)>) -> PathBuf {
    let home = dir.join(name);
    let nss = home.join(".pki/nssdb");
    std::fs::create_dir_all(&nss).unwrap();
    let db = format!("sql:{}", nss.display());
    let run = |args: &[&str]| {
        let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&["certutil", "-N", "-d", &db, "--empty-password"]);
    let ca = test_pki().dir.join("ca.crt");
    run(&[
        "certutil",
        "-A",
        "-d",
        &db,
        "-t",
        "C,,",
        "-n",
        "test-ca",
        "-i",
        ca.to_str().unwrap(),
    ]);
    if let Some((p12, password)) = p12 {
        run(&[
            "pk12util",
            "-d",
            &db,
            "-i",
            p12.to_str().unwrap(),
            "-W",
            password,
        ]);
    }
    home
}

/// A test identity as a `.p12` (made by openssl), for a browser to import.
pub(crate) fn p12_of(dir: &Path, name: &str, id: &Identity) -> PathBuf {
    let (cert, key) = id.write_pem(dir, name);
    let p12 = dir.join(format!("{name}.p12"));
    let out = Command::new("openssl")
        .args(["pkcs12", "-export", "-passout", "pass:test", "-in"])
        .args([
            &cert,
            &Path::new("-inkey").to_path_buf(),
            &key,
            &Path::new("-out").to_path_buf(),
            &p12,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    p12
}

/// Runs `steps` in one Chromium with profile `home`; one JSON result per step. (Off the
/// test's runtime thread: the proxy under test serves on it.)
pub(crate) async fn browse(home: &Path, steps: serde_json::Value) -> Vec<serde_json::Value> {
    let home = home.to_path_buf();
    tokio::task::spawn_blocking(move || browse_blocking(&home, steps))
        .await
        .unwrap()
}

fn browse_blocking(home: &Path, steps: serde_json::Value) -> Vec<serde_json::Value> {
    let chromium = std::env::var("CERTGATE_TEST_CHROMIUM").unwrap_or("/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "{chromium} is missing: scripts/test installs Debian's chromium"
    );
    let out = Command::new(python())
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/e2e/tools/browser.py"
        ))
        .arg(home)
        .arg(steps.to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "browser.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Where screenshots go: `CERTGATE_SCREENSHOTS` (the README's pictures are made this way),
/// else this test's scratch folder.
pub(crate) fn screenshot(dir: &Path, name: &str) -> String {
    let base = std::env::var_os("CERTGATE_SCREENSHOTS").map_or(dir.to_path_buf(), PathBuf::from);
    base.join(name).display().to_string()
}

/// What a person at Chromium sees: with no certificate, an expired, a revoked and a foreign
/// one, the page naming exactly that (nothing reaches the backend); then an invitation link,
/// its password on the page, the one download, the bundle imported with NSS's pk12util, and
/// the site letting the browser in with it; the link used up afterwards.
#[tokio::test]
async fn a_browser_meets_the_help_page_and_redeems_an_invitation() {
    let pki = test_pki();
    let dir = scratch_dir("browser");
    let _policy = AutoSelectPolicy::install();
    let backend = Backend::start().await;
    let proxy = Proxy::start_with(&test_config(
        backend.addr,
        "on_failure = \"help\"\nhelp_contact = \"Ask it@example.com (ext. 4242) for a certificate.\"",
        "[limits]\nhandshake_failures_per_ip = \"1000/m\"\n",
    ))
    .await;
    let url = format!("https://127.0.0.1:{}/", proxy.addr.port());
    let cases: [(&str, Option<&Identity>, &str, &str); 4] = [
        (
            "no-certificate",
            None,
            "no certificate",
            "did not present a client certificate",
        ),
        // Chromium never offers an expired certificate: to the server it is a browser without
        // one, and the page says that an expired certificate is the likely cause.
        (
            "expired",
            Some(&pki.expired),
            "no certificate",
            "if yours has expired, ask for a new one",
        ),
        ("revoked", Some(&pki.revoked), "revoked", "has been revoked"),
        (
            "unknown-issuer",
            Some(&pki.impostor),
            "unknown issuer",
            "does not trust",
        ),
    ];
    for (name, id, reason, sentence) in cases {
        let p12 = id.map(|id| p12_of(&dir, name, id));
        let home = browser_home(&dir, name, p12.as_deref().map(|p| (p, "test")));
        // (The expired case looks exactly like the first: no picture of its own.)
        let picture = (name != "expired").then(|| screenshot(&dir, &format!("help-{name}.png")));
        let mut steps = vec![serde_json::json!({ "url": url, "screenshot": picture })];
        if name == "no-certificate" {
            steps.push(serde_json::json!({
                "url": url,
                "width": 390,
                "screenshot": screenshot(&dir, "help-phone.png"),
            }));
        }
        let seen = browse(&home, serde_json::json!(steps)).await;
        assert_eq!(seen[0]["status"], 403, "{name}: {}", seen[0]);
        assert_eq!(seen[0]["reason"], reason, "{name}");
        let text = seen[0]["text"].as_str().unwrap();
        assert!(text.contains(sentence), "{name}: {text}");
        assert!(text.contains("Ask it@example.com (ext. 4242)"), "{name}");
        if reason != "no certificate" {
            assert!(text.contains("SHA-256 fingerprint"), "{name}: {text}");
        }
    }
    assert!(
        backend.seen().is_empty(),
        "backend saw {:?}",
        backend.seen()
    );

    // The invitation, on a site whose CA `certs invite` manages.
    let site = make_site("browser-invite", "on_failure = \"help\"", "");
    std::fs::write(
        &site.config,
        std::fs::read_to_string(&site.config)
            .unwrap()
            .replace("http://127.0.0.1:9", &format!("http://{}", backend.addr)),
    )
    .unwrap();
    let invited = Proxy::start_file(&site.config).await;
    let origin = format!("https://127.0.0.1:{}", invited.addr.port());
    let link = format!(
        "{origin}{}",
        site.invite("dana@example.com", &["--o", "Colorizers"])
    );
    let bundle = dir.join("dana.p12");
    let fresh = browser_home(&dir, "invitee", None);
    let seen = browse(
        &fresh,
        serde_json::json!([
            {"url": link, "screenshot": screenshot(&dir, "invite-page.png"), "download": bundle},
            {"url": link, "screenshot": screenshot(&dir, "invite-used.png")},
        ]),
    )
    .await;
    assert_eq!(seen[0]["status"], 200, "{}", seen[0]);
    assert_eq!(seen[0]["downloaded"], "dana@example.com.p12");
    let password = seen[0]["password"].as_str().unwrap().to_string();
    assert_eq!(seen[1]["status"], 410, "{}", seen[1]);
    assert!(seen[1]["text"].as_str().unwrap().contains("has been used"));
    assert!(!seen[1]["text"].as_str().unwrap().contains(&password));
    // Imported as a person would, and let in.
    let enrolled = browser_home(&dir, "enrolled", Some((&bundle, &password)));
    let seen = browse(
        &enrolled,
        serde_json::json!([{ "url": format!("{origin}/app") }]),
    )
    .await;
    assert_eq!(seen[0]["status"], 200, "{}", seen[0]);
    assert_eq!(seen[0]["text"], "backend saw /app");
    let dana = backend
        .seen()
        .into_iter()
        .find(|s| s.target == "/app")
        .unwrap();
    assert_eq!(
        dana.headers["x-ssl-client-dn"],
        "CN=dana@example.com,O=Colorizers"
    );
    assert_eq!(dana.headers["x-ssl-client-verify"], "SUCCESS");
}
