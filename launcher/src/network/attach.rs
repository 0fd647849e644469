//! A container's network attachments over its life: [`NetworkSetup`] attaches PID 1's
//! network namespace (the runtime's [`Attach`] hook) and detaches it after PID 1
//! exits; [`release`] does the detaching for a container whose skiff was killed.
//!
//! While attached, `<root>/containers/<id>/network.json` (mode 0600) records what DEL
//! needs (the network's config list as used, the runtime config, ADD's result), and
//! the namespace is pinned by a bind mount on `<root>/containers/<id>/netns`: the
//! bridge plugin removes the container's masquerade rules only when it can still
//! enter the namespace and find the interface, so the namespace must outlive PID 1
//! (also when skiff is SIGKILLed and PID 1 dies with it) until DEL has run.
//!
//! Containers on the same user-defined network find each other by name through
//! /etc/hosts: each one's file lists the others, and is rewritten in place (the bind
//! mount follows the inode) whenever a container joins or leaves. The default network
//! `bridge` does not do this, as in docker.

use super::etc::{self, Dns, ExtraHost, Hosts};
use super::ports::PortMapping;
use super::store::{NetworkStore, DEFAULT_NETWORK};
use super::{cni, ports, NetworkError};
use crate::container::main::Attach;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use skiff_proto::store::RootLayout;
use std::path::{Path, PathBuf};

/// The interface name inside the container.
const IFNAME: &str = "eth0";

/// The network flags of `skiff run`.
#[derive(Debug, Clone, Default)]
pub struct NetworkFlags {
    /// `--network`: `bridge` (when absent), `none`, `host` or a network's name.
    pub network: Option<String>,
    /// `-p`.
    pub publish: Vec<String>,
    /// `--dns`.
    pub dns: Vec<String>,
    /// `--dns-search`.
    pub dns_search: Vec<String>,
    /// `--dns-option`.
    pub dns_option: Vec<String>,
    /// `--add-host`.
    pub add_host: Vec<String>,
}

impl NetworkFlags {
    /// What the runtime's namespace setup needs to know: `host` shares skiff's network
    /// namespace; everything else gets its own (`none`: loopback only).
    pub fn namespace_mode(&self) -> String {
        match self.network.as_deref() {
            Some("host") => "host".into(),
            _ => "none".into(),
        }
    }
}

/// How the container is networked.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Mode {
    /// Own namespace, loopback only.
    None,
    /// The host's namespace.
    Host,
    /// Own namespace attached to this network.
    Network(String),
}

/// What `network.json` holds for one container.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct NetworkRecord {
    /// The container's name (what peers call it).
    name: String,
    /// Its hostname.
    hostname: String,
    /// `--add-host` entries with `host-gateway` resolved: (host, ip).
    extra_hosts: Vec<(String, String)>,
    /// Its attachments, in ADD order.
    attachments: Vec<AttachmentRecord>,
}

/// One attachment: what ADD was given and returned, so DEL gets the same.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct AttachmentRecord {
    network: String,
    conflist: Value,
    ifname: String,
    runtime_config: Value,
    /// None while ADD has not finished.
    result: Option<Value>,
}

impl AttachmentRecord {
    fn ip(&self) -> Option<(String, Option<String>)> {
        let result = self.result.as_ref()?;
        serde_json::from_value::<cni::CniResult>(result.clone())
            .ok()?
            .first_ip()
    }
}

/// The network side of one `skiff run`: checked flags, then [`Attach`].
#[derive(Debug)]
pub struct NetworkSetup {
    root: PathBuf,
    id: String,
    name: String,
    hostname: String,
    mode: Mode,
    ports: Vec<PortMapping>,
    dns: Dns,
    extra_hosts: Vec<ExtraHost>,
    attached: bool,
}

