//! How a [`super::Client`] reaches and authenticates to its registry.

use super::credentials::Credentials;
use super::retry::RetryPolicy;
use std::path::PathBuf;
use std::time::Duration;

/// How to reach and authenticate to a registry.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Explicit credentials; they win over the Docker config file.
    pub credentials: Option<Credentials>,
    /// Look up credentials in `$DOCKER_CONFIG/config.json` / `~/.docker/config.json`
    /// when none are given.
    pub use_docker_config: bool,
    /// Registries (as `host[:port]`) to reach over plain HTTP. Loopback registries
    /// always use plain HTTP.
    pub insecure_registries: Vec<String>,
    /// Retry policy for transient failures.
    pub retry: RetryPolicy,
    /// Blobs larger than this are uploaded in PATCH chunks of this size.
    pub upload_chunk_size: usize,
    /// Connect timeout per attempt.
    pub connect_timeout: Duration,
    /// Longest silence while reading a response before the attempt fails.
    pub read_timeout: Duration,
    /// Where containerd-style `<registry>/hosts.toml` files name mirrors to try first
    /// (`None`: no mirrors; the `skiff` binary defaults to `/etc/containerd/certs.d`).
    pub hosts_dir: Option<PathBuf>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            credentials: None,
            use_docker_config: true,
            insecure_registries: Vec::new(),
            retry: RetryPolicy::default(),
            upload_chunk_size: 16 << 20,
            connect_timeout: Duration::from_secs(15),
            read_timeout: Duration::from_secs(60),
            hosts_dir: None,
        }
    }
}

/// Whether a request may pull or also push (the Bearer scope's actions).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Read only.
    Pull,
    /// Read and write.
    Push,
}

impl Access {
    /// The Bearer scope for this access to `repository` (empty for registry-wide
    /// requests such as `GET /v2/`).
    pub(crate) fn scope(self, repository: Option<&str>) -> String {
        match (repository, self) {
            (None, _) => String::new(),
            (Some(r), Access::Pull) => format!("repository:{r}:pull"),
            (Some(r), Access::Push) => format!("repository:{r}:pull,push"),
        }
    }
}
