//! zstd:chunked layers (containers/storage): every file (or chunk of one) is its own
//! zstd frame, and a zstd-compressed JSON TOC ("manifest") sits in a skippable frame
//! near the end. Its position and checksum come from the layer descriptor's
//! annotations, so the TOC costs exactly one Range read.

use super::model::{IndexError, LayerFormat, LayerIndex};
use super::toc::{convert, Flavor, Toc};
use crate::blob::BlobReader;
use crate::digest::Digest;
use std::collections::HashMap;
use std::io::Read;

/// Annotations holding `offset:length:uncompressedLength:type` of the TOC, current and
/// older spelling.
pub const POSITION_ANNOTATIONS: [&str; 2] = [
    "io.github.containers.zstd-chunked.manifest-position",
    "io.containers.zstd-chunked.manifest-position",
];
/// Annotations holding the digest of the compressed TOC bytes.
pub const CHECKSUM_ANNOTATIONS: [&str; 2] = [
    "io.github.containers.zstd-chunked.manifest-checksum",
    "io.containers.zstd-chunked.manifest-checksum",
];
/// The only manifest type defined (CRFS-style JSON).
const MANIFEST_TYPE_CRFS: u64 = 1;
/// Largest compressed TOC accepted.
pub const MAX_TOC_COMPRESSED: u64 = 64 << 20;
/// Largest uncompressed TOC accepted.
pub const MAX_TOC_JSON: u64 = 512 << 20;

fn annotation<'a>(annotations: &'a HashMap<String, String>, keys: &[&str]) -> Option<&'a str> {
    keys.iter()
        .find_map(|k| annotations.get(*k))
        .map(String::as_str)
}

/// Whether a layer descriptor's annotations mark it as zstd:chunked.
pub fn is_zstd_chunked(annotations: &HashMap<String, String>) -> bool {
    annotation(annotations, &POSITION_ANNOTATIONS).is_some()
}

/// Where the TOC is, as announced by the annotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ManifestPosition {
    /// Blob offset of the compressed TOC (inside the skippable frame).
    pub offset: u64,
    /// Its compressed length.
    pub length: u64,
    /// Its uncompressed length.
    pub uncompressed: u64,
}

/// Parses `offset:length:uncompressedLength:type`.
pub fn parse_position(text: &str) -> Option<ManifestPosition> {
    let mut parts = text.split(':').map(|p| p.parse::<u64>().ok());
    let pos = ManifestPosition {
        offset: parts.next()??,
        length: parts.next()??,
        uncompressed: parts.next()??,
    };
    let kind = parts.next()??;
    if parts.next().is_some() || kind != MANIFEST_TYPE_CRFS {
        return None;
    }
    Some(pos)
}

/// Reads and verifies the TOC of a zstd:chunked blob and builds its index. Refuses a
/// TOC whose checksum does not match the annotation, or that lacks one.
pub fn index_zstd_chunked(
    blob: &dyn BlobReader,
    annotations: &HashMap<String, String>,
) -> Result<LayerIndex, IndexError> {
    let digest = blob.digest();
    let toc = read_toc(blob, annotations)?;
    let pos = annotation(annotations, &POSITION_ANNOTATIONS)
        .and_then(parse_position)
        .ok_or_else(|| malformed(digest, "bad manifest position annotation".into()))?;
    let c = convert(&toc, Flavor::ZstdChunked, digest, pos.offset)?;
    Ok(LayerIndex {
        blob: digest,
        blob_size: blob.size(),
        format: LayerFormat::ZstdChunked,
        entries: c.entries,
        chunks: c.chunks,
        checkpoints: Vec::new(),
        prefetch: c.prefetch,
    })
}

fn malformed(blob: Digest, reason: String) -> IndexError {
    IndexError::Malformed {
        format: "zstd:chunked",
        blob,
        reason,
    }
}

/// Fetches (one Range read), verifies and parses the TOC.
pub fn read_toc(
    blob: &dyn BlobReader,
    annotations: &HashMap<String, String>,
) -> Result<Toc, IndexError> {
    let digest = blob.digest();
    let pos_text = annotation(annotations, &POSITION_ANNOTATIONS)
        .ok_or_else(|| malformed(digest, "no manifest-position annotation".into()))?;
    let pos = parse_position(pos_text).ok_or_else(|| {
        malformed(
            digest,
            format!("manifest position {pos_text:?} is not offset:length:uncompressedLength:1"),
        )
    })?;
    let checksum_text = annotation(annotations, &CHECKSUM_ANNOTATIONS)
        .ok_or_else(|| malformed(digest, "no manifest-checksum annotation".into()))?;
    let checksum: Digest = checksum_text.parse()?;
    if pos.length > MAX_TOC_COMPRESSED || pos.uncompressed > MAX_TOC_JSON {
        return Err(malformed(
            digest,
            format!(
                "TOC of {} bytes ({} uncompressed) is larger than allowed",
                pos.length, pos.uncompressed
            ),
        ));
    }
    if pos
        .offset
        .checked_add(pos.length)
        .is_none_or(|e| e > blob.size())
    {
        return Err(malformed(
            digest,
            format!(
                "TOC at {}+{} is outside the {}-byte blob",
                pos.offset,
                pos.length,
                blob.size()
            ),
        ));
    }
    // A tail read ahead covers the TOC when it is small (it ends the blob, before a
    // short footer).
    let ahead = blob.tail_read_ahead().and_then(|(start, tail)| {
        let from = usize::try_from(pos.offset.checked_sub(start)?).ok()?;
        tail.get(from..from.checked_add(pos.length as usize)?)
            .map(<[u8]>::to_vec)
    });
    let compressed = match ahead {
        Some(compressed) => compressed,
        None => blob.read_at(pos.offset, pos.length)?,
    };
    checksum.verify(&format!("zstd:chunked TOC of layer {digest}"), &compressed)?;
    let json = decompress_bounded(&compressed, pos.uncompressed)
        .map_err(|e| malformed(digest, format!("decompressing TOC: {e}")))?;
    serde_json::from_slice(&json).map_err(|e| malformed(digest, format!("TOC JSON: {e}")))
}

/// Decompresses a zstd TOC that must be exactly `expect` bytes long.
fn decompress_bounded(data: &[u8], expect: u64) -> std::io::Result<Vec<u8>> {
    let dec = zstd::stream::read::Decoder::new(data)?;
    let mut out = Vec::with_capacity(expect.min(16 << 20) as usize);
    dec.take(expect + 1).read_to_end(&mut out)?;
    if out.len() as u64 != expect {
        return Err(std::io::Error::other(format!(
            "TOC is {} bytes, annotation says {expect}",
            out.len()
        )));
    }
    Ok(out)
}
