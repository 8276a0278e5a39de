//! The commit pipeline: documents prepared (on two threads for large batches), the writer lock
//! and the LOCK counter, the tree update and the event, the diff file, inline compaction, and the
//! head record written (a delta appended, or a fresh snapshot).

use super::*;

/// A pending write: the id and the stored body with its CID, or `None` for a delete. (Of a
/// large bulk the bodies lie in the batch's runs instead, and these are left empty.)
pub(super) type Write = (String, Option<(Cid, Vec<u8>)>);

/// Validates and encodes the documents of a write (at least one), with their CIDs. A large
/// batch is encoded on two threads straight into file segments ([`car::Run`]s, one per thread;
/// the writes' bodies are then left empty); the error reported is the first bad document's, as
/// in a sequential pass.
pub(super) fn prepare_all<T: Sync>(
    docs: &[T],
    prepare: impl Fn(&T) -> Result<(String, Vec<u8>)> + Sync,
    storage: &crate::storage::LocalStorage,
) -> Result<Prepared> {
    if docs.is_empty() {
        return Err(Error::InvalidArgument(
            "bulk needs at least one document".into(),
        ));
    }
    // (On one core the helper is absent and `map_chunks` takes every chunk on this thread: the
    // runs still spare the bodies' copies.)
    if docs.len() < PARALLEL_DOCS {
        let writes = docs
            .iter()
            .map(|d| prepare(d).map(write_of))
            .collect::<Result<_>>()?;
        return Ok(Prepared::of(writes));
    }
    // What a sequential pass would give: the first failing document in order decides, be it
    // an error or a panic; chunks after a known failure are skipped.
    let failed = AtomicUsize::new(usize::MAX);
    let begun = AtomicBool::new(false);
    let (parts, states) = crate::util::par::map_chunks(
        docs,
        PREPARE_CHUNK,
        // One of the two threads also begins the file the runs will go to (a rename and an
        // open: the work is shared out all the same).
        || {
            // (One that cannot be begun is begun again, or the file stored whole, at the end.)
            let pending = (!begun.swap(true, Ordering::Relaxed))
                .then(|| storage.begin().ok())
                .flatten();
            (car::Run::with_capacity(0, 0), pending)
        },
        |(run, _), i, part| {
            if i > failed.load(Ordering::Relaxed) {
                return None;
            }
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let mut writes = Vec::with_capacity(part.len());
                let mut refs = Vec::new();
                for d in part {
                    let (id, body) = prepare(d)?;
                    if run.is_empty() {
                        // About this thread's share of the batch if documents are alike, but
                        // not more than RUN_RESERVE (a large first one says little).
                        let share = docs.len() / 2 + 16;
                        let bytes = (body.len() + 48).saturating_mul(share).min(RUN_RESERVE);
                        run.reserve(bytes, share);
                    }
                    let cid = Cid::of_cbor(&body);
                    // (The body goes into the run: the file-sets it names are noted here.)
                    refs.extend(
                        doc::files::sets_of_body(&body)
                            .into_iter()
                            .map(|s| (cid, FileName(s))),
                    );
                    run.add(cid, &body);
                    writes.push((id, Some((cid, Vec::new()))));
                }
                Ok((writes, refs))
            }));
            if !matches!(r, Ok(Ok(_))) {
                failed.fetch_min(i, Ordering::Relaxed);
            }
            Some(r)
        },
    );
    let mut out = Vec::with_capacity(docs.len());
    let mut file_refs = Vec::new();
    for part in parts {
        match part {
            Some(Ok(Ok((v, r)))) => {
                out.extend(v);
                file_refs.extend(r);
            }
            Some(Ok(Err(e))) => return Err(e),
            Some(Err(p)) => std::panic::resume_unwind(p),
            None => unreachable!("a chunk is skipped only after an earlier one failed"),
        }
    }
    let [(run_a, pa), (run_b, pb)] = states;
    Ok(Prepared {
        writes: out,
        runs: vec![run_a, run_b],
        pending: pa.or(pb),
        deletes_need_live: false,
        expect: Vec::new(),
        file_refs,
    })
}

/// What a commit is asked to do: its writes, and on which state and with what record.
pub(super) struct CommitRequest<'a> {
    /// The writes, prepared.
    pub(super) batch: Prepared,
    /// A transaction's base: when other commits landed since it was read, the commit becomes
    /// a concurrent branch on it. `None`: on the latest head (linear history).
    pub(super) base: Option<&'a Head>,
    /// A purge of this id: the event lists its stored versions (see `Database::purge`).
    pub(super) purge: Option<&'a str>,
    /// `merge --only`: the source database's heads, recorded in the event.
    pub(super) source: Vec<Cid>,
    /// Who did what and why (an accepted proposal), recorded in the event.
    pub(super) note: &'a str,
    /// The event commits to its own state's root (false: its base is no tree's, an
    /// importer's branch on several events).
    pub(super) own_root: bool,
}

