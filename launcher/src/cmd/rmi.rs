//! `skiff rmi`: forget images of the local store.
//!
//! As docker: a name whose image has other names is only untagged; the last name of
//! an image a container was started from (running or not) is kept unless `--force`.
//! When an image's last name goes, its manifest, config and layers leave the store,
//! except what another image still uses.

use super::local_image::{container_image, container_manifest};
use super::Global;
use crate::container::state;
use anyhow::{bail, Context};
use skiff_proto::digest::Digest;
use skiff_proto::image::Manifest;
use skiff_proto::reference::Reference;
use skiff_proto::store::{ImageRecord, Store};
use std::collections::BTreeSet;

/// Arguments of `skiff rmi`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Remove the image even if containers were started from it.
    #[arg(short, long)]
    pub force: bool,
    /// Images, as named in the local store.
    #[arg(required = true)]
    pub images: Vec<String>,
}

/// Runs `skiff rmi`.
pub fn run(global: &Global, args: Args) -> anyhow::Result<u8> {
    let store = Store::open(&global.root)
        .with_context(|| format!("opening the store at {}", global.root.display()))?;
    let mut code = 0;
    for image in &args.images {
        if let Err(e) = remove(global, &store, image, args.force) {
            eprintln!("skiff: {e:#}");
            code = 1;
        }
    }
    Ok(code)
}

/// Removes one name (and the image, if it was its last name).
fn remove(global: &Global, store: &Store, image: &str, force: bool) -> anyhow::Result<()> {
    let reference = Reference::parse(image)?.to_string();
    let record = store
        .image(&reference)?
        .with_context(|| format!("no such image: {image}"))?;
    let others = store.images()?;
    let last_name = !others
        .iter()
        .any(|r| r.reference != reference && r.manifest_digest == record.manifest_digest);
    if last_name && !force {
        if let Some(user) = users(global, store, &record)?.first() {
            bail!(
                "unable to remove {reference}: container {user} was started from it \
                 (remove the container, or use --force)"
            );
        }
    }
    store.remove_image(&reference)?;
    println!("Untagged: {reference}");
    if !last_name {
        return Ok(());
    }
    let kept: Vec<ImageRecord> = store.images()?;
    let in_use = blobs_of_all(store, &kept);
    for digest in blobs_of(store, &record) {
        if !in_use.contains(&digest) && store.remove_blob(&digest)? {
            println!("Deleted: {digest}");
        }
    }
    Ok(())
}

/// The names of the containers started from `record`'s image.
fn users(global: &Global, store: &Store, record: &ImageRecord) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for c in state::list(&global.root)? {
        let paths = global.layout().container(&c.id);
        let Some(image) = container_image(&paths) else {
            continue;
        };
        if container_manifest(store, &image) == Some(record.manifest_digest) {
            out.push(c.name);
        }
    }
    Ok(out)
}

/// The blobs an image is made of: index, manifest, config, layers (those the store
/// can tell: a manifest it does not hold names nothing).
fn blobs_of(store: &Store, record: &ImageRecord) -> BTreeSet<Digest> {
    let mut out = BTreeSet::from([record.manifest_digest, record.config_digest]);
    out.extend(record.index_digest);
    if let Ok(bytes) = store.read_blob(&record.manifest_digest) {
        if let Ok(m) = Manifest::from_slice("stored manifest", &bytes) {
            out.insert(m.config.digest);
            out.extend(m.layers.iter().map(|l| l.digest));
        }
    }
    out
}

fn blobs_of_all(store: &Store, records: &[ImageRecord]) -> BTreeSet<Digest> {
    records.iter().flat_map(|r| blobs_of(store, r)).collect()
}
