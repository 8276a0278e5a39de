//! The store-wide `GC` lock between garbage collection and writers.

use std::io;
use std::path::PathBuf;

/// The store-wide lock between garbage collection and writers. A writer holds it shared from
/// writing a file until a head record names that file (or it is removed again); garbage
/// collection holds it exclusively while it lists files, reads every head record and removes
/// what none names. So no file is collected between being written and being named.
///
/// `flock` locks belong to the open file, which this process's threads share: a count of
/// users in this process takes the lock on the first and releases it on the last.
pub struct GcLock {
    file: std::fs::File,
    users: std::sync::Mutex<usize>,
    timeout: std::time::Duration,
}

/// Holds [`GcLock`] shared while alive.
pub struct GcShared<'a>(&'a GcLock);

impl GcLock {
    pub fn open(path: PathBuf, timeout: std::time::Duration) -> io::Result<GcLock> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        Ok(GcLock {
            file,
            users: std::sync::Mutex::new(0),
            timeout,
        })
    }

    /// A lock for a store opened read-only, which takes it never (every write is refused
    /// before): the store's folder, opened for reading.
    pub fn read_only(root: &std::path::Path, timeout: std::time::Duration) -> io::Result<GcLock> {
        Ok(GcLock {
            file: std::fs::File::open(root)?,
            users: std::sync::Mutex::new(0),
            timeout,
        })
    }

    /// Waits (up to the lock timeout) while a garbage collection runs.
    pub fn shared(&self) -> io::Result<GcShared<'_>> {
        let mut n = self.users.lock().unwrap_or_else(|p| p.into_inner());
        if *n == 0 {
            self.wait(|f| f.try_lock_shared())?;
        }
        *n += 1;
        Ok(GcShared(self))
    }

    pub fn exclusive(&self) -> io::Result<GcExclusive<'_>> {
        // Hold the in-process count at zero too, so this process's writers wait behind it
        // (they share the open file, whose shared lock would turn into the exclusive one).
        let deadline = std::time::Instant::now() + self.timeout;
        let n = loop {
            let n = self.users.lock().unwrap_or_else(|p| p.into_inner());
            if *n == 0 {
                break n;
            }
            drop(n);
            if std::time::Instant::now() >= deadline {
                return Err(timed_out());
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        };
        self.wait(|f| f.try_lock())?;
        Ok(GcExclusive {
            lock: self,
            _users: n,
        })
    }

    fn wait(
        &self,
        mut f: impl FnMut(&std::fs::File) -> std::result::Result<(), std::fs::TryLockError>,
    ) -> io::Result<()> {
        let deadline = std::time::Instant::now() + self.timeout;
        let mut pause = std::time::Duration::from_micros(100);
        loop {
            match f(&self.file) {
                Ok(()) => return Ok(()),
                Err(std::fs::TryLockError::WouldBlock) => {
                    if std::time::Instant::now() >= deadline {
                        return Err(timed_out());
                    }
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(std::time::Duration::from_millis(20));
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(e),
            }
        }
    }
}

impl Drop for GcShared<'_> {
    fn drop(&mut self) {
        let mut n = self.0.users.lock().unwrap_or_else(|p| p.into_inner());
        *n -= 1;
        if *n == 0 {
            let _ = self.0.file.unlock();
        }
    }
}

pub struct GcExclusive<'a> {
    lock: &'a GcLock,
    /// Held so this process's writers wait too.
    _users: std::sync::MutexGuard<'a, usize>,
}

impl Drop for GcExclusive<'_> {
    fn drop(&mut self) {
        let _ = self.lock.file.unlock();
    }
}

/// The error of a wait for the GC lock that ran out (`TimedOut`; the database layer reports it
/// as the store being busy).
fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "store (garbage collection)")
}
