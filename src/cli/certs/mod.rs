//! `certgate certs`: the private CA's whole lifecycle — CA, server and client certificates,
//! PKCS#12 bundles for browsers, revocation and CRLs, listing and renewal — in place of the page
//! of openssl commands of the classic guide. The cryptography is in [`crate::pki`]; this module
//! is the folder layout, the state file and the command line.
//!
//! The folder (`--dir`, mode 0700) holds `ca.crt`, `ca.key` (0600, optionally encrypted),
//! `ca.crl`, `certgate-ca.json` (every certificate issued: serial, name, kind, subject, SANs,
//! validity, revocation) and, per name, `NAME.crt` (servers: leaf then CA, ready for
//! `[tls] cert`), `NAME.key` (0600), and for clients optionally `NAME.p12` and `NAME.p12.pass`.
//! An invited client (`invite`) has only `NAME.crt` here: its key leaves in the bundle that
//! waits in the enroll folder (`onboarding::invites`).
//! Every file is written through a temporary file and a rename; keys are never printed. A
//! command that changes the state holds an exclusive lock on `certgate-ca.json.lock` while it
//! does (see `folder`).

mod args;
mod folder;
mod state;

pub use args::CertsCommand;

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand, ValueEnum};
use rcgen::{DnType, DnValue, RevocationReason};
use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::{Duration, OffsetDateTime};

use crate::cli::commands::CliError;
use crate::pki::{self, Issued, KeyAlg, PkiError, Profile, Revoked, San, Spec};

use args::*;
use folder::*;
use state::*;

pub(super) fn invalid(msg: impl Into<String>) -> CliError {
    CliError::invalid(anyhow::anyhow!(msg.into()))
}

pub(super) fn write(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CliError> {
    pki::write_file(path, bytes, mode).map_err(CliError::invalid)
}

/// Names become file names: keep them to a safe alphabet.
pub(super) fn check_name(name: &str) -> Result<(), CliError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@' | '+'));
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "--name {name:?}: use letters, digits and . _ - @ + only (it becomes a file name)"
        )))
    }
}

pub(super) fn check_days(days: i64) -> Result<(), CliError> {
    if (1..=36500).contains(&days) {
        Ok(())
    } else {
        Err(invalid(format!("--days {days}: give 1 to 36500")))
    }
}

fn subject_of(fields: &SubjectFields) -> Result<Vec<(DnType, DnValue)>, CliError> {
    let mut subject = Vec::new();
    let utf8 = |s: &String| DnValue::Utf8String(s.clone());
    if let Some(c) = &fields.c {
        if c.len() != 2 || !c.chars().all(|ch| ch.is_ascii_uppercase()) {
            return Err(invalid(format!(
                "--c {c:?}: a country is two capital letters, like CN or US"
            )));
        }
        let printable = c
            .clone()
            .try_into()
            .map_err(|_| invalid(format!("--c {c:?} is not printable")))?;
        subject.push((DnType::CountryName, DnValue::PrintableString(printable)));
    }
    if let Some(st) = &fields.st {
        subject.push((DnType::StateOrProvinceName, utf8(st)));
    }
    if let Some(l) = &fields.l {
        subject.push((DnType::LocalityName, utf8(l)));
    }
    if let Some(o) = &fields.o {
        subject.push((DnType::OrganizationName, utf8(o)));
    }
    if let Some(ou) = &fields.ou {
        subject.push((DnType::OrganizationalUnitName, utf8(ou)));
    }
    subject.push((DnType::CommonName, utf8(&fields.cn)));
    if let Some(email) = &fields.email {
        let ia5 = email
            .clone()
            .try_into()
            .map_err(|_| invalid(format!("--email {email:?} is not ASCII")))?;
        subject.push((
            DnType::CustomDnType(vec![1, 2, 840, 113_549, 1, 9, 1]),
            DnValue::Ia5String(ia5),
        ));
    }
    Ok(subject)
}

fn check_email(email: &str) -> Result<(), CliError> {
    let ok = email.is_ascii()
        && email
            .split_once('@')
            .is_some_and(|(u, d)| !u.is_empty() && San::parse(d).is_ok() && !d.contains(':'));
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "--email {email:?} is not an e-mail address"
        )))
    }
}

