//! Gradio's queue as a proxy sees it (`shared/notes/gradio-queue-protocol.md`), for queues with
//! `protocol = "gradio"`: a job starts at a queue join or a REST call, which Gradio answers at
//! once with an `event_id`, and ends when its `process_completed` passes through the session's
//! event stream (`…/queue/data?session_hash=…`), or `event: complete` / `event: error` through
//! the call's stream (`…/call/{api_name}/{event_id}`).
//!
//! The join's answer is small JSON and is read whole to learn the `event_id`; the job's permit
//! is then kept in [`Events`] under that id. Event streams pass through unbuffered: a
//! [`Scan`] looks at each frame as it goes by, line by line, and reads only the top-level `msg`
//! and `event_id` of each `data:` line's JSON with a small state machine — text a user typed
//! inside a job's output is a string there, never a top-level field, so a forged
//! `"msg":"process_completed"` cannot end anyone's job. A job also ends when the stream that
//! showed it ends, or at its queue's `max_wait`; one nobody opens a stream for within
//! [`LISTENER_WAIT`] gives its server's slot back then, but still counts as its person's.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use http_body_util::BodyExt as _;

use super::Permit;
use crate::response::body::ProxyBody;
use crate::response::reply::Reject;

/// A job whose stream nobody opens within this long frees its slot: certgate cannot see its
/// end, and one silent client must not hold the GPU's turn for `max_wait`. Gradio's own
/// clients open the stream at once.
pub const LISTENER_WAIT: Duration = Duration::from_secs(10);

/// Largest join or call answer read to find its `event_id` (Gradio's is ~50 bytes).
const MAX_ANSWER: usize = 64 << 10;

/// Ended events whose job was not registered yet (the stream can be faster than the join's
/// answer), remembered so the job ends when it is; bounded.
const EARLY_ENDS: usize = 1024;

/// Whether a route's path can be where Gradio jobs start: a queue join (`/queue/join`, under
/// `/gradio_api` for Gradio 5 and 6) or the REST entry (`/call/...`, or the `/call` prefix
/// itself). Compared by segments, ignoring ASCII case, as routes match.
pub fn is_job_entry(route_path: &str) -> bool {
    let lower = route_path.to_ascii_lowercase();
    let segments: Vec<&str> = lower.split('/').filter(|s| !s.is_empty()).collect();
    segments.ends_with(&["queue", "join"]) || segments.contains(&"call")
}

/// What a forwarded request's response is, for the Gradio jobs: the session's event stream, a
/// call's result stream (with its event id), or neither.
fn stream_kind<'a>(method: &Method, path: &'a str) -> Option<Option<&'a str>> {
    if method != Method::GET {
        return None;
    }
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    if segments.ends_with(&["queue", "data"]) {
        return Some(None);
    }
    // …/call/{api_name}/{event_id}, or …/call/v2/{api_name}/{event_id} (6.x).
    let call = segments
        .iter()
        .rposition(|s| s.eq_ignore_ascii_case("call"))?;
    let rest = &segments[call + 1..];
    match rest {
        [_, id] | [_, _, id] => Some(Some(id)),
        _ => None,
    }
}

/// The Gradio jobs running now, by event id, and the streams' view of them. One for the
/// daemon's life, handed from runtime to runtime with the queues.
#[derive(Debug)]
pub struct Events {
    inner: Mutex<Inner>,
    /// [`LISTENER_WAIT`]; shorter in tests.
    listener_wait: Duration,
}