impl NetworkSetup {
    /// Checks the flags (and that the network exists; the default one is created on
    /// first use) for container `id` named `name` with `hostname`.
    pub fn new(
        root: &Path,
        flags: &NetworkFlags,
        id: &str,
        name: &str,
        hostname: &str,
    ) -> Result<NetworkSetup, NetworkError> {
        let mode = match flags.network.as_deref() {
            Some("none") => Mode::None,
            Some("host") => Mode::Host,
            other => {
                let store = NetworkStore::new(root);
                let _lock = store.lock()?;
                Mode::Network(store.load(other.unwrap_or(DEFAULT_NETWORK))?.name)
            }
        };
        let ports = flags
            .publish
            .iter()
            .map(|p| ports::parse(p))
            .collect::<Result<Vec<_>, _>>()?;
        let dns = Dns {
            servers: flags.dns.clone(),
            search: flags.dns_search.clone(),
            options: flags.dns_option.clone(),
        };
        etc::check_dns_servers(&dns.servers)?;
        let extra_hosts = flags
            .add_host
            .iter()
            .map(|h| etc::parse_add_host(h))
            .collect::<Result<Vec<_>, _>>()?;
        match mode {
            Mode::Host if !dns.is_empty() => {
                return Err(NetworkError::Conflict(
                    "dns and the network mode (host)".into(),
                ))
            }
            Mode::Host | Mode::None if !ports.is_empty() => {
                return Err(NetworkError::Conflict(
                    "port publishing and the network mode (none or host)".into(),
                ))
            }
            _ => {}
        }
        if !matches!(mode, Mode::Network(_)) && extra_hosts.iter().any(|h| h.ip == "host-gateway") {
            return Err(NetworkError::Conflict(
                "--add-host ...:host-gateway needs a network with a gateway".into(),
            ));
        }
        Ok(NetworkSetup {
            root: root.to_path_buf(),
            id: id.to_string(),
            name: name.to_string(),
            hostname: hostname.to_string(),
            mode,
            ports,
            dns,
            extra_hosts,
            attached: false,
        })
    }

    fn attach_network(&mut self, pid1: i32, network: &str) -> Result<(), NetworkError> {
        let store = NetworkStore::new(&self.root);
        let _lock = store.lock()?;
        let conflist = store.load(network)?.conflist;
        let paths = RootLayout::new(&self.root).container(&self.id);
        let netns = netns_path(paths.dir());
        self.attached = true;
        pin(pid1, &netns)?;
        let mut record = NetworkRecord {
            name: self.name.clone(),
            hostname: self.hostname.clone(),
            extra_hosts: Vec::new(),
            attachments: vec![AttachmentRecord {
                network: network.to_string(),
                conflist,
                ifname: IFNAME.to_string(),
                runtime_config: json!({ "portMappings": self.ports }),
                result: None,
            }],
        };
        // Saved before ADD, so that a skiff killed during ADD still gets its DEL.
        save_record(paths.dir(), &record)?;
        let att = &record.attachments[0];
        let result = cni::add(
            &att.conflist,
            &cni::Attachment {
                container_id: &self.id,
                netns: &netns,
                ifname: &att.ifname,
                runtime_config: &att.runtime_config,
            },
        )?;
        record.attachments[0].result = Some(result);
        let gateway = record.attachments[0].ip().and_then(|(_, gw)| gw);
        record.extra_hosts = self.resolve_extra_hosts(gateway.as_deref())?;
        save_record(paths.dir(), &record)?;
        tracing::debug!(network, ip = ?record.attachments[0].ip(), "attached");
        // This container's file first, then every peer's (they now list it).
        write_hosts(&self.root, &self.id, &record)?;
        for peer in peers_sharing(&self.root, &self.id, &record) {
            refresh_hosts(&self.root, &peer);
        }
        Ok(())
    }

    /// `--add-host` entries as (host, ip), `host-gateway` as `gateway`.
    fn resolve_extra_hosts(
        &self,
        gateway: Option<&str>,
    ) -> Result<Vec<(String, String)>, NetworkError> {
        self.extra_hosts
            .iter()
            .map(|h| {
                let ip = if h.ip == "host-gateway" {
                    gateway.map(str::to_string).ok_or_else(|| {
                        NetworkError::Conflict("host-gateway on a network without gateway".into())
                    })?
                } else {
                    h.ip.clone()
                };
                Ok((h.host.clone(), ip))
            })
            .collect()
    }

    fn write_resolv(&self) -> Result<(), NetworkError> {
        if self.dns.is_empty() {
            return Ok(());
        }
        let path = RootLayout::new(&self.root)
            .container(&self.id)
            .etc()
            .join("resolv.conf");
        let base = std::fs::read_to_string(&path).map_err(|e| NetworkError::io(&path, e))?;
        std::fs::write(&path, self.dns.apply(&base)).map_err(|e| NetworkError::io(&path, e))
    }

    fn attach_inner(&mut self, pid1: i32) -> Result<(), NetworkError> {
        self.write_resolv()?;
        match self.mode.clone() {
            Mode::Network(network) => self.attach_network(pid1, &network),
            Mode::None | Mode::Host if !self.extra_hosts.is_empty() => {
                let record = NetworkRecord {
                    name: self.name.clone(),
                    hostname: self.hostname.clone(),
                    extra_hosts: self.resolve_extra_hosts(None)?,
                    attachments: Vec::new(),
                };
                write_hosts(&self.root, &self.id, &record)
            }
            Mode::None | Mode::Host => Ok(()),
        }
    }
}

