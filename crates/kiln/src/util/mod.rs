//! Helpers that know nothing of kiln's formats or databases.

// The lower layers are reached from outside only through `kiln::internals` (tests,
// examples, benchmarks: not a stable API); the public API is documented throughout.
#![allow(missing_docs)]

pub mod hex;
pub mod par;
