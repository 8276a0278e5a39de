//! Writing a tree: a batch of changes applied to a root, the nodes on the changed paths
//! rebuilt, subtrees without changes reused by CID.

use super::*;

/// One change to apply: `Some(slot)` sets (subject to [`Mode`]), `None` removes the key.
pub type Op = (Arc<[u8]>, Option<Slot>);

/// Result of [`update`]: the new root and the nodes that did not exist before.
pub struct Update {
    pub root: Option<Cid>,
    /// New nodes, each with its CID, encoding and decoded form; every one is reachable from
    /// `root`.
    pub blocks: Vec<(Cid, Vec<u8>, Arc<Node>)>,
    /// New leaves made as [`Leaf`]s (their encoding inside) rather than nodes: a new tree's,
    /// from [`build_new`]; reachable from `root` as `blocks` are. Empty from [`update`].
    pub leaves: Vec<(Cid, Arc<Leaf>)>,
    /// For each op, in order: the slot the key had before (`None` when absent); empty when
    /// the tree was empty (every key was absent).
    pub previous: Vec<Option<Slot>>,
}

/// Applies `ops` (sorted by key, keys unique) to the tree at `root`, of `shape`.
pub fn update<S: NodeSource>(
    src: &S,
    root: Option<&Cid>,
    ops: &[Op],
    mode: Mode,
    shape: Shape,
) -> Result<Update, S::Error> {
    debug_assert!(
        ops.windows(2).all(|w| w[0].0 < w[1].0),
        "ops must be sorted and unique"
    );
    if ops.is_empty() {
        return Ok(Update {
            root: root.copied(),
            blocks: Vec::new(),
            leaves: Vec::new(),
            previous: Vec::new(),
        });
    }
    if let ([(key, new)], Some(r)) = (ops, root) {
        if let Some(u) = update_one(src, r, key, *new, mode, shape)? {
            return Ok(u);
        }
    }
    rebuild(src, root, ops, mode, shape)
}

/// The general update: walks the tree along the ops, re-deciding node boundaries.
pub(super) fn rebuild<S: NodeSource>(
    src: &S,
    root: Option<&Cid>,
    ops: &[Op],
    mode: Mode,
    shape: Shape,
) -> Result<Update, S::Error> {
    // (Nothing had a slot in an empty tree.)
    let previous = match root {
        Some(_) => vec![None; ops.len()],
        None => Vec::new(),
    };
    let mut b = Builder::new(shape, mode, previous);
    match root {
        Some(r) => {
            let node = src.node(r)?;
            b.walk(src, &node, ops, 0)?;
        }
        None if ops.len() >= SHARED_LEAVES && ops.iter().all(|o| o.1.is_some()) => {
            b.fresh_leaves(ops, false)
        }
        None => b.merge_leaf(&[], &[], ops, 0),
    }
    b.finish(src)
}

/// Entries sorted by key (keys unique), read by position: what [`build_new`] makes a tree
/// of. The caller keeps them in whatever form is cheapest for it (an index build: each
/// thread's entries and the order that merges them, not one merged copy).
pub trait Sorted: Sync {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The key at position `i`.
    fn key(&self, i: usize) -> &[u8];
    /// The key at position `i` as a node keeps it.
    fn key_arc(&self, i: usize) -> Arc<[u8]> {
        Arc::from(self.key(i))
    }
    /// The change at position `i`: a set, or `None`, a removal.
    fn slot(&self, i: usize) -> Option<Slot>;
}

impl Sorted for [Op] {
    fn len(&self) -> usize {
        <[Op]>::len(self)
    }
    fn key(&self, i: usize) -> &[u8] {
        &self[i].0
    }
    fn key_arc(&self, i: usize) -> Arc<[u8]> {
        self[i].0.clone()
    }
    fn slot(&self, i: usize) -> Option<Slot> {
        self[i].1
    }
}

/// A new tree of `entries`: what [`update`] of an empty tree with them makes, read where
/// they are (not copied into one list of ops) when every entry is a set, its leaves then
/// made as [`Leaf`]s (in [`Update::leaves`]: no node, no allocation per key).
pub fn build_new<S: NodeSource, E: Sorted + ?Sized>(
    src: &S,
    entries: &E,
    shape: Shape,
) -> Result<Update, S::Error> {
    let n = entries.len();
    debug_assert!((1..n).all(|i| entries.key(i - 1) < entries.key(i)));
    // (A removal among them: nothing to remove from an empty tree, as `update` knows.)
    if n < SHARED_LEAVES || (0..n).any(|i| entries.slot(i).is_none()) {
        let ops: Vec<Op> = (0..n)
            .map(|i| (entries.key_arc(i), entries.slot(i)))
            .collect();
        return update(src, None, &ops, Mode::Overwrite, shape);
    }
    let mut b = Builder::new(shape, Mode::Overwrite, Vec::new());
    b.fresh_leaves(entries, true);
    b.finish(src)
}

