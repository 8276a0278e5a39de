//! Syncing one database with a remote.
//!
//! One round: read the remote head record, conditionally on the version last seen (unchanged
//! and nothing new here: that one request is the whole sync). When it changed: bring in the
//! files it names that this database's head does not (a copy held here is checked against its
//! name and kept anew, else fetched and checked), check that it descends from the remote state
//! seen before (else a rollback is reported), and take it in (adopted when this replica is
//! behind, merged when they diverged: `Database::take_in`), all while garbage collection is
//! held off. Then, if this replica has what the remote lacks: upload the files the remote's
//! record does not name (each only if absent there), then write the record by compare-and-
//! swap on the version read; a lost race starts the round again.
//!
//! On a remote that keeps a head record per replica (an S3 bucket: many S3-compatible servers'
//! conditional writes cannot be trusted, so none are relied on), each replica writes only its
//! own record (`<db>~<store id>`), and a sync takes in the union: one listing of the database's
//! records, a pull-only round for each other replica's record that changed since last seen
//! (adopted or merged, as above), then a round on its own record. Replicas converge as with one
//! record (a merge of two states descends from both, so the other side adopts it); a replica's
//! record that was seen and is gone from the listing is reported as a rollback.

use crate::state::{Memory, Place};
use crate::{Etag, FileName, HeadRead, Kind, Remote};
use kiln::{Database, FileKind, MergeReport, Replica, Store};
use std::collections::HashSet;

/// Which attached files' bytes (file-sets) a sync moves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FileSets {
    /// None, either way: documents and their `_files` only.
    None,
    /// Push every file-set this replica holds that the remote lacks; pull none (a read fetches
    /// what it needs: [`RemoteFiles`]).
    #[default]
    OnDemand,
    /// Push as above, and pull every file-set the remote names that this replica lacks.
    All,
}

/// What to sync.
#[derive(Clone, Copy, Debug)]
pub struct SyncOptions {
    /// Take the remote's changes.
    pub pull: bool,
    /// Give the remote this replica's changes.
    pub push: bool,
    /// Which file-sets move.
    pub files: FileSets,
}

impl Default for SyncOptions {
    fn default() -> Self {
        SyncOptions {
            pull: true,
            push: true,
            files: FileSets::OnDemand,
        }
    }
}

/// What a sync did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SyncReport {
    /// Requests made to the remote.
    pub requests: usize,
    /// Diff files fetched from the remote (and their bytes).
    pub files_pulled: usize,
    /// Bytes of the diff files fetched.
    pub bytes_pulled: u64,
    /// Diff files uploaded.
    pub files_pushed: usize,
    /// Bytes of the diff files uploaded.
    pub bytes_pushed: u64,
    /// File-sets fetched.
    pub filesets_pulled: usize,
    /// File-sets uploaded.
    pub filesets_pushed: usize,
    /// This replica took the remote's state in whole (it was behind, or at the same events).
    pub adopted: bool,
    /// The merge of the remote's state into this one, when they had diverged.
    pub merged: Option<MergeReport>,
    /// The remote head record was written.
    pub pushed: bool,
    /// Lost compare-and-swap races (each started the round again).
    pub retries: usize,
}

impl SyncReport {
    /// Whether nothing moved either way.
    pub fn is_noop(&self) -> bool {
        !self.pushed && !self.adopted && self.merged.is_none() && self.filesets_pulled == 0
    }

    /// Adds what a later sync with the same remote did.
    fn add(&mut self, b: SyncReport) {
        self.requests += b.requests;
        self.files_pulled += b.files_pulled;
        self.bytes_pulled += b.bytes_pulled;
        self.files_pushed += b.files_pushed;
        self.bytes_pushed += b.bytes_pushed;
        self.filesets_pulled += b.filesets_pulled;
        self.filesets_pushed += b.filesets_pushed;
        self.adopted |= b.adopted;
        self.pushed |= b.pushed;
        self.retries += b.retries;
        if b.merged.is_some() {
            self.merged = b.merged;
        }
    }
}

