//! certgate: a mutual-TLS reverse proxy for AI WebUIs and APIs.
//!
//! It terminates TLS, admits only clients whose certificate chains to the operator's private
//! CA, closes internal paths, tells the backend exactly who the client is, and streams
//! everything else to a backend on loopback. Data flows one way through the modules:
//!
//! - [`config`]: the TOML file → a validated [`config::Config`] (addresses, certificates, routes).
//! - [`tls`]: the rustls server config, the client-certificate verifier with CRLs, and the
//!   reasons a handshake fails.
//! - [`identity`]: the peer certificate → [`identity::ClientIdentity`], DNs formatted as nginx.
//! - [`server`]: listeners, handshakes with a timeout, connection tasks, graceful shutdown, the
//!   HTTP→HTTPS redirect listener.
//! - [`keepalive`]: a connection's life: idle HTTP/1 connections parked so they hold little
//!   memory, keepalive_timeout and send_timeout.
//! - [`readahead`]: large socket reads while a client streams a body.
//! - [`policy`] and [`routes`]: request form, path normalization, path rules and their
//!   conditions (methods, IPs, identities, tokens, rate limits, body size).
//! - [`forward`]: header hygiene, the pooled backend client, streaming, WebSocket upgrades.
//! - [`body`]: the response body type (streamed with an idle timeout).
//! - [`reply`]: certgate's own JSON error responses.
//! - [`access_log`]: one line per request.
//! - [`logging`]: text or JSON logs on stderr.
//! - [`pki`]: the private CA (certificates, CRLs, PKCS#12), used by `demo` and the tests.
//! - [`certs`]: the `certgate certs` subcommands on top of [`pki`]: CA folder, state, revocation.
//! - [`access`]: IP allow-lists and connection limits, checked at accept.
//! - [`ratelimit`], [`jwt`], [`forward_auth`]: the policy checks a route can ask for.
//! - [`token`]: the `certgate token` subcommands.
//! - [`commands`] and [`demo`]: the `run`, `check` and `demo` subcommands.

pub mod access;
pub mod access_log;
pub mod admin;
pub mod body;
pub mod certs;
pub mod commands;
pub mod config;
pub mod demo;
pub mod forward;
pub mod forward_auth;
pub mod identity;
pub mod jwt;
pub mod keepalive;
pub mod logging;
pub mod metrics;
pub mod pki;
pub mod policy;
pub mod ratelimit;
pub mod readahead;
pub mod reload;
pub mod reply;
pub mod routes;
pub mod sandbox;
pub mod server;
pub mod systemd;
pub mod tls;
pub mod token;