impl Default for Events {
    fn default() -> Events {
        Events {
            inner: Mutex::default(),
            listener_wait: LISTENER_WAIT,
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    jobs: HashMap<Box<str>, Tracked>,
    early: VecDeque<Box<str>>,
}

#[derive(Debug)]
struct Tracked {
    /// Removing the job drops it, which frees the slot.
    permit: Permit,
    /// A stream showed one of its events.
    seen: bool,
}

impl Events {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether a job is running under `id`.
    pub fn running(&self, id: &str) -> bool {
        self.lock().jobs.contains_key(id)
    }

    /// A stream showed an event of `id`; whether it is a job of a queue.
    fn seen(&self, id: &str) -> bool {
        match self.lock().jobs.get_mut(id) {
            Some(t) => {
                t.seen = true;
                true
            }
            None => false,
        }
    }

    /// The job `id` ended: its slot frees. An id not (yet) known is remembered a while, in
    /// case its join's answer is still on its way.
    fn ended(&self, id: &str) {
        let mut inner = self.lock();
        let gone = inner.jobs.remove(id);
        if gone.is_none() {
            if inner.early.len() >= EARLY_ENDS {
                inner.early.pop_front();
            }
            inner.early.push_back(id.into());
        }
        // The permit takes its queue's lock when dropped: not under this one.
        drop(inner);
        drop(gone);
    }

    /// Gives the server's slot of `id` back if it is a job that no stream showed yet. Gradio
    /// runs such a job all the same (its results wait for a stream opened later), so it still
    /// counts against its person's `per_identity` until its end shows or `max_wait` passes:
    /// otherwise one person could put a job into Gradio's own queue every [`LISTENER_WAIT`]
    /// and have a backlog there that everyone else's jobs wait behind.
    fn ended_unseen(&self, id: &str) {
        // The queue's lock is never held while this one is taken: no lock-order inversion.
        let mut inner = self.lock();
        if let Some(t) = inner.jobs.get_mut(id)
            && !t.seen
        {
            t.permit.free_lane();
        }
    }

    /// Ends `id` if it is a job (its `max_wait` passed).
    fn expire(&self, id: &str) {
        let gone = self.lock().jobs.remove(id);
        drop(gone);
    }

    /// Keeps `permit` as the running job `id` until its end shows, nobody listens for
    /// [`LISTENER_WAIT`], or `max_wait` passes.
    fn register(self: &Arc<Self>, id: &str, mut permit: Permit, max_wait: Duration) {
        permit.settle();
        let mut inner = self.lock();
        if let Some(i) = inner.early.iter().position(|e| **e == *id) {
            // Its end passed already.
            inner.early.remove(i);
            drop(inner);
            drop(permit);
            return;
        }
        let before = inner.jobs.insert(
            id.into(),
            Tracked {
                permit,
                seen: false,
            },
        );
        drop(inner);
        drop(before);
        let events = Arc::downgrade(self);
        let id: Box<str> = id.into();
        let listener_wait = self.listener_wait;
        tokio::spawn(async move {
            tokio::time::sleep(listener_wait.min(max_wait)).await;
            let Some(e) = events.upgrade() else { return };
            e.ended_unseen(&id);
            drop(e);
            tokio::time::sleep(max_wait.saturating_sub(listener_wait)).await;
            if let Some(e) = events.upgrade() {
                e.expire(&id);
            }
        });
    }
}

/// A join's (or call's) answer: read whole (it is small), its `event_id` taken, and the job's
/// permit kept under it. An answer without one (Gradio refused the join: 4xx, 503 queue_full)
/// started no job, and the slot frees at once.
pub(super) async fn started(
    events: &Arc<Events>,
    mut permit: Permit,
    max_wait: Duration,
    resp: Response<ProxyBody>,
) -> Response<ProxyBody> {
    if resp.status() != StatusCode::OK {
        permit.settle();
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let bytes = match http_body_util::Limited::new(body, MAX_ANSWER)
        .collect()
        .await
    {
        Ok(c) => c.to_bytes(),
        Err(_) => {
            return Reject::bad_gateway(
                "The backend's answer to the queue join broke off or was too large.",
            )
            .to_response();
        }
    };
    match event_id(&bytes) {
        Some(id) => events.register(&id, permit, max_wait),
        None => permit.settle(),
    }
    Response::from_parts(parts, ProxyBody::full(bytes))
}

fn event_id(answer: &Bytes) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Answer {
        event_id: String,
    }
    serde_json::from_slice::<Answer>(answer)
        .ok()
        .map(|a| a.event_id)
        .filter(|id| !id.is_empty())
}

/// Puts a [`Scan`] on the response when it is an event stream that can show a Gradio job's
/// end.
pub(super) fn follow(
    events: &Arc<Events>,
    method: &Method,
    path: &str,
    resp: &mut Response<ProxyBody>,
) {
    if !resp.status().is_success() {
        return;
    }
    // Gradio's streams are `text/event-stream`. Anything else whose path ends the same way (a
    // file, another backend's page) may carry text a client wrote, such as a
    // `process_completed` for the client's own job, ending it while Gradio still holds it.
    let event_stream = resp
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("text/event-stream"));
    if !event_stream {
        return;
    }
    let mode = match stream_kind(method, path) {
        None => return,
        Some(None) => Mode::Session,
        Some(Some(id)) => {
            // A call's stream names its job in the URL: only a running job's is followed.
            if !events.seen(id) {
                return;
            }
            Mode::Call(id.into())
        }
    };
    let mut scan = Scan::new(events.clone(), mode);
    resp.body_mut().watch(Box::new(move |data| scan.feed(data)));
}

#[derive(Debug)]
enum Mode {
    /// `queue/data`: every job of the session; ends shown by `process_completed`.
    Session,
    /// `call/{api_name}/{event_id}`: one job; ends shown by `event: complete` / `error`.
    Call(Box<str>),
}

/// Which top-level field a string belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Msg,
    EventId,
    Other,
}

