//! `-p/--publish [IP:]HOST:CONTAINER[/tcp|udp]`, handed to CNI's portmap plugin as its
//! `portMappings` runtime config.

use super::NetworkError;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// One published port, in the shape of CNI's `portMappings` capability.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    /// The port on the host (in skiff's network namespace).
    pub host_port: u16,
    /// The port inside the container.
    pub container_port: u16,
    /// `tcp` or `udp`.
    pub protocol: String,
    /// The host address to publish on; empty for every address.
    #[serde(rename = "hostIP", default, skip_serializing_if = "String::is_empty")]
    pub host_ip: String,
}

/// Parses one `-p` value. Ranges and a host port chosen by the engine
/// (`-p 80`, `-p IP::80`) are not supported.
pub fn parse(spec: &str) -> Result<PortMapping, NetworkError> {
    let bad = |why: &str| NetworkError::BadPublish(spec.to_string(), why.to_string());
    let (ports, protocol) = match spec.rsplit_once('/') {
        Some((p, proto @ ("tcp" | "udp"))) => (p, proto),
        Some(_) => return Err(bad("the protocol is tcp or udp")),
        None => (spec, "tcp"),
    };
    // The host address may be IPv6 in brackets: [::1]:8080:80.
    let (host_ip, rest) = if let Some(r) = ports.strip_prefix('[') {
        let (ip, rest) = r.split_once("]:").ok_or_else(|| bad("unclosed ["))?;
        (ip, rest)
    } else {
        match ports.matches(':').count() {
            1 => ("", ports),
            2 => ports.split_once(':').expect("two colons"),
            _ => return Err(bad("expected [IP:]HOST:CONTAINER")),
        }
    };
    if !host_ip.is_empty() && host_ip.parse::<IpAddr>().is_err() {
        return Err(bad("the host address is not an IP address"));
    }
    let (host, container) = rest
        .split_once(':')
        .ok_or_else(|| bad("expected [IP:]HOST:CONTAINER"))?;
    let port = |p: &str| -> Result<u16, NetworkError> {
        p.parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| bad("ports are numbers from 1 to 65535 (no ranges)"))
    };
    Ok(PortMapping {
        host_port: port(host)?,
        container_port: port(container)?,
        protocol: protocol.to_string(),
        host_ip: host_ip.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(host_ip: &str, host: u16, container: u16, proto: &str) -> PortMapping {
        PortMapping {
            host_port: host,
            container_port: container,
            protocol: proto.into(),
            host_ip: host_ip.into(),
        }
    }

    #[test]
    fn publish_specs_parse_like_docker() {
        assert_eq!(parse("8080:80").unwrap(), m("", 8080, 80, "tcp"));
        assert_eq!(
            parse("127.0.0.1:53:5353/udp").unwrap(),
            m("127.0.0.1", 53, 5353, "udp")
        );
        assert_eq!(parse("[::1]:8080:80").unwrap(), m("::1", 8080, 80, "tcp"));
        for bad in [
            "80",
            "a:80",
            "8080:80/sctp",
            "1.2.3:8080:80",
            "0:80",
            "80-81:80-81",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        let json = serde_json::to_string(&parse("127.0.0.1:8080:80").unwrap()).unwrap();
        assert_eq!(
            json,
            r#"{"hostPort":8080,"containerPort":80,"protocol":"tcp","hostIP":"127.0.0.1"}"#
        );
    }
}
