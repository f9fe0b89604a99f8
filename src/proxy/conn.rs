//! One client connection: the handshake, the per-connection facts computed once after it (who
//! the peer is, the chain to re-check after a reload), and serving it as HTTP/1.1 or HTTP/2
//! until it ends. [`Conn`] is the one owner of a connection's state; requests borrow it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use http::HeaderValue;
use hyper::service::service_fn;
use rustls_pki_types::{CertificateDer, UnixTime};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::keepalive::{self, ClientIo};
use super::readahead::ReadAhead;
use super::runtime::{Runtime, Shared};
use crate::onboarding::{Presented, Problem};
use crate::policy::access::ConnGuard;
use crate::response::in_flight::InFlight;
use crate::response::reply::{Check, Reject, Rule};
use crate::tls;
use crate::tls::identity::{ClientIdentity, IdentityHeaders, Peer};
use crate::upstream::Origin;

/// A client connection after its handshake.
#[derive(Debug)]
pub(super) struct Conn {
    /// Who the client is.
    pub peer: Peer,
    /// The chain the client presented (leaf first), to re-check after a reload; empty when it
    /// was refused.
    chain: Vec<CertificateDer<'static>>,
    /// `on_failure = "help"`: why the certificate was missing or refused. Every request on
    /// the connection is then answered by the help page.
    pub problem: Option<Problem>,
    /// The runtime generation this connection's certificate was last checked against.
    generation: AtomicU64,
    /// Cancelled to close this connection gracefully (after a failed re-check, or idle).
    pub close: CancellationToken,
    /// Its requests in flight, for the idle timeout and parking.
    pub requests: Arc<InFlight>,
    /// Where upgraded connections (WebSockets) run, so shutdown can wait for them.
    tunnels: TaskTracker,
    /// HTTP/1.1 with queues configured: a watch for the client hanging up while a job waits.
    hangup: Option<crate::queue::Hangup>,
}

impl Conn {
    /// Where a request on this connection comes from, as forwarding needs it.
    pub(super) fn origin(&self) -> Origin<'_> {
        Origin {
            peer: &self.peer,
            requests: &self.requests,
            tunnels: &self.tunnels,
            hangup: self.hangup.as_ref(),
        }
    }
}

