//! Diff files: a CAR v1 stream of blocks, cut into sealed segments, with a sealed block index.
//!
//! ```text
//! header   "KILNDIFF" ‖ version u32 LE (=5) ‖ 0u32                      16 bytes
//! segment* sealed("kiln/seg/v1" ‖ seg# u32 LE, CAR bytes)             ≤ SEGMENT_TARGET plaintext each
//!                                                                      (≤ GROUP_TARGET holding a group)
//! page*    sealed("kiln/page/v1" ‖ page# u32 LE, dag-cbor [entry…])    only for large files
//! salt     32 random bytes (version 4 on)
//! index    sealed("kiln/index/v1", dag-cbor index record)
//! trailer  index offset u64 LE ‖ index length u32 LE ‖ "KSLT"           16 bytes
//!          (offset and length of salt and index together; "KEND" before version 4: no salt)
//! ```
//!
//! From version 4 every unit is sealed under the file's own key, derived from the lineage key
//! and the file's salt ([`FileKey`]); nonces are the unit's kind and number, unique in the
//! file. Before, units were sealed under the lineage key with per-process nonces.
//!
//! The plaintext of all segments, concatenated, is a valid CAR v1 stream (header with the file's
//! roots, then `varint ‖ CID ‖ data` sections); segments end on section boundaries, so a block is
//! read by opening exactly one segment. A file is named by the hash of all its bytes (BLAKE3
//! from version 3, sha2-256 before), so storage can check a file without the key.

use crate::format::block::cbor::{CborError, Decoder, Encoder};
use crate::format::block::cid::{Cid, CID_LEN};
use crate::format::block::{DigestMap, DigestSet};
use crate::format::filter::{Filter, SMALL_FILE_BLOCKS};
use crate::format::seal::{Key, Purpose, Salt, SealError, SubKey, NONCE_LEN, SALT_LEN, TAG_LEN};
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

pub const MAGIC: &[u8; 8] = b"KILNDIFF";
/// The version written. 7: files of several events may hold a document log (see [`doclog`]);
/// 6: a small file's index leaves out what a reader knows otherwise (its
/// roots, its structural filter); 5: fixed-width index entries, structural filters, 4 KiB
/// segments; 4: sealed under a key of its own (a salt before the index); 3: named by BLAKE3;
/// 2: LZ4-compressed segments, tree nodes marked in the index, named by sha2-256; 1: raw
/// segments, no node marks, sha2-256. All are read.
pub const VERSION: u32 = 7;
/// The trailer's last bytes: before version 4 (no salt), and from version 4 on (the index
/// region starts with the file's salt).
const END_PLAIN: &[u8; 4] = b"KEND";
const END_SALTED: &[u8; 4] = b"KSLT";
/// Largest segment plaintext a compressed segment may declare (a segment holds ≤ 16 KiB unless
/// one block is larger; blocks are ≤ ~1 MiB).
const MAX_SEGMENT: usize = 64 << 20;
/// Segment codecs (the first plaintext byte of a version-2 segment).
const RAW: u8 = 0;
const LZ4: u8 = 1;
pub const HEADER_LEN: usize = 16;
pub const TRAILER_LEN: usize = 16;
/// Plaintext bytes per segment before a new one starts (a larger block gets a segment alone).
pub const SEGMENT_TARGET: usize = 4 * 1024;
/// Index entries per page written; files with more entries get a paged index. Small pages keep
/// a lookup in a large file cheap: one ~12 KiB page, not the whole index.
pub const PAGE_ENTRIES: usize = 128;
/// Segments a thread packs and seals at a time when a file's are shared between two
/// ([`Writer::finish`]): ~64 KiB of plaintext, small enough that neither thread waits long
/// for the other's last piece.
const PACK_PIECE: usize = 16;
/// Most entries a reader accepts in one page (writers may choose any page size up to it).
pub const MAX_PAGE_ENTRIES: usize = 4096;

pub use crate::storage::FileName;

/// Where a block sits: segment number and the byte range of its data in the segment plaintext.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub cid: Cid,
    pub seg: u32,
    pub off: u32,
    pub len: u32,
    /// The block is a clock event (compaction finds a file's events without a list of them).
    pub event: bool,
    /// The block is a tree node (version 2; compaction drops superseded ones without decoding
    /// blocks to tell nodes from documents).
    pub node: bool,
}

/// Why a diff file could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FormatError {
    /// Not a kiln diff file, or damaged framing.
    Framing(&'static str),
    /// Written by a newer kiln.
    Version(u32),
    /// A sealed unit failed authentication: changed bytes or a different key.
    Seal(&'static str),
    /// A decrypted record does not parse.
    Record(&'static str),
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FormatError::Framing(w) => write!(f, "bad framing: {w}"),
            FormatError::Version(v) => write!(
                f,
                "format version {v} is newer than this kiln supports ({VERSION}); upgrade kiln"
            ),
            FormatError::Seal(w) => {
                write!(f, "{w} failed authentication (changed bytes or wrong key)")
            }
            FormatError::Record(w) => write!(f, "bad record: {w}"),
        }
    }
}

impl From<CborError> for FormatError {
    fn from(e: CborError) -> Self {
        FormatError::Record(e.0)
    }
}

fn seg_aad(n: u32) -> [u8; 15] {
    let mut a = [0u8; 15];
    a[..11].copy_from_slice(b"kiln/seg/v1");
    a[11..].copy_from_slice(&n.to_le_bytes());
    a
}
fn page_aad(n: u32) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[..12].copy_from_slice(b"kiln/page/v1");
    a[12..].copy_from_slice(&n.to_le_bytes());
    a
}
const INDEX_AAD: &[u8] = b"kiln/index/v1";

