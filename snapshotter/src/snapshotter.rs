//! The snapshot operations: the rules of containerd's snapshotter interface over the
//! [`Store`], the on-disk [`Dirs`] and a [`LayerSource`] of lazy layers. Blocking;
//! [`crate::service`] calls it from gRPC.
//!
//! The remote flow: a Prepare whose labels name a target chain id, an image and a
//! layer ([`labels::lazy_request`]) asks the source to make that layer available
//! lazily; if it can, the layer is recorded as a committed snapshot named by the
//! target (nothing on disk) and the answer is `AlreadyExists`, which tells
//! containerd's unpacker to skip the download. Lazy snapshots always form the bottom
//! of a chain, so the mounts of a snapshot above them show them as one merged
//! read-only view (the source mounts it once per chain), with any unpacked layers
//! above it as further lower directories.

use crate::error::SnapshotError;
use crate::labels::{self, LazyRequest};
use crate::overlay::{self, Dirs, Mount};
use crate::remote::LayerSource;
use crate::store::{Kind, NewSnapshot, Snapshot, Store, Usage};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// A snapshotter rooted in one directory: `metadata.redb` and `snapshots/`.
pub struct Snapshotter {
    store: Store,
    dirs: Dirs,
    source: Arc<dyn LayerSource>,
    /// Serialises mounting and releasing views against each other.
    views: Mutex<()>,
}

impl Snapshotter {
    /// Opens (or creates) the snapshotter state under `root`, with lazy layers from
    /// `source`. Views the source already has mounted (picked up from a daemon
    /// before this one) that no snapshot stands on any more are released.
    pub fn open(root: &Path, source: Arc<dyn LayerSource>) -> Result<Snapshotter, SnapshotError> {
        std::fs::create_dir_all(root).map_err(SnapshotError::io("creating", root))?;
        let dirs = Dirs::new(root);
        std::fs::create_dir_all(dirs.all()).map_err(SnapshotError::io("creating", dirs.all()))?;
        let s = Snapshotter {
            store: Store::open(&root.join("metadata.redb"))?,
            dirs,
            source,
            views: Mutex::new(()),
        };
        s.release_unused_views()?;
        Ok(s)
    }

    /// Creates the active snapshot `key` over `parent` — or, for a lazy request whose
    /// layer the source can serve, commits the target and answers `AlreadyExists`.
    pub fn prepare(
        &self,
        key: &str,
        parent: Option<&str>,
        labels: BTreeMap<String, String>,
    ) -> Result<Vec<Mount>, SnapshotError> {
        if let Some(request) = labels::lazy_request(&labels) {
            if self.store.get(&request.target).is_ok() {
                return Err(SnapshotError::AlreadyExists(request.target));
            }
            match self.prepare_lazy(&request, parent, &labels) {
                Ok(()) => return Err(SnapshotError::AlreadyExists(request.target)),
                Err(why) => tracing::info!(
                    layer = %request.digest, image = %request.image,
                    "layer unpacked instead of lazy: {why}"
                ),
            }
        }
        self.create(key, parent, Kind::Active, labels)
    }

    /// Creates the read-only view `key` of `parent`.
    pub fn view(
        &self,
        key: &str,
        parent: Option<&str>,
        labels: BTreeMap<String, String>,
    ) -> Result<Vec<Mount>, SnapshotError> {
        self.create(key, parent, Kind::View, labels)
    }

    fn create(
        &self,
        key: &str,
        parent: Option<&str>,
        kind: Kind,
        labels: BTreeMap<String, String>,
    ) -> Result<Vec<Mount>, SnapshotError> {
        let s = self.store.create(NewSnapshot {
            key,
            parent,
            kind,
            labels,
            remote: None,
        })?;
        if let Err(e) = self.dirs.create(s.id) {
            let _ = self.store.remove(key);
            return Err(e);
        }
        match self.mounts_of(&s) {
            Ok(m) => Ok(m),
            Err(e) => {
                let _ = self.store.remove(key);
                let _ = self.dirs.remove(s.id);
                Err(e)
            }
        }
    }

