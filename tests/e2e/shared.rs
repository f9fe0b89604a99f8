//! Shared rate limits through a real Redis (spec §12): replicas admit a zone's burst together,
//! Redis going away never turns into an outage (each `on_unavailable` policy, bounded by
//! `timeout`), Redis coming back resumes shared limits without a restart, and the password never
//! shows.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::common::backend;
use crate::common::*;

/// A config with zone `api` (`burst` at once, then one a minute) on `/api` and `[shared]`
/// pointing at `redis` with `shared_extra`.
fn shared_config(backend: SocketAddr, redis: &str, shared_extra: &str, burst: u32) -> String {
    test_config(
        backend,
        "",
        &format!(
            "[shared]\nredis = \"{redis}\"\n{shared_extra}\n\n[[rate_limit]]\nname = \"api\"\nrate = \"1/m\"\nburst = {burst}\n\n[[rate_limit]]\nname = \"mine\"\nrate = \"1/m\"\nburst = {burst}\nscope = \"local\"\n\n[[route]]\npath = \"/api\"\naction = \"allow\"\nrate_limit = \"api\"\n\n[[route]]\npath = \"/mine\"\naction = \"allow\"\nrate_limit = \"mine\"\n"
        ),
    )
}

async fn status(addr: SocketAddr, path: &str) -> (u16, Option<String>) {
    let got = get_once(addr, alice(), path).await;
    let retry = got
        .headers
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    (got.status.as_u16(), retry)
}

/// Two replicas on one Redis admit exactly `burst` together, then 429 with a Retry-After the
/// zone's rate explains (one a minute: up to 60 s); a `scope = "local"` zone is per replica.
#[tokio::test]
async fn two_replicas_admit_exactly_burst_together() {
    let (logs, _guard) = LogCapture::start();
    let redis = Redis::start(None, None).await;
    let backend = Backend::start().await;
    let toml = shared_config(backend.addr, &redis.url(), "timeout = \"1s\"", 3);
    let one = Proxy::start_with(&toml).await;
    let two = Proxy::start_with(&toml).await;
    // Both replicas on Redis before the first request: one still connecting counts locally
    // (on_unavailable = "local"), which on a loaded machine let a fourth request through.
    logs.wait_count("shared limits connected to Redis", 2).await;
    let mut admitted = 0;
    let mut last = None;
    for i in 0..8 {
        let (code, retry) = status(if i % 2 == 0 { one.addr } else { two.addr }, "/api/x").await;
        match code {
            200 => admitted += 1,
            429 => last = retry,
            other => panic!("request {i}: {other}"),
        }
    }
    assert_eq!(admitted, 3, "the replicas together admitted {admitted}");
    let retry: u64 = last.expect("a 429 with Retry-After").parse().unwrap();
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    // The local zone: each replica has its own burst.
    let local: usize = futures_count(&[one.addr, two.addr], "/mine/x", 4).await;
    assert_eq!(local, 6, "a local zone admitted {local} over two replicas");
}

/// Requests to each of `addrs`, `each` times, and how many were admitted.
async fn futures_count(addrs: &[SocketAddr], path: &str, each: usize) -> usize {
    let mut ok = 0;
    for addr in addrs {
        for _ in 0..each {
            if status(*addr, path).await.0 == 200 {
                ok += 1;
            }
        }
    }
    ok
}

