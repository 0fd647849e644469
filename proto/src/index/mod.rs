//! Layer indexes: for every layer, a table of contents that says where each file's
//! bytes live in the (compressed) layer blob, so single files can be read with Range
//! requests and verified chunk by chunk.
//!
//! [`model`] is the one representation every format is turned into; the format readers
//! produce it, and `skiff-fs` consumes it (`entries`, [`LayerIndex::chunks_of`],
//! [`decode_chunk`]). [`open_index`] picks the reader for a layer descriptor:
//!
//! | layer | reader | blob reads to build | a chunk read fetches |
//! |---|---|---|---|
//! | eStargz (`…stargz/toc.digest` annotation) | [`estargz`] | 1 `read_at` of the tail (2 if the TOC is larger than [`estargz::tail_read`]) | its gzip member |
//! | zstd:chunked (`…zstd-chunked.manifest-position`) | [`zstd_chunked`] | 1 `read_at` of the TOC | its zstd frame |
//! | tar | [`tar`] | one `stream()` | exactly the bytes |
//! | tar+gzip (incl. Docker's) | [`gzip`] | one `stream()` | checkpoint → next checkpoint (≤ one span, 2 MiB of output by default; `skiff index --span`) |
//! | tar+zstd | [`zstd`] | one `stream()` | its frame; a single-frame layer has no random access: see [`zstd::needs_whole_blob`] |
//!
//! Every chunk carries the sha256 of its uncompressed bytes and [`decode_chunk`] returns
//! nothing unverified. TOCs are verified against their annotations before use. Indexes
//! are kept in an [`store::IndexStore`] keyed by layer digest, and can be published as
//! an OCI artifact ([`artifact`]: manifest contents, referrers fallback tag, lookup).
//! [`convert`] writes eStargz and [`zstd_chunked_writer`] zstd:chunked (`skiff convert`,
//! `skiff push`).
//!
//! For a remote [`crate::blob::BlobReader`]: building a plain-layer index reads the
//! blob once through `stream()` (override it with one streaming GET); TOC formats only
//! use `read_at`.

pub mod artifact;
pub mod checkpoint;
pub mod convert;
pub mod decode;
pub mod estargz;
pub mod gzip;
pub mod model;
pub mod store;
pub mod tar;
pub mod toc;
pub mod validate;
pub mod verify;
pub mod zstd;
pub mod zstd_chunked;
pub mod zstd_chunked_writer;

use crate::image::LayerEncoding;
pub use decode::{decode_chunk, decode_chunks, ChunkDecoder};
pub use model::{
    clean_path, Checkpoint, Chunk, ChunkEncoding, Entry, EntryKind, IndexError, LayerFormat,
    LayerIndex,
};

/// Knobs for building an index by a streaming pass.
pub struct IndexOptions<'a> {
    /// Largest chunk of a file, in uncompressed bytes.
    pub chunk_size: u64,
    /// Distance between gzip checkpoints, in uncompressed bytes.
    pub span: u64,
    /// Called now and then with the number of blob bytes consumed so far (e.g. to
    /// drive a progress bar); `None` in library hot paths.
    pub progress: Option<&'a dyn Fn(u64)>,
}

impl Default for IndexOptions<'_> {
    fn default() -> Self {
        IndexOptions {
            chunk_size: tar::DEFAULT_CHUNK_SIZE,
            span: gzip::DEFAULT_SPAN,
            progress: None,
        }
    }
}

/// Builds the index of the layer `descriptor` names, reading it through `blob`.
///
/// The reader is chosen from the annotations first — eStargz by
/// `containerd.io/snapshot/stargz/toc.digest` (TOC fetched from the tail and verified),
/// zstd:chunked by its `manifest-position` annotation (TOC fetched and verified) — and
/// otherwise from the media type ([`crate::image::LAYER_MEDIA_TYPES`]): tar, tar+gzip
/// (streaming pass with checkpoints, incl. Docker's `rootfs.diff.tar.gzip`) or
/// tar+zstd (streaming pass; see
/// [`zstd::needs_whole_blob`] for single-frame layers). Callers should cache the
/// result in a [`store::IndexStore`].
pub fn open_index(
    descriptor: &oci_spec::image::Descriptor,
    blob: &dyn crate::blob::BlobReader,
) -> Result<LayerIndex, IndexError> {
    open_index_with(descriptor, blob, &IndexOptions::default())
}

/// [`open_index`] with explicit options (chunk size, span, progress callback).
pub fn open_index_with(
    descriptor: &oci_spec::image::Descriptor,
    blob: &dyn crate::blob::BlobReader,
    opts: &IndexOptions,
) -> Result<LayerIndex, IndexError> {
    let mut index = build_index(descriptor, blob, opts)?;
    index.shrink_to_fit();
    Ok(index)
}

/// [`open_index_with`] before the tables are shrunk.
fn build_index(
    descriptor: &oci_spec::image::Descriptor,
    blob: &dyn crate::blob::BlobReader,
    opts: &IndexOptions,
) -> Result<LayerIndex, IndexError> {
    let named = descriptor.digest().to_string();
    if named != blob.digest().to_string() {
        return Err(IndexError::WrongBlob {
            expected: named,
            actual: blob.digest(),
        });
    }
    let no_annotations = std::collections::HashMap::new();
    let annotations = descriptor.annotations().as_ref().unwrap_or(&no_annotations);
    let media_type = descriptor.media_type().to_string();
    if estargz::is_estargz(annotations) {
        return estargz::index_estargz(blob, annotations);
    }
    if zstd_chunked::is_zstd_chunked(annotations) {
        return zstd_chunked::index_zstd_chunked(blob, annotations);
    }
    match crate::image::layer_encoding(&media_type) {
        Some(LayerEncoding::Tar) => tar::index_tar(blob),
        Some(LayerEncoding::TarGzip) => gzip::index_tar_gzip(blob, opts),
        Some(LayerEncoding::TarZstd) => zstd::index_tar_zstd(blob, opts),
        None => Err(IndexError::UnsupportedMediaType {
            blob: blob.digest(),
            media_type,
        }),
    }
}

#[cfg(test)]
mod robustness_tests;
