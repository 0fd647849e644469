//! The container's setup in a freshly executed skiff (runc's `runc init`): the main
//! process forks, and the child at once executes skiff's binary as `skiff
//! container-init`, a subcommand no help lists. It executes a read-only handle on the
//! binary ([`super::sealed_exe`]), never the host's file, so nothing in the container
//! can write skiff's binary through `/proc/<pid>/exe` (CVE-2019-5736). The intermediate and init phases (or, for `skiff exec`,
//! the joining and the process's setup) then run in a new, single-threaded process
//! instead of a fork of the threaded skiff.
//!
//! Why: skiff runs a FUSE server and a tokio runtime while it starts a container. A
//! fork copies only the forking thread; any lock another thread held at that moment
//! (an allocator arena, a logger, a `Mutex` in a library) stays held forever in the
//! child, and the child's setup allocates, formats, opens and reads files (/etc/passwd,
//! PATH lookup, the rootfs). Between its fork and its exec the child here only makes
//! async-signal-safe calls: `dup2`, `close_range`, `execve`, `write`, `_exit`, on
//! descriptors and strings prepared before the fork.
//!
//! The hand-over: the child's descriptors 3.. are, in order, the setup pipe, the pid,
//! go and error pipes of [`super::sync`], then the descriptors the stage lists (the
//! namespaces `skiff exec` joins, its stdio). Every other descriptor is close-on-exec,
//! so none of skiff's (the FUSE server's `/dev/fuse`, sockets) reaches the new
//! process. The main process writes the [`Stage`] as JSON (after its length, 8 bytes
//! little-endian) into the setup pipe after the fork, and closes the pipe only once
//! the child may fork (for `skiff run`: once the child is in the container's cgroups,
//! so that PID 1 is born in them); the child reads the stage, makes its namespaces,
//! and waits for that end of file before it forks. The signal mask carries over
//! `execve`, so the signals the main process blocked stay blocked until the
//! container's program is executed.

use super::cgroups::CgroupMount;
use super::exec::{self, ExecProcess};
use super::init::{self, InitConfig};
use super::process::{InitError, EXIT_SETUP};
use super::spec::ContainerSpec;
use super::sys::LinuxSyscall;
use super::{intermediate, sync, RunError};
use nix::sched::CloneFlags;
use nix::sys::signal::{SigSet, Signal};
use nix::unistd::{ForkResult, Pid};
use serde::{Deserialize, Serialize};
use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

/// The hidden subcommand: `skiff container-init`.
pub const SUBCOMMAND: &str = "container-init";

/// The first descriptor of the hand-over (the setup pipe); the pid, go and error
/// pipes follow, then [`Stage`]'s own.
const FIRST_FD: RawFd = 3;
/// How many descriptors precede a stage's own: setup, pid, go, error.
const FIXED_FDS: RawFd = 4;

/// What the freshly executed skiff does.
#[derive(Debug, Serialize, Deserialize)]
pub enum Stage {
    /// `skiff run`: the intermediate phase, whose child is the container's PID 1.
    Run(Box<RunStage>),
    /// `skiff exec`: join a running container, fork, set the process up.
    Exec(ExecStage),
}

/// Everything the intermediate and init phases of `skiff run` need ([`InitConfig`],
/// owned).
#[derive(Debug, Serialize, Deserialize)]
pub struct RunStage {
    /// The container.
    pub spec: ContainerSpec,
    /// Host path of the root filesystem.
    pub rootfs: PathBuf,
    /// Host directory with resolv.conf, hostname and hosts.
    pub etc_dir: PathBuf,
    /// Default RLIMIT_NOFILE.
    pub default_nofile: u64,
    /// The pty slave's host path (`-t`).
    pub console: Option<PathBuf>,
    /// The cgroup filesystems for /sys/fs/cgroup.
    pub cgroup_mounts: Vec<CgroupMount>,
    /// The signal mask skiff had before it blocked the ones it handles: the
    /// container's program gets it.
    pub old_mask: Vec<i32>,
}

/// Everything `skiff exec`'s intermediate process and the new process need.
#[derive(Debug, Serialize, Deserialize)]
pub struct ExecStage {
    /// The process.
    pub process: ExecProcess,
    /// The namespaces to join, in order: each is the next handed-over descriptor.
    pub namespaces: Vec<i32>,
    /// The pty slave (`-t`) is handed over after the namespaces.
    pub has_slave: bool,
    /// The signal mask for the process (as [`RunStage::old_mask`]).
    pub old_mask: Vec<i32>,
}

/// The signals in `mask`, as numbers (realtime signals are not in nix's list and are
/// left unblocked).
pub fn mask_to_numbers(mask: &SigSet) -> Vec<i32> {
    Signal::iterator()
        .filter(|s| mask.contains(*s))
        .map(|s| s as i32)
        .collect()
}

