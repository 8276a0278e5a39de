//! The commands, a group for each capability. Each group is a clap `Subcommand` enum that the
//! top-level command flattens, so its commands stay top-level (`kiln put`, not `kiln docs put`;
//! `kiln db …` is a nested group as before), and runs them with a [`Ctx`].

pub mod contrib;
pub mod db;
pub mod docs;
pub mod files;
pub mod history;
pub mod import;
pub mod index;
pub mod keys;
pub mod serve;
pub mod store;
pub mod sync;
pub mod watch;

use crate::out::{torn_note, Out};
use kiln::{Database, Store};

/// What a command runs with: the store (opened or created as the command needs) and the output.
pub struct Ctx {
    pub store: Store,
    pub out: Out,
    /// Where s3:// remotes are served and how to sign requests (flags, else `AWS_*`), and the
    /// token for sync servers (`--token`, else `KILN_TOKEN`).
    pub remote: kiln_sync::RemoteConfig,
}

impl Ctx {
    /// Opens a database; says so on stderr when its head record ends in an append a crash cut off
    /// (a commit never acknowledged, discarded).
    pub fn open(&self, name: &str) -> kiln::Result<Database> {
        let db = self.store.open_db(name)?;
        if db.torn_append()? {
            eprintln!("kiln: note: {}", torn_note(name));
        }
        Ok(db)
    }
}
