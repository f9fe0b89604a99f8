//! The operator's page (spec §16): traffic from several identities — admitted, refused at the
//! handshake for each of the help page's reasons, refused by a route, rate-limited — then the
//! page read with an admin certificate (HTML, its JSON twin, the admin listener's copy, and in
//! headless Chromium), a non-admin refused, and a reload that keeps what the page knows.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;

use crate::common::*;

const PAGE: &str = "/.well-known/certgate/console";

/// The routes and sections the tests share: a rate-limited `/api` (one a minute), a `/private`
/// nobody is allowed on, the admin listener, and the console for OU=Admin (`alice`).
const SITE: &str = r#"
[admin]
listen = "127.0.0.1:0"

[limits]
handshake_failures_per_ip = "1000/m"

[[rate_limit]]
name = "api"
rate = "1/m"
burst = 1

[[route]]
path = "/api"
action = "allow"
rate_limit = "api"

[[route]]
path = "/private"
action = "allow"
allow = { cn = ["nobody"] }

[console]
allow = { ou = ["Admin"] }
"#;

const HOSTILE_CN: &str = "<script>alert(\"cn\")</script>";

fn hostile() -> Identity {
    custom_client(|p| {
        p.distinguished_name
            .push(rcgen::DnType::CommonName, HOSTILE_CN);
        p.distinguished_name.push(
            rcgen::DnType::OrganizationName,
            "\"><img src=x onerror=alert(1)>",
        );
    })
}

async fn get(addr: SocketAddr, cfg: Arc<ClientConfig>, path: &str, accept: Option<&str>) -> Got {
    let mut send = h1(addr, cfg).await;
    let headers: Vec<(&str, &str)> = accept.map(|a| ("accept", a)).into_iter().collect();
    get1(&mut send, path, &headers).await
}

/// The JSON twin, read as the admin, once it counts `refusals` refusals and `people` people: a
/// handshake refusal is recorded after the client has seen its alert, and a request when its
/// response has ended on the server's side, so the page may be asked a moment before.
async fn json_with(
    addr: SocketAddr,
    refusals: u64,
    people: u64,
    requests: u64,
) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let got = get(addr, alice(), &format!("{PAGE}?format=json"), None).await;
        assert_eq!(got.status, 200, "{}", got.body);
        let v = got.json();
        let counted: u64 = v["people"]["rows"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["cn"] != "admin@face.analyze")
            .map(|r| {
                ["ok", "client_errors", "server_errors"]
                    .iter()
                    .map(|k| r[k].as_u64().unwrap())
                    .sum::<u64>()
            })
            .sum();
        if v["refusals"]["total"].as_u64().unwrap() >= refusals
            && v["people"]["total"].as_u64().unwrap() >= people
            && counted >= requests
        {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never {refusals} refusals, {people} people and {requests} requests: {v}"
        );
        tokio::task::yield_now().await;
    }
}

/// The requests [`traffic`] makes, the admin's aside: zhang's 4, inter-client's 2, the
/// hostile one's 1.
const REQUESTS: u64 = 7;

fn row<'a>(v: &'a serde_json::Value, cn: &str) -> &'a serde_json::Value {
    v["people"]["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["cn"] == cn)
        .unwrap_or_else(|| panic!("no row for {cn}: {}", v["people"]))
}

/// Drives the traffic the page is about; returns the number of refusals it causes.
async fn traffic(addr: SocketAddr) -> u64 {
    let pki = test_pki();
    let zhang = client_config(Some(&pki.zhang), &[]);
    let mut send = h1(addr, zhang.clone()).await;
    assert_eq!(get1(&mut send, "/app", &[]).await.status, 200);
    assert_eq!(get1(&mut send, "/api/run", &[]).await.status, 200);
    assert_eq!(get1(&mut send, "/api/run", &[]).await.status, 429);
    assert_eq!(get1(&mut send, "/private", &[]).await.status, 403);
    for _ in 0..2 {
        let got = get(
            addr,
            client_config(Some(&pki.inter_client), &[]),
            "/app",
            None,
        )
        .await;
        assert_eq!(got.status, 200);
    }
    let got = get(addr, client_config(Some(&hostile()), &[]), "/app", None).await;
    assert_eq!(got.status, 200);
    // Refused at the handshake, one of each reason the help page names.
    for id in [
        None,
        Some(&pki.expired),
        Some(&pki.not_yet_valid),
        Some(&pki.revoked),
        Some(&pki.impostor),
    ] {
        assert_refused(addr, client_config(id, &[])).await;
    }
    // The admin has read the page once.
    assert_eq!(get(addr, alice(), PAGE, None).await.status, 200);
    2 + 5
}

