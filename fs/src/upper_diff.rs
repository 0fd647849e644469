//! An upper directory as an OCI layer: what `skiff commit` stores on top of the image.
//!
//! The upper holds the container's changes in overlayfs's format (see [`crate::upper`]);
//! the layer says the same in the OCI image spec's terms:
//! - a new or changed entry is itself (type, mode, owner, mtime, xattrs other than
//!   overlayfs's and Skiff's bookkeeping), hard links once and then as links;
//! - a whiteout (character device 0/0 without [`upper::USER_CHARDEV_XATTR`]) becomes an
//!   empty file `.wh.NAME`;
//! - an opaque directory (`trusted.overlay.opaque=y`) is the directory plus an empty
//!   `.wh..wh..opq` inside it.
//!
//! The container owns the upper's content, so every name in it may be a symlink to a
//! host path or change while it is read. The walk therefore goes through directory
//! descriptors only (`openat` with `O_NOFOLLOW`, `fstatat` with
//! `AT_SYMLINK_NOFOLLOW`, `readlinkat`), never follows a symlink, checks that a file
//! opened for its content is the one it listed, reads no more than that file's size,
//! and bounds depth, entry count, link targets and xattr sizes.
//!
//! The layer is written as tar, gzip-compressed, with both digests computed on the way
//! ([`LayerDigests`]): the blob's (for the manifest) and the tar's (the config's
//! `diff_id`).

use skiff_proto::digest::{Digest, Hasher};
use std::collections::HashMap;
use std::ffi::{CStr, CString, OsStr, OsString};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use crate::upper;

/// Deepest directory nesting a layer is made from.
pub const MAX_DEPTH: usize = 1024;
/// Most entries (files, directories, whiteouts…) a layer is made from.
pub const MAX_ENTRIES: usize = 4_000_000;
/// Largest xattr value carried into the layer (the kernel's own limit).
const MAX_XATTR_VALUE: usize = 64 << 10;
/// Name prefix of an OCI whiteout.
pub const WHITEOUT_PREFIX: &str = ".wh.";
/// The OCI opaque-directory marker's name.
pub const OPAQUE_MARKER: &str = ".wh..wh..opq";

/// Why an upper directory could not be turned into a layer.
#[derive(Debug, thiserror::Error)]
pub enum UpperDiffError {
    /// A system call on an upper entry failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The entry, relative to the upper root.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Writing the layer (tar, gzip, output file) failed.
    #[error("writing the layer at {path}: {source}")]
    Write {
        /// The entry being written.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The upper exceeds a bound ([`MAX_DEPTH`], [`MAX_ENTRIES`]).
    #[error("{path}: {what}")]
    TooBig {
        /// Where the bound was reached.
        path: PathBuf,
        /// Which bound.
        what: String,
    },
    /// An entry changed under the walk (a running container wrote it).
    #[error("{path} changed while the layer was written: {what}")]
    Changed {
        /// The entry.
        path: PathBuf,
        /// What differed.
        what: &'static str,
    },
}

/// The digests and size of a written layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerDigests {
    /// sha256 of the compressed blob.
    pub digest: Digest,
    /// Size of the compressed blob in bytes.
    pub size: u64,
    /// sha256 of the uncompressed tar (the config's `diff_id`).
    pub diff_id: Digest,
}

/// What went into a layer, for the user.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DiffCounts {
    /// Files, directories, links and devices written.
    pub entries: u64,
    /// Whiteouts written (`.wh.NAME`).
    pub whiteouts: u64,
    /// Opaque directories (`.wh..wh..opq`).
    pub opaque_dirs: u64,
    /// Sockets left out (a tar cannot hold them).
    pub skipped_sockets: u64,
}

/// Writes the layer of the upper directory `upper_root` to `out` as tar+gzip at
/// `level` (0–9). Returns the digests of what was written and what it holds.
pub fn write_layer<W: Write>(
    upper_root: &Path,
    out: W,
    level: u32,
) -> Result<(LayerDigests, DiffCounts), UpperDiffError> {
    let werr = |source| UpperDiffError::Write {
        path: PathBuf::new(),
        source,
    };
    let blob = HashingWriter::new(out);
    let gz = flate2::write::GzEncoder::new(blob, flate2::Compression::new(level.min(9)));
    let tar = HashingWriter::new(gz);
    let mut walk = Walk {
        builder: tar::Builder::new(tar),
        links: HashMap::new(),
        counts: DiffCounts::default(),
        seen: 0,
    };
    walk.run(upper_root)?;
    let tar = walk.builder.into_inner().map_err(werr)?;
    let (gz, diff_id) = tar.finish();
    let blob = gz.finish().map_err(werr)?;
    let size = blob.written;
    let (mut out, digest) = blob.finish();
    out.flush().map_err(werr)?;
    Ok((
        LayerDigests {
            digest,
            size,
            diff_id,
        },
        walk.counts,
    ))
}

