//! The read path: a `View` on one head record finds a block's file (by height, Bloom filter,
//! index page), decrypts one segment (cached) and takes the section labelled with the block's CID
//! (authenticated with the segment, not re-hashed: see `car::block_at`); the head record and
//! LOCK counter are read here, and a read that meets a file a compaction removed re-reads the
//! head record and retries.

use super::*;

/// A database state to read a tree from: a head and tree nodes built in memory (the state at
/// an event whose own tree was dropped by compaction).
pub(super) struct Point<'a> {
    pub(super) view: View<'a>,
    pub(super) root: Option<Cid>,
    pub(super) built: DigestMap<Cid, Arc<tree::Node>>,
}

impl NodeSource for Point<'_> {
    type Error = Error;
    fn node(&self, cid: &Cid) -> Result<Arc<tree::Node>> {
        match self.built.get(cid) {
            Some(n) => {
                self.view.near.set(None);
                Ok(n.clone())
            }
            None => self.view.node(cid),
        }
    }
    fn leaf(&self, cid: &Cid) -> Result<LeafRef> {
        match self.built.get(cid) {
            Some(n) => {
                self.view.near.set(None);
                Ok(LeafRef::Node(n.clone()))
            }
            None => self.view.leaf(cid),
        }
    }
}

/// Reads `HEAD` and parses it with `parse`, consistently with the LOCK counter (see
/// [`DbLock::read_head`]): the record and the counter value it is current for. No head record
/// is no such database.
pub(super) fn read_head_with<T>(
    lock: &DbLock,
    hp: &std::path::Path,
    name: &str,
    parse: impl FnMut(&[u8]) -> Result<T>,
) -> Result<(T, Option<u64>)> {
    lock.read_head(hp, parse, |p, e| Error::io(p, e))?
        .ok_or_else(|| Error::NoSuchDatabase(name.into()))
}

thread_local! {
    /// The buffer segments are read and decrypted in (one per thread, reused: a segment is
    /// 4–16 KiB, above what the allocator keeps at hand for small sizes).
    static SEALED: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// The largest [`SEALED`] buffer a thread keeps between reads (a larger segment, from a huge
/// document, gets its own).
const KEEP_SEALED: usize = 1 << 20;

/// How a document version's body becomes a value: given its id and its bytes
/// ([`doc::decode`], or a decoder of some fields only); any thread may call it (a scan reads
/// on two).
pub(crate) type DecodeDoc<'f, T = Value> =
    dyn Fn(&str, &[u8]) -> std::result::Result<T, &'static str> + Sync + 'f;

/// Reads against one head record.
pub(super) struct View<'a> {
    pub(super) db: &'a Db,
    pub(super) head: &'a Head,
    /// Where the last tree node this view read lies (a file's segment), if in a file: the
    /// document versions a leaf names are usually written beside it (see
    /// `compact::cluster`), so [`View::locate`] looks there first.
    pub(super) near: Cell<Option<Place>>,
    /// The last segment this view opened: a leaf's document is usually in the leaf's segment,
    /// which the cache may have declined to keep ([`Cache::admit`]).
    last: RefCell<Option<(Place, Arc<Vec<u8>>)>>,
    /// Leaves this view decodes go into the cache (not for a walk that reads each leaf once).
    keep_leaves: bool,
}

/// A view's memory of where it last read ([`View::hints`]).
#[derive(Default)]
pub(super) struct Hints {
    near: Option<Place>,
    last: Option<(Place, Arc<Vec<u8>>)>,
}