/// Redis killed: with the default `on_unavailable = "local"` every request is answered at once
/// by the replica's own limiter (burst, then 429), the outage is logged once, and the metrics
/// say so; `allow` admits and `deny` refuses. Nobody waits much beyond `timeout`.
#[tokio::test]
async fn redis_down_falls_back_per_policy() {
    let (logs, _guard) = LogCapture::start();
    let backend = Backend::start().await;
    for (policy, want) in [
        ("local", [200, 200, 429]),
        ("allow", [200, 200, 200]),
        ("deny", [429, 429, 429]),
    ] {
        let redis = Redis::start(None, None).await;
        let url = redis.url();
        let proxy = Proxy::start_with(&shared_config(
            backend.addr,
            &url,
            &format!("timeout = \"100ms\"\non_unavailable = \"{policy}\""),
            2,
        ))
        .await;
        // Shared limits work first (the connection comes up in the background).
        logs.wait_for(&["shared limits connected to Redis", &url])
            .await;
        redis.kill().await;
        for (i, want) in want.iter().enumerate() {
            let start = Instant::now();
            let (code, _) = status(proxy.addr, &format!("/api/{policy}")).await;
            assert_eq!(code, *want, "{policy} request {i}");
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "{policy}: a request took {:?}",
                start.elapsed()
            );
        }
    }
    let outages = logs.text().matches("shared limits unavailable").count();
    assert_eq!(outages, 3, "one warning per outage:\n{}", logs.text());
}

/// Redis restarted on its port: shared limits resume without restarting certgate, and the
/// recovery is logged once.
#[tokio::test]
async fn redis_restart_resumes_shared_limits() {
    let (logs, _guard) = LogCapture::start();
    let backend = Backend::start().await;
    let redis = Redis::start(None, None).await;
    let port = redis.port;
    let url = redis.url();
    let proxy = Proxy::start_with(&shared_config(
        backend.addr,
        &url,
        "timeout = \"200ms\"",
        1000,
    ))
    .await;
    logs.wait_for(&["shared limits connected to Redis", &url])
        .await;
    redis.kill().await;
    assert_eq!(status(proxy.addr, "/api/a").await.0, 200);
    logs.wait_for(&["shared limits unavailable"]).await;
    let _redis = Redis::start(Some(port), None).await;
    // certgate notices by itself (it asks Redis in the background during an outage), and the
    // next request is counted in Redis again.
    logs.wait_for(&["shared limits available again"]).await;
    assert_eq!(status(proxy.addr, "/api/b").await.0, 200);
    assert_eq!(
        logs.text().matches("shared limits unavailable").count(),
        1,
        "one warning per outage:\n{}",
        logs.text()
    );
}

/// A Redis address that accepts connections and never answers: requests are answered anyway,
/// each within a bound set by `timeout`, by the local limiter.
#[tokio::test]
async fn a_silent_redis_costs_at_most_the_timeout() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let _held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            open.push(s);
        }
    });
    let backend = Backend::start().await;
    let proxy = Proxy::start_with(
        &(shared_config(
            backend.addr,
            &format!("redis://{addr}/0"),
            "timeout = \"50ms\"",
            2,
        ) + "\n[admin]\nlisten = \"127.0.0.1:0\"\n"),
    )
    .await;
    for want in [200, 200, 429] {
        let start = Instant::now();
        assert_eq!(status(proxy.addr, "/api/x").await.0, want);
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
    }
    // Limits degrade; the proxy keeps serving, so it stays ready, and the metrics say why.
    let (code, text) = admin_get(proxy.admin.unwrap(), "/readyz").await;
    assert_eq!(code, 200, "{text}");
    let (_, metrics) = admin_get(proxy.admin.unwrap(), "/metrics").await;
    assert!(metrics.contains("certgate_shared_available 0"), "{metrics}");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("certgate_shared_unavailable_total") && !l.ends_with(" 0")),
        "{metrics}"
    );
}

