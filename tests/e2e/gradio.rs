//! Two real Gradio apps behind one certgate (spec §11's "done when"): several people with
//! certificates of their own each run a whole Gradio session — upload, queue join, the SSE
//! event stream, the result image — through `gradio_client`; each person stays on one process
//! (Gradio keeps the session in that process's memory), the people are spread over both, and
//! when one app is killed its people move to the other and work again while nobody else moves.

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::{Child, Command};

use crate::common::*;

fn tool(name: &str) -> String {
    format!("{}/tests/e2e/tools/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// Starts a Gradio app named `name` on a free port; returns once it says it is serving.
async fn gradio(name: &str) -> (Child, std::net::SocketAddr) {
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    gradio_at(name, addr).await
}

/// Starts a Gradio app named `name` on `addr` (a restart on the same port).
async fn gradio_at(name: &str, addr: std::net::SocketAddr) -> (Child, std::net::SocketAddr) {
    let mut child = Command::new(python())
        .arg(tool("gradio_app.py"))
        .arg(addr.port().to_string())
        .arg(name)
        .env("GRADIO_ANALYTICS_ENABLED", "False")
        // Every app its own cache: Gradio names a cached file by its content's hash, and two
        // apps rewriting the same /tmp/gradio file serve each other a truncated one.
        .env("GRADIO_TEMP_DIR", scratch_dir(&gradio_cache_name()))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}; run scripts/test", python()));
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = tokio::time::timeout(std::time::Duration::from_secs(120), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.trim() == "ready" {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(
        ready,
        Ok(true),
        "Gradio app {name} did not start (scripts/test installs gradio)"
    );
    (child, addr)
}

/// Runs every person's session once; returns, per person, the worker of each run.
async fn sessions(proxy: std::net::SocketAddr, users: &[(String, String)]) -> Vec<Vec<String>> {
    let job = serde_json::json!({
        "url": format!("https://localhost:{}/", proxy.port()),
        "ca": test_pki().dir.join("ca.crt"),
        "users": users,
    });
    let mut child = Command::new(python())
        .arg(tool("gradio_users.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(job.to_string().as_bytes())
        .await
        .unwrap();
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(240),
        child.wait_with_output(),
    )
    .await
    .expect("the sessions did not finish")
    .unwrap();
    assert!(out.status.success(), "gradio_users.py failed");
    let results: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    results
        .iter()
        .enumerate()
        .map(|(i, r)| {
            assert_eq!(r["ok"], true, "person {i}: {r}");
            r["workers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|w| w.as_str().unwrap().to_string())
                .collect()
        })
        .collect()
}

/// Writes a person's certificate and key as PEM files.
fn person(dir: &Path, i: usize) -> (String, String) {
    let id = custom_client(|p| {
        p.distinguished_name
            .push(rcgen::DnType::CommonName, format!("painter-{i}@studio"));
    });
    let (cert, key) = id.write_pem(dir, &format!("painter-{i}"));
    (cert.display().to_string(), key.display().to_string())
}

#[tokio::test]
async fn two_gradio_apps_keep_every_session_on_its_process() {
    let ((mut alpha, a), (_beta, b)) = tokio::join!(gradio("alpha"), gradio("beta"));
    let toml = test_config_servers(
        &[
            format!("{{ url = \"http://{a}\" }}"),
            format!("{{ url = \"http://{b}\" }}"),
        ],
        "max_fails = 1\nfail_timeout = \"60s\"\n",
        "",
    );
    let proxy = Proxy::start_with(&toml).await;
    let dir = scratch_dir("gradio-people");
    let users: Vec<(String, String)> = (0..12).map(|i| person(&dir, i)).collect();

    let first = sessions(proxy.addr, &users).await;
    let mut placed = HashMap::new();
    for (i, runs) in first.iter().enumerate() {
        assert_eq!(runs.len(), 2);
        assert_eq!(runs[0], runs[1], "person {i} changed process between runs");
        placed.insert(i, runs[0].clone());
    }
    let on_alpha = placed.values().filter(|w| *w == "alpha").count();
    assert!(
        on_alpha > 0 && on_alpha < users.len(),
        "everyone on one process: {placed:?}"
    );

    alpha.kill().await.unwrap();
    let second = sessions(proxy.addr, &users).await;
    for (i, runs) in second.iter().enumerate() {
        for w in runs {
            assert_eq!(
                w, "beta",
                "person {i} was not served by the surviving process"
            );
        }
    }
}

/// The server URL every identity binding in `redis` names, polled until there are `n`.
async fn bindings_in_redis(redis: &Redis, n: usize) -> Vec<String> {
    let cli = |args: &[&str]| {
        let out = std::process::Command::new("redis-cli")
            .args(["-p", &redis.port.to_string()])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let keys = cli(&["--scan", "--pattern", "certgate:bind:*"]);
        let keys: Vec<&str> = keys.lines().collect();
        if keys.len() >= n {
            return keys
                .iter()
                .map(|k| cli(&["GET", k]).trim().to_string())
                .collect();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} bindings in Redis, want {n}",
            keys.len()
        );
        poll_pause().await;
    }
}

/// Two certgate replicas sharing a Redis (`[shared]`), in front of two real Gradio apps: app
/// alpha dies, its people's sessions move to beta through replica one; alpha comes back; the
/// same people's next sessions through replica two, which never saw them, stay on beta,
/// where their sessions now live (without the shared binding replica two's own choice is
/// alpha: the flap-back a rolling update would do to everyone). Redis holds one binding per
/// person, naming a server of the group.
#[tokio::test]
async fn replicas_agree_where_a_moved_person_lives() {
    let (logs, _guard) = LogCapture::start();
    let redis = Redis::start(None, None).await;
    let ((mut alpha, a), (_beta, b)) = tokio::join!(gradio("alpha"), gradio("beta"));
    let toml = test_config_servers(
        &[
            format!("{{ url = \"http://{a}\" }}"),
            format!("{{ url = \"http://{b}\" }}"),
        ],
        "max_fails = 1\nfail_timeout = \"60s\"\n",
        &format!("[shared]\nredis = \"{}\"\ntimeout = \"1s\"\n", redis.url()),
    );
    let one = Proxy::start_with(&toml).await;
    let two = Proxy::start_with(&toml).await;
    logs.wait_count("shared limits connected to Redis", 2).await;
    let dir = scratch_dir("gradio-replicas");
    let users: Vec<(String, String)> = (0..10).map(|i| person(&dir, i)).collect();

    let first = sessions(one.addr, &users).await;
    let movers: Vec<(String, String)> = first
        .iter()
        .zip(&users)
        .filter(|(runs, _)| runs[0] == "alpha")
        .map(|(_, u)| u.clone())
        .collect();
    assert!(!movers.is_empty(), "nobody on alpha: {first:?}");
    let stored = bindings_in_redis(&redis, users.len()).await;
    assert!(
        stored
            .iter()
            .all(|s| *s == format!("http://{a}") || *s == format!("http://{b}")),
        "{stored:?}"
    );

    alpha.kill().await.unwrap();
    for (i, runs) in sessions(one.addr, &movers).await.iter().enumerate() {
        assert!(
            runs.iter().all(|w| w == "beta"),
            "mover {i} through replica one: {runs:?}"
        );
    }
    // Replica one has told Redis where they went.
    let beta_url = format!("http://{b}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while bindings_in_redis(&redis, users.len())
        .await
        .iter()
        .filter(|s| **s == beta_url)
        .count()
        < users.len()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the moves never reached Redis"
        );
        poll_pause().await;
    }

    let (_alpha_again, _) = gradio_at("alpha", a).await;
    for (i, runs) in sessions(two.addr, &movers).await.iter().enumerate() {
        assert!(
            runs.iter().all(|w| w == "beta"),
            "mover {i} went back to alpha through replica two: {runs:?}"
        );
    }
}

/// The Kubernetes topology of deploy/kubernetes end to end: two certgate processes run the
/// shipped certgate.toml (the certgate-config ConfigMap's file; pod DNS names, Secret paths and
/// the `rediss://` Redis with its password substituted by local ones, the pods' names by
/// `localhost` so each connection resolves a name as in the cluster; `/gradio_api/info`, which
/// the test's gradio_client needs, allowed) in front of two real
/// Gradio apps: every person's sessions all run on one app, through either certgate, and the
/// people are spread over both apps.
#[tokio::test]
async fn the_kubernetes_topology_keeps_each_session_on_one_app() {
    let (logs, _guard) = LogCapture::start();
    let secret = "k8s-redis-secret";
    let redis = Redis::start_tls_with_password(secret).await;
    let ((_alpha, a), (_beta, b)) = tokio::join!(gradio("alpha"), gradio("beta"));
    let dir = scratch_dir("gradio-k8s");
    std::fs::write(dir.join("password"), format!("{secret}\n")).unwrap();
    let pki = test_pki().dir.display().to_string();
    let shipped = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes/certgate.toml"),
    )
    .unwrap();
    let toml = shipped
        .replace("0.0.0.0:8443", "127.0.0.1:0")
        .replace("0.0.0.0:9090", "127.0.0.1:0")
        .replace("/etc/certgate/tls/ca.crt", &format!("{pki}/ca-bundle.crt"))
        .replace("/etc/certgate/tls/", &format!("{pki}/"))
        .replace("/etc/certgate/redis/ca.crt", &format!("{pki}/ca.crt"))
        .replace(
            "/etc/certgate/redis/password",
            &dir.join("password").display().to_string(),
        )
        .replace(
            "rediss://redis:6380/0",
            &format!("rediss://localhost:{}/0", redis.port),
        )
        .replace("gradio-0.gradio:7860", &format!("localhost:{}", a.port()))
        .replace("gradio-1.gradio:7860", &format!("localhost:{}", b.port()))
        // gradio_client, the test's browser stand-in, reads the API description first, which
        // a browser does not; the shipped config denies it to anyone else.
        .replace(
            "path = \"/gradio_api/info\"\naction = \"deny\"",
            "path = \"/gradio_api/info\"\naction = \"allow\"",
        );
    for pod in [
        "gradio-0",
        "gradio-1",
        "/etc/certgate",
        "redis:6380",
        "\"deny\"",
    ] {
        assert!(!toml.contains(pod), "{pod} left in the config");
    }
    let one = Proxy::start_with(&toml).await;
    let two = Proxy::start_with(&toml).await;
    logs.wait_count("shared limits connected to Redis", 2).await;

    let people = scratch_dir("gradio-k8s-people");
    let users: Vec<(String, String)> = (0..12).map(|i| person(&people, i)).collect();
    // One after the other: Gradio caches an upload under the hash of its bytes, and the same
    // image uploaded at once by two clients races in its cache.
    let through_one = sessions(one.addr, &users).await;
    let through_two = sessions(two.addr, &users).await;
    let mut on_alpha = 0;
    for (i, (r1, r2)) in through_one.iter().zip(&through_two).enumerate() {
        let all: Vec<&String> = r1.iter().chain(r2).collect();
        assert!(
            all.iter().all(|w| *w == all[0]),
            "person {i} ran on two apps: {r1:?} through one, {r2:?} through two"
        );
        on_alpha += usize::from(all[0] == "alpha");
    }
    assert!(
        on_alpha > 0 && on_alpha < users.len(),
        "everyone on one app ({on_alpha} of {} on alpha)",
        users.len()
    );
    assert!(
        !logs.text().contains(secret),
        "the Redis password was logged"
    );
}
