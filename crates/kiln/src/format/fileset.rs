//! File-set files (`.kfs`): the bytes of the files attached in one document write, kept apart
//! from the diff files and named, like them, by the BLAKE3 hash of all their bytes.
//!
//! ```text
//! header   "KILNFSET" ‖ version u32 LE (=1) ‖ 0u32                          16 bytes
//! chunk*   for file i, chunk j: sealed("kiln/fchunk/v1" ‖ i u32 ‖ j u32, bytes)  CHUNK bytes of
//!          plaintext each but a file's last (a file of 0 bytes has none); the files' chunks
//!          one file after the other, so chunk j of file i is at start(i) + j × (CHUNK + 28)
//! salt     32 random bytes (the file-set's key)
//! index    sealed("kiln/fsetidx/v1", dag-cbor {"v": 1, "ck": CHUNK,
//!                                              "fs": [[content CID, size, start], …]})
//! trailer  index offset u64 LE ‖ index length u32 LE ‖ "KFSE"                16 bytes
//! ```
//!
//! Every unit is sealed under the file-set's key (HKDF of the lineage key and the salt), with
//! nonce `kind ‖ d[3] ‖ i u32 ‖ j u32` (kind 5 for chunks, 6 for the index; `d` see
//! [`nonce`]): a chunk authenticates its own place, so a reader that opens only the chunks a
//! byte range needs still gets the right bytes or an error, never others. A file's content CID
//! is the raw-codec sha2-256 CID of all its bytes (what a document's `_files` names); `verify`
//! checks it, reads rely on each chunk's authentication (only a holder of the key could seal
//! other bytes).

use crate::format::block::cbor::{Decoder, Encoder};
use crate::format::block::cid::{Cid, Codec};
use crate::format::car::{FileName, FormatError};
use crate::format::seal::{Key, Purpose, Salt, SealError, SubKey, NONCE_LEN, SALT_LEN, TAG_LEN};
use sha2::{Digest, Sha256};
use std::sync::Arc;

pub const MAGIC: &[u8; 8] = b"KILNFSET";
/// The version written (and the only one read).
pub const VERSION: u32 = 1;
pub const HEADER_LEN: usize = 16;
pub const TRAILER_LEN: usize = 16;
const END: &[u8; 4] = b"KFSE";
/// Plaintext bytes per chunk: a range read opens at most two chunks more than it returns.
pub const CHUNK: usize = 64 * 1024;
/// Bytes a sealed chunk adds to its plaintext (nonce and tag).
pub const CHUNK_OVERHEAD: usize = NONCE_LEN + TAG_LEN;
/// Chunks sealed and written at a time (the content hash of each batch runs beside).
const BATCH: usize = 16;
/// Files one file-set holds, at most.
pub const MAX_FILES: usize = 1 << 16;
/// Largest index accepted (a file-set of `MAX_FILES` files needs ~3 MiB).
const MAX_INDEX: u32 = 8 << 20;
const CHUNK_UNIT: u8 = 5;
const INDEX_UNIT: u8 = 6;
const INDEX_AAD: &[u8] = b"kiln/fsetidx/v1";

fn chunk_aad(i: u32, j: u32) -> [u8; 22] {
    let mut a = [0u8; 22];
    a[..14].copy_from_slice(b"kiln/fchunk/v1");
    a[14..18].copy_from_slice(&i.to_le_bytes());
    a[18..].copy_from_slice(&j.to_le_bytes());
    a
}

/// The nonce of unit `j` of file `i` of a kind: `kind ‖ d[3] ‖ i u32 ‖ j u32`, where `d` counts
/// the files the writer took back out before (their chunks, sealed as file `i` too, may have
/// reached the disk: never the same nonce twice under one key). Readers take the stored nonce;
/// the associated data binds `i` and `j`.
fn nonce(kind: u8, d: u32, i: u32, j: u32) -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    n[0] = kind;
    n[1..4].copy_from_slice(&d.to_le_bytes()[..3]);
    n[4..8].copy_from_slice(&i.to_le_bytes());
    n[8..].copy_from_slice(&j.to_le_bytes());
    n
}

