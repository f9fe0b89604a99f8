//! Log setup: `tracing` events to stderr (journald and docker collect them there), as text or one
//! JSON object per line. `RUST_LOG` overrides the level filter (default `info`).
//!
//! Access-log lines are batched: under load, one `write(2)` per request costs about as much as
//! the proxying itself on loopback, so the runtime of [`block_on`] collects access lines and
//! writes them out whenever a worker thread runs out of work (at once when the proxy is idle,
//! about once per event-loop turn under load), when 32 KiB have gathered, at least every second,
//! before any other log line (so lines stay in order), and at exit. nginx's `access_log ...
//! buffer=32k flush=1s` is the same trade; only a process killed with SIGKILL can lose the last
//! second's access lines. Every other event is written at once.

use std::fmt::{self, Write as _};
use std::future::Future;
use std::io::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tracing::field::{Field, Visit};
use tracing::{Event, Metadata, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::{Format, Json, Writer};
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;

/// The tracing target of access-log lines (written by `response::access_log`), which this
/// module batches and formats by hand.
pub const ACCESS_TARGET: &str = "certgate::access";

/// Access lines gathered beyond this are written without waiting.
const BATCH_MAX: usize = 32 << 10;

/// The longest an access line waits while every worker stays busy.
const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// Access lines not yet written.
static PENDING: Mutex<Batch> = Mutex::new(Batch(Vec::new()));

/// Whether access lines are batched: only once a runtime that flushes them exists, so a process
/// (or a test) without one writes every line at once.
static BATCHING: AtomicBool = AtomicBool::new(false);

/// Installs the global subscriber. Calling it twice is harmless (the second call is ignored),
/// which keeps tests that start several proxies simple.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(Stderr)
        .with_target(true);
    let _ = match format {
        LogFormat::Text => builder.with_ansi(false).try_init(),
        LogFormat::Json => builder
            .json()
            .event_format(AccessJson {
                standard: tracing_subscriber::fmt::format()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false),
            })
            .try_init(),
    };
}

/// The JSON event format: tracing-subscriber's own, except for access lines, which are written
/// straight into the line buffer. The standard path formats the timestamp into its own `String`
/// and passes every piece through serde and a UTF-8 re-check; that was most of the JSON access
/// log's cost per request. The output is the same object: timestamp, level, the event's fields in
/// order, target.
struct AccessJson {
    standard: Format<Json, SystemTime>,
}

impl<S, N> FormatEvent<S, N> for AccessJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        if meta.target() != ACCESS_TARGET {
            return self.standard.format_event(ctx, w, event);
        }
        w.write_str("{\"timestamp\":\"")?;
        SystemTime.format_time(&mut w)?;
        write!(w, "\",\"level\":\"{}\"", meta.level())?;
        let mut fields = JsonFields {
            w: &mut w,
            result: Ok(()),
        };
        event.record(&mut fields);
        fields.result?;
        w.write_str(",\"target\":")?;
        json_str(&mut w, meta.target())?;
        w.write_str("}\n")
    }
}

/// Writes each field as `,"name":value`.
struct JsonFields<'a, 'w> {
    w: &'a mut Writer<'w>,
    result: fmt::Result,
}

impl JsonFields<'_, '_> {
    fn entry(&mut self, field: &Field, value: impl FnOnce(&mut Writer<'_>) -> fmt::Result) {
        if self.result.is_ok() {
            self.result = self
                .w
                .write_char(',')
                .and_then(|()| json_str(self.w, field.name()))
                .and_then(|()| self.w.write_char(':'))
                .and_then(|()| value(self.w));
        }
    }
}

impl Visit for JsonFields<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.entry(field, |w| json_str(w, value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.entry(field, |w| {
            w.write_char('"')?;
            write!(JsonEscape(&mut *w), "{value:?}")?;
            w.write_char('"')
        });
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.entry(field, |w| write!(w, "{value}"));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.entry(field, |w| write!(w, "{value}"));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.entry(field, |w| write!(w, "{value}"));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        // JSON has no NaN or infinity; serde_json writes null for them too.
        if value.is_finite() {
            self.entry(field, |w| write!(w, "{value}"));
        } else {
            self.entry(field, |w| w.write_str("null"));
        }
    }
}

fn json_str(w: &mut impl fmt::Write, s: &str) -> fmt::Result {
    w.write_char('"')?;
    JsonEscape(&mut *w).write_str(s)?;
    w.write_char('"')
}

/// Escapes what JSON requires inside a string (quote, backslash, control characters), as
/// serde_json does; everything else passes through in runs.
struct JsonEscape<W>(W);

impl<W: fmt::Write> fmt::Write for JsonEscape<W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut start = 0;
        for (i, b) in s.bytes().enumerate() {
            let escape = match b {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                0..=0x1f => "",
                _ => continue,
            };
            self.0.write_str(&s[start..i])?;
            if escape.is_empty() {
                write!(self.0, "\\u{b:04x}")?;
            } else {
                self.0.write_str(escape)?;
            }
            start = i + 1;
        }
        self.0.write_str(&s[start..])
    }
}

