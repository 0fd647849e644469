//! Plain tar+zstd layers (no TOC): one streaming pass that records every zstd frame's
//! start, cuts chunks at frame starts and maps each chunk to the frame holding it.
//!
//! zstd can only start decoding at a frame start. A layer compressed as many frames
//! (e.g. `zstd --rsyncable`-style or seekable producers) gets real random access; a
//! layer that is one big frame — the common case — cannot have it, and its chunks say
//! so honestly: each one fetches the blob from the frame start and skips up to the
//! chunk. Callers should check [`LayerIndex::max_chunk_fetch`] (or
//! [`needs_whole_blob`]) and, for such layers, fetch the whole blob once and serve
//! reads from a local copy instead of refetching per chunk.

use super::model::{Chunk, ChunkEncoding, IndexError, LayerFormat, LayerIndex};
use super::tar::walk_tar_split;
use super::IndexOptions;
use crate::blob::BlobReader;
use std::cell::RefCell;
use std::io::{self, Read};
use std::rc::Rc;
use zstd::stream::raw::{Decoder, InBuffer, Operation, OutBuffer};

/// Above this many blob bytes per chunk read, lazy reads are not worth it.
pub const WHOLE_BLOB_THRESHOLD: u64 = 32 << 20;

/// Whether reads of this index would each fetch so much that fetching the whole blob
/// once is the better plan (a single-frame tar+zstd layer).
pub fn needs_whole_blob(index: &LayerIndex) -> bool {
    index.max_chunk_fetch() > WHOLE_BLOB_THRESHOLD
}

/// Where one zstd frame starts, in the blob and in the decoded stream.
#[derive(Debug, Clone, Copy)]
struct Frame {
    blob_offset: u64,
    stream_offset: u64,
}

/// Indexes a tar+zstd layer in one streaming pass.
pub fn index_tar_zstd(
    blob: &dyn BlobReader,
    opts: &IndexOptions,
) -> Result<LayerIndex, IndexError> {
    let digest = blob.digest();
    let malformed = |reason: String| IndexError::Malformed {
        format: "tar+zstd",
        blob: digest,
        reason,
    };
    let frames = Rc::new(RefCell::new(vec![Frame {
        blob_offset: 0,
        stream_offset: 0,
    }]));
    let reader = FrameReader {
        input: blob.stream()?,
        dec: Decoder::new().map_err(|e| malformed(e.to_string()))?,
        inbuf: vec![0u8; 256 << 10],
        in_start: 0,
        in_end: 0,
        in_offset: 0,
        eof: false,
        out: vec![0u8; 256 << 10],
        out_start: 0,
        out_end: 0,
        out_total: 0,
        frame_open: false,
        frames: frames.clone(),
        opts,
    };
    let split = |a: u64, b: u64| {
        let f = frames.borrow();
        let i = f.partition_point(|f| f.stream_offset <= a);
        f.get(i).map(|f| f.stream_offset).filter(|&s| s <= b)
    };
    let walk = walk_tar_split(reader, digest, "tar+zstd", opts.chunk_size, &split)?;
    let frames = frames.borrow();
    let size = blob.size();
    let chunks = walk
        .chunks
        .into_iter()
        .map(|c| {
            let start = c.blob_offset;
            let i = frames
                .partition_point(|f| f.stream_offset <= start)
                .checked_sub(1)
                .ok_or_else(|| malformed(format!("no frame before stream offset {start}")))?;
            let f = frames[i];
            let end = c.blob_offset.saturating_add(c.len);
            let j = frames.partition_point(|f| f.stream_offset < end);
            let to = frames
                .get(j)
                .map(|f| f.blob_offset)
                .unwrap_or(size)
                .min(size);
            Ok(Chunk {
                blob_offset: f.blob_offset,
                blob_len: to.saturating_sub(f.blob_offset),
                file_offset: c.file_offset,
                len: c.len,
                digest: c.digest,
                encoding: ChunkEncoding::Zstd {
                    skip: start - f.stream_offset,
                },
            })
        })
        .collect::<Result<Vec<_>, IndexError>>()?;
    Ok(LayerIndex {
        blob: digest,
        blob_size: size,
        format: LayerFormat::TarZstd,
        entries: walk.entries,
        chunks,
        checkpoints: Vec::new(),
        prefetch: Vec::new(),
    })
}

