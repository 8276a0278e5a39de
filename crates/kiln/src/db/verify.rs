//! `verify`: re-hash every live file and every block, then check every link of the clock and of
//! the current document tree. Independent of the caches and of the read path on purpose.

use crate::format::block::cid::Cid;
use crate::format::car::{self, FileName};
use crate::format::head::Head;
use crate::format::seal::Key;
use crate::model::clock::Event;
use crate::model::doc;
use crate::model::tree::{self, Items, Mode, Node, NodeSource, Slot, TreeError};
use crate::storage::Files;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

/// Every checked block: the file it is in and, for events and tree nodes, its bytes (a
/// document's bytes are checked as the file is read and not kept: they are most of a store).
type Blocks = HashMap<Cid, (FileName, Option<Vec<u8>>)>;

/// A block's bytes, or what it is instead (a document stored as such).
fn structural<'a>(blocks: &'a Blocks, c: &Cid) -> Option<Result<&'a [u8], &'static str>> {
    blocks.get(c).map(|(_, b)| {
        b.as_deref()
            .ok_or("it is stored as a document, not as an event or a tree node")
    })
}

/// The name a stored file's bytes hash to, read in order a MiB at a time.
fn name_of(storage: &dyn Files, name: &FileName, size: u64) -> std::io::Result<FileName> {
    const CHUNK: u64 = 1 << 20;
    let mut hasher: Option<car::NameHasher> = None;
    let mut off = 0;
    while off < size {
        let n = CHUNK.min(size - off) as usize;
        let b = storage.read_at(name, off, n)?;
        if b.len() != n {
            return Err(std::io::Error::other("the file is shorter than it was"));
        }
        hasher
            .get_or_insert_with(|| car::NameHasher::new(&b))
            .update(&b);
        off += n as u64;
    }
    Ok(hasher.unwrap_or_else(|| car::NameHasher::new(&[])).finish())
}

/// Tree nodes for verification: the checked blocks of the files, plus the nodes of the current
/// tree rebuilt from the base tree and the level-0 events.
struct Nodes<'a> {
    blocks: &'a Blocks,
    rebuilt: HashMap<Cid, Arc<Node>>,
}

impl NodeSource for Nodes<'_> {
    type Error = String;
    fn node(&self, cid: &Cid) -> Result<Arc<Node>, String> {
        if let Some(n) = self.rebuilt.get(cid) {
            return Ok(n.clone());
        }
        let b = structural(self.blocks, cid)
            .ok_or_else(|| format!("tree node {cid} is missing"))?
            .map_err(|w| format!("block {cid} is not a tree node: {w}"))?;
        Node::decode(b)
            .map(Arc::new)
            .map_err(|e| format!("block {cid} is not a tree node: {}", e.0))
    }
}

impl From<TreeError> for String {
    fn from(e: TreeError) -> String {
        format!("tree node {}: {}", e.cid, e.what)
    }
}

/// One thing found wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The file or block concerned.
    pub location: String,
    /// What is wrong there.
    pub what: String,
}

/// What `verify` checked and found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Files checked.
    pub files: usize,
    /// Bytes re-hashed.
    pub bytes: u64,
    /// Blocks checked.
    pub blocks: usize,
    /// Events reached from the heads.
    pub events: usize,
    /// Document versions the events name, found and checked.
    pub docs: usize,
    /// Tree nodes of the trees kept, checked.
    pub tree_nodes: usize,
    /// Document versions events name that were purged on purpose (not problems).
    pub purged: usize,
    /// Purged document versions still stored in a live file (a problem: a purge that did not
    /// finish, e.g. one interrupted before purges were crash-complete).
    pub purged_stored: usize,
    /// File-sets (attached files) the document versions name, checked whole.
    pub filesets: usize,
    /// Everything found wrong (empty: the database verifies).
    pub problems: Vec<Problem>,
    /// Files found lost or damaged (a power cut after their commit) and put back from the copy
    /// the head record carries before they were checked (not problems: they check whole now).
    pub repaired: Vec<FileName>,
    /// The head record ends in an append a crash left unfinished (a commit never
    /// acknowledged), which was discarded: readers skip it and the next commit cuts it off.
    pub torn_append: bool,
    /// The file-sets the document versions name, with the files named in each (for
    /// `verify_filesets`).
    pub(crate) named_files: std::collections::BTreeMap<FileName, Vec<Cid>>,
}

