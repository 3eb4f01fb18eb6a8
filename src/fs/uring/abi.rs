//! The FUSE wire format as the io_uring transport carries it (Linux `include/uapi/linux/fuse.h`,
//! protocol 7.42): request parsing and reply encoding, pure and unit-tested.
//!
//! Over io_uring each ring entry owns two buffers. The header buffer holds the request's
//! `fuse_in_header` (reused for the `fuse_out_header` of the reply), the operation's fixed
//! argument struct, and the entry's bookkeeping (`fuse_uring_ent_in_out`). Every other argument
//! (names, write data) follows in the payload buffer, NUL-terminated names first; the reply's
//! arguments go back in the payload buffer too.

use crate::fs::errno::{Errno, FsResult};
use fuser::{FileAttr, FileType};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `struct fuse_uring_req_header`: in/out header, op header, entry bookkeeping.
pub const IN_OUT_OFFSET: usize = 0;
pub const OP_IN_OFFSET: usize = 128;
pub const OP_IN_SIZE: usize = 128;
pub const ENT_OFFSET: usize = 256;
pub const RING_HEADER_SIZE: usize = 288;
/// `fuse_uring_ent_in_out.commit_id` and `.payload_sz`, within the header buffer.
const ENT_COMMIT_ID: usize = ENT_OFFSET + 8;
const ENT_PAYLOAD_SZ: usize = ENT_OFFSET + 16;

/// io_uring command opcodes (`enum fuse_uring_cmd`).
pub const CMD_REGISTER: u32 = 1;
pub const CMD_COMMIT_AND_FETCH: u32 = 2;

/// Operation codes we serve (`enum fuse_opcode`).
pub mod op {
    pub const LOOKUP: u32 = 1;
    pub const GETATTR: u32 = 3;
    pub const SETATTR: u32 = 4;
    pub const READLINK: u32 = 5;
    pub const SYMLINK: u32 = 6;
    pub const MKNOD: u32 = 8;
    pub const MKDIR: u32 = 9;
    pub const UNLINK: u32 = 10;
    pub const RMDIR: u32 = 11;
    pub const RENAME: u32 = 12;
    pub const LINK: u32 = 13;
    pub const OPEN: u32 = 14;
    pub const READ: u32 = 15;
    pub const WRITE: u32 = 16;
    pub const STATFS: u32 = 17;
    pub const RELEASE: u32 = 18;
    pub const FSYNC: u32 = 20;
    pub const SETXATTR: u32 = 21;
    pub const GETXATTR: u32 = 22;
    pub const LISTXATTR: u32 = 23;
    pub const REMOVEXATTR: u32 = 24;
    pub const FLUSH: u32 = 25;
    pub const OPENDIR: u32 = 27;
    pub const READDIR: u32 = 28;
    pub const RELEASEDIR: u32 = 29;
    pub const FSYNCDIR: u32 = 30;
    pub const ACCESS: u32 = 34;
    pub const CREATE: u32 = 35;
    pub const IOCTL: u32 = 39;
    pub const FALLOCATE: u32 = 43;
    pub const READDIRPLUS: u32 = 44;
    pub const RENAME2: u32 = 45;
}

/// `FATTR_*`: which fields of a SETATTR are set.
const FATTR_MODE: u32 = 1 << 0;
const FATTR_UID: u32 = 1 << 1;
const FATTR_GID: u32 = 1 << 2;
const FATTR_SIZE: u32 = 1 << 3;
const FATTR_ATIME: u32 = 1 << 4;
const FATTR_MTIME: u32 = 1 << 5;
const FATTR_ATIME_NOW: u32 = 1 << 7;
const FATTR_MTIME_NOW: u32 = 1 << 8;
/// `FUSE_WRITE_KILL_SUIDGID` in `fuse_write_in.write_flags`.
const WRITE_KILL_SUIDGID: u32 = 1 << 2;
/// `FUSE_WRITE_CACHE`: the write carries page-cache contents (writeback), at their own offset.
const WRITE_CACHE: u32 = 1 << 0;
/// `FUSE_FSYNC_FDATASYNC`.
const FSYNC_FDATASYNC: u32 = 1 << 0;

/// Sizes of the reply structs the kernel checks replies against.
pub const ATTR_SIZE: usize = 88;
pub const ENTRY_OUT_SIZE: usize = 40 + ATTR_SIZE;
pub const ATTR_OUT_SIZE: usize = 16 + ATTR_SIZE;
pub const OPEN_OUT_SIZE: usize = 16;
pub const OUT_HEADER_SIZE: usize = 16;

