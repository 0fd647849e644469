//! `skiff convert`: rewrite an image's layers to eStargz (or, with `--format
//! zstd:chunked`, to zstd:chunked) and push the result.
//!
//! Each layer is streamed from the source registry (verified), rewritten by
//! [`convert_layer`] into a temporary file, and pushed to the destination with the
//! format's annotations (eStargz: `toc.digest` and uncompressed size; zstd:chunked:
//! the manifest checksum and position, the tar-split position). Layers already in
//! that format are copied as they are. The config keeps every field but
//! `rootfs.diff_ids`, which is set to the new layers' uncompressed digests
//! ([`set_diff_ids`]). The manifest is an OCI manifest.

use super::pull::human;
use super::registry_args::{runtime, RegistryArgs};
use super::Global;
use anyhow::{bail, Context};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use skiff_proto::blob::BlobReader;
use skiff_proto::digest::Digest;
use skiff_proto::image::{
    Descriptor, Manifest, ResolvedImage, MEDIA_OCI_CONFIG, MEDIA_OCI_MANIFEST,
};
use skiff_proto::index::convert::{
    convert_layer, set_diff_ids, EstargzOptions, Target, ZstdChunkedOptions,
};
use skiff_proto::reference::Reference;
use skiff_proto::registry::{Client, RemoteBlob};
use skiff_proto::store::Store;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::runtime::Handle;

/// The formats `skiff convert` writes.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// eStargz: tar+gzip with a table of contents.
    Estargz,
    /// zstd:chunked: tar+zstd with a table of contents (containers/storage's).
    #[value(name = "zstd:chunked")]
    ZstdChunked,
}

/// Arguments of `skiff convert`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Source image reference.
    pub src: String,
    /// Destination reference (a tag; may be on another registry).
    pub dst: String,
    /// The layers' format: estargz or zstd:chunked.
    #[arg(long, value_enum, default_value = "estargz", value_name = "FORMAT")]
    pub format: Format,
    /// Largest chunk of a file: per gzip member (eStargz), or the cap on
    /// zstd:chunked's content-defined chunks; in bytes.
    #[arg(long, default_value_t = 4 << 20)]
    pub chunk_size: u64,
    /// Compression level: gzip's 0 (none) to 9 (best, the default) for eStargz,
    /// zstd's 1 to 19 (default 3) for zstd:chunked.
    #[arg(long, value_parser = clap::value_parser!(u32).range(0..=19))]
    pub compression_level: Option<u32>,
    /// File listing paths (one per line) to put first in each layer, before
    /// `.prefetch.landmark`, so a lazy mount can prefetch them (eStargz only).
    #[arg(long, value_name = "FILE")]
    pub prefetch: Option<PathBuf>,
    /// No progress bars.
    #[arg(short, long)]
    pub quiet: bool,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// Runs `skiff convert`.
pub fn run(global: &Global, args: Args) -> anyhow::Result<u8> {
    let src = Reference::parse(&args.src)?;
    let dst = Reference::parse(&args.dst)?;
    if dst.digest().is_some() {
        bail!("destination {dst} names a digest; give a tag (the digest changes)");
    }
    if args.chunk_size == 0 {
        bail!("--chunk-size must be at least 1 byte");
    }
    let prefetch = match &args.prefetch {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("reading the prefetch list {}", path.display()))?
            .lines()
            .map(|l| l.trim().trim_start_matches('/').to_string())
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect(),
        None => Vec::new(),
    };
    let target = match args.format {
        Format::Estargz => {
            let level = args.compression_level.unwrap_or(9);
            if level > 9 {
                bail!("--compression-level {level}: gzip's levels are 0 to 9");
            }
            Target::Estargz(EstargzOptions {
                chunk_size: args.chunk_size,
                level,
                prefetch,
            })
        }
        Format::ZstdChunked => {
            if args.prefetch.is_some() {
                bail!("--prefetch needs --format estargz (zstd:chunked has no prefetch landmark)");
            }
            let level = args.compression_level.unwrap_or(3);
            if level == 0 {
                bail!("--compression-level 0: zstd's levels are 1 to 19");
            }
            Target::ZstdChunked(ZstdChunkedOptions {
                level: level as i32,
                max_chunk: args.chunk_size,
            })
        }
    };
    let platform = args.registry.platform()?;
    let src_client = Arc::new(args.registry.client_for(&src)?);
    let dst_client = if dst.registry() == src.registry() {
        Arc::clone(&src_client)
    } else {
        Arc::new(args.registry.client_for(&dst)?)
    };
    let store = Store::open(&global.root)
        .with_context(|| format!("opening the store at {}", global.root.display()))?;
    let rt = runtime()?;
    let image = rt
        .block_on(src_client.resolve(&src, platform.as_ref()))
        .with_context(|| format!("resolving {src}"))?;
    let bars = MultiProgress::new();
    if args.quiet {
        bars.set_draw_target(ProgressDrawTarget::hidden());
    }
    let digest = convert_image(
        &src_client,
        &dst_client,
        rt.handle(),
        &image,
        &dst,
        &target,
        &store,
        &bars,
    )?;
    println!("converted {src} to {dst}@{digest}");
    Ok(0)
}

