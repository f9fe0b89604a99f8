//! The body of every response certgate sends: either a small one of its own (an error) or the
//! backend's, streamed frame by frame with an idle timeout between frames and no limit on the
//! total duration (a Gradio SSE stream may last as long as the page is open). The access-log
//! line is written when the body is finished or dropped, so it carries the bytes really sent and
//! the whole duration.

use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::response::access_log::AccessRecord;
use crate::response::in_flight::InFlight;

/// Errors a response body can end with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The backend went silent inside a body for longer than `upstream.idle_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("the backend sent nothing for {0:?} inside a response body")]
pub struct IdleTimeout(pub Duration);

enum Kind {
    Full(Option<Bytes>),
    Stream {
        inner: Incoming,
        idle: Duration,
        // Created the first time the backend makes us wait: most small responses complete in
        // one poll and never need a timer (one timer-wheel insert and removal saved each).
        timer: Option<Pin<Box<Sleep>>>,
    },
}

/// Shown each data frame of a response body as it passes.
pub type Watch = Box<dyn FnMut(&[u8]) + Send + Sync>;

/// A response body; see the module doc.
pub struct ProxyBody {
    kind: Kind,
    sent: u64,
    log: Option<Box<AccessRecord>>,
    /// Dropped when the body is done with: the server's count of the request in flight, the
    /// lease that gives the backend connection back.
    done: Option<Box<dyn Send + Sync>>,
    /// Shown each data frame as it passes, and dropped with the body (a queue following a
    /// Gradio event stream).
    watch: Option<Watch>,
}

impl ProxyBody {
    /// A complete body made by certgate.
    pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
        let bytes = bytes.into();
        ProxyBody {
            kind: Kind::Full((!bytes.is_empty()).then_some(bytes)),
            sent: 0,
            log: None,
            done: None,
            watch: None,
        }
    }

    /// No body.
    pub fn empty() -> ProxyBody {
        ProxyBody::full(Bytes::new())
    }

    /// The backend's body, streamed, failing after `idle` without a frame.
    pub fn stream(inner: Incoming, idle: Duration) -> ProxyBody {
        ProxyBody {
            kind: Kind::Stream {
                inner,
                idle,
                timer: None,
            },
            sent: 0,
            log: None,
            done: None,
            watch: None,
        }
    }

    /// Attaches the access-log record written when this body ends.
    pub fn set_log(&mut self, record: AccessRecord) {
        self.log = Some(Box::new(record));
    }

    /// Keeps `done` until the body is done with (sent, failed or dropped), then drops it.
    pub fn on_done(&mut self, done: Box<dyn Send + Sync>) {
        self.done = Some(done);
    }

    /// Shows `watch` every data frame as it passes to the client, unchanged and unbuffered;
    /// `watch` is dropped with the body.
    pub fn watch(&mut self, watch: Watch) {
        self.watch = Some(watch);
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let frame = match &mut this.kind {
            Kind::Full(bytes) => bytes.take().map(|b| Ok(Frame::data(b))),
            Kind::Stream { inner, idle, timer } => match Pin::new(inner).poll_frame(cx) {
                Poll::Ready(frame) => {
                    if let Some(t) = timer.as_mut() {
                        t.as_mut().reset(Instant::now() + *idle);
                    }
                    frame.map(|f| f.map_err(BoxError::from))
                }
                Poll::Pending => {
                    let t = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(*idle)));
                    ready!(t.as_mut().poll(cx));
                    if let Some(log) = this.log.as_mut() {
                        log.note_error("upstream idle timeout");
                    }
                    Some(Err(IdleTimeout(*idle).into()))
                }
            },
        };
        match &frame {
            Some(Ok(f)) => {
                if let Some(d) = f.data_ref() {
                    this.sent += d.len() as u64;
                    if let Some(w) = this.watch.as_mut() {
                        w(d);
                    }
                }
            }
            Some(Err(_)) => {
                if let Some(log) = this.log.as_mut() {
                    log.note_error("upstream body error");
                }
            }
            None => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(b) => b.is_none(),
            Kind::Stream { inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Kind::Full(None) => SizeHint::with_exact(0),
            Kind::Stream { inner, .. } => inner.size_hint(),
        }
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        if let Some(log) = self.log.take() {
            log.finish(self.sent);
        }
        drop(self.watch.take());
        drop(self.done.take());
    }
}

/// Longest a refused request body is read and thrown away (nginx's `lingering_time` is 30 s).
const DRAIN_TIME: Duration = Duration::from_secs(30);
/// Most bytes of a refused request body read and thrown away.
const DRAIN_BYTES: u64 = 256 << 20;

/// The request body was over `max_body`.
#[derive(Debug, thiserror::Error)]
#[error("the request body is over the limit of {0} bytes")]
pub struct BodyTooLarge(pub u64);

/// The client's request body went silent for longer than `[limits] body_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("the client sent nothing of its request body for {0:?}")]
pub struct BodyTimeout(pub Duration);

