//! The chunk fetcher: turns "these chunks of this layer" into verified bytes, from the
//! cache when possible, else with one blob read per run of nearby missing chunks (chunks
//! whose blob ranges are at most [`FetchTuning::merge_gap`] apart share one request).
//!
//! Fetches run on the fetcher's own worker threads and hand their result to a callback,
//! so a FUSE thread never waits on the network; the number of workers (times
//! [`PARALLEL_RUNS`], for a job whose chunks lie apart in the blob) bounds how many
//! Range requests are in flight at once, across chunks and layers. Jobs have a
//! [`Priority`]: on-demand reads go first, then prefetch, and background jobs run only
//! while no on-demand read is queued or running (and none arrived in the last
//! [`FetchTuning::background_quiet`]) and no prefetch is queued, on at most half of the
//! workers; prefetch leaves two workers free for on-demand reads. [`Priority::Later`]
//! jobs run fewer at a time, so that on a link that serves bytes in the order they were
//! asked for, a read never queues behind much of them. Concurrent requests for the same
//! chunk share one fetch (an in-flight table keyed by chunk digest). A range's chunks
//! are decoded as its bytes arrive ([`ChunkDecoder`]), each answered once its last
//! byte is in; nothing is returned or cached unless it was verified against its digest.
//! Chunks that lie wholly inside a fetched range are decoded and cached too, asked for
//! or not ([`decode_chunks`]). While a chunk arrives, [`Fetcher::peek`] lets the
//! predictor look at its decoded, not yet verified, first bytes to choose what to
//! fetch next; such bytes are never answered to a read.

use crate::cache::ChunkCache;
use crate::plan;
use crate::stats::Stats;
use crate::stream::{stream_layer, Streams};
use parking_lot::{Condvar, Mutex};
use skiff_proto::index::{decode_chunks, Chunk, ChunkDecoder, ChunkEncoding, LayerIndex};
use skiff_proto::{BlobReader, Digest};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How close (in blob bytes) an on-demand request must land to the layer's previous
/// one for reads to count as local (see [`FetchTuning::neighbour_window`]).
const LOCALITY: u64 = 1 << 20;

/// Largest blob span of one prefetch or background job: small enough that many run in
/// parallel and an on-demand read never waits long behind one.
const SPECULATIVE_JOB_BYTES: u64 = 1 << 20;

/// Most [`Priority::Later`] jobs running at once: two keep the link busy, and a
/// read arriving meanwhile waits behind at most two 1 MiB jobs (at 100 Mbit/s,
/// ~170 ms; with six running, cc1's libraries waited 800 ms behind its text).
pub const LATER_RUNNING: usize = 2;

/// Most Range requests one job has in flight at once (its runs lie apart in the blob).
const PARALLEL_RUNS: usize = 4;

/// Most content decoded from one fetched range beyond the chunks asked for.
const MAX_BONUS_BYTES: u64 = 32 << 20;

/// Most blob bytes one chunk may need fetched. A bigger chunk (a hostile or broken
/// index) is an error, not a download; layers whose chunks are that big by nature
/// (one-frame tar+zstd) are streamed once instead ([`crate::stream`]).
pub const MAX_CHUNK_FETCH: u64 = 64 << 20;

/// Most peeks waiting at once ([`Fetcher::peek`]); more are dropped unheard.
const MAX_PEEKS: usize = 256;

/// A look at the first bytes of a chunk while it is still arriving, before it is
/// verified ([`Fetcher::peek`]).
pub type Peek = Box<dyn FnOnce(&[u8]) + Send>;

/// Peeks waiting for their chunk's bytes, by chunk digest, each with how many
/// decoded bytes it waits for.
#[derive(Default)]
struct Peeks {
    waiting: Mutex<HashMap<Digest, Vec<(usize, Peek)>>>,
    /// How many are waiting (read without the lock on every piece of every range).
    count: std::sync::atomic::AtomicUsize,
}

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

/// How urgent a fetch is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// A read is waiting for it.
    OnDemand,
    /// Prefetch of a recorded profile or producer-marked files.
    Prefetch,
    /// The rest of a file whose head a read just got (an executable paged in
    /// next): starts only when no on-demand or prefetch job is queued, at most
    /// [`LATER_RUNNING`] at a time, so that what is needed first (the head, the
    /// files the loader opens next, page faults) does not queue on the link behind
    /// it.
    Later,
    /// Filling the cache with the rest of the image; yields to on-demand reads.
    Background,
}

