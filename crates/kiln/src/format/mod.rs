//! The formats: how blocks, sealed units, diff files and head records are laid out in bytes.
//! They know nothing of folders, databases or documents' meaning; see docs/format.md.
//!
//! Useful for: encoding and decoding what kiln stores. Not for: deciding what to store or
//! when (that is `db`), or where (that is `storage`).

pub mod block;
pub mod car;
pub mod filter;
pub mod head;
pub mod seal;
