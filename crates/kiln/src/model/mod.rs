//! The data model: documents, the prolly tree of a state, and the Merkle clock of events. Pure
//! functions over blocks; they load what they need through small source traits.
//!
//! Useful for: what a database *means* (which document a state holds, which events precede
//! which). Not for: files, keys or locks.

// The lower layers are reached from outside only through `kiln::internals` (tests,
// examples, benchmarks: not a stable API); the public API is documented throughout.
#![allow(missing_docs)]

pub mod clock;
pub mod doc;
pub mod tree;
