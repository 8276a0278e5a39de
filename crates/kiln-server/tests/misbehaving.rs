//! Regressions from a review of the server's tokens, limits and live channel: a body is not
//! read before its token is checked, a client that stops reading loses its slot, a change
//! right after subscribing is told, a live-channel listener ends with its watcher, and a write
//! past its deadline is told (a stop that drains whatever the connection bound: limits.rs).

use kiln_server::{spawn, ServerOptions, Tokens};
use kiln_sync::{FolderRemote, HttpRemote, Kind, Remote};
use std::io::Write;
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;
use common::{read_all, read_until, server};

const READER: &str = "reader-of-notes-0001";

/// api.rs put_file/write_head/missing: the body is taken whole (up to --max-body, 1 GiB)
/// before the token is looked at, so anyone who reaches a server with --tokens can make it
/// buffer a gigabyte per connection (and waits out the request deadline), instead of a 401 at
/// once.
#[test]
fn a_request_without_a_token_is_refused_before_its_body() {
    let d = tempfile::tempdir().unwrap();
    let tokens = Tokens::parse(&format!("{READER} read notes\n")).unwrap();
    let s = server(
        &d.path().join("storage"),
        ServerOptions {
            tokens: Some(tokens.shared()),
            ..ServerOptions::default()
        },
    );
    let name = Kind::Diff.name_of(b"x");
    for (method, path) in [
        ("PUT", format!("/v1/files/diff/{name}")),
        ("PUT", "/v1/heads/notes".to_owned()),
        ("POST", "/v1/files/diff/missing".to_owned()),
    ] {
        let mut c = TcpStream::connect(s.addr).unwrap();
        // A gigabyte announced, none of it sent, no token.
        write!(
            c,
            "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             If-None-Match: *\r\nContent-Length: 1000000000\r\n\r\n"
        )
        .unwrap();
        let got = read_until(&mut c, "\r\n", Duration::from_secs(3));
        assert!(
            got.starts_with("HTTP/1.1 401"),
            "{method} {path} without a token: no 401 before the body ({got:?})"
        );
    }
}

/// conn.rs serve_one: nothing bounds the time a response takes to go out. A client that asks
/// for a large file and never reads holds its connection slot forever (past the header and
/// request deadlines); --max-connections of them stop the server.
#[test]
fn a_client_that_never_reads_does_not_hold_a_slot_forever() {
    let d = tempfile::tempdir().unwrap();
    let storage = d.path().join("storage");
    let s = server(
        &storage,
        ServerOptions {
            max_connections: 1,
            header_timeout: Duration::from_millis(500),
            request_timeout: Duration::from_secs(1),
            ..ServerOptions::default()
        },
    );
    let bytes: Vec<u8> = (0..64u32 << 20).map(|i| (i * 7 + i / 251) as u8).collect();
    let name = Kind::FileSet.name_of(&bytes);
    FolderRemote::open(&storage)
        .unwrap()
        .put_file(Kind::FileSet, &name, &bytes)
        .unwrap();
    let mut greedy = TcpStream::connect(s.addr).unwrap();
    write!(
        greedy,
        "GET /v1/files/fileset/{name} HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    .unwrap();
    let head = read_until(&mut greedy, "\r\n", Duration::from_secs(10));
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // It reads no more. Well past every deadline, another client is still not served.
    std::thread::sleep(Duration::from_secs(3));
    let mut other = TcpStream::connect(s.addr).unwrap();
    other
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let got = read_all(&mut other, Duration::from_secs(5));
    let text = String::from_utf8_lossy(&got);
    drop(greedy);
    assert!(
        text.starts_with("HTTP/1.1 200"),
        "a client that does not read holds the only slot past the deadlines: {text:?}"
    );
}

/// live.rs start_polling: a poller that starts takes its first listing one interval later,
/// as the baseline, so a change written through another server (here: straight to the
/// storage) after a subscriber's `ready` and before that first listing is never told.
#[test]
fn a_change_through_another_server_right_after_subscribing_is_told() {
    let d = tempfile::tempdir().unwrap();
    let storage = d.path().join("storage");
    let s = server(
        &storage,
        ServerOptions {
            poll: Duration::from_millis(1000),
            ..ServerOptions::default()
        },
    );
    let mut c = TcpStream::connect(s.addr).unwrap();
    c.write_all(b"GET /v1/watch?dbs=notes HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let got = read_until(&mut c, "event: ready", Duration::from_secs(5));
    assert!(got.contains("event: ready"), "{got}");
    // (The subscriber now syncs, then waits to be told.) Another server writes.
    let other = FolderRemote::open(&storage).unwrap();
    other.write_head("notes", None, b"x").unwrap().unwrap();
    let got = read_until(&mut c, "event: head", Duration::from_secs(5));
    assert!(
        got.contains(r#"{"db":"notes"}"#),
        "a change through another server, after ready, never told: {got:?}"
    );
}

fn live_channel_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("comm")).ok())
        .filter(|n| n.starts_with("kiln live"))
        .count()
}

