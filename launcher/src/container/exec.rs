//! `skiff exec`: a new process in a running container, made like runc's `exec`.
//!
//! The same three phases as a container's start, with joining instead of creating:
//!
//! - main (skiff itself): opens the container's namespaces (`/proc/<PID 1>/ns/*`),
//!   the pty and the sync pipes, forks the intermediate process (which executes
//!   `skiff container-init`, [`super::reexec`]), puts the new process
//!   in PID 1's cgroups, lets it go, and waits for it forwarding signals;
//! - intermediate: [`join_namespaces`] (user first, mount last, as runc's nsexec
//!   does), then forks, because a PID namespace joined with setns holds only the
//!   children forked afterwards;
//! - the process: waits until it is in the cgroups, takes its stdio, then
//!   [`prepare`]: the user from the container's /etc/passwd, the container's rlimits,
//!   capabilities, no_new_privs and seccomp filter (as recorded at its start, in
//!   [`ProcessDefaults`]), the working directory; and execs.

use super::process::{self, InitError, Program, EXIT_CANNOT_INVOKE, EXIT_SETUP};
use super::security::Security;
use super::spec::{self, ContainerSpec, Rlimit};
use super::sys::{LinuxSyscall, Syscall};
use super::{cgroups, init, intermediate, main, reexec, sync, terminal, ExitStatus, RunError};
use nix::sched::CloneFlags;
use nix::sys::signal::SigSet;
use nix::sys::wait::waitpid;
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

/// What a container's PID 1 was started with that its `exec` processes share:
/// recorded in the container's state when it starts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcessDefaults {
    /// The environment (image Env, then `--env-file`, then `-e`), without HOME.
    pub env: Vec<String>,
    /// `user[:group]`, resolved in the container's files for each process.
    pub user: String,
    /// `--group-add` values.
    #[serde(default)]
    pub group_add: Vec<String>,
    /// The working directory.
    pub cwd: String,
    /// `--privileged`.
    pub privileged: bool,
    /// `--ulimit` values (the default RLIMIT_NOFILE is added as for PID 1).
    pub rlimits: Vec<Rlimit>,
    /// Capabilities, no_new_privs and the compiled seccomp filter.
    pub security: Security,
}

impl ProcessDefaults {
    /// What `spec`'s processes share.
    pub fn of(spec: &ContainerSpec) -> ProcessDefaults {
        ProcessDefaults {
            env: spec.env.clone(),
            user: spec.user.clone(),
            group_add: spec.group_add.clone(),
            cwd: spec.cwd.clone(),
            privileged: spec.privileged,
            rlimits: spec.rlimits.clone(),
            security: spec.security.clone(),
        }
    }
}

/// The flags of `skiff exec`, independent of clap.
#[derive(Debug, Clone, Default)]
pub struct ExecOptions {
    /// The command and its arguments.
    pub command: Vec<String>,
    /// `-e` values: `K=V`, or `K` to copy the host's value.
    pub env: Vec<String>,
    /// `-u`: instead of the container's user.
    pub user: Option<String>,
    /// `-w`: instead of the container's working directory.
    pub workdir: Option<String>,
    /// `-t`.
    pub tty: bool,
    /// `-i`.
    pub interactive: bool,
    /// `-d`: start the process and return; its stdio is /dev/null.
    pub detach: bool,
}

/// One process to start in a container: everything the forked side needs, worked out
/// before the fork.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecProcess {
    /// argv.
    pub args: Vec<String>,
    /// The environment (HOME is added after the user lookup when missing).
    pub env: Vec<String>,
    /// `user[:group]`.
    pub user: String,
    /// The container's `--group-add` values.
    pub group_add: Vec<String>,
    /// The working directory.
    pub cwd: String,
    /// `--privileged` of the container.
    pub privileged: bool,
    /// The container's `--ulimit` values.
    pub rlimits: Vec<Rlimit>,
    /// The container's capabilities, no_new_privs, seccomp filter.
    pub security: Security,
    /// Keep stdin (`-i`).
    pub stdin: bool,
    /// Detached (`-d`): every stdio descriptor is /dev/null.
    pub detach: bool,
    /// The default RLIMIT_NOFILE, as for PID 1.
    pub default_nofile: u64,
}