/// A writer that hashes and counts what passes through it.
struct HashingWriter<W> {
    inner: W,
    hasher: Hasher,
    written: u64,
}

impl<W: Write> HashingWriter<W> {
    fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Hasher::new(),
            written: 0,
        }
    }

    fn finish(self) -> (W, Digest) {
        (self.inner, self.hasher.finish())
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// One directory being listed: its descriptor, its path in the layer, its names
/// (sorted, so the same upper gives the same layer) and how far the walk got.
struct Frame {
    dir: OwnedFd,
    path: PathBuf,
    names: Vec<OsString>,
    next: usize,
}

/// The walk's state: the tar being written, the first path of every hard-linked
/// inode, and counters.
struct Walk<W: Write> {
    builder: tar::Builder<W>,
    links: HashMap<(u64, u64), PathBuf>,
    counts: DiffCounts,
    seen: usize,
}

impl<W: Write> Walk<W> {
    /// Writes every entry under `root`, parents before children.
    fn run(&mut self, root: &Path) -> Result<(), UpperDiffError> {
        let c = CString::new(root.as_os_str().as_bytes()).map_err(|_| UpperDiffError::Io {
            what: "opening the upper directory",
            path: root.to_path_buf(),
            source: io::Error::from_raw_os_error(libc::EINVAL),
        })?;
        let dir = open_dir(libc::AT_FDCWD, &c).map_err(|source| UpperDiffError::Io {
            what: "opening the upper directory",
            path: root.to_path_buf(),
            source,
        })?;
        let mut stack = vec![self.frame(dir, PathBuf::new())?];
        while let Some(top) = stack.last_mut() {
            let Some(name) = top.names.get(top.next).cloned() else {
                stack.pop();
                continue;
            };
            top.next += 1;
            // The copy-up scratch space is never part of the view.
            if top.path.as_os_str().is_empty() && name == upper::WORK_DIR {
                continue;
            }
            let rel = top.path.join(&name);
            self.seen += 1;
            if self.seen > MAX_ENTRIES {
                return Err(UpperDiffError::TooBig {
                    path: rel,
                    what: format!("more than {MAX_ENTRIES} entries"),
                });
            }
            let dirfd = top.dir.as_raw_fd();
            if let Some(sub) = self.entry(dirfd, &name, &rel)? {
                if stack.len() >= MAX_DEPTH {
                    return Err(UpperDiffError::TooBig {
                        path: rel,
                        what: format!("directories nested deeper than {MAX_DEPTH}"),
                    });
                }
                let frame = self.frame(sub, rel)?;
                stack.push(frame);
            }
        }
        Ok(())
    }

    /// A frame for the open directory `dir` at `path`.
    fn frame(&self, dir: OwnedFd, path: PathBuf) -> Result<Frame, UpperDiffError> {
        let names = list_dir(&dir).map_err(|source| UpperDiffError::Io {
            what: "listing",
            path: path.clone(),
            source,
        })?;
        Ok(Frame {
            dir,
            path,
            names,
            next: 0,
        })
    }

    /// Writes the entry `name` of directory `dirfd` (layer path `rel`); returns the
    /// directory to descend into if it is one.
    fn entry(
        &mut self,
        dirfd: libc::c_int,
        name: &OsStr,
        rel: &Path,
    ) -> Result<Option<OwnedFd>, UpperDiffError> {
        let io = |what| {
            move |source| UpperDiffError::Io {
                what,
                path: rel.to_path_buf(),
                source,
            }
        };
        let cname = CString::new(name.as_bytes()).map_err(|_| UpperDiffError::Io {
            what: "naming",
            path: rel.to_path_buf(),
            source: io::Error::from_raw_os_error(libc::EINVAL),
        })?;
        let st = match fstatat(dirfd, &cname) {
            Ok(st) => st,
            // Removed by a running container since the listing: nothing to write.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
            Err(e) => return Err(io("stat")(e)),
        };
        let xattrs = read_xattrs(dirfd, &cname).map_err(io("reading xattrs of"))?;
        let private = |n: &[u8]| xattrs.iter().any(|(k, _)| k.as_slice() == n);
        let fmt = st.st_mode & libc::S_IFMT;
        if fmt == libc::S_IFCHR && st.st_rdev == 0 && !private(upper::USER_CHARDEV_XATTR.as_bytes())
        {
            let mut wh = OsString::from(WHITEOUT_PREFIX);
            wh.push(name);
            let path = rel.with_file_name(wh);
            self.append_empty_file(&path, &st)?;
            self.counts.whiteouts += 1;
            return Ok(None);
        }
        let mut header = header_of(&st);
        let user_xattrs: Vec<(String, Vec<u8>)> = xattrs
            .iter()
            .filter(|(k, _)| !upper::is_private_xattr(k))
            .filter_map(|(k, v)| Some((String::from_utf8(k.clone()).ok()?, v.clone())))
            .collect();
        // A second name of a hard-linked inode is a link to the first.
        if fmt != libc::S_IFDIR && st.st_nlink > 1 {
            let key = (st.st_dev, st.st_ino);
            if let Some(first) = self.links.get(&key).cloned() {
                header.set_entry_type(tar::EntryType::Link);
                header.set_size(0);
                self.builder
                    .append_link(&mut header, rel, &first)
                    .map_err(|source| UpperDiffError::Write {
                        path: rel.to_path_buf(),
                        source,
                    })?;
                self.counts.entries += 1;
                return Ok(None);
            }
            self.links.insert(key, rel.to_path_buf());
        }
        self.pax(&user_xattrs, rel)?;
        let werr = |source| UpperDiffError::Write {
            path: rel.to_path_buf(),
            source,
        };
        let mut descend = None;
        match fmt {
            libc::S_IFDIR => {
                let dir = open_dir(dirfd, &cname).map_err(io("opening"))?;
                same_inode(&dir, &st, rel)?;
                self.builder
                    .append_data(&mut header, rel, io::empty())
                    .map_err(werr)?;
                if matches!(xattrs.iter().find(|(k, _)| k.as_slice() == upper::OPAQUE_XATTR.as_bytes()), Some((_, v)) if v == b"y")
                {
                    self.append_empty_file(&rel.join(OPAQUE_MARKER), &st)?;
                    self.counts.opaque_dirs += 1;
                }
                descend = Some(dir);
            }
            libc::S_IFREG => {
                let file = open_file(dirfd, &cname).map_err(io("opening"))?;
                same_inode(&file, &st, rel)?;
                let reader = Exact {
                    inner: std::fs::File::from(file),
                    remaining: u64::try_from(st.st_size).unwrap_or(0),
                };
                self.builder.append_data(&mut header, rel, reader).map_err(
                    |source| match source.kind() {
                        io::ErrorKind::UnexpectedEof => UpperDiffError::Changed {
                            path: rel.to_path_buf(),
                            what: "the file shrank",
                        },
                        _ => UpperDiffError::Write {
                            path: rel.to_path_buf(),
                            source,
                        },
                    },
                )?;
            }
            libc::S_IFLNK => {
                let target = readlinkat(dirfd, &cname).map_err(io("reading the link"))?;
                self.builder
                    .append_link(&mut header, rel, Path::new(&target))
                    .map_err(werr)?;
            }
            libc::S_IFCHR | libc::S_IFBLK | libc::S_IFIFO => {
                self.builder
                    .append_data(&mut header, rel, io::empty())
                    .map_err(werr)?;
            }
            _ => {
                tracing::warn!(path = %rel.display(), "leaving a socket out of the layer");
                self.counts.skipped_sockets += 1;
                return Ok(None);
            }
        }
        self.counts.entries += 1;
        Ok(descend)
    }

    /// A PAX header carrying `xattrs` for the next entry (none if there are none).
    fn pax(&mut self, xattrs: &[(String, Vec<u8>)], rel: &Path) -> Result<(), UpperDiffError> {
        if xattrs.is_empty() {
            return Ok(());
        }
        let keys: Vec<(String, &[u8])> = xattrs
            .iter()
            .map(|(k, v)| (format!("SCHILY.xattr.{k}"), v.as_slice()))
            .collect();
        self.builder
            .append_pax_extensions(keys.iter().map(|(k, v)| (k.as_str(), *v)))
            .map_err(|source| UpperDiffError::Write {
                path: rel.to_path_buf(),
                source,
            })
    }

    /// An empty regular file at `path` (a whiteout or opaque marker), owned by root,
    /// dated like `st`.
    fn append_empty_file(&mut self, path: &Path, st: &libc::stat) -> Result<(), UpperDiffError> {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_size(0);
        h.set_mtime(u64::try_from(st.st_mtime).unwrap_or(0));
        self.builder
            .append_data(&mut h, path, io::empty())
            .map_err(|source| UpperDiffError::Write {
                path: path.to_path_buf(),
                source,
            })
    }
}

/// The tar header of an entry with stat `st` (type, mode, owner, mtime, size, device).
fn header_of(st: &libc::stat) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    let kind = match st.st_mode & libc::S_IFMT {
        libc::S_IFDIR => tar::EntryType::Directory,
        libc::S_IFLNK => tar::EntryType::Symlink,
        libc::S_IFCHR => tar::EntryType::Char,
        libc::S_IFBLK => tar::EntryType::Block,
        libc::S_IFIFO => tar::EntryType::Fifo,
        _ => tar::EntryType::Regular,
    };
    h.set_entry_type(kind);
    h.set_mode(st.st_mode & 0o7777);
    h.set_uid(u64::from(st.st_uid));
    h.set_gid(u64::from(st.st_gid));
    h.set_mtime(u64::try_from(st.st_mtime).unwrap_or(0));
    h.set_size(match kind {
        tar::EntryType::Regular => u64::try_from(st.st_size).unwrap_or(0),
        _ => 0,
    });
    if matches!(kind, tar::EntryType::Char | tar::EntryType::Block) {
        // Setting device numbers only fails on headers without device fields.
        let _ = h.set_device_major(libc::major(st.st_rdev));
        let _ = h.set_device_minor(libc::minor(st.st_rdev));
    }
    h
}

