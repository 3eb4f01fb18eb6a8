//! The filesystem's operations on the cipher directory, independent of the FUSE library: the
//! FUSE glue (`fs::fuse`) only converts requests and replies.

use crate::fs::cipherdir::{self, Volume};
use crate::fs::contentenc::{self as ce, ContentCipher};
use crate::fs::errno::{Errno, FsResult};
use crate::fs::fileio::FileContent;
use crate::fs::header::{self, DataKeys, Kind};
use crate::fs::inodes::{Inodes, ROOT};
use crate::fs::keyring::{DirKeys, Keyring};
use crate::fs::nametransform::{self as nt, BackingName, DIRKEY_FILE, EntryKind};
use crate::fs::sys;
use crate::keystore::atomic;
use crate::kms::Caller;
use crate::provider::KeyProvider;
use fuser::{FileAttr, FileType};
use nix::fcntl::{AtFlags, OFlag, openat};
use nix::sys::stat::{FileStat, Mode, fstatat};
use nix::unistd::UnlinkatFlags;
use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use crate::fs::keyring::Requester;

mod control;
pub use control::{KEY_XATTR, REENCRYPT_XATTR, REWRAP_XATTR, STATUS_XATTR};

pub struct OpenFile {
    pub content: RwLock<FileContent>,
    handles: AtomicU64,
    /// The node id this state is filed under in `files` (reencrypt moves it to a new inode).
    ino: AtomicU64,
}

impl OpenFile {
    /// The shared state of a file just opened under node `ino`, counting `handles` users.
    fn new(content: FileContent, ino: u64, handles: u64) -> Arc<OpenFile> {
        Arc::new(OpenFile {
            content: RwLock::new(content),
            handles: AtomicU64::new(handles),
            ino: AtomicU64::new(ino),
        })
    }
}

enum Handle {
    File { file: Arc<OpenFile> },
    Dir { entries: Arc<[DirEntry]> },
}

/// A looked-up entry: attributes and the node's generation.
pub struct Entry {
    pub attr: FileAttr,
    pub generation: u64,
}

/// What a GETXATTR or LISTXATTR answers, whichever front end carries it.
#[derive(Debug, PartialEq, Eq)]
pub enum XattrReply<'a> {
    /// The caller asked for the size (a buffer of 0 bytes).
    Size(u32),
    Data(&'a [u8]),
}

/// The answer for value `v` and a caller's buffer of `size` bytes: ERANGE if it does not fit.
pub fn xattr_reply(v: &[u8], size: u32) -> FsResult<XattrReply<'_>> {
    if size == 0 {
        Ok(XattrReply::Size(v.len() as u32))
    } else if v.len() <= size as usize {
        Ok(XattrReply::Data(v))
    } else {
        Err(Errno::ERANGE)
    }
}

#[derive(Clone)]
pub struct DirEntry {
    pub ino: u64,
    pub name: OsString,
    pub kind: FileType,
    /// The backing (encrypted) name; empty for "." and "..".
    pub backing: Arc<OsStr>,
}

/// A directory handle's entries from an offset on, shared with the handle rather than copied (a
/// listing is read in several requests).
pub struct Listing {
    entries: Arc<[DirEntry]>,
    from: usize,
}

impl Listing {
    /// Entries with their offsets (positions + 1).
    pub fn iter(&self) -> impl Iterator<Item = (u64, &DirEntry)> {
        self.entries
            .iter()
            .enumerate()
            .skip(self.from)
            .map(|(i, e)| (i as u64 + 1, e))
    }
}

pub struct KmsFs {
    root: PathBuf,
    keys: Keyring,
    volume: Volume,
    /// The CMK that wraps the volume key now (a rewrap may move it).
    volume_cmk: Mutex<String>,
    inodes: Mutex<Inodes>,
    files: Mutex<HashMap<u64, Arc<OpenFile>>>,
    handles: Mutex<HashMap<u64, Handle>>,
    next_fh: AtomicU64,
    is_root: bool,
    /// Undo records of in-place rewrites; None where the cipher dir cannot be written.
    journal: Option<Arc<crate::fs::undo::Journal>>,
    /// Milliseconds after `started` of the last request (for idle unmounting).
    started: std::time::Instant,
    last_request: AtomicU64,
    /// How many requests the io_uring queues served (`kmsfs status`).
    pub ring: crate::fs::uring::Stats,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a lock would poison it; the data stays consistent for our uses.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn time(secs: i64, nsecs: i64) -> SystemTime {
    let ns = u32::try_from(nsecs.clamp(0, 999_999_999)).unwrap_or(0);
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, ns)
    } else {
        UNIX_EPOCH
            .checked_sub(Duration::new(secs.unsigned_abs(), 0))
            .map(|t| t + Duration::new(0, ns))
            .unwrap_or(UNIX_EPOCH)
    }
}

