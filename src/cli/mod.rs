//! The subcommands: `run`, `check` and `demo`, `certs` (the private CA), `token`.

pub mod certs;
pub mod commands;
pub mod demo;
pub mod token;
