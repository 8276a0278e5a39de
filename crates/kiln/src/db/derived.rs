//! Derived data: what the layers above keep beside a database's head record (its indexes),
//! and the store's files it keeps alive.
//!
//! One sealed file per database, `dbs/<name>/DERIVED`: named entries, each a definition and
//! state (opaque bytes, the upper layer's) and the files of the store's pool that state keeps
//! alive. Derived data is not part of the database's history and is never synced (each
//! replica derives its own from its documents); a fork copies it (the fork shares its
//! source's files, so its indexes too); a purge or a history cut clears every entry's state
//! and files, keeping its definition (the state may hold values of what they remove); a drop
//! removes it. Garbage collection keeps every file an entry names.
//!
//! Files written for derived data are ordinary sealed diff files holding tree nodes only
//! (`car::Writer::add_node`); [`DerivedNodes`] reads them back. Updates take
//! `dbs/<name>/DERIVED.lock` (an exclusive `flock`) and the store's GC lock shared, so no two
//! writers race and no gc takes a file between its write and the record naming it.

use super::*;
use crate::format::block::cbor::{Decoder, Encoder};
use crate::format::seal::{Purpose, Salt, SALT_LEN};
use crate::storage::write_atomic;

/// The level a derived file's index records (no diff file has it): garbage collection removes
/// such a file when nothing names it, never archives it (a purge clears derived data, which
/// may hold what it purges, and the archive would keep it).
pub(crate) const DERIVED_FILE_LEVEL: u8 = u8::MAX;

/// The derived record's file, in the database's folder.
pub(crate) const DERIVED: &str = "DERIVED";
const DERIVED_LOCK: &str = "DERIVED.lock";
/// Plaintext start of a derived record: magic, then the format version.
const MAGIC: &[u8; 8] = b"KILNDRV\0";
const VERSION: u32 = 1;
const PREFIX: usize = 8 + 4 + SALT_LEN;

/// The derived record a handle opened last, with the file it was read from held open.
#[derive(Default)]
struct DerivedCache(std::sync::Mutex<Option<KeptRecord>>);

/// A derived record as read, and its file. A record is never changed in place (every write
/// makes a new file and renames it over the old), and a file held open keeps its inode: while
/// the path names that inode, the record is the one read.
struct KeptRecord {
    /// Held open (never read again) so that its inode is not reused.
    _file: std::fs::File,
    meta: std::fs::Metadata,
    record: Arc<Derived>,
}

/// Whether two open files are the same file.
#[cfg(unix)]
fn same_file(a: &std::fs::Metadata, b: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    a.dev() == b.dev() && a.ino() == b.ino()
}

/// (Without inode numbers the record is read again every time.)
#[cfg(not(unix))]
fn same_file(_: &std::fs::Metadata, _: &std::fs::Metadata) -> bool {
    false
}

/// A database's derived entries, by name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Derived {
    pub entries: BTreeMap<String, DerivedEntry>,
}

/// One entry: the upper layer's definition and state, and the files the state keeps alive.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct DerivedEntry {
    /// What the entry is (kept when the state is cleared).
    pub def: Vec<u8>,
    /// What was derived (empty: nothing yet, or cleared).
    pub data: Vec<u8>,
    pub files: Vec<FileName>,
}

impl Derived {
    /// Every file some entry names, each once.
    pub fn files(&self) -> Vec<FileName> {
        let mut v: Vec<FileName> = self
            .entries
            .values()
            .flat_map(|e| e.files.iter().copied())
            .collect();
        v.sort();
        v.dedup();
        v
    }

    fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::new();
        e.array(self.entries.len());
        for (name, d) in &self.entries {
            e.array(4);
            e.str(name);
            e.bytes(&d.def);
            e.bytes(&d.data);
            e.array(d.files.len());
            for f in &d.files {
                e.bytes(&f.0);
            }
        }
        e.into_bytes()
    }

    fn decode(b: &[u8]) -> std::result::Result<Derived, CborError> {
        let mut d = Decoder::new(b);
        let mut out = Derived::default();
        for _ in 0..d.array()? {
            if d.array()? != 4 {
                return Err(CborError("derived entry"));
            }
            let name = d.str()?.to_owned();
            let def = d.bytes()?.to_vec();
            let data = d.bytes()?.to_vec();
            let n = d.array()?;
            let mut files = Vec::with_capacity(n.min(1024));
            for _ in 0..n {
                let f: [u8; 32] = d
                    .bytes()?
                    .try_into()
                    .map_err(|_| CborError("derived file name"))?;
                files.push(FileName(f));
            }
            out.entries.insert(name, DerivedEntry { def, data, files });
        }
        d.finish()?;
        Ok(out)
    }
}

/// Associated data of a derived record's sealed unit (the key is the lineage's own, so it
/// opens in no other lineage).
const AAD: &[u8] = b"kiln/derived/v1";

/// A derived record's plaintext, if `b` is one that opens under `key` (audits).
pub(crate) fn opens_with(b: &[u8], key: &Key) -> Option<Vec<u8>> {
    if b.len() < PREFIX || &b[..8] != MAGIC {
        return None;
    }
    let salt: Salt = b[12..PREFIX].try_into().ok()?;
    key.subkey(Purpose::Derived, &salt)
        .open(AAD, &b[PREFIX..])
        .ok()
}

/// Seals a derived record (under the lineage's key: a fork, of the same lineage, reads a copy).
fn seal(d: &Derived, key: &Key) -> std::io::Result<Vec<u8>> {
    let plain = d.encode();
    let salt = crate::format::seal::fresh_salt()?;
    let mut out = Vec::with_capacity(PREFIX + plain.len() + crate::format::seal::OVERHEAD);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&salt);
    key.subkey(Purpose::Derived, &salt).seal_into(
        crate::format::seal::random_nonce()?,
        AAD,
        &plain,
        &mut out,
    )?;
    Ok(out)
}

impl Database {
    fn derived_path(&self) -> PathBuf {
        self.inner.dir.join(DERIVED)
    }

