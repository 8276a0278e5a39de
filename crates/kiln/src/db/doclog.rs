//! Document logs (see `format::car::doclog`): written into every file of several events
//! (compaction merges its inputs' logs as it streams; a merge's and a history cut's file get
//! one from their events), and read by [`Database::history`] to find a document's versions
//! without walking the clock.

use super::*;
use car::LogEntry;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// The log entries of event `cid`: one per id it writes.
pub(super) fn entries_of<'a>(cid: &Cid, e: &'a Event) -> impl Iterator<Item = LogEntry> + 'a {
    let cid = *cid;
    e.ops
        .iter()
        .map(move |(id, _)| LogEntry::new(id.as_bytes(), e.height, &cid))
}

/// Adds to `w` the document log of `events` (the file's), when it holds more than one.
pub(super) fn write_log<'a>(
    w: &mut car::Writer,
    events: impl Iterator<Item = (&'a Cid, &'a Event)>,
) -> Result<()> {
    let mut n = 0;
    let mut entries: Vec<LogEntry> = Vec::new();
    for (c, e) in events {
        n += 1;
        entries.extend(entries_of(c, e));
    }
    if n < 2 {
        return Ok(());
    }
    entries.sort_unstable();
    for e in &entries {
        w.add_log_entry(e)
            .map_err(|e| Error::corrupt("document log", e.to_string()))?;
    }
    Ok(())
}

/// One sorted source of log entries for a compaction's merge: a file's log, read a page at a
/// time, or entries collected from a file's events.
enum Source {
    Pages {
        file: FileRef,
        idx: Arc<car::Index>,
        next: usize,
        buf: std::vec::IntoIter<LogEntry>,
    },
    Loose(std::vec::IntoIter<LogEntry>),
}

/// The logs of a compaction's inputs merged into one sorted stream: memory holds a page per
/// input with a log, and the entries of the inputs without one (transaction diffs, one event
/// each; files written before logs, once).
pub(super) struct LogMerge {
    sources: Vec<Source>,
    heap: BinaryHeap<Reverse<(LogEntry, usize)>>,
}

impl LogMerge {
    /// `logged`: the inputs with a log; `loose`: the entries of the others' events.
    pub(super) fn new(
        db: &Db,
        logged: Vec<(FileRef, Arc<car::Index>)>,
        mut loose: Vec<LogEntry>,
    ) -> Result<LogMerge> {
        loose.sort_unstable();
        let mut m = LogMerge {
            sources: logged
                .into_iter()
                .map(|(file, idx)| Source::Pages {
                    file,
                    idx,
                    next: 0,
                    buf: Vec::new().into_iter(),
                })
                .chain(std::iter::once(Source::Loose(loose.into_iter())))
                .collect(),
            heap: BinaryHeap::new(),
        };
        for i in 0..m.sources.len() {
            if let Some(e) = m.pull(db, i)? {
                m.heap.push(Reverse((e, i)));
            }
        }
        Ok(m)
    }

    /// The next entry of source `i`.
    fn pull(&mut self, db: &Db, i: usize) -> Result<Option<LogEntry>> {
        match &mut self.sources[i] {
            Source::Loose(it) => Ok(it.next()),
            Source::Pages {
                file,
                idx,
                next,
                buf,
            } => loop {
                if let Some(e) = buf.next() {
                    return Ok(Some(e));
                }
                if *next >= idx.log.len() {
                    return Ok(None);
                }
                *buf = db.log_page(file, idx, *next)?.into_iter();
                *next += 1;
            },
        }
    }

    /// The next entry of the merged stream (entries in several inputs come as often as they
    /// are there; the writer skips repeats).
    pub(super) fn next(&mut self, db: &Db) -> Result<Option<LogEntry>> {
        let Some(Reverse((e, i))) = self.heap.pop() else {
            return Ok(None);
        };
        if let Some(n) = self.pull(db, i)? {
            self.heap.push(Reverse((n, i)));
        }
        Ok(Some(e))
    }
}