/// Unit kinds, the first byte of a version-4 unit's nonce.
const SEG_UNIT: u8 = 1;
const PAGE_UNIT: u8 = 2;
const INDEX_UNIT: u8 = 3;
const LOG_UNIT: u8 = 4;

/// The nonce of unit `n` of a kind in a version-4 file: `kind ‖ 0[7] ‖ n u32 LE`. Each is used
/// once per file, and each file has a key of its own.
fn unit_nonce(kind: u8, n: u32) -> [u8; NONCE_LEN] {
    let mut x = [0u8; NONCE_LEN];
    x[0] = kind;
    x[8..].copy_from_slice(&n.to_le_bytes());
    x
}

/// The key of one diff file being written: a fresh random salt (drawn from the system for
/// each file) and the key derived from it and the lineage key. A writer seals each unit of
/// its file once, under the nonce of its kind and number.
pub struct FileKey {
    salt: Salt,
    key: Arc<SubKey>,
}

impl FileKey {
    /// A new file's key; fails when the system's random source does.
    pub fn new(lineage: &Key) -> std::io::Result<FileKey> {
        let salt = crate::format::seal::fresh_salt()?;
        Ok(FileKey {
            key: Arc::new(lineage.subkey(Purpose::DiffFile, &salt)),
            salt,
        })
    }

    /// The salt written into the file.
    pub fn salt(&self) -> &Salt {
        &self.salt
    }

    fn seal_in_place(&self, kind: u8, n: u32, aad: &[u8], unit: &mut [u8]) -> std::io::Result<()> {
        self.key.seal_in_place(unit_nonce(kind, n), aad, unit)
    }

    fn seal_into(
        &self,
        kind: u8,
        n: u32,
        aad: &[u8],
        plain: &[u8],
        out: &mut Vec<u8>,
    ) -> std::io::Result<()> {
        self.key.seal_into(unit_nonce(kind, n), aad, plain, out)
    }
}

/// What opens a file's units: the lineage key (versions 1–3) or the file's own (4 on).
#[derive(Clone, Copy)]
enum Opener<'a> {
    Lineage(&'a Key),
    File(&'a SubKey),
}

impl Opener<'_> {
    fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        match self {
            Opener::Lineage(k) => k.open(aad, sealed),
            Opener::File(k) => k.open(aad, sealed),
        }
    }

    fn open_in<'b>(&self, aad: &[u8], sealed: &'b mut [u8]) -> Result<&'b [u8], SealError> {
        match self {
            Opener::Lineage(k) => k.open_in(aad, sealed),
            Opener::File(k) => k.open_in(aad, sealed),
        }
    }
}

fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn get_varint(b: &[u8], pos: &mut usize) -> Option<u64> {
    let mut n: u64 = 0;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*pos)?;
        *pos += 1;
        n |= ((byte & 0x7f) as u64) << shift;
        if byte & 0x80 == 0 {
            return Some(n);
        }
    }
    None
}

/// Bytes of one file-set reference in an index ("fr"): `value CID[36] ‖ file-set name[32]`.
pub const FILE_REF_LEN: usize = CID_LEN + 32;

/// The file-sets a diff file's document versions name (version 7, "fr"): (document version,
/// file-set name) pairs, sorted, each once. Garbage collection keeps every file-set a live
/// file names; compaction carries the pairs of the versions it keeps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FileRefs(pub Vec<(Cid, FileName)>);

/// Descriptive fields of a file, stored in its sealed index.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Meta {
    /// 0 for a transaction's diff; n ≥ 1 for a file produced by compaction.
    pub level: u8,
    /// Milliseconds since the Unix epoch when the file was written.
    pub time: u64,
    /// The CAR roots: a diff's event; for a compacted file, its newest events (those no event
    /// in the file names as a parent). Every event in a file is flagged in the index.
    pub roots: Vec<Cid>,
    /// For compacted files: the files whose contents this one carries forward.
    pub replaces: Vec<FileName>,
}

/// Builds one diff file in memory, in place: blocks are appended straight into the file's
/// buffer, each segment between room for its nonce and codec byte and room for its tag, and
/// sealed there when the file is finished (a large transaction's bytes are then written to
/// memory once, not once as plaintext and again sealed).
pub struct Writer {
    meta: Meta,
    /// The file so far: its header, then each segment as it will be sealed: room for the
    /// nonce, the codec byte, the CAR bytes and (once closed) room for the tag.
    file: Vec<u8>,
    /// Where each closed segment's CAR bytes start and end in `file`.
    segs: Vec<(usize, usize)>,
    /// Where the open segment's CAR bytes start.
    cur: usize,
    /// A segment is open (blocks go into it).
    open: bool,
    entries: Vec<Entry>,
    seen: DigestSet<Cid>,
    /// Segments built apart (see [`Run`]), sealed already; they follow segment 0, which then
    /// holds only the CAR header.
    runs: Option<SealedRuns>,
    /// The document log's pages so far (plaintext, first id, count) and the one being filled.
    log_pages: Vec<(Vec<u8>, Vec<u8>, u32)>,
    log: LogPages,
    /// The file-sets the file's document versions name (see [`FileRefs`]).
    refs: FileRefs,
}

impl Writer {
    pub fn new(meta: Meta) -> Writer {
        Writer::with_capacity(meta, 0, Vec::new())
    }

    /// A writer with room for about `blocks` blocks (growing the index and the set of CIDs
    /// seen block by block cost a large transaction more than copying its documents), that
    /// builds the file in `buf` (cleared first: a caller reusing one buffer for every file
    /// spares the allocation and, for a large file, its page faults; reserve in it what the
    /// file will need).
    pub fn with_capacity(meta: Meta, blocks: usize, mut buf: Vec<u8>) -> Writer {
        buf.clear();
        put_file_header(&mut buf);
        let mut seen = DigestSet::default();
        seen.reserve(blocks);
        let mut w = Writer {
            meta,
            file: buf,
            segs: Vec::new(),
            cur: 0,
            open: false,
            entries: Vec::with_capacity(blocks),
            seen,
            runs: None,
            log_pages: Vec::new(),
            log: LogPages::default(),
            refs: FileRefs::default(),
        };
        w.open_segment();
        let h = car_header(&w.meta.roots);
        w.file.extend_from_slice(&h);
        w
    }