/// Knobs of the fetcher.
#[derive(Debug, Clone)]
pub struct FetchTuning {
    /// Missing chunks whose blob ranges are at most this many bytes apart are read with
    /// one request (the gap bytes are downloaded and dropped).
    pub merge_gap: u64,
    /// No single request grows past this many bytes by merging.
    pub max_request: u64,
    /// Background jobs wait until no on-demand read has been submitted (and the fetcher
    /// has existed) for this long: start-up reads come first.
    pub background_quiet: Duration,
    /// An on-demand request smaller than this, landing within 1 MiB (`LOCALITY`) of the
    /// layer's previous one, grows to take in the uncached chunks that follow it in the
    /// blob, up to this many bytes from its start: files read together mostly sit
    /// together in the tar (a compiler's headers), and one round trip costs as much as
    /// 250 KB at 100 Mbit/s and 20 ms. Without the locality test, reads scattered over
    /// the layer paid for neighbours nobody read (python on eStargz: +1.5 MB, +0.1 s;
    /// `bash bench/coldstart.sh --images python,gcc --tools skiff` with this at 0).
    pub neighbour_window: u64,
    /// An on-demand request also takes in the uncached chunks lying within this many
    /// blob bytes before it, and, unless the neighbour window applies (a small local
    /// request), within this many bytes after it: a compiler reads headers stored
    /// side by side, often the later one first, python's `encodings` package reads
    /// `__init__` and then `aliases`, stored 0.5 KB after it, and gcc's linker reads
    /// the files stored 0.3 and 18 KB after the ones it read before; each was a round
    /// trip of its own (20 ms RTT, 30–50 ms under the benchmark's shaper) for a few KB.
    /// 0: off.
    pub read_around: u64,
}

impl Default for FetchTuning {
    /// 64 KiB gap, 8 MiB requests, 32 KiB read around a request, 3 s of quiet
    /// before background work. With 500 ms,
    /// background jobs started in the pauses of a cold python start-up and took the link
    /// from it (bench/coldstart.sh, 100 Mbit/s: plain gzip 3.5 s → 10.2 s).
    fn default() -> Self {
        FetchTuning {
            merge_gap: 64 << 10,
            max_request: 8 << 20,
            background_quiet: Duration::from_secs(3),
            neighbour_window: 256 << 10,
            read_around: 32 << 10,
        }
    }
}

struct Job {
    layer: usize,
    chunks: Vec<Chunk>,
    /// The first `required` chunks are the answer; the rest ride along (read-ahead).
    required: usize,
    /// What the submitter already found in the cache ([`Fetcher::lookup`]); `None`:
    /// the worker looks the chunks up.
    found: Option<Found>,
    done: Done,
}

/// What one cache lookup of a read's chunks found: the data of those that are
/// cached, in order. Handed on to [`Fetcher::submit_readahead`] so the worker does
/// not ask the cache for the same chunks again.
#[derive(Debug, Clone)]
pub struct Found(Vec<Option<Arc<Vec<u8>>>>);

/// The job queues and what the workers are doing (under one lock).
#[derive(Default)]
struct Queues {
    on_demand: VecDeque<Job>,
    prefetch: VecDeque<Job>,
    background: VecDeque<Job>,
    later: VecDeque<Job>,
    running_on_demand: usize,
    running_later: usize,
    running_prefetch: usize,
    running_background: usize,
    running: usize,
    closed: bool,
    /// When the last on-demand read was queued (initially: when the fetcher started).
    last_on_demand: Option<Instant>,
}

impl Queues {
    fn is_idle(&self) -> bool {
        self.running == 0
            && self.on_demand.is_empty()
            && self.prefetch.is_empty()
            && self.background.is_empty()
            && self.later.is_empty()
    }
}

/// A chunk of a range being fetched, decoded as its bytes arrive.
struct Streaming {
    /// `None` once the chunk was answered.
    decoder: Option<ChunkDecoder>,
    slot: Arc<Slot>,
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
    /// Per layer, where the last on-demand request ended (locality detection).
    last_miss: Mutex<HashMap<usize, u64>>,
    tuning: FetchTuning,
    queues: Mutex<Queues>,
    /// Signalled when a job is queued, finishes, or the fetcher closes.
    changed: Condvar,
    workers: usize,
    /// Per layer: streamed whole instead of fetched by chunk.
    whole: Vec<bool>,
    /// Per layer: its chunks in blob order, made on its first on-demand request.
    blob_order: Vec<std::sync::OnceLock<plan::BlobOrder>>,
    /// The streams of the layers streamed whole.
    streams: Arc<Streams>,
    /// Looks at chunks still arriving.
    peeks: Peeks,
}

