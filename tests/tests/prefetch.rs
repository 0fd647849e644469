//! Fetcher speed features against a real registry (through a recording proxy): prefetch
//! profiles (recorded by `skiff run`, pushed and pulled as an OCI artifact, prefetched
//! exactly), background fetch, and request merging. Byte and request counts only; no
//! timings.

use skiff_fs::{FetchTuning, Layer as FsLayer, MountOptions, Profile};
use skiff_proto::index::store::IndexStore;
use skiff_proto::index::LayerIndex;
use skiff_proto::reference::Reference;
use skiff_proto::resolve::{resolve_layers, ResolveOptions};
use skiff_tests::cli::{describe, Skiff};
use skiff_tests::fixtures::{self, build_image, push_built, BuiltImage, Entry, Layer};
use skiff_tests::proxy::{FaultProxy, Recorded};
use skiff_tests::registry::Registry;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Pushes `layers` as `repo:latest` and publishes its layer indexes (so lazy mounts
/// never stream whole layers).
fn push_indexed(
    rt: &tokio::runtime::Runtime,
    reg: &Registry,
    repo: &str,
    layers: Vec<Layer>,
) -> BuiltImage {
    let image = build_image(layers, &skiff_proto::image::Platform::host(), &["/bin/sh"]);
    rt.block_on(push_built(
        &skiff_tests::client(&reg.host()),
        repo,
        "latest",
        &image,
    ));
    let publisher = tempfile::tempdir().unwrap();
    let out = Skiff::new(publisher.path()).run(&[
        "index",
        "--push",
        "-q",
        &reg.reference(&format!("{repo}:latest")),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    image
}

/// The image's layers, resolved through `host` (indexes from the published artifact).
fn lazy_layers(rt: &tokio::runtime::Runtime, host: &str, repo: &str, store: &Path) -> Vec<FsLayer> {
    let client = Arc::new(skiff_tests::client(host));
    let reference = Reference::parse(&format!("{host}/{repo}:latest")).unwrap();
    let image = rt.block_on(client.resolve(&reference, None)).unwrap();
    let store = IndexStore::open(store).unwrap();
    resolve_layers(
        &client,
        rt.handle(),
        &image,
        &store,
        &ResolveOptions {
            save: false,
            ..ResolveOptions::default()
        },
    )
    .unwrap()
    .into_iter()
    .map(|l| FsLayer {
        index: l.index,
        blob: l.blob,
    })
    .collect()
}

/// `(layer digest, start, end exclusive)` of every ranged layer-blob GET.
fn range_reads(reqs: &[Recorded], layers: &[FsLayer]) -> Vec<(usize, u64, u64)> {
    let mut out = Vec::new();
    for r in reqs.iter().filter(|r| r.method == "GET") {
        let Some(li) = layers
            .iter()
            .position(|l| r.path.ends_with(&l.index.blob.to_string()))
        else {
            continue;
        };
        let range = r
            .range
            .as_deref()
            .unwrap_or_else(|| panic!("whole-layer read {r:?}"));
        let (a, b) = range.trim_start_matches("bytes=").split_once('-').unwrap();
        out.push((li, a.parse().unwrap(), b.parse::<u64>().unwrap() + 1));
    }
    out
}

/// Sorted, merged union of intervals.
fn union(mut v: Vec<(usize, u64, u64)>) -> Vec<(usize, u64, u64)> {
    v.sort();
    let mut out: Vec<(usize, u64, u64)> = Vec::new();
    for (l, a, b) in v {
        match out.last_mut() {
            Some((pl, _, pb)) if *pl == l && a <= *pb => *pb = (*pb).max(b),
            _ => out.push((l, a, b)),
        }
    }
    out
}

/// The topmost layer holding regular file `path`, and its entry's index.
fn find_file(layers: &[FsLayer], path: &str) -> (usize, usize) {
    let want = path.trim_start_matches('/');
    for (li, l) in layers.iter().enumerate().rev() {
        if let Some(ei) = l
            .index
            .entries
            .iter()
            .position(|e| e.path.trim_start_matches('/') == want)
        {
            return (li, ei);
        }
    }
    panic!("{path} is in no layer");
}

/// Blob ranges of the chunks holding `profile`'s ranges, computed from the indexes.
fn expected_ranges(layers: &[FsLayer], profile: &Profile) -> Vec<(usize, u64, u64)> {
    let mut v = Vec::new();
    for f in &profile.files {
        let (li, ei) = find_file(layers, &f.path);
        let idx: &LayerIndex = &layers[li].index;
        for c in idx.chunks_of(&idx.entries[ei]) {
            let hit = f
                .ranges
                .iter()
                .any(|&[off, len]| c.file_offset < off + len && off < c.file_offset + c.len);
            if hit {
                v.push((li, c.blob_offset, c.blob_offset + c.blob_len));
            }
        }
    }
    union(v)
}

struct Mounted {
    handle: Option<skiff_fs::MountHandle>,
    dir: tempfile::TempDir,
}

impl Mounted {
    fn new(opts: MountOptions) -> Mounted {
        let dir = tempfile::tempdir().unwrap();
        let handle = skiff_fs::mount(opts, dir.path()).unwrap();
        Mounted {
            handle: Some(handle),
            dir,
        }
    }
    fn path(&self, p: &str) -> std::path::PathBuf {
        self.dir.path().join(p.trim_start_matches('/'))
    }
    fn handle(&self) -> &skiff_fs::MountHandle {
        self.handle.as_ref().unwrap()
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            let _ = h.unmount();
        }
    }
}

fn profile_files(root: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(root.join("profiles"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// `skiff run --record-profile` stores a profile of what the command read; `skiff
/// profile push` publishes it; `skiff profile pull` on another machine and a cold
/// `skiff run` without a local profile both get the same bytes back.
#[test]
fn recorded_profile_round_trips_through_the_registry() {
    let rt = runtime();
    let reg = Registry::start();
    push_indexed(&rt, &reg, "prof/rt", fixtures::busybox_layers(1 << 20));
    let image = reg.reference("prof/rt:latest");

    let a = tempfile::tempdir().unwrap();
    let skiff_a = Skiff::new(a.path());
    let out = skiff_a.run(&[
        "run",
        "--rm",
        "--record-profile",
        &image,
        "cat",
        "/etc/motd",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello from layer two\n"
    );
    assert!(out.stderr.is_empty(), "run is silent: {}", describe(&out));
    let recorded = profile_files(a.path());
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    let bytes = std::fs::read(&recorded[0]).unwrap();
    let profile = Profile::from_json(&bytes).unwrap();
    let paths: Vec<&str> = profile.files.iter().map(|f| f.path.as_str()).collect();
    assert!(paths.contains(&"/etc/motd"), "{paths:?}");
    assert!(paths.contains(&"/bin/busybox"), "{paths:?}");
    assert!(!paths.contains(&"/data/big"), "{paths:?}");
    let motd = profile
        .files
        .iter()
        .find(|f| f.path == "/etc/motd")
        .unwrap();
    assert_eq!(motd.ranges, vec![[0, 21]]);

    let out = skiff_a.run(&["profile", "push", &image]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));

    let b = tempfile::tempdir().unwrap();
    let out = Skiff::new(b.path()).run(&["profile", "pull", &image]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let pulled = profile_files(b.path());
    assert_eq!(pulled.len(), 1);
    assert_eq!(pulled[0].file_name(), recorded[0].file_name());
    assert_eq!(std::fs::read(&pulled[0]).unwrap(), bytes);

    // A first run elsewhere finds the published profile by itself.
    let c = tempfile::tempdir().unwrap();
    let out = Skiff::new(c.path()).run(&["run", "--rm", &image, "true"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let found = profile_files(c.path());
    assert_eq!(found.len(), 1);
    assert_eq!(std::fs::read(&found[0]).unwrap(), bytes);

    // An image without a profile: push refuses, pull says none.
    let out = Skiff::new(b.path()).run(&["profile", "push", &reg.reference("prof/rt:nope")]);
    assert_ne!(out.status.code(), Some(0));
}

/// A cold mount with a recorded profile fetches exactly the chunks holding the
/// recorded ranges (nothing more), and the recorded reads then cost no request.
#[test]
fn prefetch_fetches_exactly_the_recorded_ranges() {
    let rt = runtime();
    let reg = Registry::start();
    push_indexed(&rt, &reg, "prof/exact", fixtures::busybox_layers(4 << 20));
    let image = reg.reference("prof/exact:latest");
    let rec_root = tempfile::tempdir().unwrap();
    let out = Skiff::new(rec_root.path()).run(&[
        "run",
        "--rm",
        "--record-profile",
        &image,
        "sh",
        "-c",
        "cat /etc/motd /etc/passwd",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let recorded = profile_files(rec_root.path());
    let profile = Profile::from_json(&std::fs::read(&recorded[0]).unwrap()).unwrap();

    let proxy = FaultProxy::start(reg.addr());
    let store = tempfile::tempdir().unwrap();
    let layers = lazy_layers(&rt, &proxy.host(), "prof/exact", store.path());
    let expected = expected_ranges(&layers, &profile);
    assert!(!expected.is_empty());
    proxy.clear_requests();

    let cache = tempfile::tempdir().unwrap();
    let mut opts = MountOptions::new(layers.clone(), cache.path().to_path_buf());
    opts.profile = Some(Arc::new(profile.clone()));
    opts.tuning = FetchTuning {
        merge_gap: 0,
        ..FetchTuning::default()
    };
    let m = Mounted::new(opts);
    assert!(m.handle().wait_fetches_idle(Duration::from_secs(60)));
    let reads = range_reads(&proxy.requests(), &layers);
    let requested: u64 = reads.iter().map(|(_, a, b)| b - a).sum();
    let expected_bytes: u64 = expected.iter().map(|(_, a, b)| b - a).sum();
    assert_eq!(union(reads.clone()), expected, "requests {reads:?}");
    assert_eq!(requested, expected_bytes, "no byte asked twice: {reads:?}");

    // Every recorded range is now served locally.
    proxy.clear_requests();
    for f in &profile.files {
        let data = std::fs::read(m.path(&f.path)).unwrap();
        assert!(!data.is_empty());
    }
    assert_eq!(
        std::fs::read_to_string(m.path("/etc/motd")).unwrap(),
        "hello from layer two\n"
    );
    let after = range_reads(&proxy.requests(), &layers);
    assert!(after.is_empty(), "{after:?}");

    // Something outside the profile is still read lazily (the proxy sees it).
    let big = std::fs::read(m.path("/data/big")).unwrap();
    assert_eq!(big, fixtures::pseudo_random(7, 4 << 20));
    assert!(!range_reads(&proxy.requests(), &layers).is_empty());
}

/// Background fetch brings every chunk of every layer into the cache; afterwards
/// reading the whole image makes no registry request.
#[test]
fn background_fetch_completes_the_layers_then_reads_are_local() {
    let rt = runtime();
    let reg = Registry::start();
    push_indexed(&rt, &reg, "prof/bg", fixtures::busybox_layers(6 << 20));
    let proxy = FaultProxy::start(reg.addr());
    let store = tempfile::tempdir().unwrap();
    let layers = lazy_layers(&rt, &proxy.host(), "prof/bg", store.path());
    proxy.clear_requests();

    let cache = tempfile::tempdir().unwrap();
    let mut opts = MountOptions::new(layers.clone(), cache.path().to_path_buf());
    opts.background_fetch = true;
    opts.tuning.background_quiet = Duration::from_millis(10);
    let m = Mounted::new(opts);
    assert!(m.handle().wait_fetches_idle(Duration::from_secs(120)));
    let reads = union(range_reads(&proxy.requests(), &layers));
    let all_chunks = union(
        layers
            .iter()
            .enumerate()
            .flat_map(|(li, l)| {
                l.index
                    .chunks
                    .iter()
                    .map(move |c| (li, c.blob_offset, c.blob_offset + c.blob_len))
            })
            .collect(),
    );
    for (li, a, b) in &all_chunks {
        assert!(
            reads
                .iter()
                .any(|(l, ra, rb)| l == li && ra <= a && b <= rb),
            "chunk range {li}:{a}-{b} never fetched; reads {reads:?}"
        );
    }
    assert_eq!(m.handle().stats().blob_errors, 0);

    proxy.clear_requests();
    assert_eq!(
        std::fs::read(m.path("/data/big")).unwrap(),
        fixtures::pseudo_random(7, 6 << 20)
    );
    assert_eq!(
        std::fs::read(m.path("/bin/busybox")).unwrap(),
        std::fs::read("/bin/busybox").unwrap()
    );
    for p in ["/etc/passwd", "/etc/group", "/etc/motd"] {
        std::fs::read(m.path(p)).unwrap();
    }
    let after = range_reads(&proxy.requests(), &layers);
    assert!(after.is_empty(), "{after:?}");
}

/// Merging: a sequential read of a file made of several adjacent chunks costs one
/// request; nearby missing chunks of different files asked together share one request
/// when the gap is small (and a chunk in the gap is cached on the way), and do not when
/// it is large.
#[test]
fn adjacent_and_nearby_chunks_share_one_request() {
    let rt = runtime();
    let reg = Registry::start();
    let big = fixtures::pseudo_random(3, 10 << 20); // 3 chunks of the tar index (4 MiB)
    let layer = Layer::tar(&[
        Entry::dir("d", 0o755),
        Entry::file("d/a", &fixtures::pseudo_random(1, 20_000), 0o644),
        Entry::file("d/b", &fixtures::pseudo_random(2, 20_000), 0o644),
        Entry::file("d/c", &fixtures::pseudo_random(4, 20_000), 0o644),
        Entry::file("d/big", &big, 0o644),
        Entry::file("d/e", &fixtures::pseudo_random(5, 20_000), 0o644),
    ]);
    push_indexed(&rt, &reg, "prof/merge", vec![layer]);
    let proxy = FaultProxy::start(reg.addr());
    let store = tempfile::tempdir().unwrap();
    let layers = lazy_layers(&rt, &proxy.host(), "prof/merge", store.path());
    let (li, ei) = find_file(&layers, "d/big");
    assert!(
        layers[li]
            .index
            .chunks_of(&layers[li].index.entries[ei])
            .len()
            >= 3
    );

    // A whole-file read through the mount, with read-ahead covering the file.
    proxy.clear_requests();
    let cache = tempfile::tempdir().unwrap();
    let mut opts = MountOptions::new(layers.clone(), cache.path().to_path_buf());
    opts.readahead = 16 << 20;
    opts.tuning.max_request = 16 << 20;
    opts.prefetch = false;
    let m = Mounted::new(opts);
    assert_eq!(std::fs::read(m.path("d/big")).unwrap(), big);
    let reads = range_reads(&proxy.requests(), &layers);
    assert_eq!(reads.len(), 1, "{reads:?}");
    drop(m);

    // The fetcher directly: a and c are 20 KB (b) apart, e is 10 MiB (big) past c.
    let chunks_of = |p: &str| {
        let (li, ei) = find_file(&layers, p);
        layers[li]
            .index
            .chunks_of(&layers[li].index.entries[ei])
            .to_vec()
    };
    let new_fetcher = |dir: &Path| {
        skiff_fs::Fetcher::new(
            layers.clone(),
            skiff_fs::ChunkCache::open(dir, 1 << 30, 1 << 28).unwrap(),
            Arc::new(skiff_fs::Stats::default()),
            2,
        )
    };
    let cache = tempfile::tempdir().unwrap();
    let fetcher = new_fetcher(cache.path());
    proxy.clear_requests();
    let mut ask = chunks_of("d/a");
    ask.extend(chunks_of("d/c"));
    let got = fetcher.fetch_blocking(0, &ask).unwrap();
    assert_eq!(*got[0], fixtures::pseudo_random(1, 20_000));
    assert_eq!(*got[1], fixtures::pseudo_random(4, 20_000));
    assert_eq!(range_reads(&proxy.requests(), &layers).len(), 1);
    // b lay inside that request: decoded, verified and cached without being asked for.
    let b = fetcher
        .cached(&chunks_of("d/b"))
        .expect("b was cached on the way");
    assert_eq!(*b[0], fixtures::pseudo_random(2, 20_000));
    fetcher.shutdown();

    let cache = tempfile::tempdir().unwrap();
    let fetcher = new_fetcher(cache.path());
    proxy.clear_requests();
    let mut ask = chunks_of("d/b");
    ask.extend(chunks_of("d/e"));
    fetcher.fetch_blocking(0, &ask).unwrap();
    let reads = range_reads(&proxy.requests(), &layers);
    assert_eq!(reads.len(), 2, "{reads:?}");
    let fetched: u64 = reads.iter().map(|(_, a, b)| b - a).sum();
    assert_eq!(fetched, 40_000, "the 10 MiB gap is not downloaded");
    fetcher.shutdown();
}

/// Bytes of layer blobs a proxy served (ranged reads only; whole-layer reads panic).
fn layer_bytes(proxy: &FaultProxy, built: &BuiltImage) -> (u64, usize) {
    let digests: Vec<String> = built
        .layers
        .iter()
        .map(|l| skiff_proto::Digest::of(&l.blob).to_string())
        .collect();
    let mut bytes = 0;
    let mut n = 0;
    for r in proxy.requests().iter().filter(|r| r.method == "GET") {
        if !digests.iter().any(|d| r.path.ends_with(d.as_str())) {
            continue;
        }
        let range = r
            .range
            .as_deref()
            .unwrap_or_else(|| panic!("whole-layer read {r:?}"));
        let (a, b) = range.trim_start_matches("bytes=").split_once('-').unwrap();
        bytes += b.parse::<u64>().unwrap() + 1 - a.parse::<u64>().unwrap();
        n += 1;
    }
    (bytes, n)
}

/// The busybox image of `run_image.rs` (24 MiB never-read file): a cold `skiff run`
/// with the profile its first run recorded fetches the same chunks as without (they
/// are prefetched, then shared with the container's reads), and far less than the
/// image. Prints the numbers.
#[test]
fn cold_run_bytes_with_and_without_a_profile() {
    let rt = runtime();
    let reg = Registry::start();
    let built = push_indexed(&rt, &reg, "prof/cold", fixtures::busybox_layers(24 << 20));
    let image_size: u64 = built.layers.iter().map(|l| l.blob.len() as u64).sum();
    let proxy = FaultProxy::start(reg.addr());
    let image = format!("{}/prof/cold:latest", proxy.host());

    // First run anywhere: no profile, so it records one.
    let a = tempfile::tempdir().unwrap();
    let out = Skiff::new(a.path()).run(&[
        "run",
        "--rm",
        "--background-fetch=false",
        &image,
        "cat",
        "/etc/motd",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(out.stderr.is_empty(), "run is silent: {}", describe(&out));
    let (without, n_without) = layer_bytes(&proxy, &built);
    let recorded = profile_files(a.path());
    assert_eq!(recorded.len(), 1, "the first run recorded a profile");

    // A cold machine that has the profile.
    let b = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(b.path().join("profiles")).unwrap();
    std::fs::copy(
        &recorded[0],
        b.path()
            .join("profiles")
            .join(recorded[0].file_name().unwrap()),
    )
    .unwrap();
    proxy.clear_requests();
    let out = Skiff::new(b.path()).run(&[
        "run",
        "--rm",
        "--background-fetch=false",
        &image,
        "cat",
        "/etc/motd",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello from layer two\n"
    );
    let (with, n_with) = layer_bytes(&proxy, &built);
    eprintln!(
        "image {image_size} B; cold run without profile: {without} B in {n_without} requests; \
         with profile: {with} B in {n_with} requests"
    );
    assert!(without < image_size / 8, "{without} of {image_size}");
    assert!(with <= without + (64 << 10), "{with} vs {without}");
}
