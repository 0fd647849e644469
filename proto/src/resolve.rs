//! From a resolved image to one verified [`LayerIndex`] per layer: what `skiff mount`
//! and `skiff run` call before building the merged tree.
//!
//! For each layer, in order of preference (the cheapest that works wins):
//! 1. the local [`IndexStore`]: an index derived from the layer itself (keyed by layer
//!    digest), else one published for this image and stored apart by its
//!    [`Publisher`] ([`IndexStore::load_published`]): for an image whose image index
//!    binds index artifacts, only those artifacts' indexes (keyed by artifact digest);
//!    otherwise those published in this image's repository. A published index never
//!    serves another repository's images, nor replaces the one an image binds;
//! 2. an index artifact published beside the image ([`crate::index::artifact`]), found
//!    through [`Client::fetch_artifacts`] (referrers API or its `sha256-<hex>` tag
//!    fallback), **in the image's own repository only** (the chunk digests in it are
//!    trusted to verify content). The artifact manifest, its `subject`, the index
//!    blob's digest and the layer it describes are all checked; anything off is
//!    refused (noted in [`ResolvedLayer::refused`]) and the next source is tried;
//! 3. the layer's own TOC (eStargz, zstd:chunked), read with Range requests;
//! 4. one streaming pass over the blob (plain tar, tar+gzip with checkpoints, tar+zstd).
//!
//! A published index (1 or 2) whose whole layer is in the local image store
//! ([`ResolveOptions::whole_layers`], after `skiff pull`) is checked against it
//! ([`crate::index::verify`]) and replaced by the layer's own index; one that does not
//! match is refused for good ([`IndexStore::refuse_published`]).
//!
//! Layers are handled in parallel (bounded by [`ResolveOptions::parallel`]); what is
//! built or fetched is saved to the store. Every returned blob reader is a
//! [`RemoteBlob`] over the same [`Client`], so `client.stats()` counts all traffic.
//!
//! This is orchestration, not a format: it talks to the registry and blocks on a tokio
//! runtime, which is why it lives beside [`crate::index`] rather than in it. Streaming
//! passes report progress through [`ResolveProgress`] (the CLI draws bars with it);
//! failures say which step failed ([`ResolveError`]).

use crate::blob::BlobReader;
use crate::digest::Digest;
use crate::image::{Descriptor, Manifest, ResolvedImage};
use crate::index::artifact::{decode_index_blob, find_layer_index, INDEX_ARTIFACT_TYPE};
use crate::index::store::{IndexStore, Publisher, MAX_DECODED};
use crate::index::verify::{check_published, VerifyError};
use crate::index::{estargz, gzip, open_index_with, zstd_chunked};
use crate::index::{IndexError, IndexOptions, LayerFormat, LayerIndex};
use crate::registry::{BlobTail, Client, RegistryError, RemoteBlob};
use crate::store::Store;
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
    /// An index artifact the image index binds to the manifest (`skiff index --bind`).
    Bound,
    /// The layer's own TOC (eStargz, zstd:chunked), read with Range requests.
    Toc,
    /// Built by one streaming pass over the layer blob.
    Streamed,
    /// Derived from the whole layer in the local image store (which a published index
    /// was checked against).
    LocalLayer,
}

impl std::fmt::Display for IndexSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            IndexSource::Store => "local store",
            IndexSource::Published => "published artifact",
            IndexSource::Bound => "bound in the image index",
            IndexSource::Toc => "layer TOC",
            IndexSource::Streamed => "streaming pass",
            IndexSource::LocalLayer => "whole layer in the local store",
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
    /// The index was taken from an artifact published in the image's repository (now
    /// or earlier, from the store's published area) rather than derived from the
    /// layer here: `skiff index --push` must not republish it as its own.
    pub published: bool,
    /// A published index was checked against the whole layer: `Some(true)` it
    /// matched, `Some(false)` it did not (and was refused); `None` not checked.
    pub matched_layer: Option<bool>,
}

