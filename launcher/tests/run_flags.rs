//! docker's run flags with docker's meaning: --init, --device, --mount, --group-add,
//! --shm-size, --sysctl, --stop-signal, --label, --memory-swap, --cpuset-cpus,
//! --restart.

mod common;

use common::{code, stderr_text as err, stdout_text as text, Rootfs};

/// `skiff run --rm --rootfs … <args>`, asserting exit 0; its stdout.
fn run_ok(r: &Rootfs, args: &[&str]) -> String {
    let mut all = vec!["--rm"];
    all.extend_from_slice(args);
    let out = r.skiff(&all);
    assert_eq!(code(&out), 0, "{args:?}: {}", err(&out));
    text(&out)
}

#[test]
fn init_runs_tini_as_pid_1() {
    let r = Rootfs::new();
    let out = run_ok(
        &r,
        &["--init", "sh", "-c", "tr '\\0' ' ' < /proc/1/cmdline"],
    );
    assert_eq!(
        out,
        "/sbin/docker-init -- sh -c tr '\\0' ' ' < /proc/1/cmdline "
    );
    // Bound read-only.
    let out = r.skiff(&["--rm", "--init", "sh", "-c", "echo x > /sbin/docker-init"]);
    assert_ne!(code(&out), 0);
    // tini forwards SIGTERM to the command (a plain PID 1 would ignore it): stop
    // needs no SIGKILL.
    let out = r.skiff(&["-d", "--init", "--name", "t", "sleep", "100"]);
    assert_eq!(code(&out), 0, "{}", err(&out));
    let started = std::time::Instant::now();
    assert_eq!(code(&r.skiff_at_root(&["stop", "-t", "20", "t"])), 0);
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    let ps = text(&r.skiff_at_root(&["ps", "-a"]));
    assert!(ps.contains("Exited (143)"), "{ps}");
}

#[test]
fn device_appears_and_its_cgroup_rule_allows_it() {
    let r = Rootfs::new();
    let host = "/dev/loop-control";
    assert!(
        std::path::Path::new(host).exists(),
        "{host} is needed (loop module)"
    );
    let out = run_ok(
        &r,
        &[
            "--device",
            &format!("{host}:/dev/lc"),
            "sh",
            "-c",
            "ls -l /dev/lc; : < /dev/lc && echo opened",
        ],
    );
    assert!(out.starts_with("crw"), "{out}");
    assert!(out.contains("10, 237"), "{out}");
    assert!(out.ends_with("opened\n"), "{out}");
    // Without --device, a node made by hand cannot be opened (the default rules).
    let out = r.skiff(&["--rm", "sh", "-c", "mknod /dev/lc c 10 237 && : < /dev/lc"]);
    assert_ne!(code(&out), 0);
    assert!(err(&out).contains("not permitted"), "{}", err(&out));
    // PERMS: read only.
    let out = r.skiff(&[
        "--rm",
        "--device",
        &format!("{host}:/dev/lc:r"),
        "sh",
        "-c",
        ": < /dev/lc && echo read; : > /dev/lc",
    ]);
    assert_ne!(code(&out), 0);
    assert_eq!(text(&out), "read\n");
    let out = r.skiff(&["--rm", "--device", "/etc/hostname", "true"]);
    assert_eq!(code(&out), 125);
}

#[test]
fn mount_bind_and_tmpfs() {
    let r = Rootfs::new();
    let data = r.dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("f"), "hello\n").unwrap();
    let bind = format!("type=bind,source={},target=/data,readonly", data.display());
    let out = r.skiff(&[
        "--rm",
        "--mount",
        &bind,
        "sh",
        "-c",
        "cat /data/f; touch /data/g",
    ]);
    assert_eq!(text(&out), "hello\n");
    assert_ne!(code(&out), 0, "read-only bind");
    assert!(!data.join("g").exists());
    let rw = format!("type=bind,src={},dst=/data", data.display());
    run_ok(&r, &["--mount", &rw, "touch", "/data/g"]);
    assert!(data.join("g").exists());

    let mounts = run_ok(
        &r,
        &[
            "--mount",
            "type=tmpfs,target=/scratch,tmpfs-size=1m,tmpfs-mode=1770",
            "--tmpfs",
            "/run2:size=2m,exec",
            "grep",
            "-E",
            " /(scratch|run2) ",
            "/proc/mounts",
        ],
    );
    let scratch = mounts.lines().find(|l| l.contains("/scratch")).unwrap();
    assert!(scratch.starts_with("tmpfs /scratch tmpfs"), "{scratch}");
    assert!(
        scratch.contains("size=1024k") && scratch.contains("mode=1770"),
        "{scratch}"
    );
    assert!(scratch.contains("noexec"), "{scratch}");
    let run2 = mounts.lines().find(|l| l.contains("/run2")).unwrap();
    assert!(
        run2.contains("size=2048k") && !run2.contains("noexec"),
        "{run2}"
    );

    let out = r.skiff(&["--rm", "--mount", "type=volume,source=v,target=/v", "true"]);
    assert_eq!(code(&out), 125);
    assert!(
        err(&out).contains("named volumes are not supported"),
        "{}",
        err(&out)
    );
}