/// Syncs `db` with each of `remotes` in turn (`kiln sync DB` for a database with several
/// remotes), then again while a sync after the first changed the local state (at most three
/// passes): a state taken from the second remote must reach the first too, or replicas that
/// each sync the remotes in turn merge each other's merges without end. Returns each remote's
/// outcome (the passes added up; an error is the last one met).
pub fn sync_remotes(
    store: &Store,
    db: &Database,
    remotes: &[&dyn Remote],
    id: &str,
    opts: SyncOptions,
    progress: &dyn Fn(&Progress),
) -> Vec<Result<SyncReport, SyncError>> {
    let mut out: Vec<Result<SyncReport, SyncError>> =
        remotes.iter().map(|_| Ok(SyncReport::default())).collect();
    for _ in 0..3 {
        let mut again = false;
        for (i, remote) in remotes.iter().enumerate() {
            let r = sync_with_progress(store, db, *remote, id, opts, progress);
            if let Ok(rep) = &r {
                again |= i > 0 && (rep.adopted || rep.merged.is_some());
            }
            match (&mut out[i], r) {
                (Ok(sum), Ok(rep)) => sum.add(rep),
                (slot, r) => *slot = r,
            }
        }
        if !again {
            break;
        }
    }
    out
}

/// Why a sync failed.
#[derive(Debug)]
pub enum SyncError {
    /// The database said no (a damaged or foreign remote record, a missing key…).
    Kiln(kiln::Error),
    /// The remote could not be reached or refused.
    Remote(std::io::Error),
    /// The remote shows a state that does not descend from one it showed before (rolled back,
    /// replayed, or withholding an update): nothing was taken in.
    Rollback(String),
    /// A push was asked without a pull, and the remote has changes this replica lacks.
    NeedsPull(String),
    /// Other writers kept winning the race for the remote head.
    Busy,
}

impl std::fmt::Display for SyncError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SyncError::Kiln(e) => e.fmt(f),
            SyncError::Remote(e) => write!(f, "the remote: {e}"),
            SyncError::Rollback(db) => write!(
                f,
                "the remote's state of '{db}' does not descend from the one it showed before \
                 (rolled back, replayed or withheld): nothing taken in"
            ),
            SyncError::NeedsPull(db) => write!(
                f,
                "the remote has changes to '{db}' this replica lacks: pull them first"
            ),
            SyncError::Busy => f.write_str("other replicas kept writing the remote head; retry"),
        }
    }
}

impl std::error::Error for SyncError {}

impl From<kiln::Error> for SyncError {
    fn from(e: kiln::Error) -> Self {
        SyncError::Kiln(e)
    }
}

impl From<std::io::Error> for SyncError {
    fn from(e: std::io::Error) -> Self {
        SyncError::Remote(e)
    }
}

/// Attempts at writing the remote head before giving up (each lost race pulls again).
const TRIES: usize = 16;

/// How far a sync's file transfers are (for a progress bar): `done` of `total` files of this
/// step moved, `bytes` so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress<'a> {
    /// The database's id on the remote.
    pub db: &'a str,
    /// What moves.
    pub step: Step,
    /// Files of this step moved so far.
    pub done: usize,
    /// Files this step moves at most (some may turn out to be there already).
    pub total: usize,
    /// Bytes moved so far in this step.
    pub bytes: u64,
}

/// A step of a sync that moves files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Diff files fetched.
    Pull,
    /// File-sets fetched (`--files`).
    PullFileSets,
    /// Diff files uploaded.
    Push,
    /// File-sets uploaded.
    PushFileSets,
}

/// A remote that counts the requests made through it, and tells how file transfers go.
struct Counted<'a> {
    remote: &'a dyn Remote,
    progress: &'a dyn Fn(&Progress),
    db: &'a str,
    n: std::cell::Cell<usize>,
    /// Files named by the head records this sync read: there on the remote (unless a remote
    /// gc removes them meanwhile, so a push names them unchecked and checks them once its
    /// record is written, where the remote cannot make them young).
    named: std::cell::RefCell<HashSet<FileName>>,
}

impl Counted<'_> {
    fn tick(&self) -> &dyn Remote {
        self.n.set(self.n.get() + 1);
        self.remote
    }

    fn tell(&self, step: Step, done: usize, total: usize, bytes: u64) {
        (self.progress)(&Progress {
            db: self.db,
            step,
            done,
            total,
            bytes,
        });
    }
}

/// Syncs database `db` of `store` with `remote`, where it is held under id `id` (see the
/// module doc). Idempotent: a sync killed at any point and run again completes (files are
/// uploaded before the record that names them, and taken in only once all are here).
pub fn sync(
    store: &Store,
    db: &Database,
    remote: &dyn Remote,
    id: &str,
    opts: SyncOptions,
) -> Result<SyncReport, SyncError> {
    sync_with_progress(store, db, remote, id, opts, &|_| {})
}