impl Report {
    /// No problem found.
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

/// Why a file's document log (see `car::doclog`) is not exactly what its events write (a
/// history read from it would miss or invent versions), if it is not: one entry per event in
/// the file (`structural`: its events and tree nodes, all in `blocks`) and id it writes.
fn log_disagrees(
    key: &Key,
    idx: &car::Index,
    read: &mut car::ReadPart<'_>,
    blocks: &Blocks,
    structural_here: &[Cid],
) -> Option<String> {
    let log = match car::verify_log(key, idx, read) {
        Ok(l) => l,
        Err(e) => return Some(e.to_string()),
    };
    let mut want: Vec<car::LogEntry> = Vec::new();
    for c in structural_here {
        if let Some(Ok(b)) = structural(blocks, c) {
            if let Ok(e) = Event::decode(b) {
                want.extend(
                    e.ops
                        .iter()
                        .map(|(id, _)| car::LogEntry::new(id.as_bytes(), e.height, c)),
                );
            }
        }
    }
    want.sort();
    want.dedup();
    (log != want).then(|| {
        "its document log disagrees with its events (history reads would miss or invent \
         versions)"
            .to_owned()
    })
}

/// Checks every file-set `r`'s document versions name (as `verify` found them) whole: each is
/// in `filesets`, opens, every chunk authenticates, every file's bytes match its CID, and
/// holds every file a document names in it.
pub(crate) fn verify_filesets(r: &mut Report, key: &Key, filesets: &dyn Files) {
    for (set, cids) in std::mem::take(&mut r.named_files) {
        let loc = format!("file-set {set}");
        let len = match filesets.len(&set) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                r.bad(loc, "not available locally (named by a document's _files)");
                continue;
            }
            Err(e) => {
                r.bad(loc, format!("cannot read: {e}"));
                continue;
            }
        };
        r.filesets += 1;
        r.bytes += len;
        let mut read = |off: u64, n: usize| {
            filesets
                .read_at(&set, off, n)
                .ok()
                .filter(|b| b.len() == n)
                .ok_or(car::FormatError::Framing(
                    "a part lies outside the file-set",
                ))
        };
        match crate::format::fileset::verify(key, &set, len, &mut read) {
            Ok(files) => {
                for c in cids {
                    if !files.iter().any(|f| f.cid == c) {
                        r.bad(
                            &loc,
                            format!("holds no file {c} (a document names it there)"),
                        );
                    }
                }
            }
            Err(e) => r.bad(loc, e.to_string()),
        }
    }
}

