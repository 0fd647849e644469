//! Everything the daemon holds, in one [`DaemonState`]: the chunk cache (one usage
//! account for every mount), one registry client per registry, the [`ImageCache`]
//! (resolved images with their merged lower trees and fetchers, shared by `Arc`) and
//! the [`MountTable`].
//!
//! Each mount also has a [`MountRecord`] on disk and its `/dev/fuse` descriptor at
//! the [`Keeper`], which is what lets the next daemon serve it (see `super::restart`).

use super::keeper::Keeper;
use super::persist::{MountRecord, MountRecords};
use super::protocol::{ImageSource, ImageStatus, MountStatus, RegistryStatus, StatusReport};
use super::run_views::RunViews;
use crate::cmd::lazy::{resolve_and_index, resolve_manifest, FoundManifest};
use crate::cmd::registry_args::RegistryArgs;
use crate::cmd::Global;
use crate::container::state::ProcessId;
use anyhow::Context;
use skiff_fs::{ChunkCache, MountHandle, SharedLower};
use skiff_proto::reference::Reference;
use skiff_proto::registry::Client;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

/// One image ready to mount: resolved, indexed, its layers merged.
pub struct ImageEntry {
    /// The image as asked for (reference, or the local layer files).
    pub name: String,
    /// The OCI config (registry images only).
    pub config: Option<oci_spec::image::ImageConfiguration>,
    /// The manifest digest (registry images only), for the local prefetch profile.
    pub manifest: Option<skiff_proto::Digest>,
    /// The merged tree and the fetcher, shared by every mount of this image.
    pub lower: Arc<SharedLower>,
    /// How many layers.
    pub layers: usize,
}

/// A slot per image: filled once by whoever asks first, while later askers of the
/// same image wait on its lock (and other images resolve in parallel).
type Slot = Arc<Mutex<Option<Arc<ImageEntry>>>>;

/// Images kept in memory, most recently used last, bounded by count. An evicted
/// image lives on while mounts still hold its `Arc`.
pub struct ImageCache {
    slots: Vec<(ImageSource, Slot)>,
    max: usize,
}

impl ImageCache {
    /// An empty cache of at most `max` images.
    pub fn new(max: usize) -> ImageCache {
        ImageCache {
            slots: Vec::new(),
            max: max.max(1),
        }
    }

    /// The slot of `source`, created if new, marked most recently used; evicts the
    /// least recently used beyond the bound.
    fn slot(&mut self, source: &ImageSource) -> Slot {
        let slot = match self.slots.iter().position(|(k, _)| k == source) {
            Some(i) => self.slots.remove(i).1,
            None => Slot::default(),
        };
        self.slots.push((source.clone(), slot.clone()));
        while self.slots.len() > self.max {
            let (key, _) = self.slots.remove(0);
            tracing::info!(?key, "image evicted from memory");
        }
        slot
    }

    /// Forgets `source` (so the next mount resolves it again).
    fn forget(&mut self, source: &ImageSource) {
        self.slots.retain(|(k, _)| k != source);
    }

    /// The images ready now. Slots being filled are skipped rather than waited for:
    /// their builder may need this cache's lock to finish.
    fn entries(&self) -> Vec<Arc<ImageEntry>> {
        self.slots
            .iter()
            .filter_map(|(_, s)| s.try_lock().ok().and_then(|e| e.clone()))
            .collect()
    }
}

/// How a mount is served.
pub enum Served {
    /// A FUSE session of its own (dropping it unmounts): `skiff mount`, and
    /// containers of images without a manifest digest.
    Fuse(MountHandle),
    /// A container's root filesystem over a shared view (see [`super::run_views`]):
    /// a kernel mount (overlayfs, or a read-only bind) the view's server serves.
    OnView {
        /// The view's mount id.
        view: String,
    },
}

