//! Skiff's FUSE union filesystem.
//!
//! Give it the layers of an image (bottom first), each as an index plus a blob
//! reader, and it mounts their merged view: [`tree`] folds the layer indexes with the
//! OCI rules, [`fuse`] answers the kernel, [`reader`] serves reads of lower files,
//! [`plan`] decides which chunks to fetch with them, [`fetcher`] reads and verifies
//! them, [`cache`] keeps them (content-addressed, on disk and in memory), and
//! [`upper`] holds the copy-on-write layer in overlayfs's on-disk format.
//!
//! ```no_run
//! # fn f(layers: Vec<skiff_fs::Layer>) -> Result<(), skiff_fs::MountError> {
//! let opts = skiff_fs::MountOptions::new(layers, "/var/lib/skiff/cache".into());
//! let handle = skiff_fs::mount(opts, std::path::Path::new("/mnt/x"))?;
//! println!("{}", handle.stats());
//! handle.unmount()?;
//! # Ok(()) }
//! ```

pub mod cache;
pub mod elf;
pub mod exec_args;
pub mod fetcher;
pub mod fuse;
pub mod handover;
pub mod ld_script;
pub mod materialize;
mod pack;
pub mod plan;
pub mod predict;
pub mod profile;
pub mod reader;
pub mod stats;
pub mod stream;
pub mod tree;
pub mod upper;
pub mod upper_diff;

