//! A diff file's index: its entries (fixed-width from version 5, CBOR before), pages, trailer,
//! and the `Index` a reader opens, with its lookups.

use super::*;
use crate::format::block::cid::{cmp_binary, search_sorted, spread_key};

/// The first version whose index entries are fixed-width records (see [`ENTRY_LEN`]).
pub(super) const FIXED_ENTRIES: u32 = 5;
/// The first version whose index holds a structural filter ("sf", see [`Filter`]).
pub(super) const FILTERED: u32 = 5;
/// The first version whose index may leave out its roots ("rt") and structural filter ("sf"):
/// an unpaged file of one event (its root) or of at most [`SMALL_FILE_BLOCKS`] blocks.
pub(super) const IMPLIED: u32 = 6;
/// The first version whose index may list a document log ("dl", see [`LogPageRef`]).
pub const LOGGED: u32 = 7;

/// The roots an unpaged file's index leaves out (version 6 on): its one event. `None` when its
/// entries hold no event or several.
pub(super) fn implied_roots(entries: &[Entry]) -> Option<Vec<Cid>> {
    let mut events = entries.iter().filter(|e| e.event);
    match (events.next(), events.next()) {
        (Some(e), None) => Some(vec![e.cid]),
        _ => None,
    }
}
/// Bytes of an index entry from version 5 on: `CID[36] ‖ seg u32 ‖ off u32 ‖ len u32 ‖ kind u8`.
pub const ENTRY_LEN: usize = CID_LEN + 13;

pub(super) fn kind_of(x: &Entry) -> u8 {
    if x.event {
        EVENT
    } else if x.node {
        NODE
    } else {
        OTHER
    }
}

/// The entries an index lists itself (sorted as `entries` is), and whether the others go
/// into pages: all listed while the rest fit in one page; else the tree nodes listed (a tree
/// lookup then reads no page), the document versions and events paged (see [`paged_chunks`]).
/// Readers look in the pages for whatever is not listed: files written before listed their
/// events too, which kept one entry per commit ever made in memory for as long as its file
/// was live (52 MB after a million commits).
pub(super) fn split_entries(entries: &[Entry]) -> (Cow<'_, [Entry]>, bool) {
    let nodes = entries.iter().filter(|e| e.node).count();
    if entries.len() - nodes <= PAGE_ENTRIES {
        return (Cow::Borrowed(entries), false);
    }
    // Kept as the index's for as long as the file is live: no room to spare.
    let mut listed: Vec<Entry> = Vec::with_capacity(nodes);
    listed.extend(entries.iter().filter(|e| e.node));
    (Cow::Owned(listed), true)
}

/// Calls `f` with each page's worth of the entries [`split_entries`] does not list (in
/// order), through one buffer: a copy of every paged entry was, at the end of a large
/// compaction, one more allocation the size of its index.
pub(super) fn paged_chunks<E>(
    entries: &[Entry],
    mut f: impl FnMut(usize, &[Entry]) -> Result<(), E>,
) -> Result<(), E> {
    let mut chunk: Vec<Entry> = Vec::with_capacity(PAGE_ENTRIES);
    let mut n = 0;
    for e in entries.iter().filter(|e| !e.node) {
        chunk.push(*e);
        if chunk.len() == PAGE_ENTRIES {
            f(n, &chunk)?;
            chunk.clear();
            n += 1;
        }
    }
    if !chunk.is_empty() {
        f(n, &chunk)?;
    }
    Ok(())
}

/// Index entries as version-5 fixed-width records, back to back.
pub(super) fn fixed_entries(entries: &[Entry]) -> Vec<u8> {
    let mut b = Vec::with_capacity(entries.len() * ENTRY_LEN);
    put_fixed_entries(entries, &mut b);
    b
}

/// [`fixed_entries`], appended to `b`.
pub(super) fn put_fixed_entries(entries: &[Entry], b: &mut Vec<u8>) {
    for x in entries {
        b.extend_from_slice(x.cid.as_bytes());
        b.extend_from_slice(&x.seg.to_le_bytes());
        b.extend_from_slice(&x.off.to_le_bytes());
        b.extend_from_slice(&x.len.to_le_bytes());
        b.push(kind_of(x));
    }
}