/// Reads exactly `remaining` bytes of a file: no more (a file that grew since its
/// stat is cut there) and no fewer (one that shrank is an `UnexpectedEof`).
struct Exact {
    inner: std::fs::File,
    remaining: u64,
}

impl Read for Exact {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// Checks that `fd` (opened by name after `st` was taken) is the inode `st` describes.
fn same_inode(fd: &OwnedFd, st: &libc::stat, rel: &Path) -> Result<(), UpperDiffError> {
    let now = fstat(fd).map_err(|source| UpperDiffError::Io {
        what: "stat",
        path: rel.to_path_buf(),
        source,
    })?;
    if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino) {
        return Err(UpperDiffError::Changed {
            path: rel.to_path_buf(),
            what: "it was replaced",
        });
    }
    Ok(())
}

fn check(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// `openat(dirfd, name, flags | O_NOFOLLOW | O_CLOEXEC)`.
fn open_at(dirfd: libc::c_int, name: &CStr, flags: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: a valid C string; the descriptor returned is new and ours.
    let fd = check(unsafe {
        libc::openat(
            dirfd,
            name.as_ptr(),
            flags | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: `fd` was just opened and is owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The directory `name` in `dirfd` (never through a symlink).
fn open_dir(dirfd: libc::c_int, name: &CStr) -> io::Result<OwnedFd> {
    open_at(dirfd, name, libc::O_RDONLY | libc::O_DIRECTORY)
}

/// The regular file `name` in `dirfd` for reading (never through a symlink; a FIFO
/// swapped in would not block the open).
fn open_file(dirfd: libc::c_int, name: &CStr) -> io::Result<OwnedFd> {
    open_at(dirfd, name, libc::O_RDONLY | libc::O_NONBLOCK)
}

fn fstatat(dirfd: libc::c_int, name: &CStr) -> io::Result<libc::stat> {
    // SAFETY: all-zero is a valid `stat`.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a valid C string and out-pointer.
    check(unsafe { libc::fstatat(dirfd, name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) })?;
    Ok(st)
}

fn fstat(fd: &OwnedFd) -> io::Result<libc::stat> {
    // SAFETY: all-zero is a valid `stat`.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a valid descriptor and out-pointer.
    check(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) })?;
    Ok(st)
}

/// The target of the symlink `name` in `dirfd` (at most `PATH_MAX` bytes, as the
/// kernel keeps them).
fn readlinkat(dirfd: libc::c_int, name: &CStr) -> io::Result<OsString> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: buffer pointer and length match.
    let n = unsafe { libc::readlinkat(dirfd, name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    if n >= buf.len() {
        return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    buf.truncate(n);
    Ok(OsString::from_vec(buf))
}

/// The names in directory `dir`, sorted, without `.` and `..`.
fn list_dir(dir: &OwnedFd) -> io::Result<Vec<OsString>> {
    // A second descriptor for the stream: `closedir` closes the one it is given.
    // SAFETY: a valid descriptor; `dup` returns a new one we own.
    let fd = check(unsafe { libc::fcntl(dir.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) })?;
    // SAFETY: `fd` is a directory descriptor we own; `fdopendir` takes it over.
    let stream = unsafe { libc::fdopendir(fd) };
    if stream.is_null() {
        let e = io::Error::last_os_error();
        // SAFETY: `fdopendir` failed, so `fd` is still ours to close.
        unsafe { libc::close(fd) };
        return Err(e);
    }
    // SAFETY: a fresh stream; rewind in case the descriptor's offset was moved.
    unsafe { libc::rewinddir(stream) };
    let mut names = Vec::new();
    let result = loop {
        // SAFETY: errno is thread-local; reset it to tell the end from an error.
        unsafe { *libc::__errno_location() = 0 };
        // SAFETY: a valid open stream.
        let ent = unsafe { libc::readdir64(stream) };
        if ent.is_null() {
            let e = io::Error::last_os_error();
            break match e.raw_os_error() {
                Some(0) | None => Ok(()),
                _ => Err(e),
            };
        }
        // SAFETY: `d_name` is a NUL-terminated name inside the entry readdir returned.
        let name = unsafe { CStr::from_ptr((*ent).d_name.as_ptr()) }.to_bytes();
        if name != b"." && name != b".." {
            names.push(OsString::from_vec(name.to_vec()));
        }
    };
    // SAFETY: the stream is open and closed once.
    unsafe { libc::closedir(stream) };
    result?;
    names.sort();
    Ok(names)
}

/// The xattrs (name, value) of entry `name` in `dirfd`, read through
/// `/proc/self/fd/DIRFD/NAME` with the `l*xattr` calls: the directory part resolves
/// to exactly the directory held open and the last component is never followed, so
/// a symlink's own xattrs are read, not its target's.
fn read_xattrs(dirfd: libc::c_int, name: &CStr) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut p = format!("/proc/self/fd/{dirfd}/").into_bytes();
    p.extend_from_slice(name.to_bytes());
    let path = CString::new(p).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let mut names = vec![0u8; 4096];
    let n = loop {
        // SAFETY: buffer pointer and length match.
        let n = unsafe { libc::llistxattr(path.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
        if n >= 0 {
            break n as usize;
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            // The list can hold at most 64 KiB of names.
            Some(libc::ERANGE) if names.len() < (64 << 10) => names.resize(64 << 10, 0),
            Some(libc::ENOTSUP) => return Ok(Vec::new()),
            _ => return Err(e),
        }
    };
    names.truncate(n);
    let mut out = Vec::new();
    let mut value = vec![0u8; MAX_XATTR_VALUE];
    for key in names.split(|&b| b == 0).filter(|k| !k.is_empty()) {
        let ckey = CString::new(key).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: buffer pointer and length match.
        let n = unsafe {
            libc::lgetxattr(
                path.as_ptr(),
                ckey.as_ptr(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            // Removed since the listing.
            if e.raw_os_error() == Some(libc::ENODATA) {
                continue;
            }
            return Err(e);
        }
        out.push((key.to_vec(), value[..n as usize].to_vec()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// (path, type, mode, uid, content, link target) of every entry.
    type Listed = Vec<(String, tar::EntryType, u32, u64, Vec<u8>, Option<String>)>;

    fn read_layer(blob: &[u8]) -> Listed {
        let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(blob));
        let mut out = Vec::new();
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let path = e.path().unwrap().to_string_lossy().into_owned();
            let kind = e.header().entry_type();
            let mode = e.header().mode().unwrap();
            let uid = e.header().uid().unwrap();
            let link = e
                .link_name()
                .unwrap()
                .map(|l| l.to_string_lossy().into_owned());
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            out.push((path, kind, mode, uid, data, link));
        }
        out
    }

    #[test]
    fn whiteouts_opaque_dirs_links_and_files_become_oci_entries() {
        let tmp = tempfile::tempdir().unwrap();
        let up = tmp.path().join("upper");
        std::fs::create_dir_all(up.join(upper::WORK_DIR)).unwrap();
        std::fs::write(up.join(upper::WORK_DIR).join("scratch"), b"x").unwrap();
        std::fs::create_dir(up.join("etc")).unwrap();
        std::fs::write(up.join("etc/new"), b"new content\n").unwrap();
        std::fs::set_permissions(up.join("etc/new"), std::fs::Permissions::from_mode(0o640))
            .unwrap();
        std::fs::hard_link(up.join("etc/new"), up.join("etc/again")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", up.join("etc/link")).unwrap();
        std::fs::create_dir(up.join("data")).unwrap();
        std::fs::write(up.join("data/only"), b"only\n").unwrap();
        upper::set_xattr(&up.join("data/only"), b"user.note", b"kept", 0).unwrap();
        let root = unsafe { libc::geteuid() } == 0;
        if root {
            upper::make_whiteout(&up.join("etc/gone")).unwrap();
            upper::set_opaque(&up.join("data")).unwrap();
            upper::set_xattr(
                &up.join("data/only"),
                upper::ORIGIN_XATTR.as_bytes(),
                b"7",
                0,
            )
            .unwrap();
        }
        let mut blob = Vec::new();
        let (digests, counts) = write_layer(&up, &mut blob, 6).unwrap();
        assert_eq!(digests.digest, Digest::of(&blob));
        assert_eq!(digests.size, blob.len() as u64);
        let mut tar = Vec::new();
        flate2::read::GzDecoder::new(&blob[..])
            .read_to_end(&mut tar)
            .unwrap();
        assert_eq!(digests.diff_id, Digest::of(&tar));

        let listed = read_layer(&blob);
        let paths: Vec<&str> = listed.iter().map(|e| e.0.as_str()).collect();
        let mut want = vec![
            "data",
            "data/only",
            "etc",
            "etc/again",
            "etc/link",
            "etc/new",
        ];
        if root {
            want.insert(1, "data/.wh..wh..opq");
            want.insert(5, "etc/.wh.gone");
        }
        assert_eq!(paths, want, "{listed:?}");
        let get = |p: &str| listed.iter().find(|e| e.0 == p).unwrap();
        // Sorted: "again" is met first and carries the content; "new" links to it.
        assert_eq!(get("etc/again").1, tar::EntryType::Regular);
        assert_eq!(get("etc/again").2, 0o640);
        assert_eq!(get("etc/again").4, b"new content\n");
        assert_eq!(get("etc/new").1, tar::EntryType::Link);
        assert_eq!(get("etc/new").5.as_deref(), Some("etc/again"));
        assert_eq!(get("etc/link").1, tar::EntryType::Symlink);
        assert_eq!(get("etc/link").5.as_deref(), Some("/etc/passwd"));
        // Users' xattrs travel as PAX records, skiff's own bookkeeping does not.
        let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(&blob[..]));
        let mut xattrs = Vec::new();
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            if let Some(pax) = e.pax_extensions().unwrap() {
                for x in pax {
                    let x = x.unwrap();
                    xattrs.push((x.key().unwrap().to_string(), x.value_bytes().to_vec()));
                }
            }
        }
        assert_eq!(
            xattrs,
            [("SCHILY.xattr.user.note".to_string(), b"kept".to_vec())]
        );
        if root {
            assert_eq!(counts.whiteouts, 1);
            assert_eq!(counts.opaque_dirs, 1);
            assert_eq!(get("etc/.wh.gone").4, b"");
        }
    }

    #[test]
    fn a_symlinked_upper_subdirectory_is_not_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("secret"), b"host secret").unwrap();
        let up = tmp.path().join("upper");
        std::fs::create_dir(&up).unwrap();
        std::os::unix::fs::symlink(&outside, up.join("dir")).unwrap();
        let mut blob = Vec::new();
        write_layer(&up, &mut blob, 1).unwrap();
        let listed = read_layer(&blob);
        assert_eq!(listed.len(), 1, "{listed:?}");
        assert_eq!(listed[0].1, tar::EntryType::Symlink);
        assert!(!listed.iter().any(|e| e.4 == b"host secret"));
    }
}
