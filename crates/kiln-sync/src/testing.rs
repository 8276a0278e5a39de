//! Helpers for tests and benchmarks: [`check_batches`], the promises of a remote's batch
//! transfers, and an S3-compatible server on loopback: s3s-fs 0.14.1, which
//! `scripts/s3-server.sh --install` builds into `target/tools/bin/` (or `KILN_S3S_FS` names).
//! s3s-fs keeps a bucket as a folder of its data folder and an object as a file in it, so a
//! caller makes a bucket with `mkdir` and can look at (and under) the objects as files. Not
//! for production use: it panics when the server cannot start.

use crate::{FileName, Kind, Remote, S3Config, S3Remote, WINDOW};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The bucket [`S3sFs::start`] makes.
pub const BUCKET: &str = "kiln";

/// A running s3s-fs, stopped (and its data folder removed, if it made it) when dropped.
#[derive(Debug)]
pub struct S3sFs {
    child: Child,
    /// The server's data folder: bucket `b` is `data/b`.
    pub data: PathBuf,
    /// Its URL (`http://127.0.0.1:PORT`).
    pub endpoint: String,
    /// The access key id it accepts.
    pub key: String,
    /// The secret key it accepts.
    pub secret: String,
    owned: bool,
}

impl Drop for S3sFs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if self.owned {
            let _ = std::fs::remove_dir_all(&self.data);
        }
    }
}

/// s3s-fs: `KILN_S3S_FS`, else where `scripts/s3-server.sh --install` puts it.
pub fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("KILN_S3S_FS").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/tools/bin/s3s-fs")
}

fn random_hex() -> String {
    let mut r = [0u8; 16];
    if getrandom::getrandom(&mut r).is_err() {
        panic!("no random bytes from the system");
    }
    r.iter().map(|b| format!("{b:02x}")).collect()
}

impl S3sFs {
    /// A server of its own on a free port, with a fresh data folder holding bucket [`BUCKET`].
    pub fn start() -> S3sFs {
        let data = std::env::temp_dir().join(format!("kiln-s3s-{}", random_hex()));
        let mut s = S3sFs::start_in(&data, &[BUCKET]);
        s.owned = true;
        s
    }

    /// A server on a free port over data folder `data`, with `buckets` made.
    pub fn start_in(data: &Path, buckets: &[&str]) -> S3sFs {
        let bin = binary();
        assert!(
            bin.is_file(),
            "the S3 test server s3s-fs is not installed (looked for {}): run \
             scripts/s3-server.sh --install (or set KILN_S3S_FS to an s3s-fs 0.14.1 binary)",
            bin.display()
        );
        for b in buckets {
            if let Err(e) = std::fs::create_dir_all(data.join(b)) {
                panic!("cannot make bucket {b} in {}: {e}", data.display());
            }
        }
        let secret = random_hex();
        let key = format!("kiln-{}", &secret[..8]);
        // Port 0: the system picks a free one, and s3s-fs logs the address it bound.
        let mut child = Command::new(&bin)
            .args(["--host", "127.0.0.1", "--port", "0"])
            .args(["--access-key", &key, "--secret-key", &secret])
            .arg(data)
            .env("RUST_LOG", "s3s_fs=info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let Some(out) = child.stdout.take() else {
            panic!("s3s-fs has no output to read")
        };
        let (tx, rx) = std::sync::mpsc::channel();
        // Reads the log to its end (a full pipe would stall the server).
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
        S3sFs {
            child,
            data: data.to_path_buf(),
            endpoint,
            key,
            secret,
            owned: false,
        }
    }

    /// Where the server is and the credentials it accepts.
    pub fn config(&self) -> S3Config {
        S3Config {
            endpoint: Some(self.endpoint.clone()),
            region: Some("us-east-1".into()),
            access_key: Some(self.key.clone()),
            secret_key: Some(self.secret.clone()),
            allow_http: true,
            session_token: None,
        }
    }

    /// The remote at `s3://kiln/<prefix>`.
    pub fn open(&self, prefix: &str) -> S3Remote {
        self.open_at(&format!("{BUCKET}/{prefix}"))
    }