/// The longest `msg` or `event_id` value kept; longer ones are no Gradio message or id.
const MAX_VALUE: usize = 128;
/// The longest line start kept (`data:`, `event: complete`).
const MAX_HEAD: usize = 32;

/// Follows one event stream as it passes, line by line, with memory bounded whatever the size
/// of a line (a job's output can be megabytes of base64).
#[derive(Debug)]
pub(super) struct Scan {
    events: Arc<Events>,
    mode: Mode,
    /// Jobs this stream showed: the stream's end ends them.
    shown: Vec<Box<str>>,
    /// The first bytes of the current line.
    head: Vec<u8>,
    /// The line is a `data:` line whose JSON is being read.
    json: Option<Json>,
}

/// The top level of one JSON object, read byte by byte.
#[derive(Debug, Default)]
struct Json {
    depth: u32,
    in_string: bool,
    escaped: bool,
    /// At depth 1, the next string is a key (else a value).
    want_key: bool,
    key: Vec<u8>,
    reading_key: bool,
    field: Option<Field>,
    /// The value string being kept, and for which field.
    value: Option<(Field, Vec<u8>)>,
    msg: Option<Vec<u8>>,
    event_id: Option<Vec<u8>>,
}

impl Json {
    fn byte(&mut self, b: u8) {
        if self.in_string {
            if self.escaped {
                self.escaped = false;
            } else if b == b'\\' {
                self.escaped = true;
            } else if b == b'"' {
                self.in_string = false;
                self.string_ended();
                return;
            }
            if self.reading_key {
                if self.key.len() <= MAX_VALUE {
                    self.key.push(b);
                }
            } else if let Some((_, v)) = self.value.as_mut()
                && v.len() <= MAX_VALUE
            {
                v.push(b);
            }
            return;
        }
        match b {
            b'"' => {
                self.in_string = true;
                if self.depth == 1 && self.want_key {
                    self.reading_key = true;
                    self.key.clear();
                } else if self.depth == 1
                    && let Some(f @ (Field::Msg | Field::EventId)) = self.field
                {
                    self.value = Some((f, Vec::new()));
                }
            }
            b'{' | b'[' => {
                self.depth += 1;
                if self.depth == 1 {
                    self.want_key = b == b'{';
                }
            }
            b'}' | b']' => self.depth = self.depth.saturating_sub(1),
            b':' if self.depth == 1 => self.want_key = false,
            b',' if self.depth == 1 => {
                self.want_key = true;
                self.field = None;
            }
            _ => {}
        }
    }

    fn string_ended(&mut self) {
        if self.reading_key {
            self.reading_key = false;
            self.field = Some(match self.key.as_slice() {
                b"msg" => Field::Msg,
                b"event_id" => Field::EventId,
                _ => Field::Other,
            });
        } else if let Some((field, v)) = self.value.take() {
            match field {
                Field::Msg => self.msg = Some(v),
                Field::EventId => self.event_id = Some(v),
                Field::Other => {}
            }
        }
    }
}

impl Scan {
    fn new(events: Arc<Events>, mode: Mode) -> Scan {
        if let Mode::Call(id) = &mode {
            return Scan {
                shown: vec![id.clone()],
                events,
                mode,
                head: Vec::new(),
                json: None,
            };
        }
        Scan {
            events,
            mode,
            shown: Vec::new(),
            head: Vec::new(),
            json: None,
        }
    }

