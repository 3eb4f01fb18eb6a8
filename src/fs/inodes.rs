//! The inode table. Node ids are the backing inode numbers (the root's swapped with 1, which FUSE
//! reserves for the root), so `st_ino` and `d_ino` agree and stay stable across mounts (with the
//! exception below). A backing inode number reused after its file was deleted gets a new
//! generation, which tells the kernel its cached inode is stale. A node keeps every (parent,
//! name) link it was found under, so hard links keep working when one of their names goes away.
//!
//! The exception: a reencrypt gives a file a new backing inode, and its node stays the file's
//! while the kernel keeps it (`rebase`), so that the kernel has one inode per file, with one page
//! cache and one size (two would each compute O_APPEND offsets from their own size). Lookups of
//! the new number reach that node through `aliases`; the old number, if the backing filesystem
//! gives it to another file meanwhile, gets a spare id for that file, as no two files may share
//! one. So `st_ino` stays the file's through a reencrypt, until the kernel forgets the node.

use crate::fs::keyring::DirKeys;
use crate::fs::pagecache::{Recorded, Stamp};
use hashbrown::hash_map::RawEntryMut;
use hashbrown::{Equivalent, HashMap};
use smallvec::SmallVec;
use std::ffi::{OsStr, OsString};
use std::hash::{BuildHasher, Hash, Hasher, RandomState};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

pub const ROOT: u64 = 1;

pub struct Node {
    pub generation: u64,
    /// Its file's backing inode number: the one its id comes from, unless a reencrypt moved the
    /// file (see `Inodes::rebase`), or the number was another node's id (a spare id).
    pub backing: u64,
    /// (parent, backing name); the name is shared with the name index.
    pub links: Links,
    pub nlookup: u64,
    /// The backing inode had one link when a lookup last stat'ed it.
    pub one_link: bool,
    /// Its last name is gone: a new file with the same backing inode number is another inode.
    pub gone: bool,
    /// A reencrypt gave its file a backing inode whose number is not its id (see
    /// `Inodes::rebase`).
    pub moved: bool,
    /// For directories: the name keys, once unwrapped.
    pub dir_keys: Option<Arc<DirKeys>>,
    /// For directories: an O_PATH descriptor, so operations need not walk from the root. It
    /// follows the directory through renames; it goes when the directory's last name does.
    pub dir_fd: Option<Arc<OwnedFd>>,
    /// For files: the kernel may hold pages of it (it was opened since the last key store
    /// change), and the backing file's state recorded at an open (see `pagecache`).
    pub may_cache: bool,
    /// Boxed: most nodes never have one, and a listing makes a node per entry.
    pub cache_stamp: Option<Box<Recorded>>,
}

/// A node's links: held inline for the usual single name, so a node costs no allocation.
pub type Links = SmallVec<[(u64, Arc<OsStr>); 1]>;

impl Node {
    fn new(nlookup: u64, backing: u64) -> Node {
        Node {
            generation: 0,
            backing,
            links: Links::new(),
            nlookup,
            one_link: false,
            gone: false,
            moved: false,
            dir_keys: None,
            dir_fd: None,
            may_cache: false,
            cache_stamp: None,
        }
    }
}

/// Directory descriptors kept at most (each takes one open file): 4096, or a quarter of the
/// process's descriptor limit if that is lower, so open files always have room.
pub const DIR_FDS_MAX: usize = 4096;

fn dir_fds_max() -> usize {
    static MAX: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *MAX.get_or_init(|| {
        let soft = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .map_or(1024, |(soft, _)| soft);
        DIR_FDS_MAX.min(usize::try_from(soft / 4).unwrap_or(DIR_FDS_MAX))
    })
}

/// What a lookup saw of a backing inode: its number, and whether it had one link.
#[derive(Debug, Clone, Copy)]
pub struct Backing {
    pub ino: u64,
    pub one_link: bool,
}

impl Backing {
    /// A file with one name (tests).
    #[cfg(test)]
    fn file(ino: u64) -> Backing {
        Backing {
            ino,
            one_link: true,
        }
    }
}

/// A borrowed `(parent, name)` key, so lookups need not copy the name. It hashes as the stored
/// tuple does.
struct NameRef<'a>(u64, &'a OsStr);

type NameKey = (u64, Arc<OsStr>);

