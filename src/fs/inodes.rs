//! The inode table. Node ids are the backing inode numbers (the root's swapped with 1, which FUSE
//! reserves for the root), so `st_ino` and `d_ino` agree and stay stable across mounts. A backing
//! inode number reused after its file was deleted gets a new generation, which tells the kernel
//! its cached inode is stale. A node keeps every (parent, name) link it was found under, so hard
//! links keep working when one of their names goes away.

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
    /// (parent, backing name); the name is shared with the name index.
    pub links: Links,
    pub nlookup: u64,
    /// The backing inode had one link when a lookup last stat'ed it.
    pub one_link: bool,
    /// Its last name is gone: a new file with the same backing inode number is another inode.
    pub gone: bool,
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
    /// Set when a reencrypt renamed a new backing file over this node's name: the node that has
    /// the file now. The kernel keeps this node for descriptors opened before, so what it sends
    /// for them follows the file. Never a node that follows another (`Inodes::followers`); each
    /// follower holds one lookup of it.
    pub successor: Option<u64>,
    /// A follower's old backing file, held open so that the backing filesystem does not hand
    /// its inode number to another file while the kernel may still send requests for it.
    pub pin: Option<OwnedFd>,
}

/// A node's links: held inline for the usual single name, so a node costs no allocation.
pub type Links = SmallVec<[(u64, Arc<OsStr>); 1]>;

impl Node {
    fn new(nlookup: u64) -> Node {
        Node {
            generation: 0,
            links: Links::new(),
            nlookup,
            one_link: false,
            gone: false,
            dir_keys: None,
            dir_fd: None,
            may_cache: false,
            cache_stamp: None,
            successor: None,
            pin: None,
        }
    }
}

/// Directory descriptors kept at most (each takes one open file), and as many old backing
/// files held for reencrypted nodes: 4096, or a quarter of the process's descriptor limit if
/// that is lower, so open files always have room.
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

pub struct Inodes {
    root: PathBuf,
    root_backing_ino: u64,
    nodes: Map<u64, Node>,
    by_name: Map<NameKey, u64>,
    /// The nodes that follow each node (see `Node::successor`).
    followers: Map<u64, SmallVec<[u64; 1]>>,
    dir_fds: usize,
    pins: usize,
}

impl Inodes {
    pub fn new(root: PathBuf, root_backing_ino: u64) -> Inodes {
        let mut nodes = Map::default();
        nodes.insert(ROOT, Node::new(1));
        Inodes {
            root,
            root_backing_ino,
            nodes,
            by_name: Map::default(),
            followers: Map::default(),
            dir_fds: 0,
            pins: 0,
        }
    }

