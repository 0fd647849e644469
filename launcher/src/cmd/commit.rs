//! `skiff commit`: a container's changes as a new image in the local store.
//!
//! The container's upper directory becomes one more tar+gzip layer
//! ([`skiff_fs::upper_diff`]: whiteouts and opaque directories as the OCI spec writes
//! them) on top of the layers of the image it was started from. The config is the
//! image's with the layer's `diff_id` appended, a history entry, and the `--change`
//! instructions applied; the manifest is the image's with the new config and layer.
//! All of it goes to the local store, with the new layer's lazy-read index, and a
//! record naming the repository the older layers are read from
//! ([`skiff_proto::store::ImageRecord::base`]), so `skiff run NEW` works before
//! `skiff push NEW`.
//!
//! A running container is not paused (unlike docker's default): what it writes while
//! the layer is made may or may not be in it, and a file it shrinks meanwhile makes
//! the commit fail.

use super::local_image::{self, container_image, container_manifest, load_by_digest};
use super::Global;
use crate::container::state;
use anyhow::{bail, Context};
use serde_json::{json, Map, Value};
use skiff_proto::digest::Digest;
use skiff_proto::image::{
    Descriptor, MEDIA_DOCKER_LAYER_GZIP, MEDIA_DOCKER_MANIFEST, MEDIA_OCI_LAYER_GZIP,
};
use skiff_proto::reference::Reference;
use skiff_proto::store::{ImageRecord, Store};
use std::io::Write;

/// Arguments of `skiff commit`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Commit message (the history entry's comment).
    #[arg(short, long, value_name = "TEXT")]
    pub message: Option<String>,
    /// Author (e.g. "Jane Doe <jane@example.com>").
    #[arg(short, long, value_name = "NAME")]
    pub author: Option<String>,
    /// Apply a Dockerfile instruction to the config: CMD, ENTRYPOINT, ENV, WORKDIR,
    /// USER, EXPOSE, LABEL, STOPSIGNAL or VOLUME (repeatable).
    #[arg(short, long, value_name = "INSTRUCTION")]
    pub change: Vec<String>,
    /// Container id, id prefix or name.
    pub container: String,
    /// The new image's name, REPOSITORY[:TAG] (as `skiff push` will send it).
    pub image: String,
}

