//! The pipes the three phases talk over, all close-on-exec:
//!
//! - *pid*: the intermediate process tells the main process PID 1's host pid;
//! - *go*: the main process tells PID 1 it is in its cgroups and may set up; it
//!   keeps its end open until PID 1 has exec'd, so PID 1 can tell whether its monitor
//!   is still there ([`writer_gone`]);
//! - *error*: a phase that fails before exec writes its exit status and message;
//!   a successful exec closes the pipe, so the main process reads EOF.

use super::process::InitError;
use super::RunError;
use std::io::Read;
use std::os::fd::OwnedFd;

/// One pipe: (read end, write end), both close-on-exec.
pub fn pipe() -> Result<(OwnedFd, OwnedFd), RunError> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| RunError::Os("pipe", e))
}

/// Reads until `buf` is full or the writer is gone; returns how many bytes came.
pub fn read_full(fd: &OwnedFd, buf: &mut [u8]) -> usize {
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

/// Whether every write end of the pipe whose read end is `fd` is closed (POLLHUP),
/// without blocking: for PID 1, whether the main process has died.
pub fn writer_gone(fd: &OwnedFd) -> bool {
    use std::os::fd::AsRawFd;
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll on one pollfd we own, without waiting.
    let r = unsafe { libc::poll(&mut pfd, 1, 0) };
    r > 0 && pfd.revents & libc::POLLHUP != 0
}

/// The main process's side of the pid pipe: reads the pid the intermediate process
/// sends, and reaps that process. Without a pid, the error it (or its child) reported,
/// else `what` failed with ECHILD. Gives the error pipe back when there is a pid.
pub fn receive_pid(
    pid_r: &OwnedFd,
    intermediate: nix::unistd::Pid,
    err_r: OwnedFd,
    what: &'static str,
) -> Result<(nix::unistd::Pid, OwnedFd), RunError> {
    let mut buf = [0u8; 4];
    let got = read_full(pid_r, &mut buf);
    let _ = nix::sys::wait::waitpid(intermediate, None);
    if got != 4 {
        return Err(read_failure(err_r).unwrap_or(RunError::Os(what, nix::errno::Errno::ECHILD)));
    }
    Ok((nix::unistd::Pid::from_raw(i32::from_ne_bytes(buf)), err_r))
}

/// Sends a pre-exec failure to the main process and exits (child side only).
pub fn report_failure(err_w: &OwnedFd, e: &InitError) -> ! {
    let mut msg = vec![e.code];
    msg.extend_from_slice(e.message.as_bytes());
    let _ = nix::unistd::write(err_w, &msg);
    // SAFETY: _exit is always safe; we must not run the parent's destructors in a fork.
    unsafe { libc::_exit(e.code as i32) }
}

/// Reads the error pipe to EOF: empty means exec succeeded.
pub fn read_failure(err_r: OwnedFd) -> Option<RunError> {
    let mut msg = Vec::new();
    let _ = std::fs::File::from(err_r).read_to_end(&mut msg);
    let (code, text) = msg.split_first()?;
    Some(RunError::Init(InitError {
        code: *code,
        message: String::from_utf8_lossy(text).into_owned(),
    }))
}
