//! The daemon as a containerd remote snapshotter: the lazy-layer side of
//! `skiff-snapshotter`. A lazy layer is one of an image the daemon resolves once
//! (manifest, config and layer indexes, no layer download) into its [`ImageCache`]
//! and keeps in its [`LazyImages`], which answers every Prepare of the image; the view of
//! a lazy chain (layers `0..=k` of an image) is one read-only FUSE mount of the
//! merged tree, shared by every container of that chain — the image's own merged
//! tree and fetcher when the chain is the whole image, a tree of the first `k + 1`
//! layers (same cache) otherwise.
//!
//! Views outlive a restart of the daemon as its other mounts do: each has a
//! [`MountRecord`] (the image pinned to its manifest, the chain and its top layer,
//! the mount point) and its `/dev/fuse` descriptor at the keeper, and the next
//! daemon serves it again before it answers containerd. Releasing a view (no
//! snapshot stands on it any more) unmounts it and forgets both.
//!
//! [`ImageCache`]: super::state::ImageCache
//! [`LazyImages`]: super::lazy_images::LazyImages

use super::lazy_images::LazyImages;
use super::persist::{ChainView, MountRecord};
use super::protocol::ImageSource;
use super::restart;
use super::state::{lock, DaemonState, ImageEntry};
use crate::cmd::lazy::PullPolicy;
use anyhow::Context;
use skiff_fs::{MountHandle, SharedLower};
use skiff_snapshotter::labels::LazyRequest;
use skiff_snapshotter::{LayerSource, NotLazy, RemoteLayer, SnapshotServer, Snapshotter};
use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// One mounted view: its mount id (its record's, and its descriptor's tag at the
/// keeper) and its FUSE session.
struct View {
    id: String,
    handle: MountHandle,
}

/// The daemon's lazy layers and the views mounted from them.
pub struct DaemonLayers {
    state: Arc<DaemonState>,
    /// Each image resolved once, for all its layers and views.
    images: LazyImages,
    views_dir: PathBuf,
    /// Mounted views by chain name.
    views: Mutex<HashMap<String, View>>,
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

/// The merged lower of layers `0..=top_layer` of `image`: the image's own when
/// that is all of it, else a tree of those layers (same chunk cache).
fn lower_of(image: &ImageEntry, top_layer: usize) -> anyhow::Result<Arc<SharedLower>> {
    if top_layer + 1 == image.layers {
        return Ok(image.lower.clone());
    }
    let layers = image
        .lower
        .layers()
        .get(..=top_layer)
        .ok_or_else(|| anyhow::anyhow!("{} has no layer {top_layer}", image.name))?;
    Ok(Arc::new(SharedLower::build(
        layers.to_vec(),
        image.lower.cache().clone(),
        8,
        skiff_fs::FetchTuning::default(),
    )?))
}

impl DaemonLayers {
    /// Lazy layers from `state`, views mounted under `views_dir`; the views the
    /// daemon before this one left with the keeper are served again.
    pub fn new(state: Arc<DaemonState>, views_dir: PathBuf) -> DaemonLayers {
        let layers = DaemonLayers {
            images: LazyImages::new(state.clone()),
            state,
            views_dir,
            views: Mutex::default(),
        };
        let resumed = restart::resume_views(&layers.state, |record, fd, backings| {
            layers.resume_view(record, fd, backings)
        });
        if resumed > 0 {
            tracing::info!(resumed, "snapshot views picked up");
        }
        layers
    }

    fn mount_view(&self, chain: &str, top: &RemoteLayer, at: &Path) -> anyhow::Result<View> {
        let source = source_of(&top.image);
        let lazy = self.images.image(&top.image)?;
        // The image as resolved now must be the one the chain was committed from
        // (after a restart it comes from the local store, whose tag may have moved).
        if lazy.layers.get(top.layer) != Some(&top.digest) {
            anyhow::bail!(
                "{} is no longer layer {} of {}",
                top.digest,
                top.layer,
                top.image
            );
        }
        let image = lazy.entry.clone();
        let lower = lower_of(&image, top.layer)?;
        std::fs::create_dir_all(at)?;
        // A view left by a daemon that died without a keeper is a dead FUSE mount.
        let _ = nix::mount::umount2(at, nix::mount::MntFlags::MNT_DETACH);
        let at = std::fs::canonicalize(at)?;
        let id = self.state.new_mount_id();
        let mut opts = skiff_fs::MountOptions::new(Vec::new(), self.state.global.layout().cache());
        opts.fs_name = format!("{}@{}", image.name, chain);
        opts.restart = self.state.restart_config(&id, 0, None);
        let name = opts.fs_name.clone();
        let handle = skiff_fs::mount_shared(lower, opts, &at)?;
        // Recorded with the image pinned to its manifest, so a successor serves
        // the same tree whatever the tag says by then.
        let record = MountRecord {
            id: id.clone(),
            mountpoint: at.clone(),
            source: restart::pinned(&source, &image),
            name,
            upper: None,
            container: None,
            stats_file: None,
            negotiated: handle.negotiated().unwrap_or_default(),
            generation: 0,
            view: Some(ChainView {
                chain: chain.to_string(),
                top_layer: top.layer,
            }),
            shared: None,
        };
        if let Err(e) = self.state.hand_over(&record, &handle) {
            self.state.forget_mount(&id);
            let _ = handle.unmount();
            return Err(e);
        }
        tracing::info!(%chain, id, image = %image.name, layers = top.layer + 1, view = %at.display(), "view mounted");
        Ok(View { id, handle })
    }

