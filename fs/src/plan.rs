//! What to fetch, decided in one place: pure functions over a layer's chunk lists
//! that pick the chunks a read needs, what rides along with them (read-ahead on
//! sequential reads, whole-file prefetch of executables, the blob neighbours of a
//! small request, the other chunks a fetched range happens to contain), how missing
//! chunks merge into Range requests, and how speculative work splits into jobs.
//!
//! Nothing here touches the cache or the network: whether a chunk is already stored
//! or being fetched comes in as a predicate, so every rule is unit-tested with
//! hand-written chunk tables.

use skiff_proto::index::{Chunk, LayerIndex};
use skiff_proto::Digest;
use std::collections::HashSet;
use std::ops::Range;

/// Read-ahead follows a file's chunks only while each starts at most this many blob
/// bytes after the previous one ends (beyond, the gap costs more than a new request).
pub const READAHEAD_GAP: u64 = 64 << 10;

/// The end of a chunk's blob range.
fn blob_end(c: &Chunk) -> u64 {
    c.blob_offset.saturating_add(c.blob_len)
}

/// The indexes into `all` (a file's chunks, in file order) of the chunks holding
/// file bytes `[offset, end)`.
pub fn chunk_range(all: &[Chunk], offset: u64, end: u64) -> Range<usize> {
    let first = all.partition_point(|c| c.file_offset + c.len <= offset);
    let last = all.partition_point(|c| c.file_offset < end);
    first..last.max(first)
}

/// Read-ahead for a sequential read of `all[wanted]` that missed the cache: the
/// file's following chunks, in order, while each lies within `window` blob bytes of
/// the first wanted chunk's start and within [`READAHEAD_GAP`] of the previous one,
/// stopping at the first one `stored` (the request would fetch it again).
pub fn readahead(
    all: &[Chunk],
    wanted: Range<usize>,
    window: u64,
    stored: impl Fn(&Chunk) -> bool,
) -> Vec<Chunk> {
    let taken = all.get(wanted.clone()).unwrap_or(&[]);
    let base = taken.first().map_or(0, |c| c.blob_offset);
    let mut prev_end = taken.last().map_or(0, blob_end);
    let mut out = Vec::new();
    if window == 0 {
        return out;
    }
    for c in all.get(wanted.end..).unwrap_or(&[]) {
        let within = blob_end(c).saturating_sub(base) <= window;
        if !within || c.blob_offset > prev_end.saturating_add(READAHEAD_GAP) || stored(c) {
            break;
        }
        prev_end = blob_end(c);
        out.push(*c);
    }
    out
}

/// The block a random read of a big file fetches around itself; see [`block_around`].
pub const RANDOM_READ_BLOCK: u64 = 4 << 20;

/// For a random (not sequential) miss in a big file: the other chunks of the aligned
/// `block` of file bytes that holds the read's first chunk, in file order, skipping
/// the `stored` ones — the granularity eStargz's 4 MiB chunks give for free. A large
/// library paged in by scattered faults (node's libnode on zstd:chunked, whose
/// chunks are tens of KB: about 160 misses one after another, each a round trip, 1.8×
/// the eStargz time) then costs a round trip per block, not per chunk. Files smaller
/// than two blocks are left to the neighbour window.
pub fn block_around(
    all: &[Chunk],
    wanted: Range<usize>,
    file_size: u64,
    block: u64,
    stored: impl Fn(&Chunk) -> bool,
) -> Vec<Chunk> {
    let Some(first) = all.get(wanted.start) else {
        return Vec::new();
    };
    if block == 0 || file_size < block.saturating_mul(2) {
        return Vec::new();
    }
    let lo = first.file_offset / block * block;
    let around = chunk_range(all, lo, lo.saturating_add(block));
    around
        .filter(|i| !wanted.contains(i))
        .filter_map(|i| all.get(i))
        .filter(|c| !stored(c))
        .copied()
        .collect()
}

