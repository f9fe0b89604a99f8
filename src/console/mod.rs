//! The operator's page (spec §16): who came in, who could not and why, whose certificate runs
//! out, which backends are up, what the daemon itself is doing — HTML for a person, JSON for a
//! script, the same data in both.
//!
//! - [`store`]: what is kept as the traffic passes (people, refusals, per-minute counts); one
//!   [`Store`] per daemon, kept across reloads, fed by the request handler's one refusal path,
//!   the handshake's failure path and the access record when a response ends.
//! - `view`: the page's data, read at render time from its owners — the store, the upstream
//!   groups, and the daemon's own state as the proxy hands it over — never copied ahead of
//!   time.
//! - `page`: the HTML (self-contained, strict CSP, every value escaped, readable without
//!   script, SVG charts drawn on the server).
//!
//! The page is read-only: the daemon never holds the CA key, so where an action needs it the
//! row shows the `certgate certs` command to run.

mod page;
pub mod store;
mod view;

use http::{HeaderMap, HeaderValue, Response, StatusCode, header};

pub use store::Store;
pub use view::{CrlNote, Daemon, Inputs, ReloadNote, SharedNote, utc, utc_seconds};

use crate::onboarding::Problem;
use crate::policy::routes::{Action, IdentityAllow, NormalizedPath, Route, RouteError};
use crate::response::access_log::{AccessRecord, Ledger};
use crate::response::body::ProxyBody;
use crate::tls::identity::ClientIdentity;

/// Where the page is served on the main listener when `[console] path` is not set: beside the
/// invitation links, under the prefix certgate keeps for itself.
pub const DEFAULT_PATH: &str = "/.well-known/certgate/console";

/// `[console]`, validated: where the page is on the main listener and who may read it.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The path as configured.
    pub path: String,
    /// The path as a route, matched like one (segments, letter case, path parameters).
    route: Route,
    /// The path's last segment, lower-case: a request path that contains neither it nor a
    /// percent-escape cannot be the page, and is not normalized a second time.
    needle: String,
    /// Who may read it.
    pub allow: IdentityAllow,
}

impl Settings {
    /// `[console]` with `path` and `allow`.
    ///
    /// # Errors
    /// [`RouteError`] when `path` is not a usable route path.
    pub fn new(path: &str, allow: IdentityAllow) -> Result<Settings, RouteError> {
        let route = Route::new(path, Action::Allow)?;
        let needle = path
            .trim_end_matches('/')
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        Ok(Settings {
            path: path.to_string(),
            route,
            needle,
            allow,
        })
    }

    /// Whether a request for `raw` (the path as received) is the page: matched on the
    /// normalized path, as routes are, so no spelling of it ever reaches a backend.
    pub fn claims(&self, raw: &str) -> bool {
        let maybe = raw.contains('%') || contains_ignore_case(raw, &self.needle);
        maybe
            && crate::policy::routes::normalize(raw)
                .is_ok_and(|p: NormalizedPath| self.route.matches(&p))
    }

    /// Whether `identity` may read the page.
    pub fn admits(&self, identity: Option<&ClientIdentity>) -> bool {
        identity.is_some_and(|id| self.allow.admits(id))
    }
}

