//! The operations that take backing space. Each runs once more if it ran out of space while
//! deleted files were still being freed (see `reaper`): space a delete gave back is there for
//! the next operation, as if it had been freed on the spot.

use super::*;

impl KmsFs {
    /// Runs `op`; if the backing filesystem was full (or the quota used up) while frees were
    /// pending, waits for them and runs it again.
    fn with_space<T>(&self, op: impl Fn() -> FsResult<T>) -> FsResult<T> {
        match op() {
            Err(e) if is_full(e) && self.reaper.settle() => op(),
            r => r,
        }
    }

    pub fn create(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        req: Requester,
        flags: i32,
    ) -> FsResult<(Entry, Opened)> {
        self.with_space(|| self.create_once(parent, name, mode, req, flags))
    }

    pub fn mknod(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        rdev: u32,
        req: Requester,
    ) -> FsResult<Entry> {
        self.with_space(|| self.mknod_once(parent, name, mode, rdev, req))
    }

    pub fn mkdir(&self, parent: u64, name: &OsStr, mode: u32, req: Requester) -> FsResult<Entry> {
        self.with_space(|| self.mkdir_once(parent, name, mode, req))
    }

    pub fn symlink(
        &self,
        parent: u64,
        name: &OsStr,
        target: &Path,
        req: Requester,
    ) -> FsResult<Entry> {
        self.with_space(|| self.symlink_once(parent, name, target, req))
    }

    pub fn link(
        &self,
        ino: u64,
        newparent: u64,
        newname: &OsStr,
        req: Requester,
    ) -> FsResult<Entry> {
        self.with_space(|| self.link_once(ino, newparent, newname, req))
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
        self.with_space(|| self.rename_once(parent, name, newparent, newname, flags, req))
    }

    /// See `write_once`.
    pub fn write(
        &self,
        fh: u64,
        offset: u64,
        data: &[u8],
        r: Requester,
        kill_suidgid: bool,
        append: bool,
    ) -> FsResult<usize> {
        self.with_space(|| self.write_once(fh, offset, data, r, kill_suidgid, append))
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
        self.with_space(|| self.setattr_once(ino, mode, uid, gid, size, atime, mtime, r))
    }

    pub fn fallocate(
        &self,
        fh: u64,
        offset: u64,
        len: u64,
        mode: i32,
        r: Requester,
    ) -> FsResult<()> {
        self.with_space(|| self.fallocate_once(fh, offset, len, mode, r))
    }

    /// Control attributes (`user.kmsfs.*`) run once: a rewrap or reencrypt that ran out of
    /// space is reported as it is.
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
        self.with_space(|| self.set_user_xattr(ino, name, value, flags, r))
    }

    /// What `statfs` shows counts the space of files already deleted as free.
    pub fn statfs(&self) -> FsResult<nix::sys::statvfs::Statvfs> {
        self.reaper.settle();
        Ok(nix::sys::statvfs::statvfs(&self.root)?)
    }
}

fn is_full(e: Errno) -> bool {
    e == Errno(libc::ENOSPC) || e == Errno(libc::EDQUOT)
}
