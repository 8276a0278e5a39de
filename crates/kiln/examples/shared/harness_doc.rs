//! The shared benchmark harness's document (`lib/docs.mjs` `makeDoc(i, N)`): ~300 bytes of JSON
//! with a 200-character pseudo-random body, generated with the same PRNG (mulberry32) so the
//! figures use the same bytes as the harness's runs.

use serde_json::{json, Value};

struct Mulberry32(u32);

impl Mulberry32 {
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x6d2b_79f5);
        let mut t = self.0;
        t = (t ^ (t >> 15)).wrapping_mul(t | 1);
        t ^= t.wrapping_add((t ^ (t >> 7)).wrapping_mul(t | 61));
        f64::from(t ^ (t >> 14)) / 4_294_967_296.0
    }
}

const ALPHA: &[u8] = b"abcdefghijklmnopqrstuvwxyz     ";

fn body(i: u64) -> String {
    let mut r = Mulberry32(0x9e37_79b9 ^ (i & 0xffff_ffff) as u32);
    (0..200)
        .map(|_| ALPHA[(r.next() * ALPHA.len() as f64).floor() as usize] as char)
        .collect()
}

pub fn doc(i: u64, n: u64) -> Value {
    json!({
        "_id": format!("doc-{i:08}"),
        "title": format!("Document number {i}"),
        "n": ((i as u128 * 7919) % n as u128) as u64,
        "tags": [format!("t{}", i % 10), format!("g{}", i % 7), if i.is_multiple_of(2) { "even" } else { "odd" }],
        "body": body(i),
    })
}

/// A number from `/proc/self/<file>` (`status`: kB; `io`: bytes) on the line starting `key`.
#[allow(dead_code)]
pub fn proc_figure(file: &str, key: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/self/{file}")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Bytes of every file below `p`.
pub fn disk(p: &std::path::Path) -> u64 {
    let mut t = 0;
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            let Ok(m) = e.metadata() else { continue };
            t += if m.is_dir() { disk(&e.path()) } else { m.len() };
        }
    }
    t
}
