//! `skiff push`: an image of the local store to its registry.
//!
//! Each layer goes up only if the repository lacks it (`HEAD` first): from the local
//! store when it holds the layer (a committed layer, or a pulled image's); else from
//! the repository the image was made from ([`ImageRecord::base`]) — mounted across
//! repositories on the same registry, streamed through from another registry. Then
//! the config, then the manifest under the reference's tag.

use super::registry_args::{runtime, RegistryArgs};
use super::Global;
use anyhow::{bail, Context};
use skiff_proto::image::{Descriptor, Manifest};
use skiff_proto::reference::{Reference, DEFAULT_TAG};
use skiff_proto::registry::Client;
use skiff_proto::store::{ImageRecord, Store};
use std::sync::Arc;

/// Arguments of `skiff push`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The image to push, as named in the local store (`skiff images`).
    pub image: String,
    /// Print only the pushed manifest's digest.
    #[arg(short, long)]
    pub quiet: bool,
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
