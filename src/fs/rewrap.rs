//! Re-wrapping headers (file data keys, directory keys, the volume key) under the current version
//! of their CMK or another CMK, and the inventory of which CMK versions a cipher directory uses.
//! Only headers are touched, never data blocks: the cost grows with the number of files.

use crate::cryptocore;
use crate::error::{KmsError, Result};
use crate::fs::cipherdir;
use crate::fs::header::{self, HEADER_LEN, Kind, SLOT_LEN};
use crate::fs::nametransform::{CONFIG_FILE, DIRKEY_FILE, EntryKind, classify};
use crate::keystore::atomic;
use crate::kms::{Caller, EncryptionContext};
use crate::provider::KeyProvider;
use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

/// What re-wrapping one header did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Already wrapped by the target key's current version.
    Current,
    /// Re-wrapped: (key, version) before and after.
    Rewrapped {
        from: (String, Option<u32>),
        to: (String, Option<u32>),
    },
}

/// The most headers one batch re-wraps (and one `user.kmsfs.rewrap.entries` names): bounds how
/// long a batch holds up the mount's other requests and how much an interrupt waits for.
pub const MAX_BATCH: usize = 256;

/// The headers of one batch, and how to reach them.
pub trait Headers {
    fn count(&self) -> usize;
    /// Runs `f` on header `i`'s file, under whatever keeps anyone else from replacing that
    /// header meanwhile (in a mount: the open file's write lock, or the lock every open takes).
    fn with(&self, i: usize, f: &mut dyn FnMut(&File, Kind) -> Result<()>) -> Result<()>;
    /// Makes every write to the batch's files so far durable.
    fn sync(&self) -> Result<()>;
}

/// A header's re-wrap, worked out (and its key uses done) before anything is written.
struct Plan {
    /// The two slots as read: each later write first checks they are still there.
    read: Vec<u8>,
    /// The new slot and its index; None if the header is already current.
    new: Option<(usize, [u8; SLOT_LEN])>,
    /// The slot to clear once the new one (or, if current, the newest) is durable.
    clear: Option<usize>,
    outcome: Outcome,
}

/// Re-wraps the header at the start of `file` (the newest valid slot) under `to`, or under the
/// current version of its own key. Writes the unused slot with generation + 1 and syncs, then
/// clears the old slot: a crash leaves the old or the new wrapping, both valid.
pub fn rewrap_file(
    file: &File,
    kind: Kind,
    provider: &dyn KeyProvider,
    caller: &Caller,
    to: Option<&str>,
) -> Result<Outcome> {
    struct One<'a>(&'a File, Kind);
    impl Headers for One<'_> {
        fn count(&self) -> usize {
            1
        }
        fn with(&self, _: usize, f: &mut dyn FnMut(&File, Kind) -> Result<()>) -> Result<()> {
            f(self.0, self.1)
        }
        fn sync(&self) -> Result<()> {
            self.0
                .sync_data()
                .map_err(|e| KmsError::io("syncing a header", e))
        }
    }
    rewrap_batch(&One(file, kind), provider, caller, to)
        .pop()
        .unwrap_or_else(|| Err(KmsError::internal("a batch of one gave no outcome")))
}

