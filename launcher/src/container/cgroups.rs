//! Resource limits through cgroups: pure v2, pure v1, or the hybrid layout (v1
//! controllers plus a v2 unified mount at /sys/fs/cgroup/unified) this machine has.
//! Detected from /proc/self/mountinfo; limits go to v1 controllers when they are
//! mounted there, else to v2.

use super::devices_bpf;
use super::spec::Resources;
use std::path::{Path, PathBuf};

/// Errors from creating, filling or removing a container's cgroups.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// No cgroup filesystem is mounted.
    #[error("no cgroup filesystem mounted")]
    NotMounted,
    /// A limit needs a controller that is neither a v1 hierarchy nor available in v2.
    #[error("cgroup controller {0} is not available")]
    MissingController(&'static str),
    /// The eBPF device filter could not be built or attached.
    #[error(transparent)]
    DeviceFilter(#[from] super::devices_bpf::DeviceFilterError),
    /// Reading or writing a cgroup file failed.
    #[error("cgroup {path}: {source}")]
    Io {
        /// The cgroup file or directory.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The v1 controller names (super options that are not controllers, like `xattr`,
/// are left out; a named hierarchy's `name=…` is kept, it is how /proc/PID/cgroup
/// lists it).
const V1_CONTROLLERS: &[&str] = &[
    "blkio",
    "cpu",
    "cpuacct",
    "cpuset",
    "devices",
    "freezer",
    "hugetlb",
    "memory",
    "misc",
    "net_cls",
    "net_prio",
    "perf_event",
    "pids",
    "rdma",
];

/// Which cgroup layout the host has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// Only the unified hierarchy, at this mount point.
    V2(PathBuf),
    /// Only v1 hierarchies: (controller names, mount point).
    V1(Vec<(Vec<String>, PathBuf)>),
    /// v1 hierarchies plus a v2 mount that holds no controllers we use.
    Hybrid {
        /// The v1 hierarchies.
        v1: Vec<(Vec<String>, PathBuf)>,
        /// The unified mount.
        unified: PathBuf,
    },
}

/// Reads the layout from the contents of /proc/self/mountinfo.
pub fn detect_layout(mountinfo: &str) -> Result<Layout, CgroupError> {
    let mut v1 = Vec::new();
    let mut v2 = None;
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mount_point = left.split(' ').nth(4).unwrap_or_default();
        let mut r = right.split(' ');
        let fstype = r.next().unwrap_or_default();
        let super_opts = r.nth(1).unwrap_or_default();
        match fstype {
            "cgroup2" => v2 = v2.or(Some(PathBuf::from(mount_point))),
            "cgroup" => {
                let controllers: Vec<String> = super_opts
                    .split(',')
                    .filter(|o| V1_CONTROLLERS.contains(o) || o.starts_with("name="))
                    .map(str::to_string)
                    .collect();
                v1.push((controllers, PathBuf::from(mount_point)));
            }
            _ => {}
        }
    }
    match (v1.is_empty(), v2) {
        (true, Some(v2)) => Ok(Layout::V2(v2)),
        (false, None) => Ok(Layout::V1(v1)),
        (false, Some(unified)) => Ok(Layout::Hybrid { v1, unified }),
        (true, None) => Err(CgroupError::NotMounted),
    }
}

/// The cgroup directories of one container; removed by [`Cgroup::destroy`] (and on drop).
#[derive(Debug)]
pub struct Cgroup {
    /// Every directory created, deepest last.
    dirs: Vec<PathBuf>,
    /// The hierarchies the container has its own cgroup in, as it mounts them.
    mounts: Vec<CgroupMount>,
}

/// One cgroup filesystem the container mounts read-only under its `/sys/fs/cgroup`,
/// seen from its cgroup namespace (so its root is the container's own cgroup).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CgroupMount {
    /// Directory below /sys/fs/cgroup (named like the host's mount point); empty for
    /// a pure v2 host, where cgroup2 is mounted on /sys/fs/cgroup itself.
    pub subdir: String,
    /// `cgroup` (v1) or `cgroup2`.
    pub fstype: String,
    /// The v1 hierarchy's controllers, comma-separated (the mount's data).
    pub controllers: Option<String>,
}

/// Relative path of this process's cgroup in a v1 hierarchy with `controller`, or in v2
/// (`controller` = ""), from the contents of /proc/self/cgroup.
fn own_path(proc_cgroup: &str, controller: &str) -> String {
    for line in proc_cgroup.lines() {
        let mut f = line.splitn(3, ':');
        let (_, list, path) = (f.next(), f.next().unwrap_or(""), f.next().unwrap_or("/"));
        let matches = if controller.is_empty() {
            list.is_empty()
        } else {
            list.split(',').any(|c| c == controller)
        };
        if matches {
            return path.trim_start_matches('/').to_string();
        }
    }
    String::new()
}

