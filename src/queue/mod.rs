//! Queues in front of the backend (spec §15): a GPU that runs one job at a time is handed out
//! in turns, one person after another, instead of first come, first served.
//!
//! A `[[queue]]` holds the jobs of the routes that name it. A job that cannot start waits here,
//! not at the backend; when a slot frees, the next job comes from the people with waiting jobs
//! in turn (least recently served first), first come first served within one person. Slots are
//! counted per server (a *lane*): the forwarder chooses the server first (affinity, balance),
//! then waits for that server's slot.
//!
//! The state of a queue ([`Queue`]) outlives a reload: the [`Queues`] of a new runtime take
//! over every queue whose name stays, with its waiting and running jobs, and apply the new
//! limits at once. A waiting job is a future: when its client goes away (the connection closes,
//! the HTTP/2 stream is reset) hyper drops it, and its place is given up at once. A running job
//! is a [`Permit`], hung on the response body: the slot frees when the body has ended or the
//! client went away.

pub mod gradio;
mod hangup;
mod state;

pub use hangup::Hangup;

use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::ops::metrics::{Metrics, QueueStats};
use crate::response::reply::Reject;
use state::State;

/// How many people `/usage` (and the fairness bookkeeping) remembers; the least recently seen
/// idle ones are forgotten beyond it.
pub const MAX_PEOPLE: usize = 10_000;

/// Who a person is, for a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyBy {
    /// The client certificate's SHA-256 fingerprint; the IP when there is none.
    Client,
    /// The client IP.
    Ip,
    /// The route's JWT subject or forward-auth subject.
    Subject,
}

impl KeyBy {
    /// As written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyBy::Client => "client",
            KeyBy::Ip => "ip",
            KeyBy::Subject => "subject",
        }
    }
}

/// What one job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// One request, from forwarding until its response has ended.
    Http,
    /// One Gradio queue event, from the join's answer until its `process_completed`.
    Gradio,
}

impl Protocol {
    /// As written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Gradio => "gradio",
        }
    }
}

/// One `[[queue]]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSettings {
    /// What routes call it; the metric label.
    pub name: String,
    /// Jobs the backend runs at once, per server.
    pub slots: usize,
    /// Jobs of one person at the backend at once.
    pub per_identity: usize,
    /// Jobs of one person waiting here; beyond, 429 `queue_full`.
    pub max_waiting: usize,
    /// Longest wait; beyond, 503 `queue_timeout`.
    pub max_wait: Duration,
    /// Who a person is.
    pub key: KeyBy,
    /// What a job is.
    pub protocol: Protocol,
}

/// Who a job belongs to: the key the turns are counted by, and what `/usage` shows.
#[derive(Debug, Clone)]
pub struct Person {
    /// What the turns are counted by (a fingerprint, an IP, or a subject).
    pub key: Arc<str>,
    /// The certificate's subject DN, when there is a certificate.
    pub subject_dn: Option<Arc<str>>,
    /// The certificate's SHA-256 fingerprint, when there is a certificate.
    pub fingerprint: Option<Arc<str>>,
    /// The client's address.
    pub ip: IpAddr,
}

/// A request's place in a queue, decided by the policy: which queue, and whose job it is.
#[derive(Debug, Clone)]
pub struct Ticket {
    /// Index into the runtime's [`Queues`].
    pub queue: usize,
    /// Whose job.
    pub person: Person,
}

/// How long a forwarded request waited in its queue; put in the response's extensions for the
/// access log.
#[derive(Debug, Clone, Copy)]
pub struct Waited(pub Duration);

/// The queues of one runtime, in config order (routes refer to them by index).
#[derive(Debug, Default)]
pub struct Queues {
    list: Vec<Arc<Queue>>,
    /// Cancelled at shutdown: every waiting job is answered 503. One token for the daemon's
    /// life, handed from runtime to runtime.
    closing: CancellationToken,
    /// The Gradio jobs running now, by event id; handed from runtime to runtime.
    events: Arc<gradio::Events>,
    /// A queue has `protocol = "gradio"`: event streams are followed.
    gradio: bool,
}