/// The chunk fetcher with its worker threads (stopped when dropped).
pub struct Fetcher {
    inner: Arc<Inner>,
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
        Fetcher::with_tuning(layers, cache, stats, threads, FetchTuning::default())
    }

    /// [`Fetcher::new`] with explicit knobs.
    pub fn with_tuning(
        layers: Vec<Layer>,
        cache: Arc<ChunkCache>,
        stats: Arc<Stats>,
        threads: usize,
        tuning: FetchTuning,
    ) -> Fetcher {
        let threads = threads.max(1);
        let whole = layers
            .iter()
            .map(|l| crate::stream::streams_whole(&l.index))
            .collect();
        let inner = Arc::new(Inner {
            blob_order: layers.iter().map(|_| std::sync::OnceLock::new()).collect(),
            whole,
            streams: Arc::new(Streams::default()),
            layers,
            cache,
            stats,
            inflight: Mutex::new(HashMap::new()),
            last_miss: Mutex::new(HashMap::new()),
            tuning,
            queues: Mutex::new(Queues {
                last_on_demand: Some(Instant::now()),
                ..Queues::default()
            }),
            changed: Condvar::new(),
            workers: threads,
            peeks: Peeks::default(),
        });
        let mut workers = Vec::new();
        for i in 0..threads {
            let inner = inner.clone();
            let h = std::thread::Builder::new()
                .name(format!("skiff-fetch-{i}"))
                .spawn(move || inner.work());
            if let Ok(h) = h {
                workers.push(h);
            }
        }
        Fetcher {
            inner,
            workers: Mutex::new(workers),
        }
    }

    /// Calls `peek` with the first `at` decoded bytes of `chunk` (fewer if the chunk
    /// is shorter) as soon as they are in, **before the chunk is verified**: the
    /// predictor guesses from them what a file's loading will ask for next, which
    /// for a chunk of megabytes is known long before its last byte. Only a chunk
    /// decoded while its range arrives (gzip, zstd) is looked at; a peek that never
    /// fires is dropped by [`Fetcher::unpeek`], or replaced once [`MAX_PEEKS`] wait.
    /// `peek` runs on the thread reading the range: it must be quick.
    pub fn peek(&self, chunk: &Chunk, at: usize, peek: Peek) {
        let peeks = &self.inner.peeks;
        let mut waiting = peeks.waiting.lock();
        if peeks.count.load(Ordering::Relaxed) >= MAX_PEEKS {
            return;
        }
        waiting.entry(chunk.digest).or_default().push((at, peek));
        peeks.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Drops the peeks at chunk `digest` that have not fired (its fetch ended, or it
    /// was found stored).
    pub fn unpeek(&self, digest: &Digest) {
        let peeks = &self.inner.peeks;
        if let Some(dropped) = peeks.waiting.lock().remove(digest) {
            peeks.count.fetch_sub(dropped.len(), Ordering::Relaxed);
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

    /// Looks each of `chunks` up in the cache, once: all cached gives their data
    /// (counting hits); otherwise what was found, for [`Fetcher::submit_readahead`]
    /// (which counts those hits when the job runs).
    pub fn lookup(&self, chunks: &[Chunk]) -> Result<ChunkData, Found> {
        let found: Vec<Option<Arc<Vec<u8>>>> = chunks
            .iter()
            .map(|c| self.inner.cache.get(&c.digest).map(|(d, _)| d))
            .collect();
        if found.iter().any(Option::is_none) {
            return Err(Found(found));
        }
        self.inner
            .stats
            .cache_hits
            .fetch_add(chunks.len() as u64, Ordering::Relaxed);
        Ok(found.into_iter().flatten().collect())
    }

    /// Whether every one of `chunks` is in the disk cache (not verified).
    pub fn all_on_disk(&self, chunks: &[Chunk]) -> bool {
        chunks.iter().all(|c| self.inner.cache.on_disk(&c.digest))
    }

    /// Fetches `chunks` of layer `layer` on a worker thread and calls `done` there
    /// (an on-demand read).
    pub fn submit(&self, layer: usize, chunks: Vec<Chunk>, done: Done) {
        self.submit_with(Priority::OnDemand, layer, chunks, done)
    }

    /// Queues a fetch of `chunks` of layer `layer` at `priority`; `done` runs on a
    /// worker thread (or here, with [`FetchError::Stopped`], once shut down).
    pub fn submit_with(&self, priority: Priority, layer: usize, chunks: Vec<Chunk>, done: Done) {
        let required = chunks.len();
        self.queue(
            priority,
            Job {
                layer,
                chunks,
                required,
                found: None,
                done,
            },
        )
    }

    /// An on-demand read of `chunks` that also fetches `extra` (read-ahead) in the same
    /// requests where they are nearby; `done` gets only `chunks`' data, and a failure of
    /// an extra chunk does not fail the read. `found` is what [`Fetcher::lookup`] found
    /// of `chunks`; `extra` was chosen among chunks not stored.
    pub fn submit_readahead(
        &self,
        layer: usize,
        mut chunks: Vec<Chunk>,
        found: Found,
        extra: Vec<Chunk>,
        done: Done,
    ) {
        let required = chunks.len();
        chunks.extend(extra);
        self.queue(
            Priority::OnDemand,
            Job {
                layer,
                chunks,
                required,
                found: Some(found),
                done,
            },
        )
    }

    fn queue(&self, priority: Priority, job: Job) {
        let mut q = self.inner.queues.lock();
        if q.closed {
            drop(q);
            return (job.done)(Err(FetchError::Stopped));
        }
        match priority {
            Priority::OnDemand => {
                q.last_on_demand = Some(Instant::now());
                q.on_demand.push_back(job)
            }
            Priority::Prefetch => q.prefetch.push_back(job),
            Priority::Background => q.background.push_back(job),
            Priority::Later => q.later.push_back(job),
        }
        drop(q);
        self.inner.changed.notify_all();
    }

    /// Splits `chunks` (in blob order) into jobs of at most 1 MiB of blob
    /// ([`plan::split_jobs`]) and queues them at `priority`, skipping chunks already
    /// stored. Failures are only logged: nobody waits for these.
    pub fn queue_speculative(&self, priority: Priority, layer: usize, chunks: Vec<Chunk>) {
        let cache = &self.inner.cache;
        for job in plan::split_jobs(chunks, SPECULATIVE_JOB_BYTES, |c| cache.contains(&c.digest)) {
            self.submit_with(
                priority,
                layer,
                job,
                Box::new(move |r| {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, ?priority, "speculative fetch failed");
                    }
                }),
            );
        }
    }

    /// Whether no job is queued or running.
    pub fn is_idle(&self) -> bool {
        self.inner.queues.lock().is_idle()
    }

    /// Waits until no job is queued or running, or `timeout` passed; returns whether idle.
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut q = self.inner.queues.lock();
        while !q.is_idle() {
            if self.inner.changed.wait_until(&mut q, deadline).timed_out() {
                return q.is_idle();
            }
        }
        true
    }

    /// Drops every queued (not yet running) prefetch and background job.
    pub fn cancel_speculative(&self) {
        let jobs: Vec<Job> = {
            let mut q = self.inner.queues.lock();
            let mut v: Vec<Job> = q.prefetch.drain(..).collect();
            v.extend(q.background.drain(..));
            v.extend(q.later.drain(..));
            v
        };
        for j in jobs {
            (j.done)(Err(FetchError::Stopped));
        }
        self.inner.changed.notify_all();
    }

    /// Fetches `chunks` on the calling thread (copy-up, prefetch).
    pub fn fetch_blocking(&self, layer: usize, chunks: &[Chunk]) -> Result<ChunkData, FetchError> {
        self.inner.load(layer, chunks, chunks.len(), false, None)
    }

    /// Stops the workers: queued on-demand jobs still run, queued prefetch and
    /// background jobs are dropped; waits for running jobs, then for the cache to
    /// write what they fetched.
    pub fn shutdown(&self) {
        self.inner.streams.stopped.store(true, Ordering::Relaxed);
        self.cancel_speculative();
        self.inner.queues.lock().closed = true;
        self.inner.changed.notify_all();
        for h in self.workers.lock().drain(..) {
            let _ = h.join();
        }
        // Everything fetched is on disk before the caller reports or remounts.
        self.inner.cache.flush();
    }
}

