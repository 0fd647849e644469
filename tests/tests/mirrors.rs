//! Mirrors and pull-through caches: hosts that ignore Range (a cold docker-registry
//! proxy answers 200 with the whole blob), mirrors configured through containerd's
//! `hosts.toml`, fallback to the registry when a mirror is gone, and Bearer tokens that
//! expire while reads go on.

use skiff_proto::blob::BlobReader;
use skiff_proto::digest::Digest;
use skiff_proto::image::Platform;
use skiff_proto::reference::Reference;
use skiff_proto::registry::{Client, ClientOptions, RegistryError, RemoteBlob};
use skiff_tests::cli::Skiff;
use skiff_tests::fixtures::{self, build_image, push_built, Entry, Layer};
use skiff_tests::proxy::{Fault, FaultProxy, Rule};
use skiff_tests::registry::{Registry, RegistryOptions};
use skiff_tests::test_client_options;
use skiff_tests::token::{IssuerOptions, TokenIssuer};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A 3 MiB incompressible file and a small one, in one gzip layer.
fn layers() -> Vec<Layer> {
    vec![Layer::tar_gzip(&[
        Entry::dir("data", 0o755),
        Entry::file("data/big.bin", &fixtures::pseudo_random(11, 3 << 20), 0o644),
        Entry::file("data/hello.txt", b"hello through the mirror\n", 0o644),
    ])]
}