/// Whether a cache miss in a file should queue the rest of it whole: executables
/// only (exec'd programs page in most of their text, while libraries and data files
/// are mapped and touched sparsely: node's ICU data and libnode cost +12 MB fetched
/// and +0.4 s when every big file was queued whole; the node rows of
/// bench/RESULTS.md, `bash bench/coldstart.sh --images node --tools skiff`), of at
/// most `max` bytes, with chunks left beyond the `taken` ones of this read.
pub fn wants_whole_file(mode: u32, size: u64, chunks: usize, taken: usize, max: u64) -> bool {
    mode & 0o111 != 0 && chunks > taken && size <= max
}

/// The chunks of `all` that `taken` does not cover (by digest).
pub fn rest_of_file(all: &[Chunk], taken: &[Chunk]) -> Vec<Chunk> {
    all.iter()
        .filter(|c| !taken.iter().any(|t| t.digest == c.digest))
        .copied()
        .collect()
}

/// `rest` (the chunks of an executable left after its head, in file order) split
/// into its last chunk and the others. The loader reads the last one right after
/// the head: a stripped executable ends with its writable segment and dynamic
/// section, which name the libraries it needs (cc1's 33 MB: its last 4 MiB chunk).
pub fn tail_and_rest(mut rest: Vec<Chunk>) -> (Vec<Chunk>, Vec<Chunk>) {
    let tail = rest.pop().into_iter().collect();
    (tail, rest)
}

/// A layer's chunks in blob order (their positions in [`LayerIndex::chunks`], which
/// follow the layer's entries, not necessarily the blob). Every on-demand request
/// looks for the chunks stored just before and after it ([`neighbour_start`],
/// [`neighbour_end`]); with this it finds them by binary search instead of scanning
/// all of a layer's chunks (100,000 for a 100,000-file layer) each time.
pub struct BlobOrder(Vec<u32>);

impl BlobOrder {
    /// The order of `index`'s chunks (sorted once: 4 bytes a chunk).
    pub fn of(index: &LayerIndex) -> BlobOrder {
        // Chunks are addressed by `u32` (`Entry::first_chunk`); none lies beyond.
        let n = u32::try_from(index.chunks.len()).unwrap_or(u32::MAX);
        let mut order: Vec<u32> = (0..n).collect();
        order.sort_by_key(|&i| index.chunks[i as usize].blob_offset);
        BlobOrder(order)
    }

    /// The chunks of `index` (the index this order was made of) whose blob offset
    /// lies in `[lo, hi)`, in blob order.
    pub fn starting_in<'a>(
        &'a self,
        index: &'a LayerIndex,
        lo: u64,
        hi: u64,
    ) -> impl Iterator<Item = &'a Chunk> + 'a {
        let chunk = move |i: u32| index.chunks.get(i as usize);
        let first = self
            .0
            .partition_point(|&i| chunk(i).is_some_and(|c| c.blob_offset < lo));
        self.0[first..]
            .iter()
            .map_while(move |&i| chunk(i))
            .take_while(move |c| c.blob_offset < hi)
    }
}

/// How far a request for blob range `[start, end)` of `index` grows to take in the
/// chunks after it: in order of where they end, up to `start + window`, stopping at
/// the first one that is `busy` (stored or being fetched: it would be downloaded
/// again).
pub fn neighbour_end(
    index: &LayerIndex,
    order: &BlobOrder,
    start: u64,
    end: u64,
    window: u64,
    busy: impl Fn(&Chunk) -> bool,
) -> u64 {
    let limit = start.saturating_add(window);
    if end >= limit {
        return end;
    }
    let mut next: Vec<&Chunk> = order
        .starting_in(index, start, limit.saturating_add(1))
        .filter(|c| blob_end(c) > end && blob_end(c) <= limit)
        .collect();
    next.sort_by_key(|c| blob_end(c));
    let mut new_end = end;
    for c in next {
        if busy(c) {
            break;
        }
        new_end = blob_end(c);
    }
    new_end
}