/// Reads version-5 fixed-width index entries (sorted by CID, each naming one of `segs`
/// segments).
pub(super) fn decode_fixed_entries(b: &[u8], segs: usize) -> Result<Vec<Entry>, FormatError> {
    if !b.len().is_multiple_of(ENTRY_LEN) {
        return Err(FormatError::Record(
            "index entries: length is not whole entries",
        ));
    }
    let mut v: Vec<Entry> = Vec::with_capacity(b.len() / ENTRY_LEN);
    for r in b.chunks_exact(ENTRY_LEN) {
        let e = decode_fixed_entry(r, segs)?;
        if v.last().is_some_and(|p| p.cid >= e.cid) {
            return Err(FormatError::Record("index entries not sorted"));
        }
        v.push(e);
    }
    Ok(v)
}

/// One fixed-size entry (`r`: exactly [`ENTRY_LEN`] bytes), naming one of `segs` segments.
fn decode_fixed_entry(r: &[u8], segs: usize) -> Result<Entry, FormatError> {
    let cid = Cid::from_bytes(&r[..CID_LEN]).ok_or(FormatError::Record("index entry: bad CID"))?;
    let u = |i: usize| u32::from_le_bytes([r[i], r[i + 1], r[i + 2], r[i + 3]]);
    let (seg, off, len, kind) = (u(CID_LEN), u(CID_LEN + 4), u(CID_LEN + 8), r[CID_LEN + 12]);
    if seg as usize >= segs || kind > NODE {
        return Err(FormatError::Record("index entry out of range"));
    }
    Ok(Entry {
        cid,
        seg,
        off,
        len,
        event: kind == EVENT,
        node: kind == NODE,
    })
}

/// Reads index entries of versions 1 to 4 (a CBOR array of 5-element arrays).
pub(super) fn decode_entries(d: &mut Decoder<'_>, segs: usize) -> Result<Vec<Entry>, FormatError> {
    let n = d.array()?;
    let mut v: Vec<Entry> = Vec::with_capacity(n);
    for _ in 0..n {
        if d.array()? != 5 {
            return Err(FormatError::Record("index entry must have 5 fields"));
        }
        let cid = Cid::from_bytes(d.bytes()?).ok_or(FormatError::Record("index entry: bad CID"))?;
        let seg = d.u64()?;
        let off = d.u64()?;
        let len = d.u64()?;
        let kind = d.u64()?;
        if seg >= segs as u64 || off > u32::MAX as u64 || len > u32::MAX as u64 || kind > 2 {
            return Err(FormatError::Record("index entry out of range"));
        }
        if v.last().is_some_and(|p| p.cid >= cid) {
            return Err(FormatError::Record("index entries not sorted"));
        }
        v.push(Entry {
            cid,
            seg: seg as u32,
            off: off as u32,
            len: len as u32,
            event: kind == 1,
            node: kind == 2,
        });
    }
    Ok(v)
}

/// An index page opened for lookups (see [`Index::open_page_for_reads`]).
#[derive(Debug)]
pub enum Page {
    /// Version 5: fixed-width entries, searched where they are.
    Fixed(Vec<u8>),
    /// Versions 1–4: decoded.
    Decoded(Vec<Entry>),
}

impl Page {
    /// `cid`'s entry, checked (its segment must be one of the file's `segs`).
    pub fn find(&self, cid: &Cid, segs: usize) -> Result<Option<Entry>, FormatError> {
        match self {
            Page::Decoded(v) => Ok(find_entry(v, cid).map(|i| v[i])),
            Page::Fixed(b) => {
                // (Entry `i < len / ENTRY_LEN` always has its CID_LEN bytes.)
                let cid_at = |i: usize| -> &[u8; CID_LEN] {
                    b[i * ENTRY_LEN..].first_chunk().unwrap_or(&[0; CID_LEN])
                };
                let found = search_sorted(
                    b.len() / ENTRY_LEN,
                    cid,
                    |i| cmp_binary(cid_at(i), cid.as_bytes()),
                    |i| spread_key(cid_at(i)),
                );
                match found {
                    Ok(i) => Ok(Some(decode_fixed_entry(
                        &b[i * ENTRY_LEN..][..ENTRY_LEN],
                        segs,
                    )?)),
                    Err(_) => Ok(None),
                }
            }
        }
    }

