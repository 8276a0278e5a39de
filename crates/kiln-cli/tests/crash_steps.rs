//! Kills `kiln db drop`, `db create`, `fork`, `purge` and `attach` at every step: before each call of
//! every system call that changes the file system (or takes a lock), one run per call, with
//! `strace --inject=SYSCALL:signal=KILL:when=N` (counted per system call and per thread), until
//! a run finishes unkilled. After each kill `kiln gc` runs, then:
//!
//! - no `dbs/.new-*` or `dbs/.drop-*` folder is left, and the keybag holds exactly the keys
//!   of the databases that exist;
//! - the command either happened or did not: a dropped database is gone or reads as before,
//!   a created or forked one exists whole or not at all, a purged document reads as purged
//!   or as before, a document files were attached to has all of them, readable, or none;
//! - what was dropped or purged is nowhere in the store: every file is searched raw and
//!   decrypted with every key the store ever had (`kiln::audit`);
//! - the other database still reads, verifies, and purges.
//!
//! Needs `strace` (`.ci/run` installs it).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The system calls a kill is placed before: everything that changes file contents, names or
/// locks. (`openat` is left out: these commands open hundreds of files and folders to read them,
/// gc lists 256 shard folders, and a file a creating open makes is empty until its next write,
/// before which a kill is placed.)
const SYSCALLS: &[&str] = &[
    "write",
    "pwrite64",
    "ftruncate",
    "fsync",
    "fdatasync",
    "sync_file_range",
    "rename",
    "renameat",
    "renameat2",
    "unlink",
    "unlinkat",
    "mkdir",
    "mkdirat",
    "rmdir",
    "flock",
];

/// The binary under test: this build's, or `KILN_TEST_BIN` (to show an older build failing).
fn bin() -> String {
    std::env::var("KILN_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_kiln").to_owned())
}

