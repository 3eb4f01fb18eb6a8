//! Control through the mount. Reserved `user.kmsfs.*` xattrs let the CLI act on one file or
//! directory through the running daemon, as the caller the kernel names for the request (never a
//! claimed identity), serialized with that file's reads and writes:
//! - get `user.kmsfs.key`: `<key id>:<version>` of the CMK that wraps the inode's data key;
//! - set `user.kmsfs.key` on a directory: new entries under it use that CMK (`kmsfs set-key`);
//! - set `user.kmsfs.rewrap`: re-wrap the inode's header under the current version of its CMK,
//!   or under the CMK named in the value (`kmsfs rewrap MOUNTPOINT`). On the root directory this
//!   also re-wraps the volume key;
//! - set `user.kmsfs.rewrap.entries` on a directory to `TO\0NAME\0NAME...`: re-wrap the headers
//!   of those entries in it (regular files, and directories' keys; at most `rewrap::MAX_BATCH`)
//!   as one batch, under TO or, if empty, each one's own CMK: one sync for them all instead of
//!   one per header (`kmsfs rewrap MOUNTPOINT`);
//! - set `user.kmsfs.reencrypt` on a regular file: give it a fresh id and data key and
//!   re-encrypt its content (`kmsfs reencrypt`), atomically: a new backing file renamed over the
//!   old one;
//! - get `user.kmsfs.status`: the daemon's state as JSON (`kmsfs status`).

use super::*;
use crate::fs::rewrap::{self, Outcome};

pub const PREFIX: &str = "user.kmsfs.";
pub const KEY_XATTR: &str = "user.kmsfs.key";
pub const REWRAP_XATTR: &str = "user.kmsfs.rewrap";
pub const REWRAP_ENTRIES_XATTR: &str = "user.kmsfs.rewrap.entries";
pub const REENCRYPT_XATTR: &str = "user.kmsfs.reencrypt";
pub const STATUS_XATTR: &str = "user.kmsfs.status";

pub fn is_control(name: &OsStr) -> bool {
    name.as_bytes().starts_with(PREFIX.as_bytes())
}

fn kms_errno(e: crate::error::KmsError) -> Errno {
    log::warn!("{e}");
    errno_of(&e)
}

fn errno_of(e: &crate::error::KmsError) -> Errno {
    match e.kind {
        crate::error::ErrorKind::InvalidCiphertext => Errno::EIO,
        crate::error::ErrorKind::Validation => Errno::EINVAL,
        _ => crate::fs::errno::from_kms(e),
    }
}

impl KmsFs {
    /// The header file of an inode: its own file, or a directory's key file.
    fn header_file(&self, ino: u64, writable: bool) -> FsResult<(File, Kind)> {
        let a = self.at(ino)?;
        let st = stat_at(&a.dir, &a.name)?;
        let rw = if writable {
            OFlag::O_RDWR
        } else {
            OFlag::O_RDONLY
        };
        let flags = rw | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        if is_dir(&st) {
            let d = self.dir_fd(ino)?;
            Ok((
                File::from(openat(&d, DIRKEY_FILE, flags, Mode::empty())?),
                Kind::DirKey,
            ))
        } else if is_file(&st) {
            Ok((
                File::from(openat(&a.dir, &*a.name, flags, Mode::empty())?),
                Kind::File,
            ))
        } else {
            Err(Errno::ENOTSUP)
        }
    }

