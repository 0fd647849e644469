//! The FUSE filesystem: the merged lower tree with a copy-on-write upper directory.
//!
//! Inode numbers: a lower entry's inode is [`LowerTree::ino`] (stable for an image);
//! an entry copied up keeps it (recorded in [`upper::ORIGIN_XATTR`] so it survives a
//! remount); an entry created in the upper directory gets [`UPPER_INO_BASE`] plus its
//! inode number on the upper filesystem (so upper hard links share one inode).
//!
//! Lower reads are served by the [`LowerReader`]; those that miss the cache are
//! answered from the fetcher's threads, and the FUSE thread returns at once.
//! Mutations take one write lock on the node table and are done with path-based
//! system calls on the upper directory.
//!
//! The parts: `ops` decodes kernel requests and replies (the `fuser::Filesystem`
//! impl), `union` holds the merge rules (lookup, listing, create, remove, rename),
//! `nodes` the inode and name table, `handles` open files and their I/O mode,
//! `copy_up` copying lower entries into the upper directory, `attr` attribute
//! conversion and `xattr` extended attributes.

mod attr;
mod copy_up;
mod handles;
mod nodes;
mod ops;
mod recover;
mod union;
mod xattr;

use crate::fetcher::Fetcher;
use crate::materialize::Materializer;
use crate::reader::{LowerReader, ReadConfig};
use crate::stats::Stats;
use crate::tree::{LowerId, LowerTree};
use crate::upper;
use attr::{attr_of_lower, attr_of_stat, LOWER_TTL, UPPER_TTL};
use fuser::{Errno, FileAttr};
use handles::Handles;
use nodes::Nodes;
use parking_lot::RwLock;
use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

/// Inode numbers of entries created in the upper directory start here.
pub const UPPER_INO_BASE: u64 = 1 << 56;

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
    /// Fetches ahead of the dynamic loader (the image's, shared by its mounts).
    pub predictor: Option<Arc<crate::predict::Predictor>>,
    /// Continuing an earlier server of the connection, or preparing for a later one.
    pub restart: crate::handover::RestartConfig,
    /// A read-only mount (no upper, no recorder) answers OPEN and OPENDIR with
    /// ENOSYS, after which the kernel opens files and directories of this connection
    /// without asking (no OPEN, RELEASE, OPENDIR, RELEASEDIR), keeps their pages
    /// and listings cached from one open to the next, and reads with handle 0. For a
    /// view whose content never changes and which container after container opens:
    /// a gcc run opens 114 files, each an OPEN and a RELEASE round trip. It costs FUSE
    /// passthrough: reads go through the server into the kernel's page cache once.
    pub kernel_opens: bool,
}

/// The result of most operations: a value or the errno the kernel gets.
type Res<T> = Result<T, Errno>;

/// An attribute reply: the attributes and how long the kernel may cache them.
type Attr = (FileAttr, Duration);

fn errno(e: io::Error) -> Errno {
    Errno::from(e)
}

fn name_str(name: &OsStr) -> Option<&str> {
    std::str::from_utf8(name.as_bytes()).ok()
}

/// Whether any entry of `layer` has an extended attribute the view shows (Skiff's
/// and overlayfs's own are never shown, see `xattr.rs`). Shadowed and whited-out
/// entries count too: a yes only costs the optimisation it guards.
fn has_visible_xattrs(layer: &skiff_proto::index::LayerIndex) -> bool {
    layer.entries.iter().any(|e| {
        e.xattrs()
            .iter()
            .any(|(k, _)| !crate::upper::is_private_xattr(k.as_bytes()))
    })
}

