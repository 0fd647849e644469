//! Shared fixtures for the `skiff run` tests: a busybox image built with umoci, its
//! runc bundle, and helpers to run `skiff` and `runc` on it. Tests run as root.
//!
//! [`Rootfs`] and [`Image`] clean up on drop, even after a failed assertion: every
//! container of their state root is removed (`skiff rm -f`, which also kills a
//! container whose skiff is gone) and whatever is still mounted below their
//! directory is lazily unmounted before the directory is deleted. Processes a test
//! spawns are held in a [`KillOnDrop`] and runc
//! containers in a [`RuncContainer`].

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

// The same guard code the skiff-tests harness uses (std and libc only).
#[path = "../../../tests/src/guard.rs"]
mod guard;
#[allow(unused_imports)] // not every test binary uses both
pub use guard::{descendants_of, KillOnDrop};

/// The default network of `skiff run` in tests (`SKIFF_NETWORK`): `none`, so that no
/// test outside `run_network` (which makes its own network namespace) touches the
/// host's network.
pub const TEST_NETWORK: &str = "none";

/// Path of the skiff binary under test.
pub fn skiff_bin() -> &'static str {
    env!("CARGO_BIN_EXE_skiff")
}

fn check(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Fills `rootfs` with busybox (static), applet links, and passwd/group with a named
/// user `alice` (1000:1000, also in group wheel=10).
pub fn fill_busybox_rootfs(rootfs: &Path) {
    let bin = rootfs.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(rootfs.join("etc")).unwrap();
    std::fs::copy("/bin/busybox", bin.join("busybox")).expect("busybox-static installed");
    let list = Command::new("/bin/busybox").arg("--list").output().unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" {
            let _ = std::os::unix::fs::symlink("busybox", bin.join(applet));
        }
    }
    std::fs::write(
        rootfs.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000:Alice:/home/alice:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(
        rootfs.join("etc/group"),
        "root:x:0:\nalice:x:1000:\nwheel:x:10:alice\n",
    )
    .unwrap();
}

/// A plain busybox rootfs plus a skiff state root, in one temp dir.
pub struct Rootfs {
    /// Owns the directory.
    pub dir: tempfile::TempDir,
    /// The root filesystem.
    pub rootfs: PathBuf,
    /// `--root` for skiff.
    pub state: PathBuf,
}

impl Rootfs {
    /// Builds a fresh busybox rootfs.
    pub fn new() -> Rootfs {
        let dir = tempfile::Builder::new()
            .prefix("skiff-run-")
            .tempdir()
            .unwrap();
        let rootfs = dir.path().join("rootfs");
        fill_busybox_rootfs(&rootfs);
        let state = dir.path().join("state");
        Rootfs { state, rootfs, dir }
    }

    /// `skiff --root STATE run --rootfs ROOTFS <args>`.
    pub fn skiff_cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(skiff_bin());
        c.env("SKIFF_NETWORK", TEST_NETWORK);
        c.arg("--root")
            .arg(&self.state)
            .arg("run")
            .arg("--rootfs")
            .arg(&self.rootfs);
        c.args(args);
        c.stdin(Stdio::null());
        c
    }

    /// Runs skiff to completion.
    pub fn skiff(&self, args: &[&str]) -> Output {
        self.skiff_cmd(args).output().unwrap()
    }

    /// `skiff --root STATE <args>` (any subcommand: exec, ps, stop…) to completion,
    /// stdin from /dev/null.
    pub fn skiff_at_root(&self, args: &[&str]) -> Output {
        Command::new(skiff_bin())
            .arg("--root")
            .arg(&self.state)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Asserts nothing of this test is still mounted.
    pub fn assert_no_mounts(&self) {
        assert_no_mounts_under(self.dir.path());
    }
}

impl Drop for Rootfs {
    fn drop(&mut self) {
        clean_up(&self.state, self.dir.path());
    }
}

/// Removes every container of skiff root `state` and unmounts what is left below
/// `dir` (see the module comment).
fn clean_up(state: &Path, dir: &Path) {
    guard::remove_all_containers(Path::new(skiff_bin()), state);
    guard::unmount_all_under(dir);
}

/// A runc container id, force-deleted on drop (`runc delete -f`).
pub struct RuncContainer(pub String);

