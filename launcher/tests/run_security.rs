//! `skiff run`'s seccomp filter, capabilities and no_new_privs against docker's
//! defaults: namespaces, keyrings, bpf and mounts are refused with EPERM in a default
//! container; `--cap-add`, `--cap-drop`, `--security-opt seccomp=unconfined|FILE` and
//! `--security-opt no-new-privileges` change that as they do in docker; setuid programs
//! work unless no-new-privileges is asked for.

mod common;

use common::{code, Rootfs};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

/// A small static program for what busybox cannot do: raw keyctl and bpf calls, and
/// printing the effective uid (busybox drops setuid privileges itself).
const PROBE_C: &str = r#"
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(int argc, char **argv) {
    long r;
    char attr[128] = {0};
    if (argc < 2) return 2;
    if (!strcmp(argv[1], "euid")) { printf("%d\n", (int)geteuid()); return 0; }
    if (!strcmp(argv[1], "keyctl"))      /* KEYCTL_JOIN_SESSION_KEYRING, anonymous */
        r = syscall(SYS_keyctl, 1, 0);
    else if (!strcmp(argv[1], "bpf"))    /* BPF_OBJ_GET_INFO_BY_FD on fd 0: EINVAL */
        r = syscall(SYS_bpf, 15, attr, sizeof attr);
    else return 2;
    if (r < 0) { printf("%s\n", strerror(errno)); return 1; }
    printf("ok\n");
    return 0;
}
"#;

/// Puts the probe at /bin/probe in the rootfs, setuid root.
fn install_probe(r: &Rootfs) {
    let src = r.dir.path().join("probe.c");
    std::fs::write(&src, PROBE_C).unwrap();
    let bin = r.rootfs.join("bin/probe");
    let out = Command::new("cc")
        .args(["-static", "-O", "-o"])
        .arg(&bin)
        .arg(&src)
        .output()
        .expect("a C compiler (build-essential)");
    assert!(
        out.status.success(),
        "cc: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o4755)).unwrap();
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `sh -c script` in a fresh container with `flags`; returns (stdout+stderr, exit).
fn sh(r: &Rootfs, flags: &[&str], script: &str) -> (String, i32) {
    let mut args = vec!["--rm"];
    args.extend(flags);
    args.extend(["sh", "-c", script]);
    let out = r.skiff(&args);
    let text = format!("{}{}", stdout(&out), String::from_utf8_lossy(&out.stderr));
    (text, code(&out))
}

fn write_profile(dir: &Path, json: &str) -> String {
    let p = dir.join("profile.json");
    std::fs::write(&p, json).unwrap();
    format!("seccomp={}", p.display())
}

#[test]
fn default_container_is_refused_what_docker_refuses() {
    let r = Rootfs::new();
    install_probe(&r);
    let (text, status) = sh(
        &r,
        &[],
        "grep -E '^Seccomp:' /proc/self/status; \
         unshare -U true && echo unshare-U-ok; \
         unshare -r true && echo unshare-r-ok; \
         mkdir -p /mnt && mount -t tmpfs none /mnt && echo mount-ok; \
         echo keyctl: $(probe keyctl); echo bpf: $(probe bpf); echo done",
    );
    assert_eq!(status, 0, "{text}");
    // Mode 2: a filter is loaded.
    assert!(text.contains("Seccomp:\t2"), "{text}");
    for ok in ["unshare-U-ok", "unshare-r-ok", "mount-ok"] {
        assert!(!text.contains(ok), "{ok} in a default container:\n{text}");
    }
    assert!(text.contains("keyctl: Operation not permitted"), "{text}");
    assert!(text.contains("bpf: Operation not permitted"), "{text}");
    assert!(text.contains("done"), "{text}");
    r.assert_no_mounts();
}

#[test]
fn a_cached_filter_refuses_what_the_compiled_one_refuses() {
    let r = Rootfs::new();
    install_probe(&r);
    let cache = r.state.join("seccomp");
    let cached_files = || -> Vec<std::path::PathBuf> {
        std::fs::read_dir(&cache)
            .map(|d| d.map(|e| e.unwrap().path()).collect())
            .unwrap_or_default()
    };
    let refused = |when: &str| {
        let (text, status) = sh(&r, &[], "echo keyctl: $(probe keyctl)");
        assert_eq!(status, 0, "{when}: {text}");
        assert!(
            text.contains("keyctl: Operation not permitted"),
            "{when}: {text}"
        );
    };
    // The first run compiles the filter and keeps it under the root, root's only.
    refused("compiled");
    let files = cached_files();
    assert_eq!(files.len(), 1, "{files:?}");
    let program = std::fs::read(&files[0]).unwrap();
    let mode = std::fs::metadata(&cache).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700);
    // The next run reads it back and refuses the same.
    refused("from the cache");
    assert_eq!(cached_files(), files);
    // A damaged file is not used: the filter is compiled again and the file replaced.
    std::fs::write(&files[0], b"garbage").unwrap();
    refused("after damage");
    assert_eq!(std::fs::read(&files[0]).unwrap(), program);
    r.assert_no_mounts();
}

#[test]
fn capabilities_and_unconfined_open_what_docker_opens() {
    let r = Rootfs::new();
    let mount = "mkdir -p /mnt && mount -t tmpfs none /mnt && echo mount-ok && \
                 unshare -U true && echo unshare-ok";
    // CAP_SYS_ADMIN with docker's profile: the profile allows mount and unshare then.
    let (text, _) = sh(&r, &["--cap-add", "SYS_ADMIN"], mount);
    assert!(
        text.contains("mount-ok") && text.contains("unshare-ok"),
        "{text}"
    );
    // No filter at all.
    let (text, _) = sh(
        &r,
        &[
            "--security-opt",
            "seccomp=unconfined",
            "--cap-add",
            "CAP_SYS_ADMIN",
        ],
        &format!("grep -E '^Seccomp:' /proc/self/status; {mount}"),
    );
    assert!(text.contains("Seccomp:\t0"), "{text}");
    assert!(text.contains("mount-ok"), "{text}");
    // Every capability, docker's filter still on.
    let host_bnd = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("CapBnd"))
        .unwrap()
        .replace("CapBnd", "CapEff");
    let (text, _) = sh(
        &r,
        &["--cap-add", "ALL"],
        &format!("grep -E '^(CapEff|Seccomp):' /proc/self/status; {mount}"),
    );
    assert!(text.contains(&host_bnd), "{text}");
    assert!(text.contains("Seccomp:\t2"), "{text}");
    assert!(text.contains("mount-ok"), "{text}");
    // --privileged: no filter.
    let (text, _) = sh(
        &r,
        &["--privileged"],
        "grep -E '^Seccomp:' /proc/self/status",
    );
    assert!(text.contains("Seccomp:\t0"), "{text}");
    r.assert_no_mounts();
}

