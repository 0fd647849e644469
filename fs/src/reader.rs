//! Serving reads of lower files: notes the read for a profile being recorded, tells
//! sequential reads from random ones, answers from the chunk cache when it can, and
//! otherwise asks the [`Fetcher`] for the chunks (with what [`crate::plan`] says
//! should ride along) and assembles the reply on the fetcher's thread.

use crate::fetcher::{FetchError, Fetcher};
use crate::plan;
use crate::predict::Predictor;
use crate::profile::Recorder;
use crate::stats::Stats;
use crate::tree::{LowerId, LowerTree};
use parking_lot::Mutex;
use skiff_proto::index::Chunk;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Weak};
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
    /// Fetches what the dynamic loader will open after an ELF file's head is read
    /// ([`crate::predict`]; `None`: off).
    pub predictor: Option<Arc<Predictor>>,
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
    /// Fetches ahead of the dynamic loader (`None`: off).
    predictor: Option<Arc<Predictor>>,
    /// Big files being read from start to end: how far ahead they are queued.
    streams: Mutex<HashMap<LowerId, Stream>>,
}

/// Read-ahead state of one file read sequentially (see [`LowerReader::stream_ahead`]).
#[derive(Debug, Clone, Copy)]
struct Stream {
    /// File offset up to which chunks are queued.
    ahead: u64,
    /// How much the next step queues (doubles up to [`STREAM_WINDOW_MAX`]).
    window: u64,
}

/// Files at least this big get streaming read-ahead.
const STREAM_MIN_FILE: u64 = 4 << 20;
/// The first streaming read-ahead step, in file bytes.
const STREAM_WINDOW_START: u64 = 2 << 20;
/// The largest step.
const STREAM_WINDOW_MAX: u64 = 16 << 20;

