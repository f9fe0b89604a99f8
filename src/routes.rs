//! Path normalization and path rules.
//!
//! The request path is normalized exactly once, before any rule: percent-escapes decoded,
//! repeated slashes merged, `.` and `..` resolved. Rules match the normalized path, and the
//! normalized path (re-encoded where it must be) is what the backend receives, so what is checked
//! is what is forwarded. Anything ambiguous — an invalid escape, an escape that decodes to a
//! separator or a control character, a backslash, `..` above the root — is refused rather than
//! guessed at, because a backend might guess differently.

use std::fmt::Write as _;

use http::Method;
use serde::Deserialize;

use crate::access::IpList;
use crate::identity::{ClientIdentity, IdentityNames};

/// What a matching route does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// 403.
    Deny,
    /// Forward.
    Allow,
}

/// Why a request path was refused (400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// Not origin-form (`*`, or no leading slash).
    #[error("the request path must start with '/'")]
    NotOrigin,
    /// `%` not followed by two hex digits.
    #[error("the path has an invalid percent-escape")]
    InvalidEscape,
    /// `%2F` or `%5C`: a separator hidden from the router.
    #[error("the path has an encoded '/' or '\\', which is ambiguous")]
    EncodedSeparator,
    /// A raw backslash, which some backends treat as a separator.
    #[error("the path contains a backslash, which is ambiguous")]
    Backslash,
    /// NUL or another control character, raw or encoded.
    #[error("the path contains a control character")]
    ControlChar,
    /// More `..` than there are segments.
    #[error("the path climbs above the root with '..'")]
    AboveRoot,
}

/// A normalized request path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalizedPath {
    /// Decoded bytes, segments joined by `/`; what rules match against.
    decoded: Vec<u8>,
    /// The same path percent-encoded where it must be; what the backend receives.
    encoded: String,
}

impl NormalizedPath {
    /// The path as forwarded to the backend.
    pub fn as_str(&self) -> &str {
        &self.encoded
    }

    /// The decoded path that rules are matched against.
    pub fn decoded(&self) -> &[u8] {
        &self.decoded
    }
}

/// Normalizes an origin-form request path (without the query).
///
/// # Errors
/// A [`PathError`] for every ambiguous form; the caller answers 400.
pub fn normalize(raw: &str) -> Result<NormalizedPath, PathError> {
    if is_plain(raw) {
        // Nothing to decode, merge or resolve: the common case, without per-segment work.
        return Ok(NormalizedPath {
            decoded: raw.as_bytes().to_vec(),
            encoded: raw.to_string(),
        });
    }
    let rest = raw.strip_prefix('/').ok_or(PathError::NotOrigin)?;
    let mut segments: Vec<Vec<u8>> = Vec::new();
    // Whether the result ends in a slash: after an empty, `.` or `..` segment, as RFC 3986's
    // remove_dot_segments leaves `/a/b/..` as `/a/`.
    let mut dir = true;
    for seg in rest.split('/') {
        let seg = decode_segment(seg)?;
        match seg.as_slice() {
            b"" | b"." => dir = true,
            b".." => {
                segments.pop().ok_or(PathError::AboveRoot)?;
                dir = true;
            }
            _ => {
                segments.push(seg);
                dir = false;
            }
        }
    }
    let mut decoded = Vec::with_capacity(raw.len());
    let mut encoded = String::with_capacity(raw.len());
    for seg in &segments {
        decoded.push(b'/');
        decoded.extend_from_slice(seg);
        encoded.push('/');
        encode_segment(seg, &mut encoded);
    }
    if dir {
        decoded.push(b'/');
        encoded.push('/');
    }
    Ok(NormalizedPath { decoded, encoded })
}

/// A path the slow path would return unchanged: only characters that need no escape, no `//`,
/// and no segment starting with `.` (conservatively: `/.well-known` takes the slow path too).
fn is_plain(raw: &str) -> bool {
    let b = raw.as_bytes();
    if b.first() != Some(&b'/') {
        return false;
    }
    let mut prev = b'/';
    for &c in &b[1..] {
        if c == b'/' {
            if prev == b'/' {
                return false;
            }
        } else if !keep(c) || (c == b'.' && prev == b'/') {
            return false;
        }
        prev = c;
    }
    true
}

