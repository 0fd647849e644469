//! The intermediate phase (youki's "intermediate process"): skiff's first child,
//! executed afresh as `skiff container-init` ([`super::reexec`]), so it holds none of
//! skiff's descriptors or threads. It unshares the container's namespaces, forks
//! PID 1 into them (a new PID namespace takes effect only for children), tells the
//! main process PID 1's host pid over the pid pipe, and exits. skiff is a child
//! subreaper, so PID 1 is re-parented to it.

use super::process::{InitError, EXIT_SETUP};
use super::spec::{ContainerSpec, NetworkMode};
use super::sync;
use super::sys::Syscall;
use nix::sched::CloneFlags;
use nix::unistd::ForkResult;
use std::os::fd::OwnedFd;

/// The namespaces a container gets: mount, UTS, IPC and PID always, network unless
/// it shares the host's.
pub fn namespace_flags(spec: &ContainerSpec) -> CloneFlags {
    let mut flags = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWPID;
    if spec.network == NetworkMode::Isolated {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    flags
}

/// Runs the intermediate process; `init` is what the forked PID 1 runs (it never
/// returns, hence `Infallible`). Never returns: the process exits once PID 1 is
/// forked, or reports its failure on `err_w`.
///
/// The container's setup touches the FUSE mount (pivot_root, stat of the rootfs);
/// if this process held the server's `/dev/fuse` descriptor and skiff were killed
/// meanwhile, the connection would never see its last user go, and setup would hang
/// in D state on a request nobody answers. Executed afresh, it holds none (they are
/// close-on-exec), so the kernel aborts the connection when skiff dies and setup
/// fails with ENOTCONN instead.
///
/// PID 1 is forked only once the main process has closed `setup` (the setup pipe,
/// see [`super::reexec::spawn_then`]): by then this process is in the container's
/// cgroups, and PID 1 is born in them.
pub fn run(
    sys: &dyn Syscall,
    spec: &ContainerSpec,
    setup: std::fs::File,
    pid_w: OwnedFd,
    err_w: &OwnedFd,
    init: impl FnOnce() -> std::convert::Infallible,
) -> ! {
    if let Err(e) = sys.unshare(namespace_flags(spec)) {
        sync::report_failure(
            err_w,
            &InitError {
                code: EXIT_SETUP,
                message: format!("creating namespaces: {}", e.errno),
            },
        );
    }
    if let Err(e) = super::reexec::wait_for_fork(setup) {
        sync::report_failure(
            err_w,
            &InitError::setup("waiting for the container's cgroups", e),
        );
    }
    fork_child(pid_w, err_w, init)
}

/// The intermediate process's last step (for `skiff run` and `skiff exec`): forks
/// `child` (in the PID namespace unshared or joined before), sends its pid on `pid_w`
/// and exits; a failed fork goes to `err_w`.
pub fn fork_child(
    pid_w: OwnedFd,
    err_w: &OwnedFd,
    child: impl FnOnce() -> std::convert::Infallible,
) -> ! {
    // SAFETY: the process is `skiff container-init`, single-threaded (see
    // super::reexec); the child sets up the container and execs.
    match unsafe { nix::unistd::fork() } {
        Err(e) => sync::report_failure(
            err_w,
            &InitError {
                code: EXIT_SETUP,
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
            match child() {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::spec::RunOptions;
    use super::super::sys::recording::Recorder;
    use super::*;

    fn flags_of(network: Option<&str>) -> String {
        let opts = RunOptions {
            command: vec!["true".into()],
            network: network.map(str::to_string),
            ..Default::default()
        };
        let spec = ContainerSpec::new(None, &opts, "id".into(), "/tmp".into()).unwrap();
        let rec = Recorder::default();
        rec.unshare(namespace_flags(&spec)).unwrap();
        rec.calls.into_inner().remove(0)
    }

    #[test]
    fn network_namespace_only_when_isolated() {
        assert_eq!(flags_of(None), "unshare mnt uts ipc pid net");
        assert_eq!(flags_of(Some("none")), "unshare mnt uts ipc pid net");
        assert_eq!(flags_of(Some("host")), "unshare mnt uts ipc pid");
    }
}
