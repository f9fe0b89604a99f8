//! The private CA: issuing CA, server and client certificates, CRLs and PKCS#12 bundles, with
//! rcgen on the same crypto provider as rustls. The demo and the test suite make their PKI here,
//! so what is tested is what operators get.
//!
//! Defaults are chosen for today's clients: ECDSA P-256 keys (browsers do not offer Ed25519
//! client certificates), random positive 128-bit serials, and key files written 0600 through a
//! temporary file and a rename so a crash never leaves half a key behind.

use std::fs;
use std::io::Write as _;
use std::net::IpAddr;
use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, DnValue, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    RevocationReason, RevokedCertParams, SanType, SerialNumber,
};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::{Duration, OffsetDateTime};

/// Something went wrong making or writing PKI material.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// rcgen refused the parameters or could not sign.
    #[error("cannot create the certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// A SAN is neither a DNS name nor an IP address.
    #[error("{0:?} is neither a DNS name nor an IP address")]
    BadSan(String),
    /// The PKCS#12 bundle could not be written.
    #[error("cannot build the PKCS#12 bundle: {0}")]
    Pkcs12(String),
    /// The CA in the folder is missing, corrupt or does not match its key.
    #[error("{0}")]
    Ca(String),
    /// A key could not be encrypted or decrypted.
    #[error("{0}")]
    KeyCrypto(String),
    /// A file could not be written.
    #[error("{path}: cannot write: {source}")]
    Write {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

/// Key algorithm of a new certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyAlg {
    /// ECDSA P-256 with SHA-256: small, fast, accepted by every browser.
    #[default]
    EcdsaP256,
    /// RSA 2048 with SHA-256, for old clients.
    Rsa2048,
    /// Ed25519: fine for curl and servers, not offered by browsers as a client certificate.
    Ed25519,
}

/// What a certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// A root or intermediate CA: keyCertSign + cRLSign.
    Ca,
    /// A TLS server: serverAuth.
    Server,
    /// A TLS client: clientAuth.
    Client,
}

/// A subject alternative name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum San {
    /// DNS name.
    Dns(String),
    /// IP address.
    Ip(IpAddr),
    /// rfc822Name.
    Email(String),
}

impl San {
    /// A DNS name or an IP address, as written on a command line.
    ///
    /// # Errors
    /// [`PkiError::BadSan`] when it is neither.
    pub fn parse(s: &str) -> Result<San, PkiError> {
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(San::Ip(ip));
        }
        let ok = !s.is_empty()
            && s.len() <= 253
            && s.split('.').enumerate().all(|(i, label)| {
                !label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label.chars().enumerate().all(|(j, c)| {
                        c.is_ascii_alphanumeric()
                            || c == '-'
                            || (c == '*' && i == 0 && j == 0 && label.len() == 1)
                    })
            });
        if ok {
            Ok(San::Dns(s.to_string()))
        } else {
            Err(PkiError::BadSan(s.to_string()))
        }
    }
}

/// Everything needed to issue one certificate.
#[derive(Debug, Clone)]
pub struct Spec {
    /// What it is for.
    pub profile: Profile,
    /// Subject attributes, most general first (C, ST, L, O, OU, CN), as in an openssl `-subj`.
    pub subject: Vec<(DnType, DnValue)>,
    /// Subject alternative names.
    pub sans: Vec<San>,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
    /// Key algorithm.
    pub key: KeyAlg,
}

impl Spec {
    /// A certificate with just a CN, valid from an hour ago (clock skew) for `days` days.
    pub fn new(profile: Profile, cn: &str, days: i64) -> Spec {
        let now = OffsetDateTime::now_utc();
        Spec {
            profile,
            subject: vec![(DnType::CommonName, DnValue::Utf8String(cn.to_string()))],
            sans: Vec::new(),
            not_before: now - Duration::hours(1),
            not_after: now + Duration::days(days),
            key: KeyAlg::EcdsaP256,
        }
    }
}

/// An issued certificate with its key, able to issue in turn when it is a CA.
pub struct Issued {
    issuer: Issuer<'static, KeyPair>,
    serial: SerialNumber,
    /// The certificate, DER.
    pub cert: CertificateDer<'static>,
    /// The certificate, PEM.
    pub cert_pem: String,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("Issued")
            .field("serial", &self.serial_hex())
            .finish_non_exhaustive()
    }
}

