//! `skiff stop`: SIGTERM (or the container's `--stop-signal`) to its PID 1, SIGKILL
//! after a grace period.

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

/// Stops one container; true if it was running.
pub fn stop(global: &Global, key: &str, grace: std::time::Duration) -> anyhow::Result<bool> {
    let s = state::find(&global.root, key)?;
    let (Status::Running, Some(pid1)) = (s.status, s.pid1) else {
        return Ok(false);
    };
    let first = match s.stop_signal.as_deref().map(parse_signal) {
        Some(Ok(sig)) => sig,
        Some(Err(e)) => {
            tracing::warn!("{e:#}; sending SIGTERM");
            Signal::SIGTERM
        }
        None => Signal::SIGTERM,
    };
    if pid1.alive() {
        let _ = kill(Pid::from_raw(pid1.pid), first);
    }
    let deadline = std::time::Instant::now() + grace;
    while pid1.alive() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    if pid1.alive() {
        let _ = kill(Pid::from_raw(pid1.pid), Signal::SIGKILL);
    }
    // Wait for the monitor to record the exit and clean up.
    for _ in 0..500 {
        match state::find(&global.root, &s.id) {
            Ok(now) if now.status == Status::Running => {
                std::thread::sleep(std::time::Duration::from_millis(10))
            }
            _ => break,
        }
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
    let mut code = 0;
    for c in &args.containers {
        match stop(global, c, std::time::Duration::from_secs(args.time)) {
            Ok(_) => println!("{c}"),
            Err(e) => {
                eprintln!("skiff: {e:#}");
                code = 1;
            }
        }
    }
    Ok(code)
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
