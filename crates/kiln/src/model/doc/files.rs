//! A document's `_files`: the metadata of the files attached to it, one entry per name:
//!
//! ```text
//! "_files": { NAME: { "cid": "b…",       the raw-codec CID of the file's bytes (its text form)
//!                     "size": uint,      bytes
//!                     "type": string,    content type ("" when unknown)
//!                     "modified": uint,  ms since the epoch (as the attacher said)
//!                     "set": "hex…" } }  the file-set file holding the bytes (64 hex digits)
//! ```
//!
//! kiln writes it when files are attached; a write may carry it back as read (get, change, put
//! again), and it is checked: names without `/` or control characters, every field there and
//! of its type, nothing else.

use super::*;
use crate::format::block::cid::{Cid, Codec};

/// The field that holds a document's file metadata.
pub const FILES: &str = "_files";
/// Longest file name, in bytes of UTF-8.
pub const MAX_NAME_BYTES: usize = 255;
/// Most files one document names.
pub const MAX_FILES: usize = 10_000;

/// One attached file's metadata, as `_files` records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileMeta {
    pub name: String,
    /// The raw-codec CID of the file's bytes.
    pub cid: Cid,
    pub size: u64,
    pub content_type: String,
    pub modified: u64,
    /// The name of the file-set holding the bytes.
    pub set: [u8; 32],
}

impl FileMeta {
    /// The `_files` entry (without its name).
    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "cid": self.cid.to_string(),
            "size": self.size,
            "type": self.content_type,
            "modified": self.modified,
            "set": crate::util::hex::hex(&self.set),
        })
    }
}

/// Whether a top-level field name is reserved (refused in writes): `_` names other than `_id`
/// and `_files`.
pub fn is_reserved(k: &str) -> bool {
    k.starts_with('_') && k != "_id" && k != FILES
}

/// Checks a file name: not empty, at most [`MAX_NAME_BYTES`], no `/`, `\` or control
/// characters, not `.` or `..`.
pub fn check_name(name: &str) -> std::result::Result<(), String> {
    if name.is_empty() || name == "." || name == ".." {
        return Err(format!("file name {name:?} is not a name"));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(format!(
            "file name is {} bytes; the limit is {MAX_NAME_BYTES}",
            name.len()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| *c == '/' || *c == '\\' || c.is_control())
    {
        return Err(format!(
            "file name {name:?} holds {c:?} (no '/', '\\' or control characters)"
        ));
    }
    Ok(())
}

/// The file metadata a `_files` value holds, checked, in name order.
pub fn parse(v: &Value) -> std::result::Result<Vec<FileMeta>, String> {
    let Value::Object(m) = v else {
        return Err("_files must be an object of file names".into());
    };
    if m.len() > MAX_FILES {
        return Err(format!(
            "_files names {} files; the limit is {MAX_FILES}",
            m.len()
        ));
    }
    let mut out = Vec::with_capacity(m.len());
    for (name, meta) in m {
        check_name(name)?;
        let bad = |why: &str| format!("_files[{name:?}]: {why}");
        let Value::Object(f) = meta else {
            return Err(bad("must be an object"));
        };
        if f.len() != 5 {
            return Err(bad("must hold exactly cid, size, type, modified and set"));
        }
        let cid = f
            .get("cid")
            .and_then(Value::as_str)
            .and_then(Cid::parse)
            .filter(|c| c.codec() == Codec::Raw)
            .ok_or_else(|| bad("cid must be a raw-codec CID"))?;
        let size = f
            .get("size")
            .and_then(Value::as_u64)
            .ok_or_else(|| bad("size must be an unsigned integer"))?;
        let content_type = f
            .get("type")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("type must be a string"))?
            .to_owned();
        let modified = f
            .get("modified")
            .and_then(Value::as_u64)
            .ok_or_else(|| bad("modified must be an unsigned integer (ms)"))?;
        let set = f
            .get("set")
            .and_then(Value::as_str)
            .and_then(crate::util::hex::unhex)
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or_else(|| bad("set must be a file-set name (64 hex digits)"))?;
        out.push(FileMeta {
            name: name.clone(),
            cid,
            size,
            content_type,
            modified,
            set,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Whether a stored body may hold `_files` (its key's bytes are in it): most bodies are ruled
/// out without a decode.
fn may_hold_files(body: &[u8]) -> bool {
    // dag-cbor text of 6 bytes: 0x66 then the bytes.
    memchr::memmem::find(body, b"\x66_files").is_some()
}

/// The files a stored body names (none for most), checked as [`parse`] checks them.
pub fn of_body(body: &[u8]) -> std::result::Result<Vec<FileMeta>, String> {
    if !may_hold_files(body) {
        return Ok(Vec::new());
    }
    let v = decode("", body).map_err(str::to_owned)?;
    match v.get(FILES) {
        None => Ok(Vec::new()),
        Some(f) => parse(f),
    }
}

/// The file-sets a stored body names, sorted, each once (none for most bodies; a body whose
/// `_files` does not parse names none).
pub fn sets_of_body(body: &[u8]) -> Vec<[u8; 32]> {
    let mut sets: Vec<[u8; 32]> = of_body(body)
        .unwrap_or_default()
        .iter()
        .map(|f| f.set)
        .collect();
    sets.sort_unstable();
    sets.dedup();
    sets
}
