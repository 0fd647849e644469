//! Docker's restart policies (`skiff run --restart`): which exits start the
//! container's process again, how long to wait first, and the monitor's loop that
//! does it.
//!
//! The container's monitor (the `skiff run` process, or the one `-d` leaves behind)
//! runs PID 1 again on the same root filesystem, upper directory and network setup,
//! so the container keeps its id, name and files. A stop by the user (`skiff stop`,
//! `skiff rm -f`) is recorded before PID 1 is signalled ([`super::state::request_stop`])
//! and ends the loop for good. When the monitor itself dies, `skiff daemon` starts a
//! fresh one at its next start from what [`Relaunch`] recorded.

use super::main::Attach;
use super::state::{self, ContainerState, ProcessId, Status};
use super::{ContainerSpec, ExitStatus, RunError};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A `--restart` value skiff does not know.
#[derive(Debug, thiserror::Error)]
#[error("invalid --restart {0:?}: want no, always, unless-stopped or on-failure[:N]")]
pub struct PolicyError(String);

/// When the monitor starts the container's process again (docker's meaning).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum RestartPolicy {
    /// Never (the default).
    #[default]
    No,
    /// After every exit, until the user stops it; also when the daemon starts, even
    /// after a stop by the user.
    Always,
    /// As `Always`, but the daemon leaves a container the user stopped alone.
    UnlessStopped,
    /// After a non-zero exit, at most `max_retries` times (0: no limit).
    OnFailure {
        /// `on-failure:N`'s N.
        max_retries: u32,
    },
}

impl std::str::FromStr for RestartPolicy {
    type Err = PolicyError;

    fn from_str(s: &str) -> Result<RestartPolicy, PolicyError> {
        let bad = || PolicyError(s.to_string());
        match s.split_once(':') {
            None => match s {
                "no" => Ok(RestartPolicy::No),
                "always" => Ok(RestartPolicy::Always),
                "unless-stopped" => Ok(RestartPolicy::UnlessStopped),
                "on-failure" => Ok(RestartPolicy::OnFailure { max_retries: 0 }),
                _ => Err(bad()),
            },
            Some(("on-failure", n)) => Ok(RestartPolicy::OnFailure {
                max_retries: n.parse().map_err(|_| bad())?,
            }),
            Some(_) => Err(bad()),
        }
    }
}

impl std::fmt::Display for RestartPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RestartPolicy::No => f.write_str("no"),
            RestartPolicy::Always => f.write_str("always"),
            RestartPolicy::UnlessStopped => f.write_str("unless-stopped"),
            RestartPolicy::OnFailure { max_retries: 0 } => f.write_str("on-failure"),
            RestartPolicy::OnFailure { max_retries } => write!(f, "on-failure:{max_retries}"),
        }
    }
}

impl TryFrom<String> for RestartPolicy {
    type Error = PolicyError;
    fn try_from(s: String) -> Result<RestartPolicy, PolicyError> {
        s.parse()
    }
}

impl From<RestartPolicy> for String {
    fn from(p: RestartPolicy) -> String {
        p.to_string()
    }
}

impl RestartPolicy {
    /// `--restart no`.
    pub fn is_no(self) -> bool {
        self == RestartPolicy::No
    }

    /// docker's name of the policy (`on-failure` without its count).
    pub fn name(self) -> &'static str {
        match self {
            RestartPolicy::No => "no",
            RestartPolicy::Always => "always",
            RestartPolicy::UnlessStopped => "unless-stopped",
            RestartPolicy::OnFailure { .. } => "on-failure",
        }
    }

    /// `on-failure:N`'s N (0 for every other policy and for no limit).
    pub fn max_retries(self) -> u32 {
        match self {
            RestartPolicy::OnFailure { max_retries } => max_retries,
            _ => 0,
        }
    }

    /// Whether the monitor starts the process again after it exited with
    /// `exit_code`, the container having been restarted `restart_count` times
    /// already. (A stop by the user is checked apart: it always ends the loop.)
    pub fn restarts_after(self, exit_code: u8, restart_count: u32) -> bool {
        match self {
            RestartPolicy::No => false,
            RestartPolicy::Always | RestartPolicy::UnlessStopped => true,
            RestartPolicy::OnFailure { max_retries } => {
                exit_code != 0 && (max_retries == 0 || restart_count < max_retries)
            }
        }
    }

    /// Whether a starting daemon starts a container that is not running again:
    /// `always` ones, and `unless-stopped` ones the user did not stop.
    pub fn restarts_at_daemon_start(self, stopped_by_user: bool) -> bool {
        match self {
            RestartPolicy::Always => true,
            RestartPolicy::UnlessStopped => !stopped_by_user,
            RestartPolicy::No | RestartPolicy::OnFailure { .. } => false,
        }
    }
}

/// docker's delay before a restart: 100 ms, doubled at each restart up to a minute,
/// back to 100 ms once the container ran for 10 seconds.
#[derive(Debug, Default)]
pub struct Backoff {
    delay: Option<Duration>,
}

