//! Cursors: a database's documents in id order, forwards or backwards, within bounds, after a
//! key, with a prefix; read from the state the cursor was opened on, a batch at a time.
//!
//! A cursor holds its snapshot (the head record it was opened on), not the documents: each
//! batch descends the snapshot's tree from where the last one stopped. If a compaction
//! replaced the snapshot's files meanwhile (reads then fail to find them), the snapshot's
//! tree is rebuilt once from its history (the same state, as every replica computes it) and
//! the cursor goes on from there: what it hands out is always the state it was opened on.

use super::*;
use crate::model::tree::NodeSource;
use serde::de::DeserializeOwned;
use std::collections::VecDeque;
use std::marker::PhantomData;

/// A live tree entry of a batch, its document not yet loaded.
#[derive(Clone, Copy)]
struct Entry {
    /// Where its id is in the batch's `ids`, and its length.
    at: u32,
    len: u32,
    /// The document version's CID and version.
    link: Cid,
    version: u64,
    /// Where the leaf naming it was read: its document is usually beside it (a batch spans
    /// many leaves, and a document looked for from another leaf's place goes to the index,
    /// at a million documents an index page a load: scans were a third slower).
    near: Option<Place>,
}

/// Entries read by the first batch; each later batch doubles, up to [`MAX_BATCH`].
const FIRST_BATCH: usize = 16;
const MAX_BATCH: usize = 256;

/// An iterator over documents in id order, as JSON (see [`Database::cursor`]; typed:
/// [`TypedCursor`]).
pub struct Cursor {
    db: Database,
    /// The clock heads of the state this cursor reads (`snapshot` may later be a newer head
    /// record read through, see [`Cursor::read_through`]).
    heads: Vec<Cid>,
    snapshot: Arc<State>,
    /// The snapshot's tree built from its history, once its files are gone.
    rebuilt: Option<(Option<Cid>, DigestMap<Cid, Arc<tree::Node>>)>,
    /// Ids still to visit: `lo` inclusive, `hi` exclusive (`None`: unbounded).
    lo: Option<Vec<u8>>,
    hi: Option<Vec<u8>>,
    desc: bool,
    left: Option<usize>,
    /// The batch's entries not yet handed out. Documents are loaded one at a time as they are
    /// handed out (a batch of decoded documents held at once made the allocator's work a
    /// third slower).
    buf: VecDeque<Entry>,
    /// The batch's ids, back to back (one allocation for the batch, its room kept).
    ids: Vec<u8>,
    batch: usize,
    done: bool,
    /// Where the last batch read (the next one's documents are usually beside it).
    hints: Hints,
}

impl std::fmt::Debug for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cursor")
            .field("db", &self.db.name())
            .field("desc", &self.desc)
            .field("done", &self.done)
            .finish()
    }
}

/// The smallest byte string greater than every string starting with `prefix` (`None`: there
/// is none, every string from `prefix` on starts with it or is greater).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// `id` followed by a zero byte: the smallest id greater than `id`.
pub(super) fn just_after(id: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(id.len() + 1);
    v.extend_from_slice(id);
    v.push(0);
    v
}

fn max_lo(a: Option<Vec<u8>>, b: Option<Vec<u8>>) -> Option<Vec<u8>> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

fn min_hi(a: Option<Vec<u8>>, b: Option<Vec<u8>>) -> Option<Vec<u8>> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The ids `opts` selects as a key range `[lo, hi)` (`None`: unbounded).
pub(super) fn bounds(opts: &ListOptions) -> (Option<Vec<u8>>, Option<Vec<u8>>) {
    let mut lo = opts.start.as_ref().map(|s| s.as_bytes().to_vec());
    let mut hi = opts.end.as_ref().map(|e| just_after(e.as_bytes()));
    if let Some(p) = &opts.prefix {
        lo = max_lo(lo, Some(p.as_bytes().to_vec()));
        hi = min_hi(hi, prefix_end(p.as_bytes()));
    }
    if let Some(a) = &opts.after {
        if opts.desc {
            hi = min_hi(hi, Some(a.as_bytes().to_vec()));
        } else {
            lo = max_lo(lo, Some(just_after(a.as_bytes())));
        }
    }
    (lo, hi)
}

/// Children of the root below which [`Cursor::split`] looks one level further down.
const SPLIT_FANOUT: usize = 16;

