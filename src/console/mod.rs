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
pub use view::{
    CrlNote, Daemon, Inputs, PersonQueue, QueueNote, ReloadNote, SharedNote, utc, utc_seconds,
};

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
        (json(&view), "application/json", None)
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

/// The view as JSON, with `<`, `>` and `&` written as `\u` escapes: a certificate field such
/// as `<script>` cannot turn into markup even where the JSON is pasted into a page. (Outside
/// strings JSON has none of the three, so replacing them everywhere is exact.)
fn json(view: &view::View) -> String {
    serde_json::to_string_pretty(view)
        .unwrap_or_else(|_| "{}".into())
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
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

    fn daemon() -> Daemon {
        Daemon {
            version: "0",
            uptime_seconds: 1,
            started: String::new(),
            config_file: "/etc/certgate/certgate.toml".into(),
            generation: 1,
            last_reload: None,
            server_certificate_serial: "01".into(),
            server_certificate_expires: String::new(),
            server_certificate_days_left: 100,
            crls: Vec::new(),
            shared: None,
        }
    }

    fn identity(n: usize, cn: &str) -> std::sync::Arc<ClientIdentity> {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &n.to_be_bytes());
        std::sync::Arc::new(ClientIdentity {
            subject_dn: format!("CN={cn}"),
            issuer_dn: "CN=ca".into(),
            serial: format!("{n:X}"),
            fingerprint: digest.as_ref().iter().map(|b| format!("{b:02x}")).collect(),
            names: crate::tls::identity::IdentityNames {
                cn: vec![cn.to_string()],
                ..Default::default()
            },
            not_after: 0,
        })
    }

    fn render(store: &Store, query: &str, accept: Option<&'static str>) -> (HeaderMap, String) {
        let inputs = Inputs {
            store,
            backends: Vec::new(),
            bound_to: &|_| std::collections::HashMap::new(),
            queues: Vec::new(),
            person_queue: &|_| None,
            daemon: daemon(),
        };
        let mut headers = HeaderMap::new();
        if let Some(a) = accept {
            headers.insert(header::ACCEPT, HeaderValue::from_static(a));
        }
        let resp = answer(&inputs, Some(query), &headers);
        let headers = resp.headers().clone();
        let body = futures_body(resp);
        (headers, body)
    }

    fn futures_body(resp: Response<ProxyBody>) -> String {
        use http_body_util::BodyExt as _;
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let bytes = rt.block_on(resp.into_body().collect()).unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[test]
    fn a_hundred_thousand_people_make_a_bounded_page_that_says_so() {
        let store = Store::new();
        for n in 0..100_000 {
            store.finished(store::Finished {
                addr: std::net::Ipv4Addr::LOCALHOST.into(),
                identity: Some(&identity(n, &format!("person{n}@example.com"))),
                status: 200,
                bytes_in: 0,
                bytes_out: 10,
            });
        }
        let (headers, page) = render(&store, "", None);
        assert_eq!(headers[header::CACHE_CONTROL], "no-store");
        assert!(page.len() < 1 << 20, "{} bytes", page.len());
        let total = store.people("", 1).total;
        assert!(total <= store::MAX_PEOPLE);
        assert!(
            page.contains(&format!("Showing {} of {total}", view::MAX_ROWS)),
            "{}",
            &page[..2000]
        );
        assert!(page.contains("seen earlier were forgotten"));
        // The filter finds one of those not shown.
        let (_, one) = render(&store, "q=person99990%40example", None);
        assert!(one.contains("Showing 1 of 1 matching"), "filter");
        let (_, json) = render(&store, "format=json", None);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(
            v["people"]["rows"].as_array().unwrap().len(),
            view::MAX_ROWS
        );
        assert_eq!(v["people"]["total"], total);
        assert!(json.len() < 1 << 20, "{} bytes", json.len());
    }

    #[test]
    fn the_queue_hook_shows_queues_and_each_persons_jobs() {
        let store = Store::new();
        let id = identity(1, "dana@example.com");
        store.finished(store::Finished {
            addr: std::net::Ipv4Addr::LOCALHOST.into(),
            identity: Some(&id),
            status: 200,
            bytes_in: 0,
            bytes_out: 0,
        });
        let fingerprint = id.fingerprint.clone();
        let person_queue = move |f: &str| {
            (f == fingerprint).then_some(view::PersonQueue {
                running: 1,
                waiting: 3,
                jobs: 7,
                busy_seconds: 42.0,
            })
        };
        let inputs = Inputs {
            store: &store,
            backends: Vec::new(),
            bound_to: &|_| std::collections::HashMap::new(),
            queues: vec![view::QueueNote {
                name: "gpu".into(),
                slots: 1,
                busy: 1,
                waiting: 3,
            }],
            person_queue: &person_queue,
            daemon: daemon(),
        };
        let page = futures_body(answer(&inputs, None, &HeaderMap::new()));
        assert!(!page.contains("No queues configured."));
        assert!(page.contains("<tr><td>gpu</td>"));
        assert!(page.contains("1 running, 3 waiting<br>7 jobs, 42 s busy"));
    }

    #[test]
    fn hostile_fields_are_text_in_the_page_and_the_json() {
        let store = Store::new();
        let cn = "<script>alert('x')</script>&\"";
        store.finished(store::Finished {
            addr: std::net::Ipv4Addr::LOCALHOST.into(),
            identity: Some(&identity(1, cn)),
            status: 200,
            bytes_in: 0,
            bytes_out: 0,
        });
        let (headers, page) = render(&store, "refresh=1", None);
        assert!(!page.contains("<script"), "{page}");
        assert!(page.contains("&lt;script&gt;alert(&#39;x&#39;)"));
        // Asked for every second, refreshed every ten.
        assert!(page.contains("<meta http-equiv=\"refresh\" content=\"10\">"));
        assert!(
            headers[header::CONTENT_SECURITY_POLICY]
                .to_str()
                .unwrap()
                .contains("style-src 'sha256-")
        );
        let (headers, json) = render(&store, "", Some("application/json"));
        assert_eq!(headers[header::CONTENT_TYPE], "application/json");
        assert!(
            !json.contains('<') && !json.contains('>') && !json.contains('&'),
            "{json}"
        );
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["people"]["rows"][0]["cn"], cn);
        // The command to copy quotes it for the shell.
        assert_eq!(
            v["people"]["rows"][0]["renew_command"],
            "certgate certs renew --dir \"$CA_DIR\" --name '<script>alert('\\''x'\\'')</script>&\"'"
        );
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
