//! Contributions: a fork's changes nominated for another database, reviewed, then accepted
//! (merged, wholly or in part) or rejected. Each proposal is a small record in
//! `ROOT/proposals/<id>.prop`, sealed with the target database's key (its message, names and
//! decisions are readable only with the key) and written atomically, mode 0600; deciding one
//! first creates `<id>.decided` exclusively, so a proposal is decided once even with several
//! moderators at work.
//!
//! A proposal pins the fork's clock heads when it is made: review and accept work on exactly
//! that state, and refuse once the fork has moved on, until the proposal is updated
//! ([`Store::update_proposal`]) or a new one is made.
//!
//! ```text
//! "KILNPROP" ‖ version u32 LE (=1) ‖ lineage (16) ‖ salt (32) ‖ sealed(aad, JSON body)
//! sealed under HKDF(target's lineage key, "kiln/v1 proposal key" ‖ salt), a fresh salt and
//! nonce per write
//! aad = "kiln/proposal/v1" ‖ lineage ‖ id (ASCII)
//! ```

use crate::db::{now_ms, Database, MergeReport};
use crate::error::{Error, Result};
use crate::format::block::cid::Cid;
use crate::format::seal::{Key, Purpose, SALT_LEN};
use crate::keys::Lineage;
use crate::storage::write_atomic;
use crate::store::Store;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// What a sealed proposal record starts with (a remote that keeps records checks for it).
pub const RECORD_MAGIC: &[u8; 8] = b"KILNPROP";
const MAGIC: &[u8; 8] = RECORD_MAGIC;
const VERSION: u32 = 1;
const PREFIX: usize = 8 + 4 + 16 + SALT_LEN;

/// Where a proposal stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    /// Neither accepted nor rejected yet.
    Open,
    /// Merged into the target by the event named (with `only`: just those documents).
    Accepted {
        /// The merge event (`None`: a fast-forward).
        event: Option<String>,
        /// Who accepted it.
        by: String,
        /// When (ms since the Unix epoch).
        at: u64,
        /// The documents taken (empty: all).
        only: Vec<String>,
    },
    /// Declined, with a reason.
    Rejected {
        /// Who rejected it.
        by: String,
        /// When (ms since the Unix epoch).
        at: u64,
        /// Why.
        reason: String,
    },
}

/// A nominated contribution.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proposal {
    /// Its id (a UUIDv7 in hex).
    pub id: String,
    /// The database whose changes are proposed.
    pub fork: String,
    /// The database they are proposed for.
    pub to: String,
    /// What the proposer wrote about it.
    pub message: String,
    /// ms since the Unix epoch.
    pub created: u64,
    /// The fork's clock heads when the proposal was made (or last updated): what review shows
    /// and accept merges.
    pub heads: Vec<Cid>,
    /// Where it stands.
    pub status: Status,
}

impl Proposal {
    fn to_json(&self) -> Value {
        let status = match &self.status {
            Status::Open => json!({"state": "open"}),
            Status::Accepted {
                event,
                by,
                at,
                only,
            } => {
                json!({"state": "accepted", "event": event, "by": by, "at": at, "only": only})
            }
            Status::Rejected { by, at, reason } => {
                json!({"state": "rejected", "by": by, "at": at, "reason": reason})
            }
        };
        json!({"v": 2, "id": self.id, "fork": self.fork, "to": self.to,
            "message": self.message, "created": self.created,
            "heads": self.heads.iter().map(|c| c.to_string()).collect::<Vec<_>>(),
            "status": status})
    }

