//! Corrupted and hostile input: every parser must refuse it with an error, never
//! panic, never allocate what the input claims. Deterministic cases first, then
//! proptest targets that run each parser over random and mutated input for a bounded
//! number of cases.

use super::checkpoint::inflate_from;
use super::convert::{convert_stream_to_estargz, EstargzOptions};
use super::decode::decode_chunk;
use super::estargz::{self, parse_footer, TOC_DIGEST_ANNOTATION};
use super::gzip::index_tar_gzip;
use super::model::{Checkpoint, Chunk, ChunkEncoding, EntryKind, IndexError, LayerIndex};
use super::tar::{walk_tar, DEFAULT_CHUNK_SIZE};
use super::toc::{convert, Flavor, Toc, TocEntry, MAX_CHUNK_LEN};
use super::zstd_chunked::{self, index_zstd_chunked};
use super::{store, IndexOptions};
use crate::blob::BlobReader;
use crate::digest::Digest;
use proptest::prelude::*;
use std::collections::HashMap;
use std::io::Write;

/// An in-memory blob.
pub(super) struct MemBlob(Vec<u8>, Digest);

impl MemBlob {
    pub(super) fn new(data: Vec<u8>) -> MemBlob {
        let d = Digest::of(&data);
        MemBlob(data, d)
    }
}

impl BlobReader for MemBlob {
    fn digest(&self) -> Digest {
        self.1
    }
    fn size(&self) -> u64 {
        self.0.len() as u64
    }
    fn read_at(&self, offset: u64, len: u64) -> Result<Vec<u8>, crate::BlobError> {
        let end = offset.checked_add(len).filter(|&e| e <= self.size());
        match end {
            Some(end) => Ok(self.0[offset as usize..end as usize].to_vec()),
            None => Err(crate::BlobError::OutOfRange {
                digest: self.1,
                offset,
                len,
                size: self.size(),
            }),
        }
    }
}

fn sample_files() -> Vec<(String, Vec<u8>)> {
    vec![
        ("etc/a".into(), b"alpha\n".to_vec()),
        (
            "bin/big".into(),
            (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect(),
        ),
        ("etc/.wh.gone".into(), Vec::new()),
        ("var/.wh..wh..opq".into(), Vec::new()),
        ("z".into(), vec![9u8; 5000]),
    ]
}

fn sample_tar() -> Vec<u8> {
    tar_of(sample_files())
}

/// A tar of regular files (mode 0644, owner 1:2, one fixed mtime).
pub(super) fn tar_of(files: Vec<(String, Vec<u8>)>) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_uid(1);
        h.set_gid(2);
        h.set_mtime(1_700_000_000);
        b.append_data(&mut h, &name, &data[..]).unwrap();
    }
    b.into_inner().unwrap()
}

/// An eStargz blob made by Skiff's writer, and its annotations.
fn sample_estargz() -> (Vec<u8>, HashMap<String, String>) {
    let mut out = Vec::new();
    let opts = EstargzOptions {
        chunk_size: 64 << 10,
        level: 1,
        prefetch: vec!["z".into()],
    };
    let layer = convert_stream_to_estargz(&sample_tar()[..], &mut out, &opts, None).unwrap();
    (out, layer.annotations().into_iter().collect())
}

