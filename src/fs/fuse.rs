//! FUSE glue: converts fuser requests into `KmsFs` calls and results into replies. No logic here.

use crate::fs::errno::{Errno, FsResult};
use crate::fs::ops::{KmsFs, Requester, XattrReply, xattr_reply};
use fuser::{
    AccessFlags, FileHandle, Filesystem, FopenFlags, Generation, INodeNo, KernelConfig, LockOwner,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

/// The largest WRITE we accept (and READ the kernel sends, with its max_pages).
pub const MAX_WRITE: u32 = 1 << 20;

pub struct Fuse {
    pub fs: Arc<KmsFs>,
    pub ttl: Duration,
    /// Some: ask the kernel for FUSE over io_uring, and say here whether it agreed.
    pub io_uring: Option<Arc<AtomicBool>>,
    /// Batches forgets once the rings carry the requests (see `uring::pace`).
    pub forget_pace: crate::fs::uring::pace::ForgetPace,
}

fn errno(e: Errno) -> fuser::Errno {
    fuser::Errno::from_i32(e.0)
}

fn requester(r: &Request) -> Requester {
    Requester {
        uid: r.uid(),
        gid: r.gid(),
        pid: r.pid(),
    }
}

fn time(t: Option<TimeOrNow>) -> Option<Option<SystemTime>> {
    t.map(|t| match t {
        TimeOrNow::SpecificTime(t) => Some(t),
        TimeOrNow::Now => None,
    })
}

impl Fuse {
    /// The caller of a request, which also counts as activity (idle unmount).
    fn req(&self, r: &Request) -> Requester {
        self.fs.touch();
        requester(r)
    }

    fn entry(&self, r: FsResult<crate::fs::ops::Entry>, reply: ReplyEntry) {
        match r {
            Ok(e) => reply.entry(&self.ttl, &e.attr, Generation(e.generation)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn xattr(r: FsResult<impl AsRef<[u8]>>, size: u32, reply: ReplyXattr) {
        let v = match r {
            Ok(v) => v,
            Err(e) => return reply.error(errno(e)),
        };
        match xattr_reply(v.as_ref(), size) {
            Ok(XattrReply::Size(n)) => reply.size(n),
            Ok(XattrReply::Data(d)) => reply.data(d),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn empty(r: FsResult<()>, reply: ReplyEmpty) {
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }
}

impl Filesystem for Fuse {
    /// No ioctls: programs probe with TCGETS (isatty) on every open; answer without a log line.
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        reply.error(fuser::Errno::from_i32(libc::ENOTTY));
    }

    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Large writes mean fewer round trips; the kernel caps what it accepts.
        let _ = config.set_max_write(MAX_WRITE);
        let _ = config.set_max_readahead(1 << 20);
        // Listing with attributes saves a lookup per entry for `ls -l` and the like.
        let _ = config.add_capabilities(
            fuser::InitFlags::FUSE_DO_READDIRPLUS | fuser::InitFlags::FUSE_READDIRPLUS_AUTO,
        );
        // We clear set-id bits on unprivileged writes and truncates ourselves, so the kernel
        // need not ask for security.capability before every write (a round trip each).
        let _ = config.add_capabilities(fuser::InitFlags::FUSE_HANDLE_KILLPRIV_V2);
        if self.fs.direct_writes() {
            // Without it (kernels before 6.6) a shared mapping of a direct-I/O file fails.
            let ok = config
                .add_capabilities(fuser::InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP)
                .is_ok();
            if !ok {
                log::info!("the kernel cannot map direct-I/O files shared: writes stay cached");
                self.fs.set_direct_writes(false);
            }
        }
        if let Some(granted) = &self.io_uring {
            // Offered only while the fuse module's enable_uring is on.
            let ok = config
                .add_capabilities(fuser::InitFlags::FUSE_OVER_IO_URING)
                .is_ok();
            granted.store(ok, Ordering::SeqCst);
        }
        Ok(())
    }

    fn lookup(&self, r: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.entry(self.fs.lookup(parent.0, name, self.req(r)), reply);
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        // Only once a request came through a ring: until the kernel has every queue, the
        // other requests still share this thread.
        if self.fs.ring.requests.load(Ordering::Relaxed) > 0 {
            self.forget_pace.run(|| self.fs.forget(ino.0, nlookup));
        } else {
            self.fs.forget(ino.0, nlookup);
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.fs.touch();
        match self.fs.getattr(ino.0) {
            Ok(a) => reply.attr(&self.ttl, &a),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn setattr(
        &self,
        r: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        match self.fs.setattr(
            ino.0,
            mode,
            uid,
            gid,
            size,
            time(atime),
            time(mtime),
            self.req(r),
        ) {
            Ok(a) => reply.attr(&self.ttl, &a),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readlink(&self, r: &Request, ino: INodeNo, reply: ReplyData) {
        match self.fs.readlink(ino.0, self.req(r)) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn mknod(
        &self,
        r: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        self.entry(
            self.fs
                .mknod(parent.0, name, mode & !umask, rdev, self.req(r)),
            reply,
        );
    }

    fn mkdir(
        &self,
        r: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        self.entry(
            self.fs.mkdir(parent.0, name, mode & !umask, self.req(r)),
            reply,
        );
    }

    fn unlink(&self, r: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        Self::empty(self.fs.unlink(parent.0, name, self.req(r)), reply);
    }

    fn rmdir(&self, r: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        Self::empty(self.fs.rmdir(parent.0, name, self.req(r)), reply);
    }

    fn symlink(
        &self,
        r: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        self.entry(
            self.fs.symlink(parent.0, link_name, target, self.req(r)),
            reply,
        );
    }

    fn rename(
        &self,
        r: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        Self::empty(
            self.fs.rename(
                parent.0,
                name,
                newparent.0,
                newname,
                flags.bits(),
                self.req(r),
            ),
            reply,
        );
    }

    fn link(
        &self,
        r: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        self.entry(
            self.fs.link(ino.0, newparent.0, newname, self.req(r)),
            reply,
        );
    }

    fn open(&self, r: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.fs.open(ino.0, flags.0, self.req(r)) {
            Ok(o) => reply.opened(
                FileHandle(o.fh),
                FopenFlags::from_bits_retain(o.reply_flags()),
            ),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn read(
        &self,
        r: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.fs.read(fh.0, offset, size, self.req(r)) {
            Ok(d) => reply.data(&d),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn write(
        &self,
        r: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let kill = write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID);
        // O_APPEND as the file has it now, unless the write is writeback of cached pages.
        let append =
            flags.0 & libc::O_APPEND != 0 && !write_flags.contains(WriteFlags::FUSE_WRITE_CACHE);
        match self.fs.write(fh.0, offset, data, self.req(r), kill, append) {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        self.fs.touch();
        // Writes go straight to the backing file; nothing is buffered here. ENOSYS tells the
        // kernel not to send FLUSH again: one round trip less on every close.
        reply.error(fuser::Errno::from_i32(libc::ENOSYS));
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.fs.release(fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.fs.touch();
        Self::empty(self.fs.fsync(fh.0, datasync), reply);
    }

    fn opendir(&self, r: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.fs.opendir(ino.0, self.req(r)) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        self.fs.touch();
        match self.fs.readdir(fh.0, offset) {
            Ok(entries) => {
                for (off, e) in entries.iter() {
                    if reply.add(INodeNo(e.ino), off, e.kind, &e.name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: fuser::ReplyDirectoryPlus,
    ) {
        self.fs.touch();
        let r = self.fs.readdirplus(ino.0, fh.0, offset, |off, e, entry| {
            // The node just looked up (and counted), which may be newer than the listing's.
            reply.add(
                entry.attr.ino,
                off,
                &e.name,
                &self.ttl,
                &entry.attr,
                Generation(entry.generation),
            )
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.fs.releasedir(fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.fs.touch();
        Self::empty(self.fs.fsyncdir(ino.0), reply);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.fs.statfs() {
            Ok(s) => reply.statfs(
                s.blocks(),
                s.blocks_free(),
                s.blocks_available(),
                s.files(),
                s.files_free(),
                s.block_size() as u32,
                crate::fs::nametransform::NAME_MAX as u32,
                s.fragment_size() as u32,
            ),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn setxattr(
        &self,
        r: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        Self::empty(
            self.fs.setxattr(ino.0, name, value, flags, self.req(r)),
            reply,
        );
    }

    fn getxattr(&self, r: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        Self::xattr(self.fs.getxattr(ino.0, name, self.req(r)), size, reply);
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        self.fs.touch();
        Self::xattr(self.fs.listxattr(ino.0), size, reply);
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.fs.touch();
        Self::empty(self.fs.removexattr(ino.0, name), reply);
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        self.fs.touch();
        // Mounted with default_permissions: the kernel checks permissions itself.
        reply.ok();
    }

    fn create(
        &self,
        r: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        match self
            .fs
            .create(parent.0, name, mode & !umask, self.req(r), flags)
        {
            Ok((e, o)) => reply.created(
                &self.ttl,
                &e.attr,
                Generation(e.generation),
                FileHandle(o.fh),
                FopenFlags::from_bits_retain(o.reply_flags()),
            ),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn fallocate(
        &self,
        r: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        Self::empty(
            self.fs.fallocate(fh.0, offset, length, mode, self.req(r)),
            reply,
        );
    }
}
