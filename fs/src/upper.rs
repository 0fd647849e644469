//! The copy-on-write upper directory: thin wrappers over the path-based system calls
//! the union filesystem needs, and the on-disk conventions it follows.
//!
//! The layout is overlayfs's, so an upper directory survives remounts and other tools
//! (overlayfs, fuse-overlayfs, container image builders) can read it:
//! - a deleted lower entry is a whiteout: a character device 0/0 with the deleted name;
//! - a directory that hides everything below it has `trusted.overlay.opaque=y`.
//!
//! Two additions of Skiff's own, both in the `trusted.skiff.` namespace (hidden from
//! the mounted view, like `trusted.overlay.*`):
//! - [`USER_CHARDEV_XATTR`]: a character device 0/0 that a *user* created through the
//!   mount carries this xattr, so it is shown as a device and not taken for a whiteout
//!   (fuse-overlayfs cannot tell the two apart and fails pjdfstest's `::char` tests).
//!   Other overlay tools will still read it as a whiteout.
//! - [`ORIGIN_XATTR`]: a file or directory copied up from a lower layer records the
//!   lower inode number, so it keeps that inode number across remounts.
//!
//! Scratch files (copy-up in progress) live in [`WORK_DIR`] at the upper root, which is
//! hidden from the view; a crash leaves nothing half-copied under a real name.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Opaque-directory marker (overlayfs).
pub const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
/// Marks a user's own 0/0 character device (not a whiteout).
pub const USER_CHARDEV_XATTR: &str = "trusted.skiff.chardev";
/// Lower inode number a copied-up entry came from.
pub const ORIGIN_XATTR: &str = "trusted.skiff.origin";
/// Scratch directory at the upper root, hidden from the mounted view.
pub const WORK_DIR: &str = ".skiff-work";

/// Whether an xattr name is Skiff's or overlayfs's bookkeeping (never shown or set by users).
pub fn is_private_xattr(name: &[u8]) -> bool {
    name.starts_with(b"trusted.overlay.") || name.starts_with(b"trusted.skiff.")
}

fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn cstr(s: &[u8]) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn check(r: libc::c_int) -> io::Result<()> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `lstat(2)`.
pub fn lstat(p: &Path) -> io::Result<libc::stat> {
    let c = cpath(p)?;
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid C string and out-pointer.
    check(unsafe { libc::lstat(c.as_ptr(), &mut st) })?;
    Ok(st)
}

/// `lgetxattr(2)`: the value, or `None` if the attribute is absent.
pub fn get_xattr(p: &Path, name: &[u8]) -> io::Result<Option<Vec<u8>>> {
    let c = cpath(p)?;
    let n = cstr(name)?;
    let mut buf = vec![0u8; 256];
    loop {
        // SAFETY: buffer pointer and length match.
        let r =
            unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if r >= 0 {
            buf.truncate(r as usize);
            return Ok(Some(buf));
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ENODATA) => return Ok(None),
            Some(libc::ERANGE) if buf.len() < (1 << 20) => buf.resize(buf.len() * 4, 0),
            _ => return Err(e),
        }
    }
}

/// `lsetxattr(2)` with `flags` (`XATTR_CREATE`/`XATTR_REPLACE`).
pub fn set_xattr(p: &Path, name: &[u8], value: &[u8], flags: i32) -> io::Result<()> {
    let c = cpath(p)?;
    let n = cstr(name)?;
    // SAFETY: valid pointers and lengths.
    check(unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    })
}

/// `lremovexattr(2)`.
pub fn remove_xattr(p: &Path, name: &[u8]) -> io::Result<()> {
    let c = cpath(p)?;
    let n = cstr(name)?;
    // SAFETY: valid C strings.
    check(unsafe { libc::lremovexattr(c.as_ptr(), n.as_ptr()) })
}

/// `llistxattr(2)`: attribute names.
pub fn list_xattrs(p: &Path) -> io::Result<Vec<Vec<u8>>> {
    let c = cpath(p)?;
    // SAFETY: a null buffer asks for the size.
    let size = unsafe { libc::llistxattr(c.as_ptr(), std::ptr::null_mut(), 0) };
    if size < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = vec![0u8; size as usize + 256];
    // SAFETY: buffer pointer and length match.
    let r = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(r as usize);
    Ok(buf
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(<[u8]>::to_vec)
        .collect())
}

/// Whether the upper entry at `p` (with stat `st`) is a whiteout.
pub fn is_whiteout(p: &Path, st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFCHR
        && st.st_rdev == 0
        && !matches!(get_xattr(p, USER_CHARDEV_XATTR.as_bytes()), Ok(Some(_)))
}

/// Whether the upper directory `p` is opaque.
pub fn is_opaque(p: &Path) -> bool {
    matches!(get_xattr(p, OPAQUE_XATTR.as_bytes()), Ok(Some(v)) if v == b"y")
}

