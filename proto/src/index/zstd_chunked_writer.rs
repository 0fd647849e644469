//! The zstd:chunked writer: rewrites a plain (uncompressed) tar layer as a
//! zstd:chunked blob, laid out as containers/storage's compressor lays it out, that
//! is still an ordinary tar+zstd stream (`zstd -d | tar t` lists it; the skippable
//! frames are ignored by every zstd decoder):
//!
//! ```text
//! [headers][chunk]…[chunk][padding+headers][chunk]…[padding+end of archive]
//! [skippable: zstd TOC JSON][skippable: zstd tar-split][skippable: 64-byte footer]
//! ```
//!
//! Each bracket before the skippable frames is one zstd frame. Tar header records (with
//! the previous entry's padding) share a frame until an entry with content comes;
//! every chunk of a file's content (`chunker`: content-defined cuts, holes of zeros)
//! is a frame of its own, so a reader fetches and decodes exactly one chunk. The TOC
//! is containers/storage's JSON (CRFS-style entries with `offset`, `endOffset` and,
//! for files of several chunks, `chunk` entries), the tar-split lets containers/storage
//! rebuild the exact tar, and the footer repeats where both are. The decompressed
//! stream is the input tar byte for byte, so the layer's `diff_id` does not change.

mod chunker;
mod tar_split;

use super::convert::{copy_range, plan, read_header, spool, ConvertError, ConvertedLayer, Planned};
use super::toc::{TocEntry, MAX_CHUNK_LEN, MAX_ZERO_CHUNK_LEN};
use super::zstd_chunked::{CHECKSUM_ANNOTATIONS, POSITION_ANNOTATIONS};
use crate::digest::{Digest, Hasher};
use chunker::{Chunker, Cut};
use serde::Serialize;
use std::fs::File;
use std::io::{self, Seek, SeekFrom, Write};
use tar_split::{Crc64, TarSplit};
use zstd::stream::raw::{CParameter, InBuffer, Operation, OutBuffer};

/// Annotation holding `offset:length:uncompressedLength` of the tar-split.
pub const TAR_SPLIT_POSITION_ANNOTATION: &str =
    "io.github.containers.zstd-chunked.tarsplit-position";
/// The only manifest type: CRFS-style JSON.
const MANIFEST_TYPE_CRFS: u64 = 1;
/// The magic of the skippable frames holding the TOC, the tar-split and the footer.
const SKIPPABLE_FRAME_MAGIC: u32 = 0x184D_2A50;
/// The last 8 bytes of the footer.
const FOOTER_MAGIC: &[u8; 8] = b"GNUlInUx";

/// Options of [`convert_to_zstd_chunked`].
#[derive(Debug, Clone)]
pub struct ZstdChunkedOptions {
    /// zstd level, 1–22.
    pub level: i32,
    /// Largest data chunk: content-defined cuts come every 64 KiB on average, this
    /// caps content with none (at most [`MAX_CHUNK_LEN`]).
    pub max_chunk: u64,
}

impl Default for ZstdChunkedOptions {
    fn default() -> Self {
        ZstdChunkedOptions {
            level: 3,
            max_chunk: 4 << 20,
        }
    }
}

