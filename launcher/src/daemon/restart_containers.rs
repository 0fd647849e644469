//! Containers with a restart policy whose monitor is gone get a fresh monitor.
//!
//! At the daemon's start (a host reboot, monitors killed while no daemon ran), as
//! docker's daemon restarts them when it starts: `always` ones, and `unless-stopped`
//! ones the user did not stop. While the daemon runs, a monitor that dies (killed,
//! OOM) is replaced within a second if the policy would have restarted the container
//! after a SIGKILL, as docker does when a shim dies. Running containers are not
//! touched (their monitors live on without the daemon), and the monitors started here
//! are not the daemon's children.

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
        .spawn(move || {
            restart_all(&global);
            watch_monitors(&global);
        });
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
    for c in containers {
        let stopped_by_user = state::stop_requested(&global.root, &c.id);
        let wanted = c.status == Status::Exited
            && c.restart_policy.restarts_at_daemon_start(stopped_by_user)
            // A monitor still recording the end (or unmounting) is left to finish.
            && !c.monitor.is_some_and(|m| m.alive());
        if wanted {
            relaunch(global, c);
        }
    }
}

/// How often the daemon looks for monitors that died while it runs.
const WATCH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Replaces, for as long as the daemon runs, the monitors that die while their
/// container is running (or waiting to restart) and its policy would restart it
/// after a SIGKILL. A container the user stopped, or one whose monitor recorded its
/// end, is its monitor's business and left alone.
fn watch_monitors(global: &Global) {
    loop {
        std::thread::sleep(WATCH_INTERVAL);
        for id in state::ids(&global.root) {
            let path = state::ContainerState::path(&global.root, &id);
            let Ok(seen) = state::ContainerState::load(&path) else {
                continue;
            };
            if !seen.is_stale()
                || seen.restart_policy.is_no()
                || state::stop_requested(&global.root, &id)
            {
                continue;
            }
            // Cleans up after the dead monitor: the container is then recorded as
            // exited by SIGKILL (unless its monitor recorded the end meanwhile).
            let Ok(now) = state::reload(&global.root, &id) else {
                continue;
            };
            let code = now.exit_code.unwrap_or(137);
            let wanted = now.status == Status::Exited
                && !now.monitor.is_some_and(|m| m.alive())
                && now.restart_policy.restarts_after(code, now.restart_count);
            if wanted {
                relaunch(global, now);
            }
        }
    }
}

/// Starts a new monitor for container `c` (detached, not the daemon's child).
fn relaunch(global: &Global, c: state::ContainerState) {
    let Some(relaunch) = c.relaunch else {
        return;
    };
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            tracing::warn!("not restarting {}: finding skiff's binary: {e}", c.id);
            return;
        }
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