/// Keys that cut a tree into pieces of about equal size: the first keys of the nodes one
/// level below the root, or two when the root has few children (their sizes vary: a split
/// among a handful is seldom near the middle). The middle one halves the tree.
pub(super) fn split_keys(
    root: Option<Cid>,
    node: &dyn Fn(&Cid) -> Result<Arc<tree::Node>>,
) -> Result<Vec<Arc<[u8]>>> {
    let Some(root) = root else {
        return Ok(Vec::new());
    };
    let top = node(&root)?;
    if top.level < 2 || top.keys.len() >= SPLIT_FANOUT {
        return Ok(top.keys.clone());
    }
    let mut keys = Vec::new();
    for c in top.children() {
        keys.extend(node(c)?.keys.iter().cloned());
    }
    Ok(keys)
}

impl Cursor {
    pub(super) fn open(db: &Database, opts: &ListOptions) -> Result<Cursor> {
        let snapshot = db.inner.refresh()?;
        let (lo, hi) = bounds(opts);
        Ok(Cursor {
            db: db.clone(),
            heads: snapshot.head.heads.clone(),
            snapshot,
            rebuilt: None,
            lo,
            hi,
            desc: opts.desc,
            left: opts.limit,
            buf: VecDeque::new(),
            ids: Vec::new(),
            batch: FIRST_BATCH,
            done: opts.limit == Some(0),
            hints: Hints::default(),
        })
    }

    /// The clock heads of the state this cursor reads.
    pub fn heads(&self) -> &[Cid] {
        &self.heads
    }

    /// This cursor's documents as two cursors over the same state, the first's ids all below
    /// the second's, split where the top of the document tree splits them (about in half), so
    /// two threads can read them apart. An ascending cursor not yet read from and without a
    /// limit splits; another, or one over too few documents, comes back whole (`None`).
    pub(crate) fn split(mut self) -> Result<(Cursor, Option<Cursor>)> {
        let fresh = self.buf.is_empty() && !self.done && self.left.is_none();
        if !fresh || self.desc || self.rebuilt.is_some() || self.snapshot.head.root.is_none() {
            return Ok((self, None));
        }
        let keys = self.with_view(|v| {
            // (Through the source: once a compaction replaced the snapshot's files, its tree
            // is the one rebuilt from history.)
            split_keys(v.root(), &|c| v.node(c))
        })?;
        let inside = |k: &[u8]| {
            self.lo.as_deref().is_none_or(|lo| lo < k) && self.hi.as_deref().is_none_or(|hi| k < hi)
        };
        let at = (keys.len() >= 2).then(|| keys[keys.len() / 2].to_vec());
        let Some(at) = at.filter(|k| inside(k)) else {
            return Ok((self, None));
        };
        let second = Cursor {
            db: self.db.clone(),
            heads: self.heads.clone(),
            snapshot: self.snapshot.clone(),
            rebuilt: None,
            lo: Some(at.clone()),
            hi: self.hi.take(),
            desc: false,
            left: None,
            buf: VecDeque::new(),
            ids: Vec::new(),
            batch: FIRST_BATCH,
            done: false,
            hints: Hints::default(),
        };
        self.hi = Some(at);
        Ok((self, Some(second)))
    }

    /// The next document as JSON, or `None` at the end.
    fn next_value(&mut self) -> Result<Option<Value>> {
        Ok(self.next_linked()?.map(|(_, _, _, d)| d))
    }

    /// The next document with its id, its version's CID and its version (an index keeps
    /// the CID to read the version again without the tree), or `None` at the end.
    pub(crate) fn next_linked(&mut self) -> Result<Option<(String, Cid, u64, Value)>> {
        if self.buf.is_empty() && !self.done {
            self.fill()?;
        }
        let Some(Entry {
            at,
            len,
            link,
            version,
            near,
        }) = self.buf.pop_front()
        else {
            self.done = true;
            return Ok(None);
        };
        if let Some(l) = &mut self.left {
            *l -= 1;
            if *l == 0 {
                self.done = true;
                self.buf.clear();
            }
        }
        let id = std::str::from_utf8(&self.ids[at as usize..(at + len) as usize])
            .map_err(|_| Error::corrupt(self.db.name().to_owned(), "document id is not UTF-8"))?
            .to_owned();
        let doc = self.with_view(|v| v.load_doc(&id, &link, version, near))?;
        Ok(Some((id, link, version, doc)))
    }