/// Converts the uncompressed tar in `input` to zstd:chunked written to `out`.
/// `progress`, if given, is called with the number of content bytes written so far.
pub fn convert_to_zstd_chunked(
    input: &mut File,
    out: impl Write,
    opts: &ZstdChunkedOptions,
    progress: Option<&dyn Fn(u64)>,
) -> Result<ConvertedLayer, ConvertError> {
    let entries = plan(input)?;
    // containers/storage refuses a TOC naming a path twice (and its writer, a tar
    // doing so).
    let mut seen = std::collections::HashSet::new();
    if let Some(p) = entries.iter().find(|p| !seen.insert(p.toc.name.as_str())) {
        return Err(ConvertError::BadInput(format!(
            "{:?} is in the tar twice",
            p.toc.name
        )));
    }
    let tar_len = input.seek(SeekFrom::End(0))?;
    let max_chunk = opts.max_chunk.clamp(1, MAX_CHUNK_LEN);
    let mut frames = Frames::new(out, opts.level)?;
    let mut split = TarSplit::new(opts.level)?;
    let mut toc: Vec<ManifestEntry> = Vec::with_capacity(entries.len());
    // Input bytes copied so far: everything before the current entry's header.
    let mut tar_pos = 0u64;
    let mut done = 0u64;
    for p in &entries {
        let header = read_header(input, tar_pos, p)?;
        frames.tar(&header)?;
        split.segment(&header)?;
        let mut entry = manifest_entry(p);
        let mut crc = Crc64::new();
        let mut chunk_entries = Vec::new();
        if p.toc.kind == "reg" && p.size > 0 {
            chunk_entries =
                write_content(input, p, max_chunk, &mut frames, &mut crc, &mut entry.entry)?;
        } else if p.size > 0 {
            // Data of a non-regular entry (rare): kept with the headers.
            copy_range(input, p.data_start, p.size, |b| {
                crc.update(b);
                frames.tar(b)
            })?;
        }
        let crc = (p.size > 0).then(|| crc.finish());
        split.entry(&p.raw_name, p.size, crc)?;
        toc.push(entry);
        toc.extend(chunk_entries.into_iter().map(|entry| ManifestEntry {
            entry,
            access_time: None,
            change_time: None,
        }));
        tar_pos = p.data_start + p.size;
        done += p.size;
        if let Some(progress) = progress {
            progress(done);
        }
    }
    // The last padding, the end-of-archive blocks and anything after them.
    let rest = tar_len.checked_sub(tar_pos).ok_or_else(|| {
        ConvertError::BadInput(format!("entries run past the tar's {tar_len} bytes"))
    })?;
    copy_range(input, tar_pos, rest, |b| {
        split.segment(b)?;
        frames.tar(b)
    })?;
    frames.end_frame()?;
    finish(frames, &toc, split, opts.level)
}

/// Converts an uncompressed tar stream (read once, spooled to a temporary file) to
/// zstd:chunked written to `out`.
pub fn convert_stream_to_zstd_chunked(
    input: impl io::Read,
    out: impl Write,
    opts: &ZstdChunkedOptions,
    progress: Option<&dyn Fn(u64)>,
) -> Result<ConvertedLayer, ConvertError> {
    convert_to_zstd_chunked(&mut spool(input)?, out, opts, progress)
}

/// One TOC entry as containers/storage writes it: the shared fields, and the access
/// and change times it compares with the tar-split's.
#[derive(Serialize)]
struct ManifestEntry {
    #[serde(flatten)]
    entry: TocEntry,
    #[serde(rename = "accesstime", skip_serializing_if = "Option::is_none")]
    access_time: Option<String>,
    #[serde(rename = "changetime", skip_serializing_if = "Option::is_none")]
    change_time: Option<String>,
}

/// The whole TOC document.
#[derive(Serialize)]
struct Manifest<'a> {
    version: i64,
    entries: &'a [ManifestEntry],
    #[serde(rename = "tarSplitDigest")]
    tar_split_digest: String,
}

/// `p`'s TOC entry: names and link targets exactly as in the tar (containers/storage
/// checks them against the tar-split's headers), no user or group names (it has none).
fn manifest_entry(p: &Planned) -> ManifestEntry {
    let mut entry = p.toc.clone();
    entry.name = String::from_utf8_lossy(&p.raw_name).into_owned();
    if matches!(entry.kind.as_str(), "symlink" | "hardlink") {
        entry.link_name = String::from_utf8_lossy(&p.raw_link).into_owned();
    }
    entry.user_name.clear();
    entry.group_name.clear();
    ManifestEntry {
        entry,
        access_time: p.access_time.clone(),
        change_time: p.change_time.clone(),
    }
}

/// A chunk written: where its frame starts and what it holds.
struct WrittenChunk {
    blob_offset: u64,
    file_offset: u64,
    len: u64,
    digest: Digest,
    zeros: bool,
}

