//! Secondary indexes and queries, to come: index trees (prolly trees keyed by an indexed
//! value) kept beside the document tree, updated by commits, read by queries.
//!
//! Will use: `model::tree` (the same prolly tree), `db` (commits feed it). Will not: change the
//! document tree or the commit format.