impl Queues {
    /// The queues of `settings`; a queue that `previous` (the runtime before a reload) had
    /// under the same name is the same queue, with its jobs, under the new limits.
    pub fn new(
        settings: &[QueueSettings],
        metrics: &Arc<Metrics>,
        previous: Option<&Queues>,
    ) -> Queues {
        let closing = previous.map(|p| p.closing.clone()).unwrap_or_default();
        let events = previous.map(|p| p.events.clone()).unwrap_or_default();
        let gradio = settings.iter().any(|s| s.protocol == Protocol::Gradio);
        let list = settings
            .iter()
            .map(
                |s| match previous.and_then(|p| p.list.iter().find(|q| *q.name == *s.name)) {
                    Some(q) => {
                        q.update(s.clone());
                        q.clone()
                    }
                    None => Arc::new(Queue::new(s.clone(), closing.clone(), metrics)),
                },
            )
            .collect();
        Queues {
            list,
            closing,
            events,
            gradio,
        }
    }

    /// Splits a permit by what its job is: a request's (`protocol = "http"`, kept on the
    /// response body) or a Gradio event's (followed by [`Queues::follow`]).
    pub fn split(permit: Option<Permit>) -> (Option<Permit>, Option<GradioJob>) {
        match permit {
            Some(p) => match p.gradio_max_wait() {
                Some(max_wait) => (
                    None,
                    Some(GradioJob {
                        permit: p,
                        max_wait,
                    }),
                ),
                None => (Some(p), None),
            },
            None => (None, None),
        }
    }

    /// The Gradio side of a response: a join's (or call's) answer starts the job `job`; an
    /// event stream is followed for the ends of the jobs it shows. Anything else passes as it
    /// is.
    pub async fn follow(
        &self,
        job: Option<GradioJob>,
        method: &http::Method,
        path: &str,
        mut resp: http::Response<crate::response::body::ProxyBody>,
    ) -> http::Response<crate::response::body::ProxyBody> {
        if let Some(job) = job {
            // Boxed: the forwarding future of every request would otherwise carry its size.
            return Box::pin(gradio::started(
                &self.events,
                job.permit,
                job.max_wait,
                resp,
            ))
            .await;
        }
        if self.gradio {
            gradio::follow(&self.events, method, path, &mut resp);
        }
        resp
    }

    /// Waits for `ticket`'s turn on the server `lane` (its URL as configured), and returns the
    /// running job's permit.
    ///
    /// # Errors
    /// 429 `queue_full` when the person already has `max_waiting` jobs waiting, 503
    /// `queue_timeout` after `max_wait`, 503 when certgate shuts down while the job waits.
    pub async fn wait(
        &self,
        ticket: &Ticket,
        lane: &str,
        hangup: Option<&Hangup>,
    ) -> Result<Permit, Reject> {
        match self.list.get(ticket.queue) {
            Some(q) => q.wait(&ticket.person, lane, hangup).await,
            // Routes are validated against the same config's queues.
            None => Err(Reject::service_unavailable(
                "The route's queue is not configured.",
            )),
        }
    }

    /// Shutdown: every waiting job is answered 503; running jobs go on.
    pub fn close(&self) {
        self.closing.cancel();
    }

    /// The queues, in config order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Queue>> {
        self.list.iter()
    }
}

/// One queue's state: per server, the busy slots and the waiting jobs; per person, the running
/// and waiting jobs and what they used. Shared by the runtimes a reload swaps.
#[derive(Debug)]
pub struct Queue {
    name: Arc<str>,
    state: Mutex<State>,
    closing: CancellationToken,
    metrics: QueueStats,
}

impl Queue {
    fn new(settings: QueueSettings, closing: CancellationToken, metrics: &Metrics) -> Queue {
        let metrics = metrics.queue_stats(&settings.name);
        metrics.slots.set(gauge(settings.slots));
        Queue {
            name: settings.name.as_str().into(),
            state: Mutex::new(State::new(settings)),
            closing,
            metrics,
        }
    }

    /// The queue's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves counters that are still consistent enough to
        // go on with: every update is a few integer operations.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// New limits, at once: more slots start waiting jobs now; fewer let running jobs finish.
    fn update(self: &Arc<Self>, settings: QueueSettings) {
        self.metrics.slots.set(gauge(settings.slots));
        let mut st = self.lock();
        st.settings = settings;
        st.dispatch(self);
        self.publish(&st);
    }

    fn publish(&self, st: &State) {
        let (busy, waiting) = st.totals();
        self.metrics.busy.set(gauge(busy));
        self.metrics.waiting.set(gauge(waiting));
    }