impl<'a> View<'a> {
    pub(super) fn new(db: &'a Db, head: &'a Head) -> View<'a> {
        View {
            db,
            head,
            near: Cell::new(None),
            last: RefCell::new(None),
            keep_leaves: true,
        }
    }

    /// A view whose leaves, decoded from files, stay out of the cache: for a walk over a whole
    /// tree that reads each leaf once (a scan's list of live versions), which would otherwise
    /// fill the cache, and fresh memory, with leaves no later read may want.
    pub(super) fn passing(db: &'a Db, head: &'a Head) -> View<'a> {
        View {
            keep_leaves: false,
            ..View::new(db, head)
        }
    }

    /// A view that starts from what an earlier view over the same files learned (see
    /// [`View::hints`]): a cursor's next batch reads on from where the last one stopped.
    pub(super) fn resume(db: &'a Db, head: &'a Head, hints: Hints) -> View<'a> {
        View {
            db,
            head,
            near: Cell::new(hints.near),
            last: RefCell::new(hints.last),
            keep_leaves: true,
        }
    }

    /// Where this view last read (files are immutable, so this stays true for any view).
    pub(super) fn hints(self) -> Hints {
        Hints {
            near: self.near.get(),
            last: self.last.into_inner(),
        }
    }

    pub(super) fn corrupt_cid(&self, cid: &Cid, what: &str) -> Error {
        Error::corrupt(format!("block {cid} of database '{}'", self.db.name), what)
    }

    /// Finds the live file holding `cid`. With `height` (the version of a document slot), the
    /// files whose event heights cover it are probed first — usually exactly one. A tree node
    /// is looked for first in the file its parent was read from (a compaction writes the
    /// nodes of a tree it keeps together). Otherwise: the newest file (where the root and
    /// recently changed nodes are), then compacted files, largest first (most of an old tree
    /// is in the largest), then the other diffs. A small file whose 64-bit filter (in the head
    /// record) rules `cid` out is skipped without reading its index; a file whose structural
    /// filter (in its index: tree nodes and events only) rules it out is skipped without
    /// reading a page, but only at first: a block no filter admits (a document version read
    /// without its height, or a filter that is wrong: `verify` reports those) is looked for in
    /// those files last.
    pub(super) fn locate(
        &self,
        cid: &Cid,
        height: Option<u64>,
    ) -> Result<(&'a FileRef, car::Entry)> {
        let head: &'a Head = self.head;
        let files = &head.files;
        let covers = |f: &FileRef| height.is_some_and(|h| f.heights.0 <= h && h <= f.heights.1);
        // A document version is in the file whose heights cover its slot's: probed first, its
        // filter unasked (a structural filter says nothing of document versions); when the
        // leaf that names it was read from that file, in the leaf's segment or the next.
        let near = self.near.get();
        for f in files.iter().filter(|f| covers(f)) {
            // Only compacted files are laid out so (a transaction's diff lists its documents
            // before its tree nodes): elsewhere the walk would cost a segment for nothing.
            if let Some(e) = near
                .filter(|n| n.file == f.name && f.level > 0)
                .and_then(|n| self.beside(f, n.seg, cid))
            {
                return Ok((f, e));
            }
            if let Some(e) = self.probe_version(f, cid)? {
                return Ok((f, e));
            }
        }
        let known = self.db.filters_of(head);
        // The files whose filters (the head record's 64-bit filter of a small file, the index's
        // structural filter, kept per head: a node lookup asks every live file's, ~165 after a
        // million-document load) admit `cid`, then the others; for a tree node, its parent's
        // file first.
        let parents_file = near
            .filter(|_| height.is_none())
            .and_then(|n| known.position.get(&n.file).copied());
        let order = || {
            parents_file
                .into_iter()
                .chain(
                    known
                        .order
                        .iter()
                        .copied()
                        .filter(move |&i| Some(i) != parents_file),
                )
                .map(|i| i as usize)
                .filter(|&i| !covers(&files[i]))
        };
        for i in order().filter(|&i| files[i].filter.may_hold(cid)) {
            if known.filters[i].get().is_some_and(|f| !f.may_hold(cid)) {
                continue;
            }
            let f = &files[i];
            let idx = self.db.index(f)?;
            let _ = known.filters[i].set(idx.filter.clone());
            if idx.filter.may_hold(cid) {
                if let Some(e) = self.probe_in(f, &idx, cid)? {
                    return Ok((f, e));
                }
            }
        }
        for f in order().map(|i| &files[i]) {
            let idx = self.db.index(f)?;
            if f.filter.may_hold(cid) && idx.filter.may_hold(cid) {
                continue; // probed above
            }
            if let Some(e) = self.probe_in(f, &idx, cid)? {
                return Ok((f, e));
            }
        }
        Err(Error::MissingBlock(*cid, self.db.name.clone()))
    }

    /// `cid`'s section in segment `seg` of file `f` or the next one, found without the index.
    /// A segment that cannot be read is a miss, not an error: the block may be elsewhere (a
    /// document two leaves share is beside the first), and the index finds it; if it is in
    /// that segment after all, the index's read reports the damage.
    fn beside(&self, f: &FileRef, seg: u32, cid: &Cid) -> Option<car::Entry> {
        let segs = self.db.index(f).ok()?.segs.len() as u32;
        (seg..seg.saturating_add(2))
            .filter(|&n| n < segs)
            .find_map(|n| car::find_in_segment(&self.segment(f, n).ok()?, n, cid))
    }

    /// `cid`'s entry in file `f`'s index, if it has one.
    pub(super) fn probe(&self, f: &FileRef, cid: &Cid) -> Result<Option<car::Entry>> {
        self.probe_in(f, &*self.db.index(f)?, cid)
    }

    /// [`View::probe`] with the file's index at hand.
    pub(super) fn probe_in(
        &self,
        f: &FileRef,
        idx: &car::Index,
        cid: &Cid,
    ) -> Result<Option<car::Entry>> {
        if let Some(e) = idx.find(cid) {
            return Ok(Some(e));
        }
        self.probe_pages(f, idx, cid)
    }

    /// [`View::probe`] for a document version: a paged file lists those in its pages only (its
    /// index's own entries are its tree nodes and events), so the pages are asked first.
    fn probe_version(&self, f: &FileRef, cid: &Cid) -> Result<Option<car::Entry>> {
        let idx = self.db.index(f)?;
        if let Some(e) = self.probe_pages(f, &idx, cid)? {
            return Ok(Some(e));
        }
        Ok(idx.find(cid))
    }

    /// `cid`'s entry in the page of file `f` that would list it (none in an unpaged file).
    fn probe_pages(&self, f: &FileRef, idx: &car::Index, cid: &Cid) -> Result<Option<car::Entry>> {
        Ok(if let Some(p) = idx.page_for(cid) {
            self.page(&f.name, idx, p)?
                .find(cid, idx.segs.len())
                .map_err(|e| Error::format(format!("file {}", f.name), e))?
        } else {
            None
        })
    }

    pub(super) fn page(
        &self,
        name: &FileName,
        idx: &car::Index,
        p: usize,
    ) -> Result<Arc<car::Page>> {
        let key = CacheKey::Page(*name, p as u32);
        if let Some(Cached::Page(v)) = self.db.store.cache.get(&key) {
            return Ok(v);
        }
        let pr = &idx.pages[p];
        let v = self.db.restoring(name, || {
            let sealed = self
                .db
                .store
                .storage
                .read_at(name, pr.off, pr.len as usize)
                .map_err(|e| self.db.file_err(name, e))?;
            Ok(Arc::new(
                idx.open_page_for_reads(&self.db.key, p, &sealed)
                    .map_err(|e| Error::format(format!("file {name}"), e))?,
            ))
        })?;
        self.db.store.cache.insert(key, Cached::Page(v.clone()));
        Ok(v)
    }

    pub(super) fn segment(&self, file: &FileRef, n: u32) -> Result<Arc<Vec<u8>>> {
        let name = &file.name;
        let here = Place {
            file: *name,
            seg: n,
        };
        if let Some((at, b)) = &*self.last.borrow() {
            if *at == here {
                return Ok(b.clone());
            }
        }
        let key = CacheKey::Segment(*name, n);
        if let Some(Cached::Bytes(b)) = self.db.store.cache.get(&key) {
            return Ok(b);
        }
        let idx = self.db.index(file)?;
        let (off, len) = idx.segs[n as usize];
        let plain = self.db.restoring(name, || {
            SEALED.with_borrow_mut(|sealed| {
                self.db
                    .store
                    .storage
                    .read_into(name, off, len as usize, sealed)
                    .map_err(|e| self.db.file_err(name, e))?;
                let plain = idx.open_segment_in(&self.db.key, n, sealed);
                if sealed.capacity() > KEEP_SEALED {
                    *sealed = Vec::new();
                }
                Ok(Arc::new(
                    plain.map_err(|e| Error::format(format!("file {name}"), e))?,
                ))
            })
        })?;
        self.db.store.cache.admit(key, Cached::Bytes(plain.clone()));
        *self.last.borrow_mut() = Some((here, plain.clone()));
        Ok(plain)
    }

    /// A block's bytes: the section of its segment labelled with its CID ([`car::block_at`]).
    pub(super) fn with_block<T>(
        &self,
        cid: &Cid,
        height: Option<u64>,
        f: impl FnOnce(&[u8]) -> Result<T>,
    ) -> Result<T> {
        self.block_by(cid, height, car::block_at, f)
    }

    /// A block's bytes checked against its CID ([`car::block_in`]), for what copies a block
    /// into another file (a merge taking another database's blocks, a squash): the copy
    /// vouches for it under this database's key.
    pub(super) fn with_checked_block<T>(
        &self,
        cid: &Cid,
        height: Option<u64>,
        f: impl FnOnce(&[u8]) -> Result<T>,
    ) -> Result<T> {
        self.block_by(cid, height, car::block_in, f)
    }

    /// A block's bytes as `slice` takes them out of the segment that holds them.
    fn block_by<T>(
        &self,
        cid: &Cid,
        height: Option<u64>,
        slice: for<'s> fn(&'s [u8], &car::Entry) -> std::result::Result<&'s [u8], car::FormatError>,
        f: impl FnOnce(&[u8]) -> Result<T>,
    ) -> Result<T> {
        let (file, e) = self.locate(cid, height)?;
        let seg = self.segment(file, e.seg)?;
        let data = slice(&seg, &e)
            .map_err(|x| Error::format(format!("file {}, block {cid}", file.name), x))?;
        f(data)
    }

    /// An event CID the user gave: absent, or a stored block that is not an event, is
    /// "no such event", not corruption.
    pub(super) fn given_event(&self, cid: &Cid) -> Result<Arc<Event>> {
        let no = || Error::NoSuchEvent(*cid, self.db.name.clone());
        // In this database's files, not merely in the store-wide cache (another database's).
        match self.locate(cid, None) {
            Err(Error::MissingBlock(..)) => return Err(no()),
            r => r?,
        };
        match self.event(cid) {
            Err(Error::MissingBlock(..)) => Err(no()),
            Err(Error::Corrupt { .. })
                if self.with_checked_block(cid, None, |_| Ok(())).is_ok() =>
            {
                Err(no())
            }
            r => r,
        }
    }

    /// A document version; `height` is the version of the slot that names it (a hint).
    pub(super) fn load_doc(&self, id: &str, cid: &Cid, height: u64) -> Result<Value> {
        self.load_doc_as(id, cid, height, &doc::decode)
    }

    /// [`View::load_doc`], decoded by `decode` (given the id and the body).
    pub(super) fn load_doc_as<T>(
        &self,
        id: &str,
        cid: &Cid,
        height: u64,
        decode: &DecodeDoc<'_, T>,
    ) -> Result<T> {
        if self.head.purged.binary_search(cid).is_ok() {
            return Err(Error::Purged(id.to_owned(), self.db.name.clone()));
        }
        self.with_block(cid, Some(height), |b| {
            decode(id, b).map_err(|w| self.corrupt_cid(cid, w))
        })
    }

    pub(super) fn doc(&self, id: &str, root: Option<&Cid>) -> Result<Option<Value>> {
        match tree::get(self, root, id.as_bytes())? {
            Some(Slot {
                link: Some(l),
                version,
            }) => Ok(Some(self.load_doc(id, &l, version)?)),
            _ => Ok(None),
        }
    }

    /// The document as of `event`: the write of `id` with the highest rank among the event's
    /// ancestors (the same rule the tree applies when merging heads).
    pub(super) fn doc_at(&self, id: &str, event: &Cid) -> Result<Option<Value>> {
        let ev = self.given_event(event)?;
        if let Some(root) = ev.root {
            match self.doc(id, Some(&root)) {
                Err(Error::MissingBlock(..)) => {} // that tree was dropped by compaction: replay
                r => return r,
            }
        }
        let mut best: Option<Slot> = None;
        clock::walk(self, &[*event], &mut |c, e| {
            if let Some(root) = self.head.cut_root(c) {
                // History before a cut event lives on as the state at it.
                if let Some(s) = tree::get(self, root.as_ref(), id.as_bytes())? {
                    if best.is_none_or(|b| s.rank(&b) == std::cmp::Ordering::Greater) {
                        best = Some(s);
                    }
                }
            }
            if best.is_some_and(|b| e.height < b.version) {
                return Ok(false);
            }
            if let Ok(i) = e
                .ops
                .binary_search_by(|(k, _)| k.as_bytes().cmp(id.as_bytes()))
            {
                let s = Slot {
                    version: e.height,
                    link: e.ops[i].1,
                };
                if best.is_none_or(|b| s.rank(&b) == std::cmp::Ordering::Greater) {
                    best = Some(s);
                }
            }
            Ok(true)
        })?;
        match best {
            Some(Slot {
                link: Some(l),
                version,
            }) => Ok(Some(self.load_doc(id, &l, version)?)),
            _ => Ok(None),
        }
    }
}

