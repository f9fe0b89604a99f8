//! A group of servers that serve one app (spec §11): each server with its own keep-alive pool,
//! health and load; the group's balancing; and, for `identity`, the bindings that keep a client
//! on its server while that server is healthy, so a Gradio session always meets the process
//! that holds it.
//!
//! A group of one server is what `[upstream] url = ...` always was: no health gating (nginx
//! ignores `max_fails` for a lone server too), no bindings, nothing on the hot path.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::uri::{Authority, PathAndQuery};
use tokio_util::sync::{CancellationToken, DropGuard};

use super::balance::{Balance, ClientKey, rendezvous_order, two_choices};
use super::pool::Pool;
use super::{POOL_IDLE_TIMEOUT, Upstream};
use crate::ops::metrics::{Metrics, ServerStats};
use crate::response::body::LimitedBody;

/// Most clients a group remembers bindings for. A newcomer past it is still bound: the least
/// recently seen bindings make room, clients without a certificate first, so a flood of
/// addresses cannot refuse bindings to newcomers or push out the people with certificates.
const MAX_BINDINGS: usize = 100_000;

/// How many bindings one eviction frees when the table is full (1/16 of it): one pass over
/// the table per that many newcomers, not one per newcomer.
const EVICT_BATCH: usize = MAX_BINDINGS / 16;

/// A binding this replica has not used for this long is checked against the shared store on
/// the client's next request: another replica may have moved the client meanwhile (its
/// server failed there), and a person's next connection may land on either replica. Within a
/// burst of requests the local binding stands alone; a pause costs one read.
const RECHECK_AFTER: Duration = Duration::from_secs(5);

/// The answer of a [`SharedBindings`] read.
pub type Recalled<'a> = std::pin::Pin<Box<dyn Future<Output = Option<String>> + Send + 'a>>;

/// Whether a [`SharedBindings`] write was stored.
pub type Stored = std::pin::Pin<Box<dyn Future<Output = bool> + Send + 'static>>;

/// Where identity bindings are shared with the other replicas (`[shared]`'s Redis): the server
/// a client was bound or moved to, for `affinity_timeout`. Both sides are bounded by the
/// store's own timeout and degrade to the replica's own choice, as the shared limits do.
pub trait SharedBindings: Send + Sync + std::fmt::Debug {
    /// The server URL a replica last bound `client` (a [`ClientKey`] label) of `group` to;
    /// `None` when there is none or the store cannot answer in time.
    fn recall<'a>(&'a self, group: &'a str, client: &'a str) -> Recalled<'a>;
    /// Records that `client` of `group` is bound to `server` for `ttl`; the future says
    /// whether the store has it (within the store's timeout).
    fn remember(&self, group: &str, client: &str, server: &str, ttl: Duration) -> Stored;
}

/// One server of a group, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSettings {
    /// As configured: the metric label and what bindings remember.
    pub url: String,
    /// `host:port`, to build request URIs.
    pub authority: Authority,
    /// Share of new clients, relative to the others.
    pub weight: u32,
    /// Keeps its bound clients, gets no new ones.
    pub drain: bool,
}

/// `[upstream.health]`: the active checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthSettings {
    /// GET this; 2xx or 3xx is healthy.
    pub path: PathAndQuery,
    /// Between checks.
    pub interval: Duration,
    /// For one check's answer.
    pub timeout: Duration,
    /// Consecutive passes to be healthy again.
    pub rise: u32,
    /// Consecutive failures to be down.
    pub fall: u32,
}

/// A group's servers as the operator's page shows them.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GroupStatus {
    /// `default` for `[upstream]`, else the `[upstreams.NAME]` name.
    pub name: String,
    /// How new clients are placed.
    pub balance: &'static str,
    /// Its servers, in config order.
    pub servers: Vec<ServerStatus>,
}

/// One server as the operator's page shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ServerStatus {
    /// As configured.
    pub url: String,
    /// Takes new requests (a lone server always does).
    pub healthy: bool,
    /// Requests in flight.
    pub in_flight: usize,
    /// Clients bound to it (identity affinity).
    pub bound: usize,
    /// Share of new clients.
    pub weight: u32,
    /// Keeps its clients, gets no new ones.
    pub drain: bool,
}

