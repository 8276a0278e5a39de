//! Proposal records over real HTTP on loopback: what each remote promises of them (a folder,
//! a bucket, the server over both), who may file and decide them, and hostile requests.

mod common;

use common::{raw, request, server};
use kiln_server::{ServerOptions, Tokens};
use kiln_sync::{FolderRemote, HttpRemote, Remote};
use std::sync::Arc;

/// A sealed-looking record (the server checks the magic only; clients open the rest).
fn record(tag: &str) -> Vec<u8> {
    let mut b = kiln::PROPOSAL_RECORD_MAGIC.to_vec();
    b.extend_from_slice(tag.as_bytes());
    b
}

/// What every remote promises of proposal records: create-only, listed and read by database,
/// names checked.
fn check_records(r: &dyn Remote) {
    assert!(r.list_proposal_records("main").unwrap().is_empty());
    assert_eq!(r.get_proposal_record("main", "p1.prop").unwrap(), None);
    assert!(r
        .put_proposal_record("main", "p1.prop", &record("one"))
        .unwrap());
    // Create-only: a second write of the name changes nothing.
    assert!(!r
        .put_proposal_record("main", "p1.prop", &record("two"))
        .unwrap());
    assert_eq!(
        r.get_proposal_record("main", "p1.prop").unwrap(),
        Some(record("one"))
    );
    assert!(r
        .put_proposal_record("main", "p1.decision", &record("d"))
        .unwrap());
    assert!(r
        .put_proposal_record("other", "p2.prop", &record("x"))
        .unwrap());
    assert_eq!(
        r.list_proposal_records("main").unwrap(),
        ["p1.decision", "p1.prop"]
    );
    assert_eq!(r.list_proposal_records("other").unwrap(), ["p2.prop"]);
    for bad in ["../p.prop", "p.txt", "a b.prop", ".prop", "p/q.prop"] {
        let e = r
            .put_proposal_record("main", bad, &record("x"))
            .unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{bad}: {e}");
    }
    assert!(r
        .put_proposal_record("../x", "p.prop", &record("x"))
        .is_err());
    // Head records and proposal records do not mix: no database appears.
    assert!(r.list_heads().unwrap().is_empty());
}

#[test]
fn every_remote_keeps_proposal_records_create_only() {
    let d = tempfile::tempdir().unwrap();
    check_records(&FolderRemote::open(d.path().join("folder")).unwrap());
    let s3 = kiln_sync::testing::S3sFs::start();
    check_records(&s3.open("direct"));
    let over_folder = server(&d.path().join("served"), ServerOptions::default());
    check_records(&HttpRemote::open(&over_folder.url(), None).unwrap());
    let over_bucket = kiln_server::spawn(
        "127.0.0.1:0",
        Arc::new(s3.open("served")),
        ServerOptions::default(),
    )
    .unwrap();
    check_records(&HttpRemote::open(&over_bucket.url(), None).unwrap());
}

const READER: &str = "reader-of-main-00001";
const PROPOSER: &str = "proposer-to-main-001";
const MODERATOR: &str = "moderator-of-main-01";

fn put(token: &str, path: &str, headers: &[&str], body: &[u8]) -> Vec<u8> {
    let auth = format!("Authorization: Bearer {token}");
    let mut all = vec![auth.as_str()];
    all.extend_from_slice(headers);
    request("PUT", path, &all, body)
}

fn get(token: &str, path: &str) -> Vec<u8> {
    request(
        "GET",
        path,
        &[&format!("Authorization: Bearer {token}")],
        b"",
    )
}

