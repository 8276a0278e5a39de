//! Reading a tree: one key, a range of keys (either way), the differences of two trees.

use super::*;

/// Looks up one key.
pub fn get<S: NodeSource>(
    src: &S,
    root: Option<&Cid>,
    key: &[u8],
) -> Result<Option<Slot>, S::Error> {
    let Some(root) = root else { return Ok(None) };
    let mut node = src.node(root)?;
    loop {
        match &node.items {
            Items::Leaf(v) => {
                return Ok(node
                    .keys
                    .binary_search_by(|k| (**k).cmp(key))
                    .ok()
                    .map(|i| v[i]));
            }
            Items::Branch(c) => {
                let child = c[node.route(key)];
                if node.level == 1 {
                    return Ok(src.leaf(&child)?.get(&child, key)?);
                }
                let next = src.node(&child)?;
                if next.level + 1 != node.level {
                    return Err(TreeError {
                        cid: child,
                        what: "child at the wrong level",
                    }
                    .into());
                }
                node = next;
            }
        }
    }
}

/// Visits entries with `start <= key < end` in key order until `f` returns false.
pub fn range<S: NodeSource>(
    src: &S,
    root: Option<&Cid>,
    start: Option<&[u8]>,
    end: Option<&[u8]>,
    f: &mut dyn FnMut(&[u8], &Slot) -> Result<bool, S::Error>,
) -> Result<(), S::Error> {
    fn walk<S: NodeSource>(
        src: &S,
        node: &Node,
        start: Option<&[u8]>,
        end: Option<&[u8]>,
        f: &mut dyn FnMut(&[u8], &Slot) -> Result<bool, S::Error>,
    ) -> Result<bool, S::Error> {
        match &node.items {
            Items::Leaf(v) => in_leaf(&Entries::Node(&node.keys, v), start, end, f),
            Items::Branch(c) => {
                let from = start.map_or(0, |s| node.route(s));
                for (k, link) in node.keys.iter().zip(c).skip(from) {
                    if end.is_some_and(|e| **k >= *e) {
                        return Ok(false);
                    }
                    let more = if node.level == 1 {
                        // Leaves as a point read reads them (see `NodeSource::leaf`).
                        let leaf = src.leaf(link)?;
                        in_leaf(&leaf.entries(link)?, start, end, f)?
                    } else {
                        walk(src, &*child_of(src, node, link)?, start, end, f)?
                    };
                    if !more {
                        return Ok(false);
                    }
                }
                Ok(true)
            }
        }
    }
    /// Visits a leaf's entries from `start` until `end`; false once done (`end` or `f`).
    /// Both bounds are found by binary search (not by comparing each key with `end`).
    fn in_leaf<E>(
        entries: &Entries,
        start: Option<&[u8]>,
        end: Option<&[u8]>,
        f: &mut dyn FnMut(&[u8], &Slot) -> Result<bool, E>,
    ) -> Result<bool, E> {
        let from = start.map_or(0, |s| entries.lower_bound(s));
        let to = end.map_or(entries.len(), |e| entries.lower_bound(e));
        for i in from..to {
            if !f(entries.key(i), entries.slot(i))? {
                return Ok(false);
            }
        }
        // A key at or past `end` ends the walk.
        Ok(to == entries.len())
    }
    if let Some(root) = root {
        let node = src.node(root)?;
        walk(src, &node, start, end, f)?;
    }
    Ok(())
}

/// Visits entries with `start <= key < end` in descending key order until `f` returns false
/// ([`range`] backwards: a branch's children from the last one whose keys may lie below
/// `end`, down to the first one whose keys may reach `start`).
pub fn range_rev<S: NodeSource>(
    src: &S,
    root: Option<&Cid>,
    start: Option<&[u8]>,
    end: Option<&[u8]>,
    f: &mut dyn FnMut(&[u8], &Slot) -> Result<bool, S::Error>,
) -> Result<(), S::Error> {
    fn walk<S: NodeSource>(
        src: &S,
        node: &Node,
        start: Option<&[u8]>,
        end: Option<&[u8]>,
        f: &mut dyn FnMut(&[u8], &Slot) -> Result<bool, S::Error>,
    ) -> Result<bool, S::Error> {
        match &node.items {
            Items::Leaf(v) => in_leaf_rev(&Entries::Node(&node.keys, v), start, end, f),
            Items::Branch(c) => {
                // Children whose first key is below `end` (child i holds [k[i], k[i+1])).
                let upto = end.map_or(c.len(), |e| node.keys.partition_point(|k| **k < *e));
                for i in (0..upto).rev() {
                    let link = &c[i];
                    let more = if node.level == 1 {
                        let leaf = src.leaf(link)?;
                        in_leaf_rev(&leaf.entries(link)?, start, end, f)?
                    } else {
                        walk(src, &*child_of(src, node, link)?, start, end, f)?
                    };
                    // Keys before this child's first are below it: done once that is <= start.
                    if !more || start.is_some_and(|s| *node.keys[i] <= *s) {
                        return Ok(false);
                    }
                }
                Ok(true)
            }
        }
    }
    /// Visits a leaf's entries below `end` downwards until `start`; false once done.
    fn in_leaf_rev<E>(
        entries: &Entries,
        start: Option<&[u8]>,
        end: Option<&[u8]>,
        f: &mut dyn FnMut(&[u8], &Slot) -> Result<bool, E>,
    ) -> Result<bool, E> {
        let below_end = end.map_or(entries.len(), |e| entries.lower_bound(e));
        let from = start.map_or(0, |s| entries.lower_bound(s)).min(below_end);
        for i in (from..below_end).rev() {
            if !f(entries.key(i), entries.slot(i))? {
                return Ok(false);
            }
        }
        // A key below `start` ends the walk.
        Ok(from == 0)
    }
    if let Some(root) = root {
        let node = src.node(root)?;
        walk(src, &node, start, end, f)?;
    }
    Ok(())
}

