//! Copy-up: making a lower entry (and its parents) exist in the upper directory
//! before it is changed, with its content, owner, mode, xattrs and times, and its
//! lower inode number recorded so it keeps it. Built in the work directory and renamed
//! into place, so a crash never leaves a half-copied file under a real name.

use super::nodes::{Nodes, ROOT_INO};
use super::{errno, Res, SkiffFs};
use crate::tree::LowerTree;
use crate::upper;
use fuser::Errno;
use skiff_proto::index::EntryKind;
use std::ffi::OsStr;
use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::Ordering;

impl SkiffFs {
    /// Makes sure `ino` exists in the upper directory, copying it (and its parents) up.
    /// With `empty`, a regular file is created empty (it is about to be truncated).
    pub(super) fn copy_up(&self, st: &mut Nodes, ino: u64, empty: bool) -> Res<()> {
        let root = self.upper_root()?.to_path_buf();
        let node = st.node(ino)?;
        if node.upper {
            return Ok(());
        }
        let id = node.lower.ok_or(Errno::ENOENT)?;
        let parent = st.recent_parent(ino).ok_or(Errno::ENOENT)?;
        self.copy_up(st, parent, false)?;
        let ln = self.tree.node(id).ok_or(Errno::ENOENT)?;
        let e = &ln.entry;
        let dest = root.join(st.path(ino)?);
        let work = root.join(upper::WORK_DIR).join(format!(
            "copyup-{ino}-{}",
            self.scratch.fetch_add(1, Ordering::Relaxed)
        ));
        match e.kind {
            EntryKind::Dir => upper::mkdir(&work, 0o700).map_err(errno)?,
            EntryKind::Reg | EntryKind::Hardlink => {
                let f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&work)
                    .map_err(errno)?;
                if !empty {
                    let layer = ln.layer;
                    let idx = self.tree.layers.get(layer).ok_or(Errno::EIO)?;
                    for c in idx.chunks_of(e) {
                        let data = self
                            .fetcher
                            .fetch_blocking(layer, std::slice::from_ref(c))
                            .map_err(|err| {
                                tracing::warn!(error = %err, "copy-up fetch failed");
                                let _ = std::fs::remove_file(&work);
                                Errno::EIO
                            })?;
                        if let Some(d) = data.first() {
                            f.write_all_at(d, c.file_offset).map_err(errno)?;
                        }
                    }
                    f.set_len(e.size).map_err(errno)?;
                }
                f.sync_all().map_err(errno)?;
            }
            EntryKind::Symlink => upper::symlink(OsStr::new(e.link()), &work).map_err(errno)?,
            EntryKind::Char | EntryKind::Block | EntryKind::Fifo => {
                let t = match e.kind {
                    EntryKind::Char => libc::S_IFCHR,
                    EntryKind::Block => libc::S_IFBLK,
                    _ => libc::S_IFIFO,
                };
                let rdev = libc::makedev(e.dev().0, e.dev().1);
                upper::mknod(&work, t | 0o600, rdev).map_err(errno)?;
                if e.kind == EntryKind::Char && rdev == 0 {
                    upper::set_xattr(&work, upper::USER_CHARDEV_XATTR.as_bytes(), b"1", 0)
                        .map_err(errno)?;
                }
            }
            EntryKind::Whiteout | EntryKind::Opaque => return Err(Errno::EIO),
        }
        let fin = (|| -> io::Result<()> {
            upper::lchown(&work, e.uid, e.gid)?;
            if e.kind != EntryKind::Symlink {
                upper::chmod(&work, e.mode & 0o7777)?;
            }
            for (k, v) in e.xattrs() {
                if upper::is_private_xattr(k.as_bytes()) {
                    continue;
                }
                upper::set_xattr(&work, k.as_bytes(), v, 0)?;
            }
            upper::set_xattr(
                &work,
                upper::ORIGIN_XATTR.as_bytes(),
                LowerTree::ino(id).to_string().as_bytes(),
                0,
            )?;
            let t = libc::timespec {
                tv_sec: e.mtime,
                tv_nsec: e.mtime_nsec as i64,
            };
            upper::set_times(&work, Some(Some(t)), Some(Some(t)))?;
            upper::rename(&work, &dest, libc::RENAME_NOREPLACE)
        })();
        if let Err(err) = fin {
            let _ = std::fs::remove_dir(&work).or_else(|_| std::fs::remove_file(&work));
            return Err(errno(err));
        }
        self.stats.copy_ups.fetch_add(1, Ordering::Relaxed);
        if let Some(n) = st.get_mut(ino) {
            n.upper = true;
        }
        // Keep the other names of a lower hard link pointing at the same inode.
        let paths = if ln.nlink > 1 && e.kind != EntryKind::Dir {
            ln.paths()
        } else {
            Vec::new()
        };
        if paths.len() > 1 {
            let me = st.path(ino)?;
            for other in &paths {
                if Path::new(other) != me {
                    self.link_other_name(st, ino, &dest, &root, other);
                }
            }
            if let Some(n) = st.get_mut(ino) {
                // The most recent name must stay the one copy-up was asked for.
                let mine = n.names.iter().position(|(p, nm)| {
                    Path::new(nm.as_os_str(&self.tree)) == me.file_name().unwrap_or_default()
                        && *p == parent
                });
                if let Some(i) = mine {
                    let x = n.names.remove(i);
                    n.names.push(x);
                }
            }
        }
        Ok(())
    }

    /// After copying up hard-linked `ino` to `dest`, links its other lower name
    /// `other` to it in the upper directory (best effort: a name that no longer
    /// resolves to `ino` is left alone).
    fn link_other_name(&self, st: &mut Nodes, ino: u64, dest: &Path, root: &Path, other: &str) {
        if self.resolve(st, Path::new(other)) != Ok(ino) {
            return;
        }
        let (oparent, oname) = match other.rsplit_once('/') {
            Some((p, n)) => (self.resolve(st, Path::new(p)), n),
            None => (Ok(ROOT_INO), other),
        };
        let Ok(op) = oparent else { return };
        if self.copy_up(st, op, false).is_ok() && upper::link(dest, &root.join(other)).is_ok() {
            if let Some(n) = st.get_mut(ino) {
                n.add_name(&self.tree, op, OsStr::new(oname));
            }
        }
    }

    /// Fetches a lower file's missing chunks before copy-up takes the state lock, so a
    /// slow registry holds only this request, not every other operation of the mount
    /// (copy-up then finds them in the cache). Fetched in groups of at most
    /// [`PREFETCH_GROUP`] bytes, so a big file is never held in memory whole.
    pub(super) fn prefetch_for_copy_up(&self, ino: u64) {
        let id = {
            let st = self.state.read();
            match st.get(ino) {
                Some(n) if !n.upper => n.lower,
                _ => None,
            }
        };
        let Some(ln) = id.and_then(|id| self.tree.node(id)) else {
            return;
        };
        let Some(idx) = self.tree.layers.get(ln.layer) else {
            return;
        };
        let chunks = idx.chunks_of(&ln.entry);
        if chunks.is_empty() || self.fetcher.all_on_disk(chunks) {
            return;
        }
        for group in groups_of_bytes(chunks, PREFETCH_GROUP) {
            if self.fetcher.all_on_disk(group) {
                continue;
            }
            // Errors surface again (as EIO) in copy_up.
            if self.fetcher.fetch_blocking(ln.layer, group).is_err() {
                return;
            }
        }
    }
}

