//! The operator's page, served from the main listener (`[console] path`, for `[console] allow`
//! only) and at `/` of the admin listener: the daemon's own state is read here from its
//! owners (this folder's shared state, the runtime's summary, the shared limits), the rest by
//! the console from the store and the upstream groups.

use http::{HeaderMap, Response};

use super::runtime::{Runtime, Shared};
use crate::console::{CrlNote, Daemon, Inputs, SharedNote, utc_seconds};
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
    let inputs = Inputs {
        store: &shared.console,
        backends: rt.forwarder.status(),
        bound_to: &|fingerprints| rt.forwarder.bound_to(fingerprints),
        // The queue room (spec §15) is not in this build: these two are where its state goes
        // (each queue's slots, busy and waiting; each person's jobs by fingerprint).
        queues: Vec::new(),
        person_queue: &|_| None,
        daemon,
    };
    crate::console::answer(&inputs, query, headers)
}
