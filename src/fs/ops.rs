//! The filesystem's operations on the cipher directory, independent of the FUSE library: the
//! FUSE glue (`fs::fuse`, `fs::uring`) only converts requests and replies. This file holds the
//! state, inode resolution and open files (read, write, setattr); `namespace`, `listing`,
//! `xattrs` and `control` (the reserved `user.kmsfs.*` xattrs) the rest.

use crate::fs::cipherdir::{self, Volume};
use crate::fs::contentenc::{self as ce, ContentCipher};
use crate::fs::errno::{Errno, FsResult};
use crate::fs::fileio::FileContent;
use crate::fs::header::{self, DataKeys, Kind};
use crate::fs::inodes::{Backing, Inodes, ROOT};
use crate::fs::keyring::{DirKeys, Keyring};
use crate::fs::lock;
use crate::fs::nametransform::{self as nt, BackingName, DIRKEY_FILE, EntryKind};
use crate::fs::pagecache::{self, Modes, Stamp};
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
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use crate::fs::keyring::Requester;

mod control;
mod listing;
mod namespace;
mod xattrs;
pub use control::{KEY_XATTR, REENCRYPT_XATTR, REWRAP_ENTRIES_XATTR, REWRAP_XATTR, STATUS_XATTR};
pub use listing::{DirEntry, Listing};
use xattrs::open_xattrs;
pub use xattrs::{XattrReply, xattr_reply};

pub struct OpenFile {
    pub content: RwLock<FileContent>,
    handles: AtomicU64,
    /// The node id this state is filed under in `files`.
    ino: u64,
    /// Its handles by page-cache mode (see `pagecache`).
    modes: Mutex<Modes>,
}

impl OpenFile {
    /// The shared state of a file just opened under node `ino`, counting `handles` users.
    fn new(content: FileContent, ino: u64, handles: u64) -> Arc<OpenFile> {
        Arc::new(OpenFile {
            content: RwLock::new(content),
            handles: AtomicU64::new(handles),
            ino,
            modes: Mutex::new(Modes::default()),
        })
    }
}

enum Handle {
    /// `direct`: the kernel was told to bypass its page cache for this handle.
    File {
        file: Arc<OpenFile>,
        direct: bool,
    },
    Dir {
        entries: Arc<[DirEntry]>,
    },
}

/// A looked-up entry: attributes and the node's generation.
pub struct Entry {
    pub attr: FileAttr,
    pub generation: u64,
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
    /// Renames by reencrypt so far, counted under the `inodes` lock: a stat taken before one
    /// may show a backing inode number the file no longer has (see `link_stat`).
    reencrypts: AtomicU64,
    /// Rewraps of directory keys so far, counted under the `inodes` lock as each drops the
    /// keys cached on the node: keys read before one are not cached after it (see `dir_keys`).
    dir_rewraps: AtomicU64,
    /// Header rewraps of regular files so far, each counted under the `files` lock once it is
    /// written: an open that read a header before one checks it again (see `open_file`).
    header_rewraps: AtomicU64,
    is_root: bool,
    /// Frees deleted backing files after their unlink has been answered.
    reaper: crate::fs::reaper::Reaper,
    /// Undo records of in-place rewrites; None where the cipher dir cannot be written.
    journal: Option<Arc<crate::fs::undo::Journal>>,
    /// Milliseconds after `started` of the last request (for idle unmounting).
    started: std::time::Instant,
    last_request: AtomicU64,
    /// How many requests the io_uring queues served (`kmsfs status`).
    pub ring: crate::fs::uring::Stats,
    /// Opens of unchanged files keep the kernel's cached pages (see `pagecache`).
    keep_cache: AtomicBool,
    /// Files opened for writing bypass the page cache (see `pagecache`).
    direct_writes: AtomicBool,
}

/// An open file handle, and what the kernel may cache of the file through it.
pub struct Opened {
    pub fh: u64,
    /// The kernel keeps what it cached of the file before this open.
    pub keep_cache: bool,
    /// Reads and writes through this handle bypass the page cache.
    pub direct: bool,
}

