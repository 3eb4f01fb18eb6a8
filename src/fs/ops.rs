//! The filesystem's operations on the cipher directory, independent of the FUSE library: the
//! FUSE glue (`fs::fuse`) only converts requests and replies.

use crate::fs::cipherdir::{self, HeaderFailure, Volume};
use crate::fs::contentenc::{self as ce, ContentCipher};
use crate::fs::errno::{self, Errno, FsResult};
use crate::fs::fileio::FileContent;
use crate::fs::header::{self, DataKeys, Kind};
use crate::fs::inodes::{Inodes, ROOT};
use crate::fs::nametransform::{self as nt, BackingName, DIRKEY_FILE, EntryKind};
use crate::fs::sys;
use crate::keystore::atomic;
use crate::kms::Caller;
use crate::provider::KeyProvider;
use fuser::{FileAttr, FileType};
use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::{File, Metadata, OpenOptions};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Who asks: the FUSE request's ids, for ownership of new entries.
#[derive(Debug, Clone, Copy)]
pub struct Requester {
    pub uid: u32,
    pub gid: u32,
}

pub struct OpenFile {
    pub content: RwLock<FileContent>,
    handles: AtomicU64,
}

enum Handle {
    File { ino: u64, file: Arc<OpenFile> },
    Dir { entries: Vec<DirEntry> },
}

/// A looked-up entry: attributes and the node's generation.
pub struct Entry {
    pub attr: FileAttr,
    pub generation: u64,
}

#[derive(Clone)]
pub struct DirEntry {
    pub ino: u64,
    pub name: OsString,
    pub kind: FileType,
}

