//! An index tree's nodes: those in its files and fresh ones an update made and has not
//! written (all of them on a read-only store), and the files' upkeep: an update's new nodes go
//! to a delta file; past [`MAX_DELTAS`] deltas, the nodes the deltas hold that the tree still
//! uses are rewritten as one, or the whole tree as a new base when they outweigh half of it.

use super::state::IndexState;
use crate::db::derived::DerivedWriter;
use crate::db::Database;
use crate::error::{Error, Result};
use crate::format::block::cid::Cid;
use crate::model::tree::{self, NodeSource};
use crate::storage::FileName;
use std::collections::HashMap;
use std::sync::Arc;

/// Most delta files an index keeps before they are rewritten.
pub const MAX_DELTAS: usize = 8;

/// The nodes of one index tree.
pub struct Nodes<'a> {
    db: &'a Database,
    files: Vec<FileName>,
    /// Nodes made in memory and not (yet) written.
    fresh: HashMap<Cid, Fresh>,
}

/// A node made in memory: decoded with its encoding, or a leaf made as a [`tree::Leaf`] (a
/// new tree's: its encoding inside).
enum Fresh {
    Node(Vec<u8>, Arc<tree::Node>),
    Leaf(Arc<tree::Leaf>),
}

impl Fresh {
    fn encoding(&self) -> &[u8] {
        match self {
            Fresh::Node(b, _) => b,
            Fresh::Leaf(l) => l.encoding(),
        }
    }
}

