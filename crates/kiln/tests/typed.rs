//! The library as an app uses it: typed documents, CIDs kept in documents, handles that print.

use kiln::{Cid, Database, Error, ListOptions, Store};
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Message {
    #[serde(rename = "_id")]
    id: String,
    room: String,
    text: String,
}

fn msg(id: &str, text: &str) -> Message {
    Message {
        id: id.into(),
        room: "lobby".into(),
        text: text.into(),
    }
}

fn db() -> (tempfile::TempDir, Store, Database) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let db = store.create(Some("chat")).unwrap();
    (dir, store, db)
}

#[test]
fn typed_reads_give_the_documents_written() {
    let (_d, _s, db) = db();
    let first = db.put(&msg("m1", "hi")).unwrap();
    db.bulk(&[msg("m2", "hello"), msg("m3", "hey")]).unwrap();
    db.put(&msg("m1", "hi, edited")).unwrap();
    assert_eq!(
        db.get_as::<Message>("m1").unwrap(),
        Some(msg("m1", "hi, edited"))
    );
    assert_eq!(db.get_as::<Message>("nope").unwrap(), None);
    assert_eq!(
        db.get_at_as::<Message>("m1", &first.event).unwrap(),
        Some(msg("m1", "hi"))
    );
    let all: Vec<Message> = db.docs_as(&ListOptions::default()).unwrap();
    assert_eq!(
        all,
        [
            msg("m1", "hi, edited"),
            msg("m2", "hello"),
            msg("m3", "hey")
        ]
    );
    // A change feed and a diff, typed: a deleted document's tombstone fits a type that
    // reads only what a tombstone has.
    #[derive(Deserialize, Debug, PartialEq)]
    struct Id {
        #[serde(rename = "_id")]
        id: String,
    }
    db.del("m2").unwrap();
    let changes = db.changes(Some(&[first.event])).unwrap();
    let typed: Vec<_> = changes
        .into_iter()
        .map(|c| c.decode::<Id>(&db).unwrap())
        .collect();
    let ids: Vec<(&str, bool)> = typed
        .iter()
        .map(|c| (c.doc.id.as_str(), c.deleted))
        .collect();
    assert_eq!(ids, [("m3", false), ("m1", false), ("m2", true)]);
    let diffs = db.diff(Some(&first.event), &db, None).unwrap();
    let m1 = diffs.into_iter().find(|d| d.id == "m1").unwrap();
    let m1 = m1.decode::<Message>(&db).unwrap();
    assert_eq!(m1.before, Some(msg("m1", "hi")));
    assert_eq!(m1.after, Some(msg("m1", "hi, edited")));
}

#[test]
fn a_document_that_does_not_fit_the_type_is_named_and_kept() {
    let (_d, _s, db) = db();
    db.put(&json!({"_id": "m1", "room": "lobby", "text": 42}))
        .unwrap();
    db.put(&msg("m2", "fine")).unwrap();
    let e = db.get_as::<Message>("m1").unwrap_err();
    assert!(
        matches!(&e, Error::Decode { id, db, .. } if id == "m1" && db == "chat"),
        "{e}"
    );
    let text = e.to_string();
    assert!(
        text.contains("\"m1\"") && text.contains("Message"),
        "{text}"
    );
    // A listing stops at the first that does not fit, and says which.
    let e = db.docs_as::<Message>(&ListOptions::default()).unwrap_err();
    assert!(matches!(&e, Error::Decode { id, .. } if id == "m1"), "{e}");
    // Nothing was changed: the untyped read still has it.
    assert_eq!(db.get("m1").unwrap().unwrap()["text"], 42);
    assert!(!e.is_corruption());
}

