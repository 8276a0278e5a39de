//! Indexes and queries: `kiln index …` (create, list, drop, rebuild), `kiln query`, `kiln find`.

use super::Ctx;
use crate::input::{parse_key, parse_where};
use crate::out::{esc, Fail};
use clap::Subcommand;
use kiln::index::{IndexDef, Query, Select};
use serde_json::{json, Value};
use std::io::Write;

/// `kiln index …`, `kiln query` and `kiln find`.
#[derive(Subcommand)]
pub enum IndexGroup {
    /// Declare, list, drop and rebuild a database's indexes.
    #[command(subcommand)]
    Index(IndexCmd),
    /// Read rows of an index, in (key, id) order: one JSON object per line, {key, id, value}
    /// (and doc with --docs).
    ///
    /// Keys are read as JSON when they parse, else as strings: `--key 0` is the number zero,
    /// `--key '"0"'` the string "0". Key order: null < false < true < numbers (by value) <
    /// strings (by code point) < arrays (element by element, shorter first) < objects. The
    /// index is brought up to date first: each document written since it was last read is
    /// mapped once.
    Query {
        db: String,
        index: String,
        #[command(flatten)]
        q: QueryArgs,
        /// Answer from the state at this event (the index is built in memory from that
        /// state: every document it held is mapped; nothing is written).
        #[arg(long, value_name = "EVENT")]
        at: Option<String>,
    },
    /// Documents whose fields equal the values given, in id order (one per line).
    ///
    /// FIELD is a dotted path (a.b), VALUE read as for `kiln query --key`. Uses a declared
    /// index whose fields are among those given (reading only the matching rows); without one
    /// it reads every document (the cost grows with the database: declare an index with
    /// `kiln index create` for a query you run often).
    Find {
        db: String,
        /// FIELD=VALUE; several must all hold.
        #[arg(long = "where", value_name = "FIELD=VALUE", required = true, value_parser = parse_where)]
        conditions: Vec<(String, Value)>,
        /// At most N documents (0: none).
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
    },
}

/// Which rows of an index a query reads (`kiln query`, `kiln watch --query`).
#[derive(clap::Args)]
pub struct QueryArgs {
    /// Rows with exactly this key.
    #[arg(long, value_name = "K", conflicts_with_all = ["key_list", "range", "prefix"])]
    key: Option<String>,
    /// Rows with any of these keys.
    #[arg(long = "keys", id = "key_list", value_name = "K", num_args = 1.., conflicts_with_all = ["range", "prefix"])]
    keys: Vec<String>,
    /// Rows with LO ≤ key ≤ HI.
    #[arg(long, num_args = 2, value_names = ["LO", "HI"], conflicts_with = "prefix")]
    range: Vec<String>,
    /// With --range: leave HI itself out.
    #[arg(long, requires = "range")]
    exclusive_end: bool,
    /// Rows whose compound key (an array) begins with these elements, whatever follows.
    #[arg(long, value_name = "P", num_args = 1..)]
    prefix: Vec<String>,
    /// At most N rows (0: none).
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
    /// Pass over the first N rows.
    #[arg(long, value_name = "N", default_value_t = 0)]
    skip: usize,
    /// Descending order.
    #[arg(long)]
    desc: bool,
    /// Each row with its document.
    #[arg(long)]
    docs: bool,
}

impl QueryArgs {
    /// The query these flags ask for (keys read as JSON when they parse, else as strings).
    pub fn query(&self) -> Query {
        let select = if let Some(k) = &self.key {
            Select::Key(parse_key(k))
        } else if !self.keys.is_empty() {
            Select::Keys(self.keys.iter().map(|k| parse_key(k)).collect())
        } else if let [lo, hi] = &self.range[..] {
            Select::Range {
                start: Some(parse_key(lo)),
                end: Some(parse_key(hi)),
                exclusive_end: self.exclusive_end,
            }
        } else if !self.prefix.is_empty() {
            Select::Prefix(self.prefix.iter().map(|p| parse_key(p)).collect())
        } else {
            Select::All
        };
        Query {
            select,
            limit: self.limit,
            skip: self.skip,
            desc: self.desc,
            docs: self.docs,
        }
    }
}

#[derive(Subcommand)]
pub enum IndexCmd {
    /// Declare an index on one or more fields and build it.
    ///
    /// One field: each document that has it emits one row keyed by its value. Several: the key
    /// is the array of their values (a compound key), for documents that have all of them.
    /// With --each, a first field holding an array emits one row per distinct element. The
    /// index is kept with the database (every process sees it) and brought up to date by
    /// queries; declaring it again with other fields replaces it.
    Create {
        db: String,
        name: String,
        /// A dotted path (a.b: field b of field a; `\.` is a dot in a name); repeat for a
        /// compound key.
        #[arg(long = "field", value_name = "PATH", required = true)]
        fields: Vec<String>,
        /// A first field holding an array emits a row per element.
        #[arg(long)]
        each: bool,
    },
    /// List a database's indexes: name, definition, rows, whether up to date, size.
    List { db: String },
    /// Drop an index (its files go at the next `kiln gc`); exit code 4 if there is none.
    Drop { db: String, name: String },
    /// Build an index again from every document (all of the database's when NAME is omitted).
    Rebuild { db: String, name: Option<String> },
}

