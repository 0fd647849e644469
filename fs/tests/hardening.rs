//! Issue 16, the filesystem's part: a container that owns the upper directory cannot
//! reach host files through symlinks or the hidden work directory, and a slow copy-up
//! does not freeze the rest of the mount.

mod common;

use common::*;
use skiff_fs::Layer;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

fn c(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

/// Everything about a host file that a setattr could change.
fn host_state(p: &Path) -> (u32, u32, u32, u64, i64, Vec<u8>) {
    let md = std::fs::symlink_metadata(p).unwrap();
    (
        md.mode(),
        md.uid(),
        md.gid(),
        md.size(),
        md.mtime(),
        std::fs::read(p).unwrap(),
    )
}

/// Every way a program can ask to change "the symlink" `link` itself: through the
/// `/proc/self/fd` magic link of an `O_PATH | O_NOFOLLOW` descriptor (which reaches
/// the FUSE `setattr` of the symlink's own inode) and the `l*`/NOFOLLOW calls.
/// The results are ignored: only the host file's state matters.
fn try_to_change_through(link: &Path) {
    let lc = c(link);
    // SAFETY: plain syscalls on valid C strings; results are ignored on purpose.
    unsafe {
        let fd = libc::open(lc.as_ptr(), libc::O_PATH | libc::O_NOFOLLOW);
        assert!(fd >= 0, "open O_PATH {}", link.display());
        let proc = CString::new(format!("/proc/self/fd/{fd}")).unwrap();
        libc::chmod(proc.as_ptr(), 0o4777);
        libc::chown(proc.as_ptr(), 4321, 4321);
        libc::truncate(proc.as_ptr(), 0);
        let times = [
            libc::timespec {
                tv_sec: 12345,
                tv_nsec: 0,
            },
            libc::timespec {
                tv_sec: 12345,
                tv_nsec: 0,
            },
        ];
        libc::utimensat(libc::AT_FDCWD, proc.as_ptr(), times.as_ptr(), 0);
        libc::close(fd);
        libc::fchmodat(
            libc::AT_FDCWD,
            lc.as_ptr(),
            0o4777,
            libc::AT_SYMLINK_NOFOLLOW,
        );
        libc::lchown(lc.as_ptr(), 4321, 4321);
        libc::utimensat(
            libc::AT_FDCWD,
            lc.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        );
    }
}

// On kernels from 6.6 on, `chmod` through the magic link of an O_PATH symlink is
// refused before it reaches FUSE, so this passed before the fix here too; the unit
// tests in `upper.rs` (`setattr_calls_on_a_symlink_never_reach_its_target`) cover the
// decision itself and failed before it.
#[test]
fn setattr_on_a_symlink_never_changes_the_host_file_it_points_to() {
    let tmp = tempfile::tempdir().unwrap();
    let host = tmp.path().join("host-file");
    std::fs::write(&host, b"host content\n").unwrap();
    std::fs::set_permissions(&host, std::fs::Permissions::from_mode(0o644)).unwrap();
    let before = host_state(&host);
    let host_s = host.to_str().unwrap();
    let img = image(
        &tmp.path().join("img"),
        &[build_layer(&[
            Item::Symlink("lowlink", host_s),
            Item::Dir("d", 0o755),
            Item::Symlink("d/lowlink", host_s),
        ])],
    );
    let upper = tmp.path().join("upper");
    let mnt = tmp.path().join("mnt");
    let m = Mounted::new(
        options(&img, &tmp.path().join("cache"), Some(upper.clone())),
        &mnt,
    );
    std::os::unix::fs::symlink(&host, mnt.join("uplink")).unwrap();
    for name in ["uplink", "lowlink", "d/lowlink"] {
        try_to_change_through(&mnt.join(name));
        assert_eq!(
            host_state(&host),
            before,
            "the host file changed through {name}"
        );
        // The link itself is still a link to the host file.
        assert_eq!(std::fs::read_link(mnt.join(name)).unwrap(), host);
    }
    // chmod of a symlink is refused as overlayfs refuses it.
    let fd = unsafe {
        libc::open(
            c(&mnt.join("uplink")).as_ptr(),
            libc::O_PATH | libc::O_NOFOLLOW,
        )
    };
    let proc = CString::new(format!("/proc/self/fd/{fd}")).unwrap();
    let r = unsafe { libc::chmod(proc.as_ptr(), 0o700) };
    let err = std::io::Error::last_os_error().raw_os_error();
    unsafe { libc::close(fd) };
    assert_eq!((r, err), (-1, Some(libc::EOPNOTSUPP)));
    drop(m);
    assert_eq!(host_state(&host), before);
}

#[test]
fn the_work_directory_cannot_be_seen_renamed_onto_or_created() {
    let tmp = tempfile::tempdir().unwrap();
    let img = image(
        &tmp.path().join("img"),
        &[build_layer(&[Item::File("f", 0o644, b"file")])],
    );
    let upper = tmp.path().join("upper");
    let mnt = tmp.path().join("mnt");
    let _m = Mounted::new(
        options(&img, &tmp.path().join("cache"), Some(upper.clone())),
        &mnt,
    );
    let work = upper.join(".skiff-work");
    let work_ino = std::fs::metadata(&work).unwrap().ino();
    let hidden = mnt.join(".skiff-work");

    let names: Vec<_> = std::fs::read_dir(&mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(!names.iter().any(|n| n == ".skiff-work"), "{names:?}");
    assert!(std::fs::symlink_metadata(&hidden).is_err());

    std::fs::create_dir(mnt.join("emptydir")).unwrap();
    std::fs::write(mnt.join("newfile"), b"x").unwrap();
    assert!(std::fs::rename(mnt.join("emptydir"), &hidden).is_err());
    assert!(std::fs::rename(mnt.join("newfile"), &hidden).is_err());
    assert!(std::fs::rename(mnt.join("f"), &hidden).is_err());
    assert!(std::fs::create_dir(&hidden).is_err());
    assert!(std::fs::write(&hidden, b"x").is_err());
    assert!(std::os::unix::fs::symlink("/etc", &hidden).is_err());
    assert!(std::fs::hard_link(mnt.join("newfile"), &hidden).is_err());
    let exchanged = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            c(&mnt.join("emptydir")).as_ptr(),
            libc::AT_FDCWD,
            c(&hidden).as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    assert_eq!(exchanged, -1);

    let md = std::fs::symlink_metadata(&work).unwrap();
    assert!(md.is_dir());
    assert_eq!(md.ino(), work_ino, "the work directory was replaced");
    assert!(mnt.join("emptydir").is_dir());
    assert_eq!(std::fs::read(mnt.join("newfile")).unwrap(), b"x");
    assert_eq!(std::fs::read(mnt.join("f")).unwrap(), b"file");
}

/// Runs `f` on a thread; whether it finished within `limit`.
fn finishes_within(limit: Duration, f: impl FnOnce() + Send + 'static) -> bool {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        f();
        let _ = tx.send(());
    });
    rx.recv_timeout(limit).is_ok()
}

