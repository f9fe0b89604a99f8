//! Forwarding a request that passed the policy to the backend: each server's keep-alive
//! connections ([`pool`]), streaming in both directions, the one retry a keep-alive race
//! deserves, WebSocket tunnels ([`websocket`]), and the mapping of backend failures to 502 /
//! 504. What the request carries is decided in [`headers`]; groups of servers and their
//! balancing in [`group`] and [`balance`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, PathAndQuery};
use http::{HeaderName, HeaderValue, Request, Response, StatusCode, Uri, Version, header};
use hyper::body::Body as _;
use hyper::body::Incoming;
use tokio_util::task::TaskTracker;

use crate::ops::metrics::Metrics;
use crate::response::body::{LimitedBody, Overflow, ProxyBody, drain};
use crate::response::in_flight::InFlight;
use crate::response::reply::Reject;
use crate::tls::identity::Peer;

mod balance;
mod group;
mod headers;
mod pool;
mod websocket;

pub use balance::Balance;
use balance::ClientKey;
use group::{Group, InFlightGuard, Server};
pub use group::{GroupStatus, HealthSettings, Recalled, ServerSettings, SharedBindings, Stored};
pub use headers::HeaderPolicy;
#[doc(hidden)]
pub use headers::fuzz_sanitize;
use pool::{Lease, SendError};

/// uvicorn (Gradio) closes idle keep-alive connections after 5 s; closing ours first means the
/// pool never hands out a connection the backend is about to close.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(4);

/// What the policy decided to send for an admitted request.
#[derive(Debug)]
pub struct Outbound {
    /// Path (normalized, prefix stripped) and query.
    pub target: PathAndQuery,
    /// The Host the client named (its `Host`, or `:authority` over HTTP/2), checked.
    pub host: HeaderValue,
    /// Headers the checks add (the JWT subject, forward auth's copies).
    pub extra: Vec<(HeaderName, HeaderValue)>,
    /// Body limit for this request.
    pub max_body: u64,
    /// The upstream group: 0 is `[upstream]`, then the `[upstreams.NAME]` groups in order.
    pub group: usize,
    /// The queue it waits in for its turn, and whose job it is.
    pub queue: Option<crate::queue::Ticket>,
}

/// Where a request comes from, as forwarding needs it.
#[derive(Clone, Copy)]
pub struct Origin<'a> {
    /// Who the client is.
    pub peer: &'a Peer,
    /// Its connection's requests: told when the request body has been read to its end.
    pub requests: &'a Arc<InFlight>,
    /// Where a WebSocket tunnel runs, so shutdown can wait for it.
    pub tunnels: &'a TaskTracker,
    /// A watch for the client hanging up while its job waits in a queue (HTTP/1.1 connections,
    /// where queues are configured).
    pub hangup: Option<&'a crate::queue::Hangup>,
}

/// The backend groups and what every request to them needs.
#[derive(Debug)]
pub struct Forwarder {
    /// The `[upstream]` group first, then the `[upstreams.NAME]` groups in config order.
    groups: Vec<Group>,
    headers: Arc<HeaderPolicy>,
    metrics: Arc<Metrics>,
    /// `[limits] body_timeout`: the longest silence between two reads of a request body.
    body_timeout: Duration,
    /// `[[queue]]`: where queued routes' requests wait for their turn.
    queues: crate::queue::Queues,
}

impl Forwarder {
    /// A forwarder for `groups` (the default group first). Servers that `previous` (the
    /// forwarder before a reload) had in a group of the same name keep their health, load and
    /// bound clients. A client whose request body goes silent for `body_timeout` gets 408.
    /// With `shared` (`[shared]` Redis), identity bindings are shared with the
    /// other replicas.
    pub fn new(
        groups: &[&Upstream],
        headers: Arc<HeaderPolicy>,
        metrics: Arc<Metrics>,
        previous: Option<&Forwarder>,
        body_timeout: Duration,
        shared: Option<Arc<dyn SharedBindings>>,
    ) -> Forwarder {
        let groups = groups
            .iter()
            .map(|g| {
                let before = previous.and_then(|p| p.groups.iter().find(|o| *o.name == *g.name));
                Group::new(g, &metrics, before, shared.clone())
            })
            .collect();
        Forwarder {
            groups,
            headers,
            metrics,
            body_timeout,
            queues: crate::queue::Queues::default(),
        }
    }

