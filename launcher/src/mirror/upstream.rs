//! The mirror's side facing the upstream registry: skiff's own registry client (so
//! tokens, TLS and `hosts.toml` work as for every other command), with the answers
//! worth keeping kept, and each asked for once however many clients ask at a time:
//! blob sizes, manifests by digest (on disk too), manifests by tag (for a few seconds).

use super::blocks::{FetchFuture, Fetcher};
use bytes::Bytes;
use skiff_proto::digest::Digest;
use skiff_proto::registry::{Client, Listing, RegistryError};
use std::collections::HashMap;
use std::hash::Hash;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{OnceCell, Semaphore};

/// A manifest (or index) as upstream sent it.
#[derive(Debug)]
pub struct Manifest {
    /// Its bytes, verified against `digest`.
    pub bytes: Bytes,
    /// Its `Content-Type` (absent if upstream sent none).
    pub content_type: Option<String>,
    /// Its digest.
    pub digest: Digest,
}

/// Values computed once per key while anyone asks at the same time: the first asker
/// computes, the others wait for its answer. Failures are not kept.
struct SingleFlight<K, V> {
    cells: Mutex<HashMap<K, (Instant, Arc<OnceCell<V>>)>>,
    /// How long a computed value is served before it is asked for again (`None`:
    /// forever).
    ttl: Option<Duration>,
}

impl<K: Eq + Hash + Clone, V: Clone> SingleFlight<K, V> {
    fn new(ttl: Option<Duration>) -> Self {
        SingleFlight {
            cells: Mutex::new(HashMap::new()),
            ttl,
        }
    }

    async fn get<E, F>(&self, key: K, compute: F) -> Result<V, E>
    where
        F: std::future::Future<Output = Result<V, E>>,
    {
        let cell = {
            let mut cells = self.cells.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let stale = |(at, cell): &(Instant, Arc<OnceCell<V>>)| {
                cell.initialized() && self.ttl.is_some_and(|ttl| now.duration_since(*at) > ttl)
            };
            match cells.get(&key) {
                Some(entry) if !stale(entry) => Arc::clone(&entry.1),
                _ => {
                    let cell = Arc::new(OnceCell::new());
                    cells.insert(key, (now, Arc::clone(&cell)));
                    cell
                }
            }
        };
        cell.get_or_try_init(|| compute).await.cloned()
    }
}

/// Counters of requests for blob bytes made upstream.
#[derive(Debug, Default)]
pub struct UpstreamStats {
    /// Blob Range requests sent upstream.
    pub blob_requests: AtomicU64,
    /// Bytes they brought.
    pub blob_bytes: AtomicU64,
    /// Manifest requests sent upstream.
    pub manifest_requests: AtomicU64,
}

/// The upstream registry, as the mirror uses it.
pub struct Upstream {
    client: Arc<Client>,
    /// Caps the blob requests in flight upstream at once.
    permits: Arc<Semaphore>,
    sizes: SingleFlight<(String, Digest), u64>,
    by_digest: SingleFlight<Digest, Arc<Manifest>>,
    by_tag: SingleFlight<(String, String), Arc<Manifest>>,
    /// Where manifests by digest are kept across restarts.
    manifest_dir: PathBuf,
    stats: Arc<UpstreamStats>,
}

impl Upstream {
    /// The upstream reached through `client`: at most `concurrency` blob requests at a
    /// time, tags re-asked after `tag_ttl`, manifests kept in `manifest_dir`.
    pub fn new(
        client: Client,
        concurrency: usize,
        tag_ttl: Duration,
        manifest_dir: &Path,
    ) -> std::io::Result<Upstream> {
        std::fs::create_dir_all(manifest_dir)?;
        Ok(Upstream {
            client: Arc::new(client),
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            sizes: SingleFlight::new(None),
            by_digest: SingleFlight::new(None),
            by_tag: SingleFlight::new(Some(tag_ttl)),
            manifest_dir: manifest_dir.to_path_buf(),
            stats: Arc::new(UpstreamStats::default()),
        })
    }

    /// The registry client (its stats count every request and byte).
    pub fn client(&self) -> &Arc<Client> {
        &self.client
    }

    /// The mirror's own counters of upstream requests.
    pub fn stats(&self) -> &Arc<UpstreamStats> {
        &self.stats
    }

    /// The size of blob `digest` in `repository`; [`RegistryError::BlobUnknown`] if
    /// upstream does not have it. Asked once per repository and blob: the answer also
    /// says the repository may read the blob, before cached bytes are served for it.
    pub async fn blob_size(&self, repository: &str, digest: Digest) -> Result<u64, RegistryError> {
        self.sizes
            .get((repository.to_string(), digest), async {
                self.client
                    .blob_size(repository, digest)
                    .await?
                    .ok_or_else(|| RegistryError::BlobUnknown {
                        repository: repository.to_string(),
                        digest: digest.to_string(),
                    })
            })
            .await
    }

