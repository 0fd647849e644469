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
        ChunkEncoding::Zeros => {
            if len > super::toc::MAX_CHUNK_LEN as usize {
                return Err(decode_err(format!(
                    "zero chunk of {len} bytes is too large"
                )));
            }
            vec![0u8; len]
        }
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
