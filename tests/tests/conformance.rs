//! Conformance (issue 14): `skiff run IMAGE` against `runc run` of the same image,
//! unpacked by umoci into a bundle whose config.json is what `docker run` gives a
//! container (docker's defaults, not `runc spec`'s, where the two differ). One probe
//! script runs in both containers; its sections are compared one by one, so a drift
//! in any of them fails the test and names the section.
//!
//! The image comes from a test registry for skiff (the lazy FUSE view), and from an
//! OCI layout of the same bytes for umoci. skiff runs with `SKIFF_NETWORK=none`, runc
//! with a private network namespace (its loopback only). The differences that are
//! deliberate are undone before the comparison, each with its reason
//! ([`allow_deliberate_differences`]).

use serde_json::{json, Value};
use skiff_proto::image::{Descriptor, Manifest, Platform, MEDIA_OCI_CONFIG};
use skiff_tests::cli::{describe, Skiff};
use skiff_tests::fixtures::{build_image, push_built, write_oci_layout, BuiltImage, Entry, Layer};
use skiff_tests::registry::Registry;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};

/// Docker's default capability set (moby's `caps.DefaultCapabilities`).
const DOCKER_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Docker's masked paths (moby's `oci.DefaultLinuxSpec`, with the powercap mask it
/// added in 2020; `runc spec` lacks that one).
const MASKED: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Docker's read-only paths.
const READONLY: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Docker's device cgroup rules for an unprivileged container: deny everything, then
/// mknod of any node, the standard nodes, ptys, and tun.
const DEVICE_RULES: &[(&str, i64, i64, &str)] = &[
    ("c", -1, -1, "m"),
    ("b", -1, -1, "m"),
    ("c", 1, 3, "rwm"),
    ("c", 1, 5, "rwm"),
    ("c", 1, 7, "rwm"),
    ("c", 1, 8, "rwm"),
    ("c", 1, 9, "rwm"),
    ("c", 5, 0, "rwm"),
    ("c", 5, 1, "rwm"),
    ("c", 5, 2, "rwm"),
    ("c", 136, -1, "rwm"),
    ("c", 10, 200, "rwm"),
];

/// The probe: each section starts with `== name`. Raw material only; normalising
/// (which mount options matter, say) is done in Rust, where it can be read.
const PROBE: &str = r#"
s() { echo "== $1"; }
s id; id
s status; cat /proc/self/status
s mountinfo; cat /proc/self/mountinfo
s masked
for p in MASKED; do
  echo "$p: $(stat -c %F "$p" 2>&1) read=$(head -c 64 "$p" 2>&1 | wc -c) entries=$(ls -A "$p" 2>/dev/null | wc -l)"
  touch "$p/x" 2>&1
done
s readonly
for p in READONLY; do
  if [ -d "$p" ]; then touch "$p/x" 2>&1; else (echo 1 > "$p") 2>&1; fi
