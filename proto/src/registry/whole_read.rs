//! Range reads from a host that ignores `Range` and answers `200` with the whole blob:
//! a pull-through cache (docker-registry in proxy mode) does that for a blob it has not
//! cached yet, as does a redirect target that does not support ranges.
//!
//! The whole body is read once, to its end (so the cache finishes storing the blob),
//! hashed as it goes and checked against the blob's digest; only the bytes asked for
//! are kept. While one such read runs, other reads of the same blob wait for it instead
//! of each starting a whole download ([`InFlight`]), then ask with `Range` again — the
//! cache has the blob by then and answers `206`.

use super::client::Client;
use super::error::{RegistryError, Result};
use crate::digest::{Digest, DigestError, Hasher};
use reqwest::Response;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// One gate per blob: held while a whole-body read of it runs.
#[derive(Debug, Default)]
pub(crate) struct InFlight {
    gates: Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>,
}

impl InFlight {
    /// The gate of `digest` (one per blob for the client's life: a handful per image).
    pub fn gate(&self, digest: Digest) -> Arc<tokio::sync::Mutex<()>> {
        let mut gates = self.gates.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(gates.entry(digest).or_default())
    }
}

impl Client {
    /// Reads all of `resp` (a `200` answer to a Range GET of blob `digest`), verifying
    /// the digest, and returns the `len` bytes at `offset`. Nothing is returned unless
    /// the whole body matched the digest.
    pub(crate) async fn range_from_whole_body(
        &self,
        mut resp: Response,
        digest: Digest,
        offset: u64,
        len: u64,
    ) -> Result<bytes::Bytes> {
        let url = resp.url().to_string();
        tracing::info!(%digest, %url, "host ignored Range; reading the whole blob once");
        let end = offset.saturating_add(len);
        // Bounded by `len`: a read asks for a chunk, never a whole layer.
        let mut kept = Vec::with_capacity(usize::try_from(len).unwrap_or(0).min(16 << 20));
        let mut hasher = Hasher::new();
        let mut pos: u64 = 0;
        loop {
            let chunk = match resp.chunk().await {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(source) => {
                    return Err(RegistryError::Network {
                        method: "GET".into(),
                        url,
                        source,
                    })
                }
            };
            let start = pos;
            pos = pos.saturating_add(chunk.len() as u64);
            self.stats.add_bytes(chunk.len() as u64);
            hasher.update(&chunk);
            let (lo, hi) = (offset.max(start), end.min(pos));
            if lo < hi {
                // Both within this chunk, whose length fits in usize.
                let (a, b) = ((lo - start) as usize, (hi - start) as usize);
                kept.extend_from_slice(chunk.get(a..b).unwrap_or_default());
            }
        }
        let actual = hasher.finish();
        if actual != digest {
            return Err(DigestError::Mismatch {
                what: format!("blob from {url} (read whole: the host ignored Range)"),
                expected: digest,
                actual,
            }
            .into());
        }
        if kept.len() as u64 != len {
            return Err(RegistryError::BadResponse {
                url,
                message: format!("asked for {len} bytes at offset {offset} of a {pos}-byte blob"),
            });
        }
        Ok(kept.into())
    }
}