pub use cache::ChunkCache;
pub use fetcher::{FetchError, FetchTuning, Fetcher, Layer, Priority};
pub use handover::{Backing, BackingLog, Negotiated, RestartConfig};
pub use profile::{Profile, Recorder};
pub use stats::{Stats, StatsSnapshot};

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Errors from mounting.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// The layers could not be merged.
    #[error(transparent)]
    Tree(#[from] tree::TreeError),
    /// The chunk cache could not be opened.
    #[error(transparent)]
    Cache(#[from] cache::CacheError),
    /// Preparing the upper directory failed.
    #[error("preparing upper directory {path}: {source}")]
    Upper {
        /// The upper directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The FUSE mount or session failed.
    #[error("fuse mount on {mountpoint}: {source}")]
    Fuse {
        /// Where the mount was attempted.
        mountpoint: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// What to mount and how.
#[derive(Clone)]
pub struct MountOptions {
    /// The image's layers, bottom first.
    pub layers: Vec<Layer>,
    /// The copy-on-write upper directory; `None` mounts read-only.
    pub upper: Option<PathBuf>,
    /// The chunk cache directory (shared by all mounts).
    pub cache_dir: PathBuf,
    /// Size bound of the on-disk chunk cache, in bytes.
    pub cache_limit: u64,
    /// Size bound of the in-memory chunk LRU, in bytes.
    pub mem_cache_limit: u64,
    /// Fetcher worker threads.
    pub fetch_threads: usize,
    /// FUSE worker threads.
    pub fuse_threads: usize,
    /// Where to write the stats JSON while mounted (every second and at unmount).
    pub stats_file: Option<PathBuf>,
    /// The mount's source name shown in /proc/mounts.
    pub fs_name: String,
    /// Fetch the files each layer's producer marked for prefetch (eStargz's
    /// `.prefetch.landmark`) in the background right after mounting.
    pub prefetch: bool,
    /// A recorded start-up profile whose ranges are prefetched right after mounting
    /// (before the producer-marked files).
    pub profile: Option<Arc<Profile>>,
    /// Records every lower-file read into this recorder (for a new profile).
    pub record: Option<Arc<Recorder>>,
    /// After mounting, fetch every remaining chunk of every layer at background
    /// priority (yielding to on-demand reads), so the image soon reads from disk.
    pub background_fetch: bool,
    /// Request merging and background pacing.
    pub tuning: FetchTuning,
    /// Read-ahead on sequential reads that miss the cache, in blob bytes (0: off).
    pub readahead: u64,
    /// The first cache miss in an executable lower file of at most this many bytes
    /// queues the rest of the file at prefetch priority (0: off).
    pub whole_file_max: u64,
    /// Files to read right after mounting, as on-demand reads, before anyone asks:
    /// the program about to be exec'd (each item lists candidate paths, as `PATH`
    /// gives them; the first regular file found is read) and the files the launcher
    /// reads itself (`/etc/passwd`, `/etc/group`). See [`predict::warm`]. Not used
    /// when there is a `profile`, which holds the start-up reads already.
    pub warm: Vec<Vec<String>>,
    /// Continuing an earlier server of the mount's connection ([`resume_shared`]),
    /// or recording what a later one needs.
    pub restart: RestartConfig,
    /// A read-only mount whose files the kernel opens without asking (see
    /// [`fuse::FsConfig::kernel_opens`]): for a view many containers share.
    pub kernel_opens: bool,
}

impl MountOptions {
    /// Defaults: read-only, 10 GiB disk cache, 256 MiB memory cache, 8 fetch threads
    /// (at most 8 Range requests in flight), 4 FUSE threads, producer prefetch on, no
    /// profile, no background fetch, 1 MiB read-ahead, whole-file prefetch of files up to 64 MiB,
    /// [`FetchTuning::default`].
    pub fn new(layers: Vec<Layer>, cache_dir: PathBuf) -> MountOptions {
        MountOptions {
            layers,
            upper: None,
            cache_dir,
            cache_limit: 10 << 30,
            mem_cache_limit: 256 << 20,
            fetch_threads: 8,
            fuse_threads: 4,
            stats_file: None,
            fs_name: "skiff".into(),
            prefetch: true,
            profile: None,
            record: None,
            background_fetch: false,
            tuning: FetchTuning::default(),
            readahead: 1 << 20,
            whole_file_max: 64 << 20,
            warm: Vec::new(),
            restart: RestartConfig::default(),
            kernel_opens: false,
        }
    }
}

/// The read-only half of a mount, built once per image and shareable by any number of
/// mounts of it (a daemon serving many containers of one image): the merged lower tree,
/// the chunk fetcher (its in-flight table makes concurrent reads of one chunk from
/// different mounts share a fetch) and the counters they write.
pub struct SharedLower {
    layers: Vec<Layer>,
    tree: Arc<tree::LowerTree>,
    fetcher: Arc<Fetcher>,
    stats: Arc<Stats>,
    cache: Arc<ChunkCache>,
    /// Fetches ahead of the dynamic loader, for every mount of this view: a library
    /// predicted for one container is not predicted again for the next.
    predictor: Arc<predict::Predictor>,
}

impl SharedLower {
    /// Merges `layers` and starts a fetcher of `fetch_threads` workers reading into
    /// `cache` (which the caller may share with other images).
    pub fn build(
        layers: Vec<Layer>,
        cache: Arc<ChunkCache>,
        fetch_threads: usize,
        tuning: FetchTuning,
    ) -> Result<SharedLower, MountError> {
        let tree = Arc::new(tree::LowerTree::build(
            layers.iter().map(|l| l.index.clone()).collect(),
        )?);
        let stats = Arc::new(Stats::default());
        let fetcher = Arc::new(Fetcher::with_tuning(
            layers.clone(),
            cache.clone(),
            stats.clone(),
            fetch_threads,
            tuning,
        ));
        let predictor = Arc::new(predict::Predictor::new(tree.clone(), fetcher.clone()));
        Ok(SharedLower {
            layers,
            tree,
            fetcher,
            stats,
            cache,
            predictor,
        })
    }

    /// The counters of every mount of this lower view together, and where each
    /// remote layer's bytes came from.
    pub fn stats(&self) -> StatsSnapshot {
        let mut s = cache_snapshot(&self.stats, &self.cache);
        s.layers = self
            .layers
            .iter()
            .filter_map(|l| {
                let source = l.blob.source()?;
                Some(stats::LayerSource {
                    digest: l.index.blob.to_string(),
                    served_by: source.served_by,
                    requests: source.requests,
                    bytes: source.bytes,
                })
            })
            .collect();
        s
    }

    /// The layers, bottom first (a view of the first few is built from them).
    pub fn layers(&self) -> &[Layer] {
        &self.layers
    }

    /// Approximate bytes of memory the layer indexes and the merged tree take.
    pub fn memory_size(&self) -> (usize, usize) {
        let indexes = self.layers.iter().map(|l| l.index.memory_size()).sum();
        (indexes, self.tree.memory_size())
    }

    /// Reads `files` into the cache now, before any mount of this view asks for them
    /// (as [`MountOptions::warm`] does at mount time): each item lists candidate
    /// paths and the first regular file found is read; an executable's loader and
    /// libraries are predicted from its head, as for a mount.
    pub fn warm(&self, files: &[Vec<String>], whole_file_max: u64) {
        self.predictor.warm(files, whole_file_max);
    }

    /// Fetches libraries `libs` into the cache now, as a program's load would
    /// ([`predict::Predictor::warm_libraries`]).
    pub fn warm_libraries(&self, libs: &[&str]) {
        self.predictor.warm_libraries(libs);
    }

    /// The chunk cache the fetcher reads into.
    pub fn cache(&self) -> &Arc<ChunkCache> {
        &self.cache
    }

    /// Stops the fetcher (once no mount uses it any more).
    pub fn shutdown(&self) {
        self.fetcher.shutdown();
    }
}

impl Drop for SharedLower {
    /// The fetcher's workers end with the last user of the lower view.
    fn drop(&mut self) {
        self.fetcher.shutdown();
    }
}

struct Prepared {
    fs: fuse::SkiffFs,
    lower: Arc<SharedLower>,
    config: fuser::Config,
}

fn prepare(opts: &MountOptions) -> Result<Prepared, MountError> {
    let cache = ChunkCache::open(&opts.cache_dir, opts.cache_limit, opts.mem_cache_limit)?;
    let lower = SharedLower::build(
        opts.layers.clone(),
        cache,
        opts.fetch_threads,
        opts.tuning.clone(),
    )?;
    prepare_on(Arc::new(lower), opts)
}

/// The filesystem of one mount over `lower`; `opts.layers` and the cache and fetcher
/// settings of `opts` are ignored (they are `lower`'s).
fn prepare_on(lower: Arc<SharedLower>, opts: &MountOptions) -> Result<Prepared, MountError> {
    let fs = fuse::SkiffFs::new(
        lower.tree.clone(),
        lower.fetcher.clone(),
        lower.stats.clone(),
        fuse::FsConfig {
            upper: opts.upper.clone(),
            recorder: opts.record.clone(),
            readahead: opts.readahead,
            whole_file_max: opts.whole_file_max,
            predictor: (opts.whole_file_max > 0).then(|| lower.predictor.clone()),
            restart: opts.restart.clone(),
            kernel_opens: opts.kernel_opens && opts.upper.is_none() && opts.record.is_none(),
        },
    )
    .map_err(|source| MountError::Upper {
        path: opts.upper.clone().unwrap_or_default(),
        source,
    })?;
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::FSName(opts.fs_name.clone()),
        fuser::MountOption::Subtype("skiff".into()),
        fuser::MountOption::DefaultPermissions,
        fuser::MountOption::Dev,
        fuser::MountOption::Suid,
        if opts.upper.is_some() {
            fuser::MountOption::RW
        } else {
            fuser::MountOption::RO
        },
    ];
    config.acl = fuser::SessionACL::All;
    config.n_threads = Some(opts.fuse_threads.max(1));
    Ok(Prepared { fs, lower, config })
}

/// A mounted filesystem running in the background. Dropping it unmounts.
pub struct MountHandle {
    session: Option<fuser::BackgroundSession>,
    /// A duplicate of the connection's `/dev/fuse` descriptor (to hand over).
    fuse_fd: Option<std::os::fd::OwnedFd>,
    /// What INIT negotiated.
    negotiated: Arc<std::sync::OnceLock<Negotiated>>,
    /// Whether unmounting is ours to do (a resumed session has no fuser mount).
    own_umount: bool,
    mountpoint: PathBuf,
    lower: Arc<SharedLower>,
    /// Whether unmounting stops the fetcher (false when `lower` is shared).
    owns_lower: bool,
    stats_file: Option<PathBuf>,
    stop: Arc<AtomicBool>,
    writer: Option<std::thread::JoinHandle<()>>,
}

fn cache_snapshot(stats: &Stats, cache: &ChunkCache) -> StatsSnapshot {
    let mut s = stats.snapshot();
    s.cache_corrupt = cache.corrupt.load(Ordering::Relaxed);
    s
}

fn write_stats(path: &Path, snap: &StatsSnapshot) {
    if let Ok(json) = serde_json::to_vec_pretty(snap) {
        let tmp = path.with_extension("tmp");
        if std::fs::write(&tmp, json).is_ok() {
            let _ = std::fs::rename(&tmp, path);
        }
    }
}

fn spawn_stats_writer(
    path: Option<PathBuf>,
    lower: Arc<SharedLower>,
    stop: Arc<AtomicBool>,
) -> Option<std::thread::JoinHandle<()>> {
    let path = path?;
    if let Some(p) = path.parent() {
        let _ = std::fs::create_dir_all(p);
    }
    std::thread::Builder::new()
        .name("skiff-stats".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                write_stats(&path, &lower.stats());
                for _ in 0..10 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
            }
        })
        .ok()
}

/// Queues, in this order: the recorded profile's ranges, the producer-marked files of
/// every layer (eStargz landmarks), and with `background_fetch` every other chunk.
fn start_prefetch(opts: &MountOptions, lower: &SharedLower) {
    let (layers, tree, fetcher) = (&lower.layers, &lower.tree, &lower.fetcher);
    // A recorded profile already holds the start-up reads, in the order they came.
    if opts.profile.is_none() && !opts.warm.is_empty() {
        lower.predictor.warm(&opts.warm, opts.whole_file_max);
    }
    if let Some(profile) = &opts.profile {
        for (layer, chunks) in profile.plan(tree) {
            fetcher.queue_speculative(Priority::Prefetch, layer, chunks);
        }
    }
    if opts.prefetch {
        for (li, l) in layers.iter().enumerate() {
            let mut chunks = Vec::new();
            for &ei in &l.index.prefetch {
                if let Some(e) = l.index.entries.get(ei as usize) {
                    chunks.extend_from_slice(l.index.chunks_of(e));
                }
            }
            chunks.sort_by_key(|c| c.blob_offset);
            chunks.dedup_by_key(|c| c.blob_offset);
            fetcher.queue_speculative(Priority::Prefetch, li, chunks);
        }
    }
    if opts.background_fetch {
        for (li, l) in layers.iter().enumerate() {
            let mut chunks = l.index.chunks.clone();
            chunks.sort_by_key(|c| c.blob_offset);
            chunks.dedup_by_key(|c| c.digest);
            fetcher.queue_speculative(Priority::Background, li, chunks);
        }
    }
}

/// Mounts the merged view of `opts.layers` on `mountpoint` in the background.
pub fn mount(opts: MountOptions, mountpoint: &Path) -> Result<MountHandle, MountError> {
    spawn(prepare(&opts)?, true, opts, mountpoint)
}

/// Mounts `lower` (built once, shared with other mounts of the same image) with
/// `opts.upper` on `mountpoint` in the background. `opts.layers` and the cache and
/// fetcher settings of `opts` are ignored: they are `lower`'s. Unmounting leaves
/// `lower`'s fetcher running for the other mounts.
pub fn mount_shared(
    lower: Arc<SharedLower>,
    opts: MountOptions,
    mountpoint: &Path,
) -> Result<MountHandle, MountError> {
    spawn(prepare_on(lower, &opts)?, false, opts, mountpoint)
}

/// Serves the already mounted and initialized FUSE connection `fuse` (handed over by
/// an earlier server of the mount, now gone) on `mountpoint`, with `lower` (the same
/// image) and `opts.upper`; `opts.restart` says how (its `resumed` must be set).
/// Requests the earlier server read but never answered are asked for again. Nothing
/// is prefetched again.
pub fn resume_shared(
    lower: Arc<SharedLower>,
    mut opts: MountOptions,
    mountpoint: &Path,
    fuse: std::os::fd::OwnedFd,
) -> Result<MountHandle, MountError> {
    let fuse_err = |source| MountError::Fuse {
        mountpoint: mountpoint.to_path_buf(),
        source,
    };
    if opts.restart.resumed.is_none() {
        return Err(fuse_err(std::io::Error::other(
            "resuming a connection without its negotiated settings",
        )));
    }
    opts.prefetch = false;
    opts.profile = None;
    opts.background_fetch = false;
    let p = prepare_on(lower, &opts)?;
    let negotiated = p.fs.negotiated();
    let session = fuser::Session::from_initialized_fd(p.fs, fuse, p.config.acl, p.config.clone())
        .map_err(fuse_err)?;
    spawn_session(session, negotiated, p.lower, false, true, opts, mountpoint)
}

fn spawn(
    p: Prepared,
    owns_lower: bool,
    opts: MountOptions,
    mountpoint: &Path,
) -> Result<MountHandle, MountError> {
    let negotiated = p.fs.negotiated();
    let session =
        fuser::Session::new(p.fs, mountpoint, &p.config).map_err(|source| MountError::Fuse {
            mountpoint: mountpoint.to_path_buf(),
            source,
        })?;
    spawn_session(
        session, negotiated, p.lower, owns_lower, false, opts, mountpoint,
    )
}

/// Starts serving `session` in the background (and the prefetch and stats writer).
fn spawn_session(
    session: fuser::Session<fuse::SkiffFs>,
    negotiated: Arc<std::sync::OnceLock<Negotiated>>,
    lower: Arc<SharedLower>,
    owns_lower: bool,
    resumed: bool,
    opts: MountOptions,
    mountpoint: &Path,
) -> Result<MountHandle, MountError> {
    use std::os::fd::AsFd;
    let fuse_err = |source| MountError::Fuse {
        mountpoint: mountpoint.to_path_buf(),
        source,
    };
    let fuse_fd = session.as_fd().try_clone_to_owned().map_err(fuse_err)?;
    let session = session.spawn().map_err(fuse_err)?;
    if resumed {
        if let Err(e) = handover::resend_unanswered(fuse_fd.as_fd()) {
            tracing::warn!(
                mountpoint = %mountpoint.display(),
                "asking the kernel to resend unanswered requests: {e}"
            );
        }
    }
    start_prefetch(&opts, &lower);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = spawn_stats_writer(opts.stats_file.clone(), lower.clone(), stop.clone());
    Ok(MountHandle {
        session: Some(session),
        fuse_fd: Some(fuse_fd),
        negotiated,
        own_umount: resumed,
        mountpoint: mountpoint.to_path_buf(),
        lower,
        owns_lower,
        stats_file: opts.stats_file,
        stop,
        writer,
    })
}

/// Mounts and serves on the calling thread until the filesystem is unmounted (by
/// `skiff umount`, `fusermount3 -u` or a signal handler that unmounts). Returns the
/// final counters.
pub fn mount_foreground(
    opts: MountOptions,
    mountpoint: &Path,
) -> Result<StatsSnapshot, MountError> {
    let p = prepare(&opts)?;
    let fuse_err = |source| MountError::Fuse {
        mountpoint: mountpoint.to_path_buf(),
        source,
    };
    let session = fuser::Session::new(p.fs, mountpoint, &p.config).map_err(fuse_err)?;
    let lower = p.lower;
    start_prefetch(&opts, &lower);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = spawn_stats_writer(opts.stats_file.clone(), lower.clone(), stop.clone());
    let r = session.run().map_err(fuse_err);
    stop.store(true, Ordering::Relaxed);
    if let Some(w) = writer {
        let _ = w.join();
    }
    lower.shutdown();
    let snap = lower.stats();
    if let Some(f) = &opts.stats_file {
        write_stats(f, &snap);
    }
    r.map(|_| snap)
}

impl MountHandle {
    /// The mount point.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// The connection's `/dev/fuse` descriptor (to hand to a keeper, so the mount
    /// outlives this process).
    pub fn fuse_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        self.fuse_fd.as_ref().map(|f| f.as_fd())
    }

    /// What INIT negotiated (`None` until it ran).
    pub fn negotiated(&self) -> Option<Negotiated> {
        self.negotiated.get().copied()
    }

    /// The current counters.
    pub fn stats(&self) -> StatsSnapshot {
        self.lower.stats()
    }

    /// The chunk cache (tests drop its memory part to force disk reads).
    pub fn cache(&self) -> &Arc<ChunkCache> {
        &self.lower.cache
    }

    /// Waits until the fetcher has nothing queued or running (prefetch and background
    /// fetch done), or `timeout` passed; returns whether it is idle.
    pub fn wait_fetches_idle(&self, timeout: std::time::Duration) -> bool {
        self.lower.fetcher.wait_idle(timeout)
    }

    /// Whether the fetcher has nothing queued or running.
    pub fn fetches_idle(&self) -> bool {
        self.lower.fetcher.is_idle()
    }

    /// Unmounts and waits for the session to end; returns the final counters.
    pub fn unmount(mut self) -> Result<StatsSnapshot, MountError> {
        self.finish()
    }

    fn finish(&mut self) -> Result<StatsSnapshot, MountError> {
        let mut result = Ok(());
        self.fuse_fd = None;
        if let Some(s) = self.session.take() {
            let done = if self.own_umount {
                umount_and_join_resumed(&self.mountpoint, s)
            } else {
                match umount_retrying_busy(&self.mountpoint) {
                    Ok(()) => s.join(),
                    // Not ours to unmount (no CAP_SYS_ADMIN): fusermount3 does it.
                    Err(e) if e.raw_os_error() == Some(libc::EPERM) => s.umount_and_join(),
                    Err(e) => Err(e),
                }
            };
            if let Err(e) = done {
                // Busy: detach lazily so nothing is left mounted. Already unmounted
                // (`skiff umount`, fusermount3 -u): EINVAL, and nothing to report.
                let detached =
                    nix::mount::umount2(&self.mountpoint, nix::mount::MntFlags::MNT_DETACH);
                let gone = e.raw_os_error() == Some(libc::EINVAL)
                    && detached == Err(nix::errno::Errno::EINVAL);
                if !gone {
                    result = Err(MountError::Fuse {
                        mountpoint: self.mountpoint.clone(),
                        source: e,
                    });
                }
            }
        }
        self.stop.store(true, Ordering::Relaxed);
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
        if self.owns_lower {
            self.lower.shutdown();
        } else {
            // Others share the cache: what this mount fetched is on disk now anyway.
            self.lower.cache.flush();
        }
        let snap = self.stats();
        if let Some(f) = &self.stats_file {
            write_stats(f, &snap);
        }
        result.map(|_| snap)
    }
}

