//! History cuts (`drop_history_before`), purge and the finishing of unfinished purges, and the
//! list of a database's files through its history.

use super::*;

impl Database {
    /// The live files and, following each compacted file's record of the files it replaced,
    /// every earlier file still in the store or its archive: with an archive kept, the whole
    /// sequence of diffs back to the first transaction. Newest first, each file once.
    pub fn history_files(&self) -> Result<Vec<HistoryFile>> {
        let st = self.inner.refresh()?;
        for name in &st.log.files {
            let _ = self.inner.ensure_whole(name); // (as a read of it would; errors below)
        }
        let storage = &self.inner.store.storage;
        let mut out = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut stack: Vec<(FileName, bool)> =
            st.head.files.iter().rev().map(|f| (f.name, true)).collect();
        while let Some((name, live)) = stack.pop() {
            if !seen.insert(name) {
                continue;
            }
            let (bytes, location) = match storage.read(&name) {
                Ok(b) => (Some(b), if live { Location::Live } else { Location::Kept }),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    match storage.read_archived(&name) {
                        Ok(b) => (Some(b), Location::Archived),
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                            (None, Location::Gone)
                        }
                        Err(e) => return Err(Error::io(format!("archived file {name}"), e)),
                    }
                }
                Err(e) => return Err(self.inner.file_err(&name, e)),
            };
            let meta = match &bytes {
                Some(b) => Some(self.inner.meta_of(&name, b)?),
                None => None,
            };
            let replaces = meta
                .as_ref()
                .map(|m| m.replaces.clone())
                .unwrap_or_default();
            for r in replaces.iter().rev() {
                stack.push((*r, false));
            }
            out.push(HistoryFile {
                name,
                location,
                level: meta.as_ref().map(|m| m.level),
                events: meta.map(|m| m.roots).unwrap_or_default(),
                replaces,
            });
        }
        Ok(out)
    }

    /// Removes every stored version of one document (`kiln purge`): commits a purge event that
    /// deletes the document, records the versions purged and marks the head record *scrubbing*
    /// ([`Head::scrub`]); then finishes the purge through garbage collection of the whole
    /// store, which rewrites this database into one file without them, removes every file no
    /// head names (the files just replaced, files other handles retired and keep for reuse,
    /// what a crash left), empties the reuse pool, removes archived files holding them,
    /// empties the previous head record (`HEAD.next`, which may carry small diffs) and clears
    /// the mark. A crash anywhere after the purge event leaves the mark, and the next open,
    /// write or `gc` finishes the purge. The document's id stays in the history (events name
    /// it); its contents are gone. Reads of a purged version fail with [`Error::Purged`];
    /// `verify` counts purged versions instead of reporting them missing, and reports any that
    /// are still stored. An id with no live document and no stored version (never written,
    /// or purged already) is [`Error::NoSuchDocument`], and nothing is written.
    pub fn purge(&self, id: &str) -> Result<PurgeReport> {
        doc::check_id(id)?;
        let c = self
            .inner
            .commit(CommitRequest {
                purge: Some(id),
                ..CommitRequest::of(Prepared::of(vec![(id.to_owned(), None)]))
            })?
            .committed;
        let ev = self.inner.read(|v| v.event(&c.event))?;
        // The file-sets its versions named: removed by the gc below if no version names them
        // any more, whatever their age.
        let sets: Vec<[u8; 32]> = self.inner.read(|v| {
            let mut sets = Vec::new();
            for l in &ev.purge {
                if let Ok(s) = v.with_checked_block(l, None, |b| Ok(doc::files::sets_of_body(b))) {
                    sets.extend(s);
                }
            }
            Ok(sets)
        })?;
        self.inner
            .store
            .purged_sets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(sets.into_iter().map(FileName));
        // (Committed: a gc that fails leaves the purge unfinished, not undone; opens and
        // writes of this handle's store wait a while before they try again.)
        let unfinished = |why: String| {
            self.inner
                .store
                .purge_tries
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(self.inner.name.clone(), std::time::Instant::now());
            Error::PurgeUnfinished(self.inner.name.clone(), why)
        };
        let gc = self.collect().map_err(|e| unfinished(e.to_string()))?;
        if self.inner.refresh()?.head.scrub {
            return Err(unfinished(gc.why_unfinished(&self.inner.name)));
        }
        Ok(PurgeReport {
            event: c.event,
            versions: ev.purge.len(),
            archived_removed: gc.archived_scrubbed,
            reusable_bytes_freed: gc.reusable_bytes
                + if gc.archived { 0 } else { gc.removed_bytes },
        })
    }

    /// The store this database is in (garbage collection finishes purges).
    /// Garbage collection of the store this database is in (which finishes purges).
    pub(super) fn collect(&self) -> Result<GcReport> {
        (self.inner.store.collect)(&self.inner.store)
    }

    /// Whether a purge (or a merge that brought purged versions) is committed but not finished.
    pub(crate) fn scrubbing(&self) -> Result<bool> {
        Ok(self.inner.refresh()?.head.scrub)
    }

    /// [`Database::scrubbing`] as of the head record this handle read last.
    pub(crate) fn scrubbing_as_read(&self) -> bool {
        self.inner.state().head.scrub
    }

    /// Finishes an unfinished purge (see [`Database::purge`]) through garbage collection of the
    /// whole store; a no-op when none is pending.
    pub(crate) fn finish_purge(&self) -> Result<()> {
        if self.scrubbing()? {
            self.collect()?;
        }
        Ok(())
    }

    /// [`Database::finish_purge`] on an open or a write: best effort (the caller's work stands
    /// either way), and when this store handle tried and failed within the last
    /// [`env::PURGE_RETRY`], not again yet (a try is a gc of the store and a rewrite
    /// of the database; one that cannot finish, say beside a database gc cannot read, would
    /// otherwise make every write pay that).
    pub(crate) fn finish_purge_soon(&self) {
        let tries = &self.inner.store.purge_tries;
        let name = &self.inner.name;
        let recent = |t: &std::time::Instant| t.elapsed() < env::PURGE_RETRY;
        if tries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .is_some_and(recent)
        {
            return;
        }
        let done = self.finish_purge().is_ok() && !self.scrubbing().unwrap_or(true);
        let mut t = tries.lock().unwrap_or_else(|p| p.into_inner());
        if done {
            t.remove(name);
        } else {
            t.insert(name.clone(), std::time::Instant::now());
        }
    }

    /// The database's own part of finishing a purge: under the writer lock, rewrites every
    /// live file into one that leaves out the purged versions (even a single file: after a
    /// crash it is not known which step was reached). Returns the purged set it is for, or
    /// `None` when no purge is pending. The replaced files are left for garbage collection's
    /// sweep, which runs next.
    pub(crate) fn scrub_files(&self) -> Result<Option<Vec<Cid>>> {
        // Derived data (indexes) may hold values of the purged versions: gone too (rebuilt
        // from what is left when next used).
        if self.scrubbing()? {
            self.clear_derived()?;
        }
        self.inner.with_lock(|db, head| {
            if !head.scrub {
                return Ok((None, Vec::new()));
            }
            let purged = head.purged.clone();
            if head.files.is_empty() {
                return Ok((Some(purged), Vec::new()));
            }
            let m = db.combine_files(head, head.files.to_vec(), None, true)?;
            db.apply_combined(head, &m);
            Ok((Some(purged), m.replaced))
        })
    }

    /// The last part of finishing a purge, after garbage collection removed every file no
    /// head names: removes archived files holding a version of `purged` and clears the mark
    /// (if no later purge came meanwhile), which also empties `HEAD.next`. Returns the archived
    /// files removed.
    pub(crate) fn scrub_done(&self, purged: &[Cid]) -> Result<usize> {
        let storage = &self.inner.store.storage;
        let mut scrubbed = 0;
        let archived = storage
            .list_archived()
            .map_err(|e| Error::io("the archive", e))?;
        for name in archived {
            let io = |e| Error::io(format!("archived file {name}"), e);
            let bytes = storage.read_archived(&name).map_err(io)?;
            // Only this lineage's files can hold its versions; of those, a damaged one is
            // not kept (it may hold them).
            if car::plaintexts(&self.inner.key, &bytes).is_empty() {
                continue;
            }
            let holds = match car::verify_file(&self.inner.key, &name, &bytes) {
                Ok((_, blocks)) => blocks.iter().any(|(c, ..)| purged.binary_search(c).is_ok()),
                Err(_) => true,
            };
            if holds {
                storage.remove_archived(&name).map_err(io)?;
                scrubbed += 1;
            }
        }
        self.inner.with_lock(|_, head| {
            if head.scrub && head.purged == purged {
                head.scrub = false;
            }
            Ok(((), Vec::new()))
        })?;
        Ok(scrubbed)
    }

    /// Drops the history older than `event` (`kiln compact --drop-history-before`): its strict
    /// ancestors and the values only they name are removed; the state at `event` is kept as a
    /// tree, so reads at `event` and at every later event, `changes` since them, and the
    /// current state are unchanged. Reads at a dropped event fail with
    /// [`Error::NoSuchEvent`]. Leaves exactly one file. Returns the number of events dropped.
    ///
    /// Refused for a database that has synced with a remote: its replicas would disagree on
    /// what history exists.
    pub fn drop_history_before(&self, event: &Cid) -> Result<usize> {
        if self.inner.dir.join(super::replica::REPLICATED).exists() {
            return Err(Error::InvalidArgument(format!(
                "database '{}' syncs with a remote: its history cannot be cut (its replicas \
                 would disagree on what history exists); fork it and cut the fork",
                self.inner.name
            )));
        }
        let dropped = self.inner.with_lock(|db, head| db.squash(head, event))?;
        // Derived data (indexes) may hold values only the dropped history had.
        self.clear_derived()?;
        Ok(dropped)
    }
}

