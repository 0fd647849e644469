//! Issue 4, first "Done when" bullet, end to end through a real registry: one image
//! rich in metadata, pushed in every layer format Skiff reads, mounted with
//! `skiff mount IMAGE DIR -d`, must look exactly like `umoci unpack` of the same image
//! (`diff -r --no-dereference` plus a full stat comparison: type, mode, uid, gid, size,
//! mtime, nlink, rdev, xattrs, symlink targets, file bytes).
//!
//! Formats: plain tar+gzip (checkpoint index from a streaming pass, and from a
//! published `skiff index --push` artifact), eStargz from stargz-snapshotter's
//! `ctr-remote image convert --estargz --oci`, zstd:chunked from
//! `skopeo copy --dest-compress-format zstd:chunked`, and Skiff's own `skiff convert`.
//!
//! The reference tree is `umoci unpack` of the source image (plain tar+gzip): the
//! converted images carry the same files, and umoci 0.4.7 cannot unpack zstd layers.
//!
//! Two allowances, each documented where it is made ([`Leeway`]): ctr-remote's TOC
//! keeps whole-second mtimes (the format's writer rounds them), and with `--upper` the
//! merged root's mtime/nlink are the upper directory's (a gap in fs/, asserted as such
//! and pinned by `upper_mount_root_dir_shows_the_known_gap`).
//!
//! Also: mounting a large image reads only TOCs/indexes from the registry, and a second
//! mount from the same `--root` reads no layer blob at all.
//!
//! Needs root, `docker-registry`, `umoci`, `skopeo`, `fusermount3`; the eStargz peer
//! test also `containerd`, `ctr`, `ctr-remote`. A test whose tools are missing says so
//! and passes, unless `SKIFF_TEST_REQUIRE_TOOLS=1` (set by `scripts/test.sh`): then it
//! fails and names them.

use skiff_proto::image::{Platform, MEDIA_OCI_LAYER_GZIP};
use skiff_proto::Digest;
use skiff_tests::cli::Skiff;
use skiff_tests::fixtures::{self, build_image, push_built, BuiltImage, Layer};
use skiff_tests::proxy::{FaultProxy, Recorded};
use skiff_tests::registry::Registry;
use skiff_tests::walk::walk;
use skiff_tests::xattrs::xattrs_of;
use std::ffi::CString;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

// ---------------------------------------------------------------------------------
// Tools and processes

/// False (with a note) when a tool is missing or we are not root; a failure instead
/// under `SKIFF_TEST_REQUIRE_TOOLS` (see [`skiff_tests::tools_or_skip`]).
fn tools_or_skip(tools: &[&str]) -> bool {
    skiff_tests::tools_or_skip(tools, "FUSE mounts, umoci unpack with owners")
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn is_mounted(dir: &Path) -> bool {
    let canon = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let want = canon.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(want.as_str()))
}

fn mounts_under(dir: &Path) -> Vec<String> {
    let canon = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let prefix = canon.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&prefix))
        .map(String::from)
        .collect()
}

/// A `skiff mount IMAGE DIR -d`; on drop (a failed test) lazily unmounted.
struct SkiffMount {
    skiff: Skiff,
    dir: PathBuf,
    daemon: u32,
    unmounted: bool,
}

