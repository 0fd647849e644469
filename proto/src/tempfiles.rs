//! Temporary file names that say which process writes them, so a later start can
//! remove what a dead process left behind without touching a live one's files.

use std::fs;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// Sequence numbers of temp files, unique within this process (two caches on one
/// directory in one process never pick the same name).
static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// Temp files older than this whose writer cannot be told are someone's leftovers.
const UNOWNED_TEMP_AGE: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// A unique temp file name for `name`: `<name>.<pid>.<seq>`, so names never collide
/// across processes and a later open can tell whose it is ([`temp_owner`]).
pub fn temp_name(name: &str) -> String {
    format!(
        "{name}.{}.{}",
        std::process::id(),
        TEMP_SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// The process id a [`temp_name`] was made by.
pub fn temp_owner(name: &str) -> Option<i32> {
    let mut parts = name.rsplit('.');
    parts.next()?.parse::<u64>().ok()?;
    parts.next()?.parse::<i32>().ok().filter(|&p| p > 0)
}

/// Whether process `pid` exists (signal 0 reaches it, or exists but is not ours).
pub fn process_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Removes the temp files in `dir` (those `is_temp` says are) that no live process
/// is writing: made by a process that is gone, or unattributable and a day old.
pub fn remove_stale_temps(dir: &Path, is_temp: impl Fn(&str) -> bool) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if !is_temp(name) {
            continue;
        }
        let stale = match temp_owner(name) {
            Some(pid) => !process_alive(pid),
            None => e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > UNOWNED_TEMP_AGE),
        };
        if stale {
            tracing::debug!(path = %e.path().display(), "removing a stale temp file");
            let _ = fs::remove_file(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_names_carry_their_writer() {
        let a = temp_name("abc");
        let b = temp_name("abc");
        assert_ne!(a, b);
        assert_eq!(temp_owner(&a), Some(std::process::id() as i32));
        assert_eq!(temp_owner("x.tmp.123.4"), Some(123));
        assert_eq!(temp_owner("random"), None);
        assert_eq!(temp_owner("a.b.c"), None);
    }
}
