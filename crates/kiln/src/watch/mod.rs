//! Watching a database: subscriptions to its commits and live queries.
//!
//! A [`Subscription`] hands out, once per commit and in commit order (ascending height, then
//! event CID), the documents that commit wrote (a delete as `{"_id", "_deleted": true}`):
//! commits of this handle, of other handles and processes on the same store, and commits
//! that arrive by merge or sync alike, since it follows the database's clock, not a queue of
//! writes. It is pulled: nothing is buffered for a subscriber that does not read, and one that
//! falls more than [`MAX_BEHIND`] commits behind gets one catch-up set instead (each changed
//! document once, its latest value, from [`Database::changes`]). Dropping it unsubscribes.
//!
//! How it hears commits: each subscription watches the database's `LOCK` file, whose commit
//! counter every commit writes (`storage::local::FileWatch`: inotify on Linux, so a waiting
//! subscriber sleeps in `poll` and wakes within the kernel's notification delay; elsewhere a
//! read of the counter every 20 ms).
//!
//! A [`LiveQuery`] re-runs a query when a commit changes the database and hands out its rows
//! when they differ from the last ones handed out.
//!
//! Uses `db` (heads, commits since, changes since), `index` (queries), `storage::local`
//! (the file watch).

use crate::db::Database;
use crate::error::{Error, Result};
use crate::format::block::cid::Cid;
use crate::index::{Query, Row};
use crate::storage::local::FileWatch;
use serde_json::Value;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Commits a subscriber may fall behind by before it gets one catch-up set instead.
pub const MAX_BEHIND: usize = 1000;

/// What a subscription hands out.
#[derive(Clone, Debug, PartialEq)]
pub struct ChangeSet {
    /// The commit (`None` for a catch-up set).
    pub event: Option<Cid>,
    /// The documents it wrote (deletes as `{"_id", "_deleted": true}`); for a catch-up set,
    /// each document changed since the last set, once, with its latest value.
    pub docs: Vec<Value>,
    /// A catch-up set: the subscriber fell behind, or history it had reached was cut.
    pub catch_up: bool,
}

/// A subscription to a database's commits (see the module doc).
pub struct Subscription {
    db: Database,
    watch: FileWatch,
    /// The heads whose commits were handed out (or queued).
    reached: Vec<Cid>,
    queued: VecDeque<ChangeSet>,
    max_behind: usize,
}

impl Database {
    /// Subscribes to the commits after the current state.
    pub fn subscribe(&self) -> Result<Subscription> {
        let heads = self.heads()?;
        self.subscribe_since(&heads)
    }

    /// Subscribes to the commits after `since` (events of this database; empty: from the
    /// first commit): those already made come first.
    pub fn subscribe_since(&self, since: &[Cid]) -> Result<Subscription> {
        self.subscribe_with(since, MAX_BEHIND)
    }

    /// [`Database::subscribe_since`], catching up past `max_behind` pending commits.
    pub fn subscribe_with(&self, since: &[Cid], max_behind: usize) -> Result<Subscription> {
        // (The watch first: a commit from here on wakes it.)
        let watch = self.commit_watch()?;
        Ok(Subscription {
            db: self.clone(),
            watch,
            reached: since.to_vec(),
            queued: VecDeque::new(),
            max_behind: max_behind.max(1),
        })
    }

    /// A live query of index `name`: its rows now, then again whenever a commit changes them.
    pub fn live_query(&self, name: &str, q: &Query) -> Result<LiveQuery> {
        let watch = self.commit_watch()?;
        let rows = self.query(name, q)?;
        Ok(LiveQuery {
            db: self.clone(),
            watch,
            name: name.to_owned(),
            query: q.clone(),
            rows,
            heads: None,
        })
    }
}

impl Subscription {
    /// The next commit's changes, waiting for one as long as it takes.
    pub fn recv(&mut self) -> Result<ChangeSet> {
        loop {
            if let Some(c) = self.recv_timeout(Duration::from_secs(3600))? {
                return Ok(c);
            }
        }
    }

