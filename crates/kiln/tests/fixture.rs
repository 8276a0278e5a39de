//! Reads the checked-in format fixtures (`tests/fixtures/v1`: head records and diff files of
//! version 1; `tests/fixtures/v2`: head record version 2, a snapshot and three appended deltas,
//! whose level-0 diffs hold no tree nodes, so reading it rebuilds the current tree; diff files
//! version 2, with compressed segments, named by sha2-256; a purge and a cut;
//! `tests/fixtures/v3`: the same with diff files version 3, named by BLAKE3;
//! `tests/fixtures/v4`: the same with head records version 3, whose logs carry small fully
//! durable diffs in file records; `tests/fixtures/v5`: the same with diff files and head
//! records version 4, each file and each head log sealed under a key of its own;
//! `tests/fixtures/v6`: the same with diff files version 5 (fixed-width index entries, a
//! structural filter in each index; a database "paged" whose diff file has a paged index) and
//! head records version 4; `tests/fixtures/v7`: the same with head records version 5, whose
//! databases' trees are of the `Bounded` shape (every tree before is `Mod16`);
//! `tests/fixtures/v8`: the same with head records version 6 (a commit's delta in the short
//! form) and diff files version 6 (a small file's index without its roots and structural
//! filter); `tests/fixtures/v9`: today's formats, the same with diff files version 7 (files of
//! several events carry a document log), and `tests/fixtures/store-v2` the same as a store of
//! format 2 with its keys outside it; all written by `cargo run -p kiln --example make_fixture -- DIR`). A change that breaks
//! reading them, or that changes the CIDs kiln computes for the same content, fails here:
//! formats are contracts.

use kiln::{Cid, ListOptions, Store};
use serde_json::json;
use std::path::{Path, PathBuf};

/// The "fixture" database's root in a `Mod16` tree (fixtures v1 to v6).
const ROOT: &str = "bafyreige7n5eeymvvsqnnclsw2jaaxxup6funum2h5h4bjygbw2jzbtofm";
/// The same content's root in a `Bounded` tree (fixtures v7 and v8, every database created
/// since).
const ROOT_BOUNDED: &str = "bafyreifwxjepfb6g5pezq3phvp5gw22dz4j53jauebduxo4jyeqsmkugzu";

