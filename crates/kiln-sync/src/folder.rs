//! A remote in a folder (a mounted disk, a network share): the remote layout in files.
//!
//! ```text
//! ROOT/KILN-REMOTE              marker, JSON {"kiln_remote": 1}
//! ROOT/files/ab/<hash>.kdf      diff files, as a store names them
//! ROOT/filesets/ab/<hash>.kfs   file-sets
//! ROOT/heads/<db>.head          a database's head record: etag u64 LE ‖ the record's bytes
//! ROOT/heads/.lock              flock'd exclusively by whoever writes a head record
//! ROOT/proposals/<db>/<id>.prop       a contribution filed for <db>, sealed (create-only)
//! ROOT/proposals/<db>/<id>.decision   a moderator's decision on it, sealed (create-only)
//! ROOT/.tmp/                    uploads being written (renamed into place when whole)
//! ```
//!
//! Compare-and-swap of head records: a writer takes the lock, reads the record's etag, writes
//! the new record (a fresh random etag in front) to `.tmp/` and renames it into place, then lets
//! the lock go; readers take no lock (a rename replaces the record whole). The etag is random
//! per write, not a counter, so a record removed and made again never matches a version read
//! before. `flock` works between processes of one machine and on local disks; a folder shared
//! by another tool between machines (a synced folder, some network file systems) does not
//! honour it, and [`crate::probe`] cannot always tell: use such folders from one machine at a
//! time.

use crate::{check_db, check_proposal_record, Conflict, Etag, FileName, HeadRead, Kind, Remote};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// The folder layout's version (in `KILN-REMOTE`).
pub const LAYOUT_VERSION: u64 = 1;
const MARKER: &str = "KILN-REMOTE";

/// A remote in a folder (see the module doc for its layout).
#[derive(Debug)]
pub struct FolderRemote {
    root: PathBuf,
}

impl FolderRemote {
    /// Opens the remote in folder `root`, making it (and its marker) when absent. A folder that
    /// holds something else than a remote is refused (a typo must not scatter files into a
    /// user's folder).
    pub fn open(root: impl Into<PathBuf>) -> io::Result<FolderRemote> {
        let root = root.into();
        let marker = root.join(MARKER);
        match fs::read_to_string(&marker) {
            Ok(s) => {
                let v = s
                    .split(|c: char| !c.is_ascii_digit())
                    .find(|x| !x.is_empty())
                    .and_then(|x| x.parse::<u64>().ok());
                match v {
                    Some(LAYOUT_VERSION) => {}
                    Some(n) if n > LAYOUT_VERSION => {
                        return Err(io::Error::other(format!(
                            "the remote at {} has layout {n}, newer than this kiln's \
                             ({LAYOUT_VERSION}); upgrade kiln",
                            root.display()
                        )))
                    }
                    _ => {
                        return Err(io::Error::other(format!(
                            "{} is not a kiln remote (its {MARKER} is damaged)",
                            marker.display()
                        )))
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let empty = match fs::read_dir(&root) {
                    Ok(mut rd) => rd.next().is_none(),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => true,
                    Err(e) => return Err(e),
                };
                if !empty {
                    return Err(io::Error::other(format!(
                        "{} is not empty and not a kiln remote: refusing to make one there",
                        root.display()
                    )));
                }
                for d in ["files", "filesets", "heads", ".tmp"] {
                    fs::create_dir_all(root.join(d))?;
                }
                write_whole(
                    &root,
                    &marker,
                    format!("{{\"kiln_remote\": {LAYOUT_VERSION}}}\n").as_bytes(),
                )?;
            }
            Err(e) => return Err(e),
        }
        Ok(FolderRemote { root })
    }

    fn dir(&self, kind: Kind) -> (PathBuf, &'static str) {
        match kind {
            Kind::Diff => (self.root.join("files"), "kdf"),
            Kind::FileSet => (self.root.join("filesets"), "kfs"),
        }
    }

    fn path(&self, kind: Kind, name: &FileName) -> PathBuf {
        let (dir, ext) = self.dir(kind);
        let h = name.to_string();
        dir.join(&h[..2]).join(format!("{h}.{ext}"))
    }

    fn head_path(&self, db: &str) -> io::Result<PathBuf> {
        check_db(db)?;
        Ok(self.root.join("heads").join(format!("{db}.head")))
    }

    fn proposal_path(&self, db: &str, name: &str) -> io::Result<PathBuf> {
        check_db(db)?;
        check_proposal_record(name)?;
        Ok(self.root.join("proposals").join(db).join(name))
    }

    /// The lock head writers hold (released when the file is dropped).
    fn head_lock(&self) -> io::Result<File> {
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.root.join("heads").join(".lock"))?;
        f.lock()?;
        Ok(f)
    }
}

/// Writes `bytes` to `path` whole: into `ROOT/.tmp/` first, synced, then renamed, and the
/// folder synced.
fn write_whole(root: &Path, path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut staged = Staged::new(root);
    staged.write(path.to_owned(), bytes)?;
    staged.publish()
}

/// Files written whole into `ROOT/.tmp/` and then moved to their names together, made durable
/// together: data first (one `syncfs(2)` for a batch on Linux, an fsync per file otherwise),
/// then the renames (again one `syncfs`, or an fsync per folder). A name never holds partial
/// bytes, and every file is durable under its name when [`Staged::publish`] returns (before a
/// head record names it). Files not published are removed when dropped.
struct Staged<'a> {
    root: &'a Path,
    files: Vec<(PathBuf, PathBuf)>,
    bytes: u64,
}

