//! What the operator's page remembers as the traffic passes: one row per client identity
//! (bounded, the least recently seen evicted first), the last refusals in a ring (with a cap per
//! address, so one address's flood cannot push everyone else out) and counts per reason, and
//! requests per minute over the last hour.
//!
//! It costs one uncontended mutex per request: people live in [`SHARDS`] shards chosen by the
//! certificate's fingerprint (already computed once per connection), each a small map updated
//! once, when the response ends. Eviction scans only the one shard, and only when a new person
//! arrives while it is full. The store belongs to the daemon, not to one config: a reload
//! keeps it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::tls::identity::ClientIdentity;

/// Most people remembered; the least recently seen goes first.
pub const MAX_PEOPLE: usize = 10_000;
/// Refusals kept in the ring.
pub const MAX_REFUSALS: usize = 200;
/// Most refusals of one address (an IPv6 one: of its /64) in the ring: a handshake flood from
/// one address replaces its own entries, never everyone else's. A verified identity's refused requests are counted apart
/// (per address and identity: people behind one NAT address each keep theirs); an unverified
/// certificate's subject is the client's to choose, so it never makes a key of its own.
pub const MAX_REFUSALS_PER_ADDRESS: usize = 5;
/// Minutes of per-minute counts.
pub const MINUTES: usize = 60;
/// Shards of the people map: enough that two cores rarely meet on one lock.
const SHARDS: usize = 16;
const PER_SHARD: usize = MAX_PEOPLE / SHARDS;

/// Requests per minute for the last [`MINUTES`] minutes, oldest first once read.
#[derive(Debug, Clone, Copy)]
struct Minutes {
    counts: [u32; MINUTES],
    /// The minute (since the Unix epoch) of the newest bucket.
    newest: u64,
}

impl Minutes {
    fn new(now: u64) -> Minutes {
        Minutes {
            counts: [0; MINUTES],
            newest: now,
        }
    }

    /// Moves the window to `now`, emptying the minutes it passes.
    fn advance(&mut self, now: u64) {
        if now <= self.newest {
            return;
        }
        let gap = now - self.newest;
        if gap >= MINUTES as u64 {
            self.counts = [0; MINUTES];
        } else {
            for m in self.newest + 1..=now {
                self.counts[(m % MINUTES as u64) as usize] = 0;
            }
        }
        self.newest = now;
    }

    fn add(&mut self, now: u64) {
        self.advance(now);
        let slot = &mut self.counts[(now % MINUTES as u64) as usize];
        *slot = slot.saturating_add(1);
    }

    /// The counts at `now`, oldest minute first.
    fn read(mut self, now: u64) -> [u32; MINUTES] {
        self.advance(now);
        let mut out = [0; MINUTES];
        for (i, slot) in out.iter_mut().enumerate() {
            let minute = now + 1 + i as u64;
            *slot = self.counts[(minute % MINUTES as u64) as usize];
        }
        out
    }
}

/// One identity since it was first seen.
#[derive(Debug, Clone)]
pub struct Person {
    /// Who it is (shared with its connections).
    pub identity: Arc<ClientIdentity>,
    /// First and last request, Unix milliseconds.
    pub first_seen_ms: u64,
    /// Last request (or refusal), Unix milliseconds.
    pub last_seen_ms: u64,
    /// Answers 1xx–3xx.
    pub ok: u64,
    /// Answers 4xx.
    pub client_errors: u64,
    /// Answers 5xx.
    pub server_errors: u64,
    /// Request body bytes as declared by the client (`Content-Length`).
    pub bytes_in: u64,
    /// Response bytes sent.
    pub bytes_out: u64,
    /// Requests certgate refused.
    pub refusals: u64,
    /// The last refusal's reason.
    pub last_refusal: Option<Box<str>>,
    /// Requests refused by a rate limit.
    pub rate_limited: u64,
    /// Its certificate was revoked (by a reloaded CRL) while it was connected.
    pub revoked_while_connected: bool,
    minutes: Minutes,
}

impl Person {
    /// Its requests per minute over the last hour, oldest first.
    pub fn per_minute(&self, now_minute: u64) -> [u32; MINUTES] {
        self.minutes.read(now_minute)
    }
}