impl Issued {
    /// The private key, PKCS#8 PEM.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// The private key, PKCS#8 DER.
    pub fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.issuer.key().serialize_der()))
    }

    /// The serial number, upper-case hex.
    pub fn serial_hex(&self) -> String {
        self.serial
            .to_bytes()
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect()
    }

    /// The serial number.
    pub fn serial(&self) -> &SerialNumber {
        &self.serial
    }

    fn issuer(&self) -> &Issuer<'static, KeyPair> {
        &self.issuer
    }

    /// A CA read back from its certificate (PEM) and PKCS#8 key (DER), to issue more.
    ///
    /// # Errors
    /// [`PkiError::Ca`] when either does not parse or the key is not the certificate's.
    pub fn load_ca(cert_pem: &str, key_pkcs8_der: &[u8]) -> Result<Issued, PkiError> {
        use rcgen::PublicKeyData as _;
        let bad = |m: &str| PkiError::Ca(m.to_string());
        let cert = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| bad(&format!("the CA certificate is not PEM: {e}")))?;
        let (_, parsed) = x509_parser::parse_x509_certificate(&cert)
            .map_err(|e| bad(&format!("the CA certificate does not parse: {e}")))?;
        if !parsed.is_ca() {
            return Err(bad(
                "the CA certificate is not a CA (basicConstraints CA:FALSE)",
            ));
        }
        let key = KeyPair::try_from(key_pkcs8_der)
            .map_err(|e| bad(&format!("the CA key does not parse: {e}")))?;
        if key.subject_public_key_info() != parsed.tbs_certificate.subject_pki.raw {
            return Err(bad("the CA key does not belong to the CA certificate"));
        }
        let serial = SerialNumber::from_slice(parsed.raw_serial());
        let issuer = Issuer::from_ca_cert_der(&cert, key)?;
        Ok(Issued {
            issuer,
            serial,
            cert_pem: cert_pem.to_string(),
            cert: cert.into_owned(),
        })
    }
}

/// Encrypts a PKCS#8 key under a password (PBES2: scrypt and AES-256-CBC, what `openssl pkey`
/// reads), as `ENCRYPTED PRIVATE KEY` PEM.
///
/// # Errors
/// [`PkiError::KeyCrypto`].
pub fn encrypt_key(key_pkcs8_der: &[u8], password: &str) -> Result<String, PkiError> {
    use pkcs8::der::pem::LineEnding;
    let info = pkcs8::PrivateKeyInfoRef::try_from(key_pkcs8_der)
        .map_err(|e| PkiError::KeyCrypto(e.to_string()))?;
    let doc = info
        .encrypt(password.as_bytes())
        .map_err(|e| PkiError::KeyCrypto(e.to_string()))?;
    doc.to_pem("ENCRYPTED PRIVATE KEY", LineEnding::LF)
        .map(|p| p.to_string())
        .map_err(|e| PkiError::KeyCrypto(e.to_string()))
}

/// Decrypts an `ENCRYPTED PRIVATE KEY` (DER) to PKCS#8 DER.
///
/// # Errors
/// [`PkiError::KeyCrypto`] for a wrong password or a corrupt key.
pub fn decrypt_key(encrypted_der: &[u8], password: &str) -> Result<Vec<u8>, PkiError> {
    let info = pkcs8::EncryptedPrivateKeyInfoRef::try_from(encrypted_der)
        .map_err(|e| PkiError::KeyCrypto(format!("not an encrypted PKCS#8 key: {e}")))?;
    info.decrypt(password.as_bytes())
        .map(|d| d.as_bytes().to_vec())
        .map_err(|_| PkiError::KeyCrypto("wrong password, or the key is corrupt".into()))
}

/// A random positive serial of 128 bits (RFC 5280 allows up to 20 octets; CA/B requires 64 bits
/// of entropy).
fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    // aws-lc's RNG does not fail on Linux; a zero serial would still be unique enough to fail
    // loudly in verification rather than silently.
    let _ = aws_lc_rs::rand::fill(&mut bytes);
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    SerialNumber::from_slice(&bytes)
}

fn new_key(alg: KeyAlg) -> Result<KeyPair, PkiError> {
    Ok(match alg {
        KeyAlg::EcdsaP256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?,
        KeyAlg::Ed25519 => KeyPair::generate_for(&rcgen::PKCS_ED25519)?,
        KeyAlg::Rsa2048 => {
            KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)?
        }
    })
}

/// Issues a certificate; `issuer` `None` makes it self-signed (a root CA).
///
/// # Errors
/// [`PkiError`] when rcgen refuses the parameters.
pub fn issue(spec: &Spec, issuer: Option<&Issued>) -> Result<Issued, PkiError> {
    let key = new_key(spec.key)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    for (ty, value) in &spec.subject {
        dn.push(ty.clone(), value.clone());
    }
    params.distinguished_name = dn;
    params.not_before = spec.not_before;
    params.not_after = spec.not_after;
    params.serial_number = Some(random_serial());
    params.use_authority_key_identifier_extension = issuer.is_some();
    for san in &spec.sans {
        params.subject_alt_names.push(match san {
            San::Dns(d) => SanType::DnsName(d.clone().try_into()?),
            San::Ip(ip) => SanType::IpAddress(*ip),
            San::Email(e) => SanType::Rfc822Name(e.clone().try_into()?),
        });
    }
    match spec.profile {
        Profile::Ca => {
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
        }
        Profile::Server => {
            params.is_ca = IsCa::ExplicitNoCa;
            params.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ];
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        }
        Profile::Client => {
            params.is_ca = IsCa::ExplicitNoCa;
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        }
    }
    let cert = match issuer {
        Some(ca) => params.signed_by(&key, ca.issuer())?,
        None => params.self_signed(&key)?,
    };
    let serial = params.serial_number.clone().unwrap_or_else(random_serial);
    Ok(Issued {
        cert_pem: cert.pem(),
        cert: cert.der().clone(),
        serial,
        issuer: Issuer::new(params, key),
    })
}

