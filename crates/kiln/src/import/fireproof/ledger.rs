//! A Fireproof file-gateway store as found on disk: where its ledgers and keybag are, and one
//! ledger read whole: its meta record, the CARs its car log names (and any other CAR in its
//! `data/` folder, for history compaction no longer names), every block checked, its clock
//! events and its heads.

use super::car;
use super::ipld::{self, FpCid, Ipld, FP_CAR};
use super::keybag::{self, FpKey};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

/// The document id of the genesis write every Fireproof ledger begins with.
pub const GENESIS_ID: &str = "baembeiarootfireproofgenesisblockaaaafireproofgenesisblocka";

/// What went wrong reading a store, with the file it concerns.
#[derive(Debug)]
pub enum ReadError {
    /// Not a Fireproof store (or ledger) at all.
    NotAStore(String),
    /// No ledger of that name.
    NoLedger(String, Vec<String>),
    /// No key in the keybag opens the ledger's files.
    Key(String),
    /// A file is damaged, tampered with or missing.
    Damaged { file: String, why: String },
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::NotAStore(w) => write!(f, "not a Fireproof store: {w}"),
            ReadError::NoLedger(n, have) => {
                write!(
                    f,
                    "no ledger '{n}' in this Fireproof store (it has: {})",
                    have.join(", ")
                )
            }
            ReadError::Key(w) => write!(f, "{w}"),
            ReadError::Damaged { file, why } => write!(f, "{file}: {why}"),
        }
    }
}

/// A store's folders: its ledgers (each a folder holding `data/` and `meta/`) and its keybag.
#[derive(Clone, Debug)]
pub struct Layout {
    pub keybag: PathBuf,
    /// Ledger name → folder.
    pub ledgers: BTreeMap<String, PathBuf>,
}

fn is_ledger(p: &Path) -> bool {
    p.join("meta").is_dir() && p.join("data").is_dir()
}

/// Finds the store at `dir`: a folder holding `.fireproof`, the `.fireproof` folder itself
/// (`keybag/` and a version folder such as `v0.19/` of ledgers), a version folder, or one
/// ledger's folder.
pub fn layout(dir: &Path) -> Result<Layout, ReadError> {
    let not = || {
        ReadError::NotAStore(format!(
            "{} holds no ledger (a folder with data/ and meta/, in .fireproof/v0.19/ or \
             given itself)",
            dir.display()
        ))
    };
    if !dir.is_dir() {
        return Err(ReadError::NotAStore(format!(
            "{} is not a folder",
            dir.display()
        )));
    }
    // (Absolute, so that a ledger folder given as `./name` finds the keybag two levels up.)
    let dir = &std::fs::canonicalize(dir)
        .map_err(|e| ReadError::NotAStore(format!("{}: {e}", dir.display())))?;
    if is_ledger(dir) {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let root = dir.parent().and_then(Path::parent).unwrap_or(dir);
        return Ok(Layout {
            keybag: root.join("keybag"),
            ledgers: BTreeMap::from([(name, dir.to_path_buf())]),
        });
    }
    let root = if dir.join(".fireproof").is_dir() {
        dir.join(".fireproof")
    } else {
        dir.to_path_buf()
    };
    let mut ledgers = BTreeMap::new();
    let mut version_dirs = Vec::new();
    if let Ok(rd) = std::fs::read_dir(&root) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() && p.file_name().is_some_and(|n| n != "keybag") {
                version_dirs.push(p);
            }
        }
    }
    // The version folders' ledgers (v0.19 by default), else the folder's own.
    version_dirs.sort();
    for v in version_dirs.iter().chain(std::iter::once(&root)) {
        let Ok(rd) = std::fs::read_dir(v) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if is_ledger(&p) {
                let name = e.file_name().to_string_lossy().into_owned();
                ledgers.entry(name).or_insert(p);
            }
        }
    }
    let keybag = root.join("keybag");
    if ledgers.is_empty() {
        return Err(not());
    }
    let keybag = if keybag.is_dir() {
        keybag
    } else {
        root.parent().map_or(keybag.clone(), |p| p.join("keybag"))
    };
    Ok(Layout { keybag, ledgers })
}

