//! `skiff run`: run a command in a new container.
//!
//! `skiff run IMAGE [COMMAND…]` resolves the image, mounts its merged lazy view with a
//! copy-on-write upper under the container's state directory (the FUSE server lives in
//! this process for the container's lifetime), runs the container on it, and unmounts.
//! `--rootfs DIR [--image-config FILE]` runs on a plain directory instead.

use super::Global;
use crate::container::restart_policy::{self, Relaunch, RestartPolicy};
use crate::container::state::{self, ContainerState, ProcessId, Status};
use crate::container::{self, ContainerSpec, RunOptions};
use anyhow::Context;
use std::path::{Path, PathBuf};

/// Arguments of `skiff run`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Run on this root filesystem directory instead of an image (then every positional
    /// argument is the command).
    #[arg(long, value_name = "DIR")]
    pub rootfs: Option<PathBuf>,
    /// The image's OCI config JSON (Entrypoint, Cmd, Env, WorkingDir, User) for --rootfs.
    #[arg(long, value_name = "FILE", requires = "rootfs")]
    pub image_config: Option<PathBuf>,
    /// Set environment variables (K=V, or K to copy the host's value).
    #[arg(short = 'e', long = "env", value_name = "K=V")]
    pub env: Vec<String>,
    /// Read environment variables from a file (K=V lines, # comments).
    #[arg(long = "env-file", value_name = "FILE")]
    pub env_file: Vec<PathBuf>,
    /// Overwrite the image's entrypoint ("" clears it).
    #[arg(long, value_name = "CMD")]
    pub entrypoint: Option<String>,
    /// Working directory inside the container (created if missing).
    #[arg(short = 'w', long = "workdir", value_name = "DIR")]
    pub workdir: Option<String>,
    /// User to run as: name|uid[:group|gid], looked up in the container's files.
    #[arg(short = 'u', long, value_name = "USER[:GROUP]")]
    pub user: Option<String>,
    /// Container hostname (default: the first 12 hex digits of its id).
    #[arg(long, value_name = "NAME")]
    pub hostname: Option<String>,
    /// Network: "bridge" (default: bridge skiff0 with outbound NAT), a network made
    /// with `skiff network create`, "none" (loopback only) or "host". SKIFF_NETWORK
    /// sets the default.
    #[arg(long, alias = "net", value_name = "NETWORK", env = "SKIFF_NETWORK")]
    pub network: Option<String>,
    /// Ports, DNS and hosts entries (see crate::network).
    #[command(flatten)]
    pub net: super::network::RunNetworkArgs,
    /// All capabilities, no seccomp filter, every device.
    #[arg(long)]
    pub privileged: bool,
    /// Resource limit, NAME=SOFT[:HARD] (e.g. nofile=1024:2048).
    #[arg(long, value_name = "NAME=SOFT[:HARD]")]
    pub ulimit: Vec<String>,
    /// Bind mount a host path: HOST:CONTAINER[:ro|rw].
    #[arg(short = 'v', long = "volume", value_name = "HOST:CONTAINER[:ro]")]
    pub volume: Vec<String>,
    /// Mount a tmpfs at this container path.
    #[arg(long, value_name = "PATH")]
    pub tmpfs: Vec<String>,
    /// Mount the container's root filesystem read-only.
    #[arg(long)]
    pub read_only: bool,
    /// Memory limit (e.g. 64m, 1g).
    #[arg(short = 'm', long, value_name = "SIZE")]
    pub memory: Option<String>,
    /// Number of CPUs (CFS quota), e.g. 0.5.
    #[arg(long, value_name = "N")]
    pub cpus: Option<String>,
    /// Maximum number of processes (-1 for unlimited).
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub pids_limit: Option<i64>,
    /// Allocate a pseudo-terminal.
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Keep stdin open.
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Remove the container's state when it exits.
    #[arg(long)]
    pub rm: bool,
    /// Name the container.
    #[arg(long)]
    pub name: Option<String>,
    /// Run in the background and print the container id (see `skiff logs`).
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Record which files the container reads while starting (see --record-seconds)
    /// as the image's prefetch profile, replacing any local one. Without this flag a
    /// profile is recorded only when the image has none (locally or in its registry).
    #[arg(long)]
    pub record_profile: bool,
    /// How long a recording lasts (it also ends when the container exits).
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub record_seconds: u64,
    /// Do not prefetch: neither the image's profile nor producer-marked files.
    #[arg(long)]
    pub no_prefetch: bool,
    /// After start-up, fetch the rest of the image at low priority (pausing while
    /// reads wait), so the container soon runs from local disk.
    #[arg(
        long,
        value_name = "BOOL",
        default_value_t = true,
        num_args = 0..=1,
        default_missing_value = "true",
        action = clap::ArgAction::Set
    )]
    pub background_fetch: bool,
    /// When to ask the registry for the image's manifest: "missing" uses the image as
    /// last resolved if the local store knows it, as docker does.
    #[arg(long, value_enum, default_value_t)]
    pub pull: super::lazy::PullPolicy,
    /// Registry options (for IMAGE).
    #[command(flatten)]
    pub registry: super::registry_args::RegistryArgs,
    /// Add a Linux capability to docker's default set (e.g. SYS_ADMIN; ALL for all).
    #[arg(long = "cap-add", value_name = "CAP")]
    pub cap_add: Vec<String>,
    /// Drop a Linux capability from the set (e.g. CHOWN; ALL for all).
    #[arg(long = "cap-drop", value_name = "CAP")]
    pub cap_drop: Vec<String>,
    /// seccomp=unconfined, seccomp=FILE (a docker seccomp profile, instead of docker's
    /// default one), or no-new-privileges (setuid programs gain nothing).
    #[arg(long = "security-opt", value_name = "OPT")]
    pub security_opt: Vec<String>,
    /// Run tini (Debian's, bound read-only at /sbin/docker-init) as PID 1: it reaps
    /// orphans and forwards signals to the command.
    #[arg(long)]
    pub init: bool,
    /// Give the container a host device: HOST[:CONTAINER][:PERMS] (PERMS of r, w, m).
    #[arg(long = "device", value_name = "HOST[:CONTAINER][:PERMS]")]
    pub device: Vec<String>,
    /// Mount: type=bind,source=HOST,target=PATH[,readonly] or
    /// type=tmpfs,target=PATH[,tmpfs-size=SIZE][,tmpfs-mode=MODE].
    #[arg(long = "mount", value_name = "SPEC")]
    pub mount: Vec<String>,
    /// Add a supplementary group (name in the container's /etc/group, or gid).
    #[arg(long = "group-add", value_name = "GROUP")]
    pub group_add: Vec<String>,
    /// Size of /dev/shm (default 64m).
    #[arg(long = "shm-size", value_name = "SIZE")]
    pub shm_size: Option<String>,
    /// Set a namespaced kernel parameter (kernel.shm*, kernel.msg*, kernel.sem,
    /// fs.mqueue.*, kernel.domainname, net.*).
    #[arg(long = "sysctl", value_name = "KEY=VALUE")]
    pub sysctl: Vec<String>,
    /// Signal `skiff stop` sends first (default SIGTERM).
    #[arg(long = "stop-signal", value_name = "SIGNAL")]
    pub stop_signal: Option<String>,
    /// Label the container (see `skiff ps --filter label=KEY[=VALUE]`).
    #[arg(short = 'l', long = "label", value_name = "KEY=VALUE")]
    pub label: Vec<String>,
    /// Memory plus swap limit (needs --memory; -1 for unlimited swap).
    #[arg(long = "memory-swap", value_name = "SIZE", allow_hyphen_values = true)]
    pub memory_swap: Option<String>,
    /// CPUs the container may use, e.g. 0-2,4.
    #[arg(long = "cpuset-cpus", value_name = "CPUS")]
    pub cpuset_cpus: Option<String>,
    /// Restart policy: no (default), always, unless-stopped or on-failure[:N] (these
    /// need the skiff daemon, which starts the container again if its monitor dies).
    #[arg(long, value_name = "POLICY", default_value = "no")]
    pub restart: String,
    /// IMAGE [COMMAND [ARG...]], or with --rootfs: [COMMAND [ARG...]].
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "IMAGE [COMMAND]"
    )]
    pub args: Vec<String>,
}

