//! The mirror's blob cache: each blob a sparse file of its full size plus a bitmap of
//! the fixed, aligned blocks present in it.
//!
//! A read asks [`CachedBlob::ensure`] for the blocks it covers. Missing blocks nobody is
//! fetching are claimed and fetched (contiguous ones in one upstream request, up to a
//! cap); blocks another request is already fetching are waited for, so every block
//! comes from upstream once however many clients ask at the same moment. Fetches run in
//! their own tasks: a client that hangs up does not cancel a fetch others wait on.
//!
//! Once every block is present the whole file is hashed once; a blob whose bytes do not
//! match its digest is dropped from the cache (its files removed) and logged.
//!
//! On disk, under the store's directory: `<hex>.data` (the sparse file, as long as the
//! blob) and `<hex>.map` (one bit per block, set after the block's bytes are written),
//! so a restarted mirror keeps what it had. Nothing is fsynced: after a crash of the
//! machine (not just the process) a block may be marked present with lost bytes, which
//! the digest check at completion catches.

use bytes::Bytes;
use skiff_proto::digest::{Digest, Hasher};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::watch;

/// How many times [`CachedBlob::ensure`] goes round (claim, fetch, wait for others)
/// before giving up on blocks whose fetches keep failing.
const MAX_ROUNDS: usize = 3;

/// What went wrong in the block cache.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// Local file I/O failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// Fetching bytes from upstream failed.
    #[error("fetching bytes {offset}+{len} of blob {digest} from upstream: {message}")]
    Upstream {
        /// The blob.
        digest: Digest,
        /// Where the fetch started.
        offset: u64,
        /// How many bytes it asked for.
        len: u64,
        /// What the upstream client said.
        message: String,
    },
    /// Upstream sent another number of bytes than asked for.
    #[error("upstream sent {got} bytes for {offset}+{len} of blob {digest}")]
    ShortFetch {
        /// The blob.
        digest: Digest,
        /// Where the fetch started.
        offset: u64,
        /// How many bytes it asked for.
        len: u64,
        /// How many came.
        got: u64,
    },
    /// The complete blob did not match its digest; its cache was dropped.
    #[error("blob {digest} from upstream does not match its digest (got {actual}); cache dropped")]
    Corrupt {
        /// The blob.
        digest: Digest,
        /// The digest of the bytes upstream sent.
        actual: Digest,
    },
    /// A range outside the blob was asked for.
    #[error("range {offset}+{len} is outside blob {digest} of {size} bytes")]
    OutOfRange {
        /// The blob.
        digest: Digest,
        /// The blob's size.
        size: u64,
        /// Where the range starts.
        offset: u64,
        /// Its length.
        len: u64,
    },
    /// Blocks were still missing after several rounds of fetching.
    #[error("blocks {first}..={last} of blob {digest} still missing after {MAX_ROUNDS} rounds")]
    StillMissing {
        /// The blob.
        digest: Digest,
        /// First block asked for.
        first: u64,
        /// Last block asked for.
        last: u64,
    },
    /// A background task failed (panicked or was cancelled).
    #[error("background task for blob {digest}: {message}")]
    Task {
        /// The blob.
        digest: Digest,
        /// What the runtime said.
        message: String,
    },
}

/// Result alias for the block cache.
pub type Result<T, E = BlockError> = std::result::Result<T, E>;

/// One upstream fetch under way: the bytes, or what went wrong.
pub type FetchFuture = Pin<Box<dyn Future<Output = Result<Bytes, String>> + Send>>;

/// Fetches `len` bytes at `offset` of one blob from upstream (the caller binds the
/// blob, repository and client).
pub type Fetcher = Arc<dyn Fn(u64, u64) -> FetchFuture + Send + Sync>;

/// Counters of the block cache, for `/skiff/stats`.
#[derive(Debug, Default)]
pub struct BlockStats {
    /// Upstream blob requests made for missing blocks.
    pub fetches: std::sync::atomic::AtomicU64,
    /// Bytes those requests brought.
    pub fetched_bytes: std::sync::atomic::AtomicU64,
    /// Blobs found complete and matching their digest.
    pub verified: std::sync::atomic::AtomicU64,
    /// Blobs dropped because their bytes did not match their digest.
    pub corrupt: std::sync::atomic::AtomicU64,
}

/// Every cached blob, under one directory.
pub struct BlockStore {
    dir: PathBuf,
    block_size: u64,
    /// Most blocks fetched by one upstream request.
    max_run: u64,
    blobs: Mutex<HashMap<Digest, Arc<CachedBlob>>>,
    stats: Arc<BlockStats>,
}

