//! One host a [`super::Client`]'s requests can go to: a mirror from `hosts.toml`, or the
//! registry's own server (always last). Each holds what is particular to it: where its
//! API root is, its TLS settings and HTTP client, its credentials and tokens (a mirror
//! never gets the registry's), the redirects it gave, and whether it failed lately.

use super::auth::AuthState;
use super::credentials::{self, Credentials};
use super::error::{RegistryError, Result};
use super::hosts::{self, Capabilities, HostEntry, HostsError};
use super::options::ClientOptions;
use crate::digest::Digest;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};
use url::Url;

/// How long a mirror that failed is skipped before it is tried again.
const MIRROR_COOL_DOWN: Duration = Duration::from_secs(30);

/// What a request needs from a host, to pick the hosts that may serve it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Route {
    /// Only the registry itself (pushes, uploads, registry-wide requests, referrers).
    Upstream,
    /// Content by digest: mirrors with `pull`, then the registry.
    Pull,
    /// A manifest by tag: mirrors with `resolve`, then the registry.
    Resolve,
}

/// TLS settings of one host.
#[derive(Clone, Debug, Default)]
pub(crate) struct Tls {
    pub skip_verify: bool,
    pub ca: Vec<PathBuf>,
    pub client: Vec<(PathBuf, Option<PathBuf>)>,
}

/// One host requests can be sent to.
pub(crate) struct Endpoint {
    /// `host[:port]`, for logs and "served by".
    pub name: String,
    /// Where `/v2/` of the distribution API is on this host (ends in `/`).
    pub api_root: Url,
    /// `?ns=<registry>` added to every request (containerd's marker for mirrors).
    pub ns: Option<String>,
    /// Whether this is a mirror (not the registry's own server).
    pub is_mirror: bool,
    pub capabilities: Capabilities,
    pub headers: HeaderMap,
    tls: Tls,
    http: OnceLock<reqwest::Client>,
    /// The registry's credentials for its own server; a mirror's own from the Docker
    /// config, if any.
    pub credentials: Option<Credentials>,
    pub auth: Mutex<AuthState>,
    /// Where this host last redirected each blob (to skip the hop next time).
    pub redirects: Mutex<HashMap<Digest, Url>>,
    /// A mirror that failed is skipped until then.
    down_until: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("api_root", &self.api_root.as_str())
            .field("is_mirror", &self.is_mirror)
            .finish_non_exhaustive()
    }
}

/// Whether requests to `host` for `registry` carry `?ns=`: containerd adds it whenever
/// the host is not the registry itself (Docker Hub's API host counts as itself).
fn needs_ns(host: &str, registry: &str) -> bool {
    host != registry && !(registry == "docker.io" && host == "registry-1.docker.io")
}

fn header_map(pairs: &[(String, String)]) -> std::result::Result<HeaderMap, String> {
    let mut map = HeaderMap::new();
    for (k, v) in pairs {
        let name =
            HeaderName::from_bytes(k.as_bytes()).map_err(|e| format!("header {k:?}: {e}"))?;
        let value = HeaderValue::from_str(v).map_err(|e| format!("header {k:?}: {e}"))?;
        map.append(name, value);
    }
    Ok(map)
}

impl Endpoint {
    /// The registry's own server at `api_root`.
    pub fn upstream(
        registry: &str,
        api_root: Url,
        credentials: Option<Credentials>,
        headers: &[(String, String)],
        tls: Tls,
        capabilities: Capabilities,
    ) -> Result<Endpoint> {
        let name = hosts::authority(&api_root);
        let headers = header_map(headers).map_err(|message| hosts_invalid(&name, message))?;
        Ok(Endpoint {
            ns: needs_ns(&name, registry).then(|| registry.to_string()),
            name,
            api_root,
            is_mirror: false,
            capabilities,
            headers,
            tls,
            http: OnceLock::new(),
            credentials,
            auth: Mutex::new(AuthState::default()),
            redirects: Mutex::new(HashMap::new()),
            down_until: Mutex::new(None),
        })
    }

    /// A mirror of `registry` from a `hosts.toml` entry. Its credentials come only from
    /// the Docker config under the mirror's own name.
    pub fn mirror(registry: &str, entry: &HostEntry, options: &ClientOptions) -> Result<Endpoint> {
        let name = entry.authority();
        let credentials = if options.use_docker_config {
            // A broken credential helper for a mirror must not stop the pull.
            credentials::from_docker_config(&name).unwrap_or_else(|e| {
                tracing::warn!(mirror = %name, error = %e, "ignoring mirror credentials");
                None
            })
        } else {
            None
        };
        let headers =
            header_map(&entry.headers).map_err(|message| hosts_invalid(&name, message))?;
        Ok(Endpoint {
            ns: needs_ns(&name, registry).then(|| registry.to_string()),
            name,
            api_root: entry.api_root.clone(),
            is_mirror: true,
            capabilities: entry.capabilities,
            headers,
            tls: Tls {
                skip_verify: entry.skip_verify.unwrap_or(false),
                ca: entry.ca.clone(),
                client: entry.client.clone(),
            },
            http: OnceLock::new(),
            credentials,
            auth: Mutex::new(AuthState::default()),
            redirects: Mutex::new(HashMap::new()),
            down_until: Mutex::new(None),
        })
    }

