//! The node table follows the kernel's inode lifetime: walking a big tree fills it,
//! dropping the kernel's caches (FUSE `forget`) empties it again, and inode numbers
//! stay the same across the walks.

mod common;

use common::*;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const DIRS: usize = 200;
const FILES_PER_DIR: usize = 100;

fn find_all(mnt: &Path) -> usize {
    let out = Command::new("find").arg(mnt).output().expect("find");
    assert!(out.status.success());
    out.stdout.iter().filter(|&&b| b == b'\n').count()
}

fn drop_kernel_caches() {
    std::fs::write("/proc/sys/vm/drop_caches", b"2").expect("drop caches (needs root)");
}

/// Waits until the mount's node table holds fewer than `below` nodes; returns the last
/// count seen.
fn wait_nodes_below(m: &Mounted, below: u64) -> u64 {
    let start = Instant::now();
    loop {
        let n = m.stats().nodes;
        if n < below || start.elapsed() > Duration::from_secs(20) {
            return n;
        }
        drop_kernel_caches();
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn forgotten_inodes_leave_the_node_table() {
    let tmp = tempfile::tempdir().unwrap();
    let names: Vec<(String, String)> = (0..DIRS)
        .flat_map(|d| {
            (0..FILES_PER_DIR).map(move |f| (format!("d{d:03}"), format!("d{d:03}/f{f:03}")))
        })
        .collect();
    let mut items = Vec::new();
    for d in 0..DIRS {
        items.push(Item::Dir(&names[d * FILES_PER_DIR].0, 0o755));
        for f in 0..FILES_PER_DIR {
            items.push(Item::File(&names[d * FILES_PER_DIR + f].1, 0o644, b"x"));
        }
    }
    let img = image(&tmp.path().join("img"), &[build_layer(&items)]);
    let mnt = tmp.path().join("mnt");
    let m = Mounted::new(
        options(&img, &tmp.path().join("cache"), Some(tmp.path().join("up"))),
        &mnt,
    );
    let total = DIRS * FILES_PER_DIR + DIRS;
    let ino_before = std::fs::metadata(mnt.join("d007/f042")).unwrap().ino();

    for round in 0..2 {
        assert_eq!(find_all(&mnt), total + 1);
        let full = m.stats().nodes;
        assert!(
            full as usize >= total / 2,
            "round {round}: only {full} nodes after walking {total} entries"
        );
        let left = wait_nodes_below(&m, 1000);
        assert!(
            left < 1000,
            "round {round}: {left} nodes still held after the kernel forgot them ({full} at the peak)"
        );
    }
    assert_eq!(
        std::fs::metadata(mnt.join("d007/f042")).unwrap().ino(),
        ino_before
    );
    // Still a working filesystem after the table emptied: reads, writes, renames.
    assert_eq!(std::fs::read(mnt.join("d199/f099")).unwrap(), b"x");
    std::fs::write(mnt.join("d003/f001"), b"changed").unwrap();
    std::fs::rename(mnt.join("d003/f001"), mnt.join("d004/moved")).unwrap();
    drop_kernel_caches();
    assert_eq!(std::fs::read(mnt.join("d004/moved")).unwrap(), b"changed");
    assert!(!mnt.join("d003/f001").exists());
    drop(m);
}