/// Runs `skiff commit`; prints the new manifest's digest.
pub fn run(global: &Global, args: Args) -> anyhow::Result<u8> {
    let target = Reference::parse(&args.image)?;
    if target.digest().is_some() {
        bail!("{target} names a digest; give REPOSITORY[:TAG]");
    }
    let container = state::find(&global.root, &args.container)?;
    let paths = global.layout().container(&container.id);
    let upper = paths.upper();
    if !upper.is_dir() {
        bail!(
            "container {} has no writable layer to commit (started with --rootfs or --read-only)",
            args.container
        );
    }
    let from = container_image(&paths).with_context(|| {
        format!(
            "container {} was not started from an image (or by an older skiff)",
            args.container
        )
    })?;
    let store = Store::open(&global.root)
        .with_context(|| format!("opening the store at {}", global.root.display()))?;
    let manifest_digest = container_manifest(&store, &from).with_context(|| {
        format!(
            "the local store no longer knows {}, the image of container {}",
            from.reference, args.container
        )
    })?;
    // The store's record of the image: its platform, and where its layers are read.
    let base_record = store
        .image(&from.reference)?
        .filter(|r| r.manifest_digest == manifest_digest)
        .or_else(|| {
            store
                .images()
                .ok()?
                .into_iter()
                .find(|r| r.manifest_digest == manifest_digest)
        });
    let platform = base_record
        .as_ref()
        .map(|r| r.platform.clone())
        .unwrap_or_default();
    let base = load_by_digest(
        &store,
        &Reference::parse(&from.reference)?,
        &manifest_digest,
        &platform,
    )?;
    let layers_from = base_record
        .as_ref()
        .and_then(|r| r.base.clone())
        .unwrap_or_else(|| from.reference.clone());

    let docker = base.manifest_media_type == MEDIA_DOCKER_MANIFEST;
    let media_type = if docker {
        MEDIA_DOCKER_LAYER_GZIP
    } else {
        MEDIA_OCI_LAYER_GZIP
    };
    let layer = write_layer(&store, &upper, media_type)?;
    // No registry has this layer before a push: keep its index for a local run.
    local_image::save_layer_index(global, &store, &layer.descriptor)?;

    let diff_id = layer.diff_id;
    let config = new_config(&base.config_bytes, &diff_id, &args)?;
    let config_digest = Digest::of(&config);
    store.write_blob(&config_digest, &config)?;
    let mut manifest = base.manifest.clone();
    manifest.config = Descriptor::new(
        &base.manifest.config.media_type,
        config_digest,
        config.len() as u64,
    );
    manifest.layers.push(layer.descriptor);
    manifest.subject = None;
    let manifest_bytes = manifest.to_bytes();
    let digest = Digest::of(&manifest_bytes);
    store.write_blob(&digest, &manifest_bytes)?;
    store.put_image(&ImageRecord {
        reference: target.to_string(),
        index_digest: None,
        manifest_digest: digest,
        manifest_media_type: base.manifest_media_type.clone(),
        platform: base.platform.to_string(),
        config_digest,
        size: manifest.layers.iter().map(|l| l.size).sum(),
        layers: manifest.layers.len(),
        pulled_at: local_image::now_secs(),
        base: Some(layers_from),
    })?;
    tracing::info!(
        image = %target,
        entries = layer.counts.entries,
        whiteouts = layer.counts.whiteouts,
        opaque_dirs = layer.counts.opaque_dirs,
        "committed"
    );
    println!("{digest}");
    Ok(0)
}

/// A layer written into the store.
struct NewLayer {
    descriptor: Descriptor,
    diff_id: Digest,
    counts: skiff_fs::upper_diff::DiffCounts,
}

/// Writes the layer of `upper` into the store (through a temp file, renamed under
/// its digest once complete).
fn write_layer(
    store: &Store,
    upper: &std::path::Path,
    media_type: &str,
) -> anyhow::Result<NewLayer> {
    let mut temp = store.temp_file()?;
    let (digests, counts) = {
        let mut out = std::io::BufWriter::with_capacity(1 << 20, temp.as_file_mut());
        let written = skiff_fs::upper_diff::write_layer(upper, &mut out, 6)
            .with_context(|| format!("making a layer of {}", upper.display()))?;
        out.flush().context("writing the layer")?;
        written
    };
    store.commit_blob(&digests.digest, temp)?;
    Ok(NewLayer {
        descriptor: Descriptor::new(media_type, digests.digest, digests.size),
        diff_id: digests.diff_id,
        counts,
    })
}

/// The base config with `diff_id` appended to `rootfs.diff_ids`, a history entry for
/// it, `created` and `author` set, and the `--change` instructions applied. Fields
/// skiff does not know are kept as they are.
fn new_config(base: &[u8], diff_id: &Digest, args: &Args) -> anyhow::Result<Vec<u8>> {
    let mut config: Value = serde_json::from_slice(base).context("parsing the image config")?;
    let obj = config
        .as_object_mut()
        .context("the image config is not a JSON object")?;
    let created = skiff_proto::index::toc::format_rfc3339(
        i64::try_from(local_image::now_secs()).unwrap_or(0),
    );
    let rootfs = obj
        .entry("rootfs")
        .or_insert_with(|| json!({"type": "layers", "diff_ids": []}));
    let diff_ids = rootfs
        .as_object_mut()
        .context("rootfs in the image config is not an object")?
        .entry("diff_ids")
        .or_insert_with(|| json!([]));
    let diff_ids = diff_ids
        .as_array_mut()
        .context("rootfs.diff_ids in the image config is not a list")?;
    let base_layers = diff_ids.len();
    diff_ids.push(json!(diff_id.to_string()));

    let mut entry = Map::new();
    entry.insert("created".into(), json!(created));
    entry.insert("created_by".into(), json!(local_image::COMMIT_CREATED_BY));
    if let Some(a) = &args.author {
        entry.insert("author".into(), json!(a));
    }
    if let Some(m) = &args.message {
        entry.insert("comment".into(), json!(m));
    }
    let base_created = obj.get("created").cloned();
    let history = obj.entry("history").or_insert_with(|| {
        // Without a history, one entry per older layer keeps the entries that
        // stand for layers as many as the layers.
        let older = base_created.map_or_else(|| json!({}), |c| json!({ "created": c }));
        Value::Array(vec![older; base_layers])
    });
    if let Some(h) = history.as_array_mut() {
        h.push(Value::Object(entry));
    }
    obj.insert("created".into(), json!(created));
    if let Some(a) = &args.author {
        obj.insert("author".into(), json!(a));
    }
    let run_config = obj
        .entry("config")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .context("config in the image config is not an object")?;
    for change in &args.change {
        apply_change(run_config, change)?;
    }
    Ok(serde_json::to_vec(&config)?)
}

