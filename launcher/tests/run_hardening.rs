//! Issue 16's launcher hardening, on real containers: /proc is nosuid,nodev,noexec;
//! the container sees its own cgroup limits read-only at /sys/fs/cgroup; an image
//! whose /dev is a symlink gets no device nodes outside its rootfs; a SIGKILLed skiff
//! takes its container's PID 1 with it; the state root keeps host users out.

mod common;

use common::{code, wait_for_child_of, Rootfs};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::process::Output;
use std::time::{Duration, Instant};

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn describe(out: &Output) -> String {
    format!(
        "exit {}\nstdout: {}\nstderr: {}",
        code(out),
        stdout(out),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn proc_is_mounted_nosuid_nodev_noexec() {
    let r = Rootfs::new();
    let out = r.skiff(&["--rm", "cat", "/proc/self/mountinfo"]);
    assert_eq!(code(&out), 0, "{}", describe(&out));
    let info = stdout(&out);
    let proc_line = info
        .lines()
        .find(|l| l.split(' ').nth(4) == Some("/proc"))
        .unwrap_or_else(|| panic!("no /proc mount in {info}"));
    let opts = proc_line.split(' ').nth(5).unwrap();
    for flag in ["nosuid", "nodev", "noexec"] {
        assert!(opts.split(',').any(|o| o == flag), "{proc_line}");
    }
    r.assert_no_mounts();
}

#[test]
fn powercap_is_masked_where_the_host_has_it() {
    if !std::path::Path::new("/sys/devices/virtual/powercap").is_dir() {
        eprintln!("skipped: the host has no /sys/devices/virtual/powercap");
        return;
    }
    let r = Rootfs::new();
    let out = r.skiff(&["--rm", "ls", "-A", "/sys/devices/virtual/powercap"]);
    assert_eq!(code(&out), 0, "{}", describe(&out));
    assert_eq!(stdout(&out), "", "powercap is an empty tmpfs");
}

#[test]
fn the_container_reads_its_memory_limit_read_only() {
    let r = Rootfs::new();
    // v1 (this host) or v2: whichever file there is.
    let script =
        "for f in /sys/fs/cgroup/memory.max /sys/fs/cgroup/memory/memory.limit_in_bytes; do \
                  [ -f $f ] && { cat $f; echo 1 > $f && echo WRITABLE; }; done; true";
    let out = r.skiff(&["--rm", "--memory", "64m", "sh", "-c", script]);
    assert_eq!(code(&out), 0, "{}", describe(&out));
    let text = stdout(&out);
    assert!(text.lines().any(|l| l == "67108864"), "{}", describe(&out));
    assert!(!text.contains("WRITABLE"), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Read-only file system"),
        "{}",
        describe(&out)
    );
    r.assert_no_mounts();
}

#[test]
fn a_dev_symlink_gets_no_device_nodes_outside_the_rootfs() {
    let r = Rootfs::new();
    let evil = std::path::PathBuf::from(format!(
        "/tmp/evil-{}-{}",
        std::process::id(),
        r.dir.path().file_name().unwrap().to_string_lossy()
    ));
    std::fs::create_dir_all(&evil).unwrap();
    std::os::unix::fs::symlink(&evil, r.rootfs.join("dev")).unwrap();
    let out = r.skiff(&["--rm", "sh", "-c", "echo hi > /dev/null && echo ok"]);
    let left: Vec<String> = std::fs::read_dir(&evil)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let any_device = std::fs::read_dir(&evil)
        .unwrap()
        .flatten()
        .any(|e| e.file_type().is_ok_and(|t| t.is_char_device()));
    std::fs::remove_dir_all(&evil).unwrap();
    assert!(
        left.is_empty() && !any_device,
        "skiff created {left:?} in the host's {}",
        evil.display()
    );
    // Inside the container the link points into the rootfs, where /dev is set up.
    assert_eq!(code(&out), 0, "{}", describe(&out));
    assert_eq!(stdout(&out), "ok\n");
    r.assert_no_mounts();
}

#[test]
fn a_sigkilled_skiff_takes_pid1_with_it() {
    let r = Rootfs::new();
    let mut child = r
        .skiff_cmd(&["--rm", "sleep", "1000"])
        .spawn()
        .expect("skiff starts");
    let sleep = wait_for_child_of(child.id(), "sleep");
    child.kill().unwrap();
    let _ = child.wait();
    let deadline = Instant::now() + Duration::from_secs(10);
    let gone = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            // A zombie is gone as far as the container is concerned.
            .map(|s| {
                s.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
            .unwrap_or(true)
    };
    while !gone(sleep) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let survived = !gone(sleep);
    if survived {
        let _ = nix_kill(sleep);
    }
    assert!(!survived, "PID 1 ({sleep}) outlived its monitor");
}

fn nix_kill(pid: i32) -> std::io::Result<()> {
    let status = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()?;
    assert!(status.success());
    Ok(())
}

#[test]
fn host_users_cannot_enter_the_state_root() {
    let r = Rootfs::new();
    let out = r.skiff(&["-d", "--name", "perm", "sleep", "100"]);
    assert_eq!(code(&out), 0, "{}", describe(&out));
    let id = stdout(&out).trim().to_string();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    let dir = r.state.join("containers").join(&id);
    assert_eq!(mode(&r.state), 0o711);
    assert_eq!(mode(&r.state.join("containers")), 0o700);
    assert_eq!(mode(&dir.join("state.json")), 0o600);
    assert_eq!(mode(&dir.join("container.log")), 0o600);
    let stop = r.skiff_stop(&["stop", "-t", "0", "perm"]);
    assert_eq!(code(&stop), 0, "{}", describe(&stop));
    let _ = r.skiff_stop(&["rm", "perm"]);
}

/// `skiff --root STATE <args>` for the commands after `run`.
trait OtherCommands {
    fn skiff_stop(&self, args: &[&str]) -> Output;
}

impl OtherCommands for Rootfs {
    fn skiff_stop(&self, args: &[&str]) -> Output {
        std::process::Command::new(common::skiff_bin())
            .arg("--root")
            .arg(&self.state)
            .args(args)
            .output()
            .unwrap()
    }
}
