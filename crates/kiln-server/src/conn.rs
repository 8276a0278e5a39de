//! Connections: accepted up to a bound, each served over HTTP/1.1 with a deadline for its
//! request headers, and let go of gracefully when the server stops (docs/server.md "Limits").

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Semaphore};

/// How connections are taken.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Connections served at once; more wait to be accepted.
    pub max_connections: usize,
    /// The longest a client may take to send a request's headers (slow clients are cut off).
    pub header_timeout: Duration,
    /// The longest the server waits at shutdown for requests under way.
    pub drain_timeout: Duration,
    /// Serve HTTPS with this configuration (the TLS handshake within `header_timeout`).
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// Serves `app` on `listener` until `shutdown` completes, then stops accepting, lets the
/// requests under way finish (within `limits.drain_timeout`) and returns.
pub async fn serve_connections(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    // (Bounded so that waiting for all slots back, `acquire_many(u32)`, counts them all.)
    let max = limits
        .max_connections
        .clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
    let slots = Arc::new(Semaphore::new(max));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            a = listener.accept() => match a {
                Ok(a) => a,
                // Out of descriptors, a connection reset before it was taken: go on.
                Err(e) => {
                    tracing::debug!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let stop = stop_rx.clone();
        let (tls, header_timeout) = (limits.tls.clone(), limits.header_timeout);
        tokio::spawn(async move {
            match tls {
                None => serve_one(stream, peer, app, header_timeout, stop).await,
                Some(config) => {
                    let acceptor = tokio_rustls::TlsAcceptor::from(config);
                    let shake = tokio::time::timeout(header_timeout, acceptor.accept(stream));
                    // A failed or slow handshake: the connection is dropped.
                    if let Ok(Ok(tls)) = shake.await {
                        serve_one(tls, peer, app, header_timeout, stop).await;
                    }
                }
            }
            drop(permit);
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    // Every connection gives its slot back when done: all slots back, all done.
    let _ = tokio::time::timeout(limits.drain_timeout, slots.acquire_many(max as u32)).await;
    Ok(())
}

/// Serves one connection's requests until it closes, or until `stop` says so (then the
/// request under way finishes first).
async fn serve_one<IO>(
    io: IO,
    peer: std::net::SocketAddr,
    app: Router,
    header_timeout: Duration,
    mut stop: watch::Receiver<bool>,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut b = hyper::server::conn::http1::Builder::new();
    b.timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    // A client must read as promptly as it must send its headers.
    let io = Stalls::new(io, header_timeout);
    // Each request learns the connection's peer (for the request log).
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(crate::log::Peer(peer));
        tower_service::Service::call(&mut app.clone(), req)
    });
    let conn = b.serve_connection(TokioIo::new(io), svc);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = stop.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// A connection whose writes fail once one has waited `limit` without progress (a client that
/// stops reading its response would otherwise hold its connection's slot for ever).
struct Stalls<IO> {
    io: IO,
    limit: Duration,
    since: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl<IO> Stalls<IO> {
    fn new(io: IO, limit: Duration) -> Stalls<IO> {
        Stalls {
            io,
            limit,
            since: None,
        }
    }

    /// After a write that could not progress: an error once it has waited too long.
    fn stalled(&mut self, cx: &mut std::task::Context<'_>) -> Option<io::Error> {
        let limit = self.limit;
        let sleep = self
            .since
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        sleep.as_mut().poll(cx).is_ready().then(|| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                "the client read nothing for too long",
            )
        })
    }
}

impl<IO: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Stalls<IO> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Stalls<IO> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.io).poll_write(cx, buf);
        self.progress(r, cx)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        let r = std::pin::Pin::new(&mut self.io).poll_flush(cx);
        self.progress(r, cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        let r = std::pin::Pin::new(&mut self.io).poll_shutdown(cx);
        self.progress(r, cx)
    }
}

impl<IO> Stalls<IO> {
    /// Resets the clock on progress; on a wait, an error once it has lasted too long.
    fn progress<T>(
        &mut self,
        r: std::task::Poll<io::Result<T>>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<T>> {
        match r {
            std::task::Poll::Pending => match self.stalled(cx) {
                Some(e) => std::task::Poll::Ready(Err(e)),
                None => std::task::Poll::Pending,
            },
            ready => {
                self.since = None;
                ready
            }
        }
    }
}
