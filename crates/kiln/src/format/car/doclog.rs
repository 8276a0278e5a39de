//! A diff file's document log (version 7): for each event the file holds and each document id
//! that event writes, one entry (the id, the event's height, the first 4 bytes of the event's
//! digest), sorted by id, then height from the highest. It lies in sealed pages after the
//! segments, listed in the index ("dl"), so a document's versions in a file are found by
//! reading a page or two instead of every event (`Database::history`). Every version-7 file
//! of more than one event has one, exactly what its events write (`verify` checks both); a
//! version-7 file without one holds one event at most, among its roots (a transaction's diff
//! is its own log); files of earlier versions are read event by event.

use super::*;

/// The plaintext bytes a log page is filled to before it is sealed (a lookup reads one page,
/// rarely two).
pub const LOG_PAGE_TARGET: usize = 16 * 1024;

/// Entries a log page may declare (a page ref's count), at most.
pub const MAX_LOG_PAGE_ENTRIES: u32 = 1 << 20;

/// Bytes of an event's digest a log entry keeps: enough to find the event in its file's index
/// (a reader checks each event it finds; two events of a file that share them cost one more
/// event read, never a wrong answer).
pub const LEAD_LEN: usize = 4;

/// One entry of a document log: event at `height`, whose digest starts with `lead`, writes
/// (or deletes) document `id`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct LogEntry {
    pub id: Vec<u8>,
    /// The event's height, kept as `u64::MAX - height` so the derived order is id ascending,
    /// then height descending, then lead.
    height_rev: u64,
    pub lead: [u8; LEAD_LEN],
}

impl LogEntry {
    pub fn new(id: &[u8], height: u64, event: &Cid) -> LogEntry {
        let mut lead = [0; LEAD_LEN];
        lead.copy_from_slice(&event.digest()[..LEAD_LEN]);
        LogEntry {
            id: id.to_vec(),
            height_rev: u64::MAX - height,
            lead,
        }
    }

    /// The writing event's height.
    pub fn height(&self) -> u64 {
        u64::MAX - self.height_rev
    }

    /// Whether `event`'s digest starts with this entry's lead.
    pub fn names(&self, event: &Cid) -> bool {
        event.digest()[..LEAD_LEN] == self.lead
    }

    /// The lowest CID (dag-cbor, sha2-256) an event with this lead can have: where a search of
    /// a file's sorted index for the event starts.
    pub fn lowest_cid(&self) -> Cid {
        let mut b = [0u8; CID_LEN];
        b[..4].copy_from_slice(&[0x01, 0x71, 0x12, 0x20]);
        b[4..4 + LEAD_LEN].copy_from_slice(&self.lead);
        Cid::from_bytes(&b).unwrap_or_else(|| Cid::of_cbor(&[]))
    }

    fn encode(&self, out: &mut Vec<u8>) {
        put_varint(out, self.id.len() as u64);
        out.extend_from_slice(&self.id);
        put_varint(out, self.height());
        out.extend_from_slice(&self.lead);
    }
}

/// A page of a file's document log, as its index lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogPageRef {
    /// The id of the page's first entry (ids repeat across pages: a document's entries may
    /// span two).
    pub first: Vec<u8>,
    pub off: u64,
    pub len: u32,
    pub count: u32,
}

/// Builds a log's pages from entries handed in order: a page's plaintext is handed out
/// when it reaches [`LOG_PAGE_TARGET`] bytes, with its first id and count.
#[derive(Default)]
pub(super) struct LogPages {
    cur: Vec<u8>,
    first: Vec<u8>,
    count: u32,
    last: Option<LogEntry>,
}

impl LogPages {
    /// Adds `e`; an entry equal to the last one is skipped (one event in two merged files),
    /// one out of order is an error. Returns a full page's (plaintext, first id, count).
    pub(super) fn push(
        &mut self,
        e: &LogEntry,
    ) -> std::io::Result<Option<(Vec<u8>, Vec<u8>, u32)>> {
        match &self.last {
            Some(l) if l == e => return Ok(None),
            Some(l) if *l > *e => {
                return Err(std::io::Error::other("document log entries out of order"))
            }
            _ => {}
        }
        if self.count == 0 {
            self.first.clone_from(&e.id);
        }
        e.encode(&mut self.cur);
        self.count += 1;
        self.last = Some(e.clone());
        Ok(
            if self.cur.len() >= LOG_PAGE_TARGET || self.count == MAX_LOG_PAGE_ENTRIES {
                self.take()
            } else {
                None
            },
        )
    }

