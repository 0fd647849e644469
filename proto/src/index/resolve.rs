//! From a resolved image to one verified [`LayerIndex`] per layer: what `skiff mount`
//! and `skiff run` call before building the merged tree.
//!
//! For each layer, in order of preference (the cheapest that works wins):
//! 1. the local [`IndexStore`] (keyed by layer digest);
//! 2. an index artifact published beside the image ([`super::artifact`]), found via the
//!    referrers API or its `sha256-<hex>` tag fallback, **in the image's own repository
//!    only** (the chunk digests in it are trusted to verify content). The artifact
//!    manifest, its `subject`, the index blob's digest and the layer it describes are
//!    all checked; anything off is refused (noted in [`ResolvedLayer::refused`]) and the
//!    next source is tried;
//! 3. the layer's own TOC (eStargz, zstd:chunked), read with Range requests;
//! 4. one streaming pass over the blob (plain tar, tar+gzip with checkpoints, tar+zstd).
//!
//! Layers are handled in parallel (bounded by [`ResolveOptions::parallel`]); what is
//! built or fetched is saved to the store. Every returned blob reader is a
//! [`RemoteBlob`] over the same [`Client`], so `client.stats()` counts all traffic.

use super::artifact::{decode_index_blob, find_layer_index, INDEX_ARTIFACT_TYPE};
use super::store::IndexStore;
use super::{open_index_with, IndexError, IndexOptions, LayerFormat, LayerIndex};
use crate::blob::BlobReader;
use crate::digest::Digest;
use crate::image::{Descriptor, Manifest, ResolvedImage};
use crate::registry::{Client, RemoteBlob};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::runtime::Handle;

/// Where a layer's index came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexSource {
    /// The local index store.
    Store,
    /// An index artifact published beside the image.
    Published,
    /// The layer's own TOC (eStargz, zstd:chunked), read with Range requests.
    Toc,
    /// Built by one streaming pass over the layer blob.
    Streamed,
}

impl std::fmt::Display for IndexSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            IndexSource::Store => "local store",
            IndexSource::Published => "published artifact",
            IndexSource::Toc => "layer TOC",
            IndexSource::Streamed => "streaming pass",
        })
    }
}

/// One layer, ready to mount.
pub struct ResolvedLayer {
    /// The layer descriptor from the manifest.
    pub descriptor: Descriptor,
    /// Its verified index.
    pub index: Arc<LayerIndex>,
    /// Raw reads of the layer blob (a [`RemoteBlob`] on the shared client).
    pub blob: Arc<dyn BlobReader>,
    /// Where the index came from.
    pub source: IndexSource,
    /// Candidate indexes that were refused before `source` was used (stored index
    /// corrupt, published index failing verification…), as messages for the user.
    pub refused: Vec<String>,
}

/// Knobs of [`resolve_layers`].
pub struct ResolveOptions<'a> {
    /// Layers handled at once (at least 1).
    pub parallel: usize,
    /// Look for an index artifact published beside the image.
    pub use_published: bool,
    /// Save indexes fetched or built to the store.
    pub save: bool,
    /// Progress bars for streaming passes (one per layer streamed), if any.
    pub progress: Option<&'a indicatif::MultiProgress>,
    /// Distance between gzip checkpoints in an index built here (uncompressed bytes).
    pub span: u64,
}

impl Default for ResolveOptions<'_> {
    fn default() -> Self {
        ResolveOptions {
            parallel: 4,
            use_published: true,
            save: true,
            progress: None,
            span: super::gzip::DEFAULT_SPAN,
        }
    }
}

/// Errors from [`resolve_layers`].
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// No source could give this layer an index.
    #[error("indexing layer {layer} of {image}: {source}")]
    Layer {
        /// The image reference.
        image: String,
        /// The layer digest.
        layer: Digest,
        /// Why the last source failed.
        #[source]
        source: Box<IndexError>,
    },
}

/// The manifests of the index artifacts published for an image, verified.
struct Published {
    artifacts: Vec<Manifest>,
    /// Why artifacts (or the lookup) were refused, for every layer's `refused`.
    problems: Vec<String>,
}

