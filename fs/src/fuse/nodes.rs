//! The inode and name table: every inode the kernel has been told about, what it
//! stands for (a lower entry, an upper entry, or both merged) and the names it is
//! reachable by. Paths into the upper directory are built from these names.
//!
//! Lifetime: each node counts the kernel's lookups of it (every entry reply); a FUSE
//! `forget` takes them back and a node at zero is dropped. Nodes registered only for
//! the filesystem's own use (listing a directory, resolving a path) start at zero and
//! are dropped by [`Nodes::sweep`] unless a node the kernel holds needs them as an
//! ancestor. Dropping loses nothing: a node is rebuilt by the next lookup, with the
//! same inode number (derived from the lower tree or the upper entry).

use super::attr::kind_of_entry;
use super::{Res, UPPER_INO_BASE};
use crate::tree::{LowerId, LowerTree};
use fuser::{Errno, FileType};
use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::sync::Arc;

/// The root directory's inode number.
pub(crate) const ROOT_INO: u64 = 1;

/// Deepest path [`Nodes::path`] follows before it gives up with `ELOOP`.
const MAX_DEPTH: usize = 4096;

/// Inode numbers given to upper entries whose natural number
/// ([`UPPER_INO_BASE`] + upper inode) still names a removed entry the kernel holds.
pub(crate) const RENUMBERED_INO_BASE: u64 = UPPER_INO_BASE + (1 << 55);

/// One inode of the merged view.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    /// The file type.
    pub kind: FileType,
    /// For files: the lower entry (content until copied up). For directories: the
    /// lower directory merged under this one (`None` when opaque or upper-only).
    pub lower: Option<LowerId>,
    /// Whether the entry exists in the upper directory.
    pub upper: bool,
    /// Names (parent inode, name), most recent last; directories have one.
    pub names: Names,
    /// Lookups the kernel holds (entry replies minus forgotten ones).
    pub lookups: u64,
}

impl Node {
    /// Makes (`parent`, `name`) this node's most recent name (`tree`: the lower tree
    /// the names' texts may refer to).
    pub fn add_name(&mut self, tree: &LowerTree, parent: u64, name: &OsStr) {
        self.add_name_as(tree, parent, name, NameText::from(name));
    }

    /// [`Node::add_name`] with the name's text as it is to be kept.
    fn add_name_as(&mut self, tree: &LowerTree, parent: u64, name: &OsStr, text: NameText) {
        self.remove_name(tree, parent, name);
        self.names.push((parent, text));
    }

    /// Forgets the name (`parent`, `name`).
    pub fn remove_name(&mut self, tree: &LowerTree, parent: u64, name: &OsStr) {
        self.names
            .retain(|(p, n)| !(*p == parent && n.as_os_str(tree) == name));
    }

    /// The parent of the most recent name.
    pub fn parent(&self) -> Option<u64> {
        self.names.last().map(|(p, _)| *p)
    }
}

/// What callers read of a node, copied out so that holding it holds nothing of the
/// table (a plain node, see [`Nodes`], has no [`Node`] to lend).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NodeInfo {
    /// See [`Node::kind`].
    pub kind: FileType,
    /// See [`Node::lower`].
    pub lower: Option<LowerId>,
    /// See [`Node::upper`].
    pub upper: bool,
    /// See [`Node::lookups`].
    pub lookups: u64,
}

impl From<&Node> for NodeInfo {
    fn from(n: &Node) -> NodeInfo {
        NodeInfo {
            kind: n.kind,
            lower: n.lower,
            upper: n.upper,
            lookups: n.lookups,
        }
    }
}

/// One name of a node: the parent's inode and the name in it.
pub(crate) type Name = (u64, NameText);

/// The text of a name. Most names the kernel is told about are names in the lower
/// tree too, which holds their bytes already: those are kept as the name's position
/// there ([`LowerTree::child_position`]), the others as bytes of their own. After a
/// walk of a 100,000-file image that is 100,000 small allocations fewer (~3 MB).
#[derive(Debug, Clone)]
pub(crate) enum NameText {
    /// Bytes of its own.
    Own(Box<OsStr>),
    /// The name at this position of the lower tree's names.
    Lower(u32),
}