/// Why a server is up or down, and the passive failure window; shared across reloads by URL.
#[derive(Debug, Default)]
struct HealthState {
    /// The active checks' verdict (up until `fall` failures).
    active_down: bool,
    ok_streak: u32,
    fail_streak: u32,
    /// Recent failures of real requests, within `fail_timeout`.
    failures: VecDeque<Instant>,
    /// Marked down by passive failures until then.
    passive_until: Option<Instant>,
}

/// A server's health and load, which outlive a reload that keeps the server.
#[derive(Debug, Default)]
pub(super) struct Health {
    state: Mutex<HealthState>,
    /// The last availability logged, so each change is logged once.
    reported_down: AtomicBool,
    in_flight: AtomicUsize,
}

/// One server of a group, running.
#[derive(Debug)]
pub(super) struct Server {
    pub(super) settings: ServerSettings,
    pub(super) pool: Arc<Pool>,
    /// The group's response-header limit.
    pub(super) response_timeout: Duration,
    /// The group's longest silence inside a body.
    idle_timeout: Duration,
    health: Arc<Health>,
    pub(super) stats: ServerStats,
}

impl Server {
    /// Whether new requests may go to it: the active checks have not failed it and passive
    /// failures have not marked it down. A group of one server is always available.
    fn available(&self, now: Instant) -> bool {
        let st = self.health.state.lock().unwrap_or_else(|e| e.into_inner());
        !st.active_down && st.passive_until.is_none_or(|t| now >= t)
    }

    /// Counts a request in flight; the guard counts it out.
    pub(super) fn begin(self: &Arc<Self>) -> InFlightGuard {
        self.health.in_flight.fetch_add(1, Ordering::AcqRel);
        self.stats.in_flight.inc();
        self.stats.requests.inc();
        InFlightGuard(self.clone())
    }

    fn load(&self) -> usize {
        self.health.in_flight.load(Ordering::Acquire)
    }
}

/// One request in flight on a server.
#[derive(Debug)]
pub(super) struct InFlightGuard(Arc<Server>);

impl InFlightGuard {
    /// The longest silence the server's response body may have.
    pub(super) fn idle_timeout(&self) -> Duration {
        self.0.idle_timeout
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.health.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.0.stats.in_flight.dec();
    }
}

/// A client's binding to a server.
#[derive(Debug, Clone)]
struct Binding {
    server: Arc<str>,
    seen: Instant,
    /// The client's rendezvous order over the servers when it was bound, kept so a bound
    /// client's requests hash nothing.
    order: Ranked,
    /// When the shared store was last told (`None`: not yet, it could not be told, or it must
    /// be told again). A binding the store does not have yet is newer than what the store
    /// says, so it is not checked against it.
    written: Option<Instant>,
}

/// Server URLs in a client's rendezvous order.
type Ranked = Arc<[Arc<str>]>;

/// A running group.
#[derive(Debug)]
pub(super) struct Group {
    pub(super) name: Arc<str>,
    pub(super) servers: Vec<Arc<Server>>,
    balance: Balance,
    affinity_timeout: Duration,
    max_fails: u32,
    fail_timeout: Duration,
    bindings: Arc<Mutex<HashMap<ClientKey, Binding>>>,
    /// With `[shared]`: the bindings other replicas see.
    shared: Option<Arc<dyn SharedBindings>>,
    next: AtomicUsize,
    /// Stops the active checks when the group is replaced by a reload.
    _checks: Option<DropGuard>,
}