/// The union filesystem (implements [`fuser::Filesystem`]).
pub struct SkiffFs {
    tree: Arc<LowerTree>,
    fetcher: Arc<Fetcher>,
    stats: Arc<Stats>,
    upper: Option<PathBuf>,
    upper_fd: Option<File>,
    /// The inode table. Lock order: this before `handles` (attributes of an unlinked
    /// file come from its open handle while the table is locked).
    state: RwLock<Nodes>,
    handles: Handles,
    reader: LowerReader,
    materializer: Materializer,
    /// Unique names for copy-up scratch files.
    scratch: AtomicU64,
    /// Whether this server took over a connection from an earlier one (inodes and
    /// handles it does not know are found again, see `recover`).
    resumed: bool,
    /// What INIT negotiated, once known (for a later server).
    negotiated: Arc<std::sync::OnceLock<crate::handover::Negotiated>>,
    /// See [`FsConfig::kernel_opens`].
    kernel_opens: bool,
    /// A shared view ([`FsConfig::kernel_opens`]) of an image none of whose entries
    /// has an extended attribute a reader could see: GETXATTR and LISTXATTR are
    /// answered ENOSYS, so the kernel stops asking (see `getxattr` in `ops.rs`).
    no_xattrs: bool,
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
            upper::clear_work_dir(up)?;
        }
        let upper_fd = match &config.upper {
            Some(up) => Some(File::open(up)?),
            None => None,
        };
        let reader = LowerReader::new(
            tree.clone(),
            fetcher.clone(),
            stats.clone(),
            ReadConfig {
                recorder: config.recorder.clone(),
                readahead: config.readahead,
                whole_file_max: config.whole_file_max,
                predictor: config.predictor.clone(),
            },
        );
        let no_xattrs = config.kernel_opens && !tree.layers.iter().any(|l| has_visible_xattrs(l));
        Ok(SkiffFs {
            state: RwLock::new(Nodes::new(
                tree.clone(),
                Some(crate::tree::ROOT),
                config.upper.is_some(),
            )),
            handles: Handles::new(&config.restart),
            resumed: config.restart.resumed.is_some(),
            negotiated: Arc::new(config.restart.resumed.map(Into::into).unwrap_or_default()),
            materializer: Materializer::new(config.recorder.is_some()),
            reader,
            upper_fd,
            tree,
            fetcher,
            stats,
            upper: config.upper,
            no_xattrs,
            kernel_opens: config.kernel_opens,
            scratch: AtomicU64::new(1),
        })
    }

    /// What INIT negotiated, filled in when it has run (at once for a server that
    /// took over a connection).
    pub fn negotiated(&self) -> Arc<std::sync::OnceLock<crate::handover::Negotiated>> {
        self.negotiated.clone()
    }

    /// The upper root as seen from the calling thread (`.`, see [`upper::enter_root`]);
    /// `EROFS` on a read-only mount.
    fn upper_root(&self) -> Res<&Path> {
        let fd = self.upper_fd.as_ref().ok_or(Errno::EROFS)?;
        upper::enter_root(fd, self as *const SkiffFs as usize).map_err(errno)?;
        Ok(Path::new("."))
    }

    /// The path of `ino` in the upper directory (relative to [`SkiffFs::upper_root`]).
    fn upper_path(&self, st: &Nodes, ino: u64) -> Res<PathBuf> {
        Ok(self.upper_root()?.join(st.path(ino)?))
    }

    fn lower_attr(&self, ino: u64, id: LowerId) -> Res<FileAttr> {
        let n = self.tree.node(id).ok_or(Errno::ENOENT)?;
        Ok(attr_of_lower(ino, &n))
    }

    /// Publishes the node table's size in the stats (a gauge).
    fn count_nodes(&self, st: &Nodes) {
        self.stats
            .nodes
            .store(st.len() as u64, std::sync::atomic::Ordering::Relaxed);
    }

    /// The kernel drops `nlookup` lookups of each (inode, nlookup) of `forgotten`;
    /// nodes it no longer holds leave the table, and the table is swept of nodes only
    /// the filesystem itself looked up once it has grown.
    fn do_forget(&self, forgotten: impl IntoIterator<Item = (u64, u64)>) {
        let mut st = self.state.write();
        for (ino, n) in forgotten {
            st.forget(ino, n);
        }
        st.maybe_sweep();
        self.count_nodes(&st);
    }

    /// The attributes of a known inode: the upper entry's if it has one, else the lower's.
    fn attr(&self, st: &Nodes, ino: u64) -> Res<Attr> {
        let n = st.node(ino)?;
        if n.upper {
            let s = match self
                .upper_path(st, ino)
                .and_then(|p| upper::lstat(&p).map_err(errno))
            {
                Ok(s) => s,
                // Unlinked but still open: the open file still has attributes.
                Err(e) => self.handles.open_file_stat(ino).ok_or(e)?,
            };
            return Ok((attr_of_stat(ino, &s), UPPER_TTL));
        }
        let id = n.lower.ok_or(Errno::ENOENT)?;
        Ok((self.lower_attr(ino, id)?, LOWER_TTL))
    }
}