/// A zstd:chunked blob the way containers/storage lays it out: tar headers and file
/// data in separate frames, the TOC in a skippable frame, annotations pointing at it.
fn sample_zstd_chunked(chunk: usize) -> (Vec<u8>, HashMap<String, String>) {
    let frame = |data: &[u8]| zstd::encode_all(data, 1).unwrap();
    let mut blob = Vec::new();
    let mut toc = Toc {
        version: 1,
        entries: Vec::new(),
    };
    for (name, data) in sample_files() {
        let mut h = tar::Header::new_gnu();
        h.set_path(&name).unwrap();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_uid(1);
        h.set_gid(2);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        blob.extend(frame(h.as_bytes()));
        let mut e = TocEntry {
            name: name.clone(),
            kind: "reg".into(),
            size: data.len() as u64,
            mode: 0o644,
            uid: 1,
            gid: 2,
            mod_time: "2023-11-14T22:13:20Z".into(),
            digest: Digest::of(&data).to_string(),
            ..Default::default()
        };
        if data.is_empty() {
            toc.entries.push(e);
            continue;
        }
        e.offset = blob.len() as u64;
        let pieces: Vec<&[u8]> = data.chunks(chunk).collect();
        let mut chunk_entries = Vec::new();
        for (i, piece) in pieces.iter().enumerate() {
            let off = blob.len() as u64;
            blob.extend(frame(piece));
            if pieces.len() > 1 {
                if i == 0 {
                    e.chunk_size = piece.len() as u64;
                    e.chunk_digest = Digest::of(piece).to_string();
                } else {
                    chunk_entries.push(TocEntry {
                        name: name.clone(),
                        kind: "chunk".into(),
                        offset: off,
                        chunk_offset: (i * chunk) as u64,
                        chunk_size: piece.len() as u64,
                        chunk_digest: Digest::of(piece).to_string(),
                        ..Default::default()
                    });
                }
            }
            let pad = (512 - piece.len() % 512) % 512;
            if i + 1 == pieces.len() && pad > 0 {
                e.end_offset = blob.len() as u64;
                blob.extend(frame(&vec![0u8; pad]));
            } else {
                e.end_offset = blob.len() as u64;
            }
        }
        toc.entries.push(e);
        toc.entries.extend(chunk_entries);
    }
    blob.extend(frame(&[0u8; 1024]));
    let json = serde_json::to_vec(&toc).unwrap();
    let compressed = frame(&json);
    blob.extend(0x184D2A50u32.to_le_bytes());
    blob.extend((compressed.len() as u32).to_le_bytes());
    let offset = blob.len();
    blob.extend(&compressed);
    let ann = HashMap::from([
        (
            zstd_chunked::POSITION_ANNOTATIONS[1].to_string(),
            format!("{offset}:{}:{}:1", compressed.len(), json.len()),
        ),
        (
            zstd_chunked::CHECKSUM_ANNOTATIONS[1].to_string(),
            Digest::of(&compressed).to_string(),
        ),
    ]);
    (blob, ann)
}

fn read_all(idx: &LayerIndex, blob: &MemBlob) -> Result<Vec<(String, Vec<u8>)>, IndexError> {
    let mut out = Vec::new();
    for e in idx.entries.iter().filter(|e| e.kind == EntryKind::Reg) {
        let mut data = Vec::new();
        for c in idx.chunks_of(e) {
            let raw = blob.read_at(c.blob_offset, c.blob_len)?;
            data.extend(decode_chunk(idx, c, &raw)?);
        }
        out.push((e.path.clone(), data));
    }
    Ok(out)
}

/// Reads every regular file on its own: a file whose chunks all decode gets `Some`.
fn read_each(idx: &LayerIndex, blob: &MemBlob) -> Vec<(String, Option<Vec<u8>>)> {
    idx.entries
        .iter()
        .filter(|e| e.kind == EntryKind::Reg)
        .map(|e| {
            let mut data = Vec::new();
            for c in idx.chunks_of(e) {
                let piece = blob
                    .read_at(c.blob_offset, c.blob_len)
                    .map_err(IndexError::from)
                    .and_then(|raw| decode_chunk(idx, c, &raw));
                match piece {
                    Ok(p) => data.extend(p),
                    Err(_) => return (e.path.clone(), None),
                }
            }
            (e.path.clone(), Some(data))
        })
        .collect()
}

