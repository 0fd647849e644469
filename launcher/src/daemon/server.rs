//! The daemon's socket: accept, check the peer, answer one request per connection.

use super::persist::{MountRecord, SharedRole};
use super::protocol::{MountRequest, Request, Response};
use super::run_views;
use super::state::{lock, DaemonState, ImageEntry, MountEntry, Served};
use crate::container::state::ProcessId;
use anyhow::Context;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Who is on the other end of a connection (SO_PEERCRED).
struct Peer {
    pid: i32,
    uid: u32,
}

fn peer_of(stream: &UnixStream) -> std::io::Result<Peer> {
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: a valid socket, an out-buffer of the size given.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(Peer {
        pid: cred.pid,
        uid: cred.uid,
    })
}

/// The listening socket, created with mode 0600 (a stale socket file is replaced,
/// but not a live daemon's).
pub fn listen(socket: &Path) -> anyhow::Result<UnixListener> {
    if UnixStream::connect(socket).is_ok() {
        anyhow::bail!("a daemon already answers on {}", socket.display());
    }
    let _ = std::fs::remove_file(socket);
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // The umask makes the socket 0600 from its creation on, with no window in which
    // another user could connect; nothing else runs yet to be surprised by it.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let listener = UnixListener::bind(socket);
    nix::sys::stat::umask(old);
    listener.with_context(|| format!("listening on {}", socket.display()))
}

/// Serves until a stop request (or `stop` is set from elsewhere, then a connection
/// wakes the accept); then unmounts everything left.
pub fn serve(
    state: Arc<DaemonState>,
    listener: UnixListener,
    socket: PathBuf,
    stop: Arc<AtomicBool>,
) {
    spawn_reaper(state.clone(), stop.clone());
    let me = nix::unistd::geteuid().as_raw();
    for conn in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let stream = match conn {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("accepting a connection: {e}");
                continue;
            }
        };
        let peer = match peer_of(&stream) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!("reading the peer's credentials: {e}");
                continue;
            }
        };
        if peer.uid != 0 && peer.uid != me {
            tracing::warn!(uid = peer.uid, pid = peer.pid, "refused a connection");
            let mut s = stream;
            let _ = reply(
                &mut s,
                &Response::Error {
                    message: format!("uid {} may not use this daemon", peer.uid),
                },
            );
            continue;
        }
        let (state, stop, socket) = (state.clone(), stop.clone(), socket.clone());
        let spawned = std::thread::Builder::new()
            .name("skiff-daemon-conn".into())
            .spawn(move || handle(&state, stream, peer, &stop, &socket));
        if let Err(e) = spawned {
            tracing::warn!("starting a connection thread: {e}");
        }
    }
    let _ = std::fs::remove_file(&socket);
    unmount_all(&state);
}

fn reply(stream: &mut UnixStream, response: &Response) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(response).map_err(std::io::Error::other)?;
    line.push(b'\n');
    stream.write_all(&line)
}

fn handle(
    state: &DaemonState,
    mut stream: UnixStream,
    peer: Peer,
    stop: &AtomicBool,
    socket: &Path,
) {
    let mut line = String::new();
    if let Err(e) = BufReader::new(&stream).read_line(&mut line) {
        tracing::warn!("reading a request: {e}");
        return;
    }
    if line.is_empty() {
        // A client probing whether the daemon answers (connect, close).
        return;
    }
    let response = match serde_json::from_str::<Request>(&line) {
        Ok(req) => {
            tracing::debug!(?req, pid = peer.pid, "request");
            answer(state, req, &peer, stop).unwrap_or_else(|e| Response::Error {
                message: format!("{e:#}"),
            })
        }
        Err(e) => Response::Error {
            message: format!("bad request: {e}"),
        },
    };
    let stopping = matches!(response, Response::Stopping);
    if let Err(e) = reply(&mut stream, &response) {
        tracing::warn!("answering pid {}: {e}", peer.pid);
    }
    if stopping {
        // Wake the accept loop so it sees the flag.
        let _ = UnixStream::connect(socket);
    }
}