    /// A writer whose file takes `runs`' segments as they are, right after segment 0 (the CAR
    /// header alone); blocks added afterwards (tree nodes, the event) follow them. A block
    /// whose CID a run holds already is not added again.
    pub fn with_runs(meta: Meta, blocks: usize, buf: Vec<u8>, runs: SealedRuns) -> Writer {
        let mut w = Writer::with_capacity(meta, blocks, buf);
        w.close_segment();
        w.runs = Some(runs);
        w
    }

    fn open_segment(&mut self) {
        self.cur = open_unit(&mut self.file);
        self.open = true;
    }

    fn close_segment(&mut self) {
        close_unit(&mut self.file, self.cur, &mut self.segs);
        self.open = false;
    }

    /// Adds a block (a repeat of a CID already added is ignored).
    pub fn add(&mut self, cid: Cid, data: &[u8]) {
        self.add_kind(cid, data, OTHER)
    }

    /// Adds a clock event block.
    pub fn add_event(&mut self, cid: Cid, data: &[u8]) {
        self.add_kind(cid, data, EVENT)
    }

    /// Adds a tree node.
    pub fn add_node(&mut self, cid: Cid, data: &[u8]) {
        self.add_kind(cid, data, NODE)
    }

    /// Adds an entry to the file's document log (see [`doclog`]); entries come in order
    /// ([`LogEntry`]'s), a repeated one is skipped.
    pub fn add_log_entry(&mut self, e: &LogEntry) -> std::io::Result<()> {
        if let Some(p) = self.log.push(e)? {
            self.log_pages.push(p);
        }
        Ok(())
    }

    /// Records that document version `value` in this file names file-set `set`.
    pub fn add_file_ref(&mut self, value: Cid, set: FileName) {
        self.refs.0.push((value, set));
    }

    /// Seals the document log's pages onto `out`, whose first byte is at `base` in the file;
    /// returns their references.
    fn seal_log(
        &mut self,
        key: &FileKey,
        base: u64,
        out: &mut Vec<u8>,
    ) -> std::io::Result<Vec<LogPageRef>> {
        self.log_pages.extend(self.log.take());
        let mut refs = Vec::with_capacity(self.log_pages.len());
        for (n, (plain, first, count)) in
            std::mem::take(&mut self.log_pages).into_iter().enumerate()
        {
            let off = base + out.len() as u64;
            seal_log_page(key, n as u32, &plain, out)?;
            refs.push(LogPageRef {
                first,
                off,
                len: (base + out.len() as u64 - off) as u32,
                count,
            });
        }
        Ok(refs)
    }

    fn add_kind(&mut self, cid: Cid, data: &[u8], kind: u8) {
        if self.runs.as_ref().is_some_and(|r| r.holds(&cid)) || !self.seen.insert(cid) {
            return;
        }
        let used = self.file.len() - self.cur;
        if !self.open {
            self.open_segment();
        } else if segment_full(used, data.len()) {
            self.close_segment();
            self.open_segment();
        }
        let seg = file_seg(self.segs.len(), self.runs.as_ref().map_or(0, |r| r.units));
        push_section(
            &mut self.file,
            self.cur,
            &mut self.entries,
            seg,
            cid,
            data,
            kind,
        );
    }

    /// Seals everything and returns the file's bytes with its index and, when their
    /// plaintext is at most `keep_plain` bytes, its segments' CAR bytes (so the writer can
    /// cache what it just wrote instead of reading it back). Segments are LZ4-compressed only
    /// with `compress`: transaction diffs are written raw (the commit path stays short, as
    /// LSM stores leave their newest level uncompressed) and compaction compresses what it
    /// merges. The file's name is [`FileName::of`] its bytes, left to the caller. The file is
    /// sealed under a key of its own (a fresh salt; a file with runs takes theirs), so this
    /// fails only when the system's random source or the cipher does.
    pub fn finish(
        mut self,
        key: &Key,
        compress: bool,
        keep_plain: usize,
    ) -> std::io::Result<Finished> {
        if self.open {
            self.close_segment();
        }
        if let Some(runs) = self.runs.take() {
            return self.finish_with_runs(runs, keep_plain);
        }
        let key = FileKey::new(key)?;
        let plain: usize = self.segs.iter().map(|(s, e)| e - s).sum();
        let segments = if plain <= keep_plain {
            self.segs
                .iter()
                .map(|&(s, e)| self.file[s..e].to_vec())
                .collect()
        } else {
            Vec::new()
        };
        let mut seg_at = Vec::with_capacity(self.segs.len());
        let (mut out, pieces) = if compress {
            // Packed in pieces the file takes as they are, after its header.
            let (file, segs) = (&self.file, &self.segs);
            let pieces = seal_segments(&key, segs.len(), &mut seg_at, &|i, _, with| {
                let (s, e) = segs[i];
                with(&file[s..e])
            })?;
            (self.file[..HEADER_LEN].to_vec(), pieces)
        } else {
            // Raw: the codec byte and the CAR bytes are sealed where they are.
            for (i, &(s, e)) in self.segs.iter().enumerate() {
                let u = unit(s, e);
                seg_at.push((u.start as u64, u.len() as u32));
                key.seal_in_place(SEG_UNIT, i as u32, &seg_aad(i as u32), &mut self.file[u])?;
            }
            (std::mem::take(&mut self.file), Vec::new())
        };
        let split = if pieces.is_empty() {
            out.len()
        } else {
            HEADER_LEN
        };
        let base = pieces.iter().map(Vec::len).sum::<usize>() as u64;
        let log = self.seal_log(&key, base, &mut out)?;
        out.reserve(self.entries.len() * 48 + 256);
        let refs = std::mem::take(&mut self.refs);
        let (index, index_len) = write_tail(
            &key,
            self.meta,
            self.entries,
            seg_at,
            (log, refs),
            base,
            &mut out,
        )?;
        Ok(Finished {
            split,
            bytes: out,
            runs: Arc::default(),
            pieces,
            index,
            index_len,
            segments,
        })
    }

