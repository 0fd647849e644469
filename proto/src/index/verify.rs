//! Checking a published index against the layer it describes, once the whole layer
//! is here.
//!
//! A published index (an artifact anyone with push rights to the repository wrote)
//! is self-consistent by construction: its chunk digests are the publisher's own, so
//! they cannot catch an index that gives a file another file's bytes, a setuid bit
//! or a different owner. Only the layer itself can. When the whole layer blob is at
//! hand (pulled, digest-verified), [`check_published`] derives the index from it and
//! compares: every entry's metadata, and every chunk the published index would serve
//! against the layer's true bytes for that file range. Any difference refuses the
//! published index; the caller uses (and keeps) the derived one instead.

use super::decode::decode_chunk;
use super::model::{Chunk, Entry, EntryKind, IndexError, LayerIndex};
use crate::blob::BlobReader;
use crate::digest::{Digest, Hasher};
use std::collections::HashMap;

/// Most differences listed in one [`VerifyError::Differs`].
const MAX_LISTED: usize = 8;

/// Why a published index could not be confirmed.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The layer itself could not be indexed or read (not the published index's
    /// fault; nothing is concluded about it).
    #[error("indexing layer {layer} to check its published index: {source}")]
    Layer {
        /// The layer digest.
        layer: Digest,
        /// What failed.
        #[source]
        source: IndexError,
    },
    /// The published index says something the layer does not.
    #[error("published index of layer {layer} does not match the layer: {}", .differences.join("; "))]
    Differs {
        /// The layer digest.
        layer: Digest,
        /// What differs (the first few differences).
        differences: Vec<String>,
        /// The index derived from the layer, to use instead.
        derived: Box<LayerIndex>,
    },
}

/// Derives the index of the whole, verified layer `blob` (described by `descriptor`)
/// and checks `published` against it. Returns the derived index: the caller may use
/// it either way (it is the layer's own).
pub fn check_published(
    published: &LayerIndex,
    descriptor: &oci_spec::image::Descriptor,
    blob: &dyn BlobReader,
) -> Result<LayerIndex, VerifyError> {
    let layer = blob.digest();
    let derived = super::open_index(descriptor, blob)
        .map_err(|source| VerifyError::Layer { layer, source })?;
    let differences = differences(published, &derived, blob)
        .map_err(|source| VerifyError::Layer { layer, source })?;
    if differences.is_empty() {
        Ok(derived)
    } else {
        Err(VerifyError::Differs {
            layer,
            differences,
            derived: Box::new(derived),
        })
    }
}

/// What `published` says that the layer (`derived`, read from `blob`) does not; at
/// most [`MAX_LISTED`] items. Errors only when the layer cannot be read.
fn differences(
    published: &LayerIndex,
    derived: &LayerIndex,
    blob: &dyn BlobReader,
) -> Result<Vec<String>, IndexError> {
    let mut found = Vec::new();
    let mut note = |s: String| {
        if found.len() < MAX_LISTED {
            found.push(s);
        }
    };
    if published.blob != derived.blob || published.blob_size != derived.blob_size {
        note(format!(
            "it describes blob {} of {} bytes",
            published.blob, published.blob_size
        ));
    }
    let truth: HashMap<&str, &Entry> = derived
        .entries
        .iter()
        .map(|e| (e.path.as_str(), e))
        .collect();
    let claimed: HashMap<&str, &Entry> = published
        .entries
        .iter()
        .map(|e| (e.path.as_str(), e))
        .collect();
    if published.entries.len() != derived.entries.len() {
        note(format!(
            "it lists {} entries where the layer has {}",
            published.entries.len(),
            derived.entries.len()
        ));
    }
    for e in &derived.entries {
        if !claimed.contains_key(e.path.as_str()) {
            note(format!("{:?} is missing", e.path));
        }
    }
    for p in &published.entries {
        let Some(t) = truth.get(p.path.as_str()) else {
            note(format!("{:?} is not in the layer", p.path));
            continue;
        };
        if let Some(field) = metadata_difference(p, t) {
            note(format!("{:?}: {field}", p.path));
            continue;
        }
        if p.kind == EntryKind::Reg {
            let ok = same_content(published.chunks_of(p), derived, derived.chunks_of(t), blob)?;
            if !ok {
                note(format!(
                    "{:?}: its chunks do not hold the file's bytes",
                    p.path
                ));
            }
        }
    }
    Ok(found)
}

