#[path = "shared/harness_doc.rs"]
mod harness_doc;
use std::time::Instant;
fn main() {
    let docs: Vec<String> = (0..1000)
        .map(|i| harness_doc::doc(i, 1000).to_string())
        .collect();
    for _ in 0..5 {
        let t = Instant::now();
        let mut n = 0;
        for _ in 0..20 {
            for d in &docs {
                n += kiln::doc::prepare_json(d).unwrap().1.len();
            }
        }
        let a = t.elapsed().as_secs_f64() / 20000.0 * 1e6;
        let bodies: Vec<Vec<u8>> = docs
            .iter()
            .map(|d| kiln::doc::prepare_json(d).unwrap().1)
            .collect();
        let t = Instant::now();
        for _ in 0..20 {
            for b in &bodies {
                n += kiln::Cid::of_cbor(b).as_bytes()[5] as usize;
            }
        }
        let b = t.elapsed().as_secs_f64() / 20000.0 * 1e6;
        let t = Instant::now();
        for _ in 0..20 {
            for d in &docs {
                let v: serde_json::Value = serde_json::from_str(d).unwrap();
                n += v.as_object().unwrap().len();
            }
        }
        let c = t.elapsed().as_secs_f64() / 20000.0 * 1e6;
        println!("prepare_json {a:.3} us/doc, cid {b:.3} us/doc, serde Value parse {c:.3} us; json {} bytes cbor {} bytes {n}", docs[1].len(), bodies[1].len());
    }
}
