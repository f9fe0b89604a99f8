//! Reload without dropping anyone. Everything built from one config — TLS acceptor and
//! verifier, routes and policy, the backend pool, limits — is one [`Runtime`], held in an
//! `ArcSwap`. A reload (SIGHUP, a watched file whose content changed, or a test) builds the whole
//! new runtime off to the side, validates it, and only then swaps it in: connections and
//! requests in flight keep the runtime they started with; new connections get the new one at
//! once; open keep-alive connections are re-checked against the new CAs and CRLs before their
//! next request. A reload that fails changes nothing, logs every problem, and is counted.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::HeaderValue;
use hyper_util::rt::TokioExecutor;
use rustls::server::danger::ClientCertVerifier;
use tokio_rustls::TlsAcceptor;

use crate::policy::access::{ConnLimits, HandshakeThrottle, IpList};

use crate::config::{Config, ConfigError, Listen};
use crate::ops::metrics::Metrics;
use crate::policy::Policy;
use crate::tls::CrlExpired;
use crate::tls::TlsError;
use crate::tls::identity::HeaderNames;
use crate::upstream::{Forwarder, HeaderPolicy};

/// Why a reload (or the first load) failed.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The config or a file it names is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The TLS setup was refused.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// What a runtime was built from, for the reload log line and the metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Server certificate serial, upper-case hex.
    pub server_serial: String,
    /// Server certificate not-after, Unix time.
    pub server_not_after: i64,
    /// Client CA subjects.
    pub client_cas: Vec<String>,
    /// Each CRL: file, entries, next update (Unix time).
    pub crls: Vec<CrlInfo>,
    /// Number of routes.
    pub routes: usize,
}

/// One loaded CRL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlInfo {
    /// Where it came from.
    pub path: PathBuf,
    /// Issuer DN.
    pub issuer: String,
    /// Revoked entries.
    pub entries: usize,
    /// Next update, Unix time.
    pub next_update: Option<i64>,
    /// SHA-256 of the DER, to notice a replaced CRL with the same counts.
    pub digest: Vec<u8>,
}

impl Summary {
    fn of(config: &Config) -> Summary {
        let (server_serial, server_not_after) = config
            .tls
            .cert_chain
            .first()
            .and_then(|d| x509_parser::parse_x509_certificate(d).ok())
            .map(|(_, c)| {
                (
                    c.raw_serial().iter().map(|b| format!("{b:02X}")).collect(),
                    c.validity().not_after.timestamp(),
                )
            })
            .unwrap_or_default();
        let client_cas = config
            .tls
            .client_cas
            .iter()
            .filter_map(|d| x509_parser::parse_x509_certificate(d).ok())
            .map(|(_, c)| crate::tls::identity::format_dn(c.subject()))
            .collect();
        let crls = config
            .tls
            .crl_paths
            .iter()
            .zip(&config.tls.crls)
            .filter_map(|(path, der)| {
                let (_, crl) = x509_parser::parse_x509_crl(der).ok()?;
                Some(CrlInfo {
                    path: path.clone(),
                    issuer: crate::tls::identity::format_dn(crl.issuer()),
                    entries: crl.iter_revoked_certificates().count(),
                    next_update: crl.next_update().map(|t| t.timestamp()),
                    digest: aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der)
                        .as_ref()
                        .to_vec(),
                })
            })
            .collect();
        Summary {
            server_serial,
            server_not_after,
            client_cas,
            crls,
            routes: config.routes.len(),
        }
    }

    /// What differs from `old`, as short phrases for the log line.
    pub fn changes(&self, old: &Summary) -> Vec<String> {
        let mut out = Vec::new();
        if self.server_serial != old.server_serial {
            out.push(format!(
                "server certificate {} -> {}",
                old.server_serial, self.server_serial
            ));
        }
        if self.client_cas != old.client_cas {
            out.push(format!(
                "client CAs {} -> {}",
                old.client_cas.len(),
                self.client_cas.len()
            ));
        }
        for crl in &self.crls {
            let before = old.crls.iter().find(|c| c.path == crl.path);
            match before {
                Some(b) if b == crl => {}
                Some(b) => out.push(format!(
                    "CRL {} replaced ({} -> {} revoked)",
                    crl.path.display(),
                    b.entries,
                    crl.entries
                )),
                None => out.push(format!(
                    "CRL {} added ({} revoked)",
                    crl.path.display(),
                    crl.entries
                )),
            }
        }
        if self.routes != old.routes {
            out.push(format!("routes {} -> {}", old.routes, self.routes));
        }
        out
    }
}

