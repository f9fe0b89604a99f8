//! Who may connect at all: IP allow-lists (CIDR, IPv4 and IPv6) and connection limits, checked
//! at accept time, before any TLS work, so a refused peer costs no handshake.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use ipnet::{IpNet, Ipv4Net};

/// An IP allow-list; empty means everyone.
#[derive(Debug, Clone, Default)]
pub struct IpList(Vec<IpNet>);

impl IpList {
    /// Parses entries like `"10.0.0.0/8"`, `"192.168.1.7"` or `"::1"`. IPv4-mapped IPv6 entries
    /// (`::ffff:10.0.0.0/104`) are stored as IPv4, so both spellings of a peer match.
    ///
    /// # Errors
    /// The first entry that is neither an address nor a CIDR block, with why.
    pub fn parse<S: AsRef<str>>(items: &[S]) -> Result<IpList, (usize, String)> {
        let mut nets = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let item = item.as_ref().trim();
            let net = match item.parse::<IpNet>() {
                Ok(n) => n,
                Err(_) => match item.parse::<IpAddr>() {
                    Ok(ip) => IpNet::from(ip),
                    Err(_) => {
                        return Err((
                            i,
                            format!(
                                "{item:?} is neither an IP address nor a CIDR block like \"10.0.0.0/8\" or \"fd00::/8\""
                            ),
                        ));
                    }
                },
            };
            nets.push(canonical_net(net));
        }
        Ok(IpList(nets))
    }

    /// No entries: everyone is allowed.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `ip` is allowed (always, for an empty list).
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.is_empty() || self.0.iter().any(|n| n.contains(&ip))
    }
}

fn canonical_net(net: IpNet) -> IpNet {
    if let IpNet::V6(v6) = net
        && let (Some(v4), true) = (v6.addr().to_ipv4_mapped(), v6.prefix_len() >= 96)
        && let Ok(n) = Ipv4Net::new(v4, v6.prefix_len() - 96)
    {
        return IpNet::V4(n.trunc());
    }
    net.trunc()
}

/// Which connection limit was hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitHit {
    /// `max_connections` for the whole daemon.
    Total,
    /// `max_connections_per_ip`.
    PerIp,
}

impl LimitHit {
    /// For the log line.
    pub fn reason(self) -> &'static str {
        match self {
            LimitHit::Total => "max_connections reached",
            LimitHit::PerIp => "max_connections_per_ip reached",
        }
    }
}

/// Open-connection counters, taken before the handshake and released when the connection ends.
#[derive(Debug)]
pub struct ConnLimits {
    max_total: AtomicUsize,
    max_per_ip: AtomicUsize,
    total: AtomicUsize,
    by_ip: Mutex<HashMap<IpAddr, usize>>,
}

/// Holds one connection's place; dropping it releases the place.
#[derive(Debug)]
pub struct ConnGuard {
    limits: Arc<ConnLimits>,
    ip: IpAddr,
}

impl ConnLimits {
    /// Limits for the whole daemon and per client IP.
    pub fn new(max_total: usize, max_per_ip: usize) -> Arc<ConnLimits> {
        Arc::new(ConnLimits {
            max_total: AtomicUsize::new(max_total),
            max_per_ip: AtomicUsize::new(max_per_ip),
            total: AtomicUsize::new(0),
            by_ip: Mutex::new(HashMap::new()),
        })
    }

    /// Takes a place for a connection from `ip`.
    ///
    /// # Errors
    /// The limit that is full.
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Result<ConnGuard, LimitHit> {
        let ip = ip.to_canonical();
        let mut by_ip = self.by_ip.lock().unwrap_or_else(|e| e.into_inner());
        if self.total.load(Ordering::Relaxed) >= self.max_total.load(Ordering::Relaxed) {
            return Err(LimitHit::Total);
        }
        let n = by_ip.entry(ip).or_insert(0);
        if *n >= self.max_per_ip.load(Ordering::Relaxed) {
            return Err(LimitHit::PerIp);
        }
        *n += 1;
        self.total.fetch_add(1, Ordering::Relaxed);
        Ok(ConnGuard {
            limits: self.clone(),
            ip,
        })
    }