/// Applies one Dockerfile instruction to the image's run config (`config` object).
fn apply_change(run: &mut Map<String, Value>, change: &str) -> anyhow::Result<()> {
    let change = change.trim();
    let (word, rest) = change
        .split_once(char::is_whitespace)
        .map(|(w, r)| (w, r.trim()))
        .unwrap_or((change, ""));
    let instruction = word.to_ascii_uppercase();
    let need = |what: &str| -> anyhow::Result<()> {
        if rest.is_empty() {
            bail!("--change {instruction} needs {what}");
        }
        Ok(())
    };
    match instruction.as_str() {
        "CMD" | "ENTRYPOINT" => {
            need("a command")?;
            let key = if instruction == "CMD" {
                "Cmd"
            } else {
                "Entrypoint"
            };
            run.insert(key.into(), json!(command_form(rest)?));
        }
        "ENV" => {
            need("NAME=VALUE")?;
            let env = run.entry("Env").or_insert_with(|| json!([]));
            let env = env.as_array_mut().context("Env is not a list")?;
            for (k, v) in key_values(rest, "ENV")? {
                let prefix = format!("{k}=");
                env.retain(|e| !e.as_str().is_some_and(|s| s.starts_with(&prefix)));
                env.push(json!(format!("{k}={v}")));
            }
        }
        "LABEL" => {
            need("KEY=VALUE")?;
            let labels = run.entry("Labels").or_insert_with(|| json!({}));
            if !labels.is_object() {
                *labels = json!({});
            }
            for (k, v) in key_values(rest, "LABEL")? {
                labels[k] = json!(v);
            }
        }
        "WORKDIR" => {
            need("a directory")?;
            run.insert("WorkingDir".into(), json!(rest));
        }
        "USER" => {
            need("a user")?;
            run.insert("User".into(), json!(rest));
        }
        "STOPSIGNAL" => {
            need("a signal")?;
            run.insert("StopSignal".into(), json!(rest));
        }
        "EXPOSE" => {
            need("a port")?;
            let ports = run.entry("ExposedPorts").or_insert_with(|| json!({}));
            if !ports.is_object() {
                *ports = json!({});
            }
            for p in rest.split_whitespace() {
                let p = if p.contains('/') {
                    p.to_string()
                } else {
                    format!("{p}/tcp")
                };
                ports[p] = json!({});
            }
        }
        "VOLUME" => {
            need("a path")?;
            let paths: Vec<String> = if rest.starts_with('[') {
                serde_json::from_str(rest).context("--change VOLUME: a JSON list of paths")?
            } else {
                rest.split_whitespace().map(str::to_string).collect()
            };
            let volumes = run.entry("Volumes").or_insert_with(|| json!({}));
            if !volumes.is_object() {
                *volumes = json!({});
            }
            for p in paths {
                volumes[p] = json!({});
            }
        }
        _ => bail!(
            "--change {word:?}: skiff applies CMD, ENTRYPOINT, ENV, WORKDIR, USER, EXPOSE, \
             LABEL, STOPSIGNAL and VOLUME"
        ),
    }
    Ok(())
}

