//! Turning fetched blob bytes into verified chunk bytes.

use super::model::{Chunk, ChunkEncoding, IndexError, LayerIndex};
use std::io::Read;

/// Decodes `raw` (the blob bytes `chunk.blob_offset..chunk.blob_offset+chunk.blob_len`)
/// into the chunk's uncompressed bytes and verifies them against `chunk.digest`.
/// Nothing that fails verification is returned.
pub fn decode_chunk(index: &LayerIndex, chunk: &Chunk, raw: &[u8]) -> Result<Vec<u8>, IndexError> {
    let decode_err = |reason: String| IndexError::Decode {
        blob: index.blob,
        offset: chunk.blob_offset,
        reason,
    };
    let len = usize::try_from(chunk.len)
        .map_err(|_| decode_err(format!("chunk length {} too large", chunk.len)))?;
    let max = super::toc::max_chunk_len(chunk.encoding == ChunkEncoding::Zeros);
    if chunk.len > max {
        return Err(decode_err(format!(
            "chunk of {len} bytes is larger than the {max} allowed"
        )));
    }
    let data = match chunk.encoding {
        ChunkEncoding::Raw => {
            if raw.len() < len {
                return Err(decode_err(format!(
                    "got {} bytes, chunk needs {len}",
                    raw.len()
                )));
            }
            raw[..len].to_vec()
        }
        ChunkEncoding::Gzip { skip } => {
            read_skip_take(flate2::read::MultiGzDecoder::new(raw), skip, len)
                .map_err(|e| decode_err(e.to_string()))?
        }
        ChunkEncoding::Zstd { skip } => {
            let dec =
                zstd::stream::read::Decoder::new(raw).map_err(|e| decode_err(e.to_string()))?;
            read_skip_take(dec, skip, len).map_err(|e| decode_err(e.to_string()))?
        }
        ChunkEncoding::Zeros => vec![0u8; len],
        ChunkEncoding::Checkpoint { checkpoint, skip } => {
            let cp = index
                .checkpoints
                .get(checkpoint as usize)
                .ok_or_else(|| decode_err(format!("checkpoint {checkpoint} does not exist")))?;
            super::checkpoint::inflate_from(cp, raw, skip, len).map_err(decode_err)?
        }
    };
    verified(index, chunk, data)
}

/// `data` if it matches `chunk`'s digest: nothing unverified leaves this module.
fn verified(index: &LayerIndex, chunk: &Chunk, data: Vec<u8>) -> Result<Vec<u8>, IndexError> {
    chunk.digest.verify(
        &format!(
            "chunk at offset {} of layer {}",
            chunk.blob_offset, index.blob
        ),
        &data,
    )?;
    Ok(data)
}

/// Decodes one chunk while its blob bytes arrive, so that it is ready, verified, as
/// soon as its last byte is in: inflating a 4 MiB eStargz chunk after its range is
/// whole costs 10–25 ms on the read's path, after a transfer it could have overlapped.
/// Bytes are fed in blob order from `chunk.blob_offset`; [`ChunkDecoder::finish`]
/// gives the same result, and errors, as [`decode_chunk`] on the same bytes.
pub struct ChunkDecoder {
    chunk: Chunk,
    state: Feed,
}

