//! The container runtime: runs a [`ContainerSpec`] on any root filesystem directory.
//!
//! `skiff run IMAGE` = resolve the image → mount its union view → [`run`] on the mount
//! point. The runtime knows nothing about images beyond their process config.
//!
//! Process model (runc's): skiff forks an intermediate child that unshares the mount,
//! UTS, IPC, network and PID namespaces and forks again; that grandchild is the
//! container's PID 1. skiff is a child subreaper, so PID 1 is re-parented to it and
//! skiff waits for it directly, forwarding signals. PID 1 waits on a pipe until skiff
//! has put it in its cgroups, sets itself up ([`process::prepare`]) and execs; setup
//! errors come back over a close-on-exec pipe, so a successful exec reads as EOF.

pub mod cgroups;
pub mod process;
pub mod rootfs;
pub mod seccomp;
pub mod security;
pub mod spec;
pub mod state;
pub mod sys;
pub mod terminal;
pub mod users;

pub use spec::{ContainerSpec, RunOptions};

use nix::sched::CloneFlags;
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{ForkResult, Pid};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

/// Errors from running a container. Each maps to docker's exit status via
/// [`RunError::exit_code`].
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The rootfs path is not a directory.
    #[error("rootfs {0} is not a directory")]
    BadRootfs(String),
    /// A `-v` source does not exist on the host.
    #[error("invalid mount config: bind source path does not exist: {0}")]
    MissingBindSource(String),
    /// Writing the container's runtime files failed.
    #[error("preparing state directory {path}: {source}")]
    State {
        /// The file or directory.
        path: String,
        /// What went wrong.
        source: std::io::Error,
    },
    /// Creating or filling the cgroups failed.
    #[error("setting up cgroups: {0}")]
    Cgroup(#[from] cgroups::CgroupError),
    /// Creating pipes, forking, or waiting failed.
    #[error("{0}: {1}")]
    Os(&'static str, nix::errno::Errno),
    /// Setting up the terminal failed.
    #[error("terminal: {0}")]
    Terminal(#[from] terminal::TerminalError),
    /// The container failed before exec (bad user, command not found, mount error...).
    #[error("{0}")]
    Init(#[from] process::InitError),
}

impl RunError {
    /// Docker's exit status for this error: 125 for runtime errors, 126 when the command
    /// cannot be invoked, 127 when it is not found.
    pub fn exit_code(&self) -> u8 {
        match self {
            RunError::Init(e) => e.code,
            _ => process::EXIT_SETUP,
        }
    }
}

/// How the container's PID 1 ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// Exited with this code.
    Exited(i32),
    /// Killed by this signal number.
    Signaled(i32),
}

impl ExitStatus {
    /// The shell convention: the exit code, or 128+N when killed by signal N.
    pub fn code(self) -> u8 {
        match self {
            ExitStatus::Exited(c) => (c & 0xff) as u8,
            ExitStatus::Signaled(s) => (128 + s).clamp(0, 255) as u8,
        }
    }
}

/// Signals skiff forwards to the container's PID 1.
pub const FORWARDED_SIGNALS: &[Signal] = &[
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

/// The signals skiff's wait loop takes: the forwarded ones, SIGCHLD and SIGWINCH.
fn handled_signals() -> SigSet {
    let mut set = SigSet::empty();
    for s in FORWARDED_SIGNALS {
        set.add(*s);
    }
    set.add(Signal::SIGCHLD);
    set.add(Signal::SIGWINCH);
    set
}

/// Blocks the signals the wait loop takes in the calling thread. Call it before
/// starting any other thread (e.g. the FUSE server) so those threads inherit the mask
/// and the signals reach the wait loop instead of killing the process.
pub fn block_handled_signals() -> Result<SigSet, RunError> {
    let mut old = SigSet::empty();
    nix::sys::signal::pthread_sigmask(
        SigmaskHow::SIG_BLOCK,
        Some(&handled_signals()),
        Some(&mut old),
    )
    .map_err(|e| RunError::Os("blocking signals", e))?;
    Ok(old)
}

/// The default RLIMIT_NOFILE: Docker's usual 1048576, capped at skiff's own hard limit
/// (raising it would need CAP_SYS_RESOURCE, which the host may not grant).
pub fn default_nofile() -> u64 {
    let hard = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(_, hard)| hard)
        .unwrap_or(1024);
    hard.min(1 << 20)
}

/// Writes /etc/resolv.conf, /etc/hostname and /etc/hosts for the container into
/// `dir` (they are bind-mounted in, as Docker does).
fn write_etc_files(spec: &ContainerSpec, dir: &Path) -> Result<(), RunError> {
    let state = |path: &Path| {
        let path = path.display().to_string();
        move |source| RunError::State { path, source }
    };
    std::fs::create_dir_all(dir).map_err(state(dir))?;
    let hosts = format!(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\n\
         ff02::2\tip6-allrouters\n127.0.1.1\t{}\n",
        spec.hostname
    );
    let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let resolv = if spec.network == spec::NetworkMode::Host {
        host_resolv
    } else {
        // A loopback resolver on the host is unreachable from a new network namespace.
        let kept: Vec<&str> = host_resolv
            .lines()
            .filter(|l| {
                let ns = l.trim_start().strip_prefix("nameserver");
                !matches!(ns.map(str::trim), Some(a) if a.starts_with("127.") || a == "::1")
            })
            .collect();
        let mut r = kept.join("\n");
        if !r.lines().any(|l| l.trim_start().starts_with("nameserver")) {
            r.push_str("\nnameserver 8.8.8.8\nnameserver 8.8.4.4");
        }
        r.trim_start().to_string() + "\n"
    };
    for (name, content) in [
        ("resolv.conf", resolv),
        ("hostname", format!("{}\n", spec.hostname)),
        ("hosts", hosts),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, content).map_err(state(&path))?;
    }
    Ok(())
}

fn pipe() -> Result<(OwnedFd, OwnedFd), RunError> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| RunError::Os("pipe", e))
}

