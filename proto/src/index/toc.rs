//! The JSON table of contents shared (with small differences) by eStargz
//! (`stargz.index.json`) and zstd:chunked (containers/storage's manifest): both descend
//! from CRFS. This module parses it and turns it into [`super::LayerIndex`] entries and chunks.

use super::model::{clean_path, Chunk, ChunkEncoding, Entry, EntryKind, IndexError};
use super::tar::apply_oci_markers;
use crate::digest::Digest;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Largest chunk (decoded bytes) an index may declare. Real producers cut 4 MiB
/// (eStargz, skiff's own indexes) or smaller (zstd:chunked's rolling checksum); a
/// chunk is decoded into memory whole, once per reader, so a TOC naming 1 GiB chunks
/// would cost gigabytes per read.
pub const MAX_CHUNK_LEN: u64 = 64 << 20;

/// Largest run of zeros (a hole, zstd:chunked's `zeros` chunks) one chunk may cover:
/// holes cost no blob bytes, so they may be larger than data chunks.
pub const MAX_ZERO_CHUNK_LEN: u64 = 1 << 30;

/// The largest length a chunk of this kind may have.
pub(crate) fn max_chunk_len(zeros: bool) -> u64 {
    if zeros {
        MAX_ZERO_CHUNK_LEN
    } else {
        MAX_CHUNK_LEN
    }
}

/// A whole TOC document.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Toc {
    /// Format version (1).
    #[serde(default)]
    pub version: i64,
    /// Entries in blob order; `chunk` entries follow their `reg` entry.
    #[serde(default)]
    pub entries: Vec<TocEntry>,
}

/// One TOC entry, with the union of the fields both formats use.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TocEntry {
    /// Path in the layer.
    pub name: String,
    /// `dir`, `reg`, `symlink`, `hardlink`, `char`, `block`, `fifo` or `chunk`.
    #[serde(rename = "type")]
    pub kind: String,
    /// File size (for `reg`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub size: u64,
    /// Modification time, RFC 3339.
    #[serde(default, rename = "modtime", skip_serializing_if = "String::is_empty")]
    pub mod_time: String,
    /// Symlink or hard-link target.
    #[serde(default, rename = "linkName", skip_serializing_if = "String::is_empty")]
    pub link_name: String,
    /// Permission bits (tar mode).
    #[serde(default, skip_serializing_if = "is_zero_i")]
    pub mode: i64,
    /// Owner.
    #[serde(default, skip_serializing_if = "is_zero_i")]
    pub uid: i64,
    /// Group.
    #[serde(default, skip_serializing_if = "is_zero_i")]
    pub gid: i64,
    /// Owner name (informational).
    #[serde(default, rename = "userName", skip_serializing_if = "String::is_empty")]
    pub user_name: String,
    /// Group name (informational).
    #[serde(
        default,
        rename = "groupName",
        skip_serializing_if = "String::is_empty"
    )]
    pub group_name: String,
    /// Device major.
    #[serde(default, rename = "devMajor", skip_serializing_if = "is_zero_i")]
    pub dev_major: i64,
    /// Device minor.
    #[serde(default, rename = "devMinor", skip_serializing_if = "is_zero_i")]
    pub dev_minor: i64,
    /// Extended attributes, values base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xattrs: Option<BTreeMap<String, String>>,
    /// Digest of the whole file's content.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub digest: String,
    /// Blob offset of the (first) chunk's compressed frame or gzip member.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub offset: u64,
    /// zstd:chunked: blob offset just after the file's last frame.
    #[serde(default, rename = "endOffset", skip_serializing_if = "is_zero")]
    pub end_offset: u64,
    /// Offset of this chunk within the file.
    #[serde(default, rename = "chunkOffset", skip_serializing_if = "is_zero")]
    pub chunk_offset: u64,
    /// Length of this chunk; 0 means "to the end of the file".
    #[serde(default, rename = "chunkSize", skip_serializing_if = "is_zero")]
    pub chunk_size: u64,
    /// Digest of this chunk's uncompressed bytes.
    #[serde(
        default,
        rename = "chunkDigest",
        skip_serializing_if = "String::is_empty"
    )]
    pub chunk_digest: String,
    /// eStargz: bytes to skip after inflating the member at `offset`.
    #[serde(default, rename = "innerOffset", skip_serializing_if = "is_zero")]
    pub inner_offset: u64,
    /// zstd:chunked: `""` for data, `"zeros"` for a hole.
    #[serde(
        default,
        rename = "chunkType",
        skip_serializing_if = "String::is_empty"
    )]
    pub chunk_type: String,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}
