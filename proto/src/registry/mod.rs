//! The registry client (distribution-spec): auth, manifests, blobs, Range reads, push.
//!
//! Start with [`Client::new`], then [`Client::resolve`] a [`crate::reference::Reference`]
//! to a [`crate::image::ResolvedImage`]; read layers whole with
//! [`Client::download_blob`] or lazily through a [`RemoteBlob`].
//!
//! One job per module: `client` sends requests (auth, redirects, TLS refusals),
//! `retry` is the one retry loop they all go through, [`auth`] fetches and caches
//! tokens, `options` says how to reach a registry, [`hosts`] reads containerd's
//! `hosts.toml` mirror configuration, `endpoint` is one host to try (a mirror or the
//! registry) and `host_set` the list of them (re-read when `hosts.toml` changes),
//! `whole_read` serves Range reads from hosts that answer with the whole blob,
//! `manifests`, `blobs`, `push` and [`referrers`] are the requests themselves,
//! [`artifact`] pushes and fetches the artifacts that refer to an image (layer indexes,
//! prefetch profiles), [`error`] says what went wrong (and parses registries' error
//! bodies); [`credentials`] reads docker's config file and [`login`] writes it.

pub mod artifact;
pub mod auth;
mod blobs;
mod client;
pub mod credentials;
mod endpoint;
pub mod error;
mod host_set;
pub mod hosts;
pub mod login;
mod manifests;
mod options;
mod passthrough;
mod push;
pub mod referrers;
mod remote_blob;
mod retry;
mod tails_ahead;
mod whole_read;

pub use client::{is_loopback, Client, FetchStats};
pub use credentials::Credentials;
pub use endpoint::prepare_http;
pub use error::RegistryError;
pub use manifests::ResolvedManifest;
pub use options::{Access, ClientOptions};
pub use passthrough::Listing;
pub use remote_blob::RemoteBlob;
pub use retry::RetryPolicy;
pub use tails_ahead::{BlobTail, TailPromise, MAX_TAIL_AHEAD};
