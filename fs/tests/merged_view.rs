//! The read-only merged view matches `umoci unpack` of the same layers: paths, types,
//! modes, owners, sizes, mtimes, link counts, device numbers, xattrs and contents.

mod common;

use common::*;
use std::process::Command;

fn test_layers() -> Vec<Vec<u8>> {
    let l0 = build_layer(&[
        Item::Dir("etc", 0o755),
        Item::File("etc/passwd", 0o644, b"root:x:0:0::/root:/bin/sh\n"),
        Item::Dir("usr", 0o755),
        Item::Dir("usr/bin", 0o755),
        Item::FileFull("usr/bin/busybox", 0o755, 0, 0, b"#!busybox\n", vec![]),
        Item::Hardlink("usr/bin/ls", "usr/bin/busybox"),
        Item::Symlink("usr/bin/sh", "busybox"),
        Item::FileFull("usr/bin/ping", 0o4755, 0, 0, b"ping", vec![
            ("security.capability", b"\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"),
            ("user.note", b"hello"),
        ]),
        Item::FileFull("home.txt", 0o600, 1000, 1001, b"private", vec![]),
        Item::FileFull("odd", 0o2710, 7, 8, b"odd mode", vec![]),
        Item::Dir("tmp", 0o1777),
        Item::Dir("dev", 0o755),
        Item::Char("dev/null", 0o666, 1, 3),
        Item::Block("dev/sda", 0o660, 8, 0),
        Item::Fifo("dev/fifo", 0o600),
        Item::Dir("var", 0o755),
        Item::Dir("var/opq", 0o750),
        Item::File("var/opq/old1", 0o644, b"old1"),
        Item::Dir("var/opq/sub", 0o755),
        Item::File("var/opq/sub/old2", 0o644, b"old2"),
        Item::File("gone", 0o644, b"gone"),
        Item::Dir("gonedir", 0o755),
        Item::File("gonedir/inner", 0o644, b"inner"),
        Item::File("replaced", 0o644, b"a file first"),
    ]);
    let mut l1_items = vec![
        Item::Whiteout("gone"),
        Item::Whiteout("gonedir"),
        Item::File(
            "etc/passwd",
            0o644,
            b"root:x:0:0::/root:/bin/ash\nuser:x:1000:1000::/home:/bin/sh\n",
        ),
        Item::File("var/opq/new", 0o644, b"new"),
        Item::Hardlink("usr/bin/cat", "usr/bin/busybox"),
        Item::Dir("replaced", 0o711),
        Item::File("replaced/child", 0o644, b"child"),
    ];
    let opq = opaque("var/opq");
    l1_items.push(Item::File(&opq, 0o644, b""));
    let l1 = build_layer(&l1_items);
    let big: Vec<u8> = (0..(9u32 << 20))
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let l2 = build_layer(&[
        Item::File("big.bin", 0o644, &big),
        Item::Dir("gonedir", 0o700),
        Item::File("gonedir/reborn", 0o644, b"reborn"),
    ]);
    vec![l0, l1, l2]
}

#[test]
fn merged_view_matches_umoci_unpack() {
    matches_umoci_unpack(false);
}

/// A view whose files and directories the kernel opens without asking (OPEN and
/// OPENDIR answered ENOSYS; reads and listings come with handle 0) reads the same,
/// the first time (through the server) and the second (from the kernel's caches).
#[test]
fn merged_view_matches_umoci_unpack_when_the_kernel_opens_files_itself() {
    matches_umoci_unpack(true);
}

fn matches_umoci_unpack(kernel_opens: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let img = image(&tmp.path().join("oci"), &test_layers());
    write_oci_layout(&img, "test");
    let bundle = tmp.path().join("bundle");
    run(Command::new("umoci")
        .arg("unpack")
        .arg("--image")
        .arg(format!("{}:test", img.dir.display()))
        .arg(&bundle));
    let rootfs = bundle.join("rootfs");

    let mnt = tmp.path().join("mnt");
    let mut opts = options(&img, &tmp.path().join("cache"), None);
    opts.kernel_opens = kernel_opens;
    let m = Mounted::new(opts, &mnt);
    let diffs = compare_trees(&rootfs, &mnt);
    assert!(diffs.is_empty(), "differences:\n{}", diffs.join("\n"));
    for _pass in 0..if kernel_opens { 2 } else { 1 } {
        diff_contents(&rootfs, &mnt);
    }
    // Spot checks a broken implementation would get wrong.
    assert!(!mnt.join("gone").exists());
    assert!(!mnt.join("var/opq/old1").exists());
    assert_eq!(
        std::fs::read(mnt.join("gonedir/reborn")).unwrap(),
        b"reborn"
    );
    assert!(!mnt.join("gonedir/inner").exists());
    use std::os::unix::fs::MetadataExt;
    let a = std::fs::metadata(mnt.join("usr/bin/busybox")).unwrap();
    let c = std::fs::metadata(mnt.join("usr/bin/cat")).unwrap();
    assert_eq!(a.ino(), c.ino());
    assert_eq!(a.nlink(), 3);
    drop(m);
}