/// A password from `password_file`: the right one shares limits; a wrong one still starts and
/// serves (local limits, a warning); the password appears in no log line.
#[tokio::test]
async fn password_file_works_and_never_shows() {
    let (logs, _guard) = LogCapture::start();
    let secret = "s3cret-redis-passw0rd";
    let redis = Redis::start(None, Some(secret)).await;
    let dir = scratch_dir("redis-password");
    std::fs::write(dir.join("redis.password"), format!("{secret}\n")).unwrap();
    std::fs::write(dir.join("wrong.password"), "nope\n").unwrap();
    let backend = Backend::start().await;
    let right = shared_config(
        backend.addr,
        &redis.url(),
        &format!(
            "password_file = \"{}\"\ntimeout = \"1s\"",
            dir.join("redis.password").display()
        ),
        1,
    );
    let one = Proxy::start_with(&right).await;
    let two = Proxy::start_with(&right).await;
    logs.wait_for(&["shared limits connected to Redis"]).await;
    assert_eq!(status(one.addr, "/api/x").await.0, 200);
    assert_eq!(status(two.addr, "/api/x").await.0, 429, "not shared");

    let wrong = right.replace("redis.password", "wrong.password");
    let proxy = Proxy::start_with(&wrong).await;
    logs.wait_for(&["shared limits unavailable"]).await;
    assert_eq!(status(proxy.addr, "/api/y").await.0, 200);
    assert!(!logs.text().contains(secret), "the password was logged");
}

/// `certgate check` refuses an unparsable URL and an unreadable password file, naming the key,
/// and prints the section without the password.
#[tokio::test]
async fn check_flags_bad_shared_settings() {
    let backend = Backend::start().await;
    let dir = scratch_dir("shared-check");
    for f in ["server.crt", "server.key", "ca-bundle.crt", "ca.crl"] {
        std::fs::copy(test_pki().dir.join(f), dir.join(f)).unwrap();
    }
    let check = |toml: String| {
        let path = dir.join("certgate.toml");
        std::fs::write(&path, toml).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_certgate"))
            .args(["check", "-c"])
            .arg(&path)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (code, text) = check(shared_config(backend.addr, "not a url", "", 1));
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("shared.redis"), "{text}");
    let (code, text) = check(shared_config(
        backend.addr,
        "redis://127.0.0.1:6379/0",
        "password_file = \"missing.password\"",
        1,
    ));
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("shared.password_file"), "{text}");
    let (code, text) = check(shared_config(
        backend.addr,
        "redis://user:hunter2@127.0.0.1:6379/0",
        "",
        1,
    ));
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("redis://user:***@127.0.0.1:6379/0"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
}

/// A password in any place a Redis URL takes one (`user:pass@` over TCP and TLS, `?pass=` on a
/// Unix socket, `?password=`) is shown as `***` by `certgate check` and in the daemon's log,
/// which names the Redis it cannot reach.
#[tokio::test]
async fn no_redis_url_password_is_printed_or_logged() {
    let backend = Backend::start().await;
    let dir = scratch_dir("shared-redact");
    for f in ["server.crt", "server.key", "ca-bundle.crt", "ca.crl"] {
        std::fs::copy(test_pki().dir.join(f), dir.join(f)).unwrap();
    }
    let path = dir.join("certgate.toml");
    let socket = dir.join("missing-redis.sock");
    let secret = "Hunter2-in-the-url";
    let s = socket.display();
    for url in [
        format!("unix://{s}?pass={secret}"),
        format!("redis+unix://{s}?db=0&pass={secret}"),
        format!("unix://{s}?password={secret}"),
        format!("redis://user:{secret}@127.0.0.1:1/0"),
        format!("rediss://:{secret}@localhost:1/0"),
    ] {
        std::fs::write(
            &path,
            shared_config(backend.addr, &url, "timeout = \"100ms\"", 1),
        )
        .unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_certgate"))
            .args(["check", "-c"])
            .arg(&path)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{url}: {text}");
        assert!(text.contains("***"), "{url}: {text}");
        assert!(
            !text.contains(secret),
            "check printed the password of {url}: {text}"
        );

        let mut daemon = Daemon::start(&path);
        let warning = daemon.wait_for("shared limits unavailable").await;
        assert!(warning.contains("***"), "{warning}");
        let log = daemon.stop_and_read().await;
        assert!(
            !log.contains(secret),
            "the log carried the password of {url}: {log}"
        );
    }
}