    /// [`Writer::finish`] of a file with runs: segment 0, the runs' segments, this writer's
    /// later segments, all raw (the runs are sealed already).
    fn finish_with_runs(
        mut self,
        runs: SealedRuns,
        keep_plain: usize,
    ) -> std::io::Result<Finished> {
        let key = &runs.key;
        // The file: `file[..split]` (header, segment 0), the runs, `file[split..]`.
        let split = self.segs[0].1 + TAG_LEN;
        let run_bytes: usize = runs.runs.iter().map(|r| r.buf.len()).sum();
        let own_plain: usize = self.segs.iter().map(|(s, e)| e - s).sum();
        let keep = runs.plain.is_some() && own_plain + runs.plain_len <= keep_plain;
        let mut segments = Vec::new();
        let mut seg_at = Vec::with_capacity(self.segs.len() + runs.units);
        let at_file = |buf_at: usize| {
            if buf_at < split {
                buf_at
            } else {
                buf_at + run_bytes
            }
        };
        for (i, &(s, e)) in self.segs.iter().enumerate() {
            let u = unit(s, e);
            seg_at.push((at_file(u.start) as u64, u.len() as u32));
            if i == 0 {
                // The runs' segments come right after segment 0.
                let mut at = split;
                for r in runs.runs.iter() {
                    for &(s, e) in &r.segs {
                        let u = unit(s, e);
                        seg_at.push(((at + u.start) as u64, u.len() as u32));
                    }
                    at += r.buf.len();
                }
            }
        }
        if keep {
            for (i, &(s, e)) in self.segs.iter().enumerate() {
                segments.push(self.file[s..e].to_vec());
                if i == 0 {
                    segments.extend(runs.plain.iter().flatten().cloned());
                }
            }
        }
        for (i, &(s, e)) in self.segs.iter().enumerate() {
            let n = file_seg(i, runs.units);
            key.seal_in_place(SEG_UNIT, n, &seg_aad(n), &mut self.file[unit(s, e)])?;
        }
        // Every entry, sorted: the runs' (sorted already) merged with this writer's.
        let mut own = std::mem::take(&mut self.entries);
        sort_entries(&mut own);
        let mut entries = Vec::with_capacity(own.len() + runs.entries.len());
        let mut theirs = runs.entries.iter().copied().peekable();
        for e in own {
            while let Some(t) = theirs.next_if(|t| entry_order(t, &e).is_lt()) {
                entries.push(t);
            }
            entries.push(e);
        }
        entries.extend(theirs);
        let mut out = std::mem::take(&mut self.file);
        let log = self.seal_log(key, run_bytes as u64, &mut out)?;
        out.reserve(entries.len() * 48 + 256);
        let refs = std::mem::take(&mut self.refs);
        let (index, index_len) = write_tail_at(
            key,
            self.meta,
            &entries,
            seg_at,
            (log, refs),
            run_bytes as u64,
            &mut out,
            None,
        )?;
        let index = index.with_entries(entries);
        Ok(Finished {
            bytes: out,
            split,
            runs: runs.runs,
            pieces: Vec::new(),
            index,
            index_len,
            segments,
        })
    }
}

/// The order of a file's index: by CID. Most pairs differ in their first 8 bytes (4 of them
/// the digest's), compared as one integer before the whole CID.
fn entry_order(a: &Entry, b: &Entry) -> std::cmp::Ordering {
    let lead = |c: &Cid| {
        let b = c.as_bytes();
        u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
    };
    lead(&a.cid)
        .cmp(&lead(&b.cid))
        .then_with(|| a.cid.cmp(&b.cid))
}

fn sort_entries(entries: &mut [Entry]) {
    entries.sort_unstable_by(entry_order);
}

/// Whether a segment holding `used` CAR bytes ends before a block of `len` bytes (unless it is
/// empty: a larger block gets a segment alone).
fn segment_full(used: usize, len: usize) -> bool {
    segment_full_at(used, len, SEGMENT_TARGET)
}

/// [`segment_full`] for a segment that may grow to `limit` bytes.
fn segment_full_at(used: usize, len: usize, limit: usize) -> bool {
    used > 0 && used + len + CID_LEN + 10 > limit
}

/// Most plaintext bytes a segment holding a group (see [`StreamWriter::begin_group`]) grows to
/// before it ends: a tree leaf with the document versions it names, read together.
pub const GROUP_TARGET: usize = 4 * SEGMENT_TARGET;

/// The section of `cid` in a segment's plaintext `seg` (segment number `n`), found by walking
/// its sections: how a reader with a hint of where a block lies (next to the tree leaf that
/// names it) finds it without the file's index. `None` when it is not there or the bytes do
/// not frame as sections (a hint is never trusted: the caller checks the block's hash).
pub fn find_in_segment(seg: &[u8], n: u32, cid: &Cid) -> Option<Entry> {
    let want = cid.as_bytes();
    let mut pos = 0;
    while pos < seg.len() {
        let len = get_varint(seg, &mut pos)? as usize;
        let end = pos.checked_add(len).filter(|&e| e <= seg.len())?;
        if len >= CID_LEN && seg[pos..pos + CID_LEN] == want[..] {
            return Some(Entry {
                cid: *cid,
                seg: n,
                off: (pos + CID_LEN) as u32,
                len: (len - CID_LEN) as u32,
                event: false,
                node: false,
            });
        }
        pos = end;
    }
    None
}

