//! Lazy reads fetch only what is read; the cache serves a second mount with zero blob
//! reads; a corrupted cache file is refetched; a dead blob source gives EIO for that
//! read only.

mod common;

use common::*;
use std::sync::atomic::Ordering;

struct Files {
    names: Vec<String>,
    data: Vec<Vec<u8>>,
}

fn big_image(dir: &std::path::Path) -> (Image, Files) {
    let mut names = vec![
        "small.txt".to_string(),
        "other.txt".to_string(),
        "large.bin".to_string(),
    ];
    let mut data = vec![
        b"just a small file\n".to_vec(),
        content(7, 3000),
        content(1, 10 << 20),
    ];
    for i in 0..100 {
        names.push(format!("many/f{i:03}"));
        data.push(content(i + 100, 100_000));
    }
    let mut items = vec![Item::Dir("many", 0o755)];
    for (n, d) in names.iter().zip(&data) {
        items.push(Item::File(n, 0o644, d));
    }
    let layer = build_layer(&items);
    (image(dir, &[layer]), Files { names, data })
}

#[test]
fn reads_fetch_only_their_chunks_and_cache_serves_remounts() {
    let tmp = tempfile::tempdir().unwrap();
    let (img, files) = big_image(&tmp.path().join("img"));
    let blob_size = img.readers[0].size_hint();
    let cache = tmp.path().join("cache");
    let mnt = tmp.path().join("mnt");
    let r = img.readers[0].clone();

    let m = Mounted::new(options(&img, &cache, None), &mnt);
    // Listing and stat need no blob bytes at all.
    assert_eq!(std::fs::read_dir(mnt.join("many")).unwrap().count(), 100);
    assert_eq!(
        std::fs::metadata(mnt.join("large.bin")).unwrap().len(),
        10 << 20
    );
    assert_eq!(r.reads.load(Ordering::SeqCst), 0);
    // One small file: its bytes, and the small file stored right after it (within
    // the 32 KiB a read takes either side, `FetchTuning::read_around`: gcc and python
    // read such neighbours next, a round trip each), in one request.
    assert_eq!(std::fs::read(mnt.join("small.txt")).unwrap(), files.data[0]);
    assert_eq!(r.reads.load(Ordering::SeqCst), 1);
    let first = r.bytes.load(Ordering::SeqCst);
    let small = files.data[0].len() as u64;
    assert!(
        first >= small && first <= small + (32 << 10),
        "{first} bytes"
    );
    let s = m.stats();
    assert_eq!(s.blob_requests, 1);
    assert_eq!(s.blob_bytes, first);
    assert_eq!(s.cache_misses, 1);
    // The large file: each 4 MiB chunk fetched once, nothing else.
    assert!(std::fs::read(mnt.join("large.bin")).unwrap() == files.data[2]);
    let expect = first + (10 << 20);
    assert_eq!(r.bytes.load(Ordering::SeqCst), expect);
    assert!(
        expect + 10_000_000 < blob_size,
        "the rest of the blob was not fetched"
    );
    // Everything, then unmount.
    for (n, d) in files.names.iter().zip(&files.data) {
        assert!(&std::fs::read(mnt.join(n)).unwrap() == d, "{n}");
    }
    let first = m.unmount();
    assert!(first.reads > 0);
    assert!(first.read_p50_us > 0);

    // Second mount: all from the cache.
    let before = r.reads.load(Ordering::SeqCst);
    let m = Mounted::new(options(&img, &cache, None), &mnt);
    for (n, d) in files.names.iter().zip(&files.data) {
        assert!(&std::fs::read(mnt.join(n)).unwrap() == d, "{n}");
    }
    let s = m.unmount();
    assert_eq!(s.blob_requests, 0);
    assert_eq!(s.cache_misses, 0);
    assert_eq!(r.reads.load(Ordering::SeqCst), before);

    // Corrupt the cached chunk of small.txt: detected, refetched, right bytes served.
    let chunk = img.layers[0]
        .index
        .entries
        .iter()
        .find(|e| e.path == "small.txt")
        .map(|e| img.layers[0].index.chunks_of(e)[0])
        .unwrap();
    let c = skiff_fs::ChunkCache::open(&cache, u64::MAX, 0).unwrap();
    let (path, offset) = c.location_of(&chunk.digest).unwrap();
    drop(c);
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"JUST", offset).unwrap();
    let m = Mounted::new(options(&img, &cache, None), &mnt);
    assert_eq!(std::fs::read(mnt.join("small.txt")).unwrap(), files.data[0]);
    let s = m.unmount();
    assert_eq!(s.cache_corrupt, 1);
    assert_eq!(s.blob_requests, 1);
    // Stored again, and served from disk by a fresh cache.
    let c = skiff_fs::ChunkCache::open(&cache, u64::MAX, 0).unwrap();
    assert_eq!(*c.get(&chunk.digest).unwrap().0, files.data[0]);
}