pub struct KmsFs {
    root: PathBuf,
    provider: Arc<dyn KeyProvider>,
    caller: Caller,
    volume: Volume,
    inodes: Mutex<Inodes>,
    files: Mutex<HashMap<u64, Arc<OpenFile>>>,
    handles: Mutex<HashMap<u64, Handle>>,
    next_fh: AtomicU64,
    is_root: bool,
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

fn file_type(m: &Metadata) -> FileType {
    use std::os::unix::fs::FileTypeExt;
    let t = m.file_type();
    if t.is_dir() {
        FileType::Directory
    } else if t.is_symlink() {
        FileType::Symlink
    } else if t.is_fifo() {
        FileType::NamedPipe
    } else if t.is_socket() {
        FileType::Socket
    } else if t.is_char_device() {
        FileType::CharDevice
    } else if t.is_block_device() {
        FileType::BlockDevice
    } else {
        FileType::RegularFile
    }
}

/// Plaintext length of a symlink whose stored target is `stored_len` base64url characters.
pub fn symlink_plain_len(stored_len: u64) -> u64 {
    (stored_len * 3 / 4).saturating_sub(crate::cryptocore::SEAL_OVERHEAD as u64)
}

/// Attributes of node `ino` from its backing metadata, with plaintext sizes.
pub fn to_attr(ino: u64, m: &Metadata) -> FileAttr {
    let kind = file_type(m);
    let size = match kind {
        FileType::RegularFile => ce::layout(m.len()).size,
        FileType::Symlink => symlink_plain_len(m.len()),
        _ => m.len(),
    };
    FileAttr {
        ino: fuser::INodeNo(ino),
        size,
        blocks: m.blocks(),
        atime: time(m.atime(), m.atime_nsec()),
        mtime: time(m.mtime(), m.mtime_nsec()),
        ctime: time(m.ctime(), m.ctime_nsec()),
        crtime: UNIX_EPOCH,
        kind,
        perm: (m.mode() & 0o7777) as u16,
        nlink: m.nlink() as u32,
        uid: m.uid(),
        gid: m.gid(),
        rdev: m.rdev() as u32,
        blksize: ce::BLOCK as u32,
        flags: 0,
    }
}

fn header_errno(what: &Path, f: HeaderFailure) -> Errno {
    match f {
        HeaderFailure::Corrupt(why) => {
            log::error!("{}: header failed authentication: {why}", what.display());
            Errno::EIO
        }
        HeaderFailure::Kms(e) => {
            log::warn!("{}: the KMS refused its key: {e}", what.display());
            errno::from_kms(&e)
        }
    }
}

impl KmsFs {
    pub fn new(
        root: PathBuf,
        provider: Arc<dyn KeyProvider>,
        caller: Caller,
        volume: Volume,
    ) -> FsResult<KmsFs> {
        let m = std::fs::symlink_metadata(&root)?;
        Ok(KmsFs {
            inodes: Mutex::new(Inodes::new(root.clone(), m.ino())),
            root,
            provider,
            caller,
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

    fn path(&self, ino: u64) -> FsResult<PathBuf> {
        lock(&self.inodes).path(ino).ok_or(Errno::ENOENT)
    }

    /// The name keys of directory `ino`, unwrapped once and then cached on its node.
    fn dir_keys(&self, ino: u64) -> FsResult<Arc<DataKeys>> {
        if let Some(k) = lock(&self.inodes).get(ino).and_then(|n| n.dir_keys.clone()) {
            return Ok(k);
        }
        let dir = self.path(ino)?;
        let file = dir.join(DIRKEY_FILE);
        let data = std::fs::read(&file).map_err(|e| {
            log::error!("{}: {e}", file.display());
            Errno::EIO
        })?;
        let u = cipherdir::unwrap_header(Kind::DirKey, &data, self.provider.as_ref(), &self.caller)
            .map_err(|f| header_errno(&file, f))?;
        let keys = Arc::new(DataKeys::derive(&u.data_key, &u.id));
        if let Some(n) = lock(&self.inodes).get_mut(ino) {
            n.dir_keys = Some(keys.clone());
        }
        Ok(keys)
    }

    /// The backing directory of `parent` and the backing name of `name` in it.
    fn child(&self, parent: u64, name: &OsStr) -> FsResult<(PathBuf, BackingName)> {
        if name.len() > nt::NAME_MAX {
            return Err(Errno::ENAMETOOLONG);
        }
        let keys = self.dir_keys(parent)?;
        let bn = nt::encrypt(&keys.names, name.as_bytes()).map_err(|_| Errno::EINVAL)?;
        Ok((self.path(parent)?, bn))
    }

    fn write_side_file(&self, dir: &Path, bn: &BackingName) -> FsResult<()> {
        if let (Some(side), BackingName::Long { full, .. }) = (bn.side_file(), bn) {
            atomic::write_atomic(&dir.join(side), full.as_bytes())?;
        }
        Ok(())
    }

    fn remove_side_file(&self, dir: &Path, bn: &BackingName) {
        if let Some(side) = bn.side_file() {
            let _ = std::fs::remove_file(dir.join(side));
        }
    }

    /// Counts a lookup of `parent/bn` and returns its attributes and generation.
    fn register(&self, parent: u64, bn: &BackingName, m: &Metadata) -> Entry {
        let (ino, generation) = lock(&self.inodes).link(parent, OsStr::new(bn.entry()), m.ino());
        Entry {
            attr: to_attr(ino, m),
            generation,
        }
    }

    pub fn lookup(&self, parent: u64, name: &OsStr) -> FsResult<Entry> {
        let (dir, bn) = self.child(parent, name)?;
        let m = std::fs::symlink_metadata(dir.join(bn.entry()))?;
        Ok(self.register(parent, &bn, &m))
    }

    pub fn forget(&self, ino: u64, n: u64) {
        lock(&self.inodes).forget(ino, n);
    }

    pub fn getattr(&self, ino: u64) -> FsResult<FileAttr> {
        if let Some(f) = lock(&self.files).get(&ino).cloned() {
            let c = f.content.read().map_err(|_| Errno::EIO)?;
            return Ok(to_attr(ino, &c.file().metadata()?));
        }
        Ok(to_attr(ino, &std::fs::symlink_metadata(self.path(ino)?)?))
    }

    /// Ownership of a new entry: the requester, with the parent's group if it is setgid.
    fn owner_for(&self, parent_dir: &Path, req: Requester) -> FsResult<(u32, u32, bool)> {
        let pm = std::fs::metadata(parent_dir)?;
        let setgid = pm.mode() & libc::S_ISGID != 0;
        Ok((req.uid, if setgid { pm.gid() } else { req.gid }, setgid))
    }

    fn chown(&self, p: &Path, uid: u32, gid: u32) -> FsResult<()> {
        if self.is_root {
            nix::unistd::fchownat(
                nix::fcntl::AT_FDCWD,
                p,
                Some(nix::unistd::Uid::from_raw(uid)),
                Some(nix::unistd::Gid::from_raw(gid)),
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            )?;
        }
        Ok(())
    }

    /// Writes a new header and an empty final block: a valid empty file with a fresh id and key.
    fn fresh_content(&self, file: &File, label: String) -> FsResult<FileContent> {
        let (h, u) = cipherdir::new_header(
            Kind::File,
            self.provider.as_ref(),
            &self.caller,
            &self.volume.config.key,
        )
        .map_err(|e| {
            log::warn!("{label}: no data key: {e}");
            errno::from_kms(&e)
        })?;
        let keys = DataKeys::derive(&u.data_key, &u.id);
        let mut buf = h.to_vec();
        ContentCipher::new(&keys.content, u.id)
            .encrypt_block(0, true, &[], &mut buf)
            .map_err(|_| Errno::EIO)?;
        file.write_all_at(&buf, 0)?;
        file.set_len(buf.len() as u64)?;
        let dup = file.try_clone()?;
        Ok(FileContent::new(dup, &keys, u.id, &h, label))
    }

    fn open_backing(p: &Path) -> FsResult<File> {
        match OpenOptions::new().read(true).write(true).open(p) {
            Ok(f) => Ok(f),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EACCES) | Some(libc::EROFS) | Some(libc::EPERM)
                ) =>
            {
                Ok(File::open(p)?)
            }
            Err(e) => Err(e.into()),
        }
    }

    fn load_content(&self, file: File, label: String) -> FsResult<FileContent> {
        let mut h = vec![0u8; header::HEADER_LEN];
        file.read_exact_at(&mut h, 0).map_err(|e| {
            log::error!("{label}: no readable header: {e}");
            Errno::EIO
        })?;
        let u = cipherdir::unwrap_header(Kind::File, &h, self.provider.as_ref(), &self.caller)
            .map_err(|f| header_errno(Path::new(&label), f))?;
        let keys = DataKeys::derive(&u.data_key, &u.id);
        Ok(FileContent::new(file, &keys, u.id, &h, label))
    }

    /// The shared open state of a regular file, opening it if no handle has it open.
    fn open_file(&self, ino: u64) -> FsResult<Arc<OpenFile>> {
        if let Some(f) = lock(&self.files).get(&ino) {
            return Ok(f.clone());
        }
        let p = self.path(ino)?;
        let content = self.load_content(Self::open_backing(&p)?, p.display().to_string())?;
        let mut files = lock(&self.files);
        // Another thread may have opened it meanwhile; keep the first.
        Ok(files
            .entry(ino)
            .or_insert_with(|| {
                Arc::new(OpenFile {
                    content: RwLock::new(content),
                    handles: AtomicU64::new(0),
                })
            })
            .clone())
    }

    fn new_handle(&self, h: Handle) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        lock(&self.handles).insert(fh, h);
        fh
    }

