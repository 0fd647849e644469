//! The chunk cache: content-addressed by the chunk's (uncompressed) digest, so the same
//! chunk in two layers or two images is stored and fetched once.
//!
//! On disk each chunk is `DIR/chunks/XX/<64 hex>` holding the raw chunk bytes. Files
//! are written to `DIR/tmp/` and renamed into place, so a crash never leaves a partial
//! chunk under its final name; every load is re-hashed, so a corrupted file is detected,
//! deleted and reported as a miss. The disk cache is bounded by size with LRU eviction
//! (access order kept in memory, seeded from file mtimes at start). A small in-memory
//! LRU keeps hot chunks without touching the disk.

use lru::LruCache;
use parking_lot::Mutex;
use skiff_proto::Digest;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Errors from opening the cache.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The cache directory could not be created or scanned.
    #[error("opening chunk cache {path}: {source}")]
    Open {
        /// The cache directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

/// Where a [`ChunkCache::get`] found the chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hit {
    /// In the in-memory LRU.
    Memory,
    /// In a verified disk file.
    Disk,
}

struct DiskState {
    /// Access order: key = digest, value = size; least recent first.
    lru: LruCache<Digest, u64>,
    total: u64,
}

/// A verified, persistent, size-bounded chunk store.
pub struct ChunkCache {
    dir: PathBuf,
    limit: u64,
    disk: Mutex<DiskState>,
    mem: Mutex<MemState>,
    tmp_seq: AtomicU64,
    /// Corrupted files found (and removed) so far.
    pub corrupt: AtomicU64,
}

struct MemState {
    lru: LruCache<Digest, Arc<Vec<u8>>>,
    bytes: u64,
    limit: u64,
}

impl ChunkCache {
    /// Opens (creating) the cache in `dir`, bounded to `limit` bytes on disk and
    /// `mem_limit` bytes in memory.
    pub fn open(dir: &Path, limit: u64, mem_limit: u64) -> Result<ChunkCache, CacheError> {
        let err = |source| CacheError::Open {
            path: dir.to_path_buf(),
            source,
        };
        fs::create_dir_all(dir.join("chunks")).map_err(err)?;
        fs::create_dir_all(dir.join("tmp")).map_err(err)?;
        // Leftover temp files are from a crash: they were never renamed, so drop them.
        if let Ok(rd) = fs::read_dir(dir.join("tmp")) {
            for e in rd.flatten() {
                let _ = fs::remove_file(e.path());
            }
        }
        let mut found: Vec<(std::time::SystemTime, Digest, u64)> = Vec::new();
        for sub in fs::read_dir(dir.join("chunks")).map_err(err)?.flatten() {
            let Ok(rd) = fs::read_dir(sub.path()) else {
                continue;
            };
            for e in rd.flatten() {
                let Some(name) = e.file_name().to_str().map(str::to_string) else {
                    continue;
                };
                let Ok(d) = format!("sha256:{name}").parse::<Digest>() else {
                    continue;
                };
                let Ok(md) = e.metadata() else { continue };
                let t = md.modified().unwrap_or(std::time::UNIX_EPOCH);
                found.push((t, d, md.len()));
            }
        }
        found.sort();
        let mut lru = LruCache::unbounded();
        let mut total = 0u64;
        for (_, d, len) in found {
            lru.put(d, len);
            total = total.saturating_add(len);
        }
        let cache = ChunkCache {
            dir: dir.to_path_buf(),
            limit,
            disk: Mutex::new(DiskState { lru, total }),
            mem: Mutex::new(MemState {
                lru: LruCache::unbounded(),
                bytes: 0,
                limit: mem_limit,
            }),
            tmp_seq: AtomicU64::new(0),
            corrupt: AtomicU64::new(0),
        };
        cache.evict();
        Ok(cache)
    }

    /// The file holding chunk `d`.
    pub fn path_of(&self, d: &Digest) -> PathBuf {
        let hex = d.hex();
        self.dir.join("chunks").join(&hex[..2]).join(hex)
    }

    /// Where whole lower files assembled from cached chunks are kept (for FUSE
    /// passthrough). They are derived data: `skiff gc` removes them all.
    pub fn files_dir(&self) -> PathBuf {
        self.dir.join("files")
    }

    /// Bytes currently stored on disk.
    pub fn disk_bytes(&self) -> u64 {
        self.disk.lock().total
    }

    /// Looks a chunk up in memory, then on disk (verifying it). A corrupted disk file is
    /// removed and counted, and the lookup is a miss.
    pub fn get(&self, d: &Digest) -> Option<(Arc<Vec<u8>>, Hit)> {
        if let Some(v) = self.mem.lock().lru.get(d) {
            let v = v.clone();
            self.disk.lock().lru.get(d);
            return Some((v, Hit::Memory));
        }
        if !self.disk.lock().lru.contains(d) {
            return None;
        }
        let path = self.path_of(d);
        let data = match fs::read(&path) {
            Ok(data) => data,
            Err(_) => {
                self.forget(d);
                return None;
            }
        };
        if Digest::of(&data) != *d {
            tracing::warn!(chunk = %d, path = %path.display(), "corrupted cache file, refetching");
            self.corrupt.fetch_add(1, Ordering::Relaxed);
            let _ = fs::remove_file(&path);
            self.forget(d);
            return None;
        }
        self.disk.lock().lru.get(d);
        let data = Arc::new(data);
        self.put_mem(*d, data.clone());
        Some((data, Hit::Disk))
    }

