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
    /// The replicas' head records of database id `id` this store remembers (on a remote that
    /// keeps one per replica), by name.
    pub fn remembered(&self, id: &str) -> io::Result<Vec<String>> {
        let rd = match std::fs::read_dir(&self.dir) {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        for e in rd {
            let name = e?.file_name();
            let Some(slot) = name.to_str().and_then(|n| n.strip_suffix(".json")) else {
                continue;
            };
            if crate::split_head_name(slot).0 == id
                && slot.contains('~')
                && self.load(slot).0.etag.is_some()
            {
                out.push(slot.to_owned());
            }
        }
        out.sort();
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
