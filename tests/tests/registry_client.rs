//! The registry client against a real `docker-registry`: push then pull, chunked
//! uploads, Range reads through `RemoteBlob`, platform selection, clear errors.

use bytes::Bytes;
use skiff_proto::blob::{BlobError, BlobReader};
use skiff_proto::image::Platform;
use skiff_proto::reference::Reference;
use skiff_proto::registry::{Client, ClientOptions, RegistryError, RemoteBlob};
use skiff_tests::fixtures::{self, pseudo_random, Entry, Layer};
use skiff_tests::registry::Registry;
use skiff_tests::{client, test_client_options};
use std::io::Read;
use std::sync::Arc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_then_pull_round_trip() {
    let reg = Registry::start();
    let pushed =
        fixtures::push_image(&reg.host(), "round/trip:v1", fixtures::sample_layers()).await;
    let c = client(&reg.host());
    let r = Reference::parse(&reg.reference("round/trip:v1")).unwrap();
    let img = c.resolve(&r, None).await.unwrap();
    assert_eq!(img.manifest_digest, pushed.digest);
    assert_eq!(img.manifest_bytes, pushed.manifest_bytes);
    assert_eq!(img.config_bytes, pushed.config);
    assert_eq!(img.platform, Platform::host());
    assert_eq!(img.layers().len(), 3);
    assert_eq!(img.index_digest, None);
    for (desc, layer) in img.layers().iter().zip(&pushed.layers) {
        assert_eq!(desc.media_type, layer.media_type);
        let tmp = tempfile::NamedTempFile::new().unwrap();
        let mut f = tokio::fs::File::from_std(tmp.reopen().unwrap());
        c.download_blob("round/trip", desc, &mut f, &|_| {})
            .await
            .unwrap();
        drop(f);
        assert_eq!(
            std::fs::read(tmp.path()).unwrap(),
            layer.blob,
            "layer {}",
            desc.digest
        );
    }
    // Pinning the digest resolves to the same bytes; a wrong digest is "manifest unknown".
    let pinned = r.with_digest(pushed.digest);
    assert_eq!(
        c.resolve(&pinned, None).await.unwrap().manifest_digest,
        pushed.digest
    );
    let other = r.with_digest(skiff_proto::Digest::of(b"nope"));
    let err = c.resolve(&other, None).await.unwrap_err();
    assert!(
        matches!(err, RegistryError::ManifestUnknown { .. }),
        "{err}"
    );
    // Tagging points a new tag at the same manifest.
    assert_eq!(
        c.tag("round/trip", "v1", "v2").await.unwrap(),
        pushed.digest
    );
    let (_, _, d) = c.get_manifest("round/trip", "v2").await.unwrap();
    assert_eq!(d, pushed.digest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_name_what_is_missing() {
    let reg = Registry::start();
    let c = client(&reg.host());
    c.ping().await.unwrap();
    let err = c.get_manifest("no/such", "latest").await.unwrap_err();
    assert!(
        matches!(
            err,
            RegistryError::NameUnknown { .. } | RegistryError::ManifestUnknown { .. }
        ),
        "{err}"
    );
    fixtures::push_image(&reg.host(), "some/repo:v1", fixtures::sample_layers()).await;
    let err = c.get_manifest("some/repo", "nosuchtag").await.unwrap_err();
    assert!(
        matches!(err, RegistryError::ManifestUnknown { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("manifest unknown"), "{err}");
    let err = c
        .get_blob("some/repo", skiff_proto::Digest::of(b"absent"))
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::BlobUnknown { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_upload_and_skip_existing_blob() {
    let reg = Registry::start();
    let c = Client::new(
        &reg.host(),
        ClientOptions {
            upload_chunk_size: 100_000,
            ..test_client_options()
        },
    )
    .unwrap();
    let data = Bytes::from(pseudo_random(3, 350_000));
    let digest = c.push_blob("chunky", data.clone()).await.unwrap();
    assert_eq!(
        c.blob_exists("chunky", digest).await.unwrap(),
        Some(350_000)
    );
    assert_eq!(c.get_blob("chunky", digest).await.unwrap(), data);
    // The same from a file, streamed in chunks.
    let file = tempfile::NamedTempFile::new().unwrap();
    let fdata = pseudo_random(4, 250_001);
    std::fs::write(file.path(), &fdata).unwrap();
    let fdigest = skiff_proto::Digest::of(&fdata);
    c.push_blob_file("chunky", fdigest, file.path())
        .await
        .unwrap();
    assert_eq!(c.get_blob("chunky", fdigest).await.unwrap(), fdata);
    // A second push is only a HEAD.
    let before = c.stats().requests();
    c.push_blob("chunky", data).await.unwrap();
    assert_eq!(c.stats().requests() - before, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_reads_through_remote_blob() {
    let reg = Registry::start();
    let data = pseudo_random(11, 3 * 1024 * 1024 + 17);
    let layer = Layer::tar(&[Entry::file("big", &data, 0o644)]);
    let blob = layer.blob.clone();
    fixtures::push_image(&reg.host(), "ranged:v1", vec![layer]).await;
    let c = Arc::new(client(&reg.host()));
    let desc = fixtures::Layer::tar(&[Entry::file("big", &data, 0o644)]).descriptor();
    let handle = tokio::runtime::Handle::current();
    let rb = RemoteBlob::new(Arc::clone(&c), "ranged", desc.digest, desc.size, handle);
    // BlobReader is synchronous: call it from a non-runtime thread.
    let (rb, blob) = tokio::task::spawn_blocking(move || {
        let reads = [
            (0u64, 1u64),
            (511, 2),
            (1 << 20, 65536),
            (blob.len() as u64 - 10, 10),
        ];
        for (off, len) in reads {
            let got = rb.read_at(off, len).unwrap();
            assert_eq!(
                got,
                &blob[off as usize..(off + len) as usize],
                "read {off}+{len}"
            );
        }
        assert_eq!(rb.stats().requests(), 4);
        assert_eq!(rb.stats().bytes(), 1 + 2 + 65536 + 10);
        assert!(matches!(
            rb.read_at(blob.len() as u64 - 1, 2),
            Err(BlobError::OutOfRange { .. })
        ));
        let mut all = Vec::new();
        rb.stream().unwrap().read_to_end(&mut all).unwrap();
        assert_eq!(all, blob);
        assert_eq!(rb.stats().bytes(), 1 + 2 + 65536 + 10 + blob.len() as u64);
        (rb, blob)
    })
    .await
    .unwrap();
    drop((rb, blob));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_platform_selection() {
    let reg = Registry::start();
    let platforms: Vec<Platform> = [
        "linux/amd64",
        "linux/arm64/v8",
        "linux/arm/v7",
        "linux/arm/v6",
    ]
    .iter()
    .map(|p| p.parse().unwrap())
    .collect();
    let (index_digest, images) = fixtures::push_index(&reg.host(), "multi:v1", &platforms).await;
    let c = client(&reg.host());
    let r = Reference::parse(&reg.reference("multi:v1")).unwrap();
    for (p, image) in &images {
        let got = c.resolve(&r, Some(p)).await.unwrap();
        assert_eq!(&got.platform, p);
        assert_eq!(got.manifest_digest, image.digest, "{p}");
        assert_eq!(got.index_digest, Some(index_digest));
        assert_eq!(got.config.architecture().to_string(), p.architecture);
    }
    // arm64 without variant matches v8; the host default picks the host's entry.
    let got = c
        .resolve(&r, Some(&"linux/arm64".parse().unwrap()))
        .await
        .unwrap();
    assert_eq!(got.manifest_digest, images[1].1.digest);
    let host = c.resolve(&r, None).await.unwrap();
    assert_eq!(host.platform.architecture, Platform::host().architecture);
    let err = c
        .resolve(&r, Some(&"linux/s390x".parse().unwrap()))
        .await
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::NoMatchingPlatform { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("linux/arm/v7"), "{err}");
}
