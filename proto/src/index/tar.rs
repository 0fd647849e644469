//! Indexing a tar stream: one pass that records every entry and, for regular files,
//! chunks with their stream offsets and digests.
//!
//! For an uncompressed tar layer stream offsets are blob offsets, so the result is the
//! index ([`index_tar`]). Compressed formats reuse [`walk_tar`] on the decompressed
//! stream and then map stream offsets to where the bytes live in the blob.

use super::model::{
    clean_path, Chunk, ChunkEncoding, Entry, EntryKind, IndexError, LayerFormat, LayerIndex,
};
use crate::blob::BlobReader;
use crate::digest::{Digest, Hasher};
use std::io::Read;

/// Files are cut into chunks of at most this many bytes (as eStargz does), so a read
/// fetches and verifies no more than this around the bytes it wants.
pub const DEFAULT_CHUNK_SIZE: u64 = 4 << 20;

/// The whiteout prefix of OCI layers.
const WHITEOUT_PREFIX: &str = ".wh.";
/// The opaque-directory marker of OCI layers.
const OPAQUE_MARKER: &str = ".wh..wh..opq";

/// What one layer's tar may expand to before indexing stops with an error: a small
/// compressed blob can otherwise describe billions of entries or terabytes of zeros
/// (a decompression bomb) that the indexer would hash and keep in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TarLimits {
    /// Most tar entries (files, directories, markers) in one layer.
    pub max_entries: u64,
    /// Most uncompressed file bytes in one layer.
    pub max_bytes: u64,
}

impl TarLimits {
    /// One million entries and 64 GiB: far above real images (a 100,000-file layer is
    /// large), low enough that a bomb fails in seconds rather than filling memory.
    pub const DEFAULT: TarLimits = TarLimits {
        max_entries: 1_000_000,
        max_bytes: 64 << 30,
    };

    /// [`TarLimits::DEFAULT`], each overridden by `SKIFF_MAX_LAYER_ENTRIES` or
    /// `SKIFF_MAX_LAYER_BYTES` when set to a number.
    pub fn from_env() -> TarLimits {
        let var = |name: &str| std::env::var(name).ok().and_then(|v| v.parse().ok());
        TarLimits {
            max_entries: var("SKIFF_MAX_LAYER_ENTRIES").unwrap_or(Self::DEFAULT.max_entries),
            max_bytes: var("SKIFF_MAX_LAYER_BYTES").unwrap_or(Self::DEFAULT.max_bytes),
        }
    }
}

/// Entries and chunks of a tar stream. Chunks are [`ChunkEncoding::Raw`] with
/// `blob_offset` set to the offset in the (uncompressed) tar stream.
pub struct TarWalk {
    /// Entries in stream order.
    pub entries: Vec<Entry>,
    /// Chunks of regular files, in stream order.
    pub chunks: Vec<Chunk>,
}

/// Indexes an uncompressed tar layer in one streaming pass over the blob.
pub fn index_tar(blob: &dyn BlobReader) -> Result<LayerIndex, IndexError> {
    let digest = blob.digest();
    let walk = walk_tar(blob.stream()?, digest, "tar", DEFAULT_CHUNK_SIZE)?;
    Ok(LayerIndex {
        blob: digest,
        blob_size: blob.size(),
        format: LayerFormat::Tar,
        entries: walk.entries,
        chunks: walk.chunks,
        checkpoints: Vec::new(),
        prefetch: Vec::new(),
    })
}

/// Walks a tar stream, turning headers into [`Entry`]s (whiteouts decoded, paths
/// cleaned) and hashing file contents chunk by chunk.
pub fn walk_tar(
    reader: impl Read,
    blob: Digest,
    format: &'static str,
    chunk_size: u64,
) -> Result<TarWalk, IndexError> {
    walk_tar_split(reader, blob, format, chunk_size, &|_, _| None)
}

