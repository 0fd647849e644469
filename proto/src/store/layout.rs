//! Every path under the skiff root, named once.
//!
//! ```text
//! <root>/blobs/sha256/<hex>             manifests, configs, layers (the Store)
//! <root>/images/<hex of name>.json      one image record per pulled reference
//! <root>/tmp/                           partial downloads (same filesystem, for rename)
//! <root>/indexes/                       the lazy-read index store, by layer digest
//! <root>/cache/                         the filesystem's chunk cache
//! <root>/profiles/<manifest hex>.json   local prefetch profiles, by manifest digest
//! <root>/mounts/<mount point>.json      counters of a `skiff mount`, '/' → '_'
//! <root>/containers/<id>/               one container: see [`ContainerPaths`]
//! <root>/seccomp/<key hex>.bpf          compiled seccomp filters, by what they compile
//! <root>/daemon.sock                    the socket `skiff daemon` listens on
//! ```
//!
//! The type lives beside the [`Store`](super::Store) rather than in the launcher because
//! the store itself (and the index store) must use these names and this crate cannot
//! see the launcher; every other user of the root sits above this crate.

use crate::digest::Digest;
use std::path::{Path, PathBuf};

/// The layout of one skiff root. Pure path arithmetic: nothing is created or checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RootLayout {
    root: PathBuf,
}

impl RootLayout {
    /// The layout under `root`.
    pub fn new(root: impl Into<PathBuf>) -> RootLayout {
        RootLayout { root: root.into() }
    }

    /// The root directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory of content-addressed blobs.
    pub fn blobs(&self) -> PathBuf {
        self.root.join("blobs").join("sha256")
    }

    /// Where blob `digest` lives (whether or not it is there).
    pub fn blob(&self, digest: &Digest) -> PathBuf {
        self.blobs().join(digest.hex())
    }

    /// The directory of image records.
    pub fn images(&self) -> PathBuf {
        self.root.join("images")
    }

    /// The record file of the normalized reference `reference`.
    pub fn image_record(&self, reference: &str) -> PathBuf {
        self.images()
            .join(format!("{}.json", Digest::of(reference.as_bytes()).hex()))
    }

    /// Temporary files, on the same filesystem as the blobs so a rename commits them.
    pub fn tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// The index store (lazy-read indexes by layer digest).
    pub fn indexes(&self) -> PathBuf {
        self.root.join("indexes")
    }

    /// The chunk cache of lazily read layers.
    pub fn cache(&self) -> PathBuf {
        self.root.join("cache")
    }

    /// The directory of local prefetch profiles.
    pub fn profiles(&self) -> PathBuf {
        self.root.join("profiles")
    }

    /// The local prefetch profile of the image with manifest `manifest`.
    pub fn profile(&self, manifest: &Digest) -> PathBuf {
        self.profiles().join(format!("{}.json", manifest.hex()))
    }

    /// The directory of `skiff mount` counters.
    pub fn mounts(&self) -> PathBuf {
        self.root.join("mounts")
    }

    /// Where the counters of the mount on `mountpoint` are written while it is
    /// mounted. Give the canonical path: the file is named after it, with every `/`
    /// turned into `_`.
    pub fn mount_stats(&self, mountpoint: &Path) -> PathBuf {
        let name: String = mountpoint
            .to_string_lossy()
            .chars()
            .map(|c| if c == '/' { '_' } else { c })
            .collect();
        self.mounts().join(format!("{name}.json"))
    }

    /// The directories only skiff (root) may enter: everything that holds image
    /// content, container trees, logs or counters. [`super::secure_root`] keeps them
    /// at [`super::PRIVATE_DIR_MODE`].
    pub fn private_dirs(&self) -> [PathBuf; 6] {
        [
            self.containers(),
            self.cache(),
            self.indexes(),
            self.profiles(),
            self.tmp(),
            self.mounts(),
        ]
    }

    /// The directory holding every container's directory.
    pub fn containers(&self) -> PathBuf {
        self.root.join("containers")
    }

    /// The cache of compiled seccomp filters (the launcher's `seccomp_cache`), private
    /// to root: a filter read from it is the one containers run under.
    pub fn seccomp_cache(&self) -> PathBuf {
        self.root.join("seccomp")
    }

