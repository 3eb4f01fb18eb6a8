//! Entries made, renamed and removed: create, mknod, mkdir, symlink (and readlink), link,
//! unlink, rmdir, rename; each name encrypted, with a side file where it is too long.

use super::*;

impl KmsFs {
    /// Creates and opens a regular file.
    pub fn create(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        req: Requester,
        flags: i32,
    ) -> FsResult<(Entry, Opened)> {
        self.reaper.settle_for(0);
        let excl = flags & libc::O_EXCL != 0;
        let (dir, bn) = self.child(parent, name, req)?;
        let entry_name = OsStr::new(bn.entry());
        let (uid, gid, _) = self.owner_for(&dir, req)?;
        self.write_side_file(&dir, &bn)?;
        let fd = match openat(
            &dir,
            entry_name,
            OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(mode & 0o7777),
        ) {
            Ok(fd) => fd,
            Err(nix::errno::Errno::EEXIST) if !excl => {
                // The kernel asked to create what another client made meanwhile: open it.
                let entry = self.register_at(parent, &dir, &bn)?;
                let opened = self.open(entry.attr.ino.0, flags, req)?;
                return Ok((entry, opened));
            }
            Err(e) => {
                if e != nix::errno::Errno::EEXIST {
                    self.remove_side_file(&dir, &bn);
                }
                return Err(e.into());
            }
        };
        let file = File::from(fd);
        let label = format!("{}/{}", self.label(parent), bn.entry());
        let made = (|| {
            let key = self.key_for_new(parent, req)?;
            let content = self.fresh_content(&file, label, &key, req)?;
            self.chown(&dir, entry_name, uid, gid)?;
            Ok::<_, Errno>(content)
        })();
        let content = match made {
            Ok(c) => c,
            Err(e) => {
                let _ = unlink_at(&dir, entry_name);
                self.remove_side_file(&dir, &bn);
                return Err(e);
            }
        };
        let entry = self.register(parent, &bn, &nix::sys::stat::fstat(&file)?);
        let ino = entry.attr.ino.0;
        let of = OpenFile::new(content, ino, 1);
        lock(&self.files).insert(ino, of.clone());
        lock(&self.inodes).mark_cached(ino);
        Ok((entry, self.file_handle(of, flags, false)))
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
            let (entry, opened) = self.create(parent, name, mode, req, libc::O_EXCL)?;
            self.release(opened.fh);
            return Ok(entry);
        }
        self.reaper.settle_for(0);
        let (dir, bn) = self.child(parent, name, req)?;
        let entry_name = OsStr::new(bn.entry());
        let (uid, gid, _) = self.owner_for(&dir, req)?;
        self.write_side_file(&dir, &bn)?;
        let made = nix::sys::stat::mknodat(
            &dir,
            entry_name,
            nix::sys::stat::SFlag::from_bits_truncate(kind),
            Mode::from_bits_truncate(mode & 0o7777),
            u64::from(rdev),
        )
        .map_err(Errno::from)
        .and_then(|_| self.chown(&dir, entry_name, uid, gid));
        self.finish_new(parent, &dir, &bn, made)
    }

    /// After creating a non-regular entry: undo it if that failed part-way (an entry that
    /// existed already is left alone), else count the lookup.
    fn finish_new(
        &self,
        parent: u64,
        dir: &OwnedFd,
        bn: &BackingName,
        made: FsResult<()>,
    ) -> FsResult<Entry> {
        if let Err(e) = made {
            if e != Errno::EEXIST {
                let _ = unlink_at(dir, OsStr::new(bn.entry()));
                self.remove_side_file(dir, bn);
            }
            return Err(e);
        }
        self.register_at(parent, dir, bn)
    }

    pub fn mkdir(&self, parent: u64, name: &OsStr, mode: u32, req: Requester) -> FsResult<Entry> {
        self.reaper.settle_for(0);
        let (dir, bn) = self.child(parent, name, req)?;
        let entry_name = OsStr::new(bn.entry());
        let (uid, gid, setgid) = self.owner_for(&dir, req)?;
        self.write_side_file(&dir, &bn)?;
        // Private until the key file is in place, then the requested mode.
        if let Err(e) = nix::sys::stat::mkdirat(&dir, entry_name, Mode::from_bits_truncate(0o700)) {
            if e != nix::errno::Errno::EEXIST {
                self.remove_side_file(&dir, &bn);
            }
            return Err(e.into());
        }
        let made = (|| {
            let key = self.key_for_new(parent, req)?;
            let (h, _) = self.keys.new_header(Kind::DirKey, &key, req)?;
            let sub = open_listable_dir(&dir, entry_name)?;
            // Synced below the record of its key's generation.
            self.flush_audit()?;
            atomic::write_new_at(&sub, DIRKEY_FILE, &h)?;
            // Through the new directory's own descriptor: nothing can swap a symlink in.
            if self.is_root {
                nix::unistd::fchown(
                    &sub,
                    Some(nix::unistd::Uid::from_raw(uid)),
                    Some(nix::unistd::Gid::from_raw(gid)),
                )?;
            }
            let mut m = mode & 0o7777;
            if setgid {
                m |= libc::S_ISGID;
            }
            nix::sys::stat::fchmod(&sub, Mode::from_bits_truncate(m))?;
            Ok::<_, Errno>(())
        })();
        if let Err(e) = made {
            if let Ok(sub) = open_dir_at(&dir, entry_name) {
                let _ = unlink_at(&sub, OsStr::new(DIRKEY_FILE));
            }
            let _ = nix::unistd::unlinkat(&dir, entry_name, UnlinkatFlags::RemoveDir);
            self.remove_side_file(&dir, &bn);
            return Err(e);
        }
        self.register_at(parent, &dir, &bn)
    }

    pub fn symlink(
        &self,
        parent: u64,
        name: &OsStr,
        target: &Path,
        req: Requester,
    ) -> FsResult<Entry> {
        self.reaper.settle_for(0);
        let (dir, bn) = self.child(parent, name, req)?;
        let entry_name = OsStr::new(bn.entry());
        let (uid, gid, _) = self.owner_for(&dir, req)?;
        let stored = cipherdir::encrypt_symlink(&self.volume.keys, target.as_os_str().as_bytes())
            .map_err(|_| Errno::EIO)?;
        if stored.len() >= libc::PATH_MAX as usize {
            return Err(Errno::ENAMETOOLONG);
        }
        self.write_side_file(&dir, &bn)?;
        let made = nix::unistd::symlinkat(stored.as_str(), &dir, entry_name)
            .map_err(Errno::from)
            .and_then(|_| self.chown(&dir, entry_name, uid, gid));
        self.finish_new(parent, &dir, &bn, made)
    }

    pub fn readlink(&self, ino: u64, r: Requester) -> FsResult<Vec<u8>> {
        let v = &self.volume.config;
        let cmk = lock(&self.volume_cmk).clone();
        self.keys.authorize_ctx(
            r,
            Some(cmk.as_str()),
            || cipherdir::volume_context(&v.volume_id),
            *v.volume_id.as_bytes(),
        )?;
        let a = self.at(ino)?;
        let stored = nix::fcntl::readlinkat(&a.dir, &*a.name)?;
        cipherdir::decrypt_symlink(&self.volume.keys, stored.as_bytes())
            .map(|t| t.to_vec())
            .ok_or_else(|| {
                log::error!("{}: symlink target failed authentication", self.label(ino));
                Errno::EIO
            })
    }

    pub fn unlink(&self, parent: u64, name: &OsStr, req: Requester) -> FsResult<()> {
        let (dir, bn) = self.child(parent, name, req)?;
        let entry_name = OsStr::new(bn.entry());
        // The usual file, with one name when looked up, needs no stat to tell that its inode
        // goes with it (a directory is refused by unlinkat itself, EISDIR).
        let gone = if lock(&self.inodes).only_name(parent, entry_name) {
            true
        } else {
            let st = stat_at(&dir, entry_name)?;
            if is_dir(&st) {
                return Err(Errno(libc::EISDIR));
            }
            st.st_nlink <= 1
        };
        // Held open across the unlink, the file is freed when the reaper closes it.
        let held = if gone {
            self.reaper.hold(&dir, entry_name)
        } else {
            None
        };
        unlink_at(&dir, entry_name)?;
        if let Some(fd) = held {
            self.reaper.release(fd);
        }
        self.remove_side_file(&dir, &bn);
        lock(&self.inodes).unlink(parent, entry_name, gone);
        Ok(())
    }

    /// Removes an (encrypted-)empty directory's key file so the backing directory can go,
    /// returning the key file's bytes to put back if that fails.
    fn strip_dirkey(dir: &OwnedFd, name: &OsStr) -> FsResult<(OwnedFd, Vec<u8>)> {
        let sub = open_listable_dir(dir, name)?;
        let mut d = nix::dir::Dir::from_fd(sub.try_clone()?)?;
        for e in d.iter() {
            let e = e?;
            let n = e.file_name().to_bytes();
            if n != b"." && n != b".." && n != DIRKEY_FILE.as_bytes() {
                return Err(Errno::ENOTEMPTY);
            }
        }
        let saved = read_at(&sub, OsStr::new(DIRKEY_FILE))?;
        unlink_at(&sub, OsStr::new(DIRKEY_FILE))?;
        Ok((sub, saved))
    }

    fn restore_dirkey(&self, sub: &OwnedFd, saved: &[u8]) {
        // It takes space, which deletes just before may not have given back yet.
        self.reaper.settle_for(0);
        if let Err(e) = atomic::write_atomic_at(sub, DIRKEY_FILE, saved) {
            log::error!("could not restore a directory key after a failed removal: {e}");
        }
    }

    pub fn rmdir(&self, parent: u64, name: &OsStr, req: Requester) -> FsResult<()> {
        let (dir, bn) = self.child(parent, name, req)?;
        let entry_name = OsStr::new(bn.entry());
        if !is_dir(&stat_at(&dir, entry_name)?) {
            return Err(Errno(libc::ENOTDIR));
        }
        let (sub, saved) = Self::strip_dirkey(&dir, entry_name)?;
        if let Err(e) = nix::unistd::unlinkat(&dir, entry_name, UnlinkatFlags::RemoveDir) {
            self.restore_dirkey(&sub, &saved);
            return Err(e.into());
        }
        self.remove_side_file(&dir, &bn);
        lock(&self.inodes).unlink(parent, entry_name, true);
        Ok(())
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
        self.reaper.settle_for(0);
        let (sdir, sbn) = self.child(parent, name, req)?;
        let (ddir, dbn) = self.child(newparent, newname, req)?;
        let (sname, dname) = (OsStr::new(sbn.entry()), OsStr::new(dbn.entry()));
        let rflags = nix::fcntl::RenameFlags::from_bits_truncate(flags);
        if flags & libc::RENAME_EXCHANGE != 0 {
            nix::fcntl::renameat2(&sdir, sname, &ddir, dname, rflags)?;
            lock(&self.inodes).exchange((parent, sname), (newparent, dname));
            return Ok(());
        }
        let sst = stat_at(&sdir, sname)?;
        let dst = stat_at(&ddir, dname).ok();
        if dst.as_ref().is_some_and(|d| d.st_ino == sst.st_ino) {
            // Two names of one inode: rename(2) does nothing, and neither do we.
            return Ok(nix::fcntl::renameat2(&sdir, sname, &ddir, dname, rflags)?);
        }
        // Renaming a directory over an empty one: the backing target still holds its key file.
        let mut saved = None;
        if is_dir(&sst) && flags & libc::RENAME_NOREPLACE == 0 && dst.as_ref().is_some_and(is_dir) {
            saved = Some(Self::strip_dirkey(&ddir, dname)?);
        }
        // A file replaced by the rename is freed later, as an unlinked one is.
        let held = match &dst {
            Some(d) if is_file(d) && d.st_nlink <= 1 => self.reaper.hold(&ddir, dname),
            _ => None,
        };
        let done = self
            .write_side_file(&ddir, &dbn)
            .and_then(|_| Ok(nix::fcntl::renameat2(&sdir, sname, &ddir, dname, rflags)?));
        if let Err(e) = done {
            if let Some((sub, s)) = saved {
                self.restore_dirkey(&sub, &s);
            }
            return Err(e);
        }
        if let Some(fd) = held {
            self.reaper.release(fd);
        }
        self.remove_side_file(&sdir, &sbn);
        let mut inodes = lock(&self.inodes);
        if let Some(d) = dst {
            inodes.unlink(newparent, dname, d.st_nlink <= 1 || is_dir(&d));
        }
        inodes.rename((parent, sname), (newparent, dname));
        Ok(())
    }

    pub fn link(
        &self,
        ino: u64,
        newparent: u64,
        newname: &OsStr,
        req: Requester,
    ) -> FsResult<Entry> {
        self.reaper.settle_for(0);
        let src = self.at(ino)?;
        let (dir, bn) = self.child(newparent, newname, req)?;
        self.write_side_file(&dir, &bn)?;
        if let Err(e) =
            nix::unistd::linkat(&src.dir, &*src.name, &dir, bn.entry(), AtFlags::empty())
        {
            if e != nix::errno::Errno::EEXIST {
                self.remove_side_file(&dir, &bn);
            }
            return Err(e.into());
        }
        // Before the stat that records it: if that fails, unlink must not take the other
        // name for the inode's only one.
        lock(&self.inodes).linked(ino);
        self.register_at(newparent, &dir, &bn)
    }
}