impl SkiffMount {
    fn new(skiff: &Skiff, image: &str, dir: &Path, upper: Option<&Path>) -> SkiffMount {
        std::fs::create_dir_all(dir).unwrap();
        let mut cmd = skiff.command();
        cmd.arg("mount").arg(image).arg(dir).arg("-d");
        if let Some(u) = upper {
            cmd.arg("--upper").arg(u);
        }
        let out = cmd.output().expect("running skiff mount");
        assert_eq!(out.status.code(), Some(0), "skiff mount: {}", text(&out));
        let daemon = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("skiff mount -d printed no pid: {}", text(&out)));
        assert!(is_mounted(dir), "{} not mounted", dir.display());
        SkiffMount {
            skiff: Skiff::new(&skiff.root),
            dir: dir.to_path_buf(),
            daemon,
            unmounted: false,
        }
    }

    /// `skiff umount DIR`; asserts the mount is gone and the daemon exited.
    fn umount(mut self) {
        let out = self.skiff.run(&["umount", &self.dir.to_string_lossy()]);
        assert_eq!(out.status.code(), Some(0), "skiff umount: {}", text(&out));
        self.unmounted = true;
        assert!(
            !is_mounted(&self.dir),
            "{} still mounted",
            self.dir.display()
        );
        // The daemon notices the unmount and exits (bounded wait, not a timing claim).
        let proc_dir = PathBuf::from(format!("/proc/{}", self.daemon));
        for _ in 0..400 {
            let zombie_or_gone = std::fs::read_to_string(proc_dir.join("stat"))
                .map(|s| {
                    s.rsplit_once(')')
                        .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
                })
                .unwrap_or(true);
            if zombie_or_gone {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("mount daemon {} still running after umount", self.daemon);
    }
}

impl Drop for SkiffMount {
    fn drop(&mut self) {
        if self.unmounted {
            return;
        }
        let _ = Command::new("fusermount3")
            .arg("-uz")
            .arg(&self.dir)
            .status();
        if is_mounted(&self.dir) {
            let _ = nix_detach(&self.dir);
        }
    }
}

fn nix_detach(dir: &Path) -> std::io::Result<()> {
    let c = CString::new(dir.as_os_str().as_encoded_bytes())?;
    // SAFETY: valid C string.
    let rc = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

// ---------------------------------------------------------------------------------
// The rich image

/// One tar entry of a test layer, with its own mtime.
enum Item<'a> {
    Dir(&'a str, u32, u64, u64, Vec<(&'a str, &'a [u8])>),
    /// path, mode, uid, gid, content, xattrs
    File(&'a str, u32, u64, u64, Vec<u8>, Vec<(&'a str, &'a [u8])>),
    Symlink(&'a str, &'a str),
    /// A symlink with an owner: path, target, uid, gid.
    SymlinkOwned(&'a str, &'a str, u64, u64),
    Hardlink(&'a str, &'a str),
    Char(&'a str, u32, u32, u32),
    Block(&'a str, u32, u32, u32),
    Fifo(&'a str, u32),
    Whiteout(&'a str),
    Opaque(&'a str),
    /// A file whose header fields are overridden by PAX records (`mtime`, `uid`, `gid`),
    /// as Go's archive/tar writes sub-second mtimes and ids beyond ustar's 2097151.
    FilePax(&'a str, &'a [u8], Vec<(&'a str, &'a str)>),
}

fn file<'a>(path: &'a str, mode: u32, data: &[u8]) -> Item<'a> {
    Item::File(path, mode, 0, 0, data.to_vec(), vec![])
}

fn dir(path: &str, mode: u32) -> Item<'_> {
    Item::Dir(path, mode, 0, 0, vec![])
}

/// An uncompressed tar of `items`; entry `i` gets mtime `base + 1000 i`.
fn tar_of(items: &[Item], base_mtime: u64) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (i, it) in items.iter().enumerate() {
        let header = |kind: tar::EntryType, mode: u32| {
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(kind);
            h.set_mode(mode);
            h.set_size(0);
            h.set_mtime(base_mtime + 1000 * i as u64);
            h.set_uid(0);
            h.set_gid(0);
            h
        };
        let pax = |b: &mut tar::Builder<Vec<u8>>, xattrs: &[(&str, &[u8])]| {
            if !xattrs.is_empty() {
                let kv: Vec<(String, &[u8])> = xattrs
                    .iter()
                    .map(|(k, v)| (format!("SCHILY.xattr.{k}"), *v))
                    .collect();
                b.append_pax_extensions(kv.iter().map(|(k, v)| (k.as_str(), *v)))
                    .unwrap();
            }
        };
        match it {
            Item::Dir(p, mode, uid, gid, xattrs) => {
                pax(&mut b, xattrs);
                let mut h = header(tar::EntryType::Directory, *mode);
                h.set_uid(*uid);
                h.set_gid(*gid);
                b.append_data(&mut h, format!("{p}/"), &[][..]).unwrap();
            }
            Item::File(p, mode, uid, gid, data, xattrs) => {
                pax(&mut b, xattrs);
                let mut h = header(tar::EntryType::Regular, *mode);
                h.set_size(data.len() as u64);
                h.set_uid(*uid);
                h.set_gid(*gid);
                b.append_data(&mut h, p, data.as_slice()).unwrap();
            }
            Item::Symlink(p, target) => {
                let mut h = header(tar::EntryType::Symlink, 0o777);
                b.append_link(&mut h, p, target).unwrap();
            }
            Item::SymlinkOwned(p, target, uid, gid) => {
                let mut h = header(tar::EntryType::Symlink, 0o777);
                h.set_uid(*uid);
                h.set_gid(*gid);
                b.append_link(&mut h, p, target).unwrap();
            }
            Item::Hardlink(p, target) => {
                let mut h = header(tar::EntryType::Link, 0o644);
                b.append_link(&mut h, p, target).unwrap();
            }
            Item::Char(p, mode, maj, min) | Item::Block(p, mode, maj, min) => {
                let kind = if matches!(it, Item::Char(..)) {
                    tar::EntryType::Char
                } else {
                    tar::EntryType::Block
                };
                let mut h = header(kind, *mode);
                h.set_device_major(*maj).unwrap();
                h.set_device_minor(*min).unwrap();
                b.append_data(&mut h, p, &[][..]).unwrap();
            }
            Item::Fifo(p, mode) => {
                let mut h = header(tar::EntryType::Fifo, *mode);
                b.append_data(&mut h, p, &[][..]).unwrap();
            }
            Item::Whiteout(p) => {
                let wh = match p.rsplit_once('/') {
                    Some((d, name)) => format!("{d}/.wh.{name}"),
                    None => format!(".wh.{p}"),
                };
                let mut h = header(tar::EntryType::Regular, 0o644);
                b.append_data(&mut h, wh, &[][..]).unwrap();
            }
            Item::FilePax(p, data, records) => {
                b.append_pax_extensions(records.iter().map(|(k, v)| (*k, v.as_bytes())))
                    .unwrap();
                let mut h = header(tar::EntryType::Regular, 0o644);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, p, *data).unwrap();
            }
            Item::Opaque(d) => {
                let mut h = header(tar::EntryType::Regular, 0o644);
                b.append_data(&mut h, format!("{d}/.wh..wh..opq"), &[][..])
                    .unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

const CAP: &[u8] =
    b"\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00";

/// Three layers: a base tree with every kind of entry; a layer with whiteouts, an
/// opaque directory, overrides and a directory replacing a file; a layer with a file of
/// several chunks and a directory reborn after its whiteout.
fn rich_tars() -> Vec<Vec<u8>> {
    // Beyond ustar's 100-byte name and link fields: GNU/PAX long names.
    let long_dir = format!("deep/{}", "d".repeat(90));
    let long_path = format!("{long_dir}/{}", "long-name-".repeat(12));
    let long_target = "../".repeat(3) + &"x/".repeat(80) + "end";
    let l0 = tar_of(
        &[
            dir("etc", 0o755),
            file("etc/passwd", 0o644, b"root:x:0:0::/root:/bin/sh\n"),
            file("etc/group", 0o644, b"root:x:0:\n"),
            dir("usr", 0o755),
            dir("usr/bin", 0o755),
            file("usr/bin/busybox", 0o755, b"#!busybox\n"),
            Item::Hardlink("usr/bin/ls", "usr/bin/busybox"),
            Item::Hardlink("usr/bin/cat", "usr/bin/busybox"),
            Item::Symlink("usr/bin/sh", "busybox"),
            Item::Symlink("usr/bin/abs", "/etc/passwd"),
            Item::Symlink("usr/bin/dangling", "../no/such/target"),
            Item::File(
                "usr/bin/ping",
                0o4755,
                0,
                0,
                b"ping".to_vec(),
                vec![("security.capability", CAP), ("user.note", b"hello")],
            ),
            Item::File("usr/bin/wall", 0o2755, 0, 5, b"wall".to_vec(), vec![]),
            Item::File("home.txt", 0o600, 1000, 1001, b"private".to_vec(), vec![]),
            Item::File("odd", 0o2710, 7, 8, b"odd mode".to_vec(), vec![]),
            Item::Dir(
                "srv",
                0o750,
                33,
                44,
                vec![("user.dir", b"on a directory\x00with nul")],
            ),
            Item::File("srv/data", 0o640, 33, 44, b"served".to_vec(), vec![]),
            dir("tmp", 0o1777),
            dir("dev", 0o755),
            Item::Char("dev/null", 0o666, 1, 3),
            Item::Char("dev/tty9", 0o620, 4, 9),
            Item::Block("dev/sda", 0o660, 8, 0),
            Item::Block("dev/loop300", 0o660, 7, 300),
            Item::Fifo("dev/fifo", 0o600),
            dir("var", 0o755),
            dir("var/opq", 0o750),
            file("var/opq/old1", 0o644, b"old1"),
            dir("var/opq/sub", 0o755),
            file("var/opq/sub/old2", 0o644, b"old2"),
            file("gone", 0o644, b"gone"),
            dir("gonedir", 0o755),
            file("gonedir/inner", 0o644, b"inner"),
            file("replaced", 0o644, b"a file first"),
            dir("was-dir", 0o755),
            file("was-dir/inside", 0o644, b"inside"),
            Item::SymlinkOwned("home-link", "home.txt", 1000, 1001),
            file("empty", 0o644, b""),
            Item::File(
                "nobody",
                0o640,
                100_000,
                65_534,
                b"big ids".to_vec(),
                vec![],
            ),
            file("usr/ünïcödé name with spaces", 0o644, b"utf-8\n"),
            // Parents listed: implicit directories get the unpack time from umoci.
            dir("deep", 0o755),
            dir(&long_dir, 0o755),
            file(&long_path, 0o644, b"long name\n"),
            Item::Symlink("usr/long-target", &long_target),
            Item::FilePax(
                "usr/nanos",
                b"sub-second mtime\n",
                vec![("mtime", "1600000000.123456789")],
            ),
            // An OpenShift-style arbitrary uid: only PAX can carry it in a ustar header.
            Item::FilePax(
                "usr/arbitrary-uid",
                b"uid from pax\n",
                vec![("uid", "1000680000"), ("gid", "1000680001")],
            ),
        ],
        1_600_000_000,
    );
    let l1 = tar_of(
        &[
            Item::Whiteout("gone"),
            Item::Whiteout("gonedir"),
            Item::Whiteout("usr/bin/cat"),
            dir("etc", 0o755),
            file(
                "etc/passwd",
                0o644,
                b"root:x:0:0::/root:/bin/ash\nuser:x:1000:1000::/home:/bin/sh\n",
            ),
            Item::Hardlink("etc/passwd-", "etc/passwd"),
            dir("var", 0o755),
            dir("var/opq", 0o700),
            file("var/opq/new", 0o644, b"new"),
            // After the directory's new entry: the marker applies first all the same.
            Item::Opaque("var/opq"),
            // A directory replaced by a file.
            file("was-dir", 0o600, b"now a file"),
            Item::Dir("replaced", 0o711, 2, 3, vec![]),
            file("replaced/child", 0o644, b"child"),
        ],
        1_650_000_000,
    );
    // Several 4 MiB chunks, some of them compressible, none all zeros.
    let big = [
        fixtures::pseudo_random(11, 5 << 20),
        (0..(4u32 << 20)).map(|i| (i % 251) as u8).collect(),
        fixtures::pseudo_random(12, 3 << 20),
    ]
    .concat();
    let l2 = tar_of(
        &[
            file("big.bin", 0o644, &big),
            Item::Hardlink("big.link", "big.bin"),
            Item::Dir("gonedir", 0o700, 0, 0, vec![]),
            file("gonedir/reborn", 0o644, b"reborn"),
        ],
        1_700_000_000,
    );
    vec![l0, l1, l2]
}

/// gzip layers for `tars`, and the image built from them.
fn gzip_image(tars: &[Vec<u8>]) -> BuiltImage {
    let layers = tars
        .iter()
        .map(|t| Layer {
            media_type: MEDIA_OCI_LAYER_GZIP.into(),
            diff_id: Digest::of(t),
            blob: fixtures::gzip(t),
        })
        .collect();
    build_image(layers, &Platform::host(), &["/bin/sh"])
}

/// The source image in an OCI layout (`DIR:src`) and `umoci unpack` of it.
struct Reference {
    layout: PathBuf,
    rootfs: PathBuf,
}

fn reference(work: &Path, image: &BuiltImage) -> Reference {
    let layout = work.join("layout");
    fixtures::write_oci_layout(&layout, "src", image);
    let bundle = work.join("bundle");
    run(Command::new("umoci")
        .arg("unpack")
        .arg("--image")
        .arg(format!("{}:src", layout.display()))
        .arg(&bundle));
    Reference {
        layout,
        rootfs: bundle.join("rootfs"),
    }
}

// ---------------------------------------------------------------------------------
// Tree comparison

/// Everything compared about one path.
#[derive(Debug, PartialEq)]
struct Meta {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    size: Option<u64>,
    mtime: (i64, i64),
    nlink: u64,
    rdev: u64,
    xattrs: Vec<(String, Vec<u8>)>,
    link: Option<PathBuf>,
    /// sha256 of the content (the bytes themselves are compared through it).
    content: Option<Digest>,
}

fn meta(p: &Path) -> Meta {
    let md = std::fs::symlink_metadata(p).unwrap();
    let ft = md.file_type();
    let kind = if ft.is_dir() {
        "dir"
    } else if ft.is_symlink() {
        "symlink"
    } else if ft.is_file() {
        "file"
    } else if ft.is_char_device() {
        "char"
    } else if ft.is_block_device() {
        "block"
    } else if ft.is_fifo() {
        "fifo"
    } else {
        "other"
    };
    Meta {
        kind,
        mode: md.mode(),
        uid: md.uid(),
        gid: md.gid(),
        size: (!ft.is_dir()).then_some(md.size()),
        mtime: (md.mtime(), md.mtime_nsec()),
        nlink: md.nlink(),
        rdev: md.rdev(),
        xattrs: xattrs_of(p),
        link: ft.is_symlink().then(|| std::fs::read_link(p).unwrap()),
        content: ft.is_file().then(|| {
            Digest::of(&std::fs::read(p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display())))
        }),
    }
}

/// What a comparison lets pass, each for a documented reason.
#[derive(Clone, Default)]
struct Leeway {
    /// The mount has this upper directory, and its root shows the upper directory's
    /// own mtime and nlink: a known gap, asserted as such (see
    /// [`upper_mount_root_dir_shows_the_known_gap`]).
    upper_root: Option<PathBuf>,
    /// The format keeps mtimes in whole seconds: stargz-snapshotter's TOC writer
    /// stores `modtime` as `ModTime.Round(time.Second)` in RFC 3339, so the reference
    /// mtime is rounded the same way.
    whole_second_mtimes: bool,
}

/// The upper directory read by an independent implementation: the kernel's overlayfs,
/// with Skiff's `upper` stacked read-only over the umoci rootfs (`lowerdir=UPPER:REF`;
/// whiteouts and opaque markers are overlayfs's own format), must show the same tree
/// as Skiff mounting the image with that upper. Skiff's work directory, which it
/// hides, is left out, and so are directory nlink (overlayfs reports 1 for merged
/// directories, or the upper's own count) and Skiff's `trusted.skiff.*` xattrs.
fn assert_kernel_overlay_agrees(s: &Setup, skiff: &Skiff, upper: &Path) {
    let _guard = skiff.guard(s.work.path());
    let kernel = s.work.path().join("mnt-kernel");
    std::fs::create_dir_all(&kernel).unwrap();
    run(Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o"])
        .arg(format!(
            "lowerdir={}:{}",
            upper.display(),
            s.reference.rootfs.display()
        ))
        .arg(&kernel));
    let mnt = s.work.path().join("mnt-upper-again");
    let m = SkiffMount::new(skiff, &s.image("gzip"), &mnt, Some(upper));
    let diffs = compare_walks(
        &kernel,
        &mnt,
        |p| p.starts_with(".skiff-work"),
        |_, mk, ms| {
            if mk.kind == "dir" {
                mk.nlink = ms.nlink;
            }
            // Skiff's own bookkeeping in the upper (which Skiff hides; overlayfs shows
            // trusted xattrs it does not know).
            mk.xattrs.retain(|(k, _)| !k.starts_with("trusted.skiff."));
        },
    );
    // The changes made above are there (so neither side simply shows the image).
    for (path, want) in [
        ("etc/passwd", &b"changed\n"[..]),
        ("var/opq/only", b"only this\n"),
    ] {
        assert_eq!(
            std::fs::read(kernel.join(path)).unwrap(),
            want,
            "overlayfs {path}"
        );
    }
    assert!(!kernel.join("var/opq/new").exists() && !kernel.join("srv").exists());
    m.umount();
    run(Command::new("umount").arg(&kernel));
    assert!(
        diffs.is_empty(),
        "kernel overlayfs (reference) and skiff (mount) disagree on the upper:\n{}",
        diffs.join("\n")
    );
}

/// Path-by-path differences between the reference `a` and the mount `b`.
fn compare_trees(a: &Path, b: &Path, leeway: &Leeway) -> Vec<String> {
    compare_walks(
        a,
        b,
        |_| false,
        |rel, ma, _| {
            if leeway.whole_second_mtimes {
                ma.mtime = (ma.mtime.0 + i64::from(ma.mtime.1 >= 500_000_000), 0);
            }
            if let (Some(upper), true) = (&leeway.upper_root, rel.as_os_str().is_empty()) {
                // Expected: the reference, except the known gap's two fields, which must
                // be exactly the upper directory's.
                let up = std::fs::metadata(upper).unwrap();
                ma.mtime = (up.mtime(), up.mtime_nsec());
                ma.nlink = up.nlink();
            }
        },
    )
}

/// Path-by-path differences between the reference `a` (minus the paths `hidden`
/// says the mount does not show) and the mount `b`. `expect` turns the reference's
/// metadata of a path into what the mount must show (it also sees the mount's).
fn compare_walks(
    a: &Path,
    b: &Path,
    hidden: impl Fn(&Path) -> bool,
    expect: impl Fn(&Path, &mut Meta, &Meta),
) -> Vec<String> {
    let wa: Vec<PathBuf> = walk(a).into_iter().filter(|p| !hidden(p)).collect();
    let wb = walk(b);
    let mut diffs = Vec::new();
    for p in wa.iter().filter(|p| !wb.contains(p)) {
        diffs.push(format!("only in reference: {}", p.display()));
    }
    for p in wb.iter().filter(|p| !wa.contains(p)) {
        diffs.push(format!("only in mount: {}", p.display()));
    }
    for rel in std::iter::once(PathBuf::new()).chain(wa.into_iter().filter(|p| wb.contains(p))) {
        let mut ma = meta(&a.join(&rel));
        let mb = meta(&b.join(&rel));
        expect(&rel, &mut ma, &mb);
        if ma != mb {
            diffs.push(format!(
                "/{}:\n  ref   {ma:?}\n  mount {mb:?}",
                rel.display()
            ));
        }
    }
    diffs
}

/// `diff -r --no-dereference`, minus its notes that it cannot compare two special files
/// of the same type (the stat comparison covers those).
fn diff_r(a: &Path, b: &Path) -> Vec<String> {
    let out = Command::new("diff")
        .args(["-r", "--no-dereference"])
        .arg(a)
        .arg(b)
        .output()
        .expect("running diff");
    assert!(out.status.code() != Some(2), "diff failed: {}", text(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| {
            let Some((x, y)) = l.split_once(" while file ") else {
                return true;
            };
            let tx = x.rsplit_once(" is a ").map(|t| t.1);
            let ty = y.rsplit_once(" is a ").map(|t| t.1);
            tx.is_none() || tx != ty
        })
        .map(String::from)
        .collect()
}

/// The whole check: the mount equals the reference (with `leeway`), and spot checks a
/// broken merge would fail even if the reference were wrong the same way.
fn assert_same_tree_with(reference: &Path, mnt: &Path, what: &str, leeway: Leeway) {
    let diffs = compare_trees(reference, mnt, &leeway);
    assert!(
        diffs.is_empty(),
        "{what}: {} differences from umoci unpack:\n{}",
        diffs.len(),
        diffs.join("\n")
    );
    let d = diff_r(reference, mnt);
    assert!(d.is_empty(), "{what}: diff -r:\n{}", d.join("\n"));

    assert!(!mnt.join("gone").exists(), "{what}: whiteout");
    assert!(
        !mnt.join("usr/bin/cat").exists(),
        "{what}: whiteout of a link"
    );
    assert!(!mnt.join("var/opq/old1").exists(), "{what}: opaque dir");
    assert_eq!(
        std::fs::read(mnt.join("var/opq/new")).unwrap(),
        b"new",
        "{what}: opaque dir keeps its own layer's entries"
    );
    assert_eq!(
        std::fs::read(mnt.join("was-dir")).unwrap(),
        b"now a file",
        "{what}: a file over a directory"
    );
    assert!(!mnt.join("gonedir/inner").exists(), "{what}: reborn dir");
    let names: Vec<_> = walk(mnt)
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(".wh."))
        .collect();
    assert!(names.is_empty(), "{what}: whiteouts visible: {names:?}");
    let busybox = std::fs::metadata(mnt.join("usr/bin/busybox")).unwrap();
    let ls = std::fs::metadata(mnt.join("usr/bin/ls")).unwrap();
    assert_eq!(busybox.ino(), ls.ino(), "{what}: hard link inode");
    assert_eq!(
        busybox.nlink(),
        2,
        "{what}: nlink after whiteout of one name"
    );
    let ping = std::fs::metadata(mnt.join("usr/bin/ping")).unwrap();
    assert_eq!(ping.mode() & 0o7777, 0o4755, "{what}: setuid");
    let x = xattrs_of(&mnt.join("usr/bin/ping"));
    assert_eq!(
        x,
        vec![
            ("security.capability".to_string(), CAP.to_vec()),
            ("user.note".to_string(), b"hello".to_vec())
        ],
        "{what}: xattrs"
    );
    assert_eq!(
        xattrs_of(&mnt.join("srv")),
        vec![(
            "user.dir".to_string(),
            b"on a directory\x00with nul".to_vec()
        )],
        "{what}: directory xattr"
    );
    let passwd = std::fs::metadata(mnt.join("etc/passwd")).unwrap();
    assert_eq!(passwd.nlink(), 2, "{what}: hard link in an upper layer");
    assert_eq!(passwd.mtime(), 1_650_000_000 + 4000, "{what}: mtime");
    let arbitrary = std::fs::metadata(mnt.join("usr/arbitrary-uid")).unwrap();
    assert_eq!(
        (arbitrary.uid(), arbitrary.gid()),
        (1_000_680_000, 1_000_680_001),
        "{what}: pax uid/gid"
    );
    let null = std::fs::symlink_metadata(mnt.join("dev/loop300")).unwrap();
    assert!(null.file_type().is_block_device());
    assert_eq!(null.rdev(), libc::makedev(7, 300), "{what}: rdev");
}

// ---------------------------------------------------------------------------------
// Per-format setup

/// A registry with the rich image pushed as `fmt/rich:gzip`, the reference unpack,
/// and a proxy in front for request accounting.
struct Setup {
    work: tempfile::TempDir,
    reg: Registry,
    proxy: FaultProxy,
    built: BuiltImage,
    reference: Reference,
}

/// `skopeo copy` of `oci:LAYOUT:TAG` to `docker://DEST` (a plain-HTTP registry),
/// keeping every digest.
fn push_oci(layout: &Path, tag: &str, dest: &str) {
    run(Command::new("skopeo").args([
        "copy",
        "-q",
        "--preserve-digests",
        "--dest-tls-verify=false",
        &format!("oci:{}:{tag}", layout.display()),
        &format!("docker://{dest}"),
    ]));
}

/// Asserts that every layer of `manifest` carries the annotation `key` (`who` made it).
fn assert_layers_annotated(manifest: &serde_json::Value, key: &str, who: &str) {
    for l in manifest["layers"].as_array().unwrap() {
        assert!(
            l["annotations"][key].is_string(),
            "{who}: a layer without {key}: {l}"
        );
    }
}

impl Setup {
    async fn new() -> Setup {
        let work = tempfile::tempdir().unwrap();
        let built = gzip_image(&rich_tars());
        let reference = reference(work.path(), &built);
        let reg = Registry::start();
        push_built(
            &skiff_tests::client(&reg.host()),
            "fmt/rich",
            "gzip",
            &built,
        )
        .await;
        let proxy = FaultProxy::start(reg.addr());
        Setup {
            work,
            reg,
            proxy,
            built,
            reference,
        }
    }

    /// `HOST/fmt/rich:TAG` through the proxy.
    fn image(&self, tag: &str) -> String {
        format!("{}/fmt/rich:{tag}", self.proxy.host())
    }

    /// A fresh `skiff` root.
    fn skiff(&self, name: &str) -> Skiff {
        let root = self.work.path().join(format!("root-{name}"));
        std::fs::create_dir_all(&root).unwrap();
        Skiff::new(&root)
    }

    /// Mounts `tag` read-only from a fresh root, compares, unmounts; returns the blob
    /// requests the mount made (through the proxy) before and after the comparison.
    fn mount_and_compare(&self, tag: &str, what: &str) -> Traffic {
        self.mount_and_compare_with(tag, what, Leeway::default())
    }

    /// [`Setup::mount_and_compare`] with some `leeway`.
    fn mount_and_compare_with(&self, tag: &str, what: &str, leeway: Leeway) -> Traffic {
        let skiff = self.skiff(tag);
        let mnt = self.work.path().join(format!("mnt-{tag}"));
        self.proxy.clear_requests();
        let m = SkiffMount::new(&skiff, &self.image(tag), &mnt, None);
        let blobs = |p: &FaultProxy| -> Vec<Recorded> {
            p.requests()
                .into_iter()
                .filter(|r| r.path.contains("/blobs/"))
                .collect()
        };
        let at_mount = blobs(&self.proxy);
        assert_same_tree_with(&self.reference.rootfs, &mnt, what, leeway);
        m.umount();
        assert!(
            mounts_under(self.work.path()).is_empty(),
            "{what}: left mounted: {:?}",
            mounts_under(self.work.path())
        );
        Traffic {
            at_mount,
            all: blobs(&self.proxy),
        }
    }

    /// Asserts the mount of `tag` read no layer whole, and only index/TOC bytes (under
    /// 5% of the layers) before anything was read through it.
    fn assert_lazy(&self, tag: &str, traffic: &Traffic) {
        let layers: Vec<(String, u64)> = self.manifest(tag)["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                (
                    l["digest"].as_str().unwrap().to_string(),
                    l["size"].as_u64().unwrap(),
                )
            })
            .collect();
        let total: u64 = layers.iter().map(|l| l.1).sum();
        let (at_mount, whole) = layer_bytes(&traffic.at_mount, &layers);
        assert!(whole.is_empty(), "{tag}: layers read whole: {whole:?}");
        eprintln!("{tag}: mounting read {at_mount} of {total} layer bytes");
        assert!(
            at_mount < total / 20,
            "{tag}: mounting read {at_mount} of {total} layer bytes"
        );
        let (_, whole) = layer_bytes(&traffic.all, &layers);
        assert!(whole.is_empty(), "{tag}: layers read whole: {whole:?}");
    }

    /// The manifest of `tag` as JSON (read with skopeo, a peer).
    fn manifest(&self, tag: &str) -> serde_json::Value {
        let raw = run(Command::new("skopeo").args([
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{}/fmt/rich:{tag}", self.reg.host()),
        ]));
        serde_json::from_str(&raw).unwrap()
    }

    /// Asserts `tag`'s layers are other blobs than the source's (a converter ran and
    /// no tool substituted the gzip blobs it found in the registry).
    fn assert_converted(&self, tag: &str) {
        let src: Vec<String> = self
            .built
            .layers
            .iter()
            .map(|l| Digest::of(&l.blob).to_string())
            .collect();
        let got = self.layer_digests(tag);
        assert_eq!(got.len(), src.len(), "{tag}: layer count");
        assert!(
            got.iter().all(|d| !src.contains(d)),
            "{tag}: gzip layers reused: {got:?}"
        );
    }

    fn layer_digests(&self, tag: &str) -> Vec<String> {
        self.manifest(tag)["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["digest"].as_str().unwrap().to_string())
            .collect()
    }
}

/// Blob requests a mount made.
struct Traffic {
    /// Until `skiff mount -d` returned.
    at_mount: Vec<Recorded>,
    /// Until it was unmounted (the comparison read every file).
    all: Vec<Recorded>,
}

const BASE_TOOLS: &[&str] = &[
    "docker-registry",
    "umoci",
    "skopeo",
    "fusermount3",
    "diff",
    "mount",
];

// ---------------------------------------------------------------------------------
// The tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_with_streamed_checkpoints_matches_umoci_read_only_and_with_upper() {
    if !tools_or_skip(BASE_TOOLS) {
        return;
    }
    let s = Setup::new().await;
    s.mount_and_compare("gzip", "tar+gzip (streaming pass)");

    // Once more with an upper directory: the view is the same, and a write lands in
    // the upper directory only.
    let skiff = s.skiff("gzip-upper");
    let mnt = s.work.path().join("mnt-upper");
    let upper = s.work.path().join("upper");
    std::fs::create_dir_all(&upper).unwrap();
    let m = SkiffMount::new(&skiff, &s.image("gzip"), &mnt, Some(&upper));
    let leeway = Leeway {
        upper_root: Some(upper.clone()),
        ..Leeway::default()
    };
    assert_same_tree_with(&s.reference.rootfs, &mnt, "tar+gzip with --upper", leeway);
    std::fs::write(mnt.join("etc/passwd"), b"changed\n").unwrap();
    std::fs::remove_file(mnt.join("home.txt")).unwrap();
    assert_eq!(std::fs::read(mnt.join("etc/passwd")).unwrap(), b"changed\n");
    // More kinds of change, for the kernel's reading of the upper below: a new
    // directory with a file and a symlink, a directory removed and made again (opaque),
    // a whole directory removed, a mode change.
    std::fs::create_dir(mnt.join("newdir")).unwrap();
    std::fs::write(mnt.join("newdir/f"), b"new file\n").unwrap();
    std::os::unix::fs::symlink("../etc/passwd", mnt.join("newdir/link")).unwrap();
    std::fs::remove_dir_all(mnt.join("var/opq")).unwrap();
    std::fs::create_dir(mnt.join("var/opq")).unwrap();
    std::fs::write(mnt.join("var/opq/only"), b"only this\n").unwrap();
    std::fs::remove_dir_all(mnt.join("srv")).unwrap();
    std::fs::set_permissions(
        mnt.join("etc/group"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    m.umount();
    assert_kernel_overlay_agrees(&s, &skiff, &upper);
    assert!(mounts_under(s.work.path()).is_empty());
    assert_eq!(
        std::fs::read(upper.join("etc/passwd")).unwrap(),
        b"changed\n"
    );
    let wh = std::fs::symlink_metadata(upper.join("home.txt")).unwrap();
    assert!(wh.file_type().is_char_device() && wh.rdev() == 0);
    // The image is untouched: a read-only remount still equals the reference.
    s.mount_and_compare("gzip", "tar+gzip after an upper mount");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_with_published_index_matches_umoci_without_reading_layers_whole() {
    if !tools_or_skip(BASE_TOOLS) {
        return;
    }
    let s = Setup::new().await;
    let out =
        s.skiff("publisher")
            .run(&["index", "--push", "-q", &s.reg.reference("fmt/rich:gzip")]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let traffic = s.mount_and_compare("gzip", "tar+gzip (published index)");
    s.assert_lazy("gzip", &traffic);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn estargz_from_ctr_remote_matches_umoci() {
    if !tools_or_skip(&[BASE_TOOLS, &["containerd", "ctr", "ctr-remote"]].concat()) {
        return;
    }
    let s = Setup::new().await;
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto/tests/scripts/estargz-convert.sh");
    let esgz = s.work.path().join("esgz");
    run(Command::new(&script)
        .arg(&s.reference.layout)
        .arg("src")
        .arg(&esgz)
        .arg(s.work.path().join("ctd")));
    assert!(
        mounts_under(s.work.path()).is_empty(),
        "containerd left mounts"
    );
    push_oci(&esgz, "esgz", &format!("{}/fmt/rich:esgz", s.reg.host()));
    s.assert_converted("esgz");
    let manifest = s.manifest("esgz");
    assert_layers_annotated(
        &manifest,
        "containerd.io/snapshot/stargz/toc.digest",
        "ctr-remote",
    );
    let leeway = Leeway {
        whole_second_mtimes: true,
        ..Leeway::default()
    };
    let traffic = s.mount_and_compare_with("esgz", "eStargz (ctr-remote)", leeway);
    s.assert_lazy("esgz", &traffic);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zstd_chunked_from_skopeo_matches_umoci() {
    if !tools_or_skip(BASE_TOOLS) {
        return;
    }
    let s = Setup::new().await;
    // Into a layout first: pushing straight to the registry, skopeo reuses the gzip
    // blobs it finds there instead of compressing. Then pushed as it is.
    let zc = s.work.path().join("zc");
    run(Command::new("skopeo").args([
        "copy",
        "-q",
        "--dest-compress-format",
        "zstd:chunked",
        "--dest-compress",
        &format!("oci:{}:src", s.reference.layout.display()),
        &format!("oci:{}:zc", zc.display()),
    ]));
    push_oci(&zc, "zc", &format!("{}/fmt/rich:zc", s.reg.host()));
    s.assert_converted("zc");
    let manifest = s.manifest("zc");
    assert_layers_annotated(
        &manifest,
        "io.containers.zstd-chunked.manifest-position",
        "skopeo",
    );
    let traffic = s.mount_and_compare("zc", "zstd:chunked (skopeo)");
    s.assert_lazy("zc", &traffic);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skiff_convert_output_matches_umoci() {
    if !tools_or_skip(BASE_TOOLS) {
        return;
    }
    let s = Setup::new().await;
    let out = s.skiff("converter").run(&[
        "convert",
        "-q",
        &s.reg.reference("fmt/rich:gzip"),
        &s.reg.reference("fmt/rich:skiff-esgz"),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    s.assert_converted("skiff-esgz");
    let manifest = s.manifest("skiff-esgz");
    assert_layers_annotated(
        &manifest,
        "containerd.io/snapshot/stargz/toc.digest",
        "skiff convert",
    );
    let traffic = s.mount_and_compare("skiff-esgz", "eStargz (skiff convert)");
    s.assert_lazy("skiff-esgz", &traffic);
}

/// The strict form of the `--upper` comparison, root directory included, run to see
/// the known gap exactly as it is, so that a fix or a change shows up here.
///
/// The gap: with --upper, a directory present in the upper dir takes all its
/// attributes from the upper dir (fs's `attr`: lstat of the upper path). The merged
/// root is the user's upper directory itself, so its mtime is when that directory was
/// made and its nlink counts only the upper's own subdirs (.skiff-work: 3) instead of
/// umoci's (mtime 0, nlink 2 + 8 subdirs = 10); the same nlink undercount holds for any
/// copied-up directory with lower subdirs. overlayfs also shows the upper root's
/// mtime, and reports nlink 1 for merged dirs. The fix (merge nlink over lower+upper,
/// seed the upper root from the image root) belongs in fs/. When it lands, this test
/// fails: make it strict (no differences at all, and `usr` nlink 3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upper_mount_root_dir_shows_the_known_gap() {
    if !tools_or_skip(BASE_TOOLS) {
        return;
    }
    let s = Setup::new().await;
    let skiff = s.skiff("strict-upper");
    let mnt = s.work.path().join("mnt-strict");
    let upper = s.work.path().join("upper-strict");
    std::fs::create_dir_all(&upper).unwrap();
    let m = SkiffMount::new(&skiff, &s.image("gzip"), &mnt, Some(&upper));
    let diffs = compare_trees(&s.reference.rootfs, &mnt, &Leeway::default());
    let reference = meta(&s.reference.rootfs);
    let root = meta(&mnt);
    let up = std::fs::metadata(&upper).unwrap();
    // Only the root differs, and only in mtime and nlink, which are the upper dir's.
    assert_eq!(diffs.len(), 1, "{}", diffs.join("\n"));
    assert!(diffs[0].starts_with("/:\n"), "{}", diffs[0]);
    assert_eq!(
        (root.mtime, root.nlink),
        ((up.mtime(), up.mtime_nsec()), up.nlink()),
        "the known gap: the root shows the upper dir's mtime and nlink"
    );
    assert_ne!(
        (root.mtime, root.nlink),
        (reference.mtime, reference.nlink),
        "the gap is fixed: make this test strict"
    );
    assert_eq!(
        Meta {
            mtime: reference.mtime,
            nlink: reference.nlink,
            ..root
        },
        reference,
        "apart from the gap the root matches"
    );
    // A copied-up directory counts only its upper subdirectories (the gap; umoci: 3,
    // as usr has one subdirectory, bin).
    assert_eq!(std::fs::metadata(mnt.join("usr")).unwrap().nlink(), 3);
    std::fs::write(mnt.join("usr/new"), b"x").unwrap();
    let usr = std::fs::metadata(mnt.join("usr")).unwrap();
    assert_eq!(
        usr.nlink(),
        2,
        "the known gap: usr copied up counts no lower subdir"
    );
    m.umount();
}

/// A large image: many small files and big incompressible ones over two layers.
fn large_tars() -> Vec<Vec<u8>> {
    let mut base = vec![dir("small", 0o755)];
    let smalls: Vec<(String, Vec<u8>)> = (0..400)
        .map(|i| {
            (
                format!("small/f{i:03}"),
                fixtures::pseudo_random(1000 + i, 512 + (i as usize * 37) % 4096),
            )
        })
        .collect();
    for (p, d) in &smalls {
        base.push(file(p, 0o644, d));
    }
    let bigs: Vec<(String, Vec<u8>)> = (0..6)
        .map(|i| {
            (
                format!("big{i}"),
                fixtures::pseudo_random(2000 + i, 6 << 20),
            )
        })
        .collect();
    for (p, d) in &bigs {
        base.push(file(p, 0o644, d));
    }
    let l0 = tar_of(&base, 1_600_000_000);
    let l1 = tar_of(
        &[
            dir("etc", 0o755),
            file("etc/motd", 0o644, b"small file in a big image\n"),
            file("top.bin", 0o644, &fixtures::pseudo_random(3000, 16 << 20)),
        ],
        1_700_000_000,
    );
    vec![l0, l1]
}

/// Layer bytes read among `reqs`: ranged bytes, and whole GETs of layer blobs.
fn layer_bytes(reqs: &[Recorded], layers: &[(String, u64)]) -> (u64, Vec<Recorded>) {
    let mut bytes = 0u64;
    let mut whole = Vec::new();
    for r in reqs.iter().filter(|r| r.method == "GET") {
        let Some((_, size)) = layers.iter().find(|(d, _)| r.path.ends_with(d.as_str())) else {
            continue;
        };
        match r.range.as_deref() {
            Some(range) => {
                let (a, b) = range
                    .trim_start_matches("bytes=")
                    .split_once('-')
                    .expect("a bytes=A-B range");
                let (a, b): (u64, u64) = (a.parse().unwrap(), b.parse().unwrap());
                bytes += b.min(size - 1) - a + 1;
            }
            None => {
                bytes += size;
                whole.push(r.clone());
            }
        }
    }
    (bytes, whole)
}

/// How far an on-demand request may grow over the chunks after it (fs's
/// `FetchTuning::default().neighbour_window`, stated here rather than read from the
/// code under test, so that a change to it is seen).
const NEIGHBOUR_WINDOW: u64 = 256 << 10;

/// Stats every path under `mnt` (no content reads); returns how many.
fn stat_walk(mnt: &Path) -> usize {
    let paths = walk(mnt);
    for p in &paths {
        std::fs::symlink_metadata(mnt.join(p)).unwrap();
    }
    paths.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mounting_a_large_image_reads_only_indexes_and_a_remount_reads_no_layer() {
    if !tools_or_skip(BASE_TOOLS) {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let reg = Registry::start();
    let built = gzip_image(&large_tars());
    push_built(
        &skiff_tests::client(&reg.host()),
        "fmt/large",
        "gzip",
        &built,
    )
    .await;
    let publisher = Skiff::new(&work.path().join("publisher"));
    let out = publisher.run(&["index", "--push", "-q", &reg.reference("fmt/large:gzip")]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = publisher.run(&[
        "convert",
        "-q",
        &reg.reference("fmt/large:gzip"),
        &reg.reference("fmt/large:esgz"),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let layout = work.path().join("layout");
    fixtures::write_oci_layout(&layout, "src", &built);
    // Another layout: in the same one skopeo would reuse the gzip blobs it finds.
    let zc = work.path().join("zc");
    run(Command::new("skopeo").args([
        "copy",
        "-q",
        "--dest-compress-format",
        "zstd:chunked",
        "--dest-compress",
        &format!("oci:{}:src", layout.display()),
        &format!("oci:{}:zc", zc.display()),
    ]));
    push_oci(&zc, "zc", &format!("{}/fmt/large:zc", reg.host()));
    let proxy = FaultProxy::start(reg.addr());

    for tag in ["gzip", "esgz", "zc"] {
        let raw = run(Command::new("skopeo").args([
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{}/fmt/large:{tag}", reg.host()),
        ]));
        let manifest: serde_json::Value = serde_json::from_str(&raw).unwrap();
        let layers: Vec<(String, u64)> = manifest["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                (
                    l["digest"].as_str().unwrap().to_string(),
                    l["size"].as_u64().unwrap(),
                )
            })
            .collect();
        let want = match tag {
            "esgz" => Some("containerd.io/snapshot/stargz/toc.digest"),
            "zc" => Some("io.containers.zstd-chunked.manifest-position"),
            _ => None,
        };
        if let Some(a) = want {
            assert_layers_annotated(&manifest, a, tag);
        }
        let total: u64 = layers.iter().map(|l| l.1).sum();
        assert!(total > 50 << 20, "{tag}: the image is {total} bytes");
        let image = format!("{}/fmt/large:{tag}", proxy.host());
        let skiff = Skiff::new(&work.path().join(format!("root-{tag}")));
        let mnt = work.path().join(format!("mnt-{tag}"));

        // Cold: mount and stat everything.
        proxy.clear_requests();
        let m = SkiffMount::new(&skiff, &image, &mnt, None);
        assert_eq!(stat_walk(&mnt), 400 + 6 + 3 + 1);
        let (mount_bytes, whole) = layer_bytes(&proxy.requests(), &layers);
        assert!(whole.is_empty(), "{tag}: layers read whole: {whole:?}");
        eprintln!("{tag}: mount + stat walk read {mount_bytes} of {total} layer bytes");
        assert!(
            mount_bytes < total / 50,
            "{tag}: mounting read {mount_bytes} of {total} layer bytes"
        );
        // One small file: its chunk (or, for plain gzip, one checkpoint span), plus at
        // most the neighbour window of the chunks after it in the blob.
        proxy.clear_requests();
        assert_eq!(
            std::fs::read(mnt.join("etc/motd")).unwrap(),
            b"small file in a big image\n"
        );
        let (read_bytes, whole) = layer_bytes(&proxy.requests(), &layers);
        assert!(whole.is_empty(), "{tag}: layers read whole: {whole:?}");
        eprintln!("{tag}: reading etc/motd fetched {read_bytes} bytes");
        assert!(read_bytes > 0, "{tag}: a cold read fetched nothing");
        let limit = if tag == "gzip" {
            5 << 20
        } else {
            NEIGHBOUR_WINDOW + (64 << 10)
        };
        assert!(
            read_bytes < limit,
            "{tag}: reading a 26-byte file fetched {read_bytes} bytes"
        );
        m.umount();

        // Warm: the same root mounts, walks and reads with no layer request at all.
        proxy.clear_requests();
        let m = SkiffMount::new(&skiff, &image, &mnt, None);
        assert_eq!(stat_walk(&mnt), 400 + 6 + 3 + 1);
        assert_eq!(
            std::fs::read(mnt.join("etc/motd")).unwrap(),
            b"small file in a big image\n"
        );
        m.umount();
        let layer_reqs: Vec<Recorded> = proxy
            .requests()
            .into_iter()
            .filter(|r| layers.iter().any(|(d, _)| r.path.ends_with(d.as_str())))
            .collect();
        assert!(
            layer_reqs.is_empty(),
            "{tag}: a remount read layers: {layer_reqs:?}"
        );
        assert!(mounts_under(work.path()).is_empty());
    }
}