impl Drop for Fetcher {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl Inner {
    /// A worker's loop: take the most urgent runnable job, run it, repeat until closed.
    fn work(&self) {
        loop {
            let (job, priority) = {
                let mut q = self.queues.lock();
                let picked = loop {
                    if let Some(j) = q.on_demand.pop_front() {
                        q.running_on_demand += 1;
                        break (j, Priority::OnDemand);
                    }
                    // Two workers stay free for on-demand reads arriving meanwhile.
                    if q.running_prefetch < self.workers.saturating_sub(2).max(1) {
                        if let Some(j) = q.prefetch.pop_front() {
                            q.running_prefetch += 1;
                            break (j, Priority::Prefetch);
                        }
                    }
                    let may_later = q.prefetch.is_empty()
                        && q.running_later < LATER_RUNNING
                        && q.running_prefetch + q.running_later
                            < self.workers.saturating_sub(2).max(1);
                    if may_later {
                        if let Some(j) = q.later.pop_front() {
                            q.running_later += 1;
                            break (j, Priority::Later);
                        }
                    }
                    let quiet = q
                        .last_on_demand
                        .is_none_or(|t| t.elapsed() >= self.tuning.background_quiet);
                    let may_background = q.running_on_demand == 0
                        && q.prefetch.is_empty()
                        && q.running_background < (self.workers / 2).max(1)
                        && quiet;
                    if may_background {
                        if let Some(j) = q.background.pop_front() {
                            q.running_background += 1;
                            break (j, Priority::Background);
                        }
                    }
                    if q.closed && q.on_demand.is_empty() {
                        return;
                    }
                    let background_waits = !q.background.is_empty()
                        && q.running_on_demand == 0
                        && q.prefetch.is_empty();
                    if background_waits {
                        // Background work is waiting for the quiet period to pass.
                        self.changed
                            .wait_for(&mut q, self.tuning.background_quiet / 2);
                    } else {
                        self.changed.wait(&mut q);
                    }
                };
                q.running += 1;
                picked
            };
            let r = self.load(
                job.layer,
                &job.chunks,
                job.required,
                priority == Priority::OnDemand,
                job.found,
            );
            (job.done)(r);
            let mut q = self.queues.lock();
            q.running -= 1;
            match priority {
                Priority::OnDemand => q.running_on_demand -= 1,
                Priority::Background => q.running_background -= 1,
                Priority::Prefetch => q.running_prefetch -= 1,
                Priority::Later => q.running_later -= 1,
            }
            drop(q);
            self.changed.notify_all();
        }
    }

