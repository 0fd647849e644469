//! Layer indexes: for every layer, a table of contents that says where each file's
//! bytes live in the (compressed) layer blob, so single files can be read with Range
//! requests and verified chunk by chunk.
//!
//! [`model`] is the one representation every format is turned into; the format readers
//! (eStargz, zstd:chunked, plain tar / tar+gzip with checkpoints) produce it, and
//! `skiff-fs` consumes it. [`open_index`] picks the reader for a layer descriptor.

pub mod checkpoint;
pub mod convert;
pub mod decode;
pub mod estargz;
pub mod gzip;
pub mod model;
pub mod tar;
pub mod toc;
pub mod zstd;
pub mod zstd_chunked;

pub use decode::decode_chunk;
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
    /// drive an `indicatif` bar); `None` in library hot paths.
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
