//! Layer conversion: what every writer shares (reading and verifying the source
//! layer, the first pass over its tar, the result), and the eStargz writer, which
//! rewrites a plain (uncompressed) tar layer as an eStargz blob that is still an
//! ordinary tar.gz (`gunzip | tar t` lists it). The zstd:chunked writer is
//! [`super::zstd_chunked_writer`]; [`convert_layer`] picks one by [`Target`].
//!
//! Two passes over a seekable copy of the tar: the first records where every entry's
//! header records and data lie, the second writes them out in eStargz order — the
//! prefetch files (and their parent directories) first, then `.prefetch.landmark`
//! (or `.no.prefetch.landmark` at the very start when there is nothing to prefetch),
//! then everything else in the original order, then `stargz.index.json` and the
//! footer. Every file chunk starts a new gzip member. Header bytes are copied
//! verbatim, so pax records, long names and xattrs survive unchanged.

use super::estargz::{footer_bytes, TOC_TAR_NAME};
use super::model::clean_path;
use super::toc::{
    format_rfc3339, format_rfc3339_nanos, Toc, TocEntry, NO_PREFETCH_LANDMARK, PREFETCH_LANDMARK,
};
pub use super::zstd_chunked_writer::ZstdChunkedOptions;
use crate::digest::{Digest, Hasher};
use base64::Engine as _;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};

/// Errors from converting a layer.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    /// Reading the input or writing the output failed.
    #[error("converting layer: {0}")]
    Io(#[from] io::Error),
    /// The input is not a tar Skiff can convert.
    #[error("converting layer: input tar: {0}")]
    BadInput(String),
    /// Reading the source blob failed.
    #[error(transparent)]
    Blob(#[from] crate::blob::BlobError),
    /// The source blob did not match its digest.
    #[error(transparent)]
    Digest(#[from] crate::digest::DigestError),
    /// The source layer's media type is not tar, tar+gzip or tar+zstd.
    #[error("cannot convert a layer of media type {0:?}")]
    UnsupportedMediaType(String),
    /// The image config is not the JSON expected.
    #[error("rewriting image config: {0}")]
    Config(String),
}

/// Options of [`convert_to_estargz`].
#[derive(Debug, Clone)]
pub struct EstargzOptions {
    /// Largest chunk of a file per gzip member (stargz default: 4 MiB).
    pub chunk_size: u64,
    /// gzip level 0–9 (stargz default: 9).
    pub level: u32,
    /// Paths to put first, before `.prefetch.landmark`, in this order.
    pub prefetch: Vec<String>,
}

impl Default for EstargzOptions {
    fn default() -> Self {
        EstargzOptions {
            chunk_size: 4 << 20,
            level: 9,
            prefetch: Vec::new(),
        }
    }
}

/// What a conversion produced: everything needed for the new manifest and config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvertedLayer {
    /// Digest of the eStargz blob (the layer descriptor's digest).
    pub blob_digest: Digest,
    /// Size of the eStargz blob.
    pub blob_size: u64,
    /// Digest of the uncompressed tar (the config's `rootfs.diff_ids` entry). It
    /// differs from the input's: the landmark and TOC entries are part of the tar.
    pub diff_id: Digest,
    /// Size of the uncompressed tar.
    pub uncompressed_size: u64,
    /// The digest the TOC is verified against: for eStargz the sha256 of the TOC JSON
    /// (annotation `containerd.io/snapshot/stargz/toc.digest`), for zstd:chunked that
    /// of the compressed TOC (`…zstd-chunked.manifest-checksum`).
    pub toc_digest: Digest,
    /// The annotations the layer descriptor must carry.
    annotations: Vec<(String, String)>,
}

impl ConvertedLayer {
    /// A converted layer whose descriptor must carry `annotations`.
    pub(crate) fn new(
        blob: (Digest, u64),
        tar: (Digest, u64),
        toc_digest: Digest,
        annotations: Vec<(String, String)>,
    ) -> Self {
        ConvertedLayer {
            blob_digest: blob.0,
            blob_size: blob.1,
            diff_id: tar.0,
            uncompressed_size: tar.1,
            toc_digest,
            annotations,
        }
    }

    /// The annotations the layer descriptor must carry, as the format's own tools
    /// (stargz-snapshotter's converter, containers/storage's compressor) set them.
    pub fn annotations(&self) -> Vec<(String, String)> {
        self.annotations.clone()
    }
}

/// The format a layer is converted to, with its knobs.
#[derive(Debug, Clone)]
pub enum Target {
    /// eStargz (a tar+gzip layer).
    Estargz(EstargzOptions),
    /// zstd:chunked (a tar+zstd layer).
    ZstdChunked(ZstdChunkedOptions),
}

impl Target {
    /// Whether a layer whose descriptor carries `annotations` is in this format
    /// already (it has the format's TOC annotation).
    pub fn is_format_of(&self, annotations: &BTreeMap<String, String>) -> bool {
        let keys: &[&str] = match self {
            Target::Estargz(_) => &[super::estargz::TOC_DIGEST_ANNOTATION],
            Target::ZstdChunked(_) => &super::zstd_chunked::POSITION_ANNOTATIONS,
        };
        keys.iter().any(|k| annotations.contains_key(*k))
    }

    /// The media type of a layer in this format (the OCI one).
    pub fn media_type(&self) -> &'static str {
        match self {
            Target::Estargz(_) => crate::image::MEDIA_OCI_LAYER_GZIP,
            Target::ZstdChunked(_) => crate::image::MEDIA_OCI_LAYER_ZSTD,
        }
    }
}