/// Adds document version `l` (`body`) to `w`, with the file-sets it names.
fn add_value(w: &mut car::Writer, l: Cid, body: &[u8]) {
    for set in doc::files::sets_of_body(body) {
        w.add_file_ref(l, FileName(set));
    }
    w.add(l, body);
}

impl Db {
    /// The tree of the state at event `e` built from its history: for every id, the highest
    /// slot among `e` and its ancestors (and the states at cuts among them). Checked against
    /// the root `e` commits to, when it has one.
    pub(super) fn state_at(&self, v: &View, e: &Cid, ev: &Event) -> Result<tree::Update> {
        let ops = self.history_state(v, &[*e])?;
        let at_e = tree::update(v, None, &ops, Mode::Max, v.head.shape)?;
        if ev.root.is_some() && ev.root != at_e.root {
            // An event a merge brought from a database of the other tree shape commits to a
            // tree of that shape.
            let other = match v.head.shape {
                tree::Shape::Mod16 => tree::Shape::Bounded,
                tree::Shape::Bounded => tree::Shape::Mod16,
            };
            if tree::update(v, None, &ops, Mode::Max, other)?.root != ev.root {
                return Err(Error::corrupt(
                    format!("event {e}"),
                    "its tree root is not the state its history gives",
                ));
            }
        }
        Ok(at_e)
    }

