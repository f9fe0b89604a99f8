//! systemd integration: `sd_notify` state changes (READY, RELOADING with MONOTONIC_USEC,
//! STOPPING), watchdog pings, and socket activation (`LISTEN_FDS`), so the daemon can run as
//! `Type=notify` (the shipped unit, systemd 249 and later) or `Type=notify-reload` (253 and
//! later) and bind :443 without root. Everything is a no-op outside systemd (no
//! `NOTIFY_SOCKET`, no `LISTEN_FDS`).

use std::io;
use std::os::fd::FromRawFd as _;
use std::time::Duration;

use sd_notify::NotifyState;

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "sd_notify failed");
    }
}

/// Listeners are bound and the configuration is loaded.
pub fn ready() {
    send(&[NotifyState::Ready, NotifyState::Status("serving")]);
}

/// A reload starts (`Type=notify-reload` wants RELOADING=1 with the monotonic time; under
/// `Type=notify` systemd shows it as "reloading" until READY=1 comes back).
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

/// A reload is over, successful or not: serving again.
pub fn reloaded(ok: bool) {
    let status = if ok {
        "serving"
    } else {
        "serving (last reload failed)"
    };
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Shutdown has begun.
pub fn stopping() {
    send(&[
        NotifyState::Stopping,
        NotifyState::Status("finishing requests in flight"),
    ]);
}

/// The interval to ping the watchdog at (half of `WATCHDOG_USEC`), when it is enabled.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().map(|d| d / 2)
}

/// One watchdog ping.
pub fn watchdog() {
    send(&[NotifyState::Watchdog]);
}

/// Sockets passed by systemd, by name: `https` and `http_redirect` (from `FileDescriptorName=`),
/// or in order (the first HTTPS, the second the redirect) when the units do not name them.
#[derive(Debug, Default)]
pub struct Activated {
    /// The HTTPS listener.
    pub https: Option<std::net::TcpListener>,
    /// The redirect listener.
    pub http_redirect: Option<std::net::TcpListener>,
}

/// Takes the sockets systemd passed, if any.
///
/// # Errors
/// When `LISTEN_FDS` is malformed or a name is not one certgate knows.
pub fn activated() -> io::Result<Activated> {
    let fds: Vec<(i32, String)> = match sd_notify::listen_fds_with_names() {
        Ok(named) => named.collect(),
        Err(_) => sd_notify::listen_fds()?
            .map(|fd| (fd, String::new()))
            .collect(),
    };
    let mut out = Activated::default();
    for (i, (fd, name)) in fds.into_iter().enumerate() {
        // Safety: systemd passed us this descriptor for our exclusive use (LISTEN_PID is ours,
        // checked by sd_notify), and nothing else in the process has taken it.
        #[allow(
            unsafe_code,
            reason = "socket activation hands over raw descriptors; std has no safe way to adopt one"
        )]
        let listener = unsafe { std::net::TcpListener::from_raw_fd(fd) };
        listener.set_nonblocking(true)?;
        let slot = match (name.as_str(), i) {
            ("https", _) | ("" | "unknown", 0) => &mut out.https,
            ("http_redirect" | "http", _) | ("" | "unknown", 1) => &mut out.http_redirect,
            (other, _) => {
                return Err(io::Error::other(format!(
                    "socket activation: unknown FileDescriptorName {other:?}; use \"https\" or \"http_redirect\""
                )));
            }
        };
        *slot = Some(listener);
    }
    Ok(out)
}