/// The page lists each identity with its requests by class, refusals with the last reason and
/// rate-limited count; the refusals with the help page's words and counts per reason; the
/// backend; the daemon. A non-admin gets 403 (logged, never forwarded, whatever the spelling of
/// the path); hostile certificate fields are text; the admin listener serves the same page.
#[tokio::test]
async fn the_page_shows_who_came_in_who_was_refused_and_why() {
    let (logs, _guard) = LogCapture::start();
    let pki = test_pki();
    let backend = Backend::start().await;
    let proxy = Proxy::start(backend.addr, SITE).await;
    let mut refusals = traffic(proxy.addr).await;

    // Not an operator: 403 like a refused route, for every spelling of the path.
    let zhang = client_config(Some(&pki.zhang), &[]);
    for path in [
        PAGE,
        "//.well-known/certgate/./console",
        "/.well-known/certgate/%63onsole?format=json",
        "/.well-known/CERTGATE/console/",
    ] {
        let got = get(proxy.addr, zhang.clone(), path, Some("text/html")).await;
        assert_eq!(got.status, 403, "{path}: {}", got.body);
        assert_eq!(got.json()["error"], "forbidden");
        assert!(
            got.json()["message"]
                .as_str()
                .unwrap()
                .contains("[console] allow"),
            "{}",
            got.body
        );
        refusals += 1;
    }
    logs.wait_for(&["request refused", "console allow"]).await;
    assert!(
        backend.seen().iter().all(|s| !s.target.contains("console")),
        "{:?}",
        backend.seen()
    );

    // ... and zhang's 4 at the page.
    let v = json_with(proxy.addr, refusals, 4, REQUESTS + 4).await;
    let p = &v["people"];
    // zhang, inter-client, the hostile one, and the admin reading the page.
    assert_eq!(p["total"], 4, "{p}");
    assert_eq!(p["showing"], 4);
    let z = row(&v, "张小明");
    // The DN as nginx prints it (RFC 2253 escapes UTF-8); the name decoded.
    assert!(
        z["subject_dn"]
            .as_str()
            .unwrap()
            .starts_with("CN=\\E5\\BC\\A0"),
        "{z}"
    );
    assert_eq!(
        (z["ok"].as_u64(), z["client_errors"].as_u64()),
        (Some(2), Some(6))
    );
    assert_eq!(z["refusals"], 6);
    assert_eq!(z["rate_limited"], 1);
    assert!(
        z["last_refusal"]
            .as_str()
            .unwrap()
            .contains("[console] allow"),
        "{z}"
    );
    assert!(z["bytes_out"].as_u64().unwrap() > 0);
    assert!(z["days_left"].as_i64().unwrap() >= 363);
    assert_eq!(z["expiring_soon"], false);
    assert!(
        z["revoke_command"]
            .as_str()
            .unwrap()
            .starts_with("certgate certs revoke --dir \"$CA_DIR\" --serial "),
        "{z}"
    );
    assert_eq!(
        z["renew_command"],
        "certgate certs renew --dir \"$CA_DIR\" --name '张小明'"
    );
    let inter = row(&v, "inter-client");
    assert_eq!(
        (inter["ok"].as_u64(), inter["refusals"].as_u64()),
        (Some(2), Some(0))
    );
    assert_eq!(row(&v, HOSTILE_CN)["ok"], 1);

    let r = &v["refusals"];
    let per_reason: std::collections::HashMap<String, u64> = r["per_reason"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["reason"].as_str().unwrap().to_string(),
                c["count"].as_u64().unwrap(),
            )
        })
        .collect();
    for (reason, count) in [
        ("no certificate", 1),
        ("expired", 1),
        ("not yet valid", 1),
        ("revoked", 1),
        ("unknown issuer", 1),
        ("route[0] /api rate_limit api", 1),
        ("route[1] /private allow", 1),
        ("console allow", 4),
    ] {
        assert_eq!(
            per_reason.get(reason),
            Some(&count),
            "{reason}: {per_reason:?}"
        );
    }
    let words: Vec<&str> = r["recent"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["words"].as_str().unwrap())
        .collect();
    // The help page's own sentences (spec §13).
    for sentence in [
        "Your browser did not present a client certificate",
        "Your certificate has been revoked and can no longer be used here.",
        "issued by a certificate authority this site does not trust",
    ] {
        assert!(
            words.iter().any(|w| w.contains(sentence)),
            "{sentence}: {words:?}"
        );
    }
    let servers = &v["backends"][0]["servers"];
    assert_eq!(servers[0]["url"], format!("http://{}", backend.addr));
    assert_eq!(servers[0]["healthy"], true);
    assert_eq!(v["queues"], serde_json::json!([]));
    assert_eq!(v["daemon"]["version"], env!("CARGO_PKG_VERSION"));
    assert!(
        v["requests_per_minute"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c.as_u64() > Some(0))
    );
    assert!(
        v["busiest"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["cn"] == "张小明"),
        "{}",
        v["busiest"]
    );

    // The HTML: the same people, every value escaped, the page's own headers.
    let got = get(
        proxy.addr,
        alice(),
        PAGE,
        Some("text/html,application/xhtml+xml,application/json;q=0.9,*/*;q=0.8"),
    )
    .await;
    assert_eq!(got.status, 200);
    assert_eq!(got.headers["content-type"], "text/html; charset=utf-8");
    assert_eq!(got.headers["cache-control"], "no-store");
    let csp = got.headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.starts_with("default-src 'none'; style-src 'sha256-"),
        "{csp}"
    );
    assert!(!csp.contains("unsafe"), "{csp}");
    for tag in ["<script", "<img", "<link", "<iframe"] {
        assert!(!got.body.contains(tag), "{tag} on the page");
    }
    assert!(
        got.body
            .contains("&lt;script&gt;alert(&quot;cn&quot;)&lt;/script&gt;")
    );
    assert!(got.body.contains("Showing 4 of 4."), "showing");
    assert!(got.body.contains("张小明"));
    assert!(got.body.contains("data-reason=\"unknown issuer\""));
    assert!(got.body.contains("<svg id=\"chart\""));
    assert!(got.body.contains("No queues configured."));
    // The JSON twin by Accept, with markup characters escaped.
    let got = get(proxy.addr, alice(), PAGE, Some("application/json")).await;
    assert_eq!(got.headers["content-type"], "application/json");
    assert!(!got.body.contains('<'), "{}", got.body);
    assert_eq!(got.json()["people"]["total"], 4);

    // The admin listener's `/`: the same page, no allow-list (it is the operator's own).
    let admin = proxy.admin.unwrap();
    let (status, html) = admin_get(admin, "/").await;
    assert_eq!(status, 200);
    assert!(html.contains("Showing 4 of 4."));
    let (_, json) = admin_get(admin, "/?format=json").await;
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(row(&v, "张小明")["rate_limited"], 1);

    // No secret on the page: no certificate, no key.
    for secret in ["BEGIN", "PRIVATE", "MII"] {
        assert!(!json.contains(secret), "{secret}");
    }
}

