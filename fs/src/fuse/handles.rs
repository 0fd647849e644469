//! Open files: the handle table, each open inode's I/O mode (FUSE passthrough to a
//! backing file, or reads and writes through us), and the opens, reads and writes
//! of upper files.
//!
//! Passthrough lets the kernel read and write a backing file directly: the upper
//! file, or for a lower file whose chunks are all cached, a local copy of it
//! ([`crate::materialize`]). The kernel refuses to mix passthrough and cached opens
//! of one inode, so an inode keeps the mode of its first open while it is open.

use super::union::DirEntry;
use super::{errno, Attr, Res, SkiffFs};
use crate::handover::{Backing, BackingLog, RestartConfig, NO_BACKING};
use crate::stats::Stats;
use crate::tree::LowerId;
use fuser::{BackingId, Errno, FileType, FopenFlags, Request};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// What an open file handle refers to. `counted`: the open counts in the inode's
/// I/O mode (false for a handle of an earlier server reopened by this one).
pub(super) enum Handle {
    /// A lower file read through the fetcher (until copied up; then the upper file).
    Lower { ino: u64, counted: bool },
    /// An upper file.
    Upper {
        file: Arc<File>,
        ino: u64,
        counted: bool,
    },
    /// An open directory: its merged listing, taken at opendir.
    Dir { entries: Vec<DirEntry> },
}

/// The I/O mode of an open inode and how many handles use it.
struct OpenMode {
    backing: Option<Arc<BackingId>>,
    /// Whether this server chose the mode (and records its end); else it was
    /// inherited from an earlier server, and is kept.
    owned: bool,
    /// Whether the backing file is the upper file (else a cached lower file).
    upper: bool,
    count: usize,
}

/// A new open: its handle, open flags and passthrough backing (if any).
pub(super) struct Opened {
    pub fh: u64,
    pub flags: FopenFlags,
    pub backing: Option<Arc<BackingId>>,
}

/// What a read of a file handle needs.
pub(super) enum ReadSource {
    /// The bytes, read from the upper file.
    Data(Vec<u8>),
    /// A lower file: served by the [`crate::reader::LowerReader`].
    Lower(LowerId),
}

/// The handle table and the I/O mode of every open inode.
#[derive(Default)]
pub(super) struct Handles {
    open: Mutex<HashMap<u64, Handle>>,
    next_fh: AtomicU64,
    /// Handles below this were given out by an earlier server of the connection.
    fh_base: u64,
    /// How each open inode's file I/O is done; one mode per inode while it is open.
    io_modes: Mutex<HashMap<u64, OpenMode>>,
    /// Backing files earlier servers registered, by inode: a new open of the inode
    /// reuses its backing file (it may still be open in passthrough mode).
    inherited: Mutex<HashMap<u64, Backing>>,
    /// Where new backing files are recorded for a later server.
    backing_log: Option<BackingLog>,
    /// Whether the kernel agreed to FUSE passthrough (set in `init`).
    pub passthrough: bool,
}

impl Handles {
    /// A table whose handles start above those of earlier servers, knowing their
    /// backing files.
    pub fn new(restart: &RestartConfig) -> Handles {
        Handles {
            next_fh: AtomicU64::new(restart.fh_base()),
            fh_base: restart.fh_base(),
            inherited: Mutex::new(restart.backings.iter().map(|b| (b.ino, *b)).collect()),
            backing_log: restart.backing_log.clone(),
            passthrough: restart.resumed.is_some_and(|n| n.passthrough),
            ..Handles::default()
        }
    }

