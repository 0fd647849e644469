//! The cache's pack files: small chunks written together, one file per write batch.
//!
//! A pack is the chunks' bytes back to back, then a table of (digest, offset u64 LE,
//! length u32 LE) per chunk, then the chunk count (u32 LE) and [`PACK_MAGIC`]. The
//! table is read at cache open; a torn pack (no footer, or entries outside the data)
//! is dropped, and every load re-hashes its chunk anyway.

use skiff_proto::Digest;
use std::fs;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

const PACK_MAGIC: &[u8; 8] = b"SKIFFPK1";
/// A pack table entry: digest, offset (u64 LE), length (u32 LE).
const PACK_ENTRY: usize = 32 + 8 + 4;

/// The table and footer that follow `chunks` (digest and length each, in the order
/// their bytes are written) in a pack.
pub(crate) fn pack_table(chunks: impl ExactSizeIterator<Item = (Digest, usize)>) -> Vec<u8> {
    let count = chunks.len();
    let mut table = Vec::with_capacity(count * PACK_ENTRY + 12);
    let mut offset = 0u64;
    for (d, len) in chunks {
        table.extend_from_slice(d.as_bytes());
        table.extend_from_slice(&offset.to_le_bytes());
        table.extend_from_slice(&(len as u32).to_le_bytes());
        offset += len as u64;
    }
    table.extend_from_slice(&(count as u32).to_le_bytes());
    table.extend_from_slice(PACK_MAGIC);
    table
}

/// Reads a pack's table: (digest, offset, length) per chunk, checked to lie inside the
/// data part.
pub(crate) fn read_pack_table(path: &Path) -> io::Result<Vec<(Digest, u64, u32)>> {
    let bad = |what: &str| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("pack {}: {what}", path.display()),
        )
    };
    let f = fs::File::open(path)?;
    let size = f.metadata()?.len();
    if size < 12 {
        return Err(bad("too short"));
    }
    let mut footer = [0u8; 12];
    f.read_exact_at(&mut footer, size - 12)?;
    if &footer[4..] != PACK_MAGIC {
        return Err(bad("no pack footer"));
    }
    let count = u32::from_le_bytes([footer[0], footer[1], footer[2], footer[3]]) as u64;
    let table_len = count * PACK_ENTRY as u64;
    let Some(data_len) = size.checked_sub(12 + table_len) else {
        return Err(bad("table larger than the file"));
    };
    let mut table = vec![0u8; table_len as usize];
    f.read_exact_at(&mut table, data_len)?;
    let mut out = Vec::with_capacity(count as usize);
    for e in table.chunks_exact(PACK_ENTRY) {
        let mut digest = [0u8; 32];
        digest.copy_from_slice(&e[..32]);
        let mut off = [0u8; 8];
        off.copy_from_slice(&e[32..40]);
        let mut len = [0u8; 4];
        len.copy_from_slice(&e[40..44]);
        let (off, len) = (u64::from_le_bytes(off), u32::from_le_bytes(len));
        if off.checked_add(len as u64).is_none_or(|end| end > data_len) {
            return Err(bad("entry outside the data"));
        }
        out.push((Digest::from_bytes(digest), off, len));
    }
    Ok(out)
}
