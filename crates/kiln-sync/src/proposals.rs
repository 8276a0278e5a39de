//! Proposals through a remote (the seed's public content management system): contributors keep
//! a fork of a shared database, push it, and file a proposal on the remote; moderators list
//! the proposals, review them (pulling only what a fork adds), and accept (the merge is pushed
//! as the target's new state) or reject them; the contributor learns the decision on a later
//! sync.
//!
//! On the remote a proposal is two create-only records of its target database
//! ([`Remote::put_proposal_record`]): `<id>.prop`, filed by the contributor, and
//! `<id>.decision`, written by the moderator who decides it. Both are the proposal as
//! [`kiln::Store::proposal_record`] seals it (under the target's lineage key: the remote
//! reads neither). Neither ever changes, so a proposal is decided once: of two moderators
//! deciding at the same moment, one writes the decision and the other is told. A sync server
//! lets a token with `propose` of a database file proposals for it, and only a token with
//! `write` of it decide them (docs/server.md).
//!
//! Locally the store keeps its copy of each proposal it filed or read (`kiln proposals`), so
//! review and accept run on the local machinery of `kiln::Store` (a proposal pins its fork's
//! heads). Which proposals this store filed where is kept in `<store>/sync/filed.json`, so a
//! sync asks about those only.

use crate::{sync, Remote, SyncError, SyncOptions, SyncReport};
use kiln::{Database, MergeReport, Proposal, Status, Store};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io;

fn prop_name(id: &str) -> String {
    format!("{id}.prop")
}

fn decision_name(id: &str) -> String {
    format!("{id}.decision")
}

/// What a decision through a remote did.
#[derive(Debug)]
pub struct Decided {
    /// The proposal as decided.
    pub proposal: Proposal,
    /// The merge an accept made (`None`: a reject, or an accept made before whose push and
    /// decision this call finished).
    pub merge: Option<MergeReport>,
    /// The push of the target's new state (an accept).
    pub pushed: Option<SyncReport>,
}

/// Proposals listed on a remote: those taken in, and records that could not be (damaged,
/// sealed with a key this store lacks), by id, with why.
#[derive(Debug, Default)]
pub struct Listed {
    /// Proposals, oldest first.
    pub proposals: Vec<Proposal>,
    /// Records left out, with the reason.
    pub unreadable: Vec<(String, String)>,
}

/// The longest message a proposal filed on a remote may carry (its record, sealed, must stay
/// under [`crate::MAX_PROPOSAL_RECORD`]).
pub const MAX_MESSAGE: usize = crate::MAX_PROPOSAL_RECORD / 2;

/// Pushes database `fork` to `remote` (a full sync) and files a proposal of its changes for
/// database `to` there (`kiln propose FORK --to MAIN --remote URL`). The proposal is kept
/// here too, and remembered as filed on the remote, so [`decisions`] asks about it. A filing
/// whose answer was lost is finished by running it again (the same proposal is filed, not a
/// second one); one the remote refuses leaves no proposal here.
pub fn propose(
    store: &Store,
    remote: &dyn Remote,
    fork: &str,
    to: &str,
    message: &str,
) -> Result<(Proposal, SyncReport), SyncError> {
    crate::check_db(fork)?;
    crate::check_db(to)?;
    if message.len() > MAX_MESSAGE {
        return Err(kiln::Error::InvalidArgument(format!(
            "a proposal filed on a remote carries a message of at most {MAX_MESSAGE} bytes"
        ))
        .into());
    }
    let db = store.open_db(fork)?;
    store.open_db(to)?;
    if !remote.allowed(fork)?.write {
        return Err(refused(
            remote,
            &format!("may not write '{fork}' (the fork is pushed)"),
        ));
    }
    if !remote.allowed(to)?.propose {
        return Err(refused(
            remote,
            &format!("may not propose changes to '{to}'"),
        ));
    }
    let pushed = sync(store, &db, remote, fork, SyncOptions::default())?;
    let here = remote.location();
    let mut filed = Filed::load(store)?;
    // A filing of this fork's state for `to` whose answer was lost: the same proposal again.
    let heads = db.heads()?;
    let pending = filed.pending.iter().find_map(|(id, at)| {
        let p = store.proposal(id).ok()?;
        (*at == here
            && p.fork == fork
            && p.to == to
            && p.status == Status::Open
            && p.heads == heads)
            .then_some(p)
    });
    let p = match pending {
        Some(p) => p,
        None => {
            let p = store.propose(fork, to, message)?;
            filed.pending.insert(p.id.clone(), here.clone());
            filed.save()?;
            p
        }
    };
    let record = store.proposal_record(&p.id)?;
    match remote.put_proposal_record(to, &prop_name(&p.id), &record) {
        Ok(true) => {}
        // There already: this store's own filing whose answer was lost, or not.
        Ok(false) => {
            let there = remote.get_proposal_record(to, &prop_name(&p.id))?;
            if there.as_deref() != Some(record.as_slice()) {
                return Err(SyncError::Remote(io::Error::other(format!(
                    "{here} holds another proposal {} already",
                    p.id
                ))));
            }
        }
        Err(e) if refusal(&e) => {
            filed.pending.remove(&p.id);
            filed.save()?;
            store.forget_proposal(&p.id)?;
            return Err(e.into());
        }
        Err(e) => return Err(e.into()), // (kept pending: running it again finishes it)
    }
    filed.pending.remove(&p.id);
    filed.filed.insert(p.id.clone(), here);
    filed.save()?;
    Ok((p, pushed))
}