/// [`sync`], telling `progress` how its file transfers go (after each file moved).
pub fn sync_with_progress(
    store: &Store,
    db: &Database,
    remote: &dyn Remote,
    id: &str,
    opts: SyncOptions,
    progress: &dyn Fn(&Progress),
) -> Result<SyncReport, SyncError> {
    crate::check_db(id)?;
    let place = Place::new(store, &remote.location());
    let remote = Counted {
        remote,
        progress,
        db: id,
        n: std::cell::Cell::new(0),
        named: Default::default(),
    };
    let mut r = SyncReport::default();
    let per_replica = remote.remote.per_replica_heads();
    let out = (|| {
        if !per_replica && !remote.remote.swaps_checked() && !place.probed() {
            // The first sync with a remote checks its compare-and-swap (a remote that ignores
            // conditional writes would lose writes silently).
            remote.n.set(remote.n.get() + crate::probe::REQUESTS);
            crate::probe(remote.remote).map_err(|e| {
                SyncError::Remote(std::io::Error::other(format!(
                    "{} refused: {e}",
                    remote.remote.location()
                )))
            })?;
            place.mark_probed()?;
        }
        for _ in 0..TRIES {
            let before = db.state_digest()?;
            let done = if per_replica {
                replicas_round(store, db, &remote, &place, id, opts, &mut r)
            } else {
                round(store, db, &remote, &place, id, id, opts, &mut r)
            };
            match done {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                // A file of this replica's state went away under the round: a compaction here
                // (another thread or process) replaced it. Start over with the new state.
                Err(SyncError::Kiln(e)) if gone(&e) && db.state_digest()? != before => {}
                Err(e) => return Err(e),
            }
            r.retries += 1;
        }
        Err(SyncError::Busy)
    })();
    r.requests = remote.n.get();
    out.map(|()| r)
}

/// One round with a remote that keeps a head record per replica
/// ([`Remote::per_replica_heads`]): one listing of the database's records; each other
/// replica's record that changed since last seen is taken in (a round that only pulls), then
/// this replica's own record is brought up to date (a round on it: no one else writes it).
/// Nothing changed anywhere: the listing was the whole sync. False when a round must start
/// over.
fn replicas_round(
    store: &Store,
    db: &Database,
    remote: &Counted,
    place: &Place,
    id: &str,
    opts: SyncOptions,
    r: &mut SyncReport,
) -> Result<bool, SyncError> {
    let me = crate::replica_head(id, &crate::state::replica_id(store)?);
    let listed = remote.tick().list_replica_heads(id)?;
    forget_gone(place, id, &listed)?;
    let mut own_listed = None;
    let mut others_changed = false;
    for (slot, etag) in &listed {
        if *slot == me {
            own_listed = Some(etag);
            continue;
        }
        if place.etag(slot).as_ref() == Some(etag) || !opts.pull {
            continue;
        }
        others_changed = true;
        let only_pull = SyncOptions {
            push: false,
            ..opts
        };
        if !round(store, db, remote, place, id, slot, only_pull, r)? {
            return Ok(false);
        }
    }
    let (mut mine, _) = place.load(&me);
    if mine.etag().is_some() && mine.etag().as_ref() != own_listed {
        // This replica's own record is not the one it wrote last: another process of this
        // store wrote it meanwhile, or someone removed or replaced it. This replica holds all
        // it ever wrote there: what the record holds now is taken in like another's, and
        // this replica's state written over it.
        place.forget(&me)?;
        mine = Default::default();
    }
    let quiet = !others_changed
        && own_listed.is_some()
        && mine.etag().as_ref() == own_listed
        && mine.digest == hex(&db.state_digest()?);
    if quiet {
        return Ok(true);
    }
    round(store, db, remote, place, id, &me, opts, r)
}

/// Forgets the replicas' records seen before and missing from the listing now: a replica
/// retired (its record removed by hand, docs/format.md), or withheld by the remote. Nothing is
/// lost either way: what this replica took from it, it holds.
fn forget_gone(place: &Place, id: &str, listed: &[(String, Etag)]) -> Result<(), SyncError> {
    for slot in place.remembered()?.remove(id).unwrap_or_default() {
        if !listed.iter().any(|(s, _)| *s == slot) {
            place.forget(&slot)?;
        }
    }
    Ok(())
}