#[test]
fn conflicts_come_typed() {
    let (_d, s, main) = db();
    main.put(&msg("m1", "base")).unwrap();
    let fork = s.fork("chat", Some("side")).unwrap();
    main.put(&msg("m1", "ours")).unwrap();
    fork.put(&msg("m1", "theirs")).unwrap();
    let report = main.merge_from(&fork, None).unwrap();
    let c = report.conflicts[0]
        .clone()
        .decode::<Message>(&main)
        .unwrap();
    assert_eq!(c.ancestor, Some(msg("m1", "base")));
    assert_eq!(c.ours, Some(msg("m1", "ours")));
    assert_eq!(c.theirs, Some(msg("m1", "theirs")));
    let losers: Vec<Message> = main.conflicts_as("m1").unwrap();
    assert_eq!(losers.len(), 1);
    assert!(["ours", "theirs"].contains(&losers[0].text.as_str()));
}

/// An app's own function returning `kiln::Result` can `?` a serde_json error.
fn parse_then_store(db: &Database, text: &str) -> kiln::Result<String> {
    let m: Message = serde_json::from_str(text)?;
    db.put(&m)?;
    Ok(m.id)
}

#[test]
fn serde_json_errors_convert_with_the_question_mark() {
    let (_d, _s, db) = db();
    let ok = parse_then_store(&db, r#"{"_id": "m1", "room": "r", "text": "t"}"#);
    assert_eq!(ok.unwrap(), "m1");
    let e = parse_then_store(&db, "{not json").unwrap_err();
    assert!(matches!(e, Error::Json(_)), "{e}");
}

#[test]
fn a_cid_is_kept_in_a_document_and_parsed_from_text() {
    let (_d, _s, db) = db();
    let c = db.put(&msg("m1", "hi")).unwrap();
    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Bookmark {
        #[serde(rename = "_id")]
        id: String,
        seen: Cid,
    }
    db.put(&Bookmark {
        id: "cursor".into(),
        seen: c.event,
    })
    .unwrap();
    let back: Bookmark = db.get_as("cursor").unwrap().unwrap();
    assert_eq!(back.seen, c.event);
    assert_eq!(
        db.get("cursor").unwrap().unwrap()["seen"],
        c.event.to_string()
    );
    assert_eq!(c.event.to_string().parse::<Cid>().unwrap(), c.event);
    let e = "not-a-cid".parse::<Cid>().unwrap_err();
    assert!(e.to_string().contains("not-a-cid"), "{e}");
    // A document whose field is not a CID does not fit.
    db.put(&json!({"_id": "bad", "seen": "xyz"})).unwrap();
    assert!(matches!(
        db.get_as::<Bookmark>("bad"),
        Err(Error::Decode { .. })
    ));
}

#[test]
fn handles_print_what_they_are() {
    let (d, s, db) = db();
    let store = format!("{s:?}");
    assert!(store.contains(&d.path().display().to_string()), "{store}");
    let handle = format!("{db:?}");
    assert!(handle.contains("chat"), "{handle}");
    let tx = db.transaction().unwrap();
    assert!(format!("{tx:?}").contains("chat"));
}

#[test]
fn an_expected_version_write_refuses_a_document_that_moved() {
    let (_d, _s, db) = db();
    db.put_if(&msg("m1", "first"), None).unwrap();
    // Only if absent: it exists now.
    let e = db.put_if(&msg("m1", "again"), None).unwrap_err();
    assert!(
        matches!(&e, Error::Conflict(c) if c.id == "m1" && c.expected.is_none() && c.actual.is_some()),
        "{e}"
    );
    let (doc, rev) = db.get_with_rev("m1").unwrap().unwrap();
    assert_eq!(doc["text"], "first");
    assert_eq!(db.rev("m1").unwrap(), Some(rev));
    let events = db.info().unwrap().events;
    db.put(&msg("m1", "someone else")).unwrap();
    let e = db.put_if(&msg("m1", "mine"), Some(&rev)).unwrap_err();
    assert!(
        matches!(&e, Error::Conflict(c) if c.expected == Some(rev)),
        "{e}"
    );
    assert!(e.to_string().contains("read it again"), "{e}");
    assert_eq!(
        db.info().unwrap().events,
        events + 1,
        "the refused write wrote nothing"
    );
    assert_eq!(
        db.get_as::<Message>("m1").unwrap().unwrap().text,
        "someone else"
    );
    // Written back to equal contents, a document still has a new version.
    let before = db.rev("m1").unwrap().unwrap();
    db.put(&msg("m1", "someone else")).unwrap();
    let after = db.rev("m1").unwrap().unwrap();
    assert_eq!(before.cid, after.cid);
    assert_ne!(before, after);
    assert!(db.put_if(&msg("m1", "x"), Some(&before)).is_err());
    db.put_if(&msg("m1", "x"), Some(&after)).unwrap();
    // Deletes too; then "absent" holds again.
    let now = db.rev("m1").unwrap().unwrap();
    assert!(matches!(db.del_if("m1", &after), Err(Error::Conflict(_))));
    db.del_if("m1", &now).unwrap();
    assert_eq!(db.rev("m1").unwrap(), None);
    assert!(matches!(
        db.del_if("m1", &now),
        Err(Error::Conflict(c)) if c.actual.is_none()
    ));
    db.put_json_if(r#"{"_id": "m1", "room": "r", "text": "back"}"#, None)
        .unwrap();
    // The text form round-trips, and bad text is a clear error.
    let r = db.rev("m1").unwrap().unwrap();
    assert_eq!(r.to_string().parse::<kiln::Rev>().unwrap(), r);
    assert!(r.to_string().starts_with(&format!("{}-b", r.height)));
    let bad = "12-nope".parse::<kiln::Rev>().unwrap_err();
    assert!(matches!(bad, Error::InvalidArgument(_)), "{bad}");
}

/// Compare-and-swap increments from several threads and handles lose none.
#[test]
fn expected_version_writes_lose_no_update() {
    let (d, _s, db) = db();
    db.put(&json!({"_id": "counter", "n": 0})).unwrap();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            // Half share the handle, half open their own (as other processes would).
            let db = if t % 2 == 0 {
                db.clone()
            } else {
                Store::open(d.path()).unwrap().open_db("chat").unwrap()
            };
            std::thread::spawn(move || {
                let mut retries = 0;
                for _ in 0..25 {
                    loop {
                        let (doc, rev) = db.get_with_rev("counter").unwrap().unwrap();
                        let n = doc["n"].as_u64().unwrap();
                        match db.put_if(&json!({"_id": "counter", "n": n + 1}), Some(&rev)) {
                            Ok(_) => break,
                            Err(Error::Conflict(_)) => retries += 1,
                            Err(e) => panic!("{e}"),
                        }
                    }
                }
                retries
            })
        })
        .collect();
    let retries: u32 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(
        db.get("counter").unwrap().unwrap()["n"],
        100,
        "{retries} retries"
    );
}

