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
    /// Nodes made in memory and not (yet) written: CID → (encoding, node).
    pub fresh: HashMap<Cid, (Vec<u8>, Arc<tree::Node>)>,
}

impl<'a> Nodes<'a> {
    pub fn new(db: &'a Database, st: &IndexState) -> Nodes<'a> {
        Nodes {
            db,
            files: st.file_names(),
            fresh: HashMap::new(),
        }
    }

    /// Keeps an update's new nodes in memory.
    pub fn add(&mut self, blocks: Vec<(Cid, Vec<u8>, Arc<tree::Node>)>) {
        for (c, b, n) in blocks {
            self.fresh.insert(c, (b, n));
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
            let named = w.write_nodes(
                live.iter()
                    .filter_map(|c| self.fresh.get(c).map(|(b, _)| (c, b.as_slice()))),
            )?;
            let written = live.iter().filter_map(|c| Some((c, &self.fresh.get(c)?.1)));
            self.db.derived_nodes().keep_written(written);
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
        if let Some((b, _)) = self.fresh.get(c) {
            return Ok(b.clone());
        }
        Ok(self.node(c)?.encode())
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
            let n = self.node(&c)?;
            stack.extend(n.children().iter().copied());
            out.push(c);
        }
        Ok(())
    }
}

impl NodeSource for Nodes<'_> {
    type Error = Error;
    fn node(&self, cid: &Cid) -> Result<Arc<tree::Node>> {
        if let Some((_, n)) = self.fresh.get(cid) {
            return Ok(n.clone());
        }
        self.db.derived_nodes().node(&self.files, cid)
    }
}