#[test]
fn dead_blob_source_fails_only_uncached_reads() {
    let tmp = tempfile::tempdir().unwrap();
    let (img, files) = big_image(&tmp.path().join("img"));
    let mnt = tmp.path().join("mnt");
    let r = img.readers[0].clone();
    let m = Mounted::new(options(&img, &tmp.path().join("cache"), None), &mnt);
    assert_eq!(std::fs::read(mnt.join("small.txt")).unwrap(), files.data[0]);
    r.fail.store(true, Ordering::SeqCst);
    // (other.txt, stored right after small.txt, came in with it: a file far from it.)
    let uncached = files.names.iter().position(|n| n == "many/f050").unwrap();
    let err = std::fs::read(mnt.join("many/f050")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    // Cached files and metadata keep working.
    assert_eq!(std::fs::read(mnt.join("small.txt")).unwrap(), files.data[0]);
    assert_eq!(std::fs::read_dir(mnt.join("many")).unwrap().count(), 100);
    assert!(m.stats().blob_errors >= 1);
    // The source comes back: the same read succeeds.
    r.fail.store(false, Ordering::SeqCst);
    assert!(std::fs::read(mnt.join("many/f050")).unwrap() == files.data[uncached]);
    drop(m);
}

#[test]
fn concurrent_reads_of_one_chunk_share_a_fetch() {
    let tmp = tempfile::tempdir().unwrap();
    let (img, files) = big_image(&tmp.path().join("img"));
    let mnt = tmp.path().join("mnt");
    let r = img.readers[0].clone();
    let m = Mounted::new(options(&img, &tmp.path().join("cache"), None), &mnt);
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let p = mnt.join("many/f042");
            std::thread::spawn(move || std::fs::read(p).unwrap())
        })
        .collect();
    for t in threads {
        assert!(t.join().unwrap() == files.data[45]);
    }
    assert_eq!(r.bytes.load(Ordering::SeqCst), 100_000);
    drop(m);
}

#[test]
fn prefetch_marked_files_are_cached_after_mount() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut img, files) = big_image(&tmp.path().join("img"));
    let mut index = (*img.layers[0].index).clone();
    let pos = index
        .entries
        .iter()
        .position(|e| e.path == "other.txt")
        .unwrap();
    index.prefetch = vec![pos as u32];
    img.layers[0].index = std::sync::Arc::new(index);
    let mnt = tmp.path().join("mnt");
    let r = img.readers[0].clone();
    let m = Mounted::new(options(&img, &tmp.path().join("cache"), None), &mnt);
    // Wait (bounded) for the background prefetch to land.
    for _ in 0..200 {
        if m.stats().cache_misses >= 1 && r.reads.load(Ordering::SeqCst) >= 1 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // Nothing else is queued or running, so the count is final.
    m.wait_fetches_idle();
    assert_eq!(r.bytes.load(Ordering::SeqCst), files.data[1].len() as u64);
    // The registry goes away: the prefetched file still reads.
    r.fail.store(true, Ordering::SeqCst);
    assert!(std::fs::read(mnt.join("other.txt")).unwrap() == files.data[1]);
    drop(m);
}

/// Bytes of all regular files below `dir` (apparent sizes, counted here rather than
/// asked of the cache).
fn bytes_under(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let md = e.metadata().unwrap();
            if md.is_dir() {
                todo.push(e.path());
            } else {
                total += md.len();
            }
        }
    }
    total
}

/// A small disk cache (4 MiB) and memory cache (1 MiB) under a live mount: reading
/// 16 MiB of files twice, in two orders, gives every byte right. After each read the
/// cache directory settles within its bound (chunks are written by the cache's writer
/// thread and evicted after each written batch, so a batch can be over the bound for
/// a moment: that moment is bounded loosely, by what the fetcher can have in flight).
#[test]
fn cache_limits_hold_under_a_live_mount() {
    let tmp = tempfile::tempdir().unwrap();
    let names: Vec<String> = (0..16).map(|i| format!("f{i:02}")).collect();
    let data: Vec<Vec<u8>> = (0..16).map(|i| content(500 + i, 1 << 20)).collect();
    let items: Vec<Item> = names
        .iter()
        .zip(&data)
        .map(|(n, d)| Item::File(n, 0o644, d))
        .collect();
    let img = image(&tmp.path().join("img"), &[build_layer(&items)]);
    let cache = tmp.path().join("cache");
    let mut opts = options(&img, &cache, None);
    const DISK: u64 = 4 << 20;
    opts.cache_limit = DISK;
    opts.mem_cache_limit = 1 << 20;
    let mnt = tmp.path().join("mnt");
    let m = Mounted::new(opts, &mnt);
    let (mut most, mut settled_most) = (0, 0);
    let order: Vec<usize> = (0..16).chain((0..16).rev()).collect();
    for i in order {
        let got = std::fs::read(mnt.join(&names[i])).unwrap();
        assert!(got == data[i], "{} read wrong bytes", names[i]);
        m.wait_fetches_idle();
        let mut now = bytes_under(&cache);
        most = most.max(now);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while now > DISK && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
            now = bytes_under(&cache);
        }
        assert!(
            now <= DISK,
            "after reading {}: the cache holds {now} bytes, bound {DISK}",
            names[i]
        );
        settled_most = settled_most.max(now);
    }
    eprintln!(
        "cache directory: settled at most {settled_most}, seen at most {most} bytes (bound {DISK})"
    );
    assert!(
        most <= DISK + (8 << 20),
        "the cache grew to {most} bytes, bound {DISK}"
    );
    assert!(
        settled_most >= 2 << 20,
        "the cache held almost nothing: {settled_most} bytes"
    );
    drop(m);
}
