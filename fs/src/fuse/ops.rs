//! The `fuser::Filesystem` impl: each handler decodes the request, calls one `do_*`
//! (or union) function of [`SkiffFs`] and sends its result with [`Answer::send`],
//! the one place where a result becomes a reply or an errno.

use super::attr::SetAttr;
use super::handles::{Opened, ReadSource};
use super::{Attr, Res, SkiffFs};
use fuser::{
    Errno, FileHandle, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig, OpenFlags,
    RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use std::ffi::OsStr;
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// A reply that a `Res<T>` is sent on: the value as the kernel expects it, or the
/// error.
trait Answer<T>: Sized {
    /// Sends the successful value.
    fn ok_with(self, value: T);
    /// Sends an errno.
    fn fail(self, e: Errno);
    /// Sends `r`.
    fn send(self, r: Res<T>) {
        match r {
            Ok(v) => self.ok_with(v),
            Err(e) => self.fail(e),
        }
    }
}

/// Implements [`Answer`] for a reply type: how the value is sent (`|reply, value|`);
/// an error is always `reply.error(e)`.
macro_rules! answer {
    ($reply:ty, $t:ty, |$r:ident, $v:pat_param| $ok:expr) => {
        impl Answer<$t> for $reply {
            fn ok_with(self, value: $t) {
                let ($r, $v) = (self, value);
                $ok
            }
            fn fail(self, e: Errno) {
                self.error(e)
            }
        }
    };
}

answer!(ReplyEntry, Attr, |r, (attr, ttl)| r.entry(
    &ttl,
    &attr,
    Generation(0)
));
answer!(ReplyAttr, Attr, |r, (attr, ttl)| r.attr(&ttl, &attr));
answer!(ReplyEmpty, (), |r, ()| r.ok());
answer!(ReplyDirectory, (), |r, ()| r.ok());
answer!(ReplyDirectoryPlus, (), |r, ()| r.ok());
answer!(ReplyData, Vec<u8>, |r, data| r.data(&data));
answer!(ReplyWrite, u32, |r, n| r.written(n));
// Every open file is FOPEN_NOFLUSH: a close never waits for this server (see `flush`).
answer!(ReplyOpen, Opened, |r, o| match o.backing {
    // The kernel accepts no page-cache flags on a passthrough open.
    Some(b) => r.opened_passthrough(FileHandle(o.fh), FopenFlags::FOPEN_NOFLUSH, &b),
    None => r.opened(FileHandle(o.fh), o.flags | FopenFlags::FOPEN_NOFLUSH),
});
answer!(ReplyCreate, (Attr, Opened), |r, ((attr, ttl), o)| {
    let fh = FileHandle(o.fh);
    let flags = o.flags | FopenFlags::FOPEN_NOFLUSH;
    match o.backing {
        Some(b) => r.created_passthrough(&ttl, &attr, Generation(0), fh, flags, &b),
        None => r.created(&ttl, &attr, Generation(0), fh, flags),
    }
});
// An xattr value (or list) for a caller whose buffer holds `size` bytes (0: it asks
// only how big the value is).
answer!(ReplyXattr, (u32, Vec<u8>), |r, (size, data)| {
    if size == 0 {
        r.size(data.len() as u32);
    } else if (size as usize) < data.len() {
        r.error(Errno::ERANGE);
    } else {
        r.data(&data);
    }
});

/// The handle the kernel reads and lists with when it opened a file or directory
/// without asking (see `FsConfig::kernel_opens`); never one of ours.
const KERNEL_OPENED: u64 = 0;

impl SkiffFs {
    /// Runs `f` with a directory handle of `ino` for `fh`: `fh` itself, or, for a
    /// directory the kernel opened without us, a listing taken for this request.
    fn with_dir_handle<T>(&self, ino: u64, fh: u64, f: impl FnOnce(u64) -> Res<T>) -> Res<T> {
        if fh != KERNEL_OPENED || self.upper.is_some() {
            self.known_dir_handle(ino, fh);
            return f(fh);
        }
        let fh = self.do_opendir(ino)?;
        let r = f(fh);
        self.handles.release_dir(fh);
        r
    }
}

impl fuser::Filesystem for SkiffFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        let _ = config
            .add_capabilities(InitFlags::FUSE_DO_READDIRPLUS | InitFlags::FUSE_READDIRPLUS_AUTO);
        let _ = config.add_capabilities(InitFlags::FUSE_CACHE_SYMLINKS);
        let _ = config.set_max_readahead(1 << 20);
        // Passthrough lets the kernel read and write upper files and fully cached lower
        // files directly. It needs CAP_SYS_ADMIN and kernel >= 6.9; without it every
        // open simply stays on the normal FUSE path.
        if config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
            && config.set_max_stack_depth(1).is_ok()
        {
            self.handles.passthrough = true;
        }
        let _ = self.negotiated.set(crate::handover::Negotiated {
            passthrough: self.handles.passthrough,
        });
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.known(parent.0);
        let mut st = self.state.write();
        let r = self.lookup_in(&mut st, parent.0, name);
        if let Ok((ino, _, _)) = r {
            st.remember(ino);
            self.count_nodes(&st);
        }
        drop(st);
        if matches!(r, Err(Errno::ENOENT)) && self.upper.is_none() {
            // A read-only view never changes: the kernel may remember a name is
            // absent as long as it remembers names that are there (python and node
            // look for many files that are not).
            return reply.entry(
                &super::attr::LOWER_TTL,
                &super::attr::absent(),
                Generation(0),
            );
        }
        reply.send(r.map(|(_, attr, ttl)| (attr, ttl)))
    }

    // `batch_forget` keeps fuser's default, which calls this for each inode
    // (fuser 0.18 does not export `ForgetOne` to override it).
    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.do_forget([(ino.0, nlookup)]);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        self.known(ino.0);
        reply.send(self.do_getattr(ino.0, fh.map(|f| f.0)))
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        self.known(ino.0);
        let change = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime,
            mtime,
            fh: fh.map(|f| f.0),
        };
        reply.send(self.do_setattr(ino.0, change))
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        self.known(ino.0);
        reply.send(self.do_readlink(ino.0))
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        self.known(parent.0);
        reply.send(self.do_mknod(req, parent.0, name, mode, umask, rdev))
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        self.known(parent.0);
        reply.send(self.do_mkdir(req, parent.0, name, mode, umask))
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.known(parent.0);
        reply.send(self.remove(parent.0, name, false))
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.known(parent.0);
        reply.send(self.remove(parent.0, name, true))
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        self.known(parent.0);
        reply.send(self.do_symlink(req, parent.0, link_name, target))
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        self.known(parent.0);
        self.known(newparent.0);
        reply.send(self.do_rename(parent.0, name, newparent.0, newname, flags))
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        self.known(ino.0);
        self.known(newparent.0);
        reply.send(self.do_link(ino.0, newparent.0, newname))
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        self.known(ino.0);
        if flags.0 & crate::exec_args::FMODE_EXEC != 0 {
            // A program of the image is being started: what its command line names
            // is fetched once it runs.
            if let Ok(Some(id)) = self.state.read().node(ino.0).map(|n| n.lower) {
                self.reader.exec_opened(req.pid(), id);
            }
        }
        if self.kernel_opens {
            // The kernel opens this connection's files by itself from now on (see
            // FsConfig::kernel_opens) and reads them with handle 0 (see `read`).
            return reply.error(Errno::ENOSYS);
        }
        let r = self.do_open(ino.0, flags.0, |f| reply.open_backing(f));
        reply.send(r)
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        self.known(ino.0);
        if fh.0 == KERNEL_OPENED && self.upper.is_none() {
            // A file the kernel opened without us: the image's file.
            let lower = self.state.read().node(ino.0).map(|n| n.lower);
            return match lower {
                Ok(Some(id)) => self.reader.read(
                    id,
                    offset,
                    size,
                    Box::new(move |r| reply.send(r.map_err(|e| e.errno()))),
                ),
                Ok(None) => reply.fail(Errno::EIO),
                Err(e) => reply.fail(e),
            };
        }
        self.known_handle(ino.0, fh.0, flags.0);
        match self.do_read(ino.0, fh.0, offset, size) {
            Ok(ReadSource::Data(data)) => reply.ok_with(data),
            // Answered now from the cache, or later from a fetcher thread.
            Ok(ReadSource::Lower(id)) => self.reader.read(
                id,
                offset,
                size,
                Box::new(move |r| reply.send(r.map_err(|e| e.errno()))),
            ),
            Err(e) => reply.fail(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyWrite,
    ) {
        self.known_handle(ino.0, fh.0, flags.0);
        reply.send(self.do_write(fh.0, offset, data, flags.0))
    }

    /// Writes reach the upper file when they are made and POSIX locks stay in the
    /// kernel, so a close has nothing to flush. Opens say so (FOPEN_NOFLUSH), and a
    /// FLUSH that comes anyway (an open from before a daemon restart) gets ENOSYS,
    /// after which the kernel sends none on this connection.
    ///
    /// A FLUSH would make every close wait for a running server: while the daemon
    /// restarts, the close-on-exec of a FUSE file that a process starting the next
    /// daemon inherited from its parent waited for that very daemon, forever.
    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: fuser::LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.handles.release(fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.known_handle(ino.0, fh.0, libc::O_RDONLY);
        reply.send(self.do_fsync(fh.0, datasync))
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.known(ino.0);
        if self.kernel_opens {
            // As `open`: the kernel opens directories by itself, keeps their listings
            // (FOPEN_CACHE_DIR | FOPEN_KEEP_CACHE) and lists with handle 0 until then.
            return reply.error(Errno::ENOSYS);
        }
        // A read-only view never changes: the kernel may keep a directory's listing
        // (FOPEN_CACHE_DIR) from one open to the next (FOPEN_KEEP_CACHE), so the
        // containers after the first list it without asking (no READDIR).
        let flags = if self.upper.is_none() {
            FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE
        } else {
            FopenFlags::empty()
        };
        let r = self.do_opendir(ino.0).map(|fh| Opened {
            fh,
            flags,
            backing: None,
        });
        reply.send(r)
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        self.known(ino.0);
        let r = self.with_dir_handle(ino.0, fh.0, |fh| {
            self.do_readdir(ino.0, fh, offset, |cino, next, kind, name| {
                reply.add(INodeNo(cino), next, kind, name)
            })
        });
        reply.send(r)
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        self.known(ino.0);
        let r = self.with_dir_handle(ino.0, fh.0, |fh| {
            self.do_readdirplus(ino.0, fh, offset, |cino, next, name, (attr, ttl)| {
                reply.add(INodeNo(cino), next, name, ttl, attr, Generation(0))
            })
        });
        reply.send(r)
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.handles.release_dir(fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let path = self.upper.clone().unwrap_or_else(|| PathBuf::from("/"));
        match nix::sys::statvfs::statvfs(&path) {
            Ok(s) => reply.statfs(
                s.blocks(),
                s.blocks_free(),
                s.blocks_available(),
                s.files(),
                s.files_free(),
                s.block_size() as u32,
                255,
                s.fragment_size() as u32,
            ),
            Err(_) => reply.statfs(0, 0, 0, 0, 0, 4096, 255, 4096),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        self.known(ino.0);
        reply.send(self.do_setxattr(ino.0, name, value, flags))
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        if self.no_xattrs {
            // A shared view of an image without extended attributes. overlayfs asks
            // its lower layer for `trusted.overlay.*` of every file and directory it
            // looks up, again for each container's new overlay, and FUSE caches no
            // xattr: 56 of a warm python run's 64 requests, 94 of gcc's 115. After
            // ENOSYS the kernel answers every xattr read of this connection itself
            // (EOPNOTSUPP, which overlayfs and exec's file-capability check take as
            // "none"), and no attribute is lost because there is none.
            return reply.error(Errno::ENOSYS);
        }
        self.known(ino.0);
        reply.send(self.do_getxattr(ino.0, name).map(|v| (size, v)))
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        if self.no_xattrs {
            // As `getxattr`: the kernel then lists no attribute without asking.
            return reply.error(Errno::ENOSYS);
        }
        self.known(ino.0);
        reply.send(self.do_listxattr(ino.0).map(|v| (size, v)))
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.known(ino.0);
        reply.send(self.do_removexattr(ino.0, name))
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        reply.ok();
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        self.known(parent.0);
        let r = self.do_create(req, parent.0, name, mode, umask, flags, |f| {
            reply.open_backing(f)
        });
        reply.send(r)
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        self.known_handle(ino.0, fh.0, libc::O_RDWR);
        reply.send(self.do_fallocate(fh.0, offset, length, mode))
    }
}