impl CommitRequest<'_> {
    /// An ordinary commit of `batch` on the latest head.
    pub(super) fn of(batch: Prepared) -> CommitRequest<'static> {
        CommitRequest {
            batch,
            base: None,
            purge: None,
            source: Vec::new(),
            note: "",
            own_root: true,
        }
    }
}

/// What a commit did: its result, and whether a background compaction is wanted.
pub(super) struct CommitOutcome {
    pub(super) committed: Committed,
    pub(super) wants_background: bool,
}

/// A commit's writes ([`prepare_all`]'s result), and for a large batch its runs (the bodies)
/// and the file begun for them.
pub(super) struct Prepared {
    pub(super) writes: Vec<Write>,
    pub(super) runs: Vec<car::Run>,
    pub(super) pending: Option<crate::storage::Pending>,
    /// A delete of an id without a live document fails the commit ([`Error::NoSuchDocument`],
    /// checked under the writer lock) instead of recording it.
    pub(super) deletes_need_live: bool,
    /// Versions the written ids must be at (`None`: no live document) for the commit to go
    /// ahead, checked under the writer lock ([`Error::Conflict`] otherwise).
    pub(super) expect: Vec<(String, Option<Rev>)>,
    /// The file-sets the bodies in `runs` name (the writes' own bodies are empty then).
    pub(super) file_refs: Vec<(Cid, FileName)>,
}

impl Prepared {
    /// Writes that carry their bodies.
    pub(super) fn of(writes: Vec<Write>) -> Prepared {
        Prepared {
            writes,
            runs: Vec::new(),
            pending: None,
            deletes_need_live: false,
            expect: Vec::new(),
            file_refs: Vec::new(),
        }
    }
}

/// A prepared document as a write: its id, body and the body's CID.
pub(super) fn write_of((id, body): (String, Vec<u8>)) -> Write {
    (id, Some((Cid::of_cbor(&body), body)))
}

/// What [`Db::commit`] builds of a transaction before its file: the new state's tree, the
/// live document count, the event with its bytes and CID.
pub(super) struct Built {
    pub(super) state: tree::Update,
    pub(super) docs: i64,
    pub(super) event: Event,
    pub(super) eb: Vec<u8>,
    pub(super) ecid: Cid,
}

/// Batches at least this large are prepared on two threads.
pub(super) const PARALLEL_DOCS: usize = 128;

/// Documents a thread takes at a time when a batch is prepared on two threads.
pub(super) const PREPARE_CHUNK: usize = 64;

/// Most bytes a run reserves up front (it grows as any buffer beyond).
pub(super) const RUN_RESERVE: usize = 8 << 20;

/// What a handle's writer keeps between commits.
#[derive(Debug)]
pub(super) struct Writer {
    pub(super) head_file: HeadFile,
    /// The counter value this handle's last head-record write ended with.
    pub(super) last: Option<u64>,
}

impl Database {
    /// Writes (replaces) one document. A document without `_id` gets a UUIDv7.
    ///
    /// The document is any `Serialize` value that serializes as an object: a
    /// `serde_json::Value`, or a program's own struct, encoded straight into the stored form
    /// with serde_json's value model (it is stored as `serde_json::to_value` of it would be).
    pub fn put<T: Serialize + ?Sized>(&self, doc: &T) -> Result<Committed> {
        let writes = vec![write_of(doc::prepare_serialize(doc)?)];
        self.finish(self.inner.commit(CommitRequest::of(Prepared::of(writes)))?)
    }

    /// Writes many documents in one transaction (one event, one diff file). If an id repeats,
    /// the last one wins. Documents as for [`Database::put`].
    pub fn bulk<T: Serialize + Sync>(&self, docs: &[T]) -> Result<Committed> {
        self.bulk_with(docs, |d| doc::prepare_serialize(d))
    }

    /// A bulk of documents `prepare` validates and encodes. A large one begins its file while
    /// its documents are encoded, in `files/.tmp/`, which garbage collection empties: from
    /// then until it commits, garbage collection waits (the store's gc lock is held shared).
    pub(super) fn bulk_with<T: Sync>(
        &self,
        docs: &[T],
        prepare: impl Fn(&T) -> Result<(String, Vec<u8>)> + Sync,
    ) -> Result<Committed> {
        let _gc = if docs.len() >= PARALLEL_DOCS {
            Some(self.inner.store.gc_shared()?)
        } else {
            None
        };
        let p = prepare_all(docs, prepare, &self.inner.store.storage)?;
        let c = self.inner.commit(CommitRequest::of(p))?;
        // (Released first: finishing an interrupted purge runs gc, which waits for it.)
        drop(_gc);
        self.finish(c)
    }

    /// [`Database::put`] for a document given as JSON text: it is parsed straight into its
    /// stored form (no `serde_json::Value` in between), with the same rules and the same
    /// result as `put` of the parsed value.
    pub fn put_json(&self, text: &str) -> Result<Committed> {
        self.bulk_json(&[text])
    }

