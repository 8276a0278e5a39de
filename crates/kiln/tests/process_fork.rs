//! A program that opens a store and then forks (a pre-forking server, a daemon detaching):
//! the child inherits the store's helper thread's state but not the thread, and must not wait
//! on it (its first fully durable commit or large bulk hung).

use kiln::{Durability, Options, Store};
use serde_json::json;
use std::time::{Duration, Instant};

/// Runs `f` in a forked child; true if it exits cleanly within 10 s.
fn child_runs(f: impl FnOnce()) -> bool {
    // SAFETY: the child runs `f` and leaves with `_exit`, touching nothing else of the parent.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_ok();
        // SAFETY: ends the child without running the parent's exit handlers.
        unsafe { libc::_exit(if ok { 0 } else { 1 }) };
    }
    let t = Instant::now();
    loop {
        let mut status = 0;
        // SAFETY: waits for our own child.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            return libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
        }
        if t.elapsed() > Duration::from_secs(10) {
            // SAFETY: kills and reaps our own child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_forked_child_commits_durably_and_bulks() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(dir.path(), Options::default()).unwrap(); // Durability::Full
    let db = store.create(Some("t")).unwrap();
    db.put(&json!({"_id": "a", "n": 1})).unwrap();
    assert!(
        child_runs(|| {
            db.put(&json!({"_id": "b", "n": 2})).unwrap();
        }),
        "the child's durable put hung or failed"
    );
    let docs: Vec<_> = (0..1000)
        .map(|i| json!({"_id": format!("d{i}"), "i": i}))
        .collect();
    let buffered = Store::open_with(
        dir.path(),
        Options {
            durability: Durability::Buffered,
            ..Options::default()
        },
    )
    .unwrap();
    let db = buffered.open_db("t").unwrap();
    assert!(
        child_runs(|| {
            db.bulk(&docs).unwrap();
        }),
        "the child's bulk hung or failed"
    );
    assert_eq!(db.get("b").unwrap().unwrap()["n"], 2);
    assert_eq!(db.get("d999").unwrap().unwrap()["i"], 999);
}

/// The diff files under `root`, by name.
fn diff_files(root: &std::path::Path) -> std::collections::BTreeSet<std::path::PathBuf> {
    let mut out = std::collections::BTreeSet::new();
    for shard in std::fs::read_dir(root.join("files")).unwrap() {
        let shard = shard.unwrap().path();
        if shard
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with('.')
        {
            continue;
        }
        for f in std::fs::read_dir(&shard).unwrap() {
            out.insert(f.unwrap().path());
        }
    }
    out
}

/// What a diff file's first segment is sealed under: the file's salt (none before diff
/// files version 4: the lineage key itself) and the segment's nonce.
fn key_and_first_nonce(path: &std::path::Path) -> (Vec<u8>, Vec<u8>) {
    let b = std::fs::read(path).unwrap();
    let t = &b[b.len() - 16..];
    let at = u64::from_le_bytes(t[..8].try_into().unwrap()) as usize;
    let salt = if &t[12..] == b"KSLT" {
        b[at..at + 32].to_vec()
    } else {
        Vec::new()
    };
    (salt, b[16..28].to_vec())
}

/// A process that forks copies its memory, and with it whatever nonce state its keys hold:
/// parent and child each commit after the fork, and must not seal under the same key and
/// nonce. (They did: both went on from one random base and counter under the lineage key,
/// so their files' first segments had equal nonces.) Each file now has a key of its own.
#[test]
fn a_forked_child_and_its_parent_never_share_a_key_and_nonce() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(
        dir.path(),
        Options {
            durability: Durability::Buffered,
            ..Options::default()
        },
    )
    .unwrap();
    let db = store.create(Some("t")).unwrap();
    db.put(&json!({"_id": "a", "n": 1})).unwrap();
    let before = diff_files(dir.path());
    assert!(
        child_runs(|| {
            db.put(&json!({"_id": "b", "n": 2})).unwrap();
        }),
        "the child's put failed"
    );
    let mid = diff_files(dir.path());
    let child: Vec<_> = mid.difference(&before).cloned().collect();
    db.put(&json!({"_id": "c", "n": 3})).unwrap();
    let parent: Vec<_> = diff_files(dir.path()).difference(&mid).cloned().collect();
    assert_eq!((child.len(), parent.len()), (1, 1));
    let (c, p) = (
        key_and_first_nonce(&child[0]),
        key_and_first_nonce(&parent[0]),
    );
    assert_ne!(c, p, "parent and child sealed under the same key and nonce");
    assert_eq!(db.get("b").unwrap().unwrap()["n"], 2);
    assert!(db.verify().unwrap().ok());
}