/// Sends a pre-exec failure to the parent and exits (child side only).
fn fail_child(err_w: &OwnedFd, e: &process::InitError) -> ! {
    let mut msg = vec![e.code];
    msg.extend_from_slice(e.message.as_bytes());
    let _ = nix::unistd::write(err_w, &msg);
    // SAFETY: _exit is always safe; we must not run the parent's destructors in a fork.
    unsafe { libc::_exit(e.code as i32) }
}

/// Runs the container described by `spec` on the root filesystem at `rootfs` and waits
/// for it. Returns PID 1's status; skiff's own output is nothing. Signals to skiff are
/// forwarded while it runs; cgroups and the namespaces' mounts are gone when it returns.
#[allow(dead_code)] // the plain entry point for `skiff run IMAGE` once it is wired
pub fn run(spec: &ContainerSpec, rootfs: &Path) -> Result<ExitStatus, RunError> {
    run_with(spec, rootfs, &mut |_| {})
}

/// [`run`], calling `on_start` with PID 1's host pid once it has exec'd the program.
pub fn run_with(
    spec: &ContainerSpec,
    rootfs: &Path,
    on_start: &mut dyn FnMut(i32),
) -> Result<ExitStatus, RunError> {
    if !rootfs.is_dir() {
        return Err(RunError::BadRootfs(rootfs.display().to_string()));
    }
    for b in &spec.binds {
        if !b.source.exists() {
            return Err(RunError::MissingBindSource(b.source.display().to_string()));
        }
    }
    let etc_dir = spec.state_dir.join("etc");
    write_etc_files(spec, &etc_dir)?;
    let mut cgroup = if spec.resources != spec::Resources::default() || !spec.privileged {
        Some(cgroups::Cgroup::create(
            &spec.id,
            &spec.resources,
            !spec.privileged,
        )?)
    } else {
        None
    };
    let old_mask = block_handled_signals()?;
    let result = spawn_and_wait(spec, rootfs, &etc_dir, cgroup.as_ref(), &old_mask, on_start);
    let _ = nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old_mask), None);
    if let Some(cg) = cgroup.as_mut() {
        cg.destroy()?;
    }
    result
}