/// Like [`walk_tar`], but also ends a chunk wherever `split(start, end)` names a
/// stream offset in `start+1..=end` (the first such one). The gzip indexer
/// uses it to cut chunks at checkpoints, so a chunk never needs more than one span.
/// `split` is only asked about bytes the reader has already produced.
pub fn walk_tar_split(
    reader: impl Read,
    blob: Digest,
    format: &'static str,
    chunk_size: u64,
    split: &dyn Fn(u64, u64) -> Option<u64>,
) -> Result<TarWalk, IndexError> {
    walk_tar_limited(
        reader,
        blob,
        format,
        chunk_size,
        split,
        TarLimits::from_env(),
    )
}

/// [`walk_tar_split`] with explicit [`TarLimits`].
pub fn walk_tar_limited(
    reader: impl Read,
    blob: Digest,
    format: &'static str,
    chunk_size: u64,
    split: &dyn Fn(u64, u64) -> Option<u64>,
    limits: TarLimits,
) -> Result<TarWalk, IndexError> {
    let malformed = |reason: String| IndexError::Malformed {
        format,
        blob,
        reason,
    };
    let mut archive = tar::Archive::new(reader);
    let mut entries = Vec::new();
    let mut chunks = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    let iter = archive
        .entries()
        .map_err(|e| malformed(format!("reading tar: {e}")))?;
    let mut seen = 0u64;
    let mut file_bytes = 0u64;
    for item in iter {
        seen += 1;
        if seen > limits.max_entries {
            return Err(malformed(format!(
                "more than {} entries (SKIFF_MAX_LAYER_ENTRIES)",
                limits.max_entries
            )));
        }
        let mut tar_entry = item.map_err(|e| malformed(format!("reading tar header: {e}")))?;
        let header = tar_entry.header();
        let tar_type = header.entry_type();
        let kind = match tar_type {
            tar::EntryType::Regular | tar::EntryType::Continuous => EntryKind::Reg,
            tar::EntryType::Directory => EntryKind::Dir,
            tar::EntryType::Symlink => EntryKind::Symlink,
            tar::EntryType::Link => EntryKind::Hardlink,
            tar::EntryType::Char => EntryKind::Char,
            tar::EntryType::Block => EntryKind::Block,
            tar::EntryType::Fifo => EntryKind::Fifo,
            // Global pax headers and other metadata-only records carry no file.
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader => continue,
            other => {
                return Err(malformed(format!(
                    "unsupported tar entry type {:?}",
                    other.as_byte() as char
                )))
            }
        };
        let raw_path = tar_entry
            .path()
            .map_err(|e| malformed(format!("bad entry path: {e}")))?;
        let raw_path = raw_path
            .to_str()
            .ok_or_else(|| malformed(format!("non-UTF-8 entry path {raw_path:?}")))?
            .to_string();
        // Absolute paths are refused like `..`: no producer writes them legitimately.
        let path = clean_path(&raw_path)
            .filter(|_| !raw_path.starts_with('/'))
            .ok_or_else(|| IndexError::UnsafePath {
                blob,
                path: raw_path.clone(),
            })?;
        let mut entry = Entry::new(path, kind);
        if apply_oci_markers(&mut entry).map_err(malformed)? {
            entries.push(entry);
            continue;
        }

        let header = tar_entry.header();
        entry.mode = header
            .mode()
            .map_err(|e| malformed(format!("{raw_path}: bad mode: {e}")))?
            & 0o7777;
        entry.uid = to_u32(
            header
                .uid()
                .map_err(|e| malformed(format!("{raw_path}: bad uid: {e}")))?,
        )
        .ok_or_else(|| malformed(format!("{raw_path}: uid out of range")))?;
        entry.gid = to_u32(
            header
                .gid()
                .map_err(|e| malformed(format!("{raw_path}: bad gid: {e}")))?,
        )
        .ok_or_else(|| malformed(format!("{raw_path}: gid out of range")))?;
        let mtime = header
            .mtime()
            .map_err(|e| malformed(format!("{raw_path}: bad mtime: {e}")))?;
        entry.mtime = i64::try_from(mtime)
            .map_err(|_| malformed(format!("{raw_path}: mtime out of range")))?;
        if matches!(kind, EntryKind::Char | EntryKind::Block) {
            entry.set_dev(
                header.device_major().ok().flatten().unwrap_or(0),
                header.device_minor().ok().flatten().unwrap_or(0),
            );
        }
        match kind {
            EntryKind::Symlink => {
                let target = tar_entry
                    .link_name()
                    .map_err(|e| malformed(format!("{raw_path}: bad link: {e}")))?;
                let target = target
                    .ok_or_else(|| malformed(format!("{raw_path}: symlink without target")))?;
                entry.set_link(
                    target
                        .to_str()
                        .ok_or_else(|| malformed(format!("{raw_path}: non-UTF-8 link")))?
                        .to_string(),
                );
            }
            EntryKind::Hardlink => {
                let target = tar_entry
                    .link_name()
                    .map_err(|e| malformed(format!("{raw_path}: bad link: {e}")))?;
                let target = target
                    .ok_or_else(|| malformed(format!("{raw_path}: hard link without target")))?;
                let target = target
                    .to_str()
                    .ok_or_else(|| malformed(format!("{raw_path}: non-UTF-8 link")))?;
                entry.set_link(clean_path(target).ok_or_else(|| IndexError::UnsafePath {
                    blob,
                    path: target.to_string(),
                })?);
            }
            _ => {}
        }
        if let Some(pax) = tar_entry
            .pax_extensions()
            .map_err(|e| malformed(format!("{raw_path}: bad pax header: {e}")))?
        {
            for ext in pax {
                let ext = ext.map_err(|e| malformed(format!("{raw_path}: bad pax record: {e}")))?;
                let Ok(key) = ext.key() else { continue };
                if let Some(xattr) = key.strip_prefix("SCHILY.xattr.") {
                    entry.push_xattr(xattr.to_string(), ext.value_bytes().to_vec());
                } else if key == "mtime" {
                    if let Some((secs, nsec)) = ext.value().ok().and_then(parse_pax_time) {
                        entry.mtime = secs;
                        entry.mtime_nsec = nsec;
                    }
                }
            }
        }
        if kind == EntryKind::Reg {
            let size = tar_entry.size();
            file_bytes = file_bytes.saturating_add(size);
            if file_bytes > limits.max_bytes {
                return Err(malformed(format!(
                    "{raw_path}: more than {} bytes of file data (SKIFF_MAX_LAYER_BYTES)",
                    limits.max_bytes
                )));
            }
            let data_offset = tar_entry.raw_file_position();
            entry.size = size;
            entry.first_chunk =
                u32::try_from(chunks.len()).map_err(|_| malformed("too many chunks".into()))?;
            let mut file_offset = 0u64;
            let mut chunk_start = 0u64;
            let mut hasher = Hasher::new();
            while file_offset < size {
                let want = (size - file_offset).min(buf.len() as u64) as usize;
                let got = tar_entry
                    .read(&mut buf[..want])
                    .map_err(|e| malformed(format!("{raw_path}: reading data: {e}")))?;
                if got == 0 {
                    return Err(malformed(format!(
                        "{raw_path}: data truncated at {file_offset} of {size} bytes"
                    )));
                }
                let mut pos = 0usize;
                while pos < got {
                    let chunk_end = chunk_start.saturating_add(chunk_size).min(size);
                    let mut take = ((got - pos) as u64).min(chunk_end - file_offset);
                    let abs = data_offset + file_offset;
                    let mut cut = file_offset + take == chunk_end;
                    if let Some(at) = split(abs, abs + take) {
                        if at > abs && at <= abs + take {
                            take = at - abs;
                            cut = true;
                        }
                    }
                    hasher.update(&buf[pos..pos + take as usize]);
                    pos += take as usize;
                    file_offset += take;
                    if cut {
                        chunks.push(Chunk {
                            blob_offset: data_offset + chunk_start,
                            blob_len: file_offset - chunk_start,
                            file_offset: chunk_start,
                            len: file_offset - chunk_start,
                            digest: std::mem::take(&mut hasher).finish(),
                            encoding: ChunkEncoding::Raw,
                        });
                        chunk_start = file_offset;
                    }
                }
            }
            entry.chunk_count = u32::try_from(chunks.len() - entry.first_chunk as usize)
                .map_err(|_| malformed("too many chunks".into()))?;
        }
        entries.push(entry);
    }
    // The tar crate stops at the end-of-archive marker; what follows is padding, but
    // it must still decode: for a compressed layer this reads on to the end of the
    // stream, where gzip's trailer (CRC-32 and length) and zstd's checksum are checked
    // and a cut blob is noticed. A corrupted stream can inflate to a tar that ends
    // early, and everything indexed before that point would otherwise be believed.
    let mut rest = archive.into_inner();
    std::io::copy(&mut rest, &mut std::io::sink())
        .map_err(|e| malformed(format!("reading past the end of the tar: {e}")))?;
    Ok(TarWalk { entries, chunks })
}

