//! The three-way merge of histories (`merge_from`, `preview_merge`, `merge --only`), conflicts,
//! and diffs between states.

use super::*;

/// Whether a merge's state takes the source's slot `t` over ours `o` (the state rule).
pub(super) fn theirs_win(o: &Option<Slot>, t: &Option<Slot>) -> bool {
    match (o, t) {
        (Some(o), Some(t)) => t.rank(o) == std::cmp::Ordering::Greater,
        (None, Some(_)) => true,
        _ => false,
    }
}

/// Transactions with at least this many writes store their tree nodes with them (see
/// `Db::commit`).
pub(super) const CHECKPOINT_OPS: usize = 32;

impl Database {
    /// Merges `src` into this database. This database's clock gains every event of `src` it
    /// lacks (copied, re-sealed under this database's key when the lineages differ) and a merge
    /// event joins the heads; the merged state keeps, for every document, the write with the
    /// greatest (height, value CID) — so a change made on one side only wins over the common
    /// ancestor, and a document changed on both sides is a conflict settled the same way on
    /// every replica and in either direction. The report lists every conflict with the
    /// ancestor and both values; the losing values stay readable ([`Database::conflicts`])
    /// until a later write to the document. When this database is an ancestor of `src`, it
    /// simply takes `src`'s heads (fast-forward, no merge event); merging again changes
    /// nothing. With `only`, just those documents take `src`'s current values, as an ordinary
    /// transaction that names `src`'s heads; an id `src` never had is
    /// [`Error::NoSuchDocument`], and nothing is written.
    pub fn merge_from(&self, src: &Database, only: Option<&[String]>) -> Result<MergeReport> {
        self.merge_from_noted(src, only, "")
    }

    /// [`Database::merge_from`], recording `note` (who merged what, and why) in the event.
    pub fn merge_from_noted(
        &self,
        src: &Database,
        only: Option<&[String]>,
        note: &str,
    ) -> Result<MergeReport> {
        self.merge_inner(src, None, only, note)
    }

    /// [`Database::merge_from_noted`] of exactly the state of `src` at clock heads `heads`
    /// (an accepted proposal's): refused with [`Error::Changed`] if `src` is no longer there.
    pub(crate) fn merge_pinned(
        &self,
        src: &Database,
        heads: &[Cid],
        only: Option<&[String]>,
        note: &str,
    ) -> Result<MergeReport> {
        self.merge_inner(src, Some(heads), only, note)
    }

    pub(super) fn merge_inner(
        &self,
        src: &Database,
        pinned: Option<&[Cid]>,
        only: Option<&[String]>,
        note: &str,
    ) -> Result<MergeReport> {
        if let Some(ids) = only {
            return self.take_from(src, pinned, ids, note);
        }
        let sst = src.inner.refresh()?;
        src.check_pinned(&sst.head, pinned)?;
        src.inner.ensure_tree(&sst.head)?;
        let r = self
            .inner
            .with_lock(|db, head| db.merge(head, &src.inner, &sst.head, note, false, false))?;
        // The source's purges apply here too: versions it purged leave this database's files
        // (the merge is done whatever comes of that, as for any commit: see `finish`).
        self.finish_purge_soon();
        Ok(r)
    }

    /// What [`Database::merge_from`] would do, without writing anything: the changes it would
    /// take and the conflicts it would settle (`event` is `None`).
    pub fn preview_merge(&self, src: &Database) -> Result<MergeReport> {
        self.preview_merge_pinned_opt(src, None)
    }

    /// [`Database::preview_merge`] of the state of `src` at clock heads `heads`.
    pub(crate) fn preview_merge_pinned(
        &self,
        src: &Database,
        heads: &[Cid],
    ) -> Result<MergeReport> {
        self.preview_merge_pinned_opt(src, Some(heads))
    }