/// Entries from which a new tree's leaves are encoded and hashed on two threads
/// ([`Builder::fresh_leaves`]): below, handing half over costs more than it saves.
pub(super) const SHARED_LEAVES: usize = 4096;
/// Leaves a thread encodes and hashes at a time when they are shared between two.
const LEAF_PIECE: usize = 64;

/// A leaf [`Builder::fresh_leaves`] made: a node with its encoding, or a [`Leaf`].
enum Fresh {
    Node(Arc<Node>, Vec<u8>),
    Leaf(Arc<Leaf>),
}

/// One key's change by path copying: the leaf and the branch nodes above it are copied with
/// the one entry and the child links changed, without re-deciding any node boundary. Exact only
/// when the change moves no boundary. A new value for a key moves none (boundaries depend on
/// keys and positions only). Of a [`Shape::Mod16`] tree, an insertion or deletion moves none
/// either when the key is not a boundary at level 0, is not (and does not become) the first
/// key of its leaf, and does not go after a leaf's closing boundary key, and a deletion leaves
/// its leaf non-empty; of a [`Shape::Bounded`] tree, one shifts the positions after it, so it
/// is never path-copied. `None` when those do not hold: the caller then rebuilds in general.
pub(super) fn update_one<S: NodeSource>(
    src: &S,
    root: &Cid,
    key: &Arc<[u8]>,
    new: Option<Slot>,
    mode: Mode,
    shape: Shape,
) -> Result<Option<Update>, S::Error> {
    let mut path: Vec<(Arc<Node>, usize)> = Vec::new();
    let mut node = src.node(root)?;
    while let Items::Branch(kids) = &node.items {
        let i = node.route(key);
        let child = child_of(src, &node, &kids[i])?;
        path.push((node.clone(), i));
        node = child;
    }
    let Items::Leaf(slots) = &node.items else {
        unreachable!("the loop above ends at a leaf");
    };
    let unchanged = |previous: Option<Slot>| {
        Some(Update {
            root: Some(*root),
            blocks: Vec::new(),
            leaves: Vec::new(),
            previous: vec![previous],
        })
    };
    let mut keys = node.keys.clone();
    let mut slots = slots.clone();
    let previous = match (node.keys.binary_search(key), new) {
        (Ok(i), Some(s)) => {
            let old = slots[i];
            if old == s || (mode == Mode::Max && old.rank(&s) == Ordering::Greater) {
                return Ok(unchanged(Some(old)));
            }
            slots[i] = s;
            Some(old)
        }
        (Ok(_), None) | (Err(_), Some(_)) if shape == Shape::Bounded => return Ok(None),
        (Ok(i), None) => {
            if i == 0 || is_boundary(shape, key, 0, 0) {
                return Ok(None);
            }
            keys.remove(i);
            Some(slots.remove(i))
        }
        (Err(_), None) => return Ok(unchanged(None)),
        (Err(i), Some(s)) => {
            let closed = i == keys.len() && is_boundary(shape, &keys[i - 1], 0, 0);
            if i == 0 || closed || is_boundary(shape, key, 0, 0) {
                return Ok(None);
            }
            keys.insert(i, key.clone());
            slots.insert(i, s);
            None
        }
    };
    let mut blocks = Vec::with_capacity(path.len() + 1);
    let mut built = Node {
        level: 0,
        keys,
        items: Items::Leaf(slots),
    };
    loop {
        let bytes = built.encode();
        let cid = Cid::of_cbor(&bytes);
        blocks.push((cid, bytes, Arc::new(built)));
        let Some((parent, i)) = path.pop() else {
            break;
        };
        let mut kids = parent.children().to_vec();
        kids[i] = cid;
        built = Node {
            level: parent.level,
            keys: parent.keys.clone(),
            items: Items::Branch(kids),
        };
    }
    blocks.reverse(); // root first, as the general path lists them
    Ok(Some(Update {
        root: Some(blocks[0].0),
        blocks,
        leaves: Vec::new(),
        previous: vec![previous],
    }))
}

struct Level {
    keys: Vec<Arc<[u8]>>,
    slots: Vec<Slot>,
    kids: Vec<Cid>,
    pushes: u64,
}

struct Builder {
    shape: Shape,
    levels: Vec<Level>,
    out: Vec<(u8, Cid, Arc<Node>, Vec<u8>)>,
    /// Leaves made as [`Leaf`]s ([`Builder::fresh_leaves`] for [`build_new`]).
    leaves: Vec<(Cid, Arc<Leaf>)>,
    previous: Vec<Option<Slot>>,
    mode: Mode,
}