    /// [`Database::bulk`] for documents given as JSON text (see [`Database::put_json`]).
    pub fn bulk_json<S: AsRef<str> + Sync>(&self, docs: &[S]) -> Result<Committed> {
        self.bulk_with(docs, |d| doc::prepare_json(d.as_ref()))
    }

    /// Writes (replaces) one document only if it is still at version `expected` (what
    /// [`Database::rev`] or [`Database::get_with_rev`] gave when it was read; `None`: only if
    /// it does not exist): a compare-and-swap. Checked under the writer lock against the
    /// latest state; another write in between makes it [`Error::Conflict`] and nothing is
    /// written (read again, apply the change, retry).
    ///
    /// ```
    /// # fn main() -> kiln::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let db = kiln::Store::open(dir.path())?.create(Some("c"))?;
    /// use serde_json::json;
    /// db.put_if(&json!({"_id": "n", "count": 1}), None)?;          // only if absent
    /// let (doc, rev) = db.get_with_rev("n")?.unwrap();
    /// db.put(&json!({"_id": "n", "count": 5}))?;                    // someone else's write
    /// let stale = db.put_if(&json!({"_id": "n", "count": doc["count"].as_i64().unwrap() + 1}), Some(&rev));
    /// assert!(matches!(stale, Err(kiln::Error::Conflict(_))));
    /// let (_, rev) = db.get_with_rev("n")?.unwrap();
    /// db.put_if(&json!({"_id": "n", "count": 6}), Some(&rev))?;
    /// # Ok(()) }
    /// ```
    pub fn put_if<T: Serialize + ?Sized>(
        &self,
        doc: &T,
        expected: Option<&Rev>,
    ) -> Result<Committed> {
        let w = write_of(doc::prepare_serialize(doc)?);
        let mut p = Prepared::of(Vec::new());
        p.expect = vec![(w.0.clone(), expected.copied())];
        p.writes = vec![w];
        self.finish(self.inner.commit(CommitRequest::of(p))?)
    }

    /// [`Database::put_if`] for a document given as JSON text (see [`Database::put_json`]).
    pub fn put_json_if(&self, text: &str, expected: Option<&Rev>) -> Result<Committed> {
        let w = write_of(doc::prepare_json(text)?);
        let mut p = Prepared::of(Vec::new());
        p.expect = vec![(w.0.clone(), expected.copied())];
        p.writes = vec![w];
        self.finish(self.inner.commit(CommitRequest::of(p))?)
    }

    /// [`Database::del`] only if the document is still at version `expected` (see
    /// [`Database::put_if`]).
    pub fn del_if(&self, id: &str, expected: &Rev) -> Result<Committed> {
        doc::check_id(id)?;
        let mut p = Prepared::of(vec![(id.to_owned(), None)]);
        p.expect = vec![(id.to_owned(), Some(*expected))];
        self.finish(self.inner.commit(CommitRequest::of(p))?)
    }

    /// Deletes a document (writes a tombstone). An id without a live document (never written,
    /// or already deleted) is [`Error::NoSuchDocument`], and nothing is written. (A
    /// [`Transaction::del`] records a delete whatever the id holds.)
    pub fn del(&self, id: &str) -> Result<Committed> {
        doc::check_id(id)?;
        let mut p = Prepared::of(vec![(id.to_owned(), None)]);
        p.deletes_need_live = true;
        self.finish(self.inner.commit(CommitRequest::of(p))?)
    }

    /// Starts a background compaction after a commit that wants one (one at a time per handle).
    pub(super) fn finish(&self, outcome: CommitOutcome) -> Result<Committed> {
        let CommitOutcome {
            committed: c,
            wants_background: wanted,
        } = outcome;
        if self.inner.state().head.scrub {
            // Another handle's purge did not finish (a crash): finish it now. The commit is
            // done whatever comes of that: what stays unfinished, the next open, write or gc
            // tries again (and `verify` and gc report).
            self.finish_purge_soon();
        }
        if wanted && !self.inner.compacting.swap(true, Ordering::SeqCst) {
            let db = self.inner.clone();
            let spawned = std::thread::Builder::new()
                .name("kiln-compact".into())
                .spawn(move || {
                    // Errors surface through `compact` and `verify`; commits never wait on this.
                    let _ = db.compact_background();
                    db.compacting.store(false, Ordering::SeqCst);
                });
            match spawned {
                Ok(h) => {
                    let mut slot = self
                        .inner
                        .compactor
                        .lock()
                        .unwrap_or_else(|p| p.into_inner());
                    // The thread before has done its work (`compacting` was false) and ends
                    // at once: joined, not left running unwatched.
                    if let Some(before) = slot.replace(h) {
                        let _ = before.join();
                    }
                }
                Err(_) => self.inner.compacting.store(false, Ordering::SeqCst),
            }
        }
        Ok(c)
    }
}

