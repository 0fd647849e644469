//! Interop: layer indexes of images made by tools that are not Skiff (umoci for plain
//! tar+gzip, skopeo for zstd:chunked, stargz-snapshotter's `ctr-remote` for eStargz),
//! plus Skiff's own eStargz converter. For each, every regular file read through the
//! index with `read_at` ranges only must be byte-identical to the file `umoci unpack`
//! produced from the plain image, and the metadata must match.
//!
//! Needs root, `umoci` and `skopeo`; the eStargz peer test also needs `containerd`,
//! `ctr` and `ctr-remote`. A test whose tools are missing prints why and passes
//! without checking (so the suite runs anywhere), unless `SKIFF_TEST_REQUIRE_TOOLS=1`
//! (set by `scripts/test.sh`): then it fails and names the missing tool.

use oci_spec::image::{Descriptor, ImageIndex, ImageManifest, MediaType};
use skiff_proto::index::convert::{convert_to_estargz, EstargzOptions};
use skiff_proto::index::{
    decode_chunk, open_index, open_index_with, EntryKind, IndexOptions, LayerFormat, LayerIndex,
};
use skiff_proto::{BlobError, BlobReader, Digest, FileBlob};
use std::collections::{BTreeMap, HashMap};
use std::ffi::CString;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn is_root() -> bool {
    // SAFETY: getuid has no preconditions.
    unsafe { libc::getuid() == 0 }
}

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A blob reader that only allows `read_at` and counts the bytes it returns.
struct RangeOnly {
    inner: FileBlob,
    fetched: AtomicU64,
    reads: AtomicU64,
}

impl RangeOnly {
    fn open(digest: Digest, path: &Path) -> RangeOnly {
        RangeOnly {
            inner: FileBlob::open(digest, path).unwrap(),
            fetched: AtomicU64::new(0),
            reads: AtomicU64::new(0),
        }
    }
}

impl BlobReader for RangeOnly {
    fn digest(&self) -> Digest {
        self.inner.digest()
    }
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_at(&self, offset: u64, len: u64) -> Result<Vec<u8>, BlobError> {
        self.fetched.fetch_add(len, Ordering::Relaxed);
        self.reads.fetch_add(1, Ordering::Relaxed);
        self.inner.read_at(offset, len)
    }
}

fn blob_path(layout: &Path, d: &str) -> PathBuf {
    layout
        .join("blobs/sha256")
        .join(d.strip_prefix("sha256:").unwrap())
}

/// The manifest of the image tagged `tag` in an OCI layout.
fn manifest(layout: &Path, tag: &str) -> ImageManifest {
    let index = ImageIndex::from_file(layout.join("index.json")).unwrap();
    let m = index
        .manifests()
        .iter()
        .find(|m| {
            m.annotations()
                .as_ref()
                .and_then(|a| a.get("org.opencontainers.image.ref.name"))
                .is_some_and(|n| n == tag)
        })
        .unwrap_or_else(|| panic!("no tag {tag} in {}", layout.display()));
    ImageManifest::from_file(blob_path(layout, m.digest().as_ref())).unwrap()
}

/// Builds the source image (one layer, made by umoci) and its reference rootfs.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn layout(&self) -> PathBuf {
        self.dir.path().join("img")
    }
    fn rootfs(&self) -> PathBuf {
        self.dir.path().join("ref/rootfs")
    }

    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("img");
        let bundle = dir.path().join("build");
        run(Command::new("umoci").args(["init", "--layout"]).arg(&img));
        run(Command::new("umoci")
            .args(["new", "--image"])
            .arg(format!("{}:base", img.display())));
        run(Command::new("umoci")
            .args(["unpack", "--image"])
            .arg(format!("{}:base", img.display()))
            .arg(&bundle));
        populate(&bundle.join("rootfs"));
        run(Command::new("umoci")
            .args(["repack", "--image"])
            .arg(format!("{}:base", img.display()))
            .arg(&bundle));
        run(Command::new("umoci")
            .args(["unpack", "--image"])
            .arg(format!("{}:base", img.display()))
            .arg(dir.path().join("ref")));
        Fixture { dir }
    }
}

