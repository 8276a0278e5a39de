//! A byte-bounded cache of decoded blocks, decrypted segments and index pages.
//!
//! Approximate LRU: every hit stamps the entry; when the total weight passes the budget the
//! oldest quarter (by stamp) is dropped in one sweep, so eviction costs O(n log n) once per
//! n/4 inserts.

use crate::format::block::cid::Cid;
use crate::format::block::{DigestHasher, DigestMap};
use crate::format::car::{FileName, Page};
use crate::format::head::Lineage;
use crate::model::clock::Event;
use crate::model::tree::{Leaf, Node};
use std::cell::Cell;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

/// Decoded blocks are cached per lineage: a read takes a block from its authenticated segment
/// without re-hashing it (`car::block_at`), which vouches for the block only within the key
/// that sealed it, so one lineage's files never answer another's reads of the same CID.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub enum CacheKey {
    Node(Lineage, Cid),
    Leaf(Lineage, Cid),
    Event(Lineage, Cid),
    Segment(FileName, u32),
    Page(FileName, u32),
}

/// Where a block was read from: a file's segment.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Place {
    pub file: FileName,
    pub seg: u32,
}

#[derive(Clone)]
pub enum Cached {
    /// A decoded tree node, with where it was read (`None`: built in memory).
    Node(Arc<Node>, Option<Place>),
    /// A tree leaf decoded for point reads, with where it was read.
    Leaf(Arc<Leaf>, Option<Place>),
    Event(Arc<Event>),
    Bytes(Arc<Vec<u8>>),
    Page(Arc<Page>),
}

impl Cached {
    /// Approximate bytes held, including the map entry and allocator overhead (measured: RSS
    /// tracked about twice the payload-only estimate).
    pub fn weight(&self) -> usize {
        160 + match self {
            Cached::Node(n, _) => n.weight() * 3 / 2,
            Cached::Leaf(l, _) => l.weight(),
            Cached::Event(e) => {
                256 + 2 * e.ops.iter().map(|(id, _)| id.len() + 64).sum::<usize>()
                    + e.parents.len() * 36
            }
            Cached::Bytes(b) => 64 + b.capacity(),
            Cached::Page(p) => 64 + p.byte_len(),
        }
    }

    /// Reads the entry's shared count (a plain load): brings its first line into the CPU's
    /// cache before a clone writes it ([`Cache::get_each`]).
    fn warm(&self) -> usize {
        match self {
            Cached::Node(n, _) => Arc::strong_count(n),
            Cached::Leaf(l, _) => Arc::strong_count(l),
            Cached::Event(e) => Arc::strong_count(e),
            Cached::Bytes(b) => Arc::strong_count(b),
            Cached::Page(p) => Arc::strong_count(p),
        }
    }
}

pub struct Cache {
    budget: usize,
    inner: Mutex<Inner>,
}

/// What an entry is kept for. The upper levels of a tree are few and on every read's path;
/// segments, index pages, leaves and events are many, and at a million documents most are
/// read once. So that a stream of those cannot push out the former (at a million documents
/// they did: a level-1 node, reached once per ~4,000 random gets, was gone by then), each
/// class is evicted on its own once it holds more than its share. Only nodes read from files
/// count as upper: the nodes a commit builds (and caches) are mostly superseded by the next
/// commits, and as upper nodes they (and events, at first also upper) held a third of the
/// cache under updates, never read again.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Class {
    Upper,
    Bulk,
}

impl Cached {
    fn class(&self) -> Class {
        match self {
            Cached::Node(n, Some(_)) if n.level > 0 => Class::Upper,
            _ => Class::Bulk,
        }
    }
}

/// The share of the budget kept for [`Class::Upper`] entries when both classes compete.
const UPPER_SHARE: usize = 3;

/// A cached value, its weight, and the stamp of its last use (a cell: lookups made together
/// stamp through shared borrows, [`Cache::get_each`]).
type Slot = (Cached, usize, Cell<u64>);

