//! The wire format as a contract: the checked-in exchanges of `tests/fixtures/server-v1`
//! replayed against a server over a copy of the sync fixture's remote, byte for byte where
//! they say so, and then the fixture's replica synced through the server.

use kiln_server::{spawn, ServerOptions};
use kiln_sync::{sync, FileSets, FolderRemote, HttpRemote, SyncOptions};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn copy(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    assert!(Command::new("cp")
        .arg("-a")
        .arg(from.join("."))
        .arg(to)
        .status()
        .unwrap()
        .success());
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// The request's bytes on the wire.
fn request(r: &Value) -> Vec<u8> {
    let body = if let Some(h) = r["body_hex"].as_str() {
        hex(h)
    } else if let Some(f) = r["body_file"].as_str() {
        std::fs::read(fixtures().join(f)).unwrap()
    } else if !r["json"].is_null() {
        serde_json::to_vec(&r["json"]).unwrap()
    } else {
        Vec::new()
    };
    let mut head = format!(
        "{} {} HTTP/1.1\r\nHost: fixture\r\nConnection: close\r\nContent-Length: {}\r\n",
        r["method"].as_str().unwrap(),
        r["path"].as_str().unwrap(),
        body.len()
    );
    if !r["json"].is_null() {
        head.push_str("Content-Type: application/json\r\n");
    }
    if let Some(h) = r["headers"].as_object() {
        for (k, v) in h {
            head.push_str(&format!("{k}: {}\r\n", v.as_str().unwrap()));
        }
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend(body);
    out
}

#[test]
fn the_checked_in_exchanges_hold() {
    let d = tempfile::tempdir().unwrap();
    let storage = d.path().join("remote");
    copy(&fixtures().join("sync-v1/remote"), &storage);
    let s = spawn(
        "127.0.0.1:0",
        Arc::new(FolderRemote::open(&storage).unwrap()),
        ServerOptions::default(),
    )
    .unwrap();
    let text = std::fs::read_to_string(fixtures().join("server-v1/exchanges.json")).unwrap();
    let exchanges: Vec<Value> = serde_json::from_str(&text).unwrap();
    assert!(exchanges.len() >= 15);
    for x in &exchanges {
        let why = x["why"].as_str().unwrap();
        let mut c = TcpStream::connect(s.addr).unwrap();
        c.write_all(&request(&x["request"])).unwrap();
        let mut got = Vec::new();
        c.read_to_end(&mut got).unwrap();
        let split = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let head = String::from_utf8_lossy(&got[..split]).to_lowercase();
        let body = &got[split + 4..];
        let want = &x["response"];
        let status: u64 = head.split(' ').nth(1).unwrap().parse().unwrap();
        assert_eq!(status, want["status"].as_u64().unwrap(), "{why}: {head}");
        if let Some(e) = want["etag"].as_str() {
            assert!(
                head.lines().any(|l| l == format!("etag: {e}")),
                "{why}: {head}"
            );
        }
        if !want["json"].is_null() {
            let v: Value = serde_json::from_slice(body).unwrap();
            assert_eq!(v, want["json"], "{why}");
        }
        if let Some(h) = want["headers"].as_object() {
            for (k, v) in h {
                let line = format!(
                    "{}: {}",
                    k.to_lowercase(),
                    v.as_str().unwrap().to_lowercase()
                );
                assert!(
                    head.lines().any(|l| l == line),
                    "{why}: no {line:?} in {head}"
                );
            }
        }
        if let Some(f) = want["body_file"].as_str() {
            let skip = want["body_skip"].as_u64().unwrap_or(0) as usize;
            let file = std::fs::read(fixtures().join(f)).unwrap();
            let take = want["body_take"]
                .as_u64()
                .map_or(file.len(), |t| skip + t as usize);
            assert!(body == &file[skip..take], "{why}: the body differs");
        }
    }

    // The fixture's replica syncs through the server into the fixture's state.
    let replica = d.path().join("replica");
    copy(&fixtures().join("sync-v1/replica"), &replica);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(replica.join("keys"), std::fs::Permissions::from_mode(0o700)).unwrap();
    let store = kiln::Store::open(&replica).unwrap();
    let db = store.open_db("notes").unwrap();
    let remote = HttpRemote::open(&s.url(), None).unwrap();
    let all = SyncOptions {
        files: FileSets::All,
        ..SyncOptions::default()
    };
    let rep = sync(&store, &db, &remote, "notes", all).unwrap();
    assert!(
        rep.adopted && rep.files_pulled == 3 && rep.filesets_pulled == 1,
        "{rep:?}"
    );
    let expected: Vec<Value> = std::fs::read_to_string(fixtures().join("sync-v1/expected.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(db.docs(&kiln::ListOptions::default()).unwrap(), expected);
    assert!(db.verify().unwrap().ok());
}