/// Two transactions begun on one state that both wrote a document: the state keeps one value
/// and the other is a conflict, listed at once and recorded by the commit that joins the two
/// heads; a later write to the document settles it.
#[test]
fn concurrent_transactions_leave_visible_conflicts() {
    let (d, _s, db) = db();
    db.put(&msg("x", "base")).unwrap();
    let mut t1 = db.transaction().unwrap();
    let mut t2 = db.transaction().unwrap();
    t1.put(&msg("x", "one")).unwrap();
    t1.put(&msg("only1", "a")).unwrap();
    t2.put(&msg("x", "two")).unwrap();
    t2.put(&msg("only2", "b")).unwrap();
    t1.commit().unwrap();
    t2.commit().unwrap();
    assert_eq!(db.heads().unwrap().len(), 2);
    let winner = db.get_as::<Message>("x").unwrap().unwrap().text;
    let loser = if winner == "one" { "two" } else { "one" };
    let open: Vec<Message> = db.conflicts_as("x").unwrap();
    assert_eq!(open, [msg("x", loser)]);
    assert!(db.conflicts("only1").unwrap().is_empty());
    assert!(db.conflicts("only2").unwrap().is_empty());
    // The next commit joins the heads and records the conflict; it stays after a reopen.
    db.put(&msg("other", "c")).unwrap();
    assert_eq!(db.heads().unwrap().len(), 1);
    let reopened = Store::open(d.path()).unwrap().open_db("chat").unwrap();
    assert_eq!(
        reopened.conflicts_as::<Message>("x").unwrap(),
        [msg("x", loser)]
    );
    // A write settles it.
    db.put(&msg("x", "settled")).unwrap();
    assert!(db.conflicts("x").unwrap().is_empty());
}

