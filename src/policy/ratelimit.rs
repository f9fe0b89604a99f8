//! Named rate-limit zones (nginx `limit_req_zone` + `limit_req ... burst=N nodelay`), GCRA from
//! the governor crate, keyed by the client certificate's fingerprint or by IP. Idle keys are
//! evicted periodically so memory stays bounded however many distinct clients come by.
//!
//! Semantics: `burst` requests may arrive at once; after that one more is allowed every
//! `1/rate`. (nginx admits `burst + 1` at once; certgate's `burst` is the exact number.)

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};

/// What a zone counts requests by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyBy {
    /// The client certificate's SHA-256 fingerprint; the IP when there is no certificate.
    Client,
    /// The client IP.
    Ip,
}

/// The key one request is counted under.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Key {
    /// A certificate fingerprint.
    Cert(Arc<str>),
    /// An IP address.
    Ip(IpAddr),
}

/// A parsed `rate` string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Requests...
    pub count: NonZeroU32,
    /// ...per this long.
    pub per: Duration,
}

impl Rate {
    /// Parses `"10/s"`, `"600/m"` or `"1000/h"`.
    ///
    /// # Errors
    /// A sentence saying what is wrong.
    pub fn parse(s: &str) -> Result<Rate, String> {
        let (n, unit) = s
            .trim()
            .split_once('/')
            .ok_or_else(|| format!("{s:?}: write a rate like \"10/s\" or \"600/m\""))?;
        let count: u32 = n
            .trim()
            .parse()
            .map_err(|_| format!("{s:?}: {n:?} is not a whole number"))?;
        let count =
            NonZeroU32::new(count).ok_or_else(|| format!("{s:?}: the rate must be above zero"))?;
        let per = match unit.trim() {
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            other => return Err(format!("{s:?}: unknown unit {other:?}; use s, m or h")),
        };
        Ok(Rate { count, per })
    }
}

type Limiter<C> =
    RateLimiter<Key, DashMapStateStore<Key>, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// One `[[rate_limit]]` zone.
pub struct Zone<C: Clock + Clone = DefaultClock> {
    /// The zone's name, for messages and logs.
    pub name: String,
    /// What it counts by.
    pub key_by: KeyBy,
    rate: Rate,
    burst: NonZeroU32,
    limiter: Limiter<C>,
    clock: C,
}

impl<C: Clock + Clone> std::fmt::Debug for Zone<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Zone")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Zone<DefaultClock> {
    /// A zone on the real clock.
    pub fn new(name: &str, key_by: KeyBy, rate: Rate, burst: NonZeroU32) -> Zone {
        Zone::with_clock(name, key_by, rate, burst, DefaultClock::default())
    }
}

impl<C: Clock + Clone> Zone<C> {
    /// A zone on `clock` (tests pass a fake one).
    pub fn with_clock(
        name: &str,
        key_by: KeyBy,
        rate: Rate,
        burst: NonZeroU32,
        clock: C,
    ) -> Zone<C> {
        let period = rate.per / rate.count.get();
        // A period of zero (a rate above one per nanosecond) cannot be configured meaningfully;
        // fall back to the fastest representable one.
        let quota = Quota::with_period(period.max(Duration::from_nanos(1)))
            .unwrap_or_else(|| Quota::per_second(rate.count))
            .allow_burst(burst);
        Zone {
            name: name.to_string(),
            key_by,
            rate,
            burst,
            limiter: RateLimiter::dashmap_with_clock(quota, clock.clone()),
            clock,
        }
    }

    /// Its rate and burst, for the shared limiter.
    pub fn quota(&self) -> (Rate, NonZeroU32) {
        (self.rate, self.burst)
    }

    /// Whether this zone was made from these settings.
    pub fn same_as(&self, name: &str, key_by: KeyBy, rate: Rate, burst: NonZeroU32) -> bool {
        self.name == name && self.key_by == key_by && self.rate == rate && self.burst == burst
    }

    /// Counts one request under `key`.
    ///
    /// # Errors
    /// How long until the next request would be admitted.
    pub fn check(&self, key: &Key) -> Result<(), Duration> {
        self.limiter
            .check_key(key)
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// Forgets keys whose bucket is full again, so idle clients cost no memory.
    pub fn evict_idle(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }

    /// Keys tracked now.
    #[cfg(test)]
    pub fn tracked(&self) -> usize {
        self.limiter.len()
    }
}

/// One `[[rate_limit]]` zone, validated.
#[derive(Debug, Clone)]
pub struct RateLimitZone {
    /// Kept per replica even with `[shared]` (`scope = "local"`).
    pub local: bool,
    /// Name.
    pub name: String,
    /// What it counts by.
    pub key_by: KeyBy,
    /// Sustained rate.
    pub rate: Rate,
    /// Requests allowed at once.
    pub burst: NonZeroU32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    fn zone(rate: &str, burst: u32) -> (Zone<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        let z = Zone::with_clock(
            "api",
            KeyBy::Ip,
            Rate::parse(rate).unwrap(),
            NonZeroU32::new(burst).unwrap(),
            clock.clone(),
        );
        (z, clock)
    }

    #[test]
    fn exactly_burst_then_refused_then_refilled_at_the_rate() {
        let (z, clock) = zone("10/s", 20);
        let k = Key::Ip("10.0.0.1".parse().unwrap());
        for i in 0..20 {
            assert!(z.check(&k).is_ok(), "request {i} of the burst");
        }
        let wait = z.check(&k).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
        clock.advance(Duration::from_millis(100));
        assert!(z.check(&k).is_ok());
        assert!(z.check(&k).is_err());
        // Another key has its own bucket.
        assert!(z.check(&Key::Ip("10.0.0.2".parse().unwrap())).is_ok());
    }

    #[test]
    fn idle_keys_are_evicted() {
        let (z, clock) = zone("1/s", 2);
        for i in 0..100u32 {
            let _ = z.check(&Key::Cert(Arc::from(i.to_string())));
        }
        assert_eq!(z.tracked(), 100);
        clock.advance(Duration::from_secs(10));
        z.evict_idle();
        assert_eq!(z.tracked(), 0);
    }

    #[test]
    fn rate_strings() {
        assert_eq!(Rate::parse("10/s").unwrap().per, Duration::from_secs(1));
        assert_eq!(Rate::parse("600/m").unwrap().count.get(), 600);
        assert!(Rate::parse("10").is_err());
        assert!(Rate::parse("0/s").is_err());
        assert!(Rate::parse("ten/s").is_err());
        assert!(Rate::parse("10/d").is_err());
    }
}
