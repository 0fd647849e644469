//! What a container is made of: the process (from the image config and the CLI flags),
//! its isolation, mounts and resource limits. [`ContainerSpec`] is the seam between the
//! CLI (and image resolution) and the runtime ([`super::run`]).

use oci_spec::image::Config as ImageProcessConfig;
use std::path::PathBuf;

/// `PATH` used when neither the image nor `-e` sets one (Docker's default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Errors from building a spec out of image config and flags.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    /// Neither the image (Entrypoint/Cmd) nor the command line gives a program.
    #[error("no command specified")]
    NoCommand,
    /// A `-v` value is not `HOST:CONTAINER[:ro|rw]` with absolute paths.
    #[error("invalid volume specification {0:?}: want HOST:CONTAINER[:ro|rw] with absolute paths")]
    BadVolume(String),
    /// A `--ulimit` value is not `name=soft[:hard]` with a known name.
    #[error("invalid ulimit {0:?}: want NAME=SOFT[:HARD], e.g. nofile=1024:2048")]
    BadUlimit(String),
    /// A `--memory` value is not a size like `64m`.
    #[error("invalid memory size {0:?}: want a number with optional b, k, m or g suffix")]
    BadMemory(String),
    /// A `--cpus` value is not a positive decimal.
    #[error("invalid --cpus value {0:?}: want a positive number like 0.5")]
    BadCpus(String),
    /// A `--pids-limit` value is zero or negative (use -1 for unlimited).
    #[error("invalid --pids-limit {0}: want a positive number or -1")]
    BadPids(i64),
    /// A `-e` value or env-file line has an empty name.
    #[error("invalid environment variable {0:?}")]
    BadEnv(String),
    /// A `--network` value other than `none`/`host`/`bridge`.
    #[error(
        "invalid --network {0:?}: supported are \"none\" (default, loopback only) and \"host\""
    )]
    BadNetwork(String),
    /// `--cap-add`, `--cap-drop` or `--security-opt` is invalid.
    #[error(transparent)]
    Security(#[from] super::security::SecurityError),
    /// A `--device` is invalid.
    #[error(transparent)]
    Device(#[from] super::devices::DeviceError),
    /// A `--tmpfs` or `--mount` is invalid.
    #[error(transparent)]
    Mount(#[from] super::mounts::MountError),
    /// A `--sysctl` is invalid or not namespaced.
    #[error(transparent)]
    Sysctl(#[from] super::sysctl::SysctlError),
    /// A `--shm-size` value is not a positive size.
    #[error("invalid --shm-size {0:?}: want a positive size like 64m")]
    BadShmSize(String),
    /// A `--memory-swap` value is not a size or -1, is below `--memory`, or comes
    /// without `--memory`.
    #[error("invalid --memory-swap {0:?}: {1}")]
    BadMemorySwap(String, &'static str),
    /// A `--cpuset-cpus` value is not a CPU list like `0-2,4`.
    #[error("invalid --cpuset-cpus {0:?}: want a list like 0-2,4")]
    BadCpuset(String),
    /// `--init` without tini on the host.
    #[error("--init needs tini: install Debian's tini package (looked for {0})")]
    NoInit(String),
}

/// How the container sees the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum NetworkMode {
    /// A new network namespace with only the loopback interface up.
    Isolated,
    /// The host's network namespace.
    Host,
}

/// A host directory or file bind-mounted into the container (`-v`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BindMount {
    /// Host path (must exist).
    pub source: PathBuf,
    /// Absolute path inside the container.
    pub destination: PathBuf,
    /// Mounted read-only.
    pub read_only: bool,
}

/// One resource limit (`setrlimit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Rlimit {
    /// `libc::RLIMIT_*` value.
    pub resource: u32,
    /// Soft limit.
    pub soft: u64,
    /// Hard limit.
    pub hard: u64,
}

/// Cgroup limits; `None` means no limit.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Resources {
    /// Memory limit in bytes (`--memory`).
    pub memory: Option<u64>,
    /// CPU quota in microseconds per 100 ms period (`--cpus` × 100000).
    pub cpu_quota: Option<u64>,
    /// Maximum number of tasks (`--pids-limit`).
    pub pids: Option<u64>,
    /// Memory plus swap in bytes (`--memory-swap`); -1 is unlimited swap.
    pub memory_swap: Option<i64>,
    /// CPUs the container may run on (`--cpuset-cpus`, e.g. `0-2,4`).
    pub cpuset_cpus: Option<String>,
    /// Device cgroup rules beyond docker's default list (from `--device`).
    pub device_rules: Vec<String>,
}

