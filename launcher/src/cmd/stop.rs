//! `skiff stop`: SIGTERM a container's PID 1, SIGKILL it after a grace period.

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
    if pid1.alive() {
        let _ = kill(Pid::from_raw(pid1.pid), Signal::SIGTERM);
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
