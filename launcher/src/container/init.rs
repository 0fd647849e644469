//! The init phase (youki's "init process"): the container's PID 1, from its fork in
//! the intermediate process to exec. It waits until the main process has put it in
//! its cgroups, then, in runc's `standard_init` order:
//!
//! 1. [`attach_stdio`]: its own session, and the pty or /dev/null as stdio;
//! 2. [`prepare`]: hostname, loopback, the root filesystem up to `pivot_root`, the
//!    working directory, runc's read-only and masked paths, the user, rlimits,
//!    capabilities, `chdir`;
//! 3. [`clean_slate`]: nothing of skiff's survives exec (signal dispositions, the
//!    signal mask, descriptors);
//! 4. [`exec`].
//!
//! A failure goes to the main process over the error pipe.

use super::process::{self, InitError, Program, EXIT_SETUP};
use super::spec::{ContainerSpec, NetworkMode};
use super::sys::Syscall;
use super::{rootfs, sync, terminal, users};
use nix::sys::signal::SigSet;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// Everything PID 1 needs, prepared by the main process before it forks.
pub struct InitConfig<'a> {
    /// The container.
    pub spec: &'a ContainerSpec,
    /// Host path of the root filesystem.
    pub rootfs: &'a Path,
    /// Host directory with resolv.conf, hostname and hosts.
    pub etc_dir: &'a Path,
    /// Default RLIMIT_NOFILE (soft = hard), never above the hard limit skiff has.
    pub default_nofile: u64,
    /// pty slave path for `-t` (bound to /dev/console).
    pub console: Option<&'a Path>,
}

/// Runs PID 1: waits on `go_r` for the main process, sets up and execs. Never
/// returns: a failure is written to `err_w` and ends the process.
pub fn run(
    sys: &dyn Syscall,
    cfg: &InitConfig<'_>,
    go_r: OwnedFd,
    err_w: &OwnedFd,
    pty: Option<&terminal::Pty>,
    old_mask: &SigSet,
) -> ! {
    wait_for_cgroups(go_r);
    let failure = start(sys, cfg, pty, old_mask);
    sync::report_failure(err_w, &failure)
}

/// Blocks until the main process has put this process in its cgroups; leaves quietly
/// if the main process went away instead.
fn wait_for_cgroups(go_r: OwnedFd) {
    let mut go = [0u8; 1];
    if sync::read_full(&go_r, &mut go) != 1 {
        // SAFETY: ending a forked child without running the parent's destructors.
        unsafe { libc::_exit(EXIT_SETUP as i32) }
    }
}

/// The four steps from the cgroups to exec; returns only with what failed.
fn start(
    sys: &dyn Syscall,
    cfg: &InitConfig<'_>,
    pty: Option<&terminal::Pty>,
    old_mask: &SigSet,
) -> InitError {
    if let Err(e) = attach_stdio(cfg.spec, pty) {
        return InitError::setup("setting up stdio", e);
    }
    let program = match prepare(sys, cfg) {
        Ok(p) => p,
        Err(e) => return e,
    };
    clean_slate(old_mask);
    exec(&program)
}

/// Step 1. Like runc, PID 1 leads its own session: a terminal's Ctrl-C reaches skiff,
/// which forwards it, rather than hitting the container twice (`-t` makes the pty the
/// session's controlling terminal). Without `-i`, stdin is /dev/null.
fn attach_stdio(spec: &ContainerSpec, pty: Option<&terminal::Pty>) -> std::io::Result<()> {
    if let Some(p) = pty {
        return p.attach_as_controlling();
    }
    let _ = nix::unistd::setsid();
    if !spec.stdin {
        let null = std::fs::File::open("/dev/null")?;
        // SAFETY: dup2 onto fd 0 of this single-threaded child.
        if unsafe { libc::dup2(null.as_raw_fd(), 0) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Step 2: sets up the container and returns the program to exec.
pub fn prepare(sys: &dyn Syscall, cfg: &InitConfig<'_>) -> Result<Program, InitError> {
    let spec = cfg.spec;
    sys.set_hostname(&spec.hostname)
        .map_err(|e| InitError::setup("setting hostname", e))?;
    if spec.network == NetworkMode::Isolated {
        sys.set_loopback_up()
            .map_err(|e| InitError::setup("network", e))?;
    }
    rootfs::prepare(sys, cfg.rootfs, spec, cfg.etc_dir, cfg.console)
        .map_err(|e| InitError::setup("preparing rootfs", e))?;
    // The working directory is created while the root is still writable (--read-only
    // comes with finalize), as Docker does.
    let cwd = PathBuf::from(&spec.cwd);
    std::fs::create_dir_all(&cwd)
        .map_err(|e| InitError::setup(&format!("creating working directory {}", spec.cwd), e))?;
    rootfs::finalize(sys, spec.read_only).map_err(|e| InitError::setup("preparing rootfs", e))?;

    // The user is looked up in the container's own files, after pivot_root.
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let group = std::fs::read_to_string("/etc/group").unwrap_or_default();
    let user = users::resolve(&spec.user, &passwd, &group).map_err(|e| InitError {
        code: EXIT_SETUP,
        message: e.to_string(),
    })?;
    let mut env = spec.env.clone();
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!("HOME={}", user.home));
    }

    process::set_rlimits(sys, spec, cfg.default_nofile)?;
    process::drop_privileges(sys, spec, &user)?;
    nix::unistd::chdir(&cwd).map_err(|e| InitError {
        code: process::EXIT_CANNOT_INVOKE,
        message: format!(
            "chdir to cwd (\"{}\") set in config.json failed: {e}",
            spec.cwd
        ),
    })?;
    Program::find(&spec.args, &env)
}

/// Step 3. Resets what skiff changed (ignored signals: Rust ignores SIGPIPE; the
/// mask) and marks every descriptor above stderr close-on-exec, so none of skiff's
/// (say, the FUSE server's /dev/fuse) reaches the container (runc does the same).
fn clean_slate(old_mask: &SigSet) {
    use nix::sys::signal::{pthread_sigmask, signal, SigHandler, SigmaskHow, Signal};
    for sig in Signal::iterator() {
        if sig != Signal::SIGKILL && sig != Signal::SIGSTOP {
            // SAFETY: restoring default dispositions before exec.
            let _ = unsafe { signal(sig, SigHandler::SigDfl) };
        }
    }
    let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(old_mask), None);
    // SAFETY: close_range only changes flags of this process's descriptors.
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
}

/// Step 4. Returns only if exec failed: 127 when the program is gone, else 126.
fn exec(program: &Program) -> InitError {
    let e = nix::unistd::execve(&program.path, &program.argv, &program.envp).unwrap_err();
    let code = match e {
        nix::errno::Errno::ENOENT => process::EXIT_NOT_FOUND,
        _ => process::EXIT_CANNOT_INVOKE,
    };
    InitError {
        code,
        message: format!("exec: {:?}: {e}", program.path),
    }
}
