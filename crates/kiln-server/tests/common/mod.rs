//! Helpers the server's tests share: a server over a folder, raw HTTP/1.1 exchanges.
#![allow(dead_code)] // each test file uses some

use kiln_server::{spawn, Running, ServerOptions};
use kiln_sync::FolderRemote;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;

/// A server on a free loopback port over a folder storage at `dir`.
pub fn folder_server(dir: &std::path::Path) -> Running {
    let storage = Arc::new(FolderRemote::open(dir).unwrap());
    spawn("127.0.0.1:0", storage, ServerOptions::default()).unwrap()
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
