//! The page's data, read from its owners when the page is asked for: the store's people and
//! refusals, the upstream groups' servers and bindings, the daemon's state as the proxy hands
//! it over. The HTML and the JSON are both drawn from one [`View`], so they cannot disagree.

use serde::Serialize;

use std::collections::HashMap;

use super::store::{self, Person, Store};
use crate::upstream::GroupStatus;

/// Most people rows on one page: the page stays well under a megabyte; the filter finds the
/// rest.
pub const MAX_ROWS: usize = 200;
/// People drawn in the chart of the busiest.
const BUSIEST: usize = 5;
/// Days before a certificate's end from which its row is highlighted.
pub const EXPIRY_WARNING_DAYS: i64 = 14;

/// What the page needs, from the owners of each part.
pub struct Inputs<'a> {
    /// The people, refusals and per-minute counts.
    pub store: &'a Store,
    /// The backend groups' servers (health, in flight, bound clients).
    pub backends: Vec<GroupStatus>,
    /// The group and server each of these fingerprints is bound to (identity affinity).
    pub bound_to: &'a dyn Fn(&[&str]) -> HashMap<String, String>,
    /// Each queue's state (spec §15), read from the queue room; empty where none is configured.
    pub queues: Vec<QueueNote>,
    /// One person's jobs in the queues, by fingerprint; `None` for someone no queue has seen.
    pub person_queue: &'a dyn Fn(&str) -> Option<PersonQueue>,
    /// The daemon's own state.
    pub daemon: Daemon,
}

/// The daemon's own state, as its owners report it.
#[derive(Debug, Clone, Serialize)]
pub struct Daemon {
    /// certgate's version.
    pub version: &'static str,
    /// Seconds since start.
    pub uptime_seconds: u64,
    /// When it started, UTC.
    pub started: String,
    /// The config file.
    pub config_file: String,
    /// The config generation in use.
    pub generation: u64,
    /// The last reload, if there was one.
    pub last_reload: Option<ReloadNote>,
    /// The server certificate's serial.
    pub server_certificate_serial: String,
    /// The server certificate's end, UTC.
    pub server_certificate_expires: String,
    /// Days until then.
    pub server_certificate_days_left: i64,
    /// Each CRL's next update.
    pub crls: Vec<CrlNote>,
    /// `[shared]`, when configured.
    pub shared: Option<SharedNote>,
}

/// One reload.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadNote {
    /// When, UTC.
    pub at: String,
    /// Applied, or refused (and the running state kept).
    pub applied: bool,
    /// What set it off (`SIGHUP`, `file change`).
    pub trigger: String,
    /// What changed, or why it was refused.
    pub detail: String,
}

/// One CRL's freshness.
#[derive(Debug, Clone, Serialize)]
pub struct CrlNote {
    /// The file.
    pub file: String,
    /// Its issuer.
    pub issuer: String,
    /// Certificates it revokes.
    pub entries: usize,
    /// Its next update, UTC.
    pub next_update: Option<String>,
    /// `ok`, `soon` (within 7 days) or `past`.
    pub state: &'static str,
}

/// `[shared]`'s state.
#[derive(Debug, Clone, Serialize)]
pub struct SharedNote {
    /// Where Redis is (no password).
    pub redis: String,
    /// Whether the last check reached it.
    pub available: bool,
    /// What checks do while it does not answer.
    pub on_unavailable: &'static str,
}

/// Everything the page shows.
#[derive(Debug, Serialize)]
pub struct View {
    /// When the page was made, UTC.
    pub generated: String,
    /// The daemon.
    pub daemon: Daemon,
    /// The people.
    pub people: PeopleView,
    /// Who could not get in.
    pub refusals: RefusalsView,
    /// The backend groups.
    pub backends: Vec<GroupStatus>,
    /// The queues (spec §15); empty where none are configured.
    pub queues: Vec<QueueNote>,
    /// Requests per minute over the last hour, everyone, oldest first.
    pub requests_per_minute: Vec<u32>,
    /// The busiest people of the last hour, with their per-minute counts.
    pub busiest: Vec<Busiest>,
}

/// A queue's state, read from the queue room (spec §15).
#[derive(Debug, Clone, Serialize)]
pub struct QueueNote {
    /// Its name.
    pub name: String,
    /// Jobs the backend runs at once.
    pub slots: usize,
    /// Jobs running.
    pub busy: usize,
    /// Jobs waiting in certgate.
    pub waiting: usize,
}

