//! The kiln sync server: kiln's remotes over HTTP. Clients sync through it as through a folder
//! or a bucket (`kiln_sync::HttpRemote`); it keeps the files and head records in its own
//! storage, any [`kiln_sync::Remote`] (a folder, an S3-compatible bucket), and holds no state
//! of its own, so several servers can serve one bucket. It stores and forwards ciphertext
//! only: it never holds a key, and checks every uploaded file against its name (the hash of
//! its bytes) before keeping it.
//!
//! The API (version 1) is in docs/server.md; [`router`] is it, [`serve`] serves it on a
//! listener until told to stop, and [`spawn`] runs a server on a thread of its own (for tests
//! and programs that embed one).

#![deny(missing_docs)]
#![deny(clippy::unwrap_used, clippy::expect_used)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

mod api;

pub use api::router;

use kiln_sync::Remote;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

/// How a server behaves.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// The largest request body taken (a file or a head record), in bytes; larger ones get
    /// 413. Bodies are held whole in memory while checked and stored.
    pub max_body: usize,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions { max_body: 1 << 30 }
    }
}

/// Serves the API over `storage` on `listener` until `shutdown` completes; requests under way
/// then finish first.
pub async fn serve(
    listener: tokio::net::TcpListener,
    storage: Arc<dyn Remote>,
    opts: ServerOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    axum::serve(listener, router(storage, opts))
        .with_graceful_shutdown(shutdown)
        .await
}

/// A server running on a thread of its own ([`spawn`]); stopped (gracefully) when dropped.
#[derive(Debug)]
pub struct Running {
    /// The address it listens on.
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<io::Result<()>>>,
}

impl Running {
    /// Its URL (`http://ADDR`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops it: requests under way finish first.
    pub fn stop(mut self) -> io::Result<()> {
        self.halt()
    }

    fn halt(&mut self) -> io::Result<()> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(io::Error::other("the server's thread panicked")),
            None => Ok(()),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.halt();
    }
}

/// Starts a server on `addr` (`127.0.0.1:0` picks a free port) over `storage`, on a thread
/// with a runtime of its own; returns once it listens.
pub fn spawn(addr: &str, storage: Arc<dyn Remote>, opts: ServerOptions) -> io::Result<Running> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let listener = rt.block_on(tokio::net::TcpListener::bind(addr))?;
    let local = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name(format!("kiln-server {local}"))
        .spawn(move || {
            // (The storage is let go of here, outside the runtime: one may own a runtime of
            // its own, which cannot be dropped inside another's.)
            let kept = storage.clone();
            let r = rt.block_on(serve(listener, storage, opts, async move {
                let _ = stopped.await;
            }));
            drop(rt);
            drop(kept);
            r
        })?;
    Ok(Running {
        addr: local,
        stop: Some(stop),
        thread: Some(thread),
    })
}

/// Serves the API over `storage` on `addr` until SIGTERM or SIGINT (Ctrl-C), then finishes the
/// requests under way and returns (what `kiln serve` runs). `ready` is told the address once
/// the server listens.
pub fn run_until_signal(
    addr: &str,
    storage: Arc<dyn Remote>,
    opts: ServerOptions,
    ready: impl FnOnce(SocketAddr),
) -> io::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let kept = storage.clone();
    let r = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        ready(listener.local_addr()?);
        serve(listener, storage, opts, stop_signal()).await
    });
    // (Outside the runtime: a storage may own a runtime of its own.)
    drop(rt);
    drop(kept);
    r
}

/// Completes on SIGTERM or SIGINT.
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => std::future::pending::<()>().await,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
