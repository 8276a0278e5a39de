//! Databases: `kiln db …` (create, list, set, files, drop, info) and `kiln fork`.

use super::Ctx;
use crate::input::parse_threshold;
use crate::out::{bad_input, cids, torn_note, utc, Fail};
use clap::Subcommand;
use kiln::{Location, Settings};
use serde_json::{json, Value};

/// `kiln db …`, and `kiln fork`.
#[derive(Subcommand)]
pub enum DbGroup {
    /// Create, list, inspect and drop databases.
    #[command(subcommand)]
    Db(DbCmd),
    /// Fork a database (O(1): shares its files).
    ///
    /// The new database (a fresh UUID name when DST is omitted) starts at SRC's current state
    /// and shares its files; it costs one head record and copies nothing.
    Fork { src: String, dst: Option<String> },
}

impl DbGroup {
    pub fn run(self, ctx: &Ctx) -> Result<u8, Fail> {
        match self {
            DbGroup::Db(c) => c.run(ctx),
            DbGroup::Fork { src, dst } => fork(ctx, src, dst),
        }
    }
}

#[derive(Subcommand)]
pub enum DbCmd {
    /// Create a database (a fresh UUID name when NAME is omitted).
    Create {
        name: Option<String>,
        /// This database's compaction threshold (else the store's, default 100).
        #[arg(long, value_name = "N")]
        compact_threshold: Option<usize>,
    },
    /// Change a database's settings.
    Set {
        name: String,
        /// Compact when more than N diff files are live; `default` uses the store's setting.
        #[arg(long, value_name = "N|default")]
        compact_threshold: String,
    },
    /// A database's files: live ones, and with --history every earlier one reachable through
    /// what each compaction replaced (live, kept, archived or gone).
    Files {
        name: String,
        #[arg(long)]
        history: bool,
    },
    /// List databases (--meta: with each one's metadata; one JSON object per line, or with
    /// --json an array of {"name", "meta"}).
    List {
        #[arg(long)]
        meta: bool,
    },
    /// Show or change a database's own metadata: a small JSON object (a title, tags), sealed in
    /// its head record, read without its documents, kept by forks.
    ///
    /// `--set KEY=VALUE` takes VALUE as JSON when it parses (`--set n=3`, `--set 'tags=["a"]'`),
    /// else as a string (`--set title=Lunch plans`); `--unset KEY` removes one. Prints the
    /// metadata after the change.
    Meta {
        name: String,
        #[arg(long, value_name = "KEY=VALUE")]
        set: Vec<String>,
        #[arg(long, value_name = "KEY")]
        unset: Vec<String>,
    },
    /// Delete a database with its files and key.
    Drop { name: String },
    /// Documents, heads, files and bytes of a database, its compaction settings and its tree
    /// shape (`bounded`, or `mod16` for a database created before head records of version 5).
    Info { name: String },
}

impl DbCmd {
    pub fn run(self, ctx: &Ctx) -> Result<u8, Fail> {
        match self {
            DbCmd::Create {
                name,
                compact_threshold,
            } => create(ctx, name, compact_threshold),
            DbCmd::Set {
                name,
                compact_threshold,
            } => set(ctx, name, compact_threshold),
            DbCmd::Files { name, history } => files(ctx, name, history),
            DbCmd::List { meta } => list(ctx, meta),
            DbCmd::Meta { name, set, unset } => meta(ctx, name, set, unset),
            DbCmd::Drop { name } => drop_db(ctx, name),
            DbCmd::Info { name } => info(ctx, name),
        }
    }
}

fn create(ctx: &Ctx, name: Option<String>, compact_threshold: Option<usize>) -> Result<u8, Fail> {
    let db = ctx.store.create_with(
        name.as_deref(),
        &Settings {
            compact_threshold,
            ..Settings::default()
        },
    )?;
    ctx.out.print(
        || format!("created {}", db.name()),
        || json!({"name": db.name()}),
    );
    Ok(0)
}

fn set(ctx: &Ctx, name: String, compact_threshold: String) -> Result<u8, Fail> {
    let db = ctx.open(&name)?;
    let s = Settings {
        compact_threshold: parse_threshold(&compact_threshold)?,
        ..db.settings()?
    };
    db.set_settings(&s)?;
    let t = db.info()?.compact_threshold;
    ctx.out.print(
        || format!("{name}: compaction threshold {t}"),
        || json!({"name": name, "settings": s.to_json(), "compact_threshold": t}),
    );
    Ok(0)
}

fn files(ctx: &Ctx, name: String, history: bool) -> Result<u8, Fail> {
    let db = ctx.open(&name)?;
    let files = if history {
        db.history_files()?
    } else {
        db.history_files()?
            .into_iter()
            .filter(|f| f.location == Location::Live)
            .collect()
    };
    let loc = |l: Location| match l {
        Location::Live => "live",
        Location::Kept => "kept",
        Location::Archived => "archived",
        Location::Gone => "gone",
    };
    ctx.out.print(
        || {
            files
                .iter()
                .map(|f| {
                    format!(
                        "{}  {:<8}  level {}  replaces {}",
                        f.name,
                        loc(f.location),
                        f.level.map_or("?".into(), |l| l.to_string()),
                        f.replaces.len()
                    )
                })
                .collect::<Vec<_>>()
                .join("\n")
        },
        || {
            json!(files
                .iter()
                .map(
                    |f| json!({"name": f.name.to_string(), "location": loc(f.location),
                    "level": f.level, "events": cids(&f.events),
                    "replaces": f.replaces.iter().map(|r| r.to_string()).collect::<Vec<_>>()})
                )
                .collect::<Vec<_>>())
        },
    );
    Ok(0)
}

