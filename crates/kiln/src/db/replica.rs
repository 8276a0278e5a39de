//! A database as replicas of it see one another through a remote: its head record sealed for
//! the remote (bound to the database's id there), the files it names, and taking a replica's
//! head in (its files adopted as they are, concurrent heads merged). The moving of files and
//! records is `kiln-sync`'s; this is what only the database can do.

use super::*;

/// The magic of a remote head record.
const REMOTE_MAGIC: &[u8; 8] = b"KILNRHD1";
const REMOTE_AAD: &[u8] = b"kiln/remote-head/v1";

/// What a replica offers a remote: its head record sealed for it, and the files that record
/// names (diff files) and its document versions name (file-sets).
#[derive(Clone, Debug)]
pub struct ReplicaState {
    /// The remote head record: `"KILNRHD1" ‖ lineage[16] ‖ sealed(head snapshot)`, sealed under
    /// the lineage key with the database's id on the remote in its associated data (a fork's
    /// record cannot pass for its source's).
    pub record: Vec<u8>,
    /// The clock heads it names.
    pub heads: Vec<Cid>,
    /// The live diff files it names.
    pub files: Vec<FileName>,
    /// The file-sets its document versions name.
    pub filesets: Vec<FileName>,
}

/// What taking a replica's head in did.
#[derive(Clone, Debug, PartialEq)]
pub struct Adopted {
    /// The merge (its event is `None` when nothing was new or it was a fast-forward).
    pub merge: MergeReport,
    /// Whether this database changed.
    pub changed: bool,
}

fn remote_aad(lineage: &Lineage, id: &str) -> Vec<u8> {
    let mut a = REMOTE_AAD.to_vec();
    a.extend_from_slice(lineage);
    a.extend_from_slice(id.as_bytes());
    a
}

impl Database {
    /// This database as a remote should hold it under id `id` (see [`ReplicaState`]).
    pub fn replica_state(&self, id: &str) -> Result<ReplicaState> {
        self.mark_replicated()?;
        let st = self.inner.refresh()?;
        let head = &st.head;
        // Files this handle carries in its head record only (a power cut lost them) go back
        // first: the remote gets whole files.
        for f in st.log.files.iter() {
            self.inner.ensure_whole(f)?;
        }
        let snapshot = head
            .seal(&self.inner.lineage, &self.inner.key)
            .map_err(|e| Error::io("the random source", e))?;
        let sealed = self
            .inner
            .key
            .seal(&remote_aad(&self.inner.lineage, id), &snapshot)
            .map_err(|e| Error::io("the random source", e))?;
        let mut record = Vec::with_capacity(24 + sealed.len());
        record.extend_from_slice(REMOTE_MAGIC);
        record.extend_from_slice(&self.inner.lineage);
        record.extend_from_slice(&sealed);
        Ok(ReplicaState {
            record,
            heads: head.heads.clone(),
            files: head.files.iter().map(|f| f.name).collect(),
            filesets: self.fileset_refs()?,
        })
    }

    /// A replicated lineage's files may come back (a replica's head names a file compaction
    /// retired here): like a forked lineage's, they are deleted only by garbage collection,
    /// never reused in place.
    fn mark_replicated(&self) -> Result<()> {
        let keybag = &self.inner.store.keybag;
        if !keybag.is_shared(&self.inner.lineage) {
            keybag.mark_shared(&self.inner.lineage, self.inner.sync())?;
        }
        Ok(())
    }

    /// Opens a remote head record of this database's id `id` (sealed by a replica).
    fn open_replica_record(&self, id: &str, record: &[u8]) -> Result<Head> {
        let bad = |why: &str| Error::corrupt(format!("the remote head record of '{id}'"), why);
        if record.len() < 24 || &record[..8] != REMOTE_MAGIC {
            return Err(bad("not a kiln remote head record"));
        }
        if record[8..24] != self.inner.lineage {
            return Err(bad("it is of another lineage than this database"));
        }
        let snapshot = self
            .inner
            .key
            .open(&remote_aad(&self.inner.lineage, id), &record[24..])
            .map_err(|_| {
                bad("it does not open as this database's (tampered with, or another database's)")
            })?;
        Head::open(&snapshot, &self.inner.key).map_err(|e| bad(&e.to_string()))
    }

    /// The clock heads and the live diff files a replica's head record names.
    pub fn replica_heads(&self, id: &str, record: &[u8]) -> Result<(Vec<Cid>, Vec<FileName>)> {
        let h = self.open_replica_record(id, record)?;
        Ok((h.heads, h.files.iter().map(|f| f.name).collect()))
    }

    /// The diff files a replica's head record names that this store lacks (to fetch before
    /// [`Database::adopt_replica`]).
    pub fn replica_files_needed(&self, id: &str, record: &[u8]) -> Result<Vec<FileName>> {
        let head = self.open_replica_record(id, record)?;
        let storage = &self.inner.store.storage;
        // A file of that name but another length is no copy of it (a file this store retired
        // and reuses keeps its name a while): fetched again.
        Ok(head
            .files
            .iter()
            .filter(|f| storage.len(&f.name).ok() != Some(f.size))
            .map(|f| f.name)
            .collect())
    }

    /// Takes a replica's head in (every file it names must be stored here: see
    /// [`Database::replica_files_needed`]): its files become live files of this database as
    /// they are; when the two have concurrent heads they are merged (a merge event, conflicts
    /// reported as `merge_from` reports them), when this one is behind it fast-forwards, when
    /// ahead or equal nothing changes.
    pub fn adopt_replica(&self, id: &str, record: &[u8]) -> Result<Adopted> {
        let theirs = self.open_replica_record(id, record)?;
        let missing = self.replica_files_needed(id, record)?;
        if let Some(n) = missing.first() {
            return Err(Error::MissingFile(*n, self.inner.name.clone()));
        }
        self.mark_replicated()?;
        // Files of its head this process retired and keeps for reuse are live again.
        for f in theirs.files.iter() {
            self.inner.store.storage.unspare(&f.name);
        }
        self.inner.ensure_tree(&theirs)?;
        let before = self.inner.refresh()?.head.heads.clone();
        let merge = self
            .inner
            .with_lock(|db, head| db.merge(head, &self.inner, &theirs, "", false, true))?;
        // Nothing new in its clock (a compaction there, say): its files still replace the ones
        // they merged here.
        let files_changed = self.inner.with_lock(|db, head| {
            let before: Vec<FileName> = head.files.iter().map(|f| f.name).collect();
            db.adopt_files(head, &theirs)?;
            let changed = head.files.iter().map(|f| f.name).ne(before.iter().copied());
            let replaced = before
                .into_iter()
                .filter(|n| !head.files.iter().any(|f| f.name == *n))
                .collect();
            Ok((changed, replaced))
        })?;
        let after = self.inner.refresh()?.head.heads.clone();
        Ok(Adopted {
            changed: before != after || files_changed,
            merge,
        })
    }
}
