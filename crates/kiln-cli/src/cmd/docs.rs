//! Documents: put, get, del, docs, import, export, changes, log.

use super::Ctx;
use crate::input::{
    batch_size, not_utf8, parse_event, read_line, read_stdin_doc, too_long, Line, MAX_TEXT,
};
use crate::out::{bad_input, cids, code, esc, exit_code, utc, Fail};
use clap::Subcommand;
use kiln::{Cid, Database, Error, ListOptions, Rev};
use serde_json::{json, Value};
use std::io::{BufRead, Write};
use std::path::PathBuf;

/// Reading and writing documents, and their history of events.
#[derive(Subcommand)]
pub enum DocsGroup {
    /// Write a document (replaces the whole document). JSON from the argument or stdin.
    ///
    /// The JSON text is read up to 8 MiB (any stored document's compact JSON fits); the stored
    /// document is at most 1 MiB. Integers must fit in 64 bits (store larger ones as strings).
    Put {
        db: String,
        /// The document; read from stdin when omitted or `-`.
        #[arg(value_name = "JSON")]
        doc: Option<String>,
        /// Write only if the document is still at this version (from `kiln get DB ID --rev`);
        /// else exit 6, writing nothing.
        #[arg(long, value_name = "REV", conflicts_with = "if_absent")]
        if_rev: Option<String>,
        /// Write only if the document does not exist; else exit 6, writing nothing.
        #[arg(long)]
        if_absent: bool,
        /// Attach a file: NAME=PATH (repeat for several; all go into one file-set). The
        /// document is replaced whole, so it has these files and those its JSON `_files`
        /// carries (`kiln attach` adds to the files it has).
        #[arg(long = "file", value_name = "NAME=PATH", conflicts_with_all = ["if_rev", "if_absent"])]
        files: Vec<String>,
        /// Content type of the files given (else guessed from each name's extension).
        #[arg(long = "type", value_name = "TYPE", requires = "files")]
        content_type: Option<String>,
    },
    /// Read a document; exit code 3 if it does not exist.
    Get {
        db: String,
        id: String,
        /// Read it as of this event (a CID from `kiln log`).
        #[arg(long, value_name = "EVENT", conflicts_with = "conflicts")]
        at: Option<String>,
        /// Print the values a merge lost for this document (JSON lines; none once a later write
        /// settled them) instead of the document.
        #[arg(long)]
        conflicts: bool,
        /// Print the document's version (HEIGHT-CID, for `put --if-rev`) instead of the
        /// document.
        #[arg(long, conflicts_with_all = ["at", "conflicts"])]
        rev: bool,
        /// Print the document's versions, newest first, one JSON object per line
        /// ({"event", "rev", "time", "doc"}; doc null for a delete), found through the files'
        /// document logs (the log is not walked).
        #[arg(long, conflicts_with_all = ["at", "conflicts", "rev"])]
        history: bool,
        /// With --history: at most this many versions.
        #[arg(long, requires = "history")]
        limit: Option<usize>,
    },
    /// Delete a document (records a tombstone); exit code 3, writing nothing, if it does not
    /// exist.
    Del {
        db: String,
        id: String,
        /// Delete only if the document is still at this version (from `kiln get DB ID
        /// --rev`); else exit 6, writing nothing.
        #[arg(long, value_name = "REV")]
        if_rev: Option<String>,
    },
    /// List documents in id order (one JSON document per line; --json: one array).
    ///
    /// Pages: `--limit N`, then `--after LAST_ID` with the last id printed. The listing is of
    /// the state when it began (commits made meanwhile do not show).
    Docs {
        db: String,
        #[arg(long)]
        limit: Option<usize>,
        /// First id (inclusive).
        #[arg(long)]
        start: Option<String>,
        /// Last id (inclusive).
        #[arg(long)]
        end: Option<String>,
        /// Only ids after this one in the listing's order (greater; smaller with --desc).
        #[arg(long, value_name = "ID")]
        after: Option<String>,
        /// Only ids starting with this.
        #[arg(long)]
        prefix: Option<String>,
        /// Descending id order (with --limit: the last ids).
        #[arg(long)]
        desc: bool,
    },
    /// Import JSON lines (one document per line) in transactions of --batch documents.
    ///
    /// A line is read up to 8 MiB. On a bad line (exit 2) or a failed commit the import stops
    /// and says at which line and how many documents were imported before it; those stay.
    Import {
        db: String,
        /// A .jsonl file, or - for stdin.
        file: PathBuf,
        /// Documents per transaction (at least 1).
        #[arg(long, default_value_t = 1000, value_parser = batch_size)]
        batch: usize,
    },
    /// Print every document as JSON lines, in id order.
    Export { db: String },
    /// Documents changed since an event (all documents, with deletions, without --since).
    Changes {
        db: String,
        /// Event CID(s); repeat or separate with commas for several heads.
        #[arg(long, value_name = "EVENT", value_delimiter = ',')]
        since: Vec<String>,
        /// Only the N most recent changes (still oldest first; 0: none).
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
    },
    /// The event log, newest first.
    Log {
        db: String,
        #[arg(long)]
        limit: Option<usize>,
    },
}

