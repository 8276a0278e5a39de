//! How Fireproof (its pail CRDT, 0.6) computes the state of a clock with several heads: from
//! the heads' common ancestor, every event between it and the heads is replayed, heaviest
//! first, where an event's weight is the sum of its depths below each head (over every path
//! that reaches it), and events of equal weight in ascending order of their CID strings; the
//! last write to a key wins. Reproduced step for step, quirks included (a walk that meets the
//! ancestor as one parent of a merge goes on below it), so the state is the one Fireproof
//! reads.

use super::ipld::FpCid;
use super::ledger::Event;
use std::collections::{BTreeMap, HashMap, HashSet};

/// Walks longer than this are refused (a history whose merges multiply paths beyond reason).
const MAX_STEPS: usize = 50_000_000;

/// The common ancestor of `heads` and the writes to replay on its state, in order.
pub fn plan(
    events: &BTreeMap<FpCid, Event>,
    heads: &[FpCid],
) -> Result<(FpCid, Vec<(String, FpCid)>), String> {
    let get = |c: &FpCid| {
        events
            .get(c)
            .ok_or_else(|| format!("event {c} is missing: several heads cannot be replayed"))
    };
    let mut steps = 0usize;
    let ancestor =
        common_ancestor(&get, heads, &mut steps)?.ok_or("the heads have no common ancestor")?;
    if heads.len() == 1 && heads[0] == ancestor {
        return Ok((ancestor, Vec::new()));
    }
    // Weight of each event: the sum of the depths at which the walks from the heads meet it.
    let mut weights: HashMap<FpCid, u64> = HashMap::new();
    for h in heads {
        let mut stack = vec![(h.clone(), 0u64)];
        while let Some((c, depth)) = stack.pop() {
            steps += 1;
            if steps > MAX_STEPS {
                return Err("the history has too many paths to replay".into());
            }
            *weights.entry(c.clone()).or_default() += depth;
            let e = get(&c)?;
            if e.parents.len() == 1 && e.parents[0] == ancestor {
                continue;
            }
            for p in &e.parents {
                stack.push((p.clone(), depth + 1));
            }
        }
    }
    let mut order: Vec<(u64, String, FpCid)> = weights
        .into_iter()
        .map(|(c, w)| (w, c.to_string(), c))
        .collect();
    order.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    let mut puts = Vec::new();
    for (_, _, c) in order {
        puts.extend(get(&c)?.ops.iter().cloned());
    }
    Ok((ancestor, puts))
}

/// The first event every path from `children` leads to, found as pail finds it: each child's
/// chain of single ancestors grows a step at a time, and the first entry of the first chain
/// that every other chain holds is the answer.
fn common_ancestor<'a>(
    get: &impl Fn(&FpCid) -> Result<&'a Event, String>,
    children: &[FpCid],
    steps: &mut usize,
) -> Result<Option<FpCid>, String> {
    if children.is_empty() {
        return Ok(None);
    }
    let mut chains: Vec<Vec<FpCid>> = children.iter().map(|c| vec![c.clone()]).collect();
    let mut sets: Vec<HashSet<FpCid>> = children
        .iter()
        .map(|c| HashSet::from([c.clone()]))
        .collect();
    loop {
        let mut changed = false;
        for i in 0..chains.len() {
            *steps += 1;
            if *steps > MAX_STEPS {
                return Err("the history is too long to find the heads' common ancestor".into());
            }
            let last = chains[i].last().cloned().ok_or("empty chain")?;
            let Some(next) = ancestor_candidate(get, &last, steps)? else {
                continue;
            };
            changed = true;
            chains[i].push(next.clone());
            sets[i].insert(next);
            if let Some(a) = common_entry(&chains, &sets) {
                return Ok(Some(a));
            }
        }
        if !changed {
            return Ok(None);
        }
    }
}

fn ancestor_candidate<'a>(
    get: &impl Fn(&FpCid) -> Result<&'a Event, String>,
    c: &FpCid,
    steps: &mut usize,
) -> Result<Option<FpCid>, String> {
    let e = get(c)?;
    match e.parents.len() {
        0 => Ok(Some(c.clone())),
        1 => Ok(Some(e.parents[0].clone())),
        _ => common_ancestor(get, &e.parents, steps),
    }
}

fn common_entry(chains: &[Vec<FpCid>], sets: &[HashSet<FpCid>]) -> Option<FpCid> {
    for (i, chain) in chains.iter().enumerate() {
        for item in chain {
            if sets
                .iter()
                .enumerate()
                .all(|(j, s)| j == i || s.contains(item))
            {
                return Some(item.clone());
            }
        }
    }
    None
}