/// A fixture folder and its events (first, second, head): events carry their commit time.
struct Fixture {
    dir: &'static str,
    events: [&'static str; 3],
    /// The event of the "cut" database before which history was dropped (v2 on).
    cut_at: &'static str,
}

const V1: Fixture = Fixture {
    dir: "v1",
    events: [
        "bafyreig5ge7rn3f6bgbgqgupfewolvhtjaiivxptbohwr5itcadnlqqqs4",
        "bafyreigvory4f2u3pvab54u5vuiklgy5cg43yeslwshc4pojia2kuef2ru",
        "bafyreig7s55dksaas3uj5qwzfiohpdp6mhfqbkfh2qbztj3smpt5zj4tse",
    ],
    cut_at: "",
};

const V2: Fixture = Fixture {
    dir: "v2",
    events: [
        "bafyreihpqx4ynx2sycsc5xb6iyryay6xl6mgnq74233uf2g3mcho4qtgk4",
        "bafyreiholhqkazgtsw2scnxvsja7yuyvpaai5urgtqk6dory23rzkwljbm",
        "bafyreif7b4inubrw3o5vqyzruvqx5s2ubwiiyaknmfdnuvmfjww2mm643a",
    ],
    cut_at: "bafyreiezv7undhoyes2lnv7jdf7oquaqq7ysmjbgz5sbm624ko34bdifdq",
};

const V3: Fixture = Fixture {
    dir: "v3",
    events: [
        "bafyreiejkze6sx2uldzywmiosujanufcubojsp3dvrpslf2tykz4f5zhny",
        "bafyreigjvvczygq3rfkvne7sayam5u25q4hfnrdax7gu7efnbynesqhgfy",
        "bafyreiabwws34pqvsyltzuui5nlrbfke27s6lpmfnm6w5lbhgzwtwgs3vy",
    ],
    cut_at: "bafyreicbgzo6i72ev7xk522uzarlavi73olunxnsd7yddftb5ezxo7e6ha",
};

const V4: Fixture = Fixture {
    dir: "v4",
    events: [
        "bafyreieq5potbql5v2f3yqka4jv5nak2652iwkz3zlrgrsd4bfyaqipsoq",
        "bafyreiailq25dztaeatcr4lm5aj4n3n5nwzctz7r4pywttrhuydv55ojua",
        "bafyreie2crf65meu4sbfelslx4adi7fx3cr2qfcuvvqpr76jmznq37xpga",
    ],
    cut_at: "bafyreib7sb2j7lnl76xcirzg6nqrums2tf5tw7p7s42esl65zg47avxaha",
};

const V6: Fixture = Fixture {
    dir: "v6",
    events: [
        "bafyreihv2fery6f3kev5ochpg74mlejrmqztcwhwcmygit7zy7uusqfv2e",
        "bafyreihkz6tohc2hxjcb3koah7s7wozsgo2r2ukrxia3mdn5d6mw5odufe",
        "bafyreig74xac43hlsgeggxdbjwu73bdo64h7mfiy7gczrbq7sxvw2x3a24",
    ],
    cut_at: "bafyreiceiuygybeefvdm3tt3ynz6gnld7vrkkwnx7bh6ihwygxubyboeq4",
};

const V7: Fixture = Fixture {
    dir: "v7",
    events: [
        "bafyreihys36u7cikkci7mqmwpftfonej2kxxjl3sg3h2jf5a7mfoak2quq",
        "bafyreibi5uxugp77ehui27mq2ep6y7vwmrd22vuzbm2s45wdeksjgqtuay",
        "bafyreibeieev6fcvh3h5oqs46i56vyq5sb6mg5xyt6drdkphbrtjlpkd74",
    ],
    cut_at: "bafyreibwci26xz3f3gqh6ul2txrxiz3mddmb4acaxvrs2aujwbxlekgbsa",
};

const V8: Fixture = Fixture {
    dir: "v8",
    events: [
        "bafyreiajpbp73j4nhrrcojh6j3kx6ao7prwcy5nf62szl5fpevwlstzsne",
        "bafyreifurtrbmbtqzccxpvs7sydfcjrtqfokzqn2hfkh23ixpzu66yx7bq",
        "bafyreiestqbhpfg5337igkctcxe7vwza6vqdi2kf3wni26cbnszjucpdfe",
    ],
    cut_at: "bafyreifdkfxp6tms5wcrhi3hx6uruj3l2ow2rk4k7hlyrvqeydrtnf2p5q",
};

const V9: Fixture = Fixture {
    dir: "v9",
    events: [
        "bafyreibsy6kup26lha7owecrjhk4atrntfxwb6bikkkncngdthf3kznxh4",
        "bafyreid22sgon6egamy3d7lvjbvuvoatp6qihhkrhl3psikz5plefgtqva",
        "bafyreihrgzpnvu5nkxbibddafn2rccku5roh7yecgfwhlxuzsc6qjy4akm",
    ],
    cut_at: "bafyreidwnnka5u3f7drpbvtonnqjr5glc6idoq6dmzzpmvf57znx5ony5a",
};

/// The v9 fixture as a store of format 2 (`tests/fixtures/store-v2`: `store/`, whose marker
/// says its keys are outside, and `keys/`, the folder holding its keybag, `keys/<store id>/`),
/// made by opening a copy of v9 for writing with `--keys` (its keys moved out).
const STORE_V2: Fixture = Fixture {
    dir: "store-v2",
    ..V9
};

/// The v9 fixture's "attached" database: its first event (two files attached).
const V9_ATTACHED_FIRST: &str = "bafyreibpfxpwrpeds3s55g6cciegiqu6iu72ngjv54h3switpxrssytlkm";

const V5: Fixture = Fixture {
    dir: "v5",
    events: [
        "bafyreiabrrd3gwk33g2nymyj2mby43gj5s3h6glxlnflghqh7siq2txzhe",
        "bafyreihh6ds5fuj4fu5zrvzkqj6a2og5swxoxxbuvdsghliee5zrpiqzgi",
        "bafyreigru4lhwtan727rdrtixqgpdgcivtjr2fyse653m5afocmiipzkai",
    ],
    cut_at: "bafyreiekilxm7x4iy2fu352wbaazgnmvclik6vmg4xuepf6ymw6xjx2l4y",
};

fn copy(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        if p.is_dir() {
            copy(&p, &to.join(e.file_name()));
        } else {
            std::fs::copy(&p, to.join(e.file_name())).unwrap();
        }
    }
}

fn open(f: &Fixture) -> (tempfile::TempDir, Store) {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(f.dir);
    let dir = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    let private = |p: &Path| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700)).unwrap();
    };
    if src.join("store").exists() {
        // A store of format 2 with its keys outside: the store, then the keys' folder.
        let (root, keys) = (dir.path().join("store"), dir.path().join("keys"));
        copy(&src.join("store"), &root);
        copy(&src.join("keys"), &keys);
        private(&keys);
        for e in std::fs::read_dir(&keys).unwrap() {
            private(&e.unwrap().path());
        }
        let opts = kiln::Options {
            keys: kiln::KeyPlace::Outside(Some(keys)),
            ..kiln::Options::default()
        };
        let store = Store::open_with(&root, opts).unwrap();
        return (dir, store);
    }
    copy(&src, dir.path());
    // Git keeps no folder modes: the keybag folder must be private again (kiln refuses it
    // otherwise).
    private(&dir.path().join("keys"));
    let store = Store::open(dir.path()).unwrap();
    (dir, store)
}

#[test]
fn v1_fixture_reads_and_verifies() {
    reads_and_verifies(&V1);
}

#[test]
fn v2_fixture_reads_and_verifies() {
    reads_and_verifies(&V2);
}

#[test]
fn v3_fixture_reads_and_verifies() {
    reads_and_verifies(&V3);
}

#[test]
fn v4_fixture_reads_and_verifies() {
    reads_and_verifies(&V4);
}

