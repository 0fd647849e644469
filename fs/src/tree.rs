//! The merged read-only tree: all lower layers folded into one directory tree with the
//! OCI layer rules (later layers over earlier ones, whiteouts and opaque directories
//! applied and hidden, hard links sharing one node).
//!
//! Node ids are assigned in a deterministic order from the layer indexes, so the same
//! image always gets the same inode numbers (see [`LowerTree::ino`]).
//!
//! Stored compactly, since an image may have hundreds of thousands of files: a node
//! points at its entry in the layer index (no copy), each directory's children are a
//! run of one array sorted by name (looked up by binary search), all names live end
//! to end in one string, and paths are rebuilt from parent links when asked for.

use skiff_proto::index::{Entry, EntryKind, LayerIndex};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

/// Index of a node in the merged tree.
pub type LowerId = u32;

/// The id of the root directory.
pub const ROOT: LowerId = 0;

/// Symlinks followed while resolving one entry's parent before giving up, as the
/// kernel's path walk does (ELOOP).
const MAX_SYMLINK_HOPS: usize = 40;

/// [`Slot::layer`] of a directory the tree made up (the root until a layer names it,
/// parents a layer's entries need but the layer lacks): its entry is
/// [`SYNTHETIC_DIR`].
const SYNTHETIC: u32 = u32::MAX;

/// [`Slot::name`] of a node no directory names (the root, or replaced entries).
const UNNAMED: u32 = u32::MAX;

/// The metadata of a directory the tree made up: mode 0755, owned by root, time 0.
static SYNTHETIC_DIR: Entry = {
    let mut e = Entry::new(String::new(), EntryKind::Dir);
    e.mode = 0o755;
    e
};

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
    /// The tree has more nodes (or longer names in all) than fit in its 32-bit ids.
    #[error("too many entries in the merged tree")]
    TooLarge,
}

/// One node of the merged tree, as stored: where its metadata is and where it sits,
/// with no heap data of its own (a 100,000-file image's tree is a few MB).
#[derive(Debug, Clone, Copy)]
struct Slot {
    /// Layer of the entry, or [`SYNTHETIC`].
    layer: u32,
    /// Position of the entry in that layer's [`LayerIndex::entries`].
    entry: u32,
    /// How many names in the merged tree refer to this node (directories: 2 + subdirs).
    nlink: u32,
    /// Its children: `children[first_child..first_child + child_count]`, by name.
    first_child: u32,
    /// See `first_child`.
    child_count: u32,
    /// The position in `children` of its first name (in the order of a depth-first
    /// walk by name), or [`UNNAMED`]; further names of hard links are in `more_names`.
    name: u32,
    /// The directory holding that name.
    parent: LowerId,
}

/// One name in a directory.
#[derive(Debug, Clone, Copy)]
struct Child {
    /// Where the name starts in [`LowerTree::names`].
    name_start: u32,
    /// Its length in bytes.
    name_len: u32,
    /// The node it names.
    id: LowerId,
}

/// One file, directory or special file of the merged lower tree: a view into
/// [`LowerTree`] ([`LowerTree::node`]).
#[derive(Clone, Copy)]
pub struct LowerNode<'a> {
    /// The entry's metadata (from the topmost layer that provides it). For a
    /// hard link this is the target's entry, with kind `Reg` (or the target's kind).
    pub entry: &'a Entry,
    /// Layer the entry (and its chunks) come from (0 for directories the tree made
    /// up).
    pub layer: usize,
    /// How many names in the merged tree refer to this node (directories: 2 + subdirs).
    pub nlink: u32,
    id: LowerId,
    tree: &'a LowerTree,
}

impl std::fmt::Debug for LowerNode<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LowerNode")
            .field("id", &self.id)
            .field("entry", self.entry)
            .field("layer", &self.layer)
            .field("nlink", &self.nlink)
            .finish()
    }
}