fn answer(
    state: &DaemonState,
    req: Request,
    peer: &Peer,
    stop: &AtomicBool,
) -> anyhow::Result<Response> {
    Ok(match req {
        Request::Mount(m) => mount(state, m, peer)?,
        Request::Unmount { mountpoint } => {
            let key = std::fs::canonicalize(&mountpoint).unwrap_or(mountpoint);
            let entry = lock(&state.mounts).remove(&key);
            match entry {
                Some(e) => {
                    unmount(state, &key, e)?;
                    Response::Unmounted
                }
                None => Response::NotMounted,
            }
        }
        Request::Status => Response::Status(Box::new(state.status())),
        Request::Stop { force } => {
            let running = lock(&state.mounts).running_containers();
            if !running.is_empty() && !force {
                anyhow::bail!(
                    "{} container(s) still run on the daemon's mounts ({}); stop them or use --force",
                    running.len(),
                    running.iter().map(|id| &id[..id.len().min(12)]).collect::<Vec<_>>().join(", ")
                );
            }
            stop.store(true, Ordering::SeqCst);
            // Unmounted before the answer, so that `skiff daemon stop` returns once
            // nothing is mounted and the keeper is told to go (a caller that signals
            // the daemon right after must not leave the keeper holding mounts).
            unmount_all(state);
            Response::Stopping
        }
    })
}

/// The options of a FUSE mount of `image` for request `m` (no upper directory):
/// prefetch as asked, and (`first`: the image was just built) its background fetch and
/// local profile, queued once per image.
pub(super) fn mount_options(
    state: &DaemonState,
    image: &ImageEntry,
    m: &MountRequest,
    first: bool,
) -> skiff_fs::MountOptions {
    let mut opts = skiff_fs::MountOptions::new(Vec::new(), state.global.layout().cache());
    opts.fs_name = image.name.clone();
    opts.prefetch = m.prefetch;
    // The background fetch of a shared lower is queued once, by its first mount.
    opts.background_fetch = m.background_fetch && first;
    if m.prefetch && first {
        if let Some(digest) = &image.manifest {
            opts.profile =
                crate::cmd::profile::load_local(&state.global.root, digest).map(Arc::new);
        }
    }
    opts
}

fn mount(state: &DaemonState, m: MountRequest, peer: &Peer) -> anyhow::Result<Response> {
    let mountpoint = std::fs::canonicalize(&m.mountpoint)
        .with_context(|| format!("mount point {}", m.mountpoint.display()))?;
    if lock(&state.mounts).contains(&mountpoint) {
        anyhow::bail!("{} is already mounted by the daemon", mountpoint.display());
    }
    let (image, first) = state.image(&m.source)?;
    if m.shared_view && m.container.is_some() && run_views::key_of(&image).is_some() {
        return mount_on_view(state, m, peer, mountpoint, image, first);
    }
    let mut opts = mount_options(state, &image, &m, first);
    opts.upper = m.upper.clone();
    // Counters for `skiff stats` on `skiff mount`s only: as standalone, a container's
    // view has none (its writer thread costs up to 100 ms at unmount).
    let stats_file = state.global.layout().mount_stats(&mountpoint);
    if m.container.is_none() {
        opts.stats_file = Some(stats_file.clone());
    }
    let id = state.new_mount_id();
    opts.restart = state.restart_config(&id, 0, None);
    let handle = skiff_fs::mount_shared(image.lower.clone(), opts.clone(), &mountpoint)
        .with_context(|| format!("mounting {} on {}", image.name, mountpoint.display()))?;
    let container = m.container.clone().map(|c| (c, ProcessId::of(peer.pid)));
    let record = MountRecord {
        stats_file: opts.stats_file.clone(),
        negotiated: handle.negotiated().unwrap_or_default(),
        ..new_record(&id, &mountpoint, &m, &image, &container)
    };
    if let Err(e) = state.hand_over(&record, &handle) {
        state.forget_mount(&id);
        let _ = handle.unmount();
        return Err(e);
    }
    tracing::info!(id, image = %image.name, mountpoint = %mountpoint.display(), container = ?container, "mounted");
    let config = image.config.clone().map(Box::new);
    let entry = MountEntry {
        id,
        served: Served::Fuse(handle),
        image,
        upper: m.upper,
        container,
        stats_file,
    };
    lock(&state.mounts).insert(mountpoint, entry)?;
    Ok(Response::Mounted { config })
}

