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
use skiff_fs::profile::{Profile, PROFILE_ARTIFACT_TYPE, PROFILE_MEDIA_TYPE};
use skiff_proto::digest::Digest;
use skiff_proto::image::{Descriptor, ResolvedImage, MEDIA_OCI_MANIFEST};
use skiff_proto::index::artifact::EMPTY_CONFIG;
use skiff_proto::index::resolve::oci_descriptor;
use skiff_proto::registry::Client;
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

/// The profile published beside `image`, if any (newest listed first).
pub async fn fetch_published(
    client: &Client,
    image: &ResolvedImage,
) -> anyhow::Result<Option<Profile>> {
    let repo = image.reference.repository();
    let listed = client
        .referrers(repo, image.manifest_digest, PROFILE_ARTIFACT_TYPE)
        .await
        .context("listing published profiles")?;
    for d in listed {
        match fetch_one(client, image, &d).await {
            Ok(p) => return Ok(Some(p)),
            Err(e) => tracing::warn!("profile artifact {} refused: {e:#}", d.digest),
        }
    }
    Ok(None)
}

async fn fetch_one(
    client: &Client,
    image: &ResolvedImage,
    listed: &Descriptor,
) -> anyhow::Result<Profile> {
    let repo = image.reference.repository();
    let (bytes, _, digest) = client
        .get_manifest(repo, &listed.digest.to_string())
        .await?;
    anyhow::ensure!(
        digest == listed.digest,
        "manifest digest {digest} is not the listed {}",
        listed.digest
    );
    let manifest: oci_spec::image::ImageManifest =
        serde_json::from_slice(&bytes).context("not an image manifest")?;
    let ours = manifest
        .artifact_type()
        .as_ref()
        .is_some_and(|t| t.to_string() == PROFILE_ARTIFACT_TYPE);
    anyhow::ensure!(ours, "not a profile artifact");
    let subject_ok = manifest
        .subject()
        .as_ref()
        .is_some_and(|s| s.digest().to_string() == image.manifest_digest.to_string());
    anyhow::ensure!(subject_ok, "refers to another image");
    let layer = manifest
        .layers()
        .iter()
        .find(|l| l.media_type().to_string() == PROFILE_MEDIA_TYPE)
        .context("no profile layer")?;
    anyhow::ensure!(
        layer.size() <= MAX_PROFILE_BYTES,
        "profile is {} bytes",
        layer.size()
    );
    let blob_digest: Digest = layer
        .digest()
        .to_string()
        .parse()
        .context("profile layer digest")?;
    let blob = client.get_blob(repo, blob_digest).await?;
    Ok(Profile::from_json(&blob)?)
}

/// Pushes `profile` as an artifact referring to `image` (and records it under the
/// referrers fallback tag); returns the artifact manifest's digest.
pub async fn publish(
    client: &Client,
    image: &ResolvedImage,
    profile: &Profile,
) -> anyhow::Result<Digest> {
    use oci_spec::image::{ImageManifestBuilder, MediaType};
    let repo = image.reference.repository();
    let json = profile.to_json();
    let json_digest = Digest::of(&json);
    client
        .push_blob(repo, json.clone().into())
        .await
        .context("pushing the profile blob")?;
    client
        .push_blob(repo, EMPTY_CONFIG.to_vec().into())
        .await
        .context("pushing the empty config")?;
    let oci = |media: &str, digest: Digest, size: usize| {
        oci_descriptor(&Descriptor::new(media, digest, size as u64))
    };
    let config = oci(
        "application/vnd.oci.empty.v1+json",
        Digest::of(EMPTY_CONFIG),
        EMPTY_CONFIG.len(),
    )?;
    let layer = oci(PROFILE_MEDIA_TYPE, json_digest, json.len())?;
    let subject = oci(
        &image.manifest_media_type,
        image.manifest_digest,
        image.manifest_bytes.len(),
    )?;
    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .artifact_type(MediaType::Other(PROFILE_ARTIFACT_TYPE.into()))
        .config(config)
        .layers(vec![layer])
        .subject(subject)
        .build()
        .context("building the profile artifact manifest")?;
    let bytes = serde_json::to_vec(&manifest).context("encoding the artifact")?;
    let digest = Digest::of(&bytes);
    client
        .push_manifest(repo, &digest.to_string(), MEDIA_OCI_MANIFEST, &bytes)
        .await
        .context("pushing the profile artifact manifest")?;
    let mut listed = Descriptor::new(MEDIA_OCI_MANIFEST, digest, bytes.len() as u64);
    listed.artifact_type = Some(PROFILE_ARTIFACT_TYPE.to_string());
    client
        .add_referrer_to_fallback_tag(repo, image.manifest_digest, listed)
        .await
        .context("recording the profile under the referrers fallback tag")?;
    Ok(digest)
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