    /// The forwarder with its queues (routes name them by index).
    #[must_use]
    pub fn with_queues(mut self, queues: crate::queue::Queues) -> Forwarder {
        self.queues = queues;
        self
    }

    /// The queues, for the reload that takes them over, shutdown and `/usage`.
    pub fn queues(&self) -> &crate::queue::Queues {
        &self.queues
    }

    /// Forgets stale bindings and refreshes the per-server gauges.
    pub fn housekeeping(&self) {
        for g in &self.groups {
            g.housekeeping();
        }
    }

    /// Every group's servers now, for the operator's page.
    pub fn status(&self) -> Vec<GroupStatus> {
        self.groups.iter().map(Group::status).collect()
    }

    /// The group and server each of `fingerprints` is bound to, where one is.
    pub fn bound_to(&self, fingerprints: &[&str]) -> std::collections::HashMap<String, String> {
        let mut out = std::collections::HashMap::new();
        for g in &self.groups {
            g.bound_to(fingerprints, &mut out);
        }
        out
    }

    /// Why the proxy is not ready, if a group has no server that would take a new client; and the
    /// address of the default group's server when it has just one (`/readyz` then checks that
    /// it accepts a TCP connection, as it always has).
    pub fn readiness(&self) -> (Option<String>, Option<Authority>) {
        let down = self
            .groups
            .iter()
            .find_map(|g| Some(format!("upstream group {:?} {}", &*g.name, g.unready()?)));
        let single = match self.groups.first().map(|g| g.servers.as_slice()) {
            Some([only]) => Some(only.settings.authority.clone()),
            _ => None,
        };
        (down, single)
    }