/// Re-wraps a batch of headers as `rewrap_file` does each, with one audit flush and two syncs
/// for the whole batch instead of three per header: every key use first; then the records of
/// those uses are made durable; then every new slot is written, and synced; only then is every
/// old slot cleared, and synced. At every moment each header has a whole slot (the old one
/// until the new one is durable). A header that changed between the steps is left as it is
/// now, with an error (a rerun re-wraps it); one reached twice (hard links) is re-wrapped once
/// and has the first one's outcome. One outcome per header, in order.
pub fn rewrap_batch(
    headers: &dyn Headers,
    provider: &dyn KeyProvider,
    caller: &Caller,
    to: Option<&str>,
) -> Vec<Result<Outcome>> {
    // (index, (device, inode)) of each header reached.
    let mut seen: Vec<(usize, (u64, u64))> = Vec::new();
    let mut same_as = vec![None; headers.count()];
    let mut plans: Vec<Result<Plan>> = (0..headers.count())
        .map(|i| {
            let mut planned = None;
            headers.with(i, &mut |f, kind| {
                let m = f.metadata().map_err(|e| KmsError::io("header", e))?;
                let id = (m.dev(), m.ino());
                match seen.iter().find(|(_, s)| *s == id) {
                    Some((j, _)) => same_as[i] = Some(*j),
                    None => {
                        seen.push((i, id));
                        planned = Some(plan(f, kind, provider, caller, to)?);
                    }
                }
                Ok(())
            })?;
            // A second name writes nothing (and takes the first one's outcome below).
            Ok(planned.unwrap_or(Plan {
                read: Vec::new(),
                new: None,
                clear: None,
                outcome: Outcome::Current,
            }))
        })
        .collect();
    let writes = |p: &Result<Plan>| p.as_ref().is_ok_and(|p| p.new.is_some());
    if plans.iter().any(writes) {
        // The new wrappings become durable below: the records of their key uses first.
        if let Err(e) = provider.flush_audit() {
            fail(&mut plans, |p| p.new.is_some(), &e);
        }
    }
    for (i, p) in plans.iter_mut().enumerate() {
        let r = match p {
            Ok(plan) if plan.new.is_some() => headers.with(i, &mut |f, _| write_new(f, plan)),
            _ => continue,
        };
        if let Err(e) = r {
            *p = Err(e);
        }
    }
    let clears = |p: &Result<Plan>| p.as_ref().is_ok_and(|p| p.clear.is_some());
    if !plans.iter().any(clears) {
        return finish(plans, &same_as);
    }
    // No old slot is cleared before every new one (and any stale one's newer slot) is durable.
    if let Err(e) = headers.sync() {
        fail(&mut plans, |p| p.new.is_some() || p.clear.is_some(), &e);
    }
    for (i, p) in plans.iter_mut().enumerate() {
        let r = match p {
            Ok(plan) if plan.clear.is_some() => headers.with(i, &mut |f, _| clear_old(f, plan)),
            _ => continue,
        };
        if let Err(e) = r {
            *p = Err(e);
        }
    }
    if plans.iter().any(clears) {
        if let Err(e) = headers.sync() {
            fail(&mut plans, |p| p.clear.is_some(), &e);
        }
    }
    finish(plans, &same_as)
}

/// Marks every plan that `hit` selects as failed with `e`.
fn fail(plans: &mut [Result<Plan>], hit: impl Fn(&Plan) -> bool, e: &KmsError) {
    for p in plans.iter_mut() {
        if p.as_ref().is_ok_and(&hit) {
            *p = Err(e.clone());
        }
    }
}

/// The outcomes, a second name of a header taking the first one's.
fn finish(plans: Vec<Result<Plan>>, same_as: &[Option<usize>]) -> Vec<Result<Outcome>> {
    let outcomes: Vec<Result<Outcome>> = plans.into_iter().map(|p| p.map(|p| p.outcome)).collect();
    same_as
        .iter()
        .enumerate()
        .map(|(i, j)| outcomes[j.unwrap_or(i)].clone())
        .collect()
}

/// Reads and unwraps the header of `file` and, unless it is current, re-wraps its key.
fn plan(
    file: &File,
    kind: Kind,
    provider: &dyn KeyProvider,
    caller: &Caller,
    to: Option<&str>,
) -> Result<Plan> {
    let mut h = vec![0u8; HEADER_LEN];
    file.read_exact_at(&mut h, 0)
        .map_err(|e| KmsError::io("reading header", e))?;
    let u = cipherdir::unwrap_header(kind, &h, provider, caller).map_err(|f| match f {
        cipherdir::HeaderFailure::Corrupt(why) => {
            KmsError::invalid_ciphertext(format!("header: {why}"))
        }
        cipherdir::HeaderFailure::Kms(e) => e,
    })?;
    let from = provider
        .key_of(&u.blob)
        .ok_or_else(|| KmsError::validation("the header's wrapped key names no key"))?;
    let target = to.map(str::to_string).unwrap_or_else(|| from.0.clone());
    let read = slot_bytes(&h).to_vec();
    let other = 1 - u.slot;
    if is_current(provider, caller, &from, &target)? {
        // A re-wrap cut between its two slot writes left the old wrapping: clear it now.
        let stale = slot_of(&read, other).iter().any(|b| *b != 0);
        return Ok(Plan {
            read,
            new: None,
            clear: stale.then_some(other),
            outcome: Outcome::Current,
        });
    }
    let ctx = kind.context(&u.id);
    let w = provider.rewrap_key(caller, &u.blob, &u.data_key, &ctx, &target)?;
    let slot = header::encode_slot(kind, &u.id, u.generation + 1, &w.blob, &u.data_key)
        .map_err(|e| KmsError::internal(format!("header slot: {e:?}")))?;
    Ok(Plan {
        read,
        new: Some((other, slot)),
        clear: Some(u.slot),
        outcome: Outcome::Rewrapped {
            from,
            to: (w.key.clone(), w.version),
        },
    })
}