    /// Records the layer of `request` as served lazily, if the source can serve it
    /// and everything below it is lazy too; the reason otherwise.
    fn prepare_lazy(
        &self,
        request: &LazyRequest,
        parent: Option<&str>,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), String> {
        let below = match parent {
            None => None,
            Some(p) => {
                let ps = self.store.get(p).map_err(|e| e.to_string())?;
                match ps.remote {
                    Some(r) => Some(r),
                    None => return Err(format!("its parent {p} is unpacked")),
                }
            }
        };
        let remote = self.source.prepare(request).map_err(|e| e.0)?;
        let expected = below.as_ref().map_or(0, |b| b.layer + 1);
        if remote.layer != expected {
            return Err(format!(
                "it is layer {} of {} but its parent chain has {expected} layers",
                remote.layer, remote.image
            ));
        }
        let mut labels = labels.clone();
        labels.insert(labels::REMOTE.into(), labels::REMOTE_VALUE.into());
        let s = self
            .store
            .create(NewSnapshot {
                key: &request.target,
                parent,
                kind: Kind::Committed,
                labels,
                remote: Some(remote),
            })
            .map_err(|e| e.to_string())?;
        tracing::info!(target = %request.target, id = s.id, layer = %request.digest, "lazy layer committed");
        Ok(())
    }

    /// The lower directories under a snapshot whose parent is `parent`, nearest
    /// first: the unpacked parents' directories, then the merged view of the lazy
    /// bottom of the chain (mounted now if it is not).
    fn lowers(&self, parent: Option<&str>) -> Result<Vec<PathBuf>, SnapshotError> {
        let mut out = Vec::new();
        let Some(parent) = parent else {
            return Ok(out);
        };
        for (name, s) in self.store.chain(parent)? {
            if let Some(remote) = &s.remote {
                let _views = self.views.lock().unwrap_or_else(|p| p.into_inner());
                let view = self
                    .source
                    .view(&name, remote)
                    .map_err(|e| SnapshotError::Remote(e.0))?;
                out.push(view);
                break;
            }
            out.push(self.dirs.fs(s.id));
        }
        Ok(out)
    }

    fn mounts_of(&self, s: &Snapshot) -> Result<Vec<Mount>, SnapshotError> {
        if s.kind == Kind::Committed {
            return Err(SnapshotError::FailedPrecondition(
                "a committed snapshot has no mounts".into(),
            ));
        }
        let lowers = self.lowers(s.parent.as_deref())?;
        Ok(overlay::mounts(
            s.kind,
            &self.dirs.fs(s.id),
            &self.dirs.work(s.id),
            &lowers,
        ))
    }

    /// The mounts of the active or view snapshot `key`.
    pub fn mounts(&self, key: &str) -> Result<Vec<Mount>, SnapshotError> {
        self.mounts_of(&self.store.get(key)?)
    }