#[derive(Default)]
struct Shard {
    people: HashMap<Box<str>, Person>,
    /// Requests of this shard's people and of clients without a certificate that hash here.
    minutes: Option<Minutes>,
}

impl Shard {
    /// Updates the row of `id` with `update`, making it (and evicting the least recently seen
    /// when the shard is full) if it is new.
    fn person(
        &mut self,
        id: &Arc<ClientIdentity>,
        now_ms: u64,
        evicted: &mut u64,
        update: impl FnOnce(&mut Person),
    ) {
        if let Some(p) = self.people.get_mut(id.fingerprint.as_str()) {
            return update(p);
        }
        if self.people.len() >= PER_SHARD
            && let Some(oldest) = self
                .people
                .iter()
                .min_by_key(|(_, p)| p.last_seen_ms)
                .map(|(k, _)| k.clone())
        {
            self.people.remove(&oldest);
            *evicted += 1;
        }
        let mut p = Person {
            identity: id.clone(),
            first_seen_ms: now_ms,
            last_seen_ms: now_ms,
            ok: 0,
            client_errors: 0,
            server_errors: 0,
            bytes_in: 0,
            bytes_out: 0,
            refusals: 0,
            last_refusal: None,
            rate_limited: 0,
            revoked_while_connected: false,
            minutes: Minutes::new(now_ms / 60_000),
        };
        update(&mut p);
        self.people.insert(id.fingerprint.as_str().into(), p);
    }
}

/// One refused handshake or request.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// When, Unix milliseconds.
    pub at_ms: u64,
    /// The client's address.
    pub addr: IpAddr,
    /// The certificate's subject, when one was presented.
    pub subject: Option<Box<str>>,
    /// The short reason (`expired`, `route[1] /admin allow`, ...).
    pub reason: Box<str>,
    /// The verified identity's fingerprint, for a refused request.
    who: Option<Box<str>>,
    /// The reason in words a person reads.
    pub words: Box<str>,
}

/// The address a refusal counts against: an IPv6 one cut to its /64, which one host holds
/// whole and can send each handshake from a new address of (as `ClientKey::anonymous`).
fn network(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(std::net::Ipv6Addr::from_bits(
            v6.to_bits() & !((1u128 << 64) - 1),
        )),
        v4 => v4,
    }
}

#[derive(Default)]
struct Refusals {
    ring: VecDeque<Refusal>,
    per_reason: BTreeMap<Box<str>, u64>,
    total: u64,
}

/// What is being refused, for [`Store::refused`].
#[derive(Debug, Clone, Copy)]
pub struct RefusalNote<'a> {
    /// The client's address.
    pub addr: IpAddr,
    /// The verified identity, for a refused request of an admitted connection.
    pub identity: Option<&'a Arc<ClientIdentity>>,
    /// The subject of a refused certificate (help mode), when there was one.
    pub subject: Option<&'a str>,
    /// The short reason.
    pub reason: &'a str,
    /// The reason in words.
    pub words: &'a str,
    /// Refused by a rate limit.
    pub rate_limited: bool,
    /// Its certificate was revoked by a reload while it was connected.
    pub revoked: bool,
}

/// A finished request, for [`Store::finished`].
#[derive(Debug, Clone, Copy)]
pub struct Finished<'a> {
    /// The client's address.
    pub addr: IpAddr,
    /// The verified identity, if any.
    pub identity: Option<&'a Arc<ClientIdentity>>,
    /// The response status.
    pub status: u16,
    /// Request body bytes as declared.
    pub bytes_in: u64,
    /// Response bytes sent.
    pub bytes_out: u64,
}

