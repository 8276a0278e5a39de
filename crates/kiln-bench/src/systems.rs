//! One adapter per system, mirroring the adapters of `lib/adapters.mjs`.

use crate::docs::{apply_update, Doc};
use kiln::{Database, Durability, ListOptions, Options, Store};
use rusqlite::{params, Connection, OptionalExtension};
use serde_json::Value;
use std::path::Path;

pub type BoxErr = Box<dyn std::error::Error + Send + Sync>;
pub type Res<T> = Result<T, BoxErr>;

pub const SYSTEMS: &[&str] = &["kiln", "kiln-sync", "sqlite", "sqlite-sync"];

/// Whether the system fsyncs per commit.
pub fn durability(system: &str) -> &'static str {
    if system.ends_with("-sync") {
        "full"
    } else {
        "buffered"
    }
}

/// The version reported in the result line: kiln's crate version, or SQLite's library version.
pub fn version(system: &str) -> String {
    if system.starts_with("sqlite") {
        rusqlite::version().to_owned()
    } else {
        env!("CARGO_PKG_VERSION").to_owned()
    }
}

pub trait Adapter {
    /// One document, its own transaction.
    fn put_one(&mut self, doc: &Doc) -> Res<()>;
    /// Many documents, one transaction.
    fn put_batch(&mut self, docs: &[Doc]) -> Res<()>;
    /// Reads one document; a missing document is an error (bench.mjs then throws too).
    fn get(&mut self, id: &str) -> Res<Value>;
    /// Read-modify-write of one existing document.
    fn update(&mut self, id: &str) -> Res<()>;
    /// Reads all documents with their bodies; returns how many.
    fn all_docs(&mut self) -> Res<u64>;
    /// One document with one attached file, its own transaction.
    fn put_with_attachment(&mut self, doc: &Doc, name: &str, bytes: &[u8]) -> Res<()>;
    /// An attached file's bytes.
    fn get_attachment(&mut self, id: &str, name: &str) -> Res<Vec<u8>>;
    /// Declares an index on field `n` (where the system builds it lazily, the first query
    /// builds it).
    fn query_prepare(&mut self) -> Res<()>;
    /// Documents with `lo ≤ n ≤ hi`, read with their bodies; returns how many.
    fn query(&mut self, lo: u64, hi: u64) -> Res<u64>;
    fn close(self: Box<Self>) -> Res<()>;
}

/// Opens (creating where absent) the system's store under `dir`.
pub fn open(system: &str, dir: &Path) -> Res<Box<dyn Adapter>> {
    match system {
        "kiln" => Ok(Box::new(KilnAdapter::open(dir, Durability::Buffered)?)),
        "kiln-sync" => Ok(Box::new(KilnAdapter::open(dir, Durability::Full)?)),
        "sqlite" => Ok(Box::new(SqliteAdapter::open(dir, "NORMAL")?)),
        "sqlite-sync" => Ok(Box::new(SqliteAdapter::open(dir, "FULL")?)),
        other => Err(format!("unknown system {other}").into()),
    }
}

// ---------------------------------------------------------------- kiln

/// kiln store at `<dir>/kiln`, database `bench`.
pub struct KilnAdapter {
    db: Database,
    _store: Store,
}

const DB_NAME: &str = "bench";

impl KilnAdapter {
    fn open(dir: &Path, durability: Durability) -> Res<Self> {
        // Experiment knobs (kiln-bench's usage text): unset means kiln's defaults.
        let env_num = |k: &str| std::env::var(k).ok().and_then(|v| v.parse().ok());
        let defaults = Options::default();
        let store = Store::open_with(
            dir.join("kiln"),
            Options {
                durability,
                background_compaction: if std::env::var_os("KILN_INLINE").is_some() {
                    false
                } else {
                    defaults.background_compaction
                },
                reserve_files: env_num("KILN_RESERVE").unwrap_or(defaults.reserve_files),
                compact_threshold: env_num("KILN_TH").unwrap_or(defaults.compact_threshold),
                ..defaults
            },
        )?;
        let db = if store.exists(DB_NAME) {
            store.open_db(DB_NAME)?
        } else {
            store.create(Some(DB_NAME))?
        };
        Ok(KilnAdapter { db, _store: store })
    }
}

/// Whether kiln gets documents as JSON text (`KILN_JSON_TEXT`) rather than as values.
fn json_text() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("KILN_JSON_TEXT").is_some())
}

