//! The local folder: immutable files under `files/` (with the reuse pool, spares and reserve
//! that spare commits an inode allocation), and the head record's files (`HEAD`, `HEAD.next`)
//! with the small file-system helpers they share. What is particular to a local folder stays
//! here, behind the inherent API the database uses; the [`Files`] trait is what any backend
//! (and so this one) offers.

use super::{FileName, Files};
use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

pub mod content_map;
mod db_lock;
mod file_watch;
mod fs_util;
mod gc_lock;
mod head_file;
mod heads;
#[cfg(test)]
mod tests;

pub use db_lock::DbLock;
pub use file_watch::FileWatch;
pub(crate) use fs_util::*;
pub use fs_util::{sync_dir, sync_file_system, syncfs_covers, write_atomic};
pub use gc_lock::{GcExclusive, GcLock, GcShared};
pub use head_file::HeadFile;
pub(crate) use heads::read_counter;
pub use heads::LocalHeads;

/// A file being written before its name is known (see [`LocalStorage::begin`]): for
/// [`LocalStorage`], a file in `files/.tmp/` renamed to its name at the end, removed if it
/// never gets one.
#[derive(Debug)]
pub struct Pending(Option<LocalPending>);

#[derive(Debug)]
struct LocalPending {
    file: File,
    path: PathBuf,
    /// Its length before (a reused file).
    old: u64,
    /// Where it goes back to if it never gets its name.
    pool: Arc<Mutex<Pool>>,
    pool_dir: PathBuf,
    instance: u32,
}

impl Pending {
    /// Cuts the file to `len` bytes (a writer that went back over what it wrote).
    pub fn set_len(&self, len: u64) -> io::Result<()> {
        match &self.0 {
            Some(p) => p.file.set_len(len),
            None => Err(io::Error::other("pending file already finished")),
        }
    }

    /// Writes `bytes` at `offset`.
    pub fn write_at(&self, bytes: &[u8], offset: u64) -> io::Result<()> {
        match &self.0 {
            Some(p) => p.file.write_all_at(bytes, offset),
            None => Err(io::Error::other("pending file already finished")),
        }
    }

    /// Starts writing `len` bytes at `offset` to the disk without waiting (a durable file's
    /// first parts, so its fsync later has less left to do). Advisory: errors are the
    /// fsync's to report.
    pub fn start_writeback(&self, offset: u64, len: u64) {
        #[cfg(target_os = "linux")]
        if let Some(p) = &self.0 {
            use std::os::fd::AsRawFd;
            // SAFETY: a valid descriptor; the call only schedules writeback of its pages.
            unsafe {
                libc::sync_file_range(
                    p.file.as_raw_fd(),
                    offset as libc::off64_t,
                    len as libc::off64_t,
                    libc::SYNC_FILE_RANGE_WRITE,
                );
            }
        }
        #[cfg(not(target_os = "linux"))]
        let _ = (offset, len);
    }
}

impl Drop for Pending {
    /// A file never named goes back to the pool, as a removed one does.
    fn drop(&mut self) {
        let Some(p) = self.0.take() else { return };
        if pool_or_unlink(&p.pool, &p.pool_dir, p.instance, &p.path).is_err() {
            let _ = fs::remove_file(&p.path);
        }
    }
}

/// Files under a local folder: `DIR/ab/abcdef….kdf` (or another extension: file-sets are
/// `.kfs`), 256 shards by the first byte of the name.
///
/// Removed files are not unlinked but renamed into `DIR/.pool/` (up to [`POOL_MAX`]) and reused
/// for later files: rename-and-rewrite allocates no inode. Files retired by a commit stay under
/// their names as this process's *spares* until a put renames one straight to its new name (or
/// the handle is dropped and moves them to the pool; a killed process leaves them for garbage
/// collection). Creating and unlinking a file per
/// commit makes ext4 without a journal skip every recently deleted inode on each create, which
/// cost more than everything else a commit does. A reader still holding a removed file open may
/// then read another file's bytes: they fail their seal or CID check, and the database layer
/// re-reads its head record and retries (the name is gone from every current head by then).
#[derive(Debug)]
pub struct LocalStorage {
    dir: PathBuf,
    open: RwLock<HashMap<FileName, Handle>>,
    pool: Arc<Mutex<Pool>>,
    /// Random per instance, so pool names of two processes with a reused pid differ.
    instance: u32,
    /// Empty files to keep ready in the pool (0: none); see [`LocalStorage::with_reserve`].
    reserve: usize,
    /// The files' extension, with its dot.
    ext: &'static str,
    /// The thread creating them, while it runs.
    filler: Mutex<Option<std::thread::JoinHandle<()>>>,
}

