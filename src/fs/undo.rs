//! Undo records for in-place rewrites of existing blocks. A 4124-byte block spans two pages, and
//! the kernel may stop a write at a page boundary when the daemon is killed, leaving a block
//! that is half old, half new and so unreadable. Before overwriting existing bytes, the old bytes
//! and the old length go to `CIPHERDIR/kmsfs.journal/<file id in hex>`; the record is emptied
//! once the write is done. Whoever opens the file next (a mount, or fsck) and finds a record
//! puts the old bytes back: the interrupted write never returned, so the old state is the one
//! to keep. Records hold ciphertext only, and a restored block must still authenticate, so a
//! planted record can do no more than writing into the file directly.

use sha2::{Digest, Sha256};
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use nix::fcntl::{OFlag, openat};
use nix::sys::stat::Mode;

/// The journal directory's name under the cipher directory root.
pub const JOURNAL_DIR: &str = "kmsfs.journal";
const MAGIC: &[u8; 8] = b"KMSFSUND";
const VERSION: u16 = 1;
const HEAD: usize = 48;
const SUM: usize = 32;
/// Largest undo record accepted: more than any single write the mount makes (1 MiB runs).
pub const MAX_BYTES: usize = 16 << 20;

/// The old state of a byte range: `bytes` were at `offset`, and the file was `old_len` long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub id: [u8; 16],
    pub offset: u64,
    pub old_len: u64,
    pub bytes: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordError {
    /// Shorter than its stated length: the record itself was cut by the crash, so the in-place
    /// write had not started. Safe to drop.
    Incomplete,
    /// Wrong magic, version, checksum or bounds.
    Invalid,
}

/// Encodes a record (see docs/FORMAT.md, "Undo records").
pub fn encode(id: &[u8; 16], offset: u64, old_len: u64, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEAD + bytes.len() + SUM);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(id);
    out.extend_from_slice(&offset.to_be_bytes());
    out.extend_from_slice(&old_len.to_be_bytes());
    out.extend_from_slice(bytes);
    let sum = Sha256::digest(&out);
    out.extend_from_slice(&sum);
    out
}

impl Record {
    pub fn encode(&self) -> Vec<u8> {
        encode(&self.id, self.offset, self.old_len, &self.bytes)
    }

    pub fn decode(data: &[u8]) -> Result<Record, RecordError> {
        if data.len() < HEAD {
            return Err(RecordError::Incomplete);
        }
        let u16_at = |i: usize| u16::from_be_bytes([data[i], data[i + 1]]);
        let u64_at = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&data[i..i + 8]);
            u64::from_be_bytes(b)
        };
        if &data[..8] != MAGIC || u16_at(8) != VERSION || u16_at(10) != 0 {
            return Err(RecordError::Invalid);
        }
        let count = u32::from_be_bytes([data[12], data[13], data[14], data[15]]) as usize;
        if count > MAX_BYTES {
            return Err(RecordError::Invalid);
        }
        let total = HEAD + count + SUM;
        if data.len() < total {
            return Err(RecordError::Incomplete);
        }
        if data.len() > total {
            return Err(RecordError::Invalid);
        }
        let sum = Sha256::digest(&data[..HEAD + count]);
        if sum.as_slice() != &data[HEAD + count..] {
            return Err(RecordError::Invalid);
        }
        let mut id = [0u8; 16];
        id.copy_from_slice(&data[16..32]);
        let offset = u64_at(32);
        let old_len = u64_at(40);
        // Never the header (it has its own two-slot update), never past the old end.
        let fits = offset >= crate::fs::header::HEADER_LEN as u64
            && offset
                .checked_add(count as u64)
                .is_some_and(|end| end <= old_len);
        if !fits {
            return Err(RecordError::Invalid);
        }
        Ok(Record {
            id,
            offset,
            old_len,
            bytes: data[HEAD..HEAD + count].to_vec(),
        })
    }

    /// Puts the old bytes and length back, durably.
    pub fn apply(&self, file: &File) -> io::Result<()> {
        file.write_all_at(&self.bytes, self.offset)?;
        file.set_len(self.old_len)?;
        file.sync_data()
    }
}

fn record_name(id: &[u8; 16]) -> String {
    hex::encode(id)
}

/// What an open of a file found in the journal.
#[derive(Debug, PartialEq, Eq)]
pub enum Pending {
    None,
    /// An empty record file (a finished write's, its daemon stopped before removing it).
    Empty,
    /// A complete record for this file: apply it.
    Restore(Record),
    /// A record cut short (the in-place write never started) or damaged: remove it.
    Stale(RecordError),
}

/// The journal directory of one cipher directory.
pub struct Journal {
    dir: OwnedFd,
}