/// Deterministic pseudo-random bytes, half compressible.
fn data(seed: u64, len: usize) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    (0..len)
        .map(|i| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            if (i / 8192) % 2 == 0 {
                s as u8
            } else {
                (i % 97) as u8
            }
        })
        .collect()
}

fn chown(p: &Path, uid: u32, gid: u32) {
    let c = CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: valid C string.
    assert_eq!(unsafe { libc::lchown(c.as_ptr(), uid, gid) }, 0);
}

fn setxattr(p: &Path, name: &str, value: &[u8]) {
    let c = CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    // SAFETY: valid C strings and buffer.
    let rc = unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(rc, 0, "setxattr {name} on {}", p.display());
}

fn user_xattrs(p: &Path) -> BTreeMap<String, Vec<u8>> {
    let c = CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let mut names = vec![0u8; 4096];
    // SAFETY: valid buffers.
    let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    let mut out = BTreeMap::new();
    if n <= 0 {
        return out;
    }
    for name in names[..n as usize]
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
    {
        let name_s = String::from_utf8_lossy(name).into_owned();
        if !name_s.starts_with("user.") {
            continue;
        }
        let cn = CString::new(name).unwrap();
        let mut val = vec![0u8; 4096];
        // SAFETY: valid buffers.
        let m =
            unsafe { libc::lgetxattr(c.as_ptr(), cn.as_ptr(), val.as_mut_ptr().cast(), val.len()) };
        assert!(m >= 0);
        val.truncate(m as usize);
        out.insert(name_s, val);
    }
    out
}

fn populate(root: &Path) {
    let w = |rel: &str, bytes: &[u8], mode: u32| {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, bytes).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
        p
    };
    let small = w("etc/small", b"hi\n", 0o640);
    chown(&small, 1000, 50);
    setxattr(&small, "user.skiff", b"value\x00with nul");
    w(
        "etc/seq",
        &(1..200_000)
            .map(|i| format!("{i}\n"))
            .collect::<String>()
            .into_bytes(),
        0o644,
    );
    fs::hard_link(root.join("etc/seq"), root.join("etc/hl")).unwrap();
    w("usr/bin/rand", &data(1, 300_000), 0o755);
    std::os::unix::fs::symlink("../../etc/seq", root.join("usr/bin/sl")).unwrap();
    w("usr/bin/suid", b"#!/bin/sh\n", 0o4755);
    w("usr/lib/big", &data(2, 9 << 20), 0o644);
    for i in 0..300 {
        w(
            &format!("data/d{}/f{i}", i % 7),
            &data(100 + i, 1000 + (i as usize * 97) % 20_000),
            0o644,
        );
    }
    w("data/middle-small", b"the file in the middle\n", 0o600);
    for i in 300..600 {
        w(
            &format!("data/e{}/f{i}", i % 5),
            &data(100 + i, 1000 + (i as usize * 89) % 30_000),
            0o644,
        );
    }
    w("empty", b"", 0o644);
    // A long run of zeros: zstd:chunked stores it as a `chunkType: "zeros"` chunk.
    w(
        "data/holes",
        &[vec![1u8; 1000], vec![0u8; 3 << 20], vec![2u8; 1000]].concat(),
        0o644,
    );
    let long = format!("deep/{}/{}", "d".repeat(80), "long-name-".repeat(12));
    w(&long, b"long name\n", 0o644);
    let private = root.join("private");
    fs::create_dir(&private).unwrap();
    fs::set_permissions(&private, fs::Permissions::from_mode(0o700)).unwrap();
    chown(&private, 1234, 5678);
    let fifo = CString::new(root.join("private/fifo").as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: valid C string.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o620) }, 0);
}