fn mask_from_numbers(numbers: &[i32]) -> SigSet {
    let mut set = SigSet::empty();
    for n in numbers {
        if let Ok(s) = Signal::try_from(*n) {
            set.add(s);
        }
    }
    set
}

/// The child ends of the sync pipes, handed to the new process as descriptors 4–6.
pub struct ChildEnds<'a> {
    /// Write end of the pid pipe.
    pub pid_w: &'a OwnedFd,
    /// Read end of the go pipe.
    pub go_r: &'a OwnedFd,
    /// Write end of the error pipe.
    pub err_w: &'a OwnedFd,
}

/// Forks a child that executes `skiff container-init` with `ends` and `extra`
/// descriptors, then writes `stage` to it. Returns the child's pid (the
/// intermediate process: the caller reaps it). Call with the child ends still open;
/// the caller closes its copies afterwards.
pub fn spawn(stage: &Stage, ends: ChildEnds<'_>, extra: &[RawFd]) -> Result<Pid, RunError> {
    spawn_then(stage, ends, extra, |_| Ok(()))
}

/// [`spawn`], calling `before_fork` with the child's pid once the stage is written:
/// the child starts up, reads the stage and makes its namespaces meanwhile, but forks
/// nothing before `before_fork` has returned. `skiff run` puts the child in the
/// container's cgroups there, so that PID 1 is born in them: moving a process into a
/// cgroup waits for an RCU grace period (milliseconds), which then passes while the
/// child executes skiff's binary instead of after it. If `before_fork` fails, the
/// child is killed and reaped, and its error returned.
pub fn spawn_then(
    stage: &Stage,
    ends: ChildEnds<'_>,
    extra: &[RawFd],
    before_fork: impl FnOnce(Pid) -> Result<(), RunError>,
) -> Result<Pid, RunError> {
    let json = serde_json::to_vec(stage)
        .map_err(|e| RunError::Init(InitError::setup("encoding the container's setup", e)))?;
    let mut payload = Vec::with_capacity(8 + json.len());
    payload.extend_from_slice(&(json.len() as u64).to_le_bytes());
    payload.extend_from_slice(&json);
    let (setup_r, setup_w) = sync::pipe()?;
    let mut sources = vec![
        setup_r.as_raw_fd(),
        ends.pid_w.as_raw_fd(),
        ends.go_r.as_raw_fd(),
        ends.err_w.as_raw_fd(),
    ];
    sources.extend_from_slice(extra);
    let plan = Plan::new(&sources)?;

    // SAFETY: the child only calls Plan::exec, which makes async-signal-safe calls on
    // memory prepared here, so no lock another thread holds can block it.
    match unsafe { nix::unistd::fork() }.map_err(|e| RunError::Os("fork", e))? {
        ForkResult::Child => plan.exec(),
        ForkResult::Parent { child } => {
            drop(plan);
            drop(setup_r);
            // The child reads the whole stage before it does anything; if it died
            // instead, the write fails and the error pipe says why.
            let mut setup = std::fs::File::from(setup_w);
            let _ = setup.write_all(&payload);
            if let Err(e) = before_fork(child) {
                let _ = nix::sys::signal::kill(child, Signal::SIGKILL);
                let _ = nix::sys::wait::waitpid(child, None);
                return Err(e);
            }
            // End of file: the child may fork now.
            drop(setup);
            Ok(child)
        }
    }
}

/// Everything the forked child needs to execute `skiff container-init`, made before
/// the fork so the child allocates nothing.
struct Plan {
    /// Copies of the descriptors to hand over, above the hand-over range and
    /// close-on-exec; the child `dup2`s copy `i` onto `FIRST_FD + i`.
    copies: Vec<OwnedFd>,
    /// The sealed executable, also above the hand-over range ([`super::sealed_exe`]).
    exe: OwnedFd,
    /// Owns the strings `argv_ptrs` points to.
    _argv: [CString; 2],
    argv_ptrs: [*const libc::c_char; 3],
    envp_ptrs: [*const libc::c_char; 1],
    failure: Vec<u8>,
}

