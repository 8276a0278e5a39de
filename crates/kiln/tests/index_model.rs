//! Every query form against a simple in-memory model: random writes and deletes of documents
//! whose indexed field takes values of every JSON type (a value changing type moves the
//! document in the order), interleaved with random queries (all, key, keys, range inclusive
//! and exclusive, prefix; skip, limit, desc), on a single-field and a compound index. The
//! model sorts with its own comparison, written from the documented order, not the encoding.

use kiln::index::{IndexDef, Query, Select};
use kiln::Store;
use proptest::prelude::*;
use serde_json::{json, Value};
use std::cmp::Ordering;
use std::collections::BTreeMap;

/// The documented key order, by hand.
fn order(a: &Value, b: &Value) -> Ordering {
    fn rank(v: &Value) -> u8 {
        match v {
            Value::Null => 0,
            Value::Bool(false) => 1,
            Value::Bool(true) => 2,
            Value::Number(_) => 3,
            Value::String(_) => 4,
            Value::Array(_) => 5,
            Value::Object(_) => 6,
        }
    }
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x
            .as_f64()
            .unwrap()
            .partial_cmp(&y.as_f64().unwrap())
            .unwrap(),
        (Value::String(x), Value::String(y)) => x.cmp(y),
        (Value::Array(x), Value::Array(y)) => x
            .iter()
            .zip(y)
            .map(|(p, q)| order(p, q))
            .find(|o| o.is_ne())
            .unwrap_or(x.len().cmp(&y.len())),
        (Value::Object(x), Value::Object(y)) => {
            let (xs, ys): (Vec<_>, Vec<_>) = (x.iter().collect(), y.iter().collect());
            xs.iter()
                .zip(&ys)
                .map(|((ka, va), (kb, vb))| ka.cmp(kb).then_with(|| order(va, vb)))
                .find(|o| o.is_ne())
                .unwrap_or(xs.len().cmp(&ys.len()))
        }
        _ => rank(a).cmp(&rank(b)),
    }
}

fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(json!(null)),
        any::<bool>().prop_map(|b| json!(b)),
        (-3i64..4).prop_map(|n| json!(n)),
        (-3i64..4).prop_map(|n| json!(n as f64 + 0.5)),
        prop_oneof![
            Just(""),
            Just("0"),
            Just("a"),
            Just("ab"),
            Just("b"),
            Just("é")
        ]
        .prop_map(|s| json!(s)),
    ];
    leaf.prop_recursive(2, 6, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
            inner.prop_map(|v| json!({"k": v})),
        ]
    })
}

#[derive(Clone, Debug)]
enum Op {
    Put(u8, Value, Value),
    Del(u8),
    Ask(Query, bool),
}

fn query() -> impl Strategy<Value = (Query, bool)> {
    let select = prop_oneof![
        Just(Select::All),
        value().prop_map(Select::Key),
        prop::collection::vec(value(), 0..4).prop_map(Select::Keys),
        (
            prop::option::of(value()),
            prop::option::of(value()),
            any::<bool>()
        )
            .prop_map(|(start, end, exclusive_end)| Select::Range {
                start,
                end,
                exclusive_end
            }),
        prop::collection::vec(value(), 0..3).prop_map(Select::Prefix),
    ];
    (
        select,
        prop::option::of(0usize..6),
        0usize..4,
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(select, limit, skip, desc, compound)| {
            (
                Query {
                    select,
                    limit,
                    skip,
                    desc,
                    docs: false,
                },
                compound,
            )
        })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..12, value(), value()).prop_map(|(i, a, b)| Op::Put(i, a, b)),
        1 => (0u8..12).prop_map(Op::Del),
        3 => query().prop_map(|(q, c)| Op::Ask(q, c)),
    ]
}

/// The model's answer: rows (key, id) of the live documents, selected, ordered, cut.
fn answer(
    docs: &BTreeMap<String, (Value, Value)>,
    q: &Query,
    compound: bool,
) -> Vec<(Value, String)> {
    let mut rows: Vec<(Value, String)> = docs
        .iter()
        .map(|(id, (a, b))| {
            let k = if compound { json!([a, b]) } else { a.clone() };
            (k, id.clone())
        })
        .collect();
    let eq = |a: &Value, b: &Value| order(a, b).is_eq();
    rows.retain(|(k, _)| match &q.select {
        Select::All => true,
        Select::Key(x) => eq(k, x),
        Select::Keys(xs) => xs.iter().any(|x| eq(k, x)),
        Select::Range {
            start,
            end,
            exclusive_end,
        } => {
            start.as_ref().is_none_or(|s| order(k, s).is_ge())
                && end.as_ref().is_none_or(|e| {
                    if *exclusive_end {
                        order(k, e).is_lt()
                    } else {
                        order(k, e).is_le()
                    }
                })
        }
        Select::Prefix(p) => match k {
            Value::Array(a) => a.len() >= p.len() && a.iter().zip(p).all(|(x, y)| eq(x, y)),
            _ => false,
        },
    });
    rows.sort_by(|a, b| order(&a.0, &b.0).then_with(|| a.1.cmp(&b.1)));
    if q.desc {
        rows.reverse();
    }
    let rows = rows.into_iter().skip(q.skip);
    match q.limit {
        Some(l) => rows.take(l).collect(),
        None => rows.collect(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn queries_answer_as_the_model_does(ops in prop::collection::vec(op(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let opts = kiln::Options { durability: kiln::Durability::Buffered, ..kiln::Options::default() };
        let store = Store::open_with(dir.path(), opts).unwrap();
        let db = store.create(Some("m")).unwrap();
        db.create_index("one", IndexDef::fields(["a"])).unwrap();
        db.create_index("two", IndexDef::fields(["a", "b"])).unwrap();
        let mut model: BTreeMap<String, (Value, Value)> = BTreeMap::new();
        for op in ops {
            match op {
                Op::Put(i, a, b) => {
                    let id = format!("d{i:02}");
                    db.put(&json!({"_id": id, "a": a, "b": b})).unwrap();
                    model.insert(id, (a, b));
                }
                Op::Del(i) => {
                    let id = format!("d{i:02}");
                    if model.remove(&id).is_some() {
                        db.del(&id).unwrap();
                    }
                }
                Op::Ask(q, compound) => {
                    let index = if compound { "two" } else { "one" };
                    let rows = db.query(index, &q).unwrap();
                    // Row by row, with documents or without: the same rows.
                    for q in [q.clone(), q.clone().with_docs()] {
                        let mut each = Vec::new();
                        db.query_each(index, &q, &mut |r| {
                            each.push(r);
                            Ok(true)
                        })
                        .unwrap();
                        prop_assert_eq!(&each, &db.query(index, &q).unwrap());
                        // Each row's document is the one it was made from.
                        for r in each.iter().filter(|_| q.docs) {
                            let (a, b) = &model[&r.id];
                            let want = json!({"_id": r.id, "a": a, "b": b});
                            prop_assert_eq!(r.doc.as_ref(), Some(&want));
                        }
                    }
                    let got: Vec<(Value, String)> =
                        rows.into_iter().map(|r| (r.key, r.id)).collect();
                    let want = answer(&model, &q, compound);
                    prop_assert_eq!(got.len(), want.len(), "{:?}", q);
                    for (g, w) in got.iter().zip(&want) {
                        prop_assert!(order(&g.0, &w.0).is_eq() && g.1 == w.1, "{:?}: {:?} vs {:?}", q, got, want);
                    }
                }
            }
        }
    }
}