/// Where a [`ChunkDecoder`] is.
enum Feed {
    Gzip(Box<flate2::write::MultiGzDecoder<Keep>>),
    Zstd(Box<zstd::stream::write::Decoder<'static, Keep>>),
    /// Every byte kept, decoded by [`decode_chunk`] at the end: stored, zero and
    /// checkpoint chunks, and chunks over the size bound (which it refuses).
    Whole(Vec<u8>),
    /// All of the chunk's output is in; later input is not looked at (as a reader
    /// taking `len` bytes stops reading).
    Full(Vec<u8>),
    /// The decoder failed before the output was complete.
    Failed(String),
}

/// A decoder's output: drops `skip` bytes, keeps `len`, ignores the rest.
struct Keep {
    skip: u64,
    len: usize,
    out: Vec<u8>,
}

impl Keep {
    fn full(&self) -> bool {
        self.skip == 0 && self.out.len() == self.len
    }
}

impl std::io::Write for Keep {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let dropped = usize::try_from(self.skip).map_or(buf.len(), |s| s.min(buf.len()));
        self.skip -= dropped as u64;
        let rest = &buf[dropped..];
        let room = self.len - self.out.len();
        self.out.extend_from_slice(&rest[..room.min(rest.len())]);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl ChunkDecoder {
    /// A decoder for `chunk`, fed nothing yet.
    pub fn new(chunk: &Chunk) -> ChunkDecoder {
        let bounded = chunk.len <= super::toc::max_chunk_len(false);
        let keep = |skip: u64| Keep {
            skip,
            len: chunk.len as usize,
            // `len` comes from a TOC: do not trust it for the allocation.
            out: Vec::with_capacity((chunk.len as usize).min(16 << 20)),
        };
        let state = match chunk.encoding {
            ChunkEncoding::Gzip { skip } if bounded => {
                Feed::Gzip(Box::new(flate2::write::MultiGzDecoder::new(keep(skip))))
            }
            ChunkEncoding::Zstd { skip } if bounded => {
                match zstd::stream::write::Decoder::new(keep(skip)) {
                    Ok(d) => Feed::Zstd(Box::new(d)),
                    Err(e) => Feed::Failed(e.to_string()),
                }
            }
            _ => Feed::Whole(Vec::new()),
        };
        let mut d = ChunkDecoder {
            chunk: *chunk,
            state,
        };
        d.settle(Ok(()));
        d
    }

    /// The chunk being decoded.
    pub fn chunk(&self) -> &Chunk {
        &self.chunk
    }

    /// The chunk's bytes decoded so far, from its start: **not verified** (the
    /// digest covers the whole chunk), so good for guesses (which chunks to fetch
    /// next), never for content. Empty for chunks decoded only at the end (but a
    /// stored chunk's bytes are its content as they come).
    pub fn decoded(&self) -> &[u8] {
        match &self.state {
            Feed::Gzip(d) if d.get_ref().skip == 0 => &d.get_ref().out,
            Feed::Zstd(d) if d.get_ref().skip == 0 => &d.get_ref().out,
            Feed::Full(data) => data,
            Feed::Whole(raw) if self.chunk.encoding == ChunkEncoding::Raw => {
                &raw[..raw.len().min(self.chunk.len as usize)]
            }
            _ => &[],
        }
    }

    /// The next bytes of the chunk's blob range.
    pub fn feed(&mut self, bytes: &[u8]) {
        use std::io::Write;
        let res = match &mut self.state {
            Feed::Gzip(d) => d.write_all(bytes),
            Feed::Zstd(d) => d.write_all(bytes),
            Feed::Whole(raw) => {
                raw.extend_from_slice(bytes);
                return;
            }
            Feed::Full(_) | Feed::Failed(_) => return,
        };
        self.settle(res);
    }

    /// Moves to `Full` once the output is complete (whatever `res` says of the
    /// input), to `Failed` on an error before that.
    fn settle(&mut self, res: std::io::Result<()>) {
        let keep = match &mut self.state {
            Feed::Gzip(d) => d.get_mut(),
            Feed::Zstd(d) => d.get_mut(),
            _ => return,
        };
        if keep.full() {
            self.state = Feed::Full(std::mem::take(&mut keep.out));
        } else if let Err(e) = res {
            self.state = Feed::Failed(e.to_string());
        }
    }

    /// The chunk's bytes, verified against its digest, once all of its blob range was
    /// fed (or the input ended early: then an error).
    pub fn finish(mut self, index: &LayerIndex) -> Result<Vec<u8>, IndexError> {
        let res = match &mut self.state {
            Feed::Gzip(d) => d.try_finish(),
            Feed::Zstd(d) => std::io::Write::flush(d.as_mut()),
            Feed::Whole(_) | Feed::Full(_) | Feed::Failed(_) => Ok(()),
        };
        self.settle(res);
        let chunk = self.chunk;
        let decode_err = |reason: String| IndexError::Decode {
            blob: index.blob,
            offset: chunk.blob_offset,
            reason,
        };
        let data = match self.state {
            Feed::Whole(raw) => return decode_chunk(index, &chunk, &raw),
            Feed::Full(data) => data,
            Feed::Failed(reason) => return Err(decode_err(reason)),
            Feed::Gzip(mut d) => return Err(decode_err(short_output(d.get_mut()))),
            Feed::Zstd(mut d) => return Err(decode_err(short_output(d.get_mut()))),
        };
        verified(index, &chunk, data)
    }
}

/// Why a decoder's output fell short (the words [`read_skip_take`] uses).
fn short_output(keep: &Keep) -> String {
    if keep.skip > 0 {
        format!("stream ended before the {} bytes to skip", keep.skip)
    } else {
        format!(
            "stream ended after {} of {} chunk bytes",
            keep.out.len(),
            keep.len
        )
    }
}

/// Reads `len` bytes after skipping `skip` from a decoder; short output is an error.
fn read_skip_take(mut r: impl Read, skip: u64, len: usize) -> std::io::Result<Vec<u8>> {
    let skipped = std::io::copy(&mut (&mut r).take(skip), &mut std::io::sink())?;
    if skipped != skip {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("stream ended after {skipped} of {skip} bytes to skip"),
        ));
    }
    // `len` comes from a TOC: do not trust it for the allocation.
    let mut out = Vec::with_capacity(len.min(16 << 20));
    r.take(len as u64).read_to_end(&mut out)?;
    if out.len() != len {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("stream ended after {} of {len} chunk bytes", out.len()),
        ));
    }
    Ok(out)
}

