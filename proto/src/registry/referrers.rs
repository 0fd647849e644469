//! Referrers (distribution-spec 1.1): listing the manifests that name another manifest
//! as their `subject`, and recording one for registries without the API.
//!
//! [`Client::referrers`] asks `GET /v2/<name>/referrers/<digest>?artifactType=…`; a
//! registry without the API (docker-registry 2.8 answers 404) is read through the
//! tag schema instead: the tag `sha256-<hex>` holds an image index listing the
//! referrers. [`Client::add_referrer_to_fallback_tag`] maintains that index when
//! pushing, keeping referrers others put there.

use super::client::{read_capped, Client, Req, Subject};
use super::endpoint::Route;
use super::error::{RegistryError, Result};
use crate::digest::Digest;
use crate::image::{Descriptor, Index, ManifestKind, MEDIA_OCI_INDEX};
use reqwest::header::{self, HeaderValue};
use reqwest::{Method, StatusCode};

/// Largest referrers listing accepted (it comes from the network).
const MAX_LISTING: usize = 4 << 20;

/// The tag-schema fallback tag for a manifest digest: `sha256-<hex>`.
pub fn fallback_tag(subject: &Digest) -> String {
    format!("sha256-{}", subject.hex())
}

impl Client {
    /// The referrers of manifest `subject` in `repository` whose `artifactType` is
    /// `artifact_type`: from the referrers API when the registry has it, otherwise
    /// from the fallback tag's index (none if that tag does not exist; both are asked
    /// at once). Descriptors are filtered client-side too (registries may ignore the
    /// `artifactType` query).
    pub async fn referrers(
        &self,
        repository: &str,
        subject: Digest,
        artifact_type: &str,
    ) -> Result<Vec<Descriptor>> {
        let mut url = self.url(&format!("{repository}/referrers/{subject}"))?;
        url.query_pairs_mut()
            .append_pair("artifactType", artifact_type);
        let mut req = Req::new(Method::GET, url.clone(), Some(repository));
        req.headers
            .insert(header::ACCEPT, HeaderValue::from_static(MEDIA_OCI_INDEX));
        // A listing, like a tag: mirrors that resolve may answer it, and a mirror
        // without the API says so with 404 (nodes behind a mirror may have no route
        // to the registry itself).
        req.route = Route::Resolve;
        req.final_404 = true;
        // The fallback tag is asked at the same time: registries without the API
        // (docker-registry 2.8 among them) would otherwise cost a second round trip
        // before any artifact is found.
        let (resp, fallback) =
            tokio::join!(self.send(req), self.fallback_index(repository, &subject));
        let resp = resp?;
        let listing = if resp.status() == StatusCode::NOT_FOUND {
            tracing::debug!(%repository, %subject, "no referrers API; using the fallback tag");
            fallback?
        } else {
            let resp = self
                .expect(
                    &Method::GET,
                    resp,
                    &[StatusCode::OK],
                    &Subject::Other,
                    Some(repository),
                )
                .await?;
            let bytes = read_capped(resp, MAX_LISTING, &url).await?;
            Some(Index::from_slice(
                &format!("referrers of {subject}"),
                &bytes,
            )?)
        };
        Ok(listing
            .map(|index| {
                index
                    .manifests
                    .into_iter()
                    .filter(|d| d.artifact_type.as_deref() == Some(artifact_type))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// The index under the fallback tag of `subject`, `None` if there is no such tag.
    async fn fallback_index(&self, repository: &str, subject: &Digest) -> Result<Option<Index>> {
        let tag = fallback_tag(subject);
        match self.get_manifest(repository, &tag).await {
            Ok((bytes, content_type, _)) => {
                match ManifestKind::parse(content_type.as_deref(), &bytes)? {
                    ManifestKind::Index(index) => Ok(Some(index)),
                    ManifestKind::Manifest(_) => Err(RegistryError::BadResponse {
                        url: format!("{}/{repository}:{tag}", self.registry()),
                        message: "referrers fallback tag holds a manifest, not an index".into(),
                    }),
                }
            }
            Err(RegistryError::ManifestUnknown { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Adds `referrer` (a manifest whose `subject` is `subject`, already pushed) to the
    /// fallback tag's index, creating it if needed and keeping the referrers already
    /// listed. For registries without the referrers API; harmless on others.
    pub async fn add_referrer_to_fallback_tag(
        &self,
        repository: &str,
        subject: Digest,
        referrer: Descriptor,
    ) -> Result<Digest> {
        let mut index = self
            .fallback_index(repository, &subject)
            .await?
            .unwrap_or_else(|| Index::oci(Vec::new()));
        index.manifests.retain(|d| d.digest != referrer.digest);
        index.manifests.push(referrer);
        index.media_type = Some(MEDIA_OCI_INDEX.to_string());
        let bytes = index.to_bytes();
        self.push_manifest(repository, &fallback_tag(&subject), MEDIA_OCI_INDEX, &bytes)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fallback_tag_is_the_digest_with_a_dash() {
        let d = Digest::of(b"manifest");
        assert_eq!(fallback_tag(&d), format!("sha256-{}", d.hex()));
        assert_eq!(d.to_string().replacen(':', "-", 1), fallback_tag(&d));
    }
}