impl From<TreeError> for Error {
    fn from(t: TreeError) -> Error {
        Error::corrupt(format!("tree node {}", t.cid), t.what)
    }
}

impl NodeSource for View<'_> {
    type Error = Error;
    fn node(&self, cid: &Cid) -> Result<Arc<tree::Node>> {
        if let Some((_, n)) = self
            .db
            .pending
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(cid)
        {
            self.near.set(None);
            return Ok(n.clone());
        }
        let key = CacheKey::Node(self.db.lineage, *cid);
        if let Some(Cached::Node(n, at)) = self.db.store.cache.get(&key) {
            self.near.set(at);
            return Ok(n);
        }
        // A leaf a get just read (an update reads, then rewrites) is decoded from the copy.
        let (n, at) = match self
            .db
            .store
            .cache
            .get(&CacheKey::Leaf(self.db.lineage, *cid))
        {
            Some(Cached::Leaf(l, at)) => (l.to_node(), at),
            _ => self.decode_node(cid, tree::Node::decode)?,
        };
        self.near.set(at);
        let n = Arc::new(n);
        self.db.store.cache.insert(key, Cached::Node(n.clone(), at));
        Ok(n)
    }

    /// A leaf built in memory or cached decoded (a scan or a commit read it) is used as it is;
    /// else the leaf is read into a [`tree::Leaf`] (cheaper to build and drop).
    fn leaf(&self, cid: &Cid) -> Result<LeafRef> {
        let pending = self
            .db
            .pending
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(cid)
            .map(|(_, n)| n.clone());
        if let Some(n) = pending {
            self.near.set(None);
            return Ok(LeafRef::Node(n));
        }
        let key = CacheKey::Leaf(self.db.lineage, *cid);
        match self.db.store.cache.get(&key) {
            Some(Cached::Leaf(l, at)) => {
                self.near.set(at);
                return Ok(LeafRef::Leaf(l));
            }
            _ => {
                if let Some(Cached::Node(n, at)) = self
                    .db
                    .store
                    .cache
                    .get(&CacheKey::Node(self.db.lineage, *cid))
                {
                    self.near.set(at);
                    return Ok(LeafRef::Node(n));
                }
            }
        }
        let (l, at) = self.decode_node(cid, tree::Leaf::decode)?;
        let l = Arc::new(l);
        if self.keep_leaves {
            self.db.store.cache.insert(key, Cached::Leaf(l.clone(), at));
        }
        Ok(LeafRef::Leaf(l))
    }
}

