//! `skiff push`: an image of the local store to its registry.
//!
//! Each layer goes up only if the repository lacks it (`HEAD` first): from the local
//! store when it holds the layer (a committed layer, or a pulled image's); else from
//! the repository the image was made from ([`ImageRecord::base`]) — mounted across
//! repositories on the same registry, streamed through from another registry. Then
//! the config, then the manifest under the reference's tag.
//!
//! `--format` says how the layers skiff made (`skiff commit`) go up: eStargz by
//! default ([`to_estargz`]: the same writer and annotations as `skiff convert`, so a
//! lazy reader fetches only what it reads), or as the tar+gzip `commit` wrote. The
//! base image's layers always go up as they are: their digests are the base's.

use super::local_image::{save_layer_index, COMMIT_CREATED_BY};
use super::registry_args::{runtime, RegistryArgs};
use super::Global;
use anyhow::{bail, Context};
use serde_json::Value;
use skiff_proto::digest::Digest;
use skiff_proto::image::{Descriptor, Manifest};
use skiff_proto::index::convert::{convert_layer, set_diff_ids, EstargzOptions};
use skiff_proto::index::estargz::TOC_DIGEST_ANNOTATION;
use skiff_proto::reference::{Reference, DEFAULT_TAG};
use skiff_proto::registry::Client;
use skiff_proto::store::{ImageRecord, Store};
use std::io::Write;
use std::sync::Arc;

/// How `skiff push` writes the layers skiff made.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerFormat {
    /// eStargz: tar+gzip with a table of contents, read lazily by skiff and
    /// stargz-snapshotter, and as plain gzip by everything else.
    Estargz,
    /// Plain tar+gzip, as `skiff commit` wrote it.
    Gzip,
    /// zstd:chunked: not supported yet (skiff reads it but has no writer).
    #[value(name = "zstd:chunked")]
    ZstdChunked,
}

/// Arguments of `skiff push`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The image to push, as named in the local store (`skiff images`).
    pub image: String,
    /// Print only the pushed manifest's digest.
    #[arg(short, long)]
    pub quiet: bool,
    /// How the layers skiff made go up: estargz, gzip or zstd:chunked (not supported
    /// yet). Layers of the base image go up as they are.
    #[arg(long, value_enum, default_value = "estargz", value_name = "FORMAT")]
    pub format: LayerFormat,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// Runs `skiff push`.
pub fn run(global: &Global, args: Args) -> anyhow::Result<u8> {
    if args.format == LayerFormat::ZstdChunked {
        bail!(
            "--format zstd:chunked is not supported yet: skiff has no zstd:chunked writer \
             (use --format estargz or --format gzip)"
        );
    }
    let reference = Reference::parse(&args.image)?;
    let store = Store::open(&global.root)
        .with_context(|| format!("opening the store at {}", global.root.display()))?;
    let record = store.image(&reference.to_string())?.with_context(|| {
        format!("{reference} is not in the local store (see skiff images; skiff pull or skiff commit first)")
    })?;
    let manifest_bytes = store.read_blob(&record.manifest_digest)?;
    let manifest = Manifest::from_slice("stored manifest", &manifest_bytes)?;
    let config = store.read_blob(&manifest.config.digest)?;
    let image = Outgoing {
        manifest_bytes,
        manifest,
        config,
    };
    let Outgoing {
        manifest_bytes,
        manifest,
        config,
    } = match args.format {
        LayerFormat::Estargz if record.base.is_some() => to_estargz(global, &store, image)
            .with_context(|| format!("writing the layers of {reference} as eStargz"))?,
        _ => image,
    };
    let client = Arc::new(args.registry.client_for(&reference)?);
    let source = match &record.base {
        Some(base) => {
            let base = Reference::parse(base)
                .with_context(|| format!("the recorded layer source of {reference}"))?;
            let base_client = if base.registry() == reference.registry() {
                Arc::clone(&client)
            } else {
                Arc::new(args.registry.client_for(&base)?)
            };
            Some((base, base_client))
        }
        None => None,
    };
    let rt = runtime()?;
    let repo = reference.repository();
    for layer in &manifest.layers {
        rt.block_on(push_layer(
            &client,
            &store,
            repo,
            layer,
            source.as_ref(),
            &record,
        ))
        .with_context(|| format!("pushing layer {} to {reference}", layer.digest))?;
        if !args.quiet {
            eprintln!("{}: pushed", layer.digest);
        }
    }
    rt.block_on(client.push_blob(repo, config.into()))
        .with_context(|| format!("pushing the config to {reference}"))?;
    let tag = match reference.digest() {
        Some(d) => d.to_string(),
        None => reference.tag().unwrap_or(DEFAULT_TAG).to_string(),
    };
    let digest = rt
        .block_on(client.push_manifest(repo, &tag, &record.manifest_media_type, &manifest_bytes))
        .with_context(|| format!("pushing the manifest to {reference}"))?;
    if args.quiet {
        println!("{digest}");
    } else {
        println!("pushed {reference}@{digest}");
    }
    Ok(0)
}

/// Puts one layer into `repo`: from the local store if it is there, else copied from
/// the layer source (a no-op either way when `repo` has it).
async fn push_layer(
    client: &Client,
    store: &Store,
    repo: &str,
    layer: &Descriptor,
    source: Option<&(Reference, Arc<Client>)>,
    record: &ImageRecord,
) -> anyhow::Result<()> {
    if store.has_blob(&layer.digest, layer.size) {
        client
            .push_blob_file(repo, layer.digest, &store.blob_path(&layer.digest))
            .await?;
        return Ok(());
    }
    match source {
        Some((base, from)) => {
            client
                .copy_blob(repo, layer, from, base.repository())
                .await?;
        }
        None => {
            if client.blob_exists(repo, layer.digest).await? != Some(layer.size) {
                bail!(
                    "the local store does not hold it, and {} has no record of where it \
                     comes from (pull the image first)",
                    record.reference
                );
            }
        }
    }
    Ok(())
}