/// Names and inode numbers come from the cipher directory, which others may write: std's keyed
/// SipHash, so colliding keys cannot be planted.
type Map<K, V> = HashMap<K, V, RandomState>;

impl Hash for NameRef<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.hash(state);
        self.1.hash(state);
    }
}

impl Equivalent<NameKey> for NameRef<'_> {
    fn equivalent(&self, key: &NameKey) -> bool {
        self.0 == key.0 && self.1 == &*key.1
    }
}

/// Where spare ids start (see `Inodes::spare_id`): above the numbers local filesystems hand out
/// in practice, and below 2^63 for readers of signed inode numbers. A backing inode that has
/// one of them as its number is served like any number that is another node's id.
const SPARE_IDS: u64 = 1 << 48;

pub struct Inodes {
    root: PathBuf,
    root_backing_ino: u64,
    nodes: Map<u64, Node>,
    by_name: Map<NameKey, u64>,
    /// Backing inode numbers whose node has another id: files a reencrypt moved while the
    /// kernel kept their node, and files whose number is the id of another node (such a moved
    /// file's, or a spare id) and which got a spare id.
    aliases: Map<u64, u64>,
    next_spare: u64,
    dir_fds: usize,
}

impl Inodes {
    pub fn new(root: PathBuf, root_backing_ino: u64) -> Inodes {
        let mut nodes = Map::default();
        nodes.insert(ROOT, Node::new(1, root_backing_ino));
        Inodes {
            root,
            root_backing_ino,
            nodes,
            by_name: Map::default(),
            aliases: Map::default(),
            next_spare: SPARE_IDS,
            dir_fds: 0,
        }
    }

    /// The node id of a backing inode number.
    pub fn node_id(&self, backing_ino: u64) -> u64 {
        self.aliases
            .get(&backing_ino)
            .copied()
            .unwrap_or_else(|| self.own_id(backing_ino))
    }

    /// The id a backing inode number gives when no other node has it.
    fn own_id(&self, backing_ino: u64) -> u64 {
        if backing_ino == self.root_backing_ino {
            ROOT
        } else if backing_ino == ROOT {
            self.root_backing_ino
        } else {
            backing_ino
        }
    }

    pub fn get(&self, ino: u64) -> Option<&Node> {
        self.nodes.get(&ino)
    }

    pub fn get_mut(&mut self, ino: u64) -> Option<&mut Node> {
        self.nodes.get_mut(&ino)
    }

    /// Backing names from the root down to a node, through first links (empty for the root).
    pub fn components(&self, ino: u64) -> Option<Vec<OsString>> {
        let mut parts = Vec::new();
        let mut cur = ino;
        while cur != ROOT {
            let (parent, name) = self.nodes.get(&cur)?.links.first()?;
            parts.push(name.to_os_string());
            cur = *parent;
            if parts.len() > 4096 {
                return None;
            }
        }
        parts.reverse();
        Some(parts)
    }

    /// The nearest of `ino` and its ancestors with a cached descriptor, and the names that lead
    /// from it to `ino` (all of them, from the root, if none has one).
    pub fn nearest_dir_fd(&self, ino: u64) -> Option<(Option<Arc<OwnedFd>>, Vec<OsString>)> {
        let mut parts = Vec::new();
        let mut cur = ino;
        loop {
            let node = self.nodes.get(&cur)?;
            if let Some(fd) = &node.dir_fd {
                parts.reverse();
                return Some((Some(fd.clone()), parts));
            }
            if cur == ROOT {
                break;
            }
            let (parent, name) = node.links.first()?;
            parts.push(name.to_os_string());
            cur = *parent;
            if parts.len() > 4096 {
                return None;
            }
        }
        parts.reverse();
        Some((None, parts))
    }

    /// Keeps `fd` as directory `ino`'s descriptor, if the cache has room.
    pub fn cache_dir_fd(&mut self, ino: u64, fd: &Arc<OwnedFd>) {
        if self.dir_fds >= dir_fds_max() {
            return;
        }
        if let Some(n) = self.nodes.get_mut(&ino) {
            if !n.gone && n.dir_fd.is_none() {
                n.dir_fd = Some(fd.clone());
                self.dir_fds += 1;
            }
        }
    }

