//! The kernel calls container setup makes, behind one small trait (youki style), so the
//! setup phases can be read as a sequence of named steps and tested with a recorder.
//!
//! Outside the trait, on purpose: `fork` and `_exit` (a recorder cannot be two
//! processes), the sync pipes between the phases (they are the phases' boundaries, not
//! setup), and the supervising process's own signal mask, `waitpid` and `kill`.

use caps::{CapSet, Capability, CapsHashSet};
use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::signal::SigSet;
use nix::sys::stat::{Mode, SFlag};
use std::ffi::{CStr, CString};
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::path::Path;

/// A failed kernel call: which call, on what, and the errno.
#[derive(Debug, thiserror::Error)]
#[error("{call} {target}: {errno}")]
pub struct SysError {
    /// The call that failed (`mount`, `pivot_root`, ...).
    pub call: &'static str,
    /// What it was applied to (a path, a resource name).
    pub target: String,
    /// The kernel's answer.
    pub errno: Errno,
}

/// Result of a [`Syscall`] method.
pub type SysResult<T = ()> = Result<T, SysError>;

fn err(call: &'static str, target: impl std::fmt::Display) -> impl FnOnce(Errno) -> SysError {
    let target = target.to_string();
    move |errno| SysError {
        call,
        target,
        errno,
    }
}

/// What a path is, as far as setup cares (from stat(2), following symlinks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// A directory.
    Dir,
    /// Anything else (regular file, device, ...).
    Other,
}

