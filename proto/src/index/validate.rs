//! Checks a decoded [`LayerIndex`] before anything uses it.
//!
//! A stored or published index is postcard bytes that anyone able to push a referrer
//! (or write the store) controls: serde only checks the shape. The format readers
//! clean paths and bound sizes as they build an index; this module holds a decoded
//! index to the same rules, so a published index cannot name `d/../../etc/x`, an
//! absolute path, a hard link out of the root, a chunk outside the blob, or a
//! checkpoint that does not exist.

use super::checkpoint::WINDOW_SIZE;
use super::model::{ChunkEncoding, EntryKind, IndexError, LayerIndex};
use super::toc::max_chunk_len;

/// Longest path an entry may have, in bytes (Linux `PATH_MAX`).
pub const MAX_PATH_LEN: usize = 4096;
/// Longest single path component, in bytes (Linux `NAME_MAX`).
pub const MAX_NAME_LEN: usize = 255;
/// Longest extended attribute name, in bytes (Linux `XATTR_NAME_MAX`).
const MAX_XATTR_NAME_LEN: usize = 255;
/// Largest extended attribute value, in bytes (Linux `XATTR_SIZE_MAX`).
const MAX_XATTR_VALUE_LEN: usize = 64 << 10;

impl LayerIndex {
    /// Checks every rule a well-formed index follows; `what` names the index in the
    /// error (a file, or the registry artifact it came from).
    pub fn validate(&self, what: &str) -> Result<(), IndexError> {
        let bad = |reason: String| IndexError::Encoding {
            what: what.to_string(),
            reason,
        };
        for (i, e) in self.entries.iter().enumerate() {
            check_path(&e.path).map_err(|r| bad(format!("entry {i} path {:?}: {r}", e.path)))?;
            if e.kind == EntryKind::Hardlink {
                if e.link().is_empty() {
                    return Err(bad(format!("hard link {:?} has no target", e.path)));
                }
                check_path(e.link()).map_err(|r| {
                    bad(format!("hard link {:?} target {:?}: {r}", e.path, e.link()))
                })?;
            }
            if e.link().len() > MAX_PATH_LEN || e.link().contains('\0') {
                return Err(bad(format!(
                    "entry {:?} has an invalid link target",
                    e.path
                )));
            }
            if e.mode & !0o7777 != 0 {
                return Err(bad(format!("entry {:?} has mode {:#o}", e.path, e.mode)));
            }
            for (name, value) in e.xattrs() {
                if name.is_empty()
                    || name.len() > MAX_XATTR_NAME_LEN
                    || name.contains('\0')
                    || value.len() > MAX_XATTR_VALUE_LEN
                {
                    return Err(bad(format!(
                        "entry {:?} has an invalid xattr {name:?}",
                        e.path
                    )));
                }
            }
            if e.kind == EntryKind::Reg {
                self.check_file_chunks(i).map_err(bad)?;
            } else if e.chunk_count != 0 {
                return Err(bad(format!("non-file entry {:?} owns chunks", e.path)));
            }
        }
        for (i, c) in self.checkpoints.iter().enumerate() {
            if c.bits > 7 || c.window.len() > WINDOW_SIZE || c.blob_offset > self.blob_size {
                return Err(bad(format!("checkpoint {i} is out of range")));
            }
        }
        if let Some(&p) = self
            .prefetch
            .iter()
            .find(|&&p| p as usize >= self.entries.len())
        {
            return Err(bad(format!(
                "prefetch names entry {p}, which does not exist"
            )));
        }
        Ok(())
    }

    /// A regular file's chunks: they exist, cover `0..size` in order, lie inside the
    /// blob and name real checkpoints.
    fn check_file_chunks(&self, entry: usize) -> Result<(), String> {
        let e = &self.entries[entry];
        let start = e.first_chunk as usize;
        let chunks = start
            .checked_add(e.chunk_count as usize)
            .and_then(|end| self.chunks.get(start..end))
            .ok_or_else(|| format!("file {:?} names chunks past the end of the table", e.path))?;
        let mut expect = 0u64;
        for c in chunks {
            let fits_blob = c
                .blob_offset
                .checked_add(c.blob_len)
                .is_some_and(|end| end <= self.blob_size);
            let ok = c.file_offset == expect
                && c.len > 0
                && c.len <= max_chunk_len(c.encoding == ChunkEncoding::Zeros)
                && fits_blob
                && match c.encoding {
                    ChunkEncoding::Zeros => c.blob_len == 0,
                    ChunkEncoding::Checkpoint { checkpoint, .. } => {
                        (checkpoint as usize) < self.checkpoints.len()
                    }
                    _ => true,
                };
            if !ok {
                return Err(format!(
                    "file {:?} has an invalid chunk at file offset {}",
                    e.path, c.file_offset
                ));
            }
            expect += c.len;
        }
        if expect != e.size {
            return Err(format!(
                "file {:?} of {} bytes has chunks covering {expect}",
                e.path, e.size
            ));
        }
        Ok(())
    }
}