impl Group {
    /// Builds a group from its settings. Health, load and bindings of servers that `previous`
    /// (the group of the same name before a reload) also had are carried over, so a reload
    /// moves nobody and forgets no failure.
    pub(super) fn new(
        settings: &Upstream,
        metrics: &Metrics,
        previous: Option<&Group>,
        shared: Option<Arc<dyn SharedBindings>>,
    ) -> Group {
        let name: Arc<str> = Arc::from(settings.name.as_str());
        let servers: Vec<Arc<Server>> = settings
            .servers
            .iter()
            .map(|s| {
                let health = previous
                    .and_then(|p| p.servers.iter().find(|o| o.settings.url == s.url))
                    .map_or_else(Arc::default, |o| o.health.clone());
                let stats = metrics.server_stats(&name, &s.url);
                stats
                    .healthy
                    .set(i64::from(!health.reported_down.load(Ordering::Acquire)));
                Arc::new(Server {
                    settings: s.clone(),
                    pool: Arc::new(Pool::new(
                        s.authority.clone(),
                        settings.connect_timeout,
                        settings.max_idle_connections,
                        POOL_IDLE_TIMEOUT,
                    )),
                    response_timeout: settings.response_timeout,
                    idle_timeout: settings.idle_timeout,
                    health,
                    stats,
                })
            })
            .collect();
        let bindings = previous.map_or_else(Arc::default, |p| p.bindings.clone());
        let mut group = Group {
            name,
            servers,
            balance: settings.balance,
            affinity_timeout: settings.affinity_timeout,
            max_fails: settings.max_fails,
            fail_timeout: settings.fail_timeout,
            bindings,
            shared,
            next: AtomicUsize::new(0),
            _checks: None,
        };
        if let (Some(health), true) = (&settings.health, group.servers.len() > 1) {
            let cancel = CancellationToken::new();
            for server in &group.servers {
                tokio::spawn(check_loop(
                    group.name.clone(),
                    server.clone(),
                    health.clone(),
                    cancel.clone(),
                ));
            }
            group._checks = Some(cancel.drop_guard());
        }
        group
    }

    /// The servers a request from `key` tries, in order: for `identity` its bound server while
    /// it is available (another replica's binding when this one has none of its own or has
    /// not used it for a while), then the rendezvous order over available servers that are
    /// not draining; for the others the balancer's pick first. Empty when no server is
    /// available.
    pub(super) async fn candidates(&self, key: &ClientKey) -> Vec<Arc<Server>> {
        if let [only] = self.servers.as_slice() {
            return vec![only.clone()];
        }
        if self.balance == Balance::Identity {
            self.recall(key).await;
        }
        self.order(key)
    }

    /// With `[shared]`: adopts the binding another replica made for `key`, when this replica
    /// has none, or has not used its own for [`RECHECK_AFTER`] and the store has it (a move
    /// this replica could not store, during a Redis outage, is newer than what Redis says).
    /// What the store answers is taken only if it names a server of this group.
    async fn recall(&self, key: &ClientKey) {
        let Some(store) = &self.shared else { return };
        let now = Instant::now();
        let keep = self
            .bindings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .is_some_and(|b| now.duration_since(b.seen) < RECHECK_AFTER || b.written.is_none());
        if keep {
            return;
        }
        let Some(url) = store.recall(&self.name, &key.label()).await else {
            return;
        };
        let Some(server) = self.servers.iter().find(|s| s.settings.url == url) else {
            return;
        };
        let now = Instant::now();
        let mut bindings = self.bindings.lock().unwrap_or_else(|e| e.into_inner());
        // A new binding's time left in the store is another replica's: it is told again on
        // the next answered request (`written` stays `None`), with this replica's full
        // affinity_timeout. A moved one keeps what it knew of the store.
        self.bind(&mut bindings, key, server, now);
    }

    /// [`Group::candidates`] once any shared binding has been adopted.
    fn order(&self, key: &ClientKey) -> Vec<Arc<Server>> {
        let now = Instant::now();
        let open: Vec<usize> = (0..self.servers.len())
            .filter(|&i| self.servers[i].available(now))
            .collect();
        let fresh = |i: &usize| !self.servers[*i].settings.drain;
        let mut order: Vec<usize> = Vec::with_capacity(open.len());
        match self.balance {
            Balance::Identity => {
                let index = |url: &str| self.servers.iter().position(|s| *s.settings.url == *url);
                let ranked = match self.bound(key, now) {
                    Some((bound, ranked)) => {
                        if let Some(i) = index(&bound).filter(|i| open.contains(i)) {
                            order.push(i);
                        }
                        ranked
                    }
                    None => self.rendezvous(key),
                };
                for i in ranked.iter().filter_map(|url| index(url)) {
                    if open.contains(&i) && fresh(&i) && !order.contains(&i) {
                        order.push(i);
                    }
                }
                // Servers a reload added after the client was bound: last, for failover.
                for i in 0..self.servers.len() {
                    if open.contains(&i) && fresh(&i) && !order.contains(&i) {
                        order.push(i);
                    }
                }
            }
            Balance::LeastRequests => {
                let pool: Vec<usize> = open.iter().copied().filter(fresh).collect();
                let loads: Vec<usize> = pool.iter().map(|&i| self.servers[i].load()).collect();
                if let Some(p) = two_choices(&loads, random()) {
                    order.push(pool[p]);
                }
                order.extend(
                    pool.iter()
                        .filter(|i| !order.contains(i))
                        .copied()
                        .collect::<Vec<_>>(),
                );
            }
            Balance::RoundRobin => {
                let pool: Vec<usize> = open.iter().copied().filter(fresh).collect();
                if !pool.is_empty() {
                    let start = self.next.fetch_add(1, Ordering::Relaxed) % pool.len();
                    order.extend(pool[start..].iter().chain(&pool[..start]));
                }
            }
        }
        order.into_iter().map(|i| self.servers[i].clone()).collect()
    }