/// How far back a request for blob range `[start, end)` of `index` reaches to take
/// in the chunks just before it: nearest first (in order of where they end, from
/// the latest), each lying wholly within `window` bytes before `start`, stopping at
/// the first one that is `busy`. Files read together are often read in the reverse
/// of their blob order (a compiler opening a header, then the one stored just before
/// it), and a request growing only forward misses those.
pub fn neighbour_start(
    index: &LayerIndex,
    order: &BlobOrder,
    start: u64,
    window: u64,
    busy: impl Fn(&Chunk) -> bool,
) -> u64 {
    let floor = start.saturating_sub(window);
    let mut before: Vec<&Chunk> = order
        .starting_in(index, floor, start)
        .filter(|c| blob_end(c) <= start)
        .collect();
    before.sort_by_key(|c| std::cmp::Reverse(blob_end(c)));
    let mut new_start = start;
    for c in before {
        if busy(c) {
            break;
        }
        new_start = new_start.min(c.blob_offset);
    }
    new_start
}

/// The chunks of `index`, other than `taken`, whose blob range lies inside
/// `[start, end)` and that are not `busy`, up to `max_bytes` of content: a fetched
/// range's bytes are here already, so they are decoded and cached too.
pub fn bonus_chunks(
    index: &LayerIndex,
    start: u64,
    end: u64,
    taken: &[Chunk],
    max_bytes: u64,
    busy: impl Fn(&Chunk) -> bool,
) -> Vec<Chunk> {
    let mut out: Vec<Chunk> = Vec::new();
    let mut seen: HashSet<Digest> = taken.iter().map(|c| c.digest).collect();
    let mut total = 0u64;
    for c in &index.chunks {
        let inside = c.blob_offset >= start && blob_end(c) <= end;
        if !inside || total.saturating_add(c.len) > max_bytes || seen.contains(&c.digest) || busy(c)
        {
            continue;
        }
        seen.insert(c.digest);
        total += c.len;
        out.push(*c);
    }
    out
}

/// One Range request: blob bytes `[start, end)` and the indexes of the chunks it
/// reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    /// First blob byte.
    pub start: u64,
    /// One past the last blob byte.
    pub end: u64,
    /// Indexes into the chunk list given to [`merge_runs`], in blob order.
    pub members: Vec<usize>,
}

/// Merges `chunks` (any order) into runs in blob order: a chunk joins the previous
/// run when it starts at most `gap` bytes after the run's end (or overlaps it) and
/// the run stays within `cap` bytes (a single chunk may exceed it).
pub fn merge_runs(chunks: &[Chunk], gap: u64, cap: u64) -> Vec<Run> {
    let mut order: Vec<usize> = (0..chunks.len()).collect();
    order.sort_by_key(|&i| chunks[i].blob_offset);
    let mut runs: Vec<Run> = Vec::new();
    for i in order {
        let c = &chunks[i];
        let end = blob_end(c);
        match runs.last_mut() {
            Some(r)
                if c.blob_offset <= r.end.saturating_add(gap)
                    && end.saturating_sub(r.start) <= cap.max(r.end - r.start) =>
            {
                r.end = r.end.max(end);
                r.members.push(i);
            }
            _ => runs.push(Run {
                start: c.blob_offset,
                end,
                members: vec![i],
            }),
        }
    }
    runs
}

