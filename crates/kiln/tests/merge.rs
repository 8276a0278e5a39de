//! Merging databases: three-way outcomes, conflicts, and the algebra (idempotent, commutative,
//! associative, fast-forward).

use kiln::{Durability, ListOptions, Options, Side, Store};
use proptest::prelude::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;

fn store(dir: &std::path::Path) -> Store {
    Store::open_with(
        dir,
        Options {
            durability: Durability::Buffered,
            compact_threshold: 5,
            ..Options::default()
        },
    )
    .unwrap()
}

/// A delete recorded whatever the id holds, as `del` did before it refused ids without a
/// document (a transaction's delete is recorded as given): a tombstone takes part in merges.
fn record_del(db: &kiln::Database, id: &str) {
    let mut tx = db.transaction().unwrap();
    tx.del(id).unwrap();
    tx.commit().unwrap();
}

fn state(db: &kiln::Database) -> BTreeMap<String, Value> {
    db.docs(&ListOptions::default())
        .unwrap()
        .into_iter()
        .map(|d| (d["_id"].as_str().unwrap().to_owned(), d))
        .collect()
}

#[test]
fn a_merge_takes_one_sided_changes_and_reports_conflicts() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let main = s.create(Some("main")).unwrap();
    for id in ["a", "b", "c", "d", "e"] {
        main.put(&json!({"_id": id, "v": 0})).unwrap();
    }
    let fork = s.fork("main", Some("fork")).unwrap();
    fork.put(&json!({"_id": "a", "v": "fork"})).unwrap(); // fork only
    main.put(&json!({"_id": "b", "v": "main"})).unwrap(); // main only
    fork.put(&json!({"_id": "c", "v": "fork"})).unwrap(); // both, differently
    main.put(&json!({"_id": "c", "v": "main"})).unwrap();
    fork.put(&json!({"_id": "d", "v": "same"})).unwrap(); // both, the same way
    main.put(&json!({"_id": "d", "v": "same"})).unwrap();
    fork.del("e").unwrap(); // deleted on one side
    fork.put(&json!({"_id": "f", "v": "new"})).unwrap(); // added on one side
    let events_before = main.log(None).unwrap().len();

    let r = main.merge_from(&fork, None).unwrap();
    assert!(!r.fast_forward);
    let ev = r.event.expect("a merge event");
    assert_eq!(r.events, 5);
    assert_eq!(main.log(None).unwrap().len(), events_before + 5 + 1);
    assert_eq!(main.heads().unwrap(), vec![ev]);
    assert_eq!(r.conflicts.len(), 1);
    let c = &r.conflicts[0];
    assert_eq!(c.id, "c");
    assert_eq!(c.ancestor.as_ref().unwrap()["v"], 0);
    assert_eq!(c.ours.as_ref().unwrap()["v"], "main");
    assert_eq!(c.theirs.as_ref().unwrap()["v"], "fork");
    let st = state(&main);
    assert_eq!(st["a"]["v"], "fork");
    assert_eq!(st["b"]["v"], "main");
    assert_eq!(st["d"]["v"], "same");
    assert!(!st.contains_key("e"));
    assert_eq!(st["f"]["v"], "new");
    let (won, lost) = match c.winner {
        Side::Ours => ("main", "fork"),
        Side::Theirs => ("fork", "main"),
    };
    assert_eq!(st["c"]["v"], won);
    // The losing value stays readable until a later write settles it.
    let open = main.conflicts("c").unwrap();
    assert_eq!(open.len(), 1);
    assert_eq!(open[0]["v"], lost);
    assert!(main.conflicts("a").unwrap().is_empty());
    let r2 = main.verify().unwrap();
    assert!(r2.ok(), "{:?}", r2.problems);
    // Merging again changes nothing.
    let again = main.merge_from(&fork, None).unwrap();
    assert_eq!((again.event, again.events), (None, 0));
    main.put(&json!({"_id": "c", "v": "settled"})).unwrap();
    assert!(main.conflicts("c").unwrap().is_empty());
    // Reopened, everything is still there.
    let re = Store::open(dir.path()).unwrap().open_db("main").unwrap();
    assert_eq!(state(&re)["a"]["v"], "fork");
    assert!(re.verify().unwrap().ok());
}

