//! A store's remembered remotes: for each database, the remotes it syncs with, by name
//! (`kiln remote add|list|remove`), so `kiln sync DB` needs no URL. Kept in
//! `<store>/sync/remotes.json` (`{"version": 1, "databases": {DB: {NAME: URL}}}`). A database
//! no remote names is never uploaded anywhere (selective sync).

use crate::{FolderRemote, Remote};
use kiln::Store;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;

/// The remembered remotes of a store's databases.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Remotes {
    version: u32,
    databases: BTreeMap<String, BTreeMap<String, String>>,
    #[serde(skip)]
    path: PathBuf,
}

/// Checks a remote's name: 1–64 characters of `A–Z a–z 0–9 . _ -`, not starting with `.` or
/// `-` (it may look like a flag).
pub fn check_remote_name(name: &str) -> io::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(['.', '-'])
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{name:?} is not a remote name (1–64 of A–Z a–z 0–9 . _ -, not starting with . or -)"
            ),
        ))
    }
}

impl Remotes {
    /// The remotes remembered in `store` (none when it never had any).
    pub fn load(store: &Store) -> io::Result<Remotes> {
        let path = store.root().join("sync").join("remotes.json");
        let mut r = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice::<Remotes>(&b).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: {e}", path.display()),
                )
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Remotes::default(),
            Err(e) => return Err(e),
        };
        if r.version > 1 {
            return Err(io::Error::other(format!(
                "{} is of version {}, newer than this kiln's; upgrade kiln",
                path.display(),
                r.version
            )));
        }
        r.version = 1;
        r.path = path;
        Ok(r)
    }

    /// Writes the remotes back (whole, atomically).
    pub fn save(&self) -> io::Result<()> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let json = serde_json::to_vec_pretty(self).map_err(io::Error::other)?;
        crate::state::write_atomic(&self.path, &json)
    }

    /// Remembers remote `name` at `url` for database `db`; false when it was there already
    /// with that URL. Another URL under the name is refused (remove it first).
    pub fn add(&mut self, db: &str, name: &str, url: &str) -> io::Result<bool> {
        check_remote_name(name)?;
        let m = self.databases.entry(db.to_owned()).or_default();
        match m.get(name) {
            Some(u) if u == url => Ok(false),
            Some(u) => Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("database '{db}' has a remote '{name}' already ({u}); remove it first"),
            )),
            None => {
                m.insert(name.to_owned(), url.to_owned());
                Ok(true)
            }
        }
    }

    /// Forgets remote `name` of database `db`; false when there was none.
    pub fn remove(&mut self, db: &str, name: &str) -> bool {
        let Some(m) = self.databases.get_mut(db) else {
            return false;
        };
        let had = m.remove(name).is_some();
        if m.is_empty() {
            self.databases.remove(db);
        }
        had
    }

    /// Forgets every remote of database `db` (it was dropped).
    pub fn forget_db(&mut self, db: &str) -> bool {
        self.databases.remove(db).is_some()
    }

    /// Database `db`'s remotes, `(name, url)` by name.
    pub fn of(&self, db: &str) -> Vec<(String, String)> {
        self.databases
            .get(db)
            .map(|m| m.iter().map(|(n, u)| (n.clone(), u.clone())).collect())
            .unwrap_or_default()
    }

    /// Every database with a remote of that name, with its URL.
    pub fn with_remote(&self, name: &str) -> Vec<(String, String)> {
        self.databases
            .iter()
            .filter_map(|(db, m)| m.get(name).map(|u| (db.clone(), u.clone())))
            .collect()
    }

    /// Every database with a remote, and its remotes.
    pub fn all(&self) -> Vec<(String, Vec<(String, String)>)> {
        self.databases
            .keys()
            .map(|db| (db.clone(), self.of(db)))
            .collect()
    }
}

/// How to reach remotes: an S3-compatible server's settings, and the token a kiln sync server
/// asks for.
#[derive(Clone, Debug, Default)]
pub struct RemoteConfig {
    /// For `s3://` remotes.
    pub s3: crate::S3Config,
    /// For `http(s)://` remotes: the bearer token (docs/server.md "Tokens").
    pub token: Option<String>,
}