/// Slot `i` within the bytes of both slots.
fn slot_of(slots: &[u8], i: usize) -> &[u8] {
    &slots[i * SLOT_LEN..(i + 1) * SLOT_LEN]
}

/// Fails unless the slots of `file` are `expected`.
fn check_slots(file: &File, expected: &[u8]) -> Result<()> {
    let mut now = vec![0u8; expected.len()];
    file.read_exact_at(&mut now, header::slot_offset(0) as u64)
        .map_err(|e| KmsError::io("reading header", e))?;
    if now != expected {
        return Err(KmsError::io(
            "header",
            std::io::Error::other(
                "changed during its re-wrap (left as it is; a rerun re-wraps it)",
            ),
        ));
    }
    Ok(())
}

/// Writes the new slot into the one not in use, if the slots are still as read.
fn write_new(file: &File, p: &Plan) -> Result<()> {
    let Some((i, slot)) = &p.new else {
        return Ok(());
    };
    check_slots(file, &p.read)?;
    file.write_all_at(slot, header::slot_offset(*i) as u64)
        .map_err(|e| KmsError::io("writing header", e))
}

/// Clears the old slot, so no wrapping under the old key version remains, if the slots are
/// still as read with the new one written.
fn clear_old(file: &File, p: &Plan) -> Result<()> {
    let Some(i) = p.clear else {
        return Ok(());
    };
    let mut expected = p.read.clone();
    if let Some((n, slot)) = &p.new {
        expected[n * SLOT_LEN..(n + 1) * SLOT_LEN].copy_from_slice(slot);
    }
    check_slots(file, &expected)?;
    file.write_all_at(&[0u8; SLOT_LEN], header::slot_offset(i) as u64)
        .map_err(|e| KmsError::io("clearing the old header slot", e))
}

/// Syncs each filesystem that holds one of `files`, once (`syncfs`): one journal commit and
/// one cache flush for a whole batch, where a sync per file costs one each. (It also writes
/// back whatever else is dirty there.) Only on local filesystems (`sys::on_local_fs`: ext2/3/4,
/// XFS, Btrfs, F2FS, tmpfs, ZFS), where `syncfs` makes everything written durable and a sync
/// also orders what came before it (a directory's sync makes a rename in it durable):
/// elsewhere each file gets an `fdatasync` (on FUSE `syncfs` reaches the server only if it
/// asked for that, on CIFS it sends no flush, and either succeeds).
pub fn sync_filesystems<'a>(files: impl IntoIterator<Item = &'a File>) -> Result<()> {
    let err = |e: std::io::Error| KmsError::io("syncing headers", e);
    let mut synced = Vec::new();
    for f in files {
        let dev = f.metadata().map_err(err)?.dev();
        if synced.contains(&dev) {
            continue;
        }
        if crate::fs::sys::on_local_fs(f).map_err(|e| err(e.into()))? {
            nix::unistd::syncfs(f).map_err(|e| err(e.into()))?;
            synced.push(dev);
        } else {
            f.sync_data().map_err(err)?;
        }
    }
    Ok(())
}

/// Whether a wrapping by `from` (key, version) is already by the current version of `target`.
fn is_current(
    provider: &dyn KeyProvider,
    caller: &Caller,
    from: &(String, Option<u32>),
    target: &str,
) -> Result<bool> {
    let (id, version) = provider.current_key(caller, target)?;
    Ok(id == from.0 && version.is_some() && version == from.1)
}

/// Counts, per (key, version), the headers of a cipher directory, without the KMS.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Inventory {
    pub files: BTreeMap<(String, Option<u32>), u64>,
    pub dirs: BTreeMap<(String, Option<u32>), u64>,
    pub volume: Option<(String, Option<u32>)>,
    /// Every non-empty slot (a crash may leave an older one): what retiring must consider.
    pub any_slot: BTreeMap<(String, Option<u32>), u64>,
    /// Headers that could not be read or parsed.
    pub unreadable: Vec<PathBuf>,
}

