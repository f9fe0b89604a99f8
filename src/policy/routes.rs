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

use crate::policy::access::IpList;
use crate::tls::identity::{ClientIdentity, IdentityNames};

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
    /// `..;x` or `.;x`: a dot segment with path parameters. A backend that strips parameters
    /// before resolving dots (Tomcat, Jetty, Spring) climbs where certgate would not.
    #[error("a '.' or '..' segment carries ';' parameters, which is ambiguous")]
    DotSegmentParams,
}

/// A normalized request path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalizedPath {
    /// Decoded bytes, segments joined by `/`.
    decoded: Vec<u8>,
    /// The same path percent-encoded where it must be; what the backend receives.
    encoded: String,
    /// `decoded` without path parameters, when it has any (see [`NormalizedPath::match_form`]).
    unparameterized: Option<Vec<u8>>,
}

impl NormalizedPath {
    fn new(decoded: Vec<u8>, encoded: String) -> NormalizedPath {
        let unparameterized = without_params(&decoded);
        NormalizedPath {
            decoded,
            encoded,
            unparameterized,
        }
    }

    /// The path as forwarded to the backend.
    pub fn as_str(&self) -> &str {
        &self.encoded
    }

    /// The decoded path.
    pub fn decoded(&self) -> &[u8] {
        &self.decoded
    }

    /// What rules are matched against: the decoded path with every segment's path parameters
    /// (from its first `;`, sent raw or as `%3B`, to the end of the segment) removed, and a
    /// segment left empty by that merged like a repeated slash. Tomcat, Jetty and Spring route
    /// `/admin;x/` as `/admin/`, so a deny rule on `/admin` must see it that way too.
    pub fn match_form(&self) -> &[u8] {
        self.unparameterized.as_deref().unwrap_or(&self.decoded)
    }
}

/// The name of a decoded segment: everything before its first `;`.
fn segment_name(seg: &[u8]) -> &[u8] {
    seg.split(|b| *b == b';').next().unwrap_or(seg)
}

/// `decoded` without path parameters; `None` when it has none (the common case costs nothing).
fn without_params(decoded: &[u8]) -> Option<Vec<u8>> {
    if !decoded.contains(&b';') {
        return None;
    }
    let segments: Vec<&[u8]> = decoded
        .strip_prefix(b"/")
        .unwrap_or(decoded)
        .split(|b| *b == b'/')
        .collect();
    let last = segments.len() - 1;
    let mut out = Vec::with_capacity(decoded.len());
    for (i, seg) in segments.iter().enumerate() {
        let name = segment_name(seg);
        // `/a/;x/b` is `/a//b` to a parameter-stripping backend, which merges it to `/a/b`; a
        // last segment left empty keeps the trailing slash.
        if name.is_empty() && i != last {
            continue;
        }
        out.push(b'/');
        out.extend_from_slice(name);
    }
    Some(out)
}

/// Normalizes an origin-form request path (without the query).
///
/// # Errors
/// A [`PathError`] for every ambiguous form; the caller answers 400.
pub fn normalize(raw: &str) -> Result<NormalizedPath, PathError> {
    if is_plain(raw) {
        // Nothing to decode, merge or resolve: the common case, without per-segment work.
        return Ok(NormalizedPath::new(
            raw.as_bytes().to_vec(),
            raw.to_string(),
        ));
    }
    let rest = raw.strip_prefix('/').ok_or(PathError::NotOrigin)?;
    let mut segments: Vec<Vec<u8>> = Vec::new();
    // Whether the result ends in a slash: after an empty, `.` or `..` segment, as RFC 3986's
    // remove_dot_segments leaves `/a/b/..` as `/a/`.
    let mut dir = true;
    for seg in rest.split('/') {
        let seg = decode_segment(seg)?;
        if seg.contains(&b';') && matches!(segment_name(&seg), b"." | b"..") {
            return Err(PathError::DotSegmentParams);
        }
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
    Ok(NormalizedPath::new(decoded, encoded))
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
    /// The upstream group: 0 is `[upstream]`, then `[upstreams.NAME]` in name order.
    pub upstream: usize,
    /// Whether the route names its group with `upstream`. A deny route that names none is not
    /// taken to protect `[upstream]` alone: it protects every group (see [`deny_after_strip`]).
    pub upstream_named: bool,
    /// Index of the `[[queue]]` its requests wait in.
    pub queue: Option<usize>,
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
    pub label: std::sync::Arc<str>,
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
            label: path.into(),
        })
    }

    /// Whether this route matches a normalized path: by whole segments (`/gradio_api` matches
    /// `/gradio_api` and `/gradio_api/x`, not `/gradio_apix`), or as a plain prefix when the
    /// configured path ends in `=` or `/`. ASCII letter case and path parameters are ignored
    /// (`/Gradio_API;x/info` is `/gradio_api/info`).
    pub fn matches(&self, path: &NormalizedPath) -> bool {
        let p = path.match_form();
        let n = self.prefix.len();
        if p.len() < n || !p[..n].eq_ignore_ascii_case(&self.prefix) {
            return false;
        }
        self.plain_prefix || p.len() == n || p[n] == b'/'
    }
}

