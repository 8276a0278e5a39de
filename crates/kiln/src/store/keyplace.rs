//! Where a store's keys are kept, and moving them there.
//!
//! The store marker (`ROOT/KILN`) records it. Store format 1 kept keys and shared marks in
//! `ROOT/keys/`; format 2 records `"keys": "outside"` (the default: keys in
//! `<home>/<store id>/`, shared marks still in `ROOT/keys/`) or `"keys": "store"` (as format 1). A
//! format 1 store opened for writing with keys outside has them moved out (below), so that a
//! tool that copies or syncs the store's folder never carries a key.
//!
//! A copied store folder has its original's id, so both would share one keybag, and garbage
//! collection in one would remove keys the other still uses. The keybag folder therefore names
//! the store it belongs to (`OWNER`: the store's folder); a store opened for writing whose
//! keybag names another folder that still holds a store of the same id is a copy, and gets an
//! id and a keybag of its own (its keys copied over). A store that was moved just takes its
//! keybag over.

use crate::db::options::KeyPlace;
use crate::error::{Error, Result};
use crate::keys::Keybag;
use crate::storage::local::GcLock;
use crate::storage::write_atomic;
use std::path::{Path, PathBuf};

/// The store format this kiln writes.
pub(super) const STORE_VERSION: u64 = 2;
/// The store marker's name.
pub(super) const MARKER: &str = "KILN";
/// The file in a keybag folder naming the store folder it belongs to.
const OWNER: &str = "OWNER";

/// What the store marker says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Marker {
    pub version: u64,
    pub id: Option<uuid::Uuid>,
    /// Keys in `ROOT/keys/` (format 1, or format 2 with `"keys": "store"`).
    pub keys_in_store: bool,
}

impl Marker {
    /// The marker of a new store made with `place`.
    pub fn new(place: &KeyPlace) -> Marker {
        Marker {
            version: STORE_VERSION,
            id: Some(uuid::Uuid::new_v4()),
            keys_in_store: *place == KeyPlace::InStore,
        }
    }

    /// Reads the marker of the store at `root`; `None` when there is none.
    pub fn read(root: &Path) -> Result<Option<Marker>> {
        let path = root.join(MARKER);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                ) =>
            {
                return Ok(None)
            }
            Err(e) => return Err(Error::io(&path, e)),
        };
        let bad = |what: &str| Error::corrupt(path.display().to_string(), what.to_string());
        let v: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|_| bad("store marker is not JSON"))?;
        let version = v.get("kiln_store").and_then(|x| x.as_u64()).unwrap_or(0);
        if version > STORE_VERSION {
            return Err(Error::NewerFormat {
                what: format!("store {}", root.display()),
                version: version as u32,
            });
        }
        let id = match v.get("id") {
            None => None,
            Some(s) => Some(
                s.as_str()
                    .and_then(|s| uuid::Uuid::parse_str(s).ok())
                    .ok_or_else(|| bad("store marker: id is not a UUID"))?,
            ),
        };
        let keys_in_store = match (version, v.get("keys").and_then(|k| k.as_str())) {
            (0 | 1, _) | (_, Some("store")) => true,
            (_, Some("outside")) => false,
            _ => {
                return Err(bad(
                    "store marker: keys is neither \"store\" nor \"outside\"",
                ))
            }
        };
        if version >= 2 && id.is_none() {
            return Err(bad("store marker: no id"));
        }
        Ok(Some(Marker {
            version,
            id,
            keys_in_store,
        }))
    }

    /// Writes a new store's marker unless one is there: false when another process made the
    /// store meanwhile (its marker stands; read it). Durable.
    pub fn write_new(&self, root: &Path) -> Result<bool> {
        let path = root.join(MARKER);
        let mut rnd = [0u8; 8];
        crate::format::seal::fill_random(&mut rnd).map_err(|e| Error::io(root, e))?;
        let tmp = root.join(format!(".{MARKER}.{}", crate::util::hex::hex(&rnd)));
        write_atomic(&tmp, self.json().as_bytes(), true, None).map_err(|e| Error::io(&tmp, e))?;
        let linked = std::fs::hard_link(&tmp, &path);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => {
                crate::storage::sync_dir(root).map_err(|e| Error::io(root, e))?;
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(Error::io(&path, e)),
        }
    }

    fn json(&self) -> String {
        let mut v = serde_json::json!({ "kiln_store": self.version });
        if let Some(id) = self.id {
            v["id"] = id.to_string().into();
        }
        if self.version >= 2 {
            let place = if self.keys_in_store {
                "store"
            } else {
                "outside"
            };
            v["keys"] = place.into();
        }
        v.to_string()
    }

    /// Writes the marker (replaced atomically, always durable).
    pub fn write(&self, root: &Path) -> Result<()> {
        let path = root.join(MARKER);
        write_atomic(&path, self.json().as_bytes(), true, None).map_err(|e| Error::io(&path, e))
    }
}

