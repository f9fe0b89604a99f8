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

use crate::access_log::AccessRecord;

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
        timer: Pin<Box<Sleep>>,
    },
}

/// A response body; see the module doc.
pub struct ProxyBody {
    kind: Kind,
    sent: u64,
    log: Option<Box<AccessRecord>>,
}

impl ProxyBody {
    /// A complete body made by certgate.
    pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
        let bytes = bytes.into();
        ProxyBody {
            kind: Kind::Full((!bytes.is_empty()).then_some(bytes)),
            sent: 0,
            log: None,
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
                timer: Box::pin(tokio::time::sleep(idle)),
            },
            sent: 0,
            log: None,
        }
    }

    /// Attaches the access-log record written when this body ends.
    pub fn set_log(&mut self, record: AccessRecord) {
        self.log = Some(Box::new(record));
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
                    timer.as_mut().reset(Instant::now() + *idle);
                    frame.map(|f| f.map_err(BoxError::from))
                }
                Poll::Pending => {
                    ready!(timer.as_mut().poll(cx));
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
    }
}