    pub(super) fn preview_merge_pinned_opt(
        &self,
        src: &Database,
        pinned: Option<&[Cid]>,
    ) -> Result<MergeReport> {
        let sst = src.inner.refresh()?;
        src.check_pinned(&sst.head, pinned)?;
        src.inner.ensure_tree(&sst.head)?;
        let st = self.inner.refresh()?;
        let mut head = st.head.clone();
        self.inner
            .merge(&mut head, &src.inner, &sst.head, "", true, false)
            .map(|(r, _)| r)
    }

    /// Fails with [`Error::Changed`] unless `head`'s clock heads are `pinned` (when given).
    pub(super) fn check_pinned(&self, head: &Head, pinned: Option<&[Cid]>) -> Result<()> {
        match pinned {
            Some(p) if head.heads != p => Err(Error::Changed(self.inner.name.clone())),
            _ => Ok(()),
        }
    }

    /// `merge_from` with `only`: a transaction writing `src`'s current values of `ids` (its
    /// values at `pinned`, which must be its heads still; a document deleted there is deleted
    /// here); an id `src` never had is [`Error::NoSuchDocument`], and nothing is written.
    pub(super) fn take_from(
        &self,
        src: &Database,
        pinned: Option<&[Cid]>,
        ids: &[String],
        note: &str,
    ) -> Result<MergeReport> {
        if ids.is_empty() {
            return Err(Error::InvalidArgument("no documents to take".into()));
        }
        for id in ids {
            doc::check_id(id)?;
        }
        let (writes, heads, lacking) = src.inner.read(|v| {
            src.check_pinned(v.head, pinned)?;
            let mut writes: Vec<Write> = Vec::new();
            let mut lacking: Vec<String> = Vec::new();
            for id in ids {
                let w = match tree::get(v, v.head.root.as_ref(), id.as_bytes())? {
                    Some(Slot {
                        link: Some(l),
                        version,
                    }) => {
                        let body = v.with_checked_block(&l, Some(version), |b| Ok(b.to_vec()))?;
                        Some((l, body))
                    }
                    // Deleted there: the delete is taken.
                    Some(Slot { link: None, .. }) => None,
                    None => {
                        lacking.push(id.clone());
                        None
                    }
                };
                writes.push((id.clone(), w));
            }
            Ok((writes, v.head.heads.clone(), lacking))
        })?;
        // An id the source never had is no value to take: refused, nothing written.
        if !lacking.is_empty() {
            return Err(Error::NoSuchDocument {
                db: src.inner.name.clone(),
                ids: lacking,
            });
        }
        let mine = self.inner.read(|v| {
            ids.iter()
                .map(|id| tree::get(v, v.head.root.as_ref(), id.as_bytes()))
                .collect::<Result<Vec<_>>>()
        })?;
        let changed: Vec<String> = ids
            .iter()
            .zip(&mine)
            .zip(&writes)
            .filter(|((_, m), w)| m.and_then(|s| s.link) != w.1.as_ref().map(|x| x.0))
            .map(|((id, _), _)| id.clone())
            .collect();
        self.inner.bring_filesets(
            &src.inner,
            writes
                .iter()
                .filter_map(|(_, w)| w.as_ref().map(|(_, b)| b.as_slice())),
        )?;
        let c = self
            .inner
            .commit(CommitRequest {
                source: heads,
                note,
                ..CommitRequest::of(Prepared::of(writes))
            })?
            .committed;
        Ok(MergeReport {
            event: Some(c.event),
            changed,
            ..MergeReport::default()
        })
    }

    /// The values a merge, or a concurrent transaction of this database, lost for `id` that
    /// no later write to it has settled (empty when there is no open conflict). Two
    /// transactions begun on the same state that both wrote `id` leave two clock heads; the
    /// state keeps one value (the greater `(height, value CID)`, as a merge does) and the
    /// other is listed here, from then on, and recorded by the commit that joins the heads.
    pub fn conflicts(&self, id: &str) -> Result<Vec<Value>> {
        self.inner.read(|v| {
            let losers = match v.head.heads.len() {
                1 => recorded_losers(v, id)?,
                _ => match concurrent::open_conflicts(v, &v.head.heads)?.remove(id) {
                    Some(ls) => ls,
                    None => recorded_losers(v, id)?,
                },
            };
            losers
                .iter()
                .map(|l| {
                    v.with_block(l, None, |b| {
                        doc::decode(id, b).map_err(|w| v.corrupt_cid(l, w))
                    })
                })
                .collect()
        })
    }

