//! The command line of `certgate certs`: clap's types and their defaults.

use super::*;

/// The state file's name inside the CA folder.
pub const STATE_FILE: &str = "certgate-ca.json";
/// The lock file beside it: every command that changes the state holds an exclusive lock on it
/// from reading the state to writing it back. It is never deleted (a lock file removed while
/// another process waits on it would let a third lock a new one).
pub(super) const LOCK_FILE: &str = "certgate-ca.json.lock";
/// How long a command waits for another one to finish with the state before giving up.
pub(super) const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(60);
/// CA validity by default: 10 years (the seed's `-days 3650`).
pub(super) const DEFAULT_CA_DAYS: i64 = 3650;
/// Server validity by default: 3 years.
pub(super) const DEFAULT_SERVER_DAYS: i64 = 1095;
/// Client validity by default: 1 year (the seed's `-days 365`).
pub(super) const DEFAULT_CLIENT_DAYS: i64 = 365;
/// CRL validity by default: 30 days; re-sign with `certgate certs crl` from cron well before.
pub(super) const DEFAULT_CRL_DAYS: i64 = 30;

/// `certgate certs ...`
#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Create the CA: certificate, key (0600), an empty CRL and the state file.
    InitCa(InitCa),
    /// Issue a server certificate (serverAuth) with DNS/IP SANs.
    Server(ServerArgs),
    /// Issue a client certificate (clientAuth), optionally with a .p12 bundle for browsers.
    Client(ClientArgs),
    /// Revoke a certificate and rewrite DIR/ca.crl.
    Revoke(RevokeArgs),
    /// Re-sign DIR/ca.crl with a fresh next-update (for a cron job).
    Crl(CrlArgs),
    /// Issue a new certificate and key for an existing name, same subject and SANs.
    Renew(RenewArgs),
    /// List every certificate issued, with its status.
    List(ListArgs),
    /// Issue a client certificate and a one-time link to its .p12 (served by the daemon).
    Invite(InviteArgs),
}

/// Key algorithm on the command line.
#[derive(Debug, Clone, Copy, ValueEnum, Default)]
pub enum KeyArg {
    /// ECDSA P-256: small, fast, offered by every browser.
    #[default]
    EcdsaP256,
    /// RSA 2048, for old clients.
    #[value(name = "rsa-2048")]
    Rsa2048,
    /// Ed25519: fine for servers and curl; browsers do not offer it as a client certificate.
    Ed25519,
}

impl From<KeyArg> for KeyAlg {
    fn from(k: KeyArg) -> Self {
        match k {
            KeyArg::EcdsaP256 => KeyAlg::EcdsaP256,
            KeyArg::Rsa2048 => KeyAlg::Rsa2048,
            KeyArg::Ed25519 => KeyAlg::Ed25519,
        }
    }
}

/// Options every command that uses the CA shares.
#[derive(Debug, Args)]
pub struct CaDir {
    /// The CA folder.
    #[arg(long)]
    pub dir: PathBuf,
    /// File holding the password of an encrypted CA key.
    #[arg(long, value_name = "FILE")]
    pub key_password_file: Option<PathBuf>,
}

/// `init-ca`
#[derive(Debug, Args)]
pub struct InitCa {
    #[command(flatten)]
    pub ca: CaDir,
    /// The CA's common name.
    #[arg(long, default_value = "certgate CA")]
    pub cn: String,
    /// Validity in days.
    #[arg(long, default_value_t = DEFAULT_CA_DAYS)]
    pub days: i64,
    /// Key algorithm.
    #[arg(long, value_enum, default_value_t)]
    pub key: KeyArg,
    /// Replace an existing CA (everything it issued stops being trusted).
    #[arg(long)]
    pub force: bool,
}

/// `server`
#[derive(Debug, Args)]
pub struct ServerArgs {
    #[command(flatten)]
    pub ca: CaDir,
    /// File name and common name.
    #[arg(long)]
    pub name: String,
    /// DNS name or IP address (repeatable); defaults to NAME when it is one.
    #[arg(long = "san", value_name = "DNS-or-IP")]
    pub sans: Vec<String>,
    /// Validity in days.
    #[arg(long, default_value_t = DEFAULT_SERVER_DAYS)]
    pub days: i64,
    /// Key algorithm.
    #[arg(long, value_enum, default_value_t)]
    pub key: KeyArg,
}

/// The subject of a client certificate beyond its CN.
#[derive(Debug, Args)]
pub struct SubjectArgs {
    /// Organizational unit (OU).
    #[arg(long)]
    pub ou: Option<String>,
    /// Organization (O).
    #[arg(long)]
    pub o: Option<String>,
    /// E-mail: emailAddress in the subject and an rfc822Name SAN.
    #[arg(long)]
    pub email: Option<String>,
    /// Country (C), two letters.
    #[arg(long)]
    pub c: Option<String>,
    /// State or province (ST).
    #[arg(long)]
    pub st: Option<String>,
    /// Locality (L).
    #[arg(long)]
    pub l: Option<String>,
}

