//! Random-access reads of one layer blob, wherever it lives.
//!
//! Following nydus's split, a [`BlobReader`] only moves raw (still compressed, still
//! unverified) bytes; decoding and verification belong to [`crate::index`], caching to
//! `skiff-fs`. A blob may be a file in the local store ([`FileBlob`]) or a remote blob
//! read with HTTP Range requests (the registry module's implementation).

use crate::digest::Digest;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Errors from reading a blob's bytes.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// A read asked for bytes past the end of the blob.
    #[error(
        "read of {len} bytes at offset {offset} is past the end of blob {digest} ({size} bytes)"
    )]
    OutOfRange {
        /// The blob read.
        digest: Digest,
        /// Requested start.
        offset: u64,
        /// Requested length.
        len: u64,
        /// The blob's size.
        size: u64,
    },
    /// Local I/O failed.
    #[error("reading blob {digest} from {path}: {source}")]
    Io {
        /// The blob read.
        digest: Digest,
        /// The local file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The remote read failed (network, HTTP status, registry ignoring Range…).
    #[error("fetching blob {digest} range {offset}+{len}: {message}")]
    Remote {
        /// The blob read.
        digest: Digest,
        /// Requested start.
        offset: u64,
        /// Requested length.
        len: u64,
        /// What went wrong, already phrased for a user.
        message: String,
    },
}

/// Checks that `offset..offset+len` lies within a blob of `size` bytes.
pub fn check_range(digest: Digest, size: u64, offset: u64, len: u64) -> Result<(), BlobError> {
    if offset.checked_add(len).is_none_or(|end| end > size) {
        return Err(BlobError::OutOfRange {
            digest,
            offset,
            len,
            size,
        });
    }
    Ok(())
}

/// Where a remote blob's bytes came from, for `skiff stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlobSource {
    /// The host that served the latest request: a mirror from `hosts.toml` or the
    /// registry itself (`None` before the first request).
    pub served_by: Option<String>,
    /// Requests this reader made.
    pub requests: u64,
    /// Blob bytes this reader received.
    pub bytes: u64,
}

/// Random-access reads of one blob. Returned bytes are raw and unverified.
pub trait BlobReader: Send + Sync {
    /// The blob's digest (of its full, compressed content).
    fn digest(&self) -> Digest;

    /// The blob's size in bytes.
    fn size(&self) -> u64;

    /// Reads exactly `len` bytes starting at `offset`.
    fn read_at(&self, offset: u64, len: u64) -> Result<Vec<u8>, BlobError>;

    /// Reads exactly `len` bytes starting at `offset`, handing them to `sink` in order
    /// as they arrive, so that a caller can decode the first chunks of a range while
    /// the rest is on its way. On an error `sink` may have had some of the bytes (a
    /// prefix of the range). The default reads the range whole, then hands it over.
    fn read_at_with(
        &self,
        offset: u64,
        len: u64,
        sink: &mut dyn FnMut(&[u8]),
    ) -> Result<(), BlobError> {
        sink(&self.read_at(offset, len)?);
        Ok(())
    }

    /// Where the bytes come from, for remote blobs (`None`: a local blob).
    fn source(&self) -> Option<BlobSource> {
        None
    }

    /// The blob's last bytes if they were read ahead, before anyone asked (a remote
    /// layer's tail, read alongside its manifest: see
    /// [`crate::resolve::read_tocs_ahead`]): their offset and the bytes, which run to
    /// the blob's end. Given once; unverified, as any read. The default has none.
    fn tail_read_ahead(&self) -> Option<(u64, Vec<u8>)> {
        None
    }

    /// Streams the whole blob from the start. The default reads it in 4 MiB ranges;
    /// remote readers override it with one streaming GET.
    fn stream(&self) -> Result<Box<dyn Read + Send + '_>, BlobError> {
        Ok(Box::new(RangeStream {
            blob: self,
            pos: 0,
            buf: Vec::new(),
            buf_pos: 0,
        }))
    }
}

/// Adapts [`BlobReader::read_at`] into a sequential [`Read`].
struct RangeStream<'a, B: ?Sized> {
    blob: &'a B,
    pos: u64,
    buf: Vec<u8>,
    buf_pos: usize,
}

impl<B: BlobReader + ?Sized> Read for RangeStream<'_, B> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.buf_pos == self.buf.len() {
            let remaining = self.blob.size().saturating_sub(self.pos);
            if remaining == 0 {
                return Ok(0);
            }
            let len = remaining.min(4 << 20);
            self.buf = self.blob.read_at(self.pos, len).map_err(io::Error::other)?;
            self.buf_pos = 0;
            self.pos += len;
        }
        let n = out.len().min(self.buf.len() - self.buf_pos);
        out[..n].copy_from_slice(&self.buf[self.buf_pos..self.buf_pos + n]);
        self.buf_pos += n;
        Ok(n)
    }
}

/// A blob stored as a local file (the local store, or a test fixture).
pub struct FileBlob {
    digest: Digest,
    path: PathBuf,
    file: File,
    size: u64,
}

impl FileBlob {
    /// Opens `path`, which the caller asserts holds the blob with `digest`.
    /// The content is not hashed here; chunk digests verify what is read.
    pub fn open(digest: Digest, path: impl AsRef<Path>) -> Result<FileBlob, BlobError> {
        let path = path.as_ref().to_path_buf();
        let io_err = |source| BlobError::Io {
            digest,
            path: path.clone(),
            source,
        };
        let file = File::open(&path).map_err(io_err)?;
        let size = file.metadata().map_err(io_err)?.len();
        Ok(FileBlob {
            digest,
            path,
            file,
            size,
        })
    }
}

impl BlobReader for FileBlob {
    fn digest(&self) -> Digest {
        self.digest
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, offset: u64, len: u64) -> Result<Vec<u8>, BlobError> {
        check_range(self.digest, self.size, offset, len)?;
        let mut buf = vec![0u8; len as usize];
        self.file
            .read_exact_at(&mut buf, offset)
            .map_err(|source| BlobError::Io {
                digest: self.digest,
                path: self.path.clone(),
                source,
            })?;
        Ok(buf)
    }

    fn stream(&self) -> Result<Box<dyn Read + Send + '_>, BlobError> {
        let file = File::open(&self.path).map_err(|source| BlobError::Io {
            digest: self.digest,
            path: self.path.clone(),
            source,
        })?;
        Ok(Box::new(io::BufReader::with_capacity(1 << 20, file)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn file_blob_reads_ranges_and_streams() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        f.write_all(&data).unwrap();
        let blob = FileBlob::open(Digest::of(&data), f.path()).unwrap();
        assert_eq!(blob.size(), 10_000);
        assert_eq!(blob.read_at(100, 5).unwrap(), &data[100..105]);
        assert!(matches!(
            blob.read_at(9_999, 2),
            Err(BlobError::OutOfRange { .. })
        ));
        let mut all = Vec::new();
        blob.stream().unwrap().read_to_end(&mut all).unwrap();
        assert_eq!(all, data);
        // The default, range-based stream gives the same bytes.
        let mut all2 = Vec::new();
        RangeStream {
            blob: &blob,
            pos: 0,
            buf: Vec::new(),
            buf_pos: 0,
        }
        .read_to_end(&mut all2)
        .unwrap();
        assert_eq!(all2, data);
    }
}