    /// The documents that differ from this database's state (now, or at event `at`) to
    /// `other`'s (now, or at `other_at`), in id order, with both values. The two trees are
    /// compared by CID, so subtrees they share (forks share most) are skipped unread: the cost
    /// follows the number of differences, not the size of the databases.
    pub fn diff(
        &self,
        at: Option<&Cid>,
        other: &Database,
        other_at: Option<&Cid>,
    ) -> Result<Vec<DocDiff>> {
        let (sa, sb) = (self.inner.refresh()?, other.inner.refresh()?);
        // An event's own tree first; if compaction dropped part of it, build it from history.
        let mut build = false;
        let (a, b, keys) = loop {
            let a = self.inner.point(&sa.head, at, build)?;
            let b = other.inner.point(&sb.head, other_at, build)?;
            let mut keys: Vec<(Vec<u8>, Option<Slot>, Option<Slot>)> = Vec::new();
            match tree::diff(&a, a.root.as_ref(), &b, b.root.as_ref(), &mut |k, x, y| {
                keys.push((k.to_vec(), x.copied(), y.copied()))
            }) {
                Ok(()) => break (a, b, keys),
                Err(Error::MissingBlock(..)) if !build && (at.is_some() || other_at.is_some()) => {
                    build = true
                }
                Err(e) => return Err(e),
            }
        };
        let mut out = Vec::new();
        for (k, x, y) in keys {
            let (lx, ly) = (x.and_then(|s| s.link), y.and_then(|s| s.link));
            if lx == ly {
                continue; // same contents (or deleted on both sides), other versions
            }
            let id = String::from_utf8(k)
                .map_err(|_| Error::corrupt(self.inner.name.clone(), "document id is not UTF-8"))?;
            let load = |p: &Point, s: Option<Slot>| -> Result<Option<Value>> {
                match s {
                    Some(Slot {
                        link: Some(l),
                        version,
                    }) => p.view.load_doc(&id, &l, version).map(Some),
                    _ => Ok(None),
                }
            };
            out.push(DocDiff {
                before: load(&a, x)?,
                after: load(&b, y)?,
                id,
            });
        }
        Ok(out)
    }
}

