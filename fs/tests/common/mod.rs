//! Shared helpers of the skiff-fs integration tests: building tar layers, OCI image
//! layouts for `umoci`, blob readers that count and fail, mounts that clean up.

#![allow(dead_code)]

use skiff_fs::{Layer, MountHandle, MountOptions};
use skiff_proto::blob::{BlobError, BlobReader, FileBlob};
use skiff_proto::index::tar::index_tar;
use skiff_proto::Digest;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

// Extended attributes read with libc, not with skiff_fs::upper (the code under test).
#[path = "../../../tests/src/walk.rs"]
mod walk;
#[path = "../../../tests/src/xattrs.rs"]
mod xattrs;
pub use walk::walk;
pub use xattrs::xattrs_of;

/// One entry of a test layer.
pub enum Item<'a> {
    Dir(&'a str, u32),
    File(&'a str, u32, &'a [u8]),
    /// path, mode, uid, gid, content, xattrs
    FileFull(&'a str, u32, u64, u64, &'a [u8], Vec<(&'a str, &'a [u8])>),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
    Char(&'a str, u32, u32, u32),
    Block(&'a str, u32, u32, u32),
    Fifo(&'a str, u32),
    Whiteout(&'a str),
}

const MTIME: u64 = 1_700_000_000;

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(MTIME);
    h.set_uid(0);
    h.set_gid(0);
    h
}

/// Pseudo-random bytes without repeats (xorshift), so no two chunks share a digest
/// (and are not stored and fetched once for both, as the content-addressed cache would).
pub fn content(seed: u32, len: usize) -> Vec<u8> {
    let mut x = (u64::from(seed) + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Builds an uncompressed tar layer.
pub fn build_layer(items: &[Item]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for it in items {
        match it {
            Item::Dir(p, mode) => {
                let mut h = header(tar::EntryType::Directory, *mode, 0);
                b.append_data(&mut h, format!("{p}/"), &[][..]).unwrap();
            }
            Item::File(p, mode, data) => {
                let mut h = header(tar::EntryType::Regular, *mode, data.len() as u64);
                b.append_data(&mut h, p, *data).unwrap();
            }
            Item::FileFull(p, mode, uid, gid, data, xattrs) => {
                if !xattrs.is_empty() {
                    let pax: Vec<(String, &[u8])> = xattrs
                        .iter()
                        .map(|(k, v)| (format!("SCHILY.xattr.{k}"), *v))
                        .collect();
                    b.append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), *v)))
                        .unwrap();
                }
                let mut h = header(tar::EntryType::Regular, *mode, data.len() as u64);
                h.set_uid(*uid);
                h.set_gid(*gid);
                b.append_data(&mut h, p, *data).unwrap();
            }
            Item::Symlink(p, target) => {
                let mut h = header(tar::EntryType::Symlink, 0o777, 0);
                b.append_link(&mut h, p, target).unwrap();
            }
            Item::Hardlink(p, target) => {
                let mut h = header(tar::EntryType::Link, 0o644, 0);
                b.append_link(&mut h, p, target).unwrap();
            }
            Item::Char(p, mode, maj, min) | Item::Block(p, mode, maj, min) => {
                let t = if matches!(it, Item::Char(..)) {
                    tar::EntryType::Char
                } else {
                    tar::EntryType::Block
                };
                let mut h = header(t, *mode, 0);
                h.set_device_major(*maj).unwrap();
                h.set_device_minor(*min).unwrap();
                b.append_data(&mut h, p, &[][..]).unwrap();
            }
            Item::Fifo(p, mode) => {
                let mut h = header(tar::EntryType::Fifo, *mode, 0);
                b.append_data(&mut h, p, &[][..]).unwrap();
            }
            Item::Whiteout(p) => {
                let (dir, name) = p.rsplit_once('/').unwrap_or(("", p));
                let wh = if dir.is_empty() {
                    format!(".wh.{name}")
                } else {
                    format!("{dir}/.wh.{name}")
                };
                let mut h = header(tar::EntryType::Regular, 0o644, 0);
                b.append_data(&mut h, wh, &[][..]).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

/// Marks a directory opaque in a layer (`DIR/.wh..wh..opq`).
pub fn opaque(dir: &str) -> String {
    format!("{dir}/.wh..wh..opq")
}

/// A blob reader wrapper that counts reads and can be switched to fail.
pub struct CountingBlob {
    pub inner: FileBlob,
    pub reads: AtomicU64,
    pub bytes: AtomicU64,
    pub fail: AtomicBool,
}

impl BlobReader for CountingBlob {
    fn digest(&self) -> Digest {
        self.inner.digest()
    }
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_at(&self, offset: u64, len: u64) -> Result<Vec<u8>, BlobError> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(BlobError::Remote {
                digest: self.inner.digest(),
                offset,
                len,
                message: "registry is down (test)".into(),
            });
        }
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.bytes.fetch_add(len, Ordering::SeqCst);
        self.inner.read_at(offset, len)
    }
}

impl CountingBlob {
    /// The blob's size.
    pub fn size_hint(&self) -> u64 {
        self.inner.size()
    }
}

/// Layers written to a directory, indexed, with counting readers.
pub struct Image {
    pub dir: PathBuf,
    pub blobs: Vec<(Digest, PathBuf)>,
    pub readers: Vec<Arc<CountingBlob>>,
    pub layers: Vec<Layer>,
}

/// Writes `tars` as blobs into `dir/blobs/sha256/` and indexes them.
pub fn image(dir: &Path, tars: &[Vec<u8>]) -> Image {
    let bdir = dir.join("blobs/sha256");
    std::fs::create_dir_all(&bdir).unwrap();
    let mut blobs = Vec::new();
    let mut readers = Vec::new();
    let mut layers = Vec::new();
    for t in tars {
        let d = Digest::of(t);
        let p = bdir.join(d.hex());
        std::fs::write(&p, t).unwrap();
        let r = Arc::new(CountingBlob {
            inner: FileBlob::open(d, &p).unwrap(),
            reads: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            fail: AtomicBool::new(false),
        });
        let index = Arc::new(index_tar(&r.inner).unwrap());
        layers.push(Layer {
            index,
            blob: r.clone(),
        });
        readers.push(r);
        blobs.push((d, p));
    }
    Image {
        dir: dir.to_path_buf(),
        blobs,
        readers,
        layers,
    }
}

fn put_blob(dir: &Path, data: &[u8]) -> (Digest, u64) {
    let d = Digest::of(data);
    std::fs::write(dir.join("blobs/sha256").join(d.hex()), data).unwrap();
    (d, data.len() as u64)
}

/// Makes `img.dir` an OCI image layout with tag `tag` (for umoci).
pub fn write_oci_layout(img: &Image, tag: &str) {
    let dir = &img.dir;
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let diff_ids: Vec<String> = img.blobs.iter().map(|(d, _)| d.to_string()).collect();
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    let (cd, cs) = put_blob(dir, config.to_string().as_bytes());
    let layers: Vec<_> = img
        .blobs
        .iter()
        .map(|(d, p)| {
            serde_json::json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": d.to_string(),
                "size": std::fs::metadata(p).unwrap().len(),
            })
        })
        .collect();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": cd.to_string(), "size": cs},
        "layers": layers,
    });
    let (md, ms) = put_blob(dir, manifest.to_string().as_bytes());
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": md.to_string(), "size": ms,
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }],
    });
    std::fs::write(dir.join("index.json"), index.to_string()).unwrap();
}

