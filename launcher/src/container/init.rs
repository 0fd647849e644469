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
//! Every kernel call goes through [`Syscall`], so the order is tested with the
//! recorder. A failure goes to the main process over the error pipe.

use super::cgroups::CgroupMount;
use super::process::{self, InitError, Program, EXIT_SETUP};
use super::spec::{ContainerSpec, NetworkMode};
use super::sys::Syscall;
use super::{rootfs, sync, sysctl, terminal};
use nix::sys::signal::SigSet;
use std::os::fd::{AsFd, OwnedFd};
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
    /// The cgroup filesystems mounted read-only on the container's /sys/fs/cgroup.
    pub cgroup_mounts: &'a [CgroupMount],
}

/// Runs PID 1: waits on `go_r` for the main process, sets up and execs. Never
/// returns: a failure is written to `err_w` and ends the process.
pub fn run(
    sys: &dyn Syscall,
    cfg: &InitConfig<'_>,
    go_r: OwnedFd,
    err_w: &OwnedFd,
    old_mask: &SigSet,
) -> ! {
    wait_for_cgroups(&go_r);
    let failure = start(sys, cfg, old_mask, &|| !sync::writer_gone(&go_r));
    sync::report_failure(err_w, &failure)
}

/// Blocks until the main process has put this process in its cgroups; leaves quietly
/// if the main process went away instead.
fn wait_for_cgroups(go_r: &OwnedFd) {
    let mut go = [0u8; 1];
    if sync::read_full(go_r, &mut go) != 1 {
        // SAFETY: ending a forked child without running the parent's destructors.
        unsafe { libc::_exit(EXIT_SETUP as i32) }
    }
}

/// The four steps from the cgroups to exec; returns only with what failed.
/// `monitor_alive` tells whether the main process is still there.
fn start(
    sys: &dyn Syscall,
    cfg: &InitConfig<'_>,
    old_mask: &SigSet,
    monitor_alive: &dyn Fn() -> bool,
) -> InitError {
    if let Err(e) = tie_to_monitor(sys, monitor_alive) {
        return e;
    }
    if let Err(e) = attach_stdio(sys, cfg.spec, cfg.console) {
        return InitError::setup("setting up stdio", e);
    }
    let program = match prepare(sys, cfg) {
        Ok(p) => p,
        Err(e) => return e,
    };
    // Changing the uid or gid clears the parent-death signal (runc restores it too).
    if let Err(e) = tie_to_monitor(sys, monitor_alive) {
        return e;
    }
    clean_slate(sys, old_mask);
    exec(sys, &program)
}

/// PID 1 dies with SIGKILL when the main process (its parent since the intermediate
/// process exited: skiff is a subreaper, and forks from its main thread, which
/// supervises the container to the end) dies, so a SIGKILLed skiff does not leave a
/// container running on a dead FUSE mount. Set, then checked: a monitor that died
/// just before the prctl sent no signal (runc checks getppid; in a new PID namespace
/// that reads 0, so the go pipe's write end, held by the monitor, tells instead).
fn tie_to_monitor(sys: &dyn Syscall, monitor_alive: &dyn Fn() -> bool) -> Result<(), InitError> {
    sys.set_parent_death_signal(nix::sys::signal::Signal::SIGKILL)
        .map_err(|e| InitError::setup("setting the parent-death signal", e))?;
    if !monitor_alive() {
        return Err(InitError {
            code: EXIT_SETUP,
            message: "the monitoring skiff process exited".into(),
        });
    }
    Ok(())
}

