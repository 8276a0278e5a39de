//! The HTTP API, version 1 (docs/server.md): handlers that check what they are given and hand
//! it to the storage (a [`Remote`], whose calls block: each runs on the blocking pool).

use crate::auth::{Access, Scope, SharedTokens};
use crate::live::Live;
use crate::metrics::Metrics;
use crate::ServerOptions;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use kiln_sync::{
    check_db, check_head_name, check_proposal_record, etag_header, parse_etag_header,
    split_head_name, Conflict, Etag, FileName, HeadRead, Kind, Remote, API_VERSION,
};
use serde::Deserialize;
use std::io;
use std::sync::Arc;

/// Names one `missing` request may ask about.
const MAX_MISSING: usize = 1000;

struct App {
    storage: Arc<dyn Remote>,
    /// The largest body taken.
    max_body: usize,
    live: Arc<Live>,
    /// The tokens taken (`None`: no tokens asked for, anyone who reaches the server may read
    /// and write); replaced whole when the file is read again.
    tokens: Option<SharedTokens>,
}

/// What a request needs its token to allow.
enum Need<'a> {
    /// This access to this database.
    Db(Access, &'a str),
    /// This access to some database (files are shared by all: their names are hashes that
    /// only a head record tells).
    Any(Access),
    /// This access to every database (a remote gc: files of all of them).
    All(Access),
    /// A valid token, whatever it allows (listings, filtered by its scope).
    Valid,
}

impl App {
    /// The request's token's scope (`None`: the server takes no tokens), or the refusal:
    /// 401 without a valid token, 403 when it does not allow what is needed.
    fn authorize(&self, headers: &HeaderMap, need: Need) -> Result<Option<Scope>, Refused> {
        let Some(tokens) = &self.tokens else {
            return Ok(None);
        };
        let Some(given) = bearer(headers) else {
            return Err(Refused(
                StatusCode::UNAUTHORIZED,
                "a token is needed (Authorization: Bearer TOKEN)".into(),
            ));
        };
        let tokens = tokens.read().unwrap_or_else(|p| p.into_inner()).clone();
        let Some(scope) = tokens.scope(given.as_bytes()) else {
            return Err(Refused(StatusCode::UNAUTHORIZED, "unknown token".into()));
        };
        let (ok, what) = match need {
            Need::Db(Access::Read, db) => (scope.allows(Access::Read, db), format!("read {db}")),
            Need::Db(Access::Propose, db) => (
                scope.allows(Access::Propose, db),
                format!("propose changes to {db}"),
            ),
            Need::Db(Access::Write, db) => (scope.allows(Access::Write, db), format!("write {db}")),
            Need::Any(Access::Read) => (scope.allows_any(Access::Read), "read files".into()),
            Need::Any(Access::Propose) | Need::Any(Access::Write) => {
                (scope.allows_any(Access::Write), "write files".into())
            }
            Need::All(Access::Read) => {
                (scope.allows_all(Access::Read), "read every database".into())
            }
            Need::All(Access::Propose) | Need::All(Access::Write) => (
                scope.allows_all(Access::Write),
                "write every database".into(),
            ),
            Need::Valid => (true, String::new()),
        };
        if !ok {
            return Err(Refused(
                StatusCode::FORBIDDEN,
                format!("this token may not {what}"),
            ));
        }
        Ok(Some(scope))
    }
}

/// The bearer token a request gives, if any.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

type Shared = State<Arc<App>>;

/// The API over `storage`.
pub fn router(storage: Arc<dyn Remote>, opts: ServerOptions) -> Router {
    router_and_live(storage, opts).0
}

