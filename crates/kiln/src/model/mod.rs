//! The data model: documents, the prolly tree of a state, and the Merkle clock of events. Pure
//! functions over blocks; they load what they need through small source traits.
//!
//! Useful for: what a database *means* (which document a state holds, which events precede
//! which). Not for: files, keys or locks.

pub mod clock;
pub mod doc;
pub mod tree;
