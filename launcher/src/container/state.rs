//! What `skiff ps`, `logs`, `stop` and `rm` know about containers: one directory per
//! container under `<root>/containers/<id>/` with `state.json` (and `container.log`
//! for detached ones). A container whose monitoring skiff died (SIGKILL) is noticed
//! by the next command: its PID 1 is killed, its cgroups removed, its state marked.
//! A stop by the user of a container with a restart policy is a file beside the state
//! ([`request_stop`]), so that the monitor, which rewrites the state, cannot lose it.

use super::restart_policy::{Relaunch, RestartPolicy};
use serde::{Deserialize, Serialize};
use skiff_proto::store::RootLayout;
use std::path::{Path, PathBuf};

/// Errors reading or writing container state.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Reading or writing a state file failed.
    #[error("container state {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// A state file is not valid JSON of the expected shape.
    #[error("container state {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: serde_json::Error,
    },
    /// No container has this id, id prefix or name.
    #[error("no such container: {0}")]
    NotFound(String),
    /// An id prefix matches more than one container.
    #[error("multiple containers match {0:?}; give more of the id")]
    Ambiguous(String),
}

/// Where a container is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Being set up.
    Created,
    /// PID 1 is running.
    Running,
    /// PID 1 has exited and the restart policy starts it again after a delay.
    Restarting,
    /// PID 1 has exited.
    Exited,
}

/// A process identity that survives pid reuse: pid plus its start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessId {
    /// Host pid.
    pub pid: i32,
    /// Start time in clock ticks since boot (/proc/PID/stat field 22).
    pub start_time: u64,
}

impl ProcessId {
    /// Identifies a live process.
    pub fn of(pid: i32) -> Option<ProcessId> {
        Some(ProcessId {
            pid,
            start_time: start_time(pid)?,
        })
    }

    /// Whether this very process still exists (and is not a zombie).
    pub fn alive(&self) -> bool {
        start_time(self.pid) == Some(self.start_time)
    }
}

