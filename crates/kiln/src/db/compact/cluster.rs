//! The layout of a compaction's output. First every tree leaf the new file keeps, in key
//! order, each followed by the document versions it names that the combined files hold, in one
//! segment where they fit (a *group*, up to [`car::GROUP_TARGET`] bytes); then the branch nodes
//! the file keeps, together; then everything else (events, older document versions) in file
//! order. A read that found a leaf in a file finds the document in the leaf's segment, or the
//! next one, without the file's index (see `View::locate`'s hint): a random get at a million
//! documents opens one segment instead of three (leaf, index page, document). The layout is a
//! writer's choice, not a format rule: readers treat it as a hint and fall back to the index.

use super::*;

/// Where every block of the combined files is: their index entries, and the entries sorted by
/// the first 8 bytes of their CIDs (16 bytes each, beside the entries themselves).
pub(super) struct Inputs {
    entries: Vec<Vec<car::Entry>>,
    by_cid: Vec<(u64, u32, u32)>,
}

fn lead(c: &Cid) -> u64 {
    let b = c.as_bytes();
    u64::from_le_bytes([b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11]])
}

impl Inputs {
    /// The entries of `sel`'s files, in file order each (`entries[i]` is `sel[i]`'s).
    pub(super) fn load(db: &Db, v: &View, sel: &[FileRef]) -> Result<Inputs> {
        let mut entries = Vec::with_capacity(sel.len());
        let mut by_cid = Vec::new();
        for (i, f) in sel.iter().enumerate() {
            let es = db.file_entries(v, f)?;
            by_cid.extend(
                es.iter()
                    .enumerate()
                    .map(|(j, e)| (lead(&e.cid), i as u32, j as u32)),
            );
            entries.push(es);
        }
        by_cid.sort_unstable_by_key(|x| x.0);
        Ok(Inputs { entries, by_cid })
    }

    /// How many entries the combined files have.
    pub(super) fn len(&self) -> usize {
        self.by_cid.len()
    }

    /// Every entry of file `i`, in file order.
    pub(super) fn of_file(&self, i: usize) -> &[car::Entry] {
        &self.entries[i]
    }

    /// Which file holds `cid`, and where.
    pub(super) fn find(&self, cid: &Cid) -> Option<(usize, &car::Entry)> {
        let l = lead(cid);
        let from = self.by_cid.partition_point(|x| x.0 < l);
        self.by_cid[from..]
            .iter()
            .take_while(|x| x.0 == l)
            .map(|&(_, i, j)| (i as usize, &self.entries[i as usize][j as usize]))
            .find(|(_, e)| e.cid == *cid)
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
    inputs: &Inputs,
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
                let Some((i, e)) = inputs.find(c) else {
                    continue;
                };
                held = block(v, sel, i, e)?;
                &held.0[held.1..held.1 + e.len as usize]
            }
        };
        let links = match memory.get(c) {
            Some((_, n)) => match &n.items {
                tree::Items::Leaf(slots) => Some(slots.iter().filter_map(|s| s.link).collect()),
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
        let values: Vec<(usize, &car::Entry)> = links
            .into_iter()
            .filter(|l| !purged(l) && !w.holds(l))
            .filter_map(|l| inputs.find(&l))
            .collect();
        let bytes = data.len()
            + values
                .iter()
                .map(|(_, e)| e.len as usize + 40)
                .sum::<usize>();
        w.begin_group(bytes).map_err(io)?;
        w.add_node(*c, data).map_err(io)?;
        for (i, e) in values {
            let (seg, off) = block(v, sel, i, e)?;
            w.add(e.cid, &seg[off..off + e.len as usize]).map_err(io)?;
        }
        w.end_group().map_err(io)?;
    }
    for (c, b) in &branches {
        w.add_node(*c, b).map_err(io)?;
    }
    Ok(())
}