/// Everything the runtime needs, apart from the root filesystem, to start a container.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ContainerSpec {
    /// Container id (64 hex digits, like Docker's).
    pub id: String,
    /// argv of the container's PID 1.
    pub args: Vec<String>,
    /// Environment, `KEY=VALUE`; `HOME` is added after user resolution when missing.
    pub env: Vec<String>,
    /// Working directory inside the container (created if missing).
    pub cwd: String,
    /// `user[:group]` to resolve in the container's /etc/passwd and /etc/group.
    pub user: String,
    /// The container's hostname.
    pub hostname: String,
    /// Network isolation.
    pub network: NetworkMode,
    /// Keep every capability skiff has, instead of Docker's default set.
    pub privileged: bool,
    /// Extra resource limits (`--ulimit`); the default RLIMIT_NOFILE is added by the runtime
    /// when not given here.
    pub rlimits: Vec<Rlimit>,
    /// `-v` bind mounts.
    pub binds: Vec<BindMount>,
    /// `--tmpfs` and `--mount type=tmpfs` mounts.
    pub tmpfs: Vec<super::mounts::TmpfsMount>,
    /// Mount the root filesystem read-only.
    pub read_only: bool,
    /// Cgroup limits.
    pub resources: Resources,
    /// Allocate a pty for the process (`-t`).
    pub tty: bool,
    /// Keep stdin attached (`-i`); without it the process gets /dev/null.
    pub stdin: bool,
    /// Directory for this container's runtime files (/etc/hosts, hostname, resolv.conf).
    pub state_dir: PathBuf,
    /// Capabilities, no_new_privs and the seccomp filter.
    pub security: super::security::Security,
    /// Host devices given to the container (`--device`).
    pub devices: Vec<super::devices::Device>,
    /// Supplementary groups added to the user's (`--group-add`), names or ids.
    pub group_add: Vec<String>,
    /// Size of /dev/shm in bytes (`--shm-size`, default 64 MiB).
    pub shm_size: u64,
    /// Namespaced kernel settings (`--sysctl`), written by PID 1.
    pub sysctls: Vec<(String, String)>,
}

/// The flags of `skiff run` that shape the container, independent of clap.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Command and arguments after the image name (replace the image's Cmd).
    pub command: Vec<String>,
    /// `--entrypoint` (an empty string clears the image's entrypoint).
    pub entrypoint: Option<String>,
    /// `-e` values: `K=V`, or `K` to copy the host's value.
    pub env: Vec<String>,
    /// Contents of `--env-file` files, in order.
    pub env_files: Vec<String>,
    /// `-w`.
    pub workdir: Option<String>,
    /// `-u`.
    pub user: Option<String>,
    /// `-h`.
    pub hostname: Option<String>,
    /// `--network`.
    pub network: Option<String>,
    /// `--privileged`.
    pub privileged: bool,
    /// `--ulimit` values.
    pub ulimits: Vec<String>,
    /// `-v` values.
    pub volumes: Vec<String>,
    /// `--tmpfs` values.
    pub tmpfs: Vec<String>,
    /// `--read-only`.
    pub read_only: bool,
    /// `--memory`.
    pub memory: Option<String>,
    /// `--cpus`.
    pub cpus: Option<String>,
    /// `--pids-limit`.
    pub pids_limit: Option<i64>,
    /// `-t`.
    pub tty: bool,
    /// `-i`.
    pub interactive: bool,
    /// `--cap-add` values.
    pub cap_add: Vec<String>,
    /// `--cap-drop` values.
    pub cap_drop: Vec<String>,
    /// `--security-opt` values.
    pub security_opt: Vec<String>,
    /// `--init`: tini as PID 1.
    pub init: bool,
    /// `--device` values.
    pub devices: Vec<String>,
    /// `--mount` values.
    pub mounts: Vec<String>,
    /// `--group-add` values.
    pub group_add: Vec<String>,
    /// `--shm-size`.
    pub shm_size: Option<String>,
    /// `--sysctl` values.
    pub sysctls: Vec<String>,
    /// `--memory-swap`.
    pub memory_swap: Option<String>,
    /// `--cpuset-cpus`.
    pub cpuset_cpus: Option<String>,
    /// Where compiled seccomp filters are kept between runs (the root's
    /// [`RootLayout::seccomp_cache`](skiff_proto::store::RootLayout::seccomp_cache));
    /// `None` compiles the filter every time.
    pub seccomp_cache: Option<PathBuf>,
}