    fn insert(&self, h: Handle) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed) + 1;
        self.open.lock().insert(fh, h);
        fh
    }

    /// Puts `h` under `fh` (a handle of an earlier server), unless it is there.
    pub fn put(&self, fh: u64, h: Handle) {
        self.open.lock().entry(fh).or_insert(h);
    }

    /// Whether `fh` is unknown and from an earlier server (so it may be reopened).
    pub fn is_inherited_unknown(&self, fh: u64) -> bool {
        fh <= self.fh_base && !self.open.lock().contains_key(&fh)
    }

    /// Records `backing` of `ino` (or its end) where a later server finds it.
    fn log_backing(&self, ino: u64, backing: Option<Backing>) {
        if let Some(log) = &self.backing_log {
            log(ino, backing);
        }
    }

    /// The upper file behind handle `fh`, if it is one.
    pub fn upper_file(&self, fh: u64) -> Option<Arc<File>> {
        match self.open.lock().get(&fh) {
            Some(Handle::Upper { file, .. }) => Some(file.clone()),
            _ => None,
        }
    }

    /// `stat` of some open upper file of `ino` (an unlinked file that is still open).
    pub fn open_file_stat(&self, ino: u64) -> Option<libc::stat> {
        let handles = self.open.lock();
        handles.values().find_map(|h| match h {
            Handle::Upper { file, ino: i, .. } if *i == ino => nix::sys::stat::fstat(file).ok(),
            _ => None,
        })
    }

    /// Runs `f` on the listing of directory handle `fh` (`EBADF` if it is none).
    pub fn with_dir<R>(&self, fh: u64, f: impl FnOnce(&[DirEntry]) -> R) -> Res<R> {
        match self.open.lock().get(&fh) {
            Some(Handle::Dir { entries }) => Ok(f(entries)),
            _ => Err(Errno::EBADF),
        }
    }

    /// Closes file handle `fh`; the inode's I/O mode ends with its last handle.
    pub fn release(&self, fh: u64) {
        let h = self.open.lock().remove(&fh);
        if let Some(
            Handle::Upper {
                ino, counted: true, ..
            }
            | Handle::Lower { ino, counted: true },
        ) = h
        {
            let mut modes = self.io_modes.lock();
            if let Some(m) = modes.get_mut(&ino) {
                m.count = m.count.saturating_sub(1);
                if m.count == 0 {
                    if m.owned && self.passthrough {
                        // Recorded gone before the kernel closes it: a record never
                        // names a closed backing id.
                        self.log_backing(ino, None);
                    }
                    modes.remove(&ino);
                }
            }
        }
    }

    /// Closes directory handle `fh`.
    pub fn release_dir(&self, fh: u64) {
        self.open.lock().remove(&fh);
    }

    /// Picks the I/O mode for a new open of `ino` and counts the open. While the inode
    /// is open elsewhere its mode is kept (the kernel cannot mix passthrough and cached
    /// opens); a passthrough to a lower file cannot turn into one to the upper file
    /// while it is open, which gives `ETXTBSY` (as writing a running binary would).
    fn io_mode(
        &self,
        stats: &Stats,
        ino: u64,
        upper: bool,
        backing_file: impl FnOnce() -> Option<File>,
        register: impl FnOnce(&File) -> io::Result<BackingId>,
    ) -> Res<Option<Arc<BackingId>>> {
        let mut modes = self.io_modes.lock();
        if let Some(m) = modes.get_mut(&ino) {
            if m.backing.is_some() && m.upper != upper {
                return Err(Errno::ETXTBSY);
            }
            m.count += 1;
            return Ok(m.backing.clone());
        }
        if self.passthrough {
            let mut inherited = self.inherited.lock();
            match inherited.get(&ino).copied() {
                // Opened in page-cache mode under an earlier server and maybe still
                // open so: a passthrough open would be refused, stay in that mode.
                Some(b) if b.id == NO_BACKING => {
                    modes.insert(
                        ino,
                        OpenMode {
                            backing: None,
                            owned: false,
                            upper,
                            count: 1,
                        },
                    );
                    return Ok(None);
                }
                Some(b) if b.upper == upper => {
                    let backing = Some(Arc::new(BackingId::unowned(b.id)));
                    modes.insert(
                        ino,
                        OpenMode {
                            backing: backing.clone(),
                            owned: false,
                            upper,
                            count: 1,
                        },
                    );
                    return Ok(backing);
                }
                Some(_) => {
                    // Copied up since: the old backing file is no longer this
                    // inode's content (an open of it still in the kernel gives
                    // ETXTBSY below, as it would without a restart).
                    inherited.remove(&ino);
                    self.log_backing(ino, None);
                }
                None => {}
            }
        }
        let backing = if self.passthrough {
            backing_file().and_then(|f| match register(&f) {
                Ok(b) => {
                    stats.passthrough_opens.fetch_add(1, Ordering::Relaxed);
                    self.log_backing(
                        ino,
                        Some(Backing {
                            ino,
                            id: b.backing_id(),
                            upper,
                        }),
                    );
                    Some(Arc::new(b))
                }
                Err(e) => {
                    tracing::debug!(ino, error = %e, "passthrough refused, using the FUSE path");
                    None
                }
            })
        } else {
            None
        };
        if self.passthrough && backing.is_none() {
            // A page-cache open is recorded too: while it may be open, a later
            // server must not pass this inode through.
            self.log_backing(
                ino,
                Some(Backing {
                    ino,
                    id: NO_BACKING,
                    upper,
                }),
            );
        }
        modes.insert(
            ino,
            OpenMode {
                backing: backing.clone(),
                owned: true,
                upper,
                count: 1,
            },
        );
        Ok(backing)
    }
}

