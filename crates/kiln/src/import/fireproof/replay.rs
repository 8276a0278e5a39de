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

/// Replays of one ledger's events; keeps the common ancestor found for each merge event (a
/// search from a later merge steps over it at once: no recursion, no repeated walks).
pub struct Replayer<'a> {
    events: &'a BTreeMap<FpCid, Event>,
    merges: HashMap<FpCid, Option<FpCid>>,
    steps: usize,
}

impl<'a> Replayer<'a> {
    pub fn new(events: &'a BTreeMap<FpCid, Event>) -> Replayer<'a> {
        Replayer {
            events,
            merges: HashMap::new(),
            steps: 0,
        }
    }

    /// Whether `a` is an ancestor of `b`.
    pub fn is_ancestor(&self, a: &FpCid, b: &FpCid) -> bool {
        let mut seen: HashSet<&FpCid> = HashSet::new();
        let mut todo: Vec<&FpCid> = self
            .events
            .get(b)
            .map(|e| e.parents.iter().collect())
            .unwrap_or_default();
        while let Some(c) = todo.pop() {
            if c == a {
                return true;
            }
            if seen.insert(c) {
                if let Some(e) = self.events.get(c) {
                    todo.extend(e.parents.iter());
                }
            }
        }
        false
    }

    fn get(&self, c: &FpCid) -> Result<&'a Event, String> {
        self.events
            .get(c)
            .ok_or_else(|| format!("event {c} is missing: several heads cannot be replayed"))
    }

    fn step(&mut self) -> Result<(), String> {
        self.steps += 1;
        if self.steps > MAX_STEPS {
            return Err("the history has too many paths to replay".into());
        }
        Ok(())
    }

    /// The common ancestor of `heads` and the writes to replay on its state, in order.
    pub fn plan(&mut self, heads: &[FpCid]) -> Result<(FpCid, Vec<(String, FpCid)>), String> {
        let (ancestor, order) = self.order(heads)?;
        let mut puts = Vec::new();
        for (c, _) in order {
            puts.extend(self.get(&c)?.ops.iter().cloned());
        }
        Ok((ancestor, puts))
    }

    /// The common ancestor of `heads` and the events to replay on its state, in order, each
    /// with its weight.
    pub fn order(&mut self, heads: &[FpCid]) -> Result<(FpCid, Vec<(FpCid, u64)>), String> {
        let ancestor = self
            .common_ancestor(heads)?
            .ok_or("the heads have no common ancestor")?;
        if heads.len() == 1 && heads[0] == ancestor {
            return Ok((ancestor, Vec::new()));
        }
        // Weight of each event: the sum of the depths at which the walks from the heads meet
        // it (every path counts).
        let mut weights: HashMap<FpCid, u64> = HashMap::new();
        for h in heads {
            let mut stack = vec![(h.clone(), 0u64)];
            while let Some((c, depth)) = stack.pop() {
                self.step()?;
                *weights.entry(c.clone()).or_default() += depth;
                let e = self.get(&c)?;
                if e.parents.len() == 1 && e.parents[0] == ancestor {
                    continue;
                }
                for p in &e.parents {
                    stack.push((p.clone(), depth + 1));
                }
            }
        }
        let mut sorted: Vec<(u64, String, FpCid)> = weights
            .into_iter()
            .map(|(c, w)| (w, c.to_string(), c))
            .collect();
        sorted.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        Ok((
            ancestor,
            sorted.into_iter().map(|(w, _, c)| (c, w)).collect(),
        ))
    }