pub(crate) fn verify(db: &str, storage: &dyn Files, key: &Key, head: &Head) -> Report {
    let mut r = Report::default();
    let mut blocks: Blocks = HashMap::new();
    // Documents that do not decode, with why (reported where an event names them).
    let mut bad_docs: HashMap<Cid, &'static str> = HashMap::new();
    // The events of the level-0 files (one per diff): their writes on top of the base tree
    // make the current tree.
    let mut level0_events: Vec<Cid> = Vec::new();
    if head.scrub {
        r.bad(
            format!("database '{db}'"),
            "a purge is committed but not finished: purged versions may still be stored in \
             the store (`kiln gc` finishes it)",
        );
    }
    for f in head.files.iter() {
        r.files += 1;
        let loc = format!("file {}", f.name);
        // The file is read a part at a time (memory holds a part, never the file): once in
        // order for its name, then by its index for its contents.
        let size = match storage.len(&f.name) {
            Ok(n) => n,
            Err(e) => {
                r.bad(loc, format!("cannot read: {e}"));
                continue;
            }
        };
        r.bytes += size;
        if size != f.size {
            r.bad(
                &loc,
                format!(
                    "size {size} differs from the {} bytes the head record names",
                    f.size
                ),
            );
        }
        let mut read = |off: u64, len: usize| {
            storage
                .read_at(&f.name, off, len)
                .ok()
                .filter(|b| b.len() == len)
                .ok_or(car::FormatError::Framing("a part lies outside the file"))
        };
        if let Ok(t) = read(
            size.saturating_sub(car::TRAILER_LEN as u64),
            car::TRAILER_LEN,
        ) {
            if let Ok((_, n)) = car::parse_trailer(size, &t) {
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
        }
        match name_of(storage, &f.name, size) {
            Ok(n) if n == f.name => {}
            Ok(_) => {
                r.bad(
                    loc,
                    car::FormatError::Framing(car::NOT_ITS_NAME).to_string(),
                );
                continue;
            }
            Err(e) => {
                r.bad(loc, format!("cannot read: {e}"));
                continue;
            }
        }
        // What this file holds, kept only if the whole file checks out.
        let mut here: Vec<(Cid, Option<Vec<u8>>)> = Vec::new();
        let mut seen_here = 0;
        let mut bad_here: Vec<(Cid, &'static str)> = Vec::new();
        let mut purged_here = 0;
        let mut structural_here: Vec<Cid> = Vec::new();
        // The file-sets this file's document versions name, and the files named in each.
        let mut refs_here: Vec<(Cid, FileName)> = Vec::new();
        let mut named_here: Vec<(FileName, Cid)> = Vec::new();
        let checked = car::verify_parts(key, size, &mut read, &mut |c, b, kept| {
            seen_here += 1;
            if kept {
                structural_here.push(c);
            } else if let Ok(files) = doc::files::of_body(b) {
                for m in files {
                    refs_here.push((c, FileName(m.set)));
                    named_here.push((FileName(m.set), m.cid));
                }
            }
            if head.purged.binary_search(&c).is_ok() {
                purged_here += 1;
            }
            if blocks.contains_key(&c) {
                return;
            }
            if kept {
                here.push((c, Some(b.to_vec())));
            } else {
                if let Err(w) = doc::decode("", b) {
                    bad_here.push((c, w));
                }
                here.push((c, None));
            }
        });
        match checked {
            Ok(idx) => {
                if purged_here > 0 {
                    r.purged_stored += purged_here;
                    r.bad(
                        &loc,
                        format!(
                            "holds {purged_here} purged document version(s): a purge did not \
                             finish (`kiln gc` finishes it)"
                        ),
                    );
                }
                let unfiltered = structural_here
                    .iter()
                    .filter(|c| !f.filter.may_hold(c) || !idx.filter.may_hold(c))
                    .count();
                if unfiltered > 0 {
                    r.bad(
                        &loc,
                        format!(
                            "its filter misses {unfiltered} of its tree node(s) and event(s) \
                             (reads still find them, after probing every other file)"
                        ),
                    );
                }
                if f.level == 0 {
                    level0_events.extend_from_slice(&idx.meta.roots);
                }
                r.blocks += seen_here;
                for (c, b) in here {
                    blocks.entry(c).or_insert((f.name, b));
                }
                if idx.version >= car::LOGGED && idx.log.is_empty() {
                    // A reader takes a file without a log for one whose events other than its
                    // roots (the file's newest) write no document: a transaction's diff, or
                    // merge events.
                    let unlogged = structural_here
                        .iter()
                        .filter(|c| !idx.meta.roots.contains(c))
                        .filter_map(|c| match blocks.get(c) {
                            Some((_, Some(b))) => Event::decode(b).ok(),
                            _ => None,
                        })
                        .any(|e| !e.ops.is_empty());
                    if unlogged {
                        r.bad(
                            &loc,
                            "bad record: a file of several events without a document log",
                        );
                    }
                }
                refs_here.sort_unstable();
                refs_here.dedup();
                if refs_here != idx.refs.0 {
                    r.bad(
                        &loc,
                        "its list of the file-sets its documents name disagrees with them \
                         (garbage collection could remove attached files still named)",
                    );
                }
                for (set, cid) in named_here {
                    r.named_files.entry(set).or_default().push(cid);
                }
                if !idx.log.is_empty() {
                    if let Some(why) =
                        log_disagrees(key, &idx, &mut read, &blocks, &structural_here)
                    {
                        r.bad(&loc, why);
                    }
                }
                bad_docs.extend(bad_here);
            }
            Err(e) => r.bad(loc, e.to_string()),
        }
    }
    let where_ = |c: &Cid, blocks: &Blocks| match blocks.get(c) {
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
        let b = match structural(&blocks, &c) {
            None => {
                r.bad(format!("event {c}"), "event block is missing");
                continue;
            }
            Some(Err(w)) => {
                r.bad(where_(&c, &blocks), format!("not an event: {w}"));
                continue;
            }
            Some(Ok(b)) => b,
        };
        match Event::decode(b) {
            Ok(e) => {
                // History before a cut event was dropped on purpose.
                if head.cut_root(&c).is_none() {
                    stack.extend_from_slice(&e.parents);
                }
                for (id, l) in &e.ops {
                    if let Some(l) = l {
                        match blocks.get(l) {
                            None if head.purged.binary_search(l).is_ok() => r.purged += 1,
                            None => r.bad(
                                format!("event {c}"),
                                format!("value of {id:?} ({l}) is missing"),
                            ),
                            Some((_, body)) => {
                                let bad = match body {
                                    None => bad_docs.get(l).copied(),
                                    Some(b) => doc::decode(id, b).err(),
                                };
                                if let Some(w) = bad {
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
        if head.cut_root(c).is_none()
            && e.parents.iter().all(|p| events.contains_key(p))
            && e.height != want
        {
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
    // The base tree must be whole in the files; the current tree is it with the level-0
    // events' writes applied (the order-independent maximum per id), and must have the root
    // the head record names.
    let mut src = Nodes {
        blocks: &blocks,
        rebuilt: HashMap::new(),
    };
    if head.base != head.root {
        let mut latest: BTreeMap<Arc<[u8]>, Slot> = BTreeMap::new();
        for c in &level0_events {
            let Some(e) = events.get(c) else {
                r.bad(
                    format!("event {c}"),
                    "event of a level-0 file is not in the clock",
                );
                continue;
            };
            for (id, link) in &e.ops {
                let s = Slot {
                    version: e.height,
                    link: *link,
                };
                tree::raise_into(&mut latest, id.as_bytes().into(), s);
            }
        }
        let ops: Vec<tree::Op> = latest.into_iter().map(|(k, s)| (k, Some(s))).collect();
        match tree::update(&src, head.base.as_ref(), &ops, Mode::Max, head.shape) {
            Ok(u) if u.root == head.root => {
                src.rebuilt = u.blocks.into_iter().map(|(c, _, n)| (c, n)).collect();
            }
            Ok(_) => r.bad(
                "head record",
                "tree root is not the base tree with the level-0 events' writes applied",
            ),
            Err(e) => r.bad("base tree", e),
        }
    }
    // The state at every cut event: whole, with its values (or purged).
    for (e, root) in &head.cut {
        if !events.contains_key(e) {
            r.bad(
                format!("event {e}"),
                "the head record cuts history at an event that is not reachable",
            );
        }
        let mut stack: Vec<Cid> = root.iter().copied().collect();
        while let Some(c) = stack.pop() {
            match structural(&blocks, &c).map(|b| b.and_then(|b| Node::decode(b).map_err(|x| x.0)))
            {
                None => r.bad(
                    format!("tree node {c}"),
                    format!("node of the state at cut event {e} is missing"),
                ),
                Some(Err(x)) => r.bad(where_(&c, &blocks), format!("not a tree node: {x}")),
                Some(Ok(n)) => {
                    stack.extend_from_slice(n.children());
                    if let Items::Leaf(slots) = &n.items {
                        for l in slots.iter().filter_map(|s| s.link) {
                            if !blocks.contains_key(&l) && head.purged.binary_search(&l).is_err() {
                                r.bad(where_(&c, &blocks), format!("document {l} is missing"));
                            }
                        }
                    }
                }
            }
        }
    }
    if let Some(base) = head.base {
        // Every node of the base tree is in the files (a node the current tree shares with it
        // is checked again below; that is cheap).
        let mut stack = vec![base];
        while let Some(c) = stack.pop() {
            match structural(&blocks, &c).map(|b| b.and_then(|b| Node::decode(b).map_err(|x| x.0)))
            {
                None => r.bad(format!("tree node {c}"), "node of the base tree is missing"),
                Some(Ok(n)) => stack.extend_from_slice(n.children()),
                Some(Err(e)) => r.bad(where_(&c, &blocks), format!("not a tree node: {e}")),
            }
        }
    }
    let mut live = 0u64;
    let mut last_key: Option<Vec<u8>> = None;
    if let Some(root) = head.root {
        // (Each node with whether it is its level's last: the root, and the last child of a
        // level's last node.)
        let mut stack: Vec<(Cid, Option<u8>, bool)> = vec![(root, None, true)];
        while let Some((c, want_level, last_of_level)) = stack.pop() {
            let node = match src.node(&c) {
                Ok(n) => n,
                Err(e) => {
                    r.bad(where_(&c, &blocks), e);
                    continue;
                }
            };
            r.tree_nodes += 1;
            if want_level.is_some_and(|l| l != node.level) {
                r.bad(where_(&c, &blocks), "tree node at the wrong level");
                continue;
            }
            if !tree::ends_as_shaped(&node, head.shape, last_of_level) {
                r.bad(
                    where_(&c, &blocks),
                    format!(
                        "tree node does not end where the database's tree shape ({:?}) says",
                        head.shape
                    ),
                );
            }
            match &node.items {
                Items::Branch(kids) => {
                    for (i, k) in kids.iter().enumerate().rev() {
                        let last = last_of_level && i + 1 == kids.len();
                        stack.push((*k, Some(node.level - 1), last));
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
                            if !blocks.contains_key(&l) && head.purged.binary_search(&l).is_err() {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::car::{Meta, Writer};
    use crate::format::head::FileRef;
    use crate::storage::LocalStorage;

    /// A document block that is no document (a CBOR number, not a map) is reported where an
    /// event names it, with the id and the file, though verify keeps no document's bytes; an
    /// event stored as a document block is "not an event".
    #[test]
    fn bad_documents_and_misfiled_events_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let storage = LocalStorage::new(dir.path());
        let key = Key::generate().unwrap();
        let bad = vec![0x05];
        let bad_cid = Cid::of_cbor(&bad);
        let event = Event {
            parents: vec![],
            height: 1,
            time: 1,
            ops: vec![("a".into(), Some(bad_cid))],
            root: None,
            purge: vec![],
            conflicts: vec![],
            source: vec![],
            note: String::new(),
        };
        let eb = event.encode();
        let ecid = Cid::of_cbor(&eb);
        for misfiled in [false, true] {
            let mut w = Writer::new(Meta {
                level: 0,
                time: 1,
                roots: vec![ecid],
                replaces: vec![],
            });
            w.add(bad_cid, &bad);
            if misfiled {
                w.add(ecid, &eb); // an event stored as a document
            } else {
                w.add_event(ecid, &eb);
            }
            let f = w.finish(&key, false, 0).unwrap();
            let bytes = f.bytes.clone();
            let name = FileName::of(&bytes);
            storage.put(&name, &bytes, false).unwrap();
            let head = Head {
                heads: vec![ecid],
                events: 1,
                files: Arc::new(vec![FileRef {
                    name,
                    level: 0,
                    size: bytes.len() as u64,
                    index_len: f.index_len,
                    heights: (1, 1),
                    filter: crate::format::head::Filter::None,
                }]),
                ..Head::default()
            };
            let r = verify("t", &storage, &key, &head);
            let said: Vec<String> = r
                .problems
                .iter()
                .map(|p| format!("{}: {}", p.location, p.what))
                .collect();
            let want = if misfiled {
                format!("block {ecid} in file {name}: not an event: it is stored as a document")
            } else {
                format!(
                    "block {bad_cid} in file {name}: document \"a\": document body is not a map"
                )
            };
            assert!(said.iter().any(|s| s.starts_with(&want)), "{said:?}");
        }
    }
}