fn u16_at(b: &[u8], at: usize) -> FsResult<u16> {
    b.get(at..at + 2)
        .and_then(|s| s.try_into().ok())
        .map(u16::from_le_bytes)
        .ok_or(Errno::EINVAL)
}

pub fn u32_at(b: &[u8], at: usize) -> FsResult<u32> {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map(u32::from_le_bytes)
        .ok_or(Errno::EINVAL)
}

fn u64_at(b: &[u8], at: usize) -> FsResult<u64> {
    b.get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .map(u64::from_le_bytes)
        .ok_or(Errno::EINVAL)
}

/// `struct fuse_in_header`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InHeader {
    pub opcode: u32,
    pub unique: u64,
    pub nodeid: u64,
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
    /// Length of extensions after the arguments (security context...), which we never ask for.
    pub total_extlen: u16,
}

impl InHeader {
    pub fn parse(header: &[u8]) -> FsResult<InHeader> {
        let h = &header[IN_OUT_OFFSET..];
        Ok(InHeader {
            opcode: u32_at(h, 4)?,
            unique: u64_at(h, 8)?,
            nodeid: u64_at(h, 16)?,
            uid: u32_at(h, 24)?,
            gid: u32_at(h, 28)?,
            pid: u32_at(h, 32)?,
            total_extlen: u16_at(h, 36)?,
        })
    }
}

/// The entry's commit id and the request's payload length, as the kernel left them.
pub fn ent_in(header: &[u8]) -> FsResult<(u64, usize)> {
    Ok((
        u64_at(header, ENT_COMMIT_ID)?,
        u32_at(header, ENT_PAYLOAD_SZ)? as usize,
    ))
}

/// Writes the reply's `fuse_out_header` and payload length into the header buffer.
pub fn set_reply(header: &mut [u8], unique: u64, error: Option<Errno>, payload_len: usize) {
    let len = OUT_HEADER_SIZE + if error.is_some() { 0 } else { payload_len };
    let err = error.map_or(0, |e| -e.0);
    header[0..4].copy_from_slice(&(len as u32).to_le_bytes());
    header[4..8].copy_from_slice(&err.to_le_bytes());
    header[8..16].copy_from_slice(&unique.to_le_bytes());
    let payload = if error.is_some() { 0 } else { payload_len };
    header[ENT_PAYLOAD_SZ..ENT_PAYLOAD_SZ + 4].copy_from_slice(&(payload as u32).to_le_bytes());
}

/// `struct fuse_uring_cmd_req` in an SQE's command area.
pub fn cmd_req(commit_id: u64, qid: u16) -> [u8; 80] {
    let mut c = [0u8; 80];
    c[8..16].copy_from_slice(&commit_id.to_le_bytes());
    c[16..18].copy_from_slice(&qid.to_le_bytes());
    c
}

/// A time set by SETATTR: given, or the daemon's now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetTime {
    At(SystemTime),
    Now,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Setattr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<SetTime>,
    pub mtime: Option<SetTime>,
}

/// One request, its arguments borrowed from the entry's buffers.
#[derive(Debug, PartialEq, Eq)]
pub enum Op<'a> {
    Lookup {
        name: &'a OsStr,
    },
    Getattr,
    Setattr(Setattr),
    Readlink,
    Symlink {
        name: &'a OsStr,
        target: &'a OsStr,
    },
    Mknod {
        name: &'a OsStr,
        mode: u32,
        rdev: u32,
        umask: u32,
    },
    Mkdir {
        name: &'a OsStr,
        mode: u32,
        umask: u32,
    },
    Unlink {
        name: &'a OsStr,
    },
    Rmdir {
        name: &'a OsStr,
    },
    Rename {
        name: &'a OsStr,
        newdir: u64,
        newname: &'a OsStr,
        flags: u32,
    },
    Link {
        oldnodeid: u64,
        newname: &'a OsStr,
    },
    Open {
        /// The open(2) flags (`struct fuse_open_in`).
        flags: i32,
    },
    Read {
        fh: u64,
        offset: u64,
        size: u32,
    },
    Write {
        fh: u64,
        offset: u64,
        data: &'a [u8],
        kill_suidgid: bool,
        /// The file has O_APPEND at this write (`fuse_write_in.flags`), and it is not
        /// writeback of cached pages.
        append: bool,
    },
    Statfs,
    Release {
        fh: u64,
    },
    Fsync {
        fh: u64,
        datasync: bool,
    },
    Setxattr {
        name: &'a OsStr,
        value: &'a [u8],
        flags: i32,
    },
    Getxattr {
        name: &'a OsStr,
        size: u32,
    },
    Listxattr {
        size: u32,
    },
    Removexattr {
        name: &'a OsStr,
    },
    Flush,
    Opendir,
    Readdir {
        fh: u64,
        offset: u64,
        size: u32,
    },
    Readdirplus {
        fh: u64,
        offset: u64,
        size: u32,
    },
    Releasedir {
        fh: u64,
    },
    Fsyncdir,
    Access,
    Create {
        name: &'a OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
    },
    Ioctl,
    Fallocate {
        fh: u64,
        offset: u64,
        length: u64,
        mode: i32,
    },
    /// An operation we do not implement: ENOSYS, as the /dev/fuse front end answers it.
    Unsupported(u32),
}

