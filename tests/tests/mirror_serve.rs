//! `skiff mirror`: the lazy, range-caching, single-flight pull-through mirror, with a
//! real docker-registry upstream behind a counting [`FaultProxy`].
//!
//! What upstream sent is counted from the proxy's record of blob GETs and their Range
//! headers (the mirror always asks with Range).

use skiff_proto::digest::Digest;
use skiff_proto::reference::Reference;
use skiff_tests::cli::{describe, Skiff};
use skiff_tests::fixtures::{self, build_image, push_built, Entry, Layer};
use skiff_tests::proxy::{FaultProxy, Recorded};
use skiff_tests::registry::Registry;
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A `skiff mirror` process; killed on drop.
struct MirrorProc {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl MirrorProc {
    /// `skiff mirror --upstream http://<upstream> --storage <storage> <extra>` on a
    /// free loopback port (its root and log under `work`).
    fn start(work: &Path, upstream: &str, storage: &Path, extra: &[&str]) -> MirrorProc {
        let skiff = Skiff::new(&work.join("mirror-root"));
        for attempt in 0.. {
            let addr: SocketAddr = format!("127.0.0.1:{}", skiff_tests::free_port())
                .parse()
                .unwrap();
            let log = work.join(format!("mirror-{}.log", addr.port()));
            let mut child = skiff
                .command()
                .arg("-v")
                .args(["mirror", "--upstream", &format!("http://{upstream}")])
                .arg("--storage")
                .arg(storage)
                .args(["--listen", &addr.to_string()])
                .args(extra)
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .expect("starting skiff mirror");
            if skiff_tests::wait_for_port(addr, Duration::from_secs(20)) {
                return MirrorProc { child, addr, log };
            }
            let _ = child.kill();
            let _ = child.wait();
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            assert!(attempt < 3, "skiff mirror did not start:\n{text}");
        }
        unreachable!()
    }

    /// `127.0.0.1:PORT`.
    fn host(&self) -> String {
        self.addr.to_string()
    }

