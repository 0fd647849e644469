//! The union rules: how a name resolves (upper over lower, whiteouts hide, opaque
//! directories stop the merge), what a directory lists, and how entries are created,
//! removed and renamed in the upper directory so the merged view changes as asked.

use super::attr::{attr_of_stat, kind_of_entry, kind_of_mode, LOWER_TTL, UPPER_TTL};
use super::nodes::{Nodes, ROOT_INO};
use super::{errno, name_str, Attr, Res, SkiffFs};
use crate::tree::{LowerId, LowerTree};
use crate::upper;
use fuser::{Errno, FileAttr, FileType, RenameFlags, Request};
use skiff_proto::index::EntryKind;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One entry of a merged directory listing: name, inode, type.
pub(crate) type DirEntry = (OsString, u64, FileType);

impl SkiffFs {
    /// The lower entry named `name` under directory `parent` in the merged lower view.
    pub(super) fn lower_child(&self, st: &Nodes, parent: u64, name: &OsStr) -> Option<LowerId> {
        let p = st.get(parent)?;
        self.tree.child(p.lower?, name_str(name)?)
    }

    /// Resolves `name` in directory `parent`, registering the node.
    pub(super) fn lookup_in(
        &self,
        st: &mut Nodes,
        parent: u64,
        name: &OsStr,
    ) -> Res<(u64, FileAttr, Duration)> {
        let pnode = st.node(parent)?;
        if pnode.kind != FileType::Directory {
            return Err(Errno::ENOTDIR);
        }
        if name.len() > 255 {
            return Err(Errno::ENAMETOOLONG);
        }
        let parent_upper = pnode.upper;
        if self.is_work_dir(parent, name) {
            return Err(Errno::ENOENT);
        }
        let lower_child = self.lower_child(st, parent, name);
        if parent_upper {
            let p = self.upper_path(st, parent)?.join(name);
            match upper::lstat(&p) {
                Ok(s) => {
                    if upper::is_whiteout(&p, &s) {
                        return Err(Errno::ENOENT);
                    }
                    let kind = kind_of_mode(s.st_mode);
                    let origin = upper::get_xattr(&p, upper::ORIGIN_XATTR.as_bytes())
                        .ok()
                        .flatten()
                        .and_then(|v| std::str::from_utf8(&v).ok()?.parse::<u64>().ok())
                        .filter(|&o| self.tree.id_of(o).is_some());
                    let ino = origin.unwrap_or_else(|| st.upper_ino(s.st_ino));
                    let lower = if kind == FileType::Directory {
                        if upper::is_opaque(&p) {
                            None
                        } else {
                            lower_child.filter(|&c| {
                                self.tree.node(c).map(|n| n.entry.kind) == Some(EntryKind::Dir)
                            })
                        }
                    } else {
                        origin.and_then(|o| self.tree.id_of(o))
                    };
                    st.register_upper(ino, kind, lower, parent, name);
                    return Ok((ino, attr_of_stat(ino, &s), UPPER_TTL));
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(errno(e)),
            }
        }
        let id = lower_child.ok_or(Errno::ENOENT)?;
        let ino = LowerTree::ino(id);
        let ln = self.tree.node(id).ok_or(Errno::ENOENT)?;
        st.register_lower(ino, kind_of_entry(ln.entry.kind), id, parent, name);
        Ok((ino, self.lower_attr(ino, id)?, LOWER_TTL))
    }

    /// Whether `name` in `parent` is the upper directory's hidden work directory: it
    /// is not shown, and nothing may be created, renamed or linked under its name
    /// (a rename onto it would replace the copy-up scratch space, or hand it to the
    /// container).
    pub(super) fn is_work_dir(&self, parent: u64, name: &OsStr) -> bool {
        parent == ROOT_INO && name == upper::WORK_DIR && self.upper.is_some()
    }

    /// Resolves a root-relative path through the merged view.
    pub(super) fn resolve(&self, st: &mut Nodes, path: &Path) -> Res<u64> {
        let mut cur = ROOT_INO;
        for c in path.components() {
            cur = self.lookup_in(st, cur, c.as_os_str())?.0;
        }
        Ok(cur)
    }

    /// The merged listing of directory `ino` (without `.` and `..`).
    pub(super) fn list(&self, st: &mut Nodes, ino: u64) -> Res<Vec<DirEntry>> {
        let node = st.node(ino)?;
        if node.kind != FileType::Directory {
            return Err(Errno::ENOTDIR);
        }
        let mut names: Vec<OsString> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        if node.upper {
            let p = self.upper_path(st, ino)?;
            for e in std::fs::read_dir(&p).map_err(errno)? {
                let e = e.map_err(errno)?;
                let name = e.file_name();
                if self.is_work_dir(ino, &name) {
                    continue;
                }
                seen.insert(name.clone());
                names.push(name);
            }
        }
        if let Some(lower) = node.lower.and_then(|l| self.tree.node(l)) {
            for (name, _) in lower.children() {
                let n = OsString::from(name);
                if !seen.contains(&n) {
                    names.push(n);
                }
            }
        }
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            // Whiteouts (and races) simply drop out here.
            if let Ok((cino, attr, _)) = self.lookup_in(st, ino, &name) {
                out.push((name, cino, attr.kind));
            }
        }
        Ok(out)
    }

