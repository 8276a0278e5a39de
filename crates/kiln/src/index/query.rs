//! Queries of an index: which keys (all, one, several, a range, a compound prefix), how many
//! (skip, limit), which way, with or without the documents; each a byte range (or several)
//! of the tree's rows.

use super::key;
use super::update::{parse_row, ROW};
use crate::error::{Error, Result};
use crate::model::tree::{self, NodeSource};
use serde::Serialize;
use serde_json::Value;

/// Which rows of an index a query reads.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Select {
    /// Every row.
    #[default]
    All,
    /// Rows whose key is this one (`0` is the number zero, not every key).
    Key(Value),
    /// Rows whose key is one of these (each key once, rows in key order).
    Keys(Vec<Value>),
    /// Rows with `start ≤ key ≤ end` (`key < end` when `exclusive_end`); a missing bound
    /// is open.
    Range {
        /// Lowest key (`None`: from the first).
        start: Option<Value>,
        /// Highest key (`None`: to the last).
        end: Option<Value>,
        /// `end` itself is left out.
        exclusive_end: bool,
    },
    /// Rows whose key is an array beginning with these elements, whatever follows them.
    Prefix(Vec<Value>),
}

/// A query: rows in (key, id) order, reversed with `desc`; `skip` rows passed over, then at
/// most `limit` returned (`Some(0)`: none); with `docs`, each row's document too.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Query {
    /// Which rows.
    pub select: Select,
    /// At most this many (`Some(0)`: none; `None`: every one).
    pub limit: Option<usize>,
    /// Passed over first.
    pub skip: usize,
    /// Descending (key, id) order.
    pub desc: bool,
    /// Each row with its document.
    pub docs: bool,
}

impl Query {
    /// Every row.
    pub fn all() -> Query {
        Query::default()
    }
    /// Rows with this key.
    pub fn key(k: Value) -> Query {
        Query {
            select: Select::Key(k),
            ..Query::default()
        }
    }
    /// Rows with one of these keys.
    pub fn keys(k: Vec<Value>) -> Query {
        Query {
            select: Select::Keys(k),
            ..Query::default()
        }
    }
    /// Rows with `start ≤ key ≤ end`.
    pub fn range(start: Value, end: Value) -> Query {
        Query {
            select: Select::Range {
                start: Some(start),
                end: Some(end),
                exclusive_end: false,
            },
            ..Query::default()
        }
    }
    /// Rows whose (compound) key begins with these elements.
    pub fn prefix(p: Vec<Value>) -> Query {
        Query {
            select: Select::Prefix(p),
            ..Query::default()
        }
    }
    /// At most `n` rows (0: none).
    pub fn limit(mut self, n: usize) -> Query {
        self.limit = Some(n);
        self
    }
    /// Passes over the first `n` rows.
    pub fn skip(mut self, n: usize) -> Query {
        self.skip = n;
        self
    }
    /// Descending order.
    pub fn desc(mut self) -> Query {
        self.desc = true;
        self
    }
    /// Each row with its document.
    pub fn with_docs(mut self) -> Query {
        self.docs = true;
        self
    }
}

/// One row of a query's answer.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Row {
    /// The row's key.
    pub key: Value,
    /// The document that emitted it.
    pub id: String,
    /// The value emitted with it (`null` for declared fields).
    pub value: Value,
    /// The document as the version the row was made from (with `docs`; `null` when that
    /// version was purged since).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub doc: Option<Value>,
}

/// The least byte string greater than every string that starts with `p` (`None`: no bound).
pub fn after_prefix(p: &[u8]) -> Option<Vec<u8>> {
    let mut v = p.to_vec();
    while let Some(last) = v.pop() {
        if last < 0xFF {
            v.push(last + 1);
            return Some(v);
        }
    }
    None
}

/// The byte ranges (`[lo, hi)`) of the rows `s` selects, in key order.
fn ranges(s: &Select) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
    let row = |v: &Value| {
        let mut b = vec![ROW];
        key::encode(v, &mut b);
        b
    };
    let exact = |v: &Value| {
        let lo = row(v);
        let hi = after_prefix(&lo);
        (lo, hi)
    };
    match s {
        Select::All => vec![(vec![ROW], after_prefix(&[ROW]))],
        Select::Key(k) => vec![exact(k)],
        Select::Keys(ks) => {
            let mut v: Vec<_> = ks.iter().map(exact).collect();
            v.sort();
            v.dedup();
            v
        }
        Select::Range {
            start,
            end,
            exclusive_end,
        } => {
            let lo = start.as_ref().map_or(vec![ROW], row);
            let hi = match end {
                None => after_prefix(&[ROW]),
                Some(e) if *exclusive_end => Some(row(e)),
                Some(e) => after_prefix(&row(e)),
            };
            if hi.as_ref().is_some_and(|h| *h <= lo) {
                return Vec::new();
            }
            vec![(lo, hi)]
        }
        Select::Prefix(p) => {
            let mut lo = vec![ROW];
            lo.extend_from_slice(&key::array_prefix(p));
            let hi = after_prefix(&lo);
            vec![(lo, hi)]
        }
    }
}

/// Rows a query's answer has room for before it grows.
const FIRST_ROOM: usize = 256;

/// Runs `q` over the tree at `root`: the rows, documents not loaded (the caller adds them),
/// and beside them each row's slot (the document version it was made from).
pub fn run<S: NodeSource<Error = Error>>(
    src: &S,
    root: Option<&crate::format::block::cid::Cid>,
    q: &Query,
    index: &str,
) -> Result<(Vec<Row>, Vec<tree::Slot>)> {
    if q.limit == Some(0) {
        return Ok((Vec::new(), Vec::new()));
    }
    // Room for a page of rows from the start: growing by doubling reallocates (and copies)
    // the rows made so far several times over.
    let room = q.limit.unwrap_or(FIRST_ROOM).min(FIRST_ROOM);
    let (mut out, mut slots) = (Vec::with_capacity(room), Vec::with_capacity(room));
    let mut rs = ranges(&q.select);
    if q.desc {
        rs.reverse();
    }
    let mut skip = q.skip;
    let mut bad = None;
    for (lo, hi) in rs {
        let mut visit = |k: &[u8], s: &tree::Slot| -> Result<bool> {
            if skip > 0 {
                skip -= 1;
                return Ok(true);
            }
            match parse_row(k) {
                Ok((key, id, value)) => {
                    out.push(Row {
                        key,
                        id,
                        value,
                        doc: None,
                    });
                    slots.push(*s);
                }
                Err(w) => {
                    bad = Some(w);
                    return Ok(false);
                }
            }
            Ok(q.limit.is_none_or(|l| out.len() < l))
        };
        if q.desc {
            tree::range_rev(src, root, Some(&lo), hi.as_deref(), &mut visit)?;
        } else {
            tree::range(src, root, Some(&lo), hi.as_deref(), &mut visit)?;
        }
        if let Some(w) = bad {
            return Err(Error::corrupt(format!("index {index}"), w));
        }
        if q.limit.is_some_and(|l| out.len() >= l) {
            break;
        }
    }
    Ok((out, slots))
}