/// A Redis that answers a wait no honest bucket gives (its key set to a theoretical arrival
/// time hundreds of thousands of years ahead) refuses the request, but with a Retry-After no
/// longer than the zone's interval (one a minute: 60 s), not one that says "never".
#[tokio::test]
async fn a_huge_wait_from_redis_is_clamped() {
    let (logs, _guard) = LogCapture::start();
    let redis = Redis::start(None, None).await;
    let backend = Backend::start().await;
    let proxy = Proxy::start_with(&shared_config(
        backend.addr,
        &redis.url(),
        "timeout = \"1s\"",
        5,
    ))
    .await;
    logs.wait_for(&["shared limits connected to Redis"]).await;
    assert_eq!(status(proxy.addr, "/api/first").await.0, 200);
    let cli = |args: &[&str]| {
        let out = std::process::Command::new("redis-cli")
            .args(["-p", &redis.port.to_string()])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "redis-cli {args:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let keys = cli(&["--scan", "--pattern", "certgate:rl:api:*"]);
    let key = keys.lines().next().expect("the zone's bucket in Redis");
    cli(&["SET", key, "9000000000000000000"]);
    let (code, retry) = status(proxy.addr, "/api/second").await;
    assert_eq!(code, 429);
    let retry: u64 = retry.expect("Retry-After").parse().unwrap();
    assert!((1..=60).contains(&retry), "Retry-After: {retry}");
}

/// The handshake-failure throttle counts every replica's failures: a scanner that fails twice
/// on one replica and twice on another is over a limit of 3 a minute, and the second replica
/// refuses it before the handshake from then on, even for a certificate that would pass.
#[tokio::test]
async fn handshake_failures_count_across_replicas() {
    let (logs, _guard) = LogCapture::start();
    let redis = Redis::start(None, None).await;
    let backend = Backend::start().await;
    let toml = shared_config(backend.addr, &redis.url(), "timeout = \"1s\"", 1).replace(
        "[shared]",
        "[limits]\nhandshake_failures_per_ip = \"3/m\"\n\n[shared]",
    );
    let one = Proxy::start_with(&toml).await;
    let two = Proxy::start_with(&toml).await;
    logs.wait_for(&["shared limits connected to Redis"]).await;
    let scanner = || client_config(Some(&test_pki().impostor), &[]);
    for proxy in [&one, &one] {
        assert_refused(proxy.addr, scanner()).await;
    }
    // Each replica counts in Redis off the connection's path; the first replica's two failures
    // must be in Redis before the second's, or the one over the limit could be the first's.
    // Two failures at 3/m leave the address's bucket over 20 s (one interval) to live.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = std::process::Command::new("redis-cli")
            .args([
                "-p",
                &redis.port.to_string(),
                "PTTL",
                "certgate:hs:127.0.0.1",
            ])
            .output()
            .unwrap();
        let ttl: i64 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(-2);
        if ttl > 20_000 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the first replica's failures never reached Redis"
        );
        poll_pause().await;
    }
    for proxy in [&two, &two] {
        assert_refused(proxy.addr, scanner()).await;
    }
    logs.wait_for(&["too many failed handshakes", "all replicas"])
        .await;
    assert!(
        tls_connect(two.addr, alice()).await.is_err(),
        "the second replica let the address in"
    );
}

/// `rediss://`: TLS to Redis with rustls, verified against `tls_ca`. Two replicas share a zone
/// through a TLS-only Redis; with a CA that did not issue Redis's certificate the connection is
/// refused (the replica falls back to its own limits and says Redis is unavailable).
#[tokio::test]
async fn rediss_is_verified_against_tls_ca() {
    let (logs, _guard) = LogCapture::start();
    let redis = Redis::start_tls().await;
    let backend = Backend::start().await;
    let dir = scratch_dir("rediss");
    std::fs::write(dir.join("other-ca.crt"), &test_pki().other_ca.cert_pem).unwrap();
    let url = format!("rediss://localhost:{}/0", redis.port);
    let toml = shared_config(
        backend.addr,
        &url,
        &format!(
            "timeout = \"1s\"\ntls_ca = \"{}\"",
            test_pki().dir.join("ca.crt").display()
        ),
        2,
    );
    let one = Proxy::start_with(&toml).await;
    let two = Proxy::start_with(&toml).await;
    logs.wait_for(&["shared limits connected to Redis", &url])
        .await;
    let admitted = futures_count(&[one.addr, two.addr], "/api/tls", 2).await;
    assert_eq!(admitted, 2, "the replicas together admitted {admitted}");

    let impostor = toml.replace(
        &test_pki().dir.join("ca.crt").display().to_string(),
        &dir.join("other-ca.crt").display().to_string(),
    );
    let proxy = Proxy::start_with(&impostor).await;
    logs.wait_for(&["shared limits unavailable", &url]).await;
    assert_eq!(status(proxy.addr, "/api/untrusted").await.0, 200);
}

