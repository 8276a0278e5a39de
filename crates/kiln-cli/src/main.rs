//! `kiln`: the command-line tool. Every verb is one library call plus printing.

use clap::{Parser, Subcommand};
use kiln::{Cid, Database, Durability, Error, ListOptions, Location, Options, Settings, Store};
use serde_json::{json, Value};
use std::io::{BufRead, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

/// Exit codes (also in `kiln --help`).
mod code {
    pub const ERROR: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const NOT_FOUND: u8 = 3;
    pub const NO_SUCH: u8 = 4;
    pub const CORRUPT: u8 = 5;
}

#[derive(Parser)]
#[command(
    name = "kiln",
    version,
    about = "kiln: an embedded, encrypted, content-addressed document database",
    after_help = "Exit codes: 0 ok, 1 error, 2 bad usage or input (also: invalid UTF-8, a document \
                  over 8 MiB of JSON text, an integer outside the 64-bit range), 3 document not \
                  found (or purged), 4 no such store, database or event, 5 corruption found.\n\
                  The store folder is --root, else $KILN_ROOT, else $XDG_DATA_HOME/kiln, else ~/.local/share/kiln."
)]
struct Cli {
    /// Store folder. Only `db create`, `demo` and a `config` change create a store where
    /// there is none; other commands say "no kiln store" (exit 4).
    #[arg(long, global = true, env = "KILN_ROOT", value_name = "DIR")]
    root: Option<PathBuf>,
    /// Machine-readable JSON output.
    #[arg(long, global = true)]
    json: bool,
    /// `full`: fsync every commit (survives power loss); `buffered`: no fsync (survives a
    /// process crash, may lose the last commits on power loss).
    #[arg(long, global = true, default_value = "full", value_parser = ["full", "buffered"])]
    durability: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create, list, inspect and drop databases.
    #[command(subcommand)]
    Db(DbCmd),
    /// Documents added, changed and deleted from A to B.
    ///
    /// Each side is a database (its current state) or DB@EVENT (its state at that event).
    /// Compares trees, so the cost follows the differences, not the size.
    Diff { a: String, b: String },
    /// Merge SRC into DST (three-way; conflicts listed; --only: exit 3 if SRC never had one).
    ///
    /// DST gains SRC's events and a merge event joins the heads. A document changed on one
    /// side takes that change; changed on both sides to different values is a conflict (the
    /// write with the greater height, then value CID, wins — the same everywhere); the report
    /// lists each with the ancestor and both values. With --only, just those documents take
    /// SRC's values, as an ordinary transaction.
    Merge {
        src: String,
        #[arg(long, value_name = "DST")]
        into: String,
        #[arg(long, value_name = "ID", num_args = 1..)]
        only: Vec<String>,
    },
    /// Nominate FORK's changes for MAIN; prints the proposal id.
    Propose {
        fork: String,
        #[arg(long, value_name = "MAIN")]
        to: String,
        #[arg(short, long, default_value = "")]
        message: String,
    },
    /// Proposals for MAIN (open ones; --all for decided ones too).
    Proposals {
        main: Option<String>,
        #[arg(long)]
        all: bool,
    },
    /// What accepting a proposal would change in its target now, conflicts flagged.
    Review { id: String },
    /// Accept a proposal: merge the fork into the target.
    ///
    /// With --only, just those documents. Recorded in the target's history with who accepted
    /// it (--by, else $USER). A proposal is decided once.
    Accept {
        id: String,
        #[arg(long, value_name = "ID", num_args = 1..)]
        only: Vec<String>,
        #[arg(long)]
        by: Option<String>,
    },
    /// Pin a proposal to its fork's current state (after the fork changed).
    ///
    /// A proposal pins the fork's state when it is made: review and accept work on exactly
    /// that state and refuse once the fork has moved on, until the proposal is updated.
    UpdateProposal { id: String },
    /// Reject a proposal, with a reason.
    Reject {
        id: String,
        #[arg(short, long, default_value = "")]
        message: String,
        #[arg(long)]
        by: Option<String>,
    },
    /// Fork a database (O(1): shares its files).
    ///
    /// The new database (a fresh UUID name when DST is omitted) starts at SRC's current state
    /// and shares its files; it costs one head record and copies nothing.
    Fork { src: String, dst: Option<String> },
    /// Write a document (replaces the whole document). JSON from the argument or stdin.
    ///
    /// The JSON text is read up to 8 MiB (any stored document's compact JSON fits); the stored
    /// document is at most 1 MiB. Integers must fit in 64 bits (store larger ones as strings).
    Put {
        db: String,
        /// The document; read from stdin when omitted or `-`.
        #[arg(value_name = "JSON")]
        doc: Option<String>,
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
    },
    /// Delete a document (records a tombstone); exit code 3, writing nothing, if it does not
    /// exist.
    Del { db: String, id: String },
    /// List documents in id order.
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
    },
    /// The event log, newest first.
    Log {
        db: String,
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Re-hash every stored byte and check every link; exit code 5 on any problem.
    ///
    /// Also puts back a diff file a power cut lost or damaged from the copy the head record
    /// carries (listed as repaired), and says when the head record ends in a commit a crash
    /// cut off (never acknowledged, discarded).
    Verify { db: String },
    /// Merge the transaction diff files now (--full: everything into one file).
    ///
    /// Without options, the diffs merge into one file and levels over their limit cascade.
    Compact {
        db: String,
        #[arg(long)]
        full: bool,
        /// Squash the history older than EVENT into the state at EVENT: earlier events and the
        /// versions only they name are removed; reads at EVENT and later are unchanged. Leaves
        /// one file.
        #[arg(long, value_name = "EVENT", conflicts_with = "full")]
        drop_history_before: Option<String>,
    },
    /// Remove every stored version of one document (privacy requests).
    ///
    /// The document is deleted, its versions are removed from all files (the database is
    /// rewritten into one file, archived copies are deleted), and reads of them say
    /// "purged". Its id stays in the history. Forks keep their own copies.
    Purge { db: String, id: String },
    /// Remove files no database names; prints the bytes freed.
    ///
    /// Into the archive when the store keeps one. Safe while other processes write.
    Gc,
    /// Show or change store settings (--compact-threshold N|default, --keep-archive on|off).
    Config {
        /// Compact a database when more than N diff files are live (default 100), unless the
        /// database has its own setting. `default` clears it.
        #[arg(long, value_name = "N|default")]
        compact_threshold: Option<String>,
        /// Keep the files that compaction and gc retire in files/.archive/ instead of deleting
        /// them, so every diff can be read back.
        #[arg(long, value_name = "on|off", value_parser = ["on", "off"])]
        keep_archive: Option<String>,
    },
    /// Create a database "demo" with 1,000 sample documents, read them back and verify.
    Demo,
}