    pub fn open(&self, ino: u64) -> FsResult<u64> {
        let f = self.open_file(ino)?;
        f.handles.fetch_add(1, Ordering::SeqCst);
        Ok(self.new_handle(Handle::File { ino, file: f }))
    }

    fn handle_file(&self, fh: u64) -> FsResult<Arc<OpenFile>> {
        match lock(&self.handles).get(&fh) {
            Some(Handle::File { file, .. }) => Ok(file.clone()),
            _ => Err(Errno::EBADF),
        }
    }

    pub fn release(&self, fh: u64) {
        let h = lock(&self.handles).remove(&fh);
        if let Some(Handle::File { ino, file }) = h {
            if file.handles.fetch_sub(1, Ordering::SeqCst) == 1 {
                let mut files = lock(&self.files);
                if files
                    .get(&ino)
                    .is_some_and(|f| f.handles.load(Ordering::SeqCst) == 0)
                {
                    files.remove(&ino);
                }
            }
        }
    }

    pub fn read(&self, fh: u64, offset: u64, size: u32) -> FsResult<zeroize::Zeroizing<Vec<u8>>> {
        let f = self.handle_file(fh)?;
        let c = f.content.read().map_err(|_| Errno::EIO)?;
        c.read(offset, size)
    }

    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> FsResult<usize> {
        let f = self.handle_file(fh)?;
        let mut c = f.content.write().map_err(|_| Errno::EIO)?;
        c.write(offset, data)
    }

