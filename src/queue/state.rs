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

/// The queue's maps, hashed with foldhash: every job looks its person and its server's lane up
/// several times, and std's SipHash of a 64-character fingerprint was a fifth of what a queued
/// request costs (bench scenario (k)). foldhash is seeded at random per process; the keys are
/// certificate fingerprints, signed subjects, addresses (a /64 for IPv6) and configured server
/// URLs, none of which a client can choose freely, and at most `MAX_PEOPLE` of them.
type Map<V> = HashMap<Arc<str>, V, foldhash::fast::RandomState>;

#[derive(Debug)]
pub(super) struct State {
    pub(super) settings: QueueSettings,
    lanes: Map<Lane>,
    pub(super) people: Map<PersonState>,
    /// Waiter ids and the serving clock.
    clock: u64,
    /// How long a job takes, smoothed: what `Retry-After` is estimated from.
    avg_job: Option<f64>,
}

impl State {
    pub(super) fn new(settings: QueueSettings) -> State {
        State {
            settings,
            lanes: Map::default(),
            people: Map::default(),
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
            let gradio = self.settings.protocol == super::Protocol::Gradio;
            return Enqueued::Started(Permit::new(
                queue,
                person.key.clone(),
                lane_key,
                now,
                now,
                gradio,
            ));
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
    /// left and it never started. `lane`: the server whose slot it still held.
    pub(super) fn finish(
        &mut self,
        queue: &Arc<Queue>,
        person: &str,
        lane: Option<&str>,
        used: Duration,
        ran: bool,
    ) {
        self.release(person, lane, used, ran);
        self.dispatch(queue);
    }

    /// A running job gives its server's slot back early; it still counts as its person's.
    pub(super) fn free_lane(&mut self, queue: &Arc<Queue>, lane: &str) {
        if let Some(l) = self.lanes.get_mut(lane) {
            l.busy = l.busy.saturating_sub(1);
        }
        self.dispatch(queue);
    }

    /// Frees a slot of `person` (and on `lane`, when it still held one there); `ran`: the job
    /// ran (rather than never took it).
    fn release(&mut self, person: &str, lane: Option<&str>, used: Duration, ran: bool) {
        if let Some(l) = lane.and_then(|lane| self.lanes.get_mut(lane)) {
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
                    settings.protocol == super::Protocol::Gradio,
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::{KeyBy, Protocol, Queue, QueueSettings};
    use super::*;

    fn queue(slots: usize, per_identity: usize) -> Arc<Queue> {
        Arc::new(Queue::new(
            QueueSettings {
                name: "gpu".into(),
                slots,
                per_identity,
                max_waiting: 3,
                max_wait: Duration::from_secs(600),
                key: KeyBy::Client,
                protocol: Protocol::Http,
            },
            tokio_util::sync::CancellationToken::new(),
            &crate::ops::metrics::Metrics::new(),
        ))
    }

    fn person(name: &str) -> Person {
        Person {
            key: name.into(),
            subject_dn: None,
            fingerprint: None,
            ip: "127.0.0.1".parse().unwrap(),
        }
    }

    enum Job {
        Running(Permit),
        Waiting(oneshot::Receiver<Permit>),
    }

    fn arrive(q: &Arc<Queue>, who: &str) -> Job {
        let got = q.lock().enqueue(q, &person(who), "http://gpu");
        match got {
            Enqueued::Started(mut p) => {
                p.claimed = true;
                Job::Running(p)
            }
            Enqueued::Waiting { rx, .. } => Job::Waiting(rx),
            Enqueued::Full(_) => panic!("{who}: full"),
        }
    }

    fn started(job: &mut Job) -> Option<Permit> {
        match job {
            Job::Running(_) => None,
            Job::Waiting(rx) => rx.try_recv().ok().map(|mut p| {
                // As the waiting request does when its turn comes.
                p.claimed = true;
                p
            }),
        }
    }

    /// When a slot frees, the person served least recently goes next (never served first, in
    /// order of arrival), and one person's jobs go first come first served.
    #[test]
    fn turns_go_to_the_least_recently_served_person() {
        let q = queue(1, 1);
        let Job::Running(a0) = arrive(&q, "a") else {
            panic!("a free slot is taken at once")
        };
        let mut a1 = arrive(&q, "a");
        let mut a2 = arrive(&q, "a");
        let mut b0 = arrive(&q, "b");
        let mut c0 = arrive(&q, "c");
        assert_eq!(q.lock().totals(), (1, 4));
        drop(a0);
        let b = started(&mut b0).expect("b is next: never served");
        assert!(started(&mut a1).is_none() && started(&mut c0).is_none());
        drop(b);
        let c = started(&mut c0).expect("c is next");
        drop(c);
        let a = started(&mut a1).expect("then a's oldest");
        assert!(started(&mut a2).is_none());
        drop(a);
        drop(started(&mut a2).expect("then a's next"));
        assert_eq!(q.lock().totals(), (0, 0));
        assert_eq!(q.lock().people["a"].jobs, 3);
    }

    /// `per_identity` keeps a person's second job waiting while a slot is free for others;
    /// `max_waiting` refuses a person's job beyond it, not another person's.
    #[test]
    fn per_identity_and_max_waiting_are_per_person() {
        let q = queue(2, 1);
        let Job::Running(_a0) = arrive(&q, "a") else {
            panic!()
        };
        let mut a1 = arrive(&q, "a");
        assert!(
            started(&mut a1).is_none(),
            "a's second job ran beside its first"
        );
        let Job::Running(_b0) = arrive(&q, "b") else {
            panic!("the free slot goes to b")
        };
        let _a2 = arrive(&q, "a");
        let _a3 = arrive(&q, "a");
        let full = q.lock().enqueue(&q, &person("a"), "http://gpu");
        assert!(matches!(full, Enqueued::Full(_)));
        assert!(matches!(arrive(&q, "c"), Job::Waiting(_)));
    }

    /// A waiting job that leaves frees its place; a turn given to a job whose receiver is gone
    /// goes to the next.
    #[test]
    fn leaving_frees_the_place_and_a_lost_turn_goes_on() {
        let q = queue(1, 1);
        let Job::Running(a0) = arrive(&q, "a") else {
            panic!()
        };
        let gone = q.lock().enqueue(&q, &person("b"), "http://gpu");
        let Enqueued::Waiting { id, rx } = gone else {
            panic!()
        };
        q.lock().leave(id);
        drop(rx);
        let lost = arrive(&q, "c");
        drop(lost);
        let mut d0 = arrive(&q, "d");
        assert_eq!(q.lock().totals(), (1, 2));
        drop(a0);
        let d = started(&mut d0).expect("the turn c lost goes to d");
        assert_eq!(q.lock().totals(), (1, 0));
        drop(d);
        assert_eq!(q.lock().totals(), (0, 0));
    }

    /// Past the bound, idle people are forgotten; people with jobs never are.
    #[test]
    fn people_are_bounded() {
        let q = queue(1, 1);
        let Job::Running(_held) = arrive(&q, "holder") else {
            panic!()
        };
        q.lock().people.get_mut("holder").unwrap().last_seen = SystemTime::UNIX_EPOCH;
        for i in 0..MAX_PEOPLE + 10 {
            let p = person(&format!("p{i}"));
            let mut st = q.lock();
            st.forget_idle_people();
            st.people.insert(
                p.key.clone(),
                PersonState {
                    info: p,
                    running: 0,
                    waiting: 0,
                    jobs: 1,
                    busy: Duration::ZERO,
                    last_seen: SystemTime::now(),
                    last_served: 0,
                },
            );
        }
        let st = q.lock();
        assert!(st.people.len() <= MAX_PEOPLE, "{}", st.people.len());
        assert!(st.people.contains_key("holder"));
    }

    /// `/usage` lists at most [`MAX_PEOPLE`] people, the most recently seen, also when more
    /// than that have jobs (and so are never forgotten).
    #[test]
    fn usage_lists_at_most_the_bound() {
        let q = queue(1, 1);
        for i in 0..MAX_PEOPLE + 5 {
            let p = person(&format!("p{i}"));
            q.lock().people.insert(
                p.key.clone(),
                PersonState {
                    info: p,
                    running: 0,
                    waiting: 1,
                    jobs: 0,
                    busy: Duration::ZERO,
                    last_seen: SystemTime::UNIX_EPOCH + Duration::from_secs(i as u64),
                    last_served: 0,
                },
            );
        }
        let usage = q.usage();
        let people = usage["people"].as_array().unwrap();
        assert_eq!(people.len(), MAX_PEOPLE);
        assert_eq!(people[0]["key"], format!("p{}", MAX_PEOPLE + 4));
    }
}
