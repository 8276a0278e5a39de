//! Writing a diff file of any size as it goes (what a compaction writes).

use super::*;

/// Writes a diff file of any size to `out` as it goes: each segment is sealed and written when
/// it fills, so memory holds one segment and the index entries, not the file. The name (the
/// hash of all bytes) is known at the end.
pub struct StreamWriter<'a> {
    key: FileKey,
    out: &'a mut dyn std::io::Write,
    hash: blake3::Hasher,
    len: u64,
    meta: Meta,
    cur: Vec<u8>,
    packed: Vec<u8>,
    sealed: Vec<u8>,
    seg_at: Vec<(u64, u32)>,
    entries: Vec<Entry>,
    seen: Added,
    /// How large the current segment may grow: [`SEGMENT_TARGET`], or up to [`GROUP_TARGET`]
    /// while a group is being written.
    limit: usize,
    /// The document log's page being filled, and the pages written (after the last segment:
    /// no block is added once the log has begun).
    log: LogPages,
    log_refs: Vec<LogPageRef>,
    refs: FileRefs,
}

impl<'a> StreamWriter<'a> {
    pub fn new(
        meta: Meta,
        key: &Key,
        out: &'a mut dyn std::io::Write,
    ) -> std::io::Result<StreamWriter<'a>> {
        let mut w = StreamWriter {
            key: FileKey::new(key)?,
            out,
            hash: blake3::Hasher::new(),
            len: 0,
            cur: car_header(&meta.roots),
            meta,
            packed: Vec::new(),
            sealed: Vec::new(),
            seg_at: Vec::new(),
            entries: Vec::new(),
            seen: Added::default(),
            limit: SEGMENT_TARGET,
            log: LogPages::default(),
            log_refs: Vec::new(),
            refs: FileRefs::default(),
        };
        let mut h = Vec::with_capacity(HEADER_LEN);
        h.extend_from_slice(MAGIC);
        h.extend_from_slice(&VERSION.to_le_bytes());
        h.extend_from_slice(&0u32.to_le_bytes());
        w.emit(&h)?;
        Ok(w)
    }

    fn emit(&mut self, b: &[u8]) -> std::io::Result<()> {
        emit_to(&mut self.out, &mut self.hash, &mut self.len, b)
    }

    fn flush_segment(&mut self) -> std::io::Result<()> {
        let n = self.seg_at.len() as u32;
        pack_segment(&self.cur, &mut self.packed, true);
        let mut sealed = std::mem::take(&mut self.sealed);
        sealed.clear();
        self.key
            .seal_into(SEG_UNIT, n, &seg_aad(n), &self.packed, &mut sealed)?;
        self.seg_at.push((self.len, sealed.len() as u32));
        self.emit(&sealed)?;
        self.sealed = sealed;
        self.cur.clear();
        Ok(())
    }

    pub fn add(&mut self, cid: Cid, data: &[u8]) -> std::io::Result<()> {
        self.add_kind(cid, data, OTHER)
    }

    pub fn add_event(&mut self, cid: Cid, data: &[u8]) -> std::io::Result<()> {
        self.add_kind(cid, data, EVENT)
    }

    pub fn add_node(&mut self, cid: Cid, data: &[u8]) -> std::io::Result<()> {
        self.add_kind(cid, data, NODE)
    }

    /// Whether `cid` was added already (a later add of it is ignored).
    pub fn holds(&self, cid: &Cid) -> bool {
        self.seen.contains(cid, &self.entries)
    }

    /// Makes room for `blocks` more blocks' entries at once (a compaction knows how many its
    /// inputs hold): growing by doubling, the list held up to twice its size, and three times
    /// while being copied.
    pub fn reserve(&mut self, blocks: usize) {
        self.entries.reserve_exact(blocks);
        self.seen.by_lead.reserve(blocks);
    }

    /// The next blocks, about `bytes` of them, are read together (a tree leaf and the document
    /// versions it names): they start a segment of their own unless they fit in the current
    /// one, and that segment may grow to [`GROUP_TARGET`] bytes before it ends, until
    /// [`StreamWriter::end_group`].
    pub fn begin_group(&mut self, bytes: usize) -> std::io::Result<()> {
        if !self.cur.is_empty() && self.cur.len() + bytes > SEGMENT_TARGET {
            self.flush_segment()?;
        }
        self.limit = GROUP_TARGET;
        Ok(())
    }

    /// Ends a group: segments go back to [`SEGMENT_TARGET`] bytes; the group's segment ends
    /// here, so what follows does not share it.
    pub fn end_group(&mut self) -> std::io::Result<()> {
        self.limit = SEGMENT_TARGET;
        if self.cur.len() > SEGMENT_TARGET / 2 {
            self.flush_segment()?;
        }
        Ok(())
    }

    /// Adds an entry to the file's document log (see [`doclog`]), after every block: entries
    /// come in order ([`LogEntry`]'s), a repeated one is skipped. Full pages are written as
    /// they fill.
    pub fn add_log_entry(&mut self, e: &LogEntry) -> std::io::Result<()> {
        if self.log.is_empty() && !self.cur.is_empty() {
            self.flush_segment()?;
        }
        if let Some(page) = self.log.push(e)? {
            self.emit_log_page(page)?;
        }
        Ok(())
    }

    /// Records that document version `value` in this file names file-set `set`.
    pub fn add_file_ref(&mut self, value: Cid, set: FileName) {
        self.refs.0.push((value, set));
    }

    fn emit_log_page(
        &mut self,
        (plain, first, count): (Vec<u8>, Vec<u8>, u32),
    ) -> std::io::Result<()> {
        let n = self.log_refs.len() as u32;
        let mut sealed = std::mem::take(&mut self.sealed);
        sealed.clear();
        seal_log_page(&self.key, n, &plain, &mut sealed)?;
        self.log_refs.push(LogPageRef {
            first,
            off: self.len,
            len: sealed.len() as u32,
            count,
        });
        self.emit(&sealed)?;
        self.sealed = sealed;
        Ok(())
    }

    fn add_kind(&mut self, cid: Cid, data: &[u8], kind: u8) -> std::io::Result<()> {
        if !self.log.is_empty() {
            return Err(std::io::Error::other(
                "a block added after the document log",
            ));
        }
        if self.seen.contains(&cid, &self.entries) {
            return Ok(());
        }
        if segment_full_at(self.cur.len(), data.len(), self.limit) {
            self.flush_segment()?;
        }
        // Noted only now, right before its entry is pushed (the position it names).
        self.seen.insert(&cid, &self.entries);
        let seg = self.seg_at.len() as u32;
        push_section(&mut self.cur, 0, &mut self.entries, seg, cid, data, kind);
        Ok(())
    }

    /// Writes the rest and returns the file's name, size, index (with its entries) and index
    /// length.
    pub fn finish(mut self) -> std::io::Result<(FileName, u64, Index, u32)> {
        if !self.cur.is_empty() {
            self.flush_segment()?;
        }
        if let Some(page) = self.log.take() {
            self.emit_log_page(page)?;
        }
        let log = std::mem::take(&mut self.log_refs);
        let refs = std::mem::take(&mut self.refs);
        self.seen = Added::default(); // nothing more is added
        let mut tail = Vec::new();
        let mut entries = std::mem::take(&mut self.entries);
        let seg_at = std::mem::take(&mut self.seg_at);
        let meta = self.meta.clone();
        sort_entries(&mut entries);
        let base = self.len;
        let (out, hash, len) = (&mut self.out, &mut self.hash, &mut self.len);
        let mut spill = |b: &[u8]| emit_to(out, hash, len, b);
        let (index, index_len) = write_tail_at(
            &self.key,
            meta,
            &entries,
            seg_at,
            (log, refs),
            base,
            &mut tail,
            Some(&mut spill),
        )?;
        self.emit(&tail)?;
        let name = FileName(*self.hash.finalize().as_bytes());
        let index = index.with_entries(entries);
        Ok((name, self.len, index, index_len))
    }
}

/// Writes `b` on a streaming writer's output, hashing and counting it.
fn emit_to(
    out: &mut dyn std::io::Write,
    hash: &mut blake3::Hasher,
    len: &mut u64,
    b: &[u8],
) -> std::io::Result<()> {
    out.write_all(b)?;
    hash.update(b);
    *len += b.len() as u64;
    Ok(())
}
