//! What handing half a job to another thread costs: kiln's kept helper (`par::join`) against a
//! scoped thread per call (`std::thread::scope`), for the issue-13 question of replacing the
//! helper's lifetime-erasing `transmute` with a scoped API. `cargo run --release -p kiln
//! --example par_cost`.

use kiln::internals::par;
use std::time::Instant;

fn work(n: u64) -> u64 {
    (0..n).fold(0u64, |a, x| a.wrapping_mul(31).wrapping_add(x))
}

fn main() {
    par::warm();
    let rounds = 20_000;
    for n in [0u64, 2_000, 20_000] {
        let t = Instant::now();
        let mut s = 0;
        for _ in 0..rounds {
            let (a, b) = par::join(|| work(n), || work(n));
            s ^= a ^ b;
        }
        let helper = t.elapsed().as_secs_f64() * 1e6 / rounds as f64;
        let t = Instant::now();
        for _ in 0..rounds {
            let (a, b) = std::thread::scope(|sc| {
                let h = sc.spawn(|| work(n));
                let a = work(n);
                (a, h.join().unwrap_or(0))
            });
            s ^= a ^ b;
        }
        let scoped = t.elapsed().as_secs_f64() * 1e6 / rounds as f64;
        let t = Instant::now();
        for _ in 0..rounds {
            s ^= work(n) ^ work(n);
        }
        let alone = t.elapsed().as_secs_f64() * 1e6 / rounds as f64;
        println!(
            "work {n:>6}: one thread {alone:7.2} µs, kept helper {helper:7.2} µs, scoped thread {scoped:7.2} µs  ({s})"
        );
    }
}
