//! The sync server over real HTTP on loopback: its API keeps the promises of a remote (through
//! `kiln_sync::HttpRemote`), refuses what it must, and replicas sync through it over a folder
//! and over an S3-compatible bucket (s3s-fs, as the S3 tests run it).

use kiln_server::{spawn, ServerOptions};
use kiln_sync::{
    probe, sync, Conflict, FileName, FolderRemote, HeadRead, HttpRemote, Kind, Remote, SyncOptions,
};
use serde_json::json;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;

mod common;
use common::{folder_server, raw, request};

#[test]
fn the_api_keeps_a_remotes_promises() {
    let d = tempfile::tempdir().unwrap();
    let s = folder_server(&d.path().join("storage"));
    let r = HttpRemote::open(&s.url(), None).unwrap();
    assert!(
        !r.per_replica_heads(),
        "a folder keeps a record per database"
    );
    kiln_sync::testing::check_batches(&r);

    // Head records by compare-and-swap, passed through from the folder's own.
    assert_eq!(r.read_head("notes", None).unwrap(), HeadRead::Absent);
    let e1 = r.write_head("notes", None, b"one").unwrap().unwrap();
    assert_eq!(
        r.write_head("notes", None, b"again").unwrap(),
        Err(Conflict {
            now: Some(e1.clone())
        })
    );
    assert_eq!(
        r.read_head("notes", Some(&e1)).unwrap(),
        HeadRead::NotModified
    );
    let e2 = r.write_head("notes", Some(&e1), b"two").unwrap().unwrap();
    assert_eq!(
        r.write_head("notes", Some(&e1), b"stale").unwrap(),
        Err(Conflict {
            now: Some(e2.clone())
        })
    );
    assert_eq!(
        r.read_head("notes", Some(&e1)).unwrap(),
        HeadRead::Found {
            bytes: b"two".to_vec(),
            etag: e2.clone()
        }
    );
    let listed = r.list_heads().unwrap();
    assert_eq!(listed, vec![("notes".to_owned(), e2.clone())]);
    assert_eq!(
        r.delete_head("notes", &e1).unwrap(),
        Err(Conflict {
            now: Some(e2.clone())
        })
    );
    r.delete_head("notes", &e2).unwrap().unwrap();
    assert_eq!(r.read_head("notes", None).unwrap(), HeadRead::Absent);
    // The probe a sync runs before relying on a remote's compare-and-swap passes.
    probe(&r).unwrap();

    // Files list with their ages; removal.
    let n = Kind::Diff.name_of(b"listed");
    r.put_file(Kind::Diff, &n, b"listed").unwrap();
    assert!(r
        .list_files(Kind::Diff)
        .unwrap()
        .iter()
        .any(|(x, _)| *x == n));
    r.delete_file(Kind::Diff, &n).unwrap();
    r.delete_file(Kind::Diff, &n).unwrap(); // absent: fine
    assert!(!r.has_file(Kind::Diff, &n).unwrap());
}