/// Everything built from one config.
pub struct Runtime {
    /// Increases with every successful reload; connections remember the one they were checked
    /// against.
    pub generation: u64,
    pub(crate) acceptor: TlsAcceptor,
    pub(crate) verifier: Arc<dyn ClientCertVerifier>,
    /// The verified path of a client's chain, for the profiles that forward the chain.
    pub(crate) paths: Arc<crate::tls::PathBuilder>,
    pub(crate) client_auth_required: bool,
    /// `on_failure = "help"`: the handshake admits any client that proves its key, and the
    /// strict verifier judges the certificate afterwards.
    pub(crate) help_on_failure: bool,
    pub(crate) onboarding: crate::onboarding::Onboarding,
    pub(crate) handshake_timeout: Duration,
    /// HTTP/1 settings; connections that negotiated `h2` use `http2`.
    pub(crate) http1: hyper::server::conn::http1::Builder,
    pub(crate) http2: hyper::server::conn::http2::Builder<TokioExecutor>,
    pub(crate) policy: Policy,
    pub(crate) forwarder: Forwarder,
    pub(crate) headers: HeaderNames,
    pub(crate) access_log: bool,
    pub(crate) allow_ips: IpList,
    pub(crate) response_headers: Vec<(http::HeaderName, HeaderValue)>,
    pub(crate) crl_expired: CrlExpired,
    pub(crate) keepalive_timeout: Duration,
    pub(crate) send_timeout: Duration,
    pub(crate) route_counters: Vec<Arc<crate::ops::metrics::RouteCounters>>,
    pub(crate) none_counters: Arc<crate::ops::metrics::RouteCounters>,
    pub(crate) handshake_throttle: Arc<HandshakeThrottle>,
    /// `[console]`: the operator's page on the main listener.
    pub(crate) console: Option<crate::console::Settings>,
    /// Whether the operator's page is served anywhere (`[console]` or the admin listener), so
    /// the traffic is recorded for it.
    pub(crate) record: bool,
    /// What it was built from.
    pub summary: Summary,
}

impl Runtime {
    /// Builds a runtime; rate-limit zones identical to `previous`'s keep their buckets.
    ///
    /// # Errors
    /// [`TlsError`] when the TLS setup is refused.
    pub fn build(
        config: &Config,
        generation: u64,
        metrics: &Arc<Metrics>,
        previous: Option<&Runtime>,
    ) -> Result<Runtime, TlsError> {
        let tls = crate::tls::build(&config.tls)?;
        let (http1, http2) = super::http::builders(config.limits.header_read_timeout);
        let handshake_throttle = previous
            .map(|p| p.handshake_throttle.clone())
            .filter(|t| t.rate() == config.limits.handshake_failures_per_ip)
            .unwrap_or_else(|| {
                Arc::new(HandshakeThrottle::new(
                    config.limits.handshake_failures_per_ip,
                ))
            });
        let settings = config.policy_settings();
        let owned = settings.owned_headers();
        let header_policy = Arc::new(HeaderPolicy::new(&config.headers, owned.iter()));
        let policy = Policy::new(
            &settings,
            header_policy.clone(),
            metrics,
            previous.map(|p| &p.policy),
        );
        // The Redis of `[shared]` keeps identity bindings too, so replicas agree on a moved client.
        let shared_bindings = policy
            .shared()
            .map(|s| s.clone() as Arc<dyn crate::upstream::SharedBindings>);
        Ok(Runtime {
            generation,
            acceptor: TlsAcceptor::from(tls.server_config),
            verifier: tls.verifier,
            paths: tls.paths,
            client_auth_required: config.tls.client_auth == crate::tls::ClientAuth::Required,
            help_on_failure: config.tls.on_failure == crate::tls::OnFailure::Help,
            onboarding: crate::onboarding::Onboarding::new(
                config.tls.help_contact.clone(),
                config.enroll.clone(),
            ),
            handshake_timeout: config.tls.handshake_timeout,
            http1,
            http2,
            policy,
            forwarder: Forwarder::new(
                &std::iter::once(&config.upstream)
                    .chain(&config.upstreams)
                    .collect::<Vec<_>>(),
                header_policy,
                metrics.clone(),
                previous.map(|p| &p.forwarder),
                config.limits.body_timeout,
                shared_bindings,
            )
            .with_queues(crate::queue::Queues::new(
                &config.queues,
                metrics,
                previous.map(|p| p.forwarder.queues()),
            )),
            headers: config.headers.clone(),
            access_log: config.log.access,
            allow_ips: config.allow_ips.clone(),
            response_headers: config.response_headers.clone(),
            crl_expired: config.tls.crl_expired,
            keepalive_timeout: config.limits.keepalive_timeout,
            send_timeout: config.limits.send_timeout,
            route_counters: config
                .routes
                .iter()
                .map(|r| metrics.route_counters(&r.label))
                .collect(),
            none_counters: metrics.route_counters("none"),
            handshake_throttle,
            console: config.console.clone(),
            record: config.console.is_some() || config.admin.is_some(),
            summary: Summary::of(config),
        })
    }
}