    /// The node id of a backing inode number.
    pub fn node_id(&self, backing_ino: u64) -> u64 {
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
        let mut cur = self.resolve(ino);
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

    /// Old backing files held for the nodes reencrypt left behind (see `supersede`).
    pub fn pins_held(&self) -> usize {
        self.pins
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
        let gone = self.nodes.get(&ino).filter(|n| n.gone);
        let held = gone.filter(|n| n.pin.is_some()).and_then(|n| n.successor);
        if let Some(live) = held {
            // A held number is no other file's: this is a stat from before the reencrypt that
            // replaced the file (a lookup or listing racing it), linked after. It names the file.
            ino = live;
        } else if gone.is_some() {
            self.revive(ino, Some((parent, name)));
        }
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
        let node = self.nodes.entry(ino).or_insert_with(|| Node::new(0));
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
        self.pins -= usize::from(node.pin.take().is_some());
        let followed = node.successor.take();
        // Nodes that followed the file that had this number: it is gone, they name nothing.
        if let Some(fs) = self.followers.remove(&ino) {
            if let Some(node) = self.nodes.get_mut(&ino) {
                node.nlookup = node.nlookup.saturating_sub(fs.len() as u64);
            }
            for f in fs {
                if let Some(n) = self.nodes.get_mut(&f) {
                    n.successor = None;
                }
            }
        }
        if let Some(t) = followed {
            self.unfollow(ino, t);
            self.forget(t, 1);
        }
    }

    /// Takes `f` off `target`'s followers (the lookup it held is the caller's to release).
    fn unfollow(&mut self, f: u64, target: u64) {
        if let Some(fs) = self.followers.get_mut(&target) {
            fs.retain(|x| *x != f);
            if fs.is_empty() {
                self.followers.remove(&target);
            }
        }
    }

    /// Reencrypt renamed backing inode `new` over the name of node `old`, whose backing inode is
    /// unlinked now. `old`'s names move to `new`, and `old` (with the nodes that followed it)
    /// follows `new` (see `resolve`) for as long as the kernel keeps it, holding `pin` (the old
    /// backing file) if there is room, so that its number is not reused meanwhile; true if it
    /// does. The caller holds the table locked from before the rename, so no lookup or unlink
    /// came between: any node `new` already has is stale (its file went behind the mount's
    /// back, its number reused), unless it follows `old` (unheld, its number came back as this
    /// file: ext4 hands freed numbers out again), in which case it is this file's again, with
    /// the generation the kernel knows it by.
    pub fn supersede(&mut self, old: u64, new: u64, pin: Option<OwnedFd>) -> bool {
        if old == new || old == ROOT || new == ROOT || !self.nodes.contains_key(&old) {
            return false;
        }
        // Lookups released at the end, when nothing removed can be needed any more.
        let mut release: SmallVec<[u64; 2]> = SmallVec::new();
        let returning = self.nodes.get(&new).and_then(|n| n.successor) == Some(old);
        if returning {
            self.unfollow(new, old);
            release.push(old);
            if let Some(n) = self.nodes.get_mut(&new) {
                n.successor = None;
                n.gone = false;
                self.pins -= usize::from(n.pin.take().is_some());
            }
        } else {
            if let Some(n) = self.nodes.get_mut(&new) {
                n.gone = true;
            }
            self.revive(new, None);
        }
        let Some(o) = self.nodes.get_mut(&old) else {
            return false;
        };
        let links = std::mem::take(&mut o.links);
        let one_link = o.one_link;
        o.gone = true;
        if let Some(t) = o.successor.take() {
            // Not expected (reencrypt works on the node that has the file), but kept consistent.
            self.unfollow(old, t);
            release.push(t);
        }
        let mut movers = self.followers.remove(&old).unwrap_or_default();
        release.extend(std::iter::repeat_n(old, movers.len()));
        movers.push(old);
        for f in &movers {
            if let Some(n) = self.nodes.get_mut(f) {
                n.successor = Some(new);
            }
        }
        let n = self.nodes.entry(new).or_insert_with(|| Node::new(0));
        n.nlookup += movers.len() as u64;
        n.one_link = one_link;
        for (parent, name) in links {
            // A lookup since the rename may have moved the name already.
            if !n.links.iter().any(|(p, m)| *p == parent && *m == name) {
                n.links.insert(0, (parent, name.clone()));
            }
            if let Some(i) = self.by_name.get_mut(&NameRef(parent, &name)) {
                if *i == old {
                    *i = new;
                }
            }
        }
        self.followers.entry(new).or_default().extend(movers);
        let mut held = false;
        if let (Some(o), Some(pin)) = (self.nodes.get_mut(&old), pin) {
            if o.pin.is_none() && self.pins < dir_fds_max() {
                o.pin = Some(pin);
                self.pins += 1;
                held = true;
            }
        }
        for t in release {
            self.forget(t, 1);
        }
        held
    }

    /// The node that has `ino`'s file now: `ino` itself, or the node the reencrypts since it
    /// was found led to.
    pub fn resolve(&self, ino: u64) -> u64 {
        self.nodes
            .get(&ino)
            .and_then(|n| n.successor)
            .unwrap_or(ino)
    }

    /// (parent, backing name) of the file kernel node `ino` reaches now (through `resolve`).
    pub fn name_of(&self, ino: u64) -> Option<(u64, Arc<OsStr>)> {
        self.nodes.get(&self.resolve(ino))?.links.first().cloned()
    }

    /// The nodes that follow `ino` (see `supersede`).
    pub fn followers_of(&self, ino: u64) -> Vec<u64> {
        self.followers
            .get(&ino)
            .map_or_else(Vec::new, |f| f.to_vec())
    }

    /// Nodes that follow another (see `supersede`): the kernel may hold pages under them.
    pub fn superseded(&self) -> Vec<u64> {
        self.followers.values().flatten().copied().collect()
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
        let ino = self.resolve(ino);
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

    /// The kernel dropped `n` references (or a follower its one).
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
        if node.pin.is_some() {
            self.pins -= 1;
        }
        unindex(&mut self.by_name, ino, &node.links);
        if let Some(t) = node.successor {
            self.unfollow(ino, t);
            // A node followed is never a follower: this goes one level deep.
            self.forget(t, 1);
        }
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

    /// After a reencrypt the kernel's old node follows the file to its new inode (for
    /// descriptors opened before) until the kernel forgets it; the node it follows lives as
    /// long as it is followed; a reused number is another file, unless it comes back as this
    /// one.
    #[test]
    fn a_superseded_node_follows_its_file_until_forgotten() {
        let mut t = Inodes::new(PathBuf::from("/c"), 10);
        let (d, _) = t.link(ROOT, OsStr::new("d"), Backing::file(11));
        let (old, _) = t.link(d, OsStr::new("f"), Backing::file(20));
        t.supersede(old, 21, None);
        assert_eq!(t.resolve(old), 21);
        assert_eq!(t.find(d, OsStr::new("f")), Some(21), "the name moved");
        assert_eq!(t.path(old).unwrap(), PathBuf::from("/c/d/f"));
        assert_eq!(t.superseded(), vec![old]);
        // The kernel looks the name up afresh, then forgets the new node before the old one.
        let (new, _) = t.link(d, OsStr::new("f"), Backing::file(21));
        assert_eq!((new, t.get(new).unwrap().links.len()), (21, 1));
        t.forget(new, 1);
        t.rename((d, OsStr::new("f")), (ROOT, OsStr::new("g")));
        assert_eq!(
            t.path(old).unwrap(),
            PathBuf::from("/c/g"),
            "kept for the old node"
        );
        // Twice more: the old node follows the newest; the ones between, which the kernel
        // forgot, went with the last reference to them.
        t.supersede(21, 22, None);
        t.supersede(22, 23, None);
        assert_eq!(t.resolve(old), 23);
        assert!(t.get(21).is_none() && t.get(22).is_none());
        assert_eq!(t.find(ROOT, OsStr::new("g")), Some(23));
        assert_eq!(t.superseded(), vec![old]);
        let (last, _) = t.link(ROOT, OsStr::new("g"), Backing::file(23));
        assert_eq!(
            t.get(last).unwrap().nlookup,
            2,
            "the follower's and the lookup"
        );
        // Forgetting the old node releases what it held.
        t.forget(old, 1);
        assert!(t.get(old).is_none());
        assert_eq!(t.get(last).unwrap().nlookup, 1);
        assert!(t.superseded().is_empty());
        assert_eq!(t.path(last).unwrap(), PathBuf::from("/c/g"));
    }

    /// ext4 hands a freed inode number out again: reencrypts alternate between two numbers, and
    /// the node of each comes back as the same file, generation unchanged.
    #[test]
    fn a_number_that_comes_back_as_the_same_file_keeps_its_node() {
        let mut t = Inodes::new(PathBuf::from("/c"), 10);
        let (a, g) = t.link(ROOT, OsStr::new("f"), Backing::file(20));
        for round in 0..6 {
            let (from, to) = if round % 2 == 0 { (20, 21) } else { (21, 20) };
            t.supersede(from, to, None);
            assert_eq!(t.resolve(a), to, "round {round}");
            assert_eq!(t.resolve(21), to, "round {round}");
            assert_eq!(t.find(ROOT, OsStr::new("f")), Some(to));
            assert_eq!(t.link(ROOT, OsStr::new("f"), Backing::file(to)), (to, g));
            assert!(t.get(to).unwrap().successor.is_none());
        }
        assert_eq!(t.superseded(), vec![21]);
        // The kernel looked 20 up 4 times and 21 three; 21 follows 20. When the kernel forgets
        // both, nothing is left behind.
        assert_eq!(t.get(20).unwrap().nlookup, 5);
        assert_eq!(t.get(21).unwrap().nlookup, 3);
        t.forget(21, 3);
        t.forget(20, 4);
        assert_eq!(t.len(), 1, "only the root");
        assert!(t.superseded().is_empty());
    }

    /// The old backing file is held for a follower (up to a bound), so its number stays taken;
    /// a node the new number already had is stale and becomes another inode.
    #[test]
    fn a_follower_holds_its_old_file_and_a_stale_node_is_renewed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pin = || {
            let f = std::fs::File::create(dir.path().join("x")).expect("create");
            Some(OwnedFd::from(f))
        };
        let mut t = Inodes::new(PathBuf::from("/c"), 10);
        let (a, _) = t.link(ROOT, OsStr::new("a"), Backing::file(20));
        // 21 was a file the kernel knows, deleted behind the mount's back.
        let (stale, g) = t.link(ROOT, OsStr::new("gone-behind"), Backing::file(21));
        t.supersede(a, 21, pin());
        assert_eq!(t.pins_held(), 1);
        assert_eq!(t.get(stale).unwrap().generation, g + 1, "another inode now");
        assert_eq!(
            t.get(21).unwrap().links.len(),
            1,
            "only the name it has now"
        );
        assert_eq!(t.find(ROOT, OsStr::new("gone-behind")), None);
        assert_eq!(t.resolve(a), 21);
        t.forget(a, 1);
        assert_eq!(t.pins_held(), 0, "released with the node");
        assert_eq!(
            t.get(21).unwrap().nlookup,
            1,
            "the kernel's lookup of the old file"
        );
    }

    /// A lookup that stat'ed the file before a reencrypt and records it after finds the old
    /// number held: it gets the file's node now, and the follower stays as it was.
    #[test]
    fn a_stat_from_before_a_reencrypt_reaches_the_file_it_became() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = std::fs::File::create(dir.path().join("x")).expect("create");
        let mut t = Inodes::new(PathBuf::from("/c"), 10);
        let (a, g) = t.link(ROOT, OsStr::new("a"), Backing::file(20));
        t.supersede(a, 21, Some(OwnedFd::from(f)));
        let g21 = t.get(21).unwrap().generation;
        assert_eq!(t.link(ROOT, OsStr::new("a"), Backing::file(20)), (21, g21));
        assert_eq!(t.get(a).unwrap().generation, g, "not renewed");
        assert_eq!((t.resolve(a), t.pins_held()), (21, 1));
        assert_eq!(t.find(ROOT, OsStr::new("a")), Some(21));
        // Without a held file the number may be another file's: renewed, as before.
        let (b, gb) = t.link(ROOT, OsStr::new("b"), Backing::file(30));
        t.supersede(b, 31, None);
        assert_eq!(
            t.link(ROOT, OsStr::new("c"), Backing::file(30)),
            (b, gb + 1)
        );
    }