    /// The unix socket a `skiff daemon` serving this root listens on (the CLI uses the
    /// daemon when a connection to it succeeds).
    pub fn daemon_socket(&self) -> PathBuf {
        self.root.join("daemon.sock")
    }

    /// The paths of container `id`.
    pub fn container(&self, id: &str) -> ContainerPaths {
        ContainerPaths::in_dir(self.containers().join(id))
    }
}

/// The files of one container, all in its own directory:
///
/// ```text
/// <dir>/state.json     what ps, logs, stop and rm know about it
/// <dir>/container.log  the output of a detached container
/// <dir>/etc/           the generated resolv.conf, hostname and hosts (bind-mounted in)
/// <dir>/rootfs/        the mount point of an image's lazy view
/// <dir>/upper/         the copy-on-write upper directory of that view
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerPaths {
    dir: PathBuf,
}

impl ContainerPaths {
    /// The layout of a container directory at `dir` (for a runtime handed only its
    /// state directory).
    pub fn in_dir(dir: impl Into<PathBuf>) -> ContainerPaths {
        ContainerPaths { dir: dir.into() }
    }

    /// The container's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The state file.
    pub fn state_file(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    /// The log file of a detached container.
    pub fn log_file(&self) -> PathBuf {
        self.dir.join("container.log")
    }

    /// The directory of generated `/etc` files.
    pub fn etc(&self) -> PathBuf {
        self.dir.join("etc")
    }

    /// The mount point of the container's root filesystem (for `run IMAGE`).
    pub fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }

    /// The copy-on-write upper directory of the root filesystem (for `run IMAGE`).
    pub fn upper(&self) -> PathBuf {
        self.dir.join("upper")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_directories_are_named_once() {
        let l = RootLayout::new("/r");
        assert_eq!(l.root(), Path::new("/r"));
        assert_eq!(l.blobs(), Path::new("/r/blobs/sha256"));
        assert_eq!(l.images(), Path::new("/r/images"));
        assert_eq!(l.tmp(), Path::new("/r/tmp"));
        assert_eq!(l.indexes(), Path::new("/r/indexes"));
        assert_eq!(l.cache(), Path::new("/r/cache"));
        assert_eq!(l.profiles(), Path::new("/r/profiles"));
        assert_eq!(l.mounts(), Path::new("/r/mounts"));
        assert_eq!(l.containers(), Path::new("/r/containers"));
        assert_eq!(l.daemon_socket(), Path::new("/r/daemon.sock"));
        assert_eq!(
            l.private_dirs().map(|p| p.to_string_lossy().into_owned()),
            [
                "/r/containers",
                "/r/cache",
                "/r/indexes",
                "/r/profiles",
                "/r/tmp",
                "/r/mounts"
            ]
        );
    }

    #[test]
    fn files_are_named_after_their_keys() {
        let l = RootLayout::new("/r");
        let d = Digest::of(b"hello");
        let hex = d.hex();
        assert_eq!(l.blob(&d), PathBuf::from(format!("/r/blobs/sha256/{hex}")));
        assert_eq!(
            l.profile(&d),
            PathBuf::from(format!("/r/profiles/{hex}.json"))
        );
        // Image records are named after the digest of the reference's text.
        let name = Digest::of(b"localhost:5000/a:b").hex();
        assert_eq!(
            l.image_record("localhost:5000/a:b"),
            PathBuf::from(format!("/r/images/{name}.json"))
        );
        assert_eq!(
            l.mount_stats(Path::new("/mnt/my view")),
            Path::new("/r/mounts/_mnt_my view.json")
        );
    }

    #[test]
    fn container_files_live_in_its_directory() {
        let c = RootLayout::new("/r").container("abc");
        assert_eq!(c.dir(), Path::new("/r/containers/abc"));
        assert_eq!(c.state_file(), Path::new("/r/containers/abc/state.json"));
        assert_eq!(c.log_file(), Path::new("/r/containers/abc/container.log"));
        assert_eq!(c.etc(), Path::new("/r/containers/abc/etc"));
        assert_eq!(c.rootfs(), Path::new("/r/containers/abc/rootfs"));
        assert_eq!(c.upper(), Path::new("/r/containers/abc/upper"));
        assert_eq!(ContainerPaths::in_dir("/s").etc(), Path::new("/s/etc"));
    }
}
