//! A remote in an S3-compatible bucket: files as the folder remote keeps them, as object keys
//! under a prefix, and a head record per replica of each database, on top of `object_store`'s
//! S3 client.
//!
//! ```text
//! PREFIX/KILN-REMOTE                  marker, JSON {"kiln_remote": 2}
//! PREFIX/files/ab/<hash>.kdf          diff files
//! PREFIX/filesets/ab/<hash>.kfs       file-sets
//! PREFIX/heads/<db>/<replica>.head    a replica's head record (`<db>~<replica>` in the API):
//!                                     8 random bytes ‖ the record's bytes
//! PREFIX/heads/<name>.head (empty)    a removed head record's tombstone (reads as absent)
//! ```
//!
//! Each replica writes only its own record and a sync takes in the union (see `sync`), so
//! nothing relies on the server's conditional writes, which many S3-compatible servers lack or
//! do without atomicity. They are still sent where they cost nothing: a create is a PUT with
//! `If-None-Match: *`, a write on a version a PUT with `If-Match: <etag>` (the version is the
//! object's ETag). The 8 random bytes in front of a record make every write's bytes, and so
//! its ETag, new (an ETag is often the MD5 of the bytes): a record removed and made again, or
//! written twice with the same bytes, never matches a version read before. (Names without a
//! replica, `heads/<db>.head`, are what [`crate::probe`] writes.)
//!
//! S3 has no conditional delete that `object_store` can send, so removing a head record
//! replaces it by an empty object, a tombstone, which reads and lists as absent. A tombstone
//! stays behind (0 bytes; listing skips it by its size, without a request).
//!
//! Reading a head record on a known version sends `If-None-Match: <etag>`: one request, no
//! bytes when the server honours it, and still one request when it ignores it (the ETag it
//! returns is compared here). Listing head records is one LIST request per 1,000, the versions
//! taken from the listing; a server that leaves ETags out of listings costs a HEAD request per
//! record listed.
//!
//! The core library has no async runtime; an [`S3Remote`] owns a small one (a current-thread
//! tokio runtime, its I/O and timers) and blocks on each request. Its methods must not be
//! called from inside an async runtime.

use crate::{check_head_name, split_head_name, Conflict, Etag, FileName, HeadRead, Kind, Remote};
use object_store::aws::{AmazonS3, AmazonS3Builder, S3ConditionalPut};
use object_store::client::{
    HttpClient, HttpConnector, HttpError, HttpRequest, HttpResponse, HttpService, ReqwestConnector,
};
use object_store::list::{PaginatedListOptions, PaginatedListStore};
use object_store::path::Path;
use object_store::{
    ClientOptions, GetOptions, ObjectMeta, ObjectStore, ObjectStoreExt, PutMode, PutOptions,
    PutPayload, RetryConfig, UpdateVersion,
};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The marker object's name under the prefix (the folder remote's).
const MARKER: &str = "KILN-REMOTE";
/// The layout a bucket remote has (the marker says): 2, head records per replica.
const LAYOUT: u64 = 2;
/// Keys in one LIST request (S3's largest page).
const PAGE: usize = 1000;
/// The largest object one PUT may carry (S3's limit).
const MAX_PUT: usize = 5 << 30;

/// Where an S3-compatible server is and how to sign requests to it (see
/// [`S3Config::from_env`] for the usual environment variables).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct S3Config {
    /// The server's URL (`http://127.0.0.1:9000`); `None`: AWS's endpoint for the region.
    pub endpoint: Option<String>,
    /// The region requests are signed for; `None`: `us-east-1`.
    pub region: Option<String>,
    /// The access key id (required, with the secret key).
    pub access_key: Option<String>,
    /// The secret access key (required, with the access key).
    pub secret_key: Option<String>,
    /// A session token, for temporary credentials.
    pub session_token: Option<String>,
    /// Allow plain HTTP (an endpoint on loopback, a test server); otherwise HTTPS only.
    pub allow_http: bool,
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key", &self.access_key)
            .field("secret_key", &self.secret_key.as_ref().map(|_| "<hidden>"))
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<hidden>"),
            )
            .field("allow_http", &self.allow_http)
            .finish()
    }
}

