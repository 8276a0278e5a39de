//! Several requests in flight on a remote's own current-thread runtime (the S3 and the server
//! remotes): a sliding window of [`WINDOW`] requests, results handed back as they complete.

use crate::WINDOW;
use std::future::Future;
use std::io;

/// Runs `n` requests on `rt` with at most [`WINDOW`] in flight: `start(i)` makes request `i`
/// (`None`: none for `i`), `done(i, result)` takes its result as it completes (in any order).
/// The first error from either stops the rest (requests in flight are dropped). `remote` names
/// the remote in errors.
pub(crate) fn windowed<T, F>(
    rt: &tokio::runtime::Runtime,
    remote: &str,
    n: usize,
    mut start: impl FnMut(usize) -> io::Result<Option<F>>,
    mut done: impl FnMut(usize, T) -> io::Result<()>,
) -> io::Result<()>
where
    F: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    rt.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        let mut next = 0;
        loop {
            while set.len() < WINDOW && next < n {
                if let Some(request) = start(next)? {
                    let i = next;
                    set.spawn(async move { (i, request.await) });
                }
                next += 1;
            }
            match set.join_next().await {
                None => return Ok(()),
                Some(Ok((i, r))) => done(i, r)?,
                Some(Err(e)) => {
                    return Err(io::Error::other(format!("{remote}: a request failed: {e}")))
                }
            }
        }
    })
}