/// One input entry: where its bytes are and what a TOC says about it.
pub(crate) struct Planned {
    /// Where its header records start (with any global header before them).
    pub header_start: u64,
    /// Where its data starts (just after its last header record).
    pub data_start: u64,
    /// Bytes of data.
    pub size: u64,
    /// Its TOC entry, with the cleaned path (as eStargz writes it).
    pub toc: TocEntry,
    /// The path exactly as the tar header has it (as zstd:chunked writes it).
    pub raw_name: Vec<u8>,
    /// The link target exactly as the tar header has it.
    pub raw_link: Vec<u8>,
    /// Access and change times (RFC 3339) when the header records them (a pax
    /// `atime`/`ctime`, or a GNU header's fields), as Go's `archive/tar` reads them.
    pub access_time: Option<String>,
    /// See `access_time`.
    pub change_time: Option<String>,
}

/// Converts one layer blob of an image (`media_type` tar, tar+gzip or tar+zstd, incl.
/// Docker's) to `target`'s format written to `out`, verifying the source blob's
/// digest as it streams. The caller pushes the result as a layer of
/// [`Target::media_type`] with [`ConvertedLayer::annotations`], and puts
/// [`ConvertedLayer::diff_id`] in the config (see [`set_diff_ids`]).
pub fn convert_layer(
    blob: &dyn crate::blob::BlobReader,
    media_type: &str,
    out: impl Write,
    target: &Target,
    progress: Option<&dyn Fn(u64)>,
) -> Result<ConvertedLayer, ConvertError> {
    let mut spool = spool_layer(blob, media_type)?;
    match target {
        Target::Estargz(opts) => convert_to_estargz(&mut spool, out, opts, progress),
        Target::ZstdChunked(opts) => {
            super::zstd_chunked_writer::convert_to_zstd_chunked(&mut spool, out, opts, progress)
        }
    }
}

/// The uncompressed tar of a layer blob in a temporary file (positioned at its
/// start), after checking the blob against its digest.
fn spool_layer(blob: &dyn crate::blob::BlobReader, media_type: &str) -> Result<File, ConvertError> {
    let mut hashing = HashingReader {
        inner: blob.stream()?,
        hasher: Hasher::new(),
    };
    let mut spool = tempfile::tempfile()?;
    if media_type.ends_with("tar") {
        io::copy(&mut hashing, &mut spool)?;
    } else if media_type.ends_with("gzip") {
        io::copy(
            &mut flate2::read::MultiGzDecoder::new(&mut hashing),
            &mut spool,
        )?;
    } else if media_type.ends_with("zstd") {
        io::copy(
            &mut zstd::stream::read::Decoder::new(&mut hashing)?,
            &mut spool,
        )?;
    } else {
        return Err(ConvertError::UnsupportedMediaType(media_type.to_string()));
    }
    // Hash whatever the decoder left unread, then compare.
    io::copy(&mut hashing, &mut io::sink())?;
    let actual = std::mem::take(&mut hashing.hasher).finish();
    if actual != blob.digest() {
        return Err(ConvertError::Digest(crate::digest::DigestError::Mismatch {
            what: format!("source layer {}", blob.digest()),
            expected: blob.digest(),
            actual,
        }));
    }
    spool.seek(SeekFrom::Start(0))?;
    Ok(spool)
}