    /// Sends `req` to a server of `out`'s group, as `out` says (target, Host, added headers,
    /// with its body cut off at `max_body`), and returns the backend's response, streamed. A
    /// server that refuses the connection is skipped for the next before any byte of the
    /// request was sent, whatever the method.
    ///
    /// # Errors
    /// 413 over `max_body`, 502 / 504 when the backend cannot be reached or does not answer in
    /// time, 503 when no server of the group is healthy.
    pub async fn forward(
        &self,
        req: Request<Incoming>,
        out: Outbound,
        origin: Origin<'_>,
    ) -> Result<Response<ProxyBody>, Reject> {
        let Outbound {
            target,
            host,
            extra,
            max_body,
            group,
            queue,
        } = out;
        let peer = origin.peer.addr;
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max_body) {
            drain(req.into_body(), Some(origin.requests.clone()));
            return Err(Reject::payload_too_large(max_body));
        }
        let group = &self.groups[group.min(self.groups.len() - 1)];
        let key = (group.servers.len() > 1).then(|| match &origin.peer.identity {
            Some(id) => ClientKey::Cert(Arc::from(id.fingerprint.as_str())),
            None => ClientKey::anonymous(peer.ip()),
        });
        // A group of one server (the common case) is used as it is, without a list.
        let candidates: std::borrow::Cow<'_, [Arc<Server>]> = match &key {
            Some(key) => std::borrow::Cow::Owned(group.candidates(key).await),
            None => std::borrow::Cow::Borrowed(&group.servers),
        };
        if candidates.is_empty() {
            drain(req.into_body(), Some(origin.requests.clone()));
            self.metrics.upstream_error("no_healthy_backend");
            return Err(Reject::no_healthy_backend(&group.name));
        }
        // A queued route's request waits here for its turn on the server chosen above (spec
        // §15), its body unread; the permit holds the slot until the response has ended.
        let mut permit = match &queue {
            Some(ticket) => Some(
                self.queues
                    .wait(ticket, &candidates[0].settings.url, origin.hangup)
                    .await?,
            ),
            None => None,
        };
        let overflow = std::sync::Arc::new(Overflow::default());
        let mut req = req.map(|b| {
            LimitedBody::new(
                b,
                max_body,
                self.body_timeout,
                overflow.clone(),
                origin.requests.clone(),
            )
        });
        let websocket = headers::is_websocket_upgrade(&req);
        let fields = req.headers_mut();
        fields.insert(header::HOST, host);
        // The policy refused differing lengths; equal repeats (legal over HTTP/2, where nothing
        // merges them) go on as one.
        if let Some(len) = headers::declared_repeated(fields) {
            fields.insert(header::CONTENT_LENGTH, len);
        }
        self.headers.sanitize(fields, websocket, origin.peer);
        for (name, value) in extra {
            fields.append(name, value);
        }
        let client_upgrade = websocket.then(|| hyper::upgrade::on(&mut req));
        let (head, body) = req.into_parts();
        let method = head.method;
        let mut fields = Some(head.headers);
        let mut body = Some(body);
        let last = candidates.len() - 1;
        for (n, server) in candidates.iter().enumerate() {
            let Some(this_body) = body.take() else { break };
            let mut attempt = Request::new(this_body);
            // Origin form: the connection is the server's, the target only the path and query.
            *attempt.uri_mut() = Uri::from(target.clone());
            *attempt.method_mut() = method.clone();
            *attempt.version_mut() = Version::HTTP_11;
            *attempt.headers_mut() = if n == last {
                fields.take().unwrap_or_default()
            } else {
                fields.clone().unwrap_or_default()
            };
            let in_flight = server.begin();
            match self.send(server, attempt, websocket, peer, &overflow).await {
                Sent::Answered(resp, lease) => {
                    if let Some(key) = &key {
                        group.served(key, server);
                    }
                    let (permit, gradio) = crate::queue::Queues::split(permit);
                    let answer = Answer {
                        resp,
                        lease,
                        in_flight,
                        permit,
                        body: overflow.clone(),
                    };
                    let resp = self.respond(answer, client_upgrade, peer, origin);
                    return Ok(self
                        .queues
                        .follow(gradio, &method, target.path(), resp)
                        .await);
                }
                Sent::Refused(e) => {
                    // Nothing of the job reached the server.
                    if let Some(p) = permit.as_mut() {
                        p.settle();
                    }
                    group.failed(server, "connect");
                    // Nothing of the request reached the server: the next one may have it,
                    // body and all, when the client's body was never touched.
                    if n < last
                        && let Some(unsent) = overflow.take_unsent()
                    {
                        tracing::warn!(
                            %peer,
                            upstream = &*group.name,
                            server = %server.settings.url,
                            error = %e.cause(),
                            "backend refused the connection; trying the next server"
                        );
                        self.metrics.upstream_error("failover");
                        body = Some(LimitedBody::new(
                            unsent,
                            max_body,
                            self.body_timeout,
                            overflow.clone(),
                            origin.requests.clone(),
                        ));
                        // Slots are the server's: the job runs on the next one, and waits
                        // for that one's turn (the refusing server's slot frees first).
                        if let Some(ticket) = &queue {
                            drop(permit.take());
                            permit = Some(
                                self.queues
                                    .wait(ticket, &candidates[n + 1].settings.url, origin.hangup)
                                    .await?,
                            );
                        }
                        continue;
                    }
                    if let Some(unsent) = overflow.take_unsent() {
                        drain(unsent, Some(origin.requests.clone()));
                    }
                    return Err(self.upstream_error(&e, server, peer));
                }
                Sent::Failed(e) => {
                    // A request whose body the client broke off started no job.
                    if (overflow.hit() || overflow.stalled() || overflow.client_failed())
                        && let Some(p) = permit.as_mut()
                    {
                        p.settle();
                    }
                    if overflow.hit() {
                        if let Some(rest) = overflow.take_rest() {
                            drain(rest, Some(origin.requests.clone()));
                        }
                        return Err(Reject::payload_too_large(max_body));
                    }
                    // The client's own failures are never the server's: no failure counted
                    // against it, and the refusal is logged as the client's.
                    if overflow.stalled() {
                        return Err(Reject::request_timeout(self.body_timeout));
                    }
                    if overflow.client_failed() {
                        return Err(Reject::bad_request(
                            "The request body was cut off: the client went away or sent a malformed body.",
                        ));
                    }
                    return Err(self.upstream_error(&e, server, peer));
                }
                Sent::TimedOut(timeout) => {
                    group.failed(server, "timeout");
                    self.metrics.upstream_error("timeout");
                    tracing::warn!(
                        %peer,
                        upstream = %server.settings.authority,
                        timeout = ?timeout,
                        "backend did not answer in time"
                    );
                    return Err(Reject::gateway_timeout(format!(
                        "The backend did not send a response within {}; try again later.",
                        humantime::format_duration(timeout)
                    )));
                }
            }
        }
        Err(Reject::no_healthy_backend(&group.name))
    }

    /// One attempt on one server, with the one retry a keep-alive race deserves: an idempotent
    /// request without a body is sent again if the pooled connection turns out to have been
    /// closed by the backend before any byte of an answer came back.
    async fn send(
        &self,
        server: &Server,
        req: Request<LimitedBody>,
        websocket: bool,
        peer: SocketAddr,
        body: &Overflow,
    ) -> Sent {
        let replay = (!websocket && is_idempotent(req.method()) && req.body().is_end_stream())
            .then(|| {
                let mut b = Request::builder()
                    .method(req.method().clone())
                    .uri(req.uri().clone())
                    .version(req.version());
                if let Some(h) = b.headers_mut() {
                    h.clone_from(req.headers());
                }
                b
            });
        let timeout = server.response_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut sent = answered(server.pool.send(req), body, deadline, timeout).await;
        let mut replayed = false;
        if let (Ok(Err(e)), Some(replay)) = (&sent, replay)
            && e.is_stale_connection()
        {
            tracing::debug!(%peer, error = %e, "backend closed a pooled connection; retrying once");
            self.metrics.upstream_error("retried");
            if let Ok(again) = replay.body(LimitedBody::empty()) {
                replayed = true;
                sent = tokio::time::timeout_at(deadline, server.pool.send(again)).await;
            }
        }
        match sent {
            Ok(Ok((resp, lease))) => Sent::Answered(resp, lease),
            // A refused retry is not a request nothing of which was sent: the first send went
            // out, so it may not fail over to the next server as well.
            Ok(Err(e)) if e.is_connect() && !replayed => Sent::Refused(e),
            Ok(Err(e)) => Sent::Failed(e),
            Err(_) => Sent::TimedOut(timeout),
        }
    }

    /// The backend's answer as the client gets it: hop-by-hop headers gone, the body streamed
    /// with the server's request counted in flight until it ends, or a WebSocket tunnel.
    fn respond(
        &self,
        answer: Answer,
        client_upgrade: Option<hyper::upgrade::OnUpgrade>,
        peer: SocketAddr,
        origin: Origin<'_>,
    ) -> Response<ProxyBody> {
        let Answer {
            resp,
            lease,
            in_flight,
            permit,
            body: request_body,
        } = answer;
        let (mut parts, body) = resp.into_parts();
        parts.version = Version::HTTP_11;
        if let Some(p) = &permit {
            parts.extensions.insert(crate::queue::Waited(p.waited()));
        }
        if let (Some(client_upgrade), StatusCode::SWITCHING_PROTOCOLS) =
            (client_upgrade, parts.status)
        {
            // The connection becomes the tunnel; it never goes back to the pool.
            lease.forget();
            let upstream_resp = Response::from_parts(parts.clone(), body);
            websocket::tunnel(client_upgrade, upstream_resp, peer, origin.tunnels, permit);
            return Response::from_parts(parts, ProxyBody::empty());
        }
        headers::remove_hop_by_hop(&mut parts.headers, false);
        let mut body = ProxyBody::stream(body, in_flight.idle_timeout());
        // One allocation per request holds them until the body is done with.
        body.on_done(Box::new((
            in_flight,
            Done {
                lease: Some(lease),
                request_body,
            },
            permit,
        )));
        Response::from_parts(parts, body)
    }

    fn upstream_error(&self, e: &SendError, server: &Server, peer: SocketAddr) -> Reject {
        let cause = e.cause();
        tracing::warn!(
            %peer,
            upstream = %server.settings.authority,
            error = %cause,
            connect = e.is_connect(),
            "backend request failed"
        );
        let kind = if e.is_connect() {
            "connect"
        } else {
            "protocol"
        };
        self.metrics.upstream_error(kind);
        if !e.is_connect() {
            server.stats.failure(kind);
        }
        if e.is_connect() {
            Reject::bad_gateway(format!(
                "certgate cannot connect to the backend at {} ({cause}); check that it is running.",
                server.settings.authority
            ))
        } else {
            Reject::bad_gateway(
                "The backend closed the connection or sent an invalid response.".to_string(),
            )
        }
    }
}