/// Whether a remote's error is its refusal of the request (it was not kept, and sending it
/// again will not change that), not a failure to reach it or hear its answer.
fn refusal(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::PermissionDenied
            | io::ErrorKind::InvalidInput
            | io::ErrorKind::InvalidData
            | io::ErrorKind::Unsupported
    )
}

/// The proposals filed on `remote` for database `to` (open ones only unless `all`), each
/// taken in here with its decision, if any, so it can be reviewed and decided. Records that
/// are not what their names say (damaged, sealed for another target, a filed proposal that
/// claims a decision) are left out, changing nothing here.
pub fn list(store: &Store, remote: &dyn Remote, to: &str, all: bool) -> Result<Listed, SyncError> {
    let names = remote.list_proposal_records(to)?;
    let mut out = Listed::default();
    for name in &names {
        let (id, decision) = crate::check_proposal_record(name)?;
        if decision {
            continue;
        }
        let decided = names.contains(&decision_name(id));
        let known = store.proposal(id).ok().filter(|p| p.to == to);
        let p = (|| {
            // The filed proposal first (a decision is checked against it), unless kept here.
            let mut p = match known {
                Some(p) => Some(p),
                None => take_in(store, remote, to, id, false)?,
            };
            if decided && p.as_ref().is_some_and(|p| p.status == Status::Open) {
                p = take_in(store, remote, to, id, true)?.or(p);
            }
            Ok::<_, SyncError>(p)
        })();
        match p {
            Ok(Some(p)) => {
                if all || p.status == Status::Open {
                    out.proposals.push(p);
                }
            }
            Ok(None) => {} // (gone meanwhile)
            Err(SyncError::Kiln(e)) => out.unreadable.push((id.to_owned(), e.to_string())),
            Err(e) => return Err(e),
        }
    }
    out.proposals.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

/// Reads proposal `id`'s record (its decision with `decision`) from database `to`'s records
/// on the remote and takes it in (`None`: absent).
fn take_in(
    store: &Store,
    remote: &dyn Remote,
    to: &str,
    id: &str,
    decision: bool,
) -> Result<Option<Proposal>, SyncError> {
    let name = if decision {
        decision_name(id)
    } else {
        prop_name(id)
    };
    match remote.get_proposal_record(to, &name)? {
        Some(b) => Ok(Some(store.take_in_proposal(id, &b, to, decision)?)),
        None => Ok(None),
    }
}

/// Proposal `id` as the remote has it now, and whether the remote holds a decision on it
/// (taken in). It must be known here (listed with [`list`], or filed from here): that says
/// which database's records hold it.
fn refresh(store: &Store, remote: &dyn Remote, id: &str) -> Result<(Proposal, bool), SyncError> {
    let p = store.proposal(id)?;
    if let Some(d) = take_in(store, remote, &p.to, id, true)? {
        return Ok((d, true));
    }
    if p.status != Status::Open {
        return Ok((p, false));
    }
    match take_in(store, remote, &p.to, id, false)? {
        Some(p) => Ok((p, false)),
        None => Err(SyncError::Remote(io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "{} holds no proposal {id} for '{}'",
                remote.location(),
                p.to
            ),
        ))),
    }
}

/// The refusal to decide a proposal the remote holds a decision on.
fn already(p: &Proposal) -> SyncError {
    kiln::Error::InvalidArgument(format!("proposal {} was already {}", p.id, state(p))).into()
}

/// The remote's refusal of `what`, told before anything changed here.
fn refused(remote: &dyn Remote, what: &str) -> SyncError {
    SyncError::Remote(io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!("{}: this client {what}", remote.location()),
    ))
}

