//! containerd (Debian's, started by the test with its own config, root, state and
//! sockets) with `skiff daemon` as its remote snapshotter: plain pulls unpack onto
//! Skiff's overlay snapshots, `ctr-remote images rpull` serves eStargz, zstd:chunked
//! and gzip-with-published-index images lazily, and the registry (counted through
//! the proxy) serves a fraction of the image, never a layer whole. A container keeps
//! reading while the daemon restarts under it.

use skiff_proto::image::Platform;
use skiff_tests::cli::{describe, Skiff};
use skiff_tests::containerd::{tail, Containerd, SkiffDaemon};
use skiff_tests::fixtures::{build_image, busybox_layers, push_built, push_busybox, Entry, Layer};
use skiff_tests::proxy::{Fault, FaultProxy, Recorded, Rule};
use skiff_tests::registry::Registry;
use skiff_tests::tools_or_skip;
use std::process::Command;
use std::time::{Duration, Instant};

const TOOLS: &[&str] = &[
    "docker-registry",
    "containerd",
    "containerd-shim-runc-v2",
    "ctr",
    "ctr-remote",
    "runc",
    "skopeo",
];

fn tools() -> bool {
    tools_or_skip(TOOLS, "containerd, mounts and containers")
}

/// A registry, a skiff daemon and a containerd using it, all under one temp dir
/// (dropped in reverse order: containerd, daemon, registry, directory).
struct Setup {
    work: tempfile::TempDir,
    reg: Registry,
    daemon: SkiffDaemon,
    containerd: Containerd,
}

impl Setup {
    fn new() -> Setup {
        let work = tempfile::tempdir().unwrap();
        let reg = Registry::start();
        let root = work.path().join("skiff");
        std::fs::create_dir_all(&root).unwrap();
        let daemon = SkiffDaemon::start(Skiff::new(&root));
        let containerd = Containerd::start(&work.path().join("containerd"), &daemon.socket(), None);
        Setup {
            work,
            reg,
            daemon,
            containerd,
        }
    }

