//! Proposals through the server, found by a review: what a `propose` token cannot do, bodies
//! not held before the token is checked, and a filing too large for a record.

mod common;

use common::{raw, read_until, request, server};
use kiln_server::{ServerOptions, Tokens};
use kiln_sync::{HttpRemote, Kind};
use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

const PROPOSER: &str = "proposer-to-main-001";

fn tokens() -> ServerOptions {
    let t = Tokens::parse(&format!(
        "{PROPOSER} propose main\n{PROPOSER} write fork-*\n"
    ))
    .unwrap();
    ServerOptions {
        tokens: Some(t.shared()),
        ..ServerOptions::default()
    }
}

/// A `propose` token of main (and `write` of its own forks) may neither write main's head
/// record nor delete it, whatever the method.
#[test]
fn a_propose_token_cannot_write_the_target() {
    let d = tempfile::tempdir().unwrap();
    let s = server(d.path(), tokens());
    let auth = format!("Authorization: Bearer {PROPOSER}");
    let put_head = request("PUT", "/v1/heads/main", &[&auth, "If-None-Match: *"], b"x");
    assert_eq!(raw(&s, &put_head).0, 403);
    let replica = "/v1/heads/main~0123456789abcdef0123456789abcdef";
    let put_replica = request("PUT", replica, &[&auth, "If-None-Match: *"], b"x");
    assert_eq!(raw(&s, &put_replica).0, 403);
    let del = request(
        "DELETE",
        "/v1/heads/main",
        &[&auth, "If-Match: \"00\""],
        b"",
    );
    assert_eq!(raw(&s, &del).0, 403);
    // Its fork: allowed (the contributor's push).
    let fork = request(
        "PUT",
        "/v1/heads/fork-a",
        &[&auth, "If-None-Match: *"],
        b"x",
    );
    assert_ne!(raw(&s, &fork).0, 403);
}

/// A PUT of a proposal record announcing a large body, without a token or with one that may
/// not decide: refused at once, the body never waited for.
#[test]
fn no_proposal_body_is_held_before_the_token_is_checked() {
    let d = tempfile::tempdir().unwrap();
    let s = server(d.path(), tokens());
    for (auth, path, want) in [
        ("", "/v1/proposals/main/p1.prop", "HTTP/1.1 401"),
        (
            &*format!("Authorization: Bearer {PROPOSER}\r\n"),
            "/v1/proposals/main/p1.decision",
            "HTTP/1.1 403",
        ),
    ] {
        let mut c = TcpStream::connect(s.addr).unwrap();
        write!(
            c,
            "PUT {path} HTTP/1.1\r\nHost: x\r\n{auth}If-None-Match: *\r\nContent-Length: 1000000\r\n\r\nKILNPROP"
        )
        .unwrap();
        let t = Instant::now();
        let got = read_until(&mut c, want, Duration::from_secs(5));
        assert!(got.starts_with(want), "{path}: {got:?}");
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "{path}: waited for the body"
        );
    }
}

/// `kiln propose --remote` with a message too large for a record: the server refuses the
/// filing (413), but the proposal was made in the contributor's store first and stays there,
/// open, filed nowhere (`kiln proposals main` lists it; every retry adds another). The size
/// is known before anything changes.
#[test]
fn a_filing_the_server_refuses_leaves_no_proposal_here() {
    let d = tempfile::tempdir().unwrap();
    let s = server(&d.path().join("served"), ServerOptions::default());
    let remote = HttpRemote::open(&s.url(), None).unwrap();
    let store = kiln::Store::open(d.path().join("contributor")).unwrap();
    let main = store.create(Some("main")).unwrap();
    main.put(&serde_json::json!({"_id": "page", "text": "old"}))
        .unwrap();
    let fork = store.fork("main", Some("fork-a")).unwrap();
    fork.put(&serde_json::json!({"_id": "page", "text": "new"}))
        .unwrap();
    let message = "m".repeat(kiln_sync::MAX_PROPOSAL_RECORD);
    let e = kiln_sync::proposals::propose(&store, &remote, "fork-a", "main", &message).unwrap_err();
    assert!(e.to_string().contains("at most"), "{e}");
    let left = store.proposals(Some("main"), false).unwrap();
    assert!(
        left.is_empty(),
        "a proposal filed nowhere is left here: {} of them",
        left.len()
    );
}

/// (A file needs `write` of some database: a token with only `propose` grants uploads none.)
#[test]
fn a_propose_only_token_uploads_no_file() {
    let d = tempfile::tempdir().unwrap();
    let t = Tokens::parse(&format!("{PROPOSER} propose *\n")).unwrap();
    let s = server(
        d.path(),
        ServerOptions {
            tokens: Some(t.shared()),
            ..ServerOptions::default()
        },
    );
    let bytes = b"some diff bytes".to_vec();
    let name = Kind::Diff.name_of(&bytes);
    let auth = format!("Authorization: Bearer {PROPOSER}");
    let put = request("PUT", &format!("/v1/files/diff/{name}"), &[&auth], &bytes);
    assert_eq!(raw(&s, &put).0, 403);
}