/// One person's jobs in the queues (spec §15), summed over the queues.
#[derive(Debug, Clone, Serialize)]
pub struct PersonQueue {
    /// Jobs at the backend now.
    pub running: usize,
    /// Jobs waiting in certgate now.
    pub waiting: usize,
    /// Jobs done since start.
    pub jobs: u64,
    /// Slot-seconds used.
    pub busy_seconds: f64,
}

/// The people section.
#[derive(Debug, Serialize)]
pub struct PeopleView {
    /// The filter applied (`?q=`).
    pub filter: String,
    /// Rows shown.
    pub showing: usize,
    /// People matching the filter.
    pub matching: usize,
    /// People remembered.
    pub total: usize,
    /// People forgotten to stay bounded.
    pub evicted: u64,
    /// The rows, most recently seen first.
    pub rows: Vec<PersonRow>,
}

/// One person.
#[derive(Debug, Serialize)]
pub struct PersonRow {
    /// Subject CN (the first), or the whole DN when there is none.
    pub cn: String,
    /// Subject DN.
    pub subject_dn: String,
    /// Issuer DN.
    pub issuer_dn: String,
    /// Serial, upper-case hex.
    pub serial: String,
    /// SHA-256 fingerprint, lower-case hex.
    pub fingerprint: String,
    /// Certificate end, UTC.
    pub expires: String,
    /// Days left (negative: expired).
    pub days_left: i64,
    /// Under [`EXPIRY_WARNING_DAYS`].
    pub expiring_soon: bool,
    /// First request, UTC.
    pub first_seen: String,
    /// Last request or refusal, UTC.
    pub last_seen: String,
    /// Answers 1xx–3xx.
    pub ok: u64,
    /// Answers 4xx.
    pub client_errors: u64,
    /// Answers 5xx.
    pub server_errors: u64,
    /// Request body bytes (as declared).
    pub bytes_in: u64,
    /// Response bytes.
    pub bytes_out: u64,
    /// Refused requests.
    pub refusals: u64,
    /// The last refusal's reason.
    pub last_refusal: Option<String>,
    /// Refused by a rate limit.
    pub rate_limited: u64,
    /// Queue jobs, busy seconds and waiting jobs (spec §15): none for someone no queue has seen.
    pub queue: Option<PersonQueue>,
    /// The upstream group and server it is bound to (identity affinity).
    pub bound_to: Option<String>,
    /// Its certificate was revoked while it was connected.
    pub revoked_while_connected: bool,
    /// The command that revokes this certificate (needs the CA folder).
    pub revoke_command: String,
    /// The command that issues a new certificate for this name.
    pub renew_command: String,
}

/// Who could not get in.
#[derive(Debug, Serialize)]
pub struct RefusalsView {
    /// Since start.
    pub total: u64,
    /// Counts per reason since start.
    pub per_reason: Vec<ReasonCount>,
    /// The last refusals, newest first.
    pub recent: Vec<RefusalRow>,
}

/// One reason's count.
#[derive(Debug, Serialize)]
pub struct ReasonCount {
    /// The short reason.
    pub reason: String,
    /// How often.
    pub count: u64,
}

/// One refusal.
#[derive(Debug, Serialize)]
pub struct RefusalRow {
    /// When, UTC.
    pub at: String,
    /// The client's address.
    pub address: String,
    /// The certificate's subject, when there was one.
    pub subject: Option<String>,
    /// The short reason.
    pub reason: String,
    /// The reason in words.
    pub words: String,
}

/// One of the busiest people.
#[derive(Debug, Serialize)]
pub struct Busiest {
    /// Subject CN.
    pub cn: String,
    /// SHA-256 fingerprint.
    pub fingerprint: String,
    /// Requests in the last hour.
    pub last_hour: u64,
    /// Requests per minute, oldest first.
    pub per_minute: Vec<u32>,
}

/// `YYYY-MM-DD HH:MM:SS UTC` of Unix milliseconds.
pub fn utc(ms: u64) -> String {
    utc_seconds(i64::try_from(ms / 1000).unwrap_or(i64::MAX))
}

/// `YYYY-MM-DD HH:MM:SS UTC` of Unix seconds.
pub fn utc_seconds(unix: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp(unix) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        ),
        Err(_) => unix.to_string(),
    }
}

/// `value` quoted for a POSIX shell: a subject is whatever the certificate says, and the
/// command is meant to be pasted.
fn shell_quote(value: &str) -> String {
    if !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "@._-+=:,/".contains(c))
    {
        return value.to_string();
    }
    format!("'{}'", value.replace('\'', "'\\''"))
}

