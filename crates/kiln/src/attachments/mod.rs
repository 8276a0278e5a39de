//! File attachments: the files attached in one document write go into one sealed *file-set*
//! (`format::fileset`), kept in the store's `filesets/` folder apart from the diff files,
//! chunked and sealed so they stream, seek and verify; the document names them under its
//! `_files` field (`model::doc::files`), so reading a document never loads file bytes, and time
//! travel finds the files a document had then. The database records which file-sets its
//! document versions name (each diff file's index), which garbage collection keeps.
//!
//! Uses: `format` (the file-set format), `storage` (file-sets are immutable named files),
//! `db` (documents, `_files`, revisions). Holds no document logic of its own: attaching is a
//! file-set written, then an ordinary write of the document with its `_files`.

use crate::db::{Committed, Database, Transaction};
use crate::error::{Error, Result};
use crate::format::block::cid::Cid;
use crate::format::fileset;
use crate::model::doc::files::{self as doc_files, FileMeta, FILES};
use crate::storage::local::content_map;
use crate::storage::FileName;
use serde::Serialize;
use serde_json::{Map, Value};
use std::io::{Read, Seek, SeekFrom};
use std::sync::Arc;

mod types;
pub use types::content_type_of;

/// A file to attach: its name in the document, its bytes (in memory or from any reader), its
/// content type (guessed from the name's extension unless given) and modified time (now unless
/// given, ms since the epoch).
pub struct Attachment<'a> {
    name: String,
    content_type: Option<String>,
    modified: Option<u64>,
    source: Box<dyn Read + 'a>,
}

impl std::fmt::Debug for Attachment<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attachment")
            .field("name", &self.name)
            .field("content_type", &self.content_type)
            .finish()
    }
}

impl<'a> Attachment<'a> {
    /// A file whose bytes are in memory.
    pub fn bytes(name: impl Into<String>, bytes: &'a [u8]) -> Attachment<'a> {
        Attachment::reader(name, bytes)
    }

    /// A file read from `source` as it is stored (a 1 GiB file streams through a chunk of
    /// memory).
    pub fn reader(name: impl Into<String>, source: impl Read + 'a) -> Attachment<'a> {
        Attachment {
            name: name.into(),
            content_type: None,
            modified: None,
            source: Box::new(source),
        }
    }

    /// Sets the content type (else guessed from the name's extension).
    pub fn content_type(mut self, t: impl Into<String>) -> Attachment<'a> {
        self.content_type = Some(t.into());
        self
    }

    /// Sets the modified time, ms since the Unix epoch (else now).
    pub fn modified(mut self, ms: u64) -> Attachment<'a> {
        self.modified = Some(ms);
        self
    }
}

/// An attached file, as its document's `_files` describes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FileInfo {
    /// Its name in the document.
    pub name: String,
    /// The CID of its bytes (raw codec, sha2-256).
    pub cid: Cid,
    /// Its length in bytes.
    pub size: u64,
    /// Its content type (`""` when unknown).
    #[serde(rename = "type")]
    pub content_type: String,
    /// Modified time, ms since the Unix epoch.
    pub modified: u64,
    /// The file-set holding its bytes.
    #[serde(serialize_with = "hex_name")]
    pub set: FileName,
}

fn hex_name<S: serde::Serializer>(n: &FileName, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.collect_str(n)
}

