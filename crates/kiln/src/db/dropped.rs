//! Dropping a database: its commit point (the folder renamed under the writer lock) and the
//! taking back of a drop mark a kill left before it.

use super::*;

/// LOCK counter value marking a dropped database: handles still open on it stop writing (a new
/// database of the same name has a new LOCK file). A drop marks LOCK and renames the folder
/// away under the writer lock; the rename is the drop's commit point, so a marked LOCK in a
/// folder still in place is a drop that never happened (killed between the two steps) and
/// the next open takes the mark back ([`recover_unfinished_drop`]).
pub(super) const DROPPED: u64 = u64::MAX;

/// A LOCK marked dropped in a folder still in place: a drop killed between marking LOCK and
/// renaming the folder away (or a LOCK damaged to read as marked). The rename is a drop's
/// commit point, so the database was never dropped: under its writer lock (a drop in progress
/// holds it until the folder is gone), if this LOCK is still the one at `lp`, its counter
/// restarts at a fresh value, so no handle mistakes its cached head for current. Otherwise
/// the drop went through: no such database.
///
/// A read-only store (`read_only`) takes no lock and writes nothing: a folder in place is read
/// as the database it is (the mark stays for a writer to take back), a folder gone is no such
/// database.
pub(super) fn recover_unfinished_drop(
    lock: &DbLock,
    name: &str,
    timeout: std::time::Duration,
    read_only: bool,
) -> Result<()> {
    if read_only {
        let io = |e| Error::io(lock.path(), e);
        return match lock.in_place().map_err(io)? {
            true => Ok(()),
            false => Err(Error::NoSuchDatabase(name.into())),
        };
    }
    match lock.lock(timeout) {
        Ok(true) => {}
        Ok(false) => return Err(Error::Busy(name.into())),
        Err(e) => return Err(Error::io(lock.path(), e)),
    }
    let r = take_back_drop_mark(lock, name);
    lock.unlock();
    r
}

/// [`recover_unfinished_drop`] for a caller that holds the writer lock already.
pub(super) fn take_back_drop_mark(lock: &DbLock, name: &str) -> Result<()> {
    let io = |e| Error::io(lock.path(), e);
    if lock.counter().map_err(io)?[0] != DROPPED {
        return Ok(()); // taken back meanwhile
    }
    if !lock.in_place().map_err(io)? {
        return Err(Error::NoSuchDatabase(name.into()));
    }
    let mut r = [0u8; 8];
    getrandom::getrandom(&mut r).map_err(|e| io(std::io::Error::other(e)))?;
    let fresh = u64::from_le_bytes(r) >> 2;
    lock.set_counter([fresh, fresh]).map_err(io)
}

impl Database {
    /// Drops the database under its writer lock: marks LOCK dropped (open handles, in any
    /// process, stop writing and reading), then renames the folder to `gone` (the commit point:
    /// the name is free and listing no longer shows it) and, with `Durability::Full`, makes the
    /// rename durable. Returns the files the final head record names. If the rename fails the
    /// mark is taken back; if the process dies between the two, the next open takes it back.
    pub(crate) fn drop_to(&self, gone: &std::path::Path) -> Result<Vec<FileRef>> {
        // `with_lock` refuses an already-dropped database; the head record is left unchanged.
        self.inner.with_lock(|db, head| {
            let before = db.counter()?;
            db.set_counter([DROPPED, DROPPED])?;
            if let Err(e) = std::fs::rename(&db.dir, gone) {
                let _ = db.set_counter(before);
                return Err(Error::io(&db.dir, e));
            }
            if db.sync() {
                if let Some(dbs) = gone.parent() {
                    crate::storage::sync_dir(dbs).map_err(|e| Error::io(dbs, e))?;
                }
            }
            Ok((head.files.to_vec(), Vec::new()))
        })
    }
}