/// One mount the daemon serves.
pub struct MountEntry {
    /// Its id (its record's, and its descriptor's tag at the keeper).
    pub id: String,
    /// Its FUSE session, or the shared view it stands on.
    pub served: Served,
    /// The image it shows.
    pub image: Arc<ImageEntry>,
    /// Its upper directory.
    pub upper: Option<PathBuf>,
    /// The container whose root filesystem it is, and that container's monitor.
    pub container: Option<(String, Option<ProcessId>)>,
    /// The stats file `skiff stats` reads.
    pub stats_file: PathBuf,
}

impl MountEntry {
    /// Whether a container still uses this mount (its monitor lives).
    pub fn in_use_by_container(&self) -> bool {
        matches!(&self.container, Some((_, Some(m))) if m.alive())
    }

    /// Whether this is a container's root filesystem whose monitor is gone.
    fn abandoned(&self) -> bool {
        self.container.is_some() && !self.in_use_by_container()
    }
}

/// Every mount served, by canonical mount point.
#[derive(Default)]
pub struct MountTable {
    mounts: HashMap<PathBuf, MountEntry>,
}

impl MountTable {
    /// Adds a mount; refuses a mount point already served.
    pub fn insert(&mut self, mountpoint: PathBuf, entry: MountEntry) -> anyhow::Result<()> {
        if self.mounts.contains_key(&mountpoint) {
            anyhow::bail!("{} is already mounted by the daemon", mountpoint.display());
        }
        self.mounts.insert(mountpoint, entry);
        Ok(())
    }

    /// Takes the mount on `mountpoint` out of the table.
    pub fn remove(&mut self, mountpoint: &Path) -> Option<MountEntry> {
        self.mounts.remove(mountpoint)
    }

    /// Whether `mountpoint` is served.
    pub fn contains(&self, mountpoint: &Path) -> bool {
        self.mounts.contains_key(mountpoint)
    }

    /// Takes out the mounts nobody needs any more: containers' whose monitor died, and
    /// any that was unmounted behind the daemon's back (`fusermount3 -u`).
    pub fn take_abandoned(&mut self) -> Vec<(PathBuf, MountEntry)> {
        let gone: Vec<PathBuf> = self
            .mounts
            .iter()
            .filter(|(p, e)| e.abandoned() || !crate::cmd::mount::is_mounted(p))
            .map(|(p, _)| p.clone())
            .collect();
        gone.into_iter()
            .filter_map(|p| self.mounts.remove(&p).map(|e| (p, e)))
            .collect()
    }

    /// Containers whose root filesystem is served and whose monitor still runs.
    pub fn running_containers(&self) -> Vec<String> {
        self.mounts
            .values()
            .filter(|e| e.in_use_by_container())
            .filter_map(|e| e.container.as_ref().map(|(id, _)| id.clone()))
            .collect()
    }

    /// Takes every mount out.
    pub fn drain(&mut self) -> Vec<(PathBuf, MountEntry)> {
        self.mounts.drain().collect()
    }
}

/// Settings of one daemon.
pub struct DaemonConfig {
    /// The on-disk chunk cache bound, in bytes.
    pub cache_limit: u64,
    /// The in-memory chunk cache bound, in bytes.
    pub mem_cache_limit: u64,
    /// How many images to keep in memory.
    pub max_images: usize,
    /// containerd-style mirror configuration (`<dir>/<registry>/hosts.toml`), re-read
    /// by each registry client when it changes.
    pub hosts_dir: Option<PathBuf>,
    /// How long a shared view of `skiff run` containers stays mounted after its last
    /// container (at most `max_images` idle views are kept).
    pub view_idle: std::time::Duration,
}

