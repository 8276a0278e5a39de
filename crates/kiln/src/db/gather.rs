//! Many document versions read at once (a query's rows with their documents): found and
//! fetched in passes over all of them, each pass with nothing between its steps that waits
//! for the one before, so that one row's waits for memory overlap the next rows' instead of
//! following one another (see [`Cache::get_each`](super::cache::Cache::get_each)); each then
//! decoded as its row is handed over. Measured at 10,000 documents, a query of 100 rows with
//! their bodies spent about 40% of its time finding and fetching them one by one (an index
//! page, a segment, the block), mostly waiting for memory.

use super::*;
use crate::format::block::cid::CID_LEN;
use crate::util::par;

/// Reads from files (pages, segments) a gathering hands half of to the helper thread: fewer
/// are not worth the hand-over (a few µs to a helper that is awake, 30–80 µs to one asleep).
const READ_APART: usize = 16;

/// The bytes a CPU brings into its cache at once (64 on the machines kiln is built for; a
/// wrong guess costs speed, never a result).
const LINE: usize = 64;

/// Document versions found together ([`View::gather`]), each read when wanted
/// ([`View::load_gathered`]).
pub(crate) struct Gathered<'a> {
    /// Each version (its CID and the version of the slot that names it).
    wants: Vec<(Cid, u64)>,
    /// Where each was found, if it was.
    found: Vec<Found<'a>>,
    /// The segment each found one is in.
    segments: Vec<Option<Arc<Vec<u8>>>>,
}

/// What [`View::read_once`] read, by key.
struct ReadOnce<K, T> {
    /// Sorted, each once.
    keys: Vec<K>,
    /// Each key's value.
    values: Vec<T>,
}

impl<K: Ord, T: Clone> ReadOnce<K, T> {
    /// The value read for `k`, if it was one of the keys.
    fn get(&self, k: &K) -> Option<T> {
        let at = self.keys.binary_search(k).ok()?;
        Some(self.values[at].clone())
    }
}

/// Where a version was found: its file and its entry there.
type Found<'a> = Option<(&'a FileRef, car::Entry)>;

