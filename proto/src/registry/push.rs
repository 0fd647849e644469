//! Pushing: blob uploads (monolithic POST+PUT, or chunked PATCH for large blobs),
//! blobs copied from another repository (cross-repository mount on the same
//! registry, else streamed through), manifest PUTs and tags.

use super::client::{Client, Req, Subject};
use super::error::{RegistryError, Result};
use super::options::Access;
use crate::digest::{Digest, Hasher};
use crate::image::Descriptor;
use bytes::{Bytes, BytesMut};
use reqwest::header::{self, HeaderValue};
use reqwest::{Method, Response, StatusCode};
use url::Url;

impl Client {
    /// Uploads `data` as a blob unless the repository already has it. Blobs larger than
    /// [`super::ClientOptions::upload_chunk_size`] go up in PATCH chunks. Returns the
    /// blob's digest.
    pub async fn push_blob(&self, repository: &str, data: Bytes) -> Result<Digest> {
        let digest = Digest::of(&data);
        let size = data.len() as u64;
        self.upload(repository, digest, size, Source::Memory(data))
            .await?;
        Ok(digest)
    }

    /// Uploads the file at `path`, which holds blob `digest`, without loading it into
    /// memory (PATCH chunks for large files). Skipped if the repository has it.
    pub async fn push_blob_file(
        &self,
        repository: &str,
        digest: Digest,
        path: &std::path::Path,
    ) -> Result<()> {
        let io = |source| RegistryError::Io {
            what: format!("reading {} to upload", path.display()),
            source,
        };
        let file = tokio::fs::File::open(path).await.map_err(io)?;
        let size = file.metadata().await.map_err(io)?.len();
        self.upload(
            repository,
            digest,
            size,
            Source::File(file, path.to_path_buf()),
        )
        .await
    }

    /// Puts blob `desc` of repository `from_repo` on the registry `from` talks to into
    /// `repository` here, unless it is there already (`HEAD`). On the same registry
    /// it is mounted (`POST …/blobs/uploads/?mount=DIGEST&from=REPO`: no bytes move);
    /// when the registry will not mount it, or `from` is another registry, it is
    /// streamed from one to the other in upload-sized chunks and checked against its
    /// digest on the way.
    pub async fn copy_blob(
        &self,
        repository: &str,
        desc: &Descriptor,
        from: &Client,
        from_repo: &str,
    ) -> Result<()> {
        if self.blob_exists(repository, desc.digest).await? == Some(desc.size) {
            tracing::debug!(digest = %desc.digest, "blob already present; not copying");
            return Ok(());
        }
        if from.registry() == self.registry()
            && self.mount_blob(repository, desc.digest, from_repo).await?
        {
            tracing::debug!(digest = %desc.digest, from_repo, "blob mounted");
            return Ok(());
        }
        let resp = from.blob_get(from_repo, desc.digest, None).await?;
        let what = format!("blob {} from {}/{from_repo}", desc.digest, from.registry());
        let source = Source::Stream(Box::new(RemoteStream {
            resp,
            pending: Bytes::new(),
            hasher: Hasher::new(),
            read: 0,
            size: desc.size,
            digest: desc.digest,
            what,
        }));
        self.upload_new(repository, desc.digest, desc.size, source)
            .await
    }

    /// Asks the registry to mount blob `digest` of repository `from` into
    /// `repository`. True if it did; false if it opened an upload instead (it does
    /// not have the blob there, or does not let this client read it, or does not
    /// mount), which is then cancelled.
    pub async fn mount_blob(&self, repository: &str, digest: Digest, from: &str) -> Result<bool> {
        let mut url = self.url(&format!("{repository}/blobs/uploads/"))?;
        url.query_pairs_mut()
            .append_pair("mount", &digest.to_string())
            .append_pair("from", from);
        let mut req = Req::new(Method::POST, url.clone(), Some(repository));
        req.access = Access::Push;
        req.headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        let resp = self
            .send_expecting(
                req,
                &[StatusCode::CREATED, StatusCode::ACCEPTED],
                &Subject::Blob(digest),
            )
            .await?;
        if resp.status() == StatusCode::CREATED {
            return Ok(true);
        }
        // Best effort: an abandoned upload session expires on its own anyway.
        if let Ok(location) = upload_location(&url, &resp) {
            let mut req = Req::new(Method::DELETE, location, Some(repository));
            req.access = Access::Push;
            if let Err(e) = self.send(req).await {
                tracing::debug!(%digest, "cancelling the upload a mount opened: {e}");
            }
        }
        Ok(false)
    }