impl DocsGroup {
    pub fn run(self, ctx: &Ctx) -> Result<u8, Fail> {
        match self {
            DocsGroup::Put {
                db,
                doc: text,
                files,
                content_type,
                ..
            } if !files.is_empty() => put_with_files(ctx, db, text, files, content_type),
            DocsGroup::Put {
                db,
                doc: text,
                if_rev,
                if_absent,
                ..
            } => put(ctx, db, text, expected(if_rev, if_absent)?),
            DocsGroup::Get {
                db, id, rev: true, ..
            } => rev(ctx, db, id),
            DocsGroup::Get {
                db,
                id,
                history: true,
                limit,
                ..
            } => history(ctx, db, id, limit),
            DocsGroup::Get {
                db,
                id,
                conflicts: true,
                ..
            } => conflicts(ctx, db, id),
            DocsGroup::Get { db, id, at, .. } => get(ctx, db, id, at),
            DocsGroup::Del { db, id, if_rev } => del(ctx, db, id, if_rev),
            DocsGroup::Docs {
                db,
                limit,
                start,
                end,
                after,
                prefix,
                desc,
            } => docs(
                ctx,
                db,
                ListOptions {
                    start,
                    end,
                    limit,
                    after,
                    prefix,
                    desc,
                },
            ),
            DocsGroup::Import { db, file, batch } => import(ctx, db, file, batch),
            DocsGroup::Export { db } => export(ctx, db),
            DocsGroup::Changes { db, since, limit } => changes(ctx, db, since, limit),
            DocsGroup::Log { db, limit } => log(ctx, db, limit),
        }
    }
}

/// What `put` expects of the document: nothing (`None`), no document (`Some(None)`), or a
/// version.
fn expected(if_rev: Option<String>, if_absent: bool) -> Result<Option<Option<Rev>>, Fail> {
    match (if_rev, if_absent) {
        (Some(r), _) => Ok(Some(Some(r.parse::<Rev>()?))),
        (None, true) => Ok(Some(None)),
        (None, false) => Ok(None),
    }
}

/// The document's JSON text: the argument (up to 8 MiB), or stdin when it is absent or `-`.
fn doc_text(text: Option<String>) -> Result<String, Fail> {
    match text {
        Some(t) if t != "-" => {
            if t.len() > MAX_TEXT {
                return Err(bad_input(too_long("the document")));
            }
            Ok(t)
        }
        _ => read_stdin_doc(),
    }
}

fn put(
    ctx: &Ctx,
    db: String,
    text: Option<String>,
    expect: Option<Option<Rev>>,
) -> Result<u8, Fail> {
    let db = ctx.open(&db)?;
    let text = doc_text(text)?;
    // From the text (not through a serde_json Value, which makes a float of an
    // integer outside the 64-bit range: the text path refuses it).
    let c = match expect {
        None => db.put_json(&text)?,
        Some(rev) => db.put_json_if(&text, rev.as_ref())?,
    };
    ctx.out.print(
        || format!("{} {}", esc(&c.ids[0]), c.event),
        || json!({"id": c.ids[0], "event": c.event.to_string(), "heads": cids(&c.heads)}),
    );
    Ok(0)
}