impl NameText {
    /// The name, read from `tree` when it keeps no bytes of its own.
    pub fn as_os_str<'a>(&'a self, tree: &'a LowerTree) -> &'a OsStr {
        match self {
            NameText::Own(b) => b,
            NameText::Lower(pos) => OsStr::new(tree.child_name(*pos)),
        }
    }
}

impl From<&OsStr> for NameText {
    fn from(name: &OsStr) -> NameText {
        NameText::Own(name.into())
    }
}

impl From<OsString> for NameText {
    fn from(name: OsString) -> NameText {
        NameText::Own(name.into_boxed_os_str())
    }
}

/// A node's names, most recent last. Almost every node has exactly one, and after a
/// walk of a big image the kernel holds a node per file: one name is kept inline
/// (no allocation, and none for its text either when the lower tree has it), only
/// hard links with several names get a list.
#[derive(Debug, Clone, Default)]
pub(crate) enum Names {
    /// No name (an upper entry whose names all went).
    #[default]
    None,
    /// One name.
    One(Name),
    /// Two or more.
    Many(Vec<Name>),
}

impl std::ops::Deref for Names {
    type Target = [Name];

    fn deref(&self) -> &[Name] {
        match self {
            Names::None => &[],
            Names::One(n) => std::slice::from_ref(n),
            Names::Many(v) => v,
        }
    }
}

impl Names {
    /// Adds `name` as the most recent.
    pub fn push(&mut self, (parent, name): (u64, impl Into<NameText>)) {
        let new = (parent, name.into());
        *self = match std::mem::take(self) {
            Names::None => Names::One(new),
            Names::One(old) => Names::Many(vec![old, new]),
            Names::Many(mut v) => {
                v.push(new);
                Names::Many(v)
            }
        };
    }

    /// Takes out the `i`th name (oldest first). Panics if there is none, as
    /// `Vec::remove` does.
    pub fn remove(&mut self, i: usize) -> Name {
        let mut all = self.take_all();
        let out = all.remove(i);
        *self = Names::from_vec(all);
        out
    }

    /// Keeps only the names `keep` accepts, in order.
    pub fn retain(&mut self, keep: impl FnMut(&Name) -> bool) {
        let mut all = self.take_all();
        all.retain(keep);
        *self = Names::from_vec(all);
    }

    /// Forgets every name.
    pub fn clear(&mut self) {
        *self = Names::None;
    }

    fn take_all(&mut self) -> Vec<Name> {
        match std::mem::take(self) {
            Names::None => Vec::new(),
            Names::One(n) => vec![n],
            Names::Many(v) => v,
        }
    }

    fn from_vec(mut v: Vec<Name>) -> Names {
        match v.len() {
            0 => Names::None,
            1 => Names::One(v.remove(0)),
            _ => Names::Many(v),
        }
    }
}

/// The inode table (under the filesystem's state lock).
///
/// Two kinds of entries: full [`Node`]s, and plain lower nodes, which are exactly
/// what the lower tree says (lower only, under the inode number the tree gives them,
/// their one name the tree's first name of them, in the directory with the tree's
/// inode number): of those only the lookup count is kept, by lower id. After a walk
/// of a 100,000-file image nearly every node is plain, ~17 bytes of table each
/// instead of ~65. A plain node becomes a full one as soon as anything about it
/// differs from the tree (another name, an upper entry, a change through
/// [`Nodes::get_mut`]); an inode number is in one of the two tables at most.
#[derive(Debug)]
pub(crate) struct Nodes {
    /// The lower tree the plain nodes and the [`NameText::Lower`] names refer to.
    tree: Arc<LowerTree>,
    nodes: HashMap<u64, Node>,
    /// Plain lower nodes: lower id → lookups the kernel holds.
    plain: HashMap<LowerId, u64>,
    /// Table size after the last sweep: the next one runs when it has doubled.
    swept_at: usize,
    /// Upper inodes whose entry is gone from the upper filesystem (last link removed)
    /// while the kernel may still hold them (an open or O_PATH descriptor, a working
    /// directory). The upper filesystem is free to reuse their inode numbers.
    removed: HashSet<u64>,
    /// Natural upper inode number → the number used instead, because the natural one
    /// was still held as a removed entry when the upper filesystem reused it.
    renumbered: HashMap<u64, u64>,
    /// The next number to hand out from [`RENUMBERED_INO_BASE`] on.
    next_renumbered: u64,
}

