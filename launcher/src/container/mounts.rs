//! The user's mounts beyond `-v`: `--tmpfs PATH[:OPTIONS]` and docker's
//! `--mount type=bind|tmpfs,...` (named volumes do not exist in skiff, so
//! `type=volume` is refused).

use super::spec::{parse_size, BindMount};
use nix::mount::MsFlags;
use std::path::PathBuf;

/// Errors from `--tmpfs` and `--mount`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MountError {
    /// A malformed value.
    #[error("invalid {flag} {value:?}: {why}")]
    Bad {
        /// `--tmpfs` or `--mount`.
        flag: &'static str,
        /// The value given.
        value: String,
        /// What is wrong.
        why: String,
    },
    /// `--mount type=volume` (or no type, which docker reads as a volume).
    #[error("invalid --mount {0:?}: named volumes are not supported by skiff; use type=bind or type=tmpfs")]
    Volume(String),
}

/// A tmpfs mounted in the container.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TmpfsMount {
    /// Absolute path inside the container.
    pub destination: PathBuf,
    /// Mount flags (`nosuid,nodev,noexec` unless the options say otherwise).
    #[serde(with = "ms_flags_bits")]
    pub flags: MsFlags,
    /// Mount data: `mode=…,size=…`.
    pub data: String,
}

/// A `--mount` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mount {
    /// `type=bind`.
    Bind(BindMount),
    /// `type=tmpfs`.
    Tmpfs(TmpfsMount),
}

/// `--tmpfs PATH[:OPTIONS]`: docker's comma-separated options (`size=64m`,
/// `mode=1777`, `exec`/`noexec`, `suid`/`nosuid`, `dev`/`nodev`, `ro`/`rw`). Without
/// them: mode 1777, 64 MiB, nosuid, nodev, noexec.
pub fn parse_tmpfs(value: &str) -> Result<TmpfsMount, MountError> {
    let bad = |why: &str| MountError::Bad {
        flag: "--tmpfs",
        value: value.to_string(),
        why: why.to_string(),
    };
    let (path, options) = value.split_once(':').unwrap_or((value, ""));
    if !path.starts_with('/') {
        return Err(bad("the path must be absolute"));
    }
    let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let (mut size, mut mode) = (Some(64u64 << 20), 0o1777u32);
    for opt in options.split(',').filter(|o| !o.is_empty()) {
        match opt.split_once('=') {
            Some(("size", s)) => size = Some(parse_size(s).ok_or_else(|| bad("bad size"))?),
            Some(("mode", m)) => mode = u32::from_str_radix(m, 8).map_err(|_| bad("bad mode"))?,
            Some(_) => return Err(bad(&format!("unknown option {opt:?}"))),
            None => {
                toggle(&mut flags, opt).ok_or_else(|| bad(&format!("unknown option {opt:?}")))?
            }
        }
    }
    Ok(TmpfsMount {
        destination: PathBuf::from(path),
        flags,
        data: tmpfs_data(mode, size),
    })
}

/// Sets or clears the flag a docker mount option names; `None` if it names none.
fn toggle(flags: &mut MsFlags, opt: &str) -> Option<()> {
    let (flag, on) = match opt {
        "exec" => (MsFlags::MS_NOEXEC, false),
        "noexec" => (MsFlags::MS_NOEXEC, true),
        "suid" => (MsFlags::MS_NOSUID, false),
        "nosuid" => (MsFlags::MS_NOSUID, true),
        "dev" => (MsFlags::MS_NODEV, false),
        "nodev" => (MsFlags::MS_NODEV, true),
        "ro" => (MsFlags::MS_RDONLY, true),
        "rw" => (MsFlags::MS_RDONLY, false),
        _ => return None,
    };
    flags.set(flag, on);
    Some(())
}

fn tmpfs_data(mode: u32, size: Option<u64>) -> String {
    match size {
        Some(bytes) => format!("mode={mode:o},size={bytes}"),
        None => format!("mode={mode:o}"),
    }
}