    /// `GET /skiff/stats`.
    fn stats(&self) -> serde_json::Value {
        let mut s = TcpStream::connect(self.addr).unwrap();
        s.write_all(b"GET /skiff/stats HTTP/1.1\r\nHost: mirror\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        let body = resp.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        serde_json::from_str(body).unwrap_or_else(|e| panic!("stats {resp:?}: {e}"))
    }

    /// One counter of [`MirrorProc::stats`].
    fn stat(&self, name: &str) -> u64 {
        self.stats()[name].as_u64().unwrap_or(0)
    }

    /// Stops it with SIGTERM (as an operator would) and returns its log.
    fn stop(mut self) -> String {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for MirrorProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Bytes of blob bodies upstream sent, from the proxy's record: the length of each
/// blob GET's Range. Fails on a blob GET without Range (the mirror never reads whole).
fn upstream_blob_bytes(requests: &[Recorded]) -> u64 {
    blob_ranges(requests)
        .iter()
        .map(|(_, a, b)| b - a + 1)
        .sum()
}

/// (path, first, last byte) of every blob GET in `requests`.
fn blob_ranges(requests: &[Recorded]) -> Vec<(String, u64, u64)> {
    requests
        .iter()
        .filter(|r| r.method == "GET" && r.path.contains("/blobs/"))
        .map(|r| {
            let range = r
                .range
                .as_deref()
                .unwrap_or_else(|| panic!("blob GET without Range: {}", r.path));
            let (a, b) = range
                .strip_prefix("bytes=")
                .and_then(|s| s.split_once('-'))
                .unwrap_or_else(|| panic!("odd range {range}"));
            let path = r.path.split('?').next().unwrap_or_default().to_string();
            (path, a.parse().unwrap(), b.parse().unwrap())
        })
        .collect()
}

/// A layer with a 3 MiB incompressible file, a small one and 2 MiB never read.
fn layers() -> Vec<Layer> {
    vec![Layer::tar_gzip(&[
        Entry::dir("data", 0o755),
        Entry::file("data/big.bin", &fixtures::pseudo_random(11, 3 << 20), 0o644),
        Entry::file("data/hello.txt", b"hello through skiff mirror\n", 0o644),
        Entry::file(
            "data/unread.bin",
            &fixtures::pseudo_random(12, 2 << 20),
            0o644,
        ),
    ])]
}

/// An upstream registry, the proxy counting what it sends, and scratch space.
struct Setup {
    upstream: Registry,
    up: FaultProxy,
    work: tempfile::TempDir,
}

fn setup() -> Setup {
    let upstream = Registry::start();
    let up = FaultProxy::start(upstream.addr());
    let work = tempfile::tempdir().unwrap();
    Setup { upstream, up, work }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_through_the_mirror_give_the_image() {
    let Setup { upstream, up, work } = setup();
    let image = build_image(
        fixtures::sample_layers(),
        &skiff_proto::image::Platform::host(),
        &["/bin/sh"],
    );
    push_built(
        &skiff_tests::client(&upstream.host()),
        "lib/app",
        "v1",
        &image,
    )
    .await;
    let mirror = MirrorProc::start(work.path(), &up.host(), &work.path().join("cache"), &[]);

    // Skiff's own client, with the mirror as its registry: resolves, verifies.
    let c = skiff_tests::client(&mirror.host());
    let r = Reference::parse(&format!("{}/lib/app:v1", mirror.host())).unwrap();
    let got = c.resolve(&r, None).await.unwrap();
    assert_eq!(got.manifest_digest, image.digest);
    for (desc, layer) in got.layers().iter().zip(&image.layers) {
        assert_eq!(
            c.get_blob("lib/app", desc.digest).await.unwrap(),
            layer.blob
        );
    }
    // A missing tag and blob are 404s, as from a registry.
    let missing = c.get_manifest("lib/app", "nope").await.unwrap_err();
    assert!(
        matches!(
            missing,
            skiff_proto::registry::RegistryError::ManifestUnknown { .. }
        ),
        "{missing}"
    );
    assert_eq!(
        c.blob_size("lib/app", Digest::of(b"no")).await.unwrap(),
        None
    );
    // The tags listing is passed through, containerd's ns= ignored.
    let tags = c
        .get_listing("lib/app", "tags/list?ns=example.org", None)
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&tags.body).contains("\"v1\""));

    // `skiff pull` with the mirror in hosts.toml for the upstream.
    let hosts = work.path().join("certs.d");
    let dir = hosts.join(upstream.host());
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("hosts.toml"),
        format!(
            "[host.\"http://{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            mirror.host()
        ),
    )
    .unwrap();
    let node = Skiff::new(&work.path().join("node"));
    let out = node
        .command()
        .args(["pull", "-q", "--hosts-dir"])
        .arg(&hosts)
        .arg(upstream.reference("lib/app:v1"))
        .output()
        .unwrap();
    assert!(out.status.success(), "skiff pull: {}", describe(&out));
    assert!(mirror.stat("served_bytes") > 0);

    // skopeo copies the image out of the mirror, digests preserved.
    if skiff_tests::tools_or_skip(&["skopeo"], "only for the tool check") {
        let layout = work.path().join("oci");
        let out = Command::new("skopeo")
            .args(["copy", "-q", "--preserve-digests", "--src-tls-verify=false"])
            .arg(format!("docker://{}/lib/app:v1", mirror.host()))
            .arg(format!("oci:{}:v1", layout.display()))
            .output()
            .unwrap();
        assert!(out.status.success(), "skopeo copy: {}", describe(&out));
        for layer in &image.layers {
            let hex = Digest::of(&layer.blob).hex();
            let copied = std::fs::read(layout.join("blobs/sha256").join(hex)).unwrap();
            assert!(copied == layer.blob, "layer differs after skopeo copy");
        }
    }
    // Every blob came from upstream once at most, in Range requests.
    let mut seen = BTreeSet::new();
    for (path, a, _) in blob_ranges(&up.requests()) {
        assert!(
            seen.insert((path.clone(), a)),
            "{path} at {a} fetched twice"
        );
    }
    let _ = mirror.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_range_reads_of_a_cold_blob_fetch_each_block_once() {
    let Setup { upstream, up, work } = setup();
    let image = fixtures::push_image(&upstream.host(), "fleet/app:v1", layers()).await;
    let blob = Arc::new(image.layers[0].blob.clone());
    let d = image.manifest.layers[0].digest;
    let block: u64 = 256 << 10;
    let mirror = MirrorProc::start(
        work.path(),
        &up.host(),
        &work.path().join("cache"),
        &["--block-size", "256KiB", "--max-request-blocks", "4"],
    );
    let size = blob.len() as u64;
    let reads: Vec<(u64, u64)> = vec![
        (100_000, 50_000),
        (1_000_000, 700_000),
        (size - 10_000, 10_000),
        (3_000_000, 1_500_000),
    ];
    up.clear_requests();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (host, blob, reads) = (mirror.host(), Arc::clone(&blob), reads.clone());
        tasks.push(tokio::spawn(async move {
            // One client per node, as in a fleet.
            let c = Arc::new(skiff_tests::client(&host));
            let mut each = Vec::new();
            for (off, len) in reads {
                let c = Arc::clone(&c);
                each.push(tokio::spawn(async move {
                    (off, len, c.get_blob_range("fleet/app", d, off, len).await)
                }));
            }
            for t in each {
                let (off, len, got) = t.await.unwrap();
                let got = got.unwrap_or_else(|e| panic!("range {off}+{len}: {e}"));
                assert!(
                    got[..] == blob[off as usize..(off + len) as usize],
                    "range {off}+{len} differs"
                );
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Upstream sent each block the reads cover once, and nothing else.
    let covered: BTreeSet<u64> = reads
        .iter()
        .flat_map(|&(off, len)| off / block..=(off + len - 1) / block)
        .collect();
    let covered_bytes: u64 = covered.iter().map(|b| block.min(size - b * block)).sum();
    let ranges = blob_ranges(&up.requests());
    let sent = upstream_blob_bytes(&up.requests());
    assert_eq!(sent, covered_bytes, "upstream ranges: {ranges:?}");
    let mut fetched = BTreeSet::new();
    for (_, a, b) in &ranges {
        assert_eq!(a % block, 0, "unaligned fetch {a}-{b}");
        assert!(b - a < 4 * block, "fetch {a}-{b} over the request cap");
        for blk in a / block..=b / block {
            assert!(fetched.insert(blk), "block {blk} fetched twice: {ranges:?}");
        }
    }
    let stats = mirror.stats();
    assert_eq!(stats["upstream_blob_bytes"].as_u64(), Some(covered_bytes));
    let served: u64 = reads.iter().map(|r| r.1).sum::<u64>() * 8;
    assert_eq!(stats["served_bytes"].as_u64(), Some(served), "{stats}");
    let _ = mirror.stop();
}

/// `skiff mount IMAGE DIR -d` through `hosts`, reads `files`, unmounts.
fn mount_and_read(
    skiff: &Skiff,
    image: &str,
    hosts: &Path,
    dir: &Path,
    files: &[&str],
) -> Vec<Vec<u8>> {
    std::fs::create_dir_all(dir).unwrap();
    let _guard = skiff.guard(dir);
    let out = skiff
        .command()
        .args(["mount", image])
        .arg(dir)
        .arg("-d")
        .arg("--hosts-dir")
        .arg(hosts)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "skiff mount: {}",
        describe(&out)
    );
    let read: Vec<std::io::Result<Vec<u8>>> =
        files.iter().map(|f| std::fs::read(dir.join(f))).collect();
    let umount = skiff.run(&["umount", &dir.to_string_lossy()]);
    if !umount.status.success() {
        let _ = Command::new("fusermount3").arg("-uz").arg(dir).status();
    }
    read.into_iter()
        .zip(files)
        .map(|(r, f)| r.unwrap_or_else(|e| panic!("reading {f}: {e}")))
        .collect()
}

/// `<hosts>/<registry>/hosts.toml` with `mirror` as the host that pulls and resolves.
fn write_hosts(hosts: &Path, registry: &str, mirror: &str) {
    let dir = hosts.join(registry);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("hosts.toml"),
        format!("[host.\"http://{mirror}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"),
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_cold_mounts_at_once_cost_upstream_about_one() {
    if !skiff_tests::tools_or_skip(&["fusermount3"], "FUSE mounts need root") {
        return;
    }
    let Setup { upstream, up, work } = setup();
    let image = build_image(
        layers(),
        &skiff_proto::image::Platform::host(),
        &["/bin/sh"],
    );
    push_built(
        &skiff_tests::client(&upstream.host()),
        "app",
        "gzip",
        &image,
    )
    .await;
    let converter = Skiff::new(&work.path().join("converter"));
    let out = converter.run(&[
        "convert",
        "-q",
        &upstream.reference("app:gzip"),
        &upstream.reference("app:esgz"),
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "skiff convert: {}",
        describe(&out)
    );
    let esgz = upstream.reference("app:esgz");
    let files = ["data/hello.txt", "data/big.bin"];
    let want: Vec<Vec<u8>> = vec![
        b"hello through skiff mirror\n".to_vec(),
        fixtures::pseudo_random(11, 3 << 20),
    ];
    let block = ["--block-size", "64KiB"];

    // One node alone, through a cold mirror: what one node reads.
    let hosts = work.path().join("certs.d");
    let alone = MirrorProc::start(
        work.path(),
        &up.host(),
        &work.path().join("cache-1"),
        &block,
    );
    write_hosts(&hosts, &upstream.host(), &alone.host());
    let node = Skiff::new(&work.path().join("alone"));
    let got = mount_and_read(&node, &esgz, &hosts, &work.path().join("mnt-alone"), &files);
    assert!(got == want, "one node read wrong content");
    let one_node = alone.stat("served_bytes");
    let _ = alone.stop();

    // Four nodes at once, through another cold mirror.
    up.clear_requests();
    let mirror = MirrorProc::start(
        work.path(),
        &up.host(),
        &work.path().join("cache-4"),
        &block,
    );
    write_hosts(&hosts, &upstream.host(), &mirror.host());
    let threads: Vec<_> = (0..4)
        .map(|i| {
            let (esgz, hosts, root) = (
                esgz.clone(),
                hosts.clone(),
                work.path().join(format!("n{i}")),
            );
            let files = files.map(str::to_string);
            std::thread::spawn(move || {
                let files: Vec<&str> = files.iter().map(String::as_str).collect();
                let node = Skiff::new(&root);
                mount_and_read(&node, &esgz, &hosts, &root.join("mnt"), &files)
            })
        })
        .collect();
    for t in threads {
        assert!(t.join().unwrap() == want, "a node read wrong content");
    }
    let sent = upstream_blob_bytes(&up.requests());
    let stats = mirror.stats();
    eprintln!("one node read {one_node} bytes; upstream sent {sent} for four; mirror {stats}");
    assert!(
        sent as f64 <= 1.2 * one_node as f64,
        "upstream sent {sent} bytes for four nodes, one node alone read {one_node}"
    );
    assert!(
        stats["served_bytes"].as_u64().unwrap_or(0) >= 3 * one_node,
        "{stats}"
    );
    let _ = mirror.stop();
}

/// Waits until `cond` holds, up to 20 s.
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_not_matching_its_digest_is_not_kept() {
    let Setup { upstream, up, work } = setup();
    let image = fixtures::push_image(&upstream.host(), "bad/app:v1", layers()).await;
    let d = image.manifest.layers[0].digest;
    let blob = image.layers[0].blob.clone();
    let size = blob.len() as u64;
    // Upstream's copy goes bad (same length, one byte flipped).
    let path = upstream.stored_blob(&d);
    let mut bad = blob.clone();
    bad[blob.len() / 2] ^= 0xff;
    std::fs::write(&path, &bad).unwrap();

    let cache = work.path().join("cache");
    let mirror = MirrorProc::start(work.path(), &up.host(), &cache, &[]);
    let c = skiff_tests::client(&mirror.host());
    // A client reading the whole blob gets what upstream has (and would see the
    // mismatch itself); the mirror, once it has every block, drops its copy.
    let got = c.get_blob_range("bad/app", d, 0, size).await.unwrap();
    assert!(got[..] == bad[..]);
    wait_until("the mirror to find the blob corrupt", || {
        mirror.stat("blobs_corrupt") == 1
    });
    let data = cache.join("blobs").join(format!("{}.data", d.hex()));
    assert!(!data.exists(), "corrupt blob kept at {}", data.display());
    assert_eq!(mirror.stat("blobs_verified"), 0);

    // Upstream is repaired: the mirror fetches the blob again and keeps it.
    std::fs::write(&path, &blob).unwrap();
    let before = upstream_blob_bytes(&up.requests());
    let got = c.get_blob("bad/app", d).await.unwrap();
    assert!(got[..] == blob[..]);
    assert_eq!(upstream_blob_bytes(&up.requests()) - before, size);
    wait_until("the mirror to verify the blob", || {
        mirror.stat("blobs_verified") == 1
    });
    assert!(data.exists());
    let log = mirror.stop();
    assert!(log.contains("DOES NOT MATCH ITS DIGEST"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_mirror_keeps_its_cached_blocks() {
    let Setup { upstream, up, work } = setup();
    let image = fixtures::push_image(&upstream.host(), "keep/app:v1", layers()).await;
    let d = image.manifest.layers[0].digest;
    let blob = image.layers[0].blob.clone();
    let cache = work.path().join("cache");
    let reads = [(0u64, 10_000u64), (2_000_000, 1_000_000)];
    let read_all = |host: String| {
        let blob = blob.clone();
        async move {
            let c = skiff_tests::client(&host);
            let r = Reference::parse(&format!("{host}/keep/app:v1")).unwrap();
            let got = c.resolve(&r, None).await.unwrap();
            assert_eq!(got.manifest.layers[0].digest, d);
            let by_digest = c
                .get_manifest("keep/app", &got.manifest_digest.to_string())
                .await
                .unwrap();
            assert_eq!(by_digest.2, got.manifest_digest);
            for (off, len) in reads {
                let bytes = c.get_blob_range("keep/app", d, off, len).await.unwrap();
                assert!(bytes[..] == blob[off as usize..(off + len) as usize]);
            }
        }
    };
    let first = MirrorProc::start(work.path(), &up.host(), &cache, &[]);
    read_all(first.host()).await;
    let fetched = upstream_blob_bytes(&up.requests());
    assert!(fetched > 0);
    let log = first.stop();
    assert!(log.contains("stopped;"), "no stats line on exit: {log}");

    up.clear_requests();
    let second = MirrorProc::start(work.path(), &up.host(), &cache, &[]);
    read_all(second.host()).await;
    assert_eq!(
        upstream_blob_bytes(&up.requests()),
        0,
        "blocks fetched again after a restart"
    );
    let digest_manifests = up
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path.contains("/manifests/sha256:"))
        .count();
    assert_eq!(digest_manifests, 0, "manifest by digest fetched again");
    let _ = second.stop();
}