    /// What `kmsfs status` shows of this mount: open files, the keys they use (with state and
    /// current version, as the daemon may see them), cache sizes and hit counts.
    pub fn status(&self) -> serde_json::Value {
        let mut per_key: std::collections::BTreeMap<String, u64> = Default::default();
        let open_files = {
            let files = lock(&self.files);
            for f in files.values() {
                // Never wait for a busy file here (a reencrypt, say) while holding `files`.
                if let Ok(c) = f.content.try_read() {
                    let k = c.key.clone().unwrap_or_else(|| "(unknown)".into());
                    *per_key.entry(k).or_default() += 1;
                }
            }
            files.len()
        };
        let volume = lock(&self.volume_cmk).clone();
        per_key.entry(volume.clone()).or_default();
        let daemon = self.keys.daemon();
        let keys: Vec<serde_json::Value> = per_key
            .into_iter()
            .map(|(k, n)| {
                let s = self.keys.provider().key_status(daemon, &k);
                serde_json::json!({
                    "KeyId": k,
                    "OpenFiles": n,
                    "State": s.as_ref().map_or_else(|e| format!("unknown ({})", e.kind.name()), |s| s.state.clone()),
                    "CurrentVersion": s.ok().and_then(|s| s.current_version),
                })
            })
            .collect();
        let (inodes, dir_keys, dir_fds, rebased) = {
            let i = lock(&self.inodes);
            (
                i.len(),
                i.dir_keys_cached(),
                i.dir_fds_cached(),
                i.rebased(),
            )
        };
        serde_json::json!({
            "Pid": std::process::id(),
            "CipherDir": self.root,
            "VolumeKey": volume,
            "UptimeSeconds": self.started.elapsed().as_secs(),
            "IdleSeconds": self.idle_for().as_secs(),
            "OpenFiles": open_files,
            "OpenHandles": self.open_handles(),
            "Keys": keys,
            "Transport": {
                "Kind": if self.ring.queues.load(std::sync::atomic::Ordering::Relaxed) > 0 { "io_uring" } else { "/dev/fuse" },
                "RingQueues": self.ring.queues.load(std::sync::atomic::Ordering::Relaxed),
                "RingRequests": self.ring.requests.load(std::sync::atomic::Ordering::Relaxed),
            },
            "Caches": {
                "Decisions": self.keys.decision_stats(),
                "DataKeys": self.keys.data_key_stats(),
                "Inodes": inodes,
                "DirectoryKeys": dir_keys,
                "DirectoryDescriptors": dir_fds,
                "ReencryptedInodes": rebased,
            },
            "DeferredFrees": self.reaper.stats(),
        })
    }

    pub(super) fn control_get(&self, ino: u64, name: &OsStr) -> FsResult<Vec<u8>> {
        if name == STATUS_XATTR {
            return serde_json::to_vec(&self.status()).map_err(|_| Errno::EIO);
        }
        if name != KEY_XATTR {
            return Err(Errno::ENODATA);
        }
        let (f, kind) = self.header_file(ino, false)?;
        let (key, version) = self.header_key(&f, kind).ok_or(Errno::EIO)?;
        Ok(match version {
            Some(v) => format!("{key}:{v}"),
            None => key,
        }
        .into_bytes())
    }

    /// The CMK (and version) of the newest slot of the header in `f`, which decides (see
    /// `cipherdir::unwrap_header`); None if it cannot be read or parsed.
    fn header_key(&self, f: &File, kind: Kind) -> Option<(String, Option<u32>)> {
        let mut h = [0u8; header::HEADER_LEN];
        f.read_exact_at(&mut h, 0).ok()?;
        let parsed = header::parse(kind, &h).ok()?;
        // Newest first. A rewrap writes the new slot while the old one stays whole: a slot
        // read torn meanwhile names no key, and the one before it is taken.
        parsed
            .slots
            .iter()
            .find_map(|s| self.keys.provider().key_of(&s.blob))
    }

    pub(super) fn control_set(
        &self,
        ino: u64,
        name: &OsStr,
        value: &[u8],
        r: Requester,
    ) -> FsResult<()> {
        if name == REWRAP_ENTRIES_XATTR {
            return self.rewrap_entries(ino, value, r);
        }
        let to = target(value)?;
        if name == REENCRYPT_XATTR {
            return self.reencrypt(ino, r);
        }
        let set_key = name == KEY_XATTR;
        if !set_key && name != REWRAP_XATTR {
            return Err(Errno::ENOTSUP);
        }
        let caller = self.keys.caller(r);
        let provider = self.keys.provider();
        let (file, kind) = self.header_file(ino, true)?;
        if set_key && (kind != Kind::DirKey || to.is_none()) {
            return Err(Errno::EINVAL);
        }
        let rewrap = |f: &File| rewrap::rewrap_file(f, kind, provider, &caller, to);
        let outcome = if kind == Kind::File {
            // Closed files are not opened through the mount for this: a rewrap costs one
            // Decrypt (the new slot's MAC needs the data key) and one Encrypt (ReEncrypt with
            // a remote provider).
            let o = self.under_header_lock(&file, |f, own| {
                if own {
                    still_linked(f)?;
                }
                rewrap(f)
            })?;
            o.map_err(kms_errno)?
        } else {
            let o = rewrap(&file);
            self.dir_rewrapped(Some(ino));
            o.map_err(kms_errno)?
        };
        if ino == ROOT && !set_key {
            if let Outcome::Rewrapped { to: (k, _), .. } =
                rewrap::rewrap_volume(&self.root, provider, &caller, to).map_err(kms_errno)?
            {
                *lock(&self.volume_cmk) = k;
            }
        }
        if let Outcome::Rewrapped { from, to } = outcome {
            // Per file, so debug: the audit log has every re-wrap anyway.
            log::debug!(
                "{}: re-wrapped from {}:{:?} to {}:{:?}",
                self.label(ino),
                from.0,
                from.1,
                to.0,
                to.1
            );
        }
        Ok(())
    }
}

