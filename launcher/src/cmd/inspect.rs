//! `skiff inspect`: a container's state, restart policy and count (as docker's JSON),
//! or an image's resolved digest, platform, layers and config.

use super::pull::human;
use super::registry_args::{runtime, Format, RegistryArgs};
use super::Global;
use crate::container::state::{self, ContainerState, Status};
use anyhow::Context;
use serde_json::json;
use skiff_proto::image::{self, Manifest, Platform, ResolvedImage};
use skiff_proto::reference::Reference;
use skiff_proto::store::Store;

/// Arguments of `skiff inspect`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Container (id, id prefix or name), else image reference.
    pub image: String,
    /// Output format (of an image; a container is always JSON, as docker's).
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Read the image from the local store (as pulled) instead of the registry.
    #[arg(long)]
    pub local: bool,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// Runs `skiff inspect`.
pub fn run(global: &Global, args: Args) -> anyhow::Result<u8> {
    // A container first, as docker looks: an image reference rarely is a name or an
    // id prefix of one.
    if !args.local {
        if let Ok(container) = state::find(&global.root, &args.image) {
            let doc = json!([container_json(&container)]);
            println!("{}", serde_json::to_string_pretty(&doc)?);
            return Ok(0);
        }
    }
    // Which host (a mirror from hosts.toml, or the registry) served the manifest.
    let (image, served_by) = if args.local {
        (load_local(global, &Reference::parse(&args.image)?)?, None)
    } else {
        let (client, image) = args.registry.resolve(&runtime()?, &args.image)?;
        let served_by = client.served_by(&image.manifest_digest);
        (image, served_by)
    };
    match args.format {
        Format::Json => {
            let mut doc = to_json(&image);
            if let (Some(host), Some(obj)) = (&served_by, doc.as_object_mut()) {
                obj.insert("servedBy".into(), json!(host));
            }
            println!("{}", serde_json::to_string_pretty(&doc)?)
        }
        Format::Text => {
            print_text(&image);
            if let Some(host) = &served_by {
                println!("Served by:  {host}");
            }
        }
    }
    Ok(0)
}

/// docker's `inspect` document of a container, the parts skiff has.
pub fn container_json(c: &ContainerState) -> serde_json::Value {
    let time = |t: Option<u64>| {
        t.map_or_else(
            || "0001-01-01T00:00:00Z".to_string(),
            |t| skiff_proto::index::toc::format_rfc3339(t as i64),
        )
    };
    let running = matches!(c.status, Status::Running | Status::Restarting);
    json!({
        "Id": c.id,
        "Created": time(Some(c.created)),
        "Path": c.command.first(),
        "Args": c.command.get(1..).unwrap_or_default(),
        "State": {
            "Status": super::ps::status_name(c.status),
            "Running": running,
            "Restarting": c.status == Status::Restarting,
            "Pid": c.pid1.filter(|_| c.status == Status::Running).map_or(0, |p| p.pid),
            "ExitCode": c.exit_code.unwrap_or_default(),
            "Error": c.error.clone().unwrap_or_default(),
            "StartedAt": time(c.started_at),
            "FinishedAt": time(c.finished_at),
        },
        "Name": format!("/{}", c.name),
        "RestartCount": c.restart_count,
        "HostConfig": {
            "RestartPolicy": {
                "Name": c.restart_policy.name(),
                "MaximumRetryCount": c.restart_policy.max_retries(),
            },
        },
        "Config": {
            "Labels": c.labels.iter().map(|l| match l.split_once('=') {
                Some((k, v)) => (k.to_string(), json!(v)),
                None => (l.clone(), json!("")),
            }).collect::<serde_json::Map<_, _>>(),
            "StopSignal": c.stop_signal,
        },
    })
}

/// Rebuilds a [`ResolvedImage`] from what `skiff pull` stored.
pub fn load_local(global: &Global, reference: &Reference) -> anyhow::Result<ResolvedImage> {
    let store = Store::open(&global.root)?;
    let record = store
        .image(&reference.to_string())?
        .with_context(|| format!("{reference} is not in the local store (run skiff pull first)"))?;
    let manifest_bytes = store.read_blob(&record.manifest_digest)?;
    let manifest = Manifest::from_slice("stored manifest", &manifest_bytes)?;
    let config_bytes = store.read_blob(&manifest.config.digest)?;
    let config = image::parse_config(manifest.config.digest, &config_bytes)?;
    let index_bytes = match &record.index_digest {
        Some(d) => Some(store.read_blob(d)?),
        None => None,
    };
    Ok(ResolvedImage {
        reference: reference.clone(),
        index_digest: record.index_digest,
        index_bytes,
        manifest_digest: record.manifest_digest,
        manifest_media_type: record.manifest_media_type,
        manifest_bytes,
        manifest,
        platform: record
            .platform
            .parse::<Platform>()
            .unwrap_or_else(|_| image::config_platform(&config)),
        config_bytes,
        config,
    })
}

/// The JSON document `--format json` prints.
pub fn to_json(image: &ResolvedImage) -> serde_json::Value {
    let config: serde_json::Value =
        serde_json::from_slice(&image.config_bytes).unwrap_or(serde_json::Value::Null);
    json!({
        "reference": image.reference.to_string(),
        "digest": image.manifest_digest.to_string(),
        "indexDigest": image.index_digest.map(|d| d.to_string()),
        "mediaType": image.manifest_media_type,
        "platform": image.platform.to_string(),
        "size": image.total_layer_size(),
        "configDigest": image.manifest.config.digest.to_string(),
        "layers": image.layers().iter().map(|l| json!({
            "digest": l.digest.to_string(),
            "size": l.size,
            "mediaType": l.media_type,
            "annotations": l.annotations,
        })).collect::<Vec<_>>(),
        "annotations": image.manifest.annotations,
        "config": config,
    })
}

fn print_text(image: &ResolvedImage) {
    println!("Reference:  {}", image.reference);
    println!("Digest:     {}", image.manifest_digest);
    if let Some(d) = &image.index_digest {
        println!("Index:      {d}");
    }
    println!("Media type: {}", image.manifest_media_type);
    println!("Platform:   {}", image.platform);
    println!("Config:     {}", image.manifest.config.digest);
    let cfg = image.config.config();
    if let Some(c) = cfg {
        if let Some(e) = c.entrypoint() {
            println!("Entrypoint: {e:?}");
        }
        if let Some(cmd) = c.cmd() {
            println!("Cmd:        {cmd:?}");
        }
        if let Some(env) = c.env() {
            for e in env {
                println!("Env:        {e}");
            }
        }
        if let Some(w) = c.working_dir() {
            println!("WorkingDir: {w}");
        }
        if let Some(u) = c.user() {
            println!("User:       {u}");
        }
    }
    println!(
        "Layers:     {} ({} total)",
        image.layers().len(),
        human(image.total_layer_size())
    );
    for l in image.layers() {
        println!("  {}  {:>10}  {}", l.digest, human(l.size), l.media_type);
    }
}