impl<'a> Nodes<'a> {
    pub fn new(db: &'a Database, st: &IndexState) -> Nodes<'a> {
        Nodes {
            db,
            files: st.file_names(),
            fresh: HashMap::new(),
        }
    }

    /// Keeps an update's new nodes (`blocks`, and `leaves` made as leaves) in memory.
    pub fn add(
        &mut self,
        blocks: Vec<(Cid, Vec<u8>, Arc<tree::Node>)>,
        leaves: Vec<(Cid, Arc<tree::Leaf>)>,
    ) {
        self.fresh.reserve(blocks.len() + leaves.len());
        for (c, b, n) in blocks {
            self.fresh.insert(c, Fresh::Node(b, n));
        }
        for (c, l) in leaves {
            self.fresh.insert(c, Fresh::Leaf(l));
        }
    }

    /// Writes the fresh nodes the tree at `st.root` uses into a delta file (or a base, when
    /// the index has no files yet), then keeps the files in shape; `st.files` follows.
    pub fn write_out(&mut self, st: &mut IndexState, w: &DerivedWriter) -> Result<()> {
        let Some(root) = st.root else {
            // No rows: no files.
            st.files.clear();
            st.based = false;
            self.files.clear();
            self.fresh.clear();
            return Ok(());
        };
        // Only what the new tree reaches (an update's blocks may include nodes a later one in
        // the same batch replaced).
        let mut live = Vec::new();
        self.collect(&root, &mut |c| self.fresh.contains_key(c), &mut live)?;
        if !live.is_empty() {
            // (A build's file is packed on two threads: see `par::apart`.)
            let named = crate::util::par::apart(|| {
                w.write_nodes(
                    live.iter()
                        .filter_map(|c| self.fresh.get(c).map(|f| (c, f.encoding()))),
                )
            })?;
            let written = live
                .iter()
                .filter_map(|c| self.fresh.get(c).map(|f| (c, f)));
            let nodes = written.clone().filter_map(|(c, f)| match f {
                Fresh::Node(_, n) => Some((c, n)),
                Fresh::Leaf(_) => None,
            });
            let leaves = written.filter_map(|(c, f)| match f {
                Fresh::Leaf(l) => Some((c, l)),
                Fresh::Node(..) => None,
            });
            self.db.derived_nodes().keep_written(nodes, leaves);
            if st.files.is_empty() {
                st.based = true;
            }
            st.files.push(named);
            self.files.push(named.0);
        }
        self.fresh.clear();
        if st.files.len() > 1 + MAX_DELTAS {
            self.rewrite(st, w)?;
        }
        Ok(())
    }

    /// Rewrites the deltas' live nodes as one delta, or everything as a new base when the
    /// deltas' live nodes weigh more than half the base (or there is no base).
    fn rewrite(&mut self, st: &mut IndexState, w: &DerivedWriter) -> Result<()> {
        let Some(root) = st.root else { return Ok(()) };
        let base = st.based.then(|| st.files[0]);
        let holder = self.db.derived_nodes();
        let in_base = |c: &Cid| base.is_some_and(|(b, _)| holder.holds(&b, c).unwrap_or(false));
        let mut delta = Vec::new();
        self.collect(&root, &mut |c| !in_base(c), &mut delta)?;
        let delta_bytes: usize = delta
            .iter()
            .map(|c| self.encoded(c).map_or(0, |b| b.len()))
            .sum();
        let whole = match base {
            None => true,
            Some((_, size)) => delta_bytes as u64 * 2 > size,
        };
        let nodes = if whole {
            let mut all = Vec::new();
            self.collect(&root, &mut |_| true, &mut all)?;
            all
        } else {
            delta
        };
        let mut encoded = Vec::with_capacity(nodes.len());
        for c in &nodes {
            encoded.push((*c, self.encoded(c)?));
        }
        let named = w.write_nodes(encoded.iter().map(|(c, b)| (c, b.as_slice())))?;
        st.files = if whole {
            st.based = true;
            vec![named]
        } else {
            vec![st.files[0], named]
        };
        self.files = st.file_names();
        Ok(())
    }

    /// A node's encoding.
    fn encoded(&self, c: &Cid) -> Result<Vec<u8>> {
        if let Some(f) = self.fresh.get(c) {
            return Ok(f.encoding().to_vec());
        }
        // (A leaf kept as a leaf has its encoding: not made a node to be encoded again.)
        Ok(match self.leaf(c)? {
            tree::LeafRef::Leaf(l) => l.encoding().to_vec(),
            tree::LeafRef::Node(n) => n.encode(),
        })
    }

    /// The nodes under `root` (itself included) that `take` accepts, not descending below a
    /// node it refuses (a node written whole with its subtree).
    fn collect(
        &self,
        root: &Cid,
        take: &mut dyn FnMut(&Cid) -> bool,
        out: &mut Vec<Cid>,
    ) -> Result<()> {
        let mut stack = vec![*root];
        while let Some(c) = stack.pop() {
            if !take(&c) {
                continue;
            }
            // (A leaf made or kept as a leaf has no children: not made a node to be asked.)
            let node = match self.fresh.get(&c) {
                Some(Fresh::Leaf(_)) => None,
                Some(Fresh::Node(_, n)) => Some(n.clone()),
                None => match self.leaf(&c)? {
                    tree::LeafRef::Leaf(_) => None,
                    tree::LeafRef::Node(n) => Some(n),
                },
            };
            if let Some(n) = node {
                stack.extend(n.children().iter().copied());
            }
            out.push(c);
        }
        Ok(())
    }
}

impl NodeSource for Nodes<'_> {
    type Error = Error;
    fn node(&self, cid: &Cid) -> Result<Arc<tree::Node>> {
        match self.fresh.get(cid) {
            Some(Fresh::Node(_, n)) => Ok(n.clone()),
            Some(Fresh::Leaf(l)) => Ok(Arc::new(l.to_node())),
            None => self.db.derived_nodes().node(&self.files, cid),
        }
    }
    fn leaf(&self, cid: &Cid) -> Result<tree::LeafRef> {
        match self.fresh.get(cid) {
            Some(Fresh::Node(_, n)) => Ok(tree::LeafRef::Node(n.clone())),
            Some(Fresh::Leaf(l)) => Ok(tree::LeafRef::Leaf(l.clone())),
            None => self.db.derived_nodes().leaf(&self.files, cid),
        }
    }
}
