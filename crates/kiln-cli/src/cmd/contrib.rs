//! Contributions: propose a fork's changes, list, review, accept, reject and update proposals.

use super::Ctx;
use crate::out::{esc, proposal_json, Fail};
use clap::Subcommand;
use serde_json::json;

/// Proposals: a fork's changes nominated for another database, and their review.
#[derive(Subcommand)]
pub enum ContribGroup {
    /// Nominate FORK's changes for MAIN; prints the proposal id.
    Propose {
        fork: String,
        #[arg(long, value_name = "MAIN")]
        to: String,
        #[arg(short, long, default_value = "")]
        message: String,
    },
    /// Proposals for MAIN (open ones; --all for decided ones too).
    Proposals {
        main: Option<String>,
        #[arg(long)]
        all: bool,
    },
    /// What accepting a proposal would change in its target now, conflicts flagged.
    Review { id: String },
    /// Accept a proposal: merge the fork into the target.
    ///
    /// With --only, just those documents. Recorded in the target's history with who accepted
    /// it (--by, else $USER). A proposal is decided once.
    Accept {
        id: String,
        #[arg(long, value_name = "ID", num_args = 1..)]
        only: Vec<String>,
        #[arg(long)]
        by: Option<String>,
    },
    /// Pin a proposal to its fork's current state (after the fork changed).
    ///
    /// A proposal pins the fork's state when it is made: review and accept work on exactly
    /// that state and refuse once the fork has moved on, until the proposal is updated.
    UpdateProposal { id: String },
    /// Reject a proposal, with a reason.
    Reject {
        id: String,
        #[arg(short, long, default_value = "")]
        message: String,
        #[arg(long)]
        by: Option<String>,
    },
}

impl ContribGroup {
    pub fn run(self, ctx: &Ctx) -> Result<u8, Fail> {
        match self {
            ContribGroup::Propose { fork, to, message } => propose(ctx, fork, to, message),
            ContribGroup::Proposals { main, all } => proposals(ctx, main, all),
            ContribGroup::Review { id } => review(ctx, id),
            ContribGroup::Accept { id, only, by } => accept(ctx, id, only, by),
            ContribGroup::UpdateProposal { id } => update_proposal(ctx, id),
            ContribGroup::Reject { id, message, by } => reject(ctx, id, message, by),
        }
    }
}

fn propose(ctx: &Ctx, fork: String, to: String, message: String) -> Result<u8, Fail> {
    let p = ctx.store.propose(&fork, &to, &message)?;
    ctx.out.print(
        || format!("proposal {} ({fork} -> {to})", p.id),
        || proposal_json(&p),
    );
    Ok(0)
}

fn proposals(ctx: &Ctx, main: Option<String>, all: bool) -> Result<u8, Fail> {
    let ps = ctx.store.proposals(main.as_deref(), !all)?;
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

fn review(ctx: &Ctx, id: String) -> Result<u8, Fail> {
    let (p, r) = ctx.store.review(&id)?;
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

fn accept(ctx: &Ctx, id: String, only: Vec<String>, by: Option<String>) -> Result<u8, Fail> {
    let by = by.unwrap_or_else(who);
    let r = ctx
        .store
        .accept(&id, (!only.is_empty()).then_some(only.as_slice()), &by)?;
    ctx.out.print(
        || {
            format!(
                "accepted {id}: {} documents changed, {} conflicts settled",
                r.changed.len(),
                r.conflicts.len()
            )
        },
        || {
            json!({"id": id, "event": r.event.map(|e| e.to_string()), "changed": r.changed,
            "conflicts": r.conflicts.len()})
        },
    );
    Ok(0)
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

fn reject(ctx: &Ctx, id: String, message: String, by: Option<String>) -> Result<u8, Fail> {
    let p = ctx.store.reject(&id, &message, &by.unwrap_or_else(who))?;
    ctx.out
        .print(|| format!("rejected {}", p.id), || proposal_json(&p));
    Ok(0)
}

/// Who is deciding: $USER, else "unknown".
fn who() -> String {
    std::env::var("USER").unwrap_or_else(|_| "unknown".into())
}
