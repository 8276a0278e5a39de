//! Prolly tree: a content-defined B-tree over byte keys whose shape depends only on its keys.
//!
//! A level-0 node (leaf) holds sorted `(key, Slot)` entries; a level-L node (L ≥ 1) holds sorted
//! `(first key of child, child CID)` items. A node ends after an item that its tree's [`Shape`]
//! makes a *boundary* (decided by a stable hash of `(level, key)` and, for [`Shape::Bounded`],
//! the item's position in its node), or at the end of its level. A root never has a single
//! child. So two trees of one shape with the same entries have the same root CID, whatever
//! order the entries arrived in: a node's end depends only on its own items from its start.
//!
//! Updates rebuild only the nodes on the paths to changed keys: a subtree with no changes that
//! starts where the new tree would start a node is reused by CID without being loaded.
//!
//! **Invariant:** the tree knows nothing of documents; a slot is a versioned link or a tombstone.

use crate::format::block::cbor::{CborError, Decoder, Encoder};
use crate::format::block::cid::Cid;
use std::cmp::Ordering;
use std::sync::Arc;

/// Expected items per node of a [`Shape::Mod16`] tree.
pub const FANOUT: u64 = 16;

/// Where a tree's nodes end (recorded per database in its head record; the rules are here).
pub use crate::format::head::TreeShape as Shape;

/// Fewest items of a [`Shape::Bounded`] node (but a level's last).
pub const BOUNDED_MIN: usize = 8;
/// Most items of a [`Shape::Bounded`] node.
pub const BOUNDED_MAX: usize = 24;
/// From [`BOUNDED_MIN`] items on, a [`Shape::Bounded`] node ends after an item whose hash is
/// ≡ 0 mod this.
pub const BOUNDED_ANCHOR: u64 = 8;

/// Levels at or above this never end a node early (keeps the height finite for any input).
const MAX_LEVEL: u8 = 48;

/// A leaf value: a link (or a tombstone, `None`) with the version that wrote it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Slot {
    pub version: u64,
    pub link: Option<Cid>,
}

impl Slot {
    /// Total order used to pick the winner between two writes of one key: higher version wins;
    /// at equal versions a value beats a tombstone and the larger CID wins.
    pub fn rank(&self, other: &Slot) -> Ordering {
        self.version
            .cmp(&other.version)
            .then_with(|| self.link.cmp(&other.link))
    }

    /// Keeps in `self` the higher-ranked of `self` and `other` (the state rule).
    pub fn raise(&mut self, other: Slot) {
        if other.rank(self) == Ordering::Greater {
            *self = other;
        }
    }
}

/// Puts `s` into `map` at `key` unless a higher-ranked slot is there already.
pub fn raise_into<K: Ord>(map: &mut std::collections::BTreeMap<K, Slot>, key: K, s: Slot) {
    map.entry(key).or_insert(s).raise(s);
}

/// How many live documents applying `ops` with [`Mode::Max`] adds (negative: removes), given
/// the slots the keys had before (`previous` of the [`Update`]).
pub fn live_delta(ops: &[Op], previous: &[Option<Slot>]) -> i64 {
    let none = std::iter::repeat(&None);
    ops.iter()
        .zip(previous.iter().chain(none))
        .map(|((_, new), prev)| {
            let mut winner = new.unwrap_or(Slot {
                version: 0,
                link: None,
            });
            if let Some(p) = prev {
                winner.raise(*p);
            }
            winner.link.is_some() as i64 - prev.is_some_and(|p| p.link.is_some()) as i64
        })
        .sum()
}

/// How an update treats a key that already has a slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The new slot replaces the old one.
    Overwrite,
    /// The higher-ranked slot stays (see [`Slot::rank`]): merging is order-independent.
    Max,
}

/// A decoded node.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub level: u8,
    pub keys: Vec<Arc<[u8]>>,
    pub items: Items,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Items {
    Leaf(Vec<Slot>),
    Branch(Vec<Cid>),
}

impl Node {
    pub fn encode(&self) -> Vec<u8> {
        // Keys plus at most 2 + 46 bytes per item (a link, or a version and a link).
        let cap = 16 + self.keys.iter().map(|k| k.len() + 50).sum::<usize>();
        let mut e = Encoder {
            buf: Vec::with_capacity(cap),
        };
        e.map(3);
        e.str("k");
        e.array(self.keys.len());
        for k in &self.keys {
            e.bytes(k);
        }
        e.str("l");
        e.u64(self.level as u64);
        e.str("v");
        match &self.items {
            Items::Leaf(v) => {
                e.array(v.len());
                for s in v {
                    e.array(2);
                    e.u64(s.version);
                    e.opt_link(s.link.as_ref());
                }
            }
            Items::Branch(v) => {
                e.array(v.len());
                for c in v {
                    e.link(c);
                }
            }
        }
        e.into_bytes()
    }

