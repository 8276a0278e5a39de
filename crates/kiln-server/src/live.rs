//! The live channel (docs/server.md "Live channel"): clients subscribe to databases
//! (`GET /v1/watch?dbs=A,B`, Server-Sent Events) and hear when one's head records change, a
//! notification and not the data: they then sync as usual. Changes written through this server
//! are told at once; changes written through another server on the same storage are found by
//! listing the storage's head records every poll interval, while anyone is subscribed.

use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::stream::Stream;
use kiln_sync::{split_head_name, Etag, Remote};
use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
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
    /// The storage's head records as last listed (what the poller compares with); kept
    /// while no one watches, so changes made meanwhile are told when watching starts again.
    seen: std::sync::Mutex<Option<HashMap<String, Etag>>>,
}

impl Live {
    /// No subscribers yet; the storage is listed every `poll` while there are some.
    pub fn new(poll: Duration) -> Live {
        Live {
            tx: broadcast::channel(QUEUE).0,
            closing: tokio::sync::watch::channel(false).0,
            polling: AtomicBool::new(false),
            poll,
            seen: std::sync::Mutex::new(None),
        }
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
            (rx, closing, watched, first),
            |(mut rx, mut closing, mut w, first)| async move {
                if let Some((live, storage)) = first {
                    // What the storage holds now is what later listings are compared with
                    // before the subscriber hears it is subscribed (and syncs): a change made
                    // after that is told.
                    live.baseline(&storage).await;
                    let e = Event::default().event("ready").data("{}");
                    return Some((Ok(e), (rx, closing, w, None)));
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
                    return Some((Ok(e), (rx, closing, w, None)));
                }
            },
        );
        Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
    }

    /// Lists the storage's head records every poll interval while anyone is subscribed, and
    /// tells of those that changed (written through another server). One poller per server.
    fn start_polling(self: &Arc<Self>, storage: Arc<dyn Remote>) {
        if self.polling.swap(true, Ordering::SeqCst) {
            return;
        }
        let live = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(live.poll).await;
                if live.tx.receiver_count() == 0 {
                    live.polling.store(false, Ordering::SeqCst);
                    // (A subscriber that came meanwhile starts it again, or finds it on.)
                    if live.tx.receiver_count() == 0 || live.polling.swap(true, Ordering::SeqCst) {
                        return;
                    }
                }
                let Some(now) = list(&storage).await else {
                    continue;
                };
                let before = live
                    .seen
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .replace(now.clone());
                if let Some(before) = before {
                    let mut changed: HashSet<&str> = HashSet::new();
                    for (name, etag) in &now {
                        if before.get(name) != Some(etag) {
                            changed.insert(split_head_name(name).0);
                        }
                    }
                    for name in before.keys().filter(|n| !now.contains_key(*n)) {
                        changed.insert(split_head_name(name).0);
                    }
                    for db in changed {
                        live.tell(db);
                    }
                }
            }
        });
    }

    /// Lists the storage once if nothing was listed yet (the first subscription).
    async fn baseline(&self, storage: &Arc<dyn Remote>) {
        if self
            .seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
        {
            return;
        }
        if let Some(now) = list(storage).await {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            if seen.is_none() {
                *seen = Some(now);
            }
        }
    }
}

/// The storage's head records and their versions (`None`: the listing failed).
async fn list(storage: &Arc<dyn Remote>) -> Option<HashMap<String, Etag>> {
    let s = storage.clone();
    match tokio::task::spawn_blocking(move || s.list_heads()).await {
        Ok(Ok(listed)) => Some(listed.into_iter().collect()),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "listing the storage for watchers failed");
            None
        }
        Err(_) => None,
    }
}
