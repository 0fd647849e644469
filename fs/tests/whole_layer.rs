//! A single-frame tar+zstd layer (what `--compression zstd` of docker buildx and podman
//! push make) has no random access: every chunk read would download the blob from its
//! start. Such a layer is streamed once and served from the cache: reading several
//! files fetches the blob once, in bounded requests, and the content is right.

mod common;

use common::*;
use skiff_fs::Layer;
use skiff_proto::blob::{BlobError, FileBlob};
use skiff_proto::index::IndexOptions;
use skiff_proto::{BlobReader, Digest};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Counts reads, bytes and the largest single read.
struct Metered {
    inner: FileBlob,
    reads: AtomicU64,
    bytes: AtomicU64,
    largest: AtomicU64,
}

impl BlobReader for Metered {
    fn digest(&self) -> Digest {
        self.inner.digest()
    }
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_at(&self, offset: u64, len: u64) -> Result<Vec<u8>, BlobError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.bytes.fetch_add(len, Ordering::SeqCst);
        self.largest.fetch_max(len, Ordering::SeqCst);
        self.inner.read_at(offset, len)
    }
}

const FILES: u32 = 6;
const FILE_LEN: usize = 7 << 20;

#[test]
fn a_single_frame_zstd_layer_is_fetched_once_in_bounded_requests() {
    let tmp = tempfile::tempdir().unwrap();
    let contents: Vec<Vec<u8>> = (0..FILES).map(|i| content(100 + i, FILE_LEN)).collect();
    let names: Vec<String> = (0..FILES).map(|i| format!("dir/file{i}")).collect();
    let mut items = vec![Item::Dir("dir", 0o755)];
    for (n, c) in names.iter().zip(&contents) {
        items.push(Item::File(n, 0o644, c));
    }
    let tar = build_layer(&items);
    // One zstd frame over the whole tar (incompressible content: > 32 MiB of blob).
    let blob = zstd::encode_all(&tar[..], 1).unwrap();
    drop(tar);
    let digest = Digest::of(&blob);
    let path = tmp.path().join("layer.tar.zst");
    std::fs::write(&path, &blob).unwrap();
    let size = blob.len() as u64;
    drop(blob);
    let metered = Arc::new(Metered {
        inner: FileBlob::open(digest, &path).unwrap(),
        reads: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        largest: AtomicU64::new(0),
    });
    let index =
        skiff_proto::index::zstd::index_tar_zstd(metered.as_ref(), &IndexOptions::default())
            .unwrap();
    assert!(
        skiff_proto::index::zstd::needs_whole_blob(&index),
        "the test layer must be one big frame ({} blob bytes per chunk read)",
        index.max_chunk_fetch()
    );
    metered.reads.store(0, Ordering::SeqCst);
    metered.bytes.store(0, Ordering::SeqCst);
    metered.largest.store(0, Ordering::SeqCst);

    let mut opts = skiff_fs::MountOptions::new(
        vec![Layer {
            index: Arc::new(index),
            blob: metered.clone(),
        }],
        tmp.path().join("cache"),
    );
    opts.prefetch = false;
    let mnt = tmp.path().join("mnt");
    let m = Mounted::new(opts, &mnt);
    // Five different files, read at once from five threads.
    std::thread::scope(|s| {
        for i in [0usize, 2, 3, 4, 5] {
            let (mnt, names, contents) = (&mnt, &names, &contents);
            s.spawn(move || {
                let got = std::fs::read(mnt.join(&names[i])).unwrap();
                assert!(got == contents[i], "{} differs", names[i]);
            });
        }
    });
    let (reads, bytes, largest) = (
        metered.reads.load(Ordering::SeqCst),
        metered.bytes.load(Ordering::SeqCst),
        metered.largest.load(Ordering::SeqCst),
    );
    println!("blob {size} bytes: {reads} reads, {bytes} bytes, largest {largest}");
    assert!(
        bytes <= size,
        "fetched {bytes} bytes of a {size}-byte blob for 5 files"
    );
    assert!(
        largest <= 8 << 20,
        "one request of {largest} bytes: the blob must not be buffered whole"
    );
    // The sixth file was streamed by the way: reading it costs nothing more.
    assert_eq!(std::fs::read(mnt.join(&names[1])).unwrap(), contents[1]);
    assert_eq!(metered.bytes.load(Ordering::SeqCst), bytes);
    drop(m);
}

#[test]
fn a_chunk_needing_more_than_the_cap_is_refused_without_a_download() {
    let tmp = tempfile::tempdir().unwrap();
    let img = image(
        &tmp.path().join("img"),
        &[build_layer(&[Item::File("f", 0o644, b"content")])],
    );
    let mut index = (*img.layers[0].index).clone();
    // A hostile index: one chunk said to need 65 MiB of blob.
    let mut chunk = index.chunks[0];
    chunk.blob_len = skiff_fs::fetcher::MAX_CHUNK_FETCH + 1;
    index.chunks[0] = chunk;
    let layers = vec![Layer {
        index: Arc::new(index),
        blob: img.readers[0].clone(),
    }];
    let cache = skiff_fs::ChunkCache::open(&tmp.path().join("cache"), u64::MAX, 1 << 20).unwrap();
    let fetcher = skiff_fs::Fetcher::new(layers, cache, Arc::new(skiff_fs::Stats::default()), 2);
    let err = fetcher.fetch_blocking(0, &[chunk]).unwrap_err();
    assert!(err.to_string().contains("more than"), "{err}");
    assert_eq!(img.readers[0].reads.load(Ordering::SeqCst), 0);
}