    /// Reads bytes of blob `digest` from `repository` upstream, for the block cache:
    /// one Range request, within the concurrency cap.
    pub fn fetcher(self: &Arc<Self>, repository: &str, digest: Digest) -> Fetcher {
        let (up, repository) = (Arc::clone(self), Arc::<str>::from(repository));
        Arc::new(move |offset, len| -> FetchFuture {
            let (up, repository) = (Arc::clone(&up), Arc::clone(&repository));
            Box::pin(async move {
                let _permit = up.permits.acquire().await.map_err(|e| e.to_string())?;
                up.stats.blob_requests.fetch_add(1, Ordering::Relaxed);
                let bytes = up
                    .client
                    .get_blob_range(&repository, digest, offset, len)
                    .await
                    .map_err(|e| e.to_string())?;
                up.stats
                    .blob_bytes
                    .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                Ok(bytes)
            })
        })
    }

    /// Manifest `digest` of `repository`: from disk, else fetched once and kept.
    pub async fn manifest_by_digest(
        &self,
        repository: &str,
        digest: Digest,
    ) -> Result<Arc<Manifest>, RegistryError> {
        self.by_digest
            .get(digest, async {
                if let Some(m) = self.load_manifest(digest) {
                    return Ok(Arc::new(m));
                }
                let m = self.fetch_manifest(repository, &digest.to_string()).await?;
                self.save_manifest(&m);
                Ok(Arc::new(m))
            })
            .await
    }

    /// The manifest `tag` of `repository` names now (asked again after the TTL).
    pub async fn manifest_by_tag(
        &self,
        repository: &str,
        tag: &str,
    ) -> Result<Arc<Manifest>, RegistryError> {
        self.by_tag
            .get((repository.to_string(), tag.to_string()), async {
                let m = self.fetch_manifest(repository, tag).await?;
                self.save_manifest(&m);
                Ok(Arc::new(m))
            })
            .await
    }

    /// A listing (`tags/list`, `referrers/<digest>`) as upstream has it, `None` on 404.
    pub async fn listing(
        &self,
        repository: &str,
        path: &str,
        accept: Option<&str>,
    ) -> Result<Option<Listing>, RegistryError> {
        self.stats.manifest_requests.fetch_add(1, Ordering::Relaxed);
        self.client.get_listing(repository, path, accept).await
    }

    async fn fetch_manifest(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<Manifest, RegistryError> {
        self.stats.manifest_requests.fetch_add(1, Ordering::Relaxed);
        let (bytes, content_type, digest) = self.client.get_manifest(repository, reference).await?;
        Ok(Manifest {
            bytes,
            content_type,
            digest,
        })
    }

    fn manifest_paths(&self, digest: Digest) -> (PathBuf, PathBuf) {
        let hex = digest.hex();
        (
            self.manifest_dir.join(&hex),
            self.manifest_dir.join(format!("{hex}.type")),
        )
    }

    /// A manifest kept on disk, if it is there and still matches its digest.
    fn load_manifest(&self, digest: Digest) -> Option<Manifest> {
        let (data, kind) = self.manifest_paths(digest);
        let bytes = std::fs::read(&data).ok()?;
        if Digest::of(&bytes) != digest {
            tracing::warn!(path = %data.display(), "kept manifest does not match its digest; fetching it again");
            return None;
        }
        let content_type = std::fs::read_to_string(&kind)
            .ok()
            .filter(|t| !t.is_empty());
        Some(Manifest {
            bytes: Bytes::from(bytes),
            content_type,
            digest,
        })
    }

    /// Keeps a manifest on disk (written aside, then renamed into place). Failing to
    /// keep it only costs a fetch after a restart.
    fn save_manifest(&self, m: &Manifest) {
        let (data, kind) = self.manifest_paths(m.digest);
        let write = |path: &Path, bytes: &[u8]| -> std::io::Result<()> {
            // Unique: two tasks may keep the same manifest at once (by tag and digest).
            static NEXT: AtomicU64 = AtomicU64::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let mut tmp = path.as_os_str().to_owned();
            tmp.push(format!(".{}.{n}.tmp", std::process::id()));
            let tmp = PathBuf::from(tmp);
            std::fs::write(&tmp, bytes)?;
            std::fs::rename(&tmp, path)
        };
        let outcome = write(&kind, m.content_type.as_deref().unwrap_or("").as_bytes())
            .and_then(|()| write(&data, &m.bytes));
        if let Err(e) = outcome {
            tracing::warn!(path = %data.display(), "keeping a manifest: {e}");
        }
    }
}
