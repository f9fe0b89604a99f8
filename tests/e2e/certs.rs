//! `certgate certs`: the private CA from first certificate to revocation, checked with the real
//! tools (openssl, NSS's pk12util) and end to end with the proxy.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::*;

fn certs_args<'a>(args: &[&'a str]) -> Vec<&'a str> {
    std::iter::once("certs")
        .chain(args.iter().copied())
        .collect()
}

fn certgate(args: &[&str]) -> Output {
    certgate_cli(&certs_args(args))
}

fn ok(args: &[&str]) -> String {
    certgate_ok(&certs_args(args))
}

/// Runs a command that must fail with exit 2 and a one-line message containing `want`.
fn fails(args: &[&str], want: &str) {
    let out = certgate(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
    assert!(err.contains(want), "{args:?}: expected {want:?} in {err}");
}

fn tool(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd} is not installed: {e}"))
}

fn openssl_ok(args: &[&str]) -> String {
    let out = tool("openssl", args);
    assert!(
        out.status.success(),
        "openssl {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A CA folder with a server (localhost, 127.0.0.1, ::1) and the seed's admin client.
fn ca_with_server_and_admin(name: &str) -> PathBuf {
    let dir = scratch_dir(name).join("ca");
    let d = s(&dir);
    ok(&["init-ca", "--dir", d, "--cn", "Face Analysis CA"]);
    ok(&[
        "server",
        "--dir",
        d,
        "--name",
        "localhost",
        "--san",
        "localhost",
        "--san",
        "127.0.0.1",
        "--san",
        "::1",
    ]);
    ok(&[
        "client",
        "--dir",
        d,
        "--name",
        "admin@face.analyze",
        "--c",
        "CN",
        "--st",
        "Beijing",
        "--l",
        "Beijing",
        "--o",
        "FaceAnalysis",
        "--ou",
        "Admin",
    ]);
    dir
}

/// init-ca: a CA certificate with the right extensions, key 0600 in a 0700 folder, an empty CRL;
/// a second init-ca refuses to overwrite it, and --force replaces it.
#[test]
fn init_ca_makes_a_ca_and_refuses_to_overwrite_it() {
    let dir = scratch_dir("certs-init").join("ca");
    let d = s(&dir);
    let out = ok(&[
        "init-ca",
        "--dir",
        d,
        "--cn",
        "Face Analysis CA",
        "--days",
        "3650",
    ]);
    assert!(out.contains("client_ca = "), "{out}");
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("ca.key")), 0o600);
    let text = openssl_ok(&["x509", "-in", s(&dir.join("ca.crt")), "-noout", "-text"]);
    for want in [
        "CA:TRUE",
        "Certificate Sign, CRL Sign",
        "Subject Key Identifier",
        "Subject: CN = Face Analysis CA",
        "ASN1 OID: prime256v1",
    ] {
        assert!(text.contains(want), "missing {want} in {text}");
    }
    let crl = openssl_ok(&["crl", "-in", s(&dir.join("ca.crl")), "-noout", "-text"]);
    assert!(crl.contains("No Revoked Certificates"), "{crl}");
    let before = std::fs::read(dir.join("ca.crt")).unwrap();
    fails(&["init-ca", "--dir", d], "already exists");
    assert_eq!(std::fs::read(dir.join("ca.crt")).unwrap(), before);
    ok(&["init-ca", "--dir", d, "--force", "--key", "rsa-2048"]);
    assert_ne!(std::fs::read(dir.join("ca.crt")).unwrap(), before);
    let text = openssl_ok(&["x509", "-in", s(&dir.join("ca.crt")), "-noout", "-text"]);
    assert!(text.contains("Public-Key: (2048 bit)"), "{text}");
}

