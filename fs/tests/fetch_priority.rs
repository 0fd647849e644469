//! The fetcher's scheduling: background work waits while an on-demand read is running,
//! and runs once it is done; prefetch results are shared with on-demand reads. Its
//! speculation: local small reads take their blob neighbours along, scattered ones do
//! not; the first read of a big file through the mount queues the rest of the file.

mod common;

use common::*;
use skiff_fs::{ChunkCache, FetchTuning, Fetcher, Layer, Priority, Stats};
use std::sync::Arc;
use std::time::Duration;

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
    let gated = GatedBlob::new(img.readers[0].clone());
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
    // Free workers exist, yet the background job must not start while "a" runs. An
    // absence has no event to wait for: watch it over a window instead (a scheduler
    // that starts "b" at once does so within a few milliseconds of submitting).
    let window = std::time::Instant::now();
    while window.elapsed() < Duration::from_millis(200) {
        assert_eq!(*gated.seen.lock(), vec![ca[0].blob_offset]);
        std::thread::sleep(Duration::from_millis(5));
    }
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

/// Fetches `chunks` on demand (through a worker, as a FUSE read does) and waits.
fn on_demand(fetcher: &Fetcher, chunks: &[skiff_proto::index::Chunk]) -> Vec<u8> {
    let (tx, rx) = std::sync::mpsc::channel();
    fetcher.submit(0, chunks.to_vec(), Box::new(move |r| tx.send(r).unwrap()));
    let data = rx.recv().unwrap().unwrap();
    data.iter().flat_map(|d| d.iter().copied()).collect()
}

/// The multiarch library directory of the test images.
const LIB_DIR: &str = "usr/lib/x86_64-linux-gnu";

/// The items of a layer: [`LIB_DIR`] and its parents, then `files`.
fn with_lib_dir<'a>(files: impl IntoIterator<Item = Item<'a>>) -> Vec<Item<'a>> {
    let mut items = vec![
        Item::Dir("usr", 0o755),
        Item::Dir("usr/lib", 0o755),
        Item::Dir(LIB_DIR, 0o755),
    ];
    items.extend(files);
    items
}

/// An image (under `dir/img`) of one layer of `items`, and the chunks of each of its
/// files by name.
fn one_layer(
    dir: &std::path::Path,
    items: &[Item],
) -> (Image, impl Fn(&str) -> Vec<skiff_proto::index::Chunk>) {
    let img = image(&dir.join("img"), &[build_layer(items)]);
    let index = img.layers[0].index.clone();
    let chunks_of = move |name: &str| {
        let e = index.entries.iter().find(|e| e.path == name).unwrap();
        index.chunks_of(e).to_vec()
    };
    (img, chunks_of)
}

#[test]
fn local_small_reads_take_their_neighbours_along_scattered_ones_do_not() {
    let tmp = tempfile::tempdir().unwrap();
    let small: Vec<Vec<u8>> = (0..8u8).map(|i| file(10 + i, 3000)).collect();
    let filler = file(99, 2 << 20);
    let far: Vec<Vec<u8>> = (0..2u8).map(|i| file(50 + i, 3000)).collect();
    let names: Vec<String> = (0..8).map(|i| format!("s{i}")).collect();
    let mut items: Vec<Item> = names
        .iter()
        .zip(&small)
        .map(|(n, d)| Item::File(n, 0o644, d))
        .collect();
    items.push(Item::File("filler", 0o644, &filler));
    items.push(Item::File("far0", 0o644, &far[0]));
    items.push(Item::File("far1", 0o644, &far[1]));
    let (img, chunks_of) = one_layer(tmp.path(), &items);
    let r = img.readers[0].clone();
    // The locality rule alone: no read-around (see
    // an_isolated_small_read_takes_a_few_kb_either_side_of_it).
    let fetcher = Fetcher::with_tuning(
        img.layers.clone(),
        ChunkCache::open(&tmp.path().join("cache"), 1 << 30, 1 << 28).unwrap(),
        Arc::new(Stats::default()),
        2,
        FetchTuning {
            read_around: 0,
            ..FetchTuning::default()
        },
    );
    let reads = || r.reads.load(std::sync::atomic::Ordering::SeqCst);

    // The first read of the layer: nothing to judge locality by, only its chunk.
    assert_eq!(on_demand(&fetcher, &chunks_of("s0")), small[0]);
    assert_eq!(reads(), 1);
    assert!(fetcher.cached(&chunks_of("s2")).is_none());
    // A second read next to it: the files after it come in the same request.
    assert_eq!(on_demand(&fetcher, &chunks_of("s1")), small[1]);
    assert_eq!(reads(), 2);
    for (n, d) in names.iter().zip(&small).skip(2) {
        let cached = fetcher.cached(&chunks_of(n)).expect(n);
        assert_eq!(
            cached
                .iter()
                .flat_map(|c| c.iter().copied())
                .collect::<Vec<u8>>(),
            *d
        );
    }
    assert!(
        fetcher.cached(&chunks_of("filler")).is_none(),
        "the window is bounded"
    );
    // A read 2 MiB away: not local, so far1 right after it is not fetched.
    assert_eq!(on_demand(&fetcher, &chunks_of("far0")), far[0]);
    assert_eq!(reads(), 3);
    assert!(fetcher.cached(&chunks_of("far1")).is_none());
    fetcher.shutdown();
}

