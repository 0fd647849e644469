//! The runtime files skiff gives every container, written on the host before the
//! container starts and bind-mounted over the image's (as Docker does):
//! `/etc/resolv.conf`, `/etc/hostname` and `/etc/hosts`.

use super::spec::{self, ContainerSpec};
use super::RunError;
use std::path::Path;

/// Writes resolv.conf, hostname and hosts for the container into `dir`.
pub fn write(spec: &ContainerSpec, dir: &Path) -> Result<(), RunError> {
    let state = |path: &Path| {
        let path = path.display().to_string();
        move |source| RunError::State { path, source }
    };
    std::fs::create_dir_all(dir).map_err(state(dir))?;
    let hosts = format!(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\n\
         ff02::2\tip6-allrouters\n127.0.1.1\t{}\n",
        spec.hostname
    );
    let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let resolv = if spec.network == spec::NetworkMode::Host {
        host_resolv
    } else {
        container_resolv(&host_resolv)
    };
    for (name, content) in [
        ("resolv.conf", resolv),
        ("hostname", format!("{}\n", spec.hostname)),
        ("hosts", hosts),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, content).map_err(state(&path))?;
    }
    Ok(())
}

/// The host's resolv.conf for a container in its own network namespace: a loopback
/// resolver on the host is unreachable from there, so it is dropped, and Google's
/// public resolvers stand in when no nameserver is left.
fn container_resolv(host_resolv: &str) -> String {
    let kept: Vec<&str> = host_resolv
        .lines()
        .filter(|l| {
            let ns = l.trim_start().strip_prefix("nameserver");
            !matches!(ns.map(str::trim), Some(a) if a.starts_with("127.") || a == "::1")
        })
        .collect();
    let mut r = kept.join("\n");
    if !r.lines().any(|l| l.trim_start().starts_with("nameserver")) {
        r.push_str("\nnameserver 8.8.8.8\nnameserver 8.8.4.4");
    }
    r.trim_start().to_string() + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_resolvers_are_dropped_for_an_isolated_network() {
        assert_eq!(
            container_resolv("search lan\nnameserver 127.0.0.53\nnameserver 10.0.0.1\n"),
            "search lan\nnameserver 10.0.0.1\n"
        );
        assert_eq!(
            container_resolv("nameserver ::1\n"),
            "nameserver 8.8.8.8\nnameserver 8.8.4.4\n"
        );
    }
}
