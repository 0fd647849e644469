//! Index benchmark: build time and index size per layer format for one ~200 MB layer,
//! and the bytes fetched to read one small file from the middle of the layer.
//!
//! Usage: `cargo run -p skiff-proto --example index_bench -- SRC_DIR [MiB] [WORKDIR]`
//! (see bench/index.sh). Files under SRC_DIR are packed into a tar of about MiB
//! (default 200) megabytes; the layer is then written as tar, tar+gzip, tar+zstd
//! (one frame), eStargz (Skiff's converter) and, if `skopeo` is installed,
//! zstd:chunked, and each is indexed through `open_index`.

use oci_spec::image::{Descriptor, MediaType};
use skiff_proto::index::convert::{convert_to_estargz, EstargzOptions};
use skiff_proto::index::{open_index_with, store, EntryKind, IndexOptions, LayerIndex};
use skiff_proto::{BlobError, BlobReader, Digest, FileBlob};
use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Counts the bytes read through `read_at` / `stream`.
struct Counting {
    inner: FileBlob,
    fetched: AtomicU64,
}

impl BlobReader for Counting {
    fn digest(&self) -> Digest {
        self.inner.digest()
    }
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_at(&self, offset: u64, len: u64) -> Result<Vec<u8>, BlobError> {
        self.fetched.fetch_add(len, Ordering::Relaxed);
        self.inner.read_at(offset, len)
    }
}

fn descriptor(media_type: &str, path: &Path, ann: HashMap<String, String>) -> (Descriptor, Digest) {
    let bytes = fs::read(path).unwrap();
    let digest = Digest::of(&bytes);
    let mut d = Descriptor::new(
        MediaType::from(media_type),
        bytes.len() as u64,
        digest
            .to_string()
            .parse::<oci_spec::image::Digest>()
            .unwrap(),
    );
    if !ann.is_empty() {
        d.set_annotations(Some(ann));
    }
    (d, digest)
}

fn pack(src: &Path, limit: u64, out: &Path) -> u64 {
    let mut b = tar::Builder::new(fs::File::create(out).unwrap());
    b.follow_symlinks(false);
    let mut total = 0u64;
    let mut stack = vec![src.to_path_buf()];
    'walk: while let Some(dir) = stack.pop() {
        let mut items: Vec<PathBuf> = match fs::read_dir(&dir) {
            Ok(r) => r.filter_map(|e| e.ok().map(|e| e.path())).collect(),
            Err(_) => continue,
        };
        items.sort();
        for p in items {
            let Ok(md) = fs::symlink_metadata(&p) else {
                continue;
            };
            let rel = p.strip_prefix(src).unwrap();
            if md.is_dir() {
                if b.append_dir(rel, &p).is_ok() {
                    stack.push(p);
                }
            } else if md.is_file() || md.file_type().is_symlink() {
                if b.append_path_with_name(&p, rel).is_ok() {
                    total += md.len() + 512;
                }
                if total >= limit {
                    break 'walk;
                }
            }
        }
    }
    b.finish().unwrap();
    total
}

