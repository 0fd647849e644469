//! The process PID 1 becomes: its resource limits, its identity and capabilities, and
//! the program it execs (found on `PATH` with docker's exit statuses). The steps are
//! functions over [`Syscall`]; [`super::init`] calls them in runc's order.

use super::security::Security;
use super::spec::{ContainerSpec, Rlimit};
use super::sys::Syscall;
use super::users;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Exit status docker uses when the runtime itself fails.
pub const EXIT_SETUP: u8 = 125;
/// Exit status when the command exists but cannot be run.
pub const EXIT_CANNOT_INVOKE: u8 = 126;
/// Exit status when the command is not found.
pub const EXIT_NOT_FOUND: u8 = 127;

/// A failure inside the container before exec: the exit status skiff should return and
/// the message to print.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct InitError {
    /// 125, 126 or 127 (docker's meanings).
    pub code: u8,
    /// What failed, with which input.
    pub message: String,
}

impl InitError {
    /// A runtime failure (exit status 125): `what` failed because of `e`.
    pub fn setup(what: &str, e: impl std::fmt::Display) -> InitError {
        InitError {
            code: EXIT_SETUP,
            message: format!("{what}: {e}"),
        }
    }
}

/// What PID 1 execs: the program found on `PATH`, its argv and environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Program {
    /// The executable's path.
    pub path: CString,
    /// argv, `argv[0]` as given.
    pub argv: Vec<CString>,
    /// The environment.
    pub envp: Vec<CString>,
}

impl Program {
    /// Finds `args[0]` on the `PATH` of `env` (runc's lookup, docker's 126/127) and
    /// turns everything into C strings.
    pub fn find(args: &[String], env: &[String]) -> Result<Program, InitError> {
        let path_var = env
            .iter()
            .rev()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or("");
        let program = find_executable(&args[0], path_var)?;
        let to_c = |s: &str| {
            CString::new(s).map_err(|_| InitError::setup("argument contains a NUL byte", s))
        };
        let argv = args
            .iter()
            .map(|a| to_c(a))
            .collect::<Result<Vec<_>, _>>()?;
        let envp = env.iter().map(|e| to_c(e)).collect::<Result<Vec<_>, _>>()?;
        let path = CString::new(program.as_os_str().as_bytes())
            .map_err(|_| InitError::setup("program path contains a NUL byte", program.display()))?;
        Ok(Program { path, argv, envp })
    }
}

/// Looks `user_spec` (and `--group-add`'s `group_add`) up in the container's own
/// /etc/passwd and /etc/group (so: after pivot_root or joining its mount namespace);
/// returns the user and `env` with HOME added from its entry when missing.
pub fn container_user(
    user_spec: &str,
    group_add: &[String],
    env: &[String],
) -> Result<(users::ResolvedUser, Vec<String>), InitError> {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let group = std::fs::read_to_string("/etc/group").unwrap_or_default();
    let user = users::resolve_with_groups(user_spec, &passwd, &group, group_add).map_err(|e| {
        InitError {
            code: EXIT_SETUP,
            message: e.to_string(),
        }
    })?;
    let mut env = env.to_vec();
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!("HOME={}", user.home));
    }
    Ok((user, env))
}

/// Becomes the container user with its capabilities: bounding set first (needs
/// CAP_SETPCAP, so while still root), then uid/gid/groups (keeping permitted caps),
/// then effective/permitted (none for a non-root user, as exec would drop them
/// anyway), then no_new_privs if asked for. `--privileged` keeps every capability.
/// The seccomp filter goes in as runc loads it: without no_new_privs the kernel wants
/// CAP_SYS_ADMIN for it, so first; with no_new_privs, last.
pub fn drop_privileges(
    sys: &dyn Syscall,
    spec: &ContainerSpec,
    user: &users::ResolvedUser,
) -> Result<(), InitError> {
    apply_privileges(sys, &spec.security, spec.privileged, &spec.user, user)
}

