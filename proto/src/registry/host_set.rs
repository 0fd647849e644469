//! The hosts a [`super::Client`] tries, rebuilt when the `hosts.toml` that configures
//! them changes, so that a long-running mount or daemon follows an edited mirror list
//! without a restart (as containerd re-reads `hosts.toml` on every pull).
//!
//! A request looks at the file's identity (path, inode, size, modification time) at
//! most once per [`RECHECK`]; only a change re-reads and re-parses it. A file that no
//! longer parses keeps the hosts in use (and says so), so that a half-written edit
//! never breaks reads that are under way.

use super::credentials::Credentials;
use super::endpoint::{Endpoint, Tls};
use super::error::Result;
use super::hosts::{self, Capabilities};
use super::options::ClientOptions;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};
use url::Url;

/// How often a request may look at the `hosts.toml` file for changes.
pub(crate) const RECHECK: Duration = Duration::from_secs(1);

/// Which `hosts.toml` applied, and which version of it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Stamp {
    path: PathBuf,
    ino: u64,
    len: u64,
    modified: Option<SystemTime>,
}

/// What rebuilding the hosts needs: everything [`super::Client::new`] was given.
pub(crate) struct HostInputs {
    pub registry: String,
    /// The registry's own API root when no `server` overrides it.
    pub v2_root: Url,
    /// The registry's credentials (never given to a mirror).
    pub credentials: Option<Credentials>,
}

/// One version of the host list: mirrors in file order, the registry last.
pub(crate) struct Hosts {
    pub endpoints: Vec<Endpoint>,
}

/// The last look at the file: when, and what was there.
struct Seen {
    at: Instant,
    stamp: Option<Stamp>,
}

/// The current [`Hosts`], replaced as a whole when the file changes; requests under
/// way keep the version they started with.
pub(crate) struct HostSet {
    inputs: HostInputs,
    current: RwLock<Arc<Hosts>>,
    seen: Mutex<Seen>,
}

impl HostSet {
    /// Builds the hosts from `options.hosts_dir` (an unreadable or invalid file is an
    /// error here: a command should not start on a configuration it cannot read).
    pub fn new(inputs: HostInputs, options: &ClientOptions) -> Result<HostSet> {
        let stamp = stamp(&inputs.registry, options);
        let hosts = build(&inputs, options)?;
        Ok(HostSet {
            inputs,
            current: RwLock::new(Arc::new(hosts)),
            seen: Mutex::new(Seen {
                at: Instant::now(),
                stamp,
            }),
        })
    }

    /// The hosts to use now, re-read first if the file changed since it was last seen
    /// (looked at no more than once per [`RECHECK`]).
    pub fn current(&self, options: &ClientOptions) -> Arc<Hosts> {
        if options.hosts_dir.is_some() {
            self.reload_if_changed(options);
        }
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn reload_if_changed(&self, options: &ClientOptions) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.at.elapsed() < RECHECK {
            return;
        }
        seen.at = Instant::now();
        let now = stamp(&self.inputs.registry, options);
        if now == seen.stamp {
            return;
        }
        // Remembered whether or not it can be used, so that a broken version is
        // reported once, not on every request.
        seen.stamp = now;
        match build(&self.inputs, options) {
            Ok(hosts) => {
                let names: Vec<&str> = hosts.endpoints.iter().map(|e| e.name.as_str()).collect();
                tracing::info!(registry = %self.inputs.registry, hosts = ?names, "hosts.toml changed; hosts reloaded");
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(hosts);
            }
            Err(e) => {
                tracing::warn!(registry = %self.inputs.registry, error = %e, "hosts.toml changed but cannot be used; keeping the hosts in use");
            }
        }
    }
}

/// The identity of the `hosts.toml` that applies to `registry` now (`None`: none does).
fn stamp(registry: &str, options: &ClientOptions) -> Option<Stamp> {
    let path = hosts::find(options.hosts_dir.as_deref()?, registry)?;
    let meta = std::fs::metadata(&path).ok()?;
    Some(Stamp {
        ino: meta.ino(),
        len: meta.len(),
        modified: meta.modified().ok(),
        path,
    })
}

/// Reads the `hosts.toml` for the registry (if any) and makes its endpoints.
fn build(inputs: &HostInputs, options: &ClientOptions) -> Result<Hosts> {
    let registry = inputs.registry.as_str();
    let file = match &options.hosts_dir {
        Some(dir) => hosts::load(dir, registry)?,
        None => None,
    };
    let mut endpoints = Vec::new();
    let (upstream_root, settings, capabilities) = match file {
        None => (
            inputs.v2_root.clone(),
            Default::default(),
            Capabilities::ALL,
        ),
        Some(file) => {
            for entry in &file.mirrors {
                endpoints.push(Endpoint::mirror(registry, entry, options)?);
            }
            match file.server {
                Some(server) => (server.api_root, file.server_settings, server.capabilities),
                None => (
                    inputs.v2_root.clone(),
                    file.server_settings,
                    Capabilities::ALL,
                ),
            }
        }
    };
    endpoints.push(Endpoint::upstream(
        registry,
        upstream_root,
        inputs.credentials.clone(),
        &settings.headers,
        Tls {
            skip_verify: settings.skip_verify.unwrap_or(false),
            ca: settings.ca,
            client: settings.client,
        },
        capabilities,
    )?);
    if endpoints.len() > 1 {
        let names: Vec<&str> = endpoints.iter().map(|e| e.name.as_str()).collect();
        tracing::debug!(registry, hosts = ?names, "hosts to try");
    }
    Ok(Hosts { endpoints })
}