/// The people, the refusals and the per-minute counts; see the module doc.
pub struct Store {
    shards: Box<[Mutex<Shard>]>,
    refusals: Mutex<Refusals>,
    evicted: Mutex<u64>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

impl Default for Store {
    fn default() -> Self {
        Store::new()
    }
}

/// Now, Unix milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing here panics while holding a lock; a poisoned one still holds consistent counts.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The shard of a fingerprint (lower-case hex of SHA-256: its first digit is uniform) or, for
/// a client without a certificate, of its address.
fn shard_of(identity: Option<&Arc<ClientIdentity>>, addr: IpAddr) -> usize {
    let digit = identity
        .and_then(|i| i.fingerprint.chars().next())
        .and_then(|c| c.to_digit(16));
    let n = match (digit, addr) {
        (Some(d), _) => d as usize,
        (None, IpAddr::V4(v4)) => usize::from(v4.octets()[3]),
        (None, IpAddr::V6(v6)) => usize::from(v6.octets()[15]),
    };
    n % SHARDS
}

/// A snapshot of the people, most recently seen first.
#[derive(Debug)]
pub struct People {
    /// The rows kept (at most `limit` of them).
    pub rows: Vec<Person>,
    /// How many match the filter.
    pub matching: usize,
    /// How many are remembered.
    pub total: usize,
    /// How many were forgotten to stay within [`MAX_PEOPLE`].
    pub evicted: u64,
}

impl Store {
    /// An empty store.
    pub fn new() -> Store {
        Store {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            refusals: Mutex::new(Refusals::default()),
            evicted: Mutex::new(0),
        }
    }

    /// Counts a request whose response has ended: once per request.
    pub fn finished(&self, f: Finished<'_>) {
        self.finished_at(f, now_ms());
    }

    fn finished_at(&self, f: Finished<'_>, now_ms: u64) {
        let minute = now_ms / 60_000;
        let mut evicted = 0;
        {
            let mut shard = lock(&self.shards[shard_of(f.identity, f.addr)]);
            shard
                .minutes
                .get_or_insert_with(|| Minutes::new(minute))
                .add(minute);
            if let Some(id) = f.identity {
                shard.person(id, now_ms, &mut evicted, |p| {
                    p.last_seen_ms = now_ms;
                    match f.status {
                        400..=499 => p.client_errors += 1,
                        500.. => p.server_errors += 1,
                        _ => p.ok += 1,
                    }
                    p.bytes_in += f.bytes_in;
                    p.bytes_out += f.bytes_out;
                    p.minutes.add(minute);
                });
            }
        }
        if evicted > 0 {
            *lock(&self.evicted) += evicted;
        }
    }

    /// Records a refused handshake or request: in the ring, in the counts per reason, and on
    /// the person's row when it came from a verified identity.
    pub fn refused(&self, r: RefusalNote<'_>) {
        self.refused_at(r, now_ms());
    }

    fn refused_at(&self, r: RefusalNote<'_>, now_ms: u64) {
        if let Some(id) = r.identity {
            let mut evicted = 0;
            {
                let mut shard = lock(&self.shards[shard_of(Some(id), r.addr)]);
                shard.person(id, now_ms, &mut evicted, |p| {
                    p.last_seen_ms = now_ms;
                    p.refusals += 1;
                    p.last_refusal = Some(r.words.into());
                    p.rate_limited += u64::from(r.rate_limited);
                    p.revoked_while_connected |= r.revoked;
                });
            }
            if evicted > 0 {
                *lock(&self.evicted) += evicted;
            }
        }
        let mut refusals = lock(&self.refusals);
        refusals.total += 1;
        match refusals.per_reason.get_mut(r.reason) {
            Some(n) => *n += 1,
            None => {
                refusals.per_reason.insert(r.reason.into(), 1);
            }
        }
        let who = r.identity.map(|i| i.fingerprint.as_str());
        let from = network(r.addr);
        let same = |x: &Refusal| network(x.addr) == from && x.who.as_deref() == who;
        let ring = &mut refusals.ring;
        if ring.iter().filter(|x| same(x)).count() >= MAX_REFUSALS_PER_ADDRESS {
            if let Some(i) = ring.iter().position(same) {
                ring.remove(i);
            }
        } else if ring.len() >= MAX_REFUSALS {
            ring.pop_front();
        }
        ring.push_back(Refusal {
            at_ms: now_ms,
            addr: r.addr,
            subject: r
                .subject
                .or(r.identity.map(|i| i.subject_dn.as_str()))
                .map(Into::into),
            reason: r.reason.into(),
            who: who.map(Into::into),
            words: r.words.into(),
        });
    }

