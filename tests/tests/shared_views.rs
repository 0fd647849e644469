//! `skiff run` through `skiff daemon`: the containers of one image share one
//! read-only FUSE view of it, each with an overlayfs root of its own on top (its
//! upper directory in overlayfs's format). A container's writes and deletes are its
//! own (invisible to the other container and to the image), `skiff exec` and
//! `skiff commit` see them, and the view is unmounted once its
//! containers are gone and its idle time has passed, or on `skiff daemon stop`.
//!
//! Needs root, `docker-registry`, `fusermount3`.

use skiff_tests::cli::{describe, Skiff};
use skiff_tests::containerd::keeper_pid;
use skiff_tests::fixtures::push_busybox;
use skiff_tests::guard::{unmount_all_under, KillOnDrop};
use skiff_tests::registry::Registry;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

/// How long a view stays mounted after its last container, in this test's daemon.
const IDLE_SECS: u64 = 5;

/// `skiff -v daemon --view-idle-secs IDLE_SECS` on a test root (log in
/// `<root>/daemon.log`); killed on drop with its keeper, every mount below the root
/// detached.
struct Daemon {
    child: Option<KillOnDrop>,
    root: PathBuf,
}

impl Daemon {
    fn start(skiff: &Skiff) -> Daemon {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(skiff.root.join("daemon.log"))
            .unwrap();
        let child = KillOnDrop::spawn(
            skiff
                .command()
                .args(["-v", "daemon", "--view-idle-secs", &IDLE_SECS.to_string()])
                .stdout(Stdio::null())
                .stderr(log),
        );
        let d = Daemon {
            child: Some(child),
            root: skiff.root.clone(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while UnixStream::connect(d.root.join("daemon.sock")).is_err() {
            assert!(Instant::now() < deadline, "no daemon socket: {}", d.log());
            std::thread::sleep(Duration::from_millis(20));
        }
        d
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.root.join("daemon.log")).unwrap_or_default()
    }

    /// Waits until the daemon has exited by itself (it unmounts before it exits).
    fn wait_exit(&mut self) {
        let child = self.child.as_mut().expect("the daemon runs");
        let deadline = Instant::now() + Duration::from_secs(30);
        while child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "the daemon did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.child = None;
        if let Some(pid) = keeper_pid(&self.root) {
            // SAFETY: a pid whose command line was just checked to be a keeper.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        unmount_all_under(&self.root);
    }
}

/// One line of /proc/self/mountinfo: mount point, filesystem type, super options.
struct MountInfo {
    mountpoint: PathBuf,
    fstype: String,
    super_options: String,
}

/// The mounts at or below `dir`.
fn mounts_below(dir: &Path) -> Vec<MountInfo> {
    let canon = std::fs::canonicalize(dir).unwrap();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| {
            let fields: Vec<&str> = l.split(' ').collect();
            let dash = fields.iter().position(|f| *f == "-")?;
            Some(MountInfo {
                mountpoint: PathBuf::from(fields.get(4)?.replace("\\040", " ")),
                fstype: fields.get(dash + 1)?.to_string(),
                super_options: fields.get(dash + 3)?.to_string(),
            })
        })
        .filter(|m| m.mountpoint.starts_with(&canon))
        .collect()
}

fn fuse_mounts_below(dir: &Path) -> Vec<PathBuf> {
    mounts_below(dir)
        .into_iter()
        .filter(|m| m.fstype.starts_with("fuse"))
        .map(|m| m.mountpoint)
        .collect()
}

fn ok(out: &Output, what: &str, daemon: &Daemon) -> String {
    assert_eq!(
        out.status.code(),
        Some(0),
        "{what}: {}\n{}",
        describe(out),
        daemon.log()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits until `cond` holds (polling), at most `secs`.
fn wait_for(secs: u64, what: &str, daemon: &Daemon, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: {}", daemon.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What container "a" changes: a new file (mode 0640, owned by alice) with a second
/// hard link, the lower `/etc/motd` replaced, the lower `/data/big` deleted and the
/// lower directory `/bin` replaced by one holding only busybox and `sh`.
const CHANGES: &str = "echo mine > /etc/motd \
    && echo new > /new.txt && busybox chmod 640 /new.txt && busybox chown 1000:1000 /new.txt \
    && busybox ln /new.txt /hard.txt \
    && rm /data/big \
    && busybox cp /bin/busybox /busybox && busybox rm -rf /bin && /busybox mkdir /bin \
    && /busybox mv /busybox /bin/busybox && /bin/busybox ln -s busybox /bin/sh";

/// What a container with those changes prints for [`SHOW`].
const SHOWN: &str = "mine\nnew\nnew\ndata=\nbin=busybox sh\n640 1000 1000\n";
const SHOW: &str = "busybox cat /etc/motd /new.txt /hard.txt; \
    echo data=$(busybox ls -A /data); echo bin=$(busybox ls -A /bin); \
    busybox stat -c '%a %u %g' /new.txt";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_of_one_image_share_one_view_with_an_overlay_each() {
    if !skiff_tests::tools_or_skip(
        &["docker-registry", "fusermount3"],
        "FUSE mounts and containers through the daemon",
    ) {
        return;
    }
    let reg = Registry::start();
    push_busybox(&reg.host(), "shared/busybox", 256 << 10).await;
    let image = reg.reference("shared/busybox:latest");
    let root = tempfile::tempdir().unwrap();
    let skiff = Skiff::new(root.path());
    let _guard = skiff.guard(root.path());
    let mut daemon = Daemon::start(&skiff);

    let start = |name: &str| {
        let out = skiff.run(&["run", "-d", "--name", name, &image, "sleep", "300"]);
        ok(&out, "skiff run -d", &daemon).trim().to_string()
    };
    let (a, b) = (start("a"), start("b"));
    let containers = root.path().join("containers");
    let rootfs = |id: &str| std::fs::canonicalize(containers.join(id).join("rootfs")).unwrap();

    // One FUSE mount under the root, the view; each container's root is an overlay
    // on it.
    let fuse = fuse_mounts_below(root.path());
    assert_eq!(fuse.len(), 1, "FUSE mounts: {fuse:?}");
    let view = &fuse[0];
    let mounts = mounts_below(root.path());
    for id in [&a, &b] {
        let m = mounts
            .iter()
            .find(|m| m.mountpoint == rootfs(id))
            .unwrap_or_else(|| panic!("container {id} has no root mount"));
        assert_eq!(m.fstype, "overlay", "{}", m.super_options);
        assert!(
            m.super_options
                .contains(&format!("lowerdir={}", view.display())),
            "{}",
            m.super_options
        );
        // The upper directory in plain overlay format (no option turned on that
        // would write redirects, metacopy files or an index).
        assert!(
            m.super_options.contains(&format!(
                "upperdir={}",
                containers.join(id).join("upper").display()
            )) && ["redirect_dir=on", "metacopy=on", "index=on"]
                .iter()
                .all(|o| !m.super_options.contains(o)),
            "{}",
            m.super_options
        );
        // Kept after the run (no --rm): the overlay syncs its upper as usual.
        assert!(!m.super_options.contains("volatile"), "{}", m.super_options);
    }
    let status = ok(&skiff.run(&["daemon", "status"]), "status", &daemon);
    assert!(status.contains("2 container(s)"), "{status}");

    // Writes and deletes of "a" are its own.
    let out = skiff.run(&["exec", "a", "sh", "-c", CHANGES]);
    ok(&out, "changes in a", &daemon);
    let out = skiff.run(&["exec", "a", "sh", "-c", SHOW]);
    assert_eq!(ok(&out, "a shows", &daemon), SHOWN);
    let out = skiff.run(&[
        "exec",
        "b",
        "sh",
        "-c",
        "cat /etc/motd; ls /data; test -e /new.txt; echo new=$?; test -e /bin/cat; echo cat=$?",
    ]);
    assert_eq!(
        ok(&out, "b sees the image", &daemon),
        "hello from layer two\nbig\nnew=1\ncat=0\n"
    );
    assert_eq!(
        std::fs::read_to_string(view.join("etc/motd")).unwrap(),
        "hello from layer two\n"
    );
    assert!(view.join("data/big").exists() && view.join("bin/cat").exists());
    // In a's upper directory: overlayfs's whiteout for the deleted lower file, an
    // opaque directory for the replaced one.
    let upper = containers.join(&a).join("upper");
    let wh = std::fs::symlink_metadata(upper.join("data/big")).unwrap();
    assert!(wh.file_type().is_char_device(), "{wh:?}");
    assert!(!upper.join("bin/cat").exists());

    for name in ["a", "b"] {
        ok(
            &skiff.run(&["stop", "-t", "0", name]),
            "skiff stop",
            &daemon,
        );
    }
    // The containers' roots go at once, the view after its idle time.
    wait_for(10, "containers' roots still mounted", &daemon, || {
        mounts_below(&containers).is_empty()
    });
    // (The daemon counts a container off its view just after unmounting its root.)
    wait_for(IDLE_SECS, "the view is not idle", &daemon, || {
        let status = skiff.run(&["daemon", "status"]);
        String::from_utf8_lossy(&status.stdout).contains("unused for")
    });

    // The stopped container's changes commit into an image whose containers (through
    // the daemon again) show them.
    let new = reg.reference("shared/committed:v1");
    let committed = ok(&skiff.run(&["commit", "a", &new]), "skiff commit", &daemon);
    assert!(committed.trim().starts_with("sha256:"), "{committed}");
    let out = skiff.run(&["run", "--rm", &new, "sh", "-c", SHOW]);
    assert_eq!(ok(&out, "the committed image", &daemon), SHOWN);

    wait_for(
        IDLE_SECS + 10,
        "the views are still mounted after their idle time",
        &daemon,
        || fuse_mounts_below(root.path()).is_empty(),
    );
    for name in ["a", "b"] {
        ok(&skiff.run(&["rm", name]), "skiff rm", &daemon);
    }

    // A --rm container's upper is deleted after the run: its overlay is volatile, so
    // the unmount does not sync the upper's whole filesystem.
    let out = skiff.run(&[
        "run",
        "--rm",
        &image,
        "busybox",
        "grep",
        " / ",
        "/proc/self/mounts",
    ]);
    let root_mount = ok(&out, "a --rm container's root mount", &daemon);
    assert!(
        // `volatile`, shown as `fsync=volatile` by kernels with the fsync= option.
        root_mount.starts_with("overlay / overlay ") && root_mount.contains("volatile"),
        "{root_mount}"
    );

    // `skiff daemon stop` unmounts a view still in its idle time.
    let out = skiff.run(&["run", "--rm", &image, "cat", "/etc/motd"]);
    assert_eq!(ok(&out, "one more run", &daemon), "hello from layer two\n");
    assert_eq!(fuse_mounts_below(root.path()).len(), 1);
    ok(&skiff.run(&["daemon", "stop"]), "daemon stop", &daemon);
    daemon.wait_exit();
    assert!(
        mounts_below(root.path()).is_empty(),
        "{:?}",
        fuse_mounts_below(root.path())
    );
}
