//! Compaction policy: given the live files' levels and the settings, what to combine. Pure
//! functions, tested without I/O; the runner in `compact` (inline in a commit, or on the
//! background thread) only schedules what these decide.
//!
//! The rule: more than `threshold` transaction diffs (level 0), or more than [`LEVEL_FANIN`]
//! files at a higher level, are combined into one file of the next level, lowest level first
//! (combining level k only adds a file to level k + 1). So a reader consults at most
//! `threshold` + [`LEVEL_FANIN`] files per level.

/// Compacted files of one level are combined into the next level when more than this many
/// exist.
pub const LEVEL_FANIN: usize = 24;

/// Bytes of the smallest size class: a combined file up to this size belongs to level 1.
pub const CLASS_BASE: u64 = 4 << 20;
/// Each size class holds files up to this many times larger than the one below.
pub const CLASS_RATIO: u64 = 4;

/// The size class of a file of `bytes` bytes: 1 up to [`CLASS_BASE`], then one more for each
/// [`CLASS_RATIO`]-fold.
pub fn size_level(bytes: u64) -> u8 {
    let (mut level, mut cap) = (1u8, CLASS_BASE);
    while bytes > cap && level < 64 {
        cap = cap.saturating_mul(CLASS_RATIO);
        level += 1;
    }
    level
}

/// The level of a file combined from the files of level `from`, about `bytes` bytes: its size
/// class, but at least `from + 1` and at most the lowest level above `from` that another live
/// file (`others`) has. Levels order files by age (a lower level holds only newer files, which
/// compaction relies on to tell a superseded tree node from a live one), and the combined file
/// is newer than every file above `from` and older than every file below it: so it may skip
/// empty levels, not pass an older file. Without this a bulk load's 40 MB files waited in
/// level 1 for the small files later updates make, and the first combination of level 1
/// rewrote the whole database.
pub fn out_level(from: u8, bytes: u64, others: impl Iterator<Item = u8>) -> u8 {
    let cap = others.filter(|&l| l > from).min().unwrap_or(u8::MAX);
    size_level(bytes).min(cap).max(from + 1)
}

/// With background compaction on, a merge of fewer input bytes than this still runs inside
/// the commit that crosses the limit, when no background merge is running: a hundred small
/// diffs merge in well under a millisecond, less than starting the thread and handing the
/// result back under the lock (one-document commits at 10,000 documents were 8% slower with
/// every merge in the background). Larger merges (a bulk load's, the upper levels' at scale)
/// run beside the commits, on the other core: bulk loads of a million documents +43%, random
/// updates +15–30% at 100,000 and a million.
pub const BACKGROUND_FROM: u64 = 4 << 20;

/// The compaction settings in force for a database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Policy {
    /// Transaction diffs allowed before level 0 is combined (at least 1).
    pub threshold: usize,
    /// Combine on a background thread rather than inside the commit that crosses a limit.
    pub background: bool,
}

/// What a commit does about compaction, decided on the head it is about to write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OnCommit {
    /// Nothing now.
    Nothing,
    /// Combine every level over its limit, lowest first, inside this commit.
    Cascade,
    /// Combine level 0 only, inside this commit: a background compaction runs but commits
    /// outran it (more than 4 × threshold diffs); higher levels stay the thread's (combining a
    /// level it may be combining would be lost work).
    Level0,
    /// Combine the levels over their limits, lowest first, inside this commit while each is
    /// smaller than [`BACKGROUND_FROM`]; the first larger one is the background thread's.
    Small,
}

impl Policy {
    /// The lowest level over its limit, if any: more than `threshold` files at level 0, more
    /// than [`LEVEL_FANIN`] at a higher level.
    pub fn level_to_combine(&self, levels: &[u8]) -> Option<u8> {
        let top = levels.iter().copied().max()?;
        (0..=top).find(|&l| {
            let n = levels.iter().filter(|&&x| x == l).count();
            n > if l == 0 { self.threshold } else { LEVEL_FANIN }
        })
    }

    /// What a commit whose head has `files` (level and bytes of each) does inline; `running`:
    /// a background merge of this handle is under way.
    pub fn on_commit(&self, files: &[(u8, u64)], running: bool) -> OnCommit {
        let levels: Vec<u8> = files.iter().map(|f| f.0).collect();
        let diffs = levels.iter().filter(|&&l| l == 0).count();
        if !self.background {
            OnCommit::Cascade
        } else if diffs > 4 * self.threshold {
            OnCommit::Level0
        } else if !running && self.small_level(files).is_some() {
            OnCommit::Small
        } else {
            OnCommit::Nothing
        }
    }

    /// The level to combine next, if there is one and it holds fewer than [`BACKGROUND_FROM`]
    /// bytes.
    pub fn small_level(&self, files: &[(u8, u64)]) -> Option<u8> {
        let levels: Vec<u8> = files.iter().map(|f| f.0).collect();
        self.level_to_combine(&levels).filter(|&l| {
            files.iter().filter(|f| f.0 == l).map(|f| f.1).sum::<u64>() < BACKGROUND_FROM
        })
    }

