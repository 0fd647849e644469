//! A private containerd for tests, with `skiff daemon` as its snapshotter: its own
//! config, root, state directory and sockets under a test directory (never the
//! system's `/run/containerd` socket or `/var/lib/containerd`), and [`SkiffDaemon`],
//! a `skiff daemon` on its own root. Both are killed on drop, with every process
//! containerd started (shims, containers) and every mount left below their
//! directories.
//!
//! containerd's runc shim still puts its small control socket under
//! `/run/containerd/s/` (a path containerd 1.6 fixes), named by a hash of our own
//! socket's address, so it never meets the system containerd's.

use crate::cli::Skiff;
use crate::guard::{descendants_of, unmount_all_under, KillOnDrop};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The containerd namespace the tests use.
pub const NAMESPACE: &str = "skiff-test";

fn wait_for_socket(socket: &Path, what: &str, log: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while UnixStream::connect(socket).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} does not answer on {}:\n{}",
            socket.display(),
            log()
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// A `skiff daemon` serving the snapshotter on `<root>/snapshotter.sock`; killed on
/// drop with its keeper, and every mount below its root detached.
pub struct SkiffDaemon {
    child: Option<KillOnDrop>,
    /// The skiff used to start it.
    pub skiff: Skiff,
}

impl SkiffDaemon {
    /// Starts `skiff -v daemon` on `skiff`'s root (log in `<root>/daemon.log`) and
    /// waits for both sockets.
    pub fn start(skiff: Skiff) -> SkiffDaemon {
        let mut d = SkiffDaemon { child: None, skiff };
        d.restart();
        d
    }

