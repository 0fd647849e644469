//! The keeper: a minimal process that holds every daemon mount's `/dev/fuse`
//! descriptor, so a mount outlives the daemon that serves it (a `SIGTERM` for an
//! upgrade, a crash, a `SIGKILL`). It never reads the descriptors, so requests made
//! while no daemon runs wait in the kernel until the next daemon takes them back.
//!
//! The daemon starts it (`skiff daemon keeper`, detached in its own session) when
//! none answers on `<root>/daemon-keeper.sock`, and talks to it over that socket
//! (`SOCK_SEQPACKET`, one JSON [`KeeperMsg`] per packet, descriptors attached with
//! `SCM_RIGHTS`): it hands over each new mount's descriptor ([`KeeperMsg::Put`]),
//! records passthrough backing files ([`KeeperMsg::Backing`]), drops a descriptor
//! once unmounted, and at start takes everything back ([`KeeperMsg::Take`]). The
//! keeper serves one daemon connection at a time, and exits when told
//! ([`KeeperMsg::Exit`], by `skiff daemon stop`) or when its daemon went away and it
//! holds nothing.

use anyhow::Context;
use nix::sys::socket::{
    accept, bind, connect, listen, recvmsg, sendmsg, socket, AddressFamily, Backlog,
    ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, UnixAddr,
};
use serde::{Deserialize, Serialize};
use skiff_fs::Backing;
use std::collections::BTreeMap;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// One packet between the daemon and the keeper.
#[derive(Serialize, Deserialize, Debug)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum KeeperMsg {
    /// Daemon → keeper: hold the attached descriptor as mount `mount`'s.
    Put {
        /// The mount id.
        mount: String,
    },
    /// Daemon → keeper: close mount `mount`'s descriptor (it is unmounted).
    Drop {
        /// The mount id.
        mount: String,
    },
    /// Daemon → keeper: inode `ino` of mount `mount` has backing file `backing`
    /// now (`None`: no longer).
    Backing {
        /// The mount id.
        mount: String,
        /// The inode.
        ino: u64,
        /// Its backing file.
        backing: Option<Backing>,
    },
    /// Daemon → keeper: send everything held.
    Take,
    /// Keeper → daemon: mount `mount`'s descriptor (attached) and backing files.
    Held {
        /// The mount id.
        mount: String,
        /// The backing files registered on its connection.
        backings: Vec<Backing>,
    },
    /// Keeper → daemon: that was all.
    End,
    /// Daemon → keeper: close everything and exit.
    Exit,
}

/// The keeper's socket for the daemon of `root`.
pub fn socket_path(root: &Path) -> PathBuf {
    root.join("daemon-keeper.sock")
}

fn send(
    fd: BorrowedFd<'_>,
    msg: &KeeperMsg,
    attach: Option<BorrowedFd<'_>>,
) -> std::io::Result<()> {
    let body = serde_json::to_vec(msg).map_err(std::io::Error::other)?;
    let fds: Vec<RawFd> = attach.iter().map(|f| f.as_raw_fd()).collect();
    let cmsg = [ControlMessage::ScmRights(&fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsg };
    sendmsg::<()>(
        fd.as_raw_fd(),
        &[IoSlice::new(&body)],
        cmsgs,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )?;
    Ok(())
}

/// Receives one packet (`None` at end of connection) and the descriptor attached.
fn recv(fd: BorrowedFd<'_>) -> std::io::Result<Option<(KeeperMsg, Option<OwnedFd>)>> {
    let mut buf = vec![0u8; 1 << 16];
    let mut cmsg = nix::cmsg_space!([RawFd; 4]);
    let (len, fds) = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(
            fd.as_raw_fd(),
            &mut iov,
            Some(cmsg.as_mut_slice()),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )?;
        let mut fds = Vec::new();
        for c in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(r) = c {
                // SAFETY: descriptors just received are ours alone.
                fds.extend(r.into_iter().map(|f| unsafe { OwnedFd::from_raw_fd(f) }));
            }
        }
        (msg.bytes, fds)
    };
    if len == 0 {
        return Ok(None);
    }
    let msg = serde_json::from_slice(&buf[..len])
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    Ok(Some((msg, fds.into_iter().next())))
}

fn seqpacket() -> std::io::Result<OwnedFd> {
    Ok(socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?)
}

/// What the keeper holds.
#[derive(Default)]
struct Held {
    fds: BTreeMap<String, OwnedFd>,
    backings: BTreeMap<String, BTreeMap<u64, Backing>>,
}

impl Held {
    /// Lets go of the connections whose filesystem is gone: the kernel aborts a FUSE
    /// connection when its last mount goes, and its device then polls as an error
    /// (a live one polls readable at most, with requests waiting for a daemon).
    fn drop_unmounted(&mut self) {
        let gone: Vec<String> = self
            .fds
            .iter()
            .filter(|(_, fd)| connection_aborted(fd.as_fd()))
            .map(|(mount, _)| mount.clone())
            .collect();
        for mount in gone {
            tracing::info!(mount, "its filesystem was unmounted: letting go of it");
            self.fds.remove(&mount);
            self.backings.remove(&mount);
        }
    }
}