/// A Fireproof clock event.
#[derive(Clone, Debug)]
pub struct Event {
    pub cid: FpCid,
    pub parents: Vec<FpCid>,
    /// Its writes in order: (document id, value block).
    pub ops: Vec<(String, FpCid)>,
    /// The pail root after it.
    pub root: Option<FpCid>,
}

/// One ledger, read.
pub struct Ledger {
    pub name: String,
    pub dir: PathBuf,
    /// Every block of every CAR read, by CID.
    pub blocks: HashMap<FpCid, Vec<u8>>,
    /// The clock's heads.
    pub heads: Vec<FpCid>,
    /// Whether its files are encrypted.
    pub encrypted: bool,
    /// The keys to try (by the fingerprint each file names).
    keys: Vec<FpKey>,
    /// CARs read already.
    read: BTreeSet<FpCid>,
    /// Each CAR's root (the first CAR of a commit's: its header).
    roots: HashMap<FpCid, FpCid>,
    /// CAR files read, and their bytes on disk.
    pub cars: usize,
    pub bytes: u64,
    /// A compaction's header was read (history before it may be hollow).
    pub compacted: bool,
    /// The ledger has index stores (derived data, not imported).
    pub has_indexes: bool,
    /// CARs its car log does not name that did not read, and why.
    pub skipped: Vec<String>,
}

fn damaged(file: &Path, why: impl Into<String>) -> ReadError {
    ReadError::Damaged {
        file: file.display().to_string(),
        why: why.into(),
    }
}

