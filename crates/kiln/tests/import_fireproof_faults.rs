//! Review of the Fireproof import: hostile, damaged and legitimate-but-unusual ledgers. Most
//! ledgers here are synthetic unencrypted ("insecure") file-gateway stores built block by block
//! (dag-cbor, CARv1, meta/main.json as Fireproof 0.24 writes them); a few start from the
//! checked-in fixtures. Tests that could crash, hang or kill the process run the import in a
//! child process (this test binary re-run on one test) with a time limit.

mod fireproof_common;
use fireproof_common::{copy_dir, fixtures};

use kiln::import::fireproof::{import_fireproof, ImportOptions, ImportReport};
use kiln::Store;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------
// dag-cbor, CIDs and bases

/// A dag-cbor value to encode.
#[derive(Clone)]
enum V {
    Null,
    Bool(bool),
    Int(i64),
    Str(String),
    Bytes(Vec<u8>),
    List(Vec<V>),
    Map(Vec<(String, V)>),
    Link(Cid),
}

fn s(x: &str) -> V {
    V::Str(x.to_owned())
}

fn m(entries: Vec<(&str, V)>) -> V {
    V::Map(
        entries
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
    )
}

fn head(out: &mut Vec<u8>, major: u8, n: u64) {
    let mj = major << 5;
    match n {
        0..=23 => out.push(mj | n as u8),
        24..=0xff => out.extend([mj | 24, n as u8]),
        0x100..=0xffff => {
            out.push(mj | 25);
            out.extend((n as u16).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(mj | 26);
            out.extend((n as u32).to_be_bytes());
        }
        _ => {
            out.push(mj | 27);
            out.extend(n.to_be_bytes());
        }
    }
}

fn enc(v: &V, out: &mut Vec<u8>) {
    match v {
        V::Null => out.push(0xf6),
        V::Bool(b) => out.push(if *b { 0xf5 } else { 0xf4 }),
        V::Int(i) if *i >= 0 => head(out, 0, *i as u64),
        V::Int(i) => head(out, 1, (-1 - *i) as u64),
        V::Str(x) => {
            head(out, 3, x.len() as u64);
            out.extend(x.as_bytes());
        }
        V::Bytes(b) => {
            head(out, 2, b.len() as u64);
            out.extend(b);
        }
        V::List(l) => {
            head(out, 4, l.len() as u64);
            for x in l {
                enc(x, out);
            }
        }
        V::Map(e) => {
            // dag-cbor's order: shorter keys first, then bytewise.
            let mut e: Vec<&(String, V)> = e.iter().collect();
            e.sort_by(|a, b| (a.0.len(), &a.0).cmp(&(b.0.len(), &b.0)));
            head(out, 5, e.len() as u64);
            for (k, x) in e {
                enc(&V::Str(k.clone()), out);
                enc(x, out);
            }
        }
        V::Link(c) => {
            out.extend([0xd8, 0x2a]);
            let mut b = vec![0u8];
            b.extend(&c.0);
            enc(&V::Bytes(b), out);
        }
    }
}

fn cbor(v: &V) -> Vec<u8> {
    let mut out = Vec::new();
    enc(v, &mut out);
    out
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A binary CIDv1 (sha2-256).
#[derive(Clone, PartialEq, Eq, Debug)]
struct Cid(Vec<u8>);

const DAG_CBOR: u64 = 0x71;
const RAW: u64 = 0x55;
const FP_CAR: u64 = 0x18;

fn cid_of(codec: u64, data: &[u8]) -> Cid {
    let mut b = Vec::new();
    for v in [1, codec, 0x12, 32] {
        varint(&mut b, v);
    }
    b.extend(Sha256::digest(data));
    Cid(b)
}

impl std::fmt::Display for Cid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const A: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
        let mut out = String::from("b");
        let (mut acc, mut bits) = (0u32, 0);
        for &x in &self.0 {
            acc = (acc << 8) | u32::from(x);
            bits += 8;
            while bits >= 5 {
                bits -= 5;
                out.push(A[((acc >> bits) & 31) as usize] as char);
            }
        }
        if bits > 0 {
            out.push(A[((acc << (5 - bits)) & 31) as usize] as char);
        }
        f.write_str(&out)
    }
}

