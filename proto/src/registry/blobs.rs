//! Blobs: whole reads (small blobs, verified), Range reads, existence checks, and
//! streaming downloads that resume where a broken connection left off.

use super::client::{read_capped, Client, Req, Subject};
use super::endpoint::Route;
use super::error::{RegistryError, Result};
use super::options::Access;
use super::retry::{retry, Attempt};
use crate::digest::{Digest, Hasher};
use crate::image::Descriptor;
use bytes::Bytes;
use reqwest::header::{self, HeaderValue};
use reqwest::{Method, Response, StatusCode};
use std::sync::Arc;
use tokio::io::{AsyncSeekExt, AsyncWriteExt};

/// Largest blob [`Client::get_blob`] buffers (configs are KiBs; this is generous).
const MAX_SMALL_BLOB_SIZE: usize = 64 << 20;

/// What a download carries from one attempt to the next.
struct Download<'f> {
    file: &'f mut tokio::fs::File,
    hasher: Hasher,
    /// Bytes written so far (where a resumed attempt starts).
    done: u64,
}

impl Client {
    /// The size of a blob if the repository has it (`HEAD`), `None` if not.
    pub async fn blob_exists(&self, repository: &str, digest: Digest) -> Result<Option<u64>> {
        self.head_blob(repository, digest, Access::Push, Route::Upstream)
            .await
    }

