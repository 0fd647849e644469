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

/// An eStargz blob of `files` small files with long, distinct names (a TOC of
/// roughly `files` × 60 compressed bytes), and its TOC digest.
fn estargz_blob(files: usize) -> (Vec<u8>, skiff_proto::Digest) {
    use skiff_proto::index::convert::{convert_to_estargz, EstargzOptions};
    let entries: Vec<Entry> = (0..files)
        .map(|i| {
            let name = format!("dir-{}/file-{i:06}-{:016x}", i % 97, i * 2654435761);
            Entry::file(&name, &pseudo_random(i as u64, 100 + i % 300), 0o644)
        })
        .collect();
    let mut tar = tempfile::tempfile().unwrap();
    std::io::Write::write_all(&mut tar, &fixtures::tar_of(&entries)).unwrap();
    let mut out = Vec::new();
    let converted =
        convert_to_estargz(&mut tar, &mut out, &EstargzOptions::default(), None).unwrap();
    (out, converted.toc_digest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layers_toc_is_read_ahead_by_digest_alone_and_then_not_asked_for_again() {
    use skiff_proto::index::estargz::{self, read_toc};
    use skiff_proto::resolve::{read_tocs_ahead, TOC_PROBE};
    let reg = Registry::start();
    let c = Arc::new(client(&reg.host()));
    // One layer whose TOC fits in the probe, one whose TOC does not.
    let (small, small_toc) = estargz_blob(20);
    let (big, big_toc) = estargz_blob(4000);
    let mut pushed = Vec::new();
    for blob in [&small, &big] {
        let d = c
            .push_blob("ahead", Bytes::from(blob.clone()))
            .await
            .unwrap();
        pushed.push(d);
    }
    let (small_d, big_d) = (pushed[0], pushed[1]);
    let dir = tempfile::tempdir().unwrap();
    let expected = |blob: &[u8], toc| {
        let path = dir.path().join(skiff_proto::Digest::of(blob).hex());
        std::fs::write(&path, blob).unwrap();
        let local = skiff_proto::FileBlob::open(skiff_proto::Digest::of(blob), &path).unwrap();
        read_toc(&local, Some(toc)).unwrap()
    };
    let (want_small, want_big) = (expected(&small, small_toc), expected(&big, big_toc));
    assert!(
        big.len() as u64 - want_big.toc_offset > TOC_PROBE,
        "the big layer's TOC must not fit in the probe"
    );
    assert!(small.len() as u64 - want_small.toc_offset < TOC_PROBE);

    let handle = tokio::runtime::Handle::current();
    let before = (c.stats().requests(), c.stats().bytes());
    let missing = skiff_proto::Digest::of(b"no such layer");
    read_tocs_ahead(&c, &handle, "ahead", &[small_d, big_d, missing]);
    let (c2, h2) = (Arc::clone(&c), handle.clone());
    let (sizes, small_len, big_len) = (
        [small.len() as u64, big.len() as u64],
        small.len() as u64,
        big.len() as u64,
    );
    let got = tokio::task::spawn_blocking(move || {
        let rb = |d, size| RemoteBlob::new(Arc::clone(&c2), "ahead", d, size, h2.clone());
        let small = read_toc(&rb(small_d, sizes[0]), Some(small_toc)).unwrap();
        let big = read_toc(&rb(big_d, sizes[1]), Some(big_toc)).unwrap();
        // A tail is taken once: the next reader reads the blob itself.
        let again = rb(big_d, sizes[1]).tail_read_ahead();
        (small, big, again)
    })
    .await
    .unwrap();
    let (got_small, got_big, again) = got;
    assert_eq!(got_small.digest, want_small.digest);
    assert_eq!(got_small.toc_offset, want_small.toc_offset);
    assert_eq!(got_big.digest, want_big.digest);
    assert_eq!(got_big.toc.entries.len(), want_big.toc.entries.len());
    assert!(again.is_none(), "a tail read ahead was given twice");
    // Small layer: one suffix read of the whole probe. Big layer: the probe, then
    // exactly the rest of its TOC. The missing layer: one failed suffix read. Nothing
    // else: neither TOC was asked for once the readers wanted it.
    let (requests, bytes) = (
        c.stats().requests() - before.0,
        c.stats().bytes() - before.1,
    );
    assert_eq!(requests, 4, "requests made");
    assert_eq!(
        bytes,
        small_len.min(TOC_PROBE) + (big_len - want_big.toc_offset),
        "bytes read"
    );
    assert!(estargz::FOOTER_SIZE < TOC_PROBE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tail_read_ahead_serves_only_a_blob_of_the_size_the_manifest_gives() {
    use skiff_proto::resolve::read_tocs_ahead;
    let reg = Registry::start();
    let c = Arc::new(client(&reg.host()));
    let (blob, _) = estargz_blob(20);
    let d = c
        .push_blob("sized", Bytes::from(blob.clone()))
        .await
        .unwrap();
    let handle = tokio::runtime::Handle::current();
    read_tocs_ahead(&c, &handle, "sized", &[d]);
    let (c2, size) = (Arc::clone(&c), blob.len() as u64);
    let (other_size, other_repo) = tokio::task::spawn_blocking(move || {
        let rb = |repo, size| RemoteBlob::new(Arc::clone(&c2), repo, d, size, handle.clone());
        let other_repo = rb("elsewhere", size).tail_read_ahead();
        let other_size = rb("sized", size + 1).tail_read_ahead();
        (other_size, other_repo)
    })
    .await
    .unwrap();
    assert!(
        other_repo.is_none(),
        "served to another repository's reader"
    );
    assert!(other_size.is_none(), "served for a blob of another size");
}
