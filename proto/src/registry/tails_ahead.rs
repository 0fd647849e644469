//! Blob tails read ahead: the end of a layer blob, asked for by digest alone before
//! the image's manifest has been fetched.
//!
//! A lazily pulled layer is first read at its end (an eStargz footer and TOC). That
//! read needs the blob's size for an ordinary Range, so it waited for the manifest:
//! one round trip, then a tail read sized by guess. A suffix Range (`bytes=-N`) needs
//! no size, so whoever already knows the layer digests (containerd's labels name them
//! in the first Prepare) can start the tail reads alongside the manifest
//! ([`Client::get_blob_tail`]) and leave them here ([`Client::begin_tail_ahead`]).
//! The layer's reader takes its tail once ([`Client::take_tail_ahead`]), waiting for
//! it if it is still on its way.
//!
//! Nothing read ahead is trusted more than any Range read: a tail is used only for a
//! blob of the size the manifest gives, and the TOC in it is verified against the
//! manifest's annotation as always. The table is bounded in entries, bytes and age.

use super::client::Client;
use super::error::{RegistryError, Result};
use crate::digest::Digest;
use bytes::Bytes;
use reqwest::{header, StatusCode};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Most tails kept at once (a Prepare's labels may list any number of layers).
const MAX_TAILS: usize = 256;
/// A tail nobody took within this time is dropped.
const MAX_AGE: Duration = Duration::from_secs(120);
/// How long a reader waits for a tail still on its way before reading it itself.
const MAX_WAIT: Duration = Duration::from_secs(30);
/// Largest suffix [`Client::get_blob_tail`] asks for.
pub const MAX_TAIL_AHEAD: u64 = 16 << 20;
/// Most bytes of tails held at once; a tail past it is dropped (its reader reads it
/// once the manifest is in), so a registry with huge TOCs costs no memory here.
const MAX_HELD_BYTES: u64 = 64 << 20;

/// The last bytes of a blob.
#[derive(Clone, Debug)]
pub struct BlobTail {
    /// The blob's size, as the registry gave it.
    pub blob_size: u64,
    /// Blob offset of `bytes[0]`; the bytes run to the blob's end.
    pub offset: u64,
    /// The bytes, unverified.
    pub bytes: Bytes,
}

/// One tail read ahead: empty while on its way, then the tail or `None` (failed).
struct Slot {
    begun: Instant,
    tail: Mutex<Option<Option<BlobTail>>>,
    done: Condvar,
    /// The table's count of bytes held, which this slot's tail is part of.
    held: Arc<AtomicU64>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let tail = self.tail.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Some(Some(t)) = tail {
            self.held.fetch_sub(t.bytes.len() as u64, Ordering::Relaxed);
        }
    }
}

/// The tails read ahead, by repository and digest.
#[derive(Default)]
pub(crate) struct TailsAhead {
    slots: Mutex<HashMap<(String, Digest), Arc<Slot>>>,
    /// Bytes of the tails held by slots (bounded by [`MAX_HELD_BYTES`]).
    held: Arc<AtomicU64>,
}

/// The promise of a tail read ahead: [`TailPromise::fulfil`] it; dropped unfulfilled,
/// its reader reads the tail itself.
pub struct TailPromise {
    slot: Arc<Slot>,
}

impl TailPromise {
    /// Hands over the tail (`None`: the read failed).
    pub fn fulfil(self, tail: Option<BlobTail>) {
        self.settle(tail);
    }

    fn settle(&self, tail: Option<BlobTail>) {
        let mut held = self.slot.tail.lock().unwrap_or_else(|e| e.into_inner());
        if held.is_some() {
            return;
        }
        let counted = |t: &BlobTail| {
            let len = t.bytes.len() as u64;
            let total = &self.slot.held;
            total
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    (n + len <= MAX_HELD_BYTES).then_some(n + len)
                })
                .is_ok()
        };
        *held = Some(tail.filter(counted));
        self.slot.done.notify_all();
    }
}

impl Drop for TailPromise {
    fn drop(&mut self) {
        self.settle(None);
    }
}