fn decode_segment(seg: &str) -> Result<Vec<u8>, PathError> {
    let bytes = seg.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let decoded = if b == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or(PathError::InvalidEscape)?;
            let v = (hex_val(hex[0]).ok_or(PathError::InvalidEscape)? << 4)
                | hex_val(hex[1]).ok_or(PathError::InvalidEscape)?;
            i += 3;
            if v == b'/' || v == b'\\' {
                return Err(PathError::EncodedSeparator);
            }
            v
        } else {
            i += 1;
            if b == b'\\' {
                return Err(PathError::Backslash);
            }
            b
        };
        if decoded < 0x20 || decoded == 0x7f {
            return Err(PathError::ControlChar);
        }
        out.push(decoded);
    }
    Ok(out)
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// RFC 3986 `pchar`: unreserved, sub-delims, ':' and '@' stay; everything else is escaped, so a
/// decoded `?`, `#` or `%` cannot change the meaning of what the backend receives.
fn keep(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'@'
        )
}

fn encode_segment(seg: &[u8], out: &mut String) {
    for &b in seg {
        if keep(b) {
            out.push(b as char);
        } else {
            // Writing to a String cannot fail.
            let _ = write!(out, "%{b:02X}");
        }
    }
}

/// A route's path could not be used.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// The configured path is not a valid absolute path.
    #[error("{path:?} is not a usable route path: {reason}")]
    Invalid {
        /// As configured.
        path: String,
        /// Why.
        reason: PathError,
    },
}

/// How a route authenticates requests beyond the client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Auth {
    /// Nothing more.
    #[default]
    None,
    /// A bearer token checked against `[jwt]`.
    Jwt,
    /// Ask the `[forward_auth]` service.
    Forward,
}

/// Certificate identities a route admits: the same names a certificate carries, plus
/// fingerprints. Any listed value admits (OR), exact match (DNS names ignoring ASCII case).
#[derive(Debug, Clone, Default)]
pub struct IdentityAllow {
    /// Admitted CN, OU, O and SAN values.
    pub names: IdentityNames,
    /// SHA-256 fingerprints, lower-case hex without colons.
    pub fingerprint: Vec<String>,
}

impl IdentityAllow {
    /// Whether the identity has any listed value.
    pub fn admits(&self, id: &ClientIdentity) -> bool {
        let (a, n) = (&self.names, &id.names);
        let any = |list: &[String], vals: &[String]| list.iter().any(|l| vals.contains(l));
        any(&a.cn, &n.cn)
            || any(&a.ou, &n.ou)
            || any(&a.o, &n.o)
            || a.san_dns
                .iter()
                .any(|l| n.san_dns.iter().any(|v| v.eq_ignore_ascii_case(l)))
            || any(&a.san_email, &n.san_email)
            || any(&a.san_uri, &n.san_uri)
            || self.fingerprint.contains(&id.fingerprint)
    }
}

/// What a route demands of a request besides its path (spec §8), in the order it is checked.
#[derive(Debug, Clone, Default)]
pub struct RouteRules {
    /// Allowed methods (HEAD comes with GET); `None` allows all.
    pub methods: Option<Vec<Method>>,
    /// Client IPs allowed on this route; empty allows all.
    pub allow_ips: IpList,
    /// A verified client certificate is required (meaningful with `client_auth = "optional"`).
    pub client_cert_required: bool,
    /// Certificate identities admitted; `None` admits any verified client.
    pub allow: Option<IdentityAllow>,
    /// Token or forward auth.
    pub auth: Auth,
    /// Index of the `[[rate_limit]]` zone.
    pub rate_limit: Option<usize>,
    /// Body limit for this route, overriding `[limits] max_body`.
    pub max_body: Option<u64>,
    /// Normalized prefix removed before forwarding.
    pub strip_prefix: Option<String>,
}

impl RouteRules {
    /// The `Allow` header value for a 405.
    pub fn allow_header(&self) -> String {
        let Some(methods) = &self.methods else {
            return String::new();
        };
        let mut names: Vec<&str> = methods.iter().map(Method::as_str).collect();
        if methods.contains(&Method::GET) && !methods.contains(&Method::HEAD) {
            names.push("HEAD");
        }
        names.join(", ")
    }

    /// Whether `m` is allowed.
    pub fn allows_method(&self, m: &Method) -> bool {
        match &self.methods {
            None => true,
            Some(list) => list.contains(m) || (m == Method::HEAD && list.contains(&Method::GET)),
        }
    }
}