/// Checks every entry of `idx` against the reference rootfs, reading file contents
/// only through the index and `read_at`. Returns the number of files compared.
fn check_against_rootfs(idx: &LayerIndex, blob: &RangeOnly, rootfs: &Path, what: &str) -> usize {
    let mut files = 0;
    let mut seen = std::collections::HashSet::new();
    for e in &idx.entries {
        if e.path.is_empty() {
            continue;
        }
        let p = rootfs.join(&e.path);
        let md = fs::symlink_metadata(&p)
            .unwrap_or_else(|err| panic!("{what}: {} in index but not in rootfs: {err}", e.path));
        seen.insert(e.path.clone());
        let ctx = format!("{what}: {}", e.path);
        if e.kind != EntryKind::Hardlink {
            assert_eq!(e.uid, md.uid(), "{ctx}: uid");
            assert_eq!(e.gid, md.gid(), "{ctx}: gid");
        }
        if !matches!(e.kind, EntryKind::Symlink | EntryKind::Hardlink) {
            assert_eq!(e.mode, md.mode() & 0o7777, "{ctx}: mode");
        }
        if matches!(e.kind, EntryKind::Reg | EntryKind::Symlink) {
            assert_eq!(e.mtime, md.mtime(), "{ctx}: mtime");
        }
        match e.kind {
            EntryKind::Dir => assert!(md.is_dir(), "{ctx}: not a dir"),
            EntryKind::Reg => {
                assert!(md.is_file(), "{ctx}: not a file");
                assert_eq!(e.size, md.len(), "{ctx}: size");
                let mut got = Vec::with_capacity(e.size as usize);
                for c in idx.chunks_of(e) {
                    let raw = blob.read_at(c.blob_offset, c.blob_len).unwrap();
                    got.extend(
                        decode_chunk(idx, c, &raw).unwrap_or_else(|err| panic!("{ctx}: {err}")),
                    );
                }
                assert!(got == fs::read(&p).unwrap(), "{ctx}: content differs");
                let mut xa: BTreeMap<String, Vec<u8>> = e
                    .xattrs()
                    .iter()
                    .filter(|(k, _)| k.starts_with("user."))
                    .cloned()
                    .collect();
                assert_eq!(std::mem::take(&mut xa), user_xattrs(&p), "{ctx}: xattrs");
                files += 1;
            }
            EntryKind::Symlink => {
                assert!(md.file_type().is_symlink(), "{ctx}: not a symlink");
                assert_eq!(
                    fs::read_link(&p).unwrap(),
                    PathBuf::from(e.link()),
                    "{ctx}: target"
                );
            }
            EntryKind::Hardlink => {
                let target = fs::symlink_metadata(rootfs.join(e.link())).unwrap();
                assert_eq!(md.ino(), target.ino(), "{ctx}: hard link to {}", e.link());
            }
            EntryKind::Fifo => assert!(md.file_type().is_fifo(), "{ctx}: not a fifo"),
            EntryKind::Char | EntryKind::Block => {
                assert_eq!(e.dev().0, libc::major(md.rdev()), "{ctx}: major");
                assert_eq!(e.dev().1, libc::minor(md.rdev()), "{ctx}: minor");
            }
            EntryKind::Whiteout | EntryKind::Opaque => panic!("{ctx}: unexpected marker"),
        }
    }
    // Nothing in the rootfs is missing from the index.
    let mut stack = vec![rootfs.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for de in fs::read_dir(&dir).unwrap() {
            let de = de.unwrap();
            let rel = de
                .path()
                .strip_prefix(rootfs)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            assert!(seen.contains(&rel), "{what}: {rel} missing from the index");
            if de.file_type().unwrap().is_dir() {
                stack.push(de.path());
            }
        }
    }
    files
}

fn layer_of(layout: &Path, tag: &str) -> (Descriptor, PathBuf) {
    let m = manifest(layout, tag);
    assert_eq!(m.layers().len(), 1);
    let d = m.layers()[0].clone();
    let p = blob_path(layout, d.digest().as_ref());
    (d, p)
}

fn index_and_check(
    desc: &Descriptor,
    path: &Path,
    rootfs: &Path,
    what: &str,
) -> (LayerIndex, RangeOnly) {
    let digest: Digest = desc.digest().to_string().parse().unwrap();
    let blob = RangeOnly::open(digest, path);
    let idx = open_index(desc, &blob).unwrap_or_else(|e| panic!("{what}: {e}"));
    let n = check_against_rootfs(&idx, &blob, rootfs, what);
    assert!(n >= 600, "{what}: only {n} files compared");
    eprintln!(
        "{what}: {n} files identical; {} entries, {} chunks, {} checkpoints",
        idx.entries.len(),
        idx.chunks.len(),
        idx.checkpoints.len()
    );
    (idx, blob)
}