impl Adapter for KilnAdapter {
    // Documents go in as the program's own values (serde), as the JS harness hands Fireproof
    // and PouchDB its objects; the SQLite adapter turns them into JSON text, as the harness's
    // does (`JSON.stringify`). With KILN_JSON_TEXT set, kiln gets that JSON text too.
    fn put_one(&mut self, doc: &Doc) -> Res<()> {
        if json_text() {
            self.db.put_json(&doc.to_json_string())?;
        } else {
            self.db.put(doc)?;
        }
        Ok(())
    }

    fn put_batch(&mut self, docs: &[Doc]) -> Res<()> {
        if json_text() {
            let v: Vec<String> = docs.iter().map(Doc::to_json_string).collect();
            self.db.bulk_json(&v)?;
        } else {
            self.db.bulk(docs)?;
        }
        Ok(())
    }

    fn get(&mut self, id: &str) -> Res<Value> {
        self.db
            .get(id)?
            .ok_or_else(|| format!("not found {id}").into())
    }

    fn put_with_attachment(&mut self, doc: &Doc, name: &str, bytes: &[u8]) -> Res<()> {
        let file = kiln::Attachment::bytes(name, bytes).content_type("application/octet-stream");
        self.db.put_with_files(doc, vec![file])?;
        Ok(())
    }

    fn get_attachment(&mut self, id: &str, name: &str) -> Res<Vec<u8>> {
        use std::io::Read;
        let mut r = self.db.open_file(id, name)?;
        let mut out = Vec::with_capacity(r.len() as usize);
        r.read_to_end(&mut out)?;
        Ok(out)
    }

    fn update(&mut self, id: &str) -> Res<()> {
        let mut d = self.db.get(id)?.ok_or_else(|| format!("not found {id}"))?;
        apply_update(&mut d)?;
        self.db.put(&d)?;
        Ok(())
    }

    fn all_docs(&mut self) -> Res<u64> {
        let mut c = 0u64;
        self.db.scan(&ListOptions::default(), &mut |_d| {
            c += 1;
            true
        })?;
        Ok(c)
    }

    fn query_prepare(&mut self) -> Res<()> {
        self.db
            .create_index("n", kiln::index::IndexDef::fields(["n"]))?;
        Ok(())
    }

    fn query(&mut self, lo: u64, hi: u64) -> Res<u64> {
        // Row by row, as the SQLite adapter reads its statement's rows.
        let q = kiln::index::Query::range(lo.into(), hi.into()).with_docs();
        let (mut rows, mut missing) = (0u64, false);
        self.db.query_each("n", &q, &mut |r| {
            rows += 1;
            missing |= r.doc.as_ref().is_none_or(Value::is_null);
            Ok(true)
        })?;
        if missing {
            return Err("a query row without its document".into());
        }
        Ok(rows)
    }

    fn close(self: Box<Self>) -> Res<()> {
        drop(self);
        Ok(())
    }
}

// ---------------------------------------------------------------- SQLite

/// `<dir>/bench.sqlite`, WAL, `synchronous` as given; tables as in adapters.mjs.
pub struct SqliteAdapter {
    conn: Connection,
}

const SQL_PUT: &str = "INSERT OR REPLACE INTO docs (id, body) VALUES (?, ?)";
const SQL_GET: &str = "SELECT body FROM docs WHERE id = ?";
const SQL_QUERY: &str = "SELECT id, body FROM docs WHERE json_extract(body, '$.n') BETWEEN ? AND ?";

impl SqliteAdapter {
    fn open(dir: &Path, synchronous: &str) -> Res<Self> {
        std::fs::create_dir_all(dir)?;
        let conn = Connection::open(dir.join("bench.sqlite"))?;
        // better-sqlite3 builds SQLite with SQLITE_DEFAULT_CACHE_SIZE=-16000; match it.
        conn.execute_batch("PRAGMA cache_size = -16000")?;
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(format!("sqlite: journal_mode is {mode}, not wal").into());
        }
        conn.execute_batch(&format!("PRAGMA synchronous = {synchronous}"))?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS docs (id TEXT PRIMARY KEY, body TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS files (doc_id TEXT NOT NULL, name TEXT NOT NULL,
               type TEXT, data BLOB NOT NULL, PRIMARY KEY (doc_id, name));",
        )?;
        // Prepare the statements up front, as the JS adapter does.
        conn.prepare_cached(SQL_PUT)?;
        conn.prepare_cached(SQL_GET)?;
        let _: i64 = conn.query_row("SELECT count(*) FROM docs", [], |r| r.get(0))?; // touch the file
        Ok(SqliteAdapter { conn })
    }
}

