//! The local index store: one file per layer, keyed by the layer blob's digest, so a
//! mount never rebuilds an index it already has.
//!
//! File layout: `SKIFFIDX`, a little-endian u32 format version, the sha256 of the
//! payload, then the payload: the postcard-encoded [`LayerIndex`], zstd-compressed
//! (paths and checkpoint windows compress well). A file with another version is
//! treated as absent (rebuilt); one whose payload does not match its digest, or that
//! describes another blob, is an error. Writes go to a temporary file in the same
//! directory that is synced and renamed into place, so readers see all or nothing.

use super::model::{IndexError, LayerIndex};
use crate::digest::Digest;
use std::io::Write;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"SKIFFIDX";
/// Bumped whenever [`LayerIndex`]'s encoding changes.
pub const FORMAT_VERSION: u32 = 1;
/// Largest decoded index accepted (the input may come from a registry).
pub const MAX_DECODED: u64 = 1 << 30;
const HEADER_LEN: usize = 8 + 4 + 32;

/// Encodes an index in the store's file format (also the blob pushed as an index
/// artifact layer).
pub fn encode(index: &LayerIndex) -> Result<Vec<u8>, IndexError> {
    let payload =
        zstd::encode_all(&index.to_bytes()?[..], 3).map_err(|e| IndexError::Encoding {
            what: index.blob.to_string(),
            reason: format!("compressing: {e}"),
        })?;
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(Digest::of(&payload).as_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

/// Decodes [`encode`]'s output. `Ok(None)` for another format version.
pub fn decode(what: &str, bytes: &[u8]) -> Result<Option<LayerIndex>, IndexError> {
    let bad = |reason: String| IndexError::Encoding {
        what: what.to_string(),
        reason,
    };
    if bytes.len() < HEADER_LEN || &bytes[..8] != MAGIC {
        return Err(bad("not a Skiff index file".into()));
    }
    let version = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    if version != FORMAT_VERSION {
        return Ok(None);
    }
    let mut sum = [0u8; 32];
    sum.copy_from_slice(&bytes[12..44]);
    let payload = &bytes[HEADER_LEN..];
    Digest::from_bytes(sum).verify(what, payload)?;
    let mut raw = Vec::new();
    zstd::stream::read::Decoder::new(payload)
        .and_then(|d| {
            std::io::Read::read_to_end(&mut std::io::Read::take(d, MAX_DECODED + 1), &mut raw)
        })
        .map_err(|e| bad(format!("decompressing: {e}")))?;
    if raw.len() as u64 > MAX_DECODED {
        return Err(bad(format!("decodes to more than {MAX_DECODED} bytes")));
    }
    LayerIndex::from_bytes(what, &raw).map(Some)
}

/// Loads the index stored at `path`, which must describe `blob`.
fn load_at(path: &Path, blob: &Digest) -> Result<Option<LayerIndex>, IndexError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(IndexError::Store {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let what = path.display().to_string();
    let index = decode(&what, &bytes)?;
    if let Some(idx) = &index {
        if idx.blob != *blob {
            return Err(IndexError::Encoding {
                what,
                reason: format!("holds the index of {}, not {blob}", idx.blob),
            });
        }
    }
    Ok(index)
}

/// Writes `index` to `path` atomically (a temporary file beside it, synced, renamed).
fn save_at(path: &Path, index: &LayerIndex) -> Result<PathBuf, IndexError> {
    let bytes = encode(index)?;
    let io_err = |source| IndexError::Store {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io_err)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io_err)?;
    tmp.write_all(&bytes).map_err(io_err)?;
    tmp.as_file().sync_all().map_err(io_err)?;
    tmp.persist(path).map_err(|e| io_err(e.error))?;
    Ok(path.to_path_buf())
}

/// Where the refusal of the published index stored at `path` is recorded.
fn refusal_path(path: &Path) -> PathBuf {
    path.with_extension("refused")
}

/// Who vouches for a published index: the key it is stored (and refused) under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Publisher {
    /// Found as a referrer (or through the fallback tag) of an image in this
    /// repository.
    Repository(String),
    /// Bound in an image index by the digest of its artifact manifest (`skiff index
    /// --bind`), so covered by a signature over that image index.
    Bound(Digest),
}

impl std::fmt::Display for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Publisher::Repository(repo) => write!(f, "repository {repo}"),
            Publisher::Bound(artifact) => write!(f, "bound artifact {artifact}"),
        }
    }
}