impl Drop for RuncContainer {
    fn drop(&mut self) {
        let _ = Command::new("runc")
            .args(["delete", "-f", &self.0])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Asserts /proc/self/mountinfo has no mount below `dir`.
pub fn assert_no_mounts_under(dir: &Path) {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let d = dir.to_string_lossy();
    let left: Vec<&str> = info.lines().filter(|l| l.contains(&*d)).collect();
    assert!(left.is_empty(), "leftover mounts: {left:#?}");
}

/// An output's stdout as text.
pub fn stdout_text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An output's stderr as text.
pub fn stderr_text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The exit code of an output, 128+N for a signal (as a shell reports it).
pub fn code(out: &Output) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    out.status
        .code()
        .unwrap_or_else(|| 128 + out.status.signal().unwrap_or(0))
}

/// A busybox image in an OCI layout made with umoci, and a runc bundle unpacked from it.
pub struct Image {
    /// Owns everything.
    pub dir: tempfile::TempDir,
    /// The unpacked runc bundle (config.json + rootfs).
    pub bundle: PathBuf,
    /// The image's config JSON (as stored in the layout).
    pub image_config: PathBuf,
    /// skiff's state root.
    pub state: PathBuf,
}

impl Image {
    /// Builds image `L:t` with Cmd ["sh"], Env FOO=bar, WorkingDir /work, and unpacks it.
    pub fn build() -> Image {
        let dir = tempfile::Builder::new()
            .prefix("skiff-umoci-")
            .tempdir()
            .unwrap();
        let d = dir.path();
        let layout = d.join("L");
        let tag = format!("{}:t", layout.display());
        check(
            Command::new("umoci")
                .args(["init", "--layout"])
                .arg(&layout),
        );
        check(Command::new("umoci").args(["new", "--image", &tag]));
        let work = d.join("W");
        check(
            Command::new("umoci")
                .args(["unpack", "--image", &tag])
                .arg(&work),
        );
        fill_busybox_rootfs(&work.join("rootfs"));
        check(
            Command::new("umoci")
                .args(["repack", "--image", &tag])
                .arg(&work),
        );
        check(Command::new("umoci").args([
            "config",
            "--image",
            &tag,
            "--config.cmd",
            "sh",
            "--config.env",
            "FOO=bar",
            "--config.workingdir",
            "/work",
        ]));
        let bundle = d.join("B");
        check(
            Command::new("umoci")
                .args(["unpack", "--image", &tag])
                .arg(&bundle),
        );
        std::fs::remove_dir_all(&work).unwrap();

        // The image config blob: index.json → manifest → config.
        let read = |p: PathBuf| -> serde_json::Value {
            serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
        };
        let blob = |digest: &str| {
            layout
                .join("blobs/sha256")
                .join(digest.trim_start_matches("sha256:"))
        };
        let index = read(layout.join("index.json"));
        let manifest = read(blob(index["manifests"][0]["digest"].as_str().unwrap()));
        let image_config = blob(manifest["config"]["digest"].as_str().unwrap());
        let state = d.join("state");
        Image {
            dir,
            bundle,
            image_config,
            state,
        }
    }

    /// skiff on the bundle's rootfs with the image's config.
    pub fn skiff(&self, args: &[&str]) -> Output {
        self.skiff_cmd(args).output().unwrap()
    }

    /// The command for [`Image::skiff`].
    pub fn skiff_cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(skiff_bin());
        c.env("SKIFF_NETWORK", TEST_NETWORK);
        c.arg("--root").arg(&self.state).arg("run").arg("--rm");
        c.arg("--rootfs").arg(self.bundle.join("rootfs"));
        c.arg("--image-config").arg(&self.image_config);
        c.args(args);
        c.stdin(Stdio::null());
        c
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        clean_up(&self.state, self.dir.path());
    }
}

/// Waits until process `pid` has a child that has exec'd `comm`, and returns it.
pub fn wait_for_child_of(pid: u32, comm: &str) -> i32 {
    // Match on the exec'd program's name, not on "not skiff": the intermediate child
    // is briefly a zombie (whose exe cannot be read) and PID 1 runs skiff's code until
    // it execs, and killing either of those tests nothing.
    for _ in 0..1000 {
        let path = format!("/proc/{pid}/task/{pid}/children");
        if let Ok(s) = std::fs::read_to_string(&path) {
            for c in s.split_whitespace() {
                let c: i32 = c.parse().unwrap();
                let name = std::fs::read_to_string(format!("/proc/{c}/comm")).unwrap_or_default();
                if name.trim_end() == comm {
                    return c;
                }
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("skiff {pid} never started a container running {comm}");
}
