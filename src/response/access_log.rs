//! One access-log line per request, written when the response has been sent (or abandoned), with
//! the fields of nginx's classic JSON log: time, client address, client DN, verify status,
//! method, path, status, bytes sent, duration, and the rule that refused the request if one did;
//! a request that waited in a queue also carries its wait (`queue_wait_ms`).
//! Lines are `tracing` events with target `certgate::access`, so the text or JSON formatter of
//! the subscriber decides how they look; both go to stderr.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::Method;

use crate::ops::metrics::{Metrics, RouteCounters};
use crate::tls::identity::ClientIdentity;

/// Told of every request when its response has ended (the operator's page keeps its people
/// this way): defined here so that the access record needs to know nothing of who listens.
pub trait Ledger: Send + Sync + std::fmt::Debug {
    /// `record`'s response has ended after `bytes_sent` bytes.
    fn finished(&self, record: &AccessRecord, bytes_sent: u64);
}

/// What is known about a request when its response starts; completed by [`AccessRecord::finish`].
#[derive(Debug)]
pub struct AccessRecord {
    /// When the request head arrived.
    pub start: Instant,
    /// The client's address.
    pub peer: SocketAddr,
    /// The client's identity, if it presented a certificate (shared with its connection).
    pub identity: Option<Arc<ClientIdentity>>,
    /// Request method.
    pub method: Method,
    /// The path as received (before normalization), without the query; only kept when the
    /// access log is on.
    pub path: Option<String>,
    /// Response status.
    pub status: u16,
    /// The rule that refused the request, if any.
    pub rule: Option<String>,
    /// What went wrong while the body streamed, if anything.
    pub error: Option<&'static str>,
    /// The request counters of the route that answered.
    pub counters: Arc<RouteCounters>,
    /// Whether to write the log line (`[log] access`); metrics are always recorded.
    pub log: bool,
    /// Where to record the request.
    pub metrics: Arc<Metrics>,
    /// The request in flight on its connection, ended when this record is (with the response).
    pub request: crate::response::in_flight::Request,
    /// Request body bytes as the client declared them (`Content-Length`), 0 when it did not.
    pub bytes_in: u64,
    /// Told when the response has ended, when the operator's page is on.
    pub ledger: Option<Arc<dyn Ledger>>,
    /// How long a queued request waited for its turn (spec §15); `None` when not queued.
    pub queue_wait: Option<std::time::Duration>,
}

impl AccessRecord {
    /// Records an error that cut the body short.
    pub fn note_error(&mut self, what: &'static str) {
        self.error.get_or_insert(what);
    }

    /// Records the request and writes the line.
    pub fn finish(self, bytes_sent: u64) {
        let seconds = self.start.elapsed().as_secs_f64();
        self.metrics.request(&self.counters, self.status, seconds);
        if let Some(ledger) = &self.ledger {
            ledger.finished(&self, bytes_sent);
        }
        if let Some(e) = self.error {
            self.metrics.upstream_error(match e {
                "upstream idle timeout" => "idle_timeout",
                _ => "body",
            });
        }
        if !self.log {
            return;
        }
        let duration_ms = seconds * 1000.0;
        tracing::info!(
            target: crate::ops::logging::ACCESS_TARGET,
            client = %self.peer,
            dn = self.identity.as_ref().map_or("-", |i| i.subject_dn.as_str()),
            verify = if self.identity.is_some() { "SUCCESS" } else { "NONE" },
            method = %self.method,
            path = self.path.as_deref().unwrap_or("-"),
            status = self.status,
            bytes = bytes_sent,
            duration_ms = (duration_ms * 1000.0).round() / 1000.0,
            rule = self.rule.as_deref().unwrap_or("-"),
            error = self.error.unwrap_or("-"),
            queue_wait_ms = self
                .queue_wait
                .map(|w| (w.as_secs_f64() * 1_000_000.0).round() / 1000.0),
            "request"
        );
    }
}