impl ExecProcess {
    /// The process `opts` asks for in a container started with `defaults`.
    pub fn new(defaults: &ProcessDefaults, opts: &ExecOptions) -> Result<ExecProcess, RunError> {
        if opts.command.is_empty() {
            return Err(RunError::Init(InitError::setup(
                "exec",
                "no command specified",
            )));
        }
        let mut env = spec::merge_env(&defaults.env, &opts.env)
            .map_err(|e| RunError::Init(InitError::setup("exec", e)))?;
        if opts.tty && !env.iter().any(|e| e.starts_with("TERM=")) {
            env.push("TERM=xterm".into());
        }
        Ok(ExecProcess {
            args: opts.command.clone(),
            env,
            user: opts.user.clone().unwrap_or_else(|| defaults.user.clone()),
            group_add: defaults.group_add.clone(),
            cwd: opts
                .workdir
                .clone()
                .filter(|w| !w.is_empty())
                .unwrap_or_else(|| defaults.cwd.clone()),
            privileged: defaults.privileged,
            rlimits: defaults.rlimits.clone(),
            security: defaults.security.clone(),
            stdin: opts.interactive,
            detach: opts.detach,
            default_nofile: main::default_nofile(),
        })
    }
}

/// The namespaces a process joins, in the order it joins them: the user namespace
/// first (it decides what the others allow), the mount namespace last (after it,
/// /proc is the container's).
pub const JOIN_ORDER: &[(&str, CloneFlags)] = &[
    ("user", CloneFlags::CLONE_NEWUSER),
    ("ipc", CloneFlags::CLONE_NEWIPC),
    ("uts", CloneFlags::CLONE_NEWUTS),
    ("net", CloneFlags::CLONE_NEWNET),
    ("pid", CloneFlags::CLONE_NEWPID),
    ("cgroup", CloneFlags::CLONE_NEWCGROUP),
    ("mnt", CloneFlags::CLONE_NEWNS),
];

/// Opens the namespaces of process `pid1` that differ from this process's, in
/// [`JOIN_ORDER`]. Held open, they stay valid even if PID 1 exits meanwhile.
pub fn open_namespaces(pid1: i32) -> Result<Vec<(OwnedFd, CloneFlags)>, RunError> {
    let mut out = Vec::new();
    for (name, kind) in JOIN_ORDER {
        let theirs = format!("/proc/{pid1}/ns/{name}");
        let file = match std::fs::File::open(&theirs) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(RunError::State {
                    path: theirs,
                    source: e,
                })
            }
        };
        let same = match (
            file.metadata(),
            std::fs::metadata(format!("/proc/self/ns/{name}")),
        ) {
            (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
            _ => false,
        };
        if !same {
            out.push((OwnedFd::from(file), *kind));
        }
    }
    Ok(out)
}

/// Joins `namespaces` in the order given (see [`JOIN_ORDER`]).
pub fn join_namespaces(
    sys: &dyn Syscall,
    namespaces: &[(OwnedFd, CloneFlags)],
) -> Result<(), InitError> {
    for (fd, kind) in namespaces {
        sys.setns(fd.as_fd(), *kind)
            .map_err(|e| InitError::setup("joining the container", e))?;
    }
    Ok(())
}

/// Starts `process` in the container whose PID 1 is `pid1`. Returns its exit status,
/// or `None` with `-d` once it has exec'd.
pub fn exec(pid1: i32, process: &ExecProcess, tty: bool) -> Result<Option<ExitStatus>, RunError> {
    let namespaces = open_namespaces(pid1)?;
    let cgroup_dirs = cgroups::dirs_of(pid1)?;
    let old_mask = main::block_handled_signals()?;
    let result = spawn(
        &LinuxSyscall,
        pid1,
        process,
        tty,
        &namespaces,
        &cgroup_dirs,
        &old_mask,
    );
    let _ = nix::sys::signal::pthread_sigmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&old_mask),
        None,
    );
    result
}