/// The first small file past the middle of the layer (entries are in tar order).
fn middle_small_file(idx: &LayerIndex) -> usize {
    let total: u64 = idx.entries.iter().map(|e| e.size).sum();
    let mut seen = 0u64;
    for (i, e) in idx.entries.iter().enumerate() {
        if seen >= total / 2 && e.kind == EntryKind::Reg && (1000..16 << 10).contains(&e.size) {
            return i;
        }
        seen += e.size;
    }
    panic!("no small file past the middle of the layer");
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let src = PathBuf::from(args.get(1).map(String::as_str).unwrap_or("/usr/lib"));
    let mib: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(200);
    let work = args
        .get(3)
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("skiff-index-bench"));
    fs::create_dir_all(&work).unwrap();
    let tar = work.join("layer.tar");
    let t = Instant::now();
    pack(&src, mib << 20, &tar);
    let tar_size = fs::metadata(&tar).unwrap().len();
    println!(
        "layer: {} MiB uncompressed from {} (packed in {:.1?})",
        tar_size >> 20,
        src.display(),
        t.elapsed()
    );

    // tar+gzip
    let gz = work.join("layer.tar.gz");
    let t = Instant::now();
    {
        let mut e = flate2::write::GzEncoder::new(
            fs::File::create(&gz).unwrap(),
            flate2::Compression::new(6),
        );
        std::io::copy(&mut fs::File::open(&tar).unwrap(), &mut e).unwrap();
        e.finish().unwrap();
    }
    println!("gzip -6 written in {:.1?}", t.elapsed());
    // tar+zstd, one frame
    let zst = work.join("layer.tar.zst");
    {
        let mut e = zstd::stream::write::Encoder::new(fs::File::create(&zst).unwrap(), 3).unwrap();
        std::io::copy(&mut fs::File::open(&tar).unwrap(), &mut e).unwrap();
        e.finish().unwrap().flush().unwrap();
    }
    // eStargz by Skiff's converter.
    let esgz = work.join("layer.esgz");
    let t = Instant::now();
    let conv = convert_to_estargz(
        &mut fs::File::open(&tar).unwrap(),
        fs::File::create(&esgz).unwrap(),
        &EstargzOptions {
            level: 6,
            ..Default::default()
        },
        None,
    )
    .unwrap();
    println!(
        "eStargz conversion (gzip -6, 4 MiB chunks) in {:.1?}",
        t.elapsed()
    );

    let mut layers: Vec<(String, Descriptor, Digest, PathBuf, usize)> = Vec::new();
    let mut add = |name: &str, mt: &str, p: &Path, ann: HashMap<String, String>, span: usize| {
        let (d, dg) = descriptor(mt, p, ann);
        layers.push((name.to_string(), d, dg, p.to_path_buf(), span));
    };
    add(
        "tar",
        "application/vnd.oci.image.layer.v1.tar",
        &tar,
        HashMap::new(),
        0,
    );
    add(
        "tar+gzip span 4 MiB",
        "application/vnd.oci.image.layer.v1.tar+gzip",
        &gz,
        HashMap::new(),
        4,
    );
    add(
        "tar+gzip span 1 MiB",
        "application/vnd.oci.image.layer.v1.tar+gzip",
        &gz,
        HashMap::new(),
        1,
    );
    add(
        "tar+zstd (1 frame)",
        "application/vnd.oci.image.layer.v1.tar+zstd",
        &zst,
        HashMap::new(),
        0,
    );
    add(
        "eStargz (skiff)",
        "application/vnd.oci.image.layer.v1.tar+gzip",
        &esgz,
        conv.annotations().into_iter().collect(),
        0,
    );
    if let Some((p, ann)) = zstd_chunked(&work, &gz, &tar) {
        add(
            "zstd:chunked (skopeo)",
            "application/vnd.oci.image.layer.v1.tar+zstd",
            &p,
            ann,
            0,
        );
    }

    println!();
    println!(
        "{:<24} {:>9} {:>8} {:>9} {:>8} {:>8} {:>6} {:>11} {:>12}",
        "format",
        "blob MiB",
        "build s",
        "index KiB",
        "mem KiB",
        "entries",
        "chunks",
        "read bytes",
        "stream bytes"
    );
    for (name, d, dg, p, span) in &layers {
        let blob = Counting {
            inner: FileBlob::open(*dg, p).unwrap(),
            fetched: AtomicU64::new(0),
        };
        let opts = IndexOptions {
            span: if *span > 0 {
                (*span as u64) << 20
            } else {
                4 << 20
            },
            ..Default::default()
        };
        let t = Instant::now();
        let idx = open_index_with(d, &blob, &opts).unwrap();
        let build = t.elapsed();
        let size = store::encode(&idx).unwrap().len();
        let i = middle_small_file(&idx);
        let e = &idx.entries[i];
        blob.fetched.store(0, Ordering::Relaxed);
        let mut content = Vec::new();
        for c in idx.chunks_of(e) {
            let raw = blob.read_at(c.blob_offset, c.blob_len).unwrap();
            content.extend(skiff_proto::index::decode_chunk(&idx, c, &raw).unwrap());
        }
        assert_eq!(content.len() as u64, e.size);
        let fetched = blob.fetched.load(Ordering::Relaxed);
        // Without an index or checkpoints, a reader must stream the blob from byte 0
        // up to the end of the file's compressed bytes.
        let stream_to = idx
            .chunks_of(e)
            .iter()
            .map(|c| c.blob_offset + c.blob_len)
            .max()
            .unwrap_or(0);
        println!(
            "{:<24} {:>9.1} {:>8.2} {:>9} {:>8} {:>8} {:>6} {:>11} {:>12}   ({}, {} B)",
            name,
            blob.size() as f64 / (1 << 20) as f64,
            build.as_secs_f64(),
            size >> 10,
            idx.memory_size() >> 10,
            idx.entries.len(),
            idx.chunks.len(),
            fetched,
            stream_to,
            e.path,
            e.size
        );
    }
}

/// Makes a zstd:chunked copy of the layer with skopeo (through a one-layer OCI
/// layout); `None` if skopeo is missing or fails.
fn zstd_chunked(work: &Path, gz: &Path, tar: &Path) -> Option<(PathBuf, HashMap<String, String>)> {
    let layout = work.join("oci");
    let _ = fs::remove_dir_all(&layout);
    let blobs = layout.join("blobs/sha256");
    fs::create_dir_all(&blobs).ok()?;
    let put = |b: &[u8]| {
        let d = Digest::of(b);
        fs::write(blobs.join(d.hex()), b).unwrap();
        d
    };
    let diff_id = Digest::of(&fs::read(tar).ok()?);
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [diff_id.to_string()]},
    }))
    .ok()?;
    let layer = fs::read(gz).ok()?;
    let (cd, ld) = (put(&config), put(&layer));
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd.to_string(), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": ld.to_string(), "size": layer.len()}],
    }))
    .ok()?;
    let md = put(&manifest);
    fs::write(
        layout.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .ok()?;
    fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md.to_string(),
            "size": manifest.len(), "annotations": {"org.opencontainers.image.ref.name": "src"}}]}))
        .ok()?,
    )
    .ok()?;
    let dst = work.join("oci-zc");
    let _ = fs::remove_dir_all(&dst);
    let ok = Command::new("skopeo")
        .args([
            "copy",
            "-q",
            "--dest-compress-format",
            "zstd:chunked",
            "--dest-compress",
        ])
        .arg(format!("oci:{}:src", layout.display()))
        .arg(format!("oci:{}:zc", dst.display()))
        .status()
        .ok()?
        .success();
    if !ok {
        return None;
    }
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(dst.join("index.json")).ok()?).ok()?;
    let mdig = index["manifests"][0]["digest"]
        .as_str()?
        .strip_prefix("sha256:")?
        .to_string();
    let m: serde_json::Value =
        serde_json::from_slice(&fs::read(dst.join("blobs/sha256").join(mdig)).ok()?).ok()?;
    let l = &m["layers"][0];
    let ann = l["annotations"]
        .as_object()?
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
        .collect();
    let p = dst
        .join("blobs/sha256")
        .join(l["digest"].as_str()?.strip_prefix("sha256:")?);
    Some((p, ann))
}
