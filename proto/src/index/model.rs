//! The format-independent layer index.

use crate::blob::BlobError;
use crate::digest::{Digest, DigestError};
use serde::{Deserialize, Serialize};

/// Errors from building, loading or using a layer index.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// Reading the blob failed.
    #[error(transparent)]
    Blob(#[from] BlobError),
    /// A TOC, chunk or blob did not match its digest.
    #[error(transparent)]
    Digest(#[from] DigestError),
    /// The layer's bytes do not follow its format.
    #[error("malformed {format} layer {blob}: {reason}")]
    Malformed {
        /// The format being parsed ("estargz", "tar+gzip", …).
        format: &'static str,
        /// The layer blob.
        blob: Digest,
        /// What was wrong, with the offending value.
        reason: String,
    },
    /// An entry's path is absolute or climbs out of the root with `..`.
    #[error("entry path {path:?} in layer {blob} escapes the root")]
    UnsafePath {
        /// The layer blob.
        blob: Digest,
        /// The path as found in the layer.
        path: String,
    },
    /// A chunk could not be decompressed.
    #[error("decoding chunk at blob offset {offset} of layer {blob}: {reason}")]
    Decode {
        /// The layer blob.
        blob: Digest,
        /// The chunk's offset in the blob.
        offset: u64,
        /// What the decoder said.
        reason: String,
    },
    /// Reading or writing the local index store failed.
    #[error("index store file {path}: {source}")]
    Store {
        /// The file or directory concerned.
        path: std::path::PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The layer's media type is not one Skiff can index.
    #[error("layer {blob} has media type {media_type:?}, which Skiff cannot index")]
    UnsupportedMediaType {
        /// The layer blob.
        blob: Digest,
        /// The descriptor's media type.
        media_type: String,
    },
    /// The blob handed in is not the one the descriptor names.
    #[error("descriptor names layer {expected} but the blob reader reads {actual}")]
    WrongBlob {
        /// The descriptor's digest.
        expected: String,
        /// The reader's digest.
        actual: Digest,
    },
    /// A stored index could not be encoded or decoded.
    #[error("stored index {what}: {reason}")]
    Encoding {
        /// The index file or layer concerned.
        what: String,
        /// The serializer's message.
        reason: String,
    },
}

/// How a layer blob is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LayerFormat {
    /// Uncompressed tar: file bytes are stored raw at known offsets.
    Tar,
    /// One gzip stream over a tar; random reads resume from [`Checkpoint`]s.
    TarGzip,
    /// zstd over a tar without a TOC.
    TarZstd,
    /// eStargz: a gzip member per file chunk plus `stargz.index.json`.
    Estargz,
    /// containers/storage zstd:chunked: a zstd frame per file chunk plus a TOC.
    ZstdChunked,
}

/// The type of an index entry. `Whiteout` and `Opaque` are OCI markers already
/// decoded from `.wh.NAME` and `.wh..wh..opq`; they are never shown as files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EntryKind {
    /// A directory.
    Dir,
    /// A regular file; its bytes are described by chunks.
    Reg,
    /// A symbolic link; the target is in [`Entry::link`].
    Symlink,
    /// A hard link to the entry whose path is in [`Entry::link`].
    Hardlink,
    /// A character device.
    Char,
    /// A block device.
    Block,
    /// A named pipe.
    Fifo,
    /// `.wh.NAME`: deletes `path` from the layers below.
    Whiteout,
    /// `.wh..wh..opq`: the directory at `path` hides everything below it.
    Opaque,
}

