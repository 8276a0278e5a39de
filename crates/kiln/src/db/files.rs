//! Writing and opening diff files: the reused file buffer, storing a finished file (with the head
//! record carrying small durable ones), file indexes.

use super::*;

/// A file buffer larger than this is not kept between files.
pub(super) const FILE_BUF_KEEP: usize = 8 << 20;

/// A file this handle writes is kept in the block cache only up to this many bytes of
/// plaintext.
pub(super) const FILE_CACHE_MAX: usize = 128 << 10;

impl Db {
    /// Seals and stores a file, keeping its index and segments in memory so this process
    /// never reads back what it just wrote.
    pub(super) fn store_file(
        &self,
        w: car::Writer,
        level: u8,
        heights: (u64, u64),
    ) -> Result<FileRef> {
        let f = self.finish_file(w, level)?;
        self.store_finished(f, level, heights, false, None, &car::Subtrees::default())
    }

    /// Seals a file (compressed above level 0).
    pub(super) fn finish_file(&self, w: car::Writer, level: u8) -> Result<car::Finished> {
        w.finish(&self.key, level > 0, FILE_CACHE_MAX)
            .map_err(|e| Error::io(&self.dir, e))
    }

    /// [`Db::store_file`] of a sealed file, with three more choices. `carry` (a transaction's
    /// diff with full durability): a small file is written unsynced and left for the head
    /// record to carry (see [`Db::write_head`]). `early`: the file was begun before it was
    /// sealed (see [`crate::storage::Storage::begin`]), its runs written at the offset given,
    /// if any. `known`: subtrees of its bytes hashed before, for its name.
    pub(super) fn store_finished(
        &self,
        f: car::Finished,
        level: u8,
        heights: (u64, u64),
        carry: bool,
        early: Option<(crate::storage::Pending, Option<u64>)>,
        known: &car::Subtrees,
    ) -> Result<FileRef> {
        let size = f.file_len();
        let carry = carry && size <= crate::format::head::MAX_FILE_RECORD;
        let sync = self.sync() && !carry;
        let io = |e| Error::io(self.store.root.join("files"), e);
        let name = match early {
            // Written while hashed; the runs may be there already.
            Some((pending, runs_at)) => {
                let parts = f.parts();
                let runs_written = !f.runs.is_empty() && runs_at == Some(f.split as u64);
                let (name, written) = crate::util::par::join(
                    || f.name_with(known),
                    || {
                        let mut at = 0;
                        for (i, p) in parts.iter().enumerate() {
                            let is_run = i > 0 && i + 1 < parts.len();
                            if !(is_run && runs_written) {
                                pending.write_at(p, at)?;
                            }
                            at += p.len() as u64;
                        }
                        std::io::Result::Ok(())
                    },
                );
                written.map_err(io)?;
                self.store
                    .storage
                    .finish(pending, &name, size as u64, sync)
                    .map_err(io)?;
                name
            }
            None => {
                let name = f.name_with(known);
                self.store
                    .storage
                    .put_parts(&name, &f.parts(), sync)
                    .map_err(io)?;
                name
            }
        };
        if carry {
            let bytes = f.parts().concat();
            *self.carried.lock().unwrap_or_else(|p| p.into_inner()) = Some((name, bytes));
        }
        let car::Finished {
            bytes,
            index,
            index_len,
            segments,
            ..
        } = f;
        let size = size as u64;
        self.give_file_buf(bytes);
        let filter = self.register_index(name, index);
        // A large file's segments are not cached (they would push out what reads use).
        for (n, seg) in segments.into_iter().enumerate() {
            self.store.cache.insert(
                CacheKey::Segment(name, n as u32),
                Cached::Bytes(Arc::new(seg)),
            );
        }
        Ok(FileRef {
            name,
            level,
            size,
            index_len,
            heights,
            filter,
        })
    }

    /// The buffer this handle builds files in (see [`car::Writer::with_capacity`]); empty
    /// while another file of the handle is being built.
    pub(super) fn take_file_buf(&self) -> Vec<u8> {
        let mut b = std::mem::take(&mut *self.file_buf.lock().unwrap_or_else(|p| p.into_inner()));
        b.clear(); // (it comes back holding the last file: reserving on top of that doubled it)
        b
    }

