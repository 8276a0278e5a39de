//! The head record: the one small mutable object per database. It names the clock heads, the
//! document-tree root of the current state and the live files; opening a database reads it and
//! nothing else.
//!
//! ```text
//! "KILNHEAD" ‖ version u32 LE (=1) ‖ lineage (16) ‖ sealed("kiln/head/v1" ‖ lineage, body)
//! ```

use crate::block::cbor::{CborError, Decoder, Encoder};
use crate::block::cid::Cid;
use crate::car::{FileName, FormatError};
use crate::keys::Lineage;
use crate::seal::{Key, SealError};

pub const MAGIC: &[u8; 8] = b"KILNHEAD";
pub const VERSION: u32 = 1;
const PREFIX: usize = 8 + 4 + 16;

/// A live file and what it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
    /// A 64-bit Bloom filter of the file's block CIDs ([`bloom_bits`]), so a lookup skips most
    /// small files without reading their index; 0 means "no filter: probe".
    pub bloom: u64,
}

/// The two filter bits of a CID in a [`FileRef::bloom`].
pub fn bloom_bits(cid: &Cid) -> u64 {
    let d = cid.digest();
    (1u64 << (d[20] & 63)) | (1u64 << (d[21] & 63))
}

impl FileRef {
    /// False only when the file certainly lacks `cid`.
    pub fn may_hold(&self, cid: &Cid) -> bool {
        let b = bloom_bits(cid);
        self.bloom == 0 || self.bloom & b == b
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
    /// Live files, newest first.
    pub files: Vec<FileRef>,
    /// Clock heads, sorted.
    pub heads: Vec<Cid>,
    /// Events in the clock.
    pub events: u64,
    /// When compaction last ran (ms since the Unix epoch), 0 for never.
    pub compacted: u64,
}

impl Head {
    fn encode_body(&self) -> Vec<u8> {
        let mut e = Encoder::new();
        e.map(7);
        e.str("seq");
        e.u64(self.seq);
        e.str("docs");
        e.u64(self.docs);
        e.str("root");
        e.opt_link(self.root.as_ref());
        e.str("files");
        e.array(self.files.len());
        for f in &self.files {
            e.array(7);
            e.bytes(&f.name.0);
            e.u64(f.level as u64);
            e.u64(f.size);
            e.u64(f.index_len as u64);
            e.u64(f.heights.0);
            e.u64(f.heights.1);
            e.u64(f.bloom);
        }
        e.str("heads");
        e.array(self.heads.len());
        for h in &self.heads {
            e.link(h);
        }
        e.str("events");
        e.u64(self.events);
        e.str("compacted");
        e.u64(self.compacted);
        e.into_bytes()
    }

    fn decode_body(b: &[u8]) -> Result<Head, CborError> {
        let mut d = Decoder::new(b);
        if d.map()? != 7 {
            return Err(CborError("head: expected 7 fields"));
        }
        d.key("seq")?;
        let seq = d.u64()?;
        d.key("docs")?;
        let docs = d.u64()?;
        d.key("root")?;
        let root = d.opt_link()?;
        d.key("files")?;
        let n = d.array()?;
        let mut files = Vec::with_capacity(n);
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
            let bloom = d.u64()?;
            files.push(FileRef {
                name,
                level: level as u8,
                size,
                index_len: index_len as u32,
                heights,
                bloom,
            });
        }
        d.key("heads")?;
        let n = d.array()?;
        let mut heads = Vec::with_capacity(n);
        for _ in 0..n {
            heads.push(d.link()?);
        }
        d.key("events")?;
        let events = d.u64()?;
        d.key("compacted")?;
        let compacted = d.u64()?;
        d.finish()?;
        Ok(Head {
            seq,
            docs,
            root,
            files,
            heads,
            events,
            compacted,
        })
    }

    /// The stored form.
    pub fn seal(&self, lineage: &Lineage, key: &Key) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(256 + self.files.len() * 48);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(lineage);
        key.seal_into(&aad(lineage), &self.encode_body(), &mut out)?;
        Ok(out)
    }

    /// Reads the lineage from a stored head record without the key.
    pub fn lineage(b: &[u8]) -> Result<Lineage, FormatError> {
        if b.len() < PREFIX || &b[..8] != MAGIC {
            return Err(FormatError::Framing("not a kiln head record"));
        }
        let v = u32::from_le_bytes([b[8], b[9], b[10], b[11]]);
        if v != VERSION {
            return Err(FormatError::Version(v));
        }
        let mut l = [0u8; 16];
        l.copy_from_slice(&b[12..28]);
        Ok(l)
    }

    /// Opens a stored head record.
    pub fn open(b: &[u8], key: &Key) -> Result<Head, FormatError> {
        let l = Head::lineage(b)?;
        let body = key
            .open(&aad(&l), &b[PREFIX..])
            .map_err(|SealError| FormatError::Seal("head record"))?;
        Ok(Head::decode_body(&body)?)
    }
}

fn aad(l: &Lineage) -> [u8; 28] {
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
            files: vec![FileRef {
                name: FileName::of(b"f"),
                level: 1,
                size: 99,
                index_len: 40,
                heights: (1, 3),
                bloom: 5,
            }],
            heads: vec![Cid::of_cbor(b"h")],
            events: 3,
            compacted: 0,
        }
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

    proptest! {
        #[test]
        fn mutated_records_never_panic(pos in any::<prop::sample::Index>(), val in any::<u8>(), cut in any::<prop::sample::Index>()) {
            let k = Key::from_raw([3; 32]);
            let mut b = sample().seal(&[1; 16], &k).unwrap();
            let i = pos.index(b.len());
            b[i] = val;
            let _ = Head::open(&b, &k);
            let _ = Head::open(&b[..cut.index(b.len())], &k);
            let _ = Head::decode_body(&b);
        }
    }
}
