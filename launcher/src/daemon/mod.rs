//! `skiff daemon`: one resident process serving every mount of a root.
//!
//! [`state`] holds what the daemon owns (chunk cache, registry clients, the
//! [`state::ImageCache`] of merged trees, the [`state::MountTable`]), [`server`]
//! answers the socket, [`protocol`] is what goes over it, and [`client`] is the CLI's
//! side.
//!
//! Mounts survive a restart of the daemon (`SIGTERM`, `SIGINT`, or a crash): each
//! mount's `/dev/fuse` connection is held by the [`keeper`] process, what is needed
//! to serve it again is in its [`persist`] record, and the next daemon picks it up
//! ([`restart`]). `skiff daemon stop` is what unmounts everything and ends the
//! keeper.

pub mod client;
pub mod keeper;
pub mod lazy_images;
pub mod persist;
pub mod protocol;
pub mod restart;
pub mod restart_containers;
pub mod run_views;
pub mod server;
pub mod snapshots;
pub mod state;

use crate::cmd::Global;
use anyhow::Context;
use protocol::{Request, Response, StatusReport};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Arguments of `skiff daemon`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Without a subcommand: run the daemon in the foreground.
    #[command(subcommand)]
    pub action: Option<Action>,
    /// The socket to listen on (default: <root>/daemon.sock, where the CLI looks; a
    /// socket elsewhere gets a symbolic link there).
    #[arg(long, global = true, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Bound of the on-disk chunk cache, in MiB.
    #[arg(long, default_value_t = 10240)]
    pub cache_limit_mib: u64,
    /// Bound of the in-memory copy of recently read chunks (part of the daemon's
    /// RSS), in MiB.
    #[arg(long, default_value_t = 256)]
    pub mem_cache_mib: u64,
    /// How many images to keep resolved and merged in memory (and at most how many
    /// unused shared views of `skiff run` images to keep mounted).
    #[arg(long, default_value_t = 16)]
    pub max_images: usize,
    /// How long the read-only view of an image, shared by the containers `skiff run`
    /// starts, stays mounted after its last container ends, in seconds.
    #[arg(long, default_value_t = 300)]
    pub view_idle_secs: u64,
    /// Mirror configuration in containerd's layout, DIR/<registry>/hosts.toml (or
    /// DIR/_default/hosts.toml), for every image the daemon pulls; re-read on change.
    #[arg(
        long,
        value_name = "DIR",
        env = "SKIFF_HOSTS_DIR",
        default_value = "/etc/containerd/certs.d"
    )]
    pub hosts_dir: PathBuf,
    /// Where to serve containerd's snapshotter API (default: <root>/snapshotter.sock).
    #[arg(long, value_name = "PATH")]
    pub snapshotter_address: Option<PathBuf>,
}

/// `skiff daemon` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum Action {
    /// Show mounts, cache use, registries and uptime.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Unmount everything and stop the daemon and its keeper for good (refused
    /// while containers run). A `SIGTERM` instead leaves every mount working for the
    /// next daemon.
    Stop {
        /// Unmount containers' root filesystems too.
        #[arg(long)]
        force: bool,
    },
    /// (Started by the daemon.) Hold the mounts' FUSE connections across restarts.
    #[command(hide = true)]
    Keeper {
        /// The socket to listen on.
        #[arg(long, value_name = "PATH")]
        keeper_socket: PathBuf,
    },
}

/// The daemon of `global`'s root, if it answers.
pub fn connect(global: &Global) -> Option<client::DaemonClient> {
    client::DaemonClient::connect(&global.layout().daemon_socket())
}

