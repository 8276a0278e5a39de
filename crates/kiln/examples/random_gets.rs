//! Random gets against an existing store, for profiling the read path apart from loading:
//! `cargo run --release -p kiln --example random_gets -- STORE DB COUNT N`
//! reads COUNT random ids `doc-%08d` below N (kiln-bench's ids) and prints the rate; with
//! COUNT 0 it scans every document in id order instead (kiln-bench's `alldocs`).

use kiln::Store;

fn main() -> kiln::Result<()> {
    let a: Vec<String> = std::env::args().collect();
    let usage = "usage: random_gets STORE DB COUNT N";
    let (root, db, count, n) = match &a[1..] {
        [r, d, c, n] => (
            r,
            d,
            c.parse::<u64>().expect(usage),
            n.parse::<u64>().expect(usage),
        ),
        _ => panic!("{usage}"),
    };
    let db = Store::open_existing(root, kiln::Options::default())?.open_db(db)?;
    let t = std::time::Instant::now();
    if count == 0 {
        let mut seen = 0u64;
        db.scan(&kiln::ListOptions::default(), &mut |_| {
            seen += 1;
            true
        })?;
        let s = t.elapsed().as_secs_f64();
        println!(
            "scanned {seen} documents in {s:.2} s: {:.0}/s",
            seen as f64 / s
        );
        return Ok(());
    }
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for _ in 0..count {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let id = format!("doc-{:08}", x % n);
        db.get(&id)?.expect("every id below N exists");
    }
    let s = t.elapsed().as_secs_f64();
    println!("{count} gets in {s:.2} s: {:.0}/s", count as f64 / s);
    Ok(())
}