impl<'a> LowerNode<'a> {
    /// Children by name, in byte order (directories; empty for anything else).
    pub fn children(&self) -> impl Iterator<Item = (&'a str, LowerId)> + 'a {
        let tree = self.tree;
        tree.child_range(self.id)
            .iter()
            .map(move |c| (tree.name_of(c), c.id))
    }

    /// Whether the directory has any child.
    pub fn has_children(&self) -> bool {
        !self.tree.child_range(self.id).is_empty()
    }

    /// All paths that name this node (more than one only for hard links), the first
    /// one first (the first met walking the tree depth-first by name).
    pub fn paths(&self) -> Vec<String> {
        let mut out = Vec::new();
        let Some(slot) = self.tree.slots.get(self.id as usize) else {
            return out;
        };
        if slot.name == UNNAMED {
            return out;
        }
        out.push(self.tree.path_of(slot.parent, slot.name));
        let more = &self.tree.more_names;
        let from = more.partition_point(|&(id, _, _)| id < self.id);
        for &(_, parent, name) in more[from..].iter().take_while(|m| m.0 == self.id) {
            out.push(self.tree.path_of(parent, name));
        }
        out
    }

    /// The first of [`LowerNode::paths`], without building the others.
    pub fn path(&self) -> Option<String> {
        let slot = self.tree.slots.get(self.id as usize)?;
        (slot.name != UNNAMED).then(|| self.tree.path_of(slot.parent, slot.name))
    }
}

/// The merged view of all lower layers.
pub struct LowerTree {
    /// All nodes; some may be unreachable (replaced or whited out).
    slots: Vec<Slot>,
    /// Every directory's children, a directory's run sorted by name.
    children: Vec<Child>,
    /// The children's names, end to end.
    names: String,
    /// Names after the first of nodes with several (hard links): (node, directory,
    /// position in `children`), sorted by node, each node's in walk order.
    more_names: Vec<(LowerId, LowerId, u32)>,
    /// The layer indexes, bottom first.
    pub layers: Vec<Arc<LayerIndex>>,
}

impl std::fmt::Debug for LowerTree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LowerTree")
            .field("nodes", &self.slots.len())
            .field("layers", &self.layers.len())
            .finish_non_exhaustive()
    }
}

impl LowerTree {
    /// Folds `layers` (bottom first) into one tree.
    pub fn build(layers: Vec<Arc<LayerIndex>>) -> Result<LowerTree, TreeError> {
        let (slots, children, names) = freeze(Builder::fold(&layers)?)?;
        let mut tree = LowerTree {
            slots,
            children,
            names,
            more_names: Vec::new(),
            layers,
        };
        tree.count_names();
        release_free_memory();
        Ok(tree)
    }

    /// Sets every reachable node's link count and names.
    fn count_names(&mut self) {
        let mut stack = vec![ROOT];
        self.slots[ROOT as usize].nlink = 2;
        while let Some(dir) = stack.pop() {
            let s = self.slots[dir as usize];
            let run = s.first_child..s.first_child + s.child_count;
            for pos in run {
                let child = self.children[pos as usize].id;
                if self.entry_of(child).kind == EntryKind::Dir {
                    self.slots[child as usize].nlink = 2;
                    self.slots[dir as usize].nlink += 1;
                    stack.push(child);
                } else {
                    self.slots[child as usize].nlink += 1;
                }
                let c = &mut self.slots[child as usize];
                if c.name == UNNAMED {
                    c.name = pos;
                    c.parent = dir;
                } else {
                    self.more_names.push((child, dir, pos));
                }
            }
        }
        // Stable: each node's names stay in walk order.
        self.more_names.sort_by_key(|m| m.0);
        self.more_names.shrink_to_fit();
    }

    /// The entry a node's metadata comes from.
    fn entry_of(&self, id: LowerId) -> &Entry {
        let s = &self.slots[id as usize];
        if s.layer == SYNTHETIC {
            return &SYNTHETIC_DIR;
        }
        &self.layers[s.layer as usize].entries[s.entry as usize]
    }

    /// The children of `id`, sorted by name.
    fn child_range(&self, id: LowerId) -> &[Child] {
        match self.slots.get(id as usize) {
            Some(s) => {
                let start = s.first_child as usize;
                &self.children[start..start + s.child_count as usize]
            }
            None => &[],
        }
    }

    fn name_of(&self, c: &Child) -> &str {
        let start = c.name_start as usize;
        &self.names[start..start + c.name_len as usize]
    }

