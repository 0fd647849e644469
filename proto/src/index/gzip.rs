//! Indexing a plain tar+gzip layer: one streaming pass that builds the TOC and zran
//! checkpoints, so that any later read fetches one range from the nearest checkpoint
//! and inflates at most one span.
//!
//! While the tar walker consumes the inflated stream, `IndexingInflater` stops
//! zlib at every deflate block boundary (`Z_BLOCK`) and, every `span` bytes of output,
//! records a [`Checkpoint`]: the compressed offset, the bit offset and the window of
//! the 32 KiB of output before it. Chunks are cut at checkpoints, so each chunk lies
//! within one span. It also notes, after every inflate step, how much input had been
//! consumed for how much output ([`Progress`]), so a chunk's `blob_len` ends where its
//! last byte had been produced (plus a small margin) rather than at the next
//! checkpoint: a tiny file costs a few KiB of compressed bytes, not a whole span.

use super::checkpoint::{Inflater, AUTO_HEADER, WINDOW_SIZE};
use super::model::{Checkpoint, Chunk, ChunkEncoding, IndexError, LayerFormat, LayerIndex};
use super::tar::walk_tar_split;
use super::IndexOptions;
use crate::blob::BlobReader;
use libz_sys as z;
use std::cell::RefCell;
use std::io::{self, Read};
use std::rc::Rc;

/// Default distance between checkpoints, in uncompressed bytes. A read inflates from
/// the checkpoint before it, so the span bounds the bytes fetched in vain per read; each
/// checkpoint costs a 32 KiB window in the index. On the bench's python image at
/// 100 Mbit/s, 4 MiB spans fetched 21 MB for a 4.3 MB start-up (2.85 s); 2 MiB spans
/// 9.9 MB (1.9 s) with an index of 2% of the layer; 1 MiB spans gained only 0.07 s
/// for an index twice that size. To redo: `skiff index --no-published --push --span S`
/// on `bench/python:gzip`, then `bash bench/coldstart.sh --images python --tools skiff`.
pub const DEFAULT_SPAN: u64 = 2 << 20;

const IN_BUF: usize = 256 << 10;
const OUT_STEP: usize = 256 << 10;

/// Indexes a tar+gzip layer with checkpoints in one streaming pass over the blob.
pub fn index_tar_gzip(
    blob: &dyn BlobReader,
    opts: &IndexOptions,
) -> Result<LayerIndex, IndexError> {
    let digest = blob.digest();
    let malformed = |reason: String| IndexError::Malformed {
        format: "tar+gzip",
        blob: digest,
        reason,
    };
    let checkpoints = Rc::new(RefCell::new(Vec::<Checkpoint>::new()));
    let progress: Progress = Rc::new(RefCell::new(Vec::new()));
    let mut inflater = IndexingInflater::new(blob.stream()?, opts.span, checkpoints.clone(), opts)
        .map_err(malformed)?;
    inflater.progress = Some(progress.clone());
    let split = |a: u64, b: u64| {
        let cps = checkpoints.borrow();
        let i = cps.partition_point(|c| c.stream_offset <= a);
        cps.get(i).map(|c| c.stream_offset).filter(|&s| s <= b)
    };
    let walk = walk_tar_split(inflater, digest, "tar+gzip", opts.chunk_size, &split)?;
    let checkpoints = Rc::try_unwrap(checkpoints)
        .map(RefCell::into_inner)
        .unwrap_or_else(|rc| rc.borrow().clone());
    let chunks = map_to_checkpoints(walk.chunks, &checkpoints, blob.size()).map_err(malformed)?;
    let chunks = bound_by_progress(chunks, &checkpoints, &progress.borrow());
    Ok(LayerIndex {
        blob: digest,
        blob_size: blob.size(),
        format: LayerFormat::TarGzip,
        entries: walk.entries,
        chunks,
        checkpoints,
        prefetch: Vec::new(),
    })
}