/// Files from which one `syncfs` beats an fsync each (it flushes the whole file system, so
/// a single file is flushed alone).
const SYNCFS_FROM: usize = 4;
/// Bytes staged before they are published (a long push makes files durable as it goes).
const STAGE_BYTES: u64 = 256 << 20;

impl<'a> Staged<'a> {
    fn new(root: &'a Path) -> Staged<'a> {
        Staged {
            root,
            files: Vec::new(),
            bytes: 0,
        }
    }

    /// Writes `bytes` into a temporary file, to be moved to `path` (not synced yet).
    fn write(&mut self, path: PathBuf, bytes: &[u8]) -> io::Result<()> {
        let tmp_dir = self.root.join(".tmp");
        fs::create_dir_all(&tmp_dir)?;
        let mut r = [0u8; 8];
        getrandom::getrandom(&mut r).map_err(io::Error::other)?;
        let tmp = tmp_dir.join(format!("{}.part", u64::from_le_bytes(r)));
        self.files.push((tmp.clone(), path));
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        start_writeback(&f);
        self.bytes += bytes.len() as u64;
        Ok(())
    }

    fn full(&self) -> bool {
        self.bytes >= STAGE_BYTES
    }

    /// Moves the files written so far to their names, durably.
    fn publish(&mut self) -> io::Result<()> {
        if self.files.is_empty() {
            return Ok(());
        }
        let together = self.files.len() >= SYNCFS_FROM && kiln::syncfs_covers(self.root);
        if together {
            kiln::sync_file_system(self.root)?;
        } else {
            for (tmp, _) in &self.files {
                File::open(tmp)?.sync_all()?;
            }
        }
        let mut dirs: Vec<&Path> = Vec::new();
        for (tmp, path) in &self.files {
            let parent = path.parent().unwrap_or(self.root);
            if !parent.exists() {
                fs::create_dir_all(parent)?;
                // A new shard folder: its name in its own folder is made durable too.
                if let Some(up) = parent.parent().filter(|u| !dirs.contains(u)) {
                    dirs.push(up);
                }
            }
            fs::rename(tmp, path)?;
            if !dirs.contains(&parent) {
                dirs.push(parent);
            }
        }
        if together {
            kiln::sync_file_system(self.root)?;
        } else {
            for d in dirs {
                File::open(d)?.sync_all()?;
            }
        }
        self.files.clear();
        self.bytes = 0;
        Ok(())
    }
}

/// Starts writing a staged file to the disk without waiting, so the flush of its batch has
/// less left to do once the last file is written. Advisory: errors are the flush's to report.
fn start_writeback(f: &File) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: a valid descriptor; the call only schedules writeback of its pages.
        unsafe {
            libc::sync_file_range(f.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = f;
}

impl Drop for Staged<'_> {
    fn drop(&mut self) {
        for (tmp, _) in &self.files {
            let _ = fs::remove_file(tmp);
        }
    }
}

fn read_opt(path: &Path) -> io::Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// A head file's etag and record.
fn split_head(b: Vec<u8>, path: &Path) -> io::Result<(Etag, Vec<u8>)> {
    if b.len() < 8 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is shorter than its etag", path.display()),
        ));
    }
    let mut e = [0u8; 8];
    e.copy_from_slice(&b[..8]);
    Ok((
        Etag(format!("{:016x}", u64::from_le_bytes(e))),
        b[8..].to_vec(),
    ))
}