/// Every key whose slot differs between the tree at `ra` (read from `a`) and the tree at `rb`
/// (read from `b`), in key order, with its slot on each side (`None`: absent). Subtrees with
/// the same CID on both sides are skipped without being read, so the cost follows the number
/// of differences (times the depth), not the size of the trees.
pub fn diff<A, B>(
    a: &A,
    ra: Option<&Cid>,
    b: &B,
    rb: Option<&Cid>,
    f: &mut dyn FnMut(&[u8], Option<&Slot>, Option<&Slot>),
) -> Result<(), A::Error>
where
    A: NodeSource,
    B: NodeSource<Error = A::Error>,
{
    if ra == rb {
        return Ok(());
    }
    // Lists of (CID, node) of one level that together cover every key of their tree.
    let mut la: Vec<(Cid, Arc<Node>)> = match ra {
        Some(r) => vec![(*r, a.node(r)?)],
        None => Vec::new(),
    };
    let mut lb: Vec<(Cid, Arc<Node>)> = match rb {
        Some(r) => vec![(*r, b.node(r)?)],
        None => Vec::new(),
    };
    let level = |l: &[(Cid, Arc<Node>)]| l.first().map_or(0, |n| n.1.level);
    loop {
        // Bring both lists to the same level, then drop the subtrees they share.
        while level(&la) > level(&lb) {
            la = children(a, &la)?;
        }
        while level(&lb) > level(&la) {
            lb = children(b, &lb)?;
        }
        let in_b: std::collections::HashSet<Cid> = lb.iter().map(|n| n.0).collect();
        let in_a: std::collections::HashSet<Cid> = la.iter().map(|n| n.0).collect();
        la.retain(|n| !in_b.contains(&n.0));
        lb.retain(|n| !in_a.contains(&n.0));
        if level(&la) == 0 && level(&lb) == 0 {
            break;
        }
        la = children(a, &la)?;
        lb = children(b, &lb)?;
    }
    let entries = |l: &[(Cid, Arc<Node>)]| -> Vec<(Arc<[u8]>, Slot)> {
        let mut v = Vec::new();
        for (_, n) in l {
            if let Items::Leaf(slots) = &n.items {
                v.extend(n.keys.iter().cloned().zip(slots.iter().copied()));
            }
        }
        v
    };
    let (ea, eb) = (entries(&la), entries(&lb));
    let (mut i, mut j) = (0, 0);
    while i < ea.len() || j < eb.len() {
        let ord = match (ea.get(i), eb.get(j)) {
            (Some(x), Some(y)) => x.0.cmp(&y.0),
            (Some(_), None) => Ordering::Less,
            _ => Ordering::Greater,
        };
        match ord {
            Ordering::Less => {
                f(&ea[i].0, Some(&ea[i].1), None);
                i += 1;
            }
            Ordering::Greater => {
                f(&eb[j].0, None, Some(&eb[j].1));
                j += 1;
            }
            Ordering::Equal => {
                if ea[i].1 != eb[j].1 {
                    f(&ea[i].0, Some(&ea[i].1), Some(&eb[j].1));
                }
                i += 1;
                j += 1;
            }
        }
    }
    Ok(())
}

fn children<S: NodeSource>(
    src: &S,
    l: &[(Cid, Arc<Node>)],
) -> Result<Vec<(Cid, Arc<Node>)>, S::Error> {
    let mut out = Vec::new();
    for (_, n) in l {
        for c in n.children() {
            out.push((*c, src.node(c)?));
        }
    }
    Ok(out)
}
