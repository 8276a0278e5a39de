//! A database as its replicas see one another through a remote: its state sealed for the
//! remote (bound to the database's id there), how two states of one database relate (same,
//! one behind the other, or diverged), and taking a replica's state in. Moving files and
//! records is `kiln-sync`'s; this is what only the database can do.
//!
//! Two ways in, both leaving the replica's files as they are (never re-encrypted or copied):
//! - **Adopt** (this replica is behind, or at the same events with another layout): the
//!   replica's state becomes this database's whole state (its heads, tree, files, purges and
//!   cuts), a consistent state some replica wrote. The files it no longer names are left to
//!   garbage collection (a synced lineage is marked shared, so nothing is reused in place).
//! - **Merge** (diverged): the replica's files that hold the events this one lacks (and their
//!   document versions) join this database's live files, and a merge event joins the heads
//!   (its file holds only the merged tree and the event); conflicts are settled and reported
//!   as `merge_from` does. Purges travel: versions the replica purged are purged here too.

use super::*;

/// The magic of a remote head record (docs/format.md "Remote head record").
const MAGIC: &[u8; 8] = b"KILNRHD1";
/// The associated data's prefix.
const AAD: &[u8] = b"kiln/remote-head/v1";
/// The mark of a database that synced with a remote (see `Database::mark_replicated`).
pub(super) const REPLICATED: &str = "REPLICATED";
/// Names listed in the clear at most (diff files and file-sets together): 2 M names, 64 MiB.
const MAX_NAMES: usize = 1 << 21;

/// A database's state as a remote holds it: the record to write there, and what it names.
#[derive(Clone, Debug)]
pub struct ReplicaRecord {
    /// The remote head record (docs/format.md "Remote head record").
    pub bytes: Vec<u8>,
    /// The state it seals.
    pub state: Replica,
}

/// A replica's state, opened from its remote head record with this database's key.
#[derive(Clone, Debug, PartialEq)]
pub struct Replica {
    head: Head,
    filesets: Vec<FileName>,
}

impl Replica {
    /// Its clock heads, sorted.
    pub fn heads(&self) -> &[Cid] {
        &self.head.heads
    }

    /// The live diff files it names, with their sizes.
    pub fn files(&self) -> Vec<(FileName, u64)> {
        self.head.files.iter().map(|f| (f.name, f.size)).collect()
    }

    /// The file-sets its document versions name (sorted).
    pub fn filesets(&self) -> &[FileName] {
        &self.filesets
    }

    /// The database's metadata in this state (compact JSON text, empty for none).
    pub fn meta(&self) -> &str {
        &self.head.meta
    }

    /// A digest of what a sync compares: the clock heads, the live files (as a set), the
    /// purged versions, the cut events and the database's metadata. Two states of one database with equal digests need no sync.
    pub fn digest(&self) -> [u8; 32] {
        state_digest(&self.head)
    }
}

/// How this database's state relates to a replica's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Relation {
    /// The same events (the files may differ).
    Same,
    /// The replica has every event this one has, and more: adopting it is a fast-forward.
    Behind,
    /// This database has every event the replica has, and more.
    Ahead,
    /// Each has events the other lacks.
    Diverged,
}

/// What taking a replica's state in did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TakenIn {
    /// Whether this database's head record changed.
    pub changed: bool,
    /// The merge, when the two had diverged (its report lists the conflicts as `merge_from`'s).
    pub merge: Option<MergeReport>,
}

fn state_digest(h: &Head) -> [u8; 32] {
    let mut d = ring::digest::Context::new(&ring::digest::SHA256);
    d.update(b"kiln/replica-state/v1");
    d.update(&(h.heads.len() as u64).to_be_bytes());
    for c in &h.heads {
        d.update(c.as_bytes());
    }
    let mut names: Vec<FileName> = h.files.iter().map(|f| f.name).collect();
    names.sort_unstable();
    d.update(&(names.len() as u64).to_be_bytes());
    for n in &names {
        d.update(&n.0);
    }
    d.update(&(h.purged.len() as u64).to_be_bytes());
    for c in &h.purged {
        d.update(c.as_bytes());
    }
    d.update(&(h.cut.len() as u64).to_be_bytes());
    for (c, _) in &h.cut {
        d.update(c.as_bytes());
    }
    d.update(&(h.meta.len() as u64).to_be_bytes());
    d.update(h.meta.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.finish().as_ref());
    out
}

