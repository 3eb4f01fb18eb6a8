//! Serves one parsed request from a ring entry: calls `KmsFs` and encodes the reply. The twin of
//! `fs::fuse` (the /dev/fuse front end) and answers exactly as it does, so the two transports are
//! interchangeable; no logic of its own.

use super::abi::{Op, Out, SetTime, StatfsOut};
use crate::fs::errno::{Errno, FsResult};
use crate::fs::ops::{KmsFs, Requester, XattrReply, xattr_reply};
use std::time::Duration;

/// What every request on a ring is served with.
pub struct Ctx<'a> {
    pub fs: &'a KmsFs,
    pub ttl: Duration,
    /// Some(uid): only that user may make requests the kernel sends on a user's behalf (the
    /// /dev/fuse session's `SessionACL::Owner`); None with allow_other.
    pub owner_only: Option<u32>,
}

/// Requests the kernel may make without a meaningful caller (writeback, readahead, release),
/// which an owner-only mount still serves (as fuser does).
fn callerless(op: &Op) -> bool {
    matches!(
        op,
        Op::Read { .. }
            | Op::Readdir { .. }
            | Op::Readdirplus { .. }
            | Op::Write { .. }
            | Op::Fsync { .. }
            | Op::Fsyncdir
            | Op::Release { .. }
            | Op::Releasedir { .. }
    )
}

fn time(t: Option<SetTime>) -> Option<Option<std::time::SystemTime>> {
    t.map(|t| match t {
        SetTime::At(t) => Some(t),
        SetTime::Now => None,
    })
}

/// Serves `op` for node `ino` and caller `r`, leaving the reply's arguments in `out`.
pub fn serve(c: &Ctx, ino: u64, r: Requester, op: Op, out: &mut Out) -> FsResult<()> {
    if let Some(owner) = c.owner_only {
        if r.uid != owner && !callerless(&op) {
            return Err(Errno::EACCES);
        }
    }
    let fs = c.fs;
    // As on /dev/fuse: monitors polling statfs, and closes, are not activity (--idle).
    if !matches!(op, Op::Statfs | Op::Release { .. } | Op::Releasedir { .. }) {
        fs.touch();
    }
    let entry = |out: &mut Out, e: crate::fs::ops::Entry| out.entry(&e.attr, e.generation, c.ttl);
    match op {
        Op::Lookup { name } => entry(out, fs.lookup(ino, name, r)?),
        Op::Getattr => out.attr_out(&fs.getattr(ino)?, c.ttl),
        Op::Setattr(s) => {
            let a = fs.setattr(
                ino,
                s.mode,
                s.uid,
                s.gid,
                s.size,
                time(s.atime),
                time(s.mtime),
                r,
            )?;
            out.attr_out(&a, c.ttl)
        }
        Op::Readlink => out.bytes(&fs.readlink(ino, r)?),
        Op::Symlink { name, target } => {
            entry(out, fs.symlink(ino, name, std::path::Path::new(target), r)?)
        }
        Op::Mknod {
            name,
            mode,
            rdev,
            umask,
        } => entry(out, fs.mknod(ino, name, mode & !umask, rdev, r)?),
        Op::Mkdir { name, mode, umask } => entry(out, fs.mkdir(ino, name, mode & !umask, r)?),
        Op::Unlink { name } => fs.unlink(ino, name, r),
        Op::Rmdir { name } => fs.rmdir(ino, name, r),
        Op::Rename {
            name,
            newdir,
            newname,
            flags,
        } => fs.rename(ino, name, newdir, newname, flags, r),
        Op::Link { oldnodeid, newname } => entry(out, fs.link(oldnodeid, ino, newname, r)?),
        Op::Open { flags } => {
            let o = fs.open(ino, flags, r)?;
            out.open_out(o.fh, o.reply_flags())
        }
        Op::Read { fh, offset, size } => out.fill(|b| fs.read_into(fh, offset, size, r, b)),
        Op::Write {
            fh,
            offset,
            data,
            kill_suidgid,
            append,
        } => {
            let n = fs.write(fh, offset, data, r, kill_suidgid, append)?;
            out.write_out(n as u32)
        }
        Op::Statfs => {
            let s = fs.statfs()?;
            out.statfs(&StatfsOut {
                blocks: s.blocks(),
                bfree: s.blocks_free(),
                bavail: s.blocks_available(),
                files: s.files(),
                ffree: s.files_free(),
                bsize: s.block_size() as u32,
                namelen: crate::fs::nametransform::NAME_MAX as u32,
                frsize: s.fragment_size() as u32,
            })
        }
        Op::Release { fh } => {
            fs.release(fh);
            Ok(())
        }
        Op::Fsync { fh, datasync } => fs.fsync(fh, datasync),
        Op::Setxattr { name, value, flags } => fs.setxattr(ino, name, value, flags, r),
        Op::Getxattr { name, size } => xattr(out, size, fs.getxattr(ino, name, r)?),
        Op::Listxattr { size } => xattr(out, size, fs.listxattr(ino)?),
        Op::Removexattr { name } => fs.removexattr(ino, name),
        // Nothing is buffered here; ENOSYS stops the kernel sending FLUSH on every close.
        Op::Flush => Err(Errno(libc::ENOSYS)),
        Op::Opendir => out.open_out(fs.opendir(ino, r)?, 0),
        Op::Readdir { fh, offset, size } => {
            for (off, e) in fs.readdir(fh, offset)?.iter() {
                if !out.dirent(size as usize, e.ino, off, e.kind, &e.name)? {
                    break;
                }
            }
            Ok(())
        }
        Op::Readdirplus { fh, offset, size } => {
            let mut failed = Ok(());
            fs.readdirplus(ino, fh, offset, |off, e, en| {
                match out.direntplus(size as usize, off, &e.name, &en.attr, en.generation, c.ttl) {
                    Ok(fits) => !fits,
                    Err(err) => {
                        failed = Err(err);
                        true
                    }
                }
            })?;
            failed
        }
        Op::Releasedir { fh } => {
            fs.releasedir(fh);
            Ok(())
        }
        Op::Fsyncdir => fs.fsyncdir(ino),
        // Mounted with default_permissions where it matters: the kernel checks itself.
        Op::Access => Ok(()),
        Op::Create {
            name,
            mode,
            umask,
            flags,
        } => {
            let (e, o) = fs.create(ino, name, mode & !umask, r, flags)?;
            out.entry(&e.attr, e.generation, c.ttl)?;
            out.open_out(o.fh, o.reply_flags())
        }
        // No ioctls; programs probe with TCGETS (isatty).
        Op::Ioctl => Err(Errno(libc::ENOTTY)),
        Op::Fallocate {
            fh,
            offset,
            length,
            mode,
        } => fs.fallocate(fh, offset, length, mode, r),
        Op::Unsupported(_) => Err(Errno(libc::ENOSYS)),
    }
}

/// GETXATTR/LISTXATTR, encoded as `xattr_reply` says.
fn xattr(out: &mut Out, size: u32, v: impl AsRef<[u8]>) -> FsResult<()> {
    match xattr_reply(v.as_ref(), size)? {
        XattrReply::Size(n) => out.xattr_size(n),
        XattrReply::Data(d) => out.bytes(d),
    }
}