/// `FetchTuning::default().read_around`, stated here rather than read from the code
/// under test, so that a change to it is seen.
const READ_AROUND: u64 = 32 << 10;

#[test]
fn an_isolated_small_read_takes_a_few_kb_either_side_of_it() {
    let tmp = tempfile::tempdir().unwrap();
    // Six 3000-byte files stored side by side (3584 bytes apart in the tar), between
    // two 64 KiB ones.
    let small: Vec<Vec<u8>> = (0..6u32).map(|i| content(20 + i, 3000)).collect();
    let pads = [content(1, 64 << 10), content(2, 64 << 10)];
    let names: Vec<String> = (0..6).map(|i| format!("s{i}")).collect();
    let mut items = vec![Item::File("pad0", 0o644, &pads[0])];
    items.extend(
        names
            .iter()
            .zip(&small)
            .map(|(n, d)| Item::File(n, 0o644, d)),
    );
    items.push(Item::File("pad1", 0o644, &pads[1]));
    let (img, chunks_of) = one_layer(tmp.path(), &items);
    let r = img.readers[0].clone();
    let fetcher = Fetcher::new(
        img.layers.clone(),
        ChunkCache::open(&tmp.path().join("cache"), 1 << 30, 1 << 28).unwrap(),
        Arc::new(Stats::default()),
        2,
    );
    // The first read of the layer (not local to anything): one request, which takes
    // in the small files within the read-around before and after it (s3 is 10.5 KB
    // after s0's start and 7 KB before s5's end), not the big ones beyond.
    assert_eq!(on_demand(&fetcher, &chunks_of("s3")), small[3]);
    assert_eq!(r.reads.load(std::sync::atomic::Ordering::SeqCst), 1);
    for n in &names {
        assert!(fetcher.cached(&chunks_of(n)).is_some(), "{n} not fetched");
    }
    for n in ["pad0", "pad1"] {
        assert!(fetcher.cached(&chunks_of(n)).is_none(), "{n} fetched");
    }
    let fetched = r.bytes.load(std::sync::atomic::Ordering::SeqCst);
    assert!(fetched <= 3000 + 2 * READ_AROUND, "fetched {fetched}");
    fetcher.shutdown();
}

#[test]
fn first_read_of_a_big_file_queues_the_rest_of_it() {
    let tmp = tempfile::tempdir().unwrap();
    let big = content(7, 10 << 20);
    let other = content(8, 6 << 20);
    let img = image(
        &tmp.path().join("img"),
        &[build_layer(&[
            Item::File("big", 0o755, &big),
            Item::File("other", 0o755, &other),
        ])],
    );
    assert!(
        img.layers[0].index.chunks.len() >= 4,
        "several chunks per file"
    );
    let r = img.readers[0].clone();
    let mnt = tmp.path().join("mnt");
    let m = Mounted::new(options(&img, &tmp.path().join("cache"), None), &mnt);
    // Read 4 KiB from the middle of "big", as a page fault would.
    let f = std::fs::File::open(mnt.join("big")).unwrap();
    let mut buf = vec![0u8; 4096];
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut buf, 5 << 20).unwrap();
    assert_eq!(buf, big[5 << 20..(5 << 20) + 4096]);
    // The rest of "big" arrives without being read; "other" is left alone.
    let bytes = || r.bytes.load(std::sync::atomic::Ordering::SeqCst);
    for _ in 0..500 {
        if bytes() >= big.len() as u64 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // Nothing else is queued or running, so the count is final.
    m.wait_fetches_idle();
    let fetched = bytes();
    assert!(
        fetched >= big.len() as u64,
        "fetched {fetched} of {}",
        big.len()
    );
    assert!(
        fetched < (big.len() + other.len() / 2) as u64,
        "fetched {fetched}"
    );
    // Reading all of it now makes no request.
    let reads = r.reads.load(std::sync::atomic::Ordering::SeqCst);
    assert!(std::fs::read(mnt.join("big")).unwrap() == big);
    assert_eq!(r.reads.load(std::sync::atomic::Ordering::SeqCst), reads);
    drop(f);
    m.unmount();
}

/// A layer of `n` files of 300 KiB of pseudo-random bytes (each its own chunk, far
/// beyond any read-around of the others), behind a closed gate; and a fetcher of
/// `workers` workers over it.
fn gated_files(
    tmp: &std::path::Path,
    n: u32,
    workers: usize,
) -> (Arc<GatedBlob>, Vec<Vec<skiff_proto::index::Chunk>>, Fetcher) {
    let data: Vec<Vec<u8>> = (0..n).map(|i| content(60 + i, 300 << 10)).collect();
    let names: Vec<String> = (0..n).map(|i| format!("f{i}")).collect();
    let items: Vec<Item> = names
        .iter()
        .zip(&data)
        .map(|(n, d)| Item::File(n, 0o644, d))
        .collect();
    let img = image(&tmp.join("img"), &[build_layer(&items)]);
    let gated = GatedBlob::new(img.readers[0].clone());
    let index = img.layers[0].index.clone();
    let chunks: Vec<_> = names
        .iter()
        .map(|name| {
            let e = index.entries.iter().find(|e| &e.path == name).unwrap();
            index.chunks_of(e).to_vec()
        })
        .collect();
    let fetcher = Fetcher::with_tuning(
        vec![Layer {
            index,
            blob: gated.clone(),
        }],
        ChunkCache::open(&tmp.join("cache"), 1 << 30, 1 << 28).unwrap(),
        Arc::new(Stats::default()),
        workers,
        FetchTuning {
            merge_gap: 0,
            ..FetchTuning::default()
        },
    );
    (gated, chunks, fetcher)
}

