//! The Merkle clock: one event per transaction, naming its parents by CID.
//!
//! An event's `height` is one more than its highest parent's, so every descendant sorts after
//! its ancestors by `(height, cid)`; walks visit events in descending `(height, cid)` order and
//! know an event's descendants have all been seen before it.

use crate::format::block::cbor::{CborError, Decoder, Encoder};
use crate::format::block::cid::Cid;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;

/// One transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Parent events, sorted, unique (empty for the first event).
    pub parents: Vec<Cid>,
    /// 1 + the highest parent's height; 1 for a first event.
    pub height: u64,
    /// Milliseconds since the Unix epoch at commit (informational; never used for ordering).
    pub time: u64,
    /// Document ids written, sorted, unique: a new value's CID, or `None` for a delete.
    pub ops: Vec<(String, Option<Cid>)>,
    /// Commitment to the document-tree root after this event (not a link: trees of past
    /// events may be dropped by compaction).
    pub root: Option<Cid>,
    /// Document versions (value CIDs) this event purges: their blocks are removed from
    /// storage and reads of them say "purged". Empty for ordinary transactions (and then not
    /// encoded, so their CIDs are unchanged).
    pub purge: Vec<Cid>,
    /// For a merge event: the ids both sides changed to different values, each with the
    /// losing value(s) (readable until a later write to the id). Empty otherwise (not encoded).
    pub conflicts: Vec<(String, Vec<Cid>)>,
    /// For a transaction that took changes from another database (`merge --only`): that
    /// database's heads. Empty otherwise (not encoded).
    pub source: Vec<Cid>,
    /// A human note recorded with the transaction (who accepted which proposal, …); empty
    /// for most (and then not encoded).
    pub note: String,
}

impl Event {
    pub fn encode(&self) -> Vec<u8> {
        let ops = self.ops.iter().map(|(id, v)| (id.as_str(), v.as_ref()));
        self.encode_ops(self.ops.len(), ops)
    }

    /// [`Event::encode`] of this event with the `n` `ops` given in place of its own (not read):
    /// a large transaction's ops are encoded from where they are, not copied into an event.
    pub fn encode_ops<'a>(
        &self,
        n: usize,
        ops: impl Iterator<Item = (&'a str, Option<&'a Cid>)> + Clone,
    ) -> Vec<u8> {
        debug_assert_eq!(ops.clone().count(), n, "the ops and their count disagree");
        // Room for the ops (an id and a link each, at most 2 + 3 + 41 bytes more) and the rest.
        let cap = 128
            + ops.clone().map(|(id, _)| id.len() + 46).sum::<usize>()
            + 41 * (self.parents.len() + self.purge.len() + self.source.len())
            + self.note.len()
            + self
                .conflicts
                .iter()
                .map(|(id, l)| id.len() + 8 + 41 * l.len())
                .sum::<usize>();
        let mut e = Encoder {
            buf: Vec::with_capacity(cap),
        };
        e.map(
            5 + usize::from(!self.purge.is_empty())
                + usize::from(!self.source.is_empty())
                + usize::from(!self.conflicts.is_empty())
                + usize::from(!self.note.is_empty()),
        );
        e.str("ops");
        e.array(n);
        for (id, v) in ops {
            e.array(2);
            e.str(id);
            e.opt_link(v);
        }
        if !self.note.is_empty() {
            e.str("note");
            e.str(&self.note);
        }
        e.str("root");
        match &self.root {
            Some(r) => e.bytes(r.as_bytes()),
            None => e.null(),
        }
        e.str("time");
        e.u64(self.time);
        if !self.purge.is_empty() {
            e.str("purge");
            e.cid_array(&self.purge);
        }
        e.str("height");
        e.u64(self.height);
        if !self.source.is_empty() {
            e.str("source");
            e.cid_array(&self.source);
        }
        e.str("parents");
        e.array(self.parents.len());
        for p in &self.parents {
            e.link(p);
        }
        if !self.conflicts.is_empty() {
            e.str("conflicts");
            e.array(self.conflicts.len());
            for (id, losers) in &self.conflicts {
                e.array(2);
                e.str(id);
                e.cid_array(losers);
            }
        }
        e.into_bytes()
    }

    pub fn decode(b: &[u8]) -> Result<Event, CborError> {
        let mut d = Decoder::new(b);
        let fields = d.map()?;
        if !(5..=9).contains(&fields) {
            return Err(CborError("event: expected 5 to 9 fields"));
        }
        let mut left = fields - 5; // optional fields still to come
        d.key("ops")?;
        let n = d.array()?;
        let mut ops: Vec<(String, Option<Cid>)> = Vec::with_capacity(n);
        for _ in 0..n {
            if d.array()? != 2 {
                return Err(CborError("event: op must be [id, link]"));
            }
            let id = d.str()?;
            if ops
                .last()
                .is_some_and(|(p, _)| p.as_bytes() >= id.as_bytes())
            {
                return Err(CborError("event: ops not sorted by id"));
            }
            ops.push((id.to_owned(), d.opt_link()?));
        }
        let mut note = String::new();
        if left > 0 && d.peek_key()? == "note" {
            left -= 1;
            d.key("note")?;
            note = d.str()?.to_owned();
            if note.is_empty() {
                return Err(CborError("event: empty note"));
            }
        }
        d.key("root")?;
        let root = if d.is_null()? {
            d.null()?;
            None
        } else {
            Some(Cid::from_bytes(d.bytes()?).ok_or(CborError("event: bad root"))?)
        };
        d.key("time")?;
        let time = d.u64()?;
        let mut purge: Vec<Cid> = Vec::new();
        if left > 0 && d.peek_key()? == "purge" {
            left -= 1;
            d.key("purge")?;
            purge = d.cid_array()?;
            if purge.is_empty() {
                return Err(CborError("event: empty purge list"));
            }
        }
        d.key("height")?;
        let height = d.u64()?;
        let mut source: Vec<Cid> = Vec::new();
        if left > 0 && d.peek_key()? == "source" {
            left -= 1;
            d.key("source")?;
            source = d.cid_array()?;
            if source.is_empty() {
                return Err(CborError("event: empty source list"));
            }
        }
        d.key("parents")?;
        let np = d.array()?;
        let mut parents: Vec<Cid> = Vec::with_capacity(np);
        for _ in 0..np {
            let p = d.link()?;
            if parents.last().is_some_and(|q| *q >= p) {
                return Err(CborError("event: parents not sorted"));
            }
            parents.push(p);
        }
        let mut conflicts: Vec<(String, Vec<Cid>)> = Vec::new();
        if left > 0 {
            left -= 1;
            d.key("conflicts")?;
            let n = d.array()?;
            if n == 0 {
                return Err(CborError("event: empty conflict list"));
            }
            for _ in 0..n {
                if d.array()? != 2 {
                    return Err(CborError("event: conflict must be [id, [link]]"));
                }
                let id = d.str()?.to_owned();
                conflicts.push((id, d.cid_array()?));
            }
        }
        if left != 0 {
            return Err(CborError("event: unknown field"));
        }
        d.finish()?;
        if (height == 1) != parents.is_empty() || height == 0 {
            return Err(CborError("event: height disagrees with parents"));
        }
        Ok(Event {
            parents,
            height,
            time,
            ops,
            root,
            purge,
            conflicts,
            source,
            note,
        })
    }
}