#[test]
fn tokens_say_who_files_and_who_decides() {
    let d = tempfile::tempdir().unwrap();
    let tokens = Tokens::parse(&format!(
        "{READER} read main\n{PROPOSER} propose main\n{PROPOSER} write fork-*\n\
         {MODERATOR} write main\n"
    ))
    .unwrap();
    let s = server(
        d.path(),
        ServerOptions {
            tokens: Some(tokens.shared()),
            ..ServerOptions::default()
        },
    );
    let create = ["If-None-Match: *"];
    let (prop, dec) = (
        "/v1/proposals/main/p1.prop",
        "/v1/proposals/main/p1.decision",
    );
    // Filing needs propose (write includes it); deciding needs write.
    assert_eq!(raw(&s, &put(READER, prop, &create, &record("r"))).0, 403);
    assert_eq!(raw(&s, &put(PROPOSER, dec, &create, &record("d"))).0, 403);
    assert_eq!(raw(&s, &put(PROPOSER, prop, &create, &record("p"))).0, 201);
    assert_eq!(
        raw(&s, &put(PROPOSER, prop, &create, &record("again"))).0,
        412
    );
    assert_eq!(raw(&s, &put(MODERATOR, dec, &create, &record("d"))).0, 201);
    assert_eq!(raw(&s, &put(MODERATOR, dec, &create, &record("d2"))).0, 412);
    // Reading needs read of the target.
    let (st, _, body) = raw(&s, &get(READER, "/v1/proposals/main"));
    assert_eq!(
        (st, body.as_slice()),
        (200, &br#"["p1.decision","p1.prop"]"#[..])
    );
    assert_eq!(raw(&s, &get(READER, dec)).2, record("d"));
    assert_eq!(raw(&s, &get(READER, "/v1/proposals/fork-a")).0, 403);
    assert_eq!(raw(&s, &request("GET", prop, &[], b"")).0, 401);
    // What a token may do, asked before anything changes on the client.
    let (st, _, body) = raw(&s, &get(PROPOSER, "/v1/access/main"));
    assert_eq!(st, 200);
    let may: kiln_sync::Allowed = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (may.read, may.propose, may.write),
        (true, true, false),
        "{may:?}"
    );
    let may = HttpRemote::open(&s.url(), Some(PROPOSER.into()))
        .unwrap()
        .allowed("fork-a")
        .unwrap();
    assert!(may.read && may.propose && may.write, "{may:?}");
    let may = HttpRemote::open(&s.url(), Some(READER.into()))
        .unwrap()
        .allowed("other")
        .unwrap();
    assert!(!may.read && !may.propose && !may.write, "{may:?}");
}

#[test]
fn hostile_proposal_records_change_nothing() {
    let d = tempfile::tempdir().unwrap();
    let s = server(d.path(), ServerOptions::default());
    let create = "If-None-Match: *";
    let path = "/v1/proposals/main/p1.prop";
    // No precondition: refused (a record is never replaced).
    assert_eq!(raw(&s, &request("PUT", path, &[], &record("x"))).0, 428);
    assert_eq!(
        raw(
            &s,
            &request("PUT", path, &["If-Match: \"00\""], &record("x"))
        )
        .0,
        428
    );
    // Not a sealed proposal record.
    assert_eq!(
        raw(&s, &request("PUT", path, &[create], b"{\"plain\":1}")).0,
        422
    );
    // Larger than a record may be.
    let big = record(&"x".repeat(kiln_sync::MAX_PROPOSAL_RECORD));
    assert_eq!(raw(&s, &request("PUT", path, &[create], &big)).0, 413);
    // Names that are not records' names, or would leave the storage's places.
    for bad in [
        "/v1/proposals/main/p1.txt",
        "/v1/proposals/main/..%2Fp1.prop",
        "/v1/proposals/.main/p1.prop",
        "/v1/proposals/main/p%201.prop",
        "/v1/proposals/..%2F..%2Fetc/p1.prop",
    ] {
        let st = raw(&s, &request("PUT", bad, &[create], &record("x"))).0;
        assert_eq!(st, 400, "{bad}");
        assert_eq!(raw(&s, &request("GET", bad, &[], b"")).0, 400, "{bad}");
    }
    let listed = HttpRemote::open(&s.url(), None)
        .unwrap()
        .list_proposal_records("main")
        .unwrap();
    assert!(listed.is_empty(), "{listed:?}");
    assert!(!d.path().join("proposals").join("main").exists());
}
