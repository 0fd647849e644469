//! `skiff mount`, `skiff umount`, `skiff stats` and `skiff gc`.
//!
//! `skiff mount IMAGE DIR` mounts a registry image lazily: it needs only the manifest,
//! config and layer indexes, and fetches file bytes when they are read. For tests and
//! offline use it can also mount local layers: uncompressed tar files given with
//! `--layer` (bottom first) or the image tagged TAG in an OCI image layout directory
//! (`--oci-layout DIR:TAG`).

use super::Global;
use anyhow::{bail, Context};
use skiff_fs::{Layer, MountOptions};
use skiff_proto::index::tar::index_tar;
use skiff_proto::store::RootLayout;
use skiff_proto::{Digest, FileBlob};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Arguments of `skiff mount`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// `[IMAGE] DIR`: the registry image and the mount point (IMAGE may be left out with
    /// --layer or --oci-layout).
    #[arg(num_args = 1..=2, required = true, value_names = ["IMAGE", "DIR"])]
    pub targets: Vec<String>,
    /// A local uncompressed tar layer; repeat, bottom layer first.
    #[arg(long = "layer", value_name = "FILE")]
    pub layers: Vec<PathBuf>,
    /// Mount the image tagged TAG in an OCI image layout directory.
    #[arg(long, value_name = "DIR:TAG")]
    pub oci_layout: Option<String>,
    /// Copy-on-write upper directory (default: a read-only mount).
    #[arg(long)]
    pub upper: Option<PathBuf>,
    /// Bound of the on-disk chunk cache, in MiB.
    #[arg(long, default_value_t = 10240)]
    pub cache_limit_mib: u64,
    /// Detach: mount in the background and return once mounted.
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// When to ask the registry for the image's manifest: "missing" uses the image as
    /// last resolved if the local store knows it, as docker does.
    #[arg(long, value_enum, default_value_t)]
    pub pull: super::lazy::PullPolicy,
    /// Registry options (for IMAGE).
    #[command(flatten)]
    pub registry: super::registry_args::RegistryArgs,
}

/// Arguments of `skiff umount`.
#[derive(clap::Args, Debug)]
pub struct UmountArgs {
    /// The mount point.
    pub dir: PathBuf,
}

/// Arguments of `skiff stats`.
#[derive(clap::Args, Debug)]
pub struct StatsArgs {
    /// The mount point.
    pub dir: PathBuf,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `skiff gc`.
#[derive(clap::Args, Debug)]
pub struct GcArgs {
    /// Shrink the chunk cache to at most this many MiB (0 empties it).
    #[arg(long, default_value_t = 0)]
    pub limit_mib: u64,
}

/// Where the stats of the mount on `dir` are written while it is mounted.
pub fn stats_path(root: &Path, dir: &Path) -> PathBuf {
    let canon = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    RootLayout::new(root).mount_stats(&canon)
}

/// Whether `dir` is a mount point (in this process's mount namespace).
pub fn is_mounted(dir: &Path) -> bool {
    let canon = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let want = canon.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|s| {
            s.lines()
                .any(|l| l.split(' ').nth(4).map(|m| m == want).unwrap_or(false))
        })
        .unwrap_or(false)
}

fn sha256_file(path: &Path) -> anyhow::Result<Digest> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = skiff_proto::digest::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finish())
}

/// A local uncompressed tar layer, indexed now (`digest` computed if not given).
pub fn tar_layer(path: &Path, digest: Option<Digest>) -> anyhow::Result<Layer> {
    let digest = match digest {
        Some(d) => d,
        None => sha256_file(path)?,
    };
    let mut magic = [0u8; 4];
    let _ = std::fs::File::open(path)?.read(&mut magic)?;
    if magic[..2] == [0x1f, 0x8b] || magic == [0x28, 0xb5, 0x2f, 0xfd] {
        bail!(
            "layer {} is compressed; only uncompressed tar layers can be mounted locally for now",
            path.display()
        );
    }
    let blob = FileBlob::open(digest, path)?;
    let index = index_tar(&blob).with_context(|| format!("indexing layer {}", path.display()))?;
    Ok(Layer {
        index: Arc::new(index),
        blob: Arc::new(blob),
    })
}