/// Refuses a decision on proposal `id` (of database `to`) a client may not write.
fn may_decide(remote: &dyn Remote, to: &str) -> Result<(), SyncError> {
    if remote.allowed(to)?.write {
        return Ok(());
    }
    Err(refused(
        remote,
        &format!("may not write '{to}' (deciding a proposal for it needs that)"),
    ))
}

/// Pulls database `name` from the remote (made here as an empty replica of `like`'s lineage
/// when absent: a contributor's fork, whose files the target shares, so only what the fork
/// adds is fetched). A database of that name here of another lineage is refused.
fn pull(store: &Store, remote: &dyn Remote, name: &str, like: &str) -> Result<Database, SyncError> {
    let db = match store.open_db(name) {
        Ok(db) => {
            if name != like && !store.same_lineage(name, like)? {
                return Err(kiln::Error::InvalidArgument(format!(
                    "database '{name}' here is not of '{like}''s lineage: it cannot be the \
                     proposal's fork (rename it, or review from another store)"
                ))
                .into());
            }
            db
        }
        Err(kiln::Error::NoSuchDatabase(_)) => store.replica_of(name, like)?,
        Err(e) => return Err(e.into()),
    };
    let opts = SyncOptions {
        push: false,
        ..SyncOptions::default()
    };
    sync(store, &db, remote, name, opts)?;
    Ok(db)
}

/// What accepting proposal `id` would change in its target now (`kiln review ID --remote`):
/// the target and the fork are pulled first (only what this store lacks).
pub fn review(
    store: &Store,
    remote: &dyn Remote,
    id: &str,
) -> Result<(Proposal, MergeReport), SyncError> {
    let (p, _) = refresh(store, remote, id)?;
    if !remote.allowed(&p.fork)?.read {
        return Err(refused(remote, &format!("may not read '{}'", p.fork)));
    }
    pull(store, remote, &p.to, &p.to)?;
    pull(store, remote, &p.fork, &p.to)?;
    Ok(store.review(id)?)
}

/// Accepts proposal `id` (`kiln accept ID --remote`): pulls the target and the fork, checks
/// the merge, wins the decision (the create-only `ID.decision`: of two moderators deciding at
/// once one keeps it, and the other publishes nothing), then merges the fork's pinned state
/// into the target here (with `only`, just those documents) and pushes it. An accept
/// stopped after its decision is finished by running it again: the merge is made where the
/// target lacks it, and pushed.
pub fn accept(
    store: &Store,
    remote: &dyn Remote,
    id: &str,
    only: Option<&[String]>,
    by: &str,
) -> Result<Decided, SyncError> {
    let (p, decided) = refresh(store, remote, id)?;
    may_decide(remote, &p.to)?;
    match (&p.status, decided) {
        (Status::Rejected { .. }, true) => return Err(already(&p)),
        (Status::Rejected { .. }, false) => {
            return Err(kiln::Error::InvalidArgument(format!(
                "proposal {id} was rejected here; its decision is not on the remote yet: \
                 `kiln reject {id} --remote` files it"
            ))
            .into())
        }
        (Status::Open, _) => {
            let target = pull(store, remote, &p.to, &p.to)?;
            pull(store, remote, &p.fork, &p.to)?;
            store.review(id)?; // (the pinned state is here and merges: checked before deciding)
            store.mark_accepted(id, only, by)?;
            decide(store, remote, id)?;
            // (Both were pulled just now: the merge and its push are all that is left.)
            let merge = store.merge_proposal(id)?;
            let pushed = sync(store, &target, remote, &p.to, SyncOptions::default())?;
            return Ok(Decided {
                proposal: store.proposal(id)?,
                merge: Some(merge),
                pushed: Some(pushed),
            });
        }
        // Accepted (here, or there by anyone): what is left is the merge and its push.
        (Status::Accepted { .. }, false) => {
            decide(store, remote, id)?;
        }
        (Status::Accepted { .. }, true) => {}
    }
    // Finishing an accept decided before: a merge made here and not pushed goes now; one
    // pushed by another is taken.
    let target = store.open_db(&p.to)?;
    let mut pushed = sync(store, &target, remote, &p.to, SyncOptions::default())?;
    pull(store, remote, &p.fork, &p.to)?;
    let (_, preview) = store.review(id)?;
    let merge = if preview.events > 0 || !preview.changed.is_empty() {
        let m = store.merge_proposal(id)?;
        pushed = sync(store, &target, remote, &p.to, SyncOptions::default())?;
        Some(m)
    } else {
        None
    };
    Ok(Decided {
        proposal: store.proposal(id)?,
        merge,
        pushed: Some(pushed),
    })
}