#[derive(Subcommand)]
enum DbCmd {
    /// Create a database (a fresh UUID name when NAME is omitted).
    Create {
        name: Option<String>,
        /// This database's compaction threshold (else the store's, default 100).
        #[arg(long, value_name = "N")]
        compact_threshold: Option<usize>,
    },
    /// Change a database's settings.
    Set {
        name: String,
        /// Compact when more than N diff files are live; `default` uses the store's setting.
        #[arg(long, value_name = "N|default")]
        compact_threshold: String,
    },
    /// A database's files: live ones, and with --history every earlier one reachable through
    /// what each compaction replaced (live, kept, archived or gone).
    Files {
        name: String,
        #[arg(long)]
        history: bool,
    },
    /// List databases.
    List,
    /// Delete a database with its files and key.
    Drop { name: String },
    /// Documents, heads, files and bytes of a database.
    Info { name: String },
}

struct Out {
    json: bool,
}

impl Out {
    fn print(&self, human: impl FnOnce() -> String, machine: impl FnOnce() -> Value) {
        let mut o = std::io::stdout().lock();
        let text = if self.json {
            machine().to_string()
        } else {
            human()
        };
        if !text.is_empty() {
            let _ = writeln!(o, "{text}");
        }
    }
}

/// Why a command failed: what to print and the exit code.
struct Fail {
    code: u8,
    msg: String,
}

impl From<Error> for Fail {
    fn from(e: Error) -> Fail {
        let mut msg = e.to_string();
        if let Error::NoStore(_) = e {
            msg.push_str(
                " (check --root or $KILN_ROOT; `kiln db create NAME` creates a store with its \
                 first database)",
            );
        }
        Fail {
            code: exit_code(&e),
            msg,
        }
    }
}

/// Bad input (exit 2).
fn bad_input(msg: String) -> Fail {
    Fail {
        code: code::USAGE,
        msg,
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { code::USAGE } else { 0 });
        }
    };
    match run(cli) {
        Ok(c) => ExitCode::from(c),
        Err(f) => {
            eprintln!("kiln: {}", f.msg);
            ExitCode::from(f.code)
        }
    }
}

