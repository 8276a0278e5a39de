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
