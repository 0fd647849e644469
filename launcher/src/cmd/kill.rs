//! `skiff kill`: one signal to a running container's PID 1 (SIGKILL unless `-s`),
//! with no grace period and no waiting, as `docker kill`.

use super::Global;
use crate::container::state::{self, Status};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Arguments of `skiff kill`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The signal: a name (`SIGHUP`, `HUP`) or a number.
    #[arg(short, long, default_value = "KILL")]
    pub signal: String,
    /// Container ids, id prefixes or names.
    #[arg(required = true)]
    pub containers: Vec<String>,
}

/// Whether `signal` ends a container for good, so its restart policy does not start
/// it again. Docker's rule: SIGKILL always does; any other signal does when it is the
/// container's stop signal, or when the container has none configured.
fn ends_for_good(signal: Signal, stop_signal: Option<&str>) -> bool {
    if signal == Signal::SIGKILL {
        return true;
    }
    match stop_signal.map(super::stop::parse_signal) {
        Some(Ok(stop)) => stop == signal,
        Some(Err(_)) | None => true,
    }
}

/// Sends `signal` to the PID 1 of container `key`.
fn kill_one(global: &Global, key: &str, signal: Signal) -> anyhow::Result<()> {
    let s = state::find(&global.root, key)?;
    let pid1 = match (s.status, s.pid1) {
        (Status::Running, Some(p)) if p.alive() => p,
        _ => anyhow::bail!("container {key} is not running"),
    };
    if !s.restart_policy.is_no() && ends_for_good(signal, s.stop_signal.as_deref()) {
        state::request_stop(&global.root, &s.id)?;
    }
    kill(Pid::from_raw(pid1.pid), signal)
        .map_err(|e| anyhow::anyhow!("signalling container {key} (pid {}): {e}", pid1.pid))
}

/// Runs `skiff kill`.
pub fn run(global: &Global, args: Args) -> anyhow::Result<u8> {
    let signal = super::stop::parse_signal(&args.signal)?;
    super::each_container(&args.containers, |c| kill_one(global, c, signal))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_signals_end_a_container_for_good() {
        assert!(ends_for_good(Signal::SIGKILL, Some("SIGUSR1")));
        assert!(ends_for_good(Signal::SIGUSR1, Some("USR1")));
        assert!(!ends_for_good(Signal::SIGHUP, Some("SIGUSR1")));
        assert!(ends_for_good(Signal::SIGHUP, None));
    }
}
