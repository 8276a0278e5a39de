//! Write conflicts inside one database: two transactions that began on the same state and
//! both wrote a document leave two clock heads, and the state keeps the write with the greater
//! `(height, value CID)`, as a merge does. The other value is a *conflict*, recorded exactly as
//! a merge records one (the event's `conflicts`: the id and the losing value) by the commit
//! that joins the heads, and visible through `Database::conflicts` from the moment the heads
//! exist.

use super::*;

/// For every id written differently on two of `heads`' sides (the events one head reaches and
/// another does not), the values that lose to the id's winning write, each once, by id.
/// Deletes that lose are not listed (a merge lists none either).
pub(super) fn open_conflicts(v: &View, heads: &[Cid]) -> Result<BTreeMap<String, Vec<Cid>>> {
    let mut cands: BTreeMap<String, Vec<Slot>> = BTreeMap::new();
    for (i, a) in heads.iter().enumerate() {
        for b in &heads[i + 1..] {
            let ours = side(v, a, b)?;
            let theirs = side(v, b, a)?;
            for (id, o) in &ours {
                match theirs.get(id) {
                    Some(t) if t.link != o.link => {
                        let c = cands.entry(id.clone()).or_default();
                        c.push(*o);
                        c.push(*t);
                    }
                    _ => {}
                }
            }
        }
    }
    let mut out = BTreeMap::new();
    for (id, slots) in cands {
        let Some(winner) = slots.iter().copied().reduce(|w, s| {
            if s.rank(&w) == std::cmp::Ordering::Greater {
                s
            } else {
                w
            }
        }) else {
            continue;
        };
        let mut losers: Vec<Cid> = slots
            .iter()
            .filter_map(|s| s.link)
            .filter(|l| Some(*l) != winner.link)
            .collect();
        losers.sort();
        losers.dedup();
        if !losers.is_empty() {
            out.insert(id, losers);
        }
    }
    Ok(out)
}

/// The latest write of every id among the events `a` reaches and `b` does not.
fn side(v: &View, a: &Cid, b: &Cid) -> Result<HashMap<String, Slot>> {
    let mut best: HashMap<String, Slot> = HashMap::new();
    clock::since(v, &[*a], &[*b], &mut |_, e| {
        for (id, link) in &e.ops {
            let s = Slot {
                version: e.height,
                link: *link,
            };
            best.entry(id.clone())
                .and_modify(|x| x.raise(s))
                .or_insert(s);
        }
        Ok(true)
    })?;
    Ok(best)
}