    /// Serves again the view of `record` (left by the daemon before this one) on
    /// its connection `fd`.
    fn resume_view(
        &self,
        mut record: MountRecord,
        fd: OwnedFd,
        backings: Vec<skiff_fs::Backing>,
    ) -> anyhow::Result<()> {
        let view = record
            .view
            .clone()
            .context("the record is not a snapshot view's")?;
        let (image, _) = self.state.image(&record.source)?;
        let lower = lower_of(&image, view.top_layer)?;
        let mut opts = skiff_fs::MountOptions::new(Vec::new(), self.state.global.layout().cache());
        opts.fs_name = record.name.clone();
        opts.restart = restart::next_generation(&self.state, &mut record, backings)?;
        let handle = skiff_fs::resume_shared(lower, opts, &record.mountpoint, fd)
            .with_context(|| format!("serving the view {} again", record.mountpoint.display()))?;
        tracing::info!(
            chain = %view.chain,
            id = record.id,
            view = %record.mountpoint.display(),
            generation = record.generation,
            "view picked up"
        );
        let old = lock(&self.views).insert(
            view.chain,
            View {
                id: record.id,
                handle,
            },
        );
        if let Some(old) = old {
            // Two records of one chain (cannot happen: one view per chain); the
            // older one is served no more.
            self.state.forget_mount(&old.id);
        }
        Ok(())
    }

    /// Unmounts every view (the daemon is stopping for good, its keeper told to
    /// exit already).
    pub fn unmount_all(&self) {
        let all: Vec<(String, View)> = lock(&self.views).drain().collect();
        for (chain, v) in all {
            self.state.records.remove(&v.id);
            if let Err(e) = v.handle.unmount() {
                tracing::warn!(%chain, "unmounting a view: {e}");
            }
        }
    }
}

impl LayerSource for DaemonLayers {
    fn prepare(&self, request: &LazyRequest) -> Result<RemoteLayer, NotLazy> {
        // The first layer of an image resolves its manifest (and starts indexing
        // all of it); every later layer is a lookup, and every view waits for the
        // index.
        let layer = self.images.layer(request)?;
        Ok(RemoteLayer {
            image: request.image.clone(),
            layer,
            digest: request.digest.clone(),
        })
    }

    fn view(&self, chain: &str, top: &RemoteLayer) -> Result<PathBuf, NotLazy> {
        let mut views = lock(&self.views);
        if let Some(v) = views.get(chain) {
            let at = v.handle.mountpoint().to_path_buf();
            if crate::cmd::mount::is_mounted(&at) {
                return Ok(at);
            }
            // Unmounted behind the daemon's back: mounted again below.
            if let Some(gone) = views.remove(chain) {
                self.state.forget_mount(&gone.id);
            }
        }
        let view = self
            .mount_view(chain, top, &self.views_dir.join(dir_name(chain)))
            .map_err(|e| NotLazy(format!("mounting the view of {chain}: {e:#}")))?;
        let at = view.handle.mountpoint().to_path_buf();
        views.insert(chain.to_string(), view);
        Ok(at)
    }

    fn release(&self, chain: &str) {
        let view = lock(&self.views).remove(chain);
        if let Some(v) = view {
            let result = v.handle.unmount();
            // Unmounted (or detached): nothing for a successor to serve.
            self.state.forget_mount(&v.id);
            if let Err(e) = result {
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
    /// Opens the snapshotter state under `<root>/snapshotter` (picking up the views
    /// an earlier daemon left) and serves it on `socket`.
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