impl Database {
    /// Makes every commit made so far durable, through any handle of the store
    /// ([`Durability::Buffered`] commits then survive a power cut too): flushes the file system
    /// the store is on (`syncfs`). A `Full` handle's commits are durable already.
    pub fn sync(&self) -> Result<()> {
        crate::storage::sync_file_system(&self.inner.store.root)
            .map_err(|e| Error::io(&self.inner.store.root, e))
    }

    /// Finishes this handle's work and lets it go: waits for the merge its background
    /// compaction is doing, then makes its commits durable ([`Database::sync`]). (Dropping
    /// the last handle also waits for the merge, but cannot report an error. The store may
    /// keep the database open to hand it out again: see `Options::open_databases`.)
    pub fn close(self) -> Result<()> {
        self.inner.wait_for_compactor();
        self.inner.closing.store(false, Ordering::SeqCst);
        self.sync()
    }
}

impl Drop for Database {
    /// The last handle of a database waits for its background compaction to finish the merge
    /// it is doing (it starts no other), so a program that drops its handles and exits leaves
    /// no half-written file behind and no work done for nothing.
    fn drop(&mut self) {
        if self.inner.handles.fetch_sub(1, Ordering::SeqCst) != 1 {
            return; // another handle is left
        }
        self.inner.wait_for_compactor();
    }
}

impl Db {
    /// Waits for the merge this handle's background compaction is doing (marking the handle
    /// closing, so it starts no other).
    fn wait_for_compactor(&self) {
        let h = self
            .compactor
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(h) = h {
            self.closing.store(true, Ordering::SeqCst);
            let _ = h.join();
        }
    }

    /// The commit counter in LOCK: `[begin, end]`; equal when no commit is in flight.
    pub(super) fn counter(&self) -> Result<[u64; 2]> {
        self.lock
            .counter()
            .map_err(|e| Error::io(self.lock.path(), e))
    }

    pub(super) fn set_counter(&self, c: [u64; 2]) -> Result<()> {
        self.lock
            .set_counter(c)
            .map_err(|e| Error::io(self.lock.path(), e))
    }

    /// Takes the cross-process writer lock, waiting up to [`options::Options::lock_timeout`].
    pub(super) fn acquire(&self) -> Result<()> {
        match self.lock.lock(self.store.opts.lock_timeout) {
            Ok(true) => Ok(()),
            Ok(false) => Err(Error::Busy(self.name.clone())),
            Err(e) => Err(Error::io(self.lock.path(), e)),
        }
    }

