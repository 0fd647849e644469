//! Lower files as local files for FUSE passthrough: when every chunk of a lower file
//! is in the disk cache, the kernel can read a local copy directly instead of asking
//! us. A large one-chunk file is its cache file; a file of several chunks is
//! assembled from verified chunks under the cache's `files/` (derived data, removed
//! by `skiff gc`). Either is verified once per mount before the kernel reads it.

use crate::fetcher::Fetcher;
use crate::tree::{LowerId, LowerTree};
use parking_lot::Mutex;
use skiff_proto::index::{Chunk, EntryKind};
use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Makes and remembers the local files of one mount.
pub struct Materializer {
    /// While a profile is recorded no file is passed through, so every read is seen.
    recording: bool,
    /// Local files verified during this mount.
    verified: Mutex<HashSet<PathBuf>>,
}

impl Materializer {
    /// A materializer; with `recording`, it never offers a file.
    pub fn new(recording: bool) -> Materializer {
        Materializer {
            recording,
            verified: Mutex::new(HashSet::new()),
        }
    }

    /// Lower regular file `id` as one verified local file, if all its chunks are in
    /// the disk cache (none for a small file kept in a pack).
    pub fn materialize(&self, tree: &LowerTree, fetcher: &Fetcher, id: LowerId) -> Option<File> {
        let ln = tree.node(id)?;
        if !matches!(ln.entry.kind, EntryKind::Reg | EntryKind::Hardlink) || ln.entry.size == 0 {
            return None;
        }
        if self.recording {
            return None;
        }
        let idx = tree.layers.get(ln.layer)?;
        let chunks = idx.chunks_of(&ln.entry);
        if chunks.is_empty() || !fetcher.all_on_disk(chunks) {
            return None;
        }
        let cache = fetcher.cache();
        // A one-chunk file stored as its own cache file is used as it is; several
        // chunks are assembled. A small file whose one chunk sits in a pack stays on
        // the FUSE path: assembling a file per small file is what packs avoid, and
        // keep_cache serves its repeated reads from the page cache anyway.
        let single = match chunks {
            [c] => Some(cache.file_of(&c.digest)?),
            _ => None,
        };
        let path = match &single {
            Some(p) => p.clone(),
            None => {
                let mut h = skiff_proto::digest::Hasher::new();
                for c in chunks {
                    h.update(c.digest.as_bytes());
                    h.update(&c.file_offset.to_le_bytes());
                }
                cache.files_dir().join(h.finish().hex())
            }
        };
        if !self.verified.lock().contains(&path) {
            let ok = if single.is_some() {
                std::fs::read(&path).is_ok_and(|d| skiff_proto::Digest::of(&d) == chunks[0].digest)
            } else {
                self.assemble_file(fetcher, &path, chunks, ln.entry.size)
                    .is_ok()
            };
            if !ok {
                return None;
            }
            self.verified.lock().insert(path.clone());
        }
        File::open(&path).ok()
    }

    /// Writes (or checks) the assembled file at `path` from verified cached chunks.
    fn assemble_file(
        &self,
        fetcher: &Fetcher,
        path: &Path,
        chunks: &[Chunk],
        size: u64,
    ) -> io::Result<()> {
        let cache = fetcher.cache();
        if let Ok(f) = File::open(path) {
            // Already there: verify every chunk's range.
            let mut ok = f.metadata()?.len() == size;
            for c in chunks {
                if !ok {
                    break;
                }
                let mut buf = vec![0u8; c.len as usize];
                ok = f.read_exact_at(&mut buf, c.file_offset).is_ok()
                    && skiff_proto::Digest::of(&buf) == c.digest;
            }
            if ok {
                return Ok(());
            }
            let _ = std::fs::remove_file(path);
        }
        std::fs::create_dir_all(cache.files_dir())?;
        // Unique across processes sharing the cache; a crashed writer's file is
        // removed by the next cache open (`.tmp.<pid>.<seq>`).
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
        let tmp = path.with_file_name(skiff_proto::tempfiles::temp_name(&format!("{name}.tmp")));
        let f = File::create(&tmp)?;
        for c in chunks {
            let Some((data, _)) = cache.get(&c.digest) else {
                let _ = std::fs::remove_file(&tmp);
                return Err(io::Error::from_raw_os_error(libc::ENOENT));
            };
            f.write_all_at(&data, c.file_offset)?;
        }
        f.set_len(size)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    }
}
