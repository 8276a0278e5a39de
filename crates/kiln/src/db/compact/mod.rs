//! Compaction: combining a level's files into one file of the next level (inline or on a
//! background thread), and full compaction.

use super::*;

mod cluster;
pub(crate) mod policy;

use policy::Policy;
pub use policy::LEVEL_FANIN;

/// A compaction's output: the new file, the files it replaces and (level 0) the new base tree.
pub(super) struct Combined {
    pub(super) file: FileRef,
    pub(super) replaced: Vec<FileName>,
    /// The level whose files were combined (`None`: every file).
    pub(super) from: Option<u8>,
    /// The new base tree (a level-0 or full compaction writes the current tree's nodes), or
    /// `None`: the base stays.
    pub(super) base: Option<Root>,
    /// The base of the head the compaction was computed on.
    pub(super) from_base: Option<Cid>,
}

impl Database {
    /// Combines every live file into exactly one (`kiln compact --full`).
    pub fn compact_full(&self) -> Result<()> {
        self.inner
            .with_lock(|db, head| match db.combine_all(head)? {
                Some(m) => {
                    db.apply_combined(head, &m);
                    Ok(((), m.replaced))
                }
                None => Ok(((), Vec::new())),
            })
    }

    /// Compacts now: combines every live transaction diff into one file (and cascades levels
    /// over their limits).
    pub fn compact(&self) -> Result<()> {
        self.inner.with_lock(|db, head| {
            let removed = db.compact_level(head, 0)?;
            let more = db.compact_cascade(head)?;
            Ok(((), removed.into_iter().chain(more).collect()))
        })
    }
}

impl Db {
    /// Combines the levels whose file count passed their limit, lowest first (see
    /// [`policy`]). Returns the replaced files.
    pub(super) fn compact_cascade(&self, head: &mut Head) -> Result<Vec<FileName>> {
        let mut removed = Vec::new();
        while let Some(level) = self.level_to_combine(head)? {
            let r = self.compact_level(head, level)?;
            if r.is_empty() {
                break;
            }
            removed.extend(r);
        }
        Ok(removed)
    }

    /// [`Db::compact_cascade`] while the level to combine is small (see
    /// [`policy::BACKGROUND_FROM`]): the rest is the background thread's.
    pub(super) fn compact_small(&self, head: &mut Head, policy: &Policy) -> Result<Vec<FileName>> {
        let mut removed = Vec::new();
        while let Some(level) = policy.small_level(&sized_levels(head)) {
            let r = self.compact_level(head, level)?;
            if r.is_empty() {
                break;
            }
            removed.extend(r);
        }
        Ok(removed)
    }

    /// Combines every file of `level` into one file of `level + 1` in `head`. Returns the replaced
    /// files (deleted by the caller once the new head is durable).
    pub(super) fn compact_level(&self, head: &mut Head, level: u8) -> Result<Vec<FileName>> {
        match self.combine_level(head, level)? {
            Some(m) => {
                self.apply_combined(head, &m);
                Ok(m.replaced)
            }
            None => Ok(Vec::new()),
        }
    }

    /// Puts a compaction's file in place of the files it replaced, where the first of them was
    /// (so files stay ordered newest first, levels non-decreasing); false (and `head`
    /// unchanged) if any of them is no longer live (another compaction won).
    pub(super) fn apply_combined(&self, head: &mut Head, m: &Combined) -> bool {
        let sel = &m.replaced;
        if !sel.iter().all(|n| head.files.iter().any(|f| f.name == *n)) {
            return false;
        }
        let pos = head
            .files
            .iter()
            .position(|f| sel.contains(&f.name))
            .unwrap_or(0);
        let mut file = m.file.clone();
        if let Some(k) = m.from {
            // Files that came meanwhile may hold the level down (see `policy::out_level`).
            let others = head.files.iter().filter(|f| !sel.contains(&f.name));
            file.level = file
                .level
                .min(policy::out_level(k, u64::MAX, others.map(|f| f.level)));
        }
        let files = head.files_mut();
        files.retain(|f| !sel.contains(&f.name));
        files.insert(pos.min(files.len()), file);
        head.compacted = now_ms();
        // Only forward: a commit meanwhile may have moved the base already (a checkpoint or a
        // merge), and its tree is whole in files too.
        if let Some(base) = m.base.filter(|_| head.base == m.from_base) {
            head.base = base;
        }
        true
    }

