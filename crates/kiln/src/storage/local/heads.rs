//! [`Heads`] over a local store's `dbs/` folder: `dbs/<name>/HEAD` is the record, the commit
//! counter in `dbs/<name>/LOCK` its version, and the `flock` on `LOCK` (the one kiln's own
//! writers hold for a commit) makes a write compare-and-swap. The database layer writes its
//! head records through the richer path of [`super::HeadFile`] (appending deltas in place); this
//! is the plain whole-record view other backends offer too, for sync and for tests, and the
//! two agree on the version.

use super::fs_util::{rename_noreplace, replace_via_spare, sync_dir};
use crate::storage::{Conflict, Heads, Version};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

/// The counter value that marks a dropped database (see the database layer).
const DROPPED: u64 = u64::MAX;

/// The head records of the databases under a `dbs/` folder.
#[derive(Debug, Clone)]
pub struct LocalHeads {
    dbs: PathBuf,
}

impl LocalHeads {
    /// The head records under `dbs` (a store's `ROOT/dbs`).
    pub fn new(dbs: impl Into<PathBuf>) -> LocalHeads {
        LocalHeads { dbs: dbs.into() }
    }

    fn lock_file(&self, db: &str) -> io::Result<Option<File>> {
        check(db)?;
        match OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.dbs.join(db).join("LOCK"))
        {
            Ok(f) => Ok(Some(f)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Makes `dbs/<db>/` whole in a hidden folder, then renames it into place (refused when
    /// the name is taken).
    fn create(
        &self,
        db: &str,
        bytes: &[u8],
        durable: bool,
    ) -> io::Result<Result<Version, Conflict>> {
        let mut r = [0u8; 8];
        getrandom::getrandom(&mut r).map_err(io::Error::other)?;
        let tmp = self.dbs.join(format!(".new-{}", crate::util::hex::hex(&r)));
        fs::create_dir_all(&tmp)?;
        let made = (|| {
            fs::write(tmp.join("HEAD"), bytes)?;
            let lock = File::create(tmp.join("LOCK"))?;
            lock.write_all_at(&counter_bytes([1, 1]), 0)?;
            if durable {
                File::open(tmp.join("HEAD"))?.sync_all()?;
                lock.sync_all()?;
                sync_dir(&tmp)?;
            }
            rename_noreplace(&tmp, &self.dbs.join(db))
        })();
        match made {
            Ok(()) => {
                if durable {
                    sync_dir(&self.dbs)?;
                }
                Ok(Ok(Version(1)))
            }
            Err(e) => {
                let _ = fs::remove_dir_all(&tmp);
                if e.kind() == io::ErrorKind::AlreadyExists || self.dbs.join(db).exists() {
                    Ok(Err(Conflict {
                        now: self.read(db)?.map(|(_, v)| v),
                    }))
                } else {
                    Err(e)
                }
            }
        }
    }
}

fn check(db: &str) -> io::Result<()> {
    if db.is_empty() || db.starts_with('.') || db.contains('/') || db.contains('\0') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{db:?} is not a database name"),
        ));
    }
    Ok(())
}

fn counter_bytes(c: [u64; 2]) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&c[0].to_le_bytes());
    b[8..].copy_from_slice(&c[1].to_le_bytes());
    b
}

/// The commit counter `[begin, end]` of a LOCK file (a short file reads as `[0, 0]`).
pub(crate) fn read_counter(f: &File) -> io::Result<[u64; 2]> {
    let mut b = [0u8; 16];
    let mut n = 0;
    while n < b.len() {
        match f.read_at(&mut b[n..], n as u64)? {
            0 => break,
            k => n += k,
        }
    }
    if n < 16 {
        return Ok([0, 0]);
    }
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[..8]);
    let begin = u64::from_le_bytes(x);
    x.copy_from_slice(&b[8..]);
    Ok([begin, u64::from_le_bytes(x)])
}

impl Heads for LocalHeads {
    fn list(&self) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        for e in fs::read_dir(&self.dbs)? {
            let e = e?;
            let Some(n) = e.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if !n.starts_with('.') && e.file_type()?.is_dir() && e.path().join("HEAD").exists() {
                out.push(n);
            }
        }
        out.sort();
        Ok(out)
    }

    fn read(&self, db: &str) -> io::Result<Option<(Vec<u8>, Version)>> {
        let Some(lock) = self.lock_file(db)? else {
            return Ok(None);
        };
        let head = self.dbs.join(db).join("HEAD");
        // Unlocked first, as kiln's readers read: a record is current for the counter read
        // before and after it, when no commit was in flight.
        for _ in 0..20 {
            let c1 = read_counter(&lock)?;
            let bytes = match fs::read(&head) {
                Ok(b) => b,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e),
            };
            if read_counter(&lock)? == c1 && c1[0] == c1[1] {
                return Ok((c1[1] != DROPPED).then_some((bytes, Version(c1[1]))));
            }
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
        // Writers keep coming: read under their lock.
        lock.lock()?;
        let r = (|| {
            let c = read_counter(&lock)?;
            let bytes = fs::read(&head)?;
            Ok((c[1] != DROPPED).then_some((bytes, Version(c[1]))))
        })();
        let _ = lock.unlock();
        r
    }

    fn write(
        &self,
        db: &str,
        expected: Option<Version>,
        bytes: &[u8],
        durable: bool,
    ) -> io::Result<Result<Version, Conflict>> {
        let Some(expected) = expected else {
            return self.create(db, bytes, durable);
        };
        let Some(lock) = self.lock_file(db)? else {
            return Ok(Err(Conflict { now: None }));
        };
        lock.lock()?;
        let r = (|| {
            let c = read_counter(&lock)?;
            if c[0] != c[1] || c[1] != expected.0 || c[1] == DROPPED {
                let now = (c[1] != DROPPED).then_some(Version(c[1]));
                return Ok(Err(Conflict { now }));
            }
            let next = expected.0 + 1;
            lock.write_all_at(&counter_bytes([next, c[1]]), 0)?;
            let dir = self.dbs.join(db);
            replace_via_spare(&dir.join("HEAD"), &dir.join("HEAD.next"), bytes, durable)?;
            lock.write_all_at(&counter_bytes([next, next]), 0)?;
            Ok(Ok(Version(next)))
        })();
        let _ = lock.unlock();
        r
    }
}
