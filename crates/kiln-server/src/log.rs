//! Structured logs (`tracing`): one event per request answered (target
//! `kiln_server::request`: the peer, method, path, route template, status and milliseconds;
//! `warn` for a 5xx, `info` otherwise), and the server's own events (start, stop, tokens read
//! again, the storage failing). Nothing that is not already plaintext on the server is logged:
//! no body, no token, no head record. [`to_stderr`] writes them as text or JSON lines; an
//! embedding program may install any `tracing` subscriber instead.

use axum::extract::MatchedPath;
use std::net::SocketAddr;
use std::time::Instant;

pub use tracing::Level;

/// The connection a request came on (put in each request's extensions by the accept loop).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Peer(pub SocketAddr);

/// How logs are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// One human-readable line per event.
    Text,
    /// One JSON object per line (`timestamp`, `level`, `target`, `fields`).
    Json,
}

/// Writes the server's logs to stderr from `level` up (a `tracing` global subscriber; the
/// first call wins, later ones change nothing).
pub fn to_stderr(format: LogFormat, level: tracing::Level) {
    let b = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level)
        .with_target(true);
    let _ = match format {
        LogFormat::Text => b.try_init(),
        LogFormat::Json => b.json().flatten_event(false).try_init(),
    };
}

/// Middleware: logs each request once answered.
pub(crate) async fn request(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |m| m.as_str().to_owned());
    let peer = req
        .extensions()
        .get::<Peer>()
        .map_or_else(String::new, |p| p.0.to_string());
    let r = next.run(req).await;
    let status = r.status().as_u16();
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    if status >= 500 {
        tracing::warn!(target: "kiln_server::request", %peer, %method, %path, %route, status, ms, "request failed");
    } else {
        tracing::info!(target: "kiln_server::request", %peer, %method, %path, %route, status, ms, "request");
    }
    r
}
