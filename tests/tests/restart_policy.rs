//! `skiff run --restart`: docker's restart policies, with a real registry, a real
//! `skiff daemon` and real containers. Each container appends a line to `/runs` at
//! every start; the file lives in the container's upper directory, so its lines
//! count the runs and show that files written survive a restart.

use serde_json::Value;
use skiff_tests::cli::{describe, Skiff};
use skiff_tests::containerd::SkiffDaemon;
use skiff_tests::fixtures::push_busybox;
use skiff_tests::guard::ContainerGuard;
use skiff_tests::registry::Registry;
use std::process::Output;
use std::time::{Duration, Instant};

/// A registry holding the busybox image, a fresh root and, if asked, a daemon on it.
/// Fields drop in order: the root's containers are removed (through the daemon)
/// before the daemon is killed and the root deleted.
struct Fixture {
    _guard: ContainerGuard,
    daemon: Option<SkiffDaemon>,
    skiff: Skiff,
    image: String,
    _registry: Registry,
    root: tempfile::TempDir,
}

impl Fixture {
    /// Pushes busybox as `repo:latest`, and starts a daemon if `with_daemon`.
    async fn new(repo: &str, with_daemon: bool) -> Fixture {
        let registry = Registry::start();
        push_busybox(&registry.host(), repo, 1 << 16).await;
        let root = tempfile::tempdir().unwrap();
        let skiff = Skiff::new(root.path());
        Fixture {
            _guard: skiff.guard(root.path()),
            daemon: with_daemon.then(|| SkiffDaemon::start(Skiff::new(root.path()))),
            skiff,
            image: registry.reference(&format!("{repo}:latest")),
            _registry: registry,
            root,
        }
    }

    fn daemon(&mut self) -> &mut SkiffDaemon {
        self.daemon.as_mut().expect("a fixture with a daemon")
    }

    /// The daemon's log, for failure messages.
    fn daemon_log(&self) -> String {
        self.daemon.as_ref().map(|d| d.log()).unwrap_or_default()
    }

    /// `skiff run [-d] --restart POLICY --name NAME IMAGE sh -c 'count; THEN'`.
    fn run(&self, detach: bool, policy: &str, name: &str, then: &str) -> Output {
        let script = format!("echo run >> /runs; {then}");
        let mut cmd = self.skiff.command();
        cmd.arg("run");
        if detach {
            cmd.arg("-d");
        }
        cmd.args(["--restart", policy, "--name", name, &self.image])
            .args(["sh", "-c", &script])
            .output()
            .unwrap()
    }

    /// [`Fixture::run`] detached, checked; returns the container id.
    fn start(&self, policy: &str, name: &str, then: &str) -> String {
        let out = self.run(true, policy, name, then);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}\n{}",
            describe(&out),
            self.daemon_log()
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// `skiff ARGS…`, checked.
    fn ok(&self, args: &[&str]) {
        let out = self.skiff.run(args);
        assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    }

    /// A file of container `id`'s upper directory.
    fn upper_file(&self, id: &str, name: &str) -> String {
        let path = self
            .root
            .path()
            .join("containers")
            .join(id)
            .join("upper")
            .join(name);
        std::fs::read_to_string(path).unwrap_or_default()
    }

    /// How many times container `id` has started (lines of its `/runs`).
    fn runs(&self, id: &str) -> usize {
        self.upper_file(id, "runs").lines().count()
    }

    /// `skiff inspect NAME`'s document of a container.
    fn inspect(&self, name: &str) -> Value {
        let out = self.skiff.run(&["inspect", name]);
        assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
        let doc: Value = serde_json::from_slice(&out.stdout).expect("inspect prints JSON");
        doc[0].clone()
    }

    /// The line of `skiff ps [-a]` that names `name`, if listed.
    fn ps_line(&self, all: bool, name: &str) -> Option<String> {
        let out = self.skiff.run(if all { &["ps", "-a"] } else { &["ps"] });
        assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find(|l| l.split_whitespace().last() == Some(name))
            .map(str::to_string)
    }

    /// The monitor pid recorded in container `id`'s state.
    fn monitor_pid(&self, id: &str) -> i32 {
        let path = self
            .root
            .path()
            .join("containers")
            .join(id)
            .join("state.json");
        let state: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        state["monitor"]["pid"].as_i64().expect("monitor recorded") as i32
    }
}

/// Polls `done` every 50 ms until it holds; panics with `what` after `timeout`.
fn wait_until(timeout: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether `pid` runs (exists and is not a zombie).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, r)| !r.starts_with('Z')))
        .unwrap_or(false)
}

