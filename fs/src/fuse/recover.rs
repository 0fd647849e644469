//! Answering for what an earlier server of the connection told the kernel (see
//! [`crate::handover`]): inodes the node table does not know and file handles the
//! handle table does not hold are found again on first use. Only a server that took
//! over a connection does this; for any other, an unknown inode or handle is a bug
//! of the kernel's and stays an error.

use super::handles::Handle;
use super::nodes::Nodes;
use super::{Res, SkiffFs, UPPER_INO_BASE};
use crate::upper;
use fuser::{Errno, FileType};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};

impl SkiffFs {
    /// Makes sure `ino` is in the node table when this server took the connection
    /// over: an inode the kernel holds from before is looked up again where it is.
    pub(super) fn known(&self, ino: u64) {
        if !self.resumed || self.state.read().get(ino).is_some() {
            return;
        }
        let mut st = self.state.write();
        if st.get(ino).is_some() {
            return;
        }
        match self.find_again(&mut st, ino) {
            Ok(()) => tracing::debug!(ino, "inode of an earlier server found again"),
            Err(e) => tracing::debug!(ino, error = ?e, "inode of an earlier server is gone"),
        }
        self.count_nodes(&st);
    }

    /// Registers `ino` by resolving a path to it: a lower entry where the image has
    /// it, else whatever entry of the upper directory has that inode number.
    fn find_again(&self, st: &mut Nodes, ino: u64) -> Res<()> {
        if ino < UPPER_INO_BASE {
            if let Some(n) = self.tree.id_of(ino).and_then(|id| self.tree.node(id)) {
                for path in &n.paths() {
                    if self.resolve(st, Path::new(path)) == Ok(ino) {
                        return Ok(());
                    }
                }
            }
        }
        if self.upper.is_some() {
            if let Some(path) = self.find_in_upper(ino)? {
                if self.resolve(st, &path) == Ok(ino) {
                    return Ok(());
                }
            }
        }
        Err(Errno::ESTALE)
    }

    /// The path of the upper entry whose merged inode number is `ino` (its origin
    /// for a copied-up entry, else [`UPPER_INO_BASE`] plus its own), breadth first.
    fn find_in_upper(&self, ino: u64) -> Res<Option<PathBuf>> {
        let root = self.upper_root()?.to_path_buf();
        let mut todo = VecDeque::from([PathBuf::new()]);
        while let Some(dir) = todo.pop_front() {
            let Ok(entries) = std::fs::read_dir(root.join(&dir)) else {
                continue;
            };
            for e in entries.flatten() {
                if dir.as_os_str().is_empty() && e.file_name() == upper::WORK_DIR {
                    continue;
                }
                let rel = dir.join(e.file_name());
                let p = root.join(&rel);
                let Ok(s) = upper::lstat(&p) else { continue };
                let origin = upper::get_xattr(&p, upper::ORIGIN_XATTR.as_bytes())
                    .ok()
                    .flatten()
                    .and_then(|v| std::str::from_utf8(&v).ok()?.parse::<u64>().ok());
                if origin == Some(ino) || UPPER_INO_BASE + s.st_ino == ino {
                    return Ok(Some(rel));
                }
                if s.st_mode & libc::S_IFMT == libc::S_IFDIR {
                    todo.push_back(rel);
                }
            }
        }
        Ok(None)
    }

    /// Makes sure file handle `fh` of `ino`, given out by an earlier server, is in
    /// the handle table: reopened with `flags` (those the kernel sends with the
    /// request; never truncating or creating again).
    pub(super) fn known_handle(&self, ino: u64, fh: u64, flags: i32) {
        if !self.resumed || !self.handles.is_inherited_unknown(fh) {
            return;
        }
        self.known(ino);
        let st = self.state.read();
        let Ok(n) = st.node(ino) else { return };
        let h = match (n.kind, n.upper) {
            (FileType::Directory, _) => {
                drop(st);
                return self.known_dir_handle(ino, fh);
            }
            (_, true) => {
                let flags = flags & !(libc::O_TRUNC | libc::O_CREAT | libc::O_EXCL);
                match self.open_upper(&st, ino, flags) {
                    Ok(f) => Handle::Upper {
                        file: std::sync::Arc::new(f),
                        ino,
                        counted: false,
                    },
                    Err(e) => {
                        tracing::debug!(ino, fh, error = ?e, "reopening a handle of an earlier server");
                        return;
                    }
                }
            }
            (_, false) => Handle::Lower {
                ino,
                counted: false,
            },
        };
        self.handles.put(fh, h);
    }

    /// Makes sure directory handle `fh` of `ino`, given out by an earlier server, is
    /// in the handle table, with the directory's listing as it is now.
    pub(super) fn known_dir_handle(&self, ino: u64, fh: u64) {
        if !self.resumed || !self.handles.is_inherited_unknown(fh) {
            return;
        }
        self.known(ino);
        let mut st = self.state.write();
        if let Ok(entries) = self.list(&mut st, ino) {
            self.handles.put(fh, Handle::Dir { entries });
        }
    }
}
