//! The chunk cache: content-addressed by the chunk's (uncompressed) digest, so the same
//! chunk in two layers or two images is stored and fetched once.
//!
//! On disk a chunk lives in one of two places:
//! - a chunk of more than [`PACK_CHUNK_MAX`] bytes is its own file,
//!   `DIR/chunks/XX/<64 hex>`;
//! - smaller chunks written together share a pack, `DIR/packs/<name>.pack`: the chunks'
//!   bytes, then a table of (digest, offset, length) and a footer. One gzip span holds
//!   hundreds of small files, and creating a file per chunk cost ~1 ms each on this
//!   machine's ext4 (1,300 files of one span: 1.7 s, seen in the fetcher's `blob range
//!   read` debug events of `RUST_LOG=skiff_fs=debug skiff run --no-prefetch` on the
//!   bench's python:gzip; bench/coldstart.sh shows the whole run); a pack is one file.
//!
//! Files are written to `DIR/tmp/` and renamed into place, so a crash never leaves a
//! partial file under its final name, and every load is re-hashed, so a corrupted chunk
//! is detected, forgotten and reported as a miss (no fsync is needed for safety). The
//! disk cache is bounded by size with LRU eviction over chunks (access order kept in
//! memory, seeded from file mtimes at start); a pack file is deleted once none of its
//! chunks is left, so evicted pack members keep their space until then. A small
//! in-memory LRU keeps hot chunks without touching the disk.
//!
//! Several processes may share one cache directory (standalone `skiff run`s beside
//! each other or beside the daemon). Each counts only what it scanned at open and what
//! it wrote since, so a process that is not alone (it holds a shared `flock` on
//! `DIR/users.lock`, and tries for an exclusive one) re-reads the directory under an
//! exclusive lock on `DIR/evict.lock` every [`RESCAN_DIVISOR`]th of the limit it writes,
//! and evicts from what is really there: together they overshoot the limit by at most
//! that much each. A process alone (the daemon, as intended) never rescans.
//!
//! Disk writes happen on a writer thread: [`ChunkCache::put`] makes the chunk readable
//! at once (memory, and a pending map until it is on disk) and returns, so a fetch
//! worker never waits for the filesystem.

use crate::pack::{pack_table, read_pack_table};
use lru::LruCache;
use parking_lot::{Condvar, Mutex};
use skiff_proto::tempfiles::{remove_stale_temps, temp_name};
use skiff_proto::Digest;
use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};

/// Chunks of at most this many bytes are stored in packs rather than as files.
pub const PACK_CHUNK_MAX: usize = 64 << 10;
/// A pack is closed once it holds this many bytes.
const PACK_TARGET: usize = 8 << 20;

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
    /// In the in-memory LRU (or written moments ago and not yet on disk).
    Memory,
    /// In a verified disk file.
    Disk,
}

/// Where one stored chunk's bytes are.
#[derive(Debug, Clone, Copy)]
struct Stored {
    len: u64,
    /// `(pack id, offset in the pack)`, or `None` for a chunk file.
    pack: Option<(u32, u64)>,
}

/// A stored chunk's place on disk.
struct Located {
    path: PathBuf,
    offset: u64,
    len: u64,
    /// In a pack (shared file) rather than a file of its own.
    packed: bool,
}

struct PackFile {
    path: PathBuf,
    /// Chunks of this pack still in the cache.
    live: u32,
}

struct DiskState {
    /// Access order, least recent first.
    lru: LruCache<Digest, Stored>,
    total: u64,
    packs: HashMap<u32, PackFile>,
    next_pack: u32,
}

impl DiskState {
    /// Drops `d` from the index; returns a file that can be deleted now (the chunk file,
    /// or its pack when it was the pack's last chunk).
    fn remove(&mut self, d: &Digest, dir: &Path) -> Option<PathBuf> {
        let s = self.lru.pop(d)?;
        self.total = self.total.saturating_sub(s.len);
        self.release(d, s, dir)
    }

