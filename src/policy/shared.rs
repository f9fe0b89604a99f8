//! `[shared]`: rate-limit zones kept in Redis, so several certgate replicas admit a zone's rate
//! together rather than each (spec §12). One atomic server-side script per check implements the
//! same GCRA as the local limiter (`burst` at once, then one per `1/rate`, `Retry-After` from the
//! theoretical arrival time), on Redis's own clock so replicas' clocks do not matter; keys expire
//! as soon as their bucket is full again.
//!
//! Redis slow, down, restarting or refusing never turns into an outage: a check waits at most
//! `timeout`, then `on_unavailable` decides (the replica's own limiter by default). The first
//! failure of an outage is logged and the recovery too, each once; the connection manager
//! reconnects in the background with backoff, and shared limits resume by themselves.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::ratelimit::{Key, Rate, Zone};
use crate::ops::metrics::Metrics;

/// What a check does while Redis cannot answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnUnavailable {
    /// The replica's own limiter for the zone (the default).
    #[default]
    Local,
    /// Admit.
    Allow,
    /// Refuse with 429.
    Deny,
}

impl OnUnavailable {
    /// The name used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            OnUnavailable::Local => "local",
            OnUnavailable::Allow => "allow",
            OnUnavailable::Deny => "deny",
        }
    }
}

/// `[shared]`, validated. Its `Debug` never shows the password.
#[derive(Clone)]
pub struct SharedConfig {
    /// Where Redis is, with the password from `password_file` when there is one.
    pub info: redis::ConnectionInfo,
    /// The URL as configured, any password in it replaced by `***`: for logs and `check`.
    pub shown: String,
    /// Longest wait for one check.
    pub timeout: Duration,
    /// What a check does while Redis cannot answer.
    pub on_unavailable: OnUnavailable,
    /// Prepended to every key.
    pub key_prefix: String,
    /// With `rediss://`: the roots (PEM) Redis's certificate must chain to, read before the
    /// sandbox closes: `tls_ca`, or the system's roots without it. `None` for plain `redis://`.
    pub tls_ca: Option<Vec<u8>>,
}

impl fmt::Debug for SharedConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedConfig")
            .field("redis", &self.shown)
            .field("timeout", &self.timeout)
            .field("on_unavailable", &self.on_unavailable)
            .field("key_prefix", &self.key_prefix)
            .finish_non_exhaustive()
    }
}

/// GCRA on Redis's clock, in microseconds. KEYS[1]: the bucket; ARGV[1]: the emission
/// interval; ARGV[2]: the burst tolerance, (burst - 1) intervals. Returns {1, 0} to admit or
/// {0, microseconds until a request would be admitted}.
const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local wait = tat - tolerance - now
if wait > 0 then return {0, wait} end
local new = tat + interval
redis.call('SET', KEYS[1], string.format('%d', new), 'PX', math.floor((new - now) / 1000) + 1)
return {1, 0}
";

/// What Redis said about one request.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Admitted.
    Admit,
    /// Refused; a request would be admitted after this long.
    Wait(Duration),
    /// Redis did not answer in time or at all: `on_unavailable` decides.
    Unavailable,
}

/// The connection to Redis and the outage state, shared by every zone.
pub struct SharedLimits {
    config: SharedConfig,
    conn: Mutex<Option<ConnectionManager>>,
    down: AtomicBool,
    script: redis::Script,
    metrics: Arc<Metrics>,
    /// Itself, for the task that watches for the end of an outage.
    me: Weak<SharedLimits>,
}

impl fmt::Debug for SharedLimits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedLimits")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Backoff between attempts to connect when Redis was not there at all.
const CONNECT_BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));

impl SharedLimits {
    /// Starts connecting to Redis in the background; checks before the connection is up are
    /// `Unavailable`. certgate starts and serves either way.
    pub fn new(config: SharedConfig, metrics: Arc<Metrics>) -> Arc<SharedLimits> {
        let shared = Arc::new_cyclic(|me| SharedLimits {
            config,
            conn: Mutex::new(None),
            down: AtomicBool::new(false),
            script: redis::Script::new(GCRA),
            metrics,
            me: me.clone(),
        });
        tokio::spawn(connect(Arc::downgrade(&shared)));
        shared
    }

    /// Whether `other` is the same `[shared]` section (a reload keeps the connection).
    pub fn same_as(&self, other: &SharedConfig) -> bool {
        self.config.shown == other.shown
            && self.config.info.redis_settings().password()
                == other.info.redis_settings().password()
            && self.config.timeout == other.timeout
            && self.config.on_unavailable == other.on_unavailable
            && self.config.key_prefix == other.key_prefix
            && self.config.tls_ca == other.tls_ca
    }

    /// Where Redis is (any password hidden) and whether the last check found it unavailable,
    /// for the operator's page.
    pub fn state(&self) -> (&str, bool) {
        (&self.config.shown, self.down.load(Ordering::Acquire))
    }

