//! Sync: `kiln remote add|list|remove` (a database's remembered remotes) and `kiln sync`.

use super::Ctx;
use crate::out::{bad_input, esc, proposal_json, Fail};
use clap::Subcommand;
use kiln_sync::{FileSets, Remotes, SyncError, SyncOptions, SyncReport};
use serde_json::{json, Value};

/// `kiln remote …`, `kiln sync`.
#[derive(Subcommand)]
pub enum SyncGroup {
    /// A database's remotes, remembered by name so `kiln sync DB` needs no URL.
    #[command(subcommand)]
    Remote(RemoteCmd),
    /// Sync databases with their remotes: pull what the remote has that this replica lacks
    /// (taken in as it is: a fast-forward, or a merge whose conflicts are reported as `kiln
    /// merge` reports them), push what it lacks (files first, then the remote's head record by
    /// compare-and-swap). Attached files' bytes are pushed, and pulled on demand (or all with
    /// --files). Killed at any point and run again, it completes.
    Sync {
        /// The database (with --all: none; the remote's name comes first).
        db: Option<String>,
        /// A remote of the database (its name, or a URL); default: every remote it has.
        remote: Option<String>,
        /// Every database that has this remote (its name).
        #[arg(long)]
        all: bool,
        /// Only take the remote's changes.
        #[arg(long, conflicts_with = "push")]
        pull: bool,
        /// Only give the remote this replica's changes (refused when it has changes this
        /// replica lacks).
        #[arg(long)]
        push: bool,
        /// Move no attached files' bytes either way (documents and their `_files` only).
        #[arg(long, conflicts_with = "files")]
        no_files: bool,
        /// Also fetch every attached file the remote holds that this replica lacks.
        #[arg(long)]
        files: bool,
        /// Keep syncing until interrupted: this replica's commits go out as they happen (at
        /// most one sync a second: commits meanwhile go together), and the remote is asked for
        /// changes every --poll seconds (one request each when nothing changed). One line (or
        /// JSON object) per sync that moved something.
        #[arg(long, conflicts_with = "all")]
        watch: bool,
        /// With --watch: seconds between two looks at the remote.
        #[arg(
            long,
            value_name = "SECONDS",
            default_value_t = 5.0,
            requires = "watch"
        )]
        poll: f64,
    },
}

#[derive(Subcommand)]
pub enum RemoteCmd {
    /// Remember remote NAME (a folder: a path or file:///path) for database DB. The remote is
    /// probed first: a remote whose compare-and-swap is not honest is refused.
    Add {
        db: String,
        name: String,
        url: String,
    },
    /// List a database's remotes (every database's without DB).
    List { db: Option<String> },
    /// Forget remote NAME of database DB (nothing on the remote is touched).
    Remove { db: String, name: String },
}

impl SyncGroup {
    pub fn run(self, ctx: &Ctx) -> Result<u8, Fail> {
        match self {
            SyncGroup::Remote(c) => remote(ctx, c),
            SyncGroup::Sync {
                db,
                remote,
                all,
                pull,
                push,
                no_files,
                files,
                watch,
                poll,
            } => {
                let opts = SyncOptions {
                    pull: !push,
                    push: !pull,
                    files: if no_files {
                        FileSets::None
                    } else if files {
                        FileSets::All
                    } else {
                        FileSets::OnDemand
                    },
                };
                let targets = targets(ctx, db, remote, all)?;
                if watch {
                    return watch_one(ctx, targets, opts, poll);
                }
                sync(ctx, targets, opts)
            }
        }
    }
}

pub(crate) fn io_fail(e: std::io::Error) -> Fail {
    let code = if e.kind() == std::io::ErrorKind::InvalidInput {
        crate::out::code::USAGE
    } else {
        1
    };
    Fail {
        code,
        msg: e.to_string(),
    }
}

/// A folder given as a relative path is remembered absolute (syncs run from anywhere).
fn normalize_url(url: &str) -> Result<String, Fail> {
    if url.contains("://") {
        return Ok(url.to_owned());
    }
    let p = std::path::absolute(url).map_err(|e| bad_input(format!("{url}: {e}")))?;
    Ok(p.display().to_string())
}