impl S3Config {
    /// The configuration the usual environment variables give: `AWS_ENDPOINT_URL_S3` (else
    /// `AWS_ENDPOINT_URL`), `AWS_REGION` (else `AWS_DEFAULT_REGION`), `AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`; plain HTTP is allowed when the endpoint
    /// is an `http://` URL. Empty variables count as unset.
    pub fn from_env() -> S3Config {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let endpoint = var("AWS_ENDPOINT_URL_S3").or_else(|| var("AWS_ENDPOINT_URL"));
        S3Config {
            allow_http: endpoint
                .as_deref()
                .is_some_and(|e| e.to_ascii_lowercase().starts_with("http://")),
            endpoint,
            region: var("AWS_REGION").or_else(|| var("AWS_DEFAULT_REGION")),
            access_key: var("AWS_ACCESS_KEY_ID"),
            secret_key: var("AWS_SECRET_ACCESS_KEY"),
            session_token: var("AWS_SESSION_TOKEN"),
        }
    }

    /// Sets the endpoint (plain HTTP allowed exactly when it is an `http://` URL).
    pub fn with_endpoint(mut self, endpoint: String) -> S3Config {
        self.allow_http = endpoint.to_ascii_lowercase().starts_with("http://");
        self.endpoint = Some(endpoint);
        self
    }
}

/// A remote in an S3-compatible bucket, under a prefix (see the module doc for its layout and
/// how its compare-and-swap works).
pub struct S3Remote {
    store: AmazonS3,
    bucket: String,
    /// The keys' prefix without a trailing `/` (empty: the bucket's root).
    prefix: String,
    location: String,
    requests: Arc<AtomicU64>,
    /// Dropped last: the client's connections live on it.
    rt: tokio::runtime::Runtime,
}

impl std::fmt::Debug for S3Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Remote")
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

/// Splits `s3://bucket/prefix` into the bucket and the prefix (no leading or trailing `/`).
fn parse_url(url: &str) -> io::Result<(String, String)> {
    let bad = |why: &str| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{url:?} is not an S3 remote URL ({why}): expected s3://bucket/prefix"),
        )
    };
    let rest = url
        .strip_prefix("s3://")
        .ok_or_else(|| bad("it does not start with s3://"))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let bucket_ok = !bucket.is_empty()
        && bucket.len() <= 255
        && bucket
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !bucket_ok {
        return Err(bad(
            "the bucket name is empty or has characters a bucket cannot have",
        ));
    }
    let prefix = prefix.trim_matches('/');
    let prefix_ok = prefix.is_empty()
        || prefix.split('/').all(|part| {
            !part.is_empty()
                && part != "."
                && part != ".."
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        });
    if !prefix_ok {
        return Err(bad(
            "a prefix is parts of A-Z a-z 0-9 . _ - separated by single slashes, none . or ..",
        ));
    }
    Ok((bucket.to_owned(), prefix.to_owned()))
}

/// Hands out `reqwest` clients that count the requests they send.
#[derive(Debug)]
struct Counting(Arc<AtomicU64>);

impl HttpConnector for Counting {
    fn connect(&self, options: &ClientOptions) -> object_store::Result<HttpClient> {
        let inner = ReqwestConnector::default().connect(options)?;
        Ok(HttpClient::new(CountingClient {
            inner,
            n: Arc::clone(&self.0),
        }))
    }
}

/// An HTTP client that counts the requests sent through it (retries too).
#[derive(Debug)]
struct CountingClient {
    inner: HttpClient,
    n: Arc<AtomicU64>,
}

type Pending<'a> = Pin<Box<dyn Future<Output = Result<HttpResponse, HttpError>> + Send + 'a>>;

