//! Issue 16, "any local user can run the image's setuid binaries as root": with a
//! detached container running from an image that holds a setuid-root busybox, an
//! unprivileged host user can neither execute, read nor list anything under the
//! container's rootfs, its upper directory, the chunk cache or its log, while the
//! container itself keeps working. The root was created with the wide modes an older
//! skiff left, so the test also covers tightening an existing root.

use skiff_tests::cli::{describe, Skiff};
use skiff_tests::fixtures::{self, build_image, push_built, Entry, Layer};
use skiff_tests::registry::Registry;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

/// Runs `argv` as nobody. runuser drops every id and capability before it execs;
/// `setpriv --reuid` keeps the saved uid 0 and its permitted capabilities until the
/// exec, so its own exec of a target is not what a host user can do.
fn as_nobody(argv: &[&str]) -> Output {
    Command::new("runuser")
        .args(["-u", "nobody", "--"])
        .args(argv)
        .output()
        .expect("runuser (util-linux)")
}

/// Asserts nobody's `argv` fails with EACCES.
fn refused(argv: &[&str]) {
    let out = as_nobody(argv);
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "nobody ran {argv:?}: {}",
        describe(&out)
    );
}

/// Stops and removes the container when the test ends, passed or not, so a failed
/// assertion leaves no FUSE mount or container behind.
struct Cleanup<'a>(&'a Skiff, &'static str);

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        let _ = self.0.run(&["stop", "-t", "0", self.1]);
        let _ = self.0.run(&["rm", "--force", self.1]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_users_cannot_reach_a_running_containers_tree() {
    let reg = Registry::start();
    let busybox = std::fs::read("/bin/busybox").expect("busybox-static is installed");
    let mut layers = fixtures::busybox_layers(1 << 16);
    layers.push(Layer::tar_gzip(&[Entry::file(
        "bin/busybox-suid",
        &busybox,
        0o4755,
    )]));
    let image = build_image(layers, &skiff_proto::image::Platform::host(), &["/bin/sh"]);
    push_built(
        &skiff_tests::client(&reg.host()),
        "hard/suid",
        "latest",
        &image,
    )
    .await;

    // A root an older skiff made: reachable and listable by everyone.
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let root = dir.path().join("root");
    for sub in ["", "containers", "cache"] {
        std::fs::create_dir_all(root.join(sub)).unwrap();
        std::fs::set_permissions(root.join(sub), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let skiff = Skiff::new(&root);
    let _cleanup = Cleanup(&skiff, "suid");
    let out = skiff.run(&[
        "run",
        "-d",
        "--name",
        "suid",
        &reg.reference("hard/suid:latest"),
        "sh",
        "-c",
        "echo started > /tmp/mark; cat /tmp/mark; /bin/busybox-suid echo suid-works; exec sleep 300",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let container = root.join("containers").join(&id);
    let (rootfs, upper, log) = (
        container.join("rootfs"),
        container.join("upper"),
        container.join("container.log"),
    );

    // The container works (its output reaches the log) ...
    let mut logs = String::new();
    for _ in 0..200 {
        logs = String::from_utf8_lossy(&skiff.run(&["logs", "suid"]).stdout).into_owned();
        if logs.contains("suid-works") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(
        logs.contains("started") && logs.contains("suid-works"),
        "{logs}"
    );
    assert!(rootfs.join("bin/busybox-suid").exists());

    // ... and nobody on the host gets in.
    let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&root), 0o711);
    assert_eq!(mode(&root.join("containers")), 0o700);
    assert_eq!(mode(&root.join("cache")), 0o700);
    assert_eq!(mode(&log), 0o600);
    let p = |p: &Path| p.to_string_lossy().into_owned();
    refused(&[&p(&rootfs.join("bin/busybox-suid")), "id", "-u"]);
    refused(&["/bin/cat", &p(&rootfs.join("etc/passwd"))]);
    refused(&["/bin/ls", &p(&rootfs)]);
    refused(&["/bin/ls", &p(&upper)]);
    refused(&["/bin/ls", &p(&root.join("cache"))]);
    refused(&["/bin/ls", &p(&root.join("containers"))]);
    refused(&["/bin/cat", &p(&log)]);
    refused(&["/bin/cat", &p(&container.join("state.json"))]);

    let out = skiff.run(&["stop", "-t", "0", "suid"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let out = skiff.run(&["rm", "suid"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
}
