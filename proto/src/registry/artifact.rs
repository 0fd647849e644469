//! Artifacts that refer to an image manifest (OCI 1.1 `subject`): Skiff's layer
//! indexes and prefetch profiles are both published and found this way.
//!
//! Pushing ([`Client::push_artifact`]): the layer blobs, the OCI empty config, the
//! artifact manifest by digest, then an entry under the referrers fallback tag
//! ([`super::referrers::fallback_tag`]) for registries without the referrers API.
//! Fetching ([`Client::fetch_artifacts`]): list the referrers of one `artifactType`,
//! fetch each listed manifest (verified by digest) and check its size, type and
//! subject; then [`Client::fetch_artifact_blob`] reads a layer of one, bounded and
//! verified. What the layers mean is the caller's business (see
//! [`crate::index::artifact`] for layer indexes).
//!
//! Trust: accept artifacts only from the image's own repository.

use super::client::Client;
use super::error::{RegistryError, Result};
use crate::digest::Digest;
use crate::image::{Descriptor, Manifest, EMPTY_CONFIG, MEDIA_OCI_MANIFEST};
use bytes::Bytes;

/// One listed artifact: its descriptor in the listing, and its manifest or why it was
/// refused.
pub type ListedArtifact = (Descriptor, Result<Manifest>);

impl Client {
    /// Pushes an artifact of `artifact_type` whose layers are `layers` (descriptor and
    /// content), referring to the manifest `subject`; records it under the referrers
    /// fallback tag. `pushed` is called after each layer blob is up (for progress).
    /// Returns the artifact manifest's digest.
    pub async fn push_artifact(
        &self,
        repository: &str,
        subject: &Descriptor,
        artifact_type: &str,
        layers: &[(Descriptor, Bytes)],
        pushed: &(dyn Fn(&Descriptor) + Send + Sync),
    ) -> Result<Digest> {
        for (descriptor, bytes) in layers {
            self.push_blob(repository, bytes.clone()).await?;
            pushed(descriptor);
        }
        self.push_blob(repository, Bytes::from_static(EMPTY_CONFIG))
            .await?;
        let manifest = Manifest::artifact(
            subject,
            artifact_type,
            layers.iter().map(|(d, _)| d.clone()).collect(),
        );
        let bytes = manifest.to_bytes();
        let digest = self
            .push_manifest(
                repository,
                &Digest::of(&bytes).to_string(),
                MEDIA_OCI_MANIFEST,
                &bytes,
            )
            .await?;
        let mut listed = Descriptor::new(MEDIA_OCI_MANIFEST, digest, bytes.len() as u64);
        listed.artifact_type = Some(artifact_type.to_string());
        self.add_referrer_to_fallback_tag(repository, subject.digest, listed)
            .await?;
        Ok(digest)
    }

    /// The artifacts of `artifact_type` referring to manifest `subject` in
    /// `repository`, in listing order (the fallback tag lists them oldest first). Each
    /// listed manifest is fetched (verified by digest) and checked: its size against
    /// the listing, its `artifactType`, its `subject`. A refused one comes back with
    /// its error beside the accepted ones; only a failed listing is an `Err`.
    pub async fn fetch_artifacts(
        &self,
        repository: &str,
        subject: Digest,
        artifact_type: &str,
    ) -> Result<Vec<ListedArtifact>> {
        let listed = self.referrers(repository, subject, artifact_type).await?;
        let mut out = Vec::with_capacity(listed.len());
        for d in listed {
            let manifest = self
                .fetch_artifact_manifest(repository, subject, artifact_type, &d)
                .await;
            out.push((d, manifest));
        }
        Ok(out)
    }

    async fn fetch_artifact_manifest(
        &self,
        repository: &str,
        subject: Digest,
        artifact_type: &str,
        listed: &Descriptor,
    ) -> Result<Manifest> {
        let (bytes, _, _) = self
            .get_manifest(repository, &listed.digest.to_string())
            .await?;
        let bad = |message: String| RegistryError::BadResponse {
            url: format!("{}/{repository}@{}", self.registry(), listed.digest),
            message,
        };
        if bytes.len() as u64 != listed.size {
            return Err(bad(format!(
                "manifest is {} bytes, listing says {}",
                bytes.len(),
                listed.size
            )));
        }
        let manifest: Manifest = serde_json::from_slice(&bytes)
            .map_err(|e| bad(format!("not an image manifest: {e}")))?;
        if manifest.artifact_type.as_deref() != Some(artifact_type) {
            return Err(bad(format!("artifactType is not {artifact_type}")));
        }
        if manifest.subject.as_ref().map(|s| s.digest) != Some(subject) {
            return Err(bad(format!("its subject is not {subject}")));
        }
        Ok(manifest)
    }

    /// Fetches the blob of an artifact's `layer`, refusing one that claims more than
    /// `max_size` bytes; the bytes are verified against the layer's digest.
    pub async fn fetch_artifact_blob(
        &self,
        repository: &str,
        layer: &Descriptor,
        max_size: u64,
    ) -> Result<Bytes> {
        if layer.size > max_size {
            return Err(RegistryError::BadResponse {
                url: format!("{}/{repository}@{}", self.registry(), layer.digest),
                message: format!(
                    "artifact layer claims {} bytes, more than the {max_size} accepted",
                    layer.size
                ),
            });
        }
        self.get_blob(repository, layer.digest).await
    }
}
