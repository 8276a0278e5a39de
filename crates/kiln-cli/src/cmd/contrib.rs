//! Contributions: propose a fork's changes, list, review, accept, reject and update proposals.

use super::sync::{open_named, sync_fail};
use super::Ctx;
use crate::out::{esc, proposal_json, Fail};
use clap::Subcommand;
use serde_json::json;

/// Proposals: a fork's changes nominated for another database, and their review.
#[derive(Subcommand)]
pub enum ContribGroup {
    /// Nominate FORK's changes for MAIN; prints the proposal id.
    ///
    /// With --remote, FORK is synced with the remote first and the proposal is filed there
    /// (sealed), for moderators to review; a later `kiln sync` of FORK or MAIN tells its
    /// decision.
    Propose {
        fork: String,
        #[arg(long, value_name = "MAIN")]
        to: String,
        #[arg(short, long, default_value = "")]
        message: String,
        /// File it on this remote (a remote name of FORK, or a URL).
        #[arg(long, value_name = "REMOTE")]
        remote: Option<String>,
    },
    /// Proposals for MAIN (open ones; --all for decided ones too).
    ///
    /// With --remote, those filed on the remote (MAIN needed), each taken in here so it can
    /// be reviewed and decided.
    Proposals {
        main: Option<String>,
        #[arg(long)]
        all: bool,
        /// The proposals filed on this remote (a remote name of MAIN, or a URL).
        #[arg(long, value_name = "REMOTE")]
        remote: Option<String>,
    },
    /// What accepting a proposal would change in its target now, conflicts flagged.
    ///
    /// With --remote, the target and the fork are pulled from the remote first (only what
    /// this store lacks: a fork adds its own diffs).
    Review {
        id: String,
        /// Pull from this remote first (a remote name of the target, or a URL).
        #[arg(long, value_name = "REMOTE")]
        remote: Option<String>,
    },
    /// Accept a proposal: merge the fork into the target.
    ///
    /// With --only, just those documents. Recorded in the target's history with who accepted
    /// it (--by, else $USER). A proposal is decided once.
    ///
    /// With --remote, the target and the fork are pulled first, the merge is pushed as the
    /// target's new state, and the decision is filed on the remote (an accept stopped midway
    /// is finished by running it again).
    Accept {
        id: String,
        #[arg(long, value_name = "ID", num_args = 1..)]
        only: Vec<String>,
        #[arg(long)]
        by: Option<String>,
        /// Decide it on this remote (a remote name of the target, or a URL).
        #[arg(long, value_name = "REMOTE")]
        remote: Option<String>,
    },
    /// Pin a proposal to its fork's current state (after the fork changed).
    ///
    /// A proposal pins the fork's state when it is made: review and accept work on exactly
    /// that state and refuse once the fork has moved on, until the proposal is updated.
    UpdateProposal { id: String },
    /// Reject a proposal, with a reason.
    ///
    /// With --remote, the decision is filed on the remote: the contributor sees it, reason
    /// and all, on their next sync.
    Reject {
        id: String,
        #[arg(short, long, default_value = "")]
        message: String,
        #[arg(long)]
        by: Option<String>,
        /// Decide it on this remote (a remote name of the target, or a URL).
        #[arg(long, value_name = "REMOTE")]
        remote: Option<String>,
    },
}

impl ContribGroup {
    pub fn run(self, ctx: &Ctx) -> Result<u8, Fail> {
        match self {
            ContribGroup::Propose {
                fork,
                to,
                message,
                remote,
            } => propose(ctx, fork, to, message, remote),
            ContribGroup::Proposals { main, all, remote } => proposals(ctx, main, all, remote),
            ContribGroup::Review { id, remote } => review(ctx, id, remote),
            ContribGroup::Accept {
                id,
                only,
                by,
                remote,
            } => accept(ctx, id, only, by, remote),
            ContribGroup::UpdateProposal { id } => update_proposal(ctx, id),
            ContribGroup::Reject {
                id,
                message,
                by,
                remote,
            } => reject(ctx, id, message, by, remote),
        }
    }
}

