//! A database's history: diff, merge, verify, compact, purge.

use super::Ctx;
use crate::input::parse_event;
use crate::out::{code, esc, torn_note, Fail};
use clap::Subcommand;
use kiln::{Cid, Database};
use serde_json::json;

/// Comparing, merging, checking and rewriting a database's history.
#[derive(Subcommand)]
pub enum HistoryGroup {
    /// Documents added, changed and deleted from A to B.
    ///
    /// Each side is a database (its current state) or DB@EVENT (its state at that event).
    /// Compares trees, so the cost follows the differences, not the size.
    Diff { a: String, b: String },
    /// Merge SRC into DST (three-way; conflicts listed; --only: exit 3 if SRC never had one).
    ///
    /// DST gains SRC's events and a merge event joins the heads. A document changed on one
    /// side takes that change; changed on both sides to different values is a conflict (the
    /// write with the greater height, then value CID, wins — the same everywhere); the report
    /// lists each with the ancestor and both values. With --only, just those documents take
    /// SRC's values, as an ordinary transaction.
    Merge {
        src: String,
        #[arg(long, value_name = "DST")]
        into: String,
        #[arg(long, value_name = "ID", num_args = 1..)]
        only: Vec<String>,
    },
    /// Re-hash every stored byte and check every link; exit code 5 on any problem.
    ///
    /// Also puts back a diff file a power cut lost or damaged from the copy the head record
    /// carries (listed as repaired), and says when the head record ends in a commit a crash
    /// cut off (never acknowledged, discarded).
    Verify { db: String },
    /// Merge the transaction diff files now (--full: everything into one file).
    ///
    /// Without options, the diffs merge into one file and levels over their limit cascade.
    Compact {
        db: String,
        #[arg(long)]
        full: bool,
        /// Squash the history older than EVENT into the state at EVENT: earlier events and the
        /// versions only they name are removed; reads at EVENT and later are unchanged. Leaves
        /// one file.
        #[arg(long, value_name = "EVENT", conflicts_with = "full")]
        drop_history_before: Option<String>,
    },
    /// Remove every stored version of one document (privacy requests); exit code 3, writing
    /// nothing, if it has none.
    ///
    /// The document is deleted, its versions are removed from all files (the database is
    /// rewritten into one file, archived copies and the reuse pool's copies are deleted), and
    /// reads of them say "purged". Its id stays in the history. Forks keep their own copies.
    /// If interrupted, the next command that opens the database, or `kiln gc`, finishes it.
    Purge { db: String, id: String },
}

impl HistoryGroup {
    pub fn run(self, ctx: &Ctx) -> Result<u8, Fail> {
        match self {
            HistoryGroup::Diff { a, b } => diff(ctx, a, b),
            HistoryGroup::Merge { src, into, only } => merge(ctx, src, into, only),
            HistoryGroup::Verify { db } => verify(ctx, db),
            HistoryGroup::Compact {
                db,
                full,
                drop_history_before,
            } => compact(ctx, db, full, drop_history_before),
            HistoryGroup::Purge { db, id } => purge(ctx, db, id),
        }
    }
}

fn diff(ctx: &Ctx, a: String, b: String) -> Result<u8, Fail> {
    let point = |s: &str| -> kiln::Result<(Database, Option<Cid>)> {
        match s.split_once('@') {
            Some((db, e)) => Ok((ctx.open(db)?, Some(parse_event(e)?))),
            None => Ok((ctx.open(s)?, None)),
        }
    };
    let ((da, ea), (db, eb)) = (point(&a)?, point(&b)?);
    let d = da.diff(ea.as_ref(), &db, eb.as_ref())?;
    let count = |k: &str| d.iter().filter(|x| x.kind() == k).count();
    ctx.out.print(
        || {
            let mut lines: Vec<String> = d
                .iter()
                .map(|x| {
                    let sign = match x.kind() {
                        "added" => "+",
                        "deleted" => "-",
                        _ => "~",
                    };
                    format!("{sign} {}", esc(&x.id))
                })
                .collect();
            lines.push(format!(
                "{} added, {} changed, {} deleted",
                count("added"),
                count("changed"),
                count("deleted")
            ));
            lines.join("\n")
        },
        || {
            json!(d
                .iter()
                .map(|x| json!({"id": x.id, "change": x.kind(), "before": x.before, "after": x.after}))
                .collect::<Vec<_>>())
        },
    );
    Ok(0)
}