impl RemoteConfig {
    /// From the environment: the usual `AWS_*` variables ([`crate::S3Config::from_env`]) and
    /// `KILN_TOKEN`.
    pub fn from_env() -> RemoteConfig {
        RemoteConfig {
            s3: crate::S3Config::from_env(),
            token: std::env::var("KILN_TOKEN").ok().filter(|t| !t.is_empty()),
        }
    }
}

/// Opens the remote a URL names: a folder (`/path`, `./path`, `file:///path`), an
/// S3-compatible bucket (`s3://bucket/prefix`) or a kiln sync server (`http://host:port`,
/// `https://…`), with settings and token from the environment ([`RemoteConfig::from_env`]).
pub fn open_remote(url: &str) -> io::Result<Box<dyn Remote>> {
    open_remote_with(url, &RemoteConfig::from_env())
}

/// [`open_remote`], with the settings of `cfg`.
pub fn open_remote_with(url: &str, cfg: &RemoteConfig) -> io::Result<Box<dyn Remote>> {
    if url.starts_with("s3://") {
        return Ok(Box::new(crate::S3Remote::open(url, cfg.s3.clone())?));
    }
    if url.starts_with("http://") || url.starts_with("https://") {
        return Ok(Box::new(crate::HttpRemote::open(url, cfg.token.clone())?));
    }
    if let Some(p) = url.strip_prefix("file://") {
        if !p.starts_with('/') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{url}: a file URL names an absolute path (file:///path)"),
            ));
        }
        return Ok(Box::new(FolderRemote::open(p)?));
    }
    if let Some((scheme, _)) = url.split_once("://") {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{url}: remotes of scheme {scheme:?} are not supported (a path or file:///path, s3://bucket/prefix, http(s)://host:port)"),
        ));
    }
    Ok(Box::new(FolderRemote::open(url)?))
}

/// File-sets fetched on first read from the remotes a store remembers (`kiln remote add`), in
/// the order remembered: what the CLI gives [`Store::set_fileset_source`], so a replica synced
/// without attached files' bytes (the default: on demand) reads them when it needs them. The
/// remotes are opened on the first file-set missing here. A remote that fails is passed over
/// for the next; when every one failed, the last failure is the answer.
pub struct RememberedFiles {
    urls: Vec<String>,
    cfg: RemoteConfig,
    opened: std::sync::Mutex<Option<Vec<Box<dyn Remote>>>>,
}

impl std::fmt::Debug for RememberedFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RememberedFiles")
            .field("urls", &self.urls)
            .finish()
    }
}

impl RememberedFiles {
    /// The remotes `store` remembers for any of its databases (`None`: it remembers none).
    pub fn of(store: &Store, cfg: RemoteConfig) -> io::Result<Option<RememberedFiles>> {
        let mut urls: Vec<String> = Vec::new();
        for (_, rs) in Remotes::load(store)?.all() {
            for (_, u) in rs {
                if !urls.contains(&u) {
                    urls.push(u);
                }
            }
        }
        Ok((!urls.is_empty()).then(|| RememberedFiles {
            urls,
            cfg,
            opened: std::sync::Mutex::new(None),
        }))
    }
}

impl kiln::FileSource for RememberedFiles {
    fn fetch(&self, name: &kiln::FileName, out: &mut dyn std::io::Write) -> io::Result<bool> {
        let mut opened = self.opened.lock().unwrap_or_else(|p| p.into_inner());
        let mut failed = None;
        let remotes = opened.get_or_insert_with(|| {
            self.urls
                .iter()
                .filter_map(|u| match crate::open_remote_with(u, &self.cfg) {
                    Ok(r) => Some(r),
                    Err(e) => {
                        failed = Some(e);
                        None
                    }
                })
                .collect()
        });
        for r in remotes.iter() {
            match r.get_file(crate::Kind::FileSet, name) {
                Ok(Some(b)) => return out.write_all(&b).map(|()| true),
                Ok(None) => {}
                Err(e) => failed = Some(e),
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(false),
        }
    }
}
