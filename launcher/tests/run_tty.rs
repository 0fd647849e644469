//! `-t -i` under a real pty: the shell prompt appears, `stty size` reports the host
//! window size, and a window change (SIGWINCH) reaches the container.

mod common;

use common::{KillOnDrop, Rootfs};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn set_size(fd: i32, rows: u16, cols: u16) {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ with a valid winsize on an open pty fd.
    assert_eq!(unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) }, 0);
}

/// Waits until the output collected so far contains `needle`.
fn wait_for(buf: &Arc<Mutex<Vec<u8>>>, needle: &str) -> String {
    wait_within(buf, needle, Duration::from_secs(20))
        .unwrap_or_else(|text| panic!("no {needle:?} in {text:?}"))
}

/// The output once it contains `needle`, or (as the error) the output after `limit`.
fn wait_within(buf: &Arc<Mutex<Vec<u8>>>, needle: &str, limit: Duration) -> Result<String, String> {
    let start = Instant::now();
    loop {
        let text = String::from_utf8_lossy(&buf.lock().unwrap()).into_owned();
        if text.contains(needle) {
            return Ok(text);
        }
        if start.elapsed() >= limit {
            return Err(text);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn tty_prompt_size_and_resize() {
    let r = Rootfs::new();
    let pty = nix::pty::openpty(None, None).unwrap();
    set_size(pty.slave.as_raw_fd(), 33, 97);
    let slave = std::fs::File::from(pty.slave);
    let mut cmd = r.skiff_cmd(&["--rm", "-t", "-i", "sh"]);
    cmd.stdin(slave.try_clone().unwrap())
        .stdout(slave.try_clone().unwrap())
        .stderr(slave.try_clone().unwrap());
    // skiff gets the pty as its controlling terminal, like in a real terminal session.
    // SAFETY: setsid and TIOCSCTTY are async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = KillOnDrop::spawn(&mut cmd);
    // The Command holds copies of the slave: drop them so the master sees EOF at exit.
    drop(cmd);
    drop(slave);
    let mut master = std::fs::File::from(pty.master);
    let out = Arc::new(Mutex::new(Vec::new()));
    let reader = {
        let out = out.clone();
        let mut m = master.try_clone().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = m.read(&mut buf) {
                if n == 0 {
                    break;
                }
                out.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        })
    };

    wait_for(&out, "# "); // busybox sh's root prompt
    master.write_all(b"stty size; tty\r").unwrap();
    let text = wait_for(&out, "33 97");
    assert!(
        text.contains("/dev/console"),
        "the pty is the container's console: {text:?}"
    );

    // Resize the outer terminal: the kernel sends skiff SIGWINCH, skiff resizes the
    // container's pty. Ask again until the new size shows (the signal is asynchronous),
    // within a bound.
    set_size(master.as_raw_fd(), 40, 120);
    let start = Instant::now();
    loop {
        master.write_all(b"stty size\r").unwrap();
        match wait_within(&out, "40 120", Duration::from_millis(500)) {
            Ok(_) => break,
            Err(text) => assert!(
                start.elapsed() < Duration::from_secs(20),
                "the container never saw the resize: {text:?}"
            ),
        }
    }

    master.write_all(b"exit 5\r").unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(5));
    drop(master);
    let _ = reader.join();
    r.assert_no_mounts();
}
