//! The CA folder on disk: opening it, loading and saving the CA and the state, writing
//! certificates and keys (0600, through a temporary file and a rename), passwords.
//!
//! Opening the folder takes an exclusive lock on `certgate-ca.json.lock` and holds it until the
//! command ends, so that two commands (a cron `certs crl` and a `revoke`, two `client`s) never
//! read the same state and each write back their own change over the other's.

use super::*;

/// The CA folder, opened.
pub(super) struct CaFolder {
    pub(super) dir: PathBuf,
    pub(super) state: State,
    pub(super) ca: Issued,
    /// Held from reading the state to the end of the command.
    pub(super) _lock: StateLock,
}

/// An exclusive lock on the folder's state (`flock` on [`LOCK_FILE`]), released when dropped.
pub(super) struct StateLock {
    _file: std::fs::File,
}

impl StateLock {
    /// Waits up to [`LOCK_WAIT`] for the lock on `dir`'s state.
    pub(super) fn take(dir: &Path) -> Result<StateLock, CliError> {
        use std::os::unix::fs::OpenOptionsExt as _;
        let path = dir.join(LOCK_FILE);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|e| {
                invalid(format!(
                    "{}: cannot open the CA state's lock file: {e}",
                    path.display()
                ))
            })?;
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(StateLock { _file: file }),
                Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                    // Another command is between reading and writing the state: a few
                    // milliseconds, or the time to sign a CRL.
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(CliError::other(anyhow::anyhow!(
                        "{}: another certgate certs command has held the CA state's lock for {} s; try again when it is done",
                        path.display(),
                        LOCK_WAIT.as_secs()
                    )));
                }
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(invalid(format!(
                        "{}: cannot lock the CA state: {e}",
                        path.display()
                    )));
                }
            }
        }
    }
}

impl CaFolder {
    pub(super) fn state_path(dir: &Path) -> PathBuf {
        dir.join(STATE_FILE)
    }