impl Cgroup {
    /// Creates the container's cgroups, sets `limits` and returns them; the container's
    /// PID 1 is added with [`Cgroup::add`] before it runs anything.
    /// With `restrict_devices`, device access is limited to Docker's default list: by
    /// the v1 devices controller where it is mounted, and by an eBPF device program on
    /// the container's v2 cgroup (the only filter on a pure v2 host, so a failure to
    /// attach it is an error there; on a hybrid host the v1 controller stays in force
    /// and the failure is logged).
    pub fn create(
        id: &str,
        limits: &Resources,
        restrict_devices: bool,
    ) -> Result<Cgroup, CgroupError> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(io(Path::new("/proc/self/mountinfo")))?;
        let proc_cgroup = std::fs::read_to_string("/proc/self/cgroup")
            .map_err(io(Path::new("/proc/self/cgroup")))?;
        let layout = detect_layout(&mountinfo)?;
        let name = format!("skiff-{id}");
        let mut cg = Cgroup {
            dirs: Vec::new(),
            mounts: Vec::new(),
        };
        let v1 = match &layout {
            Layout::V1(v1) | Layout::Hybrid { v1, .. } => v1.clone(),
            Layout::V2(_) => Vec::new(),
        };
        let v1_hierarchy = |ctrl: &str| v1.iter().find(|(c, _)| c.iter().any(|x| x == ctrl));
        let v1_dir = |ctrl: &str| -> Option<PathBuf> {
            v1_hierarchy(ctrl).map(|(_, mnt)| mnt.join(own_path(&proc_cgroup, ctrl)).join(&name))
        };
        // Records that the container has its own cgroup in `ctrl`'s v1 hierarchy.
        let v1_mount = |ctrl: &str| -> Option<CgroupMount> {
            v1_hierarchy(ctrl).map(|(controllers, mnt)| CgroupMount {
                subdir: mnt
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| controllers.join(",")),
                fstype: "cgroup".into(),
                controllers: Some(controllers.join(",")),
            })
        };

        // v2 (pure or the hybrid's unified mount): the container gets its own
        // directory next to ours, for tracking and, on pure v2, for the limits.
        let v2_dir = match &layout {
            Layout::V2(m) => {
                // Pure v2: controllers can only be enabled for a cgroup without
                // processes of its own, so containers go under a top-level `skiff`
                // cgroup (runc's cgroupfs driver does the same with its path), not
                // under skiff's own (often a busy session scope).
                let parent = m.join("skiff");
                std::fs::create_dir_all(&parent).map_err(io(&parent))?;
                enable_v2_controllers(m, limits)?;
                enable_v2_controllers(&parent, limits)?;
                let dir = parent.join(&name);
                std::fs::create_dir_all(&dir).map_err(io(&dir))?;
                cg.dirs.push(dir.clone());
                cg.mounts.push(CgroupMount {
                    subdir: String::new(),
                    fstype: "cgroup2".into(),
                    controllers: None,
                });
                Some(dir)
            }
            Layout::Hybrid { unified: m, .. } => {
                // Hybrid: the unified hierarchy holds no controllers; the container
                // gets a directory next to skiff's for tracking only.
                let dir = m.join(own_path(&proc_cgroup, "")).join(&name);
                std::fs::create_dir_all(&dir).map_err(io(&dir))?;
                cg.dirs.push(dir.clone());
                Some(dir)
            }
            Layout::V1(_) => None,
        };

        if restrict_devices {
            if let Some(dir) = &v2_dir {
                if let Err(e) = attach_device_filter(dir, &limits.device_rules) {
                    match layout {
                        Layout::V2(_) => return Err(e),
                        _ => tracing::warn!("{e} (the v1 devices controller still applies)"),
                    }
                }
            }
            if let Some(dir) = v1_dir("devices") {
                std::fs::create_dir_all(&dir).map_err(io(&dir))?;
                cg.dirs.push(dir.clone());
                cg.mounts.extend(v1_mount("devices"));
                write(&dir.join("devices.deny"), "a")?;
                for rule in DEFAULT_DEVICE_RULES
                    .iter()
                    .copied()
                    .chain(limits.device_rules.iter().map(String::as_str))
                {
                    write(&dir.join("devices.allow"), rule)?;
                }
            }
        }
        let mut set =
            |ctrl: &'static str, v1_file: &[(&str, String)], v2_file: &[(&str, String)]| {
                if let Some(dir) = v1_dir(ctrl) {
                    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
                    cg.dirs.push(dir.clone());
                    if let Some(m) = v1_mount(ctrl) {
                        if !cg.mounts.contains(&m) {
                            cg.mounts.push(m);
                        }
                    }
                    for (f, v) in v1_file {
                        write(&dir.join(f), v)?;
                    }
                    Ok(())
                } else if let (Layout::V2(_), Some(dir)) = (&layout, &v2_dir) {
                    for (f, v) in v2_file {
                        write(&dir.join(f), v)?;
                    }
                    Ok(())
                } else {
                    Err(CgroupError::MissingController(ctrl))
                }
            };
        if let Some(mem) = limits.memory {
            let mut v1_files = vec![("memory.limit_in_bytes", mem.to_string())];
            // Swap limits exist on v1 only with swap accounting; docker then warns and
            // goes on without one.
            let memsw = v1_hierarchy("memory")
                .is_some_and(|(_, m)| m.join("memory.memsw.limit_in_bytes").exists());
            match limits.memory_swap {
                Some(total) if memsw => {
                    v1_files.push(("memory.memsw.limit_in_bytes", total.to_string()))
                }
                Some(_) if v1_hierarchy("memory").is_some() => tracing::warn!(
                    "the kernel does not account swap (memory.memsw): --memory-swap is ignored"
                ),
                _ => {}
            }
            let swap_max = match limits.memory_swap {
                None => "0".to_string(),
                Some(total) if total < 0 => "max".to_string(),
                Some(total) => (total as u64).saturating_sub(mem).to_string(),
            };
            set(
                "memory",
                &v1_files,
                &[
                    ("memory.max", mem.to_string()),
                    ("memory.swap.max", swap_max),
                ],
            )?;
        }
        if let Some(cpus) = &limits.cpuset_cpus {
            // A new v1 cpuset has no memory nodes: it takes its parent's.
            let mems = v1_dir("cpuset")
                .and_then(|d| std::fs::read_to_string(d.parent()?.join("cpuset.mems")).ok())
                .unwrap_or_default();
            set(
                "cpuset",
                &[
                    ("cpuset.cpus", cpus.clone()),
                    ("cpuset.mems", mems.trim().to_string()),
                ],
                &[("cpuset.cpus", cpus.clone())],
            )?;
        }
        if let Some(quota) = limits.cpu_quota {
            set(
                "cpu",
                &[
                    ("cpu.cfs_period_us", "100000".into()),
                    ("cpu.cfs_quota_us", quota.to_string()),
                ],
                &[("cpu.max", format!("{quota} 100000"))],
            )?;
        }
        if let Some(pids) = limits.pids {
            set(
                "pids",
                &[("pids.max", pids.to_string())],
                &[("pids.max", pids.to_string())],
            )?;
        }
        // Every other v1 hierarchy: a cgroup of its own without limits, as runc makes
        // them, so the container's /sys/fs/cgroup shows every hierarchy (as docker's
        // does), each rooted at the container's own cgroup.
        for (controllers, _) in &v1 {
            let Some(key) = controllers.first() else {
                continue;
            };
            let Some(dir) = v1_dir(key) else { continue };
            if cg.dirs.contains(&dir) {
                continue;
            }
            std::fs::create_dir_all(&dir).map_err(io(&dir))?;
            cg.dirs.push(dir.clone());
            cg.mounts.extend(v1_mount(key));
            if controllers.iter().any(|c| c == "cpuset") {
                // A new v1 cpuset has no CPUs and memory nodes: it takes its parent's.
                for f in ["cpuset.cpus", "cpuset.mems"] {
                    let parent = dir.parent().map(|p| p.join(f)).unwrap_or_default();
                    let v = std::fs::read_to_string(&parent).map_err(io(&parent))?;
                    write(&dir.join(f), v.trim())?;
                }
            }
        }
        Ok(cg)
    }

    /// The cgroup filesystems the container mounts under its `/sys/fs/cgroup`: each
    /// hierarchy it has its own cgroup in (never one where its namespace root would be
    /// skiff's cgroup, which holds other processes).
    pub fn mounts(&self) -> &[CgroupMount] {
        &self.mounts
    }

    /// Moves `pid` into every cgroup of the container.
    pub fn add(&self, pid: i32) -> Result<(), CgroupError> {
        for dir in &self.dirs {
            write(&dir.join("cgroup.procs"), &pid.to_string())?;
        }
        super::warm_start::attached();
        Ok(())
    }

    /// Removes the cgroup directories; waits briefly for exiting tasks to leave.
    pub fn destroy(&mut self) -> Result<(), CgroupError> {
        while let Some(dir) = self.dirs.pop() {
            let mut tries = 0;
            loop {
                match std::fs::remove_dir(&dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) && tries < 200 => {
                        tries += 1;
                        kill_all(&dir);
                        std::thread::sleep(std::time::Duration::from_millis(5));
                    }
                    Err(e) => {
                        return Err(CgroupError::Io {
                            path: dir,
                            source: e,
                        });
                    }
                }
            }
        }
        Ok(())
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        if let Err(e) = self.destroy() {
            tracing::warn!("removing cgroup: {e}");
        }
    }
}

