//! Networks: CNI network config lists (`.conflist`) under `<root>/networks`, mode 0600,
//! one per network, named after it. The default network `bridge` (bridge `skiff0`,
//! subnet [`DEFAULT_SUBNET`]) is written on first use; `skiff network create` adds
//! others, each with its own bridge (`skiff1`, `skiff2`, …) and subnet. host-local
//! keeps its leases under `<root>/networks/ipam/<network>/`, not in /var/lib/cni.

use super::ipv4::Ipv4Net;
use super::{cni, NetworkError};
use serde_json::{json, Value};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

/// The network `skiff run` uses without `--network`, as docker's `bridge`.
pub const DEFAULT_NETWORK: &str = "bridge";
/// The default network's Linux bridge.
pub const DEFAULT_BRIDGE: &str = "skiff0";
/// The default network's subnet (podman's is 10.88.0.0/16, docker's 172.17.0.0/16).
pub const DEFAULT_SUBNET: &str = "10.89.0.0/16";
/// Where subnets of named networks come from, one /24 each, the first free one.
const NAMED_SUBNETS: &str = "10.90.0.0/16";
/// Names `--network` gives other meanings.
const RESERVED: &[&str] = &["none", "host", "default"];

/// One stored network.
#[derive(Debug, Clone)]
pub struct Network {
    /// Its name (`--network NAME`).
    pub name: String,
    /// The CNI network config list as stored.
    pub conflist: Value,
}

impl Network {
    /// The bridge plugin's config (the first plugin), if the network has one.
    fn bridge_plugin(&self) -> Option<&Value> {
        self.conflist["plugins"]
            .as_array()?
            .iter()
            .find(|p| p["type"] == "bridge")
    }

    /// The Linux bridge's name.
    pub fn bridge(&self) -> Option<&str> {
        self.bridge_plugin()?["bridge"].as_str()
    }

    /// The first IPAM range's subnet.
    pub fn subnet(&self) -> Option<Ipv4Net> {
        let s = self.bridge_plugin()?["ipam"]["ranges"][0][0]["subnet"].as_str()?;
        Ipv4Net::parse(s)
    }
}

/// The networks of one skiff root.
pub struct NetworkStore {
    dir: PathBuf,
}

impl NetworkStore {
    /// The networks under `<root>/networks`.
    pub fn new(root: &Path) -> NetworkStore {
        NetworkStore {
            dir: root.join("networks"),
        }
    }

    /// The directory host-local keeps its leases in.
    pub fn ipam_dir(&self) -> PathBuf {
        self.dir.join("ipam")
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.conflist"))
    }

    /// Takes the lock that serialises network changes and attachments in this root
    /// (`<root>/networks/.lock`), released when the guard drops.
    pub fn lock(&self) -> Result<nix::fcntl::Flock<std::fs::File>, NetworkError> {
        self.ensure_dir()?;
        let path = self.dir.join(".lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| NetworkError::io(&path, e))?;
        nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| NetworkError::io(&path, e.into()))
    }

    fn ensure_dir(&self) -> Result<(), NetworkError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|e| NetworkError::io(&self.dir, e))
    }

    /// Every stored network, by name.
    pub fn list(&self) -> Result<Vec<Network>, NetworkError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(NetworkError::io(&self.dir, e)),
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let file = entry.file_name().to_string_lossy().into_owned();
            if let Some(name) = file.strip_suffix(".conflist") {
                out.push(self.read(name)?);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn read(&self, name: &str) -> Result<Network, NetworkError> {
        let path = self.path(name);
        let bytes = std::fs::read(&path).map_err(|e| NetworkError::io(&path, e))?;
        let conflist = serde_json::from_slice(&bytes)
            .map_err(|e| NetworkError::BadConfig(format!("{}: {e}", path.display())))?;
        Ok(Network {
            name: name.to_string(),
            conflist,
        })
    }

    /// The network `name` (`default` meaning `bridge`); the default network is created
    /// on first use. The caller holds [`NetworkStore::lock`].
    pub fn load(&self, name: &str) -> Result<Network, NetworkError> {
        let name = if name == "default" {
            DEFAULT_NETWORK
        } else {
            name
        };
        // A name that could not have been created (`container:x`, `../x`) names no file.
        if check_name(name).is_err() {
            return Err(NetworkError::NoSuchNetwork(name.to_string()));
        }
        if self.path(name).exists() {
            return self.read(name);
        }
        if name == DEFAULT_NETWORK {
            return self.create(name, None);
        }
        Err(NetworkError::NoSuchNetwork(name.to_string()))
    }

    /// Creates network `name` with `subnet` (default: the first free /24 of
    /// 10.90.0.0/16; `bridge` gets [`DEFAULT_SUBNET`]). The caller holds the lock.
    pub fn create(&self, name: &str, subnet: Option<Ipv4Net>) -> Result<Network, NetworkError> {
        check_name(name)?;
        if self.path(name).exists() {
            return Err(NetworkError::NetworkExists(name.to_string()));
        }
        let existing = self.list()?;
        let taken: Vec<Ipv4Net> = existing.iter().filter_map(Network::subnet).collect();
        let subnet = match subnet {
            Some(s) => s,
            None if name == DEFAULT_NETWORK => Ipv4Net::parse(DEFAULT_SUBNET).expect("valid"),
            None => free_subnet(&taken)?,
        };
        if let Some(other) = existing
            .iter()
            .find(|n| n.subnet().is_some_and(|s| s.overlaps(&subnet)))
        {
            return Err(NetworkError::SubnetInUse(
                subnet.to_string(),
                other.name.clone(),
            ));
        }
        let bridge = if name == DEFAULT_NETWORK {
            DEFAULT_BRIDGE.to_string()
        } else {
            let used: Vec<&str> = existing.iter().filter_map(Network::bridge).collect();
            (1..)
                .map(|i| format!("skiff{i}"))
                .find(|b| !used.contains(&b.as_str()))
                .expect("an unused bridge name")
        };
        let network = Network {
            name: name.to_string(),
            conflist: conflist(name, &bridge, subnet, &self.ipam_dir()),
        };
        self.ensure_dir()?;
        let path = self.path(name);
        let text = serde_json::to_vec_pretty(&network.conflist).expect("json");
        skiff_proto::store::write_private(&path, &text).map_err(|e| NetworkError::io(&path, e))?;
        Ok(network)
    }

    /// Removes network `name`'s config and its (empty) lease directory. The caller
    /// checks that no container uses it and holds the lock.
    pub fn remove(&self, name: &str) -> Result<(), NetworkError> {
        if check_name(name).is_err() {
            return Err(NetworkError::NoSuchNetwork(name.to_string()));
        }
        let path = self.path(name);
        match std::fs::remove_file(&path) {
            Ok(()) => {
                let _ = std::fs::remove_dir_all(self.ipam_dir().join(name));
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(NetworkError::NoSuchNetwork(name.to_string()))
            }
            Err(e) => Err(NetworkError::io(&path, e)),
        }
    }
}