/// A directory of stored indexes.
#[derive(Debug, Clone)]
pub struct IndexStore {
    dir: PathBuf,
}

impl IndexStore {
    /// Opens (creating if needed) the store in `dir`.
    pub fn open(dir: impl AsRef<Path>) -> Result<IndexStore, IndexError> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|source| IndexError::Store {
            path: dir.clone(),
            source,
        })?;
        Ok(IndexStore { dir })
    }

    /// Where the index of `blob` lives, when it was derived from the layer itself (its
    /// TOC, or a streaming pass over it).
    pub fn path_for(&self, blob: &Digest) -> PathBuf {
        self.dir.join(format!("sha256-{}.idx", blob.hex()))
    }

    /// Where an index of `blob` published by `publisher` lives. Published indexes are
    /// kept apart per publisher: anyone who can push to some repository can publish an
    /// index for a popular base layer, and it must not decide what another
    /// repository's images show; and an image index that binds an index artifact
    /// (`skiff index --bind`) gets exactly that artifact's index, whatever else the
    /// repository published for the layer.
    pub fn published_path_for(&self, blob: &Digest, publisher: &Publisher) -> PathBuf {
        let dir = match publisher {
            Publisher::Repository(repo) => self
                .dir
                .join("published")
                .join(Digest::of(repo.as_bytes()).hex()),
            Publisher::Bound(artifact) => self
                .dir
                .join("published")
                .join("bound")
                .join(artifact.hex()),
        };
        dir.join(format!("sha256-{}.idx", blob.hex()))
    }

    /// Loads the index of `blob` derived from the layer, or `None` if none is stored
    /// (or it has an older format).
    pub fn load(&self, blob: &Digest) -> Result<Option<LayerIndex>, IndexError> {
        load_at(&self.path_for(blob), blob)
    }

    /// Loads the index of `blob` published by `publisher`, if one was stored (and none
    /// it published was refused; see [`IndexStore::refuse_published`]).
    pub fn load_published(
        &self,
        blob: &Digest,
        publisher: &Publisher,
    ) -> Result<Option<LayerIndex>, IndexError> {
        if self.published_refusal(blob, publisher).is_some() {
            return Ok(None);
        }
        load_at(&self.published_path_for(blob, publisher), blob)
    }

    /// Records that an index of `blob` published by `publisher` lied about the layer
    /// (`reason`), and drops the stored copy: no index it publishes for this layer is
    /// used again. The record stays for the user to read (and delete).
    pub fn refuse_published(
        &self,
        blob: &Digest,
        publisher: &Publisher,
        reason: &str,
    ) -> Result<(), IndexError> {
        let path = self.published_path_for(blob, publisher);
        let marker = refusal_path(&path);
        let io_err = |source| IndexError::Store {
            path: marker.clone(),
            source,
        };
        if let Some(dir) = marker.parent() {
            std::fs::create_dir_all(dir).map_err(io_err)?;
        }
        std::fs::write(&marker, format!("{reason}\n")).map_err(io_err)?;
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(IndexError::Store { path, source }),
        }
    }

    /// Why indexes of `blob` published by `publisher` are refused, if they are.
    pub fn published_refusal(&self, blob: &Digest, publisher: &Publisher) -> Option<String> {
        let marker = refusal_path(&self.published_path_for(blob, publisher));
        std::fs::read_to_string(marker)
            .ok()
            .map(|s| s.trim_end().to_string())
    }

    /// Stores `index`, derived from the layer, atomically under its blob digest.
    pub fn save(&self, index: &LayerIndex) -> Result<PathBuf, IndexError> {
        save_at(&self.path_for(&index.blob), index)
    }

    /// Stores `index`, published by `publisher`, apart from the indexes derived from
    /// layers and from other publishers' (see [`IndexStore::published_path_for`]).
    pub fn save_published(
        &self,
        index: &LayerIndex,
        publisher: &Publisher,
    ) -> Result<PathBuf, IndexError> {
        save_at(&self.published_path_for(&index.blob, publisher), index)
    }

    /// The stored index of `blob`, building and storing it with `build` if absent.
    pub fn get_or_build(
        &self,
        blob: &Digest,
        build: impl FnOnce() -> Result<LayerIndex, IndexError>,
    ) -> Result<LayerIndex, IndexError> {
        if let Some(idx) = self.load(blob)? {
            return Ok(idx);
        }
        let idx = build()?;
        self.save(&idx)?;
        Ok(idx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::model::LayerFormat;

    fn sample() -> LayerIndex {
        LayerIndex {
            blob: Digest::of(b"layer"),
            blob_size: 5,
            format: LayerFormat::TarGzip,
            entries: vec![],
            chunks: vec![],
            checkpoints: vec![],
            prefetch: vec![],
        }
    }

    #[test]
    fn saves_loads_and_refuses_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let store = IndexStore::open(dir.path()).unwrap();
        let idx = sample();
        assert!(store.load(&idx.blob).unwrap().is_none());
        let path = store.save(&idx).unwrap();
        assert_eq!(store.load(&idx.blob).unwrap(), Some(idx.clone()));
        let mut calls = 0;
        store
            .get_or_build(&idx.blob, || {
                calls += 1;
                Ok(sample())
            })
            .unwrap();
        assert_eq!(calls, 0, "a stored index must not be rebuilt");
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            store.load(&idx.blob),
            Err(IndexError::Digest(_)) | Err(IndexError::Encoding { .. })
        ));
        // An index stored under the wrong name is refused.
        std::fs::write(store.path_for(&Digest::of(b"other")), encode(&idx).unwrap()).unwrap();
        assert!(store.load(&Digest::of(b"other")).is_err());
    }

    #[test]
    fn published_indexes_are_kept_per_publisher_and_apart_from_derived_ones() {
        let dir = tempfile::tempdir().unwrap();
        let store = IndexStore::open(dir.path()).unwrap();
        let idx = LayerIndex {
            blob: Digest::of(b"layer"),
            blob_size: 0,
            format: crate::index::LayerFormat::Tar,
            entries: vec![],
            chunks: vec![],
            checkpoints: vec![],
            prefetch: vec![],
        };
        let evil = Publisher::Repository("evil/x".into());
        let python = Publisher::Repository("library/python".into());
        let bound = Publisher::Bound(Digest::of(b"artifact manifest"));
        store.save_published(&idx, &evil).unwrap();
        assert_eq!(
            store.load_published(&idx.blob, &evil).unwrap(),
            Some(idx.clone())
        );
        assert_eq!(store.load_published(&idx.blob, &python).unwrap(), None);
        assert_eq!(store.load_published(&idx.blob, &bound).unwrap(), None);
        let mut other = idx.clone();
        other.format = crate::index::LayerFormat::TarGzip;
        store.save_published(&other, &bound).unwrap();
        assert_eq!(
            store.load_published(&idx.blob, &bound).unwrap(),
            Some(other)
        );
        assert_eq!(
            store.load_published(&idx.blob, &evil).unwrap(),
            Some(idx.clone()),
            "an index bound elsewhere does not replace a repository's"
        );
        store.refuse_published(&idx.blob, &bound, "lied").unwrap();
        assert_eq!(store.load_published(&idx.blob, &bound).unwrap(), None);
        assert!(store.load_published(&idx.blob, &evil).unwrap().is_some());
        assert_eq!(store.load(&idx.blob).unwrap(), None);
        store.save(&idx).unwrap();
        assert_eq!(store.load(&idx.blob).unwrap(), Some(idx));
    }
}