/// A commit that joins heads while writing the conflicting document itself settles it.
#[test]
fn a_joining_write_to_the_document_settles_its_conflict() {
    let (_d, _s, db) = db();
    db.put(&msg("x", "base")).unwrap();
    let mut t1 = db.transaction().unwrap();
    let mut t2 = db.transaction().unwrap();
    t1.put(&msg("x", "one")).unwrap();
    t2.put(&msg("x", "two")).unwrap();
    t1.commit().unwrap();
    t2.commit().unwrap();
    assert_eq!(db.conflicts("x").unwrap().len(), 1);
    db.put(&msg("x", "decided")).unwrap();
    assert_eq!(db.heads().unwrap().len(), 1);
    assert!(db.conflicts("x").unwrap().is_empty());
    assert!(db.verify().unwrap().ok());
}

/// `sync` and `close` (Buffered commits made durable at shutdown; the background merge
/// finished): what was written reads back after a reopen.
#[test]
fn close_finishes_the_work_and_sync_flushes() {
    let dir = tempfile::tempdir().unwrap();
    let opts = kiln::Options {
        durability: kiln::Durability::Buffered,
        compact_threshold: 10,
        ..kiln::Options::default()
    };
    let store = Store::open_with(dir.path(), opts.clone()).unwrap();
    let db = store.create(Some("chat")).unwrap();
    for i in 0..50 {
        db.put(&msg(&format!("m{i:02}"), "x")).unwrap();
    }
    db.sync().unwrap();
    store.sync().unwrap();
    db.close().unwrap();
    assert_eq!(store.open_handles(), 1);
    store.close().unwrap();
    let again = Store::open_with(dir.path(), opts).unwrap();
    let db = again.open_db("chat").unwrap();
    assert_eq!(db.docs(&ListOptions::default()).unwrap().len(), 50);
    assert!(db.info().unwrap().files.len() < 50, "compacted");
    assert!(db.verify().unwrap().ok());
}

/// Found by review: a transaction begun on two concurrent heads that lands after another
/// commit joins those heads as well, and records their conflict (it was lost for good).
#[test]
fn a_late_transaction_on_concurrent_heads_records_their_conflict() {
    let (_d, _s, db) = db();
    db.put(&msg("x", "base")).unwrap();
    let (mut t1, mut t2, mut t3) = (
        db.transaction().unwrap(),
        db.transaction().unwrap(),
        db.transaction().unwrap(),
    );
    t1.put(&msg("x", "one")).unwrap();
    t2.put(&msg("x", "two")).unwrap();
    t3.put(&msg("z", "z")).unwrap();
    t1.commit().unwrap();
    t2.commit().unwrap();
    let lost = db.conflicts("x").unwrap();
    assert_eq!(lost.len(), 1);
    let mut t4 = db.transaction().unwrap(); // begun on the two heads
    t4.put(&msg("y", "y")).unwrap();
    t3.commit().unwrap();
    t4.commit().unwrap();
    assert_eq!(db.conflicts("x").unwrap(), lost);
    db.put(&msg("w", "joins everything")).unwrap();
    assert_eq!(db.heads().unwrap().len(), 1);
    assert_eq!(db.conflicts("x").unwrap(), lost);
}

