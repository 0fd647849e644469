//! Streaming a whole tar+zstd layer once: for layers that cannot be read in chunks
//! (one big zstd frame, see [`skiff_proto::index::zstd::needs_whole_blob`]), every
//! chunk read would download the blob from the frame start up to the chunk. Instead
//! the blob is read once, front to back, decoded as it arrives, and each chunk is cut
//! out of the decoded stream, verified and handed on as soon as it is complete. Memory
//! stays bounded: one input and one output buffer plus the chunks being assembled
//! (each at most the index's chunk size), never the blob.

use crate::cache::ChunkCache;
use crate::fetcher::{FetchError, Layer};
use crate::stats::Stats;
use parking_lot::{Condvar, Mutex};
use skiff_proto::index::{Chunk, ChunkEncoding, LayerIndex};
use skiff_proto::{BlobReader, Digest};
use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;
use zstd::stream::raw::{Decoder, InBuffer, Operation, OutBuffer};

/// Bytes read from the blob at a time, and decoded at a time.
const BUF: usize = 1 << 20;

/// Why streaming a layer failed.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The blob could not be read.
    #[error("reading blob {blob}: {message}")]
    Blob {
        /// The layer blob.
        blob: Digest,
        /// The reader's error.
        message: String,
    },
    /// The blob is not valid zstd.
    #[error("decoding blob {blob} at byte {offset}: {message}")]
    Decode {
        /// The layer blob.
        blob: Digest,
        /// Compressed bytes consumed before the error.
        offset: u64,
        /// The decoder's error.
        message: String,
    },
}

/// Whether the fetcher should stream layer `index` whole instead of fetching chunks.
pub fn streams_whole(index: &LayerIndex) -> bool {
    index.format == skiff_proto::index::LayerFormat::TarZstd
        && skiff_proto::index::zstd::needs_whole_blob(index)
}

/// A chunk being cut out of the decoded stream.
struct Assembling<'a> {
    chunk: &'a Chunk,
    /// Where the chunk starts in the decoded stream.
    start: u64,
    data: Vec<u8>,
}

/// Streams `blob` (the layer of `index`) once and calls `done` with each chunk whose
/// bytes verified (digest matches), in stream order; chunks that do not verify are
/// logged and skipped. Stops early once `stop` says so (checked per input buffer).
/// Returns the blob bytes read.
pub fn stream_chunks(
    index: &LayerIndex,
    blob: &dyn BlobReader,
    stop: impl Fn() -> bool,
    mut done: impl FnMut(&Chunk, Vec<u8>),
) -> Result<u64, StreamError> {
    // Per frame (blob offset of its start): its chunks by start within the frame.
    let mut frames: BTreeMap<u64, Vec<(u64, &Chunk)>> = BTreeMap::new();
    for c in &index.chunks {
        if let ChunkEncoding::Zstd { skip } = c.encoding {
            frames.entry(c.blob_offset).or_default().push((skip, c));
        }
    }
    for list in frames.values_mut() {
        list.sort_by_key(|(skip, _)| *skip);
    }
    let blob_err = |e: String| StreamError::Blob {
        blob: index.blob,
        message: e,
    };
    let mut reader = blob.stream().map_err(|e| blob_err(e.to_string()))?;
    let mut dec = Decoder::new().map_err(|e| StreamError::Decode {
        blob: index.blob,
        offset: 0,
        message: e.to_string(),
    })?;
    let mut input = vec![0u8; BUF];
    let mut output = vec![0u8; BUF];
    let empty = Vec::new();
    // The frame being decoded: its chunks, the next one to start, where it started
    // in the decoded stream, and where the stream is now. A chunk may run on into the
    // following frames (the decoder reads across frames), so positions are global.
    let mut chunks: &[(u64, &Chunk)] = frames.get(&0).unwrap_or(&empty);
    let mut next = 0;
    let mut frame_base = 0u64;
    let mut pos = 0u64;
    let mut active: Vec<Assembling> = Vec::new();
    let mut consumed = 0u64;
    while !stop() {
        let n = loop {
            match reader.read(&mut input) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(blob_err(e.to_string())),
            }
        };
        if n == 0 {
            break;
        }
        let mut inb = InBuffer::around(&input[..n]);
        loop {
            let mut out = OutBuffer::around(&mut output[..]);
            let hint = dec
                .run(&mut inb, &mut out)
                .map_err(|e| StreamError::Decode {
                    blob: index.blob,
                    offset: consumed + inb.pos() as u64,
                    message: e.to_string(),
                })?;
            let produced = out.pos();
            let piece = &output[..produced];
            let end = pos + produced as u64;
            // Chunks starting in this piece begin assembling.
            while let Some(&(skip, c)) = chunks.get(next) {
                if frame_base + skip >= end {
                    break;
                }
                active.push(Assembling {
                    chunk: c,
                    start: frame_base + skip,
                    data: Vec::with_capacity(c.len as usize),
                });
                next += 1;
            }
            active.retain_mut(|a| {
                let want_from = a.start + a.data.len() as u64;
                let want_to = a.start + a.chunk.len;
                let from = want_from.max(pos);
                let to = want_to.min(end);
                if from < to {
                    a.data
                        .extend_from_slice(&piece[(from - pos) as usize..(to - pos) as usize]);
                }
                if a.data.len() as u64 == a.chunk.len {
                    let data = std::mem::take(&mut a.data);
                    if Digest::of(&data) == a.chunk.digest {
                        done(a.chunk, data);
                    } else {
                        tracing::warn!(blob = %index.blob, chunk = %a.chunk.digest, "streamed chunk does not match its digest");
                    }
                    return false;
                }
                true
            });
            pos = end;
            if hint == 0 {
                // A frame ended: the next one starts at the next compressed byte.
                let start = consumed + inb.pos() as u64;
                chunks = frames.get(&start).unwrap_or(&empty);
                next = 0;
                frame_base = pos;
            }
            if inb.pos() == n && produced < output.len() {
                break;
            }
        }
        consumed += n as u64;
    }
    Ok(consumed)
}

