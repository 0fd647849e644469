//! `-t`: a pseudo-terminal for the container, the host terminal in raw mode while it
//! runs, and the window size kept in sync (SIGWINCH is handled by the wait loop).

use super::sys::Syscall;
use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt, PtyMaster};
use nix::sys::termios::{self, SetArg, Termios};
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::PathBuf;

/// Errors from creating or driving the pty.
#[derive(Debug, thiserror::Error)]
pub enum TerminalError {
    /// A pty or termios call failed.
    #[error("{0}: {1}")]
    Sys(&'static str, nix::errno::Errno),
}

nix::ioctl_read_bad!(get_winsize, libc::TIOCGWINSZ, libc::winsize);
nix::ioctl_write_ptr_bad!(set_winsize, libc::TIOCSWINSZ, libc::winsize);

/// A pty pair allocated on the host's devpts; the slave becomes the container's
/// stdio and /dev/console.
pub struct Pty {
    master: PtyMaster,
    /// Host path of the slave (bind-mounted onto /dev/console).
    pub slave_path: PathBuf,
}

fn stdin_fd() -> BorrowedFd<'static> {
    // SAFETY: fd 0 stays open for the life of the process.
    unsafe { BorrowedFd::borrow_raw(0) }
}

/// Copies the host terminal's window size (if stdin is a terminal) to `fd`.
fn copy_winsize(to: BorrowedFd<'_>) {
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: ioctls on valid fds with a properly sized struct.
    unsafe {
        if get_winsize(0, &mut ws).is_ok() && ws.ws_row > 0 {
            let _ = set_winsize(to.as_raw_fd(), &ws);
        }
    }
}

impl Pty {
    /// Opens a new pty pair and gives it the host terminal's window size.
    pub fn open() -> Result<Pty, TerminalError> {
        use nix::fcntl::OFlag;
        let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
            .map_err(|e| TerminalError::Sys("posix_openpt", e))?;
        grantpt(&master).map_err(|e| TerminalError::Sys("grantpt", e))?;
        unlockpt(&master).map_err(|e| TerminalError::Sys("unlockpt", e))?;
        let slave_path =
            PathBuf::from(ptsname_r(&master).map_err(|e| TerminalError::Sys("ptsname", e))?);
        copy_winsize(master.as_fd());
        Ok(Pty { master, slave_path })
    }

    /// Opens the slave side, not as this process's controlling terminal. `skiff exec`
    /// opens it before its process joins the container's mount namespace, where the
    /// host's devpts (and so the slave's path) is out of sight.
    pub fn open_slave(&self) -> std::io::Result<std::fs::File> {
        open_slave(&self.slave_path)
    }
}

/// Opens the pty slave at `path`, not as this process's controlling terminal.
pub fn open_slave(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)
}

/// A new session with the pty slave `slave` as its controlling terminal and as
/// stdin, stdout and stderr.
pub fn attach_controlling(sys: &dyn Syscall, slave: BorrowedFd<'_>) -> std::io::Result<()> {
    let io = |e: super::sys::SysError| std::io::Error::from(e.errno);
    sys.setsid().map_err(io)?;
    sys.set_controlling_terminal(slave).map_err(io)?;
    for fd in 0..3 {
        sys.dup2(slave, fd).map_err(io)?;
    }
    Ok(())
}

/// The host side of a running `-t` container: raw mode and the copy threads.
pub struct Session {
    master: std::fs::File,
    saved: Option<Termios>,
    output: Option<std::thread::JoinHandle<()>>,
}

impl Session {
    /// Puts the host terminal in raw mode and starts copying (stdin only if `stdin`).
    pub fn start(pty: Pty, stdin: bool) -> Result<Session, TerminalError> {
        let master = std::fs::File::from(std::os::fd::OwnedFd::from(pty.master));
        let saved = termios::tcgetattr(stdin_fd()).ok();
        if let Some(t) = &saved {
            let mut raw = t.clone();
            termios::cfmakeraw(&mut raw);
            termios::tcsetattr(stdin_fd(), SetArg::TCSANOW, &raw)
                .map_err(|e| TerminalError::Sys("tcsetattr", e))?;
        }
        let mut out = master.try_clone().map_err(|e| {
            TerminalError::Sys(
                "dup",
                nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(0)),
            )
        })?;
        let output = std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            let mut stdout = std::io::stdout();
            // Ends with EIO once every slave fd is closed.
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 || stdout.write_all(&buf[..n]).is_err() {
                    break;
                }
                let _ = stdout.flush();
            }
        });
        if stdin {
            let mut input = master.try_clone().map_err(|e| {
                TerminalError::Sys(
                    "dup",
                    nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(0)),
                )
            })?;
            // Detached: it blocks on our stdin and ends with the process.
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut std::io::stdin().lock(), &mut input);
            });
        }
        Ok(Session {
            master,
            saved,
            output: Some(output),
        })
    }

    /// Forwards the host window size to the container (on SIGWINCH).
    pub fn resize(&mut self) {
        copy_winsize(self.master.as_fd());
    }

    /// Drains the output and restores the host terminal.
    pub fn finish(&mut self) {
        if let Some(h) = self.output.take() {
            let _ = h.join();
        }
        if let Some(t) = self.saved.take() {
            let _ = termios::tcsetattr(stdin_fd(), SetArg::TCSANOW, &t);
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(t) = self.saved.take() {
            let _ = termios::tcsetattr(stdin_fd(), SetArg::TCSANOW, &t);
        }
    }
}