#[test]
fn v5_fixture_reads_and_verifies() {
    reads_and_verifies(&V5);
}

#[test]
fn v6_fixture_reads_and_verifies() {
    reads_and_verifies(&V6);
}

#[test]
fn v7_fixture_reads_and_verifies() {
    reads_and_verifies(&V7);
}

#[test]
fn v8_fixture_reads_and_verifies() {
    reads_and_verifies(&V8);
}

#[test]
fn v9_fixture_reads_and_verifies() {
    reads_and_verifies(&V9);
}

#[test]
fn store_v2_fixture_reads_and_verifies() {
    reads_and_verifies(&STORE_V2);
}

/// The v6 fixture's "paged" database: 300 documents in one diff file whose index is paged
/// (fixed-width entries), then one more write; every document reads, the filters of its
/// head record find the tree, and it verifies.
#[test]
fn v6_paged_index_reads_and_verifies() {
    paged_index_reads_and_verifies(&V6);
}

#[test]
fn v7_paged_index_reads_and_verifies() {
    paged_index_reads_and_verifies(&V7);
}

#[test]
fn v8_paged_index_reads_and_verifies() {
    paged_index_reads_and_verifies(&V8);
}

#[test]
fn v9_paged_index_reads_and_verifies() {
    paged_index_reads_and_verifies(&V9);
}

fn paged_index_reads_and_verifies(f: &Fixture) {
    let (_d, store) = open(f);
    let db = store.open_db("paged").unwrap();
    let docs = db.docs(&ListOptions::default()).unwrap();
    assert_eq!(docs.len(), 300);
    for i in 1..300u64 {
        let d = db.get(&format!("p{i:03}")).unwrap().unwrap();
        assert_eq!((d["i"].as_u64(), d["sq"].as_u64()), (Some(i), Some(i * i)));
    }
    assert_eq!(db.get("p000").unwrap().unwrap()["i"], "changed");
    let r = db.verify().unwrap();
    assert!(r.ok(), "{:?}", r.problems);
}

/// The v8 fixture's "joined" database: two transactions on one state wrote "x" differently and
/// the next commit joined the heads, its event listing the value that lost; its metadata
/// holds a title.
#[test]
fn v8_a_joining_commit_records_the_conflict() {
    a_joining_commit_records_the_conflict(&V8);
}

#[test]
fn v9_a_joining_commit_records_the_conflict() {
    a_joining_commit_records_the_conflict(&V9);
}

fn a_joining_commit_records_the_conflict(f: &Fixture) {
    let (_d, store) = open(f);
    let db = store.open_db("joined").unwrap();
    assert_eq!(db.heads().unwrap().len(), 1);
    assert_eq!(db.get("x").unwrap().unwrap()["v"], "two");
    assert_eq!(
        db.conflicts("x").unwrap(),
        vec![json!({"_id": "x", "v": "one"})]
    );
    // Its head record (a version-6 snapshot) carries its metadata.
    assert_eq!(db.meta().unwrap()["title"], "Joined room");
    let r = db.verify().unwrap();
    assert!(r.ok(), "{:?}", r.problems);
}

/// Bytes that differ at every position (as `make_fixture` makes them).
fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u32).wrapping_mul(2654435761).to_le_bytes()[1] ^ seed)
        .collect()
}

/// The v9 fixture's "attached" database: a document with two files, one replaced by a later
/// update. The current version reads the new photo from the second file-set and the notes
/// from the first; the first version reads the old photo; everything verifies (file-sets
/// whole, every chunk).
#[test]
fn v9_attached_files_read_back() {
    use std::io::Read;
    let (_d, store) = open(&V9);
    let db = store.open_db("attached").unwrap();
    let read = |r: kiln::FileReader| {
        let mut v = Vec::new();
        let mut r = r;
        r.read_to_end(&mut v).unwrap();
        v
    };
    let files = db.files("vase").unwrap();
    assert_eq!(files.len(), 2);
    assert_eq!(
        (
            files[0].name.as_str(),
            files[0].content_type.as_str(),
            files[0].modified
        ),
        ("notes.txt", "text/plain", 1_700_000_000_001)
    );
    assert_eq!(files[1].name, "photo.jpg");
    assert_ne!(files[0].set, files[1].set);
    assert_eq!(
        read(db.open_file("vase", "photo.jpg").unwrap()),
        pattern(70_000, 2)
    );
    assert_eq!(
        read(db.open_file("vase", "notes.txt").unwrap()),
        b"glazed, 1920s"
    );
    let first = Cid::parse(V9_ATTACHED_FIRST).unwrap();
    let then = db.files_at("vase", &first).unwrap();
    assert_eq!(then[0], files[0]);
    assert_eq!(then[1].set, files[0].set);
    assert_eq!(
        read(db.open_file_at("vase", "photo.jpg", &first).unwrap()),
        pattern(150_000, 1)
    );
    assert_eq!(
        db.open_file("vase", "photo.jpg")
            .unwrap()
            .read_range(65_530, 12)
            .unwrap(),
        pattern(70_000, 2)[65_530..65_542]
    );
    assert_eq!(db.get("vase").unwrap().unwrap()["title"], "Blue vase");
    let r = db.verify().unwrap();
    assert!(r.ok(), "{:?}", r.problems);
    assert_eq!(r.filesets, 2);
}

