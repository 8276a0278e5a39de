//! Transactions: writes on the state read when they began, committed as a concurrent branch when
//! others committed meanwhile.

use super::*;

/// Writes that commit together, on the state read when the transaction began. Reads see the
/// transaction's own writes. If other commits landed meanwhile, it commits as a concurrent
/// branch (the state is then the deterministic merge of the heads, see [`Database::merge_from`]
/// for the rule) until the next commit joins them.
///
/// ```
/// # fn main() -> kiln::Result<()> {
/// # let dir = tempfile::tempdir().unwrap();
/// # let store = kiln::Store::open(dir.path())?;
/// let db = store.create(Some("accounts"))?;
/// db.put(&serde_json::json!({"_id": "a", "balance": 10}))?;
/// let mut tx = db.transaction()?;
/// let a = tx.get("a")?.unwrap();
/// tx.put(&serde_json::json!({"_id": "a", "balance": a["balance"].as_i64().unwrap() - 3}))?;
/// tx.put(&serde_json::json!({"_id": "b", "balance": 3}))?;
/// assert_eq!(tx.get("b")?.unwrap()["balance"], 3);      // its own writes
/// assert_eq!(db.get("b")?, None);                        // not yet committed
/// tx.commit()?;
/// assert_eq!(db.get("a")?.unwrap()["balance"], 7);
/// # Ok(()) }
/// ```
pub struct Transaction {
    db: Database,
    base: Arc<State>,
    writes: Vec<Write>,
    /// The event commits to its own state's root (false: a base no tree stands for, see
    /// [`Database::transaction_on`]).
    own_root: bool,
}

impl std::fmt::Debug for Transaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transaction")
            .field("db", &self.db.name())
            .field("writes", &self.writes.len())
            .finish()
    }
}

impl Transaction {
    /// Reads a document: this transaction's own write, else the state it began on.
    pub fn get(&self, id: &str) -> Result<Option<Value>> {
        doc::check_id(id)?;
        if let Some((_, w)) = self.writes.iter().rev().find(|(i, _)| i == id) {
            return Ok(match w {
                Some((_, body)) => {
                    Some(doc::decode(id, body).map_err(|e| Error::corrupt("transaction", e))?)
                }
                None => None,
            });
        }
        let v = View::new(&self.db.inner, &self.base.head);
        let root = self.base.head.root.as_ref();
        match v.doc(id, root) {
            // Nodes only in memory, dropped meanwhile: a compaction wrote them into a file
            // this snapshot's head does not name (look in the current files too), or they
            // belonged to no tree still in use (rebuild the snapshot's).
            Err(Error::MissingBlock(..)) => {
                let db = &self.db.inner;
                let cur = db.refresh()?;
                let mut both = self.base.head.clone();
                let known = |f: &FileRef| self.base.head.files.iter().any(|g| g.name == f.name);
                let more: Vec<FileRef> = cur
                    .head
                    .files
                    .iter()
                    .filter(|f| !known(f))
                    .cloned()
                    .collect();
                both.files_mut().extend(more);
                match View::new(db, &both).doc(id, root) {
                    Err(Error::MissingBlock(..)) => {
                        db.ensure_tree(&self.base.head)?;
                        v.doc(id, root)
                    }
                    r => r,
                }
            }
            r => r,
        }
    }

    /// [`Transaction::get`] as a `T` (see [`Database::get_as`]).
    pub fn get_as<T: serde::de::DeserializeOwned>(&self, id: &str) -> Result<Option<T>> {
        self.get(id)?
            .map(|d| super::typed::decode(self.db.name(), id, d))
            .transpose()
    }

    /// Writes a document in this transaction (as [`Database::put`]); returns its id.
    pub fn put<T: Serialize + ?Sized>(&mut self, doc: &T) -> Result<String> {
        let w = write_of(doc::prepare_serialize(doc)?);
        let id = w.0.clone();
        self.writes.push(w);
        Ok(id)
    }

    /// The database this transaction writes to.
    pub(crate) fn database(&self) -> &Database {
        &self.db
    }

    /// Deletes a document in this transaction (recorded whatever the id holds).
    pub fn del(&mut self, id: &str) -> Result<()> {
        doc::check_id(id)?;
        self.writes.push((id.to_owned(), None));
        Ok(())
    }

    /// [`Transaction::commit`] with a note recorded in the event (an importer's).
    pub(crate) fn commit_noted(self, note: &str) -> Result<Committed> {
        if self.writes.is_empty() {
            return Err(Error::InvalidArgument("nothing to commit".into()));
        }
        self.db.finish(self.db.inner.commit(CommitRequest {
            base: Some(&self.base.head),
            note,
            own_root: self.own_root,
            ..CommitRequest::of(Prepared::of(self.writes))
        })?)
    }

    /// Commits the writes as one event: on the latest state when nothing landed since the
    /// transaction began, else as a concurrent branch on the state it began on (the next commit
    /// joins the heads; see [`Database::conflicts`]).
    pub fn commit(self) -> Result<Committed> {
        if self.writes.is_empty() {
            return Err(Error::InvalidArgument("nothing to commit".into()));
        }
        self.db.finish(self.db.inner.commit(CommitRequest {
            base: Some(&self.base.head),
            ..CommitRequest::of(Prepared::of(self.writes))
        })?)
    }
}

impl Database {
    /// Starts a transaction that reads the current state and, when committed, names that
    /// state's heads as its parents. If other commits landed in between, the transaction
    /// becomes a concurrent branch: the clock then has several heads and the state is their
    /// deterministic merge (see [`crate::model::tree::Slot::rank`]) until the next commit joins them.
    ///
    /// The snapshot is not pinned: if compaction drops the files it was read from, the
    /// transaction's own reads can fail with [`Error::MissingFile`] (start a new transaction);
    /// its commit still succeeds.
    pub fn transaction(&self) -> Result<Transaction> {
        let st = self.inner.refresh()?;
        self.inner.ensure_tree(&st.head)?;
        Ok(Transaction {
            db: self.clone(),
            base: st,
            writes: Vec::new(),
            own_root: true,
        })
    }

    /// A transaction whose parents will be `parents` (events of this database), for an
    /// importer replaying another system's history: on the current state when they are the
    /// current heads, else a concurrent branch on the state of their one event (kiln's merge
    /// of heads then applies, as for any branch); on several parents that are not the current
    /// heads, an event without a root commitment. Its reads see the current state, not the
    /// parents'.
    pub(crate) fn transaction_on(&self, parents: &[Cid]) -> Result<Transaction> {
        let st = self.inner.refresh()?;
        self.inner.ensure_tree(&st.head)?;
        let mut want = parents.to_vec();
        want.sort();
        want.dedup();
        if want == st.head.heads {
            return self.transaction();
        }
        let (root, own_root) = match want.as_slice() {
            [] => (None, true),
            [one] => {
                let v = View::new(&self.inner, &st.head);
                (v.given_event(one)?.root, true)
            }
            // No tree stands for the state of several events that are not the heads: the event
            // makes no root commitment (as a branch whose base tree compaction dropped), and
            // reads at it replay the clock.
            _ => (st.head.root, false),
        };
        let mut head = st.head.clone();
        head.heads = want;
        head.root = root;
        Ok(Transaction {
            db: self.clone(),
            base: Arc::new(State {
                head,
                stamp: st.stamp,
                log: st.log.clone(),
            }),
            writes: Vec::new(),
            own_root,
        })
    }
}
