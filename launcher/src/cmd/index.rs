//! `skiff index`: build (or load) every layer's index of an image, show them, and
//! optionally publish them beside the image as an OCI artifact.

use super::pull::human;
use super::registry_args::{runtime, RegistryArgs};
use super::Global;
use anyhow::Context;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use skiff_proto::digest::Digest;
use skiff_proto::image::{Descriptor, ResolvedImage, MEDIA_OCI_MANIFEST};
use skiff_proto::index::artifact::{
    index_artifact_manifest, index_blob, IndexBlob, EMPTY_CONFIG, INDEX_ARTIFACT_TYPE,
};
use skiff_proto::index::resolve::{oci_descriptor, resolve_layers, ResolveOptions, ResolvedLayer};
use skiff_proto::index::store::IndexStore;
use skiff_proto::reference::Reference;
use skiff_proto::registry::Client;
use std::sync::Arc;

/// Arguments of `skiff index`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Image reference.
    pub image: String,
    /// Publish the indexes as an OCI artifact referring to the image (referrers API,
    /// plus the `sha256-<digest>` fallback tag for registries without it).
    #[arg(long)]
    pub push: bool,
    /// Do not look for indexes already published beside the image.
    #[arg(long)]
    pub no_published: bool,
    /// Layers indexed at once.
    #[arg(long, default_value_t = 4)]
    pub parallel: usize,
    /// Distance between gzip checkpoints in indexes built here (uncompressed, e.g.
    /// `1m`): smaller spans fetch less per read, larger ones make smaller indexes.
    #[arg(long, default_value = "2m", value_parser = parse_span)]
    pub span: u64,
    /// No progress bars.
    #[arg(short, long)]
    pub quiet: bool,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

fn parse_span(s: &str) -> Result<u64, String> {
    match crate::container::spec::parse_size(s) {
        Some(n) if (64 << 10..=1 << 30).contains(&n) => Ok(n),
        _ => Err(format!("span {s:?} is not a size from 64k to 1g")),
    }
}

/// Runs `skiff index`.
pub fn run(global: &Global, args: Args) -> anyhow::Result<u8> {
    let reference = Reference::parse(&args.image)?;
    let platform = args.registry.platform()?;
    let client = Arc::new(args.registry.client_for(&reference)?);
    let store = IndexStore::open(global.layout().indexes())
        .with_context(|| format!("opening the index store under {}", global.root.display()))?;
    let rt = runtime()?;
    let image = rt
        .block_on(client.resolve(&reference, platform.as_ref()))
        .with_context(|| format!("resolving {reference}"))?;
    let bars = MultiProgress::new();
    if args.quiet {
        bars.set_draw_target(ProgressDrawTarget::hidden());
    }
    let layers = resolve_layers(
        &client,
        rt.handle(),
        &image,
        &store,
        &ResolveOptions {
            parallel: args.parallel,
            use_published: !args.no_published,
            save: true,
            progress: Some(&bars),
            span: args.span,
        },
    )?;
    print_layers(&image, &layers);
    if args.push {
        let digest = rt.block_on(publish(&client, &image, &layers, &bars))?;
        println!(
            "published index artifact {digest} for {}@{}",
            image.reference.name(),
            image.manifest_digest
        );
    }
    Ok(0)
}

fn print_layers(image: &ResolvedImage, layers: &[ResolvedLayer]) {
    println!("{} {}", image.reference, image.manifest_digest);
    println!(
        "{:<12}  {:<12}  {:>8}  {:>8}  {:>11}  {:>10}  {:>10}  SOURCE",
        "LAYER", "FORMAT", "ENTRIES", "CHUNKS", "CHECKPOINTS", "SIZE", "INDEX"
    );
    for l in layers {
        for why in &l.refused {
            eprintln!("skiff: warning: layer {}: {why}", l.descriptor.digest);
        }
        let encoded = index_blob(&l.index).map_or(0, |b| b.bytes.len() as u64);
        println!(
            "{:<12}  {:<12}  {:>8}  {:>8}  {:>11}  {:>10}  {:>10}  {}",
            l.descriptor.digest.hex().get(..12).unwrap_or_default(),
            format!("{:?}", l.index.format),
            l.index.entries.len(),
            l.index.chunks.len(),
            l.index.checkpoints.len(),
            human(l.descriptor.size),
            human(encoded),
            l.source,
        );
    }
}

/// Pushes the index blobs, the empty config and the artifact manifest (with
/// `subject`), then records it under the referrers fallback tag. Returns the
/// artifact manifest's digest.
pub async fn publish(
    client: &Client,
    image: &ResolvedImage,
    layers: &[ResolvedLayer],
    bars: &MultiProgress,
) -> anyhow::Result<Digest> {
    let repo = image.reference.repository();
    let blobs = layers
        .iter()
        .map(|l| index_blob(&l.index))
        .collect::<Result<Vec<IndexBlob>, _>>()
        .context("encoding the indexes")?;
    let bar = bars.add(ProgressBar::new(blobs.len() as u64 + 2));
    bar.set_style(
        ProgressStyle::with_template("pushing indexes [{bar:30}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    for b in &blobs {
        bar.set_message(format!("{} ({})", b.digest, human(b.bytes.len() as u64)));
        client
            .push_blob(repo, b.bytes.clone().into())
            .await
            .with_context(|| format!("pushing the index of layer {}", b.layer))?;
        bar.inc(1);
    }
    client
        .push_blob(repo, EMPTY_CONFIG.to_vec().into())
        .await
        .context("pushing the empty config")?;
    bar.inc(1);
    let subject = oci_descriptor(&Descriptor::new(
        &image.manifest_media_type,
        image.manifest_digest,
        image.manifest_bytes.len() as u64,
    ))?;
    let manifest = index_artifact_manifest(&subject, &blobs)?;
    let manifest_bytes = serde_json::to_vec(&manifest).context("encoding the artifact")?;
    let digest = Digest::of(&manifest_bytes);
    client
        .push_manifest(
            repo,
            &digest.to_string(),
            MEDIA_OCI_MANIFEST,
            &manifest_bytes,
        )
        .await
        .context("pushing the index artifact manifest")?;
    let mut listed = Descriptor::new(MEDIA_OCI_MANIFEST, digest, manifest_bytes.len() as u64);
    listed.artifact_type = Some(INDEX_ARTIFACT_TYPE.to_string());
    client
        .add_referrer_to_fallback_tag(repo, image.manifest_digest, listed)
        .await
        .context("recording the artifact under the referrers fallback tag")?;
    bar.inc(1);
    bar.finish_and_clear();
    Ok(digest)
}