#[derive(Debug, Default)]
struct Pool {
    /// Pool files this process knows of (others may take them first).
    known: Vec<PathBuf>,
    /// Puts left before the pool folder is listed again after finding it empty.
    skip: u32,
    /// Files this process retired ([`Storage::retire`]), still under their own names: a put
    /// renames one straight to its new name (one rename per reuse instead of two).
    spare: Vec<Spare>,
    /// Files a sync kept and a head record is about to name ([`LocalStorage::hold`]): never
    /// removed, retired or reused meanwhile, whatever this process's own cleanups think.
    held: HashMap<FileName, usize>,
}

#[derive(Debug)]
struct Spare {
    name: FileName,
    /// The read-write handle this process wrote it through (so its inode has no other name),
    /// and the length written.
    file: Arc<File>,
    len: u64,
}

/// An open file: read-only, or read-write with its length when this process wrote it.
#[derive(Debug, Clone)]
struct Handle {
    file: Arc<File>,
    written: Option<u64>,
}

/// Open file handles kept for reads.
const MAX_OPEN: usize = 256;
/// Files from which [`LocalStorage::sync_named`] flushes the whole file system once (Linux
/// `syncfs`) rather than each file and folder.
const SYNCFS_FROM: usize = 4;
/// Most removed files kept for reuse; beyond it they are unlinked.
pub const POOL_MAX: usize = 1024;
/// Pooled files up to this size keep their bytes (rewriting allocated blocks is cheaper than
/// freeing and allocating them); larger ones are emptied when pooled.
const POOL_KEEP_BYTES: u64 = 32 * 1024;

impl LocalStorage {
    pub fn new(dir: impl Into<PathBuf>) -> LocalStorage {
        LocalStorage::with_reserve(dir, 0)
    }

    /// Keeps about `reserve` empty files ready in the pool: when a put finds fewer than a
    /// quarter of that, a background thread creates more, so commits rename a file instead of
    /// allocating an inode (which ext4 without a journal makes slow after many deletions).
    pub fn with_reserve(dir: impl Into<PathBuf>, reserve: usize) -> LocalStorage {
        LocalStorage {
            dir: dir.into(),
            open: RwLock::new(HashMap::new()),
            pool: Arc::new(Mutex::new(Pool::default())),
            instance: {
                let mut b = [0u8; 4];
                let _ = getrandom::getrandom(&mut b);
                u32::from_le_bytes(b)
            },
            reserve,
            filler: Mutex::new(None),
            ext: ".kdf",
        }
    }

    /// Files under `dir` named `<hash><ext>` (`ext` with its dot), no reserve.
    pub fn with_ext(dir: impl Into<PathBuf>, ext: &'static str) -> LocalStorage {
        let mut s = LocalStorage::new(dir);
        s.ext = ext;
        s
    }

    /// Creates the reserve now (when a store is created, so its first commits find it too).
    pub fn fill_reserve(&self) -> io::Result<()> {
        fill_pool(&self.pool, &self.pool_dir(), self.instance, self.reserve)
    }

    /// Starts the background thread that tops the pool up to the reserve, if it is low and no
    /// such thread runs.
    fn top_up(&self) {
        if self.reserve == 0 {
            return;
        }
        let need = {
            let pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
            let have = pool.known.len() + pool.spare.len();
            if have * 4 >= self.reserve {
                return;
            }
            self.reserve - have
        };
        let mut filler = self.filler.lock().unwrap_or_else(|p| p.into_inner());
        if filler.as_ref().is_some_and(|t| !t.is_finished()) {
            return;
        }
        let (pool, dir, instance) = (self.pool.clone(), self.pool_dir(), self.instance);
        *filler = std::thread::Builder::new()
            .name("kiln-reserve".into())
            .spawn(move || {
                // A failure only leaves the pool short; commits then create files themselves.
                let _ = fill_pool(&pool, &dir, instance, need);
            })
            .ok();
    }