/// Splits a NUL-terminated name off the front of `b`.
fn name(b: &[u8]) -> FsResult<(&OsStr, &[u8])> {
    let end = b.iter().position(|&c| c == 0).ok_or(Errno::EINVAL)?;
    Ok((OsStr::from_bytes(&b[..end]), &b[end + 1..]))
}

fn time(secs: u64, nsecs: u32) -> SystemTime {
    let secs = secs as i64;
    let nanos = Duration::from_nanos(u64::from(nsecs.min(999_999_999)));
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs as u64) + nanos
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) + nanos
    }
}

fn set_time(valid: u32, given: u32, now: u32, secs: u64, nsecs: u32) -> Option<SetTime> {
    (valid & given != 0).then(|| {
        if valid & now != 0 {
            SetTime::Now
        } else {
            SetTime::At(time(secs, nsecs))
        }
    })
}

fn parse_setattr(a: &[u8]) -> FsResult<Setattr> {
    let valid = u32_at(a, 0)?;
    let given = |bit: u32| valid & bit != 0;
    Ok(Setattr {
        mode: given(FATTR_MODE).then(|| u32_at(a, 68)).transpose()?,
        uid: given(FATTR_UID).then(|| u32_at(a, 76)).transpose()?,
        gid: given(FATTR_GID).then(|| u32_at(a, 80)).transpose()?,
        size: given(FATTR_SIZE).then(|| u64_at(a, 16)).transpose()?,
        atime: set_time(
            valid,
            FATTR_ATIME,
            FATTR_ATIME_NOW,
            u64_at(a, 32)?,
            u32_at(a, 56)?,
        ),
        mtime: set_time(
            valid,
            FATTR_MTIME,
            FATTR_MTIME_NOW,
            u64_at(a, 40)?,
            u32_at(a, 60)?,
        ),
    })
}

