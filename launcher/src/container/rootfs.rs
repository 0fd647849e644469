//! The container's filesystem view: the rootfs bind-mounted onto itself, the standard
//! kernel filesystems and device nodes, the user's mounts, `pivot_root`, then runc's
//! read-only and masked paths.

use super::cgroups::CgroupMount;
use super::spec::ContainerSpec;
use super::sys::{FileKind, SysError, Syscall};
use nix::mount::MsFlags;
use nix::sys::stat::{makedev, Mode, SFlag};
use std::path::{Component, Path, PathBuf};

/// Errors from setting up the root filesystem.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    /// A kernel call failed.
    #[error(transparent)]
    Sys(#[from] SysError),
    /// Creating a directory, file or symlink inside the rootfs failed.
    #[error("preparing {path}: {source}")]
    Io {
        /// The path inside the rootfs.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RootfsError + '_ {
    move |source| RootfsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Paths runc's default spec masks (`runc spec`, `maskedPaths`).
pub const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/proc/scsi",
    // Docker masks it too: energy counters are a side channel (CVE-2020-8694).
    "/sys/devices/virtual/powercap",
];

/// Paths runc's default spec makes read-only (`runc spec`, `readonlyPaths`).
pub const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// The runtime files skiff provides in every container, by container path.
pub const ETC_FILES: &[&str] = &["/etc/resolv.conf", "/etc/hostname", "/etc/hosts"];

/// How many symlinks [`secure_join`] follows before it gives up with ELOOP (the
/// kernel's MAXSYMLINKS).
pub const MAX_SYMLINKS: usize = 40;

/// Resolves `path` (absolute, inside the container) under `root`, following symlinks
/// as if `root` were `/`, so no symlink in the image can point a mount, a device node or
/// any other setup write outside the rootfs (what runc's securejoin does). More than
/// [`MAX_SYMLINKS`] links is ELOOP, never a half-resolved path.
pub fn secure_join(root: &Path, path: &Path) -> Result<PathBuf, SysError> {
    fn parts(p: &Path) -> impl DoubleEndedIterator<Item = std::ffi::OsString> + '_ {
        p.components().filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
    }
    let mut resolved = PathBuf::new(); // relative to root
    let mut links = 0;
    // Components still to walk: a stack, next one last.
    let mut todo: Vec<std::ffi::OsString> = parts(path).rev().collect();
    while let Some(part) = todo.pop() {
        if part == ".." {
            resolved.pop();
            continue;
        }
        let candidate = resolved.join(&part);
        match std::fs::read_link(root.join(&candidate)) {
            Ok(target) => {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(SysError {
                        call: "secure_join",
                        target: path.display().to_string(),
                        errno: nix::errno::Errno::ELOOP,
                    });
                }
                if target.is_absolute() {
                    resolved = PathBuf::new();
                }
                todo.extend(parts(&target).rev());
            }
            Err(_) => resolved = candidate,
        }
    }
    Ok(root.join(resolved))
}

/// Creates `path` as a directory (with parents) if missing.
fn ensure_dir(path: &Path) -> Result<(), RootfsError> {
    std::fs::create_dir_all(path).map_err(io(path))
}