struct Inner {
    map: DigestMap<CacheKey, Slot>,
    total: usize,
    upper: usize,
    /// Stamps entries by use (under the lock, which every use takes anyway: no atomic of
    /// its own).
    tick: u64,
    /// Fingerprints of keys offered once through [`Cache::admit`] and turned away: a key
    /// offered again while its fingerprint is still here gets in (see [`Cache::admit`]).
    /// Empty until the cache first evicts.
    seen: Vec<u64>,
}

/// Fingerprints kept per byte of budget by the admission filter: one per 8 KiB (a segment
/// is 4–16 KiB), so a key is remembered about as long as a cache this size would keep it.
const SEEN_PER_BYTES: usize = 8 << 10;

impl Cache {
    pub fn new(budget: usize) -> Cache {
        Cache {
            budget,
            inner: Mutex::new(Inner {
                map: DigestMap::default(),
                total: 0,
                upper: 0,
                tick: 0,
                seen: Vec::new(),
            }),
        }
    }

    /// Offers what a read just fetched from a file and may not need again (a segment):
    /// cached at once while the cache has room, but once it has had to evict, only when the
    /// same key was offered before, recently. At a million documents most segments a random
    /// read opens are never opened again before they would be evicted; caching each one cost
    /// its insertion and pushed out entries that are read again (a doorkeeper, as in
    /// TinyLFU). A working set that fits is cached on first use, as before.
    pub fn admit(&self, k: CacheKey, v: Cached) {
        {
            let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            if !g.seen.is_empty() {
                use std::hash::BuildHasher;
                // (Never 0, the empty slot.)
                let h = std::hash::BuildHasherDefault::<DigestHasher>::default().hash_one(&k) | 1;
                let slot = (h as usize) % g.seen.len();
                if g.seen[slot] != h {
                    g.seen[slot] = h;
                    return;
                }
                g.seen[slot] = 0;
            }
        }
        self.insert(k, v)
    }

    pub fn get(&self, k: &CacheKey) -> Option<Cached> {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.tick += 1;
        let t = g.tick;
        let e = g.map.get(k)?;
        e.2.set(t);
        Some(e.0.clone())
    }

    /// [`Cache::get`] of each key, in order, under one lock. For many lookups at once (a
    /// query's rows): a lookup that misses the CPU's cache waits for memory, and so does the
    /// next one when a lock or a shared count's atomic update comes between them (an atomic
    /// update waits for every load before it). Here the table's probes run one after another
    /// with nothing between them, then the values' counts are read with plain loads, and only
    /// then are the values cloned: the memory waits of the lookups overlap.
    pub fn get_each(&self, keys: &[CacheKey]) -> Vec<Option<Cached>> {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        // A stamp of its own for each use, as one by one (an eviction's cut falls between
        // stamps: a shared one would take a whole batch at once).
        let t = g.tick;
        g.tick += keys.len() as u64;
        let hits: Vec<Option<&Slot>> = keys.iter().map(|k| g.map.get(k)).collect();
        let warm = hits
            .iter()
            .flatten()
            .map(|e| e.0.warm())
            .fold(0, usize::wrapping_add);
        std::hint::black_box(warm);
        (1..)
            .zip(&hits)
            .map(|(i, e)| {
                e.map(|e| {
                    e.2.set(t + i);
                    e.0.clone()
                })
            })
            .collect()
    }

    pub fn insert(&self, k: CacheKey, v: Cached) {
        let w = v.weight();
        if w > self.budget / 4 {
            return;
        }
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.tick += 1;
        let t = g.tick;
        if v.class() == Class::Upper {
            g.upper += w;
        }
        if let Some(old) = g.map.insert(k, (v, w, Cell::new(t))) {
            g.total -= old.1;
            if old.0.class() == Class::Upper {
                g.upper -= old.1;
            }
        }
        g.total += w;
        if g.total > self.budget {
            // The class over its share gives way: its oldest quarter goes.
            let class = if g.upper > self.budget / UPPER_SHARE {
                Class::Upper
            } else {
                Class::Bulk
            };
            g.evict(class, self.budget);
        }
    }