/// Shared between a [`LimitedBody`] and the request handler: whether the limit was hit, and
/// what is left of the client's body, so the handler can drain it; whether the client's body
/// stalled or failed (the client's fault, never the backend's); and how far the body has got
/// on its way to the backend, so that the response is timed from its end.
#[derive(Debug, Default)]
pub struct Overflow {
    hit: std::sync::atomic::AtomicBool,
    rest: std::sync::Mutex<Option<Incoming>>,
    /// The body as it was when the request was dropped before any of it was read: a server
    /// that refused the connection never saw it, so the next server may have it.
    unsent: std::sync::Mutex<Option<Incoming>>,
    /// The client sent nothing of its body for `body_timeout`.
    stalled: std::sync::atomic::AtomicBool,
    /// Reading the client's body failed: the client went away or sent a malformed body.
    client_failed: std::sync::atomic::AtomicBool,
    /// The last read found the client's body silent: a wait now is the client's, not the
    /// backend's.
    waiting: std::sync::atomic::AtomicBool,
    /// When a frame of the body was last handed on to the backend.
    moved: std::sync::Mutex<Option<Instant>>,
    /// The body was read to its end...
    ended: std::sync::atomic::AtomicBool,
    /// ...which wakes the forwarder's wait for the response.
    end: tokio::sync::Notify,
}

impl Overflow {
    /// Whether the body went over the limit.
    pub fn hit(&self) -> bool {
        self.hit.load(std::sync::atomic::Ordering::Acquire)
    }

    /// What is left of the client's body, once.
    pub fn take_rest(&self) -> Option<Incoming> {
        self.rest.lock().ok().and_then(|mut r| r.take())
    }

    /// The whole client body, once, if the request that carried it was dropped without
    /// reading any of it.
    pub fn take_unsent(&self) -> Option<Incoming> {
        self.unsent.lock().ok().and_then(|mut r| r.take())
    }

