//! The real binary as a daemon, for what an in-process proxy cannot show: the Landlock sandbox
//! (it confines the whole process), signals, the log as an operator reads it.

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, ChildStderr, Command};

/// How long one expected log line may take.
const LIMIT: Duration = Duration::from_secs(30);

/// `certgate run -c CONFIG`, killed when dropped.
pub struct Daemon {
    child: Child,
    lines: BufReader<ChildStderr>,
    /// Everything it logged so far.
    pub log: String,
}

impl Daemon {
    /// Starts the daemon on `config`, logging to a pipe this reads.
    pub fn start(config: &Path) -> Daemon {
        Daemon::start_with_env(config, &[])
    }

    /// As [`Daemon::start`], with `env` added to its environment.
    pub fn start_with_env(config: &Path, env: &[(&str, &Path)]) -> Daemon {
        let mut child = Command::new(env!("CARGO_BIN_EXE_certgate"))
            .args(["run", "-c"])
            .arg(config)
            .env_remove("RUST_LOG")
            .envs(env.iter().copied())
            .kill_on_drop(true)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let lines = BufReader::new(child.stderr.take().unwrap());
        Daemon {
            child,
            lines,
            log: String::new(),
        }
    }

    /// Reads the log until a line contains `needle`, and returns that line.
    pub async fn wait_for(&mut self, needle: &str) -> String {
        let (lines, log) = (&mut self.lines, &mut self.log);
        tokio::time::timeout(LIMIT, async {
            loop {
                let mut line = String::new();
                if lines.read_line(&mut line).await.unwrap() == 0 {
                    panic!("daemon exited before {needle:?}: {log}");
                }
                log.push_str(&line);
                if line.contains(needle) {
                    return line;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no {needle:?} in: {}", self.log))
    }

    /// Waits for `certgate listening` and returns its `https=` address.
    pub async fn https_addr(&mut self) -> std::net::SocketAddr {
        let line = self.wait_for("certgate listening").await;
        line.split("https=")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|s| s.trim_matches('"').parse().ok())
            .unwrap_or_else(|| panic!("no https= address in {line}"))
    }

    /// Sends `signal` (`HUP`, `TERM`, ...).
    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().unwrap().to_string();
        std::process::Command::new("kill")
            .args([format!("-{signal}").as_str(), &pid])
            .status()
            .unwrap();
    }

    /// SIGTERM, waits for it to exit, and returns its whole log.
    pub async fn stop_and_read(mut self) -> String {
        use tokio::io::AsyncReadExt as _;
        self.signal("TERM");
        let mut rest = String::new();
        let _ = tokio::time::timeout(LIMIT, self.lines.read_to_string(&mut rest)).await;
        let _ = tokio::time::timeout(LIMIT, self.child.wait()).await;
        self.log + &rest
    }

    /// SIGTERM, and waits for it to exit.
    pub async fn stop(mut self) {
        self.signal("TERM");
        let _ = tokio::time::timeout(LIMIT, self.child.wait()).await;
    }
}