    /// Writes one file of `level + 1` holding what the files of `level` in `head` hold that is
    /// still needed: every event, every document version an event names, and tree nodes. For
    /// level 0 those are the current tree's nodes that are in these files or only in memory
    /// (`pending`): the output then holds the whole new part of the current tree, which becomes
    /// the base tree. For a higher level, the base tree's nodes in these files (a node of an
    /// older tree is superseded: a later tree links only nodes of its predecessors or nodes it
    /// writes anew, and the base tree is the one every later tree is rebuilt from). Returns the
    /// file, the names it replaces and, for level 0, the new base.
    pub(super) fn combine_level(&self, head: &Head, level: u8) -> Result<Option<Combined>> {
        let sel: Vec<FileRef> = head
            .files
            .iter()
            .filter(|f| f.level == level)
            .cloned()
            .collect();
        if sel.is_empty() || (sel.len() == 1 && level > 0) {
            return Ok(None);
        }
        self.combine_files(head, sel, Some(level), level == 0)
            .map(Some)
    }

    /// Combines every live file into one (`compact --full`): it holds every event, every
    /// document version and exactly the current tree's nodes; it becomes the base.
    pub(super) fn combine_all(&self, head: &Head) -> Result<Option<Combined>> {
        if head.files.is_empty() || (head.files.len() == 1 && head.base == head.root) {
            return Ok(None);
        }
        self.combine_files(head, head.files.to_vec(), None, true)
            .map(Some)
    }