/// Progress of the streaming passes [`resolve_layers`] makes, for a UI to show
/// (the CLI turns it into `indicatif` bars). Called from the worker threads.
pub trait ResolveProgress: Sync {
    /// A streaming pass over `layer` (of `layer.size` blob bytes) starts. The
    /// returned callback gets the blob bytes consumed so far; it is dropped when the
    /// pass ends, successful or not.
    fn streaming<'a>(&'a self, layer: &Descriptor) -> Box<dyn Fn(u64) + 'a>;
}

/// Knobs of [`resolve_layers`].
pub struct ResolveOptions<'a> {
    /// Layers handled at once (at least 1).
    pub parallel: usize,
    /// Look for an index artifact published beside the image.
    pub use_published: bool,
    /// Save indexes fetched or built to the store.
    pub save: bool,
    /// Save them on a thread of their own rather than before the layer is returned:
    /// for a long-lived daemon, the store's write and fsync (5 ms for a Debian base
    /// layer's index, more on a busy disk) are then not on the way to the first
    /// view. A save cut short by the process's end only costs the next start a TOC
    /// read.
    pub save_in_background: bool,
    /// Told about streaming passes (one per layer streamed), if anyone listens.
    pub progress: Option<&'a dyn ResolveProgress>,
    /// Distance between gzip checkpoints in an index built here (uncompressed bytes).
    pub span: u64,
    /// Where whole, digest-verified layer blobs may be (the local image store, after
    /// `skiff pull`): a published index of a layer found there is checked against
    /// the layer and replaced by the layer's own index (see
    /// [`crate::index::verify`]).
    pub whole_layers: Option<&'a Store>,
}

impl Default for ResolveOptions<'_> {
    fn default() -> Self {
        ResolveOptions {
            parallel: 4,
            use_published: true,
            save: true,
            save_in_background: false,
            progress: None,
            span: gzip::DEFAULT_SPAN,
            whole_layers: None,
        }
    }
}

/// What failed while resolving layers, by step. Only [`ResolveError::Toc`],
/// [`ResolveError::Stream`] and [`ResolveError::NotProcessed`] end
/// [`resolve_layers`]; the others are why a published index was passed over, and end
/// up as messages in [`ResolvedLayer::refused`].
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// Listing the index artifacts published beside the image failed.
    #[error("looking up published indexes: {0}")]
    Referrers(#[source] Box<RegistryError>),
    /// A listed index artifact's manifest could not be fetched or was not one.
    #[error("index artifact {digest} refused: {source}")]
    Artifact {
        /// The artifact manifest's digest.
        digest: Digest,
        /// What went wrong fetching or checking it.
        #[source]
        source: Box<RegistryError>,
    },
    /// Fetching a published index blob failed (network, size, digest).
    #[error("fetching published index {digest} of layer {layer}: {source}")]
    IndexFetch {
        /// The index blob.
        digest: Digest,
        /// The layer it describes.
        layer: Digest,
        /// The registry error.
        #[source]
        source: Box<RegistryError>,
    },
    /// A fetched published index does not decode or does not describe the layer.
    #[error("published index {digest} of layer {layer}: {source}")]
    IndexInvalid {
        /// The index blob.
        digest: Digest,
        /// The layer.
        layer: Digest,
        /// Why it was refused.
        #[source]
        source: Box<IndexError>,
    },
    /// Reading the layer's own TOC (eStargz, zstd:chunked) with Range requests failed.
    #[error("reading the TOC of layer {layer} of {image}: {source}")]
    Toc {
        /// The image reference.
        image: String,
        /// The layer digest.
        layer: Digest,
        /// Why.
        #[source]
        source: Box<IndexError>,
    },
    /// The streaming pass over the layer blob failed (or the layer cannot be indexed).
    #[error("indexing layer {layer} of {image}: {source}")]
    Stream {
        /// The image reference.
        image: String,
        /// The layer digest.
        layer: Digest,
        /// Why.
        #[source]
        source: Box<IndexError>,
    },
    /// A worker ended without handling the layer (a bug, or a panic in a worker).
    #[error("indexing layer {layer} of {image}: layer was not processed")]
    NotProcessed {
        /// The image reference.
        image: String,
        /// The layer digest.
        layer: Digest,
    },
}

