//! At the daemon's start: containers with a restart policy whose monitor is gone (a
//! host reboot, a monitor killed) get a fresh monitor, as docker's daemon restarts
//! them when it starts: `always` ones, and `unless-stopped` ones the user did not
//! stop. Running containers are not touched (their monitors live on without the
//! daemon), and the monitors started here are not the daemon's children.

use crate::cmd::Global;
use crate::container::state::{self, Status};

/// Looks for such containers in a thread of its own, so that the cleanup of a dead
/// monitor's mount, and the new monitor's mount, can go through this daemon's socket
/// once it serves. Only a daemon on the root's own socket does (`socket`): monitors
/// look for the daemon there.
pub fn spawn(global: &Global, socket: &std::path::Path) {
    if socket != global.layout().daemon_socket() {
        tracing::info!("not restarting containers: the daemon is not on the root's socket");
        return;
    }
    let global = global.clone();
    let spawned = std::thread::Builder::new()
        .name("skiff-daemon-restart-containers".into())
        .spawn(move || restart_all(&global));
    if let Err(e) = spawned {
        tracing::warn!("not restarting containers: starting a thread: {e}");
    }
}

/// Starts a monitor for every container that should be running again.
fn restart_all(global: &Global) {
    // Listing cleans up after dead monitors first (PID 1, cgroups, network, mount).
    let containers = match state::list(&global.root) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!("not restarting containers: {e}");
            return;
        }
    };
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            tracing::warn!("not restarting containers: finding skiff's binary: {e}");
            return;
        }
    };
    for c in containers {
        let stopped_by_user = state::stop_requested(&global.root, &c.id);
        let wanted = c.status == Status::Exited
            && c.restart_policy.restarts_at_daemon_start(stopped_by_user)
            // A monitor still recording the end (or unmounting) is left to finish.
            && !c.monitor.is_some_and(|m| m.alive());
        let Some(relaunch) = c.relaunch.filter(|_| wanted) else {
            continue;
        };
        match relaunch.spawn(
            &exe,
            &global.root,
            &c.id,
            (crate::cmd::run::DETACHED_ID_ENV, &c.id),
        ) {
            Ok(()) => {
                eprintln!(
                    "skiff: daemon restarted container {} ({})",
                    &c.id[..c.id.len().min(12)],
                    c.name
                )
            }
            Err(e) => tracing::warn!("{e}"),
        }
    }
}