/// `put --file`: the document (checked as JSON text first: an integer outside 64 bits is
/// refused, not made a float) with its files, in one commit.
fn put_with_files(
    ctx: &Ctx,
    db: String,
    text: Option<String>,
    specs: Vec<String>,
    content_type: Option<String>,
) -> Result<u8, Fail> {
    let db = ctx.open(&db)?;
    let text = doc_text(text)?;
    kiln::check_document_json(&text)?;
    let doc: Value = serde_json::from_str(&text).map_err(|e| bad_input(e.to_string()))?;
    let (files, bar) = super::files::open_files(&specs, content_type.as_deref())?;
    let c = db.put_with_files(&doc, files);
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let c = c?;
    ctx.out.print(
        || format!("{} {}", esc(&c.ids[0]), c.event),
        || json!({"id": c.ids[0], "event": c.event.to_string(), "heads": cids(&c.heads)}),
    );
    Ok(0)
}

fn conflicts(ctx: &Ctx, db: String, id: String) -> Result<u8, Fail> {
    let db = ctx.open(&db)?;
    let losers = db.conflicts(&id)?;
    ctx.out.print(
        || {
            losers
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        },
        || json!(losers),
    );
    Ok(0)
}

fn get(ctx: &Ctx, db: String, id: String, at: Option<String>) -> Result<u8, Fail> {
    let db = ctx.open(&db)?;
    let doc = match at {
        Some(e) => db.get_at(&id, &parse_event(&e)?)?,
        None => db.get(&id)?,
    };
    match doc {
        Some(d) => ctx.out.print(
            || serde_json::to_string_pretty(&d).unwrap_or_default(),
            || d.clone(),
        ),
        None => {
            eprintln!("kiln: no document {id:?} in {}", db.name());
            return Ok(code::NOT_FOUND);
        }
    }
    Ok(0)
}

fn history(ctx: &Ctx, db: String, id: String, limit: Option<usize>) -> Result<u8, Fail> {
    let db = ctx.open(&db)?;
    let versions: Vec<Value> = db
        .history(&id, limit)?
        .into_iter()
        .map(|v| {
            json!({
                "event": v.event.to_string(),
                "rev": v.rev.map(|r| r.to_string()),
                "time": v.time,
                "doc": v.doc,
            })
        })
        .collect();
    if versions.is_empty() {
        eprintln!("kiln: no document {id:?} in {} (never written)", db.name());
        return Ok(code::NOT_FOUND);
    }
    ctx.out.print(
        || {
            versions
                .iter()
                .map(|v| v.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        },
        || Value::Array(versions.clone()),
    );
    Ok(0)
}

fn rev(ctx: &Ctx, db: String, id: String) -> Result<u8, Fail> {
    let db = ctx.open(&db)?;
    match db.rev(&id)? {
        Some(r) => ctx
            .out
            .print(|| r.to_string(), || json!({"id": id, "rev": r})),
        None => {
            eprintln!("kiln: no document {id:?} in {}", db.name());
            return Ok(code::NOT_FOUND);
        }
    }
    Ok(0)
}

fn del(ctx: &Ctx, db: String, id: String, if_rev: Option<String>) -> Result<u8, Fail> {
    let db = ctx.open(&db)?;
    let c = match if_rev {
        Some(r) => db.del_if(&id, &r.parse::<Rev>()?)?,
        None => db.del(&id)?,
    };
    ctx.out.print(
        || format!("deleted {} {}", esc(&id), c.event),
        || json!({"id": id, "event": c.event.to_string(), "heads": cids(&c.heads)}),
    );
    Ok(0)
}

fn docs(ctx: &Ctx, db: String, opts: ListOptions) -> Result<u8, Fail> {
    let db = ctx.open(&db)?;
    if ctx.out.json {
        let docs = db.docs(&opts)?;
        ctx.out.print(String::new, || Value::Array(docs));
        return Ok(0);
    }
    // One line per document as the walk reaches it: a large listing is never held whole.
    let mut o = std::io::BufWriter::new(std::io::stdout().lock());
    // (A write that fails is stdout closed, a pager quit: nothing more to say.)
    db.scan(&opts, &mut |d| writeln!(o, "{d}").is_ok())?;
    let _ = o.flush();
    Ok(0)
}

fn import(ctx: &Ctx, db: String, file: PathBuf, batch: usize) -> Result<u8, Fail> {
    let db = ctx.open(&db)?;
    let n = import_json_lines(&db, &file, batch)?;
    ctx.out.print(
        || format!("imported {n} documents into {}", db.name()),
        || json!({"imported": n}),
    );
    Ok(0)
}

fn export(ctx: &Ctx, db: String) -> Result<u8, Fail> {
    let db = ctx.open(&db)?;
    let mut o = std::io::BufWriter::new(std::io::stdout().lock());
    let mut failed = None;
    db.scan(&ListOptions::default(), &mut |d| match writeln!(o, "{d}") {
        Ok(()) => true,
        Err(e) => {
            failed = Some(e);
            false
        }
    })?;
    if let Some(e) = failed.or_else(|| o.flush().err()) {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            return Err(Error::io("stdout", e).into());
        }
    }
    Ok(0)
}

