//! The FUSE filesystem: the merged lower tree with a copy-on-write upper directory.
//!
//! Inode numbers: a lower entry's inode is [`LowerTree::ino`] (stable for an image);
//! an entry copied up keeps it (recorded in [`upper::ORIGIN_XATTR`] so it survives a
//! remount); an entry created in the upper directory gets [`UPPER_INO_BASE`] plus its
//! inode number on the upper filesystem (so upper hard links share one inode).
//!
//! Lower reads that miss the cache go to the [`Fetcher`]'s threads, which reply; the
//! FUSE thread returns at once. Mutations take one write lock on the node table and
//! are done with path-based system calls on the upper directory.

use crate::fetcher::{ChunkData, Fetcher};
use crate::stats::Stats;
use crate::tree::{LowerId, LowerTree};
use crate::upper;
use fuser::{
    Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr,
    Request, TimeOrNow, WriteFlags,
};
use parking_lot::{Mutex, RwLock};
use skiff_proto::index::{Chunk, EntryKind};
use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Inode numbers of entries created in the upper directory start here.
pub const UPPER_INO_BASE: u64 = 1 << 56;
/// Lower entries never change: the kernel may cache them for long.
const LOWER_TTL: Duration = Duration::from_secs(3600);
/// Upper entries change only through us, but other names of a hard link may change.
const UPPER_TTL: Duration = Duration::from_secs(1);
const ROOT_INO: u64 = 1;

/// Tunables of the filesystem.
#[derive(Debug, Clone)]
pub struct FsConfig {
    /// The upper directory (writable mount) or `None` (read-only).
    pub upper: Option<PathBuf>,
    /// Notes every lower-file read (for a prefetch profile); while set, lower files
    /// are never passed through, so every read is seen.
    pub recorder: Option<Arc<crate::profile::Recorder>>,
    /// On a sequential read that misses the cache, also fetch the file's following
    /// chunks in the same request, up to this many bytes of blob (0: off).
    pub readahead: u64,
    /// On the first read of an executable lower file of several chunks that misses the
    /// cache, queue the rest of the file at prefetch priority if it is at most this big
    /// (0: off).
    pub whole_file_max: u64,
}

struct Node {
    kind: FileType,
    /// For files: the lower entry (content until copied up). For directories: the
    /// lower directory merged under this one (`None` when opaque or upper-only).
    lower: Option<LowerId>,
    /// Whether the entry exists in the upper directory.
    upper: bool,
    /// Names (parent inode, name), most recent last; directories have one.
    names: Vec<(u64, OsString)>,
}

struct State {
    nodes: HashMap<u64, Node>,
}

enum Handle {
    /// A lower file read through the fetcher (until copied up; then the upper file).
    Lower { ino: u64 },
    /// An upper file.
    Upper { file: Arc<File>, ino: u64 },
    /// An open directory: its merged listing, taken at opendir.
    Dir {
        entries: Vec<(OsString, u64, FileType)>,
    },
}

/// The union filesystem (implements [`fuser::Filesystem`]).
pub struct SkiffFs {
    tree: Arc<LowerTree>,
    fetcher: Arc<Fetcher>,
    stats: Arc<Stats>,
    upper: Option<PathBuf>,
    upper_fd: Option<std::fs::File>,
    state: RwLock<State>,
    handles: Mutex<HashMap<u64, Handle>>,
    next_fh: AtomicU64,
    /// Whether the kernel agreed to FUSE passthrough (set in `init`).
    passthrough: bool,
    /// How each open inode's file I/O is done; one mode per inode while it is open,
    /// since the kernel refuses to mix passthrough and cached opens of one inode.
    io_modes: Mutex<HashMap<u64, OpenMode>>,
    /// Materialized lower files verified during this mount.
    verified_files: Mutex<std::collections::HashSet<PathBuf>>,
    recorder: Option<Arc<crate::profile::Recorder>>,
    readahead: u64,
    whole_file_max: u64,
    /// Where the last read of each lower file ended (sequential-access detection).
    read_ends: Mutex<HashMap<LowerId, u64>>,
    /// Lower files whose remaining chunks were queued whole.
    whole_queued: Mutex<std::collections::HashSet<LowerId>>,
}

/// The I/O mode of an open inode and how many handles use it.
struct OpenMode {
    backing: Option<Arc<fuser::BackingId>>,
    /// Whether the backing file is the upper file (else a cached lower file).
    upper: bool,
    count: usize,
}

type Res<T> = Result<T, Errno>;

thread_local! {
    /// Which filesystem's upper root this thread's working directory is (0: none).
    static THREAD_CWD: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

fn errno(e: io::Error) -> Errno {
    Errno::from(e)
}

fn name_str(name: &OsStr) -> Option<&str> {
    std::str::from_utf8(name.as_bytes()).ok()
}

fn ts(secs: i64, nsec: u32) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nsec)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) + Duration::from_nanos(nsec.into())
    }
}