/// `--mount type=bind,source=/h,target=/c[,readonly]` or
/// `--mount type=tmpfs,target=/c[,tmpfs-size=64m][,tmpfs-mode=1770]` (a tmpfs mount
/// has no size limit unless given, as in docker).
pub fn parse_mount(value: &str) -> Result<Mount, MountError> {
    let bad = |why: &str| MountError::Bad {
        flag: "--mount",
        value: value.to_string(),
        why: why.to_string(),
    };
    let (mut kind, mut source, mut target) = (None, None, None);
    let (mut read_only, mut size, mut mode) = (false, None, 0o1777u32);
    for field in value.split(',').filter(|f| !f.is_empty()) {
        let (key, val) = match field.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v.trim())),
            None => (field.trim(), None),
        };
        match (key, val) {
            ("type", Some(v)) => kind = Some(v),
            ("source" | "src", Some(v)) => source = Some(v),
            ("target" | "destination" | "dst", Some(v)) => target = Some(v),
            ("readonly" | "ro", None) => read_only = true,
            ("readonly" | "ro", Some(v)) => {
                read_only = match v {
                    "1" | "true" => true,
                    "0" | "false" => false,
                    _ => return Err(bad("readonly takes true or false")),
                }
            }
            ("tmpfs-size", Some(v)) => {
                size = Some(parse_size(v).ok_or_else(|| bad("bad tmpfs-size"))?)
            }
            ("tmpfs-mode", Some(v)) => {
                mode = u32::from_str_radix(v, 8).map_err(|_| bad("bad tmpfs-mode"))?
            }
            ("bind-propagation", Some("rprivate" | "private")) | ("consistency", Some(_)) => {}
            _ => return Err(bad(&format!("unsupported field {field:?}"))),
        }
    }
    let target = target
        .filter(|t| t.starts_with('/'))
        .ok_or_else(|| bad("target must be an absolute path"))?;
    match kind {
        Some("bind") => {
            let source = source
                .filter(|s| s.starts_with('/'))
                .ok_or_else(|| bad("source must be an absolute path"))?;
            Ok(Mount::Bind(BindMount {
                source: PathBuf::from(source),
                destination: PathBuf::from(target),
                read_only,
            }))
        }
        Some("tmpfs") => {
            if source.is_some() {
                return Err(bad("a tmpfs has no source"));
            }
            let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
            flags.set(MsFlags::MS_RDONLY, read_only);
            Ok(Mount::Tmpfs(TmpfsMount {
                destination: PathBuf::from(target),
                flags,
                data: tmpfs_data(mode, size),
            }))
        }
        Some("volume") | None => Err(MountError::Volume(value.to_string())),
        Some(other) => Err(bad(&format!("unknown type {other:?}"))),
    }
}

/// `MsFlags` as its bits, for the container's setup handed to `skiff container-init`.
mod ms_flags_bits {
    use nix::mount::MsFlags;

    pub fn serialize<S: serde::Serializer>(flags: &MsFlags, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(flags.bits())
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<MsFlags, D::Error> {
        let bits = <u64 as serde::Deserialize>::deserialize(d)?;
        Ok(MsFlags::from_bits_truncate(bits))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tmpfs_options() {
        let t = parse_tmpfs("/run").unwrap();
        assert_eq!(t.data, format!("mode=1777,size={}", 64 << 20));
        assert!(t.flags.contains(MsFlags::MS_NOEXEC));
        let t = parse_tmpfs("/run:exec,size=1m,mode=700").unwrap();
        assert_eq!(t.data, "mode=700,size=1048576");
        assert!(!t.flags.contains(MsFlags::MS_NOEXEC));
        assert!(parse_tmpfs("run").is_err());
        assert!(parse_tmpfs("/run:bogus").is_err());
    }

    #[test]
    fn mount_values_read_like_docker() {
        assert_eq!(
            parse_mount("type=bind,source=/a,target=/b,readonly").unwrap(),
            Mount::Bind(BindMount {
                source: "/a".into(),
                destination: "/b".into(),
                read_only: true
            })
        );
        assert_eq!(
            parse_mount("type=bind,src=/a,dst=/b,ro=false").unwrap(),
            Mount::Bind(BindMount {
                source: "/a".into(),
                destination: "/b".into(),
                read_only: false
            })
        );
        match parse_mount("type=tmpfs,destination=/t,tmpfs-size=2m,tmpfs-mode=1770").unwrap() {
            Mount::Tmpfs(t) => assert_eq!(t.data, "mode=1770,size=2097152"),
            other => panic!("{other:?}"),
        }
        match parse_mount("type=tmpfs,target=/t").unwrap() {
            Mount::Tmpfs(t) => assert_eq!(t.data, "mode=1777"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse_mount("type=volume,source=v,target=/v"),
            Err(MountError::Volume(_))
        ));
        assert!(matches!(
            parse_mount("source=v,target=/v"),
            Err(MountError::Volume(_))
        ));
        for bad in [
            "type=bind,source=rel,target=/b",
            "type=bind,source=/a",
            "type=tmpfs,source=/a,target=/b",
            "type=bind,source=/a,target=/b,bind-propagation=shared",
            "type=nfs,target=/b",
        ] {
            assert!(
                matches!(parse_mount(bad), Err(MountError::Bad { .. })),
                "{bad}"
            );
        }
    }
}
