//! The hyper server settings for client connections: explicit protocol limits
//! (docs/security.md), so one client cannot exhaust the daemon. A request head over 64 KiB or
//! with more than 100 fields gets 431; HTTP/2 streams, header lists, pending resets and pings
//! are bounded.

use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioTimer};

/// Largest HTTP/1 request head (request line and headers); beyond it, 431.
const H1_MAX_HEAD: usize = 64 * 1024;
/// Largest read and write buffer of an HTTP/1 connection: how much of a streamed body moves per
/// read and per write (hyper grows a connection's buffers up to it only while data keeps
/// coming, and a parked connection has none).
const H1_MAX_BUF: usize = 128 * 1024;
/// Concurrent HTTP/2 streams per connection (nginx: 128).
const H2_MAX_STREAMS: u32 = 128;
/// Largest HTTP/2 header list (decoded), the bound on CONTINUATION floods.
const H2_MAX_HEADER_LIST: u32 = 64 * 1024;
/// Streams reset by the client before being accepted, in flight at once; beyond it, GOAWAY
/// (CVE-2023-44487, "rapid reset").
const H2_MAX_PENDING_RESETS: usize = 32;
/// Streams certgate itself had to reset for protocol errors before it sends GOAWAY.
const H2_MAX_LOCAL_ERROR_RESETS: usize = 256;
/// Per-stream receive window: 1 MiB keeps a large upload flowing over one stream.
const H2_STREAM_WINDOW: u32 = 1 << 20;
/// Per-connection receive window: room for a few streams at full speed.
const H2_CONNECTION_WINDOW: u32 = 4 << 20;
/// HTTP/2 PING interval to notice dead peers...
const H2_PING_INTERVAL: Duration = Duration::from_secs(30);
/// ...and how long an answer may take.
const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);
/// The HTTP/1 and HTTP/2 builders, with `header_read_timeout` for HTTP/1 request heads.
pub(super) fn builders(
    header_read_timeout: Duration,
) -> (http1::Builder, http2::Builder<TokioExecutor>) {
    let mut h1 = http1::Builder::new();
    let mut h2 = http2::Builder::new(TokioExecutor::new());
    // Without a timer hyper silently disables its header-read timeout.
    h1.timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .max_header_size(H1_MAX_HEAD)
        .max_buf_size(H1_MAX_BUF)
        .max_headers(crate::policy::MAX_HEADERS);
    h2.timer(TokioTimer::new())
        .max_concurrent_streams(H2_MAX_STREAMS)
        .max_header_list_size(H2_MAX_HEADER_LIST)
        .max_pending_accept_reset_streams(H2_MAX_PENDING_RESETS)
        .max_local_error_reset_streams(H2_MAX_LOCAL_ERROR_RESETS)
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONNECTION_WINDOW)
        .keep_alive_interval(H2_PING_INTERVAL)
        .keep_alive_timeout(H2_PING_TIMEOUT);
    (h1, h2)
}