fn remote(ctx: &Ctx, c: RemoteCmd) -> Result<u8, Fail> {
    let mut remotes = Remotes::load(&ctx.store).map_err(io_fail)?;
    match c {
        RemoteCmd::Add { db, name, url } => {
            ctx.store.open_db(&db)?; // exists, and is readable here
            kiln_sync::check_remote_name(&name).map_err(io_fail)?;
            let url = normalize_url(&url)?;
            let r = kiln_sync::open_remote_with(&url, &ctx.remote).map_err(io_fail)?;
            // (A remote that keeps a head record per replica relies on no compare-and-swap,
            // and a sync server checked its own; opening it checked that it is there and is
            // a kiln remote.)
            if !r.per_replica_heads() && !r.swaps_checked() {
                kiln_sync::probe(&*r).map_err(|e| Fail {
                    code: 1,
                    msg: format!("remote {url} refused: {e}"),
                })?;
            }
            let added = remotes.add(&db, &name, &url).map_err(io_fail)?;
            remotes.save().map_err(io_fail)?;
            ctx.out.print(
                || {
                    if added {
                        format!("{db}: remote {name} = {}", esc(&url))
                    } else {
                        format!("{db}: remote {name} = {} (already)", esc(&url))
                    }
                },
                || json!({"database": db, "remote": name, "url": url, "added": added}),
            );
            Ok(0)
        }
        RemoteCmd::List { db } => {
            let rows: Vec<(String, Vec<(String, String)>)> = match db {
                Some(d) => {
                    ctx.store.open_db(&d)?;
                    vec![(d.clone(), remotes.of(&d))]
                }
                None => remotes.all(),
            };
            ctx.out.print(
                || {
                    rows.iter()
                        .flat_map(|(d, rs)| {
                            rs.iter().map(move |(n, u)| format!("{d}\t{n}\t{}", esc(u)))
                        })
                        .collect::<Vec<_>>()
                        .join("\n")
                },
                || {
                    Value::Array(
                        rows.iter()
                            .flat_map(|(d, rs)| {
                                rs.iter().map(
                                    move |(n, u)| json!({"database": d, "remote": n, "url": u}),
                                )
                            })
                            .collect(),
                    )
                },
            );
            Ok(0)
        }
        RemoteCmd::Remove { db, name } => {
            if !remotes.remove(&db, &name) {
                return Err(Fail {
                    code: crate::out::code::NO_SUCH,
                    msg: format!("database '{db}' has no remote '{name}' (see `kiln remote list`)"),
                });
            }
            remotes.save().map_err(io_fail)?;
            ctx.out.print(
                || format!("{db}: remote {name} forgotten"),
                || json!({"database": db, "remote": name, "removed": true}),
            );
            Ok(0)
        }
    }
}

/// The (database, remote name, URL) pairs a `kiln sync` names.
fn targets(
    ctx: &Ctx,
    db: Option<String>,
    remote: Option<String>,
    all: bool,
) -> Result<Vec<(String, String, String)>, Fail> {
    let remotes = Remotes::load(&ctx.store).map_err(io_fail)?;
    if all {
        // `kiln sync --all [REMOTE]`: the first word is the remote.
        if remote.is_some() {
            return Err(bad_input(
                "kiln sync --all takes one remote name at most".into(),
            ));
        }
        let out: Vec<(String, String, String)> = match db {
            Some(name) => remotes
                .with_remote(&name)
                .into_iter()
                .map(|(d, u)| (d, name.clone(), u))
                .collect(),
            None => remotes
                .all()
                .into_iter()
                .flat_map(|(d, rs)| rs.into_iter().map(move |(n, u)| (d.clone(), n, u)))
                .collect(),
        };
        return Ok(out);
    }
    let Some(db) = db else {
        return Err(bad_input(
            "kiln sync DB [REMOTE], or kiln sync --all [REMOTE]".into(),
        ));
    };
    ctx.store.open_db(&db)?;
    let known = remotes.of(&db);
    match remote {
        Some(r) => {
            let (n, u) = named(&known, &db, &r)?;
            Ok(vec![(db, n, u)])
        }
        None if known.is_empty() => Err(bad_input(format!(
            "database '{db}' has no remote: `kiln remote add {db} NAME URL` first, or name one \
             (kiln sync {db} URL)"
        ))),
        None => Ok(known.into_iter().map(|(n, u)| (db.clone(), n, u)).collect()),
    }
}