/// True when we are root and every tool is on PATH; otherwise false with a note, or a
/// panic naming what is missing when `SKIFF_TEST_REQUIRE_TOOLS` is set (by
/// `scripts/test.sh`, which installs them all: there a skip would be a silent pass).
/// The same rule as `skiff_tests::tools_or_skip`, which this crate cannot depend on.
fn tools_or_skip(tools: &[&str]) -> bool {
    let mut problems = Vec::new();
    if !is_root() {
        problems.push("needs root (umoci unpack keeps owners)".to_string());
    }
    let missing: Vec<&str> = tools.iter().copied().filter(|t| !have(t)).collect();
    if !missing.is_empty() {
        problems.push(format!("missing tools: {}", missing.join(", ")));
    }
    if problems.is_empty() {
        return true;
    }
    let problems = problems.join("; ");
    let required =
        std::env::var("SKIFF_TEST_REQUIRE_TOOLS").is_ok_and(|v| !v.is_empty() && v != "0");
    if required {
        panic!("{problems} (SKIFF_TEST_REQUIRE_TOOLS is set, so this is a failure, not a skip)");
    }
    eprintln!("skipping: {problems}");
    false
}

fn descriptor(media_type: &str, path: &Path, annotations: HashMap<String, String>) -> Descriptor {
    let bytes = fs::read(path).unwrap();
    let mut d = Descriptor::new(
        MediaType::from(media_type),
        bytes.len() as u64,
        Digest::of(&bytes)
            .to_string()
            .parse::<oci_spec::image::Digest>()
            .unwrap(),
    );
    if !annotations.is_empty() {
        d.set_annotations(Some(annotations));
    }
    d
}

fn gunzip_file(src: &Path, dst: &Path) {
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(fs::File::open(src).unwrap())
        .read_to_end(&mut out)
        .unwrap();
    fs::write(dst, out).unwrap();
}

#[test]
fn plain_tar_gzip_and_zstd_layers_match_umoci() {
    if !tools_or_skip(&["umoci", "skopeo"]) {
        return;
    }
    let fx = Fixture::new();
    let (desc, path) = layer_of(&fx.layout(), "base");
    // tar+gzip as umoci wrote it, read through checkpoints.
    let (idx, _) = index_and_check(&desc, &path, &fx.rootfs(), "tar+gzip (umoci)");
    assert_eq!(idx.format, LayerFormat::TarGzip);
    assert!(idx.checkpoints.len() >= 3);
    // The same layer uncompressed.
    let tar = fx.dir.path().join("layer.tar");
    gunzip_file(&path, &tar);
    let d = descriptor(
        "application/vnd.oci.image.layer.v1.tar",
        &tar,
        HashMap::new(),
    );
    let (idx, _) = index_and_check(&d, &tar, &fx.rootfs(), "tar");
    assert_eq!(idx.format, LayerFormat::Tar);
    // tar+zstd in many frames (one per MiB of tar), as zstd streaming producers can.
    let zst = fx.dir.path().join("layer.tar.zst");
    let mut out = fs::File::create(&zst).unwrap();
    for part in fs::read(&tar).unwrap().chunks(1 << 20) {
        out.write_all(&zstd::encode_all(part, 3).unwrap()).unwrap();
    }
    drop(out);
    let d = descriptor(
        "application/vnd.oci.image.layer.v1.tar+zstd",
        &zst,
        HashMap::new(),
    );
    let (idx, _) = index_and_check(&d, &zst, &fx.rootfs(), "tar+zstd");
    assert_eq!(idx.format, LayerFormat::TarZstd);
    assert!(!skiff_proto::index::zstd::needs_whole_blob(&idx));
}

