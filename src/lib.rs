//! certgate: a mutual-TLS reverse proxy for AI WebUIs and APIs.
//!
//! It terminates TLS, admits only clients whose certificate chains to the operator's private
//! CA, closes internal paths, tells the backend exactly who the client is, and streams
//! everything else to a backend on loopback. Data flows one way through the folders, and no
//! module imports one that imports it back (`shared/tools/module-cycles` checks):
//!
//! ```text
//! config ──► tls, policy, upstream, ops      (config builds their settings; they never read it)
//! proxy  ──► tls ─► policy ─► upstream ─► queue ─► response ─► ops
//! proxy  ──► console ──► upstream, onboarding, response   (the page reads their state)
//! cli    ──► config, proxy, pki, tls
//! ```
//!
//! - [`config`]: the TOML file → a validated [`config::Config`]: a serde mirror (`raw`), then
//!   every section checked and built into the runtime types of the folder that uses it.
//! - [`tls`]: the rustls server config, the client-certificate verifier with CRLs, why a
//!   handshake failed, the verified path of a client's chain (`tls::path`); [`tls::identity`]:
//!   the peer certificate → who the client is, DNs as nginx prints them, the identity headers in
//!   each profile.
//! - [`proxy`]: listeners, the accept loop, one [`proxy`]`::conn` per connection (handshake,
//!   keep-alive, parking), one `handle` per request, reload ([`proxy::runtime`]), shutdown,
//!   signals, the redirect and admin listeners.
//! - [`policy`]: the checks of spec §8 in order — request form, path normalization and routes
//!   ([`policy::routes`]), methods, IP lists, identities, JWT, forward auth, rate limits (kept
//!   in Redis for all replicas with `[shared]`).
//! - [`queue`]: queues in front of the backend (spec §15): jobs wait here for their turn, one
//!   person after another, per server; what each person used, for `/usage`.
//! - `upstream`: backend groups (balancing, identity affinity, health, failover), each
//!   server's keep-alive pool (hyper's HTTP/1.1 connections, burst-tolerant), header hygiene,
//!   WebSocket tunnels.
//! - `response`: the response body, certgate's own JSON answers and typed refusals, the
//!   access-log record, the in-flight ledger whose guard ends a request.
//! - `console`: the operator's page — who came in, who could not and why, backends, the
//!   daemon's state — with the store it keeps as the traffic passes (fed by `proxy` and by the
//!   access record through `response`'s `Ledger`), read at render time from its owners.
//! - `onboarding`: people without a working certificate — the help page answered on a
//!   connection whose certificate was missing or refused, and the one-time invitation links
//!   (`certs invite` writes them, the daemon serves them).
//! - [`ops`]: logs, metrics, systemd, the Landlock sandbox.
//! - [`pki`]: the private CA (certificates, CRLs, PKCS#12), used by `certs`, `demo` and the
//!   tests; [`cli`]: the subcommands.

pub mod cli;
pub mod config;
mod console;
mod onboarding;
pub mod ops;
pub mod pki;
pub mod policy;
pub mod proxy;
pub mod queue;
mod response;
pub mod tls;
mod upstream;

#[doc(hidden)]
pub use upstream::fuzz_sanitize;