    /// The server `key` is bound to, if the binding is fresh.
    fn bound(&self, key: &ClientKey, now: Instant) -> Option<(Arc<str>, Ranked)> {
        let bindings = self.bindings.lock().unwrap_or_else(|e| e.into_inner());
        bindings
            .get(key)
            .filter(|b| now.duration_since(b.seen) < self.affinity_timeout)
            .map(|b| (b.server.clone(), b.order.clone()))
    }

    /// `key`'s rendezvous order over this group's servers, as URLs.
    fn rendezvous(&self, key: &ClientKey) -> Ranked {
        let weighted: Vec<(&str, u32)> = self
            .servers
            .iter()
            .map(|s| (s.settings.url.as_str(), s.settings.weight))
            .collect();
        rendezvous_order(key, &weighted)
            .into_iter()
            .map(|i| Arc::from(self.servers[i].settings.url.as_str()))
            .collect()
    }

    /// Binds `key` to `server`, seen `now`: an existing binding moves there (the per-server
    /// gauges follow at once; housekeeping recounts them anyway), else a new one is made (not
    /// yet in the shared store), the least recently seen evicted first when the table is full.
    /// The binding, and whether an existing one moved.
    fn bind<'b>(
        &self,
        bindings: &'b mut HashMap<ClientKey, Binding>,
        key: &ClientKey,
        server: &Server,
        now: Instant,
    ) -> (&'b mut Binding, bool) {
        if bindings.contains_key(key) {
            let b = bindings
                .get_mut(key)
                .expect("present: checked under the same lock");
            let moved = *b.server != *server.settings.url;
            if moved {
                if let Some(old) = self.servers.iter().find(|s| *s.settings.url == *b.server) {
                    old.stats.bound.dec();
                }
                server.stats.bound.inc();
                b.server = Arc::from(server.settings.url.as_str());
            }
            b.seen = now;
            return (b, moved);
        }
        if bindings.len() >= MAX_BINDINGS {
            evict(bindings, now, self.affinity_timeout, EVICT_BATCH);
        }
        server.stats.bound.inc();
        let order = self.rendezvous(key);
        let b = bindings.entry(key.clone()).or_insert(Binding {
            server: Arc::from(server.settings.url.as_str()),
            seen: now,
            order,
            written: None,
        });
        (b, false)
    }

    /// `key` was served by `server`: (re)binds it there, with `identity` and several servers.
    pub(super) fn served(&self, key: &ClientKey, server: &Server) {
        if self.balance != Balance::Identity || self.servers.len() < 2 {
            return;
        }
        let mut bindings = self.bindings.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let (binding, moved) = self.bind(&mut bindings, key, server, now);
        if moved {
            // Moved (its server failed): the other replicas must learn it.
            binding.written = None;
        }
        // Bound or moved: the other replicas learn it. Still there: told again before the
        // store's copy lapses, so a long session stays known.
        if let Some(store) = &self.shared
            && binding
                .written
                .is_none_or(|w| now.duration_since(w) >= self.affinity_timeout / 2)
        {
            binding.written = Some(now);
            let stored = store.remember(
                &self.name,
                &key.label(),
                &server.settings.url,
                self.affinity_timeout,
            );
            // Not stored (Redis down or slow): told again on the client's next request.
            let (bindings, key) = (self.bindings.clone(), key.clone());
            tokio::spawn(async move {
                if !stored.await
                    && let Some(b) = bindings
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get_mut(&key)
                {
                    b.written = None;
                }
            });
        }
    }

    /// A real request to `server` failed to connect or timed out (`kind`): with `max_fails`
    /// such failures within `fail_timeout` the server is down for `fail_timeout`.
    pub(super) fn failed(&self, server: &Server, kind: &'static str) {
        server.stats.failure(kind);
        if self.servers.len() < 2 || self.max_fails == 0 {
            return;
        }
        let now = Instant::now();
        let mut st = server
            .health
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        st.failures.push_back(now);
        while st
            .failures
            .front()
            .is_some_and(|t| now.duration_since(*t) > self.fail_timeout)
        {
            st.failures.pop_front();
        }
        if st.failures.len() >= self.max_fails as usize {
            st.failures.clear();
            st.passive_until = Some(now + self.fail_timeout);
            drop(st);
            report(
                &self.name,
                server,
                false,
                &format!(
                    "{} failed requests ({kind}) within {}",
                    self.max_fails,
                    humantime::format_duration(self.fail_timeout)
                ),
            );
        }
    }

    /// Forgets stale bindings; updates the bound-clients gauges and notices servers whose
    /// passive down time ran out.
    pub(super) fn housekeeping(&self) {
        let now = Instant::now();
        let mut per_server: HashMap<Arc<str>, i64> = HashMap::new();
        {
            let mut bindings = self.bindings.lock().unwrap_or_else(|e| e.into_inner());
            bindings.retain(|_, b| now.duration_since(b.seen) < self.affinity_timeout);
            for b in bindings.values() {
                *per_server.entry(b.server.clone()).or_default() += 1;
            }
        }
        for s in &self.servers {
            s.stats.bound.set(
                per_server
                    .get(s.settings.url.as_str())
                    .copied()
                    .unwrap_or(0),
            );
            if self.servers.len() > 1 && s.available(now) {
                report(&self.name, s, true, "its passive down time ran out");
            }
        }
    }

    /// Each server's state now, for the operator's page.
    pub(super) fn status(&self) -> GroupStatus {
        let now = Instant::now();
        let mut bound: HashMap<Arc<str>, usize> = HashMap::new();
        {
            let bindings = self.bindings.lock().unwrap_or_else(|e| e.into_inner());
            for b in bindings.values() {
                if now.duration_since(b.seen) < self.affinity_timeout {
                    *bound.entry(b.server.clone()).or_default() += 1;
                }
            }
        }
        GroupStatus {
            name: self.name.to_string(),
            balance: self.balance.as_str(),
            servers: self
                .servers
                .iter()
                .map(|s| ServerStatus {
                    url: s.settings.url.clone(),
                    healthy: self.servers.len() == 1 || s.available(now),
                    in_flight: s.load(),
                    bound: bound.get(s.settings.url.as_str()).copied().unwrap_or(0),
                    weight: s.settings.weight,
                    drain: s.settings.drain,
                })
                .collect(),
        }
    }

    /// The server each of `fingerprints` is bound to, where it is (fresh bindings only).
    pub(super) fn bound_to(&self, fingerprints: &[&str], out: &mut HashMap<String, String>) {
        let now = Instant::now();
        let bindings = self.bindings.lock().unwrap_or_else(|e| e.into_inner());
        if bindings.is_empty() {
            return;
        }
        for f in fingerprints {
            if let Some(b) = bindings.get(&ClientKey::Cert(Arc::from(*f)))
                && now.duration_since(b.seen) < self.affinity_timeout
            {
                out.insert((*f).to_string(), format!("{} {}", self.name, b.server));
            }
        }
    }

    /// Why a new client would get no server now, if it would (for `/readyz`): ready means a
    /// new client is served, so a healthy server that is draining does not count — it still
    /// serves the clients bound to it but takes no new ones. A group of one server always
    /// serves (draining or not, it has nowhere else to send anyone).
    pub(super) fn unready(&self) -> Option<&'static str> {
        if self.servers.len() == 1 {
            return None;
        }
        let now = Instant::now();
        let healthy: Vec<&Arc<Server>> = self.servers.iter().filter(|s| s.available(now)).collect();
        if healthy.is_empty() {
            Some("has no healthy server")
        } else if healthy.iter().all(|s| s.settings.drain) {
            Some("has no healthy server that takes new clients (every healthy one is draining)")
        } else {
            None
        }
    }
}