    /// The target of symlink `ino`.
    pub(super) fn do_readlink(&self, ino: u64) -> Res<Vec<u8>> {
        let st = self.state.read();
        let n = st.node(ino)?;
        if n.upper {
            let p = self.upper_path(&st, ino)?;
            let t = std::fs::read_link(p).map_err(errno)?;
            return Ok(t.into_os_string().into_encoded_bytes());
        }
        match n.lower.and_then(|id| self.tree.node(id)) {
            Some(l) if l.entry.kind == EntryKind::Symlink => Ok(l.entry.link().as_bytes().to_vec()),
            _ => Err(Errno::EINVAL),
        }
    }

    /// Prepares `name` in `parent` for a new upper entry: copies the parent up and
    /// removes a whiteout there. Returns the path and whether the name hides a lower
    /// entry (a new directory there must be opaque).
    pub(super) fn prepare_new(
        &self,
        st: &mut Nodes,
        parent: u64,
        name: &OsStr,
    ) -> Res<(PathBuf, bool)> {
        self.upper_root()?;
        if name.len() > 255 {
            return Err(Errno::ENAMETOOLONG);
        }
        if self.is_work_dir(parent, name) {
            return Err(Errno::EPERM);
        }
        match self.lookup_in(st, parent, name) {
            Ok(_) => return Err(Errno::EEXIST),
            Err(e) if e == Errno::ENOENT => {}
            Err(e) => return Err(e),
        }
        self.copy_up(st, parent, false)?;
        let p = self.upper_path(st, parent)?.join(name);
        let hides = self.lower_child(st, parent, name).is_some();
        if let Ok(s) = upper::lstat(&p) {
            if upper::is_whiteout(&p, &s) {
                std::fs::remove_file(&p).map_err(errno)?;
            }
        }
        Ok((p, hides))
    }

    /// Sets owner and mode of new upper entry `p` in `parent` as the requester would
    /// have got them.
    pub(super) fn own_new(
        &self,
        req: &Request,
        st: &Nodes,
        parent: u64,
        p: &Path,
        mode: Option<u32>,
    ) -> Res<()> {
        let parent_path = self.upper_path(st, parent)?;
        let pst = upper::lstat(&parent_path).map_err(errno)?;
        // A set-gid parent passes its group on (the upper filesystem did that already).
        let gid = if pst.st_mode & libc::S_ISGID != 0 {
            u32::MAX
        } else {
            req.gid()
        };
        upper::lchown(p, req.uid(), gid).map_err(errno)?;
        if let Some(m) = mode {
            upper::chmod(p, m & 0o7777).map_err(errno)?;
        }
        Ok(())
    }

    /// Creates `name` in `parent` in the upper directory: `make` creates it at the
    /// path it gets (told whether the name hides a lower entry) and returns the mode
    /// to give it (`None`: as created); then the requester becomes its owner. Returns the new inode.
    pub(super) fn new_entry(
        &self,
        st: &mut Nodes,
        req: &Request,
        parent: u64,
        name: &OsStr,
        make: impl FnOnce(&Nodes, &Path, bool) -> Res<Option<u32>>,
    ) -> Res<(u64, Attr)> {
        let (p, hides) = self.prepare_new(st, parent, name)?;
        let mode = make(st, &p, hides)?;
        self.own_new(req, st, parent, &p, mode)?;
        let (ino, attr, ttl) = self.lookup_in(st, parent, name)?;
        // The entry reply about to be sent is a kernel lookup.
        st.remember(ino);
        Ok((ino, (attr, ttl)))
    }

    /// Creates a device, fifo or socket node.
    pub(super) fn do_mknod(
        &self,
        req: &Request,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
    ) -> Res<Attr> {
        let mut st = self.state.write();
        let made = self.new_entry(&mut st, req, parent, name, |_, p, _| {
            upper::mknod(p, (mode & libc::S_IFMT) | 0o600, u64::from(rdev)).map_err(errno)?;
            if mode & libc::S_IFMT == libc::S_IFCHR && rdev == 0 {
                upper::set_xattr(p, upper::USER_CHARDEV_XATTR.as_bytes(), b"1", 0)
                    .map_err(errno)?;
            }
            Ok(Some(mode & 0o7777 & !umask))
        });
        made.map(|(_, attr)| attr)
    }