    /// `HEAD` of a blob with `access`, sent to the hosts `route` allows: its size, `None`
    /// if the host does not have it.
    pub(crate) async fn head_blob(
        &self,
        repository: &str,
        digest: Digest,
        access: Access,
        route: Route,
    ) -> Result<Option<u64>> {
        let url = self.url(&format!("{repository}/blobs/{digest}"))?;
        let subject = Subject::Blob(digest);
        let mut req = Req::new(Method::HEAD, url, Some(repository));
        req.access = access;
        req.route = route;
        let resp = self.send(req).await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let resp = self
            .expect(
                &Method::HEAD,
                resp,
                &[StatusCode::OK],
                &subject,
                Some(repository),
            )
            .await?;
        Ok(resp
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok()))
    }

    /// Fetches a small blob whole (configs, indexes; at most 64 MiB) and verifies it.
    pub async fn get_blob(&self, repository: &str, digest: Digest) -> Result<Bytes> {
        let resp = self.blob_get(repository, digest, None).await?;
        let url = resp.url().clone();
        let bytes = read_capped(resp, MAX_SMALL_BLOB_SIZE, &url).await?;
        self.stats.add_bytes(bytes.len() as u64);
        digest.verify(
            &format!("blob {digest} from {}/{repository}", self.registry),
            &bytes,
        )?;
        Ok(bytes)
    }

    /// GET of a blob (optionally a `Range`), past redirects, with success checked.
    pub(crate) async fn blob_get(
        &self,
        repository: &str,
        digest: Digest,
        range: Option<(u64, u64)>,
    ) -> Result<Response> {
        let spec = range.map(|(start, end_inclusive)| format!("bytes={start}-{end_inclusive}"));
        self.blob_get_spec(repository, digest, spec).await
    }

    /// GET of a blob with `Range: <spec>` if given (`bytes=a-b`, `bytes=-n`), past
    /// redirects, with success checked.
    pub(crate) async fn blob_get_spec(
        &self,
        repository: &str,
        digest: Digest,
        range: Option<String>,
    ) -> Result<Response> {
        let url = self.url(&format!("{repository}/blobs/{digest}"))?;
        let subject = Subject::Blob(digest);
        let mut req = Req::new(Method::GET, url, Some(repository));
        req.redirect_key = Some(digest);
        req.route = Route::Pull;
        let mut ok = vec![StatusCode::OK];
        if let Some(spec) = range {
            if let Ok(v) = HeaderValue::from_str(&spec) {
                req.headers.insert(header::RANGE, v);
            }
            ok.push(StatusCode::PARTIAL_CONTENT);
        }
        self.send_expecting(req, &ok, &subject).await
    }

    /// Reads `len` bytes at `offset` of a blob with one Range GET. The bytes are raw
    /// and unverified (chunk digests verify them). A host that answers `200` (ignoring
    /// Range) is read to the end once and the whole blob verified (see `whole_read.rs`);
    /// concurrent reads of that blob take their bytes from it, or (if it has passed
    /// them) wait for it and ask with Range again.
    pub async fn get_blob_range(
        &self,
        repository: &str,
        digest: Digest,
        offset: u64,
        len: u64,
    ) -> Result<Bytes> {
        // `len` is the caller's request, bounded by what it plans to read.
        let mut out = bytes::BytesMut::with_capacity(len.min(MAX_SMALL_BLOB_SIZE as u64) as usize);
        self.get_blob_range_with(repository, digest, offset, len, &mut |piece| {
            out.extend_from_slice(piece)
        })
        .await?;
        Ok(out.freeze())
    }

    /// [`Client::get_blob_range`], handing the bytes to `sink` in order as they arrive
    /// instead of returning them at the end. On an error `sink` may have had a prefix
    /// of the range.
    pub async fn get_blob_range_with<F: FnMut(&[u8])>(
        &self,
        repository: &str,
        digest: Digest,
        offset: u64,
        len: u64,
        sink: &mut F,
    ) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        let end = offset
            .checked_add(len - 1)
            .ok_or_else(|| RegistryError::BadResponse {
                url: digest.to_string(),
                message: format!("range {offset}+{len} overflows"),
            })?;
        // A whole-body read of this blob is under way: take the bytes from it if it
        // has not passed them yet; else, once it ends, the host (a pull-through cache)
        // has the blob and answers Range.
        if let Some(bytes) = self.in_flight.ride(digest, offset, len).await {
            sink(&bytes);
            return Ok(());
        }
        let gate = self.in_flight.gate(digest);
        drop(gate.lock().await);
        let mut round = 0;
        let resp = loop {
            let resp = self
                .blob_get(repository, digest, Some((offset, end)))
                .await?;
            if resp.status() != StatusCode::OK {
                break resp;
            }
            // Range ignored. One whole-body read per blob at a time: if another is under
            // way, drop this answer, wait for it and ask again (twice; then read whole
            // ourselves, after it).
            let held = match Arc::clone(&gate).try_lock_owned() {
                Ok(held) => held,
                Err(_) if round < 2 => {
                    drop(resp);
                    drop(gate.lock().await);
                    round += 1;
                    continue;
                }
                Err(_) => Arc::clone(&gate).lock_owned().await,
            };
            let bytes = self.range_from_whole_body(resp, digest, offset, len).await;
            drop(held);
            sink(&bytes?);
            return Ok(());
        };
        let url = resp.url().to_string();
        let mut resp = resp;
        let mut got = 0u64;
        let wrong_length = |got: String| RegistryError::BadResponse {
            url: url.clone(),
            message: format!("asked for {len} bytes at offset {offset}, got {got}"),
        };
        loop {
            let piece = resp
                .chunk()
                .await
                .map_err(|source| RegistryError::Network {
                    method: "GET".into(),
                    url: url.clone(),
                    source,
                })?;
            let Some(piece) = piece else { break };
            self.stats.add_bytes(piece.len() as u64);
            got = got.saturating_add(piece.len() as u64);
            if got > len {
                return Err(wrong_length("more".into()));
            }
            sink(&piece);
        }
        if got != len {
            return Err(wrong_length(got.to_string()));
        }
        Ok(())
    }

    /// Downloads a whole blob into `file` (from its start), verifying size and digest
    /// while streaming; `progress` gets the byte count after every chunk. A connection
    /// that breaks mid-body is resumed with a Range request (or restarted if the registry
    /// ignores Range), within the retry bound. On error the file's content is garbage.
    pub async fn download_blob(
        &self,
        repository: &str,
        desc: &Descriptor,
        file: &mut tokio::fs::File,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<()> {
        let start = Download {
            file,
            hasher: Hasher::new(),
            done: 0,
        };
        let what = format!("blob {}", desc.digest);
        let actual = retry(
            &self.options().retry,
            &what,
            start,
            |mut state, attempt| async move {
                let outcome = self
                    .download_attempt(repository, desc, &mut state, attempt, progress)
                    .await;
                (state, outcome)
            },
        )
        .await?;
        if actual != desc.digest {
            return Err(crate::digest::DigestError::Mismatch {
                what: format!("blob from {}/{repository}", self.registry()),
                expected: desc.digest,
                actual,
            }
            .into());
        }
        Ok(())
    }

    /// One GET of the rest of a blob (all of it at first, a Range after a break).
    /// Done with the digest of the bytes written once all of them are in.
    async fn download_attempt(
        &self,
        repository: &str,
        desc: &Descriptor,
        state: &mut Download<'_>,
        attempt: u32,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<Attempt<Digest>> {
        let io = |what: &str, source| RegistryError::Io {
            what: format!("{what} blob {}", desc.digest),
            source,
        };
        let range = (state.done > 0).then(|| (state.done, desc.size.saturating_sub(1)));
        let mut resp = self.blob_get(repository, desc.digest, range).await?;
        if state.done > 0 && resp.status() == StatusCode::OK {
            // Range ignored: start over.
            state.hasher = Hasher::new();
            state.done = 0;
            state
                .file
                .set_len(0)
                .await
                .map_err(|e| io("truncating", e))?;
            state
                .file
                .seek(std::io::SeekFrom::Start(0))
                .await
                .map_err(|e| io("seeking", e))?;
        }
        let url = resp.url().to_string();
        let broke = loop {
            match resp.chunk().await {
                Ok(Some(chunk)) => {
                    state.done = state.done.saturating_add(chunk.len() as u64);
                    if state.done > desc.size {
                        return Err(RegistryError::BadResponse {
                            url,
                            message: format!(
                                "blob {} is longer than its descriptor's {} bytes",
                                desc.digest, desc.size
                            ),
                        });
                    }
                    self.stats().add_bytes(chunk.len() as u64);
                    state.hasher.update(&chunk);
                    state
                        .file
                        .write_all(&chunk)
                        .await
                        .map_err(|e| io("writing", e))?;
                    progress(state.done);
                }
                Ok(None) => break None,
                Err(e) => break Some(e),
            }
        };
        let done = state.done;
        Ok(match broke {
            None if done == desc.size => {
                state.file.flush().await.map_err(|e| io("flushing", e))?;
                Attempt::Done(std::mem::replace(&mut state.hasher, Hasher::new()).finish())
            }
            None => {
                let message = format!(
                    "blob {} ended after {done} of {} bytes",
                    desc.digest, desc.size
                );
                Attempt::Failed {
                    last: message.clone(),
                    after: None,
                    give_up: RegistryError::BadResponse { url, message },
                }
            }
            Some(e) => Attempt::Failed {
                last: format!("blob download broke after {done} bytes: {e}"),
                after: None,
                give_up: RegistryError::RetriesExhausted {
                    method: "GET".into(),
                    url,
                    attempts: attempt,
                    last: e.to_string(),
                },
            },
        })
    }
}