fn changes(ctx: &Ctx, db: String, since: Vec<String>, limit: Option<usize>) -> Result<u8, Fail> {
    let db = ctx.open(&db)?;
    let since: Vec<Cid> = since
        .iter()
        .map(|s| parse_event(s))
        .collect::<kiln::Result<_>>()?;
    let since = if since.is_empty() {
        None
    } else {
        Some(&since[..])
    };
    let ch = match limit {
        Some(l) => db.changes_limited(since, l)?,
        None => db.changes(since)?,
    };
    ctx.out.print(
        || {
            ch.iter()
                .map(|c| format!("{:>6} {}{}", c.version, esc(&c.id), if c.deleted { "  (deleted)" } else { "" }))
                .collect::<Vec<_>>()
                .join("\n")
        },
        || {
            json!(ch
                .iter()
                .map(|c| json!({"id": c.id, "version": c.version, "deleted": c.deleted, "doc": c.doc}))
                .collect::<Vec<_>>())
        },
    );
    Ok(0)
}

fn log(ctx: &Ctx, db: String, limit: Option<usize>) -> Result<u8, Fail> {
    let db = ctx.open(&db)?;
    let log = db.log(limit)?;
    ctx.out.print(
        || {
            log.iter()
                .map(|e| {
                    let ids: Vec<String> =
                        e.ops.iter().map(|(id, del)| format!("{}{}", if *del { "-" } else { "" }, esc(id))).collect();
                    let shown = if ids.len() > 5 {
                        format!("{} … (+{})", ids[..5].join(" "), ids.len() - 5)
                    } else {
                        ids.join(" ")
                    };
                    let note = if e.note.is_empty() { String::new() } else { format!("  [{}]", esc(&e.note)) };
                    format!("{}  height {}  {}  parents {}  {}{note}", e.cid, e.height, utc(e.time), e.parents.len(), shown)
                })
                .collect::<Vec<_>>()
                .join("\n")
        },
        || {
            json!(log
                .iter()
                .map(|e| json!({"cid": e.cid.to_string(), "parents": cids(&e.parents), "height": e.height,
                    "time_ms": e.time, "note": e.note, "ops": e.ops.iter().map(|(id, del)| json!({"id": id, "deleted": del})).collect::<Vec<_>>()}))
                .collect::<Vec<_>>())
        },
    );
    Ok(0)
}