impl FileInfo {
    fn of(m: FileMeta) -> FileInfo {
        FileInfo {
            name: m.name,
            cid: m.cid,
            size: m.size,
            content_type: m.content_type,
            modified: m.modified,
            set: FileName(m.set),
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Bytes read from a source at a time while a file-set is written.
const COPY_BUF: usize = 256 * 1024;

/// Writes `files` into one new file-set of `db`'s store and returns their metadata (none and
/// nothing written for no files). Names are checked first; two files of one name are refused.
/// A file whose content the lineage stores already (in an earlier file-set, or earlier in this
/// one) is not stored again: its metadata names where it is (the store's content map, see
/// `storage::local::content_map`, finds it).
fn write_set(db: &Database, files: Vec<Attachment<'_>>) -> Result<Vec<FileMeta>> {
    if files.is_empty() {
        return Ok(Vec::new());
    }
    if files.len() > doc_files::MAX_FILES {
        return Err(Error::InvalidArgument(format!(
            "{} files given; a document names at most {}",
            files.len(),
            doc_files::MAX_FILES
        )));
    }
    let mut names = std::collections::HashSet::new();
    for a in &files {
        doc_files::check_name(&a.name).map_err(Error::InvalidArgument)?;
        if !names.insert(a.name.as_str()) {
            return Err(Error::InvalidArgument(format!(
                "file {:?} is given twice",
                a.name
            )));
        }
    }
    let env = db.env();
    let key = db.key();
    let dir = env.root.join(crate::store::FILESETS);
    let io = |e| Error::io(&dir, e);
    // From the first byte in `filesets/.tmp/` until the file-set has its name (garbage
    // collection empties `.tmp/`, and keeps a new file-set a while: see `store::gc`).
    let _gc = env.gc_shared()?;
    let pending = env.filesets.begin().map_err(io)?;
    let mut sink = PendingSink {
        pending: &pending,
        at: 0,
        buf: Vec::with_capacity(SINK_BUF),
        durable: db.durable(),
    };
    let mut w = fileset::Writer::new(&key, &mut sink).map_err(io)?;
    let mut buf = vec![0u8; COPY_BUF];
    // Each file's metadata, with the file-set it is in (`None`: this one) and its tag.
    let mut metas: Vec<(FileMeta, Option<FileName>)> = Vec::with_capacity(files.len());
    let mut here: std::collections::HashSet<Cid> = Default::default();
    let mut new_tags = Vec::new();
    for mut a in files {
        w.begin_file().map_err(io)?;
        loop {
            let n = match a.source.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::io(format!("the source of file {:?}", a.name), e)),
            };
            w.write(&buf[..n]).map_err(io)?;
        }
        let (_, cid, size) = w.end_file().map_err(io)?;
        let t = content_tag(&key, &cid);
        let elsewhere = if here.contains(&cid) {
            w.drop_last_file().map_err(io)?;
            None // earlier in this file-set
        } else if let Some(set) =
            content_map::find(&env.filesets, &dir, &t).filter(|s| touch(&env.filesets.path(s)))
        {
            w.drop_last_file().map_err(io)?;
            Some(set)
        } else {
            here.insert(cid);
            new_tags.push(t);
            None
        };
        metas.push((
            FileMeta {
                content_type: a
                    .content_type
                    .take()
                    .unwrap_or_else(|| content_type_of(&a.name).to_owned()),
                name: a.name,
                cid,
                size,
                modified: a.modified.unwrap_or_else(now_ms),
                set: [0; 32],
            },
            elsewhere,
        ));
    }
    let name = if here.is_empty() {
        None // every file is stored already: no file-set
    } else {
        let (name, len, _) = w.finish().map_err(io)?;
        std::io::Write::flush(&mut sink).map_err(io)?;
        pending.set_len(len).map_err(io)?;
        env.filesets
            .finish(pending, &name, len, db.durable())
            .map_err(io)?;
        // Only a file-set of one file is offered for reuse: a document naming a file-set
        // holds on to all of it, and a purge of another document must not leave its other
        // files stored for this one's sake.
        if here.len() == 1 {
            content_map::record(&dir, &name, &new_tags);
        }
        Some(name)
    };
    Ok(metas
        .into_iter()
        .map(|(mut m, elsewhere)| {
            m.set = elsewhere.or(name).map(|n| n.0).unwrap_or_default();
            m
        })
        .collect())
}

/// Marks a file-set written now, so garbage collection keeps it for the grace period although
/// no version names it yet (a write about to name it again may find it unnamed otherwise);
/// false if it cannot (then it is not reused).
fn touch(path: &std::path::Path) -> bool {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|f| f.set_modified(std::time::SystemTime::now()))
        .is_ok()
}

/// The content map's key for a file of content `cid` in `key`'s lineage.
fn content_tag(key: &crate::format::seal::Key, cid: &Cid) -> content_map::Tag {
    let t = key.tag(b"kiln/v1 content tag", cid.as_bytes());
    let mut out = [0u8; 16];
    out.copy_from_slice(&t[..16]);
    out
}

/// Bytes a file-set's writer gathers before it writes them out.
const SINK_BUF: usize = 1 << 20;

/// A file-set being written into a pending file at positions, so a file found stored already
/// can be taken out again (see [`fileset::Sink`]).
struct PendingSink<'a> {
    pending: &'a crate::storage::Pending,
    /// Where `buf` goes.
    at: u64,
    buf: Vec<u8>,
    /// The file-set is made durable at the end: the disk starts on each part as it is
    /// written, so the final flush has little left (a 1 GiB put with `Durability::Full`).
    durable: bool,
}

