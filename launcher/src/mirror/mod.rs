//! `skiff mirror`: a lazy, range-caching, single-flight pull-through registry mirror.
//!
//! Clients (skiff nodes through `hosts.toml`, containerd, stargz-snapshotter, skopeo)
//! pull through it as through any registry mirror. Unlike a docker-registry in proxy
//! mode, it honours `Range` on blobs it has not cached yet, and fetches from upstream
//! only the blocks clients read, each once however many clients read it at the same
//! moment: a fleet cold-starting one image costs upstream about what one node reads.
//!
//! `upstream` talks to the registry (skiff's client: tokens, TLS, retries), `blocks`
//! keeps blobs as sparse files with a bitmap of present blocks, `stream` sends a blob's
//! bytes as its blocks arrive, `server` is the HTTP side.

pub mod blocks;
pub mod server;
pub mod stream;
pub mod upstream;

use blocks::BlockStore;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use upstream::Upstream;

/// What the mirror served.
#[derive(Debug, Default)]
pub struct ServeStats {
    /// HTTP requests received.
    pub requests: AtomicU64,
    /// Body bytes sent to clients (blobs and manifests).
    pub served_bytes: AtomicU64,
}

/// A running mirror's state, shared by every connection.
pub struct Mirror {
    /// The upstream registry.
    pub upstream: Arc<Upstream>,
    /// The blob cache.
    pub blocks: Arc<BlockStore>,
    /// What was served.
    pub stats: ServeStats,
}

impl Mirror {
    /// A mirror of `upstream` caching blobs in `blocks`.
    pub fn new(upstream: Upstream, blocks: BlockStore) -> Mirror {
        Mirror {
            upstream: Arc::new(upstream),
            blocks: Arc::new(blocks),
            stats: ServeStats::default(),
        }
    }

    /// The counters, as served on `/skiff/stats` and logged on exit.
    pub fn stats_json(&self) -> serde_json::Value {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let client = self.upstream.client().stats();
        let up = self.upstream.stats();
        let blocks = self.blocks.stats();
        serde_json::json!({
            "upstream_requests": client.requests(),
            "upstream_bytes": client.bytes(),
            "upstream_blob_requests": get(&up.blob_requests),
            "upstream_blob_bytes": get(&up.blob_bytes),
            "upstream_manifest_requests": get(&up.manifest_requests),
            "block_fetches": get(&blocks.fetches),
            "blobs_verified": get(&blocks.verified),
            "blobs_corrupt": get(&blocks.corrupt),
            "requests": get(&self.stats.requests),
            "served_bytes": get(&self.stats.served_bytes),
        })
    }
}
