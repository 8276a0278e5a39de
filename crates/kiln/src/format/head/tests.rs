//! Tests of head records.

use super::*;
use proptest::prelude::*;

fn sample() -> Head {
    Head {
        seq: 3,
        docs: 2,
        root: Some(Cid::of_cbor(b"r")),
        base: Some(Cid::of_cbor(b"b")),
        files: Arc::new(vec![FileRef {
            name: FileName::of(b"f"),
            level: 1,
            size: 99,
            index_len: 40,
            heights: (1, 3),
            filter: Filter::Small(5),
        }]),
        heads: vec![Cid::of_cbor(b"h")],
        events: 3,
        compacted: 0,
        purged: vec![Cid::of_cbor(b"p")],
        cut: vec![(Cid::of_cbor(b"e"), None)],
        scrub: true,
        shape: TreeShape::Bounded,
        meta: String::new(),
    }
}

/// Version 5 snapshots name the tree shape, both shapes round-trip, an unknown code is
/// refused, and a version-4 snapshot (no shape) reads as `Mod16`, the only shape before.
#[test]
fn the_tree_shape_round_trips_and_older_snapshots_are_mod16() {
    for shape in [TreeShape::Mod16, TreeShape::Bounded] {
        let h = Head { shape, ..sample() };
        assert_eq!(Head::decode_body(&h.encode_body(), VERSION).unwrap(), h);
        assert_eq!(TreeShape::from_code(shape.code()), Some(shape));
    }
    assert_eq!(TreeShape::from_code(0), None);
    assert_eq!(TreeShape::from_code(3), None);
    let v4 = sample().encode_body_of(4);
    assert_eq!(Head::decode_body(&v4, 4).unwrap().shape, TreeShape::Mod16);
    // A version-5 body with an unknown shape code is refused, not guessed.
    let mut bad = sample().encode_body();
    let at = bad.windows(6).position(|w| w == b"eshape").unwrap() + 6;
    assert_eq!(bad[at], 2);
    bad[at] = 7;
    assert!(Head::decode_body(&bad, VERSION).is_err());
    assert_eq!(TreeShape::default(), TreeShape::Bounded, "new databases");
}

#[test]
fn round_trip() {
    let k = Key::generate().unwrap();
    let l = [9u8; 16];
    let b = sample().seal(&l, &k).unwrap();
    assert_eq!(Head::lineage(&b).unwrap(), l);
    assert_eq!(Head::open(&b, &k).unwrap(), sample());
    let mut t = b.clone();
    t[12] ^= 1; // a different lineage no longer authenticates
    assert!(Head::open(&t, &k).is_err());
}

/// Each log has a key of its own: a snapshot draws a fresh salt (two snapshots of one head
/// by one key differ), a record opens only under its log's salt, and a record sealed again
/// at the same offset (the next writer after a torn append) takes a fresh nonce.
#[test]
fn each_log_has_its_own_key_and_fresh_nonces() {
    let (k, l) = (Key::from_raw([2; 32]), [7u8; 16]);
    let (a, b) = (
        sample().seal(&l, &k).unwrap(),
        sample().seal(&l, &k).unwrap(),
    );
    let prefix = prefix_len(VERSION);
    assert_eq!(a[8..12], VERSION.to_le_bytes());
    assert_ne!(a[28..prefix], b[28..prefix]);
    assert_ne!(a[prefix..], b[prefix..]);
    let log = Log::fresh(&a);
    assert_eq!(log, Head::open_log(&a, &k).unwrap().1);
    assert_eq!(log.salt.map(|s| s.to_vec()), Some(a[28..prefix].to_vec()));
    // Another log's salt: nothing opens.
    let mut swapped = a.clone();
    swapped[28..prefix].copy_from_slice(&b[28..prefix]);
    assert!(Head::open(&swapped, &k).is_err());
    // A delta sealed twice for one offset: the same body, two nonces, two ciphertexts.
    let mut next = sample();
    next.seq += 1;
    let d1 = next.seal_delta(&sample(), &log, &l, &k).unwrap().unwrap();
    let d2 = next.seal_delta(&sample(), &log, &l, &k).unwrap().unwrap();
    assert_ne!(d1[8..20], d2[8..20]);
    for d in [&d1, &d2] {
        let mut f = a.clone();
        f.extend_from_slice(d);
        assert_eq!(Head::open(&f, &k).unwrap(), next);
    }
    // No salt or nonce without the system's random source.
    crate::format::seal::fail_random_on_this_thread(true);
    assert!(sample().seal(&l, &k).is_err());
    assert!(next.seal_delta(&sample(), &log, &l, &k).is_err());
    assert!(Head::seal_file_record(&FileName::of(b"f"), b"f", &log, &l, &k).is_err());
    crate::format::seal::fail_random_on_this_thread(false);
}

