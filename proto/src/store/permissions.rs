//! Who may look into the skiff root. skiff runs as root and keeps attacker-supplied
//! trees there (image content with setuid files and device nodes, container upper
//! directories that container root writes to), so, as docker does with
//! /var/lib/docker: the root is 0711 (traversable, not listable), every directory
//! holding such content is 0700, and files skiff writes are 0600. An existing root
//! with wider modes is tightened the next time skiff opens it.

use super::RootLayout;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Mode of the skiff root: host users may pass through it (to a bind source, say)
/// but not list it.
pub const ROOT_MODE: u32 = 0o711;
/// Mode of the directories of [`RootLayout::private_dirs`].
pub const PRIVATE_DIR_MODE: u32 = 0o700;
/// Mode of the files skiff writes under the root.
pub const PRIVATE_FILE_MODE: u32 = 0o600;

/// Creates the root and its private directories with their modes, and tightens them
/// where an older skiff left them wider (never widens a narrower mode).
pub fn secure_root(layout: &RootLayout) -> io::Result<()> {
    ensure_dir_mode(layout.root(), ROOT_MODE)?;
    for dir in layout.private_dirs() {
        ensure_dir_mode(&dir, PRIVATE_DIR_MODE)?;
    }
    Ok(())
}

/// Creates `dir` (and missing parents, with default modes) as `mode`, or removes
/// the bits beyond `mode` from an existing one.
fn ensure_dir_mode(dir: &Path, mode: u32) -> io::Result<()> {
    match std::fs::symlink_metadata(dir) {
        Ok(meta) => {
            let current = meta.permissions().mode() & 0o7777;
            if current & !mode != 0 {
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(current & mode))?;
            }
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(parent) = dir.parent() {
                std::fs::create_dir_all(parent)?;
            }
            match std::fs::DirBuilder::new().mode(mode).create(dir) {
                Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
                _ => {}
            }
            // The umask may have taken bits the mode asks for (0711 under 077).
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
        }
        Err(e) => Err(e),
    }
}

/// Creates (or truncates) `path` for writing, readable by root only.
pub fn create_private_file(path: &Path) -> io::Result<std::fs::File> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(PRIVATE_FILE_MODE)
        .open(path)?;
    // An existing file keeps its mode through open(2).
    file.set_permissions(std::fs::Permissions::from_mode(PRIVATE_FILE_MODE))?;
    Ok(file)
}

/// Writes `bytes` to `path` as a file readable by root only.
pub fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    create_private_file(path)?.write_all(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn a_new_root_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let layout = RootLayout::new(dir.path().join("root"));
        secure_root(&layout).unwrap();
        assert_eq!(mode(layout.root()), 0o711);
        for d in layout.private_dirs() {
            assert_eq!(mode(&d), 0o700, "{}", d.display());
        }
    }

    #[test]
    fn an_old_root_is_tightened_never_widened() {
        let dir = tempfile::tempdir().unwrap();
        let layout = RootLayout::new(dir.path().join("root"));
        for d in layout.private_dirs() {
            std::fs::create_dir_all(&d).unwrap();
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        std::fs::set_permissions(layout.root(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(layout.cache(), std::fs::Permissions::from_mode(0o500)).unwrap();
        secure_root(&layout).unwrap();
        assert_eq!(mode(layout.root()), 0o711);
        assert_eq!(mode(&layout.containers()), 0o700);
        assert_eq!(mode(&layout.cache()), 0o500);
    }

    #[test]
    fn private_files_are_0600_even_when_they_existed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_private(&path, b"new").unwrap();
        assert_eq!(mode(&path), 0o600);
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
    }
}