/// Runs one `certgate certs` command.
///
/// # Errors
/// Exit 2 with a one-line message naming the thing at fault.
pub fn run(cmd: CertsCommand) -> Result<(), CliError> {
    match cmd {
        CertsCommand::InitCa(a) => init_ca(&a),
        CertsCommand::Server(a) => server(&a),
        CertsCommand::Client(a) => client(&a),
        CertsCommand::Revoke(a) => revoke(&a),
        CertsCommand::Crl(a) => crl(&a),
        CertsCommand::Renew(a) => renew(&a),
        CertsCommand::List(a) => list(&a),
        CertsCommand::Invite(a) => invite(&a),
    }
}

fn ensure_dir(dir: &Path) -> Result<(), CliError> {
    if !dir.exists() {
        let mut b = std::fs::DirBuilder::new();
        b.recursive(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt as _;
            b.mode(0o700);
        }
        b.create(dir).map_err(|e| {
            invalid(format!(
                "{}: cannot create the CA folder: {e}",
                dir.display()
            ))
        })?;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(|e| {
            invalid(format!(
                "{}: cannot restrict the CA folder to 0700: {e}",
                dir.display()
            ))
        })?;
    }
    // Probe writability before generating anything, so a read-only folder fails cleanly.
    let probe = dir.join(format!(".certgate-write-test{}", std::process::id()));
    std::fs::write(&probe, b"").map_err(|e| {
        invalid(format!(
            "{}: the CA folder is not writable: {e}",
            dir.display()
        ))
    })?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}

fn init_ca(a: &InitCa) -> Result<(), CliError> {
    let dir = &a.ca.dir;
    check_days(a.days)?;
    let no_ca_yet = |dir: &Path| {
        if a.force {
            return Ok(());
        }
        for f in ["ca.crt", "ca.key", STATE_FILE] {
            if dir.join(f).exists() {
                return Err(invalid(format!(
                    "{} already exists: {} has a CA; --force replaces it, and every certificate it issued stops being trusted",
                    dir.join(f).display(),
                    dir.display()
                )));
            }
        }
        Ok(())
    };
    no_ca_yet(dir)?;
    let password =
        a.ca.key_password_file
            .as_deref()
            .map(read_password)
            .transpose()?;
    ensure_dir(dir)?;
    let dir = &dir.canonicalize().unwrap_or_else(|_| dir.clone());
    let lock = StateLock::take(dir)?;
    // Again under the lock: another init-ca may have created the CA since the first look, and
    // writing over it would orphan every certificate issued with it meanwhile.
    no_ca_yet(dir)?;
    let mut spec = Spec::new(Profile::Ca, &a.cn, a.days);
    spec.key = a.key.into();
    let ca = pki::issue(&spec, None).map_err(CliError::invalid)?;
    let key_pem = match &password {
        Some(pw) => {
            let der = ca.key_der();
            pki::encrypt_key(der.secret_der(), pw).map_err(CliError::invalid)?
        }
        None => ca.key_pem(),
    };
    let mut folder = CaFolder {
        dir: dir.clone(),
        state: State {
            version: 1,
            crl_number: 0,
            certs: Vec::new(),
        },
        ca,
        _lock: lock,
    };
    let fields = SubjectFields {
        cn: a.cn.clone(),
        ..Default::default()
    };
    let record = folder.record("ca", Kind::Ca, &folder.ca, fields, &[], spec.key);
    folder.state.certs.push(record);
    write(&dir.join("ca.key"), key_pem.as_bytes(), 0o600)?;
    write(&dir.join("ca.crt"), folder.ca.cert_pem.as_bytes(), 0o644)?;
    let crl = folder.write_crl(DEFAULT_CRL_DAYS)?;
    folder.save_state()?;
    let d = dir.display();
    println!(
        "CA \"{}\" created in {d}/ (serial {}, valid {} days, key {}{})\n\n\
         Files: {d}/ca.crt (give it to certgate and to clients that must trust the server),\n       \
         {d}/ca.key (mode 0600; never leaves this folder), {}, {d}/{STATE_FILE}\n\n\
         In certgate.toml:\n  [tls]\n  client_ca = \"{d}/ca.crt\"\n  crl = [\"{}\"]\n\n\
         Next: certgate certs server --dir {d} --name localhost --san localhost --san 127.0.0.1\n      \
         certgate certs client --dir {d} --name alice@example.com --p12",
        a.cn,
        folder.ca.serial_hex(),
        a.days,
        key_name(spec.key),
        if password.is_some() {
            ", encrypted"
        } else {
            ""
        },
        crl.display(),
        crl.display(),
    );
    Ok(())
}