    /// The database's derived entries (none when it has no record). The record last opened
    /// is kept with the handle, its file held open (see [`KeptRecord`]): while the record's
    /// path still names that file, it is not read again.
    pub(crate) fn derived(&self) -> Result<Arc<Derived>> {
        let path = self.derived_path();
        let now = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Arc::default()),
            Err(e) => return Err(Error::io(&path, e)),
        };
        let cache = self.upper_state::<DerivedCache>();
        let mut kept = cache.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(k) = &*kept {
            if same_file(&k.meta, &now) {
                return Ok(k.record.clone());
            }
        }
        let mut file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Arc::default()),
            Err(e) => return Err(Error::io(&path, e)),
        };
        let meta = file.metadata().map_err(|e| Error::io(&path, e))?;
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut file, &mut b).map_err(|e| Error::io(&path, e))?;
        let record = Arc::new(self.open_derived(&path, &b)?);
        *kept = Some(KeptRecord {
            _file: file,
            meta,
            record: record.clone(),
        });
        Ok(record)
    }

    fn open_derived(&self, path: &std::path::Path, b: &[u8]) -> Result<Derived> {
        let bad = |what: &str| Error::corrupt(path.display().to_string(), what);
        if b.len() < PREFIX || &b[..8] != MAGIC {
            return Err(bad("not a derived record"));
        }
        let v = u32::from_le_bytes([b[8], b[9], b[10], b[11]]);
        if v != VERSION {
            return Err(Error::NewerFormat {
                what: path.display().to_string(),
                version: v,
            });
        }
        let salt: Salt = b[12..PREFIX].try_into().map_err(|_| bad("salt"))?;
        let plain = self
            .inner
            .key
            .subkey(Purpose::Derived, &salt)
            .open(AAD, &b[PREFIX..])
            .map_err(|_| bad("derived record does not open with this database's key"))?;
        Derived::decode(&plain).map_err(|_| bad("derived record does not parse"))
    }

    /// Changes the derived entries: `f` gets the current ones (and a writer for new files)
    /// and changes them; they are written back sealed when it returns `Ok`. Serialized with
    /// every other update of this database's derived data, in any process.
    pub(crate) fn update_derived<T>(
        &self,
        f: impl FnOnce(&mut Derived, &DerivedWriter) -> Result<T>,
    ) -> Result<T> {
        // (First: a second update from within would wait on this thread's own locks.)
        let _inside = Reentry::enter()?;
        let env = &self.inner.store;
        let _gc = env.gc_shared()?;
        let lock_path = self.inner.dir.join(DERIVED_LOCK);
        let lock = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => Error::NoSuchDatabase(self.inner.name.clone()),
                _ => Error::io(&lock_path, e),
            })?;
        lock.lock().map_err(|e| Error::io(&lock_path, e))?;
        // A damaged record is derived data lost: replaced (its indexes are declared again).
        let (mut d, damaged) = match self.derived() {
            Err(e) if e.is_corruption() => (Derived::default(), true),
            r => ((*r?).clone(), false),
        };
        let before = d.clone();
        let out = f(&mut d, &DerivedWriter { db: self })?;
        if d != before || damaged {
            self.write_derived(&d)?;
        }
        Ok(out)
    }

    fn write_derived(&self, d: &Derived) -> Result<()> {
        let path = self.derived_path();
        if d.entries.is_empty() {
            return match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(&path, e)),
                _ => Ok(()),
            };
        }
        let bytes = seal(d, &self.inner.key).map_err(|e| Error::io(&path, e))?;
        write_atomic(&path, &bytes, self.durable(), None).map_err(|e| Error::io(&path, e))
    }

    /// Clears every derived entry's state and files, keeping its definition (a purge or a
    /// history cut: the state may hold what it removes).
    pub(crate) fn clear_derived(&self) -> Result<()> {
        if !self.derived_path().exists() || self.inner.store.writable("").is_err() {
            return Ok(());
        }
        self.update_derived(|d, _| {
            for e in d.entries.values_mut() {
                e.data.clear();
                e.files.clear();
            }
            Ok(())
        })
    }

    /// The files this database's derived entries keep alive (none when the record is
    /// damaged: derived data, rebuilt when next used).
    pub(crate) fn derived_file_names(&self) -> Result<Vec<FileName>> {
        match self.derived() {
            Err(e) if e.is_corruption() => Ok(Vec::new()),
            r => Ok(r?.files()),
        }
    }

    /// The sealed derived record as stored (a fork copies it), if any.
    pub(crate) fn derived_bytes(&self) -> Result<Option<Vec<u8>>> {
        let path = self.derived_path();
        match std::fs::read(&path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(&path, e)),
        }
    }

    /// A reader of tree nodes in derived files.
    pub(crate) fn derived_nodes(&self) -> DerivedNodes<'_> {
        DerivedNodes { db: self }
    }

    /// Whether this handle's store may write (an index on a read-only store is brought up to
    /// date in memory only).
    pub(crate) fn writable(&self) -> bool {
        self.inner.store.writable("").is_ok()
    }
}

