//! The formats: how blocks, sealed units, diff files and head records are laid out in bytes.
//! They know nothing of folders, databases or documents' meaning; see docs/format.md.
//!
//! Useful for: encoding and decoding what kiln stores. Not for: deciding what to store or
//! when (that is `db`), or where (that is `storage`).

// The lower layers are reached from outside only through `kiln::internals` (tests,
// examples, benchmarks: not a stable API); the public API is documented throughout.
#![allow(missing_docs)]

pub mod block;
pub mod car;
pub mod fileset;
pub mod filter;
pub mod head;
pub mod key_export;
pub mod seal;