/// The manifests of the index artifacts published for an image, verified.
struct Published {
    /// Whether they are bound in the image index rather than found as referrers.
    bound: bool,
    /// Each artifact manifest with its digest.
    artifacts: Vec<(Digest, Manifest)>,
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
    let bound = image.bound_index_artifacts();
    // Whose published indexes this image takes: those its image index binds, else its
    // repository's.
    let publishers: Vec<Publisher> = match bound.is_empty() {
        true => vec![Publisher::Repository(repo.clone())],
        false => bound.iter().map(|d| Publisher::Bound(d.digest)).collect(),
    };
    // Stored indexes first: when every layer has one, nothing else is asked.
    let mut stored: Vec<(Option<(LayerIndex, Option<Publisher>)>, Vec<String>)> = layers
        .iter()
        .map(|l| {
            let derived = store.load(&l.digest);
            let found = match derived {
                Ok(None) if opts.use_published => load_published(store, &l.digest, &publishers),
                other => other.map(|i| i.map(|i| (i, None))),
            };
            match found {
                Ok(Some((idx, publisher))) if idx.blob_size == l.size => {
                    (Some((idx, publisher)), Vec::new())
                }
                Ok(Some(_)) => (
                    None,
                    vec![format!(
                        "stored index of {} has the wrong blob size",
                        l.digest
                    )],
                ),
                Ok(None) => (None, Vec::new()),
                Err(e) => (None, vec![format!("stored index refused: {e}")]),
            }
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
        Some(match bound.is_empty() {
            true => find_published(client, handle, image),
            false => fetch_bound(client, handle, image, &bound),
        })
    } else {
        None
    };

    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Result<ResolvedLayer, ResolveError>>>> =
        Mutex::new((0..layers.len()).map(|_| None).collect());
    let stored_slots: Vec<Mutex<(Option<(LayerIndex, Option<Publisher>)>, Vec<String>)>> =
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
                Err(ResolveError::NotProcessed {
                    image: image.reference.to_string(),
                    layer: l.digest,
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
    from_store: Option<(LayerIndex, Option<Publisher>)>,
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
    let done = |index: LayerIndex,
                source: IndexSource,
                refused: Vec<String>,
                publisher: Option<&Publisher>,
                matched_layer| {
        let index = Arc::new(index);
        if opts.save && source != IndexSource::Store {
            let (store, saving, publisher) =
                (store.clone(), Arc::clone(&index), publisher.cloned());
            let digest = layer.digest;
            let save = move || {
                let saved = match &publisher {
                    Some(p) => store.save_published(&saving, p),
                    None => store.save(&saving),
                };
                if let Err(e) = saved {
                    tracing::warn!(layer = %digest, "saving the index: {e}");
                }
            };
            if opts.save_in_background {
                let spawned = std::thread::Builder::new()
                    .name("skiff-index-save".into())
                    .spawn(save);
                if let Err(e) = spawned {
                    tracing::warn!(layer = %digest, "saving the index: no thread: {e}");
                }
            } else {
                save();
            }
        }
        ResolvedLayer {
            descriptor: layer.clone(),
            index,
            blob: Arc::clone(&blob),
            source,
            refused,
            published: publisher.is_some(),
            matched_layer,
        }
    };
    // A published index meets the whole layer here when the store has it.
    let confirm = |index: LayerIndex,
                   source: IndexSource,
                   publisher: &Publisher,
                   refused: &mut Vec<String>| {
        match check_whole_layer(&index, layer, opts.whole_layers, store, publisher, refused) {
            Some((derived, matched)) => done(
                derived,
                IndexSource::LocalLayer,
                std::mem::take(refused),
                None,
                Some(matched),
            ),
            None => done(
                index,
                source,
                std::mem::take(refused),
                Some(publisher),
                None,
            ),
        }
    };
    if let Some((index, publisher)) = from_store {
        if let Some(publisher) = publisher {
            return Ok(confirm(index, IndexSource::Store, &publisher, &mut refused));
        }
        return Ok(done(index, IndexSource::Store, refused, None, None));
    }
    if let Some(p) = published {
        refused.extend(p.problems.iter().cloned());
        // Newest first: the fallback tag's index lists artifacts in push order.
        for (digest, artifact) in p.artifacts.iter().rev() {
            let publisher = match p.bound {
                true => Publisher::Bound(*digest),
                false => Publisher::Repository(repo.to_string()),
            };
            if let Some(why) = store.published_refusal(&layer.digest, &publisher) {
                let note = format!("indexes of this layer from {publisher} are refused: {why}");
                if !refused.contains(&note) {
                    refused.push(note);
                }
                continue;
            }
            match fetch_published(client, handle, repo, artifact, layer) {
                Ok(Some(index)) => {
                    let source = match p.bound {
                        true => IndexSource::Bound,
                        false => IndexSource::Published,
                    };
                    return Ok(confirm(index, source, &publisher, &mut refused));
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(layer = %layer.digest, "published index refused: {e}");
                    refused.push(format!("published index refused: {e}"));
                }
            }
        }
    }
    let (image_name, digest) = (image.reference.to_string(), layer.digest);
    let err = |source: IndexError| {
        let source = Box::new(source);
        if carries_toc(layer) {
            ResolveError::Toc {
                image: image_name.clone(),
                layer: digest,
                source,
            }
        } else {
            ResolveError::Stream {
                image: image_name.clone(),
                layer: digest,
                source,
            }
        }
    };
    let oci = layer.to_oci().map_err(|e| {
        err(IndexError::Encoding {
            what: format!("descriptor of {}", layer.digest),
            reason: e.to_string(),
        })
    })?;
    let progress = opts.progress.map(|p| p.streaming(layer));
    let build_opts = IndexOptions {
        progress: progress.as_deref(),
        span: opts.span,
        ..IndexOptions::default()
    };
    let started = std::time::Instant::now();
    let built = open_index_with(&oci, blob.as_ref(), &build_opts);
    drop(progress);
    let index = built.map_err(err)?;
    let built_ms = started.elapsed().as_millis() as u64;
    let source = match index.format {
        LayerFormat::Estargz | LayerFormat::ZstdChunked => IndexSource::Toc,
        _ => IndexSource::Streamed,
    };
    let layer = done(index, source, refused, None, None);
    let ms = started.elapsed().as_millis() as u64;
    tracing::debug!(layer = %layer.descriptor.digest, built_ms, ms, "layer index built");
    Ok(layer)
}

/// Checks the published `index` of `layer` against the whole layer when `whole`
/// holds it. Returns the layer's own index to use instead and whether the published
/// one matched, or `None` to keep the published one (no whole layer here, or it
/// could not be read). A published index that lies is refused for good.
fn check_whole_layer(
    index: &LayerIndex,
    layer: &Descriptor,
    whole: Option<&Store>,
    store: &IndexStore,
    publisher: &Publisher,
    refused: &mut Vec<String>,
) -> Option<(LayerIndex, bool)> {
    let whole = whole.filter(|w| w.has_blob(&layer.digest, layer.size))?;
    let checked = whole
        .open_blob(&layer.digest)
        .map_err(|e| e.to_string())
        .and_then(|blob| {
            let oci = layer.to_oci().map_err(|e| e.to_string())?;
            Ok(check_published(index, &oci, &blob))
        });
    match checked {
        Ok(Ok(derived)) => {
            tracing::info!(layer = %layer.digest, %publisher, "published index matches the whole layer");
            Some((derived, true))
        }
        Ok(Err(VerifyError::Differs {
            layer: digest,
            differences,
            derived,
        })) => {
            let reason = format!(
                "published index does not match the layer: {}",
                differences.join("; ")
            );
            tracing::error!(layer = %digest, %publisher, "{reason}; using the layer's own index");
            if let Err(e) = store.refuse_published(&digest, publisher, &reason) {
                tracing::warn!(layer = %digest, "recording the refusal: {e}");
            }
            refused.push(reason);
            Some((*derived, false))
        }
        Ok(Err(e)) => {
            tracing::warn!(layer = %layer.digest, "{e}");
            None
        }
        Err(e) => {
            tracing::warn!(layer = %layer.digest, "reading the whole layer to check its published index: {e}");
            None
        }
    }
}

/// The first index of `blob` stored from one of `publishers` (in order).
fn load_published(
    store: &IndexStore,
    blob: &Digest,
    publishers: &[Publisher],
) -> Result<Option<(LayerIndex, Option<Publisher>)>, IndexError> {
    for publisher in publishers {
        if let Some(index) = store.load_published(blob, publisher)? {
            return Ok(Some((index, Some(publisher.clone()))));
        }
    }
    Ok(None)
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
            let e = ResolveError::Referrers(Box::new(e));
            tracing::warn!("{}: {e}", image.reference);
            problems.push(e.to_string());
            Vec::new()
        }
    };
    let mut artifacts = Vec::new();
    for (d, manifest) in listed {
        match manifest {
            Ok(m) => artifacts.push((d.digest, m)),
            Err(source) => {
                let e = ResolveError::Artifact {
                    digest: d.digest,
                    source: Box::new(source),
                };
                tracing::warn!("{e}");
                problems.push(e.to_string());
            }
        }
    }
    Published {
        bound: false,
        artifacts,
        problems,
    }
}

/// Fetches the index artifacts the image index binds to the manifest (`bound`, from
/// [`ResolvedImage::bound_index_artifacts`]): by digest, so verified by it, and
/// checked to be index artifacts about this manifest.
fn fetch_bound(
    client: &Arc<Client>,
    handle: &Handle,
    image: &ResolvedImage,
    bound: &[Descriptor],
) -> Published {
    let repo = image.reference.repository();
    let mut artifacts = Vec::new();
    let mut problems = Vec::new();
    for d in bound {
        let fetched = handle
            .block_on(client.get_manifest(repo, &d.digest.to_string()))
            .and_then(|(bytes, _, _)| {
                serde_json::from_slice::<Manifest>(&bytes).map_err(|e| RegistryError::BadResponse {
                    url: format!("{repo}@{}", d.digest),
                    message: format!("bound index artifact is not a manifest: {e}"),
                })
            });
        match fetched {
            Ok(m)
                if m.artifact_type.as_deref() == Some(INDEX_ARTIFACT_TYPE)
                    && m.subject.as_ref().map(|s| s.digest) == Some(image.manifest_digest) =>
            {
                artifacts.push((d.digest, m))
            }
            Ok(_) => problems.push(format!(
                "bound artifact {} is not a layer index of {}",
                d.digest, image.manifest_digest
            )),
            Err(source) => {
                let e = ResolveError::Artifact {
                    digest: d.digest,
                    source: Box::new(source),
                };
                tracing::warn!("{e}");
                problems.push(e.to_string());
            }
        }
    }
    Published {
        bound: true,
        artifacts,
        problems,
    }
}

/// Whether `layer` is read through a TOC inside its blob: the same test
/// [`open_index_with`] makes to pick the eStargz or zstd:chunked reader.
pub fn carries_toc(layer: &Descriptor) -> bool {
    let annotations: std::collections::HashMap<String, String> =
        layer.annotations.clone().into_iter().collect();
    estargz::is_estargz(&annotations) || zstd_chunked::is_zstd_chunked(&annotations)
}

/// How much of each layer's end [`read_tocs_ahead`] asks for first: the footer and a
/// small TOC (node's layer has a 32 KB TOC); a larger one (python's 88 KB, a Debian
/// base layer's 330 KB) takes a second read of exactly the rest.
pub const TOC_PROBE: u64 = 64 << 10;
/// Largest TOC [`read_tocs_ahead`] reads; a larger one is read once the manifest is in.
const MAX_TOC_AHEAD: u64 = 8 << 20;

/// Starts reading the end of each of `layers` (blob digests in `repository`) on
/// `handle`, before the image's manifest has been fetched: the last [`TOC_PROBE`]
/// bytes with a suffix Range (no size needed) and, when they end in an eStargz
/// footer, the rest of its TOC. Each layer's [`RemoteBlob`] takes its tail when its
/// index is built ([`BlobReader::tail_read_ahead`]), so the TOC no longer waits one
/// round trip for the manifest, then for a tail read sized by guess (which read 400
/// KB for a 330 KB TOC and 600 KB for a 146 KB one). The manifest still decides:
/// a tail is used only for a layer of the size it gives, and the TOC is verified
/// against its annotation. For a layer without a TOC the probe's bytes are wasted.
pub fn read_tocs_ahead(client: &Arc<Client>, handle: &Handle, repository: &str, layers: &[Digest]) {
    for &digest in layers {
        let Some(promise) = client.begin_tail_ahead(repository, digest) else {
            continue;
        };
        let (client, repository) = (Arc::clone(client), repository.to_string());
        handle.spawn(async move {
            let tail = toc_ahead(&client, &repository, digest).await;
            if let Err(e) = &tail {
                tracing::debug!(layer = %digest, "reading the layer's tail ahead: {e}");
            }
            promise.fulfil(tail.ok());
        });
    }
}

/// The tail of blob `digest` from its eStargz TOC on (just the probe if it is not
/// eStargz, or the rest cannot be read).
async fn toc_ahead(
    client: &Client,
    repository: &str,
    digest: Digest,
) -> Result<BlobTail, RegistryError> {
    let tail = client.get_blob_tail(repository, digest, TOC_PROBE).await?;
    let Ok((toc_offset, _)) = estargz::parse_footer(&tail.bytes) else {
        return Ok(tail);
    };
    if toc_offset >= tail.offset || tail.offset - toc_offset > MAX_TOC_AHEAD {
        return Ok(tail);
    }
    let head = match client
        .get_blob_range(repository, digest, toc_offset, tail.offset - toc_offset)
        .await
    {
        Ok(head) => head,
        Err(e) => {
            tracing::debug!(layer = %digest, "reading the TOC ahead: {e}");
            return Ok(tail);
        }
    };
    let mut bytes = bytes::BytesMut::with_capacity(head.len() + tail.bytes.len());
    bytes.extend_from_slice(&head);
    bytes.extend_from_slice(&tail.bytes);
    Ok(BlobTail {
        blob_size: tail.blob_size,
        offset: toc_offset,
        bytes: bytes.freeze(),
    })
}

/// The index of `layer` from a verified artifact manifest: `None` if the artifact
/// has none for it; an error if the one it has fails verification.
fn fetch_published(
    client: &Client,
    handle: &Handle,
    repo: &str,
    artifact: &Manifest,
    layer: &Descriptor,
) -> Result<Option<LayerIndex>, ResolveError> {
    let Some(d) = find_layer_index(artifact, &layer.digest) else {
        return Ok(None);
    };
    // The client verifies the blob against its digest.
    let bytes = handle
        .block_on(client.fetch_artifact_blob(repo, d, MAX_DECODED))
        .map_err(|source| ResolveError::IndexFetch {
            digest: d.digest,
            layer: layer.digest,
            source: Box::new(source),
        })?;
    let invalid = |source| ResolveError::IndexInvalid {
        digest: d.digest,
        layer: layer.digest,
        source: Box::new(source),
    };
    let index = decode_index_blob(&layer.digest, &bytes).map_err(invalid)?;
    if index.blob_size != layer.size {
        return Err(invalid(IndexError::Encoding {
            what: format!("published index {} of layer {}", d.digest, layer.digest),
            reason: format!(
                "describes a blob of {} bytes, the layer has {}",
                index.blob_size, layer.size
            ),
        }));
    }
    Ok(Some(index))
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
        assert!(carries_toc(&with(estargz::TOC_DIGEST_ANNOTATION)));
        for key in zstd_chunked::POSITION_ANNOTATIONS {
            assert!(carries_toc(&with(key)), "{key}");
        }
        assert!(!carries_toc(&with("org.opencontainers.image.title")));
        assert!(!carries_toc(&Descriptor::of(
            "application/vnd.oci.image.layer.v1.tar+gzip",
            b"l"
        )));
    }
}