impl View<'_> {
    /// Reads tree node `cid` from its file and decodes it with `decode`; notes where it was
    /// (the hint for the documents it names).
    fn decode_node<T>(
        &self,
        cid: &Cid,
        decode: fn(&[u8]) -> std::result::Result<T, CborError>,
    ) -> Result<(T, Option<Place>)> {
        let (file, e) = self.locate(cid, None)?;
        let seg = self.segment(file, e.seg)?;
        let data = car::block_at(&seg, &e)
            .map_err(|x| Error::format(format!("file {}, block {cid}", file.name), x))?;
        let n = decode(data).map_err(|e| self.corrupt_cid(cid, e.0))?;
        let at = Some(Place {
            file: file.name,
            seg: e.seg,
        });
        self.near.set(at);
        Ok((n, at))
    }
}

#[cfg(test)]
thread_local! {
    /// Events this thread decoded (not found in the cache): what tests count to tell a walk of
    /// the clock from a lookup.
    pub(super) static EVENTS_DECODED: Cell<u64> = const { Cell::new(0) };
}

impl EventSource for View<'_> {
    type Error = Error;
    /// An event; a cut event (its history dropped) comes without parents, so every walk stops
    /// there.
    fn event(&self, cid: &Cid) -> Result<Arc<Event>> {
        self.event_in(cid, None)
    }
}

