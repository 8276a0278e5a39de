//! The head record: the one small mutable object per database. It names the clock heads, the
//! document-tree root of the current state and the live files; opening a database reads it and
//! nothing else.
//!
//! Version 2 is a short log: a snapshot of the whole head followed by deltas, one per commit,
//! each sealed on its own; a commit appends ~250 bytes instead of rewriting every file
//! reference. A writer starts a fresh file (a single snapshot) when files are removed or the
//! log grows past [`MAX_DELTAS`] / [`MAX_LOG_BYTES`].
//!
//! Version 3 adds *file records*: a fully durable commit of a small diff appends the diff
//! file's bytes to the log right before its delta and syncs the log alone, one flush instead
//! of three (the diff file, its folder, the log). The diff file itself is written unsynced; if
//! a power cut loses it, the copy in the log restores it ([`embedded_file`]). A snapshot drops
//! the copies, so the writer syncs such files still live before it writes one.
//!
//! Version 4 seals each log under a key of its own: its header carries a fresh random salt
//! (drawn when the snapshot starting the log is written), its records are sealed under
//! HKDF(lineage key, salt) (see `seal`), each under a fresh random nonce (a record's offset
//! is not unique: after a torn append the next writer writes at the same offset). Its
//! snapshot also gains `scrub`: a purge committed but not yet finished (its versions may
//! still be stored somewhere in the store), finished by the next open, write or garbage
//! collection. The record framing and delta bodies are version 3's.
//!
//! Version 5's snapshot gains `shape`: where the database's tree nodes end ([`TreeShape`];
//! code 1 for every database written before, 2 for databases created since). Otherwise as 4.
//!
//! ```text
//! v5: as v4; the snapshot body has "shape"
//! v4: "KILNHEAD" ‖ 4 u32 LE ‖ lineage (16) ‖ salt (32) ‖ record+   (records as in v3, sealed
//!     under the log's key; the snapshot body has "scrub")
//! v3: "KILNHEAD" ‖ 3 u32 LE ‖ lineage (16) ‖ record+
//!     record = len u32 LE ‖ !len u32 LE ‖ sealed(aad, body)     (len = sealed length, < 2^31)
//!     aad    = "kiln/head/v2" ‖ lineage ‖ offset of the record u64 LE ‖ kind u8
//!              (0 snapshot, 1 delta, 2 file)
//!     a file record has bit 31 of len (and so of !len's complement) set; its body is the
//!     file's name (32) ‖ the file's bytes, and the next record is the delta adding the file
//!     the first record is a snapshot, every later one a delta or a file record
//! v2: the same without file records
//! v1: "KILNHEAD" ‖ 1 u32 LE ‖ lineage (16) ‖ sealed("kiln/head/v1" ‖ lineage, snapshot body)
//! ```

use crate::format::block::cbor::{CborError, Decoder, Encoder};
use crate::format::block::cid::Cid;
use crate::format::car::{FileName, FormatError};
pub use crate::format::filter::Filter;
use crate::format::seal::{Key, Salt, SealError, SubKey, SALT_LEN};
use std::sync::Arc;

/// A document tree's root as the head record names it: the root node's CID, or `None` for
/// the empty tree.
pub type Root = Option<Cid>;

/// A lineage id: databases that share files share a lineage (and its key). The head record
/// names it in plaintext, so a reader can find the key.
pub type Lineage = [u8; 16];

/// A lineage id as text (a UUID).
pub fn lineage_string(l: &Lineage) -> String {
    uuid::Uuid::from_bytes(*l).hyphenated().to_string()
}

pub const MAGIC: &[u8; 8] = b"KILNHEAD";
/// The version this kiln writes; it reads 1 to 6. (A log of an earlier version is never
/// appended to: the next commit replaces it with a snapshot of this version.)
pub const VERSION: u32 = 6;
/// The first version whose snapshot may carry the database's own metadata (`"meta"`).
const META: u32 = 6;
/// Largest metadata record (JSON text) a head record carries.
pub const MAX_META: usize = 16 * 1024;
/// The first version whose deltas may take the short form (an array that leaves out what a
/// commit does not change: see [`Head::delta_body`]).
const SHORT_DELTAS: u32 = 6;
/// The first version whose snapshot names the tree shape (before: [`TreeShape::Mod16`]).
const SHAPED: u32 = 5;
/// The first version whose logs have a key of their own (a salt in the header).
const SALTED: u32 = 4;
/// Bytes before the first record: magic, version, lineage (and the salt from version 4).
fn prefix_len(version: u32) -> usize {
    8 + 4 + 16 + if version >= SALTED { SALT_LEN } else { 0 }
}
const MIN_PREFIX: usize = 8 + 4 + 16;
/// Deltas after which a writer starts a fresh snapshot.
pub const MAX_DELTAS: u32 = 128;
/// Log length after which a writer starts a fresh snapshot.
pub const MAX_LOG_BYTES: u64 = 64 * 1024;
/// Largest sealed record accepted (a snapshot of ~1 M file references).
const MAX_RECORD: u32 = 64 << 20;
/// Largest diff file a commit copies into the log (larger ones are synced in place).
pub const MAX_FILE_RECORD: usize = 64 * 1024;
/// Bytes of file records a log holds before a writer syncs files in place instead: the
/// default compaction threshold's worth of small diffs, so in steady use the log's copies are
/// dropped by the compaction that makes their files durable anyway.
pub const MAX_FILE_BYTES: u64 = 1 << 20;
/// Marks a file record in a record's length field.
const FILE_FLAG: u32 = 1 << 31;

/// Where a read head file's records end, so a writer can append the next delta.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Log {
    /// Format version of the file (1: cannot be appended to).
    pub version: u32,
    /// End of the last valid record.
    pub end: u64,
    /// End of the snapshot record (where the deltas start).
    pub snapshot_end: u64,
    /// The file's length (more than `end` after a torn append).
    pub len: u64,
    /// Deltas after the snapshot.
    pub deltas: u32,
    /// Bytes of file records (version 3).
    pub file_bytes: u64,
    /// The files whose bytes the log holds (file records each followed by their delta).
    pub files: Vec<FileName>,
    /// The salt of the log's key (version 4 on).
    pub salt: Option<Salt>,
}

impl Log {
    /// True when the file holds more than its whole records: what is left of an append that
    /// never finished (a crash; never acknowledged), which readers skip and the next writer
    /// cuts off. (A reader can also catch a writer's append half done.)
    pub fn torn(&self) -> bool {
        self.len > self.end
    }

    /// The log of a head file just written whole by [`Head::seal`] (its snapshot alone).
    pub fn fresh(sealed: &[u8]) -> Log {
        let version = sealed
            .get(8..12)
            .map_or(0, |v| u32::from_le_bytes([v[0], v[1], v[2], v[3]]));
        Log {
            version,
            end: sealed.len() as u64,
            snapshot_end: sealed.len() as u64,
            len: sealed.len() as u64,
            salt: salt_of(sealed, version),
            ..Log::default()
        }
    }

    /// True when the next head can go in as a delta appended to this file: fewer than
    /// [`MAX_DELTAS`] deltas and [`MAX_LOG_BYTES`] of them after the snapshot (the snapshot's
    /// own size, which grows with the files' filters, does not count: a snapshot larger than
    /// that made every commit write a new one).
    pub fn appendable(&self) -> bool {
        self.version == VERSION
            && self.deltas < MAX_DELTAS
            && self.end.saturating_sub(self.snapshot_end + self.file_bytes) < MAX_LOG_BYTES
    }

    /// True when the next delta can go in with a file record of `len` bytes of file.
    pub fn can_hold_file(&self, len: usize) -> bool {
        self.version >= 3
            && self.appendable()
            && len <= MAX_FILE_RECORD
            && self.file_bytes + len as u64 <= MAX_FILE_BYTES
    }
}

