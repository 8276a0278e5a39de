//! `kiln import-fireproof`: a Fireproof (JavaScript) ledger brought into a new database.

use super::Ctx;
use crate::out::{esc, Fail};
use clap::Subcommand;
use kiln::import::fireproof::{import_fireproof, list_ledgers, ImportOptions};
use serde_json::json;
use std::path::PathBuf;

/// `kiln import-fireproof`.
#[derive(Subcommand)]
pub enum ImportGroup {
    /// Import a Fireproof ledger (a file-gateway store) into a new database, history included.
    ///
    /// DIR is a Fireproof store: the folder holding `.fireproof` (a HOME), the `.fireproof`
    /// folder itself, or one ledger's folder. Without --ledger, a store of several ledgers
    /// lists them and imports nothing. The keybag beside the store decrypts it (an
    /// unencrypted store needs none). Each Fireproof transaction becomes a kiln event with the
    /// same parents; attachments (`_files`, `_publicFiles`) become kiln attachments; fields
    /// kiln reserves (`_deleted`, …) are kept as `fp_deleted`, …; bytes and links read as
    /// {"/": {"bytes": …}} and {"/": "cid"}. Indexes are derived data and are not imported
    /// (recreate them with `kiln index create`). Every block is checked against its hash; on
    /// any error nothing is left behind.
    ImportFireproof {
        /// The Fireproof store.
        dir: PathBuf,
        /// The ledger to import.
        #[arg(long)]
        ledger: Option<String>,
        /// The new database's name (default: the ledger's).
        #[arg(long, value_name = "DB")]
        into: Option<String>,
        /// The keybag entry to decrypt with (default `@<ledger>-data@`).
        #[arg(long, value_name = "NAME")]
        key_name: Option<String>,
    },
}

impl ImportGroup {
    pub fn run(self, ctx: &Ctx) -> Result<u8, Fail> {
        let ImportGroup::ImportFireproof {
            dir,
            ledger,
            into,
            key_name,
        } = self;
        let ledgers = list_ledgers(&dir)?;
        if ledger.is_none() && ledgers.len() != 1 {
            ctx.out.print(
                || {
                    let mut s = format!(
                        "{} ledger(s) in {}; import one with --ledger NAME:",
                        ledgers.len(),
                        dir.display()
                    );
                    for l in &ledgers {
                        s.push_str(&format!("\n  {}", esc(l)));
                    }
                    s
                },
                || json!({"ledgers": ledgers}),
            );
            return Ok(0);
        }
        let bar = progress(&ctx.out);
        let mut tick = |done: u64, total: u64| {
            if let Some(b) = &bar {
                b.set_length(total);
                b.set_position(done);
            }
        };
        let r = import_fireproof(
            &ctx.store,
            &dir,
            ImportOptions {
                ledger,
                into,
                key_name,
                progress: Some(&mut tick),
            },
        );
        if let Some(b) = &bar {
            b.finish_and_clear();
        }
        let r = r?;
        ctx.out.print(
            || {
                let mut s = format!(
                    "imported ledger '{}' into database '{}': {} documents ({} deleted), {} \
                     attachments ({} bytes), {} events ({} kiln events), {} head(s); read {} \
                     files, {} bytes",
                    esc(&r.ledger),
                    esc(&r.database),
                    r.documents,
                    r.deleted,
                    r.attachments,
                    r.attachment_bytes,
                    r.events,
                    r.kiln_events,
                    r.heads.len(),
                    r.files_read,
                    r.bytes_read
                );
                if r.hollow_versions > 0 {
                    s.push_str(&format!(
                        "\nnote: Fireproof's compaction had dropped {} earlier document versions \
                         ({} events wrote nothing else and have no kiln event); the state and \
                         the history that were there are imported",
                        r.hollow_versions, r.hollow_events
                    ));
                }
                for f in &r.skipped_files {
                    s.push_str(&format!(
                        "\nnote: passed over a file the ledger's car log does not name: {f}"
                    ));
                }
                if r.indexes_skipped {
                    s.push_str(
                        "\nnote: the ledger's indexes were not imported (derived data); \
                         recreate them with `kiln index create`",
                    );
                }
                s
            },
            || serde_json::to_value(&r).unwrap_or_default(),
        );
        Ok(0)
    }
}

/// A bar of events on stderr, when it is a terminal and the output is not JSON.
fn progress(out: &crate::out::Out) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    if out.json || !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("importing events {pos}/{len} {wide_bar}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    Some(bar)
}