/// A version-3 log (no salt: records under the lineage key) with a file record and its delta
/// still reads; it is not appended to (the next commit writes a snapshot of today's version).
#[test]
fn a_version_3_log_reads_and_is_replaced_not_appended_to() {
    let (k, l) = (Key::generate().unwrap(), [7u8; 16]);
    let mut file = MAGIC.to_vec();
    file.extend_from_slice(&3u32.to_le_bytes());
    file.extend_from_slice(&l);
    let mut v3 = Head {
        scrub: false,
        shape: TreeShape::Mod16, // before version 5: every tree
        ..sample()
    };
    v3.files_mut()[0].filter = Filter::Small(5); // before version 5: a 64-bit filter
    let body = v3.encode_body_of(3);
    let at = file.len() as u64;
    push_record(&mut file, at, &l, &RecordKey::Lineage(&k), SNAPSHOT, &body).unwrap();
    let (h, log) = Head::open_log(&file, &k).unwrap();
    assert_eq!((h, log.version, log.salt), (v3.clone(), 3, None));
    assert!(!log.appendable());
    let mut next = v3.clone();
    next.seq += 1;
    let bytes = vec![3u8; 100];
    next.files_mut().insert(
        0,
        FileRef {
            name: FileName::of(&bytes),
            ..v3.files[0].clone()
        },
    );
    assert!(next.seal_delta(&v3, &log, &l, &k).unwrap().is_none());
    // As a kiln of version 3 appended them: a file record, then the delta adding the file.
    let fr = Head::seal_file_record(&next.files[0].name, &bytes, &log, &l, &k).unwrap();
    let fr_at = log.end;
    let mut d = Vec::new();
    let d_at = log.end + fr.len() as u64;
    let key = RecordKey::Lineage(&k);
    // (The map form: `prev`'s base differs.)
    let not_prev = Head {
        base: next.root,
        ..Head::default()
    };
    let body = next.delta_body(&not_prev, 1);
    assert_eq!(body[0] >> 5, 5, "a CBOR map");
    push_record(&mut d, d_at, &l, &key, DELTA, &body).unwrap();
    file.extend_from_slice(&fr);
    file.extend_from_slice(&d);
    let (h, log) = Head::open_log(&file, &k).unwrap();
    assert_eq!((h, log.version, log.files.len()), (next.clone(), 3, 1));
    assert_eq!(embedded_file(&file, &k, &next.files[0].name), Some(bytes));
    // Both records are sealed under the lineage key itself.
    assert!(k.open(&aad_v2(&l, fr_at, FILE), &fr[8..]).is_ok());
}

/// A snapshot of `sample()` followed by three deltas; returns the file, the heads after
/// each record and the record offsets.
fn log_of_three(k: &Key, l: &Lineage) -> (Vec<u8>, Vec<Head>, Vec<usize>) {
    log_of_three_with(k, l, false)
}