/// Reads the layers of `DIR:TAG` from an OCI image layout.
pub fn oci_layers(spec: &str) -> anyhow::Result<Vec<Layer>> {
    let (dir, tag) = spec.rsplit_once(':').unwrap_or((spec, "latest"));
    let dir = Path::new(dir);
    let read_json = |p: PathBuf| -> anyhow::Result<serde_json::Value> {
        let s = std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
        serde_json::from_slice(&s).with_context(|| format!("parsing {}", p.display()))
    };
    let blob_path = |d: &str| -> anyhow::Result<(Digest, PathBuf)> {
        let digest: Digest = d.parse()?;
        Ok((digest, dir.join("blobs/sha256").join(digest.hex())))
    };
    let index = read_json(dir.join("index.json"))?;
    let manifests = index["manifests"].as_array().cloned().unwrap_or_default();
    let m = manifests
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"].as_str() == Some(tag))
        .with_context(|| format!("no image tagged {tag:?} in {}", dir.display()))?;
    let (_, mpath) = blob_path(m["digest"].as_str().unwrap_or_default())?;
    let manifest = read_json(mpath)?;
    let mut out = Vec::new();
    for l in manifest["layers"].as_array().cloned().unwrap_or_default() {
        let (digest, path) = blob_path(l["digest"].as_str().unwrap_or_default())?;
        out.push(tar_layer(&path, Some(digest))?);
    }
    Ok(out)
}

/// Runs `skiff mount`.
pub fn run(global: &Global, args: Args) -> anyhow::Result<u8> {
    let (image, dir) = match args.targets.as_slice() {
        [dir] => (None, PathBuf::from(dir)),
        [image, dir] => (Some(image.clone()), PathBuf::from(dir)),
        _ => bail!("usage: skiff mount [IMAGE] DIR"),
    };
    if let Some(daemon) =
        crate::daemon::connect(global).filter(|_| args.registry.username.is_none())
    {
        return mount_through(&daemon, &args, image, &dir);
    }
    if args.detach {
        return detach(&dir);
    }
    let mut layers = Vec::new();
    if let Some(spec) = &args.oci_layout {
        layers.extend(oci_layers(spec)?);
    }
    for l in &args.layers {
        layers.push(tar_layer(l, None)?);
    }
    // Take SIGINT/SIGTERM synchronously so they unmount instead of killing us; blocked
    // before any runtime or FUSE thread starts, so every thread inherits the mask.
    let mut mask = nix::sys::signal::SigSet::empty();
    mask.add(nix::sys::signal::Signal::SIGINT);
    mask.add(nix::sys::signal::Signal::SIGTERM);
    mask.thread_block()?;
    let mut lazy = None;
    if layers.is_empty() {
        let Some(image) = &image else {
            bail!("nothing to mount: give IMAGE, --layer FILE or --oci-layout DIR:TAG");
        };
        let resolved = super::lazy::resolve(global, &args.registry, args.pull, image, true)?;
        layers = resolved.layers.clone();
        lazy = Some(resolved);
    }
    let mut opts = MountOptions::new(layers, global.layout().cache());
    opts.upper = args.upper.clone();
    opts.cache_limit = args.cache_limit_mib.saturating_mul(1 << 20);
    let stats_file = stats_path(&global.root, &dir);
    opts.stats_file = Some(stats_file.clone());
    opts.fs_name = image.unwrap_or_else(|| "skiff".into());

    let handle =
        skiff_fs::mount(opts, &dir).with_context(|| format!("mounting {}", dir.display()))?;
    tracing::info!(dir = %dir.display(), "mounted");
    eprintln!("skiff: mounted on {}", dir.display());
    loop {
        let ts = nix::sys::time::TimeSpec::from_duration(Duration::from_millis(500));
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let ts: libc::timespec = *ts.as_ref();
        // SAFETY: valid mask, out-pointer and timeout.
        let sig = unsafe { libc::sigtimedwait(mask.as_ref(), &mut info, &ts) };
        if sig > 0 {
            eprintln!("skiff: signal {sig}, unmounting {}", dir.display());
            break;
        }
        if !is_mounted(&dir) {
            break;
        }
    }
    let snap = handle.unmount();
    // The blob readers' runtime goes only after the filesystem is gone.
    drop(lazy);
    let _ = std::fs::remove_file(&stats_file);
    let snap = snap?;
    eprintln!("{snap}");
    Ok(0)
}