    pub fn fsync(&self, fh: u64, datasync: bool) -> FsResult<()> {
        let f = self.handle_file(fh)?;
        let c = f.content.read().map_err(|_| Errno::EIO)?;
        if datasync {
            c.file().sync_data()?
        } else {
            c.file().sync_all()?
        }
        Ok(())
    }

    pub fn fsyncdir(&self, ino: u64) -> FsResult<()> {
        atomic::sync_dir(&self.path(ino)?)?;
        Ok(())
    }

    /// Sets a regular file's size; size 0 gives it a new id and data key.
    fn truncate(&self, ino: u64, size: u64) -> FsResult<()> {
        let f = self.open_file(ino)?;
        let result = (|| {
            let mut c = f.content.write().map_err(|_| Errno::EIO)?;
            if size == 0 {
                let label = c.label.clone();
                let file = c.file().try_clone()?;
                *c = self.fresh_content(&file, label)?;
                Ok(())
            } else {
                c.truncate(size)
            }
        })();
        // Drop state opened only for this call.
        if f.handles.load(Ordering::SeqCst) == 0 {
            let mut files = lock(&self.files);
            if files
                .get(&ino)
                .is_some_and(|g| g.handles.load(Ordering::SeqCst) == 0)
            {
                files.remove(&ino);
            }
        }
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
    ) -> FsResult<FileAttr> {
        let p = self.path(ino)?;
        if let Some(s) = size {
            let m = std::fs::symlink_metadata(&p)?;
            if !m.is_file() {
                return Err(Errno::EINVAL);
            }
            self.truncate(ino, s)?;
        }
        if let Some(m) = mode {
            nix::sys::stat::fchmodat(
                nix::fcntl::AT_FDCWD,
                &p,
                nix::sys::stat::Mode::from_bits_truncate(m & 0o7777),
                nix::sys::stat::FchmodatFlags::FollowSymlink,
            )?;
        }
        if uid.is_some() || gid.is_some() {
            nix::unistd::fchownat(
                nix::fcntl::AT_FDCWD,
                &p,
                uid.map(nix::unistd::Uid::from_raw),
                gid.map(nix::unistd::Gid::from_raw),
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            )?;
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
            nix::sys::stat::utimensat(
                nix::fcntl::AT_FDCWD,
                &p,
                &ts(atime),
                &ts(mtime),
                nix::sys::stat::UtimensatFlags::NoFollowSymlink,
            )?;
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
        let (dir, bn) = self.child(parent, name)?;
        let path = dir.join(bn.entry());
        let (uid, gid, _) = self.owner_for(&dir, req)?;
        self.write_side_file(&dir, &bn)?;
        let file = match OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(mode & 0o7777)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && !excl => {
                // The kernel asked to create what another client made meanwhile: open it.
                let m = std::fs::symlink_metadata(&path)?;
                let entry = self.register(parent, &bn, &m);
                let fh = self.open(entry.attr.ino.0)?;
                return Ok((entry, fh));
            }
            Err(e) => {
                if e.kind() != std::io::ErrorKind::AlreadyExists {
                    self.remove_side_file(&dir, &bn);
                }
                return Err(e.into());
            }
        };
        let made = (|| {
            let content = self.fresh_content(&file, path.display().to_string())?;
            self.chown(&path, uid, gid)?;
            Ok::<_, Errno>(content)
        })();
        let content = match made {
            Ok(c) => c,
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                self.remove_side_file(&dir, &bn);
                return Err(e);
            }
        };
        let m = file.metadata()?;
        let entry = self.register(parent, &bn, &m);
        let ino = entry.attr.ino.0;
        let of = Arc::new(OpenFile {
            content: RwLock::new(content),
            handles: AtomicU64::new(1),
        });
        lock(&self.files).insert(ino, of.clone());
        let fh = self.new_handle(Handle::File { ino, file: of });
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
        let (dir, bn) = self.child(parent, name)?;
        let path = dir.join(bn.entry());
        let (uid, gid, _) = self.owner_for(&dir, req)?;
        self.write_side_file(&dir, &bn)?;
        let made = nix::sys::stat::mknod(
            &path,
            nix::sys::stat::SFlag::from_bits_truncate(kind),
            nix::sys::stat::Mode::from_bits_truncate(mode & 0o7777),
            u64::from(rdev),
        )
        .map_err(Errno::from)
        .and_then(|_| self.chown(&path, uid, gid));
        if let Err(e) = made {
            let _ = std::fs::remove_file(&path);
            self.remove_side_file(&dir, &bn);
            return Err(e);
        }
        Ok(self.register(parent, &bn, &std::fs::symlink_metadata(&path)?))
    }