/// Kernel calls used while setting up a container.
pub trait Syscall {
    /// stat(2): what `path` is, `None` if it does not exist. A question, not a step:
    /// the recorder answers it from a table and does not record it.
    fn file_kind(&self, path: &Path) -> Option<FileKind>;
    /// prctl(PR_SET_CHILD_SUBREAPER): orphans below us are re-parented to us.
    fn set_child_subreaper(&self) -> SysResult;
    /// prctl(PR_SET_PDEATHSIG): `signal` arrives when the parent (thread) dies.
    fn set_parent_death_signal(&self, signal: nix::sys::signal::Signal) -> SysResult;
    /// unshare(2) into new namespaces.
    fn unshare(&self, flags: CloneFlags) -> SysResult;
    /// setsid(2): lead a new session.
    fn setsid(&self) -> SysResult;
    /// ioctl(TIOCSCTTY): make the terminal `tty` this session's controlling terminal.
    fn set_controlling_terminal(&self, tty: BorrowedFd<'_>) -> SysResult;
    /// dup2(2): `fd` onto descriptor `target`.
    fn dup2(&self, fd: BorrowedFd<'_>, target: RawFd) -> SysResult;
    /// umask(2); returns the previous mask.
    fn umask(&self, mask: Mode) -> Mode;
    /// chdir(2).
    fn chdir(&self, path: &Path) -> SysResult;
    /// Every signal back to its default disposition (what exec keeps otherwise:
    /// ignored signals stay ignored, and Rust ignores SIGPIPE).
    fn reset_signal_dispositions(&self);
    /// pthread_sigmask(SIG_SETMASK).
    fn set_signal_mask(&self, mask: &SigSet) -> SysResult;
    /// close_range(first, ~0, CLOSE_RANGE_CLOEXEC): no descriptor from `first` on
    /// survives exec.
    fn close_range_cloexec(&self, first: u32) -> SysResult;
    /// execve(2); returns only on failure.
    fn execve(&self, program: &CStr, argv: &[CString], envp: &[CString]) -> SysError;
    /// mount(2).
    fn mount(
        &self,
        source: Option<&str>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> SysResult;
    /// Makes `new_root` the root: `pivot_root(new_root, new_root)`, then detaches the old
    /// root stacked below it (runc's trick: no put_old directory needed).
    fn pivot_root(&self, new_root: &Path) -> SysResult;
    /// mknod(2).
    fn mknod(&self, path: &Path, kind: SFlag, perm: Mode, dev: u64) -> SysResult;
    /// sethostname(2).
    fn set_hostname(&self, name: &str) -> SysResult;
    /// Brings the loopback interface of the current network namespace up.
    fn set_loopback_up(&self) -> SysResult;
    /// setrlimit(2).
    fn set_rlimit(&self, resource: u32, soft: u64, hard: u64) -> SysResult;
    /// setgroups, setgid, setuid (keeping the permitted capabilities across it).
    fn set_identity(&self, uid: u32, gid: u32, groups: &[u32]) -> SysResult;
    /// Drops every capability not in `keep` from the bounding set (needs CAP_SETPCAP,
    /// so before the identity switch).
    fn drop_bounding(&self, keep: &CapsHashSet) -> SysResult;
    /// Sets the effective and permitted sets to `caps`, clears the inheritable and
    /// ambient sets. `None` keeps the permitted capabilities the process has.
    fn set_capabilities(&self, caps: Option<&CapsHashSet>) -> SysResult;
    /// prctl(PR_SET_NO_NEW_PRIVS).
    fn set_no_new_privs(&self) -> SysResult;
    /// seccomp(SECCOMP_SET_MODE_FILTER).
    fn load_seccomp(&self, filter: &super::seccomp::Filter) -> SysResult;
    /// setns(2): joins the namespace `fd` refers to (`kind` is its one CLONE_NEW* flag).
    fn setns(&self, fd: BorrowedFd<'_>, kind: CloneFlags) -> SysResult;
}

/// Each CLONE_NEW* flag with its short name, as in /proc/PID/ns.
pub const NAMESPACES: &[(CloneFlags, &str)] = &[
    (CloneFlags::CLONE_NEWUSER, "user"),
    (CloneFlags::CLONE_NEWNS, "mnt"),
    (CloneFlags::CLONE_NEWUTS, "uts"),
    (CloneFlags::CLONE_NEWIPC, "ipc"),
    (CloneFlags::CLONE_NEWPID, "pid"),
    (CloneFlags::CLONE_NEWNET, "net"),
    (CloneFlags::CLONE_NEWCGROUP, "cgroup"),
];

/// Short name of one CLONE_NEW* flag, as in /proc/PID/ns (`mnt`, `pid`, ...).
pub fn namespace_name(kind: CloneFlags) -> &'static str {
    NAMESPACES
        .iter()
        .find(|(f, _)| *f == kind)
        .map(|(_, n)| *n)
        .unwrap_or("namespace")
}

/// The real kernel.
pub struct LinuxSyscall;

impl Syscall for LinuxSyscall {
    fn file_kind(&self, path: &Path) -> Option<FileKind> {
        let m = std::fs::metadata(path).ok()?;
        Some(if m.is_dir() {
            FileKind::Dir
        } else {
            FileKind::Other
        })
    }

    fn set_child_subreaper(&self) -> SysResult {
        // SAFETY: prctl with constant arguments.
        let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        Errno::result(r)
            .map(drop)
            .map_err(err("prctl", "PR_SET_CHILD_SUBREAPER"))
    }

    fn set_parent_death_signal(&self, signal: nix::sys::signal::Signal) -> SysResult {
        nix::sys::prctl::set_pdeathsig(signal).map_err(err("prctl", "PR_SET_PDEATHSIG"))
    }

    fn unshare(&self, flags: CloneFlags) -> SysResult {
        nix::sched::unshare(flags).map_err(err("unshare", format!("{flags:?}")))
    }

    fn setsid(&self) -> SysResult {
        nix::unistd::setsid().map(drop).map_err(err("setsid", "-"))
    }

    fn set_controlling_terminal(&self, tty: BorrowedFd<'_>) -> SysResult {
        // SAFETY: TIOCSCTTY on an open descriptor.
        let r = unsafe { libc::ioctl(tty.as_raw_fd(), libc::TIOCSCTTY, 0) };
        Errno::result(r)
            .map(drop)
            .map_err(err("ioctl TIOCSCTTY", tty.as_raw_fd()))
    }

    fn dup2(&self, fd: BorrowedFd<'_>, target: RawFd) -> SysResult {
        // SAFETY: dup2 onto a descriptor of this single-threaded (forked) process.
        let r = unsafe { libc::dup2(fd.as_raw_fd(), target) };
        Errno::result(r).map(drop).map_err(err("dup2", target))
    }

    fn umask(&self, mask: Mode) -> Mode {
        nix::sys::stat::umask(mask)
    }

    fn chdir(&self, path: &Path) -> SysResult {
        nix::unistd::chdir(path).map_err(err("chdir", path.display()))
    }

    fn reset_signal_dispositions(&self) {
        use nix::sys::signal::{signal, SigHandler, Signal};
        for sig in Signal::iterator() {
            if sig != Signal::SIGKILL && sig != Signal::SIGSTOP {
                // SAFETY: restoring default dispositions before exec.
                let _ = unsafe { signal(sig, SigHandler::SigDfl) };
            }
        }
    }

    fn set_signal_mask(&self, mask: &SigSet) -> SysResult {
        use nix::sys::signal::{pthread_sigmask, SigmaskHow};
        pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(mask), None)
            .map_err(err("pthread_sigmask", "SIG_SETMASK"))
    }

    fn close_range_cloexec(&self, first: u32) -> SysResult {
        // SAFETY: close_range only changes flags of this process's descriptors.
        let r = unsafe {
            libc::syscall(
                libc::SYS_close_range,
                first,
                u32::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            )
        };
        Errno::result(r)
            .map(drop)
            .map_err(err("close_range", first))
    }

    fn execve(&self, program: &CStr, argv: &[CString], envp: &[CString]) -> SysError {
        let errno = match nix::unistd::execve(program, argv, envp) {
            Err(e) => e,
            Ok(never) => match never {},
        };
        err("execve", program.to_string_lossy())(errno)
    }

    fn mount(
        &self,
        source: Option<&str>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> SysResult {
        nix::mount::mount(source, target, fstype, flags, data)
            .map_err(err("mount", target.display()))
    }

    fn pivot_root(&self, new_root: &Path) -> SysResult {
        use nix::fcntl::{open, OFlag};
        let e = || err("pivot_root", new_root.display());
        let dir = OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC;
        let old_root = open("/", dir, Mode::empty()).map_err(e())?;
        let new = open(new_root, dir, Mode::empty()).map_err(e())?;
        nix::unistd::fchdir(&new).map_err(e())?;
        nix::unistd::pivot_root(".", ".").map_err(e())?;
        // The old root is now stacked on the new one; reach it through its fd, make it
        // a slave so the detach does not propagate to the host, and detach it.
        nix::unistd::fchdir(&old_root).map_err(e())?;
        nix::mount::mount(
            None::<&str>,
            ".",
            None::<&str>,
            MsFlags::MS_SLAVE | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(e())?;
        nix::mount::umount2(".", MntFlags::MNT_DETACH).map_err(e())?;
        nix::unistd::chdir("/").map_err(e())
    }

    fn mknod(&self, path: &Path, kind: SFlag, perm: Mode, dev: u64) -> SysResult {
        nix::sys::stat::mknod(path, kind, perm, dev).map_err(err("mknod", path.display()))
    }

    fn set_hostname(&self, name: &str) -> SysResult {
        nix::unistd::sethostname(name).map_err(err("sethostname", name))
    }

    fn set_loopback_up(&self) -> SysResult {
        let e = err("set link up", "lo");
        // SAFETY: plain socket/ioctl calls on a zeroed ifreq we own; the fd is closed below.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
            if fd < 0 {
                return Err(e(Errno::last()));
            }
            let mut req: libc::ifreq = std::mem::zeroed();
            for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
                *dst = *src as libc::c_char;
            }
            let mut result = libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req);
            if result == 0 {
                req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
                result = libc::ioctl(fd, libc::SIOCSIFFLAGS, &req);
            }
            let errno = Errno::last();
            libc::close(fd);
            if result < 0 {
                return Err(e(errno));
            }
        }
        Ok(())
    }

    fn set_rlimit(&self, resource: u32, soft: u64, hard: u64) -> SysResult {
        let lim = libc::rlimit {
            rlim_cur: soft,
            rlim_max: hard,
        };
        // SAFETY: setrlimit reads the struct we pass.
        let r = unsafe { libc::setrlimit(resource as _, &lim) };
        Errno::result(r)
            .map(drop)
            .map_err(err("setrlimit", rlimit_name(resource)))
    }

    fn set_identity(&self, uid: u32, gid: u32, groups: &[u32]) -> SysResult {
        use nix::unistd::{setgroups, setresgid, setresuid, Gid, Uid};
        let gids: Vec<Gid> = groups.iter().map(|g| Gid::from_raw(*g)).collect();
        setgroups(&gids).map_err(err("setgroups", format!("{groups:?}")))?;
        // Keep permitted capabilities across the uid change; set_capabilities then
        // decides what stays.
        nix::sys::prctl::set_keepcaps(true).map_err(err("prctl", "PR_SET_KEEPCAPS"))?;
        let g = Gid::from_raw(gid);
        setresgid(g, g, g).map_err(err("setgid", gid))?;
        let u = Uid::from_raw(uid);
        setresuid(u, u, u).map_err(err("setuid", uid))?;
        nix::sys::prctl::set_keepcaps(false).map_err(err("prctl", "PR_SET_KEEPCAPS"))
    }

    fn set_capabilities(&self, wanted: Option<&CapsHashSet>) -> SysResult {
        let caperr = |set: &'static str| {
            move |e: caps::errors::CapsError| SysError {
                call: "capset",
                target: format!("{set}: {e}"),
                errno: Errno::last(),
            }
        };
        caps::clear(None, CapSet::Ambient).map_err(caperr("ambient"))?;
        caps::clear(None, CapSet::Inheritable).map_err(caperr("inheritable"))?;
        let wanted = match wanted {
            Some(w) => w.clone(),
            None => caps::read(None, CapSet::Permitted).map_err(caperr("permitted"))?,
        };
        caps::set(None, CapSet::Effective, &wanted).map_err(caperr("effective"))?;
        caps::set(None, CapSet::Permitted, &wanted).map_err(caperr("permitted"))?;
        caps::set(None, CapSet::Effective, &wanted).map_err(caperr("effective"))
    }

