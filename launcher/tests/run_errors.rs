//! Bad input to `skiff run`: a clear message, docker's exit status (125 runtime error,
//! 126 cannot invoke, 127 not found) and nothing left behind.

mod common;

use common::{code, descendants_of, KillOnDrop, Rootfs};

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// No mounts left; like `docker ps -a`, a container that failed to start stays listed
/// (exited, with its error) unless --rm was given, and nothing of it runs.
fn assert_clean(r: &Rootfs) {
    r.assert_no_mounts();
    let containers = r.state.join("containers");
    for entry in std::fs::read_dir(&containers)
        .into_iter()
        .flatten()
        .flatten()
    {
        let state: serde_json::Value =
            serde_json::from_slice(&std::fs::read(entry.path().join("state.json")).unwrap())
                .unwrap();
        assert_eq!(state["status"], "exited", "{state}");
        assert!(state["error"].is_string(), "{state}");
        let pid1 = state["pid1"]["pid"].as_i64();
        assert!(pid1.is_none(), "never started: {state}");
    }
    // With --rm nothing is left at all.
    let before = std::fs::read_dir(&containers)
        .map(|d| d.count())
        .unwrap_or(0);
    let out = r.skiff(&["--rm", "-u", "nobody-here", "true"]);
    assert_eq!(code(&out), 125);
    let after = std::fs::read_dir(&containers)
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(before, after, "--rm leaves no state");
}

#[test]
fn unknown_user_is_125() {
    let r = Rootfs::new();
    let out = r.skiff(&["-u", "mallory", "true"]);
    assert_eq!(code(&out), 125);
    assert!(
        stderr(&out).contains("unable to find user mallory: no matching entries in passwd file"),
        "{}",
        stderr(&out)
    );
    let out = r.skiff(&["-u", "alice:nogroup", "true"]);
    assert_eq!(code(&out), 125);
    assert!(
        stderr(&out).contains("unable to find group nogroup"),
        "{}",
        stderr(&out)
    );
    assert_clean(&r);
}

#[test]
fn missing_command_is_127_and_not_executable_is_126() {
    let r = Rootfs::new();
    let out = r.skiff(&["nosuchcmd", "arg"]);
    assert_eq!(code(&out), 127);
    assert!(
        stderr(&out).contains("exec: \"nosuchcmd\": executable file not found in $PATH"),
        "{}",
        stderr(&out)
    );
    let out = r.skiff(&["/no/such/file"]);
    assert_eq!(code(&out), 127);
    let out = r.skiff(&["/etc/passwd"]);
    assert_eq!(code(&out), 126);
    assert!(
        stderr(&out).contains("permission denied"),
        "{}",
        stderr(&out)
    );
    assert_clean(&r);
}

#[test]
fn missing_volume_source_is_125() {
    let r = Rootfs::new();
    let missing = r.dir.path().join("does-not-exist");
    let vol = format!("{}:/data", missing.display());
    let out = r.skiff(&["--volume", &vol, "true"]);
    assert_eq!(code(&out), 125);
    assert!(
        stderr(&out).contains(&format!(
            "bind source path does not exist: {}",
            missing.display()
        )),
        "{}",
        stderr(&out)
    );
    assert_clean(&r);
}