    /// Keeps a file's buffer for the next file, unless it grew too large to hold on to.
    pub(super) fn give_file_buf(&self, buf: Vec<u8>) {
        if buf.capacity() <= FILE_BUF_KEEP {
            *self.file_buf.lock().unwrap_or_else(|p| p.into_inner()) = buf;
        }
    }

    /// The metadata of a whole file's bytes (its index is checked and decrypted).
    pub(super) fn meta_of(&self, name: &FileName, b: &[u8]) -> Result<car::Meta> {
        let bad = |e| Error::format(format!("file {name}"), e);
        let t = b
            .get(b.len().saturating_sub(car::TRAILER_LEN)..)
            .unwrap_or_default();
        let (at, len) = car::parse_trailer(b.len() as u64, t).map_err(bad)?;
        let tail = usize::try_from(at)
            .ok()
            .filter(|&at| b.len().checked_sub(at) == Some(len as usize + car::TRAILER_LEN))
            .and_then(|at| b.get(at..))
            .ok_or_else(|| bad(car::FormatError::Framing("index outside the file")))?;
        Ok(car::Index::open(&self.key, tail, at).map_err(bad)?.meta)
    }

    /// Keeps the index of a file this handle just wrote (no need to read it back) and returns
    /// the file's filter for the head record: a small file's 64-bit filter of every block (a
    /// lookup skips it without reading its index); a larger file's structural filter is in its
    /// index.
    pub(super) fn register_index(&self, name: FileName, index: car::Index) -> Filter {
        let filter = match index.entries.len() {
            1..=crate::format::filter::SMALL_FILE_BLOCKS if index.pages.is_empty() => {
                Filter::Small(
                    index
                        .entries
                        .iter()
                        .fold(0, |b, e| b | crate::format::filter::small_bits(&e.cid)),
                )
            }
            _ => Filter::None,
        };
        let mut m = self.indexes.write().unwrap_or_else(|p| p.into_inner());
        if m.len() > 4096 {
            m.clear();
        }
        m.insert(name, Arc::new(index));
        filter
    }

    pub(super) fn file_err(&self, name: &FileName, e: std::io::Error) -> Error {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::MissingFile(*name, self.name.clone())
        } else if e.kind() == std::io::ErrorKind::UnexpectedEof {
            Error::corrupt(
                format!("file {name}"),
                "file is shorter than its index says (truncated)",
            )
        } else {
            Error::io(self.store.root.join("files").join(name.to_string()), e)
        }
    }

    pub(super) fn index(&self, f: &FileRef) -> Result<Arc<car::Index>> {
        let name = &f.name;
        if let Some(i) = self
            .indexes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
        {
            return Ok(i.clone());
        }
        // A carried diff (see `write_head`) is checked whole the first time this handle loads
        // it: after a power cut its name can hold a reused file's old bytes, which read and
        // authenticate like any diff's (only the name's hash tells). If it cannot be put back,
        // nothing is read from it. (The state's log is the one this handle's head came from:
        // damage comes from a power cut, before any live handle opened.)
        if self.state().log.files.contains(name) {
            self.ensure_whole(name)?;
        }
        let idx = self.restoring(name, || self.read_index(f))?;
        let mut m = self.indexes.write().unwrap_or_else(|p| p.into_inner());
        if m.len() > 4096 {
            m.clear();
        }
        m.insert(*name, idx.clone());
        Ok(idx)
    }

    /// Reads and opens a file's index.
    pub(super) fn read_index(&self, f: &FileRef) -> Result<Arc<car::Index>> {
        let name = &f.name;
        let st = &self.store.storage;
        let loc = format!("file {name}");
        let tail = car::TRAILER_LEN as u64 + f.index_len as u64;
        if f.index_len == 0 || f.size < tail + car::HEADER_LEN as u64 {
            return Err(Error::corrupt(
                loc,
                "head record gives an impossible index location",
            ));
        }
        // Index and trailer in one read; the trailer must agree with the head record.
        let b = st
            .read_at(name, f.size - tail, tail as usize)
            .map_err(|e| self.file_err(name, e))?;
        let t = &b[f.index_len as usize..];
        let (at, n) = car::parse_trailer(f.size, t).map_err(|e| Error::format(&loc, e))?;
        if at != f.size - tail || n != f.index_len {
            return Err(Error::corrupt(
                loc,
                "trailer disagrees with the head record",
            ));
        }
        Ok(Arc::new(
            car::Index::open(&self.key, &b, at).map_err(|e| Error::format(&loc, e))?,
        ))
    }
}