    /// New limits after a reload; open connections are not closed, only new ones counted.
    pub fn set_limits(&self, max_total: usize, max_per_ip: usize) {
        self.max_total.store(max_total, Ordering::Relaxed);
        self.max_per_ip.store(max_per_ip, Ordering::Relaxed);
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let mut by_ip = self.limits.by_ip.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = by_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                by_ip.remove(&self.ip);
            }
        }
        self.limits.total.fetch_sub(1, Ordering::Relaxed);
    }
}

/// `[limits] handshake_failures_per_ip`: an address whose handshakes keep failing (a scanner
/// with bad or no certificates) is refused at accept, before any TLS work, until its rate of
/// failures drops back under the limit.
pub struct HandshakeThrottle {
    rate: crate::policy::ratelimit::Rate,
    limiter: governor::DefaultKeyedRateLimiter<IpAddr>,
    blocked: Mutex<HashMap<IpAddr, std::time::Instant>>,
}

impl std::fmt::Debug for HandshakeThrottle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandshakeThrottle")
            .field("rate", &self.rate)
            .finish_non_exhaustive()
    }
}

impl HandshakeThrottle {
    /// `rate.count` failures at once, then one more per `rate.per / rate.count`.
    pub fn new(rate: crate::policy::ratelimit::Rate) -> HandshakeThrottle {
        let period = (rate.per / rate.count.get()).max(std::time::Duration::from_nanos(1));
        let quota = governor::Quota::with_period(period)
            .unwrap_or_else(|| governor::Quota::per_minute(rate.count))
            .allow_burst(rate.count);
        HandshakeThrottle {
            rate,
            limiter: governor::RateLimiter::keyed(quota),
            blocked: Mutex::new(HashMap::new()),
        }
    }

    /// The settings it was made with.
    pub fn rate(&self) -> crate::policy::ratelimit::Rate {
        self.rate
    }

    /// Counts a failed handshake from `ip`; returns how long the address is now refused, when
    /// this failure put it over the limit.
    pub fn failed(&self, ip: IpAddr) -> Option<std::time::Duration> {
        use governor::clock::{Clock as _, DefaultClock};
        let ip = ip.to_canonical();
        match self.limiter.check_key(&ip) {
            Ok(()) => None,
            Err(not_until) => {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                self.block(ip, wait).then_some(wait)
            }
        }
    }

    /// Refuses `ip` for `wait` (the shared count across replicas said so); whether it was not
    /// refused already.
    pub fn block(&self, ip: IpAddr, wait: std::time::Duration) -> bool {
        let ip = ip.to_canonical();
        // Checked: `wait` may come from Redis; past what an Instant holds means "a long time".
        let now = std::time::Instant::now();
        let until = now
            .checked_add(wait)
            .or_else(|| now.checked_add(std::time::Duration::from_secs(86_400 * 365)))
            .unwrap_or(now);
        let mut blocked = self.blocked.lock().unwrap_or_else(|e| e.into_inner());
        let now = std::time::Instant::now();
        match blocked.get(&ip) {
            Some(prev) if *prev >= until => false,
            Some(prev) => {
                let newly = *prev < now;
                blocked.insert(ip, until);
                newly
            }
            None => {
                blocked.insert(ip, until);
                true
            }
        }
    }

    /// Whether `ip` is refused now.
    pub fn is_blocked(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        let blocked = self.blocked.lock().unwrap_or_else(|e| e.into_inner());
        blocked
            .get(&ip)
            .is_some_and(|until| *until > std::time::Instant::now())
    }

