//! Contributions: a fork's changes nominated for another database, reviewed, then accepted
//! (merged, wholly or in part) or rejected. Each proposal is a small JSON file in
//! `ROOT/proposals/`, written atomically; deciding one first creates `<id>.decided` exclusively,
//! so a proposal is decided once even with several moderators at work.

use crate::db::{now_ms, Database, MergeReport};
use crate::error::{Error, Result};
use crate::storage::write_atomic;
use crate::store::Store;
use serde_json::{json, Value};
use std::path::PathBuf;

/// Where a proposal stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    Open,
    /// Merged into the target by the event named (with `only`: just those documents).
    Accepted {
        event: Option<String>,
        by: String,
        at: u64,
        only: Vec<String>,
    },
    Rejected {
        by: String,
        at: u64,
        reason: String,
    },
}

/// A nominated contribution.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proposal {
    pub id: String,
    /// The database whose changes are proposed.
    pub fork: String,
    /// The database they are proposed for.
    pub to: String,
    pub message: String,
    /// ms since the Unix epoch.
    pub created: u64,
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
        json!({"v": 1, "id": self.id, "fork": self.fork, "to": self.to,
            "message": self.message, "created": self.created, "status": status})
    }

    fn from_json(path: &std::path::Path, v: &Value) -> Result<Proposal> {
        let bad = || Error::corrupt(path.display().to_string(), "not a proposal record");
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
            status,
        })
    }
}

impl Store {
    fn proposals_dir(&self) -> PathBuf {
        self.root().join("proposals")
    }

    fn proposal_path(&self, id: &str) -> Result<PathBuf> {
        if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(Error::InvalidArgument(format!(
                "{id:?} is not a proposal id"
            )));
        }
        Ok(self.proposals_dir().join(format!("{id}.json")))
    }

    fn save(&self, p: &Proposal) -> Result<()> {
        let path = self.proposal_path(&p.id)?;
        let sync = self.options().durability == crate::Durability::Full;
        write_atomic(&path, p.to_json().to_string().as_bytes(), sync, None)
            .map_err(|e| Error::io(&path, e))
    }

    /// Nominates `fork`'s changes for `to` (`kiln propose FORK --to MAIN`).
    pub fn propose(&self, fork: &str, to: &str, message: &str) -> Result<Proposal> {
        if fork == to {
            return Err(Error::InvalidArgument(
                "a database cannot propose changes to itself".into(),
            ));
        }
        self.open_db(fork)?;
        self.open_db(to)?;
        let dir = self.proposals_dir();
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let p = Proposal {
            // Time-ordered (and, within a millisecond, ordered within this process).
            id: uuid::Uuid::now_v7().simple().to_string(),
            fork: fork.into(),
            to: to.into(),
            message: message.into(),
            created: now_ms(),
            status: Status::Open,
        };
        self.save(&p)?;
        Ok(p)
    }

    /// One proposal.
    pub fn proposal(&self, id: &str) -> Result<Proposal> {
        let path = self.proposal_path(id)?;
        let b = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::InvalidArgument(format!("no proposal {id:?}")))
            }
            Err(e) => return Err(Error::io(&path, e)),
        };
        let v: Value = serde_json::from_slice(&b)
            .map_err(|_| Error::corrupt(path.display().to_string(), "proposal is not JSON"))?;
        Proposal::from_json(&path, &v)
    }

    /// Proposals (for database `to`, or all), oldest first; with `open_only`, the open ones.
    pub fn proposals(&self, to: Option<&str>, open_only: bool) -> Result<Vec<Proposal>> {
        let dir = self.proposals_dir();
        let rd = match std::fs::read_dir(&dir) {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(&dir, e)),
        };
        let mut out = Vec::new();
        for e in rd {
            let e = e.map_err(|e| Error::io(&dir, e))?;
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(id) = name.strip_suffix(".json") else {
                continue;
            };
            let p = self.proposal(id)?;
            if to.is_none_or(|t| p.to == t) && (!open_only || p.status == Status::Open) {
                out.push(p);
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// What accepting a proposal would do to its target now: the documents it would change
    /// and the conflicts it would settle (nothing is written).
    pub fn review(&self, id: &str) -> Result<(Proposal, MergeReport)> {
        let p = self.proposal(id)?;
        let (fork, to) = (self.open_db(&p.fork)?, self.open_db(&p.to)?);
        let r = to.preview_merge(&fork)?;
        Ok((p, r))
    }

    /// Claims an open proposal for a decision: only one caller ever gets it.
    fn claim(&self, id: &str) -> Result<(Proposal, PathBuf)> {
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
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&mark)
        {
            Ok(_) => Ok((p, mark)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let now = self.proposal(id)?;
                Err(if now.status == Status::Open {
                    Error::Busy(format!("proposal {id} (another moderator is deciding it)"))
                } else {
                    decided(&now)
                })
            }
            Err(e) => Err(Error::io(&mark, e)),
        }
    }

    /// Accepts a proposal: merges the fork into the target (with `only`, just those documents),
    /// recording who accepted which proposal in the merge event's note.
    pub fn accept(&self, id: &str, only: Option<&[String]>, by: &str) -> Result<MergeReport> {
        let (mut p, mark) = self.claim(id)?;
        let result = (|| {
            let (fork, to): (Database, Database) = (self.open_db(&p.fork)?, self.open_db(&p.to)?);
            let note = format!(
                "accepted proposal {} from {} by {by}: {}",
                p.id, p.fork, p.message
            );
            to.merge_from_noted(&fork, only, &note)
        })();
        match result {
            Ok(r) => {
                p.status = Status::Accepted {
                    event: r.event.map(|e| e.to_string()),
                    by: by.into(),
                    at: now_ms(),
                    only: only.map(<[String]>::to_vec).unwrap_or_default(),
                };
                self.save(&p)?;
                Ok(r)
            }
            Err(e) => {
                let _ = std::fs::remove_file(&mark);
                Err(e)
            }
        }
    }

    /// Rejects a proposal, with a reason.
    pub fn reject(&self, id: &str, reason: &str, by: &str) -> Result<Proposal> {
        let (mut p, _) = self.claim(id)?;
        p.status = Status::Rejected {
            by: by.into(),
            at: now_ms(),
            reason: reason.into(),
        };
        self.save(&p)?;
        Ok(p)
    }
}