    /// Runs `f` holding the writer lock on the latest head; `f` edits the head and returns files
    /// to delete once the new head is durable. The head record is written only if `f` changed it.
    pub(super) fn with_lock<T>(
        &self,
        f: impl FnOnce(&Db, &mut Head) -> Result<(T, Vec<FileName>)>,
    ) -> Result<T> {
        self.check_poisoned()?;
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let _gc = self.store.gc_shared()?;
        self.acquire()?;
        let r = (|| {
            let mut c = self.counter()?;
            if c[0] == DROPPED {
                // Dropped (the folder is gone), or a drop killed before its commit point,
                // whose mark is taken back here as an open would.
                take_back_drop_mark(&self.lock, &self.name)?;
                c = self.counter()?;
            }
            let st = self.state();
            let (cur, log) = if c[0] == c[1] && st.stamp == Some(c[1]) {
                (st.head.clone(), st.log.clone())
            } else {
                self.read_head()?.0
            };
            let mut head = cur.clone();
            let r = f(self, &mut head);
            // (A file the commit left for the head record to carry, if any: unreferenced when
            // `f` failed, like any file of a failed commit.)
            let carried = self
                .carried
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            let (out, remove) = r?;
            if head.purged.len() > cur.purged.len()
                || (head.purged != cur.purged
                    && head
                        .purged
                        .iter()
                        .any(|c| cur.purged.binary_search(c).is_err()))
            {
                // Purged versions may still be stored (the purge's own history, or a merge
                // that brought another database's purge): finished after this commit.
                head.scrub = true;
            }
            if head != cur {
                head.seq = cur.seq + 1;
                let n = c[0].max(c[1]) + 1;
                let log = match self.write_head(&mut w, (&cur, &log), &head, c, n, carried) {
                    Ok(log) => log,
                    Err(e) => {
                        self.poison(&e);
                        return Err(e);
                    }
                };
                if cur.scrub && !head.scrub {
                    // A purge finished: the previous head record (`HEAD.next`) may carry
                    // small diffs holding purged versions.
                    if let Err(e) = w.head_file.clear_spare(self.sync()) {
                        let e = Error::io(self.dir.join("HEAD.next"), e);
                        self.poison(&e);
                        return Err(e);
                    }
                }
                let new_base = head.base != cur.base;
                let st = self.set_state(head, Some(n), log);
                if new_base {
                    // The base tree is in files now. Only now that the head naming them is
                    // written: a reader still on the old head keeps finding its nodes until
                    // it sees the new one. Anything still needed later is rebuilt.
                    self.prune_pending(st.head.root, st.head.base);
                }
                // Forks share files: then only garbage collection, which reads every
                // database's head record, may take them away.
                let remove = if !remove.is_empty() && self.store.keybag.is_shared(&self.lineage) {
                    Vec::new()
                } else {
                    remove
                };
                let archive =
                    !remove.is_empty() && self.store.settings().keep_archive.unwrap_or(false);
                for f in remove {
                    // The new head no longer names these; readers holding the old head retry.
                    let _ = if archive {
                        self.store.storage.archive(&f)
                    } else {
                        self.store.storage.retire(&f)
                    };
                    self.indexes
                        .write()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&f);
                }
            }
            Ok(out)
        })();
        self.lock.unlock();
        r
    }

    /// Writes `head` as commit `n` over `prev` (stored as `log`): a delta appended to the head
    /// file when it can be, else a fresh snapshot. `old` is the counter read under the lock.
    ///
    /// `carried` is a fully durable commit's small diff file, written but not synced: it goes
    /// into the log as a file record right before the delta, and the one flush of the log makes
    /// both durable. When the log cannot take it, the file is synced where it is first. Before
    /// a snapshot drops the log's file records, the files they hold that are still live are
    /// synced.
    pub(super) fn write_head(
        &self,
        w: &mut Writer,
        (prev, log): (&Head, &Log),
        head: &Head,
        old: [u64; 2],
        n: u64,
        carried: Option<(FileName, Vec<u8>)>,
    ) -> Result<Log> {
        let hp = self.dir.join("HEAD");
        let io = |e| Error::io(&hp, e);
        let mut file_rec = None;
        let mut delta = None;
        if let Some((name, bytes)) = carried.as_ref().filter(|c| log.can_hold_file(c.1.len())) {
            let rec =
                Head::seal_file_record(name, bytes, log, &self.lineage, &self.key).map_err(io)?;
            let after = Log {
                end: log.end + rec.len() as u64,
                file_bytes: log.file_bytes + rec.len() as u64,
                ..log.clone()
            };
            delta = head
                .seal_delta(prev, &after, &self.lineage, &self.key)
                .map_err(io)?;
            if delta.is_some() {
                file_rec = Some((*name, rec));
            }
        }
        if file_rec.is_none() {
            if let Some((name, _)) = &carried {
                self.sync_file(name)?;
            }
            delta = head
                .seal_delta(prev, log, &self.lineage, &self.key)
                .map_err(io)?;
        }
        if delta.is_none() {
            // Whatever this handle's durability: the copies may be a fully durable commit's.
            self.secure_carried(log, head)?;
        }
        // begin=n first: a crash from here on makes every process re-read the head record.
        // (Both halves written: a LOCK shorter than 16 bytes reads as [0, 0].)
        self.set_counter([n, old[1]])?;
        // The files kept open are still HEAD and HEAD.next only if nobody else wrote since.
        let trusted = old[0] == old[1] && w.last == Some(old[1]);
        w.last = None;
        let new_log = match delta {
            Some(rec) => {
                let mut next = log.clone();
                let rec = match file_rec {
                    Some((name, mut both)) => {
                        next.file_bytes += both.len() as u64;
                        next.files.push(name);
                        both.extend_from_slice(&rec);
                        both
                    }
                    None => rec,
                };
                next.end = log.end + rec.len() as u64;
                next.len = next.end;
                next.deltas += 1;
                w.head_file
                    .append(&rec, log.end, log.len, self.sync(), trusted)
                    .map_err(io)?;
                next
            }
            None => {
                let bytes = head.seal(&self.lineage, &self.key).map_err(io)?;
                // Replacing a log that carries files: durably also for a Buffered writer, or
                // a power cut could roll back the Full commits that log holds.
                let sync = self.sync() || !log.files.is_empty();
                w.head_file.replace(&bytes, sync, trusted).map_err(io)?;
                Log::fresh(&bytes)
            }
        };
        self.set_counter([n, n])?;
        w.last = Some(n);
        Ok(new_log)
    }

    /// Commits; the flag says a background compaction is wanted.
    pub(super) fn commit(&self, req: CommitRequest) -> Result<CommitOutcome> {
        let CommitRequest {
            batch,
            base,
            purge: purge_id,
            source,
            note,
            own_root: commits_root,
        } = req;
        let Prepared {
            writes,
            runs,
            pending,
            deletes_need_live,
            expect,
            file_refs,
        } = batch;
        // Let a finished background compaction swap its result in first (bounded wait).
        let t = std::time::Instant::now();
        while self.swap_waiting.load(Ordering::SeqCst)
            && t.elapsed() < std::time::Duration::from_millis(50)
        {
            std::thread::yield_now();
        }
        // Ops sorted by id; of an id written more than once the last write wins. (Sorted by
        // reference: the writes keep their order and their ids for `Committed::ids`.)
        let mut order: Vec<usize> = (0..writes.len()).collect();
        order.sort_unstable_by(|&a, &b| {
            writes[a]
                .0
                .as_bytes()
                .cmp(writes[b].0.as_bytes())
                .then(b.cmp(&a))
        });
        order.dedup_by(|later, kept| writes[*later].0 == writes[*kept].0);
        let sorted: Vec<&Write> = order.iter().map(|&i| &writes[i]).collect();
        // A batch's runs go into the file as they are when they hold exactly its blocks, each
        // once: they are sealed on the helper thread while this one builds the tree. (A repeated
        // id leaves an overwritten body in them; a repeated CID, a block twice.)
        let whole_runs = !runs.is_empty() && sorted.len() == writes.len();
        let (mut c, wanted) = self.with_lock(|db, head| {
            db.ensure_tree(head)?;
            let cur = head.clone();
            // A transaction whose base is still current is an ordinary linear commit.
            let base = base.filter(|b| b.heads != cur.heads);
            let (base_heads, base_root) = match base {
                Some(b) => (b.heads.clone(), b.root),
                None => (cur.heads.clone(), cur.root),
            };
            let v = View::new(db, &cur);
            let mut height = 0;
            for h in &base_heads {
                height = height.max(v.event(h)?.height);
            }
            height += 1;
            let build = || -> Result<Built> {
                let ops: Vec<tree::Op> = sorted
                    .iter()
                    .map(|(id, w)| {
                        (
                            id.as_bytes().into(),
                            Some(Slot {
                                version: height,
                                link: w.as_ref().map(|x| x.0),
                            }),
                        )
                    })
                    .collect();
                let merged = if base.is_some() {
                    Some(tree::update(
                        &v,
                        cur.root.as_ref(),
                        &ops,
                        Mode::Max,
                        cur.shape,
                    )?)
                } else {
                    None
                };
                // The event's own state: its base plus its writes. A base older than a
                // compaction may have lost its tree (only the current tree is kept); the event
                // then carries no root commitment and reads at it replay the clock instead.
                // (An importer's event on several events that are not the heads commits to
                // no root: no tree stands for its base.)
                let own = if !commits_root && merged.is_some() {
                    None
                } else {
                    match tree::update(&v, base_root.as_ref(), &ops, Mode::Max, cur.shape) {
                        Ok(u) => Some(u),
                        Err(Error::MissingBlock(..)) if merged.is_some() => None,
                        Err(e) => return Err(e),
                    }
                };
                let own_root = own.as_ref().and_then(|u| u.root);
                let state = match (merged, own) {
                    (Some(m), _) | (None, Some(m)) => m,
                    (None, None) => {
                        return Err(Error::corrupt(db.name.clone(), "no tree to commit on"))
                    }
                };
                if deletes_need_live {
                    let ids: Vec<String> = sorted
                        .iter()
                        .enumerate()
                        .filter(|(i, (_, w))| {
                            let prev = state.previous.get(*i).copied().flatten();
                            w.is_none() && prev.is_none_or(|p| p.link.is_none())
                        })
                        .map(|(_, (id, _))| id.clone())
                        .collect();
                    if !ids.is_empty() {
                        return Err(Error::NoSuchDocument {
                            db: db.name.clone(),
                            ids,
                        });
                    }
                }
                for (id, want) in &expect {
                    let at = sorted
                        .binary_search_by(|(k, _)| k.as_bytes().cmp(id.as_bytes()))
                        .ok()
                        .and_then(|i| state.previous.get(i).copied().flatten());
                    let now = at.and_then(Rev::of);
                    if now != *want {
                        return Err(Error::Conflict(Box::new(crate::error::WriteConflict {
                            db: db.name.clone(),
                            id: id.clone(),
                            expected: *want,
                            actual: now,
                        })));
                    }
                }
                let docs = cur.docs as i64 + tree::live_delta(&ops, &state.previous);
                let mut parents = base_heads.clone();
                parents.sort();
                let purge = match purge_id {
                    Some(id) => db.versions_to_purge(&v, &cur, id)?,
                    None => Vec::new(),
                };
                // A purge of an id with no live document and no stored version (never
                // written, or purged already) has nothing to do: nothing is written.
                let live = |i: usize| {
                    state
                        .previous
                        .get(i)
                        .copied()
                        .flatten()
                        .is_some_and(|p| p.link.is_some())
                };
                if let Some(id) = purge_id.filter(|_| purge.is_empty() && !live(0)) {
                    return Err(Error::NoSuchDocument {
                        db: db.name.clone(),
                        ids: vec![id.to_owned()],
                    });
                }
                // A commit on several heads joins them (a transaction begun on several heads
                // too, even when it lands late): the values concurrent transactions lost are
                // recorded as a merge records them (see `concurrent`), but for the ids this
                // commit writes, which it settles.
                let conflicts = if base_heads.len() > 1 {
                    concurrent::open_conflicts(&v, &base_heads)?
                        .into_iter()
                        .filter(|(id, _)| {
                            sorted
                                .binary_search_by(|(k, _)| k.as_bytes().cmp(id.as_bytes()))
                                .is_err()
                        })
                        .collect()
                } else {
                    Vec::new()
                };
                // Encoded from the writes; its ops for the cache come later (see below).
                let event = Event {
                    parents,
                    height,
                    time: now_ms(),
                    ops: Vec::new(),
                    root: own_root,
                    purge,
                    conflicts,
                    source: source.clone(),
                    note: note.to_owned(),
                };
                let ops = sorted
                    .iter()
                    .map(|(id, w)| (id.as_str(), w.as_ref().map(|x| &x.0)));
                let eb = event.encode_ops(sorted.len(), ops);
                let ecid = Cid::of_cbor(&eb);
                Ok(Built {
                    state,
                    docs,
                    event,
                    eb,
                    ecid,
                })
            };
            // The file's runs are sealed and written on the helper meanwhile, into a file named
            // once it is whole.
            let early;
            let (built, runs) = if whole_runs {
                let key = &db.key;
                let storage = &db.store.storage;
                let at = car::runs_offset();
                let durable = db.sync();
                let (b, r) = crate::util::par::join(build, || {
                    // (Without a file begun, the runs are stored with the rest at the end.)
                    let pending = pending.or_else(|| storage.begin().ok());
                    let r = car::seal_runs(key, runs, FILE_CACHE_MAX)?;
                    let mut runs_at = None;
                    if let (Ok(sealed), Some(p)) = (&r, &pending) {
                        let mut off = at;
                        for b in sealed.bytes() {
                            p.write_at(b, off)?;
                            off += b.len() as u64;
                        }
                        if durable {
                            p.start_writeback(at, off - at);
                        }
                        runs_at = Some(at);
                    }
                    std::io::Result::Ok((r, pending.map(|p| (p, runs_at))))
                });
                let (r, e) = r.map_err(|e| Error::io(db.store.root.join("files"), e))?;
                early = e;
                (b?, r)
            } else {
                // (A file begun for runs that are not used as they are takes the file whole.)
                early = pending.map(|p| (p, None));
                (build()?, Err(runs))
            };
            let Built {
                state,
                docs,
                event,
                eb,
                ecid,
            } = built;
            let purge = event.purge.clone();
            // The file is built in the handle's reused buffer, with room for the documents
            // (unless they are in runs), their sections, the event and (for a checkpoint) about
            // one tree node per eight documents.
            let blocks = sorted.len() + sorted.len() / 8 + 2;
            let checkpoint = sorted.len() >= CHECKPOINT_OPS;
            // The runs' share of the file's name is hashed on the helper meanwhile.
            let shared = runs.as_ref().ok().map(car::SealedRuns::shared);
            let make = || -> Result<car::Finished> {
                let mut buf = db.take_file_buf();
                let bodies: usize = match &runs {
                    Ok(_) => 0,
                    Err(r) if !r.is_empty() => r.iter().map(car::Run::byte_len).sum(),
                    Err(_) => sorted
                        .iter()
                        .filter_map(|(_, x)| x.as_ref().map(|(_, b)| b.len()))
                        .sum(),
                };
                let want =
                    bodies + eb.len() + blocks * (crate::format::block::cid::CID_LEN + 64) + 4096;
                if buf.capacity() < want {
                    // With a margin: the next transaction's estimate is rarely exactly the same.
                    buf.reserve_exact(want + want / 4);
                }
                let meta = car::Meta {
                    level: 0,
                    time: event.time,
                    roots: vec![ecid],
                    replaces: vec![],
                };
                let mut w = match runs {
                    Ok(sealed) => car::Writer::with_runs(meta, blocks - sorted.len(), buf, sealed),
                    Err(runs) => {
                        let mut w = car::Writer::with_capacity(meta, blocks, buf);
                        if runs.is_empty() {
                            for (_, x) in &sorted {
                                if let Some((c, body)) = x {
                                    w.add(*c, body);
                                }
                            }
                        } else {
                            // Only the bodies of the writes that count (the writer adds a CID once).
                            let wanted: DigestSet<Cid> = sorted
                                .iter()
                                .filter_map(|(_, x)| Some(x.as_ref()?.0))
                                .collect();
                            for r in &runs {
                                for (c, body) in r.blocks() {
                                    if wanted.contains(&c) {
                                        w.add(c, body);
                                    }
                                }
                            }
                        }
                        w
                    }
                };
                // A large transaction writes the state's tree with it (its new nodes and the pending
                // ones it still uses), so the tree is whole in files again (a *checkpoint*): its
                // nodes cost little next to its documents, and it bounds what another handle must
                // replay. A small one leaves its new nodes in memory until the level-0 compaction
                // writes them (an event's own tree, when it differs from the state, is not kept: a
                // read at that event replays the clock).
                if checkpoint {
                    db.write_tree(&mut w, &state)?;
                }
                // The file-sets the new versions name (garbage collection keeps them): from
                // the bodies, or noted as a large batch's were encoded into its runs.
                for (c, body) in sorted.iter().filter_map(|(_, x)| x.as_ref()) {
                    for set in doc::files::sets_of_body(body) {
                        w.add_file_ref(*c, FileName(set));
                    }
                }
                if !file_refs.is_empty() {
                    let written: DigestSet<Cid> = sorted
                        .iter()
                        .filter_map(|(_, x)| Some(x.as_ref()?.0))
                        .collect();
                    for (c, set) in file_refs.iter().filter(|(c, _)| written.contains(c)) {
                        w.add_file_ref(*c, *set);
                    }
                }
                w.add_event(ecid, &eb);
                db.finish_file(w, 0)
            };
            let ebr = &eb;
            let (f, known, decoded) = match shared {
                Some(r) => {
                    let (f, (k, d)) = crate::util::par::join(make, move || {
                        let k = car::Subtrees::of_runs(&r, car::runs_offset());
                        (k, Event::decode(ebr).ok())
                    });
                    (f?, k, d)
                }
                None => (make()?, car::Subtrees::default(), None),
            };
            // The event for the cache: a large one's decoded on the helper, else with its ops
            // copied from the writes.
            let event = decoded.unwrap_or_else(|| Event {
                ops: sorted
                    .iter()
                    .map(|(id, w)| (id.clone(), w.as_ref().map(|x| x.0)))
                    .collect(),
                ..event
            });
            let file = db.store_finished(f, 0, (height, height), db.sync(), early, &known)?;
            if checkpoint {
                // Readable without a file read, but not pending: the tree is in files.
                for (c, _, n) in &state.blocks {
                    db.store.cache.insert(
                        CacheKey::Node(db.lineage, *c),
                        Cached::Node(n.clone(), None),
                    );
                }
                head.base = state.root;
            } else {
                db.add_pending(state.blocks.iter());
            }
            // A purged version written again (equal contents share a block, whatever the id)
            // is stored again: it leaves the purged list, as a purge leaves out a version
            // another id names (else it read as purged and compaction dropped it).
            let mut again: Vec<Cid> = if head.purged.is_empty() {
                Vec::new()
            } else {
                event
                    .ops
                    .iter()
                    .filter_map(|(_, l)| *l)
                    .filter(|l| head.purged.binary_search(l).is_ok())
                    .collect()
            };
            again.sort();
            db.store.cache.insert(
                CacheKey::Event(db.lineage, ecid),
                Cached::Event(Arc::new(event)),
            );

            let heads = match base {
                None => vec![ecid],
                Some(b) => {
                    let mut h: Vec<Cid> = cur
                        .heads
                        .iter()
                        .filter(|x| !b.heads.contains(x))
                        .copied()
                        .collect();
                    h.push(ecid);
                    h.sort();
                    h
                }
            };
            head.heads = heads.clone();
            head.root = state.root;
            head.docs = docs.max(0) as u64;
            head.events += 1;
            if !again.is_empty() {
                head.purged.retain(|c| again.binary_search(c).is_err());
            }
            if !purge.is_empty() {
                head.purged.extend_from_slice(&purge);
                head.purged.sort();
                head.purged.dedup();
            }
            head.files_mut().insert(0, file);
            // Compaction runs in the background; inline without a background worker, for small
            // merges while none runs (`policy::BACKGROUND_FROM`), or when commits outrun it
            // (then it also bounds the files a read may consult). A
            // failed compaction must not fail (or block) commits: the commit stands without it,
            // and `compact`/`verify` report the cause.
            let policy = db.policy()?;
            let mut removed = Vec::new();
            let mut compacted = head.clone();
            let running = db.compacting.load(Ordering::SeqCst);
            let r = match policy.on_commit(&compact::sized_levels(head), running) {
                compact::policy::OnCommit::Nothing => Ok(Vec::new()),
                compact::policy::OnCommit::Cascade => db.compact_cascade(&mut compacted),
                compact::policy::OnCommit::Level0 => db.compact_level(&mut compacted, 0),
                compact::policy::OnCommit::Small => db.compact_small(&mut compacted, &policy),
            };
            if let Ok(r) = r {
                *head = compacted;
                removed = r;
            }
            let wanted = policy.wants_background(&compact::levels(head));
            Ok((
                (
                    Committed {
                        ids: Vec::new(), // (below)
                        event: ecid,
                        heads,
                    },
                    wanted,
                ),
                removed,
            ))
        })?;
        drop(sorted);
        c.ids = writes.into_iter().map(|w| w.0).collect();
        Ok(CommitOutcome {
            committed: c,
            wants_background: wanted,
        })
    }
}
