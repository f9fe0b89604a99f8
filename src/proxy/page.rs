//! The operator's page, served from the main listener (`[console] path`, for `[console] allow`
//! only) and at `/` of the admin listener: the daemon's own state is read here from its
//! owners (this folder's shared state, the runtime's summary, the shared limits), the rest by
//! the console from the store and the upstream groups.

use http::{HeaderMap, Response};

use super::runtime::{Runtime, Shared};
use std::collections::HashMap;

use crate::console::{CrlNote, Daemon, Inputs, PersonQueue, QueueNote, SharedNote, utc_seconds};
use crate::response::body::ProxyBody;

/// A CRL whose next update is this close is flagged (the log warns from the same day).
const CRL_SOON: i64 = 7 * 86_400;

/// The page (or its JSON twin) for a request with `query` and `headers`.
pub(super) fn answer(
    shared: &Shared,
    rt: &Runtime,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Response<ProxyBody> {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let summary = &rt.summary;
    let daemon = Daemon {
        version: env!("CARGO_PKG_VERSION"),
        uptime_seconds: shared.started.elapsed().as_secs(),
        started: utc_seconds(shared.started_unix),
        config_file: shared.config_path().display().to_string(),
        generation: rt.generation,
        last_reload: shared.last_reload.lock().ok().and_then(|r| r.clone()),
        server_certificate_serial: summary.server_serial.clone(),
        server_certificate_expires: utc_seconds(summary.server_not_after),
        server_certificate_days_left: (summary.server_not_after - now).div_euclid(86_400),
        crls: summary
            .crls
            .iter()
            .map(|c| CrlNote {
                file: c.path.display().to_string(),
                issuer: c.issuer.clone(),
                entries: c.entries,
                next_update: c.next_update.map(utc_seconds),
                state: match c.next_update {
                    Some(t) if t < now => "past",
                    Some(t) if t - now < CRL_SOON => "soon",
                    _ => "ok",
                },
            })
            .collect(),
        shared: rt.policy.shared().map(|s| {
            let (redis, down) = s.state();
            SharedNote {
                redis: redis.to_string(),
                available: !down,
                on_unavailable: s.on_unavailable().as_str(),
            }
        }),
    };
    // Read from the queue room once per page: each queue's totals, each person's jobs summed
    // over the queues.
    let mut queues = Vec::new();
    let mut people: HashMap<String, PersonQueue> = HashMap::new();
    for q in rt.forwarder.queues().iter() {
        let (slots, busy, waiting) = q.totals();
        queues.push(QueueNote {
            name: q.name().to_string(),
            slots,
            busy,
            waiting,
        });
        q.each_person(|fingerprint, running, waiting, jobs, used| {
            let row = people
                .entry(fingerprint.to_string())
                .or_insert(PersonQueue {
                    running: 0,
                    waiting: 0,
                    jobs: 0,
                    busy_seconds: 0.0,
                });
            row.running += running;
            row.waiting += waiting;
            row.jobs += jobs;
            row.busy_seconds += used.as_secs_f64();
        });
    }
    let inputs = Inputs {
        store: &shared.console,
        backends: rt.forwarder.status(),
        bound_to: &|fingerprints| rt.forwarder.bound_to(fingerprints),
        queues,
        person_queue: &|fingerprint| people.get(fingerprint).cloned(),
        daemon,
    };
    crate::console::answer(&inputs, query, headers)
}
