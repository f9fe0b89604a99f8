//! The deployment files as an operator uses them: deploy/Dockerfile built with buildah (its
//! runtime stage around the binary under test) and run with podman, deploy/compose.yaml with a
//! stand-in WebUI, and the Debian package from `cargo deb` installed into a Debian root.
//!
//! They need root, buildah, podman, runc, podman-compose, debootstrap and cargo-deb (scripts/test
//! installs them) and Debian's package mirror. The Debian roots (debootstrap, the base image of
//! `FROM debian:bookworm-slim`) and the container storage are cached under target/ across runs;
//! the image is built once per run. Each test prints what it checked, or why it was skipped,
//! past the harness's output capture.

use std::io::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Command as StdCommand, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use crate::common::*;

const LIMIT: Duration = Duration::from_secs(30);
/// The Debian release of `FROM debian:bookworm-slim` in deploy/Dockerfile.
const SUITE: &str = "bookworm";
/// Changes the cache keys when the way a root is made changes.
const ROOT_RECIPE: &str = "minbase, apt lists and archives removed, v1";
/// The image the tests build from deploy/Dockerfile.
const IMAGE: &str = "localhost/certgate:e2e";
/// The stand-in WebUI's image: Debian's Python, no Gradio.
const WEBUI_IMAGE: &str = "localhost/certgate-e2e-webui";

/// Writes to the test's standard error directly, so the lines show in every run's output and
/// not only for a failing test.
fn report(test: &str, lines: &[String]) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{test}: checked");
    for line in lines {
        let _ = writeln!(err, "  - {line}");
    }
}

/// Whether `test` cannot run here (not root, one of `tools` missing); the reason is printed.
fn skipped(test: &str, tools: &[&str]) -> bool {
    let uid = StdCommand::new("id").arg("-u").output().unwrap();
    let reason = if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        Some("needs root (debootstrap, chroot and rootful podman)".to_string())
    } else {
        let missing: Vec<&str> = tools
            .iter()
            .copied()
            .filter(|t| {
                !StdCommand::new("sh")
                    .args(["-c", &format!("command -v {t}")])
                    .stdout(Stdio::null())
                    .status()
                    .unwrap()
                    .success()
            })
            .collect();
        (!missing.is_empty()).then(|| {
            format!(
                "{} not installed (scripts/test installs them)",
                missing.join(", ")
            )
        })
    };
    if let Some(reason) = &reason {
        let _ = writeln!(std::io::stderr().lock(), "{test}: SKIPPED: {reason}");
    }
    reason.is_some()
}

/// Cached across runs: the Debian roots, the container storage, the engine's configuration.
fn cache_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("deploy");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn hex_digest(text: &str) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes());
    d.as_ref()[..6].iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs `cmd` under `timeout`, which must succeed; its standard output.