    /// Runs `f` on a view of the snapshot. If the files it reads through are gone (another
    /// handle or process compacted: the files were replaced) and the database moved on, the
    /// snapshot's tree is rebuilt (once) from its history, read through the newer files, and
    /// `f` runs again; the files can be replaced again meanwhile, so this repeats a few
    /// times. Under an unchanged head record the damage is real.
    fn with_view<T>(&mut self, mut f: impl FnMut(&dyn CursorSource) -> Result<T>) -> Result<T> {
        let mut tries = 0;
        loop {
            let e = match self.on_view(&mut f) {
                Err(e) if e.is_corruption() => e,
                r => return r,
            };
            loop {
                let now = self.db.inner.reload()?;
                let through = &self.snapshot.head;
                if tries == 8 || (now.head.seq == through.seq && now.head.files == through.files) {
                    return Err(e);
                }
                tries += 1;
                match self.read_through(&now) {
                    Err(e) if e.is_corruption() => continue,
                    r => r?,
                }
                break;
            }
        }
    }
    fn on_view<T>(&mut self, f: &mut dyn FnMut(&dyn CursorSource) -> Result<T>) -> Result<T> {
        let db = &self.db.inner;
        let head = &self.snapshot.head;
        let hints = std::mem::take(&mut self.hints);
        match &mut self.rebuilt {
            None => {
                db.ensure_tree(head)?;
                let view = View::resume(db, head, hints);
                let r = f(&view);
                self.hints = view.hints();
                r
            }
            Some((root, nodes)) => {
                let point = Point {
                    view: View::resume(db, head, hints),
                    root: *root,
                    built: std::mem::take(nodes),
                };
                let r = f(&point);
                *nodes = point.built;
                self.hints = point.view.hints();
                r
            }
        }
    }

    /// Reads the next batch of the snapshot's entries into `buf`, and moves the bounds past
    /// it.
    fn fill(&mut self) -> Result<()> {
        let want = self.batch.min(self.left.unwrap_or(usize::MAX));
        self.batch = (self.batch * 2).min(MAX_BATCH);
        self.ids.clear();
        let (lo, hi, desc) = (self.lo.clone(), self.hi.clone(), self.desc);
        let mut got = Vec::new();
        let mut ids = std::mem::take(&mut self.ids);
        let stop = self.with_view(|src| {
            got.clear();
            ids.clear();
            let b = Batch {
                lo: &lo,
                hi: &hi,
                desc,
                want,
            };
            src.entries(&b, &mut ids, &mut got)
        })?;
        self.ids = ids;
        match stop {
            Stop::End => self.done = true,
            // The next batch starts at the key it stopped before.
            Stop::Before(k) if self.desc => self.hi = Some(just_after(&k)),
            Stop::Before(k) => self.lo = Some(k),
            // Or right after the last entry taken.
            Stop::Full => {
                if let Some(&Entry { at, len, .. }) = got.last() {
                    let id = &self.ids[at as usize..(at + len) as usize];
                    if self.desc {
                        self.hi = Some(id.to_vec());
                    } else {
                        self.lo = Some(just_after(id));
                    }
                }
            }
        }
        self.buf.extend(got);
        Ok(())
    }

    /// Reads the snapshot on through the files of `now` (a newer head record): its tree
    /// rebuilt from its history the first time (the files replaced held the tree's nodes).
    fn read_through(&mut self, now: &State) -> Result<()> {
        let root = match &self.rebuilt {
            Some((root, _)) => *root,
            None => {
                let db = &self.db.inner;
                let view = View::new(db, &now.head);
                let built = match db.state_of_heads(&view, &self.heads) {
                    // Its history was dropped meanwhile (`drop_history_before`).
                    Err(Error::NoSuchEvent(..)) => return Err(Error::Changed(db.name.clone())),
                    r => r?,
                };
                if built.root != self.snapshot.head.root {
                    return Err(Error::corrupt(
                        db.name.clone(),
                        "a cursor's snapshot rebuilt from its history is not the state its \
                         head record names",
                    ));
                }
                let nodes = built.blocks.into_iter().map(|(c, _, n)| (c, n)).collect();
                self.rebuilt = Some((built.root, nodes));
                built.root
            }
        };
        self.snapshot = Arc::new(State {
            head: Head {
                root,
                ..now.head.clone()
            },
            stamp: now.stamp,
            log: now.log.clone(),
        });
        Ok(())
    }
}

/// What a batch asks for: ids in `[lo, hi)`, ascending or descending, at most `want`.
struct Batch<'b> {
    lo: &'b Option<Vec<u8>>,
    hi: &'b Option<Vec<u8>>,
    desc: bool,
    want: usize,
}

