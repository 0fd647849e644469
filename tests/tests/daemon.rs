//! `skiff daemon`: one process serving every mount of a root. A real registry (behind
//! the counting proxy where bytes are counted), real FUSE mounts, real containers.
//! Every test kills its daemon and unmounts whatever is left under its root on the
//! way out, pass or fail ([`Daemon`]'s `Drop`).

use skiff_tests::cli::{describe, Skiff};
use skiff_tests::fixtures::{self, push_busybox};
use skiff_tests::proxy::FaultProxy;
use skiff_tests::registry::Registry;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// A `skiff daemon` on a test root; killed (SIGKILL) on drop, and every mount left
/// under the root detached.
struct Daemon {
    child: Child,
    root: PathBuf,
}

impl Daemon {
    fn start(skiff: &Skiff) -> Daemon {
        let log = std::fs::File::create(skiff.root.join("daemon.log")).unwrap();
        let child = skiff
            .command()
            .args(["-v", "daemon"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting skiff daemon");
        let d = Daemon {
            child,
            root: skiff.root.clone(),
        };
        let socket = skiff.root.join("daemon.sock");
        let deadline = Instant::now() + Duration::from_secs(30);
        while UnixStream::connect(&socket).is_err() {
            assert!(Instant::now() < deadline, "no daemon socket: {}", d.log());
            std::thread::sleep(Duration::from_millis(20));
        }
        d
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.root.join("daemon.log")).unwrap_or_default()
    }

    /// Waits until the daemon process has exited by itself.
    fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not exit: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for m in fuse_mounts_under(&self.root) {
            let _ = std::process::Command::new("fusermount3")
                .arg("-uz")
                .arg(&m)
                .status();
        }
    }
}

fn fuse_mounts_under(dir: &Path) -> Vec<String> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let prefix = dir.to_string_lossy().into_owned();
    mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(1))
        .filter(|m| m.starts_with(&prefix))
        .map(str::to_string)
        .collect()
}

/// A registry holding the busybox image (1 MiB big file) as `repo:latest`, a fresh
/// skiff root, and the image's reference.
async fn busybox_on_fresh_root(repo: &str) -> (Registry, tempfile::TempDir, Skiff, String) {
    let reg = Registry::start();
    push_busybox(&reg.host(), repo, 1 << 20).await;
    let root = tempfile::tempdir().unwrap();
    let skiff = Skiff::new(root.path());
    let image = reg.reference(&format!("{repo}:latest"));
    (reg, root, skiff, image)
}

