//! The live channel (docs/server.md "Live channel"): clients subscribe to databases
//! (`GET /v1/watch?dbs=A,B`, Server-Sent Events) and hear when one's head records change, a
//! notification and not the data: they then sync as usual. Changes written through this server
//! are told at once; changes written through another server on the same storage are found by
//! listing the watched databases' head records every poll interval, while anyone is
//! subscribed. The server keeps what it last listed for watched databases only.

use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::stream::Stream;
use kiln_sync::{split_head_name, Etag, HeadRead, Remote};
use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::broadcast;

/// Notifications queued per subscriber before it counts as behind (told to sync everything).
const QUEUE: usize = 1024;

/// How often a subscription checks that it is still allowed (its token not revoked since).
const RECHECK: Duration = Duration::from_secs(5);

/// Whether a subscription is still allowed (its token still reads every database watched).
pub type StillAllowed = Box<dyn Fn() -> bool + Send + Sync>;

/// What one subscription watches, and what ends it.
struct Watched {
    dbs: HashSet<String>,
    allowed: StillAllowed,
    recheck: tokio::time::Interval,
}

/// The subscribers of a server and what tells them.
#[derive(Debug)]
pub struct Live {
    tx: broadcast::Sender<String>,
    closing: tokio::sync::watch::Sender<bool>,
    polling: AtomicBool,
    poll: Duration,
    /// The databases someone watches, each with its subscriber count and its head records as
    /// last listed (what the poller compares with). Only watched databases are kept: the
    /// server's memory follows its subscriptions, not what the storage holds.
    watched: Mutex<HashMap<String, WatchedDb>>,
}

/// One watched database.
#[derive(Debug, Default)]
struct WatchedDb {
    subscribers: usize,
    /// Its head records and their versions as last listed (`None`: not listed yet).
    seen: Option<Vec<(String, Etag)>>,
}

/// Watched databases listed at once by the poller (each its own listing).
const LISTINGS_IN_FLIGHT: usize = 8;

/// A subscription's hold on its databases: while it lives they are polled; dropping it (the
/// subscriber went away) lets go of them.
struct Holding {
    live: Arc<Live>,
    dbs: Vec<String>,
}

impl Drop for Holding {
    fn drop(&mut self) {
        let mut w = self.live.lock_watched();
        for db in &self.dbs {
            if let Some(e) = w.get_mut(db) {
                e.subscribers -= 1;
                if e.subscribers == 0 {
                    w.remove(db);
                }
            }
        }
    }
}

impl Live {
    /// No subscribers yet; the watched databases are listed every `poll` while there are
    /// some.
    pub fn new(poll: Duration) -> Live {
        Live {
            tx: broadcast::channel(QUEUE).0,
            closing: tokio::sync::watch::channel(false).0,
            polling: AtomicBool::new(false),
            poll,
            watched: Mutex::new(HashMap::new()),
        }
    }

    fn lock_watched(&self) -> std::sync::MutexGuard<'_, HashMap<String, WatchedDb>> {
        self.watched.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The live channel's gauges in the Prometheus text format: the databases watched (what
    /// the server keeps for its subscribers) and the subscriptions open.
    pub fn render(&self) -> String {
        let dbs = self.lock_watched().len();
        let subs = self.tx.receiver_count();
        format!(
            "# HELP kiln_server_watched_databases Databases the live channel's subscribers watch.\n\
             # TYPE kiln_server_watched_databases gauge\n\
             kiln_server_watched_databases {dbs}\n\
             # HELP kiln_server_subscriptions Live channel subscriptions open.\n\
             # TYPE kiln_server_subscriptions gauge\n\
             kiln_server_subscriptions {subs}\n"
        )
    }

    /// Ends every subscription (the server is stopping: they would hold it up).
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// Tells the subscribers of `db` that its head records changed.
    pub fn tell(&self, db: &str) {
        let _ = self.tx.send(db.to_owned());
    }

