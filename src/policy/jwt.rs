//! Bearer tokens (`Authorization: Bearer …`), checked in-process in place of nginx
//! `auth_request` + a Flask token service. The algorithm list is explicit: a token whose `alg`
//! is not listed is refused before any key is touched, and each algorithm family has its own
//! key (HMAC: the secret; RSA/ECDSA/EdDSA: the public key or JWKS), so an HS256 token "signed"
//! with the RSA public key as its secret cannot pass. jsonwebtoken runs on aws-lc-rs, the same
//! provider as rustls.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use http::{HeaderMap, HeaderName, header};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

/// Why a token was refused; the text is the `error_description` sent back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// No `Authorization: Bearer` header (a token in the query string does not count).
    #[error("missing bearer token")]
    Missing,
    /// Not a JWT.
    #[error("malformed token")]
    Malformed,
    /// `alg` not in the configured list (`none` included).
    #[error("algorithm {0} is not allowed")]
    AlgorithmNotAllowed(String),
    /// No key for the token's `kid` / algorithm.
    #[error("no key for this token")]
    NoKey,
    /// Signature does not verify.
    #[error("bad signature")]
    BadSignature,
    /// `exp` in the past (beyond the leeway).
    #[error("token expired")]
    Expired,
    /// `nbf` in the future (beyond the leeway).
    #[error("token not yet valid")]
    NotYetValid,
    /// `iss` differs.
    #[error("wrong issuer")]
    WrongIssuer,
    /// `aud` differs.
    #[error("wrong audience")]
    WrongAudience,
    /// A required claim is absent.
    #[error("missing claim {0}")]
    MissingClaim(String),
    /// The header names critical extensions (`crit`); certgate understands none, and RFC 7515
    /// §4.1.11 says such a token must be refused.
    #[error("unsupported critical header parameter")]
    UnsupportedCritical,
}

/// Key material by algorithm family.
#[derive(Default)]
struct Keys {
    hmac: Option<DecodingKey>,
    public: Vec<(Option<String>, DecodingKey)>,
}

/// The configured `[jwt]` verifier.
pub struct JwtVerifier {
    algorithms: Vec<Algorithm>,
    keys: Keys,
    issuer: Option<String>,
    audience: Option<String>,
    leeway: Duration,
    subject_claim: String,
    /// Header the subject is forwarded in.
    pub subject_header: HeaderName,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Keys are secrets: never printed.
        f.debug_struct("JwtVerifier")
            .field("algorithms", &self.algorithms)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

/// What `[jwt]` says, before keys are loaded.
#[derive(Debug, Clone)]
pub struct JwtSettings<'a> {
    /// Allowed algorithms, by name (`HS256`, `RS256`, …).
    pub algorithms: &'a [String],
    /// HMAC secret file.
    pub secret_file: Option<&'a Path>,
    /// PEM public key file.
    pub public_key_file: Option<&'a Path>,
    /// JWKS file.
    pub jwks_file: Option<&'a Path>,
    /// Expected `iss`.
    pub issuer: Option<String>,
    /// Expected `aud`.
    pub audience: Option<String>,
    /// Leeway for `exp`/`nbf`.
    pub leeway: Duration,
    /// Claim forwarded as the subject.
    pub subject_claim: String,
    /// Header it is forwarded in.
    pub subject_header: HeaderName,
}

/// The families `certgate` accepts. Listed so `none` and unknown names fail at config time.
pub const SUPPORTED: &[&str] = &[
    "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256",
    "ES384", "EdDSA",
];