/// Field 22 of /proc/PID/stat, or None if the process is gone or a zombie.
fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; fields after the last ')'.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    if fields.first() == Some(&"Z") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// One container's recorded state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerState {
    /// Full id.
    pub id: String,
    /// `--name`, or the id's first 12 digits.
    pub name: String,
    /// argv of PID 1.
    pub command: Vec<String>,
    /// Root filesystem path on the host.
    pub rootfs: PathBuf,
    /// Seconds since the epoch at creation.
    pub created: u64,
    /// Life stage.
    pub status: Status,
    /// The skiff process that waits for PID 1.
    pub monitor: Option<ProcessId>,
    /// The container's PID 1 (host pid).
    pub pid1: Option<ProcessId>,
    /// PID 1's exit status (128+N for signal N) once exited.
    pub exit_code: Option<u8>,
    /// Detached (`-d`): output goes to `container.log`.
    pub detached: bool,
    /// Why it failed to start, if it did.
    pub error: Option<String>,
    /// What `skiff exec` processes share with PID 1 (absent in the state of a
    /// container started by an older skiff).
    #[serde(default)]
    pub process: Option<super::exec::ProcessDefaults>,
    /// `--label` values, `KEY=VALUE`.
    #[serde(default)]
    pub labels: Vec<String>,
    /// `--stop-signal`: what `skiff stop` sends first (SIGTERM when absent).
    #[serde(default)]
    pub stop_signal: Option<String>,
    /// `--restart`.
    #[serde(default)]
    pub restart_policy: RestartPolicy,
    /// How many times PID 1 was started again (by the policy or a new monitor).
    #[serde(default)]
    pub restart_count: u32,
    /// Seconds since the epoch when the current (or last) PID 1 started.
    #[serde(default)]
    pub started_at: Option<u64>,
    /// Seconds since the epoch when the last PID 1 exited.
    #[serde(default)]
    pub finished_at: Option<u64>,
    /// How to start a new monitor if this one dies (with a restart policy only).
    #[serde(default)]
    pub relaunch: Option<Relaunch>,
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl ContainerState {
    /// The state file of container `id`.
    pub fn path(root: &Path, id: &str) -> PathBuf {
        RootLayout::new(root).container(id).state_file()
    }

    /// The log file of a detached container.
    pub fn log_path(root: &Path, id: &str) -> PathBuf {
        RootLayout::new(root).container(id).log_file()
    }

    /// Writes the state atomically (temp file + rename).
    pub fn save(&self, root: &Path) -> Result<(), StateError> {
        let path = Self::path(root, &self.id);
        let io = |source| StateError::Io {
            path: path.clone(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let tmp = path.with_extension("json.tmp");
        let json = serde_json::to_vec_pretty(self).map_err(|source| StateError::Parse {
            path: path.clone(),
            source,
        })?;
        skiff_proto::store::write_private(&tmp, &json).map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)
    }

    /// Reads one state file.
    pub fn load(path: &Path) -> Result<ContainerState, StateError> {
        let bytes = std::fs::read(path).map_err(|source| StateError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        serde_json::from_slice(&bytes).map_err(|source| StateError::Parse {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Whether the container is recorded as running (or about to) but its monitor is
    /// gone.
    pub fn is_stale(&self) -> bool {
        matches!(
            self.status,
            Status::Running | Status::Created | Status::Restarting
        ) && !self.monitor.is_some_and(|m| m.alive())
    }

    /// Cleans up after a monitor that died: kills PID 1 if it still runs, removes the
    /// container's cgroups, records the container as exited (status 137, unknown).
    pub fn clean_stale(&mut self, root: &Path) -> Result<(), StateError> {
        if let Some(p) = self.pid1.filter(|p| p.alive()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p.pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        super::cgroups::remove_stale(&self.id);
        // CNI DEL of its network attachments, so no veth, iptables rule or lease stays.
        if let Err(e) = crate::network::attach::release(root, &self.id) {
            tracing::warn!("tearing down the network of {}: {e}", self.id);
        }
        // A `skiff run IMAGE` killed outright leaves its lazy view mounted with no FUSE
        // server behind it (every access fails with ENOTCONN): detach it.
        // Served by the daemon: it lets go of it (it also notices the dead monitor).
        if self.rootfs.starts_with(RootLayout::new(root).containers()) {
            crate::daemon::release(root, &self.rootfs);
            let _ = nix::mount::umount2(&self.rootfs, nix::mount::MntFlags::MNT_DETACH);
        }
        self.status = Status::Exited;
        self.finished_at.get_or_insert_with(now);
        self.exit_code.get_or_insert(137);
        self.error
            .get_or_insert_with(|| "skiff was killed while the container ran".to_string());
        self.save(root)
    }
}

/// The file whose presence says the user stopped container `id` (see [`request_stop`]).
fn stop_marker(root: &Path, id: &str) -> PathBuf {
    RootLayout::new(root)
        .container(id)
        .dir()
        .join("stopped-by-user")
}

/// Records that the user stopped container `id` (`skiff stop`, `rm -f`): its monitor
/// does not restart it, nor does a starting daemon if its policy is `unless-stopped`.
/// Written before PID 1 is signalled, so the monitor sees it when PID 1 exits.
pub fn request_stop(root: &Path, id: &str) -> Result<(), StateError> {
    let path = stop_marker(root, id);
    // Never creates the container's directory: a container removed meanwhile stays so.
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .map(drop)
        .map_err(|source| StateError::Io { path, source })
}

/// Whether the user stopped container `id` since its monitor started.
pub fn stop_requested(root: &Path, id: &str) -> bool {
    stop_marker(root, id).exists()
}

/// Forgets a stop by the user: a new monitor is starting container `id`.
pub fn clear_stop_request(root: &Path, id: &str) {
    let path = stop_marker(root, id);
    if let Err(e) = std::fs::remove_file(&path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!("removing {}: {e}", path.display());
        }
    }
}

/// The current state of container `id` (cleaned up first if its monitor died).
pub fn reload(root: &Path, id: &str) -> Result<ContainerState, StateError> {
    let path = ContainerState::path(root, id);
    let state = ContainerState::load(&path)?;
    settle(root, &path, state)
}

/// `first`, read from `path`, or, if its monitor is gone, what the file says once
/// that is known, cleaned up if the monitor died without recording the end.
///
/// A monitor records the end and then exits. Between a reader's load and its check
/// of the monitor, the monitor may have done both: the record is then on disk, and
/// cleaning up `first` would overwrite a real exit status with 137 (seen as `skiff
/// stop` reporting a SIGKILL it never sent). So the file is read again after the
/// monitor is seen gone, and only a state still running then is stale.
fn settle(root: &Path, path: &Path, first: ContainerState) -> Result<ContainerState, StateError> {
    if !first.is_stale() {
        return Ok(first);
    }
    let mut state = ContainerState::load(path)?;
    if state.is_stale() {
        state.clean_stale(root)?;
    }
    Ok(state)
}

/// The ids of every container directory of `root` (unordered; none if unreadable).
pub fn ids(root: &Path) -> Vec<String> {
    std::fs::read_dir(RootLayout::new(root).containers())
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Every container's state (stale ones cleaned up first), oldest first.
pub fn list(root: &Path) -> Result<Vec<ContainerState>, StateError> {
    let layout = RootLayout::new(root);
    let dir = layout.containers();
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(StateError::Io { path: dir, source }),
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let path = layout
            .container(&entry.file_name().to_string_lossy())
            .state_file();
        let Ok(state) = ContainerState::load(&path) else {
            continue; // being created, or not ours
        };
        match settle(root, &path, state) {
            Ok(state) => out.push(state),
            // Removed meanwhile (`--rm`).
            Err(StateError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            }
            Err(e) => return Err(e),
        }
    }
    out.sort_by_key(|s| (s.created, s.id.clone()));
    Ok(out)
}

/// Finds a container by full id, unique id prefix, or name.
pub fn find(root: &Path, key: &str) -> Result<ContainerState, StateError> {
    let all = list(root)?;
    if let Some(s) = all.iter().find(|s| s.id == key || s.name == key) {
        return Ok(s.clone());
    }
    let mut matches = all.into_iter().filter(|s| s.id.starts_with(key));
    match (matches.next(), matches.next()) {
        (Some(s), None) => Ok(s),
        (Some(_), Some(_)) => Err(StateError::Ambiguous(key.to_string())),
        _ => Err(StateError::NotFound(key.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(id: &str, name: &str) -> ContainerState {
        ContainerState {
            id: id.into(),
            name: name.into(),
            command: vec!["true".into()],
            rootfs: "/r".into(),
            created: 1,
            status: Status::Running,
            monitor: None,
            pid1: None,
            exit_code: None,
            detached: false,
            error: None,
            process: None,
            labels: Vec::new(),
            stop_signal: None,
            restart_policy: RestartPolicy::No,
            restart_count: 0,
            started_at: None,
            finished_at: None,
            relaunch: None,
        }
    }

    #[test]
    fn save_list_find_and_stale() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let mut live = state("aaa111", "web");
        live.monitor = ProcessId::of(std::process::id() as i32);
        live.save(root).unwrap();
        // A monitor that no longer exists: stale.
        let mut dead = state("aab222", "db");
        dead.monitor = Some(ProcessId {
            pid: i32::MAX - 1,
            start_time: 1,
        });
        dead.save(root).unwrap();

        let all = list(root).unwrap();
        assert_eq!(all.len(), 2);
        let db = all.iter().find(|s| s.name == "db").unwrap();
        assert_eq!(db.status, Status::Exited);
        assert_eq!(db.exit_code, Some(137));
        let web = all.iter().find(|s| s.name == "web").unwrap();
        assert_eq!(web.status, Status::Running);

        assert_eq!(find(root, "web").unwrap().id, "aaa111");
        assert_eq!(find(root, "aab").unwrap().id, "aab222");
        assert!(matches!(find(root, "aa"), Err(StateError::Ambiguous(_))));
        assert!(matches!(find(root, "zzz"), Err(StateError::NotFound(_))));
    }

    #[test]
    fn an_end_recorded_after_the_first_read_is_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        // What a reader loaded while the monitor still ran...
        let mut read = state("ddd444", "web");
        read.monitor = Some(ProcessId {
            pid: i32::MAX - 1,
            start_time: 1,
        });
        // ...and what the monitor recorded before it exited.
        let mut ended = read.clone();
        ended.status = Status::Exited;
        ended.exit_code = Some(5);
        ended.save(root).unwrap();

        let path = ContainerState::path(root, "ddd444");
        let now = settle(root, &path, read).unwrap();
        assert_eq!((now.status, now.exit_code), (Status::Exited, Some(5)));
        let on_disk = ContainerState::load(&path).unwrap();
        assert_eq!(on_disk.exit_code, Some(5));
    }

    #[test]
    fn a_stop_by_the_user_is_kept_beside_the_state() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        // A container removed meanwhile is not brought back by the marker.
        assert!(request_stop(root, "gone").is_err());
        assert!(!RootLayout::new(root).container("gone").dir().exists());

        let mut s = state("ccc333", "loop");
        s.status = Status::Restarting;
        s.restart_policy = RestartPolicy::Always;
        s.exit_code = Some(1);
        s.monitor = ProcessId::of(std::process::id() as i32);
        s.save(root).unwrap();
        assert!(!stop_requested(root, "ccc333"));
        request_stop(root, "ccc333").unwrap();
        assert!(stop_requested(root, "ccc333"));
        // The monitor rewriting its state does not lose the stop.
        s.save(root).unwrap();
        assert!(stop_requested(root, "ccc333"));
        clear_stop_request(root, "ccc333");
        assert!(!stop_requested(root, "ccc333"));

        let back = reload(root, "ccc333").unwrap();
        assert_eq!(back.status, Status::Restarting);
        assert_eq!(back.restart_policy, RestartPolicy::Always);
        // Its monitor gone, a restarting container is stale: exited with its last code.
        s.monitor = None;
        s.save(root).unwrap();
        let back = reload(root, "ccc333").unwrap();
        assert_eq!(back.status, Status::Exited);
        assert_eq!(back.exit_code, Some(1));
        assert!(back.finished_at.is_some());
    }
}