done
(echo probe2 > /proc/sys/kernel/hostname) 2>&1
s limits; cat /proc/self/limits
s hostname; hostname; cat /proc/sys/kernel/hostname; cat /etc/hostname
s cwd; pwd
s env; env | sort
s umask; umask
s dev
for f in /dev/* /dev/pts/* /dev/mqueue/* /dev/shm/*; do
  echo "$f $(stat -c '%A %u:%g %t:%T' "$f" 2>&1) $(readlink "$f")"
done
s dev-sizes; df -k /dev /dev/shm | tail -n +2 | awk '{print $6, $2}'
s cgroup; cat /proc/self/cgroup
s cgroupfs
ls /sys/fs/cgroup
cat /sys/fs/cgroup/devices/devices.list 2>&1
cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>&1
cat /sys/fs/cgroup/pids/pids.max 2>&1
s oom; cat /proc/self/oom_score_adj
s net; ip -o link | cut -d' ' -f2,3,9
s session; cut -d' ' -f5,6 /proc/self/stat
s tty; [ -t 0 ] && echo stdin-tty || echo stdin-no-tty
"#;

fn probe_script() -> String {
    PROBE
        .replace("MASKED", &MASKED.join(" "))
        .replace("READONLY", &READONLY.join(" "))
}

/// The image: static busybox with every applet, passwd/group with root and alice,
/// WorkingDir /work, an Env of its own.
fn image() -> BuiltImage {
    let busybox = std::fs::read("/bin/busybox").expect("busybox-static is installed");
    let mut entries = vec![
        Entry::dir("bin", 0o755),
        Entry::dir("etc", 0o755),
        Entry::dir("tmp", 0o1777),
        Entry::dir("work", 0o755),
        Entry::dir("home", 0o755),
        Entry::dir("root", 0o700),
        Entry::file("bin/busybox", &busybox, 0o755),
        Entry::file(
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n",
            0o644,
        ),
        Entry::file(
            "etc/group",
            b"root:x:0:\nwheel:x:10:root,alice\nalice:x:1000:\n",
            0o644,
        ),
    ];
    let list = Command::new("/bin/busybox").arg("--list").output().unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" {
            entries.push(Entry::symlink(&format!("bin/{applet}"), "busybox"));
        }
    }
    let built = build_image(
        vec![Layer::tar_gzip(&entries)],
        &Platform::host(),
        &["/bin/sh"],
    );
    let mut config: Value = serde_json::from_slice(&built.config).unwrap();
    config["config"]["WorkingDir"] = json!("/work");
    config["config"]["Env"] = json!([
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "FOO=bar"
    ]);
    let config = serde_json::to_vec(&config).unwrap();
    let manifest = Manifest::oci(
        Descriptor::of(MEDIA_OCI_CONFIG, &config),
        built.layers.iter().map(Layer::descriptor).collect(),
    );
    let manifest_bytes = manifest.to_bytes();
    BuiltImage {
        digest: skiff_proto::digest::Digest::of(&manifest_bytes),
        layers: built.layers,
        config,
        manifest,
        manifest_bytes,
    }
}

/// skiff's (and docker's usual) RLIMIT_NOFILE: 1048576, capped at the hard limit this
/// process has, since runc here cannot raise it (no CAP_SYS_RESOURCE beyond it).
fn nofile() -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) };
    r.rlim_max.min(1 << 20)
}

/// Who runs the probe: skiff's `-u` value and the process.user docker derives from it
/// in the image's /etc/passwd and /etc/group.
struct User {
    flag: Option<&'static str>,
    uid: u32,
    gid: u32,
    groups: &'static [u32],
}

/// The config.json `docker run --network none --hostname probe [-u …] [-t] IMAGE sh
/// -c PROBE` would give runc (moby's `oci.DefaultLinuxSpec` plus what the daemon adds).
fn docker_config(etc: &Path, user: &User, tty: bool) -> Value {
    let caps = if user.uid == 0 { DOCKER_CAPS } else { &[] };
    let mut env = vec![
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
        "HOSTNAME=probe".to_string(),
    ];
    if tty {
        env.push("TERM=xterm".into());
    }
    env.push("FOO=bar".into());
    let nofile = nofile();
    let bind = |name: &str| {
        json!({
            "destination": format!("/etc/{name}"),
            "type": "bind",
            "source": etc.join(name),
            "options": ["rbind", "rprivate"],
        })
    };
    let devices: Vec<Value> = std::iter::once(json!({"allow": false, "access": "rwm"}))
        .chain(DEVICE_RULES.iter().map(|(kind, major, minor, access)| {
            let mut rule = json!({"allow": true, "type": kind, "access": access});
            if *major >= 0 {
                rule["major"] = json!(major);
            }
            if *minor >= 0 {
                rule["minor"] = json!(minor);
            }
            rule
        }))
        .collect();
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": tty,
            "user": {"uid": user.uid, "gid": user.gid, "additionalGids": user.groups},
            "args": ["sh", "-c", probe_script()],
            "env": env,
            "cwd": "/work",
            "capabilities": {
                "bounding": DOCKER_CAPS,
                "effective": caps,
                "permitted": caps,
                "inheritable": [],
                "ambient": [],
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": nofile, "soft": nofile}],
            // Docker leaves no_new_privs off unless asked for.
            "noNewPrivileges": false,
            "oomScoreAdj": 0,
        },
        "root": {"path": "rootfs", "readonly": false},
        "hostname": "probe",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
             "options": ["ro", "nosuid", "noexec", "nodev"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=67108864"]},
            bind("resolv.conf"),
            bind("hostname"),
            bind("hosts"),
        ],
        "linux": {
            "namespaces": [
                {"type": "mount"}, {"type": "network"}, {"type": "uts"},
                {"type": "pid"}, {"type": "ipc"}, {"type": "cgroup"},
            ],
            "maskedPaths": MASKED,
            "readonlyPaths": READONLY,
            "resources": {"devices": devices},
            // Docker's default seccomp profile is data runc cannot read as it is; any
            // filter gives the mode and filter count compared here (what the profile
            // refuses is run_security's business).
            "seccomp": {
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["kexec_load"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}],
            },
        },
    })
}

/// Runs `argv` under a pty (`script`), for `-t`.
fn under_pty(argv: &[String]) -> Command {
    let quoted: Vec<String> = argv
        .iter()
        .map(|a| format!("'{}'", a.replace('\'', r"'\''")))
        .collect();
    let mut c = Command::new("script");
    c.args(["-qec", &quoted.join(" "), "/dev/null"]);
    c
}

/// The probe's output under runc, on `bundle` made with `config`.
fn runc_probe(bundle: &Path, config: &Value, tty: bool, n: usize) -> String {
    std::fs::write(
        bundle.join("config.json"),
        serde_json::to_vec_pretty(config).unwrap(),
    )
    .unwrap();
    let id = format!("skiff-conformance-{}-{n}", std::process::id());
    let argv: Vec<String> = ["runc", "run", "--bundle"]
        .iter()
        .map(|s| s.to_string())
        .chain([bundle.display().to_string(), id.clone()])
        .collect();
    let mut cmd = if tty {
        under_pty(&argv)
    } else {
        let mut c = Command::new(&argv[0]);
        c.args(&argv[1..]);
        c
    };
    let out = cmd.stdin(Stdio::null()).output().expect("running runc");
    let _ = Command::new("runc").args(["delete", "-f", &id]).output();
    assert!(out.status.success(), "runc run: {}", describe(&out));
    String::from_utf8_lossy(&out.stdout).replace("\r\n", "\n")
}

/// The probe's output under `skiff run`.
fn skiff_probe(skiff: &Skiff, image: &str, user: &User, tty: bool) -> String {
    let mut args: Vec<String> = vec![
        "run".into(),
        "--rm".into(),
        "--hostname".into(),
        "probe".into(),
    ];
    if let Some(u) = user.flag {
        args.extend(["-u".into(), u.into()]);
    }
    if tty {
        args.push("-t".into());
    }
    args.extend([image.into(), "sh".into(), "-c".into(), probe_script()]);
    let out = if tty {
        let mut argv = vec![skiff_tests::cli::skiff_bin().display().to_string()];
        argv.extend(["--root".into(), skiff.root.display().to_string()]);
        argv.extend(args);
        let mut c = under_pty(&argv);
        c.env("SKIFF_NETWORK", "none")
            .env("DOCKER_CONFIG", skiff.root.join("no-docker-config"))
            .env("SKIFF_HOSTS_DIR", skiff.root.join("no-hosts-dir"))
            .stdin(Stdio::null());
        c.output().expect("running skiff under script")
    } else {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        skiff.run(&args)
    };
    assert!(out.status.success(), "skiff run: {}", describe(&out));
    String::from_utf8_lossy(&out.stdout).replace("\r\n", "\n")
}

/// The probe's output split into its sections.
fn sections(output: &str) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    let mut name = String::from("(before the first section)");
    let mut body = String::new();
    for line in output.lines() {
        if let Some(next) = line.strip_prefix("== ") {
            map.insert(
                std::mem::replace(&mut name, next.to_string()),
                std::mem::take(&mut body),
            );
        } else {
            body.push_str(line);
            body.push('\n');
        }
    }
    map.insert(name, body);
    map
}

/// /proc/self/status, only the fields a container's identity and confinement show in.
fn status_fields(status: &str) -> String {
    const FIELDS: &[&str] = &[
        "Uid",
        "Gid",
        "Groups",
        "CapInh",
        "CapPrm",
        "CapEff",
        "CapBnd",
        "CapAmb",
        "NoNewPrivs",
        "Seccomp",
        "Seccomp_filters",
    ];
    status
        .lines()
        .filter(|l| l.split(':').next().is_some_and(|k| FIELDS.contains(&k)))
        .map(|l| format!("{}\n", l.split_whitespace().collect::<Vec<_>>().join(" ")))
        .collect()
}

/// /proc/self/mountinfo, one line per mount: mount point, file system type, the
/// per-mount options that change what the container may do (ro, nosuid, nodev,
/// noexec), and the superblock options that size or shape it (tmpfs size and mode,
/// devpts modes, a v1 cgroup's controllers, ro). Sorted: the order of unrelated
/// mounts is not something a process notices.
fn mounts(mountinfo: &str) -> String {
    let mut lines: Vec<String> = mountinfo
        .lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let left: Vec<&str> = left.split(' ').collect();
            let right: Vec<&str> = right.split(' ').collect();
            let point = left.get(4)?;
            let opts: Vec<&str> = left
                .get(5)?
                .split(',')
                .filter(|o| ["ro", "rw", "nosuid", "nodev", "noexec"].contains(o))
                .collect();
            let fstype = right.first()?;
            let sb: Vec<&str> = right
                .get(2)
                .unwrap_or(&"")
                .split(',')
                .filter(|o| {
                    *o == "ro"
                        || ["size=", "mode=", "ptmxmode=", "gid="]
                            .iter()
                            .any(|p| o.starts_with(p))
                        || (*fstype == "cgroup" && !o.contains('='))
                })
                .filter(|o| !(*fstype == "cgroup" && *o == "rw"))
                .collect();
            Some(format!(
                "{point} {fstype} {} [{}]",
                opts.join(","),
                sb.join(",")
            ))
        })
        .collect();
    lines.sort();
    lines.join("\n") + "\n"
}

/// Replaces the lines of `section` that start with `from` by `to` (the line the
/// other runtime gives), or drops them; a mismatch anywhere else still shows.
fn allow_line(map: &mut BTreeMap<String, String>, section: &str, from: &str, to: Option<&str>) {
    if let Some(text) = map.get_mut(section) {
        *text = text
            .lines()
            .filter_map(|l| match to {
                _ if !l.starts_with(from) => Some(format!("{l}\n")),
                Some(to) => Some(format!("{to}\n")),
                None => None,
            })
            .collect();
    }
}

/// Undoes the differences that are skiff's on purpose, each for the reason given.
fn allow_deliberate_differences(
    skiff: &mut BTreeMap<String, String>,
    runc: &mut BTreeMap<String, String>,
    tty: bool,
) {
    for map in [&mut *skiff, &mut *runc] {
        if let Some(m) = map.get_mut("mountinfo") {
            // The root: skiff serves the image's lazy view over FUSE (the point of
            // skiff), runc binds the unpacked directory; so the file system type
            // differs. Its options are still compared.
            *m = m
                .lines()
                .map(|l| match l.strip_prefix("/ ") {
                    Some(rest) => {
                        let mut f = rest.splitn(2, ' ');
                        let _fstype = f.next();
                        format!("/ ROOTFS {}\n", f.next().unwrap_or(""))
                    }
                    None => format!("{l}\n"),
                })
                .collect();
        }
        if let Some(c) = map.get_mut("cgroupfs") {
            // devices.list is a set the kernel prints in the order the rules were
            // written; runc writes them in its own order. Compared as sets.
            let mut lines: Vec<&str> = c.lines().collect();
            lines.sort();
            *c = lines.iter().map(|l| format!("{l}\n")).collect();
        }
    }
    // /sys/fs/cgroup's tmpfs: the config asks for it read-only and skiff makes it so
    // (and small); runc 1.1 leaves it writable, so container root can fill memory
    // through it. Stricter on purpose.
    allow_line(
        skiff,
        "mountinfo",
        "/sys/fs/cgroup tmpfs ro,nosuid,nodev,noexec [ro,size=64k,mode=755]",
        Some("/sys/fs/cgroup tmpfs rw,nosuid,nodev,noexec [mode=755]"),
    );
    if tty {
        // -t: skiff's pty comes from the host's devpts, bound to /dev/console (known,
        // launcher/src/container/README.md); runc allocates it in the container's own
        // devpts (so it is also /dev/pts/0 there, owned by group tty).
        allow_line(
            skiff,
            "mountinfo",
            "/dev/console devpts rw [mode=600,ptmxmode=000]",
            Some("/dev/console devpts rw,nosuid,noexec [gid=5,mode=620,ptmxmode=666]"),
        );
        // The host pty's number depends on what else the host has open.
        allow_line(
            skiff,
            "dev",
            "/dev/console crw------- 0:0 ",
            Some("/dev/console crw--w---- 0:5 88:0 "),
        );
        allow_line(runc, "dev", "/dev/pts/0 crw--w---- 0:5 88:0 ", None);
    }
}

/// The probe under both runtimes for one user and tty choice; the differing
/// sections, described.
fn compare(
    skiff: &Skiff,
    image: &str,
    bundle: &Path,
    etc: &Path,
    user: &User,
    tty: bool,
    n: usize,
) -> Vec<String> {
    let ours_raw = skiff_probe(skiff, image, user, tty);
    let theirs_raw = runc_probe(bundle, &docker_config(etc, user, tty), tty, n);
    let normalise = |raw: &str| {
        // Under `runc run -t` a NUL reaches the container's pty as input, and the
        // pty echoes it as `^@` before the probe's output: not the container's.
        let mut s = sections(&raw.replacen("^@", "", 1));
        if let Some(v) = s.get_mut("status") {
            *v = status_fields(v);
        }
        if let Some(v) = s.get_mut("mountinfo") {
            *v = mounts(v);
        }
        s
    };
    let (mut ours, mut theirs) = (normalise(&ours_raw), normalise(&theirs_raw));
    allow_deliberate_differences(&mut ours, &mut theirs, tty);
    assert!(
        ours.len() > 15 && theirs.len() > 15,
        "the probe did not run through:\n--- skiff\n{ours_raw}\n--- runc\n{theirs_raw}"
    );
    let mut diffs = Vec::new();
    let names: std::collections::BTreeSet<&String> = ours.keys().chain(theirs.keys()).collect();
    for name in names {
        let none = String::from("(no such section)\n");
        let mine = ours.get(name).unwrap_or(&none);
        let other = theirs.get(name).unwrap_or(&none);
        if mine != other {
            diffs.push(format!(
                "section {name} (user {:?}, tty {tty}):\n--- skiff\n{mine}--- runc (docker's defaults)\n{other}",
                user.flag
            ));
        }
    }
    diffs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skiff_run_matches_runc_with_dockers_defaults() {
    if !skiff_tests::tools_or_skip(
        &["runc", "umoci", "script"],
        "runc and skiff run containers",
    ) {
        return;
    }
    let reg = Registry::start();
    let built = image();
    push_built(
        &skiff_tests::client(&reg.host()),
        "conformance/busybox",
        "latest",
        &built,
    )
    .await;
    let image_ref = reg.reference("conformance/busybox:latest");

    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    write_oci_layout(&layout, "latest", &built);
    let bundle = dir.path().join("bundle");
    let out = Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:latest", layout.display()))
        .arg(&bundle)
        .output()
        .expect("running umoci");
    assert!(out.status.success(), "umoci unpack: {}", describe(&out));
    // The runtime files docker writes and binds (skiff writes its own the same way).
    let etc = dir.path().join("etc");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::write(etc.join("hostname"), "probe\n").unwrap();
    std::fs::write(etc.join("hosts"), "127.0.0.1\tlocalhost\n").unwrap();
    std::fs::write(etc.join("resolv.conf"), "nameserver 192.0.2.1\n").unwrap();

    let root = dir.path().join("root");
    let skiff = Skiff::new(&root);
    let _guard = skiff.guard(dir.path());
    let root_user = User {
        flag: None,
        uid: 0,
        gid: 0,
        groups: &[10],
    };
    let alice = User {
        flag: Some("alice"),
        uid: 1000,
        gid: 1000,
        groups: &[10],
    };
    let mut diffs = Vec::new();
    diffs.extend(compare(
        &skiff, &image_ref, &bundle, &etc, &root_user, false, 0,
    ));
    diffs.extend(compare(&skiff, &image_ref, &bundle, &etc, &alice, false, 1));
    diffs.extend(compare(
        &skiff, &image_ref, &bundle, &etc, &root_user, true, 2,
    ));
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
}