    /// Whether this host may serve a request on `route` now.
    pub fn serves(&self, route: Route) -> bool {
        if !self.is_mirror {
            return true;
        }
        let capable = match route {
            Route::Upstream => false,
            Route::Pull => self.capabilities.pull,
            Route::Resolve => self.capabilities.resolve,
        };
        capable && !self.is_down()
    }

    fn is_down(&self) -> bool {
        let down = self.down_until.lock().unwrap_or_else(|p| p.into_inner());
        down.is_some_and(|until| Instant::now() < until)
    }

    /// Skips this mirror for a while after it failed (the registry itself is never
    /// skipped: it is the last resort).
    pub fn mark_down(&self) {
        if self.is_mirror {
            *self.down_until.lock().unwrap_or_else(|p| p.into_inner()) =
                Some(Instant::now() + MIRROR_COOL_DOWN);
        }
    }

    /// `url` (a request URL under `v2_root`, the registry's default `/v2/`) moved onto
    /// this host, with `?ns=` when this host is not the registry. URLs elsewhere (upload
    /// locations, redirect targets) are returned as they are.
    pub fn map_url(&self, url: &Url, v2_root: &Url) -> Url {
        let Some(rest) = url.as_str().strip_prefix(v2_root.as_str()) else {
            return url.clone();
        };
        let Ok(mut mapped) = Url::parse(&format!("{}{rest}", self.api_root)) else {
            return url.clone();
        };
        if let Some(ns) = &self.ns {
            mapped.query_pairs_mut().append_pair("ns", ns);
        }
        mapped
    }

    /// Whether `url` is on this host (where its `Authorization` may go).
    pub fn same_origin(&self, url: &Url) -> bool {
        url.scheme() == self.api_root.scheme()
            && url.host_str() == self.api_root.host_str()
            && url.port_or_known_default() == self.api_root.port_or_known_default()
    }

    /// The HTTP client for this host, built on first use; a host without TLS settings
    /// of its own takes the process's shared one ([`prepare_http`]).
    pub fn http(&self, options: &ClientOptions) -> Result<&reqwest::Client> {
        if let Some(c) = self.http.get() {
            return Ok(c);
        }
        let plain = !self.tls.skip_verify && self.tls.ca.is_empty() && self.tls.client.is_empty();
        let built = if plain {
            shared_http(options).map_err(|e| self.init_error(e))?
        } else {
            self.own_http(options)?
        };
        Ok(self.http.get_or_init(|| built))
    }

    fn init_error(&self, source: reqwest::Error) -> RegistryError {
        RegistryError::Network {
            method: "INIT".into(),
            url: self.api_root.to_string(),
            source,
        }
    }

    /// A client with this host's CA files, client identity or unverified certificates.
    fn own_http(&self, options: &ClientOptions) -> Result<reqwest::Client> {
        let mut builder = http_builder(options);
        if self.tls.skip_verify {
            builder = builder.tls_danger_accept_invalid_certs(true);
        }
        let tls_err = |message: String| {
            RegistryError::Hosts(HostsError::Tls {
                host: self.name.clone(),
                message,
            })
        };
        let read = |p: &PathBuf| {
            std::fs::read(p).map_err(|e| tls_err(format!("reading {}: {e}", p.display())))
        };
        let mut roots = Vec::new();
        for file in &self.tls.ca {
            let certs = reqwest::Certificate::from_pem_bundle(&read(file)?)
                .map_err(|e| tls_err(format!("{}: {e}", file.display())))?;
            roots.extend(certs);
        }
        if !roots.is_empty() {
            builder = builder.tls_certs_merge(roots);
        }
        // rustls takes one client identity; containerd offers each pair in turn, which
        // in practice means the first one.
        if let Some((cert, key)) = self.tls.client.first() {
            let mut pem = read(cert)?;
            if let Some(key) = key {
                pem.push(b'\n');
                pem.extend(read(key)?);
            }
            let identity = reqwest::Identity::from_pem(&pem)
                .map_err(|e| tls_err(format!("client {}: {e}", cert.display())))?;
            builder = builder.identity(identity);
        }
        builder.build().map_err(|e| self.init_error(e))
    }
}

