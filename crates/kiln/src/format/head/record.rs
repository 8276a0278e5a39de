//! A head record's framing: records (a snapshot, deltas, embedded files) appended and sealed
//! each under its own AAD, read back and checked.

use super::*;

/// An array of links (a head's clock heads).
pub(super) fn encode_links(e: &mut Encoder, links: &[Cid]) {
    e.array(links.len());
    for l in links {
        e.link(l);
    }
}

/// An array of links, as [`encode_links`] writes it.
pub(super) fn decode_links(d: &mut Decoder) -> Result<Vec<Cid>, CborError> {
    let n = d.array()?;
    let mut links = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        links.push(d.link()?);
    }
    Ok(links)
}

pub(super) const SNAPSHOT: u8 = 0;
pub(super) const DELTA: u8 = 1;
pub(super) const FILE: u8 = 2;

pub(super) enum RecordError {
    /// The file ends inside the record.
    CutShort,
    /// The length and its check disagree.
    Length,
    /// The record (ending at `end`) fails authentication.
    Seal { end: usize },
}

/// What seals and opens a log's records: the lineage key (versions 2 and 3) or the log's
/// own (4 on).
pub(super) enum RecordKey<'a> {
    Lineage(&'a Key),
    Log(Arc<SubKey>),
}

impl<'a> RecordKey<'a> {
    /// The key of the head file `b` of format `version` (its salt checked present by
    /// [`Head::lineage`]).
    pub(super) fn of_file(b: &[u8], version: u32, key: &'a Key) -> RecordKey<'a> {
        match salt_of(b, version) {
            Some(s) => RecordKey::Log(key.log_key(&s)),
            None => RecordKey::Lineage(key),
        }
    }

    /// The key to append to `log` with.
    pub(super) fn of_log(log: &Log, key: &'a Key) -> std::io::Result<RecordKey<'a>> {
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
pub(super) fn salt_of(b: &[u8], version: u32) -> Option<Salt> {
    if version < SALTED {
        return None;
    }
    b.get(MIN_PREFIX..MIN_PREFIX + SALT_LEN)
        .and_then(|s| s.try_into().ok())
}

pub(super) fn push_record(
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
pub(super) fn read_record(
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
pub(super) fn only_the_rest_of_one_append(
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
pub(super) fn zero_sector_from(b: &[u8], from: usize) -> bool {
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

pub(super) fn encode_files(e: &mut Encoder, files: &[FileRef]) {
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

pub(super) fn decode_files(d: &mut Decoder) -> Result<Vec<FileRef>, CborError> {
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

pub(super) fn aad_v2(l: &Lineage, offset: u64, kind: u8) -> [u8; 37] {
    let mut a = [0u8; 37];
    a[..12].copy_from_slice(b"kiln/head/v2");
    a[12..28].copy_from_slice(l);
    a[28..36].copy_from_slice(&offset.to_le_bytes());
    a[36] = kind;
    a
}

pub(super) fn aad_v1(l: &Lineage) -> [u8; 28] {
    let mut a = [0u8; 28];
    a[..12].copy_from_slice(b"kiln/head/v1");
    a[12..].copy_from_slice(l);
    a
}
