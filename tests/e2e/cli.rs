//! The real binary: `check` and its exit codes, `run` with a busy address, graceful shutdown on
//! SIGTERM with a request in flight, JSON logs, and `demo` as the README tells a new user to run it.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use crate::common::*;

const LIMIT: Duration = Duration::from_secs(30);

fn certgate() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_certgate"));
    c.kill_on_drop(true)
        .stdin(Stdio::null())
        .env_remove("CERTGATE_CONFIG")
        .env_remove("RUST_LOG");
    c
}

/// A config file in its own folder whose paths point into the test PKI.
fn write_config(name: &str, body: &str) -> PathBuf {
    let dir = scratch_dir(name);
    let path = dir.join("certgate.toml");
    std::fs::write(&path, body).unwrap();
    path
}

fn pki_file(f: &str) -> String {
    test_pki().dir.join(f).display().to_string()
}

fn full_config(listen: &str, backend: &str, extra: &str) -> String {
    format!(
        r#"[listen]
https = "{listen}"
shutdown_timeout = "20s"

[tls]
cert = "{}"
key = "{}"
client_ca = "{}"
crl = ["{}"]

[upstream]
url = "http://{backend}"

[[route]]
path = "/gradio_api/info"
action = "deny"
{extra}
"#,
        pki_file("server.crt"),
        pki_file("server.key"),
        pki_file("ca-bundle.crt"),
        pki_file("ca.crl"),
    )
}