/// [`log_of_three`], with the second delta's file carried in a file record before it when
/// `carry` (the offsets are then those of the deltas and the file record is before the
/// second).
fn log_of_three_with(k: &Key, l: &Lineage, carry: bool) -> (Vec<u8>, Vec<Head>, Vec<usize>) {
    let mut h = sample();
    let mut file = h.seal(l, k).unwrap();
    let (_, mut log) = Head::open_log(&file, k).unwrap();
    let mut heads = vec![h.clone()];
    let mut offs = vec![prefix_len(VERSION)];
    for i in 0..3u8 {
        let prev = h.clone();
        h.seq += 1;
        h.docs += 1;
        h.root = Some(Cid::of_cbor(&[i]));
        h.files_mut().insert(
            0,
            FileRef {
                name: FileName::of(&[i]),
                level: 0,
                size: 100 + i as u64,
                index_len: 40,
                heights: (4 + i as u64, 4 + i as u64),
                filter: Filter::None,
            },
        );
        if carry && i == 1 {
            let bytes = vec![i; 300];
            h.files_mut()[0].name = FileName::of(&bytes);
            let f = Head::seal_file_record(&h.files[0].name, &bytes, &log, l, k).unwrap();
            file.extend_from_slice(&f);
            log.end += f.len() as u64;
            log.file_bytes += f.len() as u64;
        }
        let rec = h.seal_delta(&prev, &log, l, k).unwrap().unwrap();
        offs.push(file.len());
        file.extend_from_slice(&rec);
        log = Head::open_log(&file, k).unwrap().1;
        assert_eq!(log.deltas, i as u32 + 1);
        assert_eq!(log.end, file.len() as u64);
        heads.push(h.clone());
    }
    (file, heads, offs)
}

/// Bug (issue 14): the log budget counted the snapshot, so once a snapshot passed 64 KiB
/// (head records carried filters for a while: a 100,000-document database after some
/// updates had 287 KB), every commit rewrote it whole instead of appending ~250 bytes.
#[test]
fn a_large_snapshot_still_takes_deltas() {
    let (k, l) = (Key::generate().unwrap(), [9u8; 16]);
    let mut big = sample();
    let one = big.files[0].clone();
    for i in 0..2000u32 {
        big.files_mut().push(FileRef {
            name: FileName::of(&i.to_le_bytes()),
            ..one.clone()
        });
    }
    let sealed = big.seal(&l, &k).unwrap();
    assert!(sealed.len() as u64 > MAX_LOG_BYTES);
    for log in [Log::fresh(&sealed), Head::open_log(&sealed, &k).unwrap().1] {
        assert!(log.appendable());
        let mut next = big.clone();
        next.seq += 1;
        let d = next.seal_delta(&big, &log, &l, &k).unwrap().unwrap();
        assert!(d.len() < 1024);
        let mut f = sealed.clone();
        f.extend_from_slice(&d);
        assert_eq!(Head::open(&f, &k).unwrap(), next);
    }
}

#[test]
fn deltas_append_and_replay() {
    let (k, l) = (Key::generate().unwrap(), [7u8; 16]);
    let (file, heads, _) = log_of_three(&k, &l);
    assert_eq!(Head::open(&file, &k).unwrap(), heads[3]);
    // Removing a file cannot be a delta: the writer starts a fresh snapshot.
    let (_, log) = Head::open_log(&file, &k).unwrap();
    let mut fewer = heads[3].clone();
    fewer.files_mut().pop();
    assert!(fewer.seal_delta(&heads[3], &log, &l, &k).unwrap().is_none());
    // A full log is not appended to.
    let full = Log {
        deltas: MAX_DELTAS,
        ..log.clone()
    };
    assert!(heads[3]
        .seal_delta(&heads[2], &full, &l, &k)
        .unwrap()
        .is_none());
}

/// Version 6: a snapshot may carry the database's metadata; a change to it is written as
/// a snapshot, and the deltas after keep it.
#[test]
fn metadata_rides_in_the_snapshot() {
    let (k, l) = (Key::generate().unwrap(), [7u8; 16]);
    let h = Head {
        meta: r#"{"title":"Lunch"}"#.into(),
        ..sample()
    };
    assert_eq!(Head::decode_body(&h.encode_body(), VERSION).unwrap(), h);
    assert_eq!(
        Head::decode_body(&sample().encode_body(), VERSION).unwrap(),
        sample()
    );
    let file = h.seal(&l, &k).unwrap();
    let (_, log) = Head::open_log(&file, &k).unwrap();
    let mut next = h.clone();
    next.seq += 1;
    next.meta = r#"{"title":"Dinner"}"#.into();
    assert!(next.seal_delta(&h, &log, &l, &k).unwrap().is_none());
    let mut commit = h.clone();
    commit.seq += 1;
    commit.docs += 1;
    let rec = commit.seal_delta(&h, &log, &l, &k).unwrap().unwrap();
    let mut both = file.clone();
    both.extend_from_slice(&rec);
    assert_eq!(Head::open(&both, &k).unwrap().meta, h.meta);
    // Version 5 has no such field; an empty one is never written.
    assert!(Head::decode_body(&h.encode_body(), 5).is_err());
    let mut b = h.encode_body();
    let at = b.windows(4).position(|w| w == b"meta").unwrap();
    b[at + 5] = 0x40; // a zero-length byte string
    b.truncate(at + 6);
    assert!(Head::decode_body(&b, VERSION).is_err());
}

