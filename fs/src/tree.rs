//! The merged read-only tree: all lower layers folded into one directory tree with the
//! OCI layer rules (later layers over earlier ones, whiteouts and opaque directories
//! applied and hidden, hard links sharing one node).
//!
//! Node ids are assigned in a deterministic order from the layer indexes, so the same
//! image always gets the same inode numbers (see [`LowerTree::ino`]).

use skiff_proto::index::{Entry, EntryKind, LayerIndex};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

/// Index of a node in [`LowerTree::nodes`].
pub type LowerId = u32;

/// The id of the root directory.
pub const ROOT: LowerId = 0;

/// Symlinks followed while resolving one entry's parent before giving up, as the
/// kernel's path walk does (ELOOP).
const MAX_SYMLINK_HOPS: usize = 40;

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
    /// Resolving an entry's parent directory met more than 40 symlinks.
    #[error("too many levels of symbolic links resolving the parent of {path:?}")]
    SymlinkLoop {
        /// The entry being applied.
        path: String,
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
                    if let Some(id) = b.resolve(&e.path)? {
                        // Opaque on a symlink clears the directory it points to, as
                        // the applier's RemoveAll under the resolved path does.
                        let id = match b.nodes[id as usize].entry.kind {
                            EntryKind::Symlink => b.walk_dir(&e.path, &e.path, false)?,
                            _ => Some(id),
                        };
                        if let Some(id) = id {
                            b.nodes[id as usize].children.clear();
                        }
                    }
                }
            }
            for e in &layer.entries {
                if e.kind == EntryKind::Whiteout {
                    b.remove(&e.path)?;
                }
            }
            for e in &layer.entries {
                match e.kind {
                    EntryKind::Whiteout | EntryKind::Opaque => {}
                    EntryKind::Hardlink => {
                        let target = b
                            .resolve(&e.link)?
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
                            if let Some(existing) = b.resolve(&e.path)? {
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

    /// The regular file at absolute `path` in the merged tree, following symlinks
    /// (within the root: `..` stops there, absolute targets start from it).
    pub fn resolve_file(&self, path: &str) -> Option<LowerId> {
        let mut hops = 0;
        let mut stack: Vec<LowerId> = vec![ROOT];
        let mut todo: Vec<String> = components(path);
        todo.reverse();
        while let Some(name) = todo.pop() {
            let dir = *stack.last()?;
            match name.as_str() {
                "." => continue,
                ".." => {
                    if stack.len() > 1 {
                        stack.pop();
                    }
                    continue;
                }
                _ => {}
            }
            let id = self.child(dir, &name)?;
            let node = self.node(id)?;
            if node.entry.kind == EntryKind::Symlink {
                hops += 1;
                if hops > MAX_SYMLINK_HOPS {
                    return None;
                }
                if node.entry.link.starts_with('/') {
                    stack.truncate(1);
                }
                let mut target = components(&node.entry.link);
                target.reverse();
                todo.extend(target);
                continue;
            }
            stack.push(id);
        }
        let id = *stack.last()?;
        (self.node(id)?.entry.kind == EntryKind::Reg).then_some(id)
    }

    /// The layer index a node's entry comes from.
    pub fn layer_of(&self, id: LowerId) -> Option<&Arc<LayerIndex>> {
        self.layers.get(self.node(id)?.layer)
    }
}

/// The non-empty components of a path.
fn components(path: &str) -> Vec<String> {
    path.split('/')
        .filter(|c| !c.is_empty())
        .map(String::from)
        .collect()
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

    /// The node at `path`: its parent directory resolved as [`Builder::walk_dir`] does
    /// (symlinks followed within the root), its last component taken as it is.
    fn resolve(&mut self, path: &str) -> Result<Option<LowerId>, TreeError> {
        if path.is_empty() {
            return Ok(Some(ROOT));
        }
        let (parent, name) = split(path);
        let Some(dir) = self.walk_dir(parent, path, false)? else {
            return Ok(None);
        };
        Ok(self.nodes[dir as usize].children.get(name).copied())
    }

    fn remove(&mut self, path: &str) -> Result<(), TreeError> {
        let (parent, name) = split(path);
        if let Some(p) = self.walk_dir(parent, path, false)? {
            self.nodes[p as usize].children.remove(name);
        }
        Ok(())
    }

    /// Puts `id` at `path`, creating missing parent directories (as tar extractors do)
    /// and replacing whatever was there.
    fn attach(&mut self, path: &str, id: LowerId) -> Result<(), TreeError> {
        let (parent, name) = split(path);
        if let Some(dir) = self.walk_dir(parent, path, true)? {
            self.nodes[dir as usize]
                .children
                .insert(name.to_string(), id);
        }
        Ok(())
    }

    /// Resolves directory path `dir` as containerd's applier and umoci resolve a tar
    /// entry's parent: a symlink met on the way is followed, scoped to the root (an
    /// absolute target starts at the root, `..` at the root stays there), so that
    /// `bin/tool` in a later layer lands in `usr/bin` when `bin -> usr/bin` instead of
    /// replacing the link. With `create`, missing components (and files in the way)
    /// become new directories; without it a missing component gives `None`. `entry`
    /// is the path being applied, for the error.
    fn walk_dir(
        &mut self,
        dir: &str,
        entry: &str,
        create: bool,
    ) -> Result<Option<LowerId>, TreeError> {
        // Components still to walk, front first; symlink targets are spliced in.
        let mut pending: VecDeque<String> = dir.split('/').map(str::to_string).collect();
        // The directories walked so far, root first, so `..` can go back up.
        let mut stack = vec![ROOT];
        let mut hops = 0;
        while let Some(part) = pending.pop_front() {
            let cur = *stack.last().unwrap_or(&ROOT);
            match part.as_str() {
                "" | "." => continue,
                ".." => {
                    if stack.len() > 1 {
                        stack.pop();
                    }
                    continue;
                }
                _ => {}
            }
            let next = self.nodes[cur as usize].children.get(&part).copied();
            match next.map(|n| (n, self.nodes[n as usize].entry.kind)) {
                Some((n, EntryKind::Dir)) => stack.push(n),
                Some((n, EntryKind::Symlink)) => {
                    hops += 1;
                    if hops > MAX_SYMLINK_HOPS {
                        return Err(TreeError::SymlinkLoop {
                            path: entry.to_string(),
                        });
                    }
                    let target = &self.nodes[n as usize].entry.link;
                    if target.starts_with('/') {
                        stack.truncate(1);
                    }
                    for p in target.split('/').rev() {
                        pending.push_front(p.to_string());
                    }
                }
                _ if !create => return Ok(None),
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
                    self.nodes[cur as usize].children.insert(part, n);
                    stack.push(n);
                }
            }
        }
        Ok(stack.last().copied())
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
    fn resolves_files_through_symlinks_within_the_root() {
        use EntryKind::*;
        let t = LowerTree::build(vec![layer(vec![
            ("usr", Dir, ""),
            ("usr/lib", Dir, ""),
            ("usr/lib/libc.so.6", Reg, ""),
            ("usr/lib/libc.so", Symlink, "libc.so.6"),
            ("lib", Symlink, "usr/lib"),
            ("lib64", Symlink, "/usr/lib"),
            ("up", Symlink, "../../../usr/lib/libc.so.6"),
            ("a", Symlink, "b"),
            ("b", Symlink, "a"),
        ])])
        .unwrap();
        let libc = t.resolve_file("/usr/lib/libc.so.6").unwrap();
        for p in [
            "usr/lib/libc.so",
            "/lib/libc.so.6",
            "/lib64/libc.so",
            "/lib/../lib/./libc.so.6",
            "/up",
        ] {
            assert_eq!(t.resolve_file(p), Some(libc), "{p}");
        }
        // Not regular files, missing, or a loop: nothing.
        for p in ["/usr/lib", "/lib", "/usr/lib/nope", "/a", "/a/x"] {
            assert_eq!(t.resolve_file(p), None, "{p}");
        }
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

    /// The path of `path`'s node, walking children by name only (no symlinks).
    fn at(t: &LowerTree, path: &str) -> Option<LowerId> {
        path.split('/')
            .try_fold(ROOT, |cur, part| t.child(cur, part))
    }

    #[test]
    fn entries_under_a_symlinked_parent_land_where_the_link_points() {
        // A merged-/usr base: `bin -> usr/bin`. A later layer carries `bin/tool` with
        // no `bin` header, as real images do: containerd and umoci put it in
        // `usr/bin`, and `bin` stays a link (before the fix `bin/sh` vanished).
        use EntryKind::*;
        let base = layer(vec![
            ("usr", Dir, ""),
            ("usr/bin", Dir, ""),
            ("usr/bin/sh", Reg, ""),
            ("bin", Symlink, "usr/bin"),
            ("lib", Symlink, "/usr/lib"),
            ("up", Symlink, "../../../usr"),
        ]);
        let top = layer(vec![
            ("bin/tool", Reg, ""),
            ("lib/libx.so", Reg, ""),
            ("up/share/doc", Reg, ""),
            // `bin/.wh.sh` as the index builders decode it.
            ("bin/sh", Whiteout, ""),
        ]);
        let t = LowerTree::build(vec![base, top]).unwrap();
        let bin = t.child(ROOT, "bin").unwrap();
        assert_eq!(t.node(bin).unwrap().entry.kind, Symlink);
        assert!(at(&t, "usr/bin/tool").is_some());
        assert!(at(&t, "usr/bin/sh").is_none(), "whiteout through the link");
        // An absolute target resolves from the root, a climbing one stops there.
        assert!(at(&t, "usr/lib/libx.so").is_some());
        assert!(at(&t, "usr/share/doc").is_some());
        assert_eq!(t.child(ROOT, "share"), None);
        assert_eq!(
            t.node(at(&t, "usr/bin/tool").unwrap()).unwrap().paths,
            vec!["usr/bin/tool".to_string()]
        );
    }

    #[test]
    fn an_explicit_directory_replaces_a_symlink_as_the_applier_does() {
        use EntryKind::*;
        let base = layer(vec![("usr/bin", Dir, ""), ("bin", Symlink, "usr/bin")]);
        let top = layer(vec![("bin", Dir, ""), ("bin/x", Reg, "")]);
        let t = LowerTree::build(vec![base, top]).unwrap();
        let bin = t.child(ROOT, "bin").unwrap();
        assert_eq!(t.node(bin).unwrap().entry.kind, Dir);
        assert!(at(&t, "bin/x").is_some());
        assert!(at(&t, "usr/bin/x").is_none());
    }

    #[test]
    fn a_symlink_loop_in_a_parent_is_an_error_not_a_hang() {
        use EntryKind::*;
        let l = layer(vec![
            ("a", Symlink, "b"),
            ("b", Symlink, "a"),
            ("a/f", Reg, ""),
        ]);
        let err = LowerTree::build(vec![l]).err().expect("loop must fail");
        assert!(matches!(err, TreeError::SymlinkLoop { .. }), "{err}");
    }

    #[test]
    fn a_dangling_symlinked_parent_creates_its_target_inside_the_root() {
        use EntryKind::*;
        let l = layer(vec![("x", Symlink, "/../opt/x"), ("x/f", Reg, "")]);
        let t = LowerTree::build(vec![l]).unwrap();
        assert!(at(&t, "opt/x/f").is_some());
        assert_eq!(
            t.node(t.child(ROOT, "x").unwrap()).unwrap().entry.kind,
            Symlink
        );
    }
}
