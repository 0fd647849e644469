//! `--cap-add`, `--cap-drop`, `--security-opt` and `--privileged`, with docker's
//! meanings: which capabilities the container has, whether no_new_privs is set, and
//! which seccomp filter it runs under.
//!
//! Docker's defaults: its 14 capabilities, no no_new_privs (setuid programs in the
//! image work), and its default seccomp profile. `--privileged` gives every capability
//! and no filter.

use super::seccomp::{self, Profile};
use super::seccomp_cache::FilterCache;
use super::sys::docker_default_capabilities;
use caps::{Capability, CapsHashSet};
use std::path::Path;
use std::str::FromStr;

/// Errors from the security flags.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecurityError {
    /// A `--cap-add`/`--cap-drop` name that is no capability.
    #[error("unknown capability: {0:?}")]
    UnknownCapability(String),
    /// A `--security-opt` skiff does not know.
    #[error(
        "invalid --security-opt {0:?}: supported are seccomp=unconfined|FILE and \
         no-new-privileges[=true|false]"
    )]
    BadOption(String),
    /// The `seccomp=FILE` profile cannot be read.
    #[error("opening seccomp profile ({path}) failed: {message}")]
    ProfileFile {
        /// The file.
        path: String,
        /// Why.
        message: String,
    },
    /// The profile cannot be used.
    #[error(transparent)]
    Seccomp(#[from] seccomp::SeccompError),
}

/// The container's privileges, worked out from the flags before it is forked. Kept in
/// the container's state, so `skiff exec` gives its processes the same.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Security {
    /// Bounding set, and effective/permitted set of a root process.
    #[serde(with = "capability_names")]
    pub capabilities: CapsHashSet,
    /// Set no_new_privs (`--security-opt no-new-privileges`).
    pub no_new_privileges: bool,
    /// The compiled filter; `None` with `--privileged`, `seccomp=unconfined` or a
    /// profile that disables seccomp.
    pub seccomp: Option<seccomp::Filter>,
}

/// Which seccomp profile `--security-opt` chose.
#[derive(Debug, Clone, PartialEq, Eq)]
enum SeccompChoice {
    Default,
    Unconfined,
    File(String),
}

impl Security {
    /// Works out the privileges from `--privileged`, `--cap-add`, `--cap-drop` and
    /// `--security-opt`, reading and compiling the seccomp profile (or reading its
    /// compiled program from `seccomp_cache`, when given).
    pub fn new(
        privileged: bool,
        cap_add: &[String],
        cap_drop: &[String],
        security_opts: &[String],
        seccomp_cache: Option<&FilterCache>,
    ) -> Result<Security, SecurityError> {
        let capabilities = capabilities(privileged, cap_add, cap_drop)?;
        let (choice, no_new_privileges) = parse_security_opts(security_opts)?;
        let profile = match choice {
            // docker's CLI reads the file even when --privileged makes it moot.
            SeccompChoice::File(path) => Some(read_profile(Path::new(&path))?),
            SeccompChoice::Default => Some(Profile::docker_default()),
            SeccompChoice::Unconfined => None,
        };
        let seccomp = match profile {
            Some(p) if !privileged => seccomp::filter_for(&p, &capabilities, seccomp_cache)?,
            _ => None,
        };
        Ok(Security {
            capabilities,
            no_new_privileges,
            seccomp,
        })
    }
}

/// A capability set as a sorted list of names (`CAP_CHOWN`, ...).
mod capability_names {
    use caps::{Capability, CapsHashSet};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::str::FromStr;

    pub fn serialize<S: Serializer>(set: &CapsHashSet, s: S) -> Result<S::Ok, S::Error> {
        let mut names: Vec<String> = set.iter().map(|c| c.to_string()).collect();
        names.sort();
        names.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<CapsHashSet, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|n| Capability::from_str(n).map_err(serde::de::Error::custom))
            .collect()
    }
}