impl PendingSink<'_> {
    fn write_out(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.pending.write_at(b, self.at)?;
        if self.durable {
            self.pending.start_writeback(self.at, b.len() as u64);
        }
        self.at += b.len() as u64;
        Ok(())
    }
}

impl std::io::Write for PendingSink<'_> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if self.buf.len() + b.len() > SINK_BUF {
            self.flush()?;
        }
        if b.len() >= SINK_BUF {
            self.write_out(b)?;
        } else {
            self.buf.extend_from_slice(b);
        }
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            let b = std::mem::take(&mut self.buf);
            self.write_out(&b)?;
            self.buf = b;
            self.buf.clear();
        }
        Ok(())
    }
}

impl fileset::Sink for PendingSink<'_> {
    fn rewind(&mut self, len: u64) -> std::io::Result<()> {
        let end = self.at + self.buf.len() as u64;
        if len >= self.at && len <= end {
            self.buf.truncate((len - self.at) as usize);
        } else {
            self.buf.clear();
            self.at = len;
        }
        Ok(())
    }
}

/// `doc` (a JSON object) with `files` added to its `_files` (replacing entries of the same
/// names).
fn with_files(mut doc: Value, files: &[FileMeta]) -> Result<Value> {
    let Value::Object(obj) = &mut doc else {
        return Err(Error::InvalidDocument(
            "a document must be a JSON object".into(),
        ));
    };
    if files.is_empty() {
        return Ok(doc);
    }
    let entry = obj
        .entry(FILES)
        .or_insert_with(|| Value::Object(Map::new()));
    let Value::Object(m) = entry else {
        return Err(Error::InvalidDocument(
            "_files must be an object of file names".into(),
        ));
    };
    for f in files {
        m.insert(f.name.clone(), f.to_json());
    }
    Ok(doc)
}

/// Writes `files` as one file-set and returns their `_files` entries by name, with the
/// file-set's name (for an importer that names the same bytes again in later versions without
/// writing them twice, and takes the file-set back if it fails).
pub(crate) fn store_files(
    db: &Database,
    files: Vec<Attachment<'_>>,
) -> Result<Vec<(String, Value, FileName)>> {
    Ok(write_set(db, files)?
        .into_iter()
        .map(|m| (m.name.clone(), m.to_json(), FileName(m.set)))
        .collect())
}

/// The files a document names (none for none).
fn files_of(doc: &Value) -> Result<Vec<FileInfo>> {
    match doc.get(FILES) {
        None => Ok(Vec::new()),
        Some(v) => Ok(doc_files::parse(v)
            .map_err(|why| Error::corrupt("document", why))?
            .into_iter()
            .map(FileInfo::of)
            .collect()),
    }
}

/// How many times `attach` and `detach` re-read and retry when another writer changed the
/// document between their read and their write.
const RETRIES: usize = 16;

impl Database {
    /// Writes `doc` with `files` attached, in one commit: the files go into one new file-set
    /// (streamed: a file is never held whole in memory), `doc`'s `_files` names them (beside
    /// any entries `doc` carries already, as read); like [`Database::put`], the document is
    /// replaced whole.
    ///
    /// ```
    /// # fn main() -> kiln::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let db = kiln::Store::open(dir.path())?.create(Some("museum"))?;
    /// use kiln::Attachment;
    /// db.put_with_files(
    ///     &serde_json::json!({"_id": "vase", "title": "Blue vase"}),
    ///     vec![Attachment::bytes("thumb.jpg", b"...jpeg bytes...")],
    /// )?;
    /// let doc = db.get("vase")?.unwrap();
    /// assert_eq!(doc["_files"]["thumb.jpg"]["type"], "image/jpeg");
    /// // (A `FileReader` is `Read + Seek` too.)
    /// let bytes = db.open_file("vase", "thumb.jpg")?.read_range(0, 1 << 20)?;
    /// assert_eq!(bytes, b"...jpeg bytes...");
    /// # Ok(()) }
    /// ```
    pub fn put_with_files<T: Serialize + ?Sized>(
        &self,
        doc: &T,
        files: Vec<Attachment<'_>>,
    ) -> Result<Committed> {
        let doc = serde_json::to_value(doc)?;
        crate::model::doc::prepare(&doc)?; // refused before any file is written
        let metas = write_set(self, files)?;
        self.put(&with_files(doc, &metas)?)
    }