/// The v5 fixture holds a sealed proposal (side → merged): it opens with the target's key, its
/// message is nowhere in plaintext, and it pins the fork's heads.
#[test]
fn v5_proposal_is_sealed_and_pins_the_fork() {
    let (d, store) = open(&V5);
    let ps = store.proposals(Some("merged"), true).unwrap();
    assert_eq!(ps.len(), 1);
    let p = &ps[0];
    assert_eq!(
        (p.fork.as_str(), p.message.as_str()),
        ("side", "a sealed proposal")
    );
    assert_eq!(p.heads, store.open_db("side").unwrap().heads().unwrap());
    let raw = std::fs::read(d.path().join(format!("proposals/{}.prop", p.id))).unwrap();
    assert_eq!(&raw[..8], b"KILNPROP");
    assert!(!raw.windows(6).any(|w| w == b"sealed"));
    store.review(&p.id).unwrap();
}

/// The v5 fixture: head records and diff files of version 4, each diff file with a salt of
/// its own before its index (its trailer ends "KSLT"), each head file with a salt of its own in
/// its header, no two alike.
#[test]
fn v5_fixture_files_and_logs_have_keys_of_their_own() {
    files_and_logs_have_keys_of_their_own(&V5, 4, 4);
}

/// The same of the v6 fixture (head records version 4, diff files 5).
#[test]
fn v6_fixture_files_and_logs_have_keys_of_their_own() {
    files_and_logs_have_keys_of_their_own(&V6, 4, 5);
}

/// The same of the v7 fixture (head records version 5, diff files 5).
#[test]
fn v7_fixture_files_and_logs_have_keys_of_their_own() {
    files_and_logs_have_keys_of_their_own(&V7, 5, 5);
}

/// The same of the v8 fixture (head records version 6, diff files 6).
#[test]
fn v8_fixture_files_and_logs_have_keys_of_their_own() {
    files_and_logs_have_keys_of_their_own(&V8, 6, 6);
}

/// The same of the v9 fixture (today's formats: head records version 6, diff files 7).
#[test]
fn v9_fixture_files_and_logs_have_keys_of_their_own() {
    assert_eq!(kiln::internals::head::VERSION, 6);
    assert_eq!(kiln::internals::car::VERSION, 7);
    files_and_logs_have_keys_of_their_own(&V9, 6, 7);
}

/// The v9 fixture's compacted file (four transactions, five events) carries a document log
/// that names exactly the events that wrote each id, and a document's history read through
/// it is the one its events give; older fixtures, without logs, give the same through their
/// events.
#[test]
fn v9_compacted_file_carries_a_document_log() {
    let (d, store) = open(&V9);
    let db = store.open_db("fixture").unwrap();
    let info = db.info().unwrap();
    let compacted: Vec<_> = info.files.iter().filter(|f| f.level > 0).collect();
    assert_eq!(compacted.len(), 1);
    let keys = kiln::audit::keys_of(d.path()).unwrap();
    let name = compacted[0].name;
    let hex = name.to_string();
    let bytes = std::fs::read(
        d.path()
            .join("files")
            .join(&hex[..2])
            .join(format!("{hex}.kdf")),
    )
    .unwrap();
    let (key, idx) = keys
        .iter()
        .find_map(|k| {
            Some((
                k,
                kiln::internals::car::verify_file(k, &name, &bytes).ok()?.0,
            ))
        })
        .unwrap();
    assert_eq!(idx.log.len(), 1);
    let mut read = |off: u64, len: usize| Ok(bytes[off as usize..][..len].to_vec());
    let log = kiln::internals::car::verify_log(key, &idx, &mut read).unwrap();
    let ids: Vec<&[u8]> = log.iter().map(|e| e.id.as_slice()).collect();
    assert!(ids.contains(&&b"alpha"[..]) && ids.contains(&&b"bulk-19"[..]));
    // alpha at heights 5 and 1 (newest first), beta at 4 and 2.
    let alpha: Vec<u64> = log
        .iter()
        .filter(|e| e.id == b"alpha")
        .map(|e| e.height())
        .collect();
    assert_eq!(alpha, [5, 1]);
    let beta: Vec<u64> = log
        .iter()
        .filter(|e| e.id == b"beta")
        .map(|e| e.height())
        .collect();
    assert_eq!(beta, [4, 2]);
    let h = db.history("beta", None).unwrap();
    assert_eq!(h.len(), 2);
    assert!(h[0].doc.is_none()); // the delete
    assert_eq!(h[1].doc.as_ref().unwrap()["text"], "héllo wörld");
}