/// Whether the mode bits of an inode with `st` grant `mask` (`WRITE`, `SEARCH`) to `caller`, as
/// the kernel's generic_permission decides without ACLs (kmsfs stores none): the owner's,
/// group's or others' bits, whichever class the caller falls in; root always.
fn permits(caller: &Caller, st: &FileStat, mask: u32) -> bool {
    if caller.uid == 0 {
        return true;
    }
    let bits = if caller.uid == st.st_uid {
        st.st_mode >> 6
    } else if caller.gids.contains(&st.st_gid) {
        st.st_mode >> 3
    } else {
        st.st_mode
    };
    bits & mask == mask
}

const WRITE: u32 = 0o2;
const SEARCH: u32 = 0o1;

/// What the kernel answers `caller` setting a `user.*` xattr on an inode with `st`
/// (xattr_permission): EPERM on a sticky directory the caller does not own, EACCES without
/// write permission. A batch names its entries in a value set on their directory, so the
/// kernel checked only that directory.
fn may_set_user_xattr(caller: &Caller, st: &FileStat) -> FsResult<()> {
    let sticky_dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR && st.st_mode & libc::S_ISVTX != 0;
    if sticky_dir && caller.uid != 0 && caller.uid != st.st_uid {
        return Err(Errno::EPERM);
    }
    if !permits(caller, st, WRITE) {
        return Err(Errno::EACCES);
    }
    Ok(())
}

/// The CMK a rewrap value names, if any.
fn target(value: &[u8]) -> FsResult<Option<&str>> {
    let to = std::str::from_utf8(value)
        .map_err(|_| Errno::EINVAL)?
        .trim();
    Ok((!to.is_empty()).then_some(to))
}

/// A header in a `user.kmsfs.rewrap.entries` batch: a regular file's, or a directory's key file.
struct BatchEntry {
    file: File,
    kind: Kind,
    /// The node id of the directory, if one is its (see `Inodes::node_of`); a regular file's
    /// is found when it is re-wrapped (see `KmsFs::under_header_lock`).
    node: Option<u64>,
}

/// The entries of one `user.kmsfs.rewrap.entries` batch, opened.
struct MountEntries<'a> {
    fs: &'a KmsFs,
    entries: Vec<FsResult<BatchEntry>>,
}

impl rewrap::Headers for MountEntries<'_> {
    fn count(&self) -> usize {
        self.entries.len()
    }

    /// A regular file under `KmsFs::under_header_lock`, step by step; a directory's key as it
    /// is. The batch's own descriptor must still be the live file.
    fn with(
        &self,
        i: usize,
        f: &mut dyn FnMut(&File, Kind) -> crate::error::Result<()>,
    ) -> crate::error::Result<()> {
        let e = self.entries[i].as_ref().map_err(|e| errno_error(*e))?;
        if e.kind == Kind::DirKey {
            still_linked(&e.file)?;
            return f(&e.file, e.kind);
        }
        let step = |file: &File, own: bool| {
            if own {
                still_linked(file)?;
            }
            f(file, e.kind)
        };
        self.fs
            .under_header_lock(&e.file, step)
            .map_err(errno_error)?
    }

    fn sync(&self) -> crate::error::Result<()> {
        rewrap::sync_filesystems(
            self.entries
                .iter()
                .filter_map(|e| e.as_ref().ok().map(|e| &e.file)),
        )
    }
}