/// Whether `e` says a file is not there.
fn gone(e: &kiln::Error) -> bool {
    match e {
        kiln::Error::MissingFile(..) => true,
        kiln::Error::Io { source, .. } => source.kind() == std::io::ErrorKind::NotFound,
        _ => false,
    }
}

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// One round with head record `slot` (`id` itself, or a replica's record of it); false when a
/// compare-and-swap was lost.
#[allow(clippy::too_many_arguments)]
fn round(
    store: &Store,
    db: &Database,
    remote: &Counted,
    place: &Place,
    id: &str,
    slot: &str,
    opts: SyncOptions,
    r: &mut SyncReport,
) -> Result<bool, SyncError> {
    let (memory, seen) = place.load(slot);
    let known = memory.etag();
    let read = remote.tick().read_head(slot, known.as_ref())?;
    let seen_record = seen.clone().filter(|_| !memory.digest.is_empty());
    let (record, etag) = match read {
        HeadRead::NotModified => match seen {
            Some(b) => (b, known.clone()),
            None => {
                return Err(SyncError::Remote(std::io::Error::other(
                    "not modified, but nothing was known",
                )))
            }
        },
        HeadRead::Found { bytes, etag } => (bytes, Some(etag)),
        HeadRead::Absent => {
            if known.is_some() {
                // It had a record: removed (by whom?) or rolled back to before the first push.
                return Err(SyncError::Rollback(db.name().to_owned()));
            }
            if !opts.push {
                return Ok(true);
            }
            return push(store, db, remote, place, id, slot, None, None, opts, r);
        }
    };
    let theirs = match db.open_replica(id, &record) {
        // The record remembered here is damaged: forgotten, and read again whole.
        Err(_) if etag == known && known.is_some() => {
            place.forget(slot)?;
            return Ok(false);
        }
        x => x?,
    };
    {
        let mut named = remote.named.borrow_mut();
        named.extend(theirs.files().into_iter().map(|(n, _)| n));
        named.extend(theirs.filesets().iter().copied());
    }
    let changed_remote = etag != known || memory.digest.is_empty();
    if changed_remote {
        // Bring in the files it names, and take it in, while gc is held off.
        let hold = store.hold_files()?;
        let brought = db.replica_files_to_bring(&theirs)?;
        let bytes_before = r.bytes_pulled;
        // Copies held here first; the rest fetched (several at once where the remote can),
        // each checked and kept as it comes.
        let mut fetch = Vec::new();
        for name in &brought {
            if !keep_local(store, &hold, name)? {
                fetch.push(*name);
            }
        }
        match bring(&hold, remote, &fetch, brought.len(), r) {
            Err(SyncError::Remote(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                // A newer record may have replaced this one (and a remote gc removed the files
                // only the old one named): start over with it, if so.
                return match remote.tick().read_head(slot, etag.as_ref())? {
                    HeadRead::NotModified => Err(SyncError::Remote(e)),
                    _ => Ok(false),
                };
            }
            x => x?,
        }
        remote.tell(
            Step::Pull,
            brought.len(),
            brought.len(),
            r.bytes_pulled - bytes_before,
        );
        // Durable, all at once, before a head record names them.
        hold.sync()?;
        if !memory.heads.is_empty() && !db.replica_descends_from(&theirs, &memory.heads())? {
            return Err(SyncError::Rollback(db.name().to_owned()));
        }
        if opts.pull {
            // The metadata both sides had at the last sync (a change on one side wins).
            let base_meta = seen_record
                .as_deref()
                .and_then(|b| db.open_replica(id, b).ok())
                .map(|r| r.meta().to_owned());
            let t = match db.take_in(&theirs, &brought, base_meta.as_deref()) {
                // Another process retired a file meanwhile: bring them again.
                Err(kiln::Error::Changed(_)) => return Ok(false),
                x => x?,
            };
            if t.changed {
                match t.merge {
                    Some(m) => r.merged = Some(m),
                    None => r.adopted = true,
                }
            }
        } else if !matches!(
            db.relation(&theirs)?,
            kiln::Relation::Ahead | kiln::Relation::Same
        ) {
            return Err(SyncError::NeedsPull(db.name().to_owned()));
        }
        drop(hold);
        if opts.pull {
            // (Best effort: a push below insists.)
            let _ = db.finish_pending_purge();
        }
        if opts.pull && opts.files == FileSets::All {
            pull_filesets(store, remote, &theirs, r)?;
        }
    }
    let digest = hex(&db.state_digest()?);
    let in_sync = digest == hex(&theirs.digest());
    let remember = |d: &str| {
        place.save(
            slot,
            &Memory {
                etag: etag.as_ref().map(|e| e.0.clone()),
                heads: theirs.heads().iter().map(|c| c.to_string()).collect(),
                digest: d.to_owned(),
            },
            &record,
        )
    };
    // Pushed when this replica's state moved on from the remote's: it changed since the last
    // sync (the remote did not), or the remote changed and this replica is ahead of it now.
    let ahead = if changed_remote {
        !in_sync
    } else {
        digest != memory.digest
    };
    if changed_remote {
        // (No local state matches a remote this replica is ahead of: the next sync compares.)
        remember(if in_sync { &digest } else { "" })?;
    }
    if !ahead || !opts.push {
        return Ok(true);
    }
    if !changed_remote && !db.has_events(theirs.heads())? {
        // This replica no longer has the remote's events (its store was restored from an
        // older copy?): never pushed over them.
        return Err(SyncError::NeedsPull(db.name().to_owned()));
    }
    push(
        store,
        db,
        remote,
        place,
        id,
        slot,
        etag,
        Some(&theirs),
        opts,
        r,
    )
}

/// Uploads what `base` (the remote's record, if any) lacks and writes this replica's record
/// on `etag`; false when the race was lost.
#[allow(clippy::too_many_arguments)]
fn push(
    store: &Store,
    db: &Database,
    remote: &Counted,
    place: &Place,
    id: &str,
    slot: &str,
    etag: Option<Etag>,
    base: Option<&Replica>,
    opts: SyncOptions,
    r: &mut SyncReport,
) -> Result<bool, SyncError> {
    // A purge not finished here must not reach the remote.
    db.finish_pending_purge()?;
    let mine = db.replica_record(id)?;
    let there: HashSet<FileName> = base
        .map(|b| b.files().into_iter().map(|(n, _)| n).collect())
        .unwrap_or_default();
    let todo: Vec<FileName> = mine
        .state
        .files()
        .into_iter()
        .map(|(n, _)| n)
        .filter(|n| !there.contains(n))
        .collect();
    // Files found there and named without an upload, on a remote that cannot make them young
    // again: a remote gc under way may remove them (checked once the record is written).
    let mut found = Vec::new();
    let up = upload(store, remote, Kind::Diff, &todo, Some(&mut found), false)?;
    if let Some(name) = up.vanished {
        if db.state_digest()? != mine.state.digest() {
            // A compaction here replaced it meanwhile: start over with the new state.
            return Ok(false);
        }
        return Err(SyncError::Kiln(kiln::Error::MissingFile(
            name,
            db.name().to_owned(),
        )));
    }
    r.files_pushed += up.files;
    r.bytes_pushed += up.bytes;
    if opts.files != FileSets::None {
        let there: HashSet<FileName> = base
            .map(|b| b.filesets().iter().copied().collect())
            .unwrap_or_default();
        // A file-set this replica never fetched is not its to give.
        let todo: Vec<FileName> = mine
            .state
            .filesets()
            .iter()
            .filter(|n| !there.contains(n) && store.has_file(FileKind::FileSet, n))
            .copied()
            .collect();
        let up = upload(store, remote, Kind::FileSet, &todo, Some(&mut found), true)?;
        r.filesets_pushed += up.files;
    }
    match remote.tick().write_head(slot, etag.as_ref(), &mine.bytes)? {
        Ok(new) => {
            r.pushed = true;
            reupload_gone(store, remote, &found, r)?;
            place.save(
                slot,
                &Memory {
                    etag: Some(new.0),
                    heads: mine.state.heads().iter().map(|c| c.to_string()).collect(),
                    digest: hex(&mine.state.digest()),
                },
                &mine.bytes,
            )?;
            Ok(true)
        }
        Err(_) => Ok(false),
    }
}

/// What [`upload`] moved.
struct Uploaded {
    files: usize,
    bytes: u64,
    /// A diff file of the state being pushed that is no longer here (the upload stopped).
    vanished: Option<FileName>,
}

/// Uploads the files of `todo` the remote lacks ([`WINDOW`](crate::WINDOW) at a time where it
/// can), telling the progress as it goes. Files there already are made young again where the
/// remote can; where it cannot, they are looked up first (no bytes sent for those there) and
/// added to `found`, unless `found` is `None` (all uploaded: those there stay as they are). A diff file gone from this store stops
/// the upload (`vanished`) unless `skip_missing`; a file-set this store lacks is skipped.
fn upload(
    store: &Store,
    remote: &Counted,
    kind: Kind,
    todo: &[FileName],
    found: Option<&mut Vec<(Kind, FileName)>>,
    skip_missing: bool,
) -> Result<Uploaded, SyncError> {
    let (local, step) = match kind {
        Kind::Diff => (FileKind::Diff, Step::Push),
        Kind::FileSet => (FileKind::FileSet, Step::PushFileSets),
    };
    let total = todo.len();
    let young = remote.remote.refresh_makes_young();
    let todo = match found {
        Some(found) if !young => look_up(remote, kind, todo, found)?,
        _ => todo.to_vec(),
    };
    if young {
        // (A folder looks each file up as it goes: one request per file, and one per upload.)
        remote.n.set(remote.n.get() + todo.len());
    }
    let (mut loaded, mut bytes) = (0, 0u64);
    let mut sizes = vec![0u64; todo.len()];
    let (mut vanished, mut failed) = (None, None);
    let put = remote.remote.put_files(kind, &todo, &mut |i| {
        remote.tell(step, total - todo.len() + loaded, total, bytes);
        let stored = store.stored_file(local, &todo[i]).map_err(|e| {
            let told = std::io::Error::other(e.to_string());
            failed = Some(e);
            told
        })?;
        match stored {
            Some(b) => {
                loaded += 1;
                bytes += b.len() as u64;
                sizes[i] = b.len() as u64;
                Ok(Some(b))
            }
            None if skip_missing || kind == Kind::FileSet => Ok(None),
            None => {
                vanished = Some(todo[i]);
                Err(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("diff file {} is gone from this store", todo[i]),
                ))
            }
        }
    });
    if let Some(e) = failed {
        return Err(SyncError::Kiln(e));
    }
    if vanished.is_some() {
        return Ok(Uploaded {
            files: 0,
            bytes: 0,
            vanished,
        });
    }
    let put = put?;
    remote.n.set(remote.n.get() + loaded);
    let mut up = Uploaded {
        files: 0,
        bytes: 0,
        vanished: None,
    };
    for (i, uploaded) in put.into_iter().enumerate() {
        if uploaded {
            up.files += 1;
            up.bytes += sizes[i];
        }
    }
    remote.tell(step, total, total, up.bytes);
    Ok(up)
}

