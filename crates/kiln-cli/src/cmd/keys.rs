//! Keys: `kiln key export|import` (carrying a database's key to another machine by hand).

use super::Ctx;
use crate::out::{bad_input, Fail};
use clap::Subcommand;
use serde_json::json;
use std::path::PathBuf;

/// `kiln key …`.
#[derive(Subcommand)]
pub enum KeyGroup {
    /// Move a database's key between machines (keys never go to a remote).
    #[command(subcommand)]
    Key(KeyCmd),
}

/// Where the passphrase comes from: `--passphrase-file`, else `KILN_PASSPHRASE`, else a line
/// read from stdin (a prompt on stderr when stdin is a terminal).
#[derive(Subcommand)]
pub enum KeyCmd {
    /// Print the database's key as one line, wrapped under a passphrase (Argon2id + AES-256-GCM)
    /// unless --raw. Whoever holds it (and the passphrase) reads every database of its lineage.
    Export {
        db: String,
        /// The key unwrapped (for scripts: treat the output as the key itself).
        #[arg(long)]
        raw: bool,
        /// Read the passphrase from this file (its first line).
        #[arg(long, value_name = "PATH", conflicts_with = "raw")]
        passphrase_file: Option<PathBuf>,
    },
    /// Store an exported key for a database whose head record is here but whose key is not (a
    /// replica copied or pulled without it); it must open that database.
    Import {
        db: String,
        /// The exported key (kiln-key-1.… or kiln-key-1-raw.…).
        key: String,
        /// Read the passphrase from this file (its first line).
        #[arg(long, value_name = "PATH")]
        passphrase_file: Option<PathBuf>,
    },
}

impl KeyGroup {
    pub fn run(self, ctx: &Ctx) -> Result<u8, Fail> {
        let KeyGroup::Key(c) = self;
        match c {
            KeyCmd::Export {
                db,
                raw,
                passphrase_file,
            } => {
                let pass = if raw {
                    None
                } else {
                    Some(passphrase(passphrase_file)?)
                };
                let text = ctx.store.export_key(&db, pass.as_deref())?;
                ctx.out.print(
                    || text.clone(),
                    || json!({"database": db, "key": text, "wrapped": !raw}),
                );
                Ok(0)
            }
            KeyCmd::Import {
                db,
                key,
                passphrase_file,
            } => {
                let pass = if key.trim().starts_with("kiln-key-1-raw.") {
                    None
                } else {
                    Some(passphrase(passphrase_file)?)
                };
                let added = ctx.store.import_key(&db, &key, pass.as_deref())?;
                ctx.out.print(
                    || {
                        if added {
                            format!("key of {db} stored")
                        } else {
                            format!("key of {db} was there already")
                        }
                    },
                    || json!({"database": db, "stored": added}),
                );
                Ok(0)
            }
        }
    }
}

/// The passphrase (see [`KeyCmd`]), without its line end; never empty.
fn passphrase(file: Option<PathBuf>) -> Result<String, Fail> {
    let text = if let Some(p) = file {
        std::fs::read_to_string(&p)
            .map_err(|e| bad_input(format!("cannot read {}: {e}", p.display())))?
    } else if let Ok(p) = std::env::var("KILN_PASSPHRASE") {
        p
    } else {
        use std::io::{BufRead, IsTerminal};
        if std::io::stdin().is_terminal() {
            eprint!("passphrase: ");
        }
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|e| bad_input(format!("cannot read the passphrase: {e}")))?;
        line
    };
    let p = text.lines().next().unwrap_or("").to_owned();
    if p.is_empty() {
        return Err(bad_input(
            "no passphrase (--passphrase-file, KILN_PASSPHRASE or a line on stdin)".into(),
        ));
    }
    Ok(p)
}