/// Waits for `answer` (the backend's response headers) with `response_timeout` = `timeout`
/// counted from the end of the request body: a client's slow or stalled upload is never the
/// backend's delay. While the body is on its way, a wait for the client's next bytes is timed by
/// `body_timeout` inside the body; a backend that stops taking a body the client has ready
/// gets `timeout` from the last frame it took. A request whose body has already ended (most:
/// no body) keeps `deadline`, `timeout` from when it was sent. A backend that answers before
/// the body has ended is fine.
async fn answered<F: std::future::Future>(
    answer: F,
    body: &Overflow,
    deadline: tokio::time::Instant,
    timeout: Duration,
) -> Result<F::Output, tokio::time::error::Elapsed> {
    if body.ended() {
        return tokio::time::timeout_at(deadline, answer).await;
    }
    let sent_at = tokio::time::Instant::now();
    let mut answer = std::pin::pin!(answer);
    loop {
        let check = body
            .backend_idle(sent_at)
            .map_or(timeout, |idle| timeout.saturating_sub(idle));
        tokio::select! {
            r = answer.as_mut() => return Ok(r),
            () = body.wait_end() => {
                let deadline = tokio::time::Instant::now() + timeout;
                return tokio::time::timeout_at(deadline, answer).await;
            }
            () = tokio::time::sleep(check) => {
                if body.backend_idle(sent_at).is_some_and(|idle| idle >= timeout) {
                    // Past its deadline: one last look at the answer, then it has timed out.
                    return tokio::time::timeout_at(tokio::time::Instant::now(), answer).await;
                }
            }
        }
    }
}

