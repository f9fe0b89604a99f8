//! The bookkeeping of one queue, under its lock: who waits where, who runs, whose turn is next.
//! Every change that can free a slot ends in [`State::dispatch`], so a slot is never free while
//! a job that may take it waits.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::oneshot;

use super::{Grant, MAX_PEOPLE, Permit, Person, Queue, QueueSettings};

/// One server's slots and the jobs waiting for them, in arrival order.
#[derive(Debug, Default)]
struct Lane {
    busy: usize,
    waiting: VecDeque<Waiter>,
}

#[derive(Debug)]
struct Waiter {
    id: u64,
    person: Arc<str>,
    since: Instant,
    grant: Grant,
}

/// What a queue knows of one person.
#[derive(Debug)]
pub(super) struct PersonState {
    pub(super) info: Person,
    pub(super) running: usize,
    pub(super) waiting: usize,
    pub(super) jobs: u64,
    pub(super) busy: Duration,
    pub(super) last_seen: SystemTime,
    /// When this person's last job started, on the queue's own clock (0: never).
    last_served: u64,
}

/// How an arriving job fared.
pub(super) enum Enqueued {
    /// A slot was free and the person under `per_identity`: it runs now.
    Started(Permit),
    /// The person already has `max_waiting` jobs waiting; retry after this long.
    Full(Duration),
    /// It waits; `rx` gets the running job's permit when its turn comes.
    Waiting {
        id: u64,
        rx: oneshot::Receiver<Permit>,
    },
}

#[derive(Debug)]
pub(super) struct State {
    pub(super) settings: QueueSettings,
    lanes: HashMap<Arc<str>, Lane>,
    pub(super) people: HashMap<Arc<str>, PersonState>,
    /// Waiter ids and the serving clock.
    clock: u64,
    /// How long a job takes, smoothed: what `Retry-After` is estimated from.
    avg_job: Option<f64>,
}

impl State {
    pub(super) fn new(settings: QueueSettings) -> State {
        State {
            settings,
            lanes: HashMap::new(),
            people: HashMap::new(),
            clock: 0,
            avg_job: None,
        }
    }