/// Fails unless every file read successfully from a mutated blob has exactly the bytes
/// it was written with: a mutation may cost a read, never return other bytes.
fn reads_are_original_or_refused(idx: &LayerIndex, blob: &MemBlob) -> Result<(), TestCaseError> {
    let want: HashMap<String, Vec<u8>> = expected_regular().into_iter().collect();
    for (path, got) in read_each(idx, blob) {
        let Some(got) = got else { continue };
        let original = want.get(&path);
        prop_assert!(
            original == Some(&got),
            "{path:?} read {} bytes that are not the original {:?}",
            got.len(),
            original.map(Vec::len)
        );
    }
    Ok(())
}

fn expected_regular() -> Vec<(String, Vec<u8>)> {
    sample_files()
        .into_iter()
        .filter(|(n, _)| !n.contains(".wh."))
        .collect()
}

#[test]
fn own_estargz_and_generated_zstd_chunked_read_back() {
    let (data, ann) = sample_estargz();
    let blob = MemBlob::new(data);
    let idx = estargz::index_estargz(&blob, &ann).unwrap();
    let mut got = read_all(&idx, &blob).unwrap();
    got.sort();
    let mut want = expected_regular();
    want.sort();
    assert_eq!(got, want);
    assert!(idx
        .entries
        .iter()
        .any(|e| e.kind == EntryKind::Whiteout && e.path == "etc/gone"));
    assert!(idx
        .entries
        .iter()
        .any(|e| e.kind == EntryKind::Opaque && e.path == "var"));
    assert_eq!(idx.prefetch.len(), 1);
    assert_eq!(idx.entries[idx.prefetch[0] as usize].path, "z");

    let (data, ann) = sample_zstd_chunked(30_000);
    let blob = MemBlob::new(data);
    let idx = index_zstd_chunked(&blob, &ann).unwrap();
    assert_eq!(read_all(&idx, &blob).unwrap(), expected_regular());
    assert!(idx.chunks.len() > 8);
    let markers: Vec<_> = idx
        .entries
        .iter()
        .filter(|e| matches!(e.kind, EntryKind::Whiteout | EntryKind::Opaque))
        .map(|e| (e.kind, e.path.as_str()))
        .collect();
    assert_eq!(
        markers,
        vec![
            (EntryKind::Whiteout, "etc/gone"),
            (EntryKind::Opaque, "var")
        ]
    );
}