    /// Bytes this cache may hold.
    pub fn budget(&self) -> usize {
        self.budget
    }

    /// Bytes currently held (approximate).
    pub fn weight(&self) -> usize {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).total
    }
}

impl Inner {
    /// Drops the oldest quarter (by last use) of `class`'s entries; from the first eviction
    /// on, [`Cache::admit`] filters.
    fn evict(&mut self, class: Class, budget: usize) {
        if self.seen.is_empty() {
            self.seen = vec![0; (budget / SEEN_PER_BYTES).max(64)];
        }
        let mut stamps: Vec<u64> = self
            .map
            .values()
            .filter(|e| e.0.class() == class)
            .map(|e| e.2.get())
            .collect();
        if stamps.is_empty() {
            return;
        }
        let cut_at = stamps.len() / 4;
        let (_, cut, _) = stamps.select_nth_unstable(cut_at);
        let cut = *cut;
        let (mut freed, mut freed_upper) = (0, 0);
        self.map.retain(|_, e| {
            let keep = e.0.class() != class || e.2.get() > cut;
            if !keep {
                freed += e.1;
                if class == Class::Upper {
                    freed_upper += e.1;
                }
            }
            keep
        });
        self.total -= freed;
        self.upper -= freed_upper;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_within_budget_and_keeps_recent() {
        let c = Cache::new(100_000);
        let hot = CacheKey::Segment(FileName([0; 32]), 0);
        c.insert(hot.clone(), Cached::Bytes(Arc::new(vec![0; 1000])));
        for i in 1..1000u32 {
            c.insert(
                CacheKey::Segment(FileName([1; 32]), i),
                Cached::Bytes(Arc::new(vec![0; 1000])),
            );
            assert!(c.get(&hot).is_some(), "hot entry evicted at {i}");
            assert!(c.weight() <= 100_000 + 2000);
        }
    }

    /// Lookups made together answer as one by one, in order (a key twice, a key absent), and
    /// count as uses: what they found outlives what was cached before it.
    #[test]
    fn lookups_made_together_answer_in_order_and_count_as_uses() {
        let c = Cache::new(100_000);
        let seg = |i: u32| CacheKey::Segment(FileName([1; 32]), i);
        for i in 0..50u32 {
            c.insert(seg(i), Cached::Bytes(Arc::new(vec![i as u8; 1000])));
        }
        let keys = [seg(3), seg(999), seg(0), seg(3)];
        let got: Vec<Option<u8>> = c
            .get_each(&keys)
            .into_iter()
            .map(|v| match v {
                Some(Cached::Bytes(b)) => Some(b[0]),
                _ => None,
            })
            .collect();
        assert_eq!(got, [Some(3), None, Some(0), Some(3)]);
        assert!(c.get_each(&[]).is_empty());
        // Filling the cache evicts the oldest by use: 0 and 3 were used last.
        for i in 1000..1060u32 {
            c.insert(seg(i), Cached::Bytes(Arc::new(vec![0; 1000])));
        }
        assert!(c.get(&seg(1)).is_none(), "an entry not used since was kept");
        assert!(c.get(&seg(0)).is_some() && c.get(&seg(3)).is_some());
    }

    /// Lookups made together stamp each entry as its own use: an eviction whose cut falls
    /// among them takes the oldest quarter, not every entry of the batch (with one stamp for
    /// the batch, all 60 went at once).
    #[test]
    fn an_eviction_takes_a_quarter_of_entries_looked_up_together() {
        let c = Cache::new(100_000);
        let seg = |i: u32| CacheKey::Segment(FileName([1; 32]), i);
        let bytes = || Cached::Bytes(Arc::new(vec![0; 1000]));
        for i in 0..60u32 {
            c.insert(seg(i), bytes());
        }
        let keys: Vec<CacheKey> = (0..60).map(seg).collect();
        assert!(c.get_each(&keys).iter().all(Option::is_some));
        // Past the budget once (~81 entries fit): a quarter goes, the oldest uses first.
        for i in 1000..1022u32 {
            c.insert(seg(i), bytes());
        }
        let kept = c.get_each(&keys).iter().filter(|v| v.is_some()).count();
        assert!((35..60).contains(&kept), "{kept} of 60 kept");
        assert!(c.get(&seg(59)).is_some() && c.get(&seg(0)).is_none());
    }

    /// Issue 14: segments offered through `admit` are cached at once while nothing was
    /// evicted; afterwards only on their second offer, so a stream of segments read once
    /// does not churn the cache (random gets at 100,000 documents: +30%).
    #[test]
    fn admission_waits_for_a_second_offer_once_full() {
        let c = Cache::new(100_000);
        let seg = |i: u32| CacheKey::Segment(FileName([1; 32]), i);
        let bytes = || Cached::Bytes(Arc::new(vec![0; 1000]));
        c.admit(seg(0), bytes());
        assert!(c.get(&seg(0)).is_some(), "room: cached at once");
        for i in 1..200u32 {
            c.insert(seg(i), bytes());
        }
        let before = c.weight();
        c.admit(seg(1000), bytes());
        assert!(
            c.get(&seg(1000)).is_none(),
            "full: a first offer is turned away"
        );
        assert_eq!(c.weight(), before);
        c.admit(seg(1000), bytes());
        assert!(c.get(&seg(1000)).is_some(), "a second offer gets in");
        // A stream offered once each leaves what is cached alone.
        let hot = seg(199);
        for i in 2000..5000u32 {
            c.admit(seg(i), bytes());
            assert!(c.get(&hot).is_some());
        }
    }

    /// Issue 14: a stream of segments read once (random gets at a million documents) does not
    /// push out the upper tree nodes every read passes through, while they fit their share.
    #[test]
    fn upper_nodes_outlive_a_stream_of_segments() {
        use crate::model::tree::{Items, Node};
        let c = Cache::new(1_000_000);
        let branch = |i: u32| {
            Cached::Node(
                Arc::new(Node {
                    level: 1,
                    keys: vec![Arc::from(&i.to_be_bytes()[..])],
                    items: Items::Branch(vec![Cid::of_cbor(&i.to_be_bytes())]),
                }),
                Some(Place {
                    file: FileName([2; 32]),
                    seg: i,
                }),
            )
        };
        for i in 0..100u32 {
            c.insert(
                CacheKey::Node([0; 16], Cid::of_cbor(&i.to_be_bytes())),
                branch(i),
            );
        }
        for i in 0..5000u32 {
            c.insert(
                CacheKey::Segment(FileName([1; 32]), i),
                Cached::Bytes(Arc::new(vec![0; 4000])),
            );
            assert!(c.weight() <= 1_000_000 + 5000);
        }
        for i in 0..100u32 {
            let k = CacheKey::Node([0; 16], Cid::of_cbor(&i.to_be_bytes()));
            assert!(c.get(&k).is_some(), "upper node {i} evicted");
        }
        // Nodes a commit built (no place in a file) are not upper nodes: the stream pushes
        // them out.
        let built = Cached::Node(
            Arc::new(Node {
                level: 1,
                keys: vec![Arc::from(&b"b"[..])],
                items: Items::Branch(vec![Cid::of_cbor(b"b")]),
            }),
            None,
        );
        c.insert(CacheKey::Node([0; 16], Cid::of_cbor(b"built")), built);
        for i in 5000..10_000u32 {
            c.insert(
                CacheKey::Segment(FileName([1; 32]), i),
                Cached::Bytes(Arc::new(vec![0; 4000])),
            );
        }
        assert!(c
            .get(&CacheKey::Node([0; 16], Cid::of_cbor(b"built")))
            .is_none());
        // Beyond their share, upper nodes give way too: the budget holds.
        for i in 100..20_000u32 {
            c.insert(
                CacheKey::Node([0; 16], Cid::of_cbor(&i.to_be_bytes())),
                branch(i),
            );
            assert!(c.weight() <= 1_000_000 + 5000);
        }
    }
}
