//! The few system calls std and nix do not wrap (xattrs on descriptors, fallocate, the calling
//! thread's scheduling policy and CPU mask), and which filesystem a descriptor is on.

use crate::fs::errno::{Errno, FsResult};
use std::ffi::CString;
use std::os::fd::AsRawFd;

fn cname(n: &[u8]) -> FsResult<CString> {
    CString::new(n).map_err(|_| Errno::EINVAL)
}

fn check(rc: libc::c_int) -> FsResult<()> {
    if rc < 0 {
        Err(std::io::Error::last_os_error().into())
    } else {
        Ok(())
    }
}

fn check_len(rc: libc::ssize_t) -> FsResult<usize> {
    if rc < 0 {
        Err(std::io::Error::last_os_error().into())
    } else {
        Ok(rc as usize)
    }
}

pub fn fsetxattr(f: &std::fs::File, name: &[u8], value: &[u8], flags: i32) -> FsResult<()> {
    let n = cname(name)?;
    // SAFETY: an owned descriptor, a valid C string and a buffer of value.len() bytes.
    check(unsafe {
        libc::fsetxattr(
            f.as_raw_fd(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    })
}

/// Sets an xattr by path without following a final symlink (no open: no OPEN/RELEASE round
/// trips on a FUSE mount).
pub fn lsetxattr(path: &std::path::Path, name: &[u8], value: &[u8]) -> FsResult<()> {
    use std::os::unix::ffi::OsStrExt;
    let p = cname(path.as_os_str().as_bytes())?;
    let n = cname(name)?;
    // SAFETY: valid C strings and a buffer of value.len() bytes.
    check(unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    })
}

pub fn fgetxattr(f: &std::fs::File, name: &[u8]) -> FsResult<Vec<u8>> {
    let n = cname(name)?;
    loop {
        // SAFETY: a size query with a null buffer, then a read into a buffer of that size.
        let size = check_len(unsafe {
            libc::fgetxattr(f.as_raw_fd(), n.as_ptr(), std::ptr::null_mut(), 0)
        })?;
        let mut buf = vec![0u8; size];
        match check_len(unsafe {
            libc::fgetxattr(
                f.as_raw_fd(),
                n.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        }) {
            Ok(len) => {
                buf.truncate(len);
                return Ok(buf);
            }
            Err(e) if e.0 == libc::ERANGE => continue, // it grew in between
            Err(e) => return Err(e),
        }
    }
}

pub fn flistxattr(f: &std::fs::File) -> FsResult<Vec<Vec<u8>>> {
    loop {
        // SAFETY: as in fgetxattr.
        let size = check_len(unsafe { libc::flistxattr(f.as_raw_fd(), std::ptr::null_mut(), 0) })?;
        let mut buf = vec![0u8; size];
        match check_len(unsafe {
            libc::flistxattr(f.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len())
        }) {
            Ok(len) => {
                buf.truncate(len);
                return Ok(buf
                    .split(|b| *b == 0)
                    .filter(|n| !n.is_empty())
                    .map(<[u8]>::to_vec)
                    .collect());
            }
            Err(e) if e.0 == libc::ERANGE => continue,
            Err(e) => return Err(e),
        }
    }
}

pub fn fremovexattr(f: &std::fs::File, name: &[u8]) -> FsResult<()> {
    let n = cname(name)?;
    // SAFETY: an owned descriptor and a valid C string.
    check(unsafe { libc::fremovexattr(f.as_raw_fd(), n.as_ptr()) })
}

pub fn fallocate(f: &std::fs::File, mode: i32, offset: u64, len: u64) -> FsResult<()> {
    // SAFETY: a file descriptor we own, and plain integers.
    check(unsafe {
        libc::fallocate(
            f.as_raw_fd(),
            mode,
            offset as libc::off_t,
            len as libc::off_t,
        )
    })
}

/// Sets the calling thread's scheduling policy (SCHED_IDLE or SCHED_OTHER, priority 0).
pub fn set_sched_policy(policy: libc::c_int) -> std::io::Result<()> {
    let p = libc::sched_param { sched_priority: 0 };
    // SAFETY: sets this thread's own policy; sched_param outlives the call.
    if unsafe { libc::sched_setscheduler(0, policy, &p) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Lets the calling thread run on CPU `cpu` only.
pub fn pin_thread(cpu: usize) -> std::io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET writes within it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Lets the calling thread run on every CPU the process's main thread may (a thread inherits
/// the mask of the thread that started it, which may be pinned to one CPU).
pub fn unpin_thread() {
    // SAFETY: a zeroed cpu_set_t is a valid (empty) set, filled by the kernel from the main
    // thread's mask; then applied to this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        let size = std::mem::size_of::<libc::cpu_set_t>();
        if libc::sched_getaffinity(libc::getpid(), size, &mut set) == 0 {
            let _ = libc::sched_setaffinity(0, size, &set);
        }
    }
}

/// Local filesystems, as statfs names them: ext2/3/4, XFS, Btrfs, F2FS, tmpfs, ZFS.
const LOCAL_FILESYSTEMS: [u32; 6] = [
    0xEF53,
    0x5846_5342,
    0x9123_683E,
    0xF2F5_2010,
    0x0102_1994,
    0x2FC1_2FC1,
];

/// Whether `f` is on one of the local filesystems of `LOCAL_FILESYSTEMS`.
pub fn on_local_fs(f: &std::fs::File) -> nix::Result<bool> {
    let kind = nix::sys::statfs::fstatfs(f)?.filesystem_type().0;
    Ok(LOCAL_FILESYSTEMS.contains(&(kind as u32)))
}