    /// `ctr run --snapshotter skiff --rm IMAGE NAME ARGS…`'s output, asserting exit 0.
    fn run(&self, image: &str, name: &str, args: &[&str]) -> String {
        let mut cmd = self.containerd.ctr();
        cmd.args(["run", "--snapshotter", "skiff", "--rm", image, name])
            .args(args);
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "ctr run: {}\ncontainerd:\n{}\nskiff daemon:\n{}",
            describe(&out),
            tail(&self.containerd.log(), 30),
            tail(&self.daemon.log(), 60)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `ctr-remote images rpull --snapshotter skiff IMAGE` (a lazy pull), asserting
    /// it succeeds.
    fn rpull(&self, image: &str) {
        let c = &self.containerd;
        c.ok(&mut self.rpull_command(image));
    }

    /// The command [`Setup::rpull`] runs, for a test that expects it may fail.
    fn rpull_command(&self, image: &str) -> std::process::Command {
        let mut cmd = self.containerd.ctr_remote();
        cmd.args([
            "images",
            "rpull",
            "--plain-http",
            "--snapshotter",
            "skiff",
            image,
        ]);
        cmd
    }

    /// The snapshot directories holding unpacked layers and container uppers.
    fn snapshot_dirs(&self) -> usize {
        std::fs::read_dir(self.daemon.skiff.root.join("snapshotter/snapshots"))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

/// Layer bytes the registry served through the proxy for `layers` (digest, size),
/// and the GETs that took a layer whole.
fn layer_bytes(reqs: &[Recorded], layers: &[(String, u64)]) -> (u64, Vec<String>) {
    let mut bytes = 0;
    let mut whole = Vec::new();
    for r in reqs.iter().filter(|r| r.method == "GET") {
        let Some((_, size)) = layers.iter().find(|(d, _)| r.path.ends_with(d.as_str())) else {
            continue;
        };
        let range = r.range.as_deref().and_then(|v| {
            let (a, b) = v.strip_prefix("bytes=")?.split_once('-')?;
            let b = b.parse::<u64>().ok()?;
            match a {
                // A suffix range (`bytes=-N`): the blob's last N bytes, read ahead of
                // the manifest.
                "" => Some((size.saturating_sub(b), size - 1)),
                a => Some((a.parse::<u64>().ok()?, b)),
            }
        });
        match range {
            Some((a, b)) => bytes += b.min(size - 1).saturating_sub(a) + 1,
            None => {
                bytes += size;
                whole.push(r.path.clone());
            }
        }
    }
    (bytes, whole)
}

/// `image`'s manifest, read with skopeo.
fn manifest_json(image: &str) -> serde_json::Value {
    let out = Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{image}"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The layers (digest, size) of `image`'s manifest, read with skopeo.
fn manifest_layers(image: &str) -> Vec<(String, u64)> {
    manifest_json(image)["layers"]
        .as_array()
        .expect("a single-platform manifest")
        .iter()
        .map(|l| {
            (
                l["digest"].as_str().unwrap().to_string(),
                l["size"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_pull_unpacks_onto_skiff_snapshots_and_runs() {
    if !tools() {
        return;
    }
    let s = Setup::new();
    // Only root (and the daemon's own uid) may talk to the snapshotter.
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(s.daemon.socket()).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    push_busybox(&s.reg.host(), "ctd/plain", 1 << 20).await;
    let image = s.reg.reference("ctd/plain:latest");
    let c = &s.containerd;
    c.ok(c.ctr().args([
        "images",
        "pull",
        "--plain-http",
        "--snapshotter",
        "skiff",
        &image,
    ]));
    // Two layers unpacked by containerd into two committed snapshots on disk.
    assert_eq!(s.snapshot_dirs(), 2);
    let listed = c.ok(c.ctr().args(["snapshots", "--snapshotter", "skiff", "ls"]));
    assert_eq!(listed.matches("Committed").count(), 2, "{listed}");

    let out = s.run(&image, "plain1", &["cat", "/etc/motd"]);
    assert_eq!(out, "hello from layer two\n");
    // The whiteout of /bin/ls in layer two hides it.
    let out = s.run(
        &image,
        "plain2",
        &["sh", "-c", "ls /bin; echo x > /tmp/w; cat /tmp/w"],
    );
    assert!(out.contains("busybox") && out.contains("x\n"), "{out}");
    assert!(!out.split_whitespace().any(|n| n == "ls"), "{out}");
    // Removing the image with a synchronous garbage collection removes every
    // snapshot (the layers' and the containers'), and with them their directories.
    c.ok(c.ctr().args(["images", "rm", "--sync", &image]));
    let listed = c.ok(c.ctr().args(["snapshots", "--snapshotter", "skiff", "ls"]));
    assert_eq!(
        listed.lines().count(),
        1,
        "only the header is left: {listed}"
    );
    assert_eq!(s.snapshot_dirs(), 0);
}

/// How the lazily pulled image is made.
enum Format {
    /// The gzip image with a published Skiff index (`skiff index --push`).
    GzipIndexed,
    /// Converted by `ctr-remote images convert --estargz --oci`.
    Estargz,
    /// Converted by `skopeo copy --dest-compress-format zstd:chunked`.
    ZstdChunked,
}

/// Pushes the busybox image (with an 8 MiB incompressible file no command reads) in
/// `format` as `ctd/lazy:TAG`; returns the tag.
async fn push_lazy_image(s: &Setup, format: Format) -> &'static str {
    push_busybox(&s.reg.host(), "ctd/lazy", 8 << 20).await;
    let source = s.reg.reference("ctd/lazy:latest");
    match format {
        Format::GzipIndexed => {
            let publisher = Skiff::new(&s.work.path().join("publisher"));
            let out = publisher.run(&["index", "--push", "-q", &source]);
            assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
            "latest"
        }
        Format::Estargz => {
            to_estargz(s, &source, &s.reg.reference("ctd/lazy:esgz"));
            "esgz"
        }
        Format::ZstdChunked => {
            let layout = s.work.path().join("zc");
            let skopeo = |args: &[&str]| {
                let out = Command::new("skopeo").args(args).output().unwrap();
                assert!(out.status.success(), "skopeo {args:?}: {}", describe(&out));
            };
            // Into a layout first: pushing straight to the registry, skopeo reuses
            // the gzip blobs it finds there instead of compressing.
            skopeo(&[
                "copy",
                "-q",
                "--src-tls-verify=false",
                "--dest-compress-format",
                "zstd:chunked",
                "--dest-compress",
                &format!("docker://{source}"),
                &format!("oci:{}:zc", layout.display()),
            ]);
            skopeo(&[
                "copy",
                "-q",
                "--preserve-digests",
                "--dest-tls-verify=false",
                &format!("oci:{}:zc", layout.display()),
                &format!("docker://{}", s.reg.reference("ctd/lazy:zc")),
            ]);
            "zc"
        }
    }
}

/// Converts the image `source` to eStargz with `ctr-remote images convert` and pushes
/// it as `dest` (through a containerd namespace of its own: the converted layers must
/// not be in the test's).
fn to_estargz(s: &Setup, source: &str, dest: &str) {
    convert_ns(s, "ctr", &["content", "fetch", "--plain-http", source]);
    convert_ns(
        s,
        "ctr-remote",
        &["images", "convert", "--estargz", "--oci", source, dest],
    );
    convert_ns(s, "ctr", &["images", "push", "--plain-http", dest]);
}

/// Runs `program` (`ctr` or `ctr-remote`) with `args` in the test containerd's
/// namespace for conversions, asserting success.
fn convert_ns(s: &Setup, program: &str, args: &[&str]) {
    let c = &s.containerd;
    let mut cmd = Command::new(program);
    cmd.arg("-a")
        .arg(c.socket())
        .args(["-n", "convert"])
        .args(args);
    c.ok(&mut cmd);
}

/// rpull of the image in `format` through the counting proxy, then two containers:
/// the right output, no layer downloaded (by containerd or Skiff) whole, and the
/// registry served under half of the layer bytes (the 8 MiB file is never read).
async fn lazy_pull_and_run(format: Format) {
    if !tools() {
        return;
    }
    let s = Setup::new();
    let tag = push_lazy_image(&s, format).await;
    let proxy = FaultProxy::start(s.reg.addr());
    let image = format!("{}/ctd/lazy:{tag}", proxy.host());
    let layers = manifest_layers(&image);
    let total: u64 = layers.iter().map(|l| l.1).sum();
    proxy.clear_requests();

    s.rpull(&image);
    let c = &s.containerd;
    // Every layer was committed lazily: no directory on disk, remote labels.
    assert_eq!(s.snapshot_dirs(), 0, "{}", tail(&s.daemon.log(), 40));
    let listed = c.ok(c.ctr().args(["snapshots", "--snapshotter", "skiff", "ls"]));
    assert_eq!(
        listed.matches("Committed").count(),
        layers.len(),
        "{listed}"
    );
    let (pulled, whole) = layer_bytes(&proxy.requests(), &layers);
    assert!(whole.is_empty(), "layers read whole by the pull: {whole:?}");

    let out = s.run(&image, "lazy1", &["cat", "/etc/motd"]);
    assert_eq!(out, "hello from layer two\n");
    let out = s.run(&image, "lazy2", &["sh", "-c", "ls /bin; ls -l /data/big"]);
    assert!(out.contains("busybox") && out.contains("8388608"), "{out}");
    assert!(
        !out.split_whitespace().any(|n| n == "ls"),
        "whiteout: {out}"
    );

    let (served, whole) = layer_bytes(&proxy.requests(), &layers);
    assert!(whole.is_empty(), "layers read whole: {whole:?}");
    eprintln!(
        "{tag}: the pull read {pulled} and the runs {} of {total} layer bytes",
        served - pulled
    );
    assert!(
        served < total / 2,
        "{tag}: served {served} of {total} layer bytes"
    );
    // The containers are gone, so is their view, once containerd's garbage collector
    // (asynchronous after `ctr run --rm`) has removed their snapshots.
    let views = s.daemon.skiff.root.join("snapshotter/views");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !skiff_tests::guard::mounts_under(&views).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "views left mounted: {:?}",
            skiff_tests::guard::mounts_under(&views)
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Pushes the busybox image with a third layer holding `/opt/three` (`text`) as
/// `ctd/three:latest`, converted to eStargz (as `ctd/three:v{version}` first).
async fn push_three_layers(s: &Setup, text: &[u8], version: u32) {
    let mut layers = busybox_layers(1 << 20);
    layers.push(Layer::tar_gzip(&[
        Entry::dir("opt", 0o755),
        Entry::file("opt/three", text, 0o644),
    ]));
    let image = build_image(layers, &Platform::host(), &["/bin/sh"]);
    let gzip = format!("gzip{version}");
    push_built(
        &skiff_tests::client(&s.reg.host()),
        "ctd/three",
        &gzip,
        &image,
    )
    .await;
    let converted = s.reg.reference(&format!("ctd/three:v{version}"));
    to_estargz(
        s,
        &s.reg.reference(&format!("ctd/three:{gzip}")),
        &converted,
    );
    let latest = s.reg.reference("ctd/three:latest");
    convert_ns(
        s,
        "ctr",
        &["images", "push", "--plain-http", &latest, &converted],
    );
}

/// A setup with [`push_three_layers`]'s first version (`/opt/three` holding "layer
/// three"), the proxy counting requests in front of its registry, and the image's
/// reference through the proxy.
async fn three_layers_behind_a_proxy() -> (Setup, FaultProxy, String) {
    let s = Setup::new();
    push_three_layers(&s, b"layer three\n", 1).await;
    let proxy = FaultProxy::start(s.reg.addr());
    let image = format!("{}/ctd/three:latest", proxy.host());
    (s, proxy, image)
}

/// What Skiff (not containerd, which fetches the manifest and config itself) asked
/// the registry for through `proxy`: manifest requests, config requests, and per
/// layer the TOC reads (ranges that end at the blob's last byte, where eStargz keeps
/// its TOC and footer, or suffix ranges: the tails read ahead of the manifest).
fn skiff_requests(proxy: &FaultProxy, image: &str) -> (usize, usize, Vec<usize>) {
    let m = manifest_json(image);
    let config = m["config"]["digest"].as_str().unwrap().to_string();
    let layers = manifest_layers(image);
    let reqs: Vec<Recorded> = proxy
        .requests()
        .into_iter()
        .filter(|r| {
            r.user_agent
                .as_deref()
                .is_some_and(|a| a.starts_with("skiff/"))
        })
        .collect();
    let manifests = reqs
        .iter()
        .filter(|r| r.path.contains("/manifests/"))
        .count();
    let configs = reqs.iter().filter(|r| r.path.ends_with(&config)).count();
    let tocs = layers
        .iter()
        .map(|(digest, size)| {
            // Reads of the blob's end: a range to its last byte, or a suffix range
            // (the tail read ahead of the manifest).
            let tail = format!("-{}", size - 1);
            reqs.iter()
                .filter(|r| r.path.ends_with(digest.as_str()))
                .filter(|r| {
                    r.range
                        .as_deref()
                        .is_some_and(|v| v.ends_with(&tail) || v.starts_with("bytes=-"))
                })
                .count()
        })
        .collect();
    (manifests, configs, tocs)
}

/// [`skiff_requests`] once they are `want`, or after 20 s: a Prepare is answered
/// once the manifest is in, and the config and TOCs are read after it, while the
/// pull ends.
fn skiff_requests_settled(
    proxy: &FaultProxy,
    image: &str,
    want: &(usize, usize, Vec<usize>),
) -> (usize, usize, Vec<usize>) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let got = skiff_requests(proxy, image);
        if got == *want || std::time::Instant::now() > deadline {
            return got;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// A lazy rpull of a 3-layer image resolves it once: Skiff asks the registry for the
/// manifest and the config once each and reads each layer's TOC once, for the three
/// Prepares and the container's view. When the tag then moves to an image with
/// another third layer, the next rpull's labels no longer match what Skiff resolved:
/// it resolves the tag once more and serves the new layer lazily too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lazy_rpull_resolves_the_image_once() {
    if !tools() {
        return;
    }
    let (s, proxy, image) = three_layers_behind_a_proxy().await;
    let first = manifest_layers(&image);
    assert_eq!(first.len(), 3);
    proxy.clear_requests();

    s.rpull(&image);
    assert_eq!(s.snapshot_dirs(), 0, "{}", tail(&s.daemon.log(), 40));
    let want = (1, 1, vec![1, 1, 1]);
    let (manifests, configs, tocs) = skiff_requests_settled(&proxy, &image, &want);
    assert_eq!(
        (manifests, configs, tocs),
        want,
        "{}",
        tail(&s.daemon.log(), 40)
    );
    // The TOCs were read ahead of the manifest, from the layers the first Prepare's
    // labels name: by suffix ranges (small TOCs: one each).
    let suffix_reads = proxy
        .requests()
        .iter()
        .filter(|r| {
            r.user_agent
                .as_deref()
                .is_some_and(|a| a.starts_with("skiff/"))
        })
        .filter(|r| r.range.as_deref().is_some_and(|v| v.starts_with("bytes=-")))
        .count();
    assert_eq!(suffix_reads, 3, "{}", tail(&s.daemon.log(), 40));
    let out = s.run(&image, "three1", &["cat", "/opt/three"]);
    assert_eq!(out, "layer three\n");
    let (manifests, configs, _) = skiff_requests(&proxy, &image);
    assert_eq!(
        (manifests, configs),
        (1, 1),
        "the view re-resolved the image"
    );

    // The tag moves: a new third layer under the same name.
    push_three_layers(&s, b"layer three, second version\n", 2).await;
    proxy.clear_requests();
    s.rpull(&image);
    assert_eq!(
        s.snapshot_dirs(),
        0,
        "a layer was unpacked: {}",
        tail(&s.daemon.log(), 40)
    );
    // The new layers' TOCs are read once, the others' not again.
    let new: Vec<usize> = manifest_layers(&image)
        .iter()
        .map(|l| usize::from(!first.contains(l)))
        .collect();
    assert_eq!(new[2], 1, "the third layer is new");
    let (manifests, _, tocs) = skiff_requests_settled(&proxy, &image, &(1, 1, new.clone()));
    assert_eq!(manifests, 1, "{}", tail(&s.daemon.log(), 40));
    assert_eq!(tocs, new, "{}", tail(&s.daemon.log(), 40));
    let out = s.run(&image, "three2", &["cat", "/opt/three"]);
    assert_eq!(out, "layer three, second version\n");
}

/// A Prepare is answered once the manifest shows the layers carry TOCs, before the
/// TOCs are read. When a TOC then does not verify (here the registry flips a byte of
/// the third layer's every read), the container on the image fails to start (ctr
/// reports it; nothing is served in the layer's place) and the daemon carries on:
/// once the registry serves the layer intact, the next container runs. When the TOC
/// fails before the pull's last Prepare (the build is quicker than containerd), the
/// pull itself fails, naming the TOC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_toc_that_fails_after_the_commit_fails_the_container_cleanly() {
    if !tools() {
        return;
    }
    let (s, proxy, image) = three_layers_behind_a_proxy().await;
    let layers = manifest_layers(&image);
    proxy.add_rule(Rule::new(&layers[2].0, Fault::CorruptByte, None));

    let pulled = s.rpull_command(&image).output().unwrap();
    if !pulled.status.success() {
        // The other timing: the TOC failed before the pull's last Prepare, which then
        // fails naming the layer and its TOC (the layer cannot be lazy, and the view
        // of the chain below it is not built from a failed image). Nothing ran.
        let err = String::from_utf8_lossy(&pulled.stderr);
        assert!(
            err.contains(&layers[2].0) && err.contains("TOC"),
            "the failed pull does not name the bad TOC: {}",
            describe(&pulled)
        );
        return;
    }
    assert_eq!(s.snapshot_dirs(), 0, "{}", tail(&s.daemon.log(), 40));
    let out = s
        .containerd
        .ctr()
        .args(["run", "--snapshotter", "skiff", "--rm", &image, "bad1"])
        .args(["cat", "/opt/three"])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "a container ran on a layer whose TOC does not verify: {}",
        describe(&out)
    );

    proxy.clear_rules();
    let out = s.run(&image, "good1", &["cat", "/opt/three"]);
    assert_eq!(out, "layer three\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpull_of_gzip_with_published_index_runs_lazily() {
    lazy_pull_and_run(Format::GzipIndexed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpull_of_estargz_runs_lazily() {
    lazy_pull_and_run(Format::Estargz).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpull_of_zstd_chunked_runs_lazily() {
    lazy_pull_and_run(Format::ZstdChunked).await;
}

/// The Kubernetes path: containerd's CRI plugin on the skiff snapshotter, driven
/// through the CRI API as the kubelet does. The sandbox ("pause") image is busybox
/// sleeping, pushed to the test registry and named in containerd's config; the pod
/// uses the host network (no CNI). The app container's log shows its output, it
/// exits 0, and its image was pulled lazily.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cri_runs_a_pod_on_lazily_pulled_images() {
    use skiff_tests::cri::v1 as cri;
    if !tools() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let reg = Registry::start();
    let pause = skiff_tests::fixtures::build_image(
        skiff_tests::fixtures::busybox_layers(0),
        &skiff_proto::image::Platform::host(),
        &["/bin/sleep", "1000000"],
    );
    skiff_tests::fixtures::push_built(
        &skiff_tests::client(&reg.host()),
        "ctd/pause",
        "latest",
        &pause,
    )
    .await;
    push_busybox(&reg.host(), "ctd/app", 8 << 20).await;
    let publisher = Skiff::new(&work.path().join("publisher"));
    let out = publisher.run(&["index", "--push", "-q", &reg.reference("ctd/app:latest")]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let proxy = FaultProxy::start(reg.addr());
    let app = format!("{}/ctd/app:latest", proxy.host());
    let layers = manifest_layers(&app);
    let total: u64 = layers.iter().map(|l| l.1).sum();
    proxy.clear_requests();

    let root = work.path().join("skiff");
    std::fs::create_dir_all(&root).unwrap();
    let daemon = SkiffDaemon::start(Skiff::new(&root));
    let containerd = Containerd::start(
        &work.path().join("containerd"),
        &daemon.socket(),
        Some(&skiff_tests::containerd::CriConfig {
            sandbox_image: reg.reference("ctd/pause:latest"),
            plain_http: vec![reg.host(), proxy.host()],
        }),
    );
    let (mut runtime, mut images) = skiff_tests::cri::connect(containerd.socket()).await;
    let version = skiff_tests::cri::wait_initialized(&mut runtime, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("CRI version: {e}\n{}", tail(&containerd.log(), 40)));
    eprintln!("CRI: {version:?}");

    let pulled = images
        .pull_image(cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: app.clone(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("PullImage: {e}\n{}", tail(&containerd.log(), 40)))
        .into_inner();
    let (pull_bytes, whole) = layer_bytes(&proxy.requests(), &layers);
    assert!(whole.is_empty(), "layers read whole by the pull: {whole:?}");

    let logs = work.path().join("pod-logs");
    std::fs::create_dir_all(&logs).unwrap();
    let sandbox_config = cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: "skiff-pod".into(),
            uid: "skiff-pod-uid".into(),
            namespace: "default".into(),
            attempt: 0,
        }),
        // A host-network pod shares the host's UTS namespace: no hostname of its own
        // (the kubelet leaves it empty too).
        log_directory: logs.display().to_string(),
        linux: Some(cri::LinuxPodSandboxConfig {
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    network: cri::NamespaceMode::Node as i32,
                    pid: cri::NamespaceMode::Pod as i32,
                    ipc: cri::NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let pod = runtime
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(sandbox_config.clone()),
            runtime_handler: String::new(),
        })
        .await
        .unwrap_or_else(|e| {
            panic!(
                "RunPodSandbox: {e}\ncontainerd:\n{}\nskiff:\n{}",
                tail(&containerd.log(), 40),
                tail(&daemon.log(), 40)
            )
        })
        .into_inner()
        .pod_sandbox_id;

    let created = runtime
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(cri::ContainerConfig {
                metadata: Some(cri::ContainerMetadata {
                    name: "app".into(),
                    attempt: 0,
                }),
                image: Some(cri::ImageSpec {
                    image: pulled.image_ref.clone(),
                    ..Default::default()
                }),
                command: vec![
                    "/bin/sh".into(),
                    "-c".into(),
                    "cat /etc/motd; ls /bin".into(),
                ],
                log_path: "app.log".into(),
                ..Default::default()
            }),
            sandbox_config: Some(sandbox_config.clone()),
        })
        .await
        .unwrap_or_else(|e| panic!("CreateContainer: {e}\n{}", tail(&containerd.log(), 40)))
        .into_inner()
        .container_id;
    runtime
        .start_container(cri::StartContainerRequest {
            container_id: created.clone(),
        })
        .await
        .unwrap_or_else(|e| panic!("StartContainer: {e}\n{}", tail(&containerd.log(), 40)));

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let status = loop {
        let st = runtime
            .container_status(cri::ContainerStatusRequest {
                container_id: created.clone(),
                verbose: false,
            })
            .await
            .unwrap()
            .into_inner()
            .status
            .expect("a container status");
        if st.state == cri::ContainerState::ContainerExited as i32 {
            break st;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still running: {st:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(status.exit_code, 0, "{status:?}");
    // CRI's log format: "TIMESTAMP stdout F LINE".
    let log = std::fs::read_to_string(logs.join("app.log")).unwrap();
    assert!(log.contains(" stdout F hello from layer two"), "{log}");
    assert!(log.contains(" stdout F busybox"), "{log}");

    let (served, whole) = layer_bytes(&proxy.requests(), &layers);
    assert!(whole.is_empty(), "layers read whole: {whole:?}");
    eprintln!(
        "CRI: the pull read {pull_bytes} and the pod {} of {total} layer bytes",
        served - pull_bytes
    );
    assert!(served < total / 2, "served {served} of {total} layer bytes");
    let listed = containerd.ok(Command::new("ctr")
        .arg("-a")
        .arg(containerd.socket())
        .args([
            "-n",
            "k8s.io",
            "snapshots",
            "--snapshotter",
            "skiff",
            "info",
            &layers_chain_top(&containerd),
        ]));
    assert!(listed.contains("containerd.io/snapshot/remote"), "{listed}");

    runtime
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .unwrap();
    runtime
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod,
        })
        .await
        .unwrap();
}

/// The name of the top committed snapshot in containerd's `k8s.io` namespace that
/// has a parent (a lazily committed layer of the app or sandbox image).
fn layers_chain_top(containerd: &Containerd) -> String {
    let out = containerd.ok(Command::new("ctr")
        .arg("-a")
        .arg(containerd.socket())
        .args(["-n", "k8s.io", "snapshots", "--snapshotter", "skiff", "ls"]));
    out.lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() == 3 && f[2] == "Committed")
        .map(|f| f[0].to_string())
        .unwrap_or_else(|| panic!("no committed snapshot with a parent: {out}"))
}

/// Bytes of `/data/big` each round of [`reader_script`] reads.
const SLICE: usize = 64 << 10;

/// sha256 (hex) of `data`.
fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(data))
}

/// The shell loop the container runs until `/stop` appears: each round reads one
/// slice of `/data/big` (uncached on the first pass over the file, from the page
/// cache after), and the small lower files and the busybox binary, each checked
/// against `slices` and `files` (`(path, sha256)`). Keeps its round count in
/// `/tmp/rounds`, prints its counts at the end; exits 1 on any failed or wrong read.
fn reader_script(slices: &[String], files: &[(&str, String)]) -> String {
    let mut s = String::new();
    for (k, sum) in slices.iter().enumerate() {
        s.push_str(&format!("s{k}={sum}\n"));
    }
    let paths: Vec<&str> = files.iter().map(|(p, _)| *p).collect();
    let want: Vec<&str> = files.iter().map(|(_, h)| h.as_str()).collect();
    s.push_str(&format!(
        r#"files="{want}"
i=0; bad=0
while [ ! -e /stop ]; do
  k=$((i % {n}))
  got=$(busybox dd if=/data/big bs={SLICE} skip=$k count=1 2>/dev/null | busybox sha256sum)
  eval want=\$s$k
  [ "${{got%% *}}" = "$want" ] || {{ bad=$((bad+1)); echo "BAD slice $k: $got" >&2; }}
  got=$(busybox sha256sum {paths} | while read -r h f; do printf '%s ' "$h"; done)
  [ "$got" = "$files " ] || {{ bad=$((bad+1)); echo "BAD files: $got" >&2; }}
  i=$((i+1))
  echo $i > /tmp/rounds
done
echo "rounds=$i bad=$bad"
[ $bad -eq 0 ]
"#,
        want = want.join(" "),
        n = slices.len(),
        paths = paths.join(" "),
    ));
    s
}

/// Issue 11: a container started by containerd on a lazily pulled image reads its
/// lower files in a loop while the skiff daemon (its snapshotter, serving the
/// container's lower view) is SIGKILLed twice and SIGTERMed once, each time started
/// again: the view is served again by the next daemon, no read fails or is wrong,
/// and the container exits 0. After each restart containerd reaches the snapshotter
/// again and its snapshots are all there; once the container is gone its view is
/// unmounted and forgotten.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_reads_on_while_the_snapshotter_restarts() {
    if !tools() {
        return;
    }
    let mut s = Setup::new();
    let tag = push_lazy_image(&s, Format::GzipIndexed).await;
    let image = s.reg.reference(&format!("ctd/lazy:{tag}"));
    s.rpull(&image);
    let c = &s.containerd;

    let big = skiff_tests::fixtures::pseudo_random(7, 8 << 20);
    let slices: Vec<String> = big.chunks(SLICE).map(sha256_hex).collect();
    let busybox = std::fs::read("/bin/busybox").unwrap();
    let files = [
        ("/etc/motd", sha256_hex(b"hello from layer two\n")),
        (
            "/etc/passwd",
            sha256_hex(b"root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n"),
        ),
        ("/etc/group", sha256_hex(b"root:x:0:\nalice:x:1000:\n")),
        ("/bin/busybox", sha256_hex(&busybox)),
    ];
    let name = "restarts";
    let mut run = skiff_tests::guard::KillOnDrop::spawn(
        c.ctr()
            .args(["run", "--snapshotter", "skiff", "--rm", &image, name])
            .args(["sh", "-c", &reader_script(&slices, &files)])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped()),
    );
    // The container's root filesystem, as containerd's runc shim mounts it.
    let rootfs = s
        .work
        .path()
        .join("containerd/state/io.containerd.runtime.v2.task")
        .join(skiff_tests::containerd::NAMESPACE)
        .join(name)
        .join("rootfs");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !rootfs.join("etc/motd").exists() {
        assert!(run.try_wait().unwrap().is_none(), "ctr run ended early");
        assert!(
            Instant::now() < deadline,
            "no container rootfs at {}:\n{}",
            rootfs.display(),
            tail(&s.containerd.log(), 30)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(1500));

    for round in 0..3 {
        if round < 2 {
            s.daemon.kill();
        } else {
            s.daemon.terminate();
        }
        // Reads issued now wait in the kernel for the next daemon.
        std::thread::sleep(Duration::from_millis(700));
        s.daemon.restart();
        // containerd reconnects to the snapshotter; every snapshot is still there
        // (the image's committed layers and the container's active one).
        let deadline = Instant::now() + Duration::from_secs(30);
        let listed = loop {
            let out = s
                .containerd
                .ctr()
                .args(["snapshots", "--snapshotter", "skiff", "ls"])
                .output()
                .unwrap();
            if out.status.success() {
                break String::from_utf8_lossy(&out.stdout).into_owned();
            }
            assert!(
                Instant::now() < deadline,
                "containerd does not reach the snapshotter again: {}",
                describe(&out)
            );
            std::thread::sleep(Duration::from_millis(200));
        };
        assert_eq!(listed.matches("Committed").count(), 2, "{listed}");
        assert!(
            listed
                .lines()
                .any(|l| l.starts_with(name) && l.contains("Active")),
            "{listed}"
        );
        std::thread::sleep(Duration::from_millis(1500));
    }
    let picked_up = s.daemon.log().matches("view picked up").count();
    assert_eq!(picked_up, 3, "{}", tail(&s.daemon.log(), 40));
    // Once past the first pass over the file (so cached slices are read too).
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let rounds: usize = std::fs::read_to_string(rootfs.join("tmp/rounds"))
            .ok()
            .and_then(|r| r.trim().parse().ok())
            .unwrap_or(0);
        if rounds > slices.len() {
            break;
        }
        assert!(run.try_wait().unwrap().is_none(), "ctr run ended early");
        assert!(Instant::now() < deadline, "only {rounds} rounds");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::fs::write(rootfs.join("stop"), b"").unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while run.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "the container still runs:\n{}",
            tail(&s.daemon.log(), 40)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = std::mem::replace(&mut run.0, Command::new("true").spawn().unwrap())
        .wait_with_output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("container: {}", stdout.trim());
    assert!(
        out.status.success() && stdout.contains("bad=0"),
        "{}\nskiff daemon:\n{}",
        describe(&out),
        tail(&s.daemon.log(), 60)
    );
    let rounds: usize = stdout
        .split_whitespace()
        .find_map(|w| w.strip_prefix("rounds="))
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(
        rounds > slices.len(),
        "only {rounds} rounds: {}",
        describe(&out)
    );

    // The container is gone: once containerd has removed its snapshot, its view is
    // unmounted and its record and connection forgotten.
    let views = s.daemon.skiff.root.join("snapshotter/views");
    let records = s.daemon.skiff.root.join("daemon/mounts");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mounted = skiff_tests::guard::mounts_under(&views);
        let recorded = std::fs::read_dir(&records).map(|d| d.count()).unwrap_or(0);
        if mounted.is_empty() && recorded == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "views left: {mounted:?}, {recorded} record(s)"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