    /// One frame of the stream, as it passes.
    pub(super) fn feed(&mut self, data: &[u8]) {
        for &b in data {
            if b == b'\n' {
                self.line_ended();
                continue;
            }
            if let Some(json) = self.json.as_mut() {
                json.byte(b);
                continue;
            }
            if self.head.len() < MAX_HEAD {
                self.head.push(b);
            }
            if matches!(self.mode, Mode::Session) && self.head == b"data:" {
                self.json = Some(Json::default());
            }
        }
    }

    fn line_ended(&mut self) {
        let json = self.json.take();
        let head = std::mem::take(&mut self.head);
        match &self.mode {
            Mode::Session => {
                let Some(json) = json else { return };
                let Some(id) = json
                    .event_id
                    .as_deref()
                    .and_then(|v| std::str::from_utf8(v).ok())
                else {
                    return;
                };
                if json.msg.as_deref() == Some(b"process_completed") {
                    self.shown.retain(|s| **s != *id);
                    self.events.ended(id);
                } else if self.events.seen(id) && !self.shown.iter().any(|s| **s == *id) {
                    self.shown.push(id.into());
                }
            }
            Mode::Call(id) => {
                let head = head.strip_suffix(b"\r").unwrap_or(&head);
                if let Some(event) = head.strip_prefix(b"event:") {
                    let event = event.trim_ascii();
                    if event == b"complete" || event == b"error" {
                        self.events.ended(id);
                        self.shown.clear();
                    }
                }
            }
        }
    }
}