/// Bytes of file content one copy-up prefetch step holds at most (a bigger chunk is
/// a group of its own).
const PREFETCH_GROUP: u64 = 16 << 20;

/// `chunks` split into runs of at most `max` content bytes each (a chunk bigger than
/// `max` alone).
fn groups_of_bytes(
    chunks: &[skiff_proto::index::Chunk],
    max: u64,
) -> Vec<&[skiff_proto::index::Chunk]> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0u64);
    for (i, c) in chunks.iter().enumerate() {
        if i > start && bytes + c.len > max {
            out.push(&chunks[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += c.len;
    }
    if start < chunks.len() {
        out.push(&chunks[start..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_proto::index::{Chunk, ChunkEncoding};
    use skiff_proto::Digest;

    fn chunk(len: u64) -> Chunk {
        Chunk {
            blob_offset: 0,
            blob_len: len,
            file_offset: 0,
            len,
            digest: Digest::of(b""),
            encoding: ChunkEncoding::Raw,
        }
    }

    #[test]
    fn prefetch_groups_stay_under_the_bound() {
        let cs: Vec<Chunk> = [4, 4, 4, 10, 1, 1].iter().map(|&l| chunk(l)).collect();
        let lens: Vec<usize> = groups_of_bytes(&cs, 8).iter().map(|g| g.len()).collect();
        assert_eq!(lens, vec![2, 1, 1, 2]);
        assert!(groups_of_bytes(&[], 8).is_empty());
    }
}
