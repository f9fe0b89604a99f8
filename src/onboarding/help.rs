//! Why a connection's certificate was not accepted, in words a person can act on, and what the
//! certificate said about itself.

use x509_parser::prelude::FromDer as _;

/// What the client presented, read from its (unverified) certificate: shown to the person so
/// they can tell which certificate their browser picked.
#[derive(Debug, Clone)]
pub struct Presented {
    /// Subject DN, RFC 2253.
    pub subject: String,
    /// Issuer DN, RFC 2253.
    pub issuer: String,
    /// Start of validity, `YYYY-MM-DD HH:MM UTC`.
    pub not_before: String,
    /// End of validity, `YYYY-MM-DD HH:MM UTC`.
    pub not_after: String,
    /// Serial, upper-case hex.
    pub serial: String,
    /// SHA-256 of the DER, upper-case hex pairs joined by colons (as browsers show it).
    pub fingerprint: String,
}

impl Presented {
    /// Reads a DER certificate; `None` when it does not parse.
    pub fn from_der(der: &[u8]) -> Option<Presented> {
        let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der).ok()?;
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
        let validity = cert.validity();
        Some(Presented {
            subject: crate::tls::identity::format_dn(cert.subject()),
            issuer: crate::tls::identity::format_dn(cert.issuer()),
            not_before: date(validity.not_before.timestamp()),
            not_after: date(validity.not_after.timestamp()),
            serial: cert
                .raw_serial()
                .iter()
                .map(|b| format!("{b:02X}"))
                .collect(),
            fingerprint: digest
                .as_ref()
                .iter()
                .map(|b| format!("{b:02X}"))
                .collect::<Vec<_>>()
                .join(":"),
        })
    }
}

fn date(unix: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp(unix) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02} UTC",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute()
        ),
        Err(_) => unix.to_string(),
    }
}

/// A connection whose client certificate was missing or refused (`on_failure = "help"`).
#[derive(Debug, Clone)]
pub struct Problem {
    /// The handshake log's one-word reason (`no certificate`, `expired`, `revoked`, ...).
    pub reason: &'static str,
    /// The certificate, when one was presented and parses.
    pub presented: Option<Presented>,
}

impl Problem {
    /// The §6 error code.
    pub fn code(&self) -> &'static str {
        if self.reason == "no certificate" {
            "client_certificate_required"
        } else {
            "client_certificate_invalid"
        }
    }

    /// The page's title.
    pub fn headline(&self) -> &'static str {
        match self.reason {
            "no certificate" => "This site needs a client certificate",
            "expired" => "Your certificate has expired",
            "not yet valid" => "Your certificate is not valid yet",
            "revoked" => "Your certificate has been revoked",
            "unknown issuer" => "Your certificate is not from this site's authority",
            _ => "Your certificate was not accepted",
        }
    }

    /// The reason in one sentence, with the date where it matters.
    pub fn sentence(&self) -> String {
        let until = self.presented.as_ref().map(|p| p.not_after.as_str());
        let from = self.presented.as_ref().map(|p| p.not_before.as_str());
        match self.reason {
            "no certificate" => {
                "Your browser did not present a client certificate, so the site cannot tell who you are.".into()
            }
            "expired" => match until {
                Some(d) => format!("Your certificate expired on {d}."),
                None => "Your certificate has expired.".into(),
            },
            "not yet valid" => match from {
                Some(d) => format!("Your certificate is valid only from {d}."),
                None => "Your certificate is not valid yet.".into(),
            },
            "revoked" => "Your certificate has been revoked and can no longer be used here.".into(),
            "unknown issuer" => {
                "Your certificate was issued by a certificate authority this site does not trust.".into()
            }
            "wrong key usage" => {
                "Your certificate is not made for signing in (its key usage does not allow it).".into()
            }
            "expired CRL" => {
                "The site cannot check certificates for revocation right now (its revocation list is out of date).".into()
            }
            other => format!("Your certificate was not accepted ({other})."),
        }
    }

    /// What to do about it.
    pub fn advice(&self) -> &'static str {
        match self.reason {
            "no certificate" => {
                "Browsers offer only certificates that are valid today and come from this site's authority: if yours has expired, ask for a new one. If it is valid, your browser may have remembered an earlier choice: see \u{201c}Make the browser ask again\u{201d} below. If you have none, ask for one."
            }
            "expired" | "revoked" => {
                "Ask for a new certificate, import it, and remove the old one from your browser."
            }
            "not yet valid" => {
                "Check your device's date and time; if they are right, try again later."
            }
            "unknown issuer" => {
                "Your browser picked a certificate meant for another site: make it ask again and choose the one for this site."
            }
            "expired CRL" => "This is not your fault: tell the site's operator.",
            _ => "Ask for a new certificate.",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_reads_as_a_sentence() {
        for reason in [
            "no certificate",
            "expired",
            "not yet valid",
            "revoked",
            "unknown issuer",
            "wrong key usage",
            "expired CRL",
            "bad signature",
        ] {
            let p = Problem {
                reason,
                presented: None,
            };
            assert!(p.sentence().ends_with('.'), "{reason}");
            assert!(!p.headline().is_empty());
        }
        assert_eq!(
            Problem {
                reason: "no certificate",
                presented: None
            }
            .code(),
            "client_certificate_required"
        );
    }

    #[test]
    fn dates_read_in_utc() {
        assert_eq!(date(0), "1970-01-01 00:00 UTC");
    }
}
