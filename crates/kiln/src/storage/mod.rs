//! Storage of immutable, content-addressed files.
//!
//! **Invariant:** storage never interprets the bytes it holds; it stores, returns and removes
//! them by name. Every backend (the local folder here; object stores and the sync server later)
//! implements [`Storage`].

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

/// A file's name: 32 bytes, the hash of its bytes (the formats choose the hash; storage
/// only keeps files under their names). Shown and parsed as 64 hex characters.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct FileName(pub [u8; 32]);

impl std::hash::Hash for FileName {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let mut x = [0u8; 8];
        x.copy_from_slice(&self.0[..8]);
        state.write_u64(u64::from_le_bytes(x));
    }
}

impl FileName {
    /// A name from its 64 hex characters.
    pub fn parse(s: &str) -> Option<FileName> {
        let v = crate::util::hex::unhex(s)?;
        Some(FileName(v.try_into().ok()?))
    }
}

impl std::fmt::Display for FileName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&crate::util::hex::hex(&self.0))
    }
}

impl std::fmt::Debug for FileName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FileName({self})")
    }
}

/// A place that keeps immutable files by name.
pub trait Storage: Send + Sync + std::fmt::Debug {
    /// Stores a file. With `sync`, returns only once the file and its name are durable.
    fn put(&self, name: &FileName, bytes: &[u8], sync: bool) -> io::Result<()> {
        self.put_parts(name, &[bytes], sync)
    }
    /// [`Storage::put`] of the concatenation of `parts` (a large diff file is built in
    /// several buffers).
    fn put_parts(&self, name: &FileName, parts: &[&[u8]], sync: bool) -> io::Result<()>;
    /// Makes a file stored without `sync` durable: its bytes and its name.
    fn sync_file(&self, name: &FileName) -> io::Result<()>;
    /// Durably replaces a stored file whose bytes were lost or damaged (a power cut after a
    /// put without `sync`) with `bytes`, which the caller checked are the file's.
    fn restore(&self, name: &FileName, bytes: &[u8]) -> io::Result<()>;
    /// Stores a file whose name is known only once it is written: `fill` writes its bytes to
    /// the sink and returns the name. The file appears under that name whole or not at all
    /// (with `sync`, durably).
    fn put_with(
        &self,
        sync: bool,
        fill: &mut dyn FnMut(&mut dyn Write) -> io::Result<FileName>,
    ) -> io::Result<FileName>;
    /// Starts a file whose name is known only once all its bytes are: its parts may be written
    /// in any order, from several threads ([`Pending::write_at`]), while the rest is still
    /// being made; [`Storage::finish`] names it. A pending file never finished is discarded.
    fn begin(&self) -> io::Result<Pending>;
    /// Stores a [`Storage::begin`] file of `len` bytes under `name`, as [`Storage::put`] would.
    fn finish(&self, file: Pending, name: &FileName, len: u64, sync: bool) -> io::Result<()>;
    /// Reads `len` bytes at `offset`.
    fn read_at(&self, name: &FileName, offset: u64, len: usize) -> io::Result<Vec<u8>>;
    /// The file's length in bytes.
    fn len(&self, name: &FileName) -> io::Result<u64>;
    /// The whole file.
    fn read(&self, name: &FileName) -> io::Result<Vec<u8>>;
    /// Removes a file (absent is not an error). A backend may keep the space to reuse for a
    /// later file; the name is gone either way.
    fn remove(&self, name: &FileName) -> io::Result<()>;
    /// Removes a file and its bytes (a dropped database's files): unlike [`Storage::remove`],
    /// nothing of its contents is kept for reuse. Absent is not an error.
    fn erase(&self, name: &FileName) -> io::Result<()>;
    /// Removes a file a head record no longer names, on a commit's path: like
    /// [`Storage::remove`], except that a backend may keep it under its name for a while to
    /// reuse its space cheaply (garbage collection takes it if this process does not).
    fn retire(&self, name: &FileName) -> io::Result<()> {
        self.remove(name)
    }
    /// Every file held.
    fn list(&self) -> io::Result<Vec<FileName>>;
    /// Moves a file into the archive (absent is not an error): it is no longer listed or
    /// readable by [`Storage::read`], but [`Storage::read_archived`] finds it.
    fn archive(&self, name: &FileName) -> io::Result<()>;
    /// A file from the archive.
    fn read_archived(&self, name: &FileName) -> io::Result<Vec<u8>>;
    /// The last `len` bytes (at most) of a file in the archive, and the file's length.
    fn read_archived_tail(&self, name: &FileName, len: usize) -> io::Result<(Vec<u8>, u64)>;
    /// Deletes a file from the archive (absent is not an error).
    fn remove_archived(&self, name: &FileName) -> io::Result<()>;
    /// Every file in the archive.
    fn list_archived(&self) -> io::Result<Vec<FileName>>;
    /// Drops whatever removed files still hold for reuse (after a purge, so no removed byte
    /// survives; empty reusable files hold none and stay), and partial files of interrupted
    /// [`Storage::put_with`] calls (callers make sure none is in progress); returns the files
    /// and bytes freed.
    fn clear_reusable(&self) -> io::Result<(u64, u64)>;
}

