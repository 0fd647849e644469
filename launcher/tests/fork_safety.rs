//! Issue 16, "no fork() with allocation and file I/O in the child while FUSE and tokio
//! threads run": the container's setup (for `skiff run` and `skiff exec`) runs in a
//! freshly executed `skiff container-init` with one thread, not in a fork of the
//! (threaded) skiff, where a lock another thread held at the fork would stay held.
//!
//! The setup is caught in the act: the container's /etc/passwd is a FIFO, so the
//! setup blocks in its user lookup until the test writes the file. Meanwhile the
//! test looks at the process doing the setup.

mod common;

use common::{code, stderr_text, KillOnDrop, Rootfs};
use std::ffi::CString;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000:Alice:/home/alice:/bin/sh\n";

/// Replaces `path` with a FIFO.
fn make_fifo(path: &Path) {
    let _ = std::fs::remove_file(path);
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: mkfifo on a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
}

/// Waits until someone opens the FIFO at `path` for reading, and returns its write
/// end (opening it non-blocking fails with ENXIO while there is no reader).
fn wait_for_reader(path: &Path) -> std::fs::File {
    let start = Instant::now();
    loop {
        match std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
        {
            Ok(f) => return f,
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {}
            Err(e) => panic!("opening {}: {e}", path.display()),
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "nobody read {}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Puts a regular /etc/passwd in the FIFO's place (for the container's own `id`),
/// then gives the setup, which has the FIFO open, its content.
fn let_setup_go_on(passwd: &Path, mut writer: std::fs::File) {
    let file = passwd.with_extension("new");
    std::fs::write(&file, PASSWD).unwrap();
    std::fs::rename(&file, passwd).unwrap();
    writer.write_all(PASSWD.as_bytes()).unwrap();
}

/// What the process doing the setup is: its command line (NUL-separated arguments)
/// and thread count, for `skiff`'s only descendant, and its `/proc/<pid>/exe`.
fn setup_process(skiff_pid: u32) -> (Vec<String>, String, std::path::PathBuf) {
    let pids = common::descendants_of(skiff_pid as i32);
    assert_eq!(pids.len(), 1, "one process sets the container up: {pids:?}");
    let pid = pids[0];
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let args = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let threads = status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .unwrap_or("")
        .trim()
        .to_string();
    let exe = std::path::PathBuf::from(format!("/proc/{pid}/exe"));
    (args, threads, exe)
}

/// Waits for `child` (stdout and stderr piped): (exit code, stdout, stderr).
fn finish(mut child: KillOnDrop) -> (i32, String, String) {
    let (mut out, mut err) = (String::new(), String::new());
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let status = child.wait().unwrap();
    (status.code().unwrap_or(-1), out, err)
}

/// Asserts the setup runs in `skiff container-init` with one thread.
fn assert_fresh_setup(skiff_pid: u32) {
    let (args, threads, exe) = setup_process(skiff_pid);
    assert_eq!(
        args.get(1).map(String::as_str),
        Some("container-init"),
        "the setup runs in a fork of skiff, not a fresh skiff: {args:?}"
    );
    assert_eq!(args.len(), 2, "{args:?}");
    assert_eq!(threads, "1");
    // skiff's binary, through the read-only handle the setup executes
    // (CVE-2019-5736): the same file's size, and no opening it for writing.
    assert_eq!(
        std::fs::metadata(&exe).unwrap().len(),
        std::fs::metadata(common::skiff_bin()).unwrap().len()
    );
    let write = std::fs::OpenOptions::new().write(true).open(&exe);
    assert_eq!(
        write.err().and_then(|e| e.raw_os_error()),
        Some(libc::EROFS),
        "the setup's executable can be opened for writing"
    );
}

#[test]
fn run_sets_the_container_up_in_a_freshly_executed_skiff() {
    let fs = Rootfs::new();
    let passwd = fs.rootfs.join("etc/passwd");
    make_fifo(&passwd);
    let skiff = KillOnDrop::spawn(
        fs.skiff_cmd(&["--rm", "sh", "-c", "echo started; id -un"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let writer = wait_for_reader(&passwd);
    assert_fresh_setup(skiff.id());
    let_setup_go_on(&passwd, writer);
    let (status, stdout, stderr) = finish(skiff);
    assert_eq!(status, 0, "{stderr}");
    assert_eq!(stdout, "started\nroot\n");
    fs.assert_no_mounts();
}

#[test]
fn exec_sets_the_process_up_in_a_freshly_executed_skiff() {
    let fs = Rootfs::new();
    let out = fs.skiff(&["-d", "--name", "forksafe", "sleep", "300"]);
    assert_eq!(code(&out), 0, "{}", stderr_text(&out));
    // The running container's /etc/passwd (the rootfs directory is its root).
    let passwd = fs.rootfs.join("etc/passwd");
    make_fifo(&passwd);
    let exec = KillOnDrop::spawn(
        std::process::Command::new(common::skiff_bin())
            .arg("--root")
            .arg(&fs.state)
            .args(["exec", "forksafe", "id", "-un"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let writer = wait_for_reader(&passwd);
    assert_fresh_setup(exec.id());
    let_setup_go_on(&passwd, writer);
    let (status, stdout, stderr) = finish(exec);
    assert_eq!(status, 0, "{stderr}");
    assert_eq!(stdout, "root\n");
    let out = fs.skiff_at_root(&["stop", "-t", "0", "forksafe"]);
    assert_eq!(code(&out), 0, "{}", stderr_text(&out));
}
