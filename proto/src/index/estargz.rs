//! eStargz layers: a valid tar.gz made of many gzip members, one (or more) per file
//! chunk, ending with a `stargz.index.json` TOC entry and a small footer member that
//! points at the TOC.
//!
//! Reading costs one Range request in the common case: the tail of the blob (footer
//! plus, usually, the whole TOC). Only a TOC larger than the tail costs a second read
//! of exactly the missing bytes. The TOC is verified against the descriptor annotation
//! `containerd.io/snapshot/stargz/toc.digest` before anything in it is used.

use super::model::{IndexError, LayerFormat, LayerIndex};
use super::toc::{convert, Flavor, Toc};
use crate::blob::BlobReader;
use crate::digest::Digest;
use std::collections::HashMap;
use std::io::Read;

/// Annotation with the sha256 of the uncompressed TOC JSON.
pub const TOC_DIGEST_ANNOTATION: &str = "containerd.io/snapshot/stargz/toc.digest";
/// Annotation with the uncompressed size of the layer (set by stargz-snapshotter).
pub const UNCOMPRESSED_SIZE_ANNOTATION: &str = "io.containers.estargz.uncompressed-size";
/// Name of the TOC's tar entry.
pub const TOC_TAR_NAME: &str = "stargz.index.json";
/// Size of the current footer.
pub const FOOTER_SIZE: u64 = 51;
/// Size of the legacy (stargz) footer.
pub const LEGACY_FOOTER_SIZE: u64 = 47;
/// How much of the blob's tail is fetched at first: enough for most TOCs.
pub const TAIL_READ: u64 = 256 << 10;
/// The most read from a big layer's tail in the first request.
const MAX_TAIL_READ: u64 = 1 << 20;
/// Largest compressed TOC accepted.
pub const MAX_TOC_COMPRESSED: u64 = 64 << 20;
/// Largest uncompressed TOC accepted.
pub const MAX_TOC_JSON: u64 = 512 << 20;

fn malformed(blob: Digest, reason: String) -> IndexError {
    IndexError::Malformed {
        format: "estargz",
        blob,
        reason,
    }
}

/// Whether a layer descriptor's annotations mark it as eStargz.
pub fn is_estargz(annotations: &HashMap<String, String>) -> bool {
    annotations.contains_key(TOC_DIGEST_ANNOTATION)
}

/// Finds the TOC offset in the last bytes of the blob. Returns the offset and the
/// footer's size; tries the 51-byte footer first, then the legacy 47-byte one.
pub fn parse_footer(tail: &[u8]) -> Result<(u64, u64), String> {
    let try_footer = |size: usize, extra_at: usize, xlen: u16, subfield: bool| {
        let start = tail.len().checked_sub(size)?;
        let f = &tail[start..];
        if f.get(..3)? != [0x1f, 0x8b, 8] || f.get(3)? & 4 == 0 {
            return None;
        }
        if u16::from_le_bytes([*f.get(10)?, *f.get(11)?]) != xlen {
            return None;
        }
        if subfield && (f.get(12..16)? != [b'S', b'G', 22, 0]) {
            return None;
        }
        let payload = f.get(extra_at..extra_at + 22)?;
        if &payload[16..] != b"STARGZ" {
            return None;
        }
        let hex = std::str::from_utf8(&payload[..16]).ok()?;
        u64::from_str_radix(hex, 16).ok()
    };
    if let Some(off) = try_footer(FOOTER_SIZE as usize, 16, 26, true) {
        return Ok((off, FOOTER_SIZE));
    }
    if let Some(off) = try_footer(LEGACY_FOOTER_SIZE as usize, 12, 22, false) {
        return Ok((off, LEGACY_FOOTER_SIZE));
    }
    Err(format!(
        "no eStargz footer in the last {} bytes (truncated or not eStargz)",
        tail.len().min(FOOTER_SIZE as usize)
    ))
}

/// The 51-byte footer pointing at a TOC at `toc_offset`.
pub fn footer_bytes(toc_offset: u64) -> Vec<u8> {
    let mut f = vec![
        0x1f, 0x8b, 8, 4, 0, 0, 0, 0, 0, 0xff, 26, 0, b'S', b'G', 22, 0,
    ];
    f.extend_from_slice(format!("{toc_offset:016x}STARGZ").as_bytes());
    // An empty final stored block, then CRC32 and ISIZE of nothing.
    f.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
    f.extend_from_slice(&[0; 8]);
    f
}

/// A TOC as fetched from the blob, with where it was found.
pub struct FetchedToc {
    /// The parsed TOC.
    pub toc: Toc,
    /// Blob offset of the TOC's gzip member (where chunk data ends).
    pub toc_offset: u64,
    /// sha256 of the TOC JSON.
    pub digest: Digest,
}

/// How much of a `size`-byte layer's tail the first read takes: [`TAIL_READ`], or for
/// big layers about 1/128 of the layer (at most [`MAX_TAIL_READ`]), since the TOC
/// grows with the layer: python's 51 MB layer has a 330 KB TOC, which took a second
/// round trip after a 256 KiB tail; a round trip costs more than the extra bytes
/// (20 ms against 12 ms for 144 KB at 100 Mbit/s).
pub fn tail_read(size: u64) -> u64 {
    (size / 128).clamp(TAIL_READ, MAX_TAIL_READ)
}