    pub fn mkdir(&self, parent: u64, name: &OsStr, mode: u32, req: Requester) -> FsResult<Entry> {
        let (dir, bn) = self.child(parent, name)?;
        let path = dir.join(bn.entry());
        let (uid, gid, setgid) = self.owner_for(&dir, req)?;
        self.write_side_file(&dir, &bn)?;
        if let Err(e) = std::fs::create_dir(&path) {
            if e.kind() != std::io::ErrorKind::AlreadyExists {
                self.remove_side_file(&dir, &bn);
            }
            return Err(e.into());
        }
        let made = (|| {
            // Private until the key file is in place, then the requested mode.
            cipherdir::create_dirkey(
                &path,
                self.provider.as_ref(),
                &self.caller,
                &self.volume.config.key,
            )
            .map_err(|e| errno::from_kms(&e))?;
            self.chown(&path, uid, gid)?;
            let mut m = mode & 0o7777;
            if setgid {
                m |= libc::S_ISGID;
            }
            nix::sys::stat::fchmodat(
                nix::fcntl::AT_FDCWD,
                &path,
                nix::sys::stat::Mode::from_bits_truncate(m),
                nix::sys::stat::FchmodatFlags::FollowSymlink,
            )?;
            Ok::<_, Errno>(())
        })();
        if let Err(e) = made {
            let _ = std::fs::remove_file(path.join(DIRKEY_FILE));
            let _ = std::fs::remove_dir(&path);
            self.remove_side_file(&dir, &bn);
            return Err(e);
        }
        Ok(self.register(parent, &bn, &std::fs::symlink_metadata(&path)?))
    }

    pub fn symlink(
        &self,
        parent: u64,
        name: &OsStr,
        target: &Path,
        req: Requester,
    ) -> FsResult<Entry> {
        let (dir, bn) = self.child(parent, name)?;
        let path = dir.join(bn.entry());
        let (uid, gid, _) = self.owner_for(&dir, req)?;
        let stored = cipherdir::encrypt_symlink(&self.volume.keys, target.as_os_str().as_bytes())
            .map_err(|_| Errno::EIO)?;
        if stored.len() >= libc::PATH_MAX as usize {
            return Err(Errno::ENAMETOOLONG);
        }
        self.write_side_file(&dir, &bn)?;
        let made = std::os::unix::fs::symlink(&stored, &path)
            .map_err(Errno::from)
            .and_then(|_| self.chown(&path, uid, gid));
        if let Err(e) = made {
            if e != Errno::EEXIST {
                let _ = std::fs::remove_file(&path);
                self.remove_side_file(&dir, &bn);
            }
            return Err(e);
        }
        Ok(self.register(parent, &bn, &std::fs::symlink_metadata(&path)?))
    }

