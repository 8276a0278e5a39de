//! Tokens over real HTTP on loopback: no token 401, a wrong scope 403, a read token cannot push,
//! listings show only what a token may read.

use kiln_server::{spawn, Running, ServerOptions, Tokens};
use kiln_sync::{sync, FolderRemote, HttpRemote, Kind, Remote, SyncOptions};
use serde_json::json;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;

const READER: &str = "reader-of-notes-0001";
const WRITER: &str = "writer-of-notes-0001";
const OTHER: &str = "writer-of-other-0001";
const ADMIN: &str = "admin-of-everything1";

fn server(dir: &std::path::Path) -> Running {
    let tokens = Tokens::parse(&format!(
        "{READER} read notes\n{WRITER} write notes\n{OTHER} write other*\n{ADMIN} write *\n"
    ))
    .unwrap();
    let opts = ServerOptions {
        tokens: Some(tokens.shared()),
        ..ServerOptions::default()
    };
    spawn(
        "127.0.0.1:0",
        Arc::new(FolderRemote::open(dir).unwrap()),
        opts,
    )
    .unwrap()
}

fn status(s: &Running, method: &str, path: &str, token: Option<&str>) -> u16 {
    let mut c = TcpStream::connect(s.addr).unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        c,
        "{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: 0\r\n{auth}\r\n"
    )
    .unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).unwrap();
    out.split(' ').nth(1).unwrap().parse().unwrap()
}

#[test]
fn tokens_decide_who_may_do_what() {
    let d = tempfile::tempdir().unwrap();
    let s = server(&d.path().join("storage"));
    let name = Kind::Diff.name_of(b"x");
    let file = format!("/v1/files/diff/{name}");
    // No token, or one the server does not know: 401, for everything but what it is.
    for token in [None, Some("not-a-token-at-all-000")] {
        for (m, p) in [
            ("GET", "/v1/heads/notes"),
            ("GET", "/v1/heads"),
            ("GET", file.as_str()),
            ("PUT", "/v1/heads/notes"),
            ("GET", "/v1/files/diff"),
        ] {
            assert_eq!(status(&s, m, p, token), 401, "{m} {p} {token:?}");
        }
    }
    assert_eq!(status(&s, "GET", "/v1", None), 200);
    // Scopes: a reader reads its database only, and writes nothing.
    assert_eq!(status(&s, "GET", "/v1/heads/notes", Some(READER)), 404);
    assert_eq!(status(&s, "GET", "/v1/heads/other", Some(READER)), 403);
    assert_eq!(status(&s, "PUT", "/v1/heads/notes", Some(READER)), 403);
    assert_eq!(status(&s, "PUT", &file, Some(READER)), 403);
    assert_eq!(status(&s, "GET", &file, Some(READER)), 404);
    // A remote gc's listing and removals are for a token of every database.
    assert_eq!(status(&s, "GET", "/v1/files/diff", Some(WRITER)), 403);
    assert_eq!(status(&s, "DELETE", &file, Some(WRITER)), 403);
    assert_eq!(status(&s, "GET", "/v1/files/diff", Some(ADMIN)), 200);
    assert_eq!(status(&s, "DELETE", &file, Some(ADMIN)), 204);
}

#[test]
fn a_read_token_pulls_and_cannot_push() {
    let d = tempfile::tempdir().unwrap();
    let s = server(&d.path().join("storage"));
    let open = |t: &str| HttpRemote::open(&s.url(), Some(t.to_owned())).unwrap();
    let a = kiln::Store::open(d.path().join("a")).unwrap();
    let da = a.create(Some("notes")).unwrap();
    da.put(&json!({"_id": "n1"})).unwrap();
    let key = a.export_key("notes", None).unwrap();
    let o = SyncOptions::default();
    // The writer of notes pushes it; the writer of other databases may not.
    let e = sync(&a, &da, &open(OTHER), "notes", o).unwrap_err();
    assert!(e.to_string().contains("403"), "{e}");
    assert!(sync(&a, &da, &open(WRITER), "notes", o).unwrap().pushed);
    // A reader's replica takes it in; its own commit does not go out.
    let b = kiln::Store::open(d.path().join("b")).unwrap();
    b.import_key("notes", &key, None).unwrap();
    let db = b.open_db("notes").unwrap();
    let r = sync(&b, &db, &open(READER), "notes", o).unwrap();
    assert!(r.adopted, "{r:?}");
    assert!(db.get("n1").unwrap().is_some());
    db.put(&json!({"_id": "from-reader"})).unwrap();
    let e = sync(&b, &db, &open(READER), "notes", o).unwrap_err();
    assert!(e.to_string().contains("403"), "{e}");
    let pull = SyncOptions {
        push: false,
        ..SyncOptions::default()
    };
    sync(&b, &db, &open(READER), "notes", pull).unwrap();
    // Nothing of the reader's reached the server.
    let r = sync(&a, &da, &open(WRITER), "notes", o).unwrap();
    assert!(r.is_noop(), "{r:?}");
    assert!(da.get("from-reader").unwrap().is_none());
    // Listings show only what a token may read.
    let c = kiln::Store::open(d.path().join("c")).unwrap();
    let dc = c.create(Some("other-db")).unwrap();
    dc.put(&json!({"_id": "o"})).unwrap();
    sync(&c, &dc, &open(OTHER), "other-db", o).unwrap();
    let names = |t: &str| -> Vec<String> {
        open(t)
            .list_heads()
            .unwrap()
            .into_iter()
            .map(|x| x.0)
            .collect()
    };
    assert_eq!(names(READER), ["notes"]);
    assert_eq!(names(OTHER), ["other-db"]);
    assert_eq!(names(ADMIN), ["notes", "other-db"]);
    let e = open(READER).read_head("other-db", None).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied, "{e}");
}