fn is_hmac(a: Algorithm) -> bool {
    matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

impl JwtVerifier {
    /// Loads keys and checks the settings.
    ///
    /// # Errors
    /// `(key, message)` pairs for the config layer to report with positions.
    pub fn new(s: &JwtSettings<'_>) -> Result<JwtVerifier, Vec<(&'static str, String)>> {
        let mut problems = Vec::new();
        let mut algorithms = Vec::new();
        if s.algorithms.is_empty() {
            problems.push((
                "jwt.algorithms",
                "list at least one algorithm, e.g. [\"HS256\"]; there is no default".to_string(),
            ));
        }
        for a in s.algorithms {
            match (SUPPORTED.contains(&a.as_str()), a.parse::<Algorithm>()) {
                (true, Ok(alg)) => algorithms.push(alg),
                _ => problems.push((
                    "jwt.algorithms",
                    format!(
                        "{a:?} is not supported; use one of {}",
                        SUPPORTED.join(", ")
                    ),
                )),
            }
        }
        let mut keys = Keys::default();
        let wants_hmac = algorithms.iter().any(|a| is_hmac(*a));
        let wants_public = algorithms.iter().any(|a| !is_hmac(*a));
        match (wants_hmac, s.secret_file) {
            (true, Some(path)) => match std::fs::read(path) {
                Ok(secret) => {
                    let secret = trim_newline(&secret);
                    if secret.len() < 32 {
                        problems.push((
                            "jwt.secret_file",
                            format!(
                                "{}: the secret has {} bytes; use at least 32 (256 bits)",
                                path.display(),
                                secret.len()
                            ),
                        ));
                    }
                    keys.hmac = Some(DecodingKey::from_secret(secret));
                }
                Err(e) => problems.push((
                    "jwt.secret_file",
                    format!("{}: cannot read: {e}", path.display()),
                )),
            },
            (true, None) => problems.push((
                "jwt.secret_file",
                "HS* algorithms need secret_file".to_string(),
            )),
            (false, Some(_)) => problems.push((
                "jwt.secret_file",
                "set, but no HS* algorithm is listed".to_string(),
            )),
            (false, None) => {}
        }
        if wants_public {
            match (s.public_key_file, s.jwks_file) {
                (Some(path), None) => match std::fs::read(path) {
                    Ok(pem) => {
                        let alg = algorithms.iter().copied().find(|a| !is_hmac(*a));
                        let key = match alg {
                            Some(Algorithm::ES256 | Algorithm::ES384) => {
                                DecodingKey::from_ec_pem(&pem)
                            }
                            Some(Algorithm::EdDSA) => DecodingKey::from_ed_pem(&pem),
                            _ => DecodingKey::from_rsa_pem(&pem),
                        };
                        match key {
                            Ok(k) => keys.public.push((None, k)),
                            Err(e) => problems.push((
                                "jwt.public_key_file",
                                format!(
                                    "{}: not a usable public key for {alg:?}: {e}",
                                    path.display()
                                ),
                            )),
                        }
                    }
                    Err(e) => problems.push((
                        "jwt.public_key_file",
                        format!("{}: cannot read: {e}", path.display()),
                    )),
                },
                (None, Some(path)) => match std::fs::read(path)
                    .map_err(|e| e.to_string())
                    .and_then(|b| serde_json::from_slice::<JwkSet>(&b).map_err(|e| e.to_string()))
                {
                    Ok(set) => {
                        for jwk in &set.keys {
                            match DecodingKey::from_jwk(jwk) {
                                Ok(k) => keys.public.push((jwk.common.key_id.clone(), k)),
                                Err(e) => problems.push((
                                    "jwt.jwks_file",
                                    format!("{}: unusable key: {e}", path.display()),
                                )),
                            }
                        }
                        if set.keys.is_empty() {
                            problems
                                .push(("jwt.jwks_file", format!("{}: no keys", path.display())));
                        }
                    }
                    Err(e) => problems.push((
                        "jwt.jwks_file",
                        format!("{}: not a JWKS file: {e}", path.display()),
                    )),
                },
                (Some(_), Some(_)) => problems.push((
                    "jwt.public_key_file",
                    "set public_key_file or jwks_file, not both".to_string(),
                )),
                (None, None) => problems.push((
                    "jwt.public_key_file",
                    "RS*/PS*/ES*/EdDSA algorithms need public_key_file or jwks_file".to_string(),
                )),
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(JwtVerifier {
            algorithms,
            keys,
            issuer: s.issuer.clone(),
            audience: s.audience.clone(),
            leeway: s.leeway,
            subject_claim: s.subject_claim.clone(),
            subject_header: s.subject_header.clone(),
        })
    }

    /// One line for `certgate check`: algorithms and claims checked, never a key.
    pub fn describe(&self) -> String {
        format!(
            "algorithms {:?}, issuer {}, audience {}, leeway {}, subject claim {:?} -> {}",
            self.algorithms,
            self.issuer.as_deref().unwrap_or("(any)"),
            self.audience.as_deref().unwrap_or("(any)"),
            humantime::format_duration(self.leeway),
            self.subject_claim,
            self.subject_header
        )
    }

    /// Finds the bearer token in the request headers.
    ///
    /// # Errors
    /// [`TokenError::Missing`] or [`TokenError::Malformed`].
    pub fn token_from(headers: &HeaderMap) -> Result<&str, TokenError> {
        let mut values = headers.get_all(header::AUTHORIZATION).iter();
        let value = values.next().ok_or(TokenError::Missing)?;
        if values.next().is_some() {
            return Err(TokenError::Malformed);
        }
        let value = value.to_str().map_err(|_| TokenError::Malformed)?;
        let (scheme, token) = value.trim().split_once(' ').ok_or(TokenError::Missing)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(TokenError::Missing);
        }
        Ok(token.trim())
    }

    /// Verifies a token and returns the value of the subject claim.
    ///
    /// # Errors
    /// The [`TokenError`] that says why it was refused.
    pub fn verify(&self, token: &str) -> Result<String, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| match e.kind() {
            // An `alg` jsonwebtoken does not know (`none`, `HS1`) fails header parsing.
            ErrorKind::Json(_) if token.split('.').count() == 3 => {
                TokenError::AlgorithmNotAllowed(alg_name(token).unwrap_or_else(|| "unknown".into()))
            }
            _ => TokenError::Malformed,
        })?;
        if !self.algorithms.contains(&header.alg) {
            return Err(TokenError::AlgorithmNotAllowed(format!("{:?}", header.alg)));
        }
        // jsonwebtoken's Header has no `crit` and ignores it; a token that depends on an
        // extension certgate does not implement must not pass as if it had none.
        if header_json(token).is_some_and(|h| h.get("crit").is_some()) {
            return Err(TokenError::UnsupportedCritical);
        }
        let key = if is_hmac(header.alg) {
            self.keys.hmac.as_ref()
        } else {
            match &header.kid {
                Some(kid) => self
                    .keys
                    .public
                    .iter()
                    .find(|(k, _)| k.as_deref() == Some(kid.as_str()))
                    .or_else(|| self.keys.public.iter().find(|(k, _)| k.is_none()))
                    .map(|(_, k)| k),
                None => self.keys.public.first().map(|(_, k)| k),
            }
        }
        .ok_or(TokenError::NoKey)?;
        let mut v = Validation::new(header.alg);
        v.algorithms = vec![header.alg];
        v.leeway = self.leeway.as_secs();
        v.validate_nbf = true;
        v.required_spec_claims = HashSet::from(["exp".to_string()]);
        match &self.issuer {
            Some(iss) => v.set_issuer(&[iss]),
            None => v.iss = None,
        }
        match &self.audience {
            Some(aud) => v.set_audience(&[aud]),
            None => v.validate_aud = false,
        }
        let data =
            jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(token, key, &v)
                .map_err(|e| match e.kind() {
                    ErrorKind::InvalidSignature => TokenError::BadSignature,
                    ErrorKind::ExpiredSignature => TokenError::Expired,
                    ErrorKind::ImmatureSignature => TokenError::NotYetValid,
                    ErrorKind::InvalidIssuer => TokenError::WrongIssuer,
                    ErrorKind::InvalidAudience => TokenError::WrongAudience,
                    ErrorKind::MissingRequiredClaim(c) => TokenError::MissingClaim(c.clone()),
                    ErrorKind::InvalidAlgorithm => {
                        TokenError::AlgorithmNotAllowed(format!("{:?}", header.alg))
                    }
                    _ => TokenError::Malformed,
                })?;
        match data.claims.get(&self.subject_claim) {
            Some(serde_json::Value::String(s)) if !s.is_empty() => Ok(s.clone()),
            Some(serde_json::Value::Number(n)) => Ok(n.to_string()),
            _ => Err(TokenError::MissingClaim(self.subject_claim.clone())),
        }
    }
}

