//! The store as a whole: gc, config, demo.

use super::Ctx;
use crate::input::parse_threshold;
use crate::out::{code, Fail, Out};
use clap::Subcommand;
use kiln::{Error, Store};
use serde_json::{json, Value};

/// The store as a whole: collecting garbage, settings, and a demonstration.
#[derive(Subcommand)]
pub enum StoreGroup {
    /// Remove what crashes left and finish interrupted purges; prints the bytes freed.
    ///
    /// Removes files no database names (into the archive when the store keeps one), pooled
    /// files holding bytes, half-made or half-dropped database folders, keys no database uses
    /// and proposals no key opens. Safe while other processes write. A database whose head
    /// record cannot be read is reported (exit 5) and whatever may be its is kept; the rest of
    /// the store is collected.
    Gc {
        /// Remove file-sets (attached files' bytes) no document version names once this many
        /// seconds old (default 3600: a file-set is written before the commit that names it,
        /// and a transaction's until it commits; 0 removes every unnamed one now, also one a
        /// write running meanwhile is about to name: use 0 only while nothing writes).
        #[arg(long, value_name = "SECONDS", default_value_t = 3600)]
        fileset_grace: u64,
        /// Collect this remote instead (a folder: a path or file:///path): remove the files no
        /// head record there names, once older than --remote-grace. Needs no key.
        #[arg(long, value_name = "URL")]
        remote: Option<String>,
        /// With --remote: spare files younger than this many seconds (default a day: a sync
        /// uploads files before the record naming them, and a slow one must not lose them).
        #[arg(
            long,
            value_name = "SECONDS",
            default_value_t = 86400,
            requires = "remote"
        )]
        remote_grace: u64,
    },
    /// Show or change store settings (--compact-threshold N|default, --keep-archive on|off).
    Config {
        /// Compact a database when more than N diff files are live (default 100), unless the
        /// database has its own setting. `default` clears it.
        #[arg(long, value_name = "N|default")]
        compact_threshold: Option<String>,
        /// Keep the files that compaction and gc retire in files/.archive/ instead of deleting
        /// them, so every diff can be read back.
        #[arg(long, value_name = "on|off", value_parser = ["on", "off"])]
        keep_archive: Option<String>,
    },
    /// Create a database "demo" with 1,000 sample documents, read them back and verify.
    Demo,
}

impl StoreGroup {
    pub fn run(self, ctx: &Ctx) -> Result<u8, Fail> {
        match self {
            StoreGroup::Gc {
                remote: Some(url),
                remote_grace,
                ..
            } => gc_remote(ctx, &url, remote_grace),
            StoreGroup::Gc { fileset_grace, .. } => gc(ctx, fileset_grace),
            StoreGroup::Config {
                compact_threshold,
                keep_archive,
            } => config(ctx, compact_threshold, keep_archive),
            StoreGroup::Demo => Ok(demo(&ctx.store, &ctx.out)?),
        }
    }
}

fn gc_remote(ctx: &Ctx, url: &str, grace: u64) -> Result<u8, Fail> {
    let io = |e: std::io::Error| Fail {
        code: if e.kind() == std::io::ErrorKind::InvalidInput {
            crate::out::code::USAGE
        } else {
            1
        },
        msg: format!("{url}: {e}"),
    };
    let remote = kiln_sync::open_remote_with(url, &ctx.remote).map_err(io)?;
    let r = kiln_sync::gc_remote(&*remote, std::time::Duration::from_secs(grace)).map_err(io)?;
    ctx.out.print(
        || {
            format!(
                "{} databases, {} live files; {} files removed; {} unnamed files kept for the grace period",
                r.heads, r.live, r.removed, r.young
            )
        },
        || json!({"remote": url, "databases": r.heads, "live": r.live, "removed": r.removed, "young": r.young}),
    );
    Ok(0)
}