/// What a cursor reads through: a view of its snapshot, or that view with the snapshot's tree
/// rebuilt ([`Point`]).
trait CursorSource {
    /// Appends to `out` the batch's live entries (a batch ends with a leaf), their ids to
    /// `ids`.
    fn entries(&self, b: &Batch, ids: &mut Vec<u8>, out: &mut Vec<Entry>) -> Result<Stop>;
    /// The view documents are read through.
    fn view(&self) -> &View<'_>;
    /// The root of the snapshot's tree, and a node of it.
    fn root(&self) -> Option<Cid>;
    fn node(&self, cid: &Cid) -> Result<Arc<tree::Node>>;
    /// The document of an entry, looked for first beside the leaf that named it.
    fn load_doc(&self, id: &str, link: &Cid, version: u64, near: Option<Place>) -> Result<Value> {
        self.view().near.set(near);
        self.view().load_doc(id, link, version)
    }
}

impl CursorSource for View<'_> {
    fn entries(&self, b: &Batch, ids: &mut Vec<u8>, out: &mut Vec<Entry>) -> Result<Stop> {
        collect(self, self, self.head.root.as_ref(), b, ids, out)
    }
    fn view(&self) -> &View<'_> {
        self
    }
    fn root(&self) -> Option<Cid> {
        self.head.root
    }
    fn node(&self, cid: &Cid) -> Result<Arc<tree::Node>> {
        NodeSource::node(self, cid)
    }
}

impl CursorSource for Point<'_> {
    fn entries(&self, b: &Batch, ids: &mut Vec<u8>, out: &mut Vec<Entry>) -> Result<Stop> {
        collect(self, &self.view, self.root.as_ref(), b, ids, out)
    }
    fn view(&self) -> &View<'_> {
        &self.view
    }
    fn root(&self) -> Option<Cid> {
        self.root
    }
    fn node(&self, cid: &Cid) -> Result<Arc<tree::Node>> {
        NodeSource::node(self, cid)
    }
}

/// Appends to `out` up to `want` live entries with ids in `[lo, hi)` of the tree at `root`
/// (read through `src`, whose view is `view`), ascending or descending, their ids to `ids`;
/// says why it stopped.
fn collect<S: NodeSource<Error = Error>>(
    src: &S,
    view: &View,
    root: Option<&Cid>,
    b: &Batch,
    ids: &mut Vec<u8>,
    out: &mut Vec<Entry>,
) -> Result<Stop> {
    let mut stop = Stop::End;
    let mut f = |k: &[u8], s: &Slot| -> Result<bool> {
        let Some(link) = s.link else { return Ok(true) };
        // A batch ends with its first leaf read from a file: the leaf's segment is then the
        // view's last one, where its documents are (read again, at a million documents, when
        // a batch spanned many leaves: the cache keeps a segment only when asked for twice).
        let near = view.near.get();
        if out
            .first()
            .is_some_and(|e| e.near.is_some() && e.near != near)
        {
            stop = Stop::Before(k.to_vec());
            return Ok(false);
        }
        out.push(Entry {
            at: ids.len() as u32,
            len: k.len() as u32,
            link,
            version: s.version,
            near,
        });
        ids.extend_from_slice(k);
        if out.len() >= b.want {
            stop = Stop::Full;
            return Ok(false);
        }
        Ok(true)
    };
    let (lo, hi) = (b.lo.as_deref(), b.hi.as_deref());
    if lo.zip(hi).is_some_and(|(l, h)| l >= h) {
        return Ok(Stop::End);
    }
    if b.desc {
        tree::range_rev(src, root, lo, hi, &mut f)?;
    } else {
        tree::range(src, root, lo, hi, &mut f)?;
    }
    Ok(stop)
}

/// Why a batch ended.
enum Stop {
    /// The range has no more entries.
    End,
    /// It holds as many entries as asked for.
    Full,
    /// At a leaf read from a file other than the batch's first: the next batch starts at
    /// this key (a descent straight to that leaf; after the last entry taken, it would read
    /// the leaf before it again).
    Before(Vec<u8>),
}

impl Iterator for Cursor {
    type Item = Result<Value>;
    fn next(&mut self) -> Option<Result<Value>> {
        match self.next_value() {
            Ok(d) => d.map(Ok),
            Err(e) => {
                self.done = true;
                self.buf.clear();
                Some(Err(e))
            }
        }
    }
}

/// A cursor over documents decoded as `T` ([`Database::cursor_as`]).
pub struct TypedCursor<T> {
    inner: Cursor,
    _doc: PhantomData<fn() -> T>,
}

impl<T> TypedCursor<T> {
    /// The clock heads of the state this cursor reads.
    pub fn heads(&self) -> &[Cid] {
        self.inner.heads()
    }
}

