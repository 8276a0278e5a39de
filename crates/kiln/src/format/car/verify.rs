//! Whole-file checks of diff files (`verify`, audits): every seal, every block hash, and that
//! the index lists exactly the blocks present.

use super::*;

/// Every segment of a diff file's bytes that opens under `key`, decrypted (and decompressed),
/// for audits: damaged segments are skipped, not errors. Empty when the file is not a diff
/// file, or its index does not open under `key`.
pub fn plaintexts(key: &Key, bytes: &[u8]) -> Vec<Vec<u8>> {
    if header_version(bytes).is_none() {
        return Vec::new();
    }
    let len = bytes.len() as u64;
    let Some(t) = bytes.get(bytes.len().saturating_sub(TRAILER_LEN)..) else {
        return Vec::new();
    };
    let Ok((at, _)) = parse_trailer(len, t) else {
        return Vec::new();
    };
    let Some(tail) = bytes.get(at as usize..) else {
        return Vec::new();
    };
    let Ok(index) = Index::open(key, tail, at) else {
        return Vec::new();
    };
    index
        .segs
        .iter()
        .enumerate()
        .filter_map(|(n, (off, l))| {
            let unit = bytes.get(*off as usize..(*off as usize).checked_add(*l as usize)?)?;
            index.open_segment(key, n as u32, unit).ok()
        })
        .collect()
}

/// Slices a block out of its segment's plaintext, checking it against its CID (what
/// compaction copies and what `verify` reads).
pub fn block_in<'a>(seg: &'a [u8], e: &Entry) -> Result<&'a [u8], FormatError> {
    let data = block_at(seg, e)?;
    if !e.cid.matches(data) {
        return Err(FormatError::Record("block does not match its CID"));
    }
    Ok(data)
}

/// Slices a block out of its segment's plaintext for a read, without re-hashing it: the
/// section must start with the block's CID, and the segment was authenticated when it was
/// opened (under the file's own key from version 4, the lineage's before), so its bytes are
/// what a holder of the key wrote under that CID. A block whose bytes do not hash to its CID
/// can only come from a writer holding the key (a bug, or a replica's files taken in
/// unchecked), so this vouches for a block only within that key: readers cache decoded blocks
/// per lineage, and whatever copies a block into another file (compaction, merges, squash)
/// and `verify` use [`block_in`], which re-hashes. At a million documents the hash was 7% of
/// a random read.
pub fn block_at<'a>(seg: &'a [u8], e: &Entry) -> Result<&'a [u8], FormatError> {
    let start = e.off as usize;
    let end = start + e.len as usize;
    let data = seg
        .get(start..end)
        .ok_or(FormatError::Record("block range outside its segment"))?;
    if start < CID_LEN || seg[start - CID_LEN..start] != e.cid.as_bytes()[..] {
        return Err(FormatError::Record("index points at the wrong section"));
    }
    Ok(data)
}

/// What [`verify_file`] says of a file whose bytes do not hash to its name.
pub const NOT_ITS_NAME: &str = "file bytes do not hash to the file's name";

/// A block as [`verify_file`] found it: its CID, its bytes, and whether it is structural (an
/// event or a tree node; in a version-1 file, whose index does not mark tree nodes, anything
/// but a document may be one, so every block counts).
pub type CheckedBlock = (Cid, Vec<u8>, bool);

/// A whole-file check: name, framing, every seal, every block hash, and that the index lists
/// exactly the blocks present. Returns the index and all blocks.
pub fn verify_file(
    key: &Key,
    name: &FileName,
    bytes: &[u8],
) -> Result<(Index, Vec<CheckedBlock>), FormatError> {
    if FileName::of(bytes) != *name {
        return Err(FormatError::Framing(NOT_ITS_NAME));
    }
    let mut read = |off: u64, len: usize| {
        usize::try_from(off)
            .ok()
            .and_then(|off| bytes.get(off..)?.get(..len))
            .map(<[u8]>::to_vec)
            .ok_or(FormatError::Framing("a part lies outside the file"))
    };
    let mut blocks = Vec::new();
    let index = verify_parts(key, bytes.len() as u64, &mut read, &mut |c, d, s| {
        blocks.push((c, d.to_vec(), s))
    })?;
    Ok((index, blocks))
}

/// Appends a (sorted) page's entries to the pages before it, refusing a page that does not
/// start after the last entry of the one before (pages that overlap send lookups astray).
pub(super) fn add_page(run: &mut Vec<Entry>, page: Vec<Entry>) -> Result<(), FormatError> {
    if run
        .last()
        .zip(page.first())
        .is_some_and(|(a, b)| a.cid >= b.cid)
    {
        return Err(FormatError::Record("index pages overlap"));
    }
    run.extend(page);
    Ok(())
}

/// Reads `len` bytes of a file at an offset.
pub type ReadPart<'a> = dyn FnMut(u64, usize) -> Result<Vec<u8>, FormatError> + 'a;

