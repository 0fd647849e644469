//! `skiff index --push`, `skiff convert` and `resolve_layers` against a real registry:
//! published indexes are found (tag-schema fallback on docker-registry 2.8) and used
//! without a streaming pass, tampered ones are refused, converted images unpack to the
//! same rootfs with umoci and read back through Range requests.

use skiff_proto::blob::BlobReader;
use skiff_proto::digest::Digest;
use skiff_proto::image::MEDIA_OCI_MANIFEST;
use skiff_proto::image::{ResolvedImage, MEDIA_OCI_LAYER_GZIP};
use skiff_proto::index::artifact::{
    index_artifact_manifest, index_blob, IndexBlob, INDEX_ARTIFACT_TYPE,
};
use skiff_proto::index::decode_chunk;
use skiff_proto::index::store::{IndexStore, Publisher};
use skiff_proto::index::{EntryKind, LayerFormat, LayerIndex};
use skiff_proto::reference::Reference;
use skiff_proto::registry::Client;
use skiff_proto::resolve::{resolve_layers, IndexSource, ResolveOptions, ResolvedLayer};
use skiff_tests::cli::Skiff;
use skiff_tests::fixtures::{self, pseudo_random, Entry, Layer};
use skiff_tests::proxy::{Fault, FaultProxy, Rule};
use skiff_tests::registry::Registry;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({:?}):\nstdout: {}\nstderr: {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// One large plain tar+gzip layer (incompressible files, several checkpoint spans)
/// and a small one.
fn plain_layers() -> Vec<Layer> {
    vec![
        Layer::tar_gzip(&[
            Entry::dir("opt", 0o755),
            Entry::file("opt/a.bin", &pseudo_random(1, 5 << 20), 0o644),
            Entry::file("opt/small.txt", b"in the middle\n", 0o640),
            Entry::file("opt/b.bin", &pseudo_random(2, 4 << 20), 0o755),
        ]),
        Layer::tar_gzip(&[
            Entry::dir("etc", 0o755),
            Entry::file("etc/motd", b"hello\n", 0o644),
            Entry::symlink("etc/link", "motd"),
        ]),
    ]
}

/// Every regular file of `idx`, read through `blob` chunk by chunk (Range reads,
/// each chunk verified by `decode_chunk`).
/// Pushes [`plain_layers`] to `reg` as `repo_tag`.
fn push_plain(
    reg: &Registry,
    rt: &tokio::runtime::Runtime,
    repo_tag: &str,
) -> fixtures::BuiltImage {
    rt.block_on(fixtures::push_image(&reg.host(), repo_tag, plain_layers()))
}

fn read_all(idx: &LayerIndex, blob: &dyn BlobReader) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    for e in idx.entries.iter().filter(|e| e.kind == EntryKind::Reg) {
        let mut data = Vec::new();
        for c in idx.chunks_of(e) {
            let raw = blob.read_at(c.blob_offset, c.blob_len).unwrap();
            data.extend(decode_chunk(idx, c, &raw).unwrap());
        }
        assert_eq!(data.len() as u64, e.size, "{}", e.path);
        files.insert(e.path.clone(), data);
    }
    files
}

fn resolve(client: &Client, reference: &str) -> ResolvedImage {
    let r = Reference::parse(reference).unwrap();
    rt().block_on(client.resolve(&r, None)).unwrap()
}

fn layers_of(
    client: &Arc<Client>,
    rt: &tokio::runtime::Runtime,
    image: &ResolvedImage,
    store: &Path,
) -> Vec<ResolvedLayer> {
    let store = IndexStore::open(store).unwrap();
    resolve_layers(
        client,
        rt.handle(),
        image,
        &store,
        &ResolveOptions::default(),
    )
    .unwrap()
}

/// `etc/motd`'s mode in a layer's index.
fn motd_mode(index: &LayerIndex) -> u32 {
    index
        .entries
        .iter()
        .find(|e| e.path == "etc/motd")
        .expect("etc/motd in the index")
        .mode
}