/// The first metadata field in which `p` (published) and `t` (the layer's) differ.
fn metadata_difference(p: &Entry, t: &Entry) -> Option<String> {
    let pair = |name: &str, a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| {
        Some(format!("{name} {a:?} where the layer has {b:?}"))
    };
    if p.kind != t.kind {
        return pair("kind", &p.kind, &t.kind);
    }
    if p.mode != t.mode {
        return Some(format!(
            "mode {:o} where the layer has {:o}",
            p.mode, t.mode
        ));
    }
    if (p.uid, p.gid) != (t.uid, t.gid) {
        return pair("owner", &(p.uid, p.gid), &(t.uid, t.gid));
    }
    if p.size != t.size {
        return pair("size", &p.size, &t.size);
    }
    if p.link() != t.link() {
        return pair("link", &p.link(), &t.link());
    }
    if p.dev() != t.dev() {
        return pair("device", &p.dev(), &t.dev());
    }
    if (p.mtime, p.mtime_nsec) != (t.mtime, t.mtime_nsec) {
        return pair("mtime", &(p.mtime, p.mtime_nsec), &(t.mtime, t.mtime_nsec));
    }
    let sorted = |x: &[(String, Vec<u8>)]| {
        let mut v = x.to_vec();
        v.sort();
        v
    };
    if sorted(p.xattrs()) != sorted(t.xattrs()) {
        return Some("extended attributes differ".into());
    }
    None
}