/// Step 1. Like runc, PID 1 leads its own session: a terminal's Ctrl-C reaches skiff,
/// which forwards it, rather than hitting the container twice (`-t` makes the pty the
/// session's controlling terminal). Without `-i`, stdin is /dev/null.
fn attach_stdio(
    sys: &dyn Syscall,
    spec: &ContainerSpec,
    console: Option<&Path>,
) -> std::io::Result<()> {
    if let Some(slave) = console {
        return terminal::attach_controlling(sys, terminal::open_slave(slave)?.as_fd());
    }
    let _ = sys.setsid();
    if !spec.stdin {
        let null = std::fs::File::open("/dev/null")?;
        sys.dup2(null.as_fd(), 0)
            .map_err(|e| std::io::Error::from(e.errno))?;
    }
    Ok(())
}

/// Step 2: sets up the container and returns the program to exec.
pub fn prepare(sys: &dyn Syscall, cfg: &InitConfig<'_>) -> Result<Program, InitError> {
    let spec = cfg.spec;
    // A cgroup namespace rooted at the cgroups the main process put us in (so after
    // "go", as runc does): the container sees its own cgroup as `/`.
    sys.unshare(nix::sched::CloneFlags::CLONE_NEWCGROUP)
        .map_err(|e| InitError::setup("creating the cgroup namespace", e))?;
    sys.set_hostname(&spec.hostname)
        .map_err(|e| InitError::setup("setting hostname", e))?;
    if spec.network == NetworkMode::Isolated {
        sys.set_loopback_up()
            .map_err(|e| InitError::setup("network", e))?;
    }
    rootfs::prepare(
        sys,
        cfg.rootfs,
        spec,
        cfg.etc_dir,
        cfg.console,
        cfg.cgroup_mounts,
    )
    .map_err(|e| InitError::setup("preparing rootfs", e))?;
    // The working directory is created while the root is still writable (--read-only
    // comes with finalize), as Docker does.
    let cwd = PathBuf::from(&spec.cwd);
    std::fs::create_dir_all(&cwd)
        .map_err(|e| InitError::setup(&format!("creating working directory {}", spec.cwd), e))?;
    // Namespaced sysctls, while /proc/sys is still writable (as runc does).
    for (key, value) in &spec.sysctls {
        std::fs::write(sysctl::proc_path(key), value)
            .map_err(|e| InitError::setup(&format!("setting sysctl {key}={value}"), e))?;
    }
    rootfs::finalize(sys, spec.read_only).map_err(|e| InitError::setup("preparing rootfs", e))?;

    // The user is looked up in the container's own files, after pivot_root.
    let (user, env) = process::container_user(&spec.user, &spec.group_add, &spec.env)?;

    process::set_rlimits(sys, spec, cfg.default_nofile)?;
    process::drop_privileges(sys, spec, &user)?;
    sys.chdir(&cwd).map_err(|e| InitError {
        code: process::EXIT_CANNOT_INVOKE,
        message: format!(
            "chdir to cwd (\"{}\") set in config.json failed: {}",
            spec.cwd, e.errno
        ),
    })?;
    Program::find(&spec.args, &env)
}

/// Step 3. Resets what skiff changed (ignored signals: Rust ignores SIGPIPE; the
/// mask) and marks every descriptor above stderr close-on-exec, so none of skiff's
/// (say, the FUSE server's /dev/fuse) reaches the container (runc does the same).
pub(super) fn clean_slate(sys: &dyn Syscall, old_mask: &SigSet) {
    sys.reset_signal_dispositions();
    let _ = sys.set_signal_mask(old_mask);
    let _ = sys.close_range_cloexec(3);
}

/// Step 4. Returns only if exec failed: 127 when the program is gone, else 126.
pub(super) fn exec(sys: &dyn Syscall, program: &Program) -> InitError {
    let e = sys.execve(&program.path, &program.argv, &program.envp);
    let code = match e.errno {
        nix::errno::Errno::ENOENT => process::EXIT_NOT_FOUND,
        _ => process::EXIT_CANNOT_INVOKE,
    };
    InitError {
        code,
        message: format!("exec: {:?}: {}", program.path, e.errno),
    }
}

