//! Every live document of the current state, read file by file in the order the files store
//! them: for work that reads them all and does not need id order (an index build).
//!
//! A cursor reads documents in id order and finds each one through its file's index (a page
//! lookup per document, each in a different segment). A scan learns the live versions from
//! the tree first, then walks each file's segments once, in order, and takes the sections
//! that are live versions as it meets them. Tree nodes, events and replaced versions in the
//! same segments are stepped over. A live version no segment held (a damaged segment's
//! framing, a version in a purge's list) is then read the usual way, which reports what is
//! wrong with it. The segments go through the block cache as any read's do.
//!
//! The segments are shared between the calling thread and the helper (`util::par`), piece by
//! piece; a version stored twice (in two files) is taken once.

use super::*;
use crate::util::par;
use std::sync::atomic::{AtomicBool, Ordering};

/// What a scan hands over for each live document: its id, its version's CID and height, and
/// the document as decoded.
pub(crate) type ScanEach<'f, S, T = Value> =
    dyn Fn(&mut S, &str, &Cid, u64, T) -> Result<()> + Sync + 'f;

/// Segments per piece of work handed out to either thread.
const PIECE: usize = 8;

/// The live versions of a state's tree: each one's id, CID and height, found by CID.
#[derive(Default)]
struct Live {
    ids: Vec<u8>,
    /// (start in `ids`, length, version CID, height)
    versions: Vec<(u32, u32, Cid, u64)>,
    /// A version's first digest word → its first index in `versions`; `next` chains the
    /// others with the same word (the same version under several ids, or a rare clash).
    by_lead: DigestMap<u64, u32>,
    next: Vec<u32>,
    taken: Vec<AtomicBool>,
}

const END: u32 = u32::MAX;

impl Live {
    /// The live versions of `head`'s tree, its two halves walked on two threads.
    fn of(db: &Db, head: &Head) -> Result<Live> {
        let keys = {
            let v = View::new(db, head);
            super::cursor::split_keys(head.root, &|c| NodeSource::node(&v, c))?
        };
        // (Sized for the live documents the head counts: the first half, which takes the
        // second in, for all of them.)
        let walk = |lo, hi, room| Live::walk(&View::passing(db, head), lo, hi, room);
        let all = usize::try_from(head.docs).map_or(usize::MAX, |d| d.saturating_add(1));
        let (a, b) = match keys.get(keys.len() / 2).filter(|_| keys.len() >= 2) {
            Some(m) => par::join(|| walk(None, Some(m), all), || walk(Some(m), None, all / 2)),
            None => (walk(None, None, all), Ok(Live::default())),
        };
        let mut live = a?;
        live.append(b?, &db.name)?;
        live.index();
        Ok(live)
    }

    /// The live versions of the tree `v` reads with ids from `lo` to before `hi`, with room
    /// for `room` of them.
    fn walk(v: &View, lo: Option<&[u8]>, hi: Option<&[u8]>, room: usize) -> Result<Live> {
        // Room asked for, not required: the count is the head record's word, not the
        // tree's (a damaged one could ask for anything), so a refusal is no error.
        let room = room.min(1 << 24);
        let mut live = Live::default();
        let _ = live.versions.try_reserve(room);
        let _ = live.ids.try_reserve(room.saturating_mul(16));
        tree::range(v, v.head.root.as_ref(), lo, hi, &mut |k, slot| {
            if let Some(link) = slot.link {
                let at = live.ids.len() as u32;
                live.versions.push((at, k.len() as u32, link, slot.version));
                live.ids.extend_from_slice(k);
            }
            Ok(true)
        })?;
        Ok(live)
    }

    /// Adds the versions of `b` (of ids after this one's), as long as positions fit in u32
    /// (a half that did not fit makes the whole not fit).
    fn append(&mut self, b: Live, db: &str) -> Result<()> {
        if self.ids.len() + b.ids.len() > u32::MAX as usize
            || self.versions.len() + b.versions.len() >= END as usize
        {
            return Err(Error::InvalidArgument(format!(
                "database '{db}': too many documents to scan at once"
            )));
        }
        let shift = self.ids.len() as u32;
        self.ids.extend_from_slice(&b.ids);
        (self.versions).extend(
            b.versions
                .into_iter()
                .map(|(at, len, c, h)| (at + shift, len, c, h)),
        );
        Ok(())
    }

    /// Makes the versions findable by CID ([`Live::take`]), none taken yet.
    fn index(&mut self) {
        let n = self.versions.len();
        self.next = vec![END; n];
        self.by_lead.reserve(n);
        for (i, (_, _, cid, _)) in self.versions.iter().enumerate() {
            if let Some(first) = self.by_lead.insert(cid.lead(), i as u32) {
                self.next[i] = first;
            }
        }
        self.taken = (0..n).map(|_| AtomicBool::new(false)).collect();
    }

