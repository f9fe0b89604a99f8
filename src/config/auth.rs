//! `[jwt]` and `[forward_auth]`: the token verifier with its keys loaded, and the sub-request
//! that asks another service.

use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use toml::Spanned;

use super::Validator;
use super::raw::{RawForwardAuth, RawJwt};
use crate::policy::forward_auth::ForwardAuthConfig;
use crate::policy::jwt::{JwtSettings, JwtVerifier};

/// Clock skew tolerated on `exp`/`nbf`.
const DEFAULT_JWT_LEEWAY: &str = "30s";
/// nginx's `auth_request` has no own timeout; a token check that takes longer is broken.
const DEFAULT_FORWARD_AUTH_TIMEOUT: &str = "5s";

impl Validator<'_> {
    fn header_name(&mut self, key: &str, v: &Spanned<String>) -> Option<HeaderName> {
        match HeaderName::from_bytes(v.get_ref().trim().as_bytes()) {
            Ok(n) => Some(n),
            Err(_) => {
                self.problem(
                    key,
                    Some(v.span()),
                    format!("{:?} is not a valid header name", v.get_ref()),
                );
                None
            }
        }
    }

    pub(super) fn jwt(&mut self, raw: &RawJwt) -> Option<Arc<JwtVerifier>> {
        let leeway = match &raw.leeway {
            Some(v) if matches!(v.get_ref().trim(), "0" | "0s") => Duration::ZERO,
            other => self.duration("jwt.leeway", other.as_ref(), DEFAULT_JWT_LEEWAY),
        };
        let subject_header = match &raw.subject_header {
            None => HeaderName::from_static("x-auth-subject"),
            Some(h) => self.header_name("jwt.subject_header", h)?,
        };
        let secret = raw.secret_file.as_ref().map(|v| self.path(v));
        let public = raw.public_key_file.as_ref().map(|v| self.path(v));
        let jwks = raw.jwks_file.as_ref().map(|v| self.path(v));
        self.files
            .extend([&secret, &public, &jwks].into_iter().flatten().cloned());
        let settings = JwtSettings {
            algorithms: raw.algorithms.get_ref(),
            secret_file: secret.as_deref(),
            public_key_file: public.as_deref(),
            jwks_file: jwks.as_deref(),
            issuer: raw.issuer.clone(),
            audience: raw.audience.clone(),
            leeway,
            subject_claim: raw
                .subject_claim
                .clone()
                .unwrap_or_else(|| "sub".to_string()),
            subject_header,
        };
        match JwtVerifier::new(&settings) {
            Ok(v) => Some(Arc::new(v)),
            Err(problems) => {
                for (key, msg) in problems {
                    let span = match key {
                        "jwt.secret_file" => raw.secret_file.as_ref().map(Spanned::span),
                        "jwt.public_key_file" => raw.public_key_file.as_ref().map(Spanned::span),
                        "jwt.jwks_file" => raw.jwks_file.as_ref().map(Spanned::span),
                        _ => None,
                    }
                    .or_else(|| Some(raw.algorithms.span()));
                    self.problem(key, span, msg);
                }
                None
            }
        }
    }

    pub(super) fn forward_auth(&mut self, raw: &RawForwardAuth) -> Option<ForwardAuthConfig> {
        let timeout = self.duration(
            "forward_auth.timeout",
            raw.timeout.as_ref(),
            DEFAULT_FORWARD_AUTH_TIMEOUT,
        );
        let copy_headers = raw
            .copy_headers
            .iter()
            .filter_map(|h| self.header_name("forward_auth.copy_headers", h))
            .collect();
        if super::upstream::has_userinfo(raw.url.get_ref()) {
            self.problem(
                "forward_auth.url",
                Some(raw.url.span()),
                super::upstream::USERINFO,
            );
            return None;
        }
        match raw.url.get_ref().trim().parse::<http::Uri>() {
            Ok(u) if u.scheme_str() == Some("http") && u.authority().is_some() => {
                Some(ForwardAuthConfig {
                    url: u,
                    timeout,
                    copy_headers,
                })
            }
            _ => {
                self.problem(
                    "forward_auth.url",
                    Some(raw.url.span()),
                    format!(
                        "{:?}: give a plain http:// URL like \"http://127.0.0.1:5000/auth\"",
                        raw.url.get_ref()
                    ),
                );
                None
            }
        }
    }
}
