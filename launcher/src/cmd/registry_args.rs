//! Registry flags shared by every subcommand that talks to a registry
//! (`pull`, `inspect`, `mount`, `run`, `index`, `profile`, `convert`):
//! `#[command(flatten)]` them.

use anyhow::{bail, Context};
use skiff_proto::image::Platform;
use skiff_proto::reference::Reference;
use skiff_proto::registry::{Client, ClientOptions, Credentials};
use std::io::Read;
use std::path::PathBuf;

/// How to reach and authenticate to the image's registry.
#[derive(clap::Args, Debug, Clone)]
pub struct RegistryArgs {
    /// Platform to pick from a multi-platform image, as os/arch[/variant]
    /// (default: this machine's, e.g. linux/amd64).
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    pub platform: Option<String>,
    /// Reach this registry (host[:port]) over plain HTTP. Repeatable. Loopback
    /// registries (localhost, 127.0.0.0/8, ::1) always use plain HTTP.
    #[arg(long = "insecure-registry", value_name = "HOST[:PORT]")]
    pub insecure_registries: Vec<String>,
    /// User name for the registry (password from --password-stdin). Without it,
    /// credentials come from $DOCKER_CONFIG/config.json or ~/.docker/config.json.
    #[arg(long, requires = "password_stdin")]
    pub username: Option<String>,
    /// Read the registry password from standard input.
    #[arg(long, requires = "username")]
    pub password_stdin: bool,
    /// Mirror configuration in containerd's layout: DIR/<registry host[:port]>/hosts.toml
    /// (or DIR/_default/hosts.toml) lists mirrors and pull-through caches to pull
    /// through before the registry itself.
    #[arg(
        long,
        value_name = "DIR",
        env = "SKIFF_HOSTS_DIR",
        default_value = "/etc/containerd/certs.d"
    )]
    pub hosts_dir: Option<PathBuf>,
    /// Seconds a registry may stay silent on a request (no bytes of an answer) before
    /// the attempt fails and is retried; a hung registry then gives an error instead
    /// of a hang.
    #[arg(
        long,
        value_name = "SECS",
        env = "SKIFF_READ_TIMEOUT",
        default_value_t = 60
    )]
    pub read_timeout: u64,
}

/// The flags' defaults, for the daemon's own requests. (A derived `Default` gave a
/// read timeout of 0 s, which [`RegistryArgs::client_options`] raised to 1 s: the
/// daemon gave up on an attempt after a second of a registry's silence.)
impl Default for RegistryArgs {
    fn default() -> Self {
        RegistryArgs {
            platform: None,
            insecure_registries: Vec::new(),
            username: None,
            password_stdin: false,
            hosts_dir: Some(PathBuf::from("/etc/containerd/certs.d")),
            read_timeout: 60,
        }
    }
}

impl RegistryArgs {
    /// The `--platform` asked for, parsed.
    pub fn platform(&self) -> anyhow::Result<Option<Platform>> {
        self.platform
            .as_deref()
            .map(|p| p.parse::<Platform>())
            .transpose()
            .map_err(Into::into)
    }

    /// Client options from the flags (reads the password from stdin if asked).
    pub fn client_options(&self) -> anyhow::Result<ClientOptions> {
        let credentials = match (&self.username, self.password_stdin) {
            (Some(user), true) => {
                let mut password = String::new();
                std::io::stdin()
                    .read_to_string(&mut password)
                    .context("reading the password from stdin")?;
                let password = password.trim_end_matches(['\n', '\r']);
                if password.is_empty() {
                    bail!("--password-stdin: standard input held no password");
                }
                Some(Credentials::basic(user, password))
            }
            _ => None,
        };
        Ok(ClientOptions {
            credentials,
            insecure_registries: self.insecure_registries.clone(),
            hosts_dir: self.hosts_dir.clone().filter(|d| !d.as_os_str().is_empty()),
            read_timeout: std::time::Duration::from_secs(self.read_timeout.max(1)),
            ..ClientOptions::default()
        })
    }

    /// A client for the registry `reference` names.
    pub fn client_for(&self, reference: &Reference) -> anyhow::Result<Client> {
        Client::new(reference.registry(), self.client_options()?)
            .with_context(|| format!("setting up a client for {}", reference.registry()))
    }
}

impl RegistryArgs {
    /// Parses `image`, makes a client for its registry and resolves it (platform from
    /// `--platform`) on `rt`. Keep `rt` alive while layers are read through
    /// [`skiff_proto::registry::RemoteBlob`]s made from the returned client.
    pub fn resolve(
        &self,
        rt: &tokio::runtime::Runtime,
        image: &str,
    ) -> anyhow::Result<(std::sync::Arc<Client>, skiff_proto::image::ResolvedImage)> {
        let reference = Reference::parse(image)?;
        let platform = self.platform()?;
        let client = std::sync::Arc::new(self.client_for(&reference)?);
        let resolved = rt
            .block_on(client.resolve(&reference, platform.as_ref()))
            .with_context(|| format!("resolving {reference}"))?;
        Ok((client, resolved))
    }
}

/// A tokio runtime for one command (small: the work is network-bound).
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Output format of `inspect` and `images`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    /// Human-readable text.
    #[default]
    Text,
    /// JSON on one document.
    Json,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        registry: RegistryArgs,
    }

    #[test]
    fn the_default_is_what_no_flags_give() {
        let parsed = Cli::parse_from(["skiff"])
            .registry
            .client_options()
            .unwrap();
        let default = RegistryArgs::default().client_options().unwrap();
        assert_eq!(default.read_timeout, std::time::Duration::from_secs(60));
        assert_eq!(default.read_timeout, parsed.read_timeout);
        assert_eq!(default.hosts_dir, parsed.hosts_dir);
        assert_eq!(default.insecure_registries, parsed.insecure_registries);
    }
}