/// Everything one daemon owns.
pub struct DaemonState {
    /// The root it serves (and its paths).
    pub global: Global,
    started: Instant,
    cache: Arc<ChunkCache>,
    cache_limit: u64,
    hosts_dir: Option<PathBuf>,
    /// The async runtime every registry client and blob reader runs on.
    runtime: tokio::runtime::Runtime,
    clients: Mutex<HashMap<String, Arc<Client>>>,
    images: Mutex<ImageCache>,
    /// Every mount served.
    pub mounts: Mutex<MountTable>,
    /// The read-only views shared by `skiff run` containers.
    pub run_views: RunViews,
    /// The process holding every mount's connection across restarts (`None`: it
    /// could not be started, and mounts end with this daemon).
    pub keeper: Option<Arc<Keeper>>,
    /// The mount records a successor reads.
    pub records: MountRecords,
    /// Numbers new mount ids.
    next_mount: std::sync::atomic::AtomicU64,
}

/// Locks `m`, shrugging off poisoning (a panicked request thread leaves the tables
/// consistent: every change is one insert or remove).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl DaemonState {
    /// Opens the chunk cache and starts the runtime.
    pub fn new(
        global: Global,
        config: &DaemonConfig,
        keeper: Option<Arc<Keeper>>,
    ) -> anyhow::Result<DaemonState> {
        let cache_dir = global.layout().cache();
        let cache = ChunkCache::open(&cache_dir, config.cache_limit, config.mem_cache_limit)
            .with_context(|| format!("opening the chunk cache {}", cache_dir.display()))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .context("starting the async runtime")?;
        let records = MountRecords::new(&global.root);
        Ok(DaemonState {
            global: global.clone(),
            started: Instant::now(),
            cache,
            cache_limit: config.cache_limit,
            hosts_dir: config.hosts_dir.clone(),
            runtime,
            clients: Mutex::default(),
            images: Mutex::new(ImageCache::new(config.max_images)),
            mounts: Mutex::default(),
            run_views: RunViews::new(
                global.root.join("daemon").join("views"),
                config.view_idle,
                config.max_images,
            ),
            keeper,
            records,
            next_mount: Default::default(),
        })
    }

    /// A mount id no other mount of this root has had: this daemon's start time
    /// and a counter.
    pub fn new_mount_id(&self) -> String {
        static START: std::sync::OnceLock<u128> = std::sync::OnceLock::new();
        let start = START.get_or_init(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default()
        });
        let n = self
            .next_mount
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("{start:x}-{n}")
    }

    /// The restart settings of mount `id`: its file handles start above those of its
    /// earlier servers, and its backing files are recorded at the keeper.
    pub fn restart_config(
        &self,
        id: &str,
        generation: u32,
        resumed: Option<(skiff_fs::Negotiated, Vec<skiff_fs::Backing>)>,
    ) -> skiff_fs::RestartConfig {
        let backing_log = self.keeper.clone().map(|k| {
            let id = id.to_string();
            Arc::new(move |ino: u64, b: Option<skiff_fs::Backing>| k.backing(&id, ino, b))
                as skiff_fs::BackingLog
        });
        let (resumed, backings) = match resumed {
            Some((n, b)) => (Some(n), b),
            None => (None, Vec::new()),
        };
        skiff_fs::RestartConfig {
            generation,
            resumed,
            backings,
            backing_log,
        }
    }

    /// Saves `record` and hands its connection to the keeper (in this order: a
    /// record without a connection is detached by the next daemon, a connection
    /// without a record would be a mount nobody knows).
    pub fn hand_over(&self, record: &MountRecord, handle: &MountHandle) -> anyhow::Result<()> {
        let Some(keeper) = &self.keeper else {
            return Ok(());
        };
        self.records
            .save(record)
            .with_context(|| format!("saving the record of mount {}", record.id))?;
        let fd = handle.fuse_fd().context("the mount has no connection")?;
        keeper
            .put(&record.id, fd)
            .with_context(|| format!("handing mount {} to the keeper", record.id))
    }

    /// Saves the record of a mount that has no connection of its own (a container's
    /// root over a shared view), when mounts outlive this daemon at all.
    pub fn save_record(&self, record: &MountRecord) -> anyhow::Result<()> {
        if self.keeper.is_none() {
            return Ok(());
        }
        self.records
            .save(record)
            .with_context(|| format!("saving the record of mount {}", record.id))
    }

    /// Forgets mount `id` for good (unmounted): its record and its connection.
    pub fn forget_mount(&self, id: &str) {
        self.records.remove(id);
        if let Some(k) = &self.keeper {
            k.forget(id);
        }
    }

    /// The client of `reference`'s registry: made on first use, then shared (its
    /// connection pool and counters with it). Options of the first request win.
    fn client_for(
        &self,
        registry: &RegistryArgs,
        reference: &Reference,
    ) -> anyhow::Result<Arc<Client>> {
        let mut clients = lock(&self.clients);
        if let Some(c) = clients.get(reference.registry()) {
            return Ok(c.clone());
        }
        let c = Arc::new(registry.client_for(reference)?);
        clients.insert(reference.registry().to_string(), c.clone());
        Ok(c)
    }

    /// The image of `source`: from memory, else resolved, indexed and merged now.
    /// The boolean says whether it was built by this call.
    pub fn image(&self, source: &ImageSource) -> anyhow::Result<(Arc<ImageEntry>, bool)> {
        self.image_from(source, None)
    }

    /// The manifest of registry image `source` (from the local store when its pull
    /// policy allows), and the client of its registry: what [`DaemonState::image_from`]
    /// builds the image from. The tails of the layers `ahead` names are read alongside
    /// the manifest ([`resolve_manifest`]).
    pub fn manifest(
        &self,
        source: &ImageSource,
        ahead: &[skiff_proto::Digest],
    ) -> anyhow::Result<(Arc<Client>, FoundManifest)> {
        let ImageSource::Registry {
            image,
            pull,
            platform,
            insecure_registries,
        } = source
        else {
            anyhow::bail!("{source:?} is not a registry image");
        };
        let registry = RegistryArgs {
            platform: platform.clone(),
            insecure_registries: insecure_registries.clone(),
            hosts_dir: self.hosts_dir.clone(),
            ..RegistryArgs::default()
        };
        let client_for = |r: &Reference| self.client_for(&registry, r);
        resolve_manifest(
            &self.global,
            &registry,
            &client_for,
            *pull,
            self.runtime.handle(),
            image,
            ahead,
        )
    }

    /// [`DaemonState::image`], built (if it is not in memory) from `found`, the
    /// manifest [`DaemonState::manifest`] resolved for `source`, rather than asking
    /// again.
    pub fn image_from(
        &self,
        source: &ImageSource,
        found: Option<(Arc<Client>, FoundManifest)>,
    ) -> anyhow::Result<(Arc<ImageEntry>, bool)> {
        if let ImageSource::Registry {
            pull: crate::cmd::lazy::PullPolicy::Always,
            ..
        } = source
        {
            lock(&self.images).forget(source);
        }
        let slot = lock(&self.images).slot(source);
        let mut slot = lock(&*slot);
        if let Some(e) = slot.as_ref() {
            return Ok((e.clone(), false));
        }
        let built = self.build_image(source, found);
        if built.is_err() {
            lock(&self.images).forget(source);
        }
        let e = Arc::new(built?);
        *slot = Some(e.clone());
        Ok((e, true))
    }

    fn build_image(
        &self,
        source: &ImageSource,
        found: Option<(Arc<Client>, FoundManifest)>,
    ) -> anyhow::Result<ImageEntry> {
        let (name, layers, config, manifest) = match source {
            ImageSource::Registry { image, .. } => {
                let (client, found) = match found {
                    Some(found) => found,
                    None => self.manifest(source, &[])?,
                };
                let rt = self.runtime.handle();
                let (resolved, layers) = resolve_and_index(
                    &self.global,
                    &client,
                    rt,
                    found,
                    image,
                    false,
                    crate::cmd::lazy::IndexSaves::Background,
                )?;
                (
                    resolved.reference.to_string(),
                    layers,
                    Some(resolved.config.clone()),
                    Some(resolved.manifest_digest),
                )
            }
            ImageSource::Local { oci_layout, layers } => {
                let mut all = Vec::new();
                if let Some(spec) = oci_layout {
                    all.extend(crate::cmd::mount::oci_layers(spec)?);
                }
                for l in layers {
                    all.push(crate::cmd::mount::tar_layer(l, None)?);
                }
                let mut names: Vec<String> = oci_layout.iter().cloned().collect();
                names.extend(layers.iter().map(|l| l.display().to_string()));
                (names.join(" + "), all, None, None)
            }
        };
        let count = layers.len();
        let merging = std::time::Instant::now();
        let lower = SharedLower::build(
            layers,
            self.cache.clone(),
            8,
            skiff_fs::FetchTuning::default(),
        )
        .with_context(|| format!("merging the layers of {name}"))?;
        let merge_ms = merging.elapsed().as_secs_f64() * 1e3;
        let (index_bytes, tree_bytes) = lower.memory_size();
        tracing::info!(
            image = %name,
            layers = count,
            index_bytes,
            tree_bytes,
            merge_ms,
            "image ready in memory"
        );
        Ok(ImageEntry {
            name,
            config,
            manifest,
            lower: Arc::new(lower),
            layers: count,
        })
    }

    /// What `skiff daemon status` shows.
    pub fn status(&self) -> StatusReport {
        let mut registries: Vec<RegistryStatus> = lock(&self.clients)
            .iter()
            .map(|(name, c)| RegistryStatus {
                registry: name.clone(),
                requests: c.stats().requests(),
                bytes: c.stats().bytes(),
            })
            .collect();
        registries.sort_by(|a, b| a.registry.cmp(&b.registry));
        let mounts = lock(&self.mounts);
        let mut mount_list: Vec<MountStatus> = mounts
            .mounts
            .iter()
            .map(|(p, e)| MountStatus {
                mountpoint: p.clone(),
                image: e.image.name.clone(),
                upper: e.upper.clone(),
                container: e.container.as_ref().map(|(id, _)| id.clone()),
                running: e.in_use_by_container(),
            })
            .collect();
        mount_list.sort_by(|a, b| a.mountpoint.cmp(&b.mountpoint));
        let images = lock(&self.images)
            .entries()
            .into_iter()
            .map(|i| ImageStatus {
                image: i.name.clone(),
                layers: i.layers,
                mounts: mounts
                    .mounts
                    .values()
                    .filter(|m| Arc::ptr_eq(&m.image, &i))
                    .count(),
            })
            .collect();
        StatusReport {
            pid: std::process::id(),
            uptime_secs: self.started.elapsed().as_secs(),
            cache_dir: self.global.layout().cache(),
            cache_bytes: self.cache.disk_bytes(),
            cache_limit: self.cache_limit,
            registries,
            images,
            mounts: mount_list,
            views: self.run_views.status(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(name: &str) -> ImageSource {
        ImageSource::Local {
            oci_layout: None,
            layers: vec![PathBuf::from(name)],
        }
    }

    fn keys(c: &ImageCache) -> Vec<ImageSource> {
        c.slots.iter().map(|(k, _)| k.clone()).collect()
    }

    #[test]
    fn image_cache_keeps_the_most_recently_used() {
        let mut c = ImageCache::new(2);
        let a = c.slot(&local("a"));
        c.slot(&local("b"));
        // Asking again gives the same slot and makes it the most recent.
        assert!(Arc::ptr_eq(&a, &c.slot(&local("a"))));
        assert_eq!(keys(&c), [local("b"), local("a")]);
        c.slot(&local("c"));
        assert_eq!(keys(&c), [local("a"), local("c")]);
        c.forget(&local("a"));
        assert_eq!(keys(&c), [local("c")]);
        // An evicted slot is new when asked for again.
        assert!(!Arc::ptr_eq(&a, &c.slot(&local("a"))));
    }
}
