//! The requests of one connection: how many are in flight and when the last one began or
//! ended, which tells the keep-alive loop how long the connection has been idle, and whether
//! the last request's body was left unread (hyper then closes the connection, so it must not
//! be parked). The handler begins a request; the [`Request`] guard it gets rides on the
//! response body and ends the request when the response is done or dropped, so no path can
//! forget to.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The request ledger of one connection.
#[derive(Debug)]
pub struct InFlight {
    count: AtomicUsize,
    /// When the last request began or ended, in ms since `epoch`.
    last_ms: AtomicU64,
    epoch: Instant,
    /// The last request had a body that was not seen to its end.
    body_pending: AtomicBool,
}

impl Default for InFlight {
    fn default() -> Self {
        InFlight::new()
    }
}

impl InFlight {
    /// A new connection: idle from now.
    pub fn new() -> InFlight {
        InFlight {
            count: AtomicUsize::new(0),
            last_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            body_pending: AtomicBool::new(false),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// A request started; `has_body` when its body is not known to be empty. It ends when the
    /// returned guard is dropped.
    pub fn begin(self: &Arc<Self>, has_body: bool) -> Request {
        self.body_pending.store(has_body, Ordering::Release);
        self.count.fetch_add(1, Ordering::AcqRel);
        self.last_ms.store(self.now_ms(), Ordering::Release);
        Request(self.clone())
    }

    /// How long the connection has been idle (zero while a request is in flight).
    pub fn idle_for(&self) -> Duration {
        if self.count.load(Ordering::Acquire) > 0 {
            return Duration::ZERO;
        }
        let last = self.last_ms.load(Ordering::Acquire);
        Duration::from_millis(self.now_ms().saturating_sub(last))
    }

    /// Changes whenever a request starts or ends: tells one idle period from the next.
    pub fn stamp(&self) -> u64 {
        self.last_ms.load(Ordering::Acquire)
    }

    /// The request body was read to its end.
    pub fn body_read(&self) {
        self.body_pending.store(false, Ordering::Release);
    }

    /// Whether the last request's body was left unread.
    pub fn body_pending(&self) -> bool {
        self.body_pending.load(Ordering::Acquire)
    }
}

/// One request in flight; dropping it ends the request.
#[derive(Debug)]
pub struct Request(Arc<InFlight>);

impl Drop for Request {
    fn drop(&mut self) {
        let ledger = &self.0;
        ledger.count.fetch_sub(1, Ordering::AcqRel);
        ledger.last_ms.store(ledger.now_ms(), Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_in_flight_until_its_guard_drops() {
        let ledger = Arc::new(InFlight::new());
        let before = ledger.stamp();
        let a = ledger.begin(true);
        let b = ledger.begin(false);
        assert_eq!(ledger.idle_for(), Duration::ZERO);
        assert!(!ledger.body_pending(), "the last request has no body");
        drop(a);
        assert_eq!(ledger.idle_for(), Duration::ZERO, "b is still in flight");
        drop(b);
        assert_eq!(ledger.count.load(Ordering::Acquire), 0);
        assert!(ledger.stamp() >= before);
    }
}
