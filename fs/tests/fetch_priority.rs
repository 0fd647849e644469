//! The fetcher's scheduling: background work waits while an on-demand read is running,
//! and runs once it is done; prefetch results are shared with on-demand reads.

mod common;

use common::*;
use parking_lot::{Condvar, Mutex};
use skiff_fs::{ChunkCache, FetchTuning, Fetcher, Layer, Priority, Stats};
use skiff_proto::blob::BlobError;
use skiff_proto::{BlobReader, Digest};
use std::sync::Arc;
use std::time::Duration;

/// A blob whose reads wait until the gate opens, recording each read's offset.
struct GatedBlob {
    inner: Arc<CountingBlob>,
    open: Mutex<bool>,
    seen: Mutex<Vec<u64>>,
    changed: Condvar,
}

impl GatedBlob {
    fn wait_seen(&self, n: usize) {
        let mut s = self.seen.lock();
        while s.len() < n {
            self.changed.wait(&mut s);
        }
    }
    fn release(&self) {
        *self.open.lock() = true;
        self.changed.notify_all();
    }
}

impl BlobReader for GatedBlob {
    fn digest(&self) -> Digest {
        self.inner.digest()
    }
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_at(&self, offset: u64, len: u64) -> Result<Vec<u8>, BlobError> {
        self.seen.lock().push(offset);
        self.changed.notify_all();
        let mut open = self.open.lock();
        while !*open {
            self.changed.wait(&mut open);
        }
        drop(open);
        self.inner.read_at(offset, len)
    }
}

/// Opens the gate when dropped, so a failing assertion cannot leave workers blocked
/// (the fetcher's shutdown joins them).
struct ReleaseOnDrop(Arc<GatedBlob>);

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        self.0.release();
    }
}

fn file(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

#[test]
fn background_waits_for_on_demand_reads_then_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let a = file(1, 50_000);
    let b = file(2, 50_000);
    let layer = build_layer(&[Item::File("a", 0o644, &a), Item::File("b", 0o644, &b)]);
    let img = image(&tmp.path().join("img"), &[layer]);
    let gated = Arc::new(GatedBlob {
        inner: img.readers[0].clone(),
        open: Mutex::new(false),
        seen: Mutex::new(Vec::new()),
        changed: Condvar::new(),
    });
    let index = img.layers[0].index.clone();
    let chunks_of = |name: &str| {
        let e = index.entries.iter().find(|e| e.path == name).unwrap();
        index.chunks_of(e).to_vec()
    };
    let (ca, cb) = (chunks_of("a"), chunks_of("b"));
    let fetcher = Fetcher::with_tuning(
        vec![Layer {
            index: index.clone(),
            blob: gated.clone(),
        }],
        ChunkCache::open(&tmp.path().join("cache"), 1 << 30, 1 << 28).unwrap(),
        Arc::new(Stats::default()),
        4,
        FetchTuning {
            merge_gap: 0,
            background_quiet: Duration::ZERO,
            ..FetchTuning::default()
        },
    );
    let _release = ReleaseOnDrop(gated.clone());
    let (tx, rx) = std::sync::mpsc::channel();
    let tx2 = tx.clone();
    fetcher.submit(
        0,
        ca.clone(),
        Box::new(move |r| tx.send(("a", r.is_ok())).unwrap()),
    );
    gated.wait_seen(1);
    fetcher.submit_with(
        Priority::Background,
        0,
        cb.clone(),
        Box::new(move |r| tx2.send(("b", r.is_ok())).unwrap()),
    );
    // Free workers exist, yet the background job must not start while "a" runs.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(*gated.seen.lock(), vec![ca[0].blob_offset]);
    assert!(!fetcher.is_idle());

    gated.release();
    assert_eq!(rx.recv().unwrap(), ("a", true));
    assert_eq!(rx.recv().unwrap(), ("b", true));
    assert!(fetcher.wait_idle(Duration::from_secs(30)));
    assert_eq!(
        *gated.seen.lock(),
        vec![ca[0].blob_offset, cb[0].blob_offset]
    );
    // Both are cached: a later on-demand read costs nothing.
    assert!(fetcher.cached(&cb).is_some());
    assert_eq!(*fetcher.fetch_blocking(0, &ca).unwrap()[0], a);
    assert_eq!(gated.seen.lock().len(), 2);
    fetcher.shutdown();
}