    async fn upload(
        &self,
        repository: &str,
        digest: Digest,
        size: u64,
        source: Source,
    ) -> Result<()> {
        if self.blob_exists(repository, digest).await? == Some(size) {
            tracing::debug!(%digest, "blob already present; skipping upload");
            return Ok(());
        }
        self.upload_new(repository, digest, size, source).await
    }

    /// Uploads a blob the repository does not have.
    async fn upload_new(
        &self,
        repository: &str,
        digest: Digest,
        size: u64,
        mut source: Source,
    ) -> Result<()> {
        let start = self.url(&format!("{repository}/blobs/uploads/"))?;
        let mut req = Req::new(Method::POST, start.clone(), Some(repository));
        req.access = Access::Push;
        req.headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        let resp = self
            .send_expecting(req, &[StatusCode::ACCEPTED], &Subject::Other)
            .await?;
        let mut location = upload_location(&start, &resp)?;

        let chunk = self.options().upload_chunk_size.max(1) as u64;
        let final_body = if size > chunk {
            let mut offset = 0u64;
            while offset < size {
                let end = offset.saturating_add(chunk).min(size);
                let body = source.read(offset, end - offset).await?;
                let mut req = Req::new(Method::PATCH, location.clone(), Some(repository));
                req.access = Access::Push;
                req.headers.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                );
                if let Ok(v) = HeaderValue::from_str(&format!("{}-{}", offset, end - 1)) {
                    req.headers.insert(header::CONTENT_RANGE, v);
                }
                req.body = Some(body);
                let resp = self
                    .send_expecting(req, &[StatusCode::ACCEPTED], &Subject::Other)
                    .await?;
                location = upload_location(&location, &resp)?;
                offset = end;
            }
            Bytes::new()
        } else {
            source.read(0, size).await?
        };

        location
            .query_pairs_mut()
            .append_pair("digest", &digest.to_string());
        let mut req = Req::new(Method::PUT, location, Some(repository));
        req.access = Access::Push;
        req.headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        req.body = Some(final_body);
        self.send_expecting(req, &[StatusCode::CREATED], &Subject::Blob(digest))
            .await?;
        Ok(())
    }

    /// PUTs a manifest (or index) under `reference` (a tag, or its digest). Returns the
    /// manifest's digest, checked against the registry's `Docker-Content-Digest`.
    pub async fn push_manifest(
        &self,
        repository: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<Digest> {
        let digest = Digest::of(bytes);
        let url = self.url(&format!("{repository}/manifests/{reference}"))?;
        let subject = Subject::Manifest(format!("{}/{repository}:{reference}", self.registry()));
        let mut req = Req::new(Method::PUT, url, Some(repository));
        req.access = Access::Push;
        if let Ok(v) = HeaderValue::from_str(media_type) {
            req.headers.insert(header::CONTENT_TYPE, v);
        }
        req.body = Some(Bytes::copy_from_slice(bytes));
        let resp = self
            .send_expecting(req, &[StatusCode::CREATED], &subject)
            .await?;
        if let Some(said) = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<Digest>().ok())
        {
            if said != digest {
                return Err(crate::digest::DigestError::Mismatch {
                    what: format!("pushed manifest {repository}:{reference}"),
                    expected: digest,
                    actual: said,
                }
                .into());
            }
        }
        Ok(digest)
    }

    /// Points tag `new_tag` at the manifest `existing` (tag or digest) names.
    pub async fn tag(&self, repository: &str, existing: &str, new_tag: &str) -> Result<Digest> {
        let (bytes, content_type, _) = self.get_manifest(repository, existing).await?;
        let media_type = match content_type {
            Some(ct) => ct,
            None => crate::image::MEDIA_OCI_MANIFEST.to_string(),
        };
        self.push_manifest(repository, new_tag, &media_type, &bytes)
            .await
    }
}