fn base64_pad(b: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for ch in b.chunks(3) {
        let n = (u32::from(ch[0]) << 16)
            | (u32::from(*ch.get(1).unwrap_or(&0)) << 8)
            | u32::from(*ch.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= ch.len() {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// A synthetic Fireproof ledger (unencrypted file gateway)

/// CARv1 bytes: `roots`, then `blocks`.
fn car_bytes(roots: &[Cid], blocks: &[(Cid, Vec<u8>)]) -> Vec<u8> {
    let header = cbor(&m(vec![
        (
            "roots",
            V::List(roots.iter().cloned().map(V::Link).collect()),
        ),
        ("version", V::Int(1)),
    ]));
    let mut out = Vec::new();
    varint(&mut out, header.len() as u64);
    out.extend(&header);
    for (c, d) in blocks {
        varint(&mut out, (c.0.len() + d.len()) as u64);
        out.extend(&c.0);
        out.extend(d);
    }
    out
}

/// The blocks of one ledger, written as one commit CAR (plus file CARs) and its meta.
#[derive(Default, Clone)]
struct Ledger {
    blocks: Vec<(Cid, Vec<u8>)>,
    /// File CARs: (their CID, their bytes).
    file_cars: Vec<(Cid, Vec<u8>)>,
}

impl Ledger {
    fn block(&mut self, v: &V) -> Cid {
        let b = cbor(v);
        let c = cid_of(DAG_CBOR, &b);
        self.blocks.push((c.clone(), b));
        c
    }

    /// A document value block `{doc: {...fields, _id}}`.
    fn doc(&mut self, id: &str, fields: Vec<(&str, V)>) -> Cid {
        let mut f: Vec<(String, V)> = fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        f.push(("_id".into(), s(id)));
        self.block(&m(vec![("doc", V::Map(f))]))
    }

    /// A clock event: a put of one key, or a batch of several.
    fn event(&mut self, parents: &[&Cid], ops: &[(&str, &Cid)]) -> Cid {
        let op = |k: &str, v: &Cid| {
            m(vec![
                ("type", s("put")),
                ("key", s(k)),
                ("value", V::Link(v.clone())),
            ])
        };
        let data = if ops.len() == 1 {
            op(ops[0].0, ops[0].1)
        } else {
            m(vec![
                ("type", s("batch")),
                ("ops", V::List(ops.iter().map(|(k, v)| op(k, v)).collect())),
            ])
        };
        self.block(&m(vec![
            ("data", data),
            (
                "parents",
                V::List(parents.iter().map(|p| V::Link((*p).clone())).collect()),
            ),
        ]))
    }

    /// One file CAR holding `files` (one root each, as Fireproof writes a put's new files);
    /// returns its CID and the files' `_files` entries' CIDs.
    fn file_car(&mut self, files: &[&[u8]]) -> (Cid, Vec<Cid>) {
        let blocks: Vec<(Cid, Vec<u8>)> =
            files.iter().map(|f| (cid_of(RAW, f), f.to_vec())).collect();
        let roots: Vec<Cid> = blocks.iter().map(|(c, _)| c.clone()).collect();
        let bytes = car_bytes(&roots, &blocks);
        let c = cid_of(FP_CAR, &bytes);
        self.file_cars.push((c.clone(), bytes));
        (c, roots)
    }

    /// Writes the ledger `name` under `root/.fireproof/v0.19/`, its clock's heads `heads`.
    fn write(&self, root: &Path, name: &str, heads: &[&Cid]) -> PathBuf {
        self.write_with(root, name, heads, true)
    }

    /// [`Ledger::write`], the commit CAR's root (header) block left out unless `header`.
    fn write_with(&self, root: &Path, name: &str, heads: &[&Cid], with_header: bool) -> PathBuf {
        let dir = root.join(".fireproof/v0.19").join(name);
        let data = dir.join("data");
        let meta = dir.join("meta");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::create_dir_all(&meta).unwrap();
        std::fs::create_dir_all(root.join(".fireproof/keybag")).unwrap();
        let header = cbor(&m(vec![(
            "fp",
            m(vec![
                ("cars", V::List(vec![])),
                ("compact", V::List(vec![])),
                (
                    "meta",
                    m(vec![(
                        "head",
                        V::List(heads.iter().map(|h| V::Link((*h).clone())).collect()),
                    )]),
                ),
            ]),
        )]));
        let hc = cid_of(DAG_CBOR, &header);
        let mut blocks = vec![(hc.clone(), header)];
        if !with_header {
            blocks.clear();
        }
        blocks.extend(self.blocks.iter().cloned());
        let car = car_bytes(&[hc], &blocks);
        let carc = cid_of(FP_CAR, &car);
        std::fs::write(data.join(format!("{carc}.car")), &car).unwrap();
        for (c, b) in &self.file_cars {
            std::fs::write(data.join(c.to_string()), b).unwrap();
        }
        let db_meta = format!(r#"{{"cars":[{{"/":"{carc}"}}]}}"#);
        let ev = cbor(&m(vec![
            ("data", m(vec![("dbMeta", V::Bytes(db_meta.into_bytes()))])),
            ("parents", V::List(vec![])),
        ]));
        let evc = cid_of(DAG_CBOR, &ev);
        let main = format!(
            r#"[{{"cid":"{evc}","parents":[],"data":"M{}"}}]"#,
            base64_pad(&ev)
        );
        std::fs::write(meta.join("main.json"), main).unwrap();
        dir
    }
}

/// A `_files` entry as Fireproof stores it.
fn file_meta(cid: &Cid, car: &Cid, size: usize, ty: &str) -> V {
    m(vec![
        ("car", V::List(vec![V::Link(car.clone())])),
        ("cid", V::Link(cid.clone())),
        ("size", V::Int(size as i64)),
        ("type", s(ty)),
        ("lastModified", V::Int(1_700_000_000_000)),
    ])
}

fn import_into(store: &Store, dir: &Path, ledger: &str) -> kiln::Result<ImportReport> {
    import_fireproof(
        store,
        dir,
        ImportOptions {
            ledger: Some(ledger.into()),
            ..ImportOptions::default()
        },
    )
}

// ---------------------------------------------------------------------------------------
// Child processes, for what may crash, hang or exit

const CHILD: &str = "KILN_FP_REVIEW_CHILD";
const CHILD_DIR: &str = "KILN_FP_REVIEW_DIR";

fn in_child() -> bool {
    std::env::var_os(CHILD).is_some()
}

/// Runs test `name` of this binary alone in a child process; `None` when it did not finish
/// within `limit` (it is killed then).
fn run_child(
    name: &str,
    dir: Option<&Path>,
    limit: Duration,
    env: &[(&str, &str)],
) -> Option<std::process::Output> {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.envs(env.iter().copied());
    cmd.args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(d) = dir {
        cmd.env(CHILD_DIR, d);
    }
    let mut child = cmd.spawn().unwrap();
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return Some(child.wait_with_output().unwrap());
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn describe(o: &Option<std::process::Output>) -> String {
    match o {
        None => "did not finish in time (killed)".into(),
        Some(o) => format!(
            "{}\n--- stdout\n{}\n--- stderr\n{}",
            o.status,
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .rev()
                .take(15)
                .collect::<Vec<_>>()
                .join("\n"),
            String::from_utf8_lossy(&o.stderr)
                .lines()
                .rev()
                .take(15)
                .collect::<Vec<_>>()
                .join("\n")
        ),
    }
}

// ---------------------------------------------------------------------------------------
// Tests

/// Two writers: A writes a1, B writes b1 (both on x); A syncs B's b1 and writes a2 (parents
/// a1, b1) while B, not yet synced, writes b2 on b1; then they sync: heads a2 and b2. A
/// perfectly ordinary history, but when b2's CID sorts before a2's the importer replays b2
/// first, and then a2's parents (a1, b1) are no longer kiln's heads (a1, b2):
/// `transaction_on` refuses ("a transaction on several events that are not the current
/// heads") and the whole import fails.
#[test]
fn a_merge_whose_parent_branch_went_on_is_imported() {
    let mut n = 0;
    let (l, a2, b2) = loop {
        let mut l = Ledger::default();
        let x = l.doc("x", vec![("v", V::Int(0))]);
        let x = l.event(&[], &[("x", &x)]);
        let a1v = l.doc("a1", vec![("v", V::Int(1))]);
        let a1 = l.event(&[&x], &[("a1", &a1v)]);
        let b1v = l.doc("b1", vec![("v", V::Int(1))]);
        let b1 = l.event(&[&x], &[("b1", &b1v)]);
        let a2v = l.doc("a2", vec![("v", V::Int(2))]);
        let a2 = l.event(&[&a1, &b1], &[("a2", &a2v)]);
        let b2v = l.doc("b2", vec![("v", V::Int(n))]);
        let b2 = l.event(&[&b1], &[("b2", &b2v)]);
        if b2.to_string() < a2.to_string() {
            break (l, a2, b2);
        }
        n += 1;
    };
    let src = tempfile::tempdir().unwrap();
    l.write(src.path(), "sync", &[&a2, &b2]);
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(d.path()).unwrap();
    let r = import_into(&store, src.path(), "sync");
    let r = r.unwrap_or_else(|e| panic!("a two-writer history fails to import: {e}"));
    assert_eq!(r.heads.len(), 2);
    let db = store.open_db("sync").unwrap();
    for id in ["x", "a1", "b1", "a2", "b2"] {
        assert!(db.get(id).unwrap().is_some(), "{id}");
    }
}

/// Three writers branch from x; A and B sync and A writes m (parents a, b); C has not
/// synced. Heads: m and c. Whatever the CIDs, m's parents are two of kiln's three heads when
/// it is imported: refused, the import fails.
#[test]
fn a_merge_of_two_of_three_branches_is_imported() {
    let mut l = Ledger::default();
    let x = l.doc("x", vec![]);
    let x = l.event(&[], &[("x", &x)]);
    let mut br = Vec::new();
    for k in ["a", "b", "c"] {
        let v = l.doc(k, vec![]);
        br.push(l.event(&[&x], &[(k, &v)]));
    }
    let mv = l.doc("m", vec![]);
    let me = l.event(&[&br[0], &br[1]], &[("m", &mv)]);
    let src = tempfile::tempdir().unwrap();
    l.write(src.path(), "three", &[&me, &br[2]]);
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(d.path()).unwrap();
    let r = import_into(&store, src.path(), "three");
    r.unwrap_or_else(|e| panic!("a three-writer history fails to import: {e}"));
    let db = store.open_db("three").unwrap();
    for id in ["x", "a", "b", "c", "m"] {
        assert!(db.get(id).unwrap().is_some(), "{id}");
    }
}

/// The ledger's head event is not in any file (its CAR names it, the block is gone): every
/// document is unreachable, and the import "succeeds" with an empty database instead of
/// reporting the damage.
#[test]
fn a_head_event_that_is_missing_is_damage_not_an_empty_ledger() {
    let mut l = Ledger::default();
    let a = l.doc("a", vec![("v", V::Int(1))]);
    let e1 = l.event(&[], &[("a", &a)]);
    let b = l.doc("b", vec![("v", V::Int(2))]);
    let e2 = l.event(&[&e1], &[("b", &b)]);
    // The head's block is dropped from the file.
    l.blocks.retain(|(c, _)| *c != e2);
    let src = tempfile::tempdir().unwrap();
    l.write(src.path(), "nohead", &[&e2]);
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(d.path()).unwrap();
    match import_into(&store, src.path(), "nohead") {
        Err(kiln::Error::Corrupt { .. }) => {}
        Err(e) => panic!("an error, but not reported as damage: {e:?}"),
        Ok(r) => panic!("imported as an empty database ({} documents)", r.documents),
    }
    assert!(store.list().unwrap().is_empty());
}

/// Two heads with no common ancestor (two root events): the replay's search for their
/// ancestor never ends (each chain keeps repeating its root; only a 50-million-step cap
/// would stop it, and each step rescans the chains: quadratic). It should fail at once.
#[test]
fn heads_without_a_common_ancestor_fail_promptly() {
    const NAME: &str = "heads_without_a_common_ancestor_fail_promptly";
    if in_child() {
        let mut l = Ledger::default();
        let a = l.doc("a", vec![]);
        let ea = l.event(&[], &[("a", &a)]);
        let b = l.doc("b", vec![]);
        let eb = l.event(&[], &[("b", &b)]);
        let src = tempfile::tempdir().unwrap();
        l.write(src.path(), "roots", &[&ea, &eb]);
        let d = tempfile::tempdir().unwrap();
        let store = Store::open(d.path()).unwrap();
        let r = import_into(&store, src.path(), "roots");
        assert!(r.is_err(), "two unrelated roots imported?");
        return;
    }
    let o = run_child(NAME, None, Duration::from_secs(20), &[]);
    assert!(
        o.as_ref().is_some_and(|o| o.status.success()),
        "{}",
        describe(&o)
    );
}

/// Merges nested in merges (each sync round of two devices: A writes once, B twice, then a
/// merge): pail's common-ancestor search recurses into every merge it steps over, and the
/// Rust copy (`replay::common_ancestor` → `ancestor_candidate`) recurses on the machine stack,
/// ~600 bytes per merge in the history. Enough merges overflow the stack: the process aborts
/// (no error, no clean-up: the half-imported database stays). The child runs with a 512 KiB
/// thread stack so that 1,500 rounds (~5 s) are enough; with the default 2 MiB test-thread
/// stack ~3,500 rounds overflow, with the CLI's 8 MiB main thread ~14,000. (Each merge's
/// replay also walks all of it again: 2,000 rounds take 15 s, quadratic.)
#[test]
fn nested_merges_do_not_overflow_the_stack() {
    const NAME: &str = "nested_merges_do_not_overflow_the_stack";
    if in_child() {
        let levels: usize = std::env::var("KILN_FP_REVIEW_LEVELS")
            .ok()
            .and_then(|x| x.parse().ok())
            .unwrap_or(1_500);
        let mut l = Ledger::default();
        let v = l.doc("k", vec![]);
        let mut prev = l.event(&[], &[("k", &v)]);
        for i in 0..levels {
            let va = l.doc("a", vec![("i", V::Int(i as i64))]);
            let a = l.event(&[&prev], &[("a", &va)]);
            let vb = l.doc("b", vec![("i", V::Int(i as i64))]);
            let b1 = l.event(&[&prev], &[("b", &vb)]);
            let vc = l.doc("c", vec![("i", V::Int(i as i64))]);
            let b2 = l.event(&[&b1], &[("c", &vc)]);
            let vm = l.doc("m", vec![("i", V::Int(i as i64))]);
            prev = l.event(&[&a, &b2], &[("m", &vm)]);
        }
        let src = tempfile::tempdir().unwrap();
        l.write(src.path(), "ladder", &[&prev]);
        let d = tempfile::tempdir().unwrap();
        let store = Store::open(d.path()).unwrap();
        let t = Instant::now();
        let r = import_into(&store, src.path(), "ladder");
        println!(
            "{levels} levels: {:?} in {:?}",
            r.as_ref().map(|r| r.events),
            t.elapsed()
        );
        return;
    }
    let o = run_child(
        NAME,
        None,
        Duration::from_secs(120),
        &[("RUST_MIN_STACK", "524288")],
    );
    assert!(
        o.as_ref().is_some_and(|o| o.status.success()),
        "{}",
        describe(&o)
    );
}

/// pail takes ids of up to 4096 bytes (printable ASCII), kiln at most 1024: such a document
/// cannot come over. The import fails naming it, and leaves nothing (kiln's limit, documented).
#[test]
fn an_id_fireproof_accepts_imports() {
    let id = "k".repeat(2000);
    let mut l = Ledger::default();
    let v = l.doc(&id, vec![("v", V::Int(1))]);
    let e = l.event(&[], &[(&id, &v)]);
    let src = tempfile::tempdir().unwrap();
    l.write(src.path(), "longid", &[&e]);
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(d.path()).unwrap();
    let e = import_into(&store, src.path(), "longid").unwrap_err();
    assert!(matches!(e, kiln::Error::InvalidDocument(_)), "{e}");
    assert!(
        e.to_string().contains("kkkkkkkk"),
        "names the document: {e}"
    );
    assert!(store.list().unwrap().is_empty());
}

/// Fireproof names files with any string: `_files: {"photos/cat.txt": …}` is fine there;
/// kiln refuses '/' (and '\\', control characters, more than 255 bytes, "", "." and "..")
/// and the whole import fails on it.
#[test]
fn a_file_name_kiln_refuses_does_not_fail_the_import() {
    let mut l = Ledger::default();
    let bytes = b"meow".as_slice();
    let (car, cids) = l.file_car(&[bytes]);
    let v = l.doc(
        "pet",
        vec![(
            "_files",
            m(vec![(
                "photos/cat.txt",
                file_meta(&cids[0], &car, bytes.len(), "text/plain"),
            )]),
        )],
    );
    let e = l.event(&[], &[("pet", &v)]);
    let src = tempfile::tempdir().unwrap();
    l.write(src.path(), "names", &[&e]);
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(d.path()).unwrap();
    let r = import_into(&store, src.path(), "names");
    r.unwrap_or_else(|e| panic!("a file named with '/' fails the import: {e}"));
    let db = store.open_db("names").unwrap();
    let files = db.files("pet").unwrap();
    assert_eq!(files.len(), 1);
    assert_eq!(files[0].size, 4);
}

/// `_files: {a, public-a}` and `_publicFiles: {a}`: the public `a` is renamed `public-a`,
/// which the private `public-a` already holds; one of them silently replaces the other
/// (the document ends with two files of three, and `fp_publicFiles` names a private file).
#[test]
fn a_public_file_renamed_onto_a_private_name_loses_nothing() {
    let mut l = Ledger::default();
    let (f1, f2, f3) = (b"one".as_slice(), b"two!".as_slice(), b"three".as_slice());
    let (car, c) = l.file_car(&[f1, f2, f3]);
    let v = l.doc(
        "d",
        vec![
            (
                "_files",
                m(vec![
                    ("a", file_meta(&c[0], &car, f1.len(), "text/plain")),
                    ("public-a", file_meta(&c[1], &car, f2.len(), "text/plain")),
                ]),
            ),
            (
                "_publicFiles",
                m(vec![("a", file_meta(&c[2], &car, f3.len(), "text/plain"))]),
            ),
        ],
    );
    let e = l.event(&[], &[("d", &v)]);
    let src = tempfile::tempdir().unwrap();
    l.write(src.path(), "pub", &[&e]);
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(d.path()).unwrap();
    import_into(&store, src.path(), "pub").unwrap();
    let db = store.open_db("pub").unwrap();
    let mut sizes: Vec<u64> = db.files("d").unwrap().iter().map(|f| f.size).collect();
    sizes.sort();
    assert_eq!(sizes, vec![3, 4, 5], "{:?}", db.get("d").unwrap());
}

/// An unencrypted file CAR whose header is 1699 bytes long (a put of 41 new files: one root
/// each) starts with the varint byte 0xa3, which `car::is_envelope` takes for an encrypted
/// envelope: the file "is not an encryption envelope" and the import fails.
#[test]
fn an_unencrypted_file_car_starting_with_0xa3_is_read() {
    let mut l = Ledger::default();
    let files: Vec<Vec<u8>> = (0..41)
        .map(|i| format!("file number {i}").into_bytes())
        .collect();
    let refs: Vec<&[u8]> = files.iter().map(Vec::as_slice).collect();
    let (car, cids) = l.file_car(&refs);
    assert_eq!(
        l.file_cars[0].1[0], 0xa3,
        "the CAR starts as an envelope would"
    );
    let entries: Vec<(String, V)> = cids
        .iter()
        .zip(&files)
        .enumerate()
        .map(|(i, (c, f))| {
            (
                format!("f{i}.txt"),
                file_meta(c, &car, f.len(), "text/plain"),
            )
        })
        .collect();
    let v = l.doc("album", vec![("_files", V::Map(entries))]);
    let e = l.event(&[], &[("album", &v)]);
    let src = tempfile::tempdir().unwrap();
    l.write(src.path(), "album", &[&e]);
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(d.path()).unwrap();
    let r = import_into(&store, src.path(), "album");
    r.unwrap_or_else(|e| panic!("an unencrypted 41-file CAR fails: {e}"));
    assert_eq!(
        store
            .open_db("album")
            .unwrap()
            .files("album")
            .unwrap()
            .len(),
        41
    );
}

/// Files under `root` (recursively), dot-folders (`.tmp`) left out.
fn files_under(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(root) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if e.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// An import that fails after it wrote attachments (a later file is damaged) drops the
/// database, but the file-sets it wrote (store-wide, under `filesets/`) stay behind: the
/// attachments of a half-done import are left on disk (encrypted under a key that is gone,
/// until a garbage collection long enough after).
#[test]
fn a_failed_import_leaves_no_attachments_behind() {
    let mut l = Ledger::default();
    let good = vec![7u8; 50_000];
    let (car1, c1) = l.file_car(&[&good]);
    let v1 = l.doc(
        "a",
        vec![(
            "_files",
            m(vec![("good.bin", file_meta(&c1[0], &car1, good.len(), ""))]),
        )],
    );
    let e1 = l.event(&[], &[("a", &v1)]);
    let bad = b"later".as_slice();
    let (car2, c2) = l.file_car(&[bad]);
    let v2 = l.doc(
        "b",
        vec![(
            "_files",
            m(vec![("bad.bin", file_meta(&c2[0], &car2, bad.len(), ""))]),
        )],
    );
    let e2 = l.event(&[&e1], &[("b", &v2)]);
    let src = tempfile::tempdir().unwrap();
    let dir = l.write(src.path(), "att", &[&e2]);
    // The second file CAR is damaged.
    let p = dir.join("data").join(car2.to_string());
    let mut b = std::fs::read(&p).unwrap();
    let n = b.len();
    b[n - 1] ^= 1;
    std::fs::write(&p, b).unwrap();
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(d.path()).unwrap();
    let e = import_into(&store, src.path(), "att").unwrap_err();
    assert!(e.to_string().contains(&car2.to_string()), "{e}");
    assert!(store.list().unwrap().is_empty());
    let left: Vec<PathBuf> = files_under(&d.path().join("filesets"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|x| x == "kfs"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// The progress callback (the library's, an app's code) panics: the import unwinds past
/// its clean-up, the half-imported database stays, under the ledger's name (and its
/// shared `Db` keeps `buffered` on: every later commit through the store's handles skips
/// its flushes).
#[test]
fn a_panic_during_the_import_leaves_nothing_behind() {
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(d.path()).unwrap();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut tick = |done: u64, _total: u64| {
            if done == 5 {
                panic!("the app's progress callback fails");
            }
        };
        let _ = import_fireproof(
            &store,
            &fixtures().join("store"),
            ImportOptions {
                ledger: Some("basic".into()),
                progress: Some(&mut tick),
                ..ImportOptions::default()
            },
        );
    }));
    assert!(r.is_err());
    assert!(
        store.list().unwrap().is_empty(),
        "half-imported: {:?}",
        store.list().unwrap()
    );
}

/// The importing process is killed (Ctrl-C on `kiln import-fireproof`) half-way: the
/// database it was filling stays, under the ledger's name, half imported, and a new attempt
/// is refused ("database exists"). All or nothing holds only while the process lives.
#[test]
fn a_killed_import_leaves_nothing_behind() {
    const NAME: &str = "a_killed_import_leaves_nothing_behind";
    if in_child() {
        let dir = PathBuf::from(std::env::var_os(CHILD_DIR).unwrap());
        let store = Store::open(&dir).unwrap();
        let mut tick = |done: u64, _total: u64| {
            if done == 10 {
                std::process::exit(0); // as a kill: no destructor runs
            }
        };
        let _ = import_fireproof(
            &store,
            &fixtures().join("store"),
            ImportOptions {
                ledger: Some("basic".into()),
                progress: Some(&mut tick),
                ..ImportOptions::default()
            },
        );
        return;
    }
    let d = tempfile::tempdir().unwrap();
    Store::open(d.path()).unwrap();
    let o = run_child(NAME, Some(d.path()), Duration::from_secs(60), &[]);
    assert!(
        o.as_ref().is_some_and(|o| o.status.success()),
        "{}",
        describe(&o)
    );
    // What the kill left is marked unfinished, and the next import replaces it.
    let store = Store::open(d.path()).unwrap();
    let left = store.list().unwrap();
    assert_eq!(left, ["basic"]);
    let meta = store.open_db("basic").unwrap().meta().unwrap();
    assert!(
        meta.contains_key(kiln::import::fireproof::UNFINISHED),
        "{meta:?}"
    );
    let r = import_into(&store, &fixtures().join("store"), "basic").unwrap();
    let db = store.open_db("basic").unwrap();
    assert!(db.meta().unwrap().is_empty());
    assert_eq!(db.info().unwrap().docs, r.documents);
    // A database no import is making is never replaced.
    assert!(matches!(
        import_into(&store, &fixtures().join("store"), "basic"),
        Err(kiln::Error::DatabaseExists(_))
    ));
}

/// A keybag entry whose key is a long string (any `*.json` in the keybag folder is read when
/// no --key-name is given): base58 decoding is quadratic, so a 1 MB "key" keeps the import
/// busy for many minutes before it reads a single CAR.
#[test]
fn a_keybag_entry_with_a_huge_key_does_not_stall_the_import() {
    const NAME: &str = "a_keybag_entry_with_a_huge_key_does_not_stall_the_import";
    if in_child() {
        let src = tempfile::tempdir().unwrap();
        copy_dir(&fixtures().join("store"), src.path());
        let key = format!("z{}", "2".repeat(1_000_000));
        std::fs::write(
            src.path().join(".fireproof/keybag/_junk_.json"),
            format!(r#"{{"name":"junk","key":"{key}"}}"#),
        )
        .unwrap();
        let d = tempfile::tempdir().unwrap();
        let store = Store::open(d.path()).unwrap();
        import_into(&store, src.path(), "insecure").unwrap();
        return;
    }
    let o = run_child(NAME, None, Duration::from_secs(15), &[]);
    assert!(
        o.as_ref().is_some_and(|o| o.status.success()),
        "{}",
        describe(&o)
    );
}

/// A compacted ledger written by two writers: x, then a and b concurrently on x, then m
/// joining them. Compaction dropped a's value (hollow): a makes no kiln event and stands for
/// x; m's parents become (x, b), and x is not a head (b descends from it): `transaction_on`
/// refuses and the import fails.
#[test]
fn a_merge_with_a_hollow_parent_is_imported() {
    let mut l = Ledger::default();
    let x = l.doc("x", vec![]);
    let x = l.event(&[], &[("x", &x)]);
    let av = l.doc("a", vec![]);
    let a = l.event(&[&x], &[("a", &av)]);
    let bv = l.doc("b", vec![]);
    let b = l.event(&[&x], &[("b", &bv)]);
    let mv = l.doc("m", vec![]);
    let me = l.event(&[&a, &b], &[("m", &mv)]);
    // a's value block is gone, as after Fireproof's compaction.
    l.blocks.retain(|(c, _)| *c != av);
    let src = tempfile::tempdir().unwrap();
    l.write(src.path(), "hollow", &[&me]);
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(d.path()).unwrap();
    let r = import_into(&store, src.path(), "hollow");
    let r = r.unwrap_or_else(|e| panic!("a merge over a hollow event fails: {e}"));
    assert_eq!(r.hollow_versions, 1);
    let db = store.open_db("hollow").unwrap();
    for id in ["x", "b", "m"] {
        assert!(db.get(id).unwrap().is_some(), "{id}");
    }
}

/// A Uint8Array of 800 KB (a Fireproof document well under any Fireproof limit) becomes a
/// base64 string of 1.07 MB in dag-json's form, over kiln's 1 MiB document limit: the whole
/// import fails.
#[test]
fn a_document_with_800_kb_of_bytes_imports() {
    let mut l = Ledger::default();
    let v = l.doc("thumb", vec![("png", V::Bytes(vec![0x5a; 800_000]))]);
    let e = l.event(&[], &[("thumb", &v)]);
    let src = tempfile::tempdir().unwrap();
    l.write(src.path(), "bytes", &[&e]);
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(d.path()).unwrap();
    // Base64 makes it more than kiln's 1 MiB document limit: refused by name, nothing left.
    let e = import_into(&store, src.path(), "bytes").unwrap_err();
    assert!(e.to_string().contains("thumb"), "names the document: {e}");
    assert!(store.list().unwrap().is_empty());
}

/// `put({_id, _files: null})` is kept as is by Fireproof (it skips a falsy `_files`); the
/// importer refuses the document ("_files is not a map") and with it the whole import.
#[test]
fn a_null_files_field_does_not_fail_the_import() {
    let mut l = Ledger::default();
    let v = l.doc("n", vec![("_files", V::Null), ("v", V::Bool(true))]);
    let e = l.event(&[], &[("n", &v)]);
    let src = tempfile::tempdir().unwrap();
    l.write(src.path(), "nullfiles", &[&e]);
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(d.path()).unwrap();
    let r = import_into(&store, src.path(), "nullfiles");
    r.unwrap_or_else(|e| panic!("_files: null fails the import: {e}"));
    let db = store.open_db("nullfiles").unwrap();
    assert_eq!(db.get("n").unwrap().unwrap()["v"], true);
}

/// `ImportReport::deleted` is documented as "documents written and later deleted"; `basic`
/// has two (expected/basic.json `deleted`), but the `del` of the never-written `ghost` is
/// counted too.
#[test]
fn the_deleted_count_is_of_documents_that_were_written() {
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(d.path()).unwrap();
    let r = import_into(&store, &fixtures().join("store"), "basic").unwrap();
    let want: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("expected/basic.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        r.deleted,
        want["deleted"].as_array().unwrap().len() as u64,
        "{r:?}"
    );
}

/// Damaged stores (not covered by the existing tests, which flip bytes and remove keys):
/// each is reported as corruption, promptly, and leaves no database behind.
#[test]
fn damaged_ledgers_are_corruption_and_leave_nothing() {
    let base = || {
        let mut l = Ledger::default();
        let a = l.doc("a", vec![("v", V::Int(1))]);
        let e = l.event(&[], &[("a", &a)]);
        (l, e)
    };
    let check = |src: &Path, what: &str| {
        let d = tempfile::tempdir().unwrap();
        let store = Store::open(d.path()).unwrap();
        match import_into(&store, src, "dmg") {
            Err(kiln::Error::Corrupt { .. }) => {}
            other => panic!("{what}: {other:?}"),
        }
        assert!(store.list().unwrap().is_empty(), "{what}");
    };
    // The meta names a CAR that is not there.
    let src = tempfile::tempdir().unwrap();
    let (l, e) = base();
    let dir = l.write(src.path(), "dmg", &[&e]);
    for f in std::fs::read_dir(dir.join("data")).unwrap() {
        std::fs::remove_file(f.unwrap().path()).unwrap();
    }
    check(src.path(), "missing CAR");
    // meta/main.json cut short (Fireproof rewrites it in place).
    let src = tempfile::tempdir().unwrap();
    let dir = l.write(src.path(), "dmg", &[&e]);
    let main = std::fs::read_to_string(dir.join("meta/main.json")).unwrap();
    std::fs::write(dir.join("meta/main.json"), &main[..main.len() / 2]).unwrap();
    check(src.path(), "torn meta");
    // The commit CAR's root (its header) is not in it.
    let src = tempfile::tempdir().unwrap();
    l.write_with(src.path(), "dmg", &[&e], false);
    check(src.path(), "CAR without its root");
    // A document nested 300 deep (a hostile block) and one with a huge declared length.
    for (what, body) in [
        ("deep", {
            let mut v = V::Null;
            for _ in 0..300 {
                v = V::List(vec![v]);
            }
            v
        }),
        ("huge length", V::Null),
    ] {
        let mut l = Ledger::default();
        let c = if what == "deep" {
            l.doc("a", vec![("v", body)])
        } else {
            // {doc: {_id: text of 2^60 bytes}}
            let mut b = cbor(&m(vec![("doc", m(vec![("_id", V::Null)]))]));
            b.truncate(b.len() - 1);
            b.extend([0x7b, 0x10, 0, 0, 0, 0, 0, 0, 0]);
            let c = cid_of(DAG_CBOR, &b);
            l.blocks.push((c.clone(), b));
            c
        };
        let e = l.event(&[], &[("a", &c)]);
        let src = tempfile::tempdir().unwrap();
        l.write(src.path(), "dmg", &[&e]);
        check(src.path(), what);
    }
}

/// DIR given as one ledger's folder, relative (`kiln import-fireproof basic` run in
/// `~/.fireproof/v0.19`): `layout` looks for the keybag two levels up with `Path::parent`,
/// which on "basic" gives nothing (and on "./basic" gives ""), so it looks in `basic/keybag`
/// (or `./keybag`), finds no key, and the import fails with "no such key". The same folder
/// given as an absolute path imports.
#[test]
fn a_relative_ledger_folder_finds_its_keybag() {
    const NAME: &str = "a_relative_ledger_folder_finds_its_keybag";
    if in_child() {
        let src = tempfile::tempdir().unwrap();
        copy_dir(&fixtures().join("store"), src.path());
        let d = tempfile::tempdir().unwrap();
        let store = Store::open(d.path()).unwrap();
        std::env::set_current_dir(src.path().join(".fireproof/v0.19")).unwrap();
        for (i, rel) in ["basic", "./basic"].into_iter().enumerate() {
            let r = import_fireproof(
                &store,
                Path::new(rel),
                ImportOptions {
                    into: Some(format!("b{i}")),
                    ..ImportOptions::default()
                },
            );
            r.unwrap_or_else(|e| panic!("{rel}: {e}"));
        }
        return;
    }
    let o = run_child(NAME, None, Duration::from_secs(60), &[]);
    assert!(
        o.as_ref().is_some_and(|o| o.status.success()),
        "{}",
        describe(&o)
    );
}