/// One file, directory or marker in a layer.
///
/// Kept small, since a layer of 100,000 files holds 100,000 of them for as long as its
/// image is in memory: what few entries have (a link target, device numbers,
/// extended attributes) lives out of line in [`EntryExtra`], reached through
/// [`Entry::link`], [`Entry::dev`] and [`Entry::xattrs`] (80 bytes instead of 128).
/// The serialized form is the same as when they were fields.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(from = "EntryWire")]
pub struct Entry {
    /// Path relative to the layer root, cleaned by [`clean_path`]: no leading `/` or
    /// `./`, no `.`/`..` components, no trailing `/`. The root itself is `""`.
    pub path: String,
    /// What the entry is.
    pub kind: EntryKind,
    /// Permission and special bits (`0o7777`), without the file-type bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// Sub-second part of the modification time.
    pub mtime_nsec: u32,
    /// Uncompressed size for regular files, 0 otherwise.
    pub size: u64,
    /// Index of this file's first chunk in [`LayerIndex::chunks`].
    pub first_chunk: u32,
    /// Number of chunks; their file offsets cover `0..size` in order.
    pub chunk_count: u32,
    /// The rare parts; `None` when all of them are empty (kept so by every setter,
    /// so that equal entries compare equal).
    extra: Option<Box<EntryExtra>>,
}

/// The parts of an [`Entry`] that most entries lack.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct EntryExtra {
    link: String,
    dev_major: u32,
    dev_minor: u32,
    xattrs: Vec<(String, Vec<u8>)>,
}

impl EntryExtra {
    fn is_empty(&self) -> bool {
        self.link.is_empty() && self.dev_major == 0 && self.dev_minor == 0 && self.xattrs.is_empty()
    }
}

impl Entry {
    /// A bare entry with zeroed metadata, for builders to fill in.
    pub const fn new(path: String, kind: EntryKind) -> Entry {
        Entry {
            path,
            kind,
            mode: 0,
            uid: 0,
            gid: 0,
            mtime: 0,
            mtime_nsec: 0,
            size: 0,
            first_chunk: 0,
            chunk_count: 0,
            extra: None,
        }
    }

    /// Symlink target (as stored), or the cleaned path of a hard link's target; empty
    /// for anything else.
    pub fn link(&self) -> &str {
        self.extra.as_deref().map_or("", |x| x.link.as_str())
    }

    /// Device (major, minor) numbers of char and block devices; (0, 0) otherwise.
    pub fn dev(&self) -> (u32, u32) {
        self.extra
            .as_deref()
            .map_or((0, 0), |x| (x.dev_major, x.dev_minor))
    }

    /// Extended attributes, in the order found.
    pub fn xattrs(&self) -> &[(String, Vec<u8>)] {
        self.extra.as_deref().map_or(&[], |x| x.xattrs.as_slice())
    }

    /// Sets the link target (see [`Entry::link`]).
    pub fn set_link(&mut self, link: String) {
        self.change_extra(|x| x.link = link);
    }

    /// Sets the device numbers (see [`Entry::dev`]).
    pub fn set_dev(&mut self, major: u32, minor: u32) {
        self.change_extra(|x| (x.dev_major, x.dev_minor) = (major, minor));
    }

    /// Adds an extended attribute after the others.
    pub fn push_xattr(&mut self, name: String, value: Vec<u8>) {
        self.change_extra(|x| x.xattrs.push((name, value)));
    }

    /// Keeps only the extended attributes `keep` accepts, in order.
    pub fn retain_xattrs(&mut self, keep: impl FnMut(&(String, Vec<u8>)) -> bool) {
        self.change_extra(|x| x.xattrs.retain(keep));
    }

    /// Heap bytes the entry owns besides its path.
    fn extra_size(&self) -> usize {
        use std::mem::size_of;
        self.extra.as_deref().map_or(0, |x| {
            size_of::<EntryExtra>()
                + x.link.capacity()
                + x.xattrs.capacity() * size_of::<(String, Vec<u8>)>()
                + x.xattrs
                    .iter()
                    .map(|(k, v)| k.capacity() + v.capacity())
                    .sum::<usize>()
        })
    }

    /// Applies `change` to the extra parts, dropping them when they end up empty.
    fn change_extra(&mut self, change: impl FnOnce(&mut EntryExtra)) {
        let mut extra = self.extra.take().unwrap_or_default();
        change(&mut extra);
        if !extra.is_empty() {
            extra.link.shrink_to_fit();
            extra.xattrs.shrink_to_fit();
            self.extra = Some(extra);
        }
    }
}