    /// The next commit's changes, or `None` if none came within `timeout`.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Option<ChangeSet>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(c) = self.queued.pop_front() {
                return Ok(Some(c));
            }
            self.take_in()?;
            if !self.queued.is_empty() {
                continue;
            }
            if !wait_until(&mut self.watch, deadline)? {
                return Ok(None);
            }
        }
    }

    /// The changes already committed and not handed out, without waiting.
    pub fn try_recv(&mut self) -> Result<Option<ChangeSet>> {
        self.recv_timeout(Duration::ZERO)
    }

    /// The heads whose commits this subscription has handed out or queued: subscribing again
    /// since them misses nothing.
    pub fn heads(&self) -> &[Cid] {
        &self.reached
    }

    /// Stops the subscription (as dropping it does).
    pub fn unsubscribe(self) {}

    /// Queues the commits since the heads reached.
    fn take_in(&mut self) -> Result<()> {
        let now = self.db.heads()?;
        if now == self.reached {
            return Ok(());
        }
        match self.db.commits_since(&self.reached, self.max_behind) {
            Ok(Some((heads, commits))) => {
                for (event, docs) in commits {
                    self.queued.push_back(ChangeSet {
                        event: Some(event),
                        docs,
                        catch_up: false,
                    });
                }
                self.reached = heads;
            }
            // Too far behind, or the heads reached were cut from the history: catch up.
            r @ (Ok(None) | Err(Error::NoSuchEvent(..))) => {
                let since = match r {
                    Ok(None) => Some(&self.reached[..]),
                    _ => None,
                };
                let (heads, changes) = self.db.changes_with_heads(since)?;
                self.queued.push_back(ChangeSet {
                    event: None,
                    docs: changes.into_iter().map(|c| c.doc).collect(),
                    catch_up: true,
                });
                self.reached = heads;
            }
            Err(e) => return Err(e),
        }
        Ok(())
    }
}

/// Waits for each commit in turn (see [`Subscription::recv`]): `for c in db.subscribe()?`.
impl Iterator for Subscription {
    type Item = Result<ChangeSet>;
    fn next(&mut self) -> Option<Result<ChangeSet>> {
        Some(self.recv())
    }
}

/// Waits on `watch` until a commit may have happened or `deadline` passes; `false` once it
/// has passed.
fn wait_until(watch: &mut FileWatch, deadline: Instant) -> Result<bool> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Ok(false);
    }
    let path = watch.path().to_path_buf();
    watch.wait(left).map_err(|e| Error::io(path, e))?;
    Ok(true)
}

/// A live query (see [`Database::live_query`]).
pub struct LiveQuery {
    db: Database,
    watch: FileWatch,
    name: String,
    query: Query,
    rows: Vec<Row>,
    /// The heads the rows were read at (`None`: before the first wait).
    heads: Option<Vec<Cid>>,
}

impl LiveQuery {
    /// The rows last handed out (at first, the rows when the query was made).
    pub fn rows(&self) -> &[Row] {
        &self.rows
    }

    /// The rows after the next commit that changes them, waiting as long as it takes.
    pub fn recv(&mut self) -> Result<Vec<Row>> {
        loop {
            if let Some(r) = self.recv_timeout(Duration::from_secs(3600))? {
                return Ok(r);
            }
        }
    }

    /// The rows after the next commit that changes them, or `None` if none came within
    /// `timeout`.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Option<Vec<Row>>> {
        let deadline = Instant::now() + timeout;
        if self.heads.is_none() {
            // The rows handed out were read at these heads or later.
            self.heads = Some(self.db.heads()?);
        }
        loop {
            let now = self.db.heads()?;
            if self.heads.as_ref() != Some(&now) {
                let rows = self.db.query(&self.name, &self.query)?;
                self.heads = Some(now);
                if rows != self.rows {
                    self.rows = rows.clone();
                    return Ok(Some(rows));
                }
                continue;
            }
            if !wait_until(&mut self.watch, deadline)? {
                return Ok(None);
            }
        }
    }
}