/// A live file and what it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileRef {
    pub name: FileName,
    /// 0: one transaction's diff; n ≥ 1: produced by compaction.
    pub level: u8,
    pub size: u64,
    /// Length of the sealed index just before the trailer (lets a reader fetch it in one read).
    pub index_len: u32,
    /// Lowest and highest height of the events in the file: a document written at height h is
    /// in a file whose range holds h.
    pub heights: (u64, u64),
    /// Which blocks the file may hold (see [`Filter`]), so a lookup skips files without
    /// reading their index.
    pub filter: Filter,
}

/// Where a database's tree nodes end: part of the format (it decides every root CID). A
/// database keeps one shape for its whole life, so that every replay of its writes (a reader
/// rebuilding the deferred tree, `verify`, a replica) builds the same nodes. The rules
/// themselves are the tree's (`model::tree`); head records carry the code (version 5 on).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum TreeShape {
    /// Code 1; every database created before head records of version 5. A node ends after
    /// an item whose hash is ≡ 0 mod 16. Node sizes are geometric: 16 items on average, but
    /// the node holding a random key has ~31 (size-biased), and keys chosen to avoid
    /// boundaries make nodes of any size.
    Mod16,
    /// Code 2; databases created since. A node ends after its item at position `p` (from 1)
    /// when `p` ≥ 8 and the item's hash is ≡ 0 mod 8, or when `p` = 24: never fewer than 8
    /// items (but a level's last node), never more than 24, ~14 on average and ~16 for the
    /// node holding a random key. A random read decrypts and hashes about half the bytes of a
    /// `Mod16` tree's, and a random update rewrites half the leaf.
    #[default]
    Bounded,
}

impl TreeShape {
    /// The code in head records.
    pub fn code(self) -> u64 {
        match self {
            TreeShape::Mod16 => 1,
            TreeShape::Bounded => 2,
        }
    }

    /// The shape of a head record's code.
    pub fn from_code(c: u64) -> Option<TreeShape> {
        match c {
            1 => Some(TreeShape::Mod16),
            2 => Some(TreeShape::Bounded),
            _ => None,
        }
    }
}

/// The decoded head record.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Head {
    /// Number of times this record has been written (each commit or compaction).
    pub seq: u64,
    /// Live (non-deleted) documents in the current state.
    pub docs: u64,
    /// Document-tree root of the current state (the merge of all heads).
    pub root: Option<Cid>,
    /// Root of the newest tree whose nodes are all in the files (written by the last
    /// compaction of level 0). The current tree is this tree with the writes of the events in
    /// the level-0 files applied; level-0 files hold no tree nodes, a writer keeps the new
    /// nodes in memory and a reader rebuilds them. Equal to `root` when nothing is pending.
    pub base: Option<Cid>,
    /// Live files, newest first.
    pub files: Arc<Vec<FileRef>>,
    /// Clock heads, sorted.
    pub heads: Vec<Cid>,
    /// Events in the clock.
    pub events: u64,
    /// When compaction last ran (ms since the Unix epoch), 0 for never.
    pub compacted: u64,
    /// Document versions (value CIDs) purged by purge events, sorted: their blocks are gone
    /// on purpose, and reads and `verify` say so.
    pub purged: Vec<Cid>,
    /// Events whose history was dropped (`compact --drop-history-before`), sorted, each with
    /// the tree root of the state at that event (`None`: empty). Their parents are gone; walks
    /// stop at them and reads consult the tree instead.
    pub cut: Vec<(Cid, Option<Cid>)>,
    /// A purge (or a merge that brought purged versions) committed but not yet finished:
    /// purged versions may still be stored in files, in the store's reuse pool, the archive
    /// or the previous head record. Whoever opens or writes the database, or `gc`, finishes
    /// it and clears the flag (see `Database::purge`). Version 4 on.
    pub scrub: bool,
    /// Where the database's tree nodes end (version 5 on; [`TreeShape::Mod16`] before).
    pub shape: TreeShape,
    /// The database's own metadata: a JSON object as compact text (a title, tags: what its
    /// users set), empty for none. Version 6 on; at most [`MAX_META`] bytes.
    pub meta: String,
}

impl Head {
    /// The live files, to change (shared with the heads this one was cloned from until then:
    /// a head is cloned several times a commit, its files only copied when one changes).
    pub fn files_mut(&mut self) -> &mut Vec<FileRef> {
        Arc::make_mut(&mut self.files)
    }
}

impl Head {
    /// The state-at-event tree root of a cut event (`None` when `e` is not a cut event).
    pub fn cut_root(&self, e: &Cid) -> Option<Root> {
        self.cut
            .binary_search_by(|(c, _)| c.cmp(e))
            .ok()
            .map(|i| self.cut[i].1)
    }
}

impl Head {
    fn encode_body(&self) -> Vec<u8> {
        self.encode_body_of(VERSION)
    }

    /// The snapshot body of format `version` (2 on; `scrub` from 4).
    fn encode_body_of(&self, version: u32) -> Vec<u8> {
        let mut e = Encoder::new();
        let meta = version >= META && !self.meta.is_empty();
        e.map(match version {
            SHAPED.. => 12 + usize::from(meta),
            4 => 11,
            _ => 10,
        });
        e.str("cut");
        e.array(self.cut.len());
        for (c, r) in &self.cut {
            e.array(2);
            e.bytes(c.as_bytes());
            match r {
                Some(r) => e.bytes(r.as_bytes()),
                None => e.null(),
            }
        }
        e.str("seq");
        e.u64(self.seq);
        e.str("base");
        e.opt_link(self.base.as_ref());
        e.str("docs");
        e.u64(self.docs);
        if meta {
            e.str("meta");
            e.bytes(self.meta.as_bytes());
        }
        e.str("root");
        e.opt_link(self.root.as_ref());
        e.str("files");
        encode_files(&mut e, &self.files);
        e.str("heads");
        e.array(self.heads.len());
        for h in &self.heads {
            e.link(h);
        }
        if version >= 4 {
            e.str("scrub");
            e.bool(self.scrub);
        }
        if version >= SHAPED {
            e.str("shape");
            e.u64(self.shape.code());
        }
        e.str("events");
        e.u64(self.events);
        e.str("purged");
        e.cid_array(&self.purged);
        e.str("compacted");
        e.u64(self.compacted);
        e.into_bytes()
    }

    /// A snapshot body: version 1 has no `base` (its diffs hold their tree nodes).
    fn decode_body(b: &[u8], version: u32) -> Result<Head, CborError> {
        let mut d = Decoder::new(b);
        let fields = match version {
            1 => 7,
            2 | 3 => 10,
            4 => 11,
            _ => 12,
        };
        let n = d.map()?;
        // (Version 6 on: one more when the snapshot carries metadata, checked below.)
        if n != fields && !(version >= META && n == fields + 1) {
            return Err(CborError("head: wrong number of fields"));
        }
        let mut cut: Vec<(Cid, Option<Cid>)> = Vec::new();
        if version > 1 {
            d.key("cut")?;
            let n = d.array()?;
            for _ in 0..n {
                if d.array()? != 2 {
                    return Err(CborError("head: cut entry must be [event, root]"));
                }
                let c = Cid::from_bytes(d.bytes()?).ok_or(CborError("head: bad cut event"))?;
                let r = if d.is_null()? {
                    d.null()?;
                    None
                } else {
                    Some(Cid::from_bytes(d.bytes()?).ok_or(CborError("head: bad cut root"))?)
                };
                if cut.last().is_some_and(|(p, _)| *p >= c) {
                    return Err(CborError("head: cut list not sorted"));
                }
                cut.push((c, r));
            }
        }
        d.key("seq")?;
        let seq = d.u64()?;
        let base = if version == 1 {
            None
        } else {
            d.key("base")?;
            d.opt_link()?
        };
        d.key("docs")?;
        let docs = d.u64()?;
        let meta = if n > fields {
            d.key("meta")?;
            let m = std::str::from_utf8(d.bytes()?)
                .map_err(|_| CborError("head: metadata is not UTF-8"))?;
            if m.is_empty() || m.len() > MAX_META {
                return Err(CborError("head: metadata length out of range"));
            }
            m.to_owned()
        } else {
            String::new()
        };
        d.key("root")?;
        let root = d.opt_link()?;
        let base = if version == 1 { root } else { base };
        d.key("files")?;
        let files = decode_files(&mut d)?;
        d.key("heads")?;
        let n = d.array()?;
        let mut heads = Vec::with_capacity(n.min(1024));
        for _ in 0..n {
            heads.push(d.link()?);
        }
        let scrub = if version >= 4 {
            d.key("scrub")?;
            d.bool()?
        } else {
            false
        };
        let shape = if version >= SHAPED {
            d.key("shape")?;
            TreeShape::from_code(d.u64()?).ok_or(CborError("head: unknown tree shape"))?
        } else {
            TreeShape::Mod16
        };
        d.key("events")?;
        let events = d.u64()?;
        let purged = if version > 1 {
            d.key("purged")?;
            d.cid_array()?
        } else {
            Vec::new()
        };
        d.key("compacted")?;
        let compacted = d.u64()?;
        d.finish()?;
        Ok(Head {
            purged,
            scrub,
            shape,
            meta,
            cut,
            seq,
            docs,
            root,
            base,
            files: Arc::new(files),
            heads,
            events,
            compacted,
        })
    }