/// Forks the intermediate process (which joins and forks the process), then runs the
/// process to its end (or, detached, to its exec).
fn spawn(
    sys: &dyn Syscall,
    pid1: i32,
    process: &ExecProcess,
    tty: bool,
    namespaces: &[(OwnedFd, CloneFlags)],
    cgroup_dirs: &[PathBuf],
    old_mask: &SigSet,
) -> Result<Option<ExitStatus>, RunError> {
    // Processes whose parent (the intermediate process) exits come to us.
    let _ = sys.set_child_subreaper();
    let pty = if tty {
        Some(terminal::Pty::open()?)
    } else {
        None
    };
    // Opened here: once in the container's mount namespace, the host's devpts (where
    // the slave lives) is out of sight.
    let slave = pty
        .as_ref()
        .map(|p| p.open_slave())
        .transpose()
        .map_err(|e| RunError::State {
            path: "pty slave".into(),
            source: e,
        })?;
    let null = std::fs::File::open("/dev/null").map_err(|e| RunError::State {
        path: "/dev/null".into(),
        source: e,
    })?;
    let (pid_r, pid_w) = sync::pipe()?;
    let (go_r, go_w) = sync::pipe()?;
    let (err_r, err_w) = sync::pipe()?;
    let stage = reexec::Stage::Exec(reexec::ExecStage {
        process: process.clone(),
        namespaces: namespaces.iter().map(|(_, kind)| kind.bits()).collect(),
        has_slave: slave.is_some(),
        old_mask: reexec::mask_to_numbers(old_mask),
    });
    // The order reexec::main takes them in: namespaces, the slave, /dev/null.
    let mut extra: Vec<RawFd> = namespaces.iter().map(|(fd, _)| fd.as_raw_fd()).collect();
    extra.extend(slave.as_ref().map(|s| s.as_raw_fd()));
    extra.push(null.as_raw_fd());
    let ends = reexec::ChildEnds {
        pid_w: &pid_w,
        go_r: &go_r,
        err_w: &err_w,
    };
    let intermediate = reexec::spawn(&stage, ends, &extra)?;
    drop((pid_w, go_r, err_w, slave, null));
    let pid = start(intermediate, pid_r, go_w, err_r, cgroup_dirs, pid1)?;
    if process.detach {
        return Ok(None);
    }
    let mut term = pty
        .map(|p| terminal::Session::start(p, process.stdin))
        .transpose()?;
    main::wait_forwarding(pid, term.as_mut()).map(Some)
}

/// Learns the process's pid, puts it in the container's cgroups, lets it go and waits
/// until it has exec'd (or failed).
fn start(
    intermediate: Pid,
    pid_r: OwnedFd,
    go_w: OwnedFd,
    err_r: OwnedFd,
    cgroup_dirs: &[PathBuf],
    pid1: i32,
) -> Result<Pid, RunError> {
    let (pid, err_r) = sync::receive_pid(&pid_r, intermediate, err_r, "joining the container")?;
    if let Err(e) = join_cgroups(cgroup_dirs, pid.as_raw(), pid1) {
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        let _ = waitpid(pid, None);
        return Err(e.into());
    }
    let _ = nix::unistd::write(&go_w, b"g");
    drop(go_w);
    if let Some(e) = sync::read_failure(err_r) {
        let _ = waitpid(pid, None);
        return Err(e);
    }
    Ok(pid)
}

/// Moves `pid` into each of PID 1's cgroups. Those skiff made for the container
/// (`skiff-<id>`) must take it; another hierarchy (a systemd one, say) refusing is
/// only logged, the process then stays where skiff is there.
fn join_cgroups(dirs: &[PathBuf], pid: i32, pid1: i32) -> Result<(), cgroups::CgroupError> {
    for dir in dirs {
        if let Err(e) = cgroups::join(dir, pid) {
            let ours = dir
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("skiff-"));
            if ours {
                return Err(e);
            }
            tracing::warn!(pid1, "{e}");
        }
    }
    Ok(())
}