fn gc(ctx: &Ctx, fileset_grace: u64) -> Result<u8, Fail> {
    let r = ctx
        .store
        .gc_with_fileset_grace(std::time::Duration::from_secs(fileset_grace))?;
    let freed = r.removed_bytes + r.reusable_bytes;
    ctx.out.print(
        || {
            let mut s = format!(
                "{} databases, {} live files; {} unreferenced files ({} bytes) {}; {} reusable files ({} bytes) freed; {} bytes freed in all",
                r.databases,
                r.live_files,
                r.removed_files,
                r.removed_bytes,
                if r.archived { "archived" } else { "removed" },
                r.reusable_files,
                r.reusable_bytes,
                if r.archived { r.reusable_bytes } else { freed }
            );
            if r.removed_filesets + r.kept_filesets > 0 {
                s.push_str(&format!(
                    "\nfile-sets no document names: {} ({} bytes) removed, {} kept for the grace period",
                    r.removed_filesets, r.removed_fileset_bytes, r.kept_filesets
                ));
            }
            if r.leftovers_removed + r.keys_removed + r.proposals_removed + r.archived_removed > 0 {
                s.push_str(&format!(
                    "\nleft by interrupted commands: {} database folders, {} keys, {} proposals, {} archived files removed",
                    r.leftovers_removed, r.keys_removed, r.proposals_removed, r.archived_removed
                ));
            }
            for n in &r.purges_finished {
                s.push_str(&format!("\nfinished the interrupted purge in {n}"));
            }
            for (n, why) in &r.unreadable {
                s.push_str(&format!("\nPROBLEM database {n} cannot be read: {why}"));
            }
            if !r.kept_files.is_empty() {
                s.push_str(&format!(
                    "\nkept {} unreferenced files an unreadable database may name",
                    r.kept_files.len()
                ));
            }
            for (n, why) in &r.purges_unfinished {
                s.push_str(&format!("\nPROBLEM purge in {n} not finished: {why}"));
            }
            s
        },
        || {
            json!({"databases": r.databases, "live_files": r.live_files,
                "removed_files": r.removed_files, "removed_bytes": r.removed_bytes,
                "archived": r.archived, "reusable_files": r.reusable_files,
                "reusable_bytes": r.reusable_bytes,
                "freed_bytes": if r.archived { r.reusable_bytes } else { freed },
                "leftovers_removed": r.leftovers_removed, "keys_removed": r.keys_removed,
                "proposals_removed": r.proposals_removed,
                "archived_removed": r.archived_removed,
                "removed_filesets": r.removed_filesets,
                "removed_fileset_bytes": r.removed_fileset_bytes,
                "kept_filesets": r.kept_filesets,
                "purges_finished": r.purges_finished,
                "unreadable": r.unreadable.iter().map(|(n, w)| json!({"database": n, "error": w})).collect::<Vec<_>>(),
                "kept_files": r.kept_files.iter().map(|f| f.to_string()).collect::<Vec<_>>(),
                "purges_unfinished": r.purges_unfinished.iter().map(|(n, w)| json!({"database": n, "error": w})).collect::<Vec<_>>()})
        },
    );
    // The rest of the store was collected; what could not be is damage to report.
    if !r.unreadable.is_empty() || !r.purges_unfinished.is_empty() {
        return Ok(code::CORRUPT);
    }
    Ok(0)
}

fn config(
    ctx: &Ctx,
    compact_threshold: Option<String>,
    keep_archive: Option<String>,
) -> Result<u8, Fail> {
    let mut s = ctx.store.settings();
    if let Some(t) = compact_threshold {
        s.compact_threshold = parse_threshold(&t)?;
    }
    if let Some(a) = keep_archive {
        s.keep_archive = (a == "on").then_some(true);
    }
    ctx.store.set_settings(&s)?;
    let t = s
        .compact_threshold
        .unwrap_or(ctx.store.options().compact_threshold);
    let a = s.keep_archive.unwrap_or(false);
    ctx.out.print(
        || {
            format!(
                "compact threshold {t}\nkeep archive {}",
                if a { "on" } else { "off" }
            )
        },
        || json!({"compact_threshold": t, "keep_archive": a}),
    );
    Ok(0)
}

fn demo(store: &Store, out: &Out) -> kiln::Result<u8> {
    let t = std::time::Instant::now();
    let db = match store.open_db("demo") {
        Ok(db) => db,
        Err(Error::NoSuchDatabase(_)) => store.create(Some("demo"))?,
        Err(e) => return Err(e),
    };
    let docs: Vec<Value> = (0..1000)
        .map(|i| json!({"_id": format!("item-{i:04}"), "title": format!("Item number {i}"), "n": (i * 7919) % 1000,
                        "tags": [format!("t{}", i % 10)]}))
        .collect();
    let c = db.bulk(&docs)?;
    let first = db.get("item-0042")?;
    let updated = db.put(&json!({"_id": "item-0042", "title": "changed", "n": -1}))?;
    let before = db.get_at("item-0042", &c.event)?;
    let changes = db.changes(Some(&[c.event]))?;
    let r = db.verify()?;
    let info = db.info()?;
    out.print(
        || {
            format!(
                "store {}\nwrote 1,000 documents into database 'demo' (event {})\nread item-0042: {}\n\
                 updated it (event {}); as of the bulk write it was: {}\nchanges since the bulk write: {}\n\
                 database: {} documents, {} events, {} files, {} bytes (encrypted)\nverify: {}\ndone in {:.0} ms",
                store.root().display(),
                c.event,
                first.map(|d| d.to_string()).unwrap_or_default(),
                updated.event,
                before.map(|d| d["title"].to_string()).unwrap_or_default(),
                changes.iter().map(|c| c.id.as_str()).collect::<Vec<_>>().join(", "),
                info.docs,
                info.events,
                info.files.len(),
                info.bytes,
                if r.ok() { "ok" } else { "FAILED" },
                t.elapsed().as_secs_f64() * 1000.0
            )
        },
        || json!({"docs": info.docs, "events": info.events, "files": info.files.len(), "bytes": info.bytes, "verify_ok": r.ok()}),
    );
    Ok(if r.ok() { 0 } else { code::CORRUPT })
}