/// Server and client certificates verify against the CA with openssl, carry the key usages and
/// SANs asked for, the seed's admin subject is expressible, and after revoke `openssl verify
/// -crl_check` refuses the client while the server still passes.
#[test]
fn issued_certificates_verify_with_openssl_and_revocation_shows_in_the_crl() {
    let dir = ca_with_server_and_admin("certs-verify");
    let d = s(&dir);
    let ca = dir.join("ca.crt");
    let server = dir.join("localhost.crt");
    let client = dir.join("admin@face.analyze.crt");
    assert!(openssl_ok(&["verify", "-CAfile", s(&ca), s(&server)]).contains(": OK"));
    assert!(openssl_ok(&["verify", "-CAfile", s(&ca), s(&client)]).contains(": OK"));
    let st = openssl_ok(&["x509", "-in", s(&server), "-noout", "-text"]);
    for want in [
        "TLS Web Server Authentication",
        "DNS:localhost",
        "IP Address:127.0.0.1",
        "IP Address:0:0:0:0:0:0:0:1",
        "Digital Signature",
        "CA:FALSE",
    ] {
        assert!(st.contains(want), "server lacks {want}: {st}");
    }
    assert!(!st.contains("TLS Web Client Authentication"));
    let ct = openssl_ok(&["x509", "-in", s(&client), "-noout", "-text"]);
    assert!(
        ct.contains("TLS Web Client Authentication")
            && !ct.contains("TLS Web Server Authentication"),
        "{ct}"
    );
    let subject = openssl_ok(&[
        "x509",
        "-in",
        s(&client),
        "-noout",
        "-subject",
        "-nameopt",
        "RFC2253",
    ]);
    assert_eq!(
        subject.trim(),
        "subject=CN=admin@face.analyze,OU=Admin,O=FaceAnalysis,L=Beijing,ST=Beijing,C=CN"
    );
    for f in [
        "localhost.key",
        "admin@face.analyze.key",
        "ca.key",
        "certgate-ca.json",
    ] {
        assert_eq!(mode(&dir.join(f)), 0o600, "{f}");
    }

    ok(&[
        "client",
        "--dir",
        d,
        "--name",
        "mail",
        "--email",
        "mail@face.analyze",
    ]);
    let mt = openssl_ok(&["x509", "-in", s(&dir.join("mail.crt")), "-noout", "-text"]);
    assert!(
        mt.contains("email:mail@face.analyze") && mt.contains("emailAddress = mail@face.analyze"),
        "{mt}"
    );

    let out = ok(&[
        "revoke",
        "--dir",
        d,
        "--name",
        "admin@face.analyze",
        "--reason",
        "keyCompromise",
    ]);
    assert!(
        out.contains("systemctl reload certgate"),
        "the revoke output says how certgate picks it up: {out}"
    );
    let crl = dir.join("ca.crl");
    let crl_text = openssl_ok(&["crl", "-in", s(&crl), "-noout", "-text"]);
    assert!(crl_text.contains("Key Compromise"), "{crl_text}");
    let revoked = tool(
        "openssl",
        &[
            "verify",
            "-crl_check",
            "-CAfile",
            s(&ca),
            "-CRLfile",
            s(&crl),
            s(&client),
        ],
    );
    assert!(!revoked.status.success());
    assert!(
        String::from_utf8_lossy(&revoked.stdout).contains("certificate revoked")
            || String::from_utf8_lossy(&revoked.stderr).contains("certificate revoked")
    );
    assert!(
        openssl_ok(&[
            "verify",
            "-crl_check",
            "-CAfile",
            s(&ca),
            "-CRLfile",
            s(&crl),
            s(&server)
        ])
        .contains(": OK")
    );

    // crl re-signs the same list with a higher number.
    ok(&["crl", "--dir", d, "--days", "7"]);
    let again = openssl_ok(&["crl", "-in", s(&crl), "-noout", "-text"]);
    assert!(again.contains("Key Compromise"));
    let number = |t: &str| {
        t.lines()
            .skip_while(|l| !l.contains("CRL Number"))
            .nth(1)
            .unwrap()
            .trim()
            .to_string()
    };
    assert_ne!(number(&crl_text), number(&again));
}