impl View {
    /// Reads every part from its owner; people filtered by `filter`.
    pub fn read(inputs: &Inputs<'_>, filter: &str) -> View {
        let now_ms = store::now_ms();
        let now_minute = now_ms / 60_000;
        let now = i64::try_from(now_ms / 1000).unwrap_or(i64::MAX);
        let people = inputs.store.people(filter, MAX_ROWS);
        let fingerprints: Vec<&str> = people
            .rows
            .iter()
            .map(|p| p.identity.fingerprint.as_str())
            .collect();
        let bound = (inputs.bound_to)(&fingerprints);
        let rows: Vec<PersonRow> = people
            .rows
            .iter()
            .map(|p| {
                let mut row = person_row(p, now, bound.get(&p.identity.fingerprint).cloned());
                row.queue = (inputs.person_queue)(&p.identity.fingerprint);
                row
            })
            .collect();
        let busiest = busiest(inputs.store, now_minute);
        let (ring, per_reason, total) = inputs.store.refusals();
        View {
            generated: utc(now_ms),
            daemon: inputs.daemon.clone(),
            people: PeopleView {
                filter: filter.to_string(),
                showing: rows.len(),
                matching: people.matching,
                total: people.total,
                evicted: people.evicted,
                rows,
            },
            refusals: RefusalsView {
                total,
                per_reason: per_reason
                    .into_iter()
                    .map(|(reason, count)| ReasonCount { reason, count })
                    .collect(),
                recent: ring
                    .iter()
                    .rev()
                    .map(|r| RefusalRow {
                        at: utc(r.at_ms),
                        address: r.addr.to_string(),
                        subject: r.subject.as_deref().map(str::to_string),
                        reason: r.reason.to_string(),
                        words: r.words.to_string(),
                    })
                    .collect(),
            },
            backends: inputs.backends.clone(),
            queues: inputs.queues.clone(),
            requests_per_minute: inputs.store.per_minute(now_minute).to_vec(),
            busiest,
        }
    }
}

fn cn_of(p: &Person) -> String {
    p.identity
        .names
        .cn
        .first()
        .cloned()
        .unwrap_or_else(|| p.identity.subject_dn.clone())
}

fn person_row(p: &Person, now: i64, bound_to: Option<String>) -> PersonRow {
    let id = &p.identity;
    let days_left = (id.not_after - now).div_euclid(86_400);
    let cn = cn_of(p);
    PersonRow {
        revoke_command: format!(
            "certgate certs revoke --dir \"$CA_DIR\" --serial {}",
            shell_quote(&id.serial)
        ),
        renew_command: format!(
            "certgate certs renew --dir \"$CA_DIR\" --name {}",
            shell_quote(&cn)
        ),
        cn,
        subject_dn: id.subject_dn.clone(),
        issuer_dn: id.issuer_dn.clone(),
        serial: id.serial.clone(),
        fingerprint: id.fingerprint.clone(),
        expires: utc_seconds(id.not_after),
        days_left,
        expiring_soon: days_left < EXPIRY_WARNING_DAYS,
        first_seen: utc(p.first_seen_ms),
        last_seen: utc(p.last_seen_ms),
        ok: p.ok,
        client_errors: p.client_errors,
        server_errors: p.server_errors,
        bytes_in: p.bytes_in,
        bytes_out: p.bytes_out,
        refusals: p.refusals,
        last_refusal: p.last_refusal.as_deref().map(str::to_string),
        rate_limited: p.rate_limited,
        queue: None,
        bound_to,
        revoked_while_connected: p.revoked_while_connected,
    }
}

fn busiest(store: &Store, now_minute: u64) -> Vec<Busiest> {
    // Among everyone remembered, not only the page's rows: the busiest may not be the most
    // recent.
    store
        .busiest(now_minute, BUSIEST)
        .into_iter()
        .map(|(n, p)| Busiest {
            cn: cn_of(&p),
            fingerprint: p.identity.fingerprint.clone(),
            last_hour: n,
            per_minute: p.per_minute(now_minute).to_vec(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_quote_what_the_certificate_says() {
        assert_eq!(shell_quote("alice@example.com"), "alice@example.com");
        assert_eq!(shell_quote("Dana O'Neil"), "'Dana O'\\''Neil'");
        assert_eq!(shell_quote("$(rm -rf ~)"), "'$(rm -rf ~)'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn dates_read_in_utc() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc_seconds(86_400 + 61), "1970-01-02 00:01:01 UTC");
    }
}
