//! Proposals through a remote (`kiln_sync::proposals`): an accept stopped after its merge is
//! finished by running it again; of two moderators deciding at once, one decision stands and
//! the other is told; contributors hear decisions once.

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

/// A folder remote with a hook: fails the writes of one database's head record while
/// `fail_head` is set, and puts `sneak` (another moderator's decision) first when a decision
/// is written.
#[derive(Debug)]
struct Hooked {
    inner: FolderRemote,
    fail_head: Mutex<Option<String>>,
    sneak: Mutex<Option<(String, Vec<u8>)>>,
}

impl Remote for Hooked {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn has_file(&self, k: Kind, n: &FileName) -> io::Result<bool> {
        self.inner.has_file(k, n)
    }
    fn put_file(&self, k: Kind, n: &FileName, b: &[u8]) -> io::Result<()> {
        self.inner.put_file(k, n, b)
    }
    fn get_file(&self, k: Kind, n: &FileName) -> io::Result<Option<Vec<u8>>> {
        self.inner.get_file(k, n)
    }
    fn list_files(&self, k: Kind) -> io::Result<Vec<(FileName, u64)>> {
        self.inner.list_files(k)
    }
    fn delete_file(&self, k: Kind, n: &FileName) -> io::Result<()> {
        self.inner.delete_file(k, n)
    }
    fn read_head(&self, db: &str, known: Option<&Etag>) -> io::Result<HeadRead> {
        self.inner.read_head(db, known)
    }
    fn write_head(
        &self,
        db: &str,
        expected: Option<&Etag>,
        bytes: &[u8],
    ) -> io::Result<Result<Etag, Conflict>> {
        if self.fail_head.lock().unwrap().as_deref() == Some(db) {
            return Err(io::Error::other("the connection dropped"));
        }
        self.inner.write_head(db, expected, bytes)
    }
    fn delete_head(&self, db: &str, expected: &Etag) -> io::Result<Result<(), Conflict>> {
        self.inner.delete_head(db, expected)
    }
    fn list_heads(&self) -> io::Result<Vec<(String, Etag)>> {
        self.inner.list_heads()
    }
    fn put_proposal_record(&self, db: &str, name: &str, bytes: &[u8]) -> io::Result<bool> {
        if let Some((n, theirs)) = self.sneak.lock().unwrap().take() {
            assert_eq!(n, name);
            assert!(self.inner.put_proposal_record(db, name, &theirs)?);
        }
        self.inner.put_proposal_record(db, name, bytes)
    }
    fn get_proposal_record(&self, db: &str, name: &str) -> io::Result<Option<Vec<u8>>> {
        self.inner.get_proposal_record(db, name)
    }
    fn list_proposal_records(&self, db: &str) -> io::Result<Vec<String>> {
        self.inner.list_proposal_records(db)
    }
}

/// A moderator's store with main (on the remote), and a contributor's with main and a fork
/// of it with one change, proposed on the remote: (moderator, contributor, proposal id).
fn scene(dir: &Path, remote: &dyn Remote) -> (Store, Store, String) {
    let moderator = store(&dir.join("moderator"));
    let main = moderator.create(Some("main")).unwrap();
    main.put(&json!({"_id": "page", "text": "old"})).unwrap();
    kiln_sync::sync(&moderator, &main, remote, "main", Default::default()).unwrap();
    let contributor = store(&dir.join("contributor"));
    let key = moderator.export_key("main", None).unwrap();
    contributor.import_key("main", &key, None).unwrap();
    let theirs = contributor.open_db("main").unwrap();
    kiln_sync::sync(&contributor, &theirs, remote, "main", Default::default()).unwrap();
    let fork = contributor.fork("main", Some("edits")).unwrap();
    fork.put(&json!({"_id": "page", "text": "new"})).unwrap();
    let (p, pushed) = proposals::propose(&contributor, remote, "edits", "main", "update").unwrap();
    assert_eq!(
        pushed.files_pushed, 1,
        "the fork adds one diff file: {pushed:?}"
    );
    let listed = proposals::list(&moderator, remote, "main", false).unwrap();
    assert_eq!(listed.proposals.len(), 1);
    assert!(listed.unreadable.is_empty());
    (moderator, contributor, p.id)
}