/// `on-failure:2` of a command that fails: three runs in all, then the container is
/// Exited with the command's code (which `skiff run` returns); a command that
/// succeeds runs once under `on-failure`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_failure_restarts_n_times_then_exits_with_the_code() {
    let f = Fixture::new("restart/on-failure", true).await;

    let out = f.run(false, "on-failure:2", "flaky", "exit 3");
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}\n{}",
        describe(&out),
        f.daemon_log()
    );
    let doc = f.inspect("flaky");
    assert_eq!(f.runs(doc["Id"].as_str().unwrap()), 3, "{doc}");
    assert_eq!(doc["RestartCount"], 2, "{doc}");
    assert_eq!(doc["State"]["Status"], "exited", "{doc}");
    assert_eq!(doc["State"]["ExitCode"], 3, "{doc}");
    assert_eq!(doc["HostConfig"]["RestartPolicy"]["Name"], "on-failure");
    assert_eq!(doc["HostConfig"]["RestartPolicy"]["MaximumRetryCount"], 2);
    let line = f.ps_line(true, "flaky").expect("ps -a lists it");
    assert!(line.contains("Exited (3)"), "{line}");

    let out = f.run(false, "on-failure", "fine", "exit 0");
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let doc = f.inspect("fine");
    assert_eq!(f.runs(doc["Id"].as_str().unwrap()), 1, "{doc}");
    assert_eq!(doc["RestartCount"], 0, "{doc}");
}

/// `always` restarts a command that exits 0 (keeping what it wrote in its upper)
/// until `skiff stop`; then it stays stopped, and `ps` says so. `rm -f` of a
/// container between restarts removes it for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn always_restarts_until_stopped() {
    let f = Fixture::new("restart/always", true).await;

    // Each run sees the file the runs before wrote: the upper survives restarts.
    let id = f.start("always", "looper", "cat /runs | wc -l > /seen; exit 0");
    wait_until(Duration::from_secs(60), "three runs of looper", || {
        f.runs(&id) >= 3
    });
    let line = f
        .ps_line(false, "looper")
        .expect("ps lists a restarting container");
    assert!(
        line.contains("Up") || line.contains("Restarting (0)"),
        "{line}"
    );
    let seen: usize = f.upper_file(&id, "seen").trim().parse().unwrap();
    assert!(seen >= 2, "a later run saw {seen} runs");

    f.ok(&["stop", "-t", "1", "looper"]);
    let stopped_at = f.runs(&id);
    // Longer than the back-off after that many runs: a restart would show.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(f.runs(&id), stopped_at, "restarted after a stop");
    let listed = f.ps_line(false, "looper");
    assert_eq!(listed, None, "ps lists a stopped container");
    let line = f.ps_line(true, "looper").expect("ps -a lists it");
    assert!(line.contains("Exited ("), "{line}");
    let doc = f.inspect("looper");
    assert_eq!(doc["State"]["Status"], "exited", "{doc}");
    assert_eq!(doc["State"]["Restarting"], false, "{doc}");
    assert_eq!(doc["HostConfig"]["RestartPolicy"]["Name"], "always");
    assert!(doc["RestartCount"].as_u64().unwrap() >= 2, "{doc}");

    // rm -f while it restarts (it fails at once, so it is mostly waiting).
    let id = f.start("always", "crasher", "exit 1");
    wait_until(Duration::from_secs(60), "two runs of crasher", || {
        f.runs(&id) >= 2
    });
    f.ok(&["rm", "-f", "crasher"]);
    std::thread::sleep(Duration::from_secs(2));
    let dir = f.root.path().join("containers").join(&id);
    assert!(!dir.exists(), "the removed container came back");
    assert_eq!(f.ps_line(true, "crasher"), None);

    // `skiff kill` (SIGKILL) ends it for good too, as `docker kill` does.
    let id = f.start("always", "killed", "exec sleep 1000");
    wait_until(Duration::from_secs(30), "killed running", || {
        f.runs(&id) == 1
    });
    f.ok(&["kill", "killed"]);
    wait_until(Duration::from_secs(30), "killed exited", || {
        f.ps_line(true, "killed")
            .is_some_and(|l| l.contains("Exited (137)"))
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(f.runs(&id), 1, "restarted after skiff kill");
}

/// A container whose monitor is SIGKILLed (with the daemon down, as in a crash of
/// the host) gets a fresh monitor when the daemon starts, if its policy is `always`
/// or `unless-stopped`; an `unless-stopped` one the user stopped stays stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_replaces_killed_monitors_at_its_start() {
    let mut f = Fixture::new("restart/daemon", true).await;

    let start = |f: &Fixture, name: &str, policy: &str| {
        let id = f.start(policy, name, "exec sleep 1000");
        wait_until(Duration::from_secs(30), name, || f.runs(&id) == 1);
        id
    };
    let phoenix = start(&f, "phoenix", "always");
    let lazarus = start(&f, "lazarus", "unless-stopped");
    let resting = start(&f, "resting", "unless-stopped");
    f.ok(&["stop", "-t", "1", "resting"]);

    f.daemon().kill();
    let old: Vec<i32> = [&phoenix, &lazarus]
        .iter()
        .map(|id| f.monitor_pid(id))
        .collect();
    for pid in &old {
        assert!(alive(*pid));
        // SAFETY: the pid of a monitor this test started, checked alive just now.
        unsafe { libc::kill(*pid, libc::SIGKILL) };
    }
    wait_until(Duration::from_secs(10), "the monitors to die", || {
        old.iter().all(|p| !alive(*p))
    });
    f.daemon().restart();

    for (id, old) in [(&phoenix, old[0]), (&lazarus, old[1])] {
        wait_until(Duration::from_secs(60), "a new monitor and run", || {
            f.runs(id) == 2
        });
        let doc = f.inspect(id);
        let status = &doc["State"]["Status"];
        assert_eq!(status, "running", "{doc}\n{}", f.daemon_log());
        assert_eq!(doc["RestartCount"], 1, "{doc}");
        let monitor = f.monitor_pid(id);
        let replaced = monitor != old && alive(monitor);
        assert!(replaced, "monitor {monitor} (was {old})");
    }
    let line = f.ps_line(false, "phoenix").expect("ps lists it");
    assert!(line.contains("Up"), "{line}");
    assert_eq!(f.runs(&resting), 1, "a stopped container came back");
    assert_eq!(f.inspect("resting")["State"]["Status"], "exited");

    f.ok(&["stop", "-t", "1", "phoenix", "lazarus"]);
    assert_eq!(f.ps_line(false, "phoenix"), None);
}