/// Rejects proposal `id` with a reason the contributor sees (`kiln reject ID --remote`).
pub fn reject(
    store: &Store,
    remote: &dyn Remote,
    id: &str,
    reason: &str,
    by: &str,
) -> Result<Decided, SyncError> {
    let (p, decided) = refresh(store, remote, id)?;
    if decided {
        return Err(already(&p));
    }
    may_decide(remote, &p.to)?;
    match p.status {
        Status::Open => {
            store.reject(id, reason, by)?;
        }
        Status::Rejected { .. } => {} // rejected here before: file it
        Status::Accepted { .. } => {
            return Err(kiln::Error::InvalidArgument(format!(
                "proposal {id} was accepted here; its decision is not on the remote yet: \
                 `kiln accept {id} --remote` finishes it"
            ))
            .into())
        }
    }
    let proposal = decide(store, remote, id)?;
    Ok(Decided {
        proposal,
        merge: None,
        pushed: None,
    })
}

/// Writes this store's decision on proposal `id` to the remote. Another moderator's decision
/// written meanwhile wins: it is taken in, and the call fails saying so (nothing of this
/// decision was published).
fn decide(store: &Store, remote: &dyn Remote, id: &str) -> Result<Proposal, SyncError> {
    let ours = store.proposal(id)?;
    let record = store.proposal_record(id)?;
    if remote.put_proposal_record(&ours.to, &decision_name(id), &record)? {
        return Ok(ours);
    }
    let there = remote.get_proposal_record(&ours.to, &decision_name(id))?;
    if there.as_deref() == Some(record.as_slice()) {
        return Ok(ours); // (our own, whose answer was lost before)
    }
    let theirs = take_in(store, remote, &ours.to, id, true)?.unwrap_or(ours);
    Err(kiln::Error::InvalidArgument(format!(
        "proposal {id} was decided by another moderator meanwhile ({}); that decision stands, \
         and nothing of this one was published",
        state(&theirs)
    ))
    .into())
}

fn state(p: &Proposal) -> String {
    match &p.status {
        Status::Open => "open".into(),
        Status::Accepted { by, .. } => format!("accepted by {by}"),
        Status::Rejected { by, reason, .. } => format!("rejected by {by}: {reason}"),
    }
}

/// Decisions made on the proposals this store filed on `remote` for or from databases `dbs`
/// and still holds open (one request each): each is taken in and returned (what `kiln sync`
/// tells a contributor), then forgotten as filed. When a request fails, the call fails and
/// forgets nothing: the next one tells them all.
pub fn decisions(
    store: &Store,
    remote: &dyn Remote,
    dbs: &[&str],
) -> Result<Vec<Proposal>, SyncError> {
    let mut filed = Filed::load(store)?;
    let here = remote.location();
    let mut out = Vec::new();
    let mut gone = Vec::new();
    for (id, at) in &filed.filed {
        if *at != here {
            continue;
        }
        let p = match store.proposal(id) {
            Ok(p) => p,
            Err(kiln::Error::InvalidArgument(_)) => {
                gone.push(id.clone()); // (no longer here: its target was dropped)
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        if !dbs.contains(&p.fork.as_str()) && !dbs.contains(&p.to.as_str()) {
            continue;
        }
        if let Some(d) = take_in(store, remote, &p.to, id, true)? {
            gone.push(id.clone());
            out.push(d);
        }
    }
    if !gone.is_empty() {
        for id in &gone {
            filed.filed.remove(id);
        }
        filed.save()?;
    }
    Ok(out)
}

/// Whether this store filed proposals on a remote whose decisions it has not seen yet (so a
/// sync has [`decisions`] to ask about).
pub fn awaiting_decisions(store: &Store) -> io::Result<bool> {
    Ok(!Filed::load(store)?.filed.is_empty())
}

/// Which proposals this store filed on which remote (by location): `sync/filed.json`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Filed {
    version: u32,
    /// Filed: id → the remote's location.
    filed: BTreeMap<String, String>,
    /// Being filed (made here, its filing's answer not heard yet): id → location.
    #[serde(default)]
    pending: BTreeMap<String, String>,
    #[serde(skip)]
    path: std::path::PathBuf,
}

impl Filed {
    fn load(store: &Store) -> io::Result<Filed> {
        let path = store.root().join("sync").join("filed.json");
        let mut f = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice::<Filed>(&b).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: {e}", path.display()),
                )
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Filed::default(),
            Err(e) => return Err(e),
        };
        f.version = 1;
        f.path = path;
        Ok(f)
    }

    fn save(&self) -> io::Result<()> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let json = serde_json::to_vec_pretty(self).map_err(io::Error::other)?;
        crate::state::write_atomic(&self.path, &json)
    }
}