/// The files of `todo` a remote that cannot make files young lacks, looked up (no bytes sent
/// for those there) but for those a record read in this sync names; the others are added to
/// `found`, to be checked again once the record naming them is written.
fn look_up(
    remote: &Counted,
    kind: Kind,
    todo: &[FileName],
    found: &mut Vec<(Kind, FileName)>,
) -> Result<Vec<FileName>, SyncError> {
    let named = remote.named.borrow();
    let (known, unknown): (Vec<FileName>, Vec<FileName>) =
        todo.iter().partition(|n| named.contains(n));
    drop(named);
    found.extend(known.into_iter().map(|n| (kind, n)));
    remote
        .n
        .set(remote.n.get() + remote.remote.lookup_requests(unknown.len()));
    let there = remote.remote.has_files(kind, &unknown)?;
    let mut lacking = Vec::new();
    for (n, there) in unknown.into_iter().zip(there) {
        if there {
            found.push((kind, n));
        } else {
            lacking.push(n);
        }
    }
    Ok(lacking)
}

/// Uploads again the files of `found` a remote gc removed while the push that found them was
/// under way (a remote that cannot make a file young again: docs/format.md, "Remote gc").
fn reupload_gone(
    store: &Store,
    remote: &Counted,
    found: &[(Kind, FileName)],
    r: &mut SyncReport,
) -> Result<(), SyncError> {
    for kind in [Kind::Diff, Kind::FileSet] {
        let names: Vec<FileName> = found
            .iter()
            .filter(|(k, _)| *k == kind)
            .map(|(_, n)| *n)
            .collect();
        if names.is_empty() {
            continue;
        }
        remote
            .n
            .set(remote.n.get() + remote.remote.lookup_requests(names.len()));
        let there = remote.remote.has_files(kind, &names)?;
        let gone: Vec<FileName> = names
            .iter()
            .zip(there)
            .filter(|(_, there)| !there)
            .map(|(n, _)| *n)
            .collect();
        // (One gone from this store too was replaced here by a compaction: the next push
        // names its successor.)
        let up = upload(store, remote, kind, &gone, None, true)?;
        match kind {
            Kind::Diff => r.files_pushed += up.files,
            Kind::FileSet => r.filesets_pushed += up.files,
        }
    }
    Ok(())
}