    /// Creates the folder, its 256 shard folders and `.tmp/`. Done once when a store is
    /// created, so commits do not pay for them (a missing one, as in stores made before, is
    /// still created when first needed).
    pub fn create_shards(&self) -> io::Result<()> {
        fs::create_dir_all(self.dir.join(".tmp"))?;
        for b in 0..=255u8 {
            match fs::create_dir(self.dir.join(format!("{b:02x}"))) {
                Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }

    /// A fresh name in `files/.tmp/` for a file being built (unique across processes and
    /// within this one; gc removes leftovers).
    fn tmp_path(&self) -> PathBuf {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.dir
            .join(".tmp")
            .join(format!("{}-{}-{n}.part", std::process::id(), self.instance))
    }

    fn pool_dir(&self) -> PathBuf {
        self.dir.join(".pool")
    }

    /// Moves a pooled file to `path`; false when the pool is empty. `AlreadyExists` when `path`
    /// is there already (same name, same bytes: nothing to write).
    fn take_pooled(&self, path: &Path) -> io::Result<bool> {
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if pool.known.is_empty() {
                if pool.skip > 0 {
                    pool.skip -= 1;
                    return Ok(false);
                }
                match fs::read_dir(self.pool_dir()) {
                    Ok(rd) => pool.known = rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
                if pool.known.is_empty() {
                    pool.skip = 64;
                    return Ok(false);
                }
            }
            let Some(p) = pool.known.pop() else {
                return Ok(false);
            };
            match rename_noreplace(&p, path) {
                Ok(()) => return Ok(true),
                // Gone: taken by another process; try the next one.
                Err(e) if e.kind() == io::ErrorKind::NotFound && !p.exists() => continue,
                Err(e) => {
                    // Still there: the destination folder is missing, or the file exists.
                    pool.known.push(p);
                    return Err(e);
                }
            }
        }
    }

    /// Where an archived file lives: `DIR/.archive/ab/<name>.kdf`.
    pub fn archive_path(&self, name: &FileName) -> PathBuf {
        let h = name.to_string();
        self.dir
            .join(".archive")
            .join(&h[..2])
            .join(format!("{h}{}", self.ext))
    }

    pub fn path(&self, name: &FileName) -> PathBuf {
        // DIR/ab/abcdef….kdf, built in one buffer (this is on every commit's path).
        let h = crate::util::hex::hex(&name.0);
        let mut p = std::ffi::OsString::with_capacity(self.dir.as_os_str().len() + 72);
        p.push(self.dir.as_os_str());
        p.push("/");
        p.push(&h[..2]);
        p.push("/");
        p.push(&h);
        p.push(self.ext);
        PathBuf::from(p)
    }

    fn handle(&self, name: &FileName) -> io::Result<Arc<File>> {
        if let Some(h) = self
            .open
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
        {
            return Ok(h.file.clone());
        }
        let f = Arc::new(File::open(self.path(name))?);
        self.keep_open(
            *name,
            Handle {
                file: f.clone(),
                written: None,
            },
        );
        Ok(f)
    }

    fn keep_open(&self, name: FileName, h: Handle) {
        let mut m = self.open.write().unwrap_or_else(|p| p.into_inner());
        if m.len() >= MAX_OPEN {
            m.clear();
        }
        m.insert(name, h);
    }

    /// Takes a spare (one no longer than `len` when there is one among the newest few, so the
    /// rewrite need not shorten it) and renames it to `path`. `Ok(None)`: no spare left.
    /// `AlreadyExists`: `path` is there already (same name, same bytes).
    fn take_spare(&self, path: &Path, len: u64, sync: bool) -> io::Result<Option<(File, u64)>> {
        loop {
            let sp = {
                let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
                let n = pool.spare.len();
                let Some(last) = n.checked_sub(1) else {
                    return Ok(None);
                };
                let i = (n.saturating_sub(8)..n)
                    .rev()
                    .find(|&i| pool.spare[i].len <= len)
                    .unwrap_or(last);
                pool.spare.swap_remove(i)
            };
            let from = self.path(&sp.name);
            // The name may hold another file by now (a sync kept a replica's copy of it, live
            // again, under its name, as a new file): that one is not this spare to take.
            if !same_file(&sp.file, &from).unwrap_or(false) {
                continue;
            }
            let moved = match rename_noreplace(&from, path) {
                Err(e) if e.kind() == io::ErrorKind::NotFound && from.exists() => {
                    self.make_shard(path.parent().unwrap_or(&self.dir), sync)?;
                    rename_noreplace(&from, path)
                }
                r => r,
            };
            match moved {
                Ok(()) => {}
                // Gone (garbage collection took it): try the next one.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    self.pool
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .spare
                        .push(sp);
                    return Err(e);
                }
            }
            // The name may hold another file by now (a sync kept a replica's copy of it, live
            // again, under its name, as a new file): that one goes back, untouched.
            if !same_file(&sp.file, path)? {
                if rename_noreplace(path, &from).is_err() {
                    let _ = fs::remove_file(path); // the name holds these bytes again anyway
                }
                continue;
            }
            // Written through by this process, so no other name holds its inode.
            let f = Arc::try_unwrap(sp.file).or_else(|f| f.try_clone())?;
            return Ok(Some((f, sp.len)));
        }
    }

    /// The end of a put: the file written under its name is made durable (with `sync`) and
    /// kept open for reads; the pool is topped up if low.
    fn stored(
        &self,
        name: &FileName,
        f: File,
        len: u64,
        sync: bool,
        shard: &Path,
    ) -> io::Result<()> {
        if sync {
            sync_with_folder(&f, shard)?;
        }
        self.keep_open(
            *name,
            Handle {
                file: Arc::new(f),
                written: Some(len),
            },
        );
        self.top_up();
        Ok(())
    }

    /// A file of its own in `files/.tmp/` for a file being built, with its length before: a
    /// spare or pooled file moved there (no inode allocated, and no other process can take it
    /// meanwhile), else a new one.
    fn claim_tmp(&self) -> io::Result<(File, PathBuf, u64)> {
        let tmp = self.tmp_path();
        let tmp_dir = self.dir.join(".tmp");
        let reused = match self.take_spare(&tmp, u64::MAX, false)? {
            Some(x) => Some(x),
            None => {
                let taken = match self.take_pooled(&tmp) {
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        fs::create_dir_all(&tmp_dir)?;
                        self.take_pooled(&tmp)
                    }
                    r => r,
                };
                if taken? {
                    open_reused(&tmp)?
                } else {
                    None
                }
            }
        };
        let (file, old) = match reused {
            Some(x) => x,
            None => {
                fs::create_dir_all(&tmp_dir)?;
                let f = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .open(&tmp)?;
                (f, 0)
            }
        };
        Ok((file, tmp, old))
    }