impl Adapter for SqliteAdapter {
    fn put_one(&mut self, doc: &Doc) -> Res<()> {
        // autocommit = one transaction
        self.conn
            .prepare_cached(SQL_PUT)?
            .execute(params![doc.id, doc.to_json_string()])?;
        Ok(())
    }

    fn put_batch(&mut self, docs: &[Doc]) -> Res<()> {
        let tx = self.conn.transaction()?;
        {
            let mut st = tx.prepare_cached(SQL_PUT)?;
            for d in docs {
                st.execute(params![d.id, d.to_json_string()])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn put_with_attachment(&mut self, doc: &Doc, name: &str, bytes: &[u8]) -> Res<()> {
        // As the JS harness's SQLite adapter: the document (with its file's metadata) and a
        // BLOB row, in one transaction.
        let tx = self.conn.transaction()?;
        {
            let mut d = serde_json::to_value(doc)?;
            d["_files"] = serde_json::json!({ name: {"type": "application/octet-stream", "size": bytes.len()} });
            tx.prepare_cached(SQL_PUT)?
                .execute(params![doc.id, serde_json::to_string(&d)?])?;
            tx.prepare_cached(
                "INSERT OR REPLACE INTO files (doc_id, name, type, data) VALUES (?, ?, ?, ?)",
            )?
            .execute(params![doc.id, name, "application/octet-stream", bytes])?;
        }
        tx.commit()?;
        Ok(())
    }

    fn get_attachment(&mut self, id: &str, name: &str) -> Res<Vec<u8>> {
        let mut st = self
            .conn
            .prepare_cached("SELECT data FROM files WHERE doc_id = ? AND name = ?")?;
        Ok(st.query_row(params![id, name], |r| r.get(0))?)
    }

    fn get(&mut self, id: &str) -> Res<Value> {
        let mut st = self.conn.prepare_cached(SQL_GET)?;
        let body: Option<String> = st.query_row([id], |r| r.get(0)).optional()?;
        let body = body.ok_or_else(|| format!("not found {id}"))?;
        Ok(serde_json::from_str(&body)?)
    }

    fn update(&mut self, id: &str) -> Res<()> {
        let tx = self.conn.transaction()?;
        {
            let body: String = tx
                .prepare_cached(SQL_GET)?
                .query_row([id], |r| r.get(0))
                .optional()?
                .ok_or_else(|| format!("not found {id}"))?;
            let mut d: Value = serde_json::from_str(&body)?;
            apply_update(&mut d)?;
            tx.prepare_cached(SQL_PUT)?
                .execute(params![id, serde_json::to_string(&d)?])?;
        }
        tx.commit()?;
        Ok(())
    }

    fn query_prepare(&mut self) -> Res<()> {
        // As the JS harness: an expression index, then a prepared statement.
        self.conn.execute_batch(
            "CREATE INDEX IF NOT EXISTS docs_n ON docs (json_extract(body, '$.n'))",
        )?;
        self.conn.prepare_cached(SQL_QUERY)?;
        Ok(())
    }

    fn query(&mut self, lo: u64, hi: u64) -> Res<u64> {
        let mut st = self.conn.prepare_cached(SQL_QUERY)?;
        let mut rows = st.query(params![lo as i64, hi as i64])?;
        let mut c = 0u64;
        while let Some(r) = rows.next()? {
            let _v: Value = serde_json::from_str(r.get_ref(1)?.as_str()?)?;
            c += 1;
        }
        Ok(c)
    }

    fn all_docs(&mut self) -> Res<u64> {
        let mut st = self.conn.prepare("SELECT id, body FROM docs ORDER BY id")?;
        let mut rows = st.query([])?;
        let mut c = 0u64;
        while let Some(r) = rows.next()? {
            let body = r.get_ref(1)?.as_str()?;
            let _v: Value = serde_json::from_str(body)?;
            c += 1;
        }
        Ok(c)
    }

    fn close(self: Box<Self>) -> Res<()> {
        self.conn.close().map_err(|(_, e)| e)?;
        Ok(())
    }
}