    /// Directory descriptors held.
    pub fn dir_fds_cached(&self) -> usize {
        self.dir_fds
    }

    /// Nodes whose file a reencrypt moved to another backing inode (see `rebase`).
    pub fn rebased(&self) -> usize {
        self.nodes.values().filter(|n| n.moved).count()
    }

    /// `node_id`, unless that id is a node's whose file has another backing inode (this number
    /// is the old one of a file a reencrypt moved, or equals a spare id, and no lookup has
    /// given its file a spare id yet): then no node is this file's.
    pub fn node_of(&self, backing_ino: u64) -> Option<u64> {
        let id = self.node_id(backing_ino);
        match self.nodes.get(&id) {
            Some(n) if n.backing != backing_ino => None,
            _ => Some(id),
        }
    }

    /// Backing path of a node (for messages: operations go through directory descriptors).
    pub fn path(&self, ino: u64) -> Option<PathBuf> {
        let mut p = self.root.clone();
        p.extend(self.components(ino)?);
        Some(p)
    }

    /// Records that `parent/name` reaches `backing`, counting one lookup. Returns the node id
    /// and its generation.
    pub fn link(&mut self, parent: u64, name: &OsStr, backing: Backing) -> (u64, u64) {
        self.link_with(parent, name, || Arc::from(name), backing)
    }

    /// `link` for a name already shared (a listing's entry): no copy of it is made.
    pub fn link_shared(&mut self, parent: u64, name: &Arc<OsStr>, backing: Backing) -> (u64, u64) {
        self.link_with(parent, name, || name.clone(), backing)
    }

    fn link_with(
        &mut self,
        parent: u64,
        name: &OsStr,
        shared: impl FnOnce() -> Arc<OsStr>,
        backing: Backing,
    ) -> (u64, u64) {
        let mut ino = self.node_id(backing.ino);
        if self
            .nodes
            .get(&ino)
            .is_some_and(|n| n.backing != backing.ino)
        {
            // Its id is another file's node's (one a reencrypt moved, or a spare id).
            ino = self.spare_id(backing.ino);
        }
        self.revive(ino, Some((parent, name)));
        // One hash of the name: the index entry is found, or made, in place.
        let key = NameRef(parent, name);
        let hash = self.by_name.hasher().hash_one(&key);
        let (old, name_rc) = match self
            .by_name
            .raw_entry_mut()
            .from_key_hashed_nocheck(hash, &key)
        {
            RawEntryMut::Occupied(mut e) => {
                let old = std::mem::replace(e.get_mut(), ino);
                (Some(old), e.key().1.clone())
            }
            RawEntryMut::Vacant(e) => {
                let n = shared();
                e.insert_hashed_nocheck(hash, (parent, n.clone()), ino);
                (None, n)
            }
        };
        if let Some(old) = old.filter(|&o| o != ino) {
            self.drop_node_link(old, parent, name);
        }
        let node = self
            .nodes
            .entry(ino)
            .or_insert_with(|| Node::new(0, backing.ino));
        node.nlookup += 1;
        node.one_link = backing.one_link;
        if !node.links.iter().any(|(p, m)| *p == parent && **m == *name) {
            node.links.insert(0, (parent, name_rc));
        }
        (ino, node.generation)
    }

    /// A node whose backing inode went is another inode once its number comes back: a new
    /// generation, and nothing kept of the old one but the link `keep` it comes back under.
    fn revive(&mut self, ino: u64, keep: Option<(u64, &OsStr)>) {
        let Some(node) = self.nodes.get_mut(&ino).filter(|n| n.gone) else {
            return;
        };
        node.generation += 1;
        // Names it had that the index still gives it (removed behind our back) go too.
        let stale = node
            .links
            .iter()
            .filter(|(p, m)| keep.is_none_or(|(kp, kn)| !(*p == kp && **m == *kn)));
        unindex(&mut self.by_name, ino, stale);
        node.links.clear();
        node.dir_keys = None;
        node.may_cache = false;
        node.cache_stamp = None;
        if node.dir_fd.take().is_some() {
            self.dir_fds -= 1;
        }
        node.gone = false;
        node.moved = false;
    }