/// Whether each of `claimed` (the published chunks of one file, in file order,
/// contiguous as validation ensures) has the digest of the file's true bytes over its
/// range, reading those bytes through `truth` (the layer's own chunks of the file).
fn same_content(
    claimed: &[Chunk],
    derived: &LayerIndex,
    truth: &[Chunk],
    blob: &dyn BlobReader,
) -> Result<bool, IndexError> {
    // The cheap case: the same chunking (as when both were built with the default
    // chunk size) compares by digest, with nothing to decode.
    let key = |c: &Chunk| (c.file_offset, c.len, c.digest);
    if claimed.len() == truth.len() && claimed.iter().map(key).eq(truth.iter().map(key)) {
        return Ok(true);
    }
    // Otherwise stream the true bytes once and hash them along the claimed boundaries.
    let mut want = claimed.iter().peekable();
    let mut hasher = Hasher::new();
    let mut pos = 0u64;
    for t in truth {
        let raw = blob
            .read_at(t.blob_offset, t.blob_len)
            .map_err(|e| IndexError::Encoding {
                what: format!("layer {}", derived.blob),
                reason: e.to_string(),
            })?;
        let mut bytes = &decode_chunk(derived, t, &raw)?[..];
        while !bytes.is_empty() {
            let Some(c) = want.peek() else {
                // The published chunks end before the file does.
                return Ok(false);
            };
            if c.file_offset > pos || c.file_offset + c.len < pos {
                return Ok(false);
            }
            let end = c.file_offset + c.len;
            let take = ((end - pos) as usize).min(bytes.len());
            hasher.update(&bytes[..take]);
            bytes = &bytes[take..];
            pos += take as u64;
            if pos == end {
                let got = std::mem::take(&mut hasher).finish();
                if got != c.digest {
                    return Ok(false);
                }
                want.next();
            }
        }
    }
    Ok(want.next().is_none())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::Descriptor;
    use crate::index::gzip::index_tar_gzip;
    use crate::index::robustness_tests::{tar_of, MemBlob};
    use crate::index::IndexOptions;
    use std::io::Write;

    /// A gzip layer of two files (one spanning several small chunks), its blob and
    /// its OCI descriptor.
    fn layer() -> (MemBlob, oci_spec::image::Descriptor) {
        let tar = tar_of(vec![
            ("etc/motd".into(), b"hello\n".to_vec()),
            (
                "bin/tool".into(),
                (0..100_000u32).map(|i| (i * 13 % 251) as u8).collect(),
            ),
        ]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        let blob = gz.finish().unwrap();
        let d = Descriptor::of("application/vnd.oci.image.layer.v1.tar+gzip", &blob)
            .to_oci()
            .unwrap();
        (MemBlob::new(blob), d)
    }

    fn index_with_chunk_size(blob: &MemBlob, chunk_size: u64) -> LayerIndex {
        index_tar_gzip(
            blob,
            &IndexOptions {
                chunk_size,
                ..IndexOptions::default()
            },
        )
        .unwrap()
    }

    fn entry_mut<'a>(idx: &'a mut LayerIndex, path: &str) -> &'a mut Entry {
        idx.entries.iter_mut().find(|e| e.path == path).unwrap()
    }

    fn differences_of(
        published: &LayerIndex,
        blob: &MemBlob,
        d: &oci_spec::image::Descriptor,
    ) -> Vec<String> {
        match check_published(published, d, blob) {
            Ok(_) => Vec::new(),
            Err(VerifyError::Differs { differences, .. }) => differences,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn an_honest_index_passes_whatever_its_chunking() {
        let (blob, d) = layer();
        let honest = index_with_chunk_size(&blob, IndexOptions::default().chunk_size);
        assert!(differences_of(&honest, &blob, &d).is_empty());
        // Chunked differently from the layer's own index: checked byte by byte.
        let small = index_with_chunk_size(&blob, 4096);
        assert!(small.chunks.len() > honest.chunks.len());
        assert!(differences_of(&small, &blob, &d).is_empty());
    }

    #[test]
    fn changed_metadata_is_refused() {
        let (blob, d) = layer();
        let mut evil = index_with_chunk_size(&blob, 4096);
        entry_mut(&mut evil, "bin/tool").mode = 0o4755;
        let found = differences_of(&evil, &blob, &d);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].contains("bin/tool") && found[0].contains("mode 4755"),
            "{found:?}"
        );

        let mut evil = index_with_chunk_size(&blob, 4096);
        entry_mut(&mut evil, "etc/motd").uid = 0;
        assert!(differences_of(&evil, &blob, &d)[0].contains("owner"));

        let mut evil = index_with_chunk_size(&blob, 4096);
        evil.entries.retain(|e| e.path != "etc/motd");
        assert!(!differences_of(&evil, &blob, &d).is_empty());
    }

    #[test]
    fn chunks_pointing_at_other_bytes_are_refused_even_with_their_own_digests() {
        let (blob, d) = layer();
        let tool_bytes: Vec<u8> = (0..100_000u32).map(|i| (i * 13 % 251) as u8).collect();
        // Each forgery is self-consistent (the digest is that of the bytes the recipe
        // decodes to), so a read would verify; only the layer tells.

        // Same chunking as the layer's own index: `etc/motd` is served from the first
        // bytes of `bin/tool`.
        let mut evil = index_with_chunk_size(&blob, IndexOptions::default().chunk_size);
        let tool = evil.chunks_of(entry_mut(&mut evil.clone(), "bin/tool"))[0];
        let motd = entry_mut(&mut evil, "etc/motd").first_chunk as usize;
        evil.chunks[motd] = Chunk {
            file_offset: 0,
            len: 6,
            digest: Digest::of(&tool_bytes[..6]),
            ..tool
        };
        let found = differences_of(&evil, &blob, &d);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("etc/motd"), "{found:?}");

        // Other chunking: `bin/tool`'s second 4 KiB is served from its third.
        let mut evil = index_with_chunk_size(&blob, 4096);
        let first = entry_mut(&mut evil, "bin/tool").first_chunk as usize;
        let third = evil.chunks[first + 2];
        evil.chunks[first + 1] = Chunk {
            file_offset: evil.chunks[first + 1].file_offset,
            ..third
        };
        let found = differences_of(&evil, &blob, &d);
        assert!(
            found.len() == 1 && found[0].contains("bin/tool"),
            "{found:?}"
        );
    }
}
