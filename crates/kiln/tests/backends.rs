//! The storage interfaces ([`Files`], [`Heads`]) hold the same promises on every backend: the
//! local folder, memory, and the fault-injecting wrapper (with no fault due). A model checks
//! random sequences of file operations; compare-and-swap is checked by racing writers; faults
//! are checked for what each leaves behind. The local head records agree with kiln's own
//! writers (the version is the database's commit counter).

use kiln::internals::storage::faulty::{Fault, Faulty};
use kiln::internals::storage::memory::{MemoryFiles, MemoryHeads};
use kiln::internals::storage::{
    Conflict, FileName, Files, Heads, LocalHeads, LocalStorage, Version,
};
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::sync::Arc;

fn name_of(b: &[u8]) -> FileName {
    FileName(*blake3::hash(b).as_bytes())
}

/// Each backend under test, fresh, with the folder it lives in (if any).
fn file_backends() -> Vec<(&'static str, Box<dyn Files>, Option<tempfile::TempDir>)> {
    let d = tempfile::tempdir().unwrap();
    let local = LocalStorage::with_reserve(d.path().join("files"), 4);
    local.create_shards().unwrap();
    vec![
        ("local", Box::new(local), Some(d)),
        ("memory", Box::new(MemoryFiles::new()), None),
        (
            "faulty(memory), no fault due",
            Box::new(Faulty::new(MemoryFiles::new(), i64::MAX, Fault::FailBefore)),
            None,
        ),
    ]
}

fn head_backends() -> Vec<(&'static str, Arc<dyn Heads>, Option<tempfile::TempDir>)> {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(d.path().join("dbs")).unwrap();
    vec![
        (
            "local",
            Arc::new(LocalHeads::new(d.path().join("dbs"))),
            Some(d),
        ),
        ("memory", Arc::new(MemoryHeads::new()), None),
        (
            "faulty(memory), no fault due",
            Arc::new(Faulty::new(MemoryHeads::new(), i64::MAX, Fault::FailBefore)),
            None,
        ),
    ]
}

#[derive(Debug, Clone)]
enum Op {
    Put(Vec<u8>),
    PutStreamed(Vec<u8>),
    Delete(usize),
    ReadAt(usize, u16, u16),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..300).prop_map(Op::Put),
        prop::collection::vec(any::<u8>(), 0..300).prop_map(Op::PutStreamed),
        (0usize..8).prop_map(Op::Delete),
        (0usize..8, any::<u16>(), any::<u16>()).prop_map(|(i, o, l)| Op::ReadAt(
            i,
            o % 400,
            l % 400
        )),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    /// Every backend behaves as a map from names to immutable bytes.
    #[test]
    fn files_behave_as_a_map_of_immutable_bytes(ops in prop::collection::vec(op(), 1..40)) {
        for (backend, f, _dir) in file_backends() {
            let mut model: BTreeMap<FileName, Vec<u8>> = BTreeMap::new();
            let mut names: Vec<FileName> = Vec::new();
            for op in &ops {
                match op {
                    Op::Put(b) => {
                        let n = name_of(b);
                        let (a, c) = b.split_at(b.len() / 2);
                        f.put(&n, &[a, c], false).unwrap();
                        model.insert(n, b.clone());
                        names.push(n);
                    }
                    Op::PutStreamed(b) => {
                        let n = f.put_streamed(true, &mut |w| {
                            w.write_all(b)?;
                            Ok(name_of(b))
                        }).unwrap();
                        prop_assert_eq!(n, name_of(b));
                        model.insert(n, b.clone());
                        names.push(n);
                    }
                    Op::Delete(i) => {
                        if let Some(n) = names.get(*i) {
                            f.delete(n).unwrap();
                            model.remove(n);
                        }
                    }
                    Op::ReadAt(i, o, l) => {
                        let Some(n) = names.get(*i) else { continue };
                        let got = f.read_at(n, *o as u64, *l as usize);
                        match model.get(n) {
                            None => prop_assert!(got.is_err(), "{}: read of a deleted file", backend),
                            Some(b) => match b.get(*o as usize..*o as usize + *l as usize) {
                                Some(want) => prop_assert_eq!(&got.unwrap()[..], want, "{}", backend),
                                None => prop_assert!(got.is_err(), "{}: read past the end", backend),
                            },
                        }
                    }
                }
                prop_assert_eq!(f.list().unwrap(), model.keys().copied().collect::<Vec<_>>(), "{}", backend);
                for (n, b) in &model {
                    prop_assert_eq!(f.len(n).unwrap(), b.len() as u64, "{}", backend);
                }
            }
        }
    }
}