#[test]
fn zstd_chunked_from_skopeo_matches_umoci() {
    if !tools_or_skip(&["umoci", "skopeo"]) {
        return;
    }
    let fx = Fixture::new();
    let dst = fx.dir.path().join("zc");
    run(Command::new("skopeo").args([
        "copy",
        "-q",
        "--dest-compress-format",
        "zstd:chunked",
        "--dest-compress",
        &format!("oci:{}:base", fx.layout().display()),
        &format!("oci:{}:zc", dst.display()),
    ]));
    let (desc, path) = layer_of(&dst, "zc");
    let (idx, blob) = index_and_check(&desc, &path, &fx.rootfs(), "zstd:chunked (skopeo)");
    assert_eq!(idx.format, LayerFormat::ZstdChunked);
    assert!(
        idx.chunks
            .iter()
            .any(|c| c.encoding == skiff_proto::index::ChunkEncoding::Zeros),
        "skopeo wrote no zeros chunk for data/holes"
    );
    // Without its annotations the same blob is a multi-frame tar+zstd: the streaming
    // pass still gives per-file random access.
    let mut bare = desc.clone();
    bare.set_annotations(None);
    let (plain, _) = index_and_check(&bare, &path, &fx.rootfs(), "zstd:chunked as tar+zstd");
    assert_eq!(plain.format, LayerFormat::TarZstd);
    assert!(!skiff_proto::index::zstd::needs_whole_blob(&plain));
    // The TOC cost exactly one range read.
    let fresh = RangeOnly::open(blob.digest(), &path);
    open_index(&desc, &fresh).unwrap();
    assert_eq!(fresh.reads.load(Ordering::Relaxed), 1);
    // A TOC that does not match its annotation is refused.
    let mut bad = desc.clone();
    let mut ann = bad.annotations().clone().unwrap();
    for k in skiff_proto::index::zstd_chunked::CHECKSUM_ANNOTATIONS {
        if ann.contains_key(k) {
            ann.insert(k.to_string(), Digest::of(b"not it").to_string());
        }
    }
    bad.set_annotations(Some(ann));
    let err = open_index(&bad, &fresh).unwrap_err();
    assert!(err.to_string().contains("digest mismatch"), "{err}");
}

#[test]
fn estargz_from_ctr_remote_matches_umoci() {
    if !tools_or_skip(&["umoci", "skopeo", "containerd", "ctr", "ctr-remote"]) {
        return;
    }
    let fx = Fixture::new();
    let dst = fx.dir.path().join("esgz");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scripts/estargz-convert.sh");
    run(Command::new(script)
        .arg(fx.layout())
        .arg("base")
        .arg(&dst)
        .arg(fx.dir.path().join("ctd")));
    let (desc, path) = layer_of(&dst, "esgz");
    let (idx, blob) = index_and_check(&desc, &path, &fx.rootfs(), "estargz (ctr-remote)");
    assert_eq!(idx.format, LayerFormat::Estargz);
    // Footer + TOC in one range read.
    let fresh = RangeOnly::open(blob.digest(), &path);
    open_index(&desc, &fresh).unwrap();
    assert_eq!(fresh.reads.load(Ordering::Relaxed), 1);
    // A TOC digest that does not match the annotation is refused.
    let mut bad = desc.clone();
    let mut ann = bad.annotations().clone().unwrap();
    ann.insert(
        skiff_proto::index::estargz::TOC_DIGEST_ANNOTATION.into(),
        Digest::of(b"x").to_string(),
    );
    bad.set_annotations(Some(ann));
    assert!(open_index(&bad, &fresh).is_err());
}