    fn drop_bounding(&self, keep: &CapsHashSet) -> SysResult {
        for cap in caps::all() {
            if !keep.contains(&cap) && caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false) {
                caps::drop(None, CapSet::Bounding, cap).map_err(|e| SysError {
                    call: "capset",
                    target: format!("bounding {cap}: {e}"),
                    errno: Errno::last(),
                })?;
            }
        }
        Ok(())
    }

    fn set_no_new_privs(&self) -> SysResult {
        nix::sys::prctl::set_no_new_privs().map_err(err("prctl", "PR_SET_NO_NEW_PRIVS"))
    }

    fn load_seccomp(&self, filter: &super::seccomp::Filter) -> SysResult {
        filter.load().map_err(err(
            "seccomp",
            format!("{} instructions", filter.instructions()),
        ))
    }

    fn setns(&self, fd: BorrowedFd<'_>, kind: CloneFlags) -> SysResult {
        nix::sched::setns(fd, kind).map_err(err("setns", namespace_name(kind)))
    }
}

/// Lower-case name of an `RLIMIT_*` constant, for messages ("nofile").
pub fn rlimit_name(resource: u32) -> &'static str {
    match resource as _ {
        libc::RLIMIT_NOFILE => "RLIMIT_NOFILE",
        libc::RLIMIT_NPROC => "RLIMIT_NPROC",
        libc::RLIMIT_CORE => "RLIMIT_CORE",
        libc::RLIMIT_STACK => "RLIMIT_STACK",
        libc::RLIMIT_MEMLOCK => "RLIMIT_MEMLOCK",
        _ => "rlimit",
    }
}