/// Compare-and-swap: a write succeeds only on the version read; racing writers each win a
/// distinct version, and every version's record is the one its winner wrote.
#[test]
fn head_records_are_written_by_compare_and_swap() {
    for (backend, h, _dir) in head_backends() {
        assert_eq!(h.read("d").unwrap(), None, "{backend}");
        let v1 = h.write("d", None, b"one", false).unwrap().unwrap();
        assert_eq!(
            h.write("d", None, b"again", false).unwrap(),
            Err(Conflict { now: Some(v1) }),
            "{backend}: created twice"
        );
        let v2 = h.write("d", Some(v1), b"two", true).unwrap().unwrap();
        assert_ne!(v1, v2);
        assert_eq!(
            h.write("d", Some(v1), b"stale", false).unwrap(),
            Err(Conflict { now: Some(v2) }),
            "{backend}"
        );
        assert_eq!(
            h.read("d").unwrap(),
            Some((b"two".to_vec(), v2)),
            "{backend}"
        );
        assert_eq!(
            h.write("none", Some(v1), b"x", false).unwrap(),
            Err(Conflict { now: None }),
            "{backend}"
        );
        assert_eq!(h.list().unwrap(), ["d"], "{backend}");
        // Racing writers: read, then write on what they read, many times each.
        let wins: Vec<Vec<(Version, Vec<u8>)>> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4u8)
                .map(|t| {
                    let h = h.clone();
                    s.spawn(move || {
                        let mut won = Vec::new();
                        for i in 0..25u8 {
                            let (_, v) = h.read("d").unwrap().unwrap();
                            let body = vec![t, i];
                            if let Ok(nv) = h.write("d", Some(v), &body, false).unwrap() {
                                won.push((nv, body));
                            }
                        }
                        won
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut all: Vec<(Version, Vec<u8>)> = wins.into_iter().flatten().collect();
        all.sort();
        let n = all.len();
        all.dedup_by_key(|(v, _)| *v);
        assert_eq!(all.len(), n, "{backend}: two writers won one version");
        assert!(n >= 4, "{backend}: {n} wins");
        let last = all.last().unwrap();
        assert_eq!(
            h.read("d").unwrap(),
            Some((last.1.clone(), last.0)),
            "{backend}"
        );
    }
}

/// What each fault leaves: before, nothing; after, the write (its caller was told it failed);
/// a torn file, a prefix under its name, which a reader that checks the name against the bytes
/// (as kiln does) tells from the file.
#[test]
fn faults_leave_what_they_say() {
    let body = b"the bytes of a file, long enough to tear".to_vec();
    let n = name_of(&body);
    let f = Faulty::new(MemoryFiles::new(), 0, Fault::FailBefore);
    assert!(f.put(&n, &[&body], true).is_err());
    assert!(f.inner().list().unwrap().is_empty());
    f.reset(0, Fault::FailAfter);
    assert!(f.put(&n, &[&body], true).is_err());
    assert_eq!(f.inner().read_at(&n, 0, body.len()).unwrap(), body);
    let f = Faulty::new(MemoryFiles::new(), 1, Fault::Tear);
    f.put(&name_of(b"a"), &[b"a"], true).unwrap();
    assert!(f.put(&n, &[&body], true).is_err());
    let torn = f.inner().read_at(&n, 0, body.len() / 2).unwrap();
    assert_ne!(name_of(&torn), n);
    assert!(f.read_at(&n, 0, body.len()).is_err());
    // Every later write fails too, as after a crash, until a new countdown.
    assert!(f.put(&name_of(b"b"), &[b"b"], true).is_err());
    let h = Faulty::new(MemoryHeads::new(), 1, Fault::FailBefore);
    let v = h.write("d", None, b"one", true).unwrap().unwrap();
    assert!(h.write("d", Some(v), b"two", true).is_err());
    assert_eq!(h.read("d").unwrap(), Some((b"one".to_vec(), v)));
    h.reset(0, Fault::FailAfter);
    assert!(h.write("d", Some(v), b"two", true).is_err());
    let (b, v2) = h.read("d").unwrap().unwrap();
    assert_eq!((b.as_slice(), v2 > v), (&b"two"[..], true));
}

/// The local head records are the database's: a commit moves the version, a write on the
/// version read before it is refused, and a write on the current one is what the database
/// reads next.
#[test]
fn local_head_records_are_the_databases() {
    let d = tempfile::tempdir().unwrap();
    let store = kiln::Store::open(d.path()).unwrap();
    let db = store.create(Some("d")).unwrap();
    db.put(&serde_json::json!({"_id": "a", "v": 1})).unwrap();
    let heads = LocalHeads::new(d.path().join("dbs"));
    let (before, v) = heads.read("d").unwrap().unwrap();
    assert_eq!(before, std::fs::read(d.path().join("dbs/d/HEAD")).unwrap());
    db.put(&serde_json::json!({"_id": "a", "v": 2})).unwrap();
    let (_, now) = heads.read("d").unwrap().unwrap();
    assert!(now > v);
    assert_eq!(
        heads.write("d", Some(v), &before, true).unwrap(),
        Err(Conflict { now: Some(now) })
    );
    // Rolling the record back to the one read before (a sync would write a newer one) is
    // what the database then reads.
    heads.write("d", Some(now), &before, true).unwrap().unwrap();
    assert_eq!(db.get("a").unwrap().unwrap()["v"], 1);
    assert_eq!(heads.list().unwrap(), ["d"]);
}