impl Plan {
    /// `sources[3]` is the error pipe's write end.
    fn new(sources: &[RawFd]) -> Result<Plan, RunError> {
        let last = FIRST_FD + sources.len() as RawFd;
        let copies = sources
            .iter()
            .map(|fd| {
                // SAFETY: fd is open for the duration of this call (the caller holds it).
                let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(*fd) };
                nix::fcntl::fcntl(borrowed, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(last))
                    // SAFETY: F_DUPFD_CLOEXEC returned a new descriptor we now own.
                    .map(|new| unsafe { OwnedFd::from_raw_fd(new) })
                    .map_err(|e| RunError::Os("dup of a descriptor for the container's setup", e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let sealed = super::sealed_exe::get().map_err(|e| {
            RunError::Init(InitError::setup(
                "making a read-only handle on skiff's binary for the container's setup",
                e,
            ))
        })?;
        let exe = nix::fcntl::fcntl(&sealed.fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(last))
            // SAFETY: F_DUPFD_CLOEXEC returned a new descriptor we now own.
            .map(|new| unsafe { OwnedFd::from_raw_fd(new) })
            .map_err(|e| RunError::Os("dup of skiff's sealed binary", e))?;
        let argv = [
            CString::new("skiff").expect("no NUL"),
            CString::new(SUBCOMMAND).expect("no NUL"),
        ];
        let argv_ptrs = [argv[0].as_ptr(), argv[1].as_ptr(), std::ptr::null()];
        let mut failure = vec![EXIT_SETUP];
        failure
            .extend_from_slice(b"executing skiff's sealed binary for the container's setup failed");
        Ok(Plan {
            copies,
            exe,
            _argv: argv,
            argv_ptrs,
            envp_ptrs: [std::ptr::null()],
            failure,
        })
    }

    /// In the forked child: moves the copies into place, marks everything else
    /// close-on-exec, and executes skiff. Async-signal-safe calls only.
    fn exec(&self) -> ! {
        // SAFETY: raw syscalls on descriptors and memory prepared before the fork.
        unsafe {
            for (i, copy) in self.copies.iter().enumerate() {
                if libc::dup2(copy.as_raw_fd(), FIRST_FD + i as RawFd) < 0 {
                    self.fail();
                }
            }
            let first_other = (FIRST_FD + self.copies.len() as RawFd) as libc::c_uint;
            libc::syscall(
                libc::SYS_close_range,
                first_other,
                libc::c_uint::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            );
            // execveat(fd, "", AT_EMPTY_PATH): close-on-exec is fine for an ELF binary.
            libc::syscall(
                libc::SYS_execveat,
                self.exe.as_raw_fd(),
                c"".as_ptr(),
                self.argv_ptrs.as_ptr(),
                self.envp_ptrs.as_ptr(),
                libc::AT_EMPTY_PATH,
            );
            self.fail()
        }
    }

    fn fail(&self) -> ! {
        // SAFETY: write and _exit are async-signal-safe; the buffer was made before
        // the fork. The error pipe's copy lies above every dup2 target, so it is
        // still the error pipe.
        unsafe {
            let err_w = self.copies[3].as_raw_fd();
            libc::write(err_w, self.failure.as_ptr().cast(), self.failure.len());
            libc::_exit(EXIT_SETUP as i32)
        }
    }
}

/// Takes descriptor `fd` of the hand-over.
fn handed_over(fd: RawFd) -> OwnedFd {
    // SAFETY: the process was executed by `spawn`'s child, which put these
    // descriptors there and nothing else owns them.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// The most a stage may take (a sanity bound on the length the main process sends).
const MAX_STAGE: u64 = 64 << 20;

/// Reads the stage from the setup pipe: its length, then its JSON. The pipe stays
/// open: its end of file comes later (see [`spawn_then`]).
fn read_stage(setup: &mut std::fs::File) -> Result<Stage, String> {
    let mut len = [0u8; 8];
    setup.read_exact(&mut len).map_err(|e| e.to_string())?;
    let len = u64::from_le_bytes(len);
    if len > MAX_STAGE {
        return Err(format!("a setup of {len} bytes"));
    }
    let mut json = vec![0u8; len as usize];
    setup.read_exact(&mut json).map_err(|e| e.to_string())?;
    serde_json::from_slice::<Stage>(&json).map_err(|e| e.to_string())
}

/// Waits until the main process closes the setup pipe: it has done what had to come
/// before the fork ([`spawn_then`]), or it is gone (PID 1 then learns so from the go
/// pipe). Anything but the end of file is a broken hand-over.
pub fn wait_for_fork(mut setup: std::fs::File) -> Result<(), String> {
    let mut byte = [0u8; 1];
    loop {
        match setup.read(&mut byte) {
            Ok(0) => return Ok(()),
            Ok(_) => return Err("unexpected data after the container's setup".into()),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// `skiff container-init`: reads the stage and runs it. Never returns.
pub fn main() -> ! {
    // SAFETY: F_GETFD only asks whether the descriptor is open.
    let handed =
        (FIRST_FD..FIRST_FD + FIXED_FDS).all(|fd| unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0);
    if !handed {
        eprintln!("skiff: {SUBCOMMAND} is run by `skiff run` and `skiff exec`, not by hand");
        std::process::exit(EXIT_SETUP.into());
    }
    let mut setup = std::fs::File::from(handed_over(FIRST_FD));
    let pid_w = handed_over(FIRST_FD + 1);
    let go_r = handed_over(FIRST_FD + 2);
    let err_w = handed_over(FIRST_FD + 3);
    let stage = read_stage(&mut setup);
    let stage = match stage {
        Ok(s) => s,
        Err(e) => sync::report_failure(
            &err_w,
            &InitError::setup("reading the container's setup", e),
        ),
    };
    let sys = LinuxSyscall;
    let mut next = FIRST_FD + FIXED_FDS;
    match stage {
        Stage::Run(run) => {
            let cfg = InitConfig {
                spec: &run.spec,
                rootfs: &run.rootfs,
                etc_dir: &run.etc_dir,
                default_nofile: run.default_nofile,
                console: run.console.as_deref(),
                cgroup_mounts: &run.cgroup_mounts,
            };
            let old_mask = mask_from_numbers(&run.old_mask);
            intermediate::run(&sys, &run.spec, setup, pid_w, &err_w, || {
                init::run(&sys, &cfg, go_r, &err_w, &old_mask)
            })
        }
        Stage::Exec(stage) => {
            // Nothing to wait for: `skiff exec` closes the pipe once it is written.
            drop(setup);
            let namespaces: Vec<(OwnedFd, CloneFlags)> = stage
                .namespaces
                .iter()
                .map(|kind| {
                    let fd = handed_over(next);
                    next += 1;
                    (fd, CloneFlags::from_bits_truncate(*kind))
                })
                .collect();
            let slave = stage.has_slave.then(|| {
                let fd = handed_over(next);
                next += 1;
                std::fs::File::from(fd)
            });
            let null = std::fs::File::from(handed_over(next));
            let old_mask = mask_from_numbers(&stage.old_mask);
            exec::join_and_run(
                &sys,
                &namespaces,
                &stage.process,
                slave.as_ref(),
                &null,
                (pid_w, go_r, &err_w),
                &old_mask,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signal_mask_survives_the_hand_over() {
        let mut mask = SigSet::empty();
        mask.add(Signal::SIGTERM);
        mask.add(Signal::SIGCHLD);
        let back = mask_from_numbers(&mask_to_numbers(&mask));
        assert!(back.contains(Signal::SIGTERM) && back.contains(Signal::SIGCHLD));
        assert!(!back.contains(Signal::SIGINT));
    }

    /// A pipe whose write end got `bytes` and was closed, as a file to read.
    fn pipe_with(bytes: &[u8]) -> std::fs::File {
        let (r, w) = sync::pipe().unwrap();
        std::fs::File::from(w).write_all(bytes).unwrap();
        std::fs::File::from(r)
    }

    #[test]
    fn the_stage_is_read_after_its_length() {
        let opts = super::super::spec::RunOptions {
            command: vec!["true".into()],
            ..Default::default()
        };
        let spec = ContainerSpec::new(None, &opts, "id".into(), "/tmp".into()).unwrap();
        let stage = Stage::Run(Box::new(RunStage {
            spec,
            rootfs: "/rootfs".into(),
            etc_dir: "/etc-dir".into(),
            default_nofile: 1024,
            console: None,
            cgroup_mounts: vec![],
            old_mask: vec![15],
        }));
        let json = serde_json::to_vec(&stage).unwrap();
        let mut bytes = (json.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(&json);
        let Ok(Stage::Run(back)) = read_stage(&mut pipe_with(&bytes)) else {
            panic!("the stage did not come back");
        };
        assert_eq!(back.rootfs, PathBuf::from("/rootfs"));
        assert_eq!(back.old_mask, vec![15]);
        // Cut short (the main process died while writing): an error, not a stage.
        assert!(read_stage(&mut pipe_with(&bytes[..bytes.len() - 1])).is_err());
        // A length beyond any setup is refused before anything is allocated.
        assert!(read_stage(&mut pipe_with(&u64::MAX.to_le_bytes())).is_err());
    }

    #[test]
    fn the_fork_waits_for_the_end_of_the_setup_pipe() {
        assert!(wait_for_fork(pipe_with(b"")).is_ok());
        assert!(wait_for_fork(pipe_with(b"x")).is_err());
    }

    #[test]
    fn copies_sit_above_the_hand_over_range() {
        let (r, w) = sync::pipe().unwrap();
        let sources = [r.as_raw_fd(), w.as_raw_fd(), 0, 1, 2];
        let plan = Plan::new(&sources).unwrap();
        for copy in &plan.copies {
            assert!(copy.as_raw_fd() >= FIRST_FD + sources.len() as RawFd);
        }
    }
}