fn files_and_logs_have_keys_of_their_own(f: &Fixture, head_version: u32, file_version: u32) {
    let (d, _store) = open(f);
    let mut salts = std::collections::HashSet::new();
    for db in std::fs::read_dir(d.path().join("dbs")).unwrap() {
        let db = db.unwrap().path();
        let h = std::fs::read(db.join("HEAD")).unwrap();
        assert_eq!(h[8..12], head_version.to_le_bytes(), "{db:?}");
        assert!(
            salts.insert(h[28..60].to_vec()),
            "{db:?}: a head salt repeats"
        );
    }
    let mut files = 0;
    for shard in std::fs::read_dir(d.path().join("files")).unwrap() {
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
            let b = std::fs::read(f.unwrap().path()).unwrap();
            assert_eq!(b[8..12], file_version.to_le_bytes());
            let t = &b[b.len() - 16..];
            assert_eq!(&t[12..], b"KSLT");
            let at = u64::from_le_bytes(t[..8].try_into().unwrap()) as usize;
            assert!(salts.insert(b[at..at + 32].to_vec()), "a file salt repeats");
            files += 1;
        }
    }
    assert!(files > 5);
}

/// The v4 fixture's head records carry its small diffs (written with full durability): with
/// every level-0 file of "fixture" gone, the database still reads whole and verifies, and the
/// files are back under their names.
#[test]
fn v4_head_records_carry_their_small_diffs() {
    head_records_carry_their_small_diffs(&V4);
}

/// The same of the v5 fixture (head records version 4).
#[test]
fn v5_head_records_carry_their_small_diffs() {
    head_records_carry_their_small_diffs(&V5);
}

/// The same of the v6 fixture.
#[test]
fn v6_head_records_carry_their_small_diffs() {
    head_records_carry_their_small_diffs(&V6);
}

/// The same of the v7 fixture.
#[test]
fn v7_head_records_carry_their_small_diffs() {
    head_records_carry_their_small_diffs(&V7);
}

/// The same of the v8 fixture (today's formats).
#[test]
fn v8_head_records_carry_their_small_diffs() {
    head_records_carry_their_small_diffs(&V8);
}

#[test]
fn v9_head_records_carry_their_small_diffs() {
    head_records_carry_their_small_diffs(&V9);
}

fn head_records_carry_their_small_diffs(f: &Fixture) {
    let (d, store) = open(f);
    let db = store.open_db("fixture").unwrap();
    let diffs: Vec<_> = db
        .info()
        .unwrap()
        .files
        .iter()
        .filter(|f| f.level == 0)
        .map(|f| f.name)
        .collect();
    assert_eq!(diffs.len(), 3);
    drop(db);
    drop(store);
    let path = |n: &kiln::FileName| {
        let hex = n.to_string();
        d.path()
            .join("files")
            .join(&hex[..2])
            .join(format!("{hex}.kdf"))
    };
    for n in &diffs {
        std::fs::remove_file(path(n)).unwrap();
    }
    let store = Store::open(d.path()).unwrap();
    let db = store.open_db("fixture").unwrap();
    assert!(db.repairs().is_empty());
    assert_eq!(db.docs(&ListOptions::default()).unwrap().len(), 25);
    // The reads that put the files back say so.
    let mut repaired = db.repairs();
    repaired.sort();
    let mut want = diffs.clone();
    want.sort();
    assert_eq!(repaired, want);
    assert!(db.verify().unwrap().ok());
    assert!(diffs.iter().all(|n| path(n).exists()));
}

/// Diff files are named by the hash their version says: sha2-256 up to version 2, BLAKE3 from
/// version 3 (what this kiln writes).
#[test]
fn file_names_are_the_hash_of_their_version() {
    use sha2::Digest;
    for (f, version) in [
        (&V1, 1u32),
        (&V2, 2),
        (&V3, 3),
        (&V4, 3),
        (&V5, 4),
        (&V6, 5),
        (&V7, 5),
        (&V8, 6),
        (&V9, 7),
    ] {
        let (d, _store) = open(f);
        let mut n = 0;
        for shard in std::fs::read_dir(d.path().join("files")).unwrap() {
            let shard = shard.unwrap().path();
            if !shard.is_dir()
                || shard
                    .file_name()
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .starts_with('.')
            {
                continue;
            }
            for file in std::fs::read_dir(&shard).unwrap() {
                let path = file.unwrap().path();
                let bytes = std::fs::read(&path).unwrap();
                assert_eq!(bytes[8..12], version.to_le_bytes(), "{path:?}");
                let want = if version >= 3 {
                    blake3::hash(&bytes).to_hex().to_string()
                } else {
                    let h: [u8; 32] = sha2::Sha256::digest(&bytes).into();
                    h.iter().map(|b| format!("{b:02x}")).collect()
                };
                assert_eq!(path.file_stem().unwrap().to_str().unwrap(), want);
                n += 1;
            }
        }
        assert!(n > 0, "{}", f.dir);
    }
}