/// `--batch`: a whole number, at least 1.
fn batch_size(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("a batch holds at least 1 document".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

fn exit_code(e: &Error) -> u8 {
    match e {
        Error::InvalidName { .. }
        | Error::InvalidDocument(_)
        | Error::InvalidArgument(_)
        | Error::DatabaseExists(_) => code::USAGE,
        Error::NoSuchDatabase(_) | Error::NoSuchEvent(..) | Error::NoStore(_) => code::NO_SUCH,
        Error::Purged(..) | Error::NoSuchDocument { .. } => code::NOT_FOUND,
        Error::Changed(_) => code::USAGE,
        e if e.is_corruption() => code::CORRUPT,
        _ => code::ERROR,
    }
}

fn parse_event(s: &str) -> kiln::Result<Cid> {
    Cid::parse(s.trim()).ok_or_else(|| {
        Error::InvalidArgument(format!(
            "{s:?} is not an event CID (copy one from `kiln log`)"
        ))
    })
}

/// The most JSON text read for one document (the argument, stdin, or one import line): any
/// document kiln stores, written as compact JSON (as `export` writes it), fits, since no byte of
/// a stored body takes more than 6 bytes of JSON (`false,`, or `\u001f` in a string). Longer
/// input is refused without reading further (a 300 MB document used to take 1.2 GB).
const MAX_TEXT: usize = 8 << 20;

fn too_long(what: &str) -> String {
    format!(
        "invalid document: {what} is longer than {} MiB of JSON text; refused without reading \
         further (a stored document is at most {} MiB)",
        MAX_TEXT >> 20,
        kiln::doc::MAX_DOC_BYTES >> 20
    )
}

fn not_utf8(what: &str, e: &std::str::Utf8Error) -> String {
    format!(
        "invalid document: {what} is not valid UTF-8 (at byte {})",
        e.valid_up_to() + 1
    )
}

/// The document given on stdin, read up to [`MAX_TEXT`] bytes.
fn read_stdin_doc() -> Result<String, Fail> {
    let mut b = Vec::new();
    std::io::stdin()
        .lock()
        .take(MAX_TEXT as u64 + 1)
        .read_to_end(&mut b)
        .map_err(|e| Error::io("stdin", e))?;
    if b.len() > MAX_TEXT {
        return Err(bad_input(too_long("the document on stdin")));
    }
    String::from_utf8(b).map_err(|e| bad_input(not_utf8("the document on stdin", &e.utf8_error())))
}

/// Text for a terminal: an id (or a message) holding control characters, which could move the
/// cursor, color the output or fake lines of it, is shown escaped and quoted (`"a\nb"`); any
/// other as it is. (`--json` output is escaped by JSON.)
fn esc(s: &str) -> std::borrow::Cow<'_, str> {
    let unsafe_char = |c: char| {
        c.is_control()
            || matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{2028}' | '\u{2029}'
                | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if s.chars().any(unsafe_char) {
        format!("{s:?}").into()
    } else {
        s.into()
    }
}

/// Opens a database; says so on stderr when its head record ends in an append a crash cut off
/// (a commit never acknowledged, discarded).
fn open(store: &Store, name: &str) -> kiln::Result<Database> {
    let db = store.open_db(name)?;
    if db.torn_append()? {
        eprintln!("kiln: note: {}", torn_note(name));
    }
    Ok(db)
}

fn torn_note(name: &str) -> String {
    format!(
        "the head record of database '{name}' ends in an append a crash cut off (a commit that \
         was never acknowledged); it was discarded, and the next commit removes it"
    )
}

fn cids(v: &[Cid]) -> Vec<String> {
    v.iter().map(|c| c.to_string()).collect()
}

fn run(cli: Cli) -> Result<u8, Fail> {
    let opts = Options {
        durability: if cli.durability == "buffered" {
            Durability::Buffered
        } else {
            Durability::Full
        },
        ..Options::default()
    };
    let root = cli.root.clone().unwrap_or_else(Store::default_root);
    // Only commands that can start a store create one; the others never make a store in a
    // mistyped folder.
    let creates = match &cli.cmd {
        Cmd::Db(DbCmd::Create { .. }) | Cmd::Demo => true,
        Cmd::Config {
            compact_threshold,
            keep_archive,
        } => compact_threshold.is_some() || keep_archive.is_some(),
        _ => false,
    };
    let store = if creates {
        Store::open_with(&root, opts)?
    } else {
        Store::open_existing(&root, opts)?
    };
    let out = Out { json: cli.json };
    match cli.cmd {
        Cmd::Db(DbCmd::Create {
            name,
            compact_threshold,
        }) => {
            let db = store.create_with(
                name.as_deref(),
                &Settings {
                    compact_threshold,
                    ..Settings::default()
                },
            )?;
            out.print(
                || format!("created {}", db.name()),
                || json!({"name": db.name()}),
            );
        }
        Cmd::Db(DbCmd::List) => {
            let names = store.list()?;
            out.print(|| names.join("\n"), || json!(names));
        }
        Cmd::Db(DbCmd::Drop { name }) => {
            store.drop_db(&name)?;
            out.print(|| format!("dropped {name}"), || json!({"dropped": name}));
        }
        Cmd::Db(DbCmd::Info { name }) => {
            let db = store.open_db(&name)?;
            let i = db.info()?;
            let shared = db.shared_bytes()?;
            let levels = |l: u8| i.files.iter().filter(|f| f.level == l).count();
            out.print(
                || {
                    let mut s = format!(
                        "database   {}\nlineage    {}\ndocuments  {}\nevents     {}\nheads      {}\nfiles      {} ({} diffs, {} compacted)\nbytes      {}\ncommits    {}",
                        i.name,
                        i.lineage,
                        i.docs,
                        i.events,
                        if i.heads.is_empty() { "(none)".into() } else { cids(&i.heads).join(", ") },
                        i.files.len(),
                        levels(0),
                        i.files.len() - levels(0),
                        i.bytes,
                        i.commits
                    );
                    s.push_str(&format!(
                        "\nshared     {shared} bytes with other databases, {} its own",
                        i.bytes - shared
                    ));
                    s.push_str(&format!(
                        "\ncompacted  {}\nthreshold  {} ({})",
                        if i.compacted > 0 { utc(i.compacted) } else { "never".into() },
                        i.compact_threshold,
                        if i.settings.compact_threshold.is_some() { "this database" } else { "store" }
                    ));
                    if i.torn_append {
                        s.push_str(&format!("\nnote       {}", torn_note(&i.name)));
                    }
                    s
                },
                || {
                    json!({"name": i.name, "lineage": i.lineage, "docs": i.docs, "events": i.events,
                        "heads": cids(&i.heads), "root": i.root.map(|r| r.to_string()), "bytes": i.bytes,
                        "commits": i.commits, "compacted_ms": i.compacted,
                        "diffs": levels(0), "compacted_files": i.files.len() - levels(0),
                        "shared_bytes": shared, "own_bytes": i.bytes - shared,
                        "compact_threshold": i.compact_threshold, "settings": i.settings.to_json(),
                        "torn_append": i.torn_append,
                        "files": i.files.iter().map(|f| json!({"name": f.name.to_string(), "level": f.level, "size": f.size})).collect::<Vec<_>>()})
                },
            );
        }
        Cmd::Put { db, doc: text } => {
            let db = open(&store, &db)?;
            let text = match text {
                Some(t) if t != "-" => {
                    if t.len() > MAX_TEXT {
                        return Err(bad_input(too_long("the document")));
                    }
                    t
                }
                _ => read_stdin_doc()?,
            };
            // From the text (not through a serde_json Value, which makes a float of an
            // integer outside the 64-bit range: the text path refuses it).
            let c = db.put_json(&text)?;
            out.print(
                || format!("{} {}", esc(&c.ids[0]), c.event),
                || json!({"id": c.ids[0], "event": c.event.to_string(), "heads": cids(&c.heads)}),
            );
        }
        Cmd::Get {
            db,
            id,
            conflicts: true,
            ..
        } => {
            let db = open(&store, &db)?;
            let losers = db.conflicts(&id)?;
            out.print(
                || {
                    losers
                        .iter()
                        .map(|d| d.to_string())
                        .collect::<Vec<_>>()
                        .join("\n")
                },
                || json!(losers),
            );
        }
        Cmd::Get { db, id, at, .. } => {
            let db = open(&store, &db)?;
            let doc = match at {
                Some(e) => db.get_at(&id, &parse_event(&e)?)?,
                None => db.get(&id)?,
            };
            match doc {
                Some(d) => out.print(
                    || serde_json::to_string_pretty(&d).unwrap_or_default(),
                    || d.clone(),
                ),
                None => {
                    eprintln!("kiln: no document {id:?} in {}", db.name());
                    return Ok(code::NOT_FOUND);
                }
            }
        }
        Cmd::Del { db, id } => {
            let db = open(&store, &db)?;
            let c = db.del(&id)?;
            out.print(
                || format!("deleted {} {}", esc(&id), c.event),
                || json!({"id": id, "event": c.event.to_string(), "heads": cids(&c.heads)}),
            );
        }
        Cmd::Docs {
            db,
            limit,
            start,
            end,
        } => {
            let db = open(&store, &db)?;
            let docs = db.docs(&ListOptions { start, end, limit })?;
            out.print(
                || {
                    docs.iter()
                        .map(|d| d.to_string())
                        .collect::<Vec<_>>()
                        .join("\n")
                },
                || Value::Array(docs.clone()),
            );
        }
        Cmd::Import { db, file, batch } => {
            let db = open(&store, &db)?;
            let n = import(&db, &file, batch)?;
            out.print(
                || format!("imported {n} documents into {}", db.name()),
                || json!({"imported": n}),
            );
        }
        Cmd::Export { db } => {
            let db = open(&store, &db)?;
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
        }
        Cmd::Changes { db, since } => {
            let db = open(&store, &db)?;
            let since: Vec<Cid> = since
                .iter()
                .map(|s| parse_event(s))
                .collect::<kiln::Result<_>>()?;
            let ch = db.changes(if since.is_empty() { None } else { Some(&since) })?;
            out.print(
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
        }
        Cmd::Log { db, limit } => {
            let db = open(&store, &db)?;
            let log = db.log(limit)?;
            out.print(
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
        }
        Cmd::Verify { db } => {
            let db = store.open_db(&db)?;
            let r = db.verify()?;
            let repaired = |f: &kiln::car::FileName| {
                format!(
                    "file {f}: lost or damaged (a power cut after its commit); put back from the \
                     copy the head record carries"
                )
            };
            out.print(
                || {
                    let mut s = format!(
                        "{}: {} files, {} bytes, {} blocks, {} events, {} tree nodes, {} documents",
                        db.name(),
                        r.files,
                        r.bytes,
                        r.blocks,
                        r.events,
                        r.tree_nodes,
                        r.docs
                    );
                    for f in &r.repaired {
                        s.push_str(&format!("\nrepaired {}", repaired(f)));
                    }
                    if r.torn_append {
                        s.push_str(&format!("\nnote: {}", torn_note(db.name())));
                    }
                    for p in &r.problems {
                        s.push_str(&format!("\nPROBLEM {}: {}", p.location, p.what));
                    }
                    s.push_str(match (r.ok(), r.repaired.is_empty()) {
                        (true, true) => "\nok",
                        (true, false) => "\nok (after the repairs above)",
                        (false, _) => "\nFAILED",
                    });
                    s
                },
                || {
                    json!({"ok": r.ok(), "files": r.files, "bytes": r.bytes, "blocks": r.blocks, "events": r.events,
                        "tree_nodes": r.tree_nodes, "docs": r.docs, "torn_append": r.torn_append,
                        "repaired": r.repaired.iter().map(|f| json!({"file": f.to_string(), "what": repaired(f)})).collect::<Vec<_>>(),
                        "problems": r.problems.iter().map(|p| json!({"location": p.location, "what": p.what})).collect::<Vec<_>>()})
                },
            );
            if !r.ok() {
                return Ok(code::CORRUPT);
            }
        }
        Cmd::Db(DbCmd::Set {
            name,
            compact_threshold,
        }) => {
            let db = open(&store, &name)?;
            let s = Settings {
                compact_threshold: parse_threshold(&compact_threshold)?,
                ..db.settings()?
            };
            db.set_settings(&s)?;
            let t = db.info()?.compact_threshold;
            out.print(
                || format!("{name}: compaction threshold {t}"),
                || json!({"name": name, "settings": s.to_json(), "compact_threshold": t}),
            );
        }
        Cmd::Db(DbCmd::Files { name, history }) => {
            let db = open(&store, &name)?;
            let files = if history {
                db.history_files()?
            } else {
                db.history_files()?
                    .into_iter()
                    .filter(|f| f.location == Location::Live)
                    .collect()
            };
            let loc = |l: Location| match l {
                Location::Live => "live",
                Location::Kept => "kept",
                Location::Archived => "archived",
                Location::Gone => "gone",
            };
            out.print(
                || {
                    files
                        .iter()
                        .map(|f| {
                            format!(
                                "{}  {:<8}  level {}  replaces {}",
                                f.name,
                                loc(f.location),
                                f.level.map_or("?".into(), |l| l.to_string()),
                                f.replaces.len()
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("\n")
                },
                || {
                    json!(files
                        .iter()
                        .map(|f| json!({"name": f.name.to_string(), "location": loc(f.location),
                            "level": f.level, "events": cids(&f.events),
                            "replaces": f.replaces.iter().map(|r| r.to_string()).collect::<Vec<_>>()}))
                        .collect::<Vec<_>>())
                },
            );
        }
        Cmd::Diff { a, b } => {
            let point = |s: &str| -> kiln::Result<(Database, Option<Cid>)> {
                match s.split_once('@') {
                    Some((db, e)) => Ok((open(&store, db)?, Some(parse_event(e)?))),
                    None => Ok((open(&store, s)?, None)),
                }
            };
            let ((da, ea), (db, eb)) = (point(&a)?, point(&b)?);
            let d = da.diff(ea.as_ref(), &db, eb.as_ref())?;
            let count = |k: &str| d.iter().filter(|x| x.kind() == k).count();
            out.print(
                || {
                    let mut lines: Vec<String> = d
                        .iter()
                        .map(|x| {
                            let sign = match x.kind() {
                                "added" => "+",
                                "deleted" => "-",
                                _ => "~",
                            };
                            format!("{sign} {}", esc(&x.id))
                        })
                        .collect();
                    lines.push(format!(
                        "{} added, {} changed, {} deleted",
                        count("added"),
                        count("changed"),
                        count("deleted")
                    ));
                    lines.join("\n")
                },
                || {
                    json!(d
                        .iter()
                        .map(|x| json!({"id": x.id, "change": x.kind(), "before": x.before, "after": x.after}))
                        .collect::<Vec<_>>())
                },
            );
        }
        Cmd::Merge { src, into, only } => {
            let (s, d) = (open(&store, &src)?, open(&store, &into)?);
            let r = d.merge_from(&s, (!only.is_empty()).then_some(only.as_slice()))?;
            let side = |x: kiln::Side| match x {
                kiln::Side::Ours => "ours",
                kiln::Side::Theirs => "theirs",
            };
            out.print(
                || {
                    let mut lines = vec![match (&r.event, r.fast_forward) {
                        (_, true) => format!("fast-forward: {into} took {src}'s {} events", r.events),
                        (None, _) => format!("nothing to merge: {into} has all of {src}"),
                        (Some(e), _) => format!(
                            "merged {src} into {into}: {} events, {} documents changed, {} conflicts (event {e})",
                            r.events,
                            r.changed.len(),
                            r.conflicts.len()
                        ),
                    }];
                    for c in &r.conflicts {
                        lines.push(format!(
                            "conflict {}: ancestor {} | ours {} | theirs {} -> {} wins",
                            esc(&c.id),
                            c.ancestor.as_ref().map_or("(none)".into(), |v| v.to_string()),
                            c.ours.as_ref().map_or("(none)".into(), |v| v.to_string()),
                            c.theirs.as_ref().map_or("(none)".into(), |v| v.to_string()),
                            side(c.winner)
                        ));
                    }
                    lines.join("\n")
                },
                || {
                    json!({"event": r.event.map(|e| e.to_string()), "fast_forward": r.fast_forward,
                        "events": r.events, "changed": r.changed,
                        "conflicts": r.conflicts.iter().map(|c| json!({"id": c.id, "ancestor": c.ancestor,
                            "ours": c.ours, "theirs": c.theirs, "winner": side(c.winner)})).collect::<Vec<_>>()})
                },
            );
        }
        Cmd::Propose { fork, to, message } => {
            let p = store.propose(&fork, &to, &message)?;
            out.print(
                || format!("proposal {} ({fork} -> {to})", p.id),
                || proposal_json(&p),
            );
        }
        Cmd::Proposals { main, all } => {
            let ps = store.proposals(main.as_deref(), !all)?;
            out.print(
                || {
                    ps.iter()
                        .map(|p| {
                            format!(
                                "{}  {} -> {}  {}  {}",
                                p.id,
                                p.fork,
                                p.to,
                                proposal_json(p)["status"]["state"].as_str().unwrap_or(""),
                                esc(&p.message)
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("\n")
                },
                || json!(ps.iter().map(proposal_json).collect::<Vec<_>>()),
            );
        }
        Cmd::Review { id } => {
            let (p, r) = store.review(&id)?;
            out.print(
                || {
                    let mut lines = vec![format!(
                        "proposal {} ({} -> {}): {}",
                        p.id, p.fork, p.to, esc(&p.message)
                    )];
                    let conflicted: Vec<&str> = r.conflicts.iter().map(|c| c.id.as_str()).collect();
                    for id in &r.changed {
                        if !conflicted.contains(&id.as_str()) {
                            lines.push(format!("~ {}", esc(id)));
                        }
                    }
                    for c in &r.conflicts {
                        lines.push(format!(
                            "! {} conflict: ancestor {} | here {} | proposed {}",
                            esc(&c.id),
                            c.ancestor.as_ref().map_or("(none)".into(), |v| v.to_string()),
                            c.ours.as_ref().map_or("(none)".into(), |v| v.to_string()),
                            c.theirs.as_ref().map_or("(none)".into(), |v| v.to_string())
                        ));
                    }
                    lines.push(format!("{} changes, {} conflicts", r.changed.len(), r.conflicts.len()));
                    lines.join("\n")
                },
                || {
                    json!({"proposal": proposal_json(&p), "changed": r.changed,
                        "conflicts": r.conflicts.iter().map(|c| json!({"id": c.id, "ancestor": c.ancestor,
                            "here": c.ours, "proposed": c.theirs})).collect::<Vec<_>>()})
                },
            );
        }
        Cmd::Accept { id, only, by } => {
            let by = by.unwrap_or_else(who);
            let r = store.accept(&id, (!only.is_empty()).then_some(only.as_slice()), &by)?;
            out.print(
                || {
                    format!(
                        "accepted {id}: {} documents changed, {} conflicts settled",
                        r.changed.len(),
                        r.conflicts.len()
                    )
                },
                || {
                    json!({"id": id, "event": r.event.map(|e| e.to_string()), "changed": r.changed,
                    "conflicts": r.conflicts.len()})
                },
            );
        }
        Cmd::UpdateProposal { id } => {
            let p = store.update_proposal(&id)?;
            out.print(
                || {
                    format!(
                        "proposal {} now pins {} at its current state; review it again",
                        p.id, p.fork
                    )
                },
                || proposal_json(&p),
            );
        }
        Cmd::Reject { id, message, by } => {
            let p = store.reject(&id, &message, &by.unwrap_or_else(who))?;
            out.print(|| format!("rejected {}", p.id), || proposal_json(&p));
        }
        Cmd::Fork { src, dst } => {
            let db = store.fork(&src, dst.as_deref())?;
            out.print(
                || format!("forked {src} into {}", db.name()),
                || json!({"source": src, "name": db.name()}),
            );
        }
        Cmd::Purge { db, id } => {
            let db = open(&store, &db)?;
            let r = db.purge(&id)?;
            out.print(
                || {
                    format!(
                        "purged {} stored version(s) of {id:?} (event {}); {} archived file(s) removed",
                        r.versions, r.event, r.archived_removed
                    )
                },
                || {
                    json!({"id": id, "event": r.event.to_string(), "versions": r.versions,
                        "archived_removed": r.archived_removed,
                        "reusable_bytes_freed": r.reusable_bytes_freed})
                },
            );
        }
        Cmd::Gc => {
            let r = store.gc()?;
            let freed = r.removed_bytes + r.reusable_bytes;
            out.print(
                || {
                    let mut s = format!(
                        "{} databases, {} live files; {} unreferenced files ({} bytes) {}; {} reusable files ({} bytes) freed; {} bytes freed in all",
                        r.databases,
                        r.live_files,
                        r.removed_files,
                        r.removed_bytes,
                        if r.archived { "archived" } else { "removed" },
                        r.reusable_files,
                        r.reusable_bytes,
                        if r.archived { r.reusable_bytes } else { freed }
                    );
                    if r.leftovers_removed + r.keys_removed + r.proposals_removed + r.archived_removed > 0 {
                        s.push_str(&format!(
                            "\nleft by interrupted commands: {} database folders, {} keys, {} proposals, {} archived files removed",
                            r.leftovers_removed, r.keys_removed, r.proposals_removed, r.archived_removed
                        ));
                    }
                    for n in &r.purges_finished {
                        s.push_str(&format!("\nfinished the interrupted purge in {n}"));
                    }
                    for (n, why) in &r.unreadable {
                        s.push_str(&format!("\nPROBLEM database {n} cannot be read: {why}"));
                    }
                    if !r.kept_files.is_empty() {
                        s.push_str(&format!(
                            "\nkept {} unreferenced files an unreadable database may name",
                            r.kept_files.len()
                        ));
                    }
                    for (n, why) in &r.purges_unfinished {
                        s.push_str(&format!("\nPROBLEM purge in {n} not finished: {why}"));
                    }
                    s
                },
                || {
                    json!({"databases": r.databases, "live_files": r.live_files,
                        "removed_files": r.removed_files, "removed_bytes": r.removed_bytes,
                        "archived": r.archived, "reusable_files": r.reusable_files,
                        "reusable_bytes": r.reusable_bytes,
                        "freed_bytes": if r.archived { r.reusable_bytes } else { freed },
                        "leftovers_removed": r.leftovers_removed, "keys_removed": r.keys_removed,
                        "proposals_removed": r.proposals_removed,
                        "archived_removed": r.archived_removed,
                        "purges_finished": r.purges_finished,
                        "unreadable": r.unreadable.iter().map(|(n, w)| json!({"database": n, "error": w})).collect::<Vec<_>>(),
                        "kept_files": r.kept_files.iter().map(|f| f.to_string()).collect::<Vec<_>>(),
                        "purges_unfinished": r.purges_unfinished.iter().map(|(n, w)| json!({"database": n, "error": w})).collect::<Vec<_>>()})
                },
            );
            // The rest of the store was collected; what could not be is damage to report.
            if !r.unreadable.is_empty() || !r.purges_unfinished.is_empty() {
                return Ok(code::CORRUPT);
            }
        }
        Cmd::Config {
            compact_threshold,
            keep_archive,
        } => {
            let mut s = store.settings();
            if let Some(t) = compact_threshold {
                s.compact_threshold = parse_threshold(&t)?;
            }
            if let Some(a) = keep_archive {
                s.keep_archive = (a == "on").then_some(true);
            }
            store.set_settings(&s)?;
            let t = s
                .compact_threshold
                .unwrap_or(store.options().compact_threshold);
            let a = s.keep_archive.unwrap_or(false);
            out.print(
                || {
                    format!(
                        "compact threshold {t}\nkeep archive {}",
                        if a { "on" } else { "off" }
                    )
                },
                || json!({"compact_threshold": t, "keep_archive": a}),
            );
        }
        Cmd::Compact {
            db,
            full,
            drop_history_before,
        } => {
            let db = open(&store, &db)?;
            if let Some(e) = drop_history_before {
                let n = db.drop_history_before(&parse_event(&e)?)?;
                if !out.json {
                    eprintln!("dropped {n} events of history");
                }
            } else if full {
                db.compact_full()?;
            } else {
                db.compact()?;
            }
            let i = db.info()?;
            out.print(
                || {
                    format!(
                        "compacted {}: {} files, {} bytes",
                        db.name(),
                        i.files.len(),
                        i.bytes
                    )
                },
                || json!({"files": i.files.len(), "bytes": i.bytes}),
            );
        }
        Cmd::Demo => return Ok(demo(&store, &out)?),
    }
    Ok(0)
}

/// Who is deciding: $USER, else "unknown".
fn who() -> String {
    std::env::var("USER").unwrap_or_else(|_| "unknown".into())
}

fn proposal_json(p: &kiln::Proposal) -> Value {
    let status = match &p.status {
        kiln::Status::Open => json!({"state": "open"}),
        kiln::Status::Accepted {
            event,
            by,
            at,
            only,
        } => {
            json!({"state": "accepted", "event": event, "by": by, "at_ms": at, "only": only})
        }
        kiln::Status::Rejected { by, at, reason } => {
            json!({"state": "rejected", "by": by, "at_ms": at, "reason": reason})
        }
    };
    json!({"id": p.id, "fork": p.fork, "to": p.to, "message": p.message,
        "created_ms": p.created, "heads": p.heads.iter().map(|c| c.to_string()).collect::<Vec<_>>(),
        "status": status})
}

/// `N` or `default` (no setting).
fn parse_threshold(s: &str) -> kiln::Result<Option<usize>> {
    if s == "default" {
        return Ok(None);
    }
    s.parse::<usize>().map(Some).map_err(|_| {
        Error::InvalidArgument(format!(
            "compaction threshold {s:?} is not a whole number or `default`"
        ))
    })
}

/// What [`read_line`] read.
enum Line {
    End,
    Text,
    /// Longer than the limit: not read further.
    TooLong,
}

/// Reads the next line into `buf` (without its `\n` or `\r\n`), at most `max` bytes of it
/// and a buffer's worth more: a longer line is not read to its end.
fn read_line(r: &mut dyn BufRead, buf: &mut Vec<u8>, max: usize) -> std::io::Result<Line> {
    buf.clear();
    loop {
        let avail = match r.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if avail.is_empty() {
            return Ok(match buf.len() {
                0 => Line::End,
                n if n > max => Line::TooLong,
                _ => Line::Text,
            });
        }
        let (take, ends) = match avail.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (avail.len(), false),
        };
        buf.extend_from_slice(&avail[..take]);
        r.consume(take);
        if ends {
            buf.pop();
            if buf.last() == Some(&b'\r') {
                buf.pop();
            }
            return Ok(if buf.len() > max {
                Line::TooLong
            } else {
                Line::Text
            });
        }
        if buf.len() > max + 1 {
            return Ok(Line::TooLong);
        }
    }
}

/// Imports JSON lines in transactions of `batch` documents. A failure says at which line it
/// stopped and how many documents were imported (committed) before it, which stay.
fn import(db: &Database, file: &PathBuf, batch: usize) -> Result<u64, Fail> {
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
        if let Err(e) = kiln::doc::prepare_json(line) {
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

fn demo(store: &Store, out: &Out) -> kiln::Result<u8> {
    let t = std::time::Instant::now();
    let db = match store.open_db("demo") {
        Ok(db) => db,
        Err(Error::NoSuchDatabase(_)) => store.create(Some("demo"))?,
        Err(e) => return Err(e),
    };
    let docs: Vec<Value> = (0..1000)
        .map(|i| json!({"_id": format!("item-{i:04}"), "title": format!("Item number {i}"), "n": (i * 7919) % 1000,
                        "tags": [format!("t{}", i % 10)]}))
        .collect();
    let c = db.bulk(&docs)?;
    let first = db.get("item-0042")?;
    let updated = db.put(&json!({"_id": "item-0042", "title": "changed", "n": -1}))?;
    let before = db.get_at("item-0042", &c.event)?;
    let changes = db.changes(Some(&[c.event]))?;
    let r = db.verify()?;
    let info = db.info()?;
    out.print(
        || {
            format!(
                "store {}\nwrote 1,000 documents into database 'demo' (event {})\nread item-0042: {}\n\
                 updated it (event {}); as of the bulk write it was: {}\nchanges since the bulk write: {}\n\
                 database: {} documents, {} events, {} files, {} bytes (encrypted)\nverify: {}\ndone in {:.0} ms",
                store.root().display(),
                c.event,
                first.map(|d| d.to_string()).unwrap_or_default(),
                updated.event,
                before.map(|d| d["title"].to_string()).unwrap_or_default(),
                changes.iter().map(|c| c.id.as_str()).collect::<Vec<_>>().join(", "),
                info.docs,
                info.events,
                info.files.len(),
                info.bytes,
                if r.ok() { "ok" } else { "FAILED" },
                t.elapsed().as_secs_f64() * 1000.0
            )
        },
        || json!({"docs": info.docs, "events": info.events, "files": info.files.len(), "bytes": info.bytes, "verify_ok": r.ok()}),
    );
    Ok(if r.ok() { 0 } else { code::CORRUPT })
}

/// `YYYY-MM-DD HH:MM:SS.mmmZ` for milliseconds since the Unix epoch.
fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil date from days since 1970-01-01 (proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + (m <= 2) as i64;
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        ms % 1000
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_dates() {
        assert_eq!(super::utc(0), "1970-01-01 00:00:00.000Z");
        assert_eq!(super::utc(951_782_400_123), "2000-02-29 00:00:00.123Z");
        assert_eq!(super::utc(1_795_857_206_688), "2026-11-28 09:13:26.688Z");
    }
}
