//! `--device HOST[:CONTAINER][:PERMS]`, with docker's meaning: the host's device node
//! appears in the container (same type, numbers and mode) and the container's device
//! cgroup lets it use it with PERMS (`rwm` by default).

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::PathBuf;

/// Errors from `--device`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DeviceError {
    /// Not `HOST[:CONTAINER][:PERMS]` with absolute paths and PERMS of `r`, `w`, `m`.
    #[error("invalid --device {0:?}: want HOST[:CONTAINER][:PERMS], e.g. /dev/fuse:/dev/fuse:rwm")]
    Bad(String),
    /// The host path is missing or no device node.
    #[error("error gathering device information while adding custom device {path:?}: {message}")]
    NotADevice {
        /// The host path.
        path: String,
        /// Why.
        message: String,
    },
}

/// One host device given to the container.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Device {
    /// Path inside the container.
    pub destination: PathBuf,
    /// `c` (character) or `b` (block).
    pub kind: char,
    /// Major number.
    pub major: u64,
    /// Minor number.
    pub minor: u64,
    /// The node's permission bits (as on the host).
    pub mode: u32,
    /// Owner uid and gid (as on the host).
    pub owner: (u32, u32),
    /// What the cgroup allows: some of `r`, `w`, `m`.
    pub permissions: String,
}

impl Device {
    /// Parses `--device` and looks the host node up.
    pub fn parse(value: &str) -> Result<Device, DeviceError> {
        let bad = || DeviceError::Bad(value.to_string());
        let is_perms = |s: &str| !s.is_empty() && s.chars().all(|c| "rwm".contains(c));
        let parts: Vec<&str> = value.split(':').collect();
        let (host, container, perms) = match parts.as_slice() {
            [h] => (*h, *h, "rwm"),
            [h, p] if is_perms(p) => (*h, *h, *p),
            [h, c] => (*h, *c, "rwm"),
            [h, c, p] if is_perms(p) => (*h, *c, *p),
            _ => return Err(bad()),
        };
        if !host.starts_with('/') || !container.starts_with('/') {
            return Err(bad());
        }
        let not_device = |message: String| DeviceError::NotADevice {
            path: host.to_string(),
            message,
        };
        let meta = std::fs::metadata(host).map_err(|e| not_device(e.to_string()))?;
        let kind = if meta.file_type().is_char_device() {
            'c'
        } else if meta.file_type().is_block_device() {
            'b'
        } else {
            return Err(not_device("not a device node".into()));
        };
        let rdev = meta.rdev();
        Ok(Device {
            destination: PathBuf::from(container),
            kind,
            major: nix::sys::stat::major(rdev),
            minor: nix::sys::stat::minor(rdev),
            mode: meta.mode() & 0o7777,
            owner: (meta.uid(), meta.gid()),
            permissions: perms.to_string(),
        })
    }

    /// The device cgroup rule (`devices.allow` syntax) that lets the container use it.
    pub fn cgroup_rule(&self) -> String {
        format!(
            "{} {}:{} {}",
            self.kind, self.major, self.minor, self.permissions
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_flags_read_like_docker() {
        let d = Device::parse("/dev/null").unwrap();
        assert_eq!(d.destination, PathBuf::from("/dev/null"));
        assert_eq!((d.kind, d.major, d.minor), ('c', 1, 3));
        assert_eq!(d.cgroup_rule(), "c 1:3 rwm");
        let d = Device::parse("/dev/zero:/dev/nothing:r").unwrap();
        assert_eq!(d.destination, PathBuf::from("/dev/nothing"));
        assert_eq!(d.cgroup_rule(), "c 1:5 r");
        assert_eq!(
            Device::parse("/dev/zero:rw").unwrap().cgroup_rule(),
            "c 1:5 rw"
        );
        assert!(matches!(
            Device::parse("dev/null"),
            Err(DeviceError::Bad(_))
        ));
        assert!(matches!(
            Device::parse("/dev/null:/x:q"),
            Err(DeviceError::Bad(_))
        ));
        assert!(matches!(
            Device::parse("/etc/hostname"),
            Err(DeviceError::NotADevice { .. })
        ));
        assert!(matches!(
            Device::parse("/dev/nope"),
            Err(DeviceError::NotADevice { .. })
        ));
    }
}