    /// An unused id for backing inode number `backing_ino`, whose own id is a node's that a
    /// reencrypt moved to another backing inode; lookups of the number reach it from now on.
    fn spare_id(&mut self, backing_ino: u64) -> u64 {
        let mut id = self.next_spare;
        while id == ROOT || self.nodes.contains_key(&id) {
            id = id.wrapping_add(1).max(SPARE_IDS);
        }
        self.next_spare = id.wrapping_add(1).max(SPARE_IDS);
        self.aliases.insert(backing_ino, id);
        id
    }

    /// Reencrypt renamed backing inode `new` over the name of node `ino`'s file: the node stays
    /// the file's, and lookups of `new` reach it (the caller holds the table locked from before
    /// the rename, so none came between). Another node that has `new` as its number is stale
    /// (its file went behind the mount's back and the number was reused): it becomes another
    /// inode, as any node whose number comes back does.
    pub fn rebase(&mut self, ino: u64, new: u64) {
        if ino == ROOT || !self.nodes.contains_key(&ino) {
            return;
        }
        let prev = self.node_id(new);
        if prev != ino {
            if let Some(n) = self.nodes.get_mut(&prev).filter(|n| n.backing == new) {
                n.gone = true;
                self.revive(prev, None);
            }
        }
        let own = self.own_id(new) == ino;
        let Some(node) = self.nodes.get_mut(&ino) else {
            return;
        };
        node.moved = !own;
        let old = std::mem::replace(&mut node.backing, new);
        if self.aliases.get(&old) == Some(&ino) {
            self.aliases.remove(&old);
        }
        if own {
            self.aliases.remove(&new);
        } else {
            self.aliases.insert(new, ino);
        }
    }

    /// (parent, backing name) of node `ino`'s first link.
    pub fn name_of(&self, ino: u64) -> Option<(u64, Arc<OsStr>)> {
        self.nodes.get(&ino)?.links.first().cloned()
    }

    fn drop_link(&mut self, ino: u64, parent: u64, name: &OsStr) {
        self.drop_node_link(ino, parent, name);
        self.by_name.remove(&NameRef(parent, name));
    }

    /// Takes `parent/name` out of node `ino`'s links (the index is the caller's).
    fn drop_node_link(&mut self, ino: u64, parent: u64, name: &OsStr) {
        if let Some(n) = self.nodes.get_mut(&ino) {
            n.links.retain(|(p, m)| !(*p == parent && **m == *name));
        }
    }

    /// `parent/name` no longer exists; `gone` says the backing inode went with it.
    pub fn unlink(&mut self, parent: u64, name: &OsStr, gone: bool) {
        let Some(ino) = self.find(parent, name) else {
            return;
        };
        self.drop_link(ino, parent, name);
        // Only the backing link count says the inode is gone: other names may not be known yet.
        if let Some(n) = self.nodes.get_mut(&ino) {
            if gone {
                n.gone = true;
                if n.dir_fd.take().is_some() {
                    self.dir_fds -= 1;
                }
            }
        }
    }

    /// Whether `parent/name` was, when last stat'ed, the only name of its backing inode: then
    /// removing it removes the inode. A link made since behind the mount's back makes this
    /// wrong only towards a new generation for the inode's other name (the kernel then marks
    /// its cached inode bad: descriptors open on it get EIO), never towards keeping a number
    /// the backing filesystem may reuse.
    pub fn only_name(&self, parent: u64, name: &OsStr) -> bool {
        self.find(parent, name)
            .and_then(|i| self.nodes.get(&i))
            .is_some_and(|n| n.one_link)
    }

    /// Node `ino` gained a name (a link made through the mount): it has more than one now.
    pub fn linked(&mut self, ino: u64) {
        if let Some(n) = self.nodes.get_mut(&ino) {
            n.one_link = false;
        }
    }

    /// The node reached through `parent/name`, if known.
    pub fn find(&self, parent: u64, name: &OsStr) -> Option<u64> {
        self.by_name.get(&NameRef(parent, name)).copied()
    }

    /// A rename moved `from` to `to`, replacing whatever `to` reached.
    pub fn rename(&mut self, from: (u64, &OsStr), to: (u64, &OsStr)) {
        if let Some(victim) = self.find(to.0, to.1) {
            self.drop_link(victim, to.0, to.1);
        }
        if let Some(ino) = self.find(from.0, from.1) {
            self.drop_link(ino, from.0, from.1);
            self.add_link(ino, to);
        }
    }

