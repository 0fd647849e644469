//! Skiff as a containerd remote snapshotter: containerd's
//! `containerd.services.snapshots.v1.Snapshots` gRPC service on a unix socket, to be
//! declared in containerd's config as a `proxy_plugins` snapshotter.
//!
//! - [`store`]: snapshot metadata (keys, ids, parents, kinds, labels, times, usage)
//!   in redb.
//! - [`overlay`]: snapshot directories on disk and the bind/overlay mounts over them,
//!   as containerd's overlay snapshotter does it.
//! - [`remote`]: the [`LayerSource`] trait through which lazy layers are served
//!   (implemented by the skiff daemon), and [`labels`]: the labels that ask for them.
//! - [`snapshotter`]: the operations with their rules; [`service`]: their gRPC face;
//!   [`server`]: the socket and the thread serving it.

pub mod api;
pub mod error;
pub mod labels;
pub mod overlay;
pub mod remote;
pub mod server;
pub mod service;
pub mod snapshotter;
pub mod store;

pub use error::SnapshotError;
pub use remote::{LayerSource, NoLazyLayers, NotLazy};
pub use server::SnapshotServer;
pub use snapshotter::Snapshotter;
pub use store::RemoteLayer;
