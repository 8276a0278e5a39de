//! File-system steps the local backend is made of: atomic replacement, directory syncs,
//! no-replace renames and exchanges.

use super::*;

/// Flushes a file and the folder holding its name. They are independent, so side by side on
/// the helper thread (~5% off a fully durable commit here; each flush is ~100-300 µs).
pub(crate) fn sync_with_folder(f: &File, folder: &Path) -> io::Result<()> {
    let (file, dir) = crate::util::par::join_io(|| f.sync_all(), || sync_dir(folder));
    file?;
    dir
}

pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Flushes everything written to the file system holding `path` (`syncfs(2)`): every file,
/// rename and unlink made before reaches the disk.
#[cfg(target_os = "linux")]
pub fn sync_file_system(path: &Path) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let f = File::open(path)?;
    // SAFETY: `f` is an open descriptor for the duration of the call.
    if unsafe { libc::syncfs(f.as_raw_fd()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether one [`sync_file_system`] of the file system holding `path` makes what was written
/// there durable as an fsync of each file would: only on local disk file systems known to
/// flush that way (ext4, xfs, btrfs, f2fs, tmpfs). Not on network or stacked ones (NFS, SMB,
/// FUSE, ecryptfs), where `syncfs` may not send what fsync sends, nor elsewhere than Linux.
#[cfg(target_os = "linux")]
pub fn syncfs_covers(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    const KNOWN: [i64; 5] = [
        0xEF53,      // ext2/3/4
        0x5846_5342, // xfs
        0x9123_683E, // btrfs
        0xF2F5_2010, // f2fs
        0x0102_1994, // tmpfs
    ];
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: a NUL-terminated path and a zeroed statfs for the call to fill.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return false;
    }
    #[allow(clippy::unnecessary_cast)] // f_type's width differs between targets
    KNOWN.contains(&(st.f_type as i64))
}

/// Whether one [`sync_file_system`] covers what was written under `path`: never elsewhere
/// than Linux (files are flushed one by one there).
#[cfg(not(target_os = "linux"))]
pub fn syncfs_covers(_path: &Path) -> bool {
    false
}

/// Flushes everything written (elsewhere than Linux, where one file system cannot be asked
/// alone: `sync(2)`, which also waits for the writes to be done on the systems kiln runs on).
#[cfg(not(target_os = "linux"))]
pub fn sync_file_system(path: &Path) -> io::Result<()> {
    File::open(path)?;
    // SAFETY: no arguments, no memory.
    unsafe { libc::sync() };
    Ok(())
}

/// Replaces `path` atomically with `bytes`: write a temporary file beside it, (fsync), rename
/// over, (fsync the directory). A reader sees the old or the new contents, never a mix.
pub fn write_atomic(path: &Path, bytes: &[u8], sync: bool, mode: Option<u32>) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::other("path has no parent"))?;
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let mut o = OpenOptions::new();
    o.write(true).create(true).truncate(true);
    if let Some(m) = mode {
        o.mode(m);
    }
    let mut f = o.open(&tmp)?;
    f.write_all(bytes)?;
    if sync {
        f.sync_all()?;
    }
    drop(f);
    fs::rename(&tmp, path)?;
    if sync {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Replaces `path` with `bytes` without allocating an inode: `spare` (created on first use) is
/// rewritten in place, (fsynced), then swapped with `path` by `renameat2(RENAME_EXCHANGE)`, so
/// `path` names the new contents and `spare` the old, ready for the next write. A reader that
/// opens `path` sees the old or the new file whole; a reader still holding the old file after
/// the swap may see it rewritten by the *next* replacement, so callers detect that (kiln's
/// commit counter) and re-read. Falls back to a plain rename where the exchange is unsupported.
///
/// Why: creating and deleting a file per commit makes ext4 without a journal scan its
/// "recently deleted" inodes on every create, which dominated commit time.
pub fn replace_via_spare(path: &Path, spare: &Path, bytes: &[u8], sync: bool) -> io::Result<()> {
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(spare)?;
    f.write_all_at(bytes, 0)?;
    f.set_len(bytes.len() as u64)?;
    if sync {
        f.sync_all()?;
    }
    drop(f);
    if !exchange(path, spare)? {
        fs::rename(spare, path)?;
    }
    if sync {
        sync_dir(
            path.parent()
                .ok_or_else(|| io::Error::other("path has no parent"))?,
        )?;
    }
    Ok(())
}

/// `renameat2(from, to, flags)` relative to the working directory.
#[cfg(target_os = "linux")]
pub(crate) fn renameat2(from: &Path, to: &Path, flags: libc::c_uint) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let cf = std::ffi::CString::new(from.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let ct = std::ffi::CString::new(to.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: both pointers are valid NUL-terminated strings that outlive the call; the call
    // reads them and touches no other memory of ours.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            cf.as_ptr(),
            libc::AT_FDCWD,
            ct.as_ptr(),
            flags,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether a `renameat2` error means "not available here" (old kernel or file system).
#[cfg(target_os = "linux")]
pub(crate) fn unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL) | Some(libc::ENOSYS) | Some(libc::EOPNOTSUPP)
    )
}

/// Renames `from` to `to`, failing with `AlreadyExists` if `to` exists.
#[cfg(target_os = "linux")]
pub(crate) fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    match renameat2(from, to, libc::RENAME_NOREPLACE) {
        Err(e) if unsupported(&e) => rename_noreplace_fallback(from, to),
        r => r,
    }
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    rename_noreplace_fallback(from, to)
}

/// Where the kernel cannot refuse atomically: check, then rename (callers hold names that are
/// content hashes, so a lost race overwrites a file with the same bytes).
pub(crate) fn rename_noreplace_fallback(from: &Path, to: &Path) -> io::Result<()> {
    if to.exists() {
        return Err(io::ErrorKind::AlreadyExists.into());
    }
    fs::rename(from, to)
}

/// Atomically swaps two paths; `Ok(false)` when the platform or file system cannot.
#[cfg(target_os = "linux")]
pub(crate) fn exchange(a: &Path, b: &Path) -> io::Result<bool> {
    match renameat2(a, b, libc::RENAME_EXCHANGE) {
        Ok(()) => Ok(true),
        // Not supported here, or `a` does not exist yet: the caller renames instead.
        Err(e) if unsupported(&e) || e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn exchange(_: &Path, _: &Path) -> io::Result<bool> {
    Ok(false)
}