#[test]
fn group_add_shm_size_and_sysctl() {
    let r = Rootfs::new();
    let groups = run_ok(
        &r,
        &[
            "-u",
            "alice",
            "--group-add",
            "4000",
            "--group-add",
            "root",
            "grep",
            "^Groups:",
            "/proc/self/status",
        ],
    );
    assert_eq!(
        groups.split_whitespace().collect::<Vec<_>>(),
        ["Groups:", "0", "10", "4000"]
    );
    let out = r.skiff(&["--rm", "--group-add", "nosuchgroup", "true"]);
    assert_eq!(code(&out), 125);

    let shm = run_ok(
        &r,
        &["--shm-size", "8m", "grep", " /dev/shm ", "/proc/mounts"],
    );
    assert!(shm.contains("size=8192k"), "{shm}");
    let shm = run_ok(&r, &["grep", " /dev/shm ", "/proc/mounts"]);
    assert!(shm.contains("size=65536k"), "default 64m: {shm}");

    let out = run_ok(
        &r,
        &[
            "--sysctl",
            "kernel.shmmax=123456",
            "--sysctl",
            "net.ipv4.ip_forward=1",
            "cat",
            "/proc/sys/kernel/shmmax",
            "/proc/sys/net/ipv4/ip_forward",
        ],
    );
    assert_eq!(out, "123456\n1\n");
    let host_shmmax = std::fs::read_to_string("/proc/sys/kernel/shmmax").unwrap();
    assert_ne!(
        host_shmmax.trim(),
        "123456",
        "the host's value is untouched"
    );
    for (flags, says) in [
        (&["--sysctl", "vm.swappiness=1"][..], "not allowed"),
        (
            &["--network", "host", "--sysctl", "net.ipv4.ip_forward=1"][..],
            "host's network",
        ),
    ] {
        let mut args = vec!["--rm"];
        args.extend_from_slice(flags);
        args.push("true");
        let out = r.skiff(&args);
        assert_eq!(code(&out), 125, "{flags:?}");
        assert!(err(&out).contains(says), "{}", err(&out));
    }
}