/// Parses a request: `a` is the op header area, `p` the payload the kernel filled.
pub fn parse<'a>(opcode: u32, a: &[u8], p: &'a [u8]) -> FsResult<Op<'a>> {
    use op::*;
    Ok(match opcode {
        LOOKUP => Op::Lookup { name: name(p)?.0 },
        GETATTR => Op::Getattr,
        SETATTR => Op::Setattr(parse_setattr(a)?),
        READLINK => Op::Readlink,
        SYMLINK => {
            let (n, rest) = name(p)?;
            Op::Symlink {
                name: n,
                target: name(rest)?.0,
            }
        }
        MKNOD => Op::Mknod {
            mode: u32_at(a, 0)?,
            rdev: u32_at(a, 4)?,
            umask: u32_at(a, 8)?,
            name: name(p)?.0,
        },
        MKDIR => Op::Mkdir {
            mode: u32_at(a, 0)?,
            umask: u32_at(a, 4)?,
            name: name(p)?.0,
        },
        UNLINK => Op::Unlink { name: name(p)?.0 },
        RMDIR => Op::Rmdir { name: name(p)?.0 },
        RENAME | RENAME2 => {
            let (n, rest) = name(p)?;
            Op::Rename {
                name: n,
                newdir: u64_at(a, 0)?,
                newname: name(rest)?.0,
                flags: if opcode == RENAME2 { u32_at(a, 8)? } else { 0 },
            }
        }
        LINK => Op::Link {
            oldnodeid: u64_at(a, 0)?,
            newname: name(p)?.0,
        },
        OPEN => Op::Open {
            flags: u32_at(a, 0)? as i32,
        },
        OPENDIR => Op::Opendir,
        READ | READDIR | READDIRPLUS => {
            let (fh, offset, size) = (u64_at(a, 0)?, u64_at(a, 8)?, u32_at(a, 16)?);
            match opcode {
                READ => Op::Read { fh, offset, size },
                READDIR => Op::Readdir { fh, offset, size },
                _ => Op::Readdirplus { fh, offset, size },
            }
        }
        WRITE => {
            let size = u32_at(a, 16)? as usize;
            Op::Write {
                fh: u64_at(a, 0)?,
                offset: u64_at(a, 8)?,
                data: p.get(..size).ok_or(Errno::EINVAL)?,
                kill_suidgid: u32_at(a, 20)? & WRITE_KILL_SUIDGID != 0,
                append: u32_at(a, 32)? & libc::O_APPEND as u32 != 0
                    && u32_at(a, 20)? & WRITE_CACHE == 0,
            }
        }
        STATFS => Op::Statfs,
        RELEASE => Op::Release { fh: u64_at(a, 0)? },
        RELEASEDIR => Op::Releasedir { fh: u64_at(a, 0)? },
        FSYNC => Op::Fsync {
            fh: u64_at(a, 0)?,
            datasync: u32_at(a, 8)? & FSYNC_FDATASYNC != 0,
        },
        FSYNCDIR => Op::Fsyncdir,
        SETXATTR => {
            // `fuse_setxattr_in` without FUSE_SETXATTR_EXT, which we do not negotiate.
            let size = u32_at(a, 0)? as usize;
            let (n, rest) = name(p)?;
            Op::Setxattr {
                name: n,
                value: rest.get(..size).ok_or(Errno::EINVAL)?,
                flags: u32_at(a, 4)? as i32,
            }
        }
        GETXATTR => Op::Getxattr {
            size: u32_at(a, 0)?,
            name: name(p)?.0,
        },
        LISTXATTR => Op::Listxattr {
            size: u32_at(a, 0)?,
        },
        REMOVEXATTR => Op::Removexattr { name: name(p)?.0 },
        FLUSH => Op::Flush,
        ACCESS => Op::Access,
        CREATE => Op::Create {
            flags: u32_at(a, 0)? as i32,
            mode: u32_at(a, 4)?,
            umask: u32_at(a, 8)?,
            name: name(p)?.0,
        },
        IOCTL => Op::Ioctl,
        FALLOCATE => Op::Fallocate {
            fh: u64_at(a, 0)?,
            offset: u64_at(a, 8)?,
            length: u64_at(a, 16)?,
            mode: u32_at(a, 24)? as i32,
        },
        other => Op::Unsupported(other),
    })
}