    pub fn readlink(&self, ino: u64) -> FsResult<Vec<u8>> {
        let p = self.path(ino)?;
        let stored = std::fs::read_link(&p)?;
        cipherdir::decrypt_symlink(&self.volume.keys, stored.as_os_str().as_bytes())
            .map(|t| t.to_vec())
            .ok_or_else(|| {
                log::error!("{}: symlink target failed authentication", p.display());
                Errno::EIO
            })
    }

    pub fn unlink(&self, parent: u64, name: &OsStr) -> FsResult<()> {
        let (dir, bn) = self.child(parent, name)?;
        let path = dir.join(bn.entry());
        let m = std::fs::symlink_metadata(&path)?;
        if m.is_dir() {
            return Err(Errno(libc::EISDIR));
        }
        std::fs::remove_file(&path)?;
        self.remove_side_file(&dir, &bn);
        lock(&self.inodes).unlink(parent, OsStr::new(bn.entry()), m.nlink() <= 1);
        Ok(())
    }

    /// Removes an (encrypted-)empty directory's key file so the backing directory can go,
    /// returning the key file's bytes to put back if that fails.
    fn strip_dirkey(path: &Path) -> FsResult<Vec<u8>> {
        for e in std::fs::read_dir(path)? {
            if e?.file_name() != DIRKEY_FILE {
                return Err(Errno::ENOTEMPTY);
            }
        }
        let key = path.join(DIRKEY_FILE);
        let saved = std::fs::read(&key)?;
        std::fs::remove_file(&key)?;
        Ok(saved)
    }

    fn restore_dirkey(path: &Path, saved: &[u8]) {
        if let Err(e) = atomic::write_atomic(&path.join(DIRKEY_FILE), saved) {
            log::error!(
                "{}: could not restore the directory key: {e}",
                path.display()
            );
        }
    }

    pub fn rmdir(&self, parent: u64, name: &OsStr) -> FsResult<()> {
        let (dir, bn) = self.child(parent, name)?;
        let path = dir.join(bn.entry());
        if !std::fs::symlink_metadata(&path)?.is_dir() {
            return Err(Errno(libc::ENOTDIR));
        }
        let saved = Self::strip_dirkey(&path)?;
        if let Err(e) = std::fs::remove_dir(&path) {
            Self::restore_dirkey(&path, &saved);
            return Err(e.into());
        }
        self.remove_side_file(&dir, &bn);
        lock(&self.inodes).unlink(parent, OsStr::new(bn.entry()), true);
        Ok(())
    }

