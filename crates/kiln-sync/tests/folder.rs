//! The folder remote keeps the promises of `Remote`, and `probe` tells an honest
//! compare-and-swap from one that is not.

use kiln_sync::{
    probe, Conflict, Etag, FileName, FolderRemote, HeadRead, Kind, ProbeError, Remote,
};
use std::sync::Mutex;

fn name(b: &[u8]) -> FileName {
    // Any 32 bytes name a file here; the sync layer checks names against contents.
    let mut n = [0u8; 32];
    for (i, x) in b.iter().enumerate() {
        n[i % 32] ^= *x;
    }
    n[31] = b.len() as u8;
    FileName(n)
}

#[test]
fn files_are_kept_by_kind_and_name() {
    let d = tempfile::tempdir().unwrap();
    let r = FolderRemote::open(d.path().join("remote")).unwrap();
    let (a, b) = (name(b"alpha"), name(b"beta"));
    r.put_file(Kind::Diff, &a, b"alpha").unwrap();
    r.put_file(Kind::Diff, &a, b"alpha").unwrap(); // again: nothing changes
    r.put_file(Kind::FileSet, &b, b"beta").unwrap();
    assert_eq!(
        r.get_file(Kind::Diff, &a).unwrap().as_deref(),
        Some(&b"alpha"[..])
    );
    assert_eq!(r.get_file(Kind::FileSet, &a).unwrap(), None);
    assert_eq!(r.get_file(Kind::Diff, &b).unwrap(), None);
    let listed: Vec<FileName> = r
        .list_files(Kind::Diff)
        .unwrap()
        .into_iter()
        .map(|x| x.0)
        .collect();
    assert_eq!(listed, vec![a]);
    r.delete_file(Kind::Diff, &a).unwrap();
    r.delete_file(Kind::Diff, &a).unwrap(); // absent: fine
    assert!(r.list_files(Kind::Diff).unwrap().is_empty());
    assert_eq!(r.list_files(Kind::FileSet).unwrap().len(), 1);
    // Reopened: the same remote.
    let r = FolderRemote::open(d.path().join("remote")).unwrap();
    assert_eq!(
        r.get_file(Kind::FileSet, &b).unwrap().as_deref(),
        Some(&b"beta"[..])
    );
}

#[test]
fn head_records_are_written_by_compare_and_swap() {
    let d = tempfile::tempdir().unwrap();
    let r = FolderRemote::open(d.path()).unwrap();
    assert_eq!(r.read_head("notes", None).unwrap(), HeadRead::Absent);
    let e1 = r.write_head("notes", None, b"one").unwrap().unwrap();
    assert_eq!(
        r.write_head("notes", None, b"again").unwrap(),
        Err(Conflict {
            now: Some(e1.clone())
        })
    );
    let e2 = r.write_head("notes", Some(&e1), b"two").unwrap().unwrap();
    assert!(r.write_head("notes", Some(&e1), b"stale").unwrap().is_err());
    assert_eq!(
        r.read_head("notes", Some(&e2)).unwrap(),
        HeadRead::NotModified
    );
    assert_eq!(
        r.read_head("notes", Some(&e1)).unwrap(),
        HeadRead::Found {
            bytes: b"two".to_vec(),
            etag: e2.clone()
        }
    );
    r.write_head("other", None, b"x").unwrap().unwrap();
    let heads: Vec<String> = r.list_heads().unwrap().into_iter().map(|x| x.0).collect();
    assert_eq!(heads, ["notes", "other"]);
    assert_eq!(r.list_heads().unwrap()[0].1, e2);
    // Removed and made again: a version read before never matches.
    assert!(r.delete_head("notes", &e1).unwrap().is_err());
    r.delete_head("notes", &e2).unwrap().unwrap();
    let e3 = r.write_head("notes", None, b"new").unwrap().unwrap();
    assert_ne!(e3, e2);
    assert!(r.write_head("notes", Some(&e2), b"stale").unwrap().is_err());
    // Bad ids never reach a path.
    for bad in ["", "../x", ".hidden", "a/b", "a b"] {
        assert!(r.write_head(bad, None, b"x").is_err(), "{bad:?}");
        assert!(r.read_head(bad, None).is_err(), "{bad:?}");
    }
}

#[test]
fn racing_writers_see_exactly_one_winner_per_version() {
    let d = tempfile::tempdir().unwrap();
    let r = FolderRemote::open(d.path()).unwrap();
    let mut expected: Option<Etag> = None;
    for round in 0..5 {
        let wins: Vec<Etag> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..6)
                .map(|i| {
                    let (r, expected) = (&r, expected.clone());
                    s.spawn(move || {
                        r.write_head("db", expected.as_ref(), format!("{round}-{i}").as_bytes())
                            .unwrap()
                    })
                })
                .collect();
            hs.into_iter()
                .filter_map(|h| h.join().unwrap().ok())
                .collect()
        });
        assert_eq!(wins.len(), 1, "round {round}");
        expected = wins.into_iter().next();
    }
}

#[test]
fn a_folder_that_is_no_remote_is_refused() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("thesis.txt"), "not a remote").unwrap();
    assert!(FolderRemote::open(d.path()).is_err());
    let e = tempfile::tempdir().unwrap();
    std::fs::write(e.path().join("KILN-REMOTE"), "{\"kiln_remote\": 9}").unwrap();
    let err = FolderRemote::open(e.path()).unwrap_err();
    assert!(err.to_string().contains("newer"), "{err}");
}