/// Version 6: a commit's delta leaves out `base` and `compacted` (unchanged) and the field
/// names; a delta that changes either is the map, and both replay. A version-5 log takes
/// no short delta.
#[test]
fn a_commits_delta_is_short_and_replays() {
    let (k, l) = (Key::generate().unwrap(), [7u8; 16]);
    let (file, heads, offs) = log_of_three(&k, &l);
    let (_, log) = Head::open_log(&file, &k).unwrap();
    let short = heads[3].delta_body(&heads[2], 1);
    assert_eq!(short[0] >> 5, 4, "a CBOR array");
    let mut moved = heads[3].clone();
    moved.seq += 1;
    moved.base = Some(Cid::of_cbor(&[9]));
    moved.compacted = 77;
    let long = moved.delta_body(&heads[3], 0);
    assert_eq!(long[0] >> 5, 5, "a CBOR map");
    assert!(
        long.len() > short.len() + 40,
        "{} vs {}",
        long.len(),
        short.len()
    );
    let rec = moved.seal_delta(&heads[3], &log, &l, &k).unwrap().unwrap();
    let mut both = file.clone();
    both.extend_from_slice(&rec);
    assert_eq!(Head::open(&both, &k).unwrap(), moved);
    // The same short body in a log of version 5 is refused.
    let mut h = heads[2].clone();
    assert!(h.apply_delta(&short, SHORT_DELTAS - 1).is_err());
    assert!(h.apply_delta(&short, SHORT_DELTAS).is_ok());
    assert_eq!(h, heads[3]);
    assert_eq!(offs.len(), 4);
}

#[test]
fn unfinished_last_append_is_skipped_damage_is_not() {
    let (k, l) = (Key::generate().unwrap(), [7u8; 16]);
    let (file, heads, offs) = log_of_three(&k, &l);
    let last = offs[3];
    // Cut short anywhere inside the last record: the state before it, with or without a
    // commit in flight.
    for cut in [last + 1, last + 7, last + 9, file.len() - 1] {
        let (h, log) = Head::open_log(&file[..cut], &k).unwrap();
        assert_eq!(h, heads[2]);
        assert_eq!((log.end, log.len), (last as u64, cut as u64));
    }
    // Zeros where the last record or its tail should be (a power cut after the size grew).
    for from in [last, file.len() - 16] {
        let mut z = file.clone();
        z[from..].fill(0);
        assert_eq!(Head::open(&z, &k).unwrap(), heads[2]);
    }
    // A changed byte anywhere, also in the last record or its length, is corruption.
    for at in [
        last + 2,
        last + 5,
        last + 20,
        file.len() - 1,
        offs[1] + 3,
        offs[2] + 30,
        prefix_len(VERSION) + 20,
    ] {
        let mut t = file.clone();
        t[at] ^= 0x10;
        assert!(Head::open(&t, &k).is_err(), "flip at {at}");
    }
    // A record moved to another offset does not authenticate there.
    let mut moved = file[..offs[2]].to_vec();
    moved.extend_from_slice(&file[offs[3]..]);
    assert!(Head::open(&moved, &k).is_err());
}