impl ContainerSpec {
    /// Builds the spec from the image's process config (may be absent) and the flags.
    /// `id` names the container; `state_dir` is where its runtime files go.
    pub fn new(
        image: Option<&ImageProcessConfig>,
        opts: &RunOptions,
        id: String,
        state_dir: PathBuf,
    ) -> Result<ContainerSpec, SpecError> {
        let entrypoint: Vec<String> = match &opts.entrypoint {
            Some(e) if e.is_empty() => Vec::new(),
            Some(e) => vec![e.clone()],
            None => image
                .and_then(|c| c.entrypoint().clone())
                .unwrap_or_default(),
        };
        // Docker: a given --entrypoint also drops the image's Cmd.
        let cmd: Vec<String> = if !opts.command.is_empty() {
            opts.command.clone()
        } else if opts.entrypoint.is_some() {
            Vec::new()
        } else {
            image.and_then(|c| c.cmd().clone()).unwrap_or_default()
        };
        let mut args: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
        if args.is_empty() {
            return Err(SpecError::NoCommand);
        }

        let hostname = opts
            .hostname
            .clone()
            .unwrap_or_else(|| id.chars().take(12).collect());
        let network = match opts.network.as_deref() {
            None | Some("none") | Some("bridge") | Some("default") => NetworkMode::Isolated,
            Some("host") => NetworkMode::Host,
            Some(other) => return Err(SpecError::BadNetwork(other.to_string())),
        };

        // Docker's order: defaults, then image Env, then env files, then -e.
        let mut env = vec![
            format!("PATH={DEFAULT_PATH}"),
            format!("HOSTNAME={hostname}"),
        ];
        if opts.tty {
            env.push("TERM=xterm".to_string());
        }
        for kv in image.and_then(|c| c.env().clone()).unwrap_or_default() {
            set_env(&mut env, &kv)?;
        }
        for file in &opts.env_files {
            for line in file.lines() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                set_env(&mut env, &expand_host_env(line))?;
            }
        }
        for kv in &opts.env {
            set_env(&mut env, &expand_host_env(kv))?;
        }

        let cwd = opts
            .workdir
            .clone()
            .or_else(|| image.and_then(|c| c.working_dir().clone()))
            .filter(|w| !w.is_empty())
            .unwrap_or_else(|| "/".to_string());
        let user = opts
            .user
            .clone()
            .or_else(|| image.and_then(|c| c.user().clone()))
            .unwrap_or_default();

