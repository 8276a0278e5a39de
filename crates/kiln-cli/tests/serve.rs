//! `kiln serve` as an operator runs it, and `kiln sync` through it over HTTP on loopback.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

fn kiln(root: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kiln"));
    c.arg("--root").arg(root).env_remove("KILN_ROOT");
    c
}

fn ok(root: &Path, args: &[&str]) -> String {
    let o: Output = kiln(root).args(args).stdin(Stdio::null()).output().unwrap();
    assert!(
        o.status.success(),
        "kiln {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// A `kiln serve` process, killed when dropped (a failed test leaves none behind).
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `kiln serve` over folder `storage` on a free port: the process and its URL.
fn serve(storage: &Path) -> (Server, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["serve", "--addr", "127.0.0.1:0", "--storage"])
        .arg(storage)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(c.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("{line:?}"))
        .to_owned();
    (Server(c), url)
}

#[test]
fn stores_sync_through_kiln_serve() {
    let d = tempfile::tempdir().unwrap();
    let (mut server, url) = serve(&d.path().join("storage"));
    let (a, b) = (d.path().join("a"), d.path().join("b"));
    ok(&a, &["db", "create", "notes"]);
    ok(&a, &["put", "notes", r#"{"_id":"x","v":1}"#]);
    ok(&a, &["remote", "add", "notes", "origin", &url]);
    ok(&a, &["sync", "notes"]);
    let key = ok(&a, &["key", "export", "notes", "--raw"]);
    ok(&b, &["key", "import", "notes", key.trim()]);
    ok(&b, &["remote", "add", "notes", "origin", &url]);
    ok(&b, &["sync", "notes"]);
    assert!(ok(&b, &["get", "notes", "x"]).contains("\"v\": 1"));
    ok(&b, &["put", "notes", r#"{"_id":"y","by":"b"}"#]);
    ok(&b, &["sync", "notes"]);
    ok(&a, &["sync", "notes"]);
    assert!(ok(&a, &["get", "notes", "y"]).contains("\"by\": \"b\""));
    // The server holds ciphertext only: no document value in its storage.
    let grep = Command::new("grep")
        .args(["-r", "-a", "-l", "\"by\""])
        .arg(d.path().join("storage"))
        .output()
        .unwrap();
    assert!(grep.stdout.is_empty(), "{grep:?}");
    // SIGTERM: it stops, cleanly.
    let pid = server.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = server.0.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

#[test]
fn serve_refuses_bad_storage() {
    let d = tempfile::tempdir().unwrap();
    let o = kiln(d.path())
        .args(["serve", "--storage", "http://127.0.0.1:1"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    let o = kiln(d.path())
        .args(["serve", "--storage", "ftp://x"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{o:?}");
}