impl Client {
    /// Reads the last `len` bytes of blob `digest` (all of it if it is smaller) with a
    /// suffix Range, without knowing its size. A host that ignores the Range (or gives
    /// a `Content-Range` that does not match the body) is an error: the caller reads
    /// the tail the ordinary way once it knows the size.
    pub async fn get_blob_tail(
        &self,
        repository: &str,
        digest: Digest,
        len: u64,
    ) -> Result<BlobTail> {
        let len = len.clamp(1, MAX_TAIL_AHEAD);
        let resp = self
            .blob_get_spec(repository, digest, Some(format!("bytes=-{len}")))
            .await?;
        let url = resp.url().clone();
        let bad = |message: String| RegistryError::BadResponse {
            url: url.to_string(),
            message,
        };
        if resp.status() != StatusCode::PARTIAL_CONTENT {
            // Dropped unread: the host would send the whole blob.
            return Err(bad(format!(
                "asked for the last {len} bytes of {digest}, got {}",
                resp.status()
            )));
        }
        let range = resp
            .headers()
            .get(header::CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .unwrap_or_default();
        let (offset, end, blob_size) = parse_content_range(&range)
            .ok_or_else(|| bad(format!("unusable Content-Range {range:?} for {digest}")))?;
        if end + 1 != blob_size || end + 1 - offset > len {
            return Err(bad(format!(
                "Content-Range {range:?} is not the last {len} bytes of {digest}"
            )));
        }
        let bytes = super::client::read_capped(resp, len as usize, &url).await?;
        self.stats.add_bytes(bytes.len() as u64);
        if bytes.len() as u64 != end + 1 - offset {
            return Err(bad(format!(
                "Content-Range {range:?} announced {} bytes of {digest}, the body has {}",
                end + 1 - offset,
                bytes.len()
            )));
        }
        Ok(BlobTail {
            blob_size,
            offset,
            bytes,
        })
    }

    /// Registers a tail of blob `digest` in `repository` as being read ahead, if none
    /// is and the table has room: the caller reads it and fulfils the promise.
    pub fn begin_tail_ahead(&self, repository: &str, digest: Digest) -> Option<TailPromise> {
        let mut slots = self
            .tails_ahead
            .slots
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        slots.retain(|_, s| s.begun.elapsed() < MAX_AGE);
        let key = (repository.to_string(), digest);
        if slots.len() >= MAX_TAILS || slots.contains_key(&key) {
            return None;
        }
        let slot = Arc::new(Slot {
            begun: Instant::now(),
            tail: Mutex::new(None),
            done: Condvar::new(),
            held: self.tails_ahead.held.clone(),
        });
        slots.insert(key, slot.clone());
        Some(TailPromise { slot })
    }

    /// Takes the tail read ahead of blob `digest` in `repository`, if one was begun,
    /// and if it is of a `size`-byte blob; waits for it while it is on its way.
    /// Blocking: do not call it on a thread that runs the tokio runtime.
    pub fn take_tail_ahead(&self, repository: &str, digest: Digest, size: u64) -> Option<BlobTail> {
        let slot = self
            .tails_ahead
            .slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(repository.to_string(), digest))?;
        let held = slot.tail.lock().unwrap_or_else(|e| e.into_inner());
        let (held, _) = slot
            .done
            .wait_timeout_while(held, MAX_WAIT, |t| t.is_none())
            .unwrap_or_else(|e| e.into_inner());
        let tail = held.clone().flatten()?;
        (tail.blob_size == size).then_some(tail)
    }
}