/// Writes a regular file's content, one frame per chunk, and fills in its TOC entry
/// (offsets, digests); returns the `chunk` entries to follow it when there are
/// several chunks.
fn write_content<W: Write>(
    input: &mut File,
    p: &Planned,
    max_chunk: u64,
    frames: &mut Frames<W>,
    crc: &mut Crc64,
    e: &mut TocEntry,
) -> io::Result<Vec<TocEntry>> {
    let mut file_hash = Hasher::new();
    let mut chunks: Vec<WrittenChunk> = Vec::new();
    // The data chunk being written: its first entry in `chunks` and its hash.
    let mut open: Option<Hasher> = None;
    let mut file_offset = 0u64;
    let mut cut = |c: Cut<'_>| -> io::Result<()> {
        match c {
            Cut::Data(bytes) => {
                let hash = match &mut open {
                    Some(h) => h,
                    None => {
                        chunks.push(WrittenChunk {
                            blob_offset: frames.end_frame()?,
                            file_offset,
                            len: 0,
                            digest: Digest::of(b""),
                            zeros: false,
                        });
                        open.insert(Hasher::new())
                    }
                };
                hash.update(bytes);
                frames.tar(bytes)?;
                if let Some(last) = chunks.last_mut() {
                    last.len += bytes.len() as u64;
                }
                file_offset += bytes.len() as u64;
            }
            Cut::EndData => {
                if let (Some(hash), Some(last)) = (open.take(), chunks.last_mut()) {
                    last.digest = hash.finish();
                    frames.end_frame()?;
                }
            }
            Cut::Hole(len) => {
                let blob_offset = frames.end_frame()?;
                let mut hash = Hasher::new();
                let zeros = [0u8; 64 << 10];
                let mut left = len;
                while left > 0 {
                    let n = left.min(zeros.len() as u64) as usize;
                    hash.update(&zeros[..n]);
                    frames.tar(&zeros[..n])?;
                    left -= n as u64;
                }
                frames.end_frame()?;
                chunks.push(WrittenChunk {
                    blob_offset,
                    file_offset,
                    len,
                    digest: hash.finish(),
                    zeros: true,
                });
                file_offset += len;
            }
        }
        Ok(())
    };
    let mut chunker = Chunker::new(max_chunk, MAX_ZERO_CHUNK_LEN);
    copy_range(input, p.data_start, p.size, |b| {
        crc.update(b);
        file_hash.update(b);
        chunker.feed(b, &mut cut)
    })?;
    chunker.finish(&mut cut)?;
    let end_offset = frames.end_frame()?;

    e.digest = file_hash.finish().to_string();
    e.end_offset = end_offset;
    e.offset = chunks.first().map_or(0, |c| c.blob_offset);
    if chunks.len() == 1 && !chunks[0].zeros {
        // One chunk of data: the file's digest and offsets say it all. (A hole is
        // marked as one even alone: readers need not fetch it, and may allow holes
        // longer than data chunks.)
        return Ok(Vec::new());
    }
    let mut rest = Vec::with_capacity(chunks.len() - 1);
    for (i, c) in chunks.iter().enumerate() {
        let t = if i == 0 {
            &mut *e
        } else {
            rest.push(TocEntry {
                name: e.name.clone(),
                kind: "chunk".into(),
                ..Default::default()
            });
            rest.last_mut().expect("just pushed")
        };
        t.offset = c.blob_offset;
        t.chunk_offset = c.file_offset;
        t.chunk_size = c.len;
        t.chunk_digest = c.digest.to_string();
        t.chunk_type = if c.zeros {
            "zeros".into()
        } else {
            String::new()
        };
    }
    Ok(rest)
}