fn is_zero_i(v: &i64) -> bool {
    *v == 0
}

/// How a TOC format stores chunk bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flavor {
    /// eStargz: gzip members; a chunk runs to the next distinct data offset.
    Estargz,
    /// zstd:chunked: zstd frames; a file's last chunk ends at `endOffset`.
    ZstdChunked,
}

/// Entries and chunks made from a TOC, plus the indexes of entries listed before
/// `.prefetch.landmark`.
pub(crate) struct Converted {
    pub entries: Vec<Entry>,
    pub chunks: Vec<Chunk>,
    pub prefetch: Vec<u32>,
}

/// eStargz landmark marking the end of the prefetch region.
pub const PREFETCH_LANDMARK: &str = ".prefetch.landmark";
/// eStargz landmark saying there is nothing to prefetch.
pub const NO_PREFETCH_LANDMARK: &str = ".no.prefetch.landmark";

struct PendingChunk {
    offset: u64,
    chunk_offset: u64,
    chunk_size: u64,
    digest: String,
    inner: u64,
    zeros: bool,
}

/// Turns a parsed TOC into index entries. `data_end` is where chunk data must end
/// (the TOC's own offset); every offset is checked against it.
pub(crate) fn convert(
    toc: &Toc,
    flavor: Flavor,
    blob: Digest,
    data_end: u64,
) -> Result<Converted, IndexError> {
    let format = match flavor {
        Flavor::Estargz => "estargz",
        Flavor::ZstdChunked => "zstd:chunked",
    };
    let malformed = |reason: String| IndexError::Malformed {
        format,
        blob,
        reason,
    };
    // Distinct data offsets, for eStargz chunk ends.
    let mut offsets: Vec<u64> = toc
        .entries
        .iter()
        .filter(|e| (e.kind == "reg" && e.size > 0) || e.kind == "chunk")
        .map(|e| e.offset)
        .collect();
    offsets.push(data_end);
    offsets.sort_unstable();
    offsets.dedup();

    let mut entries: Vec<Entry> = Vec::new();
    let mut chunks: Vec<Chunk> = Vec::new();
    let mut prefetch = Vec::new();
    let mut landmark_seen = false;
    let mut pending: Vec<PendingChunk> = Vec::new();
    // (entry index, file digest, end offset) of the regular file being collected.
    let mut current: Option<(usize, String, u64)> = None;

    let mut zeros = ZeroDigests::default();
    let mut finish = |current: &mut Option<(usize, String, u64)>,
                      pending: &mut Vec<PendingChunk>,
                      entries: &mut Vec<Entry>,
                      chunks: &mut Vec<Chunk>|
     -> Result<(), IndexError> {
        let Some((idx, file_digest, end_offset)) = current.take() else {
            return Ok(());
        };
        let entry = &mut entries[idx];
        let size = entry.size;
        entry.first_chunk =
            u32::try_from(chunks.len()).map_err(|_| malformed("too many chunks".into()))?;
        let mut expect = 0u64;
        let n = pending.len();
        for (i, p) in pending.iter().enumerate() {
            if p.chunk_offset != expect {
                return Err(malformed(format!(
                    "{}: chunk at file offset {} where {expect} was expected",
                    entry.path, p.chunk_offset
                )));
            }
            let len = if p.chunk_size == 0 {
                size - expect
            } else {
                p.chunk_size
            };
            if len == 0 || expect.checked_add(len).is_none_or(|e| e > size) {
                return Err(malformed(format!(
                    "{}: chunk of {len} bytes at {expect} does not fit a {size}-byte file",
                    entry.path
                )));
            }
            if len > max_chunk_len(p.zeros) {
                return Err(malformed(format!(
                    "{}: chunk of {len} bytes at {expect} is larger than the {} allowed",
                    entry.path,
                    max_chunk_len(p.zeros)
                )));
            }
            let digest_text = if !p.digest.is_empty() {
                &p.digest
            } else if n == 1 {
                &file_digest
            } else {
                ""
            };
            let digest: Digest = if p.zeros && digest_text.is_empty() {
                zeros.get(len).ok_or_else(|| {
                    malformed(format!(
                        "{}: digest-less zero chunks of more than {MAX_ZERO_HASHING} distinct bytes",
                        entry.path
                    ))
                })?
            } else {
                digest_text.parse().map_err(|_| {
                    malformed(format!(
                        "{}: chunk at {expect} has no usable digest ({digest_text:?})",
                        entry.path
                    ))
                })?
            };
            let (blob_offset, blob_len, encoding) = if p.zeros {
                (0, 0, ChunkEncoding::Zeros)
            } else {
                if p.offset >= data_end {
                    return Err(malformed(format!(
                        "{}: chunk offset {} is outside the data region (ends at {data_end})",
                        entry.path, p.offset
                    )));
                }
                let end = match flavor {
                    Flavor::ZstdChunked => pending[i + 1..]
                        .iter()
                        .map(|q| q.offset)
                        .find(|&o| o > p.offset)
                        .unwrap_or(end_offset),
                    Flavor::Estargz => 0,
                };
                let end = if end > p.offset && end <= data_end {
                    end
                } else {
                    let k = offsets.partition_point(|&o| o <= p.offset);
                    offsets.get(k).copied().unwrap_or(data_end)
                };
                let encoding = match flavor {
                    Flavor::Estargz => ChunkEncoding::Gzip { skip: p.inner },
                    Flavor::ZstdChunked => ChunkEncoding::Zstd { skip: p.inner },
                };
                (p.offset, end - p.offset, encoding)
            };
            chunks.push(Chunk {
                blob_offset,
                blob_len,
                file_offset: expect,
                len,
                digest,
                encoding,
            });
            expect += len;
        }
        if expect != size {
            return Err(malformed(format!(
                "{}: chunks cover {expect} of {size} bytes",
                entry.path
            )));
        }
        entry.chunk_count = u32::try_from(n).map_err(|_| malformed("too many chunks".into()))?;
        pending.clear();
        Ok(())
    };

    for te in &toc.entries {
        if te.kind == "chunk" {
            let Some((idx, _, _)) = &current else {
                return Err(malformed(format!(
                    "chunk entry {:?} without a file",
                    te.name
                )));
            };
            let owner = &entries[*idx].path;
            if clean_path(&te.name).as_deref() != Some(owner.as_str()) {
                return Err(malformed(format!(
                    "chunk entry {:?} follows file {owner:?}",
                    te.name
                )));
            }
            pending.push(PendingChunk {
                offset: te.offset,
                chunk_offset: te.chunk_offset,
                chunk_size: te.chunk_size,
                digest: te.chunk_digest.clone(),
                inner: te.inner_offset,
                zeros: te.chunk_type == "zeros",
            });
            continue;
        }
        finish(&mut current, &mut pending, &mut entries, &mut chunks)?;

        let path = clean_path(&te.name).ok_or_else(|| IndexError::UnsafePath {
            blob,
            path: te.name.clone(),
        })?;
        if te.name.starts_with('/') {
            return Err(IndexError::UnsafePath {
                blob,
                path: te.name.clone(),
            });
        }
        if flavor == Flavor::Estargz && (path == PREFETCH_LANDMARK || path == NO_PREFETCH_LANDMARK)
        {
            if path == PREFETCH_LANDMARK && !landmark_seen {
                landmark_seen = true;
                prefetch = entries
                    .iter()
                    .enumerate()
                    .filter(|(_, e)| e.kind == EntryKind::Reg && e.size > 0)
                    .map(|(i, _)| i as u32)
                    .collect();
            }
            continue;
        }
        let kind = match te.kind.as_str() {
            "dir" => EntryKind::Dir,
            "reg" => EntryKind::Reg,
            "symlink" => EntryKind::Symlink,
            "hardlink" => EntryKind::Hardlink,
            "char" => EntryKind::Char,
            "block" => EntryKind::Block,
            "fifo" => EntryKind::Fifo,
            other => return Err(malformed(format!("{path}: unknown entry type {other:?}"))),
        };
        let mut entry = Entry::new(path, kind);
        if apply_oci_markers(&mut entry).map_err(malformed)? {
            entries.push(entry);
            continue;
        }
        let num = |v: i64, what: &str| {
            u32::try_from(v).map_err(|_| malformed(format!("{}: {what} {v} out of range", te.name)))
        };
        entry.mode = (te.mode & 0o7777) as u32;
        entry.uid = num(te.uid, "uid")?;
        entry.gid = num(te.gid, "gid")?;
        entry.set_dev(
            num(te.dev_major, "device major")?,
            num(te.dev_minor, "device minor")?,
        );
        if !te.mod_time.is_empty() {
            let (secs, nsec) = parse_rfc3339(&te.mod_time)
                .ok_or_else(|| malformed(format!("{}: bad modtime {:?}", te.name, te.mod_time)))?;
            entry.mtime = secs;
            entry.mtime_nsec = nsec;
        }
        if let Some(xattrs) = &te.xattrs {
            for (k, v) in xattrs {
                let value = base64::engine::general_purpose::STANDARD
                    .decode(v)
                    .map_err(|e| malformed(format!("{}: xattr {k}: {e}", te.name)))?;
                entry.push_xattr(k.clone(), value);
            }
        }
        match kind {
            EntryKind::Symlink => entry.set_link(te.link_name.clone()),
            EntryKind::Hardlink => {
                entry.set_link(
                    clean_path(&te.link_name)
                        .filter(|l| !l.is_empty())
                        .ok_or_else(|| IndexError::UnsafePath {
                            blob,
                            path: te.link_name.clone(),
                        })?,
                );
            }
            EntryKind::Reg => {
                entry.size = te.size;
                if te.size > 0 {
                    pending.push(PendingChunk {
                        offset: te.offset,
                        chunk_offset: te.chunk_offset,
                        chunk_size: te.chunk_size,
                        digest: te.chunk_digest.clone(),
                        inner: te.inner_offset,
                        zeros: te.chunk_type == "zeros",
                    });
                    current = Some((entries.len(), te.digest.clone(), te.end_offset));
                }
            }
            _ => {}
        }
        entries.push(entry);
    }
    finish(&mut current, &mut pending, &mut entries, &mut chunks)?;
    Ok(Converted {
        entries,
        chunks,
        prefetch,
    })
}