/// A monitor killed while the daemon runs is replaced by the daemon when the
/// policy restarts after a SIGKILL (`always`, `on-failure`), as docker's daemon
/// restarts a container whose shim died; a `no` container stays exited (137).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_running_daemon_replaces_a_killed_monitor() {
    let f = Fixture::new("restart/watch", true).await;
    let phoenix = f.start("always", "phoenix", "exec sleep 1000");
    let fragile = f.start("on-failure:3", "fragile", "exec sleep 1000");
    let mortal = f.start("no", "mortal", "exec sleep 1000");
    let mut old = Vec::new();
    for id in [&phoenix, &fragile, &mortal] {
        wait_until(Duration::from_secs(30), "the first run", || f.runs(id) == 1);
        let pid = f.monitor_pid(id);
        assert!(alive(pid));
        // SAFETY: the pid of a monitor this test started, checked alive just now.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        old.push(pid);
    }
    for (id, old) in [(&phoenix, old[0]), (&fragile, old[1])] {
        wait_until(Duration::from_secs(60), "a new monitor and run", || {
            f.runs(id) == 2
        });
        let doc = f.inspect(id);
        assert_eq!(
            doc["State"]["Status"],
            "running",
            "{doc}\n{}",
            f.daemon_log()
        );
        assert_eq!(doc["RestartCount"], 1, "{doc}");
        let monitor = f.monitor_pid(id);
        assert!(
            monitor != old && alive(monitor),
            "monitor {monitor} (was {old})"
        );
    }
    wait_until(Duration::from_secs(30), "mortal recorded as killed", || {
        f.ps_line(true, "mortal")
            .is_some_and(|l| l.contains("Exited (137)"))
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(f.runs(&mortal), 1, "a `no` container came back");

    f.ok(&["stop", "-t", "1", "phoenix", "fragile"]);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(f.runs(&phoenix), 2, "a stopped container came back");
}

/// Without a daemon, a restart policy is refused with an error that says why;
/// `--restart no` runs as before (once, standalone), and a bad policy is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_daemon_only_no_runs() {
    let f = Fixture::new("restart/no-daemon", false).await;

    let out = f.run(false, "always", "never", "true");
    assert_eq!(out.status.code(), Some(125), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("needs the skiff daemon"), "{err}");
    assert_eq!(f.ps_line(true, "never"), None);

    let out = f.run(false, "no", "once", "exit 3");
    assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
    let doc = f.inspect("once");
    assert_eq!(f.runs(doc["Id"].as_str().unwrap()), 1);
    assert_eq!(doc["RestartCount"], 0);
    assert_eq!(doc["HostConfig"]["RestartPolicy"]["Name"], "no");

    let out = f.run(false, "sometimes", "bad", "true");
    assert_eq!(out.status.code(), Some(125), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("invalid --restart"), "{err}");
}