/// The intermediate process (in `skiff container-init`, see [`super::reexec`]): joins
/// the namespaces, forks the process, sends its pid, and exits; the process waits for
/// its cgroups, takes its stdio (`slave` with `-t`, else `null` where needed), sets
/// up and execs. Never returns.
pub fn join_and_run(
    sys: &dyn Syscall,
    namespaces: &[(OwnedFd, CloneFlags)],
    process: &ExecProcess,
    slave: Option<&std::fs::File>,
    null: &std::fs::File,
    (pid_w, go_r, err_w): (OwnedFd, OwnedFd, &OwnedFd),
    old_mask: &SigSet,
) -> ! {
    if let Err(e) = join_namespaces(sys, namespaces) {
        sync::report_failure(err_w, &e);
    }
    let stdio = Stdio { slave, null };
    intermediate::fork_child(pid_w, err_w, || {
        run_process(sys, process, &stdio, go_r, err_w, old_mask)
    })
}

/// The descriptors the process's stdio comes from, opened before the fork.
struct Stdio<'a> {
    /// The pty slave with `-t`.
    slave: Option<&'a std::fs::File>,
    /// /dev/null (stdin without `-i`, everything with `-d`).
    null: &'a std::fs::File,
}

/// The process: waits for its cgroups, takes its stdio, sets up and execs. Never
/// returns.
fn run_process(
    sys: &dyn Syscall,
    process: &ExecProcess,
    stdio: &Stdio<'_>,
    go_r: OwnedFd,
    err_w: &OwnedFd,
    old_mask: &SigSet,
) -> ! {
    let mut go = [0u8; 1];
    if sync::read_full(&go_r, &mut go) != 1 {
        // SAFETY: ending a forked child without running the parent's destructors.
        unsafe { libc::_exit(EXIT_SETUP as i32) }
    }
    let failure = match attach_stdio(sys, process, stdio) {
        Err(e) => InitError::setup("setting up stdio", e),
        Ok(()) => match prepare(sys, process) {
            Err(e) => e,
            Ok(program) => {
                init::clean_slate(sys, old_mask);
                init::exec(sys, &program)
            }
        },
    };
    sync::report_failure(err_w, &failure)
}

/// Its own session (the pty's, with `-t`), and /dev/null where nothing else is given.
fn attach_stdio(
    sys: &dyn Syscall,
    process: &ExecProcess,
    stdio: &Stdio<'_>,
) -> std::io::Result<()> {
    let io = |e: super::sys::SysError| std::io::Error::from(e.errno);
    if let Some(slave) = stdio.slave {
        return terminal::attach_controlling(sys, slave.as_fd());
    }
    let _ = sys.setsid();
    let null = stdio.null.as_fd();
    if process.detach {
        for fd in 0..3 {
            sys.dup2(null, fd).map_err(io)?;
        }
    } else if !process.stdin {
        sys.dup2(null, 0).map_err(io)?;
    }
    Ok(())
}

/// Inside the container: the user, the container's rlimits and privileges, the
/// working directory; returns the program to exec.
pub fn prepare(sys: &dyn Syscall, process: &ExecProcess) -> Result<Program, InitError> {
    let (user, env) = process::container_user(&process.user, &process.group_add, &process.env)?;
    process::apply_rlimits(sys, &process.rlimits, process.default_nofile)?;
    process::apply_privileges(
        sys,
        &process.security,
        process.privileged,
        &process.user,
        &user,
    )?;
    sys.chdir(std::path::Path::new(&process.cwd))
        .map_err(|e| InitError {
            code: EXIT_CANNOT_INVOKE,
            message: format!("chdir to {:?} failed: {}", process.cwd, e.errno),
        })?;
    Program::find(&process.args, &env)
}