/// One file of a file-set, as its index lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The raw-codec CID of the file's bytes.
    pub cid: Cid,
    pub size: u64,
    /// Offset of its first chunk in the file-set.
    pub start: u64,
}

impl Entry {
    /// Chunks the file has.
    pub fn chunks(&self) -> u64 {
        self.size.div_ceil(CHUNK as u64)
    }

    /// Offset and sealed length of chunk `j`.
    pub fn chunk_at(&self, j: u64) -> (u64, usize) {
        let plain = self
            .size
            .saturating_sub(j.saturating_mul(CHUNK as u64))
            .min(CHUNK as u64) as usize;
        (
            self.start + j * (CHUNK + CHUNK_OVERHEAD) as u64,
            plain + CHUNK_OVERHEAD,
        )
    }

    /// Sealed bytes of the file in its file-set.
    pub fn sealed_len(&self) -> u64 {
        self.size + self.chunks() * CHUNK_OVERHEAD as u64
    }
}

/// A file-set's opened index: its key and its files.
#[derive(Clone, Debug)]
pub struct Index {
    key: Arc<SubKey>,
    pub files: Vec<Entry>,
}

/// Reads a file-set's trailer: the offset and length of its index region (salt and index).
pub fn parse_trailer(file_len: u64, t: &[u8]) -> Result<(u64, u32), FormatError> {
    if t.len() != TRAILER_LEN || &t[12..] != END {
        return Err(FormatError::Framing(
            "not a file-set (no trailer: truncated?)",
        ));
    }
    let at = u64::from_le_bytes(t[..8].try_into().unwrap_or_default());
    let len = u32::from_le_bytes(t[8..12].try_into().unwrap_or_default());
    if at < HEADER_LEN as u64
        || len > MAX_INDEX
        || at.checked_add(len as u64 + TRAILER_LEN as u64) != Some(file_len)
    {
        return Err(FormatError::Framing("file-set trailer out of range"));
    }
    Ok((at, len))
}

/// Checks a file-set's header.
pub fn check_header(h: &[u8]) -> Result<(), FormatError> {
    if h.len() < HEADER_LEN || &h[..8] != MAGIC {
        return Err(FormatError::Framing("not a file-set"));
    }
    let v = u32::from_le_bytes(h[8..12].try_into().unwrap_or_default());
    if v != VERSION {
        return Err(FormatError::Version(v));
    }
    Ok(())
}

impl Index {
    /// Opens the index region (`region`: salt and sealed index) of a file-set whose index
    /// starts at `at` under lineage key `key`.
    pub fn open(key: &Key, region: &[u8], at: u64) -> Result<Index, FormatError> {
        let salt: &Salt = region
            .get(..SALT_LEN)
            .and_then(|s| s.try_into().ok())
            .ok_or(FormatError::Framing("file-set index shorter than its salt"))?;
        let key = Arc::new(key.subkey(Purpose::FileSet, salt));
        let plain = key
            .open(INDEX_AAD, &region[SALT_LEN..])
            .map_err(|SealError| FormatError::Seal("file-set index"))?;
        let mut d = Decoder::new(&plain);
        if d.map()? != 3 {
            return Err(FormatError::Record(
                "file-set index: wrong number of fields",
            ));
        }
        d.key("v")?;
        if d.u64()? != VERSION as u64 {
            return Err(FormatError::Record("file-set index: version"));
        }
        d.key("ck")?;
        if d.u64()? != CHUNK as u64 {
            return Err(FormatError::Record("file-set index: chunk size"));
        }
        d.key("fs")?;
        let n = d.array()?;
        if n > MAX_FILES {
            return Err(FormatError::Record("file-set index: too many files"));
        }
        let mut files = Vec::with_capacity(n);
        let mut next = HEADER_LEN as u64;
        for _ in 0..n {
            if d.array()? != 3 {
                return Err(FormatError::Record("file-set entry must have 3 fields"));
            }
            let cid = Cid::from_bytes(d.bytes()?)
                .filter(|c| c.codec() == Codec::Raw)
                .ok_or(FormatError::Record("file-set entry: bad CID"))?;
            let (size, start) = (d.u64()?, d.u64()?);
            let e = Entry { cid, size, start };
            // Files lie one after the other from the header to the index.
            if start != next || size.checked_mul(2).is_none() {
                return Err(FormatError::Record("file-set entry out of place"));
            }
            next = start
                .checked_add(e.sealed_len())
                .filter(|end| *end <= at)
                .ok_or(FormatError::Record("file-set entry out of range"))?;
            files.push(e);
        }
        d.finish()?;
        if next != at {
            return Err(FormatError::Record(
                "file-set: bytes between files and index",
            ));
        }
        Ok(Index { key, files })
    }

