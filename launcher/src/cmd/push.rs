//! `skiff push`: an image of the local store to its registry.
//!
//! Each layer goes up only if the repository lacks it (`HEAD` first): from the local
//! store when it holds the layer (a committed layer, or a pulled image's); else from
//! the repository the image was made from ([`ImageRecord::base`]) — mounted across
//! repositories on the same registry, streamed through from another registry. Then
//! the config, then the manifest under the reference's tag.
//!
//! `--format` says how the layers skiff made (`skiff commit`) go up: eStargz by
//! default or zstd:chunked ([`convert_committed`]: the same writers and annotations
//! as `skiff convert`, so a lazy reader fetches only what it reads), or as the
//! tar+gzip `commit` wrote. The base image's layers always go up as they are: their
//! digests are the base's.

use super::local_image::{save_layer_index, COMMIT_CREATED_BY};
use super::registry_args::{runtime, RegistryArgs};
use super::Global;
use anyhow::{bail, Context};
use serde_json::Value;
use skiff_proto::digest::Digest;
use skiff_proto::image::{
    Descriptor, Manifest, MEDIA_DOCKER_CONFIG, MEDIA_DOCKER_LAYER_GZIP, MEDIA_DOCKER_MANIFEST,
    MEDIA_OCI_CONFIG, MEDIA_OCI_LAYER_GZIP, MEDIA_OCI_MANIFEST,
};
use skiff_proto::index::convert::{
    convert_layer, set_diff_ids, EstargzOptions, Target, ZstdChunkedOptions,
};
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
    /// zstd:chunked: tar+zstd with a table of contents, read lazily by skiff and
    /// pulled partially by podman (containers/storage), and as plain zstd by
    /// everything else.
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
    /// How the layers skiff made go up: estargz, gzip or zstd:chunked. Layers of the
    /// base image go up as they are.
    #[arg(long, value_enum, default_value = "estargz", value_name = "FORMAT")]
    pub format: LayerFormat,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// Runs `skiff push`.
pub fn run(global: &Global, args: Args) -> anyhow::Result<u8> {
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
        manifest_media_type: record.manifest_media_type.clone(),
        manifest,
        config,
    };
    let target = match args.format {
        LayerFormat::Estargz => Some((Target::Estargz(EstargzOptions::default()), "eStargz")),
        LayerFormat::ZstdChunked => Some((
            Target::ZstdChunked(ZstdChunkedOptions::default()),
            "zstd:chunked",
        )),
        LayerFormat::Gzip => None,
    };
    let Outgoing {
        manifest_bytes,
        manifest_media_type,
        manifest,
        config,
    } = match target {
        Some((target, name)) if record.base.is_some() => {
            convert_committed(global, &store, image, &target)
                .with_context(|| format!("writing the layers of {reference} as {name}"))?
        }
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
        .block_on(client.push_manifest(repo, &tag, &manifest_media_type, &manifest_bytes))
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

/// An image as it goes up: the manifest (bytes, media type and parsed) and the config.
struct Outgoing {
    manifest_bytes: Vec<u8>,
    manifest_media_type: String,
    manifest: Manifest,
    config: Vec<u8>,
}

/// `image` (made here) with the layers skiff committed rewritten in `target`'s
/// format: each converted layer is written to the local store with its index (so a
/// later lazy run finds it), its descriptor carries the format's annotations, and its
/// `diff_id` in the config becomes the new tar's (eStargz's holds the TOC and
/// landmark entries too; zstd:chunked's is the committed tar itself). The new config
/// and manifest go to the store as well. Layers already in that format and the base
/// image's go unchanged; for zstd:chunked, a Docker manifest becomes an OCI one
/// (Docker's has no zstd media type), its base layers relabelled, not rewritten.
fn convert_committed(
    global: &Global,
    store: &Store,
    image: Outgoing,
    target: &Target,
) -> anyhow::Result<Outgoing> {
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
            || target.is_format_of(&layer.annotations)
            || !store.has_blob(&layer.digest, layer.size)
        {
            continue;
        }
        let (descriptor, diff_id) = convert_stored_layer(store, layer, target)?;
        save_layer_index(global, store, &descriptor)?;
        tracing::info!(
            from = %layer.digest,
            to = %descriptor.digest,
            media_type = %descriptor.media_type,
            "committed layer converted"
        );
        *layer = descriptor;
        diff_ids[i] = diff_id;
        converted_any = true;
    }
    if !converted_any {
        return Ok(image);
    }
    let mut manifest_media_type = image.manifest_media_type;
    if matches!(target, Target::ZstdChunked(_)) && manifest_media_type == MEDIA_DOCKER_MANIFEST {
        to_oci_media_types(&mut manifest);
        manifest_media_type = MEDIA_OCI_MANIFEST.to_string();
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
        manifest_media_type,
        manifest,
        config,
    })
}

