//! The head record's two files, written in place.

use super::*;

/// The head record's file: appended to in place, or replaced whole by `replace_via_spare`,
/// keeping both files open between writes so a write costs a `pwrite` (and a rename when
/// replacing), not opens and closes. The caller says whether the cached files can be trusted:
/// only if no other process wrote since this handle's last write (kiln checks its commit
/// counter under the writer lock).
#[derive(Debug)]
pub struct HeadFile {
    path: PathBuf,
    spare: PathBuf,
    /// The file at `path` and its length (`u64::MAX`: unknown), after this handle's last write.
    cur: Option<(File, u64)>,
    /// The same for the file at `spare`.
    next: Option<(File, u64)>,
}

impl HeadFile {
    pub fn new(path: PathBuf, spare: PathBuf) -> HeadFile {
        HeadFile {
            path,
            spare,
            cur: None,
            next: None,
        }
    }

    /// Forgets the cached files (after an error, or when another writer may have swapped).
    pub fn forget(&mut self) {
        self.cur = None;
        self.next = None;
    }

    /// Appends `bytes` at `at` to the file at `path` whose length is `len`; anything beyond
    /// `at` (a torn earlier append) is cut off first, so the file only ever holds whole
    /// records and at most a prefix of the one being written. (fdatasync: the name is
    /// unchanged, no directory sync is needed.)
    pub fn append(
        &mut self,
        bytes: &[u8],
        at: u64,
        len: u64,
        sync: bool,
        trusted: bool,
    ) -> io::Result<()> {
        if !trusted {
            self.forget();
        }
        let r = (|| {
            let f = match self.cur.take() {
                Some((f, _)) => f,
                None => OpenOptions::new().write(true).open(&self.path)?,
            };
            let end = at + bytes.len() as u64;
            if len > at {
                f.set_len(at)?;
            }
            f.write_all_at(bytes, at)?;
            if sync {
                f.sync_data()?;
            }
            self.cur = Some((f, end));
            Ok(())
        })();
        if r.is_err() {
            self.forget();
        }
        r
    }

    /// Empties the spare file (the previous head record, which may carry diffs that must
    /// not outlive a purge), durably with `sync`. Absent is not an error.
    pub fn clear_spare(&mut self, sync: bool) -> io::Result<()> {
        let f = match self.next.take() {
            Some((f, _)) => f,
            None => match OpenOptions::new().write(true).open(&self.spare) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(e),
            },
        };
        f.set_len(0)?;
        if sync {
            f.sync_all()?;
        }
        self.next = Some((f, 0));
        Ok(())
    }

    /// Replaces the file at `path` with `bytes` (see [`replace_via_spare`]).
    pub fn replace(&mut self, bytes: &[u8], sync: bool, trusted: bool) -> io::Result<()> {
        if !trusted {
            self.forget();
        }
        let r = self.replace_inner(bytes, sync);
        if r.is_err() {
            self.forget();
        }
        r
    }

    fn replace_inner(&mut self, bytes: &[u8], sync: bool) -> io::Result<()> {
        let len = bytes.len() as u64;
        let (spare, spare_len) = match self.next.take() {
            Some(o) => o,
            None => {
                let f = OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(&self.spare)?;
                (f, u64::MAX)
            }
        };
        let cur = match self.cur.take() {
            Some(o) => Some(o),
            None => match OpenOptions::new().write(true).open(&self.path) {
                Ok(f) => Some((f, u64::MAX)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                Err(e) => return Err(e),
            },
        };
        spare.write_all_at(bytes, 0)?;
        if spare_len > len {
            spare.set_len(len)?;
        }
        if sync {
            spare.sync_all()?;
        }
        let dir = self.path.parent().unwrap_or(Path::new("."));
        if cur.is_none() || !exchange(&self.path, &self.spare)? {
            // No file yet, or no exchange here: a plain rename (a new spare each time).
            fs::rename(&self.spare, &self.path)?;
            if sync {
                sync_dir(dir)?;
            }
            self.cur = Some((spare, len));
            return Ok(());
        }
        if sync {
            sync_dir(dir)?;
        }
        self.cur = Some((spare, len));
        self.next = cur;
        Ok(())
    }
}