    /// The path of the name at `children[pos]` in directory `dir`.
    fn path_of(&self, mut dir: LowerId, pos: u32) -> String {
        let mut parts = vec![self.name_of(&self.children[pos as usize])];
        while dir != ROOT {
            let s = &self.slots[dir as usize];
            if s.name == UNNAMED {
                break;
            }
            parts.push(self.name_of(&self.children[s.name as usize]));
            dir = s.parent;
        }
        parts.reverse();
        parts.join("/")
    }

    /// How many nodes the tree has (reachable or not).
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether the tree has no node (never: the root is always there).
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The node with id `id`.
    pub fn node(&self, id: LowerId) -> Option<LowerNode<'_>> {
        let s = self.slots.get(id as usize)?;
        Some(LowerNode {
            entry: self.entry_of(id),
            layer: if s.layer == SYNTHETIC {
                0
            } else {
                s.layer as usize
            },
            nlink: s.nlink,
            id,
            tree: self,
        })
    }

    /// The child `name` of directory `dir`.
    pub fn child(&self, dir: LowerId, name: &str) -> Option<LowerId> {
        let run = self.child_range(dir);
        run.binary_search_by(|c| self.name_of(c).cmp(name))
            .ok()
            .map(|i| run[i].id)
    }

    /// Where name `name` of directory `dir` sits in the tree's table of names: a
    /// number that stands for the name ([`LowerTree::child_name`]), for tables that
    /// would otherwise keep a copy of it.
    pub fn child_position(&self, dir: LowerId, name: &str) -> Option<u32> {
        let first = self.slots.get(dir as usize)?.first_child;
        let run = self.child_range(dir);
        let i = run.binary_search_by(|c| self.name_of(c).cmp(name)).ok()?;
        first.checked_add(u32::try_from(i).ok()?)
    }

    /// The name at `pos` ([`LowerTree::child_position`]); empty if there is none.
    pub fn child_name(&self, pos: u32) -> &str {
        self.children
            .get(pos as usize)
            .map_or("", |c| self.name_of(c))
    }

    /// The first name of node `id` (see [`LowerNode::paths`]): the directory holding
    /// it and its position ([`LowerTree::child_position`]). `None` for the root and
    /// for nodes no directory names.
    pub fn first_name(&self, id: LowerId) -> Option<(LowerId, u32)> {
        let s = self.slots.get(id as usize)?;
        (s.name != UNNAMED).then_some((s.parent, s.name))
    }

    /// Approximate bytes of memory the tree itself occupies (not its layer indexes).
    pub fn memory_size(&self) -> usize {
        use std::mem::size_of;
        size_of::<LowerTree>()
            + self.slots.capacity() * size_of::<Slot>()
            + self.children.capacity() * size_of::<Child>()
            + self.names.capacity()
            + self.more_names.capacity() * size_of::<(LowerId, LowerId, u32)>()
    }

    /// The inode number of a lower node: stable for the same layer indexes.
    pub fn ino(id: LowerId) -> u64 {
        u64::from(id) + 1
    }

    /// The lower node for an inode number from [`LowerTree::ino`].
    pub fn id_of(&self, ino: u64) -> Option<LowerId> {
        let id = LowerId::try_from(ino.checked_sub(1)?).ok()?;
        (id as usize).lt(&self.slots.len()).then_some(id)
    }

    /// The regular file at absolute `path` in the merged tree, following symlinks
    /// (within the root: `..` stops there, absolute targets start from it).
    pub fn resolve_file(&self, path: &str) -> Option<LowerId> {
        let mut hops = 0;
        let mut stack: Vec<LowerId> = vec![ROOT];
        let mut todo: Vec<&str> = components(path);
        todo.reverse();
        while let Some(name) = todo.pop() {
            let dir = *stack.last()?;
            match name {
                "." => continue,
                ".." => {
                    if stack.len() > 1 {
                        stack.pop();
                    }
                    continue;
                }
                _ => {}
            }
            let id = self.child(dir, name)?;
            let entry = self.entry_of(id);
            if entry.kind == EntryKind::Symlink {
                hops += 1;
                if hops > MAX_SYMLINK_HOPS {
                    return None;
                }
                if entry.link().starts_with('/') {
                    stack.truncate(1);
                }
                let mut target = components(entry.link());
                target.reverse();
                todo.extend(target);
                continue;
            }
            stack.push(id);
        }
        let id = *stack.last()?;
        (self.entry_of(id).kind == EntryKind::Reg).then_some(id)
    }

    /// The layer index a node's entry comes from.
    pub fn layer_of(&self, id: LowerId) -> Option<&Arc<LayerIndex>> {
        self.layers.get(self.node(id)?.layer)
    }
}

