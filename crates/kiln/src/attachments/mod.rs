//! File attachments (issue 16), to come: encrypted file-sets stored apart from the diff
//! files, one per document update, chunked, sealed and hashed so they stream, seek and verify;
//! named under a document's reserved `_files` field; loaded lazily and replicated on their own.
//!
//! Will use: `format` (a file-set format beside the diff file's), `storage` (file-sets are
//! immutable named files like diffs), `db` (the `_files` field, time travel). Will not: hold
//! document logic of its own.