#[test]
fn the_folder_remote_passes_the_probe_and_leaves_nothing() {
    let d = tempfile::tempdir().unwrap();
    let r = FolderRemote::open(d.path()).unwrap();
    probe(&r).unwrap();
    assert!(r.list_heads().unwrap().is_empty());
}

/// A remote whose conditional writes are not: every write succeeds (as stores that ignore
/// `If-Match` behave).
#[derive(Debug, Default)]
struct Careless {
    heads: Mutex<std::collections::BTreeMap<String, (Vec<u8>, u64)>>,
}

impl Remote for Careless {
    fn location(&self) -> String {
        "careless".into()
    }
    fn has_file(&self, _: Kind, _: &FileName) -> std::io::Result<bool> {
        Ok(false)
    }
    fn put_file(&self, _: Kind, _: &FileName, _: &[u8]) -> std::io::Result<()> {
        Ok(())
    }
    fn get_file(&self, _: Kind, _: &FileName) -> std::io::Result<Option<Vec<u8>>> {
        Ok(None)
    }
    fn list_files(&self, _: Kind) -> std::io::Result<Vec<(FileName, u64)>> {
        Ok(Vec::new())
    }
    fn delete_file(&self, _: Kind, _: &FileName) -> std::io::Result<()> {
        Ok(())
    }
    fn read_head(&self, db: &str, known: Option<&Etag>) -> std::io::Result<HeadRead> {
        Ok(match self.heads.lock().unwrap().get(db) {
            None => HeadRead::Absent,
            Some((_, n)) if known == Some(&Etag(n.to_string())) => HeadRead::NotModified,
            Some((b, n)) => HeadRead::Found {
                bytes: b.clone(),
                etag: Etag(n.to_string()),
            },
        })
    }
    fn write_head(
        &self,
        db: &str,
        _: Option<&Etag>,
        bytes: &[u8],
    ) -> std::io::Result<Result<Etag, Conflict>> {
        let mut h = self.heads.lock().unwrap();
        let n = h.get(db).map_or(1, |x| x.1 + 1);
        h.insert(db.to_owned(), (bytes.to_vec(), n));
        Ok(Ok(Etag(n.to_string())))
    }
    fn delete_head(&self, db: &str, _: &Etag) -> std::io::Result<Result<(), Conflict>> {
        self.heads.lock().unwrap().remove(db);
        Ok(Ok(()))
    }
    fn list_heads(&self) -> std::io::Result<Vec<(String, Etag)>> {
        Ok(Vec::new())
    }
}

#[test]
fn a_remote_whose_conditional_writes_are_not_fails_the_probe() {
    let r = Careless::default();
    match probe(&r) {
        Err(ProbeError::NotHonest(why)) => assert!(!why.is_empty()),
        other => panic!("{other:?}"),
    }
    assert!(r.heads.lock().unwrap().is_empty());
}

/// The checked-in remote folder (`tests/fixtures/remote-v1`, layout version 1) reads: its head
/// record with its etag, its files by kind. A change that breaks reading it fails here.
#[test]
fn the_v1_remote_folder_fixture_reads() {
    let src =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/remote-v1");
    let d = tempfile::tempdir().unwrap();
    let copy = d.path().join("r");
    let st = std::process::Command::new("cp")
        .arg("-r")
        .arg(&src)
        .arg(&copy)
        .status()
        .unwrap();
    assert!(st.success());
    let r = FolderRemote::open(&copy).unwrap();
    let etag = Etag("0123456789abcdef".into());
    assert_eq!(
        r.list_heads().unwrap(),
        vec![("notes".to_owned(), etag.clone())]
    );
    assert_eq!(
        r.read_head("notes", None).unwrap(),
        HeadRead::Found {
            bytes: b"sealed head record".to_vec(),
            etag: etag.clone()
        }
    );
    assert_eq!(
        r.read_head("notes", Some(&etag)).unwrap(),
        HeadRead::NotModified
    );
    let diff = FileName::parse(&"ab".repeat(32)).unwrap();
    let set = FileName::parse(&"cd".repeat(32)).unwrap();
    assert_eq!(
        r.list_files(Kind::Diff)
            .unwrap()
            .iter()
            .map(|x| x.0)
            .collect::<Vec<_>>(),
        [diff]
    );
    assert_eq!(
        r.get_file(Kind::Diff, &diff).unwrap().as_deref(),
        Some(&b"diff file bytes"[..])
    );
    assert_eq!(
        r.get_file(Kind::FileSet, &set).unwrap().as_deref(),
        Some(&b"file-set bytes"[..])
    );
    // And takes a write on top.
    r.write_head("notes", Some(&etag), b"next")
        .unwrap()
        .unwrap();
}

#[test]
fn batches_keep_their_promises() {
    let d = tempfile::tempdir().unwrap();
    kiln_sync::testing::check_batches(&FolderRemote::open(d.path().join("remote")).unwrap());
    // Nothing left behind in the staging folder (a stopped batch removes its files).
    let tmp = d.path().join("remote/.tmp");
    let left = std::fs::read_dir(&tmp).map(|d| d.count()).unwrap_or(0);
    assert_eq!(left, 0);
}

/// One `syncfs` stands for an fsync of each file only on local disk file systems: never on
/// others (procfs here stands for a file system it does not cover) or a path that is not there.
#[test]
fn syncfs_covers_local_disks_only() {
    assert!(!kiln::syncfs_covers(std::path::Path::new("/proc")));
    assert!(!kiln::syncfs_covers(std::path::Path::new("/no/such/path")));
    let d = tempfile::tempdir().unwrap();
    eprintln!(
        "syncfs covers {}: {}",
        d.path().display(),
        kiln::syncfs_covers(d.path())
    );
}