/// Fails if `file` is linked nowhere any more: replaced since the batch opened it (by a
/// reencrypt, which renames a new file over it, or a rename over its name), so that a re-wrap
/// of it would miss the live one.
fn still_linked(file: &File) -> crate::error::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let m = file
        .metadata()
        .map_err(|e| crate::error::KmsError::io("backing file", e))?;
    if m.nlink() == 0 {
        return Err(crate::error::KmsError::io(
            "backing file",
            std::io::Error::other("replaced during its re-wrap (a rerun re-wraps the new one)"),
        ));
    }
    Ok(())
}

fn errno_error(e: Errno) -> crate::error::KmsError {
    crate::error::KmsError::io("backing file", std::io::Error::from_raw_os_error(e.0))
}

impl KmsFs {
    /// `user.kmsfs.rewrap.entries` on directory `dir` (see the module's comment). Fails with the
    /// errno of the first entry that failed, after trying every one.
    fn rewrap_entries(&self, dir: u64, value: &[u8], r: Requester) -> FsResult<()> {
        let mut parts = value.split(|b| *b == 0);
        let to = target(parts.next().unwrap_or_default())?;
        let names: Vec<&OsStr> = parts.map(OsStr::from_bytes).collect();
        if names.is_empty()
            || names.len() > rewrap::MAX_BATCH
            || names
                .iter()
                .any(|n| n.is_empty() || n.as_bytes().contains(&b'/'))
        {
            return Err(Errno::EINVAL);
        }
        let caller = self.keys.caller(r);
        // The kernel let the caller write to the directory, not look into it.
        if !permits(
            &caller,
            &nix::sys::stat::fstat(&*self.dir_fd(dir)?)?,
            SEARCH,
        ) {
            return Err(Errno::EACCES);
        }
        let flags = OFlag::O_RDWR | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let open = |name: &OsStr| -> FsResult<BatchEntry> {
            let (d, bn) = self.child(dir, name, r)?;
            let st = stat_at(&d, OsStr::new(bn.entry()))?;
            // What is opened is checked, not the name: it may have moved on since the stat.
            let may = |st: &FileStat| may_set_user_xattr(&caller, st).map(|()| st.st_ino);
            let (file, kind, backing) = if is_dir(&st) {
                let sub = open_subdir(&d, OsStr::new(bn.entry()), OFlag::O_PATH)?;
                let backing = may(&nix::sys::stat::fstat(&sub)?)?;
                let key = openat(&sub, DIRKEY_FILE, flags, Mode::empty())?;
                (File::from(key), Kind::DirKey, backing)
            } else if is_file(&st) {
                let file = File::from(openat(&d, bn.entry(), flags, Mode::empty())?);
                let opened = nix::sys::stat::fstat(&file)?;
                if !is_file(&opened) {
                    return Err(Errno::EPERM);
                }
                (file, Kind::File, may(&opened)?)
            } else {
                // As the kernel answers for user.* xattrs on other kinds of inode.
                return Err(Errno::EPERM);
            };
            let node = lock(&self.inodes).node_of(backing);
            Ok(BatchEntry { file, kind, node })
        };
        let batch = MountEntries {
            fs: self,
            entries: names.iter().map(|n| open(n)).collect(),
        };
        let outcomes = rewrap::rewrap_batch(&batch, self.keys.provider(), &caller, to);
        let mut first = None;
        for (i, (e, o)) in batch.entries.iter().zip(outcomes).enumerate() {
            if let Ok(e) = e {
                if e.kind == Kind::DirKey {
                    self.dir_rewrapped(e.node);
                }
            }
            match (o, e) {
                (Ok(_), _) => {}
                (Err(err), e) => {
                    let errno = e.as_ref().err().copied().unwrap_or_else(|| errno_of(&err));
                    // By position: logs never name plaintext names (the CLI names the path).
                    let at = self.label(dir);
                    log::warn!("{at}: entry {i} of a rewrap batch not re-wrapped: {err}");
                    first.get_or_insert(errno);
                }
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Runs `f` on the backing file of regular file `node` where no truncate can give it a new
    /// header meanwhile: an open file on its state's descriptor under its write lock; a closed
    /// one on `own` (the caller's descriptor) under the `files` lock, which any truncate needs
    /// first (to open it). `f` is told whether it got `own`. Afterwards the file's open state
    /// has the CMK the header names now (its reads are checked against it, a disable of it
    /// reaches it, a reencrypt wraps under it), and the write is counted for the opens that
    /// read the header before it (see `open_file`).
    fn under_header_lock<R>(&self, own: &File, f: impl FnOnce(&File, bool) -> R) -> FsResult<R> {
        let backing = nix::sys::stat::fstat(own)?.st_ino;
        let files = lock(&self.files);
        // By what was opened, not by a name: a reencrypt may have moved the name meanwhile.
        // Under `files`, so that no open files a state for it meanwhile.
        let node = lock(&self.inodes).node_of(backing);
        let Some(open) = node.and_then(|n| files.get(&n).cloned()) else {
            let out = f(own, true);
            self.header_rewraps.fetch_add(1, Ordering::Release);
            return Ok(out);
        };
        drop(files);
        let out = {
            let mut c = open.content.write().map_err(|_| Errno::EIO)?;
            let out = f(c.file(), false);
            self.follow_header(&mut c);
            out
        };
        // Its last handle may have closed meanwhile, and an open made a new state from the
        // header as it was before: that one follows it too.
        let files = lock(&self.files);
        self.header_rewraps.fetch_add(1, Ordering::Release);
        let newer = files
            .get(&open.ino)
            .filter(|g| !Arc::ptr_eq(g, &open))
            .cloned();
        drop(files);
        if let Some(g) = newer {
            self.follow_header(&mut *g.content.write().map_err(|_| Errno::EIO)?);
        }
        Ok(out)
    }

    /// Gives an open file's state the CMK its header names (kept if the header cannot be read).
    fn follow_header(&self, c: &mut FileContent) {
        if let Some((key, _)) = self.header_key(c.file(), Kind::File) {
            c.key = Some(key);
        }
    }

    /// After the key file of directory `node` was re-wrapped (or a try failed part way): its
    /// keys are unwrapped again at their next use, under the CMK that wraps them now, which new
    /// entries then use too.
    fn dir_rewrapped(&self, node: Option<u64>) {
        let mut inodes = lock(&self.inodes);
        if let Some(n) = node.and_then(|n| inodes.get_mut(n)) {
            n.dir_keys = None;
        }
        // Also without a node: a lookup may be making one, with keys read before.
        self.dir_rewraps.fetch_add(1, Ordering::Release);
    }
}

impl KmsFs {
    /// Data-key rotation for one file: copies its plaintext into a new backing file with a fresh
    /// id and data key (wrapped by the same CMK), with its xattrs, mode, owner and times, then
    /// renames it over the old one. Readers and writers wait meanwhile; a crash leaves the old
    /// file (and at most a hidden temporary). Files with several hard links are refused (EMLINK):
    /// a rename replaces only one name.
    fn reencrypt(&self, ino: u64, r: Requester) -> FsResult<()> {
        let a = self.at(ino)?;
        let st = stat_at(&a.dir, &a.name)?;
        if !is_file(&st) {
            return Err(Errno::EINVAL);
        }
        if st.st_nlink > 1 {
            return Err(Errno(libc::EMLINK));
        }
        let f = self.open_file(ino, r)?;
        let result = (|| {
            let mut c = f.content.write().map_err(|_| Errno::EIO)?;
            // Metadata and link count as they are now, under the lock.
            let st = nix::sys::stat::fstat(c.file())?;
            if st.st_nlink > 1 {
                return Err(Errno(libc::EMLINK));
            }
            let key = c
                .key
                .clone()
                .unwrap_or_else(|| self.volume.config.key.clone());
            let mut rnd = [0u8; 8];
            crate::cryptocore::fill_random(&mut rnd).map_err(|_| Errno::EIO)?;
            let tmp = format!("{}{}.tmp", nt::REENCRYPT_TMP_PREFIX, hex::encode(rnd));
            let fd = openat(
                &a.dir,
                tmp.as_str(),
                OFlag::O_RDWR
                    | OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(0o600),
            )?;
            let made = (|| {
                let file = File::from(fd);
                let mut fresh = self.fresh_content(&file, c.label.clone(), &key, r)?;
                // A crash leaves the temporary unused (and fsck names it): no undo needed.
                fresh.unjournaled();
                let size = c.size()?;
                let mut off = 0u64;
                while off < size {
                    let chunk = c.read(off, 1 << 20)?;
                    fresh.write(off, &chunk)?;
                    off += chunk.len() as u64;
                }
                for (name, value) in open_xattrs(&c)? {
                    let sealed =
                        cipherdir::encrypt_xattr(fresh.xattr_key()?, &fresh.id, &name, &value)
                            .map_err(|_| Errno::EIO)?;
                    sys::fsetxattr(fresh.file(), &name, &sealed, 0)?;
                }
                if self.is_root {
                    nix::unistd::fchown(
                        fresh.file(),
                        Some(nix::unistd::Uid::from_raw(st.st_uid)),
                        Some(nix::unistd::Gid::from_raw(st.st_gid)),
                    )?;
                }
                nix::sys::stat::fchmod(
                    fresh.file(),
                    Mode::from_bits_truncate(st.st_mode & 0o7777),
                )?;
                let at = nix::sys::time::TimeSpec::new(st.st_atime, st.st_atime_nsec);
                let mt = nix::sys::time::TimeSpec::new(st.st_mtime, st.st_mtime_nsec);
                nix::sys::stat::futimens(fresh.file(), &at, &mt)?;
                // Durable below the records of its new data key.
                self.flush_audit()?;
                fresh.file().sync_all()?;
                let new_backing = nix::sys::stat::fstat(fresh.file())?.st_ino;
                // The file keeps its node, and with it this state (its opens wait for `c`
                // meanwhile): lookups of the new inode reach it, recorded under the table's
                // lock taken before the rename, so that no lookup through the mount sees the
                // new inode first and makes it a node of its own.
                let mut inodes = lock(&self.inodes);
                // The name must still be this file: an unlink or a rename of it during the copy
                // (behind the mount's back) is not undone.
                if stat_at(&a.dir, &a.name)?.st_ino != st.st_ino {
                    return Err(Errno::ENOENT);
                }
                self.put_in_place(&a, &tmp, &c)?;
                inodes.rebase(f.ino, new_backing);
                self.reencrypts.fetch_add(1, Ordering::Release);
                Ok::<_, Errno>(fresh)
            })();
            match made {
                Ok(fresh) => {
                    c.supersede();
                    // Now the live file: its in-place rewrites need undo records again.
                    *c = self.journaled(fresh);
                    // Durable before it is reported: a crash must not bring the file under
                    // its old data key back to the name (the new one was synced before).
                    let dir = File::from(open_listable_dir(&a.dir, OsStr::new("."))?);
                    if let Err(e) = dir.sync_all() {
                        log::error!("{}: re-encrypted, but not made durable: {e}", c.label);
                        return Err(Errno::EIO);
                    }
                    log::debug!("{}: re-encrypted under a fresh data key", c.label);
                    Ok(())
                }
                Err(e) => {
                    let _ = nix::unistd::unlinkat(
                        &a.dir,
                        tmp.as_str(),
                        nix::unistd::UnlinkatFlags::NoRemoveDir,
                    );
                    Err(e)
                }
            }
        })();
        self.unpin(&f);
        result
    }

    /// Puts reencrypt's copy, at `tmp` in the directory of `a`, in the place of `old`. Exchanged
    /// with it, not renamed over it: a hard link to `old` made since its link count was checked
    /// (behind the mount's back; through it, link waits for the inode lock the kernel holds for
    /// this setxattr) shows in that count once only `tmp` names it here, and the exchange is
    /// undone (EMLINK), as a rename would have split the file from that link; so is one that
    /// brought another file to the name (ENOENT). Where the backing filesystem cannot exchange,
    /// the count is checked just before a rename.
    fn put_in_place(&self, a: &At, tmp: &str, old: &FileContent) -> FsResult<()> {
        let old_ino = nix::sys::stat::fstat(old.file())?.st_ino;
        let exchange = nix::fcntl::RenameFlags::RENAME_EXCHANGE;
        let swap = || nix::fcntl::renameat2(&a.dir, tmp, &a.dir, &*a.name, exchange);
        match swap() {
            Ok(()) => {
                // From here on the copy is at the name: no early return but by undoing that.
                let refused = match stat_at(&a.dir, OsStr::new(tmp)) {
                    Ok(st) if st.st_ino != old_ino => Some(Errno::ENOENT),
                    Ok(st) if st.st_nlink > 1 => Some(Errno(libc::EMLINK)),
                    Ok(_) => None,
                    Err(e) => Some(e),
                };
                if let Some(errno) = refused {
                    let undone = swap();
                    // A stat made meanwhile saw the copy's number: made again.
                    self.reencrypts.fetch_add(1, Ordering::Release);
                    if let Err(e) = undone {
                        // The copy stays at the name; what `tmp` names is left for fsck to
                        // report (it may be another file, or the old one, still linked).
                        log::error!("{}: a reencrypt's exchange not undone: {e}", old.label);
                        return Ok(());
                    }
                    return Err(errno);
                }
                let _ = nix::unistd::unlinkat(&a.dir, tmp, nix::unistd::UnlinkatFlags::NoRemoveDir);
                // A link made behind the mount in the instant since the check keeps the old file.
                if nix::sys::stat::fstat(old.file()).is_ok_and(|st| st.st_nlink > 0) {
                    log::error!(
                        "{}: linked behind the mount during its reencrypt",
                        old.label
                    );
                }
                Ok(())
            }
            Err(
                nix::errno::Errno::EINVAL
                | nix::errno::Errno::ENOSYS
                | nix::errno::Errno::EOPNOTSUPP,
            ) => {
                if nix::sys::stat::fstat(old.file())?.st_nlink > 1 {
                    return Err(Errno(libc::EMLINK));
                }
                Ok(nix::fcntl::renameat(&a.dir, tmp, &a.dir, &*a.name)?)
            }
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(mode: u32, uid: u32, gid: u32) -> FileStat {
        // SAFETY: a plain C struct, valid all zero.
        let mut st: FileStat = unsafe { std::mem::zeroed() };
        st.st_mode = mode;
        st.st_uid = uid;
        st.st_gid = gid;
        st
    }

    #[test]
    fn user_xattrs_need_what_the_kernel_asks_for_them() {
        let user = Caller::from_ids(1000, vec![100, 1000], 1);
        let root = Caller::from_ids(0, vec![0], 1);
        let file = libc::S_IFREG;
        let dir = libc::S_IFDIR;
        let (ok, acces, perm) = (Ok(()), Err(Errno::EACCES), Err(Errno::EPERM));
        for (mode, uid, gid, want) in [
            (file | 0o644, 1000, 1000, ok),
            (file | 0o444, 1000, 1000, acces),
            // The owner's bits decide for the owner, even when the group's would allow.
            (file | 0o464, 1000, 100, acces),
            (file | 0o664, 0, 100, ok),
            (file | 0o646, 0, 100, acces),
            (file | 0o646, 0, 5, ok),
            (file | 0o644, 0, 0, acces),
            (dir | 0o777, 0, 0, ok),
            // A sticky directory: only its owner.
            (dir | 0o1777, 0, 0, perm),
            (dir | 0o1755, 1000, 0, ok),
        ] {
            let st = stat(mode, uid, gid);
            assert_eq!(may_set_user_xattr(&user, &st), want, "{mode:o} {uid} {gid}");
            assert_eq!(may_set_user_xattr(&root, &st), Ok(()));
        }
        // Search permission on a directory, by the same classes.
        for (mode, uid, may) in [(0o700, 1000, true), (0o760, 0, false), (0o751, 0, true)] {
            let st = stat(dir | mode, uid, 100);
            assert_eq!(permits(&user, &st, SEARCH), may, "{mode:o} {uid}");
            assert!(permits(&root, &st, SEARCH));
        }
    }

    #[test]
    fn a_file_unlinked_since_it_was_opened_is_not_still_linked() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        std::fs::write(&p, b"x").unwrap();
        let f = File::open(&p).unwrap();
        assert!(still_linked(&f).is_ok());
        std::fs::rename(d.path().join("f"), d.path().join("g")).unwrap();
        assert!(still_linked(&f).is_ok(), "renamed, still the live file");
        std::fs::write(d.path().join("h"), b"y").unwrap();
        std::fs::rename(d.path().join("h"), d.path().join("g")).unwrap();
        let e = still_linked(&f).unwrap_err();
        assert!(e.message.contains("replaced"), "{e}");
    }
}
