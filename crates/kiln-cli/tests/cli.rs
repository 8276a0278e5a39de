//! The `kiln` binary end to end: output, JSON mode and exit codes.

use serde_json::Value;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn kiln(root: &Path, args: &[&str], stdin: Option<&str>) -> Output {
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
    if let Some(s) = stdin {
        i.write_all(s.as_bytes()).unwrap();
    }
    drop(i);
    c.wait_with_output().unwrap()
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
    assert!(ok(r, &["db", "info", "notes"]).contains("documents  250"));
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
