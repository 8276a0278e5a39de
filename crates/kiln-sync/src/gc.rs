//! A remote's garbage collection (`kiln gc --remote URL`): removes the files no head record on
//! the remote names, once they are older than a grace period.
//!
//! Needs no key: a remote head record names its files in the clear (docs/format.md "Remote
//! head record"). Safe beside syncs because:
//! - **uploaders**: a sync uploads files before the record that names them, so a file not yet
//!   named is young; the grace period (default a day) spares it. A push that names a file
//!   already on the remote without uploading it makes it young again (the folder remote
//!   touches it; see [`crate::Remote::put_file`]), and gc reads the records again just before
//!   it removes anything, keeping what a record written meanwhile names;
//! - **readers**: a sync that read a record whose files a newer record no longer names, and
//!   finds one gone, reads the record again and starts over with the new one.
//!
//! On a remote that cannot make a file young again (S3: [`crate::Remote::refresh_makes_young`])
//! a push that names an old, no-longer-named file without uploading it may have it removed by
//! a gc under way; once its record is written, such a push checks those files and uploads
//! again the ones gone (a reader in between finds one missing, reads again, and may fail that
//! sync: the next one succeeds). A record that is not a kiln record stops the collection
//! (nothing is removed), but for a probe's (`kiln-probe-…`, a client's first sync under way).

use crate::{FileName, HeadRead, Kind, Remote};
use std::collections::{HashMap, HashSet};
use std::io;

/// What a remote gc did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RemoteGcReport {
    /// Head records read (databases on the remote).
    pub heads: usize,
    /// Files the records name (diff files and file-sets).
    pub live: usize,
    /// Files removed.
    pub removed: usize,
    /// Files no record names kept for their youth (inside the grace period).
    pub young: usize,
}

/// Whether head record `name` is one a [`crate::probe`] writes (`kiln-probe-` and 16 hex).
fn is_probe(name: &str) -> bool {
    name.strip_prefix(crate::probe::PROBE_PREFIX)
        .is_some_and(|h| h.len() == 16 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Files by kind and name.
type Names = HashSet<(Kind, FileName)>;

/// The names every head record on the remote names, with the version each was read at.
fn live_names(remote: &dyn Remote) -> io::Result<(Names, HashMap<String, crate::Etag>)> {
    let mut live = HashSet::new();
    let mut seen = HashMap::new();
    for (db, _) in remote.list_heads()? {
        let HeadRead::Found { bytes, etag } = remote.read_head(&db, None)? else {
            continue; // removed meanwhile
        };
        let Some((files, sets)) = kiln::record_names(&bytes) else {
            if is_probe(&db) {
                continue; // a probe under way (a client's first sync): it names no files
            }
            return Err(io::Error::other(format!(
                "the remote's head record of '{db}' is not a kiln record: not collecting \
                 (nothing removed)"
            )));
        };
        live.extend(files.into_iter().map(|n| (Kind::Diff, n)));
        live.extend(sets.into_iter().map(|n| (Kind::FileSet, n)));
        seen.insert(db, etag);
    }
    Ok((live, seen))
}

/// Removes the files no head record on `remote` names that are older than `grace` (see the
/// module doc).
pub fn gc_remote(remote: &dyn Remote, grace: std::time::Duration) -> io::Result<RemoteGcReport> {
    let (mut live, seen) = live_names(remote)?;
    let mut candidates: Vec<(Kind, FileName)> = Vec::new();
    let mut r = RemoteGcReport {
        heads: seen.len(),
        ..RemoteGcReport::default()
    };
    for kind in [Kind::Diff, Kind::FileSet] {
        for (name, age) in remote.list_files(kind)? {
            if live.contains(&(kind, name)) {
                continue;
            }
            if age < grace.as_secs() {
                r.young += 1;
            } else {
                candidates.push((kind, name));
            }
        }
    }
    if !candidates.is_empty() {
        // Records written since: what they name stays.
        let (again, _) = live_names(remote)?;
        live.extend(again);
        for (kind, name) in candidates {
            if !live.contains(&(kind, name)) {
                remote.delete_file(kind, &name)?;
                r.removed += 1;
            }
        }
    }
    r.live = live.len();
    Ok(r)
}
