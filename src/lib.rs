//! certgate: a mutual-TLS reverse proxy for AI WebUIs and APIs.

pub mod cli;
pub mod config;
pub mod ops;
pub mod pki;
pub mod policy;
pub mod proxy;
mod response;
pub mod tls;
mod upstream;

#[doc(hidden)]
pub use upstream::fuzz_sanitize;
