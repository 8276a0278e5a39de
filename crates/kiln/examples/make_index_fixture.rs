//! Writes the index format fixture (`tests/fixtures/index-v1`): a store (`DIR/store`, its keys
//! in `DIR/keys`) with a database "books" and three built indexes (one field; a compound key;
//! an array field's elements), then a write the indexes have not seen yet. Run as
//! `cargo run -p kiln --example make_index_fixture -- DIR`.

use kiln::index::IndexDef;
use kiln::{Durability, Options, Store};
use serde_json::json;
use std::path::PathBuf;

fn main() -> kiln::Result<()> {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .expect("usage: make_index_fixture DIR"),
    );
    let store = Store::open_with(
        dir.join("store"),
        Options {
            durability: Durability::Full,
            background_compaction: false,
            keys: kiln::KeyPlace::Outside(Some(dir.join("keys"))),
            ..Options::default()
        },
    )?;
    let db = store.create(Some("books"))?;
    db.bulk(&[
        json!({"_id": "b1", "author": "Le Guin", "year": 1969, "tags": ["sf", "classic"]}),
        json!({"_id": "b2", "author": "Le Guin", "year": 1974, "tags": ["sf"]}),
        json!({"_id": "b3", "author": "Calvino", "year": 1972, "tags": ["fable", "classic"]}),
        json!({"_id": "b4", "author": "Borges", "year": 1944.5, "tags": []}),
        json!({"_id": "b5", "author": "Borges", "year": "unknown"}),
        json!({"_id": "b6", "title": "no author"}),
    ])?;
    db.create_index("by-year", IndexDef::fields(["year"]))?;
    db.create_index("by-author-year", IndexDef::fields(["author", "year"]))?;
    db.create_index("tags", IndexDef::fields(["tags"]).each())?;
    for i in db.indexes()? {
        db.update_index(&i.name)?;
    }
    db.put(&json!({"_id": "b2", "author": "Le Guin", "year": 1974, "tags": ["sf", "utopia"]}))?;
    db.del("b3")?;
    for i in db.indexes()? {
        println!("{} {:?}", i.name, i.root.map(|c| c.to_string()));
    }
    Ok(())
}
