//! The layout of a compaction's output. First every tree leaf the new file keeps, in key
//! order, each followed by the document versions it names that the combined files hold, in one
//! segment where they fit (a *group*, up to [`car::GROUP_TARGET`] bytes); then the branch nodes
//! the file keeps, together; then everything else (events, older document versions) in file
//! order. A read that found a leaf in a file finds the document in the leaf's segment, or the
//! next one, without the file's index (see `View::locate`'s hint): a random get at a million
//! documents opens one segment instead of three (leaf, index page, document). The layout is a
//! writer's choice, not a format rule: readers treat it as a hint and fall back to the index.

use super::*;

/// The tree nodes the combined files hold, each with the position (in the merge's list) of
/// a file holding it, by the first 8 digest bytes of its CID (~16 bytes each; a map of whole
/// CIDs took ~48, and at a million documents under updates a merge's files hold hundreds of
/// thousands of nodes, most of them superseded). A CID whose 8 bytes another node's has is
/// kept whole apart; one that merely shares them with a node here reads as here: the walk
/// then looks at a node it need not have, and [`Sources::node`] does not find it, so the
/// merge writes it nowhere — it stays where it is.
#[derive(Default)]
pub(super) struct NodesHere {
    by_lead: DigestMap<u64, u32>,
    clashes: DigestMap<Cid, u32>,
}

impl NodesHere {
    /// Notes that file `file` holds node `c` (a node in two files: either).
    pub(super) fn insert(&mut self, c: Cid, file: u32) {
        use std::collections::hash_map::Entry;
        match self.by_lead.entry(c.lead()) {
            Entry::Vacant(v) => {
                v.insert(file);
            }
            // Another node of the same file with the same 8 bytes is found there too.
            Entry::Occupied(o) if *o.get() == file => {}
            // Taken for another file (by another CID, or by this one stored twice): kept
            // whole, and the exact map answers first.
            Entry::Occupied(_) => {
                self.clashes.insert(c, file);
            }
        }
    }

    /// Whether `c` may be one of the nodes (never false for one that is).
    pub(super) fn may_hold(&self, c: &Cid) -> bool {
        self.clashes.contains_key(c) || self.by_lead.contains_key(&c.lead())
    }

    /// The file most likely to hold `c`: its own if kept whole, else the one noted for its 8
    /// bytes.
    fn file_of(&self, c: &Cid) -> Option<u32> {
        self.clashes
            .get(c)
            .or_else(|| self.by_lead.get(&c.lead()))
            .copied()
    }
}

/// Where the combined files' blocks are, found through the files' indexes (held by the
/// handle; index pages through the cache) rather than a list of every entry: at a million
/// documents under random updates that list (68 bytes per block) was a quarter of a merge's
/// memory. Which file holds each tree node is known from the first pass (`nodes`).
pub(super) struct Sources<'a> {
    v: &'a View<'a>,
    sel: &'a [FileRef],
    indexes: Vec<Arc<car::Index>>,
    nodes: NodesHere,
    /// Each file's event heights `(lowest, highest, position in sel)`, by lowest height.
    heights: Vec<(u64, u64, usize)>,
    /// Whether no two files' heights overlap (then one binary search finds the file).
    disjoint: bool,
}

impl<'a> Sources<'a> {
    /// The files `sel` (seen through `v`), whose tree nodes are `nodes` (node → position in
    /// `sel`).
    pub(super) fn new(
        v: &'a View<'a>,
        sel: &'a [FileRef],
        nodes: NodesHere,
    ) -> Result<Sources<'a>> {
        let indexes = sel.iter().map(|f| v.db.index(f)).collect::<Result<_>>()?;
        let mut heights: Vec<(u64, u64, usize)> = sel
            .iter()
            .enumerate()
            .map(|(i, f)| (f.heights.0, f.heights.1, i))
            .collect();
        heights.sort_unstable();
        let disjoint = heights.windows(2).all(|w| w[0].1 < w[1].0);
        Ok(Sources {
            v,
            sel,
            indexes,
            nodes,
            heights,
            disjoint,
        })
    }

    /// How many blocks the combined files hold.
    pub(super) fn len(&self) -> usize {
        self.indexes.iter().map(|i| i.block_count()).sum()
    }

    /// Every entry of file `i`, in file order (one file's at a time).
    pub(super) fn of_file(&self, i: usize) -> Result<Vec<car::Entry>> {
        self.v.db.file_entries(self.v, &self.sel[i])
    }

    /// Which file holds tree node `c`, and where; `None` when none of them does.
    pub(super) fn node(&self, c: &Cid) -> Result<Option<(usize, car::Entry)>> {
        let Some(first) = self.nodes.file_of(c) else {
            return Ok(None);
        };
        // The file noted first; the others when it is not there (8 bytes shared).
        let first = first as usize;
        let order = std::iter::once(first).chain((0..self.sel.len()).filter(|&i| i != first));
        for i in order {
            if let Some(e) = self.v.probe_in(&self.sel[i], &self.indexes[i], c)? {
                return Ok(Some((i, e)));
            }
        }
        Ok(None)
    }

    /// Where document version `c`, named by a slot of version `version`, is in the files
    /// whose event heights cover that version (where its transaction stored it). `None`
    /// also when it is elsewhere in the combined files (stored once under an earlier write
    /// of equal contents): the merge then copies it with the rest, not beside the leaf.
    pub(super) fn value(&self, c: &Cid, version: u64) -> Result<Option<(usize, car::Entry)>> {
        // The files whose heights start at or below `version`; with disjoint heights only
        // the last of them can cover it (a hundred diffs, each its own height, were looked
        // at one by one for every document a leaf names).
        let upto = self.heights.partition_point(|h| h.0 <= version);
        let from = if self.disjoint {
            upto.saturating_sub(1)
        } else {
            0
        };
        for &(lo, hi, i) in &self.heights[from..upto] {
            if lo <= version && version <= hi {
                if let Some(e) = self.v.probe_in(&self.sel[i], &self.indexes[i], c)? {
                    return Ok(Some((i, e)));
                }
            }
        }
        Ok(None)
    }
}