/// Runs the daemon's `main` on a multi-thread runtime whose workers write batched access lines
/// out, and writes out the rest once it has shut down.
///
/// # Errors
/// When the runtime cannot be built (no threads).
pub fn block_on<F: Future>(main: F) -> std::io::Result<F::Output> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_park(flush)
        .on_thread_stop(flush)
        .build()?;
    // A worker busy for seconds on end (a long transfer) does not park: the ticker bounds how
    // long a line can wait.
    rt.spawn(async {
        let mut tick = tokio::time::interval(FLUSH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            flush();
        }
    });
    BATCHING.store(true, Ordering::Relaxed);
    let out = rt.block_on(main);
    drop(rt);
    // Nothing flushes any more: later lines go straight out, earlier ones now.
    BATCHING.store(false, Ordering::Relaxed);
    flush();
    Ok(out)
}

/// Writes out the access lines gathered so far.
fn flush() {
    // Nothing sensible can be done when stderr fails; the lines are dropped rather than kept
    // growing.
    let _ = lock().flush(&mut std::io::stderr());
}

fn lock() -> std::sync::MutexGuard<'static, Batch> {
    // A panic while holding the lock leaves only whole lines behind, which are fine to write.
    PENDING.lock().unwrap_or_else(|e| e.into_inner())
}

/// Lines held back, in the order they came.
struct Batch(Vec<u8>);

impl Batch {
    /// Takes one line: `hold` lines wait for a flush or a full batch; any other line is written
    /// at once, after the ones waiting. A failed write drops what was pending.
    fn line(&mut self, line: &[u8], hold: bool, out: &mut impl Write) -> std::io::Result<()> {
        if self.0.is_empty() && !hold {
            return out.write_all(line);
        }
        self.0.extend_from_slice(line);
        if hold && self.0.len() < BATCH_MAX {
            return Ok(());
        }
        self.flush(out)
    }

    fn flush(&mut self, out: &mut impl Write) -> std::io::Result<()> {
        if self.0.is_empty() {
            return Ok(());
        }
        let r = out.write_all(&self.0);
        self.0.clear();
        r
    }
}

/// stderr, with access lines batched (see the module docs).
struct Stderr;

impl<'a> MakeWriter<'a> for Stderr {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> LineWriter {
        LineWriter { batch: false }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> LineWriter {
        LineWriter {
            batch: meta.target() == ACCESS_TARGET && BATCHING.load(Ordering::Relaxed),
        }
    }
}

/// Receives one formatted event (tracing-subscriber writes each with one `write_all`).
struct LineWriter {
    batch: bool,
}

impl Write for LineWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        lock().line(buf, self.batch, &mut std::io::stderr())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable key=value lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn access_lines_wait_and_other_lines_keep_their_order() {
        let mut batch = Batch(Vec::new());
        let mut out = Vec::new();
        batch.line(b"a1\n", true, &mut out).unwrap();
        batch.line(b"a2\n", true, &mut out).unwrap();
        assert!(out.is_empty(), "access lines wait for a flush");
        batch.line(b"warn\n", false, &mut out).unwrap();
        assert_eq!(out, b"a1\na2\nwarn\n");
        batch.line(b"warn2\n", false, &mut out).unwrap();
        batch.line(b"a3\n", true, &mut out).unwrap();
        batch.flush(&mut out).unwrap();
        assert_eq!(out, b"a1\na2\nwarn\nwarn2\na3\n");
    }

    #[test]
    fn a_full_batch_is_written_without_waiting() {
        let mut batch = Batch(Vec::new());
        let mut out = Vec::new();
        let line = [b'x'; 1000];
        let mut n = 0;
        while out.is_empty() {
            batch.line(&line, true, &mut out).unwrap();
            n += 1;
        }
        assert_eq!(n, BATCH_MAX.div_ceil(line.len()));
        assert_eq!(out.len(), n * line.len());
        assert!(batch.0.is_empty());
    }

    /// Captures what a subscriber writes.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn emit(fast: bool) -> serde_json::Value {
        let out = Captured::default();
        let writer = out.clone();
        let standard = tracing_subscriber::fmt::format()
            .json()
            .flatten_event(true)
            .with_current_span(false);
        let builder = tracing_subscriber::fmt()
            .json()
            .with_writer(move || writer.clone());
        let emit = || {
            let peer: std::net::SocketAddr = "[::1]:4433".parse().unwrap();
            tracing::info!(
                target: ACCESS_TARGET,
                client = %peer,
                dn = "CN=\"quoted\" \\ back,O=tab\there\nnl\u{1}ctl,L=Zürich",
                method = ?http::Method::POST,
                status = 200u16,
                bytes = 12_345u64,
                offset = -3i64,
                whole = true,
                duration_ms = 0.25,
                nan = f64::NAN,
                "request"
            );
        };
        if fast {
            let sub = builder.event_format(AccessJson { standard }).finish();
            tracing::subscriber::with_default(sub, emit);
        } else {
            tracing::subscriber::with_default(builder.event_format(standard).finish(), emit);
        }
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.matches('\n').count(), 1, "one line: {text}");
        let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert!(v["timestamp"].as_str().unwrap().ends_with('Z'));
        v["timestamp"] = serde_json::Value::Null;
        v
    }

    /// The hand-written access line is the object tracing-subscriber's JSON format makes, also
    /// for values that need escaping.
    #[test]
    fn fast_access_json_matches_the_standard_format() {
        let fast = emit(true);
        assert_eq!(fast, emit(false));
        assert_eq!(
            fast["dn"],
            "CN=\"quoted\" \\ back,O=tab\there\nnl\u{1}ctl,L=Zürich"
        );
        assert_eq!(fast["client"], "[::1]:4433");
        assert_eq!(fast["method"], "POST");
        assert_eq!(fast["target"], "certgate::access");
    }
}
