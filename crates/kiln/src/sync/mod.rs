//! Sync, to come: moving a database's files and head record between this store and a remote
//! (a folder, an S3-compatible bucket, kiln's sync server), merging concurrent heads with
//! `db`'s merge. The remotes themselves live in crates of their own (no async runtime or HTTP
//! in this one); this place holds the protocol: which files the other side lacks, the head
//! record's compare-and-swap, resumable transfers.
//!
//! Will use: `storage` (the traits a remote implements), `db` (merge), `format::head`.