/// [`Entry`] as serialized: every part inline, in the order the fields had before
/// the rare ones moved out of line (stored and published indexes keep decoding).
#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
#[serde(rename = "Entry")]
struct EntryWire {
    path: String,
    kind: EntryKind,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    mtime_nsec: u32,
    size: u64,
    link: String,
    dev_major: u32,
    dev_minor: u32,
    xattrs: Vec<(String, Vec<u8>)>,
    first_chunk: u32,
    chunk_count: u32,
}

impl From<EntryWire> for Entry {
    fn from(w: EntryWire) -> Entry {
        let extra = EntryExtra {
            link: w.link,
            dev_major: w.dev_major,
            dev_minor: w.dev_minor,
            xattrs: w.xattrs,
        };
        Entry {
            path: w.path,
            kind: w.kind,
            mode: w.mode,
            uid: w.uid,
            gid: w.gid,
            mtime: w.mtime,
            mtime_nsec: w.mtime_nsec,
            size: w.size,
            first_chunk: w.first_chunk,
            chunk_count: w.chunk_count,
            extra: (!extra.is_empty()).then(|| Box::new(extra)),
        }
    }
}

impl Serialize for Entry {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let (dev_major, dev_minor) = self.dev();
        let mut st = s.serialize_struct("Entry", 14)?;
        st.serialize_field("path", &self.path)?;
        st.serialize_field("kind", &self.kind)?;
        st.serialize_field("mode", &self.mode)?;
        st.serialize_field("uid", &self.uid)?;
        st.serialize_field("gid", &self.gid)?;
        st.serialize_field("mtime", &self.mtime)?;
        st.serialize_field("mtime_nsec", &self.mtime_nsec)?;
        st.serialize_field("size", &self.size)?;
        st.serialize_field("link", self.link())?;
        st.serialize_field("dev_major", &dev_major)?;
        st.serialize_field("dev_minor", &dev_minor)?;
        st.serialize_field("xattrs", self.xattrs())?;
        st.serialize_field("first_chunk", &self.first_chunk)?;
        st.serialize_field("chunk_count", &self.chunk_count)?;
        st.end()
    }
}

/// How a chunk's bytes are stored in the blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChunkEncoding {
    /// Stored as-is: the chunk is exactly `blob_offset..blob_offset+blob_len`.
    Raw,
    /// A gzip member starts at `blob_offset`; after inflating, drop `skip` bytes
    /// (eStargz `innerOffset`) and keep `len`.
    Gzip {
        /// Uncompressed bytes to drop before the chunk starts.
        skip: u64,
    },
    /// A zstd frame starts at `blob_offset`; after decoding drop `skip` bytes.
    Zstd {
        /// Uncompressed bytes to drop before the chunk starts.
        skip: u64,
    },
    /// Resume the layer's deflate stream at checkpoint `checkpoint` (whose data starts
    /// at `blob_offset`), inflate, drop `skip` bytes and keep `len`.
    Checkpoint {
        /// Index into [`LayerIndex::checkpoints`].
        checkpoint: u32,
        /// Uncompressed bytes between the checkpoint and the chunk.
        skip: u64,
    },
    /// A hole (zstd:chunked `chunkType: "zeros"`): `len` zero bytes, nothing to fetch
    /// (`blob_len` is 0).
    Zeros,
}

/// A piece of a regular file and where to find it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chunk {
    /// First blob byte to fetch.
    pub blob_offset: u64,
    /// How many blob bytes to fetch (enough to decode the whole chunk).
    pub blob_len: u64,
    /// Where the chunk starts within the file.
    pub file_offset: u64,
    /// Uncompressed length of the chunk.
    pub len: u64,
    /// sha256 of the chunk's uncompressed bytes: nothing is served until it matches.
    pub digest: Digest,
    /// How to turn the fetched bytes into the chunk.
    pub encoding: ChunkEncoding,
}

