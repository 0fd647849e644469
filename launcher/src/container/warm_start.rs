//! Work a container start would otherwise wait for, begun early in background
//! threads (`skiff run` starts them while the image is being mounted):
//!
//! - the sealed handle on skiff's binary ([`super::sealed_exe`]): making it mounts
//!   overlayfs and drops the detached mount again, and that unmount waits for an RCU
//!   grace period;
//! - moving a process into a cgroup: the kernel's lock for it
//!   (`cgroup_threadgroup_rwsem`) waits for an RCU grace period when no move happened
//!   during the last one (5–30 ms measured on a 2-core host, the largest single step
//!   of a warm start), and not when one did. The primer moves skiff into the cgroup
//!   it is already in (changing nothing) once a millisecond until the container's
//!   processes are in their cgroups ([`attached`]) or [`PRIME_AT_MOST`] has passed,
//!   so that their move finds the lock ready. runc hides the same wait by moving its
//!   setup process while that process starts up; skiff does that too
//!   (`reexec::spawn_then`), and the primer hides the rest.
//!
//! Both threads block every signal, so none meant for the caller's wait loop (or a
//! Ctrl-C) is delivered to them. Failures only cost the time saved: the sealed handle
//! is then made (and its error reported) when needed, and a cgroup that refuses the
//! no-op move ends the primer.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How long the primer keeps the cgroup lock ready at most.
pub const PRIME_AT_MOST: Duration = Duration::from_millis(500);

/// How often the primer moves skiff: well within one grace period.
const PRIME_EVERY: Duration = Duration::from_millis(1);

/// Set once the container's processes are in their cgroups: the primer stops.
static ATTACHED: AtomicBool = AtomicBool::new(false);

/// Starts the background work. Call once, early.
pub fn prepare() {
    spawn_without_signals("skiff-sealed-exe", || {
        let _ = super::sealed_exe::get();
    });
    spawn_without_signals("skiff-cgroup-primer", prime_cgroup_attach);
}

/// Says the container's processes are in their cgroups: the primer may stop.
pub fn attached() {
    ATTACHED.store(true, Ordering::Relaxed);
}

/// Moves skiff into its own cgroup (a no-op move that still takes the kernel's
/// lock) every [`PRIME_EVERY`] until [`attached`] or [`PRIME_AT_MOST`].
fn prime_cgroup_attach() {
    let pid = std::process::id() as i32;
    let Some(own) = super::cgroups::dirs_of(pid)
        .ok()
        .and_then(|d| d.into_iter().next())
    else {
        return;
    };
    let started = Instant::now();
    while !ATTACHED.load(Ordering::Relaxed) && started.elapsed() < PRIME_AT_MOST {
        if let Err(e) = super::cgroups::join(&own, pid) {
            tracing::debug!("priming cgroup moves stopped: {e}");
            return;
        }
        std::thread::sleep(PRIME_EVERY);
    }
}

/// Spawns `f` on a thread of its own with every signal blocked (a thread inherits
/// the signal mask in force when it is spawned).
fn spawn_without_signals(name: &str, f: impl FnOnce() + Send + 'static) {
    use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow};
    let mut old = SigSet::empty();
    if pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&SigSet::all()), Some(&mut old)).is_err() {
        return;
    }
    let spawned = std::thread::Builder::new().name(name.into()).spawn(f);
    let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
    if let Err(e) = spawned {
        tracing::debug!("no thread {name} ({e}): its work is done when needed");
    }
}