    /// Creates a missing shard folder (durably with `sync`: its name in the folder above too).
    fn make_shard(&self, shard: &Path, sync: bool) -> io::Result<()> {
        fs::create_dir_all(shard)?;
        if sync {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// Takes `name` off this process's spares, if it is one (a file live again: a replica's
    /// head names it).
    pub fn unspare(&self, name: &FileName) {
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = pool.spare.iter().position(|s| s.name == *name) {
            pool.spare.swap_remove(i);
        }
    }

    /// Rewrites a reused file with `bytes`, shortening it when it was longer.
    fn rewrite(f: &File, old: u64, parts: &[&[u8]]) -> io::Result<()> {
        let len = write_parts(f, parts)?;
        if old > len {
            f.set_len(len)?;
        }
        Ok(())
    }

    /// Moves the spares into the pool folder (or unlinks them beyond [`POOL_MAX`]), so other
    /// processes can reuse them and their names are gone.
    fn release_spares(&self) {
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        let spares = std::mem::take(&mut pool.spare);
        drop(pool);
        for sp in spares {
            let _ = self.remove(&sp.name);
        }
    }
}

/// Creates `n` empty files in the pool folder and makes them known to `pool`.
fn fill_pool(pool: &Mutex<Pool>, dir: &Path, instance: u32, n: usize) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    for _ in 0..n {
        let p = dir.join(pool_file_name(instance));
        OpenOptions::new().write(true).create_new(true).open(&p)?;
        let mut pool = pool.lock().unwrap_or_else(|p| p.into_inner());
        pool.known.push(p);
        pool.skip = 0;
    }
    Ok(())
}

/// Writes `parts` one after another from the start of `f`; returns their length.
fn write_parts(f: &File, parts: &[&[u8]]) -> io::Result<u64> {
    let mut at = 0u64;
    for p in parts {
        f.write_all_at(p, at)?;
        at += p.len() as u64;
    }
    Ok(at)
}

/// Moves the file at `path` into the pool folder to be reused (emptied first when large), or
/// unlinks it when the pool is full or another name holds it too; absent is not an error.
fn pool_or_unlink(
    pool: &Mutex<Pool>,
    pool_dir: &Path,
    instance: u32,
    path: &Path,
) -> io::Result<()> {
    let mut pool = pool.lock().unwrap_or_else(|p| p.into_inner());
    if pool.known.len() < POOL_MAX {
        let to = pool_dir.join(pool_file_name(instance));
        // A large file is emptied first (its space goes back to the file system), under
        // its own name: once it has a pool name, another process may take it and write a
        // new file into it at any moment. A small one keeps its (sealed) bytes until reused.
        // A file with another name too (a crash can leave a renamed file under both its
        // old and new names, the old folder not being fsynced) only loses this name: its
        // bytes belong to the other.
        use std::os::unix::fs::MetadataExt;
        match fs::metadata(path) {
            Ok(m) if m.nlink() > 1 => {
                drop(pool);
                return unlink(path);
            }
            Ok(m) if m.len() > POOL_KEEP_BYTES => match OpenOptions::new().write(true).open(path) {
                Ok(f) => f.set_len(0)?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(e),
            },
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        }
        let moved = match fs::rename(path, &to) {
            Err(e) if e.kind() == io::ErrorKind::NotFound && !pool_dir.exists() => {
                fs::create_dir_all(pool_dir)?;
                fs::rename(path, &to)
            }
            r => r,
        };
        match moved {
            Ok(()) => {
                pool.known.push(to);
                pool.skip = 0;
                return Ok(());
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(_) => {} // fall through to unlink
        }
    }
    drop(pool);
    unlink(path)
}

/// Removes a name; one already gone is not an error.
fn unlink(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// A fresh file name for the pool folder (unique per process, instance and call).
fn pool_file_name(instance: u32) -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{}-{instance}-{n}.free", std::process::id())
}

/// Opens a file just taken from the pool for rewriting, with its current length; `None` (and
/// the name removed) when another name still holds its inode: a crash can leave a pool name
/// and a live file naming one inode (the pool folder is not fsynced), and a file another name
/// holds is never written into.
fn open_reused(path: &Path) -> io::Result<Option<(File, u64)>> {
    let f = OpenOptions::new().read(true).write(true).open(path)?;
    let meta = f.metadata()?;
    if std::os::unix::fs::MetadataExt::nlink(&meta) > 1 {
        drop(f);
        fs::remove_file(path)?;
        return Ok(None);
    }
    Ok(Some((f, meta.len())))
}

impl Drop for LocalStorage {
    fn drop(&mut self) {
        if let Some(t) = self
            .filler
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            let _ = t.join();
        }
        self.release_spares();
    }
}

impl LocalStorage {
    /// Stores a file. With `sync`, returns only once the file and its name are durable.
    pub fn put(&self, name: &FileName, bytes: &[u8], sync: bool) -> io::Result<()> {
        self.put_parts(name, &[bytes], sync)
    }