/// A path as the format readers leave it: already cleaned, no NUL, within the
/// kernel's length limits.
fn check_path(path: &str) -> Result<(), &'static str> {
    if path.len() > MAX_PATH_LEN {
        return Err("is too long");
    }
    if path.contains('\0') {
        return Err("contains NUL");
    }
    // What `clean_path` leaves unchanged (checked without building its copy: this
    // runs for every entry of every index loaded): the root, or components that are
    // neither empty, `.` nor `..`.
    if path.is_empty() {
        return Ok(());
    }
    for c in path.split('/') {
        if c.is_empty() || c == "." || c == ".." {
            return Err("is not a clean path inside the root");
        }
        if c.len() > MAX_NAME_LEN {
            return Err("has a component over 255 bytes");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Digest;
    use crate::index::{Chunk, Entry, LayerFormat};

    fn index() -> LayerIndex {
        let mut f = Entry::new("d/f".into(), EntryKind::Reg);
        f.mode = 0o644;
        f.size = 10;
        f.chunk_count = 1;
        let mut h = Entry::new("d/h".into(), EntryKind::Hardlink);
        h.set_link("d/f".into());
        LayerIndex {
            blob: Digest::of(b"blob"),
            blob_size: 100,
            format: LayerFormat::Tar,
            entries: vec![Entry::new("d".into(), EntryKind::Dir), f, h],
            chunks: vec![Chunk {
                blob_offset: 512,
                blob_len: 10,
                file_offset: 0,
                len: 10,
                digest: Digest::of(b"0123456789"),
                encoding: ChunkEncoding::Raw,
            }],
            checkpoints: vec![],
            prefetch: vec![1],
        }
    }

    /// Round-trips through the postcard bytes a published index is made of.
    fn load(idx: &LayerIndex) -> Result<LayerIndex, IndexError> {
        LayerIndex::from_bytes("test", &idx.to_bytes().unwrap())
    }

    #[test]
    fn a_well_formed_index_loads() {
        let mut idx = index();
        idx.chunks[0].blob_offset = 0;
        assert_eq!(load(&idx).unwrap(), idx);
    }

    #[test]
    fn the_path_check_accepts_exactly_what_clean_path_leaves_unchanged() {
        use crate::index::clean_path;
        for p in [
            "", "a", "a/b", "/a", "a/", "a//b", ".", "..", "a/./b", "a/../b", "./a", "...", "a/.b",
            ".a/b..", "/", "//",
        ] {
            assert_eq!(
                check_path(p).is_ok(),
                clean_path(p).as_deref() == Some(p),
                "{p:?}"
            );
        }
    }

    #[test]
    fn escaping_or_unclean_paths_are_refused() {
        for bad in [
            "d/../../../etc/x",
            "/etc/passwd",
            "./d",
            "d//f",
            "d/",
            "a\0b",
        ] {
            let mut idx = index();
            idx.chunks[0].blob_offset = 0;
            idx.entries[0].path = bad.into();
            let err = load(&idx).unwrap_err().to_string();
            assert!(err.contains("path"), "{bad:?}: {err}");
        }
        let mut idx = index();
        idx.chunks[0].blob_offset = 0;
        idx.entries[0].path = "x".repeat(256);
        assert!(load(&idx).is_err());
    }

    #[test]
    fn a_hard_link_out_of_the_root_is_refused() {
        let mut idx = index();
        idx.chunks[0].blob_offset = 0;
        idx.entries[2].set_link("d/../../../../etc/shadow".into());
        let err = load(&idx).unwrap_err().to_string();
        assert!(err.contains("hard link"), "{err}");
    }

    #[test]
    fn chunks_outside_the_blob_or_not_covering_the_file_are_refused() {
        // The fixture's chunk starts at 512 in a 100-byte blob.
        assert!(load(&index())
            .unwrap_err()
            .to_string()
            .contains("invalid chunk"));
        let mut idx = index();
        idx.chunks[0].blob_offset = 0;
        idx.entries[1].size = 11;
        assert!(load(&idx).unwrap_err().to_string().contains("covering 10"));
        let mut idx = index();
        idx.chunks[0].blob_offset = 0;
        idx.entries[1].chunk_count = 2;
        assert!(load(&idx).unwrap_err().to_string().contains("past the end"));
        let mut idx = index();
        idx.chunks[0].blob_offset = 0;
        idx.chunks[0].encoding = ChunkEncoding::Checkpoint {
            checkpoint: 3,
            skip: 0,
        };
        assert!(load(&idx).is_err());
    }

    #[test]
    fn bad_modes_and_prefetch_entries_are_refused() {
        let mut idx = index();
        idx.chunks[0].blob_offset = 0;
        idx.entries[1].mode = 0o170644;
        assert!(load(&idx).is_err());
        let mut idx = index();
        idx.chunks[0].blob_offset = 0;
        idx.prefetch = vec![7];
        assert!(load(&idx).is_err());
    }
}