fn kind_of_mode(mode: u32) -> FileType {
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

fn kind_of_entry(k: EntryKind) -> FileType {
    match k {
        EntryKind::Dir => FileType::Directory,
        EntryKind::Symlink => FileType::Symlink,
        EntryKind::Char => FileType::CharDevice,
        EntryKind::Block => FileType::BlockDevice,
        EntryKind::Fifo => FileType::NamedPipe,
        _ => FileType::RegularFile,
    }
}

fn attr_of_stat(ino: u64, st: &libc::stat) -> FileAttr {
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

fn to_timespec(t: TimeOrNow) -> Option<libc::timespec> {
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

impl SkiffFs {
    /// A filesystem over `tree`, reading lower content through `fetcher`.
    pub fn new(
        tree: Arc<LowerTree>,
        fetcher: Arc<Fetcher>,
        stats: Arc<Stats>,
        config: FsConfig,
    ) -> io::Result<SkiffFs> {
        if let Some(up) = &config.upper {
            std::fs::create_dir_all(up)?;
            std::fs::create_dir_all(up.join(upper::WORK_DIR))?;
        }
        let mut nodes = HashMap::new();
        nodes.insert(
            ROOT_INO,
            Node {
                kind: FileType::Directory,
                lower: Some(crate::tree::ROOT),
                upper: config.upper.is_some(),
                names: vec![(ROOT_INO, OsString::new())],
            },
        );
        let upper_fd = match &config.upper {
            Some(up) => Some(File::open(up)?),
            None => None,
        };
        Ok(SkiffFs {
            upper_fd,
            tree,
            fetcher,
            stats,
            upper: config.upper,
            state: RwLock::new(State { nodes }),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            passthrough: false,
            io_modes: Mutex::new(HashMap::new()),
            verified_files: Mutex::new(std::collections::HashSet::new()),
            recorder: config.recorder,
            readahead: config.readahead,
            whole_file_max: config.whole_file_max,
            read_ends: Mutex::new(HashMap::new()),
            whole_queued: Mutex::new(std::collections::HashSet::new()),
        })
    }

    /// Makes the calling thread's working directory the upper root and returns the
    /// path to use for it (`.`). All upper paths are relative to it, so they stay as
    /// short as the paths users see (long paths near PATH_MAX keep working). Each
    /// FUSE thread gets its own working directory with `unshare(CLONE_FS)`.
    fn upper_root(&self) -> Res<&Path> {
        let fd = self.upper_fd.as_ref().ok_or(Errno::EROFS)?;
        let id = self as *const SkiffFs as usize;
        THREAD_CWD.with(|c| -> Res<()> {
            if c.get() == id {
                return Ok(());
            }
            if c.get() == 0 {
                // SAFETY: only affects this thread's fs context.
                if unsafe { libc::unshare(libc::CLONE_FS) } < 0 {
                    return Err(errno(io::Error::last_os_error()));
                }
            }
            use std::os::fd::AsRawFd;
            // SAFETY: a valid directory fd.
            if unsafe { libc::fchdir(fd.as_raw_fd()) } < 0 {
                return Err(errno(io::Error::last_os_error()));
            }
            c.set(id);
            Ok(())
        })?;
        Ok(Path::new("."))
    }

    /// Path of `ino` relative to the root.
    fn rel_path(st: &State, ino: u64) -> Res<PathBuf> {
        let mut parts = Vec::new();
        let mut cur = ino;
        let mut guard = 0;
        while cur != ROOT_INO {
            let n = st.nodes.get(&cur).ok_or(Errno::ENOENT)?;
            let (p, name) = n.names.last().ok_or(Errno::ENOENT)?;
            parts.push(name.clone());
            cur = *p;
            guard += 1;
            if guard > 4096 {
                return Err(Errno::ELOOP);
            }
        }
        let mut out = PathBuf::new();
        for p in parts.iter().rev() {
            out.push(p);
        }
        Ok(out)
    }

    fn upper_path(&self, st: &State, ino: u64) -> Res<PathBuf> {
        Ok(self.upper_root()?.join(Self::rel_path(st, ino)?))
    }

    fn lower_attr(&self, ino: u64, id: LowerId) -> Res<FileAttr> {
        let n = self.tree.node(id).ok_or(Errno::ENOENT)?;
        let e = &n.entry;
        let kind = kind_of_entry(e.kind);
        let size = match e.kind {
            EntryKind::Reg | EntryKind::Hardlink => e.size,
            EntryKind::Symlink => e.link.len() as u64,
            EntryKind::Dir => 4096,
            _ => 0,
        };
        let t = ts(e.mtime, e.mtime_nsec);
        let rdev = libc::makedev(e.dev_major, e.dev_minor) as u32;
        Ok(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(4096) * 8,
            atime: t,
            mtime: t,
            ctime: t,
            crtime: UNIX_EPOCH,
            kind,
            perm: (e.mode & 0o7777) as u16,
            nlink: n.nlink.max(1),
            uid: e.uid,
            gid: e.gid,
            rdev,
            blksize: 4096,
            flags: 0,
        })
    }

    fn attr(&self, st: &State, ino: u64) -> Res<(FileAttr, Duration)> {
        let n = st.nodes.get(&ino).ok_or(Errno::ENOENT)?;
        if n.upper {
            let s = match self
                .upper_path(st, ino)
                .and_then(|p| upper::lstat(&p).map_err(errno))
            {
                Ok(s) => s,
                // Unlinked but still open: the open file still has attributes.
                Err(e) => self.open_file_stat(ino).ok_or(e)?,
            };
            return Ok((attr_of_stat(ino, &s), UPPER_TTL));
        }
        let id = n.lower.ok_or(Errno::ENOENT)?;
        Ok((self.lower_attr(ino, id)?, LOWER_TTL))
    }

    /// The lower entry named `name` under directory `parent` in the merged lower view.
    fn lower_child(&self, st: &State, parent: u64, name: &OsStr) -> Option<LowerId> {
        let p = st.nodes.get(&parent)?;
        self.tree.child(p.lower?, name_str(name)?)
    }

    fn add_name(node: &mut Node, parent: u64, name: &OsStr) {
        node.names.retain(|(p, n)| !(*p == parent && n == name));
        node.names.push((parent, name.to_os_string()));
    }

    /// Resolves `name` in directory `parent`, registering the node.
    fn lookup_in(
        &self,
        st: &mut State,
        parent: u64,
        name: &OsStr,
    ) -> Res<(u64, FileAttr, Duration)> {
        let pnode = st.nodes.get(&parent).ok_or(Errno::ENOENT)?;
        if pnode.kind != FileType::Directory {
            return Err(Errno::ENOTDIR);
        }
        if name.len() > 255 {
            return Err(Errno::ENAMETOOLONG);
        }
        let parent_upper = pnode.upper;
        if parent == ROOT_INO && name == upper::WORK_DIR && self.upper.is_some() {
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
                    let ino = origin.unwrap_or(UPPER_INO_BASE + s.st_ino);
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
                    let node = st.nodes.entry(ino).or_insert_with(|| Node {
                        kind,
                        lower,
                        upper: true,
                        names: Vec::new(),
                    });
                    node.kind = kind;
                    node.lower = lower;
                    node.upper = true;
                    if kind == FileType::Directory {
                        node.names.clear();
                    }
                    Self::add_name(node, parent, name);
                    return Ok((ino, attr_of_stat(ino, &s), UPPER_TTL));
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(errno(e)),
            }
        }
        let id = lower_child.ok_or(Errno::ENOENT)?;
        let ino = LowerTree::ino(id);
        let ln = self.tree.node(id).ok_or(Errno::ENOENT)?;
        let kind = kind_of_entry(ln.entry.kind);
        let node = st.nodes.entry(ino).or_insert_with(|| Node {
            kind,
            lower: Some(id),
            upper: false,
            names: Vec::new(),
        });
        if kind == FileType::Directory {
            node.names.clear();
        }
        Self::add_name(node, parent, name);
        Ok((ino, self.lower_attr(ino, id)?, LOWER_TTL))
    }

    /// The merged listing of directory `ino` (without `.` and `..`).
    fn list(&self, st: &mut State, ino: u64) -> Res<Vec<(OsString, u64, FileType)>> {
        let node = st.nodes.get(&ino).ok_or(Errno::ENOENT)?;
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
                if ino == ROOT_INO && name == upper::WORK_DIR {
                    continue;
                }
                seen.insert(name.clone());
                names.push(name);
            }
        }
        if let Some(lower) = node.lower.and_then(|l| self.tree.node(l)) {
            for name in lower.children.keys() {
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

    /// Makes sure `ino` exists in the upper directory, copying it (and its parents) up.
    /// With `empty`, a regular file is created empty (it is about to be truncated).
    fn copy_up(&self, st: &mut State, ino: u64, empty: bool) -> Res<()> {
        let root = self.upper_root()?.to_path_buf();
        let node = st.nodes.get(&ino).ok_or(Errno::ENOENT)?;
        if node.upper {
            return Ok(());
        }
        let id = node.lower.ok_or(Errno::ENOENT)?;
        let (parent, _) = node.names.last().cloned().ok_or(Errno::ENOENT)?;
        self.copy_up(st, parent, false)?;
        let ln = self.tree.node(id).ok_or(Errno::ENOENT)?.clone();
        let e = &ln.entry;
        let dest = root.join(Self::rel_path(st, ino)?);
        let work = root.join(upper::WORK_DIR).join(format!(
            "copyup-{ino}-{}",
            self.next_fh.fetch_add(1, Ordering::Relaxed)
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
            EntryKind::Symlink => upper::symlink(OsStr::new(&e.link), &work).map_err(errno)?,
            EntryKind::Char | EntryKind::Block | EntryKind::Fifo => {
                let t = match e.kind {
                    EntryKind::Char => libc::S_IFCHR,
                    EntryKind::Block => libc::S_IFBLK,
                    _ => libc::S_IFIFO,
                };
                let rdev = libc::makedev(e.dev_major, e.dev_minor);
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
            for (k, v) in &e.xattrs {
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
        if let Some(n) = st.nodes.get_mut(&ino) {
            n.upper = true;
        }
        // Keep the other names of a lower hard link pointing at the same inode.
        if ln.paths.len() > 1 && e.kind != EntryKind::Dir {
            let me = Self::rel_path(st, ino)?;
            for other in &ln.paths {
                if Path::new(other) == me {
                    continue;
                }
                if let Ok(oino) = self.resolve(st, Path::new(other)) {
                    if oino == ino {
                        let (oparent, oname) = match other.rsplit_once('/') {
                            Some((p, n)) => (self.resolve(st, Path::new(p)), n),
                            None => (Ok(ROOT_INO), other.as_str()),
                        };
                        if let Ok(op) = oparent {
                            if self.copy_up(st, op, false).is_ok() {
                                let to = root.join(other);
                                if upper::link(&dest, &to).is_ok() {
                                    if let Some(n) = st.nodes.get_mut(&ino) {
                                        Self::add_name(n, op, OsStr::new(oname));
                                    }
                                }
                            }
                        }
                    }
                }
            }
            if let Some(n) = st.nodes.get_mut(&ino) {
                // The most recent name must stay the one copy-up was asked for.
                let mine = n.names.iter().position(|(p, nm)| {
                    Path::new(nm) == me.file_name().unwrap_or_default() && *p == parent
                });
                if let Some(i) = mine {
                    let x = n.names.remove(i);
                    n.names.push(x);
                }
            }
        }
        Ok(())
    }

    /// Fetches a lower file's missing chunks before copy-up takes the state lock, so a
    /// slow registry holds only this request, not every other operation.
    fn prefetch_for_copy_up(&self, ino: u64) {
        let id = {
            let st = self.state.read();
            match st.nodes.get(&ino) {
                Some(n) if !n.upper => n.lower,
                _ => None,
            }
        };
        let Some(ln) = id.and_then(|id| self.tree.node(id)) else {
            return;
        };
        if let Some(idx) = self.tree.layers.get(ln.layer) {
            let chunks = idx.chunks_of(&ln.entry);
            if !chunks.is_empty() && !self.fetcher.all_on_disk(chunks) {
                // Errors surface again (as EIO) in copy_up.
                let _ = self.fetcher.fetch_blocking(ln.layer, chunks);
            }
        }
    }

    /// Resolves a root-relative path through the merged view.
    fn resolve(&self, st: &mut State, path: &Path) -> Res<u64> {
        let mut cur = ROOT_INO;
        for c in path.components() {
            cur = self.lookup_in(st, cur, c.as_os_str())?.0;
        }
        Ok(cur)
    }

    /// Prepares `name` in `parent` for a new upper entry: copies the parent up and
    /// removes a whiteout there. Returns the path and whether the name hides a lower
    /// entry (a new directory there must be opaque).
    fn prepare_new(&self, st: &mut State, parent: u64, name: &OsStr) -> Res<(PathBuf, bool)> {
        self.upper_root()?;
        if name.len() > 255 {
            return Err(Errno::ENAMETOOLONG);
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

    /// Sets owner and mode of a new upper entry as the requester would have got them.
    fn own_new(&self, req: &Request, parent_path: &Path, p: &Path, mode: Option<u32>) -> Res<()> {
        let pst = upper::lstat(parent_path).map_err(errno)?;
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

    fn open_file_stat(&self, ino: u64) -> Option<libc::stat> {
        let handles = self.handles.lock();
        handles.values().find_map(|h| match h {
            Handle::Upper { file, ino: i } if *i == ino => nix::sys::stat::fstat(file).ok(),
            _ => None,
        })
    }

    /// Picks the I/O mode for a new open of `ino` and counts the open. While the inode
    /// is open elsewhere its mode is kept (the kernel cannot mix passthrough and cached
    /// opens); a passthrough to a lower file cannot turn into one to the upper file
    /// while it is open, which gives `ETXTBSY` (as writing a running binary would).
    fn io_mode(
        &self,
        ino: u64,
        upper: bool,
        backing_file: impl FnOnce() -> Option<File>,
        register: impl FnOnce(&File) -> io::Result<fuser::BackingId>,
    ) -> Res<Option<Arc<fuser::BackingId>>> {
        let mut modes = self.io_modes.lock();
        if let Some(m) = modes.get_mut(&ino) {
            if m.backing.is_some() && m.upper != upper {
                return Err(Errno::ETXTBSY);
            }
            m.count += 1;
            return Ok(m.backing.clone());
        }
        let backing = if self.passthrough {
            backing_file().and_then(|f| match register(&f) {
                Ok(b) => {
                    self.stats.passthrough_opens.fetch_add(1, Ordering::Relaxed);
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
        modes.insert(
            ino,
            OpenMode {
                backing: backing.clone(),
                upper,
                count: 1,
            },
        );
        Ok(backing)
    }

    /// The upper file opened read-write as a passthrough backing file (one per inode,
    /// shared by all its opens, so it must allow every access mode).
    fn upper_backing(&self, st: &State, ino: u64) -> Option<File> {
        let p = self.upper_path(st, ino).ok()?;
        if !upper::lstat(&p).is_ok_and(|s| s.st_mode & libc::S_IFMT == libc::S_IFREG) {
            return None;
        }
        OpenOptions::new().read(true).write(true).open(&p).ok()
    }

    /// A lower regular file whose chunks are all in the disk cache, as one local file
    /// for passthrough: the chunk file itself for a large one-chunk file, else a file
    /// assembled from verified chunks under the cache's `files/` (none for a small
    /// file kept in a pack). Either is verified
    /// once per mount before the kernel reads it directly.
    fn materialize(&self, id: LowerId) -> Option<File> {
        let ln = self.tree.node(id)?;
        if !matches!(ln.entry.kind, EntryKind::Reg | EntryKind::Hardlink) || ln.entry.size == 0 {
            return None;
        }
        if self.recorder.is_some() {
            return None;
        }
        let idx = self.tree.layers.get(ln.layer)?;
        let chunks = idx.chunks_of(&ln.entry);
        if chunks.is_empty() || !self.fetcher.all_on_disk(chunks) {
            return None;
        }
        let cache = self.fetcher.cache();
        // A one-chunk file stored as its own cache file is used as it is; several
        // chunks are assembled. A small file whose one chunk sits in a pack stays on
        // the FUSE path: assembling a file per small file is what packs avoid, and
        // keep_cache serves its repeated reads from the page cache anyway.
        let single = match chunks {
            [c] => Some(cache.file_of(&c.digest)?),
            _ => None,
        };
        let path = match &single {
            Some(p) => p.clone(),
            None => {
                let mut h = skiff_proto::digest::Hasher::new();
                for c in chunks {
                    h.update(c.digest.as_bytes());
                    h.update(&c.file_offset.to_le_bytes());
                }
                cache.files_dir().join(h.finish().hex())
            }
        };
        if !self.verified_files.lock().contains(&path) {
            let ok = if single.is_some() {
                std::fs::read(&path).is_ok_and(|d| skiff_proto::Digest::of(&d) == chunks[0].digest)
            } else {
                self.assemble_file(&path, chunks, ln.entry.size).is_ok()
            };
            if !ok {
                return None;
            }
            self.verified_files.lock().insert(path.clone());
        }
        File::open(&path).ok()
    }

    /// Writes (or checks) the assembled file at `path` from verified cached chunks.
    fn assemble_file(&self, path: &Path, chunks: &[Chunk], size: u64) -> io::Result<()> {
        let cache = self.fetcher.cache();
        if let Ok(f) = File::open(path) {
            // Already there: verify every chunk's range.
            let mut ok = f.metadata()?.len() == size;
            for c in chunks {
                if !ok {
                    break;
                }
                let mut buf = vec![0u8; c.len as usize];
                ok = f.read_exact_at(&mut buf, c.file_offset).is_ok()
                    && skiff_proto::Digest::of(&buf) == c.digest;
            }
            if ok {
                return Ok(());
            }
            let _ = std::fs::remove_file(path);
        }
        std::fs::create_dir_all(cache.files_dir())?;
        let tmp = path.with_extension(format!(
            "tmp{}",
            self.next_fh.fetch_add(1, Ordering::Relaxed)
        ));
        let f = File::create(&tmp)?;
        for c in chunks {
            let Some((data, _)) = cache.get(&c.digest) else {
                let _ = std::fs::remove_file(&tmp);
                return Err(io::Error::from_raw_os_error(libc::ENOENT));
            };
            f.write_all_at(&data, c.file_offset)?;
        }
        f.set_len(size)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    }

    fn new_handle(&self, h: Handle) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles.lock().insert(fh, h);
        fh
    }

    fn open_upper(&self, st: &State, ino: u64, flags: i32) -> Res<File> {
        let p = self.upper_path(st, ino)?;
        let acc = flags & libc::O_ACCMODE;
        let mut o = OpenOptions::new();
        o.read(acc == libc::O_RDONLY || acc == libc::O_RDWR);
        o.write(acc == libc::O_WRONLY || acc == libc::O_RDWR);
        let keep = flags
            & (libc::O_APPEND | libc::O_TRUNC | libc::O_SYNC | libc::O_DSYNC | libc::O_NOFOLLOW);
        o.custom_flags(keep);
        o.open(&p).map_err(errno)
    }

    /// Replies to a lower read from verified chunk data.
    fn assemble(chunks: &[Chunk], data: &ChunkData, offset: u64, end: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity((end - offset) as usize);
        for (c, d) in chunks.iter().zip(data) {
            let cstart = c.file_offset;
            let from = offset.max(cstart);
            let to = end.min(cstart + d.len() as u64);
            if from >= to {
                continue;
            }
            let a = (from - cstart) as usize;
            let b = (to - cstart) as usize;
            if let Some(s) = d.get(a..b) {
                out.extend_from_slice(s);
            }
        }
        out
    }

    fn read_lower(&self, id: LowerId, offset: u64, size: u32, reply: ReplyData) {
        let start = Instant::now();
        let Some(ln) = self.tree.node(id) else {
            return reply.error(Errno::ENOENT);
        };
        let Some(idx) = self.tree.layers.get(ln.layer) else {
            return reply.error(Errno::EIO);
        };
        let fsize = ln.entry.size;
        if offset >= fsize || size == 0 {
            return reply.data(&[]);
        }
        let end = fsize.min(offset.saturating_add(u64::from(size)));
        if let (Some(rec), Some(path)) = (&self.recorder, ln.paths.first()) {
            rec.record(path, offset, end);
        }
        let sequential = {
            let mut ends = self.read_ends.lock();
            let prev = ends.insert(id, end);
            offset == 0 || prev == Some(offset)
        };
        let all = idx.chunks_of(&ln.entry);
        let first = all.partition_point(|c| c.file_offset + c.len <= offset);
        let last = all.partition_point(|c| c.file_offset < end);
        let chunks: Vec<Chunk> = all.get(first..last).unwrap_or(&[]).to_vec();
        if let Some(data) = self.fetcher.cached(&chunks) {
            let out = Self::assemble(&chunks, &data, offset, end);
            self.stats.record_read(start.elapsed(), out.len());
            return reply.data(&out);
        }
        let stats = self.stats.clone();
        let layer = ln.layer;
        let mut job = chunks.clone();
        if sequential && self.readahead > 0 {
            // Read-ahead: the file's next chunks that are nearby in the blob and not
            // cached ride along in the same request (the reply uses only `wanted`).
            let base = job.first().map_or(0, |c| c.blob_offset);
            for c in all.get(last..).unwrap_or(&[]) {
                let prev_end = job.last().map_or(0, |p| p.blob_offset + p.blob_len);
                let within = c
                    .blob_offset
                    .saturating_add(c.blob_len)
                    .saturating_sub(base)
                    <= self.readahead;
                if !within || c.blob_offset > prev_end.saturating_add(64 << 10) {
                    break;
                }
                if self.fetcher.cache().contains(&c.digest) {
                    break;
                }
                job.push(*c);
            }
        }
        // Executables only: exec'd programs page in most of their text, while libraries
        // and data files are mapped and touched sparsely (node's ICU data and libnode:
        // +12 MB fetched and +0.4 s when every big file was queued whole; the node rows
        // of bench/RESULTS.md, `bash bench/coldstart.sh --images node --tools skiff`).
        let executable = ln.entry.mode & 0o111 != 0;
        if executable && all.len() > job.len() && fsize <= self.whole_file_max {
            self.queue_rest_of_file(id, layer, all, &job);
        }
        let extra = job.split_off(chunks.len());
        let chunks2 = chunks;
        self.fetcher.submit_readahead(
            layer,
            job,
            extra,
            Box::new(move |r| match r {
                Ok(data) => {
                    let out = Self::assemble(&chunks2, &data, offset, end);
                    stats.record_read(start.elapsed(), out.len());
                    reply.data(&out)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "lower read failed");
                    reply.error(Errno::EIO)
                }
            }),
        );
    }

    /// Queues, once per file, the chunks of a lower file that `taken` (this read) does
    /// not cover, as prefetch jobs of ~1 MiB of blob ([`Fetcher::queue_speculative`])
    /// that several workers fetch side by side. An executable paged in by faults, in no particular order, mostly needs the
    /// rest soon; fetched a fault at a time, each 4 MiB chunk waits for the previous
    /// one (gcc's cc1 on eStargz: 8 chunks one after another).
    fn queue_rest_of_file(&self, id: LowerId, layer: usize, all: &[Chunk], taken: &[Chunk]) {
        if !self.whole_queued.lock().insert(id) {
            return;
        }
        let rest: Vec<Chunk> = all
            .iter()
            .filter(|c| !taken.iter().any(|t| t.digest == c.digest))
            .copied()
            .collect();
        self.fetcher
            .queue_speculative(crate::fetcher::Priority::Prefetch, layer, rest);
    }

    fn xattr_reply(reply: ReplyXattr, size: u32, data: &[u8]) {
        if size == 0 {
            reply.size(data.len() as u32);
        } else if (size as usize) < data.len() {
            reply.error(Errno::ERANGE);
        } else {
            reply.data(data);
        }
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
            self.passthrough = true;
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let mut st = self.state.write();
        match self.lookup_in(&mut st, parent.0, name) {
            Ok((_, attr, ttl)) => reply.entry(&ttl, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        if let Some(fh) = fh {
            let file = match self.handles.lock().get(&fh.0) {
                Some(Handle::Upper { file, .. }) => Some(file.clone()),
                _ => None,
            };
            if let Some(s) = file.and_then(|f| nix::sys::stat::fstat(&f).ok()) {
                return reply.attr(&UPPER_TTL, &attr_of_stat(ino.0, &s));
            }
        }
        let st = self.state.read();
        match self.attr(&st, ino.0) {
            Ok((attr, ttl)) => reply.attr(&ttl, &attr),
            Err(e) => reply.error(e),
        }
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
        let mut st = self.state.write();
        let r = (|| -> Res<(FileAttr, Duration)> {
            self.copy_up(&mut st, ino.0, size == Some(0))?;
            let p = self.upper_path(&st, ino.0)?;
            if uid.is_some() || gid.is_some() {
                upper::lchown(&p, uid.unwrap_or(u32::MAX), gid.unwrap_or(u32::MAX))
                    .map_err(errno)?;
            }
            if let Some(m) = mode {
                upper::chmod(&p, m & 0o7777).map_err(errno)?;
            }
            if let Some(sz) = size {
                let file = fh.and_then(|fh| match self.handles.lock().get(&fh.0) {
                    Some(Handle::Upper { file, .. }) => Some(file.clone()),
                    _ => None,
                });
                match file {
                    Some(f) if f.set_len(sz).is_ok() => {}
                    _ => upper::truncate(&p, sz).map_err(errno)?,
                }
            }
            if atime.is_some() || mtime.is_some() {
                upper::set_times(&p, atime.map(to_timespec), mtime.map(to_timespec))
                    .map_err(errno)?;
            }
            self.attr(&st, ino.0)
        })();
        match r {
            Ok((attr, ttl)) => reply.attr(&ttl, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let st = self.state.read();
        let Some(n) = st.nodes.get(&ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        if n.upper {
            match self
                .upper_path(&st, ino.0)
                .and_then(|p| std::fs::read_link(p).map_err(errno))
            {
                Ok(t) => reply.data(t.as_os_str().as_bytes()),
                Err(e) => reply.error(e),
            }
        } else {
            match n.lower.and_then(|id| self.tree.node(id)) {
                Some(l) if l.entry.kind == EntryKind::Symlink => {
                    reply.data(l.entry.link.as_bytes())
                }
                _ => reply.error(Errno::EINVAL),
            }
        }
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
        let mut st = self.state.write();
        let r = (|| -> Res<(FileAttr, Duration)> {
            let (p, _) = self.prepare_new(&mut st, parent.0, name)?;
            let perm = mode & 0o7777 & !umask;
            upper::mknod(&p, (mode & libc::S_IFMT) | 0o600, u64::from(rdev)).map_err(errno)?;
            if mode & libc::S_IFMT == libc::S_IFCHR && rdev == 0 {
                upper::set_xattr(&p, upper::USER_CHARDEV_XATTR.as_bytes(), b"1", 0)
                    .map_err(errno)?;
            }
            let pp = self.upper_path(&st, parent.0)?;
            self.own_new(req, &pp, &p, Some(perm))?;
            let (_, attr, ttl) = self.lookup_in(&mut st, parent.0, name)?;
            Ok((attr, ttl))
        })();
        match r {
            Ok((attr, ttl)) => reply.entry(&ttl, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
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
        let mut st = self.state.write();
        let r = (|| -> Res<(FileAttr, Duration)> {
            let (p, hides) = self.prepare_new(&mut st, parent.0, name)?;
            upper::mkdir(&p, 0o700).map_err(errno)?;
            if hides {
                upper::set_opaque(&p).map_err(errno)?;
            }
            let pp = self.upper_path(&st, parent.0)?;
            let pst = upper::lstat(&pp).map_err(errno)?;
            let mut perm = mode & 0o7777 & !umask;
            if pst.st_mode & libc::S_ISGID != 0 {
                perm |= libc::S_ISGID;
            }
            self.own_new(req, &pp, &p, Some(perm))?;
            let (_, attr, ttl) = self.lookup_in(&mut st, parent.0, name)?;
            Ok((attr, ttl))
        })();
        match r {
            Ok((attr, ttl)) => reply.entry(&ttl, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut st = self.state.write();
        let r = self.remove(&mut st, parent.0, name, false);
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut st = self.state.write();
        let r = self.remove(&mut st, parent.0, name, true);
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let mut st = self.state.write();
        let r = (|| -> Res<(FileAttr, Duration)> {
            let (p, _) = self.prepare_new(&mut st, parent.0, link_name)?;
            upper::symlink(target.as_os_str(), &p).map_err(errno)?;
            let pp = self.upper_path(&st, parent.0)?;
            self.own_new(req, &pp, &p, None)?;
            let (_, attr, ttl) = self.lookup_in(&mut st, parent.0, link_name)?;
            Ok((attr, ttl))
        })();
        match r {
            Ok((attr, ttl)) => reply.entry(&ttl, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
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
        let mut st = self.state.write();
        let r = self.do_rename(&mut st, parent.0, name, newparent.0, newname, flags);
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let mut st = self.state.write();
        let r = (|| -> Res<(FileAttr, Duration)> {
            if st.nodes.get(&ino.0).map(|n| n.kind) == Some(FileType::Directory) {
                return Err(Errno::EPERM);
            }
            self.copy_up(&mut st, ino.0, false)?;
            let from = self.upper_path(&st, ino.0)?;
            let (p, _) = self.prepare_new(&mut st, newparent.0, newname)?;
            upper::link(&from, &p).map_err(errno)?;
            let (_, attr, ttl) = self.lookup_in(&mut st, newparent.0, newname)?;
            Ok((attr, ttl))
        })();
        match r {
            Ok((attr, ttl)) => reply.entry(&ttl, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let flags = flags.0;
        let acc = flags & libc::O_ACCMODE;
        if acc == libc::O_ACCMODE {
            return reply.error(Errno::EINVAL);
        }
        let writes = acc != libc::O_RDONLY || flags & libc::O_TRUNC != 0;
        let r = (|| -> Res<(u64, FopenFlags, Option<Arc<fuser::BackingId>>)> {
            if writes {
                if flags & libc::O_TRUNC == 0 {
                    self.prefetch_for_copy_up(ino.0);
                }
                let mut st = self.state.write();
                self.copy_up(&mut st, ino.0, flags & libc::O_TRUNC != 0)?;
            }
            let st = self.state.read();
            let n = st.nodes.get(&ino.0).ok_or(Errno::ENOENT)?;
            if n.upper {
                let f = self.open_upper(&st, ino.0, flags)?;
                let backing = self.io_mode(
                    ino.0,
                    true,
                    || self.upper_backing(&st, ino.0),
                    |f| reply.open_backing(f),
                )?;
                Ok((
                    self.new_handle(Handle::Upper {
                        file: Arc::new(f),
                        ino: ino.0,
                    }),
                    FopenFlags::empty(),
                    backing,
                ))
            } else {
                let id = n.lower;
                let backing = self.io_mode(
                    ino.0,
                    false,
                    || id.and_then(|id| self.materialize(id)),
                    |f| reply.open_backing(f),
                )?;
                Ok((
                    self.new_handle(Handle::Lower { ino: ino.0 }),
                    FopenFlags::FOPEN_KEEP_CACHE,
                    backing,
                ))
            }
        })();
        match r {
            // The kernel accepts no page-cache flags on a passthrough open.
            Ok((fh, _, Some(b))) => {
                reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), &b)
            }
            Ok((fh, fl, None)) => reply.opened(FileHandle(fh), fl),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        let file = match self.handles.lock().get(&fh.0) {
            Some(Handle::Upper { file, .. }) => Some(file.clone()),
            Some(Handle::Lower { .. }) => None,
            _ => return reply.error(Errno::EBADF),
        };
        if let Some(f) = file {
            let mut buf = vec![0u8; size as usize];
            let mut got = 0;
            while got < buf.len() {
                match f.read_at(&mut buf[got..], offset + got as u64) {
                    Ok(0) => break,
                    Ok(n) => got += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return reply.error(errno(e)),
                }
            }
            return reply.data(&buf[..got]);
        }
        let st = self.state.read();
        let Some(n) = st.nodes.get(&ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        if n.upper {
            // Copied up since it was opened: read the upper file.
            match self.open_upper(&st, ino.0, libc::O_RDONLY) {
                Ok(f) => {
                    let mut buf = vec![0u8; size as usize];
                    match f.read_at(&mut buf, offset) {
                        Ok(got) => reply.data(&buf[..got]),
                        Err(e) => reply.error(errno(e)),
                    }
                }
                Err(e) => reply.error(e),
            }
            return;
        }
        let Some(id) = n.lower else {
            return reply.error(Errno::EIO);
        };
        drop(st);
        self.read_lower(id, offset, size, reply);
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyWrite,
    ) {
        let file = match self.handles.lock().get(&fh.0) {
            Some(Handle::Upper { file, .. }) => file.clone(),
            _ => return reply.error(Errno::EBADF),
        };
        let r = if flags.0 & libc::O_APPEND != 0 {
            use std::io::Write;
            (&*file).write(data)
        } else {
            file.write_at(data, offset)
        };
        match r {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: fuser::LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
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
        let h = self.handles.lock().remove(&fh.0);
        if let Some(Handle::Upper { ino, .. } | Handle::Lower { ino }) = h {
            let mut modes = self.io_modes.lock();
            if let Some(m) = modes.get_mut(&ino) {
                m.count = m.count.saturating_sub(1);
                if m.count == 0 {
                    modes.remove(&ino);
                }
            }
        }
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let file = match self.handles.lock().get(&fh.0) {
            Some(Handle::Upper { file, .. }) => Some(file.clone()),
            _ => None,
        };
        let r = match file {
            Some(f) if datasync => f.sync_data(),
            Some(f) => f.sync_all(),
            None => Ok(()),
        };
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let mut st = self.state.write();
        match self.list(&mut st, ino.0) {
            Ok(entries) => {
                let fh = self.new_handle(Handle::Dir { entries });
                reply.opened(FileHandle(fh), FopenFlags::empty())
            }
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        // Lock order is always state before handles (attr() looks at open handles
        // while holding the state lock), so the parent is read first.
        let parent = {
            let st = self.state.read();
            st.nodes
                .get(&ino.0)
                .and_then(|n| n.names.last().map(|x| x.0))
                .unwrap_or(ROOT_INO)
        };
        let handles = self.handles.lock();
        let Some(Handle::Dir { entries }) = handles.get(&fh.0) else {
            return reply.error(Errno::EBADF);
        };
        let dots = [
            (OsString::from("."), ino.0, FileType::Directory),
            (OsString::from(".."), parent, FileType::Directory),
        ];
        for (i, (name, cino, kind)) in dots
            .iter()
            .chain(entries.iter())
            .enumerate()
            .skip(offset as usize)
        {
            if reply.add(INodeNo(*cino), (i + 1) as u64, *kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let entries = match self.handles.lock().get(&fh.0) {
            Some(Handle::Dir { entries }) => entries.clone(),
            _ => return reply.error(Errno::EBADF),
        };
        let mut st = self.state.write();
        let parent = st
            .nodes
            .get(&ino.0)
            .and_then(|n| n.names.last().map(|x| x.0))
            .unwrap_or(ROOT_INO);
        let dots = [
            (OsString::from("."), ino.0, FileType::Directory),
            (OsString::from(".."), parent, FileType::Directory),
        ];
        for (i, (name, cino, _)) in dots
            .iter()
            .chain(entries.iter())
            .enumerate()
            .skip(offset as usize)
        {
            let attr = if i < 2 {
                self.attr(&st, *cino)
            } else {
                self.lookup_in(&mut st, ino.0, name).map(|(_, a, t)| (a, t))
            };
            let Ok((attr, ttl)) = attr else { continue };
            if reply.add(
                INodeNo(*cino),
                (i + 1) as u64,
                name,
                &ttl,
                &attr,
                Generation(0),
            ) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.handles.lock().remove(&fh.0);
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
        if upper::is_private_xattr(name.as_bytes()) {
            return reply.error(Errno::EPERM);
        }
        let mut st = self.state.write();
        let r = (|| -> Res<()> {
            self.copy_up(&mut st, ino.0, false)?;
            let p = self.upper_path(&st, ino.0)?;
            upper::set_xattr(&p, name.as_bytes(), value, flags).map_err(errno)
        })();
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        if upper::is_private_xattr(name.as_bytes()) {
            return reply.error(Errno::NO_XATTR);
        }
        let st = self.state.read();
        let Some(n) = st.nodes.get(&ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        if n.upper {
            match self
                .upper_path(&st, ino.0)
                .and_then(|p| upper::get_xattr(&p, name.as_bytes()).map_err(errno))
            {
                Ok(Some(v)) => Self::xattr_reply(reply, size, &v),
                Ok(None) => reply.error(Errno::NO_XATTR),
                Err(e) => reply.error(e),
            }
        } else {
            let v = n.lower.and_then(|id| self.tree.node(id)).and_then(|l| {
                l.entry
                    .xattrs
                    .iter()
                    .find(|(k, _)| k.as_bytes() == name.as_bytes())
                    .map(|(_, v)| v.clone())
            });
            match v {
                Some(v) => Self::xattr_reply(reply, size, &v),
                None => reply.error(Errno::NO_XATTR),
            }
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let st = self.state.read();
        let Some(n) = st.nodes.get(&ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        let names: Vec<Vec<u8>> = if n.upper {
            match self
                .upper_path(&st, ino.0)
                .and_then(|p| upper::list_xattrs(&p).map_err(errno))
            {
                Ok(v) => v,
                Err(e) => return reply.error(e),
            }
        } else {
            n.lower
                .and_then(|id| self.tree.node(id))
                .map(|l| {
                    l.entry
                        .xattrs
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
        Self::xattr_reply(reply, size, &out);
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        if upper::is_private_xattr(name.as_bytes()) {
            return reply.error(Errno::EPERM);
        }
        let mut st = self.state.write();
        let r = (|| -> Res<()> {
            self.copy_up(&mut st, ino.0, false)?;
            let p = self.upper_path(&st, ino.0)?;
            upper::remove_xattr(&p, name.as_bytes()).map_err(errno)
        })();
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
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
        let mut st = self.state.write();
        let r = (|| -> Res<(FileAttr, Duration, u64, Option<Arc<fuser::BackingId>>)> {
            let (p, _) = self.prepare_new(&mut st, parent.0, name)?;
            let f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&p)
                .map_err(errno)?;
            drop(f);
            let pp = self.upper_path(&st, parent.0)?;
            self.own_new(req, &pp, &p, Some(mode & 0o7777 & !umask))?;
            let (ino, attr, ttl) = self.lookup_in(&mut st, parent.0, name)?;
            let f = self.open_upper(&st, ino, flags & !libc::O_TRUNC)?;
            let backing = self.io_mode(
                ino,
                true,
                || self.upper_backing(&st, ino),
                |f| reply.open_backing(f),
            )?;
            let fh = self.new_handle(Handle::Upper {
                file: Arc::new(f),
                ino,
            });
            Ok((attr, ttl, fh, backing))
        })();
        match r {
            Ok((attr, ttl, fh, Some(b))) => reply.created_passthrough(
                &ttl,
                &attr,
                Generation(0),
                FileHandle(fh),
                FopenFlags::empty(),
                &b,
            ),
            Ok((attr, ttl, fh, None)) => reply.created(
                &ttl,
                &attr,
                Generation(0),
                FileHandle(fh),
                FopenFlags::empty(),
            ),
            Err(e) => reply.error(e),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let file = match self.handles.lock().get(&fh.0) {
            Some(Handle::Upper { file, .. }) => file.clone(),
            _ => return reply.error(Errno::EBADF),
        };
        use std::os::fd::AsRawFd;
        // SAFETY: a valid open fd.
        let r = unsafe { libc::fallocate(file.as_raw_fd(), mode, offset as i64, length as i64) };
        if r < 0 {
            reply.error(errno(io::Error::last_os_error()))
        } else {
            reply.ok()
        }
    }
}

impl SkiffFs {
    fn remove(&self, st: &mut State, parent: u64, name: &OsStr, dir: bool) -> Res<()> {
        self.upper_root()?;
        let (ino, attr, _) = self.lookup_in(st, parent, name)?;
        let is_dir = attr.kind == FileType::Directory;
        if dir && !is_dir {
            return Err(Errno::ENOTDIR);
        }
        if !dir && is_dir {
            return Err(Errno::EISDIR);
        }
        if is_dir && !self.list(st, ino)?.is_empty() {
            return Err(Errno::ENOTEMPTY);
        }
        let hides = self.lower_child(st, parent, name).is_some();
        self.copy_up(st, parent, false)?;
        let p = self.upper_path(st, parent)?.join(name);
        let in_upper = st.nodes.get(&ino).map(|n| n.upper).unwrap_or(false);
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
        if let Some(n) = st.nodes.get_mut(&ino) {
            n.names.retain(|(pp, nn)| !(*pp == parent && nn == name));
            if n.names.is_empty() && !in_upper {
                n.upper = false;
            }
        }
        Ok(())
    }

    fn do_rename(
        &self,
        st: &mut State,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: RenameFlags,
    ) -> Res<()> {
        self.upper_root()?;
        let exchange = flags.contains(RenameFlags::RENAME_EXCHANGE);
        let noreplace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        if flags.contains(RenameFlags::RENAME_WHITEOUT) {
            return Err(Errno::EINVAL);
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
        // A directory with lower content cannot move (overlayfs without redirect_dir
        // does the same); callers like mv fall back to copying.
        let has_lower_children = |st: &State, ino: u64| {
            st.nodes
                .get(&ino)
                .and_then(|n| n.lower)
                .and_then(|l| self.tree.node(l))
                .map(|l| !l.children.is_empty())
                .unwrap_or(false)
        };
        if src_dir && has_lower_children(st, src) {
            return Err(Errno::EXDEV);
        }
        if let Some((d, dattr)) = dst {
            let dst_dir = dattr.kind == FileType::Directory;
            if exchange {
                if dst_dir && has_lower_children(st, d) {
                    return Err(Errno::EXDEV);
                }
            } else {
                if src_dir && !dst_dir {
                    return Err(Errno::ENOTDIR);
                }
                if !src_dir && dst_dir {
                    return Err(Errno::EISDIR);
                }
                if dst_dir && !self.list(st, d)?.is_empty() {
                    return Err(Errno::ENOTEMPTY);
                }
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
        if let Ok(s) = upper::lstat(&to) {
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
            if let Some(n) = st.nodes.get_mut(&d) {
                n.names
                    .retain(|(p, nn)| !(*p == newparent && nn == newname));
                if exchange {
                    n.names.push((parent, name.to_os_string()));
                }
            }
        }
        if let Some(n) = st.nodes.get_mut(&src) {
            n.names.retain(|(p, nn)| !(*p == parent && nn == name));
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