    /// The common ancestor of `children`, the merges' among them found first (deepest first,
    /// with a stack of our own rather than the machine's).
    fn common_ancestor(&mut self, children: &[FpCid]) -> Result<Option<FpCid>, String> {
        let mut todo: Vec<FpCid> = Vec::new();
        loop {
            match self.search(children)? {
                Search::Found(a) => {
                    // `children` themselves were asked for; any merges met below are known now.
                    if todo.is_empty() {
                        return Ok(a);
                    }
                }
                Search::NeedsMerge(m) => todo.push(m),
            }
            // Settle the deepest merge asked for, then try again.
            while let Some(m) = todo.last().cloned() {
                let parents = self.get(&m)?.parents.clone();
                match self.search(&parents)? {
                    Search::Found(a) => {
                        self.merges.insert(m, a);
                        todo.pop();
                    }
                    Search::NeedsMerge(below) => todo.push(below),
                }
            }
        }
    }

    /// pail's search: each child's chain of single ancestors grows a step at a time (a merge's
    /// next step is its own common ancestor), and the first entry of the first chain that
    /// every other chain holds is the answer. A chain that reaches a root ends there; when
    /// every chain has ended with none in common, there is none.
    fn search(&mut self, children: &[FpCid]) -> Result<Search, String> {
        if children.is_empty() {
            return Ok(Search::Found(None));
        }
        let mut chains: Vec<Vec<FpCid>> = children.iter().map(|c| vec![c.clone()]).collect();
        let mut sets: Vec<HashSet<FpCid>> = children
            .iter()
            .map(|c| HashSet::from([c.clone()]))
            .collect();
        loop {
            let mut changed = false;
            for i in 0..chains.len() {
                self.step()?;
                let last = chains[i].last().cloned().ok_or("empty chain")?;
                let e = self.get(&last)?;
                let next = match e.parents.len() {
                    0 => Some(last.clone()), // pail repeats a root: the chain has ended
                    1 => Some(e.parents[0].clone()),
                    _ => match self.merges.get(&last) {
                        Some(a) => a.clone(),
                        None => return Ok(Search::NeedsMerge(last)),
                    },
                };
                let Some(next) = next else { continue };
                if next == last && sets[i].contains(&next) && e.parents.is_empty() {
                    // (pail would push the root again, for ever; it changes nothing)
                    if let Some(a) = common_entry(&chains, &sets) {
                        return Ok(Search::Found(Some(a)));
                    }
                    continue;
                }
                changed = true;
                chains[i].push(next.clone());
                sets[i].insert(next);
                if let Some(a) = common_entry(&chains, &sets) {
                    return Ok(Search::Found(Some(a)));
                }
            }
            if !changed {
                return Ok(Search::Found(None));
            }
        }
    }
}

enum Search {
    Found(Option<FpCid>),
    /// The search stepped onto a merge whose own ancestor is not known yet.
    NeedsMerge(FpCid),
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

#[cfg(test)]
mod tests {
    use super::super::ledger::{layout, Ledger};
    use super::*;

    /// The replay order of the fixtures written by two concurrent writers and by parallel
    /// puts, as the fixture script's own reading of pail's rule gives it (and as Fireproof's
    /// documents bear out).
    #[test]
    fn replay_order_is_pails() {
        let fx =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/fireproof");
        let l = layout(&fx.join("store")).unwrap();
        for name in ["concurrent", "parallel", "twometas"] {
            let want: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(fx.join(format!("expected/{name}.json"))).unwrap(),
            )
            .unwrap();
            let ledger = Ledger::open(&l, name, None).unwrap();
            let (events, _) = ledger.events().unwrap();
            let (ancestor, got) = Replayer::new(&events).order(&ledger.heads).unwrap();
            let m = &want["merge"];
            assert_eq!(ancestor.to_string(), m["common_ancestor"].as_str().unwrap());
            let want: Vec<(String, u64)> = m["replay_order"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| {
                    (
                        e["cid"].as_str().unwrap().to_owned(),
                        e["weight"].as_u64().unwrap(),
                    )
                })
                .collect();
            let got: Vec<(String, u64)> =
                got.into_iter().map(|(c, w)| (c.to_string(), w)).collect();
            assert_eq!(got, want, "{name}");
        }
    }
}
