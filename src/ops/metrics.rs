//! Prometheus metrics (prefix `certgate_`), served by the admin listener. Every label has a
//! bounded set of values: status classes, route and rule labels from the config, handshake
//! failure reasons from a fixed list, upstream error kinds — never a per-client value.

use std::sync::atomic::{AtomicI64, Ordering};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

/// The request counters of one route label, one per status class, looked up once when the
/// runtime is built so that counting a request costs one atomic add and no allocation.
#[derive(Debug)]
pub struct RouteCounters([Counter; 5]);

impl RouteCounters {
    fn inc(&self, status: u16) {
        let class = match status {
            100..=199 => 0,
            200..=299 => 1,
            300..=399 => 2,
            400..=499 => 3,
            _ => 4,
        };
        self.0[class].inc();
    }
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
        .collect()
}

/// The metrics of one upstream server, looked up once when the runtime is built. Labels:
/// the group's name and the server's URL as configured, so bounded by the config.
#[derive(Debug, Clone)]
pub struct ServerStats {
    /// Requests sent to it.
    pub requests: Counter,
    /// Requests in flight on it now.
    pub in_flight: Gauge,
    /// 1 while it takes new requests, 0 while down.
    pub healthy: Gauge,
    /// Clients bound to it (balance = "identity").
    pub bound: Gauge,
    failures: [Counter; 3],
}

impl ServerStats {
    /// A failure of a real request: `connect`, `timeout` or `protocol`.
    pub fn failure(&self, kind: &str) {
        let i = match kind {
            "connect" => 0,
            "timeout" => 1,
            _ => 2,
        };
        self.failures[i].inc();
    }
}

/// The metrics of one queue (spec §15), label `queue`.
#[derive(Debug, Clone)]
pub struct QueueStats {
    /// Slots per server.
    pub slots: Gauge,
    /// Slots in use now.
    pub busy: Gauge,
    /// Jobs waiting now.
    pub waiting: Gauge,
    /// How long jobs waited, seconds.
    pub wait: Histogram,
    /// Jobs that ran to their end.
    pub jobs: Counter,
    /// Slot-seconds used.
    pub busy_seconds: Counter<f64, std::sync::atomic::AtomicU64>,
    /// Refused: the person had `max_waiting` jobs waiting.
    pub full: Counter,
    /// Refused: waited `max_wait`.
    pub timeout: Counter,
}

/// All of certgate's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<Labels, Counter>,
    duration: Histogram,
    handshake_failures: Family<Labels, Counter>,
    connections_refused: Family<Labels, Counter>,
    open_connections: Gauge,
    upstream_errors: Family<Labels, Counter>,
    rate_limited: Family<Labels, Counter>,
    denied: Family<Labels, Counter>,
    reloads: Family<Labels, Counter>,
    server_cert_not_after: Gauge,
    crl_next_update: Family<Labels, Gauge>,
    client_cert_soonest_expiry: Gauge,
    soonest: AtomicI64,
    server_requests: Family<Labels, Counter>,
    server_failures: Family<Labels, Counter>,
    server_in_flight: Family<Labels, Gauge>,
    server_healthy: Family<Labels, Gauge>,
    server_bound: Family<Labels, Gauge>,
    shared_unavailable: Counter,
    shared_available: Gauge,
    queue_slots: Family<Labels, Gauge>,
    queue_busy: Family<Labels, Gauge>,
    queue_waiting: Family<Labels, Gauge>,
    queue_wait: Family<Labels, Histogram, fn() -> Histogram>,
    queue_jobs: Family<Labels, Counter>,
    queue_rejected: Family<Labels, Counter>,
    queue_busy_seconds: Family<Labels, Counter<f64, std::sync::atomic::AtomicU64>>,
}

