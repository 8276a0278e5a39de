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

use kiln_sync::{HeadRead, Kind, Remote, S3Config, S3Remote};
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

const BUCKET: &str = "kiln";

/// s3s-fs: `KILN_S3S_FS`, else where `scripts/s3-server.sh --install` puts it.
fn s3s_fs() -> PathBuf {
    if let Some(p) = std::env::var_os("KILN_S3S_FS").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/tools/bin/s3s-fs")
}

/// A server of this test's own (stopped when dropped).
struct Server {
    child: Child,
    endpoint: String,
    key: String,
    secret: String,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start() -> Server {
        let bin = s3s_fs();
        assert!(
            bin.is_file(),
            "the S3 test server s3s-fs is not installed (looked for {}): run \
             scripts/s3-server.sh --install (or set KILN_S3S_FS to an s3s-fs 0.14.1 binary)",
            bin.display()
        );
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(data.join(BUCKET)).unwrap();
        let mut r = [0u8; 16];
        std::fs::File::open("/dev/urandom")
            .unwrap()
            .read_exact(&mut r)
            .unwrap();
        let secret: String = r.iter().map(|b| format!("{b:02x}")).collect();
        let key = format!("kiln-{}", &secret[..8]);
        let mut child = Command::new(&bin)
            .args(["--host", "127.0.0.1", "--port", "0"])
            .args(["--access-key", &key, "--secret-key", &secret])
            .arg(&data)
            .env("RUST_LOG", "s3s_fs=info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let out = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if let Some(i) = line.find("http://127.0.0.1:") {
                    let port: String = line[i + 17..]
                        .chars()
                        .take_while(|c| c.is_ascii_digit())
                        .collect();
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(format!("http://127.0.0.1:{port}"));
                    }
                }
            }
        });
        let endpoint = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(e) => e,
            Err(_) => {
                let _ = child.kill();
                panic!("s3s-fs did not say where it listens within 30 s");
            }
        };
        Server {
            child,
            endpoint,
            key,
            secret,
            _dir: dir,
        }
    }

    fn config(&self) -> S3Config {
        S3Config {
            endpoint: Some(self.endpoint.clone()),
            region: Some("us-east-1".into()),
            access_key: Some(self.key.clone()),
            secret_key: Some(self.secret.clone()),
            allow_http: true,
            ..S3Config::default()
        }
    }
}

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
    let mut seed = env_u64("SEED", 0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let pad = "p".repeat(300);
    let (mut kills, mut syncs) = (0, 0);
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
            let mut child = kiln(root, &s)
                .args(["sync", "notes"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            syncs += 1;
            std::thread::sleep(Duration::from_micros(next() % (kill_ms * 1000)));
            if child.try_wait().unwrap().is_none() {
                child.kill().unwrap();
                kills += 1;
            }
            child.wait().unwrap();
        }
    }
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
