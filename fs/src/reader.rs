//! Serving reads of lower files: notes the read for a profile being recorded, tells
//! sequential reads from random ones, answers from the chunk cache when it can, and
//! otherwise asks the [`Fetcher`] for the chunks (with what [`crate::plan`] says
//! should ride along) and assembles the reply on the fetcher's thread.

use crate::fetcher::{ChunkData, FetchError, Fetcher};
use crate::profile::Recorder;
use crate::stats::Stats;
use crate::tree::{LowerId, LowerTree};
use parking_lot::Mutex;
use skiff_proto::index::Chunk;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

/// Errors from reading a lower file.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The lower node does not exist.
    #[error("no lower entry {0}")]
    NoEntry(LowerId),
    /// The entry names a layer the tree does not have.
    #[error("lower entry {id} names missing layer {layer}")]
    NoLayer {
        /// The lower node.
        id: LowerId,
        /// Its layer.
        layer: usize,
    },
    /// Fetching the chunks failed.
    #[error(transparent)]
    Fetch(#[from] FetchError),
}

impl ReadError {
    /// The errno a reader of the file gets.
    pub fn errno(&self) -> fuser::Errno {
        match self {
            ReadError::NoEntry(_) => fuser::Errno::ENOENT,
            _ => fuser::Errno::EIO,
        }
    }
}

/// Gets the bytes of one read (on the calling thread or a fetcher thread).
pub type ReadDone = Box<dyn FnOnce(Result<Vec<u8>, ReadError>) + Send>;

/// The read policy knobs.
#[derive(Debug, Clone, Default)]
pub struct ReadConfig {
    /// Notes every lower-file read (for a prefetch profile).
    pub recorder: Option<Arc<Recorder>>,
    /// Read-ahead on sequential reads that miss the cache, in blob bytes (0: off).
    pub readahead: u64,
    /// Executable files up to this size are queued whole on their first miss (0: off).
    pub whole_file_max: u64,
}

/// Serves lower-file reads for one mount.
pub struct LowerReader {
    tree: Arc<LowerTree>,
    fetcher: Arc<Fetcher>,
    stats: Arc<Stats>,
    config: ReadConfig,
    /// Where the last read of each lower file ended (sequential-access detection).
    read_ends: Mutex<HashMap<LowerId, u64>>,
    /// Lower files whose remaining chunks were queued whole.
    whole_queued: Mutex<HashSet<LowerId>>,
}

impl LowerReader {
    /// A reader of `tree`'s files through `fetcher`.
    pub fn new(
        tree: Arc<LowerTree>,
        fetcher: Arc<Fetcher>,
        stats: Arc<Stats>,
        config: ReadConfig,
    ) -> LowerReader {
        LowerReader {
            tree,
            fetcher,
            stats,
            config,
            read_ends: Mutex::new(HashMap::new()),
            whole_queued: Mutex::new(HashSet::new()),
        }
    }