    /// The stored form: a head file of today's version holding one snapshot record, the
    /// start of a log with a key of its own (a fresh salt). Fails when the system's random
    /// source does.
    pub fn seal(&self, lineage: &Lineage, key: &Key) -> std::io::Result<Vec<u8>> {
        let body = self.encode_body();
        let salt = crate::format::seal::fresh_salt()?;
        let prefix = prefix_len(VERSION);
        let mut out = Vec::with_capacity(prefix + 8 + body.len() + crate::format::seal::OVERHEAD);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(lineage);
        out.extend_from_slice(&salt);
        let k = RecordKey::Log(key.log_key(&salt));
        push_record(&mut out, prefix as u64, lineage, &k, SNAPSHOT, &body)?;
        Ok(out)
    }

    /// The record that turns `prev` (stored with `log`) into `self` when appended at `log.end`,
    /// or `None` when `self` is not `prev` plus new files at the front (a fresh snapshot is then
    /// written instead).
    pub fn seal_delta(
        &self,
        prev: &Head,
        log: &Log,
        lineage: &Lineage,
        key: &Key,
    ) -> std::io::Result<Option<Vec<u8>>> {
        if !log.appendable()
            || self.files.len() < prev.files.len()
            || self.purged != prev.purged
            || self.cut != prev.cut
            || self.scrub != prev.scrub
            || self.shape != prev.shape
            || self.meta != prev.meta
        {
            return Ok(None);
        }
        let added = self.files.len() - prev.files.len();
        if self.files[added..] != prev.files[..] {
            return Ok(None);
        }
        let body = self.delta_body(prev, added);
        let mut out = Vec::with_capacity(body.len() + 64);
        let k = RecordKey::of_log(log, key)?;
        push_record(&mut out, log.end, lineage, &k, DELTA, &body)?;
        Ok(Some(out))
    }

    /// The body of a delta adding this head's first `added` files to `prev`. A commit's delta
    /// takes the short form, an array `[add, seq, docs, root, heads, events]`, when its `base`
    /// and `compacted` are `prev`'s (a third of a commit's head record bytes were those two
    /// and the field names). Anything else writes the map. (`seq` stays: it tells the next
    /// commit's delta from an older one when an append was torn.)
    fn delta_body(&self, prev: &Head, added: usize) -> Vec<u8> {
        let mut e = Encoder::new();
        if self.base == prev.base && self.compacted == prev.compacted {
            e.array(6);
            encode_files(&mut e, &self.files[..added]);
            e.u64(self.seq);
            e.u64(self.docs);
            e.opt_link(self.root.as_ref());
            encode_links(&mut e, &self.heads);
            e.u64(self.events);
            return e.into_bytes();
        }
        e.map(8);
        e.str("add");
        encode_files(&mut e, &self.files[..added]);
        e.str("seq");
        e.u64(self.seq);
        e.str("base");
        e.opt_link(self.base.as_ref());
        e.str("docs");
        e.u64(self.docs);
        e.str("root");
        e.opt_link(self.root.as_ref());
        e.str("heads");
        encode_links(&mut e, &self.heads);
        e.str("events");
        e.u64(self.events);
        e.str("compacted");
        e.u64(self.compacted);
        e.into_bytes()
    }

    /// The file record holding diff file `name`'s `bytes`, to append to `log` (at its end)
    /// right before the delta that adds the file.
    pub fn seal_file_record(
        name: &FileName,
        bytes: &[u8],
        log: &Log,
        lineage: &Lineage,
        key: &Key,
    ) -> std::io::Result<Vec<u8>> {
        let mut body = Vec::with_capacity(32 + bytes.len());
        body.extend_from_slice(&name.0);
        body.extend_from_slice(bytes);
        let mut out = Vec::with_capacity(8 + body.len() + crate::format::seal::OVERHEAD);
        let k = RecordKey::of_log(log, key)?;
        push_record(&mut out, log.end, lineage, &k, FILE, &body)?;
        Ok(out)
    }

    /// Reads the lineage from a stored head record without the key.
    pub fn lineage(b: &[u8]) -> Result<Lineage, FormatError> {
        if b.len() < MIN_PREFIX || &b[..8] != MAGIC {
            return Err(FormatError::Framing("not a kiln head record"));
        }
        let v = u32::from_le_bytes([b[8], b[9], b[10], b[11]]);
        if !(1..=VERSION).contains(&v) {
            return Err(FormatError::Version(v));
        }
        if b.len() < prefix_len(v) {
            return Err(FormatError::Framing("head record cut short"));
        }
        let mut l = [0u8; 16];
        l.copy_from_slice(&b[12..28]);
        Ok(l)
    }

    /// Opens a stored head record.
    pub fn open(b: &[u8], key: &Key) -> Result<Head, FormatError> {
        Head::open_log(b, key).map(|(h, _)| h)
    }

    /// Opens a stored head record and says where its records end.
    ///
    /// An append that never finished is skipped: a writer appends only at the end of the last
    /// valid record of a file holding nothing after it (it cuts off a torn tail before
    /// appending), so an unfinished append is a *prefix* of a record: the file ends inside it.
    /// A power cut can also leave zeros where its bytes should be. Any other damage is an
    /// error. (A reader racing a live append can see other states; the commit counter tells
    /// it to read again.)
    pub fn open_log(b: &[u8], key: &Key) -> Result<(Head, Log), FormatError> {
        let l = Head::lineage(b)?;
        let version = u32::from_le_bytes([b[8], b[9], b[10], b[11]]);
        if version == 1 {
            let body = key
                .open(&aad_v1(&l), &b[MIN_PREFIX..])
                .map_err(|SealError| FormatError::Seal("head record"))?;
            let log = Log {
                version,
                end: b.len() as u64,
                len: b.len() as u64,
                ..Log::default()
            };
            return Ok((Head::decode_body(&body, 1)?, log));
        }
        let key = &RecordKey::of_file(b, version, key);
        let mut pos = prefix_len(version);
        // End of the last snapshot or delta: a file record counts once its delta follows.
        let mut end = pos;
        let mut head: Option<Head> = None;
        let mut snapshot_end = pos;
        let mut deltas = 0u32;
        let (mut file_bytes, mut files) = (0u64, Vec::new());
        let mut pending: Option<(FileName, u64)> = None;
        while pos < b.len() {
            let (kind, body, next) = match read_record(b, pos, &l, key, head.is_none(), version) {
                Ok(r) => r,
                Err(e) => {
                    // Torn: what a power cut leaves of an append whose pages did not all reach
                    // the disk (cut short, or zeros where its header, its tag or a whole
                    // sector of it should be); and nothing after it but the rest of that same
                    // append. Other damage, anywhere, is corruption.
                    let torn = match e {
                        RecordError::CutShort => true,
                        RecordError::Length => b[pos..pos + 8].iter().all(|&x| x == 0),
                        RecordError::Seal { end } => b[end - 16..end].iter().all(|&x| x == 0),
                    } || zero_sector_from(b, pos);
                    let unfinished = torn
                        && head.as_ref().is_some_and(|h| {
                            only_the_rest_of_one_append(b, pos, &l, key, h, version)
                        });
                    if head.is_some() && unfinished {
                        break; // an append that never finished, so was never acknowledged
                    }
                    return Err(match e {
                        RecordError::CutShort => FormatError::Framing("head record cut short"),
                        RecordError::Length => FormatError::Framing("head record length damaged"),
                        RecordError::Seal { .. } => FormatError::Seal("head record"),
                    });
                }
            };
            if kind == FILE {
                if head.is_none() || pending.is_some() || body.len() < 32 {
                    return Err(FormatError::Framing("misplaced head file record"));
                }
                let mut n = [0u8; 32];
                n.copy_from_slice(&body[..32]);
                pending = Some((FileName(n), (next - pos) as u64));
            } else {
                match head.as_mut() {
                    None => {
                        head = Some(Head::decode_body(&body, version)?);
                        snapshot_end = next;
                    }
                    Some(h) => {
                        h.apply_delta(&body, version)?;
                        deltas += 1;
                    }
                }
                if let Some((n, len)) = pending.take() {
                    if !head
                        .as_ref()
                        .is_some_and(|h| h.files.iter().any(|f| f.name == n))
                    {
                        return Err(FormatError::Framing(
                            "head file record for a file its delta does not add",
                        ));
                    }
                    files.push(n);
                    file_bytes += len;
                }
                end = next;
            }
            pos = next;
        }
        let head = head.ok_or(FormatError::Framing("head record has no snapshot"))?;
        let log = Log {
            version,
            end: end as u64,
            snapshot_end: snapshot_end as u64,
            len: b.len() as u64,
            deltas,
            file_bytes,
            files,
            salt: salt_of(b, version),
        };
        Ok((head, log))
    }

