//! The `run` and `check` subcommands, and the mapping of failures to exit codes: 2 for an
//! invalid configuration, certificate, key or CRL; 1 for anything else (an address in use, say).

use std::fmt::Write as _;
use std::path::Path;

use time::OffsetDateTime;
use x509_parser::parse_x509_certificate;
use x509_parser::parse_x509_crl;

use crate::config::Config;
use crate::ops::logging::LogFormat;
use crate::proxy::{Server, ServerError};
use crate::tls::identity::HeaderProfile;
use crate::tls::{ClientAuth, TlsVersion};

/// A failed command with its exit code.
#[derive(Debug)]
pub struct CliError {
    /// 2 for invalid configuration, 1 otherwise.
    pub code: u8,
    /// What went wrong, with its causes.
    pub error: anyhow::Error,
}

impl CliError {
    /// Exit 2: the configuration or a file it names is invalid.
    pub fn invalid(e: impl Into<anyhow::Error>) -> CliError {
        CliError {
            code: 2,
            error: e.into(),
        }
    }

    /// Exit 1: any other failure.
    pub fn other(e: impl Into<anyhow::Error>) -> CliError {
        CliError {
            code: 1,
            error: e.into(),
        }
    }
}

impl From<ServerError> for CliError {
    fn from(e: ServerError) -> Self {
        match e {
            ServerError::Tls(_) => CliError::invalid(e),
            ServerError::Bind { .. } | ServerError::Activation(_) => CliError::other(e),
        }
    }
}

/// `certgate run`: serves until SIGTERM or SIGINT; SIGHUP reloads. `log_format` overrides
/// `[log] format`.
///
/// # Errors
/// Exit 2 for an invalid config, 1 when a listener cannot be bound.
pub fn run(config_path: &Path, log_format: Option<LogFormat>) -> Result<(), CliError> {
    let config = Config::load(config_path).map_err(CliError::invalid)?;
    crate::ops::logging::init(log_format.unwrap_or(config.log.format));
    // Before the runtime starts its worker threads: Landlock binds the calling thread and the
    // threads it creates later.
    crate::ops::sandbox::restrict(config.landlock, &config.files, config.enroll.as_slice());
    crate::ops::logging::block_on(async {
        let signals = crate::proxy::Signals::register().map_err(CliError::other)?;
        let server = Server::bind(&config).await?;
        let (shutdown, reload) = signals.split(server.shared());
        tokio::spawn(reload);
        crate::ops::systemd::ready();
        server.run(shutdown).await;
        Ok(())
    })
    .map_err(CliError::other)?
}

/// `certgate check`: validates the config and every file it names and prints the effective
/// settings with a certificate summary.
///
/// # Errors
/// Exit 2 with every problem listed.
pub fn check(config_path: &Path) -> Result<String, CliError> {
    let config = Config::load(config_path).map_err(CliError::invalid)?;
    crate::tls::server_config(&config.tls).map_err(CliError::invalid)?;
    Ok(summary(&config))
}

fn fmt_time(t: OffsetDateTime) -> String {
    let now = OffsetDateTime::now_utc();
    let days = (t - now).whole_days();
    let when = if t < now {
        "EXPIRED".to_string()
    } else {
        format!("in {days} days")
    };
    format!(
        "{} ({when})",
        crate::console::utc_seconds(t.unix_timestamp())
    )
}

/// A route's conditions, for the summary.
fn route_conditions(r: &crate::policy::routes::Route, c: &Config) -> String {
    let rules = &r.rules;
    let mut parts = Vec::new();
    if rules.methods.is_some() {
        parts.push(format!("methods {}", rules.allow_header()));
    }
    if !rules.allow_ips.is_empty() {
        parts.push("allow_ips".to_string());
    }
    if rules.client_cert_required {
        parts.push("client certificate required".to_string());
    }
    if let Some(a) = &rules.allow {
        let n = &a.names;
        let count = n.cn.len()
            + n.ou.len()
            + n.o.len()
            + n.san_dns.len()
            + n.san_email.len()
            + n.san_uri.len()
            + a.fingerprint.len();
        parts.push(format!("allow list of {count}"));
    }
    match rules.auth {
        crate::policy::routes::Auth::None => {}
        crate::policy::routes::Auth::Jwt => parts.push("auth jwt".to_string()),
        crate::policy::routes::Auth::Forward => parts.push("auth forward".to_string()),
    }
    if let Some(z) = rules.rate_limit.and_then(|i| c.rate_limits.get(i)) {
        parts.push(format!("rate_limit {}", z.name));
    }
    if let Some(mb) = rules.max_body {
        parts.push(format!(
            "max_body {}",
            bytesize::ByteSize::b(mb).display().iec()
        ));
    }
    if let Some(p) = &rules.strip_prefix {
        parts.push(format!("strip_prefix {p}"));
    }
    if let Some(g) = rules
        .upstream
        .checked_sub(1)
        .and_then(|i| c.upstreams.get(i))
    {
        parts.push(format!("upstream {}", g.name));
    }
    if let Some(q) = rules.queue.and_then(|i| c.queues.get(i)) {
        parts.push(format!("queue {}", q.name));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("  ({})", parts.join(", "))
    }
}