/// The digest of `len` zero bytes, computed without allocating them.
/// Bytes of zeros a TOC may make Skiff hash for digest-less zero chunks. Each distinct
/// length is hashed once; without the bound a TOC of many 1 GiB holes of different
/// lengths would make one index build hash terabytes.
pub const MAX_ZERO_HASHING: u64 = 1 << 30;

/// Digests of runs of zeros, one per distinct length, within a hashing budget.
struct ZeroDigests {
    known: std::collections::HashMap<u64, Digest>,
    hashed: u64,
    budget: u64,
}

impl Default for ZeroDigests {
    fn default() -> Self {
        ZeroDigests {
            known: Default::default(),
            hashed: 0,
            budget: MAX_ZERO_HASHING,
        }
    }
}

impl ZeroDigests {
    /// The digest of `len` zero bytes, or `None` once the hashing budget is spent.
    fn get(&mut self, len: u64) -> Option<Digest> {
        if let Some(d) = self.known.get(&len) {
            return Some(*d);
        }
        self.hashed = self.hashed.checked_add(len)?;
        if self.hashed > self.budget {
            return None;
        }
        let block = [0u8; 64 << 10];
        let mut h = crate::digest::Hasher::new();
        let mut left = len;
        while left > 0 {
            let n = left.min(block.len() as u64) as usize;
            h.update(&block[..n]);
            left -= n as u64;
        }
        let d = h.finish();
        self.known.insert(len, d);
        Some(d)
    }
}