#[test]
fn bad_requests_are_refused_and_change_nothing() {
    let d = tempfile::tempdir().unwrap();
    let storage = d.path().join("storage");
    let s = spawn(
        "127.0.0.1:0",
        Arc::new(FolderRemote::open(&storage).unwrap()),
        ServerOptions {
            max_body: 4096,
            ..Default::default()
        },
    )
    .unwrap();
    let good = Kind::Diff.name_of(b"right bytes");
    let path = format!("/v1/files/diff/{good}");
    // Bytes that do not hash to the name.
    let (st, _, body) = raw(&s, &request("PUT", &path, &[], b"wrong bytes"));
    assert_eq!(st, 422, "{}", String::from_utf8_lossy(&body));
    // Not a kind, not a name, not a record's name, a path that climbs out.
    for (method, p) in [
        ("GET", format!("/v1/files/secret/{good}")),
        ("GET", "/v1/files/diff/abc".to_owned()),
        ("GET", "/v1/files/diff/..%2F..%2FKILN-REMOTE".to_owned()),
        ("GET", "/v1/heads/..%2Fheads%2Fx".to_owned()),
        ("GET", "/v1/heads/.hidden".to_owned()),
        ("GET", "/v1/heads?db=..%2F..".to_owned()),
    ] {
        let (st, _, body) = raw(&s, &request(method, &p, &[], b""));
        assert_eq!(st, 400, "{method} {p}: {}", String::from_utf8_lossy(&body));
    }
    let (st, _, _) = raw(&s, &request("GET", "/etc/passwd", &[], b""));
    assert_eq!(st, 404);
    // Too large a body.
    let big = vec![7u8; 5000];
    let big_path = format!("/v1/files/diff/{}", Kind::Diff.name_of(&big));
    let (st, _, _) = raw(&s, &request("PUT", &big_path, &[], &big));
    assert_eq!(st, 413);
    // A body cut short: the connection ends before Content-Length bytes came.
    let mut cut = request("PUT", &path, &[], b"right bytes");
    cut.truncate(cut.len() - 4);
    {
        let mut c = TcpStream::connect(s.addr).unwrap();
        c.write_all(&cut).unwrap();
        c.shutdown(std::net::Shutdown::Write).unwrap();
        let mut out = Vec::new();
        let _ = c.read_to_end(&mut out);
        let head = String::from_utf8_lossy(&out);
        assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    }
    // A head record written on no version, or a version the server never gave.
    let (st, _, _) = raw(&s, &request("PUT", "/v1/heads/notes", &[], b"x"));
    assert_eq!(st, 428);
    let (st, _, _) = raw(
        &s,
        &request("PUT", "/v1/heads/notes", &["If-Match: nonsense"], b"x"),
    );
    assert_eq!(st, 400);
    let (st, _, _) = raw(&s, &request("DELETE", "/v1/heads/notes", &[], b""));
    assert_eq!(st, 428);
    // A `missing` question too long, or not names.
    let many: Vec<String> = (0..1001).map(|_| good.to_string()).collect();
    let (st, _, _) = raw(
        &s,
        &request(
            "POST",
            "/v1/files/diff/missing",
            &["Content-Type: application/json"],
            &serde_json::to_vec(&many).unwrap(),
        ),
    );
    assert!(st == 413, "{st}");
    let (st, _, _) = raw(
        &s,
        &request(
            "POST",
            "/v1/files/diff/missing",
            &["Content-Type: application/json"],
            b"[\"../x\"]",
        ),
    );
    assert_eq!(st, 400);
    // Not JSON, not a list of strings: 400 too; an uppercase name is no name.
    for (body, ctype) in [
        (&b"{\"a\": 1}"[..], "Content-Type: application/json"),
        (&b"[1, 2]"[..], "Content-Type: application/json"),
        (&b"[\"x"[..], "Content-Type: application/json"),
    ] {
        let (st, _, _) = raw(
            &s,
            &request("POST", "/v1/files/diff/missing", &[ctype], body),
        );
        assert_eq!(st, 400, "{}", String::from_utf8_lossy(body));
    }
    let upper = format!("/v1/files/diff/{}", good.to_string().to_uppercase());
    assert_eq!(raw(&s, &request("GET", &upper, &[], b"")).0, 400);
    // Nothing of it reached the storage.
    let r = FolderRemote::open(&storage).unwrap();
    assert!(r.list_files(Kind::Diff).unwrap().is_empty());
    assert!(r.list_heads().unwrap().is_empty());
    // And the right bytes are taken: 201, then 200 (there already).
    let (st, _, _) = raw(&s, &request("PUT", &path, &[], b"right bytes"));
    assert_eq!(st, 201);
    let (st, _, _) = raw(&s, &request("PUT", &path, &[], b"right bytes"));
    assert_eq!(st, 200);
    assert_eq!(
        r.get_file(Kind::Diff, &good).unwrap().as_deref(),
        Some(&b"right bytes"[..])
    );
    let (st, _, body) = raw(&s, &request("GET", &path, &[], b""));
    assert_eq!((st, body), (200, b"right bytes".to_vec()));
    let (st, _, _) = raw(&s, &request("HEAD", &path, &[], b""));
    assert_eq!(st, 200);
}

