//! Tree nodes kept in memory (`pending`): the current tree's nodes not yet in any file (level-0
//! diffs hold none), made by this handle's commits or rebuilt from the level-0 events; written
//! out by the next level-0 compaction.

use super::*;

/// The nodes reachable from `from` through the in-memory nodes `p`, not entering `stop`.
pub(super) fn pending_reach(
    p: &DigestMap<Cid, (Arc<[u8]>, Arc<tree::Node>)>,
    from: Option<Cid>,
    stop: &DigestSet<Cid>,
) -> DigestSet<Cid> {
    let mut seen: DigestSet<Cid> = DigestSet::default();
    let mut stack: Vec<Cid> = from.into_iter().collect();
    while let Some(c) = stack.pop() {
        if stop.contains(&c) || seen.contains(&c) {
            continue;
        }
        let Some((_, n)) = p.get(&c) else { continue };
        seen.insert(c);
        stack.extend_from_slice(n.children());
    }
    seen
}

impl Db {
    /// Keeps in `pending` only the nodes of `root`'s tree that `base`'s tree (whole in files)
    /// lacks: after a level-0 compaction that ran beside later commits, their new nodes stay
    /// (clearing them would make the next commit rebuild its tree from the clock), while the
    /// nodes the compaction wrote and those of superseded trees go.
    pub(super) fn prune_pending(&self, root: Option<Cid>, base: Option<Cid>) {
        let mut p = self.pending.write().unwrap_or_else(|p| p.into_inner());
        if root == base || root.is_none_or(|r| !p.contains_key(&r)) {
            p.clear();
            return;
        }
        let written = pending_reach(&p, base, &DigestSet::default());
        let keep = pending_reach(&p, root, &written);
        p.retain(|c, _| keep.contains(c));
    }

    pub(super) fn add_pending<'a>(
        &self,
        nodes: impl Iterator<Item = &'a (Cid, Vec<u8>, Arc<tree::Node>)>,
    ) {
        let mut p = self.pending.write().unwrap_or_else(|p| p.into_inner());
        for (c, b, n) in nodes {
            p.insert(*c, (b.as_slice().into(), n.clone()));
        }
    }

    /// Makes the nodes of `head`'s tree readable: they are in the files, or in `pending`, or
    /// are rebuilt from the base tree and the writes of the events in the level-0 files.
    pub(super) fn ensure_tree(&self, head: &Head) -> Result<()> {
        let Some(root) = head.root else {
            return Ok(());
        };
        if head.base == head.root
            || self
                .pending
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .contains_key(&root)
        {
            return Ok(());
        }
        let u = self.rebuild_tree(head)?;
        self.add_pending(u.blocks.iter());
        Ok(())
    }

    /// The nodes of `head`'s tree that are in no file: a private copy, which stays whole even
    /// if `pending` is cleared meanwhile (a background compaction reads it without the lock).
    pub(super) fn memory_tree(
        &self,
        head: &Head,
    ) -> Result<DigestMap<Cid, (Arc<[u8]>, Arc<tree::Node>)>> {
        let Some(root) = head.root else {
            return Ok(DigestMap::default());
        };
        if head.base == head.root {
            return Ok(DigestMap::default());
        }
        {
            let p = self.pending.read().unwrap_or_else(|p| p.into_inner());
            if p.contains_key(&root) {
                return Ok(p.clone());
            }
        }
        let u = self.rebuild_tree(head)?;
        self.add_pending(u.blocks.iter());
        Ok(u.blocks
            .iter()
            .map(|(c, b, n)| (*c, (Arc::from(b.as_slice()), n.clone())))
            .collect())
    }

    /// Rebuilds the nodes of `head`'s tree that are in no file: the base tree (in files) with
    /// the writes of the events in the level-0 files, checked against the head's root.
    pub(super) fn rebuild_tree(&self, head: &Head) -> Result<tree::Update> {
        let v = View::new(self, head);
        let mut latest: BTreeMap<Arc<[u8]>, Slot> = BTreeMap::new();
        for f in head.files.iter().filter(|f| f.level == 0) {
            for e in self.file_entries(&v, f)?.iter().filter(|e| e.event) {
                // Read where the file's own entries say, not looked for through every file.
                let ev = v.event_in(&e.cid, Some((f, e)))?;
                for (id, link) in &ev.ops {
                    let s = Slot {
                        version: ev.height,
                        link: *link,
                    };
                    tree::raise_into(&mut latest, id.as_bytes().into(), s);
                }
            }
        }
        let ops: Vec<tree::Op> = latest.into_iter().map(|(k, s)| (k, Some(s))).collect();
        let u = tree::update(&v, head.base.as_ref(), &ops, Mode::Max, head.shape)?;
        if u.root != head.root {
            return Err(Error::corrupt(
                format!("head record of '{}'", self.name),
                "its tree root is not its base tree with the writes of its level-0 events",
            ));
        }
        Ok(u)
    }
}