/// Smallest allocation [`tune_allocator`] gives a mapping of its own.
pub const MMAP_THRESHOLD: usize = 1 << 20;

/// Makes glibc's allocator give every allocation of [`MMAP_THRESHOLD`] bytes or more
/// a mapping of its own, returned to the kernel as soon as it is freed. By default
/// glibc raises that threshold to the size of the biggest such block freed so far
/// (up to 32 MiB), and from then on serves big blocks from the heap, where freed
/// ones stay resident in holes: a daemon that fetched and stored the index of a
/// 100,000-file image kept ~28 MB of freed decode and encode buffers, and a walk
/// of the mount ~8 MB of the inode table's outgrown arrays. Call it once, early
/// (setting the threshold also turns the raising off).
pub fn tune_allocator() {
    // SAFETY: mallopt only changes the allocator's parameters; any thread may call
    // it at any time.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    let _ = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int) };
}

/// Hands the heap's free pages back to the kernel. Decoding the layer indexes and
/// building the tree free tens of MB of temporary allocations for a big image (and an
/// unmount frees a mount's inode table); glibc keeps them resident (in the middle of
/// the heap, or in a thread's arena) until asked, and a long-lived mount or daemon
/// would carry them for its whole life.
pub fn release_free_memory() {
    // SAFETY: malloc_trim only returns free memory to the kernel; any thread may call
    // it at any time.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    let _ = unsafe { libc::malloc_trim(0) };
}

/// Turns the builder's maps into the compact tables: slots in id order, each
/// directory's children a run sorted by name, names end to end. Names and links are
/// counted afterwards ([`LowerTree::count_names`]).
fn freeze(built: Vec<BuildNode<'_>>) -> Result<(Vec<Slot>, Vec<Child>, String), TreeError> {
    let too_large = |_| TreeError::TooLarge;
    let mut slots = Vec::with_capacity(built.len());
    let total_children: usize = built.iter().map(|n| n.children.len()).sum();
    let name_bytes: usize = built
        .iter()
        .flat_map(|n| n.children.keys())
        .map(|k| k.len())
        .sum();
    let mut children = Vec::with_capacity(total_children);
    let mut names = String::with_capacity(name_bytes);
    for n in &built {
        let first_child = u32::try_from(children.len()).map_err(too_large)?;
        for (name, &id) in &n.children {
            children.push(Child {
                name_start: u32::try_from(names.len()).map_err(too_large)?,
                name_len: u32::try_from(name.len()).map_err(too_large)?,
                id,
            });
            names.push_str(name);
        }
        slots.push(Slot {
            layer: n.layer,
            entry: n.entry,
            nlink: 0,
            first_child,
            child_count: u32::try_from(n.children.len()).map_err(too_large)?,
            name: UNNAMED,
            parent: ROOT,
        });
    }
    u32::try_from(names.len()).map_err(too_large)?;
    Ok((slots, children, names))
}

/// The non-empty components of a path.
fn components(path: &str) -> Vec<&str> {
    path.split('/').filter(|c| !c.is_empty()).collect()
}

/// A node while the tree is being built: its children in a map (names borrowed from
/// the layer indexes, so building copies no string).
struct BuildNode<'a> {
    layer: u32,
    entry: u32,
    children: BTreeMap<&'a str, LowerId>,
}

impl BuildNode<'_> {
    fn synthetic_dir() -> Self {
        BuildNode {
            layer: SYNTHETIC,
            entry: 0,
            children: BTreeMap::new(),
        }
    }
}

struct Builder<'a> {
    layers: &'a [Arc<LayerIndex>],
    nodes: Vec<BuildNode<'a>>,
}

