//! The contribution workflow, end to end: the seed's public-CMS example.

use kiln::{Durability, Options, Status, Store};
use serde_json::json;

fn store(dir: &std::path::Path) -> Store {
    Store::open_with(
        dir,
        Options {
            durability: Durability::Buffered,
            ..Options::default()
        },
    )
    .unwrap()
}

#[test]
fn a_public_cms_takes_contributions() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    // Main is published.
    let site = s.create(Some("site")).unwrap();
    for (id, text) in [
        ("home", "Welcome"),
        ("about", "About us"),
        ("contact", "Mail us"),
    ] {
        site.put(&json!({"_id": id, "text": text})).unwrap();
    }
    // Two users fork it and edit.
    let alice = s.fork("site", Some("alice")).unwrap();
    let bob = s.fork("site", Some("bob")).unwrap();
    alice
        .put(&json!({"_id": "about", "text": "About us, by Alice"}))
        .unwrap();
    alice
        .put(&json!({"_id": "blog", "text": "First post"}))
        .unwrap();
    bob.put(&json!({"_id": "contact", "text": "Call us"}))
        .unwrap();
    bob.put(&json!({"_id": "about", "text": "About us, by Bob"}))
        .unwrap();
    // Meanwhile the site itself moves on: "about" now conflicts with both.
    site.put(&json!({"_id": "about", "text": "About the team"}))
        .unwrap();
    // Both propose.
    let pa = s
        .propose("alice", "site", "a blog and a better about page")
        .unwrap();
    let pb = s.propose("bob", "site", "new phone").unwrap();
    let open = s.proposals(Some("site"), true).unwrap();
    assert_eq!(
        open.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(),
        [pa.id.as_str(), pb.id.as_str()]
    );
    // The moderator reviews: changes against the site's current state, conflicts flagged.
    let (_, ra) = s.review(&pa.id).unwrap();
    let mut changed = ra.changed.clone();
    changed.sort();
    assert!(changed.contains(&"blog".to_owned()));
    assert_eq!(ra.conflicts.len(), 1);
    assert_eq!(ra.conflicts[0].id, "about");
    assert_eq!(
        ra.conflicts[0].ours.as_ref().unwrap()["text"],
        "About the team"
    );
    assert_eq!(
        ra.conflicts[0].theirs.as_ref().unwrap()["text"],
        "About us, by Alice"
    );
    assert_eq!(
        ra.conflicts[0].ancestor.as_ref().unwrap()["text"],
        "About us"
    );
    assert!(
        site.get("blog").unwrap().is_none(),
        "a review writes nothing"
    );
    // Accepts Alice's partly (the blog only), rejects Bob's.
    let r = s
        .accept(&pa.id, Some(&["blog".to_owned()]), "moderator")
        .unwrap();
    assert_eq!(r.changed, ["blog"]);
    let rb = s
        .reject(&pb.id, "we keep the mail address", "moderator")
        .unwrap();
    assert!(matches!(rb.status, Status::Rejected { .. }));
    assert_eq!(site.get("blog").unwrap().unwrap()["text"], "First post");
    assert_eq!(
        site.get("about").unwrap().unwrap()["text"],
        "About the team"
    );
    assert_eq!(site.get("contact").unwrap().unwrap()["text"], "Mail us");
    // Who accepted what is in the site's history.
    let last = &site.log(Some(1)).unwrap()[0];
    assert!(
        last.note.contains(&pa.id) && last.note.contains("moderator"),
        "{}",
        last.note
    );
    // Decided once, and it survives a restart.
    assert!(s.accept(&pa.id, None, "someone").is_err());
    assert!(s.reject(&pa.id, "late", "someone").is_err());
    let again = store(dir.path());
    assert!(again.proposals(Some("site"), true).unwrap().is_empty());
    let all = again.proposals(None, false).unwrap();
    assert!(
        matches!(&all[0].status, Status::Accepted { only, by, .. } if only == &["blog".to_owned()] && by == "moderator")
    );
    assert!(
        matches!(&all[1].status, Status::Rejected { reason, .. } if reason == "we keep the mail address")
    );
    // Both users merge the site back into their forks and see the accepted change.
    for user in [&alice, &bob] {
        user.merge_from(&site, None).unwrap();
        assert_eq!(user.get("blog").unwrap().unwrap()["text"], "First post");
        assert!(user.verify().unwrap().ok());
    }
    assert!(site.verify().unwrap().ok());
    // Bad requests.
    assert!(s.propose("site", "site", "").is_err());
    assert!(s.propose("nope", "site", "").is_err());
    assert!(s.proposal("../x").is_err());
    assert!(s.review("0000000000000000").is_err());
}