impl HttpService for CountingClient {
    fn call<'a, 'b>(&'a self, req: HttpRequest) -> Pending<'b>
    where
        'a: 'b,
        Self: 'b,
    {
        self.n.fetch_add(1, Ordering::Relaxed);
        Box::pin(self.inner.execute(req))
    }
}

/// Whether an error is the server refusing a request's precondition.
fn refused(e: &object_store::Error) -> bool {
    matches!(
        e,
        object_store::Error::Precondition { .. }
            | object_store::Error::AlreadyExists { .. }
            | object_store::Error::NotFound { .. }
    )
}

impl S3Remote {
    /// Opens the remote at `url` (`s3://bucket/prefix`; the prefix may be empty or have
    /// several `/`-separated parts) on the server `cfg` names. Makes its marker when the prefix
    /// holds nothing; a prefix that holds something else than a remote is refused (a typo must
    /// not scatter files into a bucket's other contents), and so is a layout newer than this
    /// kiln's. The bucket must exist. One request when the remote is there already (reading
    /// its marker). Credentials are required: no instance or container credentials are looked
    /// up.
    pub fn open(url: &str, cfg: S3Config) -> io::Result<S3Remote> {
        let (bucket, prefix) = parse_url(url)?;
        let (Some(access_key), Some(secret_key)) = (cfg.access_key, cfg.secret_key) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "no S3 credentials for {url}: give an access key and a secret key \
                     (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
                ),
            ));
        };
        let region = cfg.region.unwrap_or_else(|| "us-east-1".to_owned());
        let requests = Arc::new(AtomicU64::new(0));
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(&bucket)
            .with_region(region)
            .with_access_key_id(access_key)
            .with_secret_access_key(secret_key)
            // Path-style requests (`endpoint/bucket/key`): what a server on loopback or behind
            // one host name answers.
            .with_virtual_hosted_style_request(false)
            .with_allow_http(cfg.allow_http)
            .with_conditional_put(S3ConditionalPut::ETagMatch)
            .with_retry(RetryConfig {
                max_retries: 5,
                retry_timeout: Duration::from_secs(60),
                ..RetryConfig::default()
            })
            .with_http_connector(Counting(Arc::clone(&requests)));
        if let Some(t) = cfg.session_token {
            builder = builder.with_token(t);
        }
        let place = if prefix.is_empty() {
            bucket.clone()
        } else {
            format!("{bucket}/{prefix}")
        };
        let location = match &cfg.endpoint {
            Some(endpoint) => {
                if endpoint.to_ascii_lowercase().starts_with("http://") && !cfg.allow_http {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!(
                            "the S3 endpoint {endpoint} is plain HTTP, which is not allowed \
                             (allow_http is off)"
                        ),
                    ));
                }
                builder = builder.with_endpoint(endpoint);
                format!("s3://{place}?endpoint={}", endpoint.trim_end_matches('/'))
            }
            None => format!("s3://{place}"),
        };
        let store = builder.build().map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("cannot set up the S3 remote {location}: {e}"),
            )
        })?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| io::Error::other(format!("cannot start the S3 client's runtime: {e}")))?;
        let remote = S3Remote {
            store,
            bucket,
            prefix,
            location,
            requests,
            rt,
        };
        remote.check_marker()?;
        Ok(remote)
    }

    /// HTTP requests sent so far through this remote (retries included): what a caller pays.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// The key `rest` under the prefix.
    fn key(&self, rest: &str) -> Path {
        if self.prefix.is_empty() {
            Path::from(rest)
        } else {
            Path::from(format!("{}/{rest}", self.prefix))
        }
    }

    /// The raw key prefix `dir/` for listing (`dir` empty: everything under the prefix).
    fn list_prefix(&self, dir: &str) -> String {
        match (self.prefix.is_empty(), dir.is_empty()) {
            (true, true) => String::new(),
            (true, false) => format!("{dir}/"),
            (false, true) => format!("{}/", self.prefix),
            (false, false) => format!("{}/{dir}/", self.prefix),
        }
    }

    fn dir(kind: Kind) -> (&'static str, &'static str) {
        match kind {
            Kind::Diff => ("files", "kdf"),
            Kind::FileSet => ("filesets", "kfs"),
        }
    }

    fn file_key(&self, kind: Kind, name: &FileName) -> Path {
        let (dir, ext) = Self::dir(kind);
        let h = name.to_string();
        self.key(&format!("{dir}/{}/{h}.{ext}", &h[..2]))
    }

    /// A head record's key: `heads/<db>/<replica>.head` for a replica's (the remote's own
    /// kind), `heads/<db>.head` for a name without a replica (the probe's).
    fn head_key(&self, name: &str) -> io::Result<Path> {
        check_head_name(name)?;
        Ok(match split_head_name(name) {
            (db, Some(replica)) => self.key(&format!("heads/{db}/{replica}.head")),
            (db, None) => self.key(&format!("heads/{db}.head")),
        })
    }

    /// A proposal record's key: `proposals/<db>/<name>`.
    fn proposal_key(&self, db: &str, name: &str) -> io::Result<Path> {
        crate::check_db(db)?;
        crate::check_proposal_record(name)?;
        Ok(self.key(&format!("proposals/{db}/{name}")))
    }

    /// The error of `what` on `key`, as an `io::Error` that says where.
    fn err(&self, what: &str, key: &str, e: object_store::Error) -> io::Error {
        use object_store::Error as E;
        let kind = match &e {
            E::NotFound { .. } => io::ErrorKind::NotFound,
            E::PermissionDenied { .. } | E::Unauthenticated { .. } => {
                io::ErrorKind::PermissionDenied
            }
            _ => io::ErrorKind::Other,
        };
        io::Error::new(
            kind,
            format!("the S3 remote {}: {what} {key}: {e}", self.location),
        )
    }

    fn etag_of(&self, key: &str, e_tag: Option<String>) -> io::Result<Etag> {
        e_tag.map(Etag).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the S3 remote {}: the server gave no ETag for {key} (needed for \
                     compare-and-swap)",
                    self.location
                ),
            )
        })
    }

    /// Refuses an object larger than one S3 upload takes.
    fn check_size(&self, key: &Path, len: usize) -> io::Result<()> {
        if len > MAX_PUT {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "the S3 remote {}: {key} is {len} bytes, more than one S3 upload takes \
                     (5 GiB)",
                    self.location
                ),
            ));
        }
        Ok(())
    }

    /// An object's bytes; `None` when absent.
    fn get(&self, key: &Path, what: &str) -> io::Result<Option<Vec<u8>>> {
        self.get_raw(key, GetOptions::default())
            .map(|r| r.map(|(b, _)| b))
            .map_err(|e| self.err(what, key.as_ref(), e))
    }

    /// A GET; `None` when absent. Errors (a refused precondition too) are the caller's.
    fn get_raw(
        &self,
        key: &Path,
        opts: GetOptions,
    ) -> object_store::Result<Option<(Vec<u8>, ObjectMeta)>> {
        self.rt.block_on(async {
            match self.store.get_opts(key, opts).await {
                Ok(r) => {
                    let meta = r.meta.clone();
                    Ok(Some((r.bytes().await?.to_vec(), meta)))
                }
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        })
    }

    /// A HEAD request; `None` when absent.
    fn head(&self, key: &Path, what: &str) -> io::Result<Option<ObjectMeta>> {
        match self.rt.block_on(self.store.head(key)) {
            Ok(m) => Ok(Some(m)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err(what, key.as_ref(), e)),
        }
    }

    fn put(
        &self,
        key: &Path,
        payload: PutPayload,
        mode: PutMode,
    ) -> object_store::Result<object_store::PutResult> {
        let opts = PutOptions {
            mode,
            ..PutOptions::default()
        };
        self.rt.block_on(self.store.put_opts(key, payload, opts))
    }

    /// One page of keys under raw prefix `dir` after `token`.
    fn list_page(
        &self,
        dir: &str,
        token: Option<String>,
    ) -> io::Result<(Vec<ObjectMeta>, Option<String>)> {
        let opts = PaginatedListOptions {
            max_keys: Some(PAGE),
            page_token: token,
            ..PaginatedListOptions::default()
        };
        let page = self
            .rt
            .block_on(self.store.list_paginated(Some(dir), opts))
            .map_err(|e| {
                let what = match dir {
                    "" => "the bucket".to_owned(),
                    d => format!("the keys under {d}"),
                };
                self.err("listing", &what, e)
            })?;
        Ok((page.result.objects, page.page_token))
    }

    /// Every object under raw prefix `dir`, one LIST request per [`PAGE`] keys, each page
    /// handed to `each`.
    fn list_all(
        &self,
        dir: &str,
        mut each: impl FnMut(ObjectMeta) -> io::Result<()>,
    ) -> io::Result<()> {
        let mut token = None;
        loop {
            let (objects, next) = self.list_page(dir, token)?;
            for m in objects {
                each(m)?;
            }
            match next {
                Some(t) => token = Some(t),
                None => return Ok(()),
            }
        }
    }

    /// Checks the marker, or makes it when the prefix is empty (see [`S3Remote::open`]).
    fn check_marker(&self) -> io::Result<()> {
        let key = self.key(MARKER);
        if let Some(b) = self.get(&key, "reading the marker")? {
            return self.check_marker_bytes(&b);
        }
        let dir = self.list_prefix("");
        let (objects, _) = self.list_page(&dir, None).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "{e} (does the bucket {} exist, and may these credentials list it?)",
                    self.bucket
                ),
            )
        })?;
        if !objects.is_empty() {
            return Err(io::Error::other(format!(
                "{} holds objects and is not a kiln remote (no {MARKER}): refusing to make \
                 one there",
                self.location
            )));
        }
        let marker = format!("{{\"kiln_remote\": {LAYOUT}}}\n");
        match self.put(&key, PutPayload::from(marker.into_bytes()), PutMode::Create) {
            Ok(_) => Ok(()),
            // Made meanwhile by another opener: check theirs.
            Err(object_store::Error::AlreadyExists { .. }) => {
                match self.get(&key, "reading the marker")? {
                    Some(b) => self.check_marker_bytes(&b),
                    None => Err(io::Error::other(format!(
                        "{}: the marker {MARKER} came and went while the remote was opened",
                        self.location
                    ))),
                }
            }
            Err(e) => Err(self.err("writing the marker", key.as_ref(), e)),
        }
    }

    fn check_marker_bytes(&self, b: &[u8]) -> io::Result<()> {
        let version = serde_json::from_slice::<serde_json::Value>(b)
            .ok()
            .and_then(|v| v.get("kiln_remote")?.as_u64());
        let ours = LAYOUT;
        match version {
            Some(v) if v == ours => Ok(()),
            Some(v) if v < ours => Err(io::Error::other(format!(
                "the remote at {} has layout {v} (one head record per database, by \
                 compare-and-swap), which kiln no longer keeps in a bucket: make a new remote \
                 (another prefix) and sync to it",
                self.location
            ))),
            Some(v) if v > ours => Err(io::Error::other(format!(
                "the remote at {} has layout {v}, newer than this kiln's ({ours}); upgrade kiln",
                self.location
            ))),
            _ => Err(io::Error::other(format!(
                "{} is not a kiln remote (its {MARKER} is damaged)",
                self.location
            ))),
        }
    }

    /// The head record's version now (`None`: absent, or a tombstone), for a conflict.
    fn now(&self, key: &Path) -> io::Result<Option<Etag>> {
        match self.head(key, "reading the head record of")? {
            Some(m) if m.size > 0 => self.etag_of(key.as_ref(), m.e_tag).map(Some),
            _ => Ok(None),
        }
    }

    /// A PUT of `payload` on `key` if it is still at `etag`: the new version, or the conflict.
    fn swap(
        &self,
        key: &Path,
        etag: &str,
        payload: PutPayload,
    ) -> io::Result<Result<Etag, Conflict>> {
        let mode = PutMode::Update(UpdateVersion {
            e_tag: Some(etag.to_owned()),
            version: None,
        });
        match self.put(key, payload, mode) {
            Ok(r) => self.etag_of(key.as_ref(), r.e_tag).map(Ok),
            Err(e) if refused(&e) => Ok(Err(Conflict {
                now: self.now(key)?,
            })),
            Err(e) => Err(self.err("writing the head record", key.as_ref(), e)),
        }
    }
}