    /// The tree of the state at clock heads `heads` built from their history, in `v`'s tree
    /// shape (for a head record whose tree nodes are no longer stored: a cursor's snapshot
    /// after compaction replaced its files).
    pub(super) fn state_of_heads(&self, v: &View, heads: &[Cid]) -> Result<tree::Update> {
        let ops = self.history_state(v, heads)?;
        tree::update(v, None, &ops, Mode::Max, v.head.shape)
    }

    /// For every id written in `from` and its ancestors (and the states at cuts among them),
    /// its highest slot, in id order.
    fn history_state(&self, v: &View, from: &[Cid]) -> Result<Vec<tree::Op>> {
        let mut state: BTreeMap<Arc<[u8]>, Slot> = BTreeMap::new();
        let mut put = |k: &[u8], s: Slot| tree::raise_into(&mut state, k.into(), s);
        clock::walk(v, from, &mut |c, x| {
            for (id, l) in &x.ops {
                put(
                    id.as_bytes(),
                    Slot {
                        version: x.height,
                        link: *l,
                    },
                );
            }
            if let Some(root) = v.head.cut_root(c) {
                tree::range(v, root.as_ref(), None, None, &mut |k, s| {
                    put(k, *s);
                    Ok(true)
                })?;
            }
            Ok(true)
        })?;
        Ok(state.into_iter().map(|(k, s)| (k, Some(s))).collect())
    }