/// Waits (polling, at most 10 s) until `n` reads were asked of `gated`. (Not
/// `GatedBlob::wait_seen`: with several reads held at the gate, its condition
/// variable would be waited on with two mutexes.)
fn wait_asked(gated: &GatedBlob, n: usize) {
    let since = std::time::Instant::now();
    while gated.seen.lock().len() < n {
        assert!(
            since.elapsed() < Duration::from_secs(10),
            "{} of {n} reads asked for",
            gated.seen.lock().len()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn one_job_fetches_its_far_apart_chunks_side_by_side() {
    let tmp = tempfile::tempdir().unwrap();
    let (gated, chunks, fetcher) = gated_files(tmp.path(), 3, 1);
    let _release = ReleaseOnDrop(gated.clone());
    // One job (one worker) for the first and last file: two requests, both asked
    // for before either is answered (one after another, the second would wait for
    // the gate).
    let job: Vec<_> = chunks[0].iter().chain(&chunks[2]).copied().collect();
    let (tx, rx) = std::sync::mpsc::channel();
    fetcher.submit(0, job, Box::new(move |r| tx.send(r.is_ok()).unwrap()));
    wait_asked(&gated, 2);
    gated.release();
    assert!(rx.recv().unwrap());
    assert!(
        fetcher.cached(&chunks[1]).is_none(),
        "the file between them"
    );
    fetcher.shutdown();
}

#[test]
fn later_jobs_run_two_at_a_time_after_queued_prefetch() {
    let tmp = tempfile::tempdir().unwrap();
    let (gated, chunks, fetcher) = gated_files(tmp.path(), 5, 8);
    let _release = ReleaseOnDrop(gated.clone());
    for c in &chunks[..4] {
        fetcher.submit_with(Priority::Later, 0, c.clone(), Box::new(|_| {}));
    }
    wait_asked(&gated, 2);
    // Free workers exist, yet no third one starts (watched over a window: an
    // absence has no event to wait for).
    let window = std::time::Instant::now();
    while window.elapsed() < Duration::from_millis(200) {
        assert_eq!(gated.seen.lock().len(), 2);
        std::thread::sleep(Duration::from_millis(5));
    }
    // A prefetch job is not held back by them.
    fetcher.submit_with(Priority::Prefetch, 0, chunks[4].clone(), Box::new(|_| {}));
    wait_asked(&gated, 3);
    assert_eq!(gated.seen.lock()[2], chunks[4][0].blob_offset);
    gated.release();
    assert!(fetcher.wait_idle(Duration::from_secs(30)));
    for c in &chunks {
        assert!(fetcher.cached(c).is_some());
    }
    fetcher.shutdown();
}

/// A blob that hands over a range's bytes up to `split` (a blob offset), then holds
/// the rest back until released.
struct SplitBlob {
    inner: Arc<CountingBlob>,
    split: u64,
    open: parking_lot::Mutex<bool>,
    changed: parking_lot::Condvar,
}

impl SplitBlob {
    fn open(&self) {
        *self.open.lock() = true;
        self.changed.notify_all();
    }
}

/// Opens a [`SplitBlob`] when dropped.
struct Open(Arc<SplitBlob>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open();
    }
}

impl skiff_proto::blob::BlobReader for SplitBlob {
    fn digest(&self) -> skiff_proto::digest::Digest {
        self.inner.digest()
    }
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_at(&self, offset: u64, len: u64) -> Result<Vec<u8>, skiff_proto::blob::BlobError> {
        let mut all = Vec::new();
        self.read_at_with(offset, len, &mut |p| all.extend_from_slice(p))?;
        Ok(all)
    }
    fn read_at_with(
        &self,
        offset: u64,
        len: u64,
        sink: &mut dyn FnMut(&[u8]),
    ) -> Result<(), skiff_proto::blob::BlobError> {
        let bytes = self.inner.read_at(offset, len)?;
        let cut = (self.split.saturating_sub(offset) as usize).min(bytes.len());
        sink(&bytes[..cut]);
        let mut open = self.open.lock();
        while !*open {
            self.changed.wait(&mut open);
        }
        drop(open);
        sink(&bytes[cut..]);
        Ok(())
    }
}

#[test]
fn a_chunk_is_answered_as_soon_as_its_bytes_are_in_not_at_the_end_of_the_range() {
    let tmp = tempfile::tempdir().unwrap();
    let data: Vec<Vec<u8>> = (0..2).map(|i| content(80 + i, 300 << 10)).collect();
    let items = [
        Item::File("f0", 0o644, &data[0]),
        Item::File("f1", 0o644, &data[1]),
    ];
    let (img, chunks_of) = one_layer(tmp.path(), &items);
    let (f0, f1) = (chunks_of("f0"), chunks_of("f1"));
    let split = Arc::new(SplitBlob {
        inner: img.readers[0].clone(),
        split: f1[0].blob_offset,
        open: parking_lot::Mutex::new(false),
        changed: parking_lot::Condvar::new(),
    });
    let fetcher = Fetcher::new(
        vec![Layer {
            index: img.layers[0].index.clone(),
            blob: split.clone(),
        }],
        ChunkCache::open(&tmp.path().join("cache"), 1 << 30, 1 << 28).unwrap(),
        Arc::new(Stats::default()),
        1,
    );
    // After the fetcher, so dropped first: a failing assertion opens the gate
    // before the fetcher's drop waits for its worker.
    let _open = Open(split.clone());
    let release = || split.open();
    // One job, one Range request for both files (they lie side by side).
    let (tx, rx) = std::sync::mpsc::channel();
    let job: Vec<_> = f0.iter().chain(&f1).copied().collect();
    fetcher.submit(
        0,
        job,
        Box::new(move |r| tx.send(r.map(|d| d.len())).unwrap()),
    );
    // f0's bytes are in, f1's held back: f0 is verified and cached already.
    let since = std::time::Instant::now();
    while fetcher.cached(&f0).is_none() {
        assert!(
            since.elapsed() < Duration::from_secs(10),
            "f0 was not answered while the rest of the range was held back"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let got: Vec<u8> = fetcher
        .cached(&f0)
        .unwrap()
        .iter()
        .flat_map(|c| c.iter().copied())
        .collect();
    assert_eq!(got, data[0]);
    assert!(fetcher.cached(&f1).is_none(), "f1's bytes are not in yet");
    assert!(rx.try_recv().is_err(), "the job waits for f1");
    release();
    assert_eq!(rx.recv().unwrap().unwrap(), f0.len() + f1.len());
    let got: Vec<u8> = fetcher
        .cached(&f1)
        .unwrap()
        .iter()
        .flat_map(|c| c.iter().copied())
        .collect();
    assert_eq!(got, data[1]);
    assert_eq!(
        img.readers[0]
            .reads
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    fetcher.shutdown();
}

#[test]
fn the_c_library_and_its_loader_are_fetched_when_asked_for_by_name_or_path() {
    let tmp = tempfile::tempdir().unwrap();
    let (libc, loader, other) = (content(90, 200_000), content(91, 50_000), content(92, 9000));
    let items = with_lib_dir([
        Item::File("usr/lib/x86_64-linux-gnu/libc.so.6", 0o755, &libc),
        Item::File(
            "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
            0o755,
            &loader,
        ),
        Item::File("usr/lib/x86_64-linux-gnu/libother.so.1", 0o644, &other),
        Item::Dir("usr/lib64", 0o755),
        Item::Symlink(
            "usr/lib64/ld-linux-x86-64.so.2",
            "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
        ),
        Item::Symlink("lib64", "usr/lib64"),
        Item::Symlink("lib", "usr/lib"),
    ]);
    let (img, chunks_of) = one_layer(tmp.path(), &items);
    let lower = skiff_fs::SharedLower::build(
        img.layers.clone(),
        ChunkCache::open(&tmp.path().join("cache"), 1 << 30, 1 << 28).unwrap(),
        2,
        FetchTuning {
            read_around: 0,
            ..FetchTuning::default()
        },
    )
    .unwrap();
    lower.warm_libraries(&[
        "/lib64/ld-linux-x86-64.so.2",
        "libc.so.6",
        "/lib/ld-musl-x86_64.so.1",
    ]);
    let cached = |name: &str| cached_whole(&lower, &chunks_of(name));
    let since = std::time::Instant::now();
    let libc_path = "usr/lib/x86_64-linux-gnu/libc.so.6";
    let loader_path = "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2";
    while cached(libc_path).is_none() || cached(loader_path).is_none() {
        assert!(since.elapsed() < Duration::from_secs(10), "not fetched");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(cached(libc_path).unwrap(), libc);
    assert_eq!(cached(loader_path).unwrap(), loader);
    assert!(
        cached("usr/lib/x86_64-linux-gnu/libother.so.1").is_none(),
        "only what was named"
    );
    lower.shutdown();
}

/// Writes into `f` a 64-bit little-endian ELF header, program headers for `segments`
/// (type, flags, file offset = address, size), the string table `names` at `strtab`,
/// and at `dynamic` a dynamic section naming the string at offset 1 of `names` as
/// needed (`DT_NEEDED`, `DT_STRTAB`, `DT_STRSZ`, `DT_NULL`).
fn write_elf(
    f: &mut [u8],
    segments: &[(u32, u32, u64, u64)],
    strtab: u64,
    names: &str,
    dynamic: u64,
) {
    let mut put =
        |at: u64, bytes: &[u8]| f[at as usize..at as usize + bytes.len()].copy_from_slice(bytes);
    put(0, &[0; 64]);
    put(0, b"\x7fELF\x02\x01\x01");
    put(16, &3u16.to_le_bytes()); // ET_DYN
    put(18, &62u16.to_le_bytes()); // x86-64
    put(20, &1u32.to_le_bytes());
    put(32, &64u64.to_le_bytes()); // program headers right after
    put(52, &64u16.to_le_bytes());
    put(54, &56u16.to_le_bytes());
    put(56, &(segments.len() as u16).to_le_bytes());
    for (i, &(kind, flags, offset, size)) in segments.iter().enumerate() {
        let at = 64 + 56 * i as u64;
        put(at, &[0; 56]);
        put(at, &kind.to_le_bytes());
        put(at + 4, &flags.to_le_bytes());
        for (field, v) in [
            (8, offset),
            (16, offset),
            (24, offset),
            (32, size),
            (40, size),
        ] {
            put(at + field, &v.to_le_bytes());
        }
    }
    put(strtab, names.as_bytes());
    let entries = [(1u64, 1u64), (5, strtab), (10, names.len() as u64), (0, 0)];
    for (i, (tag, val)) in entries.into_iter().enumerate() {
        put(dynamic + 16 * i as u64, &tag.to_le_bytes());
        put(dynamic + 16 * i as u64 + 8, &val.to_le_bytes());
    }
}

/// A 64-bit ELF shared object of `12 MiB + 4 KiB` laid out as a big C++ library is:
/// a first loadable segment of 9 MiB (its string table, naming `needed`, 6 MiB in),
/// and the writable segment with the dynamic section 12 MiB in. With 4 MiB chunks the
/// headers, the names, the rest of the first segment and the dynamic section are
/// chunks 0, 1, 2 and 3.
fn big_library(needed: &str) -> Vec<u8> {
    const MIB: u64 = 1 << 20;
    let (strtab, dynamic) = (6 * MIB, 12 * MIB);
    let mut f = vec![0u8; (dynamic + 4096) as usize];
    let segments = [
        (1, 4, 0, 9 * MIB),    // PT_LOAD, R
        (1, 6, dynamic, 4096), // PT_LOAD, RW
        (2, 6, dynamic, 64),   // PT_DYNAMIC
    ];
    write_elf(&mut f, &segments, strtab, &format!("\0{needed}\0"), dynamic);
    f
}

/// A merged lower over `img`'s one layer read through `blob`, with 4 fetch workers
/// and no request growth (each fetch is just what was asked for).
fn predicting_lower(
    dir: &std::path::Path,
    img: &Image,
    blob: Arc<dyn skiff_proto::blob::BlobReader>,
) -> skiff_fs::SharedLower {
    skiff_fs::SharedLower::build(
        vec![Layer {
            index: img.layers[0].index.clone(),
            blob,
        }],
        ChunkCache::open(&dir.join("cache"), 1 << 30, 1 << 28).unwrap(),
        4,
        FetchTuning {
            read_around: 0,
            merge_gap: 0,
            ..FetchTuning::default()
        },
    )
    .unwrap()
}

/// The content of `chunks` once all are in `lower`'s cache (polled for up to 10 s;
/// past that, fails with `why`).
fn wait_cached(
    lower: &skiff_fs::SharedLower,
    chunks: &[skiff_proto::index::Chunk],
    why: &str,
) -> Vec<u8> {
    let since = std::time::Instant::now();
    loop {
        if let Some(bytes) = cached_whole(lower, chunks) {
            return bytes;
        }
        assert!(since.elapsed() < Duration::from_secs(10), "{why}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The content of `chunks` if all are in `lower`'s cache now.
fn cached_whole(
    lower: &skiff_fs::SharedLower,
    chunks: &[skiff_proto::index::Chunk],
) -> Option<Vec<u8>> {
    let parts: Vec<_> = chunks
        .iter()
        .map(|c| lower.cache().get(&c.digest).map(|(d, _)| d))
        .collect::<Option<_>>()?;
    Some(parts.iter().flat_map(|p| p.iter().copied()).collect())
}

/// A blob whose reads touching `held` (blob offsets) wait until released.
struct HeldRange {
    inner: Arc<CountingBlob>,
    held: std::ops::Range<u64>,
    open: parking_lot::Mutex<bool>,
    changed: parking_lot::Condvar,
}

impl HeldRange {
    fn release(&self) {
        *self.open.lock() = true;
        self.changed.notify_all();
    }
}

/// Releases a [`HeldRange`] when dropped.
struct Release(Arc<HeldRange>);

impl Drop for Release {
    fn drop(&mut self) {
        self.0.release();
    }
}

impl skiff_proto::blob::BlobReader for HeldRange {
    fn digest(&self) -> skiff_proto::digest::Digest {
        self.inner.digest()
    }
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_at(&self, offset: u64, len: u64) -> Result<Vec<u8>, skiff_proto::blob::BlobError> {
        if offset < self.held.end && self.held.start < offset + len {
            let mut open = self.open.lock();
            while !*open {
                self.changed.wait(&mut open);
            }
        }
        self.inner.read_at(offset, len)
    }
}

#[test]
fn a_big_librarys_needs_are_known_before_the_loaders_other_ranges_are_in() {
    let tmp = tempfile::tempdir().unwrap();
    let big = big_library("libneeded.so.1");
    let needed = content(95, 5000);
    let items = with_lib_dir([
        Item::File("usr/lib/x86_64-linux-gnu/libbig.so", 0o755, &big),
        Item::File("usr/lib/x86_64-linux-gnu/libneeded.so.1", 0o644, &needed),
    ]);
    let (img, chunks_of) = one_layer(tmp.path(), &items);
    let big_chunks = chunks_of("usr/lib/x86_64-linux-gnu/libbig.so");
    assert_eq!(big_chunks.len(), 4, "4 MiB chunks");
    // The rest of the first segment (chunk 2) is held back: the loader reads it,
    // but the names are known without it.
    let rest = big_chunks[2];
    let held = Arc::new(HeldRange {
        inner: img.readers[0].clone(),
        held: rest.blob_offset..rest.blob_offset + rest.blob_len,
        open: parking_lot::Mutex::new(false),
        changed: parking_lot::Condvar::new(),
    });
    let lower = predicting_lower(tmp.path(), &img, held.clone());
    // Declared after `lower`, so dropped (the range released) before it: a failing
    // assertion must not leave `lower`'s workers waiting at the hold while its drop
    // waits for them.
    let _release = Release(held.clone());
    lower.warm_libraries(&["libbig.so"]);
    let cached = |c: &skiff_proto::index::Chunk| lower.cache().get(&c.digest).map(|(d, _)| d);
    let needed_chunks = chunks_of("usr/lib/x86_64-linux-gnu/libneeded.so.1");
    let got = wait_cached(
        &lower,
        &needed_chunks,
        "libneeded.so.1 was not fetched while the loader's other range was held",
    );
    assert_eq!(got, needed);
    // The head, the dynamic section and the names came; the held chunk did not.
    for k in [0, 1, 3] {
        assert!(cached(&big_chunks[k]).is_some(), "chunk {k} of libbig.so");
    }
    assert!(cached(&rest).is_none(), "the held chunk");
    held.release();
    lower.shutdown();
}

/// A 64-bit ELF program of `len` bytes (random beyond its tables): a first, read-only
/// loadable segment of 64 KiB whose string table (8 KiB in) names `needed`, and a
/// dynamic section near the end.
fn program_naming(needed: &str, len: usize) -> Vec<u8> {
    let (strtab, dynamic) = (8192u64, len as u64 - 4096);
    let mut f = content(97, len);
    let segments = [
        (1, 4, 0, 64 << 10),   // PT_LOAD, R: headers and tables
        (1, 6, dynamic, 4096), // PT_LOAD, RW
        (2, 6, dynamic, 64),   // PT_DYNAMIC
    ];
    let names = format!("\0{needed}\0printf\0GLIBC_2.2.5\0");
    write_elf(&mut f, &segments, strtab, &names, dynamic);
    f
}

#[test]
fn a_files_libraries_are_guessed_from_its_first_chunk_before_that_chunk_is_in() {
    let tmp = tempfile::tempdir().unwrap();
    let program = program_naming("libneeded.so.1", 3 << 20);
    let needed = content(96, 5000);
    // libneeded.so.1 lies before the program in the blob: its range is not held.
    let items = with_lib_dir([
        Item::File("usr/lib/x86_64-linux-gnu/libneeded.so.1", 0o644, &needed),
        Item::File("usr/lib/x86_64-linux-gnu/libprog.so", 0o755, &program),
    ]);
    let (img, chunks_of) = one_layer(tmp.path(), &items);
    let prog = chunks_of("usr/lib/x86_64-linux-gnu/libprog.so");
    assert_eq!(prog.len(), 1, "one chunk");
    let needed_chunks = chunks_of("usr/lib/x86_64-linux-gnu/libneeded.so.1");
    assert!(needed_chunks
        .iter()
        .all(|c| c.blob_offset < prog[0].blob_offset));
    // The program's chunk arrives half: its tables are in, its digest cannot be
    // checked.
    let split = Arc::new(SplitBlob {
        inner: img.readers[0].clone(),
        split: prog[0].blob_offset + prog[0].blob_len / 2,
        open: parking_lot::Mutex::new(false),
        changed: parking_lot::Condvar::new(),
    });
    let lower = predicting_lower(tmp.path(), &img, split.clone());
    // After `lower`: dropped first, so a failing assertion opens the blob before
    // `lower`'s drop waits for its workers.
    let _open = Open(split.clone());
    lower.warm_libraries(&["libprog.so"]);
    let got = wait_cached(
        &lower,
        &needed_chunks,
        "libneeded.so.1 was not fetched while the program's chunk was half in",
    );
    assert_eq!(got, needed);
    let cached = |c: &skiff_proto::index::Chunk| lower.cache().get(&c.digest).map(|(d, _)| d);
    assert!(cached(&prog[0]).is_none(), "half a chunk is never served");
    split.open();
    assert_eq!(wait_cached(&lower, &prog, "program not fetched"), program);
    lower.shutdown();
}

#[test]
fn the_files_a_started_program_is_handed_are_fetched_before_it_opens_them() {
    // A program of the image (a copy of the host's bash, run from the mount) is
    // started with an image path among its arguments, as gcc starts `collect2` with
    // the start files and libraries `ld` will open: that file is fetched while the
    // program runs, before anyone reads it; a file no argument names is not.
    let tmp = tempfile::tempdir().unwrap();
    let bash = std::fs::read("/bin/bash").expect("the host's /bin/bash");
    let (named, other) = (content(70, 300_000), content(71, 300_000));
    let (img, m) = program_and_two_data_files(
        tmp.path(),
        ("bin", "bin/bash", &bash),
        [("data/named.bin", &named), ("data/other.bin", &other)],
    );
    let mnt = m.dir.clone();
    let mut child = std::process::Command::new(mnt.join("bin/bash"))
        .args(["-c", "sleep 10; :", "/data/named.bin"])
        .spawn()
        .unwrap();
    let named_blob = &img.readers[1];
    let since = std::time::Instant::now();
    let mut fetched = 0;
    while since.elapsed() < Duration::from_secs(8) {
        fetched = named_blob.bytes.load(std::sync::atomic::Ordering::SeqCst);
        if fetched >= named.len() as u64 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let still_running = child.try_wait().unwrap().is_none();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(still_running, "the program ended before the check");
    assert!(
        fetched >= named.len() as u64,
        "the named file was not fetched ({fetched} bytes)"
    );
    fetched_ahead_alone(&img, &m, "data/named.bin", &named);
    m.unmount();
}

/// An image of three layers, mounted under `dir/mnt`: a program (`program`: its
/// directory, path and bytes; mode 0755), then one file of `data/` in each of the next
/// two layers, so that each file's blob reads are counted apart (`img.readers[1]`
/// and `[2]`).
fn program_and_two_data_files(
    dir: &std::path::Path,
    program: (&str, &str, &[u8]),
    files: [(&str, &[u8]); 2],
) -> (Image, Mounted) {
    let (program_dir, program_path, program_bytes) = program;
    let data = |(name, bytes): (&str, &[u8])| {
        build_layer(&[Item::Dir("data", 0o755), Item::File(name, 0o644, bytes)])
    };
    let img = image(
        &dir.join("img"),
        &[
            build_layer(&[
                Item::Dir(program_dir, 0o755),
                Item::File(program_path, 0o755, program_bytes),
            ]),
            data(files[0]),
            data(files[1]),
        ],
    );
    let m = Mounted::new(options(&img, &dir.join("cache"), None), &dir.join("mnt"));
    (img, m)
}

/// Of [`program_and_two_data_files`]' files, the first (`path`, holding `want`) was
/// fetched ahead: once the fetches are done, the second's layer gave no byte, and
/// reading the first through the mount gives `want` with no further request.
fn fetched_ahead_alone(img: &Image, m: &Mounted, path: &str, want: &[u8]) {
    use std::sync::atomic::Ordering::SeqCst;
    m.wait_fetches_idle();
    assert_eq!(
        img.readers[2].bytes.load(SeqCst),
        0,
        "the other file was fetched"
    );
    let reads = img.readers[1].reads.load(SeqCst);
    assert_eq!(std::fs::read(m.dir.join(path)).unwrap(), want);
    assert_eq!(
        img.readers[1].reads.load(SeqCst),
        reads,
        "read {path} again"
    );
}

#[test]
fn a_linker_scripts_inputs_are_fetched_with_it() {
    // glibc's libc.so is a linker script: once it is fetched for a link (named by
    // `-lc`), the files it names are fetched too (a path as given, a bare name in
    // the script's directory, `-lNAME` there as libNAME.so or libNAME.a); a file
    // it does not name is not.
    let tmp = tempfile::tempdir().unwrap();
    let script = b"/* GNU ld script */\nOUTPUT_FORMAT(elf64-x86-64)\nGROUP ( /usr/lib/x86_64-linux-gnu/libc_nonshared.a libc.so.6 AS_NEEDED ( -lhelper ) )\n";
    let (nonshared, libc, helper, other) = (
        content(80, 20_000),
        content(81, 90_000),
        content(82, 30_000),
        content(83, 40_000),
    );
    let items = with_lib_dir([
        Item::File("usr/lib/x86_64-linux-gnu/libc.so", 0o644, script),
        Item::File("usr/lib/x86_64-linux-gnu/libother.a", 0o644, &other),
        Item::File(
            "usr/lib/x86_64-linux-gnu/libc_nonshared.a",
            0o644,
            &nonshared,
        ),
        Item::File("usr/lib/x86_64-linux-gnu/libhelper.a", 0o644, &helper),
        Item::File("usr/lib/x86_64-linux-gnu/libc.so.6", 0o755, &libc),
    ]);
    let (img, chunks_of) = one_layer(tmp.path(), &items);
    let lower = predicting_lower(tmp.path(), &img, img.readers[0].clone());
    lower.warm_libraries(&["/usr/lib/x86_64-linux-gnu/libc.so"]);
    let cached = |name: &str| cached_whole(&lower, &chunks_of(&format!("{LIB_DIR}/{name}")));
    let since = std::time::Instant::now();
    while ["libc_nonshared.a", "libc.so.6", "libhelper.a"]
        .iter()
        .any(|f| cached(f).is_none())
    {
        assert!(
            since.elapsed() < Duration::from_secs(10),
            "inputs not fetched"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(cached("libc_nonshared.a").unwrap(), nonshared);
    assert_eq!(cached("libc.so.6").unwrap(), libc);
    assert_eq!(cached("libhelper.a").unwrap(), helper);
    std::thread::sleep(Duration::from_millis(100));
    assert!(cached("libother.a").is_none(), "only what the script names");
    lower.shutdown();
}

#[test]
fn a_data_file_a_programs_data_names_is_fetched_when_that_data_is_read() {
    // libnode's read-only data names the JavaScript files node loads as it starts.
    // A library whose third chunk holds the path of a small file of the image: once
    // a program reads that chunk (a page fault, through the mount), the file is
    // fetched before anyone opens it; a file no chunk names is not.
    let tmp = tempfile::tempdir().unwrap();
    let mut library = big_library("libnothing.so.1");
    let at = (9 << 20) + 512;
    let named = b"\0/data/conf.json\0";
    library[at..at + named.len()].copy_from_slice(named);
    let (conf, other) = (content(60, 5000), content(61, 5000));
    let (img, m) = program_and_two_data_files(
        tmp.path(),
        ("lib", "lib/libbig.so", &library),
        [("data/conf.json", &conf), ("data/other.json", &other)],
    );
    let mnt = m.dir.clone();
    let f = std::fs::File::open(mnt.join("lib/libbig.so")).unwrap();
    use std::os::unix::fs::FileExt;
    let mut head = [0u8; 64];
    f.read_exact_at(&mut head, 0).unwrap();
    assert_eq!(&head[..4], b"\x7fELF");
    let conf_blob = &img.readers[1];
    m.wait_fetches_idle();
    assert_eq!(
        conf_blob.bytes.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "fetched before the chunk naming it was read"
    );
    let mut page = vec![0u8; 4096];
    f.read_exact_at(&mut page, (9 << 20) as u64).unwrap();
    assert_eq!(&page[512..512 + named.len()], named);
    // (queued once the read is answered: waited for, bounded)
    let since = std::time::Instant::now();
    while conf_blob.bytes.load(std::sync::atomic::Ordering::SeqCst) < conf.len() as u64 {
        assert!(
            since.elapsed() < Duration::from_secs(10),
            "the file the data names was not fetched"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    fetched_ahead_alone(&img, &m, "data/conf.json", &conf);
    drop(f);
    m.unmount();
}

#[test]
fn reading_thousands_of_small_files_leaves_library_prediction_working() {
    // Every small file read is looked at as a possible linker script; that must not
    // use up the bound on predicted files, or a program started after a container
    // read thousands of small files would get no library fetched ahead.
    let tmp = tempfile::tempdir().unwrap();
    let names: Vec<String> = (0..4200).map(|i| format!("etc/small/f{i:04}")).collect();
    let program = program_naming("libneeded.so.1", 200_000);
    let needed = content(98, 6000);
    let spacer = content(99, 1 << 20);
    let mut items = with_lib_dir([
        Item::File("usr/lib/x86_64-linux-gnu/libneeded.so.1", 0o644, &needed),
        Item::File("usr/lib/spacer", 0o644, &spacer),
        Item::Dir("etc", 0o755),
        Item::Dir("etc/small", 0o755),
        Item::Dir("bin", 0o755),
    ]);
    // (a megabyte nobody reads between the library and the small files, and those
    // between it and the program: no read takes the library along as a neighbour)
    items.extend(names.iter().map(|n| Item::File(n, 0o644, b"key = value\n")));
    items.push(Item::File("bin/program", 0o755, &program));
    let lib_layer = build_layer(&items);
    let img = image(&tmp.path().join("img"), &[lib_layer]);
    let mnt = tmp.path().join("mnt");
    let m = Mounted::new(options(&img, &tmp.path().join("cache"), None), &mnt);
    for n in &names {
        assert_eq!(std::fs::read(mnt.join(n)).unwrap(), b"key = value\n");
    }
    m.wait_fetches_idle();
    let before = img.readers[0]
        .bytes
        .load(std::sync::atomic::Ordering::SeqCst);
    // The program's head read (as exec reads it): its library is fetched ahead.
    use std::os::unix::fs::FileExt;
    let mut head = [0u8; 64];
    std::fs::File::open(mnt.join("bin/program"))
        .unwrap()
        .read_exact_at(&mut head, 0)
        .unwrap();
    m.wait_fetches_idle();
    let reads = img.readers[0]
        .reads
        .load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        img.readers[0]
            .bytes
            .load(std::sync::atomic::Ordering::SeqCst)
            > before
    );
    assert_eq!(
        std::fs::read(mnt.join("usr/lib/x86_64-linux-gnu/libneeded.so.1")).unwrap(),
        needed
    );
    assert_eq!(
        img.readers[0]
            .reads
            .load(std::sync::atomic::Ordering::SeqCst),
        reads,
        "the library was not fetched ahead"
    );
    m.unmount();
}
