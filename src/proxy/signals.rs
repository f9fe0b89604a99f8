//! Signals: SIGTERM and SIGINT stop the daemon gracefully, SIGHUP reloads it.

use std::future::Future;
use std::sync::Arc;

use super::runtime::Shared;

/// SIGTERM, SIGINT and SIGHUP handlers, registered before the listeners announce themselves:
/// a signal that arrives right after "certgate listening" must find its handler in place, not
/// the default action (which for SIGHUP and SIGTERM ends the process at once).
pub struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
    #[cfg(unix)]
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    /// Registers the handlers; call inside the runtime.
    ///
    /// # Errors
    /// When the handlers cannot be installed.
    pub fn register() -> std::io::Result<Signals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Signals {
                term: signal(SignalKind::terminate())?,
                int: signal(SignalKind::interrupt())?,
                hup: signal(SignalKind::hangup())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Signals {})
    }

    /// Splits into the shutdown future (SIGTERM or SIGINT) and the reload task (SIGHUP).
    pub fn split(
        self,
        shared: Arc<Shared>,
    ) -> (
        impl Future<Output = ()> + Send + 'static,
        impl Future<Output = ()> + Send + 'static,
    ) {
        #[cfg(unix)]
        {
            let Signals {
                mut term,
                mut int,
                mut hup,
            } = self;
            let shutdown = async move {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM received"),
                    _ = int.recv() => tracing::info!("SIGINT received"),
                }
            };
            let reload = async move {
                while hup.recv().await.is_some() {
                    tracing::info!("SIGHUP received");
                    let _ = shared.reload("SIGHUP").await;
                }
            };
            (shutdown, reload)
        }
        #[cfg(not(unix))]
        {
            let _ = shared;
            (
                async {
                    let _ = tokio::signal::ctrl_c().await;
                },
                std::future::pending::<()>(),
            )
        }
    }
}
