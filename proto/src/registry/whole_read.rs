//! Range reads from a host that ignores `Range` and answers `200` with the whole blob:
//! a pull-through cache (docker-registry in proxy mode) does that for a blob it has not
//! cached yet, as does a redirect target that does not support ranges.
//!
//! The whole body is read once, to its end (so the cache finishes storing the blob),
//! hashed as it goes and checked against the blob's digest; only the bytes asked for
//! are kept. While one such read runs, other reads of the same blob ride on it: a read
//! whose range the stream has not passed yet registers it and gets its bytes from the
//! same stream once the whole blob has verified ([`Ride`]), with no request of its
//! own. A read whose range was already passed waits for the stream to end instead of
//! starting a whole download of its own ([`InFlight`]), then asks with `Range` again —
//! the cache has the blob by then and answers `206`.

use super::client::Client;
use super::error::{RegistryError, Result};
use crate::digest::{Digest, DigestError, Hasher};
use reqwest::Response;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// One gate per blob, held while a whole-body read of it runs, and the reads riding
/// on that read.
#[derive(Debug, Default)]
pub(crate) struct InFlight {
    gates: Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>,
    rides: Mutex<HashMap<Digest, Arc<Ride>>>,
}

/// A whole-body read under way, and the ranges other reads are waiting for from it.
#[derive(Debug, Default)]
pub(crate) struct Ride {
    state: Mutex<RideState>,
}

#[derive(Debug, Default)]
struct RideState {
    /// Blob bytes streamed so far.
    pos: u64,
    riders: Vec<Rider>,
}

/// One read waiting for `len` bytes at `offset` of the stream.
#[derive(Debug)]
struct Rider {
    offset: u64,
    len: u64,
    kept: Vec<u8>,
    answer: tokio::sync::oneshot::Sender<bytes::Bytes>,
}

impl InFlight {
    /// The gate of `digest` (one per blob for the client's life: a handful per image).
    pub fn gate(&self, digest: Digest) -> Arc<tokio::sync::Mutex<()>> {
        let mut gates = self.gates.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(gates.entry(digest).or_default())
    }

    /// If a whole-body read of `digest` is under way and has not passed `offset` yet,
    /// waits for it and returns the `len` bytes at `offset` from it (after the whole
    /// blob verified). `None`: no such read, or it failed; ask the host.
    pub async fn ride(&self, digest: Digest, offset: u64, len: u64) -> Option<bytes::Bytes> {
        let ride = self
            .rides
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&digest)
            .cloned()?;
        let answer = {
            let mut st = ride.state.lock().unwrap_or_else(|p| p.into_inner());
            if st.pos > offset {
                return None;
            }
            let (tx, rx) = tokio::sync::oneshot::channel();
            st.riders.push(Rider {
                offset,
                len,
                kept: Vec::with_capacity(usize::try_from(len).unwrap_or(0).min(16 << 20)),
                answer: tx,
            });
            rx
        };
        answer.await.ok()
    }

    /// Registers the whole-body read of `digest` that starts now; riders are answered
    /// by [`RideGuard::finish`], or dropped (sent back to the host) if it never comes.
    fn start_ride(&self, digest: Digest) -> RideGuard<'_> {
        let ride = Arc::new(Ride::default());
        self.rides
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(digest, Arc::clone(&ride));
        RideGuard {
            in_flight: self,
            digest,
            ride,
        }
    }
}

/// The whole-body read's side of a [`Ride`]: feeds riders as bytes pass, answers them
/// at the end, and unregisters the ride when dropped.
struct RideGuard<'a> {
    in_flight: &'a InFlight,
    digest: Digest,
    ride: Arc<Ride>,
}

impl RideGuard<'_> {
    /// `chunk` is the blob's bytes from `start`.
    fn feed(&self, start: u64, chunk: &[u8]) {
        let end = start.saturating_add(chunk.len() as u64);
        let mut st = self.ride.state.lock().unwrap_or_else(|p| p.into_inner());
        for r in &mut st.riders {
            let (lo, hi) = (r.offset.max(start), r.offset.saturating_add(r.len).min(end));
            if lo < hi {
                let (a, b) = ((lo - start) as usize, (hi - start) as usize);
                r.kept
                    .extend_from_slice(chunk.get(a..b).unwrap_or_default());
            }
        }
        st.pos = end;
    }

    /// The whole blob verified: every rider whose range was streamed gets its bytes.
    fn finish(self) {
        let riders = std::mem::take(
            &mut self
                .ride
                .state
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .riders,
        );
        for r in riders {
            if r.kept.len() as u64 == r.len {
                let _ = r.answer.send(r.kept.into());
            }
        }
    }
}

impl Drop for RideGuard<'_> {
    fn drop(&mut self) {
        let mut rides = self
            .in_flight
            .rides
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if rides
            .get(&self.digest)
            .is_some_and(|r| Arc::ptr_eq(r, &self.ride))
        {
            rides.remove(&self.digest);
        }
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
        let ride = self.in_flight.start_ride(digest);
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
            ride.feed(start, &chunk);
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
        ride.finish();
        if kept.len() as u64 != len {
            return Err(RegistryError::BadResponse {
                url,
                message: format!("asked for {len} bytes at offset {offset} of a {pos}-byte blob"),
            });
        }
        Ok(kept.into())
    }
}