/// Network names: docker's rule (a letter or digit, then letters, digits, `_.-`),
/// at most 64 characters, not one of `none`, `host`, `default`.
fn check_name(name: &str) -> Result<(), NetworkError> {
    let ok = name.len() <= 64
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        && !RESERVED.contains(&name);
    if ok {
        Ok(())
    } else {
        Err(NetworkError::BadName(name.to_string()))
    }
}

/// The first /24 of 10.90.0.0/16 that overlaps no network in `taken`.
fn free_subnet(taken: &[Ipv4Net]) -> Result<Ipv4Net, NetworkError> {
    let pool = Ipv4Net::parse(NAMED_SUBNETS).expect("valid");
    (0..=255u32)
        .map(|i| Ipv4Net {
            addr: std::net::Ipv4Addr::from(u32::from(pool.addr) + (i << 8)),
            prefix: 24,
        })
        .find(|s| !taken.iter().any(|t| t.overlaps(s)))
        .ok_or(NetworkError::NoFreeSubnet)
}

/// A network's CNI config list, as podman writes its bridge networks: bridge (with
/// the gateway on the bridge and outbound masquerading) with host-local addresses,
/// then portmap for `-p` and firewall (iptables) to let forwarded traffic through.
fn conflist(name: &str, bridge: &str, subnet: Ipv4Net, ipam_dir: &Path) -> Value {
    json!({
        "cniVersion": cni::CNI_VERSION,
        "name": name,
        "plugins": [
            {
                "type": "bridge",
                "bridge": bridge,
                "isGateway": true,
                "ipMasq": true,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "dataDir": ipam_dir,
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "ranges": [[{
                        "subnet": subnet.to_string(),
                        "gateway": subnet.first_host().to_string()
                    }]]
                }
            },
            {"type": "portmap", "capabilities": {"portMappings": true}},
            {"type": "firewall", "backend": "iptables"}
        ]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_are_created_listed_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = NetworkStore::new(dir.path());
        let default = store.load("default").unwrap();
        assert_eq!(default.name, "bridge");
        assert_eq!(default.bridge(), Some("skiff0"));
        assert_eq!(default.subnet().unwrap().to_string(), DEFAULT_SUBNET);
        let a = store.create("a", None).unwrap();
        assert_eq!(a.bridge(), Some("skiff1"));
        assert_eq!(a.subnet().unwrap().to_string(), "10.90.0.0/24");
        let b = store.create("b", None).unwrap();
        assert_eq!(b.subnet().unwrap().to_string(), "10.90.1.0/24");
        assert!(matches!(
            store.create("c", Ipv4Net::parse("10.90.1.128/25")),
            Err(NetworkError::SubnetInUse(..))
        ));
        assert!(matches!(
            store.create("a", None),
            Err(NetworkError::NetworkExists(_))
        ));
        for bad in ["host", "none", "-x", "a/b", ""] {
            assert!(matches!(
                store.create(bad, None),
                Err(NetworkError::BadName(_))
            ));
        }
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.path().join("networks/a.conflist"))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        let names: Vec<String> = store.list().unwrap().into_iter().map(|n| n.name).collect();
        assert_eq!(names, ["a", "b", "bridge"]);
        store.remove("a").unwrap();
        assert!(matches!(
            store.load("a"),
            Err(NetworkError::NoSuchNetwork(_))
        ));
        // The freed bridge name and subnet are given out again.
        let c = store.create("c", None).unwrap();
        assert_eq!(c.bridge(), Some("skiff1"));
        assert_eq!(c.subnet().unwrap().to_string(), "10.90.0.0/24");
    }
}