impl Builder {
    fn new(shape: Shape, mode: Mode, previous: Vec<Option<Slot>>) -> Builder {
        Builder {
            shape,
            levels: Vec::new(),
            out: Vec::new(),
            leaves: Vec::new(),
            previous,
            mode,
        }
    }

    fn level(&mut self, l: u8) -> &mut Level {
        while self.levels.len() <= l as usize {
            self.levels.push(Level {
                keys: Vec::new(),
                slots: Vec::new(),
                kids: Vec::new(),
                pushes: 0,
            });
        }
        &mut self.levels[l as usize]
    }

    /// No partly-built node at levels `0..=l`: the next item starts a fresh node at each.
    fn clean_through(&self, l: u8) -> bool {
        self.levels
            .iter()
            .take(l as usize + 1)
            .all(|x| x.keys.is_empty())
    }

    fn push_slot(&mut self, key: Arc<[u8]>, slot: Slot) {
        let shape = self.shape;
        let lv = self.level(0);
        let boundary = is_boundary(shape, &key, 0, lv.keys.len() + 1);
        lv.keys.push(key);
        lv.slots.push(slot);
        lv.pushes += 1;
        if boundary {
            self.close(0);
        }
    }

    fn push_child(&mut self, l: u8, key: Arc<[u8]>, cid: Cid) {
        let shape = self.shape;
        let lv = self.level(l);
        let boundary = is_boundary(shape, &key, l, lv.keys.len() + 1);
        lv.keys.push(key);
        lv.kids.push(cid);
        lv.pushes += 1;
        if boundary {
            self.close(l);
        }
    }

    fn close(&mut self, l: u8) {
        let lv = self.level(l);
        if lv.keys.is_empty() {
            return;
        }
        // Exact-size copies; the level keeps its buffers for the next node.
        let keys: Vec<Arc<[u8]>> = lv.keys.drain(..).collect();
        let items = if l == 0 {
            Items::Leaf(lv.slots.drain(..).collect())
        } else {
            Items::Branch(lv.kids.drain(..).collect())
        };
        let first = keys[0].clone();
        let node = Node {
            level: l,
            keys,
            items,
        };
        let bytes = node.encode();
        let cid = Cid::of_cbor(&bytes);
        self.out.push((l, cid, Arc::new(node), bytes));
        self.push_child(l + 1, first, cid);
    }

    /// The leaves of a new tree holding `ops` (sorted, every one a set), their boundaries
    /// decided here in order (cheap: a hash of each key), then encoded and hashed on two
    /// threads, then handed to level 1 in order. The same nodes as pushing each entry.
    fn fresh_leaves<E: Sorted + ?Sized>(&mut self, entries: &E, as_leaves: bool) {
        let total = entries.len();
        let mut ends = Vec::with_capacity(total / BOUNDED_MIN + 1);
        let mut start = 0;
        for i in 0..total {
            if is_boundary(self.shape, entries.key(i), 0, i - start + 1) {
                ends.push(i + 1);
                start = i + 1;
            }
        }
        if start < total {
            ends.push(total); // the level's last leaf
        }
        // Every entry is a set here. Sized at once: a filtered collect grows by doubling,
        // reallocating, and leaves up to half its room unused (fresh memory, thousands of
        // leaves).
        let slots = |from: usize, to: usize| {
            let mut v = Vec::with_capacity(to - from);
            v.extend((from..to).filter_map(|i| entries.slot(i)));
            v
        };
        let leaf = |end_at: usize| {
            let (from, to) = (if end_at == 0 { 0 } else { ends[end_at - 1] }, ends[end_at]);
            if as_leaves {
                let leaf = Leaf::of((from..to).map(|i| entries.key(i)), slots(from, to));
                (Cid::of_cbor(leaf.encoding()), Fresh::Leaf(Arc::new(leaf)))
            } else {
                let node = Node {
                    level: 0,
                    keys: (from..to).map(|i| entries.key_arc(i)).collect(),
                    items: Items::Leaf(slots(from, to)),
                };
                let bytes = node.encode();
                (Cid::of_cbor(&bytes), Fresh::Node(Arc::new(node), bytes))
            }
        };
        let numbers: Vec<usize> = (0..ends.len()).collect();
        let (pieces, _) = crate::util::par::map_chunks(
            &numbers,
            LEAF_PIECE,
            || (),
            |(), _, nums| nums.iter().map(|&n| leaf(n)).collect::<Vec<_>>(),
        );
        self.level(0);
        // (The leaves, and the nodes above them: about one for every BOUNDED_MIN below.)
        let upper = ends.len() / (BOUNDED_MIN - 1) + 1;
        if as_leaves {
            self.leaves.reserve(ends.len());
            self.out.reserve(upper);
        } else {
            self.out.reserve(ends.len() + upper);
        }
        for (cid, made) in pieces.into_iter().flatten() {
            let first = match made {
                Fresh::Node(node, bytes) => {
                    let first = node.keys[0].clone();
                    self.out.push((0, cid, node, bytes));
                    first
                }
                Fresh::Leaf(leaf) => {
                    let first = Arc::from(leaf.first_key());
                    self.leaves.push((cid, leaf));
                    first
                }
            };
            self.push_child(1, first, cid);
        }
    }

