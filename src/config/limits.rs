//! `[limits]` and `[[rate_limit]]`: body size, connection counts and timeouts of the main
//! listener, and the rate-limit zones routes refer to by name.

use std::num::NonZeroU32;
use std::time::Duration;

use toml::Spanned;

use super::Validator;
use super::raw::{RawLimits, RawRateLimit};
use crate::policy::ratelimit::{Rate, RateLimitZone};

/// The classic guide's `client_max_body_size 50M`; nginx's own 1 MiB default breaks image
/// uploads to a WebUI.
pub(super) const DEFAULT_MAX_BODY: &str = "50MiB";
/// Far above what one machine's backend can serve, low enough to keep file descriptors for
/// the admin side and the backend pool.
const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// A browser opens at most ~6 HTTP/1.1 connections per host; 256 leaves room for NAT.
const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 256;
/// nginx's `client_header_timeout` is 60 s; a real client sends its head at once.
const DEFAULT_HEADER_READ_TIMEOUT: &str = "30s";
/// nginx's `keepalive_timeout` default.
const DEFAULT_KEEPALIVE_TIMEOUT: &str = "75s";
/// nginx's `send_timeout` default.
const DEFAULT_SEND_TIMEOUT: &str = "60s";
/// nginx's `client_body_timeout` default: a client on a slow link still sends something every
/// few seconds, and one that sends nothing for a minute has gone or is holding a backend
/// connection open on purpose.
const DEFAULT_BODY_TIMEOUT: &str = "60s";
/// A browser that lacks the right certificate fails a handful of times; a scanner fails
/// thousands. 20 a minute costs a few milliseconds of CPU per minute per address.
const DEFAULT_HANDSHAKE_FAILURES: &str = "20/m";

/// `[limits]`, validated.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest request body, bytes.
    pub max_body: u64,
    /// Open connections, whole daemon.
    pub max_connections: usize,
    /// Open connections per client IP.
    pub max_connections_per_ip: usize,
    /// HTTP/1 request-head deadline.
    pub header_read_timeout: Duration,
    /// Idle connection deadline.
    pub keepalive_timeout: Duration,
    /// `[limits] send_timeout`: a client that takes nothing of what certgate sends for this
    /// long is disconnected (nginx `send_timeout`).
    pub send_timeout: Duration,
    /// `[limits] body_timeout`: the longest silence between two reads of a request body
    /// (nginx `client_body_timeout`); the client then gets 408.
    pub body_timeout: Duration,
    /// Failed handshakes allowed per IP.
    pub handshake_failures_per_ip: Rate,
}

impl Validator<'_> {
    pub(super) fn count(&mut self, key: &str, v: Option<&Spanned<usize>>, default: usize) -> usize {
        match v {
            None => default,
            Some(n) if *n.get_ref() > 0 => *n.get_ref(),
            Some(n) => {
                self.problem(key, Some(n.span()), "must be at least 1");
                default
            }
        }
    }

    pub(super) fn limits(&mut self, raw: &RawLimits) -> Limits {
        Limits {
            max_body: self.size("limits.max_body", raw.max_body.as_ref(), DEFAULT_MAX_BODY),
            max_connections: self.count(
                "limits.max_connections",
                raw.max_connections.as_ref(),
                DEFAULT_MAX_CONNECTIONS,
            ),
            max_connections_per_ip: self.count(
                "limits.max_connections_per_ip",
                raw.max_connections_per_ip.as_ref(),
                DEFAULT_MAX_CONNECTIONS_PER_IP,
            ),
            header_read_timeout: self.duration(
                "limits.header_read_timeout",
                raw.header_read_timeout.as_ref(),
                DEFAULT_HEADER_READ_TIMEOUT,
            ),
            keepalive_timeout: self.duration(
                "limits.keepalive_timeout",
                raw.keepalive_timeout.as_ref(),
                DEFAULT_KEEPALIVE_TIMEOUT,
            ),
            send_timeout: self.duration(
                "limits.send_timeout",
                raw.send_timeout.as_ref(),
                DEFAULT_SEND_TIMEOUT,
            ),
            body_timeout: self.duration(
                "limits.body_timeout",
                raw.body_timeout.as_ref(),
                DEFAULT_BODY_TIMEOUT,
            ),
            handshake_failures_per_ip: match &raw.handshake_failures_per_ip {
                None => Rate::parse(DEFAULT_HANDSHAKE_FAILURES).unwrap_or(Rate {
                    count: NonZeroU32::MIN,
                    per: Duration::from_secs(3),
                }),
                Some(v) => Rate::parse(v.get_ref()).unwrap_or_else(|m| {
                    self.problem("limits.handshake_failures_per_ip", Some(v.span()), m);
                    Rate {
                        count: NonZeroU32::MIN,
                        per: Duration::from_secs(3),
                    }
                }),
            },
        }
    }

    pub(super) fn rate_limits(&mut self, raw: &[RawRateLimit]) -> Vec<RateLimitZone> {
        let mut zones: Vec<RateLimitZone> = Vec::new();
        for (i, z) in raw.iter().enumerate() {
            let name = z.name.get_ref().trim().to_string();
            if name.is_empty() || zones.iter().any(|other| other.name == name) {
                self.problem(
                    &format!("rate_limit[{i}].name"),
                    Some(z.name.span()),
                    format!("{name:?}: zone names must be unique and not empty"),
                );
            }
            let rate = match Rate::parse(z.rate.get_ref()) {
                Ok(r) => r,
                Err(m) => {
                    self.problem(&format!("rate_limit[{i}].rate"), Some(z.rate.span()), m);
                    continue;
                }
            };
            let burst = match &z.burst {
                None => NonZeroU32::MIN,
                Some(b) => NonZeroU32::new(*b.get_ref()).unwrap_or_else(|| {
                    self.problem(
                        &format!("rate_limit[{i}].burst"),
                        Some(b.span()),
                        "must be at least 1",
                    );
                    NonZeroU32::MIN
                }),
            };
            let local = match z.scope.as_ref().map(|s| s.get_ref().as_str()) {
                None | Some("shared") => false,
                Some("local") => true,
                Some(other) => {
                    self.problem(
                        &format!("rate_limit[{i}].scope"),
                        z.scope.as_ref().map(Spanned::span),
                        format!("{other:?}: use \"shared\" or \"local\""),
                    );
                    false
                }
            };
            zones.push(RateLimitZone {
                local,
                name,
                key_by: z.key,
                rate,
                burst,
            });
        }
        zones
    }
}