/// The record of mount `id` of `image` on `mountpoint`, as request `m` asked, with the
/// image pinned to the manifest digest it was mounted with.
fn new_record(
    id: &str,
    mountpoint: &Path,
    m: &MountRequest,
    image: &ImageEntry,
    container: &Option<(String, Option<ProcessId>)>,
) -> MountRecord {
    MountRecord::new(
        id.to_string(),
        mountpoint.to_path_buf(),
        super::restart::pinned(&m.source, image),
        image.name.clone(),
        m.upper.clone(),
        container.clone(),
    )
}

/// A `skiff run` container's root filesystem on `mountpoint`: an overlayfs with its
/// upper directory over the image's shared read-only view (a read-only bind of the
/// view without an upper directory).
fn mount_on_view(
    state: &DaemonState,
    m: MountRequest,
    peer: &Peer,
    mountpoint: PathBuf,
    image: Arc<ImageEntry>,
    first: bool,
) -> anyhow::Result<Response> {
    let view = state.run_views.acquire(state, &image, &m, first)?;
    let id = state.new_mount_id();
    let work = m.upper.as_deref().map(run_views::work_dir_of);
    let container = m.container.clone().map(|c| (c, ProcessId::of(peer.pid)));
    let record = MountRecord {
        shared: Some(SharedRole::Container {
            view: view.id.clone(),
            work: work.clone(),
        }),
        ..new_record(&id, &mountpoint, &m, &image, &container)
    };
    // Recorded before mounting: a successor finding a record whose mount point is
    // not mounted forgets it, while a mount without a record would be nobody's.
    let mounted = state.save_record(&record).and_then(|()| {
        run_views::mount_container_root(
            &view.path,
            m.upper.as_deref(),
            work.as_deref(),
            &mountpoint,
            m.discard_upper,
        )
    });
    if let Err(e) = mounted {
        state.forget_mount(&id);
        state.run_views.release(state, &view.id);
        return Err(e);
    }
    tracing::info!(id, image = %image.name, mountpoint = %mountpoint.display(), view = %view.path.display(), container = ?container, "mounted");
    let config = image.config.clone().map(Box::new);
    let entry = MountEntry {
        id,
        served: Served::OnView { view: view.id },
        image,
        upper: m.upper,
        container,
        stats_file: state.global.layout().mount_stats(&mountpoint),
    };
    lock(&state.mounts).insert(mountpoint, entry)?;
    Ok(Response::Mounted { config })
}

fn unmount(state: &DaemonState, mountpoint: &Path, entry: MountEntry) -> anyhow::Result<()> {
    let stats_file = entry.stats_file.clone();
    let id = entry.id.clone();
    let result = match entry.served {
        Served::Fuse(handle) => handle
            .unmount()
            .map(|_| ())
            .with_context(|| format!("unmounting {}", mountpoint.display())),
        Served::OnView { view } => {
            let r = run_views::unmount_container_root(mountpoint);
            state.run_views.release(state, &view);
            r
        }
    };
    let _ = std::fs::remove_file(&stats_file);
    // Unmounted (or detached): nothing for a successor to serve.
    state.forget_mount(&id);
    // The mount's inode table (and maybe the last user of an evicted image) is gone.
    skiff_fs::tree::release_free_memory();
    result?;
    tracing::info!(mountpoint = %mountpoint.display(), "unmounted");
    Ok(())
}

/// Unmounts everything and lets the keeper go: the daemon stops for good.
fn unmount_all(state: &DaemonState) {
    let all = lock(&state.mounts).drain();
    for (p, e) in all {
        if let Err(e) = unmount(state, &p, e) {
            tracing::warn!("{e:#}");
        }
    }
    // The containers' roots are gone: nothing stands on the shared views.
    state.run_views.unmount_all(state);
    if let Some(k) = &state.keeper {
        k.exit();
    }
}

/// Every second, unmounts containers' root filesystems whose monitor died (a `skiff
/// run` killed outright), forgets mounts unmounted behind the daemon's back, and
/// unmounts shared views unused for long enough.
fn spawn_reaper(state: Arc<DaemonState>, stop: Arc<AtomicBool>) {
    let _ = std::thread::Builder::new()
        .name("skiff-daemon-reaper".into())
        .spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_secs(1));
                let gone = lock(&state.mounts).take_abandoned();
                for (p, e) in gone {
                    tracing::info!(mountpoint = %p.display(), "mount abandoned");
                    if let Err(e) = unmount(&state, &p, e) {
                        tracing::warn!("{e:#}");
                    }
                }
                state.run_views.evict(&state);
            }
        });
}
