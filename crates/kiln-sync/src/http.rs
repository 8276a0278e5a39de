//! A remote behind a kiln sync server (`http://host:port`, `https://host:port`): the same files
//! and head records as a folder or a bucket, over the server's HTTP API (docs/server.md). The
//! server keeps them in its own storage (a folder or a bucket) and says which kind of head
//! records that storage keeps; this client follows it.
//!
//! Every method is one request, but for [`Remote::has_files`] (one request per 1,000 names:
//! the server answers which are missing) and the transfers, which keep [`crate::WINDOW`]
//! requests in flight. Versions of head records travel in `ETag` headers as the hex of the
//! storage's version, in quotes; reads on a known version send `If-None-Match`, writes
//! `If-Match` (or `If-None-Match: *` to create).
//!
//! Like [`crate::S3Remote`], an [`HttpRemote`] owns a current-thread tokio runtime and blocks
//! on each request: its methods must not be called from inside an async runtime.

use crate::{check_head_name, Conflict, Etag, FileName, HeadRead, Kind, Remote};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::Deserialize;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The API version this client speaks (the server's `GET /v1` says its own).
pub const API_VERSION: u64 = 1;
/// Names asked about in one `missing` request.
const MISSING_PAGE: usize = 1000;

/// What `GET /v1` answers.
#[derive(Debug, Deserialize)]
struct Info {
    kiln_server: u64,
    per_replica_heads: bool,
}

/// A remote behind a kiln sync server.
#[derive(Debug)]
pub struct HttpRemote {
    base: String,
    token: Option<String>,
    client: reqwest::Client,
    rt: tokio::runtime::Runtime,
    per_replica: bool,
    requests: AtomicU64,
}

/// The name of a kind of file in the API's paths.
pub fn kind_segment(kind: Kind) -> &'static str {
    match kind {
        Kind::Diff => "diff",
        Kind::FileSet => "fileset",
    }
}

/// A head record's version as an `ETag` header value: its bytes in hex, quoted (a storage's
/// versions may hold quotes of their own).
pub fn etag_header(e: &Etag) -> String {
    let hex: String = e.0.bytes().map(|b| format!("{b:02x}")).collect();
    format!("\"{hex}\"")
}

