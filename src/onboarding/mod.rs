//! People without a working certificate (spec §13): the help page that answers every request on
//! a connection whose certificate was missing or refused (`[tls] on_failure = "help"`), and
//! the one-time invitation links `certgate certs invite` hands out (`[enroll] dir`).
//!
//! Nothing here forwards anything: a connection with a [`Problem`] is answered by certgate on
//! every request, and an invitation link is certgate's own path, never the backend's.

mod help;
pub mod invites;
mod page;

use std::path::PathBuf;

use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};

pub use help::{Presented, Problem};
use invites::{Refusal, Store, Token};
/// HTML escaping and the style-only CSP, shared with the operator's page.
pub(crate) use page::{esc, style_only_csp};

use crate::response::body::ProxyBody;
use crate::response::reply::{self, Check, Reject, Rule};

/// The runtime's onboarding settings.
#[derive(Debug, Clone)]
pub struct Onboarding {
    contact: Option<String>,
    store: Option<Store>,
    /// Held from the lockout check to the count of a wrong token; see [`Onboarding::one_at_a_time`].
    lookups: std::sync::Arc<tokio::sync::Mutex<()>>,
}

/// What an invitation link answered.
pub enum Enrolled {
    /// The page or the bundle.
    Served(Response<ProxyBody>),
    /// Nothing; `guessed` when the token was unknown (it counts as a failed attempt).
    Refused {
        /// The answer.
        reject: Reject,
        /// The token matched no invitation.
        guessed: bool,
    },
}

impl Onboarding {
    /// From `[tls] help_contact` and `[enroll] dir`.
    pub fn new(contact: Option<String>, enroll_dir: Option<PathBuf>) -> Onboarding {
        Onboarding {
            contact,
            store: enroll_dir.map(Store::new),
            lookups: std::sync::Arc::default(),
        }
    }

    /// One invitation link answered at a time, from the lockout check to counting a wrong
    /// token. Otherwise guesses sent together (concurrent HTTP/2 streams, several connections)
    /// all pass the check before the first is counted, and an address gets as many lookups as
    /// it can send at once instead of `handshake_failures_per_ip`. Nothing in between waits on
    /// the client (a lookup is a file read), and links are rare enough not to queue.
    pub async fn one_at_a_time(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.lookups.lock().await
    }

    /// Whether `path` is an invitation link this daemon answers.
    pub fn claims(&self, path: &str) -> bool {
        self.store.is_some() && path.starts_with(invites::LINK_PREFIX)
    }

    /// The answer to any request on a connection with `problem`: the help page for a browser,
    /// the §6 JSON for the rest.
    pub fn help(&self, problem: &Problem, headers: &HeaderMap) -> Reject {
        let page = wants_html(headers).then(|| page::help(problem, self.contact.as_deref()));
        let mut message = problem.sentence();
        if let Some(c) = &self.contact {
            message.push(' ');
            message.push_str(c);
        }
        let mut reject = Reject::with_page(
            StatusCode::FORBIDDEN,
            problem.code(),
            message,
            Rule::bare(Check::Certificate(problem.reason)),
            page,
        );
        if reject.page.is_some() {
            reject
                .headers
                .push((header::CONTENT_SECURITY_POLICY, page::csp()));
        }
        reject
    }

