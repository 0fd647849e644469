//! Publishing layer indexes as an OCI artifact beside the image (as SOCI does), so a
//! lazy mount on another machine can skip the streaming pass over tar+gzip layers.
//!
//! The artifact is an image manifest with:
//! - `artifactType` [`INDEX_ARTIFACT_TYPE`];
//! - `config`: the OCI empty descriptor (`application/vnd.oci.empty.v1+json`, `{}`);
//! - `layers`: one per indexed image layer, media type [`INDEX_LAYER_MEDIA_TYPE`],
//!   content [`super::store::encode`] of its [`LayerIndex`], annotated with
//!   [`LAYER_DIGEST_ANNOTATION`] = the image layer's digest;
//! - `subject`: the image manifest's descriptor.
//!
//! Push the index blobs and the empty config blob, then the manifest (by digest). A
//! registry with the referrers API lists it under `GET /v2/<name>/referrers/<digest>`;
//! for one without (docker-registry 2.8), also push it under the tag from
//! [`crate::registry::referrers::fallback_tag`] ([`crate::registry::Client::push_artifact`]
//! does all of this). To consume: list referrers (or fetch that tag), keep
//! manifests whose `artifactType` is [`INDEX_ARTIFACT_TYPE`], pick the layer whose
//! annotation names the wanted layer, fetch it by digest (the registry client verifies
//! the digest) and decode it with [`decode_index_blob`], which also checks that it
//! describes that layer. Trust: the chunk digests in a published index come from its
//! publisher, so accept indexes only from the image's own repository.

use super::model::{IndexError, LayerIndex};
use super::store::{decode, encode};
use crate::digest::Digest;
use crate::image::{Descriptor, Manifest};
pub use crate::image::{EMPTY_CONFIG, INDEX_ARTIFACT_TYPE, INDEX_LAYER_MEDIA_TYPE};
use std::collections::BTreeMap;

/// Annotation on an index layer naming the image layer it describes.
pub const LAYER_DIGEST_ANNOTATION: &str = "dev.skiff.layer.digest";

/// One encoded index ready to push.
pub struct IndexBlob {
    /// The image layer it describes.
    pub layer: Digest,
    /// The bytes to push.
    pub bytes: Vec<u8>,
    /// Their digest.
    pub digest: Digest,
}

/// Encodes `index` for publishing.
pub fn index_blob(index: &LayerIndex) -> Result<IndexBlob, IndexError> {
    let bytes = encode(index)?;
    Ok(IndexBlob {
        layer: index.blob,
        digest: Digest::of(&bytes),
        bytes,
    })
}

impl IndexBlob {
    /// Its descriptor as a layer of the index artifact: annotated with the image layer.
    pub fn descriptor(&self) -> Descriptor {
        let mut d = Descriptor::new(INDEX_LAYER_MEDIA_TYPE, self.digest, self.bytes.len() as u64);
        d.annotations =
            BTreeMap::from([(LAYER_DIGEST_ANNOTATION.to_string(), self.layer.to_string())]);
        d
    }
}

/// The artifact manifest holding `blobs`, referring to the image manifest `subject`
/// (what [`crate::registry::Client::push_artifact`] pushes for them).
pub fn index_artifact_manifest(subject: &Descriptor, blobs: &[IndexBlob]) -> Manifest {
    Manifest::artifact(
        subject,
        INDEX_ARTIFACT_TYPE,
        blobs.iter().map(IndexBlob::descriptor).collect(),
    )
}

/// In an index artifact manifest, the descriptor of the index for `layer`.
pub fn find_layer_index<'a>(manifest: &'a Manifest, layer: &Digest) -> Option<&'a Descriptor> {
    if manifest.artifact_type.as_deref() != Some(INDEX_ARTIFACT_TYPE) {
        return None;
    }
    let want = layer.to_string();
    manifest.layers.iter().find(|d| {
        d.media_type == INDEX_LAYER_MEDIA_TYPE
            && d.annotations
                .get(LAYER_DIGEST_ANNOTATION)
                .is_some_and(|v| *v == want)
    })
}

/// Decodes a fetched (digest-verified) index blob and checks it describes `layer`.
pub fn decode_index_blob(layer: &Digest, bytes: &[u8]) -> Result<LayerIndex, IndexError> {
    let what = format!("published index of layer {layer}");
    let idx = decode(&what, bytes)?.ok_or_else(|| IndexError::Encoding {
        what: what.clone(),
        reason: "unsupported index format version".into(),
    })?;
    if idx.blob != *layer {
        return Err(IndexError::Encoding {
            what,
            reason: format!("describes layer {}", idx.blob),
        });
    }
    Ok(idx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::model::LayerFormat;

    #[test]
    fn artifact_manifest_refers_to_the_image_and_finds_layers() {
        let layer = Digest::of(b"layer");
        let idx = LayerIndex {
            blob: layer,
            blob_size: 5,
            format: LayerFormat::TarGzip,
            entries: vec![],
            chunks: vec![],
            checkpoints: vec![],
            prefetch: vec![],
        };
        let blob = index_blob(&idx).unwrap();
        let image = Digest::of(b"manifest");
        let subject = Descriptor::new(crate::image::MEDIA_OCI_MANIFEST, image, 123);
        let m = index_artifact_manifest(&subject, &[blob]);
        let json: serde_json::Value = serde_json::to_value(&m).unwrap();
        assert_eq!(json["artifactType"], INDEX_ARTIFACT_TYPE);
        assert_eq!(json["subject"]["digest"], image.to_string());
        assert_eq!(
            json["config"]["mediaType"],
            "application/vnd.oci.empty.v1+json"
        );
        assert_eq!(json["config"]["digest"], Digest::of(b"{}").to_string());
        assert_eq!(json["layers"][0]["mediaType"], INDEX_LAYER_MEDIA_TYPE);
        assert_eq!(
            json["layers"][0]["annotations"][LAYER_DIGEST_ANNOTATION],
            layer.to_string()
        );
        let d = find_layer_index(&m, &layer).unwrap();
        assert!(find_layer_index(&m, &Digest::of(b"other")).is_none());
        let bytes = index_blob(&idx).unwrap().bytes;
        assert_eq!(d.digest, Digest::of(&bytes));
        assert_eq!(decode_index_blob(&layer, &bytes).unwrap(), idx);
        assert!(decode_index_blob(&Digest::of(b"other"), &bytes).is_err());
    }
}
