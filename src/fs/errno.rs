//! Errors of filesystem operations, as errno values, and how KMS errors map onto them.

use crate::error::{ErrorKind, KmsError};

/// An errno value (positive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Errno(pub i32);

pub type FsResult<T> = Result<T, Errno>;

impl Errno {
    pub const EIO: Errno = Errno(libc::EIO);
    pub const EACCES: Errno = Errno(libc::EACCES);
    pub const ENOENT: Errno = Errno(libc::ENOENT);
    pub const EINVAL: Errno = Errno(libc::EINVAL);
    pub const ENAMETOOLONG: Errno = Errno(libc::ENAMETOOLONG);
    pub const EEXIST: Errno = Errno(libc::EEXIST);
    pub const ENOTSUP: Errno = Errno(libc::EOPNOTSUPP);
    pub const EFBIG: Errno = Errno(libc::EFBIG);
    pub const EROFS: Errno = Errno(libc::EROFS);
    pub const EBADF: Errno = Errno(libc::EBADF);
    pub const ENODATA: Errno = Errno(libc::ENODATA);
    pub const ERANGE: Errno = Errno(libc::ERANGE);
    pub const EPERM: Errno = Errno(libc::EPERM);
    pub const ENOTEMPTY: Errno = Errno(libc::ENOTEMPTY);
}

impl From<std::io::Error> for Errno {
    fn from(e: std::io::Error) -> Self {
        Errno(e.raw_os_error().unwrap_or(libc::EIO))
    }
}

impl From<nix::errno::Errno> for Errno {
    fn from(e: nix::errno::Errno) -> Self {
        Errno(e as i32)
    }
}

/// A key that may not be used (disabled, pending deletion, denied by policy, deleted) is EACCES:
/// the caller lacks permission to the data, which is what programs expect to report. Anything
/// that says the stored bytes are wrong is EIO.
/// A header naming a key the store never had is damage (or the wrong key store): EIO.
pub fn from_kms(e: &KmsError) -> Errno {
    match e.kind {
        ErrorKind::Disabled | ErrorKind::KmsInvalidState | ErrorKind::AccessDenied => Errno::EACCES,
        ErrorKind::NotFound if e.is_deleted_key() => Errno::EACCES,
        _ => Errno::EIO,
    }
}