/// Marks the upper directory `p` opaque.
pub fn set_opaque(p: &Path) -> io::Result<()> {
    set_xattr(p, OPAQUE_XATTR.as_bytes(), b"y", 0)
}

/// Creates a whiteout at `p`.
pub fn make_whiteout(p: &Path) -> io::Result<()> {
    mknod(p, libc::S_IFCHR, 0)
}

/// `mknod(2)` with the full `mode` (type and permission bits).
pub fn mknod(p: &Path, mode: u32, rdev: u64) -> io::Result<()> {
    let c = cpath(p)?;
    // SAFETY: valid C string.
    check(unsafe { libc::mknod(c.as_ptr(), mode, rdev) })
}

/// `mkdir(2)`.
pub fn mkdir(p: &Path, mode: u32) -> io::Result<()> {
    let c = cpath(p)?;
    // SAFETY: valid C string.
    check(unsafe { libc::mkdir(c.as_ptr(), mode) })
}

/// `symlink(2)`: creates `p` pointing at `target`.
pub fn symlink(target: &OsStr, p: &Path) -> io::Result<()> {
    let c = cpath(p)?;
    let t = cstr(target.as_bytes())?;
    // SAFETY: valid C strings.
    check(unsafe { libc::symlink(t.as_ptr(), c.as_ptr()) })
}

/// `lchown(2)`; `u32::MAX` leaves an id unchanged.
pub fn lchown(p: &Path, uid: u32, gid: u32) -> io::Result<()> {
    let c = cpath(p)?;
    // SAFETY: valid C string.
    check(unsafe { libc::lchown(c.as_ptr(), uid, gid) })
}

/// `chmod(2)` (never called on symlinks).
pub fn chmod(p: &Path, mode: u32) -> io::Result<()> {
    let c = cpath(p)?;
    // SAFETY: valid C string.
    check(unsafe { libc::chmod(c.as_ptr(), mode) })
}

/// `utimensat(2)` without following symlinks. `None` leaves a time unchanged;
/// `Some(None)` sets it to now.
pub fn set_times(
    p: &Path,
    atime: Option<Option<libc::timespec>>,
    mtime: Option<Option<libc::timespec>>,
) -> io::Result<()> {
    let c = cpath(p)?;
    let conv = |t: Option<Option<libc::timespec>>| match t {
        None => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        Some(None) => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        Some(Some(ts)) => ts,
    };
    let times = [conv(atime), conv(mtime)];
    // SAFETY: valid C string and a two-element array.
    check(unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
}

/// `renameat2(2)` with `flags`.
pub fn rename(from: &Path, to: &Path, flags: u32) -> io::Result<()> {
    let f = cpath(from)?;
    let t = cpath(to)?;
    // SAFETY: valid C strings.
    check(unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            f.as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            flags,
        )
    })
}

/// `link(2)`.
pub fn link(from: &Path, to: &Path) -> io::Result<()> {
    let f = cpath(from)?;
    let t = cpath(to)?;
    // SAFETY: valid C strings.
    check(unsafe { libc::link(f.as_ptr(), t.as_ptr()) })
}

/// `truncate(2)`.
pub fn truncate(p: &Path, size: u64) -> io::Result<()> {
    let c = cpath(p)?;
    let size = i64::try_from(size).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
    // SAFETY: valid C string.
    check(unsafe { libc::truncate(c.as_ptr(), size) })
}

/// Removes every whiteout directly inside the upper directory `dir` (before removing
/// or replacing a directory that is empty in the merged view).
pub fn clear_whiteouts(dir: &Path) -> io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let p = e.path();
        if let Ok(st) = lstat(&p) {
            if is_whiteout(&p, &st) {
                std::fs::remove_file(&p)?;
            }
        }
    }
    Ok(())
}

thread_local! {
    /// Which upper root (an id chosen by the caller) this thread's working directory
    /// is; 0: the thread still shares the process's working directory.
    static THREAD_ROOT: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Makes the calling thread's working directory the upper root `root` (an open
/// directory; `id` names it, non-zero), so every upper path can be relative to it.
///
/// Why: relative paths stay as short as the paths users see, so paths near
/// `PATH_MAX` keep working (absolute upper paths would be longer than the kernel
/// takes). The working directory is per process, so the first call on a thread
/// gives that thread its own with `unshare(CLONE_FS)` (FUSE threads never share one
/// again); later calls for the same root do nothing.
pub fn enter_root(root: &std::fs::File, id: usize) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    THREAD_ROOT.with(|cur| {
        if cur.get() == id {
            return Ok(());
        }
        if cur.get() == 0 {
            // SAFETY: only affects this thread's fs context.
            check(unsafe { libc::unshare(libc::CLONE_FS) })?;
        }
        // SAFETY: a valid directory fd.
        check(unsafe { libc::fchdir(root.as_raw_fd()) })?;
        cur.set(id);
        Ok(())
    })
}