    /// Commits the active snapshot `key` as `name`, measuring its size.
    pub fn commit(
        &self,
        name: &str,
        key: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<(), SnapshotError> {
        let s = self.store.get(key)?;
        if s.kind != Kind::Active {
            return Err(SnapshotError::FailedPrecondition(format!(
                "snapshot {key} is not active"
            )));
        }
        let usage = overlay::usage(&self.dirs.fs(s.id))?;
        self.store.commit(key, name, labels, usage)?;
        Ok(())
    }

    /// Removes `key` and its directories, and unmounts views nothing needs any more.
    pub fn remove(&self, key: &str) -> Result<(), SnapshotError> {
        let s = self.store.remove(key)?;
        if s.remote.is_none() {
            self.dirs.remove(s.id)?;
        }
        self.release_unused_views()
    }

    /// The record of `key`.
    pub fn stat(&self, key: &str) -> Result<Snapshot, SnapshotError> {
        self.store.get(key)
    }

    /// Sets the labels of `key` (all, or those named by `paths`: `labels` or
    /// `labels.NAME`; other fields are immutable).
    pub fn update(
        &self,
        key: &str,
        labels: BTreeMap<String, String>,
        paths: &[String],
    ) -> Result<Snapshot, SnapshotError> {
        if paths.is_empty() || paths.iter().any(|p| p == "labels") {
            return self.store.update_labels(key, labels, None);
        }
        let mut names = Vec::new();
        for p in paths {
            match p.strip_prefix("labels.") {
                Some(n) => names.push(n.to_string()),
                None => {
                    return Err(SnapshotError::InvalidArgument(format!(
                        "cannot update field {p} of snapshot {key}"
                    )))
                }
            }
        }
        self.store.update_labels(key, labels, Some(&names))
    }

    /// Disk use of `key`'s own directory (measured at commit for committed ones;
    /// nothing for lazy ones, whose bytes are in the shared chunk cache).
    pub fn usage(&self, key: &str) -> Result<Usage, SnapshotError> {
        let s = self.store.get(key)?;
        match (s.remote.is_some(), s.usage) {
            (true, _) => Ok(Usage::default()),
            (false, Some(u)) => Ok(u),
            (false, None) => overlay::usage(&self.dirs.fs(s.id)),
        }
    }

    /// Every snapshot, by key.
    pub fn list(&self) -> Result<Vec<(String, Snapshot)>, SnapshotError> {
        self.store.list()
    }

    /// Deletes directories no snapshot owns (left by a crash between the database
    /// and the disk) and unmounts views nothing needs.
    pub fn cleanup(&self) -> Result<(), SnapshotError> {
        let owned: HashSet<u64> = self.store.list()?.iter().map(|(_, s)| s.id).collect();
        for id in self.dirs.ids_on_disk()? {
            if !owned.contains(&id) {
                tracing::info!(id, "removing an orphaned snapshot directory");
                self.dirs.remove(id)?;
            }
        }
        self.release_unused_views()
    }

    /// Unmounts every view that no active or view snapshot stands on.
    fn release_unused_views(&self) -> Result<(), SnapshotError> {
        let _views = self.views.lock().unwrap_or_else(|p| p.into_inner());
        let all = self.store.list()?;
        let by_key: BTreeMap<&str, &Snapshot> = all.iter().map(|(k, s)| (k.as_str(), s)).collect();
        let mut needed = HashSet::new();
        for (_, s) in all.iter().filter(|(_, s)| s.kind != Kind::Committed) {
            let mut next = s.parent.as_deref();
            while let Some(k) = next {
                let Some(p) = by_key.get(k) else { break };
                if p.remote.is_some() {
                    needed.insert(k.to_string());
                    break;
                }
                next = p.parent.as_deref();
            }
        }
        for chain in self.source.mounted() {
            if !needed.contains(&chain) {
                tracing::info!(%chain, "unmounting an unused view");
                self.source.release(&chain);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::NotLazy;
    use crate::store::RemoteLayer;

    /// Serves layers of one image `img` lazily, with "views" as plain directories.
    struct FakeSource {
        dir: PathBuf,
        layers: Vec<String>,
        mounted: Mutex<Vec<String>>,
    }

    impl LayerSource for FakeSource {
        fn prepare(&self, r: &LazyRequest) -> Result<RemoteLayer, NotLazy> {
            let layer = self
                .layers
                .iter()
                .position(|d| *d == r.digest)
                .ok_or_else(|| NotLazy(format!("{} is not lazy", r.digest)))?;
            Ok(RemoteLayer {
                image: r.image.clone(),
                layer,
                digest: r.digest.clone(),
            })
        }
        fn view(&self, chain: &str, _: &RemoteLayer) -> Result<PathBuf, NotLazy> {
            let mut m = self.mounted.lock().unwrap();
            if !m.iter().any(|c| c == chain) {
                m.push(chain.to_string());
            }
            Ok(self.dir.join(chain))
        }
        fn release(&self, chain: &str) {
            self.mounted.lock().unwrap().retain(|c| c != chain);
        }
        fn mounted(&self) -> Vec<String> {
            self.mounted.lock().unwrap().clone()
        }
    }

    fn lazy_labels(target: &str, digest: &str) -> BTreeMap<String, String> {
        [
            (labels::TARGET, target),
            ("containerd.io/snapshot/cri.image-ref", "reg/img:1"),
            ("containerd.io/snapshot/cri.layer-digest", digest),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    #[test]
    fn lazy_layers_commit_themselves_and_a_mixed_chain_stacks_on_the_view() {
        let dir = tempfile::tempdir().unwrap();
        let source = Arc::new(FakeSource {
            dir: dir.path().join("views"),
            layers: vec!["sha256:l0".into(), "sha256:l1".into()],
            mounted: Mutex::default(),
        });
        let sn = Snapshotter::open(&dir.path().join("sn"), source.clone()).unwrap();
        // Layers 0 and 1 are lazy: AlreadyExists, committed under the chain id.
        for (parent, chain, digest) in [(None, "c0", "sha256:l0"), (Some("c0"), "c1", "sha256:l1")]
        {
            let r = sn.prepare(
                &format!("extract-{chain}"),
                parent,
                lazy_labels(chain, digest),
            );
            assert!(
                matches!(r, Err(SnapshotError::AlreadyExists(ref t)) if t == chain),
                "{r:?}"
            );
            let s = sn.stat(chain).unwrap();
            assert_eq!(s.kind, Kind::Committed);
            assert_eq!(s.labels[labels::REMOTE], labels::REMOTE_VALUE);
        }
        // Layer 2 is not: unpacked above the view of c1.
        let m = sn
            .prepare("extract-c2", Some("c1"), lazy_labels("c2", "sha256:l2"))
            .unwrap();
        let view = dir.path().join("views/c1");
        assert!(m[0]
            .options
            .contains(&format!("lowerdir={}", view.display())));
        sn.commit("c2", "extract-c2", BTreeMap::new()).unwrap();
        // A container on top: its own upper, c2's directory, then the view.
        let m = sn.prepare("ctr", Some("c2"), BTreeMap::new()).unwrap();
        let c2 = sn.stat("c2").unwrap().id;
        let want = format!("lowerdir={}:{}", sn.dirs.fs(c2).display(), view.display());
        assert!(m[0].options.contains(&want), "{m:?}");
        // Removing the container releases the view.
        assert_eq!(source.mounted(), ["c1"]);
        sn.remove("ctr").unwrap();
        assert!(source.mounted().is_empty());
        // Above an unpacked layer nothing is lazy any more.
        let r = sn.prepare("extract-c3", Some("c2"), lazy_labels("c3", "sha256:l0"));
        assert!(r.is_ok(), "{r:?}");
    }

    #[test]
    fn remove_and_cleanup_reclaim_directories() {
        let dir = tempfile::tempdir().unwrap();
        let sn = Snapshotter::open(dir.path(), Arc::new(crate::remote::NoLazyLayers)).unwrap();
        sn.prepare("a", None, BTreeMap::new()).unwrap();
        let id = sn.stat("a").unwrap().id;
        std::fs::write(sn.dirs.fs(id).join("f"), vec![0u8; 8192]).unwrap();
        assert!(sn.usage("a").unwrap().size >= 8192);
        sn.commit("A", "a", BTreeMap::new()).unwrap();
        assert!(sn.usage("A").unwrap().size >= 8192);
        sn.remove("A").unwrap();
        assert!(!sn.dirs.of(id).exists());
        std::fs::create_dir_all(sn.dirs.fs(99)).unwrap();
        sn.cleanup().unwrap();
        assert!(!sn.dirs.of(99).exists());
    }
}