    /// Opens chunk `j` of file `i` (`sealed`: its bytes, as [`Entry::chunk_at`] places them)
    /// and returns its plaintext.
    pub fn open_chunk<'a>(
        &self,
        i: usize,
        j: u64,
        sealed: &'a mut [u8],
    ) -> Result<&'a [u8], FormatError> {
        let e = self
            .files
            .get(i)
            .ok_or(FormatError::Record("no such file in the file-set"))?;
        let (_, len) = e.chunk_at(j);
        if j >= e.chunks() || sealed.len() != len {
            return Err(FormatError::Record("chunk out of range"));
        }
        self.key
            .open_in(&chunk_aad(i as u32, j as u32), sealed)
            .map_err(|SealError| FormatError::Seal("file chunk"))
    }
}

/// Where a file-set is written: bytes in order, and a way back to an earlier length (a file
/// found to be stored already is taken out again).
pub trait Sink: std::io::Write {
    /// The next byte goes at `len`; what was written from there on is gone.
    fn rewind(&mut self, len: u64) -> std::io::Result<()>;
}

/// Writes a file-set to `out` as it goes: one chunk in memory at a time. Files are added one
/// after the other ([`Writer::begin_file`], [`Writer::write`], [`Writer::end_file`], or
/// [`Writer::drop_last_file`]); the name (the hash of every byte) is known at
/// [`Writer::finish`].
pub struct Writer<'a> {
    key: SubKey,
    salt: Salt,
    out: &'a mut dyn Sink,
    hash: blake3::Hasher,
    len: u64,
    files: Vec<Entry>,
    /// The file being written: its content hash, size so far and chunks sealed.
    cur: Option<(Sha256, u64, u64)>,
    /// The name's hash and length as the last file began (to take it out again).
    before_file: Option<(blake3::Hasher, u64)>,
    /// Files taken back out so far (in the nonces that follow).
    dropped: u32,
    chunk: Vec<u8>,
    sealed: Vec<u8>,
}

