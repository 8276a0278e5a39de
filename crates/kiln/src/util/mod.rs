//! Helpers that know nothing of kiln's formats or databases.

pub mod hex;
pub mod par;