/// [`verify_file`] without the name check, reading the file's parts (header, trailer, index,
/// pages, one segment at a time) through `read` and handing each block to `visit` (CID, bytes,
/// structural) instead of collecting them: memory holds one part, not the file. A block is
/// visited before the file is found whole; callers keep what they learn only on `Ok`. The
/// caller checks the name (a [`NameHasher`] over the bytes in order).
pub fn verify_parts(
    key: &Key,
    file_len: u64,
    read: &mut ReadPart<'_>,
    visit: &mut dyn FnMut(Cid, &[u8], bool),
) -> Result<Index, FormatError> {
    if file_len < (HEADER_LEN + TRAILER_LEN) as u64 {
        return Err(FormatError::Framing("file too short"));
    }
    let header = read(0, HEADER_LEN)?;
    check_header(&header)?;
    let version = header_version(&header);
    let (at, len) = parse_trailer(file_len, &read(file_len - TRAILER_LEN as u64, TRAILER_LEN)?)?;
    let index = Index::open(key, &read(at, len as usize + TRAILER_LEN)?, at)?;
    if version != Some(index.version) {
        return Err(FormatError::Framing("header and index versions differ"));
    }
    // The pages in order must be one sorted run (each page is sorted, and its first CID is
    // its reference's: two pages that overlap would send a lookup to the wrong one).
    let mut paged: Vec<Entry> = Vec::new();
    for (i, p) in index.pages.iter().enumerate() {
        add_page(
            &mut paged,
            index.open_page(key, i, &read(p.off, p.len as usize)?)?,
        )?;
    }
    // Version 5 lists a paged file's nodes and events apart from its pages: merged, a block
    // listed twice makes the comparison below fail.
    let mut entries = index.entries.clone();
    entries.extend(paged);
    entries.sort_by_key(|e| e.cid);
    // (`entries` is sorted by CID once the check below passes; until then a kind may be wrong,
    // and the caller drops what it saw.)
    let structural = |c: &Cid| {
        index.version < 2
            || entries
                .binary_search_by_key(c, |e| e.cid)
                .is_ok_and(|i| entries[i].event || entries[i].node)
    };
    let mut found: Vec<Entry> = Vec::new();
    for (n, (off, len)) in index.segs.iter().enumerate() {
        let plain = index.open_segment_in(key, n as u32, &mut read(*off, *len as usize)?)?;
        let mut pos = 0;
        if n == 0 {
            let hl = get_varint(&plain, &mut pos)
                .ok_or(FormatError::Framing("CAR header length"))? as usize;
            let h = pos
                .checked_add(hl)
                .and_then(|end| plain.get(pos..end))
                .ok_or(FormatError::Framing("CAR header"))?;
            let mut d = Decoder::new(h);
            if d.map()? != 2 {
                return Err(FormatError::Framing("CAR header fields"));
            }
            d.key("roots")?;
            let nr = d.array()?;
            let mut roots = Vec::new();
            for _ in 0..nr {
                roots.push(d.link()?);
            }
            d.key("version")?;
            if d.u64()? != 1 || roots != index.meta.roots {
                return Err(FormatError::Framing("CAR header disagrees with the index"));
            }
            pos += hl;
        }
        while pos < plain.len() {
            let sl = get_varint(&plain, &mut pos)
                .ok_or(FormatError::Framing("CAR section length"))? as usize;
            let sec = pos
                .checked_add(sl)
                .and_then(|end| plain.get(pos..end))
                .ok_or(FormatError::Framing("CAR section overruns segment"))?;
            if sl < CID_LEN {
                return Err(FormatError::Framing("CAR section shorter than a CID"));
            }
            let cid =
                Cid::from_bytes(&sec[..CID_LEN]).ok_or(FormatError::Framing("CAR section CID"))?;
            let data = &sec[CID_LEN..];
            if !cid.matches(data) {
                return Err(FormatError::Record("block does not match its CID"));
            }
            found.push(Entry {
                cid,
                seg: n as u32,
                off: (pos + CID_LEN) as u32,
                len: data.len() as u32,
                event: false,
                node: false,
            });
            visit(cid, data, structural(&cid));
            pos += sl;
        }
    }
    found.sort_by_key(|e| e.cid);
    let plain: Vec<Entry> = entries
        .iter()
        .map(|e| Entry {
            event: false,
            node: false,
            ..*e
        })
        .collect();
    if found != plain {
        return Err(FormatError::Record(
            "index does not list exactly the blocks in the file",
        ));
    }
    let events: Vec<[u8; LEAD_LEN]> = {
        let mut l: Vec<[u8; LEAD_LEN]> = entries
            .iter()
            .filter(|e| e.event)
            .filter_map(|e| e.cid.digest()[..LEAD_LEN].try_into().ok())
            .collect();
        l.sort_unstable();
        l
    };
    // (A reader takes a file without a log for one whose events other than its roots write
    // no document: the database's `verify` checks that, the events' meaning being above
    // this layer.)
    for e in verify_log(key, &index, read)? {
        if events.binary_search(&e.lead).is_err() {
            return Err(FormatError::Record(
                "document log names an event the file does not hold",
            ));
        }
    }
    Ok(index)
}

/// A file's document log read whole (`verify`): every page opened and checked against its
/// reference, the pages in order one sorted run.
pub fn verify_log(
    key: &Key,
    index: &Index,
    read: &mut ReadPart<'_>,
) -> Result<Vec<LogEntry>, FormatError> {
    let mut out: Vec<LogEntry> = Vec::new();
    for (i, r) in index.log.iter().enumerate() {
        let page = index.open_log_page(key, i, &mut read(r.off, r.len as usize)?)?;
        if out.last().zip(page.first()).is_some_and(|(a, b)| a >= b) {
            return Err(FormatError::Record("document log pages overlap"));
        }
        out.extend(page);
    }
    Ok(out)
}