impl SkiffFs {
    /// The upper file opened read-write as a passthrough backing file (one per inode,
    /// shared by all its opens, so it must allow every access mode).
    fn upper_backing(&self, st: &super::Nodes, ino: u64) -> Option<File> {
        let p = self.upper_path(st, ino).ok()?;
        if !crate::upper::lstat(&p).is_ok_and(|s| s.st_mode & libc::S_IFMT == libc::S_IFREG) {
            return None;
        }
        OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&p)
            .ok()
    }

    pub(super) fn open_upper(&self, st: &super::Nodes, ino: u64, flags: i32) -> Res<File> {
        let p = self.upper_path(st, ino)?;
        let acc = flags & libc::O_ACCMODE;
        let mut o = OpenOptions::new();
        o.read(acc == libc::O_RDONLY || acc == libc::O_RDWR);
        o.write(acc == libc::O_WRONLY || acc == libc::O_RDWR);
        let keep = flags & (libc::O_APPEND | libc::O_TRUNC | libc::O_SYNC | libc::O_DSYNC);
        // The node is a file the kernel opened; a symlink in its place in the upper
        // dir (put there behind our back) must not lead to a host file.
        o.custom_flags(keep | libc::O_NOFOLLOW);
        o.open(&p).map_err(errno)
    }

    /// Opens `ino`: a write copies it up first; an upper file is opened, a lower one
    /// is read through us (kept in the page cache) unless it can be passed through.
    /// `register` turns a backing file into a passthrough id.
    pub(super) fn do_open(
        &self,
        ino: u64,
        flags: i32,
        register: impl FnOnce(&File) -> io::Result<BackingId>,
    ) -> Res<Opened> {
        let acc = flags & libc::O_ACCMODE;
        if acc == libc::O_ACCMODE {
            return Err(Errno::EINVAL);
        }
        let writes = acc != libc::O_RDONLY || flags & libc::O_TRUNC != 0;
        if writes {
            if flags & libc::O_TRUNC == 0 {
                self.prefetch_for_copy_up(ino);
            }
            let mut st = self.state.write();
            self.copy_up(&mut st, ino, flags & libc::O_TRUNC != 0)?;
        }
        let st = self.state.read();
        let n = st.node(ino)?;
        if n.upper {
            self.open_upper_handle(&st, ino, flags, register)
        } else {
            let id = n.lower;
            let backing = self.handles.io_mode(
                &self.stats,
                ino,
                false,
                || id.and_then(|id| self.materializer.materialize(&self.tree, &self.fetcher, id)),
                register,
            )?;
            let fh = self.handles.insert(Handle::Lower { ino, counted: true });
            Ok(Opened {
                fh,
                flags: FopenFlags::FOPEN_KEEP_CACHE,
                backing,
            })
        }
    }

    /// Creates and opens a new regular file `name` in `parent`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn do_create(
        &self,
        req: &Request,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        register: impl FnOnce(&File) -> io::Result<BackingId>,
    ) -> Res<(Attr, Opened)> {
        let mut st = self.state.write();
        let (ino, attr) = self.new_entry(&mut st, req, parent, name, |_, p, _| {
            let f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(p)
                .map_err(errno)?;
            drop(f);
            Ok(Some(mode & 0o7777 & !umask))
        })?;
        let opened = self.open_upper_handle(&st, ino, flags & !libc::O_TRUNC, register)?;
        Ok((attr, opened))
    }

    /// A handle on upper file `ino` opened with `flags`, passed through when it can be.
    fn open_upper_handle(
        &self,
        st: &super::Nodes,
        ino: u64,
        flags: i32,
        register: impl FnOnce(&File) -> io::Result<BackingId>,
    ) -> Res<Opened> {
        let f = self.open_upper(st, ino, flags)?;
        let backing = self.handles.io_mode(
            &self.stats,
            ino,
            true,
            || self.upper_backing(st, ino),
            register,
        )?;
        let fh = self.handles.insert(Handle::Upper {
            file: Arc::new(f),
            ino,
            counted: true,
        });
        Ok(Opened {
            fh,
            flags: FopenFlags::empty(),
            backing,
        })
    }

    /// Reads `size` bytes at `offset` of handle `fh` of `ino` when it is an upper file;
    /// for a lower file says which one to read.
    pub(super) fn do_read(&self, ino: u64, fh: u64, offset: u64, size: u32) -> Res<ReadSource> {
        let file = match self.handles.open.lock().get(&fh) {
            Some(Handle::Upper { file, .. }) => Some(file.clone()),
            Some(Handle::Lower { .. }) => None,
            _ => return Err(Errno::EBADF),
        };
        if let Some(f) = file {
            let mut buf = vec![0u8; size as usize];
            let mut got = 0;
            while got < buf.len() {
                match f.read_at(&mut buf[got..], offset + got as u64) {
                    Ok(0) => break,
                    Ok(n) => got += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(errno(e)),
                }
            }
            buf.truncate(got);
            return Ok(ReadSource::Data(buf));
        }
        let st = self.state.read();
        let n = st.node(ino)?;
        if n.upper {
            // Copied up since it was opened: read the upper file.
            let f = self.open_upper(&st, ino, libc::O_RDONLY)?;
            let mut buf = vec![0u8; size as usize];
            let got = f.read_at(&mut buf, offset).map_err(errno)?;
            buf.truncate(got);
            return Ok(ReadSource::Data(buf));
        }
        n.lower.map(ReadSource::Lower).ok_or(Errno::EIO)
    }

    /// Writes `data` at `offset` (or at the end, with `O_APPEND`) of upper handle `fh`.
    pub(super) fn do_write(&self, fh: u64, offset: u64, data: &[u8], flags: i32) -> Res<u32> {
        let file = self.handles.upper_file(fh).ok_or(Errno::EBADF)?;
        let n = if flags & libc::O_APPEND != 0 {
            use std::io::Write;
            (&*file).write(data)
        } else {
            file.write_at(data, offset)
        };
        n.map(|n| n as u32).map_err(errno)
    }

    /// `fsync`/`fdatasync` of handle `fh` (nothing to do for lower files).
    pub(super) fn do_fsync(&self, fh: u64, datasync: bool) -> Res<()> {
        let r = match self.handles.upper_file(fh) {
            Some(f) if datasync => f.sync_data(),
            Some(f) => f.sync_all(),
            None => Ok(()),
        };
        r.map_err(errno)
    }

    /// `fallocate` on upper handle `fh`.
    pub(super) fn do_fallocate(&self, fh: u64, offset: u64, length: u64, mode: i32) -> Res<()> {
        use std::os::fd::AsRawFd;
        let file = self.handles.upper_file(fh).ok_or(Errno::EBADF)?;
        // SAFETY: a valid open fd.
        let r = unsafe { libc::fallocate(file.as_raw_fd(), mode, offset as i64, length as i64) };
        if r < 0 {
            Err(errno(io::Error::last_os_error()))
        } else {
            Ok(())
        }
    }

    /// Opens directory `ino`: its merged listing is taken now.
    pub(super) fn do_opendir(&self, ino: u64) -> Res<u64> {
        let mut st = self.state.write();
        let entries = self.list(&mut st, ino)?;
        // Listing registered every child; most are never looked up by the kernel.
        st.maybe_sweep();
        self.count_nodes(&st);
        Ok(self.handles.insert(Handle::Dir { entries }))
    }

    /// Walks directory handle `fh` of `ino` from entry `offset` on (`.` and `..`
    /// first), giving each entry's inode, next offset, type and name to `add` until it
    /// says the reply is full.
    pub(super) fn do_readdir(
        &self,
        ino: u64,
        fh: u64,
        offset: u64,
        mut add: impl FnMut(u64, u64, FileType, &OsStr) -> bool,
    ) -> Res<()> {
        // Lock order is always state before handles, so the parent is read first.
        let parent = self.state.read().parent_of(ino);
        let dots = dots(ino, parent);
        self.handles.with_dir(fh, |entries| {
            for (i, (name, cino, kind)) in dots
                .iter()
                .chain(entries.iter())
                .enumerate()
                .skip(offset as usize)
            {
                if add(*cino, (i + 1) as u64, *kind, name) {
                    break;
                }
            }
        })
    }

    /// [`SkiffFs::do_readdir`] with each entry's attributes (looked up again, so the
    /// inode is known to the kernel); entries gone since `opendir` are skipped.
    pub(super) fn do_readdirplus(
        &self,
        ino: u64,
        fh: u64,
        offset: u64,
        mut add: impl FnMut(u64, u64, &OsStr, &Attr) -> bool,
    ) -> Res<()> {
        let entries = self.handles.with_dir(fh, |e| e.to_vec())?;
        let mut st = self.state.write();
        let dots = dots(ino, st.parent_of(ino));
        for (i, (name, cino, _)) in dots
            .iter()
            .chain(entries.iter())
            .enumerate()
            .skip(offset as usize)
        {
            // `.` and `..` are not counted as kernel lookups; every other entry is.
            let (attr, counted) = if i < 2 {
                (self.attr(&st, *cino), None)
            } else {
                match self.lookup_in(&mut st, ino, name) {
                    Ok((found, a, t)) => (Ok((a, t)), Some(found)),
                    Err(e) => (Err(e), None),
                }
            };
            let Ok(attr) = attr else { continue };
            if add(*cino, (i + 1) as u64, name, &attr) {
                break;
            }
            if let Some(found) = counted {
                st.remember(found);
            }
        }
        Ok(())
    }
}

/// The `.` and `..` entries that start every listing.
fn dots(ino: u64, parent: u64) -> [DirEntry; 2] {
    [
        (OsString::from("."), ino, FileType::Directory),
        (OsString::from(".."), parent, FileType::Directory),
    ]
}
