//! The sync fixture (`tests/fixtures/sync-v1`, docs/format.md "Remote head record"): a remote
//! folder holding database "notes" (its record version 1, three diff files, a file-set) and a
//! store holding an empty replica of it with its key. Today's code must open the record and
//! take the state in, reading exactly the documents and attached file it held.

use kiln::{ListOptions, Options, Store};
use kiln_sync::{sync, FileSets, FolderRemote, HeadRead, Remote, SyncOptions};
use std::io::Read;
use std::path::{Path, PathBuf};

/// The clock head of the fixture's database.
const HEAD: &str = "bafyreie3gw5hvmej6fjkcmix43lwlbejsmovdijqfst4bdkakbwigiarli";

fn fixture() -> (tempfile::TempDir, PathBuf) {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/sync-v1");
    let dir = tempfile::tempdir().unwrap();
    let st = std::process::Command::new("cp")
        .arg("-a")
        .arg(src.join("."))
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(st.success());
    // Git keeps no folder modes: the keybag folder must be private again.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        dir.path().join("replica/keys"),
        std::fs::Permissions::from_mode(0o700),
    )
    .unwrap();
    let p = dir.path().to_path_buf();
    (dir, p)
}

fn record(remote: &Path) -> Vec<u8> {
    match FolderRemote::open(remote)
        .unwrap()
        .read_head("notes", None)
        .unwrap()
    {
        HeadRead::Found { bytes, .. } => bytes,
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_sync_fixture_takes_in_and_reads() {
    let (_d, dir) = fixture();
    let rec = record(&dir.join("remote"));
    // The names in the clear: three diff files, one file-set.
    let (files, sets) = kiln::record_names(&rec).unwrap();
    assert_eq!((files.len(), sets.len()), (3, 1));
    let store = Store::open_with(dir.join("replica"), Options::default()).unwrap();
    let db = store.open_db("notes").unwrap();
    let r = db.open_replica("notes", &rec).unwrap();
    assert_eq!(
        r.heads().iter().map(|c| c.to_string()).collect::<Vec<_>>(),
        [HEAD]
    );
    assert_eq!(r.filesets(), &sets[..]);
    // Under another id it does not open.
    assert!(db.open_replica("other", &rec).is_err());
    let remote = FolderRemote::open(dir.join("remote")).unwrap();
    let all = SyncOptions {
        files: FileSets::All,
        ..SyncOptions::default()
    };
    let rep = sync(&store, &db, &remote, "notes", all).unwrap();
    assert!(rep.adopted && !rep.pushed, "{rep:?}");
    assert_eq!(rep.files_pulled, 3);
    assert_eq!(rep.filesets_pulled, 1);
    let expected: Vec<serde_json::Value> = std::fs::read_to_string(dir.join("expected.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(db.docs(&ListOptions::default()).unwrap(), expected);
    let mut text = String::new();
    db.open_file("with-file", "hello.txt")
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    assert_eq!(text, "hello, remote");
    assert!(db.verify().unwrap().ok());
    // Nothing new either way now: one request.
    let rep = sync(&store, &db, &remote, "notes", all).unwrap();
    assert_eq!(rep.requests, 1, "{rep:?}");
}
