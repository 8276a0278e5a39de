//! A database's `LOCK` file: the writer lock (an exclusive `flock`, held from reading the head
//! record to replacing it) and the commit counter `[begin, end]` (16 bytes), and the reading
//! of a head record consistently with that counter.

use super::*;
use std::time::{Duration, Instant};

/// A database's `LOCK`, open.
#[derive(Debug)]
pub struct DbLock {
    file: File,
    path: PathBuf,
}

impl DbLock {
    /// Opens `dir/LOCK`, creating it when the folder has none; `NotFound` when the folder is
    /// gone.
    pub fn open(dir: &Path) -> io::Result<DbLock> {
        let path = dir.join("LOCK");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        Ok(DbLock { file, path })
    }

    /// Opens `dir/LOCK` for reading only (a read-only store: its counter is read, it is never
    /// locked or written); `NotFound` when there is none.
    pub fn open_read_only(dir: &Path) -> io::Result<DbLock> {
        let path = dir.join("LOCK");
        let file = OpenOptions::new().read(true).open(&path)?;
        Ok(DbLock { file, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The commit counter: `[begin, end]`, equal when no commit is in flight.
    pub fn counter(&self) -> io::Result<[u64; 2]> {
        read_counter(&self.file)
    }

    pub fn set_counter(&self, c: [u64; 2]) -> io::Result<()> {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&c[0].to_le_bytes());
        b[8..].copy_from_slice(&c[1].to_le_bytes());
        self.file.write_all_at(&b, 0)
    }

    /// Takes the writer lock, waiting up to `timeout` (polling, with pauses growing from 50 µs
    /// to 20 ms); `false` when it timed out. (An `flock` belongs to the open file: this
    /// process's threads share it, so callers serialize their own.)
    pub fn lock(&self, timeout: Duration) -> io::Result<bool> {
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_micros(50);
        loop {
            match self.file.try_lock() {
                Ok(()) => return Ok(true),
                Err(std::fs::TryLockError::WouldBlock) => {
                    if Instant::now() >= deadline {
                        return Ok(false);
                    }
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(20));
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(e),
            }
        }
    }

    pub fn unlock(&self) {
        let _ = self.file.unlock();
    }

    /// Whether this is still the file at its path (not renamed away with a dropped database's
    /// folder, nor replaced by a new database's).
    pub fn in_place(&self) -> io::Result<bool> {
        use std::os::unix::fs::MetadataExt;
        let mine = self.file.metadata()?;
        Ok(fs::metadata(&self.path).is_ok_and(|m| m.dev() == mine.dev() && m.ino() == mine.ino()))
    }

    /// Reads the head record file `head` and parses it with `parse`, consistently with this
    /// counter: a record that fails to parse while the counter moved (or a commit was in flight)
    /// was being rewritten under the reader (see [`replace_via_spare`]), so it is read again
    /// (up to 50 times). Returns the parsed record and the counter value it is current for
    /// (`None` when a commit was in flight), or `Ok(None)` when there is no head record.
    pub fn read_head<T, E>(
        &self,
        head: &Path,
        mut parse: impl FnMut(&[u8]) -> Result<T, E>,
        io_err: impl Fn(&Path, io::Error) -> E,
    ) -> Result<Option<(T, Option<u64>)>, E> {
        let mut tries = 0u32;
        loop {
            let c1 = self.counter().map_err(|e| io_err(&self.path, e))?;
            let bytes = match fs::read(head) {
                Ok(b) => b,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(io_err(head, e)),
            };
            match parse(&bytes) {
                Ok(v) => return Ok(Some((v, (c1[0] == c1[1]).then_some(c1[1])))),
                Err(e) => {
                    let c2 = self.counter().map_err(|e| io_err(&self.path, e))?;
                    if (c1 != c2 || c1[0] != c1[1]) && tries < 50 {
                        tries += 1;
                        std::thread::sleep(Duration::from_micros(50 * tries as u64));
                        continue;
                    }
                    return Err(e);
                }
            }
        }
    }
}