    /// Writes many documents, each with its files, in one transaction (one event): a file-set
    /// per document that has files (identical content stored once), then one commit. Every
    /// document is checked before any file is written.
    pub fn bulk_with_files<T: Serialize>(
        &self,
        docs: Vec<(T, Vec<Attachment<'_>>)>,
    ) -> Result<Committed> {
        let mut values = Vec::with_capacity(docs.len());
        for (d, _) in &docs {
            let v = serde_json::to_value(d)?;
            crate::model::doc::prepare(&v)?;
            values.push(v);
        }
        let mut out = Vec::with_capacity(values.len());
        for (v, (_, files)) in values.into_iter().zip(docs) {
            let metas = write_set(self, files)?;
            out.push(with_files(v, &metas)?);
        }
        self.bulk(&out)
    }

    /// Adds `files` to an existing document (replacing files of the same names; the others
    /// stay, read from the file-sets they are in): one new file-set and one commit. Another
    /// writer's change to the document meanwhile is kept (the document is read again and the
    /// files added to it). [`Error::NoSuchDocument`] when it has no live document.
    pub fn attach(&self, id: &str, files: Vec<Attachment<'_>>) -> Result<Committed> {
        let Some(_) = self.get_with_rev(id)? else {
            return Err(self.no_such_document(id));
        };
        let metas = write_set(self, files)?;
        self.rewrite(id, |doc| with_files(doc, &metas))
    }

    /// Removes files from a document (their bytes stay in their file-set while any kept
    /// version names them). Every name must be attached; [`Error::NoSuchFile`] names the
    /// first that is not, and nothing is written.
    pub fn detach(&self, id: &str, names: &[&str]) -> Result<Committed> {
        self.rewrite(id, |mut doc| {
            let files = doc.as_object_mut().and_then(|o| o.get_mut(FILES));
            let mut m = match files {
                Some(Value::Object(m)) => std::mem::take(m),
                _ => Map::new(),
            };
            for n in names {
                if m.remove(*n).is_none() {
                    return Err(Error::NoSuchFile {
                        db: self.name().to_owned(),
                        id: id.to_owned(),
                        name: (*n).to_owned(),
                    });
                }
            }
            if let Some(o) = doc.as_object_mut() {
                if m.is_empty() {
                    o.remove(FILES);
                } else {
                    o.insert(FILES.to_owned(), Value::Object(m));
                }
            }
            Ok(doc)
        })
    }

    /// Writes `change` of document `id`'s current version if the document is still at that
    /// version, else reads it again and retries.
    fn rewrite(&self, id: &str, change: impl Fn(Value) -> Result<Value>) -> Result<Committed> {
        for _ in 0..RETRIES {
            let Some((doc, rev)) = self.get_with_rev(id)? else {
                return Err(self.no_such_document(id));
            };
            let new = change(doc)?;
            match self.put_if(&new, Some(&rev)) {
                Err(Error::Conflict(_)) => continue,
                r => return r,
            }
        }
        Err(Error::Busy(self.name().to_owned()))
    }

    fn no_such_document(&self, id: &str) -> Error {
        Error::NoSuchDocument {
            db: self.name().to_owned(),
            ids: vec![id.to_owned()],
        }
    }

    /// The file-sets (attached files' bytes) the document versions of this database name,
    /// and their bytes: each file-set once, however many versions or documents name it (and a
    /// file attached to several documents is stored in one). File-sets not in this store
    /// (not fetched yet) count 0 bytes.
    pub fn file_set_usage(&self) -> Result<(usize, u64)> {
        let sets = self.fileset_refs()?;
        let storage = &self.env().filesets;
        let bytes = sets.iter().map(|s| storage.len(s).unwrap_or(0)).sum();
        Ok((sets.len(), bytes))
    }

    /// The files attached to document `id` (none when it has none or no live document), in
    /// name order.
    pub fn files(&self, id: &str) -> Result<Vec<FileInfo>> {
        match self.get(id)? {
            Some(d) => files_of(&d),
            None => Ok(Vec::new()),
        }
    }

    /// The files document `id` had as of event `at` (time travel).
    pub fn files_at(&self, id: &str, at: &Cid) -> Result<Vec<FileInfo>> {
        match self.get_at(id, at)? {
            Some(d) => files_of(&d),
            None => Ok(Vec::new()),
        }
    }

    /// Opens attached file `name` of document `id` for reading: a [`FileReader`] (`Read +
    /// Seek`) that opens only the chunks it reads, each checked.
    pub fn open_file(&self, id: &str, name: &str) -> Result<FileReader> {
        let files = self.files(id)?;
        self.open_listed(id, name, files)
    }

    /// [`Database::open_file`] of the file as document `id` had it at event `at`.
    pub fn open_file_at(&self, id: &str, name: &str, at: &Cid) -> Result<FileReader> {
        let files = self.files_at(id, at)?;
        self.open_listed(id, name, files)
    }

    fn open_listed(&self, id: &str, name: &str, files: Vec<FileInfo>) -> Result<FileReader> {
        let Some(info) = files.into_iter().find(|f| f.name == name) else {
            return Err(Error::NoSuchFile {
                db: self.name().to_owned(),
                id: id.to_owned(),
                name: name.to_owned(),
            });
        };
        FileReader::open(self, info)
    }
}

impl Transaction {
    /// [`Database::put_with_files`] inside a transaction: the file-set is written now, the
    /// document when the transaction commits (a file-set of a transaction never committed is
    /// left for garbage collection).
    pub fn put_with_files<T: Serialize + ?Sized>(
        &mut self,
        doc: &T,
        files: Vec<Attachment<'_>>,
    ) -> Result<String> {
        let doc = serde_json::to_value(doc)?;
        crate::model::doc::prepare(&doc)?;
        let metas = write_set(self.database(), files)?;
        self.put(&with_files(doc, &metas)?)
    }
}

/// Fetches file-set `set`, which this store does not hold, from the store's file-set source
/// into its `filesets/`, keeping it only if its bytes hash to its name.
/// [`Error::FileSetUnavailable`] when there is no source or it does not have it.
fn fetch(db: &Database, set: &FileName) -> Result<()> {
    let env = db.env();
    let source = env
        .fileset_source
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let unavailable = || Error::FileSetUnavailable(*set, db.name().to_owned());
    let Some(source) = source else {
        return Err(unavailable());
    };
    // Written in `filesets/.tmp/` first, which garbage collection empties.
    let _gc = env.gc_shared()?;
    let mut found = true;
    let mut wrong = false;
    let r = env.filesets.put_with(db.durable(), &mut |out| {
        let mut tee = Hashing {
            out,
            hash: blake3::Hasher::new(),
        };
        found = source.fetch(set, &mut tee)?;
        let name = FileName(*tee.hash.finalize().as_bytes());
        if !found || name != *set {
            wrong = found;
            return Err(std::io::Error::other("not the file-set asked for"));
        }
        Ok(name)
    });
    match r {
        Ok(_) => Ok(()),
        Err(_) if !found => Err(unavailable()),
        Err(_) if wrong => Err(Error::corrupt(
            format!("file-set {set}"),
            "the bytes its source gave do not hash to its name",
        )),
        Err(e) => Err(Error::io(format!("fetching file-set {set}"), e)),
    }
}

/// A sink that hashes what it passes on (a fetched file-set's name is checked as it comes).
struct Hashing<'a> {
    out: &'a mut dyn std::io::Write,
    hash: blake3::Hasher,
}