        let rlimits = opts
            .ulimits
            .iter()
            .map(|u| parse_ulimit(u))
            .collect::<Result<Vec<_>, _>>()?;
        let mut binds = opts
            .volumes
            .iter()
            .map(|v| parse_volume(v))
            .collect::<Result<Vec<_>, _>>()?;
        let mut tmpfs = opts
            .tmpfs
            .iter()
            .map(|t| super::mounts::parse_tmpfs(t))
            .collect::<Result<Vec<_>, _>>()?;
        for m in &opts.mounts {
            match super::mounts::parse_mount(m)? {
                super::mounts::Mount::Bind(b) => binds.push(b),
                super::mounts::Mount::Tmpfs(t) => tmpfs.push(t),
            }
        }
        if opts.init {
            // docker's place for it, bound read-only; it runs the command as its child.
            let tini = init_binary()?;
            binds.push(BindMount {
                source: tini,
                destination: PathBuf::from(DOCKER_INIT),
                read_only: true,
            });
            args.splice(0..0, [DOCKER_INIT.to_string(), "--".to_string()]);
        }
        let devices = opts
            .devices
            .iter()
            .map(|d| super::devices::Device::parse(d))
            .collect::<Result<Vec<_>, _>>()?;
        let sysctls = opts
            .sysctls
            .iter()
            .map(|s| super::sysctl::parse(s, network == NetworkMode::Isolated))
            .collect::<Result<Vec<_>, _>>()?;
        let shm_size = match &opts.shm_size {
            None => 64 << 20,
            Some(s) => parse_size(s)
                .filter(|n| *n > 0)
                .ok_or_else(|| SpecError::BadShmSize(s.clone()))?,
        };
        let memory = opts.memory.as_deref().map(parse_memory).transpose()?;
        let resources = Resources {
            memory_swap: opts
                .memory_swap
                .as_deref()
                .map(|s| parse_memory_swap(s, memory))
                .transpose()?,
            cpuset_cpus: opts.cpuset_cpus.as_deref().map(parse_cpuset).transpose()?,
            device_rules: devices.iter().map(|d| d.cgroup_rule()).collect(),
            memory,
            cpu_quota: opts.cpus.as_deref().map(parse_cpus).transpose()?,
            pids: match opts.pids_limit {
                None | Some(-1) => None,
                Some(n) if n > 0 => Some(n as u64),
                Some(n) => return Err(SpecError::BadPids(n)),
            },
        };
        let seccomp_cache = opts
            .seccomp_cache
            .as_ref()
            .map(super::seccomp_cache::FilterCache::new);
        let security = super::security::Security::new(
            opts.privileged,
            &opts.cap_add,
            &opts.cap_drop,
            &opts.security_opt,
            seccomp_cache.as_ref(),
        )?;

        Ok(ContainerSpec {
            id,
            args,
            env,
            cwd,
            user,
            hostname,
            network,
            privileged: opts.privileged,
            rlimits,
            binds,
            tmpfs,
            read_only: opts.read_only,
            resources,
            tty: opts.tty,
            stdin: opts.interactive,
            state_dir,
            security,
            devices,
            group_add: opts.group_add.clone(),
            shm_size,
            sysctls,
        })
    }
}

/// Where `--init` puts tini in the container (docker's path).
pub const DOCKER_INIT: &str = "/sbin/docker-init";

/// Host paths tried for `--init`'s tini, static first (it must run in any image, with
/// or without a C library); `SKIFF_INIT_PATH` comes before them.
const TINI_PATHS: &[&str] = &["/usr/bin/tini-static", "/usr/bin/tini"];

/// The tini binary `--init` binds into the container.
pub fn init_binary() -> Result<PathBuf, SpecError> {
    let env = std::env::var_os("SKIFF_INIT_PATH").map(PathBuf::from);
    env.into_iter()
        .chain(TINI_PATHS.iter().map(PathBuf::from))
        .find(|p| p.is_file())
        .ok_or_else(|| SpecError::NoInit(format!("$SKIFF_INIT_PATH, {}", TINI_PATHS.join(", "))))
}

/// Parses `--memory-swap` (memory plus swap, or -1 for unlimited swap) against the
/// `--memory` it needs, as docker checks it.
pub fn parse_memory_swap(s: &str, memory: Option<u64>) -> Result<i64, SpecError> {
    let bad = |why| SpecError::BadMemorySwap(s.to_string(), why);
    let Some(memory) = memory else {
        return Err(bad("it needs --memory"));
    };
    if s.trim() == "-1" {
        return Ok(-1);
    }
    let total = parse_size(s).ok_or_else(|| bad("want a size like 128m, or -1"))?;
    if total < memory {
        return Err(bad("it must be at least --memory"));
    }
    i64::try_from(total).map_err(|_| bad("too large"))
}

