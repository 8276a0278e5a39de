//! Watching a database, to come: notifications when its head changes (in this process, from
//! other processes through the LOCK counter, from a sync server's live channel), feeding
//! live queries and sync.
//!
//! Will use: `db` (heads, changes since). Will not: poll files itself where `storage` can say.