/// Remote `r` of database `db` (its name, or a URL or folder path): its name and URL.
fn named(known: &[(String, String)], db: &str, r: &str) -> Result<(String, String), Fail> {
    match known.iter().find(|(n, _)| *n == r) {
        Some((n, u)) => Ok((n.clone(), u.clone())),
        None if r.contains('/') || r.contains("://") => {
            let u = normalize_url(r)?;
            Ok((u.clone(), u))
        }
        None => Err(Fail {
            code: crate::out::code::NO_SUCH,
            msg: format!(
                "database '{db}' has no remote '{r}' (see `kiln remote list {db}`; a folder \
                 path contains a /)"
            ),
        }),
    }
}

/// Remote `r` of database `db` (its name, or a URL or folder path), opened.
pub(crate) fn open_named(ctx: &Ctx, db: &str, r: &str) -> Result<Box<dyn kiln_sync::Remote>, Fail> {
    let remotes = Remotes::load(&ctx.store).map_err(io_fail)?;
    let (_, url) = named(&remotes.of(db), db, r)?;
    kiln_sync::open_remote_with(&url, &ctx.remote).map_err(io_fail)
}

fn sync(ctx: &Ctx, targets: Vec<(String, String, String)>, opts: SyncOptions) -> Result<u8, Fail> {
    let mut rows: Vec<Value> = Vec::new();
    let mut lines: Vec<String> = Vec::new();
    let mut failed: Option<Fail> = None;
    // By remote: one listing of its records answers which of its databases changed.
    let mut urls: Vec<&str> = targets.iter().map(|t| t.2.as_str()).collect();
    urls.sort_unstable();
    urls.dedup();
    let mut results: Vec<(String, String, Result<SyncReport, Fail>)> = Vec::new();
    if urls.len() > 1 && targets.iter().all(|t| t.0 == targets[0].0) {
        // One database, several remotes: in turn, and again while a later one changed it
        // (kiln_sync::sync_remotes), so that what one remote brought reaches the others.
        let db = &targets[0].0;
        let mut opened = Vec::new();
        for (_, name, url) in &targets {
            let r = kiln_sync::open_remote_with(url, &ctx.remote).map_err(io_fail);
            opened.push((name, r));
        }
        let usable: Vec<&dyn kiln_sync::Remote> = opened
            .iter()
            .filter_map(|(_, r)| r.as_ref().ok().map(|b| &**b))
            .collect();
        let handle = ctx.open(db)?;
        let bar = crate::out::Bar::new(&ctx.out);
        let mut outcomes =
            kiln_sync::sync_remotes(&ctx.store, &handle, &usable, db, opts, &|p| bar.sync(p))
                .into_iter();
        bar.clear();
        for (name, r) in opened {
            let r = match r {
                Ok(_) => outcomes.next().map_or_else(
                    || Err(io_fail(std::io::Error::other("no outcome"))),
                    |o| o.map_err(sync_fail),
                ),
                Err(f) => Err(f),
            };
            results.push((db.clone(), name.clone(), r));
        }
    }
    for url in if results.is_empty() { urls } else { Vec::new() } {
        let group: Vec<&(String, String, String)> = targets.iter().filter(|t| t.2 == url).collect();
        let outcome = (|| -> Result<Vec<Result<SyncReport, Fail>>, Fail> {
            let remote = kiln_sync::open_remote_with(url, &ctx.remote).map_err(io_fail)?;
            let handles = group
                .iter()
                .map(|(db, _, _)| ctx.open(db))
                .collect::<kiln::Result<Vec<_>>>()?;
            if let [(db, _, _)] = &group[..] {
                let bar = crate::out::Bar::new(&ctx.out);
                let r = kiln_sync::sync_with_progress(
                    &ctx.store,
                    &handles[0],
                    &*remote,
                    db,
                    opts,
                    &|p| bar.sync(p),
                );
                bar.clear();
                return Ok(vec![r.map_err(sync_fail)]);
            }
            let pairs: Vec<(&kiln::Database, &str)> = handles
                .iter()
                .zip(&group)
                .map(|(h, (db, _, _))| (h, db.as_str()))
                .collect();
            Ok(kiln_sync::sync_many(&ctx.store, &pairs, &*remote, opts)
                .map_err(sync_fail)?
                .into_iter()
                .map(|r| r.map_err(sync_fail))
                .collect())
        })();
        match outcome {
            Ok(rs) => {
                for ((db, name, _), r) in group.iter().zip(rs) {
                    results.push((db.clone(), name.clone(), r));
                }
            }
            Err(f) => {
                for (db, name, _) in &group {
                    results.push((
                        db.clone(),
                        name.clone(),
                        Err(Fail {
                            code: f.code,
                            msg: f.msg.clone(),
                        }),
                    ));
                }
            }
        }
    }
    let mut told = decisions(ctx, &targets, &results);
    for (db, name, r) in results {
        match r {
            Ok(r) => {
                lines.extend(describe(&db, &name, &r));
                let mut row = report_json(&db, &name, &r);
                if let Some(ps) = told.remove(&(db.clone(), name.clone())) {
                    lines.extend(ps.iter().map(decision_line));
                    row["decisions"] = Value::Array(ps.iter().map(proposal_json).collect());
                }
                rows.push(row);
            }
            Err(f) => {
                lines.push(format!("{db} ⇄ {name}: failed: {}", f.msg));
                rows.push(json!({"database": db, "remote": name, "error": f.msg}));
                failed.get_or_insert(f);
            }
        }
    }
    ctx.out.print(|| lines.join("\n"), || Value::Array(rows));
    match failed {
        Some(f) => Err(Fail {
            code: f.code,
            msg: format!("sync failed: {}", f.msg),
        }),
        None => Ok(0),
    }
}

