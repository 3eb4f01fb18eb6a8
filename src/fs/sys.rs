//! The few system calls std and nix do not wrap with the flags we need: renameat2 and xattrs.

use crate::fs::errno::{Errno, FsResult};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

fn cpath(p: &Path) -> FsResult<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)
}

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

/// rename(2) with RENAME_NOREPLACE / RENAME_EXCHANGE flags.
pub fn rename2(from: &Path, to: &Path, flags: u32) -> FsResult<()> {
    let (f, t) = (cpath(from)?, cpath(to)?);
    // SAFETY: both paths are valid NUL-terminated strings for the duration of the call.
    check(unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            f.as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            flags,
        )
    })
}

pub fn setxattr(p: &Path, name: &[u8], value: &[u8], flags: i32) -> FsResult<()> {
    let (p, n) = (cpath(p)?, cname(name)?);
    // SAFETY: valid C strings and a valid buffer of value.len() bytes.
    check(unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    })
}

pub fn getxattr(p: &Path, name: &[u8]) -> FsResult<Vec<u8>> {
    let (p, n) = (cpath(p)?, cname(name)?);
    loop {
        // SAFETY: a size query with a null buffer, then a read into a buffer of that size.
        let size =
            check_len(unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), std::ptr::null_mut(), 0) })?;
        let mut buf = vec![0u8; size];
        match check_len(unsafe {
            libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
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

pub fn listxattr(p: &Path) -> FsResult<Vec<Vec<u8>>> {
    let p = cpath(p)?;
    loop {
        // SAFETY: as in getxattr.
        let size = check_len(unsafe { libc::llistxattr(p.as_ptr(), std::ptr::null_mut(), 0) })?;
        let mut buf = vec![0u8; size];
        match check_len(unsafe { libc::llistxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) })
        {
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

pub fn removexattr(p: &Path, name: &[u8]) -> FsResult<()> {
    let (p, n) = (cpath(p)?, cname(name)?);
    // SAFETY: valid C strings.
    check(unsafe { libc::lremovexattr(p.as_ptr(), n.as_ptr()) })
}

pub fn fallocate(f: &std::fs::File, mode: i32, offset: u64, len: u64) -> FsResult<()> {
    use std::os::fd::AsRawFd;
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
