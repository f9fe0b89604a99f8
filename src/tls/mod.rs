//! The rustls server configuration: server certificate, client-certificate verifier with the
//! private CA and its CRLs, protocol versions, ALPN, and the security defaults that go with
//! client authentication. Also the mapping from a failed handshake to the one-word reason that
//! the log line carries.
//!
//! One crypto provider everywhere: aws-lc-rs, the rustls default, chosen explicitly with
//! `builder_with_provider` so no other provider can sneak in through a feature flag. It is the
//! provider with the fastest P-256 and RSA signing in rustls' own benchmarks, which is what a
//! full mTLS handshake spends its time on, and it is the one jsonwebtoken and rcgen share.

pub mod identity;
mod path;

pub(crate) use path::PathBuilder;

use std::io;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::UnixTime;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, RootCertStore, ServerConfig};
use rustls::{DigitallySignedStruct, DistinguishedName, OtherError, SignatureScheme};
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

/// The process-wide crypto provider.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .clone()
}

/// Building the TLS configuration failed.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A client CA could not be added to the trust store.
    #[error("{}: client CA #{index} cannot be used as a trust anchor: {reason}", path.display())]
    ClientCa {
        /// The CA bundle.
        path: PathBuf,
        /// 1-based position in the bundle.
        index: usize,
        /// Why.
        reason: String,
    },
    /// The verifier could not be built (an unusable CRL, an empty trust store).
    #[error("client certificate verifier ({}): {reason}", paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    Verifier {
        /// The CA bundle and CRL files involved.
        paths: Vec<PathBuf>,
        /// Why.
        reason: String,
    },
    /// The server certificate and key were refused.
    #[error("{}: {reason}", path.display())]
    ServerCert {
        /// The certificate file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// Checks that the private key belongs to the leaf certificate.
///
/// # Errors
/// A sentence saying what does not match.
pub(crate) fn check_key_matches(
    chain: &[CertificateDer<'static>],
    key: &PrivateKeyDer<'static>,
) -> Result<(), String> {
    let signing = provider()
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|e| format!("the key cannot be used for signing: {e}"))?;
    match CertifiedKey::new(chain.to_vec(), signing).keys_match() {
        Ok(()) => Ok(()),
        // The public key could not be derived from this key type: nothing to compare.
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(()),
        Err(_) => Err("the private key does not match the certificate's public key".into()),
    }
}

/// Builds the client-certificate verifier for the configured CAs and CRLs.
///
/// # Errors
/// [`TlsError::ClientCa`] or [`TlsError::Verifier`].
pub(crate) fn client_verifier(tls: &Tls) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let mut roots = RootCertStore::empty();
    for (i, ca) in tls.client_cas.iter().enumerate() {
        roots.add(ca.clone()).map_err(|e| TlsError::ClientCa {
            path: tls.client_ca_path.clone(),
            index: i + 1,
            reason: e.to_string(),
        })?;
    }
    let mut builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .with_crls(tls.crls.iter().cloned())
        // A CA listed without a CRL of its own is not revocation-checked (rather than refusing
        // every client it issued); `certgate check` points such CAs out.
        .allow_unknown_revocation_status();
    if tls.crl_expired == CrlExpired::Reject {
        // A CRL past its next update may be missing revocations: refuse the clients it covers
        // rather than trust stale news (`crl_expired = "warn"` only logs).
        builder = builder.enforce_revocation_expiration();
    }
    if tls.client_auth == ClientAuth::Optional {
        builder = builder.allow_unauthenticated();
    }
    let inner = builder.build().map_err(|e| {
        let mut paths = vec![tls.client_ca_path.clone()];
        paths.extend(tls.crl_paths.iter().cloned());
        TlsError::Verifier {
            paths,
            reason: e.to_string(),
        }
    })?;
    Ok(Arc::new(ClientVerifier {
        inner,
        defer_judgement: false,
    }))
}

/// The certificate names one of our CAs as issuer but was signed by another key: a CA that
/// copies our CA's name.
#[derive(Debug, thiserror::Error)]
#[error("signed by a key other than that of the configured CA with this issuer name")]
pub struct ForgedIssuer;