    /// Drops the history older than event `e` (its strict ancestors), keeping the state at `e`
    /// as a tree the head record names (a *cut*): writes one file with every kept event, every
    /// value they name, the current tree, and the trees of the cuts, and replaces every live
    /// file with it. Returns the replaced files; `head` unchanged when `e` has no history.
    pub(super) fn squash(&self, head: &mut Head, e: &Cid) -> Result<(usize, Vec<FileName>)> {
        self.ensure_tree(head)?;
        let v = View::new(self, head);
        let ev = v.given_event(e)?;
        // The strict ancestors of `e`, to drop.
        let mut dropped: DigestSet<Cid> = DigestSet::default();
        clock::walk(&v, &ev.parents, &mut |c, _| {
            dropped.insert(*c);
            Ok(true)
        })?;
        if dropped.is_empty() {
            return Ok((0, Vec::new()));
        }
        let at_e = self.state_at(&v, e, &ev)?;
        let fresh: DigestMap<Cid, &[u8]> = at_e
            .blocks
            .iter()
            .map(|(c, b, _)| (*c, b.as_slice()))
            .collect();
        // Kept events: everything reachable but the dropped ones. An event concurrent with
        // `e` whose parent would be dropped (a branch merged after `e`) would lose its
        // history: refused, before anything is written.
        let mut kept: Vec<(Cid, Arc<Event>)> = Vec::new();
        let mut stranded: Option<Cid> = None;
        clock::walk(&v, &head.heads, &mut |c, x| {
            if !dropped.contains(c) {
                if c != e && x.parents.iter().any(|p| dropped.contains(p)) {
                    stranded = Some(*c);
                    return Ok(false);
                }
                kept.push((*c, Arc::new(x.clone())));
            }
            Ok(true)
        })?;
        if let Some(c) = stranded {
            return Err(Error::InvalidArgument(format!(
                "cannot drop the history before event {e}: event {c} is concurrent with it \
                 and its history would be lost; choose an event that has both as \
                 ancestors (such as the merge that joined them)"
            )));
        }
        kept.reverse(); // oldest first
        let mut cut: Vec<(Cid, Option<Cid>)> = head
            .cut
            .iter()
            .filter(|(c, _)| !dropped.contains(c) && c != e)
            .copied()
            .collect();
        cut.push((*e, at_e.root));
        cut.sort();
        let level = head.files.iter().map(|f| f.level).max().unwrap_or(0).max(1);
        let mut w = car::Writer::new(car::Meta {
            level,
            time: now_ms(),
            roots: head.heads.clone(),
            replaces: head.files.iter().map(|f| f.name).collect(),
        });
        let mut added: DigestSet<Cid> = DigestSet::default();
        let raw = |c: &Cid| -> Result<Vec<u8>> {
            if let Some(b) = fresh.get(c) {
                return Ok(b.to_vec());
            }
            if let Some((b, _)) = self
                .pending
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .get(c)
            {
                return Ok(b.to_vec());
            }
            v.with_checked_block(c, None, |b| Ok(b.to_vec()))
        };
        let mut heights = (u64::MAX, 0);
        for (c, x) in &kept {
            heights = (heights.0.min(x.height), heights.1.max(x.height));
            w.add_event(*c, &raw(c)?);
            for l in x.ops.iter().filter_map(|(_, l)| *l) {
                if head.purged.binary_search(&l).is_err() && added.insert(l) {
                    add_value(&mut w, l, &raw(&l)?);
                }
            }
        }
        let mut stack: Vec<Cid> = head
            .root
            .into_iter()
            .chain(cut.iter().filter_map(|(_, r)| *r))
            .collect();
        while let Some(c) = stack.pop() {
            if !added.insert(c) {
                continue;
            }
            let b = raw(&c)?;
            let node = tree::Node::decode(&b).map_err(|x| v.corrupt_cid(&c, x.0))?;
            w.add_node(c, &b);
            stack.extend_from_slice(node.children());
            if let tree::Items::Leaf(slots) = &node.items {
                for l in slots.iter().filter_map(|s| s.link) {
                    if head.purged.binary_search(&l).is_err() && added.insert(l) {
                        add_value(&mut w, l, &raw(&l)?);
                    }
                }
            }
        }
        doclog::write_log(&mut w, kept.iter().map(|(c, x)| (c, &**x)))?;
        let file = self.store_file(w, level, heights)?;
        let replaced: Vec<FileName> = head.files.iter().map(|f| f.name).collect();
        head.files = Arc::new(vec![file]);
        head.base = head.root;
        head.cut = cut;
        head.events = kept.len() as u64;
        head.compacted = now_ms();
        Ok((dropped.len(), replaced))
    }

    /// Every stored version of `id` in `head`'s history that no other document shares (equal
    /// contents share a block), and is not purged already.
    pub(super) fn versions_to_purge(&self, v: &View, head: &Head, id: &str) -> Result<Vec<Cid>> {
        let mut mine: DigestSet<Cid> = DigestSet::default();
        let mut others: DigestSet<Cid> = DigestSet::default();
        clock::walk(v, &head.heads, &mut |_, e| {
            for (i, l) in &e.ops {
                if let Some(l) = l {
                    if i == id {
                        mine.insert(*l);
                    } else {
                        others.insert(*l);
                    }
                }
            }
            Ok(true)
        })?;
        // Versions written before a cut live on in the state at it.
        for (_, root) in &head.cut {
            tree::range(v, root.as_ref(), None, None, &mut |k, s| {
                if let Some(l) = s.link {
                    if k == id.as_bytes() {
                        mine.insert(l);
                    } else {
                        others.insert(l);
                    }
                }
                Ok(true)
            })?;
        }
        let mut out: Vec<Cid> = mine
            .into_iter()
            .filter(|c| !others.contains(c) && head.purged.binary_search(c).is_err())
            .collect();
        out.sort();
        Ok(out)
    }
}
