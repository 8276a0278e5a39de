//! Helpers the server's tests share: a server over a folder, raw HTTP/1.1 exchanges.
#![allow(dead_code)] // each test file uses some

use kiln_server::{spawn, Running, ServerOptions};
use kiln_sync::FolderRemote;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A server on a free loopback port over a folder storage at `dir`.
pub fn folder_server(dir: &std::path::Path) -> Running {
    server(dir, ServerOptions::default())
}

/// [`folder_server`] with options.
pub fn server(dir: &std::path::Path, opts: ServerOptions) -> Running {
    let storage = Arc::new(FolderRemote::open(dir).unwrap());
    spawn("127.0.0.1:0", storage, opts).unwrap()
}

/// Everything the server sends until it closes (or `wait` passes without a byte).
pub fn read_all(c: &mut TcpStream, wait: Duration) -> Vec<u8> {
    c.set_read_timeout(Some(wait)).unwrap();
    let mut out = Vec::new();
    let _ = c.read_to_end(&mut out);
    out
}

/// Reads from `c` until `want` has come, or `wait` passes: what came.
pub fn read_until(c: &mut TcpStream, want: &str, wait: Duration) -> String {
    c.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let (t, mut got) = (Instant::now(), Vec::new());
    while t.elapsed() < wait && !String::from_utf8_lossy(&got).contains(want) {
        let mut buf = [0u8; 4096];
        match c.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// One raw HTTP/1.1 exchange (the connection closed after): status, headers, body.
pub fn raw(s: &Running, request: &[u8]) -> (u16, String, Vec<u8>) {
    let mut c = TcpStream::connect(s.addr).unwrap();
    c.write_all(request).unwrap();
    let mut out = Vec::new();
    c.read_to_end(&mut out).unwrap();
    let split = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&out[..split]).into_owned();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head, out[split + 4..].to_vec())
}

/// A request's bytes: `Connection: close`, the headers given, the body.
pub fn request(method: &str, path: &str, headers: &[&str], body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for h in headers {
        r.push_str(h);
        r.push_str("\r\n");
    }
    r.push_str("\r\n");
    let mut r = r.into_bytes();
    r.extend_from_slice(body);
    r
}