/// Keeps the copy of diff file `name` this store holds (a file retired here, say), checked
/// and written anew; false when there is none (or it does not check).
fn keep_local(store: &Store, hold: &kiln::FilesHold, name: &FileName) -> Result<bool, SyncError> {
    Ok(match store.stored_file(FileKind::Diff, name)? {
        Some(bytes) => hold.keep(name, &bytes).is_ok(),
        None => false,
    })
}

/// Fetches diff files `names` (one request each, several at once where the remote can),
/// checks each against its name and keeps it (durable with `hold.sync()`), telling the
/// progress of `total` files (the rest were here).
fn bring(
    hold: &kiln::FilesHold,
    remote: &Counted,
    names: &[FileName],
    total: usize,
    r: &mut SyncReport,
) -> Result<(), SyncError> {
    remote.n.set(remote.n.get() + names.len());
    let (mut done, bytes_before) = (total - names.len(), r.bytes_pulled);
    let (mut missing, mut failed) = (None, None);
    let got = remote.remote.get_files(Kind::Diff, names, &mut |i, bytes| {
        remote.tell(Step::Pull, done, total, r.bytes_pulled - bytes_before);
        let Some(bytes) = bytes else {
            missing = Some(names[i]);
            return Err(std::io::ErrorKind::NotFound.into());
        };
        hold.keep(&names[i], &bytes).map_err(|e| {
            let told = std::io::Error::other(e.to_string());
            failed = Some(e);
            told
        })?;
        done += 1;
        r.files_pulled += 1;
        r.bytes_pulled += bytes.len() as u64;
        Ok(())
    });
    if let Some(e) = failed {
        return Err(SyncError::Kiln(e));
    }
    if let Some(name) = missing {
        return Err(SyncError::Remote(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("file {name} is named by the remote head but not on the remote"),
        )));
    }
    Ok(got?)
}