#[test]
fn flipped_chunk_bytes_are_refused() {
    // eStargz, zstd:chunked and tar+gzip checkpoints: flip one byte inside the
    // compressed data of the big file; the read must fail (digest or decode error).
    let (data, ann) = sample_estargz();
    let good = MemBlob::new(data.clone());
    let idx = estargz::index_estargz(&good, &ann).unwrap();
    let big = idx.entries.iter().find(|e| e.path == "bin/big").unwrap();
    let c = idx.chunks_of(big)[1];
    for pos in [c.blob_offset + 30, c.blob_offset + c.blob_len / 2] {
        let mut raw = good.read_at(c.blob_offset, c.blob_len).unwrap();
        raw[(pos - c.blob_offset) as usize] ^= 0x40;
        assert!(decode_chunk(&idx, &c, &raw).is_err());
    }

    let (data, ann) = sample_zstd_chunked(30_000);
    let good = MemBlob::new(data);
    let idx = index_zstd_chunked(&good, &ann).unwrap();
    let big = idx.entries.iter().find(|e| e.path == "bin/big").unwrap();
    let c = idx.chunks_of(big)[2];
    let mut raw = good.read_at(c.blob_offset, c.blob_len).unwrap();
    let mid = raw.len() / 2;
    raw[mid] ^= 1;
    assert!(decode_chunk(&idx, &c, &raw).is_err());

    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
    gz.write_all(&sample_tar()).unwrap();
    let good = MemBlob::new(gz.finish().unwrap());
    let opts = IndexOptions {
        span: 16 << 10,
        ..Default::default()
    };
    let idx = index_tar_gzip(&good, &opts).unwrap();
    let big = idx.entries.iter().find(|e| e.path == "bin/big").unwrap();
    for c in idx.chunks_of(big) {
        let mut raw = good.read_at(c.blob_offset, c.blob_len).unwrap();
        let mid = raw.len() / 2;
        raw[mid] ^= 0x10;
        let r = decode_chunk(&idx, c, &raw);
        assert!(r.is_err(), "corrupted checkpoint chunk accepted");
    }
    // A tampered checkpoint window: a chunk whose deflate data refers back into its
    // window inflates to other bytes, which its digest refuses; a chunk that never
    // refers back may still read, and then only with its original bytes. Text made of
    // dictionary words fills many deflate blocks (so checkpoints carry windows) and
    // keeps referring back across them (the sample's periodic bytes fit in one block).
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
    gz.write_all(&words_tar()).unwrap();
    let good = MemBlob::new(gz.finish().unwrap());
    let idx = index_tar_gzip(&good, &opts).unwrap();
    let mut bad = idx.clone();
    let mut tampered = 0;
    for cp in bad
        .checkpoints
        .iter_mut()
        .filter(|cp| !cp.window.is_empty())
    {
        for b in &mut cp.window {
            *b ^= 0xff;
        }
        tampered += 1;
    }
    assert!(tampered > 0, "no checkpoint with a window to tamper with");
    let mut refused = 0;
    for c in &bad.chunks {
        let raw = good.read_at(c.blob_offset, c.blob_len).unwrap();
        let original = decode_chunk(&idx, c, &raw).unwrap();
        match decode_chunk(&bad, c, &raw) {
            Ok(got) => assert!(
                got == original,
                "tampered window: chunk at {} read other bytes",
                c.blob_offset
            ),
            Err(e) => {
                assert!(
                    matches!(e, IndexError::Digest(_) | IndexError::Decode { .. }),
                    "tampered window: unexpected error {e}"
                );
                refused += 1;
            }
        }
    }
    assert!(
        refused > 0,
        "no chunk read through a tampered window was refused"
    );
}

/// A tar holding 400 KB of words drawn (by a fixed LCG) from a small dictionary.
fn words_tar() -> Vec<u8> {
    const WORDS: [&str; 16] = [
        "alpha ",
        "bravo ",
        "charlie ",
        "delta ",
        "echo ",
        "foxtrot ",
        "golf ",
        "hotel ",
        "india ",
        "juliet ",
        "kilo ",
        "lima ",
        "mike ",
        "november ",
        "oscar ",
        "papa ",
    ];
    let mut state = 12345u32;
    let mut text = Vec::new();
    while text.len() < 400_000 {
        state = state.wrapping_mul(1_103_515_245).wrapping_add(12345);
        text.extend_from_slice(WORDS[(state >> 16) as usize % WORDS.len()].as_bytes());
    }
    tar_of(vec![("words".into(), text)])
}

#[test]
fn toc_mismatch_and_truncation_are_refused() {
    let (data, mut ann) = sample_estargz();
    ann.insert(TOC_DIGEST_ANNOTATION.into(), Digest::of(b"x").to_string());
    let err = estargz::index_estargz(&MemBlob::new(data.clone()), &ann).unwrap_err();
    assert!(matches!(err, IndexError::Digest(_)), "{err}");
    assert!(err.to_string().contains("eStargz TOC"), "{err}");
    // Truncated footer: every cut inside the last 51 bytes is refused.
    let (_, ann) = sample_estargz();
    for cut in 1..=51 {
        let short = data[..data.len() - cut].to_vec();
        let r = estargz::index_estargz(&MemBlob::new(short), &ann);
        assert!(r.is_err(), "cut {cut} accepted");
    }
    assert!(estargz::index_estargz(&MemBlob::new(vec![0x1f; 10]), &ann).is_err());

    let (data, mut ann) = sample_zstd_chunked(30_000);
    for k in zstd_chunked::CHECKSUM_ANNOTATIONS {
        ann.remove(k);
    }
    let err = index_zstd_chunked(&MemBlob::new(data.clone()), &ann).unwrap_err();
    assert!(err.to_string().contains("manifest-checksum"), "{err}");
    let (_, mut ann) = sample_zstd_chunked(30_000);
    let key = zstd_chunked::POSITION_ANNOTATIONS[1].to_string();
    for absurd in [
        "0:99999999999:10:1",
        "18446744073709551615:10:10:1",
        "5:10:999999999999:1",
        "1:2:3:2",
        "x",
    ] {
        ann.insert(key.clone(), absurd.into());
        assert!(
            index_zstd_chunked(&MemBlob::new(data.clone()), &ann).is_err(),
            "{absurd}"
        );
    }
}

