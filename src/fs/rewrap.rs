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
use std::os::unix::fs::FileExt;
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
    if is_current(provider, caller, &from, &target)? {
        // A re-wrap cut between its two slot writes left the old wrapping: clear it now.
        let other = header::slot_offset(1 - u.slot);
        if h[other..other + SLOT_LEN].iter().any(|b| *b != 0) {
            file.write_all_at(&[0u8; SLOT_LEN], other as u64)
                .and_then(|_| file.sync_data())
                .map_err(|e| KmsError::io("clearing a stale header slot", e))?;
        }
        return Ok(Outcome::Current);
    }
    let ctx = kind.context(&u.id);
    let w = provider.rewrap_key(caller, &u.blob, &u.data_key, &ctx, &target)?;
    // The new wrapping is made durable below: the records of its key uses first.
    provider.flush_audit()?;
    let slot = header::encode_slot(kind, &u.id, u.generation + 1, &w.blob, &u.data_key)
        .map_err(|e| KmsError::internal(format!("header slot: {e:?}")))?;
    let other = 1 - u.slot;
    file.write_all_at(&slot, header::slot_offset(other) as u64)
        .and_then(|_| file.sync_data())
        .map_err(|e| KmsError::io("writing header", e))?;
    // Then clear the old slot, so no wrapping under the old key version remains. Either slot
    // write may be cut by a crash; the other slot is whole at every moment.
    file.write_all_at(&[0u8; SLOT_LEN], header::slot_offset(u.slot) as u64)
        .and_then(|_| file.sync_data())
        .map_err(|e| KmsError::io("clearing the old header slot", e))?;
    Ok(Outcome::Rewrapped {
        from,
        to: (w.key.clone(), w.version),
    })
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

/// Re-wraps every header of an unmounted cipher directory. `only` limits it to headers whose
/// key is that one (a key id). `progress` is called after each header with (done, total), and
/// returns false to stop there (each header is whole at every moment, so a rerun continues).
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
    for (i, (p, kind)) in targets.iter().enumerate() {
        let selected =
            only.is_none_or(|k| newest_key(p, *kind, provider).is_some_and(|(id, _)| id == k));
        if selected {
            let r = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(p)
                .map_err(|e| KmsError::validation(format!("{}: {e}", p.display())))
                .and_then(|f| rewrap_file(&f, *kind, provider, caller, to));
            tally(r, p, &mut s);
        }
        if !progress(i as u64 + 1, total) {
            s.stopped = Some((i as u64 + 1, total));
            return Ok(s);
        }
    }
    let vol_selected =
        only.is_none_or(|k| inventory_volume_key(root, provider).is_some_and(|(id, _)| id == k));
    if vol_selected {
        let r = rewrap_volume(root, provider, caller, to);
        tally(r, &root.join(CONFIG_FILE), &mut s);
    }
    Ok(s)
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