fn spawn_and_wait(
    spec: &ContainerSpec,
    rootfs: &Path,
    etc_dir: &Path,
    cgroup: Option<&cgroups::Cgroup>,
    old_mask: &SigSet,
    on_start: &mut dyn FnMut(i32),
) -> Result<ExitStatus, RunError> {
    // SAFETY: prctl with constant arguments.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let pty = if spec.tty {
        Some(terminal::Pty::open()?)
    } else {
        None
    };
    let (pid_r, pid_w) = pipe()?;
    let (go_r, go_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let default_nofile = default_nofile();
    let console = pty.as_ref().map(|p| p.slave_path.clone());
    let init_cfg = process::InitConfig {
        spec,
        rootfs,
        etc_dir,
        default_nofile,
        console: console.as_deref(),
    };

    let mut flags = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWPID;
    if spec.network == spec::NetworkMode::Isolated {
        flags |= CloneFlags::CLONE_NEWNET;
    }

    // SAFETY: the children only make async-signal-safe-in-practice calls of a process
    // that is single-threaded here (see block_handled_signals for threaded callers).
    match unsafe { nix::unistd::fork() }.map_err(|e| RunError::Os("fork", e))? {
        ForkResult::Child => {
            drop((pid_r, go_w, err_r));
            close_fuse_descriptors();
            if let Err(e) = nix::sched::unshare(flags) {
                fail_child(
                    &err_w,
                    &process::InitError {
                        code: process::EXIT_SETUP,
                        message: format!("creating namespaces: {e}"),
                    },
                );
            }
            // SAFETY: as above.
            match unsafe { nix::unistd::fork() } {
                Err(e) => fail_child(
                    &err_w,
                    &process::InitError {
                        code: process::EXIT_SETUP,
                        message: format!("fork: {e}"),
                    },
                ),
                Ok(ForkResult::Parent { child }) => {
                    let _ = nix::unistd::write(&pid_w, &child.as_raw().to_ne_bytes());
                    // SAFETY: leaving the intermediate process without destructors.
                    unsafe { libc::_exit(0) }
                }
                Ok(ForkResult::Child) => {
                    drop(pid_w);
                    container_main(&init_cfg, go_r, &err_w, pty.as_ref(), old_mask)
                }
            }
        }
        ForkResult::Parent {
            child: intermediate,
        } => {
            drop((pid_w, go_r, err_w));
            let mut buf = [0u8; 4];
            let got = read_full(&pid_r, &mut buf);
            let _ = waitpid(intermediate, None);
            if got != 4 {
                return Err(read_init_error(err_r).unwrap_or(RunError::Os(
                    "starting container",
                    nix::errno::Errno::ECHILD,
                )));
            }
            let pid = Pid::from_raw(i32::from_ne_bytes(buf));
            if let Some(cg) = cgroup {
                if let Err(e) = cg.add(pid.as_raw()) {
                    let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
                    let _ = waitpid(pid, None);
                    return Err(e.into());
                }
            }
            let _ = nix::unistd::write(&go_w, b"g");
            drop(go_w);
            let mut term = pty
                .map(|p| terminal::Session::start(p, spec.stdin))
                .transpose()?;
            if let Some(e) = read_init_error(err_r) {
                let _ = waitpid(pid, None);
                return Err(e);
            }
            on_start(pid.as_raw());
            wait_forwarding(pid, term.as_mut())
        }
    }
}

/// Closes every `/dev/fuse` descriptor this (forked) process inherited from skiff's
/// FUSE server. The container's setup touches the mount (pivot_root, stat of the
/// rootfs); if it held the server's descriptor and skiff were killed meanwhile, the
/// connection would never see its last user go, and setup would hang in D state on a
/// request nobody answers. Without the descriptor the kernel aborts the connection
/// when skiff dies and setup fails with ENOTCONN instead.
fn close_fuse_descriptors() {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<i32> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd > 2)
        .collect();
    for fd in fds {
        let target = std::fs::read_link(format!("/proc/self/fd/{fd}")).unwrap_or_default();
        if target == Path::new("/dev/fuse") {
            // SAFETY: closing a descriptor this process owns and no code here uses.
            unsafe { libc::close(fd) };
        }
    }
}

fn read_full(fd: &OwnedFd, buf: &mut [u8]) -> usize {
    let mut n = 0;
    while n < buf.len() {
        match nix::unistd::read(fd, &mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => break,
        }
    }
    n
}

/// Reads the error pipe to EOF: empty means exec succeeded.
fn read_init_error(err_r: OwnedFd) -> Option<RunError> {
    let mut msg = Vec::new();
    let _ = std::fs::File::from(err_r).read_to_end(&mut msg);
    let (code, text) = msg.split_first()?;
    Some(RunError::Init(process::InitError {
        code: *code,
        message: String::from_utf8_lossy(text).into_owned(),
    }))
}