impl Route {
    /// Whether the route's path is `/`: it matches every request.
    pub fn is_catch_all(&self) -> bool {
        self.prefix == b"/"
    }
}

/// The first route that matches, with its index; `None` means allowed by default.
pub fn first_match<'r>(routes: &'r [Route], path: &NormalizedPath) -> Option<(usize, &'r Route)> {
    routes.iter().enumerate().find(|(_, r)| r.matches(path))
}

/// The deny route that refuses `stripped`, the path a `strip_prefix` route forwards to group
/// `group`, if any. Every deny route counts, not only the first that matches: a deny route
/// naming another group comes first in the order as often as not, and the backend cannot tell
/// `/api/internal` stripped to `/internal` from `/internal` asked directly. A deny route counts
/// when it names `group` or names no group at all — `/internal` denied without `upstream` may
/// mean `[upstream]`'s path or every backend's, and the ambiguous case is refused. An allow
/// route for the stripped path that comes before the deny (`/internal/health` above
/// `/internal`) does not lift it: its own conditions were never checked on this request. A
/// deny of `/` itself ("everything not allowed above") names no backend path and does not count.
pub fn deny_after_strip<'r>(
    routes: &'r [Route],
    stripped: &NormalizedPath,
    group: usize,
) -> Option<&'r Route> {
    routes.iter().find(|r| {
        r.action == Action::Deny
            && !r.is_catch_all()
            && (!r.rules.upstream_named || r.rules.upstream == group)
            && r.matches(stripped)
    })
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
    fn path_parameters_are_ignored_by_matching() {
        let r = Route::new("/internal", Action::Deny).unwrap();
        let m = |p: &str| r.matches(&normalize(p).unwrap());
        for p in [
            "/internal;x/y",
            "/INTERNAL;x",
            "/internal;/x",
            "/internal%3Bx/y",
            "/internal%3bx",
            "/;x/internal",
            "/a/..//internal;jsessionid=1",
        ] {
            assert!(m(p), "{p}");
        }
        assert!(!m("/internalx;y"));
        assert!(!m("/x;internal"));
        let info = Route::new("/gradio_api/info", Action::Deny).unwrap();
        assert!(info.matches(&normalize("/gradio_api/info;x").unwrap()));
        assert!(info.matches(&normalize("/gradio_api;a=b/info;c").unwrap()));
        // What is forwarded keeps the parameters.
        assert_eq!(n("/internal%3Bx/y").unwrap(), "/internal;x/y");
        assert_eq!(
            normalize("/a/;x/b").unwrap().match_form(),
            b"/a/b".as_slice()
        );
        assert_eq!(normalize("/a/;x").unwrap().match_form(), b"/a/".as_slice());
    }

    #[test]
    fn dot_segments_with_parameters_are_refused() {
        for p in [
            "/x/..;/internal",
            "/x/..;a=b/internal",
            "/x/.;/y",
            "/x/%2e%2e%3b/y",
        ] {
            assert_eq!(n(p), Err(PathError::DotSegmentParams), "{p}");
        }
        assert!(n("/x/..a;b").is_ok());
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

    #[test]
    fn deny_after_strip_counts_every_deny_route_of_the_group_or_of_none() {
        let deny = |path: &str, group: Option<usize>| {
            let mut r = Route::new(path, Action::Deny).unwrap();
            if let Some(g) = group {
                r.rules.upstream = g;
                r.rules.upstream_named = true;
            }
            r
        };
        let routes = vec![
            Route::new("/internal/health", Action::Allow).unwrap(),
            deny("/internal", Some(2)),
            deny("/internal", None),
            deny("/secret", Some(1)),
            deny("/", None),
        ];
        let at = |p: &str, g: usize| {
            deny_after_strip(&routes, &normalize(p).unwrap(), g).map(|r| r.path.as_str())
        };
        // The first matching deny names group 2; the one naming no group still counts.
        assert_eq!(at("/internal/secret", 0), Some("/internal"));
        assert!(std::ptr::eq(
            deny_after_strip(&routes, &normalize("/internal/x").unwrap(), 0).unwrap(),
            &routes[2]
        ));
        assert_eq!(at("/internal/health", 0), Some("/internal"));
        assert_eq!(at("/secret", 1), Some("/secret"));
        assert_eq!(at("/secret", 0), None);
        assert_eq!(at("/other", 0), None);
    }
}