    /// Starts the daemon again after [`SkiffDaemon::kill`].
    pub fn restart(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.skiff.root.join("daemon.log"))
            .unwrap();
        let mut cmd = self.skiff.command();
        cmd.args(["-v", "daemon"]).stdout(Stdio::null()).stderr(log);
        self.child = Some(KillOnDrop::spawn(&mut cmd));
        wait_for_socket(&self.skiff.root.join("daemon.sock"), "skiff daemon", || {
            self.log()
        });
        wait_for_socket(&self.socket(), "the skiff snapshotter", || self.log());
    }

    /// SIGKILLs the daemon, as a crash (its mounts wait, held by its keeper, for
    /// the next daemon).
    pub fn kill(&mut self) {
        self.child = None;
    }

    /// SIGTERMs the daemon, as an upgrade does, and waits for it to exit (its
    /// mounts stay for the next daemon).
    pub fn terminate(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: signalling our own child, not yet reaped.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while child.try_wait().unwrap().is_none() {
            assert!(
                Instant::now() < deadline,
                "the daemon ignores SIGTERM:\n{}",
                tail(&self.log(), 30)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The snapshotter socket.
    pub fn socket(&self) -> PathBuf {
        self.skiff.root.join("snapshotter.sock")
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.skiff.root.join("daemon.log")).unwrap_or_default()
    }
}

impl Drop for SkiffDaemon {
    fn drop(&mut self) {
        self.child = None;
        if let Some(pid) = keeper_pid(&self.skiff.root) {
            // SAFETY: a pid whose command line was just checked to be a keeper.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        unmount_all_under(&self.skiff.root);
    }
}

/// The pid of the keeper of the daemon of `root` (which holds the daemon's mounts
/// across restarts), if its pid file names a live `skiff daemon keeper`.
pub fn keeper_pid(root: &Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(root.join("daemon-keeper.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let zombie = stat
        .rsplit_once(") ")
        .is_some_and(|(_, r)| r.starts_with('Z'));
    (String::from_utf8_lossy(&cmdline).contains("keeper") && !zombie).then_some(pid)
}

/// Extra configuration for containerd's CRI plugin (left disabled without it).
pub struct CriConfig {
    /// The sandbox ("pause") image reference.
    pub sandbox_image: String,
    /// Registries reached over plain HTTP (`host:port`).
    pub plain_http: Vec<String>,
}

/// A private containerd; killed on drop with its shims and containers, and every
/// mount below its directory detached.
pub struct Containerd {
    child: Option<KillOnDrop>,
    dir: PathBuf,
    socket: PathBuf,
}

impl Containerd {
    /// Starts containerd under `dir` (created) with the proxy snapshotter `skiff` on
    /// `snapshotter`, CRI set up as `cri` says (disabled when `None`).
    pub fn start(dir: &Path, snapshotter: &Path, cri: Option<&CriConfig>) -> Containerd {
        std::fs::create_dir_all(dir).unwrap();
        let socket = dir.join("containerd.sock");
        let mut config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
{disabled}
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{dir}/opt"
[proxy_plugins.skiff]
  type = "snapshot"
  address = "{snap}"
"#,
            root = dir.join("root").display(),
            state = dir.join("state").display(),
            sock = socket.display(),
            dir = dir.display(),
            snap = snapshotter.display(),
            disabled = if cri.is_some() {
                ""
            } else {
                r#"disabled_plugins = ["io.containerd.grpc.v1.cri"]"#
            },
        );
        if let Some(cri) = cri {
            let certs = dir.join("certs.d");
            for host in &cri.plain_http {
                let d = certs.join(host);
                std::fs::create_dir_all(&d).unwrap();
                std::fs::write(
                    d.join("hosts.toml"),
                    format!("server = \"http://{host}\"\n[host.\"http://{host}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"),
                )
                .unwrap();
            }
            config.push_str(&format!(
                r#"[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox}"
  # CRI gives the sandbox oom_score_adj -998, which needs CAP_SYS_RESOURCE; test
  # machines (containers themselves) may lack it. Clamped to containerd's own.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "skiff"
    disable_snapshot_annotations = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{dir}/cni/bin"
    conf_dir = "{dir}/cni/conf"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{certs}"
"#,
                sandbox = cri.sandbox_image,
                dir = dir.display(),
                certs = certs.display(),
            ));
        }
        std::fs::write(dir.join("config.toml"), config).unwrap();
        let log = std::fs::File::create(dir.join("containerd.log")).unwrap();
        let mut cmd = Command::new("containerd");
        cmd.arg("--config")
            .arg(dir.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let c = Containerd {
            child: Some(KillOnDrop::spawn(&mut cmd)),
            dir: dir.to_path_buf(),
            socket,
        };
        wait_for_socket(&c.socket, "containerd", || c.log());
        c
    }

    /// containerd's gRPC socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// containerd's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    /// `ctr` on this containerd, in [`NAMESPACE`].
    pub fn ctr(&self) -> Command {
        self.client("ctr")
    }

    /// `ctr-remote` (stargz-snapshotter's ctr) on this containerd, in [`NAMESPACE`].
    pub fn ctr_remote(&self) -> Command {
        self.client("ctr-remote")
    }

    fn client(&self, bin: &str) -> Command {
        let mut c = Command::new(bin);
        c.arg("-a")
            .arg(&self.socket)
            .arg("-n")
            .arg(NAMESPACE)
            .stdin(Stdio::null());
        c
    }

    /// Runs `cmd`, asserting it succeeds; returns its stdout.
    pub fn ok(&self, cmd: &mut Command) -> String {
        let out: Output = cmd
            .output()
            .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
        assert!(
            out.status.success(),
            "{cmd:?}: {}\ncontainerd log:\n{}",
            crate::cli::describe(&out),
            tail(&self.log(), 40)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Processes started for this containerd: its shims (whose command line names
    /// our socket) and everything below them.
    fn shims(&self) -> Vec<i32> {
        let sock = self.socket.to_string_lossy().into_owned();
        let mut pids = Vec::new();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            if args.contains(&sock.as_bytes()) {
                pids.push(pid);
            }
        }
        pids
    }
}

/// The last `n` lines of `s`.
pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let shims = self.shims();
        let mut all: Vec<i32> = Vec::new();
        for s in &shims {
            all.extend(descendants_of(*s));
            all.push(*s);
        }
        for p in all {
            // SAFETY: kill has no memory-safety preconditions; these pids were just
            // found as children of our own shims.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
        self.child = None;
        unmount_all_under(&self.dir);
    }
}