/// Below this many nodes the table is never swept (too small to matter).
const SWEEP_MIN: usize = 4096;

impl Nodes {
    /// A table over lower tree `tree` holding only the root directory (merged over
    /// lower directory `root_lower`, present in the upper directory with
    /// `root_upper`).
    pub fn new(tree: Arc<LowerTree>, root_lower: Option<LowerId>, root_upper: bool) -> Nodes {
        let mut nodes = HashMap::new();
        nodes.insert(
            ROOT_INO,
            Node {
                kind: FileType::Directory,
                lower: root_lower,
                upper: root_upper,
                names: Names::One((ROOT_INO, NameText::Own(Box::default()))),
                lookups: 0,
            },
        );
        Nodes {
            tree,
            nodes,
            plain: HashMap::new(),
            swept_at: 0,
            removed: HashSet::new(),
            renumbered: HashMap::new(),
            next_renumbered: RENUMBERED_INO_BASE,
        }
    }

    /// The inode number of the upper entry whose inode on the upper filesystem is
    /// `host_ino`: [`UPPER_INO_BASE`] + `host_ino`, unless that number still names a
    /// removed entry the kernel holds. Then the new entry gets a number of its own:
    /// with the same number the kernel would take the new file for the removed one
    /// (same inode object), and a descriptor left on the removed file would reach the
    /// new file's attributes and, through `/proc/self/fd`, its content.
    pub fn upper_ino(&mut self, host_ino: u64) -> u64 {
        let natural = UPPER_INO_BASE.saturating_add(host_ino);
        let current = self.renumbered.get(&natural).copied().unwrap_or(natural);
        if !self.removed.contains(&current) {
            return current;
        }
        let fresh = self.next_renumbered;
        self.next_renumbered += 1;
        self.renumbered.insert(natural, fresh);
        fresh
    }

    /// Records that upper entry `ino` lost its last link: its upper inode number may
    /// be reused by the upper filesystem while the kernel still holds `ino`.
    pub fn mark_removed(&mut self, ino: u64) {
        if ino >= UPPER_INO_BASE && self.nodes.contains_key(&ino) {
            self.removed.insert(ino);
        }
    }

    /// Forgets what was recorded about `ino` once its node is dropped.
    fn dropped(&mut self, ino: u64) {
        self.removed.remove(&ino);
        if ino >= RENUMBERED_INO_BASE {
            self.renumbered.retain(|_, v| *v != ino);
        }
    }

    /// How many nodes the table holds.
    pub fn len(&self) -> usize {
        self.nodes.len() + self.plain.len()
    }

    /// Whether node `ino` is known.
    fn contains(&self, ino: u64) -> bool {
        self.nodes.contains_key(&ino) || self.plain_id(ino).is_some()
    }

    /// The lower id of `ino` if it is a plain node.
    fn plain_id(&self, ino: u64) -> Option<LowerId> {
        let id = self.tree.id_of(ino)?;
        self.plain.contains_key(&id).then_some(id)
    }

    /// The full node a plain node `id` with `lookups` stands for.
    fn plain_node(&self, id: LowerId, lookups: u64) -> Option<Node> {
        let (dir, pos) = self.tree.first_name(id)?;
        Some(Node {
            kind: kind_of_entry(self.tree.node(id)?.entry.kind),
            lower: Some(id),
            upper: false,
            names: Names::One((LowerTree::ino(dir), NameText::Lower(pos))),
            lookups,
        })
    }

    /// Makes `ino` a full node if it is a plain one.
    fn make_full(&mut self, ino: u64) {
        let Some(id) = self.plain_id(ino) else {
            return;
        };
        let lookups = self.plain.remove(&id).unwrap_or(0);
        if let Some(node) = self.plain_node(id, lookups) {
            self.nodes.insert(ino, node);
        }
    }