/// A version-1 database gets today's head record on its next commit and keeps everything.
#[test]
fn v1_database_takes_a_commit() {
    let (d, store) = open(&V1);
    let db = store.open_db("fixture").unwrap();
    db.put(&json!({"_id": "new"})).unwrap();
    let head = std::fs::read(d.path().join("dbs/fixture/HEAD")).unwrap();
    assert_eq!(head[8..12], kiln::internals::head::VERSION.to_le_bytes());
    db.put(&json!({"_id": "newer"})).unwrap();
    let db = Store::open(d.path()).unwrap().open_db("fixture").unwrap();
    assert_eq!(db.info().unwrap().docs, 27);
    assert!(db.verify().unwrap().ok());
    // Compacting version-1 files (whose index does not mark tree nodes) into version 2 keeps
    // everything, history included.
    let first = Cid::parse(V1.events[0]).unwrap();
    let before = db.get_at("alpha", &first).unwrap();
    db.compact_full().unwrap();
    assert_eq!(db.info().unwrap().files.len(), 1);
    assert_eq!(db.get_at("alpha", &first).unwrap(), before);
    assert_eq!(db.docs(&ListOptions::default()).unwrap().len(), 27);
    assert_eq!(db.log(None).unwrap().len(), 10);
    let r = db.verify().unwrap();
    assert!(r.ok(), "{:?}", r.problems);
}

/// A head log of an earlier version (the v4 fixture's version 3) is not appended to: the next
/// commit replaces it with a snapshot of today's version (a log with a key of its own);
/// everything reads and verifies throughout.
#[test]
fn an_older_head_log_is_replaced_at_its_next_commit() {
    let (f, old) = (&V4, 3u32);
    let (d, store) = open(f);
    let hp = d.path().join("dbs/fixture/HEAD");
    let before = std::fs::read(&hp).unwrap();
    assert_eq!(before[8..12], old.to_le_bytes());
    let db = store.open_db("fixture").unwrap();
    db.put(&json!({"_id": "new", "n": 1})).unwrap();
    let after = std::fs::read(&hp).unwrap();
    assert_eq!(after[8..12], kiln::internals::head::VERSION.to_le_bytes());
    let db = Store::open(d.path()).unwrap().open_db("fixture").unwrap();
    assert_eq!(db.get("new").unwrap().unwrap()["n"], 1);
    db.put(&json!({"_id": "newer"})).unwrap();
    db.compact_full().unwrap();
    let db = Store::open(d.path()).unwrap().open_db("fixture").unwrap();
    assert_eq!(db.info().unwrap().docs, 27);
    let r = db.verify().unwrap();
    assert!(r.ok(), "{:?}", r.problems);
}