/// Resolves every layer of `image` (bottom first) to a verified index and a blob
/// reader on `client`. Blocking: call it from a thread that is **not** running the
/// tokio runtime `handle` belongs to (the readers block on `handle`).
pub fn resolve_layers(
    client: &Arc<Client>,
    handle: &Handle,
    image: &ResolvedImage,
    store: &IndexStore,
    opts: &ResolveOptions,
) -> Result<Vec<ResolvedLayer>, ResolveError> {
    let repo = image.reference.repository().to_string();
    let layers = image.layers();
    // Stored indexes first: when every layer has one, nothing else is asked.
    let mut stored: Vec<(Option<LayerIndex>, Vec<String>)> = layers
        .iter()
        .map(|l| match store.load(&l.digest) {
            Ok(Some(idx)) if idx.blob_size == l.size => (Some(idx), Vec::new()),
            Ok(Some(_)) => (
                None,
                vec![format!(
                    "stored index of {} has the wrong blob size",
                    l.digest
                )],
            ),
            Ok(None) => (None, Vec::new()),
            Err(e) => (None, vec![format!("stored index refused: {e}")]),
        })
        .collect();
    // Layers that carry their own verified TOC (eStargz, zstd:chunked) never need a
    // published index; asking the registry for one costs two round trips (referrers,
    // then the fallback tag) before any TOC is read.
    let needs_published = stored
        .iter()
        .zip(layers)
        .any(|((i, _), l)| i.is_none() && !carries_toc(l));
    let published = if opts.use_published && needs_published {
        Some(find_published(client, handle, image))
    } else {
        None
    };

    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Result<ResolvedLayer, ResolveError>>>> =
        Mutex::new((0..layers.len()).map(|_| None).collect());
    let stored_slots: Vec<Mutex<(Option<LayerIndex>, Vec<String>)>> =
        stored.drain(..).map(Mutex::new).collect();
    let workers = opts.parallel.max(1).min(layers.len().max(1));
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(layer) = layers.get(i) else { break };
                let (from_store, refused) = match stored_slots.get(i) {
                    Some(slot) => {
                        std::mem::take(&mut *slot.lock().unwrap_or_else(|e| e.into_inner()))
                    }
                    None => (None, Vec::new()),
                };
                let r = resolve_one(
                    client,
                    handle,
                    image,
                    &repo,
                    layer,
                    store,
                    opts,
                    from_store,
                    refused,
                    published.as_ref(),
                );
                let mut all = results.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(slot) = all.get_mut(i) {
                    *slot = Some(r);
                }
            });
        }
    });
    results
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .into_iter()
        .zip(layers)
        .map(|(r, l)| {
            r.unwrap_or_else(|| {
                Err(ResolveError::Layer {
                    image: image.reference.to_string(),
                    layer: l.digest,
                    source: Box::new(IndexError::Encoding {
                        what: l.digest.to_string(),
                        reason: "layer was not processed".into(),
                    }),
                })
            })
        })
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn resolve_one(
    client: &Arc<Client>,
    handle: &Handle,
    image: &ResolvedImage,
    repo: &str,
    layer: &Descriptor,
    store: &IndexStore,
    opts: &ResolveOptions,
    from_store: Option<LayerIndex>,
    mut refused: Vec<String>,
    published: Option<&Published>,
) -> Result<ResolvedLayer, ResolveError> {
    let blob: Arc<dyn BlobReader> = Arc::new(RemoteBlob::new(
        Arc::clone(client),
        repo,
        layer.digest,
        layer.size,
        handle.clone(),
    ));
    let done = |index: LayerIndex, source: IndexSource, refused: Vec<String>| {
        if opts.save && source != IndexSource::Store {
            if let Err(e) = store.save(&index) {
                tracing::warn!(layer = %layer.digest, "saving the index: {e}");
            }
        }
        ResolvedLayer {
            descriptor: layer.clone(),
            index: Arc::new(index),
            blob: Arc::clone(&blob),
            source,
            refused,
        }
    };
    if let Some(index) = from_store {
        return Ok(done(index, IndexSource::Store, refused));
    }
    if let Some(p) = published {
        refused.extend(p.problems.iter().cloned());
        // Newest first: the fallback tag's index lists artifacts in push order.
        for artifact in p.artifacts.iter().rev() {
            match fetch_published(client, handle, repo, artifact, layer) {
                Ok(Some(index)) => return Ok(done(index, IndexSource::Published, refused)),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(layer = %layer.digest, "published index refused: {e}");
                    refused.push(format!("published index refused: {e}"));
                }
            }
        }
    }
    let err = |source| ResolveError::Layer {
        image: image.reference.to_string(),
        layer: layer.digest,
        source: Box::new(source),
    };
    let oci = oci_descriptor(layer).map_err(err)?;
    let bar = opts.progress.map(|m| {
        let bar = m.add(indicatif::ProgressBar::new(layer.size));
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{prefix:.bold} indexing [{bar:30}] {bytes}/{total_bytes} {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_prefix(layer.digest.hex().get(..12).unwrap_or_default().to_string());
        bar
    });
    let progress = bar.as_ref().map(super::bar_progress);
    let build_opts = IndexOptions {
        progress: progress.as_ref().map(|p| p as &dyn Fn(u64)),
        span: opts.span,
        ..IndexOptions::default()
    };
    let built = open_index_with(&oci, blob.as_ref(), &build_opts);
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let index = built.map_err(err)?;
    let source = match index.format {
        LayerFormat::Estargz | LayerFormat::ZstdChunked => IndexSource::Toc,
        _ => IndexSource::Streamed,
    };
    Ok(done(index, source, refused))
}