/// Fetches every file-set `theirs` names that this store lacks (one the remote lacks too is
/// skipped: its writer never uploaded it).
fn pull_filesets(
    store: &Store,
    remote: &Counted,
    theirs: &Replica,
    r: &mut SyncReport,
) -> Result<(), SyncError> {
    let todo: Vec<&FileName> = theirs
        .filesets()
        .iter()
        .filter(|n| !store.has_file(FileKind::FileSet, n))
        .collect();
    let mut moved = 0;
    for (i, name) in todo.iter().copied().enumerate() {
        remote.tell(Step::PullFileSets, i, todo.len(), moved);
        if let Some(bytes) = remote.tick().get_file(Kind::FileSet, name)? {
            store.keep_fetched_file(FileKind::FileSet, name, &bytes)?;
            r.filesets_pulled += 1;
            moved += bytes.len() as u64;
        }
    }
    remote.tell(Step::PullFileSets, todo.len(), todo.len(), moved);
    Ok(())
}

/// File-sets fetched on first read from a remote (plug into [`Store::set_fileset_source`]):
/// a replica synced without files reads them when it needs them.
#[derive(Debug)]
pub struct RemoteFiles<R: Remote>(pub R);

impl<R: Remote> kiln::FileSource for RemoteFiles<R> {
    fn fetch(&self, name: &FileName, out: &mut dyn std::io::Write) -> std::io::Result<bool> {
        match self.0.get_file(Kind::FileSet, name)? {
            Some(b) => out.write_all(&b).map(|()| true),
            None => Ok(false),
        }
    }
}

