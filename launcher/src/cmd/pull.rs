//! `skiff pull`: fetch an image's manifest, config and layers into the local store.

use super::registry_args::{runtime, RegistryArgs};
use super::Global;
use anyhow::Context;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use skiff_proto::image::{Descriptor, ResolvedImage};
use skiff_proto::reference::Reference;
use skiff_proto::registry::Client;
use skiff_proto::store::{ImageRecord, Store};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Layers downloaded at once.
const PARALLEL_LAYERS: usize = 4;

/// Arguments of `skiff pull`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Image reference, e.g. busybox, localhost:5000/app:v1, ghcr.io/o/app@sha256:...
    pub image: String,
    /// Print only the manifest digest (no progress bars, no summary).
    #[arg(short, long)]
    pub quiet: bool,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// What one pull did.
pub struct PullOutcome {
    /// The resolved image.
    pub image: ResolvedImage,
    /// Bytes downloaded for layers.
    pub fetched: u64,
    /// Layer bytes that were already in the store.
    pub reused: u64,
}

/// Runs `skiff pull`.
pub fn run(global: &Global, args: Args) -> anyhow::Result<u8> {
    let reference = Reference::parse(&args.image)?;
    let platform = args.registry.platform()?;
    let client = Arc::new(args.registry.client_for(&reference)?);
    let store = Store::open(&global.root)
        .with_context(|| format!("opening the store at {}", global.root.display()))?;
    let started = Instant::now();
    let rt = runtime()?;
    let outcome = rt.block_on(pull(
        &client,
        &store,
        &reference,
        platform.as_ref(),
        !args.quiet,
    ))?;
    let secs = started.elapsed().as_secs_f64();
    let image = &outcome.image;
    if args.quiet {
        println!("{}", image.manifest_digest);
    } else {
        println!(
            "pulled {} ({}) {}: {} layers, {} fetched, {} already present, in {:.2}s ({}/s)",
            image.reference,
            image.platform,
            image.manifest_digest,
            image.layers().len(),
            human(outcome.fetched),
            human(outcome.reused),
            secs,
            human((outcome.fetched as f64 / secs.max(1e-3)) as u64),
        );
    }
    Ok(0)
}

/// Stores the index (if any), manifest and config of a resolved image.
pub fn store_metadata(store: &Store, image: &ResolvedImage) -> anyhow::Result<()> {
    if let (Some(d), Some(b)) = (&image.index_digest, &image.index_bytes) {
        store.write_blob(d, b)?;
    }
    store.write_blob(&image.manifest_digest, &image.manifest_bytes)?;
    store.write_blob(&image.manifest.config.digest, &image.config_bytes)?;
    Ok(())
}

/// The store's record of `reference` resolving to `image`, dated now.
pub fn image_record(reference: &Reference, image: &ResolvedImage) -> ImageRecord {
    let pulled_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    ImageRecord {
        reference: reference.to_string(),
        index_digest: image.index_digest,
        manifest_digest: image.manifest_digest,
        manifest_media_type: image.manifest_media_type.clone(),
        platform: image.platform.to_string(),
        config_digest: image.manifest.config.digest,
        size: image.total_layer_size(),
        layers: image.layers().len(),
        pulled_at,
        base: None,
    }
}

/// Resolves `reference` and stores index, manifest, config and every layer (verified).
pub async fn pull(
    client: &Arc<Client>,
    store: &Store,
    reference: &Reference,
    platform: Option<&skiff_proto::image::Platform>,
    show_progress: bool,
) -> anyhow::Result<PullOutcome> {
    let image = client
        .resolve(reference, platform)
        .await
        .with_context(|| format!("resolving {reference}"))?;
    store_metadata(store, &image)?;

    let bars = MultiProgress::new();
    if !show_progress {
        bars.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let style = ProgressStyle::with_template(
        "{prefix:.bold} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");

    let mut reused = 0u64;
    let mut todo: Vec<Descriptor> = Vec::new();
    for layer in image.layers() {
        if store.has_blob(&layer.digest, layer.size) {
            reused = reused.saturating_add(layer.size);
        } else if !todo.iter().any(|t| t.digest == layer.digest) {
            todo.push(layer.clone());
        }
    }
    let mut fetched = 0u64;
    let mut set = tokio::task::JoinSet::new();
    let mut queue = todo.into_iter();
    let repo = reference.repository().to_string();
    loop {
        while set.len() < PARALLEL_LAYERS {
            let Some(layer) = queue.next() else { break };
            let bar = bars.add(ProgressBar::new(layer.size));
            bar.set_style(style.clone());
            bar.set_prefix(layer.digest.hex().get(..12).unwrap_or_default().to_string());
            let (client, store, repo) = (Arc::clone(client), store.clone(), repo.clone());
            set.spawn(async move {
                let result = fetch_layer(&client, &store, &repo, &layer, &bar).await;
                match &result {
                    Ok(()) => bar.finish_with_message("done"),
                    Err(_) => bar.abandon_with_message("failed"),
                }
                result.map(|()| layer.size)
            });
        }
        match set.join_next().await {
            Some(joined) => {
                let size = joined.context("layer download task")??;
                fetched = fetched.saturating_add(size);
            }
            None => break,
        }
    }
    store.put_image(&image_record(reference, &image))?;
    Ok(PullOutcome {
        image,
        fetched,
        reused,
    })
}

/// Downloads one layer into a temp file, verified, and renames it into the store.
async fn fetch_layer(
    client: &Client,
    store: &Store,
    repo: &str,
    layer: &Descriptor,
    bar: &ProgressBar,
) -> anyhow::Result<()> {
    let temp = store.temp_file()?;
    let mut file = tokio::fs::File::from_std(temp.reopen().context("reopening temp file")?);
    let progress = {
        let bar = bar.clone();
        move |n: u64| bar.set_position(n)
    };
    client
        .download_blob(repo, layer, &mut file, &progress)
        .await
        .with_context(|| format!("downloading layer {}", layer.digest))?;
    drop(file);
    store.commit_blob(&layer.digest, temp)?;
    Ok(())
}

/// `1.5 MiB`-style sizes.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}