/// Serves one accepted TCP connection: the TLS handshake with its timeout, then HTTP/1.1 or
/// HTTP/2 as ALPN chose, until the client leaves, the connection idles out or shutdown asks it
/// to finish. `_guard` holds the connection's place in the connection limits.
pub(super) async fn serve(
    shared: Arc<Shared>,
    tcp: TcpStream,
    peer: SocketAddr,
    cancel: CancellationToken,
    _guard: ConnGuard,
) {
    let _ = tcp.set_nodelay(true);
    // The runtime at accept time decides the handshake; later requests look at the current one.
    let rt = shared.current();
    // Boxed, like everything large that a connection holds for a while: the task itself stays
    // small, which is most of what an idle connection costs.
    // The stream is boxed inside the boxed handshake: no TLS state ever sits in the task.
    let handshake = Box::pin(async {
        tokio::time::timeout(
            rt.handshake_timeout,
            rt.acceptor.accept(ReadAhead::new(tcp)),
        )
        .await
        .map(|r| r.map(Box::new))
    });
    let tls = tokio::select! {
        r = handshake => r,
        () = cancel.cancelled() => return,
    };
    let tls = match tls {
        Ok(Ok(tls)) => {
            ack_the_handshake(tls.get_ref().0.tcp());
            tls
        }
        Ok(Err(e)) => {
            let reason = tls::failure_reason(&e);
            shared.metrics.handshake_failure(reason);
            tracing::warn!(%peer, reason, detail = %e, "TLS handshake failed");
            if tls::counts_as_failed_verification(&e) {
                throttle(&rt, peer);
                record_handshake(
                    &shared,
                    &rt,
                    peer,
                    &Problem {
                        reason,
                        presented: None,
                    },
                );
            }
            return;
        }
        Err(_) => {
            shared.metrics.handshake_failure("timeout");
            tracing::warn!(%peer, reason = "timeout", "TLS handshake failed");
            throttle(&rt, peer);
            record_handshake(
                &shared,
                &rt,
                peer,
                &Problem {
                    reason: "timeout",
                    presented: None,
                },
            );
            return;
        }
    };
    let mut chain: Vec<_> = tls
        .get_ref()
        .1
        .peer_certificates()
        .map(|c| c.iter().map(|d| d.clone().into_owned()).collect())
        .unwrap_or_default();
    let problem = if rt.help_on_failure {
        judge(&rt, &chain)
    } else {
        None
    };
    if let Some(p) = &problem {
        // As a refused handshake would be: logged, counted, throttled. The certificate is
        // dropped so that nothing on this connection can ever be taken for an identity.
        shared.metrics.handshake_failure(p.reason);
        tracing::warn!(
            %peer,
            reason = p.reason,
            subject_dn = p.presented.as_ref().map_or("-", |c| c.subject.as_str()),
            "client certificate refused; answering with the help page (on_failure = \"help\")"
        );
        throttle(&rt, peer);
        record_handshake(&shared, &rt, peer, p);
        chain.clear();
    }
    let identity = match chain.first() {
        None => None,
        Some(der) => match ClientIdentity::from_der(der) {
            Ok(id) => {
                shared.metrics.client_cert_seen(id.not_after);
                Some(Arc::new(id))
            }
            Err(e) => {
                shared.metrics.handshake_failure("unparsable certificate");
                tracing::warn!(%peer, reason = "unparsable certificate", detail = %e, "TLS handshake failed");
                return;
            }
        },
    };
    tracing::debug!(
        %peer,
        subject_dn = identity.as_ref().map_or("-", |i| i.subject_dn.as_str()),
        "TLS handshake complete"
    );
    // The profiles that forward the chain forward the path that verified it, not whatever else
    // the client appended; the nginx profile forwards the leaf alone and needs no path.
    let verified = identity
        .as_ref()
        .filter(|_| rt.headers.profile != tls::identity::HeaderProfile::Nginx)
        .and_then(|_| rt.paths.verified(&chain));
    let path = verified.as_deref().unwrap_or(&chain[..chain.len().min(1)]);
    let close = cancel.child_token();
    let requests = Arc::new(InFlight::new());
    // ALPN decides the protocol, as RFC 9113 requires over TLS; without it, HTTP/1.1.
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    // A second descriptor only where a queued job could wait unwatched (see `queue::Hangup`);
    // a reload that adds the first queue watches the connections made after it.
    let hangup = (!h2 && rt.forwarder.queues().iter().next().is_some())
        .then(|| crate::queue::Hangup::of(tls.get_ref().0.tcp()))
        .flatten();
    let conn = Arc::new(Conn {
        peer: Peer {
            addr: peer,
            ip: HeaderValue::from_str(&peer.ip().to_string())
                .unwrap_or_else(|_| HeaderValue::from_static("unknown")),
            headers: IdentityHeaders::render(&rt.headers, identity.as_deref().map(|id| (id, path))),
            identity,
        },
        chain,
        problem,
        generation: AtomicU64::new(rt.generation),
        close: close.clone(),
        requests: requests.clone(),
        tunnels: shared.tunnels.clone(),
        hangup,
    });
    let svc_shared = shared.clone();
    let answer = move |req| {
        let shared = svc_shared.clone();
        let conn = conn.clone();
        async move { Ok::<_, Infallible>(super::handle::handle(&shared, &conn, req).await) }
    };
    let deadlines = keepalive::Deadlines {
        keepalive: rt.keepalive_timeout,
        send: rt.send_timeout,
    };
    let result = if h2 {
        let state = Arc::new(keepalive::IoState::default());
        let io = ClientIo::new(tls, state.clone());
        // hyper spawns a task per HTTP/2 stream and moves the request's future into it, several
        // kilobytes copied each time; boxed, a pointer moves instead (callgrind: ~4k
        // instructions per request fewer). HTTP/1.1 polls it in place, so it stays unboxed.
        let service = service_fn(move |req| Box::pin(answer(req)));
        let connection = Box::pin(rt.http2.serve_connection(io, service));
        drop(rt);
        let watch = keepalive::Watch {
            requests: &requests,
            io: &state,
        };
        keepalive::drive(peer, connection, &close, watch, deadlines).await
    } else {
        // The settings current when hyper (re)takes the connection, not those at accept: a
        // parked connection must not keep an old runtime alive.
        drop(rt);
        let settings = move || shared.current().http1.clone();
        keepalive::serve(
            peer,
            tls,
            service_fn(answer),
            settings,
            &close,
            &requests,
            deadlines,
        )
        .await
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// Acknowledges the client's last handshake flight at once. With TLS 1.3 and no session
/// tickets (resumption is off with client authentication) the server sends nothing after the
/// client's Finished, so the kernel's delayed ACK holds that segment's acknowledgement for up to
/// 40 ms, and a client that leaves Nagle's algorithm on (Python's `ssl`, Java's classic HTTP
/// client) holds its request until then: every new connection's first answer came 40 ms late.
/// OpenSSL-based servers hide this by sending tickets. Setting TCP_QUICKACK sends the pending
/// ACK now (one system call per connection); later segments are acknowledged as usual.
fn ack_the_handshake(tcp: &TcpStream) {
    #[cfg(target_os = "linux")]
    let _ = tcp.set_quickack(true);
    #[cfg(not(target_os = "linux"))]
    let _ = tcp;
}

/// The strict verifier's judgement of a help-mode handshake's certificate (the handshake's own
/// verifier let everything through that proved its key).
fn judge(rt: &Runtime, chain: &[CertificateDer<'static>]) -> Option<Problem> {
    match chain.split_first() {
        None => rt.client_auth_required.then_some(Problem {
            reason: "no certificate",
            presented: None,
        }),
        Some((leaf, intermediates)) => rt
            .verifier
            .verify_client_cert(leaf, intermediates, UnixTime::now())
            .err()
            .map(|e| Problem {
                reason: tls::rustls_reason(&e),
                presented: Presented::from_der(leaf),
            }),
    }
}

/// Keeps a refused handshake (or, in help mode, a refused certificate) for the operator's page.
fn record_handshake(shared: &Shared, rt: &Runtime, peer: SocketAddr, problem: &Problem) {
    if !rt.record {
        return;
    }
    shared.console.refused(crate::console::store::RefusalNote {
        addr: peer.ip(),
        identity: None,
        subject: problem.presented.as_ref().map(|c| c.subject.as_str()),
        reason: problem.reason,
        words: &crate::console::handshake_words(problem),
        rate_limited: false,
        revoked: false,
    });
}

/// Counts a failed handshake (or, with `on_failure = "help"`, a refused certificate, or a
/// guessed invitation token) against its address; logs once when the address goes over
/// `handshake_failures_per_ip`.
pub(super) fn throttle(rt: &Runtime, peer: SocketAddr) {
    let blocked = move |wait: std::time::Duration, scope: &'static str| {
        tracing::warn!(
            %peer,
            refused_for = ?wait,
            count = scope,
            "too many failed handshakes from this address; refusing its connections before the handshake"
        );
    };
    // This replica's own count always applies (a replica never sees more than all of them).
    if let Some(wait) = rt.handshake_throttle.failed(peer.ip()) {
        blocked(wait, "this replica");
    }
    // With [shared], every replica's failures count: a scanner moving on to the next replica
    // is refused there after its first failure. The accept path never waits on Redis: the
    // count is checked here, off the connection's path, and the block applied locally.
    if let Some(shared) = rt.policy.shared().cloned() {
        let throttle = rt.handshake_throttle.clone();
        let rate = throttle.rate();
        tokio::spawn(async move {
            if let crate::policy::shared::Verdict::Wait(wait) =
                shared.handshake_failed(peer.ip(), rate).await
                && throttle.block(peer.ip(), wait)
            {
                blocked(wait, "all replicas");
            }
        });
    }
}

impl Conn {
    /// The connection's certificate as refused by a re-check for `reason` (help mode).
    pub(super) fn problem_now(&self, reason: &'static str) -> Problem {
        Problem {
            reason,
            presented: self.chain.first().and_then(|d| Presented::from_der(d)),
        }
    }

    /// After a reload, a connection's certificate is checked again against the new CAs and CRLs
    /// before its next request; a certificate the new state refuses ends the connection.
    pub(super) fn recheck(&self, rt: &Runtime) -> Result<(), Reject> {
        let conn = self;
        if conn.generation.load(Ordering::Acquire) == rt.generation {
            return Ok(());
        }
        let refused = |message: String, reason: &'static str| {
            Reject::forbidden(message, Rule::bare(Check::Recheck(reason)))
        };
        match conn.chain.split_first() {
            None if rt.client_auth_required => {
                return Err(refused(
                    "A client certificate is now required; reconnect with one.".into(),
                    "no certificate",
                ));
            }
            None => {}
            Some((leaf, intermediates)) => {
                if let Err(e) = rt
                    .verifier
                    .verify_client_cert(leaf, intermediates, UnixTime::now())
                {
                    let reason = tls::rustls_reason(&e);
                    let message = match reason {
                    "revoked" => "Your client certificate has been revoked (certificate revoked).".to_string(),
                    "unknown issuer" => "Your client certificate's issuer is no longer trusted (issuer no longer trusted).".to_string(),
                    other => format!("Your client certificate is no longer accepted ({other})."),
                };
                    return Err(refused(message, reason));
                }
            }
        }
        conn.generation.store(rt.generation, Ordering::Release);
        Ok(())
    }
}
