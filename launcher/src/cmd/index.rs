//! `skiff index`: build (or load) every layer's index of an image, show them, and
//! optionally publish them beside the image as an OCI artifact.

use super::pull::{human, pull};
use super::registry_args::{runtime, RegistryArgs};
use super::Global;
use anyhow::Context;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use skiff_proto::digest::Digest;
use skiff_proto::image::{
    Descriptor, Index, ResolvedImage, BOUND_SUBJECT_ANNOTATION, INDEX_ARTIFACT_TYPE,
    MEDIA_OCI_INDEX, MEDIA_OCI_MANIFEST,
};
use skiff_proto::index::artifact::{index_blob, IndexBlob};
use skiff_proto::index::store::IndexStore;
use skiff_proto::reference::Reference;
use skiff_proto::registry::Client;
use skiff_proto::resolve::{resolve_layers, ResolveOptions, ResolveProgress, ResolvedLayer};
use skiff_proto::store::Store;
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
    /// Pull the image's layers whole (verified) and check every published index
    /// against its layer: one that does not match is refused for good, and the
    /// command exits 1.
    #[arg(long, conflicts_with = "no_published")]
    pub verify: bool,
    /// Publish the indexes and bind them to the image: push an image index that lists
    /// the image manifest and the index artifact side by side, under the image's tag
    /// (or --bind-tag), so that the image index's digest (and a signature over it)
    /// covers the indexes. Other tools still pick the image from it.
    #[arg(long)]
    pub bind: bool,
    /// The tag the binding image index is pushed under (default: the image's own).
    #[arg(long, value_name = "TAG", requires = "bind")]
    pub bind_tag: Option<String>,
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
    // Layers pulled whole (now with --verify, or earlier) check published indexes.
    let whole = Store::open(&global.root)
        .with_context(|| format!("opening the store at {}", global.root.display()))?;
    if args.verify {
        rt.block_on(pull(
            &client,
            &whole,
            &reference,
            platform.as_ref(),
            !args.quiet,
        ))?;
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
            save_in_background: false,
            progress: Some(&IndexingBars(&bars)),
            span: args.span,
            whole_layers: Some(&whole),
        },
    )?;
    print_layers(&image, &layers);
    if args.verify {
        let lying: Vec<String> = layers
            .iter()
            .filter(|l| l.matched_layer == Some(false))
            .map(|l| l.descriptor.digest.to_string())
            .collect();
        let matched = layers
            .iter()
            .filter(|l| l.matched_layer == Some(true))
            .count();
        if !lying.is_empty() {
            eprintln!(
                "skiff: the published index of layer(s) {} does not match the layer; refused, the layers' own indexes are used",
                lying.join(", ")
            );
            return Ok(1);
        }
        println!("{matched} published index(es) checked against their layers: all match");
    }
    if args.push || args.bind {
        // An index taken from a published artifact was not derived here: pushing it
        // again would vouch for what someone else wrote.
        let foreign: Vec<String> = layers
            .iter()
            .filter(|l| l.published)
            .map(|l| l.descriptor.digest.to_string())
            .collect();
        if !foreign.is_empty() {
            anyhow::bail!(
                "not republishing the published index of layer(s) {}: build them here with --no-published",
                foreign.join(", ")
            );
        }
        let digest = rt.block_on(publish(&client, &image, &layers, &bars))?;
        println!(
            "published index artifact {digest} for {}@{}",
            image.reference.name(),
            image.manifest_digest
        );
        if args.bind {
            let tag = match (&args.bind_tag, image.reference.tag()) {
                (Some(t), _) => t.clone(),
                (None, Some(t)) => t.to_string(),
                (None, None) => anyhow::bail!(
                    "--bind needs a tag to push the image index under: {} names a digest; give --bind-tag",
                    image.reference
                ),
            };
            let bound = rt.block_on(bind(&client, &image, digest, &tag))?;
            println!(
                "bound: image index {bound} ({}:{tag}) lists {} and its indexes",
                image.reference.name(),
                image.manifest_digest
            );
        }
    }
    Ok(0)
}