/// Decisions made on the proposals this store filed on the remotes synced (see
/// `kiln_sync::proposals::decisions`), by the (database, remote name) pair whose row tells
/// them. Asking fails quietly (said on stderr): the sync itself went through.
fn decisions(
    ctx: &Ctx,
    targets: &[(String, String, String)],
    results: &[(String, String, Result<SyncReport, Fail>)],
) -> std::collections::HashMap<(String, String), Vec<kiln::Proposal>> {
    let mut out = std::collections::HashMap::new();
    if !kiln_sync::proposals::awaiting_decisions(&ctx.store).unwrap_or(false) {
        return out;
    }
    let mut urls: Vec<&str> = targets.iter().map(|t| t.2.as_str()).collect();
    urls.sort_unstable();
    urls.dedup();
    for url in urls {
        let synced: Vec<(&str, &str)> = targets
            .iter()
            .filter(|t| t.2 == url)
            .filter(|t| {
                results
                    .iter()
                    .any(|(d, n, r)| *d == t.0 && *n == t.1 && r.is_ok())
            })
            .map(|t| (t.0.as_str(), t.1.as_str()))
            .collect();
        let Some(&first) = synced.first() else {
            continue;
        };
        let dbs: Vec<&str> = synced.iter().map(|(d, _)| *d).collect();
        let found = kiln_sync::open_remote_with(url, &ctx.remote)
            .map_err(kiln_sync::SyncError::Remote)
            .and_then(|r| kiln_sync::proposals::decisions(&ctx.store, &*r, &dbs));
        match found {
            Ok(ps) => {
                for p in ps {
                    let (db, name) = synced
                        .iter()
                        .find(|(d, _)| *d == p.fork)
                        .or_else(|| synced.iter().find(|(d, _)| *d == p.to))
                        .copied()
                        .unwrap_or(first);
                    out.entry((db.to_owned(), name.to_owned()))
                        .or_insert_with(Vec::new)
                        .push(p);
                }
            }
            Err(e) => eprintln!("kiln: asking {} about proposals filed there: {e}", esc(url)),
        }
    }
    out
}