    /// [`LocalStorage::put`] of the concatenation of `parts` (a large diff file is built in
    /// several buffers).
    pub fn put_parts(&self, name: &FileName, parts: &[&[u8]], sync: bool) -> io::Result<()> {
        // A name being stored is live again even if it was one of this process's spares (same
        // name, same bytes): it must not be reused for another file.
        self.unspare(name);
        let path = self.path(name);
        let shard = path.parent().unwrap_or(&self.dir).to_path_buf();
        let len: u64 = parts.iter().map(|p| p.len() as u64).sum();
        let same = |e: &io::Error| e.kind() == io::ErrorKind::AlreadyExists;
        let reused = match self.take_spare(&path, len, sync) {
            Ok(Some(x)) => Some(x),
            Ok(None) => {
                let taken = match self.take_pooled(&path) {
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        self.make_shard(&shard, sync)?;
                        self.take_pooled(&path)
                    }
                    r => r,
                };
                match taken {
                    Ok(true) => match open_reused(&path)? {
                        Some(x) => Some(x),
                        None => return self.put_parts(name, parts, sync),
                    },
                    Ok(false) => None,
                    // Same name means same bytes: the file is already there.
                    Err(e) if same(&e) => return Ok(()),
                    Err(e) => return Err(e),
                }
            }
            Err(e) if same(&e) => return Ok(()),
            Err(e) => return Err(e),
        };
        let f = match reused {
            Some((f, old)) => {
                Self::rewrite(&f, old, parts)?;
                f
            }
            None => {
                let create = || {
                    OpenOptions::new()
                        .read(true)
                        .write(true)
                        .create_new(true)
                        .open(&path)
                };
                let f = match create() {
                    Ok(f) => f,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        self.make_shard(&shard, sync)?;
                        create()?
                    }
                    Err(e) if same(&e) => return Ok(()),
                    Err(e) => return Err(e),
                };
                write_parts(&f, parts)?;
                f
            }
        };
        self.stored(name, f, len, sync, &shard)
    }

    pub fn begin(&self) -> io::Result<Pending> {
        let (file, path, old) = self.claim_tmp()?;
        Ok(Pending(Some(LocalPending {
            file,
            path,
            old,
            pool: self.pool.clone(),
            pool_dir: self.pool_dir(),
            instance: self.instance,
        })))
    }

    pub fn finish(
        &self,
        mut file: Pending,
        name: &FileName,
        len: u64,
        sync: bool,
    ) -> io::Result<()> {
        let Some(LocalPending {
            file,
            path: tmp,
            old,
            ..
        }) = file.0.take()
        else {
            return Err(io::Error::other("pending file already finished"));
        };
        // (Removed again if anything below fails.)
        let fail = |e: io::Error| {
            let _ = fs::remove_file(&tmp);
            e
        };
        // A name being stored is live again even if it was one of this process's spares.
        self.unspare(name);
        if old > len {
            file.set_len(len).map_err(fail)?;
        }
        let path = self.path(name);
        let shard = path.parent().unwrap_or(&self.dir).to_path_buf();
        // Same name, same bytes: replacing a file already there changes nothing.
        match fs::rename(&tmp, &path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound && tmp.exists() => {
                self.make_shard(&shard, sync).map_err(fail)?;
                fs::rename(&tmp, &path).map_err(fail)?;
            }
            r => r.map_err(fail)?,
        }
        // (Named before it is durable, as a put's reused file is: no head names it yet.)
        self.stored(name, file, len, sync, &shard)
    }

    pub fn sync_file(&self, name: &FileName) -> io::Result<()> {
        let path = self.path(name);
        sync_with_folder(&*self.handle(name)?, path.parent().unwrap_or(&self.dir))
    }

    pub fn restore(&self, name: &FileName, bytes: &[u8]) -> io::Result<()> {
        self.restore_with(name, bytes, true)
    }

    /// [`LocalStorage::restore`], durable only with `sync` (else [`LocalStorage::sync_named`]
    /// makes a batch of them durable at once, before anything names them).
    pub fn restore_with(&self, name: &FileName, bytes: &[u8], sync: bool) -> io::Result<()> {
        let tmp = self.tmp_path();
        fs::create_dir_all(self.dir.join(".tmp"))?;
        let path = self.path(name);
        let r = (|| {
            let f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
            f.write_all_at(bytes, 0)?;
            if sync {
                f.sync_all()?;
            }
            if let Some(shard) = path.parent() {
                self.make_shard(shard, sync)?;
            }
            fs::rename(&tmp, &path)?;
            if sync {
                sync_dir(path.parent().unwrap_or(&self.dir))?;
            }
            Ok(())
        })();
        if r.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        // A handle kept open reads the old (damaged) file.
        self.open
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        r
    }

    /// Makes files written without syncing durable: each file, then each folder holding one
    /// (and the folder of shards).
    pub fn sync_named(&self, names: &[FileName]) -> io::Result<()> {
        if names.len() >= SYNCFS_FROM && syncfs_covers(&self.dir) {
            // One flush of the whole file system writes them out together: for a pull of
            // many files, faster than a flush per file and folder (each a journal commit).
            return sync_file_system(&self.dir);
        }
        let mut dirs: Vec<PathBuf> = Vec::new();
        for n in names {
            let path = self.path(n);
            File::open(&path)?.sync_all()?;
            if let Some(d) = path.parent() {
                if !dirs.iter().any(|x| x == d) {
                    dirs.push(d.to_path_buf());
                }
            }
        }
        for d in &dirs {
            sync_dir(d)?;
        }
        if !dirs.is_empty() {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    pub fn put_with(
        &self,
        sync: bool,
        fill: &mut dyn FnMut(&mut dyn Write) -> io::Result<FileName>,
    ) -> io::Result<FileName> {
        let (f, tmp, old) = self.claim_tmp()?;
        let r = (|| {
            let mut w = io::BufWriter::with_capacity(1 << 20, f);
            let name = fill(&mut w)?;
            let mut f = w.into_inner().map_err(|e| e.into_error())?;
            let written = f.stream_position()?;
            if old > written {
                f.set_len(written)?;
            }
            if sync {
                f.sync_all()?;
            }
            let path = self.path(&name);
            let moved = match rename_noreplace(&tmp, &path) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    self.make_shard(path.parent().unwrap_or(&self.dir), sync)?;
                    rename_noreplace(&tmp, &path)
                }
                r => r,
            };
            match moved {
                // Same name, same bytes (live again if it was a spare).
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => self.unspare(&name),
                r => r?,
            }
            if sync {
                sync_dir(path.parent().unwrap_or(&self.dir))?;
            }
            Ok(name)
        })();
        let _ = fs::remove_file(&tmp); // gone already when renamed
        self.top_up();
        r
    }

    pub fn read_at(&self, name: &FileName, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut buf = Vec::new();
        self.read_into(name, offset, len, &mut buf)?;
        Ok(buf)
    }

    /// [`LocalStorage::read_at`] into `buf`, reusing its allocation.
    pub fn read_into(
        &self,
        name: &FileName,
        offset: u64,
        len: usize,
        buf: &mut Vec<u8>,
    ) -> io::Result<()> {
        let f = self.handle(name)?;
        if len == 0 && offset > f.metadata()?.len() {
            // (An empty read reads nothing, but not past the end either.)
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        // (What the buffer held is overwritten, not zeroed first: only growth is filled. On
        // an error its contents are unspecified, as `Files::read_into` says.)
        buf.resize(len, 0);
        f.read_exact_at(buf, offset)
    }

    pub fn len(&self, name: &FileName) -> io::Result<u64> {
        Ok(self.handle(name)?.metadata()?.len())
    }

    pub fn read(&self, name: &FileName) -> io::Result<Vec<u8>> {
        fs::read(self.path(name))
    }

    pub fn retire(&self, name: &FileName) -> io::Result<()> {
        let h = self
            .open
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        if pool.held.contains_key(name) {
            return Ok(()); // a sync holds it: live again in a moment
        }
        if pool.known.len() + pool.spare.len() >= POOL_MAX {
            drop(pool);
            return self.remove(name);
        }
        match h {
            // A small file this process wrote keeps its (sealed) bytes under its name until
            // reused. A large one goes to the pool now, emptied: its space goes back at once,
            // and a file under a live-looking name is never left without its bytes.
            Some(Handle {
                file,
                written: Some(len),
            }) if len <= POOL_KEEP_BYTES => {
                pool.spare.push(Spare {
                    name: *name,
                    file,
                    len,
                });
                Ok(())
            }
            _ => {
                drop(pool);
                self.remove(name)
            }
        }
    }

    pub fn remove(&self, name: &FileName) -> io::Result<()> {
        self.open
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        let path = self.path(name);
        {
            // Not a spare any more: its name goes now (unless a sync holds it).
            let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
            pool.spare.retain(|s| s.name != *name);
            if pool.held.contains_key(name) {
                return Ok(());
            }
        }
        pool_or_unlink(&self.pool, &self.pool_dir(), self.instance, &path)
    }

    /// Keeps `name` where it is until [`LocalStorage::release`]: a sync brought it in and a
    /// head record is about to name it (this process's spare of that name is dropped).
    pub fn hold(&self, name: &FileName) {
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        pool.spare.retain(|s| s.name != *name);
        *pool.held.entry(*name).or_insert(0) += 1;
    }

    /// Ends a [`LocalStorage::hold`].
    pub fn release(&self, name: &FileName) {
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = pool.held.get_mut(name) {
            *n -= 1;
            if *n == 0 {
                pool.held.remove(name);
            }
        }
    }

    pub fn erase(&self, name: &FileName) -> io::Result<()> {
        let path = self.path(name);
        // Emptied under its own name first (unless another name holds it too: a crash can
        // leave a renamed file under two names, and the bytes are the other's), so the pool
        // keeps no byte of it.
        use std::os::unix::fs::MetadataExt;
        match fs::metadata(&path) {
            Ok(m) if m.nlink() == 1 && m.len() > 0 => {
                match OpenOptions::new().write(true).open(&path) {
                    Ok(f) => f.set_len(0)?,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                    Err(e) => return Err(e),
                }
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        }
        self.remove(name)
    }

    pub fn archive(&self, name: &FileName) -> io::Result<()> {
        self.open
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        let to = self.archive_path(name);
        let from = self.path(name);
        match fs::rename(&from, &to) {
            Err(e) if e.kind() == io::ErrorKind::NotFound && from.exists() => {
                fs::create_dir_all(to.parent().unwrap_or(&self.dir))?;
                fs::rename(&from, &to)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            r => r,
        }
    }

    pub fn read_archived(&self, name: &FileName) -> io::Result<Vec<u8>> {
        fs::read(self.archive_path(name))
    }

    pub fn read_archived_tail(&self, name: &FileName, len: usize) -> io::Result<(Vec<u8>, u64)> {
        let f = File::open(self.archive_path(name))?;
        let size = f.metadata()?.len();
        let n = (len as u64).min(size);
        let mut b = vec![0u8; n as usize];
        f.read_exact_at(&mut b, size - n)?;
        Ok((b, size))
    }

    pub fn remove_archived(&self, name: &FileName) -> io::Result<()> {
        unlink(&self.archive_path(name))
    }

    pub fn list_archived(&self) -> io::Result<Vec<FileName>> {
        list_shards(&self.dir.join(".archive"), self.ext)
    }

    pub fn clear_reusable(&self) -> io::Result<(u64, u64)> {
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        pool.known.clear();
        let (mut n, mut bytes) = (0, 0);
        for sp in std::mem::take(&mut pool.spare) {
            let p = self.path(&sp.name);
            let len = fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
            match fs::remove_file(&p) {
                Ok(()) => {
                    n += 1;
                    bytes += len;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        let mut entries = Vec::new();
        // Removed files kept for reuse, and partial files of streamed writes a crash left.
        for d in [self.pool_dir(), self.dir.join(".tmp")] {
            match fs::read_dir(&d) {
                Ok(r) => entries.extend(r.map(|e| (d == self.pool_dir(), e))),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        for (pooled, e) in entries {
            let e = e?;
            let len = e.metadata().map(|m| m.len()).unwrap_or(0);
            if pooled && len == 0 {
                // An empty pooled file (the reserve, or a large removed file emptied when
                // pooled) holds no byte: it stays, ready for reuse.
                pool.known.push(e.path());
                continue;
            }
            match fs::remove_file(e.path()) {
                Ok(()) => {
                    n += 1;
                    bytes += len;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {} // taken meanwhile
                Err(e) => return Err(e),
            }
        }
        Ok((n, bytes))
    }

    pub fn list(&self) -> io::Result<Vec<FileName>> {
        let mut out = list_shards(&self.dir, self.ext)?;
        // This process's spares are space kept for reuse, not files.
        let pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        if !pool.spare.is_empty() {
            let spare: std::collections::HashSet<FileName> =
                pool.spare.iter().map(|s| s.name).collect();
            out.retain(|n| !spare.contains(n));
        }
        out.sort();
        Ok(out)
    }
}

/// The files named `<hash><ext>` in the shard folders of `dir` (hidden folders skipped).
fn list_shards(dir: &Path, ext: &str) -> io::Result<Vec<FileName>> {
    let mut out = Vec::new();
    let rd = match fs::read_dir(dir) {
        Ok(r) => r,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for shard in rd {
        let shard = shard?;
        if !shard.file_type()?.is_dir() || shard.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        for f in fs::read_dir(shard.path())? {
            let f = f?;
            let n = f.file_name();
            if let Some(name) = n
                .to_str()
                .and_then(|s| s.strip_suffix(ext))
                .and_then(FileName::parse)
            {
                out.push(name);
            }
        }
    }
    out.sort();
    Ok(out)
}

impl Files for LocalStorage {
    fn put(&self, name: &FileName, parts: &[&[u8]], durable: bool) -> io::Result<()> {
        self.put_parts(name, parts, durable)
    }

    fn put_streamed(
        &self,
        durable: bool,
        fill: &mut dyn FnMut(&mut dyn Write) -> io::Result<FileName>,
    ) -> io::Result<FileName> {
        self.put_with(durable, fill)
    }

    fn read_at(&self, name: &FileName, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        LocalStorage::read_at(self, name, offset, len)
    }

    fn read_into(
        &self,
        name: &FileName,
        offset: u64,
        len: usize,
        buf: &mut Vec<u8>,
    ) -> io::Result<()> {
        LocalStorage::read_into(self, name, offset, len, buf)
    }

    fn len(&self, name: &FileName) -> io::Result<u64> {
        LocalStorage::len(self, name)
    }

    fn list(&self) -> io::Result<Vec<FileName>> {
        LocalStorage::list(self)
    }

    fn delete(&self, name: &FileName) -> io::Result<()> {
        self.remove(name)
    }
}

/// Whether the file at `path` is the open file `f` (same device and inode).
fn same_file(f: &File, path: &Path) -> io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let (a, b) = (f.metadata()?, fs::metadata(path)?);
    Ok(a.dev() == b.dev() && a.ino() == b.ino())
}