/// `skiff mount` when a daemon answers: the daemon serves the mount, this command
/// returns once it is mounted (with or without `-d`). `--cache-limit-mib` is the
/// daemon's then.
fn mount_through(
    daemon: &crate::daemon::client::DaemonClient,
    args: &Args,
    image: Option<String>,
    dir: &Path,
) -> anyhow::Result<u8> {
    use crate::daemon::protocol::{ImageSource, MountRequest, Request};
    let absolute = |p: &Path| std::path::absolute(p).with_context(|| format!("{}", p.display()));
    let source = if args.layers.is_empty() && args.oci_layout.is_none() {
        let Some(image) = image else {
            bail!("nothing to mount: give IMAGE, --layer FILE or --oci-layout DIR:TAG");
        };
        ImageSource::Registry {
            image,
            pull: args.pull,
            platform: args.registry.platform.clone(),
            insecure_registries: args.registry.insecure_registries.clone(),
        }
    } else {
        let oci_layout = match &args.oci_layout {
            Some(spec) => {
                let (d, tag) = spec.rsplit_once(':').unwrap_or((spec, "latest"));
                Some(format!("{}:{tag}", absolute(Path::new(d))?.display()))
            }
            None => None,
        };
        ImageSource::Local {
            oci_layout,
            layers: args
                .layers
                .iter()
                .map(|l| absolute(l))
                .collect::<Result<_, _>>()?,
        }
    };
    let upper = match &args.upper {
        Some(u) => {
            std::fs::create_dir_all(u).with_context(|| format!("creating {}", u.display()))?;
            Some(absolute(u)?)
        }
        None => None,
    };
    daemon.request(&Request::Mount(MountRequest {
        source,
        mountpoint: absolute(dir)?,
        upper,
        container: None,
        prefetch: true,
        background_fetch: false,
        shared_view: false,
        discard_upper: false,
    }))?;
    eprintln!("skiff: mounted on {} (by the daemon)", dir.display());
    Ok(0)
}

/// Re-runs this command without `-d` in a new session and waits until it is mounted.
fn detach(dir: &Path) -> anyhow::Result<u8> {
    let exe = std::env::current_exe()?;
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "-d" && a != "--detach")
        .collect();
    // The child's stderr goes to an unlinked file, so a refusal (a path escaping the
    // root, a digest mismatch…) can be shown to the caller instead of only its status.
    let mut errors = tempfile::tempfile()?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(&args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(errors.try_clone()?);
    use std::os::unix::process::CommandExt;
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    for _ in 0..600 {
        if is_mounted(dir) {
            println!("{}", child.id());
            return Ok(0);
        }
        if let Some(status) = child.try_wait()? {
            use std::io::{Read, Seek};
            let mut said = String::new();
            errors.rewind()?;
            // Bounded: only the start of what it printed matters.
            (&mut errors).take(64 << 10).read_to_string(&mut said).ok();
            bail!(
                "the mount daemon exited early ({status}): {}",
                said.trim().trim_start_matches("skiff: ")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("{} was not mounted after 30 s", dir.display())
}

/// Runs `skiff umount`.
pub fn umount(global: &Global, args: UmountArgs) -> anyhow::Result<u8> {
    if let Some(daemon) = crate::daemon::connect(global) {
        let mountpoint = std::path::absolute(&args.dir)?;
        let request = crate::daemon::protocol::Request::Unmount { mountpoint };
        // Otherwise not the daemon's: a standalone `skiff mount`'s, unmounted as before.
        if let crate::daemon::protocol::Response::Unmounted = daemon.request(&request)? {
            return Ok(0);
        }
    }
    let st = std::process::Command::new("fusermount3")
        .arg("-u")
        .arg(&args.dir)
        .status()
        .context("running fusermount3")?;
    if !st.success() {
        nix::mount::umount2(&args.dir, nix::mount::MntFlags::MNT_DETACH)
            .with_context(|| format!("unmounting {}", args.dir.display()))?;
    }
    Ok(0)
}

/// Runs `skiff stats`.
pub fn stats(global: &Global, args: StatsArgs) -> anyhow::Result<u8> {
    let p = stats_path(&global.root, &args.dir);
    let s = std::fs::read(&p).with_context(|| {
        format!(
            "no stats for {} (is it mounted by skiff?)",
            args.dir.display()
        )
    })?;
    let snap: skiff_fs::StatsSnapshot = serde_json::from_slice(&s)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&snap)?);
    } else {
        println!("{snap}");
    }
    Ok(0)
}

/// Runs `skiff gc`.
pub fn gc(global: &Global, args: GcArgs) -> anyhow::Result<u8> {
    let (n, bytes) = skiff_fs::cache::gc(&global.layout().cache(), args.limit_mib << 20)?;
    println!("removed {n} chunks, {bytes} bytes");
    Ok(0)
}
