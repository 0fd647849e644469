//! tar-split metadata (vbatts/tar-split's JSON packer, as containers/storage embeds it
//! in a zstd:chunked layer): enough to rebuild the exact tar stream from the files'
//! contents. One JSON document per line: `{"type":2,"payload":BASE64,"position":N}`
//! for raw bytes (headers, padding, the end-of-archive blocks), and
//! `{"type":1,"name":…,"size":N,"payload":CRC64,"position":N}` for each entry, whose
//! content is not stored (only its CRC-64/ISO, big-endian, when it has any).
//! containers/storage needs it (and its digest in the TOC) to pull a layer partially
//! with the same `diff_id` as a full pull.

use base64::Engine as _;
use serde::Serialize;
use std::io::{self, Write};

/// `type` of an entry's line.
const FILE_TYPE: u8 = 1;
/// `type` of a raw-bytes line.
const SEGMENT_TYPE: u8 = 2;

#[derive(Serialize)]
struct Line<'a> {
    #[serde(rename = "type")]
    kind: u8,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name_raw: Option<String>,
    #[serde(skip_serializing_if = "is_zero")]
    size: u64,
    payload: Option<String>,
    position: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// Writes tar-split lines, zstd-compressed, into memory.
pub struct TarSplit {
    out: zstd::stream::write::Encoder<'static, Vec<u8>>,
    position: u64,
    uncompressed: u64,
}

impl TarSplit {
    /// An empty tar-split, compressed at zstd `level`.
    pub fn new(level: i32) -> io::Result<Self> {
        Ok(TarSplit {
            out: zstd::stream::write::Encoder::new(Vec::new(), level)?,
            position: 0,
            uncompressed: 0,
        })
    }

    fn line(&mut self, line: &Line<'_>) -> io::Result<()> {
        let mut json = serde_json::to_vec(line).map_err(io::Error::other)?;
        json.push(b'\n');
        self.out.write_all(&json)?;
        self.uncompressed += json.len() as u64;
        self.position += 1;
        Ok(())
    }

    /// Raw tar bytes (nothing is written for none). The header records of one entry
    /// (with the padding before them) must be one segment: containers/storage parses
    /// each segment as a tar header.
    pub fn segment(&mut self, bytes: &[u8]) -> io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        self.line(&Line {
            kind: SEGMENT_TYPE,
            name: None,
            name_raw: None,
            size: 0,
            payload: Some(base64::engine::general_purpose::STANDARD.encode(bytes)),
            position: self.position,
        })
    }

    /// An entry named `name` (as its header has it) with `size` bytes of content
    /// whose CRC-64 is `crc` (`None` when it has no content).
    pub fn entry(&mut self, name: &[u8], size: u64, crc: Option<u64>) -> io::Result<()> {
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        let (name, name_raw) = match std::str::from_utf8(name) {
            Ok(n) => (Some(n), None),
            Err(_) => (None, Some(b64(name))),
        };
        self.line(&Line {
            kind: FILE_TYPE,
            name,
            name_raw,
            size,
            payload: crc.map(|c| b64(&c.to_be_bytes())),
            position: self.position,
        })
    }

    /// The compressed tar-split and its uncompressed length.
    pub fn finish(self) -> io::Result<(Vec<u8>, u64)> {
        Ok((self.out.finish()?, self.uncompressed))
    }
}

/// CRC-64 with the ISO polynomial, as Go's `hash/crc64` computes it with
/// `crc64.MakeTable(crc64.ISO)` (tar-split's checksum of file contents).
pub struct Crc64 {
    crc: u64,
}

/// The reflected ISO polynomial.
const ISO: u64 = 0xD800_0000_0000_0000;

static TABLE: std::sync::LazyLock<[u64; 256]> = std::sync::LazyLock::new(|| {
    let mut t = [0u64; 256];
    for (i, slot) in t.iter_mut().enumerate() {
        let mut crc = i as u64;
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ ISO
            } else {
                crc >> 1
            };
        }
        *slot = crc;
    }
    t
});

impl Crc64 {
    /// The checksum of nothing.
    pub fn new() -> Self {
        Crc64 { crc: !0 }
    }

    /// Adds `bytes`.
    pub fn update(&mut self, bytes: &[u8]) {
        let t = &*TABLE;
        for &b in bytes {
            self.crc = t[((self.crc as u8) ^ b) as usize] ^ (self.crc >> 8);
        }
    }

    /// The checksum of everything added.
    pub fn finish(&self) -> u64 {
        !self.crc
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc64_is_go_iso() {
        let mut c = Crc64::new();
        c.update(b"12345");
        c.update(b"6789");
        // CRC-64/GO-ISO check value.
        assert_eq!(c.finish(), 0xb909_56c7_75a4_1001);
    }

    #[test]
    fn lines_are_tar_split_json() {
        let mut t = TarSplit::new(3).unwrap();
        t.segment(b"hdr").unwrap();
        t.segment(b"").unwrap();
        t.entry(b"a/b", 5, Some(1)).unwrap();
        t.entry(b"\xff", 0, None).unwrap();
        let (z, n) = t.finish().unwrap();
        let text = zstd::decode_all(&z[..]).unwrap();
        assert_eq!(text.len() as u64, n);
        assert_eq!(
            String::from_utf8(text).unwrap(),
            "{\"type\":2,\"payload\":\"aGRy\",\"position\":0}\n\
             {\"type\":1,\"name\":\"a/b\",\"size\":5,\"payload\":\"AAAAAAAAAAE=\",\"position\":1}\n\
             {\"type\":1,\"name_raw\":\"/w==\",\"payload\":null,\"position\":2}\n"
        );
    }
}