    pub fn decode(b: &[u8]) -> Result<Node, CborError> {
        let (level, keys, items) = parse(b)?;
        Ok(Node {
            level,
            keys: keys.into_iter().map(Into::into).collect(),
            items,
        })
    }

    /// Approximate heap size, for cache accounting.
    pub fn weight(&self) -> usize {
        64 + self.keys.iter().map(|k| k.len() + 16).sum::<usize>() + self.keys.len() * 48
    }

    /// Index of the child whose range holds `key` (branch nodes).
    fn route(&self, key: &[u8]) -> usize {
        self.keys.partition_point(|k| **k <= *key).saturating_sub(1)
    }

    /// The child CIDs of a branch node (empty for a leaf).
    pub fn children(&self) -> &[Cid] {
        match &self.items {
            Items::Branch(c) => c,
            Items::Leaf(_) => &[],
        }
    }
}

/// A node's fields, its keys as slices of its encoding: checked to be a map of exactly `k`
/// (strictly ascending byte strings, at least one), `l` (a level in range) and `v` (one item
/// per key: `[version, link or null]` at level 0, a link above), with nothing after it.
fn parse(b: &[u8]) -> Result<(u8, Vec<&[u8]>, Items), CborError> {
    let mut d = Decoder::new(b);
    if d.map()? != 3 {
        return Err(CborError("tree node: expected 3 fields"));
    }
    d.key("k")?;
    let n = d.array()?;
    let mut keys: Vec<&[u8]> = Vec::with_capacity(n);
    for _ in 0..n {
        let k = d.bytes()?;
        if keys.last().is_some_and(|p| *p >= k) {
            return Err(CborError("tree node: keys not strictly sorted"));
        }
        keys.push(k);
    }
    if n == 0 {
        return Err(CborError("tree node: empty"));
    }
    d.key("l")?;
    let level = d.u64()?;
    if level > MAX_LEVEL as u64 + 8 {
        return Err(CborError("tree node: level out of range"));
    }
    let level = level as u8;
    d.key("v")?;
    if d.array()? != n {
        return Err(CborError("tree node: keys and values differ in length"));
    }
    let items = if level == 0 {
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            if d.array()? != 2 {
                return Err(CborError("tree node: slot must be [version, link]"));
            }
            v.push(Slot {
                version: d.u64()?,
                link: d.opt_link()?,
            });
        }
        Items::Leaf(v)
    } else {
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push(d.link()?);
        }
        Items::Branch(v)
    };
    d.finish()?;
    Ok((level, keys, items))
}

/// A leaf decoded for lookups only: its encoding, where each key lies in it, and its slots
/// (four allocations, where a [`Node`] takes one per key). What a point read caches: at a
/// million documents most leaves are read once and evicted, and a [`Node`]'s allocations
/// and frees were a fifth of a read's time.
#[derive(Debug)]
pub struct Leaf {
    raw: Box<[u8]>,
    keys: Vec<(u32, u32)>,
    slots: Vec<Slot>,
}

impl Leaf {
    /// A leaf's encoding, checked as [`Node::decode`] checks it; a node of another level is
    /// an error.
    pub fn decode(b: &[u8]) -> Result<Leaf, CborError> {
        let (level, keys, items) = parse(b)?;
        let Items::Leaf(slots) = items else {
            return Err(CborError("tree node: expected a leaf"));
        };
        debug_assert_eq!(level, 0);
        let at = |k: &[u8]| {
            (
                (k.as_ptr() as usize - b.as_ptr() as usize) as u32,
                k.len() as u32,
            )
        };
        Ok(Leaf {
            keys: keys.iter().map(|k| at(k)).collect(),
            raw: b.into(),
            slots,
        })
    }

    /// The decoded node (what a commit changes), without parsing or hashing the leaf again.
    pub fn to_node(&self) -> Node {
        Node {
            level: 0,
            keys: (0..self.keys.len()).map(|i| self.key(i).into()).collect(),
            items: Items::Leaf(self.slots.clone()),
        }
    }

    /// The document links of a leaf's encoding with their versions, checked as
    /// [`Node::decode`] checks it; `None` for a node of another level.
    pub fn links_of(b: &[u8]) -> Result<Option<Vec<(Cid, u64)>>, CborError> {
        Ok(match parse(b)?.2 {
            Items::Leaf(slots) => Some(linked(&slots)),
            Items::Branch(_) => None,
        })
    }

    fn key(&self, i: usize) -> &[u8] {
        let (off, len) = self.keys[i];
        &self.raw[off as usize..(off + len) as usize]
    }

    /// The slot of `key`, if the leaf holds it.
    pub fn get(&self, key: &[u8]) -> Option<Slot> {
        let (mut lo, mut hi) = (0, self.keys.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            match self.key(mid).cmp(key) {
                Ordering::Less => lo = mid + 1,
                Ordering::Greater => hi = mid,
                Ordering::Equal => return Some(self.slots[mid]),
            }
        }
        None
    }