/// The state every task shares: the current runtime and what outlives it.
pub struct Shared {
    pub(crate) runtime: ArcSwap<Runtime>,
    pub(crate) limits: Arc<ConnLimits>,
    /// The metrics.
    pub metrics: Arc<Metrics>,
    config_path: PathBuf,
    listen: Listen,
    admin: Option<std::net::SocketAddr>,
    files: std::sync::Mutex<Vec<PathBuf>>,
    watch: std::sync::Mutex<Option<Duration>>,
    next_generation: AtomicU64,
    reload_lock: tokio::sync::Mutex<()>,
    /// Upgraded connections (WebSockets): they outlive their HTTP connection, and shutdown
    /// waits for them like for requests in flight.
    pub(crate) tunnels: tokio_util::task::TaskTracker,
    /// What the operator's page remembers of the traffic: the daemon's, kept across reloads.
    pub(crate) console: Arc<crate::console::Store>,
    /// The same store, as the access record tells it of finished requests.
    pub(crate) ledger: Arc<dyn crate::response::access_log::Ledger>,
    /// When the daemon started.
    pub(crate) started: std::time::Instant,
    /// The same, Unix seconds.
    pub(crate) started_unix: i64,
    /// The last reload, for the operator's page.
    pub(crate) last_reload: std::sync::Mutex<Option<crate::console::ReloadNote>>,
}

/// What a successful reload changed.
#[derive(Debug, Clone)]
pub struct ReloadReport {
    /// The new generation.
    pub generation: u64,
    /// Short phrases: certificate serials, CRL entry counts, CA and route counts.
    pub changes: Vec<String>,
}

impl Shared {
    /// Builds the first runtime from a validated config.
    ///
    /// # Errors
    /// [`TlsError`] when the TLS setup is refused.
    pub fn new(config: &Config) -> Result<Arc<Shared>, TlsError> {
        let metrics = Arc::new(Metrics::new());
        let runtime = Runtime::build(config, 1, &metrics, None)?;
        let console = Arc::new(crate::console::Store::new());
        let shared = Shared {
            ledger: console.clone(),
            console,
            started: std::time::Instant::now(),
            started_unix: time::OffsetDateTime::now_utc().unix_timestamp(),
            last_reload: std::sync::Mutex::new(None),
            limits: ConnLimits::new(
                config.limits.max_connections,
                config.limits.max_connections_per_ip,
            ),
            metrics,
            config_path: config.path.clone(),
            listen: config.listen.clone(),
            admin: config.admin,
            files: std::sync::Mutex::new(config.files.clone()),
            watch: std::sync::Mutex::new(config.reload_watch),
            next_generation: AtomicU64::new(2),
            reload_lock: tokio::sync::Mutex::new(()),
            tunnels: tokio_util::task::TaskTracker::new(),
            runtime: ArcSwap::from_pointee(runtime),
        };
        shared.publish_gauges();
        Ok(Arc::new(shared))
    }