fn kiln_cmd(root: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(bin());
    c.arg("--root")
        .arg(root)
        .args(args)
        .env_remove("KILN_ROOT")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

fn kiln(root: &Path, args: &[&str]) -> Output {
    kiln_cmd(root, args).output().unwrap()
}

/// Runs `kiln ARGS` killed before call `n` of `syscall`; true if it was killed.
fn killed_run(root: &Path, args: &[&str], syscall: &str, n: u32) -> bool {
    let out = Command::new("strace")
        .args(["-f", "-qq", "-o", "/dev/null", "-e"])
        .arg(format!("inject={syscall}:signal=KILL:when={n}"))
        .arg(bin())
        .arg("--root")
        .arg(root)
        .args(args)
        .env_remove("KILN_ROOT")
        // (cargo's test library path makes the loader try many folders: kills before main)
        .env_remove("LD_LIBRARY_PATH")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("strace is needed for this test (apt-get install strace)");
    use std::os::unix::process::ExitStatusExt;
    let killed = out.status.signal() == Some(9) || out.status.code() == Some(128 + 9);
    if !killed {
        assert!(
            out.status.success(),
            "{args:?} unkilled failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    killed
}

/// Every key the keybag of `root` holds.
fn keys(root: &Path) -> Vec<kiln::Key> {
    kiln::audit::keys_of(root).unwrap()
}

/// The lineages of the keybag's keys, and of the databases that exist.
fn lineages(root: &Path) -> (Vec<String>, Vec<String>) {
    let mut keys: Vec<String> = std::fs::read_dir(kiln::audit::keys_dir(root).unwrap())
        .unwrap()
        .filter_map(|e| {
            let n = e.unwrap().file_name().into_string().unwrap();
            n.strip_suffix(".key").map(str::to_owned)
        })
        .collect();
    keys.sort();
    let mut dbs: Vec<String> = Vec::new();
    for e in std::fs::read_dir(root.join("dbs")).unwrap() {
        let e = e.unwrap();
        let n = e.file_name().into_string().unwrap();
        assert!(
            !n.starts_with('.'),
            "left behind after gc: dbs/{n} ({:?})",
            std::fs::read_dir(e.path())
                .map(|r| r.count())
                .unwrap_or_default()
        );
        let h = std::fs::read(e.path().join("HEAD")).unwrap();
        let l = kiln::internals::head::Head::lineage(&h).unwrap();
        dbs.push(kiln::internals::keys::lineage_string(&l));
    }
    dbs.sort();
    dbs.dedup();
    (keys, dbs)
}

/// The checks every kill is followed by; `secret`: text that must be nowhere (when `gone`).
fn after_kill(root: &Path, all_keys: &[kiln::Key], secret: &str, gone: bool) {
    let gc = kiln(root, &["gc"]);
    assert!(
        gc.status.success(),
        "gc after a kill: {}{}",
        String::from_utf8_lossy(&gc.stdout),
        String::from_utf8_lossy(&gc.stderr)
    );
    let (keys, dbs) = lineages(root);
    assert_eq!(
        keys, dbs,
        "keys without a database, or databases without a key"
    );
    if gone {
        let found = kiln::audit::find(root, all_keys, secret.as_bytes()).unwrap();
        assert!(found.is_empty(), "{secret} still stored: {found:?}");
    }
    // The other database is untouched, and its own maintenance works.
    let o = kiln(root, &["get", "other", "o1"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("other-1"));
    let v = kiln(root, &["verify", "other"]);
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
    let p = kiln(root, &["purge", "other", "o2"]);
    assert!(p.status.success(), "{}", String::from_utf8_lossy(&p.stderr));
    let found = kiln::audit::find(root, all_keys, b"other-2").unwrap();
    assert!(
        found.is_empty(),
        "other-2 still stored after its purge: {found:?}"
    );
}

/// A store with database `s` (a secret in a compacted file, a later version of it in a small
/// diff the head record carries) and database `other`, made by the binary under test.
fn template(dir: &Path, archive: bool) -> PathBuf {
    let root = dir.join("template");
    let run = |args: &[&str]| {
        let o = kiln(&root, args);
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    run(&["db", "create", "s"]);
    if archive {
        run(&["config", "--keep-archive", "on"]);
    }
    run(&["put", "s", r#"{"_id":"a","v":"SECRET-first"}"#]);
    for i in 0..5 {
        run(&["put", "s", &format!(r#"{{"_id":"d{i}","v":{i}}}"#)]);
    }
    run(&["compact", "s"]);
    run(&["put", "s", r#"{"_id":"a","v":"SECRET-second"}"#]);
    run(&["put", "s", r#"{"_id":"b","v":"plain"}"#]);
    run(&["db", "create", "other"]);
    run(&["put", "other", r#"{"_id":"o1","v":"other-1"}"#]);
    run(&["put", "other", r#"{"_id":"o2","v":"other-2"}"#]);
    root
}

/// Runs `args` on a fresh copy of the template killed at every step, calling `check` after each
/// kill (and once after the unkilled run). Returns the number of kills.
fn every_step(template: &Path, work: &Path, args: &[&str], check: &dyn Fn(&Path)) -> usize {
    let mut kills = 0;
    for sc in SYSCALLS {
        for n in 1.. {
            let _ = std::fs::remove_dir_all(work);
            let cp = Command::new("cp")
                .arg("-a")
                .arg(template)
                .arg(work)
                .status()
                .unwrap();
            assert!(cp.success());
            let killed = killed_run(work, args, sc, n);
            check(work);
            if !killed {
                break;
            }
            kills += 1;
        }
    }
    kills
}

fn doc_reads(root: &Path, db: &str, id: &str) -> Option<String> {
    let o = kiln(root, &["get", db, id]);
    match o.status.code() {
        Some(0) => Some(String::from_utf8(o.stdout).unwrap()),
        Some(3) | Some(4) => None,
        _ => panic!("get {db} {id}: {}", String::from_utf8_lossy(&o.stderr)),
    }
}

#[test]
fn a_drop_killed_at_any_step_is_finished_by_gc_or_never_happened() {
    drop_at_every_step(false);
}

/// With an archive kept, a drop left the files its compactions had archived for good.
#[test]
fn a_drop_killed_at_any_step_leaves_nothing_in_the_archive_either() {
    drop_at_every_step(true);
}

fn drop_at_every_step(archive: bool) {
    let dir = tempfile::tempdir().unwrap();
    let t = template(dir.path(), archive);
    let all = keys(&t);
    let kills = every_step(&t, &dir.path().join("w"), &["db", "drop", "s"], &|w| {
        let exists = w.join("dbs/s").exists();
        if exists {
            let a = doc_reads(w, "s", "a").expect("the database is still there");
            assert!(a.contains("SECRET-second"), "{a}");
        }
        after_kill(w, &all, "SECRET", !exists);
        // The name is free or the database whole: dropping it again works either way.
        if exists {
            assert!(kiln(w, &["db", "drop", "s"]).status.success());
        }
    });
    assert!(kills > 5, "{kills}");
}

#[test]
fn a_create_or_fork_killed_at_any_step_leaves_it_whole_or_absent() {
    let dir = tempfile::tempdir().unwrap();
    let t = template(dir.path(), false);
    let all = keys(&t);
    let kills = every_step(&t, &dir.path().join("w"), &["db", "create", "n"], &|w| {
        if w.join("dbs/n").exists() {
            let o = kiln(w, &["put", "n", r#"{"_id":"x"}"#]);
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        }
        after_kill(w, &all, "", false);
        assert!(doc_reads(w, "s", "a").is_some());
    });
    assert!(kills > 5, "{kills}");
    // The source has an index: a fork shares its definition (and its built tree).
    let o = kiln(&t, &["index", "create", "s", "byv", "--field", "v"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let kills = every_step(&t, &dir.path().join("w"), &["fork", "s", "f"], &|w| {
        if w.join("dbs/f").exists() {
            let a = doc_reads(w, "f", "a").expect("a fork is whole");
            assert!(a.contains("SECRET-second"), "{a}");
            // Its index too (a fork killed after it was in place once had none).
            let q = kiln(w, &["--json", "index", "list", "f"]);
            let out = String::from_utf8_lossy(&q.stdout);
            assert!(
                q.status.success() && out.contains("\"byv\""),
                "{out}{}",
                String::from_utf8_lossy(&q.stderr)
            );
        }
        after_kill(w, &all, "", false);
        assert!(doc_reads(w, "s", "a").is_some());
    });
    assert!(kills > 5, "{kills}");
}

fn purge_at_every_step(archive: bool) {
    let dir = tempfile::tempdir().unwrap();
    let t = template(dir.path(), archive);
    let all = keys(&t);
    let kills = every_step(&t, &dir.path().join("w"), &["purge", "s", "a"], &|w| {
        // Read first: an open finishes an interrupted purge, as gc does.
        let purged = doc_reads(w, "s", "a").is_none();
        after_kill(w, &all, "SECRET", purged);
        let v = kiln(w, &["verify", "s"]);
        assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
        assert_eq!(
            doc_reads(w, "s", "b")
                .as_deref()
                .map(|b| b.contains("plain")),
            Some(true)
        );
    });
    assert!(kills > 10, "{kills}");
}

#[test]
fn a_purge_killed_at_any_step_is_finished_and_leaves_nothing_readable() {
    purge_at_every_step(false);
}

#[test]
fn a_purge_killed_at_any_step_leaves_nothing_in_the_archive_either() {
    purge_at_every_step(true);
}

/// Attaching files, killed at every step: the document has its old version or the new one with
/// both files whole and readable; `gc --fileset-grace 0` leaves no partial or unnamed
/// file-set, and a file-set the document names is never removed.
#[test]
fn an_attach_killed_at_any_step_leaves_the_old_document_or_all_its_files() {
    let dir = tempfile::tempdir().unwrap();
    let t = template(dir.path(), false);
    let big: Vec<u8> = (0..300_000u32).map(|i| (i * 13 % 251) as u8).collect();
    let (p1, p2) = (dir.path().join("big.bin"), dir.path().join("small.txt"));
    std::fs::write(&p1, &big).unwrap();
    std::fs::write(&p2, b"FILE-small").unwrap();
    let (a1, a2) = (
        format!("big.bin={}", p1.display()),
        format!("small.txt={}", p2.display()),
    );
    let all = keys(&t);
    let kills = every_step(
        &t,
        &dir.path().join("w"),
        &["attach", "s", "b", &a1, &a2],
        &|w| {
            let gc = kiln(w, &["gc", "--fileset-grace", "0"]);
            assert!(
                gc.status.success(),
                "{}",
                String::from_utf8_lossy(&gc.stderr)
            );
            let doc = doc_reads(w, "s", "b").expect("the document stays");
            assert!(doc.contains("plain"), "{doc}");
            let sets = w.join("filesets");
            let stored: Vec<_> = std::fs::read_dir(&sets)
                .map(|r| {
                    r.filter_map(|e| e.ok())
                        .filter(|e| {
                            e.file_type().unwrap().is_dir()
                                && !e.file_name().to_string_lossy().starts_with('.')
                        })
                        .flat_map(|d| std::fs::read_dir(d.path()).unwrap())
                        .filter_map(|e| e.ok().map(|e| e.file_name()))
                        .collect()
                })
                .unwrap_or_default();
            if doc.contains("_files") {
                assert_eq!(stored.len(), 1, "{stored:?}");
                let o = kiln(w, &["file", "s", "b", "big.bin"]);
                assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
                assert_eq!(o.stdout, big);
                let o = kiln(w, &["file", "s", "b", "small.txt"]);
                assert_eq!(o.stdout, b"FILE-small");
            } else {
                assert!(stored.is_empty(), "left behind: {stored:?}");
            }
            let tmp = sets.join(".tmp");
            let partial = std::fs::read_dir(&tmp).map(|r| r.count()).unwrap_or(0);
            assert_eq!(partial, 0, "partial file-sets left in {tmp:?}");
            let v = kiln(w, &["verify", "s"]);
            assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
            after_kill(w, &all, "", false);
        },
    );
    assert!(kills > 10, "{kills}");
}