/// Mount options for `img` with a cache in `cache`.
pub fn options(img: &Image, cache: &Path, upper: Option<PathBuf>) -> MountOptions {
    let mut o = MountOptions::new(img.layers.clone(), cache.to_path_buf());
    o.upper = upper;
    o
}

/// A mount that is torn down when dropped, even when the test fails.
pub struct Mounted {
    pub handle: Option<MountHandle>,
    pub dir: PathBuf,
}

impl Mounted {
    pub fn new(opts: MountOptions, dir: &Path) -> Mounted {
        std::fs::create_dir_all(dir).unwrap();
        let handle = skiff_fs::mount(opts, dir).expect("mount");
        Mounted {
            handle: Some(handle),
            dir: dir.to_path_buf(),
        }
    }

    pub fn stats(&self) -> skiff_fs::StatsSnapshot {
        self.handle.as_ref().unwrap().stats()
    }

    /// Waits (bounded: 60 s) until the mount's fetcher has no queued or running job,
    /// so that counters read afterwards are final.
    pub fn wait_fetches_idle(&self) {
        assert!(
            self.handle
                .as_ref()
                .unwrap()
                .wait_fetches_idle(std::time::Duration::from_secs(60)),
            "fetches still running after 60 s"
        );
    }

    pub fn unmount(mut self) -> skiff_fs::StatsSnapshot {
        self.handle.take().unwrap().unmount().expect("unmount")
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            if h.unmount().is_err() {
                let _ = Command::new("fusermount3")
                    .arg("-uz")
                    .arg(&self.dir)
                    .status();
            }
        }
    }
}

