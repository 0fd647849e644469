//! Snapshots on local disk, as containerd's overlay snapshotter lays them out: each
//! snapshot `<dir>/snapshots/<id>/` has `fs/` (its layer, or a container's upper
//! directory) and `work/` (overlayfs's work directory), and mounts stack the `fs/` of
//! the committed parents as lower directories.

use crate::error::SnapshotError;
use crate::store::{Kind, Usage};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// One mount for containerd to perform (its `containerd.types.Mount`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// `bind` or `overlay`.
    pub kind: String,
    /// The source path (`overlay` for overlay mounts).
    pub source: String,
    /// fstab-style options.
    pub options: Vec<String>,
}

/// Where the snapshot directories live.
#[derive(Clone, Debug)]
pub struct Dirs {
    root: PathBuf,
}

impl Dirs {
    /// Snapshot directories under `root/snapshots`.
    pub fn new(root: &Path) -> Dirs {
        Dirs {
            root: root.join("snapshots"),
        }
    }

    /// The directory holding every snapshot's directory.
    pub fn all(&self) -> &Path {
        &self.root
    }

    /// Snapshot `id`'s directory.
    pub fn of(&self, id: u64) -> PathBuf {
        self.root.join(id.to_string())
    }

    /// Snapshot `id`'s layer (or upper) directory.
    pub fn fs(&self, id: u64) -> PathBuf {
        self.of(id).join("fs")
    }

    /// Snapshot `id`'s overlayfs work directory.
    pub fn work(&self, id: u64) -> PathBuf {
        self.of(id).join("work")
    }

    /// Creates the empty directories of snapshot `id`.
    pub fn create(&self, id: u64) -> Result<(), SnapshotError> {
        for d in [self.fs(id), self.work(id)] {
            std::fs::create_dir_all(&d).map_err(SnapshotError::io("creating", &d))?;
        }
        // containerd's overlay snapshotter makes the layer root 0755 too, whatever
        // the umask; the first layer's tar sets it again anyway.
        let fs = self.fs(id);
        std::fs::set_permissions(&fs, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .map_err(SnapshotError::io("setting the mode of", &fs))
    }

    /// Deletes snapshot `id`'s directories (nothing to do if they are gone).
    pub fn remove(&self, id: u64) -> Result<(), SnapshotError> {
        let d = self.of(id);
        match std::fs::remove_dir_all(&d) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(SnapshotError::io("removing", &d)(e))
            }
            _ => Ok(()),
        }
    }

    /// The ids of every snapshot directory present.
    pub fn ids_on_disk(&self) -> Result<Vec<u64>, SnapshotError> {
        let entries = match std::fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(SnapshotError::io("listing", &self.root)(e)),
        };
        Ok(entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect())
    }
}

/// The mounts of a snapshot of `kind` whose own directory is `fs`/`work`, over
/// `lowers` (nearest parent first; empty for a snapshot without parent).
pub fn mounts(kind: Kind, fs: &Path, work: &Path, lowers: &[PathBuf]) -> Vec<Mount> {
    let bind = |source: &Path, mode: &str| Mount {
        kind: "bind".into(),
        source: source.display().to_string(),
        options: vec![mode.into(), "rbind".into()],
    };
    let lowerdir = || {
        format!(
            "lowerdir={}",
            lowers
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(":")
        )
    };
    match (kind, lowers) {
        (Kind::Active, []) => vec![bind(fs, "rw")],
        (Kind::Active, _) => {
            let mut options = vec![
                format!("workdir={}", work.display()),
                format!("upperdir={}", fs.display()),
                lowerdir(),
            ];
            if index_option_supported() {
                // A lazy lower is FUSE, which cannot give overlayfs the file handles
                // its inode index needs.
                options.insert(0, "index=off".into());
            }
            vec![Mount {
                kind: "overlay".into(),
                source: "overlay".into(),
                options,
            }]
        }
        // A view of nothing is its (empty) own directory, read-only.
        (_, []) => vec![bind(fs, "ro")],
        (_, [one]) => vec![bind(one, "ro")],
        (_, _) => vec![Mount {
            kind: "overlay".into(),
            source: "overlay".into(),
            options: vec![lowerdir()],
        }],
    }
}

fn index_option_supported() -> bool {
    Path::new("/sys/module/overlay/parameters/index").exists()
}

/// The disk space and inodes used below `dir` (hard links counted once), without
/// following symbolic links or crossing into other file systems.
pub fn usage(dir: &Path) -> Result<Usage, SnapshotError> {
    let top = std::fs::symlink_metadata(dir).map_err(SnapshotError::io("measuring", dir))?;
    let mut seen = std::collections::HashSet::new();
    let mut total = Usage::default();
    let mut todo = vec![dir.to_path_buf()];
    let mut count = |m: &std::fs::Metadata, total: &mut Usage| {
        if m.nlink() <= 1 || seen.insert(m.ino()) {
            total.inodes += 1;
            total.size += m.blocks() * 512;
        }
    };
    count(&top, &mut total);
    while let Some(d) = todo.pop() {
        let entries = std::fs::read_dir(&d).map_err(SnapshotError::io("listing", &d))?;
        for e in entries {
            let e = e.map_err(SnapshotError::io("listing", &d))?;
            let m = e
                .metadata()
                .map_err(SnapshotError::io("measuring", e.path()))?;
            count(&m, &mut total);
            if m.is_dir() && m.dev() == top.dev() {
                todo.push(e.path());
            }
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_follow_containerds_overlay_snapshotter() {
        let (fs, work) = (Path::new("/s/3/fs"), Path::new("/s/3/work"));
        let m = mounts(Kind::Active, fs, work, &[]);
        assert_eq!(m[0].kind, "bind");
        assert_eq!(m[0].options, ["rw", "rbind"]);
        let lowers = [PathBuf::from("/s/2/fs"), PathBuf::from("/s/1/fs")];
        let m = mounts(Kind::Active, fs, work, &lowers);
        assert_eq!(m[0].kind, "overlay");
        assert!(m[0].options.contains(&"upperdir=/s/3/fs".to_string()));
        assert!(m[0].options.contains(&"workdir=/s/3/work".to_string()));
        assert!(m[0]
            .options
            .contains(&"lowerdir=/s/2/fs:/s/1/fs".to_string()));
        let m = mounts(Kind::View, fs, work, &lowers[..1]);
        assert_eq!(
            (m[0].kind.as_str(), m[0].source.as_str()),
            ("bind", "/s/2/fs")
        );
        assert_eq!(m[0].options, ["ro", "rbind"]);
        let m = mounts(Kind::View, fs, work, &lowers);
        assert_eq!(m[0].options, ["lowerdir=/s/2/fs:/s/1/fs"]);
    }

    #[test]
    fn usage_counts_blocks_and_inodes_once_per_hard_link() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), vec![1u8; 100_000]).unwrap();
        std::fs::hard_link(dir.path().join("a"), dir.path().join("b")).unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        let u = usage(dir.path()).unwrap();
        assert_eq!(u.inodes, 3);
        assert!(u.size >= 100_000, "{u:?}");
        assert!(u.size < 200_000, "{u:?}");
    }
}