/// Splits `chunks` (in blob order) into jobs spanning at most `max_bytes` of blob
/// each, leaving out the ones `stored`. Chunks resuming at the same gzip checkpoint
/// (same blob offset) stay in one job, so their shared range is read and inflated
/// once.
pub fn split_jobs(
    chunks: Vec<Chunk>,
    max_bytes: u64,
    stored: impl Fn(&Chunk) -> bool,
) -> Vec<Vec<Chunk>> {
    let mut jobs = Vec::new();
    let mut job: Vec<Chunk> = Vec::new();
    let mut job_start = 0u64;
    for c in chunks {
        if stored(&c) {
            continue;
        }
        let same_start = job.last().is_some_and(|l| l.blob_offset == c.blob_offset);
        if !job.is_empty() && !same_start && blob_end(&c).saturating_sub(job_start) > max_bytes {
            jobs.push(std::mem::take(&mut job));
        }
        if job.is_empty() {
            job_start = c.blob_offset;
        }
        job.push(c);
    }
    if !job.is_empty() {
        jobs.push(job);
    }
    jobs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_random_read_of_a_big_file_takes_its_aligned_block() {
        // 40 chunks of 100 KB: a 4 MB file; blocks of 1 MB.
        let all: Vec<Chunk> = (0..40u64)
            .map(|i| ch(i as u8, i * 100_000, 100_000, i * 50_000, 50_000))
            .collect();
        let wanted = chunk_range(&all, 2_500_000, 2_504_096);
        assert_eq!(wanted, 25..26);
        let got = block_around(&all, wanted.clone(), 4_000_000, 1 << 20, |_| false);
        // Block [2 MiB, 3 MiB) = bytes 2_097_152..3_145_728: chunks 20..=31, less 25.
        let offsets: Vec<u64> = got.iter().map(|c| c.file_offset).collect();
        let want: Vec<u64> = (20..32).filter(|&i| i != 25).map(|i| i * 100_000).collect();
        assert_eq!(offsets, want);
        // Stored chunks stay out; small files and a zero block get nothing.
        let got = block_around(&all, wanted.clone(), 4_000_000, 1 << 20, |c| {
            c.file_offset < 2_400_000
        });
        assert_eq!(got.first().map(|c| c.file_offset), Some(2_400_000));
        assert!(block_around(&all, wanted.clone(), 2_000_000, 1 << 20, |_| false).is_empty());
        assert!(block_around(&all, wanted, 4_000_000, 0, |_| false).is_empty());
    }
    use skiff_proto::index::{ChunkEncoding, LayerFormat};

    /// A chunk with digest number `n`, file bytes `[file_offset, +len)` and blob bytes
    /// `[blob_offset, +blob_len)`.
    fn ch(n: u8, file_offset: u64, len: u64, blob_offset: u64, blob_len: u64) -> Chunk {
        Chunk {
            blob_offset,
            blob_len,
            file_offset,
            len,
            digest: Digest::of(&[n]),
            encoding: ChunkEncoding::Raw,
        }
    }

    fn index(chunks: Vec<Chunk>) -> LayerIndex {
        LayerIndex {
            blob: Digest::of(b"blob"),
            blob_size: 1 << 30,
            format: LayerFormat::Tar,
            entries: Vec::new(),
            chunks,
            checkpoints: Vec::new(),
            prefetch: Vec::new(),
        }
    }

    fn ids(chunks: &[Chunk]) -> Vec<Digest> {
        chunks.iter().map(|c| c.digest).collect()
    }

    const KIB: u64 = 1 << 10;

    /// A 4-chunk file of 100 KiB chunks stored back to back from blob byte 1000,
    /// 100 KiB of blob each.
    fn file() -> Vec<Chunk> {
        (0..4u8)
            .map(|i| {
                let i64_ = u64::from(i);
                ch(
                    i,
                    i64_ * 100 * KIB,
                    100 * KIB,
                    1000 + i64_ * 100 * KIB,
                    100 * KIB,
                )
            })
            .collect()
    }

    #[test]
    fn chunk_range_picks_the_chunks_a_read_touches() {
        let f = file();
        assert_eq!(chunk_range(&f, 0, 1), 0..1);
        assert_eq!(chunk_range(&f, 102_399, 102_401), 0..2);
        assert_eq!(chunk_range(&f, 102_400, 204_800), 1..2);
        assert_eq!(chunk_range(&f, 150_000, 409_600), 1..4);
        assert_eq!(chunk_range(&f, 409_600, 409_700), 4..4);
        assert_eq!(chunk_range(&[], 0, 10), 0..0);
    }

    #[test]
    fn readahead_takes_following_chunks_within_the_window() {
        let f = file();
        // Window of 250 KiB from blob byte 1000: chunk 1 ends at 205800 (fits),
        // chunk 2 ends at 308200 (past 1000 + 256000).
        assert_eq!(
            ids(&readahead(&f, 0..1, 250 * KIB, |_| false)),
            ids(&f[1..2])
        );
        // 1 MiB takes the rest of the file.
        assert_eq!(ids(&readahead(&f, 0..1, 1 << 20, |_| false)), ids(&f[1..4]));
        // Off.
        assert!(readahead(&f, 0..1, 0, |_| false).is_empty());
        // Stops at the first stored chunk, even if later ones are missing.
        let stored = f[2].digest;
        let got = readahead(&f, 0..1, 1 << 20, |c| c.digest == stored);
        assert_eq!(ids(&got), ids(&f[1..2]));
    }

    #[test]
    fn readahead_stops_at_a_blob_gap() {
        // Chunk 1 starts 64 KiB after chunk 0 ends (allowed), chunk 2 one byte more
        // than 64 KiB after chunk 1 ends (not).
        let f = vec![
            ch(0, 0, 10, 0, 1000),
            ch(1, 10, 10, 1000 + 65_536, 1000),
            ch(2, 20, 10, 2000 + 65_536 + 65_537, 1000),
        ];
        assert_eq!(ids(&readahead(&f, 0..1, 1 << 20, |_| false)), ids(&f[1..2]));
    }

    #[test]
    fn whole_file_only_for_executables_with_chunks_left() {
        assert!(wants_whole_file(0o755, 1000, 4, 1, 64 << 20));
        assert!(!wants_whole_file(0o644, 1000, 4, 1, 64 << 20));
        assert!(!wants_whole_file(0o755, 1000, 4, 4, 64 << 20));
        assert!(!wants_whole_file(0o755, 65 << 20, 4, 1, 64 << 20));
        assert!(!wants_whole_file(0o755, 1000, 4, 1, 0));
        let f = file();
        assert_eq!(
            ids(&rest_of_file(&f, &f[1..3])),
            vec![f[0].digest, f[3].digest]
        );
    }

    #[test]
    fn the_tail_of_an_executable_is_its_last_chunk() {
        let f = file();
        let (tail, rest) = tail_and_rest(f[1..].to_vec());
        assert_eq!(ids(&tail), ids(&f[3..]));
        assert_eq!(ids(&rest), ids(&f[1..3]));
        let (tail, rest) = tail_and_rest(Vec::new());
        assert!(tail.is_empty() && rest.is_empty());
    }

    #[test]
    fn neighbours_grow_a_small_request_in_order_of_end() {
        // Request [100, 150); chunks ending at 400, 250, 900 (listed out of order) and
        // one starting before the request (never a neighbour).
        let idx = index(vec![
            ch(1, 0, 1, 250, 150),
            ch(2, 0, 1, 150, 100),
            ch(3, 0, 1, 400, 500),
            ch(4, 0, 1, 50, 250),
        ]);
        assert_eq!(
            neighbour_end(&idx, &BlobOrder::of(&idx), 100, 150, 1000, |_| false),
            900
        );
        assert_eq!(
            neighbour_end(&idx, &BlobOrder::of(&idx), 100, 150, 350, |_| false),
            400
        );
        // Stops at a busy chunk: only the one ending at 250 is taken.
        let one = Digest::of(&[1]);
        assert_eq!(
            neighbour_end(&idx, &BlobOrder::of(&idx), 100, 150, 1000, |c| c.digest
                == one),
            250
        );
        // The chunk starting before the request does not stop it.
        let four = Digest::of(&[4]);
        assert_eq!(
            neighbour_end(&idx, &BlobOrder::of(&idx), 100, 150, 1000, |c| c.digest
                == four),
            900
        );
        // A request already as long as the window is left alone.
        assert_eq!(
            neighbour_end(&idx, &BlobOrder::of(&idx), 100, 150, 50, |_| false),
            150
        );
    }

    #[test]
    fn a_request_reaches_back_over_the_chunks_just_before_it() {
        // Request starting at 1000; chunks before it ending at 1000, 900 and 400, one
        // overlapping the start (never taken), one past it.
        let idx = index(vec![
            ch(1, 0, 1, 900, 100),
            ch(2, 0, 1, 700, 200),
            ch(3, 0, 1, 300, 100),
            ch(4, 0, 1, 950, 100),
            ch(5, 0, 1, 1200, 100),
        ]);
        assert_eq!(
            neighbour_start(&idx, &BlobOrder::of(&idx), 1000, 400, |_| false),
            700
        );
        assert_eq!(
            neighbour_start(&idx, &BlobOrder::of(&idx), 1000, 800, |_| false),
            300
        );
        assert_eq!(
            neighbour_start(&idx, &BlobOrder::of(&idx), 1000, 50, |_| false),
            1000
        );
        // Stops at the first busy one, nearest first.
        let two = Digest::of(&[2]);
        assert_eq!(
            neighbour_start(&idx, &BlobOrder::of(&idx), 1000, 800, |c| c.digest == two),
            900
        );
        let one = Digest::of(&[1]);
        assert_eq!(
            neighbour_start(&idx, &BlobOrder::of(&idx), 1000, 800, |c| c.digest == one),
            1000
        );
        assert_eq!(
            neighbour_start(&idx, &BlobOrder::of(&idx), 0, 800, |_| false),
            0
        );
    }

    #[test]
    fn bonus_chunks_lie_inside_the_range_and_respect_the_budget() {
        let idx = index(vec![
            ch(1, 0, 40, 0, 100),   // taken
            ch(2, 0, 30, 100, 100), // inside
            ch(2, 0, 30, 200, 100), // same digest as 2: once
            ch(3, 0, 30, 150, 100), // inside
            ch(4, 0, 30, 350, 100), // ends past 400
            ch(5, 0, 50, 300, 100), // inside but over the 70-byte budget
            ch(6, 0, 10, 290, 100), // inside, busy
        ]);
        let taken = [idx.chunks[0]];
        let six = Digest::of(&[6]);
        let got = bonus_chunks(&idx, 0, 400, &taken, 70, |c| c.digest == six);
        assert_eq!(
            got.iter().map(|c| c.blob_offset).collect::<Vec<_>>(),
            vec![100, 150]
        );
    }

    #[test]
    fn runs_merge_across_small_gaps_up_to_the_cap() {
        let chunks = vec![
            ch(1, 0, 1, 5000, 100), // far: own run
            ch(2, 0, 1, 0, 100),
            ch(3, 0, 1, 150, 100), // 50-byte gap: joins
            ch(4, 0, 1, 200, 10),  // overlaps: joins, end stays 250
            ch(5, 0, 1, 400, 100), // 150-byte gap: new run
        ];
        assert_eq!(
            merge_runs(&chunks, 64, 1 << 20),
            vec![
                Run {
                    start: 0,
                    end: 250,
                    members: vec![1, 2, 3]
                },
                Run {
                    start: 400,
                    end: 500,
                    members: vec![4]
                },
                Run {
                    start: 5000,
                    end: 5100,
                    members: vec![0]
                },
            ]
        );
        // A cap of 250 bytes holds [0, 250); with 200 the second chunk starts a run
        // (which the overlapping third one joins).
        let capped = merge_runs(&chunks[1..4], 64, 250);
        assert_eq!(
            capped.iter().map(|r| (r.start, r.end)).collect::<Vec<_>>(),
            vec![(0, 250)]
        );
        let capped = merge_runs(&chunks[1..4], 64, 200);
        assert_eq!(
            capped.iter().map(|r| (r.start, r.end)).collect::<Vec<_>>(),
            vec![(0, 100), (150, 250)]
        );
        // One chunk bigger than the cap is still one run.
        assert_eq!(merge_runs(&[ch(9, 0, 1, 0, 500)], 64, 200).len(), 1);
    }

    #[test]
    fn jobs_split_by_blob_span_and_keep_checkpoint_groups() {
        let chunks = vec![
            ch(1, 0, 1, 0, 400),
            ch(2, 0, 1, 400, 400),  // span 800: same job
            ch(3, 0, 1, 800, 400),  // span 1200 > 1000: new job
            ch(4, 0, 1, 800, 900),  // same start as 3: stays with it
            ch(5, 0, 1, 1700, 100), // stored: left out
            ch(6, 0, 1, 1800, 100), // span from 800: 1100: new job
        ];
        let five = Digest::of(&[5]);
        let jobs = split_jobs(chunks, 1000, |c| c.digest == five);
        let starts: Vec<Vec<u64>> = jobs
            .iter()
            .map(|j| j.iter().map(|c| c.blob_offset).collect())
            .collect();
        assert_eq!(starts, vec![vec![0, 400], vec![800, 800], vec![1800]]);
        assert!(split_jobs(Vec::new(), 1000, |_| false).is_empty());
    }
}
