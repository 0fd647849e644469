//! Resource limits through cgroups bite: --memory kills, --pids-limit stops forks,
//! --cpus sets the CFS quota; and the container's cgroups are gone afterwards.

mod common;

use common::{code, KillOnDrop, Rootfs};

#[test]
fn memory_limit_kills_the_hog() {
    let r = Rootfs::new();
    let out = r.skiff(&[
        "--rm",
        "--memory",
        "32m",
        "sh",
        "-c",
        "x=$(head -c 300000000 /dev/zero | tr '\\0' a); echo survived ${#x}",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("survived"), "{stdout}");
    assert_eq!(
        code(&out),
        137,
        "OOM-killed PID 1: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Without the limit the same program completes.
    let out = r.skiff(&[
        "--rm",
        "sh",
        "-c",
        "x=$(head -c 50000000 /dev/zero | tr '\\0' a); echo survived ${#x}",
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "survived 50000000\n");
    r.assert_no_mounts();
}

#[test]
fn pids_limit_stops_a_fork_bomb() {
    let r = Rootfs::new();
    // A bounded bomb: 40 background sleeps. busybox sh gives up (exit 2) at the first
    // failed fork; without the limit all 40 start.
    let bomb = "i=0; while [ $i -lt 40 ]; do sleep 1 & i=$((i+1)); done; echo all-forked";
    let out = r.skiff(&["--rm", "--pids-limit", "10", "sh", "-c", bomb]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("can't fork: Resource temporarily unavailable"),
        "{stderr}"
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("all-forked"));
    assert_eq!(code(&out), 2);
    let out = r.skiff(&["--rm", "sh", "-c", bomb]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "all-forked\n");
    assert_eq!(code(&out), 0);
    r.assert_no_mounts();
}

#[test]
fn cpus_sets_cfs_quota_and_cgroups_are_removed() {
    let r = Rootfs::new();
    let mut child = KillOnDrop::spawn(&mut r.skiff_cmd(&[
        "--rm",
        "--cpus",
        "0.5",
        "--memory",
        "64m",
        "--pids-limit",
        "20",
        "sleep",
        "30",
    ]));
    let pid1 = common::wait_for_child_of(child.id(), "sleep");
    // PID 1's own cgroups, per v1 controller and in the unified hierarchy.
    let cgroup_of = |ctrl: &str| -> String {
        let text = std::fs::read_to_string(format!("/proc/{pid1}/cgroup")).unwrap();
        let line = text
            .lines()
            .find(|l| {
                l.split(':')
                    .nth(1)
                    .is_some_and(|c| c.split(',').any(|x| x == ctrl))
            })
            .unwrap_or_else(|| panic!("no {ctrl} in {text}"));
        format!(
            "/sys/fs/cgroup/{ctrl}{}",
            line.splitn(3, ':').nth(2).unwrap()
        )
    };
    let read = |p: String| std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{p}: {e}"));
    let (cpu, mem, pids) = (cgroup_of("cpu"), cgroup_of("memory"), cgroup_of("pids"));
    assert!(cpu.contains("/skiff-") && mem.contains("/skiff-") && pids.contains("/skiff-"));
    let quota = read(format!("{cpu}/cpu.cfs_quota_us"));
    let period = read(format!("{cpu}/cpu.cfs_period_us"));
    let limit = read(format!("{mem}/memory.limit_in_bytes"));
    let max = read(format!("{pids}/pids.max"));
    let procs = read(format!("{mem}/cgroup.procs"));
    // sleep as PID 1 ignores a forwarded SIGTERM (no handler), so kill PID 1 directly.
    // SAFETY: kill on the container's PID 1, a child of our child.
    unsafe { libc::kill(pid1, libc::SIGKILL) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(137));
    assert_eq!((quota.trim(), period.trim()), ("50000", "100000"));
    assert_eq!(limit.trim(), "67108864");
    assert_eq!(max.trim(), "20");
    assert_eq!(procs.trim(), pid1.to_string());
    for dir in [cpu, mem, pids] {
        assert!(!std::path::Path::new(&dir).exists(), "{dir} left behind");
    }
    r.assert_no_mounts();
}