impl Db {
    /// The merge step of [`Database::merge_from`], under this database's writer lock.
    pub(super) fn merge(
        &self,
        head: &mut Head,
        src: &Db,
        shead: &Head,
        note: &str,
        dry_run: bool,
        as_is: bool,
    ) -> Result<(MergeReport, Vec<FileName>)> {
        self.ensure_tree(head)?;
        let cur = head.clone();
        let dv = View::new(self, &cur);
        let sv = View::new(src, shead);
        let has = |v: &View, c: &Cid| match v.locate(c, None) {
            Ok(_) => Ok(true),
            Err(Error::MissingBlock(..)) => Ok(false),
            Err(e) => Err(e),
        };
        // Events one side has and the other lacks (each side's history is closed under
        // parents, so a walk stops at the first event the other side has).
        let only_in = |from: &View, other: &View| -> Result<Vec<(Cid, Arc<Event>)>> {
            let mut out = Vec::new();
            let mut seen: DigestSet<Cid> = DigestSet::default();
            let mut stack: Vec<Cid> = from.head.heads.clone();
            while let Some(c) = stack.pop() {
                if !seen.insert(c) || has(other, &c)? {
                    continue;
                }
                if from.head.cut_root(&c).is_some() {
                    return Err(Error::InvalidArgument(format!(
                        "cannot merge across dropped history (event {c} of '{}' has no parents \
                         here); merge from before the drop",
                        from.db.name
                    )));
                }
                let e = from.event(&c)?;
                stack.extend_from_slice(&e.parents);
                out.push((c, e));
            }
            out.sort_by_key(|(c, e)| (e.height, *c)); // oldest first
            Ok(out)
        };
        let theirs_only = only_in(&sv, &dv)?;
        if theirs_only.is_empty() {
            return Ok((MergeReport::default(), Vec::new())); // nothing new: already merged
        }
        let ours_only = only_in(&dv, &sv)?;
        // A database of another tree shape (another lineage) cannot hand over its heads as they
        // are: their trees are not this database's shape, so where a merge would fast-forward a
        // merge event naming ours takes their heads as its only parents (ours are their
        // ancestors). And two such databases never share heads: when all they have new is such
        // events and merges (no writes, no purge), there is nothing to merge — or they would
        // answer each other's merge event with one of their own forever.
        let other_shape = shead.shape != cur.shape;
        if other_shape
            && ours_only.is_empty()
            && theirs_only
                .iter()
                .all(|(_, e)| e.ops.is_empty() && e.purge.is_empty())
        {
            return Ok((MergeReport::default(), Vec::new()));
        }
        let fast_forward = ours_only.is_empty() && !other_shape;
        // The merged state: our tree with their current slot of every id their new events
        // touched, by the usual (height, CID) maximum.
        let ids_theirs: std::collections::BTreeSet<&str> = theirs_only
            .iter()
            .flat_map(|(_, e)| e.ops.iter().map(|(id, _)| id.as_str()))
            .collect();
        let ids_ours: HashSet<&str> = ours_only
            .iter()
            .flat_map(|(_, e)| e.ops.iter().map(|(id, _)| id.as_str()))
            .collect();
        let mut ops: Vec<tree::Op> = Vec::new();
        let mut sides: Vec<(String, Option<Slot>, Option<Slot>)> = Vec::new();
        for id in &ids_theirs {
            let t = tree::get(&sv, shead.root.as_ref(), id.as_bytes())?;
            let o = tree::get(&dv, cur.root.as_ref(), id.as_bytes())?;
            if let Some(t) = t {
                ops.push((id.as_bytes().into(), Some(t)));
            }
            sides.push((id.to_string(), o, t));
        }
        let merged = tree::update(&dv, cur.root.as_ref(), &ops, Mode::Max, cur.shape)?;
        if fast_forward && merged.root != shead.root {
            return Err(Error::corrupt(
                format!("database '{}'", src.name),
                "its tree root is not the state of its events",
            ));
        }
        // Conflicts: changed on both sides (since the common history) to different values.
        let mut conflicts: Vec<(String, Option<Slot>, Option<Slot>)> = sides
            .iter()
            .filter(|(id, o, t)| {
                ids_ours.contains(id.as_str()) && o.and_then(|s| s.link) != t.and_then(|s| s.link)
            })
            .cloned()
            .collect();
        conflicts.sort_by(|a, b| a.0.cmp(&b.0));
        // Their values in the common history: the greatest slot among events both have.
        let ours_set: DigestSet<Cid> = ours_only.iter().map(|(c, _)| *c).collect();
        let mut ancestor: HashMap<String, Slot> = HashMap::new();
        if !conflicts.is_empty() {
            let wanted: HashSet<&str> = conflicts.iter().map(|c| c.0.as_str()).collect();
            clock::walk(&dv, &cur.heads, &mut |c, e| {
                if !ours_set.contains(c) {
                    for (id, l) in e.ops.iter().filter(|(id, _)| wanted.contains(id.as_str())) {
                        let s = Slot {
                            version: e.height,
                            link: *l,
                        };
                        ancestor.entry(id.clone()).or_insert(s).raise(s);
                    }
                }
                Ok(true)
            })?;
        }
        // One file: their new events and values, the merged tree, the merge event.
        let ours_too = if ours_only.is_empty() {
            &[][..]
        } else {
            &cur.heads[..]
        };
        let mut heads: Vec<Cid> = ours_too.iter().chain(&shead.heads).copied().collect();
        heads.sort();
        heads.dedup();
        let mut height = 0;
        for h in &cur.heads {
            height = height.max(dv.event(h)?.height);
        }
        for h in &shead.heads {
            height = height.max(sv.event(h)?.height);
        }
        // What the merge event records as lost: the values the merge decided against, and
        // the conflicts open between either side's own concurrent heads, which it joins (a
        // value that lost inside one side never wins the merge).
        let mut lost: BTreeMap<String, Vec<Cid>> = BTreeMap::new();
        for (id, o, t) in &conflicts {
            let loser = if theirs_win(o, t) { o } else { t };
            if let Some(l) = loser.and_then(|s| s.link) {
                lost.entry(id.clone()).or_default().push(l);
            }
        }
        if !fast_forward {
            for (v, hs) in [(&dv, &cur.heads), (&sv, &shead.heads)] {
                if hs.len() > 1 {
                    for (id, ls) in concurrent::open_conflicts(v, hs)? {
                        lost.entry(id).or_default().extend(ls);
                    }
                }
            }
        }
        let lost: Vec<(String, Vec<Cid>)> = lost
            .into_iter()
            .map(|(id, mut ls)| {
                ls.sort();
                ls.dedup();
                (id, ls)
            })
            .collect();
        let event = (!fast_forward).then(|| Event {
            parents: heads.clone(),
            height: height + 1,
            time: now_ms(),
            ops: Vec::new(),
            root: merged.root,
            purge: Vec::new(),
            conflicts: lost,
            source: Vec::new(),
            note: note.to_owned(),
        });
        let report = |event: Option<Cid>| {
            self.merge_report(
                &dv,
                &sv,
                event,
                fast_forward,
                &theirs_only,
                &sides,
                &conflicts,
                &ancestor,
            )
        };
        if dry_run {
            return Ok((report(None)?, Vec::new()));
        }
        let mut w = car::Writer::new(car::Meta {
            level: 0,
            time: now_ms(),
            roots: match &event {
                Some(e) => vec![Cid::of_cbor(&e.encode())],
                None => shead.heads.clone(),
            },
            replaces: vec![],
        });
        let mut heights = (u64::MAX, 0);
        // Versions this database purged that the source has (see `commit`): stored again.
        let mut again: Vec<Cid> = Vec::new();
        // As is: the source's files holding its new events and their versions.
        let mut taken: Vec<FileRef> = Vec::new();
        for (c, e) in &theirs_only {
            if as_is {
                let mut take = |f: &FileRef| {
                    if !taken.iter().any(|t| t.name == f.name) {
                        taken.push(f.clone());
                    }
                };
                take(sv.locate(c, Some(e.height))?.0);
                for l in e.ops.iter().filter_map(|(_, l)| *l) {
                    if shead.purged.binary_search(&l).is_ok() {
                        continue;
                    }
                    if head.purged.binary_search(&l).is_ok() {
                        again.push(l);
                    }
                    take(sv.locate(&l, Some(e.height))?.0);
                }
                continue;
            }
            heights = (heights.0.min(e.height), heights.1.max(e.height));
            for l in e.ops.iter().filter_map(|(_, l)| *l) {
                if shead.purged.binary_search(&l).is_ok() {
                    continue;
                }
                if head.purged.binary_search(&l).is_ok() {
                    again.push(l);
                }
                let body = sv.with_checked_block(&l, Some(e.height), |b| Ok(b.to_vec()))?;
                for set in doc::files::sets_of_body(&body) {
                    w.add_file_ref(l, FileName(set));
                }
                self.bring_filesets(src, std::iter::once(body.as_slice()))?;
                w.add(l, &body);
            }
            let b = sv.with_checked_block(c, Some(e.height), |b| Ok(b.to_vec()))?;
            w.add_event(*c, &b);
        }
        self.write_tree(&mut w, &merged)?;
        let ecid = match &event {
            Some(e) => {
                let b = e.encode();
                let c = Cid::of_cbor(&b);
                heights.1 = heights.1.max(e.height);
                w.add_event(c, &b);
                Some(c)
            }
            None => None,
        };
        let own = ecid.as_ref().zip(event.as_ref());
        doclog::write_log(
            &mut w,
            theirs_only
                .iter()
                .filter(|_| !as_is)
                .map(|(c, e)| (c, &**e))
                .chain(own),
        )?;
        let file = self.store_file(w, 0, heights)?;
        // Documents count: what the merged slots changed.
        let docs = cur.docs as i64 + tree::live_delta(&ops, &merged.previous);
        for (c, n) in merged.blocks.iter().map(|(c, _, n)| (c, n)) {
            self.store.cache.insert(
                CacheKey::Node(self.lineage, *c),
                Cached::Node(n.clone(), None),
            );
        }
        head.heads = match ecid {
            Some(c) => vec![c],
            None => shead.heads.clone(),
        };
        head.root = merged.root;
        head.base = merged.root;
        head.docs = docs.max(0) as u64;
        head.events += theirs_only.len() as u64 + u64::from(ecid.is_some());
        head.files_mut().insert(0, file);
        if as_is {
            self.take_files_as_is(head, taken, &ours_only, shead)?;
        }
        if !again.is_empty() {
            again.sort();
            head.purged.retain(|c| again.binary_search(c).is_err());
        }
        // Versions the source purged are gone here too: say so, not "missing" (but for those
        // this side's own new events wrote: stored here, as a write of a purged version is).
        let written_here: DigestSet<Cid> = ours_only
            .iter()
            .flat_map(|(_, e)| e.ops.iter().filter_map(|(_, l)| *l))
            .collect();
        let purged: Vec<Cid> = theirs_only
            .iter()
            .flat_map(|(_, e)| e.ops.iter().filter_map(|(_, l)| *l))
            .filter(|l| shead.purged.binary_search(l).is_ok() && !written_here.contains(l))
            .collect();
        if !purged.is_empty() {
            head.purged.extend(purged);
            head.purged.sort();
            head.purged.dedup();
        }
        Ok((report(ecid)?, Vec::new()))
    }