/// A decision told by a sync, as a line.
fn decision_line(p: &kiln::Proposal) -> String {
    let what = match &p.status {
        kiln::Status::Accepted { by, .. } => format!("accepted by {}", esc(by)),
        kiln::Status::Rejected { by, reason, .. } => {
            format!("rejected by {}: {}", esc(by), esc(reason))
        }
        kiln::Status::Open => "open".into(),
    };
    format!("proposal {} ({} -> {}) {what}", p.id, p.fork, p.to)
}

/// `kiln sync DB [REMOTE] --watch`: until interrupted.
fn watch_one(
    ctx: &Ctx,
    targets: Vec<(String, String, String)>,
    opts: SyncOptions,
    poll: f64,
) -> Result<u8, Fail> {
    let [(db, name, url)] = &targets[..] else {
        return Err(bad_input(
            "kiln sync --watch follows one remote: name it (kiln sync DB REMOTE --watch)".into(),
        ));
    };
    if !(0.05..=86_400.0).contains(&poll) {
        return Err(bad_input("--poll is between 0.05 and 86400 seconds".into()));
    }
    let handle = ctx.open(db)?;
    let remote = kiln_sync::open_remote_with(url, &ctx.remote).map_err(io_fail)?;
    let pace = kiln_sync::WatchOptions {
        poll: std::time::Duration::from_secs_f64(poll),
        ..kiln_sync::WatchOptions::default()
    };
    let mut on_sync = |r: &Result<SyncReport, SyncError>| {
        match r {
            Ok(r) if r.is_noop() => {}
            Ok(r) => ctx.out.print(
                || describe(db, name, r).join("\n"),
                || report_json(db, name, r),
            ),
            Err(e) => eprintln!("kiln: {db} ⇄ {name}: {e} (trying again)"),
        }
        true
    };
    kiln_sync::watch(&ctx.store, &handle, &*remote, db, opts, pace, &mut on_sync)
        .map_err(sync_fail)?;
    Ok(0)
}

pub(crate) fn sync_fail(e: SyncError) -> Fail {
    match e {
        SyncError::Kiln(e) => e.into(),
        other => Fail {
            code: 1,
            msg: other.to_string(),
        },
    }
}

fn describe(db: &str, name: &str, r: &SyncReport) -> Vec<String> {
    let mut parts = Vec::new();
    if r.adopted {
        parts.push(format!(
            "took the remote's state ({} files, {} bytes fetched)",
            r.files_pulled, r.bytes_pulled
        ));
    }
    if let Some(m) = &r.merged {
        parts.push(format!(
            "merged the remote's {} events: {} documents changed, {} conflicts ({} files, {} bytes fetched)",
            m.events,
            m.changed.len(),
            m.conflicts.len(),
            r.files_pulled,
            r.bytes_pulled
        ));
    }
    if r.pushed {
        parts.push(format!(
            "pushed ({} files, {} bytes uploaded)",
            r.files_pushed, r.bytes_pushed
        ));
    }
    if r.filesets_pulled + r.filesets_pushed > 0 {
        parts.push(format!(
            "attached file-sets: {} fetched, {} uploaded",
            r.filesets_pulled, r.filesets_pushed
        ));
    }
    if parts.is_empty() {
        parts.push("up to date".into());
    }
    let mut lines = vec![format!(
        "{db} ⇄ {name}: {} ({} requests)",
        parts.join("; "),
        r.requests
    )];
    if let Some(m) = &r.merged {
        lines.extend(crate::out::conflict_lines(m));
    }
    lines
}

fn report_json(db: &str, name: &str, r: &SyncReport) -> Value {
    json!({
        "database": db,
        "remote": name,
        "requests": r.requests,
        "pulled": {"files": r.files_pulled, "bytes": r.bytes_pulled, "filesets": r.filesets_pulled},
        "pushed": {"files": r.files_pushed, "bytes": r.bytes_pushed, "filesets": r.filesets_pushed,
                   "head": r.pushed},
        "adopted": r.adopted,
        "merge": r.merged.as_ref().map(crate::out::merge_json),
        "retries": r.retries,
    })
}
