//! A read-only handle on skiff's own executable, for the container's setup to execute
//! (the defence against CVE-2019-5736).
//!
//! The setup process ([`super::reexec`]) runs skiff's binary inside the container's
//! namespaces, and its last act is to execute the container's program. If that program
//! is a `#!/proc/self/exe` script, the kernel runs the *setup process's* executable as
//! the container's process, so a process in the container can open that file through
//! `/proc/<pid>/exe`, wait for it to exit and then write the host's skiff binary. The
//! same window exists while `skiff exec` sets a process up in a running container.
//!
//! The setup therefore never executes the host file itself but a handle on it that
//! cannot be opened for writing, made once per skiff process:
//! 1. a detached, read-only overlayfs mount whose top lower layer is the directory of
//!    the binary (runc's approach): opened through it, the binary is the same page
//!    cache, costs one mount, and any open for writing fails with `EROFS`; the mount is
//!    attached nowhere, so no process can remount it writable;
//! 2. if overlayfs is not available: a sealed memfd copy (write, grow, shrink and
//!    further seals forbidden), which costs a copy of the binary.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// How the handle was made (for logs and tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Opened through a detached read-only overlayfs mount.
    Overlay,
    /// A sealed memfd copy.
    Memfd,
}

/// A handle on skiff's executable that nothing can write through.
#[derive(Debug)]
pub struct SealedExe {
    /// `O_PATH` (overlay) or read-only (memfd), close-on-exec.
    pub fd: OwnedFd,
    /// How it was made.
    pub kind: Kind,
}

/// The process's sealed executable, made on first use. An error is kept too: a skiff
/// that cannot make one refuses to start containers rather than exposing its binary.
pub fn get() -> Result<&'static SealedExe, &'static io::Error> {
    static SEALED: OnceLock<Result<SealedExe, io::Error>> = OnceLock::new();
    SEALED
        .get_or_init(|| {
            let exe = std::fs::read_link("/proc/self/exe")?;
            let sealed = make(&exe)?;
            tracing::debug!(exe = %exe.display(), kind = ?sealed.kind, "sealed skiff's binary for container setups");
            Ok(sealed)
        })
        .as_ref()
}

/// Makes a sealed handle on the executable at `exe`: overlay first, memfd if that fails.
pub fn make(exe: &Path) -> io::Result<SealedExe> {
    match through_overlay(exe) {
        Ok(fd) => Ok(SealedExe {
            fd,
            kind: Kind::Overlay,
        }),
        Err(e) => {
            tracing::debug!(exe = %exe.display(), "read-only overlay of skiff's binary failed ({e}); copying it to a sealed memfd");
            Ok(SealedExe {
                fd: sealed_copy(exe)?,
                kind: Kind::Memfd,
            })
        }
    }
}

