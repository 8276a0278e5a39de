//! A Fireproof document as a kiln document: its value as JSON (bytes and links in dag-json's
//! forms), its attachments (`_files`, `_publicFiles`) taken apart, and the top-level fields kiln
//! reserves (`_` names other than `_id` and `_files`) kept under an `fp` prefix
//! (`_deleted` → `fp_deleted`).

use super::ipld::{FpCid, Ipld};
use serde_json::{Map, Value};

/// One attached file as Fireproof's document names it.
#[derive(Clone, Debug)]
pub struct FpFile {
    pub name: String,
    pub cid: FpCid,
    /// The file CAR that holds it.
    pub car: FpCid,
    pub content_type: String,
    pub size: u64,
    pub modified: u64,
    /// From `_publicFiles`.
    pub public: bool,
}

/// The field that lists which files came from `_publicFiles`.
pub const PUBLIC_FILES: &str = "fp_publicFiles";
/// The field that maps a file's kiln name to its Fireproof name, where kiln refused that.
pub const FILE_NAMES: &str = "fp_fileNames";

/// A file name kiln takes, made from one it refuses: '/', '\\' and control characters as
/// `_`, `_` before an empty name, `.` or `..`, cut to 200 bytes.
fn usable_name(name: &str) -> String {
    let mut s: String = name
        .chars()
        .map(|c| {
            if c == '/' || c == '\\' || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect();
    if s.is_empty() || s == "." || s == ".." {
        s.insert(0, '_');
    }
    let mut cut = s.len().min(200);
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    s.truncate(cut);
    s
}

/// Converts document `id`'s value: the JSON body (without `_files`) and its files.
pub fn document(id: &str, doc: &Ipld) -> Result<(Map<String, Value>, Vec<FpFile>), String> {
    let Ipld::Map(fields) = doc else {
        return Err(format!("document {id:?} is not a map"));
    };
    let mut out = Map::new();
    let mut files = Vec::new();
    for (k, v) in fields {
        match k.as_str() {
            "_id" => {}
            "_files" | "_publicFiles" if *v == Ipld::Null => {}
            "_files" | "_publicFiles" => files.extend(files_of(id, v, k == "_publicFiles")?),
            _ => {
                let json = v
                    .to_json()
                    .ok_or_else(|| format!("document {id:?}: field {k:?} has no JSON form"))?;
                let name = if k.starts_with('_') {
                    format!("fp{k}")
                } else {
                    k.clone()
                };
                if out.insert(name.clone(), json).is_some() {
                    return Err(format!(
                        "document {id:?}: field {k:?} becomes {name:?}, which it has already"
                    ));
                }
            }
        }
    }
    // A public file named as a private one keeps both, the public one renamed.
    let mut seen: std::collections::HashSet<String> = files
        .iter()
        .filter(|f| !f.public)
        .map(|f| f.name.clone())
        .collect();
    for f in files.iter_mut().filter(|f| f.public) {
        let mut name = f.name.clone();
        while seen.contains(&name) {
            name = format!("public-{name}");
        }
        seen.insert(name.clone());
        f.name = name;
    }
    // Names kiln refuses ('/', '\\', control characters, empty, `.`, `..`, over 255 bytes)
    // are made into names it takes; the originals are kept in `fp_fileNames`.
    let mut renamed = Map::new();
    let mut taken: std::collections::HashSet<String> =
        files.iter().map(|f| f.name.clone()).collect();
    for f in files.iter_mut() {
        if crate::model::doc::files::check_name(&f.name).is_ok() {
            continue;
        }
        let mut name = usable_name(&f.name);
        let mut n = 1;
        while taken.contains(&name) {
            n += 1;
            name = format!("{}-{n}", usable_name(&f.name));
        }
        taken.insert(name.clone());
        renamed.insert(name.clone(), Value::String(f.name.clone()));
        f.name = name;
    }
    if !renamed.is_empty()
        && out
            .insert(FILE_NAMES.into(), Value::Object(renamed))
            .is_some()
    {
        return Err(format!(
            "document {id:?} has a field {FILE_NAMES:?} already"
        ));
    }
    let public: Vec<Value> = files
        .iter()
        .filter(|f| f.public)
        .map(|f| Value::String(f.name.clone()))
        .collect();
    if !public.is_empty()
        && out
            .insert(PUBLIC_FILES.into(), Value::Array(public))
            .is_some()
    {
        return Err(format!(
            "document {id:?} has a field {PUBLIC_FILES:?} already"
        ));
    }
    out.insert("_id".into(), Value::String(id.to_owned()));
    Ok((out, files))
}

fn files_of(id: &str, v: &Ipld, public: bool) -> Result<Vec<FpFile>, String> {
    let Ipld::Map(entries) = v else {
        return Err(format!("document {id:?}: _files is not a map"));
    };
    let mut out = Vec::new();
    for (name, meta) in entries {
        let bad = |what: &str| format!("document {id:?}: file {name:?}: {what}");
        let cid = meta
            .get("cid")
            .and_then(Ipld::as_link)
            .ok_or_else(|| bad("no cid"))?
            .clone();
        let car = match meta.get("car") {
            Some(Ipld::Link(c)) => c.clone(),
            Some(Ipld::List(l)) => l
                .first()
                .and_then(Ipld::as_link)
                .ok_or_else(|| bad("car"))?
                .clone(),
            _ => return Err(bad("no car")),
        };
        let int = |k: &str| match meta.get(k) {
            Some(Ipld::Int(i)) => u64::try_from(*i).ok(),
            Some(Ipld::Float(f)) if *f >= 0.0 && f.fract() == 0.0 => Some(*f as u64),
            _ => None,
        };
        out.push(FpFile {
            name: name.clone(),
            cid,
            car,
            content_type: meta
                .get("type")
                .and_then(Ipld::as_str)
                .unwrap_or("")
                .to_owned(),
            size: int("size").ok_or_else(|| bad("size"))?,
            modified: int("lastModified").unwrap_or(0),
            public,
        });
    }
    Ok(out)
}