/// A CMD or ENTRYPOINT argument: the JSON (exec) form as it is, the shell form as
/// `/bin/sh -c TEXT`, as docker reads a Dockerfile.
fn command_form(text: &str) -> anyhow::Result<Vec<String>> {
    if text.starts_with('[') {
        return serde_json::from_str(text)
            .with_context(|| format!("{text:?} is not a JSON list of strings"));
    }
    Ok(vec!["/bin/sh".into(), "-c".into(), text.into()])
}

/// `K=V K2="V 2"` pairs, or the legacy `K V…` form (one pair, the rest the value).
fn key_values(text: &str, what: &str) -> anyhow::Result<Vec<(String, String)>> {
    let first = text.split_whitespace().next().unwrap_or_default();
    if !first.contains('=') {
        let (k, v) = text.split_once(char::is_whitespace).unwrap_or((text, ""));
        return Ok(vec![(k.to_string(), v.trim().to_string())]);
    }
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        let key: String = chars.by_ref().take_while(|&c| c != '=').collect();
        let mut value = String::new();
        let mut quote = None;
        for c in chars.by_ref() {
            match (quote, c) {
                (None, '"' | '\'') => quote = Some(c),
                (Some(q), c) if c == q => quote = None,
                (None, c) if c.is_whitespace() => break,
                (_, c) => value.push(c),
            }
        }
        if key.is_empty() || key.chars().any(char::is_whitespace) {
            bail!("--change {what} {text:?}: want NAME=VALUE pairs");
        }
        out.push((key, value));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(change: &[&str]) -> Args {
        Args {
            message: Some("msg".into()),
            author: Some("me".into()),
            change: change.iter().map(|s| s.to_string()).collect(),
            container: "c".into(),
            image: "i".into(),
        }
    }

    #[test]
    fn the_config_gets_the_layer_history_and_changes() {
        let base = br#"{"architecture":"amd64","os":"linux","created":"2024-01-01T00:00:00Z",
            "config":{"Env":["PATH=/bin","A=1"],"Cmd":["sh"]},
            "rootfs":{"type":"layers","diff_ids":["sha256:aa","sha256:bb"]},
            "x-unknown":{"kept":true}}"#;
        let d = Digest::of(b"layer");
        let out = new_config(
            base,
            &d,
            &args(&[
                "CMD [\"/bin/app\", \"-v\"]",
                "ENV A=2 B=\"two words\"",
                "WORKDIR /srv",
                "EXPOSE 8080",
                "entrypoint echo hi",
            ]),
        )
        .unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["rootfs"]["diff_ids"][2], d.to_string());
        assert_eq!(v["history"].as_array().unwrap().len(), 3);
        assert_eq!(v["history"][2]["comment"], "msg");
        assert_eq!(v["history"][2]["author"], "me");
        assert_eq!(v["author"], "me");
        assert_eq!(v["x-unknown"]["kept"], true);
        let c = &v["config"];
        assert_eq!(c["Cmd"], json!(["/bin/app", "-v"]));
        assert_eq!(c["Entrypoint"], json!(["/bin/sh", "-c", "echo hi"]));
        assert_eq!(c["Env"], json!(["PATH=/bin", "A=2", "B=two words"]));
        assert_eq!(c["WorkingDir"], "/srv");
        assert_eq!(c["ExposedPorts"], json!({"8080/tcp": {}}));
    }

    #[test]
    fn unknown_or_empty_changes_are_refused() {
        let base = br#"{"rootfs":{"type":"layers","diff_ids":[]}}"#;
        let d = Digest::of(b"layer");
        assert!(new_config(base, &d, &args(&["RUN make"])).is_err());
        assert!(new_config(base, &d, &args(&["CMD"])).is_err());
        assert!(new_config(base, &d, &args(&["ENV =x"])).is_err());
    }
}
