//! The chunk fetcher: turns "these chunks of this layer" into verified bytes, from the
//! cache when possible, else with one blob read per run of adjacent missing chunks.
//!
//! Fetches run on the fetcher's own worker threads and hand their result to a callback,
//! so a FUSE thread never waits on the network. Concurrent requests for the same chunk
//! share one fetch (an in-flight table keyed by chunk digest). Nothing is returned or
//! cached unless [`decode_chunk`] verified it.

use crate::cache::ChunkCache;
use crate::stats::Stats;
use parking_lot::{Condvar, Mutex};
use skiff_proto::index::{decode_chunk, Chunk, LayerIndex};
use skiff_proto::{BlobReader, Digest};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::Arc;

/// One lower layer: its index and where its blob's bytes come from.
#[derive(Clone)]
pub struct Layer {
    /// The layer's table of contents.
    pub index: Arc<LayerIndex>,
    /// Random access to the layer blob (local file, registry…).
    pub blob: Arc<dyn BlobReader>,
}

/// Errors from fetching chunks.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FetchError {
    /// The blob read failed (registry down, I/O error…).
    #[error("reading blob {blob} range {offset}+{len}: {message}")]
    Blob {
        /// The layer blob.
        blob: Digest,
        /// Start of the failed range.
        offset: u64,
        /// Length of the failed range.
        len: u64,
        /// The reader's error.
        message: String,
    },
    /// The fetched bytes did not decode or verify.
    #[error("chunk {chunk} of blob {blob}: {message}")]
    Verify {
        /// The layer blob.
        blob: Digest,
        /// The chunk digest.
        chunk: Digest,
        /// The decoder's or verifier's error.
        message: String,
    },
    /// The fetcher has shut down.
    #[error("the chunk fetcher has stopped")]
    Stopped,
}

/// Verified chunk contents, in the order requested.
pub type ChunkData = Vec<Arc<Vec<u8>>>;
/// Completion callback of [`Fetcher::submit`].
pub type Done = Box<dyn FnOnce(Result<ChunkData, FetchError>) + Send>;

struct Job {
    layer: usize,
    chunks: Vec<Chunk>,
    done: Done,
}

#[derive(Default)]
struct Slot {
    value: Mutex<Option<Result<Arc<Vec<u8>>, FetchError>>>,
    ready: Condvar,
}

impl Slot {
    fn fill(&self, v: Result<Arc<Vec<u8>>, FetchError>) {
        *self.value.lock() = Some(v);
        self.ready.notify_all();
    }

    fn wait(&self) -> Result<Arc<Vec<u8>>, FetchError> {
        let mut g = self.value.lock();
        loop {
            if let Some(v) = g.as_ref() {
                return v.clone();
            }
            self.ready.wait(&mut g);
        }
    }
}

struct Inner {
    layers: Vec<Layer>,
    cache: Arc<ChunkCache>,
    stats: Arc<Stats>,
    inflight: Mutex<HashMap<Digest, Arc<Slot>>>,
}

/// The chunk fetcher with its worker threads (stopped when dropped).
pub struct Fetcher {
    inner: Arc<Inner>,
    tx: Mutex<Option<mpsc::Sender<Job>>>,
    workers: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

impl Fetcher {
    /// Starts `threads` workers fetching from `layers` (bottom first) into `cache`.
    pub fn new(
        layers: Vec<Layer>,
        cache: Arc<ChunkCache>,
        stats: Arc<Stats>,
        threads: usize,
    ) -> Fetcher {
        let inner = Arc::new(Inner {
            layers,
            cache,
            stats,
            inflight: Mutex::new(HashMap::new()),
        });
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let mut workers = Vec::new();
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            let inner = inner.clone();
            let h = std::thread::Builder::new()
                .name(format!("skiff-fetch-{i}"))
                .spawn(move || loop {
                    let job = rx.lock().recv();
                    let Ok(job) = job else { break };
                    let r = inner.load(job.layer, &job.chunks);
                    (job.done)(r);
                });
            if let Ok(h) = h {
                workers.push(h);
            }
        }
        Fetcher {
            inner,
            tx: Mutex::new(Some(tx)),
            workers: Mutex::new(workers),
        }
    }

    /// The layers this fetcher reads.
    pub fn layers(&self) -> &[Layer] {
        &self.inner.layers
    }

    /// The chunk cache.
    pub fn cache(&self) -> &Arc<ChunkCache> {
        &self.inner.cache
    }

    /// All `chunks` if every one is cached (counting hits), else `None` (counting nothing).
    pub fn cached(&self, chunks: &[Chunk]) -> Option<ChunkData> {
        let mut out = Vec::with_capacity(chunks.len());
        for c in chunks {
            out.push(self.inner.cache.get(&c.digest)?.0);
        }
        self.inner
            .stats
            .cache_hits
            .fetch_add(chunks.len() as u64, Ordering::Relaxed);
        Some(out)
    }

    /// Whether every one of `chunks` is in the disk cache (not verified).
    pub fn all_on_disk(&self, chunks: &[Chunk]) -> bool {
        chunks.iter().all(|c| self.inner.cache.contains(&c.digest))
    }

