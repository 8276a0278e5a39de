//! `kiln`: the command-line tool. Every verb is one library call plus printing.
//!
//! Here: the global flags, the top-level commands (one group per capability, in [`cmd`]), and
//! which commands may create a store. Output is formatted in [`out`]; input is read in [`input`].

mod cmd;
mod input;
mod out;

use clap::{Parser, Subcommand};
use cmd::contrib::ContribGroup;
use cmd::db::{DbCmd, DbGroup};
use cmd::docs::DocsGroup;
use cmd::files::FilesGroup;
use cmd::history::HistoryGroup;
use cmd::import::ImportGroup;
use cmd::index::IndexGroup;
use cmd::keys::KeyGroup;
use cmd::store::StoreGroup;
use cmd::sync::SyncGroup;
use cmd::watch::WatchGroup;
use cmd::Ctx;
use kiln::{Durability, Options, Store};
use out::{code, Fail, Out};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "kiln",
    version,
    about = "kiln: an embedded, encrypted, content-addressed document database",
    after_help = "Exit codes: 0 ok, 1 error, 2 bad usage or input (also: invalid UTF-8, a document \
                  over 8 MiB of JSON text, an integer outside the 64-bit range), 3 document not \
                  found (or purged), 4 no such store, database or event, 5 corruption found, 6 the \
                  document changed (put --if-rev / --if-absent, del --if-rev): nothing written.\n\
                  The store folder is --root, else $KILN_ROOT, else $XDG_DATA_HOME/kiln, else ~/.local/share/kiln; \
                  its keys are outside it, in --keys-dir DIR, else $KILN_KEYS, else $XDG_CONFIG_HOME/kiln/keys, \
                  else ~/.config/kiln/keys (one folder per store)."
)]
struct Cli {
    /// Store folder. Only `db create`, `demo`, `key import` and a `config` change create a store where
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
    /// Open the store for reading only: nothing is created, written or locked (works on a
    /// read-only mount); a command that writes fails with exit 1.
    #[arg(long, global = true)]
    read_only: bool,
    /// The folder holding the keys of stores that keep them outside their own folder (the
    /// default): each store's keys are in DIR/<store id>/. Default $KILN_KEYS, else
    /// $XDG_CONFIG_HOME/kiln/keys, else ~/.config/kiln/keys.
    #[arg(
        long = "keys-dir",
        global = true,
        value_name = "DIR",
        conflicts_with = "keys_in_store"
    )]
    keys: Option<PathBuf>,
    /// A store made now keeps its keys in its own folder (ROOT/keys/): a copy of the folder is
    /// then a copy of the keys. Older stores keep them there until opened without this flag.
    #[arg(long, global = true)]
    keys_in_store: bool,
    /// An S3-compatible server's URL, for s3:// remotes (default $AWS_ENDPOINT_URL_S3, else
    /// $AWS_ENDPOINT_URL, else AWS). Plain HTTP only when it is an http:// URL.
    #[arg(long, global = true, value_name = "URL")]
    s3_endpoint: Option<String>,
    /// The region S3 requests are signed for (default $AWS_REGION, else $AWS_DEFAULT_REGION,
    /// else us-east-1).
    #[arg(long, global = true, value_name = "REGION")]
    s3_region: Option<String>,
    /// The S3 access key id (default $AWS_ACCESS_KEY_ID).
    #[arg(long, global = true, value_name = "ID")]
    s3_access_key: Option<String>,
    /// A file whose first line is the S3 secret access key (default $AWS_SECRET_ACCESS_KEY;
    /// never a flag's value, which other users can see in the process list).
    #[arg(long, global = true, value_name = "FILE")]
    s3_secret_key_file: Option<PathBuf>,
    /// The token a kiln sync server (http:// and https:// remotes) asks for (default
    /// $KILN_TOKEN). Other users can see a flag's value in the process list: prefer
    /// $KILN_TOKEN on shared machines.
    #[arg(long, global = true, value_name = "TOKEN")]
    token: Option<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