#[test]
fn invalid_flag_values_are_125() {
    let r = Rootfs::new();
    for (args, needle) in [
        (
            &["--memory", "lots", "true"][..],
            "invalid memory size \"lots\"",
        ),
        (&["--cpus", "-2", "true"][..], "invalid --cpus value"),
        (&["--pids-limit", "abc", "true"][..], "invalid value 'abc'"),
        (&["--ulimit", "nofile=9:1", "true"][..], "invalid ulimit"),
        (
            &["--volume", "relative:/x", "true"][..],
            "invalid volume specification",
        ),
        // Any name may be a network made with `skiff network create`; docker's message.
        (
            &["--network", "bridge7", "true"][..],
            "network bridge7 not found",
        ),
        (
            &["--no-such-flag", "true"][..],
            "unknown flag: --no-such-flag",
        ),
    ] {
        let out = r.skiff(args);
        assert_eq!(code(&out), 125, "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(needle), "{args:?}: {}", stderr(&out));
    }
    let out = std::process::Command::new(common::skiff_bin())
        .env("SKIFF_NETWORK", "none")
        .args(["run", "--rootfs", "/nonexistent-rootfs", "true"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 125);
    assert!(
        stderr(&out).contains("/nonexistent-rootfs"),
        "{}",
        stderr(&out)
    );
    assert_clean(&r);
}

#[test]
fn exit_codes_and_flags_pass_through() {
    let r = Rootfs::new();
    let out = r.skiff(&["--rm", "sh", "-c", "exit 42"]);
    assert_eq!(code(&out), 42);

    // -e, --env-file, -w (created), --entrypoint, --hostname, HOME.
    let env_file = r.dir.path().join("env");
    std::fs::write(&env_file, "# comment\nFROMFILE=1\nA=file\n").unwrap();
    let out = r.skiff(&[
        "--rm",
        "-e",
        "A=flag",
        "--env-file",
        env_file.to_str().unwrap(),
        "-w",
        "/new/dir",
        "--hostname",
        "box",
        "--entrypoint",
        "/bin/sh",
        "--",
        "-c",
        "echo $A $FROMFILE $HOME; pwd; hostname; cat /etc/hostname",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "flag 1 /root\n/new/dir\nbox\nbox\n"
    );

    // -v ro/rw, --tmpfs, --read-only, --ulimit.
    let host = r.dir.path().join("host");
    std::fs::create_dir_all(&host).unwrap();
    std::fs::write(host.join("f"), "hello").unwrap();
    let ro = format!("{}:/ro:ro", host.display());
    let rw = format!("{}:/rw", host.display());
    let out = r.skiff(&[
        "--rm",
        "--read-only",
        "-w",
        "/made/for/ro",
        "--volume",
        &ro,
        "--volume",
        &rw,
        "--tmpfs",
        "/scratch",
        "--ulimit",
        "nofile=100:200",
        "sh",
        "-c",
        "cat /ro/f; echo; touch /ro/x 2>/dev/null || echo ro-denied; touch /rw/y && echo rw-ok; \
         touch /etc/z 2>/dev/null || echo root-ro; touch /scratch/s && echo tmpfs-ok; \
         ulimit -n; ulimit -Hn; pwd",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello\nro-denied\nrw-ok\nroot-ro\ntmpfs-ok\n100\n200\n/made/for/ro\n"
    );
    assert!(host.join("y").exists());
    assert!(!r.rootfs.join("scratch/s").exists());

    // stdin is /dev/null without -i, passed through with -i.
    let mut child = r
        .skiff_cmd(&["--rm", "-i", "cat"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"piped input")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "piped input");
    assert_clean(&r);
}

#[test]
fn host_network_and_privileged() {
    let r = Rootfs::new();
    let out = r.skiff(&["--rm", "sh", "-c", "cat /proc/net/dev | tail -n +3 | wc -l"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1", "only lo");
    let host_ifaces = std::fs::read_to_string("/proc/net/dev")
        .unwrap()
        .lines()
        .count()
        - 2;
    let out = r.skiff(&[
        "--rm",
        "--network",
        "host",
        "sh",
        "-c",
        "cat /proc/net/dev | tail -n +3 | wc -l",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        host_ifaces.to_string()
    );

    let ours = std::fs::read_to_string("/proc/self/status").unwrap();
    let cap_bnd = ours
        .lines()
        .find(|l| l.starts_with("CapBnd"))
        .unwrap()
        .to_string();
    let out = r.skiff(&[
        "--rm",
        "--privileged",
        "sh",
        "-c",
        "grep -E '^CapBnd|^CapEff|NoNewPrivs' /proc/self/status",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&cap_bnd), "{text}");
    assert!(
        text.contains(&cap_bnd.replace("CapBnd", "CapEff")),
        "{text}"
    );
    assert!(text.contains("NoNewPrivs:\t0"), "{text}");
}

#[test]
fn device_access_is_limited_to_the_defaults() {
    let r = Rootfs::new();
    // CAP_MKNOD is in Docker's set, so a node can be made; the devices cgroup stops it
    // from being opened. /dev/fuse (10:229) needs no capability to open, so only the
    // cgroup makes the difference; --privileged lifts it.
    let script = "mkdir -p /t && rm -f /t/fuse && mknod /t/fuse c 10 229 && echo made; \
                  (exec 3<>/t/fuse) 2>/dev/null && echo opened || echo denied; \
                  echo x > /dev/null && echo null-ok";
    let out = r.skiff(&["--rm", "sh", "-c", script]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "made\ndenied\nnull-ok\n"
    );
    let out = r.skiff(&["--rm", "--privileged", "sh", "-c", script]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "made\nopened\nnull-ok\n"
    );
    let _ = std::fs::remove_dir_all(r.rootfs.join("t"));
}

#[test]
fn no_descriptor_leaks_into_the_container() {
    use std::os::unix::process::CommandExt;
    let r = Rootfs::new();
    let secret = std::fs::File::open("/proc/self/status").unwrap();
    let raw = std::os::fd::AsRawFd::as_raw_fd(&secret);
    let mut cmd = r.skiff_cmd(&["--rm", "ls", "/proc/self/fd"]);
    // Hand skiff an inheritable fd 7, as a careless parent (or the FUSE server) might.
    // SAFETY: dup2 in the child before exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(raw, 7) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    // 0-2 and ls's own directory fd (3).
    assert_eq!(String::from_utf8_lossy(&out.stdout), "0\n1\n2\n3\n");
}

#[test]
fn signals_are_forwarded_to_pid1() {
    let r = Rootfs::new();
    let mut child = KillOnDrop::spawn(
        r.skiff_cmd(&[
            "--rm",
            "sh",
            "-c",
            "trap 'echo got-term; exit 7' TERM; echo ready; while :; do sleep 0.05; done",
        ])
        .stdout(std::process::Stdio::piped()),
    );
    let mut stdout = child.stdout.take().unwrap();
    let mut buf = [0u8; 6];
    use std::io::Read;
    stdout.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ready\n");
    // Everything skiff started for the container (its PID 1 at least).
    let started = descendants_of(child.id() as i32);
    assert!(!started.is_empty(), "skiff runs no container");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "got-term\n");
    assert_eq!(status.code(), Some(7));
    // No child of skiff's outlives it, running or as a zombie: each is gone from /proc
    // (skiff waited for them; an orphan would be re-parented and still listed).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut left = started.clone();
    while !left.is_empty() && std::time::Instant::now() < deadline {
        left.retain(|p| std::path::Path::new(&format!("/proc/{p}")).exists());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let states: Vec<String> = left
        .iter()
        .map(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default())
        .collect();
    assert!(left.is_empty(), "left behind by skiff: {states:?}");
    r.assert_no_mounts();
}