    /// Answers an invitation link (a path [`Onboarding::claims`]): GET shows the page with the
    /// password, POST downloads the bundle once.
    pub async fn enroll(&self, method: &Method, path: &str, headers: &HeaderMap) -> Enrolled {
        let Some(store) = self.store.clone() else {
            return self.refuse(Refusal::Unknown, headers);
        };
        let Some(token) = path
            .strip_prefix(invites::LINK_PREFIX)
            .and_then(Token::parse)
        else {
            return self.refuse(Refusal::Unknown, headers);
        };
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        if method == Method::GET || method == Method::HEAD {
            let lookup = {
                let (store, token) = (store.clone(), token.clone());
                tokio::task::spawn_blocking(move || store.open(&token, now)).await
            };
            return match lookup {
                Ok(Ok(inv)) => {
                    let body =
                        page::invitation(&inv, &token.password(), path, self.contact.as_deref());
                    let mut resp = reply::html_response(StatusCode::OK, body);
                    resp.headers_mut()
                        .insert(header::CONTENT_SECURITY_POLICY, page::csp());
                    Enrolled::Served(resp)
                }
                Ok(Err(refusal)) => self.refuse(refusal, headers),
                Err(_) => self.refuse(Refusal::Unknown, headers),
            };
        }
        if method == Method::POST {
            let taken = tokio::task::spawn_blocking(move || store.take(&token, now)).await;
            return match taken {
                Ok(Ok((inv, bytes))) => {
                    tracing::info!(
                        name = inv.name.as_str(),
                        serial = inv.serial.as_str(),
                        "invitation bundle downloaded; the link is used up"
                    );
                    let mut resp = Response::new(ProxyBody::full(bytes));
                    let h = resp.headers_mut();
                    h.insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/x-pkcs12"),
                    );
                    // The name passed `certs`' file-name check: no quotes, no separators.
                    if let Ok(v) =
                        HeaderValue::from_str(&format!("attachment; filename=\"{}.p12\"", inv.name))
                    {
                        h.insert(header::CONTENT_DISPOSITION, v);
                    }
                    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                    h.insert(
                        header::X_CONTENT_TYPE_OPTIONS,
                        HeaderValue::from_static("nosniff"),
                    );
                    Enrolled::Served(resp)
                }
                Ok(Err(refusal)) => self.refuse(refusal, headers),
                Err(_) => self.refuse(Refusal::Unknown, headers),
            };
        }
        let mut reject = Reject::with_page(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{method} is not allowed here; allowed: GET, HEAD, POST."),
            Rule::bare(Check::Invitation),
            None,
        );
        reject
            .headers
            .push((header::ALLOW, HeaderValue::from_static("GET, HEAD, POST")));
        Enrolled::Refused {
            reject,
            guessed: false,
        }
    }

    /// The answer to an invitation link from an address over `handshake_failures_per_ip`
    /// (which wrong tokens count towards), for `wait` more: 429 with `Retry-After`, whatever
    /// the token. A lockout, as after too many wrong passwords: the right token is refused
    /// too until the address's rate of failures drops, or a guesser could go on guessing on
    /// the connection it already holds, and a hit would tell it so.
    pub fn locked_out(&self, wait: std::time::Duration, headers: &HeaderMap) -> Reject {
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        let secs = secs.max(1);
        let sentence = format!(
            "Too many invitation links that do not exist were tried from your address; try again in {secs} s. A valid link still works then."
        );
        let page = wants_html(headers).then(|| {
            page::link_refused(
                "Too many attempts from your address",
                &sentence,
                self.contact.as_deref(),
            )
        });
        let mut reject = Reject::with_page(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_requests",
            sentence,
            Rule::bare(Check::Invitation),
            page,
        );
        reject
            .headers
            .push((header::RETRY_AFTER, HeaderValue::from(secs)));
        if reject.page.is_some() {
            reject
                .headers
                .push((header::CONTENT_SECURITY_POLICY, page::csp()));
        }
        reject
    }

    fn refuse(&self, refusal: Refusal, headers: &HeaderMap) -> Enrolled {
        let (status, code, headline, sentence) = match refusal {
            Refusal::Unknown => (
                StatusCode::NOT_FOUND,
                "not_found",
                "This invitation link is not valid",
                "No invitation has this link. Check that it was copied whole, or ask for a new one.",
            ),
            Refusal::Used => (
                StatusCode::GONE,
                "gone",
                "This invitation link has been used",
                "Its certificate was downloaded already (or the invitation was cancelled); a link works once. If you did not download it, tell the site's operator: the certificate can be revoked.",
            ),
            Refusal::Expired => (
                StatusCode::GONE,
                "gone",
                "This invitation link has expired",
                "It was not used in time. Ask for a new invitation.",
            ),
        };
        let page = wants_html(headers)
            .then(|| page::link_refused(headline, sentence, self.contact.as_deref()));
        let mut reject =
            Reject::with_page(status, code, sentence, Rule::bare(Check::Invitation), page);
        if reject.page.is_some() {
            reject
                .headers
                .push((header::CONTENT_SECURITY_POLICY, page::csp()));
        }
        Enrolled::Refused {
            reject,
            guessed: refusal == Refusal::Unknown,
        }
    }
}

/// A browser asks for HTML by name; API clients and scripts do not.
fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.to_ascii_lowercase().contains("text/html"))
}