    /// Approximate heap size, for cache accounting.
    pub fn weight(&self) -> usize {
        96 + self.raw.len() + self.keys.len() * 8 + self.slots.len() * 48
    }
}

/// The links of `slots` (tombstones have none), each with its slot's version.
pub fn linked(slots: &[Slot]) -> Vec<(Cid, u64)> {
    slots
        .iter()
        .filter_map(|s| s.link.map(|l| (l, s.version)))
        .collect()
}

/// A leaf to look a key up in: a decoded node, or a [`Leaf`].
pub enum LeafRef {
    Node(Arc<Node>),
    Leaf(Arc<Leaf>),
}

impl LeafRef {
    /// Its keys and slots, in key order; a node that is not a leaf is an error.
    fn entries(&self, cid: &Cid) -> Result<Entries<'_>, TreeError> {
        match self {
            LeafRef::Leaf(l) => Ok(Entries::Leaf(l)),
            LeafRef::Node(n) => Entries::of_node(n, cid),
        }
    }

    /// The slot of `key`; a node that is not a leaf is an error.
    fn get(&self, cid: &Cid, key: &[u8]) -> Result<Option<Slot>, TreeError> {
        match self {
            LeafRef::Leaf(l) => Ok(l.get(key)),
            LeafRef::Node(n) => match &n.items {
                Items::Leaf(v) => Ok(n
                    .keys
                    .binary_search_by(|k| (**k).cmp(key))
                    .ok()
                    .map(|i| v[i])),
                Items::Branch(_) => Err(TreeError {
                    cid: *cid,
                    what: "child at the wrong level",
                }),
            },
        }
    }
}

/// A leaf's entries by position, read in place (a range visits them without a copy).
enum Entries<'a> {
    Leaf(&'a Leaf),
    Node(&'a [Arc<[u8]>], &'a [Slot]),
}

impl<'a> Entries<'a> {
    fn of_node(n: &'a Node, cid: &Cid) -> Result<Entries<'a>, TreeError> {
        match &n.items {
            Items::Leaf(v) => Ok(Entries::Node(&n.keys, v)),
            Items::Branch(_) => Err(TreeError {
                cid: *cid,
                what: "child at the wrong level",
            }),
        }
    }

    fn len(&self) -> usize {
        match self {
            Entries::Leaf(l) => l.slots.len(),
            Entries::Node(_, v) => v.len(),
        }
    }

    fn key(&self, i: usize) -> &'a [u8] {
        match self {
            Entries::Leaf(l) => l.key(i),
            Entries::Node(k, _) => &k[i],
        }
    }

    fn slot(&self, i: usize) -> &'a Slot {
        match self {
            Entries::Leaf(l) => &l.slots[i],
            Entries::Node(_, v) => &v[i],
        }
    }

    /// The position of the first key not below `key` (`len()` if none).
    fn lower_bound(&self, key: &[u8]) -> usize {
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.key(mid) < key {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }
}

/// Where the tree reads nodes from. Errors are the caller's (storage, corruption).
pub trait NodeSource {
    type Error: From<TreeError>;
    fn node(&self, cid: &Cid) -> Result<Arc<Node>, Self::Error>;

    /// A leaf for lookups (a point read's last step): by default the decoded node; a source
    /// with the leaf's bytes at hand may decode a [`Leaf`] instead.
    fn leaf(&self, cid: &Cid) -> Result<LeafRef, Self::Error> {
        self.node(cid).map(LeafRef::Node)
    }
}

/// A node that is not where the tree's shape says it must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeError {
    pub cid: Cid,
    pub what: &'static str,
}

/// Whether `node` ends where `shape` says: none of its items but the last is a boundary, and
/// the last is one unless the node is its level's last (`last_of_level`), which the level's end
/// closes. For `verify`: a tree built in another shape than its database's is damage (every
/// replay of its writes would build other nodes).
pub fn ends_as_shaped(node: &Node, shape: Shape, last_of_level: bool) -> bool {
    let n = node.keys.len();
    let early =
        (0..n.saturating_sub(1)).any(|i| is_boundary(shape, &node.keys[i], node.level, i + 1));
    let closed = n > 0 && is_boundary(shape, &node.keys[n - 1], node.level, n);
    !early && (closed || last_of_level)
}

/// Whether the item with `key` at position `pos` (from 1) of a node at `level` ends it.
fn is_boundary(shape: Shape, key: &[u8], level: u8, pos: usize) -> bool {
    if level >= MAX_LEVEL {
        return false;
    }
    match shape {
        Shape::Mod16 => boundary_hash(key, level).is_multiple_of(FANOUT),
        // (A boundary that does not depend on the position wherever it can: an insertion or
        // deletion shifts the positions after it, and a rule that leaned on them more, such as
        // a chance rising with the position, moved the boundaries of ~3.5 nodes per insertion
        // on average and up to ~25, where this moves ~1.4 and at most ~5.)
        Shape::Bounded => {
            pos >= BOUNDED_MAX
                || (pos >= BOUNDED_MIN && boundary_hash(key, level).is_multiple_of(BOUNDED_ANCHOR))
        }
    }
}