fn merge(ctx: &Ctx, src: String, into: String, only: Vec<String>) -> Result<u8, Fail> {
    let (s, d) = (ctx.open(&src)?, ctx.open(&into)?);
    let r = d.merge_from(&s, (!only.is_empty()).then_some(only.as_slice()))?;
    ctx.out.print(
        || {
            let mut lines = vec![match (&r.event, r.fast_forward) {
                (_, true) => format!("fast-forward: {into} took {src}'s {} events", r.events),
                (None, _) => format!("nothing to merge: {into} has all of {src}"),
                (Some(e), _) => format!(
                    "merged {src} into {into}: {} events, {} documents changed, {} conflicts (event {e})",
                    r.events,
                    r.changed.len(),
                    r.conflicts.len()
                ),
            }];
            lines.extend(crate::out::conflict_lines(&r));
            lines.join("\n")
        },
        || crate::out::merge_json(&r),
    );
    Ok(0)
}

fn verify(ctx: &Ctx, db: String) -> Result<u8, Fail> {
    let db = ctx.store.open_db(&db)?;
    let r = db.verify()?;
    let repaired = |f: &kiln::FileName| {
        format!(
            "file {f}: lost or damaged (a power cut after its commit); put back from the \
             copy the head record carries"
        )
    };
    ctx.out.print(
        || {
            let mut s = format!(
                "{}: {} files, {} bytes, {} blocks, {} events, {} tree nodes, {} documents",
                db.name(),
                r.files,
                r.bytes,
                r.blocks,
                r.events,
                r.tree_nodes,
                r.docs
            );
            for f in &r.repaired {
                s.push_str(&format!("\nrepaired {}", repaired(f)));
            }
            if r.torn_append {
                s.push_str(&format!("\nnote: {}", torn_note(db.name())));
            }
            for p in &r.problems {
                s.push_str(&format!("\nPROBLEM {}: {}", p.location, p.what));
            }
            s.push_str(match (r.ok(), r.repaired.is_empty()) {
                (true, true) => "\nok",
                (true, false) => "\nok (after the repairs above)",
                (false, _) => "\nFAILED",
            });
            s
        },
        || {
            json!({"ok": r.ok(), "files": r.files, "bytes": r.bytes, "blocks": r.blocks, "events": r.events,
                "tree_nodes": r.tree_nodes, "docs": r.docs, "torn_append": r.torn_append,
                "repaired": r.repaired.iter().map(|f| json!({"file": f.to_string(), "what": repaired(f)})).collect::<Vec<_>>(),
                "problems": r.problems.iter().map(|p| json!({"location": p.location, "what": p.what})).collect::<Vec<_>>()})
        },
    );
    if !r.ok() {
        return Ok(code::CORRUPT);
    }
    Ok(0)
}

fn compact(
    ctx: &Ctx,
    db: String,
    full: bool,
    drop_history_before: Option<String>,
) -> Result<u8, Fail> {
    let db = ctx.open(&db)?;
    if let Some(e) = drop_history_before {
        let n = db.drop_history_before(&parse_event(&e)?)?;
        if !ctx.out.json {
            eprintln!("dropped {n} events of history");
        }
    } else if full {
        db.compact_full()?;
    } else {
        db.compact()?;
    }
    let i = db.info()?;
    ctx.out.print(
        || {
            format!(
                "compacted {}: {} files, {} bytes",
                db.name(),
                i.files.len(),
                i.bytes
            )
        },
        || json!({"files": i.files.len(), "bytes": i.bytes}),
    );
    Ok(0)
}

fn purge(ctx: &Ctx, db: String, id: String) -> Result<u8, Fail> {
    let db = ctx.open(&db)?;
    let r = db.purge(&id)?;
    ctx.out.print(
        || {
            format!(
                "purged {} stored version(s) of {id:?} (event {}); {} archived file(s) removed",
                r.versions, r.event, r.archived_removed
            )
        },
        || {
            json!({"id": id, "event": r.event.to_string(), "versions": r.versions,
                "archived_removed": r.archived_removed,
                "reusable_bytes_freed": r.reusable_bytes_freed})
        },
    );
    Ok(0)
}
