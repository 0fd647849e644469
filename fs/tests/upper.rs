//! Copy-on-write upper: writes land in the upper directory in overlayfs's on-disk
//! format, lower files are copied up on first write, and everything survives a remount.

mod common;

use common::*;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

fn layers() -> Vec<Vec<u8>> {
    vec![
        build_layer(&[
            Item::Dir("etc", 0o755),
            Item::File("etc/conf", 0o640, b"lower conf\n"),
            Item::Dir("data", 0o755),
            Item::File("data/a", 0o644, b"aaa"),
            Item::File("data/b", 0o644, b"bbb"),
            Item::File("linked", 0o644, b"shared"),
            Item::Hardlink("linked2", "linked"),
            Item::FileFull("cap", 0o755, 0, 0, b"bin", vec![("user.k", b"v")]),
        ]),
        build_layer(&[Item::File("etc/extra", 0o600, b"extra")]),
    ]
}

fn is_whiteout(p: &Path) -> bool {
    let md = std::fs::symlink_metadata(p).unwrap();
    md.file_type().is_char_device() && md.rdev() == 0
}

#[test]
fn copy_on_write_upper_survives_remount() {
    let tmp = tempfile::tempdir().unwrap();
    let img = image(&tmp.path().join("img"), &layers());
    let cache = tmp.path().join("cache");
    let upper = tmp.path().join("upper");
    let mnt = tmp.path().join("mnt");
    let m = Mounted::new(options(&img, &cache, Some(upper.clone())), &mnt);

    // Copy-up on write keeps metadata and inode number.
    let ino = std::fs::metadata(mnt.join("etc/conf")).unwrap().ino();
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(mnt.join("etc/conf"))
            .unwrap();
        f.write_all(b"more\n").unwrap();
        f.sync_all().unwrap();
    }
    assert_eq!(
        std::fs::read(mnt.join("etc/conf")).unwrap(),
        b"lower conf\nmore\n"
    );
    assert_eq!(
        std::fs::read(upper.join("etc/conf")).unwrap(),
        b"lower conf\nmore\n"
    );
    let md = std::fs::metadata(mnt.join("etc/conf")).unwrap();
    assert_eq!(md.ino(), ino);
    assert_eq!(md.mode() & 0o7777, 0o640);
    // Delete lower entries: whiteouts on disk, gone from the view.
    std::fs::remove_file(mnt.join("data/a")).unwrap();
    assert!(!mnt.join("data/a").exists());
    assert!(is_whiteout(&upper.join("data/a")));
    // Replace a lower directory: opaque.
    std::fs::remove_file(mnt.join("data/b")).unwrap();
    std::fs::remove_dir(mnt.join("data")).unwrap();
    std::fs::create_dir(mnt.join("data")).unwrap();
    std::fs::write(mnt.join("data/new"), b"new").unwrap();
    assert_eq!(
        skiff_fs::upper::get_xattr(&upper.join("data"), b"trusted.overlay.opaque").unwrap(),
        Some(b"y".to_vec())
    );
    assert_eq!(std::fs::read_dir(mnt.join("data")).unwrap().count(), 1);
    // Rename, truncate, chmod, chown, symlink, link, xattr, mknod.
    std::fs::rename(mnt.join("etc/extra"), mnt.join("etc/moved")).unwrap();
    assert!(is_whiteout(&upper.join("etc/extra")));
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(mnt.join("etc/moved"))
        .unwrap();
    f.set_len(2).unwrap();
    drop(f);
    std::os::unix::fs::lchown(mnt.join("etc/moved"), Some(1234), Some(99)).unwrap();
    std::fs::set_permissions(
        mnt.join("etc/moved"),
        std::fs::Permissions::from_mode(0o4711),
    )
    .unwrap();
    std::os::unix::fs::symlink("moved", mnt.join("etc/sym")).unwrap();
    std::fs::hard_link(mnt.join("etc/moved"), mnt.join("etc/hard")).unwrap();
    skiff_fs::upper::set_xattr(&mnt.join("cap"), b"user.added", b"1", 0).unwrap();
    // A user's own 0/0 character device is a device, not a whiteout.
    nix::sys::stat::mknod(
        &mnt.join("etc/zero"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o600),
        0,
    )
    .unwrap();
    // Writing through one name of a lower hard link is seen through the other.
    std::fs::write(mnt.join("linked"), b"changed").unwrap();
    assert_eq!(std::fs::read(mnt.join("linked2")).unwrap(), b"changed");

    let check = |mnt: &Path| {
        assert_eq!(
            std::fs::read(mnt.join("etc/conf")).unwrap(),
            b"lower conf\nmore\n"
        );
        assert!(!mnt.join("data/a").exists());
        assert!(!mnt.join("etc/extra").exists());
        let names: Vec<_> = std::fs::read_dir(mnt.join("data"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("new")]);
        let md = std::fs::metadata(mnt.join("etc/moved")).unwrap();
        assert_eq!(md.len(), 2);
        assert_eq!(md.mode() & 0o7777, 0o4711);
        assert_eq!((md.uid(), md.gid()), (1234, 99));
        assert_eq!(md.nlink(), 2);
        assert_eq!(
            std::fs::read_link(mnt.join("etc/sym")).unwrap(),
            Path::new("moved")
        );
        assert_eq!(
            std::fs::metadata(mnt.join("etc/hard")).unwrap().ino(),
            md.ino()
        );
        let x = xattrs_of(&mnt.join("cap"));
        assert_eq!(
            x,
            vec![
                ("user.added".into(), b"1".to_vec()),
                ("user.k".into(), b"v".to_vec())
            ]
        );
        let z = std::fs::symlink_metadata(mnt.join("etc/zero")).unwrap();
        assert!(z.file_type().is_char_device());
        assert_eq!(std::fs::read(mnt.join("linked2")).unwrap(), b"changed");
        assert_eq!(
            std::fs::metadata(mnt.join("linked")).unwrap().ino(),
            std::fs::metadata(mnt.join("linked2")).unwrap().ino()
        );
        // The upper's bookkeeping is not visible.
        assert!(!mnt.join(skiff_fs::upper::WORK_DIR).exists());
        assert!(!xattrs_of(&mnt.join("etc/conf"))
            .iter()
            .any(|(k, _)| k.starts_with("trusted.")));
    };
    check(&mnt);
    m.unmount();
    let m = Mounted::new(options(&img, &cache, Some(upper.clone())), &mnt);
    check(&mnt);
    assert_eq!(std::fs::metadata(mnt.join("etc/conf")).unwrap().ino(), ino);
    drop(m);
}