#[test]
fn either_direction_gives_the_same_state_and_fast_forwards_add_no_event() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let a = s.create(Some("a")).unwrap();
    a.bulk(
        &(0..40)
            .map(|i| json!({"_id": format!("k{i}"), "v": 0}))
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let b = s.fork("a", Some("b")).unwrap();
    for i in 0..10 {
        a.put(&json!({"_id": format!("k{}", i * 3), "v": "a"}))
            .unwrap();
        b.put(&json!({"_id": format!("k{}", i * 4), "v": "b"}))
            .unwrap();
    }
    let ab = s.fork("a", Some("ab")).unwrap();
    let ba = s.fork("b", Some("ba")).unwrap();
    let r1 = ab.merge_from(&b, None).unwrap();
    let r2 = ba.merge_from(&a, None).unwrap();
    assert_eq!(ab.info().unwrap().root, ba.info().unwrap().root);
    assert_eq!(state(&ab), state(&ba));
    assert_eq!(r1.conflicts.len(), r2.conflicts.len());
    for (x, y) in r1.conflicts.iter().zip(&r2.conflicts) {
        assert_eq!((&x.id, &x.ours, &x.theirs), (&y.id, &y.theirs, &y.ours));
        assert_ne!(x.winner, y.winner, "one rule, seen from both sides");
    }
    // Fast-forward: a fork that only moved ahead.
    let c = s.fork("ab", Some("c")).unwrap();
    c.put(&json!({"_id": "only-c"})).unwrap();
    let heads = c.heads().unwrap();
    let r = ab.merge_from(&c, None).unwrap();
    assert!(r.fast_forward);
    assert_eq!(r.event, None);
    assert_eq!(ab.heads().unwrap(), heads);
    assert_eq!(ab.info().unwrap().root, c.info().unwrap().root);
    assert!(ab.verify().unwrap().ok());
}

#[test]
fn databases_created_apart_merge_and_only_takes_part() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let x = s.create(Some("x")).unwrap();
    let y = s.create(Some("y")).unwrap();
    x.put(&json!({"_id": "shared", "v": "x"})).unwrap();
    x.put(&json!({"_id": "xonly"})).unwrap();
    y.put(&json!({"_id": "shared", "v": "y"})).unwrap();
    y.put(&json!({"_id": "yonly"})).unwrap();
    y.put(&json!({"_id": "ytoo"})).unwrap();
    // Part of a contribution: one document, as an ordinary transaction naming the source.
    let r = x.merge_from(&y, Some(&["yonly".to_owned()])).unwrap();
    assert_eq!(r.changed, ["yonly"]);
    assert!(x.get("yonly").unwrap().is_some());
    assert!(x.get("ytoo").unwrap().is_none());
    // All of it: no common ancestor, an empty one.
    let r = x.merge_from(&y, None).unwrap();
    assert!(r.event.is_some());
    assert_eq!(r.conflicts.len(), 1);
    assert_eq!(r.conflicts[0].id, "shared");
    assert_eq!(r.conflicts[0].ancestor, None);
    let st = state(&x);
    assert!(st.contains_key("xonly") && st.contains_key("yonly") && st.contains_key("ytoo"));
    let v = x.verify().unwrap();
    assert!(v.ok(), "{:?}", v.problems);
    // Associative: (p ← q) ← r equals p ← (q ← r).
    let p = s.create(Some("p")).unwrap();
    let q = s.create(Some("q")).unwrap();
    let rr = s.create(Some("r")).unwrap();
    for (db, t) in [(&p, "p"), (&q, "q"), (&rr, "r")] {
        db.put(&json!({"_id": "all", "v": t})).unwrap();
        db.put(&json!({"_id": t})).unwrap();
    }
    let p1 = s.fork("p", Some("p1")).unwrap();
    p1.merge_from(&q, None).unwrap();
    p1.merge_from(&rr, None).unwrap();
    let q1 = s.fork("q", Some("q1")).unwrap();
    q1.merge_from(&rr, None).unwrap();
    let p2 = s.fork("p", Some("p2")).unwrap();
    p2.merge_from(&q1, None).unwrap();
    assert_eq!(p1.info().unwrap().root, p2.info().unwrap().root);
    assert_eq!(state(&p1), state(&p2));
}