/// Parses an RFC 3339 timestamp (`2024-01-02T03:04:05.123Z`, `…+02:00`) into seconds
/// and nanoseconds since the epoch.
pub fn parse_rfc3339(s: &str) -> Option<(i64, u32)> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        if !t.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        t.parse().ok()
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (hour, min, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || min > 59 || sec > 60 {
        return None;
    }
    let mut rest = &s[19..];
    let mut nsec = 0u32;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return None;
        }
        for (i, c) in frac[..digits].bytes().take(9).enumerate() {
            nsec += u32::from(c - b'0') * 10u32.pow(8 - i as u32);
        }
        rest = &frac[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            if rest.len() != 6 || rest.as_bytes()[3] != b':' {
                return None;
            }
            let h: i64 = rest.get(1..3)?.parse().ok()?;
            let m: i64 = rest.get(4..6)?.parse().ok()?;
            sign * (h * 3600 + m * 60)
        }
    };
    let days = days_from_civil(year, month, day);
    Some((days * 86400 + hour * 3600 + min * 60 + sec - offset, nsec))
}

/// Formats a time as RFC 3339 UTC with nanoseconds when it has any
/// (`1970-01-01T00:00:00.5Z`, trailing zeros dropped), as Go's `RFC3339Nano`.
pub fn format_rfc3339_nanos(secs: i64, nsec: u32) -> String {
    let whole = format_rfc3339(secs);
    if nsec == 0 || nsec >= 1_000_000_000 {
        return whole;
    }
    let frac = format!("{nsec:09}");
    format!(
        "{}.{}Z",
        whole.trim_end_matches('Z'),
        frac.trim_end_matches('0')
    )
}