/// One `[[route]]`, compiled.
#[derive(Debug, Clone)]
pub struct Route {
    /// As written in the config, for logs and messages.
    pub path: String,
    /// Normalized, lower-case, decoded prefix.
    prefix: Vec<u8>,
    /// `true` when the configured path ends in `=` or `/`: a plain prefix, not a segment prefix.
    plain_prefix: bool,
    /// What a match does.
    pub action: Action,
    /// What an allowed request must also satisfy.
    pub rules: RouteRules,
    /// `route[2] /api`: for messages, logs and metric labels (set by the config loader, which
    /// knows the index).
    pub label: String,
}

impl Route {
    /// Compiles a route. The path is normalized like a request path so that a rule written as
    /// `/Gradio_API//info` means what it looks like.
    ///
    /// # Errors
    /// [`RouteError::Invalid`] when the path is not an absolute, unambiguous path.
    pub fn new(path: &str, action: Action) -> Result<Route, RouteError> {
        let invalid = |reason| RouteError::Invalid {
            path: path.to_string(),
            reason,
        };
        let norm = normalize(path).map_err(invalid)?;
        let mut prefix = norm.decoded;
        prefix.make_ascii_lowercase();
        let plain_prefix = path.ends_with('=') || path.ends_with('/');
        if !plain_prefix && prefix.len() > 1 && prefix.ends_with(b"/") {
            prefix.pop();
        }
        Ok(Route {
            path: path.to_string(),
            prefix,
            plain_prefix,
            action,
            rules: RouteRules::default(),
            label: path.to_string(),
        })
    }

    /// Whether this route matches a normalized path: by whole segments (`/gradio_api` matches
    /// `/gradio_api` and `/gradio_api/x`, not `/gradio_apix`), or as a plain prefix when the
    /// configured path ends in `=` or `/`. ASCII letter case is ignored.
    pub fn matches(&self, path: &NormalizedPath) -> bool {
        let p = path.decoded();
        let n = self.prefix.len();
        if p.len() < n || !p[..n].eq_ignore_ascii_case(&self.prefix) {
            return false;
        }
        self.plain_prefix || p.len() == n || p[n] == b'/'
    }
}

