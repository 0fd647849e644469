//! Resolving a registry image and mounting its merged, lazy root filesystem: what
//! `skiff mount IMAGE` and `skiff run IMAGE` share.

use super::registry_args::{runtime, RegistryArgs};
use super::Global;
use anyhow::Context;
use bytes::Bytes;
use indicatif::{MultiProgress, ProgressDrawTarget};
use skiff_fs::{Layer, MountOptions};
use skiff_proto::image::Descriptor;
use skiff_proto::image::ResolvedImage;
use skiff_proto::index::store::IndexStore;
use skiff_proto::reference::Reference;
use skiff_proto::registry::{Client, ResolvedManifest};
use skiff_proto::resolve::{resolve_layers, ResolveOptions};
use skiff_proto::store::Store;
use skiff_proto::Digest;
use std::sync::Arc;

/// An image resolved down to one verified index and one remote blob reader per layer.
///
/// Holds the async runtime its blob readers block on, so it must outlive every mount
/// made from [`LazyImage::mount_options`].
pub struct LazyImage {
    /// The resolved manifest and config.
    pub image: ResolvedImage,
    /// The layers, bottom first, ready for `skiff_fs::mount`.
    pub layers: Vec<Layer>,
    /// The registry client every layer reads through (its stats count all traffic).
    pub client: Arc<Client>,
    /// The image's prefetch profile: the local one, else a lookup of a published one
    /// started as soon as the manifest was known (it runs while the layers resolve).
    /// Only filled by [`resolve_for_run`].
    pub profile: ProfileLookup,
    /// Kept alive for the blob readers; dropped last.
    _runtime: tokio::runtime::Runtime,
}

/// Resolves `image` and finds or builds every layer's index (local store, published
/// index, TOC, or a streaming pass, in that order). Shows progress bars only when
/// `progress` is set, since `run` stays silent unless asked.
///
/// Call before any FUSE thread exists and from a thread outside a tokio runtime.
pub fn resolve(
    global: &Global,
    registry: &RegistryArgs,
    pull: PullPolicy,
    image: &str,
    progress: bool,
) -> anyhow::Result<LazyImage> {
    resolve_inner(global, registry, pull, image, progress, false)
}

/// Where an image's prefetch profile comes from.
pub enum ProfileLookup {
    /// Not asked for.
    None,
    /// Found in the local store.
    Local(skiff_fs::Profile),
    /// Being looked up in the registry.
    Remote(tokio::task::JoinHandle<anyhow::Result<Option<skiff_fs::Profile>>>),
}

/// [`resolve`], plus the image's prefetch profile ([`LazyImage::profile`]).
pub fn resolve_for_run(
    global: &Global,
    registry: &RegistryArgs,
    pull: PullPolicy,
    image: &str,
    progress: bool,
) -> anyhow::Result<LazyImage> {
    resolve_inner(global, registry, pull, image, progress, true)
}

fn resolve_inner(
    global: &Global,
    registry: &RegistryArgs,
    pull: PullPolicy,
    image: &str,
    progress: bool,
    want_profile: bool,
) -> anyhow::Result<LazyImage> {
    let rt = runtime()?;
    let client_for =
        |r: &Reference| -> anyhow::Result<Arc<Client>> { Ok(Arc::new(registry.client_for(r)?)) };
    let (client, resolved) =
        resolve_image(global, registry, &client_for, pull, rt.handle(), image)?;
    let profile = if !want_profile {
        ProfileLookup::None
    } else if let Some(p) = super::profile::load_local(&global.root, &resolved.manifest_digest) {
        ProfileLookup::Local(p)
    } else {
        let (c, i) = (client.clone(), resolved.clone());
        ProfileLookup::Remote(
            rt.spawn(async move { super::profile::fetch_published(&c, &i).await }),
        )
    };
    let layers = index_layers(
        global,
        &client,
        rt.handle(),
        &resolved,
        image,
        progress,
        IndexSaves::Wait,
    )?;
    Ok(LazyImage {
        image: resolved,
        layers,
        client,
        profile,
        _runtime: rt,
    })
}