/// Formats seconds since the epoch as RFC 3339 UTC (`1970-01-01T00:00:00Z`).
pub fn format_rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86400);
    let rem = secs.rem_euclid(86400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

// Howard Hinnant's days_from_civil / civil_from_days.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {

    #[test]
    fn zero_chunk_digests_are_hashed_once_per_length_within_a_budget() {
        let mut z = ZeroDigests {
            budget: 1000,
            ..Default::default()
        };
        let a = z.get(600).unwrap();
        assert_eq!(a, Digest::of(&[0u8; 600]));
        // The same length again costs nothing: a thousand holes of one size are fine.
        for _ in 0..1000 {
            assert_eq!(z.get(600), Some(a));
        }
        assert_eq!(z.get(400), Some(Digest::of(&[0u8; 400])));
        assert_eq!(z.get(1), None, "past the budget");
        assert_eq!(z.get(u64::MAX), None);
    }
    use super::*;

    #[test]
    fn rfc3339_round_trips() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some((0, 0)));
        assert_eq!(
            parse_rfc3339("2026-11-29T01:35:03Z").map(|t| format_rfc3339(t.0)),
            Some("2026-11-29T01:35:03Z".into())
        );
        assert_eq!(
            parse_rfc3339("2001-09-09T01:46:40.5+00:00"),
            Some((1_000_000_000, 500_000_000))
        );
        assert_eq!(
            parse_rfc3339("2001-09-09T03:46:40+02:00"),
            Some((1_000_000_000, 0))
        );
        assert!(parse_rfc3339("0001-01-01T00:00:00Z").unwrap().0 < 0);
        assert_eq!(parse_rfc3339("garbage"), None);
        assert_eq!(
            format_rfc3339_nanos(1_600_000_000, 123_456_780),
            "2020-09-13T12:26:40.12345678Z"
        );
        assert_eq!(
            parse_rfc3339(&format_rfc3339_nanos(1_600_000_000, 5)),
            Some((1_600_000_000, 5))
        );
        assert_eq!(format_rfc3339_nanos(7, 0), format_rfc3339(7));
        assert_eq!(parse_rfc3339("2001-13-09T03:46:40Z"), None);
    }
}
