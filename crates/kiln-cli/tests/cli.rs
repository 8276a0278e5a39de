//! The `kiln` binary end to end: output, JSON mode and exit codes.

mod common;

use serde_json::Value;
use std::ffi::OsStr;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn kiln(root: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    common::run_kiln(root, args, stdin)
}

/// Runs `kiln` with `args` (any bytes) and `stdin` written from a thread, so a `kiln` that
/// stops reading does not stop the test. Also says whether all of `stdin` was taken.
fn kiln_raw(root: &Path, args: &[&OsStr], stdin: Vec<u8>) -> (Output, bool) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("--root")
        .arg(root)
        .args(["--durability", "buffered"])
        .args(args)
        .env_remove("KILN_ROOT")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut i = c.stdin.take().unwrap();
    let w = std::thread::spawn(move || i.write_all(&stdin).is_ok());
    let o = c.wait_with_output().unwrap();
    (o, w.join().unwrap())
}

fn os(args: &[&str]) -> Vec<&'static OsStr> {
    args.iter()
        .map(|a| OsStr::new(Box::leak(a.to_string().into_boxed_str())))
        .collect()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ok(root: &Path, args: &[&str]) -> String {
    let o = kiln(root, args, None);
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

fn json(root: &Path, args: &[&str]) -> Value {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    serde_json::from_str(&ok(root, &a)).unwrap()
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap()
}

#[test]
fn a_session_from_create_to_verify() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    assert_eq!(json(r, &["db", "create", "notes"])["name"], "notes");
    let anon = json(r, &["db", "create"]);
    assert_eq!(anon["name"].as_str().unwrap().len(), 36);
    assert_eq!(json(r, &["db", "list"]).as_array().unwrap().len(), 2);

    let p1 = json(r, &["put", "notes", r#"{"_id":"a","text":"first"}"#]);
    assert_eq!(p1["id"], "a");
    let o = kiln(
        r,
        &["--json", "put", "notes"],
        Some(r#"{"_id":"a","text":"second"}"#),
    );
    assert!(o.status.success());
    assert_eq!(json(r, &["get", "notes", "a"])["text"], "second");
    let at = p1["event"].as_str().unwrap();
    assert_eq!(json(r, &["get", "notes", "a", "--at", at])["text"], "first");

    // Missing document: distinct exit code, message on stderr, nothing on stdout.
    let o = kiln(r, &["get", "notes", "zzz"], None);
    assert_eq!(code(&o), 3);
    assert!(o.stdout.is_empty());
    assert!(String::from_utf8_lossy(&o.stderr).contains("no document"));

    // Import with batches, then export and list.
    let lines: String = (0..250)
        .map(|i| format!("{{\"_id\":\"doc-{i:03}\",\"n\":{i}}}\n"))
        .collect();
    let f = d.path().join("in.jsonl");
    std::fs::write(&f, lines).unwrap();
    assert_eq!(
        json(
            r,
            &["import", "notes", f.to_str().unwrap(), "--batch", "100"]
        )["imported"],
        250
    );
    let info = json(r, &["db", "info", "notes"]);
    assert_eq!(info["docs"], 251);
    assert_eq!(info["events"], 5); // 2 puts + 3 batches
    assert_eq!(info["tree_shape"], "bounded"); // a new database's (docs/format.md, "Tree node")
    let export = ok(r, &["export", "notes"]);
    assert_eq!(export.lines().count(), 251);
    assert!(export
        .lines()
        .all(|l| serde_json::from_str::<Value>(l).is_ok()));
    assert_eq!(
        json(r, &["docs", "notes", "--limit", "3", "--start", "doc-100"])
            .as_array()
            .unwrap()
            .len(),
        3
    );
    // Pages backwards within a prefix, joined by --after; one line per document without
    // --json.
    let ids = |v: Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|d| d["_id"].as_str().unwrap().to_owned())
            .collect()
    };
    let last = [
        "docs", "notes", "--prefix", "doc-2", "--desc", "--limit", "2",
    ];
    assert_eq!(ids(json(r, &last)), ["doc-249", "doc-248"]);
    let next = [&last[..], &["--after", "doc-248"]].concat();
    assert_eq!(ids(json(r, &next)), ["doc-247", "doc-246"]);
    let lines = ok(
        r,
        &["docs", "notes", "--prefix", "doc-24", "--after", "doc-245"],
    );
    let got: Vec<String> = lines
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["_id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(got, ["doc-246", "doc-247", "doc-248", "doc-249"]);

    // Delete, then changes since the second put.
    let p2 = json(r, &["log", "notes", "--limit", "1"]);
    let head = p2[0]["cid"].as_str().unwrap().to_owned();
    ok(r, &["del", "notes", "doc-007"]);
    let ch = json(r, &["changes", "notes", "--since", &head]);
    assert_eq!(ch.as_array().unwrap().len(), 1);
    assert_eq!(ch[0]["id"], "doc-007");
    assert_eq!(ch[0]["deleted"], true);
    assert_eq!(ch[0]["doc"]["_deleted"], true);
    assert_eq!(json(r, &["log", "notes"]).as_array().unwrap().len(), 6);
    assert!(ok(r, &["log", "notes"]).contains("-doc-007"));

    let v = json(r, &["verify", "notes"]);
    assert_eq!(v["ok"], true);
    assert_eq!(v["docs"], 250);
    assert!(ok(r, &["verify", "notes"]).trim_end().ends_with("ok"));
    let text = ok(r, &["db", "info", "notes"]);
    assert!(text.contains("documents  250"));
    assert!(text.contains("tree shape bounded"));
    ok(r, &["compact", "notes"]);
    assert_eq!(
        json(r, &["db", "info", "notes"])["files"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    ok(r, &["db", "drop", "notes"]);
    assert_eq!(code(&kiln(r, &["db", "info", "notes"], None)), 4);
}

#[test]
fn errors_have_clear_messages_and_exit_codes() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    ok(r, &["db", "create", "x"]);
    let cases: &[(&[&str], i32, &str)] = &[
        (&["db", "create", "../evil"], 2, "invalid database name"),
        (&["db", "create", "x"], 2, "already exists"),
        (&["get", "nope", "a"], 4, "does not exist"),
        (&["put", "x", "[1,2]"], 2, "must be a JSON object"),
        (&["put", "x", "{oops"], 2, "not valid JSON"),
        (&["put", "x", r#"{"_id":7}"#], 2, "_id must be a string"),
        (&["get", "x", "a", "--at", "notacid"], 2, "not an event CID"),
        (
            &[
                "get",
                "x",
                "a",
                "--at",
                "bafyreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy",
            ],
            4,
            "not part of database",
        ),
        (
            &[
                "changes",
                "x",
                "--since",
                "bafyreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy",
            ],
            4,
            "not part of database",
        ),
        (&["frobnicate"], 2, "unrecognized subcommand"),
    ];
    for (args, want, msg) in cases {
        let o = kiln(r, args, None);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(code(&o), *want, "{args:?}: {err}");
        assert!(err.contains(msg), "{args:?}: {err}");
    }
    // A bad line stops an import and says where; earlier batches stay.
    let f = d.path().join("bad.jsonl");
    std::fs::write(&f, "{\"_id\":\"a\"}\n{\"_id\":\"b\"}\nnot json\n").unwrap();
    let o = kiln(
        r,
        &["import", "x", f.to_str().unwrap(), "--batch", "1"],
        None,
    );
    assert_eq!(code(&o), 2);
    assert!(String::from_utf8_lossy(&o.stderr).contains("line 3"));
    assert_eq!(json(r, &["db", "info", "x"])["docs"], 2);
}

#[test]
fn verify_names_a_damaged_file_and_exits_5() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    ok(r, &["db", "create", "x"]);
    ok(r, &["put", "x", r#"{"_id":"a","v":"some text here"}"#]);
    let info = json(r, &["db", "info", "x"]);
    let name = info["files"][0]["name"].as_str().unwrap().to_owned();
    let path = r.join("files").join(&name[..2]).join(format!("{name}.kdf"));
    let mut b = std::fs::read(&path).unwrap();
    b[30] ^= 0xff;
    std::fs::write(&path, b).unwrap();
    let o = kiln(r, &["verify", "x"], None);
    assert_eq!(code(&o), 5);
    assert!(String::from_utf8_lossy(&o.stdout).contains(&name));
    let o = kiln(r, &["get", "x", "a"], None);
    assert_eq!(code(&o), 5, "a damaged file is corruption, not 'not found'");
    assert!(String::from_utf8_lossy(&o.stderr).contains("corruption"));
}

#[test]
fn demo_runs_on_a_fresh_folder() {
    let d = tempfile::tempdir().unwrap();
    let out = ok(&d.path().join("store"), &["demo"]);
    assert!(out.contains("verify: ok"), "{out}");
    assert!(
        ok(&d.path().join("store"), &["demo"]).contains("verify: ok"),
        "runs twice"
    );
}

#[test]
fn compaction_settings_archive_and_gc() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    // Showing the settings creates no store; changing one does.
    assert_eq!(code(&kiln(r, &["config"], None)), 4);
    ok(r, &["config", "--keep-archive", "off"]);
    assert_eq!(json(r, &["config"])["compact_threshold"], 100);
    let c = json(
        r,
        &["config", "--compact-threshold", "3", "--keep-archive", "on"],
    );
    assert_eq!(
        (c["compact_threshold"].clone(), c["keep_archive"].clone()),
        (3.into(), true.into())
    );
    ok(r, &["db", "create", "a", "--compact-threshold", "2"]);
    ok(r, &["db", "create", "b"]);
    for i in 0..7 {
        ok(r, &["put", "a", &format!("{{\"_id\":\"x{i}\"}}")]);
        ok(r, &["put", "b", &format!("{{\"_id\":\"y{i}\"}}")]);
    }
    let a = json(r, &["db", "info", "a"]);
    assert_eq!(a["compact_threshold"], 2);
    assert!(a["diffs"].as_u64().unwrap() <= 2);
    assert!(a["compacted_files"].as_u64().unwrap() >= 1);
    assert!(a["compacted_ms"].as_u64().unwrap() > 0);
    let b = json(r, &["db", "info", "b"]);
    assert_eq!(
        (b["compact_threshold"].clone(), b["diffs"].clone()),
        (3.into(), 3.into())
    );
    // Every diff of "a" is still reachable through the archive.
    let h = json(r, &["db", "files", "a", "--history"]);
    let diffs = h
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["level"] == 0)
        .count();
    assert_eq!(diffs, 7);
    assert!(h
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["location"] == "archived"));
    // Full compaction: exactly one file, same documents.
    ok(r, &["compact", "a", "--full"]);
    assert_eq!(json(r, &["db", "files", "a"]).as_array().unwrap().len(), 1);
    assert_eq!(json(r, &["docs", "a"]).as_array().unwrap().len(), 7);
    ok(r, &["verify", "a"]);
    // The threshold can be changed back, and bad values are refused.
    assert_eq!(
        json(r, &["db", "set", "a", "--compact-threshold", "default"])["compact_threshold"],
        3
    );
    for bad in [
        vec!["db", "set", "a", "--compact-threshold", "0"],
        vec!["config", "--compact-threshold", "x"],
        vec!["db", "create", "c", "--compact-threshold", "0"],
    ] {
        let o = kiln(r, &bad, None);
        assert_eq!(code(&o), 2, "{bad:?}");
        assert!(String::from_utf8_lossy(&o.stderr).contains("threshold"));
    }
    // gc: an orphan (what a crash leaves) is archived; nothing named is touched.
    let orphan = r.join("files/ab/ab".to_owned() + &"0".repeat(62) + ".kdf");
    std::fs::create_dir_all(orphan.parent().unwrap()).unwrap();
    std::fs::write(&orphan, b"orphan").unwrap();
    let g = json(r, &["gc"]);
    assert_eq!(
        (g["databases"].clone(), g["removed_files"].clone()),
        (2.into(), 1.into())
    );
    assert!(!orphan.exists());
    ok(r, &["verify", "a"]);
    ok(r, &["verify", "b"]);
    assert!(ok(r, &["gc"]).contains("0 unreferenced files"));
}

#[test]
fn purge_from_the_command_line() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    ok(r, &["db", "create", "p"]);
    let first = json(r, &["put", "p", r#"{"_id":"s","v":"secret-1"}"#])["event"]
        .as_str()
        .unwrap()
        .to_owned();
    ok(r, &["put", "p", r#"{"_id":"s","v":"secret-2"}"#]);
    ok(r, &["put", "p", r#"{"_id":"o","v":"keep"}"#]);
    let p = json(r, &["purge", "p", "s"]);
    assert_eq!(p["versions"], 2);
    let o = kiln(r, &["get", "p", "s", "--at", &first], None);
    assert_eq!(code(&o), 3);
    assert!(String::from_utf8_lossy(&o.stderr).contains("purged"));
    assert_eq!(code(&kiln(r, &["get", "p", "s"], None)), 3);
    assert!(ok(r, &["get", "p", "o"]).contains("keep"));
    ok(r, &["verify", "p"]);
}

#[test]
fn dropping_history_from_the_command_line() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    ok(r, &["db", "create", "h"]);
    let mut events = Vec::new();
    for k in 0..6 {
        let e = json(
            r,
            &["put", "h", &format!("{{\"_id\":\"x{}\",\"k\":{k}}}", k % 2)],
        );
        events.push(e["event"].as_str().unwrap().to_owned());
    }
    ok(r, &["compact", "h", "--drop-history-before", &events[3]]);
    assert_eq!(json(r, &["log", "h"]).as_array().unwrap().len(), 3);
    assert_eq!(json(r, &["db", "files", "h"]).as_array().unwrap().len(), 1);
    assert!(ok(r, &["get", "h", "x1", "--at", &events[3]]).contains("\"k\": 3"));
    assert!(ok(r, &["get", "h", "x0", "--at", &events[3]]).contains("\"k\": 2"));
    assert_eq!(
        code(&kiln(r, &["get", "h", "x0", "--at", &events[1]], None)),
        4
    );
    let bad = kiln(r, &["compact", "h", "--drop-history-before", "nope"], None);
    assert_eq!(code(&bad), 2);
    ok(r, &["verify", "h"]);
}

#[test]
fn fork_from_the_command_line() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    ok(r, &["db", "create", "main"]);
    ok(r, &["put", "main", r#"{"_id":"a","v":1}"#]);
    assert_eq!(json(r, &["fork", "main", "mine"])["name"], "mine");
    let i = json(r, &["db", "info", "mine"]);
    assert_eq!(
        (i["own_bytes"].clone(), i["shared_bytes"].clone()),
        (0.into(), i["bytes"].clone())
    );
    ok(r, &["put", "mine", r#"{"_id":"a","v":2}"#]);
    assert!(
        json(r, &["db", "info", "mine"])["own_bytes"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert!(ok(r, &["get", "main", "a"]).contains("\"v\": 1"));
    assert!(ok(r, &["get", "mine", "a"]).contains("\"v\": 2"));
    let anon = json(r, &["fork", "mine"]);
    assert_eq!(anon["name"].as_str().unwrap().len(), 36);
    assert_eq!(code(&kiln(r, &["fork", "nope", "x"], None)), 4);
    assert_eq!(code(&kiln(r, &["fork", "main", "mine"], None)), 2);
    ok(r, &["verify", "mine"]);
}

#[test]
fn diff_from_the_command_line() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    ok(r, &["db", "create", "main"]);
    let e = json(r, &["put", "main", r#"{"_id":"a","v":1}"#])["event"]
        .as_str()
        .unwrap()
        .to_owned();
    ok(r, &["put", "main", r#"{"_id":"b","v":1}"#]);
    ok(r, &["fork", "main", "mine"]);
    ok(r, &["put", "mine", r#"{"_id":"a","v":2}"#]);
    ok(r, &["del", "mine", "b"]);
    ok(r, &["put", "mine", r#"{"_id":"c","v":3}"#]);
    let text = ok(r, &["diff", "main", "mine"]);
    assert!(
        text.contains("~ a") && text.contains("- b") && text.contains("+ c"),
        "{text}"
    );
    assert!(text.contains("1 added, 1 changed, 1 deleted"));
    let j = json(r, &["diff", "main", "mine"]);
    assert_eq!(j[0]["before"]["v"], 1);
    assert_eq!(j[0]["after"]["v"], 2);
    let at = json(r, &["diff", &format!("main@{e}"), "main"]);
    assert_eq!(at.as_array().unwrap().len(), 1);
    assert_eq!(at[0]["id"], "b");
    assert_eq!(code(&kiln(r, &["diff", "main", "nope"], None)), 4);
    assert_eq!(code(&kiln(r, &["diff", "main@zzz", "mine"], None)), 2);
}

#[test]
fn merge_from_the_command_line() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    ok(r, &["db", "create", "main"]);
    ok(r, &["put", "main", r#"{"_id":"a","v":0}"#]);
    ok(r, &["put", "main", r#"{"_id":"b","v":0}"#]);
    ok(r, &["fork", "main", "mine"]);
    ok(r, &["put", "mine", r#"{"_id":"a","v":"mine"}"#]);
    ok(r, &["put", "mine", r#"{"_id":"b","v":"mine"}"#]);
    ok(r, &["put", "main", r#"{"_id":"b","v":"main"}"#]);
    ok(r, &["put", "mine", r#"{"_id":"c","v":"mine"}"#]);
    // Take part of it first.
    let part = json(r, &["merge", "mine", "--into", "main", "--only", "c"]);
    assert_eq!(part["changed"], serde_json::json!(["c"]));
    let m = json(r, &["merge", "mine", "--into", "main"]);
    assert_eq!(m["conflicts"].as_array().unwrap().len(), 1);
    assert_eq!(m["conflicts"][0]["id"], "b");
    assert_eq!(m["conflicts"][0]["ancestor"]["v"], 0);
    assert!(ok(r, &["get", "main", "a"]).contains("mine"));
    let lost = ok(r, &["get", "main", "b", "--conflicts"]);
    assert_eq!(lost.lines().count(), 1);
    assert!(ok(r, &["merge", "mine", "--into", "main"]).contains("nothing to merge"));
    assert_eq!(
        code(&kiln(r, &["merge", "nope", "--into", "main"], None)),
        4
    );
    ok(r, &["verify", "main"]);
}

#[test]
fn proposals_from_the_command_line() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    ok(r, &["db", "create", "site"]);
    ok(r, &["put", "site", r#"{"_id":"home","t":"hi"}"#]);
    ok(r, &["fork", "site", "alice"]);
    ok(r, &["put", "alice", r#"{"_id":"blog","t":"post"}"#]);
    ok(r, &["put", "alice", r#"{"_id":"home","t":"hello"}"#]);
    let p = json(r, &["propose", "alice", "--to", "site", "-m", "a blog"]);
    let id = p["id"].as_str().unwrap().to_owned();
    assert_eq!(json(r, &["proposals", "site"]).as_array().unwrap().len(), 1);
    let rev = ok(r, &["review", &id]);
    assert!(rev.contains("~ blog") && rev.contains("~ home"), "{rev}");
    let a = json(r, &["accept", &id, "--only", "blog", "--by", "mod"]);
    assert_eq!(a["changed"], serde_json::json!(["blog"]));
    assert!(ok(r, &["log", "site", "--limit", "1"]).contains("by mod"));
    let again = kiln(r, &["accept", &id], None);
    assert_eq!(code(&again), 2);
    assert!(String::from_utf8_lossy(&again.stderr).contains("already accepted"));
    assert!(json(r, &["proposals", "site"])
        .as_array()
        .unwrap()
        .is_empty());
    assert_eq!(
        json(r, &["proposals", "--all"])[0]["status"]["state"],
        "accepted"
    );
    let p2 = json(r, &["propose", "alice", "--to", "site"]);
    let r2 = json(r, &["reject", p2["id"].as_str().unwrap(), "-m", "not now"]);
    assert_eq!(r2["status"]["reason"], "not now");
    assert!(ok(r, &["get", "site", "blog"]).contains("post"));
    assert!(ok(r, &["get", "site", "home"]).contains("hi"));
}

/// Bad input exits 2 on every path: invalid UTF-8 on stdin (it exited 1, "I/O error", where
/// the same bytes as an argument exit 2) and in an import line, a document or line over the
/// text limit (read no further), `--batch 0` (it was taken as 1). `put DB -` reads stdin.
#[test]
fn bad_input_exits_2_on_every_path() {
    use std::os::unix::ffi::OsStrExt;
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    ok(r, &["db", "create", "x"]);
    let bad = b"{\"_id\":\"a\",\"v\":\"\xff\"}".to_vec();
    let (o, _) = kiln_raw(r, &os(&["put", "x"]), bad.clone());
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("not valid UTF-8 (at byte 17)"),
        "{}",
        stderr(&o)
    );
    let mut args = os(&["put", "x"]);
    args.push(OsStr::from_bytes(&bad));
    assert_eq!(code(&kiln_raw(r, &args, Vec::new()).0), 2);
    let (o, _) = kiln_raw(r, &os(&["put", "x", "-"]), bad.clone());
    assert_eq!(code(&o), 2);
    // `-` is stdin.
    let o = kiln(r, &["--json", "put", "x", "-"], Some(r#"{"_id":"dash"}"#));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(json(r, &["get", "x", "dash"])["_id"], "dash");
    // An import line: exit 2, naming the line and what was imported before it.
    let mut lines = b"{\"_id\":\"i1\"}\n{\"_id\":\"i2\"}\r\n\n".to_vec();
    lines.extend_from_slice(&bad);
    lines.extend_from_slice(b"\n{\"_id\":\"i5\"}\n");
    let f = r.join("bad.jsonl");
    std::fs::write(&f, &lines).unwrap();
    for src in [f.to_str().unwrap(), "-"] {
        let (o, _) = kiln_raw(r, &os(&["import", "x", src, "--batch", "1"]), lines.clone());
        assert_eq!(code(&o), 2, "{}", stderr(&o));
        assert_eq!(
            stderr(&o).trim_end(),
            "kiln: import stopped at line 4: invalid document: the line is not valid UTF-8 (at \
             byte 17); 2 documents before it were imported (lines 1–2)"
        );
    }
    assert!(json(r, &["get", "x", "i2"])["_id"] == "i2");
    // --batch 0 is refused, and nothing is imported. (Refused before stdin is read.)
    let (o, _) = kiln_raw(
        r,
        &os(&["import", "x", "-", "--batch", "0"]),
        b"{\"_id\":\"z\"}\n".to_vec(),
    );
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("at least 1"), "{}", stderr(&o));
    assert_eq!(code(&kiln(r, &["get", "x", "z"], None)), 3);
    // Over the limit (8 MiB of text): refused without reading the rest (64 MiB here).
    let mut huge = b"{\"_id\":\"h\",\"v\":\"".to_vec();
    huge.resize(64 << 20, b'x');
    let (o, all_read) = kiln_raw(r, &os(&["put", "x"]), huge.clone());
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("longer than 8 MiB"), "{}", stderr(&o));
    assert!(!all_read, "kiln read on past the limit");
    let mut huge_lines = b"{\"_id\":\"l1\"}\n".to_vec();
    huge_lines.extend_from_slice(&huge);
    let (o, all_read) = kiln_raw(r, &os(&["import", "x", "-"]), huge_lines);
    assert_eq!(code(&o), 2);
    assert!(
        stderr(&o)
            .contains("import stopped at line 2: invalid document: the line is longer than 8 MiB"),
        "{}",
        stderr(&o)
    );
    assert!(!all_read, "kiln read on past the limit");
    // Under the text limit but over the stored limit: the stored limit speaks.
    let mut big = b"{\"_id\":\"b\",\"v\":\"".to_vec();
    big.resize(2 << 20, b'x');
    big.extend_from_slice(b"\"}");
    let (o, all_read) = kiln_raw(r, &os(&["put", "x"]), big);
    assert_eq!(code(&o), 2);
    assert!(
        stderr(&o).contains("the limit is 1048576"),
        "{}",
        stderr(&o)
    );
    assert!(all_read);
}

/// An import that fails to commit (here: the file size limit, as a full disk would) says at
/// which lines it stopped and how many documents were imported before; those stay.
#[test]
fn a_failed_import_commit_says_where_and_how_many_were_imported() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    ok(r, &["db", "create", "x"]);
    let mut lines = String::new();
    for i in 0..4 {
        lines.push_str(&format!("{{\"_id\":\"s{i}\"}}\n"));
    }
    for i in 0..2 {
        // Two different 40 KB documents: a 80 KB diff, over the 64 KiB limit below.
        lines.push_str(&format!(
            "{{\"_id\":\"b{i}\",\"v\":\"{}\"}}\n",
            i.to_string().repeat(40_000)
        ));
    }
    let f = r.join("in.jsonl");
    std::fs::write(&f, lines).unwrap();
    // (SIGXFSZ ignored, so a write past the limit fails with EFBIG instead of killing.)
    let o = Command::new("/bin/sh")
        .arg("-c")
        .arg("trap '' XFSZ; ulimit -f 128; exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_kiln"))
        .args(["--root", r.to_str().unwrap(), "--durability", "buffered"])
        .args(["import", "x", f.to_str().unwrap(), "--batch", "2"])
        .env_remove("KILN_ROOT")
        .output()
        .unwrap();
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.starts_with("kiln: import stopped at lines 5–6: committing them failed: I/O error"),
        "{e}"
    );
    assert!(
        e.trim_end()
            .ends_with("; 4 documents before them were imported (lines 1–4)"),
        "{e}"
    );
    assert_eq!(json(r, &["db", "info", "x"])["docs"], 4);
}

/// Integers outside the 64-bit range are refused (they came back as floats:
/// 100000000000000000000 as 1e+20); the ends of the range come back exact.
#[test]
fn integers_outside_64_bits_are_refused_not_rounded() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    ok(r, &["db", "create", "x"]);
    let doc = r#"{"_id":"b","n":100000000000000000000}"#;
    let want = "integer 100000000000000000000 is outside the 64-bit range";
    for o in [
        kiln(r, &["put", "x", doc], None),
        kiln(r, &["put", "x"], Some(doc)),
        kiln(
            r,
            &["import", "x", "-"],
            Some(&format!("{{\"_id\":\"a\"}}\n{doc}\n")),
        ),
    ] {
        assert_eq!(code(&o), 2);
        assert!(stderr(&o).contains(want), "{}", stderr(&o));
    }
    assert!(stderr(&kiln(
        r,
        &["import", "x", "-"],
        Some(&format!("{{\"_id\":\"a\"}}\n{doc}\n"))
    ))
    .contains("at line 2"));
    assert_eq!(code(&kiln(r, &["get", "x", "b"], None)), 3);
    ok(
        r,
        &[
            "put",
            "x",
            r#"{"_id":"e","max":18446744073709551615,"min":-9223372036854775808,"f":1e20}"#,
        ],
    );
    let text = ok(r, &["get", "x", "e"]);
    assert!(
        text.contains("18446744073709551615") && text.contains("-9223372036854775808"),
        "{text}"
    );
    let e = json(r, &["get", "x", "e"]);
    assert_eq!(e["max"], u64::MAX);
    assert_eq!(e["min"], i64::MIN);
    assert_eq!(e["f"], 1e20);
}

/// `del` of an id with no document exits 3 and writes nothing (it exited 0 and wrote an
/// event); `merge --only` of ids the source never had says so and writes nothing.
#[test]
fn deleting_or_taking_a_missing_document_is_exit_3_and_writes_nothing() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    ok(r, &["db", "create", "x"]);
    ok(r, &["put", "x", r#"{"_id":"a"}"#]);
    ok(r, &["fork", "x", "f"]);
    ok(r, &["put", "f", r#"{"_id":"a","v":2}"#]);
    let events = |db: &str| json(r, &["log", db]).as_array().unwrap().len();
    for id in ["nope", "a"] {
        if id == "a" {
            ok(r, &["del", "x", "a"]);
        }
        let before = events("x");
        let o = kiln(r, &["del", "x", id], None);
        assert_eq!(code(&o), 3, "{}", stderr(&o));
        assert!(o.stdout.is_empty());
        assert_eq!(
            stderr(&o).trim_end(),
            format!("kiln: no document \"{id}\" in database 'x'")
        );
        assert_eq!(events("x"), before);
    }
    let before = events("x");
    let o = kiln(
        r,
        &["merge", "f", "--into", "x", "--only", "a", "nope", "zz"],
        None,
    );
    assert_eq!(code(&o), 3);
    assert_eq!(
        stderr(&o).trim_end(),
        "kiln: no documents \"nope\", \"zz\" in database 'f'"
    );
    assert_eq!(events("x"), before);
    assert_eq!(
        json(r, &["merge", "f", "--into", "x", "--only", "a"])["changed"][0],
        "a"
    );
    assert_eq!(json(r, &["get", "x", "a"])["v"], 2);
}

/// `verify` says which files it put back from the head record's copy (it said only "ok").
#[test]
fn verify_says_what_it_repaired() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    ok(r, &["db", "create", "x"]);
    // Fully durable: the head record carries the small diff's bytes.
    let put = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args([
            "--root",
            r.to_str().unwrap(),
            "--json",
            "put",
            "x",
            r#"{"_id":"a"}"#,
        ])
        .env_remove("KILN_ROOT")
        .output()
        .unwrap();
    assert!(put.status.success(), "{}", stderr(&put));
    let name = json(r, &["db", "info", "x"])["files"][0]["name"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = r.join("files").join(&name[..2]).join(format!("{name}.kdf"));
    assert_eq!(ok(r, &["verify", "x"]).lines().last(), Some("ok"));
    std::fs::remove_file(&path).unwrap(); // what a power cut can do to it
    let out = ok(r, &["verify", "x"]);
    assert!(
        out.contains(&format!("repaired file {name}: lost or damaged")),
        "{out}"
    );
    assert_eq!(out.lines().last(), Some("ok (after the repairs above)"));
    assert!(path.exists());
    std::fs::remove_file(&path).unwrap();
    let v = json(r, &["verify", "x"]);
    assert_eq!(
        (v["ok"].clone(), v["repaired"][0]["file"].clone()),
        (true.into(), name.into())
    );
    assert_eq!(json(r, &["verify", "x"])["repaired"], serde_json::json!([]));
}

/// A head record whose last append a crash tore is said so by `db info`, `verify` and, on
/// stderr, by commands that open the database (it was discarded without a word); the next
/// commit cuts it off.
#[test]
fn a_torn_head_append_is_reported() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    ok(r, &["db", "create", "x"]);
    ok(r, &["put", "x", r#"{"_id":"a"}"#]);
    let hp = r.join("dbs/x/HEAD");
    let mut h = std::fs::read(&hp).unwrap();
    h.extend_from_slice(&[0x2c, 1, 0, 0, 0xd3, 0xfe, 0xff, 0xff, 9, 9, 9]); // a record's start
    std::fs::write(&hp, &h).unwrap();
    let note = "ends in an append a crash cut off";
    assert!(ok(r, &["db", "info", "x"]).contains(note));
    assert_eq!(json(r, &["db", "info", "x"])["torn_append"], true);
    let v = ok(r, &["verify", "x"]);
    assert!(v.contains(note) && v.trim_end().ends_with("ok"), "{v}");
    assert_eq!(json(r, &["verify", "x"])["torn_append"], true);
    let o = kiln(r, &["get", "x", "a"], None);
    assert!(o.status.success());
    assert!(stderr(&o).contains(note), "{}", stderr(&o));
    ok(r, &["put", "x", r#"{"_id":"b"}"#]);
    let o = kiln(r, &["get", "x", "a"], None);
    assert!(stderr(&o).is_empty(), "{}", stderr(&o));
    assert_eq!(json(r, &["db", "info", "x"])["torn_append"], false);
    assert!(!ok(r, &["verify", "x"]).contains(note));
}

/// Commands on a folder that holds no store say so (exit 4) and create nothing (they made a
/// store of 256 folders and 160 files in any folder a typo named); `db create` makes one.
#[test]
fn commands_on_a_folder_without_a_store_create_nothing() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path().join("typo");
    let empty = d.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let ev = "bafyreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy";
    for root in [&r, &empty] {
        for args in [
            &["db", "list"][..],
            &["db", "info", "x"],
            &["db", "files", "x"],
            &["get", "x", "a"],
            &["docs", "x"],
            &["export", "x"],
            &["changes", "x"],
            &["log", "x"],
            &["verify", "x"],
            &["diff", "x", "y"],
            &["proposals"],
            &["config"],
            &["gc"],
            &["put", "x", "{}"],
            &["del", "x", "a"],
            &["import", "x", "-"],
            &["compact", "x"],
            &["fork", "x", "y"],
            &["merge", "x", "--into", "y"],
            &["changes", "x", "--since", ev],
        ] {
            let o = kiln(root, args, Some(""));
            assert_eq!(code(&o), 4, "{args:?}: {}", stderr(&o));
            assert!(
                stderr(&o).starts_with(&format!("kiln: no kiln store at {}", root.display())),
                "{args:?}: {}",
                stderr(&o)
            );
        }
    }
    assert!(!r.exists());
    assert_eq!(std::fs::read_dir(&empty).unwrap().count(), 0);
    assert_eq!(json(&r, &["db", "create", "x"])["name"], "x");
    assert_eq!(json(&r, &["db", "list"]), serde_json::json!(["x"]));
    ok(&empty, &["config", "--compact-threshold", "50"]);
    assert_eq!(json(&empty, &["db", "list"]), serde_json::json!([]));
}

/// Ids with control characters (ANSI escapes, newlines) are shown escaped in text output, so
/// they cannot fake lines of `log`, `diff` or `changes`; `--json` keeps them exact.
#[test]
fn control_characters_in_ids_are_escaped_in_text_output() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    ok(r, &["db", "create", "x"]);
    ok(r, &["put", "x", r#"{"_id":"a"}"#]);
    ok(r, &["fork", "x", "y"]);
    let evil = "e\u{1b}[2J\nbafyfake  height 99  (deleted)\u{202e}";
    let doc = serde_json::json!({"_id": evil}).to_string();
    let put = ok(r, &["put", "y", &doc]);
    let log = ok(r, &["log", "y"]);
    let changes = ok(r, &["changes", "y"]);
    let diff = ok(r, &["diff", "x", "y"]);
    let del = ok(r, &["del", "y", evil]);
    let escaped = r#""e\u{1b}[2J\nbafyfake  height 99  (deleted)\u{202e}""#;
    for (text, lines) in [(&put, 1), (&log, 2), (&changes, 2), (&diff, 2), (&del, 1)] {
        assert_eq!(text.lines().count(), lines, "{text}");
        assert!(text.contains(escaped), "{text}");
        assert!(
            !text.contains('\u{1b}') && !text.contains('\u{202e}'),
            "{text}"
        );
    }
    assert!(ok(r, &["log", "y"]).contains(&format!("-{escaped}")));
    assert_eq!(json(r, &["log", "y"])[1]["ops"][0]["id"], evil);
    assert_eq!(json(r, &["changes", "y"])[1]["id"], evil);
    // Plain ids, accents included, are shown as they are.
    ok(r, &["put", "y", r#"{"_id":"café e\u0301"}"#]);
    assert!(ok(r, &["log", "y", "--limit", "1"]).ends_with("café e\u{301}\n"));
}

/// A head record whose lineage id names no key (a flipped byte) says "no key for database",
/// where it looked and how a key is brought over.
#[test]
fn a_lineage_without_a_key_says_no_key() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    ok(r, &["db", "create", "x"]);
    ok(r, &["put", "x", r#"{"_id":"a"}"#]);
    let hp = r.join("dbs/x/HEAD");
    let mut h = std::fs::read(&hp).unwrap();
    h[20] ^= 0x40;
    std::fs::write(&hp, &h).unwrap();
    let o = kiln(r, &["get", "x", "a"], None);
    let e = stderr(&o);
    assert_eq!(code(&o), 1, "{e}");
    assert!(e.starts_with("kiln: no key for database 'x'"), "{e}");
    assert!(e.contains(".key") && e.contains("`kiln key import`"), "{e}");
}

/// `get --rev`, then `put --if-rev` / `--if-absent` and `del --if-rev`: a write that finds
/// the document moved exits 6 and writes nothing.
#[test]
fn expected_version_writes_from_the_command_line() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    ok(r, &["db", "create", "n"]);
    ok(r, &["put", "n", r#"{"_id":"a","v":1}"#, "--if-absent"]);
    let o = kiln(
        r,
        &["put", "n", r#"{"_id":"a","v":9}"#, "--if-absent"],
        None,
    );
    assert_eq!(code(&o), 6, "{}", stderr(&o));
    assert!(stderr(&o).contains("changed"), "{}", stderr(&o));
    let rev = ok(r, &["get", "n", "a", "--rev"]).trim().to_owned();
    assert_eq!(json(r, &["get", "n", "a", "--rev"])["rev"], rev.as_str());
    ok(r, &["put", "n", r#"{"_id":"a","v":2}"#]);
    let o = kiln(
        r,
        &["put", "n", r#"{"_id":"a","v":3}"#, "--if-rev", &rev],
        None,
    );
    assert_eq!(code(&o), 6);
    assert_eq!(json(r, &["get", "n", "a"])["v"], 2);
    let rev = ok(r, &["get", "n", "a", "--rev"]).trim().to_owned();
    ok(r, &["put", "n", r#"{"_id":"a","v":3}"#, "--if-rev", &rev]);
    assert_eq!(
        code(&kiln(r, &["del", "n", "a", "--if-rev", &rev], None)),
        6
    );
    let rev = ok(r, &["get", "n", "a", "--rev"]).trim().to_owned();
    ok(r, &["del", "n", "a", "--if-rev", &rev]);
    assert_eq!(code(&kiln(r, &["get", "n", "a", "--rev"], None)), 3);
    let o = kiln(
        r,
        &["put", "n", r#"{"_id":"a"}"#, "--if-rev", "nonsense"],
        None,
    );
    assert_eq!(code(&o), 2, "{}", stderr(&o));
}

/// `db meta` sets, unsets and shows a database's metadata; `db list --meta` lists it.
#[test]
fn database_metadata_from_the_command_line() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    ok(r, &["db", "create", "room"]);
    ok(r, &["db", "create", "other"]);
    let m = json(
        r,
        &[
            "db",
            "meta",
            "room",
            "--set",
            "title=Lunch plans",
            "--set",
            "n=3",
            "--set",
            "tags=[\"a\"]",
        ],
    );
    assert_eq!(
        m,
        serde_json::json!({"title": "Lunch plans", "n": 3, "tags": ["a"]})
    );
    let m = json(r, &["db", "meta", "room", "--unset", "n"]);
    assert_eq!(
        m,
        serde_json::json!({"title": "Lunch plans", "tags": ["a"]})
    );
    assert_eq!(json(r, &["db", "meta", "room"])["title"], "Lunch plans");
    let list = json(r, &["db", "list", "--meta"]);
    assert_eq!(
        list,
        serde_json::json!([
            {"name": "other", "meta": {}},
            {"name": "room", "meta": {"title": "Lunch plans", "tags": ["a"]}}
        ])
    );
    assert_eq!(
        json(r, &["db", "list"]),
        serde_json::json!(["other", "room"])
    );
    let o = kiln(r, &["db", "meta", "room", "--set", "novalue"], None);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert_eq!(code(&kiln(r, &["db", "meta", "nope"], None)), 4);
}

/// `--read-only`: reads work, writes fail (exit 1, saying so), nothing is created.
#[test]
fn read_only_from_the_command_line() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    ok(r, &["db", "create", "n"]);
    ok(r, &["put", "n", r#"{"_id":"a","v":1}"#]);
    assert_eq!(json(r, &["--read-only", "get", "n", "a"])["v"], 1);
    let o = kiln(r, &["--read-only", "put", "n", r#"{"_id":"b"}"#], None);
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("read-only"), "{}", stderr(&o));
    let fresh = r.join("fresh");
    let o = kiln(&fresh, &["--read-only", "db", "create", "x"], None);
    assert_eq!(code(&o), 4, "{}", stderr(&o));
    assert!(!fresh.exists());
}

/// `get --history`: a document's versions, newest first, one JSON object per line.
#[test]
fn a_documents_history_from_the_command_line() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    ok(r, &["db", "create", "n"]);
    ok(r, &["put", "n", r#"{"_id":"a","v":1}"#]);
    ok(r, &["put", "n", r#"{"_id":"a","v":2}"#]);
    ok(r, &["del", "n", "a"]);
    let lines = ok(r, &["get", "n", "a", "--history"]);
    let h: Vec<Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(h.len(), 3);
    assert_eq!(
        (h[0]["doc"].clone(), h[0]["rev"].clone()),
        (Value::Null, Value::Null)
    );
    assert_eq!(h[1]["doc"]["v"], 2);
    assert_eq!(h[2]["doc"]["v"], 1);
    assert_eq!(
        json(r, &["get", "n", "a", "--history", "--limit", "1"])
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(code(&kiln(r, &["get", "n", "zz", "--history"], None)), 3);
}

/// Attached files from the command line (issue 16): `put --file`, `attach`, `files`, `file`
/// (whole, to a path, a range, as of an event), `detach`, `get` showing `_files` and never
/// bytes; bad input exits 2 writing nothing.
#[test]
fn files_attach_list_read_and_detach() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let root = root.as_path();
    ok(root, &["db", "create", "m"]);
    let photo: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 253) as u8).collect();
    let p = dir.path().join("photo.jpg");
    std::fs::write(&p, &photo).unwrap();
    let n = dir.path().join("notes.txt");
    std::fs::write(&n, "glazed").unwrap();
    let spec = |name: &str, path: &Path| format!("{name}={}", path.display());
    let out = ok(
        root,
        &[
            "--json",
            "put",
            "m",
            r#"{"_id": "vase", "title": "Blue"}"#,
            "--file",
            &spec("photo.jpg", &p),
            "--file",
            &spec("notes.txt", &n),
        ],
    );
    let first: Value = serde_json::from_str(out.trim()).unwrap();
    let first = first["event"].as_str().unwrap().to_owned();
    let doc: Value = serde_json::from_str(&ok(root, &["--json", "get", "m", "vase"])).unwrap();
    assert_eq!(doc["_files"]["photo.jpg"]["size"], 200_000);
    assert_eq!(doc["_files"]["photo.jpg"]["type"], "image/jpeg");
    assert_eq!(doc["_files"]["notes.txt"]["type"], "text/plain");
    let listed: Value = serde_json::from_str(&ok(root, &["--json", "files", "m", "vase"])).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 2);
    // Whole, to stdout and to a path; a range.
    let o = kiln(root, &["file", "m", "vase", "photo.jpg"], None);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(o.stdout, photo);
    let out_path = dir.path().join("out.bin");
    ok(
        root,
        &[
            "file",
            "m",
            "vase",
            "photo.jpg",
            "-o",
            out_path.to_str().unwrap(),
        ],
    );
    assert_eq!(std::fs::read(&out_path).unwrap(), photo);
    let o = kiln(
        root,
        &["file", "m", "vase", "photo.jpg", "--range", "65530-65545"],
        None,
    );
    assert_eq!(o.stdout, photo[65_530..=65_545]);
    let o = kiln(
        root,
        &["file", "m", "vase", "photo.jpg", "--range", "199990-"],
        None,
    );
    assert_eq!(o.stdout, photo[199_990..]);
    // Replace one; the other stays; the old one as of the first event.
    let p2 = dir.path().join("photo2.png");
    std::fs::write(&p2, b"new photo").unwrap();
    ok(
        root,
        &[
            "attach",
            "m",
            "vase",
            &spec("photo.jpg", &p2),
            "--type",
            "image/png",
        ],
    );
    let o = kiln(root, &["file", "m", "vase", "photo.jpg"], None);
    assert_eq!(o.stdout, b"new photo");
    let o = kiln(root, &["file", "m", "vase", "notes.txt"], None);
    assert_eq!(o.stdout, b"glazed");
    let o = kiln(
        root,
        &["file", "m", "vase", "photo.jpg", "--at", &first],
        None,
    );
    assert_eq!(o.stdout, photo);
    let listed = ok(root, &["files", "m", "vase"]);
    assert!(listed.contains("photo.jpg\t9\timage/png\t"), "{listed}");
    // Detach.
    ok(root, &["detach", "m", "vase", "notes.txt"]);
    let o = kiln(root, &["file", "m", "vase", "notes.txt"], None);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    // Bad input: exit 2, nothing written.
    let before = ok(root, &["--json", "log", "m"]);
    for args in [
        vec!["attach", "m", "vase", "x=/no/such/path"],
        vec!["attach", "m", "vase", "no-equals-sign"],
        vec!["attach", "m", "missing", &spec("x", &n)],
        vec!["attach", "m", "vase", &spec("a/b", &n)],
        vec!["attach", "m", "vase", &spec("tab\there", &n)],
    ] {
        let o = kiln(root, &args, None);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(!stderr(&o).is_empty());
    }
    let o = kiln(
        root,
        &["put", "m", r#"{"_id":"z"}"#, "--file", "x=/no/such"],
        None,
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let o = kiln(
        root,
        &["file", "m", "vase", "photo.jpg", "--range", "9-2"],
        None,
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert_eq!(ok(root, &["--json", "log", "m"]), before);
    assert_eq!(kiln(root, &["get", "m", "z"], None).status.code(), Some(3));
    ok(root, &["verify", "m"]);
}

/// A database's key carried by hand (issue 17): exported wrapped under a passphrase (or raw),
/// imported into a copy of the store on another machine (another keys folder), which has no key
/// since the store's folder holds none; a wrong passphrase or another database's key is
/// refused, nothing stored.
#[test]
fn keys_export_and_import() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    ok(&a, &["db", "create", "notes"]);
    ok(&a, &["put", "notes", r#"{"_id":"n","v":"secret"}"#]);
    let b = dir.path().join("b");
    let b_keys = dir.path().join("b-keys");
    let run = |root: &Path, args: &[&str], pass: Option<&str>| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_kiln"));
        c.arg("--root").arg(root).args(args).env_remove("KILN_ROOT");
        if root == b {
            c.arg("--keys-dir").arg(&b_keys);
        }
        match pass {
            Some(p) => c.env("KILN_PASSPHRASE", p),
            None => c.env_remove("KILN_PASSPHRASE"),
        };
        c.stdin(Stdio::null()).output().unwrap()
    };
    let o = run(&a, &["key", "export", "notes"], Some("hunter2 hunter2"));
    assert!(o.status.success(), "{}", stderr(&o));
    let wrapped = String::from_utf8(o.stdout).unwrap().trim().to_owned();
    assert!(wrapped.starts_with("kiln-key-1."), "{wrapped}");
    let o = run(&a, &["key", "export", "notes", "--raw"], None);
    let raw = String::from_utf8(o.stdout).unwrap().trim().to_owned();
    assert!(raw.starts_with("kiln-key-1-raw."), "{raw}");
    // A copy of the store's folder on another machine: no key came with it.
    assert!(Command::new("cp")
        .arg("-a")
        .arg(&a)
        .arg(&b)
        .status()
        .unwrap()
        .success());
    let o = run(&b, &["get", "notes", "n"], None);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("no key for database 'notes'"),
        "{}",
        stderr(&o)
    );
    let o = run(&b, &["key", "import", "notes", &wrapped], Some("wrong"));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(!run(&b, &["get", "notes", "n"], None).status.success());
    let o = run(
        &b,
        &["key", "import", "notes", &wrapped],
        Some("hunter2 hunter2"),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(&b, &["get", "notes", "n"], None);
    assert!(String::from_utf8_lossy(&o.stdout).contains("secret"));
    // Again: already there; the raw form too.
    let o = run(&b, &["--json", "key", "import", "notes", &raw], None);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["stored"], false);
    // Another database's key: refused.
    assert!(run(&b, &["db", "create", "other"], None).status.success());
    let o = run(&b, &["key", "import", "other", &raw], None);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

/// Where keys go without --keys: $KILN_KEYS, else $XDG_CONFIG_HOME/kiln/keys, else
/// ~/.config/kiln/keys, one folder per store, never inside the store; `--keys-in-store` keeps a
/// new store's keys in its folder.
#[test]
fn keys_go_to_the_config_folder_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let xdg = dir.path().join("xdg");
    let run = |root: &Path, extra: &[&str], xdg_set: bool| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_kiln"));
        c.arg("--root")
            .arg(root)
            .args(extra)
            .args(["db", "create", "notes"])
            .env_remove("KILN_ROOT")
            .env_remove("KILN_KEYS")
            .env("HOME", &home);
        if xdg_set {
            c.env("XDG_CONFIG_HOME", &xdg);
        } else {
            c.env_remove("XDG_CONFIG_HOME");
        }
        let o = c.stdin(Stdio::null()).output().unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
    };
    let id = |root: &Path| {
        let m: Value = serde_json::from_slice(&std::fs::read(root.join("KILN")).unwrap()).unwrap();
        m["id"].as_str().unwrap().to_owned()
    };
    let key_files = |d: &Path| {
        std::fs::read_dir(d)
            .map(|r| {
                r.filter(|e| {
                    e.as_ref()
                        .unwrap()
                        .path()
                        .extension()
                        .is_some_and(|x| x == "key")
                })
                .count()
            })
            .unwrap_or(0)
    };
    let (s1, s2, s3) = (
        dir.path().join("s1"),
        dir.path().join("s2"),
        dir.path().join("s3"),
    );
    run(&s1, &[], false);
    assert_eq!(key_files(&home.join(".config/kiln/keys").join(id(&s1))), 1);
    run(&s2, &[], true);
    assert_eq!(key_files(&xdg.join("kiln/keys").join(id(&s2))), 1);
    run(&s3, &["--keys-in-store"], false);
    assert_eq!(key_files(&s3.join("keys")), 1);
    for s in [&s1, &s2] {
        assert_eq!(key_files(&s.join("keys")), 0);
    }
}