fn docs(db: &kiln::Database) -> Vec<serde_json::Value> {
    db.docs(&kiln::ListOptions::default()).unwrap()
}

/// Two replicas that each wrote sync through a server: they merge, converge and verify; a
/// no-op sync is one request; a third, new replica pulls everything.
fn replicas_converge_through(remote_a: &dyn Remote, remote_b: &dyn Remote, remote_c: &dyn Remote) {
    let d = tempfile::tempdir().unwrap();
    let opts = kiln::Options::default();
    let a = kiln::Store::open_with(d.path().join("a"), opts.clone()).unwrap();
    let da = a.create(Some("notes")).unwrap();
    da.put(&json!({"_id": "start"})).unwrap();
    let key = a.export_key("notes", None).unwrap();
    let b = kiln::Store::open_with(d.path().join("b"), opts.clone()).unwrap();
    b.import_key("notes", &key, None).unwrap();
    let db = b.open_db("notes").unwrap();
    let o = SyncOptions::default();
    assert!(sync(&a, &da, remote_a, "notes", o).unwrap().pushed);
    assert!(sync(&b, &db, remote_b, "notes", o).unwrap().adopted);
    da.put(&json!({"_id": "a1", "text": "x".repeat(100_000)}))
        .unwrap();
    db.put(&json!({"_id": "b1", "by": "b"})).unwrap();
    sync(&a, &da, remote_a, "notes", o).unwrap();
    let r = sync(&b, &db, remote_b, "notes", o).unwrap();
    assert!(r.merged.is_some() && r.pushed, "{r:?}");
    sync(&a, &da, remote_a, "notes", o).unwrap();
    sync(&b, &db, remote_b, "notes", o).unwrap();
    assert_eq!(docs(&da), docs(&db));
    assert_eq!(docs(&da).len(), 3);
    assert_eq!(da.state_digest().unwrap(), db.state_digest().unwrap());
    for (s, d, r) in [(&a, &da, remote_a), (&b, &db, remote_b)] {
        let rep = sync(s, d, r, "notes", o).unwrap();
        assert!(rep.is_noop() && rep.requests == 1, "{rep:?}");
        assert!(d.verify().unwrap().ok());
    }
    let c = kiln::Store::open_with(d.path().join("c"), opts).unwrap();
    c.import_key("notes", &key, None).unwrap();
    let dc = c.open_db("notes").unwrap();
    let r = sync(&c, &dc, remote_c, "notes", o).unwrap();
    assert!(r.adopted && r.files_pulled > 0, "{r:?}");
    assert_eq!(docs(&dc), docs(&da));
    assert!(dc.verify().unwrap().ok());
}

#[test]
fn replicas_sync_through_a_server_over_a_folder() {
    let d = tempfile::tempdir().unwrap();
    let s = folder_server(&d.path().join("storage"));
    let open = || HttpRemote::open(&s.url(), None).unwrap();
    replicas_converge_through(&open(), &open(), &open());
}

#[test]
fn replicas_sync_through_two_servers_over_one_bucket() {
    let s3 = kiln_sync::testing::S3sFs::start();
    let one = spawn(
        "127.0.0.1:0",
        Arc::new(s3.open("shared")),
        ServerOptions::default(),
    )
    .unwrap();
    let two = spawn(
        "127.0.0.1:0",
        Arc::new(s3.open("shared")),
        ServerOptions::default(),
    )
    .unwrap();
    let (r1, r2) = (
        HttpRemote::open(&one.url(), None).unwrap(),
        HttpRemote::open(&two.url(), None).unwrap(),
    );
    assert!(
        r1.per_replica_heads(),
        "a bucket keeps a record per replica"
    );
    replicas_converge_through(&r1, &r2, &HttpRemote::open(&two.url(), None).unwrap());
    // What the servers stored is what the bucket holds.
    let files = s3.open("shared").list_files(Kind::Diff).unwrap();
    assert_eq!(files, r1.list_files(Kind::Diff).unwrap());
    let _ = FileName::parse(&files[0].0.to_string()).unwrap();
}