/// Makes room in a full table: drops the stale bindings, and if that freed fewer than `batch`,
/// the least recently seen until it has, anonymous clients' before certificate holders'. (The
/// bound-clients gauges are recounted by the next housekeeping.)
fn evict(
    bindings: &mut HashMap<ClientKey, Binding>,
    now: Instant,
    affinity_timeout: Duration,
    batch: usize,
) {
    let full = bindings.len();
    bindings.retain(|_, b| now.duration_since(b.seen) < affinity_timeout);
    let freed = full - bindings.len();
    if freed >= batch {
        return;
    }
    // Oldest first, anonymous before certified: sort keys by (certified, seen).
    let mut ages: Vec<(bool, Instant, ClientKey)> = bindings
        .iter()
        .map(|(k, b)| (matches!(k, ClientKey::Cert(_)), b.seen, k.clone()))
        .collect();
    let n = (batch - freed).min(ages.len());
    if n == 0 {
        return;
    }
    ages.select_nth_unstable_by(n - 1, |a, b| (a.0, a.1).cmp(&(b.0, b.1)));
    for (_, _, key) in ages.drain(..n) {
        bindings.remove(&key);
    }
}

/// Logs a change of a server's availability once, and sets its health gauge.
fn report(group: &str, server: &Server, up: bool, why: &str) {
    let down = !up;
    let was_down = server.health.reported_down.swap(down, Ordering::AcqRel);
    if was_down == down {
        return;
    }
    server.stats.healthy.set(i64::from(up));
    if up {
        tracing::info!(upstream = group, server = %server.settings.url, reason = why, "upstream server is up again");
    } else {
        tracing::warn!(upstream = group, server = %server.settings.url, reason = why, "upstream server is down; its clients move to their next server");
    }
}