    /// Writes one file holding what the files `sel` hold that is still needed (see
    /// [`Db::combine_level`]): the files of level `from`, or (`None`) every live file, so a
    /// node found nowhere is missing rather than in an older file. With `current`, the
    /// current tree's nodes (from `sel` and memory) rather than the base tree's. The file's
    /// level is [`policy::out_level`]'s (every live file's top level for `None`).
    pub(super) fn combine_files(
        &self,
        head: &Head,
        sel: Vec<FileRef>,
        from: Option<u8>,
        current: bool,
    ) -> Result<Combined> {
        let all = from.is_none();
        let level = from.unwrap_or(0);
        let memory = if current {
            self.memory_tree(head)?
        } else {
            DigestMap::default()
        };
        let v = View::new(self, head);
        // Pass 1, over the indexes and the events only: which tree nodes the files hold, the
        // events' heights and parents, and (for version-1 files, whose index does not mark
        // tree nodes) the values the events name.
        // Each tree node the files hold, with the position in `sel` of the file holding it.
        let mut nodes_here = cluster::NodesHere::default();
        let mut nodes = 0usize; // tree node blocks in the files
        let mut values: DigestSet<Cid> = DigestSet::default();
        let mut event_set: DigestSet<Cid> = DigestSet::default();
        let mut parents: DigestSet<Cid> = DigestSet::default();
        let mut heights = (u64::MAX, 0);
        let mut versions = Vec::with_capacity(sel.len());
        // The output's document log: merged from the inputs' logs, and the entries of the
        // events of inputs without one (see `doclog`).
        let mut logged: Vec<(FileRef, Arc<car::Index>)> = Vec::new();
        let mut loose_log: Vec<car::LogEntry> = Vec::new();
        // The file-sets the inputs' versions name (those of purged versions are left out).
        let mut file_refs: Vec<(Cid, FileName)> = Vec::new();
        for (i, f) in sel.iter().enumerate().rev() {
            let idx = self.index(f)?;
            versions.push(idx.version);
            let has_log = !idx.log.is_empty();
            file_refs.extend(idx.refs.0.iter().copied());
            if has_log {
                logged.push((f.clone(), idx.clone()));
            }
            for e in self.file_entries(&v, f)? {
                if e.event {
                    let seg = v.segment(f, e.seg)?;
                    let data = car::block_in(&seg, &e)
                        .map_err(|x| Error::format(format!("file {}", f.name), x))?;
                    let ev = Event::decode(data)
                        .map_err(|x| Error::corrupt(format!("event {}", e.cid), x.0))?;
                    heights = (heights.0.min(ev.height), heights.1.max(ev.height));
                    parents.extend(ev.parents.iter().copied());
                    if idx.version < 2 {
                        values.extend(ev.ops.iter().filter_map(|(_, l)| *l));
                    }
                    if !has_log {
                        loose_log.extend(doclog::entries_of(&e.cid, &ev));
                    }
                    event_set.insert(e.cid);
                } else if e.node || idx.version < 2 {
                    nodes_here.insert(e.cid, i as u32);
                    nodes += 1;
                }
            }
        }
        // Tree nodes to keep: descend through these files, memory and newer files; stop at
        // older ones (a node only links to nodes at least as old as itself).
        let newer = Head {
            files: head
                .files
                .iter()
                .filter(|f| f.level < level && !all)
                .cloned()
                .collect::<Vec<_>>()
                .into(),
            ..Head::default()
        };
        let in_newer = View::new(self, &newer);
        let any_v1 = versions.iter().any(|v| *v < 2);
        let tree_root = if current { head.root } else { head.base };
        let mut keep: DigestSet<Cid> = DigestSet::default();
        // Bytes of the nodes only in memory this file writes (in `order` with the others).
        let mut memory_bytes = 0u64;
        // The trees to keep: the current (or base) tree, and the state at every cut event.
        // With the node's level when known (its parent's less one): a leaf is not read to
        // learn that it has no children (reads rely on the same rule: the children of a
        // level-1 node are leaves). Reading every leaf of the part of the tree a file held
        // (and caching it) was a quarter of compaction's time under random updates.
        let mut stack: Vec<(Cid, Option<u8>)> = tree_root
            .into_iter()
            .chain(head.cut.iter().filter_map(|(_, r)| *r))
            .map(|c| (c, None))
            .collect();
        let mut visited: DigestSet<Cid> = DigestSet::default();
        // The nodes this file writes, in pre-order with keys ascending (its layout), each
        // with whether it was taken for a leaf unread (`write_tree` checks that it is one).
        let mut order: Vec<(Cid, bool)> = Vec::new();
        while let Some((c, level)) = stack.pop() {
            if !visited.insert(c) {
                continue;
            }
            let leaf = level == Some(0) && !any_v1;
            if nodes_here.may_hold(&c) {
                keep.insert(c);
                order.push((c, leaf));
            } else if current {
                match memory.get(&c) {
                    Some((b, _)) => {
                        memory_bytes += b.len() as u64;
                        order.push((c, leaf));
                    }
                    None if all => return Err(Error::MissingBlock(c, self.name.clone())),
                    None => continue, // in an older file, with everything below it
                }
            } else if leaf {
                continue; // nothing below it to look for
            } else {
                match in_newer.locate(&c, None) {
                    Ok(_) => {}
                    Err(Error::MissingBlock(..)) => continue,
                    Err(e) => return Err(e),
                }
            }
            if leaf {
                continue;
            }
            let node = match memory.get(&c) {
                Some((_, n)) => n.clone(),
                None => v.node(&c)?,
            };
            let below = node.level.checked_sub(1);
            stack.extend(node.children().iter().rev().map(|c| (*c, below)));
            // A tree's values stay with it (after a cut, no kept event names some of them).
            // Only version-1 files need the list (later ones mark tree nodes, and keep every
            // value not purged): at a million documents it held a million CIDs.
            if any_v1 {
                if let tree::Items::Leaf(slots) = &node.items {
                    values.extend(slots.iter().filter_map(|s| s.link));
                }
            }
        }
        drop(visited);
        let out_level = match from {
            None => head.files.iter().map(|f| f.level).max().unwrap_or(0).max(1),
            // By the bytes going in: the files, and the tree nodes only in memory.
            Some(k) => policy::out_level(
                k,
                sel.iter().map(|f| f.size).sum::<u64>() + memory_bytes,
                head.files
                    .iter()
                    .filter(|f| !sel.iter().any(|s| s.name == f.name))
                    .map(|f| f.level),
            ),
        };
        let meta = car::Meta {
            level: out_level,
            time: now_ms(),
            // The CAR roots: the file's newest events (no event in it names them).
            roots: {
                let mut r: Vec<Cid> = event_set
                    .iter()
                    .filter(|e| !parents.contains(e))
                    .copied()
                    .collect();
                r.sort();
                r
            },
            replaces: sel.iter().map(|f| f.name).collect(),
        };
        let logs = (event_set.len() > 1).then_some((logged, loose_log));
        drop((parents, event_set));
        let purged = |c: &Cid| head.purged.binary_search(c).is_ok();
        file_refs.retain(|(c, _)| !purged(c));
        // Pass 2: stream the kept tree with the document versions it names (see `cluster`),
        // then every other kept block, oldest file first and in file order, into the new
        // file; memory holds one file's index entries at a time, the new index and a
        // segment, not the files.
        let mut sources = Some(cluster::Sources::new(&v, &sel, nodes_here)?);
        let mut logs = Some(logs);
        let mut failed: Option<Error> = None;
        let mut done: Option<(u64, car::Index, u32)> = None;
        let name = self.store.storage.put_with(self.sync(), &mut |out| {
            let r = (|| -> Result<FileName> {
                let io = |e| Error::io(self.store.root.join("files"), e);
                let mut w = car::StreamWriter::new(meta.clone(), &self.key, out).map_err(io)?;
                let Some(sources) = sources.take() else {
                    return Err(Error::corrupt("compaction", "written twice"));
                };
                // At most every input block but the tree nodes, and the nodes it keeps (a
                // merge under updates drops most of the nodes it reads: reserving room for
                // them too was a tenth of its memory).
                w.reserve(sources.len().saturating_sub(nodes) + order.len());
                cluster::write_tree(&v, &sel, &sources, &order, &memory, &purged, &mut w)?;
                for (i, version) in (0..sel.len()).rev().zip(&versions) {
                    let f = &sel[i];
                    for e in sources.of_file(i)? {
                        if w.holds(&e.cid) {
                            continue; // written with the tree
                        }
                        // Version-1 files do not mark tree nodes: a block there is a kept
                        // node, or a value an event or a kept tree names, or dropped.
                        let kept = if e.event {
                            true
                        } else if e.node {
                            keep.contains(&e.cid)
                        } else if *version < 2 {
                            keep.contains(&e.cid) || (values.contains(&e.cid) && !purged(&e.cid))
                        } else {
                            !purged(&e.cid)
                        };
                        if !kept {
                            continue;
                        }
                        let seg = v.segment(f, e.seg)?;
                        let data = car::block_in(&seg, &e)
                            .map_err(|x| Error::format(format!("file {}", f.name), x))?;
                        if e.event {
                            w.add_event(e.cid, data)
                        } else if e.node || keep.contains(&e.cid) {
                            w.add_node(e.cid, data)
                        } else {
                            w.add(e.cid, data)
                        }
                        .map_err(io)?;
                    }
                }
                // The map of tree nodes goes before the new file's index is sorted and written.
                drop(sources);
                for (c, set) in std::mem::take(&mut file_refs) {
                    w.add_file_ref(c, set);
                }
                if let Some((logged, loose)) = logs.take().flatten() {
                    let mut m = doclog::LogMerge::new(self, logged, loose)?;
                    while let Some(e) = m.next(self)? {
                        w.add_log_entry(&e).map_err(io)?;
                    }
                }
                let (name, size, index, index_len) = w.finish().map_err(io)?;
                done = Some((size, index, index_len));
                Ok(name)
            })();
            r.map_err(|e| {
                let msg = e.to_string();
                failed = Some(e);
                std::io::Error::other(msg)
            })
        });
        let name = match (name, failed) {
            (_, Some(e)) => return Err(e),
            (Err(e), None) => return Err(Error::io(self.store.root.join("files"), e)),
            (Ok(n), None) => n,
        };
        let (size, index, index_len) =
            done.ok_or_else(|| Error::corrupt("compaction", "no file written"))?;
        self.cache_upper_nodes(name, &index, &memory);
        let filter = self.register_index(name, index);
        Ok(Combined {
            file: FileRef {
                name,
                level: out_level,
                size,
                index_len,
                heights,
                filter,
            },
            replaced: sel.iter().map(|f| f.name).collect(),
            from,
            base: current.then_some(head.root),
            from_base: head.base,
        })
    }

