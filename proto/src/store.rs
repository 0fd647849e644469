//! The local store under the skiff root: content-addressed blobs and image records.
//!
//! Where they live is [`RootLayout`]'s business (`blobs/sha256/<hex>`, `images/`,
//! `tmp/`). Every write goes to a temporary file in the root's tmp directory and is
//! renamed into place, so a crash never leaves a half-written blob under its digest.

mod layout;

pub use layout::{ContainerPaths, RootLayout};

mod permissions;

pub use permissions::{
    create_private_file, secure_root, write_private, PRIVATE_DIR_MODE, PRIVATE_FILE_MODE, ROOT_MODE,
};

use crate::blob::{BlobError, FileBlob};
use crate::digest::Digest;
use crate::tempfiles::{remove_stale_temps, temp_name};
use serde::{Deserialize, Serialize};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Errors from the local store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// File system access under the root failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// Content handed to the store did not match its digest.
    #[error(transparent)]
    Digest(#[from] crate::digest::DigestError),
    /// An image record did not parse.
    #[error("image record {path}: {source}")]
    Record {
        /// The record file.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
}

/// What the store remembers about one pulled reference.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImageRecord {
    /// The normalized reference (`registry/repo:tag`).
    pub reference: String,
    /// The index digest, when the reference named an index.
    #[serde(with = "crate::digest::as_text::option", default)]
    pub index_digest: Option<Digest>,
    /// The platform manifest's digest.
    #[serde(with = "crate::digest::as_text")]
    pub manifest_digest: Digest,
    /// The manifest's media type.
    pub manifest_media_type: String,
    /// The platform (`os/arch[/variant]`).
    pub platform: String,
    /// The config digest.
    #[serde(with = "crate::digest::as_text")]
    pub config_digest: Digest,
    /// Sum of the layers' compressed sizes.
    pub size: u64,
    /// Number of layers.
    pub layers: usize,
    /// Seconds since the epoch when pulled.
    pub pulled_at: u64,
    /// For an image made here (`skiff commit`, `skiff tag` into another repository):
    /// the reference whose repository serves the layers the local store does not
    /// hold. `None` for a pulled image, whose own repository has them all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
}

/// The local store rooted at one directory.
#[derive(Clone, Debug)]
pub struct Store {
    layout: RootLayout,
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Name prefix of the store's partial downloads under `tmp/`.
const PARTIAL_PREFIX: &str = "partial";

impl Store {
    /// Opens (creating if needed) the store under `root`.
    pub fn open(root: impl AsRef<Path>) -> Result<Store, StoreError> {
        let layout = RootLayout::new(root.as_ref());
        secure_root(&layout).map_err(io_err("securing", layout.root()))?;
        for p in [layout.blobs(), layout.images(), layout.tmp()] {
            std::fs::create_dir_all(&p).map_err(io_err("creating", &p))?;
        }
        // Partial downloads of processes that died (a killed pull) are leftovers;
        // a live process's are not touched.
        remove_stale_temps(&layout.tmp(), |name| name.starts_with(PARTIAL_PREFIX));
        Ok(Store { layout })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        self.layout.root()
    }

    /// Where blob `digest` lives (whether or not it is there).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.layout.blob(digest)
    }

    /// Whether the store holds blob `digest` with exactly `size` bytes.
    pub fn has_blob(&self, digest: &Digest, size: u64) -> bool {
        std::fs::metadata(self.blob_path(digest)).is_ok_and(|m| m.is_file() && m.len() == size)
    }

    /// Opens a stored blob for random access.
    pub fn open_blob(&self, digest: &Digest) -> Result<FileBlob, BlobError> {
        FileBlob::open(*digest, self.blob_path(digest))
    }

    /// Reads a stored blob whole (manifests, configs) and verifies it.
    pub fn read_blob(&self, digest: &Digest) -> Result<Vec<u8>, StoreError> {
        let p = self.blob_path(digest);
        let data = std::fs::read(&p).map_err(io_err("reading", &p))?;
        digest.verify(&format!("stored blob {}", p.display()), &data)?;
        Ok(data)
    }

    /// A fresh temporary file in the store's tmp dir (same filesystem as blobs),
    /// named after this process ([`temp_name`]) so a later open can tell a dead
    /// process's leftovers from a live one's.
    pub fn temp_file(&self) -> Result<tempfile::NamedTempFile, StoreError> {
        let dir = self.layout.tmp();
        tempfile::Builder::new()
            .prefix(&temp_name(PARTIAL_PREFIX))
            .rand_bytes(0)
            .tempfile_in(&dir)
            .map_err(io_err("creating temp file in", &dir))
    }

