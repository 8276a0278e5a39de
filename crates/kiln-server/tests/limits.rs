//! Slow and greedy clients over real HTTP on loopback: a deadline for request headers and for
//! whole requests, a bound on connections, and a stop that lets requests under way finish.

use kiln_server::ServerOptions;
use kiln_sync::{FolderRemote, Kind, Remote};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

mod common;
use common::{read_all, server};

#[test]
fn slow_headers_and_slow_bodies_are_cut_off() {
    let d = tempfile::tempdir().unwrap();
    let storage = d.path().join("storage");
    let s = server(
        &storage,
        ServerOptions {
            header_timeout: Duration::from_millis(300),
            request_timeout: Duration::from_millis(600),
            ..ServerOptions::default()
        },
    );
    // Headers that never end: the connection is closed after the deadline.
    let mut c = TcpStream::connect(s.addr).unwrap();
    c.write_all(b"GET /v1 HTTP/1.1\r\nHost: slow\r\n").unwrap();
    let t = Instant::now();
    let got = read_all(&mut c, Duration::from_secs(10));
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    let text = String::from_utf8_lossy(&got);
    assert!(got.is_empty() || text.starts_with("HTTP/1.1 408"), "{text}");
    // A body that stops coming: 408, and nothing kept.
    let bytes = vec![5u8; 100];
    let name = Kind::Diff.name_of(&bytes);
    let mut c = TcpStream::connect(s.addr).unwrap();
    write!(
        c,
        "PUT /v1/files/diff/{name} HTTP/1.1\r\nHost: slow\r\nContent-Length: 100\r\n\r\n"
    )
    .unwrap();
    c.write_all(&bytes[..10]).unwrap();
    let got = read_all(&mut c, Duration::from_secs(10));
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    let r = FolderRemote::open(&storage).unwrap();
    assert!(!r.has_file(Kind::Diff, &name).unwrap());
    // The server still answers.
    let mut c = TcpStream::connect(s.addr).unwrap();
    c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let got = read_all(&mut c, Duration::from_secs(10));
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"));
}

#[test]
fn connections_beyond_the_bound_wait_their_turn() {
    let d = tempfile::tempdir().unwrap();
    let s = server(
        &d.path().join("storage"),
        ServerOptions {
            max_connections: 2,
            header_timeout: Duration::from_secs(30),
            ..ServerOptions::default()
        },
    );
    let health = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    // Two connections that say nothing hold both slots.
    let idle: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(s.addr).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut third = TcpStream::connect(s.addr).unwrap();
    third.write_all(health).unwrap();
    let got = read_all(&mut third, Duration::from_millis(700));
    assert!(
        got.is_empty(),
        "answered beyond the bound: {}",
        String::from_utf8_lossy(&got)
    );
    // One lets go: the third is served.
    drop(idle);
    let got = read_all(&mut third, Duration::from_secs(10));
    assert!(
        String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&got)
    );
}

/// A stop lets an upload under way finish whole, whatever the connection bound (a bound of
/// 2^32 once truncated the drain's count of slots to 0, cutting the upload at the stop).
#[test]
fn a_stop_lets_an_upload_under_way_finish_whole() {
    for max_connections in [ServerOptions::default().max_connections, 1 << 32] {
        let d = tempfile::tempdir().unwrap();
        let storage = d.path().join("storage");
        let s = server(
            &storage,
            ServerOptions {
                max_connections,
                ..ServerOptions::default()
            },
        );
        let bytes = vec![9u8; 200_000];
        let name = Kind::Diff.name_of(&bytes);
        let mut c = TcpStream::connect(s.addr).unwrap();
        write!(
            c,
            "PUT /v1/files/diff/{name} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
            bytes.len()
        )
        .unwrap();
        c.write_all(&bytes[..1000]).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        // The server is told to stop while the body is on its way; the rest comes after.
        let stopper = std::thread::spawn(move || s.stop());
        std::thread::sleep(Duration::from_millis(200));
        let _ = c.write_all(&bytes[1000..]);
        let got = read_all(&mut c, Duration::from_secs(10));
        let text = String::from_utf8_lossy(&got);
        assert!(
            text.starts_with("HTTP/1.1 201"),
            "bound {max_connections}: the upload under way was cut at the stop: {text:?}"
        );
        stopper.join().unwrap().unwrap();
        let r = FolderRemote::open(&storage).unwrap();
        assert_eq!(r.get_file(Kind::Diff, &name).unwrap(), Some(bytes));
    }
}

/// An upload still under way when a stopping server's drain time runs out is dropped whole:
/// the stop ends, the connection closes, and nothing of the file is kept.
#[test]
fn a_stop_drops_an_upload_that_outlasts_the_drain() {
    let d = tempfile::tempdir().unwrap();
    let storage = d.path().join("storage");
    let s = server(
        &storage,
        ServerOptions {
            drain_timeout: Duration::from_millis(300),
            ..ServerOptions::default()
        },
    );
    let bytes = vec![7u8; 200_000];
    let name = Kind::Diff.name_of(&bytes);
    let mut c = TcpStream::connect(s.addr).unwrap();
    write!(
        c,
        "PUT /v1/files/diff/{name} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        bytes.len()
    )
    .unwrap();
    c.write_all(&bytes[..1000]).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    // The rest never comes.
    let t = Instant::now();
    s.stop().unwrap();
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    let got = read_all(&mut c, Duration::from_secs(5));
    let text = String::from_utf8_lossy(&got);
    assert!(
        !text.starts_with("HTTP/1.1 2"),
        "an upload cut short was answered as kept: {text:?}"
    );
    let r = FolderRemote::open(&storage).unwrap();
    assert_eq!(r.get_file(Kind::Diff, &name).unwrap(), None);
    assert!(!r.has_file(Kind::Diff, &name).unwrap());
}

#[test]
fn an_idle_kept_alive_connection_is_closed() {
    let d = tempfile::tempdir().unwrap();
    let s = server(
        &d.path().join("storage"),
        ServerOptions {
            header_timeout: Duration::from_millis(300),
            ..ServerOptions::default()
        },
    );
    let mut c = TcpStream::connect(s.addr).unwrap();
    c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 256];
    let n = c.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // Kept alive, then nothing more: closed after the header deadline.
    let t = Instant::now();
    let rest = read_all(&mut c, Duration::from_secs(10));
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    let text = String::from_utf8_lossy(&rest);
    assert!(
        rest.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
}
