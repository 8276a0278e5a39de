//! The store's cache of open database handles: `Store::open_db` of a database opened lately
//! hands back the same handle (its caches, its file descriptors) rather than opening it again.
//!
//! An open database holds three file descriptors (its `LOCK`, and `HEAD`/`HEAD.next` once it
//! has written) and its handle's caches of file indexes and tree nodes not yet written; the
//! block cache is the store's, shared. The cache keeps at most `Options::open_databases`
//! handles (the most recently opened), so a program opening many databases in turn holds at
//! most that many open besides the ones it keeps itself. It lives in the `Store` value, not in
//! what the handles share, so dropping every `Store` clone closes what it kept.

use crate::db::Database;
use std::sync::Mutex;

pub(crate) struct Handles {
    cap: usize,
    /// Most recently used last.
    open: Mutex<Vec<(String, Database)>>,
}

impl Handles {
    pub(crate) fn new(cap: usize) -> Handles {
        Handles {
            cap,
            open: Mutex::new(Vec::new()),
        }
    }

    /// The cached handle of `name`, taken out of the cache (the caller puts it back with
    /// [`Handles::keep`] once it has checked it is still good).
    pub(crate) fn take(&self, name: &str) -> Option<Database> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let i = open.iter().position(|(n, _)| n == name)?;
        Some(open.remove(i).1)
    }

    /// Keeps a clone of `db` as the most recently used; the least recently used beyond the
    /// cap is let go (closed, unless the program still holds it).
    pub(crate) fn keep(&self, db: &Database) {
        if self.cap == 0 {
            return;
        }
        let evicted = {
            let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
            open.retain(|(n, _)| n != db.name());
            open.push((db.name().to_owned(), db.clone()));
            let over = open.len().saturating_sub(self.cap);
            open.drain(..over).collect::<Vec<_>>()
        };
        // Dropped outside the lock: a last handle waits for its background compaction.
        drop(evicted);
    }

    /// Lets go of `name`'s handle (the database is being dropped).
    pub(crate) fn forget(&self, name: &str) {
        drop(self.take(name));
    }

    /// Every kept handle, let go of.
    pub(crate) fn drain(&self) -> Vec<Database> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.drain(..).map(|(_, db)| db).collect()
    }

    /// How many handles are kept.
    pub(crate) fn len(&self) -> usize {
        self.open.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}