/// Each block of a segment's plaintext `seg`, in order: its CID and its bytes. Sections that
/// are no block (a header: too short, or not labelled with a CID) are stepped over; the walk
/// ends early where the bytes do not frame as sections (a reader that must find every block
/// it wants looks the missing ones up through the file's index, which reports the damage).
pub fn sections(seg: &[u8]) -> impl Iterator<Item = (Cid, &[u8])> {
    let mut pos = 0;
    std::iter::from_fn(move || loop {
        let len = get_varint(seg, &mut pos)? as usize;
        let end = pos.checked_add(len).filter(|&e| e <= seg.len())?;
        let at = pos;
        pos = end;
        if len >= CID_LEN {
            if let Some(cid) = Cid::from_bytes(&seg[at..at + CID_LEN]) {
                return Some((cid, &seg[at + CID_LEN..end]));
            }
        }
    })
}

/// Opens a raw segment unit at the end of `buf` (room for the nonce, the codec byte); returns
/// where its CAR bytes start.
fn open_unit(buf: &mut Vec<u8>) -> usize {
    buf.extend_from_slice(&[0; NONCE_LEN]);
    buf.push(RAW);
    buf.len()
}

/// Closes the unit whose CAR bytes started at `cur` (records them, leaves room for the tag).
fn close_unit(buf: &mut Vec<u8>, cur: usize, segs: &mut Vec<(usize, usize)>) {
    segs.push((cur, buf.len()));
    buf.extend_from_slice(&[0; TAG_LEN]);
}

/// The sealed unit around CAR bytes `s..e` of a raw segment.
fn unit(s: usize, e: usize) -> std::ops::Range<usize> {
    s - 1 - NONCE_LEN..e + TAG_LEN
}

/// The file's number of a writer's segment `local` when `units` segments of runs sit between
/// its segment 0 and 1.
fn file_seg(local: usize, units: usize) -> u32 {
    (if local > 0 { local + units } else { 0 }) as u32
}

const OTHER: u8 = 0;
const EVENT: u8 = 1;
const NODE: u8 = 2;

/// Appends a block's CAR section to segment `seg`, whose CAR bytes start at `base` in `cur`,
/// and records its entry.
fn push_section(
    cur: &mut Vec<u8>,
    base: usize,
    entries: &mut Vec<Entry>,
    seg: u32,
    cid: Cid,
    data: &[u8],
    kind: u8,
) {
    put_varint(cur, (CID_LEN + data.len()) as u64);
    cur.extend_from_slice(cid.as_bytes());
    let off = (cur.len() - base) as u32;
    cur.extend_from_slice(data);
    entries.push(Entry {
        cid,
        seg,
        off,
        len: data.len() as u32,
        event: kind == EVENT,
        node: kind == NODE,
    });
}

/// Appends a file's index pages, index and trailer to `out`, which holds the file's bytes so
/// far but for `base` of them (sealed segments the file takes apart). Returns the index as a
/// reader would get it.
fn write_tail(
    key: &FileKey,
    meta: Meta,
    mut entries: Vec<Entry>,
    seg_at: Vec<(u64, u32)>,
    extra: (Vec<LogPageRef>, FileRefs),
    base: u64,
    out: &mut Vec<u8>,
) -> std::io::Result<(Index, u32)> {
    sort_entries(&mut entries);
    write_tail_at(key, meta, &entries, seg_at, extra, base, out, None)
        .map(|(i, l)| (i.with_entries(entries), l))
}

/// Bytes of sealed index pages a streaming writer hands on at a time (see [`write_tail_at`]).
const SPILL_AT: usize = 1 << 20;

/// What [`write_tail_at`] hands bytes it has finished to, when it may (a streaming writer's
/// output): the tail of a large file is not held whole.
type Spill<'a> = Option<&'a mut dyn FnMut(&[u8]) -> std::io::Result<()>>;