/// `change` copies up lower file `big` while its fetch is stalled; other operations
/// of the mount must go on meanwhile.
fn copy_up_stalls_only_itself(change: fn(&Path)) {
    let tmp = tempfile::tempdir().unwrap();
    let big = content(7, 600_000);
    let layer = build_layer(&[
        Item::File("big", 0o644, &big),
        Item::Dir("dir", 0o755),
        Item::File("dir/other", 0o644, b"other"),
    ]);
    let img = image(&tmp.path().join("img"), &[layer]);
    let gated = GatedBlob::new(img.readers[0].clone());
    let _release = ReleaseOnDrop(gated.clone());
    let mut opts = options(&img, &tmp.path().join("cache"), Some(tmp.path().join("up")));
    opts.layers = vec![Layer {
        index: img.layers[0].index.clone(),
        blob: gated.clone(),
    }];
    let mnt = tmp.path().join("mnt");
    let m = Mounted::new(opts, &mnt);

    let target = mnt.join("big");
    let changer = std::thread::spawn(move || change(&target));
    gated.wait_seen(1);
    let m2 = mnt.clone();
    let others_done = finishes_within(Duration::from_secs(5), move || {
        std::fs::metadata(m2.join("dir/other")).unwrap();
        std::fs::read_dir(m2.join("dir")).unwrap().for_each(drop);
        std::fs::write(m2.join("new"), b"new").unwrap();
    });
    gated.release();
    changer.join().unwrap();
    assert!(
        others_done,
        "stat/ls/create waited for another file's copy-up fetch"
    );
    assert_eq!(std::fs::read(mnt.join("big")).unwrap(), big);
    drop(m);
}

#[test]
fn a_slow_chmod_copy_up_does_not_freeze_the_mount() {
    copy_up_stalls_only_itself(|p| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600)).unwrap()
    });
}

#[test]
fn a_slow_touch_copy_up_does_not_freeze_the_mount() {
    copy_up_stalls_only_itself(|p| {
        let t = [libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        }; 2];
        let r = unsafe { libc::utimensat(libc::AT_FDCWD, c(p).as_ptr(), t.as_ptr(), 0) };
        assert_eq!(r, 0);
    });
}

#[test]
fn a_slow_setxattr_copy_up_does_not_freeze_the_mount() {
    copy_up_stalls_only_itself(|p| skiff_fs::upper::set_xattr(p, b"user.k", b"v", 0).unwrap());
}

#[test]
fn copy_up_scratch_left_by_a_crash_is_removed_at_the_next_mount() {
    let tmp = tempfile::tempdir().unwrap();
    let img = image(
        &tmp.path().join("img"),
        &[build_layer(&[Item::File("f", 0o644, b"file")])],
    );
    let upper = tmp.path().join("upper");
    let work = upper.join(".skiff-work");
    std::fs::create_dir_all(work.join("copyup-9-2")).unwrap();
    std::fs::write(work.join("copyup-7-1"), b"half a file").unwrap();
    std::os::unix::fs::symlink("/etc", work.join("copyup-8-3")).unwrap();
    let mnt = tmp.path().join("mnt");
    let m = Mounted::new(
        options(&img, &tmp.path().join("cache"), Some(upper.clone())),
        &mnt,
    );
    assert_eq!(std::fs::read_dir(&work).unwrap().count(), 0);
    assert!(Path::new("/etc/passwd").exists());
    // Copy-up still works through the emptied work directory.
    std::fs::write(mnt.join("f"), b"changed").unwrap();
    assert_eq!(std::fs::read(upper.join("f")).unwrap(), b"changed");
    drop(m);
}
