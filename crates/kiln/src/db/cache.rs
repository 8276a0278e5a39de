//! A byte-bounded cache of decoded blocks, decrypted segments and index pages.
//!
//! Approximate LRU: every hit stamps the entry; when the total weight passes the budget the
//! oldest quarter (by stamp) is dropped in one sweep, so eviction costs O(n log n) once per
//! n/4 inserts.

use crate::format::block::cid::Cid;
use crate::format::block::DigestMap;
use crate::format::car::{FileName, Page};
use crate::model::clock::Event;
use crate::model::tree::Node;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub enum CacheKey {
    Node(Cid),
    Event(Cid),
    Segment(FileName, u32),
    Page(FileName, u32),
}

#[derive(Clone)]
pub enum Cached {
    Node(Arc<Node>),
    Event(Arc<Event>),
    Bytes(Arc<Vec<u8>>),
    Page(Arc<Page>),
}

impl Cached {
    /// Approximate bytes held, including the map entry and allocator overhead (measured: RSS
    /// tracked about twice the payload-only estimate).
    fn weight(&self) -> usize {
        160 + match self {
            Cached::Node(n) => n.weight() * 3 / 2,
            Cached::Event(e) => {
                256 + 2 * e.ops.iter().map(|(id, _)| id.len() + 64).sum::<usize>()
                    + e.parents.len() * 36
            }
            Cached::Bytes(b) => 64 + b.capacity(),
            Cached::Page(p) => 64 + p.byte_len(),
        }
    }
}

pub struct Cache {
    budget: usize,
    tick: AtomicU64,
    inner: Mutex<Inner>,
}

struct Inner {
    map: DigestMap<CacheKey, (Cached, usize, u64)>,
    total: usize,
}

impl Cache {
    pub fn new(budget: usize) -> Cache {
        Cache {
            budget,
            tick: AtomicU64::new(0),
            inner: Mutex::new(Inner {
                map: DigestMap::default(),
                total: 0,
            }),
        }
    }

    pub fn get(&self, k: &CacheKey) -> Option<Cached> {
        let t = self.tick.fetch_add(1, Ordering::Relaxed);
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let e = g.map.get_mut(k)?;
        e.2 = t;
        Some(e.0.clone())
    }

    pub fn insert(&self, k: CacheKey, v: Cached) {
        let w = v.weight();
        if w > self.budget / 4 {
            return;
        }
        let t = self.tick.fetch_add(1, Ordering::Relaxed);
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = g.map.insert(k, (v, w, t)) {
            g.total -= old.1;
        }
        g.total += w;
        if g.total > self.budget {
            let mut stamps: Vec<u64> = g.map.values().map(|e| e.2).collect();
            let cut_at = stamps.len() / 4;
            let (_, cut, _) = stamps.select_nth_unstable(cut_at);
            let cut = *cut;
            let mut freed = 0;
            g.map.retain(|_, e| {
                let keep = e.2 > cut;
                if !keep {
                    freed += e.1;
                }
                keep
            });
            g.total -= freed;
        }
    }

    /// Bytes currently held (approximate).
    pub fn weight(&self) -> usize {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).total
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
}