/// The parsed header at the start of `p`, if it reads and parses.
fn read_header(p: &Path, kind: Kind) -> Option<header::Header> {
    let mut h = vec![0u8; HEADER_LEN];
    File::open(p)
        .and_then(|f| f.read_exact_at(&mut h, 0))
        .ok()?;
    header::parse(kind, &h).ok()
}

/// The key and version of the newest slot of the header at `p`.
fn newest_key(p: &Path, kind: Kind, provider: &dyn KeyProvider) -> Option<(String, Option<u32>)> {
    provider.key_of(&read_header(p, kind)?.slots.first()?.blob)
}

/// Every backing regular file and directory-key file of a cipher directory.
pub fn walk(root: &Path, mut f: impl FnMut(&Path, Kind)) -> Result<()> {
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let rd = std::fs::read_dir(&d)
            .map_err(|e| KmsError::validation(format!("{}: {e}", d.display())))?;
        for e in rd.flatten() {
            let name = e.file_name();
            let Some(n) = name.to_str() else { continue };
            let Ok(t) = e.file_type() else { continue };
            if n == DIRKEY_FILE {
                f(&e.path(), Kind::DirKey);
            } else if classify(n) == EntryKind::Internal {
                continue;
            } else if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                f(&e.path(), Kind::File);
            }
        }
    }
    Ok(())
}

pub fn inventory(root: &Path, provider: &dyn KeyProvider) -> Result<Inventory> {
    let mut inv = Inventory {
        volume: provider.key_of(&cipherdir::read_config(root)?.volume_key),
        ..Inventory::default()
    };
    walk(root, |p, kind| {
        let Some(parsed) = read_header(p, kind) else {
            return inv.unreadable.push(p.to_path_buf());
        };
        for slot in &parsed.slots {
            if let Some(k) = provider.key_of(&slot.blob) {
                *inv.any_slot.entry(k).or_insert(0) += 1;
            }
        }
        match parsed.slots.first().and_then(|s| provider.key_of(&s.blob)) {
            Some(k) => {
                let map = if kind == Kind::File {
                    &mut inv.files
                } else {
                    &mut inv.dirs
                };
                *map.entry(k).or_insert(0) += 1;
            }
            None => inv.unreadable.push(p.to_path_buf()),
        }
    })?;
    Ok(inv)
}

/// Re-wraps the volume key in kmsfs.conf (and its MAC) atomically.
pub fn rewrap_volume(
    root: &Path,
    provider: &dyn KeyProvider,
    caller: &Caller,
    to: Option<&str>,
) -> Result<Outcome> {
    let path = root.join(CONFIG_FILE);
    let v = cipherdir::open(root, provider, caller)?;
    let mut cfg = v.config;
    let ctx: EncryptionContext = cipherdir::volume_context(&cfg.volume_id);
    let from = provider
        .key_of(&cfg.volume_key)
        .ok_or_else(|| KmsError::validation("kmsfs.conf names no key"))?;
    let target = to.map(str::to_string).unwrap_or_else(|| from.0.clone());
    if is_current(provider, caller, &from, &target)? {
        return Ok(Outcome::Current);
    }
    let vk = provider.decrypt_data_key(caller, &cfg.volume_key, &ctx)?;
    let w = provider.rewrap_key(caller, &cfg.volume_key, &vk, &ctx, &target)?;
    cfg.volume_key = w.blob.clone();
    if to.is_some() {
        cfg.key = w.key.clone();
    }
    cfg.mac = cipherdir::config_mac(&cfg, &vk)?;
    // The new wrapping becomes durable below: the records of its key uses first.
    provider.flush_audit()?;
    let json = serde_json::to_vec_pretty(&cfg).map_err(|e| KmsError::internal(e.to_string()))?;
    atomic::write_atomic(&path, &json).map_err(|e| KmsError::io(path.display(), e))?;
    Ok(Outcome::Rewrapped {
        from,
        to: (w.key.clone(), w.version),
    })
}

/// Totals of a rewrap run.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    pub rewrapped: u64,
    pub current: u64,
    pub failed: Vec<(PathBuf, String)>,
    /// `progress` asked to stop after `done` of `total` headers.
    pub stopped: Option<(u64, u64)>,
}