impl<'a> Writer<'a> {
    /// A new file-set under lineage key `key` (a fresh salt; fails when the system's random
    /// source does), its header written.
    pub fn new(key: &Key, out: &'a mut dyn Sink) -> std::io::Result<Writer<'a>> {
        let salt = crate::format::seal::fresh_salt()?;
        let mut w = Writer {
            key: key.subkey(Purpose::FileSet, &salt),
            salt,
            out,
            hash: blake3::Hasher::new(),
            len: 0,
            files: Vec::new(),
            cur: None,
            before_file: None,
            dropped: 0,
            chunk: Vec::new(),
            sealed: Vec::new(),
        };
        let mut h = Vec::with_capacity(HEADER_LEN);
        h.extend_from_slice(MAGIC);
        h.extend_from_slice(&VERSION.to_le_bytes());
        h.extend_from_slice(&0u32.to_le_bytes());
        w.emit_header(&h)?;
        Ok(w)
    }

    fn emit_header(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.out.write_all(b)?;
        self.hash.update(b);
        self.len += b.len() as u64;
        Ok(())
    }

    /// Starts the next file.
    pub fn begin_file(&mut self) -> std::io::Result<()> {
        if self.cur.is_some() || self.files.len() >= MAX_FILES {
            return Err(std::io::Error::other(
                "file-set: a file is open, or too many files",
            ));
        }
        self.cur = Some((Sha256::new(), 0, 0));
        self.before_file = Some((self.hash.clone(), self.len));
        Ok(())
    }

    /// Takes the file just ended out of the file-set again (its content is stored elsewhere):
    /// the next file goes where it began.
    pub fn drop_last_file(&mut self) -> std::io::Result<()> {
        let Some((hash, len)) = self.before_file.take().filter(|_| self.cur.is_none()) else {
            return Err(std::io::Error::other("file-set: no file just ended"));
        };
        if self.dropped >= (1 << 24) - 1 {
            return Err(std::io::Error::other(
                "file-set: too many files taken back out",
            ));
        }
        self.dropped += 1;
        self.files.pop();
        self.out.rewind(len)?;
        self.hash = hash;
        self.len = len;
        Ok(())
    }

    /// Appends bytes to the file begun.
    pub fn write(&mut self, mut b: &[u8]) -> std::io::Result<()> {
        while !b.is_empty() {
            let room = BATCH * CHUNK - self.chunk.len();
            let (now, rest) = b.split_at(room.min(b.len()));
            self.chunk.extend_from_slice(now);
            b = rest;
            if self.chunk.len() == BATCH * CHUNK {
                self.seal_batch()?;
            }
        }
        Ok(())
    }

    /// Seals the plaintext gathered (whole chunks, and a file's last one), writes it out and
    /// hashes it. The content hash (sha2-256, the slowest step) runs on the helper thread
    /// meanwhile: a 1 GiB file went in at ~600 MB/s with it inline here.
    fn seal_batch(&mut self) -> std::io::Result<()> {
        let i = self.files.len() as u32;
        let Some((h, size, j)) = self.cur.as_mut() else {
            return Err(std::io::Error::other("file-set: no file begun"));
        };
        let plain = &self.chunk;
        let (key, sealed, out, hash) =
            (&self.key, &mut self.sealed, &mut *self.out, &mut self.hash);
        let d = self.dropped;
        let first = *j;
        let (written, ()) = crate::util::par::join(
            || -> std::io::Result<u64> {
                sealed.clear();
                for (k, c) in plain.chunks(CHUNK).enumerate() {
                    let jn = u32::try_from(first + k as u64)
                        .map_err(|_| std::io::Error::other("file too large"))?;
                    key.seal_into(nonce(CHUNK_UNIT, d, i, jn), &chunk_aad(i, jn), c, sealed)?;
                }
                out.write_all(sealed)?;
                hash.update(sealed);
                Ok(sealed.len() as u64)
            },
            || h.update(plain),
        );
        self.len += written?;
        *size += plain.len() as u64;
        *j += plain.len().div_ceil(CHUNK) as u64;
        self.chunk.clear();
        Ok(())
    }

    /// Ends the file begun; returns its number in the set, content CID and size.
    pub fn end_file(&mut self) -> std::io::Result<(usize, Cid, u64)> {
        if !self.chunk.is_empty() {
            self.seal_batch()?;
        }
        let Some((h, size, j)) = self.cur.take() else {
            return Err(std::io::Error::other("file-set: no file begun"));
        };
        let digest: [u8; 32] = h.finalize().into();
        let cid = Cid::from_digest(Codec::Raw, &digest);
        let sealed = size + j * CHUNK_OVERHEAD as u64;
        let start = self.len - sealed;
        self.files.push(Entry { cid, size, start });
        Ok((self.files.len() - 1, cid, size))
    }

    /// Writes the salt, index and trailer; returns the file-set's name, length and index.
    pub fn finish(mut self) -> std::io::Result<(FileName, u64, Vec<Entry>)> {
        if self.cur.is_some() {
            return Err(std::io::Error::other("file-set: a file is still open"));
        }
        let at = self.len;
        let mut e = Encoder::new();
        e.map(3);
        e.str("v");
        e.u64(VERSION as u64);
        e.str("ck");
        e.u64(CHUNK as u64);
        e.str("fs");
        e.array(self.files.len());
        for f in &self.files {
            e.array(3);
            e.bytes(f.cid.as_bytes());
            e.u64(f.size);
            e.u64(f.start);
        }
        let plain = e.into_bytes();
        let mut tail = Vec::with_capacity(plain.len() + SALT_LEN + 64);
        tail.extend_from_slice(&self.salt);
        self.key
            .seal_into(nonce(INDEX_UNIT, 0, 0, 0), INDEX_AAD, &plain, &mut tail)?;
        let index_len = (tail.len()) as u32;
        tail.extend_from_slice(&at.to_le_bytes());
        tail.extend_from_slice(&index_len.to_le_bytes());
        tail.extend_from_slice(END);
        self.emit_header(&tail)?;
        Ok((
            FileName(*self.hash.finalize().as_bytes()),
            self.len,
            self.files,
        ))
    }
}

/// Every file of a file-set's bytes that opens under `key`, decrypted (its chunks that
/// authenticate, in order), for audits: empty when the bytes are no file-set or its index does
/// not open under `key`.
pub fn plaintexts(key: &Key, bytes: &[u8]) -> Vec<Vec<u8>> {
    let len = bytes.len() as u64;
    let Some(t) = bytes.get(bytes.len().saturating_sub(TRAILER_LEN)..) else {
        return Vec::new();
    };
    if check_header(bytes).is_err() {
        return Vec::new();
    }
    let Ok((at, ilen)) = parse_trailer(len, t) else {
        return Vec::new();
    };
    let Some(region) = bytes.get(at as usize..(at + ilen as u64) as usize) else {
        return Vec::new();
    };
    let Ok(idx) = Index::open(key, region, at) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, e) in idx.files.iter().enumerate() {
        let mut plain = Vec::new();
        for j in 0..e.chunks() {
            let (off, l) = e.chunk_at(j);
            let Some(unit) = bytes.get(off as usize..off as usize + l) else {
                break;
            };
            let mut unit = unit.to_vec();
            if let Ok(p) = idx.open_chunk(i, j, &mut unit) {
                plain.extend_from_slice(p);
            }
        }
        out.push(plain);
    }
    out
}

