//! A database's own metadata: a small JSON object its users set (a title for a room named by
//! a UUID, tags), kept sealed in the head record, so it is read with the database's state (no
//! document is read), travels with it, and a fork starts with its source's.

use super::*;
use crate::format::head::MAX_META;
use serde_json::Map;

impl Database {
    /// The database's metadata (empty when none was set).
    ///
    /// ```
    /// # fn main() -> kiln::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let store = kiln::Store::open(dir.path())?;
    /// let room = store.create(None)?; // named by a fresh UUID
    /// let mut meta = serde_json::Map::new();
    /// meta.insert("title".into(), "Lunch plans".into());
    /// room.set_meta(&meta)?;
    /// assert_eq!(store.open_db(room.name())?.meta()?["title"], "Lunch plans");
    /// # Ok(()) }
    /// ```
    pub fn meta(&self) -> Result<Map<String, Value>> {
        let st = self.inner.refresh()?;
        parse(&self.inner.name, &st.head.meta)
    }

    /// Replaces the database's metadata (an empty map removes it). At most 16 KiB as compact
    /// JSON. Written as a new head record: no event, no file; a change the next commit keeps.
    pub fn set_meta(&self, meta: &Map<String, Value>) -> Result<()> {
        self.update_meta(|m| *m = meta.clone())
    }

    /// Changes the database's metadata with `f`: `f` runs on a copy, outside the writer lock,
    /// and the result is written only if nobody changed the metadata meanwhile (else `f` runs
    /// again on the newer one), so concurrent changes from other handles or processes are not
    /// lost and `f` may take its time (or even write to this database).
    pub fn update_meta(&self, mut f: impl FnMut(&mut Map<String, Value>)) -> Result<()> {
        loop {
            let seen = self.inner.refresh()?.head.meta.clone();
            let mut m = parse(&self.inner.name, &seen)?;
            f(&mut m);
            let text = if m.is_empty() {
                String::new()
            } else {
                serde_json::to_string(&m)?
            };
            if text.len() > MAX_META {
                return Err(Error::InvalidArgument(format!(
                    "database metadata of {} bytes as JSON; at most {MAX_META}",
                    text.len()
                )));
            }
            let written = self.inner.with_lock(|_, head| {
                if head.meta != seen {
                    return Ok((false, Vec::new()));
                }
                head.meta = text;
                Ok((true, Vec::new()))
            })?;
            if written {
                return Ok(());
            }
        }
    }
}

fn parse(db: &str, text: &str) -> Result<Map<String, Value>> {
    if text.is_empty() {
        return Ok(Map::new());
    }
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(Error::corrupt(
            format!("head record of database '{db}'"),
            "its metadata is not a JSON object",
        )),
    }
}