    /// Moves a fully written and already verified temp file into place as `digest`.
    pub fn commit_blob(
        &self,
        digest: &Digest,
        temp: tempfile::NamedTempFile,
    ) -> Result<PathBuf, StoreError> {
        let dest = self.blob_path(digest);
        temp.as_file()
            .sync_all()
            .map_err(io_err("syncing", temp.path()))?;
        temp.persist(&dest).map_err(|e| StoreError::Io {
            what: "renaming into",
            path: dest.clone(),
            source: e.error,
        })?;
        Ok(dest)
    }

    /// Stores `data` as blob `digest` after verifying it.
    pub fn write_blob(&self, digest: &Digest, data: &[u8]) -> Result<PathBuf, StoreError> {
        digest.verify("blob to store", data)?;
        if self.has_blob(digest, data.len() as u64) {
            return Ok(self.blob_path(digest));
        }
        let mut tmp = self.temp_file()?;
        tmp.write_all(data)
            .map_err(io_err("writing", self.layout.root()))?;
        self.commit_blob(digest, tmp)
    }

    /// Records (or replaces) what `record.reference` points to.
    pub fn put_image(&self, record: &ImageRecord) -> Result<(), StoreError> {
        let path = self.layout.image_record(&record.reference);
        let json = serde_json::to_vec_pretty(record).map_err(|source| StoreError::Record {
            path: path.clone(),
            source,
        })?;
        let mut tmp = self.temp_file()?;
        tmp.write_all(&json).map_err(io_err("writing", &path))?;
        tmp.persist(&path).map_err(|e| StoreError::Io {
            what: "renaming into",
            path: path.clone(),
            source: e.error,
        })?;
        Ok(())
    }

    /// Forgets what `reference` points to; false if the store had no record of it.
    /// Blobs stay (see [`Store::remove_blob`]).
    pub fn remove_image(&self, reference: &str) -> Result<bool, StoreError> {
        let path = self.layout.image_record(reference);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err("removing", &path)(e)),
        }
    }

    /// Deletes blob `digest`; false if the store did not hold it.
    pub fn remove_blob(&self, digest: &Digest) -> Result<bool, StoreError> {
        let path = self.blob_path(digest);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err("removing", &path)(e)),
        }
    }

    /// The record for `reference`, if pulled.
    pub fn image(&self, reference: &str) -> Result<Option<ImageRecord>, StoreError> {
        let path = self.layout.image_record(reference);
        match std::fs::read(&path) {
            Ok(data) => serde_json::from_slice(&data)
                .map(Some)
                .map_err(|source| StoreError::Record { path, source }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("reading", &path)(e)),
        }
    }

    /// All image records, sorted by reference.
    pub fn images(&self) -> Result<Vec<ImageRecord>, StoreError> {
        let dir = self.layout.images();
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(io_err("listing", &dir))? {
            let entry = entry.map_err(io_err("listing", &dir))?;
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "json") {
                let data = std::fs::read(&path).map_err(io_err("reading", &path))?;
                let rec = serde_json::from_slice(&data)
                    .map_err(|source| StoreError::Record { path, source })?;
                out.push(rec);
            }
        }
        out.sort_by(|a: &ImageRecord, b| a.reference.cmp(&b.reference));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_are_verified_and_records_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let d = Digest::of(b"hello");
        assert!(!store.has_blob(&d, 5));
        assert!(store.write_blob(&d, b"hellO").is_err());
        store.write_blob(&d, b"hello").unwrap();
        assert!(store.has_blob(&d, 5));
        assert_eq!(store.read_blob(&d).unwrap(), b"hello");
        let rec = ImageRecord {
            reference: "localhost:5000/a:b".into(),
            index_digest: None,
            manifest_digest: d,
            manifest_media_type: "m".into(),
            platform: "linux/amd64".into(),
            config_digest: d,
            size: 5,
            layers: 1,
            pulled_at: 0,
            base: None,
        };
        store.put_image(&rec).unwrap();
        assert_eq!(
            store.image("localhost:5000/a:b").unwrap(),
            Some(rec.clone())
        );
        assert_eq!(store.images().unwrap(), vec![rec]);
        assert!(store.remove_image("localhost:5000/a:b").unwrap());
        assert!(!store.remove_image("localhost:5000/a:b").unwrap());
        assert!(store.images().unwrap().is_empty());
        assert!(store.remove_blob(&d).unwrap());
        assert!(!store.has_blob(&d, 5));
        assert_eq!(
            std::fs::read_dir(RootLayout::new(dir.path()).tmp())
                .unwrap()
                .count(),
            0
        );
    }

    #[test]
    fn an_open_removes_partial_downloads_of_dead_processes_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mine = store.temp_file().unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let theirs = dir.path().join(format!("tmp/partial.{dead}.7"));
        std::fs::write(&theirs, b"half a blob").unwrap();
        Store::open(dir.path()).unwrap();
        assert!(!theirs.exists(), "a dead pull's partial blob is left");
        assert!(
            mine.path().exists(),
            "a live writer's partial blob was removed"
        );
    }
}