    async fn wait(
        self: &Arc<Self>,
        person: &Person,
        lane: &str,
        hangup: Option<&Hangup>,
    ) -> Result<Permit, Reject> {
        let since = Instant::now();
        let (rx, id, max_wait) = {
            let mut st = self.lock();
            match st.enqueue(self, person, lane) {
                state::Enqueued::Started(mut permit) => {
                    self.publish(&st);
                    drop(st);
                    permit.claimed = true;
                    self.metrics.wait.observe(0.0);
                    return Ok(permit);
                }
                state::Enqueued::Full(retry) => {
                    drop(st);
                    self.metrics.full.inc();
                    return Err(Reject::queue_full(&self.name, retry));
                }
                state::Enqueued::Waiting { id, rx } => {
                    let max_wait = st.settings.max_wait;
                    self.publish(&st);
                    (rx, id, max_wait)
                }
            }
        };
        // Gives the place up whenever this future ends without a permit: timeout, shutdown,
        // or the client gone (hyper drops the future). A permit sent in the meantime is
        // dropped with the receiver and frees its slot.
        let _leave = Leave { queue: self, id };
        // `sleep` takes a wait too long for the clock as "never"; an Instant sum would panic.
        let timeout = tokio::time::sleep(max_wait.saturating_sub(since.elapsed()));
        tokio::select! {
            biased;
            granted = rx => match granted {
                Ok(mut permit) => {
                    permit.claimed = true;
                    self.metrics.wait.observe(permit.waited.as_secs_f64());
                    Ok(permit)
                }
                // The sender is dropped unsent only with the queue's state.
                Err(_) => Err(Reject::queue_closed(&self.name)),
            },
            () = self.closing.cancelled() => Err(Reject::queue_closed(&self.name)),
            // Nobody to answer: the place is given up (`_leave`) and the job never forwarded.
            () = async {
                match hangup {
                    Some(h) => h.closed().await,
                    None => std::future::pending().await,
                }
            } => Err(Reject::bad_request(format!(
                "The client closed its connection while its job waited in queue {:?}; the job was not forwarded.",
                &*self.name
            ))),
            () = timeout => {
                let retry = self.lock().retry_after();
                self.metrics.timeout.inc();
                Err(Reject::queue_timeout(&self.name, max_wait, retry))
            }
        }
    }

    /// Slots, busy and waiting jobs now (the operator's page).
    pub fn totals(&self) -> (usize, usize, usize) {
        let st = self.lock();
        let (busy, waiting) = st.totals();
        (st.settings.slots, busy, waiting)
    }

    /// Each person with a certificate this queue remembers: fingerprint, running, waiting,
    /// jobs done and busy time (the operator's page sums them over the queues).
    pub fn each_person(&self, mut f: impl FnMut(&str, usize, usize, u64, Duration)) {
        let st = self.lock();
        for p in st.people.values() {
            if let Some(fingerprint) = p.info.fingerprint.as_deref() {
                f(fingerprint, p.running, p.waiting, p.jobs, p.busy);
            }
        }
    }

    /// `/usage`: this queue's totals and each person it remembers, most recently seen first.
    pub fn usage(&self) -> serde_json::Value {
        let st = self.lock();
        let (busy, waiting) = st.totals();
        let mut people: Vec<_> = st.people.values().collect();
        people.sort_by_key(|p| std::cmp::Reverse(p.last_seen));
        // Only idle people are forgotten: people with jobs can be more than the bound.
        let people: Vec<serde_json::Value> = people
            .into_iter()
            .take(MAX_PEOPLE)
            .map(|p| {
                serde_json::json!({
                    "key": &*p.info.key,
                    "subject_dn": p.info.subject_dn.as_deref(),
                    "fingerprint": p.info.fingerprint.as_deref(),
                    "ip": p.info.ip.to_string(),
                    "running": p.running,
                    "waiting": p.waiting,
                    "jobs_done": p.jobs,
                    "busy_seconds": (p.busy.as_secs_f64() * 1000.0).round() / 1000.0,
                    "last_seen": time::OffsetDateTime::from(p.last_seen)
                        .format(&time::format_description::well_known::Rfc3339)
                        .unwrap_or_default(),
                })
            })
            .collect();
        serde_json::json!({
            "name": &*self.name,
            "protocol": st.settings.protocol.as_str(),
            "slots": st.settings.slots,
            "busy": busy,
            "waiting": waiting,
            "people": people,
        })
    }
}

