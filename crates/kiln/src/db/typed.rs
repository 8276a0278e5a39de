//! Typed documents: the reads that hand back a `T: DeserializeOwned` instead of a JSON
//! [`Value`], and the conversions of the results that carry documents ([`Change`],
//! [`Conflict`], [`DocDiff`]). A document that does not fit `T` is [`Error::Decode`], naming
//! the document; the stored bytes are not touched.

use super::*;
use serde::de::DeserializeOwned;

/// `doc` as a `T`, or [`Error::Decode`] naming `id` in database `db`.
pub(crate) fn decode<T: DeserializeOwned>(db: &str, id: &str, doc: Value) -> Result<T> {
    serde_json::from_value(doc).map_err(|e| Error::Decode {
        db: db.to_owned(),
        id: id.to_owned(),
        into: std::any::type_name::<T>(),
        why: e.to_string(),
    })
}

/// A listed document as a `T` (its id, for the error, read from its `_id`).
pub(crate) fn decode_doc<T: DeserializeOwned>(db: &str, doc: Value) -> Result<T> {
    T::deserialize(&doc).map_err(|e| Error::Decode {
        db: db.to_owned(),
        id: doc
            .get("_id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        into: std::any::type_name::<T>(),
        why: e.to_string(),
    })
}

fn decode_opt<T: DeserializeOwned>(db: &str, id: &str, doc: Option<Value>) -> Result<Option<T>> {
    doc.map(|d| decode(db, id, d)).transpose()
}

impl Database {
    /// Reads one document as a `T` (any type serde can deserialize from the document's JSON,
    /// `_id` included). `Ok(None)` when it does not exist; [`Error::Decode`] when it does not
    /// fit `T`.
    ///
    /// ```
    /// # fn main() -> kiln::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let store = kiln::Store::open(dir.path())?;
    /// # let db = store.create(Some("chat"))?;
    /// #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    /// struct Message {
    ///     #[serde(rename = "_id")]
    ///     id: String,
    ///     text: String,
    /// }
    /// db.put(&Message { id: "m1".into(), text: "hi".into() })?;
    /// let m: Option<Message> = db.get_as("m1")?;
    /// assert_eq!(m.unwrap().text, "hi");
    /// assert!(matches!(db.get_as::<u64>("m1"), Err(kiln::Error::Decode { .. })));
    /// # Ok(()) }
    /// ```
    pub fn get_as<T: DeserializeOwned>(&self, id: &str) -> Result<Option<T>> {
        decode_opt(self.name(), id, self.get(id)?)
    }

    /// [`Database::get_at`] as a `T` (see [`Database::get_as`]).
    pub fn get_at_as<T: DeserializeOwned>(&self, id: &str, event: &Cid) -> Result<Option<T>> {
        decode_opt(self.name(), id, self.get_at(id, event)?)
    }

    /// [`Database::docs`] as `T`s: the first document that does not fit `T` fails the call.
    pub fn docs_as<T: DeserializeOwned>(&self, opts: &ListOptions) -> Result<Vec<T>> {
        let mut out = Vec::new();
        let mut failed = None;
        self.scan(opts, &mut |d| match decode_doc(self.name(), d) {
            Ok(t) => {
                out.push(t);
                true
            }
            Err(e) => {
                failed = Some(e);
                false
            }
        })?;
        failed.map_or(Ok(out), Err)
    }

    /// [`Database::conflicts`] as `T`s.
    pub fn conflicts_as<T: DeserializeOwned>(&self, id: &str) -> Result<Vec<T>> {
        self.conflicts(id)?
            .into_iter()
            .map(|d| decode(self.name(), id, d))
            .collect()
    }
}

impl Change {
    /// This change with its document as a `T` (a deleted document's tombstone,
    /// `{"_id": …, "_deleted": true}`, must fit `T` too: see [`Change::deleted`]).
    pub fn decode<T: DeserializeOwned>(self, db: &Database) -> Result<Change<T>> {
        Ok(Change {
            doc: decode(db.name(), &self.id, self.doc)?,
            id: self.id,
            version: self.version,
            deleted: self.deleted,
        })
    }
}

impl Conflict {
    /// This conflict with its values as `T`s.
    pub fn decode<T: DeserializeOwned>(self, db: &Database) -> Result<Conflict<T>> {
        let Conflict {
            id,
            ancestor,
            ours,
            theirs,
            winner,
        } = self;
        let d = |v| decode_opt(db.name(), &id, v);
        Ok(Conflict {
            ancestor: d(ancestor)?,
            ours: d(ours)?,
            theirs: d(theirs)?,
            winner,
            id,
        })
    }
}

impl DocDiff {
    /// This difference with its values as `T`s.
    pub fn decode<T: DeserializeOwned>(self, db: &Database) -> Result<DocDiff<T>> {
        let DocDiff { id, before, after } = self;
        let d = |v| decode_opt(db.name(), &id, v);
        Ok(DocDiff {
            before: d(before)?,
            after: d(after)?,
            id,
        })
    }
}