    pub fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
    ) -> FsResult<()> {
        let (sdir, sbn) = self.child(parent, name)?;
        let (ddir, dbn) = self.child(newparent, newname)?;
        let (src, dst) = (sdir.join(sbn.entry()), ddir.join(dbn.entry()));
        if flags & libc::RENAME_EXCHANGE != 0 {
            sys::rename2(&src, &dst, flags)?;
            lock(&self.inodes).exchange(
                (parent, OsStr::new(sbn.entry())),
                (newparent, OsStr::new(dbn.entry())),
            );
            return Ok(());
        }
        let sm = std::fs::symlink_metadata(&src)?;
        // Renaming a directory over an empty one: the backing target still holds its key file.
        let mut saved = None;
        if sm.is_dir() && flags & libc::RENAME_NOREPLACE == 0 {
            if let Ok(dm) = std::fs::symlink_metadata(&dst) {
                if dm.is_dir() && dm.ino() != sm.ino() {
                    saved = Some(Self::strip_dirkey(&dst)?);
                }
            }
        }
        let dst_gone = std::fs::symlink_metadata(&dst)
            .ok()
            .map(|m| m.nlink() <= 1 || m.is_dir());
        let done = self
            .write_side_file(&ddir, &dbn)
            .and_then(|_| sys::rename2(&src, &dst, flags));
        if let Err(e) = done {
            if let Some(s) = saved {
                Self::restore_dirkey(&dst, &s);
            }
            return Err(e);
        }
        if sbn.side_file() != dbn.side_file() || sdir != ddir {
            self.remove_side_file(&sdir, &sbn);
        }
        let mut inodes = lock(&self.inodes);
        if dst_gone == Some(true) {
            inodes.unlink(newparent, OsStr::new(dbn.entry()), true);
        }
        inodes.rename(
            (parent, OsStr::new(sbn.entry())),
            (newparent, OsStr::new(dbn.entry())),
        );
        Ok(())
    }

    pub fn link(&self, ino: u64, newparent: u64, newname: &OsStr) -> FsResult<Entry> {
        let src = self.path(ino)?;
        let (dir, bn) = self.child(newparent, newname)?;
        let dst = dir.join(bn.entry());
        self.write_side_file(&dir, &bn)?;
        if let Err(e) = std::fs::hard_link(&src, &dst) {
            if e.kind() != std::io::ErrorKind::AlreadyExists {
                self.remove_side_file(&dir, &bn);
            }
            return Err(e.into());
        }
        Ok(self.register(newparent, &bn, &std::fs::symlink_metadata(&dst)?))
    }

    /// Decrypts one backing directory entry's name; None for kmsfs's own files and for names that
    /// do not decrypt (logged).
    fn plain_name(&self, dir: &Path, keys: &DataKeys, entry: &OsStr) -> Option<OsString> {
        let s = entry.to_str()?;
        let encoded = match nt::classify(s) {
            EntryKind::Internal => return None,
            EntryKind::Encrypted => s.to_string(),
            EntryKind::LongName => {
                let side = dir.join(format!("{s}{}", nt::LONGNAME_SUFFIX));
                match std::fs::read_to_string(&side) {
                    Ok(full) if nt::long_name_matches(s, &full) => full,
                    _ => {
                        log::warn!(
                            "{}: long name without a valid side file",
                            dir.join(s).display()
                        );
                        return None;
                    }
                }
            }
        };
        match nt::decrypt(&keys.names, &encoded) {
            Ok(n) => Some(OsString::from_vec(n)),
            Err(_) => {
                log::warn!(
                    "{}: name does not decrypt in this directory",
                    dir.join(s).display()
                );
                None
            }
        }
    }

    pub fn opendir(&self, ino: u64) -> FsResult<u64> {
        let dir = self.path(ino)?;
        let keys = self.dir_keys(ino)?;
        let parent = lock(&self.inodes)
            .get(ino)
            .and_then(|n| n.links.first().map(|l| l.0))
            .unwrap_or(ROOT);
        let mut entries = vec![
            DirEntry {
                ino,
                name: ".".into(),
                kind: FileType::Directory,
            },
            DirEntry {
                ino: parent,
                name: "..".into(),
                kind: FileType::Directory,
            },
        ];
        for e in std::fs::read_dir(&dir)? {
            let e = e?;
            let Some(name) = self.plain_name(&dir, &keys, &e.file_name()) else {
                continue;
            };
            let Ok(m) = e.metadata() else { continue };
            entries.push(DirEntry {
                ino: lock(&self.inodes).node_id(m.ino()),
                name,
                kind: file_type(&m),
            });
        }
        Ok(self.new_handle(Handle::Dir { entries }))
    }

    /// Entries from `offset` on (offsets are positions + 1).
    pub fn readdir(&self, fh: u64, offset: u64) -> FsResult<Vec<(u64, DirEntry)>> {
        match lock(&self.handles).get(&fh) {
            Some(Handle::Dir { entries }) => Ok(entries
                .iter()
                .enumerate()
                .skip(offset as usize)
                .map(|(i, e)| (i as u64 + 1, e.clone()))
                .collect()),
            _ => Err(Errno::EBADF),
        }
    }

    pub fn releasedir(&self, fh: u64) {
        lock(&self.handles).remove(&fh);
    }

    pub fn statfs(&self) -> FsResult<nix::sys::statvfs::Statvfs> {
        Ok(nix::sys::statvfs::statvfs(&self.root)?)
    }

    /// The key and id that protect an inode's xattr values: a file's data key, or a directory's.
    fn xattr_key(&self, ino: u64) -> FsResult<(crate::cryptocore::SecretKey, [u8; 16])> {
        let p = self.path(ino)?;
        let m = std::fs::symlink_metadata(&p)?;
        let (kind, data) = if m.is_dir() {
            (Kind::DirKey, std::fs::read(p.join(DIRKEY_FILE))?)
        } else if m.is_file() {
            let mut h = vec![0u8; header::HEADER_LEN];
            File::open(&p)?
                .read_exact_at(&mut h, 0)
                .map_err(|_| Errno::EIO)?;
            (Kind::File, h)
        } else {
            return Err(Errno::ENOTSUP);
        };
        let u = cipherdir::unwrap_header(kind, &data, self.provider.as_ref(), &self.caller)
            .map_err(|f| header_errno(&p, f))?;
        Ok((DataKeys::derive(&u.data_key, &u.id).xattr, u.id))
    }

    fn check_xattr_name(name: &OsStr) -> FsResult<()> {
        if name.as_bytes().starts_with(b"user.") && name.len() > 5 {
            Ok(())
        } else {
            Err(Errno::ENOTSUP)
        }
    }

    pub fn setxattr(&self, ino: u64, name: &OsStr, value: &[u8], flags: i32) -> FsResult<()> {
        Self::check_xattr_name(name)?;
        let (key, id) = self.xattr_key(ino)?;
        let sealed =
            cipherdir::encrypt_xattr(&key, &id, name.as_bytes(), value).map_err(|_| Errno::EIO)?;
        sys::setxattr(&self.path(ino)?, name.as_bytes(), &sealed, flags)
    }

    pub fn getxattr(&self, ino: u64, name: &OsStr) -> FsResult<zeroize::Zeroizing<Vec<u8>>> {
        Self::check_xattr_name(name).map_err(|_| Errno::ENODATA)?;
        let p = self.path(ino)?;
        let stored = sys::getxattr(&p, name.as_bytes())?;
        let (key, id) = self.xattr_key(ino)?;
        cipherdir::decrypt_xattr(&key, &id, name.as_bytes(), &stored).ok_or_else(|| {
            log::error!("{}: xattr {:?} failed authentication", p.display(), name);
            Errno::EIO
        })
    }

    pub fn listxattr(&self, ino: u64) -> FsResult<Vec<u8>> {
        let mut out = Vec::new();
        for n in sys::listxattr(&self.path(ino)?)? {
            if n.starts_with(b"user.") {
                out.extend_from_slice(&n);
                out.push(0);
            }
        }
        Ok(out)
    }

    pub fn removexattr(&self, ino: u64, name: &OsStr) -> FsResult<()> {
        Self::check_xattr_name(name).map_err(|_| Errno::ENODATA)?;
        sys::removexattr(&self.path(ino)?, name.as_bytes())
    }

    /// fallocate: mode 0 may grow the file (by writing its new final block); KEEP_SIZE only
    /// reserves backing space. Hole punching and the rest are not supported.
    pub fn fallocate(&self, fh: u64, offset: u64, len: u64, mode: i32) -> FsResult<()> {
        let f = self.handle_file(fh)?;
        let end = offset.checked_add(len).ok_or(Errno::EFBIG)?;
        let mut c = f.content.write().map_err(|_| Errno::EIO)?;
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

    /// Open handles and known inodes (for status and tests).
    pub fn counts(&self) -> (usize, usize) {
        (lock(&self.handles).len(), lock(&self.inodes).len())
    }
}