/// [`router`], and its live channel's subscribers (to end them when the server stops).
pub(crate) fn router_and_live(
    storage: Arc<dyn Remote>,
    opts: ServerOptions,
) -> (Router, Arc<Live>) {
    let tokens = opts.tokens.clone();
    let live = Arc::new(Live::new(opts.poll));
    let app = Arc::new(App {
        storage,
        max_body: opts.max_body,
        live: live.clone(),
        tokens,
    });
    let metrics = Arc::new(Metrics::new());
    let (shown, watched) = (metrics.clone(), live.clone());
    let router = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/metrics",
            get(move || async move {
                (
                    [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    shown.render() + &watched.render(),
                )
            }),
        )
        .route("/v1", get(info))
        .route("/v1/files/{kind}", get(list_files))
        .route("/v1/files/{kind}/missing", axum::routing::post(missing))
        .route(
            "/v1/files/{kind}/{name}",
            get(get_file)
                .head(has_file)
                .put(put_file)
                .delete(delete_file),
        )
        .route("/v1/heads", get(list_heads))
        .route("/v1/watch", get(watch))
        .route("/v1/access/{db}", get(access))
        .route("/v1/proposals/{db}", get(list_proposals))
        .route(
            "/v1/proposals/{db}/{name}",
            get(get_proposal).put(put_proposal),
        )
        .route(
            "/v1/heads/{name}",
            get(read_head).put(write_head).delete(delete_head),
        )
        .layer(DefaultBodyLimit::max(opts.max_body))
        .layer(axum::middleware::from_fn_with_state(
            opts.request_timeout,
            deadline,
        ))
        .layer(axum::middleware::from_fn_with_state(
            metrics,
            crate::metrics::count,
        ))
        .layer(axum::middleware::from_fn(crate::log::request))
        .with_state(app);
    (router, live)
}

/// A refusal: a status and a reason, sent as text.
struct Refused(StatusCode, String);

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        (self.0, format!("{}\n", self.1)).into_response()
    }
}

impl Refused {
    fn bad(why: impl Into<String>) -> Refused {
        Refused(StatusCode::BAD_REQUEST, why.into())
    }

    /// The storage failed: its error's kind says whose fault.
    fn storage(e: io::Error) -> Refused {
        let status = match e.kind() {
            io::ErrorKind::InvalidInput => StatusCode::BAD_REQUEST,
            io::ErrorKind::NotFound => StatusCode::NOT_FOUND,
            _ => StatusCode::BAD_GATEWAY,
        };
        if status == StatusCode::BAD_GATEWAY {
            tracing::error!(error = %e, "the storage failed");
        }
        Refused(status, format!("storage: {e}"))
    }
}

/// A request's body, read only now (after its token was checked: no one without a token
/// makes the server hold a body), at most `limit` bytes (413 beyond).
async fn body_of(body: axum::body::Body, limit: usize) -> Result<Bytes, Refused> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let too_large = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
        if too_large {
            Refused(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the body is over {limit} bytes"),
            )
        } else {
            Refused::bad(format!("the body could not be read: {e}"))
        }
    })
}

/// Runs a storage call on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> Result<T, Refused> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(Refused::storage),
        Err(e) => Err(Refused(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the request's task failed: {e}"),
        )),
    }
}

fn kind(s: &str) -> Result<Kind, Refused> {
    match s {
        "diff" => Ok(Kind::Diff),
        "fileset" => Ok(Kind::FileSet),
        _ => Err(Refused::bad(format!(
            "{s:?} is not a kind of file (diff, fileset)"
        ))),
    }
}

fn file_name(s: &str) -> Result<FileName, Refused> {
    FileName::parse(s)
        .filter(|n| n.to_string() == s)
        .ok_or_else(|| Refused::bad(format!("{s:?} is not a file name (64 lowercase hex)")))
}

fn head_name(s: &str) -> Result<String, Refused> {
    check_head_name(s).map_err(|e| Refused::bad(e.to_string()))?;
    Ok(s.to_owned())
}

/// A version given in header `h` (`None`: not given); one that is not a version is refused.
fn version(headers: &HeaderMap, h: header::HeaderName) -> Result<Option<Etag>, Refused> {
    match headers.get(&h) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(parse_etag_header)
            .map(Some)
            .ok_or_else(|| Refused::bad(format!("{h}: not a version this server gave"))),
    }
}