    fn add_link(&mut self, ino: u64, to: (u64, &OsStr)) {
        let name: Arc<OsStr> = Arc::from(to.1);
        if let Some(n) = self.nodes.get_mut(&ino) {
            n.links.insert(0, (to.0, name.clone()));
        }
        self.by_name.insert((to.0, name), ino);
    }

    /// Swaps what two names reach (RENAME_EXCHANGE).
    pub fn exchange(&mut self, a: (u64, &OsStr), b: (u64, &OsStr)) {
        let ia = self.find(a.0, a.1);
        let ib = self.find(b.0, b.1);
        if let Some(i) = ia {
            self.drop_link(i, a.0, a.1);
        }
        if let Some(i) = ib {
            self.drop_link(i, b.0, b.1);
        }
        if let Some(i) = ia {
            self.add_link(i, b);
        }
        if let Some(i) = ib {
            self.add_link(i, a);
        }
    }

    /// Directory keys held in memory, with their nodes.
    pub fn cached_dir_keys(&self) -> Vec<(u64, Arc<DirKeys>)> {
        self.nodes
            .iter()
            .filter_map(|(i, n)| n.dir_keys.clone().map(|k| (*i, k)))
            .collect()
    }

    /// Notes an open of file `ino`: the kernel may cache its pages from now on.
    pub fn mark_cached(&mut self, ino: u64) {
        if let Some(n) = self.nodes.get_mut(&ino) {
            n.may_cache = true;
        }
    }

    /// Notes an open of file `ino` at `at` that sees the backing state `now`, which is
    /// `settled` or not (see `Stamp::settled`). True if the kernel may keep what it cached: the
    /// state is the one recorded at an earlier open, and that open has settled. A new state is
    /// recorded only if settled.
    pub fn restamp(&mut self, ino: u64, now: Stamp, settled: bool, at: Instant) -> bool {
        let Some(n) = self.nodes.get_mut(&ino) else {
            return false;
        };
        n.may_cache = true;
        match n.cache_stamp.as_deref() {
            Some(r) if r.stamp() == now => r.keeps(now, at),
            _ => {
                n.cache_stamp = settled.then(|| Box::new(Recorded::new(now, at)));
                false
            }
        }
    }

    /// Forgets every recorded state, so the next open of each file drops what the kernel cached
    /// of it. Returns the files the kernel may hold pages of.
    pub fn clear_stamps(&mut self) -> Vec<u64> {
        self.nodes
            .iter_mut()
            .filter(|(_, n)| n.may_cache)
            .map(|(i, n)| {
                n.may_cache = false;
                n.cache_stamp = None;
                *i
            })
            .collect()
    }

    /// The kernel dropped `n` references.
    pub fn forget(&mut self, ino: u64, n: u64) {
        if ino == ROOT {
            return;
        }
        let Some(node) = self.nodes.get_mut(&ino) else {
            return;
        };
        node.nlookup = node.nlookup.saturating_sub(n);
        if node.nlookup > 0 {
            return;
        }
        let Some(node) = self.nodes.remove(&ino) else {
            return;
        };
        if node.dir_fd.is_some() {
            self.dir_fds -= 1;
        }
        if self.aliases.get(&node.backing) == Some(&ino) {
            self.aliases.remove(&node.backing);
        }
        unindex(&mut self.by_name, ino, &node.links);
    }