    /// Every entry, checked (sorted, each naming one of `segs` segments).
    pub fn entries(&self, segs: usize) -> Result<Vec<Entry>, FormatError> {
        match self {
            Page::Decoded(v) => Ok(v.clone()),
            Page::Fixed(b) => decode_fixed_entries(b, segs),
        }
    }

    /// Bytes held.
    pub fn byte_len(&self) -> usize {
        match self {
            Page::Fixed(b) => b.capacity(),
            Page::Decoded(v) => v.len() * std::mem::size_of::<Entry>(),
        }
    }
}

/// A page of a large file's index.
#[derive(Clone, Debug)]
pub struct PageRef {
    pub first: Cid,
    pub off: u64,
    pub len: u32,
    pub count: u32,
}

/// A file's decrypted index: where its segments are and where each block is.
#[derive(Clone, Debug)]
pub struct Index {
    /// The file's own key (version 4 on; before, its units are sealed under the lineage key).
    pub(super) key: Option<Arc<SubKey>>,
    /// Format version of the file (2: segments carry a codec byte).
    pub version: u32,
    pub meta: Meta,
    pub segs: Vec<(u64, u32)>,
    /// Entries listed in the index itself, sorted by CID: every block of a file without pages;
    /// of a paged file, its tree nodes (version 5; files written before 2026-12-06 its events
    /// too) or none (before version 5).
    pub entries: Vec<Entry>,
    /// Page references, sorted by first CID (files with more than a page of document versions).
    pub pages: Vec<PageRef>,
    /// The structural filter of the file's tree nodes and events (version 5 on; before,
    /// [`Filter::None`]: probe).
    pub filter: Filter,
    /// The document log's pages (version 7 on, files of several events; else empty: the
    /// file's events are read instead).
    pub log: Vec<LogPageRef>,
    /// The file-sets its document versions name (version 7 on).
    pub refs: FileRefs,
}

/// Reads the trailer: (index offset, index length), the index region's: from version 4 on the
/// file's salt and the sealed index.
pub fn parse_trailer(file_len: u64, t: &[u8]) -> Result<(u64, u32), FormatError> {
    if file_len < (HEADER_LEN + TRAILER_LEN) as u64
        || t.len() != TRAILER_LEN
        || (&t[12..] != END_PLAIN && &t[12..] != END_SALTED)
    {
        return Err(FormatError::Framing("missing trailer (truncated file?)"));
    }
    let off = u64::from_le_bytes(
        t[..8]
            .try_into()
            .map_err(|_| FormatError::Framing("trailer"))?,
    );
    let len = u32::from_le_bytes(
        t[8..12]
            .try_into()
            .map_err(|_| FormatError::Framing("trailer"))?,
    );
    if off < HEADER_LEN as u64 || off.checked_add(len as u64) != Some(file_len - TRAILER_LEN as u64)
    {
        return Err(FormatError::Framing("index location out of range"));
    }
    Ok((off, len))
}

/// The version a file's header states (`None`: no diff file header).
pub(super) fn header_version(h: &[u8]) -> Option<u32> {
    let h = h.get(..HEADER_LEN).filter(|h| &h[..8] == MAGIC)?;
    Some(u32::from_le_bytes([h[8], h[9], h[10], h[11]]))
}

/// Whether this kiln reads a file or index of version `v`.
pub(super) fn known_version(v: u64) -> bool {
    (1..=VERSION as u64).contains(&v)
}

/// Checks the 16-byte header.
pub fn check_header(h: &[u8]) -> Result<(), FormatError> {
    let Some(v) = header_version(h) else {
        return Err(FormatError::Framing("not a kiln diff file"));
    };
    if !known_version(v as u64) {
        return Err(FormatError::Version(v));
    }
    if h[12..16] != [0, 0, 0, 0] {
        return Err(FormatError::Framing("reserved header bytes are not zero"));
    }
    Ok(())
}