/// The first route that matches, with its index; `None` means allowed by default.
pub fn first_match<'r>(routes: &'r [Route], path: &NormalizedPath) -> Option<(usize, &'r Route)> {
    routes.iter().enumerate().find(|(_, r)| r.matches(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(p: &str) -> Result<String, PathError> {
        normalize(p).map(|p| p.encoded)
    }

    #[test]
    fn fast_path_agrees_with_the_slow_path() {
        for p in [
            "/",
            "/a",
            "/a/",
            "/gradio_api/file=/tmp/x.png",
            "/a;b=c",
            "/x/.well-known",
            "/a.b/c",
        ] {
            let fast = normalize(p).unwrap();
            let rest = p.strip_prefix('/').unwrap();
            let _ = rest;
            assert_eq!(fast.as_str(), p, "{p}");
        }
        assert!(!is_plain("/a//b"));
        assert!(!is_plain("/a/./b"));
        assert!(!is_plain("/a/%41"));
        assert!(!is_plain("/a/../b"));
        assert!(is_plain("/a.b/c"));
    }

    #[test]
    fn merges_slashes_and_resolves_dots() {
        assert_eq!(n("/").unwrap(), "/");
        assert_eq!(n("//a///b").unwrap(), "/a/b");
        assert_eq!(n("/a/./b/").unwrap(), "/a/b/");
        assert_eq!(n("/a/x/../b").unwrap(), "/a/b");
        assert_eq!(n("/a/b/..").unwrap(), "/a/");
        assert_eq!(n("/a/%2e%2E/b").unwrap(), "/b");
        assert_eq!(n("/a/.%2e/b").unwrap(), "/b");
    }

    #[test]
    fn decodes_unreserved_and_reencodes_what_must_be() {
        assert_eq!(n("/gr%61dio_api/info").unwrap(), "/gradio_api/info");
        assert_eq!(n("/a%3Fb%23c%25d%20e").unwrap(), "/a%3Fb%23c%25d%20e");
        assert_eq!(n("/file=/tmp/x.png").unwrap(), "/file=/tmp/x.png");
        assert_eq!(n("/%E5%BC%A0").unwrap(), "/%E5%BC%A0");
    }

    #[test]
    fn refuses_ambiguous_paths() {
        assert_eq!(n("/a%2fb"), Err(PathError::EncodedSeparator));
        assert_eq!(n("/a%5cb"), Err(PathError::EncodedSeparator));
        assert_eq!(n("/a\\b"), Err(PathError::Backslash));
        assert_eq!(n("/a%00b"), Err(PathError::ControlChar));
        assert_eq!(n("/a%0ab"), Err(PathError::ControlChar));
        assert_eq!(n("/a%zz"), Err(PathError::InvalidEscape));
        assert_eq!(n("/a%4"), Err(PathError::InvalidEscape));
        assert_eq!(n("/.."), Err(PathError::AboveRoot));
        assert_eq!(n("/a/../../b"), Err(PathError::AboveRoot));
        assert_eq!(n("*"), Err(PathError::NotOrigin));
    }

    #[test]
    fn segment_prefix_match_ignores_case() {
        let r = Route::new("/gradio_api/info", Action::Deny).unwrap();
        let m = |p: &str| r.matches(&normalize(p).unwrap());
        assert!(m("/gradio_api/info"));
        assert!(m("/GRADIO_API/Info/"));
        assert!(m("/gradio_api/info/x"));
        assert!(!m("/gradio_api/infox"));
        assert!(!m("/gradio_api"));
    }

    #[test]
    fn trailing_equals_or_slash_is_a_plain_prefix() {
        let r = Route::new("/gradio_api/file=", Action::Allow).unwrap();
        assert!(r.matches(&normalize("/gradio_api/file=/tmp/a.png").unwrap()));
        let r = Route::new("/run/", Action::Deny).unwrap();
        assert!(r.matches(&normalize("/run/predict").unwrap()));
        assert!(!r.matches(&normalize("/run").unwrap()));
        assert!(!r.matches(&normalize("/running").unwrap()));
    }

    #[test]
    fn first_match_wins() {
        let routes = vec![
            Route::new("/gradio_api/upload", Action::Allow).unwrap(),
            Route::new("/gradio_api", Action::Deny).unwrap(),
        ];
        let p = normalize("/gradio_api/upload").unwrap();
        assert_eq!(first_match(&routes, &p).unwrap().0, 0);
        let p = normalize("/gradio_api/info").unwrap();
        assert_eq!(first_match(&routes, &p).unwrap().0, 1);
        assert!(first_match(&routes, &normalize("/").unwrap()).is_none());
    }
}

/// Removes `prefix` (normalized, as configured in `strip_prefix`) from the front of a normalized
/// path, ignoring ASCII case as route matching does; what remains always starts with `/`.
pub fn strip_prefix(path: &NormalizedPath, prefix: &str) -> NormalizedPath {
    let p = prefix.trim_end_matches('/');
    let enc = path.as_str();
    let dec = path.decoded();
    // The prefix is plain ASCII (validated at config time), so it has the same length in the
    // encoded and the decoded form.
    let matches = |s: &[u8]| s.len() >= p.len() && s[..p.len()].eq_ignore_ascii_case(p.as_bytes());
    if p.is_empty() || !matches(enc.as_bytes()) || !matches(dec) {
        return path.clone();
    }
    let rest_enc = &enc[p.len()..];
    let rest_dec = &dec[p.len()..];
    if !(rest_enc.is_empty() || rest_enc.starts_with('/')) {
        return path.clone();
    }
    let fix = |s: &str| {
        if s.is_empty() {
            "/".to_string()
        } else {
            s.to_string()
        }
    };
    let mut decoded = rest_dec.to_vec();
    if decoded.is_empty() {
        decoded.push(b'/');
    }
    NormalizedPath {
        decoded,
        encoded: fix(rest_enc),
    }
}

#[cfg(test)]
mod strip_tests {
    use super::*;

    #[test]
    fn strip_prefix_keeps_a_leading_slash() {
        let p = normalize("/api/colorize").unwrap();
        assert_eq!(strip_prefix(&p, "/api").as_str(), "/colorize");
        assert_eq!(strip_prefix(&p, "/api/").as_str(), "/colorize");
        assert_eq!(
            strip_prefix(&normalize("/API/x").unwrap(), "/api").as_str(),
            "/x"
        );
        assert_eq!(
            strip_prefix(&normalize("/api").unwrap(), "/api").as_str(),
            "/"
        );
        assert_eq!(
            strip_prefix(&normalize("/apix").unwrap(), "/api").as_str(),
            "/apix"
        );
    }
}