fn reads_and_verifies(f: &Fixture) {
    let [first_event, second_event, head_event] = f.events;
    let (_d, store) = open(f);
    let mut names = vec!["empty", "fixture"];
    if f.dir != "v1" {
        names.insert(0, "cut");
        names.insert(3, "merged");
        names.push("purged");
        names.push("side");
        // "merged": x changed on both sides (a conflict), y taken with --only, then merged.
        let m = store.open_db("merged").unwrap();
        assert_eq!(m.get("y").unwrap().unwrap()["v"], "side");
        let x = m.get("x").unwrap().unwrap()["v"].clone();
        let lost = m.conflicts("x").unwrap();
        assert_eq!(lost.len(), 1);
        assert_ne!(lost[0]["v"], x);
        assert_eq!(m.heads().unwrap().len(), 1);
        assert_eq!(m.log(Some(1)).unwrap()[0].note, "merged by the fixture");
        assert!(m.verify().unwrap().ok());
        // Already merged: nothing new.
        let side = store.open_db("side").unwrap();
        assert_eq!(m.merge_from(&side, None).unwrap().events, 0);
        // "cut": puts k=0..4 of c0,c1,c2,c0,c1, history dropped before k=2, then c9.
        let c = store.open_db("cut").unwrap();
        let at = Cid::parse(f.cut_at).unwrap();
        assert_eq!(c.log(None).unwrap().len(), 4);
        assert_eq!(c.log(None).unwrap().last().unwrap().cid, at);
        assert_eq!(c.get_at("c0", &at).unwrap().unwrap()["k"], 0);
        assert_eq!(c.get_at("c2", &at).unwrap().unwrap()["k"], 2);
        assert_eq!(c.get("c1").unwrap().unwrap()["k"], 4);
        assert_eq!(c.get("c9").unwrap().unwrap()["k"], 9);
        assert_eq!(c.changes(Some(&[at])).unwrap().len(), 3); // c0, c1, c9
        let r = c.verify().unwrap();
        assert!(r.ok(), "{:?}", r.problems);
        let p = store.open_db("purged").unwrap();
        assert_eq!(p.get("keep").unwrap().unwrap()["v"], 1);
        assert_eq!(p.get("after").unwrap().unwrap()["v"], 2);
        assert_eq!(p.get("gone").unwrap(), None);
        let log = p.log(None).unwrap();
        assert_eq!(log.len(), 5);
        // The second write of "gone", read at its event: purged, not missing.
        let second = &log[3];
        assert_eq!(second.ops, vec![("gone".to_owned(), false)]);
        assert!(matches!(
            p.get_at("gone", &second.cid),
            Err(kiln::Error::Purged(..))
        ));
        let r = p.verify().unwrap();
        assert!(r.ok(), "{:?}", r.problems);
        assert_eq!(r.purged, 2);
    }
    if !["v1", "v2", "v3", "v4", "v5"].contains(&f.dir) {
        names.insert(4, "paged");
    }
    if matches!(f.dir, "v8" | "v9" | "store-v2") {
        names.insert(3, "joined");
    }
    if matches!(f.dir, "v9" | "store-v2") {
        names.insert(0, "attached");
    }
    assert_eq!(store.list().unwrap(), names);
    let db = store.open_db("fixture").unwrap();
    let info = db.info().unwrap();
    let root = if matches!(f.dir, "v7" | "v8" | "v9" | "store-v2") {
        ROOT_BOUNDED
    } else {
        ROOT
    };
    assert_eq!(info.root.unwrap().to_string(), root);
    assert_eq!((info.docs, info.events), (25, 8));
    assert_eq!(info.heads, vec![Cid::parse(head_event).unwrap()]);
    assert!(info.files.iter().any(|f| f.level == 1) && info.files.iter().any(|f| f.level == 0));
    let r = db.verify().unwrap();
    assert!(r.ok(), "{:?}", r.problems);

    assert_eq!(
        db.get("alpha").unwrap().unwrap(),
        json!({"_id": "alpha", "n": 2})
    );
    assert_eq!(db.get("beta").unwrap(), None);
    assert_eq!(
        db.get("bulk-07").unwrap().unwrap(),
        json!({"_id": "bulk-07", "i": 7})
    );
    assert_eq!(
        db.get("gamma").unwrap().unwrap()["big"]
            .as_str()
            .unwrap()
            .len(),
        20_000
    );
    assert_eq!(db.get("left").unwrap().unwrap()["side"], "l");
    assert_eq!(db.get("right").unwrap().unwrap()["side"], "r");
    // The concurrent writes of "both" (equal heights) resolve by value CID, the same everywhere.
    assert_eq!(db.get("both").unwrap().unwrap()["side"], "l");
    let first = Cid::parse(first_event).unwrap();
    assert_eq!(
        db.get_at("alpha", &first).unwrap().unwrap(),
        json!({"_id": "alpha", "n": 1, "tags": ["a", "b"], "nested": {"x": 1.5, "y": null, "z": true}})
    );
    // A document's history: through the document log (v9 on) or the files' events.
    let h = db.history("alpha", None).unwrap();
    assert_eq!(h.len(), 2);
    assert_eq!(h[0].doc.as_ref().unwrap()["n"], 2);
    assert_eq!(
        (h[1].event, h[1].doc.as_ref().unwrap()["n"].clone()),
        (first, json!(1))
    );
    assert_eq!(
        db.get_at("beta", &Cid::parse(second_event).unwrap())
            .unwrap()
            .unwrap()["text"],
        "héllo wörld"
    );
    assert_eq!(db.get_at("beta", &first).unwrap(), None);
    let log = db.log(None).unwrap();
    assert_eq!(log.len(), 8);
    assert_eq!(log[0].parents.len(), 2);
    assert_eq!(log[7].cid, first);
    assert_eq!(
        db.changes(Some(&[Cid::parse(second_event).unwrap()]))
            .unwrap()
            .len(),
        26
    ); // 20 bulk + beta (deleted) + alpha, left, right, both, gamma
    assert_eq!(db.docs(&ListOptions::default()).unwrap().len(), 25);
    assert_eq!(store.open_db("empty").unwrap().info().unwrap().docs, 0);
}

/// The same operations today give the same tree root CID: document encoding, tree node
/// encoding and node boundaries are unchanged, for a new database (`Bounded`, as in the v7
/// fixture) and for a database created before head records of version 5 (`Mod16`: the v6
/// fixture's "empty" database, which keeps that shape), as in fixtures v1 to v6.
#[test]
fn same_content_gives_the_fixture_root() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let db = store.create(Some("again")).unwrap();
    write_the_fixture_content(&db);
    assert_eq!(db.info().unwrap().root.unwrap().to_string(), ROOT_BOUNDED);
    let (old_dir, old) = open(&V6);
    let db = old.open_db("empty").unwrap();
    write_the_fixture_content(&db);
    assert_eq!(db.info().unwrap().root.unwrap().to_string(), ROOT);
    let r = db.verify().unwrap();
    assert!(r.ok(), "{:?}", r.problems);
    // Reopened: its deferred tree is rebuilt in its own shape.
    drop(db);
    let db = Store::open(old_dir.path())
        .unwrap()
        .open_db("empty")
        .unwrap();
    db.put(&json!({"_id": "more", "n": 3})).unwrap();
    assert_eq!(db.get("alpha").unwrap().unwrap()["n"], 2);
    let r = db.verify().unwrap();
    assert!(r.ok(), "{:?}", r.problems);
}