impl BlockStore {
    /// A store in `dir` (created if missing) with blocks of `block_size` bytes, fetching
    /// at most `max_run` blocks per upstream request.
    pub fn open(dir: &Path, block_size: u64, max_run: u64) -> Result<BlockStore> {
        std::fs::create_dir_all(dir).map_err(|source| BlockError::Io {
            what: "creating",
            path: dir.to_path_buf(),
            source,
        })?;
        Ok(BlockStore {
            dir: dir.to_path_buf(),
            block_size: block_size.max(1),
            max_run: max_run.max(1),
            blobs: Mutex::new(HashMap::new()),
            stats: Arc::new(BlockStats::default()),
        })
    }

    /// The block size in bytes.
    pub fn block_size(&self) -> u64 {
        self.block_size
    }

    /// The most bytes one upstream request asks for.
    pub fn max_request(&self) -> u64 {
        self.block_size.saturating_mul(self.max_run)
    }

    /// The store's counters.
    pub fn stats(&self) -> &Arc<BlockStats> {
        &self.stats
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Digest, Arc<CachedBlob>>> {
        self.blobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cache of blob `digest` of `size` bytes: the one in use, or the one on disk
    /// (if its size matches), or a new empty one.
    pub fn blob(self: &Arc<Self>, digest: Digest, size: u64) -> Result<Arc<CachedBlob>> {
        let mut blobs = self.lock();
        if let Some(b) = blobs.get(&digest) {
            if b.size == size {
                return Ok(Arc::clone(b));
            }
            tracing::warn!(%digest, cached = b.size, upstream = size, "cached blob has another size than upstream says; starting over");
        }
        let blob = Arc::new(CachedBlob::open(self, digest, size)?);
        blobs.insert(digest, Arc::clone(&blob));
        if blob.is_complete() {
            blob.spawn_verify();
        }
        Ok(blob)
    }

    /// Forgets blob `digest` and removes its files (it did not match its digest).
    fn drop_blob(&self, blob: &CachedBlob) {
        let mut blobs = self.lock();
        if blobs
            .get(&blob.digest)
            .is_some_and(|b| std::ptr::eq(&**b, blob))
        {
            blobs.remove(&blob.digest);
        }
        for path in [&blob.data_path, &blob.map_path] {
            if let Err(e) = std::fs::remove_file(path) {
                tracing::warn!(path = %path.display(), "removing a corrupt blob's file: {e}");
            }
        }
    }
}

/// Which blocks of a blob are present, and which are being fetched.
struct BlockState {
    bitmap: Vec<u8>,
    present: u64,
    /// Blocks under fetch: a receiver whose sender the fetching task drops when done.
    pending: HashMap<u64, watch::Receiver<()>>,
    /// Hashing the complete blob has started (or ended well).
    verifying: bool,
    /// The complete blob did not match its digest.
    corrupt: Option<Digest>,
}

impl BlockState {
    fn has(&self, block: u64) -> bool {
        let (byte, bit) = ((block / 8) as usize, block % 8);
        self.bitmap.get(byte).is_some_and(|b| b & (1 << bit) != 0)
    }

    /// Marks `block` present; returns the index of the bitmap byte that changed.
    fn set(&mut self, block: u64) -> Option<usize> {
        if self.has(block) {
            return None;
        }
        let (byte, bit) = ((block / 8) as usize, block % 8);
        let b = self.bitmap.get_mut(byte)?;
        *b |= 1 << bit;
        self.present += 1;
        Some(byte)
    }

    /// Whether a fetch of `block` is under way (its task still holds the sender).
    fn pending(&self, block: u64) -> Option<watch::Receiver<()>> {
        self.pending
            .get(&block)
            .filter(|rx| rx.has_changed().is_ok())
            .cloned()
    }
}

/// One blob's cache: its sparse file, its bitmap, and the fetches under way.
pub struct CachedBlob {
    digest: Digest,
    size: u64,
    block_size: u64,
    max_run: u64,
    blocks: u64,
    data: File,
    map: File,
    data_path: PathBuf,
    map_path: PathBuf,
    state: Mutex<BlockState>,
    /// The store, to drop this blob from it if it turns out corrupt.
    store: std::sync::Weak<BlockStore>,
    stats: Arc<BlockStats>,
}

impl CachedBlob {
    fn open(store: &Arc<BlockStore>, digest: Digest, size: u64) -> Result<CachedBlob> {
        let hex = digest.hex();
        let data_path = store.dir.join(format!("{hex}.data"));
        let map_path = store.dir.join(format!("{hex}.map"));
        let blocks = size.div_ceil(store.block_size);
        let map_len = blocks.div_ceil(8) as usize;
        let io = |what, path: &Path| {
            let path = path.to_path_buf();
            move |source| BlockError::Io { what, path, source }
        };
        let open = |path: &Path| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)
                .map_err(io("opening", path))
        };
        let data = open(&data_path)?;
        let map = open(&map_path)?;
        let data_len = data.metadata().map_err(io("reading", &data_path))?.len();
        let mut bitmap = vec![0u8; map_len];
        let kept = data_len == size
            && map.metadata().map_err(io("reading", &map_path))?.len() == map_len as u64
            && map.read_exact_at(&mut bitmap, 0).is_ok();
        if !kept {
            bitmap.fill(0);
            data.set_len(0).map_err(io("truncating", &data_path))?;
            data.set_len(size).map_err(io("sizing", &data_path))?;
            map.set_len(0).map_err(io("truncating", &map_path))?;
            map.write_all_at(&bitmap, 0)
                .map_err(io("writing", &map_path))?;
        }
        // Bits past the last block (a damaged map) must not count.
        let present = (0..blocks)
            .filter(|b| bitmap[(b / 8) as usize] & (1 << (b % 8)) != 0)
            .count() as u64;
        if present > 0 {
            tracing::info!(%digest, present, blocks, "cached blocks kept from before");
        }
        Ok(CachedBlob {
            digest,
            size,
            block_size: store.block_size,
            max_run: store.max_run,
            blocks,
            data,
            map,
            data_path,
            map_path,
            state: Mutex::new(BlockState {
                bitmap,
                present,
                pending: HashMap::new(),
                verifying: false,
                corrupt: None,
            }),
            store: Arc::downgrade(store),
            stats: Arc::clone(&store.stats),
        })
    }