impl LowerReader {
    /// A reader of `tree`'s files through `fetcher`.
    pub fn new(
        tree: Arc<LowerTree>,
        fetcher: Arc<Fetcher>,
        stats: Arc<Stats>,
        config: ReadConfig,
    ) -> LowerReader {
        let predictor = config.predictor.clone();
        LowerReader {
            tree,
            fetcher,
            stats,
            config,
            predictor,
            streams: Mutex::new(HashMap::new()),
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
        if let Some(rec) = &self.config.recorder {
            if let Some(path) = ln.path() {
                rec.record(&path, offset, end);
            }
        }
        let (sequential, continued) = {
            let mut ends = self.read_ends.lock();
            let prev = ends.insert(id, end);
            (offset == 0 || prev == Some(offset), prev == Some(offset))
        };
        let all = idx.chunks_of(&ln.entry);
        if continued {
            self.stream_ahead(id, ln.layer, all, end, fsize);
        }
        let wanted = plan::chunk_range(all, offset, end);
        let chunks: Vec<Chunk> = all.get(wanted.clone()).unwrap_or(&[]).to_vec();
        // The one cache lookup of this read: what it finds goes with the job, so the
        // fetcher does not ask again.
        // A read from a file's start may be exec or the loader opening a library.
        let predictor = self.predictor.clone().filter(|_| offset == 0);
        // A read past the start: a program's page fault, maybe in data naming files.
        let data_watch = self.predictor.clone().filter(|_| offset > 0);
        let found = match self.fetcher.lookup(&chunks) {
            Ok(data) => {
                if let Some(p) = &predictor {
                    p.on_head(id, pieces(&chunks, &data));
                }
                let out = assemble(&chunks, &data, offset, end);
                self.stats.record_read(start.elapsed(), out.len());
                done(Ok(out));
                // (after the reply: looking through a chunk takes a moment, once)
                if let Some(p) = &data_watch {
                    p.on_data(id, &chunks, &data);
                }
                return;
            }
            Err(found) => found,
        };
        let stats = self.stats.clone();
        let layer = ln.layer;
        // Read-ahead: on a sequential read, the file's next chunks that are nearby in
        // the blob and not stored ride along in the same request (the reply uses only
        // `chunks`).
        // A random read of a big file: the rest of its block rides along.
        let cache = self.fetcher.cache();
        let extra = if sequential {
            plan::readahead(all, wanted, self.config.readahead, |c| {
                cache.contains(&c.digest)
            })
        } else {
            plan::block_around(all, wanted, fsize, block_size(), |c| {
                cache.contains(&c.digest)
            })
        };
        let taken = chunks.len() + extra.len();
        let rest = if plan::wants_whole_file(
            ln.entry.mode,
            fsize,
            all.len(),
            taken,
            self.config.whole_file_max,
        ) {
            let job: Vec<Chunk> = chunks.iter().chain(&extra).copied().collect();
            let (tail, rest) = plan::tail_and_rest(self.rest_of_file(id, all, &job));
            // The loader reads the end of an executable right after its head.
            self.fetcher
                .queue_speculative(crate::fetcher::Priority::Prefetch, layer, tail);
            rest
        } else {
            Vec::new()
        };
        // An exec or a library's load: what it will ask for next is guessed from
        // the first chunk while it arrives.
        let watched = predictor.as_ref().and_then(|p| p.watch_head(id, &chunks));
        let fetcher = Arc::downgrade(&self.fetcher);
        self.fetcher.submit_readahead(
            layer,
            chunks.clone(),
            found,
            extra,
            Box::new(move |r| match r {
                Ok(data) => {
                    unpeek(&fetcher, watched);
                    let out = assemble(&chunks, &data, offset, end);
                    stats.record_read(start.elapsed(), out.len());
                    done(Ok(out));
                    if let Some(p) = predictor {
                        p.on_head(id, pieces(&chunks, &data));
                    }
                    if let Some(p) = data_watch {
                        p.on_data(id, &chunks, &data);
                    }
                    queue_rest(&fetcher, layer, rest);
                }
                Err(e) => {
                    unpeek(&fetcher, watched);
                    tracing::warn!(error = %e, "lower read failed");
                    done(Err(e.into()));
                    queue_rest(&fetcher, layer, rest);
                }
            }),
        );
    }

    /// Process `pid` opened lower file `id` for exec ([`Predictor::exec_opened`]).
    pub fn exec_opened(&self, pid: u32, id: LowerId) {
        if let Some(p) = &self.predictor {
            p.exec_opened(pid, id);
        }
    }

    /// Keeps a big file that is read from start to end fetched ahead of its reader, as
    /// the kernel's read-ahead does for a disk: when the reader comes within half a
    /// window of what is queued, the next window is queued (as prefetch jobs that
    /// several workers fetch side by side), and the window doubles. Fetching only on
    /// each miss left a round trip idle per megabyte: a first `cat` of node's 47 MB
    /// libnode moved 81 Mbit/s over a 100 Mbit/s, 20 ms link.
    fn stream_ahead(&self, id: LowerId, layer: usize, all: &[Chunk], end: u64, fsize: u64) {
        if fsize < STREAM_MIN_FILE {
            return;
        }
        let (from, to) = {
            let mut streams = self.streams.lock();
            let s = streams.entry(id).or_insert(Stream {
                ahead: end,
                window: STREAM_WINDOW_START,
            });
            s.ahead = s.ahead.max(end);
            if s.ahead >= fsize || s.ahead - end >= s.window / 2 {
                return;
            }
            let from = s.ahead;
            s.ahead = from.saturating_add(s.window).min(fsize);
            s.window = (s.window * 2).min(STREAM_WINDOW_MAX);
            (from, s.ahead)
        };
        let chunks = all
            .get(plan::chunk_range(all, from, to))
            .unwrap_or(&[])
            .to_vec();
        self.fetcher
            .queue_speculative(crate::fetcher::Priority::Prefetch, layer, chunks);
    }

    /// Once per file, the chunks of a lower file that `taken` (this read) does not
    /// cover, to be queued ([`queue_rest`]) once this read is answered. An executable
    /// paged in by faults, in no particular order, mostly needs the rest soon; fetched
    /// a fault at a time, each 4 MiB chunk waits for the previous one (gcc's cc1 on
    /// eStargz: 8 chunks one after another).
    fn rest_of_file(&self, id: LowerId, all: &[Chunk], taken: &[Chunk]) -> Vec<Chunk> {
        if !self.whole_queued.lock().insert(id) {
            return Vec::new();
        }
        plan::rest_of_file(all, taken)
    }
}

/// Queues `rest` (the rest of an executable but its last chunk,
/// [`plan::tail_and_rest`]) as [`Priority::Later`](crate::fetcher::Priority::Later)
/// jobs of ~1 MiB of blob ([`Fetcher::queue_speculative`]). Called once the read of
/// the file's head is answered, and after the loader's next files were predicted
/// from it: queued with the head as prefetch, the rest shared the link with it and
/// with the loader's reads (a link serving bytes in the order asked: cc1's 1.7 MB
/// head took 420 ms beside 6 rest jobs instead of ~170 ms, and its libraries came
/// 800 ms after they were predicted, behind its text).
fn queue_rest(fetcher: &Weak<Fetcher>, layer: usize, rest: Vec<Chunk>) {
    if rest.is_empty() {
        return;
    }
    if let Some(f) = fetcher.upgrade() {
        f.queue_speculative(crate::fetcher::Priority::Later, layer, rest);
    }
}

/// Drops the peek a read set at chunk `watched` ([`crate::predict::Predictor::watch_head`])
/// once the read ended.
pub(crate) fn unpeek(fetcher: &Weak<Fetcher>, watched: Option<skiff_proto::Digest>) {
    if let (Some(d), Some(f)) = (watched, fetcher.upgrade()) {
        f.unpeek(&d);
    }
}

/// [`plan::RANDOM_READ_BLOCK`], or `SKIFF_READ_BLOCK` bytes (0: off) when set: for
/// benchmarks weighing block sizes.
fn block_size() -> u64 {
    static BLOCK: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *BLOCK.get_or_init(|| {
        std::env::var("SKIFF_READ_BLOCK")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(plan::RANDOM_READ_BLOCK)
    })
}

/// The verified data of `chunks`, by file offset.
fn pieces(chunks: &[Chunk], data: &[Arc<Vec<u8>>]) -> Vec<(u64, Arc<Vec<u8>>)> {
    chunks
        .iter()
        .map(|c| c.file_offset)
        .zip(data.iter().cloned())
        .collect()
}

/// The bytes `[offset, end)` of a file, from the verified data of its `chunks`.
fn assemble(chunks: &[Chunk], data: &[Arc<Vec<u8>>], offset: u64, end: u64) -> Vec<u8> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fetcher::ChunkData;
    use skiff_proto::index::ChunkEncoding;
    use skiff_proto::Digest;

    fn ch(file_offset: u64, len: u64) -> Chunk {
        Chunk {
            blob_offset: 0,
            blob_len: len,
            file_offset,
            len,
            digest: Digest::of(&file_offset.to_le_bytes()),
            encoding: ChunkEncoding::Raw,
        }
    }

    #[test]
    fn assemble_cuts_the_read_out_of_its_chunks() {
        // File "abcd" "efgh" "ij" in three chunks.
        let chunks = [ch(0, 4), ch(4, 4), ch(8, 2)];
        let data: ChunkData = [&b"abcd"[..], b"efgh", b"ij"]
            .iter()
            .map(|d| Arc::new(d.to_vec()))
            .collect();
        assert_eq!(assemble(&chunks, &data, 0, 10), b"abcdefghij");
        assert_eq!(assemble(&chunks, &data, 3, 9), b"defghi");
        assert_eq!(assemble(&chunks[1..2], &data[1..2], 5, 7), b"fg");
        // A short chunk (should not happen once verified) gives a short reply, not a panic.
        let short: ChunkData = vec![Arc::new(b"ab".to_vec())];
        assert_eq!(assemble(&chunks[..1], &short, 1, 4), b"b");
    }
}