impl Index {
    /// Opens and parses the index of a file: `tail` is the file's last bytes from `index_at`
    /// on, the index region (the file's salt, from version 4 on, and the sealed index) and
    /// the trailer, whose end says which (see [`parse_trailer`] for the region's place).
    pub fn open(key: &Key, tail: &[u8], index_at: u64) -> Result<Index, FormatError> {
        let (region, trailer) = tail
            .len()
            .checked_sub(TRAILER_LEN)
            .map(|n| tail.split_at(n))
            .ok_or(FormatError::Framing("missing trailer (truncated file?)"))?;
        let salted = match &trailer[12..] {
            e if e == END_PLAIN => false,
            e if e == END_SALTED => true,
            _ => return Err(FormatError::Framing("missing trailer (truncated file?)")),
        };
        let (file_key, sealed) = if salted {
            let salt: &Salt = region
                .get(..SALT_LEN)
                .and_then(|s| s.try_into().ok())
                .ok_or(FormatError::Framing("index region shorter than its salt"))?;
            let k = Arc::new(key.subkey(Purpose::DiffFile, salt));
            (Some(k), &region[SALT_LEN..])
        } else {
            (None, region)
        };
        let opener = match &file_key {
            Some(k) => Opener::File(k),
            None => Opener::Lineage(key),
        };
        let plain = opener
            .open(INDEX_AAD, sealed)
            .map_err(|SealError| FormatError::Seal("index"))?;
        let mut d = Decoder::new(&plain);
        let fields = d.map()?;
        d.key("v")?;
        let v = d.u64()?;
        if !known_version(v) {
            return Err(FormatError::Version(v.min(u32::MAX as u64) as u32));
        }
        if salted != (v >= 4) {
            return Err(FormatError::Framing("trailer and index versions differ"));
        }
        // (Version 6: 7 to 9, 7: 7 to 11, checked against the keys present below.)
        let fields_ok = match v {
            v if v >= LOGGED as u64 => (7..=11).contains(&fields),
            v if v >= IMPLIED as u64 => (7..=9).contains(&fields),
            v if v >= FILTERED as u64 => fields == 9,
            _ => fields == 8,
        };
        if !fields_ok {
            return Err(FormatError::Record("index: wrong number of fields"));
        }
        d.key("at")?;
        let time = d.u64()?;
        d.key("bk")?;
        // Segment count is not known yet; check entry ranges once it is.
        let entries = if v >= FIXED_ENTRIES as u64 {
            decode_fixed_entries(d.bytes()?, usize::MAX)?
        } else {
            decode_entries(&mut d, usize::MAX)?
        };
        let has_dl = v >= LOGGED as u64 && d.peek_key()? == "dl";
        let mut log = Vec::new();
        if has_dl {
            d.key("dl")?;
            let n = d.array()?;
            log.reserve(n.min(1 << 16));
            for _ in 0..n {
                if d.array()? != 4 {
                    return Err(FormatError::Record("log page ref must have 4 fields"));
                }
                let first = d.bytes()?.to_vec();
                let (off, len, count) = (d.u64()?, d.u64()?, d.u64()?);
                if off < HEADER_LEN as u64
                    || len > u32::MAX as u64
                    || off.saturating_add(len) > index_at
                    || count == 0
                    || count > MAX_LOG_PAGE_ENTRIES as u64
                {
                    return Err(FormatError::Record("log page ref out of range"));
                }
                log.push(LogPageRef {
                    first,
                    off,
                    len: len as u32,
                    count: count as u32,
                });
            }
            if log.windows(2).any(|w| w[0].first > w[1].first) {
                return Err(FormatError::Record("log pages not sorted"));
            }
        }
        let has_fr = v >= LOGGED as u64 && d.peek_key()? == "fr";
        let mut refs = FileRefs::default();
        if has_fr {
            d.key("fr")?;
            let b = d.bytes()?;
            if b.is_empty() || b.len() % FILE_REF_LEN != 0 {
                return Err(FormatError::Record("index: file-set references length"));
            }
            for r in b.chunks_exact(FILE_REF_LEN) {
                let c = Cid::from_bytes(&r[..CID_LEN])
                    .ok_or(FormatError::Record("index: file-set reference CID"))?;
                let mut n = [0u8; 32];
                n.copy_from_slice(&r[CID_LEN..]);
                refs.0.push((c, FileName(n)));
            }
            if refs.0.windows(2).any(|w| w[0] >= w[1]) {
                return Err(FormatError::Record("index: file-set references not sorted"));
            }
        }
        d.key("lv")?;
        let level = d.u64()?.min(255) as u8;
        d.key("pg")?;
        let np = d.array()?;
        let mut pages = Vec::with_capacity(np);
        for _ in 0..np {
            if d.array()? != 4 {
                return Err(FormatError::Record("page ref must have 4 fields"));
            }
            let first =
                Cid::from_bytes(d.bytes()?).ok_or(FormatError::Record("page ref: bad CID"))?;
            let off = d.u64()?;
            let len = d.u64()?;
            let count = d.u64()?;
            if off < HEADER_LEN as u64
                || off.saturating_add(len) > index_at
                || count as usize > MAX_PAGE_ENTRIES
            {
                return Err(FormatError::Record("page ref out of range"));
            }
            pages.push(PageRef {
                first,
                off,
                len: len as u32,
                count: count as u32,
            });
        }
        if pages.windows(2).any(|w| w[0].first >= w[1].first) {
            return Err(FormatError::Record("index pages not sorted"));
        }
        d.key("rp")?;
        let nr = d.array()?;
        let mut replaces = Vec::with_capacity(nr);
        for _ in 0..nr {
            let b = d.bytes()?;
            replaces.push(FileName(
                b.try_into()
                    .map_err(|_| FormatError::Record("replaced file name"))?,
            ));
        }
        let optional = v >= IMPLIED as u64;
        let has_rt = !optional || d.peek_key()? == "rt";
        let roots = if !has_rt {
            Some(&entries)
                .filter(|_| pages.is_empty())
                .and_then(|e| implied_roots(e))
                .ok_or(FormatError::Record("index: no roots"))?
        } else {
            d.key("rt")?;
            let nroots = d.array()?;
            let mut roots = Vec::with_capacity(nroots);
            for _ in 0..nroots {
                roots.push(d.link()?);
            }
            roots
        };
        let has_sf = v >= FILTERED as u64 && (!optional || d.peek_key()? == "sf");
        if optional
            && fields
                != 7 + usize::from(has_rt)
                    + usize::from(has_sf)
                    + usize::from(has_dl)
                    + usize::from(has_fr)
        {
            return Err(FormatError::Record("index: wrong number of fields"));
        }
        let filter = if optional && !has_sf {
            Filter::None
        } else if v >= FILTERED as u64 {
            d.key("sf")?;
            let b = d.bytes()?;
            if !Filter::check_bytes(b) {
                return Err(FormatError::Record("index: structural filter length"));
            }
            Filter::Structural(b.into())
        } else {
            Filter::None
        };
        d.key("sg")?;
        let ns = d.array()?;
        let mut segs = Vec::with_capacity(ns);
        let mut at = HEADER_LEN as u64;
        for _ in 0..ns {
            if d.array()? != 2 {
                return Err(FormatError::Record("segment ref must have 2 fields"));
            }
            let off = d.u64()?;
            let len = d.u64()?;
            if off != at || len > u32::MAX as u64 || off + len > index_at {
                return Err(FormatError::Record("segment ref out of range"));
            }
            at = off + len;
            segs.push((off, len as u32));
        }
        d.finish()?;
        if entries.iter().any(|e| e.seg as usize >= segs.len()) {
            return Err(FormatError::Record("index entry names a missing segment"));
        }
        Ok(Index {
            key: file_key,
            version: v as u32,
            meta: Meta {
                level,
                time,
                roots,
                replaces,
            },
            segs,
            entries,
            pages,
            filter,
            log,
            refs,
        })
    }

