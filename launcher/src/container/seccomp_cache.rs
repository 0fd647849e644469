//! Compiled seccomp filters kept on disk, so a container start does not run libseccomp.
//!
//! Compiling docker's default profile with libseccomp takes tens of milliseconds of
//! CPU on every `skiff run` (issue 10: a warm start must cost what `runc run` costs),
//! and the result depends only on what goes into it: the [`Selection`] (the profile's
//! rules as chosen for this host's architecture and kernel and the container's
//! capabilities), the libseccomp version, and skiff's compiler ([`Selection::compile`],
//! in `seccomp.rs`, whose source text is part of the key). So the program is compiled
//! once per key and read back afterwards.
//!
//! A file is trusted only if it is whole and is the one its name says: it carries its
//! key, the instruction count, and a SHA-256 of everything before it, and it must be a
//! regular file owned by skiff's user that no one else may write. Anything else (torn,
//! truncated, edited, another key's) is ignored, compiled afresh and replaced. Files
//! are written to a temporary name and renamed, so a reader never sees half of one.

use super::seccomp::{Filter, SeccompError, Selection, MAX_INSTRUCTIONS};
use skiff_proto::digest::{Digest, Hasher};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The first bytes of a cache file.
const MAGIC: &[u8; 8] = b"SKIFFBPF";
/// The file layout's version (part of the key too).
const FORMAT: u32 = 1;
/// Bytes before the program: magic, format, flags, count, key.
const HEADER: usize = 8 + 4 + 8 + 4 + 32;
/// Bytes of the trailing checksum.
const CHECKSUM: usize = 32;
/// Bytes of one instruction: code (u16), jt, jf (u8), k (u32), little-endian.
const INSTRUCTION: usize = 8;
/// The compiler's source: a change to how a selection becomes a program invalidates
/// every cached one.
const COMPILER_SOURCE: &str = include_str!("seccomp.rs");

/// A directory of compiled filters.
#[derive(Debug, Clone)]
pub struct FilterCache {
    dir: PathBuf,
}

/// How [`FilterCache::filter`] got its program (for logs and tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Read from a valid cache file.
    Cached,
    /// Compiled with libseccomp (and stored, if that worked).
    Compiled,
}

impl FilterCache {
    /// The cache in `dir` (created, 0700, on the first store).
    pub fn new(dir: impl Into<PathBuf>) -> FilterCache {
        FilterCache { dir: dir.into() }
    }

    /// The filter for `selection`: the cached program when a valid one is stored,
    /// else a freshly compiled one, which is then stored. A cache that cannot be read
    /// or written only costs the compile.
    pub fn filter(&self, selection: &Selection) -> Result<(Filter, Source), SeccompError> {
        let key = key(selection);
        let path = self.path(&key);
        if let Some(filter) = load(&path, &key) {
            tracing::debug!(path = %path.display(), "seccomp filter from the cache");
            return Ok((filter, Source::Cached));
        }
        let filter = selection.compile()?;
        match self.store(&path, &key, &filter) {
            Ok(()) => tracing::debug!(path = %path.display(), "seccomp filter compiled and cached"),
            Err(e) => {
                tracing::debug!(path = %path.display(), "caching the seccomp filter failed: {e}")
            }
        }
        Ok((filter, Source::Compiled))
    }

    /// Where the program of `key` is stored.
    pub fn path(&self, key: &Digest) -> PathBuf {
        self.dir.join(format!("{}.bpf", key.hex()))
    }

    fn store(&self, path: &Path, key: &Digest, filter: &Filter) -> std::io::Result<()> {
        match std::fs::DirBuilder::new().mode(0o700).create(&self.dir) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
        let tmp = self
            .dir
            .join(format!(".{}.{}.tmp", key.hex(), std::process::id()));
        let result =
            write_new(&tmp, &encode(key, filter)).and_then(|()| std::fs::rename(&tmp, path));
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }
}

/// Writes `bytes` to a new file at `path`, readable by its owner only.
fn write_new(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?
        .write_all(bytes)
}

/// The cache key of `selection`: everything the compiled program depends on.
pub fn key(selection: &Selection) -> Digest {
    let version = libseccomp::ScmpVersion::current()
        .map(|v| format!("{}.{}.{}", v.major, v.minor, v.micro))
        .unwrap_or_default();
    let mut h = Hasher::new();
    for part in [
        format!("skiff seccomp cache {FORMAT}\n"),
        format!("libseccomp {version}\n"),
        format!("{selection:?}\n"),
    ] {
        h.update(part.as_bytes());
    }
    h.update(COMPILER_SOURCE.as_bytes());
    h.finish()
}

/// The file's bytes: header, program, checksum.
fn encode(key: &Digest, filter: &Filter) -> Vec<u8> {
    let program = filter.program();
    let mut out = Vec::with_capacity(HEADER + program.len() * INSTRUCTION + CHECKSUM);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT.to_le_bytes());
    // c_ulong is u32 on 32-bit targets.
    #[allow(clippy::unnecessary_cast)]
    out.extend_from_slice(&(filter.flags() as u64).to_le_bytes());
    out.extend_from_slice(&(program.len() as u32).to_le_bytes());
    out.extend_from_slice(key.as_bytes());
    for i in program {
        out.extend_from_slice(&i.code.to_le_bytes());
        out.extend_from_slice(&[i.jt, i.jf]);
        out.extend_from_slice(&i.k.to_le_bytes());
    }
    let sum = Digest::of(&out);
    out.extend_from_slice(sum.as_bytes());
    out
}