/// [`write_tail`] for entries sorted by [`entry_order`], in a file of which `base` bytes
/// are not in `out` (written elsewhere, or a writer's runs); the index returned holds the
/// entries it lists if paged, else none (callers have them: see [`Index::with_entries`]).
/// With `spill`, sealed pages go to it whenever [`SPILL_AT`] bytes are ready (`out` then
/// holds the rest of the tail only).
#[allow(clippy::too_many_arguments)]
fn write_tail_at(
    key: &FileKey,
    meta: Meta,
    entries: &[Entry],
    seg_at: Vec<(u64, u32)>,
    (log, mut refs): (Vec<LogPageRef>, FileRefs),
    mut base: u64,
    out: &mut Vec<u8>,
    mut spill: Spill,
) -> std::io::Result<(Index, u32)> {
    let at = |base: u64, out: &Vec<u8>| base + out.len() as u64;
    refs.0.sort_unstable();
    refs.0.dedup();
    let mut pages = Vec::new();
    // Paged: the document versions and events go into pages, the tree nodes stay in the index
    // itself (a node lookup then reads no page; they are a few percent of a file's blocks).
    let (listed, paged) = split_entries(entries);
    if paged {
        paged_chunks(entries, |i, chunk| -> std::io::Result<()> {
            let start = at(base, out);
            let aad = page_aad(i as u32);
            key.seal_into(PAGE_UNIT, i as u32, &aad, &fixed_entries(chunk), out)?;
            pages.push((
                chunk[0].cid,
                start,
                (at(base, out) - start) as u32,
                chunk.len() as u32,
            ));
            if let Some(s) = spill.as_mut().filter(|_| out.len() >= SPILL_AT) {
                s(out)?;
                base += out.len() as u64;
                out.clear();
            }
            Ok(())
        })?;
    }
    let structural: Vec<&Cid> = entries
        .iter()
        .filter(|e| e.event || e.node)
        .map(|e| &e.cid)
        .collect();
    // A small file's index leaves out its structural filter (the head record's
    // `Filter::Small` covers every block) and, when its one event is its root, its roots
    // (a one-document commit's index was a fifth of its diff: see `Index::open`).
    let small = !paged && entries.len() <= SMALL_FILE_BLOCKS;
    let filter = if small {
        Filter::None
    } else {
        Filter::structural(structural.into_iter())
    };
    let roots_implied = !paged && implied_roots(&listed).as_ref() == Some(&meta.roots);
    let index_at = at(base, out);
    out.reserve(
        SALT_LEN
            + NONCE_LEN
            + TAG_LEN
            + 256
            + listed.len() * ENTRY_LEN
            + pages.len() * (CID_LEN + 32)
            + meta.replaces.len() * 34
            + meta.roots.len() * 48
            + seg_at.len() * 20
            + log.iter().map(|p| p.first.len() + 24).sum::<usize>()
            + refs.0.len() * FILE_REF_LEN
            + filter.byte_len(),
    );
    out.extend_from_slice(&key.salt);
    seal_encoded(key, INDEX_UNIT, 0, INDEX_AAD, out, |e| {
        e.map(
            7 + usize::from(!roots_implied)
                + usize::from(!small)
                + usize::from(!log.is_empty())
                + usize::from(!refs.0.is_empty()),
        );
        e.str("v");
        e.u64(VERSION as u64);
        e.str("at");
        e.u64(meta.time);
        e.str("bk");
        e.bytes_with(listed.len() * ENTRY_LEN, |b| put_fixed_entries(&listed, b));
        if !log.is_empty() {
            e.str("dl");
            e.array(log.len());
            for p in &log {
                e.array(4);
                e.bytes(&p.first);
                e.u64(p.off);
                e.u64(p.len as u64);
                e.u64(p.count as u64);
            }
        }
        if !refs.0.is_empty() {
            e.str("fr");
            e.bytes_with(refs.0.len() * FILE_REF_LEN, |b| {
                for (c, n) in &refs.0 {
                    b.extend_from_slice(c.as_bytes());
                    b.extend_from_slice(&n.0);
                }
            });
        }
        e.str("lv");
        e.u64(meta.level as u64);
        e.str("pg");
        e.array(pages.len());
        for (first, off, len, count) in &pages {
            e.array(4);
            e.bytes(first.as_bytes());
            e.u64(*off);
            e.u64(*len as u64);
            e.u64(*count as u64);
        }
        e.str("rp");
        e.array(meta.replaces.len());
        for r in &meta.replaces {
            e.bytes(&r.0);
        }
        if !roots_implied {
            e.str("rt");
            e.array(meta.roots.len());
            for r in &meta.roots {
                e.link(r);
            }
        }
        if !small {
            e.str("sf");
            match &filter {
                Filter::Structural(b) => e.bytes(b),
                _ => e.bytes(&[]),
            }
        }
        e.str("sg");
        e.array(seg_at.len());
        for (off, len) in &seg_at {
            e.array(2);
            e.u64(*off);
            e.u64(*len as u64);
        }
    })?;
    let index_len = (at(base, out) - index_at) as u32;
    out.extend_from_slice(&index_at.to_le_bytes());
    out.extend_from_slice(&index_len.to_le_bytes());
    out.extend_from_slice(END_SALTED);
    let index = Index {
        key: Some(key.key.clone()),
        version: VERSION,
        meta,
        segs: seg_at,
        filter,
        log,
        refs,
        // A paged file's listed entries (a copy), kept: the caller's are all of them.
        entries: match listed {
            Cow::Owned(l) => l,
            Cow::Borrowed(_) => Vec::new(),
        },
        pages: pages
            .into_iter()
            .map(|(first, off, len, count)| PageRef {
                first,
                off,
                len,
                count,
            })
            .collect(),
    };
    Ok((index, index_len))
}

/// Appends to `out` a sealed unit whose plaintext `encode` writes, encoded and sealed in
/// place (no plaintext copy).
fn seal_encoded(
    key: &FileKey,
    kind: u8,
    n: u32,
    aad: &[u8],
    out: &mut Vec<u8>,
    encode: impl FnOnce(&mut Encoder),
) -> std::io::Result<()> {
    let start = out.len();
    out.extend_from_slice(&[0; NONCE_LEN]);
    let mut e = Encoder {
        buf: std::mem::take(out),
    };
    encode(&mut e);
    *out = e.buf;
    out.extend_from_slice(&[0; TAG_LEN]);
    key.seal_in_place(kind, n, aad, &mut out[start..])
}

fn car_header(roots: &[Cid]) -> Vec<u8> {
    let mut e = Encoder::new();
    e.map(2);
    e.str("roots");
    e.array(roots.len());
    for r in roots {
        e.link(r);
    }
    e.str("version");
    e.u64(1);
    let h = e.into_bytes();
    let mut out = Vec::with_capacity(h.len() + 4);
    put_varint(&mut out, h.len() as u64);
    out.extend_from_slice(&h);
    out
}

/// The CIDs a [`StreamWriter`] has added, in ~16 bytes each where a set of CIDs takes ~60
/// (a compaction of a million blocks held both this and their entries): each CID's first 8
/// digest bytes mapped to the position of its entry, which holds the whole CID; the rare CID
/// whose first 8 bytes another one has (they are hash bytes: chance, or made on purpose) is
/// kept whole apart.
#[derive(Default)]
struct Added {
    by_lead: DigestMap<u64, u32>,
    clashes: DigestSet<Cid>,
}

