//! Attached files: attach, detach, file, files (and `put --file`, which is `docs`').

use super::Ctx;
use crate::input::parse_event;
use crate::out::{bad_input, esc, Fail};
use clap::Subcommand;
use kiln::{Attachment, Error, FileInfo};
use serde_json::json;
use std::io::{Read, Write};
use std::path::PathBuf;

/// Files attached to documents: stored encrypted in file-sets apart from the documents, one
/// file-set per write; a document's `_files` lists them (`kiln get` shows it, never bytes).
#[derive(Subcommand)]
pub enum FilesGroup {
    /// Add files to an existing document, or replace files of the same names (the others
    /// stay): one new file-set and one commit. NAME=PATH for each file; the content type is
    /// guessed from the name's extension unless --type says it (for every file given).
    Attach {
        db: String,
        id: String,
        /// NAME=PATH (repeat for several files).
        #[arg(value_name = "NAME=PATH", required = true)]
        files: Vec<String>,
        /// Content type of the files given (else guessed from each name).
        #[arg(long = "type", value_name = "TYPE")]
        content_type: Option<String>,
    },
    /// Remove files from a document (their bytes stay while an older version names them).
    Detach {
        db: String,
        id: String,
        /// File names (repeat for several).
        #[arg(value_name = "NAME", required = true)]
        names: Vec<String>,
    },
    /// Write an attached file's bytes to stdout or a file.
    File {
        db: String,
        id: String,
        name: String,
        /// Write to this path instead of stdout (created or replaced).
        #[arg(short = 'o', long = "out", value_name = "OUT")]
        out: Option<PathBuf>,
        /// Only bytes START to END, inclusive, counted from 0 (as in an HTTP range); START-
        /// for the rest of the file. Opens only the chunks they are in.
        #[arg(long, value_name = "START-END")]
        range: Option<String>,
        /// The file as the document had it at this event (a CID from `kiln log`).
        #[arg(long, value_name = "EVENT")]
        at: Option<String>,
    },
    /// List a document's attached files (one line each: name, size, type, CID; --json: an
    /// array of {"name", "cid", "size", "type", "modified", "set"}).
    Files {
        db: String,
        id: String,
        /// The files the document had at this event.
        #[arg(long, value_name = "EVENT")]
        at: Option<String>,
    },
}

impl FilesGroup {
    pub fn run(self, ctx: &Ctx) -> Result<u8, Fail> {
        match self {
            FilesGroup::Attach {
                db,
                id,
                files,
                content_type,
            } => attach(ctx, db, id, files, content_type),
            FilesGroup::Detach { db, id, names } => detach(ctx, db, id, names),
            FilesGroup::File {
                db,
                id,
                name,
                out,
                range,
                at,
            } => file(ctx, db, id, name, out, range, at),
            FilesGroup::Files { db, id, at } => list(ctx, db, id, at),
        }
    }
}

/// Files over this many bytes in all get a progress bar on a terminal.
const PROGRESS_FROM: u64 = 4 << 20;

/// A progress bar of `total` bytes (drawn only on a terminal, on stderr).
fn progress(total: u64) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bytes}/{total_bytes} {wide_bar} {bytes_per_sec}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

/// The files given as NAME=PATH, each opened (so a missing path fails before anything is
/// written), with their modified times; with a progress bar when they are large (finish it
/// when done).
pub fn open_files(
    specs: &[String],
    content_type: Option<&str>,
) -> Result<(Vec<Attachment<'static>>, Option<indicatif::ProgressBar>), Fail> {
    let mut opened = Vec::with_capacity(specs.len());
    for s in specs {
        let Some((name, path)) = s.split_once('=') else {
            return Err(bad_input(format!(
                "{} is not NAME=PATH (a file's name in the document, then its path)",
                esc(s)
            )));
        };
        let f = std::fs::File::open(path)
            .map_err(|e| bad_input(format!("cannot read {}: {e}", esc(path))))?;
        let meta = f
            .metadata()
            .map_err(|e| bad_input(format!("cannot read {}: {e}", esc(path))))?;
        if meta.is_dir() {
            return Err(bad_input(format!("{} is a folder, not a file", esc(path))));
        }
        let modified = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_millis() as u64);
        opened.push((name.to_owned(), f, meta.len(), modified));
    }
    let total: u64 = opened.iter().map(|(_, _, n, _)| n).sum();
    let bar = (total >= PROGRESS_FROM).then(|| progress(total));
    let mut out = Vec::with_capacity(opened.len());
    for (name, f, _, modified) in opened {
        let r = std::io::BufReader::with_capacity(1 << 20, f);
        let mut a = match &bar {
            Some(b) => Attachment::reader(name, b.wrap_read(r)),
            None => Attachment::reader(name, r),
        };
        if let Some(m) = modified {
            a = a.modified(m);
        }
        if let Some(t) = content_type {
            a = a.content_type(t);
        }
        out.push(a);
    }
    Ok((out, bar))
}