/// Queue waits: from 10 ms to about 45 minutes.
fn queue_wait_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 2.0, 19))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("certgate");
        let m = Metrics {
            requests: Family::default(),
            duration: Histogram::new(exponential_buckets(0.0005, 2.0, 18)),
            handshake_failures: Family::default(),
            connections_refused: Family::default(),
            open_connections: Gauge::default(),
            upstream_errors: Family::default(),
            rate_limited: Family::default(),
            denied: Family::default(),
            reloads: Family::default(),
            server_cert_not_after: Gauge::default(),
            crl_next_update: Family::default(),
            client_cert_soonest_expiry: Gauge::default(),
            soonest: AtomicI64::new(i64::MAX),
            server_requests: Family::default(),
            server_failures: Family::default(),
            server_in_flight: Family::default(),
            server_healthy: Family::default(),
            server_bound: Family::default(),
            shared_unavailable: Counter::default(),
            shared_available: Gauge::default(),
            queue_slots: Family::default(),
            queue_busy: Family::default(),
            queue_waiting: Family::default(),
            queue_wait: Family::new_with_constructor(queue_wait_histogram),
            queue_jobs: Family::default(),
            queue_rejected: Family::default(),
            queue_busy_seconds: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "requests",
            "Requests answered, by status class and route",
            m.requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from request head to the end of the response body",
            m.duration.clone(),
        );
        registry.register(
            "tls_handshake_failures",
            "Failed TLS handshakes by reason",
            m.handshake_failures.clone(),
        );
        registry.register(
            "connections_refused",
            "Connections closed before the handshake, by reason",
            m.connections_refused.clone(),
        );
        registry.register(
            "open_connections",
            "Client connections open now",
            m.open_connections.clone(),
        );
        registry.register(
            "upstream_errors",
            "Backend failures by kind",
            m.upstream_errors.clone(),
        );
        registry.register(
            "upstream_server_requests",
            "Requests sent to each upstream server",
            m.server_requests.clone(),
        );
        registry.register(
            "upstream_server_failures",
            "Failed requests to each upstream server, by kind (connect, timeout, protocol)",
            m.server_failures.clone(),
        );
        registry.register(
            "upstream_server_in_flight",
            "Requests in flight on each upstream server",
            m.server_in_flight.clone(),
        );
        registry.register(
            "upstream_server_healthy",
            "1 while an upstream server takes new requests, 0 while it is down",
            m.server_healthy.clone(),
        );
        registry.register(
            "upstream_server_bound_clients",
            "Clients bound to each upstream server (balance = identity); drain a server until this is 0",
            m.server_bound.clone(),
        );
        registry.register(
            "shared_unavailable",
            "Rate-limit checks Redis did not answer in time ([shared]); on_unavailable decided them",
            m.shared_unavailable.clone(),
        );
        registry.register(
            "shared_available",
            "1 while Redis answers the shared rate-limit checks, 0 during an outage",
            m.shared_available.clone(),
        );
        registry.register(
            "rate_limited",
            "Requests refused by a rate limit, by zone",
            m.rate_limited.clone(),
        );
        registry.register(
            "denied",
            "Requests refused by a rule (route, method, IP, identity, token, rate, body)",
            m.denied.clone(),
        );
        registry.register("reloads", "Reloads by result", m.reloads.clone());
        registry.register(
            "server_certificate_not_after_seconds",
            "Expiry of the server certificate, Unix time",
            m.server_cert_not_after.clone(),
        );
        registry.register(
            "crl_next_update_seconds",
            "Next update of each configured CRL, Unix time",
            m.crl_next_update.clone(),
        );
        registry.register(
            "client_certificate_soonest_expiry_seconds",
            "The earliest expiry among client certificates seen since start, Unix time",
            m.client_cert_soonest_expiry.clone(),
        );
        registry.register(
            "queue_slots",
            "Jobs each queue lets the backend run at once (per server)",
            m.queue_slots.clone(),
        );
        registry.register(
            "queue_busy",
            "Slots of each queue in use now",
            m.queue_busy.clone(),
        );
        registry.register(
            "queue_waiting",
            "Jobs waiting in each queue now",
            m.queue_waiting.clone(),
        );
        registry.register(
            "queue_wait_seconds",
            "How long jobs waited for their turn",
            m.queue_wait.clone(),
        );
        registry.register(
            "queue_jobs",
            "Jobs each queue ran to their end",
            m.queue_jobs.clone(),
        );
        registry.register(
            "queue_rejected",
            "Jobs refused by each queue, by reason (full, timeout)",
            m.queue_rejected.clone(),
        );
        registry.register(
            "queue_busy_seconds",
            "Slot-seconds each queue's jobs used",
            m.queue_busy_seconds.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The series of queue `queue`, looked up once when the queue is made, so that a job
    /// costs atomic updates and no label allocation.
    pub fn queue_stats(&self, queue: &str) -> QueueStats {
        let l = labels(&[("queue", queue)]);
        let rejected = |reason: &str| {
            self.queue_rejected
                .get_or_create(&labels(&[("queue", queue), ("reason", reason)]))
                .clone()
        };
        QueueStats {
            slots: self.queue_slots.get_or_create(&l).clone(),
            busy: self.queue_busy.get_or_create(&l).clone(),
            waiting: self.queue_waiting.get_or_create(&l).clone(),
            wait: self.queue_wait.get_or_create(&l).clone(),
            jobs: self.queue_jobs.get_or_create(&l).clone(),
            busy_seconds: self.queue_busy_seconds.get_or_create(&l).clone(),
            full: rejected("full"),
            timeout: rejected("timeout"),
        }
    }

    /// The counters for one route label (`route[2] /api`, or `none`).
    pub fn route_counters(&self, route: &str) -> std::sync::Arc<RouteCounters> {
        std::sync::Arc::new(RouteCounters(["1xx", "2xx", "3xx", "4xx", "5xx"].map(
            |class| {
                self.requests
                    .get_or_create(&labels(&[("class", class), ("route", route)]))
                    .clone()
            },
        )))
    }

    /// A request finished.
    pub fn request(&self, counters: &RouteCounters, status: u16, seconds: f64) {
        counters.inc(status);
        self.duration.observe(seconds);
    }

    /// A handshake failed.
    pub fn handshake_failure(&self, reason: &str) {
        self.handshake_failures
            .get_or_create(&labels(&[("reason", reason)]))
            .inc();
    }

    /// A connection was closed before the handshake.
    pub fn connection_refused(&self, reason: &str) {
        self.connections_refused
            .get_or_create(&labels(&[("reason", reason)]))
            .inc();
    }

    /// The backend failed.
    pub fn upstream_error(&self, kind: &str) {
        self.upstream_errors
            .get_or_create(&labels(&[("kind", kind)]))
            .inc();
    }

    /// A rule refused a request.
    pub fn denied(&self, rule: &str) {
        self.denied.get_or_create(&labels(&[("rule", rule)])).inc();
    }

    /// The metrics of server `server` of group `group`.
    pub fn server_stats(&self, group: &str, server: &str) -> ServerStats {
        let l = labels(&[("upstream", group), ("server", server)]);
        let failure = |kind: &str| {
            self.server_failures
                .get_or_create(&labels(&[
                    ("upstream", group),
                    ("server", server),
                    ("kind", kind),
                ]))
                .clone()
        };
        ServerStats {
            requests: self.server_requests.get_or_create(&l).clone(),
            in_flight: self.server_in_flight.get_or_create(&l).clone(),
            healthy: self.server_healthy.get_or_create(&l).clone(),
            bound: self.server_bound.get_or_create(&l).clone(),
            failures: [failure("connect"), failure("timeout"), failure("protocol")],
        }
    }

    /// A shared rate-limit check Redis did not answer.
    pub fn shared_unavailable(&self) {
        self.shared_unavailable.inc();
    }

    /// Redis answers shared checks (or no longer does).
    pub fn shared_up(&self, up: bool) {
        self.shared_available.set(i64::from(up));
    }

    /// A rate limit refused a request.
    pub fn rate_limited(&self, zone: &str) {
        self.rate_limited
            .get_or_create(&labels(&[("zone", zone)]))
            .inc();
    }

    /// A reload finished.
    pub fn reload(&self, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        self.reloads
            .get_or_create(&labels(&[("result", result)]))
            .inc();
    }

    /// The server certificate in use expires at `unix`.
    pub fn set_server_cert_not_after(&self, unix: i64) {
        self.server_cert_not_after.set(unix);
    }

    /// The CRLs in use: `(file name, next update)`; replaces the previous set.
    pub fn set_crls(&self, crls: &[(String, i64)]) {
        self.crl_next_update.clear();
        for (name, next) in crls {
            self.crl_next_update
                .get_or_create(&labels(&[("crl", name)]))
                .set(*next);
        }
    }

    /// A client certificate expiring at `unix` completed a handshake.
    pub fn client_cert_seen(&self, unix: i64) {
        let prev = self.soonest.fetch_min(unix, Ordering::Relaxed);
        if unix < prev {
            self.client_cert_soonest_expiry.set(unix);
        }
    }

    /// The Prometheus text format, with the open-connection count read now.
    pub fn render(&self, open_connections: usize) -> String {
        self.open_connections
            .set(i64::try_from(open_connections).unwrap_or(i64::MAX));
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