/// Decodes a zstd stream frame by frame, recording where each frame starts.
struct FrameReader<'a, R> {
    input: R,
    dec: Decoder<'static>,
    inbuf: Vec<u8>,
    in_start: usize,
    in_end: usize,
    in_offset: u64,
    eof: bool,
    out: Vec<u8>,
    out_start: usize,
    out_end: usize,
    out_total: u64,
    /// A frame has been started and not finished.
    frame_open: bool,
    frames: Rc<RefCell<Vec<Frame>>>,
    opts: &'a IndexOptions<'a>,
}

impl<R: Read> FrameReader<'_, R> {
    fn fill(&mut self) -> io::Result<()> {
        self.out_start = 0;
        self.out_end = 0;
        loop {
            if self.in_start == self.in_end && !self.eof {
                self.in_start = 0;
                self.in_end = self.input.read(&mut self.inbuf)?;
                self.eof = self.in_end == 0;
                if let Some(p) = self.opts.progress {
                    p(self.in_offset + self.in_end as u64);
                }
            }
            if self.in_start == self.in_end && self.eof {
                if self.frame_open {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("zstd stream truncated at offset {}", self.in_offset),
                    ));
                }
                return Ok(());
            }
            if !self.frame_open {
                // A frame starts here (the first was recorded up front).
                let mut f = self.frames.borrow_mut();
                if f.last().is_some_and(|l| l.blob_offset != self.in_offset) {
                    f.push(Frame {
                        blob_offset: self.in_offset,
                        stream_offset: self.out_total,
                    });
                }
                self.frame_open = true;
            }
            let mut input = InBuffer::around(&self.inbuf[self.in_start..self.in_end]);
            let mut output = OutBuffer::around(&mut self.out[..]);
            let hint = self.dec.run(&mut input, &mut output).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("zstd stream at offset {}: {e}", self.in_offset),
                )
            })?;
            let consumed = input.pos();
            let produced = output.pos();
            self.in_start += consumed;
            self.in_offset += consumed as u64;
            self.out_end = produced;
            self.out_total += produced as u64;
            if hint == 0 {
                self.frame_open = false;
            }
            if produced > 0 {
                return Ok(());
            }
            if consumed == 0 && self.in_start < self.in_end && hint != 0 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("zstd decoder stuck at offset {}", self.in_offset),
                ));
            }
        }
    }
}

impl<R: Read> Read for FrameReader<'_, R> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blob::FileBlob;
    use crate::digest::Digest;
    use crate::index::decode::decode_chunk;
    use std::io::Write;

    fn tar_of(files: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            b.append_data(&mut h, name, &data[..]).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn check(zst: Vec<u8>, files: &[(&str, Vec<u8>)], expect_whole: bool) {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&zst).unwrap();
        let blob = FileBlob::open(Digest::of(&zst), f.path()).unwrap();
        let opts = IndexOptions {
            chunk_size: 100_000,
            ..Default::default()
        };
        let idx = index_tar_zstd(&blob, &opts).unwrap();
        for (name, data) in files {
            let e = idx.entries.iter().find(|e| e.path == *name).unwrap();
            let mut got = Vec::new();
            for c in idx.chunks_of(e) {
                let raw = blob.read_at(c.blob_offset, c.blob_len).unwrap();
                got.extend(decode_chunk(&idx, c, &raw).unwrap());
            }
            assert!(got == *data, "{name}");
        }
        assert_eq!(idx.max_chunk_fetch() == idx.blob_size, expect_whole);
    }

    #[test]
    fn single_frame_and_multi_frame_layers_read_back() {
        let files: Vec<(&str, Vec<u8>)> = vec![
            ("a", (0..300_000u32).map(|i| (i % 7) as u8).collect()),
            ("b", b"hello".to_vec()),
            ("c", (0..500_000u32).map(|i| (i * 31 % 251) as u8).collect()),
        ];
        let tar = tar_of(&files);
        check(zstd::encode_all(&tar[..], 3).unwrap(), &files, true);
        // Many frames: 64 KiB of input per frame.
        let mut multi = Vec::new();
        for part in tar.chunks(64 << 10) {
            multi.extend(zstd::encode_all(part, 3).unwrap());
        }
        check(multi, &files, false);
    }

    #[test]
    fn refuses_truncated_zstd() {
        let files = vec![("a", vec![7u8; 100_000])];
        let zst = zstd::encode_all(&tar_of(&files)[..], 3).unwrap();
        let cut = &zst[..zst.len() - 10];
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(cut).unwrap();
        let blob = FileBlob::open(Digest::of(cut), f.path()).unwrap();
        assert!(index_tar_zstd(&blob, &IndexOptions::default()).is_err());
    }
}