/// Attaches the eBPF program allowing [`DEFAULT_DEVICE_RULES`] and `extra` (from
/// `--device`) to the v2 cgroup `dir`.
fn attach_device_filter(dir: &Path, extra: &[String]) -> Result<(), CgroupError> {
    let rules = DEFAULT_DEVICE_RULES
        .iter()
        .copied()
        .chain(extra.iter().map(String::as_str))
        .map(devices_bpf::DeviceRule::parse)
        .collect::<Result<Vec<_>, _>>()?;
    devices_bpf::attach(dir, &rules)?;
    Ok(())
}

/// The mount point of the unified (v2) hierarchy, pure or hybrid, if any (for tests
/// that attach to a cgroup of their own).
#[cfg(test)]
pub fn v2_mount() -> Option<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    match detect_layout(&mountinfo).ok()? {
        Layout::V2(m) | Layout::Hybrid { unified: m, .. } => Some(m),
        Layout::V1(_) => None,
    }
}

/// Devices a container may use (runc's and Docker's defaults): mknod of any, and
/// read/write of null, zero, full, random, urandom, tty, console, ptmx, ptys, tun.
pub const DEFAULT_DEVICE_RULES: &[&str] = &[
    "c *:* m",
    "b *:* m",
    "c 1:3 rwm",
    "c 1:5 rwm",
    "c 1:7 rwm",
    "c 1:8 rwm",
    "c 1:9 rwm",
    "c 5:0 rwm",
    "c 5:1 rwm",
    "c 5:2 rwm",
    "c 136:* rwm",
    "c 10:200 rwm",
];