impl Remote for S3Remote {
    fn location(&self) -> String {
        self.location.clone()
    }

    fn has_file(&self, kind: Kind, name: &FileName) -> io::Result<bool> {
        let key = self.file_key(kind, name);
        Ok(self.head(&key, "looking up")?.is_some())
    }

    fn put_file(&self, kind: Kind, name: &FileName, bytes: &[u8]) -> io::Result<()> {
        let key = self.file_key(kind, name);
        self.check_size(&key, bytes.len())?;
        match self.put(&key, PutPayload::from(bytes.to_vec()), PutMode::Create) {
            // There already: the same name is the same bytes.
            Ok(_) | Err(object_store::Error::AlreadyExists { .. }) => Ok(()),
            Err(e) => Err(self.err("uploading", key.as_ref(), e)),
        }
    }

    fn get_file(&self, kind: Kind, name: &FileName) -> io::Result<Option<Vec<u8>>> {
        let key = self.file_key(kind, name);
        self.get(&key, "downloading")
    }

    fn get_files(
        &self,
        kind: Kind,
        names: &[FileName],
        each: &mut dyn FnMut(usize, Option<Vec<u8>>) -> io::Result<()>,
    ) -> io::Result<()> {
        let keys: Vec<Path> = names.iter().map(|n| self.file_key(kind, n)).collect();
        crate::window::windowed(
            &self.rt,
            &self.location,
            keys.len(),
            |i| {
                let (store, key) = (self.store.clone(), keys[i].clone());
                Ok(Some(async move {
                    match store.get_opts(&key, GetOptions::default()).await {
                        Ok(r) => r.bytes().await.map(|b| Some(b.to_vec())),
                        Err(object_store::Error::NotFound { .. }) => Ok(None),
                        Err(e) => Err(e),
                    }
                }))
            },
            |i, r| {
                each(
                    i,
                    r.map_err(|e| self.err("downloading", keys[i].as_ref(), e))?,
                )
            },
        )
    }