impl IndexGroup {
    pub fn run(self, ctx: &Ctx) -> Result<u8, Fail> {
        match self {
            IndexGroup::Index(c) => c.run(ctx),
            IndexGroup::Query { db, index, q, at } => query(ctx, db, index, q.query(), at),
            IndexGroup::Find {
                db,
                conditions,
                limit,
            } => find(ctx, db, conditions, limit),
        }
    }
}

impl IndexCmd {
    fn run(self, ctx: &Ctx) -> Result<u8, Fail> {
        match self {
            IndexCmd::Create {
                db,
                name,
                fields,
                each,
            } => {
                let db = ctx.open(&db)?;
                let mut def = IndexDef::fields(&fields);
                if each {
                    def = def.each();
                }
                let changed = db.create_index(&name, def)?;
                let up = db.update_index(&name)?;
                let rows = db
                    .indexes()?
                    .into_iter()
                    .find(|i| i.name == name)
                    .map_or(0, |i| i.rows);
                ctx.out.print(
                    || {
                        let what = if changed { "created" } else { "already there" };
                        format!(
                            "index {} {what}: {rows} rows ({} documents mapped)",
                            esc(&name),
                            up.mapped
                        )
                    },
                    || json!({"index": name, "created": changed, "rows": rows, "mapped": up.mapped}),
                );
                Ok(0)
            }
            IndexCmd::List { db } => {
                let db = ctx.open(&db)?;
                let list = db.indexes()?;
                ctx.out.print(
                    || {
                        list.iter()
                            .map(|i| {
                                format!(
                                    "{}  {}  {} rows  {}  {} bytes",
                                    esc(&i.name),
                                    describe(&i.def),
                                    i.rows,
                                    if i.current {
                                        "current"
                                    } else if i.built {
                                        "behind (brought up to date by the next query)"
                                    } else {
                                        "not built (built by the next query)"
                                    },
                                    i.bytes
                                )
                            })
                            .collect::<Vec<_>>()
                            .join("\n")
                    },
                    || json!(list),
                );
                Ok(0)
            }
            IndexCmd::Drop { db, name } => {
                let db = ctx.open(&db)?;
                if !db.drop_index(&name)? {
                    return Err(kiln::Error::NoSuchIndex(name, db.name().to_owned()).into());
                }
                ctx.out.print(
                    || format!("dropped index {}", esc(&name)),
                    || json!({"dropped": name}),
                );
                Ok(0)
            }
            IndexCmd::Rebuild { db, name } => {
                let db = ctx.open(&db)?;
                let names = match name {
                    Some(n) => vec![n],
                    None => db.indexes()?.into_iter().map(|i| i.name).collect(),
                };
                let mut done = Vec::new();
                for n in names {
                    let up = db.rebuild_index(&n)?;
                    done.push((n, up.mapped, up.added));
                }
                ctx.out.print(
                    || {
                        done.iter()
                            .map(|(n, m, r)| {
                                format!("rebuilt {}: {r} rows ({m} documents mapped)", esc(n))
                            })
                            .collect::<Vec<_>>()
                            .join("\n")
                    },
                    || {
                        json!(done
                            .iter()
                            .map(|(n, m, r)| json!({"index": n, "mapped": m, "rows": r}))
                            .collect::<Vec<_>>())
                    },
                );
                Ok(0)
            }
        }
    }
}

/// An index definition in a few words.
fn describe(def: &IndexDef) -> String {
    match def {
        IndexDef::Fields { fields, each } => format!(
            "fields: {}{}",
            fields.join(", "),
            if *each { " (each element)" } else { "" }
        ),
        IndexDef::Map { version } => format!("map function, version {version}"),
    }
}

fn query(ctx: &Ctx, db: String, index: String, q: Query, at: Option<String>) -> Result<u8, Fail> {
    let db = ctx.open(&db)?;
    if at.is_none() && !ctx.out.json {
        // A line per row as it is read: a large answer is never held whole (and a reader that
        // stops reading, `head`, stops the query).
        let mut o = std::io::BufWriter::new(std::io::stdout().lock());
        db.query_each(&index, &q, &mut |r| {
            Ok(writeln!(o, "{}", serde_json::to_string(&r).unwrap_or_default()).is_ok())
        })?;
        let _ = o.flush();
        return Ok(0);
    }
    let rows = match at {
        Some(e) => db.query_at(&index, &q, &crate::input::parse_event(&e)?)?,
        None => db.query(&index, &q)?,
    };
    if ctx.out.json {
        ctx.out.print(String::new, || json!(rows));
        return Ok(0);
    }
    let mut o = std::io::BufWriter::new(std::io::stdout().lock());
    for r in &rows {
        if writeln!(o, "{}", serde_json::to_string(r).unwrap_or_default()).is_err() {
            break;
        }
    }
    let _ = o.flush();
    Ok(0)
}

fn find(
    ctx: &Ctx,
    db: String,
    conditions: Vec<(String, Value)>,
    limit: Option<usize>,
) -> Result<u8, Fail> {
    let db = ctx.open(&db)?;
    let docs = db.find(&conditions, limit)?;
    if ctx.out.json {
        ctx.out.print(String::new, || Value::Array(docs));
        return Ok(0);
    }
    let mut o = std::io::BufWriter::new(std::io::stdout().lock());
    for d in &docs {
        if writeln!(o, "{d}").is_err() {
            break;
        }
    }
    let _ = o.flush();
    Ok(0)
}
