//! Images made on this machine (`skiff commit`, `skiff tag`) and which image each
//! container was started from: what `commit`, `push`, `tag`, `rmi` and `run` share.
//!
//! A made-here image is an ordinary record in the local store whose
//! [`ImageRecord::base`] names the repository that serves the layers the store does
//! not hold (the lazily read layers of the image it was made from). Running one
//! ([`layers_source`], [`local_layers`]) reads those layers from there and every
//! other layer from the local store, so it runs before it is pushed.

use super::Global;
use anyhow::Context;
use serde::{Deserialize, Serialize};
use skiff_proto::blob::BlobReader;
use skiff_proto::digest::Digest;
use skiff_proto::image::{self, Descriptor, Manifest, ResolvedImage};
use skiff_proto::index::store::IndexStore;
use skiff_proto::index::{open_index_with, IndexOptions};
use skiff_proto::reference::Reference;
use skiff_proto::store::{ContainerPaths, ImageRecord, Store};
use std::path::PathBuf;
use std::sync::Arc;

/// Name of the file in a container's directory saying which image it runs.
const CONTAINER_IMAGE_FILE: &str = "image.json";

/// The `created_by` of the history entry `skiff commit` writes for its layer: how
/// `skiff push` tells the layers skiff made from the base image's.
pub const COMMIT_CREATED_BY: &str = "skiff commit";

/// Which image a container was started from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ContainerImage {
    /// The reference as given to `skiff run`, normalized.
    pub reference: String,
    /// The manifest the container's view was built from, when known (a run through
    /// the daemon does not learn it; then the store's record of `reference` says).
    #[serde(with = "skiff_proto::digest::as_text::option", default)]
    pub manifest_digest: Option<Digest>,
}

fn image_file(paths: &ContainerPaths) -> PathBuf {
    paths.dir().join(CONTAINER_IMAGE_FILE)
}

/// Notes in the container's directory that it runs `reference` (manifest `manifest`).
/// A failure is logged, not fatal: the container runs anyway, only `commit` and
/// `rmi` will not know its image.
pub fn remember_container_image(paths: &ContainerPaths, reference: &str, manifest: Option<Digest>) {
    let reference = Reference::parse(reference)
        .map(|r| r.to_string())
        .unwrap_or_else(|_| reference.to_string());
    let record = ContainerImage {
        reference,
        manifest_digest: manifest,
    };
    let path = image_file(paths);
    let written = serde_json::to_vec_pretty(&record)
        .map_err(std::io::Error::other)
        .and_then(|json| skiff_proto::store::write_private(&path, &json));
    if let Err(e) = written {
        tracing::warn!(path = %path.display(), "recording the container's image: {e}");
    }
}

/// The image container `paths` was started from, if it was started from one.
pub fn container_image(paths: &ContainerPaths) -> Option<ContainerImage> {
    let data = std::fs::read(image_file(paths)).ok()?;
    serde_json::from_slice(&data).ok()
}

/// The manifest digest of a container's image: the one recorded at start, else the
/// one the store's record of its reference names now.
pub fn container_manifest(store: &Store, image: &ContainerImage) -> Option<Digest> {
    image.manifest_digest.or_else(|| {
        store
            .image(&image.reference)
            .ok()
            .flatten()
            .map(|r| r.manifest_digest)
    })
}

/// A made-here record with manifest `manifest`, if the store has one.
pub fn made_here(store: &Store, manifest: &Digest) -> Option<ImageRecord> {
    store
        .images()
        .ok()?
        .into_iter()
        .find(|r| r.manifest_digest == *manifest && r.base.is_some())
}

/// The manifest, config and platform of the stored image with manifest `manifest`,
/// named `reference`.
pub fn load_by_digest(
    store: &Store,
    reference: &Reference,
    manifest: &Digest,
    platform: &str,
) -> anyhow::Result<ResolvedImage> {
    let manifest_bytes = store
        .read_blob(manifest)
        .with_context(|| format!("reading manifest {manifest} from the local store"))?;
    let parsed = Manifest::from_slice("stored manifest", &manifest_bytes)?;
    let config_bytes = store.read_blob(&parsed.config.digest).with_context(|| {
        format!(
            "reading config {} from the local store",
            parsed.config.digest
        )
    })?;
    let config = image::parse_config(parsed.config.digest, &config_bytes)?;
    Ok(ResolvedImage {
        reference: reference.clone(),
        index_digest: None,
        index_bytes: None,
        manifest_digest: *manifest,
        manifest_media_type: parsed
            .media_type
            .clone()
            .unwrap_or_else(|| image::MEDIA_OCI_MANIFEST.to_string()),
        manifest_bytes,
        manifest: parsed,
        platform: platform
            .parse()
            .unwrap_or_else(|_| image::config_platform(&config)),
        config_bytes,
        config,
    })
}

/// For a made-here image just loaded from the local store: the reference whose
/// repository serves its layers (`record.base`), else `None` (a pulled image is read
/// from its own repository).
pub fn layers_source(global: &Global, reference: &Reference) -> Option<Reference> {
    let store = Store::open(&global.root).ok()?;
    let record = store.image(&reference.to_string()).ok()??;
    match Reference::parse(record.base.as_deref()?) {
        Ok(base) => Some(base),
        Err(e) => {
            tracing::warn!(%reference, "ignoring the recorded layer source: {e}");
            None
        }
    }
}

/// Readers of the layers of made-here image `resolved` that the local store holds
/// whole (its own new layers), by position; `None` where the registry serves it.
/// All `None` for a pulled image.
pub fn local_layers(global: &Global, resolved: &ResolvedImage) -> Vec<Option<Arc<dyn BlobReader>>> {
    let none = || vec![None; resolved.layers().len()];
    let Ok(store) = Store::open(&global.root) else {
        return none();
    };
    if made_here(&store, &resolved.manifest_digest).is_none() {
        return none();
    }
    resolved
        .layers()
        .iter()
        .map(|l| {
            if !store.has_blob(&l.digest, l.size) {
                return None;
            }
            match store.open_blob(&l.digest) {
                Ok(b) => Some(Arc::new(b) as Arc<dyn BlobReader>),
                Err(e) => {
                    tracing::warn!(layer = %l.digest, "reading the stored layer: {e}");
                    None
                }
            }
        })
        .collect()
}

/// Builds and keeps the lazy-read index of `layer`, a blob the local store holds
/// whole (a committed layer, or its eStargz form made by `skiff push`), so a run
/// finds the index locally whether or not a registry has the layer yet.
pub fn save_layer_index(global: &Global, store: &Store, layer: &Descriptor) -> anyhow::Result<()> {
    let blob = store.open_blob(&layer.digest)?;
    let oci = layer.to_oci()?;
    let index = open_index_with(&oci, &blob, &IndexOptions::default())
        .with_context(|| format!("indexing layer {}", layer.digest))?;
    IndexStore::open(global.layout().indexes())?.save(&index)?;
    Ok(())
}

/// Seconds since the epoch, now.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