    /// A subscription to databases `dbs`: an event stream of `ready` (subscribed), then
    /// `head` (`{"db": DB}`) for each change, `resync` when this subscriber fell behind and
    /// should sync every database it watches; a comment every 15 s keeps it open. It ends
    /// once `allowed` says no (checked before each event and every [`RECHECK`]: a token taken
    /// out of the tokens file stops hearing within that time).
    pub fn subscribe(
        self: &Arc<Self>,
        dbs: HashSet<String>,
        storage: Arc<dyn Remote>,
        allowed: StillAllowed,
    ) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
        let rx = self.tx.subscribe();
        let closing = self.closing.subscribe();
        let holding = self.hold(&dbs);
        self.start_polling(storage.clone());
        let first = Some((self.clone(), storage));
        let mut recheck = tokio::time::interval(RECHECK);
        recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let watched = Watched {
            dbs,
            allowed,
            recheck,
        };
        let stream = futures_util::stream::unfold(
            (rx, closing, watched, first, holding),
            |(mut rx, mut closing, mut w, first, holding)| async move {
                if let Some((live, storage)) = first {
                    // What the storage holds now is what later listings are compared with
                    // before the subscriber hears it is subscribed (and syncs): a change made
                    // after that is told.
                    live.baseline(&storage, &holding.dbs).await;
                    let e = Event::default().event("ready").data("{}");
                    return Some((Ok(e), (rx, closing, w, None, holding)));
                }
                loop {
                    if *closing.borrow() || !(w.allowed)() {
                        return None;
                    }
                    let got = tokio::select! {
                        got = rx.recv() => got,
                        _ = closing.changed() => return None,
                        _ = w.recheck.tick() => continue,
                    };
                    if !(w.allowed)() {
                        return None;
                    }
                    let e = match got {
                        Ok(db) if w.dbs.contains(&db) => {
                            let data = serde_json::json!({ "db": db }).to_string();
                            Event::default().event("head").data(data)
                        }
                        Ok(_) => continue,
                        Err(broadcast::error::RecvError::Lagged(_)) => {
                            Event::default().event("resync").data("{}")
                        }
                        Err(broadcast::error::RecvError::Closed) => return None,
                    };
                    return Some((Ok(e), (rx, closing, w, None, holding)));
                }
            },
        );
        Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
    }

    /// Counts a subscriber of each of `dbs` until the returned hold is dropped.
    fn hold(self: &Arc<Self>, dbs: &HashSet<String>) -> Holding {
        let mut w = self.lock_watched();
        for db in dbs {
            w.entry(db.clone()).or_default().subscribers += 1;
        }
        Holding {
            live: self.clone(),
            dbs: dbs.iter().cloned().collect(),
        }
    }

    /// Lists the watched databases' head records every poll interval while anyone is
    /// subscribed, and tells of those that changed (written through another server). One
    /// poller per server.
    fn start_polling(self: &Arc<Self>, storage: Arc<dyn Remote>) {
        if self.polling.swap(true, Ordering::SeqCst) {
            return;
        }
        let live = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(live.poll).await;
                if live.lock_watched().is_empty() {
                    live.polling.store(false, Ordering::SeqCst);
                    // (A subscriber that came meanwhile starts it again, or finds it on.)
                    if live.lock_watched().is_empty() || live.polling.swap(true, Ordering::SeqCst) {
                        return;
                    }
                }
                let dbs: Vec<String> = live.lock_watched().keys().cloned().collect();
                let Some(now) = list(&storage, dbs).await else {
                    continue;
                };
                let mut changed = Vec::new();
                {
                    let mut w = live.lock_watched();
                    for (db, records) in now {
                        // (A database no one watches any more is not kept.)
                        let Some(e) = w.get_mut(&db) else { continue };
                        let before = e.seen.replace(records);
                        if before.is_some_and(|b| Some(&b) != e.seen.as_ref()) {
                            changed.push(db);
                        }
                    }
                }
                for db in changed {
                    live.tell(&db);
                }
            }
        });
    }

    /// Lists the databases of a new subscription that were not listed yet.
    async fn baseline(&self, storage: &Arc<dyn Remote>, dbs: &[String]) {
        let new: Vec<String> = {
            let w = self.lock_watched();
            dbs.iter()
                .filter(|db| w.get(*db).is_some_and(|e| e.seen.is_none()))
                .cloned()
                .collect()
        };
        if new.is_empty() {
            return;
        }
        if let Some(now) = list(storage, new).await {
            let mut w = self.lock_watched();
            for (db, records) in now {
                if let Some(e) = w.get_mut(&db) {
                    e.seen.get_or_insert(records);
                }
            }
        }
    }
}

/// The head records of databases `dbs` with their versions, by database (`None`: a listing
/// failed): each database's own listing (a few records: the server never holds the whole
/// storage's), [`LISTINGS_IN_FLIGHT`] at a time.
async fn list(
    storage: &Arc<dyn Remote>,
    dbs: Vec<String>,
) -> Option<Vec<(String, Vec<(String, Etag)>)>> {
    let mut set = tokio::task::JoinSet::new();
    let mut out = Vec::with_capacity(dbs.len());
    let mut failed = None;
    for db in dbs {
        if set.len() >= LISTINGS_IN_FLIGHT {
            collect(set.join_next().await, &mut out, &mut failed);
        }
        let s = storage.clone();
        set.spawn_blocking(move || records_of(&*s, &db).map(|r| (db, r)));
    }
    while let Some(r) = set.join_next().await {
        collect(Some(r), &mut out, &mut failed);
    }
    match failed {
        Some(e) => {
            tracing::warn!(error = %e, "listing the storage for watchers failed");
            None
        }
        None => Some(out),
    }
}

/// Takes one listing's outcome into [`list`]'s answer.
fn collect<T>(
    got: Option<Result<std::io::Result<T>, tokio::task::JoinError>>,
    out: &mut Vec<T>,
    failed: &mut Option<String>,
) {
    match got {
        Some(Ok(Ok(v))) => out.push(v),
        Some(Ok(Err(e))) => *failed = Some(e.to_string()),
        Some(Err(e)) => *failed = Some(e.to_string()),
        None => {}
    }
}

/// Database `db`'s head records and their versions (blocking): its replicas' records, or its
/// one record.
fn records_of(storage: &dyn Remote, db: &str) -> std::io::Result<Vec<(String, Etag)>> {
    if storage.per_replica_heads() {
        let mut v = storage.list_replica_heads(db)?;
        v.retain(|(n, _)| split_head_name(n).0 == db);
        return Ok(v);
    }
    Ok(match storage.read_head(db, None)? {
        HeadRead::Found { etag, .. } => vec![(db.to_owned(), etag)],
        HeadRead::Absent | HeadRead::NotModified => Vec::new(),
    })
}