/// Removes the segments of `prefix` (normalized, as configured in `strip_prefix`) from the
/// front of a path that a route containing it matched. Segments are counted as route matching
/// sees them: a segment's path parameters go with it (`/api;v=2/x` loses `api;v=2`), and a
/// segment that is only parameters is dropped on the way. What remains starts with `/`.
pub fn strip_prefix(path: &NormalizedPath, prefix: &str) -> NormalizedPath {
    let mut want = prefix.split('/').filter(|s| !s.is_empty()).count();
    let segments = |s: &[u8]| -> Vec<(usize, usize)> {
        // (start, end) of each segment, after the leading slash.
        let mut out = Vec::new();
        let mut start = 1;
        for (i, b) in s.iter().enumerate().skip(1) {
            if *b == b'/' {
                out.push((start, i));
                start = i + 1;
            }
        }
        out.push((start, s.len()));
        out
    };
    let dec = segments(&path.decoded);
    let enc = segments(path.encoded.as_bytes());
    if want == 0 || dec.len() != enc.len() {
        return path.clone();
    }
    let mut cut = 0;
    while want > 0 {
        let Some(&(a, b)) = dec.get(cut) else {
            return path.clone();
        };
        if !segment_name(&path.decoded[a..b]).is_empty() {
            want -= 1;
        }
        cut += 1;
    }
    let rest = |s: &[u8], segs: &[(usize, usize)]| -> Vec<u8> {
        match segs.get(cut) {
            // The separator in front of the first kept segment.
            Some(&(a, _)) => s[a - 1..].to_vec(),
            None => b"/".to_vec(),
        }
    };
    let decoded = rest(&path.decoded, &dec);
    let encoded =
        String::from_utf8(rest(path.encoded.as_bytes(), &enc)).unwrap_or_else(|_| "/".to_string());
    NormalizedPath::new(decoded, encoded)
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
            strip_prefix(&normalize("/api/").unwrap(), "/api").as_str(),
            "/"
        );
        assert_eq!(
            strip_prefix(&normalize("/api/v1/x/").unwrap(), "/api/v1").as_str(),
            "/x/"
        );
    }

    #[test]
    fn strip_prefix_takes_path_parameters_with_their_segment() {
        let s = |p: &str, prefix: &str| strip_prefix(&normalize(p).unwrap(), prefix);
        assert_eq!(s("/api;v=2/colorize", "/api").as_str(), "/colorize");
        assert_eq!(s("/API%3Bx/colorize;y", "/api").as_str(), "/colorize;y");
        assert_eq!(s("/;x/api/colorize", "/api").as_str(), "/colorize");
        let p = s("/api/c%C3%A9;x", "/api");
        assert_eq!(p.as_str(), "/c%C3%A9;x");
        assert_eq!(p.decoded(), "/cé;x".as_bytes());
        assert_eq!(p.match_form(), "/cé".as_bytes());
    }
}