    /// The remote at `s3://<bucket_and_prefix>`.
    pub fn open_at(&self, bucket_and_prefix: &str) -> S3Remote {
        match S3Remote::open(&format!("s3://{bucket_and_prefix}"), self.config()) {
            Ok(r) => r,
            Err(e) => panic!("s3://{bucket_and_prefix}: {e}"),
        }
    }

    /// The folder that holds the objects under `kiln/<prefix>`.
    pub fn folder(&self, prefix: &str) -> PathBuf {
        self.data.join(BUCKET).join(prefix)
    }
}

/// Checks that `r` keeps the promises of [`Remote::put_files`], [`Remote::has_files`] and
/// [`Remote::get_files`] over more files than [`WINDOW`]: files there already and skipped ones
/// are not uploaded, every file comes back once with its bytes, absent ones as `None`, and an
/// error from either callback stops the transfer and is returned. Panics when one is broken.
#[allow(clippy::unwrap_used)] // a test helper: a broken promise panics
pub fn check_batches(r: &dyn Remote) {
    let n = WINDOW * 3 + 1;
    let bytes = |i: usize| format!("file {i}").repeat(i + 1).into_bytes();
    // Named as a store names them (a server checks).
    let names: Vec<FileName> = (0..n).map(|i| Kind::Diff.name_of(&bytes(i))).collect();
    // Every third one there already; every fifth one skipped by the loader.
    for i in (0..n).step_by(3) {
        r.put_file(Kind::Diff, &names[i], &bytes(i)).unwrap();
    }
    let put = r
        .put_files(Kind::Diff, &names, &mut |i| {
            Ok((i % 5 != 0 || i % 3 == 0).then(|| bytes(i)))
        })
        .unwrap();
    for (i, uploaded) in put.iter().enumerate() {
        assert_eq!(*uploaded, i % 3 != 0 && i % 5 != 0, "file {i}");
    }
    let there = r.has_files(Kind::Diff, &names).unwrap();
    for (i, there) in there.iter().enumerate() {
        assert_eq!(*there, i % 3 == 0 || i % 5 != 0, "file {i}");
    }
    assert!(!r
        .has_files(Kind::FileSet, &names)
        .unwrap()
        .iter()
        .any(|x| *x));
    let mut got = vec![None; n];
    r.get_files(Kind::Diff, &names, &mut |i, b| {
        assert!(got[i].is_none(), "file {i} came twice");
        got[i] = Some(b);
        Ok(())
    })
    .unwrap();
    for (i, b) in got.into_iter().enumerate() {
        let want = (i % 3 == 0 || i % 5 != 0).then(|| bytes(i));
        assert_eq!(b, Some(want), "file {i}");
    }
    // An error from a callback stops the transfer and comes back as it was.
    let mut calls = 0;
    let e = r
        .get_files(Kind::Diff, &names, &mut |_, _| {
            calls += 1;
            if calls == 2 {
                return Err(std::io::Error::new(std::io::ErrorKind::Interrupted, "stop"));
            }
            Ok(())
        })
        .unwrap_err();
    assert_eq!((e.kind(), calls), (std::io::ErrorKind::Interrupted, 2));
    let bytes = |i: usize| format!("fresh {i}").repeat(i + 1).into_bytes();
    let fresh: Vec<FileName> = (0..n).map(|i| Kind::Diff.name_of(&bytes(i))).collect();
    let mut loads = 0;
    let e = r
        .put_files(Kind::Diff, &fresh, &mut |i| {
            loads += 1;
            if loads == WINDOW + 2 {
                return Err(std::io::Error::new(std::io::ErrorKind::Interrupted, "stop"));
            }
            Ok(Some(bytes(i)))
        })
        .unwrap_err();
    assert_eq!(
        (e.kind(), loads),
        (std::io::ErrorKind::Interrupted, WINDOW + 2)
    );
    // A folder publishes nothing of a stopped batch; S3 may keep the uploads done: whole
    // files either way.
    r.get_files(Kind::Diff, &fresh, &mut |i, b| {
        if let Some(b) = b {
            assert_eq!(b, bytes(i), "file {i}");
        }
        Ok(())
    })
    .unwrap();
}