/// Removes the cgroups of container `id` left behind by a skiff that was killed:
/// every `skiff-<id>` directory in the hierarchies (killing what is left in them).
pub fn remove_stale(id: &str) {
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let Ok(proc_cgroup) = std::fs::read_to_string("/proc/self/cgroup") else {
        return;
    };
    let name = format!("skiff-{id}");
    let mut dirs = Vec::new();
    match detect_layout(&mountinfo) {
        Ok(Layout::V2(m)) => dirs.push(m.join("skiff").join(&name)),
        Ok(Layout::V1(v1)) => {
            for (ctrls, m) in v1 {
                if let Some(c) = ctrls.first() {
                    dirs.push(m.join(own_path(&proc_cgroup, c)).join(&name));
                }
            }
        }
        Ok(Layout::Hybrid { v1, unified }) => {
            dirs.push(unified.join(own_path(&proc_cgroup, "")).join(&name));
            for (ctrls, m) in v1 {
                if let Some(c) = ctrls.first() {
                    dirs.push(m.join(own_path(&proc_cgroup, c)).join(&name));
                }
            }
        }
        Err(_) => {}
    }
    dirs.retain(|d| d.exists());
    let mut cg = Cgroup {
        dirs,
        mounts: Vec::new(),
    };
    if let Err(e) = cg.destroy() {
        tracing::warn!("removing stale cgroup: {e}");
    }
}

/// The cgroup directories process `pid` is in, as host paths: one per v1 hierarchy
/// with controllers, and the v2 one. `skiff exec` puts its process in those of the
/// container's PID 1.
pub fn dirs_of(pid: i32) -> Result<Vec<PathBuf>, CgroupError> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(io(Path::new("/proc/self/mountinfo")))?;
    let path = PathBuf::from(format!("/proc/{pid}/cgroup"));
    let proc_cgroup = std::fs::read_to_string(&path).map_err(io(&path))?;
    Ok(process_dirs(&detect_layout(&mountinfo)?, &proc_cgroup))
}