    /// The versions whose CID is `cid`, each taken by the first caller to ask.
    fn take<'s>(&'s self, cid: &'s Cid) -> impl Iterator<Item = usize> + 's {
        let mut at = self.by_lead.get(&cid.lead()).copied().unwrap_or(END);
        std::iter::from_fn(move || {
            while at != END {
                let i = at as usize;
                at = self.next[i];
                if self.versions[i].2 == *cid && !self.taken[i].swap(true, Ordering::Relaxed) {
                    return Some(i);
                }
            }
            None
        })
    }

    fn id(&self, i: usize, db: &Db) -> Result<&str> {
        let (at, len, ..) = self.versions[i];
        std::str::from_utf8(&self.ids[at as usize..(at + len) as usize])
            .map_err(|_| Error::corrupt(db.name.clone(), "document id is not UTF-8"))
    }
}

/// What a scan did ([`Database::scan_docs`]).
pub(crate) struct Scanned<S> {
    /// The heads of the state scanned.
    pub heads: Vec<Cid>,
    /// The two threads' states.
    pub states: [S; 2],
    /// Live versions no segment gave, read the usual way (none in a healthy store: what the
    /// tests check).
    #[cfg_attr(not(test), allow(dead_code))]
    pub looked_up: usize,
}

impl Database {
    /// Hands `each` every live document of the current state, decoded by `decode` (whole, or
    /// only what the caller reads), in no particular order, on this thread and the helper
    /// (each with its state, made by `init` given about how many documents the thread will
    /// take). On an error, some documents may have been handed over already: the caller starts
    /// again its own way.
    pub(crate) fn scan_docs<S: Send, T>(
        &self,
        decode: &DecodeDoc<'_, T>,
        init: impl Fn(usize) -> S + Sync,
        each: &ScanEach<'_, S, T>,
    ) -> Result<Scanned<S>> {
        let db = &*self.inner;
        let st = db.refresh()?;
        let head = &st.head;
        db.ensure_tree(head)?;
        let live = Live::of(db, head)?;
        if live.versions.is_empty() {
            return Ok(Scanned {
                heads: head.heads.clone(),
                states: [init(0), init(0)],
                looked_up: 0,
            });
        }
        // What either thread may expect to take, about (for its state's room).
        let share = live.versions.len() / 2 + live.versions.len() / 16;
        let mut units = Vec::new();
        for (i, f) in head.files.iter().enumerate() {
            let segs = db.index(f)?.segs.len() as u32;
            units.extend((0..segs).map(|n| (i, n)));
        }
        let purged = |c: &Cid| head.purged.binary_search(c).is_ok();
        let scan_piece = |piece: &[(usize, u32)], v: &View, s: &mut S| -> Result<()> {
            for &(f, n) in piece {
                let seg = v.segment(&head.files[f], n)?;
                for (cid, block) in car::sections(&seg) {
                    if purged(&cid) {
                        // Left to the usual read below, which says it is purged.
                        continue;
                    }
                    for i in live.take(&cid) {
                        let (_, _, link, version) = &live.versions[i];
                        let id = live.id(i, db)?;
                        let doc = decode(id, block).map_err(|w| v.corrupt_cid(link, w))?;
                        each(s, id, link, *version, doc)?;
                    }
                }
            }
            Ok(())
        };
        // After an error the other pieces are skipped: the caller reads again its own way.
        let failed = AtomicBool::new(false);
        let (done, states) = par::map_chunks(
            &units,
            PIECE,
            || (View::new(db, head), init(share)),
            |(v, s), _, piece| -> Result<()> {
                if failed.load(Ordering::Relaxed) {
                    return Ok(()); // the error is in another piece's result
                }
                let r = scan_piece(piece, v, s);
                if r.is_err() {
                    failed.store(true, Ordering::Relaxed);
                }
                r
            },
        );
        done.into_iter().collect::<Result<()>>()?;
        let [(_, mut a), (_, b)] = states;
        // What no segment gave: read as any read would (and fail as it would).
        let v = View::new(db, head);
        let mut looked_up = 0;
        for (i, taken) in live.taken.iter().enumerate() {
            if !taken.load(Ordering::Relaxed) {
                looked_up += 1;
                let (_, _, link, version) = &live.versions[i];
                let id = live.id(i, db)?;
                let doc = v.load_doc_as(id, link, *version, decode)?;
                each(&mut a, id, link, *version, doc)?;
            }
        }
        Ok(Scanned {
            heads: head.heads.clone(),
            states: [a, b],
            looked_up,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A scan lists the live versions by walking the whole document tree once: its leaves
    /// stay out of the cache (thousands of leaves no later read may want, and fresh memory
    /// for each); the documents' segments are cached as any read's.
    #[test]
    fn a_scan_leaves_the_document_trees_leaves_out_of_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let opts = || crate::Options {
            durability: crate::Durability::Buffered,
            ..Default::default()
        };
        {
            let store = crate::Store::open_with(dir.path(), opts()).unwrap();
            let db = store.create(Some("t")).unwrap();
            let docs: Vec<_> = (0..5_000)
                .map(|i| json!({"_id": format!("d{i:05}"), "n": i}))
                .collect();
            db.bulk(&docs).unwrap();
        }
        // Reopened: nothing cached.
        let store = crate::Store::open_with(dir.path(), opts()).unwrap();
        let db = store.open_db("t").unwrap();
        let decode = |id: &str, b: &[u8]| doc::decode(id, b);
        let got = db
            .scan_docs(&decode, |_| 0usize, &|n, _, _, _, _| {
                *n += 1;
                Ok(())
            })
            .unwrap();
        assert_eq!(got.states[0] + got.states[1], 5_000);
        let inner = &db.inner;
        let st = inner.refresh().unwrap();
        let v = View::new(inner, &st.head);
        let mut leaves = Vec::new();
        let mut level = vec![st.head.root.unwrap()];
        while let Some(c) = level.pop() {
            let n = NodeSource::node(&v, &c).unwrap();
            match n.level {
                0 => leaves.push(c),
                _ => level.extend(n.children().iter().copied()),
            }
        }
        assert!(leaves.len() > 10, "a tree of many leaves");
        for c in &leaves {
            let cached = inner.store.cache.get(&CacheKey::Leaf(inner.lineage, *c));
            assert!(cached.is_none(), "leaf {c} was cached");
        }
    }

    #[test]
    fn a_scan_hands_over_each_live_document_once_from_the_segments() {
        let dir = tempfile::tempdir().unwrap();
        let opts = crate::Options {
            durability: crate::Durability::Buffered,
            ..Default::default()
        };
        let store = crate::Store::open_with(dir.path(), opts).unwrap();
        let db = store.create(Some("t")).unwrap();
        // Replaced and deleted versions in the files, one body under many ids (one CID), a
        // compacted file beside newer diffs.
        let doc = |i: u64, round: u64| match i % 10 {
            3 => json!({"_id": format!("d{i:05}"), "same": true}),
            _ => json!({"_id": format!("d{i:05}"), "n": i, "round": round}),
        };
        for round in 0..3 {
            let docs: Vec<_> = (0..3_000)
                .filter(|i| i % (round + 1) == 0)
                .map(|i| doc(i, round))
                .collect();
            db.bulk(&docs).unwrap();
            if round == 1 {
                db.compact().unwrap();
            }
        }
        for i in (0..3_000).step_by(7) {
            db.del(&format!("d{i:05}")).unwrap();
        }
        let decode = |id: &str, b: &[u8]| doc::decode(id, b);
        let got = db
            .scan_docs(&decode, Vec::with_capacity, &|v, id, _, _, d| {
                v.push((id.to_owned(), d));
                Ok(())
            })
            .unwrap();
        assert_eq!(got.heads, db.heads().unwrap());
        assert_eq!(got.looked_up, 0, "every live version came from a segment");
        let [a, b] = got.states;
        let mut all: Vec<_> = a.into_iter().chain(b).collect();
        all.sort_by(|x, y| x.0.cmp(&y.0));
        let mut want = Vec::new();
        db.scan(&Default::default(), &mut |d| {
            want.push((d["_id"].as_str().unwrap().to_owned(), d.clone()));
            true
        })
        .unwrap();
        assert_eq!(all.len(), want.len());
        assert_eq!(all, want);
        // The head record's document count only sizes the live table: a wrong one (damage)
        // changes nothing, and the largest one neither overflows nor asks for all memory.
        let st = db.inner.refresh().unwrap();
        let live = Live::of(&db.inner, &st.head).unwrap();
        for docs in [0, 1, u64::MAX / 2, u64::MAX] {
            let mut head = st.head.clone();
            head.docs = docs;
            let other = Live::of(&db.inner, &head).unwrap();
            assert_eq!(other.versions, live.versions, "docs = {docs}");
            assert_eq!(other.ids, live.ids);
        }
    }
}