    /// Caches the upper tree nodes (level > 0) a compaction just wrote from memory as read
    /// from their place in file `name`, so they count as upper nodes (kept apart from the
    /// stream of segments and leaves, see `cache`). Cached as a commit built them (no place),
    /// they were soon pushed out, and under random updates at a million documents a third of
    /// a read went to reading the tree's upper levels back from the newest compacted files.
    fn cache_upper_nodes(
        &self,
        name: FileName,
        index: &car::Index,
        memory: &DigestMap<Cid, (Arc<[u8]>, Arc<tree::Node>)>,
    ) {
        for (cid, (_, node)) in memory.iter().filter(|(_, (_, n))| n.level > 0) {
            if let Some(e) = index.find(cid) {
                let place = Place {
                    file: name,
                    seg: e.seg,
                };
                self.store.cache.insert(
                    CacheKey::Node(self.lineage, *cid),
                    Cached::Node(node.clone(), Some(place)),
                );
            }
        }
    }

    /// The lowest level holding more files than its limit.
    pub(super) fn level_to_combine(&self, head: &Head) -> Result<Option<u8>> {
        Ok(self.policy()?.level_to_combine(&levels(head)))
    }

    /// The compaction policy in force (the settings as they are now).
    pub(super) fn policy(&self) -> Result<Policy> {
        Ok(Policy {
            threshold: self.compact_threshold()?,
            background: self.store.opts.background_compaction,
        })
    }