    /// Whether chunk `d` is on disk (not verified).
    pub fn contains(&self, d: &Digest) -> bool {
        self.disk.lock().lru.contains(d)
    }

    /// Stores a verified chunk (the caller verified it against `d`).
    pub fn put(&self, d: Digest, data: Arc<Vec<u8>>) {
        if let Err(e) = self.write_disk(&d, &data) {
            tracing::warn!(chunk = %d, error = %e, "writing chunk to the cache failed");
        }
        self.put_mem(d, data);
    }

    fn write_disk(&self, d: &Digest, data: &[u8]) -> io::Result<()> {
        if self.disk.lock().lru.contains(d) {
            return Ok(());
        }
        let final_path = self.path_of(d);
        if let Some(p) = final_path.parent() {
            fs::create_dir_all(p)?;
        }
        let seq = self.tmp_seq.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .dir
            .join("tmp")
            .join(format!("{}.{}.{seq}", d.hex(), std::process::id()));
        let mut f = fs::File::create(&tmp)?;
        let res = f.write_all(data).and_then(|_| f.sync_data());
        drop(f);
        if let Err(e) = res.and_then(|_| fs::rename(&tmp, &final_path)) {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        {
            let mut disk = self.disk.lock();
            if disk.lru.put(*d, data.len() as u64).is_none() {
                disk.total = disk.total.saturating_add(data.len() as u64);
            }
        }
        self.evict();
        Ok(())
    }

    fn put_mem(&self, d: Digest, data: Arc<Vec<u8>>) {
        let mut mem = self.mem.lock();
        let len = data.len() as u64;
        if len > mem.limit {
            return;
        }
        if let Some(old) = mem.lru.put(d, data) {
            mem.bytes = mem.bytes.saturating_sub(old.len() as u64);
        }
        mem.bytes += len;
        while mem.bytes > mem.limit {
            match mem.lru.pop_lru() {
                Some((_, v)) => mem.bytes = mem.bytes.saturating_sub(v.len() as u64),
                None => break,
            }
        }
    }

    fn forget(&self, d: &Digest) {
        let mut disk = self.disk.lock();
        if let Some(len) = disk.lru.pop(d) {
            disk.total = disk.total.saturating_sub(len);
        }
    }

    /// Removes least recently used chunks until the disk cache fits its limit.
    pub fn evict(&self) {
        let mut victims = Vec::new();
        {
            let mut disk = self.disk.lock();
            while disk.total > self.limit {
                match disk.lru.pop_lru() {
                    Some((d, len)) => {
                        disk.total = disk.total.saturating_sub(len);
                        victims.push(d);
                    }
                    None => break,
                }
            }
        }
        for d in victims {
            let _ = fs::remove_file(self.path_of(&d));
        }
    }

    /// Drops every chunk from the in-memory LRU (tests use it to force disk reads).
    pub fn clear_memory(&self) {
        let mut mem = self.mem.lock();
        mem.lru.clear();
        mem.bytes = 0;
    }

    /// Summary for stats: (disk chunks, disk bytes).
    pub fn usage(&self) -> (u64, u64) {
        let disk = self.disk.lock();
        (disk.lru.len() as u64, disk.total)
    }
}

/// Removes cached chunks until the cache in `dir` holds at most `limit` bytes
/// (`skiff gc`). Returns (chunks removed, bytes freed).
pub fn gc(dir: &Path, limit: u64) -> Result<(u64, u64), CacheError> {
    let cache = ChunkCache::open(dir, u64::MAX, 0)?;
    let (n0, b0) = cache.usage();
    let cache = ChunkCache { limit, ..cache };
    cache.evict();
    let _ = fs::remove_dir_all(cache.files_dir());
    let (n1, b1) = cache.usage();
    Ok((n0 - n1, b0 - b1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_verifies_and_evicts() {
        let dir = tempfile::tempdir().unwrap();
        let c = ChunkCache::open(dir.path(), 250, 0).unwrap();
        let a = Arc::new(vec![1u8; 100]);
        let b = Arc::new(vec![2u8; 100]);
        let da = Digest::of(&a);
        let db = Digest::of(&b);
        c.put(da, a.clone());
        c.put(db, b.clone());
        assert_eq!(c.get(&da).unwrap().1, Hit::Disk);
        // Corrupt b on disk: detected, removed, a miss.
        fs::write(c.path_of(&db), vec![3u8; 100]).unwrap();
        assert!(c.get(&db).is_none());
        assert_eq!(c.corrupt.load(Ordering::Relaxed), 1);
        assert!(!c.path_of(&db).exists());
        // Over the limit: the least recently used goes.
        let x = Arc::new(vec![4u8; 100]);
        let y = Arc::new(vec![5u8; 100]);
        c.put(Digest::of(&x), x.clone());
        c.put(Digest::of(&y), y.clone());
        assert!(c.disk_bytes() <= 250);
        assert!(!c.contains(&da));
        // Reopening sees what is on disk.
        drop(c);
        let c = ChunkCache::open(dir.path(), 250, 0).unwrap();
        assert!(c.get(&Digest::of(&y)).is_some());
    }
}