    /// Busy slots and waiting jobs over all lanes.
    pub(super) fn totals(&self) -> (usize, usize) {
        self.lanes
            .values()
            .fold((0, 0), |(b, w), l| (b + l.busy, w + l.waiting.len()))
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// An arriving job of `person` for the server `lane`.
    pub(super) fn enqueue(&mut self, queue: &Arc<Queue>, person: &Person, lane: &str) -> Enqueued {
        let id = self.tick();
        self.forget_idle_people();
        let p = self
            .people
            .entry(person.key.clone())
            .or_insert_with(|| PersonState {
                info: person.clone(),
                running: 0,
                waiting: 0,
                jobs: 0,
                busy: Duration::ZERO,
                last_seen: super::now(),
                last_served: 0,
            });
        p.last_seen = super::now();
        let (lane_key, l) = match self.lanes.get_key_value(lane) {
            Some((k, _)) => {
                let k = k.clone();
                let l = self.lanes.get_mut(&k);
                (k, l)
            }
            None => {
                let k: Arc<str> = lane.into();
                self.lanes.insert(k.clone(), Lane::default());
                let l = self.lanes.get_mut(&k);
                (k, l)
            }
        };
        let Some(l) = l else {
            // Just looked up or inserted.
            return Enqueued::Full(Duration::from_secs(1));
        };
        // After every change the free slots went to every waiting job that could take one, so
        // the waiting jobs of this lane (if any) cannot: a free slot is this job's.
        if l.busy < self.settings.slots && p.running < self.settings.per_identity {
            l.busy += 1;
            p.running += 1;
            p.last_served = id;
            let now = Instant::now();
            return Enqueued::Started(Permit::new(queue, person.key.clone(), lane_key, now, now));
        }
        if p.waiting >= self.settings.max_waiting {
            return Enqueued::Full(self.retry_after());
        }
        p.waiting += 1;
        let (grant, rx) = oneshot::channel();
        l.waiting.push_back(Waiter {
            id,
            person: person.key.clone(),
            since: Instant::now(),
            grant,
        });
        Enqueued::Waiting { id, rx }
    }

    /// A waiting job gives up its place (client gone, timeout, shutdown). If its turn came in
    /// the meantime, the permit it was sent is dropped with its receiver and frees the slot.
    pub(super) fn leave(&mut self, id: u64) {
        for l in self.lanes.values_mut() {
            if let Some(i) = l.waiting.iter().position(|w| w.id == id) {
                if let Some(w) = l.waiting.remove(i)
                    && let Some(p) = self.people.get_mut(&w.person)
                {
                    p.waiting = p.waiting.saturating_sub(1);
                }
                return;
            }
        }
    }

    /// A job's slot frees: it ran for `used`, or (`ran` false) its turn came as its client
    /// left and it never started.
    pub(super) fn finish(
        &mut self,
        queue: &Arc<Queue>,
        person: &str,
        lane: &str,
        used: Duration,
        ran: bool,
    ) {
        self.release(person, lane, used, ran);
        self.dispatch(queue);
    }

    /// Frees a slot of `person` on `lane`; `ran`: the job ran (rather than never took it).
    fn release(&mut self, person: &str, lane: &str, used: Duration, ran: bool) {
        if let Some(l) = self.lanes.get_mut(lane) {
            l.busy = l.busy.saturating_sub(1);
        }
        if let Some(p) = self.people.get_mut(person) {
            p.running = p.running.saturating_sub(1);
            if ran {
                p.jobs += 1;
                p.busy += used;
                p.last_seen = super::now();
            }
        }
        if ran {
            let secs = used.as_secs_f64();
            self.avg_job = Some(match self.avg_job {
                None => secs,
                Some(avg) => avg * 0.8 + secs * 0.2,
            });
        }
    }

    /// Gives every free slot to the next job that may take it: on each lane, among the people
    /// under `per_identity` with a job waiting there, the one served least recently, and that
    /// person's oldest job.
    pub(super) fn dispatch(&mut self, queue: &Arc<Queue>) {
        let State {
            settings,
            lanes,
            people,
            clock,
            ..
        } = self;
        for (lane_key, lane) in lanes.iter_mut() {
            while lane.busy < settings.slots {
                // The first waiting job of a person is that person's oldest, so the smallest
                // (last served, position) is the right person's first job.
                let next = lane
                    .waiting
                    .iter()
                    .enumerate()
                    .filter_map(|(i, w)| {
                        let p = people.get(&w.person)?;
                        (p.running < settings.per_identity).then_some((p.last_served, i))
                    })
                    .min();
                let Some((_, i)) = next else { break };
                let Some(w) = lane.waiting.remove(i) else {
                    break;
                };
                *clock += 1;
                let Some(p) = people.get_mut(&w.person) else {
                    continue;
                };
                p.waiting = p.waiting.saturating_sub(1);
                let permit = Permit::new(
                    queue,
                    w.person.clone(),
                    lane_key.clone(),
                    w.since,
                    Instant::now(),
                );
                // A waiting job whose future is already gone (its client left while the lock
                // was held here) takes nothing: the permit is defused here, under the lock,
                // and the next job is looked for.
                if let Err(permit) = w.grant.send(permit) {
                    permit.defuse();
                    continue;
                }
                lane.busy += 1;
                p.running += 1;
                p.last_served = *clock;
            }
        }
    }

    /// `Retry-After` for a refused job: about one job of every person waiting, spread over
    /// the slots (at least 1 s, at most `max_wait`).
    pub(super) fn retry_after(&self) -> Duration {
        let avg = self.avg_job.unwrap_or(1.0);
        let waiting_people = self
            .people
            .values()
            .filter(|p| p.waiting > 0)
            .count()
            .max(1);
        let lanes = self.lanes.len().max(1);
        let secs = avg * waiting_people as f64 / (self.settings.slots * lanes) as f64;
        Duration::from_secs_f64(secs.clamp(1.0, self.settings.max_wait.as_secs_f64().max(1.0)))
    }

    /// Past [`MAX_PEOPLE`], forgets the least recently seen people with nothing running or
    /// waiting (a tenth at once, so the sort is rare).
    fn forget_idle_people(&mut self) {
        if self.people.len() < MAX_PEOPLE {
            return;
        }
        let mut idle: Vec<(SystemTime, Arc<str>)> = self
            .people
            .iter()
            .filter(|(_, p)| p.running == 0 && p.waiting == 0)
            .map(|(k, p)| (p.last_seen, k.clone()))
            .collect();
        idle.sort_unstable_by_key(|(seen, _)| *seen);
        for (_, k) in idle.into_iter().take(MAX_PEOPLE / 10) {
            self.people.remove(&k);
        }
    }
}