#[test]
fn proposal_records_travel_sealed_and_decisions_are_not_undone() {
    let dir = tempfile::tempdir().unwrap();
    let (here, there) = (store(&dir.path().join("a")), store(&dir.path().join("b")));
    let site = here.create(Some("site")).unwrap();
    site.put(&json!({"_id": "home", "text": "Welcome"}))
        .unwrap();
    let fork = here.fork("site", Some("edits")).unwrap();
    fork.put(&json!({"_id": "home", "text": "Hello"})).unwrap();
    let p = here.propose("edits", "site", "a better welcome").unwrap();
    let open = here.proposal_record(&p.id).unwrap();
    assert!(open.starts_with(kiln::PROPOSAL_RECORD_MAGIC));
    // Sealed: none of its words travel in clear.
    assert!(!open.windows(6).any(|w| w == b"better"));
    // Another store opens it only with the target's key.
    let e = there
        .take_in_proposal(&p.id, &open, "site", false)
        .unwrap_err();
    assert!(matches!(e, kiln::Error::NoSuchDatabase(_)), "{e}");
    there
        .import_key("site", &here.export_key("site", None).unwrap(), None)
        .unwrap();
    assert_eq!(
        there.take_in_proposal(&p.id, &open, "site", false).unwrap(),
        p
    );
    assert_eq!(there.proposal(&p.id).unwrap(), p);
    // Under another id, or damaged: refused, nothing kept.
    assert!(there
        .take_in_proposal("0123abcd", &open, "site", false)
        .is_err());
    let mut bad = open.clone();
    *bad.last_mut().unwrap() ^= 1;
    assert!(there.take_in_proposal(&p.id, &bad, "site", false).is_err());
    // Taken in as what it is not: an open record as a decision, under another target.
    assert!(there.take_in_proposal(&p.id, &open, "site", true).is_err());
    there.create(Some("other")).unwrap();
    assert!(there
        .take_in_proposal(&p.id, &open, "other", false)
        .is_err());
    // A decision replaces the open copy; an open copy taken in later does not undo it.
    here.reject(&p.id, "not now", "mod").unwrap();
    let decided = here.proposal_record(&p.id).unwrap();
    // (A decided record filed as a proposal claims a decision it is not.)
    assert!(there
        .take_in_proposal(&p.id, &decided, "site", false)
        .is_err());
    assert_eq!(there.proposal(&p.id).unwrap().status, Status::Open);
    let got = there
        .take_in_proposal(&p.id, &decided, "site", true)
        .unwrap();
    assert!(matches!(got.status, Status::Rejected { ref reason, .. } if reason == "not now"));
    let again = there.take_in_proposal(&p.id, &open, "site", false).unwrap();
    assert_eq!(again.status, got.status);
    assert_eq!(there.proposal(&p.id).unwrap().status, got.status);
}

#[test]
fn a_replica_of_a_lineage_starts_empty_with_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let site = s.create(Some("site")).unwrap();
    site.put(&json!({"_id": "home"})).unwrap();
    let r = s.replica_of("pulled", "site").unwrap();
    assert!(r.heads().unwrap().is_empty());
    assert!(matches!(
        s.replica_of("pulled", "site"),
        Err(kiln::Error::DatabaseExists(_))
    ));
    assert!(matches!(
        s.replica_of("x", "nowhere"),
        Err(kiln::Error::NoSuchDatabase(_))
    ));
    // It merges with its lineage (the same key).
    r.merge_from(&site, None).unwrap();
    assert!(r.get("home").unwrap().is_some());
}