/// Re-wraps every header of an unmounted cipher directory, `MAX_BATCH` at a time (see
/// `rewrap_batch`; the audit records wait for each batch's flush). `only` limits it to headers
/// whose key is that one (a key id). `progress` is called after each batch with (done, total),
/// and returns false to stop there (each header is whole at every moment, so a rerun continues).
pub fn rewrap_offline(
    root: &Path,
    provider: &dyn KeyProvider,
    caller: &Caller,
    to: Option<&str>,
    only: Option<&str>,
    mut progress: impl FnMut(u64, u64) -> bool,
) -> Result<Summary> {
    let mut targets = Vec::new();
    walk(root, |p, k| targets.push((p.to_path_buf(), k)))?;
    let total = targets.len() as u64;
    let mut s = Summary::default();
    let tally = |r: Result<Outcome>, p: &Path, s: &mut Summary| match r {
        Ok(Outcome::Current) => s.current += 1,
        Ok(Outcome::Rewrapped { .. }) => s.rewrapped += 1,
        Err(e) => s.failed.push((p.to_path_buf(), e.to_string())),
    };
    provider.defer_audit_sync();
    let mut done = 0u64;
    for chunk in targets.chunks(MAX_BATCH) {
        let selected: Vec<&(PathBuf, Kind)> = chunk
            .iter()
            .filter(|(p, kind)| {
                only.is_none_or(|k| newest_key(p, *kind, provider).is_some_and(|(id, _)| id == k))
            })
            .collect();
        let batch = Opened(
            selected
                .iter()
                .map(|(p, kind)| (open_rw(p), *kind))
                .collect(),
        );
        for ((p, _), r) in selected
            .iter()
            .zip(rewrap_batch(&batch, provider, caller, to))
        {
            tally(r, p, &mut s);
        }
        done += chunk.len() as u64;
        if !progress(done, total) {
            s.stopped = Some((done, total));
            provider.flush_audit()?;
            return Ok(s);
        }
    }
    let vol_selected =
        only.is_none_or(|k| inventory_volume_key(root, provider).is_some_and(|(id, _)| id == k));
    if vol_selected {
        let r = rewrap_volume(root, provider, caller, to);
        tally(r, &root.join(CONFIG_FILE), &mut s);
    }
    // The records of key uses that wrote nothing (denials, failures).
    provider.flush_audit()?;
    Ok(s)
}

fn open_rw(p: &Path) -> Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(p)
        .map_err(|e| KmsError::validation(format!("{}: {e}", p.display())))
}

/// Headers in files opened for the batch, outside any mount (nothing else writes them).
struct Opened(Vec<(Result<File>, Kind)>);

impl Headers for Opened {
    fn count(&self) -> usize {
        self.0.len()
    }
    fn with(&self, i: usize, f: &mut dyn FnMut(&File, Kind) -> Result<()>) -> Result<()> {
        let (file, kind) = &self.0[i];
        f(file.as_ref().map_err(Clone::clone)?, *kind)
    }
    fn sync(&self) -> Result<()> {
        sync_filesystems(self.0.iter().filter_map(|(f, _)| f.as_ref().ok()))
    }
}

fn inventory_volume_key(root: &Path, provider: &dyn KeyProvider) -> Option<(String, Option<u32>)> {
    provider.key_of(&cipherdir::read_config(root).ok()?.volume_key)
}

/// Bytes of a header that a re-wrap may change: the two slots (for tests and fsck).
pub fn slot_bytes(h: &[u8]) -> &[u8] {
    &h[header::slot_offset(0)..header::slot_offset(1) + SLOT_LEN]
}