#[test]
fn health_and_metrics_for_an_operator() {
    let d = tempfile::tempdir().unwrap();
    let s = folder_server(&d.path().join("storage"));
    let (st, _, body) = raw(&s, &request("GET", "/healthz", &[], b""));
    assert_eq!((st, body), (200, b"ok\n".to_vec()));
    let r = HttpRemote::open(&s.url(), None).unwrap();
    assert_eq!(r.read_head("notes", None).unwrap(), HeadRead::Absent);
    r.has_file(Kind::Diff, &Kind::Diff.name_of(b"x")).unwrap();
    raw(&s, &request("BREW", "/v1/heads/secret-db-name", &[], b""));
    let (st, head, body) = raw(&s, &request("GET", "/metrics", &[], b""));
    assert_eq!(st, 200);
    assert!(
        head.to_lowercase().contains("content-type: text/plain"),
        "{head}"
    );
    let text = String::from_utf8(body).unwrap();
    for want in [
        r#"kiln_server_requests_total{route="/v1/heads/{name}",method="GET",status="404"} 1"#,
        r#"kiln_server_requests_total{route="/v1/files/{kind}/{name}",method="HEAD",status="404"} 1"#,
        r#"kiln_server_requests_total{route="/v1",method="GET",status="200"} 1"#,
        r#"kiln_server_request_seconds_count{route="/v1/heads/{name}",method="GET"} 1"#,
        r#"method="other""#,
        "kiln_server_uptime_seconds ",
    ] {
        assert!(text.contains(want), "{want} not in\n{text}");
    }
    // Routes, never names: no database or file name in the metrics.
    assert!(
        !text.contains("notes") && !text.contains("secret-db-name"),
        "{text}"
    );
}

/// Parts of files (`Range`): every remote reads the same bytes and length, the server's
/// client as its storage does, over a folder and over a bucket.
#[test]
fn parts_of_files_read_alike_everywhere() {
    let d = tempfile::tempdir().unwrap();
    let bytes: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8).collect();
    let name = Kind::Diff.name_of(&bytes);
    let s3 = kiln_sync::testing::S3sFs::start();
    let folder = FolderRemote::open(d.path().join("folder")).unwrap();
    let bucket = s3.open("parts");
    let over_folder = spawn(
        "127.0.0.1:0",
        Arc::new(FolderRemote::open(d.path().join("served")).unwrap()),
        ServerOptions::default(),
    )
    .unwrap();
    let over_bucket = spawn(
        "127.0.0.1:0",
        Arc::new(s3.open("served")),
        ServerOptions::default(),
    )
    .unwrap();
    let remotes: Vec<Box<dyn Remote>> = vec![
        Box::new(folder),
        Box::new(bucket),
        Box::new(HttpRemote::open(&over_folder.url(), None).unwrap()),
        Box::new(HttpRemote::open(&over_bucket.url(), None).unwrap()),
    ];
    for r in &remotes {
        r.put_file(Kind::Diff, &name, &bytes).unwrap();
        let part = |s, e| r.get_file_range(Kind::Diff, &name, s, e).unwrap().unwrap();
        assert_eq!(part(0, 10), (bytes[..10].to_vec(), 5000), "{r:?}");
        assert_eq!(part(4990, 6000), (bytes[4990..].to_vec(), 5000), "{r:?}");
        assert_eq!(
            part(1234, 2345),
            (bytes[1234..2345].to_vec(), 5000),
            "{r:?}"
        );
        assert_eq!(part(7000, 8000), (Vec::new(), 5000), "past the end: {r:?}");
        assert_eq!(part(10, 10), (Vec::new(), 5000), "empty: {r:?}");
        let absent = Kind::Diff.name_of(b"absent");
        assert_eq!(
            r.get_file_range(Kind::Diff, &absent, 0, 10).unwrap(),
            None,
            "{r:?}"
        );
    }
}