    /// The report of a merge: values of ours and of the common history read from `dv`, theirs
    /// from `sv`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn merge_report(
        &self,
        dv: &View,
        sv: &View,
        event: Option<Cid>,
        fast_forward: bool,
        theirs_only: &[(Cid, Arc<Event>)],
        sides: &[(String, Option<Slot>, Option<Slot>)],
        conflicts: &[(String, Option<Slot>, Option<Slot>)],
        ancestor: &HashMap<String, Slot>,
    ) -> Result<MergeReport> {
        let load = |v: &View, id: &str, s: &Option<Slot>| -> Result<Option<Value>> {
            match s {
                Some(Slot {
                    link: Some(l),
                    version,
                }) => match v.load_doc(id, l, *version) {
                    Ok(d) => Ok(Some(d)),
                    // A purged version is reported as such, not as an error of the merge.
                    Err(Error::Purged(..)) => {
                        Ok(Some(serde_json::json!({"_id": id, "_purged": true})))
                    }
                    Err(e) => Err(e),
                },
                _ => Ok(None),
            }
        };
        let mut report = MergeReport {
            event,
            fast_forward,
            events: theirs_only.len(),
            changed: sides
                .iter()
                .filter(|(_, o, t)| {
                    theirs_win(o, t) && o.and_then(|s| s.link) != t.and_then(|s| s.link)
                })
                .map(|(id, _, _)| id.clone())
                .collect(),
            conflicts: Vec::new(),
        };
        for (id, o, t) in conflicts {
            report.conflicts.push(Conflict {
                ancestor: load(dv, id, &ancestor.get(id).copied())?,
                ours: load(dv, id, o)?,
                theirs: load(sv, id, t)?,
                winner: if theirs_win(o, t) {
                    Side::Theirs
                } else {
                    Side::Ours
                },
                id: id.clone(),
            });
        }
        Ok(report)
    }

    /// Adds the nodes of `state`'s tree that are in no file yet (its new nodes and the pending
    /// ones it uses) to `w`, so the tree is whole in files once `w` is stored.
    pub(super) fn write_tree(&self, w: &mut car::Writer, state: &tree::Update) -> Result<()> {
        let fresh: DigestMap<Cid, (&[u8], &Arc<tree::Node>)> = state
            .blocks
            .iter()
            .map(|(c, b, n)| (*c, (b.as_slice(), n)))
            .collect();
        let pending = self.pending.read().unwrap_or_else(|p| p.into_inner());
        let mut stack: Vec<Cid> = state.root.into_iter().collect();
        let mut seen: DigestSet<Cid> = DigestSet::default();
        while let Some(c) = stack.pop() {
            if !seen.insert(c) {
                continue;
            }
            let (bytes, node): (&[u8], Arc<tree::Node>) = match fresh.get(&c) {
                Some((b, n)) => (b, (*n).clone()),
                None => match pending.get(&c) {
                    Some((b, n)) => (b, n.clone()),
                    None => continue, // in a file already, with all below it
                },
            };
            w.add_node(c, bytes);
            stack.extend_from_slice(node.children());
        }
        Ok(())
    }
}