/// Hashes everything read through it.
struct HashingReader<R> {
    inner: R,
    hasher: Hasher,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Replaces `rootfs.diff_ids` in an image config, keeping every other field as is.
pub fn set_diff_ids(config: &[u8], diff_ids: &[Digest]) -> Result<Vec<u8>, ConvertError> {
    let mut v: serde_json::Value =
        serde_json::from_slice(config).map_err(|e| ConvertError::Config(e.to_string()))?;
    let rootfs = v
        .get_mut("rootfs")
        .and_then(|r| r.as_object_mut())
        .ok_or_else(|| ConvertError::Config("no rootfs object".into()))?;
    let old = rootfs
        .get("diff_ids")
        .and_then(|d| d.as_array())
        .map_or(0, Vec::len);
    if old != diff_ids.len() {
        return Err(ConvertError::Config(format!(
            "config lists {old} diff_ids, image has {} layers",
            diff_ids.len()
        )));
    }
    rootfs.insert(
        "diff_ids".into(),
        diff_ids
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .into(),
    );
    serde_json::to_vec(&v).map_err(|e| ConvertError::Config(e.to_string()))
}

/// Converts an uncompressed tar stream (read once, spooled to a temporary file) to
/// eStargz written to `out`.
pub fn convert_stream_to_estargz(
    input: impl Read,
    out: impl Write,
    opts: &EstargzOptions,
    progress: Option<&dyn Fn(u64)>,
) -> Result<ConvertedLayer, ConvertError> {
    convert_to_estargz(&mut spool(input)?, out, opts, progress)
}

/// A stream copied into a temporary file (positioned at its start), so that a
/// writer can make its two passes over it.
pub(crate) fn spool(input: impl Read) -> io::Result<File> {
    let mut spool = tempfile::tempfile()?;
    io::copy(&mut { input }, &mut spool)?;
    spool.seek(SeekFrom::Start(0))?;
    Ok(spool)
}

/// Converts the uncompressed tar in `input` to eStargz written to `out`. `progress`,
/// if given, is called with the number of input bytes written so far.
pub fn convert_to_estargz(
    input: &mut File,
    out: impl Write,
    opts: &EstargzOptions,
    progress: Option<&dyn Fn(u64)>,
) -> Result<ConvertedLayer, ConvertError> {
    let plan = plan(input)?;
    if plan.iter().any(|p| p.toc.name == TOC_TAR_NAME) {
        return Err(ConvertError::BadInput(format!(
            "input already holds {TOC_TAR_NAME}"
        )));
    }
    let chunk_size = opts.chunk_size.max(1);

    // Output order: landmark choice, prefetch files with their parents, the rest.
    let mut order: Vec<usize> = Vec::new();
    let mut placed = vec![false; plan.len()];
    let wanted: Vec<String> = opts
        .prefetch
        .iter()
        .filter_map(|p| clean_path(p))
        .filter(|p| !p.is_empty())
        .collect();
    for want in &wanted {
        let Some(i) = plan
            .iter()
            .position(|p| p.toc.name == *want && p.toc.kind == "reg")
        else {
            tracing::warn!(path = %want, "prefetch path is not a regular file in the layer");
            continue;
        };
        // Parent directories first, so extraction order stays sensible.
        let mut parent = want.as_str();
        let mut parents = Vec::new();
        while let Some((p, _)) = parent.rsplit_once('/') {
            parents.push(p.to_string());
            parent = p;
        }
        for dir in parents.iter().rev() {
            if let Some(d) = plan
                .iter()
                .position(|p| p.toc.name == *dir && p.toc.kind == "dir")
            {
                if !placed[d] {
                    placed[d] = true;
                    order.push(d);
                }
            }
        }
        if !placed[i] {
            placed[i] = true;
            order.push(i);
        }
    }
    let prefetching = !order.is_empty();
    let rest: Vec<usize> = (0..plan.len()).filter(|&i| !placed[i]).collect();

    let mut w = Writer::new(out, opts.level);
    let mut toc = Toc {
        version: 1,
        entries: Vec::new(),
    };
    let mut done_bytes = 0u64;
    if !prefetching {
        w.landmark(NO_PREFETCH_LANDMARK, &mut toc)?;
    }
    let write_entries = |w: &mut Writer<_>,
                         toc: &mut Toc,
                         idx: &[usize],
                         input: &mut File,
                         done: &mut u64|
     -> Result<(), ConvertError> {
        for &i in idx {
            let p = &plan[i];
            w.entry(input, p, chunk_size, toc)?;
            *done += p.size;
            if let Some(progress) = progress {
                progress(*done);
            }
        }
        Ok(())
    };
    write_entries(&mut w, &mut toc, &order, input, &mut done_bytes)?;
    if prefetching {
        w.landmark(PREFETCH_LANDMARK, &mut toc)?;
    }
    write_entries(&mut w, &mut toc, &rest, input, &mut done_bytes)?;
    w.finish(&toc)
}

/// Pass one: every entry's byte ranges and TOC metadata, read as Go's `archive/tar`
/// (which stargz-snapshotter and containers/storage use) reads them.
pub(crate) fn plan(input: &mut File) -> Result<Vec<Planned>, ConvertError> {
    input.seek(SeekFrom::Start(0))?;
    let bad = ConvertError::BadInput;
    let mut archive = tar::Archive::new(&mut *input);
    let mut out: Vec<Planned> = Vec::new();
    let mut next_header = 0u64;
    for item in archive.entries().map_err(|e| bad(e.to_string()))? {
        let mut e = item.map_err(|e| bad(format!("reading header: {e}")))?;
        let header_start = next_header;
        let data_start = e.raw_file_position();
        let size = e.size();
        next_header = data_start
            .checked_add(size)
            .and_then(|end| end.checked_next_multiple_of(512))
            .ok_or_else(|| bad(format!("entry size {size} overflows")))?;
        let h = e.header();
        let kind = match h.entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => "reg",
            tar::EntryType::Directory => "dir",
            tar::EntryType::Symlink => "symlink",
            tar::EntryType::Link => "hardlink",
            tar::EntryType::Char => "char",
            tar::EntryType::Block => "block",
            tar::EntryType::Fifo => "fifo",
            tar::EntryType::XGlobalHeader => {
                // Keep its bytes with the next entry's header.
                next_header = header_start;
                continue;
            }
            other => {
                return Err(bad(format!(
                    "unsupported entry type {:?}",
                    other.as_byte() as char
                )))
            }
        };
        let raw_name = e.path_bytes().into_owned();
        let raw_link = e
            .link_name_bytes()
            .map(|l| l.into_owned())
            .unwrap_or_default();
        let raw = String::from_utf8_lossy(&raw_name).into_owned();
        let name = clean_path(&raw).ok_or_else(|| bad(format!("unsafe path {raw:?}")))?;
        let mut t = TocEntry {
            name,
            kind: kind.to_string(),
            mode: h.mode().map_err(|x| bad(x.to_string()))? as i64,
            uid: h.uid().map_err(|x| bad(x.to_string()))? as i64,
            gid: h.gid().map_err(|x| bad(x.to_string()))? as i64,
            mod_time: format_rfc3339(h.mtime().map_err(|x| bad(x.to_string()))? as i64),
            user_name: h.username().ok().flatten().unwrap_or("").to_string(),
            group_name: h.groupname().ok().flatten().unwrap_or("").to_string(),
            ..Default::default()
        };
        if matches!(kind, "char" | "block") {
            t.dev_major = h.device_major().ok().flatten().unwrap_or(0) as i64;
            t.dev_minor = h.device_minor().ok().flatten().unwrap_or(0) as i64;
        }
        if matches!(kind, "symlink" | "hardlink") {
            let link = e
                .link_name()
                .map_err(|x| bad(x.to_string()))?
                .map(|l| l.to_string_lossy().into_owned())
                .unwrap_or_default();
            t.link_name = if kind == "hardlink" {
                clean_path(&link).ok_or_else(|| bad(format!("unsafe link {link:?}")))?
            } else {
                link
            };
        }
        if kind == "reg" {
            t.size = size;
        }
        // A GNU header's atime and ctime fields count when set (first byte not NUL).
        let gnu_time = |field: &[u8; 12], value: io::Result<u64>| {
            (field[0] != 0)
                .then(|| value.ok())
                .flatten()
                .map(|secs| (secs as i64, 0))
        };
        let (mut atime, mut ctime) = match h.as_gnu() {
            Some(g) => (gnu_time(&g.atime, g.atime()), gnu_time(&g.ctime, g.ctime())),
            None => (None, None),
        };
        if let Some(pax) = e.pax_extensions().map_err(|x| bad(x.to_string()))? {
            let mut xattrs = BTreeMap::new();
            for ext in pax.flatten() {
                let time = || ext.value().ok().and_then(crate::index::tar::parse_pax_time);
                let number = || ext.value().ok().and_then(|v| v.parse::<i64>().ok());
                match ext.key().ok() {
                    // A pax mtime overrides the header's (sub-second, or beyond its range).
                    Some("mtime") => {
                        if let Some((secs, nsec)) = time() {
                            t.mod_time = format_rfc3339_nanos(secs, nsec);
                        }
                        continue;
                    }
                    Some("atime") => atime = time().or(atime),
                    Some("ctime") => ctime = time().or(ctime),
                    // Ids too large for the header.
                    Some("uid") => t.uid = number().unwrap_or(t.uid),
                    Some("gid") => t.gid = number().unwrap_or(t.gid),
                    _ => {}
                }
                if let Some(k) = ext.key().ok().and_then(|k| k.strip_prefix("SCHILY.xattr.")) {
                    xattrs.insert(
                        k.to_string(),
                        base64::engine::general_purpose::STANDARD.encode(ext.value_bytes()),
                    );
                }
            }
            if !xattrs.is_empty() {
                t.xattrs = Some(xattrs);
            }
        }
        let rfc3339 = |t: Option<(i64, u32)>| {
            t.filter(|&t| t != (0, 0))
                .map(|(secs, nsec)| format_rfc3339_nanos(secs, nsec))
        };
        out.push(Planned {
            header_start,
            data_start,
            size,
            toc: t,
            raw_name,
            raw_link,
            access_time: rfc3339(atime),
            change_time: rfc3339(ctime),
        });
    }
    Ok(out)
}