/// Fetches the footer and TOC (one Range read, two if the TOC is larger than the tail
/// read, [`tail_read`]), checks it against `expected` and parses it. With `expected` `None`
/// the TOC is parsed unverified (chunks are still verified against their digests).
pub fn read_toc(blob: &dyn BlobReader, expected: Option<Digest>) -> Result<FetchedToc, IndexError> {
    let digest = blob.digest();
    let size = blob.size();
    if size < LEGACY_FOOTER_SIZE {
        return Err(malformed(
            digest,
            format!("blob of {size} bytes is too small to hold a footer"),
        ));
    }
    let (tail_start, tail) = match blob.tail_read_ahead() {
        Some((start, tail))
            if start.checked_add(tail.len() as u64) == Some(size)
                && tail.len() as u64 >= LEGACY_FOOTER_SIZE =>
        {
            (start, tail)
        }
        _ => {
            let tail_len = size.min(tail_read(size));
            (size - tail_len, blob.read_at(size - tail_len, tail_len)?)
        }
    };
    let (toc_offset, footer) = parse_footer(&tail).map_err(|e| malformed(digest, e))?;
    let toc_end = size - footer;
    if toc_offset >= toc_end {
        return Err(malformed(
            digest,
            format!("TOC offset {toc_offset} is past the footer at {toc_end}"),
        ));
    }
    if toc_end - toc_offset > MAX_TOC_COMPRESSED {
        return Err(malformed(
            digest,
            format!(
                "TOC of {} compressed bytes is too large",
                toc_end - toc_offset
            ),
        ));
    }
    let tail_toc_end = (toc_end - tail_start) as usize;
    let compressed = if toc_offset >= tail_start {
        tail[(toc_offset - tail_start) as usize..tail_toc_end].to_vec()
    } else {
        let mut head = blob.read_at(toc_offset, tail_start - toc_offset)?;
        head.extend_from_slice(&tail[..tail_toc_end]);
        head
    };
    let json = toc_json(&compressed).map_err(|e| malformed(digest, e))?;
    let toc_digest = Digest::of(&json);
    if let Some(expected) = expected {
        if expected != toc_digest {
            return Err(IndexError::Digest(crate::digest::DigestError::Mismatch {
                what: format!("eStargz TOC of layer {digest} (annotation {TOC_DIGEST_ANNOTATION})"),
                expected,
                actual: toc_digest,
            }));
        }
    } else {
        tracing::warn!(layer = %digest, "eStargz TOC has no digest annotation; not verified");
    }
    let toc: Toc =
        serde_json::from_slice(&json).map_err(|e| malformed(digest, format!("TOC JSON: {e}")))?;
    Ok(FetchedToc {
        toc,
        toc_offset,
        digest: toc_digest,
    })
}

/// Inflates the TOC member and returns the `stargz.index.json` bytes in it.
fn toc_json(compressed: &[u8]) -> Result<Vec<u8>, String> {
    let gz = flate2::read::GzDecoder::new(compressed);
    let mut archive = tar::Archive::new(gz);
    let mut entries = archive
        .entries()
        .map_err(|e| format!("reading TOC tar: {e}"))?;
    let mut entry = entries
        .next()
        .ok_or_else(|| "TOC member holds no tar entry".to_string())?
        .map_err(|e| format!("reading TOC tar header: {e}"))?;
    let name = entry
        .path()
        .map_err(|e| format!("TOC entry name: {e}"))?
        .to_string_lossy()
        .into_owned();
    if name != TOC_TAR_NAME {
        return Err(format!("TOC member holds {name:?}, not {TOC_TAR_NAME}"));
    }
    let size = entry.size();
    if size > MAX_TOC_JSON {
        return Err(format!("TOC of {size} bytes is too large"));
    }
    let mut json = Vec::with_capacity(size.min(16 << 20) as usize);
    (&mut entry)
        .take(size)
        .read_to_end(&mut json)
        .map_err(|e| format!("inflating TOC: {e}"))?;
    if json.len() as u64 != size {
        return Err(format!("TOC ends after {} of {size} bytes", json.len()));
    }
    Ok(json)
}

/// Builds the index of an eStargz blob, verifying the TOC against the annotation
/// `containerd.io/snapshot/stargz/toc.digest` when present (a present but malformed
/// annotation is an error).
pub fn index_estargz(
    blob: &dyn BlobReader,
    annotations: &HashMap<String, String>,
) -> Result<LayerIndex, IndexError> {
    let expected = annotations
        .get(TOC_DIGEST_ANNOTATION)
        .map(|d| d.parse::<Digest>())
        .transpose()?;
    let fetched = read_toc(blob, expected)?;
    let digest = blob.digest();
    let c = convert(&fetched.toc, Flavor::Estargz, digest, fetched.toc_offset)?;
    Ok(LayerIndex {
        blob: digest,
        blob_size: blob.size(),
        format: LayerFormat::Estargz,
        entries: c.entries,
        chunks: c.chunks,
        checkpoints: Vec::new(),
        prefetch: c.prefetch,
    })
}