    pub(super) fn read_state(dir: &Path) -> Result<State, CliError> {
        let path = Self::state_path(dir);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            invalid(format!(
                "{}: cannot read the CA state ({e}); is {} a CA folder made by `certgate certs init-ca`?",
                path.display(),
                dir.display()
            ))
        })?;
        serde_json::from_str(&text)
            .map_err(|e| invalid(format!("{}: corrupt CA state: {e}", path.display())))
    }

    pub(super) fn open(args: &CaDir) -> Result<CaFolder, CliError> {
        // Absolute, so the paths printed for certgate.toml work from wherever the config lives.
        let dir = args.dir.canonicalize().unwrap_or_else(|_| args.dir.clone());
        // Only a CA folder gets a lock file: the state's absence is reported as before.
        if !Self::state_path(&dir).exists() {
            Self::read_state(&dir)?;
        }
        let lock = StateLock::take(&dir)?;
        let state = Self::read_state(&dir)?;
        let cert_path = dir.join("ca.crt");
        let key_path = dir.join("ca.key");
        let cert_pem = std::fs::read_to_string(&cert_path).map_err(|e| {
            invalid(format!(
                "{}: cannot read the CA certificate: {e}",
                cert_path.display()
            ))
        })?;
        let key_pem = std::fs::read(&key_path).map_err(|e| {
            invalid(format!(
                "{}: cannot read the CA key: {e}",
                key_path.display()
            ))
        })?;
        let parsed = pem::parse(&key_pem).map_err(|e| {
            invalid(format!(
                "{}: the CA key is not PEM: {e}",
                key_path.display()
            ))
        })?;
        let key_der = match (parsed.tag(), &args.key_password_file) {
            ("ENCRYPTED PRIVATE KEY", Some(pw)) => {
                let pw = read_password(pw)?;
                pki::decrypt_key(parsed.contents(), &pw).map_err(|e| {
                    invalid(format!(
                        "{}: cannot decrypt the CA key: {e}",
                        key_path.display()
                    ))
                })?
            }
            ("ENCRYPTED PRIVATE KEY", None) => {
                return Err(invalid(format!(
                    "{}: the CA key is encrypted; pass --key-password-file",
                    key_path.display()
                )));
            }
            ("PRIVATE KEY", _) => parsed.contents().to_vec(),
            (other, _) => {
                return Err(invalid(format!(
                    "{}: expected a PKCS#8 PRIVATE KEY, found {other}",
                    key_path.display()
                )));
            }
        };
        let ca = Issued::load_ca(&cert_pem, &key_der)
            .map_err(|e| invalid(format!("{}: {e}", dir.display())))?;
        Ok(CaFolder {
            dir,
            state,
            ca,
            _lock: lock,
        })
    }

    pub(super) fn save_state(&self) -> Result<(), CliError> {
        let json = serde_json::to_string_pretty(&self.state).map_err(CliError::other)?;
        write(&Self::state_path(&self.dir), json.as_bytes(), 0o600)
    }

    pub(super) fn current(&self, name: &str) -> Option<&Record> {
        self.state
            .certs
            .iter()
            .rev()
            .find(|r| r.name == name && r.kind != Kind::Ca && r.replaced_by.is_none())
    }

    pub(super) fn ensure_new_name(&self, name: &str) -> Result<(), CliError> {
        check_name(name)?;
        if name == "ca" || self.state.certs.iter().any(|r| r.name == name) {
            return Err(invalid(format!(
                "--name {name:?} is already used in {}; pick another name, or `certgate certs renew --name {name}`",
                self.dir.display()
            )));
        }
        for ext in ["crt", "key"] {
            let p = self.dir.join(format!("{name}.{ext}"));
            if p.exists() {
                return Err(invalid(format!(
                    "{} already exists; pick another name",
                    p.display()
                )));
            }
        }
        Ok(())
    }

    /// Writes DIR/ca.crl with every revoked certificate, numbered one higher than the last.
    pub(super) fn write_crl(&mut self, days: i64) -> Result<PathBuf, CliError> {
        check_days(days)?;
        let revoked: Vec<Revoked> = self
            .state
            .certs
            .iter()
            .filter_map(|r| {
                let at = parse_time(r.revoked_at.as_ref()?)?;
                let serial = hex_to_bytes(&r.serial)?;
                Some(Revoked {
                    serial: rcgen::SerialNumber::from_slice(&serial),
                    at,
                    reason: r.reason.map(Into::into),
                })
            })
            .collect();
        self.state.crl_number += 1;
        let crl =
            pki::crl(&self.ca, &revoked, self.state.crl_number, days).map_err(CliError::invalid)?;
        let path = self.dir.join("ca.crl");
        write(&path, crl.as_bytes(), 0o644)?;
        Ok(path)
    }

    pub(super) fn record(
        &self,
        name: &str,
        kind: Kind,
        issued: &Issued,
        fields: SubjectFields,
        sans: &[San],
        key: KeyAlg,
    ) -> Record {
        let (subject, not_before, not_after) =
            match x509_parser::parse_x509_certificate(&issued.cert) {
                Ok((_, c)) => (
                    crate::tls::identity::format_dn(c.subject()),
                    rfc3339(c.validity().not_before.to_datetime()),
                    rfc3339(c.validity().not_after.to_datetime()),
                ),
                Err(_) => (String::new(), String::new(), String::new()),
            };
        Record {
            name: name.to_string(),
            kind,
            serial: issued.serial_hex(),
            subject,
            fields,
            sans: sans.iter().map(san_string).collect(),
            key: key_name(key).to_string(),
            not_before,
            not_after,
            revoked_at: None,
            reason: None,
            replaced_by: None,
            invite: None,
        }
    }
}

pub(super) fn read_password(path: &Path) -> Result<String, CliError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        invalid(format!(
            "{}: cannot read the password file: {e}",
            path.display()
        ))
    })?;
    let pw = text.trim_end_matches(['\r', '\n']).to_string();
    if pw.is_empty() {
        return Err(invalid(format!(
            "{}: the password file is empty",
            path.display()
        )));
    }
    Ok(pw)
}

/// A password for a .p12: 24 characters from an unambiguous alphabet, ~139 bits.
pub(super) fn generate_password() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    let mut bytes = [0u8; 24];
    // aws-lc's RNG does not fail on Linux; a failure would leave zeros, caught below.
    let _ = aws_lc_rs::rand::fill(&mut bytes);
    bytes
        .iter()
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect()
}
