//! `--sysctl KEY=VALUE`: only the kernel settings that belong to a namespace the
//! container has of its own, as runc validates them (IPC: `kernel.msg*`, `kernel.sem`,
//! `kernel.shm*`, `fs.mqueue.*`; UTS: `kernel.domainname`; network: `net.*` unless
//! it shares the host's network). Written under /proc/sys by PID 1 after
//! `pivot_root`, before /proc/sys is made read-only.

/// Errors from `--sysctl`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SysctlError {
    /// Not `KEY=VALUE`.
    #[error("invalid --sysctl {0:?}: want KEY=VALUE")]
    Bad(String),
    /// A key that is not namespaced (it would change the host).
    #[error("sysctl {0:?} is not allowed: only namespaced ones are (kernel.msg*, kernel.sem, kernel.shm*, fs.mqueue.*, kernel.domainname, net.*)")]
    NotNamespaced(String),
    /// `net.*` while the container shares the host's network namespace.
    #[error("sysctl {0:?} is not allowed in the host's network namespace")]
    HostNetwork(String),
    /// `kernel.hostname` (docker: use --hostname).
    #[error("sysctl {0:?} is not allowed: use --hostname")]
    Hostname(String),
}

/// The IPC namespace's sysctls (runc's `namespaceInfo`).
const IPC_KEYS: &[&str] = &[
    "kernel.msgmax",
    "kernel.msgmnb",
    "kernel.msgmni",
    "kernel.sem",
    "kernel.shmall",
    "kernel.shmmax",
    "kernel.shmmni",
    "kernel.shm_rmid_forced",
];

/// Parses and checks one `--sysctl`; `own_network` says whether the container has its
/// own network namespace. Returns (key, value).
pub fn parse(value: &str, own_network: bool) -> Result<(String, String), SysctlError> {
    let (key, val) = value
        .split_once('=')
        .filter(|(k, _)| !k.is_empty() && !k.contains('/') && !k.contains(".."))
        .ok_or_else(|| SysctlError::Bad(value.to_string()))?;
    let key = key.trim().to_string();
    if key == "kernel.hostname" {
        return Err(SysctlError::Hostname(key));
    }
    if key.starts_with("net.") {
        if !own_network {
            return Err(SysctlError::HostNetwork(key));
        }
    } else if !(IPC_KEYS.contains(&key.as_str())
        || key.starts_with("fs.mqueue.")
        || key == "kernel.domainname")
    {
        return Err(SysctlError::NotNamespaced(key));
    }
    Ok((key, val.to_string()))
}

/// The /proc/sys file of `key`.
pub fn proc_path(key: &str) -> std::path::PathBuf {
    std::path::Path::new("/proc/sys").join(key.replace('.', "/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_namespaced_keys_pass() {
        assert_eq!(
            parse("kernel.shmmax=1024", true).unwrap(),
            ("kernel.shmmax".into(), "1024".into())
        );
        assert!(parse("fs.mqueue.msg_max=20", false).is_ok());
        assert!(parse("net.ipv4.ip_forward=1", true).is_ok());
        assert_eq!(
            parse("net.ipv4.ip_forward=1", false).unwrap_err(),
            SysctlError::HostNetwork("net.ipv4.ip_forward".into())
        );
        assert!(matches!(
            parse("vm.swappiness=1", true),
            Err(SysctlError::NotNamespaced(_))
        ));
        assert!(matches!(
            parse("kernel.hostname=x", true),
            Err(SysctlError::Hostname(_))
        ));
        assert!(matches!(
            parse("net.a/../b=1", true),
            Err(SysctlError::Bad(_))
        ));
        assert!(matches!(
            parse("kernel.sem", true),
            Err(SysctlError::Bad(_))
        ));
        assert_eq!(
            proc_path("net.ipv4.ip_forward"),
            std::path::PathBuf::from("/proc/sys/net/ipv4/ip_forward")
        );
    }
}
