//! Blocks: content identifiers and the dag-cbor codec.

pub mod cbor;
pub mod cid;
