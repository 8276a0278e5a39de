//! The live channel over real HTTP on loopback: subscribers hear of head record changes as
//! they are written (through this server, or through another on the same bucket), `watch`
//! takes them in without waiting for its poll, and a stop does not wait on subscribers.

use kiln_server::{spawn, ServerOptions};
use kiln_sync::{sync, watch, HttpRemote, Remote, SyncOptions, WatchOptions};
use serde_json::json;
use std::io::Write;
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;
use common::{folder_server, read_until};

#[test]
fn subscribers_hear_of_their_databases_only() {
    let d = tempfile::tempdir().unwrap();
    let s = folder_server(&d.path().join("storage"));
    let mut c = TcpStream::connect(s.addr).unwrap();
    c.write_all(b"GET /v1/watch?dbs=notes,todo HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let got = read_until(&mut c, "event: ready", Duration::from_secs(5));
    assert!(
        got.contains("text/event-stream") && got.contains("event: ready"),
        "{got}"
    );
    let r = HttpRemote::open(&s.url(), None).unwrap();
    r.write_head("other", None, b"x").unwrap().unwrap();
    let e = r.write_head("todo", None, b"x").unwrap().unwrap();
    let got = read_until(&mut c, "todo", Duration::from_secs(5));
    assert!(
        got.contains("event: head") && got.contains(r#"{"db":"todo"}"#),
        "{got}"
    );
    assert!(!got.contains("other"), "{got}");
    r.delete_head("todo", &e).unwrap().unwrap();
    let got = read_until(&mut c, "todo", Duration::from_secs(5));
    assert!(
        got.contains(r#"{"db":"todo"}"#),
        "a removal is told too: {got}"
    );
    // Bad subscriptions.
    for path in ["/v1/watch", "/v1/watch?dbs=", "/v1/watch?dbs=..%2Fx"] {
        let mut c = TcpStream::connect(s.addr).unwrap();
        write!(
            c,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let got = read_until(&mut c, "\r\n", Duration::from_secs(5));
        assert!(got.starts_with("HTTP/1.1 400"), "{path}: {got}");
    }
    // A stop does not wait on the subscription.
    let t = Instant::now();
    s.stop().unwrap();
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
}

/// Replica B watches (its poll a minute, so only the live channel can bring A's writes in
/// sooner); A writes and syncs; B has each write within seconds.
fn watch_takes_writes_in(remote_a: &dyn Remote, remote_b: HttpRemote) {
    let d = tempfile::tempdir().unwrap();
    let a = kiln::Store::open(d.path().join("a")).unwrap();
    let da = a.create(Some("notes")).unwrap();
    da.put(&json!({"_id": "start"})).unwrap();
    sync(&a, &da, remote_a, "notes", SyncOptions::default()).unwrap();
    let key = a.export_key("notes", None).unwrap();
    let b_dir = d.path().join("b");
    let watcher = std::thread::spawn(move || {
        let b = kiln::Store::open(&b_dir).unwrap();
        b.import_key("notes", &key, None).unwrap();
        let db = b.open_db("notes").unwrap();
        let pace = WatchOptions {
            poll: Duration::from_secs(60),
            ..WatchOptions::default()
        };
        let mut seen = Vec::new();
        watch(
            &b,
            &db,
            &remote_b,
            "notes",
            SyncOptions::default(),
            pace,
            &mut |r| {
                r.as_ref().unwrap();
                for i in 0..3 {
                    let id = format!("w{i}");
                    if !seen.contains(&id) && db.get(&id).unwrap().is_some() {
                        seen.push(id);
                    }
                }
                seen.len() < 3
            },
        )
        .unwrap();
    });
    std::thread::sleep(Duration::from_millis(500));
    let mut lags = Vec::new();
    for i in 0..3 {
        da.put(&json!({"_id": format!("w{i}")})).unwrap();
        sync(&a, &da, remote_a, "notes", SyncOptions::default()).unwrap();
        lags.push(Instant::now());
        std::thread::sleep(Duration::from_millis(300));
    }
    let t = Instant::now();
    while !watcher.is_finished() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the watching replica did not take the writes in"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    watcher.join().unwrap();
    eprintln!("all taken in {:?} after the last write", lags[2].elapsed());
}

#[test]
fn watch_takes_writes_in_through_the_live_channel() {
    let d = tempfile::tempdir().unwrap();
    let s = folder_server(&d.path().join("storage"));
    let remote_a = HttpRemote::open(&s.url(), None).unwrap();
    let remote_b = HttpRemote::open(&s.url(), None).unwrap();
    watch_takes_writes_in(&remote_a, remote_b);
}

#[test]
fn watch_hears_of_writes_through_another_server_on_the_bucket() {
    let s3 = kiln_sync::testing::S3sFs::start();
    let opts = ServerOptions {
        poll: Duration::from_millis(200),
        ..ServerOptions::default()
    };
    let one = spawn("127.0.0.1:0", Arc::new(s3.open("live")), opts.clone()).unwrap();
    let two = spawn("127.0.0.1:0", Arc::new(s3.open("live")), opts).unwrap();
    let remote_a = HttpRemote::open(&one.url(), None).unwrap();
    let remote_b = HttpRemote::open(&two.url(), None).unwrap();
    watch_takes_writes_in(&remote_a, remote_b);
}

/// A token taken out of the tokens file (read again on SIGHUP) stops hearing: its open
/// subscription ends within the recheck interval (5 s), while another token's goes on.
#[test]
fn a_revoked_token_stops_hearing() {
    let d = tempfile::tempdir().unwrap();
    let (kept, revoked) = ("kept-token-0123456789", "revoked-token-0123456");
    let tokens = kiln_server::Tokens::parse(&format!("{kept} read notes\n{revoked} read notes\n"))
        .unwrap()
        .shared();
    let s = common::server(
        &d.path().join("storage"),
        ServerOptions {
            tokens: Some(tokens.clone()),
            ..ServerOptions::default()
        },
    );
    let subscribe = |token: &str| {
        let mut c = TcpStream::connect(s.addr).unwrap();
        write!(
            c,
            "GET /v1/watch?dbs=notes HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n"
        )
        .unwrap();
        let got = read_until(&mut c, "event: ready", Duration::from_secs(5));
        assert!(got.contains("event: ready"), "{got}");
        c
    };
    let (mut a, mut b) = (subscribe(kept), subscribe(revoked));
    // The file now holds the first token only (what a SIGHUP reload does).
    *tokens.write().unwrap() =
        Arc::new(kiln_server::Tokens::parse(&format!("{kept} read notes\n")).unwrap());
    let t = Instant::now();
    // (The event stream's last chunk: the subscription is over; the connection may stay.)
    let gone = read_until(&mut b, "0\r\n\r\n", Duration::from_secs(20));
    assert!(
        gone.ends_with("0\r\n\r\n"),
        "the revoked subscription stayed open for {:?}: {gone:?}",
        t.elapsed()
    );
    // The other still hears.
    let admin = kiln_server::Tokens::parse(&format!("{kept} write notes\n")).unwrap();
    *tokens.write().unwrap() = Arc::new(admin);
    let r = HttpRemote::open(&s.url(), Some(kept.into())).unwrap();
    r.write_head("notes", None, b"x").unwrap().unwrap();
    let got = read_until(&mut a, "notes", Duration::from_secs(5));
    assert!(got.contains(r#"{"db":"notes"}"#), "{got}");
}

/// The `kiln_server_watched_databases` gauge of a server's `/metrics`.
fn watched_databases(s: &kiln_server::Running) -> usize {
    let (_, _, body) = common::raw(s, &common::request("GET", "/metrics", &[], b""));
    let text = String::from_utf8_lossy(&body).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix("kiln_server_watched_databases "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no gauge in {text}"))
}

/// A server keeps what it polls for the databases watched only, whatever the storage holds:
/// over a folder of 300 databases, watchers of 3 and of 100 hear of
/// writes made through another server, not of others; once they leave, nothing is kept.
#[test]
fn a_server_polls_and_keeps_the_watched_databases_only() {
    let d = tempfile::tempdir().unwrap();
    let storage = d.path().join("storage");
    let one = common::folder_server(&storage);
    let two = common::server(
        &storage,
        ServerOptions {
            poll: Duration::from_millis(50),
            ..ServerOptions::default()
        },
    );
    let writer = HttpRemote::open(&one.url(), None).unwrap();
    let mut etags = std::collections::HashMap::new();
    for i in 0..300 {
        let db = format!("db{i:03}");
        let e = writer.write_head(&db, None, b"v1").unwrap().unwrap();
        etags.insert(db, e);
    }
    assert_eq!(watched_databases(&two), 0);
    let subscribe = |dbs: &[String]| {
        let mut c = TcpStream::connect(two.addr).unwrap();
        write!(
            c,
            "GET /v1/watch?dbs={} HTTP/1.1\r\nHost: x\r\n\r\n",
            dbs.join(",")
        )
        .unwrap();
        let got = read_until(&mut c, "event: ready", Duration::from_secs(10));
        assert!(got.contains("event: ready"), "{got}");
        c
    };
    let few: Vec<String> = (0..3).map(|i| format!("db{i:03}")).collect();
    let many: Vec<String> = (100..200).map(|i| format!("db{i:03}")).collect();
    let mut a = subscribe(&few);
    let mut b = subscribe(&many);
    assert_eq!(watched_databases(&two), 103);
    let mut bump = |db: &str| {
        let e = etags.get_mut(db).unwrap();
        *e = writer.write_head(db, Some(e), b"v2").unwrap().unwrap();
    };
    // Unwatched first: a later event for a watched one shows it was not told.
    bump("db250");
    bump("db001");
    bump("db150");
    let got = read_until(&mut a, "db001", Duration::from_secs(10));
    assert!(got.contains(r#"{"db":"db001"}"#), "{got}");
    let got = read_until(&mut b, "db150", Duration::from_secs(10));
    assert!(got.contains(r#"{"db":"db150"}"#), "{got}");
    assert!(!got.contains("db250") && !got.contains("db001"), "{got}");
    // The watchers leave; a change to what they watched is the next write to them.
    drop((a, b));
    let reader = HttpRemote::open(&two.url(), None).unwrap();
    let t = Instant::now();
    while watched_databases(&two) != 0 {
        assert!(t.elapsed() < Duration::from_secs(20), "still kept");
        let e = reader
            .write_head("db002", Some(&etags["db002"]), b"v3")
            .unwrap();
        if let Ok(e) = e {
            etags.insert("db002".into(), e);
        }
        let e = reader
            .write_head("db199", Some(&etags["db199"]), b"v3")
            .unwrap();
        if let Ok(e) = e {
            etags.insert("db199".into(), e);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