/// Streaming of one whole layer ([`crate::stream`]), shared by every job that needs
/// one of its chunks.
#[derive(Default)]
pub(crate) struct StreamState {
    /// A worker is streaming the layer now.
    pub(crate) running: bool,
    /// Streams finished so far (waiters notice one ended).
    pub(crate) finished: u64,
    /// How the last one ended.
    pub(crate) error: Option<FetchError>,
}

/// The stream states of the layers streamed whole, shared with the stream threads.
#[derive(Default)]
pub(crate) struct Streams {
    pub(crate) states: Mutex<HashMap<usize, StreamState>>,
    /// Signalled as chunks arrive and when a stream ends.
    pub(crate) changed: Condvar,
    /// The fetcher shut down: streams stop early.
    pub(crate) stopped: std::sync::atomic::AtomicBool,
}

/// Streams layer `l` once, storing every verified chunk in `cache` as it completes
/// (waiters on `shared` are woken for each).
pub(crate) fn stream_layer(
    l: &Layer,
    cache: &ChunkCache,
    stats: &Stats,
    shared: &Streams,
) -> Result<(), FetchError> {
    stats.blob_requests.fetch_add(1, Ordering::Relaxed);
    let t0 = Instant::now();
    let mut chunks = 0u64;
    let stop = || shared.stopped.load(Ordering::Relaxed);
    let res = stream_chunks(&l.index, l.blob.as_ref(), stop, |c, data| {
        chunks += 1;
        cache.put(c.digest, Arc::new(data));
        shared.changed.notify_all();
    });
    match res {
        Ok(bytes) => {
            stats.blob_bytes.fetch_add(bytes, Ordering::Relaxed);
            tracing::info!(blob = %l.index.blob, bytes, chunks, ms = t0.elapsed().as_millis() as u64, "streamed a whole layer");
            Ok(())
        }
        Err(e) => {
            stats.blob_errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(blob = %l.index.blob, error = %e, "streaming a whole layer failed");
            Err(FetchError::Blob {
                blob: l.index.blob,
                offset: 0,
                len: l.index.blob_size,
                message: e.to_string(),
            })
        }
    }
}