#[test]
fn a_file_record_rides_with_its_delta() {
    let (k, l) = (Key::generate().unwrap(), [7u8; 16]);
    let (file, heads, offs) = log_of_three_with(&k, &l, true);
    let (h, log) = Head::open_log(&file, &k).unwrap();
    assert_eq!(h, heads[3]);
    let carried = heads[2].files[0].name;
    assert_eq!(log.files, vec![carried]);
    assert_eq!(log.deltas, 3);
    assert!(log.file_bytes > 300 && log.end == file.len() as u64);
    assert_eq!(embedded_file(&file, &k, &carried), Some(vec![1u8; 300]));
    assert_eq!(embedded_file(&file, &k, &heads[3].files[0].name), None);
    // An append cut after the file record, before or inside its delta: neither counts, and
    // the next writer appends where the file record began.
    let file_at = offs[1] + (offs[2] - offs[1]) - (log.file_bytes as usize);
    for cut in [file_at + 3, offs[2], offs[2] + 9, offs[3] - 1] {
        let (h, log) = Head::open_log(&file[..cut], &k).unwrap();
        assert_eq!(h, heads[1], "cut {cut}");
        assert_eq!(
            (log.end, log.files.len(), log.file_bytes),
            (file_at as u64, 0, 0)
        );
    }
    // Its flag is authenticated: cleared, the record does not open as a delta.
    let mut t = file.clone();
    t[file_at + 3] ^= 0x80;
    t[file_at + 7] ^= 0x80;
    assert!(Head::open(&t, &k).is_err());
    // In a version-2 file a file record is damage.
    let mut v2 = file.clone();
    v2[8] = 2;
    assert!(Head::open(&v2, &k).is_err());
    // Room: a log carries files up to its budget, and only version 3 does.
    assert!(log.can_hold_file(1000));
    assert!(!log.can_hold_file(MAX_FILE_RECORD + 1));
    let spent = Log {
        file_bytes: MAX_FILE_BYTES,
        end: MAX_FILE_BYTES + 1000,
        ..log.clone()
    };
    assert!(!spent.can_hold_file(10) && spent.appendable());
    let old = Log {
        version: 2,
        ..log.clone()
    };
    // An older log is not appended to at all: the next commit replaces it.
    assert!(!old.can_hold_file(10) && !old.appendable());
}

proptest! {
    #[test]
    fn mutated_records_never_panic(pos in any::<prop::sample::Index>(), val in any::<u8>(), cut in any::<prop::sample::Index>()) {
        let k = Key::from_raw([3; 32]);
        let mut b = sample().seal(&[1; 16], &k).unwrap();
        let i = pos.index(b.len());
        b[i] = val;
        let _ = Head::open(&b, &k);
        let _ = Head::open(&b[..cut.index(b.len())], &k);
        let _ = Head::decode_body(&b, 2);
        let _ = Head::decode_body(&b, 1);
    }

    #[test]
    fn mutated_logs_never_panic(pos in any::<prop::sample::Index>(), val in any::<u8>(), cut in any::<prop::sample::Index>()) {
        let k = Key::from_raw([3; 32]);
        let (mut b, _, _) = log_of_three_with(&k, &[1; 16], true);
        let i = pos.index(b.len());
        b[i] = val;
        let _ = Head::open_log(&b, &k);
        let _ = Head::open_log(&b[..cut.index(b.len())], &k);
    }

    /// `embedded_file` walks unauthenticated length fields (up to 2^31 each).
    #[test]
    fn mutated_logs_never_make_embedded_file_panic_or_lie(pos in any::<prop::sample::Index>(), val in any::<u8>(), cut in any::<prop::sample::Index>(), huge in any::<bool>()) {
        let k = Key::from_raw([3; 32]);
        let (mut b, heads, _) = log_of_three_with(&k, &[1; 16], true);
        let name = heads[2].files[0].name;
        let i = pos.index(b.len());
        if huge && i + 8 <= b.len() {
            let raw = 0x7fff_ffffu32 | (u32::from(val) << 31);
            b[i..i + 4].copy_from_slice(&raw.to_le_bytes());
            b[i + 4..i + 8].copy_from_slice(&(!raw).to_le_bytes());
        } else {
            b[i] = val;
        }
        for bytes in [&b[..], &b[..cut.index(b.len())]] {
            if let Some(f) = embedded_file(bytes, &k, &name) {
                prop_assert_eq!(f, vec![1u8; 300]);
            }
        }
    }
}

