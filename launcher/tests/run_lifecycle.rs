//! Container lifecycle: -d with ps/logs/stop/rm, --name, --rm vs kept state, and a
//! skiff killed with SIGKILL cleaned up by the next command.

mod common;

use common::{code, Rootfs};
use std::process::{Command, Output};

fn skiff(r: &Rootfs, args: &[&str]) -> Output {
    Command::new(common::skiff_bin())
        .env("SKIFF_NETWORK", common::TEST_NETWORK)
        .arg("--root")
        .arg(&r.state)
        .args(args)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn ps_line(r: &Rootfs, name: &str) -> Option<String> {
    text(&skiff(r, &["ps", "-a"]))
        .lines()
        .find(|l| l.trim_end().ends_with(name))
        .map(str::to_string)
}

#[test]
fn detached_ps_logs_stop_rm() {
    let r = Rootfs::new();
    let out = r.skiff(&[
        "-d",
        "--name",
        "web",
        "sh",
        "-c",
        "trap 'echo bye; exit 0' TERM; echo hello; while :; do sleep 0.05; done",
    ]);
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    let id = text(&out).trim().to_string();
    assert_eq!(id.len(), 64, "prints the id: {id:?}");

    let running = text(&skiff(&r, &["ps"]));
    assert!(
        running.lines().any(|l| l.starts_with(&id[..12])
            && l.contains(" Up ")
            && l.trim_end().ends_with("web")),
        "{running}"
    );
    // The name is taken while it exists.
    let dup = r.skiff(&["-d", "--name", "web", "true"]);
    assert_eq!(code(&dup), 125);
    assert!(String::from_utf8_lossy(&dup.stderr).contains("already in use"));

    // logs shows the output so far.
    let mut logs = String::new();
    for _ in 0..200 {
        logs = text(&skiff(&r, &["logs", "web"]));
        if logs.contains("hello") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(logs, "hello\n");

    // stop: SIGTERM reaches PID 1's trap, which exits 0.
    let out = skiff(&r, &["stop", &id[..8]]);
    assert_eq!(code(&out), 0);
    assert!(ps_line(&r, "web").unwrap().contains("Exited (0)"));
    assert_eq!(text(&skiff(&r, &["logs", "web"])), "hello\nbye\n");
    assert!(
        !text(&skiff(&r, &["ps"])).contains("web"),
        "ps without -a hides it"
    );

    assert_eq!(code(&skiff(&r, &["rm", "web"])), 0);
    assert!(ps_line(&r, "web").is_none());
    assert!(!r.state.join("containers").join(&id).exists());
    r.assert_no_mounts();
}

#[test]
fn logs_follow_streams_until_the_container_exits() {
    use std::io::{BufRead, BufReader, Read};
    let r = Rootfs::new();
    let out = r.skiff(&[
        "-d",
        "--name",
        "chatty",
        "sh",
        "-c",
        "trap 'echo two; exit 3' TERM; echo one; while :; do sleep 0.05; done",
    ]);
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    let mut follow = common::KillOnDrop::spawn(
        Command::new(common::skiff_bin())
            .arg("--root")
            .arg(&r.state)
            .args(["logs", "-f", "chatty"])
            .stdout(std::process::Stdio::piped()),
    );
    let mut lines = BufReader::new(follow.stdout.take().unwrap());
    // The output so far arrives while the container (and so `logs -f`) runs on.
    let mut first = String::new();
    lines.read_line(&mut first).unwrap();
    assert_eq!(first, "one\n");
    assert!(
        follow.try_wait().unwrap().is_none(),
        "logs -f ended while the container runs"
    );
    // Output written later follows, and `logs -f` ends by itself when the container
    // exits.
    assert_eq!(code(&skiff(&r, &["stop", "chatty"])), 0);
    let mut rest = String::new();
    lines.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "two\n");
    let status = follow.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(ps_line(&r, "chatty").unwrap().contains("Exited (3)"));
    assert_eq!(code(&skiff(&r, &["rm", "chatty"])), 0);
    r.assert_no_mounts();
}

#[test]
fn stop_kills_after_grace_and_rm_force() {
    let r = Rootfs::new();
    // sleep as PID 1 ignores SIGTERM: stop must fall back to SIGKILL.
    let out = r.skiff(&["-d", "--name", "stubborn", "sleep", "100"]);
    assert_eq!(code(&out), 0);
    let out = skiff(&r, &["stop", "-t", "0", "stubborn"]);
    assert_eq!(code(&out), 0);
    assert!(ps_line(&r, "stubborn").unwrap().contains("Exited (137)"));

    let out = r.skiff(&["-d", "--name", "busy", "sleep", "100"]);
    assert_eq!(code(&out), 0);
    let out = skiff(&r, &["rm", "busy"]);
    assert_eq!(code(&out), 1, "refuses to remove a running container");
    assert_eq!(code(&skiff(&r, &["rm", "-f", "busy", "stubborn"])), 0);
    assert!(text(&skiff(&r, &["ps", "-a", "-q"])).is_empty());
}

#[test]
fn foreground_state_kept_without_rm() {
    let r = Rootfs::new();
    let out = r.skiff(&["--name", "once", "sh", "-c", "exit 4"]);
    assert_eq!(code(&out), 4);
    assert!(ps_line(&r, "once").unwrap().contains("Exited (4)"));
    let out = r.skiff(&["--rm", "--name", "gone", "true"]);
    assert_eq!(code(&out), 0);
    assert!(ps_line(&r, "gone").is_none());
    assert_eq!(code(&skiff(&r, &["rm", "once"])), 0);
}

#[test]
fn sigkilled_skiff_is_cleaned_up_by_next_command() {
    let r = Rootfs::new();
    let out = r.skiff(&[
        "-d",
        "--name",
        "orphan",
        "--pids-limit",
        "50",
        "sleep",
        "100",
    ]);
    assert_eq!(code(&out), 0);
    let id = text(&out).trim().to_string();
    let state: serde_json::Value = serde_json::from_slice(
        &std::fs::read(r.state.join("containers").join(&id).join("state.json")).unwrap(),
    )
    .unwrap();
    let monitor = state["monitor"]["pid"].as_i64().unwrap() as i32;
    let pid1 = state["pid1"]["pid"].as_i64().unwrap() as i32;
    let cgroup = std::fs::read_to_string(format!("/proc/{pid1}/cgroup")).unwrap();
    let pids_cg = cgroup
        .lines()
        .find(|l| l.split(':').nth(1) == Some("pids"))
        .map(|l| format!("/sys/fs/cgroup/pids{}", l.splitn(3, ':').nth(2).unwrap()))
        .unwrap();
    assert!(pids_cg.contains(&format!("skiff-{id}")));

    // SAFETY: killing the monitor skiff we started (found in its state file).
    unsafe { libc::kill(monitor, libc::SIGKILL) };
    for _ in 0..200 {
        if !std::path::Path::new(&format!("/proc/{monitor}/status")).exists()
            || std::fs::read_to_string(format!("/proc/{monitor}/stat"))
                .unwrap_or_default()
                .contains(") Z")
        {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    // The next command notices: PID 1 killed, cgroups gone, state marked exited.
    let line = ps_line(&r, "orphan").unwrap();
    assert!(line.contains("Exited (137)"), "{line}");
    for _ in 0..200 {
        let st = std::fs::read_to_string(format!("/proc/{pid1}/stat")).unwrap_or_default();
        if st.is_empty() || st.contains(") Z") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let st = std::fs::read_to_string(format!("/proc/{pid1}/stat")).unwrap_or_default();
    assert!(
        st.is_empty() || st.contains(") Z"),
        "PID 1 still running: {st}"
    );
    assert!(
        !std::path::Path::new(&pids_cg).exists(),
        "stale cgroup left: {pids_cg}"
    );
    assert_eq!(code(&skiff(&r, &["rm", "orphan"])), 0);
}