/// The container's PID 1 before exec.
fn container_main(
    cfg: &process::InitConfig<'_>,
    go_r: OwnedFd,
    err_w: &OwnedFd,
    pty: Option<&terminal::Pty>,
    old_mask: &SigSet,
) -> ! {
    // Wait until skiff has put us in our cgroups.
    let mut go = [0u8; 1];
    if read_full(&go_r, &mut go) != 1 {
        // SAFETY: skiff went away; leave quietly.
        unsafe { libc::_exit(process::EXIT_SETUP as i32) }
    }
    drop(go_r);
    // Like runc, PID 1 leads its own session: a terminal's Ctrl-C reaches skiff, which
    // forwards it, rather than hitting the container twice. (-t does this itself.)
    if pty.is_none() {
        let _ = nix::unistd::setsid();
    }
    let stdio = match pty {
        Some(p) => p.attach_as_controlling(),
        None if !cfg.spec.stdin => std::fs::File::open("/dev/null").and_then(|f| {
            // SAFETY: dup2 onto fd 0 of this single-threaded child.
            if unsafe { libc::dup2(f.as_raw_fd(), 0) } < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(())
            }
        }),
        None => Ok(()),
    };
    if let Err(e) = stdio {
        fail_child(
            err_w,
            &process::InitError {
                code: process::EXIT_SETUP,
                message: format!("setting up stdio: {e}"),
            },
        );
    }
    let (program, argv, envp) = match process::prepare(&sys::LinuxSyscall, cfg) {
        Ok(p) => p,
        Err(e) => fail_child(err_w, &e),
    };
    // Reset what skiff changed: ignored signals (Rust ignores SIGPIPE) and the mask.
    for sig in Signal::iterator() {
        if sig != Signal::SIGKILL && sig != Signal::SIGSTOP {
            // SAFETY: restoring default dispositions before exec.
            let _ = unsafe { nix::sys::signal::signal(sig, nix::sys::signal::SigHandler::SigDfl) };
        }
    }
    let _ = nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(old_mask), None);
    // No descriptor of skiff's (say, the FUSE server's /dev/fuse) may reach the
    // container: mark everything above stderr close-on-exec (runc does the same).
    // SAFETY: close_range only changes flags of this process's descriptors.
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    let e = nix::unistd::execve(&program, &argv, &envp).unwrap_err();
    let code = match e {
        nix::errno::Errno::ENOENT => process::EXIT_NOT_FOUND,
        _ => process::EXIT_CANNOT_INVOKE,
    };
    fail_child(
        err_w,
        &process::InitError {
            code,
            message: format!("exec: {:?}: {e}", program),
        },
    )
}

/// Waits for PID 1, forwarding signals to it, reaping every child skiff has (PID 1 and
/// anything re-parented to it), resizing the pty on SIGWINCH.
fn wait_forwarding(
    pid: Pid,
    mut term: Option<&mut terminal::Session>,
) -> Result<ExitStatus, RunError> {
    let set = handled_signals();
    loop {
        // Reap first: PID 1 may have exited before we got here.
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(p, code)) if p == pid => {
                    if let Some(t) = term.as_mut() {
                        t.finish();
                    }
                    return Ok(ExitStatus::Exited(code));
                }
                Ok(WaitStatus::Signaled(p, sig, _)) if p == pid => {
                    if let Some(t) = term.as_mut() {
                        t.finish();
                    }
                    return Ok(ExitStatus::Signaled(sig as i32));
                }
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => continue,
            }
        }
        let sig = set
            .wait()
            .map_err(|e| RunError::Os("waiting for signals", e))?;
        match sig {
            Signal::SIGCHLD => {}
            Signal::SIGWINCH => {
                if let Some(t) = term.as_mut() {
                    t.resize();
                }
            }
            other => {
                let _ = nix::sys::signal::kill(pid, other);
            }
        }
    }
}

/// Writes to stderr that something went wrong in cleanup (used on paths that already
/// have a result to return).
#[allow(dead_code)]
fn warn_cleanup(what: &str, e: impl std::fmt::Display) {
    let _ = writeln!(std::io::stderr(), "skiff: cleanup: {what}: {e}");
}