/// The admin listener serves the page only to a request that names it by address or as
/// `localhost`: under any other name it would be a web page's own origin rebound to 127.0.0.1
/// (DNS rebinding), which the operator's browser would let that page read. Its other paths,
/// which a prober or a scraper asks for by a service name, answer under any name.
#[tokio::test]
async fn the_admin_listeners_page_is_not_served_under_a_rebound_name() {
    let pki = test_pki();
    let backend = Backend::start().await;
    let proxy = Proxy::start(backend.addr, SITE).await;
    // Someone for the page to name.
    let mut send = h1(proxy.addr, client_config(Some(&pki.zhang), &[])).await;
    assert_eq!(get1(&mut send, "/", &[]).await.status, 200);
    let admin = proxy.admin.unwrap();
    let port = admin.port();
    for host in [
        format!("rebind.attacker.example:{port}"),
        "rebind.attacker.example".to_string(),
        format!("localhost.attacker.example:{port}"),
        format!("127.0.0.1.nip.io:{port}"),
    ] {
        for path in ["/", "/?format=json"] {
            let (status, body) = admin_get_as(admin, &host, path).await;
            assert_eq!(status, 403, "{host}{path}: {body}");
            assert!(
                !body.contains("张小明") && body.contains("localhost"),
                "{body}"
            );
        }
        assert_eq!(admin_get_as(admin, &host, "/livez").await.0, 200);
        assert_eq!(admin_get_as(admin, &host, "/metrics").await.0, 200);
    }
    for host in [
        admin.to_string(),
        format!("localhost:{port}"),
        "LOCALHOST".to_string(),
        format!("[::1]:{port}"),
        "127.0.0.1".to_string(),
    ] {
        let (status, body) = admin_get_as(admin, &host, "/").await;
        assert_eq!(status, 200, "{host}: {body}");
        assert!(body.contains("张小明"), "{host}");
    }
}

