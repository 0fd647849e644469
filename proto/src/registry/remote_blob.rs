//! [`RemoteBlob`]: a [`BlobReader`] over a registry blob, read with HTTP Range requests.

use super::client::{Client, FetchStats};
use super::error::RegistryError;
use crate::blob::{check_range, BlobError, BlobReader, BlobSource};
use crate::digest::{Digest, DigestError, Hasher};
use std::io::{self, Read};
use std::sync::Arc;
use tokio::runtime::Handle;

/// One registry blob, read on demand. Each [`BlobReader::read_at`] is one Range GET (or,
/// from a host that ignores Range, one whole verified read; see `whole_read.rs`);
/// [`BlobReader::stream`] is one streaming GET, verified against the digest at the end.
///
/// The trait is synchronous: calls block on `handle`. **Call them only from threads that
/// are not running the tokio runtime** (FUSE worker threads, `spawn_blocking`, plain
/// threads); calling from inside an async task panics in `Handle::block_on`.
pub struct RemoteBlob {
    client: Arc<Client>,
    repository: String,
    digest: Digest,
    size: u64,
    handle: Handle,
    stats: Arc<FetchStats>,
}

impl RemoteBlob {
    /// A reader for blob `digest` (of `size` bytes) in `repository`.
    pub fn new(
        client: Arc<Client>,
        repository: &str,
        digest: Digest,
        size: u64,
        handle: Handle,
    ) -> RemoteBlob {
        RemoteBlob {
            client,
            repository: repository.to_string(),
            digest,
            size,
            handle,
            stats: Arc::new(FetchStats::default()),
        }
    }

    /// A reader for the layer (or any blob) `desc` describes.
    pub fn for_descriptor(
        client: Arc<Client>,
        repository: &str,
        desc: &crate::image::Descriptor,
        handle: Handle,
    ) -> RemoteBlob {
        RemoteBlob::new(client, repository, desc.digest, desc.size, handle)
    }

    /// The repository the blob is read from.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// Requests made and bytes received by this blob reader (the client's own
    /// [`Client::stats`] count everything).
    pub fn stats(&self) -> &Arc<FetchStats> {
        &self.stats
    }

    fn remote_err(&self, offset: u64, len: u64, e: impl std::fmt::Display) -> BlobError {
        BlobError::Remote {
            digest: self.digest,
            offset,
            len,
            message: e.to_string(),
        }
    }
}

impl BlobReader for RemoteBlob {
    fn digest(&self) -> Digest {
        self.digest
    }

    fn source(&self) -> Option<BlobSource> {
        Some(BlobSource {
            served_by: self.client.served_by(&self.digest),
            requests: self.stats.requests(),
            bytes: self.stats.bytes(),
        })
    }

    fn size(&self) -> u64 {
        self.size
    }

    /// Waits for the tail if its read is still on its way (blocking, as every read).
    fn tail_read_ahead(&self) -> Option<(u64, Vec<u8>)> {
        let tail = self
            .client
            .take_tail_ahead(&self.repository, self.digest, self.size)?;
        self.stats.add_request();
        self.stats.add_bytes(tail.bytes.len() as u64);
        Some((tail.offset, tail.bytes.to_vec()))
    }

    fn read_at(&self, offset: u64, len: u64) -> Result<Vec<u8>, BlobError> {
        let mut out = Vec::with_capacity(len.min(8 << 20) as usize);
        self.read_at_with(offset, len, &mut |piece| out.extend_from_slice(piece))?;
        Ok(out)
    }

    fn read_at_with(
        &self,
        offset: u64,
        len: u64,
        sink: &mut dyn FnMut(&[u8]),
    ) -> Result<(), BlobError> {
        check_range(self.digest, self.size, offset, len)?;
        if len == 0 {
            return Ok(());
        }
        self.stats.add_request();
        let stats = &self.stats;
        let mut counted = |piece: &[u8]| {
            stats.add_bytes(piece.len() as u64);
            sink(piece)
        };
        self.handle
            .block_on(self.client.get_blob_range_with(
                &self.repository,
                self.digest,
                offset,
                len,
                &mut counted,
            ))
            .map_err(|e| self.remote_err(offset, len, e))
    }

    fn stream(&self) -> Result<Box<dyn Read + Send + '_>, BlobError> {
        let resp = self
            .handle
            .block_on(self.client.blob_get(&self.repository, self.digest, None))
            .map_err(|e| self.remote_err(0, self.size, e))?;
        self.stats.add_request();
        // A task feeds chunks through a small channel; the reader verifies at the end.
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, String>>(8);
        let mut resp = resp;
        self.handle.spawn(async move {
            loop {
                let item = match resp.chunk().await {
                    Ok(Some(c)) => Ok(c),
                    Ok(None) => break,
                    Err(e) => Err(e.to_string()),
                };
                let stop = item.is_err();
                if tx.send(item).await.is_err() || stop {
                    break;
                }
            }
        });
        Ok(Box::new(VerifiedStream {
            rx,
            buf: bytes::Bytes::new(),
            hasher: Some(Hasher::new()),
            seen: 0,
            digest: self.digest,
            size: self.size,
            stats: Arc::clone(&self.stats),
            client_stats: Arc::clone(self.client.stats()),
        }))
    }
}

/// A sequential reader over a streaming GET that fails instead of reaching EOF when
/// the bytes do not match the blob's size and digest.
struct VerifiedStream {
    rx: tokio::sync::mpsc::Receiver<Result<bytes::Bytes, String>>,
    buf: bytes::Bytes,
    hasher: Option<Hasher>,
    seen: u64,
    digest: Digest,
    size: u64,
    stats: Arc<FetchStats>,
    /// The client's counters, so [`Client::stats`] covers streamed bytes too.
    client_stats: Arc<FetchStats>,
}

impl Read for VerifiedStream {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.buf.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) => {
                    self.seen = self.seen.saturating_add(chunk.len() as u64);
                    self.stats.add_bytes(chunk.len() as u64);
                    self.client_stats.add_bytes(chunk.len() as u64);
                    if self.seen > self.size {
                        return Err(io::Error::other(format!(
                            "blob {} is longer than {} bytes",
                            self.digest, self.size
                        )));
                    }
                    if let Some(h) = self.hasher.as_mut() {
                        h.update(&chunk);
                    }
                    self.buf = chunk;
                }
                Some(Err(e)) => {
                    return Err(io::Error::other(format!(
                        "streaming blob {}: {e}",
                        self.digest
                    )))
                }
                None => {
                    // Sender gone: the body ended. Verify once.
                    let Some(h) = self.hasher.take() else {
                        return Ok(0);
                    };
                    if self.seen != self.size {
                        return Err(io::Error::other(format!(
                            "blob {} ended after {} of {} bytes",
                            self.digest, self.seen, self.size
                        )));
                    }
                    let actual = h.finish();
                    if actual != self.digest {
                        return Err(io::Error::other(RegistryError::Digest(
                            DigestError::Mismatch {
                                what: "streamed blob".into(),
                                expected: self.digest,
                                actual,
                            },
                        )));
                    }
                    return Ok(0);
                }
            }
        }
        let n = out.len().min(self.buf.len());
        out[..n].copy_from_slice(&self.buf.split_to(n));
        Ok(n)
    }
}