/// The folder that holds the keybags of stores whose keys are outside them: `home` when given,
/// else `$KILN_KEYS`, else `$XDG_CONFIG_HOME/kiln/keys`, else `$HOME/.config/kiln/keys`.
pub fn keys_home(home: Option<&Path>) -> Result<PathBuf> {
    if let Some(h) = home {
        return Ok(h.to_path_buf());
    }
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(k) = var("KILN_KEYS") {
        return Ok(k);
    }
    if let Some(x) = var("XDG_CONFIG_HOME") {
        return Ok(x.join("kiln/keys"));
    }
    if let Some(h) = var("HOME") {
        return Ok(h.join(".config/kiln/keys"));
    }
    Err(Error::InvalidArgument(
        "no place for keys: set KILN_KEYS (or HOME), or keep keys in the store".into(),
    ))
}

fn home_of(place: &KeyPlace) -> Result<PathBuf> {
    match place {
        KeyPlace::Outside(h) => keys_home(h.as_deref()),
        KeyPlace::InStore => keys_home(None),
    }
}

/// The keybag a store with `marker` has, as it stands (nothing read, made or moved).
pub(super) fn keybag_of(root: &Path, marker: &Marker, place: &KeyPlace) -> Result<Keybag> {
    match (marker.keys_in_store, marker.id) {
        // (The marks stay in `ROOT/keys/`, where every kiln looks for them.)
        (false, Some(id)) => Ok(Keybag::with_marks(
            home_of(place)?.join(id.to_string()),
            root.join("keys"),
        )),
        _ => Ok(Keybag::new(root.join("keys"))),
    }
}

/// The id of the store at `root` (`None` for a store of format 1 never opened for writing
/// since ids came).
pub(super) fn id_of(root: &Path) -> Result<Option<uuid::Uuid>> {
    Ok(Marker::read(root)?.and_then(|m| m.id))
}

/// The keybag of the store at `root` as a default open finds it (for audits and tests).
pub(crate) fn keybag_at(root: &Path) -> Result<Keybag> {
    let m = Marker::read(root)?.ok_or_else(|| Error::NoStore(root.to_path_buf()))?;
    keybag_of(root, &m, &KeyPlace::default())
}

/// Makes a new store's keybag (before its marker is written).
pub(super) fn create(root: &Path, marker: &Marker, place: &KeyPlace) -> Result<Keybag> {
    let kb = keybag_of(root, marker, place)?;
    kb.init()?;
    if !marker.keys_in_store {
        claim(&kb, root)?;
    }
    Ok(kb)
}

/// The keybag of a store opened for writing, once its keys are where they belong: a format 1
/// store's keys moved out when `place` says outside, an interrupted move finished, a copied
/// store given a keybag of its own.
pub(super) fn settle(root: &Path, marker: Marker, place: &KeyPlace, gc: &GcLock) -> Result<Keybag> {
    let mut marker = marker;
    if marker.keys_in_store && marker.version < 2 && *place != KeyPlace::InStore {
        let _x = gc.exclusive().map_err(|e| Error::io(root.join("GC"), e))?;
        // Another process may have moved them while this one waited.
        marker = Marker::read(root)?.ok_or_else(|| Error::NoStore(root.to_path_buf()))?;
        if marker.keys_in_store && marker.version < 2 {
            marker = move_out(root, marker, place)?;
        }
    }
    if marker.id.is_none() {
        // A format 1 store that keeps its keys: an id all the same (what its replicas are
        // known by on a remote).
        let _x = gc.exclusive().map_err(|e| Error::io(root.join("GC"), e))?;
        marker = Marker::read(root)?.ok_or_else(|| Error::NoStore(root.to_path_buf()))?;
        if marker.id.is_none() {
            marker.id = Some(uuid::Uuid::new_v4());
            marker.write(root)?;
        }
    }
    let kb = keybag_of(root, &marker, place)?;
    if marker.keys_in_store {
        kb.init()?;
        return Ok(kb);
    }
    kb.init()?;
    if has_keys(&root.join("keys"))? {
        // A move whose marker was written but whose keys were not yet removed there, or keys
        // that came back (a folder-sync tool, a backup, an older kiln): taken in, then removed.
        let _x = gc.exclusive().map_err(|e| Error::io(root.join("GC"), e))?;
        absorb_keys(root, &kb)?;
    }
    match owner_of(&kb)? {
        Some(o) if o == canonical(root)? => Ok(kb),
        Some(o) if is_copy_of(&o, &marker) => {
            let _x = gc.exclusive().map_err(|e| Error::io(root.join("GC"), e))?;
            let now = Marker::read(root)?.ok_or_else(|| Error::NoStore(root.to_path_buf()))?;
            if now != marker {
                // Another process gave it its own keybag meanwhile.
                return keybag_of(root, &now, place);
            }
            own_keybag(root, &kb, marker, place)
        }
        _ => {
            claim(&kb, root)?;
            Ok(kb)
        }
    }
}

