//! End-to-end tests: real TLS handshakes on 127.0.0.1 with a PKI made per run, a real backend
//! that records what reached it, and real clients (rustls + hyper, curl, openssl). One crate, so
//! the suite links once.

mod common;

mod certs;
mod cli;
mod console;
mod deploy;
mod fidelity;
mod forwarding;
mod gradio;
mod groups;
mod hardening;
mod identity;
mod keepalive;
mod onboarding;
mod ops;
mod paths;
mod policy;
mod profiles;
mod properties;
mod queue;
mod refusals;
mod servlet_view;
mod shared;
mod tls;
mod uploads;