impl<'a> View<'a> {
    /// Finds each of `wants` (a version's CID and the version of the slot that names it) and
    /// fetches the segment it is in. Each is looked for in the file whose heights cover its
    /// slot's version, through that file's index pages; one not found so (or purged) is read
    /// alone by [`View::load_gathered`]. An error here may be any of the versions' (reading
    /// its file's index, a page, a segment): its caller reads each alone instead, to meet
    /// the error at its version's row.
    ///
    /// Only the lookups are made together: each version is decoded when its reader is about
    /// to take it, so it is dropped before the next is made (decoding them all first kept 64
    /// documents' allocations live at once, and the allocator's slower paths cost more than
    /// the overlap saved).
    pub(super) fn gather(&self, wants: Vec<(Cid, u64)>) -> Result<Gathered<'a>> {
        let found = self.places_of(&wants)?;
        let segments = self.segments_of(&found)?;
        // Each block with its label (the CID before it, which the read checks), a byte per
        // cache line, read ahead of the decoding that walks it.
        let mut warm = 0u8;
        for (f, s) in found.iter().zip(&segments) {
            if let (Some((_, e)), Some(s)) = (f, s) {
                let at = e.off as usize;
                let block = s.get(at.saturating_sub(CID_LEN)..at + e.len as usize);
                let block = block.unwrap_or_default();
                for b in block.iter().step_by(LINE).chain(block.last()) {
                    warm = warm.wrapping_add(*b);
                }
            }
        }
        std::hint::black_box(warm);
        Ok(Gathered {
            wants,
            found,
            segments,
        })
    }

    /// [`View::load_doc_as`] of the `i`th version `g` gathered, document `id`'s.
    pub(super) fn load_gathered<T>(
        &self,
        g: &Gathered<'a>,
        i: usize,
        id: &str,
        decode: &DecodeDoc<'_, T>,
    ) -> Result<T> {
        let (cid, height) = &g.wants[i];
        match (&g.found[i], &g.segments[i]) {
            (Some((file, e)), Some(seg)) => car::block_at(seg, e)
                .map_err(|x| Error::format(format!("file {}, block {cid}", file.name), x))
                .and_then(|b| decode(id, b).map_err(|w| self.corrupt_cid(cid, w))),
            _ => self.load_doc_as(id, cid, *height, decode),
        }
    }

    /// Each version's place, where its slot's file lists it (`None`: look for it alone).
    fn places_of(&self, wants: &[(Cid, u64)]) -> Result<Vec<Found<'a>>> {
        let head: &'a Head = self.head;
        let mut found: Vec<Found<'a>> = vec![None; wants.len()];
        // The indexes of the files met so far (few: a file covers many heights).
        let mut indexes: Vec<(&'a FileRef, Arc<car::Index>)> = Vec::new();
        // (version, its file's index in `indexes`, its page there)
        let mut paged: Vec<(usize, usize, usize)> = Vec::new();
        for (i, (cid, h)) in wants.iter().enumerate() {
            if head.purged.binary_search(cid).is_ok() {
                continue;
            }
            let Some(f) = head
                .files
                .iter()
                .find(|f| f.heights.0 <= *h && *h <= f.heights.1)
            else {
                continue;
            };
            let k = match indexes.iter().position(|(g, _)| std::ptr::eq(*g, f)) {
                Some(k) => k,
                None => {
                    indexes.push((f, self.db.index(f)?));
                    indexes.len() - 1
                }
            };
            match indexes[k].1.page_for(cid) {
                Some(p) => paged.push((i, k, p)),
                None => found[i] = indexes[k].1.find(cid).map(|e| (f, e)),
            }
        }
        let keys: Vec<CacheKey> = paged
            .iter()
            .map(|&(_, k, p)| CacheKey::Page(indexes[k].0.name, p as u32))
            .collect();
        let cached = self.db.store.cache.get_each(&keys);
        // The pages the cache did not hold, each read once from its file.
        let missing = (paged.iter().zip(&cached))
            .filter(|(_, c)| !matches!(c, Some(Cached::Page(_))))
            .map(|(&(_, k, p), _)| (k, p));
        let read = self.read_once(
            missing.collect(),
            |&kp| kp,
            |v, &(k, p)| v.page(&indexes[k].0.name, &indexes[k].1, p),
        )?;
        for (&(i, k, p), c) in paged.iter().zip(cached) {
            let (f, idx) = (indexes[k].0, &indexes[k].1);
            let page = match c {
                Some(Cached::Page(page)) => page,
                _ => read
                    .get(&(k, p))
                    .map_or_else(|| self.page(&f.name, idx, p), Ok)?,
            };
            let cid = &wants[i].0;
            let e = page
                .find(cid, idx.segs.len())
                .map_err(|e| Error::format(format!("file {}", f.name), e))?;
            // (A paged file's index lists some blocks itself: see `View::probe_version`.)
            found[i] = e.or_else(|| idx.find(cid)).map(|e| (f, e));
        }
        Ok(found)
    }

    /// The segment each found version is in.
    fn segments_of(&self, found: &[Found<'a>]) -> Result<Vec<Option<Arc<Vec<u8>>>>> {
        let keys: Vec<CacheKey> = found
            .iter()
            .flatten()
            .map(|(f, e)| CacheKey::Segment(f.name, e.seg))
            .collect();
        let cached = self.db.store.cache.get_each(&keys);
        // The segments the cache did not hold, each read once from its file.
        let missing = (found.iter().flatten().zip(&cached))
            .filter(|(_, c)| !matches!(c, Some(Cached::Bytes(_))))
            .map(|(&(f, e), _)| (f, e.seg));
        let read = self.read_once(
            missing.collect(),
            |&(f, seg)| (f.name, seg),
            |v, &(f, seg)| v.segment(f, seg),
        )?;
        let mut cached = cached.into_iter();
        found
            .iter()
            .map(|f| {
                let Some((f, e)) = f else { return Ok(None) };
                match cached.next().flatten() {
                    Some(Cached::Bytes(b)) => Ok(Some(b)),
                    _ => (read.get(&(f.name, e.seg)))
                        .map_or_else(|| self.segment(f, e.seg), Ok)
                        .map(Some),
                }
            })
            .collect()
    }

    /// `read` of each of `items` (duplicates allowed), each key (`key`) read once
    /// ([`View::read_all`]), to be taken by key from what it returns.
    fn read_once<I: Sync, K: Ord, T: Send>(
        &self,
        mut items: Vec<I>,
        key: impl Fn(&I) -> K,
        read: impl Fn(&View<'a>, &I) -> Result<T> + Sync,
    ) -> Result<ReadOnce<K, T>> {
        items.sort_unstable_by_key(&key);
        items.dedup_by_key(|i| key(i));
        let values = self.read_all(&items, read)?;
        Ok(ReadOnce {
            keys: items.iter().map(key).collect(),
            values,
        })
    }

    /// `read` of each of `items` (a page or a segment to read from its file: a read, a
    /// decryption, several µs each), in order; when there are at least [`READ_APART`], half of
    /// them on the helper thread (with a view of its own on the same state). A 1% range with
    /// documents at a million documents spent most of its time in these reads, one after
    /// another on one core.
    fn read_all<I: Sync, T: Send>(
        &self,
        items: &[I],
        read: impl Fn(&View<'a>, &I) -> Result<T> + Sync,
    ) -> Result<Vec<T>> {
        if items.len() < READ_APART {
            return items.iter().map(|i| read(self, i)).collect();
        }
        let (here, there) = items.split_at(items.len() / 2);
        let (db, head, read) = (self.db, self.head, &read);
        let (mut a, b) = par::join(
            || {
                here.iter()
                    .map(|i| read(self, i))
                    .collect::<Result<Vec<T>>>()
            },
            move || {
                let v = View::new(db, head);
                there
                    .iter()
                    .map(|i| read(&v, i))
                    .collect::<Result<Vec<T>>>()
            },
        );
        if let Ok(a) = &mut a {
            a.extend(b?);
        }
        a
    }
}
