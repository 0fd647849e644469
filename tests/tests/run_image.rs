//! `skiff run IMAGE` and `skiff mount IMAGE` end to end: a real registry, the lazy FUSE
//! view, a real container on it.

use skiff_tests::cli::{describe, Skiff};
use skiff_tests::fixtures::push_busybox;
use skiff_tests::guard::{descendants_of, KillOnDrop};
use skiff_tests::proxy::{Fault, FaultProxy, Rule};
use skiff_tests::registry::Registry;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

fn no_fuse_mounts_under(dir: &std::path::Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    !mounts.lines().any(|l| {
        l.split(' ')
            .nth(1)
            .is_some_and(|m| m.starts_with(&*dir.to_string_lossy()))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_image_gives_output_exit_codes_and_the_merged_view() {
    let reg = Registry::start();
    push_busybox(&reg.host(), "run/busybox", 1 << 20).await;
    let root = tempfile::tempdir().unwrap();
    let skiff = Skiff::new(root.path());
    let _guard = skiff.guard(root.path());
    let image = reg.reference("run/busybox:latest");

    let out = skiff.run(&["run", "--rm", &image, "cat", "/etc/motd"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello from layer two\n"
    );

    // The whiteout in layer two hides /bin/ls; the image's Cmd runs by default.
    let out = skiff.run(&[
        "run",
        "--rm",
        &image,
        "sh",
        "-c",
        "test -e /bin/ls; echo $?; exit 3",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1\n");

    // A user from the image's own /etc/passwd.
    let out = skiff.run(&["run", "--rm", "-u", "alice", &image, "id"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("uid=1000(alice) gid=1000(alice)"),
        "{}",
        describe(&out)
    );

    // Missing command: docker's 127 and message.
    let out = skiff.run(&["run", "--rm", &image, "no-such-program"]);
    assert_eq!(out.status.code(), Some(127), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("executable file not found"),
        "{}",
        describe(&out)
    );

    // Unknown image: a clear error, nothing left behind.
    let out = skiff.run(&["run", "--rm", &reg.reference("run/nothing:latest"), "true"]);
    assert_eq!(out.status.code(), Some(125), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("manifest unknown"),
        "{}",
        describe(&out)
    );
    assert!(no_fuse_mounts_under(root.path()));
    let containers = root.path().join("containers");
    let left: Vec<_> = std::fs::read_dir(&containers)
        .map(|d| d.flatten().collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "--rm left {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_go_to_a_kept_upper_in_overlayfs_format() {
    let reg = Registry::start();
    push_busybox(&reg.host(), "run/cow", 1 << 20).await;
    let root = tempfile::tempdir().unwrap();
    let skiff = Skiff::new(root.path());
    let _guard = skiff.guard(root.path());
    let image = reg.reference("run/cow:latest");

    let out = skiff.run(&[
        "run", "--name", "writer", &image, "sh", "-c",
        "echo changed > /etc/motd && rm /etc/group && mkdir /new && echo n > /new/file && cat /etc/motd",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "changed\n");

    // The container is listed, and its upper holds the changes the overlayfs way.
    let out = skiff.run(&["ps", "-a"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("writer"),
        "{}",
        describe(&out)
    );
    let containers: Vec<_> = std::fs::read_dir(root.path().join("containers"))
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(containers.len(), 1);
    let upper = containers[0].path().join("upper");
    assert_eq!(
        std::fs::read_to_string(upper.join("etc/motd")).unwrap(),
        "changed\n"
    );
    assert_eq!(
        std::fs::read_to_string(upper.join("new/file")).unwrap(),
        "n\n"
    );
    let wh = std::fs::symlink_metadata(upper.join("etc/group")).unwrap();
    assert!(
        wh.file_type().is_char_device() && wh.rdev() == 0,
        "etc/group is not a whiteout"
    );
    assert!(no_fuse_mounts_under(root.path()));

    // The image itself is untouched for the next container.
    let out = skiff.run(&["run", "--rm", &image, "cat", "/etc/motd", "/etc/group"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello from layer two\nroot:x:0:\nalice:x:1000:\n"
    );

    let out = skiff.run(&["rm", "writer"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(!containers[0].path().exists());
}

/// With a published index, a cold run reads only what the command touches: far less
/// than the image, and nothing of the big file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_run_fetches_only_what_it_reads() {
    let reg = Registry::start();
    let big = 24 << 20;
    let built = push_busybox(&reg.host(), "run/lazy", big).await;
    let image_size: u64 = built.layers.iter().map(|l| l.blob.len() as u64).sum();
    let publisher = tempfile::tempdir().unwrap();
    let out = Skiff::new(publisher.path()).run(&[
        "index",
        "--push",
        "-q",
        &reg.reference("run/lazy:latest"),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));

    let proxy = FaultProxy::start(reg.addr());
    let image = format!("{}/run/lazy:latest", proxy.host());
    let root = tempfile::tempdir().unwrap();
    let skiff = Skiff::new(root.path());
    let _guard = skiff.guard(root.path());
    // Background fetch off: it would start after a few seconds of quiet, and on a slow
    // machine add bytes the command never read.
    let run_motd = || skiff.run_cat(&image, "/etc/motd");
    let out = run_motd();
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello from layer two\n"
    );

    let layer_digests: Vec<String> = built
        .layers
        .iter()
        .map(|l| skiff_proto::Digest::of(&l.blob).to_string())
        .collect();
    let mut fetched = 0u64;
    for r in proxy
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path.contains("/blobs/"))
    {
        let Some(range) = r.range.as_deref() else {
            // Whole-blob reads are for the config and the published index only.
            assert!(
                !layer_digests.iter().any(|d| r.path.ends_with(d.as_str())),
                "a layer was fetched whole: {r:?}"
            );
            continue;
        };
        let (a, b) = range.trim_start_matches("bytes=").split_once('-').unwrap();
        fetched += b.parse::<u64>().unwrap() - a.parse::<u64>().unwrap() + 1;
    }
    eprintln!("cold run fetched {fetched} of {image_size} bytes");
    assert!(fetched > 0);
    assert!(
        fetched < image_size / 2,
        "fetched {fetched} of {image_size} bytes"
    );

    // Warm: the same image again reads no layer byte from the registry (the tag is
    // still resolved: manifest and config).
    proxy.clear_requests();
    let out = run_motd();
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let layer_reads: Vec<_> = proxy
        .requests()
        .into_iter()
        .filter(|r| layer_digests.iter().any(|d| r.path.ends_with(d.as_str())))
        .collect();
    assert!(layer_reads.is_empty(), "{layer_reads:?}");
}

/// `-d` runs the container under a monitor; a monitor killed outright leaves a mounted
/// view with no server, which the next skiff command notices and cleans up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detached_run_and_cleanup_after_sigkill() {
    let reg = Registry::start();
    push_busybox(&reg.host(), "run/detach", 1 << 20).await;
    let root = tempfile::tempdir().unwrap();
    let skiff = Skiff::new(root.path());
    let _guard = skiff.guard(root.path());
    let image = reg.reference("run/detach:latest");

    let out = skiff.run(&[
        "run",
        "-d",
        "--name",
        "bg",
        &image,
        "sh",
        "-c",
        "echo started; exec sleep 300",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(id.len(), 64, "{}", describe(&out));
    let state: serde_json::Value = serde_json::from_slice(
        &std::fs::read(root.path().join("containers").join(&id).join("state.json")).unwrap(),
    )
    .unwrap();
    let monitor = state["monitor"]["pid"]
        .as_i64()
        .expect("monitor pid recorded");
    let mountpoint = root.path().join("containers").join(&id).join("rootfs");
    assert!(
        !no_fuse_mounts_under(&mountpoint),
        "the lazy view is mounted while the container runs"
    );
    let out = skiff.run(&["ps"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("bg"),
        "{}",
        describe(&out)
    );
    for _ in 0..100 {
        let out = skiff.run(&["logs", "bg"]);
        if String::from_utf8_lossy(&out.stdout).contains("started") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(String::from_utf8_lossy(&skiff.run(&["logs", "bg"]).stdout).contains("started"));

    // SIGKILL the monitor (the FUSE server dies with it).
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &monitor.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    wait_until_dead(monitor as i32);
    let out = skiff.run(&["ps", "-a"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("bg"),
        "{}",
        describe(&out)
    );
    assert!(
        no_fuse_mounts_under(root.path()),
        "the stale mount was not cleaned"
    );
    let out = skiff.run(&["rm", "bg"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(!root.path().join("containers").join(&id).exists());
}

/// skiff killed while the container is still starting (its exec waits on a FUSE read
/// the stalled registry never answers): nothing may be left hanging on the dead
/// mount. The container's processes must not hold the FUSE server's descriptor, or
/// the kernel never aborts the connection and they wait in D state forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_stalled_start_leaves_no_hung_process() {
    let reg = Registry::start();
    let built = push_busybox(&reg.host(), "run/stall", 1 << 20).await;
    let publisher = tempfile::tempdir().unwrap();
    let out = Skiff::new(publisher.path()).run(&[
        "index",
        "--push",
        "-q",
        &reg.reference("run/stall:latest"),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));

    let proxy = FaultProxy::start(reg.addr());
    for layer in &built.layers {
        let digest = skiff_proto::Digest::of(&layer.blob).to_string();
        proxy.add_rule(
            Rule::new(
                &digest,
                Fault::Stall(std::time::Duration::from_secs(120)),
                None,
            )
            .method("GET"),
        );
    }
    let root = tempfile::tempdir().unwrap();
    let skiff = Skiff::new(root.path());
    let _guard = skiff.guard(root.path());
    let image = format!("{}/run/stall:latest", proxy.host());
    let mut child = KillOnDrop::spawn(
        skiff
            .command()
            .args(["run", "--rm", &image, "sh", "-c", "echo never"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null()),
    );
    let stalled = || {
        proxy
            .requests()
            .iter()
            .any(|r| matches!(r.fault, Some(Fault::Stall(_))))
    };
    for _ in 0..500 {
        if stalled() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(stalled(), "the container never read a layer byte");
    // The container's processes exist by now (one of them is blocked in the stalled
    // read); wait, bounded, until skiff's process tree shows them.
    let mut descendants = descendants_of(child.id() as i32);
    for _ in 0..250 {
        if !descendants.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        descendants = descendants_of(child.id() as i32);
    }
    assert!(!descendants.is_empty(), "skiff started no container");

    child.kill().unwrap();
    child.wait().unwrap();
    let mut alive = descendants.clone();
    for _ in 0..300 {
        alive.retain(|p| std::path::Path::new(&format!("/proc/{p}")).exists());
        if alive.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let states: Vec<String> = alive
        .iter()
        .map(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default())
        .collect();
    // Unstick them before failing, so a broken build does not leave hung processes.
    if !alive.is_empty() {
        abort_fuse_connections_under(root.path());
    }
    assert!(alive.is_empty(), "still running: {states:?}");

    // The next command cleans the dead mount and the container's state.
    let out = skiff.run(&["ps", "-a"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(no_fuse_mounts_under(root.path()), "a dead mount is left");
}

/// Waits (bounded) until `pid` has exited: gone from /proc, or a zombie.
fn wait_until_dead(pid: i32) {
    for _ in 0..500 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let zombie = stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
        if stat.is_empty() || zombie {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("process {pid} is still running");
}

/// Aborts the FUSE connection of every mount under `dir` (through fusectl), so
/// processes waiting on a dead server fail instead of hanging, and unmounts it.
fn abort_fuse_connections_under(dir: &std::path::Path) {
    let _ = std::process::Command::new("mount")
        .args(["-t", "fusectl", "none", "/sys/fs/fuse/connections"])
        .status();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    for l in mounts.lines() {
        let f: Vec<&str> = l.split(' ').collect();
        if f.len() > 4 && f[4].starts_with(&*dir.to_string_lossy()) {
            if let Some((_, minor)) = f[2].split_once(':') {
                let _ = std::fs::write(format!("/sys/fs/fuse/connections/{minor}/abort"), "1");
            }
            let _ = std::process::Command::new("umount")
                .args(["-l", f[4]])
                .status();
        }
    }
}