/// The first delay.
const FIRST_DELAY: Duration = Duration::from_millis(100);
/// The longest delay.
const MAX_DELAY: Duration = Duration::from_secs(60);
/// A run at least this long resets the delay.
const RESET_AFTER: Duration = Duration::from_secs(10);

impl Backoff {
    /// The delay before the next start, after a run that lasted `ran_for`.
    pub fn next(&mut self, ran_for: Duration) -> Duration {
        let delay = match self.delay {
            Some(d) if ran_for < RESET_AFTER => (d * 2).min(MAX_DELAY),
            _ => FIRST_DELAY,
        };
        self.delay = Some(delay);
        delay
    }
}

/// How often a waiting monitor looks for a stop by the user.
const STOP_POLL: Duration = Duration::from_millis(50);

/// Runs the container under `record.restart_policy` until it ends for good: PID 1 is
/// started with [`super::run_attached`] (`on_start` called with each PID 1's pid,
/// after the record says it runs), and after each exit the policy, the restart count
/// and a stop by the user decide whether it starts again after [`Backoff`]'s delay.
/// The record (saved under `root`) says `restarting` meanwhile. Returns the last run's
/// result; a run that fails to start ends the loop. The caller records the end.
pub fn run_restarting(
    root: &Path,
    spec: &ContainerSpec,
    rootfs: &Path,
    record: &mut ContainerState,
    attach: &mut dyn Attach,
    on_start: &mut dyn FnMut(i32),
) -> Result<ExitStatus, RunError> {
    // Signals the runs forward stay blocked between runs too: one that comes while
    // the container waits to restart goes to its next PID 1, not to this monitor.
    let _blocked = match record.restart_policy.is_no() {
        true => None,
        false => Some(BlockedSignals(super::block_handled_signals()?)),
    };
    let mut backoff = Backoff::default();
    loop {
        let started = Instant::now();
        let result = {
            let mut started_hook = |pid: i32| {
                record.status = Status::Running;
                record.pid1 = ProcessId::of(pid);
                record.started_at = Some(state::now());
                record.exit_code = None;
                save(record, root);
                on_start(pid);
            };
            super::run_attached(spec, rootfs, attach, &mut started_hook)
        };
        record.finished_at = Some(state::now());
        let Ok(status) = result else {
            return result;
        };
        let code = status.code();
        if state::stop_requested(root, &record.id)
            || !record
                .restart_policy
                .restarts_after(code, record.restart_count)
        {
            return result;
        }
        record.status = Status::Restarting;
        record.pid1 = None;
        record.exit_code = Some(code);
        save(record, root);
        let delay = backoff.next(started.elapsed());
        tracing::info!(id = record.id, code, ?delay, "restarting the container");
        if !wait_unless_stopped(root, &record.id, delay) {
            return result;
        }
        record.restart_count += 1;
    }
}

/// The signal mask before [`super::block_handled_signals`], set again on drop.
struct BlockedSignals(nix::sys::signal::SigSet);

impl Drop for BlockedSignals {
    fn drop(&mut self) {
        let _ = self.0.thread_set_mask();
    }
}

/// Sleeps `delay`; false (at once) if the user stops the container meanwhile.
fn wait_unless_stopped(root: &Path, id: &str, delay: Duration) -> bool {
    let until = Instant::now() + delay;
    loop {
        if state::stop_requested(root, id) {
            return false;
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return true;
        }
        std::thread::sleep(left.min(STOP_POLL));
    }
}

fn save(record: &ContainerState, root: &Path) {
    if let Err(e) = record.save(root) {
        tracing::warn!("{e}");
    }
}

/// How to start a container's monitor again when it died (host reboot, SIGKILL):
/// the user's `skiff run` once more, with its arguments (without `-d`), working
/// directory and environment, which the monitor's own flags and `-e NAME` read.
/// Kept in the private state file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Relaunch {
    /// `skiff`'s arguments (after the program name).
    pub args: Vec<String>,
    /// The working directory relative paths in `args` are from.
    pub cwd: PathBuf,
    /// The environment, `(name, value)`.
    pub env: Vec<(String, String)>,
}

/// Errors starting a monitor again.
#[derive(Debug, thiserror::Error)]
pub enum RelaunchError {
    /// Opening the container's log failed.
    #[error("opening the log {path} of container {id}: {source}")]
    Log {
        /// The container.
        id: String,
        /// The log file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// Starting the monitor process failed.
    #[error("starting a monitor for container {id}: {source}")]
    Spawn {
        /// The container.
        id: String,
        /// What went wrong.
        source: std::io::Error,
    },
}

impl Relaunch {
    /// This process's `args` (the monitor's, without `-d`), directory and environment
    /// but for `leave_out` (variables that belong to this process only).
    pub fn of_this_process(args: Vec<String>, leave_out: &[&str]) -> Relaunch {
        Relaunch {
            args,
            cwd: std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/")),
            env: std::env::vars_os()
                .filter(|(k, _)| !leave_out.iter().any(|l| k == l))
                .map(|(k, v)| {
                    (
                        k.to_string_lossy().into_owned(),
                        v.to_string_lossy().into_owned(),
                    )
                })
                .collect(),
        }
    }