    /// A number reused by another file: what followed the file that had it follows nothing.
    #[test]
    fn a_number_reused_by_another_file_ends_what_followed_it() {
        let mut t = Inodes::new(PathBuf::from("/c"), 10);
        let (a, g) = t.link(ROOT, OsStr::new("a"), Backing::file(30));
        t.supersede(a, 31, None);
        let (again, g1) = t.link(ROOT, OsStr::new("other"), Backing::file(30));
        assert_eq!(
            (again, g1),
            (a, g + 1),
            "the old node's number: another file"
        );
        assert_eq!(t.resolve(a), a);
        assert_eq!(t.path(a).unwrap(), PathBuf::from("/c/other"));
        assert!(t.get(31).is_none(), "released by the node that followed it");
        // The followed file unlinked, and its number reused while the old node still follows.
        let (b, _) = t.link(ROOT, OsStr::new("b"), Backing::file(40));
        t.supersede(b, 41, None);
        t.unlink(ROOT, OsStr::new("b"), true);
        t.link(ROOT, OsStr::new("c"), Backing::file(41));
        assert_eq!(t.resolve(b), b);
        assert!(t.components(b).is_none(), "names nothing");
        assert!(t.superseded().is_empty());
        assert_eq!(t.get(41).unwrap().nlookup, 1);
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