impl Drop for Scan {
    /// The stream ended (or its client left): the jobs it showed and that did not end are
    /// over as far as anyone can tell.
    fn drop(&mut self) {
        for id in self.shown.drain(..) {
            self.events.expire(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_and_calls_of_every_gradio_version_are_job_entries() {
        for p in [
            "/queue/join",
            "/gradio_api/queue/join",
            "/Gradio_API/queue/join/",
            "/gradio_api/call",
            "/gradio_api/call/predict",
            "/call/",
        ] {
            assert!(is_job_entry(p), "{p}");
        }
        for p in [
            "/",
            "/gradio_api",
            "/gradio_api/queue",
            "/gradio_api/queue/data",
            "/gradio_api/queue/joinx",
            "/api/colorize",
            "/callback",
        ] {
            assert!(!is_job_entry(p), "{p}");
        }
    }

    #[test]
    fn event_streams_are_told_apart_from_other_responses() {
        let get = Method::GET;
        assert_eq!(stream_kind(&get, "/gradio_api/queue/data"), Some(None));
        assert_eq!(stream_kind(&get, "/queue/data"), Some(None));
        assert_eq!(
            stream_kind(&get, "/gradio_api/call/job/abc"),
            Some(Some("abc"))
        );
        assert_eq!(
            stream_kind(&get, "/gradio_api/call/v2/job/abc"),
            Some(Some("abc"))
        );
        assert_eq!(stream_kind(&get, "/gradio_api/call/job"), None);
        assert_eq!(stream_kind(&Method::POST, "/gradio_api/queue/data"), None);
        assert_eq!(stream_kind(&get, "/gradio_api/info"), None);
    }

    fn json_of(line: &str) -> Json {
        let mut j = Json::default();
        for b in line.bytes() {
            j.byte(b);
        }
        j
    }

    #[test]
    fn only_top_level_msg_and_event_id_are_read() {
        let j = json_of(
            r#"{"msg":"process_completed","event_id":"e1","output":{"data":["x"]},"success":true}"#,
        );
        assert_eq!(j.msg.as_deref(), Some(&b"process_completed"[..]));
        assert_eq!(j.event_id.as_deref(), Some(&b"e1"[..]));
        // A user's text that looks like a message is a string inside the output.
        let forged = json_of(
            r#"{"msg":"process_generating","event_id":"e2","output":{"data":["{\"msg\":\"process_completed\",\"event_id\":\"e9\"}"],"msg":"process_completed","event_id":"e9"}}"#,
        );
        assert_eq!(forged.msg.as_deref(), Some(&b"process_generating"[..]));
        assert_eq!(forged.event_id.as_deref(), Some(&b"e2"[..]));
        // A key that only ends in "msg" is another key.
        let other = json_of(r#"{"xmsg":"process_completed","event_id":null}"#);
        assert_eq!(other.msg, None);
        assert_eq!(other.event_id, None);
    }

    fn queue_and_permit() -> (Arc<super::super::Queue>, Permit) {
        let queue = Arc::new(super::super::Queue::new(
            super::super::QueueSettings {
                name: "ui".into(),
                slots: 1,
                per_identity: 1,
                max_waiting: 4,
                max_wait: Duration::from_secs(600),
                key: super::super::KeyBy::Client,
                protocol: super::super::Protocol::Gradio,
            },
            tokio_util::sync::CancellationToken::new(),
            &crate::ops::metrics::Metrics::new(),
        ));
        let person = super::super::Person {
            key: "ip:127.0.0.1".into(),
            subject_dn: None,
            fingerprint: None,
            ip: "127.0.0.1".parse().unwrap(),
        };
        let permit = match queue.lock().enqueue(&queue, &person, "http://gpu") {
            super::super::state::Enqueued::Started(p) => p,
            _ => panic!("the first job starts"),
        };
        (queue, permit)
    }

    fn permit_for(events: &Arc<Events>, id: &str) -> Arc<super::super::Queue> {
        let (queue, permit) = queue_and_permit();
        events.lock().jobs.insert(
            id.into(),
            Tracked {
                permit,
                seen: false,
            },
        );
        queue
    }

    /// Only an event stream is followed: a `process_completed` in any other response on a
    /// stream's path (a file a client uploaded, another backend's page) ends nothing.
    #[tokio::test]
    async fn only_event_streams_are_followed() {
        let events = Arc::new(Events::default());
        let _queue = permit_for(&events, "e1");
        let line = "data: {\"msg\":\"process_completed\",\"event_id\":\"e1\"}\n\n";
        for (content_type, ends) in [
            ("text/plain", false),
            ("application/octet-stream", false),
            ("Text/Event-Stream; charset=utf-8", true),
        ] {
            let mut resp = Response::builder()
                .header("content-type", content_type)
                .body(ProxyBody::full(Bytes::from(line)))
                .unwrap();
            follow(&events, &Method::GET, "/files/queue/data", &mut resp);
            resp.into_body().collect().await.unwrap();
            assert_eq!(!events.running("e1"), ends, "{content_type}");
        }
    }

    /// A job's end is seen however the stream is cut into frames, and only its own.
    #[test]
    fn the_session_stream_ends_the_job_on_its_process_completed() {
        let events = Arc::new(Events::default());
        let queue = permit_for(&events, "e1");
        let mut scan = Scan::new(events.clone(), Mode::Session);
        let stream = concat!(
            "data: {\"msg\":\"estimation\",\"event_id\":\"e1\",\"rank\":0}\n\n",
            "data: {\"msg\":\"process_generating\",\"event_id\":\"e1\",\"output\":{\"data\":[\"\\\"msg\\\":\\\"process_completed\\\"\"]}}\n\n",
            "data: {\"msg\":\"process_completed\",\"event_id\":\"e2\"}\n\n",
        );
        for chunk in stream.as_bytes().chunks(7) {
            scan.feed(chunk);
        }
        assert!(
            events.running("e1"),
            "a forged or foreign end ended the job"
        );
        assert!(events.lock().jobs["e1"].seen);
        assert_eq!(queue.lock().totals(), (1, 0));
        scan.feed(
            b"data: {\"msg\":\"process_completed\",\"event_id\":\"e1\",\"success\":true}\r\n",
        );
        assert!(!events.running("e1"));
        assert_eq!(queue.lock().totals(), (0, 0));
    }

    /// The end of a stream ends the jobs it showed.
    #[test]
    fn a_stream_that_ends_ends_the_jobs_it_showed() {
        let events = Arc::new(Events::default());
        let queue = permit_for(&events, "e1");
        let mut scan = Scan::new(events.clone(), Mode::Session);
        scan.feed(b"data: {\"msg\":\"process_starts\",\"event_id\":\"e1\"}\n\n");
        assert!(events.running("e1"));
        drop(scan);
        assert!(!events.running("e1"));
        assert_eq!(queue.lock().totals(), (0, 0));
    }

    /// A call's stream ends its job on `event: complete`.
    #[test]
    fn a_call_stream_ends_its_job_on_complete() {
        let events = Arc::new(Events::default());
        let _queue = permit_for(&events, "c1");
        let mut scan = Scan::new(events.clone(), Mode::Call("c1".into()));
        scan.feed(b"event: generating\ndata: [\"event: complete\"]\n\n");
        assert!(events.running("c1"));
        scan.feed(b"event: complete\ndata: [\"done\"]\n\n");
        assert!(!events.running("c1"));
    }

    async fn until_ended(events: &Events, id: &str) {
        for _ in 0..500 {
            if !events.running(id) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{id} never ended");
    }

    /// A job whose stream nobody opens frees its server's slot after the listener wait; one
    /// whose events a stream shows keeps it until `max_wait`.
    #[tokio::test]
    async fn a_job_nobody_listens_to_ends_and_every_job_ends_at_max_wait() {
        let events = Arc::new(Events {
            inner: Mutex::default(),
            listener_wait: Duration::from_millis(50),
        });
        let (q1, unheard) = queue_and_permit();
        events.register("unheard", unheard, Duration::from_secs(600));
        let (q2, heard) = queue_and_permit();
        events.register("heard", heard, Duration::from_millis(400));
        assert!(events.seen("heard"));
        until_lane_free(&q1).await;
        assert_eq!(q1.lock().totals(), (0, 0));
        assert!(
            events.running("heard"),
            "a job that was listened to ended early"
        );
        assert_eq!(q2.lock().totals(), (1, 0));
        until_ended(&events, "heard").await;
        assert_eq!(q2.lock().totals(), (0, 0));
    }

    async fn until_lane_free(q: &super::super::Queue) {
        for _ in 0..500 {
            if q.lock().totals().0 == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the server's slot never freed");
    }

    /// A job nobody listens to still runs in Gradio's own queue: once it gave its server's
    /// slot back, its person's next job waits (`per_identity`) while another person's starts,
    /// so one person cannot pile jobs up in Gradio's queue one listener wait apart. Its end,
    /// seen on a stream opened later, lets the person's next job go.
    #[tokio::test]
    async fn a_job_nobody_listens_to_still_counts_as_its_persons() {
        use super::super::state::Enqueued;
        let events = Arc::new(Events {
            inner: Mutex::default(),
            listener_wait: Duration::from_millis(50),
        });
        let (q, unheard) = queue_and_permit();
        events.register("unheard", unheard, Duration::from_secs(600));
        until_lane_free(&q).await;
        assert!(events.running("unheard"));
        let who = |key: &str| super::super::Person {
            key: key.into(),
            subject_dn: None,
            fingerprint: None,
            ip: "127.0.0.1".parse().unwrap(),
        };
        let next = q.lock().enqueue(&q, &who("ip:127.0.0.1"), "http://gpu");
        let Enqueued::Waiting { mut rx, .. } = next else {
            panic!("the silent person's next job started beside the one in Gradio's queue")
        };
        let other = q.lock().enqueue(&q, &who("ip:127.0.0.2"), "http://gpu");
        let Enqueued::Started(other) = other else {
            panic!("the freed slot is another person's")
        };
        events.ended("unheard");
        assert!(!events.running("unheard"));
        assert!(rx.try_recv().is_err(), "the slot is still the other's");
        drop(other);
        assert!(
            rx.try_recv().is_ok(),
            "then the silent person's next job goes"
        );
    }

    /// A join whose client left between forwarding and the answer (Gradio may hold the job)
    /// keeps its slot as a job nobody listens to would; one whose fate is known (the backend
    /// refused it, or its event is followed) frees it at once when dropped.
    #[tokio::test]
    async fn a_join_abandoned_before_its_answer_still_counts() {
        let (q, mut unsettled) = queue_and_permit();
        unsettled.claimed = true;
        drop(unsettled);
        assert_eq!(
            q.lock().totals(),
            (1, 0),
            "a join Gradio may hold freed its slot with its client"
        );
        assert_eq!(q.lock().people["ip:127.0.0.1"].running, 1);
        let (q, mut settled) = queue_and_permit();
        settled.claimed = true;
        settled.settle();
        drop(settled);
        assert_eq!(q.lock().totals(), (0, 0));
    }

    /// An end that passes before the join's answer was read still ends the job.
    #[tokio::test]
    async fn an_end_seen_before_the_answer_ends_the_job_when_it_registers() {
        let events = Arc::new(Events::default());
        events.ended("fast");
        let (q, permit) = queue_and_permit();
        events.register("fast", permit, Duration::from_secs(600));
        assert!(!events.running("fast"));
        assert_eq!(q.lock().totals(), (0, 0));
    }
}
