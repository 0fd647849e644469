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
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
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

/// The upper entry `p` itself, never what a symlink at `p` (or in a parent of it)
/// points to, as an `O_PATH` descriptor, with its `lstat`.
///
/// Why: a container owns the upper directory's content, so any name in it may be a
/// symlink to a host path; path calls that follow the last component (`chmod(2)`,
/// `truncate(2)`) would change the host file. `openat2` with `RESOLVE_NO_SYMLINKS`
/// (and `RESOLVE_BENEATH` for the relative paths the filesystem uses, see
/// [`enter_root`]) also keeps a symlinked parent from leading out of the upper root.
fn open_node(p: &Path) -> io::Result<(OwnedFd, libc::stat)> {
    let c = cpath(p)?;
    // SAFETY: all-zero is a valid `open_how`.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC) as u64;
    how.resolve = if p.is_absolute() {
        libc::RESOLVE_NO_SYMLINKS
    } else {
        libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS
    };
    // SAFETY: valid C string and a properly sized `open_how`.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            libc::AT_FDCWD,
            c.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor we just opened and now own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) };
    // SAFETY: all-zero is a valid `stat`.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid descriptor and out-pointer.
    check(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) })?;
    Ok((fd, st))
}

/// `/proc/self/fd/N` of `fd`: a path naming exactly the inode `fd` holds (for an
/// `O_PATH` symlink descriptor the symlink's own inode, never its target).
fn fd_path(fd: &OwnedFd) -> CString {
    CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).expect("a number has no NUL")
}

/// Changes the owner of `p` itself (never a symlink's target); `u32::MAX` leaves an
/// id unchanged.
pub fn lchown(p: &Path, uid: u32, gid: u32) -> io::Result<()> {
    let (fd, _) = open_node(p)?;
    let empty = cstr(b"")?;
    // SAFETY: a valid descriptor and an empty path with AT_EMPTY_PATH.
    check(unsafe {
        libc::fchownat(
            fd.as_raw_fd(),
            empty.as_ptr(),
            uid,
            gid,
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    })
}

/// Whether `chmod` may change an entry of type `st_mode`: a symlink's mode cannot be
/// changed (`EOPNOTSUPP`, as overlayfs and `fchmodat2(AT_SYMLINK_NOFOLLOW)` answer),
/// and "changing the symlink" must never reach what it points to.
pub fn chmod_allowed(st_mode: u32) -> io::Result<()> {
    if st_mode & libc::S_IFMT == libc::S_IFLNK {
        return Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP));
    }
    Ok(())
}

/// Whether `truncate` may change an entry of type `st_mode`: regular files only,
/// with `truncate(2)`'s errors for the rest.
pub fn truncate_allowed(st_mode: u32) -> io::Result<()> {
    match st_mode & libc::S_IFMT {
        libc::S_IFREG => Ok(()),
        libc::S_IFDIR => Err(io::Error::from_raw_os_error(libc::EISDIR)),
        _ => Err(io::Error::from_raw_os_error(libc::EINVAL)),
    }
}

/// Changes the mode of `p` itself: `EOPNOTSUPP` for a symlink (never its target).
pub fn chmod(p: &Path, mode: u32) -> io::Result<()> {
    let (fd, st) = open_node(p)?;
    chmod_allowed(st.st_mode)?;
    let c = fd_path(&fd);
    // SAFETY: valid C string naming exactly the opened (non-symlink) inode.
    check(unsafe { libc::chmod(c.as_ptr(), mode) })
}

/// `utimensat(2)` without following symlinks. `None` leaves a time unchanged;
/// `Some(None)` sets it to now.
pub fn set_times(
    p: &Path,
    atime: Option<Option<libc::timespec>>,
    mtime: Option<Option<libc::timespec>>,
) -> io::Result<()> {
    let (fd, _) = open_node(p)?;
    let c = fd_path(&fd);
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
    // SAFETY: valid C string and a two-element array. The magic link resolves to the
    // opened inode itself (a symlink's own), never a symlink's target.
    check(unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), 0) })
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

