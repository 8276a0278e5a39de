//! Times `tree::update` on an in-memory tree: one-key updates (what a one-document commit
//! does) and 1,000-key batches, on a tree of N keys.
//!
//! `cargo run --release -p kiln --example tree_update -- [N] [1|1000]` (default 10,000 keys,
//! both kinds)

use kiln::internals::tree::{self, Mode, Node, NodeSource, Slot, TreeError};
use kiln::Cid;
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

#[derive(Default)]
struct Mem(RefCell<HashMap<Cid, Arc<Node>>>);

impl NodeSource for Mem {
    type Error = TreeError;
    fn node(&self, cid: &Cid) -> Result<Arc<Node>, TreeError> {
        self.0.borrow().get(cid).cloned().ok_or(TreeError {
            cid: *cid,
            what: "missing",
        })
    }
}

fn key(i: u64) -> Vec<u8> {
    format!("doc-{i:08}").into_bytes()
}

fn slot(v: u64) -> Option<Slot> {
    Some(Slot {
        version: v,
        link: Some(Cid::of_cbor(&v.to_le_bytes())),
    })
}

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10_000);
    let mem = Mem::default();
    let ops: Vec<tree::Op> = (0..n).map(|i| (key(i).into(), slot(1))).collect();
    let u = tree::update(&mem, None, &ops, Mode::Max, tree::Shape::default()).unwrap();
    for (c, _, node) in &u.blocks {
        mem.0.borrow_mut().insert(*c, node.clone());
    }
    let mut root = u.root;
    let only = std::env::args().nth(2);
    for (label, batch) in [("1-key update", 1u64), ("1,000-key batch", 1000)] {
        if only.as_deref().is_some_and(|o| o != batch.to_string()) {
            continue;
        }
        let rounds = if batch == 1 { 20_000 } else { 200 };
        let t = Instant::now();
        for r in 0..rounds {
            let v = r + 2; // a newer version each round
                           // Existing keys (overwrites) and new ones (appends), as put-seq and update do.
            let mut ops: Vec<tree::Op> = (0..batch)
                .map(|k| {
                    let i = (r * 7919 + k * 104_729) % (n + n / 10);
                    (key(i).into(), slot(v))
                })
                .collect();
            ops.sort_by(|a, b| a.0.cmp(&b.0));
            ops.dedup_by(|a, b| a.0 == b.0);
            let u =
                tree::update(&mem, root.as_ref(), &ops, Mode::Max, tree::Shape::default()).unwrap();
            for (c, _, node) in &u.blocks {
                mem.0.borrow_mut().insert(*c, node.clone());
            }
            root = u.root;
        }
        let per = t.elapsed().as_secs_f64() / rounds as f64;
        println!(
            "{label}: {:.1} µs per update ({:.2} µs per key), tree of {n} keys",
            per * 1e6,
            per * 1e6 / batch as f64
        );
    }
}
