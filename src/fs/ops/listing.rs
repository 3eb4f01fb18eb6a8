//! Directory listings: a backing directory's entries read and their names decrypted once per
//! OPENDIR, then served from the handle by READDIR and READDIRPLUS.

use super::*;

#[derive(Clone)]
pub struct DirEntry {
    pub ino: u64,
    pub name: OsString,
    pub kind: FileType,
    /// The backing (encrypted) name; empty for "." and "..".
    pub backing: Arc<OsStr>,
}

/// A directory handle's entries from an offset on, shared with the handle rather than copied (a
/// listing is read in several requests).
pub struct Listing {
    entries: Arc<[DirEntry]>,
    from: usize,
}

impl Listing {
    /// Entries with their offsets (positions + 1).
    pub fn iter(&self) -> impl Iterator<Item = (u64, &DirEntry)> {
        self.entries
            .iter()
            .enumerate()
            .skip(self.from)
            .map(|(i, e)| (i as u64 + 1, e))
    }
}

impl KmsFs {
    /// Decrypts one backing directory entry's name; None for kmsfs's own files and for names that
    /// do not decrypt (logged).
    fn plain_name(
        &self,
        dir: &OwnedFd,
        label: &dyn Fn() -> String,
        names: &mut nt::NameCipher,
        entry: &OsStr,
    ) -> Option<OsString> {
        let s = entry.to_str()?;
        let side;
        let encoded = match nt::classify(s) {
            EntryKind::Internal => return None,
            EntryKind::Encrypted => s,
            EntryKind::LongName => {
                let file = format!("{s}{}", nt::LONGNAME_SUFFIX);
                side = read_at(dir, OsStr::new(&file))
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok());
                match &side {
                    Some(full) if nt::long_name_matches(s, full) => full.as_str(),
                    _ => {
                        log::warn!("{}/{s}: long name without a valid side file", label());
                        return None;
                    }
                }
            }
        };
        match names.decrypt(encoded) {
            Ok(n) => Some(OsString::from_vec(n)),
            Err(_) => {
                log::warn!("{}/{s}: name does not decrypt in this directory", label());
                None
            }
        }
    }

    pub fn opendir(&self, ino: u64, req: Requester) -> FsResult<u64> {
        let keys = self.dir_keys(ino, req)?;
        let a = self.at(ino)?;
        let dir = open_listable_dir(&a.dir, &a.name)?;
        let label = || self.label(ino);
        let (parent, mut entries) = {
            let inodes = lock(&self.inodes);
            let parent = inodes
                .get(ino)
                .and_then(|n| n.links.first().map(|l| l.0))
                .unwrap_or(ROOT);
            (parent, Vec::new())
        };
        for (i, n) in [(ino, "."), (parent, "..")] {
            entries.push(DirEntry {
                ino: i,
                name: n.into(),
                kind: FileType::Directory,
                backing: Arc::from(OsStr::new("")),
            });
        }
        let mut d = nix::dir::Dir::from_fd(dir.try_clone()?)?;
        let mut found = Vec::new();
        for e in d.iter() {
            let e = e?;
            let raw = OsStr::from_bytes(e.file_name().to_bytes());
            if raw == "." || raw == ".." {
                continue;
            }
            found.push((Arc::<OsStr>::from(raw), e.ino(), e.file_type()));
        }
        let mut names = nt::NameCipher::new(&keys.keys.names);
        let inodes_ids: Vec<u64> = {
            let inodes = lock(&self.inodes);
            found.iter().map(|(_, i, _)| inodes.node_id(*i)).collect()
        };
        for ((raw, _, t), id) in found.iter().zip(inodes_ids) {
            let Some(name) = self.plain_name(&dir, &label, &mut names, raw) else {
                continue;
            };
            use nix::dir::Type;
            let kind = match t {
                Some(Type::Directory) => FileType::Directory,
                Some(Type::Symlink) => FileType::Symlink,
                Some(Type::Fifo) => FileType::NamedPipe,
                Some(Type::Socket) => FileType::Socket,
                Some(Type::CharacterDevice) => FileType::CharDevice,
                Some(Type::BlockDevice) => FileType::BlockDevice,
                Some(Type::File) => FileType::RegularFile,
                None => match stat_at(&dir, raw) {
                    Ok(st) => file_type(st.st_mode),
                    Err(_) => continue,
                },
            };
            entries.push(DirEntry {
                ino: id,
                name,
                kind,
                backing: raw.clone(),
            });
        }
        Ok(self.new_handle(Handle::Dir {
            entries: entries.into(),
        }))
    }

    /// Entries from `offset` on (offsets are positions + 1).
    pub fn readdir(&self, fh: u64, offset: u64) -> FsResult<Listing> {
        match lock(&self.handles).get(&fh) {
            Some(Handle::Dir { entries }) => Ok(Listing {
                entries: entries.clone(),
                from: usize::try_from(offset).unwrap_or(usize::MAX),
            }),
            _ => Err(Errno::EBADF),
        }
    }

    /// Like `readdir`, with each entry looked up (counted, as the kernel expects). `add` returns
    /// true when the reply is full; that entry's lookup is then taken back.
    pub fn readdirplus(
        &self,
        ino: u64,
        fh: u64,
        offset: u64,
        mut add: impl FnMut(u64, &DirEntry, &Entry) -> bool,
    ) -> FsResult<()> {
        let listing = self.readdir(fh, offset)?;
        let dir = self.dir_fd(ino)?;
        let own = self.getattr(ino)?;
        for (off, e) in listing.iter() {
            if e.backing.is_empty() {
                let dot = Entry {
                    attr: FileAttr {
                        ino: fuser::INodeNo(e.ino),
                        ..own
                    },
                    generation: 0,
                };
                if add(off, e, &dot) {
                    break;
                }
                continue;
            }
            let Ok((id, generation, st)) =
                self.link_stat(&dir, &e.backing, |t, b| t.link_shared(ino, &e.backing, b))
            else {
                continue;
            };
            let entry = Entry {
                attr: to_attr(id, &st),
                generation,
            };
            if add(off, e, &entry) {
                self.forget(id, 1);
                break;
            }
        }
        Ok(())
    }

    pub fn releasedir(&self, fh: u64) {
        lock(&self.handles).remove(&fh);
    }
}
