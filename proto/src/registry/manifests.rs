//! Manifests: fetching one by tag or digest (verified), and resolving a reference to
//! one platform's manifest and config.

use super::client::{read_capped, Client, Req, ServedBy, Subject};
use super::endpoint::Route;
use super::error::{RegistryError, Result};
use crate::digest::Digest;
use crate::image::{self, Manifest, ManifestKind, Platform, ResolvedImage, MANIFEST_ACCEPT};
use crate::reference::Reference;
use bytes::Bytes;
use oci_spec::image::ImageConfiguration;
use reqwest::header::{self, HeaderValue};
use reqwest::{Method, StatusCode};

/// Largest manifest or index accepted (containerd uses 4 MiB; be a little lenient).
const MAX_MANIFEST_SIZE: usize = 8 << 20;

impl Client {
    /// Fetches a manifest (or index) by tag or digest. Verifies it against the digest
    /// when `reference` is one, and against `Docker-Content-Digest` when the registry
    /// sends it. Returns the bytes, the media type and the digest.
    pub async fn get_manifest(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<(Bytes, Option<String>, Digest)> {
        let url = self.url(&format!("{repository}/manifests/{reference}"))?;
        let subject = Subject::Manifest(format!("{}/{repository}:{reference}", self.registry));
        let by_digest = reference.parse::<Digest>().is_ok();
        let mut req = Req::new(Method::GET, url.clone(), Some(repository));
        req.route = if by_digest {
            Route::Pull
        } else {
            Route::Resolve
        };
        req.headers.insert(
            header::ACCEPT,
            HeaderValue::from_str(&MANIFEST_ACCEPT.join(", "))
                .unwrap_or(HeaderValue::from_static("*/*")),
        );
        let resp = self
            .send_expecting(req, &[StatusCode::OK], &subject)
            .await?;
        let content_type = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let header_digest = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<Digest>().ok());
        let served_by = resp.extensions().get::<ServedBy>().cloned();
        let bytes = read_capped(resp, MAX_MANIFEST_SIZE, &url).await?;
        let what = format!("manifest {}/{repository}:{reference}", self.registry);
        let digest = match reference.parse::<Digest>() {
            Ok(expected) => {
                expected.verify(&what, &bytes)?;
                expected
            }
            Err(_) => {
                let actual = Digest::of(&bytes);
                if let Some(expected) = header_digest {
                    expected.verify(&what, &bytes)?;
                }
                actual
            }
        };
        if let Some(ServedBy(host)) = served_by {
            self.note_served_host(digest, host);
        }
        Ok((bytes, content_type, digest))
    }

    /// Resolves `reference` to one platform's manifest and config: fetches the
    /// manifest, picks `platform` (default: the host's) from an index, fetches and
    /// verifies the config.
    pub async fn resolve(
        &self,
        reference: &Reference,
        platform: Option<&Platform>,
    ) -> Result<ResolvedImage> {
        let manifest = self.resolve_manifest(reference, platform).await?;
        let config = self.fetch_config(&manifest).await?;
        manifest.with_config(config)
    }

