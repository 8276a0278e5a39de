//! "Which of my N databases changed" in one request, through a sync server: `sync_many` over
//! an `HttpRemote` lists the head records once (`GET /v1/heads`) and syncs only the databases
//! that changed, over a folder (a record per database) and over a bucket (a record per
//! replica). Counted in HTTP requests the client really made.

use kiln::{Options, Store};
use kiln_server::{spawn, ServerOptions};
use kiln_sync::{sync_many, HttpRemote, Remote, SyncOptions};
use serde_json::json;
use std::path::Path;
use std::sync::Arc;

mod common;

fn opts() -> Options {
    Options {
        background_compaction: false,
        ..Options::default()
    }
}

/// Stores `a` and `b` (a copy: the same keys) holding databases `names`, one document each.
fn two_stores(d: &Path, names: &[String]) -> (Store, Store) {
    {
        let a = Store::open_with(d.join("a"), opts()).unwrap();
        for n in names {
            a.create(Some(n))
                .unwrap()
                .put(&json!({"_id": "x", "db": n}))
                .unwrap();
        }
    }
    let st = std::process::Command::new("cp")
        .arg("-a")
        .arg(d.join("a"))
        .arg(d.join("b"))
        .status()
        .unwrap();
    assert!(st.success());
    (
        Store::open_with(d.join("a"), opts()).unwrap(),
        Store::open_with(d.join("b"), opts()).unwrap(),
    )
}

fn one_listing_tells_which_changed(storage: Arc<dyn Remote>, d: &Path) {
    let s = spawn("127.0.0.1:0", storage, ServerOptions::default()).unwrap();
    let names: Vec<String> = (0..20).map(|i| format!("db{i:02}")).collect();
    let (a, b) = two_stores(d, &names);
    let handles = |s: &Store| -> Vec<kiln::Database> {
        names.iter().map(|n| s.open_db(n).unwrap()).collect()
    };
    let (ha, hb) = (handles(&a), handles(&b));
    fn pairs<'a>(
        h: &'a [kiln::Database],
        names: &'a [String],
    ) -> Vec<(&'a kiln::Database, &'a str)> {
        h.iter().zip(names).map(|(d, n)| (d, n.as_str())).collect()
    }
    let (pa, pb) = (pairs(&ha, &names), pairs(&hb, &names));
    let (ra, rb) = (
        HttpRemote::open(&s.url(), None).unwrap(),
        HttpRemote::open(&s.url(), None).unwrap(),
    );
    let all = SyncOptions::default();
    for r in sync_many(&a, &pa, &ra, all)
        .unwrap()
        .into_iter()
        .chain(sync_many(&b, &pb, &rb, all).unwrap())
    {
        r.unwrap();
    }
    // Nothing changed: one request answers for all 20.
    let before = rb.requests();
    let rs = sync_many(&b, &pb, &rb, all).unwrap();
    assert!(rs
        .iter()
        .all(|r| r.as_ref().is_ok_and(|r| !r.pushed && !r.adopted)));
    assert_eq!(rb.requests() - before, 1, "a no-op sync of 20 databases");
    // Two changed on a: b lists once, then syncs those two only.
    ha[3].put(&json!({"_id": "y"})).unwrap();
    ha[17].put(&json!({"_id": "y"})).unwrap();
    let rs = sync_many(&a, &pa, &ra, all).unwrap();
    assert_eq!(rs.iter().filter(|r| r.as_ref().unwrap().pushed).count(), 2);
    let before = rb.requests();
    let rs = sync_many(&b, &pb, &rb, all).unwrap();
    let took: Vec<usize> = rs
        .iter()
        .enumerate()
        .filter(|(_, r)| r.as_ref().unwrap().adopted || r.as_ref().unwrap().merged.is_some())
        .map(|(i, _)| i)
        .collect();
    assert_eq!(took, vec![3, 17]);
    let per_db: usize = rs.iter().map(|r| r.as_ref().unwrap().requests).sum();
    let made = (rb.requests() - before) as usize;
    assert!(
        made <= 1 + 2 * 6,
        "{made} requests for two changed databases"
    );
    assert!(per_db >= 2, "{per_db}");
    assert!(hb[3].get("y").unwrap().is_some() && hb[17].get("y").unwrap().is_some());
    assert!(hb[4].get("y").unwrap().is_none());
    s.stop().unwrap();
}

#[test]
fn one_listing_through_a_server_over_a_folder() {
    let d = tempfile::tempdir().unwrap();
    let storage = kiln_sync::FolderRemote::open(d.path().join("storage")).unwrap();
    one_listing_tells_which_changed(Arc::new(storage), d.path());
}

#[test]
fn one_listing_through_a_server_over_a_bucket() {
    let d = tempfile::tempdir().unwrap();
    let s3 = kiln_sync::testing::S3sFs::start();
    one_listing_tells_which_changed(Arc::new(s3.open("many")), d.path());
}
