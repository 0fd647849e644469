//! Container networking through CNI: `--network bridge` (the default, bridge `skiff0`
//! with outbound NAT), named networks from `skiff network create`, `none` and `host`;
//! `-p` through the portmap plugin; `--dns*` and `--add-host` in the container's
//! /etc files.
//!
//! skiff calls Debian's `containernetworking-plugins` itself ([`cni`]), with network
//! configs it keeps under `<root>/networks` ([`store`]). [`attach::NetworkSetup`] is the
//! runtime's [`crate::container::main::Attach`] hook: once PID 1's network namespace
//! exists it pins it to `<root>/containers/<id>/netns`, runs CNI ADD, records the
//! attachment in `<root>/containers/<id>/network.json` and writes /etc/hosts and
//! /etc/resolv.conf; after PID 1 exits it runs CNI DEL and unpins. If skiff is killed
//! instead, the next command's stale-container cleanup calls [`attach::release`].

pub mod attach;
pub mod cni;
pub mod etc;
pub mod ipv4;
pub mod ports;
pub mod store;

pub use attach::NetworkSetup;

use std::path::Path;

/// Errors of networking.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What went wrong.
        source: std::io::Error,
    },
    /// A network config is not what skiff expects.
    #[error("bad network config: {0}")]
    BadConfig(String),
    /// `--network NAME` names no network.
    #[error("network {0} not found")]
    NoSuchNetwork(String),
    /// `skiff network create` of a name in use.
    #[error("network with name {0} already exists")]
    NetworkExists(String),
    /// A network name that is reserved or has characters docker refuses.
    #[error("invalid network name {0:?}: use letters, digits and _.- (not none, host or default)")]
    BadName(String),
    /// `--subnet` overlaps another network's.
    #[error("subnet {0} overlaps network {1}")]
    SubnetInUse(String, String),
    /// `--subnet` is not an IPv4 subnet.
    #[error("invalid subnet {0:?}: expected A.B.C.D/N with N at most 30 and no host bits")]
    BadSubnet(String),
    /// Every /24 of 10.90.0.0/16 is in use.
    #[error("no free subnet left in 10.90.0.0/16; give one with --subnet")]
    NoFreeSubnet,
    /// `skiff network rm` of a network containers use.
    #[error("network {0} is in use by container(s) {1}")]
    InUse(String, String),
    /// A bad `-p` value.
    #[error("invalid -p {0:?}: {1}")]
    BadPublish(String, String),
    /// A bad `--add-host` value.
    #[error("invalid --add-host {0:?}: expected HOST:IP (IP may be host-gateway)")]
    BadAddHost(String),
    /// A bad `--dns` value.
    #[error("invalid --dns {0:?}: not an IP address")]
    BadDns(String),
    /// Flags that do not go with the network mode.
    #[error("conflicting options: {0}")]
    Conflict(String),
    /// No plugin binary for a config's `type`.
    #[error("cni plugin {0} not found (install containernetworking-plugins, or set CNI_PATH)")]
    MissingPlugin(String),
    /// A plugin failed.
    #[error("cni plugin {plugin} {command} failed: {msg}")]
    Plugin {
        /// The plugin type.
        plugin: String,
        /// ADD, DEL or CHECK.
        command: String,
        /// Its error message.
        msg: String,
    },
    /// Pinning the network namespace failed.
    #[error("pinning the network namespace at {0}: {1}")]
    Pin(String, nix::errno::Errno),
}

impl NetworkError {
    fn io(path: &Path, source: std::io::Error) -> NetworkError {
        NetworkError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}