fn list(ctx: &Ctx, with_meta: bool) -> Result<u8, Fail> {
    let names = ctx.store.list()?;
    if !with_meta {
        ctx.out.print(|| names.join("\n"), || json!(names));
        return Ok(0);
    }
    let mut rows = Vec::with_capacity(names.len());
    for n in &names {
        let meta = ctx.store.open_db(n)?.meta()?;
        rows.push(json!({"name": n, "meta": meta}));
    }
    ctx.out.print(
        || {
            rows.iter()
                .map(|r| r.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        },
        || json!(rows),
    );
    Ok(0)
}

fn meta(ctx: &Ctx, name: String, set: Vec<String>, unset: Vec<String>) -> Result<u8, Fail> {
    let db = ctx.store.open_db(&name)?;
    let mut changes = Vec::with_capacity(set.len());
    for kv in &set {
        let Some((k, v)) = kv.split_once('=') else {
            return Err(bad_input(format!("--set {kv:?}: expected KEY=VALUE")));
        };
        if k.is_empty() {
            return Err(bad_input(format!("--set {kv:?}: the key is empty")));
        }
        let value = serde_json::from_str::<Value>(v).unwrap_or_else(|_| Value::from(v));
        changes.push((k.to_owned(), value));
    }
    if !changes.is_empty() || !unset.is_empty() {
        db.update_meta(|m| {
            for k in &unset {
                m.remove(k);
            }
            for (k, v) in &changes {
                m.insert(k.clone(), v.clone());
            }
        })?;
    }
    let m = Value::Object(db.meta()?);
    ctx.out.print(
        || serde_json::to_string_pretty(&m).unwrap_or_default(),
        || m.clone(),
    );
    Ok(0)
}

fn drop_db(ctx: &Ctx, name: String) -> Result<u8, Fail> {
    ctx.store.drop_db(&name)?;
    ctx.out
        .print(|| format!("dropped {name}"), || json!({"dropped": name}));
    Ok(0)
}

/// A tree shape as `db info` names it.
fn shape_name(s: kiln::TreeShape) -> &'static str {
    match s {
        kiln::TreeShape::Mod16 => "mod16",
        kiln::TreeShape::Bounded => "bounded",
    }
}

fn info(ctx: &Ctx, name: String) -> Result<u8, Fail> {
    let db = ctx.store.open_db(&name)?;
    let i = db.info()?;
    let shared = db.shared_bytes()?;
    let (filesets, fileset_bytes) = db.file_set_usage()?;
    let levels = |l: u8| i.files.iter().filter(|f| f.level == l).count();
    ctx.out.print(
        || {
            let mut s = format!(
                "database   {}\nlineage    {}\ndocuments  {}\nevents     {}\nheads      {}\nfiles      {} ({} diffs, {} compacted)\nbytes      {}\ncommits    {}",
                i.name,
                i.lineage,
                i.docs,
                i.events,
                if i.heads.is_empty() { "(none)".into() } else { cids(&i.heads).join(", ") },
                i.files.len(),
                levels(0),
                i.files.len() - levels(0),
                i.bytes,
                i.commits
            );
            s.push_str(&format!(
                "\nshared     {shared} bytes with other databases, {} its own",
                i.bytes - shared
            ));
            s.push_str(&format!(
                "\nattached   {filesets} file-sets, {fileset_bytes} bytes (each stored once)"
            ));
            s.push_str(&format!("\ntree shape {}", shape_name(i.tree_shape)));
            s.push_str(&format!(
                "\ncompacted  {}\nthreshold  {} ({})",
                if i.compacted > 0 { utc(i.compacted) } else { "never".into() },
                i.compact_threshold,
                if i.settings.compact_threshold.is_some() { "this database" } else { "store" }
            ));
            if i.torn_append {
                s.push_str(&format!("\nnote       {}", torn_note(&i.name)));
            }
            s
        },
        || {
            json!({"name": i.name, "lineage": i.lineage, "docs": i.docs, "events": i.events,
                "heads": cids(&i.heads), "root": i.root.map(|r| r.to_string()), "bytes": i.bytes,
                "commits": i.commits, "compacted_ms": i.compacted,
                "diffs": levels(0), "compacted_files": i.files.len() - levels(0),
                "shared_bytes": shared, "own_bytes": i.bytes - shared,
                "filesets": filesets, "fileset_bytes": fileset_bytes,
                "compact_threshold": i.compact_threshold, "settings": i.settings.to_json(),
                "torn_append": i.torn_append, "tree_shape": shape_name(i.tree_shape),
                "files": i.files.iter().map(|f| json!({"name": f.name.to_string(), "level": f.level, "size": f.size})).collect::<Vec<_>>()})
        },
    );
    Ok(0)
}

fn fork(ctx: &Ctx, src: String, dst: Option<String>) -> Result<u8, Fail> {
    let db = ctx.store.fork(&src, dst.as_deref())?;
    ctx.out.print(
        || format!("forked {src} into {}", db.name()),
        || json!({"source": src, "name": db.name()}),
    );
    Ok(0)
}
