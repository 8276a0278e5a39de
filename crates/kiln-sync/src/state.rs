//! What a store remembers of its last sync of a database with a remote: the remote head
//! record's version and bytes as last seen, the remote's clock heads then (a later state must
//! descend from them), and the digest of the local state that was in sync with it. Kept in
//! `<store>/sync/<remote>/<name>.json` and `.record`, where `<name>` is the head record's
//! (the database id, or `<db id>~<replica>` on a remote that keeps one per replica) and
//! `<remote>` the first 16 bytes of the BLAKE3 hash of the remote's location, hex; losing them
//! costs a sync a full comparison, never data.

use crate::Etag;
use kiln::{Cid, Store};
use serde::{Deserialize, Serialize};
use std::io;
use std::path::PathBuf;

/// The memory of one (database, remote) pair.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Memory {
    /// The remote head record's version last seen.
    pub etag: Option<String>,
    /// The remote's clock heads then.
    pub heads: Vec<String>,
    /// The digest (hex) of the local state that matched it.
    pub digest: String,
}

impl Memory {
    pub fn etag(&self) -> Option<Etag> {
        self.etag.clone().map(Etag)
    }

    pub fn heads(&self) -> Vec<Cid> {
        self.heads.iter().filter_map(|h| h.parse().ok()).collect()
    }
}

/// Where a store keeps its memory of syncs with one remote.
pub(crate) struct Place {
    dir: PathBuf,
}

impl Place {
    pub fn new(store: &Store, location: &str) -> Place {
        let h = blake3::hash(location.as_bytes());
        let hex: String = h.as_bytes()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Place {
            dir: store.root().join("sync").join(hex),
        }
    }

    /// Whether this store probed the remote (see [`crate::probe`]) before.
    pub fn probed(&self) -> bool {
        self.dir.join("probed").exists()
    }

    /// Remembers that the remote passed the probe.
    pub fn mark_probed(&self) -> io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        write_atomic(&self.dir.join("probed"), b"")
    }

    /// The memory of database id `id`, with the record it last saw (default: none).
    pub fn load(&self, id: &str) -> (Memory, Option<Vec<u8>>) {
        let m: Memory = std::fs::read(self.dir.join(format!("{id}.json")))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let rec = std::fs::read(self.dir.join(format!("{id}.record"))).ok();
        match (&m.etag, rec) {
            (Some(_), Some(r)) => (m, Some(r)),
            _ => (Memory::default(), None),
        }
    }

    /// Remembers `m` and the record it saw (the record first: a memory names only a record
    /// kept whole).
    pub fn save(&self, id: &str, m: &Memory, record: &[u8]) -> io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        write_atomic(&self.dir.join(format!("{id}.record")), record)?;
        let json = serde_json::to_vec_pretty(m).map_err(io::Error::other)?;
        write_atomic(&self.dir.join(format!("{id}.json")), &json)
    }
}

impl Place {
    /// The version of head record `name` last seen (its memory's alone: the record's bytes
    /// are not read).
    pub fn etag(&self, name: &str) -> Option<Etag> {
        std::fs::read(self.dir.join(format!("{name}.json")))
            .ok()
            .and_then(|b| serde_json::from_slice::<Memory>(&b).ok())
            .and_then(|m| m.etag())
    }

    /// The replicas' head records this store remembers a version of (on a remote that keeps
    /// one per replica), by database id: one read of the folder for all databases.
    pub fn remembered(&self) -> io::Result<std::collections::HashMap<String, Vec<String>>> {
        let mut out: std::collections::HashMap<String, Vec<String>> = Default::default();
        let rd = match std::fs::read_dir(&self.dir) {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e),
        };
        for e in rd {
            let name = e?.file_name();
            let Some(slot) = name.to_str().and_then(|n| n.strip_suffix(".json")) else {
                continue;
            };
            if let (db, Some(_)) = crate::split_head_name(slot) {
                if self.etag(slot).is_some() {
                    out.entry(db.to_owned()).or_default().push(slot.to_owned());
                }
            }
        }
        Ok(out)
    }

    /// Forgets what was remembered of head record `id` (damaged).
    pub fn forget(&self, id: &str) -> io::Result<()> {
        for ext in ["json", "record"] {
            match std::fs::remove_file(self.dir.join(format!("{id}.{ext}"))) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }
}

/// The id this store's replicas go by on remotes that keep a head record per replica: 16 random
/// bytes (hex) kept in `<store>/sync/replica.json` with the store's folder and the machine it was
/// made for (`/etc/machine-id`, else the host name). A copy of the store (another folder) or
/// the same folder on another machine (synced there by another tool) makes an id of its own,
/// so no two replicas ever write one record; a moved store does too (its old record stays
/// behind, named by no one: see docs/format.md on removing it).
pub(crate) fn replica_id(store: &Store) -> io::Result<String> {
    #[derive(Serialize, Deserialize, PartialEq)]
    struct Replica {
        replica: String,
        root: String,
        machine: String,
    }
    let root = std::fs::canonicalize(store.root())?
        .to_string_lossy()
        .into_owned();
    let machine = [
        "/etc/machine-id",
        "/var/lib/dbus/machine-id",
        "/proc/sys/kernel/hostname",
    ]
    .iter()
    .find_map(|p| {
        std::fs::read_to_string(p)
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
    })
    .unwrap_or_default();
    let dir = store.root().join("sync");
    let path = dir.join("replica.json");
    if let Some(r) = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice::<Replica>(&b).ok())
    {
        if r.root == root
            && r.machine == machine
            && crate::check_head_name(&format!("x~{}", r.replica)).is_ok()
        {
            return Ok(r.replica);
        }
    }
    let mut rnd = [0u8; 16];
    getrandom::getrandom(&mut rnd).map_err(io::Error::other)?;
    let replica: String = rnd.iter().map(|b| format!("{b:02x}")).collect();
    let r = Replica {
        replica,
        root,
        machine,
    };
    std::fs::create_dir_all(&dir)?;
    let json = serde_json::to_vec_pretty(&r).map_err(io::Error::other)?;
    // Two processes making one at once: the first written stands, the other reads it.
    let tmp = dir.join(format!("replica.json.tmp-{}", &r.replica[..8]));
    write_atomic(&tmp, &json)?;
    let linked = std::fs::hard_link(&tmp, &path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(r.replica),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let b = std::fs::read(&path)?;
            match serde_json::from_slice::<Replica>(&b) {
                Ok(theirs) if theirs.root == r.root && theirs.machine == r.machine => {
                    Ok(theirs.replica)
                }
                // Another place's (a copy's): replaced by this one's.
                _ => {
                    write_atomic(&path, &json)?;
                    Ok(r.replica)
                }
            }
        }
        Err(e) => Err(e),
    }
}

pub(crate) fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> io::Result<()> {
    let mut rnd = [0u8; 8];
    getrandom::getrandom(&mut rnd).map_err(io::Error::other)?;
    let tmp = path.with_extension(format!(
        "tmp-{}",
        rnd.iter().map(|b| format!("{b:02x}")).collect::<String>()
    ));
    let r = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut f, bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    r.inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}