/// The active checks of one server: a GET of `health.path` every `interval`; `fall`
/// consecutive failures take it down, `rise` consecutive passes bring it back.
async fn check_loop(
    group: Arc<str>,
    server: Arc<Server>,
    health: HealthSettings,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(health.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let verdict = probe(&server, &health).await;
        let mut st = server
            .health
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match verdict {
            Ok(()) => {
                st.ok_streak += 1;
                st.fail_streak = 0;
                if st.active_down && st.ok_streak >= health.rise {
                    st.active_down = false;
                    st.passive_until = None;
                    drop(st);
                    report(&group, &server, true, "health check passed");
                }
            }
            Err(why) => {
                st.fail_streak += 1;
                st.ok_streak = 0;
                if !st.active_down && st.fail_streak >= health.fall {
                    st.active_down = true;
                    drop(st);
                    report(&group, &server, false, &format!("health check: {why}"));
                }
            }
        }
    }
}

/// One health check.
async fn probe(server: &Server, health: &HealthSettings) -> Result<(), String> {
    let req = http::Request::get(http::Uri::from(health.path.clone()))
        .header(http::header::HOST, server.settings.authority.as_str())
        .header(http::header::USER_AGENT, "certgate-health-check")
        .body(LimitedBody::empty())
        .map_err(|e| e.to_string())?;
    match tokio::time::timeout(health.timeout, server.pool.send(req)).await {
        Err(_) => Err(format!(
            "no answer within {}",
            humantime::format_duration(health.timeout)
        )),
        Ok(Err(e)) => Err(e.cause()),
        Ok(Ok((resp, _lease))) => {
            let status = resp.status();
            // Read the body so the connection can go back to the pool.
            let _ = tokio::time::timeout(
                health.timeout,
                http_body_util::BodyExt::collect(resp.into_body()),
            )
            .await;
            if status.is_success() || status.is_redirection() {
                Ok(())
            } else {
                Err(format!("answered {status}"))
            }
        }
    }
}