/// A whole-file check (`verify`): name, framing, the index, every chunk, and each file's
/// content against its CID; `read` reads a part. Returns the files.
pub fn verify(
    key: &Key,
    name: &FileName,
    file_len: u64,
    read: &mut dyn FnMut(u64, usize) -> Result<Vec<u8>, FormatError>,
) -> Result<Vec<Entry>, FormatError> {
    if file_len < (HEADER_LEN + TRAILER_LEN) as u64 {
        return Err(FormatError::Framing("file-set too short"));
    }
    check_header(&read(0, HEADER_LEN)?)?;
    let (at, len) = parse_trailer(file_len, &read(file_len - TRAILER_LEN as u64, TRAILER_LEN)?)?;
    let idx = Index::open(key, &read(at, len as usize)?, at)?;
    let mut hasher = blake3::Hasher::new();
    // The name covers every byte, in order: header, chunks (the files lie one after the other
    // from the header to the index, as `Index::open` checked), index region, trailer.
    hasher.update(&read(0, HEADER_LEN)?);
    for (i, e) in idx.files.iter().enumerate() {
        let mut content = Sha256::new();
        for j in 0..e.chunks() {
            let (off, l) = e.chunk_at(j);
            let mut sealed = read(off, l)?;
            hasher.update(&sealed);
            content.update(idx.open_chunk(i, j, &mut sealed)?);
        }
        let digest: [u8; 32] = content.finalize().into();
        if Cid::from_digest(Codec::Raw, &digest) != e.cid {
            return Err(FormatError::Record("a file's bytes do not match its CID"));
        }
    }
    hasher.update(&read(at, (file_len - at) as usize)?);
    if FileName(*hasher.finalize().as_bytes()) != *name {
        return Err(FormatError::Framing(
            "file-set bytes do not hash to its name",
        ));
    }
    Ok(idx.files)
}
