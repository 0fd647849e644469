//! Where lazy layers come from: implemented by whoever can resolve images and mount
//! merged read-only views of their layers (the skiff daemon). The snapshotter only
//! records which layer a snapshot is and asks for views of chains.

use crate::labels::LazyRequest;
use crate::store::RemoteLayer;
use std::path::PathBuf;

/// Why a layer cannot be served lazily (the snapshotter then unpacks it normally).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NotLazy(pub String);

/// A source of lazily served layers. Methods block (they may talk to a registry);
/// the service calls them off its async threads.
pub trait LayerSource: Send + Sync + 'static {
    /// Makes `request`'s layer available without downloading it (resolving the
    /// image's manifest, config and layer indexes), and says which layer it is.
    fn prepare(&self, request: &LazyRequest) -> Result<RemoteLayer, NotLazy>;

    /// Mounts (once; later calls return the same path) a read-only merged view of
    /// layers `0..=top.layer` of `top.image`, the content of the chain named `chain`,
    /// and returns where.
    fn view(&self, chain: &str, top: &RemoteLayer) -> Result<PathBuf, NotLazy>;

    /// Unmounts the view of `chain`, if mounted (no snapshot needs it any more).
    fn release(&self, chain: &str);

    /// The chains whose views are mounted now.
    fn mounted(&self) -> Vec<String>;
}

/// A source that serves nothing lazily: every layer is unpacked.
pub struct NoLazyLayers;

impl LayerSource for NoLazyLayers {
    fn prepare(&self, _: &LazyRequest) -> Result<RemoteLayer, NotLazy> {
        Err(NotLazy("no lazy layer source".into()))
    }

    fn view(&self, chain: &str, _: &RemoteLayer) -> Result<PathBuf, NotLazy> {
        Err(NotLazy(format!("no lazy layer source for {chain}")))
    }

    fn release(&self, _: &str) {}

    fn mounted(&self) -> Vec<String> {
        Vec::new()
    }
}
