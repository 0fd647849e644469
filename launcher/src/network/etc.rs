//! The container's `/etc/hosts` and `/etc/resolv.conf` as docker writes them, from its
//! network attachments, `--add-host`, `--dns`, `--dns-search` and `--dns-option`.
//! Both are rewritten in the container's state directory, which PID 1 bind-mounts
//! (`container::etc_files` wrote the first versions before the namespaces existed).

use super::NetworkError;
use std::net::IpAddr;

/// docker's fixed head of /etc/hosts.
const HOSTS_HEAD: &str = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
fe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\n\
ff02::2\tip6-allrouters\n";

/// The marker line before the entries of other containers on the same networks.
pub const PEERS_MARKER: &str = "# containers on the same networks (kept current by skiff)";

/// One `--add-host HOST:IP` (or `HOST=IP`); `IP` may be `host-gateway`, the gateway of
/// the container's first network.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ExtraHost {
    /// The name.
    pub host: String,
    /// An IP address, or `host-gateway`.
    pub ip: String,
}

/// Parses `--add-host` values.
pub fn parse_add_host(s: &str) -> Result<ExtraHost, NetworkError> {
    let bad = || NetworkError::BadAddHost(s.to_string());
    // The name ends at the first ':' or '='; the address may contain ':' (IPv6).
    let at = s.find([':', '=']).ok_or_else(bad)?;
    let (host, ip) = (&s[..at], &s[at + 1..]);
    let ip = ip.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || (ip != "host-gateway" && ip.parse::<IpAddr>().is_err()) {
        return Err(bad());
    }
    Ok(ExtraHost {
        host: host.to_string(),
        ip: ip.to_string(),
    })
}

/// What goes into a container's /etc/hosts.
pub struct Hosts<'a> {
    /// `--add-host` entries, `host-gateway` already resolved.
    pub extra: &'a [(String, String)],
    /// The container's own address on its first network (none: `127.0.1.1`, as skiff
    /// wrote before there were networks, so that its hostname resolves).
    pub own_ip: Option<String>,
    /// The container's hostname.
    pub hostname: &'a str,
    /// Other containers on its user-defined networks: (address, names).
    pub peers: &'a [(String, String)],
}

impl Hosts<'_> {
    /// docker's layout: the fixed head, the extra hosts, the container's own line;
    /// then skiff's peer entries (docker answers those names from its embedded DNS).
    pub fn render(&self) -> String {
        let mut out = HOSTS_HEAD.to_string();
        for (host, ip) in self.extra {
            out.push_str(&format!("{ip}\t{host}\n"));
        }
        let own = self.own_ip.as_deref().unwrap_or("127.0.1.1");
        out.push_str(&format!("{own}\t{}\n", self.hostname));
        if !self.peers.is_empty() {
            out.push_str(PEERS_MARKER);
            out.push('\n');
            for (ip, names) in self.peers {
                out.push_str(&format!("{ip}\t{names}\n"));
            }
        }
        out
    }
}

/// `--dns`, `--dns-search`, `--dns-option`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dns {
    /// Nameservers replacing the host's.
    pub servers: Vec<String>,
    /// Search domains replacing the host's (`.` alone: none).
    pub search: Vec<String>,
    /// Options replacing the host's.
    pub options: Vec<String>,
}

impl Dns {
    /// Whether no flag was given.
    pub fn is_empty(&self) -> bool {
        self.servers.is_empty() && self.search.is_empty() && self.options.is_empty()
    }

    /// `base` (the resolv.conf skiff derives from the host's) with the lines the flags
    /// replace swapped for theirs, as docker does: each flag replaces only its kind.
    pub fn apply(&self, base: &str) -> String {
        let kind = |l: &str| l.split_whitespace().next().unwrap_or("").to_string();
        let replaced = |k: &str| match k {
            "nameserver" => !self.servers.is_empty(),
            "search" | "domain" => !self.search.is_empty(),
            "options" => !self.options.is_empty(),
            _ => false,
        };
        let mut out: Vec<String> = base
            .lines()
            .filter(|l| !replaced(&kind(l)))
            .map(str::to_string)
            .collect();
        out.extend(self.servers.iter().map(|s| format!("nameserver {s}")));
        let search: Vec<&str> = self
            .search
            .iter()
            .map(String::as_str)
            .filter(|s| *s != ".")
            .collect();
        if !search.is_empty() {
            out.push(format!("search {}", search.join(" ")));
        }
        if !self.options.is_empty() {
            out.push(format!("options {}", self.options.join(" ")));
        }
        out.retain(|l| !l.trim().is_empty());
        out.join("\n") + "\n"
    }
}

/// Checks `--dns` values are addresses.
pub fn check_dns_servers(servers: &[String]) -> Result<(), NetworkError> {
    match servers.iter().find(|s| s.parse::<IpAddr>().is_err()) {
        Some(s) => Err(NetworkError::BadDns(s.clone())),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_host_takes_docker_forms() {
        let e = parse_add_host("db:10.0.0.5").unwrap();
        assert_eq!((e.host.as_str(), e.ip.as_str()), ("db", "10.0.0.5"));
        assert_eq!(parse_add_host("v6=[::1]").unwrap().ip, "::1");
        assert_eq!(parse_add_host("v6:::1").unwrap().ip, "::1");
        assert_eq!(
            parse_add_host("gw:host-gateway").unwrap().ip,
            "host-gateway"
        );
        for bad in ["db", ":1.2.3.4", "db:notanip"] {
            assert!(parse_add_host(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn hosts_has_docker_layout_then_peers() {
        let extra = [("db".to_string(), "10.0.0.5".to_string())];
        let peers = [("10.90.0.3".to_string(), "web".to_string())];
        let h = Hosts {
            extra: &extra,
            own_ip: Some("10.90.0.2".into()),
            hostname: "abc",
            peers: &peers,
        };
        let text = h.render();
        assert!(text.starts_with("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost"));
        assert!(text.ends_with(&format!(
            "ff02::2\tip6-allrouters\n10.0.0.5\tdb\n10.90.0.2\tabc\n{PEERS_MARKER}\n10.90.0.3\tweb\n"
        )));
        let none = Hosts {
            extra: &[],
            own_ip: None,
            hostname: "abc",
            peers: &[],
        };
        assert!(none.render().ends_with("ip6-allrouters\n127.0.1.1\tabc\n"));
    }

    #[test]
    fn dns_flags_replace_only_their_lines() {
        let base = "search lan\nnameserver 10.0.0.1\noptions ndots:2\n";
        let dns = Dns {
            servers: vec!["1.1.1.1".into()],
            ..Default::default()
        };
        assert_eq!(
            dns.apply(base),
            "search lan\noptions ndots:2\nnameserver 1.1.1.1\n"
        );
        let all = Dns {
            servers: vec!["1.1.1.1".into()],
            search: vec!["a.example".into(), "b.example".into()],
            options: vec!["ndots:5".into()],
        };
        assert_eq!(
            all.apply(base),
            "nameserver 1.1.1.1\nsearch a.example b.example\noptions ndots:5\n"
        );
        assert!(check_dns_servers(&["1.1.1.1".into(), "x".into()]).is_err());
    }
}
