//! Faults injected by a proxy in front of a real registry: corrupted bytes, 5xx,
//! dropped and truncated connections, ignored Range, and redirects to another host.

use skiff_proto::blob::BlobReader;
use skiff_proto::digest::DigestError;
use skiff_proto::reference::Reference;
use skiff_proto::registry::{Client, ClientOptions, Credentials, RegistryError, RemoteBlob};
use skiff_tests::fixtures::{self, build_image, pseudo_random, push_built, Entry, Layer};
use skiff_tests::proxy::{Fault, FaultProxy, Rule};
use skiff_tests::registry::{Registry, RegistryOptions};
use skiff_tests::{client, test_client_options};
use std::sync::Arc;

async fn download(
    c: &Client,
    repo: &str,
    desc: &skiff_proto::image::Descriptor,
) -> Result<Vec<u8>, RegistryError> {
    let tmp = tempfile::NamedTempFile::new().unwrap();
    let mut f = tokio::fs::File::from_std(tmp.reopen().unwrap());
    c.download_blob(repo, desc, &mut f, &|_| {}).await?;
    drop(f);
    Ok(std::fs::read(tmp.path()).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_corrupted_byte_is_rejected() {
    let reg = Registry::start();
    let img = fixtures::push_image(&reg.host(), "corrupt:v1", fixtures::sample_layers()).await;
    let proxy = FaultProxy::start(reg.addr());
    proxy.add_rule(Rule::new("/blobs/", Fault::CorruptByte, None).method("GET"));
    let c = client(&proxy.host());
    let layer = img.manifest.layers[1].clone();
    let err = download(&c, "corrupt", &layer).await.unwrap_err();
    assert!(
        matches!(err, RegistryError::Digest(DigestError::Mismatch { .. })),
        "{err}"
    );
    let err = c
        .get_blob("corrupt", img.manifest.config.digest)
        .await
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::Digest(DigestError::Mismatch { .. })),
        "{err}"
    );
    // Resolving fails on the config too, so nothing unverified reaches a caller.
    let r = Reference::parse(&format!("{}/corrupt:v1", proxy.host())).unwrap();
    assert!(c.resolve(&r, None).await.is_err());

    // A corrupted manifest is rejected when pinned by digest, and by the registry's
    // Docker-Content-Digest when fetched by tag.
    proxy.clear_rules();
    proxy.add_rule(Rule::new("/manifests/", Fault::CorruptByte, None));
    let err = c
        .get_manifest("corrupt", &img.digest.to_string())
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::Digest(_)), "{err}");
    let err = c.get_manifest("corrupt", "v1").await.unwrap_err();
    assert!(matches!(err, RegistryError::Digest(_)), "{err}");

    // The stream of a RemoteBlob fails instead of ending cleanly.
    proxy.clear_rules();
    proxy.add_rule(Rule::new("/blobs/", Fault::CorruptByte, None).method("GET"));
    let c = Arc::new(c);
    let rb = RemoteBlob::new(
        c,
        "corrupt",
        layer.digest,
        layer.size,
        tokio::runtime::Handle::current(),
    );
    let res = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut rb.stream().unwrap(), &mut out)
    })
    .await
    .unwrap();
    let err = res.unwrap_err();
    assert!(err.to_string().contains("digest mismatch"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_5xx_and_drops_then_gives_up_at_the_bound() {
    let reg = Registry::start();
    let img = fixtures::push_image(&reg.host(), "flaky:v1", fixtures::sample_layers()).await;
    let proxy = FaultProxy::start(reg.addr());
    let c = client(&proxy.host()); // max_attempts = 4
    let r = Reference::parse(&format!("{}/flaky:v1", proxy.host())).unwrap();

    // Two 503s and a dropped connection on the manifest, a 429 and a 500 on blobs:
    // all within the bound, so resolving succeeds.
    proxy.add_rule(Rule::new("/manifests/v1", Fault::Status(503), Some(2)));
    proxy.add_rule(Rule::new("/manifests/v1", Fault::Drop, Some(1)));
    proxy.add_rule(Rule::new("/blobs/", Fault::Status(429), Some(1)));
    proxy.add_rule(Rule::new("/blobs/", Fault::Status(500), Some(1)));
    let got = c.resolve(&r, None).await.unwrap();
    assert_eq!(got.manifest_digest, img.digest);
    assert_eq!(proxy.count(Some("GET"), "/manifests/v1"), 4);
    for (desc, layer) in got.layers().iter().zip(&img.layers) {
        assert_eq!(download(&c, "flaky", desc).await.unwrap(), layer.blob);
    }

    // Always failing: exactly max_attempts requests, then a clear error.
    proxy.clear_rules();
    proxy.clear_requests();
    proxy.add_rule(Rule::new("/manifests/v1", Fault::Status(502), None));
    let err = c.resolve(&r, None).await.unwrap_err();
    assert!(
        matches!(err, RegistryError::RetriesExhausted { attempts: 4, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("502"), "{err}");
    assert_eq!(proxy.count(Some("GET"), "/manifests/v1"), 4);

    proxy.clear_rules();
    proxy.clear_requests();
    proxy.add_rule(Rule::new("/manifests/v1", Fault::Drop, None));
    let err = c.resolve(&r, None).await.unwrap_err();
    assert!(
        matches!(err, RegistryError::RetriesExhausted { attempts: 4, .. }),
        "{err}"
    );
    assert_eq!(proxy.count(Some("GET"), "/manifests/v1"), 4);

    // A 404 is not retried.
    proxy.clear_rules();
    proxy.clear_requests();
    assert!(c.get_manifest("flaky", "nope").await.is_err());
    assert_eq!(proxy.count(Some("GET"), "/manifests/nope"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_registry_gives_an_error_not_a_hang() {
    let reg = Registry::start();
    fixtures::push_image(&reg.host(), "hung:v1", fixtures::sample_layers()).await;
    let proxy = FaultProxy::start(reg.addr());
    // Accepts the request, then never answers (for longer than the test may take).
    proxy.add_rule(Rule::new(
        "/manifests/v1",
        Fault::Stall(std::time::Duration::from_secs(600)),
        None,
    ));
    let c = Client::new(
        &proxy.host(),
        ClientOptions {
            read_timeout: std::time::Duration::from_secs(1),
            ..test_client_options()
        },
    )
    .unwrap();
    let r = Reference::parse(&format!("{}/hung:v1", proxy.host())).unwrap();
    // The outer bound only keeps a broken build from hanging the suite.
    let err = tokio::time::timeout(std::time::Duration::from_secs(120), c.resolve(&r, None))
        .await
        .expect("resolve hung on a silent registry")
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::RetriesExhausted { attempts: 4, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("timed out"), "{err}");
    assert_eq!(proxy.count(Some("GET"), "/manifests/v1"), 4);

    // The CLI takes the bound from --read-timeout.
    let root = tempfile::tempdir().unwrap();
    let mut child = skiff_tests::cli::Skiff::new(root.path())
        .command()
        .args(["pull", "--read-timeout", "1", &r.to_string()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("skiff pull hung on a silent registry despite --read-timeout 1");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    assert_ne!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("timed out"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_download_resumes_with_range() {
    let reg = Registry::start();
    let data = pseudo_random(5, 2 << 20);
    let img = fixtures::push_image(
        &reg.host(),
        "trunc:v1",
        vec![Layer::tar(&[Entry::file("f", &data, 0o644)])],
    )
    .await;
    let proxy = FaultProxy::start(reg.addr());
    proxy.add_rule(Rule::new("/blobs/", Fault::Truncate, Some(1)).method("GET"));
    let c = client(&proxy.host());
    let desc = &img.manifest.layers[0];
    assert_eq!(
        download(&c, "trunc", desc).await.unwrap(),
        img.layers[0].blob
    );
    let blob_gets: Vec<_> = proxy
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.path.contains("/blobs/"))
        .collect();
    assert_eq!(blob_gets.len(), 2);
    let half = desc.size / 2;
    // The resume asks only for what is missing (the truncation point is about half).
    let range = blob_gets[1]
        .range
        .clone()
        .expect("second GET carries Range");
    let start: u64 = range
        .trim_start_matches("bytes=")
        .split('-')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(start > 0 && start <= half + 1024, "{range}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_ignoring_range_is_read_whole_and_verified() {
    let reg = Registry::start();
    let img = fixtures::push_image(&reg.host(), "norange:v1", fixtures::sample_layers()).await;
    let proxy = FaultProxy::start(reg.addr());
    proxy.add_rule(Rule::new("/blobs/", Fault::StripRange, None));
    let c = client(&proxy.host());
    let d = img.manifest.layers[1].digest;
    // A 200 to a Range request is read whole (and verified); the range is returned.
    let got = c.get_blob_range("norange", d, 10, 100).await.unwrap();
    assert_eq!(&got[..], &img.layers[1].blob[10..110]);
    assert_eq!(c.stats().bytes(), img.layers[1].blob.len() as u64);
    // Direct to the registry, Range works and returns exactly those bytes.
    let direct = client(&reg.host());
    let got = direct.get_blob_range("norange", d, 10, 100).await.unwrap();
    assert_eq!(&got[..], &img.layers[1].blob[10..110]);
    assert_eq!(direct.stats().bytes(), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_never_carry_authorization_and_are_cached() {
    // Registry A requires Basic auth; registry B serves the same storage without auth
    // and stands in for a CDN. Proxy P1 in front of A redirects blob GETs to proxy P2 in
    // front of B, which records whether Authorization reached it.
    let a = Registry::start_basic("carol", "secret");
    let b = Registry::start_with(RegistryOptions {
        storage: Some(a.storage().to_path_buf()),
        ..Default::default()
    });
    let p2 = FaultProxy::start(b.addr());
    let p1 = FaultProxy::start(a.addr());
    let creds = Some(Credentials::basic("carol", "secret"));
    let c = Arc::new(
        Client::new(
            &p1.host(),
            ClientOptions {
                credentials: creds,
                ..test_client_options()
            },
        )
        .unwrap(),
    );
    let image = build_image(
        fixtures::sample_layers(),
        &skiff_proto::image::Platform::host(),
        &["/bin/sh"],
    );
    push_built(&c, "cdn/app", "v1", &image).await;
    p1.add_rule(Rule::new("/blobs/sha256:", Fault::Redirect(p2.base_url()), None).method("GET"));

    let r = Reference::parse(&format!("{}/cdn/app:v1", p1.host())).unwrap();
    let got = c.resolve(&r, None).await.unwrap();
    assert_eq!(got.config_bytes, image.config);
    let desc = got.layers()[1].clone();
    assert_eq!(
        download(&c, "cdn/app", &desc).await.unwrap(),
        image.layers[1].blob
    );

    // The download was redirected once; Range reads now go straight to the cached target.
    assert_eq!(p1.count(Some("GET"), &format!("/blobs/{}", desc.digest)), 1);
    let rb = RemoteBlob::new(
        Arc::clone(&c),
        "cdn/app",
        desc.digest,
        desc.size,
        tokio::runtime::Handle::current(),
    );
    let blob = image.layers[1].blob.clone();
    let p1_blob_gets = |p: &FaultProxy| p.count(Some("GET"), &format!("/blobs/{}", desc.digest));
    let before = p1_blob_gets(&p1);
    let (rb, blob) = tokio::task::spawn_blocking(move || {
        assert_eq!(rb.read_at(100, 50).unwrap(), &blob[100..150]);
        assert_eq!(rb.read_at(5000, 10).unwrap(), &blob[5000..5010]);
        (rb, blob)
    })
    .await
    .unwrap();
    assert_eq!(
        p1_blob_gets(&p1),
        before,
        "range reads used the cached redirect"
    );
    assert_eq!(p2.count(Some("GET"), &format!("/blobs/{}", desc.digest)), 3);

    // The target starts refusing (an expired signed URL): the client re-resolves it.
    p2.add_rule(Rule::new("/blobs/", Fault::Status(403), Some(1)));
    let before = p1_blob_gets(&p1);
    let (_rb, _blob) = tokio::task::spawn_blocking(move || {
        assert_eq!(rb.read_at(7, 3).unwrap(), &blob[7..10]);
        (rb, blob)
    })
    .await
    .unwrap();
    assert_eq!(
        p1_blob_gets(&p1),
        before + 1,
        "403 at the target made the client ask the registry again"
    );

    let at_p2 = p2.requests();
    assert!(
        at_p2.iter().any(|r| r.path.contains("/blobs/")),
        "redirects reached P2"
    );
    assert!(
        at_p2.iter().all(|r| r.authorization.is_none()),
        "Authorization leaked to the redirect target: {at_p2:?}"
    );
    // Authorization was in use on the registry itself.
    assert!(p1.requests().iter().any(|r| r.authorization.is_some()));
}
