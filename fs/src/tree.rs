//! The merged read-only tree: all lower layers folded into one directory tree with the
//! OCI layer rules (later layers over earlier ones, whiteouts and opaque directories
//! applied and hidden, hard links sharing one node).
//!
//! Node ids are assigned in a deterministic order from the layer indexes, so the same
//! image always gets the same inode numbers (see [`LowerTree::ino`]).

use skiff_proto::index::{Entry, EntryKind, LayerIndex};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Index of a node in [`LowerTree::nodes`].
pub type LowerId = u32;

/// The id of the root directory.
pub const ROOT: LowerId = 0;

/// Errors from building the merged tree.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    /// A hard link names a target that does not exist (or is a directory) at that point.
    #[error("hard link {path:?} in layer {layer} points to missing or invalid target {target:?}")]
    BadHardlink {
        /// Layer position, 0 = bottom.
        layer: usize,
        /// The link's path.
        path: String,
        /// The target it names.
        target: String,
    },
    /// The tree has more nodes than fit in a node id.
    #[error("too many entries in the merged tree")]
    TooLarge,
}

/// One file, directory or special file of the merged lower tree.
#[derive(Debug, Clone)]
pub struct LowerNode {
    /// The entry's metadata (from the topmost layer that provides it). For a
    /// hard link this is the target's entry, with kind `Reg` (or the target's kind).
    pub entry: Entry,
    /// Layer the entry (and its chunks) come from.
    pub layer: usize,
    /// Children by name, for directories.
    pub children: BTreeMap<String, LowerId>,
    /// How many names in the merged tree refer to this node (directories: 2 + subdirs).
    pub nlink: u32,
    /// All paths that name this node (more than one only for hard links).
    pub paths: Vec<String>,
}

/// The merged view of all lower layers.
pub struct LowerTree {
    /// All nodes; some may be unreachable (replaced or whited out).
    pub nodes: Vec<LowerNode>,
    /// The layer indexes, bottom first.
    pub layers: Vec<Arc<LayerIndex>>,
}

impl LowerTree {
    /// Folds `layers` (bottom first) into one tree.
    pub fn build(layers: Vec<Arc<LayerIndex>>) -> Result<LowerTree, TreeError> {
        let mut root = Entry::new(String::new(), EntryKind::Dir);
        root.mode = 0o755;
        let mut b = Builder {
            nodes: vec![LowerNode {
                entry: root,
                layer: 0,
                children: BTreeMap::new(),
                nlink: 0,
                paths: Vec::new(),
            }],
        };
        for (li, layer) in layers.iter().enumerate() {
            // Opaque markers and whiteouts apply to the layers below, whatever their
            // position in this layer's tar, so they go first.
            for e in &layer.entries {
                if e.kind == EntryKind::Opaque {
                    if let Some(id) = b.resolve(&e.path) {
                        b.nodes[id as usize].children.clear();
                    }
                }
            }
            for e in &layer.entries {
                if e.kind == EntryKind::Whiteout {
                    b.remove(&e.path);
                }
            }
            for e in &layer.entries {
                match e.kind {
                    EntryKind::Whiteout | EntryKind::Opaque => {}
                    EntryKind::Hardlink => {
                        let target = b
                            .resolve(&e.link)
                            .filter(|&t| b.nodes[t as usize].entry.kind != EntryKind::Dir);
                        let Some(target) = target else {
                            return Err(TreeError::BadHardlink {
                                layer: li,
                                path: e.path.clone(),
                                target: e.link.clone(),
                            });
                        };
                        if e.path.is_empty() {
                            continue;
                        }
                        b.attach(&e.path, target)?;
                    }
                    _ => {
                        if e.path.is_empty() {
                            // The root directory's own metadata.
                            if e.kind == EntryKind::Dir {
                                b.nodes[0].entry = e.clone();
                            }
                            continue;
                        }
                        if e.kind == EntryKind::Dir {
                            if let Some(existing) = b.resolve(&e.path) {
                                let n = &mut b.nodes[existing as usize];
                                if n.entry.kind == EntryKind::Dir {
                                    // A directory over a directory merges: new metadata,
                                    // children kept.
                                    n.entry = e.clone();
                                    n.layer = li;
                                    continue;
                                }
                            }
                        }
                        let id = b.push(LowerNode {
                            entry: e.clone(),
                            layer: li,
                            children: BTreeMap::new(),
                            nlink: 0,
                            paths: Vec::new(),
                        })?;
                        b.attach(&e.path, id)?;
                    }
                }
            }
        }
        let mut nodes = b.nodes;
        // Count names: walk the reachable tree once.
        let mut stack = vec![(ROOT, String::new())];
        nodes[0].nlink = 2;
        while let Some((id, path)) = stack.pop() {
            let children: Vec<(String, LowerId)> = nodes[id as usize]
                .children
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect();
            for (name, child) in children {
                let cpath = if path.is_empty() {
                    name
                } else {
                    format!("{path}/{name}")
                };
                let c = &mut nodes[child as usize];
                if c.entry.kind == EntryKind::Dir {
                    c.nlink = 2;
                    nodes[id as usize].nlink += 1;
                    stack.push((child, cpath.clone()));
                } else {
                    c.nlink += 1;
                }
                nodes[child as usize].paths.push(cpath);
            }
        }
        Ok(LowerTree { nodes, layers })
    }