    /// The index as a reader gets it: with `entries` (all of the file's, sorted) unless paged,
    /// then with the tree nodes only. A paged index written here holds those
    /// already (see `write_tail_at`), in a list their size: collected in place from
    /// `entries`, it kept the room of every paged entry for as long as the file was live.
    pub(super) fn with_entries(self, entries: Vec<Entry>) -> Index {
        Index {
            entries: if self.pages.is_empty() {
                let mut entries = entries;
                entries.shrink_to_fit();
                entries
            } else {
                self.entries
            },
            ..self
        }
    }

    /// Finds a block among the entries the index lists itself (all of an unpaged file's; a
    /// paged version-5 file's tree nodes, and events in older ones).
    pub fn find(&self, cid: &Cid) -> Option<Entry> {
        find_entry(&self.entries, cid).map(|i| self.entries[i])
    }

    /// The page that would hold `cid` (paged index).
    pub fn page_for(&self, cid: &Cid) -> Option<usize> {
        let pages = &self.pages;
        let at = search_sorted(
            pages.len(),
            cid,
            |i| pages[i].first.cmp(cid),
            |i| spread_key(pages[i].first.as_bytes()),
        );
        match at {
            Ok(i) => Some(i),
            Err(i) => i.checked_sub(1),
        }
    }

