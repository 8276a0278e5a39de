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
pub mod auth;
mod conn;
mod live;
pub mod log;
mod metrics;

pub use api::router;
pub use auth::{SharedTokens, Tokens};
pub use log::LogFormat;

use kiln_sync::Remote;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// How a server behaves.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// The largest request body taken (a file or a head record), in bytes; larger ones get
    /// 413. Bodies are held whole in memory while checked and stored.
    pub max_body: usize,
    /// The tokens taken (docs/server.md "Tokens"); `None`: none needed, anyone who reaches
    /// the server may read and write every database.
    pub tokens: Option<SharedTokens>,
    /// Connections served at once; more wait to be accepted (memory grows with connections,
    /// not with what is stored).
    pub max_connections: usize,
    /// The longest a client may take to send a request's headers, or to take any of a
    /// response it is sent (a write that waits longer closes the connection).
    pub header_timeout: Duration,
    /// The longest a request may take, its body's upload included (408 after).
    pub request_timeout: Duration,
    /// The longest a stopping server waits for the requests under way.
    pub drain_timeout: Duration,
    /// How often the watched databases' head records are listed while clients watch (to tell
    /// them of changes written through other servers on the same storage): one listing per
    /// watched database each time, 8 at once.
    pub poll: Duration,
    /// Serve HTTPS with this configuration ([`tls_config`]); `None`: plain HTTP.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            max_body: 1 << 30,
            tokens: None,
            max_connections: 512,
            header_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(300),
            drain_timeout: Duration::from_secs(30),
            poll: Duration::from_secs(2),
            tls: None,
        }
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
    let limits = conn::Limits {
        max_connections: opts.max_connections,
        header_timeout: opts.header_timeout,
        drain_timeout: opts.drain_timeout,
        tls: opts.tls.clone(),
    };
    let (app, live) = api::router_and_live(storage, opts);
    let shutdown = async move {
        shutdown.await;
        // Subscriptions never end by themselves: ended, so the stop does not wait on them.
        live.close();
    };
    conn::serve_connections(listener, app, limits, shutdown).await
}

/// A TLS configuration (rustls with ring: TLS 1.2 and 1.3) from a PEM certificate chain and
/// its PEM private key (PKCS#8, PKCS#1 or SEC1), for [`ServerOptions::tls`].
pub fn tls_config(cert: &Path, key: &Path) -> io::Result<Arc<rustls::ServerConfig>> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |f: &Path, e: &dyn std::fmt::Display| {
        io::Error::new(io::ErrorKind::InvalidInput, format!("{}: {e}", f.display()))
    };
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(|e| bad(cert, &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(cert, &e))?;
    if certs.is_empty() {
        return Err(bad(cert, &"no certificate in it"));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(key, &e))?;
    // ring rather than aws-lc keeps the build pure and quick; its provider has no post-quantum
    // key exchange, which rustls marks by deprecating it.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| io::Error::other(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| bad(key, &e))?;
    Ok(Arc::new(config))
}

/// Checks a storage before serving it: one that keeps a head record per database must pass
/// [`kiln_sync::probe`] (honest compare-and-swap), since clients of the server do not probe.
pub fn check_storage(storage: &dyn Remote) -> io::Result<()> {
    if storage.per_replica_heads() {
        return Ok(());
    }
    kiln_sync::probe(storage).map_err(|e| {
        io::Error::other(format!(
            "the storage {} cannot be served: {e}",
            storage.location()
        ))
    })
}

/// A server running on a thread of its own ([`spawn`]); stopped (gracefully) when dropped.
#[derive(Debug)]
pub struct Running {
    /// The address it listens on.
    pub addr: SocketAddr,
    tls: bool,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<io::Result<()>>>,
}

impl Running {
    /// Its URL (`http://ADDR`, or `https://ADDR` when it serves TLS).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
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

/// Starts a server on `addr` (`127.0.0.1:0` picks a free port) over `storage` (checked first:
/// [`check_storage`]), on a thread with a runtime of its own; returns once it listens.
pub fn spawn(addr: &str, storage: Arc<dyn Remote>, opts: ServerOptions) -> io::Result<Running> {
    check_storage(&*storage)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let listener = rt.block_on(tokio::net::TcpListener::bind(addr))?;
    let local = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let tls = opts.tls.is_some();
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
        tls,
        stop: Some(stop),
        thread: Some(thread),
    })
}

/// Serves the API over `storage` on `addr` until SIGTERM or SIGINT (Ctrl-C), then finishes the
/// requests under way and returns (what `kiln serve` runs). With `tokens_file`, takes the
/// tokens it lists and reads it again on SIGHUP (a file that does not read leaves the tokens
/// as they were, and says so on stderr). `ready` is told the address once the server listens.
pub fn run_until_signal(
    addr: &str,
    storage: Arc<dyn Remote>,
    mut opts: ServerOptions,
    tokens_file: Option<&Path>,
    ready: impl FnOnce(SocketAddr),
) -> io::Result<()> {
    if let Some(f) = tokens_file {
        opts.tokens = Some(Tokens::load(f)?.shared());
    }
    check_storage(&*storage)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let kept = storage.clone();
    let r = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        if let (Some(f), Some(shared)) = (tokens_file, opts.tokens.clone()) {
            reload_on_hangup(f.to_owned(), shared)?;
        }
        let at = listener.local_addr()?;
        tracing::info!(
            addr = %at,
            storage = %storage.location(),
            tls = opts.tls.is_some(),
            tokens = opts.tokens.is_some(),
            "serving"
        );
        if opts.tokens.is_none() {
            tracing::warn!(
                "no tokens: anyone who reaches the server may read and write every database"
            );
        }
        ready(at);
        let stop = async {
            stop_signal().await;
            tracing::info!("stopping: the requests under way finish first");
        };
        let r = serve(listener, storage, opts, stop).await;
        tracing::info!("stopped");
        r
    });
    // (Outside the runtime: a storage may own a runtime of its own.)
    drop(rt);
    drop(kept);
    r
}

/// Reads tokens file `f` again into `shared` on every SIGHUP.
fn reload_on_hangup(f: PathBuf, shared: SharedTokens) -> io::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = signal(SignalKind::hangup())?;
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                match Tokens::load(&f) {
                    Ok(t) => {
                        let n = t.len();
                        *shared.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(t);
                        tracing::info!(file = %f.display(), tokens = n, "tokens read again");
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "tokens not read again; they stay as they were")
                    }
                }
            }
        });
    }
    #[cfg(not(unix))]
    let _ = (f, shared);
    Ok(())
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