impl View<'_> {
    /// [`EventSource::event`], from where the caller knows it is (file `f`, entry `e`, as a
    /// file's own entries list it) or else found by [`View::locate`].
    pub(super) fn event_in(
        &self,
        cid: &Cid,
        at: Option<(&FileRef, &car::Entry)>,
    ) -> Result<Arc<Event>> {
        let key = CacheKey::Event(self.db.lineage, *cid);
        let e = match self.db.store.cache.get(&key) {
            Some(Cached::Event(e)) => e,
            _ => {
                #[cfg(test)]
                EVENTS_DECODED.with(|n| n.set(n.get() + 1));
                let decode = |b: &[u8]| Event::decode(b).map_err(|e| self.corrupt_cid(cid, e.0));
                let e = Arc::new(match at {
                    Some((f, entry)) => {
                        let seg = self.segment(f, entry.seg)?;
                        decode(car::block_at(&seg, entry).map_err(|x| {
                            Error::format(format!("file {}, block {cid}", f.name), x)
                        })?)?
                    }
                    None => self.with_block(cid, None, decode)?,
                });
                self.db.store.cache.insert(key, Cached::Event(e.clone()));
                e
            }
        };
        if self.head.cut.is_empty() || self.head.cut_root(cid).is_none() {
            return Ok(e);
        }
        Ok(Arc::new(Event {
            parents: Vec::new(),
            ..(*e).clone()
        }))
    }
}