/// Turns stream-offset chunks into [`ChunkEncoding::Checkpoint`] chunks: each starts
/// at the checkpoint at or before it and fetches up to the first checkpoint at or after
/// its end (or the end of the blob).
pub(crate) fn map_to_checkpoints(
    chunks: Vec<Chunk>,
    checkpoints: &[Checkpoint],
    blob_size: u64,
) -> Result<Vec<Chunk>, String> {
    chunks
        .into_iter()
        .map(|c| {
            let start = c.blob_offset;
            let end = start
                .checked_add(c.len)
                .ok_or_else(|| format!("chunk at stream offset {start} overflows"))?;
            let i = checkpoints
                .partition_point(|cp| cp.stream_offset <= start)
                .checked_sub(1)
                .ok_or_else(|| format!("no checkpoint before stream offset {start}"))?;
            let cp = &checkpoints[i];
            let from = cp.blob_offset - u64::from(cp.bits != 0).min(cp.blob_offset);
            let j = checkpoints.partition_point(|cp| cp.stream_offset < end);
            let to = checkpoints
                .get(j)
                .map(|cp| cp.blob_offset)
                .unwrap_or(blob_size)
                .min(blob_size);
            if to < from {
                return Err(format!("checkpoints out of order at stream offset {start}"));
            }
            Ok(Chunk {
                blob_offset: from,
                blob_len: to - from,
                file_offset: c.file_offset,
                len: c.len,
                digest: c.digest,
                encoding: ChunkEncoding::Checkpoint {
                    checkpoint: u32::try_from(i).map_err(|_| "too many checkpoints".to_string())?,
                    skip: start - cp.stream_offset,
                },
            })
        })
        .collect()
}

/// `(stream offset reached, blob offset consumed)` after each inflate step, in order.
pub(crate) type Progress = Rc<RefCell<Vec<(u64, u64)>>>;

/// Compressed bytes fetched past the point where a chunk's last byte was produced:
/// covers a gzip member trailer and header, should the chunk end at a member's end.
const END_MARGIN: u64 = 64;

/// Shortens each checkpoint chunk's blob range to end where inflating had produced
/// its last byte (the first progress point at or past its end), plus [`END_MARGIN`].
/// Inflate never consumes input it does not need for the output it has produced so
/// far or holds pending, so those bytes suffice.
fn bound_by_progress(
    mut chunks: Vec<Chunk>,
    checkpoints: &[Checkpoint],
    progress: &[(u64, u64)],
) -> Vec<Chunk> {
    for c in &mut chunks {
        let ChunkEncoding::Checkpoint { checkpoint, skip } = c.encoding else {
            continue;
        };
        let Some(cp) = checkpoints.get(checkpoint as usize) else {
            continue;
        };
        let Some(end) = cp
            .stream_offset
            .checked_add(skip)
            .and_then(|s| s.checked_add(c.len))
        else {
            continue;
        };
        let i = progress.partition_point(|&(out, _)| out < end);
        let Some(&(_, consumed)) = progress.get(i) else {
            continue;
        };
        let bound = consumed.saturating_add(END_MARGIN);
        let current_end = c.blob_offset.saturating_add(c.blob_len);
        if bound < current_end && bound > c.blob_offset {
            c.blob_len = bound - c.blob_offset;
        }
    }
    chunks
}

#[derive(PartialEq)]
enum State {
    /// Inside a gzip member.
    Member,
    /// A member just ended; another may follow.
    Between,
    /// No more output.
    Done,
}

/// A [`Read`] over the inflated content of a (multi-member) gzip stream that records
/// checkpoints as it goes.
pub(crate) struct IndexingInflater<'a, R> {
    input: R,
    inbuf: Vec<u8>,
    in_start: usize,
    in_end: usize,
    input_eof: bool,
    /// Blob offset of `inbuf[in_start]`.
    in_offset: u64,
    inf: Inflater,
    /// Output buffer; `out[..out_start]` is history kept for windows.
    out: Vec<u8>,
    out_start: usize,
    out_end: usize,
    /// Stream offset of `out[out_end]`.
    out_total: u64,
    /// Output of the current member so far.
    member_out: u64,
    span: u64,
    last_checkpoint: Option<u64>,
    checkpoints: Rc<RefCell<Vec<Checkpoint>>>,
    state: State,
    opts: &'a IndexOptions<'a>,
    /// Where to note input consumed per output produced, if anywhere.
    pub(crate) progress: Option<Progress>,
}