/// Modern and legacy .p12 bundles: openssl reads both and finds key, certificate and CA, and NSS
/// (the store of Chrome and Firefox on Linux) imports both into a fresh database.
#[test]
fn p12_bundles_open_in_openssl_and_import_into_nss() {
    let dir = scratch_dir("certs-p12").join("ca");
    let d = s(&dir);
    ok(&["init-ca", "--dir", d]);
    let out = ok(&[
        "client", "--dir", d, "--name", "modern", "--ou", "Admin", "--p12",
    ]);
    let generated = std::fs::read_to_string(dir.join("modern.p12.pass")).unwrap();
    assert!(
        out.contains(generated.trim()),
        "the generated password is printed once"
    );
    assert_eq!(mode(&dir.join("modern.p12.pass")), 0o600);
    assert_eq!(mode(&dir.join("modern.p12")), 0o600);
    let pw = dir.parent().unwrap().join("legacy.pw");
    std::fs::write(&pw, "s3cret pass\n").unwrap();
    ok(&[
        "client",
        "--dir",
        d,
        "--name",
        "legacy",
        "--p12",
        "--legacy",
        "--password-file",
        s(&pw),
    ]);
    assert!(!dir.join("legacy.p12.pass").exists());

    for (name, pass, scheme) in [
        ("modern", dir.join("modern.p12.pass"), "AES-256-CBC"),
        ("legacy", pw.clone(), "pbeWithSHA1And3-KeyTripleDES-CBC"),
    ] {
        let p12 = dir.join(format!("{name}.p12"));
        let passin = format!("file:{}", s(&pass));
        let info = tool(
            "openssl",
            &[
                "pkcs12",
                "-info",
                "-in",
                s(&p12),
                "-passin",
                &passin,
                "-nodes",
            ],
        );
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&info.stdout),
            String::from_utf8_lossy(&info.stderr)
        );
        assert!(info.status.success(), "{name}: {text}");
        assert!(text.contains(scheme), "{name} is not {scheme}: {text}");
        assert!(text.contains("BEGIN PRIVATE KEY"), "{name}: no key");
        assert_eq!(
            text.matches("BEGIN CERTIFICATE").count(),
            2,
            "{name}: leaf and CA"
        );
        assert!(
            text.contains(&format!("friendlyName: {name}")),
            "{name}: {text}"
        );

        let db = dir.parent().unwrap().join(format!("nss-{name}"));
        std::fs::create_dir_all(&db).unwrap();
        let dbarg = format!("sql:{}", s(&db));
        let init = tool("certutil", &["-N", "-d", &dbarg, "--empty-password"]);
        assert!(
            init.status.success(),
            "{}",
            String::from_utf8_lossy(&init.stderr)
        );
        let import = tool("pk12util", &["-i", s(&p12), "-d", &dbarg, "-w", s(&pass)]);
        assert!(
            import.status.success(),
            "pk12util {name}: {}{}",
            String::from_utf8_lossy(&import.stdout),
            String::from_utf8_lossy(&import.stderr)
        );
        let listed = tool("certutil", &["-L", "-d", &dbarg]);
        assert!(
            String::from_utf8_lossy(&listed.stdout).contains(name),
            "{}",
            String::from_utf8_lossy(&listed.stdout)
        );
    }
}

/// End to end: a client issued by `certs client` gets through the proxy (and its .p12 works
/// with curl); after `certs revoke` and a restart it is refused at the handshake as `revoked`.
#[tokio::test]
async fn proxy_accepts_issued_client_and_refuses_it_after_revoke() {
    let (logs, _guard) = LogCapture::start();
    let dir = ca_with_server_and_admin("certs-e2e");
    let d = s(&dir);
    ok(&["client", "--dir", d, "--name", "bob", "--p12"]);
    let backend = Backend::start().await;
    let config = format!(
        "[listen]\nhttps = \"127.0.0.1:0\"\n[tls]\ncert = \"{d}/localhost.crt\"\nkey = \"{d}/localhost.key\"\nclient_ca = \"{d}/ca.crt\"\ncrl = [\"{d}/ca.crl\"]\n[upstream]\nurl = \"http://{}\"\n",
        backend.addr
    );
    let load = || certgate::config::Config::from_str(&config, &dir.join("certgate.toml")).unwrap();
    let bob_chain =
        vec![rustls_pki_types::pem::PemObject::from_pem_file(dir.join("bob.crt")).unwrap()];
    let bob_key: rustls_pki_types::PrivateKeyDer<'static> =
        rustls_pki_types::pem::PemObject::from_pem_file(dir.join("bob.key")).unwrap();
    let client = |ca: &Path| {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls_pki_types::pem::PemObject::from_pem_file(ca).unwrap())
            .unwrap();
        std::sync::Arc::new(
            rustls::ClientConfig::builder_with_provider(certgate::tls::provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_client_auth_cert(bob_chain.clone(), bob_key.clone_key())
                .unwrap(),
        )
    };

    let server = certgate::proxy::Server::bind(&load()).await.unwrap();
    let addr = server.local_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    assert_eq!(
        get_once(addr, client(&dir.join("ca.crt")), "/bob")
            .await
            .status,
        200
    );
    let pass = std::fs::read_to_string(dir.join("bob.p12.pass")).unwrap();
    let curl = tokio::process::Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "20",
            "--cacert",
            &format!("{d}/ca.crt"),
            "--cert-type",
            "P12",
        ])
        .arg("--cert")
        .arg(format!("{d}/bob.p12:{}", pass.trim()))
        .arg(format!("https://localhost:{}/p12", addr.port()))
        .arg("--resolve")
        .arg(format!("localhost:{}:127.0.0.1", addr.port()))
        .output()
        .await
        .unwrap();
    assert!(
        curl.status.success(),
        "{}",
        String::from_utf8_lossy(&curl.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&curl.stdout), "backend saw /p12");
    let _ = stop.send(());
    task.await.unwrap();

    ok(&["revoke", "--dir", d, "--name", "bob"]);
    let restarted = certgate::proxy::Server::bind(&load()).await.unwrap();
    let addr = restarted.local_addr();
    let _task = tokio::spawn(restarted.run(std::future::pending()));
    assert_refused(addr, client(&dir.join("ca.crt"))).await;
    logs.wait_for(&["TLS handshake failed", "reason=\"revoked\""])
        .await;
    assert_eq!(backend.seen().len(), 2);
}

