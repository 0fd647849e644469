//! Cleanup for tests that start containers, processes and mounts, run even when an
//! assertion fails halfway: without it a failed test leaves `sleep` containers, busy
//! loops, cgroups and live FUSE mounts behind (and `TempDir` then deletes through the
//! mount).
//!
//! - [`ContainerGuard`]: on drop, stops and removes every container of a skiff root
//!   (`skiff ps -a -q` + `skiff rm -f`, which also kills PID 1 of a container whose
//!   skiff was killed) and lazily unmounts whatever is still mounted below a directory.
//! - [`KillOnDrop`]: a spawned process, killed and reaped on drop unless it has exited.
//!
//! Also compiled into the launcher's tests (`launcher/tests/common`, by path), so it
//! uses nothing but std and libc.

#![allow(dead_code)]

use std::ffi::CString;
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// Removes a skiff root's containers and unmounts what is left below `dir` on drop.
/// Declare it after the `TempDir` it cleans, so that it drops first.
pub struct ContainerGuard {
    skiff: PathBuf,
    root: PathBuf,
    dir: PathBuf,
}

impl ContainerGuard {
    /// A guard for containers of `skiff --root root` and mounts below `dir`.
    pub fn new(skiff: &Path, root: &Path, dir: &Path) -> ContainerGuard {
        ContainerGuard {
            skiff: skiff.to_path_buf(),
            root: root.to_path_buf(),
            dir: dir.to_path_buf(),
        }
    }
}

impl Drop for ContainerGuard {
    fn drop(&mut self) {
        remove_all_containers(&self.skiff, &self.root);
        unmount_all_under(&self.dir);
    }
}

/// `skiff rm -f` of every container `skiff ps -a -q` lists under `root`. Errors are
/// ignored: this runs while a test is already failing.
pub fn remove_all_containers(skiff: &Path, root: &Path) {
    if !root.join("containers").exists() {
        return;
    }
    let skiff_cmd = || {
        let mut c = Command::new(skiff);
        c.arg("--root").arg(root).stdin(Stdio::null());
        c.env("DOCKER_CONFIG", root.join("no-docker-config"));
        c
    };
    let Ok(listed) = skiff_cmd().args(["ps", "-a", "-q"]).output() else {
        return;
    };
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    let ids: Vec<&str> = listed.split_whitespace().collect();
    if ids.is_empty() {
        return;
    }
    let _ = skiff_cmd()
        .args(["rm", "-f"])
        .args(&ids)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Mount points at or below `dir`, deepest first.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let canon = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let mut found: Vec<PathBuf> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(m.replace("\\040", " ")))
        .filter(|m| m.starts_with(&canon))
        .collect();
    found.sort_by_key(|m| std::cmp::Reverse(m.as_os_str().len()));
    found.dedup();
    found
}

/// Lazily unmounts (`MNT_DETACH`) everything mounted at or below `dir`.
pub fn unmount_all_under(dir: &Path) {
    for m in mounts_under(dir) {
        let Ok(c) = CString::new(m.as_os_str().as_encoded_bytes()) else {
            continue;
        };
        // SAFETY: a valid C string; detaching a mount has no memory-safety concerns.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}

/// A spawned process that is killed (SIGKILL) and reaped when dropped, unless it has
/// already exited. Reaping through `Child` means no pid is ever signalled after it
/// could have been reused.
pub struct KillOnDrop(pub Child);

impl KillOnDrop {
    /// Spawns `cmd`.
    pub fn spawn(cmd: &mut Command) -> KillOnDrop {
        KillOnDrop(
            cmd.spawn()
                .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}")),
        )
    }
}

impl Deref for KillOnDrop {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Every process below `pid` (children of any of its threads, recursively).
pub fn descendants_of(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) else {
            continue;
        };
        for t in tasks.flatten() {
            let path = t.path().join("children");
            for c in std::fs::read_to_string(path)
                .unwrap_or_default()
                .split_whitespace()
            {
                if let Ok(c) = c.parse() {
                    out.push(c);
                    todo.push(c);
                }
            }
        }
    }
    out
}