fn server(a: &ServerArgs) -> Result<(), CliError> {
    check_days(a.days)?;
    let mut folder = CaFolder::open(&a.ca)?;
    folder.ensure_new_name(&a.name)?;
    let names = if a.sans.is_empty() {
        vec![a.name.clone()]
    } else {
        a.sans.clone()
    };
    let sans = names
        .iter()
        .map(|s| {
            San::parse(s).map_err(|e| {
                if a.sans.is_empty() {
                    invalid(format!("{e}; give the server's names with --san"))
                } else {
                    invalid(format!("--san {e}"))
                }
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let fields = SubjectFields {
        cn: a.name.clone(),
        ..Default::default()
    };
    let (issued, record) = issue_leaf(
        &folder,
        &a.name,
        Kind::Server,
        fields,
        sans,
        a.days,
        a.key.into(),
    )?;
    write_leaf(&folder, &a.name, Kind::Server, &issued)?;
    folder.state.certs.push(record.clone());
    folder.save_state()?;
    let d = folder.dir.display();
    println!(
        "server certificate {} issued (serial {}, {}, valid until {})\n\n\
         In certgate.toml:\n  [tls]\n  cert = \"{d}/{}.crt\"   # leaf, then the CA\n  key = \"{d}/{}.key\"\n",
        a.name,
        record.serial,
        record.sans.join(", "),
        record.not_after,
        a.name,
        a.name
    );
    Ok(())
}

fn issue_leaf(
    folder: &CaFolder,
    name: &str,
    kind: Kind,
    fields: SubjectFields,
    mut sans: Vec<San>,
    days: i64,
    key: KeyAlg,
) -> Result<(Issued, Record), CliError> {
    let profile = if kind == Kind::Server {
        Profile::Server
    } else {
        Profile::Client
    };
    let mut spec = Spec::new(profile, &fields.cn, days);
    spec.subject = subject_of(&fields)?;
    spec.key = key;
    if let Some(email) = &fields.email
        && !sans.iter().any(|s| s == &San::Email(email.clone()))
    {
        sans.push(San::Email(email.clone()));
    }
    spec.sans = sans.clone();
    // A certificate must not outlive its CA: clients would reject it at the CA's expiry anyway.
    if let Ok((_, ca)) = x509_parser::parse_x509_certificate(&folder.ca.cert) {
        let ca_end = ca.validity().not_after.to_datetime();
        if spec.not_after > ca_end {
            spec.not_after = ca_end;
        }
    }
    let issued = pki::issue(&spec, Some(&folder.ca)).map_err(CliError::invalid)?;
    let record = folder.record(name, kind, &issued, fields, &sans, key);
    Ok((issued, record))
}

fn write_leaf(folder: &CaFolder, name: &str, kind: Kind, issued: &Issued) -> Result<(), CliError> {
    let cert = if kind == Kind::Server {
        format!("{}{}", issued.cert_pem, folder.ca.cert_pem)
    } else {
        issued.cert_pem.clone()
    };
    write(
        &folder.dir.join(format!("{name}.key")),
        issued.key_pem().as_bytes(),
        0o600,
    )?;
    write(
        &folder.dir.join(format!("{name}.crt")),
        cert.as_bytes(),
        0o644,
    )
}

fn write_p12(
    folder: &CaFolder,
    name: &str,
    issued: &Issued,
    password: &str,
    legacy: bool,
) -> Result<PathBuf, CliError> {
    let p12 = pki::pkcs12(issued, &[&folder.ca.cert], name, password, legacy)
        .map_err(CliError::invalid)?;
    let path = folder.dir.join(format!("{name}.p12"));
    write(&path, &p12, 0o600)?;
    Ok(path)
}

/// What `client` and `invite` do first: the options checked and the CA folder opened, with
/// the name still free. Nothing is written.
fn open_for_person(p: &PersonArgs) -> Result<(CaFolder, SubjectFields), CliError> {
    check_days(p.days)?;
    let fields = subject_fields(&p.name, &p.subject)?;
    let folder = CaFolder::open(&p.ca)?;
    folder.ensure_new_name(&p.name)?;
    Ok((folder, fields))
}

/// A person's client certificate, issued but not yet written.
fn issue_person(
    folder: &CaFolder,
    p: &PersonArgs,
    fields: SubjectFields,
) -> Result<(Issued, Record), CliError> {
    issue_leaf(
        folder,
        &p.name,
        Kind::Client,
        fields,
        Vec::new(),
        p.days,
        p.key.into(),
    )
}

fn client(c: &ClientArgs) -> Result<(), CliError> {
    let a = &c.person;
    let (mut folder, fields) = open_for_person(a)?;
    // Read the password before anything is written, so a bad file leaves nothing behind.
    let given_password = c.password_file.as_deref().map(read_password).transpose()?;
    let (issued, record) = issue_person(&folder, a, fields)?;
    write_leaf(&folder, &a.name, Kind::Client, &issued)?;
    let mut p12_lines = String::new();
    if c.p12 {
        let (password, generated) = match given_password {
            Some(p) => (p, false),
            None => (generate_password(), true),
        };
        if generated {
            write(
                &folder.dir.join(format!("{}.p12.pass", a.name)),
                format!("{password}\n").as_bytes(),
                0o600,
            )?;
        }
        let p12 = write_p12(&folder, &a.name, &issued, &password, c.legacy)?;
        let p = p12.display();
        let _ = write!(
            p12_lines,
            "\nPKCS#12 bundle: {p} ({} encryption)\n",
            if c.legacy {
                "legacy 3DES/SHA-1"
            } else {
                "AES-256/PBKDF2/HMAC-SHA256"
            }
        );
        if generated {
            let _ = writeln!(
                p12_lines,
                "Its password (shown once; also in {}.p12.pass, mode 0600): {password}",
                folder.dir.join(&a.name).display()
            );
        }
        let _ = write!(
            p12_lines,
            "\nImport it:\n  \
             Chrome/Edge:          Settings > Privacy and security > Security > Manage certificates > Your certificates > Import {p}\n  \
             Firefox:              Settings > Privacy & Security > Certificates > View Certificates > Your Certificates > Import\n  \
             macOS Keychain:       security import {p} -k ~/Library/Keychains/login.keychain-db   (use --legacy before macOS 14)\n  \
             Windows:              double-click {p} (use --legacy before Windows 10)\n  \
             curl:                 curl --cert-type P12 --cert {p}:PASSWORD --cacert {} https://HOST/\n",
            folder.dir.join("ca.crt").display()
        );
    }
    folder.state.certs.push(record.clone());
    folder.save_state()?;
    let d = folder.dir.display();
    println!(
        "client certificate {} issued (serial {}, valid until {})\n  subject {}\n\n\
         Files: {d}/{}.crt, {d}/{}.key (0600){}\n\
         Try it: curl --cacert {d}/ca.crt --cert {d}/{}.crt --key {d}/{}.key https://HOST/\n{}",
        a.name,
        record.serial,
        record.not_after,
        record.subject,
        a.name,
        a.name,
        if c.p12 {
            format!(", {d}/{}.p12", a.name)
        } else {
            String::new()
        },
        a.name,
        a.name,
        p12_lines,
    );
    Ok(())
}

fn subject_fields(name: &str, s: &SubjectArgs) -> Result<SubjectFields, CliError> {
    if let Some(e) = &s.email {
        check_email(e)?;
    }
    Ok(SubjectFields {
        cn: name.to_string(),
        ou: s.ou.clone(),
        o: s.o.clone(),
        email: s.email.clone(),
        c: s.c.clone(),
        st: s.st.clone(),
        l: s.l.clone(),
    })
}

/// The longest an invitation link may work: a link is a credential in someone's mailbox.
const MAX_INVITE: std::time::Duration = std::time::Duration::from_secs(30 * 24 * 3600);

fn invite(i: &InviteArgs) -> Result<(), CliError> {
    use crate::onboarding::invites::{Invitation, LINK_PREFIX, Store, Token};
    let a = &i.person;
    let (mut folder, fields) = open_for_person(a)?;
    let expires_in = match humantime::parse_duration(i.expires.trim()) {
        Ok(d) if !d.is_zero() && d <= MAX_INVITE => d,
        Ok(_) => {
            return Err(invalid(format!(
                "--expires {:?}: between 1 s and 30 days",
                i.expires
            )));
        }
        Err(e) => {
            return Err(invalid(format!(
                "--expires {:?}: {e}; write it like \"24h\" or \"7d\"",
                i.expires
            )));
        }
    };
    let url = match &i.url {
        Some(u) => {
            let u = u.trim().trim_end_matches('/');
            let ok = u.parse::<http::Uri>().is_ok_and(|p| {
                p.scheme_str() == Some("https")
                    && p.host().is_some()
                    && p.path() == "/"
                    && p.query().is_none()
            });
            if !ok {
                return Err(invalid(format!(
                    "--url {u:?}: the site's address, like https://ai.example.com or https://ai.example.com:8443"
                )));
            }
            u.to_string()
        }
        None => "https://HOST".to_string(),
    };
    let enroll_dir = std::path::absolute(&i.enroll_dir).map_err(CliError::other)?;
    if !enroll_dir.exists() {
        use std::os::unix::fs::DirBuilderExt as _;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&enroll_dir)
            .map_err(|e| {
                invalid(format!(
                    "{}: cannot create the enroll folder: {e}",
                    enroll_dir.display()
                ))
            })?;
    }
    let (issued, mut record) = issue_person(&folder, a, fields)?;
    let token = Token::generate().map_err(CliError::other)?;
    // Legacy 3DES/SHA-1 encryption: macOS Keychain and Windows import it everywhere, and the
    // password (from the token) is long enough that the old cipher is not the weak part.
    let p12 = pki::pkcs12(
        &issued,
        &[&folder.ca.cert],
        &a.name,
        &token.password(),
        true,
    )
    .map_err(CliError::invalid)?;
    let now = OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap_or(OffsetDateTime::now_utc());
    let expires = now + expires_in;
    let invitation = Invitation {
        name: a.name.clone(),
        subject: record.subject.clone(),
        serial: record.serial.clone(),
        not_after: record.not_after.clone(),
        created: now.unix_timestamp(),
        expires: expires.unix_timestamp(),
    };
    record.invite = Some(InviteRecord {
        enroll_dir: enroll_dir.clone(),
        id: token.id(),
        expires: rfc3339(expires),
    });
    // On record first (for `list`, `revoke` and the CRL), then published: a link is never live
    // for a certificate the CA state does not know. The certificate stays in the CA folder; its
    // key leaves only in the bundle.
    let crt = folder.dir.join(format!("{}.crt", a.name));
    write(&crt, issued.cert_pem.as_bytes(), 0o644)?;
    folder.state.certs.push(record.clone());
    if let Err(e) = folder.save_state() {
        let _ = std::fs::remove_file(&crt);
        return Err(e);
    }
    if let Err(e) = Store::new(&enroll_dir).put(&token, &invitation, &p12) {
        // The key was only in the bundle, so no one can ever use this certificate: it is taken
        // off the record again, and the name is free for the next attempt.
        folder.state.certs.pop();
        let undo = folder.save_state();
        let _ = std::fs::remove_file(&crt);
        let mut message = format!("{}: cannot store the invitation: {e}", enroll_dir.display());
        if let Err(u) = undo {
            let _ = write!(
                message,
                "; and the CA state still lists {} ({:#}): revoke it with `certgate certs revoke --dir {} --name {}`",
                a.name,
                u.error,
                folder.dir.display(),
                a.name
            );
        }
        return Err(invalid(message));
    }
    println!(
        "client certificate {} issued (serial {}, valid until {})\n  subject {}\n\n\
         One-time link (works until {}; send it to the person, it is shown nowhere else):\n\n  {url}{LINK_PREFIX}{}\n\n\
         It opens a page with the .p12 password and a download that works once. The daemon serves it when its\n\
         config has [enroll] dir = \"{}\" and [tls] on_failure = \"help\" (or client_auth = \"optional\").\n\
         Cancel it with `certgate certs revoke --dir {} --name {}`.",
        a.name,
        record.serial,
        record.not_after,
        record.subject,
        rfc3339(expires),
        token.as_str(),
        enroll_dir.display(),
        folder.dir.display(),
        a.name,
    );
    Ok(())
}

fn reload_hint(crl: &Path) -> String {
    format!(
        "A running certgate that names {} picks it up within its [reload] watch interval (10 s by default), \
         or at once with `systemctl reload certgate` (SIGHUP), and then refuses a revoked client even on \
         connections it already holds. Keep the CRL fresh with `certgate certs crl` from cron well before \
         its next update.",
        crl.display()
    )
}

fn revoke(a: &RevokeArgs) -> Result<(), CliError> {
    let mut folder = CaFolder::open(&a.ca)?;
    let now = rfc3339(OffsetDateTime::now_utc());
    let targets: Vec<usize> = folder
        .state
        .certs
        .iter()
        .enumerate()
        .filter(|(_, r)| r.kind != Kind::Ca)
        .filter(|(_, r)| match (&a.name, &a.serial) {
            (Some(n), _) => &r.name == n,
            (None, Some(s)) => same_serial(&r.serial, s),
            (None, None) => false,
        })
        .map(|(i, _)| i)
        .collect();
    if targets.is_empty() {
        let what = a
            .name
            .as_ref()
            .map(|n| format!("name {n:?}"))
            .or_else(|| a.serial.as_ref().map(|s| format!("serial {s}")))
            .unwrap_or_default();
        return Err(invalid(format!(
            "no certificate with {what} in {}; see `certgate certs list --dir {}`",
            folder.dir.display(),
            folder.dir.display()
        )));
    }
    let mut newly = Vec::new();
    let mut invites = Vec::new();
    for i in targets {
        let r = &mut folder.state.certs[i];
        if let Some(inv) = &r.invite {
            invites.push((r.name.clone(), inv.clone()));
        }
        if r.revoked_at.is_none() {
            r.revoked_at = Some(now.clone());
            r.reason = Some(a.reason);
            newly.push(format!("{} (serial {})", r.name, r.serial));
        }
    }
    // Revoked and in the CRL before anything else is tried: a pending invitation that cannot
    // be cancelled (its folder unreadable) must not keep the certificate valid.
    if newly.is_empty() {
        println!(
            "already revoked; {} unchanged",
            folder.dir.join("ca.crl").display()
        );
    } else {
        let crl = folder.write_crl(a.crl_days)?;
        folder.save_state()?;
        println!(
            "revoked {}; {} rewritten (CRL #{}, {} revoked).\n{}",
            newly.join(", "),
            crl.display(),
            folder.state.crl_number,
            folder.state.revoked_count(),
            reload_hint(&crl)
        );
    }
    let mut failed = Vec::new();
    for (name, inv) in invites {
        match crate::onboarding::invites::Store::new(&inv.enroll_dir).cancel(&inv.id) {
            Ok(true) => {
                println!("invitation for {name} cancelled (its link now answers 410)");
            }
            Ok(false) => {}
            Err(e) => failed.push(format!(
                "{}: cannot cancel the invitation for {name}: {e}; the certificate is revoked, but until {}.p12 there is deleted its link still hands out the revoked certificate's bundle (run this command again once the folder is readable)",
                inv.enroll_dir.display(),
                inv.id
            )),
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(CliError::other(anyhow::anyhow!(failed.join("\n"))))
    }
}

fn crl(a: &CrlArgs) -> Result<(), CliError> {
    let mut folder = CaFolder::open(&a.ca)?;
    let path = folder.write_crl(a.days)?;
    folder.save_state()?;
    let next = rfc3339(OffsetDateTime::now_utc() + Duration::days(a.days));
    println!(
        "{} re-signed (CRL #{}, {} revoked, next update {next}).\n{}",
        path.display(),
        folder.state.crl_number,
        folder.state.revoked_count(),
        reload_hint(&path)
    );
    Ok(())
}

fn renew(a: &RenewArgs) -> Result<(), CliError> {
    check_name(&a.name)?;
    let mut folder = CaFolder::open(&a.ca)?;
    let old = folder.current(&a.name).cloned().ok_or_else(|| {
        invalid(format!(
            "no certificate named {:?} in {}",
            a.name,
            folder.dir.display()
        ))
    })?;
    let days = match a.days {
        Some(d) => d,
        None => match (parse_time(&old.not_before), parse_time(&old.not_after)) {
            (Some(b), Some(e)) => (e - b).whole_days().max(1),
            _ => DEFAULT_CLIENT_DAYS,
        },
    };
    check_days(days)?;
    let sans: Vec<San> = old
        .sans
        .iter()
        .filter_map(|s| san_from_string(s))
        .filter(|s| !matches!(s, San::Email(_)))
        .collect();
    let (issued, record) = issue_leaf(
        &folder,
        &a.name,
        old.kind,
        old.fields.clone(),
        sans,
        days,
        key_alg(&old.key),
    )?;
    let pass_file = folder.dir.join(format!("{}.p12.pass", a.name));
    let p12_password = if old.kind == Kind::Client && pass_file.exists() {
        Some(read_password(&pass_file)?)
    } else {
        None
    };
    write_leaf(&folder, &a.name, old.kind, &issued)?;
    let mut note = String::new();
    if let Some(pw) = p12_password {
        let p = write_p12(&folder, &a.name, &issued, &pw, false)?;
        let _ = write!(
            note,
            "\n{} rebuilt with the password in {}",
            p.display(),
            pass_file.display()
        );
    } else if folder.dir.join(format!("{}.p12", a.name)).exists() {
        let _ = write!(
            note,
            "\nnote: {}.p12 still holds the old certificate (its password is not stored); export a new one from {}.crt and {}.key",
            a.name, a.name, a.name
        );
    }
    for r in folder.state.certs.iter_mut() {
        if r.serial == old.serial {
            r.replaced_by = Some(record.serial.clone());
        }
    }
    folder.state.certs.push(record.clone());
    folder.save_state()?;
    println!(
        "{} renewed: new serial {} (new key), valid until {}; the old certificate (serial {}) stays valid until it expires or is revoked with --serial {}{note}",
        a.name, record.serial, record.not_after, old.serial, old.serial
    );
    Ok(())
}

fn list(a: &ListArgs) -> Result<(), CliError> {
    let state = CaFolder::read_state(&a.dir)?;
    let now = OffsetDateTime::now_utc();
    if a.json {
        let rows: Vec<serde_json::Value> = state
            .certs
            .iter()
            .map(|r| {
                let mut v = serde_json::to_value(r).unwrap_or_default();
                v["status"] = serde_json::Value::String(status(r, now));
                v
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&rows).map_err(CliError::other)?
        );
        return Ok(());
    }
    let mut out = format!(
        "{:<24} {:<6} {:<32} {:<20} {:<18} {}\n",
        "NAME", "KIND", "SERIAL", "NOT AFTER", "STATUS", "SUBJECT"
    );
    for r in &state.certs {
        let kind = match r.kind {
            Kind::Ca => "ca",
            Kind::Server => "server",
            Kind::Client => "client",
        };
        let _ = writeln!(
            out,
            "{:<24} {:<6} {:<32} {:<20} {:<18} {}",
            r.name,
            kind,
            r.serial,
            r.not_after.get(..19).unwrap_or(&r.not_after),
            status(r, now),
            r.subject
        );
    }
    print!("{out}");
    Ok(())
}

impl From<PkiError> for CliError {
    fn from(e: PkiError) -> Self {
        CliError::invalid(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_compare_as_numbers() {
        assert!(same_serial("00AB", "ab"));
        assert!(same_serial("0a:bc", "ABC"));
        assert!(!same_serial("AB", "ABC"));
        assert!(!same_serial("zz", "zz"));
    }

    #[test]
    fn names_are_file_safe() {
        assert!(check_name("admin@face.analyze").is_ok());
        assert!(check_name("../etc/passwd").is_err());
        assert!(check_name(".hidden").is_err());
        assert!(check_name("a b").is_err());
    }

    #[test]
    fn generated_passwords_differ_and_are_long() {
        let a = generate_password();
        assert_eq!(a.len(), 24);
        assert_ne!(a, generate_password());
    }
}