fn status(skiff: &Skiff) -> String {
    let out = skiff.run(&["daemon", "status"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mount_through_the_daemon_shows_the_image() {
    let (_reg, root, skiff, image) = busybox_on_fresh_root("daemon/mount").await;
    let daemon = Daemon::start(&skiff);
    let dir = root.path().join("mnt");
    std::fs::create_dir(&dir).unwrap();

    let out = skiff.run(&["mount", &image, dir.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        describe(&out),
        daemon.log()
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("by the daemon"));
    // The command returned; the daemon serves the mount.
    let cat = std::process::Command::new("cat")
        .arg(dir.join("etc/motd"))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&cat.stdout),
        "hello from layer two\n"
    );
    let ls = std::process::Command::new("ls")
        .arg(dir.join("bin"))
        .output()
        .unwrap();
    let names = String::from_utf8_lossy(&ls.stdout).into_owned();
    assert!(names.contains("busybox") && names.contains("sh"), "{names}");
    assert!(
        !names.split_whitespace().any(|n| n == "ls"),
        "whiteout ignored: {names}"
    );
    assert_eq!(
        std::fs::read(dir.join("bin/busybox")).unwrap(),
        std::fs::read("/bin/busybox").unwrap()
    );

    let s = status(&skiff);
    assert!(s.contains(dir.to_str().unwrap()), "{s}");
    assert!(s.contains(&image), "{s}");

    let out = skiff.run(&["umount", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(fuse_mounts_under(root.path()).is_empty());
    let s = status(&skiff);
    assert!(!s.contains(dir.to_str().unwrap()), "{s}");
}

/// Two containers of one image started together through the daemon: both print the
/// right bytes, and each byte of the layer crosses the network once (one merged tree,
/// one fetcher, one cache). A third run of the image costs no registry request at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_containers_share_one_fetch_per_chunk() {
    let reg = Registry::start();
    let big = 3 << 20;
    let built = push_busybox(&reg.host(), "daemon/shared", big).await;
    // Published indexes, so layers are read by Range only (no indexing pass).
    let publisher = tempfile::tempdir().unwrap();
    let out = Skiff::new(publisher.path()).run(&[
        "index",
        "--push",
        "-q",
        &reg.reference("daemon/shared:latest"),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));

    let proxy = FaultProxy::start(reg.addr());
    let image = format!("{}/daemon/shared:latest", proxy.host());
    let root = tempfile::tempdir().unwrap();
    let skiff = Skiff::new(root.path());
    let daemon = Daemon::start(&skiff);

    let run = || {
        skiff
            .command()
            .args(["run", "--rm", "--no-prefetch", "--background-fetch=false"])
            .args([&image, "cat", "/data/big"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (run(), run());
    let expected = fixtures::pseudo_random(7, big);
    for child in [a, b] {
        let out = child.wait_with_output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}\n{}",
            describe(&out),
            daemon.log()
        );
        assert!(
            out.stdout == expected,
            "wrong bytes ({} read)",
            out.stdout.len()
        );
    }

    let top = skiff_proto::Digest::of(&built.layers[1].blob).to_string();
    let mut fetched = 0u64;
    for r in proxy.requests().iter().filter(|r| r.path.ends_with(&top)) {
        let range = r.range.as_deref().expect("layers are read by Range only");
        let (s, e) = range.trim_start_matches("bytes=").split_once('-').unwrap();
        fetched += e.parse::<u64>().unwrap() - s.parse::<u64>().unwrap() + 1;
    }
    let blob_len = built.layers[1].blob.len() as u64;
    eprintln!("two containers fetched {fetched} bytes of a {blob_len}-byte layer");
    assert!(fetched >= big as u64, "fetched only {fetched}");
    assert!(
        fetched <= blob_len,
        "fetched {fetched} of {blob_len}: chunks fetched twice"
    );

    // Warm: image in the daemon's memory, chunks in its cache: nothing from the registry.
    proxy.clear_requests();
    let out = skiff.run(&["run", "--rm", &image, "cat", "/etc/motd"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello from layer two\n"
    );
    let reqs = proxy.requests();
    assert!(reqs.is_empty(), "warm run made requests: {reqs:?}");
    assert!(fuse_mounts_under(&root.path().join("containers")).is_empty());
}

/// `skiff daemon stop` refuses while a container runs on one of its mounts, status
/// shows the container, and once it is stopped the daemon unmounts and exits; then
/// the CLI works standalone again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_refuses_while_a_container_runs() {
    let (_reg, root, skiff, image) = busybox_on_fresh_root("daemon/stop").await;
    let mut daemon = Daemon::start(&skiff);

    let out = skiff.run(&["run", "-d", "--name", "bg", &image, "sleep", "300"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        describe(&out),
        daemon.log()
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let s = status(&skiff);
    assert!(
        s.contains(&format!("container {} (running)", &id[..12])),
        "{s}"
    );

    let out = skiff.run(&["daemon", "stop"]);
    assert_ne!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("still run"),
        "{}",
        describe(&out)
    );
    assert!(UnixStream::connect(root.path().join("daemon.sock")).is_ok());

    let out = skiff.run(&["stop", "-t", "1", "bg"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    // `skiff stop` returns once the exit is recorded; the monitor unmounts just after.
    let deadline = Instant::now() + Duration::from_secs(10);
    let out = loop {
        let out = skiff.run(&["daemon", "stop"]);
        if out.status.success() || Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        describe(&out),
        daemon.log()
    );
    assert!(daemon.wait_exit().success(), "{}", daemon.log());
    assert!(fuse_mounts_under(root.path()).is_empty());
    assert!(!root.path().join("daemon.sock").exists());

    // No daemon: standalone, as before.
    let out = skiff.run(&["run", "--rm", &image, "cat", "/etc/motd"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello from layer two\n"
    );
}

/// Timing by hand (`-- --ignored --nocapture`): warm `skiff run --rm IMAGE true`,
/// standalone and through the daemon, alternating, ten runs each after a warm-up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn warm_run_times_standalone_and_through_the_daemon() {
    let (_reg, _root, skiff, image) = busybox_on_fresh_root("daemon/timing").await;
    let daemon = Daemon::start(&skiff);
    let time_run = |standalone: bool| -> f64 {
        let t = Instant::now();
        let mut cmd = skiff.command();
        if standalone {
            cmd.env("SKIFF_NO_DAEMON", "1");
        }
        let out = cmd.args(["run", "--rm", &image, "true"]).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
        t.elapsed().as_secs_f64()
    };
    // One warm-up each, then alternate so both see the same machine load.
    time_run(true);
    time_run(false);
    let (mut standalone, mut through) = (Vec::new(), Vec::new());
    for _ in 0..10 {
        standalone.push(time_run(true));
        through.push(time_run(false));
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (ms, md) = (median(&mut standalone), median(&mut through));
    eprintln!("standalone: {standalone:.3?} median {ms:.3} s");
    eprintln!("daemon:     {through:.3?} median {md:.3} s");
    if std::env::var_os("SKIFF_TIMING_LOG").is_some() {
        for standalone in [true, false] {
            let mut cmd = skiff.command();
            if standalone {
                cmd.env("SKIFF_NO_DAEMON", "1");
            }
            cmd.env("RUST_LOG", "skiff=debug,skiff_fs=info");
            let out = cmd.args(["run", "--rm", &image, "true"]).output().unwrap();
            eprintln!(
                "standalone={standalone}:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    drop(daemon);
}