/// Opens `exe` through a detached overlayfs mount of its directory with no upper layer.
/// Overlayfs needs two lower layers to mount without an upper one; the second is an
/// empty directory made for the purpose and removed again once the mount holds it.
fn through_overlay(exe: &Path) -> io::Result<OwnedFd> {
    let (Some(dir), Some(name)) = (exe.parent(), exe.file_name()) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("no directory and name in {}", exe.display()),
        ));
    };
    let parent = scratch_parent(dir, &scratch_candidates()).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "no directory outside {} for overlayfs's empty layer",
                dir.display()
            ),
        )
    })?;
    let empty = EmptyDir::new(&parent)?;
    let lowerdir = format!("{}:{}", escape_lowerdir(dir), escape_lowerdir(&empty.path));
    let context = fsopen(c"overlay")?;
    fsconfig_string(&context, c"lowerdir", &lowerdir)?;
    // Inode numbers do not matter here; xino would only log about differing filesystems.
    let _ = fsconfig_string(&context, c"xino", "off");
    fsconfig_create(&context)?;
    let mount = fsmount(
        &context,
        libc::MOUNT_ATTR_RDONLY | libc::MOUNT_ATTR_NODEV | libc::MOUNT_ATTR_NOSUID,
    )?;
    let name = CString::new(name.as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in skiff's file name"))?;
    // SAFETY: openat on a descriptor we own with a NUL-terminated name.
    let fd = unsafe {
        libc::openat(
            mount.as_raw_fd(),
            name.as_ptr(),
            libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: openat returned a new descriptor we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Copies `exe` into a memfd and seals it against every change.
fn sealed_copy(exe: &Path) -> io::Result<OwnedFd> {
    use nix::fcntl::{fcntl, FcntlArg, SealFlag};
    use nix::sys::memfd::{memfd_create, MFdFlags};
    let memfd = memfd_create(
        c"skiff",
        MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
    )?;
    let mut source = std::fs::File::open(exe)?;
    let mut target = std::fs::File::from(memfd);
    io::copy(&mut source, &mut target)?;
    let seals = SealFlag::F_SEAL_SEAL
        | SealFlag::F_SEAL_SHRINK
        | SealFlag::F_SEAL_GROW
        | SealFlag::F_SEAL_WRITE;
    fcntl(&target, FcntlArg::F_ADD_SEALS(seals))?;
    Ok(OwnedFd::from(target))
}

/// Where the empty layer may be made, best first: the temporary directory, then
/// tmpfs directories root can write.
fn scratch_candidates() -> Vec<PathBuf> {
    vec![
        std::env::temp_dir(),
        PathBuf::from("/run"),
        PathBuf::from("/dev/shm"),
        PathBuf::from("/var/tmp"),
    ]
}

/// The first of `candidates` that exists and does not lie inside `exe_dir`: overlayfs
/// refuses a layer inside another one (`ELOOP`), so with skiff's binary in /tmp an
/// empty layer made in /tmp would fail the mount, and every container start would
/// pay for copying the binary into a memfd instead.
fn scratch_parent(exe_dir: &Path, candidates: &[PathBuf]) -> Option<PathBuf> {
    let exe_dir = std::fs::canonicalize(exe_dir).unwrap_or_else(|_| exe_dir.to_path_buf());
    candidates
        .iter()
        .filter_map(|c| std::fs::canonicalize(c).ok())
        .find(|c| c.is_dir() && !c.starts_with(&exe_dir))
}

/// Escapes the characters overlayfs's `lowerdir=` gives a meaning to.
fn escape_lowerdir(path: &Path) -> String {
    let mut out = String::new();
    for c in path.to_string_lossy().chars() {
        if matches!(c, ':' | '\\' | ',') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A fresh empty directory, removed when dropped.
struct EmptyDir {
    path: PathBuf,
}

impl EmptyDir {
    /// A new empty directory in `parent`.
    fn new(parent: &Path) -> io::Result<EmptyDir> {
        let mut template = parent.join("skiff-exe-XXXXXX").into_os_string().into_vec();
        template.push(0);
        // SAFETY: mkdtemp fills in the NUL-terminated template in place.
        let made = unsafe { libc::mkdtemp(template.as_mut_ptr().cast()) };
        if made.is_null() {
            return Err(io::Error::last_os_error());
        }
        template.pop();
        Ok(EmptyDir {
            path: PathBuf::from(std::ffi::OsString::from_vec(template)),
        })
    }
}

impl Drop for EmptyDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.path);
    }
}

fn syscall_fd(ret: libc::c_long) -> io::Result<OwnedFd> {
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the syscall returned a new descriptor we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(ret as i32) })
}

fn fsopen(fs: &std::ffi::CStr) -> io::Result<OwnedFd> {
    // SAFETY: fsopen(2) with a NUL-terminated name.
    syscall_fd(unsafe { libc::syscall(libc::SYS_fsopen, fs.as_ptr(), libc::FSOPEN_CLOEXEC) })
}

