//! `skiff profile`: prefetch profiles of images (which files a container read while
//! starting), kept under `<root>/profiles/<manifest hex>.json` and published beside the
//! image as an OCI artifact, found the same way as published layer indexes (referrers
//! API, else the `sha256-<digest>` fallback tag).
//!
//! The artifact is an image manifest with `artifactType` [`PROFILE_ARTIFACT_TYPE`], the
//! OCI empty config, one layer of media type [`PROFILE_MEDIA_TYPE`] holding the JSON,
//! and `subject` = the image manifest. Profiles are accepted only from the image's own
//! repository; a bad one only costs wasted prefetch (every chunk is still verified).

use super::registry_args::{runtime, RegistryArgs};
use super::Global;
use anyhow::Context;
use skiff_fs::profile::Profile;
use skiff_proto::digest::Digest;
use skiff_proto::image::{
    Descriptor, Manifest, ResolvedImage, PROFILE_ARTIFACT_TYPE, PROFILE_MEDIA_TYPE,
};
use skiff_proto::registry::{Client, RegistryError};
use std::path::{Path, PathBuf};

/// Largest profile blob fetched from a registry.
const MAX_PROFILE_BYTES: u64 = 16 << 20;

/// Arguments of `skiff profile`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,
}

/// `skiff profile` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Publish the locally recorded profile of IMAGE beside it in its registry.
    Push(ImageArgs),
    /// Fetch IMAGE's published profile into the local store.
    Pull(ImageArgs),
    /// Print IMAGE's local profile (JSON).
    Show(ImageArgs),
}

/// One image.
#[derive(clap::Args, Debug)]
pub struct ImageArgs {
    /// Image reference.
    pub image: String,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// Where the local profile of the image with manifest `digest` lives.
pub fn local_path(root: &Path, digest: &Digest) -> PathBuf {
    skiff_proto::store::RootLayout::new(root).profile(digest)
}

/// The local profile of manifest `digest`, if there is a readable one.
pub fn load_local(root: &Path, digest: &Digest) -> Option<Profile> {
    let path = local_path(root, digest);
    let bytes = std::fs::read(&path).ok()?;
    match Profile::from_json(&bytes) {
        Ok(p) => Some(p),
        Err(e) => {
            tracing::warn!(path = %path.display(), "ignoring the local profile: {e}");
            None
        }
    }
}

/// Stores `profile` as the local profile of manifest `digest` (temp + rename).
pub fn save_local(root: &Path, digest: &Digest, profile: &Profile) -> anyhow::Result<()> {
    let path = local_path(root, digest);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = path.with_extension("tmp");
    skiff_proto::store::write_private(&tmp, &profile.to_json())
        .and_then(|_| std::fs::rename(&tmp, &path))
        .with_context(|| format!("writing {}", path.display()))
}

/// The profile published beside `image`, if any (the first listed that is good).
pub async fn fetch_published(
    client: &Client,
    image: &ResolvedImage,
) -> anyhow::Result<Option<Profile>> {
    let repo = image.reference.repository();
    let listed = client
        .fetch_artifacts(repo, image.manifest_digest, PROFILE_ARTIFACT_TYPE)
        .await
        .context("listing published profiles")?;
    for (d, manifest) in listed {
        match fetch_one(client, repo, manifest).await {
            Ok(p) => return Ok(Some(p)),
            Err(e) => tracing::warn!("profile artifact {} refused: {e:#}", d.digest),
        }
    }
    Ok(None)
}

/// The profile in one listed artifact (already checked to be a profile referring to
/// the image, or refused).
async fn fetch_one(
    client: &Client,
    repo: &str,
    manifest: Result<Manifest, RegistryError>,
) -> anyhow::Result<Profile> {
    let manifest = manifest?;
    let layer = manifest
        .layers
        .iter()
        .find(|l| l.media_type == PROFILE_MEDIA_TYPE)
        .context("no profile layer")?;
    let blob = client
        .fetch_artifact_blob(repo, layer, MAX_PROFILE_BYTES)
        .await?;
    Ok(Profile::from_json(&blob)?)
}

/// Pushes `profile` as an artifact referring to `image` (and records it under the
/// referrers fallback tag); returns the artifact manifest's digest.
pub async fn publish(
    client: &Client,
    image: &ResolvedImage,
    profile: &Profile,
) -> anyhow::Result<Digest> {
    let json = profile.to_json();
    let layer = Descriptor::of(PROFILE_MEDIA_TYPE, &json);
    client
        .push_artifact(
            image.reference.repository(),
            &image.manifest_descriptor(),
            PROFILE_ARTIFACT_TYPE,
            &[(layer, json.into())],
            &|_| {},
        )
        .await
        .context("publishing the profile artifact")
}

/// Runs `skiff profile`.
pub fn run(global: &Global, args: Args) -> anyhow::Result<u8> {
    let a = match &args.command {
        Command::Push(a) | Command::Pull(a) | Command::Show(a) => a,
    };
    let rt = runtime()?;
    let (client, image) = a.registry.resolve(&rt, &a.image)?;
    let digest = image.manifest_digest;
    match args.command {
        Command::Push(_) => {
            let profile = load_local(&global.root, &digest).with_context(|| {
                format!(
                    "no recorded profile for {} (record one with `skiff run --record-profile`)",
                    a.image
                )
            })?;
            let pushed = rt.block_on(publish(&client, &image, &profile))?;
            println!(
                "published profile {pushed} for {}@{digest}",
                image.reference.name()
            );
        }
        Command::Pull(_) => match rt.block_on(fetch_published(&client, &image))? {
            Some(p) => {
                save_local(&global.root, &digest, &p)?;
                println!(
                    "{} ({} files)",
                    local_path(&global.root, &digest).display(),
                    p.files.len()
                );
            }
            None => anyhow::bail!("no profile is published for {}", a.image),
        },
        Command::Show(_) => {
            let p = load_local(&global.root, &digest)
                .with_context(|| format!("no local profile for {}", a.image))?;
            println!("{}", String::from_utf8_lossy(&p.to_json()));
        }
    }
    Ok(0)
}