    fn has_files(&self, kind: Kind, names: &[FileName]) -> io::Result<Vec<bool>> {
        let keys: Vec<Path> = names.iter().map(|n| self.file_key(kind, n)).collect();
        let mut out = vec![false; keys.len()];
        crate::window::windowed(
            &self.rt,
            &self.location,
            keys.len(),
            |i| {
                let (store, key) = (self.store.clone(), keys[i].clone());
                Ok(Some(async move {
                    match store.head(&key).await {
                        Ok(_) => Ok(true),
                        Err(object_store::Error::NotFound { .. }) => Ok(false),
                        Err(e) => Err(e),
                    }
                }))
            },
            |i, r| {
                out[i] = r.map_err(|e| self.err("looking up", keys[i].as_ref(), e))?;
                Ok(())
            },
        )?;
        Ok(out)
    }

    fn put_files(
        &self,
        kind: Kind,
        names: &[FileName],
        load: &mut dyn FnMut(usize) -> io::Result<Option<Vec<u8>>>,
    ) -> io::Result<Vec<bool>> {
        let keys: Vec<Path> = names.iter().map(|n| self.file_key(kind, n)).collect();
        let mut out = vec![false; keys.len()];
        crate::window::windowed(
            &self.rt,
            &self.location,
            keys.len(),
            |i| {
                let Some(bytes) = load(i)? else {
                    return Ok(None);
                };
                self.check_size(&keys[i], bytes.len())?;
                let (store, key) = (self.store.clone(), keys[i].clone());
                let opts = PutOptions {
                    mode: PutMode::Create,
                    ..PutOptions::default()
                };
                Ok(Some(async move {
                    match store.put_opts(&key, PutPayload::from(bytes), opts).await {
                        Ok(_) => Ok(true),
                        // There already: the same name is the same bytes.
                        Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
                        Err(e) => Err(e),
                    }
                }))
            },
            |i, r| {
                out[i] = r.map_err(|e| self.err("uploading", keys[i].as_ref(), e))?;
                Ok(())
            },
        )?;
        Ok(out)
    }