impl<T> std::fmt::Debug for TypedCursor<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.fmt(f)
    }
}

impl<T: DeserializeOwned> Iterator for TypedCursor<T> {
    type Item = Result<T>;
    fn next(&mut self) -> Option<Result<T>> {
        let c = &mut self.inner;
        let r = c
            .next_value()
            .and_then(|d| d.map(|v| typed::decode_doc(c.db.name(), v)).transpose());
        match r {
            Ok(d) => d.map(Ok),
            Err(e) => {
                c.done = true;
                c.buf.clear();
                Some(Err(e))
            }
        }
    }
}

impl Database {
    /// An iterator over the documents `opts` selects, in id order (descending with
    /// `opts.desc`), read from the state as it is now (later commits do not show), a batch at
    /// a time: it holds the state, not the documents. `limit` bounds how many it yields.
    ///
    /// ```
    /// # fn main() -> kiln::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let store = kiln::Store::open(dir.path())?;
    /// # let db = store.create(Some("chat"))?;
    /// for i in 0..100 {
    ///     db.put(&serde_json::json!({"_id": format!("lobby/{i:04}"), "n": i}))?;
    /// }
    /// // The latest 3 messages of the room, newest first.
    /// let latest = db.cursor(&kiln::ListOptions::default().prefix("lobby/").desc().limit(3))?;
    /// let n: Vec<i64> = latest.map(|d| Ok(d?["n"].as_i64().unwrap())).collect::<kiln::Result<_>>()?;
    /// assert_eq!(n, [99, 98, 97]);
    /// // The page after a given id.
    /// let page = db.cursor(&kiln::ListOptions::default().after("lobby/0010").limit(2))?;
    /// assert_eq!(page.map(|d| d.unwrap()["n"].clone()).collect::<Vec<_>>(), [11, 12]);
    /// # Ok(()) }
    /// ```
    pub fn cursor(&self, opts: &ListOptions) -> Result<Cursor> {
        Cursor::open(self, opts)
    }

    /// [`Database::cursor`] yielding documents as `T`s (see [`Database::get_as`]).
    pub fn cursor_as<T: DeserializeOwned>(&self, opts: &ListOptions) -> Result<TypedCursor<T>> {
        Ok(TypedCursor {
            inner: Cursor::open(self, opts)?,
            _doc: PhantomData,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ids(mut c: Cursor) -> Vec<String> {
        let mut out = Vec::new();
        while let Some((id, ..)) = c.next_linked().unwrap() {
            out.push(id);
        }
        out
    }

    #[test]
    fn a_split_cursor_reads_every_document_once_in_two_runs() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::Store::open(dir.path()).unwrap();
        let db = store.create(Some("s")).unwrap();
        let all: Vec<String> = (0..5_000).map(|i| format!("d{i:05}")).collect();
        let docs: Vec<Value> = all.iter().map(|id| json!({"_id": id})).collect();
        db.bulk(&docs).unwrap();
        let (a, b) = db.cursor(&ListOptions::default()).unwrap().split().unwrap();
        let (a, b) = (ids(a), ids(b.expect("5,000 documents split")));
        // About in half (the top of the tree splits them), and together every one once.
        assert!(
            a.len() > 1_000 && b.len() > 1_000,
            "{} / {}",
            a.len(),
            b.len()
        );
        assert_eq!([a, b].concat(), all);
        // Bounds are kept: the halves of a range are that range.
        let opts = ListOptions::default().start("d00100").end("d04899");
        let (a, b) = db.cursor(&opts).unwrap().split().unwrap();
        let mut got = ids(a);
        got.extend(b.map(ids).unwrap_or_default());
        assert_eq!(got, all[100..4_900]);
        // A cursor read from, descending or limited stays whole.
        let mut read = db.cursor(&ListOptions::default()).unwrap();
        read.next_linked().unwrap();
        assert!(read.split().unwrap().1.is_none());
        for opts in [
            ListOptions::default().desc(),
            ListOptions::default().limit(10),
        ] {
            assert!(db.cursor(&opts).unwrap().split().unwrap().1.is_none());
        }
        // One document (the root a leaf) stays whole.
        let small = store.create(Some("small")).unwrap();
        small.bulk(&docs[..1]).unwrap();
        let (a, b) = small
            .cursor(&ListOptions::default())
            .unwrap()
            .split()
            .unwrap();
        assert!(b.is_none());
        assert_eq!(ids(a), all[..1]);
    }
}
