//! What a restarted daemon needs to serve the mounts of the one before: one
//! [`MountRecord`] per mount, each its own JSON file under `<root>/daemon/mounts/`,
//! replaced whole by write-to-temp and rename. A kill of the daemon at any point
//! leaves every record either as it was or as it became, never half written. There
//! is no fsync: the records only matter while the kernel keeps the mounts, which a
//! machine crash (the one thing fsync would guard against) ends anyway.

use super::protocol::ImageSource;
use crate::container::state::ProcessId;
use serde::{Deserialize, Serialize};
use skiff_fs::Negotiated;
use std::io::Write;
use std::path::{Path, PathBuf};

/// One mount the daemon serves, as a successor needs it.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct MountRecord {
    /// The mount's id (also its descriptor's tag at the keeper).
    pub id: String,
    /// The canonical mount point.
    pub mountpoint: PathBuf,
    /// The image, pinned to the manifest digest it was mounted with (so a
    /// successor mounts the same tree whatever the tag says now).
    pub source: ImageSource,
    /// The image's name as shown.
    pub name: String,
    /// The upper directory, if writable.
    pub upper: Option<PathBuf>,
    /// The container and its monitor, for `skiff run` mounts.
    pub container: Option<(String, Option<ProcessId>)>,
    /// Where the mount's counters are written (`skiff mount` only).
    pub stats_file: Option<PathBuf>,
    /// What INIT negotiated on the connection.
    pub negotiated: Negotiated,
    /// How many servers the connection has had (the current one included).
    pub generation: u32,
    /// Set on the read-only view of a containerd snapshot chain (served by the
    /// snapshotter side of the daemon, not listed among its mounts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub view: Option<ChainView>,
    /// Set on the mounts of `skiff run` containers' shared views: the view itself,
    /// or a container's root filesystem over one (see `super::run_views`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared: Option<SharedRole>,
}

impl MountRecord {
    /// The record of a new mount (first generation, no counters, nothing
    /// negotiated yet, no role in a view): callers set what differs.
    pub fn new(
        id: String,
        mountpoint: PathBuf,
        source: ImageSource,
        name: String,
        upper: Option<PathBuf>,
        container: Option<(String, Option<ProcessId>)>,
    ) -> MountRecord {
        MountRecord {
            id,
            mountpoint,
            source,
            name,
            upper,
            container,
            stats_file: None,
            negotiated: Negotiated::default(),
            generation: 0,
            view: None,
            shared: None,
        }
    }
}

/// What a mount is in the sharing of one read-only view per image among the
/// containers `skiff run` starts through the daemon.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(tag = "role", rename_all = "snake_case")]
pub enum SharedRole {
    /// The read-only FUSE view of an image, shared by its containers under `key`
    /// (the image's manifest digest).
    View {
        /// The key containers find the view by.
        key: String,
    },
    /// A container's root filesystem over the view whose mount id is `view`: an
    /// overlayfs mount with the record's upper directory and `work` as its work
    /// directory, or (no `work`: a read-only container) a read-only bind mount of the
    /// view. A kernel mount: no FUSE connection of its own at the keeper.
    Container {
        /// The view's mount id.
        view: String,
        /// overlayfs's work directory (next to the upper directory).
        work: Option<PathBuf>,
    },
}

/// Which chain a containerd snapshot view shows: layers `0..=top_layer` of the
/// record's image.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ChainView {
    /// The chain's name (the snapshot key of its top lazy layer).
    pub chain: String,
    /// The top layer's position in the image, bottom first.
    pub top_layer: usize,
}

/// The directory of mount records.
pub struct MountRecords {
    dir: PathBuf,
}

impl MountRecords {
    /// The records under `root`.
    pub fn new(root: &Path) -> MountRecords {
        MountRecords {
            dir: root.join("daemon").join("mounts"),
        }
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Writes `r` atomically (replacing its earlier version).
    pub fn save(&self, r: &MountRecord) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let path = self.path(&r.id);
        let tmp = path.with_extension("json.tmp");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(r).map_err(std::io::Error::other)?)?;
        drop(f);
        std::fs::rename(&tmp, &path)
    }

    /// Deletes the record `id` (a missing one is fine).
    pub fn remove(&self, id: &str) {
        match std::fs::remove_file(self.path(id)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(id, "removing the mount record: {e}"),
        }
    }

    /// Every record; leftover temporary files (a kill mid-write) are deleted and
    /// unreadable records reported and skipped.
    pub fn load_all(&self) -> Vec<MountRecord> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for e in entries.flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".tmp") {
                let _ = std::fs::remove_file(&p);
                continue;
            }
            if !name.ends_with(".json") {
                continue;
            }
            match std::fs::read(&p)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
            {
                Ok(r) => out.push(r),
                Err(e) => tracing::warn!(path = %p.display(), "skipping a mount record: {e}"),
            }
        }
        out.sort_by(|a: &MountRecord, b| a.id.cmp(&b.id));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_temp_files_are_dropped() {
        let root = tempfile::tempdir().unwrap();
        let recs = MountRecords::new(root.path());
        let r = MountRecord {
            id: "m1".into(),
            mountpoint: "/m".into(),
            source: ImageSource::Local {
                oci_layout: None,
                layers: vec!["/l.tar".into()],
            },
            name: "l".into(),
            upper: Some("/u".into()),
            container: Some(("c".into(), None)),
            stats_file: None,
            negotiated: Negotiated { passthrough: true },
            generation: 2,
            view: None,
            shared: Some(SharedRole::Container {
                view: "v1".into(),
                work: Some("/w".into()),
            }),
        };
        recs.save(&r).unwrap();
        std::fs::write(root.path().join("daemon/mounts/m2.json.tmp"), b"{trunc").unwrap();
        let all = recs.load_all();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].generation, 2);
        // Records written before views were recorded still read.
        let mut old = serde_json::to_value(&r).unwrap();
        assert!(old.get("view").is_none());
        old.as_object_mut().unwrap().remove("shared");
        let back: MountRecord = serde_json::from_value(old).unwrap();
        assert_eq!(back.view, None);
        assert_eq!(back.shared, None);
        assert_eq!(all[0].shared, r.shared);
        assert!(!root.path().join("daemon/mounts/m2.json.tmp").exists());
        recs.remove("m1");
        assert!(recs.load_all().is_empty());
    }
}