/// A cheap digest of a header's slots, to see whether a re-wrap touched it.
pub fn slots_digest(h: &[u8]) -> [u8; 32] {
    cryptocore::sha256(slot_bytes(h))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::tests::provider_with_key;
    use std::cell::{Cell, RefCell};

    /// Headers in temporary files. Each sync records every file's slots as they are then;
    /// `before_write` runs on a header's file just before its second visit (the write).
    struct Recorded {
        files: Vec<Result<File>>,
        visits: Vec<Cell<u32>>,
        synced: RefCell<Vec<Vec<Vec<u8>>>>,
        fail_sync: bool,
        before_write: Option<(usize, Vec<u8>)>,
    }

    impl Recorded {
        fn new(files: Vec<Result<File>>) -> Self {
            Recorded {
                visits: files.iter().map(|_| Cell::new(0)).collect(),
                files,
                synced: RefCell::default(),
                fail_sync: false,
                before_write: None,
            }
        }
    }

    impl Headers for Recorded {
        fn count(&self) -> usize {
            self.files.len()
        }
        fn with(&self, i: usize, f: &mut dyn FnMut(&File, Kind) -> Result<()>) -> Result<()> {
            let file = self.files[i].as_ref().map_err(Clone::clone)?;
            self.visits[i].set(self.visits[i].get() + 1);
            if let Some((j, h)) = &self.before_write {
                if *j == i && self.visits[i].get() == 2 {
                    file.write_all_at(h, 0).unwrap();
                }
            }
            f(file, Kind::File)
        }
        fn sync(&self) -> Result<()> {
            let now = self
                .files
                .iter()
                .map(|f| f.as_ref().map(header_of).unwrap_or_default())
                .collect();
            self.synced.borrow_mut().push(now);
            if self.fail_sync {
                return Err(KmsError::io("sync", std::io::Error::other("injected")));
            }
            Ok(())
        }
    }

    fn header_of(f: &File) -> Vec<u8> {
        let mut h = vec![0u8; HEADER_LEN];
        f.read_exact_at(&mut h, 0).unwrap();
        h
    }

    /// The key versions of a header's non-empty slots, newest first.
    fn versions(p: &dyn KeyProvider, h: &[u8]) -> Vec<Option<u32>> {
        header::parse(Kind::File, h)
            .unwrap()
            .slots
            .iter()
            .map(|s| p.key_of(&s.blob).unwrap().1)
            .collect()
    }

    /// `n` files with fresh headers under `key`, and their data keys.
    fn files(
        dir: &Path,
        p: &dyn KeyProvider,
        caller: &Caller,
        key: &str,
        n: usize,
    ) -> (Vec<File>, Vec<Vec<u8>>) {
        (0..n)
            .map(|i| {
                let (h, u) = cipherdir::new_header(Kind::File, p, caller, key).unwrap();
                let path = dir.join(format!("f{i}"));
                std::fs::write(&path, h).unwrap();
                (open_rw(&path).unwrap(), u.data_key.to_vec())
            })
            .unzip()
    }

    #[test]
    fn a_batch_clears_old_slots_only_after_one_sync_of_every_new_one() {
        let (d, p, caller, key) = provider_with_key();
        let (fs, keys) = files(d.path(), &p, &caller, &key, 3);
        p.kms().rotate_key_on_demand(&caller, &key).unwrap();
        let batch = Recorded::new(fs.into_iter().map(Ok).collect());
        let out = rewrap_batch(&batch, &p, &caller, None);
        for o in &out {
            assert!(
                matches!(o, Ok(Outcome::Rewrapped { from, to }) if from.1 == Some(1) && to.1 == Some(2)),
                "{o:?}"
            );
        }
        let synced = batch.synced.borrow();
        assert_eq!(synced.len(), 2, "two syncs for the whole batch");
        for h in &synced[0] {
            assert_eq!(
                versions(&p, h),
                [Some(2), Some(1)],
                "both wrappings at the first"
            );
        }
        for (i, f) in batch.files.iter().enumerate() {
            let h = header_of(f.as_ref().unwrap());
            assert_eq!(synced[1][i], h);
            assert_eq!(
                versions(&p, &h),
                [Some(2)],
                "only the new one at the second"
            );
            let u = cipherdir::unwrap_header(Kind::File, &h, &p, &caller)
                .ok()
                .unwrap();
            assert_eq!(*u.data_key, keys[i], "the same data key");
        }
        // Nothing left to do: no write, no sync.
        let again = Recorded::new(
            batch
                .files
                .iter()
                .map(|f| {
                    f.as_ref()
                        .unwrap()
                        .try_clone()
                        .map_err(|e| KmsError::io("", e))
                })
                .collect(),
        );
        assert!(
            rewrap_batch(&again, &p, &caller, None)
                .iter()
                .all(|o| matches!(o, Ok(Outcome::Current)))
        );
        assert!(again.synced.borrow().is_empty());
    }

    #[test]
    fn a_stale_old_slot_is_cleared_after_a_sync() {
        let (d, p, caller, key) = provider_with_key();
        let (fs, _) = files(d.path(), &p, &caller, &key, 1);
        p.kms().rotate_key_on_demand(&caller, &key).unwrap();
        let batch = Recorded::new(vec![Ok(fs[0].try_clone().unwrap())]);
        rewrap_batch(&batch, &p, &caller, None);
        // As a crash between the two slot writes leaves it: both wrappings.
        fs[0].write_all_at(&batch.synced.borrow()[0][0], 0).unwrap();
        let batch = Recorded::new(vec![Ok(fs[0].try_clone().unwrap())]);
        let out = rewrap_batch(&batch, &p, &caller, None);
        assert!(matches!(out[0], Ok(Outcome::Current)), "{out:?}");
        let synced = batch.synced.borrow();
        assert_eq!(synced.len(), 2);
        assert_eq!(versions(&p, &synced[0][0]), [Some(2), Some(1)]);
        assert_eq!(versions(&p, &header_of(&fs[0])), [Some(2)]);
    }

    #[test]
    fn a_failed_sync_leaves_every_old_slot() {
        let (d, p, caller, key) = provider_with_key();
        let (fs, _) = files(d.path(), &p, &caller, &key, 2);
        p.kms().rotate_key_on_demand(&caller, &key).unwrap();
        let mut batch = Recorded::new(fs.into_iter().map(Ok).collect());
        batch.fail_sync = true;
        let out = rewrap_batch(&batch, &p, &caller, None);
        assert!(
            out.iter()
                .all(|o| o.as_ref().is_err_and(|e| e.message.contains("injected")))
        );
        assert_eq!(batch.synced.borrow().len(), 1, "no second sync");
        for f in &batch.files {
            let h = header_of(f.as_ref().unwrap());
            assert_eq!(
                versions(&p, &h),
                [Some(2), Some(1)],
                "the old wrapping stays"
            );
        }
    }

    #[test]
    fn a_header_replaced_during_the_batch_is_left_as_it_is_and_the_others_are_rewrapped() {
        let (d, p, caller, key) = provider_with_key();
        let (mut fs, _) = files(d.path(), &p, &caller, &key, 3);
        p.kms().rotate_key_on_demand(&caller, &key).unwrap();
        // What a truncate to 0 writes meanwhile: a header of its own.
        let (replacement, _) = cipherdir::new_header(Kind::File, &p, &caller, &key).unwrap();
        let missing = Err(KmsError::validation("f3: no such file"));
        let mut batch = Recorded::new(fs.drain(..).map(Ok).chain([missing]).collect());
        batch.before_write = Some((1, replacement.to_vec()));
        let out = rewrap_batch(&batch, &p, &caller, None);
        assert!(matches!(out[0], Ok(Outcome::Rewrapped { .. })), "{out:?}");
        assert!(
            out[1]
                .as_ref()
                .is_err_and(|e| e.message.contains("changed")),
            "{out:?}"
        );
        assert!(matches!(out[2], Ok(Outcome::Rewrapped { .. })), "{out:?}");
        assert!(
            out[3]
                .as_ref()
                .is_err_and(|e| e.message.contains("no such file"))
        );
        let file = |i: usize| header_of(batch.files[i].as_ref().unwrap());
        assert_eq!(file(1), replacement, "the replacement is untouched");
        assert_eq!(versions(&p, &file(0)), [Some(2)]);
        assert_eq!(versions(&p, &file(2)), [Some(2)]);
    }

    #[test]
    fn a_header_reached_twice_is_rewrapped_once() {
        let (d, p, caller, key) = provider_with_key();
        let (fs, _) = files(d.path(), &p, &caller, &key, 2);
        p.kms().rotate_key_on_demand(&caller, &key).unwrap();
        // f0 by two names, as hard links are: the same inode twice.
        std::fs::hard_link(d.path().join("f0"), d.path().join("f0-link")).unwrap();
        let link = open_rw(&d.path().join("f0-link")).unwrap();
        let batch = Recorded::new(
            [fs[0].try_clone(), fs[1].try_clone(), Ok(link)]
                .into_iter()
                .map(|f| f.map_err(|e| KmsError::io("", e)))
                .collect(),
        );
        let out = rewrap_batch(&batch, &p, &caller, None);
        assert!(
            out.iter()
                .all(|o| matches!(o, Ok(Outcome::Rewrapped { .. }))),
            "{out:?}"
        );
        assert_eq!(out[0], out[2]);
        assert_eq!(versions(&p, &header_of(&fs[0])), [Some(2)]);
        assert_eq!(batch.synced.borrow().len(), 2);
    }
}