/// The upload URL from a `Location` header (possibly relative).
fn upload_location(base: &Url, resp: &Response) -> Result<Url> {
    let location = resp
        .headers()
        .get(header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| RegistryError::BadResponse {
            url: base.to_string(),
            message: "upload response has no Location header".into(),
        })?;
    base.join(location).map_err(|e| RegistryError::BadResponse {
        url: base.to_string(),
        message: format!("bad upload Location {location:?}: {e}"),
    })
}

/// Where upload bytes come from.
enum Source {
    Memory(Bytes),
    File(tokio::fs::File, std::path::PathBuf),
    /// A blob being downloaded from another registry, read front to back.
    Stream(Box<RemoteStream>),
}

/// The body of a blob GET, handed out in the pieces an upload asks for (in order),
/// hashed on the way: the piece that completes the blob is only handed out if the
/// digest matches, so a corrupted copy never gets its final `PUT`.
struct RemoteStream {
    resp: Response,
    /// Received and not yet handed out.
    pending: Bytes,
    hasher: Hasher,
    /// Bytes handed out so far.
    read: u64,
    size: u64,
    digest: Digest,
    /// The blob and where it comes from, for errors.
    what: String,
}

impl RemoteStream {
    async fn read(&mut self, offset: u64, len: u64) -> Result<Bytes> {
        let bad = |message: String| RegistryError::BadResponse {
            url: self.what.clone(),
            message,
        };
        if offset != self.read {
            return Err(bad(format!(
                "asked for offset {offset} of a stream at {}",
                self.read
            )));
        }
        let len = len.min(self.size.saturating_sub(offset));
        let want = usize::try_from(len).map_err(|_| bad(format!("piece of {len} bytes")))?;
        let mut out = BytesMut::with_capacity(want);
        while out.len() < want {
            if self.pending.is_empty() {
                match self.resp.chunk().await {
                    Ok(Some(c)) => self.pending = c,
                    Ok(None) => {
                        return Err(bad(format!(
                            "the blob ended after {} of {} bytes",
                            self.read as usize + out.len(),
                            self.size
                        )))
                    }
                    Err(e) => return Err(bad(format!("reading the blob: {e}"))),
                }
            }
            let take = (want - out.len()).min(self.pending.len());
            out.extend_from_slice(&self.pending.split_to(take));
        }
        self.hasher.update(&out);
        self.read += len;
        if self.read == self.size {
            let actual = self.hasher.clone().finish();
            if actual != self.digest {
                return Err(crate::digest::DigestError::Mismatch {
                    what: self.what.clone(),
                    expected: self.digest,
                    actual,
                }
                .into());
            }
        }
        Ok(out.freeze())
    }
}

impl Source {
    async fn read(&mut self, offset: u64, len: u64) -> Result<Bytes> {
        match self {
            Source::Stream(s) => s.read(offset, len).await,
            Source::Memory(b) => {
                let (start, end) = (offset as usize, offset.saturating_add(len) as usize);
                Ok(b.slice(start.min(b.len())..end.min(b.len())))
            }
            Source::File(f, path) => {
                use tokio::io::{AsyncReadExt, AsyncSeekExt};
                let io = |source| RegistryError::Io {
                    what: format!("reading {} to upload", path.display()),
                    source,
                };
                f.seek(std::io::SeekFrom::Start(offset)).await.map_err(io)?;
                let mut buf = vec![0u8; usize::try_from(len).unwrap_or(usize::MAX)];
                f.read_exact(&mut buf).await.map_err(io)?;
                Ok(Bytes::from(buf))
            }
        }
    }
}
