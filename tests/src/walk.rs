//! Listing a directory tree for comparisons (mounted views against umoci, overlayfs
//! or a local copy). Also compiled into skiff-fs's tests through `#[path]`, which
//! cannot depend on this crate.

use std::path::{Path, PathBuf};

/// All paths under `root`, relative, sorted; panics on any read error (a test that
/// cannot list the tree must fail, not compare less).
pub fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in std::fs::read_dir(root.join(&rel)).unwrap() {
            let e = e.unwrap();
            let r = rel.join(e.file_name());
            if e.file_type().unwrap().is_dir() {
                stack.push(r.clone());
            }
            out.push(r);
        }
    }
    out.sort();
    out
}
