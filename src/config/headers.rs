//! `[headers]` and `[response_headers]`: the names of the identity headers the backend receives,
//! and the security headers every response carries unless the backend set them.

use http::{HeaderName, HeaderValue};
use toml::Spanned;

use super::Validator;
use super::raw::RawHeaders;
use crate::tls::identity::HeaderNames;

/// Security headers added to every response unless the backend set them (nginx
/// `add_header ... always`); HSTS only when configured, since it outlives a mistake.
const DEFAULT_RESPONSE_HEADERS: &[(&str, &str)] = &[
    ("x-frame-options", "DENY"),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
];

impl Validator<'_> {
    pub(super) fn headers(&mut self, raw: &RawHeaders) -> HeaderNames {
        use crate::tls::identity::HeaderProfile;
        let defaults = HeaderNames::default();
        let profile = match &raw.profile {
            None => HeaderProfile::Nginx,
            Some(p) => match p.get_ref().as_str() {
                "nginx" => HeaderProfile::Nginx,
                "rfc9440" => HeaderProfile::Rfc9440,
                "xfcc" => HeaderProfile::Xfcc,
                other => {
                    self.problem(
                        "headers.profile",
                        Some(p.span()),
                        format!("{other:?}: use \"nginx\", \"rfc9440\" or \"xfcc\""),
                    );
                    HeaderProfile::Nginx
                }
            },
        };
        if profile != HeaderProfile::Nginx {
            // The names belong to the nginx profile; setting one beside another profile would
            // look as if it did something.
            for (key, v) in [
                ("verify", &raw.verify),
                ("subject_dn", &raw.subject_dn),
                ("issuer_dn", &raw.issuer_dn),
                ("cert", &raw.cert),
                ("serial", &raw.serial),
                ("fingerprint", &raw.fingerprint),
            ] {
                if let Some(v) = v {
                    self.problem(
                        &format!("headers.{key}"),
                        Some(v.span()),
                        format!(
                            "header names apply to profile = \"nginx\"; profile {:?} sets its own headers",
                            profile.as_str()
                        ),
                    );
                }
            }
        }
        let mut one = |key: &str, v: &Option<Spanned<String>>, default: Option<HeaderName>| {
            let Some(v) = v else { return default };
            let name = v.get_ref().trim();
            if name.is_empty() {
                return None;
            }
            match HeaderName::from_bytes(name.as_bytes()) {
                Ok(h) => Some(h),
                Err(_) => {
                    self.problem(
                        key,
                        Some(v.span()),
                        format!("{name:?} is not a valid header name"),
                    );
                    None
                }
            }
        };
        HeaderNames {
            profile,
            verify: one("headers.verify", &raw.verify, defaults.verify),
            subject_dn: one("headers.subject_dn", &raw.subject_dn, defaults.subject_dn),
            issuer_dn: one("headers.issuer_dn", &raw.issuer_dn, defaults.issuer_dn),
            cert: one("headers.cert", &raw.cert, defaults.cert),
            serial: one("headers.serial", &raw.serial, defaults.serial),
            fingerprint: one(
                "headers.fingerprint",
                &raw.fingerprint,
                defaults.fingerprint,
            ),
        }
    }

    pub(super) fn response_headers(
        &mut self,
        raw: Option<&std::collections::BTreeMap<String, Spanned<String>>>,
    ) -> Vec<(HeaderName, HeaderValue)> {
        let mut out: Vec<(HeaderName, HeaderValue)> = DEFAULT_RESPONSE_HEADERS
            .iter()
            .map(|(n, v)| (HeaderName::from_static(n), HeaderValue::from_static(v)))
            .collect();
        for (name, value) in raw.into_iter().flatten() {
            let key = format!("response_headers.{name:?}");
            let Ok(hn) = HeaderName::from_bytes(name.trim().as_bytes()) else {
                self.problem(&key, Some(value.span()), "not a valid header name");
                continue;
            };
            out.retain(|(n, _)| *n != hn);
            if value.get_ref().is_empty() {
                // "" turns a default off.
                continue;
            }
            match HeaderValue::from_str(value.get_ref()) {
                Ok(v) => out.push((hn, v)),
                Err(_) => self.problem(&key, Some(value.span()), "not a valid header value"),
            }
        }
        out
    }
}