/// The effective configuration, as `certgate check` prints it.
pub fn summary(c: &Config) -> String {
    let mut s = String::new();
    let w = &mut s;
    let _ = writeln!(w, "configuration {} is valid\n", c.path.display());
    let _ = writeln!(w, "[listen]");
    let _ = writeln!(w, "https            = {}", c.listen.https);
    let _ = writeln!(
        w,
        "http_redirect    = {}",
        c.listen
            .http_redirect
            .map_or("(off)".to_string(), |a| a.to_string())
    );
    let _ = writeln!(
        w,
        "shutdown_timeout = {}",
        humantime::format_duration(c.listen.shutdown_timeout)
    );
    let _ = writeln!(w, "\n[tls]");
    let _ = writeln!(w, "cert              = {}", c.tls.cert_path.display());
    if let Some(Ok((_, leaf))) = c.tls.cert_chain.first().map(|d| parse_x509_certificate(d)) {
        let _ = writeln!(
            w,
            "  subject         {}",
            crate::tls::identity::format_dn(leaf.subject())
        );
        let sans: Vec<String> = leaf
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|ext| {
                ext.value
                    .general_names
                    .iter()
                    .map(|n| n.to_string())
                    .collect()
            })
            .unwrap_or_default();
        let _ = writeln!(w, "  SANs            {}", sans.join(", "));
        let _ = writeln!(
            w,
            "  not after       {}",
            fmt_time(leaf.validity().not_after.to_datetime())
        );
        let _ = writeln!(
            w,
            "  chain           {} certificate(s)",
            c.tls.cert_chain.len()
        );
    }
    let _ = writeln!(w, "key               = {}", c.tls.key_path.display());
    let _ = writeln!(w, "client_ca         = {}", c.tls.client_ca_path.display());
    let mut ca_subjects = Vec::new();
    for der in &c.tls.client_cas {
        if let Ok((_, ca)) = parse_x509_certificate(der) {
            let subject = crate::tls::identity::format_dn(ca.subject());
            let _ = writeln!(
                w,
                "  CA              {subject} (not after {})",
                fmt_time(ca.validity().not_after.to_datetime())
            );
            ca_subjects.push(subject);
        }
    }
    let mut crl_issuers = Vec::new();
    for (path, der) in c.tls.crl_paths.iter().zip(&c.tls.crls) {
        let _ = writeln!(w, "crl               = {}", path.display());
        if let Ok((_, crl)) = parse_x509_crl(der) {
            let issuer = crate::tls::identity::format_dn(crl.issuer());
            let next = crl
                .next_update()
                .map_or("(none)".to_string(), |t| fmt_time(t.to_datetime()));
            let _ = writeln!(
                w,
                "  issuer {issuer}, {} revoked, next update {next}",
                crl.iter_revoked_certificates().count()
            );
            crl_issuers.push(issuer);
        }
    }
    if c.tls.crls.is_empty() {
        let _ = writeln!(w, "crl               = (none: revocation is not checked)");
    }
    let _ = writeln!(
        w,
        "client_auth       = {}",
        match c.tls.client_auth {
            ClientAuth::Required => "required",
            ClientAuth::Optional => "optional",
        }
    );
    let _ = writeln!(
        w,
        "min_version       = {}",
        match c.tls.min_version {
            TlsVersion::Tls12 => "1.2",
            TlsVersion::Tls13 => "1.3",
        }
    );
    let _ = writeln!(
        w,
        "handshake_timeout = {}",
        humantime::format_duration(c.tls.handshake_timeout)
    );
    let _ = writeln!(
        w,
        "on_failure        = {}",
        match c.tls.on_failure {
            crate::tls::OnFailure::Close =>
                "close (a missing or invalid certificate ends the handshake)",
            crate::tls::OnFailure::Help =>
                "help (a missing or invalid certificate gets the help page; nothing is forwarded)",
        }
    );
    if let Some(contact) = &c.tls.help_contact {
        let _ = writeln!(w, "help_contact      = {contact}");
    }
    for g in std::iter::once(&c.upstream).chain(&c.upstreams) {
        write_group(w, g);
    }
    let _ = writeln!(w, "\n[headers]");
    let _ = writeln!(w, "profile     = {}", c.headers.profile.as_str());
    match c.headers.profile {
        HeaderProfile::Nginx => {
            for (k, v) in [
                ("verify     ", &c.headers.verify),
                ("subject_dn ", &c.headers.subject_dn),
                ("issuer_dn  ", &c.headers.issuer_dn),
                ("cert       ", &c.headers.cert),
                ("serial     ", &c.headers.serial),
                ("fingerprint", &c.headers.fingerprint),
            ] {
                let _ = writeln!(w, "{k} = {}", v.as_ref().map_or("(off)", |h| h.as_str()));
            }
        }
        HeaderProfile::Rfc9440 => {
            let _ = writeln!(
                w,
                "  sets Client-Cert and Client-Cert-Chain (RFC 9440), nothing without a certificate"
            );
        }
        HeaderProfile::Xfcc => {
            let _ = writeln!(
                w,
                "  sets X-Forwarded-Client-Cert (Envoy: Hash, Cert, Chain, Subject, URI, DNS)"
            );
        }
    }
    let _ = writeln!(
        w,
        "\n[[route]] (first match wins; unmatched paths are allowed)"
    );
    for (i, r) in c.routes.iter().enumerate() {
        let _ = writeln!(
            w,
            "  {i:>2}  {:<5} {}{}",
            format!("{:?}", r.action).to_lowercase(),
            r.path,
            route_conditions(r, c)
        );
    }
    let _ = writeln!(w, "\n[limits]");
    let _ = writeln!(
        w,
        "max_body = {}",
        bytesize::ByteSize::b(c.limits.max_body).display().iec()
    );
    let _ = writeln!(
        w,
        "max_connections = {}, max_connections_per_ip = {}",
        c.limits.max_connections, c.limits.max_connections_per_ip
    );
    let _ = writeln!(
        w,
        "header_read_timeout = {}, keepalive_timeout = {}, send_timeout = {}, body_timeout = {}",
        humantime::format_duration(c.limits.header_read_timeout),
        humantime::format_duration(c.limits.keepalive_timeout),
        humantime::format_duration(c.limits.send_timeout),
        humantime::format_duration(c.limits.body_timeout)
    );
    let hf = c.limits.handshake_failures_per_ip;
    let _ = writeln!(
        w,
        "handshake_failures_per_ip = {} per {}",
        hf.count,
        humantime::format_duration(hf.per)
    );
    let _ = writeln!(
        w,
        "\n[access]\nallow_ips = {}",
        if c.allow_ips.is_empty() {
            "(everyone)"
        } else {
            "(see the config file)"
        }
    );
    if let Some(sh) = &c.shared {
        let _ = writeln!(
            w,
            "\n[shared]\nredis          = {}\npassword       = {}\ntimeout        = {}\non_unavailable = {}\nkey_prefix     = {:?}",
            sh.shown,
            if sh.info.redis_settings().password().is_some() {
                "(set)"
            } else {
                "(none)"
            },
            humantime::format_duration(sh.timeout),
            sh.on_unavailable.as_str(),
            sh.key_prefix
        );
    }
    for z in &c.rate_limits {
        let scope = match (&c.shared, z.local) {
            (None, _) => "",
            (Some(_), true) => ", local to this replica",
            (Some(_), false) => ", shared through Redis",
        };
        let _ = writeln!(
            w,
            "\n[[rate_limit]] {}: {:?}, {} per {}, burst {}{scope}",
            z.name,
            z.key_by,
            z.rate.count,
            humantime::format_duration(z.rate.per),
            z.burst
        );
    }
    for q in &c.queues {
        let _ = writeln!(
            w,
            "\n[[queue]] {}: {} slot(s) per server, {} per person at once, {} waiting per person at most, max_wait {}, key \"{}\", protocol \"{}\"",
            q.name,
            q.slots,
            q.per_identity,
            q.max_waiting,
            humantime::format_duration(q.max_wait),
            q.key.as_str(),
            q.protocol.as_str()
        );
    }
    if let Some(j) = &c.jwt {
        let _ = writeln!(w, "\n[jwt]\n{}", j.describe());
    }
    if let Some(f) = &c.forward_auth {
        let _ = writeln!(
            w,
            "\n[forward_auth]\nurl = {}, timeout = {}, copy_headers = {:?}",
            f.url,
            humantime::format_duration(f.timeout),
            f.copy_headers
        );
    }
    let _ = writeln!(w, "\n[response_headers]");
    for (n, v) in &c.response_headers {
        let _ = writeln!(w, "{n}: {}", v.to_str().unwrap_or("(binary)"));
    }
    let _ = writeln!(
        w,
        "\n[admin]\nlisten = {}",
        c.admin.map_or("(off)".to_string(), |a| a.to_string())
    );
    let _ = writeln!(
        w,
        "\n[reload]\nwatch = {}",
        c.reload_watch
            .map_or("off".to_string(), |d| humantime::format_duration(d)
                .to_string())
    );
    if let Some(console) = &c.console {
        let a = &console.allow;
        let n = &a.names;
        let _ = writeln!(
            w,
            "\n[console]\npath = {} (the operator's page; also at / of [admin])\nallow = cn {:?}, ou {:?}, o {:?}, san_dns {:?}, san_email {:?}, san_uri {:?}, {} fingerprint(s)",
            console.path,
            n.cn,
            n.ou,
            n.o,
            n.san_dns,
            n.san_email,
            n.san_uri,
            a.fingerprint.len()
        );
    }
    if let Some(dir) = &c.enroll {
        let _ = writeln!(
            w,
            "\n[enroll]\ndir = {} (invitation links at {}TOKEN; the daemon may delete bundles there)",
            dir.display(),
            crate::onboarding::invites::LINK_PREFIX
        );
    }
    let _ = writeln!(w, "\n[sandbox]\nlandlock = {}", c.landlock);
    let _ = writeln!(w, "\n[log]");
    let _ = writeln!(w, "format = {:?}", c.log.format);
    let _ = writeln!(w, "access = {}", c.log.access);
    // Warnings: things that are valid but probably not meant.
    if !crl_issuers.is_empty() {
        for ca in &ca_subjects {
            if !crl_issuers.contains(ca) {
                let _ = writeln!(
                    w,
                    "\nwarning: client CA {ca} has no CRL configured; its clients are not revocation-checked"
                );
            }
        }
    }
    s
}