/// A block of the combined files, checked against its CID (the segment it is in, kept alive).
fn block(v: &View, sel: &[FileRef], i: usize, e: &car::Entry) -> Result<(Arc<Vec<u8>>, usize)> {
    let f = &sel[i];
    let seg = v.segment(f, e.seg)?;
    car::block_in(&seg, e).map_err(|x| Error::format(format!("file {}", f.name), x))?;
    Ok((seg, e.off as usize))
}

/// Writes the kept tree nodes `order` (pre-order, keys ascending) as described in the module
/// doc: leaves with the document versions they name (unless `purged`), then branches. A node
/// comes from `memory` (built, not yet in a file) or from the combined files. A node marked
/// as taken for a leaf unread must be one.
pub(super) fn write_tree(
    v: &View,
    sel: &[FileRef],
    sources: &Sources,
    order: &[(Cid, bool)],
    memory: &DigestMap<Cid, (Arc<[u8]>, Arc<tree::Node>)>,
    purged: &dyn Fn(&Cid) -> bool,
    w: &mut car::StreamWriter,
) -> Result<()> {
    let io = |e| Error::io(v.db.store.root.join("files"), e);
    // Branches are written after every group, from the bytes read here (one read and hash
    // check per node).
    let mut branches: Vec<(Cid, Arc<[u8]>)> = Vec::new();
    for (c, unread_leaf) in order {
        let held;
        let data: &[u8] = match memory.get(c) {
            Some((b, _)) => b,
            None => {
                let Some((i, e)) = sources.node(c)? else {
                    continue;
                };
                held = block(v, sel, i, &e)?;
                &held.0[held.1..held.1 + e.len as usize]
            }
        };
        let links = match memory.get(c) {
            Some((_, n)) => match &n.items {
                tree::Items::Leaf(slots) => Some(tree::linked(slots)),
                tree::Items::Branch(_) => None,
            },
            None => tree::Leaf::links_of(data).map_err(|x| v.corrupt_cid(c, x.0))?,
        };
        let Some(links) = links else {
            if *unread_leaf {
                // Its parent is at level 1: what is below it was not looked for (reads fail
                // on such a tree too).
                return Err(v.corrupt_cid(c, "a level-1 tree node links a node above level 0"));
            }
            branches.push((*c, Arc::from(data)));
            continue;
        };
        let mut values: Vec<(usize, car::Entry)> = Vec::with_capacity(links.len());
        for (l, version) in links {
            if !purged(&l) && !w.holds(&l) {
                values.extend(sources.value(&l, version)?);
            }
        }
        let bytes = data.len()
            + values
                .iter()
                .map(|(_, e)| e.len as usize + 40)
                .sum::<usize>();
        w.begin_group(bytes).map_err(io)?;
        w.add_node(*c, data).map_err(io)?;
        for (i, e) in values {
            let (seg, off) = block(v, sel, i, &e)?;
            w.add(e.cid, &seg[off..off + e.len as usize]).map_err(io)?;
        }
        w.end_group().map_err(io)?;
    }
    for (c, b) in &branches {
        w.add_node(*c, b).map_err(io)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A dag-cbor CID whose digest starts with the 8 bytes of `lead` and ends with `tail`.
    fn cid(lead: u64, tail: u8) -> Cid {
        let mut b = [tail; crate::format::block::cid::CID_LEN];
        b[..4].copy_from_slice(&[0x01, 0x71, 0x12, 0x20]);
        b[4..12].copy_from_slice(&lead.to_le_bytes());
        Cid::from_bytes(&b).unwrap()
    }

    #[test]
    fn nodes_that_share_their_first_digest_bytes_are_told_apart() {
        let mut here = NodesHere::default();
        let (a, b, c, elsewhere) = (cid(7, 1), cid(7, 2), cid(7, 3), cid(7, 4));
        here.insert(a, 0);
        here.insert(b, 1); // same 8 bytes, another file: kept whole
        here.insert(c, 0); // same 8 bytes, the same file as `a`
        here.insert(a, 2); // `a` stored twice
        assert!([0, 2].contains(&here.file_of(&a).unwrap()));
        assert_eq!(here.file_of(&b), Some(1));
        assert_eq!(here.file_of(&c), Some(0));
        for n in [a, b, c] {
            assert!(here.may_hold(&n));
        }
        // Sharing the 8 bytes reads as here (Sources::node then finds it in no file);
        // other bytes do not.
        assert!(here.may_hold(&elsewhere));
        assert!(!here.may_hold(&cid(8, 1)));
        assert_eq!(here.file_of(&cid(8, 1)), None);
    }
}
