//! Extended attributes in the merged view: an upper entry's are the upper file's, a
//! lower entry's come from its index entry, and Skiff's and overlayfs's own
//! (`trusted.skiff.*`, `trusted.overlay.*`) are neither shown nor settable.

use super::{errno, Res, SkiffFs};
use crate::upper;
use fuser::Errno;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

impl SkiffFs {
    /// The value of xattr `name` of `ino`.
    pub(super) fn do_getxattr(&self, ino: u64, name: &OsStr) -> Res<Vec<u8>> {
        if upper::is_private_xattr(name.as_bytes()) {
            return Err(Errno::NO_XATTR);
        }
        let st = self.state.read();
        let n = st.node(ino)?;
        if n.upper {
            let p = self.upper_path(&st, ino)?;
            return upper::get_xattr(&p, name.as_bytes())
                .map_err(errno)?
                .ok_or(Errno::NO_XATTR);
        }
        n.lower
            .and_then(|id| self.tree.node(id))
            .and_then(|l| {
                l.entry
                    .xattrs()
                    .iter()
                    .find(|(k, _)| k.as_bytes() == name.as_bytes())
                    .map(|(_, v)| v.clone())
            })
            .ok_or(Errno::NO_XATTR)
    }

    /// The xattr names of `ino`, each followed by a NUL (the `listxattr` format).
    pub(super) fn do_listxattr(&self, ino: u64) -> Res<Vec<u8>> {
        let st = self.state.read();
        let n = st.node(ino)?;
        let names: Vec<Vec<u8>> = if n.upper {
            let p = self.upper_path(&st, ino)?;
            upper::list_xattrs(&p).map_err(errno)?
        } else {
            n.lower
                .and_then(|id| self.tree.node(id))
                .map(|l| {
                    l.entry
                        .xattrs()
                        .iter()
                        .map(|(k, _)| k.as_bytes().to_vec())
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut out = Vec::new();
        for k in names {
            if upper::is_private_xattr(&k) {
                continue;
            }
            out.extend_from_slice(&k);
            out.push(0);
        }
        Ok(out)
    }

    /// Sets xattr `name` of `ino` (copying it up first).
    pub(super) fn do_setxattr(&self, ino: u64, name: &OsStr, value: &[u8], flags: i32) -> Res<()> {
        if upper::is_private_xattr(name.as_bytes()) {
            return Err(Errno::EPERM);
        }
        self.prefetch_for_copy_up(ino);
        let mut st = self.state.write();
        self.copy_up(&mut st, ino, false)?;
        let p = self.upper_path(&st, ino)?;
        upper::set_xattr(&p, name.as_bytes(), value, flags).map_err(errno)
    }

    /// Removes xattr `name` of `ino` (copying it up first).
    pub(super) fn do_removexattr(&self, ino: u64, name: &OsStr) -> Res<()> {
        if upper::is_private_xattr(name.as_bytes()) {
            return Err(Errno::EPERM);
        }
        self.prefetch_for_copy_up(ino);
        let mut st = self.state.write();
        self.copy_up(&mut st, ino, false)?;
        let p = self.upper_path(&st, ino)?;
        upper::remove_xattr(&p, name.as_bytes()).map_err(errno)
    }
}