/// [`dirs_of`] from the host's layout and the contents of /proc/PID/cgroup (read
/// from the host's cgroup namespace, so the paths are the host's).
fn process_dirs(layout: &Layout, proc_cgroup: &str) -> Vec<PathBuf> {
    let (v1, v2): (&[(Vec<String>, PathBuf)], Option<&PathBuf>) = match layout {
        Layout::V2(m) => (&[], Some(m)),
        Layout::V1(v1) => (v1, None),
        Layout::Hybrid { v1, unified } => (v1, Some(unified)),
    };
    let mut dirs = Vec::new();
    for line in proc_cgroup.lines() {
        let mut f = line.splitn(3, ':');
        let (_, list, path) = (f.next(), f.next().unwrap_or(""), f.next().unwrap_or("/"));
        let rel = path.trim_start_matches('/');
        let mount = if list.is_empty() {
            v2
        } else {
            let listed: Vec<&str> = list.split(',').collect();
            v1.iter()
                .find(|(c, _)| !c.is_empty() && c.iter().all(|x| listed.contains(&x.as_str())))
                .map(|(_, m)| m)
        };
        if let Some(m) = mount {
            dirs.push(m.join(rel));
        }
    }
    dirs
}

/// Moves process `pid` into the cgroup directory `dir`.
pub fn join(dir: &Path, pid: i32) -> Result<(), CgroupError> {
    write(&dir.join("cgroup.procs"), &pid.to_string())
}

/// SIGKILLs every task left in a cgroup directory.
fn kill_all(dir: &Path) {
    if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Enables the controllers the limits need in `parent`'s subtree (pure v2).
fn enable_v2_controllers(parent: &Path, limits: &Resources) -> Result<(), CgroupError> {
    let mut wanted = Vec::new();
    if limits.memory.is_some() {
        wanted.push("+memory");
    }
    if limits.cpu_quota.is_some() {
        wanted.push("+cpu");
    }
    if limits.pids.is_some() {
        wanted.push("+pids");
    }
    if limits.cpuset_cpus.is_some() {
        wanted.push("+cpuset");
    }
    if wanted.is_empty() {
        return Ok(());
    }
    write(&parent.join("cgroup.subtree_control"), &wanted.join(" "))
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::write(path, value).map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
30 25 0:26 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755
31 30 0:27 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
32 30 0:28 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
33 30 0:29 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
34 30 0:30 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
35 30 0:31 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
";

    #[test]
    fn detects_hybrid_v1_and_v2() {
        match detect_layout(HYBRID).unwrap() {
            Layout::Hybrid { v1, unified } => {
                assert_eq!(unified, PathBuf::from("/sys/fs/cgroup/unified"));
                assert_eq!(
                    v1[0],
                    (vec!["cpu".to_string()], "/sys/fs/cgroup/cpu".into())
                );
                assert_eq!(v1[2].0, vec!["name=systemd".to_string()]);
                assert_eq!(v1[3].0, vec!["cpu".to_string(), "cpuacct".to_string()]);
            }
            other => panic!("{other:?}"),
        }
        let v2 = "30 25 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            detect_layout(v2).unwrap(),
            Layout::V2("/sys/fs/cgroup".into())
        );
        let v1: String = HYBRID
            .lines()
            .filter(|l| !l.contains("cgroup2"))
            .collect::<Vec<_>>()
            .join("\n");
        assert!(matches!(detect_layout(&v1).unwrap(), Layout::V1(_)));
        assert!(matches!(detect_layout(""), Err(CgroupError::NotMounted)));
    }

    #[test]
    fn process_dirs_map_to_host_paths() {
        let layout = detect_layout(HYBRID).unwrap();
        let pc = "5:memory:/user/skiff-x\n4:name=systemd:/s\n3:cpu,cpuacct:/c\n0::/u/skiff-x\n";
        assert_eq!(
            process_dirs(&layout, pc),
            [
                PathBuf::from("/sys/fs/cgroup/memory/user/skiff-x"),
                PathBuf::from("/sys/fs/cgroup/systemd/s"),
                PathBuf::from("/sys/fs/cgroup/cpu/c"),
                PathBuf::from("/sys/fs/cgroup/unified/u/skiff-x"),
            ]
        );
        let v2 = Layout::V2("/sys/fs/cgroup".into());
        assert_eq!(
            process_dirs(&v2, "0::/skiff/skiff-y\n"),
            [PathBuf::from("/sys/fs/cgroup/skiff/skiff-y")]
        );
    }

    #[test]
    fn own_path_per_controller() {
        let pc = "4:memory:/a/b\n3:cpu,cpuacct:/c\n0::/u\n";
        assert_eq!(own_path(pc, "memory"), "a/b");
        assert_eq!(own_path(pc, "cpuacct"), "c");
        assert_eq!(own_path(pc, ""), "u");
        assert_eq!(own_path(pc, "pids"), "");
    }
}