/// Whether the FUSE connection behind `dev` (a /dev/fuse descriptor) was aborted.
fn connection_aborted(dev: BorrowedFd<'_>) -> bool {
    let mut pfd = libc::pollfd {
        fd: dev.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll(2) on one pollfd we own, without waiting.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    n > 0 && pfd.revents & (libc::POLLERR | libc::POLLNVAL) != 0
}

/// Runs the keeper on `socket_file` (the hidden `skiff daemon keeper`).
pub fn run(socket_file: &Path) -> anyhow::Result<u8> {
    let listener = seqpacket()?;
    let _ = std::fs::remove_file(socket_file);
    let addr = UnixAddr::new(socket_file)?;
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = bind(listener.as_raw_fd(), &addr);
    nix::sys::stat::umask(old);
    bound.with_context(|| format!("binding {}", socket_file.display()))?;
    listen(&listener, Backlog::new(8)?)?;
    let pid_file = socket_file.with_extension("pid");
    std::fs::write(&pid_file, format!("{}\n", std::process::id()))?;
    tracing::info!(socket = %socket_file.display(), "keeper started");
    let mut held = Held::default();
    loop {
        // Holding nothing, the keeper waits only so long for a daemon: one that started
        // it connects at once, and a daemon killed before it did (or a root deleted
        // under it) must not leave the keeper waiting forever. Holding connections, it
        // looks as often whether their filesystems were unmounted meanwhile (by an
        // administrator, or a test cleaning up, while no daemon ran).
        held.drop_unmounted();
        if !readable_within(listener.as_fd(), idle_exit()) {
            if held.fds.is_empty() {
                tracing::info!("no daemon came and nothing is held: exiting");
                break;
            }
            continue;
        }
        let conn = match accept(listener.as_raw_fd()) {
            // SAFETY: a descriptor accept just returned.
            Ok(fd) => unsafe { OwnedFd::from_raw_fd(fd) },
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e).context("accepting a daemon"),
        };
        if serve_daemon(conn.as_fd(), &mut held) {
            break;
        }
        if held.fds.is_empty() {
            tracing::info!("the daemon left and nothing is held: exiting");
            break;
        }
    }
    let _ = std::fs::remove_file(socket_file);
    let _ = std::fs::remove_file(&pid_file);
    Ok(0)
}

/// How long a keeper holding nothing waits for a daemon to connect before it exits:
/// 60 s, or `SKIFF_KEEPER_IDLE_MS` (tests shorten it).
fn idle_exit() -> std::time::Duration {
    std::env::var("SKIFF_KEEPER_IDLE_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(std::time::Duration::from_millis)
        .unwrap_or(std::time::Duration::from_secs(60))
}

/// Whether `fd` becomes readable (a connection to accept) within `wait`.
fn readable_within(fd: BorrowedFd<'_>, wait: std::time::Duration) -> bool {
    let deadline = std::time::Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll(2) on one pollfd we own, for at most `left`.
        let n = unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(i32::MAX as u128) as i32) };
        match n {
            n if n > 0 => return true,
            0 => return false,
            _ if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted => {}
            _ => return true,
        }
    }
}

/// Serves one daemon until it disconnects; returns whether it said to exit.
fn serve_daemon(conn: BorrowedFd<'_>, held: &mut Held) -> bool {
    loop {
        let (msg, fd) = match recv(conn) {
            Ok(Some(m)) => m,
            Ok(None) => return false,
            Err(e) => {
                tracing::warn!("reading from the daemon: {e}");
                return false;
            }
        };
        match msg {
            KeeperMsg::Put { mount } => match fd {
                Some(fd) => {
                    held.fds.insert(mount.clone(), fd);
                    held.backings.remove(&mount);
                }
                None => tracing::warn!(mount, "a put without a descriptor"),
            },
            KeeperMsg::Drop { mount } => {
                held.fds.remove(&mount);
                held.backings.remove(&mount);
            }
            KeeperMsg::Backing {
                mount,
                ino,
                backing,
            } => {
                let b = held.backings.entry(mount).or_default();
                match backing {
                    Some(x) => b.insert(ino, x),
                    None => b.remove(&ino),
                };
            }
            KeeperMsg::Take => {
                for (mount, fd) in &held.fds {
                    let backings = held
                        .backings
                        .get(mount)
                        .map(|b| b.values().copied().collect())
                        .unwrap_or_default();
                    let m = KeeperMsg::Held {
                        mount: mount.clone(),
                        backings,
                    };
                    if let Err(e) = send(conn, &m, Some(fd.as_fd())) {
                        tracing::warn!("handing back {mount}: {e}");
                        return false;
                    }
                }
                if send(conn, &KeeperMsg::End, None).is_err() {
                    return false;
                }
            }
            KeeperMsg::Exit => return true,
            KeeperMsg::Held { .. } | KeeperMsg::End => {}
        }
    }
}

