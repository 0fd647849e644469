//! What the CLI and `skiff daemon` say to each other over `<root>/daemon.sock`.
//!
//! One request per connection: the client writes one JSON [`Request`] on one line,
//! the daemon answers with one JSON [`Response`] on one line and closes. Newline-
//! delimited JSON keeps the wire readable with `socat` and needs no framing code.

use crate::cmd::lazy::PullPolicy;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// A request to the daemon.
#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Mount an image's merged view.
    Mount(MountRequest),
    /// Unmount a mount the daemon serves.
    Unmount {
        /// The mount point (absolute).
        mountpoint: PathBuf,
    },
    /// Report mounts, cache, registries and uptime.
    Status,
    /// Unmount everything and exit; refused while containers run unless `force`.
    Stop {
        /// Unmount containers' root filesystems too (lazily, if busy).
        force: bool,
    },
}

/// Where a mount's layers come from.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ImageSource {
    /// A registry image, resolved and indexed by the daemon.
    Registry {
        /// The image reference as the user typed it.
        image: String,
        /// When to ask the registry for the manifest.
        pull: PullPolicy,
        /// `os/arch[/variant]`, or the daemon's platform.
        platform: Option<String>,
        /// Registries reached over plain HTTP.
        insecure_registries: Vec<String>,
    },
    /// Local uncompressed tar layers (absolute paths, bottom first) and/or an OCI
    /// layout `DIR:TAG` (layout layers first).
    Local {
        /// `--oci-layout DIR:TAG`, with DIR absolute.
        oci_layout: Option<String>,
        /// `--layer FILE`s.
        layers: Vec<PathBuf>,
    },
}

/// [`Request::Mount`].
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct MountRequest {
    /// The image.
    pub source: ImageSource,
    /// Where to mount (absolute, existing directory).
    pub mountpoint: PathBuf,
    /// The copy-on-write upper directory (absolute); `None` mounts read-only.
    pub upper: Option<PathBuf>,
    /// The container this mount is the root filesystem of (`skiff run`): while the
    /// requesting process (its monitor) lives, `skiff daemon stop` refuses; once it
    /// is gone the daemon unmounts it.
    pub container: Option<String>,
    /// Prefetch the image's local profile and producer-marked files.
    pub prefetch: bool,
    /// Fetch the rest of the image at low priority after mounting.
    pub background_fetch: bool,
    /// (`skiff run`) Mount the container's root filesystem as an overlayfs over the
    /// image's one read-only view shared by all its containers (`upper` as the
    /// overlay's upper directory), instead of a FUSE mount of its own: the kernel's
    /// caches of the view are then warm for every container after the first.
    #[serde(default)]
    pub shared_view: bool,
    /// (`skiff run --rm`) The upper directory is deleted once the container is
    /// unmounted, so its overlayfs is mounted `volatile`: the unmount does not sync
    /// the upper's whole filesystem (1-40 ms on a busy disk, on every run's critical
    /// path), and the container's fsyncs of files about to be deleted are skipped.
    #[serde(default)]
    pub discard_upper: bool,
}

/// The daemon's answer.
#[derive(Serialize, Deserialize, Debug)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    /// Mounted; the image's config, for `skiff run` (absent for local layers).
    Mounted {
        /// The OCI image configuration.
        config: Option<Box<oci_spec::image::ImageConfiguration>>,
    },
    /// Unmounted.
    Unmounted,
    /// The daemon serves no mount there.
    NotMounted,
    /// [`Request::Status`].
    Status(Box<StatusReport>),
    /// The daemon is exiting.
    Stopping,
    /// The request failed.
    Error {
        /// What failed, for the user.
        message: String,
    },
}

/// What `skiff daemon status` shows.
#[derive(Serialize, Deserialize, Debug, Default)]
pub struct StatusReport {
    /// The daemon's process id.
    pub pid: u32,
    /// Seconds since the daemon started.
    pub uptime_secs: u64,
    /// The chunk cache directory.
    pub cache_dir: PathBuf,
    /// Bytes the chunk cache holds on disk.
    pub cache_bytes: u64,
    /// The on-disk cache bound.
    pub cache_limit: u64,
    /// One line per registry client.
    pub registries: Vec<RegistryStatus>,
    /// The images held in memory (most recently used last).
    pub images: Vec<ImageStatus>,
    /// Every mount served.
    pub mounts: Vec<MountStatus>,
    /// The read-only views shared by `skiff run` containers.
    #[serde(default)]
    pub views: Vec<ViewStatus>,
}

/// A read-only view of an image shared by the containers `skiff run` starts.
#[derive(Serialize, Deserialize, Debug)]
pub struct ViewStatus {
    /// Where it is mounted.
    pub mountpoint: PathBuf,
    /// The image.
    pub image: String,
    /// Containers whose root filesystem stands on it now.
    pub containers: usize,
    /// Seconds since its last container ended (`None` while one uses it).
    pub idle_secs: Option<u64>,
}

/// A registry the daemon has a client for.
#[derive(Serialize, Deserialize, Debug)]
pub struct RegistryStatus {
    /// host[:port].
    pub registry: String,
    /// HTTP requests made.
    pub requests: u64,
    /// Body bytes received.
    pub bytes: u64,
}

/// An image whose merged tree and indexes the daemon keeps.
#[derive(Serialize, Deserialize, Debug)]
pub struct ImageStatus {
    /// The image as asked for.
    pub image: String,
    /// Its layers.
    pub layers: usize,
    /// Mounts using it now.
    pub mounts: usize,
}

/// One mount.
#[derive(Serialize, Deserialize, Debug)]
pub struct MountStatus {
    /// The mount point.
    pub mountpoint: PathBuf,
    /// The image.
    pub image: String,
    /// The upper directory, if writable.
    pub upper: Option<PathBuf>,
    /// The container, for `skiff run` mounts.
    pub container: Option<String>,
    /// Whether the container's monitor still runs.
    pub running: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_one_json_line_each() {
        let req = Request::Mount(MountRequest {
            source: ImageSource::Registry {
                image: "localhost:5000/a:b".into(),
                pull: PullPolicy::Missing,
                platform: None,
                insecure_registries: vec![],
            },
            mountpoint: "/m".into(),
            upper: Some("/u".into()),
            container: Some("abc".into()),
            prefetch: true,
            background_fetch: false,
            shared_view: true,
            discard_upper: true,
        });
        let line = serde_json::to_string(&req).unwrap();
        assert!(!line.contains('\n'));
        assert!(
            line.starts_with(r#"{"op":"mount","source":{"kind":"registry""#),
            "{line}"
        );
        assert!(line.contains(r#""pull":"missing""#), "{line}");
        let back: Request = serde_json::from_str(&line).unwrap();
        assert!(matches!(back, Request::Mount(m) if m.container.as_deref() == Some("abc")));
        let stop: Request = serde_json::from_str(r#"{"op":"stop","force":true}"#).unwrap();
        assert!(matches!(stop, Request::Stop { force: true }));
        let err = serde_json::to_string(&Response::Error {
            message: "x".into(),
        })
        .unwrap();
        assert_eq!(err, r#"{"result":"error","message":"x"}"#);
    }
}