/// One upstream group as `check` prints it: every server with its weight and drain, the
/// balancing, the checks, the pool.
fn write_group(w: &mut String, g: &crate::upstream::Upstream) {
    if g.name == "default" {
        let _ = writeln!(w, "\n[upstream]");
    } else {
        let _ = writeln!(w, "\n[upstreams.{}]", g.name);
    }
    match g.servers.as_slice() {
        [only] => {
            let _ = writeln!(w, "url                  = {}", only.url);
        }
        servers => {
            let _ = writeln!(w, "servers              =");
            for s in servers {
                let _ = writeln!(
                    w,
                    "  {}  weight {}{}",
                    s.url,
                    s.weight,
                    if s.drain {
                        "  (draining: keeps its bound clients, gets no new ones)"
                    } else {
                        ""
                    }
                );
            }
            let _ = writeln!(w, "balance              = {}", g.balance.as_str());
            let _ = writeln!(
                w,
                "affinity_timeout     = {}",
                humantime::format_duration(g.affinity_timeout)
            );
            match &g.health {
                Some(h) => {
                    let _ = writeln!(
                        w,
                        "health               = GET {} every {}, timeout {}, rise {}, fall {}",
                        h.path,
                        humantime::format_duration(h.interval),
                        humantime::format_duration(h.timeout),
                        h.rise,
                        h.fall
                    );
                }
                None => {
                    let _ = writeln!(w, "health               = off (passive checks only)");
                }
            }
            let _ = writeln!(
                w,
                "max_fails            = {} within {} (then down for as long)",
                g.max_fails,
                humantime::format_duration(g.fail_timeout)
            );
        }
    }
    let _ = writeln!(
        w,
        "max_idle_connections = {} per server",
        g.max_idle_connections
    );
    for (k, d) in [
        ("connect_timeout     ", g.connect_timeout),
        ("response_timeout    ", g.response_timeout),
        ("idle_timeout        ", g.idle_timeout),
    ] {
        let _ = writeln!(w, "{k} = {}", humantime::format_duration(d));
    }
}