    /// The runtime in use now.
    pub fn current(&self) -> Arc<Runtime> {
        self.runtime.load_full()
    }

    fn publish_gauges(&self) {
        let rt = self.runtime.load();
        self.metrics
            .set_server_cert_not_after(rt.summary.server_not_after);
        let crls: Vec<(String, i64)> = rt
            .summary
            .crls
            .iter()
            .filter_map(|c| {
                Some((
                    c.path.file_name()?.to_string_lossy().into_owned(),
                    c.next_update?,
                ))
            })
            .collect();
        self.metrics.set_crls(&crls);
    }

    /// Re-reads the config and every file it names and swaps the new runtime in, or changes
    /// nothing and says why.
    ///
    /// # Errors
    /// The [`ReloadError`] with every problem found; the running state is untouched.
    pub async fn reload(&self, trigger: &str) -> Result<ReloadReport, ReloadError> {
        let _serial = self.reload_lock.lock().await;
        crate::ops::systemd::reloading();
        let old = self.runtime.load_full();
        let built = Config::load(&self.config_path)
            .map_err(ReloadError::from)
            .and_then(|config| {
                let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
                let rt = Runtime::build(&config, generation, &self.metrics, Some(&old))?;
                Ok((config, rt))
            });
        let result = match built {
            Ok((config, rt)) => {
                let mut changes = rt.summary.changes(&old.summary);
                if config.listen.https != self.listen.https
                    || config.listen.http_redirect != self.listen.http_redirect
                    || config.admin != self.admin
                {
                    tracing::warn!(
                        "listen addresses changed in {}; they take effect after a restart",
                        self.config_path.display()
                    );
                    changes.push("listen addresses (restart needed)".to_string());
                }
                self.limits.set_limits(
                    config.limits.max_connections,
                    config.limits.max_connections_per_ip,
                );
                if let Ok(mut f) = self.files.lock() {
                    *f = config.files.clone();
                }
                if let Ok(mut w) = self.watch.lock() {
                    *w = config.reload_watch;
                }
                let generation = rt.generation;
                self.note_reload(
                    trigger,
                    true,
                    if changes.is_empty() {
                        "no changes".to_string()
                    } else {
                        changes.join("; ")
                    },
                );
                self.runtime.store(Arc::new(rt));
                self.publish_gauges();
                self.metrics.reload(true);
                tracing::info!(
                    trigger,
                    generation,
                    changes = %if changes.is_empty() { "none".to_string() } else { changes.join("; ") },
                    "reload complete"
                );
                Ok(ReloadReport {
                    generation,
                    changes,
                })
            }
            Err(e) => {
                self.metrics.reload(false);
                self.note_reload(trigger, false, format!("{e:#}"));
                // One line per problem, each with its file, key, line and column, so every
                // problem is findable in the journal (and in JSON logs, a field each).
                if let ReloadError::Config(ConfigError::Invalid(problems)) = &e {
                    for p in problems {
                        let (line, column) = p.at.unwrap_or((0, 0));
                        tracing::error!(
                            trigger,
                            file = %p.file.display(),
                            line,
                            column,
                            key = p.key.as_str(),
                            problem = %p,
                            "reload failed; the running configuration is unchanged"
                        );
                    }
                } else {
                    tracing::error!(
                        trigger,
                        problem = %e,
                        "reload failed; the running configuration is unchanged"
                    );
                }
                Err(e)
            }
        };
        crate::ops::systemd::reloaded(result.is_ok());
        result
    }

    fn note_reload(&self, trigger: &str, applied: bool, detail: String) {
        let note = crate::console::ReloadNote {
            at: crate::console::utc(crate::console::store::now_ms()),
            applied,
            trigger: trigger.to_string(),
            detail,
        };
        if let Ok(mut last) = self.last_reload.lock() {
            *last = Some(note);
        }
    }