fn run_std(cmd: StdCommand, secs: u32) -> String {
    let shown = format!("{cmd:?}");
    let mut bounded = StdCommand::new("timeout");
    bounded
        .args(["--kill-after=10", &secs.to_string()])
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .envs(cmd.get_envs().filter_map(|(k, v)| Some((k, v?))));
    if let Some(dir) = cmd.get_current_dir() {
        bounded.current_dir(dir);
    }
    let out = bounded.stdin(Stdio::null()).output().unwrap();
    check_output(&shown, &out);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn check_output(shown: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{shown} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The Debian mirror apt uses here (a local mirror or a snapshot works as well for debootstrap
/// as deb.debian.org); `CERTGATE_TEST_DEBIAN_MIRROR` overrides it.
fn debian_mirror() -> String {
    if let Ok(m) = std::env::var("CERTGATE_TEST_DEBIAN_MIRROR") {
        return m;
    }
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = dir.filter_map(|e| Some(e.ok()?.path())).collect();
        more.sort();
        files.extend(more);
    }
    for file in files {
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        // One-line format: deb [options] URI SUITE COMPONENTS...
        for line in text.lines() {
            let words: Vec<&str> = line
                .split_whitespace()
                .filter(|w| !w.starts_with('[') && !w.ends_with(']'))
                .collect();
            if words.len() >= 3 && words[0] == "deb" && words[2] == SUITE {
                return words[1].to_string();
            }
        }
        // deb822 format: paragraphs with Types, URIs, Suites.
        for para in text.split("\n\n") {
            let field = |name: &str| {
                para.lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(|v| v.split_whitespace().collect::<Vec<_>>())
                    .unwrap_or_default()
            };
            if field("Types:").contains(&"deb")
                && field("Suites:").contains(&SUITE)
                && let Some(uri) = field("URIs:").first()
            {
                return uri.to_string();
            }
        }
    }
    "http://deb.debian.org/debian".into()
}

/// Unmounts what debootstrap may have left mounted under `dir` (it mounts /proc and /sys in
/// the new root), so removing `dir` cannot reach into the host's.
fn unmount_under(dir: &Path) {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let mut points: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|p| Path::new(p).starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let _ = StdCommand::new("umount").arg("-l").arg(p).status();
    }
}

/// A Debian root made by debootstrap (minbase, plus `include`) from Debian's packages, as a tar
/// file, cached under target/ by release, mirror and package list: debootstrap takes ~40 s.
fn debian_root(include: &[&str]) -> PathBuf {
    let mirror = debian_mirror();
    let key = hex_digest(&format!("{ROOT_RECIPE}|{SUITE}|{mirror}|{include:?}"));
    let tar = cache_dir().join(format!("rootfs-{key}.tar"));
    if tar.exists() {
        return tar;
    }
    let work = cache_dir().join(format!("rootfs-{key}.{}", std::process::id()));
    unmount_under(&work);
    let _ = std::fs::remove_dir_all(&work);
    let mut cmd = StdCommand::new("debootstrap");
    cmd.arg("--variant=minbase");
    if !include.is_empty() {
        cmd.arg(format!("--include={}", include.join(",")));
    }
    cmd.arg(SUITE).arg(&work).arg(&mirror);
    let out = StdCommand::new("timeout")
        .args(["--kill-after=10", "900"])
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    unmount_under(&work);
    if !out.status.success() {
        let log =
            std::fs::read_to_string(work.join("debootstrap/debootstrap.log")).unwrap_or_default();
        let _ = std::fs::remove_dir_all(&work);
        panic!(
            "debootstrap {SUITE} from {mirror} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            log.lines()
                .skip(log.lines().count().saturating_sub(20))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    // What apt fetched is not part of a root (bookworm-slim does not keep it either).
    for dir in ["var/cache/apt/archives", "var/lib/apt/lists"] {
        for e in std::fs::read_dir(work.join(dir)).unwrap() {
            let p = e.unwrap().path();
            if p.is_file() && p.file_name().is_some_and(|n| n != "lock") {
                std::fs::remove_file(p).unwrap();
            }
        }
    }
    let partial = tar.with_extension(format!("tar.{}", std::process::id()));
    let mut t = StdCommand::new("tar");
    t.arg("-C")
        .arg(&work)
        .args(["--numeric-owner", "-cf"])
        .arg(&partial)
        .arg(".");
    run_std(t, 300);
    std::fs::rename(&partial, &tar).unwrap();
    std::fs::remove_dir_all(&work).unwrap();
    tar
}

/// podman and buildah with a configuration of their own: storage under target/ (kept across
/// runs), runc with cgroupfs and no default ulimits (crun and the systemd cgroup manager do not
/// work on a machine without systemd as init), isolation by chroot for builds.
struct Engine {
    env: Vec<(&'static str, PathBuf)>,
}

fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let dir = cache_dir();
        let graphroot = dir.join("storage");
        // Container state belongs on a tmpfs (gone after a reboot), one per storage.
        let runroot = PathBuf::from(format!(
            "/run/certgate-e2e-{}",
            hex_digest(&graphroot.display().to_string())
        ));
        let storage = dir.join("storage.conf");
        std::fs::write(
            &storage,
            format!(
                "[storage]\ndriver = \"overlay\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
                graphroot.display(),
                runroot.display()
            ),
        )
        .unwrap();
        let containers = dir.join("containers.conf");
        std::fs::write(
            &containers,
            "[containers]\ndefault_ulimits = []\n\n[engine]\ncgroup_manager = \"cgroupfs\"\n\
             runtime = \"runc\"\nevents_logger = \"file\"\n",
        )
        .unwrap();
        Engine {
            env: vec![
                ("CONTAINERS_CONF", containers),
                ("CONTAINERS_STORAGE_CONF", storage),
                ("BUILDAH_ISOLATION", "chroot".into()),
            ],
        }
    })
}

impl Engine {
    fn std(&self, program: &str) -> StdCommand {
        let mut c = StdCommand::new(program);
        c.envs(self.env.iter().map(|(k, v)| (k, v)));
        c
    }

    fn tokio(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .kill_on_drop(true);
        c
    }

    /// `podman args`, which must succeed within 2 minutes; its standard output.
    async fn podman(&self, args: &[&str]) -> String {
        let out = self.podman_output(args).await;
        check_output(&format!("podman {args:?}"), &out);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `podman args`, bounded by 2 minutes, whatever it exits with.
    async fn podman_output(&self, args: &[&str]) -> Output {
        tokio::time::timeout(
            Duration::from_secs(120),
            self.tokio("podman").args(args).output(),
        )
        .await
        .unwrap_or_else(|_| panic!("podman {args:?} did not finish"))
        .unwrap()
    }
}

/// `FROM debian:bookworm-slim` without a registry: the debootstrap root imported under that
/// name (and a name of its own, to know it is there).
fn base_image() {
    static BASE: OnceLock<()> = OnceLock::new();
    BASE.get_or_init(|| {
        let e = engine();
        let tar = debian_root(&[]);
        let stem = tar.file_stem().unwrap().to_string_lossy().into_owned();
        let own = format!("localhost/certgate-e2e-base:{stem}");
        let exists = e
            .std("podman")
            .args(["image", "exists", &own])
            .status()
            .unwrap();
        if !exists.success() {
            let mut c = e.std("podman");
            c.arg("import").arg(&tar).arg(&own);
            run_std(c, 300);
        }
        let mut c = e.std("podman");
        c.args(["tag", &own, "docker.io/library/debian:bookworm-slim"]);
        run_std(c, 60);
    });
}

/// deploy/Dockerfile built as README "Running it" says, with `--build-arg BINARY=host` around
/// the binary under test (stripped, as `cargo build --release` output would be after `strip`).
/// Once per run; the apt layer comes from buildah's cache after the first.
fn certgate_image() -> &'static str {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        base_image();
        let e = engine();
        let context = scratch_dir("image-context");
        std::fs::create_dir_all(context.join("target/release")).unwrap();
        let mut strip = StdCommand::new("strip");
        strip
            .arg("-o")
            .arg(context.join("target/release/certgate"))
            .arg(env!("CARGO_BIN_EXE_certgate"));
        run_std(strip, 120);
        // The previous run's image goes, so only the cached layers accumulate.
        let _ = e.std("podman").args(["rmi", "-f", IMAGE]).output();
        let mut bud = e.std("buildah");
        bud.args([
            "bud",
            "--layers",
            "--format",
            "docker",
            "--pull=never",
            "-f",
        ])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/Dockerfile"))
        .args(["--build-arg", "BINARY=host", "-t", IMAGE])
        .arg(&context);
        run_std(bud, 900);
        // buildah leaves the working container of the `FROM ${BINARY}` stage mounted; without
        // it the previous runs' binary stages are dangling and pruned.
        let _ = e.std("buildah").args(["rm", "--all"]).output();
        let _ = e.std("podman").args(["image", "prune", "-f"]).output();
    });
    IMAGE
}