    /// What to do while Redis cannot answer.
    pub fn on_unavailable(&self) -> OnUnavailable {
        self.config.on_unavailable
    }

    /// Counts one request of `zone` under `key` in Redis.
    pub async fn check(&self, zone: &Zone, key: &Key) -> Verdict {
        let (rate, burst) = zone.quota();
        let bucket = match key {
            Key::Cert(f) => format!("{}rl:{}:c:{f}", self.config.key_prefix, zone.name),
            Key::Ip(ip) => format!("{}rl:{}:i:{ip}", self.config.key_prefix, zone.name),
        };
        self.gcra(bucket, rate, burst.get()).await
    }

    /// Counts one failed handshake from `ip` across replicas (`handshake_failures_per_ip`:
    /// `rate.count` at once, then one per `rate.per / rate.count`).
    pub async fn handshake_failed(&self, ip: std::net::IpAddr, rate: Rate) -> Verdict {
        let bucket = format!("{}hs:{}", self.config.key_prefix, ip.to_canonical());
        self.gcra(bucket, rate, rate.count.get()).await
    }

    async fn gcra(&self, bucket: String, rate: Rate, burst: u32) -> Verdict {
        let conn = self.conn.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let Some(mut conn) = conn else {
            self.unavailable("not connected yet");
            return Verdict::Unavailable;
        };
        let interval = (rate.per.as_micros() / u128::from(rate.count.get())).max(1);
        let tolerance = interval * u128::from(burst.saturating_sub(1));
        let mut call = self.script.key(bucket);
        call.arg(interval.to_string()).arg(tolerance.to_string());
        let answer = tokio::time::timeout(
            self.config.timeout,
            call.invoke_async::<(i64, i64)>(&mut conn),
        )
        .await;
        match answer {
            Ok(Ok((1, _))) => {
                self.available();
                Verdict::Admit
            }
            Ok(Ok((_, wait))) => {
                self.available();
                Verdict::Wait(wait_from_redis(wait, interval))
            }
            Ok(Err(e)) => {
                self.unavailable(&e.to_string());
                Verdict::Unavailable
            }
            Err(_) => {
                self.unavailable(&format!(
                    "no answer within {}",
                    humantime::format_duration(self.config.timeout)
                ));
                Verdict::Unavailable
            }
        }
    }

    fn unavailable(&self, why: &str) {
        self.metrics.shared_unavailable();
        if !self.down.swap(true, Ordering::AcqRel) {
            self.metrics.shared_up(false);
            tracing::warn!(
                redis = %self.config.shown,
                reason = why,
                on_unavailable = self.config.on_unavailable.as_str(),
                "shared limits unavailable; falling back until Redis answers again"
            );
            // Once connected, the end of an outage is noticed by asking Redis in the
            // background, not only by the next request: the gauge and the log say it at once.
            if self
                .conn
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_some()
            {
                tokio::spawn(recover(self.me.clone()));
            }
        }
    }

    fn available(&self) {
        if self.down.swap(false, Ordering::AcqRel) {
            self.metrics.shared_up(true);
            tracing::info!(redis = %self.config.shown, "shared limits available again");
        }
    }
}

/// The wait Redis answered, in microseconds, as a duration no longer than `interval` (the
/// zone's emission interval): the script never honestly answers more, since a refused
/// request's theoretical arrival time is at most one interval past the burst tolerance. Redis
/// is another process on the network; a wrong or hostile answer (`i64::MAX`) must not become
/// an instant past the end of time in a caller (`now + wait` panics) or a client refused for
/// ever.
fn wait_from_redis(wait: i64, interval: u128) -> Duration {
    let cap = u64::try_from(interval).unwrap_or(u64::MAX);
    Duration::from_micros(u64::try_from(wait).unwrap_or(0).min(cap))
}

/// Longest server URL taken from a binding in Redis: a configured server's URL is far shorter;
/// anything longer is not one of them and is not worth comparing.
const MAX_BOUND_URL: usize = 2048;

/// A year in milliseconds: the longest a binding is kept in Redis.
const YEAR_MS: u64 = 365 * 86_400_000;