/// Bad names and the like are bad input (exit 2), as is attaching to no document.
fn input_error(e: Error) -> Fail {
    match e {
        Error::NoSuchDocument { .. } => bad_input(e.to_string()),
        e => e.into(),
    }
}

fn attach(
    ctx: &Ctx,
    db: String,
    id: String,
    specs: Vec<String>,
    content_type: Option<String>,
) -> Result<u8, Fail> {
    let db = ctx.open(&db)?;
    let (files, bar) = open_files(&specs, content_type.as_deref())?;
    let c = db.attach(&id, files).map_err(input_error);
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let c = c?;
    ctx.out.print(
        || format!("{} {}", esc(&id), c.event),
        || json!({"id": id, "event": c.event.to_string(), "files": db.files(&id).unwrap_or_default()}),
    );
    Ok(0)
}

fn detach(ctx: &Ctx, db: String, id: String, names: Vec<String>) -> Result<u8, Fail> {
    let db = ctx.open(&db)?;
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let c = db.detach(&id, &names).map_err(input_error)?;
    ctx.out.print(
        || format!("{} {}", esc(&id), c.event),
        || json!({"id": id, "event": c.event.to_string()}),
    );
    Ok(0)
}

/// START-END (inclusive) or START-.
fn parse_range(s: &str) -> Result<(u64, Option<u64>), Fail> {
    let bad = || bad_input(format!("--range {} is not START-END or START-", esc(s)));
    let (a, b) = s.split_once('-').ok_or_else(bad)?;
    let start = a.trim().parse::<u64>().map_err(|_| bad())?;
    let end = match b.trim() {
        "" => None,
        e => Some(e.parse::<u64>().map_err(|_| bad())?),
    };
    if end.is_some_and(|e| e < start) {
        return Err(bad_input(format!(
            "--range {}: END is before START",
            esc(s)
        )));
    }
    Ok((start, end))
}

#[allow(clippy::too_many_arguments)]
fn file(
    ctx: &Ctx,
    db: String,
    id: String,
    name: String,
    out: Option<PathBuf>,
    range: Option<String>,
    at: Option<String>,
) -> Result<u8, Fail> {
    let range = range.as_deref().map(parse_range).transpose()?;
    let db = ctx.open(&db)?;
    let mut r = match at {
        Some(e) => db.open_file_at(&id, &name, &parse_event(&e)?)?,
        None => db.open_file(&id, &name)?,
    };
    let (start, end) = match range {
        None => (0, r.len()),
        Some((s, e)) => (
            s.min(r.len()),
            e.map_or(r.len(), |e| e.saturating_add(1)).min(r.len()),
        ),
    };
    let mut sink: Box<dyn Write> = match &out {
        Some(p) => Box::new(std::io::BufWriter::with_capacity(
            1 << 20,
            std::fs::File::create(p)
                .map_err(|e| bad_input(format!("cannot write {}: {e}", p.display())))?,
        )),
        None => Box::new(std::io::stdout().lock()),
    };
    use std::io::Seek;
    r.seek(std::io::SeekFrom::Start(start))
        .map_err(|e| Fail::from(Error::InvalidArgument(e.to_string())))?;
    let mut left = end - start;
    let bar = (left >= PROGRESS_FROM && out.is_some()).then(|| progress(left));
    let mut buf = vec![0u8; 1 << 20];
    let write_err = |e: std::io::Error| Fail {
        code: crate::out::code::ERROR,
        msg: format!("writing the file: {e}"),
    };
    while left > 0 {
        let want = (buf.len() as u64).min(left) as usize;
        let n = match r.read(&mut buf[..want]) {
            Ok(0) => break,
            Ok(n) => n,
            // The reader's errors are kiln's (corruption, a file-set not here): say them so.
            Err(e) => {
                return Err(match e.into_inner().map(|x| x.downcast::<Error>()) {
                    Some(Ok(k)) => (*k).into(),
                    Some(Err(x)) => Fail {
                        code: crate::out::code::ERROR,
                        msg: x.to_string(),
                    },
                    None => Fail {
                        code: crate::out::code::ERROR,
                        msg: "reading the file failed".into(),
                    },
                })
            }
        };
        sink.write_all(&buf[..n]).map_err(write_err)?;
        left -= n as u64;
        if let Some(b) = &bar {
            b.inc(n as u64);
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    sink.flush().map_err(write_err)?;
    Ok(0)
}

fn list(ctx: &Ctx, db: String, id: String, at: Option<String>) -> Result<u8, Fail> {
    let db = ctx.open(&db)?;
    let files: Vec<FileInfo> = match at {
        Some(e) => db.files_at(&id, &parse_event(&e)?)?,
        None => db.files(&id)?,
    };
    ctx.out.print(
        || {
            files
                .iter()
                .map(|f| {
                    format!(
                        "{}\t{}\t{}\t{}",
                        esc(&f.name),
                        f.size,
                        esc(&f.content_type),
                        f.cid
                    )
                })
                .collect::<Vec<_>>()
                .join("\n")
        },
        || json!(files),
    );
    Ok(0)
}