async fn check(path: &Path) -> (i32, String, String) {
    let out = certgate()
        .arg("check")
        .arg("-c")
        .arg(path)
        .output()
        .await
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `check` on a valid config: exit 0 and a summary of the effective settings and certificates.
#[tokio::test]
async fn check_prints_effective_config_and_certificates() {
    let path = write_config(
        "check-ok",
        &full_config("127.0.0.1:8443", "127.0.0.1:7860", ""),
    );
    let (code, out, err) = check(&path).await;
    assert_eq!(code, 0, "{err}");
    for want in [
        "is valid",
        "https            = 127.0.0.1:8443",
        "subject         CN=localhost",
        "DNSName(localhost)",
        "CA              CN=certgate test CA",
        "issuer CN=certgate test CA, 1 revoked, next update",
        "client_auth       = required",
        "handshake_timeout = 10s",
        "idle_timeout         = 1m",
        "subject_dn  = x-ssl-client-dn",
        "deny  /gradio_api/info",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
}

/// Every problem is reported together, each with the file, key, line and column; exit 2.
#[tokio::test]
async fn check_lists_every_problem_with_file_line_and_column() {
    let dir = scratch_dir("check-bad");
    std::fs::write(
        dir.join("garbage.pem"),
        "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    std::fs::write(dir.join("empty.pem"), "").unwrap();
    std::fs::write(dir.join("bad.crl"), "this is not a CRL").unwrap();
    let config = format!(
        r#"[listen]
https = "127.0.0.1:8443"
shutdown_timeout = "thirty seconds"

[tls]
cert = "garbage.pem"
key = "{}"
client_ca = "empty.pem"
crl = ["bad.crl", "missing.crl"]

[upstream]
url = "https://127.0.0.1:7860"
"#,
        pki_file("server.key")
    );
    let path = dir.join("certgate.toml");
    std::fs::write(&path, config).unwrap();
    let (code, _, err) = check(&path).await;
    assert_eq!(code, 2, "{err}");
    let p = path.display().to_string();
    for want in [
        format!("{p}:3:20: listen.shutdown_timeout: invalid duration"),
        format!("{p}:6:8: tls.cert: {}", dir.join("garbage.pem").display()),
        format!(
            "{p}:8:13: tls.client_ca: {}: no PEM certificate",
            dir.join("empty.pem").display()
        ),
        format!(
            "{p}:9:8: tls.crl: {}: not a CRL",
            dir.join("bad.crl").display()
        ),
        format!(
            "{p}:9:19: tls.crl: {}: cannot read",
            dir.join("missing.crl").display()
        ),
        format!("{p}:12:7: upstream.url"),
    ] {
        assert!(err.contains(&want), "missing {want:?} in:\n{err}");
    }
    assert!(err.contains("6 problems"), "{err}");
}

/// A key that belongs to another certificate, and an unknown key in the file.
#[tokio::test]
async fn check_refuses_mismatched_key_and_unknown_keys() {
    let mismatched = full_config("127.0.0.1:8443", "127.0.0.1:7860", "")
        .replace(&pki_file("server.key"), &pki_file("alice.key"));
    let (code, _, err) = check(&write_config("check-key", &mismatched)).await;
    assert_eq!(code, 2);
    assert!(
        err.contains("tls.key") && err.contains("does not match"),
        "{err}"
    );

    let unknown = full_config("127.0.0.1:8443", "127.0.0.1:7860", "")
        .replace("[upstream]\n", "[upstream]\nurll = \"x\"\n");
    let path = write_config("check-unknown", &unknown);
    let (code, _, err) = check(&path).await;
    assert_eq!(code, 2);
    assert!(
        err.contains(&format!("{}:12:1", path.display())) && err.contains("unknown field `urll`"),
        "{err}"
    );

    let (code, _, err) = check(Path::new("/nonexistent/certgate.toml")).await;
    assert_eq!(code, 2);
    assert!(
        err.contains("/nonexistent/certgate.toml: cannot read"),
        "{err}"
    );
}

/// A backend or forward-auth URL with `user:password@` is refused by `check`, and the password
/// is in no message: certgate never sends those credentials, and they would otherwise reach
/// every log line, the 502 a client reads and the operator's page that name the server.
#[tokio::test]
async fn credentials_in_a_backend_url_are_refused_and_never_shown() {
    let cases = [
        (
            full_config("127.0.0.1:8443", "u:hunter2@127.0.0.1:7860", ""),
            "upstream.url",
        ),
        (
            full_config("127.0.0.1:8443", "127.0.0.1:7860", "").replace(
                "url = \"http://127.0.0.1:7860\"",
                "servers = [{ url = \"http://:hunter2@127.0.0.1:7860\" }]",
            ),
            "upstream.servers[0].url",
        ),
        (
            full_config("127.0.0.1:8443", "u:hunter2@127.0.0.1:7860", "")
                .replace("http://", "https://"),
            "upstream.url",
        ),
        (
            full_config(
                "127.0.0.1:8443",
                "127.0.0.1:7860",
                "\n[forward_auth]\nurl = \"http://u:hunter2@127.0.0.1:5000/auth\"\n",
            ),
            "forward_auth.url",
        ),
    ];
    for (n, (config, key)) in cases.into_iter().enumerate() {
        let (code, out, err) = check(&write_config(&format!("check-userinfo-{n}"), &config)).await;
        assert_eq!(code, 2, "{key}: {out}{err}");
        assert!(err.contains(key) && err.contains("credentials"), "{err}");
        assert!(
            !err.contains("hunter2") && !out.contains("hunter2"),
            "{err}"
        );
    }
}

/// Listen address in use: exit 1 naming the address.
#[tokio::test]
async fn run_with_address_in_use_exits_1() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let path = write_config("busy", &full_config(&addr, "127.0.0.1:7860", ""));
    let out = tokio::time::timeout(LIMIT, certgate().arg("run").arg("-c").arg(&path).output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("cannot listen on {addr}")), "{err}");
}

/// A running daemon with its stderr lines forwarded to a channel.
struct Daemon {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    addr: std::net::SocketAddr,
}

impl Daemon {
    async fn start(config: &Path) -> Daemon {
        let mut cmd = certgate();
        cmd.arg("run").arg("-c").arg(config);
        Self::spawn(cmd).await
    }

    async fn spawn(mut cmd: Command) -> Daemon {
        let mut child = cmd
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::unbounded_channel();
        let mut reader = BufReader::new(child.stderr.take().unwrap()).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = reader.next_line().await {
                let _ = tx.send(line);
            }
        });
        let mut d = Daemon {
            child,
            lines,
            addr: "0.0.0.0:0".parse().unwrap(),
        };
        let line = d.wait_line("certgate listening").await;
        let at = line
            .find("127.0.0.1:")
            .expect("address in the listening line");
        let addr: String = line[at..]
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
            .collect();
        d.addr = addr.parse().unwrap();
        d
    }

    async fn wait_line(&mut self, needle: &str) -> String {
        tokio::time::timeout(LIMIT, async {
            loop {
                let line = self
                    .lines
                    .recv()
                    .await
                    .unwrap_or_else(|| panic!("daemon exited before {needle:?}"));
                if line.contains(needle) {
                    return line;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no {needle:?} within {LIMIT:?}"))
    }

    /// SIGTERM, then the process must exit 0.
    async fn stop_ok(&mut self) {
        self.signal("-TERM");
        let status = tokio::time::timeout(LIMIT, self.child.wait())
            .await
            .expect("did not exit after SIGTERM")
            .unwrap();
        assert_eq!(status.code(), Some(0));
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.id().unwrap().to_string();
        let ok = std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap();
        assert!(ok.success());
    }
}

/// SIGTERM with a slow request in flight: the listener closes at once, the request completes,
/// then the process exits 0.
#[tokio::test]
async fn sigterm_lets_the_request_in_flight_finish() {
    let backend = Backend::start().await;
    let path = write_config(
        "sigterm",
        &full_config("127.0.0.1:0", &backend.addr.to_string(), ""),
    );
    let mut d = Daemon::start(&path).await;
    let mut send = h1(d.addr, alice()).await;
    let slow = tokio::spawn(async move { get1(&mut send, "/slow", &[]).await });
    backend.arrived().await;
    d.signal("-TERM");
    d.wait_line("shutting down").await;
    assert!(
        tokio::net::TcpStream::connect(d.addr).await.is_err(),
        "still accepting after SIGTERM"
    );
    backend.release();
    let got = tokio::time::timeout(LIMIT, slow).await.unwrap().unwrap();
    assert_eq!(got.status, 200);
    assert_eq!(got.body, "slow done");
    let status = tokio::time::timeout(LIMIT, d.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

/// `[log] format = "json"`: every stderr line is a JSON object; the access line has the fields
/// of spec §7, and a refused handshake has the peer and the reason.
#[tokio::test]
async fn json_logs_have_access_and_handshake_fields() {
    let backend = Backend::start().await;
    let path = write_config(
        "json-log",
        &full_config(
            "127.0.0.1:0",
            &backend.addr.to_string(),
            "\n[log]\nformat = \"json\"\n",
        ),
    );
    let mut d = Daemon::start(&path).await;
    assert_eq!(get_once(d.addr, alice(), "/logged?q=1").await.status, 200);
    let access = d.wait_line("certgate::access").await;
    let v: serde_json::Value = serde_json::from_str(&access).unwrap();
    assert_eq!(v["method"], "GET");
    assert_eq!(v["path"], "/logged");
    assert_eq!(v["status"], 200);
    assert_eq!(v["verify"], "SUCCESS");
    assert_eq!(
        v["dn"],
        "CN=admin@face.analyze,OU=Admin,O=FaceAnalysis,L=Beijing,ST=Beijing,C=CN"
    );
    assert_eq!(v["bytes"], "backend saw /logged?q=1".len());
    assert!(v["client"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(v["duration_ms"].is_number() && v["timestamp"].is_string());

    assert_refused(d.addr, client_config(None, &["http/1.1"])).await;
    let refused = d.wait_line("TLS handshake failed").await;
    let v: serde_json::Value = serde_json::from_str(&refused).unwrap();
    assert_eq!(v["reason"], "no certificate");
    assert!(v["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
    d.stop_ok().await;
}

/// `certgate demo` as the README runs it: PKI made, the printed curl with the certificate gets
/// the echo with identity headers, the one without is refused, Ctrl-C exits 0.
#[tokio::test]
async fn demo_works_as_the_readme_says() {
    let dir = scratch_dir("demo").join("certs");
    let mut child = certgate()
        .arg("demo")
        .arg("--dir")
        .arg(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut curls = Vec::new();
    tokio::time::timeout(LIMIT, async {
        while let Some(line) = out.next_line().await.unwrap() {
            if line.trim_start().starts_with("curl ") {
                curls.push(line.trim().to_string());
            }
            if line.contains("Press Ctrl-C") {
                break;
            }
        }
    })
    .await
    .expect("demo did not start");
    assert_eq!(curls.len(), 3, "{curls:?}");
    let sh = |cmd: &str| {
        std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("{cmd} --max-time 20 -sS"))
            .output()
            .unwrap()
    };
    let with = sh(&curls[0]);
    assert!(
        with.status.success(),
        "{}",
        String::from_utf8_lossy(&with.stderr)
    );
    let echo: serde_json::Value = serde_json::from_slice(&with.stdout).unwrap();
    assert_eq!(echo["headers"]["x-ssl-client-verify"], "SUCCESS");
    assert_eq!(
        echo["headers"]["x-ssl-client-dn"],
        "CN=demo-user@certgate.local,OU=Demo,O=certgate demo,C=CN"
    );
    assert!(!sh(&curls[1]).status.success());
    let denied = sh(&curls[2]);
    assert!(String::from_utf8_lossy(&denied.stdout).contains("\"forbidden\""));
    for f in ["ca.key", "server.key", "client.key", "client.p12"] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{f}");
    }
    let pid = child.id().unwrap().to_string();
    std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    let status = tokio::time::timeout(LIMIT, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

/// A folder with the test PKI under the file names the example configs use, and a JWT secret.
fn example_dir(name: &str) -> PathBuf {
    let dir = scratch_dir(name);
    for (from, to) in [
        ("server.crt", "server.crt"),
        ("server.key", "server.key"),
        ("ca-bundle.crt", "ca.crt"),
        ("ca.crl", "ca.crl"),
    ] {
        std::fs::copy(test_pki().dir.join(from), dir.join(to)).unwrap();
    }
    std::fs::write(
        dir.join("jwt.secret"),
        "0123456789abcdef0123456789abcdef-deoldify\n",
    )
    .unwrap();
    dir
}

/// Every shipped example config passes `certgate check`.
#[tokio::test]
async fn shipped_example_configs_pass_check() {
    for name in ["certgate.toml", "deoldify.toml", "gradio-optional.toml"] {
        let dir = example_dir(&format!("example-{name}"));
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("config")
                .join(name),
        )
        .unwrap();
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        let (code, out, err) = check(&path).await;
        assert_eq!(code, 0, "{name}: {err}");
        assert!(out.contains("is valid"), "{name}: {out}");
        for want in [
            "[limits]",
            "max_body = 50.0 MiB",
            "send_timeout = 1m, body_timeout = 1m",
            "[reload]",
            "[sandbox]",
            "x-frame-options: DENY",
        ] {
            assert!(out.contains(want), "{name}: missing {want:?} in:\n{out}");
        }
        if name == "deoldify.toml" {
            for want in [
                "algorithms [HS256], issuer deoldify_api_gateway",
                "\"user_id\" -> x-auth-subject",
                "methods POST, allow_ips, client certificate required, auth jwt, rate_limit api, max_body 50.0 MiB, strip_prefix /api",
                "[[rate_limit]] api: Client, 10 per 1s, burst 20",
                "strip_prefix /api, queue gpu)",
                "[[queue]] gpu: 1 slot(s) per server, 1 per person at once, 16 waiting per person at most, max_wait 10m, key \"subject\", protocol \"http\"",
            ] {
                assert!(out.contains(want), "missing {want:?} in:\n{out}");
            }
            assert!(
                !out.contains("0123456789abcdef"),
                "the JWT secret was printed"
            );
        }
    }
}

/// Invalid policy config: each problem named with file, key, line and column, all together.
#[tokio::test]
async fn invalid_policy_config_names_every_problem() {
    let dir = example_dir("policy-bad");
    let config = r#"[listen]
https = "127.0.0.1:8443"

[tls]
cert = "server.crt"
key = "server.key"
client_ca = "ca.crt"

[access]
allow_ips = ["10.0.0.0/33"]

[[rate_limit]]
name = "api"
rate = "10 per second"

[jwt]
algorithms = []
public_key_file = "missing.pem"

[[route]]
path = "/api"
action = "allow"
rate_limit = "apii"
methods = ["GET"]
max_body = "lots"
"#;
    let path = dir.join("certgate.toml");
    std::fs::write(&path, config).unwrap();
    let (code, _, err) = check(&path).await;
    assert_eq!(code, 2, "{err}");
    let p = path.display().to_string();
    for want in [
        format!(
            "{p}:10:14: access.allow_ips: \"10.0.0.0/33\" is neither an IP address nor a CIDR block"
        ),
        format!("{p}:14:8: rate_limit[0].rate: \"10 per second\""),
        format!("{p}:17:14: jwt.algorithms: list at least one algorithm"),
        format!("{p}:23:14: route[0].rate_limit: no [[rate_limit]] zone named \"apii\""),
        format!("{p}:25:12: route[0].max_body: invalid size \"lots\""),
    ] {
        assert!(err.contains(&want), "missing {want:?} in:\n{err}");
    }
    let unreadable = std::fs::read_to_string(&path)
        .unwrap()
        .replace("algorithms = []", "algorithms = [\"RS256\"]");
    std::fs::write(&path, &unreadable).unwrap();
    let (code, _, err) = check(&path).await;
    assert_eq!(code, 2);
    assert!(
        err.contains(&format!(
            "{p}:18:19: jwt.public_key_file: {}: cannot read",
            dir.join("missing.pem").display()
        )),
        "{err}"
    );
    // The [jwt] section is there, only its file is not: a route using it is not told otherwise.
    let with_auth =
        unreadable.replace("methods = [\"GET\"]", "methods = [\"GET\"]\nauth = \"jwt\"");
    std::fs::write(&path, with_auth).unwrap();
    let (code, _, err) = check(&path).await;
    assert_eq!(code, 2);
    assert!(err.contains("jwt.public_key_file"), "{err}");
    assert!(!err.contains("needs a [jwt] section"), "{err}");
}

/// The DeOldify gateway of the classic guide, from `config/deoldify.toml`: a client with a
/// certificate and a token minted by `certgate token issue` colorizes; `/health` is open without
/// a certificate; everything else is refused as the nginx config did.
#[tokio::test]
async fn deoldify_gateway_with_a_minted_token() {
    let dir = example_dir("deoldify");
    let backend = Backend::start().await;
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/deoldify.toml"))
            .unwrap()
            .replace("0.0.0.0:443", "127.0.0.1:0")
            .replace("0.0.0.0:80", "127.0.0.1:0")
            .replace("http://127.0.0.1:5000", &format!("http://{}", backend.addr));
    let path = dir.join("deoldify.toml");
    std::fs::write(&path, &text).unwrap();
    let secret = dir.join("jwt.secret");
    let out = certgate()
        .args([
            "token",
            "issue",
            "--secret-file",
            secret.to_str().unwrap(),
            "--sub",
            "alice",
        ])
        .args([
            "--iss",
            "deoldify_api_gateway",
            "--claim",
            "user_id=alice",
            "--ttl",
            "1h",
        ])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let verified = certgate()
        .args(["token", "verify", "-c", path.to_str().unwrap(), &token])
        .output()
        .await
        .unwrap();
    assert!(
        verified.status.success(),
        "{}",
        String::from_utf8_lossy(&verified.stderr)
    );
    assert!(String::from_utf8_lossy(&verified.stdout).contains("\"alice\""));
    let tampered = format!("{token}x");
    let refused = certgate()
        .args(["token", "verify", "-c", path.to_str().unwrap(), &tampered])
        .output()
        .await
        .unwrap();
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("refused: bad signature"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    let proxy = Proxy::start_file(&path).await;
    let bearer = format!("Bearer {token}");
    let mut s = h1(proxy.addr, alice()).await;
    let req = http::Request::post("/api/colorize")
        .header("host", "localhost")
        .header("authorization", &bearer)
        .body(full(vec![0u8; 4096]))
        .unwrap();
    let got = read(s.send_request(req).await.unwrap()).await;
    assert_eq!(got.status, 200, "{}", got.body);
    assert_eq!(got.headers["strict-transport-security"], "max-age=31536000");
    let seen = backend.only();
    assert_eq!(seen.target, "/colorize");
    assert_eq!(seen.headers["x-auth-subject"], "alice");

    assert_eq!(
        get_once(proxy.addr, client_config(None, &["http/1.1"]), "/health")
            .await
            .status,
        200
    );
    assert_eq!(
        get1(&mut s, "/api/colorize", &[("authorization", &bearer)])
            .await
            .status,
        405
    );
    assert_eq!(get1(&mut s, "/anything-else", &[]).await.status, 403);
    let no_token = http::Request::post("/api/colorize")
        .header("host", "localhost")
        .body(full("x"))
        .unwrap();
    assert_eq!(s.send_request(no_token).await.unwrap().status(), 401);
    let mut anon = h1(proxy.addr, client_config(None, &["http/1.1"])).await;
    let no_cert = http::Request::post("/api/colorize")
        .header("host", "localhost")
        .header("authorization", &bearer)
        .body(full("x"))
        .unwrap();
    assert_eq!(anon.send_request(no_cert).await.unwrap().status(), 403);
    assert_eq!(backend.seen().len(), 2);
}

/// SIGHUP with a broken config: the old state keeps serving, and the error names the file,
/// line and column; a fixed config then reloads.
#[tokio::test]
async fn sighup_with_broken_config_keeps_serving() {
    let backend = Backend::start().await;
    let good = full_config("127.0.0.1:0", &backend.addr.to_string(), "");
    let path = write_config("sighup-broken", &good);
    let mut d = Daemon::start(&path).await;
    std::fs::write(
        &path,
        good.replace(
            "shutdown_timeout = \"20s\"",
            "shutdown_timeout = \"20s\"\nbogus = 1",
        ),
    )
    .unwrap();
    d.signal("-HUP");
    let line = d.wait_line("reload failed").await;
    assert!(
        line.contains(&format!("{}:4:1", path.display())) && line.contains("bogus"),
        "{line}"
    );
    assert_eq!(
        get_once(d.addr, alice(), "/still-serving").await.status,
        200
    );
    std::fs::write(&path, good.replace("/gradio_api/info", "/gradio_api/other")).unwrap();
    d.signal("-HUP");
    d.wait_line("reload complete").await;
    assert_eq!(
        get_once(d.addr, alice(), "/gradio_api/info").await.status,
        200
    );
    d.stop_ok().await;
}

/// sd_notify, read from the test's own NOTIFY_SOCKET: READY=1, then RELOADING=1 with
/// MONOTONIC_USEC and READY=1 around a SIGHUP reload, then STOPPING=1 on SIGTERM; watchdog
/// pings when WATCHDOG_USEC is set.
#[tokio::test]
async fn sd_notify_messages_arrive_in_order() {
    let backend = Backend::start().await;
    let path = write_config(
        "sd-notify",
        &full_config("127.0.0.1:0", &backend.addr.to_string(), ""),
    );
    let socket_path = path.parent().unwrap().join("notify.sock");
    let socket = tokio::net::UnixDatagram::bind(&socket_path).unwrap();
    let mut cmd = certgate();
    cmd.arg("run")
        .arg("-c")
        .arg(&path)
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "200000");
    let mut d = Daemon::spawn(cmd).await;
    let mut messages: Vec<String> = Vec::new();
    let mut watchdog_pings = 0;
    let next = |want: &'static str| {
        let socket = &socket;
        async move {
            let mut buf = vec![0u8; 4096];
            tokio::time::timeout(LIMIT, async {
                loop {
                    let n = socket.recv(&mut buf).await.unwrap();
                    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                    if msg.trim() == "WATCHDOG=1" {
                        return (msg, true);
                    }
                    if msg.contains(want) {
                        return (msg, false);
                    }
                }
            })
            .await
            .unwrap_or_else(|_| panic!("no {want} from sd_notify"))
        }
    };
    let (ready, _) = loop {
        let (m, ping) = next("READY=1").await;
        if ping {
            watchdog_pings += 1
        } else {
            break (m, ping);
        }
    };
    messages.push(ready);
    d.signal("-HUP");
    for want in ["RELOADING=1", "READY=1"] {
        loop {
            let (m, ping) = next(want).await;
            if ping {
                watchdog_pings += 1;
            } else {
                messages.push(m);
                break;
            }
        }
    }
    while watchdog_pings == 0 {
        if next("WATCHDOG=1").await.1 {
            watchdog_pings += 1;
        }
    }
    d.signal("-TERM");
    loop {
        let (m, ping) = next("STOPPING=1").await;
        if !ping {
            messages.push(m);
            break;
        }
    }
    assert!(messages[0].contains("READY=1"), "{messages:?}");
    assert!(
        messages[1].contains("RELOADING=1") && messages[1].contains("MONOTONIC_USEC="),
        "{messages:?}"
    );
    assert!(messages[2].contains("READY=1"), "{messages:?}");
    assert!(messages[3].contains("STOPPING=1"), "{messages:?}");
    assert!(watchdog_pings > 0);
    assert_eq!(
        tokio::time::timeout(LIMIT, d.child.wait())
            .await
            .unwrap()
            .unwrap()
            .code(),
        Some(0)
    );
}

/// Socket activation: a listening socket created by the test is passed as fd 3 with
/// LISTEN_FDS/LISTEN_PID/LISTEN_FDNAMES, and certgate serves on it instead of binding
/// `[listen] https` (which here points at a port nobody listens on).
#[tokio::test]
async fn socket_activation_uses_the_passed_listener() {
    use std::os::fd::AsRawFd;
    let backend = Backend::start().await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let unused = backend::dead_addr().await;
    let path = write_config(
        "socket-activation",
        &full_config(&unused.to_string(), &backend.addr.to_string(), ""),
    );
    let fd = listener.as_raw_fd();
    let mut cmd = Command::new("sh");
    cmd.kill_on_drop(true)
        .stdin(Stdio::null())
        .env_remove("RUST_LOG")
        .arg("-c")
        .arg("LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=https exec \"$0\" run -c \"$1\"")
        .arg(env!("CARGO_BIN_EXE_certgate"))
        .arg(&path);
    // Safety: dup2 is async-signal-safe; it runs in the child between fork and exec.
    #[allow(
        unsafe_code,
        reason = "socket activation: the listener must sit on fd 3 in the child, as systemd puts it"
    )]
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut d = Daemon::spawn(cmd).await;
    assert_eq!(d.addr, addr, "certgate did not take the passed socket");
    drop(listener);
    assert_eq!(get_once(addr, alice(), "/activated").await.status, 200);
    assert!(tokio::net::TcpStream::connect(unused).await.is_err());
    d.stop_ok().await;
}

/// `--log-format json` overrides `[log] format = "text"`: every line is a JSON object,
/// the reload line included.
#[tokio::test]
async fn log_format_flag_makes_every_line_json() {
    let backend = Backend::start().await;
    let path = write_config(
        "log-flag",
        &full_config(
            "127.0.0.1:0",
            &backend.addr.to_string(),
            "\n[log]\nformat = \"text\"\n",
        ),
    );
    let mut cmd = certgate();
    cmd.args(["run", "--log-format", "json", "-c"]).arg(&path);
    let mut d = Daemon::spawn(cmd).await;
    assert_eq!(get_once(d.addr, alice(), "/j").await.status, 200);
    d.signal("-HUP");
    let reload = d.wait_line("reload complete").await;
    let v: serde_json::Value = serde_json::from_str(&reload).unwrap();
    assert_eq!(v["trigger"], "SIGHUP");
    d.stop_ok().await;
    while let Ok(line) = d.lines.try_recv() {
        serde_json::from_str::<serde_json::Value>(&line)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    }
}

/// `systemd-analyze verify` accepts deploy/certgate.service and certgate.socket without a single
/// warning on the systemd the tests run on (252 on Debian 12): the unit uses nothing newer than
/// systemd 249 (`Type=notify` and `ExecReload=`, not `Type=notify-reload`).
#[tokio::test]
async fn systemd_unit_verifies() {
    let dir = scratch_dir("systemd-verify");
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let unit = std::fs::read_to_string(deploy.join("certgate.service")).unwrap();
    // The unit names `certgate` without a path (systemd looks in /usr/local/bin and /usr/bin);
    // here it is the binary under test.
    let bin = env!("CARGO_BIN_EXE_certgate");
    let unit = unit
        .replace("ExecStartPre=certgate ", &format!("ExecStartPre={bin} "))
        .replace("ExecStart=certgate ", &format!("ExecStart={bin} "));
    assert!(unit.contains(&format!("ExecStart={bin} run")), "{unit}");
    std::fs::write(dir.join("certgate.service"), unit).unwrap();
    std::fs::copy(deploy.join("certgate.socket"), dir.join("certgate.socket")).unwrap();
    systemd_verify_clean(
        &[dir.join("certgate.service"), dir.join("certgate.socket")],
        None,
    );
}

/// Runs `systemd-analyze verify` on `units` (inside `root` when given) and fails on a non-zero
/// exit or on any line it prints.
pub fn systemd_verify_clean(units: &[PathBuf], root: Option<&Path>) {
    let mut cmd = std::process::Command::new("systemd-analyze");
    cmd.args(["verify", "--man=no"]);
    if let Some(root) = root {
        cmd.arg(format!("--root={}", root.display()));
    }
    let out = cmd
        .args(units)
        .output()
        .expect("systemd-analyze is installed (scripts/test installs systemd)");
    let err = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "systemd-analyze verify: {err}");
    let printed: Vec<&str> = err
        .lines()
        .chain(stdout.lines())
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert!(
        printed.is_empty(),
        "systemd-analyze verify warned:\n{}",
        printed.join("\n")
    );
}

use crate::common::backend;

/// The manifests of deploy/kubernetes, every one that kustomization.yaml lists.
const KUBERNETES_MANIFESTS: [&str; 6] = [
    "deployment.yaml",
    "service.yaml",
    "gradio-statefulset.yaml",
    "gradio-service.yaml",
    "networkpolicy-certgate.yaml",
    "networkpolicy-gradio.yaml",
];

/// deploy/kubernetes: every manifest passes the Kubernetes schemas strictly
/// (kubernetes-validate, installed by scripts/test) and is in kustomization.yaml; the topology
/// holds together (the StatefulSet's headless Service is the DNS name `servers` lists, one
/// entry per pod; the admin port is in no NetworkPolicy rule; Gradio admits only certgate's
/// pods; Redis is `rediss://`); and certgate.toml loads — with the Secret's files where the
/// test PKI has them and a Redis password file.
#[test]
fn kubernetes_manifests_validate_and_the_sidecar_config_loads() {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes");
    let validator = Path::new(&python())
        .parent()
        .expect("a venv bin folder")
        .join("kubernetes-validate");
    let out = std::process::Command::new(&validator)
        .arg("--strict")
        .args(KUBERNETES_MANIFESTS.map(|m| deploy.join(m)))
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}; run scripts/test", validator.display()));
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert_eq!(
        text.matches(" passed ").count(),
        KUBERNETES_MANIFESTS.len(),
        "{text}"
    );
    let read = |f: &str| std::fs::read_to_string(deploy.join(f)).unwrap();
    let kustomization = read("kustomization.yaml");
    for m in KUBERNETES_MANIFESTS {
        assert!(
            kustomization.contains(&format!("- {m}")),
            "{m} not in kustomization.yaml"
        );
    }
    let statefulset = read("gradio-statefulset.yaml");
    assert!(
        statefulset.contains("kind: StatefulSet") && statefulset.contains("serviceName: gradio")
    );
    assert!(read("gradio-service.yaml").contains("clusterIP: None"));
    let replicas: usize = statefulset
        .lines()
        .find_map(|l| l.trim().strip_prefix("replicas: "))
        .and_then(|n| n.parse().ok())
        .expect("replicas");
    let shipped = read("certgate.toml");
    for pod in 0..replicas {
        assert!(
            shipped.contains(&format!("\"http://gradio-{pod}.gradio:7860\"")),
            "gradio-{pod} not in servers"
        );
    }
    assert!(shipped.contains("redis = \"rediss://"), "Redis without TLS");
    let rules = |f: &str| {
        read(f)
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let certgate_policy = rules("networkpolicy-certgate.yaml");
    assert!(certgate_policy.contains("port: 8443") && !certgate_policy.contains("9090"));
    let gradio_policy = rules("networkpolicy-gradio.yaml");
    assert!(gradio_policy.contains("app.kubernetes.io/name: certgate"));

    let dir = scratch_dir("k8s-sidecar");
    std::fs::write(dir.join("password"), "redis-secret\n").unwrap();
    let pki = test_pki().dir.display().to_string();
    std::fs::copy(test_pki().dir.join("ca.crt"), dir.join("ca.crt")).unwrap();
    let toml = std::fs::read_to_string(deploy.join("certgate.toml"))
        .unwrap()
        .replace(
            "/etc/certgate/tls/ca.crt",
            &dir.join("ca.crt").display().to_string(),
        )
        .replace("/etc/certgate/tls/", &format!("{pki}/"))
        .replace(
            "/etc/certgate/redis/password",
            &dir.join("password").display().to_string(),
        )
        .replace("/etc/certgate/redis/ca.crt", &format!("{pki}/ca.crt"));
    let config = certgate::config::Config::from_str(&toml, &dir.join("certgate.toml"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(config.shared.is_some());
    assert_eq!(config.admin.map(|a| a.port()), Some(9090));
}