fn contains_ignore_case(hay: &str, needle: &str) -> bool {
    needle.is_empty()
        || hay
            .as_bytes()
            .windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

impl Ledger for Store {
    fn finished(&self, record: &AccessRecord, bytes_sent: u64) {
        Store::finished(
            self,
            store::Finished {
                addr: record.peer.ip(),
                identity: record.identity.as_ref(),
                status: record.status,
                bytes_in: record.bytes_in,
                bytes_out: bytes_sent,
            },
        );
    }
}

/// A handshake failure's reason in the words of the help page (spec §13); failures that are
/// not about the certificate say what happened instead.
pub fn handshake_words(problem: &Problem) -> String {
    match problem.reason {
        "timeout" => "The TLS handshake did not finish in time.".into(),
        "not TLS" => "The client did not speak TLS.".into(),
        r @ ("protocol error"
        | "decrypt error"
        | "peer misbehaved"
        | "tls error"
        | "i/o error"
        | "no common protocol version or cipher suite") => {
            format!("The TLS handshake failed ({r}).")
        }
        _ => problem.sentence(),
    }
}

/// Whether the client asked for the JSON twin: `?format=json`, or `Accept: application/json`
/// without HTML (a browser's Accept names both).
fn wants_json(query: &[(String, String)], headers: &HeaderMap) -> bool {
    match query
        .iter()
        .find(|(k, _)| k == "format")
        .map(|(_, v)| v.as_str())
    {
        Some("json") => return true,
        Some(_) => return false,
        None => {}
    }
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/json") && !a.contains("text/html"))
}

fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    query
        .unwrap_or_default()
        .split('&')
        .filter(|kv| !kv.is_empty())
        .take(16)
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            let decode = |s: &str| {
                percent_encoding::percent_decode_str(&s.replace('+', " "))
                    .decode_utf8_lossy()
                    .into_owned()
            };
            (decode(k), decode(v))
        })
        .collect()
}

/// The page (or its JSON twin) for a request with `query` and `headers`; `inputs` reads the
/// data from its owners.
pub fn answer(
    inputs: &Inputs<'_>,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Response<ProxyBody> {
    let query = query_pairs(query);
    let filter = query
        .iter()
        .find(|(k, _)| k == "q")
        .map(|(_, v)| v.chars().take(100).collect::<String>())
        .unwrap_or_default();
    let view = view::View::read(inputs, &filter);
    let (body, content_type, csp) = if wants_json(&query, headers) {
        (
            serde_json::to_string_pretty(&view).unwrap_or_else(|_| "{}".into()),
            "application/json",
            None,
        )
    } else {
        // At most every 10 s: a page left open on a wall screen must not become a load test.
        let refresh = query
            .iter()
            .find(|(k, _)| k == "refresh")
            .and_then(|(_, v)| v.parse::<u32>().ok())
            .map(|s| s.clamp(10, 3600));
        (
            page::render(&view, refresh),
            "text/html; charset=utf-8",
            Some(page::csp()),
        )
    };
    let mut resp = Response::new(ProxyBody::full(body));
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // It names people and addresses: never in a cache, shared or not.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(csp) = csp {
        h.insert(header::CONTENT_SECURITY_POLICY, csp);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(path: &str) -> Settings {
        Settings::new(path, IdentityAllow::default()).unwrap()
    }

    #[test]
    fn every_spelling_of_the_path_is_the_page() {
        let s = settings(DEFAULT_PATH);
        for p in [
            "/.well-known/certgate/console",
            "/.well-known/certgate/console/",
            "//.well-known/certgate/./console",
            "/.well-known/certgate/CONSOLE",
            "/.well-known/certgate/%63onsole",
            "/.well-known/certgate/console;x",
            "/x/../.well-known/certgate/console",
        ] {
            assert!(s.claims(p), "{p}");
        }
        for p in [
            "/",
            "/.well-known/certgate/consoles",
            "/console",
            "/.well-known/certgate/enroll/abc",
        ] {
            assert!(!s.claims(p), "{p}");
        }
    }

    #[test]
    fn json_is_asked_by_query_or_accept() {
        let mut h = HeaderMap::new();
        assert!(wants_json(&query_pairs(Some("format=json")), &h));
        assert!(!wants_json(&query_pairs(Some("refresh=10")), &h));
        h.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        assert!(wants_json(&[], &h));
        assert!(!wants_json(&query_pairs(Some("format=html")), &h));
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("text/html,application/xhtml+xml,application/json;q=0.9"),
        );
        assert!(!wants_json(&[], &h));
    }

    #[test]
    fn handshake_reasons_read_as_the_help_page_says_them() {
        let words = |reason| {
            handshake_words(&Problem {
                reason,
                presented: None,
            })
        };
        assert_eq!(
            words("unknown issuer"),
            Problem {
                reason: "unknown issuer",
                presented: None
            }
            .sentence()
        );
        assert_eq!(
            words("timeout"),
            "The TLS handshake did not finish in time."
        );
    }
}
