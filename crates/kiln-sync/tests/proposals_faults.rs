//! Proposals through a remote (`kiln_sync::proposals`), found by a review: decisions that must stand,
//! records that must not be taken in as something else, retries that must finish, and
//! contributors who must hear each decision once.

use kiln::{Durability, Options, Status, Store};
use kiln_sync::proposals;
use kiln_sync::{Conflict, Etag, FileName, FolderRemote, HeadRead, Kind, Remote};
use serde_json::json;
use std::io;
use std::path::Path;
use std::sync::Mutex;

fn store(dir: &Path) -> Store {
    Store::open_with(
        dir,
        Options {
            durability: Durability::Buffered,
            ..Options::default()
        },
    )
    .unwrap()
}

/// A folder remote with hooks.
#[derive(Debug, Default)]
struct Hooked {
    inner: Option<FolderRemote>,
    /// Put first when a record of this name is written (another moderator's decision).
    sneak: Mutex<Option<(String, Vec<u8>)>>,
    /// The next filing of a `.prop` is kept, but its answer is lost (a dropped connection).
    lose_answer: Mutex<bool>,
    /// The next read of this record fails (a dropped connection).
    fail_get: Mutex<Option<String>>,
}

impl Hooked {
    fn new(root: &Path) -> Hooked {
        Hooked {
            inner: Some(FolderRemote::open(root).unwrap()),
            ..Hooked::default()
        }
    }
    fn r(&self) -> &FolderRemote {
        self.inner.as_ref().unwrap()
    }
}

impl Remote for Hooked {
    fn location(&self) -> String {
        self.r().location()
    }
    fn has_file(&self, k: Kind, n: &FileName) -> io::Result<bool> {
        self.r().has_file(k, n)
    }
    fn put_file(&self, k: Kind, n: &FileName, b: &[u8]) -> io::Result<()> {
        self.r().put_file(k, n, b)
    }
    fn get_file(&self, k: Kind, n: &FileName) -> io::Result<Option<Vec<u8>>> {
        self.r().get_file(k, n)
    }
    fn list_files(&self, k: Kind) -> io::Result<Vec<(FileName, u64)>> {
        self.r().list_files(k)
    }
    fn delete_file(&self, k: Kind, n: &FileName) -> io::Result<()> {
        self.r().delete_file(k, n)
    }
    fn read_head(&self, db: &str, known: Option<&Etag>) -> io::Result<HeadRead> {
        self.r().read_head(db, known)
    }
    fn write_head(
        &self,
        db: &str,
        expected: Option<&Etag>,
        bytes: &[u8],
    ) -> io::Result<Result<Etag, Conflict>> {
        self.r().write_head(db, expected, bytes)
    }
    fn delete_head(&self, db: &str, expected: &Etag) -> io::Result<Result<(), Conflict>> {
        self.r().delete_head(db, expected)
    }
    fn list_heads(&self) -> io::Result<Vec<(String, Etag)>> {
        self.r().list_heads()
    }
    fn put_proposal_record(&self, db: &str, name: &str, bytes: &[u8]) -> io::Result<bool> {
        let sneak = {
            let mut s = self.sneak.lock().unwrap();
            match &*s {
                Some((n, _)) if n == name => s.take(),
                _ => None,
            }
        };
        if let Some((_, theirs)) = sneak {
            assert!(self.r().put_proposal_record(db, name, &theirs)?);
        }
        if name.ends_with(".prop") && std::mem::take(&mut *self.lose_answer.lock().unwrap()) {
            self.r().put_proposal_record(db, name, bytes)?;
            return Err(io::Error::other("the connection dropped"));
        }
        self.r().put_proposal_record(db, name, bytes)
    }
    fn get_proposal_record(&self, db: &str, name: &str) -> io::Result<Option<Vec<u8>>> {
        {
            let mut f = self.fail_get.lock().unwrap();
            if f.as_deref() == Some(name) {
                *f = None;
                return Err(io::Error::other("the connection dropped"));
            }
        }
        self.r().get_proposal_record(db, name)
    }
    fn list_proposal_records(&self, db: &str) -> io::Result<Vec<String>> {
        self.r().list_proposal_records(db)
    }
}

/// A moderator's store with main (on the remote), and a contributor's with main and a fork
/// `edits` of it with one change, proposed on the remote: (moderator, contributor, id).
fn scene(dir: &Path, remote: &dyn Remote) -> (Store, Store, String) {
    let moderator = store(&dir.join("moderator"));
    let main = moderator.create(Some("main")).unwrap();
    main.put(&json!({"_id": "page", "text": "old"})).unwrap();
    kiln_sync::sync(&moderator, &main, remote, "main", Default::default()).unwrap();
    let contributor = keyed(&dir.join("contributor"), &moderator, remote);
    let fork = contributor.fork("main", Some("edits")).unwrap();
    fork.put(&json!({"_id": "page", "text": "new"})).unwrap();
    let (p, _) = proposals::propose(&contributor, remote, "edits", "main", "update").unwrap();
    let listed = proposals::list(&moderator, remote, "main", false).unwrap();
    assert_eq!(listed.proposals.len(), 1);
    (moderator, contributor, p.id)
}