/// [`drop_privileges`] from its parts (what `skiff exec` recorded of the container):
/// `security` and `privileged` as the container has them; `user_spec` names the user
/// in messages.
pub fn apply_privileges(
    sys: &dyn Syscall,
    security: &Security,
    privileged: bool,
    user_spec: &str,
    user: &users::ResolvedUser,
) -> Result<(), InitError> {
    let load_seccomp = || match &security.seccomp {
        Some(f) => sys
            .load_seccomp(f)
            .map_err(|e| InitError::setup("loading seccomp filter", e)),
        None => Ok(()),
    };
    if !security.no_new_privileges {
        load_seccomp()?;
    }
    let caps = security.capabilities.clone();
    if !privileged {
        sys.drop_bounding(&caps)
            .map_err(|e| InitError::setup("dropping capabilities", e))?;
    }
    sys.set_identity(user.uid, user.gid, &user.additional_gids)
        .map_err(|e| InitError::setup(&format!("switching to user {user_spec:?}"), e))?;
    let effective = match (privileged, user.uid) {
        (true, 0) => None,
        (false, 0) => Some(caps),
        (_, _) => Some(Default::default()),
    };
    sys.set_capabilities(effective.as_ref())
        .map_err(|e| InitError::setup("setting capabilities", e))?;
    if security.no_new_privileges {
        sys.set_no_new_privs()
            .map_err(|e| InitError::setup("setting no_new_privs", e))?;
        load_seccomp()?;
    }
    Ok(())
}

/// Applies the default RLIMIT_NOFILE (unless `--ulimit nofile` is given) and the
/// `--ulimit` values.
pub fn set_rlimits(
    sys: &dyn Syscall,
    spec: &ContainerSpec,
    default_nofile: u64,
) -> Result<(), InitError> {
    apply_rlimits(sys, &spec.rlimits, default_nofile)
}

/// [`set_rlimits`] from the list of limits alone (for `skiff exec`).
pub fn apply_rlimits(
    sys: &dyn Syscall,
    rlimits: &[Rlimit],
    default_nofile: u64,
) -> Result<(), InitError> {
    let nofile = libc::RLIMIT_NOFILE as u32;
    if !rlimits.iter().any(|r| r.resource == nofile) {
        sys.set_rlimit(nofile, default_nofile, default_nofile)
            .map_err(|e| InitError::setup("setting resource limits", e))?;
    }
    for r in rlimits {
        sys.set_rlimit(r.resource, r.soft, r.hard)
            .map_err(|e| InitError::setup("setting resource limits", e))?;
    }
    Ok(())
}