/// The losing values of `id` the newest event naming it records (a merge's, or a commit's
/// joining concurrent heads), unless a later write settled it: then none.
fn recorded_losers(v: &View, id: &str) -> Result<Vec<Cid>> {
    let mut losers = Vec::new();
    clock::walk(v, &v.head.heads, &mut |_, e| {
        if e.ops.binary_search_by(|(k, _)| k.as_str().cmp(id)).is_ok() {
            return Ok(false); // settled by a later write
        }
        if let Some((_, ls)) = e.conflicts.iter().find(|(k, _)| k == id) {
            losers.extend_from_slice(ls);
            return Ok(false);
        }
        Ok(true)
    })?;
    Ok(losers)
}

impl Db {
    /// Makes the file-sets the document bodies `bodies` (taken from `src`) name readable here
    /// before they are committed: a file-set of `src`'s store this store lacks is copied as it
    /// is (same lineage, same key; checked against its name). A file-set of another lineage
    /// is sealed under another key: such a merge is refused, nothing written.
    pub(super) fn bring_filesets<'a>(
        &self,
        src: &Db,
        bodies: impl Iterator<Item = &'a [u8]>,
    ) -> Result<()> {
        let mut sets: Vec<FileName> = bodies
            .flat_map(doc::files::sets_of_body)
            .map(FileName)
            .collect();
        if sets.is_empty() {
            return Ok(());
        }
        sets.sort_unstable();
        sets.dedup();
        if src.lineage != self.lineage {
            return Err(Error::InvalidArgument(format!(
                "cannot merge documents with attached files from '{}' (another lineage: its \
                 files are sealed under another key); merge them without their files, or attach \
                 them again here",
                src.name
            )));
        }
        let (from, to) = (&src.store.filesets, &self.store.filesets);
        if Arc::ptr_eq(from, to) {
            return Ok(());
        }
        let _gc = self.store.gc_shared()?;
        for set in sets {
            if to.len(&set).is_ok() {
                continue;
            }
            let len = match from.len(&set) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue, // not there either
                Err(e) => return Err(Error::io(format!("file-set {set}"), e)),
            };
            let name = to
                .put_with(self.sync(), &mut |out| {
                    let mut h = blake3::Hasher::new();
                    let mut at = 0u64;
                    while at < len {
                        let n = (len - at).min(1 << 20) as usize;
                        let b = from.read_at(&set, at, n)?;
                        h.update(&b);
                        out.write_all(&b)?;
                        at += n as u64;
                    }
                    let name = FileName(*h.finalize().as_bytes());
                    if name != set {
                        return Err(std::io::Error::other(
                            "file-set bytes do not hash to its name",
                        ));
                    }
                    Ok(name)
                })
                .map_err(|e| Error::io(format!("file-set {set}"), e))?;
            debug_assert_eq!(name, set);
        }
        Ok(())
    }
}