#[test]
fn read_only_mount_refuses_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let img = image(&tmp.path().join("img"), &layers());
    let mnt = tmp.path().join("mnt");
    let m = Mounted::new(options(&img, &tmp.path().join("cache"), None), &mnt);
    let e = std::fs::write(mnt.join("etc/new"), b"x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS));
    drop(m);
}

/// A file removed while a descriptor still holds it keeps its inode number to itself:
/// a new file that the upper filesystem gives the same inode gets another number, so
/// the kernel does not take it for the removed one (the held descriptor would then
/// show the new file's attributes, and reopening it through `/proc/self/fd` would
/// open the new file).
#[test]
fn a_removed_file_still_held_never_shares_its_inode_number_with_a_new_one() {
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::io::AsRawFd;
    // ext4 (with a journal) reuses a freed inode number at once; tmpfs would not.
    let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
    let img = image(&tmp.path().join("img"), &layers());
    let upper = tmp.path().join("upper");
    let mnt = tmp.path().join("mnt");
    let m = Mounted::new(
        options(&img, &tmp.path().join("cache"), Some(upper.clone())),
        &mnt,
    );
    std::fs::create_dir(mnt.join("w")).unwrap();
    std::fs::write(mnt.join("w/old"), b"old").unwrap();
    let host_ino = std::fs::metadata(upper.join("w/old")).unwrap().ino();
    let held = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH)
        .open(mnt.join("w/old"))
        .unwrap();
    let held_ino = held.metadata().unwrap().ino();
    std::fs::remove_file(mnt.join("w/old")).unwrap();

    let mut reused = None;
    for i in 0..1000 {
        let name = format!("w/new{i}");
        std::fs::write(mnt.join(&name), format!("new{i}")).unwrap();
        if std::fs::metadata(upper.join(&name)).unwrap().ino() == host_ino {
            reused = Some(name);
            break;
        }
    }
    let name = reused.expect(
        "the upper filesystem never reused the removed file's inode number; \
         this test needs one that does (ext4 with a journal)",
    );
    let new_ino = std::fs::metadata(mnt.join(&name)).unwrap().ino();
    assert_ne!(
        new_ino, held_ino,
        "{name} took the removed file's inode number"
    );
    if let Ok(md) = held.metadata() {
        assert_eq!(
            md.ino(),
            held_ino,
            "the held descriptor now describes {name}"
        );
    }
    let reopened = std::fs::read(format!("/proc/self/fd/{}", held.as_raw_fd()));
    assert!(
        reopened.is_err(),
        "reopening the removed file gave {:?}",
        reopened.map(|b| String::from_utf8_lossy(&b).into_owned())
    );
    drop(held);
    drop(m);
}