    /// Whether the background thread has work after a commit whose head (after any inline
    /// compaction) has files at `levels`.
    pub fn wants_background(&self, levels: &[u8]) -> bool {
        self.background && self.level_to_combine(levels).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn levels(counts: &[(u8, usize)]) -> Vec<u8> {
        counts
            .iter()
            .flat_map(|&(l, n)| std::iter::repeat_n(l, n))
            .collect()
    }

    #[test]
    fn the_lowest_level_over_its_limit_is_combined_first() {
        let p = Policy {
            threshold: 100,
            background: false,
        };
        assert_eq!(p.level_to_combine(&[]), None);
        assert_eq!(p.level_to_combine(&levels(&[(0, 100)])), None);
        assert_eq!(p.level_to_combine(&levels(&[(0, 101)])), Some(0));
        assert_eq!(p.level_to_combine(&levels(&[(0, 5), (1, 24)])), None);
        assert_eq!(p.level_to_combine(&levels(&[(0, 5), (1, 25)])), Some(1));
        assert_eq!(
            p.level_to_combine(&levels(&[(0, 101), (1, 25), (2, 30)])),
            Some(0)
        );
        assert_eq!(p.level_to_combine(&levels(&[(1, 3), (3, 25)])), Some(3));
        // A threshold of 1: two diffs are one too many.
        let one = Policy {
            threshold: 1,
            background: false,
        };
        assert_eq!(one.level_to_combine(&levels(&[(0, 2)])), Some(0));
    }

    #[test]
    fn combined_files_go_to_their_size_class_without_passing_older_files() {
        assert_eq!(size_level(0), 1);
        assert_eq!(size_level(CLASS_BASE), 1);
        assert_eq!(size_level(CLASS_BASE + 1), 2);
        assert_eq!(size_level(CLASS_BASE * 4), 2);
        assert_eq!(size_level(CLASS_BASE * 16 + 1), 4);
        assert_eq!(size_level(u64::MAX), 22); // 2^22 × 4^21 saturates
        let none = || std::iter::empty();
        // Small: the next level. Large: its class, past empty levels.
        assert_eq!(out_level(0, 1000, none()), 1);
        assert_eq!(out_level(0, 40 << 20, none()), 3);
        assert_eq!(out_level(2, 1000, none()), 3);
        // Never above an older file's level (levels above `from`), never at or below `from`.
        assert_eq!(out_level(0, 40 << 20, [2u8, 5].into_iter()), 2);
        assert_eq!(out_level(1, 40 << 20, [0u8, 1, 2].into_iter()), 2);
        assert_eq!(out_level(1, 1 << 40, [0u8, 9].into_iter()), 9);
        assert_eq!(out_level(3, 1000, [4u8].into_iter()), 4);
    }

    #[test]
    fn commits_compact_inline_unless_a_background_thread_keeps_up() {
        let inline = Policy {
            threshold: 10,
            background: false,
        };
        let sized = |counts: &[(u8, usize)], bytes: u64| -> Vec<(u8, u64)> {
            levels(counts).into_iter().map(|l| (l, bytes)).collect()
        };
        let big = BACKGROUND_FROM / 8;
        assert_eq!(
            inline.on_commit(&sized(&[(0, 3)], 1), false),
            OnCommit::Cascade
        );
        assert!(!inline.wants_background(&levels(&[(0, 30)])));
        let bg = Policy {
            threshold: 10,
            background: true,
        };
        assert_eq!(
            bg.on_commit(&sized(&[(0, 40)], big), false),
            OnCommit::Nothing
        );
        assert_eq!(
            bg.on_commit(&sized(&[(0, 41), (1, 3)], 1), true),
            OnCommit::Level0
        );
        // Small merges stay inline while no background merge runs.
        assert_eq!(
            bg.on_commit(&sized(&[(0, 11)], 1000), false),
            OnCommit::Small
        );
        assert_eq!(
            bg.on_commit(&sized(&[(0, 11)], 1000), true),
            OnCommit::Nothing
        );
        assert_eq!(
            bg.on_commit(&sized(&[(0, 10)], 1000), false),
            OnCommit::Nothing
        );
        assert_eq!(
            bg.on_commit(&sized(&[(0, 11)], big), false),
            OnCommit::Nothing
        );
        assert_eq!(bg.small_level(&sized(&[(0, 11)], 1000)), Some(0));
        assert_eq!(bg.small_level(&sized(&[(0, 11)], big)), None);
        assert_eq!(bg.small_level(&sized(&[(0, 10)], 1000)), None);
        assert!(bg.wants_background(&levels(&[(0, 11)])));
        assert!(!bg.wants_background(&levels(&[(0, 10), (1, 24)])));
        assert!(bg.wants_background(&levels(&[(1, 25)])));
    }
}