    /// Creates a directory (opaque where it hides a lower entry; set-gid under a
    /// set-gid parent).
    pub(super) fn do_mkdir(
        &self,
        req: &Request,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
    ) -> Res<Attr> {
        let mut st = self.state.write();
        let made = self.new_entry(&mut st, req, parent, name, |st, p, hides| {
            upper::mkdir(p, 0o700).map_err(errno)?;
            if hides {
                upper::set_opaque(p).map_err(errno)?;
            }
            let pst = upper::lstat(&self.upper_path(st, parent)?).map_err(errno)?;
            let mut perm = mode & 0o7777 & !umask;
            if pst.st_mode & libc::S_ISGID != 0 {
                perm |= libc::S_ISGID;
            }
            Ok(Some(perm))
        });
        made.map(|(_, attr)| attr)
    }

    /// Creates a symlink `name` in `parent` pointing at `target`.
    pub(super) fn do_symlink(
        &self,
        req: &Request,
        parent: u64,
        name: &OsStr,
        target: &Path,
    ) -> Res<Attr> {
        let mut st = self.state.write();
        let made = self.new_entry(&mut st, req, parent, name, |_, p, _| {
            upper::symlink(target.as_os_str(), p).map_err(errno)?;
            Ok(None)
        });
        made.map(|(_, attr)| attr)
    }

    /// Links `ino` (copied up first) as `newname` in `newparent`.
    pub(super) fn do_link(&self, ino: u64, newparent: u64, newname: &OsStr) -> Res<Attr> {
        self.prefetch_for_copy_up(ino);
        let mut st = self.state.write();
        if st.get(ino).map(|n| n.kind) == Some(FileType::Directory) {
            return Err(Errno::EPERM);
        }
        self.copy_up(&mut st, ino, false)?;
        let from = self.upper_path(&st, ino)?;
        let (p, _) = self.prepare_new(&mut st, newparent, newname)?;
        upper::link(&from, &p).map_err(errno)?;
        let (linked, attr, ttl) = self.lookup_in(&mut st, newparent, newname)?;
        st.remember(linked);
        Ok((attr, ttl))
    }

    /// Unlinks (`dir`: removes the directory) `name` in `parent`: the upper entry
    /// goes, and a whiteout takes its place where a lower entry would show through.
    pub(super) fn remove(&self, parent: u64, name: &OsStr, dir: bool) -> Res<()> {
        let mut st = self.state.write();
        let st = &mut *st;
        self.upper_root()?;
        let (ino, attr, _) = self.lookup_in(st, parent, name)?;
        let is_dir = attr.kind == FileType::Directory;
        self.check_replaceable(st, ino, is_dir, dir)?;
        let hides = self.lower_child(st, parent, name).is_some();
        self.copy_up(st, parent, false)?;
        let p = self.upper_path(st, parent)?.join(name);
        let in_upper = st.get(ino).map(|n| n.upper).unwrap_or(false);
        let last_link = in_upper && (is_dir || upper::lstat(&p).is_ok_and(|s| s.st_nlink <= 1));
        if in_upper {
            if is_dir {
                upper::clear_whiteouts(&p).map_err(errno)?;
                std::fs::remove_dir(&p).map_err(errno)?;
            } else {
                std::fs::remove_file(&p).map_err(errno)?;
            }
        }
        if hides {
            upper::make_whiteout(&p).map_err(errno)?;
        }
        if let Some(n) = st.get_mut(ino) {
            n.remove_name(&self.tree, parent, name);
            if n.names.is_empty() && !in_upper {
                n.upper = false;
            }
        }
        if last_link {
            st.mark_removed(ino);
        }
        Ok(())
    }

    /// Whether entry `ino` (`is_dir`: a directory) may be removed by an operation on
    /// a directory (`want_dir`: rmdir, or rename of a directory over it) or on a
    /// non-directory: the kinds must match, and a directory must be empty.
    fn check_replaceable(&self, st: &mut Nodes, ino: u64, is_dir: bool, want_dir: bool) -> Res<()> {
        if want_dir && !is_dir {
            return Err(Errno::ENOTDIR);
        }
        if !want_dir && is_dir {
            return Err(Errno::EISDIR);
        }
        if is_dir && !self.list(st, ino)?.is_empty() {
            return Err(Errno::ENOTEMPTY);
        }
        Ok(())
    }

    /// Whether `ino` is a directory merged over a non-empty lower directory.
    fn has_lower_children(&self, st: &Nodes, ino: u64) -> bool {
        st.get(ino)
            .and_then(|n| n.lower)
            .and_then(|l| self.tree.node(l))
            .map(|l| l.has_children())
            .unwrap_or(false)
    }

