//! The daemon as a containerd remote snapshotter: the lazy-layer side of
//! `skiff-snapshotter`. A lazy layer is one of an image the daemon resolves (manifest,
//! config and layer indexes, no layer download) into its [`ImageCache`]; the view of
//! a lazy chain (layers `0..=k` of an image) is one read-only FUSE mount of the
//! merged tree, shared by every container of that chain — the image's own merged
//! tree and fetcher when the chain is the whole image, a tree of the first `k + 1`
//! layers (same cache) otherwise.
//!
//! [`ImageCache`]: super::state::ImageCache

use super::protocol::ImageSource;
use super::state::{lock, DaemonState};
use crate::cmd::lazy::PullPolicy;
use skiff_fs::{MountHandle, SharedLower};
use skiff_proto::reference::Reference;
use skiff_snapshotter::labels::LazyRequest;
use skiff_snapshotter::{LayerSource, NotLazy, RemoteLayer, SnapshotServer, Snapshotter};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The daemon's lazy layers and the views mounted from them.
pub struct DaemonLayers {
    state: Arc<DaemonState>,
    views_dir: PathBuf,
    /// Mounted views by chain name.
    views: Mutex<HashMap<String, MountHandle>>,
}

fn source_of(image: &str) -> ImageSource {
    ImageSource::Registry {
        image: image.to_string(),
        pull: PullPolicy::Missing,
        platform: None,
        insecure_registries: Vec::new(),
    }
}

/// A chain name as a directory name: overlayfs's `lowerdir=` splits on `:` and
/// mount options on `,`.
fn dir_name(chain: &str) -> String {
    chain
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

impl DaemonLayers {
    /// Lazy layers from `state`, views mounted under `views_dir`.
    pub fn new(state: Arc<DaemonState>, views_dir: PathBuf) -> DaemonLayers {
        DaemonLayers {
            state,
            views_dir,
            views: Mutex::default(),
        }
    }

    fn mount_view(&self, chain: &str, top: &RemoteLayer, at: &Path) -> anyhow::Result<MountHandle> {
        let (image, _) = self.state.image(&source_of(&top.image))?;
        let lower = if top.layer + 1 == image.layers {
            image.lower.clone()
        } else {
            let layers = image
                .lower
                .layers()
                .get(..=top.layer)
                .ok_or_else(|| anyhow::anyhow!("{} has no layer {}", image.name, top.layer))?;
            Arc::new(SharedLower::build(
                layers.to_vec(),
                image.lower.cache().clone(),
                8,
                skiff_fs::FetchTuning::default(),
            )?)
        };
        std::fs::create_dir_all(at)?;
        // A view left by a daemon that died is a dead FUSE mount now.
        let _ = nix::mount::umount2(at, nix::mount::MntFlags::MNT_DETACH);
        let mut opts = skiff_fs::MountOptions::new(Vec::new(), self.state.global.layout().cache());
        opts.fs_name = format!("{}@{}", image.name, chain);
        let handle = skiff_fs::mount_shared(lower, opts, at)?;
        tracing::info!(%chain, image = %image.name, layers = top.layer + 1, view = %at.display(), "view mounted");
        Ok(handle)
    }

    /// Unmounts every view (the daemon is stopping).
    pub fn unmount_all(&self) {
        let all: Vec<(String, MountHandle)> = lock(&self.views).drain().collect();
        for (chain, h) in all {
            if let Err(e) = h.unmount() {
                tracing::warn!(%chain, "unmounting a view: {e}");
            }
        }
    }
}

impl LayerSource for DaemonLayers {
    fn prepare(&self, request: &LazyRequest) -> Result<RemoteLayer, NotLazy> {
        let not_lazy = |e: anyhow::Error| NotLazy(format!("{e:#}"));
        // Resolving and indexing the whole image once makes every later layer of it
        // (and every view) a lookup.
        let (image, _) = self
            .state
            .image(&source_of(&request.image))
            .map_err(not_lazy)?;
        let reference = Reference::parse(&request.image).map_err(|e| not_lazy(e.into()))?;
        let resolved =
            crate::cmd::inspect::load_local(&self.state.global, &reference).map_err(not_lazy)?;
        let layer = resolved
            .manifest
            .layers
            .iter()
            .position(|d| d.digest.to_string() == request.digest)
            .ok_or_else(|| {
                NotLazy(format!(
                    "{} is not a layer of {} for this platform",
                    request.digest, image.name
                ))
            })?;
        Ok(RemoteLayer {
            image: request.image.clone(),
            layer,
            digest: request.digest.clone(),
        })
    }

    fn view(&self, chain: &str, top: &RemoteLayer) -> Result<PathBuf, NotLazy> {
        let at = self.views_dir.join(dir_name(chain));
        let mut views = lock(&self.views);
        if views.contains_key(chain) {
            if crate::cmd::mount::is_mounted(&at) {
                return Ok(at);
            }
            views.remove(chain);
        }
        let handle = self
            .mount_view(chain, top, &at)
            .map_err(|e| NotLazy(format!("mounting the view of {chain}: {e:#}")))?;
        views.insert(chain.to_string(), handle);
        Ok(at)
    }

    fn release(&self, chain: &str) {
        let handle = lock(&self.views).remove(chain);
        if let Some(h) = handle {
            if let Err(e) = h.unmount() {
                tracing::warn!(%chain, "unmounting a view: {e}");
            }
            let _ = std::fs::remove_dir(self.views_dir.join(dir_name(chain)));
        }
    }

    fn mounted(&self) -> Vec<String> {
        lock(&self.views).keys().cloned().collect()
    }
}

/// The snapshotter the daemon serves, and its lazy layers (unmounted on stop).
pub struct Snapshots {
    server: SnapshotServer,
    layers: Arc<DaemonLayers>,
}

impl Snapshots {
    /// Opens the snapshotter state under `<root>/snapshotter` and serves it on
    /// `socket`.
    pub fn start(state: Arc<DaemonState>, socket: &Path) -> anyhow::Result<Snapshots> {
        let dir = state.global.root.join("snapshotter");
        let layers = Arc::new(DaemonLayers::new(state, dir.join("views")));
        let snapshotter = Snapshotter::open(&dir, layers.clone())?;
        let server = SnapshotServer::start(Arc::new(snapshotter), socket)?;
        Ok(Snapshots { server, layers })
    }

    /// Stops serving and unmounts the views.
    pub fn stop(self) {
        self.server.stop();
        self.layers.unmount_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn view_directories_have_no_overlay_separators() {
        assert_eq!(dir_name("sha256:ab,c/d"), "sha256-ab-c-d");
    }
}