    /// Applies a delta of a log of format `version` (see [`Head::delta_body`]).
    fn apply_delta(&mut self, b: &[u8], version: u32) -> Result<(), CborError> {
        let mut d = Decoder::new(b);
        // CBOR major type 4 (an array): the short form.
        if b.first().is_some_and(|x| x >> 5 == 4) {
            if version < SHORT_DELTAS || d.array()? != 6 {
                return Err(CborError("head delta: expected 6 items"));
            }
            let mut files = decode_files(&mut d)?;
            self.seq = d.u64()?;
            self.docs = d.u64()?;
            self.root = d.opt_link()?;
            self.heads = decode_links(&mut d)?;
            self.events = d.u64()?;
            d.finish()?;
            files.extend(self.files.iter().cloned());
            self.files = Arc::new(files);
            return Ok(());
        }
        if d.map()? != 8 {
            return Err(CborError("head delta: expected 8 fields"));
        }
        d.key("add")?;
        let mut files = decode_files(&mut d)?;
        d.key("seq")?;
        self.seq = d.u64()?;
        d.key("base")?;
        self.base = d.opt_link()?;
        d.key("docs")?;
        self.docs = d.u64()?;
        d.key("root")?;
        self.root = d.opt_link()?;
        d.key("heads")?;
        self.heads = decode_links(&mut d)?;
        d.key("events")?;
        self.events = d.u64()?;
        d.key("compacted")?;
        self.compacted = d.u64()?;
        d.finish()?;
        files.extend(self.files.iter().cloned());
        self.files = Arc::new(files);
        Ok(())
    }
}

/// An array of links (a head's clock heads).
fn encode_links(e: &mut Encoder, links: &[Cid]) {
    e.array(links.len());
    for l in links {
        e.link(l);
    }
}

/// An array of links, as [`encode_links`] writes it.
fn decode_links(d: &mut Decoder) -> Result<Vec<Cid>, CborError> {
    let n = d.array()?;
    let mut links = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        links.push(d.link()?);
    }
    Ok(links)
}

const SNAPSHOT: u8 = 0;
const DELTA: u8 = 1;
const FILE: u8 = 2;

enum RecordError {
    /// The file ends inside the record.
    CutShort,
    /// The length and its check disagree.
    Length,
    /// The record (ending at `end`) fails authentication.
    Seal { end: usize },
}

/// What seals and opens a log's records: the lineage key (versions 2 and 3) or the log's
/// own (4 on).
enum RecordKey<'a> {
    Lineage(&'a Key),
    Log(Arc<SubKey>),
}

impl<'a> RecordKey<'a> {
    /// The key of the head file `b` of format `version` (its salt checked present by
    /// [`Head::lineage`]).
    fn of_file(b: &[u8], version: u32, key: &'a Key) -> RecordKey<'a> {
        match salt_of(b, version) {
            Some(s) => RecordKey::Log(key.log_key(&s)),
            None => RecordKey::Lineage(key),
        }
    }

    /// The key to append to `log` with.
    fn of_log(log: &Log, key: &'a Key) -> std::io::Result<RecordKey<'a>> {
        match (log.version >= SALTED, log.salt) {
            (false, _) => Ok(RecordKey::Lineage(key)),
            (true, Some(s)) => Ok(RecordKey::Log(key.log_key(&s))),
            (true, None) => Err(std::io::Error::other("head log without its salt")),
        }
    }

    /// Seals a record's body: under the log's key with a fresh random nonce (or, for an older
    /// log, under the lineage key, also with a fresh random nonce).
    fn seal_into(&self, aad: &[u8], body: &[u8], out: &mut Vec<u8>) -> std::io::Result<()> {
        match self {
            RecordKey::Lineage(k) => k.seal_into(aad, body, out),
            RecordKey::Log(k) => k.seal_into(crate::format::seal::random_nonce()?, aad, body, out),
        }
    }

    fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        match self {
            RecordKey::Lineage(k) => k.open(aad, sealed),
            RecordKey::Log(k) => k.open(aad, sealed),
        }
    }
}

/// The salt in the header of head file `b` of format `version` (version 4 on).
fn salt_of(b: &[u8], version: u32) -> Option<Salt> {
    if version < SALTED {
        return None;
    }
    b.get(MIN_PREFIX..MIN_PREFIX + SALT_LEN)
        .and_then(|s| s.try_into().ok())
}

fn push_record(
    out: &mut Vec<u8>,
    offset: u64,
    lineage: &Lineage,
    key: &RecordKey,
    kind: u8,
    body: &[u8],
) -> std::io::Result<()> {
    let len = u32::try_from(body.len() + crate::format::seal::OVERHEAD)
        .ok()
        .filter(|&n| n <= MAX_RECORD)
        .ok_or_else(|| std::io::Error::other("head record too large"))?;
    let len = if kind == FILE { len | FILE_FLAG } else { len };
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&(!len).to_le_bytes());
    key.seal_into(&aad_v2(lineage, offset, kind), body, out)
}

/// The record at `pos` (the snapshot when `first`) of a file of format `version`: its kind,
/// body and where the next one starts.
fn read_record(
    b: &[u8],
    pos: usize,
    l: &Lineage,
    key: &RecordKey,
    first: bool,
    version: u32,
) -> Result<(u8, Vec<u8>, usize), RecordError> {
    let Some(h) = b.get(pos..pos + 8) else {
        return Err(RecordError::CutShort);
    };
    let raw = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
    let check = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
    if check != !raw {
        return Err(RecordError::Length);
    }
    let (kind, len) = match raw & FILE_FLAG {
        0 if first => (SNAPSHOT, raw),
        0 => (DELTA, raw),
        _ if version >= 3 => (FILE, raw & !FILE_FLAG),
        _ => return Err(RecordError::Length),
    };
    if len > MAX_RECORD {
        return Err(RecordError::Length);
    }
    let end = pos + 8 + len as usize;
    let Some(sealed) = b.get(pos + 8..end) else {
        return Err(RecordError::CutShort);
    };
    let body = key
        .open(&aad_v2(l, pos as u64, kind), sealed)
        .map_err(|SealError| RecordError::Seal { end })?;
    Ok((kind, body, end))
}