    /// The first half of [`Client::resolve`]: `reference`'s manifest for `platform`
    /// (default: the host's), picked from an index if it names one, without its
    /// config. A caller that needs the layers before the config (the snapshotter
    /// reads their TOCs meanwhile) fetches it with [`Client::fetch_config`].
    pub async fn resolve_manifest(
        &self,
        reference: &Reference,
        platform: Option<&Platform>,
    ) -> Result<ResolvedManifest> {
        let repo = reference.repository();
        let (bytes, ct, digest) = self
            .get_manifest(repo, &reference.manifest_reference())
            .await?;
        let wanted = platform.cloned().unwrap_or_else(Platform::host);
        let (index_digest, index_bytes, manifest_bytes, manifest_ct, manifest_digest, picked) =
            match ManifestKind::parse(ct.as_deref(), &bytes)? {
                ManifestKind::Manifest(_) => (None, None, bytes, ct, digest, None),
                ManifestKind::Index(index) => {
                    let entry =
                        index
                            .select(&wanted)
                            .ok_or_else(|| RegistryError::NoMatchingPlatform {
                                reference: reference.to_string(),
                                wanted: wanted.to_string(),
                                available: index
                                    .manifests
                                    .iter()
                                    .filter_map(|d| d.platform.as_ref().map(|p| p.to_string()))
                                    .collect::<Vec<_>>()
                                    .join(", "),
                            })?;
                    let (mbytes, mct, mdigest) =
                        self.get_manifest(repo, &entry.digest.to_string()).await?;
                    if mbytes.len() as u64 != entry.size {
                        return Err(RegistryError::BadResponse {
                            url: format!("{reference}@{}", entry.digest),
                            message: format!(
                                "manifest is {} bytes, index says {}",
                                mbytes.len(),
                                entry.size
                            ),
                        });
                    }
                    let mct = mct.or_else(|| Some(entry.media_type.clone()));
                    (
                        Some(digest),
                        Some(bytes.to_vec()),
                        mbytes,
                        mct,
                        mdigest,
                        entry.platform.clone(),
                    )
                }
            };
        let manifest = match ManifestKind::parse(manifest_ct.as_deref(), &manifest_bytes)? {
            ManifestKind::Manifest(m) => *m,
            ManifestKind::Index(_) => {
                return Err(RegistryError::BadResponse {
                    url: format!("{reference}@{manifest_digest}"),
                    message:
                        "index entry points to another index (nested indexes are not supported)"
                            .into(),
                })
            }
        };
        let manifest_media_type = manifest
            .media_type
            .clone()
            .or(manifest_ct)
            .unwrap_or_else(|| image::MEDIA_OCI_MANIFEST.to_string());
        Ok(ResolvedManifest {
            reference: reference.clone(),
            index_digest,
            index_bytes,
            manifest_digest,
            manifest_media_type,
            manifest_bytes: manifest_bytes.to_vec(),
            manifest,
            platform: picked,
        })
    }

    /// The config blob `manifest` names, verified against its digest.
    pub async fn fetch_config(&self, manifest: &ResolvedManifest) -> Result<Bytes> {
        self.get_blob(
            manifest.reference.repository(),
            manifest.manifest.config.digest,
        )
        .await
    }
}

/// A reference resolved to one platform's manifest, its config not fetched yet
/// ([`Client::resolve_manifest`]).
#[derive(Debug, Clone)]
pub struct ResolvedManifest {
    /// The reference as the user gave it (normalized).
    pub reference: Reference,
    /// Digest of the index the reference named, if it named one.
    pub index_digest: Option<Digest>,
    /// Raw index bytes, if any.
    pub index_bytes: Option<Vec<u8>>,
    /// Digest of the platform-specific image manifest.
    pub manifest_digest: Digest,
    /// Media type of that manifest.
    pub manifest_media_type: String,
    /// Raw manifest bytes (they hash to `manifest_digest`).
    pub manifest_bytes: Vec<u8>,
    /// The parsed manifest.
    pub manifest: Manifest,
    /// The platform the index entry named, if the manifest came from an index.
    pub platform: Option<Platform>,
}

impl ResolvedManifest {
    /// The resolved image, with `config_bytes` (verified by [`Client::fetch_config`])
    /// parsed as its config; the platform is the index entry's, else the config's.
    pub fn with_config(self, config_bytes: Bytes) -> Result<ResolvedImage> {
        let config = image::parse_config(self.manifest.config.digest, &config_bytes)?;
        Ok(self.into_image(config_bytes.to_vec(), config))
    }

    /// The resolved image with `config` as its config (`config_bytes` its raw
    /// form, which this does not check); the platform is the index entry's, else
    /// the config's.
    pub fn into_image(self, config_bytes: Vec<u8>, config: ImageConfiguration) -> ResolvedImage {
        let platform = self
            .platform
            .unwrap_or_else(|| image::config_platform(&config));
        ResolvedImage {
            reference: self.reference,
            index_digest: self.index_digest,
            index_bytes: self.index_bytes,
            manifest_digest: self.manifest_digest,
            manifest_media_type: self.manifest_media_type,
            manifest_bytes: self.manifest_bytes,
            manifest: self.manifest,
            platform,
            config_bytes,
            config,
        }
    }
}