    /// The node with id `id`.
    pub fn node(&self, id: LowerId) -> Option<&LowerNode> {
        self.nodes.get(id as usize)
    }

    /// The child `name` of directory `dir`.
    pub fn child(&self, dir: LowerId, name: &str) -> Option<LowerId> {
        self.node(dir)?.children.get(name).copied()
    }

    /// The inode number of a lower node: stable for the same layer indexes.
    pub fn ino(id: LowerId) -> u64 {
        u64::from(id) + 1
    }

    /// The lower node for an inode number from [`LowerTree::ino`].
    pub fn id_of(&self, ino: u64) -> Option<LowerId> {
        let id = LowerId::try_from(ino.checked_sub(1)?).ok()?;
        (id as usize).lt(&self.nodes.len()).then_some(id)
    }

    /// The layer index a node's entry comes from.
    pub fn layer_of(&self, id: LowerId) -> Option<&Arc<LayerIndex>> {
        self.layers.get(self.node(id)?.layer)
    }
}

struct Builder {
    nodes: Vec<LowerNode>,
}

impl Builder {
    fn push(&mut self, n: LowerNode) -> Result<LowerId, TreeError> {
        let id = LowerId::try_from(self.nodes.len()).map_err(|_| TreeError::TooLarge)?;
        self.nodes.push(n);
        Ok(id)
    }

    fn resolve(&self, path: &str) -> Option<LowerId> {
        let mut cur = ROOT;
        if path.is_empty() {
            return Some(cur);
        }
        for part in path.split('/') {
            cur = *self.nodes[cur as usize].children.get(part)?;
        }
        Some(cur)
    }

    fn remove(&mut self, path: &str) {
        let (parent, name) = split(path);
        if let Some(p) = self.resolve(parent) {
            self.nodes[p as usize].children.remove(name);
        }
    }

    /// Puts `id` at `path`, creating missing parent directories (as tar extractors do)
    /// and replacing whatever was there.
    fn attach(&mut self, path: &str, id: LowerId) -> Result<(), TreeError> {
        let mut cur = ROOT;
        let (parent, name) = split(path);
        if !parent.is_empty() {
            for part in parent.split('/') {
                let next = self.nodes[cur as usize].children.get(part).copied();
                cur = match next {
                    Some(n) if self.nodes[n as usize].entry.kind == EntryKind::Dir => n,
                    _ => {
                        let mut e = Entry::new(String::new(), EntryKind::Dir);
                        e.mode = 0o755;
                        let n = self.push(LowerNode {
                            entry: e,
                            layer: 0,
                            children: BTreeMap::new(),
                            nlink: 0,
                            paths: Vec::new(),
                        })?;
                        self.nodes[cur as usize]
                            .children
                            .insert(part.to_string(), n);
                        n
                    }
                };
            }
        }
        self.nodes[cur as usize]
            .children
            .insert(name.to_string(), id);
        Ok(())
    }
}

/// Splits `a/b/c` into (`a/b`, `c`); a top-level name has parent `""`.
pub fn split(path: &str) -> (&str, &str) {
    path.rsplit_once('/').unwrap_or(("", path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_proto::index::LayerFormat;
    use skiff_proto::Digest;

    fn layer(entries: Vec<(&str, EntryKind, &str)>) -> Arc<LayerIndex> {
        Arc::new(LayerIndex {
            blob: Digest::of(b"x"),
            blob_size: 0,
            format: LayerFormat::Tar,
            entries: entries
                .into_iter()
                .map(|(p, k, l)| {
                    let mut e = Entry::new(p.into(), k);
                    e.link = l.into();
                    e
                })
                .collect(),
            chunks: vec![],
            checkpoints: vec![],
            prefetch: vec![],
        })
    }

    #[test]
    fn applies_whiteouts_opaque_and_hardlinks() {
        use EntryKind::*;
        let l0 = layer(vec![
            ("a", Dir, ""),
            ("a/x", Reg, ""),
            ("a/y", Reg, ""),
            ("b", Dir, ""),
            ("b/old", Reg, ""),
            ("f", Reg, ""),
            ("h", Hardlink, "f"),
        ]);
        let l1 = layer(vec![
            ("b/new", Reg, ""),
            ("b", Opaque, ""),
            ("a/x", Whiteout, ""),
            ("g", Hardlink, "f"),
        ]);
        let t = LowerTree::build(vec![l0, l1]).unwrap();
        let a = t.child(ROOT, "a").unwrap();
        assert!(t.child(a, "x").is_none());
        assert!(t.child(a, "y").is_some());
        let b = t.child(ROOT, "b").unwrap();
        assert!(t.child(b, "old").is_none());
        assert!(t.child(b, "new").is_some());
        let f = t.child(ROOT, "f").unwrap();
        assert_eq!(t.child(ROOT, "h"), Some(f));
        assert_eq!(t.child(ROOT, "g"), Some(f));
        assert_eq!(t.node(f).unwrap().nlink, 3);
        assert_eq!(t.node(ROOT).unwrap().nlink, 4);
    }
}