/// Waits until detached container `name` has printed `ready` (its trap is set).
fn wait_ready(r: &Rootfs, name: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !text(&r.skiff_at_root(&["logs", name])).starts_with("ready\n") {
        assert!(
            std::time::Instant::now() < deadline,
            "{name} never set its trap"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Waits until `skiff ps -a` shows container `name` with `status`.
fn wait_status(r: &Rootfs, name: &str, status: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let ps = text(&r.skiff_at_root(&["ps", "-a", "--filter", &format!("name={name}")]));
        if ps.contains(status) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{ps}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn kill_signals_pid_1_at_once() {
    let r = Rootfs::new();
    let script = "trap 'echo got; exit 3' HUP; echo ready; while :; do sleep 0.05; done";
    let out = r.skiff(&["-d", "--name", "k", "sh", "-c", script]);
    assert_eq!(code(&out), 0, "{}", err(&out));
    wait_ready(&r, "k");
    let out = r.skiff_at_root(&["kill", "-s", "HUP", "k"]);
    assert_eq!(code(&out), 0, "{}", err(&out));
    assert_eq!(text(&out), "k\n");
    wait_status(&r, "k", "Exited (3)");
    assert_eq!(text(&r.skiff_at_root(&["logs", "k"])), "ready\ngot\n");
    // Not running any more.
    let out = r.skiff_at_root(&["kill", "k"]);
    assert_eq!(code(&out), 1);
    assert!(err(&out).contains("is not running"), "{}", err(&out));

    // SIGKILL by default, which no trap catches.
    let out = r.skiff(&["-d", "--name", "k2", "sh", "-c", script]);
    assert_eq!(code(&out), 0, "{}", err(&out));
    wait_ready(&r, "k2");
    let out = r.skiff_at_root(&["kill", "--signal", "NOPE", "k2"]);
    assert_eq!(code(&out), 125);
    assert!(err(&out).contains("invalid signal"), "{}", err(&out));
    assert_eq!(code(&r.skiff_at_root(&["kill", "k2"])), 0);
    wait_status(&r, "k2", "Exited (137)");
}

#[test]
fn stop_signal_and_labels() {
    let r = Rootfs::new();
    // PID 1 of a PID namespace only gets the signals it has a handler for: the
    // script says when its trap is in place, and the test waits for that.
    let script = "trap 'echo got; exit 5' USR1; echo ready; while :; do sleep 0.05; done";
    let wait_ready = |name: &str| wait_ready(&r, name);
    for (name, label) in [("web", "tier=web"), ("db", "tier=db")] {
        let out = r.skiff(&[
            "-d",
            "--name",
            name,
            "--stop-signal",
            "SIGUSR1",
            "--label",
            label,
            "sh",
            "-c",
            script,
        ]);
        assert_eq!(code(&out), 0, "{}", err(&out));
    }
    let names = |filter: &str| -> Vec<String> {
        let out = r.skiff_at_root(&["ps", "-a", "--filter", filter]);
        assert_eq!(code(&out), 0, "{}", err(&out));
        let mut v: Vec<String> = text(&out)
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().last().map(str::to_string))
            .collect();
        v.sort();
        v
    };
    assert_eq!(names("label=tier=web"), ["web"]);
    assert_eq!(names("label=tier"), ["db", "web"]);
    assert!(names("label=other").is_empty());

    // Once the trap is installed, stop sends SIGUSR1.
    wait_ready("web");
    assert_eq!(code(&r.skiff_at_root(&["stop", "-t", "20", "web"])), 0);
    let ps = text(&r.skiff_at_root(&["ps", "-a", "--filter", "name=web"]));
    assert!(ps.contains("Exited (5)"), "{ps}");
    assert_eq!(text(&r.skiff_at_root(&["logs", "web"])), "ready\ngot\n");

    let out = r.skiff(&["--rm", "--stop-signal", "SIGNOPE", "true"]);
    assert_eq!(code(&out), 125);

    // Without --stop-signal, the image's StopSignal.
    let config = r.dir.path().join("config.json");
    std::fs::write(
        &config,
        r#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},
            "config":{"StopSignal":"SIGUSR1"}}"#,
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let out = r.skiff(&[
        "-d",
        "--name",
        "img",
        "--image-config",
        config,
        "sh",
        "-c",
        script,
    ]);
    assert_eq!(code(&out), 0, "{}", err(&out));
    wait_ready("img");
    assert_eq!(code(&r.skiff_at_root(&["stop", "-t", "20", "img"])), 0);
    let ps = text(&r.skiff_at_root(&["ps", "-a", "--filter", "name=img"]));
    assert!(ps.contains("Exited (5)"), "{ps}");
}

#[test]
fn memory_swap_and_cpuset() {
    let r = Rootfs::new();
    let script = "cat /sys/fs/cgroup/memory/memory.memsw.limit_in_bytes 2>/dev/null \
                  || cat /sys/fs/cgroup/memory.swap.max";
    let out = run_ok(
        &r,
        &[
            "--memory",
            "64m",
            "--memory-swap",
            "128m",
            "sh",
            "-c",
            script,
        ],
    );
    // v1: memory + swap; v2: the swap part alone.
    assert!(out == "134217728\n" || out == "67108864\n", "{out}");
    let out = r.skiff(&["--rm", "--memory-swap", "128m", "true"]);
    assert_eq!(code(&out), 125);
    assert!(err(&out).contains("needs --memory"), "{}", err(&out));
    let out = r.skiff(&["--rm", "-m", "64m", "--memory-swap", "32m", "true"]);
    assert_eq!(code(&out), 125);

    let out = run_ok(
        &r,
        &[
            "--cpuset-cpus",
            "0",
            "grep",
            "Cpus_allowed_list",
            "/proc/self/status",
        ],
    );
    assert_eq!(
        out.split_whitespace().collect::<Vec<_>>(),
        ["Cpus_allowed_list:", "0"]
    );
    let out = r.skiff(&["--rm", "--cpuset-cpus", "a-b", "true"]);
    assert_eq!(code(&out), 125);
}

#[test]
fn restart_needs_the_daemon() {
    let r = Rootfs::new();
    let out = r
        .skiff_cmd(&["--restart", "always", "true"])
        .env("SKIFF_NO_DAEMON", "1")
        .output()
        .unwrap();
    assert_eq!(code(&out), 125);
    assert!(
        err(&out).contains("needs the skiff daemon"),
        "{}",
        err(&out)
    );
    // As docker: a container that restarts cannot also be removed when it exits.
    let out = r.skiff(&["--rm", "--restart", "always", "true"]);
    assert_eq!(code(&out), 125);
    assert!(err(&out).contains("conflicting options"), "{}", err(&out));
    let out = r.skiff(&["--rm", "--restart", "sometimes", "true"]);
    assert_eq!(code(&out), 125);
    assert!(err(&out).contains("invalid --restart"), "{}", err(&out));
    run_ok(&r, &["--restart", "no", "true"]);
}