/// Where walks read events from.
pub trait EventSource {
    type Error;
    fn event(&self, cid: &Cid) -> Result<Arc<Event>, Self::Error>;
}

/// Visits the events reachable from `heads` in descending `(height, cid)` order, each once,
/// until `f` returns false.
pub fn walk<S: EventSource>(
    src: &S,
    heads: &[Cid],
    f: &mut dyn FnMut(&Cid, &Event) -> Result<bool, S::Error>,
) -> Result<(), S::Error> {
    since(src, heads, &[], f)
}

/// Visits exactly the events in `ancestors(heads) − ancestors(base)` (ancestors include the
/// events themselves), in descending `(height, cid)` order, until `f` returns false.
///
/// Cost: the events visited plus the events of `base`'s side above the lowest visited height.
pub fn since<S: EventSource>(
    src: &S,
    heads: &[Cid],
    base: &[Cid],
    f: &mut dyn FnMut(&Cid, &Event) -> Result<bool, S::Error>,
) -> Result<(), S::Error> {
    // Frontier keyed by (height, cid); the flag says "reachable from base" (wins over new).
    let mut heap: BinaryHeap<(u64, Cid)> = BinaryHeap::new();
    let mut flag: HashMap<Cid, bool> = HashMap::new();
    let mut new_in_heap = 0usize;
    for (list, old) in [(base, true), (heads, false)] {
        for c in list {
            let ev = src.event(c)?;
            match flag.get(c) {
                Some(_) if !old => {}
                Some(true) => {}
                Some(false) => {
                    flag.insert(*c, true);
                    new_in_heap -= 1;
                }
                None => {
                    flag.insert(*c, old);
                    heap.push((ev.height, *c));
                    if !old {
                        new_in_heap += 1;
                    }
                }
            }
        }
    }
    while new_in_heap > 0 {
        let Some((_, cid)) = heap.pop() else { break };
        let old = flag.remove(&cid).unwrap_or(true);
        let ev = src.event(&cid)?;
        if !old {
            new_in_heap -= 1;
            if !f(&cid, &ev)? {
                return Ok(());
            }
        }
        for p in &ev.parents {
            match flag.get(p).copied() {
                None => {
                    let pe = src.event(p)?;
                    heap.push((pe.height, *p));
                    flag.insert(*p, old);
                    if !old {
                        new_in_heap += 1;
                    }
                }
                Some(false) if old => {
                    flag.insert(*p, true);
                    new_in_heap -= 1;
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// Drops heads that are ancestors of other heads (a head set names only maximal events).
pub fn maximal<S: EventSource>(src: &S, cands: &[Cid]) -> Result<Vec<Cid>, S::Error> {
    let mut out: Vec<Cid> = Vec::new();
    for (i, c) in cands.iter().enumerate() {
        if cands[..i].contains(c) {
            continue;
        }
        let others: Vec<Cid> = cands.iter().filter(|x| *x != c).copied().collect();
        // c is redundant when it is not in ancestors(c) − ancestors(others).
        let mut fresh = false;
        since(src, &[*c], &others, &mut |x, _| {
            fresh = *x == *c;
            Ok(false)
        })?;
        if fresh {
            out.push(*c);
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    #[derive(Default)]
    struct Mem(RefCell<HashMap<Cid, Arc<Event>>>);
    impl EventSource for Mem {
        type Error = ();
        fn event(&self, c: &Cid) -> Result<Arc<Event>, ()> {
            self.0.borrow().get(c).cloned().ok_or(())
        }
    }
    impl Mem {
        fn add(&self, parents: &[Cid], id: &str) -> Cid {
            let mut parents = parents.to_vec();
            parents.sort();
            let height = parents
                .iter()
                .map(|p| self.event(p).unwrap().height)
                .max()
                .unwrap_or(0)
                + 1;
            let e = Event {
                parents,
                height,
                time: 0,
                ops: vec![(id.into(), None)],
                root: None,
                purge: Vec::new(),
                conflicts: Vec::new(),
                source: Vec::new(),
                note: String::new(),
            };
            let b = e.encode();
            assert_eq!(Event::decode(&b).unwrap(), e);
            let c = Cid::of_cbor(&b);
            self.0.borrow_mut().insert(c, Arc::new(e));
            c
        }
        fn ids(&self, heads: &[Cid], base: &[Cid]) -> Vec<String> {
            let mut v = Vec::new();
            since(self, heads, base, &mut |_, e| {
                v.push(e.ops[0].0.clone());
                Ok(true)
            })
            .unwrap();
            v.sort();
            v
        }
    }

    #[test]
    fn since_with_several_heads() {
        // a ← b ← c   and   a ← d ← e   (two branches), f merges c and e.
        let m = Mem::default();
        let a = m.add(&[], "a");
        let b = m.add(&[a], "b");
        let c = m.add(&[b], "c");
        let d = m.add(&[a], "d");
        let e = m.add(&[d], "e");
        assert_eq!(m.ids(&[c, e], &[b]), vec!["c", "d", "e"]);
        assert_eq!(m.ids(&[c, e], &[a]), vec!["b", "c", "d", "e"]);
        assert_eq!(m.ids(&[c, e], &[c]), vec!["d", "e"]);
        assert_eq!(m.ids(&[c, e], &[c, e]), Vec::<String>::new());
        assert_eq!(m.ids(&[c, e], &[]), vec!["a", "b", "c", "d", "e"]);
        let f = m.add(&[c, e], "f");
        assert_eq!(m.ids(&[f], &[e]), vec!["b", "c", "f"]);
        assert_eq!(maximal(&m, &[c, e, b]).unwrap(), {
            let mut v = vec![c, e];
            v.sort();
            v
        });
        assert_eq!(maximal(&m, &[f, c]).unwrap(), vec![f]);
    }

    #[test]
    fn purge_lists_round_trip_and_ordinary_events_keep_their_encoding() {
        let mut purge = vec![Cid::of_cbor(b"a"), Cid::of_cbor(b"b")];
        purge.sort();
        let mut e = Event {
            parents: vec![],
            height: 1,
            time: 5,
            ops: vec![("x".into(), None)],
            root: None,
            purge: purge.clone(),
            conflicts: vec![("x".into(), vec![Cid::of_cbor(b"l")])],
            source: vec![Cid::of_cbor(b"s")],
            note: "accepted by m".into(),
        };
        assert_eq!(Event::decode(&e.encode()).unwrap(), e);
        let plain = Event {
            purge: vec![],
            conflicts: vec![],
            source: vec![],
            note: String::new(),
            ..e.clone()
        };
        assert_eq!(plain.encode()[0], 0xa5, "five fields without a purge list");
        assert_eq!(Event::decode(&plain.encode()).unwrap(), plain);
        e.purge.reverse();
        assert!(Event::decode(&e.encode()).is_err(), "unsorted purge list");
    }
}
