//! `skiff run --restart`: docker's restart policies, with a real registry, a real
//! `skiff daemon` and real containers. Each container appends a line to `/runs` at
//! every start; the file lives in the container's upper directory, so its lines
//! count the runs and show that files written survive a restart.

use serde_json::Value;
use skiff_tests::cli::{describe, Skiff};
use skiff_tests::containerd::SkiffDaemon;
use skiff_tests::fixtures::push_busybox;
use skiff_tests::registry::Registry;
use std::path::Path;
use std::time::{Duration, Instant};

/// A registry holding the busybox image as `repo:latest`, a fresh root, and the
/// image's reference.
async fn busybox_on_fresh_root(repo: &str) -> (Registry, tempfile::TempDir, String) {
    let reg = Registry::start();
    push_busybox(&reg.host(), repo, 1 << 16).await;
    let root = tempfile::tempdir().unwrap();
    let image = reg.reference(&format!("{repo}:latest"));
    (reg, root, image)
}

/// `sh -c` script of a container that counts its runs in `/runs`, then `then`.
fn counting(then: &str) -> String {
    format!("echo run >> /runs; {then}")
}

/// How many times container `id` has started (lines of `/runs` in its upper).
fn runs(root: &Path, id: &str) -> usize {
    let file = root.join("containers").join(id).join("upper/runs");
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .count()
}

/// `skiff inspect NAME`'s document of a container.
fn inspect(skiff: &Skiff, name: &str) -> Value {
    let out = skiff.run(&["inspect", name]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let doc: Value = serde_json::from_slice(&out.stdout).expect("inspect prints JSON");
    doc[0].clone()
}

/// The line of `skiff ps [-a]` that names `name`, if listed.
fn ps_line(skiff: &Skiff, all: bool, name: &str) -> Option<String> {
    let args: &[&str] = if all { &["ps", "-a"] } else { &["ps"] };
    let out = skiff.run(args);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.split_whitespace().last() == Some(name))
        .map(str::to_string)
}

/// Polls `done` every 50 ms until it holds; panics with `what` after `timeout`.
fn wait_until(timeout: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The monitor pid recorded in container `id`'s state.
fn monitor_pid(root: &Path, id: &str) -> i32 {
    let state = std::fs::read(root.join("containers").join(id).join("state.json")).unwrap();
    let state: Value = serde_json::from_slice(&state).unwrap();
    state["monitor"]["pid"].as_i64().expect("monitor recorded") as i32
}

/// Whether `pid` runs (exists and is not a zombie).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, r)| !r.starts_with('Z')))
        .unwrap_or(false)
}