/// Checks a `--cpuset-cpus` list (`0-2,4`).
pub fn parse_cpuset(s: &str) -> Result<String, SpecError> {
    let ok = !s.is_empty()
        && s.split(',').all(|part| {
            let mut ends = part.splitn(2, '-');
            let first = ends.next().and_then(|a| a.parse::<u32>().ok());
            match (first, ends.next()) {
                (Some(_), None) => true,
                (Some(a), Some(b)) => b.parse::<u32>().is_ok_and(|b| b >= a),
                _ => false,
            }
        });
    if ok {
        Ok(s.to_string())
    } else {
        Err(SpecError::BadCpuset(s.to_string()))
    }
}

/// `base` with the `-e` values of `extra` applied in order (`K=V` replaces or adds,
/// `K` alone copies the host's value): the environment of a `skiff exec` process.
pub fn merge_env(base: &[String], extra: &[String]) -> Result<Vec<String>, SpecError> {
    let mut env = base.to_vec();
    for kv in extra {
        set_env(&mut env, &expand_host_env(kv))?;
    }
    Ok(env)
}

/// `K` alone takes the host's value (Docker's `-e K`); unset on the host means skip.
fn expand_host_env(kv: &str) -> String {
    if kv.contains('=') {
        kv.to_string()
    } else {
        match std::env::var(kv) {
            Ok(v) => format!("{kv}={v}"),
            Err(_) => kv.to_string(),
        }
    }
}

/// Replaces the variable named in `kv` or appends it.
fn set_env(env: &mut Vec<String>, kv: &str) -> Result<(), SpecError> {
    let Some((name, _)) = kv.split_once('=') else {
        // `-e NAME` with NAME unset on the host: Docker leaves it out.
        if kv.is_empty() {
            return Err(SpecError::BadEnv(kv.to_string()));
        }
        return Ok(());
    };
    if name.is_empty() {
        return Err(SpecError::BadEnv(kv.to_string()));
    }
    let prefix = format!("{name}=");
    match env.iter_mut().find(|e| e.starts_with(&prefix)) {
        Some(slot) => *slot = kv.to_string(),
        None => env.push(kv.to_string()),
    }
    Ok(())
}

/// Parses `-v HOST:CONTAINER[:ro|rw]`.
pub fn parse_volume(v: &str) -> Result<BindMount, SpecError> {
    let bad = || SpecError::BadVolume(v.to_string());
    let parts: Vec<&str> = v.split(':').collect();
    let (src, dst, ro) = match parts.as_slice() {
        [s, d] => (*s, *d, false),
        [s, d, "ro"] => (*s, *d, true),
        [s, d, "rw"] => (*s, *d, false),
        _ => return Err(bad()),
    };
    if !src.starts_with('/') || !dst.starts_with('/') {
        return Err(bad());
    }
    Ok(BindMount {
        source: PathBuf::from(src),
        destination: PathBuf::from(dst),
        read_only: ro,
    })
}

/// Parses Docker's `--ulimit NAME=SOFT[:HARD]`.
pub fn parse_ulimit(u: &str) -> Result<Rlimit, SpecError> {
    let bad = || SpecError::BadUlimit(u.to_string());
    let (name, values) = u.split_once('=').ok_or_else(bad)?;
    let resource = match name {
        "core" => libc::RLIMIT_CORE,
        "cpu" => libc::RLIMIT_CPU,
        "data" => libc::RLIMIT_DATA,
        "fsize" => libc::RLIMIT_FSIZE,
        "locks" => libc::RLIMIT_LOCKS,
        "memlock" => libc::RLIMIT_MEMLOCK,
        "msgqueue" => libc::RLIMIT_MSGQUEUE,
        "nice" => libc::RLIMIT_NICE,
        "nofile" => libc::RLIMIT_NOFILE,
        "nproc" => libc::RLIMIT_NPROC,
        "rss" => libc::RLIMIT_RSS,
        "rtprio" => libc::RLIMIT_RTPRIO,
        "rttime" => libc::RLIMIT_RTTIME,
        "sigpending" => libc::RLIMIT_SIGPENDING,
        "stack" => libc::RLIMIT_STACK,
        _ => return Err(bad()),
    };
    let parse = |s: &str| -> Result<u64, SpecError> {
        if s == "-1" || s == "unlimited" {
            Ok(libc::RLIM_INFINITY)
        } else {
            s.parse().map_err(|_| bad())
        }
    };
    let (soft, hard) = match values.split_once(':') {
        Some((s, h)) => (parse(s)?, parse(h)?),
        None => {
            let v = parse(values)?;
            (v, v)
        }
    };
    if soft > hard {
        return Err(bad());
    }
    Ok(Rlimit {
        resource: resource as u32,
        soft,
        hard,
    })
}