/// A file being written before its name is known (see [`Storage::begin`]): for
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

/// Files under a local folder: `DIR/ab/abcdef….kdf`, 256 shards by the first byte of the name.
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
        }
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
            .join(format!("{h}.kdf"))
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
        p.push(".kdf");
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

    /// Takes `name` off the spares, if it is one.
    fn unspare(&self, name: &FileName) {
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

impl Storage for LocalStorage {
    fn put_parts(&self, name: &FileName, parts: &[&[u8]], sync: bool) -> io::Result<()> {
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

    fn begin(&self) -> io::Result<Pending> {
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

    fn finish(&self, mut file: Pending, name: &FileName, len: u64, sync: bool) -> io::Result<()> {
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

    fn sync_file(&self, name: &FileName) -> io::Result<()> {
        let path = self.path(name);
        sync_with_folder(&*self.handle(name)?, path.parent().unwrap_or(&self.dir))
    }

    fn restore(&self, name: &FileName, bytes: &[u8]) -> io::Result<()> {
        let tmp = self.tmp_path();
        fs::create_dir_all(self.dir.join(".tmp"))?;
        let path = self.path(name);
        let r = (|| {
            let f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
            f.write_all_at(bytes, 0)?;
            f.sync_all()?;
            if let Some(shard) = path.parent() {
                self.make_shard(shard, true)?;
            }
            fs::rename(&tmp, &path)?;
            sync_dir(path.parent().unwrap_or(&self.dir))
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

    fn put_with(
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

    fn read_at(&self, name: &FileName, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let f = self.handle(name)?;
        let mut buf = vec![0u8; len];
        f.read_exact_at(&mut buf, offset)?;
        Ok(buf)
    }

    fn len(&self, name: &FileName) -> io::Result<u64> {
        Ok(self.handle(name)?.metadata()?.len())
    }

    fn read(&self, name: &FileName) -> io::Result<Vec<u8>> {
        fs::read(self.path(name))
    }

    fn retire(&self, name: &FileName) -> io::Result<()> {
        let h = self
            .open
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
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

    fn remove(&self, name: &FileName) -> io::Result<()> {
        self.open
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        let path = self.path(name);
        // Not a spare any more: its name goes now.
        self.pool
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .spare
            .retain(|s| s.name != *name);
        pool_or_unlink(&self.pool, &self.pool_dir(), self.instance, &path)
    }

    fn erase(&self, name: &FileName) -> io::Result<()> {
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

    fn archive(&self, name: &FileName) -> io::Result<()> {
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

    fn read_archived(&self, name: &FileName) -> io::Result<Vec<u8>> {
        fs::read(self.archive_path(name))
    }

    fn read_archived_tail(&self, name: &FileName, len: usize) -> io::Result<(Vec<u8>, u64)> {
        let f = File::open(self.archive_path(name))?;
        let size = f.metadata()?.len();
        let n = (len as u64).min(size);
        let mut b = vec![0u8; n as usize];
        f.read_exact_at(&mut b, size - n)?;
        Ok((b, size))
    }

    fn remove_archived(&self, name: &FileName) -> io::Result<()> {
        unlink(&self.archive_path(name))
    }

    fn list_archived(&self) -> io::Result<Vec<FileName>> {
        list_shards(&self.dir.join(".archive"))
    }

    fn clear_reusable(&self) -> io::Result<(u64, u64)> {
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

    fn list(&self) -> io::Result<Vec<FileName>> {
        let mut out = list_shards(&self.dir)?;
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

/// The files named `<hash>.kdf` in the shard folders of `dir` (hidden folders skipped).
fn list_shards(dir: &Path) -> io::Result<Vec<FileName>> {
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
                .and_then(|s| s.strip_suffix(".kdf"))
                .and_then(FileName::parse)
            {
                out.push(name);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// fsyncs a directory, making the names in it durable.
/// Flushes a file and the folder holding its name. They are independent, so side by side on
/// the helper thread (~5% off a fully durable commit here; each flush is ~100-300 µs).
fn sync_with_folder(f: &File, folder: &Path) -> io::Result<()> {
    let (file, dir) = crate::util::par::join_io(|| f.sync_all(), || sync_dir(folder));
    file?;
    dir
}

pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Replaces `path` atomically with `bytes`: write a temporary file beside it, (fsync), rename
/// over, (fsync the directory). A reader sees the old or the new contents, never a mix.
pub fn write_atomic(path: &Path, bytes: &[u8], sync: bool, mode: Option<u32>) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::other("path has no parent"))?;
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let mut o = OpenOptions::new();
    o.write(true).create(true).truncate(true);
    if let Some(m) = mode {
        o.mode(m);
    }
    let mut f = o.open(&tmp)?;
    f.write_all(bytes)?;
    if sync {
        f.sync_all()?;
    }
    drop(f);
    fs::rename(&tmp, path)?;
    if sync {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Replaces `path` with `bytes` without allocating an inode: `spare` (created on first use) is
/// rewritten in place, (fsynced), then swapped with `path` by `renameat2(RENAME_EXCHANGE)`, so
/// `path` names the new contents and `spare` the old, ready for the next write. A reader that
/// opens `path` sees the old or the new file whole; a reader still holding the old file after
/// the swap may see it rewritten by the *next* replacement, so callers detect that (kiln's
/// commit counter) and re-read. Falls back to a plain rename where the exchange is unsupported.
///
/// Why: creating and deleting a file per commit makes ext4 without a journal scan its
/// "recently deleted" inodes on every create, which dominated commit time.
pub fn replace_via_spare(path: &Path, spare: &Path, bytes: &[u8], sync: bool) -> io::Result<()> {
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(spare)?;
    f.write_all_at(bytes, 0)?;
    f.set_len(bytes.len() as u64)?;
    if sync {
        f.sync_all()?;
    }
    drop(f);
    if !exchange(path, spare)? {
        fs::rename(spare, path)?;
    }
    if sync {
        sync_dir(
            path.parent()
                .ok_or_else(|| io::Error::other("path has no parent"))?,
        )?;
    }
    Ok(())
}

/// The head record's file: appended to in place, or replaced whole by [`replace_via_spare`],
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

/// `renameat2(from, to, flags)` relative to the working directory.
#[cfg(target_os = "linux")]
fn renameat2(from: &Path, to: &Path, flags: libc::c_uint) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let cf = std::ffi::CString::new(from.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let ct = std::ffi::CString::new(to.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: both pointers are valid NUL-terminated strings that outlive the call; the call
    // reads them and touches no other memory of ours.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            cf.as_ptr(),
            libc::AT_FDCWD,
            ct.as_ptr(),
            flags,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether a `renameat2` error means "not available here" (old kernel or file system).
#[cfg(target_os = "linux")]
fn unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL) | Some(libc::ENOSYS) | Some(libc::EOPNOTSUPP)
    )
}

/// Renames `from` to `to`, failing with `AlreadyExists` if `to` exists.
#[cfg(target_os = "linux")]
fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    match renameat2(from, to, libc::RENAME_NOREPLACE) {
        Err(e) if unsupported(&e) => rename_noreplace_fallback(from, to),
        r => r,
    }
}

#[cfg(not(target_os = "linux"))]
fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    rename_noreplace_fallback(from, to)
}

/// Where the kernel cannot refuse atomically: check, then rename (callers hold names that are
/// content hashes, so a lost race overwrites a file with the same bytes).
fn rename_noreplace_fallback(from: &Path, to: &Path) -> io::Result<()> {
    if to.exists() {
        return Err(io::ErrorKind::AlreadyExists.into());
    }
    fs::rename(from, to)
}

/// Atomically swaps two paths; `Ok(false)` when the platform or file system cannot.
#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> io::Result<bool> {
    match renameat2(a, b, libc::RENAME_EXCHANGE) {
        Ok(()) => Ok(true),
        // Not supported here, or `a` does not exist yet: the caller renames instead.
        Err(e) if unsupported(&e) || e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(not(target_os = "linux"))]
fn exchange(_: &Path, _: &Path) -> io::Result<bool> {
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_file_keeps_files_open_and_stays_exact() {
        let d = tempfile::tempdir().unwrap();
        let (p, sp) = (d.path().join("HEAD"), d.path().join("HEAD.next"));
        let mut h = HeadFile::new(p.clone(), sp.clone());
        // First write: no HEAD yet.
        h.replace(b"first version, long", false, false).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"first version, long");
        // Lengths go up and down; each read sees exactly the last bytes.
        for i in 0..40usize {
            let body = vec![b'a' + (i % 26) as u8; 1 + (i * 7919) % 97];
            h.replace(&body, i % 5 == 0, i % 3 != 0).unwrap();
            assert_eq!(fs::read(&p).unwrap(), body, "write {i}");
            if i % 9 == 4 {
                // Another writer replaces the file: this handle is told not to trust its cache.
                replace_via_spare(&p, &sp, b"other writer", false).unwrap();
                assert_eq!(fs::read(&p).unwrap(), b"other writer");
                h.forget();
            }
        }
    }

    #[test]
    fn replace_via_spare_swaps_without_new_inodes() {
        use std::os::unix::fs::MetadataExt;
        let d = tempfile::tempdir().unwrap();
        let (p, sp) = (d.path().join("HEAD"), d.path().join("HEAD.next"));
        write_atomic(&p, b"first version", true, None).unwrap();
        replace_via_spare(&p, &sp, b"second", true).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"second");
        let inodes = [
            fs::metadata(&p).unwrap().ino(),
            fs::metadata(&sp).unwrap().ino(),
        ];
        for i in 0..5u8 {
            let body = vec![b'a' + i; 3 + i as usize];
            replace_via_spare(&p, &sp, &body, false).unwrap();
            assert_eq!(fs::read(&p).unwrap(), body);
        }
        let mut now = [
            fs::metadata(&p).unwrap().ino(),
            fs::metadata(&sp).unwrap().ino(),
        ];
        let mut before = inodes;
        now.sort();
        before.sort();
        assert_eq!(now, before, "the two inodes are reused");
    }

    #[test]
    fn pending_files_are_named_when_whole_and_leave_nothing_behind() {
        let d = tempfile::tempdir().unwrap();
        let s = LocalStorage::new(d.path().join("files"));
        s.create_shards().unwrap();
        let tmp_empty = || fs::read_dir(d.path().join("files/.tmp")).unwrap().count() == 0;
        // Parts in any order; named once whole.
        let p = s.begin().unwrap();
        p.write_at(b"world", 5).unwrap();
        p.write_at(b"hello", 0).unwrap();
        let name = FileName::of(b"helloworld");
        s.finish(p, &name, 10, true).unwrap();
        assert_eq!(s.read(&name).unwrap(), b"helloworld");
        assert!(tmp_empty());
        // A reused file longer than the new one is cut to its length: a pooled one…
        let long = FileName::of(&[7u8; 20_000]);
        s.put(&long, &[7u8; 20_000], false).unwrap();
        s.remove(&long).unwrap();
        let p = s.begin().unwrap();
        p.write_at(b"short", 0).unwrap();
        let short = FileName::of(b"short");
        s.finish(p, &short, 5, false).unwrap();
        assert_eq!(s.read(&short).unwrap(), b"short");
        // …or a spare (retired, still under its name until reused).
        s.retire(&name).unwrap();
        let p = s.begin().unwrap();
        p.write_at(b"x", 0).unwrap();
        let x = FileName::of(b"x");
        s.finish(p, &x, 1, false).unwrap();
        assert_eq!(s.read(&x).unwrap(), b"x");
        assert!(s.read(&name).is_err(), "the spare was taken");
        assert_eq!(s.read(&short).unwrap(), b"short");
        // A pending file never named is removed.
        let p = s.begin().unwrap();
        p.write_at(b"abandoned", 0).unwrap();
        drop(p);
        assert!(tmp_empty());
        let mut names = s.list().unwrap();
        names.sort();
        let mut want = vec![short, x];
        want.sort();
        assert_eq!(names, want);
    }

    #[test]
    fn put_read_list_remove() {
        let d = tempfile::tempdir().unwrap();
        let s = LocalStorage::new(d.path().join("files"));
        let name = FileName::of(b"hello");
        s.put(&name, b"hello", true).unwrap();
        s.put(&name, b"hello", true).unwrap();
        assert_eq!(s.read_at(&name, 1, 3).unwrap(), b"ell");
        assert_eq!(s.len(&name).unwrap(), 5);
        assert_eq!(s.list().unwrap(), vec![name]);
        assert!(s.read_at(&name, 4, 3).is_err());
        s.remove(&name).unwrap();
        s.remove(&name).unwrap();
        assert_eq!(s.read(&name).unwrap_err().kind(), io::ErrorKind::NotFound);
        assert!(s.list().unwrap().is_empty());
        // The removed file's inode is reused, with exactly the new bytes.
        use std::os::unix::fs::MetadataExt;
        let pooled = fs::read_dir(d.path().join("files/.pool"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let ino = fs::metadata(&pooled).unwrap().ino();
        let other = FileName::of(b"hi");
        s.put(&other, b"hi", false).unwrap();
        assert_eq!(fs::metadata(s.path(&other)).unwrap().ino(), ino);
        assert_eq!(s.read(&other).unwrap(), b"hi");
        assert_eq!(s.list().unwrap(), vec![other]);
        // A second store handle (another process) finds pooled files by listing the pool.
        s.remove(&other).unwrap();
        let s2 = LocalStorage::new(d.path().join("files"));
        s2.put(&name, b"hello", true).unwrap();
        assert_eq!(fs::metadata(s2.path(&name)).unwrap().ino(), ino);
        assert_eq!(s2.read(&name).unwrap(), b"hello");
    }

    /// A crash can leave a renamed file under its old name too (the old folder not fsynced):
    /// removing the old name, as gc does for an unreferenced file, must not empty the file the
    /// new name holds, however large.
    #[test]
    fn removing_a_second_name_leaves_the_file_whole() {
        let d = tempfile::tempdir().unwrap();
        let s = LocalStorage::new(d.path().join("files"));
        s.create_shards().unwrap();
        let big = vec![5u8; 100_000];
        let live = FileName::of(&big);
        s.put(&live, &big, false).unwrap();
        let stale = FileName::of(b"stale name");
        fs::hard_link(s.path(&live), s.path(&stale)).unwrap();
        s.remove(&stale).unwrap();
        assert!(!s.path(&stale).exists());
        assert_eq!(s.read(&live).unwrap(), big);
        // And a retired large file is not kept as a spare (it goes to the pool, emptied).
        s.retire(&live).unwrap();
        assert!(!s.path(&live).exists());
    }

    /// Storing a name that is one of this process's spares makes it live again: the next put
    /// must not take it.
    #[test]
    fn a_spare_stored_again_is_not_reused() {
        let d = tempfile::tempdir().unwrap();
        let s = LocalStorage::new(d.path().join("files"));
        s.create_shards().unwrap();
        let a = FileName::of(b"aaaa");
        s.put(&a, b"aaaa", false).unwrap();
        s.retire(&a).unwrap();
        s.put(&a, b"aaaa", false).unwrap();
        let b = FileName::of(b"bbbb");
        s.put(&b, b"bbbb", false).unwrap();
        assert_eq!(s.read(&a).unwrap(), b"aaaa");
        assert_eq!(s.read(&b).unwrap(), b"bbbb");
        assert_eq!(s.list().unwrap().len(), 2);
    }

    /// With a reserve, a put that finds the pool low starts a thread that fills it with empty
    /// files; later puts take those inodes instead of allocating new ones.
    #[test]
    fn a_reserve_of_empty_files_is_kept_in_the_pool() {
        use std::os::unix::fs::MetadataExt;
        let d = tempfile::tempdir().unwrap();
        let s = LocalStorage::with_reserve(d.path().join("files"), 8);
        s.create_shards().unwrap();
        let pool = d.path().join("files/.pool");
        let first = FileName::of(b"first");
        s.put(&first, b"first", false).unwrap();
        let t = std::time::Instant::now();
        let inodes = loop {
            let v: Vec<u64> = fs::read_dir(&pool)
                .map(|r| r.map(|e| e.unwrap().metadata().unwrap().ino()).collect())
                .unwrap_or_default();
            if v.len() == 8 || t.elapsed() > std::time::Duration::from_secs(10) {
                break v;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        assert_eq!(inodes.len(), 8);
        // Empty, so no stored byte is in them.
        assert!(fs::read_dir(&pool)
            .unwrap()
            .all(|e| e.unwrap().metadata().unwrap().len() == 0));
        let next = FileName::of(b"next");
        s.put(&next, b"next", false).unwrap();
        assert!(inodes.contains(&fs::metadata(s.path(&next)).unwrap().ino()));
        assert_eq!(s.read(&next).unwrap(), b"next");
        // gc's clear_reusable keeps them: they hold no byte (it used to delete them, and
        // the next puts created them all again).
        drop(s);
        let s = LocalStorage::new(d.path().join("files"));
        assert_eq!(s.clear_reusable().unwrap(), (0, 0));
        assert_eq!(fs::read_dir(&pool).unwrap().count(), 7);
        // A pooled file with bytes goes.
        fs::write(pool.join("x.free"), b"sealed bytes").unwrap();
        assert_eq!(s.clear_reusable().unwrap(), (1, 12));
        assert_eq!(fs::read_dir(&pool).unwrap().count(), 7);
    }

    /// Retired files wait under their names (not listed) and are renamed straight to the next
    /// file's name; a dropped handle gives them to the pool; `clear_reusable` deletes them.
    #[test]
    fn retired_files_are_reused_in_place() {
        use std::os::unix::fs::MetadataExt;
        let d = tempfile::tempdir().unwrap();
        let s = LocalStorage::new(d.path().join("files"));
        s.create_shards().unwrap();
        let pool = d.path().join("files/.pool");
        let in_pool = || fs::read_dir(&pool).map(|r| r.count()).unwrap_or(0);
        let long = vec![7u8; 300];
        let a = FileName::of(&long);
        s.put(&a, &long, false).unwrap();
        let ino = fs::metadata(s.path(&a)).unwrap().ino();
        s.retire(&a).unwrap();
        // Still there under its name (a reader holding the old head reads it whole)...
        assert_eq!(fs::read(s.path(&a)).unwrap(), long);
        // ...but not a file any more for this handle, and not in the pool.
        assert!(s.list().unwrap().is_empty());
        assert_eq!(in_pool(), 0);
        // The next put renames it to its own name and holds exactly the new (shorter) bytes.
        let b = FileName::of(b"short");
        s.put(&b, b"short", false).unwrap();
        assert_eq!(fs::metadata(s.path(&b)).unwrap().ino(), ino);
        assert!(!s.path(&a).exists());
        assert_eq!(s.read(&b).unwrap(), b"short");
        assert_eq!(s.read_at(&b, 1, 3).unwrap(), b"hor");
        assert_eq!(s.list().unwrap(), vec![b]);
        // A compaction's streamed output reuses one too.
        s.retire(&b).unwrap();
        let c = s
            .put_with(false, &mut |w| {
                w.write_all(b"streamed")?;
                Ok(FileName::of(b"streamed"))
            })
            .unwrap();
        assert_eq!(fs::metadata(s.path(&c)).unwrap().ino(), ino);
        assert_eq!(s.read(&c).unwrap(), b"streamed");
        // Putting a name that is already there writes nothing and takes no spare.
        s.retire(&c).unwrap();
        s.put(&a, &long, false).unwrap();
        s.put(&a, &long, false).unwrap();
        assert_eq!(s.list().unwrap(), vec![a]);
        assert_eq!(fs::metadata(s.path(&a)).unwrap().ino(), ino);
        // Dropping the handle moves its spares into the pool: their names are gone.
        s.retire(&a).unwrap();
        let path_a = s.path(&a);
        drop(s);
        assert!(!path_a.exists());
        assert_eq!(in_pool(), 1);
        // clear_reusable deletes spares and pooled files with their bytes.
        let s = LocalStorage::new(d.path().join("files"));
        s.put(&b, b"short", false).unwrap(); // takes the pooled one
        assert_eq!(in_pool(), 0);
        s.put(&a, &long, false).unwrap(); // a new file
        s.retire(&b).unwrap();
        s.remove(&a).unwrap(); // into the pool
        assert!(s.path(&b).exists());
        assert_eq!(in_pool(), 1);
        let (n, bytes) = s.clear_reusable().unwrap();
        assert_eq!((n, bytes), (2, 300 + 5));
        assert!(!s.path(&b).exists());
        assert_eq!(in_pool(), 0);
    }
}
