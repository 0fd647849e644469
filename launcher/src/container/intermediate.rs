//! The intermediate phase (youki's "intermediate process"): skiff's first child. It
//! lets go of skiff's FUSE descriptors, unshares the container's namespaces, forks
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
use std::path::Path;

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
/// `fuse_fds` are skiff's `/dev/fuse` descriptors, listed before the fork
/// ([`fuse_descriptors`]) so the child only closes them.
pub fn run(
    sys: &dyn Syscall,
    spec: &ContainerSpec,
    fuse_fds: &[i32],
    pid_w: OwnedFd,
    err_w: &OwnedFd,
    init: impl FnOnce() -> std::convert::Infallible,
) -> ! {
    close_fuse_descriptors(sys, fuse_fds);
    if let Err(e) = sys.unshare(namespace_flags(spec)) {
        sync::report_failure(
            err_w,
            &InitError {
                code: EXIT_SETUP,
                message: format!("creating namespaces: {}", e.errno),
            },
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
    // SAFETY: the process is single-threaded (it is a fork); the child only sets up
    // the container and execs.
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

/// skiff's open `/dev/fuse` descriptors (those of its FUSE server). Listed in the main
/// process before it forks: reading /proc allocates and takes locks, which a child
/// forked from the threaded skiff should not do (a lock another thread held at the
/// fork stays held forever in the child).
pub fn fuse_descriptors() -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd > 2)
        .filter(|fd| {
            std::fs::read_link(format!("/proc/self/fd/{fd}"))
                .is_ok_and(|t| t == Path::new("/dev/fuse"))
        })
        .collect()
}

/// Closes the `/dev/fuse` descriptors this (forked) process inherited from skiff's
/// FUSE server. The container's setup touches the mount (pivot_root, stat of the
/// rootfs); if it held the server's descriptor and skiff were killed meanwhile, the
/// connection would never see its last user go, and setup would hang in D state on a
/// request nobody answers. Without the descriptor the kernel aborts the connection
/// when skiff dies and setup fails with ENOTCONN instead.
fn close_fuse_descriptors(sys: &dyn Syscall, fds: &[i32]) {
    for fd in fds {
        let _ = sys.close(*fd);
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
    fn the_child_only_closes_descriptors_listed_before_the_fork() {
        // Nothing in the test process is /dev/fuse.
        assert!(fuse_descriptors().is_empty());
        let rec = Recorder::default();
        close_fuse_descriptors(&rec, &[7, 9]);
        assert_eq!(rec.calls.into_inner(), ["close 7", "close 9"]);
    }

    #[test]
    fn network_namespace_only_when_isolated() {
        assert_eq!(flags_of(None), "unshare mnt uts ipc pid net");
        assert_eq!(flags_of(Some("none")), "unshare mnt uts ipc pid net");
        assert_eq!(flags_of(Some("host")), "unshare mnt uts ipc pid");
    }
}
