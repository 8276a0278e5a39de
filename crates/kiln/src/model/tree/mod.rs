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
//!
//! Here: slots, nodes and leaves and their encoding, where nodes end. Reading a tree (a key, a
//! range, two trees' differences) is in `read.rs`; applying changes to one in `build.rs`.

mod build;
mod read;

pub use build::*;
pub use read::*;

#[cfg(test)]
mod tests;

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

/// What a node's `v` field holds, for encoding: a leaf's slots or a branch's links.
#[derive(Clone, Copy)]
enum ItemsRef<'a> {
    Leaf(&'a [Slot]),
    Branch(&'a [Cid]),
}

impl Items {
    fn as_ref(&self) -> ItemsRef<'_> {
        match self {
            Items::Leaf(v) => ItemsRef::Leaf(v),
            Items::Branch(v) => ItemsRef::Branch(v),
        }
    }
}

/// The length of [`encode_parts`]'s bytes.
fn encoded_len_of<'k>(
    level: u8,
    keys: impl ExactSizeIterator<Item = &'k [u8]>,
    items: ItemsRef,
) -> usize {
    let head = |n: usize| Encoder::head_len(n as u64);
    let count = keys.len();
    let keys: usize = keys.map(|k| head(k.len()) + k.len()).sum();
    let items = match items {
        ItemsRef::Leaf(v) => {
            let slot = |s: &Slot| {
                let link = s.link.map_or(1, |_| Encoder::LINK_LEN);
                1 + Encoder::head_len(s.version) + link
            };
            head(v.len()) + v.iter().map(slot).sum::<usize>()
        }
        ItemsRef::Branch(v) => head(v.len()) + v.len() * Encoder::LINK_LEN,
    };
    // The map's head and its three one-letter keys.
    1 + 3 * 2 + head(count) + keys + Encoder::head_len(level.into()) + items
}

/// A node's encoding (`{k: keys, l: level, v: items}`, dag-cbor), exactly sized (a build
/// keeps thousands of these until they are written, and the unused room of each took fresh
/// memory too); `at` is told where each key lies in it (offset, length).
fn encode_parts<'k>(
    level: u8,
    keys: impl ExactSizeIterator<Item = &'k [u8]> + Clone,
    items: ItemsRef,
    at: &mut dyn FnMut(u32, u32),
) -> Vec<u8> {
    let len = encoded_len_of(level, keys.clone(), items);
    let mut e = Encoder {
        buf: Vec::with_capacity(len),
    };
    e.map(3);
    e.str("k");
    e.array(keys.len());
    for k in keys {
        e.bytes(k);
        at((e.buf.len() - k.len()) as u32, k.len() as u32);
    }
    e.str("l");
    e.u64(level as u64);
    e.str("v");
    match items {
        ItemsRef::Leaf(v) => {
            e.array(v.len());
            for s in v {
                e.array(2);
                e.u64(s.version);
                e.opt_link(s.link.as_ref());
            }
        }
        ItemsRef::Branch(v) => {
            e.array(v.len());
            for c in v {
                e.link(c);
            }
        }
    }
    debug_assert_eq!(e.buf.len(), len, "encoded_len_of is exact");
    e.into_bytes()
}

impl Node {
    pub fn encode(&self) -> Vec<u8> {
        let keys = self.keys.iter().map(|k| &k[..]);
        encode_parts(self.level, keys, self.items.as_ref(), &mut |_, _| {})
    }

    /// The length of [`Node::encode`]'s bytes.
    pub fn encoded_len(&self) -> usize {
        encoded_len_of(
            self.level,
            self.keys.iter().map(|k| &k[..]),
            self.items.as_ref(),
        )
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

    /// A new leaf of `keys` (sorted, unique, at least one) and their `slots`: its encoding is
    /// the one [`Node::encode`] makes of the same leaf, written straight from the keys (no
    /// node, no allocation per key).
    pub fn of<'k>(keys: impl ExactSizeIterator<Item = &'k [u8]> + Clone, slots: Vec<Slot>) -> Leaf {
        debug_assert_eq!(keys.len(), slots.len());
        let mut at = Vec::with_capacity(keys.len());
        let raw = encode_parts(0, keys, ItemsRef::Leaf(&slots), &mut |o, l| at.push((o, l)));
        Leaf {
            raw: raw.into_boxed_slice(),
            keys: at,
            slots,
        }
    }

    /// Its encoding.
    pub fn encoding(&self) -> &[u8] {
        &self.raw
    }

    /// Its first key.
    pub fn first_key(&self) -> &[u8] {
        self.key(0)
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
