//! Subscriptions and live queries: once per commit, in commit order, deletes marked; commits
//! from other handles and by merge; catch-up when behind; unsubscribe; a live query's rows.

use kiln::index::{IndexDef, Query};
use kiln::{ChangeSet, Store};
use serde_json::{json, Value};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

fn ids(c: &ChangeSet) -> Vec<String> {
    c.docs
        .iter()
        .map(|d| d["_id"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn each_commit_once_in_order_with_deletes_marked() {
    let d = tempfile::tempdir().unwrap();
    let s = Store::open(d.path()).unwrap();
    let db = s.create(Some("w")).unwrap();
    db.put(&json!({"_id": "before"})).unwrap();
    let mut sub = db.subscribe().unwrap();
    assert!(sub.try_recv().unwrap().is_none());
    let c1 = db.put(&json!({"_id": "a", "v": 1})).unwrap();
    let c2 = db
        .bulk(&[json!({"_id": "b"}), json!({"_id": "c"})])
        .unwrap();
    let c3 = db.del("a").unwrap();
    let got: Vec<ChangeSet> = (0..3)
        .map(|_| sub.recv_timeout(WAIT).unwrap().unwrap())
        .collect();
    assert_eq!(
        got.iter().map(|c| c.event.unwrap()).collect::<Vec<_>>(),
        [c1.event, c2.event, c3.event]
    );
    assert_eq!(got[0].docs, [json!({"_id": "a", "v": 1})]);
    assert_eq!(ids(&got[1]), ["b", "c"]);
    assert_eq!(got[2].docs, [json!({"_id": "a", "_deleted": true})]);
    assert!(got.iter().all(|c| !c.catch_up));
    assert!(sub.try_recv().unwrap().is_none());
    assert_eq!(sub.heads(), &db.heads().unwrap()[..]);
    // From an earlier event: what came since, first.
    let mut again = db.subscribe_since(&[c1.event]).unwrap();
    assert_eq!(again.try_recv().unwrap().unwrap().event, Some(c2.event));
    // From the beginning.
    let mut all = db.subscribe_since(&[]).unwrap();
    assert_eq!(ids(&all.try_recv().unwrap().unwrap()), ["before"]);
}

#[test]
fn commits_of_another_handle_and_by_merge_reach_a_waiting_subscriber() {
    let d = tempfile::tempdir().unwrap();
    let s = Store::open(d.path()).unwrap();
    let db = s.create(Some("w")).unwrap();
    db.put(&json!({"_id": "x"})).unwrap();
    let fork = s.fork("w", Some("f")).unwrap();
    let mut sub = db.subscribe().unwrap();
    let root = d.path().to_path_buf();
    // Another handle set on the same folder (as another process would be), writing while the
    // subscriber waits.
    let writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        let other = Store::open(&root).unwrap();
        other
            .open_db("w")
            .unwrap()
            .put(&json!({"_id": "from-other"}))
            .unwrap();
    });
    let c = sub
        .recv_timeout(WAIT)
        .unwrap()
        .expect("a commit of another handle");
    assert_eq!(ids(&c), ["from-other"]);
    writer.join().unwrap();
    // A merge brings the fork's commits, each once, and the merge's own.
    fork.put(&json!({"_id": "f1"})).unwrap();
    fork.put(&json!({"_id": "f2"})).unwrap();
    db.merge_from(&fork, None).unwrap();
    let mut seen = Vec::new();
    while let Some(c) = sub.recv_timeout(Duration::from_millis(200)).unwrap() {
        seen.extend(ids(&c));
    }
    assert_eq!(seen, ["f1", "f2"]);
}

#[test]
fn a_subscriber_far_behind_catches_up_from_changes() {
    let d = tempfile::tempdir().unwrap();
    let s = Store::open(d.path()).unwrap();
    let db = s.create(Some("w")).unwrap();
    let since = db.heads().unwrap();
    let mut sub = db.subscribe_with(&since, 5).unwrap();
    for i in 0..8 {
        db.put(&json!({"_id": format!("d{}", i % 3), "i": i}))
            .unwrap();
    }
    db.del("d0").unwrap();
    let c = sub.try_recv().unwrap().unwrap();
    assert!(c.catch_up && c.event.is_none());
    // Each changed document once, its latest value.
    let mut docs = c.docs.clone();
    docs.sort_by(|a, b| a["_id"].as_str().cmp(&b["_id"].as_str()));
    assert_eq!(
        docs,
        [
            json!({"_id": "d0", "_deleted": true}),
            json!({"_id": "d1", "i": 7}),
            json!({"_id": "d2", "i": 5}),
        ]
    );
    assert!(sub.try_recv().unwrap().is_none());
    // Then one commit at a time again.
    db.put(&json!({"_id": "next"})).unwrap();
    let c = sub.try_recv().unwrap().unwrap();
    assert!(!c.catch_up);
    assert_eq!(ids(&c), ["next"]);
    // Unsubscribed: nothing more is read for it (and it can be dropped at any time).
    sub.unsubscribe();
}

#[test]
fn a_live_query_hands_out_its_rows_when_a_commit_changes_them() {
    let d = tempfile::tempdir().unwrap();
    let s = Store::open(d.path()).unwrap();
    let db = s.create(Some("lq")).unwrap();
    db.bulk(&[json!({"_id": "a", "n": 1}), json!({"_id": "b", "n": 50})])
        .unwrap();
    db.create_index("n", IndexDef::fields(["n"])).unwrap();
    let mut live = db
        .live_query("n", &Query::range(json!(0), json!(10)))
        .unwrap();
    let ids = |rows: &[kiln::Row]| rows.iter().map(|r| r.id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(live.rows()), ["a"]);
    // A commit outside the range changes nothing it shows.
    db.put(&json!({"_id": "c", "n": 99})).unwrap();
    assert!(live
        .recv_timeout(Duration::from_millis(100))
        .unwrap()
        .is_none());
    db.put(&json!({"_id": "b", "n": 5})).unwrap();
    assert_eq!(ids(&live.recv_timeout(WAIT).unwrap().unwrap()), ["a", "b"]);
    db.del("a").unwrap();
    let rows = live.recv_timeout(WAIT).unwrap().unwrap();
    assert_eq!(ids(&rows), ["b"]);
    assert_eq!(rows[0].key, Value::from(5));
}
