//! `verify`: re-hash every live file and every block, then check every link of the clock and of
//! the current document tree. Independent of the caches and of the read path on purpose.

use crate::block::cid::Cid;
use crate::car::{self, FileName};
use crate::clock::Event;
use crate::doc;
use crate::head::Head;
use crate::seal::Key;
use crate::storage::Storage;
use crate::tree::{Items, Node};
use std::collections::{HashMap, HashSet};

/// One thing found wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The file or block concerned.
    pub location: String,
    pub what: String,
}

/// What `verify` checked and found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub files: usize,
    pub bytes: u64,
    pub blocks: usize,
    pub events: usize,
    pub docs: usize,
    pub tree_nodes: usize,
    pub problems: Vec<Problem>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
    fn bad(&mut self, location: impl Into<String>, what: impl Into<String>) {
        self.problems.push(Problem {
            location: location.into(),
            what: what.into(),
        });
    }
}

pub(crate) fn verify(db: &str, storage: &dyn Storage, key: &Key, head: &Head) -> Report {
    let mut r = Report::default();
    let mut blocks: HashMap<Cid, (FileName, Vec<u8>)> = HashMap::new();
    for f in &head.files {
        r.files += 1;
        let loc = format!("file {}", f.name);
        let bytes = match storage.read(&f.name) {
            Ok(b) => b,
            Err(e) => {
                r.bad(loc, format!("cannot read: {e}"));
                continue;
            }
        };
        r.bytes += bytes.len() as u64;
        if bytes.len() as u64 != f.size {
            r.bad(
                &loc,
                format!(
                    "size {} differs from the {} bytes the head record names",
                    bytes.len(),
                    f.size
                ),
            );
        }
        let t = &bytes[bytes.len().saturating_sub(car::TRAILER_LEN)..];
        if let Ok((_, n)) = car::parse_trailer(bytes.len() as u64, t) {
            if n != f.index_len {
                r.bad(
                    &loc,
                    format!(
                        "index length {n} differs from the {} the head record names",
                        f.index_len
                    ),
                );
            }
        }
        match car::verify_file(key, &f.name, &bytes) {
            Ok((_, bs)) => {
                r.blocks += bs.len();
                for (c, b) in bs {
                    blocks.entry(c).or_insert((f.name, b));
                }
            }
            Err(e) => r.bad(loc, e.to_string()),
        }
    }
    let where_ = |c: &Cid, blocks: &HashMap<Cid, (FileName, Vec<u8>)>| match blocks.get(c) {
        Some((f, _)) => format!("block {c} in file {f}"),
        None => format!("block {c}"),
    };

    // The clock: every event reachable from the heads, every parent link, every value link.
    let mut events: HashMap<Cid, Event> = HashMap::new();
    let mut stack: Vec<Cid> = head.heads.clone();
    let mut seen: HashSet<Cid> = HashSet::new();
    while let Some(c) = stack.pop() {
        if !seen.insert(c) {
            continue;
        }
        let Some((_, b)) = blocks.get(&c) else {
            r.bad(format!("event {c}"), "event block is missing");
            continue;
        };
        match Event::decode(b) {
            Ok(e) => {
                stack.extend_from_slice(&e.parents);
                for (id, l) in &e.ops {
                    if let Some(l) = l {
                        match blocks.get(l) {
                            None => r.bad(
                                format!("event {c}"),
                                format!("value of {id:?} ({l}) is missing"),
                            ),
                            Some((_, body)) => {
                                if let Err(w) = doc::decode(id, body) {
                                    r.bad(where_(l, &blocks), format!("document {id:?}: {w}"));
                                }
                            }
                        }
                    }
                }
                events.insert(c, e);
            }
            Err(e) => r.bad(where_(&c, &blocks), format!("not an event: {}", e.0)),
        }
    }
    for (c, e) in &events {
        let want = e
            .parents
            .iter()
            .filter_map(|p| events.get(p))
            .map(|p| p.height)
            .max()
            .unwrap_or(0)
            + 1;
        if e.parents.iter().all(|p| events.contains_key(p)) && e.height != want {
            r.bad(
                where_(c, &blocks),
                format!("height {} but parents say {want}", e.height),
            );
        }
    }
    r.events = events.len();
    if r.events as u64 != head.events {
        r.bad(
            "head record",
            format!(
                "names {} events but {} are reachable",
                head.events, r.events
            ),
        );
    }
    if let [h] = head.heads.as_slice() {
        if let Some(e) = events.get(h) {
            if e.root != head.root {
                r.bad(
                    "head record",
                    "tree root differs from the one its head event commits to",
                );
            }
        }
    }

    // The current document tree.
    let mut live = 0u64;
    let mut last_key: Option<Vec<u8>> = None;
    if let Some(root) = head.root {
        let mut stack: Vec<(Cid, Option<u8>)> = vec![(root, None)];
        // Depth-first, children pushed in reverse so keys come out in order.
        while let Some((c, want_level)) = stack.pop() {
            let Some((_, b)) = blocks.get(&c) else {
                r.bad(format!("tree node {c}"), "tree node is missing");
                continue;
            };
            let node = match Node::decode(b) {
                Ok(n) => n,
                Err(e) => {
                    r.bad(where_(&c, &blocks), format!("not a tree node: {}", e.0));
                    continue;
                }
            };
            r.tree_nodes += 1;
            if want_level.is_some_and(|l| l != node.level) {
                r.bad(where_(&c, &blocks), "tree node at the wrong level");
                continue;
            }
            match &node.items {
                Items::Branch(kids) => {
                    for k in kids.iter().rev() {
                        stack.push((*k, Some(node.level - 1)));
                    }
                }
                Items::Leaf(slots) => {
                    for (k, s) in node.keys.iter().zip(slots) {
                        if last_key.as_deref().is_some_and(|p| p >= &k[..]) {
                            r.bad(where_(&c, &blocks), "tree keys out of order");
                        }
                        last_key = Some(k.to_vec());
                        if let Some(l) = s.link {
                            live += 1;
                            if !blocks.contains_key(&l) {
                                r.bad(where_(&c, &blocks), format!("document {l} is missing"));
                            }
                        }
                    }
                }
            }
        }
    }
    r.docs = live as usize;
    if live != head.docs {
        r.bad(
            "head record",
            format!("counts {} documents but the tree holds {live}", head.docs),
        );
    }
    let _ = db;
    r
}