/// A reply being written into the payload buffer; running out of room is ERANGE (the request's
/// size bound) rather than a panic.
pub struct Out<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl<'a> Out<'a> {
    pub fn new(buf: &'a mut [u8]) -> Out<'a> {
        Out { buf, len: 0 }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn bytes(&mut self, b: &[u8]) -> FsResult<()> {
        let end = self.len.checked_add(b.len()).ok_or(Errno::ERANGE)?;
        self.buf
            .get_mut(self.len..end)
            .ok_or(Errno::ERANGE)?
            .copy_from_slice(b);
        self.len = end;
        Ok(())
    }

    /// Lets `f` write into the rest of the buffer; `f` returns how many bytes it wrote.
    pub fn fill(&mut self, f: impl FnOnce(&mut [u8]) -> FsResult<usize>) -> FsResult<()> {
        let rest = self.buf.get_mut(self.len..).ok_or(Errno::ERANGE)?;
        let n = f(rest)?;
        if n > rest.len() {
            return Err(Errno::ERANGE);
        }
        self.len += n;
        Ok(())
    }

    fn u32(&mut self, v: u32) -> FsResult<()> {
        self.bytes(&v.to_le_bytes())
    }

    fn u64(&mut self, v: u64) -> FsResult<()> {
        self.bytes(&v.to_le_bytes())
    }

    /// `struct fuse_attr`.
    pub fn attr(&mut self, a: &FileAttr) -> FsResult<()> {
        let (at, atn) = wire_time(a.atime);
        let (mt, mtn) = wire_time(a.mtime);
        let (ct, ctn) = wire_time(a.ctime);
        for v in [a.ino.0, a.size, a.blocks, at, mt, ct] {
            self.u64(v)?;
        }
        let mode = kind_bits(a.kind) | u32::from(a.perm);
        for v in [
            atn, mtn, ctn, mode, a.nlink, a.uid, a.gid, a.rdev, a.blksize, 0,
        ] {
            self.u32(v)?;
        }
        Ok(())
    }

    /// `struct fuse_entry_out`.
    pub fn entry(&mut self, a: &FileAttr, generation: u64, ttl: Duration) -> FsResult<()> {
        self.u64(a.ino.0)?;
        self.u64(generation)?;
        self.u64(ttl.as_secs())?;
        self.u64(ttl.as_secs())?;
        self.u32(ttl.subsec_nanos())?;
        self.u32(ttl.subsec_nanos())?;
        self.attr(a)
    }

    /// `struct fuse_attr_out`.
    pub fn attr_out(&mut self, a: &FileAttr, ttl: Duration) -> FsResult<()> {
        self.u64(ttl.as_secs())?;
        self.u32(ttl.subsec_nanos())?;
        self.u32(0)?;
        self.attr(a)
    }

    /// `struct fuse_open_out`: the handle and the FOPEN_* flags.
    pub fn open_out(&mut self, fh: u64, open_flags: u32) -> FsResult<()> {
        self.u64(fh)?;
        self.u32(open_flags)?;
        self.u32(0)
    }

    /// `struct fuse_write_out`.
    pub fn write_out(&mut self, size: u32) -> FsResult<()> {
        self.u32(size)?;
        self.u32(0)
    }

    /// `struct fuse_getxattr_out`: the size a GETXATTR/LISTXATTR of size 0 asks for.
    pub fn xattr_size(&mut self, size: u32) -> FsResult<()> {
        self.u32(size)?;
        self.u32(0)
    }

    /// `struct fuse_statfs_out`.
    pub fn statfs(&mut self, s: &StatfsOut) -> FsResult<()> {
        for v in [s.blocks, s.bfree, s.bavail, s.files, s.ffree] {
            self.u64(v)?;
        }
        for v in [s.bsize, s.namelen, s.frsize] {
            self.u32(v)?;
        }
        self.bytes(&[0u8; 28])
    }

    /// Appends a `struct fuse_dirent` if it fits in `limit` bytes of reply; false when full.
    pub fn dirent(
        &mut self,
        limit: usize,
        ino: u64,
        off: u64,
        kind: FileType,
        name: &OsStr,
    ) -> FsResult<bool> {
        let n = name.as_bytes();
        let size = dirent_size(n.len());
        if self.len + size > limit {
            return Ok(false);
        }
        self.u64(ino)?;
        self.u64(off)?;
        self.u32(n.len() as u32)?;
        self.u32(kind_bits(kind) >> 12)?;
        self.bytes(n)?;
        self.bytes(&[0u8; 7][..size - 24 - n.len()])?;
        Ok(true)
    }

    /// Appends a `struct fuse_direntplus` if it fits in `limit` bytes; false when full.
    #[allow(clippy::too_many_arguments)]
    pub fn direntplus(
        &mut self,
        limit: usize,
        off: u64,
        name: &OsStr,
        attr: &FileAttr,
        generation: u64,
        ttl: Duration,
    ) -> FsResult<bool> {
        if self.len + ENTRY_OUT_SIZE + dirent_size(name.len()) > limit {
            return Ok(false);
        }
        self.entry(attr, generation, ttl)?;
        self.dirent(usize::MAX, attr.ino.0, off, attr.kind, name)
    }
}

/// `FUSE_DIRENT_SIZE`: 24 bytes of header, the name, padded to 8.
pub fn dirent_size(namelen: usize) -> usize {
    (24 + namelen + 7) & !7
}

/// The `fuse_kstatfs` fields.
#[derive(Debug, Clone, Copy, Default)]
pub struct StatfsOut {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
    pub frsize: u32,
}

fn kind_bits(kind: FileType) -> u32 {
    match kind {
        FileType::NamedPipe => libc::S_IFIFO,
        FileType::CharDevice => libc::S_IFCHR,
        FileType::BlockDevice => libc::S_IFBLK,
        FileType::Directory => libc::S_IFDIR,
        FileType::RegularFile => libc::S_IFREG,
        FileType::Symlink => libc::S_IFLNK,
        FileType::Socket => libc::S_IFSOCK,
    }
}

/// Seconds (two's complement before 1970) and nanoseconds.
fn wire_time(t: SystemTime) -> (u64, u32) {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs().min(i64::MAX as u64), d.subsec_nanos()),
        Err(e) => {
            let d = e.duration();
            // -1.25 s is -2 s + 0.75 s.
            let (secs, nanos) = if d.subsec_nanos() == 0 {
                (d.as_secs() as i64, 0)
            } else {
                (d.as_secs() as i64 + 1, 1_000_000_000 - d.subsec_nanos())
            };
            ((-secs) as u64, nanos)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn le(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    fn attr() -> FileAttr {
        FileAttr {
            ino: fuser::INodeNo(7),
            size: 5000,
            blocks: 16,
            atime: UNIX_EPOCH + Duration::new(10, 1),
            mtime: UNIX_EPOCH + Duration::new(20, 2),
            ctime: UNIX_EPOCH - Duration::new(1, 250_000_000),
            crtime: UNIX_EPOCH,
            kind: FileType::RegularFile,
            perm: 0o640,
            nlink: 2,
            uid: 1000,
            gid: 100,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    #[test]
    fn in_header_and_entry_fields_sit_where_the_kernel_puts_them() {
        let mut h = vec![0u8; RING_HEADER_SIZE];
        let fields = le(&[
            &40u32.to_le_bytes(),
            &op::LOOKUP.to_le_bytes(),
            &99u64.to_le_bytes(),
            &1u64.to_le_bytes(),
            &1000u32.to_le_bytes(),
            &100u32.to_le_bytes(),
            &4242u32.to_le_bytes(),
            &0u16.to_le_bytes(),
        ]);
        h[..fields.len()].copy_from_slice(&fields);
        h[ENT_OFFSET + 8..ENT_OFFSET + 16].copy_from_slice(&99u64.to_le_bytes());
        h[ENT_OFFSET + 16..ENT_OFFSET + 20].copy_from_slice(&6u32.to_le_bytes());
        let ih = InHeader::parse(&h).expect("header");
        assert_eq!(
            ih,
            InHeader {
                opcode: op::LOOKUP,
                unique: 99,
                nodeid: 1,
                uid: 1000,
                gid: 100,
                pid: 4242,
                total_extlen: 0
            }
        );
        assert_eq!(ent_in(&h).expect("ent"), (99, 6));

        set_reply(&mut h, 99, None, 128);
        assert_eq!(&h[0..4], &(16u32 + 128).to_le_bytes());
        assert_eq!(&h[4..8], &0i32.to_le_bytes());
        assert_eq!(&h[8..16], &99u64.to_le_bytes());
        assert_eq!(&h[ENT_OFFSET + 16..ENT_OFFSET + 20], &128u32.to_le_bytes());
        set_reply(&mut h, 99, Some(Errno::ENOENT), 128);
        assert_eq!(&h[4..8], &(-libc::ENOENT).to_le_bytes());
        assert_eq!(&h[ENT_OFFSET + 16..ENT_OFFSET + 20], &0u32.to_le_bytes());

        let c = cmd_req(0x1122, 3);
        assert_eq!(&c[0..8], &[0; 8]);
        assert_eq!(&c[8..16], &0x1122u64.to_le_bytes());
        assert_eq!(&c[16..18], &3u16.to_le_bytes());
    }

    #[test]
    fn parses_names_and_op_headers() {
        let none = [0u8; OP_IN_SIZE];
        assert_eq!(
            parse(op::LOOKUP, &none, b"a.txt\0").expect("lookup"),
            Op::Lookup {
                name: OsStr::new("a.txt")
            }
        );
        assert_eq!(
            parse(op::SYMLINK, &none, b"ln\0/tmp/target\0").expect("symlink"),
            Op::Symlink {
                name: OsStr::new("ln"),
                target: OsStr::new("/tmp/target")
            }
        );
        let mut a = [0u8; OP_IN_SIZE];
        a[0..4].copy_from_slice(&(libc::O_RDWR as u32).to_le_bytes());
        assert_eq!(
            parse(op::OPEN, &a, b"").expect("open"),
            Op::Open {
                flags: libc::O_RDWR
            }
        );
        a[0..8].copy_from_slice(&5u64.to_le_bytes());
        a[8..12].copy_from_slice(&1u32.to_le_bytes());
        assert_eq!(
            parse(op::RENAME2, &a, b"old\0new\0").expect("rename2"),
            Op::Rename {
                name: OsStr::new("old"),
                newdir: 5,
                newname: OsStr::new("new"),
                flags: 1
            }
        );
        assert_eq!(
            parse(op::RENAME, &a, b"old\0new\0").expect("rename"),
            Op::Rename {
                name: OsStr::new("old"),
                newdir: 5,
                newname: OsStr::new("new"),
                flags: 0
            }
        );
        // write: fh, offset, size, write_flags; data from the payload, cut at size.
        let mut w = [0u8; OP_IN_SIZE];
        w[0..8].copy_from_slice(&3u64.to_le_bytes());
        w[8..16].copy_from_slice(&8192u64.to_le_bytes());
        w[16..20].copy_from_slice(&4u32.to_le_bytes());
        w[20..24].copy_from_slice(&WRITE_KILL_SUIDGID.to_le_bytes());
        assert_eq!(
            parse(op::WRITE, &w, b"datamore").expect("write"),
            Op::Write {
                fh: 3,
                offset: 8192,
                data: b"data",
                kill_suidgid: true,
                append: false
            }
        );
        // The file's flags at the write (offset 32): O_APPEND counts unless it is writeback.
        w[32..36].copy_from_slice(&(libc::O_APPEND as u32 | libc::O_WRONLY as u32).to_le_bytes());
        let appends = |w: &[u8]| match parse(op::WRITE, w, b"data") {
            Ok(Op::Write { append, .. }) => append,
            other => panic!("{other:?}"),
        };
        assert!(appends(&w));
        w[20..24].copy_from_slice(&(WRITE_KILL_SUIDGID | WRITE_CACHE).to_le_bytes());
        assert!(!appends(&w));
        w[20..24].copy_from_slice(&0u32.to_le_bytes());
        w[32..36].copy_from_slice(&(libc::O_WRONLY as u32).to_le_bytes());
        assert!(!appends(&w));
        // setxattr: size, flags; name then value.
        let mut x = [0u8; OP_IN_SIZE];
        x[0..4].copy_from_slice(&3u32.to_le_bytes());
        x[4..8].copy_from_slice(&(libc::XATTR_CREATE as u32).to_le_bytes());
        assert_eq!(
            parse(op::SETXATTR, &x, b"user.a\0v\0w").expect("setxattr"),
            Op::Setxattr {
                name: OsStr::new("user.a"),
                value: b"v\0w",
                flags: libc::XATTR_CREATE
            }
        );
        let mut c = [0u8; OP_IN_SIZE];
        c[0..4].copy_from_slice(&((libc::O_CREAT | libc::O_EXCL) as u32).to_le_bytes());
        c[4..8].copy_from_slice(&0o100644u32.to_le_bytes());
        c[8..12].copy_from_slice(&0o022u32.to_le_bytes());
        assert_eq!(
            parse(op::CREATE, &c, b"f\0").expect("create"),
            Op::Create {
                name: OsStr::new("f"),
                mode: 0o100644,
                umask: 0o022,
                flags: libc::O_CREAT | libc::O_EXCL
            }
        );
        assert_eq!(parse(op::STATFS, &none, b"").expect("statfs"), Op::Statfs);
        assert_eq!(parse(53, &none, b"").expect("other"), Op::Unsupported(53));
    }

    #[test]
    fn malformed_requests_are_einval_not_panics() {
        let none = [0u8; OP_IN_SIZE];
        assert_eq!(parse(op::LOOKUP, &none, b"no-nul"), Err(Errno::EINVAL));
        assert_eq!(parse(op::SYMLINK, &none, b"only\0"), Err(Errno::EINVAL));
        let mut w = [0u8; OP_IN_SIZE];
        w[16..20].copy_from_slice(&100u32.to_le_bytes());
        assert_eq!(parse(op::WRITE, &w, b"short"), Err(Errno::EINVAL));
        let mut x = [0u8; OP_IN_SIZE];
        x[0..4].copy_from_slice(&9u32.to_le_bytes());
        assert_eq!(parse(op::SETXATTR, &x, b"n\0v"), Err(Errno::EINVAL));
        assert_eq!(parse(op::GETATTR, &none[..2], b""), Ok(Op::Getattr));
        assert_eq!(parse(op::READ, &none[..8], b""), Err(Errno::EINVAL));
    }

    #[test]
    fn setattr_takes_only_the_fields_marked_valid() {
        let mut a = [0u8; OP_IN_SIZE];
        let valid = FATTR_MODE | FATTR_SIZE | FATTR_ATIME | FATTR_ATIME_NOW | FATTR_MTIME;
        a[0..4].copy_from_slice(&valid.to_le_bytes());
        a[16..24].copy_from_slice(&77u64.to_le_bytes());
        a[40..48].copy_from_slice(&((-2i64) as u64).to_le_bytes());
        a[60..64].copy_from_slice(&500_000_000u32.to_le_bytes());
        a[68..72].copy_from_slice(&0o100600u32.to_le_bytes());
        a[76..80].copy_from_slice(&55u32.to_le_bytes());
        assert_eq!(
            parse(op::SETATTR, &a, b"").expect("setattr"),
            Op::Setattr(Setattr {
                mode: Some(0o100600),
                uid: None,
                gid: None,
                size: Some(77),
                atime: Some(SetTime::Now),
                mtime: Some(SetTime::At(UNIX_EPOCH - Duration::from_millis(1500))),
            })
        );
    }

    #[test]
    fn replies_have_the_kernel_sizes_and_layout() {
        let mut buf = vec![0u8; 4096];
        let mut o = Out::new(&mut buf);
        o.entry(&attr(), 3, Duration::new(1, 5)).expect("entry");
        assert_eq!(o.len(), ENTRY_OUT_SIZE);
        o.open_out(9, 1).expect("open");
        assert_eq!(o.len(), ENTRY_OUT_SIZE + OPEN_OUT_SIZE);
        // fuse_open_out after the entry: fh, open_flags, padding.
        assert_eq!(
            &buf[ENTRY_OUT_SIZE..ENTRY_OUT_SIZE + 8],
            &9u64.to_le_bytes()
        );
        assert_eq!(
            &buf[ENTRY_OUT_SIZE + 8..ENTRY_OUT_SIZE + 12],
            &1u32.to_le_bytes()
        );
        // fuse_entry_out: nodeid, generation, entry_valid, attr_valid, their nsecs, then attr.
        assert_eq!(&buf[0..8], &7u64.to_le_bytes());
        assert_eq!(&buf[8..16], &3u64.to_le_bytes());
        assert_eq!(&buf[16..24], &1u64.to_le_bytes());
        assert_eq!(&buf[32..36], &5u32.to_le_bytes());
        let attr_at = 40;
        assert_eq!(&buf[attr_at + 8..attr_at + 16], &5000u64.to_le_bytes());
        // ctime -1.25 s: -2 s and 750 ms.
        assert_eq!(
            &buf[attr_at + 40..attr_at + 48],
            &(-2i64 as u64).to_le_bytes()
        );
        assert_eq!(
            &buf[attr_at + 56..attr_at + 60],
            &750_000_000u32.to_le_bytes()
        );
        assert_eq!(
            &buf[attr_at + 60..attr_at + 64],
            &(libc::S_IFREG | 0o640).to_le_bytes()
        );
        assert_eq!(&buf[attr_at + 80..attr_at + 84], &4096u32.to_le_bytes());
        assert_eq!(&buf[128..136], &9u64.to_le_bytes());

        let mut buf = vec![0u8; 4096];
        let mut o = Out::new(&mut buf);
        o.attr_out(&attr(), Duration::from_secs(1)).expect("attr");
        assert_eq!(o.len(), ATTR_OUT_SIZE);
        let mut o = Out::new(&mut buf);
        o.statfs(&StatfsOut::default()).expect("statfs");
        assert_eq!(o.len(), 80);
    }

    #[test]
    fn dirents_are_padded_and_stop_at_the_limit() {
        assert_eq!(dirent_size(1), 32);
        assert_eq!(dirent_size(8), 32);
        assert_eq!(dirent_size(9), 40);
        let mut buf = vec![0xffu8; 4096];
        let mut o = Out::new(&mut buf);
        assert!(
            o.dirent(64, 5, 1, FileType::Directory, OsStr::new("abc"))
                .expect("fits")
        );
        assert!(
            o.dirent(64, 6, 2, FileType::RegularFile, OsStr::new("d"))
                .expect("fits")
        );
        assert!(
            !o.dirent(64, 7, 3, FileType::RegularFile, OsStr::new("e"))
                .expect("full")
        );
        assert_eq!(o.len(), 64);
        assert_eq!(&buf[16..20], &3u32.to_le_bytes());
        assert_eq!(&buf[20..24], &(libc::DT_DIR as u32).to_le_bytes());
        assert_eq!(&buf[24..32], b"abc\0\0\0\0\0");
        assert_eq!(&buf[52..56], &(libc::DT_REG as u32).to_le_bytes());

        let mut o = Out::new(&mut buf);
        assert!(
            !o.direntplus(100, 1, OsStr::new("x"), &attr(), 0, Duration::ZERO)
                .expect("full")
        );
        assert!(
            o.direntplus(200, 1, OsStr::new("x"), &attr(), 0, Duration::ZERO)
                .expect("fits")
        );
        assert_eq!(o.len(), ENTRY_OUT_SIZE + 32);
    }

    #[test]
    fn a_full_buffer_is_erange() {
        let mut buf = [0u8; 10];
        let mut o = Out::new(&mut buf);
        assert!(o.bytes(&[1; 10]).is_ok());
        assert_eq!(o.bytes(&[1]), Err(Errno::ERANGE));
        let mut o = Out::new(&mut buf);
        // A reply that does not fit fails as a whole (its partial bytes are never sent).
        assert_eq!(o.open_out(1, 0), Err(Errno::ERANGE));
    }
}
