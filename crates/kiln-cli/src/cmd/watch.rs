//! `kiln watch`: a database's commits (or a query's rows) as JSON lines, as they happen.

use super::index::QueryArgs;
use super::Ctx;
use crate::input::parse_event;
use crate::out::Fail;
use clap::Subcommand;
use serde_json::json;
use std::io::Write;

/// `kiln watch`.
#[derive(Subcommand)]
pub enum WatchGroup {
    /// Print each commit as it happens, one JSON line each, until interrupted.
    ///
    /// A line is {"event": CID, "docs": [the documents it wrote; deletes as {"_id", "_deleted":
    /// true}]}, in commit order: commits of any process on this store, and those a merge or a
    /// sync brings. One that falls far behind gets {"catch_up": true, "docs": [each changed
    /// document once, latest value]}. With --since, the commits after EVENT come first. With
    /// --query INDEX, prints {"rows": [...]} with the query's rows now, then again whenever
    /// a commit changes them (the query flags are `kiln query`'s). Commits are heard through
    /// the database's LOCK file (inotify on Linux: no polling).
    Watch {
        db: String,
        /// Start after this event (default: now).
        #[arg(long, value_name = "EVENT", conflicts_with = "query")]
        since: Option<String>,
        /// Watch this index's query instead of the commits.
        #[arg(long, value_name = "INDEX")]
        query: Option<String>,
        #[command(flatten)]
        q: QueryArgs,
    },
}

impl WatchGroup {
    pub fn run(self, ctx: &Ctx) -> Result<u8, Fail> {
        let WatchGroup::Watch {
            db,
            since,
            query,
            q,
        } = self;
        let db = ctx.open(&db)?;
        let mut out = std::io::stdout().lock();
        // (A line that cannot be written is stdout closed: a pipe's reader went away.)
        let mut line =
            |v: serde_json::Value| writeln!(out, "{v}").and_then(|()| out.flush()).is_ok();
        if let Some(index) = query {
            let mut live = db.live_query(&index, &q.query())?;
            if !line(json!({"rows": live.rows()})) {
                return Ok(0);
            }
            loop {
                let rows = live.recv()?;
                if !line(json!({"rows": rows})) {
                    return Ok(0);
                }
            }
        }
        let mut sub = match since {
            Some(e) => db.subscribe_since(&[parse_event(&e)?])?,
            None => db.subscribe()?,
        };
        loop {
            let c = sub.recv()?;
            let v = match c.event {
                Some(e) => json!({"event": e.to_string(), "docs": c.docs}),
                None => json!({"catch_up": true, "docs": c.docs}),
            };
            if !line(v) {
                return Ok(0);
            }
        }
    }
}