/// A client builder with the settings every host's client has.
fn http_builder(options: &ClientOptions) -> reqwest::ClientBuilder {
    // reqwest is built without a crypto provider (its default one, aws-lc-rs, needs
    // cmake and more to build); ring it is. An error only means one is installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .user_agent(concat!("skiff/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(options.connect_timeout)
        .read_timeout(options.read_timeout)
}

/// The clients of hosts without TLS settings of their own, by (connect, read)
/// timeouts: one per process, so the system's CA roots are loaded once. Building a
/// client loads them (rustls's platform verifier: ~10 ms), and a daemon's first
/// request to a registry waited for that three times over (the manifest and two
/// layer tails each built one at once) on the way to the container's first view.
static SHARED_HTTP: Mutex<Vec<((Duration, Duration), reqwest::Client)>> = Mutex::new(Vec::new());

/// The shared client for `options`' timeouts, built now if there is none yet.
fn shared_http(options: &ClientOptions) -> std::result::Result<reqwest::Client, reqwest::Error> {
    let key = (options.connect_timeout, options.read_timeout);
    let mut shared = SHARED_HTTP.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, c)) = shared.iter().find(|(k, _)| *k == key) {
        return Ok(c.clone());
    }
    let built = http_builder(options).build()?;
    shared.push((key, built.clone()));
    Ok(built)
}

/// Builds the shared HTTP client for `options` now (a daemon at start-up), so that
/// the first request to a registry does not wait for it. A failure is left for that
/// request to report.
pub fn prepare_http(options: &ClientOptions) {
    if let Err(e) = shared_http(options) {
        tracing::debug!(error = %e, "building the shared HTTP client");
    }
}

fn hosts_invalid(host: &str, message: String) -> RegistryError {
    RegistryError::Hosts(HostsError::Invalid {
        path: PathBuf::from(host),
        message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(url: &str, caps: Capabilities) -> HostEntry {
        HostEntry {
            api_root: Url::parse(url).unwrap(),
            capabilities: caps,
            skip_verify: None,
            ca: vec![],
            client: vec![],
            headers: vec![],
        }
    }

    fn opts() -> ClientOptions {
        ClientOptions {
            use_docker_config: false,
            ..Default::default()
        }
    }

    #[test]
    fn mirror_urls_carry_ns_and_their_api_root() {
        let v2 = Url::parse("https://registry-1.docker.io/v2/").unwrap();
        let m = Endpoint::mirror(
            "docker.io",
            &entry("http://mirror:5000/cache/", Capabilities::ALL),
            &opts(),
        )
        .unwrap();
        let url =
            Url::parse("https://registry-1.docker.io/v2/library/busybox/blobs/sha256:ab").unwrap();
        assert_eq!(
            m.map_url(&url, &v2).as_str(),
            "http://mirror:5000/cache/library/busybox/blobs/sha256:ab?ns=docker.io"
        );
        let q = Url::parse("https://registry-1.docker.io/v2/a/referrers/sha256:x?artifactType=t")
            .unwrap();
        assert_eq!(
            m.map_url(&q, &v2).as_str(),
            "http://mirror:5000/cache/a/referrers/sha256:x?artifactType=t&ns=docker.io"
        );
        // Elsewhere (an upload location): untouched.
        let other = Url::parse("https://cdn.example/blob").unwrap();
        assert_eq!(m.map_url(&other, &v2), other);
        // The registry itself: no ns (Docker Hub's API host is the registry).
        let up = Endpoint::upstream(
            "docker.io",
            v2.clone(),
            None,
            &[],
            Tls::default(),
            Capabilities::ALL,
        )
        .unwrap();
        assert_eq!(up.map_url(&url, &v2), url);
    }

    #[test]
    fn host_selection_follows_capabilities_and_health() {
        let pull_only = Endpoint::mirror(
            "r:5000",
            &entry(
                "http://m/v2/",
                Capabilities {
                    pull: true,
                    resolve: false,
                    push: false,
                },
            ),
            &opts(),
        )
        .unwrap();
        assert!(pull_only.serves(Route::Pull));
        assert!(!pull_only.serves(Route::Resolve));
        assert!(!pull_only.serves(Route::Upstream));
        pull_only.mark_down();
        assert!(!pull_only.serves(Route::Pull));
        let up = Endpoint::upstream(
            "r:5000",
            Url::parse("http://r:5000/v2/").unwrap(),
            None,
            &[],
            Tls::default(),
            Capabilities::ALL,
        )
        .unwrap();
        up.mark_down();
        assert!(up.serves(Route::Upstream) && up.serves(Route::Resolve));
        assert!(up.ns.is_none());
    }
}