#[test]
fn own_estargz_converter_output_matches_umoci_and_stays_a_tar_gz() {
    if !tools_or_skip(&["umoci", "skopeo", "tar", "gzip"]) {
        return;
    }
    let fx = Fixture::new();
    let (_, path) = layer_of(&fx.layout(), "base");
    let tar = fx.dir.path().join("layer.tar");
    gunzip_file(&path, &tar);
    let out_path = fx.dir.path().join("layer.esgz");
    let opts = EstargzOptions {
        chunk_size: 1 << 20,
        level: 6,
        prefetch: vec!["usr/bin/rand".into(), "data/middle-small".into()],
    };
    let layer = convert_to_estargz(
        &mut fs::File::open(&tar).unwrap(),
        fs::File::create(&out_path).unwrap(),
        &opts,
        None,
    )
    .unwrap();
    let bytes = fs::read(&out_path).unwrap();
    assert_eq!(layer.blob_digest, Digest::of(&bytes));
    assert_eq!(layer.blob_size, bytes.len() as u64);
    // Ordinary tools read it: gunzip | tar t, and the diff_id is the gunzipped digest.
    let unz = fx.dir.path().join("layer.esgz.tar");
    gunzip_file(&out_path, &unz);
    assert_eq!(layer.diff_id, Digest::of(&fs::read(&unz).unwrap()));
    let listing = Command::new("sh")
        .arg("-c")
        .arg(format!("gzip -dc {} | tar -tf -", out_path.display()))
        .output()
        .unwrap();
    assert!(
        listing.status.success(),
        "{}",
        String::from_utf8_lossy(&listing.stderr)
    );
    let listing = String::from_utf8(listing.stdout).unwrap();
    assert!(listing.contains("stargz.index.json"));
    assert!(listing.contains("data/middle-small"));
    // Through Skiff's own reader.
    let ann: HashMap<String, String> = layer.annotations().into_iter().collect();
    let d = descriptor(
        "application/vnd.oci.image.layer.v1.tar+gzip",
        &out_path,
        ann,
    );
    let (idx, _) = index_and_check(&d, &out_path, &fx.rootfs(), "estargz (skiff convert)");
    let prefetched: Vec<&str> = idx
        .prefetch
        .iter()
        .map(|&i| idx.entries[i as usize].path.as_str())
        .collect();
    assert_eq!(prefetched, vec!["usr/bin/rand", "data/middle-small"]);
    // The same file indexed as plain tar+gzip (checkpoints) agrees, too.
    let d = descriptor(
        "application/vnd.oci.image.layer.v1.tar+gzip",
        &out_path,
        HashMap::new(),
    );
    let blob = RangeOnly::open(Digest::of(&bytes), &out_path);
    let plain = open_index_with(&d, &blob, &IndexOptions::default()).unwrap();
    assert_eq!(plain.format, LayerFormat::TarGzip);
    // umoci unpacks an image made of it to the same tree (plus the eStargz files).
    let esgz_layout = fx.dir.path().join("esgz-img");
    write_single_layer_image(&fx.layout(), &esgz_layout, &bytes, &layer);
    let copied = fx.dir.path().join("esgz-copy");
    run(Command::new("skopeo")
        .args(["copy", "-q"])
        .arg(format!("oci:{}:esgz", esgz_layout.display()))
        .arg(format!("oci:{}:esgz", copied.display())));
    let unpacked = fx.dir.path().join("esgz-ref");
    run(Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:esgz", copied.display()))
        .arg(&unpacked));
    for extra in ["stargz.index.json", ".prefetch.landmark"] {
        fs::remove_file(unpacked.join("rootfs").join(extra)).unwrap();
    }
    assert_eq!(
        tree_summary(&fx.rootfs()),
        tree_summary(&unpacked.join("rootfs"))
    );
}

/// Types, modes, owners, sizes, link targets, mtimes and content hashes of a tree.
fn tree_summary(dir: &Path) -> String {
    let script = "find . ! -type d -printf '%p %y %m %U %G %s %l %T@\\n' | sort; \
                  find . -type d -printf '%p %m %U %G\\n' | sort; \
                  find . -type f -print0 | sort -z | xargs -0 sha256sum";
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

/// Writes an OCI layout with the source image's config, its diff_id replaced, and the
/// converted layer.
fn write_single_layer_image(
    src: &Path,
    dst: &Path,
    layer: &[u8],
    conv: &skiff_proto::index::convert::ConvertedLayer,
) {
    let m = manifest(src, "base");
    let mut config: serde_json::Value =
        serde_json::from_slice(&fs::read(blob_path(src, m.config().digest().as_ref())).unwrap())
            .unwrap();
    config["rootfs"]["diff_ids"] = serde_json::json!([conv.diff_id.to_string()]);
    let config = serde_json::to_vec(&config).unwrap();
    let blobs = dst.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    let put = |b: &[u8]| {
        let d = Digest::of(b);
        fs::write(blobs.join(d.hex()), b).unwrap();
        d
    };
    let cd = put(&config);
    let ld = put(layer);
    let ann: serde_json::Map<String, serde_json::Value> = conv
        .annotations()
        .into_iter()
        .map(|(k, v)| (k, serde_json::Value::String(v)))
        .collect();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd.to_string(), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": ld.to_string(), "size": layer.len(), "annotations": ann}],
    });
    let manifest = serde_json::to_vec(&manifest).unwrap();
    let md = put(&manifest);
    fs::write(dst.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md.to_string(), "size": manifest.len(),
                        "annotations": {"org.opencontainers.image.ref.name": "esgz"}}],
    });
    fs::write(dst.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
}

