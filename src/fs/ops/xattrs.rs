//! Extended attributes: `user.*` values encrypted under the inode's xattr key, names in the
//! clear; the reserved `user.kmsfs.*` names go to `control`.

use super::*;

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

/// An xattr's name and decrypted value.
type Xattr = (Vec<u8>, zeroize::Zeroizing<Vec<u8>>);

/// The decrypted `user.*` xattrs of an open file.
pub(super) fn open_xattrs(c: &FileContent) -> FsResult<Vec<Xattr>> {
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

impl KmsFs {
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

    /// The key and id that protect an inode's xattr values: a file's data key (from its open
    /// state if it is open, else unwrapped from its header), or a directory's.
    fn xattr_key_for(
        &self,
        ino: u64,
        f: &File,
        st: &FileStat,
        r: Requester,
    ) -> FsResult<(crate::cryptocore::SecretKey, [u8; 16])> {
        let open = self.open_state(ino);
        if let Some(of) = open {
            self.check_content(&of, r)?;
            let c = of.content.read().map_err(|_| Errno::EIO)?;
            return Ok((c.xattr_key()?.clone(), c.id));
        }
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
            // A reencrypt writes a whole copy of the file.
            self.reaper.settle();
            return self.control_set(ino, name, value, r);
        }
        self.reaper.settle_for(value.len() as u64);
        Self::check_xattr_name(name)?;
        let open = self.open_state(ino);
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
