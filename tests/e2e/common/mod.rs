//! The test harness: a PKI made per run with certgate's own `pki` module, a recording backend,
//! the proxy started in-process on 127.0.0.1:0, TLS clients with and without identities, and a
//! log capture that tests can wait on instead of sleeping.

#![allow(dead_code)]

pub mod backend;
pub mod client;
pub mod daemon;
pub mod logs;
pub mod pki;
pub mod redis;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use certgate::config::Config;
use certgate::proxy::Server;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use backend::{Backend, Seen};
pub use client::*;
pub use daemon::Daemon;
pub use logs::LogCapture;
pub use pki::{Identity, client_with_key_usage, custom_client, test_pki};
pub use redis::Redis;

/// A proxy running in this test's runtime.
pub struct Proxy {
    /// Where its HTTPS listener is.
    pub addr: SocketAddr,
    /// The redirect listener, when configured.
    pub redirect: Option<SocketAddr>,
    /// The admin listener, when configured.
    pub admin: Option<SocketAddr>,
    /// The shared state, to reload it.
    pub shared: std::sync::Arc<certgate::proxy::runtime::Shared>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Proxy {
    /// Starts the proxy with the standard test `[listen]`/`[tls]` sections, the upstream at
    /// `backend`, and `extra` TOML appended (routes, overrides of other sections).
    pub async fn start(backend: SocketAddr, extra: &str) -> Proxy {
        Self::start_with(&test_config(backend, "", extra)).await
    }

    /// Starts the proxy like [`Proxy::start`], with `setting` (a line such as
    /// `max_idle_connections = 0`) inside `[upstream]`.
    pub async fn start_upstream(backend: SocketAddr, setting: &str) -> Proxy {
        Self::start_with(&test_config_upstream(backend, "", setting, "")).await
    }

    /// Starts the proxy from full config text (relative paths resolve in the PKI folder).
    pub async fn start_with(toml: &str) -> Proxy {
        let pki = test_pki();
        let config = Config::from_str(toml, &pki.dir.join("certgate.toml"))
            .unwrap_or_else(|e| panic!("test config invalid: {e}\n{toml}"));
        Self::start_config(&config).await
    }

    /// Starts the proxy from a config file.
    pub async fn start_file(path: &Path) -> Proxy {
        let config = Config::load(path).unwrap_or_else(|e| panic!("config invalid: {e}"));
        Self::start_config(&config).await
    }

    async fn start_config(config: &Config) -> Proxy {
        let server = Server::bind(config).await.expect("bind");
        let addr = server.local_addr();
        let redirect = server.redirect_addr();
        let admin = server.admin_addr();
        let shared = server.shared();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async {
            let _ = stopped.await;
        }));
        Proxy {
            addr,
            redirect,
            admin,
            shared,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Begins a graceful shutdown and returns the task that completes when it is done.
    pub fn shutdown(&mut self) -> JoinHandle<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.take().expect("already shut down")
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A complete config for the test PKI. `tls_extra` goes into `[tls]`, `extra` after it.
pub fn test_config(backend: SocketAddr, tls_extra: &str, extra: &str) -> String {
    test_config_upstream(backend, tls_extra, "", extra)
}

/// `[listen]` and `[tls]` for the test PKI, with `tls_extra` inside `[tls]`.
fn listen_and_tls(tls_extra: &str) -> String {
    format!(
        r#"
[listen]
https = "127.0.0.1:0"
shutdown_timeout = "10s"

[tls]
cert = "server.crt"
key = "server.key"
client_ca = "ca-bundle.crt"
crl = ["ca.crl"]
{tls_extra}
"#
    )
}

/// As [`test_config`], with `upstream_extra` inside `[upstream]`.
pub fn test_config_upstream(
    backend: SocketAddr,
    tls_extra: &str,
    upstream_extra: &str,
    extra: &str,
) -> String {
    format!(
        "{}\n[upstream]\nurl = \"http://{backend}\"\n{upstream_extra}\n\n{extra}\n",
        listen_and_tls(tls_extra)
    )
}

/// A complete config whose `[upstream]` is a group of `servers` (TOML inline tables), with
/// `group_extra` inside `[upstream]` (its `[upstream.health]` last) and `extra` before it.
pub fn test_config_servers(servers: &[String], group_extra: &str, extra: &str) -> String {
    format!(
        "{}\n{extra}\n\n[upstream]\nservers = [{}]\n{group_extra}\n",
        listen_and_tls(""),
        servers.join(", ")
    )
}

/// The pause between two looks at state the test cannot be told about (a key in Redis, a
/// process's port, a throttle that runs out): every caller polls with a deadline, so this only
/// spaces the looks, it never stands in for an event.
pub async fn poll_pause() {
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
}

/// The Python the tests drive (`http_sfv`, `cryptography`, `gradio`): `scripts/test` makes one
/// and names it in `CERTGATE_TEST_PYTHON`; otherwise `python3` must have them.
pub fn python() -> String {
    std::env::var("CERTGATE_TEST_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Runs the certgate binary with `args`.
pub fn certgate_cli(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_certgate"))
        .args(args)
        .output()
        .unwrap()
}

/// Runs the certgate binary with `args`, which must succeed; its standard output.
pub fn certgate_ok(args: &[&str]) -> String {
    let out = certgate_cli(args);
    assert!(
        out.status.success(),
        "certgate {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A fresh folder for one test's files, under cargo's per-target temp dir.
pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("e2e-{}", std::process::id()))
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// A name no other Gradio app of this run has, for its `GRADIO_TEMP_DIR`.
pub fn gradio_cache_name() -> String {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    format!(
        "gradio-cache-{}",
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

/// A folder of its own with copies of the test PKI's server and CA files, for tests that
/// rewrite them (reload, revocation), and `certgate.toml` with `extra` appended.
pub fn own_config(name: &str, backend: SocketAddr, tls_extra: &str, extra: &str) -> PathBuf {
    let dir = scratch_dir(name);
    for f in ["server.crt", "server.key", "ca-bundle.crt", "ca.crl"] {
        std::fs::copy(test_pki().dir.join(f), dir.join(f)).unwrap();
    }
    let path = dir.join("certgate.toml");
    std::fs::write(&path, test_config(backend, tls_extra, extra)).unwrap();
    path
}