/// The filter in `bytes` if they are a whole, unchanged file for `key`.
fn decode(bytes: &[u8], key: &Digest) -> Option<Filter> {
    let body_len = bytes.len().checked_sub(CHECKSUM)?;
    let (body, sum) = bytes.split_at(body_len);
    if body.len() < HEADER || Digest::of(body).as_bytes() != sum {
        return None;
    }
    let u32_at = |at: usize| u32::from_le_bytes(body[at..at + 4].try_into().expect("4 bytes"));
    let flags = u64::from_le_bytes(body[12..20].try_into().expect("8 bytes"));
    let count = u32_at(20) as usize;
    if &body[..8] != MAGIC
        || u32_at(8) != FORMAT
        || &body[24..HEADER] != key.as_bytes()
        || count == 0
        || count > MAX_INSTRUCTIONS
        || body.len() != HEADER + count * INSTRUCTION
    {
        return None;
    }
    let program = body[HEADER..]
        .chunks_exact(INSTRUCTION)
        .map(|i| libc::sock_filter {
            code: u16::from_le_bytes([i[0], i[1]]),
            jt: i[2],
            jf: i[3],
            k: u32::from_le_bytes([i[4], i[5], i[6], i[7]]),
        })
        .collect();
    // Flags the kernel does not know make the seccomp(2) call fail: nothing to trust.
    Some(Filter::from_parts(program, flags as libc::c_ulong))
}

/// Reads and checks the file at `path`; `None` if it is missing or not to be trusted.
fn load(path: &Path, key: &Digest) -> Option<Filter> {
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .ok()?;
    let meta = file.metadata().ok()?;
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    let max = (HEADER + MAX_INSTRUCTIONS * INSTRUCTION + CHECKSUM) as u64;
    if !meta.is_file() || meta.uid() != euid || meta.mode() & 0o022 != 0 || meta.len() > max {
        tracing::debug!(path = %path.display(), "ignoring a seccomp cache file skiff did not write");
        return None;
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // Bounded by the read, not only by the size seen before it (the file may grow).
    (&mut file).take(max + 1).read_to_end(&mut bytes).ok()?;
    let filter = decode(&bytes, key);
    if filter.is_none() {
        tracing::debug!(path = %path.display(), "ignoring a damaged seccomp cache file");
    }
    filter
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::seccomp::{Host, Profile};
    use crate::container::sys::docker_default_capabilities;

    fn default_selection() -> Selection {
        Profile::docker_default()
            .select(&Host::current(), &docker_default_capabilities())
            .unwrap()
            .unwrap()
    }

    #[test]
    fn a_cached_filter_is_the_program_libseccomp_compiles() {
        let dir = tempfile::tempdir().unwrap();
        let cache = FilterCache::new(dir.path().join("seccomp"));
        let selection = default_selection();
        let fresh = selection.compile().unwrap();
        let (first, how) = cache.filter(&selection).unwrap();
        assert_eq!(how, Source::Compiled);
        let (second, how) = cache.filter(&selection).unwrap();
        assert_eq!(how, Source::Cached);
        assert_eq!(first, fresh);
        assert_eq!(second, fresh);
        let mode = std::fs::metadata(dir.path().join("seccomp"))
            .unwrap()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn a_damaged_cache_file_is_ignored_and_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let cache = FilterCache::new(dir.path());
        let selection = default_selection();
        let fresh = selection.compile().unwrap();
        let path = cache.path(&key(&selection));
        cache.filter(&selection).unwrap();
        let good = std::fs::read(&path).unwrap();
        let mut flipped = good.clone();
        flipped[HEADER + 5] ^= 1;
        let damaged: [(&str, Vec<u8>); 4] = [
            ("one bit flipped in the program", flipped),
            ("truncated", good[..good.len() - 9].to_vec()),
            ("empty", Vec::new()),
            ("garbage", b"not a filter".to_vec()),
        ];
        for (what, bytes) in damaged {
            std::fs::write(&path, &bytes).unwrap();
            let (filter, how) = cache.filter(&selection).unwrap();
            assert_eq!(how, Source::Compiled, "{what}");
            assert_eq!(filter, fresh, "{what}");
            assert_eq!(std::fs::read(&path).unwrap(), good, "{what}: replaced");
        }
    }

    #[test]
    fn another_selections_file_is_not_taken() {
        let dir = tempfile::tempdir().unwrap();
        let cache = FilterCache::new(dir.path());
        let default = default_selection();
        let mut caps = docker_default_capabilities();
        caps.insert(caps::Capability::CAP_SYS_ADMIN);
        let admin = Profile::docker_default()
            .select(&Host::current(), &caps)
            .unwrap()
            .unwrap();
        assert_ne!(key(&default), key(&admin));
        // A valid file of one key, put under the other's name, is refused: it names
        // its own key inside.
        cache.filter(&admin).unwrap();
        std::fs::copy(cache.path(&key(&admin)), cache.path(&key(&default))).unwrap();
        let (filter, how) = cache.filter(&default).unwrap();
        assert_eq!(how, Source::Compiled);
        assert_eq!(filter, default.compile().unwrap());
    }

    #[test]
    fn a_file_others_may_write_is_not_trusted() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let cache = FilterCache::new(dir.path());
        let selection = default_selection();
        cache.filter(&selection).unwrap();
        let path = cache.path(&key(&selection));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert_eq!(cache.filter(&selection).unwrap().1, Source::Compiled);
        assert_eq!(cache.filter(&selection).unwrap().1, Source::Cached);
    }
}