/// The etag of the head at `path`, if there is one.
fn etag_at(path: &Path) -> io::Result<Option<Etag>> {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut e = [0u8; 8];
    f.read_exact(&mut e)?;
    Ok(Some(Etag(format!("{:016x}", u64::from_le_bytes(e)))))
}

impl Remote for FolderRemote {
    fn location(&self) -> String {
        // (One spelling per folder: `DIR/` and `DIR/./` are `DIR`, as a store's memory of
        // syncs and of proposals filed is keyed by it.)
        std::path::absolute(&self.root)
            .unwrap_or_else(|_| self.root.clone())
            .components()
            .collect::<PathBuf>()
            .display()
            .to_string()
    }

    fn has_file(&self, kind: Kind, name: &FileName) -> io::Result<bool> {
        Ok(self.path(kind, name).exists())
    }

    fn refresh_makes_young(&self) -> bool {
        true
    }

    fn refresh_file(&self, kind: Kind, name: &FileName) -> io::Result<bool> {
        let touched = OpenOptions::new()
            .write(true)
            .open(self.path(kind, name))
            .and_then(|f| f.set_modified(std::time::SystemTime::now()));
        match touched {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn put_file(&self, kind: Kind, name: &FileName, bytes: &[u8]) -> io::Result<()> {
        let path = self.path(kind, name);
        // The same name is the same bytes: one there is made young again (a remote gc spares
        // young files: a push naming it again is as safe as one uploading it).
        if self.refresh_file(kind, name)? {
            return Ok(());
        }
        write_whole(&self.root, &path, bytes)
    }

    fn put_files(
        &self,
        kind: Kind,
        names: &[FileName],
        load: &mut dyn FnMut(usize) -> io::Result<Option<Vec<u8>>>,
    ) -> io::Result<Vec<bool>> {
        let mut out = vec![false; names.len()];
        let mut staged = Staged::new(&self.root);
        for (i, name) in names.iter().enumerate() {
            if self.refresh_file(kind, name)? {
                continue;
            }
            let Some(bytes) = load(i)? else {
                continue;
            };
            staged.write(self.path(kind, name), &bytes)?;
            out[i] = true;
            if staged.full() {
                staged.publish()?;
            }
        }
        staged.publish()?;
        Ok(out)
    }

    fn get_file(&self, kind: Kind, name: &FileName) -> io::Result<Option<Vec<u8>>> {
        read_opt(&self.path(kind, name))
    }

    fn get_file_range(
        &self,
        kind: Kind,
        name: &FileName,
        start: u64,
        end: u64,
    ) -> io::Result<Option<(Vec<u8>, u64)>> {
        use std::os::unix::fs::FileExt;
        let f = match File::open(self.path(kind, name)) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let len = f.metadata()?.len();
        let (s, e) = (start.min(len), end.min(len).max(start.min(len)));
        let mut b = vec![0u8; (e - s) as usize];
        f.read_exact_at(&mut b, s)?;
        Ok(Some((b, len)))
    }

    fn list_files(&self, kind: Kind) -> io::Result<Vec<(FileName, u64)>> {
        let (dir, ext) = self.dir(kind);
        let mut out = Vec::new();
        let rd = match fs::read_dir(&dir) {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e),
        };
        for shard in rd {
            let shard = shard?;
            if !shard.file_type()?.is_dir() {
                continue;
            }
            for f in fs::read_dir(shard.path())? {
                let f = f?;
                let n = f.file_name();
                let Some(name) = n
                    .to_str()
                    .and_then(|s| s.strip_suffix(ext)?.strip_suffix('.'))
                    .and_then(FileName::parse)
                else {
                    continue;
                };
                let age = f
                    .metadata()?
                    .modified()?
                    .elapsed()
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                out.push((name, age));
            }
        }
        out.sort_by_key(|(n, _)| *n);
        Ok(out)
    }

    fn delete_file(&self, kind: Kind, name: &FileName) -> io::Result<()> {
        match fs::remove_file(self.path(kind, name)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    fn read_head(&self, db: &str, known: Option<&Etag>) -> io::Result<HeadRead> {
        let path = self.head_path(db)?;
        if let Some(k) = known {
            // One small read when nothing changed (what a no-op sync costs).
            if etag_at(&path)?.as_ref() == Some(k) {
                return Ok(HeadRead::NotModified);
            }
        }
        match read_opt(&path)? {
            None => Ok(HeadRead::Absent),
            Some(b) => {
                let (etag, bytes) = split_head(b, &path)?;
                if known == Some(&etag) {
                    return Ok(HeadRead::NotModified);
                }
                Ok(HeadRead::Found { bytes, etag })
            }
        }
    }

    fn write_head(
        &self,
        db: &str,
        expected: Option<&Etag>,
        bytes: &[u8],
    ) -> io::Result<Result<Etag, Conflict>> {
        let path = self.head_path(db)?;
        let _lock = self.head_lock()?;
        let now = etag_at(&path)?;
        if now.as_ref() != expected {
            return Ok(Err(Conflict { now }));
        }
        let mut r = [0u8; 8];
        getrandom::getrandom(&mut r).map_err(io::Error::other)?;
        let mut b = Vec::with_capacity(8 + bytes.len());
        b.extend_from_slice(&r);
        b.extend_from_slice(bytes);
        write_whole(&self.root, &path, &b)?;
        Ok(Ok(Etag(format!("{:016x}", u64::from_le_bytes(r)))))
    }

    fn delete_head(&self, db: &str, expected: &Etag) -> io::Result<Result<(), Conflict>> {
        let path = self.head_path(db)?;
        let _lock = self.head_lock()?;
        let now = etag_at(&path)?;
        if now.as_ref() != Some(expected) {
            return Ok(Err(Conflict { now }));
        }
        fs::remove_file(&path)?;
        File::open(path.parent().unwrap_or(&self.root))?.sync_all()?;
        Ok(Ok(()))
    }

    fn put_proposal_record(&self, db: &str, name: &str, bytes: &[u8]) -> io::Result<bool> {
        crate::check_proposal_size(bytes)?;
        let path = self.proposal_path(db, name)?;
        let dir = path.parent().unwrap_or(&self.root).to_owned();
        if !dir.exists() {
            fs::create_dir_all(&dir)?;
            for d in [dir.parent().unwrap_or(&self.root), &self.root] {
                File::open(d)?.sync_all()?;
            }
        }
        // Written whole and synced in `.tmp/`, then linked to its name: a link fails where the
        // name is taken, so of two writers one keeps its record and the other is told.
        let mut staged = Staged::new(&self.root);
        staged.write(path.clone(), bytes)?;
        let tmp = staged.files[0].0.clone();
        File::open(&tmp)?.sync_all()?;
        let kept = match fs::hard_link(&tmp, &path) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
            Err(e) => return Err(e),
        };
        if kept {
            File::open(&dir)?.sync_all()?;
        }
        Ok(kept) // (the staged copy is removed as `staged` drops)
    }

    fn get_proposal_record(&self, db: &str, name: &str) -> io::Result<Option<Vec<u8>>> {
        read_opt(&self.proposal_path(db, name)?)
    }

    fn list_proposal_records(&self, db: &str) -> io::Result<Vec<String>> {
        check_db(db)?;
        let dir = self.root.join("proposals").join(db);
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        for e in rd {
            let n = e?.file_name();
            if let Some(n) = n.to_str().filter(|n| check_proposal_record(n).is_ok()) {
                out.push(n.to_owned());
            }
        }
        out.sort();
        Ok(out)
    }

    fn list_heads(&self) -> io::Result<Vec<(String, Etag)>> {
        let dir = self.root.join("heads");
        let mut out = Vec::new();
        for e in fs::read_dir(&dir)? {
            let e = e?;
            let n = e.file_name();
            let Some(db) = n.to_str().and_then(|s| s.strip_suffix(".head")) else {
                continue;
            };
            if check_db(db).is_err() {
                continue;
            }
            if let Some(etag) = etag_at(&e.path())? {
                out.push((db.to_owned(), etag));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// None: a folder keeps one record per database (written by compare-and-swap), never one
    /// per replica; answered without listing the folder (the trait's default lists it all).
    fn list_replica_heads(&self, db: &str) -> io::Result<Vec<(String, Etag)>> {
        check_db(db)?;
        Ok(Vec::new())
    }
}