/// How [`watch`] paces itself.
#[derive(Clone, Copy, Debug)]
pub struct WatchOptions {
    /// How often the remote is asked for changes when nothing happens here (one conditional
    /// read each: an idle watch of one database costs one request per interval).
    pub poll: std::time::Duration,
    /// The least time between two syncs that local commits start: commits made meanwhile go
    /// out together (a busy database writes its remote head at most once per interval).
    pub min_interval: std::time::Duration,
    /// How often this replica's state is looked at for new commits (a read of its commit
    /// counter; the head record only when it moved).
    pub look: std::time::Duration,
}

impl Default for WatchOptions {
    fn default() -> Self {
        WatchOptions {
            poll: std::time::Duration::from_secs(5),
            min_interval: std::time::Duration::from_secs(1),
            look: std::time::Duration::from_millis(100),
        }
    }
}

/// Syncs `db` with `remote` until `on_sync` returns false: once at the start, then whenever
/// this replica has new commits (at most once per [`WatchOptions::min_interval`]) or
/// [`WatchOptions::poll`] has passed. `on_sync` sees each sync's outcome (a failed sync is
/// tried again at the next turn; the caller decides whether to go on).
pub fn watch(
    store: &Store,
    db: &Database,
    remote: &dyn Remote,
    id: &str,
    opts: SyncOptions,
    pace: WatchOptions,
    on_sync: &mut dyn FnMut(&Result<SyncReport, SyncError>) -> bool,
) -> Result<(), SyncError> {
    // Where the remote tells of its changes (a sync server's live channel), they are taken
    // in as they come; elsewhere the remote is polled.
    let mut told = remote.notify(id);
    loop {
        let started = std::time::Instant::now();
        let r = sync(store, db, remote, id, opts);
        if !on_sync(&r) {
            return Ok(());
        }
        let synced = db.state_digest()?;
        loop {
            let mut moved_there = false;
            match &told {
                Some(rx) => match rx.recv_timeout(pace.look) {
                    Ok(()) => {
                        // (Every note waiting is taken: one sync answers them all.)
                        while rx.try_recv().is_ok() {}
                        moved_there = true;
                    }
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => told = None,
                },
                None => std::thread::sleep(pace.look),
            }
            let waited = started.elapsed();
            if moved_there || waited >= pace.poll {
                break;
            }
            if waited >= pace.min_interval && db.state_digest()? != synced {
                break;
            }
        }
    }
}

/// Syncs several databases of `store` with one remote (`kiln sync --all`): one listing of the
/// remote's head records (a request per thousand) tells which records changed since each
/// database's last sync; a database whose record did not change and that has nothing new
/// itself costs no request, the others a sync each. Returns each database's outcome, in order.
pub fn sync_many(
    store: &Store,
    dbs: &[(&Database, &str)],
    remote: &dyn Remote,
    opts: SyncOptions,
) -> Result<Vec<Result<SyncReport, SyncError>>, SyncError> {
    let listed = remote.list_heads()?;
    let place = Place::new(store, &remote.location());
    let per_replica = remote.per_replica_heads();
    let (me, remembered) = if per_replica {
        (crate::state::replica_id(store)?, place.remembered()?)
    } else {
        Default::default()
    };
    let mut out = Vec::with_capacity(dbs.len());
    for (i, (db, id)) in dbs.iter().enumerate() {
        // Its records in the listing, and the one this replica syncs through.
        let records: Vec<(String, Etag)> = listed
            .iter()
            .filter(|(n, _)| match crate::split_head_name(n) {
                (d, Some(_)) => per_replica && d == *id,
                (d, None) => !per_replica && d == *id,
            })
            .cloned()
            .collect();
        let own = if per_replica {
            crate::replica_head(id, &me)
        } else {
            (*id).to_owned()
        };
        let (memory, _) = place.load(&own);
        let seen_all = records
            .iter()
            .all(|(slot, etag)| place.etag(slot).as_ref() == Some(etag))
            && records.iter().any(|(slot, _)| *slot == own)
            && (!per_replica || remembered.get(*id).map_or(0, Vec::len) == records.len());
        let unchanged_here = !memory.digest.is_empty() && hex(&db.state_digest()?) == memory.digest;
        if seen_all && unchanged_here {
            // (The listing's request is counted once, with the first database.)
            out.push(Ok(SyncReport {
                requests: usize::from(i == 0),
                ..SyncReport::default()
            }));
            continue;
        }
        let mut r = sync(store, db, remote, id, opts);
        if let (0, Ok(r)) = (i, &mut r) {
            r.requests += 1;
        }
        out.push(r);
    }
    Ok(out)
}