thread_local! {
    static UPDATING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Marks this thread as inside an update of derived data: a second one from within (a map
/// function querying an index) would wait on the lock its own thread holds, forever.
struct Reentry;

impl Reentry {
    fn enter() -> Result<Reentry> {
        if UPDATING.with(|u| u.replace(true)) {
            return Err(Error::InvalidArgument(
                "an index's map function may not use indexes (it runs while an index is \
                 being updated)"
                    .into(),
            ));
        }
        Ok(Reentry)
    }
}

impl Drop for Reentry {
    fn drop(&mut self) {
        UPDATING.with(|u| u.set(false));
    }
}

/// Writes files for derived data (inside [`Database::update_derived`]).
pub(crate) struct DerivedWriter<'a> {
    db: &'a Database,
}

impl DerivedWriter<'_> {
    /// Writes `nodes` (CID, encoding) as one sealed file; returns its name and size.
    pub fn write_nodes<'b>(
        &self,
        nodes: impl Iterator<Item = (&'b Cid, &'b [u8])>,
    ) -> Result<(FileName, u64)> {
        let db = &self.db.inner;
        let nodes: Vec<(Cid, &[u8])> = nodes.map(|(c, b)| (*c, b)).collect();
        let meta = car::Meta {
            level: DERIVED_FILE_LEVEL,
            time: now_ms(),
            roots: Vec::new(),
            replaces: Vec::new(),
        };
        // Packed and sealed straight from the encodings (an index build's nodes are
        // megabytes: copied into one buffer first, they were written to fresh memory twice).
        let f = car::pack_nodes(&db.key, meta, &nodes).map_err(|e| Error::io(&db.dir, e))?;
        let name = f.name();
        let len = f.file_len() as u64;
        db.store
            .storage
            .put_parts(&name, &f.parts(), self.db.durable())
            .map_err(|e| Error::io(db.store.root.join("files"), e))?;
        db.indexes
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name, Arc::new(f.index));
        Ok((name, len))
    }
}

/// The share of the cache (one in this many bytes) an update's written nodes may take
/// there whole ([`DerivedNodes::keep_written`]).
const KEEP_WRITTEN_SHARE: usize = 8;

/// Reads tree nodes from derived files (their indexes opened once per handle, nodes through
/// the store's cache).
pub(crate) struct DerivedNodes<'a> {
    db: &'a Database,
}