    /// Whether the client's body went silent for longer than `body_timeout`.
    pub fn stalled(&self) -> bool {
        self.stalled.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Whether reading the client's body failed (the client went away mid-body).
    pub fn client_failed(&self) -> bool {
        self.client_failed
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Whether the body has been read to its end.
    pub fn ended(&self) -> bool {
        self.ended.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Returns once the body has been read to its end.
    pub async fn wait_end(&self) {
        while !self.ended() {
            self.end.notified().await;
        }
    }

    /// How long the backend has taken nothing of a body the client has ready: since `since`
    /// (when the request went out) or the last frame handed on, whichever is later. `None`
    /// while the wait is the client's (certgate is waiting for its next bytes) or the body has
    /// ended.
    pub fn backend_idle(&self, since: Instant) -> Option<Duration> {
        use std::sync::atomic::Ordering;
        if self.ended() || self.waiting.load(Ordering::Acquire) {
            return None;
        }
        let moved = self.moved.lock().ok().and_then(|m| *m);
        Some(moved.map_or(since, |m| m.max(since)).elapsed())
    }

    fn finish(&self) {
        self.ended.store(true, std::sync::atomic::Ordering::Release);
        self.end.notify_one();
    }
}

/// The client's request body on its way to the backend, stopped before the frame that would
/// take it over `limit` (the backend never sees more than the limit), and failed when the
/// client sends nothing of it for `[limits] body_timeout`.
pub struct LimitedBody {
    inner: Option<Incoming>,
    limit: u64,
    seen: u64,
    overflow: std::sync::Arc<Overflow>,
    /// Told when the body has been read to its end (the connection may then be parked).
    requests: Option<std::sync::Arc<crate::response::in_flight::InFlight>>,
    /// Whether anyone asked for a frame yet.
    polled: bool,
    /// `[limits] body_timeout`: the longest silence between two reads of the client's body.
    idle: Duration,
    /// Created the first time the client makes us wait (as [`ProxyBody`]'s).
    timer: Option<Pin<Box<Sleep>>>,
}

impl Drop for LimitedBody {
    fn drop(&mut self) {
        let Some(inner) = self.inner.take() else {
            return;
        };
        if !self.polled {
            if let Ok(mut unsent) = self.overflow.unsent.lock() {
                *unsent = Some(inner);
            }
            return;
        }
        // Given up half-way on the backend's side (no answer in time, the connection broke,
        // an early answer): the client may still be writing, and reads certgate's answer only
        // if the rest is read, as for a refusal.
        if !inner.is_end_stream() && tokio::runtime::Handle::try_current().is_ok() {
            drain(inner, self.requests.take());
        }
    }
}

impl LimitedBody {
    /// No body (a replayed bodyless request).
    pub fn empty() -> LimitedBody {
        LimitedBody {
            inner: None,
            limit: 0,
            seen: 0,
            overflow: std::sync::Arc::default(),
            requests: None,
            polled: false,
            idle: Duration::MAX,
            timer: None,
        }
    }

    /// Wraps `inner`; `overflow` reports a hit, a stall (nothing from the client for `idle`)
    /// and the body's progress; `requests` learns the end of the body.
    pub fn new(
        inner: Incoming,
        limit: u64,
        idle: Duration,
        overflow: std::sync::Arc<Overflow>,
        requests: std::sync::Arc<crate::response::in_flight::InFlight>,
    ) -> LimitedBody {
        if inner.is_end_stream() {
            overflow.finish();
        }
        LimitedBody {
            inner: Some(inner),
            limit,
            seen: 0,
            overflow,
            requests: Some(requests),
            polled: false,
            idle,
            timer: None,
        }
    }

    fn ended(&mut self) {
        self.overflow.finish();
        if let Some(a) = self.requests.take() {
            a.body_read();
        }
    }

    /// Notes whether the client made us wait, and keeps its silence timed; on a silence of
    /// `idle`, the body fails with [`BodyTimeout`].
    fn time(&mut self, cx: &mut Context<'_>, pending: bool) -> Poll<BoxError> {
        use std::sync::atomic::Ordering;
        self.overflow.waiting.store(pending, Ordering::Release);
        if !pending {
            let now = Instant::now();
            if let (Some(t), Some(deadline)) = (self.timer.as_mut(), now.checked_add(self.idle)) {
                t.as_mut().reset(deadline);
            }
            if let Ok(mut moved) = self.overflow.moved.lock() {
                *moved = Some(now);
            }
            return Poll::Pending;
        }
        let idle = self.idle;
        let Some(deadline) = Instant::now().checked_add(idle) else {
            return Poll::Pending;
        };
        let t = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        ready!(t.as_mut().poll(cx));
        self.overflow.stalled.store(true, Ordering::Release);
        // The client's connection is not read further: hyper closes it after the 408.
        self.inner = None;
        Poll::Ready(BodyTimeout(idle).into())
    }
}

impl Body for LimitedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        this.polled = true;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(inner).poll_frame(cx);
        if let Poll::Ready(e) = this.time(cx, polled.is_pending()) {
            return Poll::Ready(Some(Err(e)));
        }
        match ready!(polled) {
            Some(Ok(frame)) => {
                if let Some(d) = frame.data_ref() {
                    let total = this.seen + d.len() as u64;
                    if total > this.limit {
                        if let Ok(mut rest) = this.overflow.rest.lock() {
                            *rest = this.inner.take();
                        }
                        this.overflow
                            .hit
                            .store(true, std::sync::atomic::Ordering::Release);
                        return Poll::Ready(Some(Err(BodyTooLarge(this.limit).into())));
                    }
                    this.seen = total;
                }
                // A sender that knows the length stops at is_end_stream without a last poll.
                if this.inner.as_ref().is_some_and(Body::is_end_stream) {
                    this.ended();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => {
                this.overflow
                    .client_failed
                    .store(true, std::sync::atomic::Ordering::Release);
                Poll::Ready(Some(Err(e.into())))
            }
            None => {
                this.ended();
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

/// Reads and discards what is left of a refused request body, within bounds, so a client that
/// is still sending reads certgate's refusal rather than a reset connection (nginx does the
/// same). A body read to its end tells `requests`, so an HTTP/1 connection can be kept and
/// parked; one cut off by the bounds is dropped, and hyper then closes the connection.
pub fn drain(body: Incoming, requests: Option<std::sync::Arc<InFlight>>) {
    tokio::spawn(async move {
        let mut body = body;
        let mut read = 0u64;
        let whole = tokio::time::timeout(DRAIN_TIME, async {
            loop {
                match std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
                    None => return true,
                    Some(Err(_)) => return false,
                    Some(Ok(frame)) => {
                        if let Some(d) = frame.data_ref() {
                            read += d.len() as u64;
                            if read > DRAIN_BYTES {
                                return false;
                            }
                        }
                    }
                }
            }
        })
        .await;
        if whole == Ok(true)
            && let Some(requests) = requests
        {
            requests.body_read();
        }
    });
}

/// What happens to the unread body of a request certgate refused, so that the client reads
/// the refusal whatever it was doing with its body.
///
/// The rest of the body is read and thrown away, within [`DRAIN_TIME`] and [`DRAIN_BYTES`], as
/// nginx does. Dropped unread instead, hyper closes an HTTP/1 connection after the response
/// while the client is still writing, and the client's next write meets a reset (Python:
/// `SSLEOFError`) before it reads the response. Over HTTP/2, h2 keeps a stream whose body was
/// dropped until the response has been sent, then ends it with RST_STREAM(NO_ERROR) as RFC 9113
/// §8.1 allows, but curl (7.88) fails an upload whose stream is reset while it is still
/// sending ("Stream error in the HTTP/2 framing layer"). Read to its end, the body leaves an
/// HTTP/1 connection kept alive and an HTTP/2 stream closed cleanly.
///
/// A client that sent `Expect: 100-continue` has not sent its body and will not without a
/// `100 Continue`: nothing is read, so the connection is not held open waiting for a body that
/// never comes. Over HTTP/1 hyper closes after the response without inviting the body; over
/// HTTP/2 the stream ends with RST_STREAM(NO_ERROR) once the response is sent.
pub fn discard_refused(
    body: Incoming,
    expects_continue: bool,
    requests: &std::sync::Arc<InFlight>,
) {
    if !body.is_end_stream() && !expects_continue {
        drain(body, Some(requests.clone()));
    }
}