#[cfg(test)]
mod tests {
    use super::super::spec::RunOptions;
    use super::super::sys::recording::Recorder;
    use super::super::sys::FileKind;
    use super::*;

    /// A rootfs and /etc directory in a temp dir, and a spec whose lookups do not
    /// depend on the host: an absolute program, a numeric user with no passwd entry.
    struct Fixture {
        dir: tempfile::TempDir,
        spec: ContainerSpec,
    }

    impl Fixture {
        fn new(opts: RunOptions) -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            std::fs::create_dir_all(dir.path().join("rootfs")).unwrap();
            std::fs::create_dir_all(dir.path().join("etc")).unwrap();
            let opts = RunOptions {
                command: vec!["/bin/sh".into(), "-c".into(), "true".into()],
                hostname: Some("box".into()),
                user: Some("54321:65432".into()),
                ..opts
            };
            let spec = ContainerSpec::new(None, &opts, "id".into(), dir.path().into()).unwrap();
            Fixture { dir, spec }
        }

        fn rootfs(&self) -> PathBuf {
            self.dir.path().join("rootfs")
        }

        fn etc(&self) -> PathBuf {
            self.dir.path().join("etc")
        }

        /// Runs steps 1–4 with `rec`; returns the exec failure the recorder causes and
        /// the calls with the temp dir written as `$T`.
        fn start(&self, rec: &Recorder) -> (InitError, Vec<String>) {
            let (rootfs, etc) = (self.rootfs(), self.etc());
            let cfg = InitConfig {
                spec: &self.spec,
                rootfs: &rootfs,
                etc_dir: &etc,
                default_nofile: 1024,
                console: None,
                cgroup_mounts: &[],
            };
            let err = start(rec, &cfg, &SigSet::empty(), &|| true);
            let tmp = self.dir.path().to_str().unwrap();
            let calls = rec
                .calls
                .borrow()
                .iter()
                .map(|c| c.replace(tmp, "$T"))
                .collect();
            (err, calls)
        }
    }

    /// The kernel mounts, /etc files and devices every container gets, up to
    /// pivot_root (rootfs at `$T/rootfs`, generated files in `$T/etc`).
    const ROOTFS_STEPS: &[&str] = &[
        "mount - / -",
        "mount $T/rootfs $T/rootfs - bind",
        "mount proc $T/rootfs/proc proc nosuid nodev noexec",
        "mount tmpfs $T/rootfs/dev tmpfs nosuid",
        "mount devpts $T/rootfs/dev/pts devpts nosuid noexec",
        "mount tmpfs $T/rootfs/dev/shm tmpfs nosuid nodev noexec",
        "mount mqueue $T/rootfs/dev/mqueue mqueue nosuid nodev noexec",
        "mount sysfs $T/rootfs/sys sysfs ro nosuid nodev noexec",
        "mount $T/etc/resolv.conf $T/rootfs/etc/resolv.conf - bind",
        "mount $T/etc/hostname $T/rootfs/etc/hostname - bind",
        "mount $T/etc/hosts $T/rootfs/etc/hosts - bind",
    ];

    const DEVICE_STEPS: &[&str] = &[
        "umask 0",
        "mknod $T/rootfs/dev/null 666 1:3",
        "mknod $T/rootfs/dev/zero 666 1:5",
        "mknod $T/rootfs/dev/full 666 1:7",
        "mknod $T/rootfs/dev/random 666 1:8",
        "mknod $T/rootfs/dev/urandom 666 1:9",
        "mknod $T/rootfs/dev/tty 666 5:0",
        "umask 22",
        "pivot_root $T/rootfs",
    ];

    /// After the rlimits: a non-root user without capabilities, then the clean slate
    /// and exec.
    const PROCESS_STEPS: &[&str] = &[
        "seccomp",
        "bounding 14",
        "identity 54321 65432 []",
        "caps 0",
        "chdir /",
        "pdeathsig SIGKILL",
        "signals default",
        "sigmask",
        "cloexec 3..",
        "execve /bin/sh [/bin/sh -c true]",
    ];

    fn expected(parts: &[&[&str]]) -> Vec<String> {
        parts.concat().iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn default_container_sets_up_in_runc_order() {
        let f = Fixture::new(RunOptions::default());
        let rec = Recorder::default();
        let (err, calls) = f.start(&rec);
        assert_eq!(
            calls,
            expected(&[
                &[
                    "pdeathsig SIGKILL",
                    "setsid",
                    "dup2 0",
                    "unshare cgroup",
                    "sethostname box",
                    "loopback up",
                ],
                ROOTFS_STEPS,
                DEVICE_STEPS,
                &[
                    // No read-only or masked path exists in the recorder's world.
                    "setrlimit RLIMIT_NOFILE 1024 1024",
                ],
                PROCESS_STEPS,
            ])
        );
        // The recorder's exec fails with ENOSYS: "cannot invoke".
        assert_eq!(err.code, process::EXIT_CANNOT_INVOKE);
        assert!(
            err.message.starts_with("exec: \"/bin/sh\""),
            "{}",
            err.message
        );
    }

    #[test]
    fn after_pivot_paths_are_protected_then_the_root_made_read_only() {
        let f = Fixture::new(RunOptions {
            network: Some("host".into()),
            interactive: true,
            read_only: true,
            privileged: false,
            ulimits: vec!["nproc=5".into()],
            ..Default::default()
        });
        let rec = Recorder {
            files: [
                ("/proc/sys", FileKind::Dir),
                ("/proc/sysrq-trigger", FileKind::Other),
                ("/proc/kcore", FileKind::Other),
                ("/sys/firmware", FileKind::Dir),
            ]
            .into_iter()
            .map(|(p, k)| (PathBuf::from(p), k))
            .collect(),
            ..Default::default()
        };
        let (_, calls) = f.start(&rec);
        assert_eq!(
            calls,
            expected(&[
                // -i keeps stdin; the host network needs no loopback.
                &[
                    "pdeathsig SIGKILL",
                    "setsid",
                    "unshare cgroup",
                    "sethostname box",
                ],
                ROOTFS_STEPS,
                DEVICE_STEPS,
                &[
                    "mount /proc/sys /proc/sys - bind",
                    "mount - /proc/sys - remount-bind ro nosuid nodev noexec",
                    "mount /proc/sysrq-trigger /proc/sysrq-trigger - bind",
                    "mount - /proc/sysrq-trigger - remount-bind ro nosuid nodev noexec",
                    "mount /dev/null /proc/kcore - bind",
                    "mount tmpfs /sys/firmware tmpfs ro",
                    "mount - / - remount-bind ro",
                    "setrlimit RLIMIT_NOFILE 1024 1024",
                    "setrlimit RLIMIT_NPROC 5 5",
                ],
                PROCESS_STEPS,
            ])
        );
        // /dev/core is linked only where the host has /proc/kcore.
        assert!(f.rootfs().join("dev/core").symlink_metadata().is_ok());
    }

    #[test]
    fn a_failed_step_stops_setup() {
        let f = Fixture::new(RunOptions::default());
        // A program that is not there fails after the privileges are dropped, before
        // anything of skiff's is reset.
        let mut spec = f.spec.clone();
        spec.args = vec!["/nonexistent/prog".into()];
        let (rootfs, etc) = (f.rootfs(), f.etc());
        let cfg = InitConfig {
            spec: &spec,
            rootfs: &rootfs,
            etc_dir: &etc,
            default_nofile: 1024,
            console: None,
            cgroup_mounts: &[],
        };
        let rec = Recorder::default();
        let err = start(&rec, &cfg, &SigSet::empty(), &|| true);
        assert_eq!(err.code, process::EXIT_NOT_FOUND);
        assert_eq!(rec.calls.borrow().last().unwrap(), "chdir /");
    }
}