/// Writes the TOC, the tar-split and the footer, each in a skippable frame.
fn finish<W: Write>(
    mut frames: Frames<W>,
    toc: &[ManifestEntry],
    split: TarSplit,
    level: i32,
) -> Result<ConvertedLayer, ConvertError> {
    let (split_bytes, split_len) = split.finish()?;
    let json = serde_json::to_vec(&Manifest {
        version: 1,
        entries: toc,
        tar_split_digest: Digest::of(&split_bytes).to_string(),
    })
    .map_err(io::Error::other)?;
    let compressed = zstd::bulk::compress(&json, level)?;
    let toc_offset = frames.skippable(&compressed)?;
    let split_offset = frames.skippable(&split_bytes)?;
    let mut footer = Vec::with_capacity(64);
    for v in [
        toc_offset,
        compressed.len() as u64,
        json.len() as u64,
        MANIFEST_TYPE_CRFS,
        split_offset,
        split_bytes.len() as u64,
        split_len,
    ] {
        footer.extend_from_slice(&v.to_le_bytes());
    }
    footer.extend_from_slice(FOOTER_MAGIC);
    frames.skippable(&footer)?;
    frames.out.flush()?;
    let toc_digest = Digest::of(&compressed);
    let annotations = vec![
        (CHECKSUM_ANNOTATIONS[0].to_string(), toc_digest.to_string()),
        (
            POSITION_ANNOTATIONS[0].to_string(),
            format!(
                "{toc_offset}:{}:{}:{MANIFEST_TYPE_CRFS}",
                compressed.len(),
                json.len()
            ),
        ),
        (
            TAR_SPLIT_POSITION_ANNOTATION.to_string(),
            format!("{split_offset}:{}:{split_len}", split_bytes.len()),
        ),
    ];
    Ok(ConvertedLayer::new(
        (frames.blob_hash.finish(), frames.blob_pos),
        (frames.tar_hash.finish(), frames.tar_pos),
        toc_digest,
        annotations,
    ))
}

/// Writes zstd frames (one reused compression context) and keeps the digests and
/// offsets of everything written.
struct Frames<W: Write> {
    out: W,
    encoder: zstd::stream::raw::Encoder<'static>,
    buf: Vec<u8>,
    /// Tar bytes went into the current frame since it started.
    open: bool,
    /// Blob bytes written so far.
    blob_pos: u64,
    blob_hash: Hasher,
    /// Uncompressed tar bytes written so far.
    tar_pos: u64,
    tar_hash: Hasher,
}

impl<W: Write> Frames<W> {
    fn new(out: W, level: i32) -> io::Result<Self> {
        let mut encoder = zstd::stream::raw::Encoder::new(level)?;
        // A checksum per frame: plain `zstd -d` verifies each chunk too.
        encoder.set_parameter(CParameter::ChecksumFlag(true))?;
        Ok(Frames {
            out,
            encoder,
            buf: vec![0u8; 256 << 10],
            open: false,
            blob_pos: 0,
            blob_hash: Hasher::new(),
            tar_pos: 0,
            tar_hash: Hasher::new(),
        })
    }