    /// Background compaction: combine on a snapshot without the lock, then swap the result in
    /// under the lock if the combined files are all still live (commits go on meanwhile; another
    /// compaction may have won, and then this one's output is discarded).
    pub(super) fn compact_background(&self) -> Result<()> {
        loop {
            let st = self.refresh()?;
            let Some(level) = self.level_to_combine(&st.head)? else {
                return Ok(());
            };
            // From writing the combined file until a head record names it (or it is removed).
            let _gc = self.store.gc_shared()?;
            let Some(m) = self.combine_level(&st.head, level)? else {
                return Ok(());
            };
            // Commits let the swap go first (they wait for this flag, briefly).
            self.swap_waiting.store(true, Ordering::SeqCst);
            let applied = self.with_lock(|db, head| {
                db.swap_waiting.store(false, Ordering::SeqCst);
                let ok = db.apply_combined(head, &m);
                Ok((ok, if ok { m.replaced.clone() } else { Vec::new() }))
            });
            self.swap_waiting.store(false, Ordering::SeqCst);
            let applied = applied?;
            if !applied {
                let _ = self.store.storage.retire(&m.file.name);
                return Ok(());
            }
            // The last handle is being dropped: this merge was the one the commit asked for.
            if self.closing.load(Ordering::SeqCst) {
                return Ok(());
            }
        }
    }
}

/// The level and size of every live file of `head`.
pub(super) fn sized_levels(head: &Head) -> Vec<(u8, u64)> {
    head.files.iter().map(|f| (f.level, f.size)).collect()
}

/// The level of every live file of `head`.
pub(super) fn levels(head: &Head) -> Vec<u8> {
    head.files.iter().map(|f| f.level).collect()
}