/// An image as it goes up: the manifest (bytes and parsed) and the config.
struct Outgoing {
    manifest_bytes: Vec<u8>,
    manifest: Manifest,
    config: Vec<u8>,
}

/// `image` (made here) with the layers skiff committed rewritten as eStargz: each
/// converted layer is written to the local store with its index (so a later lazy
/// run finds it), its descriptor carries the `toc.digest` and uncompressed-size
/// annotations, and its `diff_id` in the config becomes the eStargz tar's (which
/// holds the TOC and landmark entries too). The new config and manifest go to the
/// store as well. Layers already eStargz and the base image's go unchanged.
fn to_estargz(global: &Global, store: &Store, image: Outgoing) -> anyhow::Result<Outgoing> {
    let config: Value = serde_json::from_slice(&image.config).context("parsing the config")?;
    let committed = committed_layers(&config, image.manifest.layers.len());
    let mut diff_ids = config_diff_ids(&config)?;
    if diff_ids.len() != image.manifest.layers.len() {
        bail!(
            "the config lists {} diff_ids for {} layers",
            diff_ids.len(),
            image.manifest.layers.len()
        );
    }
    let mut manifest = image.manifest.clone();
    let mut converted_any = false;
    for (i, layer) in manifest.layers.iter_mut().enumerate() {
        if !committed[i]
            || layer.annotations.contains_key(TOC_DIGEST_ANNOTATION)
            || !store.has_blob(&layer.digest, layer.size)
        {
            continue;
        }
        let (descriptor, diff_id) = convert_stored_layer(store, layer)?;
        save_layer_index(global, store, &descriptor)?;
        tracing::info!(from = %layer.digest, to = %descriptor.digest, "layer written as eStargz");
        *layer = descriptor;
        diff_ids[i] = diff_id;
        converted_any = true;
    }
    if !converted_any {
        return Ok(image);
    }
    let config = set_diff_ids(&image.config, &diff_ids).context("rewriting the config")?;
    let config_digest = store_blob(store, &config)?;
    manifest.config = Descriptor::new(
        &manifest.config.media_type,
        config_digest,
        config.len() as u64,
    );
    let manifest_bytes = manifest.to_bytes();
    store_blob(store, &manifest_bytes)?;
    Ok(Outgoing {
        manifest_bytes,
        manifest,
        config,
    })
}

/// Writes `data` into the store under its digest; returns the digest.
fn store_blob(store: &Store, data: &[u8]) -> anyhow::Result<Digest> {
    let digest = Digest::of(data);
    store.write_blob(&digest, data)?;
    Ok(digest)
}

/// Rewrites the stored tar+gzip `layer` as eStargz into the store: its descriptor
/// (same media type, with the eStargz annotations) and its `diff_id`.
fn convert_stored_layer(store: &Store, layer: &Descriptor) -> anyhow::Result<(Descriptor, Digest)> {
    let blob = store.open_blob(&layer.digest)?;
    let mut temp = store.temp_file()?;
    let converted = {
        let mut out = std::io::BufWriter::with_capacity(1 << 20, temp.as_file_mut());
        let converted = convert_layer(
            &blob,
            &layer.media_type,
            &mut out,
            &EstargzOptions::default(),
            None,
        )
        .with_context(|| format!("converting layer {} to eStargz", layer.digest))?;
        out.flush().context("writing the eStargz layer")?;
        converted
    };
    store.commit_blob(&converted.blob_digest, temp)?;
    let mut descriptor = Descriptor::new(
        &layer.media_type,
        converted.blob_digest,
        converted.blob_size,
    );
    descriptor.annotations.extend(converted.annotations());
    Ok((descriptor, converted.diff_id))
}

/// The config's `rootfs.diff_ids`.
fn config_diff_ids(config: &Value) -> anyhow::Result<Vec<Digest>> {
    config["rootfs"]["diff_ids"]
        .as_array()
        .context("the config has no rootfs.diff_ids list")?
        .iter()
        .map(|d| {
            d.as_str()
                .and_then(|s| s.parse().ok())
                .with_context(|| format!("diff_id {d} in the config"))
        })
        .collect()
}

/// Which of the image's `layers` layers `skiff commit` made, by position: those whose
/// history entry (entries marked `empty_layer` stand for no layer) says so. When the
/// history does not line up with the layers, none: every layer goes up as it is.
fn committed_layers(config: &Value, layers: usize) -> Vec<bool> {
    let made: Vec<bool> = config["history"]
        .as_array()
        .map(|h| {
            h.iter()
                .filter(|e| !e["empty_layer"].as_bool().unwrap_or(false))
                .map(|e| e["created_by"].as_str() == Some(COMMIT_CREATED_BY))
                .collect()
        })
        .unwrap_or_default();
    if made.len() != layers {
        tracing::warn!(
            history = made.len(),
            layers,
            "the config's history does not match the layers; pushing every layer as it is"
        );
        return vec![false; layers];
    }
    made
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn committed_layers_are_found_by_their_history_entry() {
        let config = json!({"history": [
            {"created_by": "ADD rootfs.tar"},
            {"created_by": "ENV A=1", "empty_layer": true},
            {"created_by": "skiff commit"},
        ]});
        assert_eq!(committed_layers(&config, 2), [false, true]);
        // A history that does not line up with the layers marks none.
        assert_eq!(committed_layers(&config, 3), [false, false, false]);
        assert_eq!(committed_layers(&json!({}), 1), [false]);
    }
}
