//! Running as a service: metrics, logs, systemd integration and the Landlock sandbox.

pub mod logging;
pub(crate) mod metrics;
pub(crate) mod sandbox;
pub(crate) mod systemd;