/// A new container id: 64 hex digits, like Docker's.
fn new_id() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..32)
        .map(|_| format!("{:02x}", rng.random::<u8>()))
        .collect()
}

/// Runs `skiff run`.
pub fn run(global: &Global, args: Args) -> anyhow::Result<u8> {
    // clap takes everything from the first positional on as the command; a leading
    // dash there is a mistyped flag, not a program, unless `--` said otherwise (as in
    // `--entrypoint /bin/sh -- -c 'echo hi'`).
    let dashdash = std::env::args().any(|a| a == "--");
    if let Some(first) = args
        .args
        .first()
        .filter(|a| a.starts_with('-') && !dashdash)
    {
        anyhow::bail!("unknown flag: {first}\nSee 'skiff run --help'.");
    }
    let policy = check_restart(global, &args)?;
    if let Some(sig) = &args.stop_signal {
        super::stop::parse_signal(sig)?;
    }
    let Some(rootfs) = args.rootfs.clone() else {
        return run_image(global, args, policy);
    };
    let image_config = match &args.image_config {
        Some(path) => Some(
            oci_spec::image::ImageConfiguration::from_file(path)
                .with_context(|| format!("reading image config {}", path.display()))?,
        ),
        None => None,
    };
    let opts = run_options(global, &args, args.args.clone())?;
    if args.detach && args.tty {
        anyhow::bail!("-d with -t is not supported yet");
    }
    // A daemon starting this container's monitor again names the container.
    let id = std::env::var(DETACHED_ID_ENV).unwrap_or_else(|_| new_id());
    let name = claim_name(global, &args, &id)?;
    let mut net = network_setup(global, &args, &id, &name)?;
    let state_dir = global.layout().container(&id).dir().to_path_buf();
    let spec = ContainerSpec::new(
        image_config.as_ref().and_then(|c| c.config().as_ref()),
        &opts,
        id.clone(),
        state_dir.clone(),
    )?;
    let rootfs =
        std::fs::canonicalize(&rootfs).with_context(|| format!("rootfs {}", rootfs.display()))?;
    let restarts = Restarts::of(global, &id, policy);
    let mut record = new_record(&id, name, &spec, &rootfs, args.detach, &args, &restarts);
    image_stop_signal(
        &mut record,
        image_config.as_ref().and_then(|c| c.config().as_ref()),
    );
    record.save(&global.root)?;
    if args.detach {
        return detach(global, &spec, &rootfs, record, &mut net, args.rm);
    }
    let code = supervise(global, &spec, &rootfs, &mut record, &mut net, &mut |_| {});
    if args.rm {
        let _ = std::fs::remove_dir_all(&state_dir);
    }
    Ok(code)
}