/// Creates `path` as an empty file (and its parents) if missing.
fn ensure_file(path: &Path) -> Result<(), RootfsError> {
    if path.exists() {
        return Ok(());
    }
    if let Some(parent) = path.parent() {
        ensure_dir(parent)?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map(drop)
        .map_err(io(path))
}

/// One mount of a kernel filesystem, as in runc's default spec.
struct KernelMount {
    destination: &'static str,
    fstype: &'static str,
    flags: MsFlags,
    data: Option<String>,
}

/// The kernel filesystems, /dev/shm of `shm_size` bytes (`--shm-size`).
fn kernel_mounts(shm_size: u64) -> Vec<KernelMount> {
    let nosuid = MsFlags::MS_NOSUID;
    let nne = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV;
    vec![
        KernelMount {
            destination: "/proc",
            fstype: "proc",
            flags: nne,
            data: None,
        },
        KernelMount {
            destination: "/dev",
            fstype: "tmpfs",
            flags: nosuid | MsFlags::MS_STRICTATIME,
            data: Some("mode=755,size=65536k".into()),
        },
        KernelMount {
            destination: "/dev/pts",
            fstype: "devpts",
            flags: nosuid | MsFlags::MS_NOEXEC,
            data: Some("newinstance,ptmxmode=0666,mode=0620,gid=5".into()),
        },
        KernelMount {
            destination: "/dev/shm",
            fstype: "tmpfs",
            flags: nne,
            data: Some(format!("mode=1777,size={shm_size}")),
        },
        KernelMount {
            destination: "/dev/mqueue",
            fstype: "mqueue",
            flags: nne,
            data: None,
        },
        KernelMount {
            destination: "/sys",
            fstype: "sysfs",
            flags: nne | MsFlags::MS_RDONLY,
            data: None,
        },
    ]
}

/// Device nodes every container gets: (name, major, minor), mode 0666, owned by root.
pub const DEVICES: &[(&str, u64, u64)] = &[
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

/// Symlinks in /dev: (link, target).
const DEV_SYMLINKS: &[(&str, &str)] = &[
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
    ("core", "/proc/kcore"),
    ("ptmx", "pts/ptmx"),
];

/// Mounts everything below `rootfs` and pivots into it. Runs in the container's new
/// mount namespace, before the process gives up root. `etc_dir` holds the generated
/// resolv.conf, hostname and hosts files; `console` is the pty slave for `-t`;
/// `cgroups` are the cgroup filesystems mounted read-only on /sys/fs/cgroup.
pub fn prepare(
    sys: &dyn Syscall,
    rootfs: &Path,
    spec: &ContainerSpec,
    etc_dir: &Path,
    console: Option<&Path>,
    cgroups: &[CgroupMount],
) -> Result<(), RootfsError> {
    // Nothing we mount may propagate back to the host.
    sys.mount(
        None,
        Path::new("/"),
        None,
        MsFlags::MS_SLAVE | MsFlags::MS_REC,
        None,
    )?;
    // pivot_root needs the new root to be a mount point.
    let root_str = rootfs.to_string_lossy();
    sys.mount(
        Some(&root_str),
        rootfs,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    )?;

    for m in kernel_mounts(spec.shm_size) {
        let target = secure_join(rootfs, Path::new(m.destination))?;
        ensure_dir(&target)?;
        sys.mount(
            Some(m.fstype),
            &target,
            Some(m.fstype),
            m.flags,
            m.data.as_deref(),
        )?;
    }
    mount_cgroups(sys, rootfs, cgroups)?;

    for name in ETC_FILES {
        let file = Path::new(name).file_name().unwrap_or_default();
        let source = etc_dir.join(file);
        let target = secure_join(rootfs, Path::new(name))?;
        ensure_file(&target)?;
        bind(sys, &source, &target, false)?;
    }

    for b in &spec.binds {
        let target = secure_join(rootfs, &b.destination)?;
        if b.source.is_dir() {
            ensure_dir(&target)?;
        } else {
            ensure_file(&target)?;
        }
        bind(sys, &b.source, &target, b.read_only)?;
    }
    for t in &spec.tmpfs {
        let target = secure_join(rootfs, &t.destination)?;
        ensure_dir(&target)?;
        sys.mount(
            Some("tmpfs"),
            &target,
            Some("tmpfs"),
            t.flags,
            Some(&t.data),
        )?;
    }

    // Resolved like every other setup path: an image whose /dev is a symlink must not
    // get device nodes created wherever it points on the host.
    let dev = secure_join(rootfs, Path::new("/dev"))?;
    let old_umask = sys.umask(Mode::empty());
    for (name, major, minor) in DEVICES {
        sys.mknod(
            &dev.join(name),
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            makedev(*major, *minor),
        )?;
    }
    for d in &spec.devices {
        // Resolved like /dev itself: a symlink in the image cannot move it.
        let target = secure_join(rootfs, &d.destination)?;
        if let Some(parent) = target.parent() {
            ensure_dir(parent)?;
        }
        let kind = if d.kind == 'b' {
            SFlag::S_IFBLK
        } else {
            SFlag::S_IFCHR
        };
        sys.mknod(
            &target,
            kind,
            Mode::from_bits_truncate(d.mode),
            makedev(d.major, d.minor),
        )?;
        std::os::unix::fs::lchown(&target, Some(d.owner.0), Some(d.owner.1))
            .map_err(io(&target))?;
    }
    sys.umask(old_umask);
    for (link, target) in DEV_SYMLINKS {
        if *link == "core" && sys.file_kind(Path::new("/proc/kcore")).is_none() {
            continue;
        }
        let path = dev.join(link);
        std::os::unix::fs::symlink(target, &path).map_err(io(&path))?;
    }
    if let Some(console) = console {
        let target = dev.join("console");
        ensure_file(&target)?;
        bind(sys, console, &target, false)?;
    }

    sys.pivot_root(rootfs)?;
    Ok(())
}

/// The container's /sys/fs/cgroup, read-only, as docker mounts it with a private
/// cgroup namespace: cgroup2 itself on a pure v2 host; else a tmpfs holding one v1
/// mount per hierarchy the container has its own cgroup in. Runs in the container's
/// cgroup namespace, so each mount's root is the container's cgroup and it sees its
/// own limits (what JVM, Go and Node read).
fn mount_cgroups(
    sys: &dyn Syscall,
    rootfs: &Path,
    cgroups: &[CgroupMount],
) -> Result<(), RootfsError> {
    if cgroups.is_empty() {
        return Ok(());
    }
    let nne = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV;
    let ro = nne | MsFlags::MS_RDONLY;
    let base = secure_join(rootfs, Path::new("/sys/fs/cgroup"))?;
    let v2_only = cgroups.iter().any(|m| m.subdir.is_empty());
    if !v2_only {
        sys.mount(
            Some("tmpfs"),
            &base,
            Some("tmpfs"),
            nne,
            Some("mode=755,size=64k"),
        )?;
    }
    for m in cgroups {
        let target = if m.subdir.is_empty() {
            base.clone()
        } else {
            let t = base.join(&m.subdir);
            ensure_dir(&t)?;
            t
        };
        sys.mount(
            Some(&m.fstype),
            &target,
            Some(&m.fstype),
            ro,
            m.controllers.as_deref(),
        )?;
    }
    if !v2_only {
        sys.mount(None, &base, None, MsFlags::MS_REMOUNT | ro, None)?;
    }
    Ok(())
}

/// Bind-mounts `source` on `target`, read-only if asked.
fn bind(
    sys: &dyn Syscall,
    source: &Path,
    target: &Path,
    read_only: bool,
) -> Result<(), RootfsError> {
    let src = source.to_string_lossy();
    sys.mount(
        Some(&src),
        target,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    )?;
    if read_only {
        sys.mount(
            None,
            target,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_REC,
            None,
        )?;
    }
    Ok(())
}

/// After `pivot_root`: runc's read-only paths, then its masked paths, then the
/// read-only root if asked. Missing paths are skipped, as runc does.
pub fn finalize(sys: &dyn Syscall, read_only_root: bool) -> Result<(), RootfsError> {
    for p in READONLY_PATHS {
        let path = Path::new(p);
        if sys.file_kind(path).is_none() {
            continue;
        }
        bind(sys, path, path, false)?;
        sys.mount(
            None,
            path,
            None,
            MsFlags::MS_BIND
                | MsFlags::MS_REMOUNT
                | MsFlags::MS_RDONLY
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV
                | MsFlags::MS_NOEXEC
                | MsFlags::MS_REC,
            None,
        )?;
    }
    for p in MASKED_PATHS {
        let path = Path::new(p);
        match sys.file_kind(path) {
            Some(FileKind::Dir) => {
                sys.mount(Some("tmpfs"), path, Some("tmpfs"), MsFlags::MS_RDONLY, None)?
            }
            Some(FileKind::Other) => {
                sys.mount(Some("/dev/null"), path, None, MsFlags::MS_BIND, None)?
            }
            None => continue,
        }
    }
    if read_only_root {
        sys.mount(
            None,
            Path::new("/"),
            None,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::spec::{ContainerSpec, RunOptions};
    use super::super::sys::recording::Recorder;
    use super::*;

    #[test]
    fn secure_join_keeps_symlinks_inside_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::os::unix::fs::symlink("/etc/shadow", root.join("etc/hosts")).unwrap();
        std::os::unix::fs::symlink("../../../..", root.join("etc/up")).unwrap();
        std::os::unix::fs::symlink("sub", root.join("rel")).unwrap();
        let join = |p: &str| secure_join(root, Path::new(p)).unwrap();
        assert_eq!(join("/etc/hosts"), root.join("etc/shadow"));
        assert_eq!(join("/etc/up/x"), root.join("x"));
        assert_eq!(join("/../../a"), root.join("a"));
        assert_eq!(join("/rel/b"), root.join("sub/b"));
    }

    #[test]
    fn secure_join_gives_eloop_after_forty_links() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        // A chain of 41 links l0 -> l1 -> ... -> l41 (a plain name at the end).
        for i in 0..=40 {
            std::os::unix::fs::symlink(format!("l{}", i + 1), root.join(format!("l{i}"))).unwrap();
        }
        let err = secure_join(root, Path::new("/l0/x")).unwrap_err();
        assert_eq!(err.errno, nix::errno::Errno::ELOOP);
        // 40 links are still fine.
        assert_eq!(
            secure_join(root, Path::new("/l1/x")).unwrap(),
            root.join("l41/x")
        );
        // A loop is ELOOP too, not a half-resolved path.
        std::os::unix::fs::symlink("b", root.join("a")).unwrap();
        std::os::unix::fs::symlink("a", root.join("b")).unwrap();
        let err = secure_join(root, Path::new("/a/etc")).unwrap_err();
        assert_eq!(err.errno, nix::errno::Errno::ELOOP);
    }

    /// A temp dir holding an empty `rootfs/` and `etc/`.
    struct Dirs {
        dir: tempfile::TempDir,
        root: PathBuf,
        etc: PathBuf,
    }

    impl Dirs {
        fn new() -> Dirs {
            let dir = tempfile::tempdir().unwrap();
            let (root, etc) = (dir.path().join("rootfs"), dir.path().join("etc"));
            std::fs::create_dir_all(&root).unwrap();
            std::fs::create_dir_all(&etc).unwrap();
            Dirs { dir, root, etc }
        }

        /// Runs [`prepare`] for a default `true` container with `cgroups`; returns the
        /// recorded calls.
        fn prepare(&self, cgroups: &[CgroupMount]) -> Vec<String> {
            let opts = RunOptions {
                command: vec!["true".into()],
                ..Default::default()
            };
            let spec =
                ContainerSpec::new(None, &opts, "id".into(), self.dir.path().into()).unwrap();
            let rec = Recorder::default();
            prepare(&rec, &self.root, &spec, &self.etc, None, cgroups).unwrap();
            rec.calls.into_inner()
        }
    }

    #[test]
    fn device_nodes_follow_a_dev_symlink_inside_the_rootfs() {
        let d = Dirs::new();
        // Absolute, so on the host it would point outside the rootfs.
        let outside = d.dir.path().join("outside");
        std::os::unix::fs::symlink(&outside, d.root.join("dev")).unwrap();
        let calls = d.prepare(&[]);
        let inside = format!("{}{}", d.root.display(), outside.display());
        let mknods: Vec<&String> = calls.iter().filter(|c| c.starts_with("mknod")).collect();
        assert_eq!(mknods.len(), DEVICES.len());
        for m in mknods {
            assert!(m.starts_with(&format!("mknod {inside}/")), "{m}");
        }
        assert!(!outside.exists(), "nothing is created outside the rootfs");
    }

    #[test]
    fn proc_is_nosuid_noexec_nodev_and_powercap_masked() {
        let d = Dirs::new();
        let calls = d.prepare(&[]);
        let proc_mount = format!(
            "mount proc {}/proc proc nosuid nodev noexec",
            d.root.display()
        );
        assert!(calls.contains(&proc_mount), "{calls:?}");

        let rec = Recorder {
            files: [(
                PathBuf::from("/sys/devices/virtual/powercap"),
                FileKind::Dir,
            )]
            .into_iter()
            .collect(),
            ..Default::default()
        };
        finalize(&rec, false).unwrap();
        assert_eq!(
            rec.calls.into_inner(),
            ["mount tmpfs /sys/devices/virtual/powercap tmpfs ro"]
        );
    }

    #[test]
    fn cgroups_are_mounted_read_only_after_sys() {
        let v1 = |name: &str| CgroupMount {
            subdir: name.into(),
            fstype: "cgroup".into(),
            controllers: Some(name.into()),
        };
        let d = Dirs::new();
        let r = d.root.display().to_string();
        let calls = d.prepare(&[v1("memory"), v1("pids")]);
        let sys = calls.iter().position(|c| c.contains("sysfs")).unwrap();
        assert_eq!(
            calls[sys + 1..sys + 5],
            [
                format!("mount tmpfs {r}/sys/fs/cgroup tmpfs nosuid nodev noexec"),
                format!("mount cgroup {r}/sys/fs/cgroup/memory cgroup ro nosuid nodev noexec"),
                format!("mount cgroup {r}/sys/fs/cgroup/pids cgroup ro nosuid nodev noexec"),
                format!("mount - {r}/sys/fs/cgroup - remount ro nosuid nodev noexec"),
            ]
        );
        // Pure v2: cgroup2 itself, no tmpfs.
        let v2 = CgroupMount {
            subdir: String::new(),
            fstype: "cgroup2".into(),
            controllers: None,
        };
        let calls = Dirs::new().prepare(&[v2]);
        assert_eq!(
            calls
                .iter()
                .filter(|c| c.contains("/sys/fs/cgroup"))
                .count(),
            1
        );
        assert!(calls
            .iter()
            .any(|c| c.ends_with("/sys/fs/cgroup cgroup2 ro nosuid nodev noexec")));
    }

    #[test]
    fn prepare_mounts_in_runc_order_then_pivots() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("rootfs");
        let etc = dir.path().join("etc");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&etc).unwrap();
        let opts = RunOptions {
            command: vec!["true".into()],
            volumes: vec![format!("{}:/data:ro", etc.display())],
            tmpfs: vec!["/scratch".into()],
            ..Default::default()
        };
        let spec = ContainerSpec::new(None, &opts, "id".into(), dir.path().into()).unwrap();
        let rec = Recorder::default();
        prepare(&rec, &root, &spec, &etc, None, &[]).unwrap();
        let calls = rec.calls.borrow();
        let targets: Vec<String> = calls
            .iter()
            .filter(|c| c.starts_with("mount ") && !c.contains("remount"))
            .map(|c| {
                c.split(' ')
                    .nth(2)
                    .unwrap()
                    .trim_start_matches(root.to_str().unwrap())
                    .to_string()
            })
            .collect();
        assert_eq!(
            targets,
            [
                "/",
                "",
                "/proc",
                "/dev",
                "/dev/pts",
                "/dev/shm",
                "/dev/mqueue",
                "/sys",
                "/etc/resolv.conf",
                "/etc/hostname",
                "/etc/hosts",
                "/data",
                "/scratch"
            ]
        );
        assert!(calls
            .iter()
            .any(|c| c.contains("/data -") && c.contains("remount-bind ro")));
        assert_eq!(
            calls.iter().filter(|c| c.starts_with("mknod")).count(),
            DEVICES.len()
        );
        assert!(calls.iter().any(|c| c.ends_with("/dev/null 666 1:3")));
        assert_eq!(
            calls.last().unwrap(),
            &format!("pivot_root {}", root.display())
        );
        assert_eq!(
            std::fs::read_link(root.join("dev/ptmx")).unwrap(),
            PathBuf::from("pts/ptmx")
        );
        assert!(root.join("etc/hosts").is_file());
    }
}