/// Everything `stat` and `getfattr` say about one path, for comparisons.
#[derive(Debug, PartialEq)]
pub struct Meta {
    pub kind: String,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: Option<u64>,
    pub mtime: (i64, i64),
    pub nlink: u64,
    pub rdev: u64,
    pub xattrs: Vec<(String, Vec<u8>)>,
    pub link: Option<PathBuf>,
    pub content: Option<Vec<u8>>,
}

pub fn meta(p: &Path) -> Meta {
    let md = std::fs::symlink_metadata(p).unwrap();
    let ft = md.file_type();
    use std::os::unix::fs::FileTypeExt;
    let kind = if ft.is_dir() {
        "dir"
    } else if ft.is_symlink() {
        "symlink"
    } else if ft.is_file() {
        "file"
    } else if ft.is_char_device() {
        "char"
    } else if ft.is_block_device() {
        "block"
    } else if ft.is_fifo() {
        "fifo"
    } else {
        "other"
    };
    Meta {
        kind: kind.into(),
        mode: md.mode(),
        uid: md.uid(),
        gid: md.gid(),
        size: (!ft.is_dir()).then_some(md.size()),
        mtime: (md.mtime(), md.mtime_nsec()),
        nlink: md.nlink(),
        rdev: md.rdev(),
        xattrs: xattrs_of(p),
        link: ft.is_symlink().then(|| std::fs::read_link(p).unwrap()),
        content: ft.is_file().then(|| std::fs::read(p).unwrap()),
    }
}

/// Compares two trees path by path; returns the differences.
pub fn compare_trees(a: &Path, b: &Path) -> Vec<String> {
    let wa = walk(a);
    let wb = walk(b);
    let mut diffs = Vec::new();
    if wa != wb {
        diffs.push(format!("path sets differ:\n  {wa:?}\n  {wb:?}"));
        return diffs;
    }
    for rel in std::iter::once(PathBuf::new()).chain(wa) {
        let ma = meta(&a.join(&rel));
        let mb = meta(&b.join(&rel));
        if ma != mb {
            diffs.push(format!("{}:\n  {ma:?}\n  {mb:?}", rel.display()));
        }
    }
    diffs
}

pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A blob whose reads wait until the gate opens, recording each read's offset: lets a
/// test hold a fetch in flight while it checks what else the mount does meanwhile.
pub struct GatedBlob {
    /// The blob read once the gate is open.
    pub inner: Arc<CountingBlob>,
    open: parking_lot::Mutex<bool>,
    /// Offsets of the reads asked for so far, gate open or not.
    pub seen: parking_lot::Mutex<Vec<u64>>,
    changed: parking_lot::Condvar,
}

impl GatedBlob {
    /// A closed gate in front of `inner`.
    pub fn new(inner: Arc<CountingBlob>) -> Arc<GatedBlob> {
        Arc::new(GatedBlob {
            inner,
            open: parking_lot::Mutex::new(false),
            seen: parking_lot::Mutex::new(Vec::new()),
            changed: parking_lot::Condvar::new(),
        })
    }

    /// Waits until `n` reads have been asked for.
    pub fn wait_seen(&self, n: usize) {
        let mut s = self.seen.lock();
        while s.len() < n {
            self.changed.wait(&mut s);
        }
    }

    /// Opens the gate: waiting and later reads go through.
    pub fn release(&self) {
        *self.open.lock() = true;
        self.changed.notify_all();
    }
}

impl BlobReader for GatedBlob {
    fn digest(&self) -> Digest {
        self.inner.digest()
    }
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_at(&self, offset: u64, len: u64) -> Result<Vec<u8>, BlobError> {
        self.seen.lock().push(offset);
        self.changed.notify_all();
        let mut open = self.open.lock();
        while !*open {
            self.changed.wait(&mut open);
        }
        drop(open);
        self.inner.read_at(offset, len)
    }
}

/// Opens the gate when dropped, so a failing assertion cannot leave fetch workers or
/// FUSE threads blocked (and the unmount hanging).
pub struct ReleaseOnDrop(pub Arc<GatedBlob>);

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        self.0.release();
    }
}