#[derive(Debug, Clone)]
enum Op {
    Put(u8, u8),
    Del(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..12, any::<u8>()).prop_map(|(k, v)| Op::Put(k, v)),
        (0u8..12).prop_map(Op::Del),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]
    /// Random histories on two forks: both merge directions give one state; a document changed
    /// on one side only has that side's value; merging twice adds nothing.
    #[test]
    fn merges_never_lose_a_change(
        base in prop::collection::vec(op(), 0..15),
        left in prop::collection::vec(op(), 0..15),
        right in prop::collection::vec(op(), 0..15),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let b = s.create(Some("b")).unwrap();
        let apply = |db: &kiln::Database, ops: &[Op]| -> std::collections::HashSet<String> {
            let mut touched = std::collections::HashSet::new();
            for o in ops {
                match o {
                    Op::Put(k, v) => { db.put(&json!({"_id": format!("k{k}"), "v": v})).unwrap(); touched.insert(format!("k{k}")); }
                    Op::Del(k) => { record_del(db, &format!("k{k}")); touched.insert(format!("k{k}")); }
                }
            }
            touched
        };
        apply(&b, &base);
        let l = s.fork("b", Some("l")).unwrap();
        let r = s.fork("b", Some("r")).unwrap();
        let tl = apply(&l, &left);
        let tr = apply(&r, &right);
        let (sl, sr) = (state(&l), state(&r));
        let lr = s.fork("l", Some("lr")).unwrap();
        let rl = s.fork("r", Some("rl")).unwrap();
        lr.merge_from(&r, None).unwrap();
        rl.merge_from(&l, None).unwrap();
        prop_assert_eq!(lr.info().unwrap().root, rl.info().unwrap().root);
        let m = state(&lr);
        for k in 0..12u8 {
            let id = format!("k{k}");
            if tl.contains(&id) && !tr.contains(&id) {
                prop_assert_eq!(m.get(&id), sl.get(&id));
            }
            if tr.contains(&id) && !tl.contains(&id) {
                prop_assert_eq!(m.get(&id), sr.get(&id));
            }
            if tl.contains(&id) && tr.contains(&id) {
                prop_assert!(m.get(&id) == sl.get(&id) || m.get(&id) == sr.get(&id));
            }
        }
        let again = lr.merge_from(&r, None).unwrap();
        prop_assert_eq!(again.events, 0);
        let v = lr.verify().unwrap();
        prop_assert!(v.ok(), "{:?}", v.problems);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(10))]
    /// Three forks with random histories: (a ← b) ← c and a ← (b ← c) end in one state.
    #[test]
    fn merging_is_associative(
        base in prop::collection::vec(op(), 0..10),
        sides in prop::collection::vec(prop::collection::vec(op(), 0..10), 3),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let b = s.create(Some("b")).unwrap();
        let apply = |db: &kiln::Database, ops: &[Op]| {
            for o in ops {
                match o {
                    Op::Put(k, v) => { db.put(&json!({"_id": format!("k{k}"), "v": v})).unwrap(); }
                    Op::Del(k) => record_del(db, &format!("k{k}")),
                }
            }
        };
        apply(&b, &base);
        let names = ["x", "y", "z"];
        for (n, ops) in names.iter().zip(&sides) {
            let db = s.fork("b", Some(n)).unwrap();
            apply(&db, ops);
        }
        let (y, z) = (s.open_db("y").unwrap(), s.open_db("z").unwrap());
        let left = s.fork("x", Some("left")).unwrap();
        left.merge_from(&y, None).unwrap();
        left.merge_from(&z, None).unwrap();
        let yz = s.fork("y", Some("yz")).unwrap();
        yz.merge_from(&z, None).unwrap();
        let right = s.fork("x", Some("right")).unwrap();
        right.merge_from(&yz, None).unwrap();
        prop_assert_eq!(left.info().unwrap().root, right.info().unwrap().root);
        prop_assert_eq!(state(&left), state(&right));
    }
}

/// Review finding: merging a fork that purged a document reported the purged version as
/// missing (corruption) instead of purged.
#[test]
fn merging_a_purge_keeps_it_a_purge() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let main = s.create(Some("main")).unwrap();
    main.put(&json!({"_id": "keep", "v": 0})).unwrap();
    let fork = s.fork("main", Some("fork")).unwrap();
    let c = fork.put(&json!({"_id": "secret", "v": "x"})).unwrap();
    fork.purge("secret").unwrap();
    main.merge_from(&fork, None).unwrap();
    let v = main.verify().unwrap();
    assert!(v.ok(), "{:?}", v.problems);
    assert_eq!(v.purged, 1);
    assert!(matches!(
        main.get_at("secret", &c.event),
        Err(kiln::Error::Purged(..))
    ));
    assert_eq!(main.get("secret").unwrap(), None);
    main.compact_full().unwrap();
    assert!(main.verify().unwrap().ok());
}

/// `merge --only` of an id the source never had says so and writes nothing (it committed an
/// event deleting it here); an id the source deleted is taken as a delete.
#[test]
fn taking_an_id_the_source_never_had_is_not_found_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let main = s.create(Some("main")).unwrap();
    main.put(&json!({"_id": "a", "v": 0})).unwrap();
    main.put(&json!({"_id": "gone", "v": 0})).unwrap();
    let fork = s.fork("main", Some("fork")).unwrap();
    fork.put(&json!({"_id": "a", "v": 1})).unwrap();
    fork.del("gone").unwrap();
    main.put(&json!({"_id": "mine"})).unwrap();
    let events = main.log(None).unwrap().len();
    let ids = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    // ("mine" is main's own: the fork never had it either.)
    for (only, lacking) in [
        (ids(&["nope"]), ids(&["nope"])),
        (ids(&["a", "mine", "nope"]), ids(&["mine", "nope"])),
    ] {
        match main.merge_from(&fork, Some(&only)) {
            Err(kiln::Error::NoSuchDocument { db, ids: missing }) => {
                assert_eq!((db.as_str(), missing), ("fork", lacking));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(main.log(None).unwrap().len(), events);
        assert!(main.get("mine").unwrap().is_some());
        assert_eq!(main.get("a").unwrap().unwrap()["v"], 0);
    }
    let e = main
        .merge_from(&fork, Some(&ids(&["x", "y"])))
        .unwrap_err()
        .to_string();
    assert_eq!(e, "no documents \"x\", \"y\" in database 'fork'");
    let r = main.merge_from(&fork, Some(&ids(&["a", "gone"]))).unwrap();
    assert_eq!(r.changed, ["a", "gone"]);
    assert!(main.get("gone").unwrap().is_none());
    assert_eq!(main.get("a").unwrap().unwrap()["v"], 1);
}