    /// The config file.
    pub(crate) fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// A digest of the config file and every file it names, to notice content changes (atomic
    /// renames and in-place writes alike).
    pub fn fingerprint(&self) -> Vec<u8> {
        let files = self.files.lock().map(|f| f.clone()).unwrap_or_default();
        fingerprint(&self.config_path, &files)
    }

    /// The watch interval now configured.
    pub fn watch_interval(&self) -> Option<Duration> {
        self.watch.lock().ok().and_then(|w| *w)
    }

    /// Logs CRLs that are expired or expire within 7 days.
    pub fn warn_crl_freshness(&self) {
        let rt = self.runtime.load();
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        for crl in &rt.summary.crls {
            let Some(next) = crl.next_update else {
                continue;
            };
            let left = next - now;
            if left < 0 {
                let effect = match rt.crl_expired {
                    CrlExpired::Reject => {
                        "clients of this CA are refused (crl_expired = \"reject\")"
                    }
                    CrlExpired::Warn => {
                        "clients of this CA are still accepted (crl_expired = \"warn\")"
                    }
                };
                tracing::error!(
                    crl = %crl.path.display(),
                    issuer = %crl.issuer,
                    "CRL is past its next update; {effect}; re-sign it (certgate certs crl)"
                );
            } else if left < 7 * 86_400 {
                tracing::warn!(
                    crl = %crl.path.display(),
                    issuer = %crl.issuer,
                    hours_left = left / 3600,
                    "CRL reaches its next update soon; re-sign it (certgate certs crl)"
                );
            }
        }
    }
}

fn fingerprint(config: &Path, files: &[PathBuf]) -> Vec<u8> {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for path in std::iter::once(config).chain(files.iter().map(PathBuf::as_path)) {
        ctx.update(path.as_os_str().as_encoded_bytes());
        match std::fs::read(path) {
            Ok(bytes) => {
                ctx.update(&(bytes.len() as u64).to_le_bytes());
                ctx.update(&bytes);
            }
            Err(_) => ctx.update(b"\0missing"),
        }
    }
    ctx.finish().as_ref().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(serial: &str, crl_entries: usize, digest: u8) -> Summary {
        Summary {
            server_serial: serial.into(),
            server_not_after: 0,
            client_cas: vec!["CN=ca".into()],
            crls: vec![CrlInfo {
                path: PathBuf::from("/etc/certgate/ca.crl"),
                issuer: "CN=ca".into(),
                entries: crl_entries,
                next_update: Some(1),
                digest: vec![digest],
            }],
            routes: 3,
        }
    }

    #[test]
    fn changes_name_serials_and_crl_counts() {
        let old = summary("01", 0, 1);
        assert!(summary("01", 0, 1).changes(&old).is_empty());
        let c = summary("02", 1, 2).changes(&old);
        assert_eq!(c[0], "server certificate 01 -> 02");
        assert_eq!(c[1], "CRL /etc/certgate/ca.crl replaced (0 -> 1 revoked)");
        // Same counts, new content: still reported.
        assert_eq!(summary("01", 0, 9).changes(&old).len(), 1);
    }

    #[test]
    fn fingerprint_follows_content_not_timestamps() {
        let dir = std::env::temp_dir().join(format!("certgate-fp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = dir.join("c.toml");
        let crl = dir.join("ca.crl");
        std::fs::write(&cfg, "a").unwrap();
        std::fs::write(&crl, "one").unwrap();
        let first = fingerprint(&cfg, std::slice::from_ref(&crl));
        std::fs::write(&crl, "one").unwrap();
        assert_eq!(first, fingerprint(&cfg, std::slice::from_ref(&crl)));
        std::fs::write(&crl, "two").unwrap();
        assert_ne!(first, fingerprint(&cfg, std::slice::from_ref(&crl)));
        std::fs::remove_file(&crl).unwrap();
        assert_ne!(first, fingerprint(&cfg, std::slice::from_ref(&crl)));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
