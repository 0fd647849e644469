//! `skiff stop`: SIGTERM (or the container's `--stop-signal`) to its PID 1, SIGKILL
//! after a grace period; a container with a restart policy stays stopped.

use super::Global;
use crate::container::state::{self, Status};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Arguments of `skiff stop`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Seconds to wait after SIGTERM before SIGKILL.
    #[arg(short, long, default_value_t = 10)]
    pub time: u64,
    /// Container ids, id prefixes or names.
    #[arg(required = true)]
    pub containers: Vec<String>,
}

/// How long `stop` waits for the monitor to record the end once PID 1 is gone.
const RECORD_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Stops one container for good; true if it was running (or restarting). A
/// container with a restart policy is marked as stopped by the user first, so its
/// monitor does not start it again (and a starting daemon leaves an `unless-stopped`
/// one alone). PID 1 gets the stop signal, SIGKILL after `grace`; each PID 1 the
/// monitor started meanwhile is stopped the same way, until the monitor records the
/// end.
pub fn stop(global: &Global, key: &str, grace: std::time::Duration) -> anyhow::Result<bool> {
    let s = state::find(&global.root, key)?;
    if !s.restart_policy.is_no() {
        state::request_stop(&global.root, &s.id)?;
    }
    if !matches!(s.status, Status::Running | Status::Restarting) {
        return Ok(false);
    }
    let first = match s.stop_signal.as_deref().map(parse_signal) {
        Some(Ok(sig)) => sig,
        Some(Err(e)) => {
            tracing::warn!("{e:#}; sending SIGTERM");
            Signal::SIGTERM
        }
        None => Signal::SIGTERM,
    };
    let mut signalled = None;
    let kill_at = std::time::Instant::now() + grace;
    let mut gone_since = None;
    // Until the end is recorded (or the container removed, with `--rm`).
    while let Ok(now) = state::reload(&global.root, &s.id) {
        let pid1 = match (now.status, now.pid1) {
            (Status::Running, Some(p)) if p.alive() => p,
            (Status::Running | Status::Restarting, _) => {
                // Between runs, or PID 1 is gone and the monitor has yet to record it.
                let since = *gone_since.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() > RECORD_WAIT {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
                continue;
            }
            _ => break,
        };
        gone_since = None;
        // A PID 1 the monitor started before it saw the stop gets the signal too,
        // but no grace period of its own.
        if signalled != Some(pid1) {
            let _ = kill(Pid::from_raw(pid1.pid), first);
            signalled = Some(pid1);
        }
        if std::time::Instant::now() >= kill_at {
            let _ = kill(Pid::from_raw(pid1.pid), Signal::SIGKILL);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Ok(true)
}

/// Parses a signal as docker's `--stop-signal` takes it: `SIGTERM`, `TERM` (any
/// case) or a number.
pub fn parse_signal(s: &str) -> anyhow::Result<Signal> {
    let sig = match s.parse::<i32>() {
        Ok(n) => Signal::try_from(n).ok(),
        Err(_) => {
            let upper = s.to_ascii_uppercase();
            let name = if upper.starts_with("SIG") {
                upper
            } else {
                format!("SIG{upper}")
            };
            name.parse::<Signal>().ok()
        }
    };
    sig.ok_or_else(|| anyhow::anyhow!("invalid signal {s:?}"))
}

/// Runs `skiff stop`.
pub fn run(global: &Global, args: Args) -> anyhow::Result<u8> {
    let grace = std::time::Duration::from_secs(args.time);
    super::each_container(&args.containers, |c| stop(global, c, grace).map(drop))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_by_name_or_number() {
        assert_eq!(parse_signal("SIGUSR1").unwrap(), Signal::SIGUSR1);
        assert_eq!(parse_signal("quit").unwrap(), Signal::SIGQUIT);
        assert_eq!(parse_signal("2").unwrap(), Signal::SIGINT);
        assert!(parse_signal("SIGNOPE").is_err());
        assert!(parse_signal("99").is_err());
    }
}