    /// `renameat2` in the merged view. A directory with lower content cannot move
    /// (`EXDEV`, as overlayfs without `redirect_dir`); callers like mv fall back to
    /// copying.
    pub(super) fn do_rename(
        &self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: RenameFlags,
    ) -> Res<()> {
        // A lower file that moves is copied up: fetch its content before the lock.
        let moving = {
            let mut st = self.state.write();
            self.lookup_in(&mut st, parent, name).map(|(ino, _, _)| ino)
        };
        if let Ok(ino) = moving {
            self.prefetch_for_copy_up(ino);
        }
        let mut st = self.state.write();
        let st = &mut *st;
        self.upper_root()?;
        let exchange = flags.contains(RenameFlags::RENAME_EXCHANGE);
        let noreplace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        if flags.contains(RenameFlags::RENAME_WHITEOUT) {
            return Err(Errno::EINVAL);
        }
        if self.is_work_dir(parent, name) {
            return Err(Errno::ENOENT);
        }
        if self.is_work_dir(newparent, newname) {
            return Err(Errno::EPERM);
        }
        let (src, sattr, _) = self.lookup_in(st, parent, name)?;
        let dst = match self.lookup_in(st, newparent, newname) {
            Ok((d, a, _)) => Some((d, a)),
            Err(e) if e == Errno::ENOENT => None,
            Err(e) => return Err(e),
        };
        if exchange && dst.is_none() {
            return Err(Errno::ENOENT);
        }
        if noreplace && dst.is_some() {
            return Err(Errno::EEXIST);
        }
        if let Some((d, _)) = dst {
            if d == src {
                return Ok(());
            }
        }
        let src_dir = sattr.kind == FileType::Directory;
        if src_dir && self.has_lower_children(st, src) {
            return Err(Errno::EXDEV);
        }
        if let Some((d, dattr)) = dst {
            let dst_dir = dattr.kind == FileType::Directory;
            if exchange {
                if dst_dir && self.has_lower_children(st, d) {
                    return Err(Errno::EXDEV);
                }
            } else {
                self.check_replaceable(st, d, dst_dir, src_dir)?;
            }
        }
        // Moving a directory under itself is refused by the kernel (same mount).
        self.copy_up(st, src, false)?;
        self.copy_up(st, parent, false)?;
        self.copy_up(st, newparent, false)?;
        if exchange {
            if let Some((d, _)) = dst {
                self.copy_up(st, d, false)?;
            }
        }
        let from = self.upper_path(st, parent)?.join(name);
        let to = self.upper_path(st, newparent)?.join(newname);
        let src_hides = self.lower_child(st, parent, name).is_some();
        let dst_hides = self.lower_child(st, newparent, newname).is_some();
        // What is at the destination in the upper dir: a whiteout or an emptied dir.
        let mut replaced_last_link = false;
        if let Ok(s) = upper::lstat(&to) {
            let is_dir = s.st_mode & libc::S_IFMT == libc::S_IFDIR;
            replaced_last_link =
                !exchange && !upper::is_whiteout(&to, &s) && (is_dir || s.st_nlink <= 1);
            if upper::is_whiteout(&to, &s) && !exchange {
                std::fs::remove_file(&to).map_err(errno)?;
            } else if s.st_mode & libc::S_IFMT == libc::S_IFDIR && !exchange {
                upper::clear_whiteouts(&to).map_err(errno)?;
            }
        }
        if src_dir && dst_hides && !exchange {
            upper::set_opaque(&from).map_err(errno)?;
        }
        let mut raw = 0;
        if exchange {
            raw |= libc::RENAME_EXCHANGE;
        }
        if noreplace {
            raw |= libc::RENAME_NOREPLACE;
        }
        upper::rename(&from, &to, raw).map_err(errno)?;
        if src_hides && !exchange {
            upper::make_whiteout(&from).map_err(errno)?;
        }
        if let Some((d, _)) = dst {
            if let Some(n) = st.get_mut(d) {
                n.remove_name(&self.tree, newparent, newname);
                if exchange {
                    n.names.push((parent, name.to_os_string()));
                }
            }
            if replaced_last_link {
                st.mark_removed(d);
            }
        }
        if let Some(n) = st.get_mut(src) {
            n.remove_name(&self.tree, parent, name);
            n.names.push((newparent, newname.to_os_string()));
        }
        // Re-resolve both names so merged lower state follows the new positions.
        let _ = self.lookup_in(st, newparent, newname);
        if exchange {
            let _ = self.lookup_in(st, parent, name);
        }
        Ok(())
    }
}
