//! The main phase (youki's "main process"): skiff itself. It checks the inputs,
//! writes the container's /etc files, creates its cgroups, forks the intermediate
//! process, then supervises:
//!
//! 1. [`run_with`]: inputs, /etc files, cgroups, the signal mask; cleanup afterwards;
//! 2. [`spawn`]: becomes a child subreaper, opens the pty and the sync pipes, forks
//!    the intermediate process, which executes `skiff container-init`
//!    ([`super::reexec`]) and runs [`super::intermediate`], whose child runs
//!    [`super::init`];
//!    The intermediate process joins the cgroups while it starts up, so PID 1 is born
//!    in them (with a pids limit, PID 1 is moved instead);
//! 3. [`start_pid1`]: learns PID 1's pid, lets it go, starts the terminal session and
//!    waits for exec (or its failure);
//! 4. [`wait_forwarding`]: forwards signals to PID 1 and reaps until it exits.

use super::cgroups;
use super::init::InitConfig;
use super::spec::{self, ContainerSpec};
use super::sys::{LinuxSyscall, Syscall};
use super::{etc_files, reexec, sync, terminal, ExitStatus, RunError};
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use skiff_proto::store::ContainerPaths;
use std::os::fd::OwnedFd;
use std::path::Path;

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

/// Work on PID 1's namespaces between their creation and PID 1's setup (the network
/// attachments of `crate::network`), undone once PID 1 has exited.
pub trait Attach {
    /// Called with PID 1's host pid once it is in its cgroups and before it goes on:
    /// files written now into the state directory's etc/ are the ones PID 1 mounts.
    /// An error kills PID 1 and fails the run (exit status 125).
    fn attach(&mut self, pid1: i32) -> Result<(), String>;
    /// Called once PID 1 has exited or failed to start, whether or not `attach` ran
    /// or succeeded.
    fn detach(&mut self);
}

/// No attachments: the container's namespaces as `intermediate` made them.
pub struct NoAttach;

impl Attach for NoAttach {
    fn attach(&mut self, _pid1: i32) -> Result<(), String> {
        Ok(())
    }
    fn detach(&mut self) {}
}

/// Runs the container described by `spec` on the root filesystem at `rootfs`, calling
/// `on_start` with PID 1's host pid once it has exec'd the program, and waits for it.
/// Returns PID 1's status; skiff's own output is nothing. Signals to skiff are
/// forwarded while it runs; cgroups and the namespaces' mounts are gone when it returns.
pub fn run_with(
    spec: &ContainerSpec,
    rootfs: &Path,
    on_start: &mut dyn FnMut(i32),
) -> Result<ExitStatus, RunError> {
    run_attached(spec, rootfs, &mut NoAttach, on_start)
}

/// [`run_with`], with `attach` called on PID 1's namespaces before it goes on and
/// its `detach` after it exited.
pub fn run_attached(
    spec: &ContainerSpec,
    rootfs: &Path,
    attach: &mut dyn Attach,
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
    let etc_dir = ContainerPaths::in_dir(&spec.state_dir).etc();
    etc_files::write(spec, &etc_dir)?;
    tracing::debug!("container: /etc files written");
    let mut cgroup = if spec.resources != spec::Resources::default() || !spec.privileged {
        Some(cgroups::Cgroup::create(
            &spec.id,
            &spec.resources,
            !spec.privileged,
        )?)
    } else {
        None
    };
    tracing::debug!("container: cgroups created");
    let old_mask = block_handled_signals()?;
    let init_cfg = InitConfig {
        spec,
        rootfs,
        etc_dir: &etc_dir,
        default_nofile: default_nofile(),
        console: None,
        cgroup_mounts: cgroup.as_ref().map(|c| c.mounts()).unwrap_or(&[]),
    };
    let result = spawn(
        &LinuxSyscall,
        &init_cfg,
        cgroup.as_ref(),
        &old_mask,
        attach,
        on_start,
    );
    let _ = nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old_mask), None);
    if let Some(cg) = cgroup.as_mut() {
        cg.destroy()?;
    }
    tracing::debug!("container: cgroups removed");
    result
}

/// The main process's ends of the sync pipes (see [`sync`]).
struct MainEnds {
    pid_r: OwnedFd,
    go_w: OwnedFd,
    err_r: OwnedFd,
}