/// A copy of `index` whose `etc/motd` is setuid root: a lie the publisher's own chunk
/// digests cannot catch.
fn with_setuid_motd(index: &LayerIndex) -> LayerIndex {
    let mut forged = index.clone();
    let motd = forged
        .entries
        .iter_mut()
        .find(|e| e.path == "etc/motd")
        .expect("etc/motd in the index");
    assert_eq!(motd.mode, 0o644);
    motd.mode = 0o4755;
    forged
}

#[test]
fn published_index_is_found_via_tag_fallback_and_used_without_streaming() {
    let reg = Registry::start();
    let rt = rt();
    let built = push_plain(&reg, &rt, "plain:v1");
    let reference = reg.reference("plain:v1");
    let machine_a = tempfile::tempdir().unwrap();
    let out = Skiff::new(machine_a.path()).run(&["index", "-q", "--push", &reference]);
    ok(&out, "skiff index --push");
    let stdout = text(&out.stdout);
    eprintln!("{stdout}");
    assert!(stdout.contains("published index artifact"), "{stdout}");
    assert!(stdout.contains("TarGzip"), "{stdout}");
    assert!(stdout.contains("streaming pass"), "{stdout}");

    // docker-registry 2.8 has no referrers API: the fallback tag lists the artifact.
    let client = Arc::new(skiff_tests::client(&reg.host()));
    let listed = rt
        .block_on(client.referrers("plain", built.digest, INDEX_ARTIFACT_TYPE))
        .unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");

    // Another machine: a fresh root.
    let image = resolve(&client, &reference);
    let layer_bytes: u64 = image.total_layer_size();
    let before = client.stats().bytes();
    let machine_b = tempfile::tempdir().unwrap();
    let layers = layers_of(&client, &rt, &image, machine_b.path());
    let index_bytes = client.stats().bytes() - before;
    for l in &layers {
        assert_eq!(l.source, IndexSource::Published, "{}", l.descriptor.digest);
        assert!(l.refused.is_empty(), "{:?}", l.refused);
        assert_eq!(l.index.format, LayerFormat::TarGzip);
        assert!(!l.index.checkpoints.is_empty());
    }
    assert!(
        index_bytes * 10 < layer_bytes,
        "fetched {index_bytes} bytes to get indexes of {layer_bytes} bytes of layers"
    );
    // The small file in the middle of the big layer costs one span, not the layer.
    let big = &layers[0];
    let before = client.stats().bytes();
    let e = big
        .index
        .entries
        .iter()
        .find(|e| e.path == "opt/small.txt")
        .unwrap();
    let chunks = big.index.chunks_of(e);
    assert_eq!(chunks.len(), 1);
    let raw = big
        .blob
        .read_at(chunks[0].blob_offset, chunks[0].blob_len)
        .unwrap();
    assert_eq!(
        decode_chunk(&big.index, &chunks[0], &raw).unwrap(),
        b"in the middle\n"
    );
    let read_bytes = client.stats().bytes() - before;
    eprintln!(
        "published indexes: {index_bytes} bytes fetched for {layer_bytes} bytes of layers; \
         reading a 14-byte file mid-layer fetched {read_bytes} bytes"
    );
    assert!(
        read_bytes * 2 < big.descriptor.size,
        "{read_bytes} of {}",
        big.descriptor.size
    );
    // Everything reads back as pushed.
    let files = read_all(&big.index, big.blob.as_ref());
    assert_eq!(files["opt/a.bin"], pseudo_random(1, 5 << 20));
    assert_eq!(files["opt/b.bin"], pseudo_random(2, 4 << 20));
    // Saved: the next resolve on machine B uses its store and fetches no blob bytes.
    let before = client.stats().bytes();
    let again = layers_of(&client, &rt, &image, machine_b.path());
    assert!(again.iter().all(|l| l.source == IndexSource::Store));
    assert_eq!(client.stats().bytes(), before);
}