/// Capabilities Docker grants by default (moby `oci/caps/defaults.go`).
pub fn docker_default_capabilities() -> CapsHashSet {
    [
        Capability::CAP_CHOWN,
        Capability::CAP_DAC_OVERRIDE,
        Capability::CAP_FSETID,
        Capability::CAP_FOWNER,
        Capability::CAP_MKNOD,
        Capability::CAP_NET_RAW,
        Capability::CAP_SETGID,
        Capability::CAP_SETUID,
        Capability::CAP_SETFCAP,
        Capability::CAP_SETPCAP,
        Capability::CAP_NET_BIND_SERVICE,
        Capability::CAP_SYS_CHROOT,
        Capability::CAP_KILL,
        Capability::CAP_AUDIT_WRITE,
    ]
    .into_iter()
    .collect()
}

#[cfg(test)]
pub mod recording {
    //! A [`Syscall`] that records calls instead of making them.
    use super::*;
    use std::cell::RefCell;

    /// Records each call as one line, e.g. `mount proc /r/proc proc`.
    #[derive(Default)]
    pub struct Recorder {
        /// The calls, in order.
        pub calls: RefCell<Vec<String>>,
        /// The answers to [`Syscall::file_kind`]; any other path does not exist.
        pub files: std::collections::BTreeMap<std::path::PathBuf, FileKind>,
    }

    /// The umask the recorder reports as the previous one.
    pub const RECORDED_UMASK: u32 = 0o022;

    impl Recorder {
        fn push(&self, s: String) -> SysResult {
            self.calls.borrow_mut().push(s);
            Ok(())
        }
    }

