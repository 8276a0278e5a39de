//! Tests of the local backend.

use super::*;

#[test]
fn head_file_keeps_files_open_and_stays_exact() {
    let d = tempfile::tempdir().unwrap();
    let (p, sp) = (d.path().join("HEAD"), d.path().join("HEAD.next"));
    let mut h = HeadFile::new(p.clone(), sp.clone());
    // First write: no HEAD yet.
    h.replace(b"first version, long", false, false).unwrap();
    assert_eq!(fs::read(&p).unwrap(), b"first version, long");
    // Lengths go up and down; each read sees exactly the last bytes.
    for i in 0..40usize {
        let body = vec![b'a' + (i % 26) as u8; 1 + (i * 7919) % 97];
        h.replace(&body, i % 5 == 0, i % 3 != 0).unwrap();
        assert_eq!(fs::read(&p).unwrap(), body, "write {i}");
        if i % 9 == 4 {
            // Another writer replaces the file: this handle is told not to trust its cache.
            replace_via_spare(&p, &sp, b"other writer", false).unwrap();
            assert_eq!(fs::read(&p).unwrap(), b"other writer");
            h.forget();
        }
    }
}

#[test]
fn replace_via_spare_swaps_without_new_inodes() {
    use std::os::unix::fs::MetadataExt;
    let d = tempfile::tempdir().unwrap();
    let (p, sp) = (d.path().join("HEAD"), d.path().join("HEAD.next"));
    write_atomic(&p, b"first version", true, None).unwrap();
    replace_via_spare(&p, &sp, b"second", true).unwrap();
    assert_eq!(fs::read(&p).unwrap(), b"second");
    let inodes = [
        fs::metadata(&p).unwrap().ino(),
        fs::metadata(&sp).unwrap().ino(),
    ];
    for i in 0..5u8 {
        let body = vec![b'a' + i; 3 + i as usize];
        replace_via_spare(&p, &sp, &body, false).unwrap();
        assert_eq!(fs::read(&p).unwrap(), body);
    }
    let mut now = [
        fs::metadata(&p).unwrap().ino(),
        fs::metadata(&sp).unwrap().ino(),
    ];
    let mut before = inodes;
    now.sort();
    before.sort();
    assert_eq!(now, before, "the two inodes are reused");
}

#[test]
fn pending_files_are_named_when_whole_and_leave_nothing_behind() {
    let d = tempfile::tempdir().unwrap();
    let s = LocalStorage::new(d.path().join("files"));
    s.create_shards().unwrap();
    let tmp_empty = || fs::read_dir(d.path().join("files/.tmp")).unwrap().count() == 0;
    // Parts in any order; named once whole.
    let p = s.begin().unwrap();
    p.write_at(b"world", 5).unwrap();
    p.write_at(b"hello", 0).unwrap();
    let name = FileName::of(b"helloworld");
    s.finish(p, &name, 10, true).unwrap();
    assert_eq!(s.read(&name).unwrap(), b"helloworld");
    assert!(tmp_empty());
    // A reused file longer than the new one is cut to its length: a pooled one…
    let long = FileName::of(&[7u8; 20_000]);
    s.put(&long, &[7u8; 20_000], false).unwrap();
    s.remove(&long).unwrap();
    let p = s.begin().unwrap();
    p.write_at(b"short", 0).unwrap();
    let short = FileName::of(b"short");
    s.finish(p, &short, 5, false).unwrap();
    assert_eq!(s.read(&short).unwrap(), b"short");
    // …or a spare (retired, still under its name until reused).
    s.retire(&name).unwrap();
    let p = s.begin().unwrap();
    p.write_at(b"x", 0).unwrap();
    let x = FileName::of(b"x");
    s.finish(p, &x, 1, false).unwrap();
    assert_eq!(s.read(&x).unwrap(), b"x");
    assert!(s.read(&name).is_err(), "the spare was taken");
    assert_eq!(s.read(&short).unwrap(), b"short");
    // A pending file never named is removed.
    let p = s.begin().unwrap();
    p.write_at(b"abandoned", 0).unwrap();
    drop(p);
    assert!(tmp_empty());
    let mut names = s.list().unwrap();
    names.sort();
    let mut want = vec![short, x];
    want.sort();
    assert_eq!(names, want);
}