    /// The page begun, if any entry is in it.
    pub(super) fn take(&mut self) -> Option<(Vec<u8>, Vec<u8>, u32)> {
        if self.count == 0 {
            return None;
        }
        let count = std::mem::take(&mut self.count);
        Some((
            std::mem::take(&mut self.cur),
            std::mem::take(&mut self.first),
            count,
        ))
    }

    pub(super) fn is_empty(&self) -> bool {
        self.last.is_none()
    }
}

/// The associated data of log page `n`.
pub(super) fn log_aad(n: u32) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[..12].copy_from_slice(b"kiln/dlog/v1");
    a[12..].copy_from_slice(&n.to_le_bytes());
    a
}

/// Seals log page `n` (`plain`: its entries), compressed when that is smaller, onto `out`.
pub(super) fn seal_log_page(
    key: &FileKey,
    n: u32,
    plain: &[u8],
    out: &mut Vec<u8>,
) -> std::io::Result<()> {
    let mut packed = Vec::with_capacity(plain.len() / 2 + 16);
    pack_segment(plain, &mut packed, true);
    key.seal_into(LOG_UNIT, n, &log_aad(n), &packed, out)
}

/// Decodes a log page's entries (its plaintext after the codec), checking them against its
/// reference: the count, the first id, and strictly increasing order.
pub(super) fn decode_log_page(b: &[u8], r: &LogPageRef) -> Result<Vec<LogEntry>, FormatError> {
    let bad = |why| FormatError::Record(why);
    let mut out: Vec<LogEntry> = Vec::with_capacity(r.count.min(4096) as usize);
    let mut pos = 0;
    while pos < b.len() {
        let n = get_varint(b, &mut pos).ok_or(bad("document log: id length"))? as usize;
        let id = pos
            .checked_add(n)
            .and_then(|end| b.get(pos..end))
            .ok_or(bad("document log: id"))?;
        pos += n;
        let height = get_varint(b, &mut pos).ok_or(bad("document log: height"))?;
        let lead: [u8; LEAD_LEN] = pos
            .checked_add(LEAD_LEN)
            .and_then(|end| b.get(pos..end))
            .and_then(|l| l.try_into().ok())
            .ok_or(bad("document log: event"))?;
        pos += LEAD_LEN;
        let e = LogEntry {
            id: id.to_vec(),
            height_rev: u64::MAX - height,
            lead,
        };
        if out.last().is_some_and(|l| *l >= e) {
            return Err(bad("document log entries not sorted"));
        }
        out.push(e);
    }
    if out.len() != r.count as usize || out.first().map(|e| e.id.as_slice()) != Some(&r.first) {
        return Err(bad("document log page does not match its reference"));
    }
    Ok(out)
}

impl Index {
    /// Decrypts and decodes log page `n` (`key`: the lineage's).
    pub fn open_log_page(
        &self,
        key: &Key,
        n: usize,
        sealed: &mut [u8],
    ) -> Result<Vec<LogEntry>, FormatError> {
        let r = self
            .log
            .get(n)
            .ok_or(FormatError::Record("no such document log page"))?;
        let plain = self
            .opener(key)
            .open_in(&log_aad(n as u32), sealed)
            .map_err(|SealError| FormatError::Seal("document log page"))?;
        decode_log_page(&unpack_segment(plain, self.version)?, r)
    }

    /// The log pages that may hold entries of `id`: from the last page starting below it (its
    /// tail may hold some) through the last page starting at it.
    pub fn log_pages_for(&self, id: &[u8]) -> std::ops::Range<usize> {
        let below = self.log.partition_point(|p| p.first.as_slice() < id);
        let through = self.log.partition_point(|p| p.first.as_slice() <= id);
        below.saturating_sub(1)..through
    }
}
