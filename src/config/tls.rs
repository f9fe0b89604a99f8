//! `[tls]`: the server's certificate and key, the client CAs and CRLs, each file read and
//! checked (the key matches the certificate, every client CA is a CA) before anything listens.

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use std::path::PathBuf;
use toml::Spanned;

use super::Validator;
use super::raw::RawTls;
use crate::tls::{Tls, TlsVersion};

/// nginx's `ssl_handshake_timeout` default is 60 s; 10 s is plenty for a real client and limits
/// what a slow-loris costs before it has proven anything.
pub(super) const DEFAULT_HANDSHAKE_TIMEOUT: &str = "10s";

impl Validator<'_> {
    fn certs(
        &mut self,
        key: &str,
        value: &Spanned<String>,
    ) -> Option<(PathBuf, Vec<CertificateDer<'static>>)> {
        let (path, bytes) = self.read_file(key, value)?;
        let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(&bytes).collect();
        let msg = match certs {
            Ok(c) if c.is_empty() => {
                "no PEM certificate (-----BEGIN CERTIFICATE-----) found".into()
            }
            Ok(c) => match c.iter().enumerate().find_map(|(i, der)| {
                x509_parser::parse_x509_certificate(der)
                    .err()
                    .map(|e| format!("certificate #{} is not valid X.509: {e}", i + 1))
            }) {
                None => return Some((path, c)),
                Some(m) => m,
            },
            Err(e) => format!("not a valid PEM certificate file: {e}"),
        };
        self.problem(
            key,
            Some(value.span()),
            format!("{}: {msg}", path.display()),
        );
        None
    }

    pub(super) fn tls(&mut self, raw: &RawTls) -> Option<Tls> {
        let chain = self.certs("tls.cert", &raw.cert);
        let key = self
            .read_file("tls.key", &raw.key)
            .and_then(
                |(path, bytes)| match PrivateKeyDer::from_pem_slice(&bytes) {
                    Ok(k) => Some((path, k)),
                    Err(e) => {
                        self.problem(
                            "tls.key",
                            Some(raw.key.span()),
                            format!(
                                "{}: no usable private key (PEM PKCS#8, PKCS#1 or SEC1): {e}",
                                path.display()
                            ),
                        );
                        None
                    }
                },
            );
        if let (Some((cert_path, chain)), Some((key_path, key))) = (&chain, &key)
            && let Err(e) = crate::tls::check_key_matches(chain, key)
        {
            self.problem(
                "tls.key",
                Some(raw.key.span()),
                format!(
                    "{}: {e} (certificate {})",
                    key_path.display(),
                    cert_path.display()
                ),
            );
        }
        let cas = self.certs("tls.client_ca", &raw.client_ca);
        if let Some((path, cas)) = &cas {
            for (i, der) in cas.iter().enumerate() {
                if let Ok((_, c)) = x509_parser::parse_x509_certificate(der)
                    && !c.is_ca()
                {
                    self.problem(
                            "tls.client_ca",
                            Some(raw.client_ca.span()),
                            format!(
                                "{}: certificate #{} ({}) is not a CA certificate (basicConstraints CA:TRUE)",
                                path.display(),
                                i + 1,
                                c.subject()
                            ),
                        );
                }
            }
        }
        let mut crls = Vec::new();
        let mut crl_paths = Vec::new();
        for v in &raw.crl {
            let Some((path, bytes)) = self.read_file("tls.crl", v) else {
                continue;
            };
            let parsed: Result<Vec<CertificateRevocationListDer<'static>>, _> =
                CertificateRevocationListDer::pem_slice_iter(&bytes).collect();
            let ders = match parsed {
                Ok(pems) if !pems.is_empty() => pems,
                // No PEM section at all: the file may be DER.
                Ok(_) | Err(rustls_pki_types::pem::Error::NoItemsFound) => {
                    vec![CertificateRevocationListDer::from(bytes)]
                }
                Err(e) => {
                    self.problem(
                        "tls.crl",
                        Some(v.span()),
                        format!("{}: not a valid PEM CRL: {e}", path.display()),
                    );
                    continue;
                }
            };
            for der in ders {
                if let Err(e) = x509_parser::parse_x509_crl(&der) {
                    self.problem(
                        "tls.crl",
                        Some(v.span()),
                        format!("{}: not a CRL (PEM or DER): {e}", path.display()),
                    );
                    continue;
                }
                crls.push(der);
                crl_paths.push(path.clone());
            }
        }
        let min_version = match raw.min_version.as_ref().map(|v| (v, v.get_ref().trim())) {
            None | Some((_, "1.2")) => TlsVersion::Tls12,
            Some((_, "1.3")) => TlsVersion::Tls13,
            Some((v, other)) => {
                self.problem(
                    "tls.min_version",
                    Some(v.span()),
                    format!("unsupported TLS version {other:?}; use \"1.2\" or \"1.3\""),
                );
                TlsVersion::Tls12
            }
        };
        let handshake_timeout = self.duration(
            "tls.handshake_timeout",
            raw.handshake_timeout.as_ref(),
            DEFAULT_HANDSHAKE_TIMEOUT,
        );
        let help_contact = raw.help_contact.as_ref().and_then(|c| {
            let text = c.get_ref().trim();
            if text.chars().any(char::is_control) || text.chars().count() > 500 {
                self.problem(
                    "tls.help_contact",
                    Some(c.span()),
                    "one line of at most 500 characters, no control characters",
                );
                None
            } else {
                (!text.is_empty()).then(|| text.to_string())
            }
        });
        let (cert_path, cert_chain) = chain?;
        let (key_path, key) = key?;
        let (client_ca_path, client_cas) = cas?;
        Some(Tls {
            cert_path,
            key_path,
            client_ca_path,
            crl_paths,
            cert_chain,
            key,
            client_cas,
            crls,
            client_auth: raw.client_auth,
            min_version,
            handshake_timeout,
            crl_expired: raw.crl_expired,
            on_failure: raw.on_failure,
            help_contact,
        })
    }
}