    impl Syscall for Recorder {
        fn file_kind(&self, path: &Path) -> Option<FileKind> {
            self.files.get(path).copied()
        }
        fn set_child_subreaper(&self) -> SysResult {
            self.push("subreaper".into())
        }
        fn set_parent_death_signal(&self, signal: nix::sys::signal::Signal) -> SysResult {
            self.push(format!("pdeathsig {signal}"))
        }
        fn unshare(&self, flags: CloneFlags) -> SysResult {
            let set: Vec<&str> = NAMESPACES
                .iter()
                .filter(|(f, _)| flags.contains(*f))
                .map(|(_, n)| *n)
                .collect();
            self.push(format!("unshare {}", set.join(" ")))
        }
        fn setsid(&self) -> SysResult {
            self.push("setsid".into())
        }
        fn set_controlling_terminal(&self, _tty: BorrowedFd<'_>) -> SysResult {
            self.push("controlling terminal".into())
        }
        fn dup2(&self, _fd: BorrowedFd<'_>, target: RawFd) -> SysResult {
            self.push(format!("dup2 {target}"))
        }
        fn umask(&self, mask: Mode) -> Mode {
            let _ = self.push(format!("umask {:o}", mask.bits()));
            Mode::from_bits_truncate(RECORDED_UMASK)
        }
        fn chdir(&self, path: &Path) -> SysResult {
            self.push(format!("chdir {}", path.display()))
        }
        fn reset_signal_dispositions(&self) {
            let _ = self.push("signals default".into());
        }
        fn set_signal_mask(&self, _mask: &SigSet) -> SysResult {
            self.push("sigmask".into())
        }
        fn close_range_cloexec(&self, first: u32) -> SysResult {
            self.push(format!("cloexec {first}.."))
        }
        fn execve(&self, program: &CStr, argv: &[CString], _envp: &[CString]) -> SysError {
            let argv: Vec<_> = argv.iter().map(|a| a.to_string_lossy()).collect();
            let _ = self.push(format!(
                "execve {} [{}]",
                program.to_string_lossy(),
                argv.join(" ")
            ));
            SysError {
                call: "execve",
                target: program.to_string_lossy().into_owned(),
                errno: Errno::ENOSYS,
            }
        }
        fn mount(
            &self,
            source: Option<&str>,
            target: &Path,
            fstype: Option<&str>,
            flags: MsFlags,
            _data: Option<&str>,
        ) -> SysResult {
            let ro = if flags.contains(MsFlags::MS_RDONLY) {
                " ro"
            } else {
                ""
            };
            let kind = if flags.contains(MsFlags::MS_BIND) {
                if flags.contains(MsFlags::MS_REMOUNT) {
                    " remount-bind"
                } else {
                    " bind"
                }
            } else if flags.contains(MsFlags::MS_REMOUNT) {
                " remount"
            } else {
                ""
            };
            let mut extra = String::new();
            for (flag, name) in [
                (MsFlags::MS_NOSUID, " nosuid"),
                (MsFlags::MS_NODEV, " nodev"),
                (MsFlags::MS_NOEXEC, " noexec"),
            ] {
                if flags.contains(flag) {
                    extra.push_str(name);
                }
            }
            self.push(format!(
                "mount {} {} {}{kind}{ro}{extra}",
                source.unwrap_or("-"),
                target.display(),
                fstype.unwrap_or("-")
            ))
        }
        fn pivot_root(&self, new_root: &Path) -> SysResult {
            self.push(format!("pivot_root {}", new_root.display()))
        }
        fn mknod(&self, path: &Path, _kind: SFlag, perm: Mode, dev: u64) -> SysResult {
            self.push(format!(
                "mknod {} {:o} {}:{}",
                path.display(),
                perm.bits(),
                nix::sys::stat::major(dev),
                nix::sys::stat::minor(dev)
            ))
        }
        fn set_hostname(&self, name: &str) -> SysResult {
            self.push(format!("sethostname {name}"))
        }
        fn set_loopback_up(&self) -> SysResult {
            self.push("loopback up".into())
        }
        fn set_rlimit(&self, resource: u32, soft: u64, hard: u64) -> SysResult {
            self.push(format!("setrlimit {} {soft} {hard}", rlimit_name(resource)))
        }
        fn set_identity(&self, uid: u32, gid: u32, groups: &[u32]) -> SysResult {
            self.push(format!("identity {uid} {gid} {groups:?}"))
        }
        fn set_capabilities(&self, caps: Option<&CapsHashSet>) -> SysResult {
            self.push(format!(
                "caps {}",
                caps.map(|c| c.len().to_string()).unwrap_or("all".into())
            ))
        }
        fn drop_bounding(&self, keep: &CapsHashSet) -> SysResult {
            self.push(format!("bounding {}", keep.len()))
        }
        fn set_no_new_privs(&self) -> SysResult {
            self.push("no_new_privs".into())
        }
        fn load_seccomp(&self, _filter: &crate::container::seccomp::Filter) -> SysResult {
            self.push("seccomp".into())
        }
        fn setns(&self, _fd: BorrowedFd<'_>, kind: CloneFlags) -> SysResult {
            self.push(format!("setns {}", namespace_name(kind)))
        }
    }
}
