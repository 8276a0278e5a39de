//! A diff file's name: the hash of all its bytes (BLAKE3 from version 3, sha2-256 before),
//! computed as the file is written, reusing what is known of parts already hashed.

use super::*;

impl FileName {
    /// The name of a file's bytes: BLAKE3 for version 3 on, sha2-256 for files of versions 1
    /// and 2 (and for bytes that are no diff file at all), as their header says.
    pub fn of(bytes: &[u8]) -> FileName {
        let mut h = NameHasher::new(bytes);
        h.update(bytes);
        h.finish()
    }
}

/// [`FileName::of`] fed piece by piece, the file's first bytes (at least its header) first.
pub enum NameHasher {
    Sha(Box<Sha256>),
    Blake(Box<blake3::Hasher>),
}

impl NameHasher {
    pub fn new(start: &[u8]) -> NameHasher {
        if header_version(start).is_some_and(|v| v >= 3) {
            NameHasher::Blake(Box::default())
        } else {
            NameHasher::Sha(Box::default())
        }
    }

    pub fn update(&mut self, b: &[u8]) {
        match self {
            NameHasher::Sha(h) => h.update(b),
            NameHasher::Blake(h) => {
                h.update(b);
            }
        }
    }

    pub fn finish(self) -> FileName {
        match self {
            NameHasher::Sha(h) => FileName(h.finalize().into()),
            NameHasher::Blake(h) => FileName(*h.finalize().as_bytes()),
        }
    }
}

/// BLAKE3 chaining values of the largest aligned subtrees wholly inside one span of a file,
/// hashed ahead of the rest (a large diff's runs, on the helper thread while this one
/// finishes the file): [`Finished::name_with`] then does not hash those bytes again.
#[derive(Default)]
pub struct Subtrees {
    /// Where the span starts in its file.
    pub(super) start: u64,
    /// Offset, length and chaining value of each subtree.
    pub(super) trees: Vec<(u64, u64, ChainingValue)>,
}

type ChainingValue = blake3::hazmat::ChainingValue;

impl Subtrees {
    /// The subtrees of `runs`' bytes, which start at `start` in their file.
    pub fn of_runs(runs: &[Run], start: u64) -> Subtrees {
        let parts: Vec<&[u8]> = runs.iter().map(|r| r.buf.as_slice()).collect();
        Subtrees::of(&parts, start)
    }

    /// The subtrees of `parts` (consecutive bytes of a file from `start` on).
    pub fn of(parts: &[&[u8]], start: u64) -> Subtrees {
        use blake3::hazmat::HasherExt;
        let chunk = blake3::CHUNK_LEN as u64;
        let end = start + parts.iter().map(|p| p.len() as u64).sum::<u64>();
        let (mut at, stop) = (start.div_ceil(chunk) * chunk, end / chunk * chunk);
        let mut out = Vec::new();
        while at < stop {
            // The largest power-of-two run of chunks starting at a multiple of its size.
            let mut size = chunk;
            while at % (2 * size) == 0 && at + 2 * size <= stop {
                size *= 2;
            }
            let mut h = blake3::Hasher::new();
            h.set_input_offset(at);
            feed(&mut h, parts, start, at, at + size);
            out.push((at, size, h.finalize_non_root()));
            at += size;
        }
        Subtrees { start, trees: out }
    }

    fn find(&self, lo: u64, hi: u64) -> Option<&ChainingValue> {
        self.trees
            .iter()
            .find(|k| k.0 == lo && k.0 + k.1 == hi)
            .map(|k| &k.2)
    }

    fn any_within(&self, lo: u64, hi: u64) -> bool {
        self.trees.iter().any(|k| k.0 >= lo && k.0 + k.1 <= hi)
    }
}

/// Hashes the bytes `[lo, hi)` of the file whose bytes from `base` on are `parts`.
fn feed(h: &mut blake3::Hasher, parts: &[&[u8]], base: u64, lo: u64, hi: u64) {
    let mut at = base;
    for p in parts {
        let end = at + p.len() as u64;
        if end > lo && at < hi {
            let from = lo.max(at) - at;
            let to = hi.min(end) - at;
            h.update(&p[from as usize..to as usize]);
        }
        at = end;
    }
}

/// The chaining value of the BLAKE3 subtree `[lo, hi)` of a file (`parts` from offset 0),
/// taking the subtrees `known` wherever the tree has them.
fn subtree_cv(parts: &[&[u8]], lo: u64, hi: u64, known: &Subtrees) -> ChainingValue {
    use blake3::hazmat::{left_subtree_len, merge_subtrees_non_root, HasherExt, Mode};
    if let Some(cv) = known.find(lo, hi) {
        return *cv;
    }
    if hi - lo <= blake3::CHUNK_LEN as u64 || !known.any_within(lo, hi) {
        let mut h = blake3::Hasher::new();
        h.set_input_offset(lo);
        feed(&mut h, parts, 0, lo, hi);
        return h.finalize_non_root();
    }
    let mid = lo + left_subtree_len(hi - lo);
    merge_subtrees_non_root(
        &subtree_cv(parts, lo, mid, known),
        &subtree_cv(parts, mid, hi, known),
        Mode::Hash,
    )
}

/// The BLAKE3 hash of the file `parts` (from offset 0, `len` bytes), taking `known` subtrees.
pub(super) fn blake3_with(parts: &[&[u8]], len: u64, known: &Subtrees) -> [u8; 32] {
    use blake3::hazmat::{left_subtree_len, merge_subtrees_root, Mode};
    if len <= blake3::CHUNK_LEN as u64 || !known.any_within(0, len) {
        let mut h = blake3::Hasher::new();
        feed(&mut h, parts, 0, 0, len);
        return *h.finalize().as_bytes();
    }
    let mid = left_subtree_len(len);
    let root = merge_subtrees_root(
        &subtree_cv(parts, 0, mid, known),
        &subtree_cv(parts, mid, len, known),
        Mode::Hash,
    );
    *root.as_bytes()
}
