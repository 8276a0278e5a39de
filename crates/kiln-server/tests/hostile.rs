//! Regressions found in review of the batch transfers, the sync server and its client: a
//! sync's request count through a server, and versions a server never gave (a header value
//! that is no header value; `*`, which S3 would match to any record).

use kiln_server::{spawn, Running, ServerOptions};
use kiln_sync::{sync, HttpRemote, SyncOptions};
use serde_json::json;
use std::sync::Arc;

mod common;
use common::{folder_server, raw, request};

fn store_with_files(dir: &std::path::Path, n: usize) -> (kiln::Store, kiln::Database) {
    let opts = kiln::Options {
        background_compaction: false,
        ..kiln::Options::default()
    };
    let s = kiln::Store::open_with(dir, opts).unwrap();
    let db = s.create(Some("notes")).unwrap();
    for i in 0..n {
        // Large enough to be a diff file of its own each.
        db.put(&json!({"_id": format!("d{i}"), "text": "x".repeat(80_000)}))
            .unwrap();
    }
    (s, db)
}

/// `SyncReport::requests` says "requests made to the remote", but through a server a lookup
/// of many files is one `missing` request (per 1,000), while the sync counts one per file
/// (`look_up` and `reupload_gone` add `names.len()`).
#[test]
fn sync_through_a_server_counts_the_requests_it_makes() {
    let d = tempfile::tempdir().unwrap();
    let s = folder_server(&d.path().join("storage"));
    let remote = HttpRemote::open(&s.url(), None).unwrap();
    let (a, da) = store_with_files(&d.path().join("a"), 12);
    let before = remote.requests();
    let r = sync(&a, &da, &remote, "notes", SyncOptions::default()).unwrap();
    assert!(r.pushed && r.files_pushed >= 12, "{r:?}");
    let made = (remote.requests() - before) as usize;
    assert_eq!(r.requests, made, "reported vs made: {r:?}");
}

/// The same through a server over a bucket: a new replica's first push checks the files it
/// named after writing its record, one `missing` request, counted as one per file.
#[test]
fn a_new_replica_through_a_server_counts_the_requests_it_makes() {
    let s3 = kiln_sync::testing::S3sFs::start();
    let s = spawn(
        "127.0.0.1:0",
        Arc::new(s3.open("counted")),
        ServerOptions::default(),
    )
    .unwrap();
    let d = tempfile::tempdir().unwrap();
    let (a, da) = store_with_files(&d.path().join("a"), 12);
    let ra = HttpRemote::open(&s.url(), None).unwrap();
    sync(&a, &da, &ra, "notes", SyncOptions::default()).unwrap();

    let b = kiln::Store::open_with(d.path().join("b"), kiln::Options::default()).unwrap();
    b.import_key("notes", &a.export_key("notes", None).unwrap(), None)
        .unwrap();
    let db = b.open_db("notes").unwrap();
    let rb = HttpRemote::open(&s.url(), None).unwrap();
    let before = rb.requests();
    let r = sync(&b, &db, &rb, "notes", SyncOptions::default()).unwrap();
    assert!(r.adopted && r.pushed, "{r:?}");
    let made = (rb.requests() - before) as usize;
    assert_eq!(r.requests, made, "reported vs made: {r:?}");
}

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

fn bucket_server(s3: &kiln_sync::testing::S3sFs, prefix: &str) -> Running {
    spawn(
        "127.0.0.1:0",
        Arc::new(s3.open(prefix)),
        ServerOptions::default(),
    )
    .unwrap()
}

/// A version is only checked for being quoted hex of UTF-8; over a bucket it is handed to
/// object_store as an `If-None-Match`/`If-Match` header value, and one that is no header value
/// (a newline) panics in object_store's request signing (`expect("request valid")`). The
/// panic is caught by `spawn_blocking` and answered 500; docs/server.md says 400.
#[test]
fn a_hostile_version_is_refused_without_a_panic() {
    use kiln_sync::Remote;
    let s3 = kiln_sync::testing::S3sFs::start();
    let s = bucket_server(&s3, "hostile");
    let r = HttpRemote::open(&s.url(), None).unwrap();
    r.write_head("notes~abc", None, b"one").unwrap().unwrap();
    let nl = format!("\"{}\"", hex("\n"));
    for (method, h) in [
        ("GET", "If-None-Match"),
        ("PUT", "If-Match"),
        ("DELETE", "If-Match"),
    ] {
        let (st, _, body) = raw(
            &s,
            &request(
                method,
                "/v1/heads/notes~abc",
                &[&format!("{h}: {nl}")],
                b"x",
            ),
        );
        assert_eq!(st, 400, "{method} {h}: {}", String::from_utf8_lossy(&body));
    }
}

/// "A version the server never gave is refused (400)" (docs/server.md). Over a bucket the
/// version `*` (sent as `"2a"`) is passed on to S3 as `If-Match: *`, which matches any
/// record: a write on a version never given replaces the record (200), where a made-up one
/// gets 412.
#[test]
fn a_version_never_given_is_refused_over_a_bucket() {
    use kiln_sync::{HeadRead, Remote};
    let s3 = kiln_sync::testing::S3sFs::start();
    let s = bucket_server(&s3, "star");
    let r = HttpRemote::open(&s.url(), None).unwrap();
    r.write_head("notes~abc", None, b"one").unwrap().unwrap();
    let star = format!("If-Match: \"{}\"", hex("*"));
    let (st, _, body) = raw(
        &s,
        &request("PUT", "/v1/heads/notes~abc", &[&star], b"replaced"),
    );
    let now = r.read_head("notes~abc", None).unwrap();
    assert!(
        matches!(&now, HeadRead::Found { bytes, .. } if bytes == b"one"),
        "the record was replaced on a version never given: {now:?}"
    );
    assert_eq!(st, 400, "{}", String::from_utf8_lossy(&body));
}