impl Db {
    /// Page `n` of file `f`'s document log, read and checked.
    pub(super) fn log_page(
        &self,
        f: &FileRef,
        idx: &car::Index,
        n: usize,
    ) -> Result<Vec<LogEntry>> {
        let r = &idx.log[n];
        self.restoring(&f.name, || {
            let mut sealed = self
                .store
                .storage
                .read_at(&f.name, r.off, r.len as usize)
                .map_err(|e| self.file_err(&f.name, e))?;
            idx.open_log_page(&self.key, n, &mut sealed)
                .map_err(|e| Error::format(format!("file {}", f.name), e))
        })
    }

    /// The events in `v`'s live files that write `id`, with their heights: from each file's
    /// document log when it has one, else from its events (a transaction's diff holds one).
    /// Each event once, in no particular order.
    pub(super) fn writers_of(&self, v: &View, id: &str) -> Result<Vec<(u64, Cid)>> {
        let mut out: Vec<(u64, Cid)> = Vec::new();
        for f in v.head.files.iter() {
            let idx = self.index(f)?;
            if idx.log.is_empty() && idx.version >= car::LOGGED {
                // Without a log, a file of this version holds one event at most: its root.
                for c in &idx.meta.roots {
                    let ev = v.event(c)?;
                    if ev.ops.binary_search_by(|(k, _)| k.as_str().cmp(id)).is_ok() {
                        out.push((ev.height, *c));
                    }
                }
                continue;
            }
            if idx.log.is_empty() {
                for e in self.file_entries(v, f)?.iter().filter(|e| e.event) {
                    let ev = v.event_in(&e.cid, Some((f, e)))?;
                    if ev.ops.binary_search_by(|(k, _)| k.as_str().cmp(id)).is_ok() {
                        out.push((ev.height, e.cid));
                    }
                }
                continue;
            }
            for p in idx.log_pages_for(id.as_bytes()) {
                for e in self.log_page(f, &idx, p)? {
                    if e.id == id.as_bytes() {
                        out.extend(self.events_led_by(v, f, &idx, &e)?);
                    }
                }
            }
        }
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    /// The events of file `f` that log entry `e` names (one, but for a clash of leads): its
    /// index searched from the lowest CID the lead allows, each candidate read and checked
    /// to write the entry's id at its height.
    fn events_led_by(
        &self,
        v: &View,
        f: &FileRef,
        idx: &car::Index,
        e: &LogEntry,
    ) -> Result<Vec<(u64, Cid)>> {
        let lo = e.lowest_cid();
        let mut candidates: Vec<car::Entry> = Vec::new();
        let from = idx.entries.partition_point(|x| x.cid < lo);
        candidates.extend(
            idx.entries[from..]
                .iter()
                .take_while(|x| e.names(&x.cid))
                .filter(|x| x.event),
        );
        if let Some(first) = idx
            .page_for(&lo)
            .or(Some(0))
            .filter(|_| !idx.pages.is_empty())
        {
            for p in first..idx.pages.len() {
                if p > first && !e.names(&idx.pages[p].first) {
                    break;
                }
                let page = v
                    .page(&f.name, idx, p)?
                    .entries(idx.segs.len())
                    .map_err(|x| Error::format(format!("file {}", f.name), x))?;
                candidates.extend(page.iter().filter(|x| x.event && e.names(&x.cid)));
            }
        }
        let mut out = Vec::new();
        for x in candidates {
            let ev = v.event_in(&x.cid, Some((f, &x)))?;
            let id = std::str::from_utf8(&e.id).unwrap_or("");
            if ev.height == e.height()
                && ev.ops.binary_search_by(|(k, _)| k.as_str().cmp(id)).is_ok()
            {
                out.push((ev.height, x.cid));
            }
        }
        if out.is_empty() {
            return Err(Error::corrupt(
                format!("file {}", f.name),
                "its document log names an event it does not hold",
            ));
        }
        Ok(out)
    }
}