    /// Loads `chunks`; the result holds the first `required` of them, and only their
    /// failures fail it. `neighbours`: small requests also take in what follows them
    /// ([`FetchTuning::neighbour_window`]).
    ///
    /// `found` is the submitter's lookup of the first chunks: the cache is not asked
    /// again for what it found, and a chunk it missed is only re-checked in the
    /// cache's index (another job may have fetched it while this one was queued).
    /// The other chunks are looked up here, once.
    fn load(
        &self,
        layer: usize,
        chunks: &[Chunk],
        required: usize,
        neighbours: bool,
        found: Option<Found>,
    ) -> Result<ChunkData, FetchError> {
        let mut out: Vec<Option<Arc<Vec<u8>>>> = found.map(|f| f.0).unwrap_or_default();
        let looked_up = out.len();
        out.resize(chunks.len(), None);
        let mut owned: Vec<(usize, Arc<Slot>)> = Vec::new();
        let mut waiting: Vec<(usize, Arc<Slot>)> = Vec::new();
        let mut missing = Vec::new();
        for (i, c) in chunks.iter().enumerate() {
            if out[i].is_none() && (i >= looked_up || self.cache.contains(&c.digest)) {
                out[i] = self.cache.get(&c.digest).map(|(data, _)| data);
            }
            if out[i].is_some() {
                self.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
            } else {
                missing.push(i);
            }
        }
        // One lock for the whole job, so two jobs over the same chunks (concurrent
        // kernel reads of one file) do not split them between two requests.
        {
            let mut inflight = self.inflight.lock();
            for i in missing {
                let c = &chunks[i];
                if let Some(slot) = inflight.get(&c.digest) {
                    waiting.push((i, slot.clone()));
                } else {
                    let slot = Arc::new(Slot::default());
                    inflight.insert(c.digest, slot.clone());
                    owned.push((i, slot));
                    self.stats.cache_misses.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        if !owned.is_empty() {
            self.fetch_runs(layer, chunks, &owned, neighbours);
            let mut inflight = self.inflight.lock();
            for (i, _) in &owned {
                inflight.remove(&chunks[*i].digest);
            }
        }
        for (i, slot) in owned.into_iter().chain(waiting) {
            if i < required {
                out[i] = Some(slot.wait()?);
            }
        }
        Ok(out.into_iter().take(required).flatten().collect())
    }

    /// Records an on-demand request for `[start, end)` of `layer`; whether it landed
    /// within [`LOCALITY`] of the previous one.
    fn near_last_miss(&self, layer: usize, start: u64, end: u64) -> bool {
        let prev = self.last_miss.lock().insert(layer, end);
        prev.is_some_and(|p| start.abs_diff(p) <= LOCALITY)
    }

    /// The blob range an on-demand request for `[start, end)` of `layer` reads: it
    /// grows over the chunks after it (a small one landing near the layer's previous
    /// request up to the neighbour window from its start, any other up to
    /// [`FetchTuning::read_around`] past its end) and over those just before it
    /// (up to `read_around`), never over a chunk stored or being fetched.
    fn grow(&self, layer: usize, l: &Layer, start: u64, end: u64) -> (u64, u64) {
        let t = &self.tuning;
        let local = self.near_last_miss(layer, start, end);
        let small = end.saturating_sub(start) < t.neighbour_window;
        let window = if local && small {
            t.neighbour_window
        } else {
            (end - start).saturating_add(t.read_around)
        };
        let Some(order) = self.blob_order.get(layer) else {
            return (start, end);
        };
        let order = order.get_or_init(|| plan::BlobOrder::of(&l.index));
        let busy = |c: &Chunk| self.busy(&self.inflight.lock(), c);
        let new_end = plan::neighbour_end(&l.index, order, start, end, window, busy);
        let new_start = match t.read_around {
            0 => start,
            around => plan::neighbour_start(&l.index, order, start, around, busy),
        };
        (new_start, new_end)
    }

    /// Whether chunk `c` is stored or being fetched (a range request taking it in
    /// would download it again). `inflight` is the locked in-flight table.
    fn busy(&self, inflight: &HashMap<Digest, Arc<Slot>>, c: &Chunk) -> bool {
        inflight.contains_key(&c.digest) || self.cache.contains(&c.digest)
    }

    /// Fetches the owned chunks, one blob read per run of nearby (or overlapping)
    /// blob ranges, and fills their slots.
    fn fetch_runs(
        &self,
        layer: usize,
        chunks: &[Chunk],
        owned: &[(usize, Arc<Slot>)],
        neighbours: bool,
    ) {
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
        if self.whole.get(layer).copied().unwrap_or(false) {
            for (i, slot) in owned {
                slot.fill(self.chunk_via_stream(layer, l, &chunks[*i]));
            }
            return;
        }
        let (owned, too_big): (Vec<_>, Vec<_>) = owned
            .iter()
            .partition(|(i, _)| chunks[*i].blob_len <= MAX_CHUNK_FETCH);
        for (i, slot) in too_big {
            let c = &chunks[*i];
            slot.fill(Err(FetchError::Verify {
                blob: l.index.blob,
                chunk: c.digest,
                message: format!(
                    "the chunk needs {} blob bytes fetched, more than the {MAX_CHUNK_FETCH} allowed",
                    c.blob_len
                ),
            }));
        }
        let owned: Vec<(usize, Arc<Slot>)> = owned.into_iter().cloned().collect();
        let owned_chunks: Vec<Chunk> = owned.iter().map(|(i, _)| chunks[*i]).collect();
        let runs = plan::merge_runs(
            &owned_chunks,
            self.tuning.merge_gap,
            self.tuning.max_request,
        );
        // A job's runs lie apart in the blob (a library's header, its writable
        // segment and its dynamic section; a read spanning far-apart chunks): fetched
        // side by side, up to [`PARALLEL_RUNS`] at once, not one round trip after
        // another (node's libnode: its loader ranges took two in turn, 300 ms).
        for batch in runs.chunks(PARALLEL_RUNS) {
            let Some((first, others)) = batch.split_first() else {
                continue;
            };
            std::thread::scope(|scope| {
                for run in others {
                    let inline = std::thread::Builder::new()
                        .name("skiff-fetch-run".into())
                        .spawn_scoped(scope, || {
                            self.fetch_run(layer, l, chunks, &owned, run, neighbours)
                        })
                        .is_err();
                    if inline {
                        self.fetch_run(layer, l, chunks, &owned, run, neighbours);
                    }
                }
                self.fetch_run(layer, l, chunks, &owned, first, neighbours);
            });
        }
    }

    /// Fetches one run of `owned` chunks (one Range request, grown by
    /// [`Inner::grow`] for on-demand reads when `neighbours`), decodes and caches
    /// what it holds, and fills the members' slots.
    fn fetch_run(
        &self,
        layer: usize,
        l: &Layer,
        chunks: &[Chunk],
        owned: &[(usize, Arc<Slot>)],
        run: &plan::Run,
        neighbours: bool,
    ) {
        let plan::Run {
            start,
            end,
            ref members,
        } = *run;
        let members: Vec<&(usize, Arc<Slot>)> = members.iter().map(|&k| &owned[k]).collect();
        let (start, end) = if neighbours {
            self.grow(layer, l, start, end)
        } else {
            (start, end)
        };
        let len = end - start;
        self.stats.blob_requests.fetch_add(1, Ordering::Relaxed);
        let t0 = Instant::now();
        // Members are decoded while the range arrives, each handed to its readers as
        // soon as its last byte is in: a 4 MiB chunk's inflate overlaps its own
        // transfer, and a small file at the front of a long range does not wait for
        // the rest. Checkpoint chunks are inflated together at the end (below).
        let (at_end, streamed): (Vec<_>, Vec<_>) = members
            .iter()
            .copied()
            .partition(|(i, _)| matches!(chunks[*i].encoding, ChunkEncoding::Checkpoint { .. }));
        let mut streaming: Vec<Streaming> = streamed
            .iter()
            .map(|(i, slot)| Streaming {
                decoder: Some(ChunkDecoder::new(&chunks[*i])),
                slot: Arc::clone(slot),
            })
            .collect();
        let mut raw: Vec<u8> = Vec::with_capacity(len as usize);
        let read = l.blob.read_at_with(start, len, &mut |piece| {
            let from = start + raw.len() as u64;
            raw.extend_from_slice(piece);
            for s in streaming.iter_mut() {
                self.feed(l, s, from, piece);
            }
        });
        self.stats
            .blob_bytes
            .fetch_add(raw.len() as u64, Ordering::Relaxed);
        if let Err(e) = read {
            self.stats.blob_errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(blob = %l.index.blob, offset = start, len, error = %e, "blob read failed");
            let err = FetchError::Blob {
                blob: l.index.blob,
                offset: start,
                len,
                message: e.to_string(),
            };
            // Chunks that came whole before the break were answered already.
            let unanswered = streaming.iter().filter(|s| s.decoder.is_some());
            for slot in unanswered
                .map(|s| &s.slot)
                .chain(at_end.iter().map(|(_, s)| s))
            {
                slot.fill(Err(err.clone()));
            }
            return;
        }
        for s in streaming.iter_mut() {
            self.finish_streaming(l, s);
        }
        let t1 = Instant::now();
        // Other chunks of the layer lying wholly inside the fetched range are
        // decoded too (the bytes are here already): gzip spans holding many small
        // files, gaps bridged by merging.
        let all: Vec<Chunk> = members.iter().map(|(i, _)| chunks[*i]).collect();
        let extras = {
            let inflight = self.inflight.lock();
            plan::bonus_chunks(&l.index, start, end, &all, MAX_BONUS_BYTES, |c| {
                self.busy(&inflight, c)
            })
        };
        let mut batch: Vec<Chunk> = at_end.iter().map(|(i, _)| chunks[*i]).collect();
        batch.extend(extras);
        let decoded = decode_chunks(&l.index, &batch, start, &raw);
        for (k, (c, res)) in batch.iter().zip(decoded).enumerate() {
            let res = res.map(Arc::new).map_err(|e| FetchError::Verify {
                blob: l.index.blob,
                chunk: c.digest,
                message: e.to_string(),
            });
            if let Some((_, slot)) = at_end.get(k) {
                slot.fill(res.clone());
            }
            if let Ok(data) = res {
                self.cache.put(c.digest, data);
            }
        }
        tracing::debug!(
            blob = %l.index.blob,
            offset = start,
            len,
            chunks = streaming.len() + batch.len(),
            fetch_ms = (t1 - t0).as_millis() as u64,
            decode_and_store_ms = t1.elapsed().as_millis() as u64,
            "blob range read"
        );
    }

    /// Hands `piece` (blob bytes from offset `from`) to `s`'s decoder as far as they
    /// belong to its chunk, and the chunk to its readers once its range is complete.
    fn feed(&self, l: &Layer, s: &mut Streaming, from: u64, piece: &[u8]) {
        let Some(dec) = s.decoder.as_mut() else {
            return;
        };
        let c = dec.chunk();
        let chunk_end = c.blob_offset.saturating_add(c.blob_len);
        let to = from + piece.len() as u64;
        let (lo, hi) = (c.blob_offset.max(from), chunk_end.min(to));
        if lo < hi {
            dec.feed(&piece[(lo - from) as usize..(hi - from) as usize]);
        }
        self.fire_peeks(dec);
        if to >= chunk_end {
            self.finish_streaming(l, s);
        }
    }

    /// Runs the peeks at `dec`'s chunk that its decoded bytes satisfy.
    fn fire_peeks(&self, dec: &ChunkDecoder) {
        let peeks = &self.peeks;
        if peeks.count.load(Ordering::Relaxed) == 0 {
            return;
        }
        let have = dec.decoded();
        if have.is_empty() {
            return;
        }
        let complete = have.len() as u64 >= dec.chunk().len;
        // A peek may set another on the same chunk (a further look once more is
        // in): it runs here too if the bytes it waits for are in already.
        loop {
            let ready: Vec<(usize, Peek)> = {
                let mut waiting = peeks.waiting.lock();
                let Some(list) = waiting.get_mut(&dec.chunk().digest) else {
                    return;
                };
                let (ready, wait): (Vec<_>, Vec<_>) = std::mem::take(list)
                    .into_iter()
                    .partition(|(at, _)| complete || *at <= have.len());
                *list = wait;
                if list.is_empty() {
                    waiting.remove(&dec.chunk().digest);
                }
                peeks.count.fetch_sub(ready.len(), Ordering::Relaxed);
                ready
            };
            if ready.is_empty() {
                return;
            }
            for (at, peek) in ready {
                peek(&have[..at.min(have.len())]);
            }
        }
    }

    /// Ends `s` (once): verifies its chunk, answers its readers, then caches it.
    fn finish_streaming(&self, l: &Layer, s: &mut Streaming) {
        let Some(dec) = s.decoder.take() else {
            return;
        };
        let digest = dec.chunk().digest;
        let res = dec
            .finish(&l.index)
            .map(Arc::new)
            .map_err(|e| FetchError::Verify {
                blob: l.index.blob,
                chunk: digest,
                message: e.to_string(),
            });
        s.slot.fill(res.clone());
        if let Ok(data) = res {
            self.cache.put(digest, data);
        }
    }

    /// Chunk `c` of streamed layer `layer`: from the cache once the layer's stream has
    /// stored it. The first job that misses starts the stream (once, on its own thread,
    /// so each waiting job is answered as soon as its chunk went by); the others wait
    /// for their chunks. A job whose chunk is missing after a stream it saw end gets
    /// an error (the stream's, or "not in the layer"); a later job streams again.
    fn chunk_via_stream(
        &self,
        layer: usize,
        l: &Layer,
        c: &Chunk,
    ) -> Result<Arc<Vec<u8>>, FetchError> {
        let mut seen_end = false;
        loop {
            if let Some((data, _)) = self.cache.get(&c.digest) {
                return Ok(data);
            }
            let shared = &self.streams;
            let mut states = shared.states.lock();
            let st = states.entry(layer).or_default();
            if st.running {
                let finished = st.finished;
                shared
                    .changed
                    .wait_for(&mut states, Duration::from_millis(200));
                let st = states.entry(layer).or_default();
                if st.finished != finished {
                    seen_end = true;
                }
                continue;
            }
            if seen_end {
                let err = st.error.clone().unwrap_or_else(|| FetchError::Verify {
                    blob: l.index.blob,
                    chunk: c.digest,
                    message: "the chunk did not turn up in the streamed layer".into(),
                });
                drop(states);
                return self.cache.get(&c.digest).map(|(d, _)| d).ok_or(err);
            }
            st.running = true;
            drop(states);
            let (streamed, cache, stats, shared) = (
                l.clone(),
                self.cache.clone(),
                self.stats.clone(),
                self.streams.clone(),
            );
            let spawned = std::thread::Builder::new()
                .name(format!("skiff-stream-{layer}"))
                .spawn(move || {
                    let res = stream_layer(&streamed, &cache, &stats, &shared);
                    let mut states = shared.states.lock();
                    let st = states.entry(layer).or_default();
                    st.running = false;
                    st.finished += 1;
                    st.error = res.err();
                    shared.changed.notify_all();
                });
            if let Err(e) = spawned {
                let mut states = self.streams.states.lock();
                states.entry(layer).or_default().running = false;
                return Err(FetchError::Blob {
                    blob: l.index.blob,
                    offset: 0,
                    len: l.index.blob_size,
                    message: format!("cannot start the stream thread: {e}"),
                });
            }
        }
    }
}