/// A reload keeps the people and refusals (the store belongs to the daemon, not to a config),
/// and the page reports the last reload: applied, then refused with the reason. A person whose
/// certificate a reloaded CRL revokes while it is connected is marked so.
#[tokio::test]
async fn a_reload_keeps_what_the_page_knows() {
    let backend = Backend::start().await;
    let config = own_config("console-reload", backend.addr, "", SITE);
    let proxy = Proxy::start_file(&config).await;
    let refusals = traffic(proxy.addr).await;
    let before = json_with(proxy.addr, refusals, 4, REQUESTS).await;
    assert_eq!(before["daemon"]["last_reload"], serde_json::Value::Null);

    proxy.shared.reload("test").await.expect("reload");
    let after = json_with(proxy.addr, refusals, 4, REQUESTS).await;
    assert_eq!(after["people"]["total"], before["people"]["total"]);
    assert_eq!(row(&after, "张小明")["rate_limited"], 1);
    assert_eq!(after["refusals"]["total"], before["refusals"]["total"]);
    assert_eq!(after["daemon"]["last_reload"]["applied"], true);
    assert_eq!(after["daemon"]["generation"], 2);

    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("allow = { ou = [\"Admin\"] }", "allow = {}"),
    )
    .unwrap();
    assert!(proxy.shared.reload("test").await.is_err());
    let refused = json_with(proxy.addr, refusals, 4, REQUESTS).await;
    let last = &refused["daemon"]["last_reload"];
    assert_eq!(last["applied"], false);
    assert!(
        last["detail"].as_str().unwrap().contains("console.allow"),
        "{last}"
    );
    assert_eq!(refused["people"]["total"], before["people"]["total"]);

    // Revoked while connected: refused on its open connection, and marked on its row.
    let pki = test_pki();
    let mut zhang = h1(proxy.addr, client_config(Some(&pki.zhang), &[])).await;
    assert_eq!(get1(&mut zhang, "/still-here", &[]).await.status, 200);
    std::fs::write(&config, text).unwrap();
    crate::ops::write_crl(config.parent().unwrap(), &[&pki.zhang.chain[0]], 30);
    proxy.shared.reload("test").await.expect("reload");
    assert_eq!(get1(&mut zhang, "/after", &[]).await.status, 403);
    let v = json_with(proxy.addr, refusals + 1, 4, REQUESTS + 2).await;
    let z = row(&v, "张小明");
    assert_eq!(z["revoked_while_connected"], true, "{z}");
    let html = get(proxy.addr, alice(), PAGE, None).await.body;
    assert!(html.contains("revoked while connected"));
}

