//! Prefetch profiles: which files (and which byte ranges of them) a container read
//! during start-up, recorded by one run and prefetched by the next cold start.
//!
//! A profile names files by their path in the merged image, not by chunk, so one
//! profile serves every format of the same image (tar+gzip, eStargz, zstd:chunked).
//! It is stored as JSON ([`Profile::to_json`]), locally and as an OCI artifact (its
//! media types are `skiff_proto::image::PROFILE_ARTIFACT_TYPE` and `PROFILE_MEDIA_TYPE`).

use crate::tree::{LowerTree, ROOT};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use skiff_proto::index::Chunk;
use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

/// Errors from reading a profile.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// The bytes are not a profile.
    #[error("decoding prefetch profile: {0}")]
    Decode(#[from] serde_json::Error),
    /// A version this build does not know.
    #[error("prefetch profile version {0} is not supported")]
    Version(u32),
}

/// One file read during start-up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileFile {
    /// Absolute path in the merged image (`/usr/bin/python3`).
    pub path: String,
    /// Byte ranges read, as `[offset, length]`, sorted and non-overlapping.
    pub ranges: Vec<[u64; 2]>,
}

/// The files read during start-up, in first-read order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    /// Format version (1).
    pub version: u32,
    /// The files.
    pub files: Vec<ProfileFile>,
}

impl Profile {
    /// The JSON encoding (stable: the same profile always gives the same bytes).
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    /// Decodes [`Profile::to_json`] output.
    pub fn from_json(bytes: &[u8]) -> Result<Profile, ProfileError> {
        let p: Profile = serde_json::from_slice(bytes)?;
        if p.version != 1 {
            return Err(ProfileError::Version(p.version));
        }
        Ok(p)
    }

    /// The chunks (per layer, deduplicated, in blob order) holding the profile's
    /// ranges in `tree`. Paths missing from the tree are skipped.
    pub fn plan(&self, tree: &LowerTree) -> BTreeMap<usize, Vec<Chunk>> {
        let mut out: BTreeMap<usize, Vec<Chunk>> = BTreeMap::new();
        let mut seen: HashSet<(usize, skiff_proto::Digest)> = HashSet::new();
        for f in &self.files {
            let Some(node) = lookup(tree, &f.path).and_then(|id| tree.node(id)) else {
                continue;
            };
            let Some(idx) = tree.layers.get(node.layer) else {
                continue;
            };
            let all = idx.chunks_of(&node.entry);
            for &[off, len] in &f.ranges {
                let end = off.saturating_add(len).min(node.entry.size);
                let first = all.partition_point(|c| c.file_offset + c.len <= off);
                let last = all.partition_point(|c| c.file_offset < end);
                for c in all.get(first..last).unwrap_or(&[]) {
                    if seen.insert((node.layer, c.digest)) {
                        out.entry(node.layer).or_default().push(*c);
                    }
                }
            }
        }
        for chunks in out.values_mut() {
            chunks.sort_by_key(|c| c.blob_offset);
        }
        out
    }
}

/// Finds a path in the merged lower tree.
pub fn lookup(tree: &LowerTree, path: &str) -> Option<crate::tree::LowerId> {
    let mut id = ROOT;
    for name in path.split('/').filter(|n| !n.is_empty() && *n != ".") {
        id = tree.child(id, name)?;
    }
    Some(id)
}

/// Records lower-file reads while a container starts (until [`Recorder::stop`] or the
/// time limit).
#[derive(Debug)]
pub struct Recorder {
    started: Instant,
    limit: Option<Duration>,
    files: Mutex<Recording>,
}

#[derive(Debug, Default)]
struct Recording {
    stopped: bool,
    order: Vec<String>,
    ranges: BTreeMap<String, Vec<(u64, u64)>>,
}

impl Recorder {
    /// Records from now on, for at most `limit` (None: until stopped).
    pub fn new(limit: Option<Duration>) -> Recorder {
        Recorder {
            started: Instant::now(),
            limit,
            files: Mutex::new(Recording::default()),
        }
    }

    /// Notes a read of `[offset, end)` of the file at `path` (stored absolute).
    pub fn record(&self, path: &str, offset: u64, end: u64) {
        if self.limit.is_some_and(|l| self.started.elapsed() > l) {
            return;
        }
        let abs;
        let path = if path.starts_with('/') {
            path
        } else {
            abs = format!("/{path}");
            abs.as_str()
        };
        let mut r = self.files.lock();
        if r.stopped {
            return;
        }
        let list = match r.ranges.get_mut(path) {
            Some(l) => l,
            None => {
                r.order.push(path.to_string());
                r.ranges.entry(path.to_string()).or_default()
            }
        };
        list.push((offset, end));
    }

    /// Stops recording (later reads are ignored).
    pub fn stop(&self) {
        self.files.lock().stopped = true;
    }

    /// The profile recorded so far: ranges merged per file, files in first-read order.
    pub fn profile(&self) -> Profile {
        let r = self.files.lock();
        let mut files = Vec::new();
        for path in &r.order {
            let Some(list) = r.ranges.get(path) else {
                continue;
            };
            let mut list = list.clone();
            list.sort_unstable();
            let mut merged: Vec<(u64, u64)> = Vec::new();
            for (a, b) in list {
                match merged.last_mut() {
                    Some((_, e)) if a <= *e => *e = (*e).max(b),
                    _ => merged.push((a, b)),
                }
            }
            files.push(ProfileFile {
                path: path.clone(),
                ranges: merged.into_iter().map(|(a, b)| [a, b - a]).collect(),
            });
        }
        Profile { version: 1, files }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorder_merges_ranges_and_keeps_first_read_order() {
        let r = Recorder::new(None);
        r.record("/b", 100, 200);
        r.record("/a", 0, 10);
        r.record("/b", 0, 100);
        r.record("/b", 300, 400);
        r.stop();
        r.record("/c", 0, 1);
        let p = r.profile();
        assert_eq!(
            p.files,
            vec![
                ProfileFile {
                    path: "/b".into(),
                    ranges: vec![[0, 200], [300, 100]]
                },
                ProfileFile {
                    path: "/a".into(),
                    ranges: vec![[0, 10]]
                },
            ]
        );
        assert_eq!(Profile::from_json(&p.to_json()).unwrap(), p);
        assert!(Profile::from_json(br#"{"version":2,"files":[]}"#).is_err());
    }
}