/// The daemon's connection to its keeper.
pub struct Keeper {
    conn: Mutex<OwnedFd>,
    /// Set once told to exit (`skiff daemon stop` tells it before the daemon ends).
    told_to_exit: std::sync::atomic::AtomicBool,
}

impl Keeper {
    /// Connects to the keeper of `root`, starting one (with this same executable)
    /// if none answers.
    pub fn connect_or_start(global: &crate::cmd::Global) -> anyhow::Result<Keeper> {
        let path = socket_path(&global.root);
        if let Ok(k) = Keeper::connect(&path) {
            return Ok(k);
        }
        start(global, &path)?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match Keeper::connect(&path) {
                Ok(k) => return Ok(k),
                Err(e) if std::time::Instant::now() > deadline => {
                    return Err(e).with_context(|| {
                        format!("the keeper does not answer on {}", path.display())
                    })
                }
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
            }
        }
    }

    /// Connects to the keeper on `path`, if one answers.
    pub fn connect(path: &Path) -> std::io::Result<Keeper> {
        let fd = seqpacket()?;
        connect(fd.as_raw_fd(), &UnixAddr::new(path)?)?;
        Ok(Keeper {
            conn: Mutex::new(fd),
            told_to_exit: Default::default(),
        })
    }

    fn send(&self, msg: &KeeperMsg, attach: Option<BorrowedFd<'_>>) -> std::io::Result<()> {
        let conn = super::state::lock(&self.conn);
        send(conn.as_fd(), msg, attach)
    }

    /// Everything the keeper holds: per mount, its descriptor and backing files.
    pub fn take(&self) -> anyhow::Result<Vec<(String, OwnedFd, Vec<Backing>)>> {
        let conn = super::state::lock(&self.conn);
        send(conn.as_fd(), &KeeperMsg::Take, None).context("asking the keeper")?;
        let mut out = Vec::new();
        loop {
            match recv(conn.as_fd()).context("reading from the keeper")? {
                Some((KeeperMsg::Held { mount, backings }, Some(fd))) => {
                    out.push((mount, fd, backings))
                }
                Some((KeeperMsg::End, _)) => return Ok(out),
                Some((m, _)) => anyhow::bail!("unexpected message from the keeper: {m:?}"),
                None => anyhow::bail!("the keeper closed the connection"),
            }
        }
    }

    /// Hands mount `mount`'s connection to the keeper.
    pub fn put(&self, mount: &str, fuse: BorrowedFd<'_>) -> std::io::Result<()> {
        self.send(
            &KeeperMsg::Put {
                mount: mount.to_string(),
            },
            Some(fuse),
        )
    }

    /// Tells the keeper mount `mount` is gone.
    pub fn forget(&self, mount: &str) {
        let msg = KeeperMsg::Drop {
            mount: mount.to_string(),
        };
        if let Err(e) = self.send(&msg, None) {
            tracing::warn!(mount, "telling the keeper: {e}");
        }
    }

    /// Records a backing file change of mount `mount`.
    pub fn backing(&self, mount: &str, ino: u64, backing: Option<Backing>) {
        let msg = KeeperMsg::Backing {
            mount: mount.to_string(),
            ino,
            backing,
        };
        if let Err(e) = self.send(&msg, None) {
            tracing::warn!(mount, "telling the keeper: {e}");
        }
    }

    /// Tells the keeper to close everything and exit.
    pub fn exit(&self) {
        if self
            .told_to_exit
            .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            return;
        }
        if let Err(e) = self.send(&KeeperMsg::Exit, None) {
            tracing::warn!("telling the keeper to exit: {e}");
        }
    }
}

/// Starts a keeper on `path`: this executable, in a session of its own (no
/// terminal's or service's signals reach it), cwd `/`, stdin and stdout null, its
/// log appended to `<root>/daemon-keeper.log`.
fn start(global: &crate::cmd::Global, path: &Path) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().context("finding the skiff executable")?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(global.root.join("daemon-keeper.log"))
        .context("opening the keeper's log")?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("--root")
        .arg(&global.root)
        .args(["daemon", "keeper", "--keeper-socket"])
        .arg(path)
        .current_dir("/")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .env_remove("SKIFF_NO_DAEMON");
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            // The daemon blocks SIGINT/SIGTERM for its signal thread; the keeper
            // must die of them (it is told to exit, or killed by whoever cleans up).
            nix::sys::signal::SigSet::all()
                .thread_unblock()
                .map_err(std::io::Error::from)?;
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("starting the keeper")?;
    tracing::info!(pid = child.id(), "keeper started");
    // Reaped here if it exits while we run (else by whoever adopts it).
    let _ = std::thread::Builder::new()
        .name("skiff-keeper-reaper".into())
        .spawn(move || child.wait());
    Ok(())
}