/// Imports JSON lines in transactions of `batch` documents. A failure says at which line it
/// stopped and how many documents were imported (committed) before it, which stay.
fn import_json_lines(db: &Database, file: &PathBuf, batch: usize) -> Result<u64, Fail> {
    let (mut reader, total): (Box<dyn BufRead>, Option<u64>) = if file.as_os_str() == "-" {
        (Box::new(std::io::stdin().lock()), None)
    } else {
        let f = std::fs::File::open(file).map_err(|e| Error::io(file, e))?;
        let len = f.metadata().map(|m| m.len()).ok();
        (Box::new(std::io::BufReader::new(f)), len)
    };
    let bar = match total {
        Some(t) => indicatif::ProgressBar::new(t),
        None => indicatif::ProgressBar::new_spinner(),
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {bytes}/{total_bytes} {wide_bar} {per_sec} {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let r = import_lines(db, &mut *reader, file, batch, &bar);
    bar.finish_and_clear();
    r
}

fn import_lines(
    db: &Database,
    reader: &mut dyn BufRead,
    file: &std::path::Path,
    batch: usize,
    bar: &indicatif::ProgressBar,
) -> Result<u64, Fail> {
    let mut docs: Vec<String> = Vec::with_capacity(batch.min(1 << 16));
    // Documents committed, and the line the last committed batch ended at.
    let (mut done, mut done_to) = (0u64, 0u64);
    // The line the batch being gathered starts at.
    let mut first = 0u64;
    // Where it stopped (a line, or the lines of a batch), why, and what was imported before.
    let stop = |(first, last): (u64, u64), why: String, code: u8, done: u64, done_to: u64| {
        let (at, it) = match first == last {
            true => (format!("line {last}"), "it"),
            false => (format!("lines {first}–{last}"), "them"),
        };
        let before = match done {
            0 => "nothing was imported".to_owned(),
            _ => format!("{done} documents before {it} were imported (lines 1–{done_to})"),
        };
        Fail {
            code,
            msg: format!("import stopped at {at}: {why}; {before}"),
        }
    };
    let flush =
        |docs: &mut Vec<String>, first: u64, last: u64, done: &mut u64, done_to: &mut u64| {
            if docs.is_empty() {
                return Ok(());
            }
            if let Err(e) = db.bulk_json(docs) {
                let why = format!(
                    "committing {} failed: {e}",
                    if first == last { "it" } else { "them" }
                );
                return Err(stop((first, last), why, exit_code(&e), *done, *done_to));
            }
            *done += docs.len() as u64;
            *done_to = last;
            docs.clear();
            bar.set_message(format!("{done} docs"));
            Ok(())
        };
    let mut buf = Vec::new();
    let mut n = 0u64;
    loop {
        let read = read_line(reader, &mut buf, MAX_TEXT);
        let line_no = n + 1;
        let at = (line_no, line_no);
        match read {
            Ok(Line::End) => break,
            Ok(Line::TooLong) => {
                return Err(stop(at, too_long("the line"), code::USAGE, done, done_to));
            }
            Ok(Line::Text) => {}
            Err(e) => {
                let e = Error::io(file, e);
                return Err(stop(at, e.to_string(), exit_code(&e), done, done_to));
            }
        }
        n = line_no;
        bar.inc(buf.len() as u64 + 1);
        let line = match std::str::from_utf8(&buf) {
            Ok(l) => l,
            Err(e) => {
                return Err(stop(
                    at,
                    not_utf8("the line", &e),
                    code::USAGE,
                    done,
                    done_to,
                ))
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        // Checked line by line (the error names the line); stored from the text as it is.
        if let Err(e) = kiln::check_document_json(line) {
            return Err(stop(at, e.to_string(), exit_code(&e), done, done_to));
        }
        if docs.is_empty() {
            first = n;
        }
        docs.push(line.to_owned());
        if docs.len() >= batch {
            flush(&mut docs, first, n, &mut done, &mut done_to)?;
        }
    }
    flush(&mut docs, first, n, &mut done, &mut done_to)?;
    Ok(done)
}