/// `certgate check` shows the console's path and allow-list, and refuses a console without an
/// allow-list, naming the file, key and line.
#[test]
fn check_shows_the_console_and_refuses_one_open_to_everyone() {
    let dir = scratch_dir("console-check");
    let pki = test_pki();
    let config = dir.join("certgate.toml");
    let base = test_config("127.0.0.1:9".parse().unwrap(), "", "")
        .replace("\"server.", &format!("\"{}/server.", pki.dir.display()))
        .replace("\"ca-", &format!("\"{}/ca-", pki.dir.display()))
        .replace("\"ca.crl", &format!("\"{}/ca.crl", pki.dir.display()));
    std::fs::write(
        &config,
        format!("{base}\n[console]\npath = \"/ops\"\nallow = {{ ou = [\"Admin\"] }}\n"),
    )
    .unwrap();
    let shown = certgate_ok(&["check", "-c", config.to_str().unwrap()]);
    assert!(shown.contains("[console]\npath = /ops"), "{shown}");
    assert!(shown.contains("ou [\"Admin\"]"), "{shown}");

    std::fs::write(
        &config,
        format!("{base}\n[console]\npath = \"/ops\"\nallow = {{}}\n"),
    )
    .unwrap();
    let out = certgate_cli(&["check", "-c", config.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("console.allow"), "{err}");
    assert!(err.contains("certgate.toml"), "{err}");
    assert!(err.contains("empty"), "{err}");
}

/// A person with a realistic name, valid for `days` more days.
fn person(cn: &str, org: &str, days: i64) -> Identity {
    custom_client(|p| {
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        p.distinguished_name
            .push(rcgen::DnType::OrganizationName, org);
        p.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(days);
    })
}

/// What an operator sees in Chromium (its own TLS stack) with an admin certificate: the
/// people with their names and the one whose certificate ends within days highlighted, who
/// could not get in and why in the help page's words, the backend, the daemon; on a phone too.
/// A browser with a certificate not on `[console] allow` gets 403.
#[tokio::test]
async fn a_browser_reads_the_page_with_an_admin_certificate() {
    use crate::onboarding::{AutoSelectPolicy, browse, browser_home, p12_of, screenshot};
    let pki = test_pki();
    let dir = scratch_dir("console-browser");
    let _policy = AutoSelectPolicy::install_as("console");
    let backend = Backend::start().await;
    // The people below use the WebUI through a queue, so the page shows it and their jobs.
    let site = format!(
        "{SITE}\n[[queue]]\nname = \"gpu\"\nslots = 4\nper_identity = 4\n\n\
         [[route]]\npath = \"/gradio_api/queue/join\"\naction = \"allow\"\nqueue = \"gpu\"\n"
    );
    let proxy = Proxy::start(backend.addr, &site).await;
    let refusals = traffic(proxy.addr).await;
    let (dana, lee) = (
        person("dana@example.com", "Colorizers", 5),
        person("lee@example.com", "Colorizers", 90),
    );
    for (id, n) in [(&dana, 12), (&lee, 5)] {
        let mut send = h1(proxy.addr, client_config(Some(id), &[])).await;
        for _ in 0..n {
            assert_eq!(
                get1(&mut send, "/gradio_api/queue/join", &[]).await.status,
                200
            );
        }
    }
    json_with(proxy.addr, refusals, 6, REQUESTS + 17).await;

    let admin = browser_home(
        &dir,
        "admin",
        Some((&p12_of(&dir, "alice", &pki.alice), "test")),
    );
    let url = format!("https://127.0.0.1:{}{PAGE}", proxy.addr.port());
    let seen = browse(
        &admin,
        serde_json::json!([
            {"url": url, "width": 1280, "screenshot": screenshot(&dir, "console.png")},
            {"url": url, "width": 390, "screenshot": screenshot(&dir, "console-phone.png")},
            {"url": format!("{url}?q=colorizers")},
        ]),
    )
    .await;
    assert_eq!(seen[0]["status"], 200, "{}", seen[0]);
    assert_eq!(seen[0]["title"], "certgate \u{2013} who is here");
    let text = seen[0]["text"].as_str().unwrap();
    for shown in [
        "Who is here",
        "dana@example.com",
        "lee@example.com",
        "张小明",
        "inter-client",
        HOSTILE_CN,
        "Who could not get in",
        "Your certificate has been revoked and can no longer be used here.",
        "route[0] /api rate_limit api",
        "0 running, 0 waiting\n12 jobs",
        "Showing 6 of 6.",
    ] {
        assert!(text.contains(shown), "{shown} not on the page: {text}");
    }
    assert_eq!(seen[1]["status"], 200);
    let filtered = seen[2]["text"].as_str().unwrap();
    assert!(filtered.contains("Showing 2 of 2 matching"), "{filtered}");

    // Not an operator: refused, in the browser too.
    let other = browser_home(
        &dir,
        "zhang",
        Some((&p12_of(&dir, "zhang", &pki.zhang), "test")),
    );
    let seen = browse(&other, serde_json::json!([{ "url": url }])).await;
    assert_eq!(seen[0]["status"], 403, "{}", seen[0]);
    assert!(
        seen[0]["text"]
            .as_str()
            .unwrap()
            .contains("[console] allow")
    );
}

/// In help mode a browser without a valid certificate meets the help page at the console's
/// path like anywhere else (never the console); the admin still reads the page.
#[tokio::test]
async fn help_mode_clients_never_see_the_page() {
    let pki = test_pki();
    let backend = Backend::start().await;
    let proxy = Proxy::start_with(&test_config(
        backend.addr,
        "on_failure = \"help\"",
        "[console]\nallow = { ou = [\"Admin\"] }\n",
    ))
    .await;
    for id in [None, Some(&pki.revoked), Some(&pki.impostor)] {
        let got = get(proxy.addr, client_config(id, &[]), PAGE, Some("text/html")).await;
        assert_eq!(got.status, 403);
        assert!(got.body.contains("data-reason="), "{}", got.body);
        assert!(!got.body.contains("Who is here"));
    }
    let got = get(proxy.addr, alice(), PAGE, Some("text/html")).await;
    assert_eq!(got.status, 200);
    assert!(got.body.contains("Who is here"));
    assert!(backend.seen().is_empty(), "{:?}", backend.seen());
}

/// With several servers, each person's row names the server it is bound to, and the backends
/// show each server's bound clients and drain; a CRL close to its next update is flagged.
#[tokio::test]
async fn rows_name_the_bound_server_and_the_daemon_flags_a_stale_crl() {
    let (a, b) = (Backend::start().await, Backend::start().await);
    let dir = scratch_dir("console-group");
    for f in ["server.crt", "server.key", "ca-bundle.crt"] {
        std::fs::copy(test_pki().dir.join(f), dir.join(f)).unwrap();
    }
    crate::ops::write_crl(&dir, &[], 3);
    let config = dir.join("certgate.toml");
    std::fs::write(
        &config,
        test_config_servers(
            &[
                format!("{{ url = \"http://{}\" }}", a.addr),
                format!("{{ url = \"http://{}\", drain = true }}", b.addr),
            ],
            "[upstream.health]\ninterval = \"1h\"\n",
            "[console]\nallow = { ou = [\"Admin\"] }\n",
        ),
    )
    .unwrap();
    let proxy = Proxy::start_file(&config).await;
    let zhang = client_config(Some(&test_pki().zhang), &[]);
    assert_eq!(get(proxy.addr, zhang, "/app", None).await.status, 200);
    let v = json_with(proxy.addr, 0, 2, 1).await;
    let bound = row(&v, "张小明")["bound_to"].as_str().unwrap().to_string();
    assert_eq!(bound, format!("default http://{}", a.addr));
    let servers = v["backends"][0]["servers"].as_array().unwrap();
    // zhang; the admin reads the page, which certgate answers itself.
    assert_eq!(servers[0]["bound"], 1, "{servers:?}");
    assert_eq!(servers[1]["drain"], true);
    let crl = &v["daemon"]["crls"][0];
    assert_eq!(crl["state"], "soon", "{crl}");
    let html = get(proxy.addr, alice(), PAGE, None).await.body;
    assert!(html.contains("within 7 days"));
    assert!(html.contains("draining"));
}