/// True if nothing from `pos` on (where a record failed to read) authenticates as a record,
/// except at most one delta ending the file that is the next commit after `head` (the delta of
/// an append whose file record was torn). Scans every offset: only on the failure path.
fn only_the_rest_of_one_append(
    b: &[u8],
    pos: usize,
    l: &Lineage,
    key: &RecordKey,
    head: &Head,
    version: u32,
) -> bool {
    let mut found = None;
    for q in pos + 1..b.len().saturating_sub(8) {
        let raw = u32::from_le_bytes([b[q], b[q + 1], b[q + 2], b[q + 3]]);
        let check = u32::from_le_bytes([b[q + 4], b[q + 5], b[q + 6], b[q + 7]]);
        if check != !raw || (raw & !FILE_FLAG) > MAX_RECORD {
            continue;
        }
        let kind = if raw & FILE_FLAG != 0 { FILE } else { DELTA };
        let end = q + 8 + (raw & !FILE_FLAG) as usize;
        let Some(sealed) = b.get(q + 8..end) else {
            continue;
        };
        if let Ok(body) = key.open(&aad_v2(l, q as u64, kind), sealed) {
            if found.is_some() || kind != DELTA || end != b.len() {
                return false;
            }
            found = Some(body);
        }
    }
    match found {
        None => true,
        Some(body) => {
            let mut next = head.clone();
            next.apply_delta(&body, version).is_ok() && next.seq == head.seq + 1
        }
    }
}

/// Every record of a stored head record `b` that opens under `key`, wherever it lies (an
/// older, longer log left behind the current one is found too), as (kind, body): for audits.
/// A file record's body is the file's name (32 bytes) and its bytes.
pub fn plaintexts(b: &[u8], key: &Key) -> Vec<(u8, Vec<u8>)> {
    let Ok(l) = Head::lineage(b) else {
        return Vec::new();
    };
    let version = u32::from_le_bytes([b[8], b[9], b[10], b[11]]);
    if version == 1 {
        return key
            .open(&aad_v1(&l), &b[MIN_PREFIX..])
            .map(|body| vec![(SNAPSHOT, body)])
            .unwrap_or_default();
    }
    let rk = RecordKey::of_file(b, version, key);
    let mut out = Vec::new();
    for q in prefix_len(version)..b.len().saturating_sub(8) {
        let raw = u32::from_le_bytes([b[q], b[q + 1], b[q + 2], b[q + 3]]);
        let check = u32::from_le_bytes([b[q + 4], b[q + 5], b[q + 6], b[q + 7]]);
        if check != !raw || (raw & !FILE_FLAG) > MAX_RECORD {
            continue;
        }
        let end = q + 8 + (raw & !FILE_FLAG) as usize;
        let Some(sealed) = b.get(q + 8..end) else {
            continue;
        };
        let kinds: &[u8] = if raw & FILE_FLAG != 0 {
            &[FILE]
        } else {
            &[SNAPSHOT, DELTA]
        };
        for &kind in kinds {
            if let Ok(body) = rk.open(&aad_v2(&l, q as u64, kind), sealed) {
                out.push((kind, body));
            }
        }
    }
    out
}

/// The kind of a file record in [`plaintexts`].
pub const FILE_RECORD: u8 = FILE;

/// True if a whole 512-byte sector of `b` (aligned in the file) at or after `from` reads as
/// zeros: a page of an append that never reached the disk. (Sealed bytes hold 512 zero bytes
/// by chance with probability 2^-4096; a record's plaintext header is 8 bytes.)
fn zero_sector_from(b: &[u8], from: usize) -> bool {
    let first = from.div_ceil(512) * 512;
    (first..b.len())
        .step_by(512)
        .any(|s| b.get(s..s + 512).is_some_and(|x| x.iter().all(|&v| v == 0)))
}

/// The bytes of file `name` as a stored head record `b` holds them in a file record, checked
/// against the name; `None` when it holds none.
pub fn embedded_file(b: &[u8], key: &Key, name: &FileName) -> Option<Vec<u8>> {
    let l = Head::lineage(b).ok()?;
    let version = u32::from_le_bytes([b[8], b[9], b[10], b[11]]);
    if version < 3 {
        return None;
    }
    let key = &RecordKey::of_file(b, version, key);
    let mut pos = prefix_len(version);
    while let Some(h) = b.get(pos..pos + 8) {
        let raw = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
        let len = (raw & !FILE_FLAG) as usize;
        if raw & FILE_FLAG != 0 {
            let (_, body, _) = read_record(b, pos, &l, key, false, version).ok()?;
            if body.get(..32) == Some(&name.0[..]) && FileName::of(&body[32..]) == *name {
                return Some(body[32..].to_vec());
            }
        }
        pos = pos.checked_add(8)?.checked_add(len)?;
    }
    None
}

fn encode_files(e: &mut Encoder, files: &[FileRef]) {
    e.array(files.len());
    for f in files {
        e.array(7);
        e.bytes(&f.name.0);
        e.u64(f.level as u64);
        e.u64(f.size);
        e.u64(f.index_len as u64);
        e.u64(f.heights.0);
        e.u64(f.heights.1);
        // (A structural filter lives in the file's own index, not here.)
        match &f.filter {
            Filter::Small(b) => e.u64(*b),
            Filter::None | Filter::Structural(_) => e.u64(0),
        }
    }
}

fn decode_files(d: &mut Decoder) -> Result<Vec<FileRef>, CborError> {
    let n = d.array()?;
    let mut files = Vec::with_capacity(n.min(1 << 16));
    for _ in 0..n {
        if d.array()? != 7 {
            return Err(CborError("head: file ref must have 7 fields"));
        }
        let name = FileName(
            d.bytes()?
                .try_into()
                .map_err(|_| CborError("head: file name length"))?,
        );
        let level = d.u64()?;
        if level > 64 {
            return Err(CborError("head: file level out of range"));
        }
        let size = d.u64()?;
        let index_len = d.u64()?;
        if index_len > u32::MAX as u64 || index_len + 32 > size {
            return Err(CborError("head: index length out of range"));
        }
        let heights = (d.u64()?, d.u64()?);
        let filter = match d.u64()? {
            0 => Filter::None,
            b => Filter::Small(b),
        };
        files.push(FileRef {
            name,
            level: level as u8,
            size,
            index_len: index_len as u32,
            heights,
            filter,
        });
    }
    Ok(files)
}

fn aad_v2(l: &Lineage, offset: u64, kind: u8) -> [u8; 37] {
    let mut a = [0u8; 37];
    a[..12].copy_from_slice(b"kiln/head/v2");
    a[12..28].copy_from_slice(l);
    a[28..36].copy_from_slice(&offset.to_le_bytes());
    a[36] = kind;
    a
}