/// Pushes, under `tag`, an image index listing the image manifest first and the index
/// artifact `artifact` beside it (same platform, so tools that pick by platform take
/// the first entry, the image; [`BOUND_SUBJECT_ANNOTATION`] names the manifest).
/// An image that came from an index keeps all of its entries.
async fn bind(
    client: &Client,
    image: &ResolvedImage,
    artifact: Digest,
    tag: &str,
) -> anyhow::Result<Digest> {
    let repo = image.reference.repository();
    let (artifact_bytes, _, _) = client
        .get_manifest(repo, &artifact.to_string())
        .await
        .context("reading back the index artifact")?;
    let mut entry = Descriptor::new(MEDIA_OCI_MANIFEST, artifact, artifact_bytes.len() as u64);
    entry.artifact_type = Some(INDEX_ARTIFACT_TYPE.to_string());
    entry.platform = Some(image.platform.clone());
    entry.annotations.insert(
        BOUND_SUBJECT_ANNOTATION.to_string(),
        image.manifest_digest.to_string(),
    );
    let mut index = match &image.index_bytes {
        Some(bytes) => serde_json::from_slice::<Index>(bytes).context("parsing the image index")?,
        None => {
            let mut m = image.manifest_descriptor();
            m.platform = Some(image.platform.clone());
            Index::oci(vec![m])
        }
    };
    // A binding made earlier for this manifest is replaced, not kept beside.
    let subject = image.manifest_digest.to_string();
    index.manifests.retain(|d| {
        d.artifact_type.as_deref() != Some(INDEX_ARTIFACT_TYPE)
            || d.annotations.get(BOUND_SUBJECT_ANNOTATION) != Some(&subject)
    });
    index.manifests.push(entry);
    let media_type = index
        .media_type
        .clone()
        .unwrap_or_else(|| MEDIA_OCI_INDEX.to_string());
    let bytes = serde_json::to_vec(&index).context("encoding the image index")?;
    client
        .push_manifest(repo, tag, &media_type, &bytes)
        .await
        .with_context(|| {
            format!(
                "pushing the image index as {}:{tag}",
                image.reference.name()
            )
        })
}

/// Draws one `indicatif` bar per streaming pass of [`resolve_layers`].
pub struct IndexingBars<'m>(pub &'m MultiProgress);

impl ResolveProgress for IndexingBars<'_> {
    fn streaming<'a>(&'a self, layer: &Descriptor) -> Box<dyn Fn(u64) + 'a> {
        let bar = self.0.add(ProgressBar::new(layer.size));
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix:.bold} indexing [{bar:30}] {bytes}/{total_bytes} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_prefix(layer.digest.hex().get(..12).unwrap_or_default().to_string());
        let bar = ClearedOnDrop(bar);
        Box::new(move |n| bar.0.set_position(n))
    }
}

/// A bar that disappears when the pass it shows ends (the callback is dropped).
struct ClearedOnDrop(ProgressBar);

impl Drop for ClearedOnDrop {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
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

/// Pushes the indexes as an artifact referring to the image (see
/// [`skiff_proto::registry::Client::push_artifact`]). Returns the artifact manifest's
/// digest.
pub async fn publish(
    client: &Client,
    image: &ResolvedImage,
    layers: &[ResolvedLayer],
    bars: &MultiProgress,
) -> anyhow::Result<Digest> {
    let blobs = layers
        .iter()
        .map(|l| index_blob(&l.index))
        .collect::<Result<Vec<IndexBlob>, _>>()
        .context("encoding the indexes")?;
    let bar = bars.add(ProgressBar::new(blobs.len() as u64));
    bar.set_style(
        ProgressStyle::with_template("pushing indexes [{bar:30}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let artifact_layers: Vec<_> = blobs
        .iter()
        .map(|b| (b.descriptor(), b.bytes.clone().into()))
        .collect();
    let pushed = |d: &Descriptor| {
        bar.set_message(format!("{} ({})", d.digest, human(d.size)));
        bar.inc(1);
    };
    let digest = client
        .push_artifact(
            image.reference.repository(),
            &image.manifest_descriptor(),
            INDEX_ARTIFACT_TYPE,
            &artifact_layers,
            &pushed,
        )
        .await
        .context("publishing the index artifact")?;
    bar.finish_and_clear();
    Ok(digest)
}
