//! Bringing data in from other systems: Fireproof ledgers ([`fireproof`]).
//!
//! Layers: on top of `store`, `db` and `attachments`, like the other capabilities.

pub mod fireproof;