/// What make_fixture writes to "fixture", in the same transactions.
fn write_the_fixture_content(db: &kiln::Database) {
    db.put(&json!({"_id": "alpha", "n": 1, "tags": ["a", "b"], "nested": {"x": 1.5, "y": null, "z": true}})).unwrap();
    db.put(&json!({"_id": "beta", "n": -2, "text": "héllo wörld"}))
        .unwrap();
    db.bulk(
        &(0..20)
            .map(|i| json!({"_id": format!("bulk-{i:02}"), "i": i}))
            .collect::<Vec<_>>(),
    )
    .unwrap();
    db.del("beta").unwrap();
    db.put(&json!({"_id": "alpha", "n": 2})).unwrap();
    let mut t1 = db.transaction().unwrap();
    let mut t2 = db.transaction().unwrap();
    t1.put(&json!({"_id": "left", "side": "l"})).unwrap();
    t1.put(&json!({"_id": "both", "side": "l"})).unwrap();
    t2.put(&json!({"_id": "right", "side": "r"})).unwrap();
    t2.put(&json!({"_id": "both", "side": "r"})).unwrap();
    t2.commit().unwrap(); // the other order this time
    t1.commit().unwrap();
    db.put(&json!({"_id": "gamma", "big": "x".repeat(20_000)}))
        .unwrap();
}

/// Databases of the two tree shapes merge both ways (issue 14): an old database (`Mod16`,
/// from the v6 fixture) into a new one (`Bounded`) and back. Neither takes the other's heads
/// as they are (a fast-forward would name a tree of the other shape): a merge event names a
/// tree of the target's own shape. Everything reads, verifies, and the history before a merged
/// event can be dropped (its tree root, of the other shape, is recognised).
#[test]
fn databases_of_the_two_tree_shapes_merge_both_ways() {
    let (d, store) = open(&V6);
    let old = store.open_db("fixture").unwrap();
    let new = store.create(Some("new")).unwrap();
    // The new database has nothing: a merge into it would be a fast-forward if shapes agreed.
    let r = new.merge_from(&old, None).unwrap();
    assert!(!r.fast_forward);
    assert_eq!(new.info().unwrap().docs, 25);
    new.put(&json!({"_id": "from-new", "v": 1})).unwrap();
    let r = old.merge_from(&new, None).unwrap();
    assert!(!r.fast_forward);
    for db in [&old, &new] {
        assert_eq!(db.get("alpha").unwrap().unwrap()["n"], 2);
        let docs = db.docs(&ListOptions::default()).unwrap();
        assert_eq!(docs.len(), 26, "{}", db.name());
        let r = db.verify().unwrap();
        assert!(r.ok(), "{}: {:?}", db.name(), r.problems);
    }
    assert_eq!(old.get("from-new").unwrap().unwrap()["v"], 1);
    // Reopened, and the new database's history dropped before the old database's last event,
    // which it merged: that event's root is a `Mod16` tree, the state kept there is checked
    // against it.
    let store = Store::open(d.path()).unwrap();
    let new = store.open_db("new").unwrap();
    let theirs = Cid::parse(V6.events[2]).unwrap();
    new.drop_history_before(&theirs).unwrap();
    assert_eq!(
        new.get_at("gamma", &theirs).unwrap().unwrap()["big"]
            .as_str()
            .unwrap()
            .len(),
        20_000
    );
    assert_eq!(new.get("bulk-07").unwrap().unwrap()["i"], 7);
    let r = new.verify().unwrap();
    assert!(r.ok(), "{:?}", r.problems);
}

/// Found by review (issue 14): merges between databases of the two shapes must settle and
/// name no redundant parents. Merging back and forth with no writes changes nothing after the
/// first round each way (before, each side answered the other's merge event with one of its
/// own, forever); a merge whose target is an ancestor of the source names only the source's
/// heads (before, also the target's: dropping history before one of them left the merge event
/// naming a dropped event, which `verify` reported missing).
#[test]
fn merges_across_tree_shapes_settle_and_name_no_redundant_parents() {
    let (_d, store) = open(&V6);
    let old = store.open_db("fixture").unwrap();
    let new = store.create(Some("new")).unwrap();
    new.merge_from(&old, None).unwrap();
    let m = new.heads().unwrap()[0];
    new.put(&json!({"_id": "n1"})).unwrap();
    // `old` is an ancestor of `new`: its merge event's only parent is `new`'s head.
    old.merge_from(&new, None).unwrap();
    let e = old.log(Some(1)).unwrap()[0].clone();
    assert_eq!(e.parents, new.heads().unwrap());
    // Back and forth without writes: nothing changes.
    let counts = |db: &kiln::Database| db.info().unwrap().events;
    let (a, b) = (counts(&old), counts(&new));
    for _ in 0..3 {
        assert_eq!(new.merge_from(&old, None).unwrap().events, 0);
        assert_eq!(old.merge_from(&new, None).unwrap().events, 0);
    }
    assert_eq!((counts(&old), counts(&new)), (a, b));
    // A write on either side still travels.
    old.put(&json!({"_id": "o1"})).unwrap();
    new.merge_from(&old, None).unwrap();
    assert!(new.get("o1").unwrap().is_some());
    // History dropped before `new`'s first merge, on `old`: everything verifies.
    old.drop_history_before(&m).unwrap();
    for db in [&old, &new] {
        let r = db.verify().unwrap();
        assert!(r.ok(), "{}: {:?}", db.name(), r.problems);
        assert_eq!(db.get("n1").unwrap().unwrap()["_id"], "n1");
    }
}
