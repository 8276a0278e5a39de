//! Random JSON values for the document tests (the text, value and serde paths must agree).

use proptest::prelude::*;
use serde_json::{json, Value};

/// Any JSON value up to 4 levels deep: floats from `floats`, object keys matching `key`,
/// arrays of fewer than `items` items.
pub fn arb_json(
    floats: impl Strategy<Value = f64> + 'static,
    key: &'static str,
    items: usize,
) -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        floats.prop_map(|x| json!(x)),
        "[a-z_\\\\\"\u{e9}\u{1F600} ]{0,8}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 40, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..items).prop_map(Value::Array),
            prop::collection::btree_map(key, inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}