/// Decodes OCI whiteout markers in place: `dir/.wh.NAME` becomes a
/// [`EntryKind::Whiteout`] for `dir/NAME`, `dir/.wh..wh..opq` an [`EntryKind::Opaque`]
/// for `dir`. Returns whether `entry` was a marker; errors on a nameless whiteout.
pub(crate) fn apply_oci_markers(entry: &mut Entry) -> Result<bool, String> {
    let (parent, name) = match entry.path.rsplit_once('/') {
        Some((parent, name)) => (parent.to_string(), name.to_string()),
        None => (String::new(), entry.path.clone()),
    };
    if name == OPAQUE_MARKER {
        entry.path = parent;
        entry.kind = EntryKind::Opaque;
        return Ok(true);
    }
    if let Some(target) = name.strip_prefix(WHITEOUT_PREFIX) {
        if target.is_empty() || target == "." || target == ".." {
            return Err(format!("bad whiteout name {:?}", entry.path));
        }
        entry.path = if parent.is_empty() {
            target.to_string()
        } else {
            format!("{parent}/{target}")
        };
        entry.kind = EntryKind::Whiteout;
        return Ok(true);
    }
    Ok(false)
}

fn to_u32(v: u64) -> Option<u32> {
    u32::try_from(v).ok()
}

