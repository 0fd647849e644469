//! `skiff exec` into a running container: it sees the container's processes and files,
//! runs as `-u`, with the container's environment, cgroups, capabilities, seccomp and
//! no_new_privs; its exit status comes back; `-t` gives a terminal; `-d` leaves the
//! process inside the container (gone with it); a stopped container is refused.

mod common;

use common::{code, stderr_text as err, stdout_text as text, Rootfs};
use std::process::{Command, Stdio};

/// `skiff exec <args>` (flags, container, command), asserting it exits 0; its stdout.
fn exec_ok(r: &Rootfs, args: &[&str]) -> String {
    let mut all = vec!["exec"];
    all.extend_from_slice(args);
    let out = r.skiff_at_root(&all);
    assert_eq!(code(&out), 0, "exec {args:?}: {}", err(&out));
    text(&out)
}

/// Starts a detached container `name` running `script` after the flags `flags`, and
/// waits until /ready exists in it.
fn start(r: &Rootfs, name: &str, flags: &[&str], script: &str) {
    let mut args = vec!["-d", "--name", name];
    args.extend_from_slice(flags);
    let full = format!("{script}; touch /ready; while :; do sleep 0.05; done");
    args.extend_from_slice(&["sh", "-c", &full]);
    let out = r.skiff(&args);
    assert_eq!(code(&out), 0, "{}", err(&out));
    for _ in 0..500 {
        if code(&r.skiff_at_root(&["exec", name, "test", "-e", "/ready"])) == 0 {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("container {name} never got ready");
}

/// The host pid of container `name`'s PID 1, from its state file.
fn pid1_of(r: &Rootfs, name: &str) -> i32 {
    for entry in std::fs::read_dir(r.state.join("containers")).unwrap() {
        let path = entry.unwrap().path().join("state.json");
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        if v["name"] == name {
            return v["pid1"]["pid"].as_i64().unwrap() as i32;
        }
    }
    panic!("no container {name}");
}

fn ns_of(pid: i32, ns: &str) -> std::path::PathBuf {
    std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap()
}

#[test]
fn exec_sees_the_containers_processes_files_and_settings() {
    let r = Rootfs::new();
    start(
        &r,
        "box",
        &[
            "-e",
            "FOO=bar",
            "--cap-drop",
            "CHOWN",
            "--security-opt",
            "no-new-privileges",
            "--pids-limit",
            "50",
        ],
        "echo written > /note",
    );

    // Files the container wrote, and its processes only: PID 1 is its shell.
    assert_eq!(exec_ok(&r, &["box", "cat", "/note"]), "written\n");
    let ps = exec_ok(&r, &["box", "ps", "-o", "pid,args"]);
    let pid1_line = ps
        .lines()
        .find(|l| l.trim_start().starts_with("1 "))
        .unwrap();
    assert!(pid1_line.contains("touch /ready"), "{ps}");
    assert!(
        ps.lines().count() < 8,
        "only the container's processes: {ps}"
    );

    // The container's environment plus -e; -u and -w.
    assert_eq!(exec_ok(&r, &["box", "sh", "-c", "echo $FOO"]), "bar\n");
    assert_eq!(
        exec_ok(
            &r,
            &[
                "-e",
                "FOO=baz",
                "-e",
                "N=1",
                "box",
                "sh",
                "-c",
                "echo $FOO$N"
            ]
        ),
        "baz1\n"
    );
    assert_eq!(exec_ok(&r, &["box", "id", "-u"]), "0\n");
    assert_eq!(exec_ok(&r, &["-u", "alice", "box", "id", "-u"]), "1000\n");
    assert_eq!(
        exec_ok(&r, &["-u", "alice", "box", "sh", "-c", "echo $HOME"]),
        "/home/alice\n"
    );
    assert!(exec_ok(&r, &["-u", "1234:10", "box", "id"]).starts_with("uid=1234 gid=10(wheel)"));
    assert_eq!(exec_ok(&r, &["-w", "/etc", "box", "pwd"]), "/etc\n");
    let out = r.skiff_at_root(&["exec", "-w", "/nowhere", "box", "pwd"]);
    assert_eq!(
        code(&out),
        126,
        "docker's status for a missing working directory"
    );

    // Same cgroups, capabilities, seccomp mode and no_new_privs as PID 1.
    let same = |file: &str, filter: &str| {
        let script = format!("grep -E '{filter}' {file}");
        let mine = exec_ok(&r, &["box", "sh", "-c", &script.replace("{}", "self")]);
        let init = exec_ok(&r, &["box", "sh", "-c", &script.replace("{}", "1")]);
        assert_eq!(mine, init, "{file}");
        mine
    };
    let cgroup = same("/proc/{}/cgroup", ".");
    assert!(
        !cgroup.contains(".."),
        "inside the container's cgroups: {cgroup}"
    );
    same("/proc/{}/status", "^Cap(Eff|Prm|Bnd)");
    let status = same("/proc/{}/status", "^(Seccomp|NoNewPrivs):");
    assert!(status.contains("Seccomp:\t2"), "{status}");
    assert!(status.contains("NoNewPrivs:\t1"), "{status}");

    // Exit statuses: the command's, 128+N for a signal, 127 when not found.
    assert_eq!(
        code(&r.skiff_at_root(&["exec", "box", "sh", "-c", "exit 7"])),
        7
    );
    assert_eq!(
        code(&r.skiff_at_root(&["exec", "box", "sh", "-c", "kill -9 $$"])),
        137
    );
    let missing = r.skiff_at_root(&["exec", "box", "no-such-program"]);
    assert_eq!(code(&missing), 127, "{}", err(&missing));

    // -t: a terminal on stdin and stdout; without it, none.
    let out = r.skiff_at_root(&[
        "exec",
        "-t",
        "box",
        "sh",
        "-c",
        "test -t 0 && test -t 1 && echo tty",
    ]);
    assert_eq!(code(&out), 0, "{}", err(&out));
    assert_eq!(text(&out).trim_end(), "tty");
    let out = r.skiff_at_root(&["exec", "box", "sh", "-c", "test -t 0 || echo none"]);
    assert_eq!(text(&out), "none\n");
    // -i passes stdin through.
    let mut child = Command::new(common::skiff_bin())
        .arg("--root")
        .arg(&r.state)
        .args(["exec", "-i", "box", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"piped\n").unwrap();
    assert_eq!(text(&child.wait_with_output().unwrap()), "piped\n");

    assert_eq!(code(&r.skiff_at_root(&["stop", "-t", "0", "box"])), 0);
    r.assert_no_mounts();
}

#[test]
fn a_detached_exec_stays_inside_the_container_and_ends_with_it() {
    let r = Rootfs::new();
    start(&r, "host", &[], "true");
    let pid1 = pid1_of(&r, "host");
    let out = r.skiff_at_root(&["exec", "-d", "host", "sleep", "1234"]);
    assert_eq!(code(&out), 0, "{}", err(&out));
    assert_eq!(text(&out), "");

    // The sleep runs in PID 1's namespaces and cgroups, and nowhere else.
    let mut found = Vec::new();
    for _ in 0..200 {
        found = std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .filter(|p| {
                std::fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| c == b"sleep\x001234\x00")
            })
            .collect();
        if !found.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(found.len(), 1, "one sleep 1234: {found:?}");
    let sleep = found[0];
    for ns in ["pid", "mnt", "net", "uts", "ipc", "cgroup"] {
        assert_eq!(ns_of(sleep, ns), ns_of(pid1, ns), "{ns} namespace");
    }
    assert_eq!(
        std::fs::read_to_string(format!("/proc/{sleep}/cgroup")).unwrap(),
        std::fs::read_to_string(format!("/proc/{pid1}/cgroup")).unwrap()
    );
    assert!(exec_ok(&r, &["host", "ps", "-o", "args"]).contains("sleep 1234"));

    // Stopping the container ends it too.
    assert_eq!(code(&r.skiff_at_root(&["stop", "-t", "0", "host"])), 0);
    for _ in 0..200 {
        if !std::path::Path::new(&format!("/proc/{sleep}/cmdline")).exists()
            || std::fs::read(format!("/proc/{sleep}/cmdline")).is_ok_and(|c| c.is_empty())
        {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let left = std::fs::read(format!("/proc/{sleep}/cmdline")).unwrap_or_default();
    assert!(left.is_empty(), "the exec'd sleep outlived its container");
}

#[test]
fn exec_into_a_stopped_or_unknown_container_fails_clearly() {
    let r = Rootfs::new();
    let out = r.skiff(&["--name", "done", "true"]);
    assert_eq!(code(&out), 0);
    let out = r.skiff_at_root(&["exec", "done", "true"]);
    assert_eq!(code(&out), 125);
    assert!(
        err(&out).contains("container done is not running"),
        "{}",
        err(&out)
    );
    let out = r.skiff_at_root(&["exec", "nobody", "true"]);
    assert_eq!(code(&out), 125);
    assert!(err(&out).contains("no such container"), "{}", err(&out));
    let out = r.skiff_at_root(&["exec", "done"]);
    assert_eq!(code(&out), 125);
}