/// The whiteout markers (`.wh.*` names) GNU tar lists in a layer blob.
fn markers_listed_by_tar(layer: &Path) -> Vec<String> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "(gzip -dc {0} 2>/dev/null || zstd -dc {0}) | tar -tf -",
            layer.display()
        ))
        .output()
        .unwrap();
    let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim_start_matches("./").trim_end_matches('/').to_string())
        .filter(|l| l.rsplit('/').next().is_some_and(|n| n.starts_with(".wh.")))
        .collect();
    v.sort();
    v
}

/// The same markers as the index decoded them, turned back into names.
fn markers_in_index(idx: &LayerIndex) -> Vec<String> {
    let mut v: Vec<String> = idx
        .entries
        .iter()
        .filter_map(|e| {
            let join = |dir: &str, name: &str| {
                if dir.is_empty() {
                    name.to_string()
                } else {
                    format!("{dir}/{name}")
                }
            };
            match e.kind {
                EntryKind::Opaque => Some(join(&e.path, ".wh..wh..opq")),
                EntryKind::Whiteout => {
                    let (dir, name) = e.path.rsplit_once('/').unwrap_or(("", &e.path));
                    Some(join(dir, &format!(".wh.{name}")))
                }
                _ => None,
            }
        })
        .collect();
    v.sort();
    v
}

#[test]
fn whiteouts_survive_every_format() {
    if !tools_or_skip(&["umoci", "skopeo", "tar", "gzip", "zstd"]) {
        return;
    }
    let fx = Fixture::new();
    // A second layer that deletes a file and a directory and replaces another
    // directory's content.
    let bundle = fx.dir.path().join("second");
    run(Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:base", fx.layout().display()))
        .arg(&bundle));
    let root = bundle.join("rootfs");
    fs::remove_file(root.join("etc/small")).unwrap();
    fs::remove_dir_all(root.join("data/d3")).unwrap();
    fs::remove_dir_all(root.join("data/e1")).unwrap();
    fs::create_dir(root.join("data/e1")).unwrap();
    fs::write(root.join("data/e1/new"), b"new\n").unwrap();
    run(Command::new("umoci")
        .args(["repack", "--image"])
        .arg(format!("{}:base", fx.layout().display()))
        .arg(&bundle));
    let second = |layout: &Path, tag: &str| {
        let m = manifest(layout, tag);
        assert_eq!(m.layers().len(), 2);
        let d = m.layers()[1].clone();
        let p = blob_path(layout, d.digest().as_ref());
        (d, p)
    };
    let check = |what: &str, d: &Descriptor, p: &Path| {
        let blob = RangeOnly::open(d.digest().to_string().parse().unwrap(), p);
        let idx = open_index(d, &blob).unwrap_or_else(|e| panic!("{what}: {e}"));
        let expected = markers_listed_by_tar(p);
        assert!(
            expected.contains(&"etc/.wh.small".to_string()),
            "{what}: {expected:?}"
        );
        assert_eq!(markers_in_index(&idx), expected, "{what}");
        eprintln!(
            "{what}: {} whiteout markers match GNU tar's listing",
            expected.len()
        );
    };
    let (d, p) = second(&fx.layout(), "base");
    check("tar+gzip (umoci)", &d, &p);
    let zc = fx.dir.path().join("zc");
    run(Command::new("skopeo").args([
        "copy",
        "-q",
        "--dest-compress-format",
        "zstd:chunked",
        "--dest-compress",
        &format!("oci:{}:base", fx.layout().display()),
        &format!("oci:{}:zc", zc.display()),
    ]));
    let (d, p) = second(&zc, "zc");
    check("zstd:chunked (skopeo)", &d, &p);
    if tools_or_skip(&["containerd", "ctr", "ctr-remote"]) {
        let dst = fx.dir.path().join("esgz");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scripts/estargz-convert.sh");
        run(Command::new(script)
            .arg(fx.layout())
            .arg("base")
            .arg(&dst)
            .arg(fx.dir.path().join("ctd")));
        let (d, p) = second(&dst, "esgz");
        check("estargz (ctr-remote)", &d, &p);
    }
}