fn trim_newline(b: &[u8]) -> &[u8] {
    let mut end = b.len();
    while end > 0 && matches!(b[end - 1], b'\n' | b'\r') {
        end -= 1;
    }
    &b[..end]
}

/// The `alg` of a token whose header jsonwebtoken refused, for the error message.
fn alg_name(token: &str) -> Option<String> {
    let v = header_json(token)?;
    let alg = v.get("alg")?.as_str()?;
    // Only echo something that looks like an algorithm name.
    (alg.len() <= 16 && alg.chars().all(|c| c.is_ascii_alphanumeric())).then(|| alg.to_string())
}

/// The token's JOSE header as JSON, read again here for what jsonwebtoken's `Header` drops.
fn header_json(token: &str) -> Option<serde_json::Value> {
    use base64::Engine as _;
    let head = token.split('.').next()?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(head)
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Signs an HMAC token for `certgate token issue`.
///
/// # Errors
/// A message when the algorithm is not an HMAC one or signing fails.
pub fn issue_hmac(
    alg: &str,
    secret: &[u8],
    claims: &serde_json::Map<String, serde_json::Value>,
) -> Result<String, String> {
    let alg: Algorithm = alg
        .parse()
        .map_err(|_| format!("unknown algorithm {alg:?}"))?;
    if !is_hmac(alg) {
        return Err(format!(
            "{alg:?}: token issue signs with a shared secret (HS256, HS384, HS512)"
        ));
    }
    let header = jsonwebtoken::Header::new(alg);
    jsonwebtoken::encode(
        &header,
        claims,
        &jsonwebtoken::EncodingKey::from_secret(trim_newline(secret)),
    )
    .map_err(|e| e.to_string())
}