/// webpki's verifier, with one refinement for the logs: webpki reports both "the chain's
/// signature does not verify" (an impostor CA with our CA's name) and "the client cannot prove
/// it holds the key" as `BadSignature`. The first is an unknown issuer to an operator, so it is
/// reported as [`ForgedIssuer`]; the second stays "bad signature".
///
/// With `defer_judgement` (`on_failure = "help"`, the handshake's verifier only) it still asks
/// for a certificate and still checks the CertificateVerify signature, so a client that cannot
/// sign with the certificate's key fails the handshake, but a missing or refused certificate
/// no longer ends it: the strict verifier ([`TlsSetup::verifier`]) judges the chain after the
/// handshake, so nothing here can mark a connection as verified.
#[derive(Debug)]
struct ClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    defer_judgement: bool,
}

impl ClientCertVerifier for ClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        !self.defer_judgement && self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if self.defer_judgement {
            // Judged after the handshake (the connection's `Conn` runs the strict verifier).
            return Ok(ClientCertVerified::assertion());
        }
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)
            .map_err(|e| match e {
                rustls::Error::InvalidCertificate(CertificateError::BadSignature) => {
                    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(
                        Arc::new(ForgedIssuer),
                    )))
                }
                e => e,
            })?;
        if !key_usage_can_sign(end_entity) {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::InvalidPurpose,
            ));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Whether a client certificate's keyUsage, when it has one, allows signing. A client proves
/// itself by signing the handshake, so a key marked for keyEncipherment alone is not one to
/// authenticate with; webpki checks only the extended key usage, OpenSSL's `ssl_client` purpose
/// (nginx) refuses it too.
fn key_usage_can_sign(der: &CertificateDer<'_>) -> bool {
    use x509_parser::prelude::FromDer as _;
    match x509_parser::certificate::X509Certificate::from_der(der) {
        Ok((_, cert)) => match cert.key_usage() {
            Ok(Some(ku)) => ku.value.digital_signature(),
            Ok(None) => true,
            Err(_) => false,
        },
        Err(_) => false,
    }
}

/// The rustls server configuration and the client-certificate verifier (kept to judge a
/// certificate after a help-mode handshake and to re-check open connections after a reload).
pub(crate) struct TlsSetup {
    /// For the acceptor.
    pub server_config: Arc<ServerConfig>,
    /// The strict verifier: the one the handshakes use in `close` mode.
    pub verifier: Arc<dyn ClientCertVerifier>,
    /// The same trust, to tell which presented certificates a verified chain used.
    pub paths: Arc<PathBuilder>,
}

/// Builds the server configuration.
///
/// # Errors
/// A [`TlsError`] naming the file at fault.
pub(crate) fn server_config(tls: &Tls) -> Result<Arc<ServerConfig>, TlsError> {
    build(tls).map(|s| s.server_config)
}

/// Builds the server configuration and keeps its verifier.
///
/// # Errors
/// A [`TlsError`] naming the file at fault.
pub(crate) fn build(tls: &Tls) -> Result<TlsSetup, TlsError> {
    let verifier = client_verifier(tls)?;
    let handshake_verifier: Arc<dyn ClientCertVerifier> = match tls.on_failure {
        OnFailure::Close => verifier.clone(),
        OnFailure::Help => Arc::new(ClientVerifier {
            inner: verifier.clone(),
            defer_judgement: true,
        }),
    };
    let versions: &[&rustls::SupportedProtocolVersion] = match tls.min_version {
        TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::Tls13 => &[&rustls::version::TLS13],
    };
    let server_cert = |reason: String| TlsError::ServerCert {
        path: tls.cert_path.clone(),
        reason,
    };
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .map_err(|e| server_cert(e.to_string()))?
        .with_client_cert_verifier(handshake_verifier)
        .with_single_cert(tls.cert_chain.clone(), tls.key.clone_key())
        .map_err(|e| server_cert(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // Resumption would skip the client-certificate and revocation checks on the resumed
    // connection, so with client authentication on there is none: no session cache for TLS 1.2,
    // no tickets for TLS 1.3 (rustls' default ticketer already never issues any).
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(TlsSetup {
        server_config: Arc::new(config),
        verifier,
        paths: PathBuilder::new(tls),
    })
}

/// Whether a failed handshake counts towards `handshake_failures_per_ip`. A client that gives
/// up before its certificate was judged — it closed or reset the connection, or sent an alert
/// (a cancelled certificate chooser, a browser's speculative preconnect, a client that does not
/// trust our server certificate) — has not failed a verification, and an office of browsers
/// behind one NAT address does that many times a minute. Everything else counts: every
/// certificate refusal, protocol errors, and (by the caller) timeouts.
pub(crate) fn counts_as_failed_verification(err: &io::Error) -> bool {
    match err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::AlertReceived(_)) => false,
        Some(_) => true,
        None => !matches!(
            err.kind(),
            io::ErrorKind::UnexpectedEof
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::BrokenPipe
        ),
    }
}

