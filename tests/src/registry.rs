//! A real `docker-registry` on a free loopback port, killed on drop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// How the registry authenticates clients.
#[derive(Clone, Debug, Default)]
pub enum Auth {
    /// Anyone may pull and push.
    #[default]
    None,
    /// htpasswd Basic auth with one user.
    Basic {
        /// User name.
        username: String,
        /// Password.
        password: String,
    },
    /// Bearer tokens from a [`crate::token::TokenIssuer`].
    Token {
        /// The issuer's token endpoint URL.
        realm: String,
        /// The service name tokens are issued for.
        service: String,
        /// The issuer name in tokens.
        issuer: String,
        /// PEM certificate bundle the registry trusts.
        rootcertbundle: PathBuf,
    },
}

/// Options for [`Registry::start_with`].
#[derive(Clone, Debug, Default)]
pub struct RegistryOptions {
    /// Authentication.
    pub auth: Auth,
    /// Storage directory to use instead of a fresh one (to share storage between two
    /// registries, e.g. one behind auth and one without).
    pub storage: Option<PathBuf>,
    /// Address to listen on instead of 127.0.0.1 (e.g. a non-loopback address, to test
    /// that Skiff insists on HTTPS there unless told the registry is insecure).
    pub bind_ip: Option<std::net::IpAddr>,
    /// Serve HTTPS with this (certificate chain, key) pair of PEM files.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// With `tls`: require client certificates signed by this CA (mutual TLS).
    pub client_ca: Option<PathBuf>,
    /// Run as a pull-through cache of this registry URL (`proxy.remoteurl`, e.g.
    /// `http://127.0.0.1:PORT`); such a registry refuses pushes.
    pub proxy_remote: Option<String>,
}

/// A running `docker-registry`. Stopped (killed and reaped) on drop.
pub struct Registry {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
    storage: PathBuf,
}

impl Registry {
    /// An open registry (no auth) with fresh storage.
    pub fn start() -> Registry {
        Registry::start_with(RegistryOptions::default())
    }

    /// A registry requiring htpasswd Basic auth for `username`/`password`.
    pub fn start_basic(username: &str, password: &str) -> Registry {
        Registry::start_with(RegistryOptions {
            auth: Auth::Basic {
                username: username.into(),
                password: password.into(),
            },
            ..Default::default()
        })
    }

    /// A registry started with `options`. Panics (with the registry's log) if it does
    /// not come up.
    pub fn start_with(options: RegistryOptions) -> Registry {
        let dir = tempfile::Builder::new()
            .prefix("skiff-registry-")
            .tempdir()
            .expect("temp dir");
        let storage = options
            .storage
            .clone()
            .unwrap_or_else(|| dir.path().join("storage"));
        std::fs::create_dir_all(&storage).expect("storage dir");
        let auth = match &options.auth {
            Auth::None => String::new(),
            Auth::Basic { username, password } => {
                let out = Command::new("htpasswd")
                    .args(["-Bbn", username, password])
                    .output()
                    .expect("running htpasswd (apt-get install apache2-utils)");
                assert!(out.status.success(), "htpasswd failed: {out:?}");
                let file = dir.path().join("htpasswd");
                std::fs::write(&file, &out.stdout).expect("writing htpasswd");
                format!(
                    "auth:\n  htpasswd:\n    realm: skiff-test\n    path: {}\n",
                    file.display()
                )
            }
            Auth::Token {
                realm,
                service,
                issuer,
                rootcertbundle,
            } => format!(
                "auth:\n  token:\n    realm: {realm}\n    service: {service}\n    issuer: {issuer}\n    rootcertbundle: {}\n",
                rootcertbundle.display()
            ),
        };
        // Retry on the rare race where the free port is taken before the registry binds.
        for _ in 0..5 {
            let port = crate::free_port();
            let ip = options
                .bind_ip
                .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
            let addr = SocketAddr::new(ip, port);
            let tls = match &options.tls {
                Some((cert, key)) => format!(
                    "  tls:\n    certificate: {}\n    key: {}\n{}",
                    cert.display(),
                    key.display(),
                    options
                        .client_ca
                        .as_ref()
                        .map(|ca| format!("    clientcas:\n      - {}\n", ca.display()))
                        .unwrap_or_default()
                ),
                None => String::new(),
            };
            let proxy = match &options.proxy_remote {
                Some(url) => format!("proxy:\n  remoteurl: {url}\n"),
                None => String::new(),
            };
            let config = dir.path().join("config.yml");
            std::fs::write(
                &config,
                format!(
                    "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n  cache:\n    blobdescriptor: inmemory\nhttp:\n  addr: {addr}\n  secret: skiff-test-secret\n{tls}{auth}{proxy}",
                    storage.display()
                ),
            )
            .expect("writing registry config");
            let log = std::fs::File::create(dir.path().join("registry.log")).expect("log file");
            let mut child = Command::new("docker-registry")
                .arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log fd"))
                .stderr(log)
                .spawn()
                .expect("starting docker-registry (apt-get install docker-registry)");
            if crate::wait_for_port(addr, Duration::from_secs(15)) {
                return Registry {
                    child,
                    addr,
                    dir,
                    storage,
                };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let log = std::fs::read_to_string(dir.path().join("registry.log")).unwrap_or_default();
        panic!("docker-registry did not start; log:\n{log}");
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `IP:PORT` (usually `127.0.0.1:PORT`), the registry part of references.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// `127.0.0.1:PORT/<repo_and_tag>` as a reference string.
    pub fn reference(&self, repo_and_tag: &str) -> String {
        format!("{}/{repo_and_tag}", self.host())
    }

    /// The storage directory.
    pub fn storage(&self) -> &Path {
        &self.storage
    }

    /// Where the registry keeps blob `d` on disk (to corrupt or remove it in a test).
    pub fn stored_blob(&self, d: &skiff_proto::Digest) -> PathBuf {
        let hex = d.hex();
        self.storage
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// The registry's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