fn aad(lineage: &Lineage, id: &str, names: &[u8]) -> Vec<u8> {
    let mut a = Vec::with_capacity(AAD.len() + 18 + id.len() + names.len());
    a.extend_from_slice(AAD);
    a.extend_from_slice(lineage);
    a.extend_from_slice(&(id.len() as u16).to_be_bytes());
    a.extend_from_slice(id.as_bytes());
    a.extend_from_slice(names);
    a
}

/// The clear part of a record: the counts, then the names.
fn names_section(files: &[FileName], sets: &[FileName]) -> Vec<u8> {
    let mut b = Vec::with_capacity(8 + 32 * (files.len() + sets.len()));
    b.extend_from_slice(&(files.len() as u32).to_be_bytes());
    b.extend_from_slice(&(sets.len() as u32).to_be_bytes());
    for n in files.iter().chain(sets) {
        b.extend_from_slice(&n.0);
    }
    b
}

/// What a remote head record says in the clear (for a remote's garbage collection, which holds
/// no key): the diff files and file-sets it names. `None` when it is not such a record.
pub fn record_names(record: &[u8]) -> Option<(Vec<FileName>, Vec<FileName>)> {
    let (files, sets, _) = split_record(record).ok()?;
    Some((files, sets))
}

type Split<'a> = (Vec<FileName>, Vec<FileName>, usize);

fn split_record(record: &[u8]) -> std::result::Result<Split<'_>, &'static str> {
    if record.len() < 32 || &record[..8] != MAGIC {
        return Err("not a kiln remote head record");
    }
    let n =
        |at: usize| u32::from_be_bytes(record[at..at + 4].try_into().unwrap_or([0; 4])) as usize;
    let (nf, ns) = (n(24), n(28));
    if nf + ns > MAX_NAMES || record.len() < 32 + 32 * (nf + ns) {
        return Err("its list of names is cut short or too long");
    }
    let name = |i: usize| {
        let mut b = [0u8; 32];
        b.copy_from_slice(&record[32 + 32 * i..64 + 32 * i]);
        FileName(b)
    };
    let files = (0..nf).map(name).collect();
    let sets = (nf..nf + ns).map(name).collect();
    Ok((files, sets, 32 + 32 * (nf + ns)))
}

/// The sealed head record snapshot inside a remote head record of database id `id`, if it
/// opens under `key` (for audits: `kiln::audit`). The record may follow a folder remote's
/// 8-byte version.
pub(crate) fn record_snapshot(b: &[u8], key: &Key, id: &str) -> Option<Vec<u8>> {
    let record = if b.starts_with(MAGIC) {
        b
    } else if b.get(8..16) == Some(&MAGIC[..]) {
        &b[8..]
    } else {
        return None;
    };
    let (_, _, at) = split_record(record).ok()?;
    let lineage: Lineage = record[8..24].try_into().ok()?;
    key.open(&aad(&lineage, id, &record[24..at]), &record[at..])
        .ok()
}