impl Opened {
    /// The FOPEN_* flags of the OPEN or CREATE reply.
    pub fn reply_flags(&self) -> u32 {
        pagecache::open_reply_flags(self.direct, self.keep_cache)
    }
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

/// An entry reached through its parent directory's descriptor: no backing path is ever built,
/// so plaintext paths up to PATH_MAX work although encrypted names are longer.
/// A shared directory descriptor (see `Inodes::cache_dir_fd`).
pub type DirFd = Arc<OwnedFd>;

pub struct At {
    pub dir: DirFd,
    pub name: Arc<OsStr>,
}

/// Opens directory `dir/name` with `access` (O_PATH or O_RDONLY), never through a symlink.
fn open_subdir(dir: &OwnedFd, name: &OsStr, access: OFlag) -> FsResult<OwnedFd> {
    let flags = access | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    Ok(openat(dir, name, flags, Mode::empty())?)
}

fn open_dir_at(dir: &OwnedFd, name: &OsStr) -> FsResult<OwnedFd> {
    open_subdir(dir, name, OFlag::O_PATH)
}

/// `open_dir_at`, readable: for listing the directory, writing into it or syncing it.
fn open_listable_dir(dir: &OwnedFd, name: &OsStr) -> FsResult<OwnedFd> {
    open_subdir(dir, name, OFlag::O_RDONLY)
}

fn backing(st: &FileStat) -> Backing {
    Backing {
        ino: st.st_ino,
        one_link: st.st_nlink == 1,
    }
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
        let reaper = crate::fs::reaper::Reaper::for_dir(&root);
        Ok(KmsFs {
            journal,
            started: std::time::Instant::now(),
            last_request: AtomicU64::new(0),
            ring: Default::default(),
            keep_cache: AtomicBool::new(true),
            direct_writes: AtomicBool::new(true),
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
            reencrypts: AtomicU64::new(0),
            dir_rewraps: AtomicU64::new(0),
            header_rewraps: AtomicU64::new(0),
            is_root: nix::unistd::geteuid().is_root(),
            reaper,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// How many data keys to keep for reopening files without a KMS Decrypt (0: none).
    pub fn set_data_key_cache(&self, entries: usize) {
        self.keys.set_data_key_cache(entries);
    }

    /// Whether opens of unchanged files keep the kernel's cached pages (else every open drops
    /// them).
    pub fn set_keep_cache(&self, on: bool) {
        self.keep_cache.store(on, Ordering::Relaxed);
    }

    /// Whether files opened for writing bypass the page cache (only where the kernel keeps
    /// shared mappings of such files working: see `pagecache`).
    pub fn set_direct_writes(&self, on: bool) {
        self.direct_writes.store(on, Ordering::Relaxed);
    }

    pub fn direct_writes(&self) -> bool {
        self.direct_writes.load(Ordering::Relaxed)
    }

    /// A handle on `f`, opened with open(2) `flags`, in the page-cache mode its file's other
    /// handles have (see `pagecache::Modes`).
    fn file_handle(&self, f: Arc<OpenFile>, flags: i32, keep_cache: bool) -> Opened {
        let wants = pagecache::wants_direct(flags, self.direct_writes());
        let direct = lock(&f.modes).admit(wants);
        Opened {
            fh: self.new_handle(Handle::File { file: f, direct }),
            keep_cache,
            direct,
        }
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
        let (parent, name) = lock(&self.inodes).name_of(ino).ok_or(Errno::ENOENT)?;
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
        let raw = || read_at(&dir, OsStr::new(DIRKEY_FILE));
        let read = || {
            raw().map_err(|e| {
                log::error!("{}: errno {}", label(), e.0);
                Errno::EIO
            })
        };
        let mut last = None;
        for _ in 0..3 {
            let rewraps = self.dir_rewraps.load(Ordering::Acquire);
            let epoch = self.keys.epoch();
            let data = read()?;
            let (u, key) = self.keys.unwrap(Kind::DirKey, &data, r, label)?;
            let keys = Arc::new(DirKeys {
                keys: DataKeys::derive(&u.data_key, &u.id),
                id: u.id,
                key,
            });
            let mut inodes = lock(&self.inodes);
            // Cached after a key store change, these keys would escape `revalidate`; after a
            // rewrap of this directory's key file since the read (counted under this lock once
            // written), they would keep the CMK it replaced, for checks and for new entries.
            // (`raw`: `read`'s error message takes this lock for the label.)
            let unchanged = || matches!(raw(), Ok(now) if now == data);
            if self.keys.epoch() != epoch
                || self.dir_rewraps.load(Ordering::Acquire) != rewraps && !unchanged()
            {
                last = Some(keys);
                continue;
            }
            if let Some(n) = inodes.get_mut(ino) {
                n.dir_keys = Some(keys.clone());
            }
            return Ok(keys);
        }
        // Changed under it three times: used once, as if before the last change, not kept.
        last.ok_or(Errno::EIO)
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
        let parent = lock(&self.inodes).name_of(ino).map(|(p, _)| p);
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

    /// Counts a lookup of `parent/bn`, a file just made (so `st` is its own), and returns its
    /// attributes and generation.
    fn register(&self, parent: u64, bn: &BackingName, st: &FileStat) -> Entry {
        let (ino, generation) =
            lock(&self.inodes).link(parent, OsStr::new(bn.entry()), backing(st));
        Entry {
            attr: to_attr(ino, st),
            generation,
        }
    }

    fn register_at(&self, parent: u64, dir: &OwnedFd, bn: &BackingName) -> FsResult<Entry> {
        let name = OsStr::new(bn.entry());
        let (ino, generation, st) = self.link_stat(dir, name, |t, b| t.link(parent, name, b))?;
        Ok(Entry {
            attr: to_attr(ino, &st),
            generation,
        })
    }

    /// Stats `dir/name` and links it as the stat shows it (with `link`). A reencrypt that
    /// renamed a file between the stat and the link would leave the stat with a backing inode
    /// number the file no longer has: then it is made again, under the table's lock, which the
    /// reencrypt's rename holds too. Returns the node id, its generation and the stat used.
    fn link_stat(
        &self,
        dir: &OwnedFd,
        name: &OsStr,
        link: impl FnOnce(&mut Inodes, Backing) -> (u64, u64),
    ) -> FsResult<(u64, u64, FileStat)> {
        let before = self.reencrypts.load(Ordering::Acquire);
        let st = stat_at(dir, name)?;
        let mut inodes = lock(&self.inodes);
        let st = if self.reencrypts.load(Ordering::Acquire) != before {
            stat_at(dir, name)?
        } else {
            st
        };
        let (ino, generation) = link(&mut inodes, backing(&st));
        Ok((ino, generation, st))
    }

    pub fn lookup(&self, parent: u64, name: &OsStr, r: Requester) -> FsResult<Entry> {
        let (dir, bn) = self.child(parent, name, r)?;
        self.register_at(parent, &dir, &bn)
    }

    pub fn forget(&self, ino: u64, n: u64) {
        lock(&self.inodes).forget(ino, n);
    }

    /// The open state of file `ino`, if it is open.
    fn open_state(&self, ino: u64) -> Option<Arc<OpenFile>> {
        lock(&self.files).get(&ino).cloned()
    }

    pub fn getattr(&self, ino: u64) -> FsResult<FileAttr> {
        let open = self.open_state(ino);
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

    fn read_header(file: &File, label: &str) -> FsResult<[u8; header::HEADER_LEN]> {
        let mut h = [0u8; header::HEADER_LEN];
        file.read_exact_at(&mut h, 0).map_err(|e| {
            log::error!("{label}: no readable header: {e}");
            Errno::EIO
        })?;
        Ok(h)
    }

    fn load_content(&self, file: File, label: String, r: Requester) -> FsResult<FileContent> {
        let h = Self::read_header(&file, &label)?;
        self.content_of(file, &h, label, r)
    }

    /// The content of `file`, whose header is `h`.
    fn content_of(
        &self,
        file: File,
        h: &[u8],
        label: String,
        r: Requester,
    ) -> FsResult<FileContent> {
        let (u, key) = self.keys.unwrap(Kind::File, h, r, || label.clone())?;
        log::debug!(
            "{label}: data key unwrapped for uid {} (key {})",
            r.uid,
            key.as_deref().unwrap_or("?")
        );
        let keys = DataKeys::derive(&u.data_key, &u.id);
        Ok(self.journaled(FileContent::new(file, &keys, u.id, h, label, key)))
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
        // The state is filed under the node of the backing inode opened: the kernel's `ino`
        // unless the name reaches another file now (replaced behind the mount's back). An open
        // that opened the old file just before a reencrypt's rename finds it unlinked once the
        // reencrypt is done, and starts again. Two states for one file would each have their
        // own view of its content, and writes through them would overwrite each other.
        // Opens that found the file replaced, and all tries (a rewrap or a key store change
        // since the header was read makes another, which the last one made progress against).
        let (mut replaced, mut tries) = (0, 0);
        while replaced < 3 && tries < 64 {
            tries += 1;
            if let Some(f) = self.pinned(ino, r)? {
                return Ok(f);
            }
            let file = Self::open_backing(&self.at(ino)?)?;
            let meta = file.metadata()?;
            // None: the number is the old one of a file a reencrypt moved, which this is not
            // (an old copy opened just before the rename, or a file put there behind the
            // mount's back): open the name again.
            let Some(node) = lock(&self.inodes).node_of(meta.ino()) else {
                replaced += 1;
                continue;
            };
            if node != ino {
                if let Some(f) = self.pinned(node, r)? {
                    return Ok(f);
                }
            }
            if meta.len() == 0 {
                match self.open_headerless(ino, node, file, r)? {
                    Some(f) => return Ok(f),
                    None => {
                        replaced += 1;
                        continue;
                    }
                }
            }
            let label = self.label(ino);
            let rewraps = self.header_rewraps.load(Ordering::Acquire);
            let epoch = self.keys.epoch();
            let h = Self::read_header(&file, &label)?;
            let content = self.content_of(file, &h, label, r)?;
            let mut files = lock(&self.files);
            if content.file().metadata()?.nlink() == 0 {
                replaced += 1;
                continue;
            }
            // A key store change since the unwrap: `revalidate` may have looked at the open
            // files already, and would miss this one's data key if its CMK was disabled.
            if self.keys.epoch() != epoch {
                continue;
            }
            // A rewrap since the header was read would leave this state with the CMK it
            // replaced, and a disable of the new one would miss it. Each is counted under this
            // lock once written, so the header read now is as the last counted one left it.
            if self.header_rewraps.load(Ordering::Acquire) != rewraps
                && Self::read_header(content.file(), &content.label)? != h
            {
                continue;
            }
            // Another thread may have opened it meanwhile; keep the first.
            let mut inserted = false;
            let f = files
                .entry(node)
                .or_insert_with(|| {
                    inserted = true;
                    OpenFile::new(content, node, 0)
                })
                .clone();
            f.handles.fetch_add(1, Ordering::SeqCst);
            if inserted {
                // Only the state that is kept repairs an interrupted write, before anyone else
                // can use it: first the undo record of an in-place rewrite, then a torn append.
                let c = f.content.write().map_err(|_| Errno::EIO)?;
                if let Some(j) = &self.journal {
                    if let Err(e) = j.recover(&c.id, c.file(), &c.label) {
                        // Its bytes may be half old, half new: not served until it is restored.
                        log::error!("{}: could not undo an interrupted write: {e}", c.label);
                        drop(c);
                        files.remove(&node);
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
            return Ok(f);
        }
        // Replaced three times while being opened (or changed under it 64 times).
        Err(Errno(libc::ESTALE))
    }

    /// The open state filed under `node`, pinned for `r` (who may use its key), if there is one.
    fn pinned(&self, node: u64, r: Requester) -> FsResult<Option<Arc<OpenFile>>> {
        let cached = lock(&self.files).get(&node).cloned().inspect(|f| {
            f.handles.fetch_add(1, Ordering::SeqCst);
        });
        let Some(f) = cached else { return Ok(None) };
        if let Err(e) = self.check_content(&f, r) {
            self.unpin(&f);
            return Err(e);
        }
        Ok(Some(f))
    }

    /// A regular file without even a header: its creation (or truncation to 0) was interrupted
    /// before the header was written, so it is an empty file. It gets a header now, under the
    /// `files` lock so that no other open writes a different one.
    /// `ino` is the kernel's node (its directory's key, its label), `node` the one of the backing
    /// inode opened, under which the state is filed (see `open_file`). None if the file is no
    /// longer empty, or no longer linked, now that the lock is held.
    fn open_headerless(
        &self,
        ino: u64,
        node: u64,
        file: File,
        r: Requester,
    ) -> FsResult<Option<Arc<OpenFile>>> {
        let mut files = lock(&self.files);
        if let Some(f) = files.get(&node).cloned() {
            f.handles.fetch_add(1, Ordering::SeqCst);
            drop(files);
            if let Err(e) = self.check_content(&f, r) {
                self.unpin(&f);
                return Err(e);
            }
            return Ok(Some(f));
        }
        // Seen empty before the lock: another open may have given it a header (and data) since,
        // or a reencrypt replaced it. Either way, look again.
        let now = file.metadata()?;
        if now.nlink() == 0 || now.len() != 0 {
            return Ok(None);
        }
        let key = self.key_for_file(ino, None, r)?;
        let label = self.label(ino);
        let content = self.fresh_content(&file, label.clone(), &key, r)?;
        log::warn!("{label}: had no header (its creation was interrupted): now an empty file");
        let f = OpenFile::new(content, node, 1);
        files.insert(node, f.clone());
        Ok(Some(f))
    }

    /// One user of an open file is done; the last one drops its state (and so its keys).
    fn unpin(&self, f: &Arc<OpenFile>) {
        let mut files = lock(&self.files);
        let ino = f.ino;
        if f.handles.fetch_sub(1, Ordering::SeqCst) == 1
            && files.get(&ino).is_some_and(|g| Arc::ptr_eq(g, f))
        {
            files.remove(&ino);
        }
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

    pub fn open(&self, ino: u64, flags: i32, r: Requester) -> FsResult<Opened> {
        let f = self.open_file(ino, r)?;
        let keep_cache = self.note_open(ino, &f);
        Ok(self.file_handle(f, flags, keep_cache))
    }

    /// Notes an open of file `ino` (the kernel may cache its pages from now on), and answers
    /// whether the kernel may keep what it cached before: the backing file is as it was at an
    /// earlier open (see `pagecache`).
    fn note_open(&self, ino: u64, f: &OpenFile) -> bool {
        if !self.keep_cache.load(Ordering::Relaxed) {
            lock(&self.inodes).mark_cached(ino);
            return false;
        }
        let now = f.content.read().ok().and_then(|c| c.file().metadata().ok());
        let mut inodes = lock(&self.inodes);
        match now.map(|m| Stamp::of(&m)) {
            Some(s) => {
                let settled = s.settled(SystemTime::now());
                inodes.restamp(ino, s, settled, std::time::Instant::now())
            }
            None => {
                inodes.mark_cached(ino);
                false
            }
        }
    }

    fn handle_file(&self, fh: u64) -> FsResult<Arc<OpenFile>> {
        self.handle_file_mode(fh).map(|(file, _)| file)
    }

    /// The open file behind handle `fh`, and whether the handle bypasses the page cache.
    fn handle_file_mode(&self, fh: u64) -> FsResult<(Arc<OpenFile>, bool)> {
        match lock(&self.handles).get(&fh) {
            Some(Handle::File { file, direct }) => Ok((file.clone(), *direct)),
            _ => Err(Errno::EBADF),
        }
    }

    pub fn release(&self, fh: u64) {
        let h = lock(&self.handles).remove(&fh);
        if let Some(Handle::File { file, direct }) = h {
            lock(&file.modes).leave(direct);
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
    /// `append`: the file has O_APPEND at this write, and it is not writeback of cached pages.
    pub fn write(
        &self,
        fh: u64,
        offset: u64,
        data: &[u8],
        r: Requester,
        kill_suidgid: bool,
        append: bool,
    ) -> FsResult<usize> {
        self.reaper.settle_for(data.len() as u64);
        let (f, direct) = self.handle_file_mode(fh)?;
        self.check_content(&f, r)?;
        let mut c = f.content.write().map_err(|_| Errno::EIO)?;
        if kill_suidgid {
            clear_set_id(c.file())?;
        }
        // The kernel takes an O_APPEND write's offset from its inode's size, which an append
        // made behind the mount leaves behind until the attributes expire; the daemon's size is
        // the file's. (A cached handle's offset also places the bytes in the page cache: that
        // one is used as it is.)
        let offset = if append && direct { c.size()? } else { offset };
        c.write(offset, data)
    }

    pub fn fsync(&self, fh: u64, datasync: bool) -> FsResult<()> {
        let f = self.handle_file(fh)?;
        // What an application makes durable never outlasts the audit records of its key uses.
        self.flush_audit()?;
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
        self.flush_audit()?;
        File::from(open_listable_dir(&a.dir, &a.name)?).sync_all()?;
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
        if let Some(size) = size {
            // At most the new size (a truncation to 0 writes a new header).
            self.reaper.settle_for(size);
        }
        // An open file that lost its last name (unlinked) is changed through its descriptor.
        let open = self.open_state(ino);
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

    /// What it shows counts the space of files already deleted as free.
    pub fn statfs(&self) -> FsResult<nix::sys::statvfs::Statvfs> {
        self.reaper.settle();
        Ok(nix::sys::statvfs::statvfs(&self.root)?)
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
        self.reaper.settle_for(len);
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
        // reaches the daemon and is checked against the reader's rights again; and those of
        // closed files, which the next open would otherwise keep.
        affected.extend(lock(&self.files).keys());
        let dirs = {
            let mut inodes = lock(&self.inodes);
            affected.extend(inodes.clear_stamps());
            inodes.cached_dir_keys()
        };
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
        affected.sort_unstable();
        affected.dedup();
        affected
    }

    /// Syncs the audit records of this mount's key uses (see `KeyProvider::defer_audit_sync`).
    pub fn flush_audit(&self) -> FsResult<()> {
        self.keys.provider().flush_audit().map_err(|e| {
            log::error!("syncing the audit log: {e}");
            Errno::EIO
        })
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