/// Largest output one shared checkpoint inflate in [`decode_chunks`] produces.
const MAX_SHARED_INFLATE: u64 = 64 << 20;

/// Decodes and verifies several chunks of one layer from one fetched blob range `raw`
/// (which starts at blob offset `raw_start`); results are in the order of `chunks`.
///
/// Checkpoint chunks that resume at the same checkpoint are inflated together, once
/// (a gzip span holding many small files is inflated one time, not once per file);
/// every chunk is still verified against its own digest. A chunk whose blob range is
/// not inside `raw` gets an error.
pub fn decode_chunks(
    index: &LayerIndex,
    chunks: &[Chunk],
    raw_start: u64,
    raw: &[u8],
) -> Vec<Result<Vec<u8>, IndexError>> {
    let piece_of = |c: &Chunk| -> Option<&[u8]> {
        let from = usize::try_from(c.blob_offset.checked_sub(raw_start)?).ok()?;
        let to = from.checked_add(usize::try_from(c.blob_len).ok()?)?;
        raw.get(from..to)
    };
    let outside = |c: &Chunk| IndexError::Decode {
        blob: index.blob,
        offset: c.blob_offset,
        reason: format!(
            "chunk range {}+{} is outside the fetched {raw_start}+{}",
            c.blob_offset,
            c.blob_len,
            raw.len()
        ),
    };
    let mut out: Vec<Option<Result<Vec<u8>, IndexError>>> = chunks.iter().map(|_| None).collect();
    let mut groups: std::collections::BTreeMap<u32, Vec<usize>> = Default::default();
    for (i, c) in chunks.iter().enumerate() {
        match (c.encoding, piece_of(c)) {
            (_, None) => out[i] = Some(Err(outside(c))),
            (ChunkEncoding::Checkpoint { checkpoint, .. }, Some(_)) => {
                groups.entry(checkpoint).or_default().push(i)
            }
            (_, Some(p)) => out[i] = Some(decode_chunk(index, c, p)),
        }
    }
    for (cp_index, members) in groups {
        if let Some(shared) = inflate_group(index, chunks, cp_index, &members, raw_start, raw) {
            for (&i, r) in members.iter().zip(shared) {
                out[i] = Some(r);
            }
        } else {
            for &i in &members {
                let c = &chunks[i];
                out[i] = Some(match piece_of(c) {
                    Some(p) => decode_chunk(index, c, p),
                    None => Err(outside(c)),
                });
            }
        }
    }
    out.into_iter()
        .zip(chunks)
        .map(|(r, c)| r.unwrap_or_else(|| Err(outside(c))))
        .collect()
}