    /// Directories whose name keys are held in memory.
    pub fn dir_keys_cached(&self) -> usize {
        self.nodes.values().filter(|n| n.dir_keys.is_some()).count()
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

/// Removes `links` from the index where they still lead to `ino` (one hash of each name).
fn unindex<'a>(
    by_name: &mut Map<NameKey, u64>,
    ino: u64,
    links: impl IntoIterator<Item = &'a (u64, Arc<OsStr>)>,
) {
    for (parent, name) in links {
        let key = NameRef(*parent, name);
        let hash = by_name.hasher().hash_one(&key);
        if let RawEntryMut::Occupied(e) =
            by_name.raw_entry_mut().from_key_hashed_nocheck(hash, &key)
        {
            if *e.get() == ino {
                e.remove();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_name_seen_as_the_inodes_one_link_is_its_only_name() {
        let mut t = Inodes::new(PathBuf::from("/c"), 10);
        t.link(ROOT, OsStr::new("f"), Backing::file(11));
        assert!(t.only_name(ROOT, OsStr::new("f")));
        assert!(!t.only_name(ROOT, OsStr::new("unknown")));
        // Two names, or a directory: the count comes from the latest lookup.
        let two = Backing {
            ino: 11,
            one_link: false,
        };
        t.link(ROOT, OsStr::new("g"), two);
        assert!(!t.only_name(ROOT, OsStr::new("f")));
        let dir = Backing {
            ino: 12,
            one_link: false,
        };
        t.link(ROOT, OsStr::new("d"), dir);
        assert!(!t.only_name(ROOT, OsStr::new("d")));
        t.link(ROOT, OsStr::new("g"), Backing::file(11));
        assert!(t.only_name(ROOT, OsStr::new("g")));
        // A link made through the mount counts before its lookup does.
        t.linked(11);
        assert!(!t.only_name(ROOT, OsStr::new("g")));
    }

    #[test]
    fn ids_paths_links_renames_reuse_and_forget() {
        let mut t = Inodes::new(PathBuf::from("/c"), 10);
        assert_eq!(t.node_id(10), ROOT);
        assert_eq!(t.node_id(1), 10);
        assert_eq!(t.node_id(11), 11);
        let (d, _) = t.link(ROOT, OsStr::new("d"), Backing::file(11));
        let (f, g0) = t.link(d, OsStr::new("f"), Backing::file(12));
        assert_eq!(t.path(f).unwrap(), PathBuf::from("/c/d/f"));
        // A hard link reaches the same node; dropping one name keeps the other.
        assert_eq!(t.link(ROOT, OsStr::new("g"), Backing::file(12)), (f, g0));
        t.unlink(ROOT, OsStr::new("g"), false);
        assert_eq!(t.path(f).unwrap(), PathBuf::from("/c/d/f"));
        t.rename((ROOT, OsStr::new("d")), (ROOT, OsStr::new("e")));
        assert_eq!(t.path(f).unwrap(), PathBuf::from("/c/e/f"));
        t.exchange((d, OsStr::new("f")), (ROOT, OsStr::new("x")));
        assert_eq!(t.path(f).unwrap(), PathBuf::from("/c/x"));
        // The last name gone: the same backing number later is a new generation.
        t.unlink(ROOT, OsStr::new("x"), true);
        let (n, g1) = t.link(d, OsStr::new("new"), Backing::file(12));
        assert_eq!(n, f);
        assert_eq!(g1, g0 + 1);
        assert_eq!(t.path(n).unwrap(), PathBuf::from("/c/e/new"));
        t.forget(f, 4);
        assert!(t.get(f).is_none());
        assert_eq!(t.find(d, OsStr::new("new")), None);
        t.forget(ROOT, 100);
        assert!(t.get(ROOT).is_some());
    }

    /// A file's cache is kept from one open to the next only while its backing state is the
    /// same, and never across a reused inode number or a cleared table.
    #[test]
    fn cache_stamps_match_only_the_previous_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, b"1").expect("write");
        std::fs::write(&b, b"22").expect("write");
        let stamp = |p: &std::path::Path| Stamp::of(&std::fs::metadata(p).expect("stat"));
        let t0 = Instant::now();
        let later = |ms: u64| t0 + std::time::Duration::from_millis(ms);
        let mut t = Inodes::new(PathBuf::from("/c"), 10);
        let (f, _) = t.link(ROOT, OsStr::new("f"), Backing::file(12));
        assert!(
            !t.restamp(f, stamp(&a), true, later(0)),
            "first open: nothing kept"
        );
        assert!(
            !t.restamp(f, stamp(&a), true, later(50)),
            "the first open may not have settled"
        );
        assert!(t.restamp(f, stamp(&a), true, later(200)));
        assert!(!t.restamp(f, stamp(&b), true, later(300)), "changed since");
        assert!(t.restamp(f, stamp(&b), true, later(500)));
        assert!(!t.restamp(99, stamp(&b), true, later(600)), "unknown node");
        assert_eq!(t.clear_stamps(), vec![f]);
        assert!(t.clear_stamps().is_empty());
        assert!(!t.restamp(f, stamp(&b), true, later(700)), "cleared");
        // Opened, not recorded: still counted as cached; a state not settled is not kept.
        let (g, _) = t.link(ROOT, OsStr::new("g"), Backing::file(13));
        t.mark_cached(g);
        assert!(!t.restamp(f, stamp(&a), false, later(800)));
        assert!(!t.restamp(f, stamp(&a), true, later(1000)));
        let mut cleared = t.clear_stamps();
        cleared.sort_unstable();
        assert_eq!(cleared, vec![f, g]);
        // The number reused by a new file after the last name went: a new generation, no stamp.
        assert!(!t.restamp(f, stamp(&b), true, later(1100)));
        t.unlink(ROOT, OsStr::new("f"), true);
        t.link(ROOT, OsStr::new("h"), Backing::file(12));
        assert!(!t.restamp(f, stamp(&b), true, later(2000)));
    }

    /// After a reencrypt the file's node stays the file's, through any number of reencrypts
    /// (ext4 alternates between two numbers), until the kernel forgets it.
    #[test]
    fn a_reencrypted_file_keeps_its_node_until_forgotten() {
        let mut t = Inodes::new(PathBuf::from("/c"), 2);
        let (d, _) = t.link(ROOT, OsStr::new("d"), Backing::file(11));
        let (f, g) = t.link(d, OsStr::new("f"), Backing::file(20));
        t.rebase(f, 21);
        // Lookups and listings of the new number reach the same node, generation and name.
        assert_eq!(t.node_id(21), f);
        assert_eq!(t.link(d, OsStr::new("f"), Backing::file(21)), (f, g));
        assert_eq!(t.get(f).unwrap().nlookup, 2);
        assert_eq!(t.name_of(f).unwrap().1.as_ref(), OsStr::new("f"));
        assert_eq!((t.get(f).unwrap().backing, t.rebased()), (21, 1));
        // Again, and back to the first number (ext4 hands freed numbers out again).
        t.rebase(f, 22);
        assert_eq!((t.node_id(21), t.node_id(22)), (21, f));
        assert_eq!((t.node_of(21), t.node_of(20)), (Some(21), None));
        t.rebase(f, 20);
        assert_eq!((t.node_id(22), t.node_id(20), t.rebased()), (22, f, 0));
        assert_eq!(t.node_of(20), Some(f));
        t.rebase(f, 23);
        t.forget(f, 2);
        // Gone with its alias: the number's own id again.
        assert!(t.get(f).is_none());
        assert_eq!(t.node_id(23), 23);
        assert_eq!(t.link(d, OsStr::new("f"), Backing::file(23)).0, 23);
    }

    #[test]
    fn the_old_number_of_a_moved_file_gets_a_spare_id() {
        let mut t = Inodes::new(PathBuf::from("/c"), 2);
        let (a, _) = t.link(ROOT, OsStr::new("a"), Backing::file(20));
        t.rebase(a, 21);
        // No node is 20's file until a lookup gives it one.
        assert_eq!(
            (t.node_of(20), t.node_of(21), t.node_of(22)),
            (None, Some(a), Some(22))
        );
        let (b, _) = t.link(ROOT, OsStr::new("b"), Backing::file(20));
        assert!(b >= SPARE_IDS && b != a);
        assert_eq!((t.node_id(20), t.node_id(21)), (b, a));
        assert_eq!((t.node_of(20), t.rebased()), (Some(b), 1));
        assert_eq!(t.link(ROOT, OsStr::new("b2"), Backing::file(20)).0, b);
        // A spare id is not handed out twice, and goes with its node.
        let (c, _) = t.link(ROOT, OsStr::new("c"), Backing::file(30));
        t.rebase(c, 31);
        let (e, _) = t.link(ROOT, OsStr::new("e"), Backing::file(30));
        assert!(e >= SPARE_IDS && e != b);
        t.forget(b, 2);
        assert_eq!(t.node_id(20), 20);
        assert_eq!(t.node_of(20), None);
        assert_eq!(t.find(ROOT, OsStr::new("a")), Some(a));
    }

    /// A reencrypt whose new backing inode has the number of a stale node (its file went
    /// behind the mount's back) takes that number's lookups; the stale node is another inode
    /// from then on (a new generation, no names), also once the moved file is forgotten.
    #[test]
    fn a_rebase_over_a_stale_nodes_number_renews_it() {
        let mut t = Inodes::new(PathBuf::from("/c"), 2);
        let (a, _) = t.link(ROOT, OsStr::new("a"), Backing::file(20));
        // 21's file went behind the mount's back; the kernel still has its node.
        let (stale, g) = t.link(ROOT, OsStr::new("gone-behind"), Backing::file(21));
        t.rebase(a, 21);
        assert_eq!(t.node_id(21), a);
        assert_eq!(t.link(ROOT, OsStr::new("a"), Backing::file(21)).0, a);
        assert_eq!(t.get(stale).unwrap().generation, g + 1);
        assert_eq!(t.find(ROOT, OsStr::new("gone-behind")), None);
        t.forget(stale, 1);
        assert_eq!(t.node_id(21), a, "the stale node's forget leaves the alias");
        // A moved file unlinked and its number reused: the node is revived, as any number is.
        t.unlink(ROOT, OsStr::new("a"), true);
        let g = t.get(a).unwrap().generation;
        assert_eq!(t.link(ROOT, OsStr::new("z"), Backing::file(21)), (a, g + 1));
    }

    /// Lookups by borrowed name rely on it hashing as the stored key does.
    #[test]
    fn a_borrowed_name_hashes_as_the_stored_key() {
        let s = RandomState::new();
        let owned: NameKey = (7, Arc::from(OsStr::new("abc")));
        assert_eq!(
            s.hash_one(&owned),
            s.hash_one(NameRef(7, OsStr::new("abc")))
        );
        assert_ne!(
            s.hash_one(&owned),
            s.hash_one(NameRef(8, OsStr::new("abc")))
        );
    }

    /// A name that comes to reach another inode (replaced behind our back, or a listing's shared
    /// name) moves in the index; forgetting the old node leaves the new mapping alone.
    #[test]
    fn a_name_moves_to_its_new_inode_and_survives_the_old_one_being_forgotten() {
        let mut t = Inodes::new(PathBuf::from("/c"), 10);
        let shared: Arc<OsStr> = Arc::from(OsStr::new("n"));
        let (a, _) = t.link_shared(ROOT, &shared, Backing::file(20));
        assert_eq!(t.find(ROOT, OsStr::new("n")), Some(a));
        assert!(Arc::ptr_eq(&t.get(a).unwrap().links[0].1, &shared));
        let (b, _) = t.link(ROOT, OsStr::new("n"), Backing::file(21));
        assert_ne!(a, b);
        assert_eq!(t.find(ROOT, OsStr::new("n")), Some(b));
        assert!(t.get(a).unwrap().links.is_empty());
        t.forget(a, 1);
        assert!(t.get(a).is_none());
        assert_eq!(t.find(ROOT, OsStr::new("n")), Some(b));
        assert_eq!(t.path(b).unwrap(), PathBuf::from("/c/n"));
        // A second lookup of the same name counts, and adds no second link.
        assert_eq!(t.link_shared(ROOT, &shared, Backing::file(21)).0, b);
        assert_eq!(t.get(b).unwrap().links.len(), 1);
        assert_eq!(t.get(b).unwrap().nlookup, 2);
        t.forget(b, 2);
        assert_eq!(t.find(ROOT, OsStr::new("n")), None);
        assert_eq!(t.len(), 1);

        // Two names of one inode: one removed behind our back, then the other through us,
        // which finds the inode gone. When its number comes back as a new file, the stale
        // name stops reaching it, and the name it comes back under stays.
        let (h, _) = t.link(ROOT, OsStr::new("h1"), Backing::file(30));
        t.link(ROOT, OsStr::new("h2"), Backing::file(30));
        t.unlink(ROOT, OsStr::new("h1"), true);
        assert_eq!(t.find(ROOT, OsStr::new("h2")), Some(h));
        let (again, _) = t.link(ROOT, OsStr::new("h3"), Backing::file(30));
        assert_eq!(again, h);
        assert_eq!(t.find(ROOT, OsStr::new("h2")), None);
        assert_eq!(t.find(ROOT, OsStr::new("h3")), Some(h));
        t.unlink(ROOT, OsStr::new("h3"), true);
        t.link(ROOT, OsStr::new("h3"), Backing::file(30));
        assert_eq!(t.find(ROOT, OsStr::new("h3")), Some(h));
    }
}