impl Db {
    /// Reads the head record and the commit counter it is current for.
    pub(super) fn read_head(&self) -> Result<((Head, Log), Option<u64>)> {
        let hp = self.dir.join("HEAD");
        read_head_with(&self.lock, &hp, &self.name, |b| {
            Head::open_log(b, &self.key).map_err(|e| Error::format(hp.display().to_string(), e))
        })
    }

    /// The current state, re-reading the head record only if a commit happened since.
    pub(super) fn refresh(&self) -> Result<Arc<State>> {
        let c = self.counter()?;
        if c[0] == DROPPED {
            // Dropped, or a drop killed before its commit point (then taken back here, as
            // an open would). Under this handle's writer mutex: the writer lock is this
            // handle's file's, which a drop through this handle may hold.
            let _w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
            let o = &self.store.opts;
            recover_unfinished_drop(&self.lock, &self.name, o.lock_timeout, o.read_only)?;
            return self.reload();
        }
        let st = self.state();
        if c[0] == c[1] && st.stamp == Some(c[1]) {
            return Ok(st);
        }
        self.reload()
    }

    pub(super) fn reload(&self) -> Result<Arc<State>> {
        let ((head, log), stamp) = self.read_head()?;
        Ok(self.set_state(head, stamp, log))
    }

    /// Runs a read on the current state. A file that a concurrent compaction removed (gone, or
    /// its space already reused so it fails its checks) makes it re-read the head record and
    /// retry; damage under an unchanged head record is reported as corruption.
    pub(super) fn read<T>(&self, mut f: impl FnMut(&View) -> Result<T>) -> Result<T> {
        let mut st = self.refresh()?;
        let mut tries = 0;
        loop {
            match self
                .ensure_tree(&st.head)
                .and_then(|()| f(&View::new(self, &st.head)))
            {
                Err(e) if e.is_corruption() && tries < 3 => {
                    let fresh = self.reload()?;
                    if fresh.head == st.head {
                        return Err(e);
                    }
                    st = fresh;
                    tries += 1;
                }
                r => return r,
            }
        }
    }

    /// Every index entry of a file, in file order.
    pub(super) fn file_entries(&self, v: &View, f: &FileRef) -> Result<Vec<car::Entry>> {
        let idx = self.index(f)?;
        let mut entries = idx.entries.clone();
        for p in 0..idx.pages.len() {
            let page = v.page(&f.name, &idx, p)?;
            entries.extend(
                page.entries(idx.segs.len())
                    .map_err(|e| Error::format(format!("file {}", f.name), e))?,
            );
        }
        entries.sort_by_key(|e| (e.seg, e.off));
        Ok(entries)
    }

    /// A state to diff: the current one, or the one at event `at` (its own tree when still
    /// stored, else built from its history).
    pub(super) fn point<'a>(
        &'a self,
        head: &'a Head,
        at: Option<&Cid>,
        build: bool,
    ) -> Result<Point<'a>> {
        let view = View::new(self, head);
        let Some(e) = at else {
            self.ensure_tree(head)?;
            return Ok(Point {
                view,
                root: head.root,
                built: DigestMap::default(),
            });
        };
        let ev = view.given_event(e)?;
        if !build {
            return Ok(Point {
                view,
                root: ev.root,
                built: DigestMap::default(),
            });
        }
        let u = self.state_at(&view, e, &ev)?;
        Ok(Point {
            root: u.root,
            built: u.blocks.into_iter().map(|(c, _, n)| (c, n)).collect(),
            view,
        })
    }
}