#[test]
fn legacy_47_byte_footer_is_understood() {
    let mut f = vec![0x1f, 0x8b, 8, 4, 0, 0, 0, 0, 0, 0xff, 22, 0];
    f.extend_from_slice(format!("{:016x}STARGZ", 1234).as_bytes());
    f.extend_from_slice(&[1, 0, 0, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(f.len(), 47);
    assert_eq!(parse_footer(&f), Ok((1234, 47)));
    assert_eq!(parse_footer(&estargz::footer_bytes(99)), Ok((99, 51)));
    assert!(parse_footer(&estargz::footer_bytes(99)[1..]).is_err());
}

fn toc_with(entries: Vec<TocEntry>) -> Toc {
    Toc {
        version: 1,
        entries,
    }
}

#[test]
fn hostile_toc_entries_are_refused() {
    let blob = Digest::of(b"b");
    let d = Digest::of(b"x").to_string();
    let reg = |name: &str, size: u64, offset: u64, chunk_size: u64| TocEntry {
        name: name.into(),
        kind: "reg".into(),
        size,
        offset,
        chunk_size,
        chunk_digest: d.clone(),
        ..Default::default()
    };
    let cases = vec![
        ("dotdot", toc_with(vec![reg("../etc/passwd", 1, 0, 0)])),
        ("absolute", toc_with(vec![reg("/etc/passwd", 1, 0, 0)])),
        ("offset past data", toc_with(vec![reg("a", 1, 5000, 0)])),
        ("huge size", toc_with(vec![reg("a", u64::MAX, 0, 0)])),
        (
            "chunk bigger than file",
            toc_with(vec![reg("a", 10, 0, 20)]),
        ),
        (
            "chunk gap",
            toc_with(vec![reg("a", 10, 0, 4), {
                let mut c = reg("a", 0, 50, 6);
                c.kind = "chunk".into();
                c.chunk_offset = 5;
                c
            }]),
        ),
        (
            "orphan chunk",
            toc_with(vec![{
                let mut c = reg("a", 0, 50, 6);
                c.kind = "chunk".into();
                c
            }]),
        ),
        (
            "no digest",
            toc_with(vec![{
                let mut e = reg("a", 10, 0, 0);
                e.chunk_digest.clear();
                e
            }]),
        ),
        (
            "bad type",
            toc_with(vec![{
                let mut e = reg("a", 0, 0, 0);
                e.kind = "socket".into();
                e
            }]),
        ),
        (
            "hardlink escape",
            toc_with(vec![TocEntry {
                name: "l".into(),
                kind: "hardlink".into(),
                link_name: "../../x".into(),
                ..Default::default()
            }]),
        ),
        (
            "uid range",
            toc_with(vec![TocEntry {
                name: "d".into(),
                kind: "dir".into(),
                uid: -1,
                ..Default::default()
            }]),
        ),
    ];
    for (what, toc) in cases {
        for flavor in [Flavor::Estargz, Flavor::ZstdChunked] {
            assert!(
                convert(&toc, flavor, blob, 1000).is_err(),
                "{what} accepted"
            );
        }
    }
}

#[test]
fn toc_chunks_over_the_cap_are_refused_and_holes_may_be_larger() {
    let blob = Digest::of(b"b");
    let data_end = 1 << 32;
    let one_chunk = |size: u64, chunk_type: &str| {
        toc_with(vec![TocEntry {
            name: "big".into(),
            kind: "reg".into(),
            size,
            chunk_digest: Digest::of(b"x").to_string(),
            chunk_type: chunk_type.into(),
            ..Default::default()
        }])
    };
    for flavor in [Flavor::Estargz, Flavor::ZstdChunked] {
        assert!(convert(&one_chunk(MAX_CHUNK_LEN, ""), flavor, blob, data_end).is_ok());
        let Err(e) = convert(&one_chunk(MAX_CHUNK_LEN + 1, ""), flavor, blob, data_end) else {
            panic!("a chunk over the cap was accepted");
        };
        assert!(e.to_string().contains("larger than the"), "{e}");
    }
    // A 512 MiB hole is one zstd:chunked `zeros` chunk: no blob bytes, accepted.
    let hole = convert(
        &one_chunk(512 << 20, "zeros"),
        Flavor::ZstdChunked,
        blob,
        data_end,
    )
    .expect("a large hole is refused");
    assert_eq!(hole.chunks[0].encoding, ChunkEncoding::Zeros);
}

#[test]
fn huge_declared_chunk_does_not_allocate() {
    let idx = LayerIndex {
        blob: Digest::of(b"b"),
        blob_size: 10,
        format: super::model::LayerFormat::Tar,
        entries: vec![],
        chunks: vec![],
        checkpoints: vec![Checkpoint {
            blob_offset: 0,
            bits: 0,
            stream_offset: 0,
            window: vec![],
        }],
        prefetch: vec![],
    };
    for encoding in [
        ChunkEncoding::Gzip { skip: u64::MAX },
        ChunkEncoding::Zstd { skip: 0 },
        ChunkEncoding::Checkpoint {
            checkpoint: 0,
            skip: 0,
        },
        ChunkEncoding::Raw,
        ChunkEncoding::Zeros,
    ] {
        let c = Chunk {
            blob_offset: 0,
            blob_len: 4,
            file_offset: 0,
            len: 1 << 60,
            digest: Digest::of(b""),
            encoding,
        };
        assert!(decode_chunk(&idx, &c, b"\x1f\x8b\x08\x00").is_err());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn estargz_footer_never_panics(tail in proptest::collection::vec(any::<u8>(), 0..128)) {
        let _ = parse_footer(&tail);
    }

    #[test]
    fn estargz_reader_survives_mutations(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        tail_only in any::<bool>(),
        verify in any::<bool>(),
    ) {
        let (mut data, ann) = sample_estargz();
        let len = data.len();
        let region = if tail_only { len.saturating_sub(600) } else { 0 };
        for (i, v) in flips {
            let at = region + i.index(len - region);
            data[at] ^= v | 1;
        }
        let ann = if verify { ann } else { HashMap::new() };
        let blob = MemBlob::new(data);
        if let Ok(idx) = estargz::index_estargz(&blob, &ann) {
            if verify {
                reads_are_original_or_refused(&idx, &blob)?;
            } else {
                // Without the TOC digest nothing authenticates the TOC: a flipped byte
                // in it can rename an entry and still parse (proptest found
                // ".pre29tch.landmark"), so only "no panic" holds.
                let _ = read_each(&idx, &blob);
            }
        }
    }

    #[test]
    fn zstd_chunked_reader_survives_mutations(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        chunk in 1000usize..80_000,
    ) {
        let (mut data, ann) = sample_zstd_chunked(chunk);
        let len = data.len();
        for (i, v) in flips {
            data[i.index(len)] ^= v | 1;
        }
        let blob = MemBlob::new(data);
        if let Ok(idx) = index_zstd_chunked(&blob, &ann) {
            reads_are_original_or_refused(&idx, &blob)?;
        }
    }

    #[test]
    fn toc_conversion_never_panics(
        entries in proptest::collection::vec(
            (
                prop::sample::select(vec!["reg", "chunk", "dir", "symlink", "hardlink", "char", "fifo", "bogus"]),
                prop::sample::select(vec!["a", "a/b", "../x", "/abs", "./a", ".wh.a", "d/.wh..wh..opq", "", ".prefetch.landmark"]),
                prop_oneof![Just(0u64), 0u64..100_000, Just(u64::MAX)],
                prop_oneof![Just(0u64), 0u64..3000],
                prop_oneof![Just(0u64), 0u64..100_000, Just(u64::MAX)],
                prop_oneof![Just(0u64), 0u64..100_000, Just(u64::MAX)],
                any::<bool>(),
            ),
            0..12,
        ),
        data_end in 0u64..5000,
    ) {
        let d = Digest::of(b"x").to_string();
        let toc = toc_with(entries.into_iter().map(|(kind, name, size, offset, chunk_offset, chunk_size, digest)| TocEntry {
            name: name.into(),
            kind: kind.into(),
            size,
            offset,
            chunk_offset,
            chunk_size,
            link_name: name.into(),
            chunk_digest: if digest { d.clone() } else { String::new() },
            mod_time: if digest { "2020-02-30T99:00:00Z".into() } else { String::new() },
            ..Default::default()
        }).collect());
        for flavor in [Flavor::Estargz, Flavor::ZstdChunked] {
            if let Ok(c) = convert(&toc, flavor, Digest::of(b"b"), data_end) {
                for e in &c.entries {
                    prop_assert!(!e.path.split('/').any(|p| p == ".."));
                }
                for ch in &c.chunks {
                    prop_assert!(ch.blob_offset.saturating_add(ch.blob_len) <= data_end);
                }
            }
        }
    }

    #[test]
    fn tar_walk_survives_mutations(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut data = sample_tar();
        let len = data.len();
        for (i, v) in flips {
            // Mostly hit headers, where the parsing happens.
            let at = i.index(len);
            let at = if at % 3 == 0 { at } else { at % 512 };
            data[at] ^= v | 1;
        }
        data.truncate(cut.index(len + 1));
        let _ = walk_tar(&data[..], Digest::of(&data), "tar", DEFAULT_CHUNK_SIZE);
    }

    #[test]
    fn estargz_converter_survives_mutated_tars(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
    ) {
        let mut data = sample_tar();
        let len = data.len();
        for (i, v) in flips {
            let at = i.index(len);
            let at = if at % 2 == 0 { at } else { at % 512 };
            data[at] ^= v | 1;
        }
        let mut out = Vec::new();
        let opts = EstargzOptions { chunk_size: 50_000, level: 1, prefetch: vec!["z".into()] };
        if let Ok(layer) = convert_stream_to_estargz(&data[..], &mut out, &opts, None) {
            // Whatever it accepted, it wrote a readable eStargz.
            let ann = layer.annotations().into_iter().collect();
            let blob = MemBlob::new(out);
            let idx = estargz::index_estargz(&blob, &ann);
            prop_assert!(idx.is_ok(), "{:?}", idx.err());
            prop_assert!(read_all(&idx.unwrap(), &blob).is_ok());
        }
    }

    /// Flipped bytes, and half the time a cut: a read that succeeds has the original
    /// bytes (see `a_cut_corrupted_gzip_is_refused_at_its_trailer`).
    #[test]
    fn gzip_index_survives_mutations(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in proptest::option::of(any::<prop::sample::Index>()),
    ) {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
        gz.write_all(&sample_tar()).unwrap();
        let mut data = gz.finish().unwrap();
        let len = data.len();
        for (i, v) in flips {
            data[i.index(len)] ^= v | 1;
        }
        if let Some(cut) = cut {
            data.truncate(cut.index(len + 1).max(len / 2));
        }
        let blob = MemBlob::new(data);
        let opts = IndexOptions { span: 8 << 10, ..Default::default() };
        if let Ok(idx) = index_tar_gzip(&blob, &opts) {
            reads_are_original_or_refused(&idx, &blob)?;
        }
    }

    #[test]
    fn checkpoint_inflate_never_panics(
        raw in proptest::collection::vec(any::<u8>(), 0..2000),
        window in proptest::collection::vec(any::<u8>(), 0..40_000),
        bits in 0u8..10,
        skip in 0u64..5000,
        len in 0usize..5000,
    ) {
        let cp = Checkpoint { blob_offset: 1, bits, stream_offset: 0, window };
        let _ = inflate_from(&cp, &raw, skip, len);
    }

    /// A published index is postcard bytes its publisher controls: mutated bytes decode
    /// to an error or to an index that keeps every rule a reader relies on (clean
    /// paths, chunks inside the table and the blob), never to a panic.
    #[test]
    fn published_index_bytes_survive_mutations(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
    ) {
        let data = sample_tar();
        let walk = walk_tar(&data[..], Digest::of(&data), "tar", DEFAULT_CHUNK_SIZE).unwrap();
        let idx = LayerIndex {
            blob: Digest::of(&data),
            blob_size: data.len() as u64,
            format: super::LayerFormat::Tar,
            entries: walk.entries,
            chunks: walk.chunks,
            checkpoints: vec![],
            prefetch: vec![],
        };
        let mut bytes = idx.to_bytes().unwrap();
        let len = bytes.len();
        for (i, v) in flips {
            bytes[i.index(len)] ^= v | 1;
        }
        if let Ok(back) = LayerIndex::from_bytes("fuzz", &bytes) {
            for e in &back.entries {
                let cleaned = super::clean_path(&e.path);
                prop_assert_eq!(cleaned.as_deref(), Some(e.path.as_str()));
                let mut covered = 0;
                for c in back.chunks_of(e) {
                    prop_assert!(c.blob_offset + c.blob_len <= back.blob_size);
                    covered += c.len;
                }
                if e.kind == EntryKind::Reg {
                    prop_assert_eq!(covered, e.size);
                }
            }
        }
    }

    #[test]
    fn store_decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = store::decode("fuzz", &bytes);
        let mut framed = b"SKIFFIDX\x01\x00\x00\x00".to_vec();
        framed.extend(Digest::of(&bytes).as_bytes());
        framed.extend(&bytes);
        let _ = store::decode("fuzz", &framed);
    }
}

/// A corrupted tar+gzip blob cut short: the flipped byte makes the stream inflate to a
/// tar whose end comes before the cut. The indexer used to stop at the tar's end
/// without reaching the gzip trailer (CRC-32, size), index the blob, and serve other
/// bytes for `bin/big`; it now reads the stream to its end and refuses the blob, as
/// `gunzip` does. Found by `gzip_index_survives_mutations`.
#[test]
fn a_cut_corrupted_gzip_is_refused_at_its_trailer() {
    use std::io::Read;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
    gz.write_all(&sample_tar()).unwrap();
    let orig = gz.finish().unwrap();
    // The case proptest found (positions as its `Index` values gave them).
    assert_eq!(orig.len(), 1401, "the sample changed: find a new case");
    let (at, cut) = (482, 1270);
    let opts = IndexOptions {
        span: 8 << 10,
        ..Default::default()
    };
    let mut flipped = orig.clone();
    flipped[at] ^= 0x81;
    let mut cut_only = orig.clone();
    cut_only.truncate(cut);
    assert!(index_tar_gzip(&MemBlob::new(flipped.clone()), &opts).is_err());
    assert!(index_tar_gzip(&MemBlob::new(cut_only), &opts).is_err());
    let mut both = flipped;
    both.truncate(cut);
    let mut out = Vec::new();
    assert!(
        flate2::read::MultiGzDecoder::new(&both[..])
            .read_to_end(&mut out)
            .is_err(),
        "gunzip refuses the blob"
    );
    let err = index_tar_gzip(&MemBlob::new(both), &opts)
        .expect_err("a cut, corrupted gzip blob must be refused");
    assert!(err.to_string().contains("past the end of the tar"), "{err}");
}