/// A point in a gzip layer's deflate stream from which inflation can resume (zran).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Offset in the blob of the first whole compressed byte after the checkpoint.
    pub blob_offset: u64,
    /// Bits (0–7) of the byte just before `blob_offset` that still belong to the
    /// stream after the checkpoint (zlib `inflatePrime`).
    pub bits: u8,
    /// Offset in the uncompressed tar stream.
    pub stream_offset: u64,
    /// The up-to-32 KiB of uncompressed output that precedes the checkpoint.
    pub window: Vec<u8>,
}

/// Everything needed to list a layer and read any file of it lazily.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerIndex {
    /// The layer blob (compressed) digest.
    pub blob: Digest,
    /// The layer blob's size.
    pub blob_size: u64,
    /// How the blob is laid out.
    pub format: LayerFormat,
    /// Entries in layer order (as in the tar).
    pub entries: Vec<Entry>,
    /// All regular files' chunks; each entry owns a contiguous run.
    pub chunks: Vec<Chunk>,
    /// Resume points for [`ChunkEncoding::Checkpoint`] chunks.
    pub checkpoints: Vec<Checkpoint>,
    /// Indexes into `entries` of the files the producer marked for prefetch
    /// (eStargz entries before `.prefetch.landmark`), in blob order.
    pub prefetch: Vec<u32>,
}

impl LayerIndex {
    /// The chunks of `entry` (empty for anything but a regular file).
    pub fn chunks_of(&self, entry: &Entry) -> &[Chunk] {
        let start = entry.first_chunk as usize;
        let end = start.saturating_add(entry.chunk_count as usize);
        self.chunks.get(start..end).unwrap_or(&[])
    }

    /// The most blob bytes any single chunk read fetches. Large values mean the layer
    /// has no real random access (a single-frame tar+zstd): fetch it whole instead.
    pub fn max_chunk_fetch(&self) -> u64 {
        self.chunks.iter().map(|c| c.blob_len).max().unwrap_or(0)
    }

    /// Approximate bytes of memory the index occupies (structs plus heap data), to
    /// size caches and to check the index stays compact.
    pub fn memory_size(&self) -> usize {
        use std::mem::size_of;
        let entries: usize = self
            .entries
            .iter()
            .map(|e| size_of::<Entry>() + e.path.capacity() + e.extra_size())
            .sum();
        let checkpoints: usize = self
            .checkpoints
            .iter()
            .map(|c| size_of::<Checkpoint>() + c.window.capacity())
            .sum();
        size_of::<LayerIndex>()
            + entries
            + self.chunks.capacity() * size_of::<Chunk>()
            + checkpoints
            + self.prefetch.capacity() * 4
    }

    /// Gives back the spare capacity of the tables. A decoded or freshly built index
    /// grew them by doubling: for a 100,000-file layer that is several MB held for as
    /// long as the image is in memory.
    pub fn shrink_to_fit(&mut self) {
        self.entries.shrink_to_fit();
        self.chunks.shrink_to_fit();
        self.checkpoints.shrink_to_fit();
        self.prefetch.shrink_to_fit();
    }

    /// Serializes the index for the local store.
    pub fn to_bytes(&self) -> Result<Vec<u8>, IndexError> {
        postcard::to_stdvec(self).map_err(|e| IndexError::Encoding {
            what: self.blob.to_string(),
            reason: e.to_string(),
        })
    }

    /// Loads an index written by [`LayerIndex::to_bytes`] and checks it with
    /// [`LayerIndex::validate`]: the bytes may come from a registry.
    pub fn from_bytes(what: &str, bytes: &[u8]) -> Result<LayerIndex, IndexError> {
        let mut index: LayerIndex =
            postcard::from_bytes(bytes).map_err(|e| IndexError::Encoding {
                what: what.to_string(),
                reason: e.to_string(),
            })?;
        index.validate(what)?;
        index.shrink_to_fit();
        Ok(index)
    }
}