/// Parses a memory limit like `64m`, `1g`, `512k`, `1000` (bytes), at least 6 MiB.
pub fn parse_memory(s: &str) -> Result<u64, SpecError> {
    let bytes = parse_size(s).ok_or_else(|| SpecError::BadMemory(s.to_string()))?;
    // Docker refuses limits below 6 MiB; a smaller one only kills the runtime itself.
    if bytes < 6 << 20 {
        return Err(SpecError::BadMemory(s.to_string()));
    }
    Ok(bytes)
}

/// Parses a size like `64m`, `1g`, `512k`, `2MiB`, `1000` (bytes).
pub fn parse_size(s: &str) -> Option<u64> {
    let lower = s.trim().to_ascii_lowercase();
    let lower = lower.strip_suffix('b').unwrap_or(&lower);
    let lower = lower.strip_suffix('i').unwrap_or(lower);
    let (digits, mult) = match lower.chars().last() {
        Some('k') => (&lower[..lower.len() - 1], 1u64 << 10),
        Some('m') => (&lower[..lower.len() - 1], 1 << 20),
        Some('g') => (&lower[..lower.len() - 1], 1 << 30),
        _ => (lower, 1),
    };
    digits.parse::<u64>().ok()?.checked_mul(mult)
}

/// Parses `--cpus` into a CFS quota per 100 ms period.
pub fn parse_cpus(s: &str) -> Result<u64, SpecError> {
    let v: f64 = s.parse().map_err(|_| SpecError::BadCpus(s.to_string()))?;
    if !(v.is_finite() && v > 0.0 && v <= 1024.0) {
        return Err(SpecError::BadCpus(s.to_string()));
    }
    Ok(((v * 100_000.0).round() as u64).max(1000))
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::image::ConfigBuilder;

    fn image() -> ImageProcessConfig {
        ConfigBuilder::default()
            .entrypoint(vec!["/bin/ep".to_string()])
            .cmd(vec!["a".to_string(), "b".to_string()])
            .env(vec!["PATH=/img".to_string(), "FOO=1".to_string()])
            .working_dir("/work".to_string())
            .user("alice".to_string())
            .build()
            .unwrap()
    }

    fn spec(opts: RunOptions) -> Result<ContainerSpec, SpecError> {
        ContainerSpec::new(
            Some(&image()),
            &opts,
            "0123456789abcdef".into(),
            "/tmp".into(),
        )
    }

    #[test]
    fn image_config_maps_to_process() {
        let s = spec(RunOptions::default()).unwrap();
        assert_eq!(s.args, ["/bin/ep", "a", "b"]);
        assert_eq!(s.env, ["PATH=/img", "HOSTNAME=0123456789ab", "FOO=1"]);
        assert_eq!(s.cwd, "/work");
        assert_eq!(s.user, "alice");
        assert_eq!(s.hostname, "0123456789ab");
    }

    #[test]
    fn flags_override_image() {
        let s = spec(RunOptions {
            command: vec!["x".into()],
            env: vec!["FOO=2".into(), "BAR=3".into()],
            env_files: vec!["# c\nBAZ=4\nFOO=0\n".into()],
            workdir: Some("/w".into()),
            user: Some("1:2".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(s.args, ["/bin/ep", "x"]);
        assert_eq!(
            s.env,
            [
                "PATH=/img",
                "HOSTNAME=0123456789ab",
                "FOO=2",
                "BAZ=4",
                "BAR=3"
            ]
        );
        assert_eq!((s.cwd.as_str(), s.user.as_str()), ("/w", "1:2"));

        let s = spec(RunOptions {
            entrypoint: Some("/bin/sh".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(s.args, ["/bin/sh"]);
        assert_eq!(
            spec(RunOptions {
                entrypoint: Some(String::new()),
                ..Default::default()
            })
            .unwrap_err(),
            SpecError::NoCommand
        );
    }

    #[test]
    fn no_image_defaults() {
        let opts = RunOptions {
            command: vec!["true".into()],
            tty: true,
            ..Default::default()
        };
        let s = ContainerSpec::new(None, &opts, "abc".into(), "/tmp".into()).unwrap();
        assert_eq!(
            s.env,
            [
                format!("PATH={DEFAULT_PATH}"),
                "HOSTNAME=abc".into(),
                "TERM=xterm".into()
            ]
        );
        assert_eq!((s.cwd.as_str(), s.user.as_str()), ("/", ""));
    }

    #[test]
    fn flag_values_parse_or_fail_clearly() {
        assert_eq!(parse_memory("64m").unwrap(), 64 << 20);
        assert_eq!(parse_memory("1G").unwrap(), 1 << 30);
        assert!(parse_memory("lots").is_err());
        assert!(parse_memory("1k").is_err());
        assert_eq!(parse_cpus("0.5").unwrap(), 50_000);
        assert!(parse_cpus("-1").is_err());
        assert!(parse_cpus("NaN").is_err());
        let r = parse_ulimit("nofile=1024:2048").unwrap();
        assert_eq!(
            (r.resource, r.soft, r.hard),
            (libc::RLIMIT_NOFILE as u32, 1024, 2048)
        );
        assert!(parse_ulimit("nofile=2048:1024").is_err());
        assert!(parse_ulimit("bogus=1").is_err());
        assert_eq!(
            parse_volume("/a:/b:ro").unwrap(),
            BindMount {
                source: "/a".into(),
                destination: "/b".into(),
                read_only: true
            }
        );
        assert!(parse_volume("a:/b").is_err());
        assert!(parse_volume("/a:/b:zz").is_err());
        assert!(spec(RunOptions {
            pids_limit: Some(0),
            ..Default::default()
        })
        .is_err());
        assert!(spec(RunOptions {
            network: Some("bridge0".into()),
            ..Default::default()
        })
        .is_err());
    }

    #[test]
    fn docker_resource_flags_parse_or_fail_clearly() {
        assert_eq!(
            parse_memory_swap("128m", Some(64 << 20)).unwrap(),
            128 << 20
        );
        assert_eq!(parse_memory_swap("-1", Some(64 << 20)).unwrap(), -1);
        assert!(parse_memory_swap("128m", None).is_err());
        assert!(parse_memory_swap("32m", Some(64 << 20)).is_err());
        assert_eq!(parse_cpuset("0-2,4").unwrap(), "0-2,4");
        for bad in ["", "a", "2-1", "0,", "-1"] {
            assert!(parse_cpuset(bad).is_err(), "{bad}");
        }
        let s = spec(RunOptions {
            shm_size: Some("8m".into()),
            sysctls: vec!["kernel.sem=1 2 3 4".into()],
            group_add: vec!["audio".into()],
            mounts: vec!["type=tmpfs,target=/t".into()],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(s.shm_size, 8 << 20);
        assert_eq!(
            s.sysctls,
            [("kernel.sem".to_string(), "1 2 3 4".to_string())]
        );
        assert_eq!(s.tmpfs[0].destination, PathBuf::from("/t"));
        assert!(spec(RunOptions {
            shm_size: Some("0".into()),
            ..Default::default()
        })
        .is_err());
    }

    #[test]
    fn init_runs_the_command_under_tini() {
        let Ok(tini) = init_binary() else {
            panic!("tini is needed: apt-get install tini");
        };
        let s = spec(RunOptions {
            init: true,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(s.args, [DOCKER_INIT, "--", "/bin/ep", "a", "b"]);
        let bind = s.binds.last().unwrap();
        assert_eq!(
            (&bind.source, bind.destination.to_str(), bind.read_only),
            (&tini, Some(DOCKER_INIT), true)
        );
    }
}
