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
    let mut child = Command::new(python())
        .arg(tool("gradio_app.py"))
        .arg(addr.port().to_string())
        .arg(name)
        .env("GRADIO_ANALYTICS_ENABLED", "False")
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