#[test]
fn an_accept_stopped_after_its_merge_is_finished_by_running_it_again() {
    let dir = tempfile::tempdir().unwrap();
    let remote = Hooked {
        inner: FolderRemote::open(dir.path().join("remote")).unwrap(),
        fail_head: Mutex::new(None),
        sneak: Mutex::new(None),
    };
    let (moderator, contributor, id) = scene(dir.path(), &remote);
    *remote.fail_head.lock().unwrap() = Some("main".into());
    let e = proposals::accept(&moderator, &remote, &id, None, "mod").unwrap_err();
    assert!(e.to_string().contains("connection dropped"), "{e}");
    // Decided there (the decision comes first) and merged here, but not pushed: the
    // contributor hears the decision once; main there lacks the change yet.
    assert!(matches!(
        moderator.proposal(&id).unwrap().status,
        Status::Accepted { .. }
    ));
    let heard = proposals::decisions(&contributor, &remote, &["edits"]).unwrap();
    assert_eq!(heard.len(), 1);
    assert!(matches!(heard[0].status, Status::Accepted { ref by, .. } if by == "mod"));
    assert!(proposals::decisions(&contributor, &remote, &["edits"])
        .unwrap()
        .is_empty());
    *remote.fail_head.lock().unwrap() = None;
    let done = proposals::accept(&moderator, &remote, &id, None, "mod").unwrap();
    assert!(done.merge.is_none(), "merged once only");
    assert!(done.pushed.is_some_and(|p| p.pushed));
    // Now main there holds the change.
    let main = contributor.open_db("main").unwrap();
    kiln_sync::sync(&contributor, &main, &remote, "main", Default::default()).unwrap();
    assert_eq!(main.get("page").unwrap().unwrap()["text"], "new");
    // Decided once: a reject is refused; a second accept has nothing left to do.
    let e = proposals::reject(&moderator, &remote, &id, "no", "other").unwrap_err();
    assert!(e.to_string().contains("already accepted"), "{e}");
    let again = proposals::accept(&moderator, &remote, &id, None, "mod").unwrap();
    assert!(again.merge.is_none() && again.pushed.is_some_and(|p| !p.pushed));
}

#[test]
fn of_two_moderators_deciding_at_once_one_decision_stands() {
    let dir = tempfile::tempdir().unwrap();
    let remote = Hooked {
        inner: FolderRemote::open(dir.path().join("remote")).unwrap(),
        fail_head: Mutex::new(None),
        sneak: Mutex::new(None),
    };
    let (moderator, _contributor, id) = scene(dir.path(), &remote);
    // A second moderator, with main's key, rejects the proposal just before the first one's
    // decision is written.
    let other = store(&dir.path().join("other"));
    other
        .import_key("main", &moderator.export_key("main", None).unwrap(), None)
        .unwrap();
    let main = other.open_db("main").unwrap();
    kiln_sync::sync(&other, &main, &remote, "main", Default::default()).unwrap();
    proposals::list(&other, &remote, "main", false).unwrap();
    other.reject(&id, "duplicate", "other").unwrap();
    *remote.sneak.lock().unwrap() = Some((
        format!("{id}.decision"),
        other.proposal_record(&id).unwrap(),
    ));
    let e = proposals::accept(&moderator, &remote, &id, None, "mod").unwrap_err();
    assert!(
        e.to_string()
            .contains("decided by another moderator meanwhile")
            && e.to_string().contains("rejected by other: duplicate"),
        "{e}"
    );
    // The standing decision is the one kept here now.
    assert!(matches!(
        moderator.proposal(&id).unwrap().status,
        Status::Rejected { ref by, .. } if by == "other"
    ));
    let all = proposals::list(&moderator, &remote, "main", true).unwrap();
    assert!(matches!(all.proposals[0].status, Status::Rejected { .. }));
    // Nothing of the losing accept was published, nor merged here.
    let main = moderator.open_db("main").unwrap();
    assert_eq!(main.get("page").unwrap().unwrap()["text"], "old");
    let fresh = store(&dir.path().join("fresh"));
    fresh
        .import_key("main", &moderator.export_key("main", None).unwrap(), None)
        .unwrap();
    let there = fresh.open_db("main").unwrap();
    kiln_sync::sync(&fresh, &there, &remote, "main", Default::default()).unwrap();
    assert_eq!(there.get("page").unwrap().unwrap()["text"], "old");
}