/// Parses a pax time `SECS[.FRACTION]`.
pub(crate) fn parse_pax_time(s: &str) -> Option<(i64, u32)> {
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs = secs.parse::<i64>().ok()?;
    let mut nsec = 0u32;
    for (i, c) in frac.chars().take(9).enumerate() {
        nsec += c.to_digit(10)? * 10u32.pow(8 - i as u32);
    }
    Some((secs, nsec))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blob::FileBlob;
    use crate::index::decode::decode_chunk;
    use std::io::Write;

    fn header() -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h
    }

    fn build_tar() -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = header();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        h.set_mtime(1_700_000_000);
        b.append_data(&mut h, "etc/", &[][..]).unwrap();
        let big: Vec<u8> = (0..(9u32 << 20)).map(|i| (i % 253) as u8).collect();
        let mut h = header();
        h.set_mode(0o640);
        h.set_uid(1000);
        h.set_gid(50);
        h.set_size(big.len() as u64);
        b.append_data(&mut h, "./etc/big", &big[..]).unwrap();
        let mut h = header();
        h.set_size(0);
        h.set_mode(0o644);
        b.append_data(&mut h, "etc/.wh.gone", &[][..]).unwrap();
        b.append_data(&mut h, "var/.wh..wh..opq", &[][..]).unwrap();
        let mut h = header();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        b.append_link(&mut h, "etc/link", "/etc/big").unwrap();
        b.into_inner().unwrap()
    }

    #[test]
    fn a_layer_past_its_limits_is_refused_not_indexed() {
        // build_tar has 5 entries and 9 MiB of file data.
        let data = build_tar();
        let walk = |limits| {
            walk_tar_limited(
                &data[..],
                Digest::of(&data),
                "tar",
                DEFAULT_CHUNK_SIZE,
                &|_, _| None,
                limits,
            )
        };
        let roomy = TarLimits {
            max_entries: 5,
            max_bytes: 9 << 20,
        };
        assert_eq!(walk(roomy).unwrap().entries.len(), 5);
        let err = walk(TarLimits {
            max_entries: 4,
            ..roomy
        })
        .err()
        .unwrap()
        .to_string();
        assert!(err.contains("more than 4 entries"), "{err}");
        let err = walk(TarLimits {
            max_bytes: (9 << 20) - 1,
            ..roomy
        })
        .err()
        .unwrap()
        .to_string();
        assert!(err.contains("etc/big: more than"), "{err}");
    }

    #[test]
    fn indexes_a_tar_and_reads_chunks_back() {
        let data = build_tar();
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&data).unwrap();
        let blob = FileBlob::open(Digest::of(&data), f.path()).unwrap();
        let idx = index_tar(&blob).unwrap();
        let kinds: Vec<_> = idx
            .entries
            .iter()
            .map(|e| (e.path.as_str(), e.kind))
            .collect();
        assert_eq!(
            kinds,
            vec![
                ("etc", EntryKind::Dir),
                ("etc/big", EntryKind::Reg),
                ("etc/gone", EntryKind::Whiteout),
                ("var", EntryKind::Opaque),
                ("etc/link", EntryKind::Symlink)
            ]
        );
        let big = &idx.entries[1];
        assert_eq!(
            (big.mode, big.uid, big.gid, big.size),
            (0o640, 1000, 50, 9 << 20)
        );
        assert_eq!(idx.entries[4].link(), "/etc/big");
        let chunks = idx.chunks_of(big);
        assert_eq!(chunks.len(), 3);
        let mut content = Vec::new();
        for c in chunks {
            let raw = blob.read_at(c.blob_offset, c.blob_len).unwrap();
            content.extend(decode_chunk(&idx, c, &raw).unwrap());
        }
        let expect: Vec<u8> = (0..(9u32 << 20)).map(|i| (i % 253) as u8).collect();
        assert!(content == expect);
        // A flipped byte is refused.
        let mut raw = blob
            .read_at(chunks[0].blob_offset, chunks[0].blob_len)
            .unwrap();
        raw[7] ^= 1;
        assert!(matches!(
            decode_chunk(&idx, &chunks[0], &raw),
            Err(IndexError::Digest(_))
        ));
    }

    #[test]
    fn a_50000_file_layer_index_stays_compact() {
        let mut b = tar::Builder::new(Vec::new());
        for i in 0..50_000u32 {
            let mut h = header();
            h.set_size(100);
            h.set_mode(0o644);
            let name = format!("usr/share/package-{}/some/deeper/dir/file-{i}.txt", i % 500);
            b.append_data(&mut h, name, &[b'x'; 100][..]).unwrap();
        }
        let data = b.into_inner().unwrap();
        let walk = walk_tar(&data[..], Digest::of(&data), "tar", DEFAULT_CHUNK_SIZE).unwrap();
        let idx = LayerIndex {
            blob: Digest::of(&data),
            blob_size: data.len() as u64,
            format: LayerFormat::Tar,
            entries: walk.entries,
            chunks: walk.chunks,
            checkpoints: vec![],
            prefetch: vec![],
        };
        assert_eq!(idx.entries.len(), 50_000);
        let mem = idx.memory_size();
        // About 250 bytes per file: far from "hundreds of MB".
        assert!(mem < 20 << 20, "{mem} bytes for 50,000 files");
        assert!(idx.to_bytes().unwrap().len() < 10 << 20);
    }

    #[test]
    fn refuses_paths_that_escape() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = header();
        h.set_size(1);
        h.set_mode(0o644);
        // Builder refuses `..`, so write the name into the header directly.
        h.as_gnu_mut().unwrap().name[..10].copy_from_slice(b"../escaped");
        h.set_cksum();
        b.append(&h, &b"x"[..]).unwrap();
        let data = b.into_inner().unwrap();
        let r = walk_tar(&data[..], Digest::of(&data), "tar", DEFAULT_CHUNK_SIZE);
        assert!(
            matches!(r, Err(IndexError::UnsafePath { .. })),
            "{:?}",
            r.err()
        );
    }
}