    fn release(&mut self, d: &Digest, s: Stored, dir: &Path) -> Option<PathBuf> {
        match s.pack {
            None => Some(chunk_path(dir, d)),
            Some((id, _)) => {
                let p = self.packs.get_mut(&id)?;
                p.live = p.live.saturating_sub(1);
                if p.live == 0 {
                    self.packs.remove(&id).map(|p| p.path)
                } else {
                    None
                }
            }
        }
    }
}

/// Reads what the cache directory holds now: every chunk file and pack, oldest first
/// into the LRU (by mtime). Returns the state and the packs to delete (a pack whose
/// chunks are all stored later elsewhere).
fn scan(dir: &Path) -> io::Result<(DiskState, Vec<PathBuf>)> {
    // (mtime, digest, where): oldest first into the LRU.
    let mut found: Vec<(std::time::SystemTime, Digest, Stored)> = Vec::new();
    for sub in fs::read_dir(dir.join("chunks"))?.flatten() {
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
            found.push((
                t,
                d,
                Stored {
                    len: md.len(),
                    pack: None,
                },
            ));
        }
    }
    let mut packs = HashMap::new();
    let mut next_pack = 0u32;
    for e in fs::read_dir(dir.join("packs"))?.flatten() {
        let path = e.path();
        let t = e
            .metadata()
            .and_then(|m| m.modified())
            .unwrap_or(std::time::UNIX_EPOCH);
        let Ok(table) = read_pack_table(&path) else {
            // Not a pack we wrote whole: nothing in it can be trusted to be indexed.
            tracing::warn!(pack = %path.display(), "unreadable cache pack, removing");
            let _ = fs::remove_file(&path);
            continue;
        };
        let id = next_pack;
        next_pack += 1;
        for (d, offset, len) in &table {
            found.push((
                t,
                *d,
                Stored {
                    len: *len as u64,
                    pack: Some((id, *offset)),
                },
            ));
        }
        packs.insert(
            id,
            PackFile {
                path,
                live: table.len() as u32,
            },
        );
    }
    found.sort_by_key(|(t, _, _)| *t);
    let mut state = DiskState {
        lru: LruCache::unbounded(),
        total: 0,
        packs,
        next_pack,
    };
    let mut doomed = Vec::new();
    for (_, d, s) in found {
        // A chunk stored twice (two processes raced): keep the later copy.
        if let Some(old) = state.lru.put(d, s) {
            state.total = state.total.saturating_sub(old.len);
            if old.pack.is_some() {
                doomed.extend(state.release(&d, old, dir));
            }
        }
        state.total = state.total.saturating_add(s.len);
    }
    Ok((state, doomed))
}

fn chunk_path(dir: &Path, d: &Digest) -> PathBuf {
    let hex = d.hex();
    dir.join("chunks").join(&hex[..2]).join(hex)
}

struct MemState {
    lru: LruCache<Digest, Arc<Vec<u8>>>,
    bytes: u64,
    limit: u64,
}

/// A process rescans a shared cache each time it has written this fraction of the
/// limit (see the module documentation).
pub const RESCAN_DIVISOR: u64 = 16;
/// ... but not more often than every this many bytes.
const MIN_RESCAN_INTERVAL: u64 = 64 << 10;

impl DiskState {
    /// Becomes `fresh` (what the directory holds now), keeping this process's access
    /// order for the chunks it knew; chunks other processes stored since count as the
    /// most recently used (they were written after this process last looked).
    fn merge_from(&mut self, mut fresh: DiskState) {
        let theirs: Vec<Digest> = fresh
            .lru
            .iter()
            .rev()
            .filter(|(d, _)| !self.lru.contains(d))
            .map(|(d, _)| *d)
            .collect();
        let known: Vec<Digest> = self.lru.iter().rev().map(|(d, _)| *d).collect();
        for d in known.iter().chain(&theirs) {
            fresh.lru.promote(d);
        }
        *self = fresh;
    }
}

/// An `flock` taken on a lock file of the cache directory, released when dropped.
struct DirLock(fs::File);