    /// Counts one kernel lookup of `ino` (an entry reply about it is being sent).
    pub fn remember(&mut self, ino: u64) {
        if let Some(n) = self.nodes.get_mut(&ino) {
            n.lookups += 1;
        } else if let Some(id) = self.plain_id(ino) {
            if let Some(l) = self.plain.get_mut(&id) {
                *l += 1;
            }
        }
    }

    /// The kernel forgets `nlookup` lookups of `ino`; at zero the node goes (never
    /// the root).
    pub fn forget(&mut self, ino: u64, nlookup: u64) {
        let left = if let Some(n) = self.nodes.get_mut(&ino) {
            n.lookups = n.lookups.saturating_sub(nlookup);
            n.lookups
        } else if let Some(id) = self.plain_id(ino) {
            let Some(l) = self.plain.get_mut(&id) else {
                return;
            };
            *l = l.saturating_sub(nlookup);
            *l
        } else {
            return;
        };
        if left == 0 && ino != ROOT_INO {
            self.nodes.remove(&ino);
            if let Some(id) = self.plain_id(ino) {
                self.plain.remove(&id);
            }
            self.dropped(ino);
        }
    }

    /// Drops every node the kernel holds no lookup of and that is no ancestor of one
    /// it does, once the table has doubled since the last sweep (amortized cost).
    pub fn maybe_sweep(&mut self) {
        if self.len() >= SWEEP_MIN.max(self.swept_at * 2) {
            self.sweep();
        }
    }