#[test]
fn put_read_list_remove() {
    let d = tempfile::tempdir().unwrap();
    let s = LocalStorage::new(d.path().join("files"));
    let name = FileName::of(b"hello");
    s.put(&name, b"hello", true).unwrap();
    s.put(&name, b"hello", true).unwrap();
    assert_eq!(s.read_at(&name, 1, 3).unwrap(), b"ell");
    assert_eq!(s.len(&name).unwrap(), 5);
    assert_eq!(s.list().unwrap(), vec![name]);
    assert!(s.read_at(&name, 4, 3).is_err());
    s.remove(&name).unwrap();
    s.remove(&name).unwrap();
    assert_eq!(s.read(&name).unwrap_err().kind(), io::ErrorKind::NotFound);
    assert!(s.list().unwrap().is_empty());
    // The removed file's inode is reused, with exactly the new bytes.
    use std::os::unix::fs::MetadataExt;
    let pooled = fs::read_dir(d.path().join("files/.pool"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let ino = fs::metadata(&pooled).unwrap().ino();
    let other = FileName::of(b"hi");
    s.put(&other, b"hi", false).unwrap();
    assert_eq!(fs::metadata(s.path(&other)).unwrap().ino(), ino);
    assert_eq!(s.read(&other).unwrap(), b"hi");
    assert_eq!(s.list().unwrap(), vec![other]);
    // A second store handle (another process) finds pooled files by listing the pool.
    s.remove(&other).unwrap();
    let s2 = LocalStorage::new(d.path().join("files"));
    s2.put(&name, b"hello", true).unwrap();
    assert_eq!(fs::metadata(s2.path(&name)).unwrap().ino(), ino);
    assert_eq!(s2.read(&name).unwrap(), b"hello");
}

/// A crash can leave a renamed file under its old name too (the old folder not fsynced):
/// removing the old name, as gc does for an unreferenced file, must not empty the file the
/// new name holds, however large.
#[test]
fn removing_a_second_name_leaves_the_file_whole() {
    let d = tempfile::tempdir().unwrap();
    let s = LocalStorage::new(d.path().join("files"));
    s.create_shards().unwrap();
    let big = vec![5u8; 100_000];
    let live = FileName::of(&big);
    s.put(&live, &big, false).unwrap();
    let stale = FileName::of(b"stale name");
    fs::hard_link(s.path(&live), s.path(&stale)).unwrap();
    s.remove(&stale).unwrap();
    assert!(!s.path(&stale).exists());
    assert_eq!(s.read(&live).unwrap(), big);
    // And a retired large file is not kept as a spare (it goes to the pool, emptied).
    s.retire(&live).unwrap();
    assert!(!s.path(&live).exists());
}

/// Storing a name that is one of this process's spares makes it live again: the next put
/// must not take it.
#[test]
fn a_spare_stored_again_is_not_reused() {
    let d = tempfile::tempdir().unwrap();
    let s = LocalStorage::new(d.path().join("files"));
    s.create_shards().unwrap();
    let a = FileName::of(b"aaaa");
    s.put(&a, b"aaaa", false).unwrap();
    s.retire(&a).unwrap();
    s.put(&a, b"aaaa", false).unwrap();
    let b = FileName::of(b"bbbb");
    s.put(&b, b"bbbb", false).unwrap();
    assert_eq!(s.read(&a).unwrap(), b"aaaa");
    assert_eq!(s.read(&b).unwrap(), b"bbbb");
    assert_eq!(s.list().unwrap().len(), 2);
}

/// With a reserve, a put that finds the pool low starts a thread that fills it with empty
/// files; later puts take those inodes instead of allocating new ones.
#[test]
fn a_reserve_of_empty_files_is_kept_in_the_pool() {
    use std::os::unix::fs::MetadataExt;
    let d = tempfile::tempdir().unwrap();
    let s = LocalStorage::with_reserve(d.path().join("files"), 8);
    s.create_shards().unwrap();
    let pool = d.path().join("files/.pool");
    let first = FileName::of(b"first");
    s.put(&first, b"first", false).unwrap();
    let t = std::time::Instant::now();
    let inodes = loop {
        let v: Vec<u64> = fs::read_dir(&pool)
            .map(|r| r.map(|e| e.unwrap().metadata().unwrap().ino()).collect())
            .unwrap_or_default();
        if v.len() == 8 || t.elapsed() > std::time::Duration::from_secs(10) {
            break v;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    assert_eq!(inodes.len(), 8);
    // Empty, so no stored byte is in them.
    assert!(fs::read_dir(&pool)
        .unwrap()
        .all(|e| e.unwrap().metadata().unwrap().len() == 0));
    let next = FileName::of(b"next");
    s.put(&next, b"next", false).unwrap();
    assert!(inodes.contains(&fs::metadata(s.path(&next)).unwrap().ino()));
    assert_eq!(s.read(&next).unwrap(), b"next");
    // gc's clear_reusable keeps them: they hold no byte (it used to delete them, and
    // the next puts created them all again).
    drop(s);
    let s = LocalStorage::new(d.path().join("files"));
    assert_eq!(s.clear_reusable().unwrap(), (0, 0));
    assert_eq!(fs::read_dir(&pool).unwrap().count(), 7);
    // A pooled file with bytes goes.
    fs::write(pool.join("x.free"), b"sealed bytes").unwrap();
    assert_eq!(s.clear_reusable().unwrap(), (1, 12));
    assert_eq!(fs::read_dir(&pool).unwrap().count(), 7);
}

/// Retired files wait under their names (not listed) and are renamed straight to the next
/// file's name; a dropped handle gives them to the pool; `clear_reusable` deletes them.
#[test]
fn retired_files_are_reused_in_place() {
    use std::os::unix::fs::MetadataExt;
    let d = tempfile::tempdir().unwrap();
    let s = LocalStorage::new(d.path().join("files"));
    s.create_shards().unwrap();
    let pool = d.path().join("files/.pool");
    let in_pool = || fs::read_dir(&pool).map(|r| r.count()).unwrap_or(0);
    let long = vec![7u8; 300];
    let a = FileName::of(&long);
    s.put(&a, &long, false).unwrap();
    let ino = fs::metadata(s.path(&a)).unwrap().ino();
    s.retire(&a).unwrap();
    // Still there under its name (a reader holding the old head reads it whole)...
    assert_eq!(fs::read(s.path(&a)).unwrap(), long);
    // ...but not a file any more for this handle, and not in the pool.
    assert!(s.list().unwrap().is_empty());
    assert_eq!(in_pool(), 0);
    // The next put renames it to its own name and holds exactly the new (shorter) bytes.
    let b = FileName::of(b"short");
    s.put(&b, b"short", false).unwrap();
    assert_eq!(fs::metadata(s.path(&b)).unwrap().ino(), ino);
    assert!(!s.path(&a).exists());
    assert_eq!(s.read(&b).unwrap(), b"short");
    assert_eq!(s.read_at(&b, 1, 3).unwrap(), b"hor");
    assert_eq!(s.list().unwrap(), vec![b]);
    // A compaction's streamed output reuses one too.
    s.retire(&b).unwrap();
    let c = s
        .put_with(false, &mut |w| {
            w.write_all(b"streamed")?;
            Ok(FileName::of(b"streamed"))
        })
        .unwrap();
    assert_eq!(fs::metadata(s.path(&c)).unwrap().ino(), ino);
    assert_eq!(s.read(&c).unwrap(), b"streamed");
    // Putting a name that is already there writes nothing and takes no spare.
    s.retire(&c).unwrap();
    s.put(&a, &long, false).unwrap();
    s.put(&a, &long, false).unwrap();
    assert_eq!(s.list().unwrap(), vec![a]);
    assert_eq!(fs::metadata(s.path(&a)).unwrap().ino(), ino);
    // Dropping the handle moves its spares into the pool: their names are gone.
    s.retire(&a).unwrap();
    let path_a = s.path(&a);
    drop(s);
    assert!(!path_a.exists());
    assert_eq!(in_pool(), 1);
    // clear_reusable deletes spares and pooled files with their bytes.
    let s = LocalStorage::new(d.path().join("files"));
    s.put(&b, b"short", false).unwrap(); // takes the pooled one
    assert_eq!(in_pool(), 0);
    s.put(&a, &long, false).unwrap(); // a new file
    s.retire(&b).unwrap();
    s.remove(&a).unwrap(); // into the pool
    assert!(s.path(&b).exists());
    assert_eq!(in_pool(), 1);
    let (n, bytes) = s.clear_reusable().unwrap();
    assert_eq!((n, bytes), (2, 300 + 5));
    assert!(!s.path(&b).exists());
    assert_eq!(in_pool(), 0);
}
