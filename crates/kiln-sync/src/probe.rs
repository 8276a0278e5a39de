//! Is a remote's compare-and-swap honest? Some S3-compatible stores ignore conditional writes,
//! and a sync built on a compare-and-swap that silently succeeds loses writes. [`probe`] checks
//! before a remote is used: racing create-only writes must yield exactly one winner, a write on
//! a version read before another write must be refused, and an unchanged record must read as
//! not modified.

use crate::{Conflict, Etag, HeadRead, Remote};

/// Why a remote failed the probe.
#[derive(Debug)]
pub enum ProbeError {
    /// The remote could not be reached or refused a request.
    Io(std::io::Error),
    /// The remote answered, but its compare-and-swap does not hold: what went wrong.
    NotHonest(String),
}

impl std::fmt::Display for ProbeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProbeError::Io(e) => write!(f, "the remote could not be probed: {e}"),
            ProbeError::NotHonest(why) => write!(
                f,
                "the remote's conditional writes cannot be trusted ({why}): a sync through it \
                 could lose writes, so it is refused"
            ),
        }
    }
}

impl std::error::Error for ProbeError {}

impl From<std::io::Error> for ProbeError {
    fn from(e: std::io::Error) -> Self {
        ProbeError::Io(e)
    }
}

/// Racing writers of the probe.
const RACERS: usize = 8;

/// Requests a probe that passes makes (the racers, 5 checks, a read and a delete to clean up).
pub(crate) const REQUESTS: usize = RACERS + 7;

/// How the head records a probe writes are named (then 16 hex digits): never a database's.
pub const PROBE_PREFIX: &str = "kiln-probe-";

/// Probes `remote`'s compare-and-swap on a head record of its own (named `kiln-probe-…`,
/// removed after): see the module doc. Leaves nothing behind when it passes.
pub fn probe(remote: &dyn Remote) -> Result<(), ProbeError> {
    let mut r = [0u8; 8];
    getrandom::getrandom(&mut r).map_err(std::io::Error::other)?;
    let db = format!("{PROBE_PREFIX}{:016x}", u64::from_le_bytes(r));
    let result = run(remote, &db);
    // Cleaned up whatever came of it (best effort when the remote misbehaved).
    if let Ok(HeadRead::Found { etag, .. }) = remote.read_head(&db, None) {
        let _ = remote.delete_head(&db, &etag);
    }
    result
}

/// The probe's steps on head record `db` (see [`probe`]).
fn run(remote: &dyn Remote, db: &str) -> Result<(), ProbeError> {
    let db = db.to_owned();
    let bad = |why: &str| ProbeError::NotHonest(why.to_owned());
    // Racing create-only writes: exactly one wins.
    let results: Vec<std::io::Result<Result<Etag, Conflict>>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..RACERS)
            .map(|i| {
                let db = &db;
                s.spawn(move || remote.write_head(db, None, format!("racer {i}").as_bytes()))
            })
            .collect();
        hs.into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(std::io::Error::other("a racer panicked")))
            })
            .collect()
    });
    let mut winners = Vec::new();
    for r in results {
        if let Ok(e) = r? {
            winners.push(e);
        }
    }
    let first = match winners.len() {
        1 => winners.remove(0),
        0 => return Err(bad("no create-only write won")),
        n => {
            return Err(ProbeError::NotHonest(format!(
                "{n} of {RACERS} racing create-only writes won"
            )))
        }
    };
    {
        // A write on the version read, then one more on that same (now stale) version.
        let second = remote
            .write_head(&db, Some(&first), b"second")?
            .map_err(|_| bad("a write on the current version was refused"))?;
        if second == first {
            return Err(bad("a write left the version unchanged"));
        }
        if remote.write_head(&db, Some(&first), b"stale")?.is_ok() {
            return Err(bad("a write on a stale version was accepted"));
        }
        if remote.write_head(&db, None, b"again")?.is_ok() {
            return Err(bad("a create-only write over a record was accepted"));
        }
        match remote.read_head(&db, Some(&second))? {
            HeadRead::NotModified => {}
            HeadRead::Found { bytes, .. } if bytes == b"second" => {
                return Err(bad("an unchanged record did not read as not modified"))
            }
            _ => return Err(bad("the record read back is not the one written")),
        }
        match remote.read_head(&db, None)? {
            HeadRead::Found { bytes, etag } if bytes == b"second" && etag == second => Ok(()),
            _ => Err(bad("the record read back is not the one written")),
        }
    }
}