/// What `client` and `invite` both take: the CA, who the certificate is for, how long it lasts
/// and its key.
#[derive(Debug, Args)]
pub struct PersonArgs {
    #[command(flatten)]
    pub ca: CaDir,
    /// File name and common name (e.g. alice@example.com).
    #[arg(long)]
    pub name: String,
    #[command(flatten)]
    pub subject: SubjectArgs,
    /// Validity of the certificate in days.
    #[arg(long, default_value_t = DEFAULT_CLIENT_DAYS)]
    pub days: i64,
    /// Key algorithm.
    #[arg(long, value_enum, default_value_t)]
    pub key: KeyArg,
}

/// `client`
#[derive(Debug, Args)]
pub struct ClientArgs {
    #[command(flatten)]
    pub person: PersonArgs,
    /// Also write NAME.p12 (key, certificate and CA) for browsers and keychains.
    #[arg(long)]
    pub p12: bool,
    /// File holding the .p12 password; without it one is generated into NAME.p12.pass.
    #[arg(long, value_name = "FILE", requires = "p12")]
    pub password_file: Option<PathBuf>,
    /// 3DES/SHA-1 encryption for old importers (macOS Keychain before 14, Windows before 10).
    #[arg(long, requires = "p12")]
    pub legacy: bool,
}

/// `invite`
#[derive(Debug, Args)]
pub struct InviteArgs {
    #[command(flatten)]
    pub person: PersonArgs,
    /// The daemon's `[enroll] dir` (created 0700 when missing).
    #[arg(long, value_name = "DIR")]
    pub enroll_dir: PathBuf,
    /// How long the link works (at most 30 days).
    #[arg(long, default_value = "24h")]
    pub expires: String,
    /// The site's address, for the printed link.
    #[arg(long, value_name = "https://HOST")]
    pub url: Option<String>,
}

/// `revoke`
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["name", "serial"])))]
pub struct RevokeArgs {
    #[command(flatten)]
    pub ca: CaDir,
    /// Revoke every unrevoked certificate issued under this name.
    #[arg(long)]
    pub name: Option<String>,
    /// Revoke the certificate with this serial (hex).
    #[arg(long)]
    pub serial: Option<String>,
    /// Why (RFC 5280 reason code).
    #[arg(long, value_enum, default_value_t = ReasonArg::Unspecified)]
    pub reason: ReasonArg,
    /// Validity of the rewritten CRL, in days.
    #[arg(long, default_value_t = DEFAULT_CRL_DAYS)]
    pub crl_days: i64,
}

/// `crl`
#[derive(Debug, Args)]
pub struct CrlArgs {
    #[command(flatten)]
    pub ca: CaDir,
    /// Validity of the CRL, in days.
    #[arg(long, default_value_t = DEFAULT_CRL_DAYS)]
    pub days: i64,
}

/// `renew`
#[derive(Debug, Args)]
pub struct RenewArgs {
    #[command(flatten)]
    pub ca: CaDir,
    /// The name to renew.
    #[arg(long)]
    pub name: String,
    /// Validity in days (default: as long as the certificate being renewed).
    #[arg(long)]
    pub days: Option<i64>,
}

/// `list`
#[derive(Debug, Args)]
pub struct ListArgs {
    /// The CA folder.
    #[arg(long)]
    pub dir: PathBuf,
    /// JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// RFC 5280 revocation reasons.
#[derive(Debug, Clone, Copy, ValueEnum, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[value(rename_all = "camelCase")]
pub enum ReasonArg {
    /// No reason given.
    Unspecified,
    /// The private key leaked.
    KeyCompromise,
    /// The CA's key leaked.
    CaCompromise,
    /// The person changed role or left.
    AffiliationChanged,
    /// Replaced by a new certificate.
    Superseded,
    /// No longer needed.
    CessationOfOperation,
    /// Temporarily on hold.
    CertificateHold,
    /// Rights withdrawn.
    PrivilegeWithdrawn,
}

impl From<ReasonArg> for RevocationReason {
    fn from(r: ReasonArg) -> Self {
        match r {
            ReasonArg::Unspecified => RevocationReason::Unspecified,
            ReasonArg::KeyCompromise => RevocationReason::KeyCompromise,
            ReasonArg::CaCompromise => RevocationReason::CaCompromise,
            ReasonArg::AffiliationChanged => RevocationReason::AffiliationChanged,
            ReasonArg::Superseded => RevocationReason::Superseded,
            ReasonArg::CessationOfOperation => RevocationReason::CessationOfOperation,
            ReasonArg::CertificateHold => RevocationReason::CertificateHold,
            ReasonArg::PrivilegeWithdrawn => RevocationReason::PrivilegeWithdrawn,
        }
    }
}