    /// Starts `exe` (skiff) as the monitor of container `id` again: in its own
    /// session, output appended to the container's log, `set_env` (the variable that
    /// tells it which container it is) added to the recorded environment. The monitor
    /// is not the caller's child: an intermediate process starts it and exits (so a
    /// daemon never has to reap its containers' monitors, and they outlive it).
    pub fn spawn(
        &self,
        exe: &Path,
        root: &Path,
        id: &str,
        set_env: (&str, &str),
    ) -> Result<(), RelaunchError> {
        use std::os::unix::process::CommandExt;
        let log = ContainerState::log_path(root, id);
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|source| RelaunchError::Log {
                id: id.to_string(),
                path: log.clone(),
                source,
            })?;
        let spawn_err = |source| RelaunchError::Spawn {
            id: id.to_string(),
            source,
        };
        let mut cmd = std::process::Command::new(exe);
        cmd.args(&self.args)
            .current_dir(&self.cwd)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env(set_env.0, set_env.1)
            .env("SKIFF_ROOT", root)
            .stdin(std::process::Stdio::null())
            .stdout(log_file.try_clone().map_err(spawn_err)?)
            .stderr(log_file);
        // SAFETY: setsid, fork and _exit are async-signal-safe. The intermediate
        // child exits at once; its child goes on to exec (and reports an exec
        // failure to `spawn` as the intermediate would have).
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                match libc::fork() {
                    -1 => Err(std::io::Error::last_os_error()),
                    0 => Ok(()),
                    _ => libc::_exit(0),
                }
            });
        }
        let mut intermediate = cmd.spawn().map_err(spawn_err)?;
        intermediate.wait().map_err(spawn_err)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_docker_policies() {
        for (text, policy) in [
            ("no", RestartPolicy::No),
            ("always", RestartPolicy::Always),
            ("unless-stopped", RestartPolicy::UnlessStopped),
            ("on-failure", RestartPolicy::OnFailure { max_retries: 0 }),
            ("on-failure:3", RestartPolicy::OnFailure { max_retries: 3 }),
        ] {
            assert_eq!(text.parse::<RestartPolicy>().unwrap(), policy);
            assert_eq!(policy.to_string(), text);
        }
        for bad in [
            "",
            "never",
            "always:2",
            "on-failure:",
            "on-failure:-1",
            "on-failure:x",
        ] {
            assert!(bad.parse::<RestartPolicy>().is_err(), "{bad}");
        }
        let json = serde_json::to_string(&RestartPolicy::OnFailure { max_retries: 2 }).unwrap();
        assert_eq!(json, "\"on-failure:2\"");
        assert_eq!(
            serde_json::from_str::<RestartPolicy>(&json).unwrap(),
            RestartPolicy::OnFailure { max_retries: 2 }
        );
    }

    #[test]
    fn which_exits_restart() {
        let on_failure_2 = RestartPolicy::OnFailure { max_retries: 2 };
        // Two restarts, then no more: three runs in all.
        assert!(on_failure_2.restarts_after(1, 0));
        assert!(on_failure_2.restarts_after(1, 1));
        assert!(!on_failure_2.restarts_after(1, 2));
        // Success never restarts under on-failure.
        assert!(!on_failure_2.restarts_after(0, 0));
        assert!(RestartPolicy::OnFailure { max_retries: 0 }.restarts_after(137, 1000));
        assert!(RestartPolicy::Always.restarts_after(0, 1000));
        assert!(RestartPolicy::UnlessStopped.restarts_after(0, 0));
        assert!(!RestartPolicy::No.restarts_after(1, 0));

        assert!(RestartPolicy::Always.restarts_at_daemon_start(true));
        assert!(RestartPolicy::UnlessStopped.restarts_at_daemon_start(false));
        assert!(!RestartPolicy::UnlessStopped.restarts_at_daemon_start(true));
        assert!(!on_failure_2.restarts_at_daemon_start(false));
        assert!(!RestartPolicy::No.restarts_at_daemon_start(false));
    }

    #[test]
    fn backoff_doubles_to_a_minute_and_resets_after_ten_seconds() {
        let mut b = Backoff::default();
        let quick = Duration::from_millis(5);
        let delays: Vec<u128> = (0..12).map(|_| b.next(quick).as_millis()).collect();
        assert_eq!(
            delays,
            [100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600, 51200, 60000, 60000]
        );
        assert_eq!(b.next(Duration::from_secs(10)), FIRST_DELAY);
        assert_eq!(b.next(quick), Duration::from_millis(200));
    }
}