    /// Drops every node the kernel holds no lookup of and that is no ancestor (through
    /// any name) of one it does.
    pub fn sweep(&mut self) {
        let mut keep: std::collections::HashSet<u64> = std::collections::HashSet::new();
        keep.insert(ROOT_INO);
        let held_plain = self
            .plain
            .iter()
            .filter(|(_, &l)| l > 0)
            .map(|(&id, _)| LowerTree::ino(id));
        let mut stack: Vec<u64> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.lookups > 0)
            .map(|(&i, _)| i)
            .chain(held_plain)
            .collect();
        while let Some(ino) = stack.pop() {
            if !keep.insert(ino) {
                continue;
            }
            if let Some(n) = self.nodes.get(&ino) {
                stack.extend(
                    n.names
                        .iter()
                        .map(|(p, _)| *p)
                        .filter(|p| !keep.contains(p)),
                );
            } else if let Some(p) = self.recent_parent(ino) {
                stack.push(p);
            }
        }
        self.nodes.retain(|ino, _| keep.contains(ino));
        self.plain
            .retain(|&id, _| keep.contains(&LowerTree::ino(id)));
        self.swept_at = self.len();
        let nodes = &self.nodes;
        self.removed.retain(|ino| nodes.contains_key(ino));
        self.renumbered.retain(|_, v| nodes.contains_key(v));
    }

    /// What node `ino` is, if known.
    pub fn get(&self, ino: u64) -> Option<NodeInfo> {
        if let Some(n) = self.nodes.get(&ino) {
            return Some(n.into());
        }
        let id = self.plain_id(ino)?;
        Some(NodeInfo {
            kind: kind_of_entry(self.tree.node(id)?.entry.kind),
            lower: Some(id),
            upper: false,
            lookups: *self.plain.get(&id)?,
        })
    }

    /// The node `ino` to change, if known (a plain node becomes a full one).
    pub fn get_mut(&mut self, ino: u64) -> Option<&mut Node> {
        self.make_full(ino);
        self.nodes.get_mut(&ino)
    }

    /// What node `ino` is, or `ENOENT`.
    pub fn node(&self, ino: u64) -> Res<NodeInfo> {
        self.get(ino).ok_or(Errno::ENOENT)
    }

    /// The parent of `ino`'s most recent name, if it has one.
    pub fn recent_parent(&self, ino: u64) -> Option<u64> {
        if let Some(n) = self.nodes.get(&ino) {
            return n.parent();
        }
        let (dir, _) = self.tree.first_name(self.plain_id(ino)?)?;
        Some(LowerTree::ino(dir))
    }

    /// The parent of `ino`'s most recent name (the root for unknown inodes, as `..`
    /// of a directory whose name is gone).
    pub fn parent_of(&self, ino: u64) -> u64 {
        self.recent_parent(ino).unwrap_or(ROOT_INO)
    }

    /// Registers `ino`, found in the upper directory as `name` in `parent`: its kind
    /// and lower counterpart are what the upper directory says now.
    pub fn register_upper(
        &mut self,
        ino: u64,
        kind: FileType,
        lower: Option<LowerId>,
        parent: u64,
        name: &OsStr,
    ) {
        let text = self.text_of(parent, name);
        self.make_full(ino);
        let node = self.nodes.entry(ino).or_insert_with(|| Node {
            kind,
            lower,
            upper: true,
            names: Names::None,
            lookups: 0,
        });
        node.kind = kind;
        node.lower = lower;
        node.upper = true;
        Self::name_node(&self.tree, node, kind, parent, name, text);
    }

    /// Registers `ino`, lower entry `id`, found as `name` in `parent`; a node already
    /// known keeps what it has and gains the name.
    pub fn register_lower(
        &mut self,
        ino: u64,
        kind: FileType,
        id: LowerId,
        parent: u64,
        name: &OsStr,
    ) {
        let text = self.text_of(parent, name);
        let first_name = self.is_first_name(id, parent, &text);
        if !self.nodes.contains_key(&ino) {
            if self.plain_id(ino) == Some(id) && first_name {
                // Known, and found by the name it has: nothing changes.
                return;
            }
            let plain = ino == LowerTree::ino(id)
                && first_name
                && self.tree.node(id).map(|n| kind_of_entry(n.entry.kind)) == Some(kind);
            if plain && self.plain_id(ino).is_none() {
                self.plain.insert(id, 0);
                return;
            }
            self.make_full(ino);
        }
        let node = self.nodes.entry(ino).or_insert_with(|| Node {
            kind,
            lower: Some(id),
            upper: false,
            names: Names::None,
            lookups: 0,
        });
        Self::name_node(&self.tree, node, kind, parent, name, text);
    }

    /// Whether (`parent`, `text`) is the lower tree's first name of node `id`.
    fn is_first_name(&self, id: LowerId, parent: u64, text: &NameText) -> bool {
        match (self.tree.first_name(id), text) {
            (Some((dir, pos)), NameText::Lower(p)) => *p == pos && parent == LowerTree::ino(dir),
            _ => false,
        }
    }

    /// How to keep `name` of directory `parent`: as a position in the lower tree
    /// when the parent's lower directory has that name, else as its bytes.
    fn text_of(&self, parent: u64, name: &OsStr) -> NameText {
        let dir = self.get(parent).and_then(|p| p.lower);
        match dir.and_then(|d| self.tree.child_position(d, name.to_str()?)) {
            Some(pos) => NameText::Lower(pos),
            None => NameText::from(name),
        }
    }

    /// A directory has exactly one name (the one it was last found by).
    fn name_node(
        tree: &LowerTree,
        node: &mut Node,
        kind: FileType,
        parent: u64,
        name: &OsStr,
        text: NameText,
    ) {
        if kind == FileType::Directory {
            node.names.clear();
        }
        node.add_name_as(tree, parent, name, text);
    }

    /// The most recent name of `ino` whose parent is still known (or is the root).
    fn known_name(&self, ino: u64) -> Res<(u64, &OsStr)> {
        let known = |p: u64| p == ROOT_INO || self.contains(p);
        if let Some(n) = self.nodes.get(&ino) {
            let (p, name) = n
                .names
                .iter()
                .rev()
                .find(|(p, _)| known(*p))
                .ok_or(Errno::ENOENT)?;
            return Ok((*p, name.as_os_str(&self.tree)));
        }
        let id = self.plain_id(ino).ok_or(Errno::ENOENT)?;
        let (dir, pos) = self.tree.first_name(id).ok_or(Errno::ENOENT)?;
        let p = LowerTree::ino(dir);
        if !known(p) {
            return Err(Errno::ENOENT);
        }
        Ok((p, OsStr::new(self.tree.child_name(pos))))
    }

    /// The path of `ino` relative to the root, through the most recent names (of a
    /// hard link, the most recent whose parent is still known).
    pub fn path(&self, ino: u64) -> Res<PathBuf> {
        let mut parts = Vec::new();
        let mut cur = ino;
        while cur != ROOT_INO {
            let (p, name) = self.known_name(cur)?;
            parts.push(name);
            cur = p;
            if parts.len() > MAX_DEPTH {
                return Err(Errno::ELOOP);
            }
        }
        Ok(parts.iter().rev().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_proto::index::EntryKind::{self, Dir, Hardlink, Reg};

    fn os(s: &str) -> &OsStr {
        OsStr::new(s)
    }

    /// A lower tree with nothing in it: every name keeps its own bytes.
    static TREE: std::sync::LazyLock<Arc<LowerTree>> =
        std::sync::LazyLock::new(|| Arc::new(LowerTree::build(vec![]).unwrap()));

    fn empty() -> Arc<LowerTree> {
        TREE.clone()
    }

    /// The merged tree of one layer of (path, kind, link target) entries.
    fn tree_of(entries: Vec<(&str, EntryKind, &str)>) -> Arc<LowerTree> {
        Arc::new(LowerTree::build(vec![crate::tree::tests::layer(entries)]).unwrap())
    }

    /// The names of `ino`, as kept or (a plain node) implied by the tree.
    fn names(t: &Nodes, ino: u64) -> Vec<Name> {
        if let Some(n) = t.nodes.get(&ino) {
            return n.names.to_vec();
        }
        let id = t.plain_id(ino).expect("a known node");
        t.plain_node(id, 0).expect("a named node").names.to_vec()
    }

    /// root ─ etc (10) ─ passwd (11); bin (20, upper only) ─ sh (21)
    fn table() -> Nodes {
        let mut t = Nodes::new(empty(), Some(0), true);
        t.register_lower(10, FileType::Directory, 1, ROOT_INO, os("etc"));
        t.register_lower(11, FileType::RegularFile, 2, 10, os("passwd"));
        t.register_upper(20, FileType::Directory, None, ROOT_INO, os("bin"));
        t.register_upper(21, FileType::RegularFile, None, 20, os("sh"));
        t
    }

    #[test]
    fn paths_follow_the_names() {
        let t = table();
        assert_eq!(t.path(ROOT_INO).unwrap(), PathBuf::new());
        assert_eq!(t.path(11).unwrap(), PathBuf::from("etc/passwd"));
        assert_eq!(t.path(21).unwrap(), PathBuf::from("bin/sh"));
        assert_eq!(t.path(99), Err(Errno::ENOENT));
        assert_eq!(t.parent_of(11), 10);
        assert_eq!(t.parent_of(99), ROOT_INO);
    }

    #[test]
    fn hard_links_keep_every_name_most_recent_last() {
        let mut t = table();
        t.register_lower(11, FileType::RegularFile, 2, ROOT_INO, os("pw"));
        assert_eq!(t.path(11).unwrap(), PathBuf::from("pw"));
        // Finding an old name again makes it the most recent, without a duplicate.
        t.register_lower(11, FileType::RegularFile, 2, 10, os("passwd"));
        assert_eq!(names(&t, 11).len(), 2);
        assert_eq!(t.path(11).unwrap(), PathBuf::from("etc/passwd"));
        t.get_mut(11).unwrap().remove_name(&TREE, 10, os("passwd"));
        assert_eq!(t.path(11).unwrap(), PathBuf::from("pw"));
    }

    #[test]
    fn a_directory_has_only_its_latest_name() {
        let mut t = table();
        t.register_lower(10, FileType::Directory, 1, 20, os("etc2"));
        assert_eq!(names(&t, 10).len(), 1);
        assert_eq!(t.path(11).unwrap(), PathBuf::from("bin/etc2/passwd"));
    }

    #[test]
    fn upper_registration_overrides_and_lower_keeps() {
        let mut t = table();
        // Copied up (or replaced in the upper dir): upper facts win.
        t.register_upper(11, FileType::Symlink, None, 10, os("passwd"));
        let n = t.get(11).unwrap();
        assert!(n.upper);
        assert_eq!((n.kind, n.lower), (FileType::Symlink, None));
        // A lower lookup of a known node only adds the name.
        t.register_lower(11, FileType::RegularFile, 7, 10, os("passwd"));
        let n = t.get(11).unwrap();
        assert_eq!((n.kind, n.lower, n.upper), (FileType::Symlink, None, true));
    }

    #[test]
    fn forgotten_nodes_go_and_come_back_with_the_same_inode() {
        let mut t = table();
        t.remember(10);
        t.remember(11);
        t.remember(11);
        t.forget(11, 1);
        assert!(t.get(11).is_some(), "one lookup is still held");
        t.forget(11, 1);
        assert!(t.get(11).is_none());
        t.forget(ROOT_INO, 5);
        assert!(t.get(ROOT_INO).is_some(), "the root stays");
        // A later lookup registers it again under the same number.
        t.register_lower(11, FileType::RegularFile, 2, 10, os("passwd"));
        assert_eq!(t.path(11).unwrap(), PathBuf::from("etc/passwd"));
        // Forgetting an unknown inode is harmless.
        t.forget(12345, 1);
    }

    #[test]
    fn a_reused_upper_inode_gets_its_own_number_while_the_removed_one_is_held() {
        let mut t = table();
        let old = t.upper_ino(7);
        assert_eq!(old, UPPER_INO_BASE + 7);
        t.register_upper(old, FileType::RegularFile, None, 20, os("a"));
        t.remember(old);
        t.get_mut(old).unwrap().remove_name(&TREE, 20, os("a"));
        t.mark_removed(old);
        // The upper filesystem hands inode 7 to a new file: a number of its own,
        // the same one on every lookup.
        let new = t.upper_ino(7);
        assert!(new >= RENUMBERED_INO_BASE, "{new:#x}");
        assert_eq!(t.upper_ino(7), new);
        t.register_upper(new, FileType::RegularFile, None, 20, os("b"));
        t.remember(new);
        // The removed file is forgotten: the new one keeps its number while held.
        t.forget(old, 1);
        assert_eq!(t.upper_ino(7), new);
        // Once it is forgotten too, the natural number is free again.
        t.forget(new, 1);
        assert_eq!(t.upper_ino(7), old);
        // Inodes nobody removed keep their natural numbers.
        assert_eq!(t.upper_ino(8), UPPER_INO_BASE + 8);
    }

    #[test]
    fn a_sweep_keeps_what_the_kernel_holds_and_its_ancestors() {
        let mut t = table();
        t.register_lower(12, FileType::Directory, 3, 10, os("sub"));
        t.register_lower(13, FileType::RegularFile, 4, 12, os("deep"));
        t.register_lower(14, FileType::RegularFile, 5, 10, os("listed"));
        t.remember(13);
        t.sweep();
        // 13 is held; 12 and 10 are its ancestors; 11, 14, 20, 21 were only listed.
        let mut left: Vec<u64> = t.nodes.keys().copied().collect();
        left.sort();
        assert_eq!(left, vec![ROOT_INO, 10, 12, 13]);
        assert_eq!(t.path(13).unwrap(), PathBuf::from("etc/sub/deep"));
        t.forget(13, 1);
        t.sweep();
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn a_hard_link_whose_recent_parent_went_uses_another_name() {
        let mut t = table();
        t.register_lower(12, FileType::Directory, 3, ROOT_INO, os("other"));
        t.register_lower(11, FileType::RegularFile, 2, 12, os("pw"));
        t.remember(10);
        t.remember(11);
        t.sweep();
        assert!(t.get(12).is_some(), "an ancestor through a name is kept");
        t.nodes.remove(&12);
        assert_eq!(t.path(11).unwrap(), PathBuf::from("etc/passwd"));
    }

    #[test]
    fn a_name_cycle_is_eloop_not_a_hang() {
        let mut t = Nodes::new(empty(), None, true);
        t.register_upper(5, FileType::RegularFile, None, 6, os("a"));
        t.register_upper(6, FileType::RegularFile, None, 5, os("b"));
        assert_eq!(t.path(5), Err(Errno::ELOOP));
    }

    #[test]
    fn names_the_lower_tree_has_are_kept_as_positions_in_it() {
        let tree = tree_of(vec![("etc", Dir, ""), ("etc/passwd", Reg, "")]);
        let etc = tree.child(crate::tree::ROOT, "etc").unwrap();
        let passwd = tree.child(etc, "passwd").unwrap();
        let (ei, pi) = (LowerTree::ino(etc), LowerTree::ino(passwd));
        let mut t = Nodes::new(tree.clone(), Some(crate::tree::ROOT), true);
        t.register_lower(ei, FileType::Directory, etc, ROOT_INO, os("etc"));
        t.register_lower(pi, FileType::RegularFile, passwd, ei, os("passwd"));
        // A name the lower directory lacks (made in the upper) keeps its bytes.
        t.register_upper(500, FileType::RegularFile, None, ei, os("new"));
        assert!(matches!(names(&t, pi)[0].1, NameText::Lower(_)));
        assert!(matches!(names(&t, 500)[0].1, NameText::Own(_)));
        assert_eq!(t.path(pi).unwrap(), PathBuf::from("etc/passwd"));
        assert_eq!(t.path(500).unwrap(), PathBuf::from("etc/new"));
        // Found again by the same name: still one name.
        t.register_lower(pi, FileType::RegularFile, passwd, ei, os("passwd"));
        assert_eq!(names(&t, pi).len(), 1);
        t.get_mut(pi).unwrap().remove_name(&tree, ei, os("passwd"));
        assert!(names(&t, pi).is_empty());
    }

    #[test]
    fn plain_lower_nodes_keep_a_count_until_they_differ_from_the_tree() {
        // `h` is a hard link to `etc/passwd`; walking by name, `h` is met first.
        let tree = tree_of(vec![
            ("etc", Dir, ""),
            ("etc/passwd", Reg, ""),
            ("h", Hardlink, "etc/passwd"),
        ]);
        let etc = tree.child(crate::tree::ROOT, "etc").unwrap();
        let file = tree.child(etc, "passwd").unwrap();
        let (ei, fi) = (LowerTree::ino(etc), LowerTree::ino(file));
        let mut t = Nodes::new(tree.clone(), Some(crate::tree::ROOT), true);
        t.register_lower(ei, FileType::Directory, etc, ROOT_INO, os("etc"));
        t.register_lower(fi, FileType::RegularFile, file, ROOT_INO, os("h"));
        assert_eq!(
            (t.nodes.len(), t.plain.len()),
            (1, 2),
            "root full, two plain"
        );
        let n = t.get(fi).unwrap();
        assert_eq!(
            (n.kind, n.lower, n.upper),
            (FileType::RegularFile, Some(file), false)
        );
        assert_eq!(names(&t, fi).len(), 1);
        assert_eq!(t.path(fi).unwrap(), PathBuf::from("h"));
        assert_eq!(t.parent_of(fi), ROOT_INO);
        t.remember(fi);
        t.remember(fi);
        assert_eq!(t.get(fi).unwrap().lookups, 2);
        // `etc` is neither held nor an ancestor of what is.
        t.sweep();
        assert!(t.get(ei).is_none());
        assert_eq!(t.len(), 2);
        // Found by its other name: a full node with both names and its count.
        t.register_lower(ei, FileType::Directory, etc, ROOT_INO, os("etc"));
        t.register_lower(fi, FileType::RegularFile, file, ei, os("passwd"));
        assert_eq!((t.nodes.len(), t.plain.len()), (2, 1));
        let n = t.get(fi).unwrap();
        assert_eq!((names(&t, fi).len(), n.lookups), (2, 2));
        assert_eq!(t.path(fi).unwrap(), PathBuf::from("etc/passwd"));
        // A change through get_mut makes a plain node full.
        t.get_mut(ei).unwrap().upper = true;
        assert_eq!((t.nodes.len(), t.plain.len()), (3, 0));
        assert!(t.get(ei).unwrap().upper);
        t.forget(fi, 2);
        assert!(t.get(fi).is_none());
    }
}