/// `skiff run -d ARGS…`, checked; returns the container id.
fn run_detached(skiff: &Skiff, args: &[&str], daemon: &SkiffDaemon) -> String {
    let out = skiff
        .command()
        .args(["run", "-d"])
        .args(args)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        describe(&out),
        daemon.log()
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `on-failure:2` of a command that fails: three runs in all, then the container is
/// Exited with the command's code (which `skiff run` returns); a command that
/// succeeds runs once under `on-failure`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_failure_restarts_n_times_then_exits_with_the_code() {
    let (_reg, root, image) = busybox_on_fresh_root("restart/on-failure").await;
    let skiff = Skiff::new(root.path());
    let daemon = SkiffDaemon::start(Skiff::new(root.path()));
    let _guard = skiff.guard(root.path());

    let script = counting("exit 3");
    let out = skiff.run(&[
        "run",
        "--restart",
        "on-failure:2",
        "--name",
        "flaky",
        &image,
        "sh",
        "-c",
        &script,
    ]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}\n{}",
        describe(&out),
        daemon.log()
    );
    let doc = inspect(&skiff, "flaky");
    let id = doc["Id"].as_str().unwrap().to_string();
    assert_eq!(runs(root.path(), &id), 3, "{doc}");
    assert_eq!(doc["RestartCount"], 2, "{doc}");
    assert_eq!(doc["State"]["Status"], "exited", "{doc}");
    assert_eq!(doc["State"]["ExitCode"], 3, "{doc}");
    assert_eq!(doc["HostConfig"]["RestartPolicy"]["Name"], "on-failure");
    assert_eq!(doc["HostConfig"]["RestartPolicy"]["MaximumRetryCount"], 2);
    let line = ps_line(&skiff, true, "flaky").expect("ps -a lists it");
    assert!(line.contains("Exited (3)"), "{line}");

    let script = counting("exit 0");
    let out = skiff.run(&[
        "run",
        "--restart",
        "on-failure",
        "--name",
        "fine",
        &image,
        "sh",
        "-c",
        &script,
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let doc = inspect(&skiff, "fine");
    assert_eq!(runs(root.path(), doc["Id"].as_str().unwrap()), 1, "{doc}");
    assert_eq!(doc["RestartCount"], 0, "{doc}");
}

/// `always` restarts a command that exits 0 (keeping what it wrote in its upper)
/// until `skiff stop`; then it stays stopped, and `ps` says so. `rm -f` of a
/// container between restarts removes it for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn always_restarts_until_stopped() {
    let (_reg, root, image) = busybox_on_fresh_root("restart/always").await;
    let skiff = Skiff::new(root.path());
    let daemon = SkiffDaemon::start(Skiff::new(root.path()));
    let _guard = skiff.guard(root.path());

    // Each run sees the file the runs before wrote: the upper survives restarts.
    let script = counting("cat /runs | wc -l > /seen; exit 0");
    let id = run_detached(
        &skiff,
        &[
            "--restart",
            "always",
            "--name",
            "looper",
            &image,
            "sh",
            "-c",
            &script,
        ],
        &daemon,
    );
    wait_until(Duration::from_secs(60), "three runs of looper", || {
        runs(root.path(), &id) >= 3
    });
    let line = ps_line(&skiff, false, "looper").expect("ps lists a restarting container");
    assert!(
        line.contains("Up") || line.contains("Restarting (0)"),
        "{line}"
    );
    let seen = root.path().join("containers").join(&id).join("upper/seen");
    let seen: usize = std::fs::read_to_string(seen)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(seen >= 2, "a later run saw {seen} runs");

    let out = skiff.run(&["stop", "-t", "1", "looper"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let stopped_at = runs(root.path(), &id);
    // Longer than the back-off after that many runs: a restart would show.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(runs(root.path(), &id), stopped_at, "restarted after a stop");
    assert_eq!(
        ps_line(&skiff, false, "looper"),
        None,
        "ps lists a stopped container"
    );
    let line = ps_line(&skiff, true, "looper").expect("ps -a lists it");
    assert!(line.contains("Exited ("), "{line}");
    let doc = inspect(&skiff, "looper");
    assert_eq!(doc["State"]["Status"], "exited", "{doc}");
    assert_eq!(doc["State"]["Restarting"], false, "{doc}");
    assert_eq!(doc["HostConfig"]["RestartPolicy"]["Name"], "always");
    assert!(doc["RestartCount"].as_u64().unwrap() >= 2, "{doc}");

    // rm -f while it restarts (it fails at once, so it is mostly waiting).
    let id = run_detached(
        &skiff,
        &[
            "--restart",
            "always",
            "--name",
            "crasher",
            &image,
            "sh",
            "-c",
            &counting("exit 1"),
        ],
        &daemon,
    );
    wait_until(Duration::from_secs(60), "two runs of crasher", || {
        runs(root.path(), &id) >= 2
    });
    let out = skiff.run(&["rm", "-f", "crasher"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        !root.path().join("containers").join(&id).exists(),
        "the removed container came back"
    );
    assert_eq!(ps_line(&skiff, true, "crasher"), None);
}

/// A container whose monitor is SIGKILLed (with the daemon down, as in a crash of
/// the host) gets a fresh monitor when the daemon starts, if its policy is `always`
/// or `unless-stopped`; an `unless-stopped` one the user stopped stays stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_replaces_killed_monitors_at_its_start() {
    let (_reg, root, image) = busybox_on_fresh_root("restart/daemon").await;
    let skiff = Skiff::new(root.path());
    let mut daemon = SkiffDaemon::start(Skiff::new(root.path()));
    let _guard = skiff.guard(root.path());

    let script = counting("exec sleep 1000");
    let start = |name: &str, policy: &str| {
        let id = run_detached(
            &skiff,
            &[
                "--restart",
                policy,
                "--name",
                name,
                &image,
                "sh",
                "-c",
                &script,
            ],
            &daemon,
        );
        wait_until(Duration::from_secs(30), name, || {
            runs(root.path(), &id) == 1
        });
        id
    };
    let phoenix = start("phoenix", "always");
    let lazarus = start("lazarus", "unless-stopped");
    let resting = start("resting", "unless-stopped");
    let out = skiff.run(&["stop", "-t", "1", "resting"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));

    daemon.kill();
    let old: Vec<i32> = [&phoenix, &lazarus]
        .iter()
        .map(|id| monitor_pid(root.path(), id))
        .collect();
    for pid in &old {
        assert!(alive(*pid));
        // SAFETY: the pid of a monitor this test started, checked alive just now.
        unsafe { libc::kill(*pid, libc::SIGKILL) };
    }
    wait_until(Duration::from_secs(10), "the monitors to die", || {
        old.iter().all(|p| !alive(*p))
    });
    daemon.restart();

    for (id, old) in [(&phoenix, old[0]), (&lazarus, old[1])] {
        wait_until(Duration::from_secs(60), "a new monitor and run", || {
            runs(root.path(), id) == 2
        });
        let doc = inspect(&skiff, id);
        assert_eq!(doc["State"]["Status"], "running", "{doc}\n{}", daemon.log());
        assert_eq!(doc["RestartCount"], 1, "{doc}");
        let monitor = monitor_pid(root.path(), id);
        assert!(
            monitor != old && alive(monitor),
            "monitor {monitor} (was {old})"
        );
    }
    let line = ps_line(&skiff, false, "phoenix").expect("ps lists it");
    assert!(line.contains("Up"), "{line}");
    assert_eq!(
        runs(root.path(), &resting),
        1,
        "a stopped container came back"
    );
    assert_eq!(inspect(&skiff, "resting")["State"]["Status"], "exited");

    let out = skiff.run(&["stop", "-t", "1", "phoenix", "lazarus"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(ps_line(&skiff, false, "phoenix"), None);
}

/// Without a daemon, a restart policy is refused with an error that says why;
/// `--restart no` runs as before (once, standalone), and a bad policy is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_daemon_only_no_runs() {
    let (_reg, root, image) = busybox_on_fresh_root("restart/no-daemon").await;
    let skiff = Skiff::new(root.path());
    let _guard = skiff.guard(root.path());

    let out = skiff.run(&["run", "--restart", "always", &image, "true"]);
    assert_eq!(out.status.code(), Some(125), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("needs the skiff daemon") && err.contains("skiff daemon"),
        "{err}"
    );
    let out = skiff.run(&["ps", "-a", "-q"]);
    assert!(out.stdout.is_empty(), "{}", describe(&out));

    let script = counting("exit 3");
    let out = skiff.run(&[
        "run",
        "--restart",
        "no",
        "--name",
        "once",
        &image,
        "sh",
        "-c",
        &script,
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
    let doc = inspect(&skiff, "once");
    assert_eq!(runs(root.path(), doc["Id"].as_str().unwrap()), 1);
    assert_eq!(doc["RestartCount"], 0);
    assert_eq!(doc["HostConfig"]["RestartPolicy"]["Name"], "no");

    let out = skiff.run(&["run", "--restart", "sometimes", &image, "true"]);
    assert_eq!(out.status.code(), Some(125), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid --restart"));
}