    /// Writes blob bytes as they are.
    fn raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.blob_hash.update(bytes);
        self.blob_pos += bytes.len() as u64;
        Ok(())
    }

    /// Writes the first `n` bytes the encoder left in `buf`.
    fn emit(&mut self, n: usize) -> io::Result<()> {
        let bytes = &self.buf[..n];
        self.out.write_all(bytes)?;
        self.blob_hash.update(bytes);
        self.blob_pos += n as u64;
        Ok(())
    }

    /// Compresses tar bytes into the current frame (starting one if none is open).
    fn tar(&mut self, bytes: &[u8]) -> io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        self.open = true;
        self.tar_hash.update(bytes);
        self.tar_pos += bytes.len() as u64;
        let mut input = InBuffer::around(bytes);
        while input.pos() < bytes.len() {
            let mut output = OutBuffer::around(&mut self.buf[..]);
            self.encoder.run(&mut input, &mut output)?;
            let n = output.pos();
            self.emit(n)?;
        }
        Ok(())
    }

    /// Ends the open frame, if any; returns the blob offset the next frame starts at.
    fn end_frame(&mut self) -> io::Result<u64> {
        if self.open {
            loop {
                let mut output = OutBuffer::around(&mut self.buf[..]);
                let left = self.encoder.finish(&mut output, true)?;
                let n = output.pos();
                self.emit(n)?;
                if left == 0 {
                    break;
                }
            }
            self.encoder.reinit()?;
            self.open = false;
        }
        Ok(self.blob_pos)
    }

    /// Writes `data` as a skippable frame; returns the blob offset of `data`.
    fn skippable(&mut self, data: &[u8]) -> io::Result<u64> {
        let len = u32::try_from(data.len()).map_err(|_| {
            io::Error::other(format!("{} bytes for one skippable frame", data.len()))
        })?;
        let mut head = SKIPPABLE_FRAME_MAGIC.to_le_bytes().to_vec();
        head.extend_from_slice(&len.to_le_bytes());
        self.raw(&head)?;
        let offset = self.blob_pos;
        self.raw(data)?;
        Ok(offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blob::BlobReader;
    use crate::index::robustness_tests::MemBlob;
    use crate::index::tar::index_tar;
    use crate::index::zstd_chunked::{index_zstd_chunked, parse_position};
    use crate::index::{decode_chunk, ChunkEncoding, EntryKind, LayerIndex};
    use chunker::tests::pseudo_random;
    use std::collections::HashMap;

    fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(1000);
        h.set_gid(100);
        h.set_mtime(1_700_000_000);
        h.set_size(size);
        h
    }

    /// A layer with every kind of entry the writer treats differently: directories,
    /// an empty file, a small one, one of many chunks with a hole, a symlink, a hard
    /// link, a long name, an xattr, a whiteout.
    fn sample_tar() -> (Vec<u8>, Vec<u8>) {
        let mut big = pseudo_random(700_000, 3);
        big[200_000..210_000].fill(0);
        (big[199_999], big[210_000]) = (1, 1);
        let mut b = tar::Builder::new(Vec::new());
        let dir = |b: &mut tar::Builder<Vec<u8>>, name: &str| {
            let mut h = header(tar::EntryType::Directory, 0o755, 0);
            b.append_data(&mut h, name, io::empty()).unwrap();
        };
        dir(&mut b, "etc/");
        dir(&mut b, "usr/");
        let mut h = header(tar::EntryType::Regular, 0o644, 0);
        b.append_data(&mut h, "etc/empty", io::empty()).unwrap();
        b.append_pax_extensions([("SCHILY.xattr.user.note", b"v".as_slice())])
            .unwrap();
        let mut h = header(tar::EntryType::Regular, 0o600, 6);
        b.append_data(&mut h, "etc/small", &b"hello\n"[..]).unwrap();
        let mut h = header(tar::EntryType::Regular, 0o755, big.len() as u64);
        b.append_data(&mut h, "usr/big.bin", &big[..]).unwrap();
        let mut h = header(tar::EntryType::Symlink, 0o777, 0);
        b.append_link(&mut h, "usr/link", "big.bin").unwrap();
        let mut h = header(tar::EntryType::Link, 0o755, 0);
        b.append_link(&mut h, "usr/hard", "usr/big.bin").unwrap();
        let long = format!("usr/{}", "n".repeat(150));
        let mut h = header(tar::EntryType::Regular, 0o644, 3);
        b.append_data(&mut h, &long, &b"abc"[..]).unwrap();
        let mut h = header(tar::EntryType::Regular, 0o644, 0);
        b.append_data(&mut h, "etc/.wh.gone", io::empty()).unwrap();
        (b.into_inner().unwrap(), big)
    }

    fn convert(
        tar: &[u8],
        opts: &ZstdChunkedOptions,
    ) -> (MemBlob, HashMap<String, String>, ConvertedLayer) {
        let mut out = Vec::new();
        let layer = convert_stream_to_zstd_chunked(tar, &mut out, opts, None).unwrap();
        assert_eq!(
            (layer.blob_digest, layer.blob_size),
            (Digest::of(&out), out.len() as u64)
        );
        let ann = layer.annotations().into_iter().collect();
        (MemBlob::new(out), ann, layer)
    }

    fn read_file(idx: &LayerIndex, blob: &MemBlob, path: &str) -> Vec<u8> {
        let e = idx.entries.iter().find(|e| e.path == path).unwrap();
        let mut data = Vec::new();
        for c in idx.chunks_of(e) {
            let raw = blob.read_at(c.blob_offset, c.blob_len).unwrap();
            data.extend(decode_chunk(idx, c, &raw).unwrap());
        }
        data
    }

    /// Entries without where their chunks are listed.
    fn metadata(idx: &LayerIndex) -> Vec<crate::index::Entry> {
        idx.entries
            .iter()
            .map(|e| {
                let mut e = e.clone();
                (e.first_chunk, e.chunk_count) = (0, 0);
                e
            })
            .collect()
    }

    #[test]
    fn round_trips_through_the_reader_and_plain_zstd() {
        let (tar, big) = sample_tar();
        let (blob, ann, layer) = convert(&tar, &ZstdChunkedOptions::default());
        // Plain zstd decoding skips the skippable frames and gives the tar back.
        let plain = zstd::decode_all(&blob.read_at(0, blob.size()).unwrap()[..]).unwrap();
        assert!(
            plain == tar,
            "decompressed stream differs from the input tar"
        );
        assert_eq!(layer.diff_id, Digest::of(&tar));
        assert_eq!(layer.uncompressed_size, tar.len() as u64);

        let idx = index_zstd_chunked(&blob, &ann).unwrap();
        let full = index_tar(&MemBlob::new(tar.clone())).unwrap();
        assert_eq!(metadata(&idx), metadata(&full));
        assert_eq!(read_file(&idx, &blob, "usr/big.bin"), big);
        assert_eq!(read_file(&idx, &blob, "etc/small"), b"hello\n");
        let long = format!("usr/{}", "n".repeat(150));
        assert_eq!(read_file(&idx, &blob, &long), b"abc");
        assert!(read_file(&idx, &blob, "etc/empty").is_empty());

        // The big file: many content-defined chunks, its 10000 zeros one hole, and
        // every data chunk a frame of its own (a read fetches only its chunk).
        let e = idx
            .entries
            .iter()
            .find(|e| e.path == "usr/big.bin")
            .unwrap();
        let chunks = idx.chunks_of(e);
        assert!(chunks.len() > 4, "{} chunks", chunks.len());
        let holes: Vec<_> = chunks
            .iter()
            .filter(|c| c.encoding == ChunkEncoding::Zeros)
            .map(|c| (c.file_offset, c.len))
            .collect();
        assert_eq!(holes, [(200_000, 10_000)]);
        let data: Vec<_> = chunks
            .iter()
            .filter(|c| c.encoding != ChunkEncoding::Zeros)
            .collect();
        for (c, next) in data.iter().zip(data.iter().skip(1)) {
            assert_eq!(c.encoding, ChunkEncoding::Zstd { skip: 0 });
            assert!(
                c.blob_offset + c.blob_len <= next.blob_offset && c.blob_len < c.len + 64,
                "a chunk fetch reads more than its frame"
            );
        }
        let hard = idx.entries.iter().find(|e| e.path == "usr/hard").unwrap();
        assert_eq!(
            (hard.kind, hard.link()),
            (EntryKind::Hardlink, "usr/big.bin")
        );
        let small = idx.entries.iter().find(|e| e.path == "etc/small").unwrap();
        assert_eq!(small.xattrs(), [("user.note".to_string(), b"v".to_vec())]);
    }

    #[test]
    fn files_larger_than_the_chunk_cap_are_cut_at_it() {
        let data = vec![7u8; 300_000]; // no content-defined cut in constant bytes
        let mut b = tar::Builder::new(Vec::new());
        let mut h = header(tar::EntryType::Regular, 0o644, data.len() as u64);
        b.append_data(&mut h, "f", &data[..]).unwrap();
        let tar = b.into_inner().unwrap();
        let opts = ZstdChunkedOptions {
            level: 1,
            max_chunk: 100_000,
        };
        let (blob, ann, _) = convert(&tar, &opts);
        let idx = index_zstd_chunked(&blob, &ann).unwrap();
        let e = &idx.entries[0];
        let lens: Vec<u64> = idx.chunks_of(e).iter().map(|c| c.len).collect();
        assert_eq!(lens, [100_000, 100_000, 100_000]);
        assert_eq!(read_file(&idx, &blob, "f"), data);
    }

    #[test]
    fn toc_tar_split_and_footer_are_as_containers_storage_writes_them() {
        let (tar, _) = sample_tar();
        let (blob, ann, layer) = convert(&tar, &ZstdChunkedOptions::default());
        let bytes = blob.read_at(0, blob.size()).unwrap();
        let pos = parse_position(&ann[POSITION_ANNOTATIONS[0]]).unwrap();
        assert_eq!(ann[CHECKSUM_ANNOTATIONS[0]], layer.toc_digest.to_string());
        let at = |o: u64, n: u64| &bytes[o as usize..(o + n) as usize];
        let toc_z = at(pos.offset, pos.length);
        assert_eq!(Digest::of(toc_z), layer.toc_digest);
        let toc: serde_json::Value =
            serde_json::from_slice(&zstd::decode_all(toc_z).unwrap()).unwrap();
        // Names as the tar has them; chunk entries after their file.
        let names: Vec<&str> = toc["entries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["type"] != "chunk")
            .map(|e| e["name"].as_str().unwrap())
            .collect();
        assert_eq!(&names[..3], ["etc/", "usr/", "etc/empty"]);
        assert!(toc["entries"][0].get("userName").is_none());

        // tar-split: its digest in the TOC, its lines rebuild the tar with the files'
        // contents.
        let split_pos: Vec<u64> = ann[TAR_SPLIT_POSITION_ANNOTATION]
            .split(':')
            .map(|v| v.parse().unwrap())
            .collect();
        let split_z = at(split_pos[0], split_pos[1]);
        assert_eq!(toc["tarSplitDigest"], Digest::of(split_z).to_string());
        let split = zstd::decode_all(split_z).unwrap();
        assert_eq!(split.len() as u64, split_pos[2]);
        let mut contents = HashMap::new();
        let mut archive = tar::Archive::new(&tar[..]);
        for e in archive.entries().unwrap() {
            let mut e = e.unwrap();
            let name = String::from_utf8(e.path_bytes().into_owned()).unwrap();
            let mut data = Vec::new();
            io::Read::read_to_end(&mut e, &mut data).unwrap();
            contents.insert(name, data);
        }
        let b64 = |v: &serde_json::Value| {
            base64::Engine::decode(
                &base64::engine::general_purpose::STANDARD,
                v.as_str().unwrap(),
            )
            .unwrap()
        };
        let mut rebuilt = Vec::new();
        for (i, line) in split
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .enumerate()
        {
            let v: serde_json::Value = serde_json::from_slice(line).unwrap();
            assert_eq!(v["position"], i);
            if v["type"] == 2 {
                rebuilt.extend(b64(&v["payload"]));
                continue;
            }
            let data = &contents[v["name"].as_str().unwrap()];
            assert_eq!(v["size"].as_u64().unwrap_or(0), data.len() as u64);
            if data.is_empty() {
                assert!(v["payload"].is_null());
            } else {
                let mut crc = Crc64::new();
                crc.update(data);
                assert_eq!(b64(&v["payload"]), crc.finish().to_be_bytes());
            }
            rebuilt.extend(data);
        }
        assert!(rebuilt == tar, "tar-split does not rebuild the tar");

        // The footer: the last skippable frame, 64 bytes.
        let footer = &bytes[bytes.len() - 64..];
        let word = |i: usize| u64::from_le_bytes(footer[i * 8..i * 8 + 8].try_into().unwrap());
        assert_eq!(
            (word(0), word(1), word(2), word(3)),
            (pos.offset, pos.length, pos.uncompressed, 1)
        );
        assert_eq!(
            (word(4), word(5), word(6)),
            (split_pos[0], split_pos[1], split_pos[2])
        );
        assert_eq!(&footer[56..], b"GNUlInUx");
        assert_eq!(
            &bytes[bytes.len() - 72..bytes.len() - 68],
            &0x184D_2A50u32.to_le_bytes()
        );
    }
}