impl Database {
    /// This database's current state as a remote holds it under id `id` (see
    /// [`ReplicaRecord`]). Files the head record carries in itself (small diffs a power cut
    /// could have cut short elsewhere) are written out whole first: a remote gets whole files.
    pub fn replica_record(&self, id: &str) -> Result<ReplicaRecord> {
        self.mark_replicated()?;
        let st = self.inner.refresh()?;
        for f in st.log.files.iter() {
            self.inner.ensure_whole(f)?;
        }
        let head = &st.head;
        let filesets = self.filesets_of(head)?;
        let files: Vec<FileName> = head.files.iter().map(|f| f.name).collect();
        let names = names_section(&files, &filesets);
        let snapshot = head
            .seal(&self.inner.lineage, &self.inner.key)
            .map_err(|e| Error::io("the random source", e))?;
        let sealed = self
            .inner
            .key
            .seal(&aad(&self.inner.lineage, id, &names), &snapshot)
            .map_err(|e| Error::io("the random source", e))?;
        let mut bytes = Vec::with_capacity(24 + names.len() + sealed.len());
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&self.inner.lineage);
        bytes.extend_from_slice(&names);
        bytes.extend_from_slice(&sealed);
        Ok(ReplicaRecord {
            bytes,
            state: Replica {
                head: head.clone(),
                filesets,
            },
        })
    }

    /// A digest of this database's current state (see [`Replica::digest`]).
    pub fn state_digest(&self) -> Result<[u8; 32]> {
        Ok(state_digest(&self.inner.refresh()?.head))
    }

    /// The file-sets the versions in `head`'s files name, sorted, each once.
    pub(super) fn filesets_of(&self, head: &Head) -> Result<Vec<FileName>> {
        let mut out = Vec::new();
        for f in head.files.iter() {
            out.extend(self.inner.index(f)?.refs.0.iter().map(|(_, s)| *s));
        }
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    /// Marks this database as synced with a remote (`dbs/<name>/REPLICATED`): its history can
    /// no longer be cut (its replicas would disagree on what history exists).
    fn mark_replicated(&self) -> Result<()> {
        let p = self.inner.dir.join(REPLICATED);
        if !p.exists() {
            std::fs::write(&p, b"").map_err(|e| Error::io(&p, e))?;
        }
        Ok(())
    }

    /// Opens a remote head record of this database, held under id `id`: it must be of this
    /// database's lineage and open under its key with `id` (a fork's record moved to its
    /// source's id does not), and its list of names must be what the sealed state names.
    pub fn open_replica(&self, id: &str, record: &[u8]) -> Result<Replica> {
        let bad = |why: &str| Error::corrupt(format!("the remote head record of '{id}'"), why);
        let (files, filesets, at) = split_record(record).map_err(bad)?;
        if record[8..24] != self.inner.lineage {
            return Err(bad("it is of another lineage than this database"));
        }
        let snapshot = self
            .inner
            .key
            .open(
                &aad(&self.inner.lineage, id, &record[24..at]),
                &record[at..],
            )
            .map_err(|_| {
                bad("it does not open as this database's (tampered with, or another database's)")
            })?;
        let head = Head::open(&snapshot, &self.inner.key).map_err(|e| bad(&e.to_string()))?;
        if !head.files.iter().map(|f| f.name).eq(files.iter().copied()) {
            return Err(bad("its list of files is not the files its state names"));
        }
        Ok(Replica { head, filesets })
    }

    /// The files `r` names that this database's current head does not: to bring in (see
    /// [`Store::keep_fetched_file`](crate::Store::keep_fetched_file): a copy this store holds
    /// under the name may be a retired file, and is checked and kept anew, or fetched)
    /// before relating to or taking in `r`.
    pub fn replica_files_to_bring(&self, r: &Replica) -> Result<Vec<FileName>> {
        let st = self.inner.refresh()?;
        let live: HashSet<FileName> = st.head.files.iter().map(|f| f.name).collect();
        Ok(r.head
            .files
            .iter()
            .filter(|f| !live.contains(&f.name))
            .map(|f| f.name)
            .collect())
    }

    /// The files `r` names that this store does not hold as they are there (missing, or of
    /// another length).
    /// The first file `r` names that this store lacks (or holds at another size); an error
    /// other than "not found" while looking (out of descriptors, say) is that error, never
    /// "missing".
    fn replica_file_missing(&self, r: &Replica) -> Result<Option<FileName>> {
        let storage = &self.inner.store.storage;
        for f in r.head.files.iter() {
            match storage.len(&f.name) {
                Ok(len) if len == f.size => {}
                Ok(_) => return Ok(Some(f.name)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Some(f.name)),
                Err(e) => return Err(Error::io(format!("file {}", f.name), e)),
            }
        }
        Ok(None)
    }

    /// How this database's state relates to `r` (every file `r` names must be stored here).
    pub fn relation(&self, r: &Replica) -> Result<Relation> {
        let st = self.inner.refresh()?;
        relate(&self.inner, &st.head, &r.head)
    }

    /// Whether this database's clock holds every event of `heads`.
    pub fn has_events(&self, heads: &[Cid]) -> Result<bool> {
        let st = self.inner.refresh()?;
        let v = View::new(&self.inner, &st.head);
        for h in heads {
            match v.locate(h, None) {
                Ok(_) => {}
                Err(Error::MissingBlock(..)) => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Whether every one of `heads` (a state of the remote seen before) is in `r`'s clock: a
    /// remote that shows an older state (rolled back, or withholding an update) fails it.
    pub fn replica_descends_from(&self, r: &Replica, heads: &[Cid]) -> Result<bool> {
        let sv = View::new(&self.inner, &r.head);
        let top = r
            .head
            .cut
            .iter()
            .map(|(c, _)| sv.event(c).map(|e| e.height))
            .collect::<Result<Vec<u64>>>()?
            .into_iter()
            .max();
        for h in heads {
            match sv.locate(h, None) {
                Ok(_) => {}
                Err(Error::MissingBlock(..)) => {
                    // Dropped with history older than a cut of the replica's (known here to
                    // be lower than the cut), or not there at all.
                    let dv = self.inner.refresh()?;
                    let ours = View::new(&self.inner, &dv.head);
                    let below_cut = match (ours.event(h), top) {
                        (Ok(e), Some(t)) => e.height < t,
                        _ => false,
                    };
                    if !below_cut {
                        return Ok(false);
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Finishes a purge that is committed but not finished (one a replica's state brought,
    /// or this database's own): through garbage collection of the store, so not while
    /// [`Store::hold_files`](crate::Store::hold_files) is held. Fails with
    /// [`Error::PurgeUnfinished`] when it cannot finish now (a sync must not upload purged
    /// versions).
    pub fn finish_pending_purge(&self) -> Result<()> {
        if !self.scrubbing()? {
            return Ok(());
        }
        self.finish_purge()?;
        if self.scrubbing()? {
            return Err(Error::PurgeUnfinished(
                self.inner.name.clone(),
                "another process holds the store's files (a sync?); try again".into(),
            ));
        }
        Ok(())
    }

    /// Takes `r` in: adopted when this database is behind it or at the same events, merged
    /// when they diverged, nothing when this one is ahead (see the module doc). Every file `r`
    /// names must be stored here, and stay so until this returns (hold the store's files, see
    /// [`Store::hold_files`](crate::Store::hold_files)): those this database's head named
    /// when the caller looked ([`Database::replica_files_to_bring`]), and `brought`, the others,
    /// which the caller kept. When one of the first kind is no longer live (another process
    /// compacted meanwhile, and may reuse it), nothing is taken in: [`Error::Changed`], and
    /// the caller brings the files again. A purge it brings is finished by
    /// [`Database::finish_pending_purge`], once the hold is dropped.
    ///
    /// Cut history (`drop_history_before`) does not travel between replicas that have both
    /// written: a state whose cuts differ from this database's is refused, unless this one is
    /// empty (a new replica takes it whole).
    ///
    /// The database's metadata is merged three ways against `base_meta`, the metadata of the
    /// state the two last shared (when known): a side that changed it wins over one that did
    /// not; when both did, the replica's; without a base, an adoption takes the replica's and
    /// a merge keeps this one's.
    pub fn take_in(
        &self,
        r: &Replica,
        brought: &[FileName],
        base_meta: Option<&str>,
    ) -> Result<TakenIn> {
        self.mark_replicated()?;
        for f in r.head.files.iter() {
            // A spare of this process (retired, kept for reuse under its name) is live again.
            self.inner.store.storage.unspare(&f.name);
        }
        let name = self.inner.name.clone();
        let out = self.inner.with_lock(|db, head| {
            let live: HashSet<FileName> = head.files.iter().map(|f| f.name).collect();
            if r.head
                .files
                .iter()
                .any(|f| !live.contains(&f.name) && !brought.contains(&f.name))
            {
                return Err(Error::Changed(name.clone()));
            }
            if let Some(n) = self.replica_file_missing(r)? {
                return Err(Error::MissingFile(n, name.clone()));
            }
            if head.cut != r.head.cut && !head.heads.is_empty() {
                return Err(Error::InvalidArgument(format!(
                    "the history of '{name}' was cut (drop_history_before) on one replica and \
                     not on the other: they cannot be synced; start this replica anew from the \
                     remote (kiln key import into a new store, then kiln sync)"
                )));
            }
            let rel = relate(db, head, &r.head)?;
            let cur = head.clone();
            let out = match rel {
                Relation::Ahead => return Ok((TakenIn::default(), Vec::new())),
                Relation::Same | Relation::Behind => {
                    if state_digest(head) == state_digest(&r.head) && head.cut == r.head.cut {
                        return Ok((TakenIn::default(), Vec::new()));
                    }
                    let keep: HashSet<FileName> = r.head.files.iter().map(|f| f.name).collect();
                    let retired: Vec<FileName> = head
                        .files
                        .iter()
                        .map(|f| f.name)
                        .filter(|n| !keep.contains(n))
                        .collect();
                    *head = Head {
                        seq: cur.seq,
                        meta: merge_meta(base_meta, &cur.meta, &r.head.meta, true),
                        ..r.head.clone()
                    };
                    // A purge unfinished here stays so (its versions may be in files this one
                    // retires); one the replica brings is finished here too.
                    head.scrub |= cur.scrub
                        || head
                            .purged
                            .iter()
                            .any(|c| cur.purged.binary_search(c).is_err());
                    (
                        TakenIn {
                            changed: true,
                            merge: None,
                        },
                        retired,
                    )
                }
                Relation::Diverged => {
                    db.ensure_tree(&r.head)?;
                    let (report, _) = db.merge_as_is(head, &r.head)?;
                    head.meta = merge_meta(base_meta, &cur.meta, &r.head.meta, false);
                    (
                        TakenIn {
                            changed: true,
                            merge: Some(report),
                        },
                        Vec::new(),
                    )
                }
            };
            db.note_purged_sets(&cur, head);
            Ok(out)
        })?;
        Ok(out)
    }
}

impl Db {
    /// The file-sets of the versions `new` purges that `cur` did not (a replica's purge taken
    /// in): garbage collection removes them at once when nothing else names them, as after a
    /// purge here.
    fn note_purged_sets(&self, cur: &Head, new: &Head) {
        let added: Vec<Cid> = new
            .purged
            .iter()
            .filter(|c| cur.purged.binary_search(c).is_err())
            .copied()
            .collect();
        if added.is_empty() {
            return;
        }
        let v = View::new(self, cur);
        let mut sets = Vec::new();
        for l in &added {
            if let Ok(s) = v.with_checked_block(l, None, |b| Ok(doc::files::sets_of_body(b))) {
                sets.extend(s);
            }
        }
        self.store
            .purged_sets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(sets.into_iter().map(FileName));
    }
}

/// The metadata of a state taken in (see [`Database::take_in`]): `adopt` says which side wins
/// without a base.
fn merge_meta(base: Option<&str>, ours: &str, theirs: &str, adopt: bool) -> String {
    match base {
        _ if ours == theirs => ours,
        Some(b) if ours == b => theirs,
        Some(b) if theirs == b => ours,
        Some(_) => theirs,
        None if adopt => theirs,
        None => ours,
    }
    .to_owned()
}

/// How `cur` relates to `theirs` (whose files are all stored here). A walk from `theirs`'
/// heads stops at the events `cur` has; `cur` is behind when each of its heads is one of those
/// (a head of `cur` that `theirs` has, it has below its own heads: the first event of `cur` on
/// any path down to it is the head itself).
fn relate(db: &Db, cur: &Head, theirs: &Head) -> Result<Relation> {
    if cur.heads == theirs.heads {
        return Ok(Relation::Same);
    }
    if cur.heads.is_empty() {
        // Empty: behind any state (whose history may be cut: nothing here to find).
        return Ok(Relation::Behind);
    }
    let dv = View::new(db, cur);
    let sv = View::new(db, theirs);
    let mut stops: DigestSet<Cid> = DigestSet::default();
    let mut seen: DigestSet<Cid> = DigestSet::default();
    let mut theirs_only = 0usize;
    let mut stack: Vec<Cid> = theirs.heads.clone();
    while let Some(c) = stack.pop() {
        if !seen.insert(c) {
            continue;
        }
        match dv.locate(&c, None) {
            Ok(_) => {
                stops.insert(c);
                continue;
            }
            Err(Error::MissingBlock(..)) => {}
            Err(e) => return Err(e),
        }
        if theirs.cut_root(&c).is_some() {
            return Err(Error::InvalidArgument(format!(
                "the replica of '{}' dropped its history before event {c}, which this replica \
                 lacks; take its state in whole on a new database",
                db.name
            )));
        }
        stack.extend_from_slice(&sv.event(&c)?.parents);
        theirs_only += 1;
    }
    Ok(if theirs_only == 0 {
        Relation::Ahead
    } else if cur.heads.iter().all(|h| stops.contains(h)) {
        Relation::Behind
    } else {
        Relation::Diverged
    })
}

impl Db {
    /// The merge of a diverged replica's state `shead` into `head`, its files taken as they
    /// are (see the module doc).
    pub(super) fn merge_as_is(
        &self,
        head: &mut Head,
        shead: &Head,
    ) -> Result<(MergeReport, Vec<FileName>)> {
        self.merge(head, self, shead, "", false, true)
    }

    /// The rest of an as-is merge, after its own file went into `head`: the replica's files
    /// `taken` (those holding its new events and their versions) become live files here, and
    /// its purges apply here: the versions its state's purged list holds (not its purge
    /// events' lists: a version purged and written again there left the list), but for
    /// versions this side's own new events wrote (stored again here, as a write of a purged
    /// version is). When a file taken in may hold a version purged here, the purge is finished
    /// again (the files are rewritten without it).
    pub(super) fn take_files_as_is(
        &self,
        head: &mut Head,
        taken: Vec<FileRef>,
        ours_only: &[(Cid, Arc<Event>)],
        shead: &Head,
    ) -> Result<()> {
        let written_here: DigestSet<Cid> = ours_only
            .iter()
            .flat_map(|(_, e)| e.ops.iter().filter_map(|(_, l)| *l))
            .collect();
        let mut purged: Vec<Cid> = shead
            .purged
            .iter()
            .copied()
            .filter(|c| !written_here.contains(c))
            .collect();
        if !purged.is_empty() {
            purged.extend_from_slice(&head.purged);
            purged.sort();
            purged.dedup();
            head.purged = purged;
        }
        let have: HashSet<FileName> = head.files.iter().map(|f| f.name).collect();
        let taken: Vec<FileRef> = taken
            .into_iter()
            .filter(|f| !have.contains(&f.name))
            .collect();
        let mut holds_purged = false;
        if !head.purged.is_empty() {
            let v = View::new(self, head);
            for f in &taken {
                for c in &head.purged {
                    holds_purged |= v.probe(f, c)?.is_some();
                }
            }
        }
        head.scrub |= holds_purged;
        let files = head.files_mut();
        files.splice(1..1, taken);
        Ok(())
    }
}