    fn merge_leaf(&mut self, keys: &[Arc<[u8]>], slots: &[Slot], ops: &[Op], op_base: usize) {
        let (mut i, mut j) = (0, 0);
        while i < keys.len() || j < ops.len() {
            let ord = match (keys.get(i), ops.get(j)) {
                (Some(k), Some(o)) => (**k).cmp(&*o.0),
                (Some(_), None) => Ordering::Less,
                _ => Ordering::Greater,
            };
            match ord {
                Ordering::Less => {
                    self.push_slot(keys[i].clone(), slots[i]);
                    i += 1;
                }
                Ordering::Equal => {
                    let old = slots[i];
                    self.previous[op_base + j] = Some(old);
                    match ops[j].1 {
                        None => {}
                        Some(new) => {
                            let keep_old =
                                self.mode == Mode::Max && old.rank(&new) == Ordering::Greater;
                            self.push_slot(keys[i].clone(), if keep_old { old } else { new });
                        }
                    }
                    i += 1;
                    j += 1;
                }
                Ordering::Greater => {
                    if let Some(new) = ops[j].1 {
                        self.push_slot(ops[j].0.clone(), new);
                    }
                    j += 1;
                }
            }
        }
    }

    fn walk<S: NodeSource>(
        &mut self,
        src: &S,
        node: &Node,
        ops: &[Op],
        op_base: usize,
    ) -> Result<(), S::Error> {
        let kids = match &node.items {
            Items::Leaf(slots) => {
                self.merge_leaf(&node.keys, slots, ops, op_base);
                return Ok(());
            }
            Items::Branch(k) => k,
        };
        let n = kids.len();
        let mut at = 0;
        for (c, kid) in kids.iter().enumerate() {
            let end = if c + 1 < n {
                at + ops[at..].partition_point(|o| *o.0 < *node.keys[c + 1])
            } else {
                ops.len()
            };
            let mine = &ops[at..end];
            if mine.is_empty() && self.clean_through(node.level - 1) {
                self.push_child(node.level, node.keys[c].clone(), *kid);
            } else {
                let child = child_of(src, node, kid)?;
                self.walk(src, &child, mine, op_base + at)?;
            }
            at = end;
        }
        Ok(())
    }

    fn finish<S: NodeSource>(mut self, src: &S) -> Result<Update, S::Error> {
        let mut l: u8 = 0;
        let mut root = loop {
            if l as usize >= self.levels.len() {
                break None;
            }
            let top = self.levels[l as usize + 1..].iter().all(|x| x.pushes == 0);
            let lv = &self.levels[l as usize];
            if top {
                if lv.keys.is_empty() {
                    break None; // nothing was ever pushed: the tree is empty
                }
                if l > 0 && lv.keys.len() == 1 && lv.pushes == 1 {
                    break Some(lv.kids[0]);
                }
            }
            self.close(l);
            l += 1;
        };
        // A root never has a single child: strip such nodes (built here or reused).
        while let Some(r) = root {
            if self.leaves.iter().any(|x| x.0 == r) {
                break; // a leaf made here
            }
            let node = match self.out.iter().find(|x| x.1 == r) {
                Some(x) => x.2.clone(),
                None => src.node(&r)?,
            };
            match &node.items {
                Items::Branch(k) if k.len() == 1 => root = Some(k[0]),
                _ => break,
            }
        }
        // Keep only new nodes reachable from the root (drops stripped ones), once each.
        let mut blocks = Vec::new();
        let mut leaves = Vec::with_capacity(self.leaves.len());
        if let Some(r) = root {
            let mut made: crate::format::block::DigestMap<Cid, Arc<Leaf>> =
                self.leaves.into_iter().collect();
            let mut by_cid: crate::format::block::DigestMap<Cid, (Arc<Node>, Vec<u8>)> = self
                .out
                .into_iter()
                .map(|(_, c, n, b)| (c, (n, b)))
                .collect();
            let mut stack = vec![r];
            while let Some(c) = stack.pop() {
                if let Some((n, b)) = by_cid.remove(&c) {
                    stack.extend_from_slice(n.children());
                    blocks.push((c, b, n));
                } else if let Some(l) = made.remove(&c) {
                    leaves.push((c, l));
                }
            }
        }
        Ok(Update {
            root,
            blocks,
            leaves,
            previous: self.previous,
        })
    }
}