    /// How much longer `ip` is refused, when it is.
    pub fn blocked_for(&self, ip: IpAddr) -> Option<std::time::Duration> {
        let ip = ip.to_canonical();
        let blocked = self.blocked.lock().unwrap_or_else(|e| e.into_inner());
        let left = blocked
            .get(&ip)?
            .checked_duration_since(std::time::Instant::now())?;
        (!left.is_zero()).then_some(left)
    }

    /// Forgets addresses whose block ran out and idle counters.
    pub fn evict(&self) {
        let now = std::time::Instant::now();
        self.blocked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, until| *until > now);
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evict_forgets_blocks_that_ran_out_and_keeps_the_others() {
        let t = HandshakeThrottle::new(crate::policy::ratelimit::Rate::parse("3/m").unwrap());
        let (gone, kept): (IpAddr, IpAddr) =
            ("10.9.0.1".parse().unwrap(), "10.9.0.2".parse().unwrap());
        {
            let mut blocked = t.blocked.lock().unwrap();
            let now = std::time::Instant::now();
            blocked.insert(gone, now - std::time::Duration::from_secs(1));
            blocked.insert(kept, now + std::time::Duration::from_secs(60));
        }
        t.evict();
        let blocked = t.blocked.lock().unwrap();
        assert!(!blocked.contains_key(&gone));
        assert!(blocked.contains_key(&kept));
    }

    #[test]
    fn cidr_v4_v6_and_mapped() {
        let l = IpList::parse(&[
            "192.168.1.0/24",
            "10.0.0.0/8",
            "::1",
            "::ffff:172.16.0.0/108",
        ])
        .unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(l.allows(ip("192.168.1.77")));
        assert!(l.allows(ip("::ffff:192.168.1.77")));
        assert!(!l.allows(ip("192.168.2.1")));
        assert!(l.allows(ip("::1")));
        assert!(l.allows(ip("172.16.3.4")));
        assert!(!l.allows(ip("::2")));
        assert!(IpList::parse(&["10.0.0.0/33"]).is_err());
        assert!(IpList::parse(&["nope"]).is_err());
        assert!(IpList::default().allows(ip("8.8.8.8")));
    }

    #[test]
    fn handshake_throttle_blocks_after_the_burst() {
        let t = HandshakeThrottle::new(crate::policy::ratelimit::Rate::parse("3/m").unwrap());
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        assert!(t.failed(ip).is_none());
        assert!(t.failed(ip).is_none());
        assert!(t.failed(ip).is_none());
        assert!(!t.is_blocked(ip));
        let wait = t.failed(ip).expect("the fourth failure blocks");
        assert!(wait > std::time::Duration::ZERO);
        assert!(t.is_blocked(ip));
        assert!(
            t.is_blocked("::ffff:10.1.2.3".parse().unwrap()),
            "mapped spelling"
        );
        assert!(t.failed(ip).is_none(), "blocked once, logged once");
        let left = t.blocked_for(ip).expect("still refused");
        assert!(left > std::time::Duration::ZERO && left <= wait, "{left:?}");
        assert!(t.blocked_for("10.1.2.4".parse().unwrap()).is_none());
        assert!(!t.is_blocked("10.1.2.4".parse().unwrap()));
    }

    #[test]
    fn a_block_longer_than_time_holds_does_not_panic() {
        let t = HandshakeThrottle::new(crate::policy::ratelimit::Rate::parse("3/m").unwrap());
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        assert!(t.block(ip, std::time::Duration::MAX));
        assert!(t.is_blocked(ip));
    }

    #[test]
    fn limits_count_and_release() {
        let l = ConnLimits::new(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let g1 = l.try_acquire(a).unwrap();
        let _g2 = l.try_acquire(a).unwrap();
        assert_eq!(l.try_acquire(a).unwrap_err(), LimitHit::PerIp);
        let _g3 = l.try_acquire(b).unwrap();
        assert_eq!(l.try_acquire(b).unwrap_err(), LimitHit::Total);
        drop(g1);
        let _g4 = l.try_acquire(b).unwrap();
        assert_eq!(l.open(), 3);
    }
}
