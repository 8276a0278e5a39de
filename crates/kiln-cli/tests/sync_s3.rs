//! `kiln sync` through an S3-compatible bucket (s3s-fs on loopback, as crates/kiln-sync/
//! tests/s3.rs starts it), killed (SIGKILL) at random points and run again: the replicas
//! converge, nothing acknowledged is lost, every store verifies, and every file the replicas'
//! records on the remote name is there.
//!
//! The S3 endpoint and credentials reach `kiln` through the usual environment variables
//! (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`; plain HTTP
//! is allowed for an `http://` endpoint: `S3Config::from_env`). A bucket remote keeps a head
//! record per replica and relies on no compare-and-swap, so `kiln remote add` does not probe
//! it (s3s-fs's conditional writes do not hold against racing writers: tests/s3.rs).

mod common;

use kiln_sync::{HeadRead, Kind, Remote, S3Remote};
use serde_json::Value;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const BUCKET: &str = "kiln";

use kiln_sync::testing::S3sFs as Server;

/// `kiln --root ROOT`, pointed at the server (and at nothing else the environment may name).
fn kiln(root: &Path, s: &Server) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kiln"));
    c.arg("--root")
        .arg(root)
        .env_remove("KILN_ROOT")
        .env_remove("AWS_ENDPOINT_URL_S3")
        .env_remove("AWS_DEFAULT_REGION")
        .env_remove("AWS_SESSION_TOKEN")
        .env("AWS_ENDPOINT_URL", &s.endpoint)
        .env("AWS_ACCESS_KEY_ID", &s.key)
        .env("AWS_SECRET_ACCESS_KEY", &s.secret)
        .env("AWS_REGION", "us-east-1");
    c
}

fn ok(root: &Path, s: &Server, args: &[&str]) -> String {
    let o: Output = kiln(root, s)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "kiln {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

fn import(root: &Path, s: &Server, db: &str, lines: &str) {
    let mut c = kiln(root, s)
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

fn env_u64(k: &str, d: u64) -> u64 {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

/// Syncs through S3 killed at random points (SIGKILL, mid-upload, mid-download, mid-merge)
/// and run again (`ROUNDS`, default 8; `KILL_MS`, the longest wait before a kill, default
/// 400; `SEED`).
#[test]
fn s3_syncs_killed_at_random_points_complete_when_run_again() {
    let s = Server::start();
    let d = tempfile::tempdir().unwrap();
    let (a, b) = (d.path().join("a"), d.path().join("b"));
    ok(&a, &s, &["db", "create", "notes"]);
    ok(&a, &s, &["put", "notes", r#"{"_id":"start"}"#]);
    cp(&a, &b);
    let url = format!("s3://{BUCKET}/team");
    for root in [&a, &b] {
        ok(root, &s, &["remote", "add", "notes", "origin", &url]);
    }
    let rounds = env_u64("ROUNDS", 8);
    let kill_ms = env_u64("KILL_MS", 400).max(1);
    let mut killer = common::RandomKiller::new(
        Duration::from_millis(kill_ms),
        env_u64("SEED", 0x9E37_79B9_7F4A_7C15),
    );
    let pad = "p".repeat(300);
    for round in 0..rounds {
        for (side, root) in [("a", &a), ("b", &b)] {
            let lines: String = (0..400)
                .map(|i| format!("{{\"_id\":\"{side}{round}-{i:03}\",\"pad\":\"{pad}\"}}\n"))
                .collect();
            import(root, &s, "notes", &lines);
            if round % 4 == 3 {
                ok(root, &s, &["compact", "notes"]);
            }
            // A sync, killed after a random delay (or finishing first).
            let child = kiln(root, &s)
                .args(["sync", "notes"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            killer.run(child);
        }
    }
    let (kills, syncs) = (killer.kills, killer.runs);
    eprintln!("{kills} of {syncs} syncs killed");
    assert!(
        kills * 5 >= syncs,
        "only {kills} of {syncs} syncs were killed"
    );
    for _ in 0..2 {
        for root in [&a, &b] {
            ok(root, &s, &["sync", "notes"]);
        }
    }
    let (da, db) = (
        ok(&a, &s, &["docs", "notes"]),
        ok(&b, &s, &["docs", "notes"]),
    );
    assert_eq!(da, db);
    assert_eq!(da.lines().count() as u64, 1 + 2 * rounds * 400);
    for root in [&a, &b] {
        ok(root, &s, &["verify", "notes"]);
        ok(root, &s, &["gc"]);
        ok(root, &s, &["verify", "notes"]);
    }
    // Quiet now: one request.
    let r: Value = serde_json::from_str(&ok(&a, &s, &["--json", "sync", "notes"])).unwrap();
    assert_eq!(r[0]["requests"], 1, "{r}");
    // Every file a record on the remote names is there.
    let remote = S3Remote::open(&url, s.config()).unwrap();
    let records = remote.list_replica_heads("notes").unwrap();
    assert_eq!(records.len(), 2, "{records:?}");
    for (name, _) in records {
        let HeadRead::Found { bytes, .. } = remote.read_head(&name, None).unwrap() else {
            panic!("{name}: no record");
        };
        let (files, sets) = kiln::record_names(&bytes).unwrap();
        for f in files {
            assert!(
                remote.has_file(Kind::Diff, &f).unwrap(),
                "{name}: {f} is not there"
            );
        }
        for f in sets {
            assert!(
                remote.has_file(Kind::FileSet, &f).unwrap(),
                "{name}: set {f}"
            );
        }
    }
}