/// Asks the daemon of `root`, if one answers, to unmount `mountpoint` (a container's
/// root filesystem being cleaned up); returns whether it did. Failures are logged only:
/// the caller detaches the mount itself anyway.
pub fn release(root: &std::path::Path, mountpoint: &std::path::Path) -> bool {
    let socket = skiff_proto::store::RootLayout::new(root).daemon_socket();
    let Some(c) = client::DaemonClient::connect(&socket) else {
        return false;
    };
    let req = Request::Unmount {
        mountpoint: mountpoint.to_path_buf(),
    };
    match c.request(&req) {
        Ok(Response::Unmounted) => true,
        Ok(_) => false,
        Err(e) => {
            tracing::warn!("{e:#}");
            false
        }
    }
}

/// Runs `skiff daemon [status|stop]`.
pub fn run(global: &Global, args: Args) -> anyhow::Result<u8> {
    let socket = args
        .socket
        .clone()
        .unwrap_or_else(|| global.layout().daemon_socket());
    match args.action {
        None => serve(global, &args, socket),
        Some(Action::Keeper { keeper_socket }) => keeper::run(&keeper_socket),
        Some(Action::Status { json }) => {
            let c = client::DaemonClient::connect(&socket)
                .with_context(|| format!("no daemon answers on {}", socket.display()))?;
            match c.request(&Request::Status)? {
                Response::Status(s) if json => println!("{}", serde_json::to_string_pretty(&s)?),
                Response::Status(s) => print_status(&s),
                r => anyhow::bail!("unexpected answer from the daemon: {r:?}"),
            }
            Ok(0)
        }
        Some(Action::Stop { force }) => {
            let c = client::DaemonClient::connect(&socket)
                .with_context(|| format!("no daemon answers on {}", socket.display()))?;
            c.request(&Request::Stop { force })?;
            // Wait until it is gone, so a following command runs standalone.
            for _ in 0..600 {
                if std::os::unix::net::UnixStream::connect(&socket).is_err() {
                    return Ok(0);
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            anyhow::bail!(
                "the daemon still answers on {} after 30 s",
                socket.display()
            )
        }
    }
}

fn serve(global: &Global, args: &Args, socket: PathBuf) -> anyhow::Result<u8> {
    // SIGINT/SIGTERM are taken by one thread (blocked before any other starts): with
    // a keeper the daemon exits at once and its mounts wait for the next one;
    // without, it stops as `skiff daemon stop --force` does.
    let mut mask = nix::sys::signal::SigSet::empty();
    mask.add(nix::sys::signal::Signal::SIGINT);
    mask.add(nix::sys::signal::Signal::SIGTERM);
    mask.thread_block()?;
    let listener = server::listen(&socket)?;
    let default_link = link_default_socket(&global.layout().daemon_socket(), &socket);
    let keeper = match keeper::Keeper::connect_or_start(global) {
        Ok(k) => Some(Arc::new(k)),
        Err(e) => {
            tracing::warn!("no keeper, mounts will not survive a restart: {e:#}");
            None
        }
    };
    let keeps_mounts = keeper.is_some();
    // The HTTP client every registry without TLS settings of its own shares: built
    // now, not on the way to the first container's view.
    if let Ok(options) = crate::cmd::registry_args::RegistryArgs::default().client_options() {
        std::thread::spawn(move || skiff_proto::registry::prepare_http(&options));
    }
    let state = Arc::new(state::DaemonState::new(
        global.clone(),
        &state::DaemonConfig {
            cache_limit: args.cache_limit_mib.saturating_mul(1 << 20),
            mem_cache_limit: args.mem_cache_mib.saturating_mul(1 << 20),
            max_images: args.max_images,
            hosts_dir: Some(args.hosts_dir.clone()).filter(|d| !d.as_os_str().is_empty()),
            view_idle: std::time::Duration::from_secs(args.view_idle_secs),
        },
        keeper,
    )?);
    let resumed = restart::resume_mounts(&state);
    if resumed > 0 {
        eprintln!("skiff: daemon picked up {resumed} mount(s)");
    }
    let snapshotter_socket = args
        .snapshotter_address
        .clone()
        .unwrap_or_else(|| global.root.join("snapshotter.sock"));
    let snapshots = snapshots::Snapshots::start(state.clone(), &snapshotter_socket)?;
    let stop = Arc::new(AtomicBool::new(false));
    {
        let (stop, socket) = (stop.clone(), socket.clone());
        std::thread::Builder::new()
            .name("skiff-daemon-signals".into())
            .spawn(move || {
                if let Ok(sig) = mask.wait() {
                    if keeps_mounts {
                        // The keeper holds every connection: requests wait in the
                        // kernel until the next daemon serves them.
                        eprintln!(
                            "skiff: daemon exiting on {sig:?}; mounts stay for the next daemon"
                        );
                        std::process::exit(0);
                    }
                    tracing::info!(?sig, "stopping");
                    stop.store(true, Ordering::SeqCst);
                    let _ = std::os::unix::net::UnixStream::connect(&socket);
                }
            })?;
    }
    restart_containers::spawn(global, &socket);
    eprintln!("skiff: daemon listening on {}", socket.display());
    server::serve(state, listener, socket.clone(), stop);
    if let Some(link) = default_link {
        if std::fs::read_link(&link).is_ok_and(|target| target == socket) {
            let _ = std::fs::remove_file(&link);
        }
    }
    snapshots.stop();
    eprintln!("skiff: daemon stopped");
    Ok(0)
}

/// With `--socket` elsewhere, a symbolic link at the root's default socket path to
/// it, so every CLI command given the same `--root` finds the daemon. A live daemon on
/// the default path keeps it; a stale socket or link is replaced. Returns the link.
fn link_default_socket(default: &std::path::Path, socket: &std::path::Path) -> Option<PathBuf> {
    let socket = std::path::absolute(socket).ok()?;
    if std::path::absolute(default).ok()? == socket {
        return None;
    }
    if std::os::unix::net::UnixStream::connect(default).is_ok() {
        tracing::warn!(
            default = %default.display(),
            "another daemon answers on the root's socket: the CLI will talk to that one"
        );
        return None;
    }
    let _ = std::fs::remove_file(default);
    match std::os::unix::fs::symlink(&socket, default) {
        Ok(()) => Some(default.to_path_buf()),
        Err(e) => {
            tracing::warn!(link = %default.display(), "linking the root's socket path to {}: {e}", socket.display());
            None
        }
    }
}

fn print_status(s: &StatusReport) {
    println!("pid:        {}", s.pid);
    println!("uptime:     {} s", s.uptime_secs);
    println!(
        "cache:      {} ({} MiB of {} MiB)",
        s.cache_dir.display(),
        s.cache_bytes >> 20,
        s.cache_limit >> 20
    );
    println!("registries:");
    for r in &s.registries {
        println!(
            "  {}  {} requests, {} bytes",
            r.registry, r.requests, r.bytes
        );
    }
    println!("images in memory:");
    for i in &s.images {
        println!("  {}  {} layers, {} mounts", i.image, i.layers, i.mounts);
    }
    println!("shared views:");
    for v in &s.views {
        let use_ = match v.idle_secs {
            Some(idle) => format!("unused for {idle} s"),
            None => format!("{} container(s)", v.containers),
        };
        println!("  {}  {}  {}", v.mountpoint.display(), v.image, use_);
    }
    println!("mounts:");
    for m in &s.mounts {
        let what = match (&m.container, m.running) {
            (Some(id), true) => format!("container {} (running)", &id[..id.len().min(12)]),
            (Some(id), false) => format!("container {}", &id[..id.len().min(12)]),
            (None, _) => "mount".to_string(),
        };
        let upper = m
            .upper
            .as_ref()
            .map(|u| format!(" upper {}", u.display()))
            .unwrap_or_default();
        println!(
            "  {}  {}  {}{}",
            m.mountpoint.display(),
            m.image,
            what,
            upper
        );
    }
}