/// The car groups `meta/main.json` names (one per meta it holds).
fn meta_groups(dir: &Path) -> Result<Vec<Vec<FpCid>>, ReadError> {
    let path = dir.join("meta").join("main.json");
    let text = std::fs::read_to_string(&path).map_err(|e| damaged(&path, e.to_string()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| damaged(&path, format!("not JSON: {e}")))?;
    let metas = match &v {
        serde_json::Value::Array(a) => a.clone(),
        serde_json::Value::Object(o) => o
            .get("metas")
            .and_then(|m| m.as_array())
            .cloned()
            .ok_or_else(|| damaged(&path, "no metas"))?,
        _ => return Err(damaged(&path, "not a meta record")),
    };
    let mut groups = Vec::new();
    for m in metas {
        let data = m
            .get("data")
            .and_then(|d| d.as_str())
            .and_then(|d| d.strip_prefix('M'))
            .and_then(ipld::base64_decode)
            .ok_or_else(|| damaged(&path, "a meta without its base64 data"))?;
        let ev = ipld::decode(&data).map_err(|e| damaged(&path, e))?;
        let db_meta = ev
            .get("data")
            .and_then(|d| d.get("dbMeta"))
            .and_then(Ipld::as_bytes)
            .ok_or_else(|| damaged(&path, "a meta event without dbMeta"))?;
        let j: serde_json::Value =
            serde_json::from_slice(db_meta).map_err(|_| damaged(&path, "dbMeta is not JSON"))?;
        let mut cars = Vec::new();
        for c in j
            .get("cars")
            .and_then(|c| c.as_array())
            .ok_or_else(|| damaged(&path, "dbMeta without cars"))?
        {
            let s = c
                .get("/")
                .and_then(|s| s.as_str())
                .ok_or_else(|| damaged(&path, "a car link"))?;
            cars.push(FpCid::parse(s).map_err(|e| damaged(&path, e))?);
        }
        groups.push(cars);
    }
    Ok(groups)
}

impl Ledger {
    /// Reads ledger `name` of `layout`, decrypting with the key named `key_name` (default
    /// `@<name>-data@`) or any key of the keybag whose fingerprint the files name.
    pub fn open(layout: &Layout, name: &str, key_name: Option<&str>) -> Result<Ledger, ReadError> {
        let dir = layout
            .ledgers
            .get(name)
            .ok_or_else(|| {
                ReadError::NoLedger(name.to_owned(), layout.ledgers.keys().cloned().collect())
            })?
            .clone();
        let named = key_name.map_or_else(|| keybag::data_key_name(name), str::to_owned);
        let named_file = keybag::file_of(&layout.keybag, &named);
        let mut keys = match keybag::read_file(&named_file) {
            Ok(k) => k,
            Err(_) if key_name.is_none() => Vec::new(),
            Err(e) => return Err(ReadError::Key(format!("key '{named}': {e}"))),
        };
        if key_name.is_none() {
            keys.extend(keybag::read_all(&layout.keybag));
        }
        let mut l = Ledger {
            name: name.to_owned(),
            blocks: HashMap::new(),
            heads: Vec::new(),
            encrypted: false,
            keys,
            read: BTreeSet::new(),
            roots: HashMap::new(),
            cars: 0,
            bytes: 0,
            compacted: false,
            has_indexes: dir.join("idx-data").is_dir() || dir.join("idx-meta").is_dir(),
            skipped: Vec::new(),
            dir,
        };
        let groups = meta_groups(&l.dir)?;
        let mut live: Vec<FpCid> = Vec::new();
        let mut heads: Vec<FpCid> = Vec::new();
        for g in &groups {
            let Some(first) = g.first() else { continue };
            for c in g {
                l.read_car(c, true)?;
            }
            let header = l.header_of(first)?;
            let fp = header
                .get("fp")
                .ok_or_else(|| l.bad_car(first, "header without fp"))?;
            for group in fp.get("cars").and_then(Ipld::as_list).unwrap_or(&[]) {
                live.extend(group.links().unwrap_or_default());
            }
            heads.extend(
                fp.get("meta")
                    .and_then(|m| m.get("head"))
                    .and_then(Ipld::links)
                    .unwrap_or_default(),
            );
            live.extend(g.iter().cloned());
        }
        for c in &live {
            l.read_car(c, true)?;
        }
        // Other CARs in data/ (what a compaction no longer names but has not deleted yet):
        // more history, read and checked like the rest.
        let data = l.dir.join("data");
        let mut extra: Vec<FpCid> = Vec::new();
        if let Ok(rd) = std::fs::read_dir(&data) {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if let Some(c) = n.strip_suffix(".car").and_then(|s| FpCid::parse(s).ok()) {
                    extra.push(c);
                }
            }
        }
        extra.sort();
        for c in extra {
            // Not part of the ledger's state: one that does not read (torn by a crash before
            // its meta was written, or under a key no longer in the keybag) is passed over.
            if let Err(e) = l.read_car(&c, false) {
                l.skipped.push(e.to_string());
            }
        }
        heads.sort();
        heads.dedup();
        l.heads = l.maximal(heads)?;
        Ok(l)
    }

    fn bad_car(&self, c: &FpCid, why: &str) -> ReadError {
        damaged(&self.dir.join("data").join(format!("{c}.car")), why)
    }

    /// The header (a CAR's root block) of CAR `c`.
    fn header_of(&self, c: &FpCid) -> Result<Ipld, ReadError> {
        let path = self.dir.join("data").join(format!("{c}.car"));
        let b = self
            .roots
            .get(c)
            .and_then(|root| self.blocks.get(root))
            .ok_or_else(|| damaged(&path, "its root block is missing"))?;
        ipld::decode(b).map_err(|e| damaged(&path, e))
    }

    /// A file's plaintext, checked against the CID that names it, and whether it was
    /// encrypted.
    fn file_plain(&self, path: &Path, name: &FpCid) -> Result<(Vec<u8>, bool), ReadError> {
        let bytes = std::fs::read(path).map_err(|e| damaged(path, format!("cannot read: {e}")))?;
        let encrypted = car::is_envelope(&bytes);
        let plain = if encrypted {
            let id = car::envelope_key_id(&bytes).map_err(|e| damaged(path, e))?;
            let k = self
                .keys
                .iter()
                .find(|k| k.fingerprint == id)
                .ok_or_else(|| {
                    ReadError::Key(format!(
                        "{}: encrypted with key z{} and the keybag has no such key (give its \
                     entry with --key-name, or copy the keybag beside the store)",
                        path.display(),
                        ipld::base58_encode(&id),
                    ))
                })?;
            car::open_envelope(&bytes, &k.key).map_err(|e| damaged(path, e))?
        } else {
            bytes
        };
        if name.codec() == FP_CAR && FpCid::of(FP_CAR, &plain) != *name {
            return Err(damaged(path, "its contents do not hash to its name"));
        }
        Ok((plain, encrypted))
    }

    /// Reads CAR `c` (its blocks into `blocks`); `required`: a missing file is an error.
    fn read_car(&mut self, c: &FpCid, required: bool) -> Result<(), ReadError> {
        if !self.read.insert(c.clone()) {
            return Ok(());
        }
        let path = self.dir.join("data").join(format!("{c}.car"));
        if !path.exists() {
            return match required {
                true => Err(damaged(&path, "missing (the ledger's car log names it)")),
                false => Ok(()),
            };
        }
        let (plain, encrypted) = self.file_plain(&path, c)?;
        self.encrypted |= encrypted;
        let parsed = car::parse(&plain).map_err(|e| damaged(&path, e))?;
        self.bytes += std::fs::metadata(&path).map_or(0, |m| m.len());
        // A header written by a compaction lists what it replaced.
        let root = parsed.roots.first();
        if let Some(r) = root {
            self.roots.insert(c.clone(), r.clone());
        }
        if let Some((_, b)) = parsed.blocks.iter().find(|(c, _)| Some(c) == root) {
            let compact = ipld::decode(b).ok().and_then(|h| {
                h.get("fp")
                    .and_then(|fp| fp.get("compact"))
                    .and_then(Ipld::as_list)
                    .map(|l| !l.is_empty())
            });
            self.compacted |= compact == Some(true);
        }
        for (cid, data) in parsed.blocks {
            self.blocks.entry(cid).or_insert(data);
        }
        self.cars += 1;
        Ok(())
    }

    /// Event `c`, if its block is here.
    pub fn event(&self, c: &FpCid) -> Result<Option<Event>, ReadError> {
        let Some(b) = self.blocks.get(c) else {
            return Ok(None);
        };
        let bad = |why: &str| ReadError::Damaged {
            file: format!("ledger {}", self.name),
            why: format!("event {c}: {why}"),
        };
        let v = ipld::decode(b).map_err(&bad)?;
        let parents = v
            .get("parents")
            .and_then(Ipld::links)
            .ok_or_else(|| bad("parents"))?;
        let data = v.get("data").ok_or_else(|| bad("no data"))?;
        let root = data.get("root").and_then(Ipld::as_link).cloned();
        let op = |o: &Ipld| -> Result<(String, FpCid), ReadError> {
            match o.get("type").and_then(Ipld::as_str) {
                Some("put") => Ok((
                    o.get("key")
                        .and_then(Ipld::as_str)
                        .ok_or_else(|| bad("key"))?
                        .to_owned(),
                    o.get("value")
                        .and_then(Ipld::as_link)
                        .ok_or_else(|| bad("value"))?
                        .clone(),
                )),
                Some(t) => Err(bad(&format!("an operation of type '{t}'"))),
                None => Err(bad("an operation without a type")),
            }
        };
        let ops = match data.get("type").and_then(Ipld::as_str) {
            Some("batch") => data
                .get("ops")
                .and_then(Ipld::as_list)
                .ok_or_else(|| bad("batch without ops"))?
                .iter()
                .map(op)
                .collect::<Result<_, _>>()?,
            _ => vec![op(data)?],
        };
        Ok(Some(Event {
            cid: c.clone(),
            parents,
            ops,
            root,
        }))
    }

    /// Every event reachable from the heads whose block is here, and the CIDs named as
    /// parents whose blocks are not (history Fireproof no longer has).
    pub fn events(&self) -> Result<(BTreeMap<FpCid, Event>, BTreeSet<FpCid>), ReadError> {
        let mut out = BTreeMap::new();
        let mut missing = BTreeSet::new();
        let mut todo: Vec<FpCid> = self.heads.clone();
        while let Some(c) = todo.pop() {
            if out.contains_key(&c) || missing.contains(&c) {
                continue;
            }
            match self.event(&c)? {
                Some(e) => {
                    todo.extend(e.parents.iter().cloned());
                    out.insert(c, e);
                }
                None => {
                    missing.insert(c);
                }
            }
        }
        Ok((out, missing))
    }

    /// Of `heads`, those no other head descends from (how Fireproof's clock takes in several
    /// metas' heads).
    fn maximal(&self, heads: Vec<FpCid>) -> Result<Vec<FpCid>, ReadError> {
        if heads.len() < 2 {
            return Ok(heads);
        }
        let mut below: BTreeSet<FpCid> = BTreeSet::new();
        for h in &heads {
            let mut todo: Vec<FpCid> = self.event(h)?.map(|e| e.parents).unwrap_or_default();
            while let Some(c) = todo.pop() {
                if below.insert(c.clone()) {
                    if let Some(e) = self.event(&c)? {
                        todo.extend(e.parents);
                    }
                }
            }
        }
        Ok(heads.into_iter().filter(|h| !below.contains(h)).collect())
    }

    /// A document value block: `Some(doc)` for `{doc: …}`, `None` for a delete (`{del: true}`).
    pub fn value(&self, c: &FpCid) -> Result<Option<Option<Ipld>>, ReadError> {
        let Some(b) = self.blocks.get(c) else {
            return Ok(None);
        };
        let v = ipld::decode(b).map_err(|e| ReadError::Damaged {
            file: format!("ledger {}", self.name),
            why: format!("document block {c}: {e}"),
        })?;
        if let Some(d) = v.get("doc") {
            return Ok(Some(Some(d.clone())));
        }
        if matches!(v.get("del"), Some(Ipld::Bool(true))) {
            return Ok(Some(None));
        }
        Err(ReadError::Damaged {
            file: format!("ledger {}", self.name),
            why: format!("document block {c} is neither a document nor a delete"),
        })
    }

    /// The (key, value block) entries of the pail trie at `root`, in key order; `None` when a
    /// shard of it is not here.
    pub fn pail_entries(&self, root: &FpCid) -> Result<Option<BTreeMap<String, FpCid>>, ReadError> {
        let mut out = BTreeMap::new();
        let mut todo = vec![root.clone()];
        while let Some(s) = todo.pop() {
            let Some(b) = self.blocks.get(&s) else {
                return Ok(None);
            };
            let bad = |why: &str| ReadError::Damaged {
                file: format!("ledger {}", self.name),
                why: format!("shard {s}: {why}"),
            };
            let v = ipld::decode(b).map_err(&bad)?;
            let prefix = v.get("prefix").and_then(Ipld::as_str).unwrap_or("");
            for e in v
                .get("entries")
                .and_then(Ipld::as_list)
                .ok_or_else(|| bad("entries"))?
            {
                let pair = e
                    .as_list()
                    .filter(|p| p.len() == 2)
                    .ok_or_else(|| bad("entry"))?;
                let key = format!(
                    "{prefix}{}",
                    pair[0].as_str().ok_or_else(|| bad("entry key"))?
                );
                match &pair[1] {
                    Ipld::Link(doc) => {
                        out.insert(key, doc.clone());
                    }
                    Ipld::List(l) => match l.as_slice() {
                        [Ipld::Link(child)] => todo.push(child.clone()),
                        [Ipld::Link(child), Ipld::Link(doc)] => {
                            todo.push(child.clone());
                            out.insert(key, doc.clone());
                        }
                        _ => return Err(bad("entry value")),
                    },
                    _ => return Err(bad("entry value")),
                }
            }
        }
        Ok(Some(out))
    }

    /// Reads attachment `cid` from its file CAR `car` (the raw block holding the file).
    pub fn attachment(&self, car_cid: &FpCid, cid: &FpCid) -> Result<Vec<u8>, ReadError> {
        let data = self.dir.join("data");
        let path = [
            data.join(car_cid.to_string()),
            data.join(format!("{car_cid}.car")),
        ]
        .into_iter()
        .find(|p| p.exists())
        .ok_or_else(|| damaged(&data.join(car_cid.to_string()), "attachment file missing"))?;
        let (plain, _) = self.file_plain(&path, car_cid)?;
        let parsed = car::parse(&plain).map_err(|e| damaged(&path, e))?;
        parsed
            .blocks
            .into_iter()
            .find(|(c, _)| c == cid)
            .map(|(_, b)| b)
            .ok_or_else(|| damaged(&path, format!("does not hold file {cid}")))
    }
}