impl Journal {
    /// Opens the journal directory, creating it if `create`; None if it does not exist.
    pub fn open(root: &Path, create: bool) -> io::Result<Option<Arc<Journal>>> {
        let path = root.join(JOURNAL_DIR);
        if create {
            match std::fs::create_dir(&path) {
                Ok(()) => {
                    use std::os::unix::fs::PermissionsExt;
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700))?;
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
        }
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        match nix::fcntl::open(&path, flags, Mode::empty()) {
            Ok(dir) => Ok(Some(Arc::new(Journal { dir }))),
            Err(nix::errno::Errno::ENOENT) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The record left for file `id`, if any.
    pub fn pending(&self, id: &[u8; 16]) -> io::Result<Pending> {
        let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let file = match openat(&self.dir, record_name(id).as_str(), flags, Mode::empty()) {
            Ok(fd) => File::from(fd),
            Err(nix::errno::Errno::ENOENT) => return Ok(Pending::None),
            Err(e) => return Err(e.into()),
        };
        let len = file.metadata()?.len();
        if len == 0 {
            return Ok(Pending::Empty);
        }
        if len > (HEAD + MAX_BYTES + SUM) as u64 {
            return Ok(Pending::Stale(RecordError::Invalid));
        }
        let mut data = vec![0u8; len as usize];
        file.read_exact_at(&mut data, 0)?;
        Ok(match Record::decode(&data) {
            Ok(r) if &r.id == id => Pending::Restore(r),
            Ok(_) => Pending::Stale(RecordError::Invalid),
            Err(e) => Pending::Stale(e),
        })
    }

    pub fn remove(&self, id: &[u8; 16]) -> io::Result<()> {
        match nix::unistd::unlinkat(
            &self.dir,
            record_name(id).as_str(),
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        ) {
            Ok(()) | Err(nix::errno::Errno::ENOENT) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// The file ids that have a record (fsck looks for ones no file has).
    pub fn ids(root: &Path) -> io::Result<Vec<[u8; 16]>> {
        let mut ids = Vec::new();
        let entries = match std::fs::read_dir(root.join(JOURNAL_DIR)) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(ids),
            Err(e) => return Err(e),
        };
        for e in entries {
            let name = e?.file_name();
            let parsed = hex::decode(name.as_encoded_bytes())
                .ok()
                .and_then(|b| <[u8; 16]>::try_from(b).ok());
            if let Some(id) = parsed {
                ids.push(id);
            }
        }
        Ok(ids)
    }

    /// Restores file `id` from its record if there is one. Returns whether it did.
    pub fn recover(&self, id: &[u8; 16], file: &File, label: &str) -> io::Result<bool> {
        match self.pending(id)? {
            Pending::None => Ok(false),
            Pending::Empty => {
                self.remove(id)?;
                Ok(false)
            }
            Pending::Restore(r) => {
                r.apply(file)?;
                self.remove(id)?;
                log::warn!(
                    "{label}: undid a write interrupted by a crash ({} bytes at {})",
                    r.bytes.len(),
                    r.offset
                );
                Ok(true)
            }
            Pending::Stale(e) => {
                log::warn!("{label}: dropped an unusable undo record ({e:?})");
                self.remove(id)?;
                Ok(false)
            }
        }
    }
}

/// One open file's undo record: created on its first in-place write, emptied after each, and
/// removed when the file's state is dropped.
pub struct UndoLog {
    journal: Arc<Journal>,
    id: [u8; 16],
    file: Option<File>,
    /// The record file may still hold an obsolete (or half-written) record: it must be emptied
    /// before the file is written again, or the next open would undo later writes.
    dirty: bool,
    /// A write failed and could not be undone here: the record is the only way back, so this
    /// state refuses further writes until the file is opened again (and restored).
    needed: bool,
}

impl UndoLog {
    pub fn new(journal: Arc<Journal>, id: [u8; 16]) -> Self {
        UndoLog {
            journal,
            id,
            file: None,
            dirty: false,
            needed: false,
        }
    }

    /// Before any write of the file (in place or not): no obsolete record may survive it.
    pub fn ready(&mut self) -> io::Result<()> {
        if self.needed {
            return Err(io::Error::other(
                "an earlier write could not be undone; reopen the file to restore it",
            ));
        }
        if self.dirty {
            if let Some(f) = &self.file {
                f.set_len(0)?;
            }
            self.dirty = false;
        }
        Ok(())
    }

    /// Saves `old` (the bytes at `offset`) and the file's length before an in-place write.
    pub fn begin(&mut self, offset: u64, old_len: u64, old: &[u8]) -> io::Result<()> {
        let rec = encode(&self.id, offset, old_len, old);
        let file = match &self.file {
            Some(f) => f,
            None => {
                let flags = OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
                let fd = openat(
                    &self.journal.dir,
                    record_name(&self.id).as_str(),
                    flags,
                    Mode::from_bits_truncate(0o600),
                )?;
                let f = File::from(fd);
                // Whatever an earlier state left there is obsolete: the open restored it.
                f.set_len(0)?;
                self.file.insert(f)
            }
        };
        self.dirty = true;
        file.write_all_at(&rec, 0)
    }

    /// The in-place write is complete: the record is no longer needed.
    pub fn end(&mut self) -> io::Result<()> {
        if let Some(f) = &self.file {
            f.set_len(0)?;
        }
        self.dirty = false;
        Ok(())
    }

    /// The write failed and could not be undone: the record stays for the next open.
    pub fn abandon(&mut self) {
        self.needed = true;
    }

    /// Makes the emptied record durable, so that a power loss after an fsync of the data
    /// cannot bring back an old record that would undo what was synced.
    pub fn sync(&self) -> io::Result<()> {
        match &self.file {
            Some(f) => f.sync_data(),
            None => Ok(()),
        }
    }
}

impl Drop for UndoLog {
    fn drop(&mut self) {
        if self.file.is_some() && !self.dirty && !self.needed {
            if let Err(e) = self.journal.remove(&self.id) {
                log::warn!("could not remove an empty undo record: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec() -> Record {
        Record {
            id: [3u8; 16],
            offset: 1024 + 4124,
            old_len: 1024 + 3 * 4124,
            bytes: vec![0xab; 4124],
        }
    }

    #[test]
    fn records_round_trip_and_reject_damage() {
        let r = rec();
        let data = r.encode();
        assert_eq!(data.len(), HEAD + 4124 + SUM);
        assert_eq!(Record::decode(&data).unwrap(), r);
        for cut in [0, 10, HEAD, data.len() - 1] {
            assert_eq!(
                Record::decode(&data[..cut]),
                Err(RecordError::Incomplete),
                "{cut}"
            );
        }
        for i in [0, 9, 11, 20, 40, HEAD + 7, data.len() - 1] {
            let mut bad = data.clone();
            bad[i] ^= 1;
            assert!(Record::decode(&bad).is_err(), "byte {i}");
        }
        let mut long = data.clone();
        long.push(0);
        assert_eq!(Record::decode(&long), Err(RecordError::Invalid));
    }

    #[test]
    fn records_stay_out_of_the_header_and_inside_the_old_length() {
        let mut r = rec();
        r.offset = 100;
        assert_eq!(Record::decode(&r.encode()), Err(RecordError::Invalid));
        let mut r = rec();
        r.old_len = r.offset + 10;
        assert_eq!(Record::decode(&r.encode()), Err(RecordError::Invalid));
        let mut r = rec();
        r.offset = u64::MAX - 5;
        assert_eq!(Record::decode(&r.encode()), Err(RecordError::Invalid));
    }

    #[test]
    fn a_record_restores_the_old_bytes_and_length() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path(), true).unwrap().unwrap();
        let path = dir.path().join("f");
        let old: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
        std::fs::write(&path, &old).unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let id = [9u8; 16];
        let mut log = UndoLog::new(j.clone(), id);
        log.begin(1024, 3000, &old[1024..2500]).unwrap();
        // The "crash": half of a new write landed and the file grew.
        file.write_all_at(&[0u8; 700], 1024).unwrap();
        file.set_len(5000).unwrap();
        std::mem::forget(log);
        assert!(j.recover(&id, &file, "f").unwrap());
        assert_eq!(std::fs::read(&path).unwrap(), old);
        assert_eq!(j.pending(&id).unwrap(), Pending::None);
        assert!(!j.recover(&id, &file, "f").unwrap(), "applied once");
    }

    #[test]
    fn a_finished_write_leaves_nothing_to_undo() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path(), true).unwrap().unwrap();
        let id = [1u8; 16];
        let mut log = UndoLog::new(j.clone(), id);
        log.begin(2048, 8192, &[1; 100]).unwrap();
        assert!(matches!(j.pending(&id).unwrap(), Pending::Restore(_)));
        log.end().unwrap();
        assert_eq!(j.pending(&id).unwrap(), Pending::Empty);
        drop(log);
        assert!(
            Journal::ids(dir.path()).unwrap().is_empty(),
            "removed on drop"
        );
    }

    #[test]
    fn a_cut_record_is_dropped_not_applied() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path(), true).unwrap().unwrap();
        let id = [2u8; 16];
        let data = Record { id, ..rec() }.encode();
        std::fs::write(
            dir.path().join(JOURNAL_DIR).join(record_name(&id)),
            &data[..data.len() / 2],
        )
        .unwrap();
        let file = tempfile::tempfile().unwrap();
        assert!(!j.recover(&id, &file, "f").unwrap());
        assert_eq!(file.metadata().unwrap().len(), 0, "file untouched");
        assert!(Journal::ids(dir.path()).unwrap().is_empty());
    }
}