/// Unmounts a resumed mount (its session has no fuser mount to do it), then waits for
/// the session to end.
fn umount_and_join_resumed(
    mountpoint: &Path,
    session: fuser::BackgroundSession,
) -> std::io::Result<()> {
    umount_retrying_busy(mountpoint)?;
    session.join()
}

/// How long an unmount retries while the mount is busy before giving up.
const UMOUNT_BUSY_RETRIES: u32 = 50;
const UMOUNT_BUSY_PAUSE: std::time::Duration = std::time::Duration::from_millis(20);

/// Unmounts, retrying for up to a second while the kernel says EBUSY. A mount is busy
/// for a moment after its last user let go more often than one would think: a child
/// another thread forked holds copies of that thread's descriptors until it executes,
/// and a path walk still holds its reference on the way out (containerd's unmount
/// retries for the same reason).
fn umount_retrying_busy(mountpoint: &Path) -> std::io::Result<()> {
    let mut tries = 0;
    loop {
        match nix::mount::umount2(mountpoint, nix::mount::MntFlags::empty()) {
            Err(nix::errno::Errno::EBUSY) if tries < UMOUNT_BUSY_RETRIES => {
                tries += 1;
                std::thread::sleep(UMOUNT_BUSY_PAUSE);
            }
            r => return r.map_err(std::io::Error::from),
        }
    }
}

impl Drop for MountHandle {
    fn drop(&mut self) {
        if self.session.is_some() {
            let _ = self.finish();
        }
    }
}