/// Finds `name` the way `exec.LookPath` does in runc: as given when it has a slash,
/// else in each `PATH` directory.
pub fn find_executable(name: &str, path_var: &str) -> Result<PathBuf, InitError> {
    let is_exec = |p: &Path| {
        std::fs::metadata(p).map(|m| m.is_file()).unwrap_or(false)
            && nix::unistd::access(p, nix::unistd::AccessFlags::X_OK).is_ok()
    };
    if name.contains('/') {
        let p = PathBuf::from(name);
        return match std::fs::metadata(&p) {
            Err(_) => Err(InitError {
                code: EXIT_NOT_FOUND,
                message: format!("exec: \"{name}\": stat {name}: no such file or directory"),
            }),
            Ok(_) if !is_exec(&p) => Err(InitError {
                code: EXIT_CANNOT_INVOKE,
                message: format!("exec: \"{name}\": permission denied"),
            }),
            Ok(_) => Ok(p),
        };
    }
    let mut denied = false;
    for dir in path_var.split(':') {
        let dir = if dir.is_empty() { "." } else { dir };
        let candidate = Path::new(dir).join(name);
        if is_exec(&candidate) {
            return Ok(candidate);
        }
        denied |= candidate.is_file();
    }
    Err(if denied {
        InitError {
            code: EXIT_CANNOT_INVOKE,
            message: format!("exec: \"{name}\": permission denied"),
        }
    } else {
        InitError {
            code: EXIT_NOT_FOUND,
            message: format!("exec: \"{name}\": executable file not found in $PATH"),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::super::spec::RunOptions;
    use super::super::sys::recording::Recorder;
    use super::*;

    fn spec(opts: RunOptions) -> ContainerSpec {
        let opts = RunOptions {
            command: vec!["true".into()],
            ..opts
        };
        ContainerSpec::new(None, &opts, "id".into(), "/tmp".into()).unwrap()
    }

    fn user(uid: u32) -> users::ResolvedUser {
        users::ResolvedUser {
            uid,
            gid: uid,
            additional_gids: vec![10],
            home: "/".into(),
        }
    }

    #[test]
    fn privileges_drop_in_order() {
        let rec = Recorder::default();
        drop_privileges(&rec, &spec(RunOptions::default()), &user(0)).unwrap();
        assert_eq!(
            *rec.calls.borrow(),
            ["seccomp", "bounding 14", "identity 0 0 [10]", "caps 14"]
        );

        let rec = Recorder::default();
        drop_privileges(&rec, &spec(RunOptions::default()), &user(1000)).unwrap();
        assert_eq!(
            *rec.calls.borrow(),
            [
                "seccomp",
                "bounding 14",
                "identity 1000 1000 [10]",
                "caps 0"
            ]
        );

        // With no_new_privs the filter comes last, and needs no CAP_SYS_ADMIN.
        let rec = Recorder::default();
        let nnp = spec(RunOptions {
            security_opt: vec!["no-new-privileges".into()],
            cap_add: vec!["SYS_ADMIN".into()],
            ..Default::default()
        });
        drop_privileges(&rec, &nnp, &user(1000)).unwrap();
        assert_eq!(
            *rec.calls.borrow(),
            [
                "bounding 15",
                "identity 1000 1000 [10]",
                "caps 0",
                "no_new_privs",
                "seccomp"
            ]
        );

        let rec = Recorder::default();
        let privileged = spec(RunOptions {
            privileged: true,
            ..Default::default()
        });
        drop_privileges(&rec, &privileged, &user(0)).unwrap();
        assert_eq!(*rec.calls.borrow(), ["identity 0 0 [10]", "caps all"]);
    }

    #[test]
    fn rlimits_default_nofile_unless_given() {
        let rec = Recorder::default();
        set_rlimits(&rec, &spec(RunOptions::default()), 4096).unwrap();
        assert_eq!(*rec.calls.borrow(), ["setrlimit RLIMIT_NOFILE 4096 4096"]);

        let rec = Recorder::default();
        let s = spec(RunOptions {
            ulimits: vec!["nofile=10:20".into(), "nproc=5".into()],
            ..Default::default()
        });
        set_rlimits(&rec, &s, 4096).unwrap();
        assert_eq!(
            *rec.calls.borrow(),
            [
                "setrlimit RLIMIT_NOFILE 10 20",
                "setrlimit RLIMIT_NPROC 5 5"
            ]
        );
    }

    #[test]
    fn executable_lookup_gives_docker_codes() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        std::fs::write(bin.join("noexec"), "").unwrap();
        std::os::unix::fs::symlink("/bin/sh", bin.join("prog")).unwrap();
        let path = bin.to_str().unwrap();
        assert_eq!(find_executable("prog", path).unwrap(), bin.join("prog"));
        assert_eq!(
            find_executable("nothere", path).unwrap_err().code,
            EXIT_NOT_FOUND
        );
        // Root may access anything, but a file without x bits is not executable.
        assert_eq!(
            find_executable("noexec", path).unwrap_err().code,
            EXIT_CANNOT_INVOKE
        );
        let abs = bin.join("missing");
        assert_eq!(
            find_executable(abs.to_str().unwrap(), path)
                .unwrap_err()
                .code,
            EXIT_NOT_FOUND
        );
    }
}