    /// The people whose subject, issuer, serial or fingerprint contains `filter` (ASCII case
    /// ignored), most recently seen first, at most `limit` of them.
    pub fn people(&self, filter: &str, limit: usize) -> People {
        let needle = filter.trim().to_lowercase();
        let mut rows = Vec::new();
        let mut total = 0;
        for shard in &self.shards {
            let shard = lock(shard);
            total += shard.people.len();
            rows.extend(
                shard
                    .people
                    .values()
                    .filter(|p| needle.is_empty() || matches(p, &needle))
                    .cloned(),
            );
        }
        let matching = rows.len();
        rows.sort_by_key(|p| std::cmp::Reverse(p.last_seen_ms));
        rows.truncate(limit);
        People {
            rows,
            matching,
            total,
            evicted: *lock(&self.evicted),
        }
    }

    /// The `n` people with the most requests in the last hour (none without any), busiest
    /// first, with that count. Only the winners are copied out of the shards.
    pub fn busiest(&self, now_minute: u64, n: usize) -> Vec<(u64, Person)> {
        let mut out: Vec<(u64, Person)> = Vec::new();
        for shard in &self.shards {
            let shard = lock(shard);
            let mut sums: Vec<(u64, &Person)> = shard
                .people
                .values()
                .map(|p| {
                    let m = p.minutes.read(now_minute);
                    (m.iter().map(|&c| u64::from(c)).sum::<u64>(), p)
                })
                .filter(|(sum, _)| *sum > 0)
                .collect();
            sums.sort_by_key(|(sum, _)| std::cmp::Reverse(*sum));
            out.extend(sums.into_iter().take(n).map(|(sum, p)| (sum, p.clone())));
        }
        out.sort_by_key(|(sum, _)| std::cmp::Reverse(*sum));
        out.truncate(n);
        out
    }

    /// Requests per minute over the last hour, everyone together, oldest first.
    pub fn per_minute(&self, now_minute: u64) -> [u32; MINUTES] {
        let mut out = [0u32; MINUTES];
        for shard in &self.shards {
            if let Some(m) = lock(shard).minutes {
                for (o, c) in out.iter_mut().zip(m.read(now_minute)) {
                    *o = o.saturating_add(c);
                }
            }
        }
        out
    }

    /// The refusals in the ring (oldest first), the counts per reason since start and the
    /// total.
    pub fn refusals(&self) -> (Vec<Refusal>, Vec<(String, u64)>, u64) {
        let r = lock(&self.refusals);
        (
            r.ring.iter().cloned().collect(),
            r.per_reason
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            r.total,
        )
    }
}

fn matches(p: &Person, needle: &str) -> bool {
    let id = &p.identity;
    [&id.subject_dn, &id.issuer_dn, &id.serial, &id.fingerprint]
        .iter()
        .any(|s| s.to_lowercase().contains(needle))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn identity(n: usize) -> Arc<ClientIdentity> {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &n.to_be_bytes());
        let fingerprint = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        Arc::new(ClientIdentity {
            subject_dn: format!("CN=person{n}"),
            issuer_dn: "CN=ca".into(),
            serial: format!("{n:X}"),
            fingerprint,
            names: Default::default(),
            not_after: 0,
        })
    }