/// `bytes a-b/total` → `(a, b, total)`, with `a <= b < total`.
fn parse_content_range(value: &str) -> Option<(u64, u64, u64)> {
    let (range, total) = value.trim().strip_prefix("bytes ")?.split_once('/')?;
    let (a, b) = range.split_once('-')?;
    let (a, b, total): (u64, u64, u64) = (a.parse().ok()?, b.parse().ok()?, total.parse().ok()?);
    (a <= b && b < total).then_some((a, b, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_content_range_is_parsed_only_when_it_is_consistent() {
        assert_eq!(
            parse_content_range("bytes 16988447-16988546/16988547"),
            Some((16988447, 16988546, 16988547))
        );
        assert_eq!(parse_content_range("bytes 0-9/10"), Some((0, 9, 10)));
        assert_eq!(parse_content_range("bytes 5-4/10"), None);
        assert_eq!(parse_content_range("bytes 0-10/10"), None);
        assert_eq!(parse_content_range("bytes 0-9/*"), None);
        assert_eq!(parse_content_range("bytes */10"), None);
        assert_eq!(parse_content_range("items 0-9/10"), None);
        assert_eq!(parse_content_range(""), None);
    }

    fn client() -> Client {
        Client::new("127.0.0.1:9", crate::registry::ClientOptions::default()).unwrap()
    }

    fn tail(size: u64) -> BlobTail {
        BlobTail {
            blob_size: size,
            offset: size - 2,
            bytes: Bytes::from_static(b"ab"),
        }
    }

    #[test]
    fn a_tail_is_taken_once_and_only_for_a_blob_of_its_size() {
        let c = client();
        let d = Digest::of(b"layer");
        c.begin_tail_ahead("r", d).unwrap().fulfil(Some(tail(10)));
        assert!(c.take_tail_ahead("r", d, 11).is_none(), "wrong size");
        assert!(c.take_tail_ahead("r", d, 10).is_none(), "taken once");
        c.begin_tail_ahead("r", d).unwrap().fulfil(Some(tail(10)));
        assert!(
            c.take_tail_ahead("other", d, 10).is_none(),
            "other repository"
        );
        assert_eq!(c.take_tail_ahead("r", d, 10).unwrap().offset, 8);
        assert!(c.take_tail_ahead("r", Digest::of(b"x"), 10).is_none());
    }

    #[test]
    fn a_reader_waits_for_a_tail_on_its_way_and_a_dropped_promise_ends_the_wait() {
        let c = Arc::new(client());
        let d = Digest::of(b"layer");
        let promise = c.begin_tail_ahead("r", d).unwrap();
        assert!(c.begin_tail_ahead("r", d).is_none(), "one read per blob");
        let reader = {
            let c = c.clone();
            std::thread::spawn(move || c.take_tail_ahead("r", d, 10))
        };
        std::thread::sleep(Duration::from_millis(50));
        promise.fulfil(Some(tail(10)));
        assert_eq!(
            reader.join().unwrap().unwrap().bytes,
            Bytes::from_static(b"ab")
        );

        let promise = c.begin_tail_ahead("r", d).unwrap();
        let reader = {
            let c = c.clone();
            std::thread::spawn(move || c.take_tail_ahead("r", d, 10))
        };
        std::thread::sleep(Duration::from_millis(50));
        drop(promise);
        assert!(reader.join().unwrap().is_none());
    }

    #[test]
    fn the_bytes_held_are_bounded_and_given_back() {
        let c = client();
        let big = |i: u64| BlobTail {
            blob_size: 100 << 20,
            offset: (100 << 20) - (40 << 20),
            bytes: Bytes::from(vec![i as u8; 40 << 20]),
        };
        let (a, b) = (Digest::of(b"a"), Digest::of(b"b"));
        c.begin_tail_ahead("r", a).unwrap().fulfil(Some(big(1)));
        c.begin_tail_ahead("r", b).unwrap().fulfil(Some(big(2)));
        assert!(
            c.take_tail_ahead("r", b, 100 << 20).is_none(),
            "over the bound"
        );
        assert!(c.take_tail_ahead("r", a, 100 << 20).is_some());
        assert_eq!(c.tails_ahead.held.load(Ordering::Relaxed), 0);
        c.begin_tail_ahead("r", b).unwrap().fulfil(Some(big(2)));
        assert!(c.take_tail_ahead("r", b, 100 << 20).is_some(), "room again");
    }

    #[test]
    fn the_table_is_bounded() {
        let c = client();
        let promises: Vec<_> = (0..MAX_TAILS)
            .map(|i| {
                c.begin_tail_ahead("r", Digest::of(&i.to_le_bytes()))
                    .unwrap()
            })
            .collect();
        assert!(c.begin_tail_ahead("r", Digest::of(b"one more")).is_none());
        drop(promises);
    }
}
