//! What the profiling examples share: their arguments and the ids they pick.

/// `STORE DB COUNT N` from the command line (panics with `usage` otherwise).
pub fn args(usage: &str) -> (String, String, u64, u64) {
    let a: Vec<String> = std::env::args().collect();
    match &a[1..] {
        [r, d, c, n] => (
            r.clone(),
            d.clone(),
            c.parse::<u64>().expect(usage),
            n.parse::<u64>().expect(usage),
        ),
        _ => panic!("{usage}"),
    }
}

/// kiln-bench's ids `doc-%08d` below `n`, in a fixed pseudo-random order (xorshift64).
pub fn random_ids(n: u64) -> impl Iterator<Item = String> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    std::iter::repeat_with(move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        format!("doc-{:08}", x % n)
    })
}