impl Attach for NetworkSetup {
    fn attach(&mut self, pid1: i32) -> Result<(), String> {
        self.attach_inner(pid1).map_err(|e| e.to_string())
    }

    fn detach(&mut self) {
        if std::mem::take(&mut self.attached) {
            if let Err(e) = release(&self.root, &self.id) {
                eprintln!("skiff: tearing down the network of {}: {e}", self.id);
            }
        }
    }
}

fn netns_path(container_dir: &Path) -> PathBuf {
    container_dir.join("netns")
}

fn record_path(container_dir: &Path) -> PathBuf {
    container_dir.join("network.json")
}

fn save_record(container_dir: &Path, record: &NetworkRecord) -> Result<(), NetworkError> {
    let path = record_path(container_dir);
    let json = serde_json::to_vec_pretty(record).expect("json");
    skiff_proto::store::write_private(&path, &json).map_err(|e| NetworkError::io(&path, e))
}

fn load_record(container_dir: &Path) -> Option<NetworkRecord> {
    let bytes = std::fs::read(record_path(container_dir)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Keeps PID 1's network namespace alive on `path` (a bind mount of its nsfs file).
fn pin(pid1: i32, path: &Path) -> Result<(), NetworkError> {
    let pin_err = |e| NetworkError::Pin(path.display().to_string(), e);
    skiff_proto::store::write_private(path, b"")
        .map_err(|e| pin_err(nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(0))))?;
    nix::mount::mount(
        Some(Path::new(&format!("/proc/{pid1}/ns/net"))),
        path,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(pin_err)
}

/// Lets go of a pinned namespace (it ends once no process is in it).
fn unpin(path: &Path) {
    let _ = nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH);
    let _ = std::fs::remove_file(path);
}

/// Detaches container `id` from its networks: CNI DEL of every attachment (in reverse
/// order), unpins its namespace, removes its record and the other containers' hosts
/// entries for it. Does nothing for a container that was never attached. Used at the
/// end of `skiff run` and by the cleanup of containers whose skiff was killed.
pub fn release(root: &Path, id: &str) -> Result<(), NetworkError> {
    let paths = RootLayout::new(root).container(id);
    let dir = paths.dir();
    let netns = netns_path(dir);
    if !record_path(dir).exists() && !netns.exists() {
        return Ok(());
    }
    let store = NetworkStore::new(root);
    let _lock = store.lock()?;
    let record = load_record(dir).unwrap_or_default();
    let mut first_err = None;
    for att in record.attachments.iter().rev() {
        let deleted = cni::del(
            &att.conflist,
            &cni::Attachment {
                container_id: id,
                netns: &netns,
                ifname: &att.ifname,
                runtime_config: &att.runtime_config,
            },
            att.result.as_ref(),
        );
        if let Err(e) = deleted {
            first_err.get_or_insert(e);
        }
    }
    unpin(&netns);
    let peers = peers_sharing(root, id, &record);
    let _ = std::fs::remove_file(record_path(dir));
    for peer in peers {
        refresh_hosts(root, &peer);
    }
    first_err.map_or(Ok(()), Err)
}

/// Names of the containers attached to `network` (for `skiff network rm`). Records of
/// containers whose skiff was killed are gone once `state::list` has cleaned them up.
pub fn users_of(root: &Path, network: &str) -> Vec<String> {
    other_records(root, "")
        .into_iter()
        .filter(|(_, r)| r.attachments.iter().any(|a| a.network == network))
        .map(|(_, r)| r.name)
        .collect()
}

/// User-defined networks of a record (the default network has no name resolution).
fn user_networks(record: &NetworkRecord) -> Vec<&str> {
    record
        .attachments
        .iter()
        .map(|a| a.network.as_str())
        .filter(|n| *n != DEFAULT_NETWORK)
        .collect()
}

/// Every other attached container: (id, record).
fn other_records(root: &Path, id: &str) -> Vec<(String, NetworkRecord)> {
    let layout = RootLayout::new(root);
    let Ok(entries) = std::fs::read_dir(layout.containers()) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|other| other != id)
        .filter_map(|other| {
            let rec = load_record(layout.container(&other).dir())?;
            Some((other, rec))
        })
        .collect()
}

