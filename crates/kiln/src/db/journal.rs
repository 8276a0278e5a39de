//! The journal of carried diffs: a fully durable commit's small diff travels in the head record's
//! append; a diff a power cut lost or damaged is put back from that copy, and the copies are made
//! durable in place before a snapshot drops them.

use super::*;

impl Db {
    /// Runs `read` of file `name`; if it fails and the head record holds the file's bytes (a
    /// fully durable commit's diff, written unsynced: a power cut can lose or tear it), puts
    /// them back and runs `read` again.
    pub(super) fn restoring<T>(&self, name: &FileName, read: impl Fn() -> Result<T>) -> Result<T> {
        match read() {
            Ok(v) => Ok(v),
            Err(e) => match self.restore_file(name, false) {
                Ok(true) => read(),
                _ => Err(e),
            },
        }
    }

    /// Makes the files `log` carries that `head` still names durable where they are, before a
    /// head record without the copies replaces `log`: each is checked whole first (a power
    /// cut may have left it lost or holding other bytes) and put back from its copy if it is
    /// not its name's. Called holding the writer lock, so `HEAD` is `log`.
    pub(super) fn secure_carried(&self, log: &Log, head: &Head) -> Result<()> {
        for name in &log.files {
            if !head.files.iter().any(|f| f.name == *name) {
                continue;
            }
            self.ensure_whole(name)?;
            self.sync_file(name)?;
        }
        Ok(())
    }

    /// Makes a file stored unsynced durable (its bytes and its name).
    pub(super) fn sync_file(&self, name: &FileName) -> Result<()> {
        self.store
            .storage
            .sync_file(name)
            .map_err(|e| self.file_err(name, e))
    }

    /// Checks carried file `name` whole and puts it back from the head record's copy if it is
    /// not its name's (then true); an error if it stays damaged.
    pub(super) fn ensure_whole(&self, name: &FileName) -> Result<bool> {
        if self.check_whole(name).is_ok() {
            return Ok(false);
        }
        if self.restore_file(name, true)? {
            return Ok(true);
        }
        self.check_whole(name).map(|()| false) // (the error)
    }

    /// Whether the head record `st` was read from ends in an unfinished append (see
    /// [`Log::torn`]). What a reader finds past the last record may also be a commit in
    /// flight, so it is confirmed under the writer lock.
    pub(super) fn torn_append(&self, st: &State) -> Result<bool> {
        if !st.log.torn() {
            return Ok(false);
        }
        if self.store.opts.read_only {
            // No lock to confirm it under: read again; a commit in flight shows as a moved
            // counter, an unfinished append as the same bytes.
            return Ok(self.read_head()?.0 .1.torn());
        }
        self.with_lock(|db, _| Ok((db.read_head()?.0 .1.torn(), Vec::new())))
    }

    /// Reads file `name` whole and checks its bytes hash to its name.
    pub(super) fn check_whole(&self, name: &FileName) -> Result<()> {
        let b = self
            .store
            .storage
            .read(name)
            .map_err(|e| self.file_err(name, e))?;
        match FileName::of(&b) == *name {
            true => Ok(()),
            false => Err(Error::corrupt(format!("file {name}"), car::NOT_ITS_NAME)),
        }
    }

    /// Puts file `name` back from the copy the head record holds, if it holds one. Unless
    /// `known`, only a file this handle's state says is carried is looked for (a failed read
    /// of any other file, as of one compaction removed, costs no read of `HEAD`).
    pub(super) fn restore_file(&self, name: &FileName, known: bool) -> Result<bool> {
        if !known && !self.state().log.files.contains(name) {
            return Ok(false);
        }
        // (Garbage collection empties `files/.tmp`, where the file is rebuilt.)
        let _gc = self.store.gc_shared()?;
        let hp = self.dir.join("HEAD");
        let found = self.lock.read_head(
            &hp,
            |b| Ok::<_, Error>(crate::format::head::embedded_file(b, &self.key, name)),
            |p, e| Error::io(p, e),
        )?;
        let Some((Some(bytes), _)) = found else {
            return Ok(false);
        };
        self.store
            .storage
            .restore(name, &bytes)
            .map_err(|e| self.file_err(name, e))?;
        let mut r = self.repaired.lock().unwrap_or_else(|p| p.into_inner());
        if !r.contains(name) {
            r.push(*name);
        }
        Ok(true)
    }
}