/// Converts `image` and pushes it as `dst`; returns the new manifest's digest.
/// Temporary files go under `store`'s root. Blocking: call it outside the runtime
/// `handle` belongs to.
#[allow(clippy::too_many_arguments)]
pub fn convert_image(
    src_client: &Arc<Client>,
    dst_client: &Arc<Client>,
    handle: &Handle,
    image: &ResolvedImage,
    dst: &Reference,
    target: &Target,
    store: &Store,
    bars: &MultiProgress,
) -> anyhow::Result<Digest> {
    let src_repo = image.reference.repository();
    let dst_repo = dst.repository();
    let old_diff_ids = image.config.rootfs().diff_ids();
    if old_diff_ids.len() != image.layers().len() {
        bail!(
            "config of {} lists {} diff_ids for {} layers",
            image.reference,
            old_diff_ids.len(),
            image.layers().len()
        );
    }
    let style =
        ProgressStyle::with_template("{prefix:.bold} {msg:<12} {bytes} {binary_bytes_per_sec}")
            .unwrap_or_else(|_| ProgressStyle::default_bar());
    let mut layers = Vec::new();
    let mut diff_ids = Vec::new();
    for (layer, old_diff_id) in image.layers().iter().zip(old_diff_ids) {
        let bar = bars.add(ProgressBar::new(layer.size));
        bar.set_style(style.clone());
        bar.set_prefix(layer.digest.hex().get(..12).unwrap_or_default().to_string());
        let blob = RemoteBlob::new(
            Arc::clone(src_client),
            src_repo,
            layer.digest,
            layer.size,
            handle.clone(),
        );
        let mut out = store.temp_file().context("creating a temporary file")?;
        let (descriptor, diff_id) = if target.is_format_of(&layer.annotations) {
            bar.set_message("copying");
            let mut input = blob
                .stream()
                .with_context(|| format!("fetching layer {}", layer.digest))?;
            std::io::copy(&mut bar.wrap_read(&mut input), out.as_file_mut())
                .with_context(|| format!("copying layer {}", layer.digest))?;
            let diff_id: Digest = old_diff_id
                .to_string()
                .parse()
                .with_context(|| format!("diff_id {old_diff_id} in the source config"))?;
            (layer.clone(), diff_id)
        } else {
            bar.set_message("converting");
            let progress = |n: u64| bar.set_position(n);
            let converted = convert_layer(
                &blob,
                &layer.media_type,
                out.as_file_mut(),
                target,
                Some(&progress),
            )
            .with_context(|| format!("converting layer {}", layer.digest))?;
            let mut d = Descriptor::new(
                target.media_type(),
                converted.blob_digest,
                converted.blob_size,
            );
            d.annotations.extend(converted.annotations());
            (d, converted.diff_id)
        };
        bar.set_message("pushing");
        handle
            .block_on(dst_client.push_blob_file(dst_repo, descriptor.digest, out.path()))
            .with_context(|| format!("pushing layer {} to {dst}", descriptor.digest))?;
        bar.finish_with_message(format!(
            "done: {} → {} ({})",
            human(layer.size),
            human(descriptor.size),
            descriptor.digest
        ));
        layers.push(descriptor);
        diff_ids.push(diff_id);
    }
    let config = set_diff_ids(&image.config_bytes, &diff_ids).context("rewriting the config")?;
    let config_desc = Descriptor::of(MEDIA_OCI_CONFIG, &config);
    handle
        .block_on(dst_client.push_blob(dst_repo, config.into()))
        .with_context(|| format!("pushing the config to {dst}"))?;
    let mut manifest = Manifest::oci(config_desc, layers);
    manifest.annotations = image.manifest.annotations.clone();
    let bytes = manifest.to_bytes();
    let tag = dst.tag().unwrap_or(skiff_proto::reference::DEFAULT_TAG);
    let digest = handle
        .block_on(dst_client.push_manifest(dst_repo, tag, MEDIA_OCI_MANIFEST, &bytes))
        .with_context(|| format!("pushing the manifest to {dst}"))?;
    Ok(digest)
}