    fn list_files(&self, kind: Kind) -> io::Result<Vec<(FileName, u64)>> {
        let (dir, ext) = Self::dir(kind);
        let dir = self.list_prefix(dir);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let mut out = Vec::new();
        self.list_all(&dir, |m| {
            let name = m
                .location
                .as_ref()
                .strip_prefix(dir.as_str())
                .and_then(|rest| rest.split_once('/'))
                .and_then(|(_, f)| f.strip_suffix(ext)?.strip_suffix('.'))
                .and_then(FileName::parse);
            if let Some(name) = name {
                let age = now.saturating_sub(m.last_modified.timestamp()).max(0) as u64;
                out.push((name, age));
            }
            Ok(())
        })?;
        out.sort_by_key(|(n, _)| *n);
        Ok(out)
    }

    fn delete_file(&self, kind: Kind, name: &FileName) -> io::Result<()> {
        let key = self.file_key(kind, name);
        match self.rt.block_on(self.store.delete(&key)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.err("deleting", key.as_ref(), e)),
        }
    }

    fn read_head(&self, db: &str, known: Option<&Etag>) -> io::Result<HeadRead> {
        let key = self.head_key(db)?;
        let opts = GetOptions {
            if_none_match: known.map(|k| k.0.clone()),
            ..GetOptions::default()
        };
        let (b, meta) = match self.get_raw(&key, opts) {
            Ok(Some(found)) => found,
            Ok(None) => return Ok(HeadRead::Absent),
            Err(object_store::Error::NotModified { .. }) => return Ok(HeadRead::NotModified),
            Err(e) => return Err(self.err("reading the head record", key.as_ref(), e)),
        };
        if b.is_empty() {
            return Ok(HeadRead::Absent); // a tombstone
        }
        let etag = self.etag_of(key.as_ref(), meta.e_tag)?;
        if known == Some(&etag) {
            // (A server that ignores If-None-Match sent it all the same.)
            return Ok(HeadRead::NotModified);
        }
        if b.len() < 8 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the S3 remote {}: {key} is shorter than its 8 random bytes",
                    self.location
                ),
            ));
        }
        Ok(HeadRead::Found {
            bytes: b[8..].to_vec(),
            etag,
        })
    }

    fn write_head(
        &self,
        db: &str,
        expected: Option<&Etag>,
        bytes: &[u8],
    ) -> io::Result<Result<Etag, Conflict>> {
        let key = self.head_key(db)?;
        let mut r = [0u8; 8];
        getrandom::getrandom(&mut r).map_err(io::Error::other)?;
        let mut body = Vec::with_capacity(8 + bytes.len());
        body.extend_from_slice(&r);
        body.extend_from_slice(bytes);
        let payload = PutPayload::from(body);
        if let Some(e) = expected {
            return self.swap(&key, &e.0, payload);
        }
        match self.put(&key, payload.clone(), PutMode::Create) {
            Ok(r) => self.etag_of(key.as_ref(), r.e_tag).map(Ok),
            Err(object_store::Error::AlreadyExists { .. }) => {
                // A record, or a tombstone that a create replaces (on its version).
                match self.head(&key, "reading the head record of")? {
                    Some(m) if m.size == 0 => {
                        let tomb = self.etag_of(key.as_ref(), m.e_tag)?;
                        self.swap(&key, &tomb.0, payload)
                    }
                    Some(m) => Ok(Err(Conflict {
                        now: Some(self.etag_of(key.as_ref(), m.e_tag)?),
                    })),
                    None => Ok(Err(Conflict { now: None })),
                }
            }
            Err(e) => Err(self.err("writing the head record", key.as_ref(), e)),
        }
    }

    fn delete_head(&self, db: &str, expected: &Etag) -> io::Result<Result<(), Conflict>> {
        let key = self.head_key(db)?;
        // A tombstone on the version (see the module doc).
        Ok(self
            .swap(&key, &expected.0, PutPayload::default())?
            .map(|_| ()))
    }

    fn list_heads(&self) -> io::Result<Vec<(String, Etag)>> {
        self.list_head_records("heads")
    }

    fn per_replica_heads(&self) -> bool {
        true
    }

    fn put_proposal_record(&self, db: &str, name: &str, bytes: &[u8]) -> io::Result<bool> {
        crate::check_proposal_size(bytes)?;
        let key = self.proposal_key(db, name)?;
        // A create: of two writers one keeps its record (on a bucket whose conditional writes
        // are atomic; docs/format.md says what happens on one whose are not).
        match self.put(&key, PutPayload::from(bytes.to_vec()), PutMode::Create) {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(self.err("writing the proposal record", key.as_ref(), e)),
        }
    }

    fn get_proposal_record(&self, db: &str, name: &str) -> io::Result<Option<Vec<u8>>> {
        let key = self.proposal_key(db, name)?;
        self.get(&key, "reading the proposal record")
    }

    fn list_proposal_records(&self, db: &str) -> io::Result<Vec<String>> {
        crate::check_db(db)?;
        let dir = self.list_prefix(&format!("proposals/{db}"));
        let mut out = Vec::new();
        self.list_all(&dir, |m| {
            if let Some(n) = m.location.as_ref().strip_prefix(dir.as_str()) {
                if crate::check_proposal_record(n).is_ok() {
                    out.push(n.to_owned());
                }
            }
            Ok(())
        })?;
        out.sort();
        Ok(out)
    }

    fn list_replica_heads(&self, db: &str) -> io::Result<Vec<(String, Etag)>> {
        crate::check_db(db)?;
        self.list_head_records(&format!("heads/{db}"))
    }
}