/// Moves a format 1 store's keys out of its folder (holding the store's GC lock exclusively):
/// an id (written into the marker first, so an interrupted move resumes with the same one),
/// every key copied (durably) into the new keybag, the marker rewritten (the move's commit
/// point), then the keys removed from `ROOT/keys/` (its shared marks stay: every kiln, older
/// processes still running included, looks for them there).
fn move_out(root: &Path, mut marker: Marker, place: &KeyPlace) -> Result<Marker> {
    if marker.id.is_none() {
        marker.id = Some(uuid::Uuid::new_v4());
        marker.write(root)?;
    }
    let old = Keybag::new(root.join("keys"));
    let new_marker = Marker {
        version: STORE_VERSION,
        id: marker.id,
        keys_in_store: false,
    };
    let new = keybag_of(root, &new_marker, place)?;
    new.init()?;
    copy_keys(&old, &new)?;
    claim(&new, root)?;
    new_marker.write(root)?;
    absorb_keys(root, &new)?;
    Ok(new_marker)
}

/// Whether folder `dir` holds a key file.
fn has_keys(dir: &Path) -> Result<bool> {
    match std::fs::read_dir(dir) {
        Ok(rd) => Ok(rd
            .filter_map(|e| e.ok())
            .any(|e| e.file_name().to_string_lossy().ends_with(".key"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::io(dir, e)),
    }
}

/// Takes the keys left in `ROOT/keys/` into keybag `kb` (outside), then removes them there
/// (holding the store's GC lock exclusively). A key the keybag holds already must be the same;
/// another is refused, nothing removed.
fn absorb_keys(root: &Path, kb: &Keybag) -> Result<()> {
    let dir = root.join("keys");
    let old = Keybag::new(&dir);
    for l in old.lineages()? {
        let Some(k) = old.get(&l)? else { continue };
        match kb.get(&l)? {
            None => kb.put(&l, &k, true)?,
            Some(have) if have.raw() == k.raw() => {}
            Some(_) => {
                return Err(Error::InvalidArgument(format!(
                    "{} holds another key than {} for the same lineage: remove the one that \
                     is wrong (nothing changed)",
                    old.key_path(&l).display(),
                    kb.key_path(&l).display()
                )))
            }
        }
        old.remove(&l)?;
    }
    crate::storage::sync_dir(&dir).map_err(|e| Error::io(&dir, e))
}

/// Gives a copied store an id and a keybag of its own, its keys copied from `shared` (holding
/// the store's GC lock exclusively).
fn own_keybag(root: &Path, shared: &Keybag, marker: Marker, place: &KeyPlace) -> Result<Keybag> {
    let mine = Marker {
        id: Some(uuid::Uuid::new_v4()),
        ..marker
    };
    let kb = keybag_of(root, &mine, place)?;
    kb.init()?;
    copy_keys(shared, &kb)?;
    claim(&kb, root)?;
    mine.write(root)?;
    Ok(kb)
}

fn copy_keys(from: &Keybag, to: &Keybag) -> Result<()> {
    for l in from.lineages()? {
        if let Some(k) = from.get(&l)? {
            to.put(&l, &k, true)?;
        }
    }
    Ok(())
}

fn canonical(root: &Path) -> Result<PathBuf> {
    std::fs::canonicalize(root).map_err(|e| Error::io(root, e))
}

/// Records in keybag `kb` that it belongs to the store at `root`.
fn claim(kb: &Keybag, root: &Path) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    kb.put_file(OWNER, canonical(root)?.as_os_str().as_bytes())
}

/// The store folder keybag `kb` belongs to, if it says.
fn owner_of(kb: &Keybag) -> Result<Option<PathBuf>> {
    use std::os::unix::ffi::OsStrExt;
    let p = kb.dir().join(OWNER);
    match std::fs::read(&p) {
        Ok(b) => Ok(Some(PathBuf::from(std::ffi::OsStr::from_bytes(&b)))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(&p, e)),
    }
}

/// Whether the folder `other` still holds a store with `marker`'s id (this store is then a copy
/// of it, or it of this one).
fn is_copy_of(other: &Path, marker: &Marker) -> bool {
    matches!(Marker::read(other), Ok(Some(m)) if m.id == marker.id && !m.keys_in_store)
}