/// Ids of other containers on one of `record`'s user-defined networks.
fn peers_sharing(root: &Path, id: &str, record: &NetworkRecord) -> Vec<String> {
    let mine = user_networks(record);
    other_records(root, id)
        .into_iter()
        .filter(|(_, r)| user_networks(r).iter().any(|n| mine.contains(n)))
        .map(|(other, _)| other)
        .collect()
}

/// (address, name) of every other container on `record`'s user-defined networks.
fn peer_entries(root: &Path, id: &str, record: &NetworkRecord) -> Vec<(String, String)> {
    let mine = user_networks(record);
    let mut out = Vec::new();
    for (_, other) in other_records(root, id) {
        for att in &other.attachments {
            if !mine.contains(&att.network.as_str()) {
                continue;
            }
            if let Some((ip, _)) = att.ip() {
                let names = if other.hostname != other.name {
                    format!("{} {}", other.name, other.hostname)
                } else {
                    other.name.clone()
                };
                out.push((ip, names));
            }
        }
    }
    out.sort();
    out
}

/// Writes container `id`'s /etc/hosts from its record and its peers' (in place).
fn write_hosts(root: &Path, id: &str, record: &NetworkRecord) -> Result<(), NetworkError> {
    let peers = peer_entries(root, id, record);
    let hosts = Hosts {
        extra: &record.extra_hosts,
        own_ip: record
            .attachments
            .first()
            .and_then(AttachmentRecord::ip)
            .map(|(ip, _)| ip),
        hostname: &record.hostname,
        peers: &peers,
    };
    let path = RootLayout::new(root).container(id).etc().join("hosts");
    // Truncate and write keeps the inode the container has bind-mounted.
    std::fs::write(&path, hosts.render()).map_err(|e| NetworkError::io(&path, e))
}

/// Rewrites a peer's /etc/hosts after a container joined or left; a failure only
/// costs that peer a stale name, so it is logged.
fn refresh_hosts(root: &Path, peer: &str) {
    let Some(record) = load_record(RootLayout::new(root).container(peer).dir()) else {
        return;
    };
    if let Err(e) = write_hosts(root, peer, &record) {
        tracing::warn!("updating the hosts file of {peer}: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str, network: &str, ip: &str) -> NetworkRecord {
        NetworkRecord {
            name: name.into(),
            hostname: name.into(),
            extra_hosts: Vec::new(),
            attachments: vec![AttachmentRecord {
                network: network.into(),
                conflist: json!({}),
                ifname: IFNAME.into(),
                runtime_config: json!({}),
                result: Some(json!({"ips": [{"address": format!("{ip}/24")}]})),
            }],
        }
    }

    #[test]
    fn peers_on_user_networks_are_listed_and_refreshed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let layout = RootLayout::new(root);
        for (id, rec) in [
            ("a1", record("a", "net1", "10.90.0.2")),
            ("b1", record("b", "net1", "10.90.0.3")),
            ("c1", record("c", "net2", "10.90.1.2")),
            ("d1", record("d", DEFAULT_NETWORK, "10.89.0.2")),
            ("e1", record("e", DEFAULT_NETWORK, "10.89.0.3")),
        ] {
            let paths = layout.container(id);
            std::fs::create_dir_all(paths.etc()).unwrap();
            save_record(paths.dir(), &rec).unwrap();
        }
        let a = load_record(layout.container("a1").dir()).unwrap();
        assert_eq!(peers_sharing(root, "a1", &a), ["b1"]);
        assert_eq!(
            peer_entries(root, "a1", &a),
            [("10.90.0.3".to_string(), "b".to_string())]
        );
        let d = load_record(layout.container("d1").dir()).unwrap();
        assert!(peers_sharing(root, "d1", &d).is_empty());
        write_hosts(root, "a1", &a).unwrap();
        let hosts = std::fs::read_to_string(layout.container("a1").etc().join("hosts")).unwrap();
        assert!(hosts.contains("10.90.0.2\ta\n"), "{hosts}");
        assert!(hosts.ends_with("10.90.0.3\tb\n"), "{hosts}");
        // b leaves (no netns pinned in this test, so no plugin runs): a's file drops it.
        std::fs::remove_file(record_path(layout.container("b1").dir())).unwrap();
        refresh_hosts(root, "a1");
        let hosts = std::fs::read_to_string(layout.container("a1").etc().join("hosts")).unwrap();
        assert!(!hosts.contains("10.90.0.3"), "{hosts}");
    }
}