impl<'a, R: Read> IndexingInflater<'a, R> {
    pub(crate) fn new(
        input: R,
        span: u64,
        checkpoints: Rc<RefCell<Vec<Checkpoint>>>,
        opts: &'a IndexOptions<'a>,
    ) -> Result<Self, String> {
        Ok(IndexingInflater {
            input,
            inbuf: vec![0u8; IN_BUF],
            in_start: 0,
            in_end: 0,
            input_eof: false,
            in_offset: 0,
            inf: Inflater::new(AUTO_HEADER)?,
            out: vec![0u8; WINDOW_SIZE + 2 * OUT_STEP],
            out_start: 0,
            out_end: 0,
            out_total: 0,
            member_out: 0,
            span: span.max(1),
            last_checkpoint: None,
            checkpoints,
            state: State::Member,
            opts,
            progress: None,
        })
    }

    fn refill(&mut self) -> io::Result<()> {
        if self.in_start < self.in_end || self.input_eof {
            return Ok(());
        }
        self.in_start = 0;
        self.in_end = 0;
        let n = loop {
            match self.input.read(&mut self.inbuf) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        };
        if n == 0 {
            self.input_eof = true;
        }
        self.in_end = n;
        if let Some(progress) = self.opts.progress {
            progress(self.in_offset + n as u64);
        }
        Ok(())
    }

    fn consume_input(&mut self, n: usize) {
        self.in_start += n;
        self.in_offset += n as u64;
    }

    /// Produces more output into `out[out_end..]`; returns when some was produced or
    /// the stream is done.
    fn fill(&mut self) -> io::Result<()> {
        // Keep only the last window of history once the buffer is full.
        if self.out_end + OUT_STEP > self.out.len() {
            let keep = self.out_end.min(WINDOW_SIZE);
            self.out.copy_within(self.out_end - keep..self.out_end, 0);
            self.out_start = keep;
            self.out_end = keep;
        }
        loop {
            match self.state {
                State::Done => return Ok(()),
                State::Between => {
                    self.refill()?;
                    if self.in_end - self.in_start < 2 && !self.input_eof {
                        // Need two bytes to recognise a header; pull the rest forward.
                        self.inbuf.copy_within(self.in_start..self.in_end, 0);
                        self.in_end -= self.in_start;
                        self.in_start = 0;
                        let n = self.input.read(&mut self.inbuf[self.in_end..])?;
                        if n == 0 {
                            self.input_eof = true;
                        }
                        self.in_end += n;
                        continue;
                    }
                    if self.inbuf[self.in_start..self.in_end].starts_with(&[0x1f, 0x8b]) {
                        self.inf.reset(AUTO_HEADER).map_err(io::Error::other)?;
                        self.member_out = 0;
                        self.state = State::Member;
                    } else {
                        // End of input, or padding after the last member.
                        self.state = State::Done;
                    }
                }
                State::Member => {
                    self.refill()?;
                    let input = &self.inbuf[self.in_start..self.in_end];
                    let end = (self.out_end + OUT_STEP).min(self.out.len());
                    let step = self
                        .inf
                        .inflate(input, &mut self.out[self.out_end..end], z::Z_BLOCK)
                        .map_err(|e| {
                            io::Error::new(
                                io::ErrorKind::InvalidData,
                                format!("gzip stream at offset {}: {e}", self.in_offset),
                            )
                        })?;
                    self.consume_input(step.consumed);
                    self.out_end += step.produced;
                    self.out_total += step.produced as u64;
                    self.member_out += step.produced as u64;
                    if step.produced > 0 {
                        if let Some(p) = &self.progress {
                            p.borrow_mut().push((self.out_total, self.in_offset));
                        }
                    }
                    if step.stream_end {
                        self.state = State::Between;
                    } else {
                        self.maybe_checkpoint();
                        if step.consumed == 0 && step.produced == 0 {
                            if self.in_start < self.in_end {
                                return Err(io::Error::new(
                                    io::ErrorKind::InvalidData,
                                    format!("inflate stuck at offset {}", self.in_offset),
                                ));
                            }
                            if self.input_eof {
                                return Err(io::Error::new(
                                    io::ErrorKind::UnexpectedEof,
                                    format!("gzip stream truncated at offset {}", self.in_offset),
                                ));
                            }
                        }
                    }
                    // At a member's end (after its last block, or its trailer), read on
                    // through the next member's header first: a checkpoint there must be
                    // recorded before the output before it is handed out.
                    let last_block_done = self.inf.data_type() & 192 == 192;
                    if self.out_start < self.out_end
                        && self.state != State::Between
                        && !last_block_done
                    {
                        return Ok(());
                    }
                }
            }
        }
    }