/// `rediss://` from the real daemon under its default Landlock sandbox: the roots are read
/// before the sandbox closes `/etc/ssl`, so TLS to Redis connects both with `tls_ca` and with
/// the system's roots (here `SSL_CERT_FILE` names the test CA, in a folder the sandbox does not
/// grant), and the two daemons share the zone through it. (Skipped where the kernel has no
/// Landlock, since then there is nothing to get wrong.)
#[tokio::test]
async fn rediss_connects_under_the_sandbox() {
    let redis = Redis::start_tls().await;
    let backend = Backend::start().await;
    let url = format!("rediss://localhost:{}/0", redis.port);
    let mut daemons = Vec::new();
    for (name, tls_ca) in [("rediss-sandbox-ca", true), ("rediss-sandbox-roots", false)] {
        let dir = scratch_dir(name);
        for f in [
            "server.crt",
            "server.key",
            "ca-bundle.crt",
            "ca.crl",
            "ca.crt",
        ] {
            std::fs::copy(test_pki().dir.join(f), dir.join(f)).unwrap();
        }
        let extra = if tls_ca {
            "timeout = \"1s\"\ntls_ca = \"ca.crt\""
        } else {
            "timeout = \"1s\""
        };
        let path = dir.join("certgate.toml");
        std::fs::write(&path, shared_config(backend.addr, &url, extra, 2)).unwrap();
        let ca = test_pki().dir.join("ca.crt");
        let mut daemon = Daemon::start_with_env(&path, &[("SSL_CERT_FILE", &ca)]);
        let sandbox = daemon.wait_for("sandbox:").await;
        if sandbox.contains("no Landlock") || sandbox.contains("could not be applied") {
            eprintln!("skipping: {sandbox}");
            return;
        }
        assert!(sandbox.contains("landlock enforced"), "{sandbox}");
        let addr = daemon.https_addr().await;
        daemon.wait_for("shared limits connected to Redis").await;
        daemons.push((daemon, addr));
    }
    let addrs: Vec<SocketAddr> = daemons.iter().map(|(_, a)| *a).collect();
    let admitted = futures_count(&addrs, "/api/sandboxed", 2).await;
    assert_eq!(admitted, 2, "the daemons together admitted {admitted}");
    for (daemon, _) in daemons {
        assert!(!daemon.log.contains("unavailable"), "{}", daemon.log);
        daemon.stop().await;
    }
}

/// Nothing listening at the Redis address when certgate starts: it starts anyway, serves with
/// its own limits, and says once that shared limits are unavailable.
#[tokio::test]
async fn an_unreachable_redis_at_start_up_does_not_stop_certgate() {
    let (logs, _guard) = LogCapture::start();
    let dead = backend::dead_addr().await;
    let backend = Backend::start().await;
    let proxy = Proxy::start_with(&shared_config(
        backend.addr,
        &format!("redis://{dead}/0"),
        "timeout = \"50ms\"",
        1,
    ))
    .await;
    assert_eq!(status(proxy.addr, "/api/x").await.0, 200);
    assert_eq!(status(proxy.addr, "/api/x").await.0, 429);
    logs.wait_for(&["shared limits unavailable", &dead.to_string()])
        .await;
    assert_eq!(
        logs.text().matches("shared limits unavailable").count(),
        1,
        "one warning per outage"
    );
}
