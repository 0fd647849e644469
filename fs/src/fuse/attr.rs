//! Attribute conversion: `stat(2)` results and lower index entries into the
//! [`FileAttr`]s the kernel gets, and FUSE times into `timespec`s.

use crate::tree::LowerNode;
use fuser::{FileAttr, FileType, INodeNo, TimeOrNow};
use skiff_proto::index::EntryKind;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Lower entries never change: the kernel may cache them for long.
pub(crate) const LOWER_TTL: Duration = Duration::from_secs(3600);
/// Upper entries change only through us, but other names of a hard link may change.
pub(crate) const UPPER_TTL: Duration = Duration::from_secs(1);

/// The time `secs`.`nsec` after (or, for negative `secs`, before) the epoch.
fn ts(secs: i64, nsec: u32) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nsec)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) + Duration::from_nanos(nsec.into())
    }
}

/// The file type of a `st_mode`.
pub(crate) fn kind_of_mode(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        _ => FileType::RegularFile,
    }
}

/// The file type of a lower index entry.
pub(crate) fn kind_of_entry(k: EntryKind) -> FileType {
    match k {
        EntryKind::Dir => FileType::Directory,
        EntryKind::Symlink => FileType::Symlink,
        EntryKind::Char => FileType::CharDevice,
        EntryKind::Block => FileType::BlockDevice,
        EntryKind::Fifo => FileType::NamedPipe,
        _ => FileType::RegularFile,
    }
}

/// The attributes of an upper entry, from its `lstat`/`fstat`.
pub(crate) fn attr_of_stat(ino: u64, st: &libc::stat) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: st.st_size as u64,
        blocks: st.st_blocks as u64,
        atime: ts(st.st_atime, st.st_atime_nsec as u32),
        mtime: ts(st.st_mtime, st.st_mtime_nsec as u32),
        ctime: ts(st.st_ctime, st.st_ctime_nsec as u32),
        crtime: UNIX_EPOCH,
        kind: kind_of_mode(st.st_mode),
        perm: (st.st_mode & 0o7777) as u16,
        nlink: st.st_nlink as u32,
        uid: st.st_uid,
        gid: st.st_gid,
        rdev: st.st_rdev as u32,
        blksize: 4096,
        flags: 0,
    }
}

/// The attributes of a lower entry, from its index entry (all times are the mtime).
pub(crate) fn attr_of_lower(ino: u64, n: &LowerNode) -> FileAttr {
    let e = &n.entry;
    let size = match e.kind {
        EntryKind::Reg | EntryKind::Hardlink => e.size,
        EntryKind::Symlink => e.link().len() as u64,
        EntryKind::Dir => 4096,
        _ => 0,
    };
    let t = ts(e.mtime, e.mtime_nsec);
    FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: size.div_ceil(4096) * 8,
        atime: t,
        mtime: t,
        ctime: t,
        crtime: UNIX_EPOCH,
        kind: kind_of_entry(e.kind),
        perm: (e.mode & 0o7777) as u16,
        nlink: n.nlink.max(1),
        uid: e.uid,
        gid: e.gid,
        rdev: libc::makedev(e.dev().0, e.dev().1) as u32,
        blksize: 4096,
        flags: 0,
    }
}

/// The answer to a lookup of a name that is not there, for the kernel to remember
/// as absent for [`LOWER_TTL`] (inode 0 makes it a negative entry). Only for a
/// read-only view: its tree never changes.
pub(crate) fn absent() -> FileAttr {
    FileAttr {
        ino: INodeNo(0),
        size: 0,
        blocks: 0,
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind: FileType::RegularFile,
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

/// A `setattr` time as `utimensat` takes it (`None`: now).
pub(crate) fn to_timespec(t: TimeOrNow) -> Option<libc::timespec> {
    match t {
        TimeOrNow::Now => None,
        TimeOrNow::SpecificTime(t) => {
            let (sec, nsec) = match t.duration_since(UNIX_EPOCH) {
                Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
                Err(e) => {
                    let d = e.duration();
                    if d.subsec_nanos() == 0 {
                        (-(d.as_secs() as i64), 0)
                    } else {
                        (-(d.as_secs() as i64) - 1, 1_000_000_000 - d.subsec_nanos())
                    }
                }
            };
            Some(libc::timespec {
                tv_sec: sec,
                tv_nsec: nsec as i64,
            })
        }
    }
}

/// What a `setattr` asks to change.
pub(crate) struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeOrNow>,
    pub mtime: Option<TimeOrNow>,
    /// The open handle the change comes through, if any.
    pub fh: Option<u64>,
}

impl super::SkiffFs {
    /// The attributes of `ino`; through an open upper handle `fh`, that file's own
    /// (it may be unlinked).
    pub(super) fn do_getattr(&self, ino: u64, fh: Option<u64>) -> super::Res<super::Attr> {
        let file = fh.and_then(|fh| self.handles.upper_file(fh));
        if let Some(s) = file.and_then(|f| nix::sys::stat::fstat(&f).ok()) {
            return Ok((attr_of_stat(ino, &s), UPPER_TTL));
        }
        let st = self.state.read();
        self.attr(&st, ino)
    }

    /// Changes the attributes of `ino` (copying it up first).
    pub(super) fn do_setattr(&self, ino: u64, a: SetAttr) -> super::Res<super::Attr> {
        use super::errno;
        use crate::upper;
        if a.size != Some(0) {
            self.prefetch_for_copy_up(ino);
        }
        let mut st = self.state.write();
        self.copy_up(&mut st, ino, a.size == Some(0))?;
        let p = self.upper_path(&st, ino)?;
        if a.uid.is_some() || a.gid.is_some() {
            upper::lchown(&p, a.uid.unwrap_or(u32::MAX), a.gid.unwrap_or(u32::MAX))
                .map_err(errno)?;
        }
        if let Some(m) = a.mode {
            upper::chmod(&p, m & 0o7777).map_err(errno)?;
        }
        if let Some(sz) = a.size {
            match a.fh.and_then(|fh| self.handles.upper_file(fh)) {
                Some(f) if f.set_len(sz).is_ok() => {}
                _ => upper::truncate(&p, sz).map_err(errno)?,
            }
        }
        if a.atime.is_some() || a.mtime.is_some() {
            upper::set_times(&p, a.atime.map(to_timespec), a.mtime.map(to_timespec))
                .map_err(errno)?;
        }
        self.attr(&st, ino)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_before_the_epoch_round_trip() {
        let t = ts(-2, 250_000_000);
        assert_eq!(
            UNIX_EPOCH.duration_since(t).unwrap(),
            Duration::from_millis(1750)
        );
        let spec = to_timespec(TimeOrNow::SpecificTime(t)).unwrap();
        assert_eq!((spec.tv_sec, spec.tv_nsec), (-2, 250_000_000));
        let spec = to_timespec(TimeOrNow::SpecificTime(ts(5, 7))).unwrap();
        assert_eq!((spec.tv_sec, spec.tv_nsec), (5, 7));
        assert!(to_timespec(TimeOrNow::Now).is_none());
    }

    #[test]
    fn kinds_of_modes() {
        assert_eq!(kind_of_mode(libc::S_IFDIR | 0o755), FileType::Directory);
        assert_eq!(kind_of_mode(libc::S_IFCHR), FileType::CharDevice);
        assert_eq!(kind_of_mode(libc::S_IFREG | 0o644), FileType::RegularFile);
        assert_eq!(kind_of_entry(EntryKind::Hardlink), FileType::RegularFile);
        assert_eq!(kind_of_entry(EntryKind::Fifo), FileType::NamedPipe);
    }
}