/// Cleans a path found in a layer: strips leading `/` and `./`, drops `.` and empty
/// components and a trailing `/`. Returns `None` if any component is `..`, since a
/// layer must never name anything outside its root.
pub fn clean_path(raw: &str) -> Option<String> {
    let mut out = String::with_capacity(raw.len());
    for part in raw.split('/') {
        match part {
            "" | "." => continue,
            ".." => return None,
            p => {
                if !out.is_empty() {
                    out.push('/');
                }
                out.push_str(p);
            }
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_path_normalizes_and_refuses_escapes() {
        assert_eq!(clean_path("./usr/bin/"), Some("usr/bin".into()));
        assert_eq!(clean_path("/etc//passwd"), Some("etc/passwd".into()));
        assert_eq!(clean_path("./"), Some(String::new()));
        assert_eq!(clean_path("a/./b"), Some("a/b".into()));
        assert_eq!(clean_path("../etc/passwd"), None);
        assert_eq!(clean_path("a/../../b"), None);
    }

    #[test]
    fn an_entry_serializes_as_when_every_part_was_inline() {
        let mut e = Entry::new("dev/sda".into(), EntryKind::Block);
        (e.mode, e.uid, e.gid, e.mtime, e.mtime_nsec) = (0o660, 1, 6, -5, 7);
        e.set_dev(8, 1);
        e.set_link("x".into());
        e.push_xattr("user.a".into(), b"1".to_vec());
        e.push_xattr("user.b".into(), vec![]);
        let wire = EntryWire {
            path: "dev/sda".into(),
            kind: EntryKind::Block,
            mode: 0o660,
            uid: 1,
            gid: 6,
            mtime: -5,
            mtime_nsec: 7,
            size: 0,
            link: "x".into(),
            dev_major: 8,
            dev_minor: 1,
            xattrs: vec![("user.a".into(), b"1".to_vec()), ("user.b".into(), vec![])],
            first_chunk: 0,
            chunk_count: 0,
        };
        let bytes = postcard::to_stdvec(&e).unwrap();
        assert_eq!(bytes, postcard::to_stdvec(&wire).unwrap());
        assert_eq!(postcard::from_bytes::<Entry>(&bytes).unwrap(), e);
        assert_eq!(
            serde_json::to_value(&e).unwrap(),
            serde_json::to_value(&wire).unwrap()
        );
        // Emptied rare parts compare equal to never-set ones.
        let mut plain = Entry::new("f".into(), EntryKind::Reg);
        let mut emptied = plain.clone();
        emptied.set_link("t".into());
        emptied.set_link(String::new());
        emptied.push_xattr("user.a".into(), vec![]);
        emptied.retain_xattrs(|_| false);
        assert_eq!(emptied, plain);
        assert_eq!(
            (plain.link(), plain.dev(), plain.xattrs()),
            ("", (0, 0), &[][..])
        );
        plain.set_dev(0, 0);
        let back: Entry = postcard::from_bytes(&postcard::to_stdvec(&plain).unwrap()).unwrap();
        assert_eq!(back, plain);
        assert!(
            std::mem::size_of::<Entry>() <= 80,
            "{}",
            std::mem::size_of::<Entry>()
        );
    }

    #[test]
    fn index_round_trips_through_bytes() {
        let mut e = Entry::new("bin/sh".into(), EntryKind::Reg);
        e.size = 3;
        e.chunk_count = 1;
        e.push_xattr("user.k".into(), b"v".to_vec());
        let idx = LayerIndex {
            blob: Digest::of(b"blob"),
            blob_size: 1024,
            format: LayerFormat::Tar,
            entries: vec![e.clone()],
            chunks: vec![Chunk {
                blob_offset: 512,
                blob_len: 3,
                file_offset: 0,
                len: 3,
                digest: Digest::of(b"abc"),
                encoding: ChunkEncoding::Raw,
            }],
            checkpoints: vec![],
            prefetch: vec![],
        };
        let back = LayerIndex::from_bytes("test", &idx.to_bytes().unwrap()).unwrap();
        assert_eq!(back, idx);
        assert_eq!(back.chunks_of(&e).len(), 1);
    }
}
