//! `kiln remote` and `kiln sync` as a user runs them, and syncs killed (SIGKILL) at random
//! points and run again.

mod common;

use serde_json::Value;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn kiln(root: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kiln"));
    c.arg("--root").arg(root).env_remove("KILN_ROOT");
    c
}

fn run(root: &Path, args: &[&str]) -> Output {
    kiln(root).args(args).stdin(Stdio::null()).output().unwrap()
}

fn ok(root: &Path, args: &[&str]) -> String {
    let o = run(root, args);
    assert!(
        o.status.success(),
        "kiln {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

fn import(root: &Path, db: &str, lines: &str) {
    let mut c = kiln(root)
        .args(["import", db, "-", "--batch", "100"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(lines.as_bytes()).unwrap();
    assert!(c.wait().unwrap().success());
}

fn cp(from: &Path, to: &Path) {
    assert!(Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap()
        .success());
}

#[test]
fn remotes_are_remembered_and_sync_reports_what_moved() {
    let d = tempfile::tempdir().unwrap();
    let (a, b) = (d.path().join("a"), d.path().join("b"));
    ok(&a, &["db", "create", "notes"]);
    ok(&a, &["put", "notes", r#"{"_id":"x","v":1}"#]);
    cp(&a, &b);
    let remote = d.path().join("remote");
    let url = remote.to_str().unwrap();
    // Without a remote: told how to add one (bad usage).
    let o = run(&a, &["sync", "notes"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("kiln remote add"));
    for r in [&a, &b] {
        ok(r, &["remote", "add", "notes", "origin", url]);
    }
    // The same again is fine; another URL under the name is not; bad names are refused.
    ok(&a, &["remote", "add", "notes", "origin", url]);
    assert!(
        !run(&a, &["remote", "add", "notes", "origin", "/elsewhere"])
            .status
            .success()
    );
    assert_eq!(
        run(&a, &["remote", "add", "notes", "-x", url])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(
        run(&a, &["remote", "add", "nope", "origin", url])
            .status
            .code(),
        Some(4)
    );
    let l: Value = serde_json::from_str(&ok(&a, &["--json", "remote", "list"])).unwrap();
    assert_eq!(l[0]["remote"], "origin");
    assert_eq!(l[0]["url"], url);
    // A folder that is not empty and not a remote is refused.
    std::fs::create_dir_all(d.path().join("stuff")).unwrap();
    std::fs::write(d.path().join("stuff/notes.txt"), "mine").unwrap();
    let o = run(
        &a,
        &[
            "remote",
            "add",
            "notes",
            "other",
            d.path().join("stuff").to_str().unwrap(),
        ],
    );
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("not a kiln remote"));

    let s: Value = serde_json::from_str(&ok(&a, &["--json", "sync", "notes"])).unwrap();
    assert_eq!(s[0]["pushed"]["head"], true);
    ok(&a, &["put", "notes", r#"{"_id":"x","v":2}"#]);
    ok(&b, &["put", "notes", r#"{"_id":"x","v":3}"#]);
    ok(&a, &["sync", "notes"]);
    let out = ok(&b, &["sync", "notes", "origin"]);
    assert!(out.contains("merged the remote's"), "{out}");
    assert!(out.contains("conflict x: ancestor"), "{out}");
    let out = ok(&a, &["sync", "--all", "origin"]);
    assert!(out.contains("took the remote's state"), "{out}");
    let s: Value = serde_json::from_str(&ok(&a, &["--json", "sync", "notes"])).unwrap();
    assert_eq!(s[0]["requests"], 1, "{s}");
    assert_eq!(
        ok(&a, &["get", "notes", "x"]),
        ok(&b, &["get", "notes", "x"])
    );
    ok(&a, &["remote", "remove", "notes", "origin"]);
    assert_eq!(
        run(&a, &["remote", "remove", "notes", "origin"])
            .status
            .code(),
        Some(4)
    );
    // A new machine: the key, the remote, a sync.
    let key = ok(&a, &["key", "export", "notes", "--raw"]);
    let c = d.path().join("c");
    ok(&c, &["key", "import", "notes", key.trim()]);
    ok(&c, &["remote", "add", "notes", "origin", url]);
    ok(&c, &["sync", "notes"]);
    assert_eq!(ok(&c, &["docs", "notes"]), ok(&b, &["docs", "notes"]));
    ok(&c, &["verify", "notes"]);
    // The remote's gc: b compacts and pushes; what no record names goes (grace 0 here).
    ok(&b, &["compact", "notes", "--full"]);
    ok(&b, &["sync", "notes"]);
    let g: Value = serde_json::from_str(&ok(
        &a,
        &["--json", "gc", "--remote", url, "--remote-grace", "0"],
    ))
    .unwrap();
    assert!(g["removed"].as_u64().unwrap() > 0, "{g}");
    ok(&c, &["sync", "notes"]);
    assert_eq!(ok(&c, &["docs", "notes"]), ok(&b, &["docs", "notes"]));
    ok(&c, &["verify", "notes"]);
}

/// Syncs killed at random points (SIGKILL, mid-upload, mid-download, mid-merge) and run again:
/// the replicas converge, nothing acknowledged is lost, every store verifies.
#[test]
fn syncs_killed_at_random_points_complete_when_run_again() {
    let d = tempfile::tempdir().unwrap();
    let (a, b) = (d.path().join("a"), d.path().join("b"));
    ok(&a, &["db", "create", "notes"]);
    ok(&a, &["put", "notes", r#"{"_id":"start"}"#]);
    cp(&a, &b);
    let url = d.path().join("remote");
    let url = url.to_str().unwrap();
    for r in [&a, &b] {
        ok(r, &["remote", "add", "notes", "origin", url]);
    }
    let mut killer =
        common::RandomKiller::new(std::time::Duration::from_millis(80), 0x9E37_79B9_7F4A_7C15);
    let pad = "p".repeat(300);
    for round in 0..12 {
        for (side, root) in [("a", &a), ("b", &b)] {
            let lines: String = (0..400)
                .map(|i| format!("{{\"_id\":\"{side}{round}-{i:03}\",\"pad\":\"{pad}\"}}\n"))
                .collect();
            import(root, "notes", &lines);
            if round % 4 == 3 {
                ok(root, &["compact", "notes"]);
            }
            // A sync, killed after a random delay (or finishing first).
            let child = kiln(root)
                .args(["sync", "notes"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            killer.run(child);
        }
    }
    let kills = killer.kills;
    eprintln!("{kills} of 24 syncs killed");
    assert!(kills > 3, "only {kills} syncs were killed");
    for _ in 0..2 {
        for root in [&a, &b] {
            ok(root, &["sync", "notes"]);
        }
    }
    let (da, db) = (ok(&a, &["docs", "notes"]), ok(&b, &["docs", "notes"]));
    assert_eq!(da, db);
    assert_eq!(da.lines().count(), 1 + 2 * 12 * 400);
    for root in [&a, &b] {
        ok(root, &["verify", "notes"]);
        ok(root, &["gc"]);
        ok(root, &["verify", "notes"]);
    }
    // Quiet now.
    let s: Value = serde_json::from_str(&ok(&a, &["--json", "sync", "notes"])).unwrap();
    assert_eq!(s[0]["requests"], 1, "{s}");
}

/// `kiln sync --watch`: another replica's push arrives by polling; this replica's commits (by
/// other processes) go out without another command.
#[test]
fn watch_pulls_what_arrives_and_pushes_what_is_written() {
    let d = tempfile::tempdir().unwrap();
    let (a, b) = (d.path().join("a"), d.path().join("b"));
    ok(&a, &["db", "create", "notes"]);
    cp(&a, &b);
    let url = d.path().join("remote");
    let url = url.to_str().unwrap();
    for r in [&a, &b] {
        ok(r, &["remote", "add", "notes", "origin", url]);
    }
    ok(&a, &["sync", "notes"]);
    let mut w = kiln(&b)
        .args(["--json", "sync", "notes", "--watch", "--poll", "0.2"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let rx = common::json_lines(w.stdout.take().unwrap());
    let wait = |what: &str, f: &dyn Fn(&Value) -> bool| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while let Ok(v) = rx.recv_timeout(deadline - std::time::Instant::now()) {
            if f(&v) {
                return;
            }
        }
        panic!("no sync line for {what}");
    };
    ok(&a, &["put", "notes", r#"{"_id":"from-a"}"#]);
    ok(&a, &["sync", "notes"]);
    wait("a's push", &|v| v["adopted"] == true);
    assert!(ok(&b, &["get", "notes", "from-a"]).contains("from-a"));
    ok(&b, &["put", "notes", r#"{"_id":"from-b"}"#]);
    wait("b's commit", &|v| v["pushed"]["head"] == true);
    ok(&a, &["sync", "notes"]);
    assert!(ok(&a, &["get", "notes", "from-b"]).contains("from-b"));
    w.kill().unwrap();
    w.wait().unwrap();
}

/// On a terminal, `kiln sync` draws its progress on stderr (a bar redrawn in place, wiped when
/// done); piped, or with --json, it draws nothing. The terminal is `script`'s pseudo-terminal.
#[test]
fn sync_shows_progress_on_a_terminal() {
    let d = tempfile::tempdir().unwrap();
    let (a, remote) = (d.path().join("a"), d.path().join("remote"));
    ok(&a, &["db", "create", "notes"]);
    for k in 0..5 {
        let lines: String = (0..50)
            .map(|i| format!("{{\"_id\":\"d{k}-{i}\",\"n\":{i}}}\n"))
            .collect();
        import(&a, "notes", &lines);
    }
    let remote_s = remote.to_str().unwrap();
    // Piped: no bar.
    let o = run(&a, &["sync", "notes", remote_s, "--push"]);
    assert!(o.status.success());
    assert!(
        !String::from_utf8_lossy(&o.stderr).contains("pushing"),
        "{o:?}"
    );
    // On a terminal: the bar, then the report.
    let b = d.path().join("b");
    let cmd = format!(
        "{} --root {} sync notes {} --pull",
        env!("CARGO_BIN_EXE_kiln"),
        b.display(),
        remote_s
    );
    // (b has no database: it needs the key first.)
    let key = ok(&a, &["key", "export", "notes", "--raw"]);
    ok(&b, &["key", "import", "notes", key.trim()]);
    let o = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .env_remove("KILN_ROOT")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{text}");
    assert!(text.contains("notes: pulling files ["), "{text}");
    assert!(text.contains("\r\x1b[K"), "{text}");
    assert_eq!(
        ok(&b, &["get", "notes", "d4-49"]).trim(),
        ok(&a, &["get", "notes", "d4-49"]).trim()
    );
}

/// `kiln sync DB` with two remotes that diverged: what the second brings reaches the first in
/// the same command, so two replicas doing the same go quiet (no merges without end).
#[test]
fn a_database_with_two_remotes_goes_quiet() {
    let d = tempfile::tempdir().unwrap();
    let (a, b) = (d.path().join("a"), d.path().join("b"));
    ok(&a, &["db", "create", "notes"]);
    ok(&a, &["put", "notes", r#"{"_id":"start"}"#]);
    cp(&a, &b);
    let (r1, r2) = (d.path().join("r1"), d.path().join("r2"));
    for s in [&a, &b] {
        ok(s, &["remote", "add", "notes", "one", r1.to_str().unwrap()]);
        ok(s, &["remote", "add", "notes", "two", r2.to_str().unwrap()]);
    }
    ok(&a, &["put", "notes", r#"{"_id":"x"}"#]);
    ok(&a, &["sync", "notes", "one"]);
    ok(&b, &["put", "notes", r#"{"_id":"y"}"#]);
    ok(&b, &["sync", "notes", "two"]);
    for _ in 0..2 {
        ok(&a, &["sync", "notes"]);
        ok(&b, &["sync", "notes"]);
    }
    for s in [&a, &b] {
        // Quiet: each remote's sync moves nothing.
        let out = ok(s, &["--json", "sync", "notes"]);
        let v: Value = serde_json::from_str(&out).unwrap();
        let rows: Vec<&Value> = match &v {
            Value::Array(a) => a.iter().collect(),
            one => vec![one],
        };
        assert_eq!(rows.len(), 2, "{out}");
        for row in rows {
            assert!(row["merge"].is_null(), "{out}");
            assert_eq!(row["adopted"], false, "{out}");
            assert_eq!(row["pushed"]["head"], false, "{out}");
        }
        assert!(ok(s, &["get", "notes", "x"]).contains('x'));
        assert!(ok(s, &["get", "notes", "y"]).contains('y'));
    }
}