    fn maybe_checkpoint(&mut self) {
        let dt = self.inf.data_type();
        let at_boundary = dt & 128 != 0 && dt & 64 == 0;
        let due = self
            .last_checkpoint
            .is_none_or(|last| self.out_total - last >= self.span);
        if !(at_boundary && due) {
            return;
        }
        // A member's first block cannot refer to earlier members: no window needed.
        let keep = (self.member_out.min(WINDOW_SIZE as u64) as usize).min(self.out_end);
        self.checkpoints.borrow_mut().push(Checkpoint {
            blob_offset: self.in_offset,
            bits: (dt & 7) as u8,
            stream_offset: self.out_total,
            window: self.out[self.out_end - keep..self.out_end].to_vec(),
        });
        self.last_checkpoint = Some(self.out_total);
    }
}

impl<R: Read> Read for IndexingInflater<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.out_start == self.out_end {
            self.fill()?;
        }
        let n = buf.len().min(self.out_end - self.out_start);
        buf[..n].copy_from_slice(&self.out[self.out_start..self.out_start + n]);
        self.out_start += n;
        Ok(n)
    }
}

/// Whether `head` starts like a gzip stream.
pub fn is_gzip(head: &[u8]) -> bool {
    head.starts_with(&[0x1f, 0x8b])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blob::FileBlob;
    use crate::digest::Digest;
    use crate::index::decode::{decode_chunk, decode_chunks};
    use crate::index::model::EntryKind;
    use std::io::Write;

    /// A tar whose files are partly compressible, partly random, with a few small
    /// files in between.
    fn sample_tar() -> (Vec<u8>, Vec<(String, Vec<u8>)>) {
        let mut files = Vec::new();
        let mut seed = 7u64;
        for i in 0..12 {
            let len = [0usize, 1, 500, 70_000, 300_000, 1 << 20][i % 6] + i;
            let data: Vec<u8> = (0..len)
                .map(|j| {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                    if (j / 4096) % 2 == 0 {
                        (seed >> 56) as u8
                    } else {
                        (j % 13) as u8
                    }
                })
                .collect();
            files.push((format!("d{}/f{i}", i % 3), data));
        }
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in &files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_mtime(1);
            h.set_uid(0);
            h.set_gid(0);
            b.append_data(&mut h, name, &data[..]).unwrap();
        }
        (b.into_inner().unwrap(), files)
    }

    fn gzip(data: &[u8], members: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let per = data.len().div_ceil(members.max(1));
        for part in data.chunks(per.max(1)) {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
            e.write_all(part).unwrap();
            out.extend(e.finish().unwrap());
        }
        out
    }

    fn check(members: usize, span: u64) {
        let (tar, files) = sample_tar();
        let gz = gzip(&tar, members);
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&gz).unwrap();
        let blob = FileBlob::open(Digest::of(&gz), f.path()).unwrap();
        let opts = IndexOptions {
            span,
            ..Default::default()
        };
        let idx = index_tar_gzip(&blob, &opts).unwrap();
        assert!(
            idx.checkpoints.len() > 3,
            "{} checkpoints",
            idx.checkpoints.len()
        );
        for (name, data) in &files {
            let e = idx.entries.iter().find(|e| &e.path == name).unwrap();
            assert_eq!(e.kind, EntryKind::Reg);
            assert_eq!(e.size, data.len() as u64);
            let mut got = Vec::new();
            for c in idx.chunks_of(e) {
                // A chunk never crosses a checkpoint: it inflates at most one span.
                let ChunkEncoding::Checkpoint { checkpoint, skip } = c.encoding else {
                    panic!("not a checkpoint chunk");
                };
                let cp = checkpoint as usize;
                if let Some(next) = idx.checkpoints.get(cp + 1) {
                    let start = idx.checkpoints[cp].stream_offset + skip;
                    assert!(
                        start + c.len <= next.stream_offset,
                        "{name}: chunk {start}+{} crosses checkpoint {cp} {:?}",
                        c.len,
                        idx.checkpoints
                            .iter()
                            .map(|c| c.stream_offset)
                            .collect::<Vec<_>>()
                    );
                }
                let raw = blob.read_at(c.blob_offset, c.blob_len).unwrap();
                got.extend(decode_chunk(&idx, c, &raw).unwrap());
            }
            assert!(&got == data, "{name} differs");
        }
    }

    #[test]
    fn reads_every_file_through_checkpoints() {
        check(1, 64 << 10);
    }

    #[test]
    fn handles_multi_member_gzip() {
        check(5, 100 << 10);
    }

    /// `decode_chunks` over the whole blob gives every chunk, verified, and a chunk with
    /// a wrong digest fails alone.
    #[test]
    fn decode_chunks_matches_one_by_one_decoding() {
        let (tar, _) = sample_tar();
        let gz = gzip(&tar, 2);
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&gz).unwrap();
        let blob = FileBlob::open(Digest::of(&gz), f.path()).unwrap();
        let opts = IndexOptions {
            span: 256 << 10,
            ..Default::default()
        };
        let idx = index_tar_gzip(&blob, &opts).unwrap();
        let mut chunks = idx.chunks.clone();
        assert!(chunks.len() > 4);
        chunks[1].digest = Digest::of(b"not this");
        let all = decode_chunks(&idx, &chunks, 0, &gz);
        for (i, (c, r)) in chunks.iter().zip(&all).enumerate() {
            if i == 1 {
                assert!(r.is_err());
                continue;
            }
            let one = decode_chunk(
                &idx,
                c,
                &gz[c.blob_offset as usize..][..c.blob_len as usize],
            );
            assert_eq!(r.as_ref().unwrap(), &one.unwrap(), "chunk {i}");
        }
        // A range that does not hold a chunk: an error for it, not a panic.
        let r = decode_chunks(&idx, &chunks[2..3], chunks[2].blob_offset + 1, &gz[..10]);
        assert!(r[0].is_err());
    }

    /// A small file right after a checkpoint fetches a few KiB of compressed bytes, not
    /// the whole span up to the next checkpoint.
    #[test]
    fn small_files_fetch_little_of_their_span() {
        let (tar, files) = sample_tar();
        let gz = gzip(&tar, 1);
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&gz).unwrap();
        let blob = FileBlob::open(Digest::of(&gz), f.path()).unwrap();
        let idx = index_tar_gzip(&blob, &IndexOptions::default()).unwrap();
        let (name, data) = &files[2]; // 502 bytes, early in the first span
        let e = idx.entries.iter().find(|e| &e.path == name).unwrap();
        let c = &idx.chunks_of(e)[0];
        let span_end = idx
            .checkpoints
            .get(1)
            .map_or(blob.size(), |cp| cp.blob_offset);
        assert!(
            c.blob_offset + c.blob_len < span_end / 4,
            "{}+{} of a span ending at {span_end}",
            c.blob_offset,
            c.blob_len
        );
        let raw = blob.read_at(c.blob_offset, c.blob_len).unwrap();
        assert_eq!(&decode_chunk(&idx, c, &raw).unwrap(), data);
    }

    #[test]
    fn refuses_truncated_gzip() {
        let (tar, _) = sample_tar();
        let gz = gzip(&tar, 1);
        let cut = &gz[..gz.len() / 2];
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(cut).unwrap();
        let blob = FileBlob::open(Digest::of(cut), f.path()).unwrap();
        let err = index_tar_gzip(&blob, &IndexOptions::default()).unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
    }
}
