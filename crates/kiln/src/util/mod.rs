//! Helpers that know nothing of kiln's formats or databases.

// The lower layers are reached from outside only through `kiln::internals` (tests,
// examples, benchmarks: not a stable API); the public API is documented throughout.
#![allow(missing_docs)]

pub mod hex;
pub mod par;

/// Deserializes a value kept as text in its `FromStr` form (what `Serializer::collect_str` of
/// its `Display` wrote): a CID, a document version.
pub fn from_text<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    let text = <std::borrow::Cow<'de, str> as serde::Deserialize>::deserialize(d)?;
    text.parse().map_err(serde::de::Error::custom)
}