#[cfg(test)]
mod tests {
    use super::super::spec::RunOptions;
    use super::super::sys::recording::Recorder;
    use super::*;

    fn defaults(opts: RunOptions) -> ProcessDefaults {
        let opts = RunOptions {
            command: vec!["sleep".into()],
            env: vec!["A=1".into()],
            workdir: Some("/".into()),
            user: Some("54321:65432".into()),
            ..opts
        };
        ProcessDefaults::of(&ContainerSpec::new(None, &opts, "id".into(), "/tmp".into()).unwrap())
    }

    #[test]
    fn defaults_survive_the_state_file() {
        let d = defaults(RunOptions {
            cap_add: vec!["SYS_ADMIN".into()],
            security_opt: vec!["no-new-privileges".into()],
            ulimits: vec!["nproc=5".into()],
            ..Default::default()
        });
        let json = serde_json::to_string(&d).unwrap();
        assert!(json.contains("CAP_SYS_ADMIN"), "{json}");
        let back: ProcessDefaults = serde_json::from_str(&json).unwrap();
        assert_eq!(back.security.capabilities, d.security.capabilities);
        assert!(back.security.no_new_privileges);
        assert_eq!(
            back.security.seccomp.as_ref().map(|f| f.instructions()),
            d.security.seccomp.as_ref().map(|f| f.instructions())
        );
        assert_eq!(back.rlimits, d.rlimits);
        assert_eq!(serde_json::to_string(&back).unwrap(), json);
    }

    #[test]
    fn exec_flags_override_the_container() {
        let d = defaults(RunOptions::default());
        let p = ExecProcess::new(
            &d,
            &ExecOptions {
                command: vec!["id".into()],
                env: vec!["A=2".into(), "B=3".into()],
                user: Some("1:1".into()),
                workdir: Some("/tmp".into()),
                tty: true,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(p.user, "1:1");
        assert_eq!(p.cwd, "/tmp");
        assert!(p.env.contains(&"A=2".to_string()) && p.env.contains(&"B=3".to_string()));
        assert!(p.env.contains(&"TERM=xterm".to_string()));
        let p = ExecProcess::new(
            &d,
            &ExecOptions {
                command: vec!["id".into()],
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!((p.user.as_str(), p.cwd.as_str()), ("54321:65432", "/"));
        assert!(ExecProcess::new(&d, &ExecOptions::default()).is_err());
    }

    #[test]
    fn namespaces_are_joined_user_first_and_mount_last() {
        let names: Vec<&str> = JOIN_ORDER.iter().map(|(n, _)| *n).collect();
        assert_eq!(names.first(), Some(&"user"));
        assert_eq!(names.last(), Some(&"mnt"));
        let rec = Recorder::default();
        let fds: Vec<(OwnedFd, CloneFlags)> = JOIN_ORDER
            .iter()
            .map(|(_, k)| (OwnedFd::from(std::fs::File::open("/dev/null").unwrap()), *k))
            .collect();
        join_namespaces(&rec, &fds).unwrap();
        assert_eq!(
            rec.calls.into_inner(),
            [
                "setns user",
                "setns ipc",
                "setns uts",
                "setns net",
                "setns pid",
                "setns cgroup",
                "setns mnt"
            ]
        );
    }

    #[test]
    fn the_process_gets_the_containers_privileges() {
        let d = defaults(RunOptions {
            security_opt: vec!["no-new-privileges".into()],
            ..Default::default()
        });
        let p = ExecProcess::new(
            &d,
            &ExecOptions {
                command: vec!["/bin/sh".into()],
                ..Default::default()
            },
        )
        .unwrap();
        let rec = Recorder::default();
        let program = prepare(&rec, &p).unwrap();
        assert_eq!(program.path.to_str().unwrap(), "/bin/sh");
        assert_eq!(
            rec.calls.into_inner()[1..],
            [
                "bounding 14",
                "identity 54321 65432 []",
                "caps 0",
                "no_new_privs",
                "seccomp",
                "chdir /"
            ]
        );
    }
}