/// One inflate from checkpoint `cp_index` covering every member; `None` when that is
/// not possible (one member alone, odd ranges, too much output, a decode error), so
/// the caller decodes the members one by one.
fn inflate_group(
    index: &LayerIndex,
    chunks: &[Chunk],
    cp_index: u32,
    members: &[usize],
    raw_start: u64,
    raw: &[u8],
) -> Option<Vec<Result<Vec<u8>, IndexError>>> {
    if members.len() < 2 {
        return None;
    }
    let cp = index.checkpoints.get(cp_index as usize)?;
    let first = members.iter().map(|&i| chunks[i].blob_offset).min()?;
    if members.iter().any(|&i| chunks[i].blob_offset != first) {
        return None;
    }
    let end = members
        .iter()
        .map(|&i| chunks[i].blob_offset.saturating_add(chunks[i].blob_len))
        .max()?;
    let mut out_len = 0u64;
    for &i in members {
        let ChunkEncoding::Checkpoint { skip, .. } = chunks[i].encoding else {
            return None;
        };
        out_len = out_len.max(skip.checked_add(chunks[i].len)?);
    }
    if out_len > MAX_SHARED_INFLATE {
        return None;
    }
    let from = usize::try_from(first.checked_sub(raw_start)?).ok()?;
    let to = usize::try_from(end.checked_sub(raw_start)?).ok()?;
    let piece = raw.get(from..to)?;
    let data =
        super::checkpoint::inflate_from(cp, piece, 0, usize::try_from(out_len).ok()?).ok()?;
    Some(
        members
            .iter()
            .map(|&i| {
                let c = &chunks[i];
                let skip = match c.encoding {
                    ChunkEncoding::Checkpoint { skip, .. } => skip,
                    _ => 0, // members are all checkpoint chunks (checked above)
                };
                let bytes = (skip as usize)
                    .checked_add(c.len as usize)
                    .and_then(|e| data.get(skip as usize..e))
                    .ok_or_else(|| IndexError::Decode {
                        blob: index.blob,
                        offset: c.blob_offset,
                        reason: "shared inflate ended early".into(),
                    })?
                    .to_vec();
                verified(index, c, bytes)
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Digest;
    use crate::index::model::LayerFormat;
    use std::io::Write;

    fn index() -> LayerIndex {
        LayerIndex {
            blob: Digest::of(b"blob"),
            blob_size: 1 << 30,
            format: LayerFormat::Estargz,
            entries: Vec::new(),
            chunks: Vec::new(),
            checkpoints: Vec::new(),
            prefetch: Vec::new(),
        }
    }

    /// Content that does not compress to nothing, so that it spans many feeds.
    fn content(n: usize) -> Vec<u8> {
        let mut x = 0x2545_f491_u32;
        (0..n)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                if i % 3 == 0 {
                    b'a'
                } else {
                    x as u8
                }
            })
            .collect()
    }

    /// Two gzip members (a tar-header-like prefix of `skip` bytes, then the chunk),
    /// as eStargz stores a file, and the chunk describing the second part.
    fn gzip_chunk(prefix: &[u8], data: &[u8]) -> (Vec<u8>, Chunk) {
        let mut raw = Vec::new();
        for part in [prefix, data] {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(part).unwrap();
            raw.extend(e.finish().unwrap());
        }
        let chunk = Chunk {
            blob_offset: 1000,
            blob_len: raw.len() as u64,
            file_offset: 0,
            len: data.len() as u64,
            digest: Digest::of(data),
            encoding: ChunkEncoding::Gzip {
                skip: prefix.len() as u64,
            },
        };
        (raw, chunk)
    }

    fn fed(chunk: &Chunk, raw: &[u8], piece: usize) -> Result<Vec<u8>, IndexError> {
        let mut d = ChunkDecoder::new(chunk);
        for p in raw.chunks(piece) {
            d.feed(p);
        }
        d.finish(&index())
    }

    #[test]
    fn a_gzip_chunk_fed_in_pieces_equals_the_whole_decode() {
        let data = content(300_000);
        let (raw, chunk) = gzip_chunk(&content(700), &data);
        for piece in [1, 7, 16 << 10, raw.len()] {
            assert_eq!(fed(&chunk, &raw, piece).unwrap(), data, "pieces of {piece}");
        }
        assert_eq!(decode_chunk(&index(), &chunk, &raw).unwrap(), data);
    }

    #[test]
    fn a_zstd_chunk_fed_in_pieces_equals_the_whole_decode() {
        let data = content(200_000);
        let raw = zstd::encode_all(&data[..], 3).unwrap();
        let chunk = Chunk {
            blob_offset: 0,
            blob_len: raw.len() as u64,
            file_offset: 0,
            len: data.len() as u64 - 10,
            digest: Digest::of(&data[10..]),
            encoding: ChunkEncoding::Zstd { skip: 10 },
        };
        assert_eq!(fed(&chunk, &raw, 4096).unwrap(), &data[10..]);
        assert_eq!(decode_chunk(&index(), &chunk, &raw).unwrap(), &data[10..]);
    }

    #[test]
    fn a_truncated_or_altered_chunk_is_refused_as_the_whole_decode_refuses_it() {
        let data = content(100_000);
        let (raw, chunk) = gzip_chunk(b"header", &data);
        let cut = &raw[..raw.len() / 2];
        let err = fed(&chunk, cut, 4096).unwrap_err().to_string();
        assert!(
            err.contains("chunk at offset 1000") || err.contains("1000"),
            "{err}"
        );
        assert!(decode_chunk(&index(), &chunk, cut).is_err());
        // Same length, other content: the digest says no.
        let mut other = chunk;
        other.digest = Digest::of(b"something else");
        let err = fed(&other, &raw, 4096).unwrap_err();
        assert!(matches!(err, IndexError::Digest(_)), "{err}");
        // Garbage in place of the compressed bytes.
        let junk = vec![0x1f_u8; raw.len()];
        assert!(fed(&chunk, &junk, 4096).is_err());
    }

    #[test]
    fn bytes_after_the_complete_output_are_not_looked_at() {
        let data = content(50_000);
        let (mut raw, mut chunk) = gzip_chunk(b"", &data);
        raw.extend_from_slice(b"not gzip at all, and long enough to be read");
        chunk.blob_len = raw.len() as u64;
        assert_eq!(fed(&chunk, &raw, 1000).unwrap(), data);
        assert_eq!(decode_chunk(&index(), &chunk, &raw).unwrap(), data);
    }

    #[test]
    fn stored_chunks_and_oversized_ones_go_through_the_whole_decode() {
        let data = content(5000);
        let stored = Chunk {
            blob_offset: 0,
            blob_len: data.len() as u64,
            file_offset: 0,
            len: data.len() as u64,
            digest: Digest::of(&data),
            encoding: ChunkEncoding::Raw,
        };
        assert_eq!(fed(&stored, &data, 100).unwrap(), data);
        let (raw, mut huge) = gzip_chunk(b"", &data);
        huge.len = super::super::toc::max_chunk_len(false) + 1;
        let err = fed(&huge, &raw, 100).unwrap_err().to_string();
        assert!(err.contains("larger than"), "{err}");
    }
}