/// Writes gzip members and keeps the digests and offsets of everything written.
struct Writer<W: Write> {
    out: W,
    level: u32,
    /// Blob bytes written so far.
    blob_pos: u64,
    blob_hash: Hasher,
    /// Uncompressed tar bytes written so far.
    tar_pos: u64,
    tar_hash: Hasher,
    member: flate2::write::GzEncoder<Vec<u8>>,
}

impl<W: Write> Writer<W> {
    fn new(out: W, level: u32) -> Self {
        Writer {
            out,
            level: level.min(9),
            blob_pos: 0,
            blob_hash: Hasher::new(),
            tar_pos: 0,
            tar_hash: Hasher::new(),
            member: Self::new_member(level),
        }
    }

    fn new_member(level: u32) -> flate2::write::GzEncoder<Vec<u8>> {
        flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level.min(9)))
    }

    fn raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.blob_hash.update(bytes);
        self.blob_pos += bytes.len() as u64;
        Ok(())
    }

    /// Ends the current gzip member; the next tar bytes start a new one.
    fn close_member(&mut self) -> io::Result<()> {
        let member = std::mem::replace(&mut self.member, Self::new_member(self.level));
        let bytes = member.finish()?;
        self.raw(&bytes)
    }

    fn tar(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.member.write_all(bytes)?;
        self.tar_hash.update(bytes);
        self.tar_pos += bytes.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> io::Result<()> {
        let pad = (512 - self.tar_pos % 512) % 512;
        self.tar(&[0u8; 512][..pad as usize])
    }

    /// Copies one entry: header records verbatim, data one gzip member per chunk.
    fn entry(
        &mut self,
        input: &mut File,
        p: &Planned,
        chunk_size: u64,
        toc: &mut Toc,
    ) -> Result<(), ConvertError> {
        let header = read_header(input, p.header_start, p)?;
        self.tar(&header)?;
        let mut first = p.toc.clone();
        if p.toc.kind != "reg" || p.size == 0 {
            if p.size > 0 {
                // Data of a non-regular entry (rare): copy it along.
                copy_range(input, p.data_start, p.size, |b| self.tar(b))?;
                self.pad()?;
            }
            toc.entries.push(first);
            return Ok(());
        }
        let mut file_hash = Hasher::new();
        let mut chunks = Vec::new();
        let mut off = 0u64;
        while off < p.size {
            let len = (p.size - off).min(chunk_size);
            self.close_member()?;
            let blob_offset = self.blob_pos;
            let mut chunk_hash = Hasher::new();
            copy_range(input, p.data_start + off, len, |b| {
                chunk_hash.update(b);
                file_hash.update(b);
                self.tar(b)
            })?;
            chunks.push((blob_offset, off, len, chunk_hash.finish()));
            off += len;
        }
        self.pad()?;
        let n = chunks.len();
        for (i, (blob_offset, chunk_offset, len, digest)) in chunks.into_iter().enumerate() {
            let mut t = if i == 0 {
                std::mem::take(&mut first)
            } else {
                TocEntry {
                    name: p.toc.name.clone(),
                    kind: "chunk".into(),
                    ..Default::default()
                }
            };
            t.offset = blob_offset;
            t.chunk_offset = chunk_offset;
            t.chunk_size = if i + 1 < n { len } else { 0 };
            t.chunk_digest = digest.to_string();
            toc.entries.push(t);
        }
        if let Some(t) = toc.entries.iter_mut().rev().nth(n - 1) {
            t.digest = file_hash.finish().to_string();
        }
        Ok(())
    }

    /// Writes a landmark file (one byte, 0x0f), as stargz-snapshotter does.
    fn landmark(&mut self, name: &str, toc: &mut Toc) -> Result<(), ConvertError> {
        let mut h = tar::Header::new_ustar();
        h.set_path(name)?;
        h.set_size(1);
        h.set_mode(0o444);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        self.tar(h.as_bytes())?;
        self.close_member()?;
        let offset = self.blob_pos;
        self.tar(&[0x0f])?;
        self.pad()?;
        toc.entries.push(TocEntry {
            name: name.to_string(),
            kind: "reg".into(),
            size: 1,
            mode: 0o444,
            mod_time: format_rfc3339(0),
            offset,
            digest: Digest::of(&[0x0f]).to_string(),
            chunk_digest: Digest::of(&[0x0f]).to_string(),
            ..Default::default()
        });
        Ok(())
    }

    /// Writes the TOC entry, the end of the tar and the footer.
    fn finish(mut self, toc: &Toc) -> Result<ConvertedLayer, ConvertError> {
        let json = serde_json::to_vec(toc).map_err(io::Error::other)?;
        let toc_digest = Digest::of(&json);
        self.close_member()?;
        let toc_offset = self.blob_pos;
        let mut h = tar::Header::new_ustar();
        h.set_path(TOC_TAR_NAME)?;
        h.set_size(json.len() as u64);
        h.set_mode(0o444);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        self.tar(h.as_bytes())?;
        self.tar(&json)?;
        self.pad()?;
        self.tar(&[0u8; 1024])?;
        self.close_member()?;
        self.raw(&footer_bytes(toc_offset))?;
        self.out.flush()?;
        let annotations = vec![
            (
                super::estargz::TOC_DIGEST_ANNOTATION.to_string(),
                toc_digest.to_string(),
            ),
            (
                super::estargz::UNCOMPRESSED_SIZE_ANNOTATION.to_string(),
                self.tar_pos.to_string(),
            ),
        ];
        Ok(ConvertedLayer::new(
            (self.blob_hash.finish(), self.blob_pos),
            (self.tar_hash.finish(), self.tar_pos),
            toc_digest,
            annotations,
        ))
    }
}

