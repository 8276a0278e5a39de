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

mod record;

use record::*;
pub use record::{embedded_file, plaintexts, FILE_RECORD};

#[cfg(test)]
mod tests;

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
