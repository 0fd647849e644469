//! `skiff tag`: another name for an image of the local store.
//!
//! The new name's record points at the same manifest. When it names another
//! repository, the record also says where the layers come from (the source's
//! [`skiff_proto::store::ImageRecord::base`], else the source itself), so `skiff run`
//! of the new name reads them there and `skiff push` of it copies them from there.

use super::lazy::{resolve_image, PullPolicy};
use super::registry_args::{runtime, RegistryArgs};
use super::Global;
use anyhow::{bail, Context};
use skiff_proto::reference::Reference;
use skiff_proto::store::Store;
use std::sync::Arc;

/// Arguments of `skiff tag`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The image to name (looked up in the registry if the store does not know it).
    pub source: String,
    /// The new name, REPOSITORY[:TAG].
    pub target: String,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// Runs `skiff tag`.
pub fn run(global: &Global, args: Args) -> anyhow::Result<u8> {
    let source = Reference::parse(&args.source)?;
    let target = Reference::parse(&args.target)?;
    if target.digest().is_some() {
        bail!("{target} names a digest; give REPOSITORY[:TAG]");
    }
    let store = Store::open(&global.root)
        .with_context(|| format!("opening the store at {}", global.root.display()))?;
    let record = match store.image(&source.to_string())? {
        Some(r) => r,
        None => {
            // As `skiff run` would: resolve it and remember it.
            let rt = runtime()?;
            let client_for = |r: &Reference| -> anyhow::Result<Arc<skiff_proto::registry::Client>> {
                Ok(Arc::new(args.registry.client_for(r)?))
            };
            resolve_image(
                global,
                &args.registry,
                &client_for,
                PullPolicy::Missing,
                rt.handle(),
                &args.source,
            )?;
            store
                .image(&source.to_string())?
                .with_context(|| format!("{source} was resolved but not recorded"))?
        }
    };
    let same_repository =
        source.registry() == target.registry() && source.repository() == target.repository();
    let base = match (&record.base, same_repository) {
        (Some(b), _) => Some(b.clone()),
        (None, true) => None,
        (None, false) => Some(record.reference.clone()),
    };
    let mut new = record;
    new.reference = target.to_string();
    new.base = base;
    new.pulled_at = super::local_image::now_secs();
    store.put_image(&new)?;
    Ok(0)
}