/// Found by review: a merge joins the destination's concurrent heads too, and keeps their
/// open conflict (it recorded only the conflicts between the two databases).
#[test]
fn a_merge_keeps_the_open_conflicts_of_the_heads_it_joins() {
    let (_d, s, a) = db();
    a.put(&msg("x", "base")).unwrap();
    let b = s.fork("chat", Some("side")).unwrap();
    b.put(&msg("y", "theirs")).unwrap();
    let (mut t1, mut t2) = (a.transaction().unwrap(), a.transaction().unwrap());
    t1.put(&msg("x", "one")).unwrap();
    t2.put(&msg("x", "two")).unwrap();
    t1.commit().unwrap();
    t2.commit().unwrap();
    let lost = a.conflicts("x").unwrap();
    assert_eq!(lost.len(), 1);
    a.merge_from(&b, None).unwrap();
    assert_eq!(a.heads().unwrap().len(), 1);
    assert_eq!(a.conflicts("x").unwrap(), lost);
    // And merged into another database, the source's open conflict comes along.
    let c = s.fork("side", Some("third")).unwrap();
    c.put(&msg("q", "q")).unwrap();
    let (mut t1, mut t2) = (b.transaction().unwrap(), b.transaction().unwrap());
    t1.put(&msg("k", "one")).unwrap();
    t2.put(&msg("k", "two")).unwrap();
    t1.commit().unwrap();
    t2.commit().unwrap();
    let lost_k = b.conflicts("k").unwrap();
    c.merge_from(&b, None).unwrap();
    assert_eq!(c.heads().unwrap().len(), 1);
    assert_eq!(c.conflicts("k").unwrap(), lost_k);
    assert!(c.verify().unwrap().ok());
}

/// A database's own metadata: set, changed under the lock, kept across commits, compaction
/// and reopen, copied by a fork, sealed (not in any file's raw bytes), bounded in size.
#[test]
fn a_database_keeps_its_own_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let room = store.create(None).unwrap();
    assert!(room.meta().unwrap().is_empty());
    let mut m = serde_json::Map::new();
    m.insert("title".into(), json!("TITLE-MARKER-42"));
    m.insert("tags".into(), json!(["food"]));
    room.set_meta(&m).unwrap();
    for i in 0..30 {
        room.put(&msg(&format!("m{i}"), "x")).unwrap();
    }
    room.compact_full().unwrap();
    room.update_meta(|m| {
        m.insert("members".into(), json!(3));
    })
    .unwrap();
    let again = Store::open(dir.path())
        .unwrap()
        .open_db(room.name())
        .unwrap();
    let got = again.meta().unwrap();
    assert_eq!(got["title"], "TITLE-MARKER-42");
    assert_eq!(got["members"], 3);
    let fork = store.fork(room.name(), Some("copy")).unwrap();
    assert_eq!(fork.meta().unwrap(), got);
    fork.update_meta(|m| {
        m.remove("title");
    })
    .unwrap();
    assert_eq!(room.meta().unwrap()["title"], "TITLE-MARKER-42");
    let big = serde_json::Map::from_iter([("x".to_owned(), json!("y".repeat(20_000)))]);
    assert!(matches!(
        room.set_meta(&big),
        Err(Error::InvalidArgument(_))
    ));
    room.set_meta(&serde_json::Map::new()).unwrap();
    assert!(room.meta().unwrap().is_empty());
    // Sealed: no file of the store holds it in plaintext.
    room.set_meta(&m).unwrap();
    fn files(d: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                files(&p, out)
            } else {
                out.push(p)
            }
        }
    }
    let mut all = Vec::new();
    files(dir.path(), &mut all);
    for p in all {
        let b = std::fs::read(&p).unwrap();
        assert!(!b.windows(15).any(|w| w == b"TITLE-MARKER-42"), "{p:?}");
    }
}

#[test]
fn a_transaction_reads_typed_documents() {
    let (_d, _s, db) = db();
    db.put(&msg("m1", "hi")).unwrap();
    let mut tx = db.transaction().unwrap();
    tx.put(&msg("m2", "in the transaction")).unwrap();
    assert_eq!(tx.get_as::<Message>("m1").unwrap(), Some(msg("m1", "hi")));
    assert_eq!(
        tx.get_as::<Message>("m2").unwrap(),
        Some(msg("m2", "in the transaction"))
    );
    assert!(matches!(tx.get_as::<u8>("m1"), Err(Error::Decode { .. })));
    tx.commit().unwrap();
}