/// Finds or builds the index of every layer of `resolved` (local store, published
/// index, TOC, or a streaming pass, in that order), with blob readers through
/// `client` on `rt`. Shows progress bars only when `progress` is set.
pub fn index_layers(
    global: &Global,
    client: &Arc<Client>,
    rt: &tokio::runtime::Handle,
    resolved: &ResolvedImage,
    image: &str,
    progress: bool,
    saves: IndexSaves,
) -> anyhow::Result<Vec<Layer>> {
    let store = IndexStore::open(global.layout().indexes())
        .with_context(|| format!("opening the index store under {}", global.root.display()))?;
    // Layers pulled whole earlier check (and replace) published indexes.
    let whole = Store::open(&global.root)
        .with_context(|| format!("opening the store at {}", global.root.display()))?;
    let bars = MultiProgress::new();
    if !progress {
        bars.set_draw_target(ProgressDrawTarget::hidden());
    }
    let resolved_layers = resolve_layers(
        client,
        rt,
        resolved,
        &store,
        &ResolveOptions {
            progress: Some(&super::index::IndexingBars(&bars)),
            whole_layers: Some(&whole),
            save_in_background: saves == IndexSaves::Background,
            ..ResolveOptions::default()
        },
    )
    .with_context(|| format!("indexing the layers of {image}"))?;
    for l in &resolved_layers {
        for note in &l.refused {
            tracing::warn!(layer = %l.descriptor.digest, "{note}");
        }
        tracing::info!(layer = %l.descriptor.digest, source = %l.source, "layer index ready");
    }
    // A made-here image's own layers are read from the local store: no registry has
    // them before it is pushed.
    let local = super::local_image::local_layers(global, resolved);
    Ok(resolved_layers
        .into_iter()
        .zip(local)
        .map(|(l, local)| Layer {
            index: l.index,
            blob: local.unwrap_or(l.blob),
        })
        .collect())
}

/// When `run` and `mount` ask the registry for the image, as docker's `--pull`.
#[derive(
    clap::ValueEnum,
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum PullPolicy {
    /// Use the image as last resolved (by `pull` or a previous `run`), if the local store
    /// knows the reference; else ask the registry.
    #[default]
    Missing,
    /// Always resolve the reference in the registry (a moved tag is followed).
    Always,
    /// Never ask the registry for the manifest; fail if the store does not know it.
    Never,
}

/// Where [`resolve_manifest`] found an image's manifest.
pub enum FoundManifest {
    /// The local store knew the reference: manifest and config as last resolved.
    Local(Box<ResolvedImage>),
    /// Fetched from the registry now; the config is not fetched yet.
    Remote(Box<ResolvedManifest>),
}

impl FoundManifest {
    /// The image's layers, bottom first.
    pub fn layers(&self) -> &[Descriptor] {
        match self {
            FoundManifest::Local(r) => r.layers(),
            FoundManifest::Remote(m) => &m.manifest.layers,
        }
    }

    /// The manifest's digest.
    pub fn manifest_digest(&self) -> Digest {
        match self {
            FoundManifest::Local(r) => r.manifest_digest,
            FoundManifest::Remote(m) => m.manifest_digest,
        }
    }
}

/// When the indexes built for an image are saved to the index store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexSaves {
    /// Before the layers are returned (a command that may exit right after).
    Wait,
    /// On threads of their own (the daemon: the write and fsync are not on the way
    /// to the first view; see `ResolveOptions::save_in_background`).
    Background,
}

/// The manifest for `image`: from the local store (with its config) when the pull
/// policy allows and the store knows the reference (so a warm start makes no registry
/// request at all), else from the registry (platform from `registry`), its config not
/// fetched yet. `client_for` gives the client of a registry (a fresh one, or the
/// daemon's shared one). `ahead` names layers the caller expects the manifest to
/// list (containerd's labels): when the manifest is fetched, the tails of those the
/// index store has no index of are read alongside it
/// ([`skiff_proto::resolve::read_tocs_ahead`]).
pub fn resolve_manifest(
    global: &Global,
    registry: &RegistryArgs,
    client_for: &dyn Fn(&Reference) -> anyhow::Result<Arc<Client>>,
    pull: PullPolicy,
    rt: &tokio::runtime::Handle,
    image: &str,
    ahead: &[Digest],
) -> anyhow::Result<(Arc<Client>, FoundManifest)> {
    let reference = Reference::parse(image)?;
    let client = client_for(&reference)?;
    if pull != PullPolicy::Always {
        match super::inspect::load_local(global, &reference) {
            // A made-here image (commit, tag) reads the layers the store lacks from
            // the repository it was made from: its own may not have them yet. Its
            // reference then names that repository, for the layer readers.
            Ok(mut resolved) => match super::local_image::layers_source(global, &reference) {
                Some(base) => {
                    let client = client_for(&base)?;
                    resolved.reference = base;
                    return Ok((client, FoundManifest::Local(Box::new(resolved))));
                }
                None => return Ok((client, FoundManifest::Local(Box::new(resolved)))),
            },
            Err(e) if pull == PullPolicy::Never => {
                return Err(e.context("--pull never"));
            }
            Err(e) => tracing::debug!("{reference} not usable from the local store: {e:#}"),
        }
    }
    let platform = registry.platform()?;
    if !ahead.is_empty() {
        let store = IndexStore::open(global.layout().indexes())?;
        let unknown: Vec<Digest> = ahead
            .iter()
            .filter(|d| !store.path_for(d).exists())
            .copied()
            .collect();
        skiff_proto::resolve::read_tocs_ahead(&client, rt, reference.repository(), &unknown);
    }
    let manifest = rt
        .block_on(client.resolve_manifest(&reference, platform.as_ref()))
        .with_context(|| format!("resolving {reference}"))?;
    Ok((client, FoundManifest::Remote(Box::new(manifest))))
}