    /// Reads up to `size` bytes at `offset` of lower file `id` and hands them to
    /// `done`: at once when the cache has them, else from a fetcher thread.
    pub fn read(&self, id: LowerId, offset: u64, size: u32, done: ReadDone) {
        let start = Instant::now();
        let Some(ln) = self.tree.node(id) else {
            return done(Err(ReadError::NoEntry(id)));
        };
        let Some(idx) = self.tree.layers.get(ln.layer) else {
            return done(Err(ReadError::NoLayer {
                id,
                layer: ln.layer,
            }));
        };
        let fsize = ln.entry.size;
        if offset >= fsize || size == 0 {
            return done(Ok(Vec::new()));
        }
        let end = fsize.min(offset.saturating_add(u64::from(size)));
        if let (Some(rec), Some(path)) = (&self.config.recorder, ln.paths.first()) {
            rec.record(path, offset, end);
        }
        let sequential = {
            let mut ends = self.read_ends.lock();
            let prev = ends.insert(id, end);
            offset == 0 || prev == Some(offset)
        };
        let all = idx.chunks_of(&ln.entry);
        let first = all.partition_point(|c| c.file_offset + c.len <= offset);
        let last = all.partition_point(|c| c.file_offset < end);
        let chunks: Vec<Chunk> = all.get(first..last).unwrap_or(&[]).to_vec();
        if let Some(data) = self.fetcher.cached(&chunks) {
            let out = assemble(&chunks, &data, offset, end);
            self.stats.record_read(start.elapsed(), out.len());
            return done(Ok(out));
        }
        let stats = self.stats.clone();
        let layer = ln.layer;
        let mut job = chunks.clone();
        if sequential && self.config.readahead > 0 {
            // Read-ahead: the file's next chunks that are nearby in the blob and not
            // cached ride along in the same request (the reply uses only `wanted`).
            let base = job.first().map_or(0, |c| c.blob_offset);
            for c in all.get(last..).unwrap_or(&[]) {
                let prev_end = job.last().map_or(0, |p| p.blob_offset + p.blob_len);
                let within = c
                    .blob_offset
                    .saturating_add(c.blob_len)
                    .saturating_sub(base)
                    <= self.config.readahead;
                if !within || c.blob_offset > prev_end.saturating_add(64 << 10) {
                    break;
                }
                if self.fetcher.cache().contains(&c.digest) {
                    break;
                }
                job.push(*c);
            }
        }
        // Executables only: exec'd programs page in most of their text, while libraries
        // and data files are mapped and touched sparsely (node's ICU data and libnode:
        // +12 MB fetched and +0.4 s when every big file was queued whole; the node rows
        // of bench/RESULTS.md, `bash bench/coldstart.sh --images node --tools skiff`).
        let executable = ln.entry.mode & 0o111 != 0;
        if executable && all.len() > job.len() && fsize <= self.config.whole_file_max {
            self.queue_rest_of_file(id, layer, all, &job);
        }
        let extra = job.split_off(chunks.len());
        self.fetcher.submit_readahead(
            layer,
            job,
            extra,
            Box::new(move |r| match r {
                Ok(data) => {
                    let out = assemble(&chunks, &data, offset, end);
                    stats.record_read(start.elapsed(), out.len());
                    done(Ok(out))
                }
                Err(e) => {
                    tracing::warn!(error = %e, "lower read failed");
                    done(Err(e.into()))
                }
            }),
        );
    }

    /// Queues, once per file, the chunks of a lower file that `taken` (this read) does
    /// not cover, as prefetch jobs of ~1 MiB of blob ([`Fetcher::queue_speculative`])
    /// that several workers fetch side by side. An executable paged in by faults, in no
    /// particular order, mostly needs the rest soon; fetched a fault at a time, each
    /// 4 MiB chunk waits for the previous one (gcc's cc1 on eStargz: 8 chunks one after
    /// another).
    fn queue_rest_of_file(&self, id: LowerId, layer: usize, all: &[Chunk], taken: &[Chunk]) {
        if !self.whole_queued.lock().insert(id) {
            return;
        }
        let rest: Vec<Chunk> = all
            .iter()
            .filter(|c| !taken.iter().any(|t| t.digest == c.digest))
            .copied()
            .collect();
        self.fetcher
            .queue_speculative(crate::fetcher::Priority::Prefetch, layer, rest);
    }
}

/// The bytes `[offset, end)` of a file, from the verified data of its `chunks`.
fn assemble(chunks: &[Chunk], data: &ChunkData, offset: u64, end: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity((end - offset) as usize);
    for (c, d) in chunks.iter().zip(data) {
        let cstart = c.file_offset;
        let from = offset.max(cstart);
        let to = end.min(cstart + d.len() as u64);
        if from >= to {
            continue;
        }
        let a = (from - cstart) as usize;
        let b = (to - cstart) as usize;
        if let Some(s) = d.get(a..b) {
            out.extend_from_slice(s);
        }
    }
    out
}