#[test]
fn tampered_published_index_is_refused_and_a_streaming_pass_used() {
    let reg = Registry::start();
    let rt = rt();
    let built = push_plain(&reg, &rt, "tamper:v1");
    let reference = reg.reference("tamper:v1");
    let root = tempfile::tempdir().unwrap();
    ok(
        &Skiff::new(root.path()).run(&["index", "-q", "--push", &reference]),
        "skiff index --push",
    );
    // Find the index blobs the artifact lists.
    let client = Arc::new(skiff_tests::client(&reg.host()));
    let listed = rt
        .block_on(client.referrers("tamper", built.digest, INDEX_ARTIFACT_TYPE))
        .unwrap();
    let (bytes, _, _) = rt
        .block_on(client.get_manifest("tamper", &listed[0].digest.to_string()))
        .unwrap();
    let artifact: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    let index_blob = artifact["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();

    // A proxy flips a byte of the published index of layer 0: its digest is wrong.
    let proxy = FaultProxy::start(reg.addr());
    proxy.add_rule(Rule::new(
        &format!("/blobs/{index_blob}"),
        Fault::CorruptByte,
        None,
    ));
    let via_proxy = Arc::new(skiff_tests::client(&proxy.host()));
    let image = resolve(&client, &reference);
    let fresh = tempfile::tempdir().unwrap();
    let layers = layers_of(&via_proxy, &rt, &image, fresh.path());
    assert_eq!(layers[0].source, IndexSource::Streamed);
    let why = layers[0].refused.join("; ");
    assert!(
        why.contains("published index") && why.contains("digest mismatch"),
        "{why}"
    );
    assert_eq!(layers[1].source, IndexSource::Published);
    // The fallback index is right.
    let files = read_all(&layers[0].index, layers[0].blob.as_ref());
    assert_eq!(files["opt/a.bin"], pseudo_random(1, 5 << 20));
    assert_eq!(files["opt/small.txt"], b"in the middle\n");

    // The CLI says so too, and still succeeds.
    let other = tempfile::tempdir().unwrap();
    let out =
        Skiff::new(other.path()).run(&["index", "-q", &format!("{}/tamper:v1", proxy.host())]);
    ok(&out, "skiff index via the corrupting proxy");
    assert!(
        text(&out.stderr).contains("digest mismatch"),
        "{}",
        text(&out.stderr)
    );
}

/// Publishes `blobs` as an index artifact for `image` in `repo` by hand (through the
/// fallback tag), as anyone with push access to `repo` could.
fn publish_artifact(
    client: &Client,
    rt: &tokio::runtime::Runtime,
    repo: &str,
    image: &ResolvedImage,
    subject: Digest,
    blobs: Vec<IndexBlob>,
) {
    let manifest = index_artifact_manifest(&image.manifest_descriptor(), &blobs);
    let manifest_bytes = serde_json::to_vec(&manifest).unwrap();
    rt.block_on(async {
        for b in blobs {
            client.push_blob(repo, b.bytes.into()).await.unwrap();
        }
        client.push_blob(repo, b"{}".to_vec().into()).await.unwrap();
        let d = client
            .push_manifest(
                repo,
                &Digest::of(&manifest_bytes).to_string(),
                MEDIA_OCI_MANIFEST,
                &manifest_bytes,
            )
            .await
            .unwrap();
        let mut listed =
            skiff_proto::image::Descriptor::new(MEDIA_OCI_MANIFEST, d, manifest_bytes.len() as u64);
        listed.artifact_type = Some(INDEX_ARTIFACT_TYPE.into());
        client
            .add_referrer_to_fallback_tag(repo, subject, listed)
            .await
            .unwrap();
    });
}

#[test]
fn a_published_index_serves_only_its_own_repository() {
    // The same layers in two repositories; the owner of `evil/x` publishes an index
    // for the shared layer that makes etc/motd setuid (its chunk digests are genuine,
    // so chunk verification cannot catch it).
    let reg = Registry::start();
    let rt = rt();
    let evil = push_plain(&reg, &rt, "evil/x:v1");
    push_plain(&reg, &rt, "good/app:v1");
    let client = Arc::new(skiff_tests::client(&reg.host()));
    let evil_image = resolve(&client, &reg.reference("evil/x:v1"));
    let good_image = resolve(&client, &reg.reference("good/app:v1"));
    assert_eq!(evil_image.layers()[1].digest, good_image.layers()[1].digest);
    let scratch = tempfile::tempdir().unwrap();
    let genuine = layers_of(&client, &rt, &evil_image, scratch.path());
    let forged = with_setuid_motd(&genuine[1].index);
    publish_artifact(
        &client,
        &rt,
        "evil/x",
        &evil_image,
        evil.digest,
        vec![index_blob(&forged).unwrap()],
    );

    // The victim runs evil/x once: its own image shows what its publisher wrote.
    let victim = tempfile::tempdir().unwrap();
    let layers = layers_of(&client, &rt, &evil_image, victim.path());
    assert_eq!(layers[1].source, IndexSource::Published);
    assert!(layers[1].published);
    let mode_of = |l: &ResolvedLayer| motd_mode(&l.index);
    assert_eq!(mode_of(&layers[1]), 0o4755);
    // Then good/app on the same root: the shared layer's index is not evil's.
    let layers = layers_of(&client, &rt, &good_image, victim.path());
    assert_eq!(mode_of(&layers[1]), 0o644);
    assert_eq!(layers[1].source, IndexSource::Streamed);
    assert!(!layers[1].published);
    // And it stays so from the store.
    let again = layers_of(&client, &rt, &good_image, victim.path());
    assert_eq!(again[1].source, IndexSource::Store);
    assert_eq!(mode_of(&again[1]), 0o644);
    // `skiff index --push` does not republish evil's index as its own.
    let out =
        Skiff::new(victim.path()).run(&["index", "-q", "--push", &reg.reference("evil/x:v1")]);
    assert!(!out.status.success(), "republished a published index");
    assert!(
        text(&out.stderr).contains("not republishing the published index"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn published_index_of_another_layer_is_refused() {
    let reg = Registry::start();
    let rt = rt();
    let built = push_plain(&reg, &rt, "mix:v1");
    let client = Arc::new(skiff_tests::client(&reg.host()));
    let image = resolve(&client, &reg.reference("mix:v1"));
    let here = tempfile::tempdir().unwrap();
    let layers = layers_of(&client, &rt, &image, here.path());
    // An artifact that files layer 1's (genuine, digest-correct) index under layer 0.
    let mut forged = index_blob(&layers[1].index).unwrap();
    forged.layer = layers[0].descriptor.digest;
    publish_artifact(&client, &rt, "mix", &image, built.digest, vec![forged]);
    let fresh = tempfile::tempdir().unwrap();
    let layers = layers_of(&client, &rt, &image, fresh.path());
    assert_eq!(layers[0].source, IndexSource::Streamed);
    let why = layers[0].refused.join("; ");
    assert!(why.contains("describes layer"), "{why}");
    // Layer 1 is not listed in that artifact: streamed, nothing refused.
    assert_eq!(layers[1].source, IndexSource::Streamed);
    assert!(layers[1].refused.is_empty());
}

#[test]
fn malformed_manifest_and_referrers_tag_give_clear_errors() {
    let reg = Registry::start();
    let rt = rt();
    let built = push_plain(&reg, &rt, "bad:v1");
    let root = tempfile::tempdir().unwrap();
    let skiff = Skiff::new(root.path());

    // A manifest corrupted on the way is refused with a clear error.
    let proxy = FaultProxy::start(reg.addr());
    proxy.add_rule(Rule::new("/manifests/", Fault::CorruptByte, None));
    let out = skiff.run(&["index", "-q", &format!("{}/bad:v1", proxy.host())]);
    assert_eq!(out.status.code(), Some(125));
    let err = text(&out.stderr);
    assert!(
        err.contains("resolving") && err.contains("digest mismatch"),
        "{err}"
    );

    // A fallback tag that holds a manifest instead of an index: reported, then the
    // layers are indexed from their blobs.
    let client = skiff_tests::client(&reg.host());
    let tag = format!("sha256-{}", built.digest.hex());
    rt.block_on(client.push_manifest(
        "bad",
        &tag,
        skiff_proto::image::MEDIA_OCI_MANIFEST,
        &built.manifest_bytes,
    ))
    .unwrap();
    let out = skiff.run(&["index", "-q", &reg.reference("bad:v1")]);
    ok(&out, "skiff index with a bogus fallback tag");
    let err = text(&out.stderr);
    assert!(err.contains("holds a manifest, not an index"), "{err}");

    // A layer with a media type Skiff cannot index.
    let odd = vec![Layer::tar_gzip(&[Entry::file("odd", b"odd\n", 0o644)])
        .with_media_type("application/x-not-a-layer")];
    rt.block_on(fixtures::push_image(&reg.host(), "odd:v1", odd));
    let out = skiff.run(&["index", "-q", &reg.reference("odd:v1")]);
    assert_eq!(out.status.code(), Some(125));
    let err = text(&out.stderr);
    assert!(
        err.contains("application/x-not-a-layer") && err.contains("cannot index"),
        "{err}"
    );
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    ok(&out, &format!("{cmd:?}"));
}

/// Types, modes, owners, sizes, link targets, mtimes and content hashes of a tree.
fn tree_summary(dir: &Path) -> String {
    let script = "find . ! -type d -printf '%p %y %m %U %G %s %l %T@\\n' | sort; \
                  find . -type d -printf '%p %m %U %G\\n' | sort; \
                  find . -type f -print0 | sort -z | xargs -0 sha256sum";
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success());
    text(&out.stdout)
}

/// `skopeo copy` the image to an OCI layout and `umoci unpack` it; returns the rootfs.
fn unpack(reference: &str, work: &Path, name: &str) -> std::path::PathBuf {
    let layout = work.join(format!("{name}-layout"));
    run(Command::new("skopeo")
        .args(["copy", "-q", "--src-tls-verify=false"])
        .arg(format!("docker://{reference}"))
        .arg(format!("oci:{}:{name}", layout.display())));
    let bundle = work.join(format!("{name}-bundle"));
    run(Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:{name}", layout.display()))
        .arg(&bundle));
    bundle.join("rootfs")
}

#[test]
fn converted_image_unpacks_to_the_same_rootfs_and_reads_by_range() {
    if !skiff_tests::tools_or_skip(&["skopeo", "umoci"], "umoci unpack keeps owners") {
        return;
    }
    let reg = Registry::start();
    let rt = rt();
    let mut layers = fixtures::sample_layers();
    layers.push(Layer::tar_gzip(&[
        Entry::dir("usr", 0o755),
        Entry::dir("usr/bin", 0o755),
        Entry::file("usr/bin/tool", &pseudo_random(3, 3 << 20), 0o755),
        Entry::file("usr/bin/.hidden", b"x", 0o600),
    ]));
    rt.block_on(fixtures::push_image(&reg.host(), "src:v1", layers));
    let work = tempfile::tempdir().unwrap();
    let prefetch = work.path().join("prefetch.txt");
    std::fs::write(&prefetch, "/usr/bin/tool\netc/hostname\n").unwrap();
    let skiff = Skiff::new(&work.path().join("root"));
    let out = skiff.run(&[
        "convert",
        "-q",
        "--chunk-size",
        "1048576",
        "--compression-level",
        "6",
        "--prefetch",
        prefetch.to_str().unwrap(),
        &reg.reference("src:v1"),
        &reg.reference("esgz:v1"),
    ]);
    ok(&out, "skiff convert");
    eprintln!("{}", text(&out.stdout));

    // Same rootfs through ordinary tools (minus eStargz's own files).
    let src_root = unpack(&reg.reference("src:v1"), work.path(), "src");
    let dst_root = unpack(&reg.reference("esgz:v1"), work.path(), "esgz");
    for extra in [
        "stargz.index.json",
        ".prefetch.landmark",
        ".no.prefetch.landmark",
    ] {
        let _ = std::fs::remove_file(dst_root.join(extra));
    }
    assert_eq!(tree_summary(&src_root), tree_summary(&dst_root));

    // Every converted layer is detected as eStargz, indexed from its TOC with Range
    // reads, and each file matches the same file of the source layer.
    let client = Arc::new(skiff_tests::client(&reg.host()));
    let src = resolve(&client, &reg.reference("src:v1"));
    let dst = resolve(&client, &reg.reference("esgz:v1"));
    assert_eq!(src.layers().len(), dst.layers().len());
    let src_layers = layers_of(&client, &rt, &src, &work.path().join("idx-src"));
    let before = client.stats().bytes();
    let dst_layers = layers_of(&client, &rt, &dst, &work.path().join("idx-dst"));
    let toc_bytes = client.stats().bytes() - before;
    assert!(toc_bytes < dst.total_layer_size(), "{toc_bytes}");
    for (s, d) in src_layers.iter().zip(&dst_layers) {
        assert_eq!(d.source, IndexSource::Toc);
        assert_eq!(d.index.format, LayerFormat::Estargz);
        assert_eq!(d.descriptor.media_type, MEDIA_OCI_LAYER_GZIP);
        let want = read_all(&s.index, s.blob.as_ref());
        let mut got = read_all(&d.index, d.blob.as_ref());
        for extra in [
            "stargz.index.json",
            ".prefetch.landmark",
            ".no.prefetch.landmark",
        ] {
            got.remove(extra);
        }
        assert_eq!(want, got, "layer {}", s.descriptor.digest);
    }
    // The prefetch list went first in the layer holding it.
    let tool_layer = &dst_layers[3].index;
    let first: Vec<&str> = tool_layer
        .prefetch
        .iter()
        .map(|&i| tool_layer.entries[i as usize].path.as_str())
        .collect();
    assert_eq!(first, vec!["usr/bin/tool"]);
    // Converting an eStargz image again copies its layers as they are.
    ok(
        &skiff.run(&[
            "convert",
            "-q",
            &reg.reference("esgz:v1"),
            &reg.reference("esgz2:v1"),
        ]),
        "skiff convert of an eStargz image",
    );
    let again = resolve(&client, &reg.reference("esgz2:v1"));
    assert_eq!(again.layers(), dst.layers());
    assert_eq!(again.config_bytes, dst.config_bytes);
    // diff_ids in the new config are the gunzipped layers' digests.
    let cfg: serde_json::Value = serde_json::from_slice(&dst.config_bytes).unwrap();
    let diff_ids = cfg["rootfs"]["diff_ids"].as_array().unwrap();
    for (l, want) in dst_layers.iter().zip(diff_ids) {
        let mut raw = Vec::new();
        std::io::Read::read_to_end(&mut l.blob.stream().unwrap(), &mut raw).unwrap();
        let mut tar = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::MultiGzDecoder::new(&raw[..]), &mut tar)
            .unwrap();
        assert_eq!(Digest::of(&tar).to_string(), want.as_str().unwrap());
    }
}

#[test]
fn a_published_index_that_lies_is_refused_once_the_whole_layer_is_here() {
    // The image's own repository carries a forged index (etc/motd made setuid, chunk
    // digests genuine). Lazily, nothing can tell; once the layer is here whole, the
    // index is checked against it and refused for good.
    let reg = Registry::start();
    let rt = rt();
    let built = push_plain(&reg, &rt, "good/app:v1");
    let client = Arc::new(skiff_tests::client(&reg.host()));
    let image = resolve(&client, &reg.reference("good/app:v1"));
    let scratch = tempfile::tempdir().unwrap();
    let genuine = layers_of(&client, &rt, &image, scratch.path());
    let forged = with_setuid_motd(&genuine[1].index);
    publish_artifact(
        &client,
        &rt,
        "good/app",
        &image,
        built.digest,
        vec![
            index_blob(&genuine[0].index).unwrap(),
            index_blob(&forged).unwrap(),
        ],
    );

    // `skiff index --verify` pulls the layers, checks, and exits 1 naming the layer.
    let root = tempfile::tempdir().unwrap();
    let skiff = Skiff::new(root.path());
    let image_ref = reg.reference("good/app:v1");
    let out = skiff.run(&["index", "-q", "--verify", &image_ref]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let layer = image.layers()[1].digest.to_string();
    let err = text(&out.stderr);
    assert!(
        err.contains(&layer) && err.contains("does not match"),
        "{err}"
    );
    assert!(
        err.contains("etc/motd") && err.contains("mode 4755"),
        "{err}"
    );
    let shown = text(&out.stdout);
    assert_eq!(
        shown.matches("whole layer in the local store").count(),
        2,
        "{shown}"
    );
    // The honest index of layer 0 matched; the store now holds both layers' own
    // indexes (motd 0644) and a record of the refusal.
    let store = IndexStore::open(root.path().join("indexes")).unwrap();
    let own = store.load(&image.layers()[1].digest).unwrap().unwrap();
    let motd = own.entries.iter().find(|e| e.path == "etc/motd").unwrap();
    assert_eq!(motd.mode, 0o644);
    let why = store
        .published_refusal(
            &image.layers()[1].digest,
            &Publisher::Repository("good/app".into()),
        )
        .expect("refusal recorded");
    assert!(why.contains("mode 4755"), "{why}");
    assert!(store
        .published_refusal(
            &image.layers()[0].digest,
            &Publisher::Repository("good/app".into()),
        )
        .is_none());

    // Without --verify: a root that pulled the image checks on the way too, and a
    // root that did not still takes the published index (nothing to check against).
    let pulled = tempfile::tempdir().unwrap();
    let p = Skiff::new(pulled.path());
    ok(&p.run(&["pull", "-q", &image_ref]), "skiff pull");
    let out = p.run(&["index", "-q", &image_ref]);
    ok(&out, "skiff index after pull");
    assert!(
        text(&out.stderr).contains("does not match"),
        "{}",
        text(&out.stderr)
    );
    let lazy = tempfile::tempdir().unwrap();
    let layers = layers_of(&client, &rt, &image, lazy.path());
    assert_eq!(layers[1].source, IndexSource::Published);
    assert_eq!(layers[1].matched_layer, None);
}

#[test]
fn bound_indexes_travel_in_the_image_index_and_other_tools_still_pick_the_image() {
    if !skiff_tests::tools_or_skip(&["skopeo"], "for symmetry with the other tools tests") {
        return;
    }
    let reg = Registry::start();
    let rt = rt();
    let built = push_plain(&reg, &rt, "bind/app:v1");
    let image_ref = reg.reference("bind/app:v1");
    let publisher = tempfile::tempdir().unwrap();
    for _ in 0..2 {
        let out = Skiff::new(publisher.path()).run(&["index", "-q", "--bind", &image_ref]);
        ok(&out, "skiff index --bind");
        assert!(
            text(&out.stdout).contains("bound: image index"),
            "{}",
            text(&out.stdout)
        );
    }
    // The tag now names an index: the image manifest first, its index artifact beside
    // it (binding twice replaced the first artifact entry rather than adding one).
    let raw = Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{image_ref}"))
        .output()
        .unwrap();
    ok(&raw, "skopeo inspect --raw");
    let index: serde_json::Value = serde_json::from_slice(&raw.stdout).unwrap();
    let entries = index["manifests"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "{index}");
    assert_eq!(entries[0]["digest"], built.digest.to_string());
    assert_eq!(
        entries[1]["annotations"]["dev.skiff.index.subject"],
        built.digest.to_string()
    );
    // Another tool resolving the tag for this platform gets the image.
    let inspect = Command::new("skopeo")
        .args(["inspect", "--tls-verify=false"])
        .arg(format!("docker://{image_ref}"))
        .output()
        .unwrap();
    ok(&inspect, "skopeo inspect");
    let info: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    // ("Digest" is the index's now; the layers are the image's.)
    let want: Vec<String> = built
        .layers
        .iter()
        .map(|l| Digest::of(&l.blob).to_string())
        .collect();
    let got: Vec<String> = info["Layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(got, want, "{info}");

    // Skiff on a fresh root takes the bound indexes, without asking for referrers.
    let proxy = FaultProxy::start(reg.addr());
    let client = Arc::new(skiff_tests::client(&proxy.host()));
    let image = resolve(&client, &format!("{}/bind/app:v1", proxy.host()));
    assert_eq!(image.manifest_digest, built.digest);
    let fresh = tempfile::tempdir().unwrap();
    let layers = layers_of(&client, &rt, &image, fresh.path());
    for l in &layers {
        assert_eq!(l.source, IndexSource::Bound, "{}", l.descriptor.digest);
    }
    assert_eq!(proxy.count(None, "/referrers/"), 0);
    assert_eq!(proxy.count(None, "/manifests/sha256-"), 0);
    // And the files read right through them.
    let files = read_all(&layers[1].index, layers[1].blob.as_ref());
    assert_eq!(files["etc/motd"], b"hello\n");
}

/// Issue 16, "key the store by (layer digest, index digest, source)": an index the
/// repository published as a referrer, stored by a root that ran the image, does not
/// decide what the image shows once its image index binds another (a signature over
/// the image index covers the bound one, not the referrer).
#[test]
fn a_bound_index_decides_over_one_the_repository_published() {
    let reg = Registry::start();
    let rt = rt();
    let built = push_plain(&reg, &rt, "bind/over:v1");
    let image_ref = reg.reference("bind/over:v1");
    let client = Arc::new(skiff_tests::client(&reg.host()));
    let image = resolve(&client, &image_ref);
    let scratch = tempfile::tempdir().unwrap();
    let genuine = layers_of(&client, &rt, &image, scratch.path());
    let forged = with_setuid_motd(&genuine[1].index);
    publish_artifact(
        &client,
        &rt,
        "bind/over",
        &image,
        built.digest,
        vec![index_blob(&forged).unwrap()],
    );
    let mode_of = |l: &ResolvedLayer| motd_mode(&l.index);
    // A root runs the image while only the referrer exists: it takes (and stores) it.
    let victim = tempfile::tempdir().unwrap();
    let layers = layers_of(&client, &rt, &image, victim.path());
    assert_eq!(layers[1].source, IndexSource::Published);
    assert_eq!(mode_of(&layers[1]), 0o4755);

    // The image's owner binds the genuine indexes into the image index.
    let owner = tempfile::tempdir().unwrap();
    ok(
        &Skiff::new(owner.path()).run(&["index", "-q", "--no-published", "--bind", &image_ref]),
        "skiff index --bind",
    );
    let bound_image = resolve(&client, &image_ref);
    assert_eq!(bound_image.manifest_digest, built.digest);
    assert!(!bound_image.bound_index_artifacts().is_empty());
    // The same root now shows what the bound index says, not the stored referrer's,
    let layers = layers_of(&client, &rt, &bound_image, victim.path());
    assert_eq!(layers[1].source, IndexSource::Bound);
    assert_eq!(mode_of(&layers[1]), 0o644);
    // and keeps it from the store under the bound artifact's key.
    let again = layers_of(&client, &rt, &bound_image, victim.path());
    assert_eq!(again[1].source, IndexSource::Store);
    assert_eq!(mode_of(&again[1]), 0o644);
    // The unbound image's view of the referrer is kept apart, as before.
    let store = IndexStore::open(victim.path()).unwrap();
    let referrer = store
        .load_published(
            &image.layers()[1].digest,
            &Publisher::Repository("bind/over".into()),
        )
        .unwrap()
        .expect("the referrer's index stays stored under its repository");
    assert_eq!(motd_mode(&referrer), 0o4755);
}

#[test]
fn indexes_saved_in_the_background_reach_the_store_and_serve_the_next_resolution() {
    // The daemon saves the indexes it builds on threads of their own (the write and
    // fsync are not on the way to the first view): the layers come back at once, the
    // store has each index soon after, and a later resolution takes it from there.
    let reg = Registry::start();
    let rt = rt();
    push_plain(&reg, &rt, "saved:v1");
    let client = Arc::new(skiff_tests::client(&reg.host()));
    let image = resolve(&client, &reg.reference("saved:v1"));
    let dir = tempfile::tempdir().unwrap();
    let store = IndexStore::open(dir.path()).unwrap();
    let opts = ResolveOptions {
        use_published: false,
        save_in_background: true,
        ..ResolveOptions::default()
    };
    let layers = resolve_layers(&client, rt.handle(), &image, &store, &opts).unwrap();
    let since = std::time::Instant::now();
    for l in &layers {
        assert_eq!(l.source, IndexSource::Streamed, "{}", l.descriptor.digest);
        let stored = loop {
            if let Some(idx) = store.load(&l.descriptor.digest).unwrap() {
                break idx;
            }
            assert!(
                since.elapsed() < std::time::Duration::from_secs(10),
                "the index of {} never reached the store",
                l.descriptor.digest
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        assert_eq!(stored.entries.len(), l.index.entries.len());
        assert_eq!(stored.chunks.len(), l.index.chunks.len());
        assert_eq!(stored.blob, l.index.blob);
    }
    let again = resolve_layers(&client, rt.handle(), &image, &store, &opts).unwrap();
    for l in &again {
        assert_eq!(l.source, IndexSource::Store, "{}", l.descriptor.digest);
    }
}