impl<'a> Builder<'a> {
    /// Applies `layers` (bottom first) with the OCI rules.
    fn fold(layers: &'a [Arc<LayerIndex>]) -> Result<Vec<BuildNode<'a>>, TreeError> {
        let mut b = Builder {
            layers,
            nodes: vec![BuildNode::synthetic_dir()],
        };
        for (li, layer) in layers.iter().enumerate() {
            let layer: &'a LayerIndex = layer;
            let li32 = u32::try_from(li).map_err(|_| TreeError::TooLarge)?;
            // Opaque markers and whiteouts apply to the layers below, whatever their
            // position in this layer's tar, so they go first.
            for e in &layer.entries {
                if e.kind == EntryKind::Opaque {
                    if let Some(id) = b.resolve(&e.path)? {
                        // Opaque on a symlink clears the directory it points to, as
                        // the applier's RemoveAll under the resolved path does.
                        let id = match b.entry(id).kind {
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
            for (ei, e) in layer.entries.iter().enumerate() {
                let ei = u32::try_from(ei).map_err(|_| TreeError::TooLarge)?;
                match e.kind {
                    EntryKind::Whiteout | EntryKind::Opaque => {}
                    EntryKind::Hardlink => {
                        let target = b
                            .resolve(e.link())?
                            .filter(|&t| b.entry(t).kind != EntryKind::Dir);
                        let Some(target) = target else {
                            return Err(TreeError::BadHardlink {
                                layer: li,
                                path: e.path.clone(),
                                target: e.link().to_string(),
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
                                let root = &mut b.nodes[ROOT as usize];
                                root.layer = li32;
                                root.entry = ei;
                            }
                            continue;
                        }
                        if e.kind == EntryKind::Dir {
                            if let Some(existing) = b.resolve(&e.path)? {
                                if b.entry(existing).kind == EntryKind::Dir {
                                    // A directory over a directory merges: new metadata,
                                    // children kept.
                                    let n = &mut b.nodes[existing as usize];
                                    n.layer = li32;
                                    n.entry = ei;
                                    continue;
                                }
                            }
                        }
                        let id = b.push(BuildNode {
                            layer: li32,
                            entry: ei,
                            children: BTreeMap::new(),
                        })?;
                        b.attach(&e.path, id)?;
                    }
                }
            }
        }
        Ok(b.nodes)
    }

    /// The entry node `id` stands for.
    fn entry(&self, id: LowerId) -> &'a Entry {
        let n = &self.nodes[id as usize];
        if n.layer == SYNTHETIC {
            return &SYNTHETIC_DIR;
        }
        let layers: &'a [Arc<LayerIndex>] = self.layers;
        &layers[n.layer as usize].entries[n.entry as usize]
    }

    fn push(&mut self, n: BuildNode<'a>) -> Result<LowerId, TreeError> {
        let id = LowerId::try_from(self.nodes.len()).map_err(|_| TreeError::TooLarge)?;
        if id == UNNAMED {
            return Err(TreeError::TooLarge);
        }
        self.nodes.push(n);
        Ok(id)
    }

    /// The node at `path`: its parent directory resolved as [`Builder::walk_dir`] does
    /// (symlinks followed within the root), its last component taken as it is.
    fn resolve(&mut self, path: &'a str) -> Result<Option<LowerId>, TreeError> {
        if path.is_empty() {
            return Ok(Some(ROOT));
        }
        let (parent, name) = split(path);
        let Some(dir) = self.walk_dir(parent, path, false)? else {
            return Ok(None);
        };
        Ok(self.nodes[dir as usize].children.get(name).copied())
    }

    fn remove(&mut self, path: &'a str) -> Result<(), TreeError> {
        let (parent, name) = split(path);
        if let Some(p) = self.walk_dir(parent, path, false)? {
            self.nodes[p as usize].children.remove(name);
        }
        Ok(())
    }

    /// Puts `id` at `path`, creating missing parent directories (as tar extractors do)
    /// and replacing whatever was there.
    fn attach(&mut self, path: &'a str, id: LowerId) -> Result<(), TreeError> {
        let (parent, name) = split(path);
        if let Some(dir) = self.walk_dir(parent, path, true)? {
            self.nodes[dir as usize].children.insert(name, id);
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
        dir: &'a str,
        entry: &str,
        create: bool,
    ) -> Result<Option<LowerId>, TreeError> {
        // Components still to walk, front first; symlink targets are spliced in.
        let mut pending: VecDeque<&'a str> = dir.split('/').collect();
        // The directories walked so far, root first, so `..` can go back up.
        let mut stack = vec![ROOT];
        let mut hops = 0;
        while let Some(part) = pending.pop_front() {
            let cur = *stack.last().unwrap_or(&ROOT);
            match part {
                "" | "." => continue,
                ".." => {
                    if stack.len() > 1 {
                        stack.pop();
                    }
                    continue;
                }
                _ => {}
            }
            let next = self.nodes[cur as usize].children.get(part).copied();
            match next.map(|n| (n, self.entry(n))) {
                Some((n, e)) if e.kind == EntryKind::Dir => stack.push(n),
                Some((_, e)) if e.kind == EntryKind::Symlink => {
                    hops += 1;
                    if hops > MAX_SYMLINK_HOPS {
                        return Err(TreeError::SymlinkLoop {
                            path: entry.to_string(),
                        });
                    }
                    let target: &'a str = e.link();
                    if target.starts_with('/') {
                        stack.truncate(1);
                    }
                    for p in target.split('/').rev() {
                        pending.push_front(p);
                    }
                }
                _ if !create => return Ok(None),
                _ => {
                    let n = self.push(BuildNode::synthetic_dir())?;
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
pub(crate) mod tests {
    use super::*;
    use skiff_proto::index::LayerFormat;
    use skiff_proto::Digest;

    /// A layer of (path, kind, link target) entries, for tests here and of the
    /// inode table.
    pub(crate) fn layer(entries: Vec<(&str, EntryKind, &str)>) -> Arc<LayerIndex> {
        Arc::new(LayerIndex {
            blob: Digest::of(b"x"),
            blob_size: 0,
            format: LayerFormat::Tar,
            entries: entries
                .into_iter()
                .map(|(p, k, l)| {
                    let mut e = Entry::new(p.into(), k);
                    e.set_link(l.into());
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
        // Every name of the hard-linked file, in walk order; one for the others.
        assert_eq!(t.node(f).unwrap().paths(), vec!["f", "g", "h"]);
        assert_eq!(t.node(f).unwrap().path().as_deref(), Some("f"));
        let y = t.child(a, "y").unwrap();
        assert_eq!(t.node(y).unwrap().paths(), vec!["a/y"]);
        assert!(t.node(ROOT).unwrap().paths().is_empty());
        let names: Vec<&str> = t.node(b).unwrap().children().map(|(n, _)| n).collect();
        assert_eq!(names, vec!["new"]);
        let names: Vec<&str> = t.node(ROOT).unwrap().children().map(|(n, _)| n).collect();
        assert_eq!(names, vec!["a", "b", "f", "g", "h"]);
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
            t.node(at(&t, "usr/bin/tool").unwrap()).unwrap().paths(),
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
    fn a_big_tree_stays_compact() {
        // 100,000 files in 400 directories: the tree holds ids and names only (the
        // entries stay in the layer index), a few dozen bytes per file.
        let mut entries = Vec::new();
        for d in 0..400 {
            entries.push(Entry::new(format!("pkg{d:03}"), EntryKind::Dir));
            for f in 0..250 {
                entries.push(Entry::new(
                    format!("pkg{d:03}/file-{f:06}.txt"),
                    EntryKind::Reg,
                ));
            }
        }
        let l = Arc::new(LayerIndex {
            blob: Digest::of(b"x"),
            blob_size: 0,
            format: LayerFormat::Tar,
            entries,
            chunks: vec![],
            checkpoints: vec![],
            prefetch: vec![],
        });
        let t = LowerTree::build(vec![l]).unwrap();
        assert_eq!(t.len(), 1 + 400 + 100_000);
        let per_file = t.memory_size() / 100_000;
        assert!(per_file <= 64, "{per_file} bytes per file");
        let f = at(&t, "pkg123/file-000042.txt").unwrap();
        assert_eq!(t.node(f).unwrap().paths(), vec!["pkg123/file-000042.txt"]);
        assert_eq!(t.node(t.child(ROOT, "pkg123").unwrap()).unwrap().nlink, 2);
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