#[test]
fn cap_drop_removes_a_default_capability() {
    let r = Rootfs::new();
    let script = "touch /f && chown 1000 /f && echo chown-ok";
    let (text, _) = sh(&r, &[], script);
    assert!(text.contains("chown-ok"), "{text}");
    let (text, _) = sh(&r, &["--cap-drop", "chown"], script);
    assert!(!text.contains("chown-ok"), "{text}");
    assert!(text.contains("Operation not permitted"), "{text}");
    let (text, _) = sh(
        &r,
        &["--cap-drop", "ALL"],
        "grep '^CapEff' /proc/self/status",
    );
    assert!(text.contains("CapEff:\t0000000000000000"), "{text}");
    let out = r.skiff(&["--rm", "--cap-add", "FLY", "true"]);
    assert_eq!(code(&out), 125);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unknown capability: \"CAP_FLY\""),
        "{out:?}"
    );
}

#[test]
fn seccomp_profile_file_in_docker_format() {
    let r = Rootfs::new();
    // Allow everything but mkdir, which fails with EACCES.
    let opt = write_profile(
        r.dir.path(),
        r#"{"defaultAction": "SCMP_ACT_ALLOW",
            "archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86"]},
                        {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": null}],
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}]}"#,
    );
    let (text, _) = sh(
        &r,
        &["--security-opt", &opt],
        "mkdir /d && echo mkdir-ok; unshare -U true && echo unshare-ok",
    );
    assert!(!text.contains("mkdir-ok"), "{text}");
    assert!(text.contains("Permission denied"), "{text}");
    // The file replaces docker's profile.
    assert!(text.contains("unshare-ok"), "{text}");

    let bad = write_profile(r.dir.path(), "{ not json");
    let out = r.skiff(&["--rm", "--security-opt", &bad, "true"]);
    assert_eq!(code(&out), 125);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("decoding seccomp profile failed"),
        "{out:?}"
    );
    let out = r.skiff(&[
        "--rm",
        "--security-opt",
        "seccomp=/nonexistent.json",
        "true",
    ]);
    assert_eq!(code(&out), 125);
    let out = r.skiff(&["--rm", "--security-opt", "apparmor=docker-default", "true"]);
    assert_eq!(code(&out), 125);
}

#[test]
fn setuid_programs_work_unless_no_new_privileges() {
    let r = Rootfs::new();
    install_probe(&r);
    let run = |flags: &[&str]| {
        let mut args = vec!["--rm", "-u", "alice"];
        args.extend(flags);
        args.extend([
            "sh",
            "-c",
            "id -u; probe euid; grep -E '^(NoNewPrivs|Seccomp):' /proc/self/status",
        ]);
        let out = r.skiff(&args);
        assert_eq!(code(&out), 0, "{out:?}");
        stdout(&out)
    };
    // docker: no no_new_privs by default, so a setuid-root program runs as root (with
    // the filter still loaded).
    let text = run(&[]);
    assert_eq!(
        text, "1000\n0\nNoNewPrivs:\t0\nSeccomp:\t2\n",
        "default container"
    );
    let text = run(&["--security-opt", "no-new-privileges"]);
    assert_eq!(
        text, "1000\n1000\nNoNewPrivs:\t1\nSeccomp:\t2\n",
        "no-new-privileges"
    );
    let text = run(&["--security-opt", "no-new-privileges=false"]);
    assert!(text.starts_with("1000\n0\n"), "{text}");
}