fn with_version(mut r: Response, e: &Etag) -> Response {
    if let Ok(v) = HeaderValue::from_str(&etag_header(e)) {
        r.headers_mut().insert(header::ETAG, v);
    }
    r
}

fn conflict(c: Conflict) -> Response {
    let r = (StatusCode::PRECONDITION_FAILED, "the record moved\n").into_response();
    match c.now {
        Some(now) => with_version(r, &now),
        None => r,
    }
}

async fn info(State(app): Shared) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "kiln_server": API_VERSION,
        "per_replica_heads": app.storage.per_replica_heads(),
    }))
}

async fn list_files(
    State(app): Shared,
    Path(k): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Refused> {
    app.authorize(&headers, Need::All(Access::Read))?;
    let k = kind(&k)?;
    let listed = blocking(move || app.storage.list_files(k)).await?;
    let out: Vec<(String, u64)> = listed
        .into_iter()
        .map(|(n, a)| (n.to_string(), a))
        .collect();
    Ok(Json(out).into_response())
}

async fn missing(
    State(app): Shared,
    Path(k): Path<String>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response, Refused> {
    app.authorize(&headers, Need::Any(Access::Read))?;
    let k = kind(&k)?;
    // At most 1,000 names of 64 characters, quoted, with commas and some room.
    let body = body_of(body, (MAX_MISSING * 70).min(app.max_body)).await?;
    let asked: Vec<String> = serde_json::from_slice(&body)
        .map_err(|e| Refused::bad(format!("not a JSON array of names: {e}")))?;
    if asked.len() > MAX_MISSING {
        return Err(Refused(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("at most {MAX_MISSING} names a request"),
        ));
    }
    let names = asked
        .iter()
        .map(|n| file_name(n))
        .collect::<Result<Vec<_>, _>>()?;
    let there = blocking(move || app.storage.has_files(k, &names)).await?;
    let out: Vec<&String> = asked
        .iter()
        .zip(there)
        .filter(|(_, there)| !there)
        .map(|(n, _)| n)
        .collect();
    Ok(Json(out).into_response())
}

async fn get_file(
    State(app): Shared,
    Path((k, n)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, Refused> {
    app.authorize(&headers, Need::Any(Access::Read))?;
    let (k, n) = (kind(&k)?, file_name(&n)?);
    let octets = (header::CONTENT_TYPE, "application/octet-stream");
    let ranges = (header::ACCEPT_RANGES, "bytes");
    let Some(range) = byte_range(&headers) else {
        return match blocking(move || app.storage.get_file(k, &n)).await? {
            Some(b) => Ok(([octets, ranges], Bytes::from(b)).into_response()),
            None => Err(Refused(StatusCode::NOT_FOUND, format!("no file {n}"))),
        };
    };
    let part = blocking(move || {
        let (start, end) = match range {
            ByteRange::From(s, e) => (s, e),
            ByteRange::Last(count) => {
                let Some((_, len)) = app.storage.get_file_range(k, &n, 0, 0)? else {
                    return Ok(None);
                };
                (len.saturating_sub(count), len)
            }
        };
        Ok(app
            .storage
            .get_file_range(k, &n, start, end)?
            .map(|(b, len)| (b, start, len)))
    })
    .await?;
    match part {
        None => Err(Refused(StatusCode::NOT_FOUND, "no such file".into())),
        Some((_, start, len)) if start >= len => Ok((
            StatusCode::RANGE_NOT_SATISFIABLE,
            [(header::CONTENT_RANGE, format!("bytes */{len}"))],
        )
            .into_response()),
        Some((b, start, len)) => {
            let last = start + b.len() as u64 - 1;
            Ok((
                StatusCode::PARTIAL_CONTENT,
                [(header::CONTENT_RANGE, format!("bytes {start}-{last}/{len}"))],
                [octets, ranges],
                Bytes::from(b),
            )
                .into_response())
        }
    }
}

/// A single byte range asked for (`Range: bytes=A-B`, `bytes=A-` or `bytes=-N`); anything
/// else (several ranges, another unit, a malformed value) is ignored: the whole file is sent.
#[derive(Clone, Copy, Debug)]
enum ByteRange {
    /// Bytes `start..end` (end exclusive, cut at the file's end).
    From(u64, u64),
    /// The last `n` bytes.
    Last(u64),
}

fn byte_range(headers: &HeaderMap) -> Option<ByteRange> {
    let v = headers.get(header::RANGE)?.to_str().ok()?.trim();
    let spec = v.strip_prefix("bytes=")?.trim();
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let num = |s: &str| -> Option<u64> {
        (!s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    match (a.trim(), b.trim()) {
        ("", n) => num(n).filter(|n| *n > 0).map(ByteRange::Last),
        (a, "") => Some(ByteRange::From(num(a)?, u64::MAX)),
        (a, b) => {
            let (a, b) = (num(a)?, num(b)?);
            (b >= a).then(|| ByteRange::From(a, b.saturating_add(1)))
        }
    }
}

async fn has_file(
    State(app): Shared,
    Path((k, n)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<StatusCode, Refused> {
    app.authorize(&headers, Need::Any(Access::Read))?;
    let (k, n) = (kind(&k)?, file_name(&n)?);
    Ok(if blocking(move || app.storage.has_file(k, &n)).await? {
        StatusCode::OK
    } else {
        StatusCode::NOT_FOUND
    })
}

/// Keeps a file whose bytes hash to its name: 201 when new, 200 when it was there (the same
/// name is the same bytes).
async fn put_file(
    State(app): Shared,
    Path((k, n)): Path<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<StatusCode, Refused> {
    app.authorize(&headers, Need::Any(Access::Write))?;
    let (k, n) = (kind(&k)?, file_name(&n)?);
    let body = body_of(body, app.max_body).await?;
    if k.name_of(&body) != n {
        return Err(Refused(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("the bytes sent do not hash to {n}"),
        ));
    }
    let uploaded = blocking(move || {
        let mut body = Some(body.to_vec());
        app.storage.put_files(k, &[n], &mut |_| Ok(body.take()))
    })
    .await?;
    Ok(if uploaded.first() == Some(&true) {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    })
}

async fn delete_file(
    State(app): Shared,
    Path((k, n)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<StatusCode, Refused> {
    app.authorize(&headers, Need::All(Access::Write))?;
    let (k, n) = (kind(&k)?, file_name(&n)?);
    blocking(move || app.storage.delete_file(k, &n)).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct ListHeads {
    db: Option<String>,
}

async fn list_heads(
    State(app): Shared,
    Query(q): Query<ListHeads>,
    headers: HeaderMap,
) -> Result<Response, Refused> {
    if let Some(db) = &q.db {
        check_db(db).map_err(|e| Refused::bad(e.to_string()))?;
    }
    let scope = match &q.db {
        Some(db) => app.authorize(&headers, Need::Db(Access::Read, db))?,
        None => app.authorize(&headers, Need::Valid)?,
    };
    let listed = blocking(move || match &q.db {
        Some(db) => app.storage.list_replica_heads(db),
        None => app.storage.list_heads(),
    })
    .await?;
    // A token sees the records of the databases it may read, and no others.
    let out: Vec<(String, String)> = listed
        .into_iter()
        .filter(|(n, _)| {
            let db = split_head_name(n).0;
            scope.as_ref().is_none_or(|s| s.allows(Access::Read, db))
        })
        .map(|(n, e)| (n, e.0))
        .collect();
    Ok(Json(out).into_response())
}

async fn read_head(
    State(app): Shared,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Refused> {
    let name = head_name(&name)?;
    app.authorize(&headers, Need::Db(Access::Read, split_head_name(&name).0))?;
    let known = version(&headers, header::IF_NONE_MATCH)?;
    let asked = known.clone();
    match blocking(move || app.storage.read_head(&name, asked.as_ref())).await? {
        HeadRead::Absent => Err(Refused(StatusCode::NOT_FOUND, "no head record".into())),
        HeadRead::NotModified => match known {
            Some(k) => Ok(with_version(StatusCode::NOT_MODIFIED.into_response(), &k)),
            None => Err(Refused(
                StatusCode::BAD_GATEWAY,
                "storage: not modified, but no version was asked about".into(),
            )),
        },
        HeadRead::Found { bytes, etag } => Ok(with_version(
            (
                [(header::CONTENT_TYPE, "application/octet-stream")],
                Bytes::from(bytes),
            )
                .into_response(),
            &etag,
        )),
    }
}

/// Writes a head record on the version given in `If-Match`, or only if there is none
/// (`If-None-Match: *`); one of them is required (428).
async fn write_head(
    State(app): Shared,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response, Refused> {
    let name = head_name(&name)?;
    app.authorize(&headers, Need::Db(Access::Write, split_head_name(&name).0))?;
    let expected = match headers.get(header::IF_NONE_MATCH) {
        Some(v) if v.as_bytes() == b"*" => None,
        Some(_) => return Err(Refused::bad("If-None-Match: only * (create only)")),
        None => match version(&headers, header::IF_MATCH)? {
            Some(e) => Some(e),
            None => {
                return Err(Refused(
                    StatusCode::PRECONDITION_REQUIRED,
                    "a head record is written on a version (If-Match) or created \
                     (If-None-Match: *)"
                        .into(),
                ))
            }
        },
    };
    let body = body_of(body, app.max_body).await?;
    let (storage, live) = (app.storage.clone(), app.live.clone());
    // (Told where it is written: a write that lands after its request's deadline is told too.)
    let written = blocking(move || {
        let w = storage.write_head(&name, expected.as_ref(), &body)?;
        if w.is_ok() {
            live.tell(split_head_name(&name).0);
        }
        Ok(w)
    })
    .await?;
    Ok(match written {
        Ok(e) => with_version(StatusCode::OK.into_response(), &e),
        Err(c) => conflict(c),
    })
}

async fn delete_head(
    State(app): Shared,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Refused> {
    let name = head_name(&name)?;
    app.authorize(&headers, Need::Db(Access::Write, split_head_name(&name).0))?;
    let Some(expected) = version(&headers, header::IF_MATCH)? else {
        return Err(Refused(
            StatusCode::PRECONDITION_REQUIRED,
            "a head record is removed on a version (If-Match)".into(),
        ));
    };
    let storage = app.storage.clone();
    let live = app.live.clone();
    let removed = blocking(move || {
        let d = storage.delete_head(&name, &expected)?;
        if d.is_ok() {
            live.tell(split_head_name(&name).0);
        }
        Ok(d)
    })
    .await?;
    Ok(match removed {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(c) => conflict(c),
    })
}

/// What the request's token may do to a database (any valid token may ask).
async fn access(
    State(app): Shared,
    Path(db): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Refused> {
    check_db(&db).map_err(|e| Refused::bad(e.to_string()))?;
    let scope = app.authorize(&headers, Need::Valid)?;
    let may = |a| scope.as_ref().is_none_or(|s| s.allows(a, &db));
    Ok(Json(kiln_sync::Allowed {
        read: may(Access::Read),
        propose: may(Access::Propose),
        write: may(Access::Write),
    })
    .into_response())
}

/// A proposal record's path parts, checked.
fn proposal_parts(db: &str, name: &str) -> Result<bool, Refused> {
    check_db(db).map_err(|e| Refused::bad(e.to_string()))?;
    let (_, decision) = check_proposal_record(name).map_err(|e| Refused::bad(e.to_string()))?;
    Ok(decision)
}

async fn list_proposals(
    State(app): Shared,
    Path(db): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Refused> {
    check_db(&db).map_err(|e| Refused::bad(e.to_string()))?;
    app.authorize(&headers, Need::Db(Access::Read, &db))?;
    let names = blocking(move || app.storage.list_proposal_records(&db)).await?;
    Ok(Json(names).into_response())
}

async fn get_proposal(
    State(app): Shared,
    Path((db, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, Refused> {
    proposal_parts(&db, &name)?;
    app.authorize(&headers, Need::Db(Access::Read, &db))?;
    match blocking(move || app.storage.get_proposal_record(&db, &name)).await? {
        Some(b) => Ok((
            [(header::CONTENT_TYPE, "application/octet-stream")],
            Bytes::from(b),
        )
            .into_response()),
        None => Err(Refused(
            StatusCode::NOT_FOUND,
            "no such proposal record".into(),
        )),
    }
}

/// Files a proposal (`ID.prop`, `propose` of the database needed) or its decision
/// (`ID.decision`, `write` needed), create-only (`If-None-Match: *`): 201 kept, 412 one of
/// that name is there already.
async fn put_proposal(
    State(app): Shared,
    Path((db, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response, Refused> {
    let decision = proposal_parts(&db, &name)?;
    let need = if decision {
        Access::Write
    } else {
        Access::Propose
    };
    app.authorize(&headers, Need::Db(need, &db))?;
    if headers.get(header::IF_NONE_MATCH).map(|v| v.as_bytes()) != Some(b"*") {
        return Err(Refused(
            StatusCode::PRECONDITION_REQUIRED,
            "a proposal record is created only (If-None-Match: *)".into(),
        ));
    }
    let body = body_of(body, kiln_sync::MAX_PROPOSAL_RECORD.min(app.max_body)).await?;
    if !body.starts_with(kiln::PROPOSAL_RECORD_MAGIC) {
        return Err(Refused(
            StatusCode::UNPROCESSABLE_ENTITY,
            "not a sealed proposal record".into(),
        ));
    }
    let kept = blocking(move || app.storage.put_proposal_record(&db, &name, &body)).await?;
    Ok(if kept {
        StatusCode::CREATED.into_response()
    } else {
        (
            StatusCode::PRECONDITION_FAILED,
            "a proposal record of that name is there already\n",
        )
            .into_response()
    })
}

/// Middleware: a request that takes longer than `limit` (a slow upload, say) gets 408, and
/// what it was doing is dropped (a file is kept whole or not at all).
async fn deadline(
    State(limit): State<std::time::Duration>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(r) => r,
        Err(_) => Refused(
            StatusCode::REQUEST_TIMEOUT,
            format!("the request took longer than {} s", limit.as_secs()),
        )
        .into_response(),
    }
}

#[derive(Deserialize)]
struct Watch {
    dbs: String,
}

/// Subscribes to databases `dbs` (comma-separated; read access to each needed).
async fn watch(
    State(app): Shared,
    Query(q): Query<Watch>,
    headers: HeaderMap,
) -> Result<Response, Refused> {
    if q.dbs.split(',').count() > MAX_MISSING {
        return Err(Refused(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("at most {MAX_MISSING} databases a subscription"),
        ));
    }
    let mut dbs = std::collections::HashSet::new();
    for db in q.dbs.split(',') {
        check_db(db).map_err(|e| Refused::bad(e.to_string()))?;
        app.authorize(&headers, Need::Db(Access::Read, db))?;
        dbs.insert(db.to_owned());
    }
    // A token taken out of the tokens file (SIGHUP) ends its subscriptions.
    let allowed: crate::live::StillAllowed = match &app.tokens {
        None => Box::new(|| true),
        Some(tokens) => {
            let (tokens, watched) = (tokens.clone(), dbs.clone());
            let token = bearer(&headers).unwrap_or_default().as_bytes().to_vec();
            Box::new(move || {
                let now = tokens.read().unwrap_or_else(|p| p.into_inner()).clone();
                now.scope(&token)
                    .is_some_and(|s| watched.iter().all(|db| s.allows(Access::Read, db)))
            })
        }
    };
    Ok(app
        .live
        .subscribe(dbs, app.storage.clone(), allowed)
        .into_response())
}