/// Reads an `ETag` header value [`etag_header`] made; `None` when it is not one, or does not
/// hold a version's shape ([`is_version_shape`]).
pub fn parse_etag_header(v: &str) -> Option<Etag> {
    let hex = v.trim().strip_prefix('"')?.strip_suffix('"')?;
    if hex.len() % 2 != 0 {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect();
    let text = String::from_utf8(bytes?).ok()?;
    is_version_shape(&text).then_some(Etag(text))
}

/// Whether `v` can be a storage's version of one record: 1–256 visible ASCII characters, not
/// `*` (which a conditional request matches to any record), no comma (which lists several),
/// not weak (`W/`). Anything else sent as a version is refused before it reaches a storage.
pub fn is_version_shape(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 256
        && v != "*"
        && !v.starts_with("W/")
        && v.bytes().all(|b| b.is_ascii_graphic() && b != b',')
}

impl HttpRemote {
    /// Opens the server at `url` (`http://host:port`, `https://host:port`, a path prefix
    /// allowed), with bearer token `token` if given, and asks it what it keeps (one request).
    pub fn open(url: &str, token: Option<String>) -> io::Result<HttpRemote> {
        let base = url.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{url}: a sync server's URL starts with http:// or https://"),
            ));
        }
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(300))
            .tcp_nodelay(true)
            .build()
            .map_err(|e| io::Error::other(format!("{url}: {e}")))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let mut remote = HttpRemote {
            base,
            token,
            client,
            rt,
            per_replica: false,
            requests: AtomicU64::new(0),
        };
        let info = remote.send(remote.request(Method::GET, "/v1"), "reaching the server")?;
        let info = remote.ok(info, "reaching the server")?;
        let info: Info = serde_json::from_slice(&info).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: not a kiln sync server ({e})", remote.base),
            )
        })?;
        if info.kiln_server > API_VERSION {
            return Err(io::Error::other(format!(
                "{}: the server speaks API version {}, newer than this kiln's ({API_VERSION}); \
                 upgrade kiln",
                remote.base, info.kiln_server
            )));
        }
        remote.per_replica = info.per_replica_heads;
        Ok(remote)
    }

    /// HTTP requests made so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let r = self.client.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    fn file_path(kind: Kind, name: &FileName) -> String {
        format!("/v1/files/{}/{name}", kind_segment(kind))
    }

    fn head_path(name: &str) -> io::Result<String> {
        check_head_name(name)?;
        Ok(format!("/v1/heads/{name}"))
    }

    fn proposal_path(db: &str, name: &str) -> io::Result<String> {
        crate::check_db(db)?;
        crate::check_proposal_record(name)?;
        Ok(format!("/v1/proposals/{db}/{name}"))
    }

    /// Sends a request and waits for its response's head.
    fn send(&self, req: RequestBuilder, what: &str) -> io::Result<Response> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.rt
            .block_on(send_once_more(req))
            .map_err(|e| self.transport(what, e))
    }

    fn transport(&self, what: &str, e: reqwest::Error) -> io::Error {
        let kind = if e.is_timeout() {
            io::ErrorKind::TimedOut
        } else if e.is_connect() {
            io::ErrorKind::ConnectionRefused
        } else {
            io::ErrorKind::Other
        };
        // The causes too: reqwest's own message leaves out why (a certificate refused, say).
        let mut why = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            why.push_str(&format!(": {s}"));
            source = s.source();
        }
        io::Error::new(
            kind,
            format!("the sync server {}: {what}: {why}", self.base),
        )
    }

    /// A successful response's body; any other status as an error.
    fn ok(&self, r: Response, what: &str) -> io::Result<Vec<u8>> {
        if r.status().is_success() {
            return self.body(r, what);
        }
        Err(self.refusal(r, what))
    }

    fn body(&self, r: Response, what: &str) -> io::Result<Vec<u8>> {
        self.rt
            .block_on(async { r.bytes().await })
            .map(|b| b.to_vec())
            .map_err(|e| self.transport(what, e))
    }

    /// The error a refused request makes: its status and the server's reason.
    fn refusal(&self, r: Response, what: &str) -> io::Error {
        let status = r.status();
        let reason = self
            .rt
            .block_on(async { r.text().await })
            .unwrap_or_default()
            .trim()
            .to_owned();
        refusal_error(&self.base, what, status, &reason)
    }

    fn version_of(&self, r: &Response, what: &str) -> io::Result<Etag> {
        r.headers()
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_etag_header)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "the sync server {}: {what}: no version (ETag) given",
                        self.base
                    ),
                )
            })
    }

    fn json<T: serde::de::DeserializeOwned>(&self, b: &[u8], what: &str) -> io::Result<T> {
        serde_json::from_slice(b).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the sync server {}: {what}: {e}", self.base),
            )
        })
    }

    fn list_head_records(&self, db: Option<&str>) -> io::Result<Vec<(String, Etag)>> {
        let what = "listing head records";
        let mut req = self.request(Method::GET, "/v1/heads");
        if let Some(db) = db {
            crate::check_db(db)?;
            req = req.query(&[("db", db)]);
        }
        let b = self.ok(self.send(req, what)?, what)?;
        let listed: Vec<(String, String)> = self.json(&b, what)?;
        let mut out = Vec::with_capacity(listed.len());
        for (name, etag) in listed {
            check_head_name(&name)?;
            out.push((name, Etag(etag)));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }
}

/// Sends a request, and sends it once more when it failed on a connection that was closed
/// under it (a kept-alive connection to a server that restarted meanwhile: the first request
/// after the restart meets the old connection). Every request kiln sends may be sent twice:
/// reads and file uploads are idempotent, and a head record write on a version that went
/// through the first time is refused the second (the record moved: the sync reads it again).
async fn send_once_more(req: RequestBuilder) -> reqwest::Result<Response> {
    let again = req.try_clone();
    match req.send().await {
        Err(e) if closed_under(&e) => match again {
            Some(again) => again.send().await,
            None => Err(e),
        },
        r => r,
    }
}