impl std::io::Write for Hashing<'_> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let n = self.out.write(b)?;
        self.hash.update(&b[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// An attached file opened for reading: `Read + Seek`, reading a chunk at a time (64 KiB of
/// plaintext), each chunk authenticated as it is opened, so damage or tampering is an error
/// naming the file-set, never wrong bytes.
pub struct FileReader {
    info: FileInfo,
    storage: Arc<crate::storage::LocalStorage>,
    index: fileset::Index,
    /// The file's number in its file-set.
    at: usize,
    pos: u64,
    /// The chunk last opened: its number and plaintext.
    chunk: Option<(u64, Vec<u8>)>,
    sealed: Vec<u8>,
    db: String,
}

impl std::fmt::Debug for FileReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileReader")
            .field("file", &self.info)
            .field("pos", &self.pos)
            .finish()
    }
}

impl FileReader {
    fn open(db: &Database, info: FileInfo) -> Result<FileReader> {
        let storage = db.env().filesets.clone();
        let set = info.set;
        let corrupt = |why: String| Error::corrupt(format!("file-set {set}"), why);
        let len = match storage.len(&set) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                fetch(db, &set)?;
                storage
                    .len(&set)
                    .map_err(|e| Error::io(format!("file-set {set}"), e))?
            }
            Err(e) => return Err(Error::io(format!("file-set {set}"), e)),
        };
        let io = |e: std::io::Error| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => corrupt("truncated".into()),
            _ => Error::io(format!("file-set {set}"), e),
        };
        if len < (fileset::HEADER_LEN + fileset::TRAILER_LEN) as u64 {
            return Err(corrupt("truncated".into()));
        }
        let t = storage
            .read_at(
                &set,
                len - fileset::TRAILER_LEN as u64,
                fileset::TRAILER_LEN,
            )
            .map_err(io)?;
        let (at, ilen) = fileset::parse_trailer(len, &t).map_err(|e| corrupt(e.to_string()))?;
        fileset::check_header(&storage.read_at(&set, 0, fileset::HEADER_LEN).map_err(io)?)
            .map_err(|e| corrupt(e.to_string()))?;
        let region = storage.read_at(&set, at, ilen as usize).map_err(io)?;
        let index =
            fileset::Index::open(&db.key(), &region, at).map_err(|e| corrupt(e.to_string()))?;
        let Some(n) = index.files.iter().position(|e| e.cid == info.cid) else {
            return Err(corrupt(format!(
                "holds no file {} (named by file {:?})",
                info.cid, info.name
            )));
        };
        if index.files[n].size != info.size {
            return Err(corrupt(format!(
                "file {:?} is {} bytes there, {} in its document",
                info.name, index.files[n].size, info.size
            )));
        }
        Ok(FileReader {
            info,
            storage,
            index,
            at: n,
            pos: 0,
            chunk: None,
            sealed: Vec::new(),
            db: db.name().to_owned(),
        })
    }

    /// The file's metadata.
    pub fn info(&self) -> &FileInfo {
        &self.info
    }

    /// Its length in bytes.
    pub fn len(&self) -> u64 {
        self.info.size
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.info.size == 0
    }

    /// Reads `len` bytes from `offset` (fewer at the end of the file), opening only the chunks
    /// they are in.
    pub fn read_range(&mut self, offset: u64, len: usize) -> Result<Vec<u8>> {
        let end = offset.saturating_add(len as u64).min(self.info.size);
        let mut out = Vec::with_capacity(end.saturating_sub(offset) as usize);
        self.pos = offset;
        while self.pos < end {
            let pos = self.pos;
            let c = self.chunk_for(pos)?;
            let from = (pos % fileset::CHUNK as u64) as usize;
            let take = (c.len() - from).min((end - pos) as usize);
            out.extend_from_slice(&c[from..from + take]);
            self.pos += take as u64;
        }
        Ok(out)
    }

    /// The plaintext of the chunk holding byte `pos`.
    fn chunk_for(&mut self, pos: u64) -> Result<&[u8]> {
        let j = pos / fileset::CHUNK as u64;
        if self.chunk.as_ref().map(|(n, _)| *n) != Some(j) {
            let e = &self.index.files[self.at];
            let (off, len) = e.chunk_at(j);
            let set = self.info.set;
            let name = &self.info.name;
            let corrupt =
                |why: String| Error::corrupt(format!("file-set {set} (file {name:?})"), why);
            self.storage
                .read_into(&set, off, len, &mut self.sealed)
                .map_err(|e| match e.kind() {
                    std::io::ErrorKind::UnexpectedEof => corrupt("truncated".into()),
                    std::io::ErrorKind::NotFound => Error::FileSetUnavailable(set, self.db.clone()),
                    _ => Error::io(format!("file-set {set}"), e),
                })?;
            let plain = self
                .index
                .open_chunk(self.at, j, &mut self.sealed)
                .map_err(|e| corrupt(e.to_string()))?
                .to_vec();
            self.chunk = Some((j, plain));
        }
        Ok(self
            .chunk
            .as_ref()
            .map(|(_, p)| p.as_slice())
            .unwrap_or(&[]))
    }
}

impl Read for FileReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pos >= self.info.size || buf.is_empty() {
            return Ok(0);
        }
        let pos = self.pos;
        let c = self.chunk_for(pos).map_err(std::io::Error::other)?;
        let from = (pos % fileset::CHUNK as u64) as usize;
        let n = (c.len() - from).min(buf.len());
        buf[..n].copy_from_slice(&c[from..from + n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for FileReader {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let target = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => self.info.size.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        match target {
            Some(n) => {
                self.pos = n;
                Ok(n)
            }
            None => Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "seek before the start of the file",
            )),
        }
    }
}
