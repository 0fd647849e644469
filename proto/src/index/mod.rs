//! Layer indexes: for every layer, a table of contents that says where each file's
//! bytes live in the (compressed) layer blob, so single files can be read with Range
//! requests and verified chunk by chunk.
//!
//! [`model`] is the one representation every format is turned into; the format readers
//! (eStargz, zstd:chunked, plain tar / tar+gzip with checkpoints) produce it, and
//! `skiff-fs` consumes it.

pub mod checkpoint;
pub mod decode;
pub mod model;
pub mod tar;

pub use decode::decode_chunk;
pub use model::{
    clean_path, Checkpoint, Chunk, ChunkEncoding, Entry, EntryKind, IndexError, LayerFormat,
    LayerIndex,
};