    /// The blob's digest.
    pub fn digest(&self) -> Digest {
        self.digest
    }

    fn lock(&self) -> MutexGuard<'_, BlockState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn is_complete(&self) -> bool {
        self.lock().present == self.blocks
    }

    /// The blocks covering `len` bytes at `offset` (`len` > 0), as first and last.
    fn span(&self, offset: u64, len: u64) -> Result<(u64, u64)> {
        let end = offset
            .checked_add(len)
            .filter(|&e| e <= self.size && len > 0);
        let Some(end) = end else {
            return Err(BlockError::OutOfRange {
                digest: self.digest,
                size: self.size,
                offset,
                len,
            });
        };
        Ok((offset / self.block_size, (end - 1) / self.block_size))
    }

    /// Makes sure the bytes `offset..offset+len` are in the file: fetches the missing
    /// blocks nobody is fetching, waits for those others are.
    pub async fn ensure(self: &Arc<Self>, offset: u64, len: u64, fetch: &Fetcher) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        let (first, last) = self.span(offset, len)?;
        for _ in 0..MAX_ROUNDS {
            let (claimed, waits) = self.claim(first, last)?;
            if claimed.is_empty() && waits.is_empty() {
                return Ok(());
            }
            let tasks: Vec<_> = claimed
                .into_iter()
                .map(|(start, count, tx)| {
                    let (blob, fetch) = (Arc::clone(self), Arc::clone(fetch));
                    tokio::spawn(async move { blob.fetch_run(start, count, tx, fetch).await })
                })
                .collect();
            for task in tasks {
                task.await.map_err(|e| BlockError::Task {
                    digest: self.digest,
                    message: e.to_string(),
                })??;
            }
            for mut rx in waits {
                // Err: the fetching task dropped its sender, i.e. it is done.
                let _ = rx.changed().await;
            }
        }
        if self.all_present(first, last) {
            return Ok(());
        }
        Err(BlockError::StillMissing {
            digest: self.digest,
            first,
            last,
        })
    }

    /// Whether blocks `first..=last` are all present.
    fn all_present(&self, first: u64, last: u64) -> bool {
        let st = self.lock();
        (first..=last).all(|b| st.has(b))
    }

    /// Claims the missing blocks of `first..=last` nobody is fetching, in runs of at
    /// most `max_run` contiguous blocks (each with the sender its waiters watch), and
    /// returns them with the receivers of the blocks others are fetching.
    #[allow(clippy::type_complexity)]
    fn claim(
        &self,
        first: u64,
        last: u64,
    ) -> Result<(Vec<(u64, u64, watch::Sender<()>)>, Vec<watch::Receiver<()>>)> {
        let mut st = self.lock();
        let mut runs: Vec<(u64, u64)> = Vec::new();
        let mut waits = Vec::new();
        let mut open = false;
        for b in first..=last {
            if st.has(b) {
                open = false;
                continue;
            }
            if let Some(rx) = st.pending(b) {
                waits.push(rx);
                open = false;
                continue;
            }
            match runs.last_mut() {
                Some((_, count)) if open && *count < self.max_run => *count += 1,
                _ => {
                    runs.push((b, 1));
                    open = true;
                }
            }
        }
        // Blocks already here are served even from a blob found corrupt (clients check
        // what they read); nothing more is fetched into it.
        if let Some(actual) = st.corrupt.filter(|_| !runs.is_empty() || !waits.is_empty()) {
            return Err(BlockError::Corrupt {
                digest: self.digest,
                actual,
            });
        }
        let claimed = runs
            .into_iter()
            .map(|(start, count)| {
                let (tx, rx) = watch::channel(());
                for b in start..start + count {
                    st.pending.insert(b, rx.clone());
                }
                (start, count, tx)
            })
            .collect();
        Ok((claimed, waits))
    }

    /// Fetches `count` blocks from `start` in one upstream request, writes them, marks
    /// them present and wakes their waiters (by dropping `tx`).
    async fn fetch_run(
        self: Arc<Self>,
        start: u64,
        count: u64,
        tx: watch::Sender<()>,
        fetch: Fetcher,
    ) -> Result<()> {
        use std::sync::atomic::Ordering::Relaxed;
        let offset = start * self.block_size;
        let len = (count * self.block_size).min(self.size - offset);
        self.stats.fetches.fetch_add(1, Relaxed);
        let outcome = match fetch(offset, len).await {
            Ok(bytes) if bytes.len() as u64 == len => {
                self.stats.fetched_bytes.fetch_add(len, Relaxed);
                self.on_file("writing", move |data| data.write_all_at(&bytes, offset))
                    .await
            }
            Ok(bytes) => Err(BlockError::ShortFetch {
                digest: self.digest,
                offset,
                len,
                got: bytes.len() as u64,
            }),
            Err(message) => Err(BlockError::Upstream {
                digest: self.digest,
                offset,
                len,
                message,
            }),
        };
        let complete = {
            let mut st = self.lock();
            for b in start..start + count {
                st.pending.remove(&b);
            }
            if outcome.is_ok() {
                let changed: Vec<usize> =
                    (start..start + count).filter_map(|b| st.set(b)).collect();
                if let (Some(&lo), Some(&hi)) = (changed.first(), changed.last()) {
                    // A lost bit only costs a refetch after a restart: warn, go on.
                    if let Err(e) = self.map.write_all_at(&st.bitmap[lo..=hi], lo as u64) {
                        tracing::warn!(path = %self.map_path.display(), "writing the block map: {e}");
                    }
                }
            }
            let complete = st.present == self.blocks && !st.verifying;
            if complete {
                st.verifying = true;
            }
            complete
        };
        drop(tx);
        if let Err(e) = &outcome {
            tracing::warn!("{e}");
        }
        if complete {
            self.spawn_verify_claimed();
        }
        outcome
    }

    /// Starts hashing the complete blob, unless that has started already.
    fn spawn_verify(self: &Arc<Self>) {
        {
            let mut st = self.lock();
            if st.verifying {
                return;
            }
            st.verifying = true;
        }
        self.spawn_verify_claimed();
    }

    /// Hashes the complete blob in the background (the caller set `verifying`); on a
    /// mismatch, drops the blob from the store.
    fn spawn_verify_claimed(self: &Arc<Self>) {
        let blob = Arc::clone(self);
        tokio::task::spawn_blocking(move || blob.verify());
    }

    fn verify(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        let mut hasher = Hasher::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut at = 0u64;
        while at < self.size {
            let n = (self.size - at).min(buf.len() as u64) as usize;
            if let Err(e) = self.data.read_exact_at(&mut buf[..n], at) {
                tracing::warn!(digest = %self.digest, path = %self.data_path.display(), "reading the blob to verify it: {e}");
                self.lock().verifying = false;
                return;
            }
            hasher.update(&buf[..n]);
            at += n as u64;
        }
        let actual = hasher.finish();
        if actual == self.digest {
            self.stats.verified.fetch_add(1, Relaxed);
            tracing::info!(digest = %self.digest, size = self.size, "blob complete and verified");
            return;
        }
        tracing::error!(
            digest = %self.digest,
            %actual,
            "BLOB FROM UPSTREAM DOES NOT MATCH ITS DIGEST: dropping its cache (clients verify what they read, but the mirror keeps no blob known to be wrong)"
        );
        {
            let mut st = self.lock();
            st.corrupt = Some(actual);
        }
        if let Some(store) = self.store.upgrade() {
            store.drop_blob(self);
        }
        // Counted once dropped: whoever sees the count sees the files gone.
        self.stats.corrupt.fetch_add(1, Relaxed);
    }

    /// Reads `len` bytes at `offset` from the file (the caller ensured them first).
    pub async fn read(self: &Arc<Self>, offset: u64, len: u64) -> Result<Bytes> {
        self.span(offset, len)?;
        self.on_file("reading", move |data| {
            let mut buf = vec![0u8; len as usize];
            data.read_exact_at(&mut buf, offset)
                .map(|()| Bytes::from(buf))
        })
        .await
    }

    /// Runs blocking I/O `op` on the data file off the async threads.
    async fn on_file<T: Send + 'static>(
        self: &Arc<Self>,
        what: &'static str,
        op: impl FnOnce(&File) -> io::Result<T> + Send + 'static,
    ) -> Result<T> {
        let blob = Arc::clone(self);
        let outcome = tokio::task::spawn_blocking(move || {
            op(&blob.data).map_err(|source| BlockError::Io {
                what,
                path: blob.data_path.clone(),
                source,
            })
        })
        .await;
        outcome.unwrap_or_else(|e| {
            Err(BlockError::Task {
                digest: self.digest,
                message: e.to_string(),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    fn counting_fetcher(blob: Arc<Vec<u8>>, bytes: Arc<AtomicU64>) -> Fetcher {
        Arc::new(move |offset, len| -> FetchFuture {
            let (blob, bytes) = (Arc::clone(&blob), Arc::clone(&bytes));
            Box::pin(async move {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                bytes.fetch_add(len, Ordering::SeqCst);
                Ok(Bytes::copy_from_slice(
                    &blob[offset as usize..(offset + len) as usize],
                ))
            })
        })
    }

    fn blob_bytes(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_reads_fetch_each_block_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(BlockStore::open(dir.path(), 1000, 4).unwrap());
        let data = Arc::new(blob_bytes(10_500));
        let digest = Digest::of(&data);
        let fetched = Arc::new(AtomicU64::new(0));
        let fetch = counting_fetcher(Arc::clone(&data), Arc::clone(&fetched));
        let blob = store.blob(digest, data.len() as u64).unwrap();
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (blob, fetch) = (Arc::clone(&blob), Arc::clone(&fetch));
            tasks.push(tokio::spawn(async move {
                blob.ensure(1500, 6000, &fetch).await.unwrap();
                blob.read(1500, 6000).await.unwrap()
            }));
        }
        for t in tasks {
            assert_eq!(&t.await.unwrap()[..], &data[1500..7500]);
        }
        // Blocks 1..=7 once each.
        assert_eq!(fetched.load(Ordering::SeqCst), 7000);
        // The rest, then the whole blob verifies and stays.
        blob.ensure(0, data.len() as u64, &fetch).await.unwrap();
        assert_eq!(fetched.load(Ordering::SeqCst), 10_500);
        for _ in 0..100 {
            if store.stats().verified.load(Ordering::SeqCst) == 1 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(store.stats().verified.load(Ordering::SeqCst), 1);

        // A new store over the same directory keeps the blocks.
        let again = Arc::new(BlockStore::open(dir.path(), 1000, 4).unwrap());
        let blob = again.blob(digest, data.len() as u64).unwrap();
        blob.ensure(0, data.len() as u64, &fetch).await.unwrap();
        assert_eq!(fetched.load(Ordering::SeqCst), 10_500);
        assert_eq!(&blob.read(0, 10_500).await.unwrap()[..], &data[..]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_blob_not_matching_its_digest_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(BlockStore::open(dir.path(), 1000, 4).unwrap());
        let data = Arc::new(blob_bytes(2500));
        let digest = Digest::of(b"something else");
        let fetch = counting_fetcher(Arc::clone(&data), Arc::new(AtomicU64::new(0)));
        let blob = store.blob(digest, 2500).unwrap();
        blob.ensure(0, 2500, &fetch).await.unwrap();
        for _ in 0..100 {
            if store.stats().corrupt.load(Ordering::SeqCst) == 1 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(store.stats().corrupt.load(Ordering::SeqCst), 1);
        assert!(!dir.path().join(format!("{}.data", digest.hex())).exists());
        // The old handle still reads what it has, and fetches nothing more.
        blob.ensure(0, 10, &fetch).await.unwrap();
        // Asked again, the store starts from nothing.
        let fresh = store.blob(digest, 2500).unwrap();
        assert!(!Arc::ptr_eq(&fresh, &blob));
        assert!(!fresh.is_complete());
    }
}