/// Randomness for the power of two choices; quality matters little, cost does.
fn random() -> u64 {
    let mut b = [0u8; 8];
    let _ = aws_lc_rs::rand::fill(&mut b);
    u64::from_ne_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(affinity_timeout: Duration) -> Group {
        let server = |url: &str| ServerSettings {
            url: url.to_string(),
            authority: url.trim_start_matches("http://").parse().unwrap(),
            weight: 1,
            drain: false,
        };
        let settings = Upstream {
            name: "default".into(),
            servers: vec![server("http://10.0.0.1:80"), server("http://10.0.0.2:80")],
            balance: Balance::Identity,
            affinity_timeout,
            health: None,
            max_fails: 2,
            fail_timeout: Duration::from_secs(10),
            max_idle_connections: 1,
            connect_timeout: Duration::from_secs(1),
            response_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
        };
        Group::new(&settings, &Metrics::new(), None, None)
    }

    /// An in-process store: what another replica would have written to Redis.
    #[derive(Debug, Default)]
    struct Store {
        bound: Mutex<HashMap<String, String>>,
        reads: AtomicUsize,
        writes: Mutex<Vec<(String, String)>>,
        failing: AtomicBool,
    }

    impl SharedBindings for Store {
        fn recall<'a>(&'a self, group: &'a str, client: &'a str) -> Recalled<'a> {
            self.reads.fetch_add(1, Ordering::Relaxed);
            let found = self
                .bound
                .lock()
                .unwrap()
                .get(&format!("{group}:{client}"))
                .cloned();
            Box::pin(async move { found })
        }
        fn remember(&self, group: &str, client: &str, server: &str, _ttl: Duration) -> Stored {
            self.writes
                .lock()
                .unwrap()
                .push((format!("{group}:{client}"), server.to_string()));
            let stored = !self.failing.load(Ordering::Relaxed);
            Box::pin(async move { stored })
        }
    }

    fn shared_group(store: &Arc<Store>) -> Group {
        let mut g = group(Duration::from_secs(3600));
        g.shared = Some(store.clone() as Arc<dyn SharedBindings>);
        g
    }

    /// A client this replica never saw goes where another replica bound it; a binding this
    /// replica used a moment ago is not read again; one it has not used for a while is
    /// checked and follows the other replica's move; a value that names no server of the
    /// group is ignored.
    #[tokio::test]
    async fn a_shared_binding_is_adopted_when_this_replica_has_none_or_an_old_one() {
        let store = Arc::new(Store::default());
        let g = shared_group(&store);
        let (a, b) = (&g.servers[0], &g.servers[1]);
        let url = |s: &Server| s.settings.url.clone();
        let k = cert(7);
        let first = g.rendezvous(&k)[0].to_string();
        let other = if first == url(a) { url(b) } else { url(a) };
        let label = format!("default:{}", k.label());
        store
            .bound
            .lock()
            .unwrap()
            .insert(label.clone(), other.clone());
        let adopted = g.candidates(&k).await[0].clone();
        assert_eq!(adopted.settings.url, other, "not adopted");
        g.served(&k, &adopted);

        // Used just now: the store is not asked again.
        let reads = store.reads.load(Ordering::Relaxed);
        let _ = g.candidates(&k).await;
        assert_eq!(store.reads.load(Ordering::Relaxed), reads);

        // Another replica moved it back; this replica's binding is old: it follows.
        store
            .bound
            .lock()
            .unwrap()
            .insert(label.clone(), first.clone());
        g.bindings.lock().unwrap().get_mut(&k).unwrap().seen -= RECHECK_AFTER * 2;
        assert_eq!(
            g.candidates(&k).await[0].settings.url,
            first,
            "move not followed"
        );

        // Garbage from the store changes nothing.
        let k2 = cert(8);
        let label2 = format!("default:{}", k2.label());
        store
            .bound
            .lock()
            .unwrap()
            .insert(label2, "http://elsewhere:1".into());
        let mine = g.rendezvous(&k2)[0].to_string();
        assert_eq!(g.candidates(&k2).await[0].settings.url, mine);
    }

    /// The store is told when a client is bound and when it moves, not on every request.
    #[tokio::test]
    async fn bindings_are_written_when_made_or_moved_only() {
        let store = Arc::new(Store::default());
        let g = shared_group(&store);
        let (a, b) = (g.servers[0].clone(), g.servers[1].clone());
        let k = cert(3);
        g.served(&k, &a);
        g.served(&k, &a);
        g.served(&k, &b);
        g.served(&k, &b);
        let label = format!("default:{}", k.label());
        let writes = store.writes.lock().unwrap().clone();
        assert_eq!(
            writes,
            vec![
                (label.clone(), a.settings.url.clone()),
                (label, b.settings.url.clone())
            ]
        );
    }

    /// A move the store could not take (Redis down) is told again on the next request, and
    /// until then the store's older answer does not undo it.
    #[tokio::test]
    async fn a_move_redis_missed_is_retried_and_not_undone() {
        let store = Arc::new(Store::default());
        let g = shared_group(&store);
        let (a, b) = (g.servers[0].clone(), g.servers[1].clone());
        let k = cert(5);
        let label = format!("default:{}", k.label());
        g.served(&k, &a);
        store
            .bound
            .lock()
            .unwrap()
            .insert(label.clone(), a.settings.url.clone());
        store.failing.store(true, Ordering::Relaxed);
        g.served(&k, &b);
        // The failed write's task runs.
        while g.bindings.lock().unwrap()[&k].written.is_some() {
            tokio::task::yield_now().await;
        }
        g.bindings.lock().unwrap().get_mut(&k).unwrap().seen -= RECHECK_AFTER * 2;
        assert_eq!(g.candidates(&k).await[0].settings.url, b.settings.url);
        store.failing.store(false, Ordering::Relaxed);
        let before = store.writes.lock().unwrap().len();
        g.served(&k, &b);
        assert_eq!(
            store.writes.lock().unwrap().len(),
            before + 1,
            "not retried"
        );
    }

    fn cert(i: usize) -> ClientKey {
        ClientKey::Cert(Arc::from(format!("{i:064x}").as_str()))
    }

    fn anonymous(i: usize) -> ClientKey {
        ClientKey::anonymous(std::net::IpAddr::V4((i as u32).into()))
    }

    /// An anonymous flood that fills the table: every newcomer is still bound, and the people
    /// with certificates, seen before the flood, keep their bindings.
    #[test]
    fn a_full_table_binds_newcomers_and_keeps_certified_clients() {
        let g = group(Duration::from_secs(3600));
        let server = g.servers[1].clone();
        for i in 0..100 {
            g.served(&cert(i), &server);
        }
        for i in 0..MAX_BINDINGS + 3 * EVICT_BATCH {
            let key = anonymous(i);
            g.served(&key, &server);
            assert!(
                g.bound(&key, Instant::now()).is_some(),
                "newcomer {i} unbound"
            );
        }
        let now = Instant::now();
        for i in 0..100 {
            assert!(
                g.bound(&cert(i), now).is_some(),
                "certified client {i} evicted"
            );
        }
        let len = g.bindings.lock().unwrap().len();
        assert!(len <= MAX_BINDINGS, "{len} bindings");
    }

    /// Past stale bindings, eviction takes the least recently seen anonymous clients first,
    /// then the least recently seen certificate holders.
    #[test]
    fn eviction_drops_stale_then_oldest_anonymous_then_oldest_certified() {
        let start = Instant::now();
        let order: Ranked = Arc::from(Vec::<Arc<str>>::new());
        let binding = |secs: u64| Binding {
            server: Arc::from("http://10.0.0.1:80"),
            seen: start + Duration::from_secs(secs),
            order: order.clone(),
            written: None,
        };
        let mut b = HashMap::new();
        b.insert(cert(1), binding(0));
        b.insert(cert(2), binding(5));
        b.insert(anonymous(1), binding(1));
        b.insert(anonymous(2), binding(50));
        b.insert(anonymous(3), binding(60));
        let now = start + Duration::from_secs(100);
        let timeout = Duration::from_secs(99);
        // cert(1) is stale (100 s unseen): that frees one, then the oldest anonymous goes.
        evict(&mut b, now, timeout, 2);
        assert_eq!(b.len(), 3, "{:?}", b.keys());
        assert!(!b.contains_key(&cert(1)) && !b.contains_key(&anonymous(1)));
        evict(&mut b, now, timeout, 2);
        assert_eq!(b.keys().collect::<Vec<_>>(), vec![&cert(2)]);
        evict(&mut b, now, timeout, 1);
        assert!(b.is_empty());
    }
}