// Each group's commands are top-level commands (`kiln put`); `kiln --help` lists them group by
// group.
#[derive(Subcommand)]
enum Cmd {
    #[command(flatten)]
    Db(DbGroup),
    #[command(flatten)]
    Docs(DocsGroup),
    #[command(flatten)]
    Files(FilesGroup),
    #[command(flatten)]
    Key(KeyGroup),
    #[command(flatten)]
    History(HistoryGroup),
    #[command(flatten)]
    Index(IndexGroup),
    #[command(flatten)]
    Watch(WatchGroup),
    #[command(flatten)]
    Import(ImportGroup),
    #[command(flatten)]
    Sync(SyncGroup),
    #[command(flatten)]
    Contrib(ContribGroup),
    #[command(flatten)]
    Store(StoreGroup),
    /// Serve databases to `kiln sync` clients over HTTP (the sync server; needs no store).
    Serve(cmd::serve::Serve),
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

/// S3 settings: the flags, else the usual environment variables.
fn s3_config(cli: &Cli) -> Result<kiln_sync::S3Config, Fail> {
    let mut c = kiln_sync::S3Config::from_env();
    if let Some(e) = &cli.s3_endpoint {
        c = c.with_endpoint(e.clone());
    }
    if let Some(r) = &cli.s3_region {
        c.region = Some(r.clone());
    }
    if let Some(k) = &cli.s3_access_key {
        c.access_key = Some(k.clone());
    }
    if let Some(f) = &cli.s3_secret_key_file {
        let text = std::fs::read_to_string(f).map_err(|e| Fail {
            code: code::USAGE,
            msg: format!("--s3-secret-key-file {}: {e}", f.display()),
        })?;
        let secret = text.lines().next().unwrap_or("").trim().to_owned();
        if secret.is_empty() {
            return Err(Fail {
                code: code::USAGE,
                msg: format!("--s3-secret-key-file {}: the file is empty", f.display()),
            });
        }
        c.secret_key = Some(secret);
    }
    Ok(c)
}

/// The sync server token: the flag, else `KILN_TOKEN`.
fn token(cli: &Cli) -> Result<Option<String>, Fail> {
    match &cli.token {
        Some(t) if t.trim().is_empty() => Err(Fail {
            code: code::USAGE,
            msg: "--token: empty".into(),
        }),
        Some(t) => Ok(Some(t.trim().to_owned())),
        None => Ok(kiln_sync::RemoteConfig::from_env().token),
    }
}

fn run(cli: Cli) -> Result<u8, Fail> {
    if let Cmd::Serve(serve) = &cli.cmd {
        // The server holds no store and no key: it keeps what clients send.
        let remote = kiln_sync::RemoteConfig {
            s3: s3_config(&cli)?,
            token: None,
        };
        return serve.run(&Out { json: cli.json }, &remote);
    }
    let opts = Options {
        durability: if cli.durability == "buffered" {
            Durability::Buffered
        } else {
            Durability::Full
        },
        // One command per process: a commit that crosses a compaction limit compacts before
        // the process exits, not on a thread the exit would cut short.
        background_compaction: false,
        read_only: cli.read_only,
        keys: if cli.keys_in_store {
            kiln::KeyPlace::InStore
        } else {
            kiln::KeyPlace::Outside(cli.keys.clone())
        },
        ..Options::default()
    };
    let root = cli.root.clone().unwrap_or_else(Store::default_root);
    let store = if creates_store(&cli.cmd) {
        Store::open_with(&root, opts)?
    } else {
        Store::open_existing(&root, opts)?
    };
    let ctx = Ctx {
        store,
        out: Out { json: cli.json },
        remote: kiln_sync::RemoteConfig {
            s3: s3_config(&cli)?,
            token: token(&cli)?,
        },
    };
    // Attached files' bytes a sync left on the remote are fetched when first read.
    if let Ok(Some(files)) = kiln_sync::RememberedFiles::of(&ctx.store, ctx.remote.clone()) {
        ctx.store
            .set_fileset_source(Some(std::sync::Arc::new(files)));
    }
    match cli.cmd {
        Cmd::Db(c) => c.run(&ctx),
        Cmd::Docs(c) => c.run(&ctx),
        Cmd::Files(c) => c.run(&ctx),
        Cmd::Key(c) => c.run(&ctx),
        Cmd::History(c) => c.run(&ctx),
        Cmd::Index(c) => c.run(&ctx),
        Cmd::Watch(c) => c.run(&ctx),
        Cmd::Import(c) => c.run(&ctx),
        Cmd::Sync(c) => c.run(&ctx),
        Cmd::Contrib(c) => c.run(&ctx),
        Cmd::Store(c) => c.run(&ctx),
        Cmd::Serve(s) => s.run(&ctx.out, &ctx.remote),
    }
}

/// Only commands that can start a store create one; the others never make a store in a
/// mistyped folder.
fn creates_store(cmd: &Cmd) -> bool {
    match cmd {
        Cmd::Db(DbGroup::Db(DbCmd::Create { .. }))
        | Cmd::Store(StoreGroup::Demo)
        | Cmd::Import(_)
        | Cmd::Key(KeyGroup::Key(cmd::keys::KeyCmd::Import { .. })) => true,
        Cmd::Store(StoreGroup::Config {
            compact_threshold,
            keep_archive,
        }) => compact_threshold.is_some() || keep_archive.is_some(),
        _ => false,
    }
}