/// Another store with main's key and main pulled.
fn keyed(dir: &Path, moderator: &Store, remote: &dyn Remote) -> Store {
    let s = store(dir);
    s.import_key("main", &moderator.export_key("main", None).unwrap(), None)
        .unwrap();
    let main = s.open_db("main").unwrap();
    kiln_sync::sync(&s, &main, remote, "main", Default::default()).unwrap();
    s
}

/// Main's page as the remote has it now (read by a fresh store).
fn page_there(dir: &Path, moderator: &Store, remote: &dyn Remote) -> String {
    let s = keyed(dir, moderator, remote);
    s.open_db("main").unwrap().get("page").unwrap().unwrap()["text"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Two moderators: B rejects while A's accept is under way. The decision that stands is B's
/// reject, so the proposal's changes must not be in main on the remote. A's accept pushes its
/// merge before it files its decision, and loses the create: main there holds the rejected
/// changes.
#[test]
fn a_proposal_rejected_meanwhile_is_not_pushed_into_the_target() {
    let dir = tempfile::tempdir().unwrap();
    let remote = Hooked::new(&dir.path().join("remote"));
    let (moderator, _contributor, id) = scene(dir.path(), &remote);
    let other = keyed(&dir.path().join("other"), &moderator, &remote);
    proposals::list(&other, &remote, "main", false).unwrap();
    other.reject(&id, "not wanted", "other").unwrap();
    *remote.sneak.lock().unwrap() = Some((
        format!("{id}.decision"),
        other.proposal_record(&id).unwrap(),
    ));
    let e = proposals::accept(&moderator, &remote, &id, None, "mod").unwrap_err();
    assert!(e.to_string().contains("rejected by other"), "{e}");
    assert_eq!(
        page_there(&dir.path().join("reader"), &moderator, &remote),
        "old",
        "the proposal stands rejected, yet its change was pushed into main"
    );
}

/// A contributor (a `propose` token on a server: it may file `ID.prop`, never
/// `ID.decision`) files a `.prop` whose sealed body already says "accepted by moderator".
/// It was taken in as decided (left out of the open ones, shown as accepted by whoever the
/// contributor named, and "finished" by `kiln accept --remote` without a merge); it is left
/// out as unreadable now.
#[test]
fn a_filed_proposal_cannot_carry_a_decision() {
    let dir = tempfile::tempdir().unwrap();
    let remote = Hooked::new(&dir.path().join("remote"));
    let (moderator, contributor, _) = scene(dir.path(), &remote);
    let fork = contributor.fork("main", Some("edits2")).unwrap();
    fork.put(&json!({"_id": "page", "text": "forged"})).unwrap();
    kiln_sync::sync(&contributor, &fork, &remote, "edits2", Default::default()).unwrap();
    let p = contributor.propose("edits2", "main", "sneaky").unwrap();
    contributor.accept(&p.id, None, "moderator").unwrap(); // (its own main, here only)
    let forged = contributor.proposal_record(&p.id).unwrap();
    assert!(remote
        .put_proposal_record("main", &format!("{}.prop", p.id), &forged)
        .unwrap());
    let all = proposals::list(&moderator, &remote, "main", true).unwrap();
    let seen = all.proposals.iter().find(|q| q.id == p.id);
    // No decision record exists: a record a contributor filed must read as open (or be
    // left out as unreadable), never as decided.
    assert!(
        seen.is_none_or(|q| q.status == Status::Open),
        "taken in as decided without any decision: {seen:?}"
    );
    // Left out as what it is, and nothing here to accept.
    assert!(all
        .unreadable
        .iter()
        .any(|(id, why)| *id == p.id && why.contains("claims a decision")));
    assert!(proposals::accept(&moderator, &remote, &p.id, None, "mod").is_err());
}

/// A record filed under another database (one the attacker may propose to: their own fork)
/// with the id of someone else's proposal for main is reported as "filed for X but names
/// main", but only after it replaced the copy kept here: the real proposal now reads as
/// rejected, is gone from the moderator's open list, and `accept` refuses it.
#[test]
fn a_record_filed_under_another_database_replaces_nothing_here() {
    let dir = tempfile::tempdir().unwrap();
    let remote = Hooked::new(&dir.path().join("remote"));
    let (moderator, _bob, id) = scene(dir.path(), &remote);
    // Mallory has main's key (she forked it), reads main's records, and may file for her fork.
    let mallory = keyed(&dir.path().join("mallory"), &moderator, &remote);
    proposals::list(&mallory, &remote, "main", false).unwrap();
    mallory.reject(&id, "spam", "moderator").unwrap();
    let forged = mallory.proposal_record(&id).unwrap();
    assert!(remote
        .put_proposal_record("mallory-edits", &format!("{id}.prop"), &forged)
        .unwrap());
    let listed = proposals::list(&moderator, &remote, "mallory-edits", false).unwrap();
    assert_eq!(listed.unreadable.len(), 1, "{listed:?}");
    assert_eq!(
        moderator.proposal(&id).unwrap().status,
        Status::Open,
        "a record left out as another database's replaced the proposal kept here"
    );
    let open = proposals::list(&moderator, &remote, "main", false).unwrap();
    assert_eq!(open.proposals.len(), 1, "bob's proposal vanished: {open:?}");
}

/// The contributor has two proposals filed; the first is decided. Asking about the second
/// fails once (a dropped connection): the whole call fails, but the first was already
/// forgotten as told. The next sync never tells it.
#[test]
fn a_failed_request_does_not_swallow_decisions_already_taken_in() {
    let dir = tempfile::tempdir().unwrap();
    let remote = Hooked::new(&dir.path().join("remote"));
    let (moderator, contributor, first) = scene(dir.path(), &remote);
    let fork = contributor.fork("main", Some("edits2")).unwrap();
    fork.put(&json!({"_id": "other", "text": "x"})).unwrap();
    let (second, _) = proposals::propose(&contributor, &remote, "edits2", "main", "more").unwrap();
    assert!(first < second.id);
    proposals::reject(&moderator, &remote, &first, "no", "mod").unwrap();
    *remote.fail_get.lock().unwrap() = Some(format!("{}.decision", second.id));
    let dbs = ["edits", "edits2"];
    assert!(proposals::decisions(&contributor, &remote, &dbs).is_err());
    let heard = proposals::decisions(&contributor, &remote, &dbs).unwrap();
    assert_eq!(
        heard.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(),
        [first.as_str()],
        "the rejection of the first proposal is never told"
    );
}

/// `kiln propose --remote` whose filing's answer is lost (kept on the remote, the connection
/// dropped before the 201): running it again files a second proposal of the same fork
/// instead of finishing the first. Moderators see two; the first is not in filed.json, so
/// its contributor never hears of its decision.
#[test]
fn a_filing_retried_after_a_lost_answer_is_filed_once() {
    let dir = tempfile::tempdir().unwrap();
    let remote = Hooked::new(&dir.path().join("remote"));
    let (moderator, contributor, _) = scene(dir.path(), &remote);
    let fork = contributor.fork("main", Some("edits2")).unwrap();
    fork.put(&json!({"_id": "other", "text": "x"})).unwrap();
    *remote.lose_answer.lock().unwrap() = true;
    assert!(proposals::propose(&contributor, &remote, "edits2", "main", "more").is_err());
    proposals::propose(&contributor, &remote, "edits2", "main", "more").unwrap();
    let listed = proposals::list(&moderator, &remote, "main", false).unwrap();
    let of_edits2 = listed
        .proposals
        .iter()
        .filter(|p| p.fork == "edits2")
        .count();
    assert_eq!(of_edits2, 1, "one proposal, filed twice: {listed:?}");
}

/// A folder remote named with and without a trailing slash is one remote, but filed.json
/// keys proposals by `location()`, which keeps the slash: a proposal filed through `DIR/` is
/// never asked about by a sync through `DIR`.
#[test]
fn a_decision_is_told_whichever_way_the_folder_is_spelled() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("remote");
    let slashed = FolderRemote::open(format!("{}/", root.display())).unwrap();
    let (moderator, contributor, id) = scene(dir.path(), &slashed);
    proposals::reject(&moderator, &slashed, &id, "no", "mod").unwrap();
    let plain = FolderRemote::open(&root).unwrap();
    let heard = proposals::decisions(&contributor, &plain, &["edits"]).unwrap();
    assert_eq!(
        heard.len(),
        1,
        "never told: filed under {:?}",
        slashed.location()
    );
}

/// docs/format.md: "A record a remote keeps is at most 1 MiB" (the folder layout's section).
/// A folder keeps any size.
#[test]
fn a_folder_keeps_no_record_over_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let r = FolderRemote::open(dir.path()).unwrap();
    let mut big = kiln::PROPOSAL_RECORD_MAGIC.to_vec();
    big.resize(kiln_sync::MAX_PROPOSAL_RECORD * 2, b'x');
    assert!(
        r.put_proposal_record("main", "p1.prop", &big).is_err(),
        "a 2 MiB record was kept"
    );
}
