//! `certgate-ca.json`: every certificate the CA issued (serial, name, kind, subject, SANs,
//! validity, revocation), what `list`, `revoke` and `renew` read.

use super::*;

/// What a certificate is.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// The CA itself.
    Ca,
    /// A TLS server.
    Server,
    /// A TLS client.
    Client,
}

/// The subject as given on the command line, kept so `renew` can repeat it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SubjectFields {
    /// CN
    pub cn: String,
    /// OU
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ou: Option<String>,
    /// O
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub o: Option<String>,
    /// emailAddress (and rfc822Name SAN)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// C
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub c: Option<String>,
    /// ST
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub st: Option<String>,
    /// L
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub l: Option<String>,
}

/// One issued certificate in the state file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    /// File name.
    pub name: String,
    /// CA, server or client.
    pub kind: Kind,
    /// Upper-case hex, as in `X-SSL-Client-Serial`.
    pub serial: String,
    /// RFC 2253, as in `X-SSL-Client-DN`.
    pub subject: String,
    /// The fields it was made from.
    pub fields: SubjectFields,
    /// `DNS:…`, `IP:…`, `email:…`
    #[serde(default)]
    pub sans: Vec<String>,
    /// Key algorithm.
    pub key: String,
    /// RFC 3339.
    pub not_before: String,
    /// RFC 3339.
    pub not_after: String,
    /// RFC 3339, when revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
    /// Why, when revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<ReasonArg>,
    /// Serial of the certificate that replaced this one (`renew`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaced_by: Option<String>,
    /// The invitation that hands it out (`invite`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invite: Option<InviteRecord>,
}

/// Where an invitation waits: what `list` shows and `revoke` cancels. The token is not kept.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InviteRecord {
    /// The enroll folder.
    pub enroll_dir: PathBuf,
    /// The token's hash (the file names in the enroll folder).
    pub id: String,
    /// When the link stops working, RFC 3339.
    pub expires: String,
}

/// `certgate-ca.json`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    /// Format version.
    pub version: u32,
    /// The number of the CRL last written.
    pub crl_number: u64,
    /// Every certificate issued, oldest first.
    pub certs: Vec<Record>,
}

impl State {
    /// How many certificates the CRL lists.
    pub fn revoked_count(&self) -> usize {
        self.certs.iter().filter(|r| r.revoked_at.is_some()).count()
    }
}

pub(super) fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_else(|_| t.to_string())
}

pub(super) fn parse_time(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s, &Rfc3339).ok()
}

pub(super) fn key_name(k: KeyAlg) -> &'static str {
    match k {
        KeyAlg::EcdsaP256 => "ecdsa-p256",
        KeyAlg::Rsa2048 => "rsa-2048",
        KeyAlg::Ed25519 => "ed25519",
    }
}

pub(super) fn key_alg(name: &str) -> KeyAlg {
    match name {
        "rsa-2048" => KeyAlg::Rsa2048,
        "ed25519" => KeyAlg::Ed25519,
        _ => KeyAlg::EcdsaP256,
    }
}

pub(super) fn san_string(s: &San) -> String {
    match s {
        San::Dns(d) => format!("DNS:{d}"),
        San::Ip(ip) => format!("IP:{ip}"),
        San::Email(e) => format!("email:{e}"),
    }
}

pub(super) fn san_from_string(s: &str) -> Option<San> {
    let (kind, v) = s.split_once(':')?;
    Some(match kind {
        "DNS" => San::Dns(v.to_string()),
        "IP" => San::Ip(v.parse::<IpAddr>().ok()?),
        "email" => San::Email(v.to_string()),
        _ => return None,
    })
}

pub(super) fn hex_to_bytes(s: &str) -> Option<Vec<u8>> {
    let s = s.trim().trim_start_matches("0x").replace(':', "");
    let s = if s.len() % 2 == 1 { format!("0{s}") } else { s };
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

/// Serials compare as numbers: case, colons and leading zeros do not matter.
pub(super) fn same_serial(a: &str, b: &str) -> bool {
    let norm = |s: &str| {
        hex_to_bytes(s).map(|b| {
            let skip = b
                .iter()
                .take_while(|x| **x == 0)
                .count()
                .min(b.len().saturating_sub(1));
            b[skip..].to_vec()
        })
    };
    matches!((norm(a), norm(b)), (Some(x), Some(y)) if x == y)
}

/// The status column of `list`.
pub fn status(r: &Record, now: OffsetDateTime) -> String {
    if r.revoked_at.is_some() {
        return "revoked".into();
    }
    if let Some(inv) = &r.invite {
        use crate::onboarding::invites::{Status, Store};
        match Store::new(&inv.enroll_dir).status(&inv.id, now.unix_timestamp()) {
            Status::Pending => return "invited".into(),
            Status::Expired => return "invite expired".into(),
            Status::Used | Status::Missing => {}
        }
    }
    if r.replaced_by.is_some() {
        return "replaced".into();
    }
    match parse_time(&r.not_after) {
        Some(end) if end < now => "expired".into(),
        Some(end) if end - now < Duration::days(30) => {
            format!("expires in {} days", (end - now).whole_days())
        }
        _ => "valid".into(),
    }
}