/// Truncates the regular file `p` itself (a symlink at `p` is `EINVAL`, its target is
/// never touched).
pub fn truncate(p: &Path, size: u64) -> io::Result<()> {
    let size = i64::try_from(size).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
    let (fd, st) = open_node(p)?;
    truncate_allowed(st.st_mode)?;
    let c = fd_path(&fd);
    // SAFETY: valid C string naming exactly the opened regular file.
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

/// Removes what a previous mount left in the work directory of upper root `root`
/// (copy-up scratch of a crash: never renamed into place, so never part of the view).
/// One mount uses an upper directory at a time, so nothing in it is in use now.
pub fn clear_work_dir(root: &Path) -> io::Result<()> {
    for e in std::fs::read_dir(root.join(WORK_DIR))? {
        let e = e?;
        // `file_type` does not follow symlinks, and neither does `remove_dir_all`.
        let res = if e.file_type()?.is_dir() {
            std::fs::remove_dir_all(e.path())
        } else {
            std::fs::remove_file(e.path())
        };
        if let Err(err) = res {
            tracing::warn!(path = %e.path().display(), error = %err, "cannot remove copy-up scratch");
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    /// Mode, owner, size, mtime and content of a file.
    fn state(p: &Path) -> (u32, u32, u32, u64, i64, Vec<u8>) {
        let md = std::fs::metadata(p).unwrap();
        let content = std::fs::read(p).unwrap();
        (
            md.mode(),
            md.uid(),
            md.gid(),
            md.size(),
            md.mtime(),
            content,
        )
    }

    // The FUSE `setattr` of a symlink's own inode reaches these calls with the
    // symlink's upper path (kernels before 6.6 let `chmod("/proc/self/fd/N")` of an
    // O_PATH symlink through; newer ones refuse it before FUSE, so the decision is
    // tested here directly).
    #[test]
    fn setattr_calls_on_a_symlink_never_reach_its_target() {
        let tmp = tempfile::tempdir().unwrap();
        let host = tmp.path().join("host");
        std::fs::write(&host, b"host").unwrap();
        std::fs::set_permissions(&host, std::fs::Permissions::from_mode(0o644)).unwrap();
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&host, &link).unwrap();
        let before = state(&host);

        let e = chmod(&link, 0o4777).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EOPNOTSUPP));
        let e = truncate(&link, 0).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
        lchown(&link, 4321, 4321).unwrap();
        let t = libc::timespec {
            tv_sec: 12345,
            tv_nsec: 0,
        };
        set_times(&link, Some(Some(t)), Some(Some(t))).unwrap();
        assert_eq!(state(&host), before);
        // The link itself got the owner and times.
        let lmd = std::fs::symlink_metadata(&link).unwrap();
        assert_eq!((lmd.uid(), lmd.gid(), lmd.mtime()), (4321, 4321, 12345));
    }

    #[test]
    fn a_symlinked_parent_is_not_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("f"), b"outside").unwrap();
        std::fs::set_permissions(outside.join("f"), std::fs::Permissions::from_mode(0o644))
            .unwrap();
        std::os::unix::fs::symlink(&outside, tmp.path().join("dir")).unwrap();
        let through = tmp.path().join("dir/f");
        assert_eq!(
            chmod(&through, 0o777).unwrap_err().raw_os_error(),
            Some(libc::ELOOP)
        );
        assert!(truncate(&through, 0).is_err());
        assert_eq!(std::fs::read(outside.join("f")).unwrap(), b"outside");
        let mode = std::fs::metadata(outside.join("f")).unwrap().mode();
        assert_eq!(mode & 0o7777, 0o644);
    }

    #[test]
    fn regular_files_still_change() {
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("f");
        std::fs::write(&f, b"12345").unwrap();
        chmod(&f, 0o4755).unwrap();
        truncate(&f, 2).unwrap();
        assert_eq!(std::fs::metadata(&f).unwrap().mode() & 0o7777, 0o4755);
        assert_eq!(std::fs::read(&f).unwrap(), b"12");
    }
}