/// kiln-sync http.rs listen: the 20 s "does anyone still listen" timeout is per chunk, and
/// the server's keep-alive comment comes every 15 s, so on a quiet database the listener never
/// learns that its receiver is gone: the thread and its connection (a server slot) live on
/// after the watcher has returned.
#[test]
fn listen_ends_once_its_receiver_is_gone() {
    let d = tempfile::tempdir().unwrap();
    let s = server(&d.path().join("storage"), ServerOptions::default());
    let r = HttpRemote::open(&s.url(), None).unwrap();
    let before = live_channel_threads();
    let rx = r.notify("notes").unwrap();
    // `ready` came: subscribed.
    rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(live_channel_threads(), before + 1);
    drop(rx);
    let t = Instant::now();
    while live_channel_threads() > before && t.elapsed() < Duration::from_secs(50) {
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(
        live_channel_threads(),
        before,
        "the live channel's thread still runs {:?} after its receiver was dropped",
        t.elapsed()
    );
}

/// A storage whose head record writes take a while.
#[derive(Debug)]
struct SlowWrites(FolderRemote);

impl Remote for SlowWrites {
    fn location(&self) -> String {
        self.0.location()
    }
    fn has_file(&self, k: Kind, n: &kiln_sync::FileName) -> std::io::Result<bool> {
        self.0.has_file(k, n)
    }
    fn put_file(&self, k: Kind, n: &kiln_sync::FileName, b: &[u8]) -> std::io::Result<()> {
        self.0.put_file(k, n, b)
    }
    fn get_file(&self, k: Kind, n: &kiln_sync::FileName) -> std::io::Result<Option<Vec<u8>>> {
        self.0.get_file(k, n)
    }
    fn list_files(&self, k: Kind) -> std::io::Result<Vec<(kiln_sync::FileName, u64)>> {
        self.0.list_files(k)
    }
    fn delete_file(&self, k: Kind, n: &kiln_sync::FileName) -> std::io::Result<()> {
        self.0.delete_file(k, n)
    }
    fn read_head(
        &self,
        db: &str,
        known: Option<&kiln_sync::Etag>,
    ) -> std::io::Result<kiln_sync::HeadRead> {
        self.0.read_head(db, known)
    }
    fn write_head(
        &self,
        db: &str,
        expected: Option<&kiln_sync::Etag>,
        bytes: &[u8],
    ) -> std::io::Result<Result<kiln_sync::Etag, kiln_sync::Conflict>> {
        std::thread::sleep(Duration::from_millis(800));
        self.0.write_head(db, expected, bytes)
    }
    fn delete_head(
        &self,
        db: &str,
        expected: &kiln_sync::Etag,
    ) -> std::io::Result<Result<(), kiln_sync::Conflict>> {
        self.0.delete_head(db, expected)
    }
    fn list_heads(&self) -> std::io::Result<Vec<(String, kiln_sync::Etag)>> {
        self.0.list_heads()
    }
}

/// A head record write that lands after its request's deadline (the client got 408) is still
/// told to the database's watchers: they must not miss a record that changed.
#[test]
fn a_write_past_its_deadline_is_told_all_the_same() {
    let d = tempfile::tempdir().unwrap();
    let storage = SlowWrites(FolderRemote::open(d.path().join("storage")).unwrap());
    let s = spawn(
        "127.0.0.1:0",
        Arc::new(storage),
        ServerOptions {
            request_timeout: Duration::from_millis(300),
            // (Only the write's own notice, not a later poll of the storage, can tell it.)
            poll: Duration::from_secs(60),
            ..ServerOptions::default()
        },
    )
    .unwrap();
    let mut watcher = TcpStream::connect(s.addr).unwrap();
    watcher
        .write_all(b"GET /v1/watch?dbs=notes HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let got = read_until(&mut watcher, "event: ready", Duration::from_secs(5));
    assert!(got.contains("event: ready"), "{got}");
    let mut c = TcpStream::connect(s.addr).unwrap();
    c.write_all(
        b"PUT /v1/heads/notes HTTP/1.1\r\nHost: x\r\nConnection: close\r\nIf-None-Match: *\r\nContent-Length: 1\r\n\r\nx",
    )
    .unwrap();
    let answer = String::from_utf8_lossy(&read_all(&mut c, Duration::from_secs(5))).into_owned();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    let got = read_until(&mut watcher, "notes", Duration::from_secs(5));
    assert!(
        got.contains(r#"{"db":"notes"}"#),
        "the late write was not told: {got}"
    );
}