/// A snapshot of `sample()`, then a file record of `n` bytes and its delta;
/// returns (file, h0, h1, offset of the file record, offset of the delta).
fn carried_append(k: &Key, l: &Lineage, n: usize) -> (Vec<u8>, Head, Head, usize, usize) {
    let h0 = sample();
    let mut file = h0.seal(l, k).unwrap();
    let (_, log) = Head::open_log(&file, k).unwrap();
    let mut h1 = h0.clone();
    h1.seq += 1;
    let bytes = vec![9u8; n];
    h1.files_mut().insert(
        0,
        FileRef {
            name: FileName::of(&bytes),
            level: 0,
            size: bytes.len() as u64,
            index_len: 100,
            heights: (9, 9),
            filter: Filter::None,
        },
    );
    let rec = Head::seal_file_record(&h1.files[0].name, &bytes, &log, l, k).unwrap();
    let after = Log {
        end: log.end + rec.len() as u64,
        file_bytes: rec.len() as u64,
        ..log.clone()
    };
    let delta = h1.seal_delta(&h0, &after, l, k).unwrap().unwrap();
    let (fr, d) = (file.len(), file.len() + rec.len());
    file.extend_from_slice(&rec);
    file.extend_from_slice(&delta);
    assert_eq!(Head::open(&file, k).unwrap(), h1);
    (file, h0, h1, fr, d)
}

/// [`carried_append`] sized so that its delta starts `at` bytes into a 4 KiB page.
fn carried_append_with_delta_at(
    k: &Key,
    l: &Lineage,
    at: usize,
) -> (Vec<u8>, Head, Head, usize, usize) {
    let (_, _, _, _, d) = carried_append(k, l, 20_000);
    let n = 20_000 + (4096 + at - d % 4096) % 4096;
    let r = carried_append(k, l, n);
    assert_eq!(r.4 % 4096, at);
    r
}

/// An unacknowledged torn append is skipped: the log opens at the head before it.
fn opens_at(file: &[u8], k: &Key, before: &Head) {
    let r = Head::open_log(file, k);
    assert!(
        r.is_ok(),
        "a torn append makes HEAD unopenable: {:?}",
        r.err()
    );
    assert_eq!(r.unwrap().0, *before);
}

/// A power cut can persist an append's pages in any order (it spans many with a file
/// record). Unfinished, not damage: the first page (the old, partly filled last page of the
/// file, overwritten) never written, so the file record's *header* reads as zeros; the
/// delta straddling a page boundary with its first page (its header) zero; a page inside
/// the file record zero while the delta's page reached the disk.
#[test]
fn torn_appends_are_unfinished() {
    let (k, l) = (Key::generate().unwrap(), [7u8; 16]);
    let (mut file, h0, _, fr, _) = carried_append(&k, &l, 20_000);
    let page_end = (fr / 4096 + 1) * 4096;
    file[fr..page_end].fill(0);
    opens_at(&file, &k, &h0);

    let (mut file, h0, _, _, d) = carried_append_with_delta_at(&k, &l, 4096 - 100);
    assert!(file.len() > d + 100);
    file[d..d + 100].fill(0);
    opens_at(&file, &k, &h0);

    let (mut file, h0, _, fr, _) = carried_append(&k, &l, 20_000);
    let page = (fr / 4096 + 2) * 4096;
    file[page..page + 4096].fill(0);
    opens_at(&file, &k, &h0);
}

/// Damage in the middle of the log (one zeroed page spanning the end of an acknowledged
/// file record and its delta's header), with a later acknowledged delta after it, is
/// corruption: taken for an unfinished append, the later commit was dropped (and the next
/// append cut it off the file).
#[test]
fn a_zero_page_mid_log_is_damage_not_an_unfinished_append() {
    let (k, l) = (Key::generate().unwrap(), [7u8; 16]);
    // Delta starts 1000 bytes into a page: that page holds a whole sector of the record.
    let (mut file, _, h1, _, d) = carried_append_with_delta_at(&k, &l, 1000);
    let (_, log) = Head::open_log(&file, &k).unwrap();
    let mut h2 = h1.clone();
    h2.seq += 1;
    h2.docs += 1;
    let rec = h2.seal_delta(&h1, &log, &l, &k).unwrap().unwrap();
    file.extend_from_slice(&rec);
    assert_eq!(Head::open(&file, &k).unwrap(), h2);
    let page = d - 1000;
    file[page..page + 1008].fill(0); // the record's last 1000 bytes and the delta header
    let r = Head::open_log(&file, &k);
    assert!(
        r.is_err(),
        "mid-log damage read as an unfinished append: head {:?} (acknowledged seq {})",
        r.map(|(h, lg)| (h.seq, lg.end, lg.len)).ok(),
        h2.seq
    );
}
