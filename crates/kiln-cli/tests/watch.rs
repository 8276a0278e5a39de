//! `kiln watch` across processes: a watcher process prints the commits other `kiln` processes
//! make (deletes marked), from an event with --since, and a query's rows with --query.

use serde_json::Value;
mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

fn kiln(root: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kiln"));
    c.arg("--root").arg(root).env_remove("KILN_ROOT");
    c
}

fn ok(root: &Path, args: &[&str], stdin: Option<&str>) -> String {
    common::kiln_ok(root, args, stdin)
}

/// A `kiln watch` process and its output lines (killed when dropped).
struct Watcher {
    child: Child,
    lines: mpsc::Receiver<Value>,
}

impl Watcher {
    fn start(root: &Path, args: &[&str]) -> Watcher {
        let mut child = kiln(root)
            .arg("watch")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines() {
                let Ok(l) = l else { break };
                if tx.send(serde_json::from_str(&l).unwrap()).is_err() {
                    break;
                }
            }
        });
        Watcher { child, lines }
    }

    fn next(&self) -> Value {
        self.lines
            .recv_timeout(Duration::from_secs(30))
            .expect("a line from kiln watch")
    }

    fn quiet(&self) -> bool {
        self.lines.recv_timeout(Duration::from_millis(300)).is_err()
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ids(line: &Value) -> Vec<String> {
    line["docs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["_id"].as_str().unwrap().to_owned())
        .collect()
}

/// Waits until the watcher process has subscribed: it prints nothing until a commit, so a
/// marker commit is made until one shows (the first lines may be such markers).
fn ready(w: &Watcher, root: &Path) {
    for i in 0.. {
        ok(
            root,
            &["put", "n", &format!(r#"{{"_id":"ready{i}"}}"#)],
            None,
        );
        if let Ok(l) = w.lines.recv_timeout(Duration::from_millis(500)) {
            assert!(ids(&l)[0].starts_with("ready"));
            while w.lines.recv_timeout(Duration::from_millis(200)).is_ok() {}
            return;
        }
        assert!(i < 60, "kiln watch printed nothing");
    }
}

#[test]
fn watch_prints_the_commits_other_processes_make() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("s");
    ok(&root, &["db", "create", "n"], None);
    let w = Watcher::start(&root, &["n"]);
    ready(&w, &root);
    ok(&root, &["put", "n", r#"{"_id":"a","v":1}"#], None);
    let l = w.next();
    assert_eq!(ids(&l), ["a"]);
    assert_eq!(l["docs"][0]["v"], 1);
    let event = l["event"].as_str().unwrap().to_owned();
    ok(
        &root,
        &["import", "n", "-"],
        Some("{\"_id\":\"b\"}\n{\"_id\":\"c\"}\n"),
    );
    assert_eq!(ids(&w.next()), ["b", "c"]);
    ok(&root, &["del", "n", "a"], None);
    let l = w.next();
    assert_eq!(
        l["docs"][0],
        serde_json::json!({"_id": "a", "_deleted": true})
    );
    assert!(w.quiet());
    // From an event: the commits after it, first.
    let w2 = Watcher::start(&root, &["n", "--since", &event]);
    assert_eq!(ids(&w2.next()), ["b", "c"]);
    assert_eq!(ids(&w2.next()), ["a"]);
}

#[test]
fn watch_query_prints_rows_when_a_commit_changes_them() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("s");
    ok(&root, &["db", "create", "n"], None);
    ok(&root, &["put", "n", r#"{"_id":"a","n":1}"#], None);
    ok(
        &root,
        &["index", "create", "n", "by-n", "--field", "n"],
        None,
    );
    let w = Watcher::start(&root, &["n", "--query", "by-n", "--range", "0", "10"]);
    let rows = |l: &Value| -> Vec<String> {
        l["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(rows(&w.next()), ["a"]);
    ok(&root, &["put", "n", r#"{"_id":"far","n":500}"#], None);
    ok(&root, &["put", "n", r#"{"_id":"b","n":2}"#], None);
    assert_eq!(rows(&w.next()), ["a", "b"]);
    assert!(w.quiet());
}