fn boundary_hash(key: &[u8], level: u8) -> u64 {
    // FNV-1a over (level, key), then the splitmix64 finaliser. Part of the format: changing it
    // changes every root CID.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in std::iter::once(&level).chain(key) {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    h
}

/// A branch node's child, checked to be one level below it.
fn child_of<S: NodeSource>(src: &S, parent: &Node, cid: &Cid) -> Result<Arc<Node>, S::Error> {
    let child = src.node(cid)?;
    if child.level + 1 != parent.level {
        return Err(TreeError {
            cid: *cid,
            what: "child at the wrong level",
        }
        .into());
    }
    Ok(child)
}

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
    fn in_leaf<E>(
        entries: &Entries,
        start: Option<&[u8]>,
        end: Option<&[u8]>,
        f: &mut dyn FnMut(&[u8], &Slot) -> Result<bool, E>,
    ) -> Result<bool, E> {
        let from = start.map_or(0, |s| entries.lower_bound(s));
        for i in from..entries.len() {
            let k = entries.key(i);
            if end.is_some_and(|e| k >= e) {
                return Ok(false);
            }
            if !f(k, entries.slot(i))? {
                return Ok(false);
            }
        }
        Ok(true)
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
        for i in (0..below_end).rev() {
            let k = entries.key(i);
            if start.is_some_and(|s| k < s) {
                return Ok(false);
            }
            if !f(k, entries.slot(i))? {
                return Ok(false);
            }
        }
        Ok(true)
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

/// One change to apply: `Some(slot)` sets (subject to [`Mode`]), `None` removes the key.
pub type Op = (Arc<[u8]>, Option<Slot>);

/// Result of [`update`]: the new root and the nodes that did not exist before.
pub struct Update {
    pub root: Option<Cid>,
    /// New nodes, each with its CID, encoding and decoded form; every one is reachable from
    /// `root`.
    pub blocks: Vec<(Cid, Vec<u8>, Arc<Node>)>,
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
fn rebuild<S: NodeSource>(
    src: &S,
    root: Option<&Cid>,
    ops: &[Op],
    mode: Mode,
    shape: Shape,
) -> Result<Update, S::Error> {
    let mut b = Builder {
        shape,
        levels: Vec::new(),
        out: Vec::new(),
        // (Nothing had a slot in an empty tree.)
        previous: if root.is_some() {
            vec![None; ops.len()]
        } else {
            Vec::new()
        },
        mode,
    };
    match root {
        Some(r) => {
            let node = src.node(r)?;
            b.walk(src, &node, ops, 0)?;
        }
        None => b.merge_leaf(&[], &[], ops, 0),
    }
    b.finish(src)
}

/// One key's change by path copying: the leaf and the branch nodes above it are copied with
/// the one entry and the child links changed, without re-deciding any node boundary. Exact only
/// when the change moves no boundary. A new value for a key moves none (boundaries depend on
/// keys and positions only). Of a [`Shape::Mod16`] tree, an insertion or deletion moves none
/// either when the key is not a boundary at level 0, is not (and does not become) the first
/// key of its leaf, and does not go after a leaf's closing boundary key, and a deletion leaves
/// its leaf non-empty; of a [`Shape::Bounded`] tree, one shifts the positions after it, so it
/// is never path-copied. `None` when those do not hold: the caller then rebuilds in general.
fn update_one<S: NodeSource>(
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
    previous: Vec<Option<Slot>>,
    mode: Mode,
}

impl Builder {
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
        if let Some(r) = root {
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
                }
            }
        }
        Ok(Update {
            root,
            blocks,
            previous: self.previous,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::cell::RefCell;
    use std::collections::{BTreeMap, HashMap};

    /// Nodes in memory, for trees of one shape.
    #[derive(Default)]
    struct Mem(RefCell<HashMap<Cid, Arc<Node>>>, Shape);
    #[derive(Debug)]
    struct E(#[allow(dead_code)] TreeError);
    impl From<TreeError> for E {
        fn from(t: TreeError) -> E {
            E(t)
        }
    }
    impl NodeSource for Mem {
        type Error = E;
        fn node(&self, cid: &Cid) -> Result<Arc<Node>, E> {
            self.0.borrow().get(cid).cloned().ok_or(E(TreeError {
                cid: *cid,
                what: "missing",
            }))
        }
    }
    impl Mem {
        fn of(shape: Shape) -> Mem {
            Mem(RefCell::default(), shape)
        }
        fn of_bounded(bounded: bool) -> Mem {
            Mem::of(if bounded {
                Shape::Bounded
            } else {
                Shape::Mod16
            })
        }
        fn apply(&self, root: Option<Cid>, ops: &[Op], mode: Mode) -> Option<Cid> {
            let u = update(self, root.as_ref(), ops, mode, self.1).unwrap();
            for (c, b, built) in u.blocks {
                assert_eq!(Cid::of_cbor(&b), c);
                let n = Node::decode(&b).unwrap();
                assert_eq!(n, *built);
                self.0.borrow_mut().insert(c, Arc::new(n));
            }
            u.root
        }
        fn all(&self, root: Option<Cid>) -> Vec<(Vec<u8>, Slot)> {
            let mut v = Vec::new();
            range(self, root.as_ref(), None, None, &mut |k, s| {
                v.push((k.to_vec(), *s));
                Ok(true)
            })
            .unwrap();
            v
        }
    }

    fn slot(v: u64) -> Option<Slot> {
        Some(Slot {
            version: v,
            link: Some(Cid::of_cbor(&v.to_be_bytes())),
        })
    }
    fn key(i: u32) -> Arc<[u8]> {
        format!("doc-{i:08}").into_bytes().into()
    }

    fn build(entries: &BTreeMap<Arc<[u8]>, Slot>, mem: &Mem) -> Option<Cid> {
        let ops: Vec<Op> = entries.iter().map(|(k, v)| (k.clone(), Some(*v))).collect();
        mem.apply(None, &ops, Mode::Overwrite)
    }

    #[test]
    fn sequential_inserts_match_bulk_build() {
        for shape in [Shape::Mod16, Shape::Bounded] {
            sequential_inserts_match_bulk_build_in(shape);
        }
    }

    fn sequential_inserts_match_bulk_build_in(shape: Shape) {
        let mem = Mem::of(shape);
        let mut root = None;
        let mut model = BTreeMap::new();
        for i in 0..2000u32 {
            root = mem.apply(root, &[(key(i), slot(i as u64))], Mode::Overwrite);
            model.insert(key(i), slot(i as u64).unwrap());
        }
        assert_eq!(root, build(&model, &mem));
        assert_eq!(mem.all(root).len(), 2000);
        // An overwrite inside a leaf copies the path (one new node per level).
        let r = root.unwrap();
        let depth = {
            let mut d = 1;
            let mut n = mem.node(&r).unwrap();
            while let Items::Branch(k) = &n.items {
                n = mem.node(&k[0]).unwrap();
                d += 1;
            }
            d
        };
        let u = update_one(&mem, &r, &key(1001), slot(5000), Mode::Max, shape)
            .unwrap()
            .unwrap();
        assert_eq!(u.blocks.len(), depth);
        assert_eq!(u.previous, vec![slot(1001)]);
        assert_eq!(get(&mem, root.as_ref(), &key(777)).unwrap(), slot(777));
        assert_eq!(get(&mem, root.as_ref(), b"zzz").unwrap(), None);
        // Delete everything, one at a time, in a scattered order.
        for i in (0..2000u32).map(|i| (i * 7919) % 2000) {
            root = mem.apply(root, &[(key(i), None)], Mode::Overwrite);
        }
        assert_eq!(root, None);
    }

    #[test]
    fn max_mode_keeps_the_higher_rank() {
        let mem = Mem::default();
        let r = mem.apply(None, &[(key(1), slot(5))], Mode::Max);
        let r2 = mem.apply(r, &[(key(1), slot(3))], Mode::Max);
        assert_eq!(r, r2);
        let r3 = mem.apply(r, &[(key(1), slot(3))], Mode::Overwrite);
        assert_ne!(r, r3);
    }

    /// `Mem`, with leaves served as `Leaf`s (as the database's reads serve them).
    struct AsLeaves<'a>(&'a Mem);
    impl NodeSource for AsLeaves<'_> {
        type Error = E;
        fn node(&self, cid: &Cid) -> Result<Arc<Node>, E> {
            self.0.node(cid)
        }
        fn leaf(&self, cid: &Cid) -> Result<LeafRef, E> {
            let n = self.0.node(cid)?;
            let l = Leaf::decode(&n.encode()).map_err(|_| {
                E(TreeError {
                    cid: *cid,
                    what: "child at the wrong level",
                })
            })?;
            Ok(LeafRef::Leaf(Arc::new(l)))
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Gets and ranges over leaves read as `Leaf`s answer as the model does, for any
        /// bounds (issue 14: point reads and scans read leaves that way).
        #[test]
        fn reads_through_leaves_match_the_model(
            keys in prop::collection::btree_set(0u32..5000, 1..1500),
            bounds in prop::collection::vec((0u32..5100, 0u32..400), 1..8),
        ) {
            let mem = Mem::default();
            let ops: Vec<Op> = keys.iter().map(|k| (key(*k), slot(*k as u64))).collect();
            let root = mem.apply(None, &ops, Mode::Max);
            let src = AsLeaves(&mem);
            for k in keys.iter().step_by(7).chain([&5001]) {
                let want = keys.contains(k).then(|| slot(*k as u64).unwrap());
                prop_assert_eq!(get(&src, root.as_ref(), &key(*k)).unwrap(), want);
            }
            for (lo, len) in bounds {
                let (lo_k, hi_k) = (key(lo), key(lo + len));
                let mut got = Vec::new();
                range(&src, root.as_ref(), Some(&lo_k), Some(&hi_k), &mut |k, s| {
                    got.push((k.to_vec(), *s));
                    Ok(got.len() < 100)
                }).unwrap();
                let want: Vec<(Vec<u8>, Slot)> = keys
                    .range(lo..lo + len)
                    .take(100)
                    .map(|k| (key(*k).to_vec(), slot(*k as u64).unwrap()))
                    .collect();
                prop_assert_eq!(got, want);
                // Backwards, from either kind of source, bounded or open on either side.
                for (lo_b, hi_b) in [
                    (Some(&lo_k), Some(&hi_k)),
                    (None, Some(&hi_k)),
                    (Some(&lo_k), None),
                ] {
                    let (from, to) = (lo_b.map_or(0, |_| lo), hi_b.map_or(u32::MAX, |_| lo + len));
                    let want: Vec<(Vec<u8>, Slot)> = keys
                        .range(from..to)
                        .rev()
                        .take(100)
                        .map(|k| (key(*k).to_vec(), slot(*k as u64).unwrap()))
                        .collect();
                    let rev = |src: &dyn Fn(&mut dyn FnMut(&[u8], &Slot) -> Result<bool, E>)| {
                        let mut got = Vec::new();
                        src(&mut |k, s| {
                            got.push((k.to_vec(), *s));
                            Ok(got.len() < 100)
                        });
                        got
                    };
                    let lo_s = lo_b.map(|k| &k[..]);
                    let hi_s = hi_b.map(|k| &k[..]);
                    let through_leaves = rev(&|f| range_rev(&src, root.as_ref(), lo_s, hi_s, f).unwrap());
                    let through_nodes = rev(&|f| range_rev(&mem, root.as_ref(), lo_s, hi_s, f).unwrap());
                    prop_assert_eq!(&through_leaves, &want);
                    prop_assert_eq!(&through_nodes, &want);
                }
            }
        }
    }

    proptest! {
        /// A `Leaf` (what point reads cache, issue 14) answers every lookup as the decoded
        /// node does, and accepts exactly the encodings `Node::decode` accepts as a leaf.
        #[test]
        fn a_leaf_answers_as_its_node(
            keys in prop::collection::btree_set(0u32..500, 1..60),
            probes in prop::collection::vec(0u32..520, 1..40),
            flip in prop::collection::vec((0usize..4000, 0u8..=255), 0..3),
        ) {
            let keys: Vec<u32> = keys.into_iter().collect();
            let node = Node {
                level: 0,
                keys: keys.iter().map(|k| key(*k)).collect(),
                items: Items::Leaf(keys.iter().map(|k| if k % 5 == 0 {
                    Slot { version: *k as u64, link: None }
                } else {
                    slot(*k as u64).unwrap()
                }).collect()),
            };
            let bytes = node.encode();
            let leaf = Leaf::decode(&bytes).unwrap();
            prop_assert_eq!(&leaf.to_node(), &node);
            let Items::Leaf(slots) = &node.items else { unreachable!() };
            let links: Vec<(Cid, u64)> =
                slots.iter().filter_map(|s| Some((s.link?, s.version))).collect();
            prop_assert_eq!(Leaf::links_of(&bytes).unwrap(), Some(links));
            for p in probes.iter().chain(&keys) {
                let want = node.keys.binary_search(&key(*p)).ok().map(|i| slots[i]);
                prop_assert_eq!(leaf.get(&key(*p)), want);
            }
            // Damaged encodings: both decoders agree (a branch is not a leaf).
            let mut bad = bytes.clone();
            for (at, b) in &flip {
                let n = bad.len();
                bad[at % n] ^= b;
            }
            let as_node = Node::decode(&bad).ok().filter(|n| n.level == 0);
            prop_assert_eq!(as_node.is_some(), Leaf::decode(&bad).is_ok());
        }
    }

    /// The sizes of a tree's nodes, level by level in key order.
    fn node_sizes(mem: &Mem, root: Option<Cid>) -> Vec<Vec<usize>> {
        let mut levels: Vec<Vec<usize>> = Vec::new();
        let mut row: Vec<Cid> = root.into_iter().collect();
        while !row.is_empty() {
            let nodes: Vec<Arc<Node>> = row.iter().map(|c| mem.node(c).unwrap()).collect();
            levels.push(nodes.iter().map(|n| n.keys.len()).collect());
            row = nodes.iter().flat_map(|n| n.children().to_vec()).collect();
        }
        levels.reverse(); // leaves first
        levels
    }

    /// Issue 14: a `Bounded` tree's nodes hold 8 to 24 items (a level's last node may hold
    /// fewer; the root is one), about 14 on average and ~16 for the leaf holding a random key,
    /// through inserts and deletes in any order; a `Mod16` tree's leaves vary far more (the
    /// leaf holding a random key has ~31 items).
    #[test]
    fn bounded_nodes_hold_8_to_24_items() {
        let n = 20_000u32;
        for shape in [Shape::Bounded, Shape::Mod16] {
            let mem = Mem::of(shape);
            let mut root = None;
            // Inserts in a scattered order, in batches, then every third key deleted.
            for chunk in (0..n)
                .map(|i| (i * 7919) % n)
                .collect::<Vec<_>>()
                .chunks(500)
            {
                let mut ops: Vec<Op> = chunk.iter().map(|i| (key(*i), slot(1))).collect();
                ops.sort_by(|a, b| a.0.cmp(&b.0));
                root = mem.apply(root, &ops, Mode::Overwrite);
            }
            for i in (0..n).step_by(3) {
                root = mem.apply(root, &[(key(i), None)], Mode::Overwrite);
            }
            let sizes = node_sizes(&mem, root);
            let leaves = &sizes[0];
            let items: usize = leaves.iter().sum();
            assert_eq!(items, (n - n.div_ceil(3)) as usize);
            // The leaf a random key is in: size-biased mean.
            let biased = leaves.iter().map(|s| s * s).sum::<usize>() as f64 / items as f64;
            match shape {
                Shape::Bounded => {
                    for level in &sizes[..sizes.len() - 1] {
                        let (last, rest) = level.split_last().unwrap();
                        assert!(rest.iter().all(|s| (8..=24).contains(s)), "{level:?}");
                        assert!((1..=24).contains(last));
                    }
                    assert!(biased < 18.0, "{biased}");
                }
                Shape::Mod16 => assert!(biased > 24.0, "{biased}"),
            }
        }
    }

    /// Found by review (issue 14): a first `Bounded` rule (a chance to end rising with the
    /// position) let one insertion move the boundaries of ~3.8 leaves on average and up to 58.
    /// Today's leans on the position only at its bounds: a random insertion or deletion writes
    /// few new leaves, close to a `Mod16` tree's.
    #[test]
    fn an_insertion_into_a_bounded_tree_rewrites_few_leaves() {
        let mem = Mem::of(Shape::Bounded);
        let ops: Vec<Op> = (0..20_000u32).map(|i| (key(i * 2), slot(1))).collect();
        let root = mem.apply(None, &ops, Mode::Overwrite).unwrap();
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut leaves = Vec::new();
        for _ in 0..400 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let k = (x % 40_000) as u32;
            // An odd key is new (an insertion), an even one is there (a deletion).
            let op = (key(k), if k % 2 == 1 { slot(2) } else { None });
            let u = update(&mem, Some(&root), &[op], Mode::Overwrite, Shape::Bounded).unwrap();
            leaves.push(u.blocks.iter().filter(|b| b.2.level == 0).count());
        }
        let mean = leaves.iter().sum::<usize>() as f64 / leaves.len() as f64;
        assert!(mean < 2.0, "{mean}");
        assert!(leaves.iter().all(|n| *n <= 8), "{leaves:?}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Any sequence of batches gives the tree a from-scratch build gives (canonical shape),
        /// and the same entries as a BTreeMap model.
        #[test]
        fn batches_agree_with_model_and_are_canonical(
            batches in prop::collection::vec(
                prop::collection::btree_map(0u32..600, prop::option::of(0u64..1000), 1..80), 1..12),
            bounded in any::<bool>(),
        ) {
            let mem = Mem::of_bounded(bounded);
            let mut root = None;
            let mut model: BTreeMap<Arc<[u8]>, Slot> = BTreeMap::new();
            for b in &batches {
                let ops: Vec<Op> = b.iter().map(|(k, v)| (key(*k), v.and_then(slot))).collect();
                root = mem.apply(root, &ops, Mode::Overwrite);
                for (k, v) in ops {
                    match v { Some(s) => { model.insert(k, s); } None => { model.remove(&k); } }
                }
                let got: Vec<(Vec<u8>, Slot)> = mem.all(root);
                let want: Vec<(Vec<u8>, Slot)> = model.iter().map(|(k, v)| (k.to_vec(), *v)).collect();
                prop_assert_eq!(got, want);
            }
            let fresh = Mem::of_bounded(bounded);
            prop_assert_eq!(root, build(&model, &fresh));
        }

        /// A one-key change by path copying gives exactly what the general rebuild gives
        /// (root, previous slot, new nodes), or declines; on trees of every shape, for
        /// overwrites, inserts (also before the first key and after the last), deletes and
        /// missing keys, in both modes.
        #[test]
        fn one_key_path_copy_matches_rebuild(
            keys in prop::collection::btree_set(0u32..3000, 1..900),
            k in 0u32..3100, v in prop::option::of(0u64..4), max in any::<bool>(),
            bounded in any::<bool>(),
        ) {
            let mem = Mem::of_bounded(bounded);
            let model: BTreeMap<Arc<[u8]>, Slot> =
                keys.iter().map(|k| (key(*k), slot(*k as u64 % 3 + 1).unwrap())).collect();
            let root = build(&model, &mem).unwrap();
            let mode = if max { Mode::Max } else { Mode::Overwrite };
            let op_key = key(k);
            let new = v.and_then(slot);
            let fast = update_one(&mem, &root, &op_key, new, mode, mem.1).unwrap();
            let slow = rebuild(&mem, Some(&root), &[(op_key, new)], mode, mem.1).unwrap();
            if let Some(fast) = fast {
                prop_assert_eq!(fast.root, slow.root);
                prop_assert_eq!(&fast.previous, &slow.previous);
                let set = |u: &Update| {
                    let mut v: Vec<Cid> = u.blocks.iter().map(|b| b.0).collect();
                    v.sort();
                    v
                };
                if fast.blocks.is_empty() {
                    // Nothing changed (the rebuild may re-list nodes the tree already has).
                    prop_assert_eq!(slow.root, Some(root));
                    prop_assert!(slow.blocks.iter().all(|b| mem.0.borrow().contains_key(&b.0)));
                } else {
                    prop_assert_eq!(set(&fast), set(&slow));
                }
                for (c, b, n) in &fast.blocks {
                    prop_assert_eq!(Cid::of_cbor(b), *c);
                    prop_assert_eq!(&Node::decode(b).unwrap(), &**n);
                }
            }
        }

        /// Max-mode merges of the same writes in any order give the same root.
        #[test]
        fn max_merge_is_order_independent(
            writes in prop::collection::vec((0u32..200, 0u64..50), 1..200), seed in any::<u64>(),
            bounded in any::<bool>(),
        ) {
            let mem = Mem::of_bounded(bounded);
            let mut a = None;
            for (k, v) in &writes { a = mem.apply(a, &[(key(*k), slot(*v))], Mode::Max); }
            let mut shuffled = writes.clone();
            let mut s = seed | 1;
            for i in (1..shuffled.len()).rev() {
                s ^= s << 13; s ^= s >> 7; s ^= s << 17;
                shuffled.swap(i, (s % (i as u64 + 1)) as usize);
            }
            let mut b = None;
            for (k, v) in &shuffled { b = mem.apply(b, &[(key(*k), slot(*v))], Mode::Max); }
            prop_assert_eq!(a, b);
        }

        /// The diff of two trees is exactly the keys whose slots differ in the models, whatever
        /// they share.
        #[test]
        fn diff_is_exactly_the_differences(
            base in prop::collection::btree_map(0u32..2000, 0u64..1000, 0..600),
            left in prop::collection::btree_map(0u32..2000, prop::option::of(0u64..1000), 0..40),
            right in prop::collection::btree_map(0u32..2000, prop::option::of(0u64..1000), 0..40),
            bounded in any::<bool>(),
        ) {
            let mem = Mem::of_bounded(bounded);
            let ops: Vec<Op> = base.iter().map(|(k, v)| (key(*k), slot(*v))).collect();
            let root = mem.apply(None, &ops, Mode::Overwrite);
            let side = |changes: &BTreeMap<u32, Option<u64>>| {
                let ops: Vec<Op> = changes.iter().map(|(k, v)| (key(*k), v.and_then(slot))).collect();
                let r = mem.apply(root, &ops, Mode::Overwrite);
                let mut m: BTreeMap<Vec<u8>, Slot> = base.iter().filter_map(|(k, v)| slot(*v).map(|s| (key(*k).to_vec(), s))).collect();
                for (k, v) in changes {
                    match v.and_then(slot) { Some(s) => { m.insert(key(*k).to_vec(), s); } None => { m.remove(&key(*k).to_vec()); } }
                }
                (r, m)
            };
            let (ra, ma) = side(&left);
            let (rb, mb) = side(&right);
            let mut got = Vec::new();
            diff(&mem, ra.as_ref(), &mem, rb.as_ref(), &mut |k, x, y| got.push((k.to_vec(), x.copied(), y.copied()))).unwrap();
            let keys: std::collections::BTreeSet<&Vec<u8>> = ma.keys().chain(mb.keys()).collect();
            let want: Vec<(Vec<u8>, Option<Slot>, Option<Slot>)> = keys
                .into_iter()
                .filter(|k| ma.get(*k) != mb.get(*k))
                .map(|k| (k.clone(), ma.get(k).copied(), mb.get(k).copied()))
                .collect();
            prop_assert_eq!(got, want);
        }

        #[test]
        fn decode_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            let _ = Node::decode(&bytes);
        }
    }
}