    fn addr(n: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, n))
    }

    fn request(store: &Store, id: &Arc<ClientIdentity>, status: u16, at: u64) {
        store.finished_at(
            Finished {
                addr: addr(1),
                identity: Some(id),
                status,
                bytes_in: 10,
                bytes_out: 100,
            },
            at,
        );
    }

    #[test]
    fn a_request_counts_by_class_and_bytes() {
        let store = Store::new();
        let id = identity(1);
        request(&store, &id, 200, 1_000);
        request(&store, &id, 302, 2_000);
        request(&store, &id, 404, 3_000);
        request(&store, &id, 502, 4_000);
        let people = store.people("", 10);
        let p = &people.rows[0];
        assert_eq!((p.ok, p.client_errors, p.server_errors), (2, 1, 1));
        assert_eq!((p.bytes_in, p.bytes_out), (40, 400));
        assert_eq!((p.first_seen_ms, p.last_seen_ms), (1_000, 4_000));
    }

    #[test]
    fn a_hundred_thousand_identities_stay_bounded_and_keep_the_most_recent() {
        let store = Store::new();
        let ids: Vec<_> = (0..100_000).map(identity).collect();
        for (i, id) in ids.iter().enumerate() {
            request(&store, id, 200, 1_000 + i as u64);
        }
        let people = store.people("", 500);
        assert!(people.total <= MAX_PEOPLE, "{}", people.total);
        assert!(people.total > MAX_PEOPLE * 9 / 10, "{}", people.total);
        assert_eq!(people.evicted, (100_000 - people.total) as u64);
        assert_eq!(people.rows.len(), 500);
        // The most recently seen is first, and the last one seen is kept.
        assert_eq!(people.rows[0].identity.subject_dn, "CN=person99999");
        // The first ones seen are the ones forgotten.
        assert_eq!(store.people("CN=person0,", 10).matching, 0);
        assert!(store.people("", 10).rows.len() == 10);
    }

    #[test]
    fn the_busiest_are_found_among_everyone() {
        let store = Store::new();
        for n in 0..100 {
            for _ in 0..n % 7 {
                request(&store, &identity(n), 200, 60_000 * 10);
            }
        }
        // Fourteen people sent six requests each; any three of them are the busiest.
        let top = store.busiest(10, 3);
        assert_eq!(top.len(), 3);
        assert!(top.iter().all(|(n, p)| *n == 6 && p.ok == 6));
        // Ninety minutes later nobody has sent anything within the hour.
        assert!(store.busiest(100, 3).is_empty());
    }

    #[test]
    fn the_filter_matches_subject_and_fingerprint_ignoring_case() {
        let store = Store::new();
        request(&store, &identity(7), 200, 1);
        request(&store, &identity(8), 200, 2);
        assert_eq!(store.people("cn=PERSON7", 10).matching, 1);
        let fp = identity(8).fingerprint.clone();
        assert_eq!(store.people(&fp[10..30], 10).rows[0].identity.serial, "8");
        assert_eq!(store.people("nobody", 10).matching, 0);
    }

    fn refuse(store: &Store, from: u8, reason: &str, at: u64) {
        store.refused_at(
            RefusalNote {
                addr: addr(from),
                identity: None,
                subject: None,
                reason,
                words: reason,
                rate_limited: false,
                revoked: false,
            },
            at,
        );
    }

    #[test]
    fn a_flood_from_one_address_keeps_everyone_elses_refusals() {
        let store = Store::new();
        for n in 0..20 {
            refuse(&store, n, "expired", u64::from(n));
        }
        for i in 0..100_000 {
            refuse(&store, 200, "unknown issuer", 100 + i);
        }
        let (ring, per_reason, total) = store.refusals();
        assert_eq!(total, 100_020);
        assert_eq!(
            per_reason,
            vec![("expired".into(), 20), ("unknown issuer".into(), 100_000)]
        );
        assert_eq!(ring.len(), 20 + MAX_REFUSALS_PER_ADDRESS);
        let flood: Vec<_> = ring.iter().filter(|r| r.addr == addr(200)).collect();
        assert_eq!(flood.len(), MAX_REFUSALS_PER_ADDRESS);
        // Its newest are the ones kept.
        assert_eq!(flood.last().unwrap().at_ms, 100 + 99_999);
        for n in 0..20 {
            assert!(ring.iter().any(|r| r.addr == addr(n)), "{n} pushed out");
        }
    }

    /// One host holds a whole IPv6 /64 and can take a new address in it for every handshake:
    /// its flood is one address's, and still leaves everyone else's refusals in the ring.
    #[test]
    fn a_flood_from_one_ipv6_64_keeps_everyone_elses_refusals() {
        let store = Store::new();
        for n in 0..20 {
            refuse(&store, n, "expired", u64::from(n));
        }
        let base: u128 = 0x2001_0db8_0000_0001 << 64;
        for i in 0..100_000u64 {
            store.refused_at(
                RefusalNote {
                    addr: std::net::Ipv6Addr::from_bits(base | (u128::from(i) * 7919)).into(),
                    identity: None,
                    subject: None,
                    reason: "unknown issuer",
                    words: "unknown issuer",
                    rate_limited: false,
                    revoked: false,
                },
                100 + i,
            );
        }
        let (ring, _, total) = store.refusals();
        assert_eq!(total, 100_020);
        assert_eq!(ring.len(), 20 + MAX_REFUSALS_PER_ADDRESS);
        for n in 0..20 {
            assert!(ring.iter().any(|r| r.addr == addr(n)), "{n} pushed out");
        }
        // Two hosts in different /64s of one /48 are two.
        store.refused_at(
            RefusalNote {
                addr: std::net::Ipv6Addr::from_bits(0x2001_0db8_0000_0002 << 64).into(),
                identity: None,
                subject: None,
                reason: "expired",
                words: "expired",
                rate_limited: false,
                revoked: false,
            },
            200_000,
        );
        assert_eq!(store.refusals().0.len(), 21 + MAX_REFUSALS_PER_ADDRESS);
    }

    #[test]
    fn people_behind_one_address_keep_their_own_refusals() {
        let store = Store::new();
        let (a, b) = (identity(1), identity(2));
        for id in [&a, &b] {
            store.refused_at(
                RefusalNote {
                    addr: addr(9),
                    identity: Some(id),
                    subject: None,
                    reason: "route[0] /x allow",
                    words: "not on the list",
                    rate_limited: false,
                    revoked: false,
                },
                1,
            );
        }
        for i in 0..50 {
            refuse(&store, 9, "no certificate", 2 + i);
        }
        let (ring, _, _) = store.refusals();
        assert_eq!(ring.len(), 2 + MAX_REFUSALS_PER_ADDRESS);
        for id in [&a, &b] {
            assert!(
                ring.iter()
                    .any(|r| r.subject.as_deref() == Some(id.subject_dn.as_str()))
            );
        }
    }

    #[test]
    fn the_ring_holds_the_last_two_hundred() {
        let store = Store::new();
        for i in 0..1_000u64 {
            refuse(&store, (i % 250) as u8, "expired", i);
        }
        let (ring, _, total) = store.refusals();
        assert_eq!(total, 1_000);
        assert_eq!(ring.len(), MAX_REFUSALS);
        assert_eq!(ring.last().unwrap().at_ms, 999);
    }

    #[test]
    fn a_refused_request_marks_its_person() {
        let store = Store::new();
        let id = identity(3);
        store.refused_at(
            RefusalNote {
                addr: addr(1),
                identity: Some(&id),
                subject: None,
                reason: "rate_limit api",
                words: "Too many requests",
                rate_limited: true,
                revoked: true,
            },
            5,
        );
        let p = &store.people("", 1).rows[0];
        assert_eq!((p.refusals, p.rate_limited), (1, 1));
        assert!(p.revoked_while_connected);
        assert_eq!(p.last_refusal.as_deref(), Some("Too many requests"));
        assert_eq!(store.refusals().0[0].subject.as_deref(), Some("CN=person3"));
    }

    #[test]
    fn per_minute_counts_slide_over_the_hour() {
        let store = Store::new();
        let id = identity(1);
        request(&store, &id, 200, 0);
        request(&store, &id, 200, 30_000);
        request(&store, &id, 200, 60_000 * 5);
        let all = store.per_minute(5);
        assert_eq!(all[MINUTES - 1], 1);
        assert_eq!(all[MINUTES - 6], 2);
        assert_eq!(all.iter().sum::<u32>(), 3);
        // An hour later the early minutes have gone.
        let later = store.per_minute(62);
        assert_eq!(later.iter().sum::<u32>(), 1);
        assert_eq!(store.per_minute(200).iter().sum::<u32>(), 0);
        let person = store.people("", 1).rows[0].per_minute(5);
        assert_eq!(person.iter().sum::<u32>(), 3);
    }
}