fn propose(
    ctx: &Ctx,
    fork: String,
    to: String,
    message: String,
    remote: Option<String>,
) -> Result<u8, Fail> {
    let Some(r) = remote else {
        let p = ctx.store.propose(&fork, &to, &message)?;
        ctx.out.print(
            || format!("proposal {} ({fork} -> {to})", p.id),
            || proposal_json(&p),
        );
        return Ok(0);
    };
    let remote = open_named(ctx, &fork, &r)?;
    let (p, pushed) = kiln_sync::proposals::propose(&ctx.store, &*remote, &fork, &to, &message)
        .map_err(sync_fail)?;
    ctx.out.print(
        || {
            format!(
                "proposal {} ({fork} -> {to}) filed on {} ({} files pushed)",
                p.id,
                esc(&remote.location()),
                pushed.files_pushed
            )
        },
        || {
            let mut v = proposal_json(&p);
            v["remote"] = json!(remote.location());
            v["files_pushed"] = json!(pushed.files_pushed);
            v
        },
    );
    Ok(0)
}

fn proposals(
    ctx: &Ctx,
    main: Option<String>,
    all: bool,
    remote: Option<String>,
) -> Result<u8, Fail> {
    let ps = match remote {
        None => ctx.store.proposals(main.as_deref(), !all)?,
        Some(r) => {
            let Some(main) = main else {
                return Err(crate::out::bad_input(
                    "kiln proposals MAIN --remote REMOTE: name the target database".into(),
                ));
            };
            let remote = open_named(ctx, &main, &r)?;
            let listed =
                kiln_sync::proposals::list(&ctx.store, &*remote, &main, all).map_err(sync_fail)?;
            for (id, why) in &listed.unreadable {
                eprintln!("kiln: proposal {id} on the remote left out: {why}");
            }
            listed.proposals
        }
    };
    ctx.out.print(
        || {
            ps.iter()
                .map(|p| {
                    format!(
                        "{}  {} -> {}  {}  {}",
                        p.id,
                        p.fork,
                        p.to,
                        proposal_json(p)["status"]["state"].as_str().unwrap_or(""),
                        esc(&p.message)
                    )
                })
                .collect::<Vec<_>>()
                .join("\n")
        },
        || json!(ps.iter().map(proposal_json).collect::<Vec<_>>()),
    );
    Ok(0)
}

fn review(ctx: &Ctx, id: String, remote: Option<String>) -> Result<u8, Fail> {
    let (p, r) = match remote {
        None => ctx.store.review(&id)?,
        Some(rm) => {
            let remote = open_named(ctx, &target_of(ctx, &id)?, &rm)?;
            kiln_sync::proposals::review(&ctx.store, &*remote, &id).map_err(sync_fail)?
        }
    };
    ctx.out.print(
        || {
            let mut lines = vec![format!(
                "proposal {} ({} -> {}): {}",
                p.id,
                p.fork,
                p.to,
                esc(&p.message)
            )];
            let conflicted: Vec<&str> = r.conflicts.iter().map(|c| c.id.as_str()).collect();
            for id in &r.changed {
                if !conflicted.contains(&id.as_str()) {
                    lines.push(format!("~ {}", esc(id)));
                }
            }
            for c in &r.conflicts {
                lines.push(format!(
                    "! {} conflict: ancestor {} | here {} | proposed {}",
                    esc(&c.id),
                    c.ancestor
                        .as_ref()
                        .map_or("(none)".into(), |v| v.to_string()),
                    c.ours.as_ref().map_or("(none)".into(), |v| v.to_string()),
                    c.theirs.as_ref().map_or("(none)".into(), |v| v.to_string())
                ));
            }
            lines.push(format!(
                "{} changes, {} conflicts",
                r.changed.len(),
                r.conflicts.len()
            ));
            lines.join("\n")
        },
        || {
            json!({"proposal": proposal_json(&p), "changed": r.changed,
                "conflicts": r.conflicts.iter().map(|c| json!({"id": c.id, "ancestor": c.ancestor,
                    "here": c.ours, "proposed": c.theirs})).collect::<Vec<_>>()})
        },
    );
    Ok(0)
}