impl S3Remote {
    /// The head records under `dir` (`heads`, or `heads/<db>`), by name, with their versions:
    /// a LIST request per [`PAGE`].
    fn list_head_records(&self, dir: &str) -> io::Result<Vec<(String, Etag)>> {
        let top = self.list_prefix("heads");
        let dir = self.list_prefix(dir);
        let mut out = Vec::new();
        self.list_all(&dir, |m| {
            let Some(rest) = m
                .location
                .as_ref()
                .strip_prefix(top.as_str())
                .and_then(|s| s.strip_suffix(".head"))
            else {
                return Ok(());
            };
            // `<db>/<replica>` → `<db>~<replica>`; `<db>` as it is. (A key with a `~` of its
            // own would pass for another: not a head record.)
            let name = rest.replacen('/', "~", 1);
            if rest.contains('~') || check_head_name(&name).is_err() || m.size == 0 {
                return Ok(()); // not a head record, or a tombstone
            }
            let etag = match m.e_tag {
                Some(e) => Etag(e),
                // A server that leaves ETags out of listings: one HEAD for it.
                None => match self.head(&m.location, "reading the head record of")? {
                    Some(h) if h.size > 0 => self.etag_of(h.location.as_ref(), h.e_tag)?,
                    _ => return Ok(()),
                },
            };
            out.push((name, etag));
            Ok(())
        })?;
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }
}
