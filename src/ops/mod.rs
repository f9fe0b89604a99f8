//! Running as a service: metrics, logs, systemd integration and the Landlock sandbox.

pub mod logging;
pub mod metrics;
pub mod sandbox;
pub mod systemd;