/// The stand-in WebUI's image: Debian's Python on the same base, built once and cached.
fn webui_image() -> &'static str {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        base_image();
        let context = scratch_dir("webui-context");
        std::fs::write(
            context.join("Containerfile"),
            "FROM debian:bookworm-slim\nRUN apt-get update \\\n    && apt-get install -y \
             --no-install-recommends python3-minimal libpython3.11-stdlib \\\n    && rm -rf \
             /var/lib/apt/lists/*\n",
        )
        .unwrap();
        let mut bud = engine().std("buildah");
        bud.args(["bud", "--layers", "--pull=never", "-t", WEBUI_IMAGE])
            .arg(&context);
        run_std(bud, 900);
    });
    WEBUI_IMAGE
}

/// A port free on 127.0.0.1 a moment ago, for a listener whose address must be known before it
/// starts (a container's health check, a published port).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A config folder owned by the container's UID 10001: the test PKI's server and CA files and
/// `certgate.toml` with `toml`.
fn container_config(name: &str, toml: &str) -> PathBuf {
    let dir = scratch_dir(name);
    for f in ["server.crt", "server.key", "ca-bundle.crt", "ca.crl"] {
        std::fs::copy(test_pki().dir.join(f), dir.join(f)).unwrap();
    }
    std::fs::write(dir.join("certgate.toml"), toml).unwrap();
    std::fs::set_permissions(
        dir.join("server.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let mut chown = StdCommand::new("chown");
    chown.args(["-R", "10001:10001"]).arg(&dir);
    run_std(chown, 30);
    dir
}

/// A container's log lines (stderr and stdout), read as they come.
struct Lines {
    rx: mpsc::UnboundedReceiver<String>,
    seen: Vec<String>,
}

impl Lines {
    fn from(child: &mut Child) -> Lines {
        let (tx, rx) = mpsc::unbounded_channel();
        for stream in [
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
        ]
        .into_iter()
        .flatten()
        {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stream).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let _ = tx.send(line);
                }
            });
        }
        Lines {
            rx,
            seen: Vec::new(),
        }
    }

    async fn wait(&mut self, needle: &str) -> String {
        let (rx, seen) = (&mut self.rx, &mut self.seen);
        tokio::time::timeout(LIMIT, async {
            loop {
                let Some(line) = rx.recv().await else {
                    panic!("output ended before {needle:?}:\n{}", seen.join("\n"));
                };
                seen.push(line.clone());
                if line.contains(needle) {
                    return line;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no {needle:?} within {LIMIT:?}:\n{}", self.seen.join("\n")))
    }
}

/// Removes the named containers when dropped, however the test ends.
struct Containers(Vec<String>);

impl Drop for Containers {
    fn drop(&mut self) {
        for name in &self.0 {
            let _ = engine()
                .std("podman")
                .args(["rm", "-f", "-t", "0", name])
                .output();
        }
    }
}

/// Unmounts an image mounted with `podman image mount` when dropped.
struct ImageMount(&'static str);

impl Drop for ImageMount {
    fn drop(&mut self) {
        let _ = engine()
            .std("podman")
            .args(["image", "unmount", self.0])
            .output();
    }
}

/// Whether `bytes` hold a PEM private key with its body (the name of the PEM label alone, as in
/// certgate's own binary, is not one).
fn holds_pem_private_key(bytes: &[u8]) -> bool {
    let marker = b"PRIVATE KEY-----";
    let mut from = 0;
    while let Some(at) = find(&bytes[from..], marker) {
        let end = from + at + marker.len();
        let body: Vec<u8> = bytes[end..]
            .iter()
            .copied()
            .skip_while(|b| *b == b'\r' || *b == b'\n')
            .take(64)
            .collect();
        if body.len() == 64
            && body
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
        {
            return true;
        }
        from = end;
    }
    false
}

/// The MD5 sums dpkg recorded for the files of the packages installed under `root`, by path
/// relative to it.
fn debian_checksums(root: &Path) -> std::collections::HashMap<String, String> {
    let mut sums = std::collections::HashMap::new();
    for e in std::fs::read_dir(root.join("var/lib/dpkg/info"))
        .unwrap()
        .flatten()
    {
        if e.path().extension().is_some_and(|x| x == "md5sums") {
            for line in std::fs::read_to_string(e.path()).unwrap().lines() {
                if let Some((md5, path)) = line.split_once("  ") {
                    sums.insert(path.to_string(), md5.to_string());
                }
            }
        }
    }
    sums
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Every regular file under `dir` (symbolic links not followed), with `visit`.
fn walk(dir: &Path, visit: &mut dyn FnMut(&Path)) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let Ok(kind) = e.file_type() else { continue };
        if kind.is_dir() {
            walk(&e.path(), visit);
        } else if kind.is_file() {
            visit(&e.path());
        }
    }
}

/// deploy/Dockerfile's runtime stage around the binary under test, run as the image defines it
/// (its user, entrypoint and command) with `--read-only` and the config and test PKI mounted
/// read-only, on the host's loopback (`--network host`): a client with a certificate gets the
/// backend's 200 with the identity headers, one without is refused, /livez answers and the
/// image's HEALTHCHECK passes, the process is UID 10001 and can write nowhere, the log reaches
/// the container's output, `podman kill -s HUP` reloads a changed CRL (the client it revokes
/// is refused afterwards), SIGTERM lets a request in flight finish and exits 0 within
/// `shutdown_timeout`, and no file in the image holds a private key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_image_serves_reloads_and_drains() {
    const TEST: &str = "container_image_serves_reloads_and_drains";
    if skipped(TEST, &["buildah", "podman", "runc", "debootstrap", "strip"]) {
        return;
    }
    let image = tokio::task::spawn_blocking(certgate_image).await.unwrap();
    let e = engine();
    let mut checked = Vec::new();

    let backend = Backend::start().await;
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let dir = container_config(
        "image-config",
        &test_config(
            backend.addr,
            "",
            &format!("[admin]\nlisten = \"{admin}\"\n\n[reload]\nwatch = \"off\"\n"),
        ),
    );
    let name = format!("certgate-e2e-{}", std::process::id());
    let _cleanup = Containers(vec![name.clone()]);
    let mut run = e.tokio("podman");
    // --read-only-tmpfs=false: no writable /tmp or /run either, as with `docker run --read-only`.
    run.args(["run", "--rm", "--name", &name, "--network", "host"])
        .args(["--read-only", "--read-only-tmpfs=false"])
        // Periodic health checks need systemd timers; `podman healthcheck run` below runs it.
        .args(["--health-interval", "disable"])
        .args(["-e", &format!("CERTGATE_HEALTH_URL=http://{admin}/livez")])
        .arg("-v")
        .arg(format!("{}:/etc/certgate:ro", dir.display()))
        .arg(image)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = run.spawn().unwrap();
    let mut lines = Lines::from(&mut child);
    let listening = lines.wait("certgate listening").await;
    let at = listening
        .find("https=127.0.0.1:")
        .expect("the HTTPS address")
        + 6;
    let addr: SocketAddr = listening[at..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    checked.push(format!(
        "the image from deploy/Dockerfile (BINARY=host) starts with --read-only, config mounted \
         read-only, listening on {addr}"
    ));

    let got = get_once(addr, alice(), "/through-the-container").await;
    assert_eq!(got.status, 200, "{}", got.body);
    let seen = backend.only();
    assert_eq!(seen.target, "/through-the-container");
    assert_eq!(seen.headers["x-ssl-client-verify"], "SUCCESS");
    assert!(
        seen.headers["x-ssl-client-dn"]
            .to_str()
            .unwrap()
            .contains("CN=admin@face.analyze")
    );
    checked
        .push("a client with a certificate gets 200 from the backend, identity headers set".into());
    let refused = assert_refused(addr, client_config(None, &["http/1.1"])).await;
    checked.push(format!("a client without one is refused ({refused})"));
    lines.wait("certgate::access").await;
    let logs = e.podman(&["logs", &name]).await;
    let logs_err = e.podman_output(&["logs", &name]).await;
    let all = format!("{logs}{}", String::from_utf8_lossy(&logs_err.stderr));
    assert!(all.contains("/through-the-container"), "{all}");
    checked.push("the access log is in the container's output (podman logs)".into());

    let (status, body) = admin_get(admin, "/livez").await;
    assert_eq!(status, 200, "{body}");
    let health = e.podman_output(&["healthcheck", "run", &name]).await;
    check_output("podman healthcheck run", &health);
    checked.push("/livez answers 200 and the image's HEALTHCHECK (curl inside it) passes".into());

    let status = e.podman(&["exec", &name, "cat", "/proc/1/status"]).await;
    let uid = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .expect("a Uid line");
    assert_eq!(
        uid.split_whitespace().skip(1).collect::<Vec<_>>(),
        ["10001"; 4],
        "{uid}"
    );
    for target in ["/probe", "/etc/certgate/probe", "/tmp/probe"] {
        let touch = e.podman_output(&["exec", &name, "touch", target]).await;
        assert!(!touch.status.success(), "{target} is writable");
        let err = String::from_utf8_lossy(&touch.stderr);
        assert!(err.contains("Read-only file system"), "{target}: {err}");
    }
    checked.push(
        "certgate runs as UID 10001 (real, effective, saved, filesystem) and / and \
         /etc/certgate are read-only"
            .into(),
    );

    crate::ops::write_crl(&dir, &[test_pki().alice.chain[0].as_ref()], 30);
    e.podman(&["kill", "-s", "HUP", &name]).await;
    let reload = lines.wait("reload complete").await;
    assert!(reload.contains("SIGHUP"), "{reload}");
    let refused = assert_refused(addr, alice()).await;
    checked.push(format!(
        "`podman kill -s HUP` reloads a CRL revoking alice, who is refused afterwards ({refused})"
    ));

    let zhang = client_config(Some(&test_pki().zhang), &["http/1.1"]);
    let mut send = h1(addr, zhang).await;
    let slow = tokio::spawn(async move { get1(&mut send, "/slow", &[]).await });
    backend.arrived().await;
    let term = Instant::now();
    e.podman(&["kill", "-s", "TERM", &name]).await;
    lines.wait("shutting down").await;
    backend.release();
    let got = tokio::time::timeout(LIMIT, slow).await.unwrap().unwrap();
    assert_eq!(got.status, 200);
    assert_eq!(got.body, "slow done");
    let exit = tokio::time::timeout(LIMIT, child.wait())
        .await
        .expect("the container did not stop after SIGTERM")
        .unwrap();
    let took = term.elapsed();
    assert_eq!(exit.code(), Some(0), "{}", lines.seen.join("\n"));
    // test_config's shutdown_timeout.
    assert!(took < Duration::from_secs(10), "took {took:?}");
    checked.push(format!(
        "SIGTERM with a request in flight: it completes with 200, the container exits 0 after \
         {took:.1?} (shutdown_timeout 10s)"
    ));

    let mount = e.podman(&["image", "mount", image]).await;
    let _unmount = ImageMount(image);
    let root = PathBuf::from(mount.trim());
    let server_key = std::fs::read_to_string(test_pki().dir.join("server.key")).unwrap();
    let key_line = server_key
        .lines()
        .nth(1)
        .expect("a PEM body line")
        .as_bytes()
        .to_vec();
    let mut files = 0;
    walk(&root, &mut |_| files += 1);
    // grep finds the candidates fast; each is then read for a PEM key body or the test key.
    let grep = Command::new("grep")
        .args(["-rlsF", "-e", "PRIVATE KEY-----", "-e"])
        .arg(String::from_utf8_lossy(&key_line).as_ref())
        .arg(&root)
        .output()
        .await
        .unwrap();
    let candidates = String::from_utf8_lossy(&grep.stdout).into_owned();
    let debian = debian_checksums(&root);
    let (mut keys, mut shipped) = (Vec::new(), Vec::new());
    for path in candidates.lines() {
        let bytes = std::fs::read(path).unwrap();
        if find(&bytes, &key_line).is_some() {
            keys.push(format!("{path} (the test server's key)"));
        } else if holds_pem_private_key(&bytes) {
            // GnuTLS carries the fixed keys of its self-tests: part of a Debian package,
            // unchanged, and no secret of this deployment.
            let rel = Path::new(path).strip_prefix(&root).unwrap();
            let md5 = String::from_utf8_lossy(
                &Command::new("md5sum")
                    .arg(path)
                    .output()
                    .await
                    .unwrap()
                    .stdout,
            )
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string();
            if debian.get(&rel.display().to_string()) == Some(&md5) {
                shipped.push(rel.display().to_string());
            } else {
                keys.push(path.to_string());
            }
        }
    }
    assert!(files > 1000, "only {files} files under {}", root.display());
    assert!(keys.is_empty(), "private keys in the image: {keys:?}");
    checked.push(format!(
        "none of the image's {files} files holds a private key, but for the self-test keys in \
         {shipped:?} (Debian's files, checksums as dpkg recorded them)"
    ));
    report(TEST, &checked);
}

/// deploy/compose.yaml brought up with podman-compose, its Gradio service replaced by a
/// stand-in WebUI (Python's http.server answering with the headers it received) and certgate's
/// image by the one built from deploy/Dockerfile: a client with a certificate reaches the WebUI
/// through certgate's published port with the identity headers certgate sets (a spoofed one
/// replaced), one without a certificate is refused, and the WebUI's port is not published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_sidecar_puts_certgate_in_front_of_the_webui() {
    const TEST: &str = "compose_sidecar_puts_certgate_in_front_of_the_webui";
    if skipped(
        TEST,
        &[
            "buildah",
            "podman",
            "runc",
            "podman-compose",
            "debootstrap",
            "strip",
        ],
    ) {
        return;
    }
    let (image, webui) = tokio::task::spawn_blocking(|| (certgate_image(), webui_image()))
        .await
        .unwrap();
    let e = engine();
    let mut checked = Vec::new();

    let dir = container_config(
        "compose-config",
        "[listen]\nhttps = \"0.0.0.0:8443\"\nshutdown_timeout = \"10s\"\n\n[tls]\n\
         cert = \"server.crt\"\nkey = \"server.key\"\nclient_ca = \"ca-bundle.crt\"\n\
         crl = [\"ca.crl\"]\n\n[upstream]\nurl = \"http://gradio:7860\"\n\n[admin]\n\
         listen = \"127.0.0.1:9090\"\n",
    );
    let files = scratch_dir("compose-files");
    std::fs::write(
        files.join("webui.py"),
        "import http.server, json, sys\n\
         class Echo(http.server.BaseHTTPRequestHandler):\n\
         \x20   def do_GET(self):\n\
         \x20       body = json.dumps({'path': self.path, 'headers': dict(self.headers.items())}).encode()\n\
         \x20       self.send_response(200)\n\
         \x20       self.send_header('content-type', 'application/json')\n\
         \x20       self.send_header('content-length', str(len(body)))\n\
         \x20       self.end_headers()\n\
         \x20       self.wfile.write(body)\n\
         server = http.server.ThreadingHTTPServer(('0.0.0.0', 7860), Echo)\n\
         print('webui listening', file=sys.stderr, flush=True)\n\
         server.serve_forever()\n",
    )
    .unwrap();
    let override_file = files.join("compose.test.yaml");
    std::fs::write(
        &override_file,
        format!(
            "services:\n  gradio:\n    image: {webui}\n    command: python3 /webui.py\n    \
             volumes:\n      - {}:/webui.py:ro\n  certgate:\n    image: {image}\n",
            files.join("webui.py").display()
        ),
    )
    .unwrap();

    let project = format!("certgate-e2e-{}", std::process::id());
    let (certgate_name, webui_name) = (
        format!("{project}_certgate_1"),
        format!("{project}_gradio_1"),
    );
    let _cleanup = Containers(vec![certgate_name.clone(), webui_name.clone()]);
    let _network = Network(format!("{project}_default"));
    let port = free_port();
    let compose = |verb: &[&str]| {
        let mut c = e.tokio("podman-compose");
        c.args(["-p", &project, "-f"])
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/compose.yaml"))
            .arg("-f")
            .arg(&override_file)
            .args(verb)
            .env("CERTGATE_PUBLISH", format!("127.0.0.1:{port}"))
            .env("CERTGATE_DIR", &dir);
        c
    };
    let up = tokio::time::timeout(
        Duration::from_secs(120),
        compose(&["up", "-d", "--no-build"]).output(),
    )
    .await
    .expect("podman-compose up did not finish")
    .unwrap();
    check_output("podman-compose up", &up);

    let mut webui_logs = e.tokio("podman");
    webui_logs
        .args(["logs", "-f", &webui_name])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut webui_logs = webui_logs.spawn().unwrap();
    Lines::from(&mut webui_logs).wait("webui listening").await;
    let mut certgate_logs = e.tokio("podman");
    certgate_logs
        .args(["logs", "-f", &certgate_name])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut certgate_logs = certgate_logs.spawn().unwrap();
    Lines::from(&mut certgate_logs)
        .wait("certgate listening https=0.0.0.0:8443")
        .await;
    checked.push(format!(
        "podman-compose up: deploy/compose.yaml with a stand-in WebUI, certgate published on \
         127.0.0.1:{port}"
    ));

    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut send = h1(addr, alice()).await;
    let got = get1(
        &mut send,
        "/webui",
        &[
            ("x-ssl-client-dn", "CN=spoofed"),
            ("x-ssl-client-verify", "SUCCESS"),
        ],
    )
    .await;
    assert_eq!(got.status, 200, "{}", got.body);
    let echo = got.json();
    assert_eq!(echo["path"], "/webui");
    let headers = &echo["headers"];
    assert_eq!(headers["x-ssl-client-verify"], "SUCCESS", "{echo}");
    let dn = headers["x-ssl-client-dn"].as_str().unwrap_or_default();
    assert!(
        dn.contains("CN=admin@face.analyze") && !dn.contains("spoofed"),
        "{echo}"
    );
    assert!(
        headers["x-ssl-client-cert"]
            .as_str()
            .is_some_and(|c| c.contains("BEGIN%20CERTIFICATE")),
        "{echo}"
    );
    checked.push(format!(
        "a client with a certificate reaches the WebUI through certgate; the WebUI receives \
         X-SSL-Client-DN {dn:?} (a spoofed one replaced), -Verify and -Cert"
    ));
    let refused = assert_refused(addr, client_config(None, &["http/1.1"])).await;
    checked.push(format!(
        "a client without a certificate is refused ({refused})"
    ));

    let ports = e.podman(&["port", &webui_name]).await;
    assert!(ports.trim().is_empty(), "the WebUI publishes {ports}");
    let bindings = e
        .podman(&[
            "inspect",
            "--format",
            "{{json .HostConfig.PortBindings}}",
            &webui_name,
        ])
        .await;
    // `expose` lists 7860 with no host side; a published port would have one.
    let bindings: serde_json::Value = serde_json::from_str(bindings.trim()).unwrap();
    assert!(
        bindings.as_object().is_none_or(|ports| ports
            .values()
            .all(|b| b.is_null() || b.as_array().is_some_and(|a| a.is_empty()))),
        "the WebUI binds host ports: {bindings}"
    );
    let certgate_ports = e.podman(&["port", &certgate_name]).await;
    assert_eq!(
        certgate_ports.trim(),
        format!("8443/tcp -> 127.0.0.1:{port}")
    );
    checked
        .push("the WebUI's port 7860 is not published; certgate's 8443 is the only way in".into());

    let down = tokio::time::timeout(Duration::from_secs(120), compose(&["down"]).output())
        .await
        .expect("podman-compose down did not finish")
        .unwrap();
    check_output("podman-compose down", &down);
    let left = e
        .podman(&[
            "ps",
            "-a",
            "-q",
            "--filter",
            &format!("label=io.podman.compose.project={project}"),
        ])
        .await;
    assert!(left.trim().is_empty(), "containers left: {left}");
    checked.push("podman-compose down stops and removes both containers".into());
    report(TEST, &checked);
}

/// Removes a podman network when dropped (podman-compose 1.0 `down` leaves it).
struct Network(String);

impl Drop for Network {
    fn drop(&mut self) {
        let _ = engine()
            .std("podman")
            .args(["network", "rm", "-f", &self.0])
            .output();
    }
}

/// Every path under `root` with its kind, except what dpkg, the user database and logs change
/// on any installation: the part of a root that a purged package must leave as it found it.
fn snapshot(root: &Path) -> std::collections::BTreeSet<String> {
    fn go(root: &Path, dir: &Path, out: &mut std::collections::BTreeSet<String>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().flatten().collect();
        entries.sort_by_key(|e| e.path());
        for e in entries {
            let path = e.path();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            let kept = [
                "var/lib/dpkg/",
                "var/log/",
                "var/cache/debconf/",
                "tmp/",
                "run/",
            ];
            let user_db = [
                "etc/passwd",
                "etc/group",
                "etc/shadow",
                "etc/gshadow",
                "etc/subuid",
                "etc/subgid",
                "etc/.pwd.lock",
            ];
            if kept.iter().any(|k| rel.starts_with(k))
                || user_db.iter().any(|u| rel == *u || rel == format!("{u}-"))
            {
                continue;
            }
            let kind = e.file_type().unwrap();
            out.insert(format!(
                "{rel} {}",
                if kind.is_dir() {
                    "dir"
                } else if kind.is_symlink() {
                    "link"
                } else {
                    "file"
                }
            ));
            if kind.is_dir() {
                go(root, &path, out);
            }
        }
    }
    let mut out = std::collections::BTreeSet::new();
    go(root, root, &mut out);
    out
}

/// `cmd` inside `root` (chroot), which must succeed; its standard output.
fn in_root(root: &Path, args: &[&str]) -> String {
    let mut c = StdCommand::new("chroot");
    c.arg(root)
        .args(args)
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    run_std(c, 120)
}

/// The Debian package from `cargo deb --no-build` (Cargo.toml [package.metadata.deb]) around
/// the binary under test, installed with `dpkg -i` into a Debian 12 root (debootstrap, with
/// systemd) by chroot: the binary, both units and the example config (a conffile) are in place,
/// the certgate system user exists and owns /var/lib/certgate (0700), `systemd-analyze verify`
/// of the installed units prints nothing, `certgate check` refuses the installed config until
/// the certificates it names are there and accepts it then; `dpkg --purge` removes every file
/// of the package and its state, and leaves only the system user (Debian keeps those) and the
/// operator's own files in /etc/certgate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debian_package_installs_verifies_and_purges() {
    const TEST: &str = "debian_package_installs_verifies_and_purges";
    if skipped(
        TEST,
        &[
            "cargo-deb",
            "debootstrap",
            "dpkg-deb",
            "chroot",
            "systemd-analyze",
        ],
    ) {
        return;
    }
    let tar = tokio::task::spawn_blocking(|| debian_root(&["systemd", "procps"]))
        .await
        .unwrap();
    let mut checked = Vec::new();
    let work = scratch_dir("deb");
    // `cargo deb --no-build` packages target/release/certgate: a release build would add
    // minutes, so the binary under test stands in for it (cargo deb strips it).
    let target = work.join("target");
    std::fs::create_dir_all(target.join("release")).unwrap();
    std::fs::copy(
        env!("CARGO_BIN_EXE_certgate"),
        target.join("release/certgate"),
    )
    .unwrap();
    let deb = work.join("certgate.deb");
    let mut build = StdCommand::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    build
        .args(["deb", "--no-build", "--locked", "--offline", "--fast", "-o"])
        .arg(&deb)
        .env("CARGO_TARGET_DIR", &target)
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    run_std(build, 300);
    let mut info = StdCommand::new("dpkg-deb");
    info.arg("--field").arg(&deb).args(["Package", "Depends"]);
    let fields = run_std(info, 30);
    checked.push(format!(
        "cargo deb --no-build built {} ({})",
        deb.file_name().unwrap().to_string_lossy(),
        fields.split_whitespace().collect::<Vec<_>>().join(" ")
    ));

    let root = work.join("root");
    std::fs::create_dir_all(&root).unwrap();
    let mut untar = StdCommand::new("tar");
    untar.arg("-C").arg(&root).arg("-xf").arg(&tar);
    run_std(untar, 300);
    let before = snapshot(&root);
    std::fs::copy(&deb, root.join("tmp/certgate.deb")).unwrap();
    in_root(&root, &["dpkg", "-i", "/tmp/certgate.deb"]);
    std::fs::remove_file(root.join("tmp/certgate.deb")).unwrap();

    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let units = root.join("usr/lib/systemd/system");
    for (installed, source) in [
        (
            units.join("certgate.service"),
            repo.join("deploy/certgate.service"),
        ),
        (
            units.join("certgate.socket"),
            repo.join("deploy/certgate.socket"),
        ),
        (
            root.join("etc/certgate/certgate.toml"),
            repo.join("config/certgate.toml"),
        ),
    ] {
        assert_eq!(
            std::fs::read(&installed).unwrap(),
            std::fs::read(&source).unwrap(),
            "{}",
            installed.display()
        );
    }
    let bin = std::fs::metadata(root.join("usr/bin/certgate")).unwrap();
    assert_eq!(bin.mode() & 0o777, 0o755);
    let version = in_root(&root, &["certgate", "--version"]);
    assert!(version.starts_with("certgate "), "{version}");
    let conffiles = in_root(&root, &["dpkg-query", "-W", "-f=${Conffiles}", "certgate"]);
    assert!(
        conffiles.contains("/etc/certgate/certgate.toml"),
        "{conffiles}"
    );
    checked.push(
        "dpkg -i: /usr/bin/certgate runs, certgate.service and certgate.socket in \
         /usr/lib/systemd/system, /etc/certgate/certgate.toml is a conffile"
            .into(),
    );

    let passwd = in_root(&root, &["getent", "passwd", "certgate"]);
    let fields: Vec<&str> = passwd.trim().split(':').collect();
    let uid: u32 = fields[2].parse().unwrap();
    assert!(uid < 1000, "not a system user: {passwd}");
    assert_eq!(fields[5], "/var/lib/certgate", "{passwd}");
    assert_eq!(fields[6], "/usr/sbin/nologin", "{passwd}");
    in_root(&root, &["getent", "group", "certgate"]);
    let state = std::fs::metadata(root.join("var/lib/certgate")).unwrap();
    assert_eq!((state.uid(), state.mode() & 0o777), (uid, 0o700));
    checked.push(format!(
        "postinst made the system user certgate (uid {uid}, nologin) and /var/lib/certgate \
         (its own, 0700)"
    ));

    crate::cli::systemd_verify_clean(
        &[
            PathBuf::from("certgate.service"),
            PathBuf::from("certgate.socket"),
        ],
        Some(&root),
    );
    checked.push(
        "systemd-analyze verify --root of the installed units: no warning (systemd 252)".into(),
    );

    let mut check = StdCommand::new("chroot");
    check
        .arg(&root)
        .args(["certgate", "check", "-c", "/etc/certgate/certgate.toml"]);
    let out = check.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("/etc/certgate/server.crt"), "{err}");
    let operator_files = ["server.crt", "server.key", "ca.crt", "ca.crl"];
    for f in operator_files {
        std::fs::copy(test_pki().dir.join(f), root.join("etc/certgate").join(f)).unwrap();
    }
    let summary = in_root(
        &root,
        &["certgate", "check", "-c", "/etc/certgate/certgate.toml"],
    );
    assert!(summary.contains("is valid"), "{summary}");
    checked.push(
        "certgate check on the installed config: exit 2 naming /etc/certgate/server.crt, then \
         valid once the certificates are there"
            .into(),
    );

    in_root(&root, &["dpkg", "--purge", "certgate"]);
    let status = StdCommand::new("chroot")
        .arg(&root)
        .args(["dpkg-query", "-W", "certgate"])
        .output()
        .unwrap();
    assert!(!status.status.success(), "still known to dpkg");
    let mut left: Vec<String> = std::fs::read_dir(root.join("etc/certgate"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    let mut expected: Vec<String> = operator_files.iter().map(|f| f.to_string()).collect();
    expected.sort();
    assert_eq!(left, expected, "/etc/certgate after purge");
    for f in operator_files {
        std::fs::remove_file(root.join("etc/certgate").join(f)).unwrap();
    }
    std::fs::remove_dir(root.join("etc/certgate")).unwrap();
    let after = snapshot(&root);
    let added: Vec<_> = after.difference(&before).collect();
    let removed: Vec<_> = before.difference(&after).collect();
    assert!(
        added.is_empty() && removed.is_empty(),
        "purge left {added:?} and took {removed:?}"
    );
    in_root(&root, &["getent", "passwd", "certgate"]);
    checked.push(
        "dpkg --purge: every file of the package, /var/lib/certgate and the conffile gone, the \
         operator's certificates in /etc/certgate kept, the system user kept (Debian policy)"
            .into(),
    );
    report(TEST, &checked);
}