fn file_type(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

fn is_dir(st: &FileStat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

fn is_file(st: &FileStat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFREG
}

/// Plaintext length of a symlink whose stored target is `stored_len` base64url characters.
pub fn symlink_plain_len(stored_len: u64) -> u64 {
    (stored_len * 3 / 4).saturating_sub(crate::cryptocore::SEAL_OVERHEAD as u64)
}

/// Attributes of node `ino` from its backing metadata, with plaintext sizes.
pub fn to_attr(ino: u64, st: &FileStat) -> FileAttr {
    let kind = file_type(st.st_mode);
    let len = st.st_size.max(0) as u64;
    let size = match kind {
        FileType::RegularFile => ce::layout(len).size,
        FileType::Symlink => symlink_plain_len(len),
        _ => len,
    };
    FileAttr {
        ino: fuser::INodeNo(ino),
        size,
        blocks: st.st_blocks.max(0) as u64,
        atime: time(st.st_atime, st.st_atime_nsec),
        mtime: time(st.st_mtime, st.st_mtime_nsec),
        ctime: time(st.st_ctime, st.st_ctime_nsec),
        crtime: UNIX_EPOCH,
        kind,
        perm: (st.st_mode & 0o7777) as u16,
        nlink: st.st_nlink as u32,
        uid: st.st_uid,
        gid: st.st_gid,
        rdev: st.st_rdev as u32,
        blksize: ce::BLOCK as u32,
        flags: 0,
    }
}

/// An xattr's name and decrypted value.
type Xattr = (Vec<u8>, zeroize::Zeroizing<Vec<u8>>);

/// The decrypted `user.*` xattrs of an open file.
fn open_xattrs(c: &FileContent) -> FsResult<Vec<Xattr>> {
    let mut out = Vec::new();
    for name in sys::flistxattr(c.file())? {
        if !name.starts_with(b"user.") {
            continue;
        }
        let stored = sys::fgetxattr(c.file(), &name)?;
        let value =
            cipherdir::decrypt_xattr(c.xattr_key()?, &c.id, &name, &stored).ok_or_else(|| {
                log::error!(
                    "{}: xattr {:?} failed authentication",
                    c.label,
                    String::from_utf8_lossy(&name)
                );
                Errno::EIO
            })?;
        out.push((name, value));
    }
    Ok(out)
}

/// An entry reached through its parent directory's descriptor: no backing path is ever built,
/// so plaintext paths up to PATH_MAX work although encrypted names are longer.
/// A shared directory descriptor (see `Inodes::cache_dir_fd`).
pub type DirFd = Arc<OwnedFd>;

pub struct At {
    pub dir: DirFd,
    pub name: Arc<OsStr>,
}

fn open_dir_at(dir: &OwnedFd, name: &OsStr) -> FsResult<OwnedFd> {
    Ok(openat(
        dir,
        name,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?)
}

fn stat_at(dir: &OwnedFd, name: &OsStr) -> FsResult<FileStat> {
    Ok(fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW)?)
}

fn read_at(dir: impl std::os::fd::AsFd, name: &OsStr) -> FsResult<Vec<u8>> {
    let fd = openat(
        dir,
        name,
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut File::from(fd), &mut out)?;
    Ok(out)
}

fn unlink_at(dir: &OwnedFd, name: &OsStr) -> FsResult<()> {
    Ok(nix::unistd::unlinkat(
        dir,
        name,
        UnlinkatFlags::NoRemoveDir,
    )?)
}

/// Clears set-user-id, and set-group-id where group execution is allowed, as a write by an
/// unprivileged user must (the rule of the kernel's FUSE_HANDLE_KILLPRIV_V2).
fn clear_set_id(f: &File) -> FsResult<()> {
    let mode = nix::sys::stat::fstat(f)?.st_mode;
    let mut kill = libc::S_ISUID;
    if mode & libc::S_IXGRP != 0 {
        kill |= libc::S_ISGID;
    }
    if mode & kill != 0 {
        nix::sys::stat::fchmod(f, Mode::from_bits_truncate(mode & 0o7777 & !kill))?;
    }
    Ok(())
}

impl KmsFs {
    pub fn new(
        root: PathBuf,
        provider: Arc<dyn KeyProvider>,
        caller: Caller,
        volume: Volume,
    ) -> FsResult<KmsFs> {
        let st = nix::sys::stat::lstat(&root)?;
        let journal = crate::fs::undo::Journal::open(&root, true)
            .or_else(|_| crate::fs::undo::Journal::open(&root, false))
            .unwrap_or_else(|e| {
                log::warn!("no undo journal (in-place rewrites are not crash-safe): {e}");
                None
            });
        Ok(KmsFs {
            journal,
            started: std::time::Instant::now(),
            last_request: AtomicU64::new(0),
            ring: Default::default(),
            inodes: Mutex::new(Inodes::new(root.clone(), st.st_ino)),
            root,
            volume_cmk: Mutex::new(
                provider
                    .key_of(&volume.config.volume_key)
                    .map_or_else(|| volume.config.key.clone(), |(k, _)| k),
            ),
            keys: Keyring::new(provider, caller),
            volume,
            files: Mutex::new(HashMap::new()),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            is_root: nix::unistd::geteuid().is_root(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// How many data keys to keep for reopening files without a KMS Decrypt (0: none).
    pub fn set_data_key_cache(&self, entries: usize) {
        self.keys.set_data_key_cache(entries);
    }

    /// Notes a request (anything but statfs, which monitors poll, and releases).
    pub fn touch(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.last_request.store(ms, Ordering::Relaxed);
    }

    /// Time since the last request.
    pub fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_request.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(last)
    }

    /// Open file and directory handles.
    pub fn open_handles(&self) -> usize {
        lock(&self.handles).len()
    }

    /// Backing path, for messages only.
    fn label(&self, ino: u64) -> String {
        lock(&self.inodes)
            .path(ino)
            .map_or_else(|| format!("inode {ino}"), |p| p.display().to_string())
    }

    fn root_fd(&self) -> FsResult<OwnedFd> {
        Ok(nix::fcntl::open(
            &self.root,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?)
    }

    /// A descriptor of directory `ino` (O_PATH): the cached one, or opened from the nearest
    /// ancestor that has one (and then cached).
    fn dir_fd(&self, ino: u64) -> FsResult<DirFd> {
        // A rename between reading the names and opening them could hand us another
        // directory: check what was opened before using (and keeping) it.
        for _ in 0..3 {
            let (start, comps) = lock(&self.inodes)
                .nearest_dir_fd(ino)
                .ok_or(Errno::ENOENT)?;
            if comps.is_empty() {
                if let Some(fd) = start {
                    return Ok(fd);
                }
            }
            let mut fd = match start {
                Some(fd) => fd,
                None => Arc::new(self.root_fd()?),
            };
            for c in &comps {
                fd = Arc::new(open_dir_at(&fd, c)?);
            }
            let backing = nix::sys::stat::fstat(&*fd)?.st_ino;
            let mut inodes = lock(&self.inodes);
            if inodes.node_id(backing) == ino {
                inodes.cache_dir_fd(ino, &fd);
                return Ok(fd);
            }
        }
        Err(Errno::ENOENT)
    }

    /// Node `ino` as (parent descriptor, name); the root is (root, ".").
    fn at(&self, ino: u64) -> FsResult<At> {
        if ino == ROOT {
            return Ok(At {
                dir: self.dir_fd(ROOT)?,
                name: Arc::from(OsStr::new(".")),
            });
        }
        let (parent, name) = lock(&self.inodes)
            .get(ino)
            .and_then(|n| n.links.first().cloned())
            .ok_or(Errno::ENOENT)?;
        Ok(At {
            dir: self.dir_fd(parent)?,
            name,
        })
    }

    /// The keys of directory `ino`, unwrapped once (as `r`) and then cached on its node; every
    /// use checks that `r` may use the directory's CMK.
    fn dir_keys(&self, ino: u64, r: Requester) -> FsResult<Arc<DirKeys>> {
        if let Some(k) = lock(&self.inodes).get(ino).and_then(|n| n.dir_keys.clone()) {
            self.keys
                .authorize(r, k.key.as_deref(), Kind::DirKey, k.id)?;
            return Ok(k);
        }
        let dir = self.dir_fd(ino)?;
        // Built only for a message: a path is a walk up the tree and a few allocations.
        let label = || format!("{}/{DIRKEY_FILE}", self.label(ino));
        let data = read_at(&dir, OsStr::new(DIRKEY_FILE)).map_err(|e| {
            log::error!("{}: errno {}", label(), e.0);
            Errno::EIO
        })?;
        let (u, key) = self.keys.unwrap(Kind::DirKey, &data, r, label)?;
        let keys = Arc::new(DirKeys {
            keys: DataKeys::derive(&u.data_key, &u.id),
            id: u.id,
            key,
        });
        if let Some(n) = lock(&self.inodes).get_mut(ino) {
            n.dir_keys = Some(keys.clone());
        }
        Ok(keys)
    }

    /// The CMK new entries in directory `ino` are wrapped by: the one that wraps its own key.
    fn key_for_new(&self, ino: u64, r: Requester) -> FsResult<String> {
        let d = self.dir_keys(ino, r)?;
        Ok(d.key
            .clone()
            .unwrap_or_else(|| self.volume.config.key.clone()))
    }

    /// The CMK for a new data key of file `ino`: its directory's, else `current` (the one it
    /// has), else the volume's.
    fn key_for_file(&self, ino: u64, current: Option<String>, r: Requester) -> FsResult<String> {
        let parent = lock(&self.inodes)
            .get(ino)
            .and_then(|n| n.links.first().map(|l| l.0));
        match (parent, current) {
            (Some(p), _) => self.key_for_new(p, r),
            (None, Some(k)) => Ok(k),
            (None, None) => Ok(self.volume.config.key.clone()),
        }
    }

    /// The backing directory of `parent` and the backing name of `name` in it.
    fn child(&self, parent: u64, name: &OsStr, r: Requester) -> FsResult<(DirFd, BackingName)> {
        if name.len() > nt::NAME_MAX {
            return Err(Errno::ENAMETOOLONG);
        }
        let keys = &self.dir_keys(parent, r)?.keys;
        let bn = nt::encrypt(&keys.names, name.as_bytes()).map_err(|_| Errno::EINVAL)?;
        Ok((self.dir_fd(parent)?, bn))
    }

    fn write_side_file(&self, dir: &OwnedFd, bn: &BackingName) -> FsResult<()> {
        if let (Some(side), BackingName::Long { full, .. }) = (bn.side_file(), bn) {
            atomic::write_atomic_at(dir, &side, full.as_bytes())?;
        }
        Ok(())
    }

    fn remove_side_file(&self, dir: &OwnedFd, bn: &BackingName) {
        if let Some(side) = bn.side_file() {
            let _ = unlink_at(dir, OsStr::new(&side));
        }
    }

    /// Counts a lookup of `parent/bn` and returns its attributes and generation.
    fn register(&self, parent: u64, bn: &BackingName, st: &FileStat) -> Entry {
        let (ino, generation) = lock(&self.inodes).link(parent, OsStr::new(bn.entry()), st.st_ino);
        Entry {
            attr: to_attr(ino, st),
            generation,
        }
    }

    fn register_at(&self, parent: u64, dir: &OwnedFd, bn: &BackingName) -> FsResult<Entry> {
        Ok(self.register(parent, bn, &stat_at(dir, OsStr::new(bn.entry()))?))
    }

    pub fn lookup(&self, parent: u64, name: &OsStr, r: Requester) -> FsResult<Entry> {
        let (dir, bn) = self.child(parent, name, r)?;
        self.register_at(parent, &dir, &bn)
    }

    pub fn forget(&self, ino: u64, n: u64) {
        lock(&self.inodes).forget(ino, n);
    }

    pub fn getattr(&self, ino: u64) -> FsResult<FileAttr> {
        let open = lock(&self.files).get(&ino).cloned();
        if let Some(f) = open {
            let c = f.content.read().map_err(|_| Errno::EIO)?;
            return Ok(to_attr(ino, &nix::sys::stat::fstat(c.file())?));
        }
        let a = self.at(ino)?;
        Ok(to_attr(ino, &stat_at(&a.dir, &a.name)?))
    }

    /// Ownership of a new entry: the requester, with the parent's group if it is setgid.
    fn owner_for(&self, parent_dir: &OwnedFd, req: Requester) -> FsResult<(u32, u32, bool)> {
        let st = nix::sys::stat::fstat(parent_dir)?;
        let setgid = st.st_mode & libc::S_ISGID != 0;
        Ok((req.uid, if setgid { st.st_gid } else { req.gid }, setgid))
    }

    fn chown(&self, dir: &OwnedFd, name: &OsStr, uid: u32, gid: u32) -> FsResult<()> {
        if self.is_root {
            nix::unistd::fchownat(
                dir,
                name,
                Some(nix::unistd::Uid::from_raw(uid)),
                Some(nix::unistd::Gid::from_raw(gid)),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            )?;
        }
        Ok(())
    }

    /// Writes a new header and an empty final block: a valid empty file with a fresh id and a
    /// data key wrapped by `key`, made as `r`.
    fn fresh_content(
        &self,
        file: &File,
        label: String,
        key: &str,
        r: Requester,
    ) -> FsResult<FileContent> {
        let (h, u) = self.keys.new_header(Kind::File, key, r)?;
        log::debug!("{label}: new data key under {key} for uid {}", r.uid);
        let keys = DataKeys::derive(&u.data_key, &u.id);
        let mut buf = h.to_vec();
        ContentCipher::new(&keys.content, u.id)
            .encrypt_block(0, true, &[], &mut buf)
            .map_err(|_| Errno::EIO)?;
        // Empty first: a crash before the header is complete leaves a 0-byte file, which opens
        // as an empty file, rather than a new header over old blocks.
        file.set_len(0)?;
        file.write_all_at(&buf, 0)?;
        let dup = file.try_clone()?;
        let cmk = self.keys.key_of(&u.blob);
        Ok(self.journaled(FileContent::new(dup, &keys, u.id, &h, label, cmk)))
    }

    fn open_backing(a: &At) -> FsResult<File> {
        let flags = OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        match openat(&a.dir, &*a.name, flags | OFlag::O_RDWR, Mode::empty()) {
            Ok(fd) => Ok(File::from(fd)),
            Err(
                nix::errno::Errno::EACCES | nix::errno::Errno::EROFS | nix::errno::Errno::EPERM,
            ) => Ok(File::from(openat(
                &a.dir,
                &*a.name,
                flags | OFlag::O_RDONLY,
                Mode::empty(),
            )?)),
            Err(e) => Err(e.into()),
        }
    }

    fn load_content(&self, file: File, label: String, r: Requester) -> FsResult<FileContent> {
        let mut h = vec![0u8; header::HEADER_LEN];
        file.read_exact_at(&mut h, 0).map_err(|e| {
            log::error!("{label}: no readable header: {e}");
            Errno::EIO
        })?;
        let (u, key) = self.keys.unwrap(Kind::File, &h, r, || label.clone())?;
        log::debug!(
            "{label}: data key unwrapped for uid {} (key {})",
            r.uid,
            key.as_deref().unwrap_or("?")
        );
        let keys = DataKeys::derive(&u.data_key, &u.id);
        Ok(self.journaled(FileContent::new(file, &keys, u.id, &h, label, key)))
    }

    fn journaled(&self, mut c: FileContent) -> FileContent {
        if let Some(j) = &self.journal {
            c.journal_to(j.clone());
        }
        c
    }

    /// The shared open state of a regular file, opening it if no handle has it open, and
    /// counting one more user of it (undone by `unpin`). Counts change only under the `files`
    /// lock, so a closing handle never removes state another is about to use. A cached state is
    /// checked against `r`'s rights, and re-keyed if its key was revoked meanwhile.
    fn open_file(&self, ino: u64, r: Requester) -> FsResult<Arc<OpenFile>> {
        let cached = {
            let files = lock(&self.files);
            files.get(&ino).cloned().inspect(|f| {
                f.handles.fetch_add(1, Ordering::SeqCst);
            })
        };
        if let Some(f) = cached {
            if let Err(e) = self.check_content(&f, r) {
                self.unpin(&f);
                return Err(e);
            }
            return Ok(f);
        }
        let file = Self::open_backing(&self.at(ino)?)?;
        if file.metadata()?.len() == 0 {
            return self.open_headerless(ino, file, r);
        }
        let content = self.load_content(file, self.label(ino), r)?;
        let mut files = lock(&self.files);
        // Another thread may have opened it meanwhile; keep the first.
        let mut inserted = false;
        let f = files
            .entry(ino)
            .or_insert_with(|| {
                inserted = true;
                OpenFile::new(content, ino, 0)
            })
            .clone();
        f.handles.fetch_add(1, Ordering::SeqCst);
        if inserted {
            // Only the state that is kept repairs an interrupted write, before anyone else can
            // use it: first the undo record of an in-place rewrite, then a torn append.
            let c = f.content.write().map_err(|_| Errno::EIO)?;
            if let Some(j) = &self.journal {
                if let Err(e) = j.recover(&c.id, c.file(), &c.label) {
                    // Its bytes may be half old, half new: not served until it is restored.
                    log::error!("{}: could not undo an interrupted write: {e}", c.label);
                    drop(c);
                    files.remove(&ino);
                    return Err(Errno::EIO);
                }
            }
            if let Some(end) = c.torn_tail()? {
                match c.file().set_len(end) {
                    Ok(()) => log::warn!(
                        "{}: removed the incomplete tail of an interrupted write",
                        c.label
                    ),
                    Err(e) => log::warn!(
                        "{}: has an incomplete tail from an interrupted write: {e}",
                        c.label
                    ),
                }
            }
        }
        Ok(f)
    }

    /// A regular file without even a header: its creation (or truncation to 0) was interrupted
    /// before the header was written, so it is an empty file. It gets a header now, under the
    /// `files` lock so that no other open writes a different one.
    fn open_headerless(&self, ino: u64, file: File, r: Requester) -> FsResult<Arc<OpenFile>> {
        let mut files = lock(&self.files);
        if let Some(f) = files.get(&ino).cloned() {
            f.handles.fetch_add(1, Ordering::SeqCst);
            drop(files);
            if let Err(e) = self.check_content(&f, r) {
                self.unpin(&f);
                return Err(e);
            }
            return Ok(f);
        }
        let key = self.key_for_file(ino, None, r)?;
        let label = self.label(ino);
        let content = self.fresh_content(&file, label.clone(), &key, r)?;
        log::warn!("{label}: had no header (its creation was interrupted): now an empty file");
        let f = OpenFile::new(content, ino, 1);
        files.insert(ino, f.clone());
        Ok(f)
    }

    /// One user of an open file is done; the last one drops its state (and so its keys).
    fn unpin(&self, f: &Arc<OpenFile>) {
        let mut files = lock(&self.files);
        let ino = f.ino.load(Ordering::SeqCst);
        if f.handles.fetch_sub(1, Ordering::SeqCst) == 1
            && files.get(&ino).is_some_and(|g| Arc::ptr_eq(g, f))
        {
            files.remove(&ino);
        }
    }

    /// Files an open state under the node id of the inode it now has (after reencrypt).
    fn refile(&self, f: &Arc<OpenFile>, new_ino: u64) {
        let mut files = lock(&self.files);
        let old = f.ino.swap(new_ino, Ordering::SeqCst);
        if files.get(&old).is_some_and(|g| Arc::ptr_eq(g, f)) {
            files.remove(&old);
        }
        files.insert(new_ino, f.clone());
    }

    fn new_handle(&self, h: Handle) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        lock(&self.handles).insert(fh, h);
        fh
    }

    /// Checks `r` may use an open file's key, and reloads the key if it was revoked and the
    /// KMS allows it again.
    fn check_content(&self, f: &OpenFile, r: Requester) -> FsResult<()> {
        {
            let c = f.content.read().map_err(|_| Errno::EIO)?;
            if !c.is_revoked() {
                return self.keys.authorize(r, c.key.as_deref(), Kind::File, c.id);
            }
        }
        let mut c = f.content.write().map_err(|_| Errno::EIO)?;
        if c.is_revoked() {
            let label = c.label.clone();
            *c = self.load_content(c.file().try_clone()?, label, r)?;
        }
        Ok(())
    }

    pub fn open(&self, ino: u64, r: Requester) -> FsResult<u64> {
        let f = self.open_file(ino, r)?;
        Ok(self.new_handle(Handle::File { file: f }))
    }

    fn handle_file(&self, fh: u64) -> FsResult<Arc<OpenFile>> {
        match lock(&self.handles).get(&fh) {
            Some(Handle::File { file }) => Ok(file.clone()),
            _ => Err(Errno::EBADF),
        }
    }

    pub fn release(&self, fh: u64) {
        let h = lock(&self.handles).remove(&fh);
        if let Some(Handle::File { file }) = h {
            self.unpin(&file);
        }
    }

    pub fn read(
        &self,
        fh: u64,
        offset: u64,
        size: u32,
        r: Requester,
    ) -> FsResult<crate::cryptocore::PlainBuf> {
        let f = self.handle_file(fh)?;
        self.check_content(&f, r)?;
        let c = f.content.read().map_err(|_| Errno::EIO)?;
        c.read(offset, size)
    }

    /// `read` into the caller's buffer (the io_uring reply), saving a copy.
    pub fn read_into(
        &self,
        fh: u64,
        offset: u64,
        size: u32,
        r: Requester,
        dst: &mut [u8],
    ) -> FsResult<usize> {
        let f = self.handle_file(fh)?;
        self.check_content(&f, r)?;
        let c = f.content.read().map_err(|_| Errno::EIO)?;
        c.read_into(offset, size, dst)
    }

    /// `kill_suidgid`: the kernel says the writer may not keep set-id bits (we handle that for
    /// it, see `fuse::init`).
    pub fn write(
        &self,
        fh: u64,
        offset: u64,
        data: &[u8],
        r: Requester,
        kill_suidgid: bool,
    ) -> FsResult<usize> {
        let f = self.handle_file(fh)?;
        self.check_content(&f, r)?;
        let mut c = f.content.write().map_err(|_| Errno::EIO)?;
        if kill_suidgid {
            clear_set_id(c.file())?;
        }
        c.write(offset, data)
    }

    pub fn fsync(&self, fh: u64, datasync: bool) -> FsResult<()> {
        let f = self.handle_file(fh)?;
        let c = f.content.read().map_err(|_| Errno::EIO)?;
        c.sync_undo()?;
        if datasync {
            c.file().sync_data()?
        } else {
            c.file().sync_all()?
        }
        Ok(())
    }

    pub fn fsyncdir(&self, ino: u64) -> FsResult<()> {
        let a = self.at(ino)?;
        let fd = openat(
            &a.dir,
            &*a.name,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        File::from(fd).sync_all()?;
        Ok(())
    }

    /// Sets a regular file's size; size 0 gives it a new id and a data key wrapped by the CMK
    /// of its directory.
    fn truncate(&self, ino: u64, size: u64, r: Requester) -> FsResult<()> {
        let f = self.open_file(ino, r)?;
        let result = (|| {
            let mut c = f.content.write().map_err(|_| Errno::EIO)?;
            if size == 0 {
                let key = self.key_for_file(ino, c.key.clone(), r)?;
                let label = c.label.clone();
                let file = c.file().try_clone()?;
                // xattr values are sealed under the file's key and id: carry them over.
                let xattrs = open_xattrs(&c)?;
                let fresh = self.fresh_content(&file, label, &key, r)?;
                c.supersede();
                *c = fresh;
                for (name, value) in xattrs {
                    let sealed = cipherdir::encrypt_xattr(c.xattr_key()?, &c.id, &name, &value)
                        .map_err(|_| Errno::EIO)?;
                    sys::fsetxattr(c.file(), &name, &sealed, 0)?;
                }
                Ok(())
            } else {
                c.truncate(size)
            }
        })();
        self.unpin(&f);
        result
    }

    #[allow(clippy::too_many_arguments)]
    pub fn setattr(
        &self,
        ino: u64,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<Option<SystemTime>>,
        mtime: Option<Option<SystemTime>>,
        r: Requester,
    ) -> FsResult<FileAttr> {
        // An open file that lost its last name (unlinked) is changed through its descriptor.
        let open = lock(&self.files).get(&ino).cloned();
        let a = match (self.at(ino), &open) {
            (Ok(a), _) => Some(a),
            (Err(_), Some(_)) => None,
            (Err(e), None) => return Err(e),
        };
        let fd = match &open {
            Some(f) => Some(
                f.content
                    .read()
                    .map_err(|_| Errno::EIO)?
                    .file()
                    .try_clone()?,
            ),
            None => None,
        };
        if let Some(s) = size {
            if let Some(a) = &a {
                if !is_file(&stat_at(&a.dir, &a.name)?) {
                    return Err(Errno::EINVAL);
                }
            }
            self.truncate(ino, s, r)?;
            // As a local filesystem does for a caller without CAP_FSETID.
            if r.uid != 0 {
                if let Some(a) = &a {
                    clear_set_id(&Self::open_backing(a)?)?;
                } else if let Some(f) = &fd {
                    clear_set_id(f)?;
                }
            }
        }
        if let Some(m) = mode {
            let m = Mode::from_bits_truncate(m & 0o7777);
            match (&a, &fd) {
                (Some(a), _) => nix::sys::stat::fchmodat(
                    &a.dir,
                    &*a.name,
                    m,
                    nix::sys::stat::FchmodatFlags::NoFollowSymlink,
                )?,
                (None, Some(f)) => nix::sys::stat::fchmod(f, m)?,
                (None, None) => return Err(Errno::ENOENT),
            }
        }
        if uid.is_some() || gid.is_some() {
            let (u, g) = (
                uid.map(nix::unistd::Uid::from_raw),
                gid.map(nix::unistd::Gid::from_raw),
            );
            match (&a, &fd) {
                (Some(a), _) => {
                    nix::unistd::fchownat(&a.dir, &*a.name, u, g, AtFlags::AT_SYMLINK_NOFOLLOW)?
                }
                (None, Some(f)) => nix::unistd::fchown(f, u, g)?,
                (None, None) => return Err(Errno::ENOENT),
            }
        }
        if atime.is_some() || mtime.is_some() {
            let ts = |t: Option<Option<SystemTime>>| match t {
                None => nix::sys::time::TimeSpec::new(0, libc::UTIME_OMIT),
                Some(None) => nix::sys::time::TimeSpec::new(0, libc::UTIME_NOW),
                Some(Some(t)) => match t.duration_since(UNIX_EPOCH) {
                    Ok(d) => nix::sys::time::TimeSpec::from_duration(d),
                    Err(e) => {
                        let d = e.duration();
                        nix::sys::time::TimeSpec::new(-(d.as_secs() as i64), 0)
                    }
                },
            };
            match (&a, &fd) {
                (Some(a), _) => nix::sys::stat::utimensat(
                    &a.dir,
                    &*a.name,
                    &ts(atime),
                    &ts(mtime),
                    nix::sys::stat::UtimensatFlags::NoFollowSymlink,
                )?,
                (None, Some(f)) => nix::sys::stat::futimens(f, &ts(atime), &ts(mtime))?,
                (None, None) => return Err(Errno::ENOENT),
            }
        }
        self.getattr(ino)
    }

    /// Creates and opens a regular file.
    pub fn create(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        req: Requester,
        excl: bool,
    ) -> FsResult<(Entry, u64)> {
        let (dir, bn) = self.child(parent, name, req)?;
        let entry_name = OsStr::new(bn.entry());
        let (uid, gid, _) = self.owner_for(&dir, req)?;
        self.write_side_file(&dir, &bn)?;
        let fd = match openat(
            &dir,
            entry_name,
            OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(mode & 0o7777),
        ) {
            Ok(fd) => fd,
            Err(nix::errno::Errno::EEXIST) if !excl => {
                // The kernel asked to create what another client made meanwhile: open it.
                let entry = self.register_at(parent, &dir, &bn)?;
                let fh = self.open(entry.attr.ino.0, req)?;
                return Ok((entry, fh));
            }
            Err(e) => {
                if e != nix::errno::Errno::EEXIST {
                    self.remove_side_file(&dir, &bn);
                }
                return Err(e.into());
            }
        };
        let file = File::from(fd);
        let label = format!("{}/{}", self.label(parent), bn.entry());
        let made = (|| {
            let key = self.key_for_new(parent, req)?;
            let content = self.fresh_content(&file, label, &key, req)?;
            self.chown(&dir, entry_name, uid, gid)?;
            Ok::<_, Errno>(content)
        })();
        let content = match made {
            Ok(c) => c,
            Err(e) => {
                let _ = unlink_at(&dir, entry_name);
                self.remove_side_file(&dir, &bn);
                return Err(e);
            }
        };
        let entry = self.register(parent, &bn, &nix::sys::stat::fstat(&file)?);
        let ino = entry.attr.ino.0;
        let of = OpenFile::new(content, ino, 1);
        lock(&self.files).insert(ino, of.clone());
        let fh = self.new_handle(Handle::File { file: of });
        Ok((entry, fh))
    }

    pub fn mknod(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        rdev: u32,
        req: Requester,
    ) -> FsResult<Entry> {
        let kind = mode & libc::S_IFMT;
        if kind == libc::S_IFREG || kind == 0 {
            let (entry, fh) = self.create(parent, name, mode, req, true)?;
            self.release(fh);
            return Ok(entry);
        }
        let (dir, bn) = self.child(parent, name, req)?;
        let entry_name = OsStr::new(bn.entry());
        let (uid, gid, _) = self.owner_for(&dir, req)?;
        self.write_side_file(&dir, &bn)?;
        let made = nix::sys::stat::mknodat(
            &dir,
            entry_name,
            nix::sys::stat::SFlag::from_bits_truncate(kind),
            Mode::from_bits_truncate(mode & 0o7777),
            u64::from(rdev),
        )
        .map_err(Errno::from)
        .and_then(|_| self.chown(&dir, entry_name, uid, gid));
        self.finish_new(parent, &dir, &bn, made)
    }

    /// After creating a non-regular entry: undo it if that failed part-way (an entry that
    /// existed already is left alone), else count the lookup.
    fn finish_new(
        &self,
        parent: u64,
        dir: &OwnedFd,
        bn: &BackingName,
        made: FsResult<()>,
    ) -> FsResult<Entry> {
        if let Err(e) = made {
            if e != Errno::EEXIST {
                let _ = unlink_at(dir, OsStr::new(bn.entry()));
                self.remove_side_file(dir, bn);
            }
            return Err(e);
        }
        self.register_at(parent, dir, bn)
    }

    pub fn mkdir(&self, parent: u64, name: &OsStr, mode: u32, req: Requester) -> FsResult<Entry> {
        let (dir, bn) = self.child(parent, name, req)?;
        let entry_name = OsStr::new(bn.entry());
        let (uid, gid, setgid) = self.owner_for(&dir, req)?;
        self.write_side_file(&dir, &bn)?;
        // Private until the key file is in place, then the requested mode.
        if let Err(e) = nix::sys::stat::mkdirat(&dir, entry_name, Mode::from_bits_truncate(0o700)) {
            if e != nix::errno::Errno::EEXIST {
                self.remove_side_file(&dir, &bn);
            }
            return Err(e.into());
        }
        let made = (|| {
            let key = self.key_for_new(parent, req)?;
            let (h, _) = self.keys.new_header(Kind::DirKey, &key, req)?;
            let sub = openat(
                &dir,
                entry_name,
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )?;
            atomic::write_atomic_at(&sub, DIRKEY_FILE, &h)?;
            // Through the new directory's own descriptor: nothing can swap a symlink in.
            if self.is_root {
                nix::unistd::fchown(
                    &sub,
                    Some(nix::unistd::Uid::from_raw(uid)),
                    Some(nix::unistd::Gid::from_raw(gid)),
                )?;
            }
            let mut m = mode & 0o7777;
            if setgid {
                m |= libc::S_ISGID;
            }
            nix::sys::stat::fchmod(&sub, Mode::from_bits_truncate(m))?;
            Ok::<_, Errno>(())
        })();
        if let Err(e) = made {
            if let Ok(sub) = open_dir_at(&dir, entry_name) {
                let _ = unlink_at(&sub, OsStr::new(DIRKEY_FILE));
            }
            let _ = nix::unistd::unlinkat(&dir, entry_name, UnlinkatFlags::RemoveDir);
            self.remove_side_file(&dir, &bn);
            return Err(e);
        }
        self.register_at(parent, &dir, &bn)
    }

    pub fn symlink(
        &self,
        parent: u64,
        name: &OsStr,
        target: &Path,
        req: Requester,
    ) -> FsResult<Entry> {
        let (dir, bn) = self.child(parent, name, req)?;
        let entry_name = OsStr::new(bn.entry());
        let (uid, gid, _) = self.owner_for(&dir, req)?;
        let stored = cipherdir::encrypt_symlink(&self.volume.keys, target.as_os_str().as_bytes())
            .map_err(|_| Errno::EIO)?;
        if stored.len() >= libc::PATH_MAX as usize {
            return Err(Errno::ENAMETOOLONG);
        }
        self.write_side_file(&dir, &bn)?;
        let made = nix::unistd::symlinkat(stored.as_str(), &dir, entry_name)
            .map_err(Errno::from)
            .and_then(|_| self.chown(&dir, entry_name, uid, gid));
        self.finish_new(parent, &dir, &bn, made)
    }

    pub fn readlink(&self, ino: u64, r: Requester) -> FsResult<Vec<u8>> {
        let v = &self.volume.config;
        let cmk = lock(&self.volume_cmk).clone();
        self.keys.authorize_ctx(
            r,
            Some(cmk.as_str()),
            || cipherdir::volume_context(&v.volume_id),
            *v.volume_id.as_bytes(),
        )?;
        let a = self.at(ino)?;
        let stored = nix::fcntl::readlinkat(&a.dir, &*a.name)?;
        cipherdir::decrypt_symlink(&self.volume.keys, stored.as_bytes())
            .map(|t| t.to_vec())
            .ok_or_else(|| {
                log::error!("{}: symlink target failed authentication", self.label(ino));
                Errno::EIO
            })
    }

    pub fn unlink(&self, parent: u64, name: &OsStr, req: Requester) -> FsResult<()> {
        let (dir, bn) = self.child(parent, name, req)?;
        let entry_name = OsStr::new(bn.entry());
        let st = stat_at(&dir, entry_name)?;
        if is_dir(&st) {
            return Err(Errno(libc::EISDIR));
        }
        unlink_at(&dir, entry_name)?;
        self.remove_side_file(&dir, &bn);
        lock(&self.inodes).unlink(parent, entry_name, st.st_nlink <= 1);
        Ok(())
    }

    /// Removes an (encrypted-)empty directory's key file so the backing directory can go,
    /// returning the key file's bytes to put back if that fails.
    fn strip_dirkey(dir: &OwnedFd, name: &OsStr) -> FsResult<(OwnedFd, Vec<u8>)> {
        let sub = openat(
            dir,
            name,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        let mut d = nix::dir::Dir::from_fd(sub.try_clone()?)?;
        for e in d.iter() {
            let e = e?;
            let n = e.file_name().to_bytes();
            if n != b"." && n != b".." && n != DIRKEY_FILE.as_bytes() {
                return Err(Errno::ENOTEMPTY);
            }
        }
        let saved = read_at(&sub, OsStr::new(DIRKEY_FILE))?;
        unlink_at(&sub, OsStr::new(DIRKEY_FILE))?;
        Ok((sub, saved))
    }

    fn restore_dirkey(sub: &OwnedFd, saved: &[u8]) {
        if let Err(e) = atomic::write_atomic_at(sub, DIRKEY_FILE, saved) {
            log::error!("could not restore a directory key after a failed removal: {e}");
        }
    }

    pub fn rmdir(&self, parent: u64, name: &OsStr, req: Requester) -> FsResult<()> {
        let (dir, bn) = self.child(parent, name, req)?;
        let entry_name = OsStr::new(bn.entry());
        if !is_dir(&stat_at(&dir, entry_name)?) {
            return Err(Errno(libc::ENOTDIR));
        }
        let (sub, saved) = Self::strip_dirkey(&dir, entry_name)?;
        if let Err(e) = nix::unistd::unlinkat(&dir, entry_name, UnlinkatFlags::RemoveDir) {
            Self::restore_dirkey(&sub, &saved);
            return Err(e.into());
        }
        self.remove_side_file(&dir, &bn);
        lock(&self.inodes).unlink(parent, entry_name, true);
        Ok(())
    }

    pub fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
        req: Requester,
    ) -> FsResult<()> {
        let (sdir, sbn) = self.child(parent, name, req)?;
        let (ddir, dbn) = self.child(newparent, newname, req)?;
        let (sname, dname) = (OsStr::new(sbn.entry()), OsStr::new(dbn.entry()));
        let rflags = nix::fcntl::RenameFlags::from_bits_truncate(flags);
        if flags & libc::RENAME_EXCHANGE != 0 {
            nix::fcntl::renameat2(&sdir, sname, &ddir, dname, rflags)?;
            lock(&self.inodes).exchange((parent, sname), (newparent, dname));
            return Ok(());
        }
        let sst = stat_at(&sdir, sname)?;
        let dst = stat_at(&ddir, dname).ok();
        if dst.as_ref().is_some_and(|d| d.st_ino == sst.st_ino) {
            // Two names of one inode: rename(2) does nothing, and neither do we.
            return Ok(nix::fcntl::renameat2(&sdir, sname, &ddir, dname, rflags)?);
        }
        // Renaming a directory over an empty one: the backing target still holds its key file.
        let mut saved = None;
        if is_dir(&sst) && flags & libc::RENAME_NOREPLACE == 0 && dst.as_ref().is_some_and(is_dir) {
            saved = Some(Self::strip_dirkey(&ddir, dname)?);
        }
        let done = self
            .write_side_file(&ddir, &dbn)
            .and_then(|_| Ok(nix::fcntl::renameat2(&sdir, sname, &ddir, dname, rflags)?));
        if let Err(e) = done {
            if let Some((sub, s)) = saved {
                Self::restore_dirkey(&sub, &s);
            }
            return Err(e);
        }
        self.remove_side_file(&sdir, &sbn);
        let mut inodes = lock(&self.inodes);
        if let Some(d) = dst {
            inodes.unlink(newparent, dname, d.st_nlink <= 1 || is_dir(&d));
        }
        inodes.rename((parent, sname), (newparent, dname));
        Ok(())
    }

    pub fn link(
        &self,
        ino: u64,
        newparent: u64,
        newname: &OsStr,
        req: Requester,
    ) -> FsResult<Entry> {
        let src = self.at(ino)?;
        let (dir, bn) = self.child(newparent, newname, req)?;
        self.write_side_file(&dir, &bn)?;
        if let Err(e) =
            nix::unistd::linkat(&src.dir, &*src.name, &dir, bn.entry(), AtFlags::empty())
        {
            if e != nix::errno::Errno::EEXIST {
                self.remove_side_file(&dir, &bn);
            }
            return Err(e.into());
        }
        self.register_at(newparent, &dir, &bn)
    }

    /// Decrypts one backing directory entry's name; None for kmsfs's own files and for names that
    /// do not decrypt (logged).
    fn plain_name(
        &self,
        dir: &OwnedFd,
        label: &dyn Fn() -> String,
        names: &mut nt::NameCipher,
        entry: &OsStr,
    ) -> Option<OsString> {
        let s = entry.to_str()?;
        let side;
        let encoded = match nt::classify(s) {
            EntryKind::Internal => return None,
            EntryKind::Encrypted => s,
            EntryKind::LongName => {
                let file = format!("{s}{}", nt::LONGNAME_SUFFIX);
                side = read_at(dir, OsStr::new(&file))
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok());
                match &side {
                    Some(full) if nt::long_name_matches(s, full) => full.as_str(),
                    _ => {
                        log::warn!("{}/{s}: long name without a valid side file", label());
                        return None;
                    }
                }
            }
        };
        match names.decrypt(encoded) {
            Ok(n) => Some(OsString::from_vec(n)),
            Err(_) => {
                log::warn!("{}/{s}: name does not decrypt in this directory", label());
                None
            }
        }
    }

    pub fn opendir(&self, ino: u64, req: Requester) -> FsResult<u64> {
        let keys = self.dir_keys(ino, req)?;
        let a = self.at(ino)?;
        let dir = openat(
            &a.dir,
            &*a.name,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        let label = || self.label(ino);
        let (parent, mut entries) = {
            let inodes = lock(&self.inodes);
            let parent = inodes
                .get(ino)
                .and_then(|n| n.links.first().map(|l| l.0))
                .unwrap_or(ROOT);
            (parent, Vec::new())
        };
        for (i, n) in [(ino, "."), (parent, "..")] {
            entries.push(DirEntry {
                ino: i,
                name: n.into(),
                kind: FileType::Directory,
                backing: Arc::from(OsStr::new("")),
            });
        }
        let mut d = nix::dir::Dir::from_fd(dir.try_clone()?)?;
        let mut found = Vec::new();
        for e in d.iter() {
            let e = e?;
            let raw = OsStr::from_bytes(e.file_name().to_bytes());
            if raw == "." || raw == ".." {
                continue;
            }
            found.push((Arc::<OsStr>::from(raw), e.ino(), e.file_type()));
        }
        let mut names = nt::NameCipher::new(&keys.keys.names);
        let inodes_ids: Vec<u64> = {
            let inodes = lock(&self.inodes);
            found.iter().map(|(_, i, _)| inodes.node_id(*i)).collect()
        };
        for ((raw, _, t), id) in found.iter().zip(inodes_ids) {
            let Some(name) = self.plain_name(&dir, &label, &mut names, raw) else {
                continue;
            };
            use nix::dir::Type;
            let kind = match t {
                Some(Type::Directory) => FileType::Directory,
                Some(Type::Symlink) => FileType::Symlink,
                Some(Type::Fifo) => FileType::NamedPipe,
                Some(Type::Socket) => FileType::Socket,
                Some(Type::CharacterDevice) => FileType::CharDevice,
                Some(Type::BlockDevice) => FileType::BlockDevice,
                Some(Type::File) => FileType::RegularFile,
                None => match stat_at(&dir, raw) {
                    Ok(st) => file_type(st.st_mode),
                    Err(_) => continue,
                },
            };
            entries.push(DirEntry {
                ino: id,
                name,
                kind,
                backing: raw.clone(),
            });
        }
        Ok(self.new_handle(Handle::Dir {
            entries: entries.into(),
        }))
    }

    /// Entries from `offset` on (offsets are positions + 1).
    pub fn readdir(&self, fh: u64, offset: u64) -> FsResult<Listing> {
        match lock(&self.handles).get(&fh) {
            Some(Handle::Dir { entries }) => Ok(Listing {
                entries: entries.clone(),
                from: usize::try_from(offset).unwrap_or(usize::MAX),
            }),
            _ => Err(Errno::EBADF),
        }
    }

    /// Like `readdir`, with each entry looked up (counted, as the kernel expects). `add` returns
    /// true when the reply is full; that entry's lookup is then taken back.
    pub fn readdirplus(
        &self,
        ino: u64,
        fh: u64,
        offset: u64,
        mut add: impl FnMut(u64, &DirEntry, &Entry) -> bool,
    ) -> FsResult<()> {
        let listing = self.readdir(fh, offset)?;
        let dir = self.dir_fd(ino)?;
        let own = self.getattr(ino)?;
        for (off, e) in listing.iter() {
            if e.backing.is_empty() {
                let dot = Entry {
                    attr: FileAttr {
                        ino: fuser::INodeNo(e.ino),
                        ..own
                    },
                    generation: 0,
                };
                if add(off, e, &dot) {
                    break;
                }
                continue;
            }
            let Ok(st) = stat_at(&dir, &e.backing) else {
                continue;
            };
            let (id, generation) = lock(&self.inodes).link_shared(ino, &e.backing, st.st_ino);
            let entry = Entry {
                attr: to_attr(id, &st),
                generation,
            };
            if add(off, e, &entry) {
                self.forget(id, 1);
                break;
            }
        }
        Ok(())
    }

    pub fn releasedir(&self, fh: u64) {
        lock(&self.handles).remove(&fh);
    }

    pub fn statfs(&self) -> FsResult<nix::sys::statvfs::Statvfs> {
        Ok(nix::sys::statvfs::statvfs(&self.root)?)
    }

    /// An open descriptor of the inode itself, for f*xattr calls (files and directories only).
    fn xattr_fd(&self, ino: u64) -> FsResult<(File, FileStat)> {
        let a = self.at(ino)?;
        let st = stat_at(&a.dir, &a.name)?;
        if !is_dir(&st) && !is_file(&st) {
            return Err(Errno::ENOTSUP);
        }
        let fd = openat(
            &a.dir,
            &*a.name,
            OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK,
            Mode::empty(),
        )?;
        Ok((File::from(fd), st))
    }

    /// The key and id that protect an inode's xattr values: a file's data key, or a directory's.
    fn xattr_key(
        &self,
        ino: u64,
        f: &File,
        st: &FileStat,
        r: Requester,
    ) -> FsResult<(crate::cryptocore::SecretKey, [u8; 16])> {
        let (kind, data) = if is_dir(st) {
            (Kind::DirKey, read_at(f, OsStr::new(DIRKEY_FILE))?)
        } else {
            let mut h = vec![0u8; header::HEADER_LEN];
            f.read_exact_at(&mut h, 0).map_err(|_| Errno::EIO)?;
            (Kind::File, h)
        };
        let (u, _) = self.keys.unwrap(kind, &data, r, || self.label(ino))?;
        Ok((DataKeys::derive(&u.data_key, &u.id).xattr, u.id))
    }

    /// The xattr key of an inode: from its open state if it is an open file, else unwrapped.
    fn xattr_key_for(
        &self,
        ino: u64,
        f: &File,
        st: &FileStat,
        r: Requester,
    ) -> FsResult<(crate::cryptocore::SecretKey, [u8; 16])> {
        let open = lock(&self.files).get(&ino).cloned();
        if let Some(of) = open {
            self.check_content(&of, r)?;
            let c = of.content.read().map_err(|_| Errno::EIO)?;
            return Ok((c.xattr_key()?.clone(), c.id));
        }
        self.xattr_key(ino, f, st, r)
    }

    fn check_xattr_name(name: &OsStr) -> FsResult<()> {
        if name.as_bytes().starts_with(b"user.") && name.len() > 5 {
            Ok(())
        } else {
            Err(Errno::ENOTSUP)
        }
    }

    pub fn setxattr(
        &self,
        ino: u64,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        r: Requester,
    ) -> FsResult<()> {
        if control::is_control(name) {
            return self.control_set(ino, name, value, r);
        }
        Self::check_xattr_name(name)?;
        let open = lock(&self.files).get(&ino).cloned();
        if let Some(of) = open {
            // Sealed and stored under the file's lock: a concurrent re-key cannot slip between.
            self.check_content(&of, r)?;
            let c = of.content.write().map_err(|_| Errno::EIO)?;
            let sealed = cipherdir::encrypt_xattr(c.xattr_key()?, &c.id, name.as_bytes(), value)
                .map_err(|_| Errno::EIO)?;
            return sys::fsetxattr(c.file(), name.as_bytes(), &sealed, flags);
        }
        let (f, st) = self.xattr_fd(ino)?;
        let (key, id) = self.xattr_key_for(ino, &f, &st, r)?;
        let sealed =
            cipherdir::encrypt_xattr(&key, &id, name.as_bytes(), value).map_err(|_| Errno::EIO)?;
        sys::fsetxattr(&f, name.as_bytes(), &sealed, flags)
    }

    pub fn getxattr(
        &self,
        ino: u64,
        name: &OsStr,
        r: Requester,
    ) -> FsResult<zeroize::Zeroizing<Vec<u8>>> {
        if control::is_control(name) {
            // The status lists keys and counts: for root and the mounting user only.
            let owner = self.keys.daemon().uid;
            if name == STATUS_XATTR && r.uid != 0 && r.uid != owner {
                return Err(Errno::EACCES);
            }
            return self.control_get(ino, name).map(zeroize::Zeroizing::new);
        }
        Self::check_xattr_name(name).map_err(|_| Errno::ENODATA)?;
        let (f, st) = self.xattr_fd(ino)?;
        let stored = sys::fgetxattr(&f, name.as_bytes())?;
        let (key, id) = self.xattr_key_for(ino, &f, &st, r)?;
        cipherdir::decrypt_xattr(&key, &id, name.as_bytes(), &stored).ok_or_else(|| {
            log::error!(
                "{}: xattr {:?} failed authentication",
                self.label(ino),
                name
            );
            Errno::EIO
        })
    }

    pub fn listxattr(&self, ino: u64) -> FsResult<Vec<u8>> {
        let (f, _) = match self.xattr_fd(ino) {
            Ok(x) => x,
            Err(e) if e == Errno::ENOTSUP => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        for n in sys::flistxattr(&f)? {
            if n.starts_with(b"user.") {
                out.extend_from_slice(&n);
                out.push(0);
            }
        }
        Ok(out)
    }

    pub fn removexattr(&self, ino: u64, name: &OsStr) -> FsResult<()> {
        if control::is_control(name) {
            return Err(Errno::ENODATA);
        }
        Self::check_xattr_name(name).map_err(|_| Errno::ENODATA)?;
        let (f, _) = self.xattr_fd(ino)?;
        sys::fremovexattr(&f, name.as_bytes())
    }

    /// fallocate: mode 0 may grow the file (by writing its new final block); KEEP_SIZE only
    /// reserves backing space. Hole punching and the rest are not supported.
    pub fn fallocate(
        &self,
        fh: u64,
        offset: u64,
        len: u64,
        mode: i32,
        r: Requester,
    ) -> FsResult<()> {
        let f = self.handle_file(fh)?;
        self.check_content(&f, r)?;
        let end = offset.checked_add(len).ok_or(Errno::EFBIG)?;
        let mut c = f.content.write().map_err(|_| Errno::EIO)?;
        if r.uid != 0 {
            // As a write would (see `clear_set_id`).
            clear_set_id(c.file())?;
        }
        let first = ce::block_offset(offset / ce::BLOCK);
        let last = ce::block_offset(end.div_ceil(ce::BLOCK));
        match mode {
            0 => {
                sys::fallocate(c.file(), libc::FALLOC_FL_KEEP_SIZE, first, last - first)?;
                if end > c.size()? {
                    c.truncate(end)?;
                }
                Ok(())
            }
            libc::FALLOC_FL_KEEP_SIZE => sys::fallocate(c.file(), mode, first, last - first),
            _ => Err(Errno::ENOTSUP),
        }
    }

    /// After the key store changed: drops (and so wipes) every data key in memory whose CMK the
    /// daemon may no longer use. Returns the inodes whose kernel caches must be invalidated.
    pub fn revalidate(&self) -> Vec<u64> {
        self.keys.sweep_data_keys();
        if !self.keys.refresh() {
            return Vec::new();
        }
        let mut affected = Vec::new();
        let files: Vec<(u64, Arc<OpenFile>)> = lock(&self.files)
            .iter()
            .map(|(i, f)| (*i, f.clone()))
            .collect();
        for (ino, f) in files {
            let Ok(mut c) = f.content.write() else {
                continue;
            };
            let Some(key) = c.key.clone() else { continue };
            if !c.is_revoked() && !self.keys.usable(&key, &Kind::File.context(&c.id)) {
                log::warn!(
                    "{}: key {key} is no longer usable; its data key is wiped",
                    c.label
                );
                c.revoke();
                affected.push(ino);
            }
        }
        // Any change may have denied someone: drop every open file's cached pages, so each read
        // reaches the daemon and is checked against the reader's rights again.
        for ino in lock(&self.files).keys() {
            if !affected.contains(ino) {
                affected.push(*ino);
            }
        }
        let dirs = lock(&self.inodes).cached_dir_keys();
        for (ino, d) in dirs {
            let Some(key) = d.key.as_deref() else {
                continue;
            };
            if !self.keys.usable(key, &Kind::DirKey.context(&d.id)) {
                if let Some(n) = lock(&self.inodes).get_mut(ino) {
                    n.dir_keys = None;
                }
                affected.push(ino);
            }
        }
        affected
    }

    /// Applies due automatic rotations and scheduled deletions (as the daemon).
    pub fn maintain(&self) {
        match self.keys.provider().maintain(self.keys.daemon()) {
            Ok(0) => {}
            Ok(n) => log::info!("key maintenance: {n} automatic rotations or deletions applied"),
            Err(e) => log::warn!("key maintenance: {e}"),
        }
    }

    /// Open handles and known inodes (for status and tests).
    pub fn counts(&self) -> (usize, usize) {
        (lock(&self.handles).len(), lock(&self.inodes).len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xattr_replies_give_the_size_the_bytes_or_erange() {
        assert_eq!(xattr_reply(b"abc", 0), Ok(XattrReply::Size(3)));
        assert_eq!(xattr_reply(b"abc", 3), Ok(XattrReply::Data(&b"abc"[..])));
        assert_eq!(xattr_reply(b"abc", 64), Ok(XattrReply::Data(&b"abc"[..])));
        assert_eq!(xattr_reply(b"abc", 2), Err(Errno::ERANGE));
        assert_eq!(xattr_reply(b"", 0), Ok(XattrReply::Size(0)));
    }
}
