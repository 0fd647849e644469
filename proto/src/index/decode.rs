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
    chunk.digest.verify(
        &format!(
            "chunk at offset {} of layer {}",
            chunk.blob_offset, index.blob
        ),
        &data,
    )?;
    Ok(data)
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
                c.digest.verify(
                    &format!("chunk at offset {} of layer {}", c.blob_offset, index.blob),
                    &bytes,
                )?;
                Ok(bytes)
            })
            .collect(),
    )
}