/// Lists and verifies the index artifacts published for `image` in its repository.
/// Failures are not fatal: they are reported and the other sources tried.
fn find_published(client: &Arc<Client>, handle: &Handle, image: &ResolvedImage) -> Published {
    let repo = image.reference.repository();
    let mut problems = Vec::new();
    let listed = match handle.block_on(client.fetch_artifacts(
        repo,
        image.manifest_digest,
        INDEX_ARTIFACT_TYPE,
    )) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!("looking up published indexes of {}: {e}", image.reference);
            problems.push(format!("looking up published indexes: {e}"));
            Vec::new()
        }
    };
    let mut artifacts = Vec::new();
    for (d, manifest) in listed {
        match manifest {
            Ok(m) => artifacts.push(m),
            Err(e) => {
                tracing::warn!("index artifact {} refused: {e}", d.digest);
                problems.push(format!("index artifact {} refused: {e}", d.digest));
            }
        }
    }
    Published {
        artifacts,
        problems,
    }
}

/// Whether `layer` is read through a TOC inside its blob: the same test
/// [`super::open_index_with`] makes to pick the eStargz or zstd:chunked reader.
fn carries_toc(layer: &Descriptor) -> bool {
    let annotations: std::collections::HashMap<String, String> =
        layer.annotations.clone().into_iter().collect();
    super::estargz::is_estargz(&annotations) || super::zstd_chunked::is_zstd_chunked(&annotations)
}

/// The index of `layer` from a verified artifact manifest: `None` if the artifact
/// has none for it; an error if the one it has fails verification.
fn fetch_published(
    client: &Client,
    handle: &Handle,
    repo: &str,
    artifact: &Manifest,
    layer: &Descriptor,
) -> Result<Option<LayerIndex>, IndexError> {
    let Some(d) = find_layer_index(artifact, &layer.digest) else {
        return Ok(None);
    };
    let digest = d.digest;
    // The client verifies the blob against `digest`.
    let bytes = handle
        .block_on(client.fetch_artifact_blob(repo, d, super::store::MAX_DECODED))
        .map_err(|e| IndexError::Encoding {
            what: format!("published index {digest} of layer {}", layer.digest),
            reason: e.to_string(),
        })?;
    let index = decode_index_blob(&layer.digest, &bytes)?;
    if index.blob_size != layer.size {
        return Err(IndexError::Encoding {
            what: format!("published index {digest} of layer {}", layer.digest),
            reason: format!(
                "describes a blob of {} bytes, the layer has {}",
                index.blob_size, layer.size
            ),
        });
    }
    Ok(Some(index))
}

/// The same descriptor as oci-spec's type (what [`super::open_index`] takes).
pub fn oci_descriptor(d: &Descriptor) -> Result<oci_spec::image::Descriptor, IndexError> {
    serde_json::to_value(d)
        .and_then(serde_json::from_value)
        .map_err(|e| IndexError::Encoding {
            what: format!("descriptor of {}", d.digest),
            reason: e.to_string(),
        })
}

/// Directory of the index store under a skiff root (`<root>/indexes`).
pub const INDEX_STORE_DIR: &str = "indexes";

/// Opens (creating it if needed) the index store under the skiff root `root`.
pub fn open_root_index_store(root: &std::path::Path) -> Result<IndexStore, IndexError> {
    IndexStore::open(root.join(INDEX_STORE_DIR))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn only_layers_with_an_announced_toc_skip_the_published_lookup() {
        let with = |key: &str| {
            let mut d = Descriptor::of("application/vnd.oci.image.layer.v1.tar+gzip", b"l");
            d.annotations = BTreeMap::from([(key.to_string(), "x".to_string())]);
            d
        };
        assert!(carries_toc(&with(
            super::super::estargz::TOC_DIGEST_ANNOTATION
        )));
        for key in super::super::zstd_chunked::POSITION_ANNOTATIONS {
            assert!(carries_toc(&with(key)), "{key}");
        }
        assert!(!carries_toc(&with("org.opencontainers.image.title")));
        assert!(!carries_toc(&Descriptor::of(
            "application/vnd.oci.image.layer.v1.tar+gzip",
            b"l"
        )));
    }

    #[test]
    fn oci_descriptor_keeps_media_type_digest_size_and_annotations() {
        let mut d = Descriptor::of("application/vnd.oci.image.layer.v1.tar+gzip", b"layer");
        d.annotations = BTreeMap::from([(
            super::super::estargz::TOC_DIGEST_ANNOTATION.to_string(),
            Digest::of(b"toc").to_string(),
        )]);
        let o = oci_descriptor(&d).unwrap();
        assert_eq!(o.media_type().to_string(), d.media_type);
        assert_eq!(o.digest().to_string(), d.digest.to_string());
        assert_eq!(o.size(), 5);
        assert_eq!(
            o.annotations()
                .as_ref()
                .and_then(|a| a.get(super::super::estargz::TOC_DIGEST_ANNOTATION))
                .cloned(),
            Some(Digest::of(b"toc").to_string())
        );
    }

    #[test]
    fn root_store_lives_under_indexes() {
        let dir = tempfile::tempdir().unwrap();
        open_root_index_store(dir.path()).unwrap();
        assert!(dir.path().join(INDEX_STORE_DIR).is_dir());
    }
}