    /// Fetches `chunks` of layer `layer` on a worker thread and calls `done` there.
    pub fn submit(&self, layer: usize, chunks: Vec<Chunk>, done: Done) {
        let tx = self.tx.lock().clone();
        let job = Job {
            layer,
            chunks,
            done,
        };
        match tx {
            Some(tx) => {
                if let Err(mpsc::SendError(job)) = tx.send(job) {
                    (job.done)(Err(FetchError::Stopped));
                }
            }
            None => (job.done)(Err(FetchError::Stopped)),
        }
    }

    /// Fetches `chunks` on the calling thread (copy-up, prefetch).
    pub fn fetch_blocking(&self, layer: usize, chunks: &[Chunk]) -> Result<ChunkData, FetchError> {
        self.inner.load(layer, chunks)
    }

    /// Stops the workers, waiting for running jobs.
    pub fn shutdown(&self) {
        self.tx.lock().take();
        for h in self.workers.lock().drain(..) {
            let _ = h.join();
        }
    }
}

impl Drop for Fetcher {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl Inner {
    fn load(&self, layer: usize, chunks: &[Chunk]) -> Result<ChunkData, FetchError> {
        let mut out: Vec<Option<Arc<Vec<u8>>>> = vec![None; chunks.len()];
        let mut owned: Vec<(usize, Arc<Slot>)> = Vec::new();
        let mut waiting: Vec<(usize, Arc<Slot>)> = Vec::new();
        for (i, c) in chunks.iter().enumerate() {
            if let Some((data, _)) = self.cache.get(&c.digest) {
                self.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
                out[i] = Some(data);
                continue;
            }
            let mut inflight = self.inflight.lock();
            if let Some(slot) = inflight.get(&c.digest) {
                waiting.push((i, slot.clone()));
            } else {
                let slot = Arc::new(Slot::default());
                inflight.insert(c.digest, slot.clone());
                owned.push((i, slot));
                self.stats.cache_misses.fetch_add(1, Ordering::Relaxed);
            }
        }
        if !owned.is_empty() {
            self.fetch_runs(layer, chunks, &owned);
            let mut inflight = self.inflight.lock();
            for (i, _) in &owned {
                inflight.remove(&chunks[*i].digest);
            }
        }
        for (i, slot) in owned.into_iter().chain(waiting) {
            out[i] = Some(slot.wait()?);
        }
        Ok(out.into_iter().flatten().collect())
    }

    /// Fetches the owned chunks, one blob read per run of adjacent (or overlapping)
    /// blob ranges, and fills their slots.
    fn fetch_runs(&self, layer: usize, chunks: &[Chunk], owned: &[(usize, Arc<Slot>)]) {
        let Some(l) = self.layers.get(layer) else {
            for (i, slot) in owned {
                slot.fill(Err(FetchError::Verify {
                    blob: Digest::of(b""),
                    chunk: chunks[*i].digest,
                    message: format!("no layer {layer}"),
                }));
            }
            return;
        };
        let mut order: Vec<&(usize, Arc<Slot>)> = owned.iter().collect();
        order.sort_by_key(|(i, _)| chunks[*i].blob_offset);
        // (blob start, blob end, the chunks read by that one range request)
        type Run<'a> = (u64, u64, Vec<&'a (usize, Arc<Slot>)>);
        let mut runs: Vec<Run> = Vec::new();
        for item in order {
            let c = &chunks[item.0];
            let end = c.blob_offset.saturating_add(c.blob_len);
            match runs.last_mut() {
                Some((_, run_end, members)) if c.blob_offset <= *run_end => {
                    *run_end = (*run_end).max(end);
                    members.push(item);
                }
                _ => runs.push((c.blob_offset, end, vec![item])),
            }
        }
        for (start, end, members) in runs {
            let len = end - start;
            self.stats.blob_requests.fetch_add(1, Ordering::Relaxed);
            let raw = match l.blob.read_at(start, len) {
                Ok(raw) => raw,
                Err(e) => {
                    self.stats.blob_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(blob = %l.index.blob, offset = start, len, error = %e, "blob read failed");
                    let err = FetchError::Blob {
                        blob: l.index.blob,
                        offset: start,
                        len,
                        message: e.to_string(),
                    };
                    for (_, slot) in members {
                        slot.fill(Err(err.clone()));
                    }
                    continue;
                }
            };
            self.stats
                .blob_bytes
                .fetch_add(raw.len() as u64, Ordering::Relaxed);
            for (i, slot) in members {
                let c = &chunks[*i];
                let from = (c.blob_offset - start) as usize;
                let piece = from
                    .checked_add(c.blob_len as usize)
                    .and_then(|to| raw.get(from..to));
                let res = match piece {
                    None => Err(FetchError::Verify {
                        blob: l.index.blob,
                        chunk: c.digest,
                        message: format!("short blob read: got {} bytes", raw.len()),
                    }),
                    Some(piece) => decode_chunk(&l.index, c, piece).map(Arc::new).map_err(|e| {
                        FetchError::Verify {
                            blob: l.index.blob,
                            chunk: c.digest,
                            message: e.to_string(),
                        }
                    }),
                };
                if let Ok(data) = &res {
                    self.cache.put(c.digest, data.clone());
                }
                slot.fill(res);
            }
        }
    }
}
