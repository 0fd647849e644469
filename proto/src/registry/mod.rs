//! The registry client (distribution-spec): auth, manifests, blobs, Range reads, push.
//!
//! Start with [`Client::new`], then [`Client::resolve`] a [`crate::reference::Reference`]
//! to a [`crate::image::ResolvedImage`]; read layers whole with
//! [`Client::download_blob`] or lazily through a [`RemoteBlob`].

pub mod auth;
mod client;
pub mod credentials;
pub mod error;
mod push;
pub mod referrers;
mod remote_blob;

pub use client::{is_loopback, Access, Client, ClientOptions, FetchStats, RetryPolicy};
pub use credentials::Credentials;
pub use error::RegistryError;
pub use remote_blob::RemoteBlob;