/// Whether a request failed on a connection closed under it (not a refused connection, not
/// a timeout: sending again would meet the same).
fn closed_under(e: &reqwest::Error) -> bool {
    if e.is_timeout() || e.is_connect() {
        return false;
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<io::Error>() {
            if matches!(
                io.kind(),
                io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::UnexpectedEof
            ) {
                return true;
            }
        }
        if s.to_string()
            .contains("connection closed before message completed")
        {
            return true;
        }
        source = s.source();
    }
    false
}

/// Listens to a server's live channel at `url` (docs/server.md "Live channel"), sending `()`
/// to `tx` at each event (a change, a fall behind, a new subscription: each may have missed
/// changes); reconnects when the connection drops (after 1 s, doubling up to 30 s while the
/// server cannot be reached). Returns within a second once `alive` is gone (no one listens),
/// or when the server has no live channel or refuses this subscription.
fn listen(
    url: &str,
    token: Option<&str>,
    tx: &std::sync::mpsc::Sender<()>,
    alive: &std::sync::Weak<()>,
) {
    let gone = || alive.strong_count() == 0;
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    let Ok(client) = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .tcp_nodelay(true)
        .build()
    else {
        return;
    };
    let mut backoff = Duration::from_secs(1);
    while !gone() {
        let mut req = client
            .get(url)
            .header(reqwest::header::ACCEPT, "text/event-stream");
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        match rt.block_on(async { req.send().await }) {
            Ok(mut r) if r.status() == StatusCode::OK => {
                backoff = Duration::from_secs(1);
                let mut pending = String::new();
                while !gone() {
                    let chunk = rt.block_on(async {
                        tokio::time::timeout(Duration::from_secs(1), r.chunk()).await
                    });
                    match chunk {
                        Ok(Ok(Some(bytes))) => {
                            pending.push_str(&String::from_utf8_lossy(&bytes));
                            while let Some(end) = pending.find("\n\n") {
                                let event: String = pending.drain(..end + 2).collect();
                                let told = event.lines().any(|l| {
                                    matches!(l, "event: head" | "event: resync" | "event: ready")
                                });
                                if told && tx.send(()).is_err() {
                                    return;
                                }
                            }
                        }
                        Err(_) => {}    // quiet: look whether anyone still listens
                        Ok(_) => break, // closed or broken: connect again
                    }
                }
            }
            // No live channel there, or not for this token: the caller polls.
            Ok(_) => return,
            Err(_) => {
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
        let t = std::time::Instant::now();
        while t.elapsed() < backoff && !gone() {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// The conflict a 412 answer tells: the record's version now, if it has one.
/// The whole length a `Content-Range: bytes …/LEN` names.
fn total_of(r: &Response) -> Option<u64> {
    r.headers()
        .get(reqwest::header::CONTENT_RANGE)?
        .to_str()
        .ok()?
        .rsplit('/')
        .next()?
        .parse()
        .ok()
}

fn conflict_of(r: &Response) -> Conflict {
    Conflict {
        now: r
            .headers()
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_etag_header),
    }
}

/// The error for a request the server refused with `status` and `reason`.
fn refusal_error(base: &str, what: &str, status: StatusCode, reason: &str) -> io::Error {
    let kind = match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => io::ErrorKind::PermissionDenied,
        StatusCode::NOT_FOUND => io::ErrorKind::NotFound,
        StatusCode::BAD_REQUEST
        | StatusCode::PAYLOAD_TOO_LARGE
        | StatusCode::UNPROCESSABLE_ENTITY => io::ErrorKind::InvalidInput,
        _ => io::ErrorKind::Other,
    };
    let hint = match status {
        StatusCode::UNAUTHORIZED => " (give a token: --token or KILN_TOKEN)",
        _ => "",
    };
    let reason = if reason.is_empty() {
        status.canonical_reason().unwrap_or("").to_owned()
    } else {
        reason.chars().take(500).collect()
    };
    io::Error::new(
        kind,
        format!(
            "the sync server {base}: {what}: {} {reason}{hint}",
            status.as_u16()
        ),
    )
}

impl Remote for HttpRemote {
    fn location(&self) -> String {
        self.base.clone()
    }

    fn has_file(&self, kind: Kind, name: &FileName) -> io::Result<bool> {
        let what = "looking up a file";
        let r = self.send(
            self.request(Method::HEAD, &Self::file_path(kind, name)),
            what,
        )?;
        match r.status() {
            StatusCode::OK => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(self.refusal(r, what)),
        }
    }

    fn has_files(&self, kind: Kind, names: &[FileName]) -> io::Result<Vec<bool>> {
        let what = "looking up files";
        let mut out = Vec::with_capacity(names.len());
        for page in names.chunks(MISSING_PAGE) {
            let asked: Vec<String> = page.iter().map(|n| n.to_string()).collect();
            let path = format!("/v1/files/{}/missing", kind_segment(kind));
            let req = self.request(Method::POST, &path).json(&asked);
            let b = self.ok(self.send(req, what)?, what)?;
            let missing: Vec<String> = self.json(&b, what)?;
            let missing: std::collections::HashSet<String> = missing.into_iter().collect();
            out.extend(asked.iter().map(|n| !missing.contains(n)));
        }
        Ok(out)
    }

    fn lookup_requests(&self, n: usize) -> usize {
        n.div_ceil(MISSING_PAGE)
    }

    fn put_file(&self, kind: Kind, name: &FileName, bytes: &[u8]) -> io::Result<()> {
        let what = "uploading a file";
        let req = self
            .request(Method::PUT, &Self::file_path(kind, name))
            .body(bytes.to_vec());
        self.ok(self.send(req, what)?, what).map(|_| ())
    }

    fn put_files(
        &self,
        kind: Kind,
        names: &[FileName],
        load: &mut dyn FnMut(usize) -> io::Result<Option<Vec<u8>>>,
    ) -> io::Result<Vec<bool>> {
        let mut out = vec![false; names.len()];
        crate::window::windowed(
            &self.rt,
            &self.base,
            names.len(),
            |i| {
                let Some(bytes) = load(i)? else {
                    return Ok(None);
                };
                self.requests.fetch_add(1, Ordering::Relaxed);
                let req = self
                    .request(Method::PUT, &Self::file_path(kind, &names[i]))
                    .body(bytes);
                Ok(Some(async move {
                    let r = send_once_more(req).await?;
                    let status = r.status();
                    let reason = if status.is_success() {
                        String::new()
                    } else {
                        r.text().await.unwrap_or_default()
                    };
                    Ok::<_, reqwest::Error>((status, reason))
                }))
            },
            |i, r| {
                let (status, reason) = r.map_err(|e| self.transport("uploading a file", e))?;
                match status {
                    StatusCode::CREATED => out[i] = true,
                    s if s.is_success() => {}
                    s => {
                        return Err(refusal_error(
                            &self.base,
                            &format!("uploading file {}", names[i]),
                            s,
                            reason.trim(),
                        ))
                    }
                }
                Ok(())
            },
        )?;
        Ok(out)
    }

    fn get_file(&self, kind: Kind, name: &FileName) -> io::Result<Option<Vec<u8>>> {
        let what = "downloading a file";
        let r = self.send(
            self.request(Method::GET, &Self::file_path(kind, name)),
            what,
        )?;
        match r.status() {
            StatusCode::NOT_FOUND => Ok(None),
            _ => self.ok(r, what).map(Some),
        }
    }

    fn get_file_range(
        &self,
        kind: Kind,
        name: &FileName,
        start: u64,
        end: u64,
    ) -> io::Result<Option<(Vec<u8>, u64)>> {
        let what = "downloading part of a file";
        if end <= start {
            // (An empty part: its length only, from a HEAD-like one-byte read.)
            return Ok(self
                .get_file_range(kind, name, 0, 1)?
                .map(|(_, len)| (Vec::new(), len)));
        }
        let req = self
            .request(Method::GET, &Self::file_path(kind, name))
            .header(reqwest::header::RANGE, format!("bytes={start}-{}", end - 1));
        let r = self.send(req, what)?;
        match r.status() {
            StatusCode::NOT_FOUND => Ok(None),
            StatusCode::RANGE_NOT_SATISFIABLE => {
                let len = total_of(&r).unwrap_or(0);
                Ok(Some((Vec::new(), len)))
            }
            StatusCode::PARTIAL_CONTENT => {
                let len = total_of(&r).ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("the sync server {}: {what}: no Content-Range", self.base),
                    )
                })?;
                Ok(Some((self.body(r, what)?, len)))
            }
            // (A server that ignores ranges sends the whole file.)
            StatusCode::OK => {
                let b = self.body(r, what)?;
                let len = b.len() as u64;
                let (s, e) = (start.min(len) as usize, end.min(len) as usize);
                Ok(Some((b[s..e.max(s)].to_vec(), len)))
            }
            _ => Err(self.refusal(r, what)),
        }
    }

    fn get_files(
        &self,
        kind: Kind,
        names: &[FileName],
        each: &mut dyn FnMut(usize, Option<Vec<u8>>) -> io::Result<()>,
    ) -> io::Result<()> {
        crate::window::windowed(
            &self.rt,
            &self.base,
            names.len(),
            |i| {
                self.requests.fetch_add(1, Ordering::Relaxed);
                let req = self.request(Method::GET, &Self::file_path(kind, &names[i]));
                Ok(Some(async move {
                    let r = send_once_more(req).await?;
                    let status = r.status();
                    let body = r.bytes().await?.to_vec();
                    Ok::<_, reqwest::Error>((status, body))
                }))
            },
            |i, r| {
                let what = format!("downloading file {}", names[i]);
                let (status, body) = r.map_err(|e| self.transport(&what, e))?;
                match status {
                    StatusCode::OK => each(i, Some(body)),
                    StatusCode::NOT_FOUND => each(i, None),
                    s => Err(refusal_error(
                        &self.base,
                        &what,
                        s,
                        String::from_utf8_lossy(&body).trim(),
                    )),
                }
            },
        )
    }

    fn list_files(&self, kind: Kind) -> io::Result<Vec<(FileName, u64)>> {
        let what = "listing files";
        let path = format!("/v1/files/{}", kind_segment(kind));
        let b = self.ok(self.send(self.request(Method::GET, &path), what)?, what)?;
        let listed: Vec<(String, u64)> = self.json(&b, what)?;
        let mut out = Vec::with_capacity(listed.len());
        for (name, age) in listed {
            let n = FileName::parse(&name).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "the sync server {}: {what}: {name:?} is not a file name",
                        self.base
                    ),
                )
            })?;
            out.push((n, age));
        }
        out.sort();
        Ok(out)
    }

    fn delete_file(&self, kind: Kind, name: &FileName) -> io::Result<()> {
        let what = "removing a file";
        let r = self.send(
            self.request(Method::DELETE, &Self::file_path(kind, name)),
            what,
        )?;
        match r.status() {
            StatusCode::NOT_FOUND => Ok(()),
            _ => self.ok(r, what).map(|_| ()),
        }
    }

    fn read_head(&self, db: &str, known: Option<&Etag>) -> io::Result<HeadRead> {
        let what = "reading a head record";
        let mut req = self.request(Method::GET, &Self::head_path(db)?);
        if let Some(k) = known {
            req = req.header(reqwest::header::IF_NONE_MATCH, etag_header(k));
        }
        let r = self.send(req, what)?;
        match r.status() {
            StatusCode::NOT_MODIFIED => Ok(HeadRead::NotModified),
            StatusCode::NOT_FOUND => Ok(HeadRead::Absent),
            StatusCode::OK => {
                let etag = self.version_of(&r, what)?;
                if known == Some(&etag) {
                    return Ok(HeadRead::NotModified);
                }
                let bytes = self.body(r, what)?;
                Ok(HeadRead::Found { bytes, etag })
            }
            _ => Err(self.refusal(r, what)),
        }
    }

    fn write_head(
        &self,
        db: &str,
        expected: Option<&Etag>,
        bytes: &[u8],
    ) -> io::Result<Result<Etag, Conflict>> {
        let what = "writing a head record";
        let mut req = self
            .request(Method::PUT, &Self::head_path(db)?)
            .body(bytes.to_vec());
        req = match expected {
            Some(e) => req.header(reqwest::header::IF_MATCH, etag_header(e)),
            None => req.header(reqwest::header::IF_NONE_MATCH, "*"),
        };
        let r = self.send(req, what)?;
        match r.status() {
            StatusCode::PRECONDITION_FAILED => Ok(Err(conflict_of(&r))),
            s if s.is_success() => Ok(Ok(self.version_of(&r, what)?)),
            _ => Err(self.refusal(r, what)),
        }
    }

    fn delete_head(&self, db: &str, expected: &Etag) -> io::Result<Result<(), Conflict>> {
        let what = "removing a head record";
        let req = self
            .request(Method::DELETE, &Self::head_path(db)?)
            .header(reqwest::header::IF_MATCH, etag_header(expected));
        let r = self.send(req, what)?;
        match r.status() {
            StatusCode::PRECONDITION_FAILED => Ok(Err(conflict_of(&r))),
            s if s.is_success() => Ok(Ok(())),
            _ => Err(self.refusal(r, what)),
        }
    }

    fn list_heads(&self) -> io::Result<Vec<(String, Etag)>> {
        self.list_head_records(None)
    }

    fn allowed(&self, db: &str) -> io::Result<crate::Allowed> {
        let what = "asking what this token may do";
        crate::check_db(db)?;
        let r = self.send(self.request(Method::GET, &format!("/v1/access/{db}")), what)?;
        let b = self.ok(r, what)?;
        self.json(&b, what)
    }

    fn put_proposal_record(&self, db: &str, name: &str, bytes: &[u8]) -> io::Result<bool> {
        let what = "filing a proposal record";
        let req = self
            .request(Method::PUT, &Self::proposal_path(db, name)?)
            .header(reqwest::header::IF_NONE_MATCH, "*")
            .body(bytes.to_vec());
        let r = self.send(req, what)?;
        match r.status() {
            StatusCode::PRECONDITION_FAILED => Ok(false),
            s if s.is_success() => Ok(true),
            _ => Err(self.refusal(r, what)),
        }
    }

    fn get_proposal_record(&self, db: &str, name: &str) -> io::Result<Option<Vec<u8>>> {
        let what = "reading a proposal record";
        let r = self.send(
            self.request(Method::GET, &Self::proposal_path(db, name)?),
            what,
        )?;
        match r.status() {
            StatusCode::NOT_FOUND => Ok(None),
            _ => self.ok(r, what).map(Some),
        }
    }

    fn list_proposal_records(&self, db: &str) -> io::Result<Vec<String>> {
        let what = "listing proposal records";
        crate::check_db(db)?;
        let r = self.send(
            self.request(Method::GET, &format!("/v1/proposals/{db}")),
            what,
        )?;
        let b = self.ok(r, what)?;
        let mut names: Vec<String> = self.json(&b, what)?;
        for n in &names {
            crate::check_proposal_record(n)?;
        }
        names.sort();
        Ok(names)
    }

    fn notify(&self, db: &str) -> Option<crate::Notices> {
        crate::check_db(db).ok()?;
        let (notices, tx, alive) = crate::Notices::new();
        let url = format!("{}/v1/watch?dbs={db}", self.base);
        let token = self.token.clone();
        std::thread::Builder::new()
            .name("kiln live channel".into())
            .spawn(move || listen(&url, token.as_deref(), &tx, &alive))
            .ok()?;
        Some(notices)
    }

    fn swaps_checked(&self) -> bool {
        // The server probed its storage's compare-and-swap when it started (or keeps a record
        // per replica, which needs none).
        true
    }

    fn per_replica_heads(&self) -> bool {
        self.per_replica
    }

    fn list_replica_heads(&self, db: &str) -> io::Result<Vec<(String, Etag)>> {
        self.list_head_records(Some(db))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_travel_hex_quoted() {
        for v in ["0123abcd", "\"quoted\"", "f477895a8f6c62fa"] {
            let e = Etag(v.to_owned());
            assert_eq!(parse_etag_header(&etag_header(&e)), Some(e));
        }
        // Not a version: refused whole.
        for v in ["", "*", "W/\"weak\"", "a,b", "new\nline", "é", "sp ace"] {
            let e = Etag(v.to_owned());
            assert_eq!(parse_etag_header(&etag_header(&e)), None, "{v:?}");
        }
        assert_eq!(parse_etag_header("abc"), None);
        assert_eq!(parse_etag_header("\"abc\""), None);
        assert_eq!(parse_etag_header("\"zz\""), None);
    }
}
