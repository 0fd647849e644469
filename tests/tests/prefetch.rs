//! Fetcher speed features against a real registry (through a recording proxy): prefetch
//! profiles (recorded by `skiff run`, pushed and pulled as an OCI artifact, prefetched
//! exactly), background fetch, and request merging. Byte and request counts only; no
//! timings.

use skiff_fs::{FetchTuning, Layer as FsLayer, MountOptions, Profile};
use skiff_proto::index::store::IndexStore;
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

/// `(layer position, start, end exclusive)` of every ranged layer-blob GET, in the
/// order the proxy saw them.
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

/// Chunk size of Skiff's index of an uncompressed tar layer: a file's bytes are cut
/// into pieces of this many bytes from its start (`proto`'s `DEFAULT_CHUNK_SIZE`,
/// stated here so that a change to it is seen).
const TAR_CHUNK: u64 = 4 << 20;

/// Blob ranges of the chunks holding `profile`'s ranges in the uncompressed tar layers
/// `blobs` (bottom first), computed from GNU tar's member offsets and [`TAR_CHUNK`]:
/// no part of Skiff is asked where a file's chunks are.
fn expected_ranges(blobs: &[Vec<u8>], profile: &Profile) -> Vec<(usize, u64, u64)> {
    let offsets: Vec<_> = blobs
        .iter()
        .map(|b| fixtures::gnu_tar_data_offsets(b))
        .collect();
    let mut v = Vec::new();
    for f in &profile.files {
        let path = f.path.trim_start_matches('/');
        let (li, &(start, size)) = offsets
            .iter()
            .enumerate()
            .rev()
            .find_map(|(li, o)| o.get(path).map(|at| (li, at)))
            .unwrap_or_else(|| panic!("{path} is in no layer"));
        let mut piece = 0;
        while piece < size {
            let end = (piece + TAR_CHUNK).min(size);
            if f.ranges
                .iter()
                .any(|&[off, len]| piece < off + len && off < end)
            {
                v.push((li, start + piece, start + end));
            }
            piece = end;
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

    // An image without a profile: push refuses, pull asks the registry and says none.
    let bare = build_image(
        vec![Layer::tar_gzip(&[Entry::file(
            "only",
            b"no profile\n",
            0o644,
        )])],
        &skiff_proto::image::Platform::host(),
        &["/bin/sh"],
    );
    rt.block_on(push_built(
        &skiff_tests::client(&reg.host()),
        "prof/rt",
        "bare",
        &bare,
    ));
    let bare_hex = skiff_proto::Digest::of(&bare.manifest_bytes).hex();
    let proxy = FaultProxy::start(reg.addr());
    let bare_ref = format!("{}/prof/rt:bare", proxy.host());
    let d = tempfile::tempdir().unwrap();
    let out = Skiff::new(d.path()).run(&["profile", "push", &bare_ref]);
    assert_eq!(out.status.code(), Some(125), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no recorded profile"),
        "{}",
        describe(&out)
    );
    proxy.clear_requests();
    let out = Skiff::new(d.path()).run(&["profile", "pull", &bare_ref]);
    assert_eq!(out.status.code(), Some(125), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no profile is published"),
        "{}",
        describe(&out)
    );
    let asked: Vec<Recorded> = proxy
        .requests()
        .into_iter()
        .filter(|r| r.path.contains("referrers") || r.path.contains(&format!("sha256-{bare_hex}")))
        .collect();
    assert!(
        asked.iter().any(|r| r.path.contains(&bare_hex)),
        "pull never looked for referrers of {bare_hex}: {:?}",
        proxy.requests()
    );
    assert!(profile_files(d.path()).is_empty());
}

/// A cold mount with a recorded profile fetches exactly the chunks holding the
/// recorded ranges (nothing more), and the recorded reads then cost no request.
#[test]
fn prefetch_fetches_exactly_the_recorded_ranges() {
    let rt = runtime();
    let reg = Registry::start();
    let built = push_indexed(
        &rt,
        &reg,
        "prof/exact",
        fixtures::busybox_tar_layers(4 << 20),
    );
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
    let blobs: Vec<Vec<u8>> = built.layers.iter().map(|l| l.blob.clone()).collect();
    let expected = expected_ranges(&blobs, &profile);
    // The recording holds busybox (base layer) and motd (top layer), read in part.
    assert!(
        expected.iter().any(|r| r.0 == 0) && expected.iter().any(|r| r.0 == 1),
        "{expected:?}"
    );
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

/// `(layer position, start, end exclusive)` of every ranged GET of `built`'s layer
/// blobs, in the order the proxy saw them (whole-layer reads panic).
fn built_range_reads(proxy: &FaultProxy, built: &BuiltImage) -> Vec<(usize, u64, u64)> {
    let digests: Vec<String> = built
        .layers
        .iter()
        .map(|l| skiff_proto::Digest::of(&l.blob).to_string())
        .collect();
    let mut out = Vec::new();
    for r in proxy.requests().iter().filter(|r| r.method == "GET") {
        let Some(li) = digests.iter().position(|d| r.path.ends_with(d.as_str())) else {
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

fn bytes_of(reads: &[(usize, u64, u64)]) -> u64 {
    reads.iter().map(|(_, a, b)| b - a).sum()
}

/// Where the profile of [`cold_run_prefetches_the_profile_before_the_containers_reads`]
/// points: 20 MiB into `/data/big`, far from anything `cat /etc/motd` reads (and past
/// any read-ahead or neighbour window of motd, which precedes it in the layer).
const PROFILED_BIG_OFFSET: u64 = 20 << 20;

/// The busybox image of `run_image.rs` (24 MiB never-read file), uncompressed so that
/// GNU tar tells where each file lies. A first `skiff run` records a profile of what
/// it read (checked); a cold `skiff run` on another root that has a hand-written
/// profile naming 4 KiB of `/data/big` fetches that range, and fetches it before the
/// container executes busybox; its own reads cost what they cost without a profile.
#[test]
fn cold_run_prefetches_the_profile_before_the_containers_reads() {
    let rt = runtime();
    let reg = Registry::start();
    let built = push_indexed(
        &rt,
        &reg,
        "prof/cold",
        fixtures::busybox_tar_layers(24 << 20),
    );
    let image_size: u64 = built.layers.iter().map(|l| l.blob.len() as u64).sum();
    let base = fixtures::gnu_tar_data_offsets(&built.layers[0].blob);
    let top = fixtures::gnu_tar_data_offsets(&built.layers[1].blob);
    let busybox_size = std::fs::metadata("/bin/busybox").unwrap().len();
    let (busybox_at, size) = base["bin/busybox"];
    assert_eq!(size, busybox_size);
    let busybox = (0, busybox_at, busybox_at + busybox_size);
    let (big_at, size) = top["data/big"];
    assert_eq!(size, 24 << 20);
    let profiled = (
        1,
        big_at + PROFILED_BIG_OFFSET,
        big_at + PROFILED_BIG_OFFSET + 4096,
    );
    let covers = |r: &(usize, u64, u64), want: (usize, u64, u64)| {
        r.0 == want.0 && r.1 <= want.1 && want.2 <= r.2
    };
    let overlaps = |r: &(usize, u64, u64), want: (usize, u64, u64)| {
        r.0 == want.0 && r.1 < want.2 && want.1 < r.2
    };
    let proxy = FaultProxy::start(reg.addr());
    let image = format!("{}/prof/cold:latest", proxy.host());

    // First run anywhere: no profile, so it records one.
    let a = tempfile::tempdir().unwrap();
    let out = Skiff::new(a.path()).run_cat(&image, "/etc/motd");
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(out.stderr.is_empty(), "run is silent: {}", describe(&out));
    let reads_without = built_range_reads(&proxy, &built);
    let without = bytes_of(&reads_without);
    assert!(
        !reads_without.iter().any(|r| overlaps(r, profiled)),
        "without a profile the run already read the profiled range: {reads_without:?}"
    );
    let recorded = profile_files(a.path());
    assert_eq!(recorded.len(), 1, "the first run recorded a profile");
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&recorded[0]).unwrap()).unwrap();
    assert_eq!(json["version"], 1, "{json}");
    let files = json["files"].as_array().expect("a files list");
    let ranges_of = |path: &str| -> Option<Vec<(u64, u64)>> {
        let f = files.iter().find(|f| f["path"] == path)?;
        Some(
            f["ranges"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| (r[0].as_u64().unwrap(), r[1].as_u64().unwrap()))
                .collect(),
        )
    };
    assert_eq!(ranges_of("/etc/motd"), Some(vec![(0, 21)]), "{json}");
    let bb = ranges_of("/bin/busybox").expect("busybox was read");
    assert!(!bb.is_empty(), "{json}");
    assert!(
        bb.iter()
            .all(|&(off, len)| len > 0 && off + len <= busybox_size),
        "busybox ranges outside the file: {bb:?}"
    );
    assert!(ranges_of("/data/big").is_none(), "{json}");

    // A cold machine with a profile that names a range the container never reads.
    let b = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(b.path().join("profiles")).unwrap();
    std::fs::write(
        b.path()
            .join("profiles")
            .join(recorded[0].file_name().unwrap()),
        format!(
            r#"{{"version": 1, "files": [{{"path": "/data/big", "ranges": [[{PROFILED_BIG_OFFSET}, 4096]]}}]}}"#
        ),
    )
    .unwrap();
    proxy.clear_requests();
    let out = Skiff::new(b.path()).run_cat(&image, "/etc/motd");
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello from layer two\n"
    );
    let reads = built_range_reads(&proxy, &built);
    let first_profiled = reads
        .iter()
        .position(|r| covers(r, profiled))
        .unwrap_or_else(|| panic!("the profiled range {profiled:?} was not fetched: {reads:?}"));
    let first_exec = reads
        .iter()
        .position(|r| overlaps(r, busybox))
        .unwrap_or_else(|| panic!("busybox {busybox:?} was not fetched: {reads:?}"));
    assert!(
        first_profiled < first_exec,
        "the container's exec of busybox was fetched before the profile: {reads:?}"
    );
    let (profile_reads, own): (Vec<_>, Vec<_>) =
        reads.iter().cloned().partition(|r| overlaps(r, profiled));
    let with = bytes_of(&own);
    eprintln!(
        "image {image_size} B; cold run without profile: {without} B in {} requests; \
         with profile: {with} B in {} requests + {} B of profile",
        reads_without.len(),
        own.len(),
        bytes_of(&profile_reads)
    );
    assert!(without < image_size / 8, "{without} of {image_size}");
    assert!(with <= without + (64 << 10), "{with} vs {without}");
    // One tar chunk of data/big holds the profiled range.
    assert!(
        bytes_of(&profile_reads) <= TAR_CHUNK,
        "profile fetched {profile_reads:?}"
    );
}

/// The host's `/usr/bin/ls` with its interpreter and libraries (as `ldd` lists them),
/// each stored at its real path, with the host's symlinks on the way (`/lib64`,
/// merged-`/usr` links) as symlink entries. Returns the layer entries and the
/// libraries' paths (as the loader names them).
fn ls_with_its_libraries() -> (Vec<Entry>, Vec<String>) {
    let out = std::process::Command::new("ldd")
        .arg("/usr/bin/ls")
        .output()
        .expect("ldd");
    assert!(out.status.success());
    let mut libs: Vec<String> = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let line = line.trim();
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next().unwrap_or(""),
            None => line.split_whitespace().next().unwrap_or(""),
        };
        if path.starts_with('/') {
            libs.push(path.to_string());
        }
    }
    assert!(libs.len() >= 2, "ldd /usr/bin/ls: {libs:?}");
    let mut entries: Vec<Entry> = Vec::new();
    let mut made: std::collections::BTreeSet<String> = Default::default();
    let add_path =
        |entries: &mut Vec<Entry>, made: &mut std::collections::BTreeSet<String>, host: &str| {
            // Each parent on the way: a symlink where the host has one, else a directory.
            let mut prefix = String::new();
            let comps: Vec<&str> = host.trim_start_matches('/').split('/').collect();
            for c in &comps[..comps.len() - 1] {
                prefix = if prefix.is_empty() {
                    c.to_string()
                } else {
                    format!("{prefix}/{c}")
                };
                if !made.insert(prefix.clone()) {
                    continue;
                }
                let host_path = format!("/{prefix}");
                match std::fs::read_link(&host_path) {
                    Ok(target) => {
                        entries.push(Entry::symlink(&prefix, &target.to_string_lossy()));
                        // Its target must exist too.
                        let real = std::fs::canonicalize(&host_path).unwrap();
                        let real = real.to_string_lossy().trim_start_matches('/').to_string();
                        let mut p = String::new();
                        for c in real.split('/') {
                            p = if p.is_empty() {
                                c.to_string()
                            } else {
                                format!("{p}/{c}")
                            };
                            if made.insert(p.clone()) {
                                entries.push(Entry::dir(&p, 0o755));
                            }
                        }
                    }
                    Err(_) => entries.push(Entry::dir(&prefix, 0o755)),
                }
            }
            let real = std::fs::canonicalize(host).unwrap();
            let real_rel = real.to_string_lossy().trim_start_matches('/').to_string();
            let name = host.trim_start_matches('/').to_string();
            if std::fs::symlink_metadata(host)
                .unwrap()
                .file_type()
                .is_symlink()
                && made.insert(name.clone())
            {
                entries.push(Entry::symlink(
                    &name,
                    &std::fs::read_link(host).unwrap().to_string_lossy(),
                ));
            }
            if made.insert(real_rel.clone()) {
                entries.push(Entry::file(
                    &real_rel,
                    &std::fs::read(&real).unwrap(),
                    0o755,
                ));
            }
        };
    add_path(&mut entries, &mut made, "/usr/bin/ls");
    for l in &libs {
        add_path(&mut entries, &mut made, l);
    }
    // Directories first, so every parent exists when its children are applied.
    entries.sort_by_key(|e| !matches!(e, Entry::Dir { .. }));
    (entries, libs)
}

/// Without a profile, the head of a program being read (as exec reads it) brings in
/// what the dynamic loader will open next — the interpreter and every library's first
/// block and loader parts. Shown by
/// reading through the mount with the registry gone afterwards; without prediction
/// the same reads fail. With the program named in `MountOptions::warm` (what `skiff
/// run` passes for the program it execs), the mount does all of it before any read.
#[test]
fn a_programs_head_brings_the_loader_parts_of_its_libraries() {
    let rt = runtime();
    let reg = Registry::start();
    let (entries, libs) = ls_with_its_libraries();
    let image = build_image(
        vec![Layer::tar_gzip(&entries)],
        &skiff_proto::image::Platform::host(),
        &["/usr/bin/ls"],
    );
    let client = Arc::new(skiff_tests::client(&reg.host()));
    rt.block_on(push_built(&client, "predict/ls", "latest", &image));

    // (predict, warm): read the head ourselves with and without prediction, or let
    // the mount read it first thing (as `skiff run` asks for the program it execs).
    for (predict, warm) in [(true, false), (false, false), (true, true)] {
        let proxy = FaultProxy::start(reg.addr());
        let via = Arc::new(skiff_tests::client(&proxy.host()));
        let reference = Reference::parse(&format!("{}/predict/ls:latest", proxy.host())).unwrap();
        let resolved = rt.block_on(via.resolve(&reference, None)).unwrap();
        // Small chunks and checkpoint spans, so that "part of a library" is visible.
        let layers: Vec<FsLayer> = resolved
            .layers()
            .iter()
            .map(|d| {
                let blob: Arc<dyn skiff_proto::blob::BlobReader> =
                    Arc::new(skiff_proto::registry::RemoteBlob::new(
                        via.clone(),
                        "predict/ls",
                        d.digest,
                        d.size,
                        rt.handle().clone(),
                    ));
                let opts = skiff_proto::index::IndexOptions {
                    chunk_size: 64 << 10,
                    span: 64 << 10,
                    progress: None,
                };
                let index =
                    skiff_proto::index::open_index_with(&d.to_oci().unwrap(), blob.as_ref(), &opts)
                        .unwrap();
                FsLayer {
                    index: Arc::new(index),
                    blob,
                }
            })
            .collect();
        let cache = tempfile::tempdir().unwrap();
        let mut opts = MountOptions::new(layers, cache.path().to_path_buf());
        opts.prefetch = false;
        opts.background_fetch = false;
        // No neighbours or read-ahead riding along: only what is asked or predicted.
        opts.readahead = 0;
        opts.tuning.neighbour_window = 0;
        opts.tuning.merge_gap = 0;
        if !predict {
            opts.whole_file_max = 0;
        }
        if warm {
            // PATH order: the first candidate does not exist.
            opts.warm = vec![vec!["/usr/local/bin/ls".into(), "/usr/bin/ls".into()]];
        }
        let m = Mounted::new(opts);
        if !warm {
            // What exec does first: read the program's head.
            let mut head = vec![0u8; 4096];
            use std::io::Read;
            std::fs::File::open(m.path("usr/bin/ls"))
                .unwrap()
                .read_exact(&mut head)
                .unwrap();
            assert_eq!(&head[..4], b"\x7fELF");
        }
        // Let what was queued finish (no new request for a while), then lose the
        // registry.
        let mut last = usize::MAX;
        for _ in 0..100 {
            std::thread::sleep(Duration::from_millis(300));
            let n = proxy.requests().len();
            if n == last {
                break;
            }
            last = n;
        }
        proxy.add_rule(skiff_tests::proxy::Rule::new(
            "/blobs/",
            skiff_tests::proxy::Fault::Status(404),
            None,
        ));
        let read_at = |path: &str, offset: u64, len: usize| -> std::io::Result<Vec<u8>> {
            use std::os::unix::fs::FileExt;
            let f = std::fs::File::open(m.path(path))?;
            let mut buf = vec![0u8; len];
            f.read_exact_at(&mut buf, offset)?;
            Ok(buf)
        };
        if warm {
            let ls = read_at("usr/bin/ls", 0, 4096).expect("the program was read first");
            assert_eq!(ls, std::fs::read("/usr/bin/ls").unwrap()[..4096]);
        }
        for lib in &libs {
            // By its real path: an absolute symlink read through the mount would be
            // followed on the host.
            let real = std::fs::canonicalize(lib).unwrap();
            let got = read_at(&real.to_string_lossy(), 0, 4096);
            if predict {
                let got = got.unwrap_or_else(|e| panic!("{lib} head not fetched ahead: {e}"));
                assert_eq!(got, std::fs::read(lib).unwrap()[..4096], "{lib}");
            } else {
                assert!(got.is_err(), "{lib} was fetched without prediction");
            }
        }
        drop(m);
    }
}

/// A big file read from its start is fetched ahead of its reader (windows that grow),
/// not only a chunk and a read-ahead at a time: after reading its first 3 MiB, the
/// registry has been asked for well beyond what those reads and one read-ahead cover.
#[test]
fn a_big_file_read_in_order_is_fetched_ahead_of_its_reader() {
    let rt = runtime();
    let reg = Registry::start();
    let big = fixtures::pseudo_random(9, 24 << 20);
    // A plain tar: blob offsets are file offsets plus the header.
    push_indexed(
        &rt,
        &reg,
        "stream/big",
        vec![Layer::tar(&[Entry::file("big.bin", &big, 0o644)])],
    );
    let proxy = FaultProxy::start(reg.addr());
    let store = tempfile::tempdir().unwrap();
    let layers = lazy_layers(&rt, &proxy.host(), "stream/big", store.path());
    let cache = tempfile::tempdir().unwrap();
    let mut opts = MountOptions::new(layers.clone(), cache.path().to_path_buf());
    opts.prefetch = false;
    opts.background_fetch = false;
    proxy.clear_requests();
    let m = Mounted::new(opts);
    use std::io::Read;
    let mut f = std::fs::File::open(m.path("big.bin")).unwrap();
    let mut buf = vec![0u8; 128 << 10];
    for i in 0..24 {
        f.read_exact(&mut buf).unwrap();
        let at = i * (128 << 10);
        assert!(buf == big[at..at + (128 << 10)], "bytes at {at}");
    }
    // Let what was queued finish.
    let mut last = usize::MAX;
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(200));
        let n = proxy.requests().len();
        if n == last {
            break;
        }
        last = n;
    }
    let fetched = bytes_of(&union(range_reads(&proxy.requests(), &layers)));
    // The reads covered 3 MiB; the chunk and 1 MiB of read-ahead would make ~8 MiB
    // (the tar index's chunks are 4 MiB); streaming ahead queues 2 + 4 MiB windows
    // past the reader on top.
    assert!(fetched >= 12 << 20, "only {fetched} bytes fetched ahead");
    assert!(fetched < 24 << 20, "the whole file was fetched: {fetched}");
    drop(m);
}
