//! Random gets against an existing store, for profiling the read path apart from loading:
//! `cargo run --release -p kiln --example random_gets -- STORE DB COUNT N`
//! reads COUNT random ids `doc-%08d` below N (kiln-bench's ids) and prints the rate; with
//! COUNT 0 it scans every document in id order instead (kiln-bench's `alldocs`).

mod common;

use kiln::Store;

fn main() -> kiln::Result<()> {
    let (root, db, count, n) = common::args("usage: random_gets STORE DB COUNT N");
    let db = Store::open_existing(&root, kiln::Options::default())?.open_db(&db)?;
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
    for id in common::random_ids(n).take(count as usize) {
        db.get(&id)?.expect("every id below N exists");
    }
    let s = t.elapsed().as_secs_f64();
    println!("{count} gets in {s:.2} s: {:.0}/s", count as f64 / s);
    Ok(())
}
