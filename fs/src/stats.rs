//! Per-mount counters: blob (registry) requests and bytes, cache hits and misses, read
//! latency percentiles. Snapshots serialize to JSON for `skiff stats`.

use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Latency buckets: bucket `i` counts reads that took < 2^i microseconds.
const BUCKETS: usize = 32;

/// Live counters, shared by the filesystem and the fetcher.
#[derive(Default)]
pub struct Stats {
    /// `BlobReader::read_at` calls (registry Range requests for remote blobs).
    pub blob_requests: AtomicU64,
    /// Raw bytes returned by those calls.
    pub blob_bytes: AtomicU64,
    /// Failed blob reads.
    pub blob_errors: AtomicU64,
    /// Chunks found in the memory or disk cache.
    pub cache_hits: AtomicU64,
    /// Chunks that had to be fetched.
    pub cache_misses: AtomicU64,
    /// Corrupted cache files detected (and refetched).
    pub cache_corrupt: AtomicU64,
    /// FUSE reads served.
    pub reads: AtomicU64,
    /// Bytes returned by FUSE reads of lower files.
    pub read_bytes: AtomicU64,
    /// Files copied up to the upper layer.
    pub copy_ups: AtomicU64,
    /// Opens served by kernel passthrough (their reads bypass the counters above).
    pub passthrough_opens: AtomicU64,
    /// Inodes the filesystem keeps in its node table now (a gauge: falls as the
    /// kernel forgets inodes).
    pub nodes: AtomicU64,
    latency: [AtomicU64; BUCKETS],
}

/// A point-in-time copy of [`Stats`].
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct StatsSnapshot {
    /// Blob (registry) requests.
    pub blob_requests: u64,
    /// Bytes fetched from blobs.
    pub blob_bytes: u64,
    /// Failed blob reads.
    pub blob_errors: u64,
    /// Chunk cache hits.
    pub cache_hits: u64,
    /// Chunk cache misses.
    pub cache_misses: u64,
    /// Corrupted cache files detected.
    pub cache_corrupt: u64,
    /// Reads of lower files.
    pub reads: u64,
    /// Bytes read from lower files.
    pub read_bytes: u64,
    /// Copy-ups.
    pub copy_ups: u64,
    /// Opens served by kernel passthrough.
    #[serde(default)]
    pub passthrough_opens: u64,
    /// Inodes in the node table when the snapshot was taken.
    #[serde(default)]
    pub nodes: u64,
    /// Median lower-file read latency, microseconds (bucket upper bound).
    pub read_p50_us: u64,
    /// 90th percentile, microseconds.
    pub read_p90_us: u64,
    /// 99th percentile, microseconds.
    pub read_p99_us: u64,
    /// Per remote layer: which host served it and how much (empty for local images).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<LayerSource>,
}

/// Where one remote layer's bytes came from.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct LayerSource {
    /// The layer blob's digest.
    pub digest: String,
    /// The host that served its latest request (a mirror or the registry), if any
    /// request was made.
    pub served_by: Option<String>,
    /// Requests made for the layer.
    pub requests: u64,
    /// Blob bytes received.
    pub bytes: u64,
}

impl Stats {
    /// Records one read's latency.
    pub fn record_read(&self, took: Duration, bytes: usize) {
        let us = took.as_micros().min(u128::from(u64::MAX)) as u64;
        let bucket = (64 - us.leading_zeros() as usize).min(BUCKETS - 1);
        self.latency[bucket].fetch_add(1, Ordering::Relaxed);
        self.reads.fetch_add(1, Ordering::Relaxed);
        self.read_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    fn percentile(&self, counts: &[u64], p: f64) -> u64 {
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return 0;
        }
        let want = ((total as f64) * p).ceil() as u64;
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= want {
                return 1u64 << i;
            }
        }
        1u64 << (BUCKETS - 1)
    }

    /// Copies the counters.
    pub fn snapshot(&self) -> StatsSnapshot {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let counts: Vec<u64> = self.latency.iter().map(get).collect();
        StatsSnapshot {
            blob_requests: get(&self.blob_requests),
            blob_bytes: get(&self.blob_bytes),
            blob_errors: get(&self.blob_errors),
            cache_hits: get(&self.cache_hits),
            cache_misses: get(&self.cache_misses),
            cache_corrupt: get(&self.cache_corrupt),
            reads: get(&self.reads),
            read_bytes: get(&self.read_bytes),
            copy_ups: get(&self.copy_ups),
            passthrough_opens: get(&self.passthrough_opens),
            nodes: get(&self.nodes),
            read_p50_us: self.percentile(&counts, 0.5),
            read_p90_us: self.percentile(&counts, 0.9),
            read_p99_us: self.percentile(&counts, 0.99),
            layers: Vec::new(),
        }
    }
}

impl std::fmt::Display for StatsSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "registry requests: {} ({} bytes, {} errors)",
            self.blob_requests, self.blob_bytes, self.blob_errors
        )?;
        writeln!(
            f,
            "chunk cache: {} hits, {} misses, {} corrupted files refetched",
            self.cache_hits, self.cache_misses, self.cache_corrupt
        )?;
        writeln!(
            f,
            "reads: {} ({} bytes), latency p50 <{}us p90 <{}us p99 <{}us",
            self.reads, self.read_bytes, self.read_p50_us, self.read_p90_us, self.read_p99_us
        )?;
        write!(
            f,
            "copy-ups: {}, passthrough opens: {}",
            self.copy_ups, self.passthrough_opens
        )?;
        for l in &self.layers {
            write!(
                f,
                "\nlayer {}: served by {} ({} requests, {} bytes)",
                l.digest,
                l.served_by.as_deref().unwrap_or("nothing yet"),
                l.requests,
                l.bytes
            )?;
        }
        Ok(())
    }
}
