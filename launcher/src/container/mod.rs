//! The container runtime: runs a [`ContainerSpec`] on any root filesystem directory.
//!
//! `skiff run IMAGE` = resolve the image → mount its union view → [`run_with`] on the
//! mount point. The runtime knows nothing about images beyond their process config.
//!
//! Process model (runc's and youki's), one module per process:
//! - [`main`]: skiff itself forks the intermediate process, puts PID 1 in its cgroups,
//!   then waits for it as a child subreaper, forwarding signals;
//! - [`reexec`]: the forked child at once executes `skiff container-init`, so the
//!   setup below runs in a fresh single-threaded process, not in a fork of the
//!   threaded skiff (as `runc init`);
//! - [`intermediate`]: unshares the mount, UTS, IPC, network and PID namespaces and
//!   forks PID 1 into them;
//! - [`init`]: PID 1 waits until it is in its cgroups, sets up its root filesystem and
//!   process, and execs.
//!
//! They talk over the pipes in [`sync`]; setup errors come back over a close-on-exec
//! pipe, so a successful exec reads as EOF. Kernel calls of the setup go through
//! [`sys::Syscall`], so their order is tested with a recorder.

pub mod cgroups;
pub mod devices;
pub mod devices_bpf;
pub mod etc_files;
pub mod exec;
pub mod init;
pub mod intermediate;
pub mod main;
pub mod mounts;
pub mod process;
pub mod reexec;
pub mod restart_policy;
pub mod rootfs;
pub mod sealed_exe;
pub mod seccomp;
pub mod seccomp_cache;
pub mod security;
pub mod spec;
pub mod state;
pub mod sync;
pub mod sys;
pub mod sysctl;
pub mod terminal;
pub mod users;
pub mod warm_start;

pub use main::{block_handled_signals, run_attached, run_with};
pub use spec::{ContainerSpec, RunOptions};

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
    /// Attaching the container's namespaces (its network) failed.
    #[error("{0}")]
    Attach(String),
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

/// Runs the container described by `spec` on the root filesystem at `rootfs` and waits
/// for it: [`run_with`] without a start callback.
#[allow(dead_code)] // the plain entry point for callers that need no PID 1 pid
pub fn run(spec: &ContainerSpec, rootfs: &Path) -> Result<ExitStatus, RunError> {
    run_with(spec, rootfs, &mut |_| {})
}