    /// What opens this file's units (`key`: the lineage's).
    pub(super) fn opener<'a>(&'a self, key: &'a Key) -> Opener<'a> {
        match &self.key {
            Some(k) => Opener::File(k),
            None => Opener::Lineage(key),
        }
    }

    /// Decrypts segment `n` of this file (`key`: the lineage's) and returns its CAR bytes.
    pub fn open_segment(&self, key: &Key, n: u32, sealed: &[u8]) -> Result<Vec<u8>, FormatError> {
        open_segment_with(self.opener(key), n, sealed, self.version)
    }

    /// [`Index::open_segment`], decrypting within `sealed` (a buffer the caller owns and
    /// discards: one copy fewer).
    pub fn open_segment_in(
        &self,
        key: &Key,
        n: u32,
        sealed: &mut [u8],
    ) -> Result<Vec<u8>, FormatError> {
        open_segment_in(self.opener(key), n, sealed, self.version)
    }

    /// Decrypts page `n` (`key`: the lineage's).
    pub fn open_page(&self, key: &Key, n: usize, sealed: &[u8]) -> Result<Vec<Entry>, FormatError> {
        self.open_page_for_reads(key, n, sealed)?
            .entries(self.segs.len())
    }

    /// Decrypts page `n` for lookups: a version-5 page stays as its fixed-width records,
    /// searched in place (its count and first CID checked against its reference here, each
    /// entry found checked as it is read); an older page is decoded whole.
    pub fn open_page_for_reads(
        &self,
        key: &Key,
        n: usize,
        sealed: &[u8],
    ) -> Result<Page, FormatError> {
        let plain = self
            .opener(key)
            .open(&page_aad(n as u32), sealed)
            .map_err(|SealError| FormatError::Seal("index page"))?;
        let pr = &self.pages[n];
        if self.version >= FIXED_ENTRIES {
            if plain.len() != pr.count as usize * ENTRY_LEN
                || plain.get(..CID_LEN) != Some(pr.first.as_bytes())
            {
                return Err(FormatError::Record(
                    "index page does not match its reference",
                ));
            }
            return Ok(Page::Fixed(plain));
        }
        let mut d = Decoder::new(&plain);
        let v = decode_entries(&mut d, self.segs.len())?;
        d.finish()?;
        if v.len() != pr.count as usize || v.first().map(|e| e.cid) != Some(pr.first) {
            return Err(FormatError::Record(
                "index page does not match its reference",
            ));
        }
        Ok(Page::Decoded(v))
    }

    pub fn block_count(&self) -> usize {
        self.entries.len() + self.pages.iter().map(|p| p.count as usize).sum::<usize>()
    }
}

/// Where `cid` is in `entries` (sorted by CID).
fn find_entry(entries: &[Entry], cid: &Cid) -> Option<usize> {
    search_sorted(
        entries.len(),
        cid,
        |i| entries[i].cid.cmp(cid),
        |i| spread_key(entries[i].cid.as_bytes()),
    )
    .ok()
}