/// The container's process and resource options from the flags.
fn run_options(global: &Global, args: &Args, command: Vec<String>) -> anyhow::Result<RunOptions> {
    let env_files = args
        .env_file
        .iter()
        .map(|p| {
            std::fs::read_to_string(p).with_context(|| format!("reading env file {}", p.display()))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(RunOptions {
        command,
        entrypoint: args.entrypoint.clone(),
        env: args.env.clone(),
        env_files,
        workdir: args.workdir.clone(),
        user: args.user.clone(),
        hostname: args.hostname.clone(),
        network: Some(args.net.flags(args.network.as_deref()).namespace_mode()),
        privileged: args.privileged,
        ulimits: args.ulimit.clone(),
        volumes: args.volume.clone(),
        tmpfs: args.tmpfs.clone(),
        read_only: args.read_only,
        memory: args.memory.clone(),
        cpus: args.cpus.clone(),
        pids_limit: args.pids_limit,
        tty: args.tty,
        interactive: args.interactive,
        cap_add: args.cap_add.clone(),
        cap_drop: args.cap_drop.clone(),
        security_opt: args.security_opt.clone(),
        init: args.init,
        devices: args.device.clone(),
        mounts: args.mount.clone(),
        group_add: args.group_add.clone(),
        shm_size: args.shm_size.clone(),
        sysctls: args.sysctl.clone(),
        memory_swap: args.memory_swap.clone(),
        cpuset_cpus: args.cpuset_cpus.clone(),
        seccomp_cache: Some(global.layout().seccomp_cache()),
    })
}

/// The container's network side from `--network`, `-p`, `--dns*` and `--add-host`
/// (checked now, attached once PID 1's namespaces exist).
fn network_setup(
    global: &Global,
    args: &Args,
    id: &str,
    name: &str,
) -> anyhow::Result<crate::network::NetworkSetup> {
    // The runtime's default hostname (ContainerSpec): the id's first 12 digits.
    let hostname = args
        .hostname
        .clone()
        .unwrap_or_else(|| id.chars().take(12).collect());
    let flags = args.net.flags(args.network.as_deref());
    Ok(crate::network::NetworkSetup::new(
        &global.root,
        &flags,
        id,
        name,
        &hostname,
    )?)
}

/// `--restart`: the policy, if the run can keep to it. A container restarted by its
/// monitor needs no daemon, but one whose monitor dies (a reboot, SIGKILL) is started
/// again by the daemon only, so a policy needs one to answer now, as docker's does.
fn check_restart(global: &Global, args: &Args) -> anyhow::Result<RestartPolicy> {
    let policy: RestartPolicy = args.restart.parse()?;
    if policy.is_no() {
        return Ok(policy);
    }
    if args.rm {
        anyhow::bail!("conflicting options: --restart {policy} and --rm");
    }
    if args.registry.username.is_some() {
        anyhow::bail!(
            "--restart {policy} with --username: a restarted container could not read the \
             password again; use `skiff login` instead"
        );
    }
    if crate::daemon::connect(global).is_none() {
        anyhow::bail!(
            "--restart {policy} needs the skiff daemon to restart the container, and it is \
             not running: start `skiff daemon` (or run without --restart)"
        );
    }
    Ok(policy)
}

/// The container's name (given, or the id's first 12 digits), refused if in use.
fn claim_name(global: &Global, args: &Args, id: &str) -> anyhow::Result<String> {
    let name = args.name.clone().unwrap_or_else(|| id[..12].to_string());
    // Listing also cleans up after any skiff that was killed. A container started
    // again by a new monitor holds its own name.
    if state::list(&global.root)?
        .iter()
        .any(|s| s.name == name && s.id != id)
    {
        anyhow::bail!("the container name {name:?} is already in use");
    }
    Ok(name)
}

/// A container's restart policy and, when this process is a new monitor for an
/// existing container (the daemon starts it again), the container's last record.
struct Restarts {
    policy: RestartPolicy,
    previous: Option<ContainerState>,
}

impl Restarts {
    /// `policy`, and the last record of container `id` if it exists (this run then
    /// starts it again: the user's stop is forgotten).
    fn of(global: &Global, id: &str, policy: RestartPolicy) -> Restarts {
        let previous = ContainerState::load(&ContainerState::path(&global.root, id)).ok();
        if previous.is_some() {
            state::clear_stop_request(&global.root, id);
        }
        Restarts { policy, previous }
    }

    /// Removes the directory of a container that failed to start, unless it existed
    /// before this run: a container started again keeps its files.
    fn discard(&self, state_dir: &Path) {
        if self.previous.is_none() {
            let _ = std::fs::remove_dir_all(state_dir);
        }
    }
}

/// A fresh state record, monitored by this process, with the `--label` and
/// `--stop-signal` of `args` and its restart policy. For a container started again,
/// it goes on from the old record: same creation time, one restart more.
fn new_record(
    id: &str,
    name: String,
    spec: &ContainerSpec,
    rootfs: &Path,
    detached: bool,
    args: &Args,
    restarts: &Restarts,
) -> ContainerState {
    let (policy, previous) = (restarts.policy, restarts.previous.as_ref());
    ContainerState {
        id: id.to_string(),
        name,
        command: spec.args.clone(),
        rootfs: rootfs.to_path_buf(),
        created: previous.map_or_else(state::now, |p| p.created),
        status: Status::Created,
        monitor: ProcessId::of(std::process::id() as i32),
        pid1: None,
        exit_code: None,
        detached,
        error: None,
        process: Some(container::exec::ProcessDefaults::of(spec)),
        labels: args.label.clone(),
        stop_signal: args.stop_signal.clone(),
        restart_policy: policy,
        restart_count: previous.map_or(0, |p| p.restart_count + 1),
        started_at: None,
        finished_at: None,
        relaunch: (!policy.is_no())
            .then(|| Relaunch::of_this_process(monitor_args(), &[DETACHED_ID_ENV])),
    }
}

/// Without `--stop-signal`, the image's `StopSignal` is what `skiff stop` sends first
/// (as docker does); one skiff cannot parse is left out (SIGTERM then).
fn image_stop_signal(record: &mut ContainerState, image: Option<&oci_spec::image::Config>) {
    if record.stop_signal.is_some() {
        return;
    }
    record.stop_signal = image
        .and_then(|c| c.stop_signal().clone())
        .filter(|s| super::stop::parse_signal(s).is_ok());
}

/// Set by `skiff run -d IMAGE` for the monitor process it re-executes: the container
/// id the parent waits for. Also set by the daemon for a monitor it starts again for
/// an existing container (see [`crate::daemon::restart_containers`]).
pub const DETACHED_ID_ENV: &str = "SKIFF_DETACHED_ID";

/// `skiff run IMAGE`: resolve, mount the lazy view, run the container on it, unmount.
fn run_image(global: &Global, args: Args, policy: RestartPolicy) -> anyhow::Result<u8> {
    let Some((image, command)) = args.args.split_first() else {
        anyhow::bail!("\"skiff run\" requires at least 1 argument: IMAGE [COMMAND] [ARG...]\nSee 'skiff run --help'.");
    };
    let opts = run_options(global, &args, command.to_vec())?;
    if args.detach && args.tty {
        anyhow::bail!("-d with -t is not supported yet");
    }
    let detached_id = std::env::var(DETACHED_ID_ENV).ok();
    if args.detach && detached_id.is_none() {
        return detach_image(global);
    }
    // What the container's start waits for in the kernel (RCU grace periods) begins
    // now, beside the image's mount. Not before `detach_image`: no thread may run
    // while a process forks without executing.
    container::warm_start::prepare();
    let id = detached_id.clone().unwrap_or_else(new_id);
    let restarts = Restarts::of(global, &id, policy);
    let name = claim_name(global, &args, &id)?;
    let mut net = network_setup(global, &args, &id, &name)?;
    // Signals skiff forwards are blocked before the runtime and FUSE threads start, so
    // that no helper thread takes them from the wait loop.
    container::block_handled_signals()?;
    if let Some(daemon) =
        crate::daemon::connect(global).filter(|_| args.registry.username.is_none())
    {
        return run_through(
            &daemon,
            global,
            &args,
            image,
            opts,
            &id,
            name,
            detached_id,
            &mut net,
            &restarts,
        );
    }
    let mut lazy =
        super::lazy::resolve_for_run(global, &args.registry, args.pull, image, global.verbose > 0)?;
    let paths = global.layout().container(&id);
    let state_dir = paths.dir().to_path_buf();
    let mountpoint = paths.rootfs();
    let upper = (!args.read_only).then(|| paths.upper());
    for dir in [Some(&mountpoint), upper.as_ref()].into_iter().flatten() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let spec = ContainerSpec::new(
        lazy.image.config.config().as_ref(),
        &opts,
        id.clone(),
        state_dir.clone(),
    )?;
    let mut record = new_record(
        &id,
        name,
        &spec,
        &mountpoint,
        detached_id.is_some(),
        &args,
        &restarts,
    );
    image_stop_signal(&mut record, lazy.image.config.config().as_ref());
    // Saved before mounting, so a skiff killed from here on leaves a record whose
    // stale-state cleanup unmounts the view.
    record.save(&global.root)?;
    super::local_image::remember_container_image(&paths, image, Some(lazy.image.manifest_digest));
    let mut mount_opts = lazy.mount_options(global);
    mount_opts.upper = upper;
    let recording = plan_prefetch(global, &args, &mut lazy, &mut mount_opts);
    mount_opts.warm = warm_files(&spec);
    let handle = match skiff_fs::mount(mount_opts, &mountpoint) {
        Ok(h) => h,
        Err(e) => {
            restarts.discard(&state_dir);
            return Err(e).with_context(|| format!("mounting {image}"));
        }
    };
    let code = supervise(
        global,
        &spec,
        &mountpoint,
        &mut record,
        &mut net,
        &mut |_| {},
    );
    if let Some((recorder, replace)) = recording {
        save_recording(global, &lazy, &recorder, replace);
    }
    match handle.unmount() {
        Ok(stats) => tracing::info!("{stats}"),
        Err(e) => eprintln!("skiff: {e}"),
    }
    tracing::info!(
        requests = lazy.client.stats().requests(),
        bytes = lazy.client.stats().bytes(),
        "registry traffic"
    );
    drop(lazy);
    if args.rm {
        let _ = std::fs::remove_dir_all(&state_dir);
    }
    Ok(code)
}

/// `skiff run IMAGE` when a daemon answers: the daemon mounts the container's root (an
/// overlayfs of this container's upper over the image's read-only view, which all
/// containers of the image share);
/// this process stays the container's monitor and asks the daemon to unmount at the
/// end. If this process dies first, the daemon notices and unmounts by itself.
/// Profiles are not recorded through the daemon (a local one is prefetched).
#[allow(clippy::too_many_arguments)]
fn run_through(
    daemon: &crate::daemon::client::DaemonClient,
    global: &Global,
    args: &Args,
    image: &str,
    opts: RunOptions,
    id: &str,
    name: String,
    detached_id: Option<String>,
    net: &mut crate::network::NetworkSetup,
    restarts: &Restarts,
) -> anyhow::Result<u8> {
    use crate::daemon::protocol::{ImageSource, MountRequest, Request, Response};
    let paths = global.layout().container(id);
    let state_dir = paths.dir().to_path_buf();
    let mountpoint = paths.rootfs();
    let upper = (!args.read_only).then(|| paths.upper());
    for dir in [Some(&mountpoint), upper.as_ref()].into_iter().flatten() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if args.record_profile {
        eprintln!("skiff: --record-profile is not supported through the daemon yet; not recording");
    }
    super::local_image::remember_container_image(&paths, image, None);
    let request = Request::Mount(MountRequest {
        source: ImageSource::Registry {
            image: image.to_string(),
            pull: args.pull,
            platform: args.registry.platform.clone(),
            insecure_registries: args.registry.insecure_registries.clone(),
        },
        mountpoint: std::path::absolute(&mountpoint)?,
        upper: upper.as_ref().map(std::path::absolute).transpose()?,
        container: Some(id.to_string()),
        prefetch: !args.no_prefetch,
        background_fetch: args.background_fetch,
        // The root is an overlayfs over the image's view shared by its containers.
        shared_view: true,
        // --rm deletes the upper directory afterwards: nothing in it needs syncing.
        discard_upper: args.rm,
    });
    let asked = std::time::Instant::now();
    let config = match daemon.request(&request) {
        Ok(Response::Mounted { config }) => config,
        Ok(r) => {
            restarts.discard(&state_dir);
            anyhow::bail!("unexpected answer from the daemon: {r:?}");
        }
        Err(e) => {
            restarts.discard(&state_dir);
            return Err(e).with_context(|| format!("mounting {image}"));
        }
    };
    tracing::debug!(elapsed = ?asked.elapsed(), "the daemon mounted the view");
    let unmount = || {
        let req = Request::Unmount {
            mountpoint: mountpoint.clone(),
        };
        let asked = std::time::Instant::now();
        if let Err(e) = daemon.request(&req) {
            eprintln!("skiff: {e:#}");
        }
        tracing::debug!(elapsed = ?asked.elapsed(), "the daemon unmounted the view");
    };
    let spec = match ContainerSpec::new(
        config.as_ref().and_then(|c| c.config().as_ref()),
        &opts,
        id.to_string(),
        state_dir.clone(),
    ) {
        Ok(s) => s,
        Err(e) => {
            unmount();
            restarts.discard(&state_dir);
            return Err(e.into());
        }
    };
    let mut record = new_record(
        id,
        name,
        &spec,
        &mountpoint,
        detached_id.is_some(),
        args,
        restarts,
    );
    image_stop_signal(
        &mut record,
        config.as_ref().and_then(|c| c.config().as_ref()),
    );
    let code = match record.save(&global.root) {
        Ok(()) => supervise(global, &spec, &mountpoint, &mut record, net, &mut |_| {}),
        Err(e) => {
            eprintln!("skiff: {e}");
            125
        }
    };
    unmount();
    if args.rm {
        let _ = std::fs::remove_dir_all(&state_dir);
    }
    Ok(code)
}

/// What the container will read first, for the mount to fetch at once
/// ([`skiff_fs::MountOptions::warm`]): the program it execs (every place `PATH` may
/// find it, in order, as execvp looks) and the user and group files the setup reads.
fn warm_files(spec: &ContainerSpec) -> Vec<Vec<String>> {
    warm_files_of(spec.args.first().map(String::as_str), &spec.env, &spec.cwd)
}

/// [`warm_files`] of a container that execs `program` (as given: a path, or a name
/// looked up in `env`'s `PATH`) in the directory `cwd`.
pub(crate) fn warm_files_of(program: Option<&str>, env: &[String], cwd: &str) -> Vec<Vec<String>> {
    let mut warm = user_files();
    // After the small files: on a shared link, a program's megabytes would hold up
    // the user lookups the setup waits for before it can exec.
    warm.extend(program_candidates(program, env, cwd));
    warm
}

/// The user and group files a container's setup reads before it can exec.
pub(crate) fn user_files() -> Vec<Vec<String>> {
    vec![
        vec!["/etc/passwd".to_string()],
        vec!["/etc/group".to_string()],
    ]
}

/// Where the container's exec of `program` finds it: the path given (made absolute
/// against `cwd`), or every place `PATH` in `env` may find it, in order, as execvp
/// looks. `None` without a program.
pub(crate) fn program_candidates(
    program: Option<&str>,
    env: &[String],
    cwd: &str,
) -> Option<Vec<String>> {
    let program = program.filter(|p| !p.is_empty())?;
    Some(if program.contains('/') {
        let cwd = cwd.trim_end_matches('/');
        vec![match program.starts_with('/') {
            true => program.to_string(),
            false => format!("{cwd}/{program}"),
        }]
    } else {
        let path = env
            .iter()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or(crate::container::spec::DEFAULT_PATH);
        path.split(':')
            .filter(|d| d.starts_with('/'))
            .map(|d| format!("{}/{program}", d.trim_end_matches('/')))
            .collect()
    })
}

/// Sets the prefetch profile, recording and background fetch of a `run` mount. Returns
/// the recorder (and whether its profile replaces an existing one) when this run
/// records: with `--record-profile`, or when the image has no profile at all.
fn plan_prefetch(
    global: &Global,
    args: &Args,
    lazy: &mut super::lazy::LazyImage,
    opts: &mut skiff_fs::MountOptions,
) -> Option<(std::sync::Arc<skiff_fs::Recorder>, bool)> {
    use super::lazy::ProfileLookup;
    use super::profile;
    let digest = lazy.image.manifest_digest;
    opts.background_fetch = args.background_fetch;
    opts.prefetch = !args.no_prefetch;
    let lookup = std::mem::replace(&mut lazy.profile, ProfileLookup::None);
    let known = match lookup {
        ProfileLookup::None => None,
        ProfileLookup::Local(p) => Some(p),
        ProfileLookup::Remote(task) => match lazy.block_on(task) {
            Ok(Ok(Some(p))) => {
                if let Err(e) = profile::save_local(&global.root, &digest, &p) {
                    tracing::warn!("keeping the published profile: {e:#}");
                }
                Some(p)
            }
            Ok(Ok(None)) => None,
            Ok(Err(e)) => {
                tracing::warn!("looking up a published profile: {e:#}");
                None
            }
            Err(e) => {
                tracing::warn!("looking up a published profile: {e}");
                None
            }
        },
    };
    let have_profile = known.is_some();
    if !args.no_prefetch {
        if let Some(p) = known {
            tracing::info!(files = p.files.len(), "prefetching the recorded profile");
            opts.profile = Some(std::sync::Arc::new(p));
        }
    }
    if args.record_profile || (!have_profile && !args.no_prefetch) {
        let rec = std::sync::Arc::new(skiff_fs::Recorder::new(Some(
            std::time::Duration::from_secs(args.record_seconds),
        )));
        opts.record = Some(rec.clone());
        return Some((rec, args.record_profile));
    }
    None
}

/// Stores what `recorder` saw as the image's local profile (unless it is empty, or one
/// already exists and `replace` is off).
fn save_recording(
    global: &Global,
    lazy: &super::lazy::LazyImage,
    recorder: &skiff_fs::Recorder,
    replace: bool,
) {
    use super::profile;
    recorder.stop();
    let p = recorder.profile();
    let digest = lazy.image.manifest_digest;
    if p.files.is_empty() || (!replace && profile::local_path(&global.root, &digest).exists()) {
        return;
    }
    match profile::save_local(&global.root, &digest, &p) {
        Ok(()) => tracing::info!(files = p.files.len(), "recorded the prefetch profile"),
        Err(e) => eprintln!("skiff: saving the prefetch profile: {e:#}"),
    }
}

/// `skiff run -d IMAGE`: re-executes this command without `-d` as a monitor in a new
/// session (a fresh process, since the FUSE server and the async runtime cannot cross a
/// fork), with its output in the container's log; returns once PID 1 has started.
fn detach_image(global: &Global) -> anyhow::Result<u8> {
    use std::os::unix::process::CommandExt;
    let id = new_id();
    let log = ContainerState::log_path(&global.root, &id);
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let log_file = skiff_proto::store::create_private_file(&log)
        .with_context(|| format!("creating {}", log.display()))?;
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.args(monitor_args())
        .env(DETACHED_ID_ENV, &id)
        .env("SKIFF_ROOT", &global.root)
        .stdin(std::process::Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file);
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("starting the container monitor")?;
    let state_path = ContainerState::path(&global.root, &id);
    loop {
        if let Ok(s) = ContainerState::load(&state_path) {
            // Started: PID 1 runs, or ran and ended. A restarting container's PID 1 may
            // live for less than one poll, so `Restarting` counts as started too.
            if s.pid1.is_some() || matches!(s.status, Status::Exited | Status::Restarting) {
                if let (Status::Exited, Some(err)) = (&s.status, &s.error) {
                    eprintln!("skiff: {err}");
                    return Ok(s.exit_code.unwrap_or(125));
                }
                println!("{id}");
                return Ok(0);
            }
        }
        if let Some(status) = child.try_wait()? {
            let out = std::fs::read_to_string(&log).unwrap_or_default();
            eprint!("{out}");
            return Ok(status
                .code()
                .and_then(|c| u8::try_from(c).ok())
                .unwrap_or(125));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// This command's arguments for a monitor of its container: all but the first
/// `-d`/`--detach`, which is skiff's own (everything after IMAGE is the command's).
fn monitor_args() -> Vec<String> {
    let mut argv: Vec<String> = std::env::args().skip(1).collect();
    if let Some(i) = argv.iter().position(|a| a == "-d" || a == "--detach") {
        argv.remove(i);
    }
    argv
}

/// Runs the container to its end (starting it again as its restart policy says),
/// keeping its state file current, calling `on_start` with each PID 1's pid; returns
/// skiff's exit status (printing a start-up error).
fn supervise(
    global: &Global,
    spec: &ContainerSpec,
    rootfs: &Path,
    record: &mut ContainerState,
    net: &mut crate::network::NetworkSetup,
    on_start: &mut dyn FnMut(i32),
) -> u8 {
    let result = restart_policy::run_restarting(&global.root, spec, rootfs, record, net, on_start);
    record.status = Status::Exited;
    let code = match result {
        Ok(status) => status.code(),
        Err(e) => {
            eprintln!("skiff: {e}");
            record.error = Some(e.to_string());
            e.exit_code()
        }
    };
    record.exit_code = Some(code);
    if let Err(e) = record.save(&global.root) {
        tracing::warn!("{e}");
    }
    code
}

/// `-d`: a monitor process (new session, output to container.log) runs the container;
/// this process waits until it has started, prints the id and exits.
fn detach(
    global: &Global,
    spec: &ContainerSpec,
    rootfs: &Path,
    mut record: ContainerState,
    net: &mut crate::network::NetworkSetup,
    rm: bool,
) -> anyhow::Result<u8> {
    use nix::unistd::{fork, ForkResult};
    let log = ContainerState::log_path(&global.root, &record.id);
    let log_file = skiff_proto::store::create_private_file(&log)
        .with_context(|| format!("creating {}", log.display()))?;
    let (ready_r, ready_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    // SAFETY: skiff is single-threaded here; the child only runs the container.
    match unsafe { fork() }? {
        ForkResult::Child => {
            drop(ready_r);
            let _ = nix::unistd::setsid();
            // SAFETY: dup2 onto the standard fds of this single-threaded process.
            unsafe {
                if let Ok(null) = std::fs::File::open("/dev/null") {
                    libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), 0);
                }
                libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&log_file), 1);
                libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&log_file), 2);
            }
            drop(log_file);
            record.monitor = ProcessId::of(std::process::id() as i32);
            let mut ready = Some(ready_w);
            supervise(global, spec, rootfs, &mut record, net, &mut |_| {
                if let Some(w) = ready.take() {
                    let _ = nix::unistd::write(&w, b"r");
                }
            });
            if rm {
                let _ = std::fs::remove_dir_all(global.layout().container(&record.id).dir());
            }
            drop(ready);
            // SAFETY: end the monitor without running the parent's destructors twice.
            unsafe { libc::_exit(0) }
        }
        ForkResult::Parent { .. } => {
            drop(ready_w);
            drop(log_file);
            let mut byte = [0u8; 1];
            let started = matches!(nix::unistd::read(&ready_r, &mut byte), Ok(1));
            if started {
                println!("{}", record.id);
                return Ok(0);
            }
            // The monitor ended before PID 1 ran: report its error.
            let path = ContainerState::path(&global.root, &record.id);
            let (msg, code) = match ContainerState::load(&path) {
                Ok(s) => (
                    s.error
                        .unwrap_or_else(|| "container failed to start".into()),
                    s.exit_code.unwrap_or(125),
                ),
                Err(_) => ("container failed to start".to_string(), 125),
            };
            eprintln!("skiff: {msg}");
            Ok(code)
        }
    }
}