impl DirLock {
    /// Opens (creating, mode 0600) `path` and takes `operation` on it.
    fn take(path: &Path, operation: libc::c_int) -> io::Result<DirLock> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)?;
        let lock = DirLock(file);
        lock.flock(operation)?;
        Ok(lock)
    }

    fn flock(&self, operation: libc::c_int) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        // SAFETY: flock(2) on a descriptor we own.
        if unsafe { libc::flock(self.0.as_raw_fd(), operation) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// With a shared lock held: whether no other process holds one. Linux converts a
    /// lock by dropping it first, so the shared lock is taken again either way.
    fn alone(&self) -> bool {
        let alone = self.flock(libc::LOCK_EX | libc::LOCK_NB).is_ok();
        let _ = self.flock(libc::LOCK_SH);
        alone
    }
}

/// A verified, persistent, size-bounded chunk store.
pub struct ChunkCache {
    dir: PathBuf,
    limit: AtomicU64,
    disk: Mutex<DiskState>,
    /// Held (shared) while open: tells processes sharing the directory apart from
    /// one alone in it. `None` if the lock file could not be made (then every
    /// eligible write rescans).
    users: Option<DirLock>,
    /// Bytes this process wrote since it last read the directory.
    written_since_scan: AtomicU64,
    /// Times the directory was re-read because another process shares it.
    rescans: AtomicU64,
    mem: Mutex<MemState>,
    /// Corrupted chunks found (and dropped) so far.
    pub corrupt: AtomicU64,
    /// Chunks handed to the writer and not yet on disk.
    pending: Mutex<HashMap<Digest, Arc<Vec<u8>>>>,
    /// Signalled when `pending` shrinks.
    written: Condvar,
    /// The writer's queue (`None` once closed).
    writer: Mutex<Option<mpsc::Sender<Digest>>>,
    writer_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl ChunkCache {
    /// Opens (creating) the cache in `dir`, bounded to `limit` bytes on disk and
    /// `mem_limit` bytes in memory, and starts its writer thread.
    pub fn open(dir: &Path, limit: u64, mem_limit: u64) -> Result<Arc<ChunkCache>, CacheError> {
        let err = |source| CacheError::Open {
            path: dir.to_path_buf(),
            source,
        };
        for sub in ["chunks", "packs", "tmp"] {
            fs::create_dir_all(dir.join(sub)).map_err(err)?;
        }
        // Temp files of a process that is gone were never renamed (it crashed): drop
        // them. Another live process sharing this cache may be writing the rest.
        remove_stale_temps(&dir.join("tmp"), |_| true);
        remove_stale_temps(&dir.join("files"), |name| name.contains(".tmp."));
        let (state, doomed) = scan(dir).map_err(err)?;
        for p in doomed {
            let _ = fs::remove_file(p);
        }
        let users = DirLock::take(&dir.join("users.lock"), libc::LOCK_SH)
            .map_err(
                |e| tracing::warn!(dir = %dir.display(), "locking the cache's users file: {e}"),
            )
            .ok();
        let cache = Arc::new(ChunkCache {
            dir: dir.to_path_buf(),
            limit: AtomicU64::new(limit),
            disk: Mutex::new(state),
            users,
            written_since_scan: AtomicU64::new(0),
            rescans: AtomicU64::new(0),
            mem: Mutex::new(MemState {
                lru: LruCache::unbounded(),
                bytes: 0,
                limit: mem_limit,
            }),
            corrupt: AtomicU64::new(0),
            pending: Mutex::new(HashMap::new()),
            written: Condvar::new(),
            writer: Mutex::new(None),
            writer_thread: Mutex::new(None),
        });
        cache.evict();
        let (tx, rx) = mpsc::channel::<Digest>();
        // The thread holds only a weak reference, so dropping the last handle closes
        // the queue (in `Drop`) and the thread ends.
        let weak = Arc::downgrade(&cache);
        let thread = std::thread::Builder::new()
            .name("skiff-cache-writer".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let Some(cache) = weak.upgrade() else { break };
                    // Everything queued meanwhile goes out in the same packs.
                    let mut batch = vec![first];
                    batch.extend(rx.try_iter());
                    cache.write_pending(&batch);
                }
            })
            .map_err(err)?;
        *cache.writer.lock() = Some(tx);
        *cache.writer_thread.lock() = Some(thread);
        Ok(cache)
    }

    /// The file holding chunk `d` alone, if it is stored that way (chunks of more than
    /// [`PACK_CHUNK_MAX`] bytes); packed chunks have none.
    pub fn file_of(&self, d: &Digest) -> Option<PathBuf> {
        self.locate(d).filter(|l| !l.packed).map(|l| l.path)
    }

    /// The file and offset where chunk `d`'s bytes are on disk (tests use it to
    /// corrupt one).
    pub fn location_of(&self, d: &Digest) -> Option<(PathBuf, u64)> {
        self.locate(d).map(|l| (l.path, l.offset))
    }

    /// Where chunk `d`'s bytes are on disk, per the index (not checked).
    fn locate(&self, d: &Digest) -> Option<Located> {
        let disk = self.disk.lock();
        let s = *disk.lru.peek(d)?;
        let (path, offset) = match s.pack {
            None => (chunk_path(&self.dir, d), 0),
            Some((id, off)) => (disk.packs.get(&id)?.path.clone(), off),
        };
        Some(Located {
            path,
            offset,
            len: s.len,
            packed: s.pack.is_some(),
        })
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

    /// Looks a chunk up in memory, then among pending writes, then on disk (verifying
    /// it). A corrupted chunk is dropped and counted, and the lookup is a miss.
    pub fn get(&self, d: &Digest) -> Option<(Arc<Vec<u8>>, Hit)> {
        if let Some(v) = self.mem.lock().lru.get(d) {
            let v = v.clone();
            self.disk.lock().lru.get(d);
            return Some((v, Hit::Memory));
        }
        if let Some(v) = self.pending.lock().get(d) {
            return Some((v.clone(), Hit::Memory));
        }
        let Located {
            path, offset, len, ..
        } = self.locate(d)?;
        let mut data = vec![0u8; len as usize];
        let read = fs::File::open(&path).and_then(|f| f.read_exact_at(&mut data, offset));
        if read.is_err() {
            self.drop_chunk(d);
            return None;
        }
        if Digest::of(&data) != *d {
            tracing::warn!(chunk = %d, path = %path.display(), offset, "corrupted cache entry, refetching");
            self.corrupt.fetch_add(1, Ordering::Relaxed);
            self.drop_chunk(d);
            return None;
        }
        self.disk.lock().lru.get(d);
        let data = Arc::new(data);
        self.put_mem(*d, data.clone());
        Some((data, Hit::Disk))
    }

    /// Whether chunk `d` is stored: on disk (not verified) or waiting for the writer.
    pub fn contains(&self, d: &Digest) -> bool {
        self.disk.lock().lru.contains(d) || self.pending.lock().contains_key(d)
    }

    /// Whether chunk `d` is on disk (not verified).
    pub fn on_disk(&self, d: &Digest) -> bool {
        self.disk.lock().lru.contains(d)
    }

    /// Stores a verified chunk (the caller verified it against `d`): readable at once,
    /// written to disk by the writer thread.
    pub fn put(&self, d: Digest, data: Arc<Vec<u8>>) {
        self.put_mem(d, data.clone());
        if self.disk.lock().lru.contains(&d) {
            return;
        }
        let queued = {
            let mut pending = self.pending.lock();
            if pending.contains_key(&d) {
                return;
            }
            pending.insert(d, data);
            self.writer
                .lock()
                .as_ref()
                .is_some_and(|tx| tx.send(d).is_ok())
        };
        if !queued {
            // The writer is gone (closing): write here.
            self.write_pending(&[d]);
        }
    }

    /// Waits until every chunk stored so far is on disk.
    pub fn flush(&self) {
        let mut pending = self.pending.lock();
        while !pending.is_empty() {
            self.written.wait(&mut pending);
        }
    }

    /// Writes the pending chunks `batch` to disk: small ones into packs, large ones as
    /// files. Failures are logged; the chunks then stay memory-only.
    fn write_pending(&self, batch: &[Digest]) {
        let items: Vec<(Digest, Arc<Vec<u8>>)> = {
            let pending = self.pending.lock();
            batch
                .iter()
                .filter_map(|d| pending.get(d).map(|v| (*d, v.clone())))
                .collect()
        };
        let mut small: Vec<&(Digest, Arc<Vec<u8>>)> = Vec::new();
        for item in &items {
            if item.1.len() > PACK_CHUNK_MAX {
                if let Err(e) = self.write_file(&item.0, &item.1) {
                    tracing::warn!(chunk = %item.0, error = %e, "writing chunk to the cache failed");
                }
            } else {
                small.push(item);
            }
        }
        let mut size = 0usize;
        let mut start = 0usize;
        for (i, item) in small.iter().enumerate() {
            size += item.1.len();
            if size >= PACK_TARGET || i + 1 == small.len() {
                if let Err(e) = self.write_pack(&small[start..=i]) {
                    tracing::warn!(chunks = i + 1 - start, error = %e, "writing a cache pack failed");
                }
                start = i + 1;
                size = 0;
            }
        }
        let written = items.iter().map(|(_, v)| v.len() as u64).sum();
        self.account_for_others(written);
        self.evict();
        {
            let mut pending = self.pending.lock();
            for (d, _) in &items {
                pending.remove(d);
            }
        }
        self.written.notify_all();
    }

    fn tmp_path(&self, name: &str) -> PathBuf {
        self.dir.join("tmp").join(temp_name(name))
    }

    /// Writes `tmp` with `data` and renames it to `dest`.
    fn write_atomically(tmp: &Path, dest: &Path, data: &[&[u8]]) -> io::Result<()> {
        let res = fs::File::create(tmp).and_then(|mut f| {
            for part in data {
                f.write_all(part)?;
            }
            Ok(())
        });
        if let Err(e) = res.and_then(|_| fs::rename(tmp, dest)) {
            let _ = fs::remove_file(tmp);
            return Err(e);
        }
        Ok(())
    }

    fn write_file(&self, d: &Digest, data: &[u8]) -> io::Result<()> {
        if self.disk.lock().lru.contains(d) {
            return Ok(());
        }
        let final_path = chunk_path(&self.dir, d);
        if let Some(p) = final_path.parent() {
            fs::create_dir_all(p)?;
        }
        Self::write_atomically(&self.tmp_path(&d.hex()), &final_path, &[data])?;
        let mut disk = self.disk.lock();
        let s = Stored {
            len: data.len() as u64,
            pack: None,
        };
        if disk.lru.put(*d, s).is_none() {
            disk.total = disk.total.saturating_add(s.len);
        }
        Ok(())
    }

    fn write_pack(&self, chunks: &[&(Digest, Arc<Vec<u8>>)]) -> io::Result<()> {
        let chunks: Vec<_> = {
            let disk = self.disk.lock();
            chunks
                .iter()
                .filter(|(d, _)| !disk.lru.contains(d))
                .collect()
        };
        if chunks.is_empty() {
            return Ok(());
        }
        let mut parts: Vec<&[u8]> = chunks.iter().map(|(_, data)| data.as_slice()).collect();
        let table = pack_table(chunks.iter().map(|(d, data)| (*d, data.len())));
        parts.push(&table);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|t| t.as_nanos())
            .unwrap_or(0);
        let name = temp_name(&nanos.to_string());
        let path = self.dir.join("packs").join(format!("{name}.pack"));
        Self::write_atomically(&self.tmp_path(&name), &path, &parts)?;
        let mut disk = self.disk.lock();
        let id = disk.next_pack;
        disk.next_pack += 1;
        let mut live = 0u32;
        let mut offset = 0u64;
        let mut doomed = Vec::new();
        for (d, data) in &chunks {
            let s = Stored {
                len: data.len() as u64,
                pack: Some((id, offset)),
            };
            offset += data.len() as u64;
            live += 1;
            if let Some(old) = disk.lru.put(*d, s) {
                // Stored meanwhile by another path: this pack's copy wins.
                disk.total = disk.total.saturating_sub(old.len);
                doomed.extend(disk.release(d, old, &self.dir));
            }
            disk.total = disk.total.saturating_add(s.len);
        }
        disk.packs.insert(id, PackFile { path, live });
        drop(disk);
        for p in doomed {
            let _ = fs::remove_file(p);
        }
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

    /// Forgets chunk `d` (unreadable or corrupted), deleting its file or emptied pack.
    fn drop_chunk(&self, d: &Digest) {
        let doomed = self.disk.lock().remove(d, &self.dir);
        if let Some(p) = doomed {
            let _ = fs::remove_file(p);
        }
    }

    /// Changes the disk limit (takes effect at the next eviction).
    pub fn set_limit(&self, limit: u64) {
        self.limit.store(limit, Ordering::Relaxed);
    }

    /// After this process wrote `written` more bytes: if it has written a
    /// [`RESCAN_DIVISOR`]th of the limit since it last looked and another process
    /// shares the directory, re-reads the directory and evicts from what is there,
    /// under the directory's eviction lock. Runs on the writer thread, so no write of
    /// this process lands between the scan and its use.
    fn account_for_others(&self, written: u64) {
        let since = self
            .written_since_scan
            .fetch_add(written, Ordering::Relaxed)
            + written;
        let limit = self.limit.load(Ordering::Relaxed);
        if limit == u64::MAX || since < (limit / RESCAN_DIVISOR).max(MIN_RESCAN_INTERVAL) {
            return;
        }
        self.written_since_scan.store(0, Ordering::Relaxed);
        if self.users.as_ref().is_some_and(DirLock::alone) {
            return;
        }
        let _lock = match DirLock::take(&self.dir.join("evict.lock"), libc::LOCK_EX) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), "locking the cache for eviction: {e}");
                return;
            }
        };
        match scan(&self.dir) {
            Ok((fresh, doomed)) => {
                self.disk.lock().merge_from(fresh);
                for p in doomed {
                    let _ = fs::remove_file(p);
                }
                self.rescans.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => tracing::warn!(dir = %self.dir.display(), "re-reading the shared cache: {e}"),
        }
        self.evict();
    }

    /// Removes least recently used chunks until the disk cache fits its limit.
    pub fn evict(&self) {
        let mut doomed = Vec::new();
        {
            let mut disk = self.disk.lock();
            while disk.total > self.limit.load(Ordering::Relaxed) {
                match disk.lru.pop_lru() {
                    Some((d, s)) => {
                        disk.total = disk.total.saturating_sub(s.len);
                        doomed.extend(disk.release(&d, s, &self.dir));
                    }
                    None => break,
                }
            }
        }
        for p in doomed {
            let _ = fs::remove_file(p);
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

impl Drop for ChunkCache {
    fn drop(&mut self) {
        // The writer thread holds only a weak reference and can no longer write: write
        // what is left here.
        self.writer.lock().take();
        let left: Vec<Digest> = self.pending.lock().keys().copied().collect();
        self.write_pending(&left);
        if let Some(t) = self.writer_thread.lock().take() {
            if t.thread().id() != std::thread::current().id() {
                let _ = t.join();
            }
        }
    }
}

/// Removes cached chunks until the cache in `dir` holds at most `limit` bytes
/// (`skiff gc`). Returns (chunks removed, bytes freed).
pub fn gc(dir: &Path, limit: u64) -> Result<(u64, u64), CacheError> {
    let cache = ChunkCache::open(dir, u64::MAX, 0)?;
    let (n0, b0) = cache.usage();
    cache.set_limit(limit);
    cache.evict();
    let _ = fs::remove_dir_all(cache.files_dir());
    let (n1, b1) = cache.usage();
    Ok((n0 - n1, b0 - b1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn corrupt(c: &ChunkCache, d: &Digest) {
        let (path, offset) = c.location_of(d).unwrap();
        let f = fs::OpenOptions::new().write(true).open(path).unwrap();
        f.write_all_at(b"\xff", offset).unwrap();
    }

    #[test]
    fn stores_verifies_and_evicts() {
        for size in [100, PACK_CHUNK_MAX + 1] {
            let dir = tempfile::tempdir().unwrap();
            let limit = 2 * size as u64 + size as u64 / 2;
            let c = ChunkCache::open(dir.path(), limit, 0).unwrap();
            let a = Arc::new(vec![1u8; size]);
            let b = Arc::new(vec![2u8; size]);
            let da = Digest::of(&a);
            let db = Digest::of(&b);
            c.put(da, a.clone());
            c.put(db, b.clone());
            // Readable before the writer got to it, from disk after.
            assert!(c.get(&da).is_some());
            c.flush();
            assert_eq!(c.get(&da).unwrap(), (a.clone(), Hit::Disk));
            // Corrupt b on disk: detected, dropped, a miss.
            corrupt(&c, &db);
            assert!(c.get(&db).is_none());
            assert_eq!(c.corrupt.load(Ordering::Relaxed), 1);
            assert!(!c.on_disk(&db));
            // Over the limit: the least recently used goes.
            let x = Arc::new(vec![4u8; size]);
            let y = Arc::new(vec![5u8; size]);
            c.put(Digest::of(&x), x.clone());
            c.flush();
            c.put(Digest::of(&y), y.clone());
            c.flush();
            assert!(c.disk_bytes() <= limit, "size {size}");
            assert!(!c.contains(&da), "size {size}");
            // Reopening sees what is on disk.
            drop(c);
            let c = ChunkCache::open(dir.path(), limit, 0).unwrap();
            assert_eq!(c.get(&Digest::of(&y)).unwrap(), (y.clone(), Hit::Disk));
            assert_eq!(c.get(&Digest::of(&x)).unwrap(), (x.clone(), Hit::Disk));
        }
    }

    #[test]
    fn small_chunks_share_packs_that_go_when_emptied() {
        let dir = tempfile::tempdir().unwrap();
        let c = ChunkCache::open(dir.path(), u64::MAX, 0).unwrap();
        let chunks: Vec<Arc<Vec<u8>>> = (0..500u32)
            .map(|i| Arc::new(i.to_le_bytes().repeat(1 + i as usize % 300)))
            .collect();
        for ch in &chunks {
            c.put(Digest::of(ch), ch.clone());
        }
        c.flush();
        let packs = fs::read_dir(dir.path().join("packs")).unwrap().count();
        assert!((1..50).contains(&packs), "{packs} packs for 500 chunks");
        assert_eq!(fs::read_dir(dir.path().join("chunks")).unwrap().count(), 0);
        drop(c);
        // Reopened: every chunk found and verified; a torn pack is ignored.
        fs::write(dir.path().join("packs").join("torn.pack"), b"partial").unwrap();
        let c = ChunkCache::open(dir.path(), u64::MAX, 0).unwrap();
        for ch in &chunks {
            assert_eq!(c.get(&Digest::of(ch)).unwrap().0, *ch);
        }
        assert!(!dir.path().join("packs").join("torn.pack").exists());
        // Evicting everything deletes every pack file.
        c.set_limit(0);
        c.evict();
        assert_eq!(c.usage(), (0, 0));
        assert_eq!(fs::read_dir(dir.path().join("packs")).unwrap().count(), 0);
    }

    /// Bytes of chunk files and packs in the cache directory.
    fn bytes_on_disk(dir: &Path) -> u64 {
        let mut total = 0;
        for sub in ["chunks", "packs"] {
            for e in walkdir(&dir.join(sub)) {
                total += e;
            }
        }
        total
    }

    fn walkdir(dir: &Path) -> Vec<u64> {
        let mut sizes = Vec::new();
        for e in fs::read_dir(dir).unwrap().flatten() {
            let md = e.metadata().unwrap();
            if md.is_dir() {
                sizes.extend(walkdir(&e.path()));
            } else {
                sizes.push(md.len());
            }
        }
        sizes
    }

    #[test]
    fn two_processes_sharing_a_cache_keep_it_within_the_limit_together() {
        // Two opens of one directory hold their own locks and accounts, as two
        // processes do. Each writes 3/4 of the limit: 1.5 limits without rescans.
        let dir = tempfile::tempdir().unwrap();
        let limit = 8u64 << 20;
        let chunk = 128 << 10;
        let first = ChunkCache::open(dir.path(), limit, 0).unwrap();
        let second = ChunkCache::open(dir.path(), limit, 0).unwrap();
        let chunks = |seed: u32| -> Vec<Arc<Vec<u8>>> {
            (0..48u32)
                .map(|i| Arc::new((seed * 1000 + i).to_le_bytes().repeat(chunk / 4)))
                .collect()
        };
        for (cache, seed) in [(&first, 1), (&second, 2)] {
            for ch in chunks(seed) {
                cache.put(Digest::of(&ch), ch);
                cache.flush();
            }
        }
        let interval = limit / RESCAN_DIVISOR;
        let used = bytes_on_disk(dir.path());
        assert!(
            used <= limit + 2 * interval,
            "{used} bytes on disk for a limit of {limit}"
        );
        assert!(second.rescans.load(Ordering::Relaxed) > 0);
        // The second one's latest chunks are the ones kept.
        let latest = chunks(2).pop().unwrap();
        assert!(second.get(&Digest::of(&latest)).is_some());

        // Alone in a directory, a cache never re-reads it.
        drop((first, second));
        let alone_dir = tempfile::tempdir().unwrap();
        let alone = ChunkCache::open(alone_dir.path(), limit, 0).unwrap();
        for ch in chunks(3).into_iter().chain(chunks(4)) {
            alone.put(Digest::of(&ch), ch);
            alone.flush();
        }
        assert_eq!(alone.rescans.load(Ordering::Relaxed), 0);
        assert!(bytes_on_disk(alone_dir.path()) <= limit);
    }

    #[test]
    fn an_open_removes_only_the_temps_of_gone_processes() {
        let dir = tempfile::tempdir().unwrap();
        let first = ChunkCache::open(dir.path(), u64::MAX, 0).unwrap();
        let mut live = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let mut dead = std::process::Command::new("true").spawn().unwrap();
        dead.wait().unwrap();
        let tmp = dir.path().join("tmp");
        let theirs = tmp.join(format!("aa.{}.1", live.id()));
        let mine_live = tmp.join(format!("bb.{}.7", std::process::id()));
        let crashed = tmp.join(format!("cc.{}.1", dead.id()));
        let crashed_file = dir
            .path()
            .join("files")
            .join(format!("f.tmp.{}.3", dead.id()));
        fs::create_dir_all(dir.path().join("files")).unwrap();
        for p in [&theirs, &mine_live, &crashed, &crashed_file] {
            fs::write(p, b"partial").unwrap();
        }
        // A second cache on the same directory (another process would do the same).
        let second = ChunkCache::open(dir.path(), u64::MAX, 0).unwrap();
        assert!(theirs.exists(), "a live process's temp file was removed");
        assert!(
            mine_live.exists(),
            "this live process's temp file was removed"
        );
        assert!(!crashed.exists());
        assert!(!crashed_file.exists());
        // Both write the same and different chunks at once: no name collides.
        let chunks: Vec<Arc<Vec<u8>>> = (0..200u32)
            .map(|i| Arc::new(i.to_le_bytes().repeat(PACK_CHUNK_MAX / 4 + 1 + i as usize)))
            .collect();
        std::thread::scope(|s| {
            for c in [&first, &second] {
                let chunks = &chunks;
                s.spawn(move || {
                    for ch in chunks {
                        c.put(Digest::of(ch), ch.clone());
                    }
                    c.flush();
                });
            }
        });
        drop((first, second));
        let _ = live.kill();
        let _ = live.wait();
        let reopened = ChunkCache::open(dir.path(), u64::MAX, 0).unwrap();
        for ch in &chunks {
            assert_eq!(reopened.get(&Digest::of(ch)).unwrap().0, *ch);
        }
        assert!(!theirs.exists(), "its writer is gone now");
    }
}