fn fsconfig_string(context: &OwnedFd, key: &std::ffi::CStr, value: &str) -> io::Result<()> {
    let value = CString::new(value)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in an overlay option"))?;
    // SAFETY: fsconfig(2) on our context with NUL-terminated strings.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            context.as_raw_fd(),
            libc::FSCONFIG_SET_STRING,
            key.as_ptr(),
            value.as_ptr(),
            0,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn fsconfig_create(context: &OwnedFd) -> io::Result<()> {
    // SAFETY: fsconfig(2) on our context, no pointers.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            context.as_raw_fd(),
            libc::FSCONFIG_CMD_CREATE,
            std::ptr::null::<libc::c_char>(),
            std::ptr::null::<libc::c_void>(),
            0,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn fsmount(context: &OwnedFd, attrs: u64) -> io::Result<OwnedFd> {
    // SAFETY: fsmount(2) on our context.
    syscall_fd(unsafe {
        libc::syscall(
            libc::SYS_fsmount,
            context.as_raw_fd(),
            libc::FSMOUNT_CLOEXEC,
            attrs,
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// A copy of a small executable in a temporary directory: the tests open it for
    /// writing through the handle, and must not risk the real binary.
    fn scratch_exe() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("true");
        std::fs::copy("/bin/true", &exe).unwrap();
        (dir, exe)
    }

    fn reopen(sealed: &SealedExe, flags: libc::c_int) -> io::Result<std::fs::File> {
        let path = CString::new(format!("/proc/self/fd/{}", sealed.fd.as_raw_fd())).unwrap();
        // SAFETY: open(2) with a NUL-terminated path.
        let fd = unsafe { libc::open(path.as_ptr(), flags | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: open returned a new descriptor we own.
        Ok(std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn check(sealed: &SealedExe, exe: &Path) {
        let mut content = Vec::new();
        reopen(sealed, libc::O_RDONLY)
            .unwrap()
            .read_to_end(&mut content)
            .unwrap();
        assert_eq!(
            content,
            std::fs::read(exe).unwrap(),
            "the handle is the binary"
        );
        // Overlayfs refuses the open; a sealed memfd the write.
        let err = match sealed.kind {
            Kind::Overlay => reopen(sealed, libc::O_WRONLY).expect_err("opened for writing"),
            Kind::Memfd => {
                use std::io::Write;
                let mut file = reopen(sealed, libc::O_WRONLY).unwrap();
                file.write_all(b"x").expect_err("wrote to the sealed copy")
            }
        };
        let expected = match sealed.kind {
            Kind::Overlay => libc::EROFS,
            Kind::Memfd => libc::EPERM,
        };
        assert_eq!(err.raw_os_error(), Some(expected), "{err}");
        assert_eq!(
            std::fs::read(exe).unwrap(),
            content,
            "the binary is unchanged"
        );
    }

    #[test]
    fn the_overlay_handle_reads_the_binary_and_refuses_writes() {
        let (_dir, exe) = scratch_exe();
        let sealed = make(&exe).unwrap();
        assert_eq!(
            sealed.kind,
            Kind::Overlay,
            "this machine runs as root with overlayfs"
        );
        check(&sealed, &exe);
    }

    #[test]
    fn a_binary_in_the_temporary_directory_still_gets_the_overlay() {
        // The binary directly in the temporary directory: the empty layer must be made
        // elsewhere, or overlayfs refuses the mount (ELOOP) and the binary is copied.
        let file = tempfile::Builder::new()
            .prefix("skiff-sealed-test-")
            .tempfile_in(std::env::temp_dir())
            .unwrap();
        std::fs::copy("/bin/true", file.path()).unwrap();
        let sealed = make(file.path()).unwrap();
        assert_eq!(sealed.kind, Kind::Overlay);
        check(&sealed, file.path());
    }

    #[test]
    fn the_empty_layer_is_never_made_inside_the_binarys_directory() {
        let dir = tempfile::tempdir().unwrap();
        let inside = dir.path().join("sub");
        std::fs::create_dir(&inside).unwrap();
        let outside = tempfile::tempdir().unwrap();
        let candidates = [
            inside,
            dir.path().to_path_buf(),
            PathBuf::from("/no/such/dir"),
            outside.path().to_path_buf(),
        ];
        assert_eq!(
            scratch_parent(dir.path(), &candidates),
            Some(std::fs::canonicalize(outside.path()).unwrap())
        );
        assert_eq!(scratch_parent(Path::new("/"), &candidates), None);
    }

    #[test]
    fn the_memfd_copy_reads_the_binary_and_refuses_writes() {
        let (_dir, exe) = scratch_exe();
        let sealed = SealedExe {
            fd: sealed_copy(&exe).unwrap(),
            kind: Kind::Memfd,
        };
        check(&sealed, &exe);
    }

    #[test]
    fn lowerdir_separators_are_escaped() {
        assert_eq!(escape_lowerdir(Path::new("/a:b,c\\d")), "/a\\:b\\,c\\\\d");
    }
}
