//! Skiff's wire protocol and formats.
//!
//! Nothing in this crate mounts a filesystem or creates a namespace: it speaks to
//! registries, models images, and describes where each file's bytes live inside a
//! layer blob so that the filesystem above can read them on demand.
//!
//! Data flows one way: [`reference`] → registry manifest → per-layer [`index`] →
//! (in `skiff-fs`) merged tree → chunk reads through a [`blob::BlobReader`].
//! [`resolve`] drives that from a resolved image to one verified index per layer.

pub mod blob;
pub mod digest;
pub mod image;
pub mod index;
pub mod reference;
pub mod registry;
pub mod resolve;
pub mod store;
pub mod tempfiles;

pub use blob::{BlobError, BlobReader, FileBlob};
pub use digest::{Digest, DigestError};