/// Found by review: `update_meta` ran the caller's closure under the writer lock (a closure
/// writing to the database deadlocked; a panicking one left the lock held). It now runs on a
/// copy and the result is written only if nobody changed the metadata meanwhile.
#[test]
fn update_meta_runs_the_closure_outside_the_lock() {
    let (d, _s, db) = db();
    let other = Store::open(d.path()).unwrap().open_db("chat").unwrap();
    let mut runs = 0;
    db.update_meta(|m| {
        runs += 1;
        if runs == 1 {
            // Meanwhile another handle changes it (and this one writes a document).
            other
                .update_meta(|o| {
                    o.insert("by_other".into(), json!(true));
                })
                .unwrap();
            db.put(&msg("inside", "a write from the closure")).unwrap();
        }
        m.insert("mine".into(), json!(runs));
    })
    .unwrap();
    assert_eq!(runs, 2, "ran again on the newer metadata");
    let m = db.meta().unwrap();
    assert_eq!(
        (m["by_other"].clone(), m["mine"].clone()),
        (json!(true), json!(2))
    );
    assert!(db.get("inside").unwrap().is_some());
    // A panicking closure leaves the database writable.
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        db.update_meta(|_| panic!("boom")).unwrap();
    }));
    assert!(r.is_err());
    other.put(&msg("after", "the panic")).unwrap();
}

/// A document's own history: every write and delete, newest first, concurrent ones and merged
/// ones included, bounded by `limit`; before a dropped history, the state at the cut; a purged
/// version keeps its place without its content.
#[test]
fn a_documents_history_lists_its_versions() {
    let (_d, s, db) = db();
    let e1 = db.put(&msg("x", "one")).unwrap().event;
    db.put(&msg("y", "unrelated")).unwrap();
    db.put(&msg("x", "two")).unwrap();
    db.del("x").unwrap();
    db.put(&msg("x", "three")).unwrap();
    let h = db.history("x", None).unwrap();
    let texts: Vec<Option<String>> = h
        .iter()
        .map(|v| {
            v.doc
                .as_ref()
                .map(|d| d["text"].as_str().unwrap().to_owned())
        })
        .collect();
    assert_eq!(
        texts,
        [
            Some("three".into()),
            None,
            Some("two".into()),
            Some("one".into())
        ]
    );
    assert_eq!(h[3].event, e1);
    assert!(h[1].rev.is_none(), "a delete has no version");
    assert_eq!(h[0].rev, db.rev("x").unwrap());
    assert_eq!(db.history("x", Some(2)).unwrap().len(), 2);
    assert!(db.history("never", None).unwrap().is_empty());
    // Concurrent transactions: both writes are there.
    let (mut t1, mut t2) = (db.transaction().unwrap(), db.transaction().unwrap());
    t1.put(&msg("x", "left")).unwrap();
    t2.put(&msg("x", "right")).unwrap();
    t1.commit().unwrap();
    t2.commit().unwrap();
    let h = db.history("x", Some(2)).unwrap();
    let mut two: Vec<String> = h
        .iter()
        .map(|v| v.doc.as_ref().unwrap()["text"].as_str().unwrap().to_owned())
        .collect();
    two.sort();
    assert_eq!(two, ["left", "right"]);
    // A fork's write, merged back, is listed with its own event.
    let fork = s.fork("chat", Some("f")).unwrap();
    let fe = fork.put(&msg("x", "from the fork")).unwrap().event;
    db.merge_from(&fork, None).unwrap();
    assert_eq!(db.history("x", Some(1)).unwrap()[0].event, fe);
    // History dropped before an event: the state there stands for what came before.
    let keep = db.put(&msg("z", "cut here")).unwrap().event;
    db.drop_history_before(&keep).unwrap();
    db.put(&msg("x", "after the cut")).unwrap();
    let h = db.history("x", None).unwrap();
    assert_eq!(h.len(), 2, "{h:?}");
    assert_eq!(h[1].event, keep);
    // A purge: the versions are listed, their content gone.
    db.purge("x").unwrap();
    let h = db.history("x", None).unwrap();
    assert!(h.iter().all(|v| v.doc.is_none()), "{h:?}");
}