fn client_for(host: &str, hosts_dir: Option<&Path>) -> Client {
    Client::new(
        host,
        ClientOptions {
            hosts_dir: hosts_dir.map(Path::to_path_buf),
            ..test_client_options()
        },
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_ignoring_range_is_read_whole_once_and_verified() {
    let reg = Registry::start();
    let img = fixtures::push_image(&reg.host(), "norange:v1", fixtures::sample_layers()).await;
    let proxy = FaultProxy::start(reg.addr());
    proxy.add_rule(Rule::new("/blobs/", Fault::StripRange, None));
    let c = Arc::new(client_for(&proxy.host(), None));
    let d = img.manifest.layers[1].digest;
    let blob = &img.layers[1].blob;
    let before = c.stats().bytes();
    let got = c.get_blob_range("norange", d, 10, 100).await.unwrap();
    assert_eq!(&got[..], &blob[10..110]);
    // The whole blob was read (to verify it, and so a cache finishes storing it).
    assert_eq!(c.stats().bytes() - before, blob.len() as u64);

    // Concurrent reads of one blob while the first answer ignores Range: all get their
    // bytes; the host was asked without Range honoured once.
    proxy.clear_rules();
    proxy.clear_requests();
    proxy.add_rule(Rule::new("/blobs/", Fault::StripRange, Some(1)));
    let rb = Arc::new(RemoteBlob::new(
        Arc::clone(&c),
        "norange",
        d,
        blob.len() as u64,
        tokio::runtime::Handle::current(),
    ));
    let mut tasks = Vec::new();
    for i in 0..8u64 {
        let rb = Arc::clone(&rb);
        tasks.push(tokio::task::spawn_blocking(move || {
            rb.read_at(i * 100_000, 4096).unwrap()
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let off = i * 100_000;
        assert_eq!(t.await.unwrap(), &blob[off..off + 4096]);
    }
    let stripped = proxy
        .requests()
        .iter()
        .filter(|r| r.fault == Some(Fault::StripRange))
        .count();
    assert_eq!(stripped, 1);

    // A blob whose bytes do not match its digest is refused, not served in part.
    let d0 = img.manifest.layers[0].digest;
    let path = reg.stored_blob(&d0);
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    proxy.add_rule(Rule::new("/blobs/", Fault::StripRange, None));
    let err = c.get_blob_range("norange", d0, 0, 10).await.unwrap_err();
    assert!(matches!(err, RegistryError::Digest(_)), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_arriving_during_a_whole_stream_take_their_bytes_from_it() {
    // A host that always ignores Range and streams slowly (a cold pull-through cache):
    // reads that come while the first one streams the blob, for ranges it has not
    // passed yet, are answered from that stream, with no request of their own.
    let reg = Registry::start();
    let img = fixtures::push_image(&reg.host(), "ride:v1", layers()).await;
    let proxy = FaultProxy::start(reg.addr());
    let c = Arc::new(client_for(&proxy.host(), None));
    let d = img.manifest.layers[0].digest;
    let blob = img.layers[0].blob.clone();
    let size = blob.len() as u64;
    assert!(size > 2 << 20, "{size}");
    proxy.add_rule(Rule::new(
        "/blobs/",
        Fault::StripRangeSlowly(Duration::from_millis(20)),
        None,
    ));
    let before = c.stats().bytes();
    let first = {
        let c = Arc::clone(&c);
        tokio::spawn(async move { c.get_blob_range("ride", d, 0, 4096).await })
    };
    while proxy.count(Some("GET"), "/blobs/") == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut riders = Vec::new();
    for i in 0..6u64 {
        let c = Arc::clone(&c);
        let off = size / 2 + i * 100_000;
        riders.push((
            off,
            tokio::spawn(async move { c.get_blob_range("ride", d, off, 8192).await }),
        ));
    }
    assert_eq!(&first.await.unwrap().unwrap()[..], &blob[..4096]);
    for (off, t) in riders {
        let got = t.await.unwrap().unwrap();
        assert_eq!(
            &got[..],
            &blob[off as usize..off as usize + 8192],
            "at {off}"
        );
    }
    assert_eq!(
        proxy.count(Some("GET"), "/blobs/"),
        1,
        "riders asked the host"
    );
    assert_eq!(c.stats().bytes() - before, size, "the blob came once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_target_ignoring_range_is_read_whole() {
    let reg = Registry::start();
    let img = fixtures::push_image(&reg.host(), "cdn/app:v1", fixtures::sample_layers()).await;
    let target = FaultProxy::start(reg.addr());
    target.add_rule(Rule::new("/blobs/", Fault::StripRange, None));
    let front = FaultProxy::start(reg.addr());
    front.add_rule(
        Rule::new("/blobs/sha256:", Fault::Redirect(target.base_url()), None).method("GET"),
    );
    let c = client_for(&front.host(), None);
    let d = img.manifest.layers[1].digest;
    let got = c.get_blob_range("cdn/app", d, 5000, 300).await.unwrap();
    assert_eq!(&got[..], &img.layers[1].blob[5000..5300]);
    assert!(target.count(Some("GET"), "/blobs/") >= 1);
}

/// `<dir>/<registry>/hosts.toml` naming `mirror` first and `server` as the registry.
fn write_hosts(dir: &Path, registry: &str, server: &str, mirror: &str, caps: &str) {
    let d = dir.join(registry);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(
        d.join("hosts.toml"),
        format!(
            "server = \"http://{server}\"\n\n[host.\"http://{mirror}\"]\n  capabilities = {caps}\n"
        ),
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_toml_mirror_is_used_first_with_ns_and_without_upstream_credentials() {
    // The registry wants Basic credentials; the mirror (a pre-seeded cache sharing its
    // storage) wants none and must never see the registry's.
    let upstream = Registry::start_basic("up", "secret");
    let creds = Some(skiff_proto::registry::Credentials::basic("up", "secret"));
    let pusher = Client::new(
        &upstream.host(),
        ClientOptions {
            credentials: creds.clone(),
            ..test_client_options()
        },
    )
    .unwrap();
    let img = build_image(fixtures::sample_layers(), &Platform::host(), &["/bin/sh"]);
    push_built(&pusher, "lib/app", "v1", &img).await;
    let mirror = Registry::start_with(RegistryOptions {
        storage: Some(upstream.storage().to_path_buf()),
        ..Default::default()
    });
    let mp = FaultProxy::start(mirror.addr());
    let direct = FaultProxy::start(upstream.addr());
    let hosts = tempfile::tempdir().unwrap();
    // The reference names the registry by a name no one listens on: only hosts.toml
    // says where its server and mirror are.
    let registry = "registry.invalid:5000";
    write_hosts(
        hosts.path(),
        registry,
        &direct.host(),
        &mp.host(),
        "[\"pull\"]",
    );
    let c = Client::new(
        registry,
        ClientOptions {
            hosts_dir: Some(hosts.path().to_path_buf()),
            credentials: creds,
            ..test_client_options()
        },
    )
    .unwrap();
    assert_eq!(c.hosts(), [mp.host(), direct.host()]);
    let r = Reference::parse(&format!("{registry}/lib/app:v1")).unwrap();
    let got = c.resolve(&r, None).await.unwrap();
    assert_eq!(got.manifest_digest, img.digest);
    // A pull-only mirror is not asked for the tag; the digest-addressed rest is.
    assert_eq!(mp.count(None, "/manifests/v1"), 0);
    assert!(direct.count(None, "/manifests/v1") > 0);
    assert_eq!(
        c.served_by(&img.digest).as_deref(),
        Some(direct.host().as_str())
    );
    for (desc, layer) in got.layers().iter().zip(&img.layers) {
        assert_eq!(
            c.get_blob("lib/app", desc.digest).await.unwrap(),
            layer.blob
        );
        assert_eq!(
            c.served_by(&desc.digest).as_deref(),
            Some(mp.host().as_str())
        );
    }
    let to_mirror = mp.requests();
    assert!(!to_mirror.is_empty());
    for r in &to_mirror {
        assert!(r.path.contains("ns=registry.invalid%3A5000"), "{}", r.path);
        assert!(
            r.authorization.is_none(),
            "upstream credentials sent to the mirror"
        );
    }
    assert_eq!(direct.count(None, "/blobs/"), 0);
    // The registry itself got the credentials.
    assert!(direct.requests().iter().any(|r| r.authorization.is_some()));

    // The mirror fails: the next host (the registry) serves, and the mirror is skipped
    // for a while after.
    mp.add_rule(Rule::new("/blobs/", Fault::Status(503), None));
    let d = got.layers()[0].digest;
    assert_eq!(c.get_blob("lib/app", d).await.unwrap(), img.layers[0].blob);
    assert_eq!(c.served_by(&d).as_deref(), Some(direct.host().as_str()));
    let mirror_tries = mp.count(None, "/blobs/");
    assert_eq!(c.get_blob("lib/app", d).await.unwrap(), img.layers[0].blob);
    assert_eq!(
        mp.count(None, "/blobs/"),
        mirror_tries,
        "failed mirror skipped"
    );
}

/// `skiff mount IMAGE DIR -d`, then reads `files` and unmounts. Returns what was read
/// and the hosts `skiff stats` says served the layers read (one per layer with requests).
fn mount_read_and_see_hosts(
    skiff: &Skiff,
    image: &str,
    hosts_dir: &Path,
    dir: &Path,
) -> (Vec<Vec<u8>>, Vec<String>) {
    std::fs::create_dir_all(dir).unwrap();
    let out = skiff
        .command()
        .args(["mount", image])
        .arg(dir)
        .arg("-d")
        .arg("--hosts-dir")
        .arg(hosts_dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "skiff mount: {}", text(&out));
    let files = ["data/hello.txt", "data/big.bin"];
    let read: Vec<std::io::Result<Vec<u8>>> =
        files.iter().map(|f| std::fs::read(dir.join(f))).collect();
    // The stats file is rewritten once a second.
    let mut hosts = Vec::new();
    for _ in 0..30 {
        let out = skiff.run(&["stats", "--json", &dir.to_string_lossy()]);
        let snap: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let layers = snap["layers"].as_array().cloned().unwrap_or_default();
        hosts = layers
            .iter()
            .filter(|l| l["requests"].as_u64().unwrap_or(0) > 0)
            .map(|l| l["served_by"].as_str().unwrap_or("none").to_string())
            .collect();
        if !hosts.is_empty() && hosts.iter().all(|h| h != "none") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let umount = skiff.run(&["umount", &dir.to_string_lossy()]);
    if !umount.status.success() {
        let _ = Command::new("fusermount3").arg("-uz").arg(dir).status();
    }
    let read = read
        .into_iter()
        .zip(files)
        .map(|(r, f)| r.unwrap_or_else(|e| panic!("reading {f}: {e}")))
        .collect();
    (read, hosts)
}

/// A docker-registry pull-through cache of a fresh registry, configured in `hosts`
/// (containerd's layout) as the mirror that pulls and resolves for it.
struct PullThrough {
    upstream: Registry,
    /// Counts what the cache asks of the registry.
    up: FaultProxy,
    mirror: Registry,
    /// Counts what skiff asks of the cache.
    mp: FaultProxy,
    /// Where skiff reaches the registry itself (hosts.toml `server`), counted.
    direct: FaultProxy,
    work: tempfile::TempDir,
    hosts: PathBuf,
}

fn pull_through() -> PullThrough {
    let upstream = Registry::start();
    let up = FaultProxy::start(upstream.addr());
    let mirror = Registry::start_with(RegistryOptions {
        proxy_remote: Some(up.base_url()),
        ..Default::default()
    });
    let mp = FaultProxy::start(mirror.addr());
    let direct = FaultProxy::start(upstream.addr());
    let work = tempfile::tempdir().unwrap();
    let hosts = work.path().join("certs.d");
    write_hosts(
        &hosts,
        &upstream.host(),
        &direct.host(),
        &mp.host(),
        "[\"pull\", \"resolve\"]",
    );
    PullThrough {
        upstream,
        up,
        mirror,
        mp,
        direct,
        work,
        hosts,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn estargz_through_a_cold_then_warm_pull_through_cache_and_without_it() {
    let PullThrough {
        upstream,
        up,
        mirror,
        mp,
        direct,
        work,
        hosts,
    } = pull_through();

    let image = build_image(layers(), &Platform::host(), &["/bin/sh"]);
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
    assert_eq!(out.status.code(), Some(0), "skiff convert: {}", text(&out));
    direct.clear_requests();
    up.clear_requests();

    let want_big = fixtures::pseudo_random(11, 3 << 20);
    let want_hello = b"hello through the mirror\n".to_vec();
    let esgz = upstream.reference("app:esgz");
    for (round, name) in ["cold", "warm"].iter().enumerate() {
        let skiff = Skiff::new(&work.path().join(name));
        let (got, served) = mount_read_and_see_hosts(
            &skiff,
            &esgz,
            &hosts,
            &work.path().join(format!("mnt-{name}")),
        );
        assert!(
            !served.is_empty() && served.iter().all(|h| h.contains(&mp.host())),
            "{name}: skiff stats says the layers came from {served:?}, not the mirror {}",
            mp.host()
        );
        assert_eq!(got[0], want_hello, "{name}");
        assert!(got[1] == want_big, "{name}: big.bin differs");
        assert!(
            mp.count(Some("GET"), "/blobs/") > 0,
            "{name}: mirror not used"
        );
        assert!(
            mp.count(Some("GET"), "/manifests/esgz") > 0,
            "{name}: tag not resolved there"
        );
        assert_eq!(
            direct.count(None, "/blobs/"),
            0,
            "{name}: the registry was asked directly"
        );
        if round == 0 {
            // Lazy reads asked the cold cache for ranges (it answers those with the
            // whole blob), and the cache fetched the layers from the registry.
            assert!(mp.requests().iter().any(|r| r.range.is_some()));
            assert!(up.count(Some("GET"), "/blobs/") > 0);
        }
    }

    // The mirror goes away: the registry itself serves.
    drop(mp);
    drop(mirror);
    let skiff = Skiff::new(&work.path().join("no-mirror"));
    let (got, served) =
        mount_read_and_see_hosts(&skiff, &esgz, &hosts, &work.path().join("mnt-no-mirror"));
    assert!(
        !served.is_empty() && served.iter().all(|h| h.contains(&direct.host())),
        "without the mirror skiff stats says the layers came from {served:?}"
    );
    assert_eq!(got[0], want_hello);
    assert!(got[1] == want_big);
    assert!(direct.count(Some("GET"), "/blobs/") > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_reads_outlive_short_lived_tokens() {
    let issuer = TokenIssuer::start(IssuerOptions {
        // Claims 5 minutes, so the client only learns of expiry from a 401.
        expires_in: 300,
        real_lifetime: Some(2),
        ..Default::default()
    });
    let reg = Registry::start_with(RegistryOptions {
        auth: issuer.registry_auth(),
        ..Default::default()
    });
    let c = Arc::new(client_for(&reg.host(), None));
    let image = build_image(fixtures::sample_layers(), &Platform::host(), &["/bin/sh"]);
    push_built(&c, "tok/app", "v1", &image).await;
    let layer = image.layers[1].blob.clone();
    let rb = RemoteBlob::new(
        Arc::clone(&c),
        "tok/app",
        Digest::of(&layer),
        layer.len() as u64,
        tokio::runtime::Handle::current(),
    );
    let before = issuer.requests().len();
    let reads = tokio::task::spawn_blocking(move || {
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < Duration::from_secs(6) {
            let off = (n * 7919) % (layer.len() as u64 - 512);
            let got = rb.read_at(off, 512).expect("read after token expiry");
            assert_eq!(got, &layer[off as usize..off as usize + 512]);
            n += 1;
            std::thread::sleep(Duration::from_millis(100));
        }
        n
    })
    .await
    .unwrap();
    assert!(reads > 20, "{reads} reads");
    // Tokens were renewed after the registry refused expired ones.
    assert!(
        issuer.requests().len() - before >= 2,
        "{} token requests",
        issuer.requests().len() - before
    );
}

/// Runs `skopeo` with `args`, failing the test with its output if it fails.
fn skopeo(args: &[&str]) {
    let out = Command::new("skopeo").args(args).output().unwrap();
    assert!(out.status.success(), "skopeo {args:?}: {}", text(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_lazy_format_runs_through_a_cold_then_warm_pull_through_cache() {
    if !skiff_tests::tools_or_skip(&["skopeo"], "containers need root") {
        return;
    }
    let PullThrough {
        upstream,
        // Kept alive: the cache reaches the registry through it.
        up: _up,
        mirror,
        mp,
        direct,
        work,
        hosts,
    } = pull_through();

    // The three lazy formats of one busybox image: eStargz (skiff convert), zstd:chunked
    // (skopeo) and gzip with a published index (skiff index --push).
    let image = fixtures::push_busybox(&upstream.host(), "app", 2 << 20).await;
    let tools = Skiff::new(&work.path().join("tools"));
    let out = tools.run(&[
        "convert",
        "-q",
        &upstream.reference("app:latest"),
        &upstream.reference("app:esgz"),
    ]);
    assert_eq!(out.status.code(), Some(0), "skiff convert: {}", text(&out));
    let layout = work.path().join("layout");
    fixtures::write_oci_layout(&layout, "src", &image);
    let zc = work.path().join("zc");
    skopeo(&[
        "copy",
        "-q",
        "--dest-compress-format",
        "zstd:chunked",
        "--dest-compress",
        &format!("oci:{}:src", layout.display()),
        &format!("oci:{}:zc", zc.display()),
    ]);
    skopeo(&[
        "copy",
        "-q",
        "--preserve-digests",
        "--dest-tls-verify=false",
        &format!("oci:{}:zc", zc.display()),
        &format!("docker://{}", upstream.reference("app:zc")),
    ]);
    let out = tools.run(&["index", "-q", "--push", &upstream.reference("app:latest")]);
    assert_eq!(out.status.code(), Some(0), "skiff index: {}", text(&out));

    for tag in ["esgz", "zc", "latest"] {
        let reference = upstream.reference(&format!("app:{tag}"));
        for round in ["cold", "warm"] {
            direct.clear_requests();
            mp.clear_requests();
            let skiff = Skiff::new(&work.path().join(format!("{tag}-{round}")));
            let out = skiff
                .command()
                .args(["run", "--rm", "--hosts-dir"])
                .arg(&hosts)
                .args([&reference, "cat", "/etc/motd"])
                .output()
                .unwrap();
            assert_eq!(out.status.code(), Some(0), "{tag} {round}: {}", text(&out));
            assert_eq!(out.stdout, b"hello from layer two\n", "{tag} {round}");
            assert!(
                mp.count(Some("GET"), "/blobs/") > 0,
                "{tag} {round}: mirror not used"
            );
            assert_eq!(
                direct.count(None, "/blobs/"),
                0,
                "{tag} {round}: the registry was asked for blobs directly"
            );
            if tag == "latest" {
                // The published index came through the mirror (found by its fallback
                // tag), so no gzip layer had to be read whole to index it: once the
                // mirror holds the blobs, every layer read is a Range read.
                assert!(
                    mp.count(Some("GET"), "/manifests/sha256-") > 0,
                    "{round}: published index not looked up through the mirror"
                );
                if round == "warm" {
                    for l in &image.layers {
                        let hex = Digest::of(&l.blob).hex();
                        for r in mp.requests().iter().filter(|r| r.path.contains(&hex)) {
                            assert!(r.range.is_some(), "layer read whole: {}", r.path);
                        }
                    }
                }
            }
        }
    }

    // The mirror goes away: every format still runs, from the registry itself.
    drop(mp);
    drop(mirror);
    for tag in ["esgz", "zc", "latest"] {
        direct.clear_requests();
        let skiff = Skiff::new(&work.path().join(format!("{tag}-no-mirror")));
        let out = skiff
            .command()
            .args(["run", "--rm", "--hosts-dir"])
            .arg(&hosts)
            .args([
                &upstream.reference(&format!("app:{tag}")),
                "cat",
                "/etc/motd",
            ])
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{tag} without mirror: {}",
            text(&out)
        );
        assert_eq!(out.stdout, b"hello from layer two\n");
        assert!(
            direct.count(Some("GET"), "/blobs/") > 0,
            "{tag}: registry unused"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_hosts_toml_is_followed_without_a_restart() {
    let upstream = Registry::start();
    let mirror = Registry::start_with(RegistryOptions {
        storage: Some(upstream.storage().to_path_buf()),
        ..Default::default()
    });
    let mp = FaultProxy::start(mirror.addr());
    let direct = FaultProxy::start(upstream.addr());
    let image = build_image(fixtures::sample_layers(), &Platform::host(), &["/bin/sh"]);
    push_built(&skiff_tests::client(&upstream.host()), "app", "v1", &image).await;
    let hosts = tempfile::tempdir().unwrap();
    let registry = "registry.invalid:5000";
    let file = hosts.path().join(registry).join("hosts.toml");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(&file, format!("server = \"http://{}\"\n", direct.host())).unwrap();
    let c = client_for(registry, Some(hosts.path()));
    let d = Digest::of(&image.layers[0].blob);
    assert_eq!(c.get_blob("app", d).await.unwrap(), image.layers[0].blob);
    assert_eq!(c.served_by(&d).as_deref(), Some(direct.host().as_str()));

    // A mirror is added: after the recheck period, requests go there.
    let wait = || tokio::time::sleep(Duration::from_millis(1100));
    wait().await;
    std::fs::write(
        &file,
        format!(
            "server = \"http://{}\"\n\n[host.\"http://{}\"]\n  capabilities = [\"pull\"]\n",
            direct.host(),
            mp.host()
        ),
    )
    .unwrap();
    wait().await;
    assert_eq!(c.get_blob("app", d).await.unwrap(), image.layers[0].blob);
    assert_eq!(c.served_by(&d).as_deref(), Some(mp.host().as_str()));
    assert_eq!(c.hosts(), [mp.host(), direct.host()]);

    // A half-written edit does not break anything: the hosts in use stay.
    std::fs::write(&file, "server = \"http://").unwrap();
    wait().await;
    assert_eq!(c.get_blob("app", d).await.unwrap(), image.layers[0].blob);
    assert_eq!(c.hosts(), [mp.host(), direct.host()]);

    // The file goes: only the registry as named is left (no one listens there, so
    // the request fails, which shows the mirror and `server` are no longer used).
    std::fs::remove_file(&file).unwrap();
    wait().await;
    assert_eq!(c.hosts(), [registry.to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_mirror_is_used_with_its_ca_and_client_certificate_and_skipped_without() {
    // An HTTPS mirror that wants client certificates, in front of (sharing the storage
    // of) a plain registry. Each hosts.toml variant gets a fresh client; which host
    // served a blob says whether the mirror's TLS settings worked.
    let pki = tempfile::tempdir().unwrap();
    skiff_tests::pki::ca_and_certs(
        pki.path(),
        &[
            ("srv", "127.0.0.1", "subjectAltName=IP:127.0.0.1"),
            ("client", "skiff client", "extendedKeyUsage=clientAuth"),
        ],
    );
    let p = |f: &str| pki.path().join(f);
    let upstream = Registry::start();
    let image = build_image(fixtures::sample_layers(), &Platform::host(), &["/bin/sh"]);
    push_built(
        &skiff_tests::client(&upstream.host()),
        "tls/app",
        "v1",
        &image,
    )
    .await;
    let mirror = Registry::start_with(RegistryOptions {
        storage: Some(upstream.storage().to_path_buf()),
        tls: Some((p("srv.crt"), p("srv.key"))),
        client_ca: Some(p("ca.crt")),
        ..Default::default()
    });
    let hosts = tempfile::tempdir().unwrap();
    let file = hosts.path().join(upstream.host()).join("hosts.toml");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    let d = Digest::of(&image.layers[0].blob);
    let mirror_host = mirror.host();
    let cases = [
        (
            "ca and client certificate",
            format!(
                "ca = \"{}\"\nclient = [[\"{}\", \"{}\"]]",
                p("ca.crt").display(),
                p("client.crt").display(),
                p("client.key").display()
            ),
            &mirror_host,
        ),
        (
            "skip_verify and client certificate",
            format!(
                "skip_verify = true\nclient = [[\"{}\", \"{}\"]]",
                p("client.crt").display(),
                p("client.key").display()
            ),
            &mirror_host,
        ),
        (
            "no client certificate",
            format!("ca = \"{}\"", p("ca.crt").display()),
            &upstream.host(),
        ),
        (
            "an untrusted server",
            format!(
                "client = [[\"{}\", \"{}\"]]",
                p("client.crt").display(),
                p("client.key").display()
            ),
            &upstream.host(),
        ),
    ];
    for (what, settings, served) in &cases {
        std::fs::write(
            &file,
            format!(
                "[host.\"https://{mirror_host}\"]\n  capabilities = [\"pull\"]\n  {}\n",
                settings.replace('\n', "\n  ")
            ),
        )
        .unwrap();
        let c = client_for(&upstream.host(), Some(hosts.path()));
        assert_eq!(
            c.get_blob("tls/app", d).await.unwrap(),
            image.layers[0].blob,
            "{what}"
        );
        assert_eq!(c.served_by(&d).as_deref(), Some(served.as_str()), "{what}");
    }
}
