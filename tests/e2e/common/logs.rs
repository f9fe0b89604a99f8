//! Captures the proxy's log lines in a test. Tests run on a current-thread runtime, so every
//! event of the proxy a test starts is emitted on that test's thread: one global subscriber
//! writes each line to the capture registered for the current thread. (A per-thread default
//! subscriber would not do: tracing caches callsite interest globally, so a callsite first hit on
//! a thread without a subscriber would stay silent for everyone.) Waiting for a line is done on a
//! notification, never by sleeping.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::cell::RefCell;
use std::sync::Once;

use tokio::sync::Notify;

#[derive(Clone, Default)]
pub struct LogCapture {
    buf: Arc<Mutex<Vec<u8>>>,
    notify: Arc<Notify>,
}

thread_local! {
    static CURRENT: RefCell<Option<LogCapture>> = const { RefCell::new(None) };
}

struct Writer;

impl Write for Writer {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        CURRENT.with(|c| {
            if let Some(cap) = c.borrow().as_ref() {
                cap.buf.lock().unwrap().extend_from_slice(data);
                cap.notify.notify_waiters();
            }
        });
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogCapture {
    /// Starts capturing this thread's log lines; keep the guard alive for the test.
    pub fn start() -> (LogCapture, CaptureGuard) {
        static INIT: Once = Once::new();
        INIT.call_once(|| {
            tracing_subscriber::fmt()
                .with_ansi(false)
                .with_max_level(tracing::Level::DEBUG)
                .with_writer(|| Writer)
                .init();
        });
        let cap = LogCapture::default();
        CURRENT.with(|c| *c.borrow_mut() = Some(cap.clone()));
        (cap, CaptureGuard)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.buf.lock().unwrap()).into_owned()
    }

    /// Waits (bounded) until a line contains every one of `needles`, and returns it.
    pub async fn wait_for(&self, needles: &[&str]) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(line) = self
                .text()
                .lines()
                .find(|l| needles.iter().all(|n| l.contains(n)))
            {
                return line.to_string();
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!(
                    "no log line with {needles:?} within 10s; logs:\n{}",
                    self.text()
                );
            }
        }
    }
}

impl LogCapture {
    /// Waits (bounded) until `n` lines contain `needle`.
    pub async fn wait_count(&self, needle: &str, n: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.text().matches(needle).count() >= n {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!(
                    "fewer than {n} log lines with {needle:?} within 10s; logs:\n{}",
                    self.text()
                );
            }
        }
    }
}

/// Stops the capture of the current thread when dropped.
pub struct CaptureGuard;

impl Drop for CaptureGuard {
    fn drop(&mut self) {
        CURRENT.with(|c| *c.borrow_mut() = None);
    }
}