/// Bad input: one clear line naming the thing, exit 2, and nothing half-written.
#[test]
fn bad_input_gets_a_clear_error_and_writes_nothing() {
    let dir = ca_with_server_and_admin("certs-bad");
    let d = s(&dir);
    let listing = || {
        let mut v: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        v.sort();
        (
            v,
            std::fs::read(dir.join("certgate-ca.json")).unwrap(),
            std::fs::read(dir.join("ca.crl")).unwrap(),
        )
    };
    let before = listing();
    fails(
        &["client", "--dir", d, "--name", "x", "--key", "dsa"],
        "invalid value 'dsa'",
    );
    fails(
        &["server", "--dir", d, "--name", "web", "--san", "not a host"],
        "\"not a host\" is neither a DNS name nor an IP address",
    );
    fails(
        &[
            "server",
            "--dir",
            d,
            "--name",
            "localhost",
            "--san",
            "localhost",
        ],
        "already used",
    );
    fails(
        &["client", "--dir", d, "--name", "../escape"],
        "becomes a file name",
    );
    fails(
        &["client", "--dir", d, "--name", "c", "--c", "China"],
        "two capital letters",
    );
    fails(
        &["revoke", "--dir", d, "--name", "nobody"],
        "no certificate with name \"nobody\"",
    );
    fails(
        &["revoke", "--dir", d, "--serial", "DEADBEEF"],
        "no certificate with serial DEADBEEF",
    );
    fails(
        &[
            "client",
            "--dir",
            d,
            "--name",
            "p",
            "--p12",
            "--password-file",
            "/nonexistent/pw",
        ],
        "/nonexistent/pw: cannot read the password file",
    );
    assert_eq!(listing(), before, "a failed command changed the CA folder");

    let missing = scratch_dir("certs-missing");
    fails(
        &["client", "--dir", s(&missing), "--name", "a"],
        "cannot read the CA state",
    );
    std::fs::write(
        dir.join("ca.key"),
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    fails(
        &["client", "--dir", d, "--name", "a"],
        "the CA key does not parse",
    );

    let file = scratch_dir("certs-notdir").join("plain-file");
    std::fs::write(&file, "").unwrap();
    fails(
        &["init-ca", "--dir", s(&file.join("ca"))],
        "cannot create the CA folder",
    );
}

/// An encrypted CA key: openssl reads it with the password; certgate refuses to use it without
/// the password or with a wrong one, and issues with the right one.
#[test]
fn encrypted_ca_key_needs_its_password() {
    let root = scratch_dir("certs-enc");
    let dir = root.join("ca");
    let d = s(&dir);
    let good = root.join("good.pw");
    let bad = root.join("bad.pw");
    std::fs::write(&good, "correct horse\n").unwrap();
    std::fs::write(&bad, "wrong\n").unwrap();
    ok(&["init-ca", "--dir", d, "--key-password-file", s(&good)]);
    let key = std::fs::read_to_string(dir.join("ca.key")).unwrap();
    assert!(
        key.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----"),
        "{key}"
    );
    openssl_ok(&[
        "pkey",
        "-in",
        s(&dir.join("ca.key")),
        "-passin",
        &format!("file:{}", s(&good)),
        "-noout",
    ]);
    fails(
        &["client", "--dir", d, "--name", "a"],
        "the CA key is encrypted; pass --key-password-file",
    );
    fails(
        &[
            "client",
            "--dir",
            d,
            "--name",
            "a",
            "--key-password-file",
            s(&bad),
        ],
        "wrong password",
    );
    ok(&[
        "client",
        "--dir",
        d,
        "--name",
        "a",
        "--key-password-file",
        s(&good),
    ]);
    assert!(
        openssl_ok(&[
            "verify",
            "-CAfile",
            s(&dir.join("ca.crt")),
            s(&dir.join("a.crt"))
        ])
        .contains(": OK")
    );
}

/// list (table and JSON) shows each certificate's status; renew issues a new key and
/// certificate with the same subject and SANs, and the old one shows as replaced.
#[test]
fn list_and_renew() {
    let dir = ca_with_server_and_admin("certs-list");
    let d = s(&dir);
    ok(&["client", "--dir", d, "--name", "short", "--days", "10"]);
    ok(&["revoke", "--dir", d, "--name", "admin@face.analyze"]);
    let table = ok(&["list", "--dir", d]);
    assert!(table.lines().next().unwrap().starts_with("NAME"), "{table}");
    let line = |n: &str| {
        table
            .lines()
            .find(|l| l.starts_with(n))
            .unwrap()
            .to_string()
    };
    assert!(line("admin@face.analyze").contains("revoked"));
    assert!(
        line("short").contains("expires in 9 days") || line("short").contains("expires in 10 days"),
        "{}",
        line("short")
    );
    assert!(line("localhost").contains(" valid "));

    let old = std::fs::read(dir.join("localhost.crt")).unwrap();
    let old_key = std::fs::read(dir.join("localhost.key")).unwrap();
    ok(&["renew", "--dir", d, "--name", "localhost"]);
    assert_ne!(std::fs::read(dir.join("localhost.crt")).unwrap(), old);
    assert_ne!(std::fs::read(dir.join("localhost.key")).unwrap(), old_key);
    let text = openssl_ok(&[
        "x509",
        "-in",
        s(&dir.join("localhost.crt")),
        "-noout",
        "-text",
    ]);
    assert!(
        text.contains("DNS:localhost, IP Address:127.0.0.1, IP Address:0:0:0:0:0:0:0:1"),
        "{text}"
    );
    assert!(
        openssl_ok(&[
            "verify",
            "-CAfile",
            s(&dir.join("ca.crt")),
            s(&dir.join("localhost.crt"))
        ])
        .contains(": OK")
    );

    let json: serde_json::Value =
        serde_json::from_str(&ok(&["list", "--dir", d, "--json"])).unwrap();
    let rows = json.as_array().unwrap();
    let by = |name: &str| {
        rows.iter()
            .filter(|r| r["name"] == name)
            .collect::<Vec<_>>()
    };
    let hosts = by("localhost");
    assert_eq!(hosts.len(), 2);
    assert_eq!(hosts[0]["status"], "replaced");
    assert_eq!(hosts[1]["status"], "valid");
    assert_eq!(hosts[0]["subject"], hosts[1]["subject"]);
    assert_eq!(by("admin@face.analyze")[0]["status"], "revoked");
    assert_eq!(by("ca")[0]["kind"], "ca");
    fails(
        &["renew", "--dir", d, "--name", "ghost"],
        "no certificate named \"ghost\"",
    );
}

/// `certgate-ca.json` is locked for each command's whole read-modify-write: `client`, `revoke`
/// and `crl` run as twenty processes at once lose no certificate, no revocation and no CRL
/// number, and the last CRL lists every revoked certificate.
#[test]
fn parallel_commands_lose_no_record() {
    let dir = scratch_dir("certs-parallel");
    let d = s(&dir);
    ok(&["init-ca", "--dir", d]);
    for i in 0..6 {
        ok(&["client", "--dir", d, "--name", &format!("r{i}")]);
    }
    let mut jobs: Vec<Vec<String>> = Vec::new();
    for i in 0..10 {
        jobs.push(vec!["client".into(), "--name".into(), format!("n{i}")]);
    }
    for i in 0..6 {
        jobs.push(vec!["revoke".into(), "--name".into(), format!("r{i}")]);
    }
    for _ in 0..4 {
        jobs.push(vec!["crl".into()]);
    }
    let children: Vec<_> = jobs
        .iter()
        .map(|job| {
            Command::new(env!("CARGO_BIN_EXE_certgate"))
                .arg("certs")
                .arg(&job[0])
                .args(["--dir", d])
                .args(&job[1..])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (child, job) in children.into_iter().zip(&jobs) {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{job:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("certgate-ca.json")).unwrap()).unwrap();
    let certs = state["certs"].as_array().unwrap();
    let named = |n: &str| certs.iter().filter(|r| r["name"] == n).collect::<Vec<_>>();
    for i in 0..10 {
        assert_eq!(named(&format!("n{i}")).len(), 1, "n{i} lost: {state:#}");
    }
    let mut revoked = Vec::new();
    for i in 0..6 {
        let r = named(&format!("r{i}"));
        assert_eq!(r.len(), 1);
        assert!(r[0]["revoked_at"].is_string(), "r{i}'s revocation lost");
        revoked.push(r[0]["serial"].as_str().unwrap().to_string());
    }
    assert_eq!(certs.len(), 1 + 6 + 10);
    // init-ca's CRL, then one per revoke and one per crl.
    assert_eq!(state["crl_number"], 1 + 6 + 4);
    let crl = openssl_ok(&["crl", "-noout", "-text", "-in", s(&dir.join("ca.crl"))]);
    let number = crl
        .lines()
        .skip_while(|l| !l.contains("CRL Number"))
        .nth(1)
        .map(str::trim);
    assert_eq!(number, Some("11"), "{crl}");
    // openssl prints whole bytes; the state, the number: compared without leading zeros.
    let mut listed: Vec<&str> = crl
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Serial Number: "))
        .map(|s| s.trim_start_matches('0'))
        .collect();
    let mut revoked: Vec<&str> = revoked.iter().map(|s| s.trim_start_matches('0')).collect();
    listed.sort_unstable();
    revoked.sort_unstable();
    assert_eq!(listed, revoked, "{crl}");
    assert_eq!(mode(&dir.join("certgate-ca.json")), 0o600);
    assert_eq!(mode(&dir.join("certgate-ca.json.lock")), 0o600);
}

/// `init-ca` without `--force`, run as several processes at once on an empty folder, creates
/// one CA: the others see it once they hold the state's lock and refuse, so no command reports
/// a CA that another one then overwrites (its clients would silently stop being trusted).
#[test]
fn parallel_init_ca_creates_one_ca() {
    let dir = scratch_dir("certs-parallel-init");
    let d = s(&dir);
    let children: Vec<_> = (0..8)
        .map(|i| {
            Command::new(env!("CARGO_BIN_EXE_certgate"))
                .args(["certs", "init-ca", "--dir", d, "--cn", &format!("CA {i}")])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outs: Vec<Output> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    let won: Vec<&Output> = outs.iter().filter(|o| o.status.success()).collect();
    assert_eq!(won.len(), 1, "one init-ca creates the CA");
    for o in outs.iter().filter(|o| !o.status.success()) {
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(err.contains("already exists"), "{err}");
    }
    // The CA on disk is the one the successful command reported.
    let said = String::from_utf8_lossy(&won[0].stdout);
    let subject = openssl_ok(&["x509", "-noout", "-subject", "-in", s(&dir.join("ca.crt"))]);
    let cn = subject
        .trim()
        .rsplit("CN")
        .next()
        .unwrap()
        .trim_start_matches([' ', '=']);
    assert!(
        said.contains(&format!("CA \"{cn}\" created")),
        "{said} / {subject}"
    );
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("certgate-ca.json")).unwrap()).unwrap();
    assert_eq!(state["certs"].as_array().unwrap().len(), 1, "{state:#}");
}