/// A Gradio job whose join is being forwarded: its permit, kept under the join's `event_id`
/// once the answer names it.
#[derive(Debug)]
pub struct GradioJob {
    permit: Permit,
    max_wait: Duration,
}

/// A waiting job's place, given up when the wait ends (a no-op once its turn came: it is no
/// longer among the waiting).
struct Leave<'a> {
    queue: &'a Queue,
    id: u64,
}

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        let mut st = self.queue.lock();
        st.leave(self.id);
        self.queue.publish(&st);
    }
}

/// A running job: holds its slot until dropped (with the response body, or with the request
/// when forwarding failed).
#[derive(Debug)]
pub struct Permit {
    queue: Arc<Queue>,
    person: Arc<str>,
    lane: Arc<str>,
    started: Instant,
    waited: Duration,
    /// Its job received it; otherwise its turn came as the client left, and nothing ran.
    claimed: bool,
    /// Frees its slot when dropped; off for a permit that never took one.
    live: bool,
    /// It still holds its server's slot (see [`Permit::free_lane`]).
    lane_held: bool,
    /// A Gradio job's fate is known: its event is followed, or the backend never took it.
    /// Otherwise (its client left between forwarding and the join's answer) Gradio may hold
    /// the job, and it counts as one nobody listens to.
    settled: bool,
    /// Its queue's jobs are Gradio events (as the queue was when the job started).
    gradio: bool,
}

impl Permit {
    fn new(
        queue: &Arc<Queue>,
        person: Arc<str>,
        lane: Arc<str>,
        since: Instant,
        started: Instant,
        gradio: bool,
    ) -> Permit {
        Permit {
            gradio,
            queue: queue.clone(),
            person,
            lane,
            started,
            waited: started.saturating_duration_since(since),
            claimed: false,
            live: true,
            lane_held: true,
            settled: false,
        }
    }

    /// How long the job waited for its turn.
    pub fn waited(&self) -> Duration {
        self.waited
    }

    /// The queue's `max_wait` when its jobs are Gradio events (an HTTP job takes no lock).
    fn gradio_max_wait(&self) -> Option<Duration> {
        self.gradio.then(|| self.queue.lock().settings.max_wait)
    }

    /// Gives the server's slot back, the job still counting as its person's (against
    /// `per_identity`) until the permit is dropped: for a job that runs where certgate cannot
    /// see its end.
    fn free_lane(&mut self) {
        if !self.live || !self.lane_held {
            return;
        }
        self.lane_held = false;
        let q = &self.queue;
        let mut st = q.lock();
        st.free_lane(q, &self.lane);
        q.publish(&st);
    }

    /// The job's fate is known (see `settled`): dropping it frees the slot at once.
    pub fn settle(&mut self) {
        self.settled = true;
    }

    /// Dropped under the queue's lock without a slot to free.
    fn defuse(mut self) {
        self.live = false;
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.live {
            return;
        }
        if self.gradio && self.claimed && !self.settled {
            // The join went to Gradio, but its client left before the answer named the event:
            // Gradio may run it (and keep its results for a stream opened later), so it counts
            // as a job nobody listens to, not as one that never started.
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                let mut held = Permit {
                    queue: self.queue.clone(),
                    person: self.person.clone(),
                    lane: self.lane.clone(),
                    settled: true,
                    ..*self
                };
                self.live = false;
                let max_wait = self.queue.lock().settings.max_wait;
                rt.spawn(async move {
                    tokio::time::sleep(gradio::LISTENER_WAIT.min(max_wait)).await;
                    held.free_lane();
                    tokio::time::sleep(max_wait.saturating_sub(gradio::LISTENER_WAIT)).await;
                    drop(held);
                });
                return;
            }
        }
        let used = self.started.elapsed();
        let q = &self.queue;
        let mut st = q.lock();
        let lane = self.lane_held.then_some(&*self.lane);
        st.finish(q, &self.person, lane, used, self.claimed);
        q.publish(&st);
        drop(st);
        if self.claimed {
            q.metrics.jobs.inc();
            q.metrics.busy_seconds.inc_by(used.as_secs_f64());
        }
    }
}

/// A count as a gauge value.
fn gauge(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// When a person was last seen, for `/usage`.
fn now() -> SystemTime {
    SystemTime::now()
}

/// The turn sent to a waiting job: its running job's permit.
type Grant = oneshot::Sender<Permit>;