/// Identity bindings across replicas (spec §12): `{key_prefix}bind:{group}:{client}` holds the
/// URL of the server the client was last bound or moved to, expiring after the group's
/// `affinity_timeout`. The client is its certificate's fingerprint or its address, never a
/// secret; nothing of it is logged. Same connection, timeout and outage handling as the
/// limits: a read Redis does not answer in time is "no binding", and the replica chooses by
/// itself.
impl crate::upstream::SharedBindings for SharedLimits {
    fn recall<'a>(&'a self, group: &'a str, client: &'a str) -> crate::upstream::Recalled<'a> {
        Box::pin(async move {
            let conn = self.conn.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let Some(mut conn) = conn else {
                self.unavailable("not connected yet");
                return None;
            };
            let mut cmd = redis::cmd("GET");
            cmd.arg(self.binding_key(group, client));
            match tokio::time::timeout(
                self.config.timeout,
                cmd.query_async::<Option<String>>(&mut conn),
            )
            .await
            {
                Ok(Ok(url)) => {
                    self.available();
                    url.filter(|u| u.len() <= MAX_BOUND_URL)
                }
                Ok(Err(e)) => {
                    self.unavailable(&e.to_string());
                    None
                }
                Err(_) => {
                    self.unavailable(&format!(
                        "no answer within {}",
                        humantime::format_duration(self.config.timeout)
                    ));
                    None
                }
            }
        })
    }

    fn remember(
        &self,
        group: &str,
        client: &str,
        server: &str,
        ttl: std::time::Duration,
    ) -> crate::upstream::Stored {
        let me = self.me.upgrade();
        let conn = self.conn.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let (Some(me), Some(mut conn)) = (me, conn) else {
            return Box::pin(async { false });
        };
        let mut cmd = redis::cmd("SET");
        // Within what Redis accepts for PX: a year is longer than any binding needs.
        let ttl_ms = u64::try_from(ttl.as_millis()).map_or(YEAR_MS, |ms| ms.clamp(1, YEAR_MS));
        cmd.arg(self.binding_key(group, client))
            .arg(server)
            .arg("PX")
            .arg(ttl_ms);
        Box::pin(async move {
            let done =
                tokio::time::timeout(me.config.timeout, cmd.query_async::<()>(&mut conn)).await;
            match done {
                Ok(Ok(())) => {
                    me.available();
                    true
                }
                Ok(Err(e)) => {
                    me.unavailable(&e.to_string());
                    false
                }
                Err(_) => {
                    me.unavailable("a binding was not stored in time");
                    false
                }
            }
        })
    }
}

impl SharedLimits {
    fn binding_key(&self, group: &str, client: &str) -> String {
        format!("{}bind:{group}:{client}", self.config.key_prefix)
    }
}

/// Connects, with backoff, until it succeeds or the limiter is gone; the connection manager
/// then reconnects by itself after any later failure.
async fn connect(shared: Weak<SharedLimits>) {
    let mut wait = CONNECT_BACKOFF.0;
    loop {
        let Some(s) = shared.upgrade() else { return };
        let timeout = s.config.timeout.max(Duration::from_millis(500));
        let settings = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_max_delay(Duration::from_secs(5));
        let attempt = async {
            let client = match &s.config.tls_ca {
                // rustls, on the process's one crypto provider, verifying against these roots
                // only. (The crate's `tls-rustls-webpki-roots` feature is on so that it does not
                // read the system's roots itself on every connect: under the sandbox that read
                // fails, and so would every connection.)
                Some(ca) => redis::Client::build_with_tls(
                    s.config.info.clone(),
                    redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(ca.clone()),
                    },
                )?,
                None => redis::Client::open(s.config.info.clone())?,
            };
            ConnectionManager::new_with_config(client, settings).await
        };
        match tokio::time::timeout(timeout * 4, attempt).await {
            Ok(Ok(conn)) => {
                *s.conn.lock().unwrap_or_else(|e| e.into_inner()) = Some(conn);
                s.metrics.shared_up(true);
                tracing::info!(redis = %s.config.shown, "shared limits connected to Redis");
                s.available();
                return;
            }
            Ok(Err(e)) => s.unavailable(&e.to_string()),
            Err(_) => s.unavailable("connecting timed out"),
        }
        drop(s);
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(CONNECT_BACKOFF.1);
    }
}

/// During an outage, PINGs Redis with backoff until it answers (then the outage is over) or a
/// request found it answering first.
async fn recover(shared: Weak<SharedLimits>) {
    let mut wait = CONNECT_BACKOFF.0;
    loop {
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(CONNECT_BACKOFF.1);
        let Some(s) = shared.upgrade() else { return };
        if !s.down.load(Ordering::Acquire) {
            return;
        }
        let conn = s.conn.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let Some(mut conn) = conn else { return };
        let cmd = redis::cmd("PING");
        let ping = cmd.query_async::<String>(&mut conn);
        if let Ok(Ok(_)) =
            tokio::time::timeout(s.config.timeout.max(Duration::from_millis(500)), ping).await
        {
            s.available();
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_from_redis_is_clamped_to_the_interval() {
        let minute = 60_000_000;
        assert_eq!(wait_from_redis(1_500, minute), Duration::from_micros(1_500));
        assert_eq!(
            wait_from_redis(i64::MAX, minute),
            Duration::from_secs(60),
            "a huge wait"
        );
        assert_eq!(
            wait_from_redis(-5, minute),
            Duration::ZERO,
            "a negative wait"
        );
    }
}