fn accept(
    ctx: &Ctx,
    id: String,
    only: Vec<String>,
    by: Option<String>,
    remote: Option<String>,
) -> Result<u8, Fail> {
    let by = by.unwrap_or_else(who);
    let only = (!only.is_empty()).then_some(only.as_slice());
    let Some(rm) = remote else {
        let r = ctx.store.accept(&id, only, &by)?;
        print_accepted(ctx, &id, &r, None);
        return Ok(0);
    };
    let remote = open_named(ctx, &target_of(ctx, &id)?, &rm)?;
    let d =
        kiln_sync::proposals::accept(&ctx.store, &*remote, &id, only, &by).map_err(sync_fail)?;
    match &d.merge {
        Some(r) => print_accepted(ctx, &id, r, Some(&remote.location())),
        None => ctx.out.print(
            || {
                format!(
                    "accepted {id} (decided before): {} holds its changes on {}",
                    d.proposal.to,
                    esc(&remote.location())
                )
            },
            || proposal_json(&d.proposal),
        ),
    }
    Ok(0)
}

fn print_accepted(ctx: &Ctx, id: &str, r: &kiln::MergeReport, remote: Option<&str>) {
    ctx.out.print(
        || {
            format!(
                "accepted {id}: {} documents changed, {} conflicts settled{}",
                r.changed.len(),
                r.conflicts.len(),
                remote.map_or(String::new(), |l| format!(
                    "; pushed, decision filed on {}",
                    esc(l)
                ))
            )
        },
        || {
            json!({"id": id, "event": r.event.map(|e| e.to_string()), "changed": r.changed,
            "conflicts": r.conflicts.len(), "remote": remote})
        },
    );
}

fn update_proposal(ctx: &Ctx, id: String) -> Result<u8, Fail> {
    let p = ctx.store.update_proposal(&id)?;
    ctx.out.print(
        || {
            format!(
                "proposal {} now pins {} at its current state; review it again",
                p.id, p.fork
            )
        },
        || proposal_json(&p),
    );
    Ok(0)
}

fn reject(
    ctx: &Ctx,
    id: String,
    message: String,
    by: Option<String>,
    remote: Option<String>,
) -> Result<u8, Fail> {
    let by = by.unwrap_or_else(who);
    let p = match remote {
        None => ctx.store.reject(&id, &message, &by)?,
        Some(rm) => {
            let remote = open_named(ctx, &target_of(ctx, &id)?, &rm)?;
            kiln_sync::proposals::reject(&ctx.store, &*remote, &id, &message, &by)
                .map_err(sync_fail)?
                .proposal
        }
    };
    ctx.out
        .print(|| format!("rejected {}", p.id), || proposal_json(&p));
    Ok(0)
}

/// The target database of proposal `id`, which must be known here (listed from the remote
/// first, or filed from here).
fn target_of(ctx: &Ctx, id: &str) -> Result<String, Fail> {
    match ctx.store.proposal(id) {
        Ok(p) => Ok(p.to),
        Err(kiln::Error::InvalidArgument(m)) if m.starts_with("no proposal") => Err(Fail {
            code: crate::out::code::NO_SUCH,
            msg: format!("{m} here: list the remote's first (kiln proposals MAIN --remote REMOTE)"),
        }),
        Err(e) => Err(e.into()),
    }
}

/// Who is deciding: $USER, else "unknown".
fn who() -> String {
    std::env::var("USER").unwrap_or_else(|_| "unknown".into())
}
