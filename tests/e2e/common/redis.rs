//! A real `redis-server` for the shared-limit tests (Debian's package; `scripts/test` installs
//! it), on a free loopback port, with no persistence, stopped by its pid when dropped.

use std::process::Stdio;

use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

/// A running Redis.
pub struct Redis {
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

impl Redis {
    /// Starts Redis on a free port (or `port`), requiring `password` when given; returns once
    /// it says it accepts connections.
    pub async fn start(port: Option<u16>, password: Option<&str>) -> Redis {
        Redis::launch(port, password, false).await
    }

    /// Redis speaking only TLS, with the test PKI's server certificate (`rediss://`).
    pub async fn start_tls() -> Redis {
        Redis::launch(None, None, true).await
    }

    /// As [`Redis::start_tls`], requiring `password`.
    pub async fn start_tls_with_password(password: &str) -> Redis {
        Redis::launch(None, Some(password), true).await
    }

    async fn launch(port: Option<u16>, password: Option<&str>, tls: bool) -> Redis {
        let port = port.unwrap_or_else(|| {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        });
        let mut cmd = Command::new("redis-server");
        cmd.args(["--bind", "127.0.0.1"]);
        if tls {
            let pki = &crate::common::test_pki().dir;
            cmd.args(["--port", "0", "--tls-port"])
                .arg(port.to_string())
                .arg("--tls-cert-file")
                .arg(pki.join("server.crt"))
                .arg("--tls-key-file")
                .arg(pki.join("server.key"))
                .arg("--tls-ca-cert-file")
                .arg(pki.join("ca.crt"))
                .args(["--tls-auth-clients", "no"]);
        } else {
            cmd.arg("--port").arg(port.to_string());
        }
        cmd.args(["--save", "", "--appendonly", "no", "--loglevel", "notice"]);
        if let Some(pw) = password {
            cmd.args(["--requirepass", pw]);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server (scripts/test installs it)");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let ready = tokio::time::timeout(std::time::Duration::from_secs(20), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains("Ready to accept connections") {
                    return true;
                }
            }
            false
        })
        .await;
        assert_eq!(ready, Ok(true), "redis-server did not start on {port}");
        // Keep reading its output, or it would block on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Redis { child, port }
    }

    /// `redis://127.0.0.1:PORT/0`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Kills it (SIGKILL: an outage, not a shutdown) and waits until it is gone.
    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }
}