/// Relabels a Docker manifest's media types as OCI's (the blobs stay the same: a
/// Docker config and gzip layer are an OCI config and gzip layer).
fn to_oci_media_types(manifest: &mut Manifest) {
    manifest.media_type = Some(MEDIA_OCI_MANIFEST.to_string());
    if manifest.config.media_type == MEDIA_DOCKER_CONFIG {
        manifest.config.media_type = MEDIA_OCI_CONFIG.to_string();
    }
    for layer in &mut manifest.layers {
        if layer.media_type == MEDIA_DOCKER_LAYER_GZIP {
            layer.media_type = MEDIA_OCI_LAYER_GZIP.to_string();
        }
    }
}

/// Writes `data` into the store under its digest; returns the digest.
fn store_blob(store: &Store, data: &[u8]) -> anyhow::Result<Digest> {
    let digest = Digest::of(data);
    store.write_blob(&digest, data)?;
    Ok(digest)
}

/// Rewrites the stored tar+gzip `layer` in `target`'s format into the store: its
/// descriptor (with the format's annotations; eStargz keeps the media type, which is
/// tar+gzip already) and its `diff_id`.
fn convert_stored_layer(
    store: &Store,
    layer: &Descriptor,
    target: &Target,
) -> anyhow::Result<(Descriptor, Digest)> {
    let blob = store.open_blob(&layer.digest)?;
    let mut temp = store.temp_file()?;
    let converted = {
        let mut out = std::io::BufWriter::with_capacity(1 << 20, temp.as_file_mut());
        let converted = convert_layer(&blob, &layer.media_type, &mut out, target, None)
            .with_context(|| format!("converting layer {}", layer.digest))?;
        out.flush().context("writing the converted layer")?;
        converted
    };
    store.commit_blob(&converted.blob_digest, temp)?;
    let media_type = match target {
        Target::Estargz(_) => &layer.media_type,
        Target::ZstdChunked(_) => target.media_type(),
    };
    let mut descriptor = Descriptor::new(media_type, converted.blob_digest, converted.blob_size);
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

    #[test]
    fn docker_media_types_become_oci() {
        let blob = Digest::of(b"x");
        let mut m = Manifest::oci(
            Descriptor::new(MEDIA_DOCKER_CONFIG, blob, 1),
            vec![
                Descriptor::new(MEDIA_DOCKER_LAYER_GZIP, blob, 1),
                Descriptor::new(skiff_proto::image::MEDIA_OCI_LAYER_ZSTD, blob, 1),
            ],
        );
        m.media_type = Some(MEDIA_DOCKER_MANIFEST.to_string());
        to_oci_media_types(&mut m);
        assert_eq!(m.media_type.as_deref(), Some(MEDIA_OCI_MANIFEST));
        assert_eq!(m.config.media_type, MEDIA_OCI_CONFIG);
        assert_eq!(m.layers[0].media_type, MEDIA_OCI_LAYER_GZIP);
        assert_eq!(
            m.layers[1].media_type,
            skiff_proto::image::MEDIA_OCI_LAYER_ZSTD
        );
        assert_eq!(m.layers[0].digest, blob);
    }
}