    fn from_json(path: &Path, v: &Value) -> Result<Proposal> {
        let bad = || Error::corrupt(path.display().to_string(), "not a proposal record");
        // Version 1 (plaintext, before heads were pinned) has none: such a proposal must be
        // updated before it can be reviewed or accepted.
        let heads = match v.get("heads").and_then(|h| h.as_array()) {
            Some(a) => a
                .iter()
                .map(|c| c.as_str().and_then(Cid::parse).ok_or_else(bad))
                .collect::<Result<Vec<_>>>()?,
            None => Vec::new(),
        };
        let s = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_owned);
        let st = v.get("status").ok_or_else(bad)?;
        let ss = |k: &str| st.get(k).and_then(|x| x.as_str()).unwrap_or("").to_owned();
        let at = st.get("at").and_then(|x| x.as_u64()).unwrap_or(0);
        let status = match st.get("state").and_then(|x| x.as_str()) {
            Some("open") => Status::Open,
            Some("accepted") => Status::Accepted {
                event: st.get("event").and_then(|x| x.as_str()).map(str::to_owned),
                by: ss("by"),
                at,
                only: st
                    .get("only")
                    .and_then(|x| x.as_array())
                    .map(|a| {
                        a.iter()
                            .filter_map(|x| x.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default(),
            },
            Some("rejected") => Status::Rejected {
                by: ss("by"),
                at,
                reason: ss("reason"),
            },
            _ => return Err(bad()),
        };
        Ok(Proposal {
            id: s("id").ok_or_else(bad)?,
            fork: s("fork").ok_or_else(bad)?,
            to: s("to").ok_or_else(bad)?,
            message: s("message").unwrap_or_default(),
            created: v.get("created").and_then(|x| x.as_u64()).unwrap_or(0),
            heads,
            status,
        })
    }
}

/// Seals a proposal's JSON body under the target's lineage key.
fn seal(id: &str, lineage: &Lineage, key: &Key, body: &[u8]) -> std::io::Result<Vec<u8>> {
    let salt = crate::format::seal::fresh_salt()?;
    let mut out = Vec::with_capacity(PREFIX + body.len() + crate::format::seal::OVERHEAD);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(lineage);
    out.extend_from_slice(&salt);
    key.subkey(Purpose::Proposal, &salt).seal_into(
        crate::format::seal::random_nonce()?,
        &aad(lineage, id),
        body,
        &mut out,
    )?;
    Ok(out)
}

/// Opens a sealed proposal's body (`b`: the whole file, checked by [`lineage_of`]).
fn open_sealed(b: &[u8], lineage: &Lineage, key: &Key, id: &str) -> Option<Vec<u8>> {
    let salt: crate::format::seal::Salt = b.get(PREFIX - SALT_LEN..PREFIX)?.try_into().ok()?;
    key.subkey(Purpose::Proposal, &salt)
        .open(&aad(lineage, id), &b[PREFIX..])
        .ok()
}

fn aad(lineage: &Lineage, id: &str) -> Vec<u8> {
    let mut a = b"kiln/proposal/v1".to_vec();
    a.extend_from_slice(lineage);
    a.extend_from_slice(id.as_bytes());
    a
}

/// The lineage a sealed proposal names (plaintext, so the key can be found).
fn lineage_of(path: &Path, b: &[u8]) -> Result<Lineage> {
    if b.len() < PREFIX || &b[..8] != MAGIC {
        return Err(Error::corrupt(
            path.display().to_string(),
            "not a proposal record",
        ));
    }
    let v = u32::from_le_bytes([b[8], b[9], b[10], b[11]]);
    if v != VERSION {
        return Err(Error::NewerFormat {
            what: path.display().to_string(),
            version: v,
        });
    }
    let mut l = [0u8; 16];
    l.copy_from_slice(&b[12..28]);
    Ok(l)
}

/// The JSON body of proposal `id`'s stored bytes `b`, if sealed under `key` (for audits).
pub(crate) fn opens_with(b: &[u8], key: &Key, id: &str) -> Option<Vec<u8>> {
    let l = lineage_of(Path::new(""), b).ok()?;
    open_sealed(b, &l, key, id)
}

/// What a stored proposal file holds.
enum Stored {
    Proposal(Box<Proposal>),
    /// Sealed under a key the keybag no longer has (its target was dropped): unreadable.
    NoKey,
}

impl Store {
    fn proposals_dir(&self) -> PathBuf {
        self.root().join("proposals")
    }

    fn check_proposal_id(id: &str) -> Result<()> {
        if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(Error::InvalidArgument(format!(
                "{id:?} is not a proposal id"
            )));
        }
        Ok(())
    }

    fn proposal_path(&self, id: &str) -> Result<PathBuf> {
        Self::check_proposal_id(id)?;
        Ok(self.proposals_dir().join(format!("{id}.prop")))
    }

    /// Where kiln before sealed proposals kept them, in plaintext.
    fn legacy_path(&self, id: &str) -> PathBuf {
        self.proposals_dir().join(format!("{id}.json"))
    }

    /// Writes a proposal sealed under its target's key (mode 0600, always fsynced: it is
    /// small and rare), then removes a plaintext copy an older kiln left.
    fn save(&self, p: &Proposal) -> Result<()> {
        self.inner.writable("a proposal")?;
        let to = self.open_db(&p.to)?;
        let path = self.proposal_path(&p.id)?;
        let body = p.to_json().to_string();
        let bytes = seal(&p.id, &to.lineage(), &to.key(), body.as_bytes())
            .map_err(|e| Error::io(&path, e))?;
        write_atomic(&path, &bytes, true, Some(0o600)).map_err(|e| Error::io(&path, e))?;
        let legacy = self.legacy_path(&p.id);
        match std::fs::remove_file(&legacy) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(&legacy, e)),
            _ => Ok(()),
        }
    }

    /// Reads a stored proposal (sealed, or a plaintext one an older kiln wrote, which is
    /// sealed now when its target still exists).
    fn load(&self, id: &str) -> Result<Option<Stored>> {
        let path = self.proposal_path(id)?;
        match std::fs::read(&path) {
            Ok(b) => {
                let l = lineage_of(&path, &b)?;
                let Some(key) = self.inner.keybag.get(&l)? else {
                    return Ok(Some(Stored::NoKey));
                };
                let body = open_sealed(&b, &l, &key, id).ok_or_else(|| {
                    Error::corrupt(
                        path.display().to_string(),
                        "proposal record fails authentication",
                    )
                })?;
                let v: Value = serde_json::from_slice(&body).map_err(|_| {
                    Error::corrupt(path.display().to_string(), "proposal is not JSON")
                })?;
                let p = Proposal::from_json(&path, &v)?;
                if p.id != id {
                    return Err(Error::corrupt(
                        path.display().to_string(),
                        "proposal id mismatch",
                    ));
                }
                Ok(Some(Stored::Proposal(Box::new(p))))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let legacy = self.legacy_path(id);
                let b = match std::fs::read(&legacy) {
                    Ok(b) => b,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                    Err(e) => return Err(Error::io(&legacy, e)),
                };
                let v: Value = serde_json::from_slice(&b).map_err(|_| {
                    Error::corrupt(legacy.display().to_string(), "proposal is not JSON")
                })?;
                let p = Proposal::from_json(&legacy, &v)?;
                if self.inner.opts.read_only {
                    // Sealed by the next writer that reads it.
                    return Ok(Some(Stored::Proposal(Box::new(p))));
                }
                match self.save(&p) {
                    Ok(()) => Ok(Some(Stored::Proposal(Box::new(p)))),
                    // Its target is gone: nothing can decide it any more.
                    Err(Error::NoSuchDatabase(_)) => {
                        let _ = std::fs::remove_file(&legacy);
                        Ok(None)
                    }
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(Error::io(&path, e)),
        }
    }

    /// The ids of the proposals stored, sealed or not.
    fn proposal_ids(&self) -> Result<Vec<String>> {
        let dir = self.proposals_dir();
        let rd = match std::fs::read_dir(&dir) {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(&dir, e)),
        };
        let mut ids = Vec::new();
        for e in rd {
            let e = e.map_err(|e| Error::io(&dir, e))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(id) = name
                .strip_suffix(".prop")
                .or_else(|| name.strip_suffix(".json"))
            {
                if Self::check_proposal_id(id).is_ok() {
                    ids.push(id.to_owned());
                }
            }
        }
        ids.sort();
        ids.dedup();
        Ok(ids)
    }

    /// Removes proposals whose target is gone: sealed ones no key opens any more (their
    /// target was dropped with its key) or naming a target that no longer exists, and
    /// plaintext ones whose target is gone (garbage collection, which holds the GC lock
    /// exclusively: this opens no database, as an open may finish a purge through gc).
    /// Returns how many.
    pub(crate) fn remove_unreadable_proposals(&self) -> Result<usize> {
        let mut n = 0;
        for id in self.proposal_ids()? {
            let sealed = self.proposal_path(&id)?;
            let legacy = self.legacy_path(&id);
            let gone = match std::fs::read(&sealed) {
                Ok(b) => match lineage_of(&sealed, &b) {
                    // No key: its lineage is gone. With the key: gone when its target is (a
                    // fork of the lineage keeps the key alive). (A key that cannot be read
                    // may still be there: kept, as its database.)
                    Ok(l) => match self.inner.keybag.get(&l) {
                        Ok(None) => true,
                        Ok(Some(k)) => open_sealed(&b, &l, &k, &id)
                            .and_then(|body| serde_json::from_slice::<Value>(&body).ok())
                            .and_then(|v| v.get("to")?.as_str().map(str::to_owned))
                            .is_some_and(|to| !self.exists(&to)),
                        Err(_) => false,
                    },
                    Err(_) => false, // damaged or newer: not garbage of ours to judge
                },
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    match std::fs::read(&legacy) {
                        Ok(b) => serde_json::from_slice::<Value>(&b)
                            .ok()
                            .and_then(|v| v.get("to")?.as_str().map(str::to_owned))
                            .is_some_and(|to| !self.exists(&to)),
                        Err(_) => false,
                    }
                }
                Err(e) => return Err(Error::io(&sealed, e)),
            };
            if gone {
                for p in [sealed, legacy] {
                    match std::fs::remove_file(&p) {
                        Ok(()) => n += 1,
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => return Err(Error::io(&p, e)),
                    }
                }
                let mark = self.proposals_dir().join(format!("{id}.decided"));
                let _ = std::fs::remove_file(mark);
            }
        }
        Ok(n)
    }

    /// The sealed record of proposal `id` as this store keeps it: what travels to a remote
    /// (`kiln propose --remote`), readable only with its target's key.
    pub fn proposal_record(&self, id: &str) -> Result<Vec<u8>> {
        self.proposal(id)?; // (a plaintext one an older kiln left is sealed now)
        let path = self.proposal_path(id)?;
        std::fs::read(&path).map_err(|e| Error::io(&path, e))
    }

    /// Takes in proposal `id`'s sealed record `bytes` from elsewhere (a remote's record of
    /// target database `to`: the proposal as filed, or with `decision` its decision) and keeps
    /// it as it is. Refused, with nothing changed, when it does not open with `to`'s key, is of
    /// another id or target, claims a decision it is not (a filed proposal that reads decided,
    /// a decision that decides nothing), or is a decision on another proposal than the one
    /// kept here (other fork, heads, message or time). A decision replaces what is kept here;
    /// a filed proposal replaces only an open one (a decision is never undone by an older
    /// copy). Returns the proposal as kept now.
    pub fn take_in_proposal(
        &self,
        id: &str,
        bytes: &[u8],
        to: &str,
        decision: bool,
    ) -> Result<Proposal> {
        self.inner.writable("a proposal")?;
        let path = self.proposal_path(id)?;
        let what = || format!("proposal record {id}");
        let l = lineage_of(Path::new(&what()), bytes)?;
        let target = self.open_db(to)?;
        if target.lineage() != l {
            return Err(Error::corrupt(
                what(),
                format!("sealed for another lineage than '{to}''s"),
            ));
        }
        let key = target.key();
        let body = open_sealed(bytes, &l, &key, id)
            .ok_or_else(|| Error::corrupt(what(), "proposal record fails authentication"))?;
        let v: Value = serde_json::from_slice(&body)
            .map_err(|_| Error::corrupt(what(), "proposal is not JSON"))?;
        let p = Proposal::from_json(Path::new(&what()), &v)?;
        if p.id != id {
            return Err(Error::corrupt(what(), "proposal id mismatch"));
        }
        if p.to != to {
            return Err(Error::corrupt(
                what(),
                format!("filed for '{to}' but names '{}'", p.to),
            ));
        }
        let kept = match self.load(id)? {
            Some(Stored::Proposal(k)) => Some(*k),
            _ => None,
        };
        if decision {
            if p.status == Status::Open {
                return Err(Error::corrupt(what(), "a decision that decides nothing"));
            }
            if let Some(k) = &kept {
                let same = k.fork == p.fork
                    && k.heads == p.heads
                    && k.message == p.message
                    && k.created == p.created;
                if !same {
                    return Err(Error::corrupt(
                        what(),
                        "a decision on another proposal than the one filed",
                    ));
                }
            }
        } else {
            if p.status != Status::Open {
                return Err(Error::corrupt(
                    what(),
                    "a filed proposal that claims a decision",
                ));
            }
            if let Some(k) = kept.filter(|k| k.status != Status::Open) {
                return Ok(k);
            }
        }
        self.make_proposals_dir()?;
        write_atomic(&path, bytes, true, Some(0o600)).map_err(|e| Error::io(&path, e))?;
        Ok(p)
    }

    /// Removes proposal `id` kept here while it is open (one this store made but could not
    /// file where it was meant to go).
    pub fn forget_proposal(&self, id: &str) -> Result<()> {
        let (p, _claim) = self.claim(id)?;
        let path = self.proposal_path(&p.id)?;
        std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))
    }

    fn make_proposals_dir(&self) -> Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = self.proposals_dir();
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(Error::io(&dir, e)),
            _ => Ok(()),
        }
    }

    /// Nominates `fork`'s changes for `to` (`kiln propose FORK --to MAIN`): the fork's
    /// current heads are pinned.
    pub fn propose(&self, fork: &str, to: &str, message: &str) -> Result<Proposal> {
        self.inner.writable("a proposal")?;
        if fork == to {
            return Err(Error::InvalidArgument(
                "a database cannot propose changes to itself".into(),
            ));
        }
        let heads = self.open_db(fork)?.heads()?;
        if heads.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "'{fork}' is empty: nothing to propose"
            )));
        }
        self.open_db(to)?;
        self.make_proposals_dir()?;
        let p = Proposal {
            // Time-ordered (and, within a millisecond, ordered within this process).
            id: uuid::Uuid::now_v7().simple().to_string(),
            fork: fork.into(),
            to: to.into(),
            message: message.into(),
            created: now_ms(),
            heads,
            status: Status::Open,
        };
        self.save(&p)?;
        Ok(p)
    }

    /// Pins an open proposal to its fork's current heads (after the fork changed; review it
    /// again before accepting).
    pub fn update_proposal(&self, id: &str) -> Result<Proposal> {
        // Claimed as a decision is, for the time of the rewrite: a decision made meanwhile
        // would otherwise be overwritten by the still open record read here (and the
        // proposal, merged, would read open with its mark set: never decidable again).
        let (mut p, _claim) = self.claim(id)?;
        p.heads = self.open_db(&p.fork)?.heads()?;
        self.save(&p)?;
        Ok(p)
    }

    /// One proposal.
    pub fn proposal(&self, id: &str) -> Result<Proposal> {
        match self.load(id)? {
            Some(Stored::Proposal(p)) => Ok(*p),
            Some(Stored::NoKey) => Err(Error::InvalidArgument(format!(
                "proposal {id:?} is sealed with the key of a database that no longer exists"
            ))),
            None => Err(Error::InvalidArgument(format!("no proposal {id:?}"))),
        }
    }

    /// Proposals (for database `to`, or all), oldest first; with `open_only`, the open ones.
    /// Proposals whose target was dropped (no key opens them) are left out.
    pub fn proposals(&self, to: Option<&str>, open_only: bool) -> Result<Vec<Proposal>> {
        let mut out = Vec::new();
        for id in self.proposal_ids()? {
            let Some(Stored::Proposal(p)) = self.load(&id)? else {
                continue;
            };
            if to.is_none_or(|t| p.to == t) && (!open_only || p.status == Status::Open) {
                out.push(*p);
            }
        }
        Ok(out)
    }

    /// The fork of proposal `p`, checked to be still at the heads the proposal pinned.
    fn pinned_fork(&self, p: &Proposal) -> Result<Database> {
        let fork = self.open_db(&p.fork)?;
        let now = fork.heads()?;
        // (A proposal an older kiln wrote pinned nothing: it must be updated first.)
        if p.heads.is_empty() || now != p.heads {
            return Err(Error::InvalidArgument(format!(
                "proposal {} pins '{}' at {}, but '{}' has changed since (now at {}): review \
                 it again after `kiln update-proposal {}`, or make a new proposal",
                p.id,
                p.fork,
                heads_text(&p.heads),
                p.fork,
                heads_text(&now),
                p.id
            )));
        }
        Ok(fork)
    }

    /// What accepting a proposal would do to its target now: the documents it would change
    /// and the conflicts it would settle (nothing is written). Refused once the fork moved on
    /// from the pinned heads.
    pub fn review(&self, id: &str) -> Result<(Proposal, MergeReport)> {
        let p = self.proposal(id)?;
        let (fork, to) = (self.pinned_fork(&p)?, self.open_db(&p.to)?);
        let r = to.preview_merge_pinned(&fork, &p.heads)?;
        Ok((p, r))
    }
    /// Claims an open proposal for a decision (or an update): an exclusive `flock` on
    /// `<id>.decided`, held until the returned file is dropped, so one caller at a time gets
    /// it, and a claimer killed midway leaves nothing that blocks the next (its lock goes with
    /// its process; an accept it left half done is taken up again: merging the same pinned
    /// state twice changes nothing). The mark file itself stays (unlinking it would let two
    /// claimers lock two files).
    fn claim(&self, id: &str) -> Result<(Proposal, std::fs::File)> {
        self.inner.writable("a decision on a proposal")?;
        let decided = |p: &Proposal| {
            Error::InvalidArgument(format!(
                "proposal {id} was already {}",
                match p.status {
                    Status::Accepted { .. } => "accepted",
                    _ => "rejected",
                }
            ))
        };
        let p = self.proposal(id)?;
        if p.status != Status::Open {
            return Err(decided(&p));
        }
        let mark = self.proposals_dir().join(format!("{id}.decided"));
        let file = {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&mark)
                .map_err(|e| Error::io(&mark, e))?
        };
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(Error::Busy(format!(
                    "proposal {id} (another moderator is deciding it)"
                )))
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(Error::io(&mark, e)),
        }
        // Holding it: a decision may have finished before.
        let now = self.proposal(id)?;
        if now.status != Status::Open {
            return Err(decided(&now));
        }
        Ok((now, file))
    }

    /// Accepts a proposal: merges the fork into the target (with `only`, just those documents),
    /// recording who accepted which proposal in the merge event's note.
    pub fn accept(&self, id: &str, only: Option<&[String]>, by: &str) -> Result<MergeReport> {
        let (mut p, _claim) = self.claim(id)?;
        let result = (|| {
            let (fork, to): (Database, Database) = (self.pinned_fork(&p)?, self.open_db(&p.to)?);
            let note = format!(
                "accepted proposal {} from {} by {by}: {}",
                p.id, p.fork, p.message
            );
            to.merge_pinned(&fork, &p.heads, only, &note)
        })();
        let r = result?;
        p.status = Status::Accepted {
            event: r.event.map(|e| e.to_string()),
            by: by.into(),
            at: now_ms(),
            only: only.map(<[String]>::to_vec).unwrap_or_default(),
        };
        self.save(&p)?;
        Ok(r)
    }

    /// Marks a proposal accepted (with `only`, of those documents) without merging it yet: a
    /// decision to be won elsewhere first (a remote's create-only decision record) before the
    /// merge is made and published ([`Store::merge_proposal`]). Refused once the fork moved on.
    pub fn mark_accepted(&self, id: &str, only: Option<&[String]>, by: &str) -> Result<Proposal> {
        let (mut p, _claim) = self.claim(id)?;
        self.pinned_fork(&p)?;
        p.status = Status::Accepted {
            event: None,
            by: by.into(),
            at: now_ms(),
            only: only.map(<[String]>::to_vec).unwrap_or_default(),
        };
        self.save(&p)?;
        Ok(p)
    }

    /// Merges an accepted proposal's pinned fork state into its target (after
    /// [`Store::mark_accepted`]; merging the same state again changes nothing).
    pub fn merge_proposal(&self, id: &str) -> Result<MergeReport> {
        let p = self.proposal(id)?;
        let Status::Accepted { by, only, .. } = &p.status else {
            return Err(Error::InvalidArgument(format!(
                "proposal {id} is not accepted"
            )));
        };
        let (fork, to) = (self.pinned_fork(&p)?, self.open_db(&p.to)?);
        let note = format!(
            "accepted proposal {} from {} by {by}: {}",
            p.id, p.fork, p.message
        );
        let only = (!only.is_empty()).then_some(only.as_slice());
        to.merge_pinned(&fork, &p.heads, only, &note)
    }

    /// Rejects a proposal, with a reason.
    pub fn reject(&self, id: &str, reason: &str, by: &str) -> Result<Proposal> {
        let (mut p, _claim) = self.claim(id)?;
        p.status = Status::Rejected {
            by: by.into(),
            at: now_ms(),
            reason: reason.into(),
        };
        self.save(&p)?;
        Ok(p)
    }
}

/// Heads for messages: their CIDs, comma-separated (`(empty)` for a new database).
fn heads_text(h: &[Cid]) -> String {
    if h.is_empty() {
        return "(empty)".into();
    }
    h.iter()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