impl Added {
    /// Notes `cid`, whose entry will be pushed at the end of `entries`; false if it was added
    /// before.
    fn insert(&mut self, cid: &Cid, entries: &[Entry]) -> bool {
        use std::collections::hash_map::Entry as Slot;
        match self.by_lead.entry(cid.lead()) {
            Slot::Vacant(v) => {
                v.insert(entries.len() as u32);
                true
            }
            Slot::Occupied(o) => {
                entries[*o.get() as usize].cid != *cid && self.clashes.insert(*cid)
            }
        }
    }

    fn contains(&self, cid: &Cid, entries: &[Entry]) -> bool {
        match self.by_lead.get(&cid.lead()) {
            None => false,
            Some(&i) => entries[i as usize].cid == *cid || self.clashes.contains(cid),
        }
    }
}

/// A sealed file's bytes, index and segments.
pub struct Finished {
    /// The file's bytes, but for its runs' segments (a writer with runs) or its pieces (a
    /// compressed file's sealed segments): those go between `bytes[..split]` and
    /// `bytes[split..]` (see [`Finished::parts`]).
    pub bytes: Vec<u8>,
    pub split: usize,
    /// The runs' buffers, in order.
    pub runs: Arc<Vec<Run>>,
    /// Sealed segments packed apart (a compressed file's), in order: they go between
    /// `bytes[..split]` and `bytes[split..]` as runs do (a file has one or the other).
    pub pieces: Vec<Vec<u8>>,
    /// The index, as [`Index::open`] would read it back.
    pub index: Index,
    /// Length of the sealed index (it ends where the trailer starts).
    pub index_len: u32,
    /// The CAR bytes of each segment, if asked for (see [`Writer::finish`]).
    pub segments: Vec<Vec<u8>>,
}

impl Finished {
    /// The file's bytes, in order, as slices (its name is the hash of their concatenation).
    pub fn parts(&self) -> Vec<&[u8]> {
        let mut p = Vec::with_capacity(self.runs.len() + self.pieces.len() + 2);
        p.push(&self.bytes[..self.split]);
        p.extend(self.runs.iter().map(|r| r.buf.as_slice()));
        p.extend(self.pieces.iter().map(Vec::as_slice));
        p.push(&self.bytes[self.split..]);
        p
    }

    /// The file's length.
    pub fn file_len(&self) -> usize {
        self.bytes.len()
            + self.runs.iter().map(|r| r.buf.len()).sum::<usize>()
            + self.pieces.iter().map(Vec::len).sum::<usize>()
    }

    /// [`Finished::name`], taking the hashes of subtrees of its runs computed before (ignored
    /// unless they are of a span starting where its runs do).
    pub fn name_with(&self, known: &Subtrees) -> FileName {
        let fits = known.trees.is_empty() || known.start == self.split as u64;
        if fits && header_version(&self.bytes).is_some_and(|v| v >= 3) {
            FileName(blake3_with(&self.parts(), self.file_len() as u64, known))
        } else {
            self.name()
        }
    }

    /// The file's name (see [`FileName::of`]).
    pub fn name(&self) -> FileName {
        let parts = self.parts();
        let mut h = NameHasher::new(parts[0]);
        for p in &parts {
            h.update(p);
        }
        h.finish()
    }
}

/// A compressed file of tree nodes (`nodes`: CID and encoding; a repeated CID is stored
/// once), laid out as a [`Writer`] adding them in order would lay them, but packed and sealed
/// straight from the encodings (each segment assembled in a small buffer of its thread's)
/// rather than first copied into one buffer the size of the file: an index build writes
/// megabytes of nodes at once. No document log, no file-set references.
pub fn pack_nodes(key: &Key, meta: Meta, nodes: &[(Cid, &[u8])]) -> std::io::Result<Finished> {
    let key = FileKey::new(key)?;
    let header = car_header(&meta.roots);
    let mut seen = DigestSet::default();
    seen.reserve(nodes.len());
    let blocks: Vec<&(Cid, &[u8])> = nodes.iter().filter(|n| seen.insert(n.0)).collect();
    // Segment boundaries as `Writer::add_kind` decides them (segment 0 opens with the header).
    let mut entries = Vec::with_capacity(blocks.len());
    let mut segs = Vec::new();
    let (mut from, mut used) = (0, header.len());
    for (i, (cid, data)) in blocks.iter().enumerate() {
        if segment_full(used, data.len()) {
            segs.push(from..i);
            (from, used) = (i, 0);
        }
        let head = varint_len((CID_LEN + data.len()) as u64) + CID_LEN;
        entries.push(Entry {
            cid: *cid,
            seg: segs.len() as u32,
            off: (used + head) as u32,
            len: data.len() as u32,
            event: false,
            node: true,
        });
        used += head + data.len();
    }
    segs.push(from..blocks.len());
    let mut seg_at = Vec::with_capacity(segs.len());
    let pieces = seal_segments(&key, segs.len(), &mut seg_at, &|i, plain, with| {
        plain.clear();
        if i == 0 {
            plain.extend_from_slice(&header);
        }
        for (cid, data) in &blocks[segs[i].clone()] {
            put_varint(plain, (CID_LEN + data.len()) as u64);
            plain.extend_from_slice(cid.as_bytes());
            plain.extend_from_slice(data);
        }
        with(plain)
    })?;
    let mut out = Vec::with_capacity(HEADER_LEN + entries.len() * 48 + 256);
    put_file_header(&mut out);
    let base = pieces.iter().map(Vec::len).sum::<usize>() as u64;
    let extra = (Vec::new(), FileRefs::default());
    let (index, index_len) = write_tail(&key, meta, entries, seg_at, extra, base, &mut out)?;
    Ok(Finished {
        split: HEADER_LEN,
        bytes: out,
        runs: Arc::default(),
        pieces,
        index,
        index_len,
        segments: Vec::new(),
    })
}