/// One revoked certificate for a CRL.
#[derive(Debug, Clone)]
pub struct Revoked {
    /// Its serial.
    pub serial: SerialNumber,
    /// When it was revoked.
    pub at: OffsetDateTime,
    /// Why, if said.
    pub reason: Option<RevocationReason>,
}

/// Signs a CRL (PEM) listing `revoked`, valid from now for `days` days.
///
/// # Errors
/// [`PkiError::Rcgen`] when signing fails.
pub fn crl(ca: &Issued, revoked: &[Revoked], number: u64, days: i64) -> Result<String, PkiError> {
    let now = OffsetDateTime::now_utc();
    let params = CertificateRevocationListParams {
        this_update: now - Duration::minutes(5),
        next_update: now + Duration::days(days),
        crl_number: SerialNumber::from(number),
        issuing_distribution_point: None,
        revoked_certs: revoked
            .iter()
            .map(|r| RevokedCertParams {
                serial_number: r.serial.clone(),
                revocation_time: r.at,
                reason_code: r.reason,
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    };
    Ok(params.signed_by(ca.issuer())?.pem()?)
}

/// A PKCS#12 bundle of `leaf`'s key and certificate plus `chain` (intermediates, then the root).
/// Modern encryption (PBES2: AES-256-CBC, PBKDF2-HMAC-SHA256, HMAC-SHA256 MAC) unless `legacy`
/// (3DES and a SHA-1 MAC, for macOS Keychain and old Windows).
///
/// # Errors
/// [`PkiError::Pkcs12`].
pub fn pkcs12(
    leaf: &Issued,
    chain: &[&CertificateDer<'_>],
    friendly_name: &str,
    password: &str,
    legacy: bool,
) -> Result<Vec<u8>, PkiError> {
    use p12_keystore::{
        Certificate, EncryptionAlgorithm, KeyStore, KeyStoreEntry, MacAlgorithm, PrivateKey,
        PrivateKeyChain,
    };
    let err = |e: p12_keystore::error::Error| PkiError::Pkcs12(e.to_string());
    let mut certs = vec![Certificate::from_der(&leaf.cert).map_err(err)?];
    for c in chain {
        certs.push(Certificate::from_der(c).map_err(err)?);
    }
    let key = PrivateKey::from_der(&leaf.issuer.key().serialize_der()).map_err(err)?;
    let local_key_id =
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, &leaf.cert);
    let mut store = KeyStore::new();
    store.add_entry(
        friendly_name,
        KeyStoreEntry::PrivateKeyChain(PrivateKeyChain::new(local_key_id.as_ref(), key, certs)),
    );
    let mut writer = store.writer(password);
    if legacy {
        writer = writer
            .encryption_algorithm(EncryptionAlgorithm::PbeWithShaAnd3KeyTripleDesCbc)
            .mac_algorithm(MacAlgorithm::HmacSha1);
    }
    writer.write().map_err(err)
}

/// Writes a file through a temporary file and a rename, with `mode` (0600 for keys), so a reader
/// never sees half a file and a key is never readable by others, not even for a moment.
///
/// # Errors
/// [`PkiError::Write`] naming the file.
pub fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), PkiError> {
    let werr = |source| PkiError::Write {
        path: path.display().to_string(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(mode);
    }
    let _ = fs::remove_file(&tmp);
    let result = (|| {
        let mut f = opts.open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(werr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn san_parse_accepts_dns_and_ip_and_refuses_junk() {
        assert_eq!(
            San::parse("localhost").unwrap(),
            San::Dns("localhost".into())
        );
        assert!(matches!(San::parse("::1").unwrap(), San::Ip(_)));
        assert!(matches!(San::parse("*.example.com").unwrap(), San::Dns(_)));
        assert!(San::parse("not a host").is_err());
        assert!(San::parse("a..b").is_err());
        assert!(San::parse("").is_err());
    }

    #[test]
    fn serials_are_positive_and_random() {
        let a = random_serial().to_bytes();
        let b = random_serial().to_bytes();
        assert_eq!(a.len(), 16);
        assert!(a[0] < 0x80);
        assert_ne!(a, b);
    }
}