fn aad_v1(l: &Lineage) -> [u8; 28] {
    let mut a = [0u8; 28];
    a[..12].copy_from_slice(b"kiln/head/v1");
    a[12..].copy_from_slice(l);
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Head {
        Head {
            seq: 3,
            docs: 2,
            root: Some(Cid::of_cbor(b"r")),
            base: Some(Cid::of_cbor(b"b")),
            files: Arc::new(vec![FileRef {
                name: FileName::of(b"f"),
                level: 1,
                size: 99,
                index_len: 40,
                heights: (1, 3),
                filter: Filter::Small(5),
            }]),
            heads: vec![Cid::of_cbor(b"h")],
            events: 3,
            compacted: 0,
            purged: vec![Cid::of_cbor(b"p")],
            cut: vec![(Cid::of_cbor(b"e"), None)],
            scrub: true,
            shape: TreeShape::Bounded,
            meta: String::new(),
        }
    }

    /// Version 5 snapshots name the tree shape, both shapes round-trip, an unknown code is
    /// refused, and a version-4 snapshot (no shape) reads as `Mod16`, the only shape before.
    #[test]
    fn the_tree_shape_round_trips_and_older_snapshots_are_mod16() {
        for shape in [TreeShape::Mod16, TreeShape::Bounded] {
            let h = Head { shape, ..sample() };
            assert_eq!(Head::decode_body(&h.encode_body(), VERSION).unwrap(), h);
            assert_eq!(TreeShape::from_code(shape.code()), Some(shape));
        }
        assert_eq!(TreeShape::from_code(0), None);
        assert_eq!(TreeShape::from_code(3), None);
        let v4 = sample().encode_body_of(4);
        assert_eq!(Head::decode_body(&v4, 4).unwrap().shape, TreeShape::Mod16);
        // A version-5 body with an unknown shape code is refused, not guessed.
        let mut bad = sample().encode_body();
        let at = bad.windows(6).position(|w| w == b"eshape").unwrap() + 6;
        assert_eq!(bad[at], 2);
        bad[at] = 7;
        assert!(Head::decode_body(&bad, VERSION).is_err());
        assert_eq!(TreeShape::default(), TreeShape::Bounded, "new databases");
    }

    #[test]
    fn round_trip() {
        let k = Key::generate().unwrap();
        let l = [9u8; 16];
        let b = sample().seal(&l, &k).unwrap();
        assert_eq!(Head::lineage(&b).unwrap(), l);
        assert_eq!(Head::open(&b, &k).unwrap(), sample());
        let mut t = b.clone();
        t[12] ^= 1; // a different lineage no longer authenticates
        assert!(Head::open(&t, &k).is_err());
    }

    /// Each log has a key of its own: a snapshot draws a fresh salt (two snapshots of one head
    /// by one key differ), a record opens only under its log's salt, and a record sealed again
    /// at the same offset (the next writer after a torn append) takes a fresh nonce.
    #[test]
    fn each_log_has_its_own_key_and_fresh_nonces() {
        let (k, l) = (Key::from_raw([2; 32]), [7u8; 16]);
        let (a, b) = (
            sample().seal(&l, &k).unwrap(),
            sample().seal(&l, &k).unwrap(),
        );
        let prefix = prefix_len(VERSION);
        assert_eq!(a[8..12], VERSION.to_le_bytes());
        assert_ne!(a[28..prefix], b[28..prefix]);
        assert_ne!(a[prefix..], b[prefix..]);
        let log = Log::fresh(&a);
        assert_eq!(log, Head::open_log(&a, &k).unwrap().1);
        assert_eq!(log.salt.map(|s| s.to_vec()), Some(a[28..prefix].to_vec()));
        // Another log's salt: nothing opens.
        let mut swapped = a.clone();
        swapped[28..prefix].copy_from_slice(&b[28..prefix]);
        assert!(Head::open(&swapped, &k).is_err());
        // A delta sealed twice for one offset: the same body, two nonces, two ciphertexts.
        let mut next = sample();
        next.seq += 1;
        let d1 = next.seal_delta(&sample(), &log, &l, &k).unwrap().unwrap();
        let d2 = next.seal_delta(&sample(), &log, &l, &k).unwrap().unwrap();
        assert_ne!(d1[8..20], d2[8..20]);
        for d in [&d1, &d2] {
            let mut f = a.clone();
            f.extend_from_slice(d);
            assert_eq!(Head::open(&f, &k).unwrap(), next);
        }
        // No salt or nonce without the system's random source.
        crate::format::seal::fail_random_on_this_thread(true);
        assert!(sample().seal(&l, &k).is_err());
        assert!(next.seal_delta(&sample(), &log, &l, &k).is_err());
        assert!(Head::seal_file_record(&FileName::of(b"f"), b"f", &log, &l, &k).is_err());
        crate::format::seal::fail_random_on_this_thread(false);
    }

    /// A version-3 log (no salt: records under the lineage key) with a file record and its delta
    /// still reads; it is not appended to (the next commit writes a snapshot of today's version).
    #[test]
    fn a_version_3_log_reads_and_is_replaced_not_appended_to() {
        let (k, l) = (Key::generate().unwrap(), [7u8; 16]);
        let mut file = MAGIC.to_vec();
        file.extend_from_slice(&3u32.to_le_bytes());
        file.extend_from_slice(&l);
        let mut v3 = Head {
            scrub: false,
            shape: TreeShape::Mod16, // before version 5: every tree
            ..sample()
        };
        v3.files_mut()[0].filter = Filter::Small(5); // before version 5: a 64-bit filter
        let body = v3.encode_body_of(3);
        let at = file.len() as u64;
        push_record(&mut file, at, &l, &RecordKey::Lineage(&k), SNAPSHOT, &body).unwrap();
        let (h, log) = Head::open_log(&file, &k).unwrap();
        assert_eq!((h, log.version, log.salt), (v3.clone(), 3, None));
        assert!(!log.appendable());
        let mut next = v3.clone();
        next.seq += 1;
        let bytes = vec![3u8; 100];
        next.files_mut().insert(
            0,
            FileRef {
                name: FileName::of(&bytes),
                ..v3.files[0].clone()
            },
        );
        assert!(next.seal_delta(&v3, &log, &l, &k).unwrap().is_none());
        // As a kiln of version 3 appended them: a file record, then the delta adding the file.
        let fr = Head::seal_file_record(&next.files[0].name, &bytes, &log, &l, &k).unwrap();
        let fr_at = log.end;
        let mut d = Vec::new();
        let d_at = log.end + fr.len() as u64;
        let key = RecordKey::Lineage(&k);
        // (The map form: `prev`'s base differs.)
        let not_prev = Head {
            base: next.root,
            ..Head::default()
        };
        let body = next.delta_body(&not_prev, 1);
        assert_eq!(body[0] >> 5, 5, "a CBOR map");
        push_record(&mut d, d_at, &l, &key, DELTA, &body).unwrap();
        file.extend_from_slice(&fr);
        file.extend_from_slice(&d);
        let (h, log) = Head::open_log(&file, &k).unwrap();
        assert_eq!((h, log.version, log.files.len()), (next.clone(), 3, 1));
        assert_eq!(embedded_file(&file, &k, &next.files[0].name), Some(bytes));
        // Both records are sealed under the lineage key itself.
        assert!(k.open(&aad_v2(&l, fr_at, FILE), &fr[8..]).is_ok());
    }

    /// A snapshot of `sample()` followed by three deltas; returns the file, the heads after
    /// each record and the record offsets.
    fn log_of_three(k: &Key, l: &Lineage) -> (Vec<u8>, Vec<Head>, Vec<usize>) {
        log_of_three_with(k, l, false)
    }

    /// [`log_of_three`], with the second delta's file carried in a file record before it when
    /// `carry` (the offsets are then those of the deltas and the file record is before the
    /// second).
    fn log_of_three_with(k: &Key, l: &Lineage, carry: bool) -> (Vec<u8>, Vec<Head>, Vec<usize>) {
        let mut h = sample();
        let mut file = h.seal(l, k).unwrap();
        let (_, mut log) = Head::open_log(&file, k).unwrap();
        let mut heads = vec![h.clone()];
        let mut offs = vec![prefix_len(VERSION)];
        for i in 0..3u8 {
            let prev = h.clone();
            h.seq += 1;
            h.docs += 1;
            h.root = Some(Cid::of_cbor(&[i]));
            h.files_mut().insert(
                0,
                FileRef {
                    name: FileName::of(&[i]),
                    level: 0,
                    size: 100 + i as u64,
                    index_len: 40,
                    heights: (4 + i as u64, 4 + i as u64),
                    filter: Filter::None,
                },
            );
            if carry && i == 1 {
                let bytes = vec![i; 300];
                h.files_mut()[0].name = FileName::of(&bytes);
                let f = Head::seal_file_record(&h.files[0].name, &bytes, &log, l, k).unwrap();
                file.extend_from_slice(&f);
                log.end += f.len() as u64;
                log.file_bytes += f.len() as u64;
            }
            let rec = h.seal_delta(&prev, &log, l, k).unwrap().unwrap();
            offs.push(file.len());
            file.extend_from_slice(&rec);
            log = Head::open_log(&file, k).unwrap().1;
            assert_eq!(log.deltas, i as u32 + 1);
            assert_eq!(log.end, file.len() as u64);
            heads.push(h.clone());
        }
        (file, heads, offs)
    }

    /// Bug (issue 14): the log budget counted the snapshot, so once a snapshot passed 64 KiB
    /// (head records carried filters for a while: a 100,000-document database after some
    /// updates had 287 KB), every commit rewrote it whole instead of appending ~250 bytes.
    #[test]
    fn a_large_snapshot_still_takes_deltas() {
        let (k, l) = (Key::generate().unwrap(), [9u8; 16]);
        let mut big = sample();
        let one = big.files[0].clone();
        for i in 0..2000u32 {
            big.files_mut().push(FileRef {
                name: FileName::of(&i.to_le_bytes()),
                ..one.clone()
            });
        }
        let sealed = big.seal(&l, &k).unwrap();
        assert!(sealed.len() as u64 > MAX_LOG_BYTES);
        for log in [Log::fresh(&sealed), Head::open_log(&sealed, &k).unwrap().1] {
            assert!(log.appendable());
            let mut next = big.clone();
            next.seq += 1;
            let d = next.seal_delta(&big, &log, &l, &k).unwrap().unwrap();
            assert!(d.len() < 1024);
            let mut f = sealed.clone();
            f.extend_from_slice(&d);
            assert_eq!(Head::open(&f, &k).unwrap(), next);
        }
    }

    #[test]
    fn deltas_append_and_replay() {
        let (k, l) = (Key::generate().unwrap(), [7u8; 16]);
        let (file, heads, _) = log_of_three(&k, &l);
        assert_eq!(Head::open(&file, &k).unwrap(), heads[3]);
        // Removing a file cannot be a delta: the writer starts a fresh snapshot.
        let (_, log) = Head::open_log(&file, &k).unwrap();
        let mut fewer = heads[3].clone();
        fewer.files_mut().pop();
        assert!(fewer.seal_delta(&heads[3], &log, &l, &k).unwrap().is_none());
        // A full log is not appended to.
        let full = Log {
            deltas: MAX_DELTAS,
            ..log.clone()
        };
        assert!(heads[3]
            .seal_delta(&heads[2], &full, &l, &k)
            .unwrap()
            .is_none());
    }

    /// Version 6: a snapshot may carry the database's metadata; a change to it is written as
    /// a snapshot, and the deltas after keep it.
    #[test]
    fn metadata_rides_in_the_snapshot() {
        let (k, l) = (Key::generate().unwrap(), [7u8; 16]);
        let h = Head {
            meta: r#"{"title":"Lunch"}"#.into(),
            ..sample()
        };
        assert_eq!(Head::decode_body(&h.encode_body(), VERSION).unwrap(), h);
        assert_eq!(
            Head::decode_body(&sample().encode_body(), VERSION).unwrap(),
            sample()
        );
        let file = h.seal(&l, &k).unwrap();
        let (_, log) = Head::open_log(&file, &k).unwrap();
        let mut next = h.clone();
        next.seq += 1;
        next.meta = r#"{"title":"Dinner"}"#.into();
        assert!(next.seal_delta(&h, &log, &l, &k).unwrap().is_none());
        let mut commit = h.clone();
        commit.seq += 1;
        commit.docs += 1;
        let rec = commit.seal_delta(&h, &log, &l, &k).unwrap().unwrap();
        let mut both = file.clone();
        both.extend_from_slice(&rec);
        assert_eq!(Head::open(&both, &k).unwrap().meta, h.meta);
        // Version 5 has no such field; an empty one is never written.
        assert!(Head::decode_body(&h.encode_body(), 5).is_err());
        let mut b = h.encode_body();
        let at = b.windows(4).position(|w| w == b"meta").unwrap();
        b[at + 5] = 0x40; // a zero-length byte string
        b.truncate(at + 6);
        assert!(Head::decode_body(&b, VERSION).is_err());
    }

    /// Version 6: a commit's delta leaves out `base` and `compacted` (unchanged) and the field
    /// names; a delta that changes either is the map, and both replay. A version-5 log takes
    /// no short delta.
    #[test]
    fn a_commits_delta_is_short_and_replays() {
        let (k, l) = (Key::generate().unwrap(), [7u8; 16]);
        let (file, heads, offs) = log_of_three(&k, &l);
        let (_, log) = Head::open_log(&file, &k).unwrap();
        let short = heads[3].delta_body(&heads[2], 1);
        assert_eq!(short[0] >> 5, 4, "a CBOR array");
        let mut moved = heads[3].clone();
        moved.seq += 1;
        moved.base = Some(Cid::of_cbor(&[9]));
        moved.compacted = 77;
        let long = moved.delta_body(&heads[3], 0);
        assert_eq!(long[0] >> 5, 5, "a CBOR map");
        assert!(
            long.len() > short.len() + 40,
            "{} vs {}",
            long.len(),
            short.len()
        );
        let rec = moved.seal_delta(&heads[3], &log, &l, &k).unwrap().unwrap();
        let mut both = file.clone();
        both.extend_from_slice(&rec);
        assert_eq!(Head::open(&both, &k).unwrap(), moved);
        // The same short body in a log of version 5 is refused.
        let mut h = heads[2].clone();
        assert!(h.apply_delta(&short, SHORT_DELTAS - 1).is_err());
        assert!(h.apply_delta(&short, SHORT_DELTAS).is_ok());
        assert_eq!(h, heads[3]);
        assert_eq!(offs.len(), 4);
    }

    #[test]
    fn unfinished_last_append_is_skipped_damage_is_not() {
        let (k, l) = (Key::generate().unwrap(), [7u8; 16]);
        let (file, heads, offs) = log_of_three(&k, &l);
        let last = offs[3];
        // Cut short anywhere inside the last record: the state before it, with or without a
        // commit in flight.
        for cut in [last + 1, last + 7, last + 9, file.len() - 1] {
            let (h, log) = Head::open_log(&file[..cut], &k).unwrap();
            assert_eq!(h, heads[2]);
            assert_eq!((log.end, log.len), (last as u64, cut as u64));
        }
        // Zeros where the last record or its tail should be (a power cut after the size grew).
        for from in [last, file.len() - 16] {
            let mut z = file.clone();
            z[from..].fill(0);
            assert_eq!(Head::open(&z, &k).unwrap(), heads[2]);
        }
        // A changed byte anywhere, also in the last record or its length, is corruption.
        for at in [
            last + 2,
            last + 5,
            last + 20,
            file.len() - 1,
            offs[1] + 3,
            offs[2] + 30,
            prefix_len(VERSION) + 20,
        ] {
            let mut t = file.clone();
            t[at] ^= 0x10;
            assert!(Head::open(&t, &k).is_err(), "flip at {at}");
        }
        // A record moved to another offset does not authenticate there.
        let mut moved = file[..offs[2]].to_vec();
        moved.extend_from_slice(&file[offs[3]..]);
        assert!(Head::open(&moved, &k).is_err());
    }

    #[test]
    fn a_file_record_rides_with_its_delta() {
        let (k, l) = (Key::generate().unwrap(), [7u8; 16]);
        let (file, heads, offs) = log_of_three_with(&k, &l, true);
        let (h, log) = Head::open_log(&file, &k).unwrap();
        assert_eq!(h, heads[3]);
        let carried = heads[2].files[0].name;
        assert_eq!(log.files, vec![carried]);
        assert_eq!(log.deltas, 3);
        assert!(log.file_bytes > 300 && log.end == file.len() as u64);
        assert_eq!(embedded_file(&file, &k, &carried), Some(vec![1u8; 300]));
        assert_eq!(embedded_file(&file, &k, &heads[3].files[0].name), None);
        // An append cut after the file record, before or inside its delta: neither counts, and
        // the next writer appends where the file record began.
        let file_at = offs[1] + (offs[2] - offs[1]) - (log.file_bytes as usize);
        for cut in [file_at + 3, offs[2], offs[2] + 9, offs[3] - 1] {
            let (h, log) = Head::open_log(&file[..cut], &k).unwrap();
            assert_eq!(h, heads[1], "cut {cut}");
            assert_eq!(
                (log.end, log.files.len(), log.file_bytes),
                (file_at as u64, 0, 0)
            );
        }
        // Its flag is authenticated: cleared, the record does not open as a delta.
        let mut t = file.clone();
        t[file_at + 3] ^= 0x80;
        t[file_at + 7] ^= 0x80;
        assert!(Head::open(&t, &k).is_err());
        // In a version-2 file a file record is damage.
        let mut v2 = file.clone();
        v2[8] = 2;
        assert!(Head::open(&v2, &k).is_err());
        // Room: a log carries files up to its budget, and only version 3 does.
        assert!(log.can_hold_file(1000));
        assert!(!log.can_hold_file(MAX_FILE_RECORD + 1));
        let spent = Log {
            file_bytes: MAX_FILE_BYTES,
            end: MAX_FILE_BYTES + 1000,
            ..log.clone()
        };
        assert!(!spent.can_hold_file(10) && spent.appendable());
        let old = Log {
            version: 2,
            ..log.clone()
        };
        // An older log is not appended to at all: the next commit replaces it.
        assert!(!old.can_hold_file(10) && !old.appendable());
    }

    proptest! {
        #[test]
        fn mutated_records_never_panic(pos in any::<prop::sample::Index>(), val in any::<u8>(), cut in any::<prop::sample::Index>()) {
            let k = Key::from_raw([3; 32]);
            let mut b = sample().seal(&[1; 16], &k).unwrap();
            let i = pos.index(b.len());
            b[i] = val;
            let _ = Head::open(&b, &k);
            let _ = Head::open(&b[..cut.index(b.len())], &k);
            let _ = Head::decode_body(&b, 2);
            let _ = Head::decode_body(&b, 1);
        }

        #[test]
        fn mutated_logs_never_panic(pos in any::<prop::sample::Index>(), val in any::<u8>(), cut in any::<prop::sample::Index>()) {
            let k = Key::from_raw([3; 32]);
            let (mut b, _, _) = log_of_three_with(&k, &[1; 16], true);
            let i = pos.index(b.len());
            b[i] = val;
            let _ = Head::open_log(&b, &k);
            let _ = Head::open_log(&b[..cut.index(b.len())], &k);
        }

        /// `embedded_file` walks unauthenticated length fields (up to 2^31 each).
        #[test]
        fn mutated_logs_never_make_embedded_file_panic_or_lie(pos in any::<prop::sample::Index>(), val in any::<u8>(), cut in any::<prop::sample::Index>(), huge in any::<bool>()) {
            let k = Key::from_raw([3; 32]);
            let (mut b, heads, _) = log_of_three_with(&k, &[1; 16], true);
            let name = heads[2].files[0].name;
            let i = pos.index(b.len());
            if huge && i + 8 <= b.len() {
                let raw = 0x7fff_ffffu32 | (u32::from(val) << 31);
                b[i..i + 4].copy_from_slice(&raw.to_le_bytes());
                b[i + 4..i + 8].copy_from_slice(&(!raw).to_le_bytes());
            } else {
                b[i] = val;
            }
            for bytes in [&b[..], &b[..cut.index(b.len())]] {
                if let Some(f) = embedded_file(bytes, &k, &name) {
                    prop_assert_eq!(f, vec![1u8; 300]);
                }
            }
        }
    }

    /// A snapshot of `sample()`, then a file record of `n` bytes and its delta;
    /// returns (file, h0, h1, offset of the file record, offset of the delta).
    fn carried_append(k: &Key, l: &Lineage, n: usize) -> (Vec<u8>, Head, Head, usize, usize) {
        let h0 = sample();
        let mut file = h0.seal(l, k).unwrap();
        let (_, log) = Head::open_log(&file, k).unwrap();
        let mut h1 = h0.clone();
        h1.seq += 1;
        let bytes = vec![9u8; n];
        h1.files_mut().insert(
            0,
            FileRef {
                name: FileName::of(&bytes),
                level: 0,
                size: bytes.len() as u64,
                index_len: 100,
                heights: (9, 9),
                filter: Filter::None,
            },
        );
        let rec = Head::seal_file_record(&h1.files[0].name, &bytes, &log, l, k).unwrap();
        let after = Log {
            end: log.end + rec.len() as u64,
            file_bytes: rec.len() as u64,
            ..log.clone()
        };
        let delta = h1.seal_delta(&h0, &after, l, k).unwrap().unwrap();
        let (fr, d) = (file.len(), file.len() + rec.len());
        file.extend_from_slice(&rec);
        file.extend_from_slice(&delta);
        assert_eq!(Head::open(&file, k).unwrap(), h1);
        (file, h0, h1, fr, d)
    }

    /// [`carried_append`] sized so that its delta starts `at` bytes into a 4 KiB page.
    fn carried_append_with_delta_at(
        k: &Key,
        l: &Lineage,
        at: usize,
    ) -> (Vec<u8>, Head, Head, usize, usize) {
        let (_, _, _, _, d) = carried_append(k, l, 20_000);
        let n = 20_000 + (4096 + at - d % 4096) % 4096;
        let r = carried_append(k, l, n);
        assert_eq!(r.4 % 4096, at);
        r
    }

    /// An unacknowledged torn append is skipped: the log opens at the head before it.
    fn opens_at(file: &[u8], k: &Key, before: &Head) {
        let r = Head::open_log(file, k);
        assert!(
            r.is_ok(),
            "a torn append makes HEAD unopenable: {:?}",
            r.err()
        );
        assert_eq!(r.unwrap().0, *before);
    }

    /// A power cut can persist an append's pages in any order (it spans many with a file
    /// record). Unfinished, not damage: the first page (the old, partly filled last page of the
    /// file, overwritten) never written, so the file record's *header* reads as zeros; the
    /// delta straddling a page boundary with its first page (its header) zero; a page inside
    /// the file record zero while the delta's page reached the disk.
    #[test]
    fn torn_appends_are_unfinished() {
        let (k, l) = (Key::generate().unwrap(), [7u8; 16]);
        let (mut file, h0, _, fr, _) = carried_append(&k, &l, 20_000);
        let page_end = (fr / 4096 + 1) * 4096;
        file[fr..page_end].fill(0);
        opens_at(&file, &k, &h0);

        let (mut file, h0, _, _, d) = carried_append_with_delta_at(&k, &l, 4096 - 100);
        assert!(file.len() > d + 100);
        file[d..d + 100].fill(0);
        opens_at(&file, &k, &h0);

        let (mut file, h0, _, fr, _) = carried_append(&k, &l, 20_000);
        let page = (fr / 4096 + 2) * 4096;
        file[page..page + 4096].fill(0);
        opens_at(&file, &k, &h0);
    }

    /// Damage in the middle of the log (one zeroed page spanning the end of an acknowledged
    /// file record and its delta's header), with a later acknowledged delta after it, is
    /// corruption: taken for an unfinished append, the later commit was dropped (and the next
    /// append cut it off the file).
    #[test]
    fn a_zero_page_mid_log_is_damage_not_an_unfinished_append() {
        let (k, l) = (Key::generate().unwrap(), [7u8; 16]);
        // Delta starts 1000 bytes into a page: that page holds a whole sector of the record.
        let (mut file, _, h1, _, d) = carried_append_with_delta_at(&k, &l, 1000);
        let (_, log) = Head::open_log(&file, &k).unwrap();
        let mut h2 = h1.clone();
        h2.seq += 1;
        h2.docs += 1;
        let rec = h2.seal_delta(&h1, &log, &l, &k).unwrap().unwrap();
        file.extend_from_slice(&rec);
        assert_eq!(Head::open(&file, &k).unwrap(), h2);
        let page = d - 1000;
        file[page..page + 1008].fill(0); // the record's last 1000 bytes and the delta header
        let r = Head::open_log(&file, &k);
        assert!(
            r.is_err(),
            "mid-log damage read as an unfinished append: head {:?} (acknowledged seq {})",
            r.map(|(h, lg)| (h.seq, lg.end, lg.len)).ok(),
            h2.seq
        );
    }
}