/// The one-word reason a handshake failed, for the log line and the metric label.
pub(crate) fn failure_reason(err: &io::Error) -> &'static str {
    let Some(tls) = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    else {
        return match err.kind() {
            io::ErrorKind::UnexpectedEof => "client closed the connection",
            io::ErrorKind::ConnectionReset => "connection reset",
            io::ErrorKind::InvalidData => "not TLS",
            _ => "i/o error",
        };
    };
    rustls_reason(tls)
}

/// The one-word reason for a rustls error (handshake or re-check).
pub(crate) fn rustls_reason(tls: &rustls::Error) -> &'static str {
    match tls {
        rustls::Error::NoCertificatesPresented => "no certificate",
        rustls::Error::InvalidCertificate(e) => match e {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => "expired",
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "not yet valid"
            }
            CertificateError::Revoked => "revoked",
            CertificateError::UnknownIssuer => "unknown issuer",
            CertificateError::BadSignature => "bad signature",
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                "wrong key usage"
            }
            CertificateError::BadEncoding => "bad certificate encoding",
            CertificateError::UnknownRevocationStatus => "unknown revocation status",
            CertificateError::ExpiredRevocationList
            | CertificateError::ExpiredRevocationListContext { .. } => "expired CRL",
            CertificateError::UnhandledCriticalExtension => "unhandled critical extension",
            CertificateError::Other(o) if o.0.downcast_ref::<ForgedIssuer>().is_some() => {
                "unknown issuer"
            }
            _ => "invalid certificate",
        },
        rustls::Error::AlertReceived(_) => "alert from client",
        rustls::Error::PeerIncompatible(_) => "no common protocol version or cipher suite",
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
            "protocol error"
        }
        rustls::Error::DecryptError => "decrypt error",
        rustls::Error::PeerMisbehaved(_) => "peer misbehaved",
        _ => "tls error",
    }
}

/// Whether clients must present a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// No certificate, no handshake (nginx `ssl_verify_client on`).
    #[default]
    Required,
    /// A client may come without a certificate; an invalid one is still refused.
    Optional,
}

/// What a client without a valid certificate meets (spec §13).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    /// The handshake is refused with a TLS alert.
    #[default]
    Close,
    /// The handshake completes and every request is answered by the help page.
    Help,
}

/// What a CRL past its next-update date means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CrlExpired {
    /// Refuse the clients of that CA (they might be revoked in a CRL we have not seen).
    #[default]
    Reject,
    /// Accept them and log a warning.
    Warn,
}

/// Lowest accepted TLS version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersion {
    /// TLS 1.2 and 1.3.
    Tls12,
    /// TLS 1.3 only.
    Tls13,
}

/// `[tls]`, validated, with the certificates, key and CRLs loaded.
#[derive(Debug)]
pub struct Tls {
    /// Where the server chain came from.
    pub cert_path: PathBuf,
    /// Where the key came from.
    pub key_path: PathBuf,
    /// Where the client CA bundle came from.
    pub client_ca_path: PathBuf,
    /// Where each CRL came from, in the same order as `crls`.
    pub crl_paths: Vec<PathBuf>,
    /// Server chain, leaf first.
    pub cert_chain: Vec<CertificateDer<'static>>,
    /// Server private key.
    pub key: PrivateKeyDer<'static>,
    /// Accepted client CAs.
    pub client_cas: Vec<CertificateDer<'static>>,
    /// CRLs, DER.
    pub crls: Vec<CertificateRevocationListDer<'static>>,
    /// Required or optional client certificates.
    pub client_auth: ClientAuth,
    /// Lowest TLS version.
    pub min_version: TlsVersion,
    /// Longest handshake.
    pub handshake_timeout: Duration,
    /// What an expired CRL means.
    pub crl_expired: CrlExpired,
    /// What a client without a valid certificate meets.
    pub on_failure: OnFailure,
    /// `help_contact`: one line on the help page.
    pub help_contact: Option<String>,
}