/// The manifest and config for `image` ([`resolve_manifest`], then the config),
/// remembered in the local store for next time.
pub fn resolve_image(
    global: &Global,
    registry: &RegistryArgs,
    client_for: &dyn Fn(&Reference) -> anyhow::Result<Arc<Client>>,
    pull: PullPolicy,
    rt: &tokio::runtime::Handle,
    image: &str,
) -> anyhow::Result<(Arc<Client>, ResolvedImage)> {
    let (client, found) = resolve_manifest(global, registry, client_for, pull, rt, image, &[])?;
    let resolved = match found {
        FoundManifest::Local(resolved) => *resolved,
        FoundManifest::Remote(manifest) => {
            let config = rt.block_on(client.fetch_config(&manifest));
            with_config(global, *manifest, config)?
        }
    };
    Ok((client, resolved))
}

/// [`resolve_image`] and [`index_layers`] in one, from a manifest `found` through
/// `client`: a registry image's config is fetched while its layers' indexes are read
/// (one round trip less before the image can be mounted).
pub fn resolve_and_index(
    global: &Global,
    client: &Arc<Client>,
    rt: &tokio::runtime::Handle,
    found: FoundManifest,
    image: &str,
    progress: bool,
    saves: IndexSaves,
) -> anyhow::Result<(ResolvedImage, Vec<Layer>)> {
    let manifest = match found {
        FoundManifest::Local(resolved) => {
            let layers = index_layers(global, client, rt, &resolved, image, progress, saves)?;
            return Ok((*resolved, layers));
        }
        FoundManifest::Remote(manifest) => *manifest,
    };
    // Indexing reads only the manifest's side of the image (its reference, layers and
    // index), so it starts before the config is in, on the image with an empty
    // config; the config is fetched and recorded in the local store meanwhile, on a
    // thread of its own (the store's writes are not on the way to the first view).
    let partial = manifest.clone().into_image(Vec::new(), Default::default());
    let (resolved, layers) = std::thread::scope(|scope| {
        let configured = scope.spawn(|| {
            let config = rt.block_on(client.fetch_config(&manifest));
            with_config(global, manifest.clone(), config)
        });
        let layers = index_layers(global, client, rt, &partial, image, progress, saves);
        let waiting = std::time::Instant::now();
        let resolved = configured.join().unwrap_or_else(|_| {
            Err(anyhow::anyhow!(
                "fetching the config of {image}: the thread panicked"
            ))
        });
        tracing::debug!(
            wait_ms = waiting.elapsed().as_secs_f64() * 1e3,
            "image config recorded"
        );
        (resolved, layers)
    });
    Ok((resolved?, layers?))
}

/// The image of `manifest` with its fetched `config`, recorded in the local store.
fn with_config(
    global: &Global,
    manifest: ResolvedManifest,
    config: Result<Bytes, skiff_proto::registry::RegistryError>,
) -> anyhow::Result<ResolvedImage> {
    let reference = manifest.reference.clone();
    let resolved = config
        .and_then(|c| manifest.with_config(c))
        .with_context(|| format!("resolving {reference}"))?;
    let store = Store::open(&global.root)?;
    super::pull::store_metadata(&store, &resolved)?;
    store.put_image(&super::pull::image_record(&reference, &resolved))?;
    Ok(resolved)
}

impl LazyImage {
    /// Runs `f` to completion on this image's async runtime.
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self._runtime.block_on(f)
    }

    /// Mount options for this image's layers with the chunk cache under the skiff root.
    pub fn mount_options(&self, global: &Global) -> MountOptions {
        let mut opts = MountOptions::new(self.layers.clone(), global.layout().cache());
        opts.fs_name = self.image.reference.to_string();
        opts
    }
}
