//! Runs: blocks laid out as raw segments apart from a file's writer, so a large batch's
//! documents can be encoded on two threads; the file takes the runs' segments as they are.

use super::*;

/// Blocks laid out as a file's raw segments apart from its [`Writer`], so a large batch's
/// documents can be encoded on two threads at once, each into a run of its own; the file then
/// takes the runs' segments as they are (sealed in place by [`seal_runs`], written without a
/// copy). Blocks go in any order; a file's index is sorted by CID whatever the order.
pub struct Run {
    /// Raw segment units back to back: room for the nonce, the codec byte, the CAR bytes and
    /// (once closed) room for the tag.
    pub(super) buf: Vec<u8>,
    /// Where each closed unit's CAR bytes start and end in `buf`.
    pub(super) segs: Vec<(usize, usize)>,
    /// Where the open unit's CAR bytes start.
    pub(super) cur: usize,
    /// Blocks, with `seg` numbering this run's units from 0.
    pub(super) entries: Vec<Entry>,
}

impl Run {
    /// An empty run with room for about `bytes` of blocks.
    pub fn with_capacity(bytes: usize, blocks: usize) -> Run {
        let mut buf = Vec::with_capacity(bytes + bytes / SEGMENT_TARGET * 40 + 64);
        Run {
            cur: open_unit(&mut buf),
            buf,
            segs: Vec::new(),
            entries: Vec::with_capacity(blocks),
        }
    }

    /// Adds a block (the same rule for ending a segment as [`Writer::add`]; a CID added twice
    /// is stored twice: [`seal_runs`] refuses such runs).
    pub fn add(&mut self, cid: Cid, data: &[u8]) {
        if segment_full(self.buf.len() - self.cur, data.len()) {
            close_unit(&mut self.buf, self.cur, &mut self.segs);
            self.cur = open_unit(&mut self.buf);
        }
        let seg = self.segs.len() as u32;
        push_section(
            &mut self.buf,
            self.cur,
            &mut self.entries,
            seg,
            cid,
            data,
            OTHER,
        );
    }

    /// Ends the open segment; adds nothing afterwards.
    pub(super) fn close(&mut self) {
        if self.buf.len() > self.cur {
            close_unit(&mut self.buf, self.cur, &mut self.segs);
        } else {
            // Nothing in the open unit: drop its room.
            self.buf.truncate(self.cur - 1 - NONCE_LEN);
        }
    }

    /// The blocks, in the order added.
    pub fn blocks(&self) -> impl Iterator<Item = (Cid, &[u8])> {
        self.entries.iter().map(move |e| {
            let (start, _) = self
                .segs
                .get(e.seg as usize)
                .copied()
                .unwrap_or((self.cur, self.buf.len()));
            let at = start + e.off as usize;
            (e.cid, &self.buf[at..at + e.len as usize])
        })
    }

    /// Makes room for `blocks` more blocks of `bytes` in all.
    pub fn reserve(&mut self, bytes: usize, blocks: usize) {
        self.buf
            .reserve(bytes + bytes / SEGMENT_TARGET * (NONCE_LEN + 1 + TAG_LEN) + 64);
        self.entries.reserve(blocks);
    }

    /// Bytes of its blocks' sections so far.
    pub fn byte_len(&self) -> usize {
        self.buf.len()
    }

    /// Blocks held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Runs ready for [`Writer::with_runs`]: sealed, numbered from segment 1 on.
pub struct SealedRuns {
    /// The key of the file the runs go into (drawn before they were sealed).
    pub(super) key: FileKey,
    /// (Shared: a name's hashing may read them while the file is finished.)
    pub(super) runs: Arc<Vec<Run>>,
    /// Their units.
    pub(super) units: usize,
    /// Every block, numbered as in the file, sorted by CID.
    pub(super) entries: Vec<Entry>,
    /// The units' CAR bytes before sealing (when kept) and their total length.
    pub(super) plain: Option<Vec<Vec<u8>>>,
    pub(super) plain_len: usize,
}

impl SealedRuns {
    /// The runs' bytes, in file order (they start at [`runs_offset`] in a file with one root).
    pub fn bytes(&self) -> impl Iterator<Item = &[u8]> {
        self.runs.iter().map(|r| r.buf.as_slice())
    }

    /// The runs, shared (see [`Subtrees::of_runs`]).
    pub fn shared(&self) -> Arc<Vec<Run>> {
        self.runs.clone()
    }

    pub(super) fn holds(&self, cid: &Cid) -> bool {
        self.entries
            .binary_search_by(|e| entry_order(e, &Entry { cid: *cid, ..*e }))
            .is_ok()
    }
}

/// Closes `runs`, numbers their segments from 1 in order and seals them in place under a new
/// file's key (keeping a copy of their CAR bytes when these are at most `keep_plain` bytes);
/// the file ([`Writer::with_runs`]) takes that key. `Ok(Err(runs))`, the runs closed but
/// unsealed, when a CID repeats among them (a file lists a block once).
pub fn seal_runs(
    key: &Key,
    mut runs: Vec<Run>,
    keep_plain: usize,
) -> std::io::Result<Result<SealedRuns, Vec<Run>>> {
    let mut entries = Vec::with_capacity(runs.iter().map(Run::len).sum());
    let mut first = 1u32;
    for r in &mut runs {
        r.close();
        entries.extend(r.entries.iter().map(|e| Entry {
            seg: e.seg + first,
            ..*e
        }));
        first += r.segs.len() as u32;
    }
    sort_entries(&mut entries);
    if entries.windows(2).any(|w| w[0].cid == w[1].cid) {
        return Ok(Err(runs));
    }
    let plain_len: usize = runs
        .iter()
        .flat_map(|r| r.segs.iter().map(|(s, e)| e - s))
        .sum();
    let plain = (plain_len <= keep_plain).then(|| {
        runs.iter()
            .flat_map(|r| r.segs.iter().map(|&(s, e)| r.buf[s..e].to_vec()))
            .collect()
    });
    let key = FileKey::new(key)?;
    let mut n = 1u32;
    for r in &mut runs {
        for &(s, e) in &r.segs {
            key.seal_in_place(SEG_UNIT, n, &seg_aad(n), &mut r.buf[unit(s, e)])?;
            n += 1;
        }
    }
    Ok(Ok(SealedRuns {
        key,
        units: (n - 1) as usize,
        runs: Arc::new(runs),
        entries,
        plain,
        plain_len,
    }))
}

/// Where the runs of a [`Writer::with_runs`] file with one root start: after the header and
/// segment 0 (the CAR header alone), whose length depends only on how many roots it has.
pub fn runs_offset() -> u64 {
    let header = car_header(&[Cid::of_cbor(&[])]).len();
    (HEADER_LEN + NONCE_LEN + 1 + header + TAG_LEN) as u64
}