/// How one attempt on one server ended.
enum Sent {
    /// Response headers came back.
    Answered(Response<Incoming>, Lease),
    /// No connection: nothing of the request was sent.
    Refused(SendError),
    /// The connection broke or the answer was not HTTP.
    Failed(SendError),
    /// No response headers within `response_timeout` of the end of the request body, or the
    /// backend took nothing of the body for that long.
    TimedOut(Duration),
}

/// The backend connection of a response whose body is done with: given back to the pool, or
/// closed when the request body is still on its way. A server that answered before reading the
/// whole body (a refusal of its own) may never read the rest, and hyper would go on flushing it
/// into the server for ever, holding the client's upload; closed, the rest of the client's body
/// is read and thrown away (see `LimitedBody`), and the client reads the answer (nginx does the
/// same).
struct Done {
    lease: Option<Lease>,
    request_body: Arc<Overflow>,
}

impl Drop for Done {
    fn drop(&mut self) {
        if let Some(lease) = self.lease.take()
            && !self.request_body.ended()
        {
            lease.abandon();
        }
    }
}

/// A response and what it holds until its body is done with.
struct Answer {
    resp: Response<Incoming>,
    /// The backend connection, back to the pool afterwards.
    lease: Lease,
    /// The server's count of this request in flight.
    in_flight: InFlightGuard,
    /// A queued request's slot.
    permit: Option<crate::queue::Permit>,
    /// The request body's progress: the connection is not given back while it is on its way.
    body: Arc<Overflow>,
}

/// Safe to send twice (RFC 9110 §9.2.2).
fn is_idempotent(m: &http::Method) -> bool {
    matches!(
        *m,
        http::Method::GET
            | http::Method::HEAD
            | http::Method::OPTIONS
            | http::Method::PUT
            | http::Method::DELETE
            | http::Method::TRACE
    )
}

/// `[upstream]` or `[upstreams.NAME]`, validated: one group of servers.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// `default` for `[upstream]`, else the NAME; the `upstream` metric label.
    pub name: String,
    /// The servers, at least one.
    pub servers: Vec<ServerSettings>,
    /// How requests are spread over them.
    pub balance: Balance,
    /// How long a client's binding to a server lasts unseen.
    pub affinity_timeout: Duration,
    /// Active health checks; `None` when off.
    pub health: Option<HealthSettings>,
    /// Passive checks: this many connect failures or timeouts of real requests...
    pub max_fails: u32,
    /// ...within this long mark a server down for this long.
    pub fail_timeout: Duration,
    /// Idle keep-alive connections per server.
    pub max_idle_connections: usize,
    /// TCP connect limit.
    pub connect_timeout: Duration,
    /// Response-header limit, from the end of the request body.
    pub response_timeout: Duration,
    /// Longest silence inside a body.
    pub idle_timeout: Duration,
}