fn read_profile(path: &Path) -> Result<Profile, SecurityError> {
    let text = std::fs::read_to_string(path).map_err(|e| SecurityError::ProfileFile {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    Ok(Profile::parse(&text)?)
}

/// docker's `--security-opt` values: `seccomp=unconfined|builtin|FILE`,
/// `no-new-privileges[=BOOL]` (also with the old `:` separator). AppArmor and SELinux
/// options that ask for no confinement are accepted, since skiff applies none.
fn parse_security_opts(opts: &[String]) -> Result<(SeccompChoice, bool), SecurityError> {
    let mut seccomp = SeccompChoice::Default;
    let mut nnp = false;
    for opt in opts {
        if opt == "no-new-privileges" {
            nnp = true;
            continue;
        }
        let bad = || SecurityError::BadOption(opt.clone());
        let (key, value) = opt
            .split_once('=')
            .or_else(|| opt.split_once(':'))
            .ok_or_else(bad)?;
        match (key, value) {
            ("seccomp", "unconfined") => seccomp = SeccompChoice::Unconfined,
            ("seccomp", "builtin") => seccomp = SeccompChoice::Default,
            ("seccomp", "") => return Err(bad()),
            ("seccomp", file) => seccomp = SeccompChoice::File(file.to_string()),
            ("no-new-privileges", v) => nnp = parse_go_bool(v).ok_or_else(bad)?,
            ("apparmor", "unconfined") | ("label", "disable") => {}
            _ => return Err(bad()),
        }
    }
    Ok((seccomp, nnp))
}

/// Go's `strconv.ParseBool`.
fn parse_go_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// moby's `TweakCapabilities`: `--privileged` is every capability; `--cap-add ALL` is
/// every one but those dropped; `--cap-drop ALL` keeps only those added; otherwise
/// docker's defaults minus the dropped plus the added.
pub fn capabilities(
    privileged: bool,
    add: &[String],
    drop: &[String],
) -> Result<CapsHashSet, SecurityError> {
    if privileged {
        return Ok(all_capabilities());
    }
    let add = normalize(add)?;
    let drop = normalize(drop)?;
    let named =
        |list: &[Option<Capability>]| -> CapsHashSet { list.iter().flatten().copied().collect() };
    let set = if add.contains(&None) {
        let dropped = named(&drop);
        all_capabilities()
            .into_iter()
            .filter(|c| !dropped.contains(c))
            .collect()
    } else if drop.contains(&None) {
        named(&add)
    } else {
        let dropped = named(&drop);
        let mut set: CapsHashSet = docker_default_capabilities()
            .into_iter()
            .filter(|c| !dropped.contains(c))
            .collect();
        set.extend(named(&add));
        set
    };
    Ok(set)
}

/// docker's "all": every capability the running kernel knows, as far as skiff holds
/// it (the kernel refuses to give a process more, e.g. when skiff itself runs in a
/// container with a reduced set), so what `--privileged` keeps.
fn all_capabilities() -> CapsHashSet {
    let supported = caps::runtime::thread_all_supported();
    match caps::read(None, caps::CapSet::Permitted) {
        Ok(held) => supported.intersection(&held).copied().collect(),
        Err(_) => supported,
    }
}

/// docker's names: any case, with or without `CAP_`; `ALL` reads as `None`.
fn normalize(names: &[String]) -> Result<Vec<Option<Capability>>, SecurityError> {
    names
        .iter()
        .map(|name| {
            let upper = name.to_ascii_uppercase();
            if upper == "ALL" {
                return Ok(None);
            }
            let full = if upper.starts_with("CAP_") {
                upper
            } else {
                format!("CAP_{upper}")
            };
            Capability::from_str(&full)
                .map(Some)
                .map_err(|_| SecurityError::UnknownCapability(full))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn capability_flags_tweak_docker_defaults() {
        let default = docker_default_capabilities();
        assert_eq!(capabilities(false, &[], &[]).unwrap(), default);

        let set = capabilities(
            false,
            &strings(&["sys_admin", "CAP_NET_ADMIN"]),
            &strings(&["chown"]),
        )
        .unwrap();
        assert!(set.contains(&Capability::CAP_SYS_ADMIN));
        assert!(set.contains(&Capability::CAP_NET_ADMIN));
        assert!(!set.contains(&Capability::CAP_CHOWN));
        assert_eq!(set.len(), default.len() + 1);

        let all = all_capabilities();
        assert_eq!(capabilities(false, &strings(&["ALL"]), &[]).unwrap(), all);
        assert_eq!(capabilities(true, &[], &strings(&["ALL"])).unwrap(), all);
        let mut all_but_kill = all.clone();
        all_but_kill.remove(&Capability::CAP_KILL);
        assert_eq!(
            capabilities(false, &strings(&["all"]), &strings(&["KILL"])).unwrap(),
            all_but_kill
        );
        assert_eq!(
            capabilities(false, &strings(&["kill"]), &strings(&["ALL"])).unwrap(),
            [Capability::CAP_KILL].into_iter().collect()
        );
        assert_eq!(
            capabilities(false, &strings(&["FLY"]), &[]).unwrap_err(),
            SecurityError::UnknownCapability("CAP_FLY".into())
        );
    }

    #[test]
    fn security_opts_read_like_docker() {
        let parse = |v: &[&str]| parse_security_opts(&strings(v));
        assert_eq!(parse(&[]).unwrap(), (SeccompChoice::Default, false));
        assert_eq!(
            parse(&["seccomp=unconfined", "no-new-privileges"]).unwrap(),
            (SeccompChoice::Unconfined, true)
        );
        assert_eq!(
            parse(&["seccomp:/p.json", "no-new-privileges=false"]).unwrap(),
            (SeccompChoice::File("/p.json".into()), false)
        );
        assert_eq!(
            parse(&["no-new-privileges:true"]).unwrap(),
            (SeccompChoice::Default, true)
        );
        for bad in [
            "seccomp",
            "seccomp=",
            "no-new-privileges=maybe",
            "apparmor=docker-default",
            "x=y",
        ] {
            assert_eq!(
                parse(&[bad]).unwrap_err(),
                SecurityError::BadOption(bad.into()),
                "{bad}"
            );
        }
    }

    #[test]
    fn seccomp_follows_privileged_and_profile_choice() {
        let s = Security::new(false, &[], &[], &[], None).unwrap();
        assert!(s.seccomp.is_some());
        assert!(!s.no_new_privileges);
        assert!(Security::new(true, &[], &[], &[], None)
            .unwrap()
            .seccomp
            .is_none());
        let unconfined = strings(&["seccomp=unconfined"]);
        assert!(Security::new(false, &[], &[], &unconfined, None)
            .unwrap()
            .seccomp
            .is_none());

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.json");
        std::fs::write(&file, r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir"],"action":"SCMP_ACT_ERRNO"}]}"#).unwrap();
        let opt = vec![format!("seccomp={}", file.display())];
        assert!(Security::new(false, &[], &[], &opt, None)
            .unwrap()
            .seccomp
            .is_some());
        std::fs::write(&file, "{}").unwrap();
        assert!(Security::new(false, &[], &[], &opt, None)
            .unwrap()
            .seccomp
            .is_none());
        let missing = vec![format!("seccomp={}", dir.path().join("nope").display())];
        assert!(matches!(
            Security::new(false, &[], &[], &missing, None).unwrap_err(),
            SecurityError::ProfileFile { .. }
        ));
    }
}
