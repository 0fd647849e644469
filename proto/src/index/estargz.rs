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
use crate::blob::{BlobReader, TailAhead};
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
    let read_tail = || -> Result<(u64, Vec<u8>), IndexError> {
        let tail_len = size.min(tail_read(size));
        Ok((size - tail_len, blob.read_at(size - tail_len, tail_len)?))
    };
    let (tail_start, tail) = match blob.tail_read_ahead_streamed() {
        Some(TailAhead {
            offset,
            head: Some((head_len, head)),
            bytes,
        }) => match streamed_toc(blob, offset, head_len, head, &bytes, expected)? {
            Some(fetched) => return Ok(fetched),
            None => read_tail()?,
        },
        Some(TailAhead {
            offset,
            head: None,
            bytes,
        }) if offset.checked_add(bytes.len() as u64) == Some(size)
            && bytes.len() as u64 >= LEGACY_FOOTER_SIZE =>
        {
            (offset, bytes)
        }
        _ => read_tail()?,
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
    check_toc_digest(digest, expected, toc_digest)?;
    let toc: Toc =
        serde_json::from_slice(&json).map_err(|e| malformed(digest, format!("TOC JSON: {e}")))?;
    Ok(FetchedToc {
        toc,
        toc_offset,
        digest: toc_digest,
    })
}

/// That the TOC's digest is the one the layer's annotation gives (a warning when it
/// gives none).
fn check_toc_digest(
    layer: Digest,
    expected: Option<Digest>,
    actual: Digest,
) -> Result<(), IndexError> {
    match expected {
        Some(expected) if expected != actual => {
            Err(IndexError::Digest(crate::digest::DigestError::Mismatch {
                what: format!("eStargz TOC of layer {layer} (annotation {TOC_DIGEST_ANNOTATION})"),
                expected,
                actual,
            }))
        }
        Some(_) => Ok(()),
        None => {
            tracing::warn!(layer = %layer, "eStargz TOC has no digest annotation; not verified");
            Ok(())
        }
    }
}

/// The TOC of `blob` from a tail read ahead whose first `head_len` bytes (from blob
/// offset `offset`) are still arriving through `head`, then `bytes`: inflated, hashed
/// and parsed while they arrive, and verified as [`read_toc`] verifies. `None` when
/// the tail is not this blob's TOC as expected (it must start the TOC and hold the
/// footer) or its bytes stopped short: the caller reads the TOC the ordinary way.
fn streamed_toc(
    blob: &dyn BlobReader,
    offset: u64,
    head_len: u64,
    head: Box<dyn Read + Send>,
    bytes: &[u8],
    expected: Option<Digest>,
) -> Result<Option<FetchedToc>, IndexError> {
    let (digest, size) = (blob.digest(), blob.size());
    let Some(probe_start) = offset.checked_add(head_len) else {
        return Ok(None);
    };
    if probe_start.checked_add(bytes.len() as u64) != Some(size)
        || (bytes.len() as u64) < LEGACY_FOOTER_SIZE
    {
        return Ok(None);
    }
    let Ok((toc_offset, footer)) = parse_footer(bytes) else {
        return Ok(None);
    };
    let toc_end = size - footer;
    if toc_offset != offset || toc_end < probe_start || toc_end - toc_offset > MAX_TOC_COMPRESSED {
        return Ok(None);
    }
    let stopped = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let head = Watched {
        inner: head,
        stopped: stopped.clone(),
    };
    let read = toc_from_reader(head.chain(&bytes[..(toc_end - probe_start) as usize]));
    if stopped.load(std::sync::atomic::Ordering::SeqCst) {
        tracing::debug!(layer = %digest, "the TOC read ahead stopped short; reading it again");
        return Ok(None);
    }
    let (parsed, toc_digest) = read.map_err(|e| malformed(digest, e))?;
    check_toc_digest(digest, expected, toc_digest)?;
    let toc = parsed.map_err(|e| malformed(digest, e))?;
    Ok(Some(FetchedToc {
        toc,
        toc_offset,
        digest: toc_digest,
    }))
}

/// A reader that notes when its inner one fails.
struct Watched {
    inner: Box<dyn Read + Send>,
    stopped: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Read for Watched {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        self.inner.read(out).inspect_err(|_| {
            self.stopped
                .store(true, std::sync::atomic::Ordering::SeqCst);
        })
    }
}

/// Hashes what is read through it.
struct Hashing<R> {
    inner: R,
    hasher: crate::digest::Hasher,
    count: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(out)?;
        self.hasher.update(&out[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// Inflates a TOC member from `compressed` and parses the `stargz.index.json` in it
/// as it comes: the parsed TOC (or why not) and the digest of all of its bytes.
fn toc_from_reader(compressed: impl Read) -> Result<(Result<Toc, String>, Digest), String> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(compressed));
    let (entry, size) = toc_entry(&mut archive)?;
    let mut hashing = Hashing {
        inner: entry.take(size),
        hasher: crate::digest::Hasher::new(),
        count: 0,
    };
    let parsed = serde_json::from_reader::<_, Toc>(std::io::BufReader::with_capacity(
        64 << 10,
        &mut hashing,
    ))
    .map_err(|e| format!("TOC JSON: {e}"));
    // What the parser left (all of it, if it stopped early) still counts in the digest.
    std::io::copy(&mut hashing, &mut std::io::sink()).map_err(|e| format!("inflating TOC: {e}"))?;
    if hashing.count != size {
        return Err(format!("TOC ends after {} of {size} bytes", hashing.count));
    }
    Ok((parsed, hashing.hasher.finish()))
}

/// The `stargz.index.json` entry an inflated TOC member starts with, and its size
/// (at most [`MAX_TOC_JSON`]).
fn toc_entry<R: Read>(archive: &mut tar::Archive<R>) -> Result<(tar::Entry<'_, R>, u64), String> {
    let mut entries = archive
        .entries()
        .map_err(|e| format!("reading TOC tar: {e}"))?;
    let entry = entries
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
    Ok((entry, size))
}

/// Inflates the TOC member and returns the `stargz.index.json` bytes in it.
fn toc_json(compressed: &[u8]) -> Result<Vec<u8>, String> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(compressed));
    let (mut entry, size) = toc_entry(&mut archive)?;
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
