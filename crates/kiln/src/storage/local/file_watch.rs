//! Waiting for a file to change: how a process hears another's commits without polling. On
//! Linux an inotify watch on the file (a database's `LOCK`, whose commit counter every commit
//! writes twice); elsewhere, a read of its bytes every [`POLL`].

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How often the portable fallback reads the file.
#[cfg_attr(target_os = "linux", allow(dead_code))]
pub const POLL: Duration = Duration::from_millis(20);

/// A watch on one file.
pub struct FileWatch {
    path: PathBuf,
    #[cfg(target_os = "linux")]
    fd: std::os::fd::OwnedFd,
    #[cfg(not(target_os = "linux"))]
    last: Option<Vec<u8>>,
}

impl FileWatch {
    /// Starts watching `path` (which must exist).
    pub fn new(path: &Path) -> io::Result<FileWatch> {
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::FromRawFd;
            use std::os::unix::ffi::OsStrExt;
            // SAFETY: plain system calls; the descriptor is owned from here on.
            let raw = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
            if raw < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: `raw` is a fresh descriptor nobody else owns.
            let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
            let c = std::ffi::CString::new(path.as_os_str().as_bytes())
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL in the path"))?;
            let mask = libc::IN_MODIFY
                | libc::IN_ATTRIB
                | libc::IN_CLOSE_WRITE
                | libc::IN_DELETE_SELF
                | libc::IN_MOVE_SELF;
            // SAFETY: `c` is a valid C string, `raw` an inotify descriptor.
            if unsafe { libc::inotify_add_watch(raw, c.as_ptr(), mask) } < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(FileWatch {
                path: path.to_path_buf(),
                fd,
            })
        }
        #[cfg(not(target_os = "linux"))]
        {
            Ok(FileWatch {
                path: path.to_path_buf(),
                last: std::fs::read(path).ok(),
            })
        }
    }

    /// The file watched.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits until the file changes or `timeout` passes; `true` when it changed (or may
    /// have: callers check what they care about).
    pub fn wait(&mut self, timeout: Duration) -> io::Result<bool> {
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            let raw = self.fd.as_raw_fd();
            let mut p = libc::pollfd {
                fd: raw,
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
            // SAFETY: one valid pollfd.
            let n = unsafe { libc::poll(&mut p, 1, ms) };
            if n < 0 {
                let e = io::Error::last_os_error();
                return if e.kind() == io::ErrorKind::Interrupted {
                    Ok(true)
                } else {
                    Err(e)
                };
            }
            if n == 0 {
                return Ok(false);
            }
            // Drain the events: which ones does not matter.
            let mut buf = [0u8; 4096];
            loop {
                // SAFETY: reads into a buffer of its length.
                let r = unsafe { libc::read(raw, buf.as_mut_ptr().cast(), buf.len()) };
                if r <= 0 {
                    break;
                }
            }
            Ok(true)
        }
        #[cfg(not(target_os = "linux"))]
        {
            let deadline = std::time::Instant::now() + timeout;
            loop {
                let now = std::fs::read(&self.path).ok();
                if now != self.last {
                    self.last = now;
                    return Ok(true);
                }
                if std::time::Instant::now() >= deadline {
                    return Ok(false);
                }
                std::thread::sleep(POLL);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_to_the_file_wakes_the_watch() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("LOCK");
        std::fs::write(&p, [0u8; 16]).unwrap();
        let mut w = FileWatch::new(&p).unwrap();
        assert!(!w.wait(Duration::from_millis(30)).unwrap());
        let p2 = p.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            use std::os::unix::fs::FileExt;
            let f = std::fs::OpenOptions::new().write(true).open(&p2).unwrap();
            f.write_all_at(&[1u8; 8], 0).unwrap();
        });
        assert!(w.wait(Duration::from_secs(10)).unwrap());
        t.join().unwrap();
        assert!(!w.wait(Duration::from_millis(30)).unwrap());
    }
}
