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

/// Pushes database `fork` to `remote` (a full sync) and files a proposal of its changes for
/// database `to` there (`kiln propose FORK --to MAIN --remote URL`). The proposal is kept
/// here too, and remembered as filed on the remote, so [`decisions`] asks about it.
pub fn propose(
    store: &Store,
    remote: &dyn Remote,
    fork: &str,
    to: &str,
    message: &str,
) -> Result<(Proposal, SyncReport), SyncError> {
    crate::check_db(fork)?;
    crate::check_db(to)?;
    let db = store.open_db(fork)?;
    store.open_db(to)?;
    let may = remote.allowed(fork)?;
    if !may.write {
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
    let p = store.propose(fork, to, message)?;
    let record = store.proposal_record(&p.id)?;
    if !remote.put_proposal_record(to, &prop_name(&p.id), &record)? {
        return Err(SyncError::Remote(io::Error::other(format!(
            "{} holds a proposal {} already",
            remote.location(),
            p.id
        ))));
    }
    Filed::load(store)?.add(&p.id, &remote.location())?;
    Ok((p, pushed))
}

/// The proposals filed on `remote` for database `to` (open ones only unless `all`), each
/// taken in here with its decision, if any, so it can be reviewed and decided.
pub fn list(store: &Store, remote: &dyn Remote, to: &str, all: bool) -> Result<Listed, SyncError> {
    let names = remote.list_proposal_records(to)?;
    let mut out = Listed::default();
    for name in &names {
        let (id, decision) = crate::check_proposal_record(name)?;
        if decision {
            continue;
        }
        let decided = names.contains(&decision_name(id));
        // A decision taken in before needs no request.
        let p = match store.proposal(id).ok() {
            Some(p) if p.status != Status::Open => Ok(Some(p)),
            _ => {
                let which = if decided {
                    decision_name(id)
                } else {
                    prop_name(id)
                };
                take_in(store, remote, to, id, &which)
            }
        };
        match p {
            Ok(Some(p)) if p.to == to => {
                if all || p.status == Status::Open {
                    out.proposals.push(p);
                }
            }
            Ok(Some(p)) => out.unreadable.push((
                id.to_owned(),
                format!("filed for '{to}' but names '{}'", p.to),
            )),
            Ok(None) => {} // (gone meanwhile)
            Err(SyncError::Kiln(e)) => out.unreadable.push((id.to_owned(), e.to_string())),
            Err(e) => return Err(e),
        }
    }
    out.proposals.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

/// Reads record `name` of proposal `id` from the remote and takes it in (`None`: absent).
fn take_in(
    store: &Store,
    remote: &dyn Remote,
    to: &str,
    id: &str,
    name: &str,
) -> Result<Option<Proposal>, SyncError> {
    match remote.get_proposal_record(to, name)? {
        Some(b) => Ok(Some(store.take_in_proposal(id, &b)?)),
        None => Ok(None),
    }
}

/// Proposal `id` as the remote has it now, and whether the remote holds a decision on it
/// (taken in). It must be known here (listed with [`list`], or filed from here): that says
/// which database's records hold it.
fn refresh(store: &Store, remote: &dyn Remote, id: &str) -> Result<(Proposal, bool), SyncError> {
    let p = store.proposal(id)?;
    if let Some(d) = take_in(store, remote, &p.to, id, &decision_name(id))? {
        return Ok((d, true));
    }
    if p.status != Status::Open {
        return Ok((p, false));
    }
    match take_in(store, remote, &p.to, id, &prop_name(id))? {
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

/// The remote's refusal of `what`, told before anything changed here.
fn refused(remote: &dyn Remote, what: &str) -> SyncError {
    SyncError::Remote(io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!("{}: this client {what}", remote.location()),
    ))
}

/// Refuses a decision on `p` a client may not write to the remote.
fn may_decide(remote: &dyn Remote, p: &Proposal) -> Result<(), SyncError> {
    if remote.allowed(&p.to)?.write {
        return Ok(());
    }
    Err(refused(
        remote,
        &format!(
            "may not write '{}' (deciding a proposal for it needs that)",
            p.to
        ),
    ))
}

/// The refusal to decide a proposal the remote holds a decision on.
fn already(p: &Proposal) -> SyncError {
    kiln::Error::InvalidArgument(format!("proposal {} was already {}", p.id, state(p))).into()
}

/// Pulls database `name` from the remote (made here as an empty replica of `like`'s lineage
/// when absent: a contributor's fork, whose files the target shares, so only what the fork
/// adds is fetched).
fn pull(store: &Store, remote: &dyn Remote, name: &str, like: &str) -> Result<Database, SyncError> {
    let db = match store.open_db(name) {
        Ok(db) => db,
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
    pull(store, remote, &p.to, &p.to)?;
    pull(store, remote, &p.fork, &p.to)?;
    Ok(store.review(id)?)
}

/// Accepts proposal `id` (`kiln accept ID --remote`): pulls the target and the fork, merges
/// the fork's pinned state into the target here (with `only`, just those documents), pushes
/// the target, then writes the decision. An accept stopped after its merge is finished by
/// running it again (the push and the decision).
pub fn accept(
    store: &Store,
    remote: &dyn Remote,
    id: &str,
    only: Option<&[String]>,
    by: &str,
) -> Result<Decided, SyncError> {
    let (p, decided) = refresh(store, remote, id)?;
    if decided {
        return Err(already(&p));
    }
    may_decide(remote, &p)?;
    let merge = match p.status {
        Status::Open => {
            pull(store, remote, &p.to, &p.to)?;
            pull(store, remote, &p.fork, &p.to)?;
            Some(store.accept(id, only, by)?)
        }
        Status::Accepted { .. } => None, // merged here before: finish it
        Status::Rejected { .. } => {
            return Err(kiln::Error::InvalidArgument(format!(
                "proposal {id} was rejected here; its decision is not on the remote yet: \
                 `kiln reject {id} --remote` files it"
            ))
            .into())
        }
    };
    let target = store.open_db(&p.to)?;
    let pushed = sync(store, &target, remote, &p.to, SyncOptions::default())?;
    let proposal = decide(store, remote, id)?;
    Ok(Decided {
        proposal,
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
    may_decide(remote, &p)?;
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
/// written meanwhile wins: it is taken in, and the call fails saying so.
fn decide(store: &Store, remote: &dyn Remote, id: &str) -> Result<Proposal, SyncError> {
    let ours = store.proposal(id)?;
    let record = store.proposal_record(id)?;
    if remote.put_proposal_record(&ours.to, &decision_name(id), &record)? {
        return Ok(ours);
    }
    let theirs = take_in(store, remote, &ours.to, id, &decision_name(id))?.unwrap_or(ours);
    Err(kiln::Error::InvalidArgument(format!(
        "proposal {id} was decided by another moderator meanwhile ({}); that decision stands{}",
        state(&theirs),
        match theirs.status {
            Status::Accepted { .. } => "",
            _ => " (a merge made here was pushed all the same: the same changes)",
        }
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
/// tells a contributor). Decided ones are forgotten as filed.
pub fn decisions(
    store: &Store,
    remote: &dyn Remote,
    dbs: &[&str],
) -> Result<Vec<Proposal>, SyncError> {
    let mut filed = Filed::load(store)?;
    let here = remote.location();
    let mut out = Vec::new();
    let ids: Vec<String> = filed
        .filed
        .iter()
        .filter(|(_, at)| **at == here)
        .map(|(id, _)| id.clone())
        .collect();
    for id in ids {
        let p = match store.proposal(&id) {
            Ok(p) => p,
            Err(_) => {
                filed.remove(&id)?; // (gone here: its target was dropped)
                continue;
            }
        };
        if !dbs.contains(&p.fork.as_str()) && !dbs.contains(&p.to.as_str()) {
            continue;
        }
        if let Some(d) = take_in(store, remote, &p.to, &id, &decision_name(&id))? {
            filed.remove(&id)?;
            out.push(d);
        }
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
    filed: BTreeMap<String, String>,
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

    fn add(&mut self, id: &str, location: &str) -> io::Result<()> {
        self.filed.insert(id.to_owned(), location.to_owned());
        self.save()
    }

    fn remove(&mut self, id: &str) -> io::Result<()> {
        if self.filed.remove(id).is_some() {
            self.save()?;
        }
        Ok(())
    }
}