/// A file's first bytes: magic, format version, flags (none).
fn put_file_header(buf: &mut Vec<u8>) {
    buf.extend_from_slice(MAGIC);
    buf.extend_from_slice(&VERSION.to_le_bytes());
    buf.extend_from_slice(&0u32.to_le_bytes());
}

/// Bytes [`put_varint`] writes for `n`.
fn varint_len(n: u64) -> usize {
    (64 - (n | 1).leading_zeros() as usize).div_ceil(7)
}

/// Hands segment `i`'s CAR bytes to `with` (assembling them in the thread's buffer it is
/// given, if need be): what [`seal_segments`] packs.
type PlainOf<'a> = dyn Fn(usize, &mut Vec<u8>, &mut dyn FnMut(&[u8]) -> std::io::Result<()>) -> std::io::Result<()>
    + Sync
    + 'a;

/// Compresses and seals segments `0..count` of a file (their CAR bytes from `plain_of`),
/// each one's place pushed onto `seg_at` (the first right after the file's header). They are
/// sealed in pieces, on two threads for a file of many; the pieces, in order, are the file's
/// bytes after its header ([`Finished::pieces`]). Each unit's nonce is its number, so the
/// bytes are the same however the work was shared.
fn seal_segments(
    key: &FileKey,
    count: usize,
    seg_at: &mut Vec<(u64, u32)>,
    plain_of: &PlainOf<'_>,
) -> std::io::Result<Vec<Vec<u8>>> {
    let seal_piece = |bufs: &mut (Vec<u8>, Vec<u8>), nums: &[usize]| {
        let (plain, packed) = bufs;
        let mut sealed = Vec::with_capacity(nums.len() * SEGMENT_TARGET);
        let mut ends = Vec::with_capacity(nums.len());
        for &i in nums {
            let n = i as u32;
            plain_of(i, plain, &mut |p| {
                pack_segment(p, packed, true);
                key.seal_into(SEG_UNIT, n, &seg_aad(n), packed, &mut sealed)
            })?;
            ends.push(sealed.len());
        }
        Ok::<_, std::io::Error>((sealed, ends))
    };
    let numbers: Vec<usize> = (0..count).collect();
    let done = if count >= 2 * PACK_PIECE {
        crate::util::par::map_chunks(&numbers, PACK_PIECE, Default::default, |bufs, _, nums| {
            seal_piece(bufs, nums)
        })
        .0
    } else {
        vec![seal_piece(&mut Default::default(), &numbers)]
    };
    let mut pieces = Vec::with_capacity(done.len());
    let mut at = HEADER_LEN as u64;
    for piece in done {
        let (sealed, ends) = piece?;
        let mut start = 0;
        for end in ends {
            seg_at.push((at + start as u64, (end - start) as u32));
            start = end;
        }
        at += sealed.len() as u64;
        pieces.push(sealed);
    }
    Ok(pieces)
}

/// A segment's stored plaintext (version 2): a codec byte, then the CAR bytes as they are
/// (`RAW`) or, with `compress`, as an LZ4 block with their length as u32 LE in front (`LZ4`)
/// when that is smaller.
fn pack_segment(s: &[u8], out: &mut Vec<u8>, compress: bool) {
    out.clear();
    if compress {
        out.resize(5 + lz4_flex::block::get_maximum_output_size(s.len()), 0);
        out[0] = LZ4;
        out[1..5].copy_from_slice(&(s.len() as u32).to_le_bytes());
        if let Ok(n) = lz4_flex::block::compress_into(s, &mut out[5..]) {
            if 4 + n < s.len() {
                out.truncate(5 + n);
                return;
            }
        }
        out.clear();
    }
    out.push(RAW);
    out.extend_from_slice(s);
}

/// Decrypts segment `n` of a file of format `version` and returns its CAR bytes.
fn open_segment_with(
    key: Opener<'_>,
    n: u32,
    sealed: &[u8],
    version: u32,
) -> Result<Vec<u8>, FormatError> {
    open_segment_in(key, n, &mut sealed.to_vec(), version)
}

/// [`open_segment_with`], decrypting within `sealed` (whose bytes it leaves unspecified).
fn open_segment_in(
    key: Opener<'_>,
    n: u32,
    sealed: &mut [u8],
    version: u32,
) -> Result<Vec<u8>, FormatError> {
    let plain = key
        .open_in(&seg_aad(n), sealed)
        .map_err(|SealError| FormatError::Seal("segment"))?;
    unpack_segment(plain, version)
}

/// A segment's (or log page's) CAR bytes from its decrypted plaintext: after the codec byte,
/// as they are or LZ4-decompressed (version 2 on; before, the plaintext itself).
fn unpack_segment(plain: &[u8], version: u32) -> Result<Vec<u8>, FormatError> {
    if version < 2 {
        return Ok(plain.to_vec());
    }
    match plain.first() {
        Some(&RAW) => Ok(plain[1..].to_vec()),
        Some(&LZ4) => {
            let body = &plain[1..];
            let len = body
                .get(..4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
                .ok_or(FormatError::Framing("compressed segment too short"))?;
            if len > MAX_SEGMENT {
                return Err(FormatError::Framing(
                    "compressed segment declares too many bytes",
                ));
            }
            lz4_flex::block::decompress_size_prepended(body)
                .map_err(|_| FormatError::Framing("compressed segment does not decompress"))
        }
        _ => Err(FormatError::Framing("unknown segment codec")),
    }
}

mod doclog;
mod index;
mod name;
mod runs;
mod stream;
mod verify;
pub use doclog::*;
pub use index::*;
pub use name::*;
pub use runs::*;
pub use stream::*;
pub use verify::*;

#[cfg(test)]
mod tests;