/// `diff -r` of the two trees finds no difference in contents.
fn diff_contents(rootfs: &std::path::Path, mnt: &std::path::Path) {
    let out = Command::new("diff")
        .args(["-r", "--no-dereference"])
        .arg(rootfs)
        .arg(mnt)
        .output()
        .unwrap();
    // diff cannot compare special files and says so even when both sides are of the
    // same type ("File A is a fifo while file B is a fifo"); the stat comparison above
    // covers those. Anything else is a real difference.
    let text = String::from_utf8_lossy(&out.stdout);
    let real: Vec<&str> = text
        .lines()
        .filter(|l| {
            let Some((a, b)) = l.split_once(" while file ") else {
                return true;
            };
            let ta = a.rsplit_once(" is a ").map(|x| x.1);
            let tb = b.rsplit_once(" is a ").map(|x| x.1);
            ta.is_none() || ta != tb
        })
        .collect();
    assert!(real.is_empty(), "diff -r: {}", real.join("\n"));
    assert!(
        out.status.code() != Some(2),
        "diff failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn inode_numbers_are_stable_across_mounts() {
    let tmp = tempfile::tempdir().unwrap();
    let img = image(&tmp.path().join("oci"), &test_layers());
    let mnt = tmp.path().join("mnt");
    let cache = tmp.path().join("cache");
    use std::os::unix::fs::MetadataExt;
    let inos = |m: &std::path::Path| -> Vec<(std::path::PathBuf, u64)> {
        walk(m)
            .into_iter()
            .map(|p| {
                (
                    p.clone(),
                    std::fs::symlink_metadata(m.join(&p)).unwrap().ino(),
                )
            })
            .collect()
    };
    let m = Mounted::new(options(&img, &cache, None), &mnt);
    let first = inos(&mnt);
    m.unmount();
    let m = Mounted::new(options(&img, &cache, None), &mnt);
    assert_eq!(first, inos(&mnt));
    drop(m);
}

/// A view the kernel opens itself, of an image without any extended attribute, tells
/// the kernel it has none (ENOSYS): a read of one fails with EOPNOTSUPP without
/// reaching the server, as overlayfs's `trusted.overlay.*` lookups on it then do. The
/// same image mounted plainly answers ENODATA, and a view of an image with xattrs keeps
/// them (`merged_view_matches_umoci_unpack_when_the_kernel_opens_files_itself`).
#[test]
fn a_view_of_an_image_without_xattrs_says_so_once() {
    let tmp = tempfile::tempdir().unwrap();
    let img = image(
        &tmp.path().join("oci"),
        &[build_layer(&[
            Item::Dir("bin", 0o755),
            Item::File("bin/tool", 0o755, b"#!/bin/sh\n"),
        ])],
    );
    let xattr_errno = |p: &std::path::Path| {
        let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
        let mut buf = [0u8; 64];
        // SAFETY: valid C strings and a buffer of the length given.
        let n = unsafe {
            libc::lgetxattr(
                c.as_ptr(),
                c"trusted.overlay.metacopy".as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        assert!(n < 0, "{} has trusted.overlay.metacopy", p.display());
        std::io::Error::last_os_error().raw_os_error()
    };
    for kernel_opens in [false, true] {
        let mnt = tmp.path().join(format!("mnt-{kernel_opens}"));
        let mut opts = options(&img, &tmp.path().join("cache"), None);
        opts.kernel_opens = kernel_opens;
        let m = Mounted::new(opts, &mnt);
        let want = if kernel_opens {
            libc::EOPNOTSUPP
        } else {
            libc::ENODATA
        };
        for p in [mnt.join("bin/tool"), mnt.join("bin"), mnt.join("bin/tool")] {
            assert_eq!(xattr_errno(&p), Some(want), "{}", p.display());
        }
        if !kernel_opens {
            assert!(xattrs_of(&mnt.join("bin/tool")).is_empty());
        }
        assert_eq!(std::fs::read(mnt.join("bin/tool")).unwrap(), b"#!/bin/sh\n");
        drop(m);
    }
}