/// Forks the intermediate process (and through it PID 1), then runs the container to
/// its end.
fn spawn(
    sys: &dyn Syscall,
    cfg: &InitConfig<'_>,
    cgroup: Option<&cgroups::Cgroup>,
    old_mask: &SigSet,
    attach: &mut dyn Attach,
    on_start: &mut dyn FnMut(i32),
) -> Result<ExitStatus, RunError> {
    let spec = cfg.spec;
    let _ = sys.set_child_subreaper();
    let pty = if spec.tty {
        Some(terminal::Pty::open()?)
    } else {
        None
    };
    let (pid_r, pid_w) = sync::pipe()?;
    let (go_r, go_w) = sync::pipe()?;
    let (err_r, err_w) = sync::pipe()?;
    let stage = reexec::Stage::Run(Box::new(reexec::RunStage {
        spec: spec.clone(),
        rootfs: cfg.rootfs.to_path_buf(),
        etc_dir: cfg.etc_dir.to_path_buf(),
        default_nofile: cfg.default_nofile,
        console: pty.as_ref().map(|p| p.slave_path.clone()),
        cgroup_mounts: cfg.cgroup_mounts.to_vec(),
        old_mask: reexec::mask_to_numbers(old_mask),
    }));
    let ends = reexec::ChildEnds {
        pid_w: &pid_w,
        go_r: &go_r,
        err_w: &err_w,
    };
    // The setup process joins the cgroups while it starts up, and PID 1 is born in
    // them (see reexec::spawn_then). Not with a pids limit: the setup process and
    // PID 1 would count twice against it for a moment, so `--pids-limit 1` could not
    // start; PID 1 alone is moved then.
    let (early, mut late) = match cgroup {
        Some(cg) if spec.resources.pids.is_none() => (Some(cg), None),
        other => (None, other),
    };
    let intermediate = reexec::spawn_then(&stage, ends, &[], |child| {
        if let Some(cg) = early {
            match cg.add(child.as_raw()) {
                Ok(()) => tracing::debug!("container: setup process in its cgroups"),
                // It died (its error comes on the error pipe), or the move failed:
                // PID 1 is moved instead, and a failure reported then.
                Err(e) => {
                    tracing::debug!("container: setup process not in its cgroups: {e}");
                    late = Some(cg);
                }
            }
        }
        Ok(())
    })?;
    tracing::debug!("container: setup process started");
    drop((pid_w, go_r, err_w));
    let ends = MainEnds { pid_r, go_w, err_r };
    let result =
        start_pid1(spec, intermediate, ends, late, attach, pty).and_then(|(pid, mut term)| {
            tracing::debug!(pid = pid.as_raw(), "container: PID 1 executed its program");
            on_start(pid.as_raw());
            let status = wait_forwarding(pid, term.as_mut());
            tracing::debug!("container: PID 1 exited");
            status
        });
    attach.detach();
    result
}

/// Learns PID 1's pid from the intermediate process, puts PID 1 in `cgroup` (the
/// container's cgroups, unless PID 1 was born in them), lets it go, starts the
/// terminal session, and waits until PID 1 has exec'd (the error pipe closes) or
/// failed (the error comes back).
fn start_pid1(
    spec: &ContainerSpec,
    intermediate: Pid,
    ends: MainEnds,
    cgroup: Option<&cgroups::Cgroup>,
    attach: &mut dyn Attach,
    pty: Option<terminal::Pty>,
) -> Result<(Pid, Option<terminal::Session>), RunError> {
    let MainEnds { pid_r, go_w, err_r } = ends;
    let (pid, err_r) = sync::receive_pid(&pid_r, intermediate, err_r, "starting container")?;
    if let Some(cg) = cgroup {
        if let Err(e) = cg.add(pid.as_raw()) {
            let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
            let _ = waitpid(pid, None);
            return Err(e.into());
        }
    }
    if let Err(e) = attach.attach(pid.as_raw()) {
        let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
        let _ = waitpid(pid, None);
        return Err(RunError::Attach(e));
    }
    // go_w stays open until PID 1 has exec'd: PID 1 checks it to learn whether skiff
    // is still there once its parent-death signal is set.
    let _ = nix::unistd::write(&go_w, b"g");
    let term = pty
        .map(|p| terminal::Session::start(p, spec.stdin))
        .transpose()?;
    if let Some(e) = sync::read_failure(err_r) {
        let _ = waitpid(pid, None);
        return Err(e);
    }
    drop(go_w);
    Ok((pid, term))
}

/// Waits for PID 1, forwarding signals to it, reaping every child skiff has (PID 1 and
/// anything re-parented to it), resizing the pty on SIGWINCH.
pub(super) fn wait_forwarding(
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