impl DerivedNodes<'_> {
    /// The node `cid`, from whichever of `files` holds it.
    pub fn node(&self, files: &[FileName], cid: &Cid) -> Result<Arc<tree::Node>> {
        let db = &self.db.inner;
        let ck = CacheKey::Node(db.lineage, *cid);
        if let Some(Cached::Node(n, _)) = db.store.cache.get(&ck) {
            return Ok(n);
        }
        // A leaf an update kept as it wrote it (an update of the tree reads it as a node).
        if let Some(Cached::Leaf(l, _)) = db.store.cache.get(&CacheKey::Leaf(db.lineage, *cid)) {
            return Ok(Arc::new(l.to_node()));
        }
        for f in files {
            let index = self.index(f)?;
            let Some(e) = index.find(cid) else { continue };
            let (off, len) = *index
                .segs
                .get(e.seg as usize)
                .ok_or_else(|| self.damaged(f, "segment out of range"))?;
            let seg_key = CacheKey::Segment(*f, e.seg);
            let seg = match db.store.cache.get(&seg_key) {
                Some(Cached::Bytes(b)) => b,
                _ => {
                    let sealed =
                        db.store
                            .storage
                            .read_at(f, off, len as usize)
                            .map_err(|e| match e.kind() {
                                std::io::ErrorKind::NotFound => {
                                    Error::MissingFile(*f, db.name.clone())
                                }
                                _ => Error::io(db.store.storage.path(f), e),
                            })?;
                    let plain = index
                        .open_segment(&db.key, e.seg, &sealed)
                        .map_err(|_| self.damaged(f, "segment does not open"))?;
                    let plain = Arc::new(plain);
                    db.store.cache.insert(seg_key, Cached::Bytes(plain.clone()));
                    plain
                }
            };
            let bytes = seg
                .get(e.off as usize..(e.off + e.len) as usize)
                .ok_or_else(|| self.damaged(f, "block out of range"))?;
            let node = Arc::new(
                tree::Node::decode(bytes)
                    .map_err(|_| self.damaged(f, "tree node does not parse"))?,
            );
            db.store.cache.insert(
                ck,
                Cached::Node(
                    node.clone(),
                    Some(Place {
                        file: *f,
                        seg: e.seg,
                    }),
                ),
            );
            return Ok(node);
        }
        Err(Error::corrupt(
            db.name.clone(),
            format!("derived tree node {cid} is in none of its files"),
        ))
    }

    /// The leaf `cid` for reading its entries: as an update kept it ([`Self::keep_written`]),
    /// else as [`Self::node`] reads it.
    pub fn leaf(&self, files: &[FileName], cid: &Cid) -> Result<tree::LeafRef> {
        let db = &self.db.inner;
        if let Some(Cached::Leaf(l, _)) = db.store.cache.get(&CacheKey::Leaf(db.lineage, *cid)) {
            return Ok(tree::LeafRef::Leaf(l));
        }
        self.node(files, cid).map(tree::LeafRef::Node)
    }

    /// Keeps `nodes`, just written, in the store's cache: the first queries after an update
    /// read them without opening its file again. As nodes built in memory (no place in a
    /// file): the next update replaces some of them, so they are not kept as upper levels
    /// are. Only the upper levels when all of them would take more than
    /// [`KEEP_WRITTEN_SHARE`] of the cache (a large build would push out everything else).
    /// Leaves made as [`tree::Leaf`]s (a new tree's) are kept so, read back as leaves.
    pub fn keep_written<'n>(
        &self,
        nodes: impl Iterator<Item = (&'n Cid, &'n Arc<tree::Node>)>,
        leaves: impl Iterator<Item = (&'n Cid, &'n Arc<tree::Leaf>)>,
    ) {
        let db = &self.db.inner;
        let cache = &db.store.cache;
        let mut entries: Vec<(CacheKey, u8, Cached)> = nodes
            .map(|(c, n)| {
                let key = CacheKey::Node(db.lineage, *c);
                (key, n.level, Cached::Node(n.clone(), None))
            })
            .collect();
        entries.extend(leaves.map(|(c, l)| {
            let key = CacheKey::Leaf(db.lineage, *c);
            (key, 0, Cached::Leaf(l.clone(), None))
        }));
        let weight: usize = entries.iter().map(|(_, _, e)| e.weight()).sum();
        let all = weight <= cache.budget() / KEEP_WRITTEN_SHARE;
        for (key, _, entry) in entries.into_iter().filter(|(_, l, _)| all || *l > 0) {
            cache.insert(key, entry);
        }
    }

    /// Whether file `f` holds block `cid`.
    pub fn holds(&self, f: &FileName, cid: &Cid) -> Result<bool> {
        Ok(self.index(f)?.find(cid).is_some())
    }

    /// The file `f`'s index (opened on first use).
    fn index(&self, f: &FileName) -> Result<Arc<car::Index>> {
        let db = &self.db.inner;
        if let Some(i) = db.indexes.read().unwrap_or_else(|p| p.into_inner()).get(f) {
            return Ok(i.clone());
        }
        let st = &db.store.storage;
        let io = |e: std::io::Error| match e.kind() {
            std::io::ErrorKind::NotFound => Error::MissingFile(*f, db.name.clone()),
            _ => Error::io(st.path(f), e),
        };
        let len = st.len(f).map_err(io)?;
        if len < car::TRAILER_LEN as u64 {
            return Err(self.damaged(f, "file too short"));
        }
        let t = st
            .read_at(f, len - car::TRAILER_LEN as u64, car::TRAILER_LEN)
            .map_err(io)?;
        let (at, ilen) =
            car::parse_trailer(len, &t).map_err(|_| self.damaged(f, "trailer does not parse"))?;
        let tail = st
            .read_at(f, at, ilen as usize + car::TRAILER_LEN)
            .map_err(io)?;
        let index = Arc::new(
            car::Index::open(&db.key, &tail, at)
                .map_err(|_| self.damaged(f, "index does not open"))?,
        );
        db.indexes
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(*f, index.clone());
        Ok(index)
    }

    fn damaged(&self, f: &FileName, what: &str) -> Error {
        Error::corrupt(format!("file {f}"), what)
    }
}