/// The bytes of `input` from `from` to where `p`'s data starts: its header records,
/// and whatever comes before them from `from` on (padding of the previous entry).
pub(crate) fn read_header(
    input: &mut File,
    from: u64,
    p: &Planned,
) -> Result<Vec<u8>, ConvertError> {
    let len = p
        .data_start
        .checked_sub(from)
        .filter(|&n| n <= 64 << 20)
        .ok_or_else(|| {
            ConvertError::BadInput(format!("{}: implausible header records", p.toc.name))
        })?;
    let mut header = vec![0u8; len as usize];
    input.seek(SeekFrom::Start(from))?;
    input.read_exact(&mut header)?;
    Ok(header)
}

/// Reads `len` bytes at `offset` of `input` in pieces and hands them to `sink`.
pub(crate) fn copy_range(
    input: &mut File,
    offset: u64,
    len: u64,
    mut sink: impl FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<()> {
    input.seek(SeekFrom::Start(offset))?;
    let mut buf = vec![0u8; 256 << 10];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        input.read_exact(&mut buf[..n])?;
        sink(&buf[..n])?;
        left -= n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blob::{BlobReader, FileBlob};
    use crate::index::estargz::index_estargz;
    use crate::index::{decode_chunk, EntryKind};

    #[test]
    fn converts_a_gzip_layer_and_refuses_a_wrong_digest() {
        let mut b = tar::Builder::new(Vec::new());
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 13) as u8).collect();
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o755);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(5);
        // A pax mtime wins over the header's (sub-second here).
        b.append_pax_extensions([("mtime", b"6.25".as_slice())])
            .unwrap();
        b.append_data(&mut h, "bin/tool", &data[..]).unwrap();
        let tar = b.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        let gz = gz.finish().unwrap();
        let mut src = tempfile::NamedTempFile::new().unwrap();
        src.write_all(&gz).unwrap();
        let blob = FileBlob::open(Digest::of(&gz), src.path()).unwrap();
        let mut out = Vec::new();
        let opts = EstargzOptions {
            chunk_size: 30_000,
            ..Default::default()
        };
        let layer = convert_layer(
            &blob,
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
            &mut out,
            &Target::Estargz(opts.clone()),
            None,
        )
        .unwrap();
        let mut dst = tempfile::NamedTempFile::new().unwrap();
        dst.write_all(&out).unwrap();
        let eblob = FileBlob::open(layer.blob_digest, dst.path()).unwrap();
        let ann = layer.annotations().into_iter().collect();
        let idx = index_estargz(&eblob, &ann).unwrap();
        let e = idx
            .entries
            .iter()
            .find(|e| e.kind == EntryKind::Reg)
            .unwrap();
        assert_eq!(
            (e.path.as_str(), e.mode, e.mtime, e.mtime_nsec),
            ("bin/tool", 0o755, 6, 250_000_000)
        );
        assert_eq!(idx.chunks_of(e).len(), 4);
        let mut got = Vec::new();
        for c in idx.chunks_of(e) {
            got.extend(
                decode_chunk(&idx, c, &eblob.read_at(c.blob_offset, c.blob_len).unwrap()).unwrap(),
            );
        }
        assert!(got == data);

        let wrong = FileBlob::open(Digest::of(b"other"), src.path()).unwrap();
        let err = convert_layer(
            &wrong,
            "application/vnd.oci.image.layer.v1.tar+gzip",
            Vec::new(),
            &Target::Estargz(opts),
            None,
        )
        .unwrap_err();
        assert!(matches!(err, ConvertError::Digest(_)), "{err}");

        let config = br#"{"architecture":"amd64","rootfs":{"type":"layers","diff_ids":["sha256:00"]},"x":1}"#;
        let new = set_diff_ids(config, &[layer.diff_id]).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&new).unwrap();
        assert_eq!(v["rootfs"]["diff_ids"][0], layer.diff_id.to_string());
        assert_eq!(v["x"], 1);
        assert!(set_diff_ids(config, &[]).is_err());
    }
}
