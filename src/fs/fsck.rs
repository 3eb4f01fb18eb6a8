//! Checking a cipher directory without mounting it: every header, every block, every name and
//! symlink target. Problems are reported with the plaintext path where it can be recovered.

use crate::error::{ErrorKind, KmsError, Result};
use crate::fs::cipherdir::{self, HeaderFailure, Volume};
use crate::fs::fileio::FileContent;
use crate::fs::header::{DataKeys, HEADER_LEN, Kind};
use crate::fs::nametransform::{
    self as nt, DIRKEY_FILE, EntryKind, LONGNAME_PREFIX, LONGNAME_SUFFIX, REENCRYPT_TMP_PREFIX,
};
use crate::fs::undo::{self, Journal, Pending};
use crate::kms::Caller;
use crate::provider::KeyProvider;
use serde::Serialize;
use std::collections::HashSet;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Problem {
    /// The CMK's material was destroyed after its scheduled deletion: unreadable for good.
    CryptoShredded,
    /// The CMK exists but may not be used now (disabled, pending deletion, denied).
    KeyUnusable,
    CorruptHeader,
    CorruptBlocks,
    /// The backing length cannot belong to a kmsfs file (cut inside a block or the header).
    Truncated,
    /// An interrupted write left an incomplete tail after an intact end; the next mount's open
    /// of the file removes it.
    TornTail,
    /// A crash interrupted an in-place rewrite; its undo record puts the old bytes back at the
    /// file's next open through a mount.
    InterruptedWrite,
    /// An undo record whose file is gone (`--repair-names` removes it).
    OrphanUndoRecord,
    /// A temporary left by an interrupted `reencrypt` (`--repair-names` removes it).
    OrphanTemporary,
    UndecryptableName,
    OrphanLongName,
    MissingDirectoryKey,
    CorruptSymlink,
    Unreadable,
}

#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// Plaintext path where known, else the backing path.
    pub path: String,
    pub backing: PathBuf,
    pub problem: Problem,
    pub detail: String,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct Report {
    pub files: u64,
    pub directories: u64,
    pub symlinks: u64,
    pub findings: Vec<Finding>,
    /// Harmless remains of interrupted work (orphan undo records and reencrypt temporaries):
    /// they take space but affect no file, so they do not count as problems.
    pub leftovers: Vec<Finding>,
    /// What `--repair-names` did.
    pub repairs: Vec<String>,
}

/// The directory (under the root) that `--repair-names` moves entries with lost names into.
pub const LOST_FOUND: &str = "lost+found";

fn kms_problem(e: &KmsError) -> Problem {
    match e.kind {
        _ if e.is_deleted_key() => Problem::CryptoShredded,
        ErrorKind::Disabled | ErrorKind::KmsInvalidState | ErrorKind::AccessDenied => {
            Problem::KeyUnusable
        }
        // A key this store never had, a bad blob: the header is damaged (or the store is wrong).
        _ => Problem::CorruptHeader,
    }
}

struct Checker<'a> {
    provider: &'a dyn KeyProvider,
    caller: &'a Caller,
    /// None if the volume key cannot be unwrapped (symlink targets are then not checked).
    volume: Option<&'a Volume>,
    report: Report,
    progress: &'a mut dyn FnMut(u64),
    journal: Option<std::sync::Arc<Journal>>,
    /// File ids seen in headers, to find undo records without a file.
    ids: HashSet<[u8; 16]>,
}

impl Checker<'_> {
    fn find(&mut self, path: &str, backing: &Path, problem: Problem, detail: impl Into<String>) {
        let list = match problem {
            Problem::OrphanUndoRecord | Problem::OrphanTemporary => &mut self.report.leftovers,
            _ => &mut self.report.findings,
        };
        list.push(Finding {
            path: path.to_string(),
            backing: backing.to_path_buf(),
            problem,
            detail: detail.into(),
        });
    }

    fn unwrap(
        &mut self,
        kind: Kind,
        data: &[u8],
        path: &str,
        backing: &Path,
    ) -> Option<cipherdir::Unwrapped> {
        match cipherdir::unwrap_header(kind, data, self.provider, self.caller) {
            Ok(u) => Some(u),
            Err(HeaderFailure::Corrupt(why)) => {
                self.find(path, backing, Problem::CorruptHeader, why);
                None
            }
            Err(HeaderFailure::Kms(e)) => {
                let p = kms_problem(&e);
                self.find(path, backing, p, e.to_string());
                None
            }
        }
    }

    fn check_file(&mut self, path: &str, backing: &Path) {
        self.report.files += 1;
        let file = match File::open(backing) {
            Ok(f) => f,
            Err(e) => return self.find(path, backing, Problem::Unreadable, e.to_string()),
        };
        if file.metadata().is_ok_and(|m| m.len() == 0) {
            // Created, or truncated to 0, by a mount that stopped before writing the header: an
            // empty file, given a header when next opened.
            return;
        }
        let mut h = vec![0u8; HEADER_LEN];
        if file.read_exact_at(&mut h, 0).is_err() {
            return self.find(path, backing, Problem::Truncated, "shorter than its header");
        }
        if let Ok(parsed) = crate::fs::header::parse(Kind::File, &h) {
            self.ids.insert(parsed.id);
        }
        let Some(u) = self.unwrap(Kind::File, &h, path, backing) else {
            return;
        };
        if let Some(j) = &self.journal {
            if let Ok(Pending::Restore(r)) = j.pending(&u.id) {
                return self.find(
                    path,
                    backing,
                    Problem::InterruptedWrite,
                    format!(
                        "a crash interrupted a rewrite of {} bytes at {}; the next open through a mount undoes it",
                        r.bytes.len(),
                        r.offset
                    ),
                );
            }
        }
        let keys = DataKeys::derive(&u.data_key, &u.id);
        let mut c = FileContent::new(file, &keys, u.id, &h, backing.display().to_string(), None);
        c.supersede();
        if let Ok(Some(end)) = c.torn_tail() {
            return self.find(
                path,
                backing,
                Problem::TornTail,
                if end == crate::fs::contentenc::EMPTY_LEN {
                    "its first write was interrupted (or its empty block was put back from an \
                     old copy): the next open through a mount makes it empty again"
                        .to_string()
                } else {
                    format!("an interrupted write left a tail after byte {end}")
                },
            );
        }
        match c.bad_blocks() {
            Ok(b) if b.is_empty() => {}
            Ok(b) => {
                let shown: Vec<String> = b.iter().take(20).map(u64::to_string).collect();
                self.find(
                    path,
                    backing,
                    Problem::CorruptBlocks,
                    format!("blocks {} fail authentication", shown.join(", ")),
                );
            }
            Err(_) => self.find(
                path,
                backing,
                Problem::Truncated,
                "the backing length is not a valid file length",
            ),
        }
    }

    fn check_dir(&mut self, path: &str, dir: &Path) {
        self.report.directories += 1;
        (self.progress)(self.report.files + self.report.directories);
        let names = match std::fs::read(dir.join(DIRKEY_FILE)) {
            Ok(data) => self
                .unwrap(Kind::DirKey, &data, path, &dir.join(DIRKEY_FILE))
                .map(|u| DataKeys::derive(&u.data_key, &u.id).names),
            Err(_) => {
                self.find(
                    path,
                    dir,
                    Problem::MissingDirectoryKey,
                    "no kmsfs.dirkey: names cannot be decrypted",
                );
                None
            }
        };
        let entries = match std::fs::read_dir(dir) {
            Ok(rd) => rd,
            Err(e) => return self.find(path, dir, Problem::Unreadable, e.to_string()),
        };
        let mut entries: Vec<_> = entries.flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let raw = e.file_name();
            let Some(name) = raw.to_str() else { continue };
            let backing = e.path();
            if name.ends_with(LONGNAME_SUFFIX) && name.starts_with(LONGNAME_PREFIX) {
                let entry = &name[..name.len() - LONGNAME_SUFFIX.len()];
                if !dir.join(entry).exists() {
                    self.find(
                        &format!("{path}/?"),
                        &backing,
                        Problem::OrphanLongName,
                        "side file without its entry",
                    );
                }
                continue;
            }
            if name.starts_with(REENCRYPT_TMP_PREFIX) {
                self.find(
                    &format!("{path}/?"),
                    &backing,
                    Problem::OrphanTemporary,
                    "left by an interrupted reencrypt",
                );
                continue;
            }
            let encoded = match nt::classify(name) {
                EntryKind::Internal => continue,
                EntryKind::Encrypted => Some(name.to_string()),
                EntryKind::LongName => {
                    std::fs::read_to_string(dir.join(format!("{name}{LONGNAME_SUFFIX}")))
                        .ok()
                        .filter(|full| nt::long_name_matches(name, full))
                }
            };
            let plain = match (&names, encoded) {
                (Some(k), Some(enc)) => nt::decrypt(k, &enc)
                    .ok()
                    .map(|n| String::from_utf8_lossy(&n).into_owned()),
                _ => None,
            };
            let child = match &plain {
                Some(n) => format!("{path}/{n}"),
                None => {
                    if names.is_some() {
                        self.find(
                            &format!("{path}/?"),
                            &backing,
                            Problem::UndecryptableName,
                            "the name does not decrypt in this directory",
                        );
                    }
                    format!("{path}/?{name}")
                }
            };
            let Ok(t) = e.file_type() else { continue };
            if t.is_dir() {
                self.check_dir(&child, &backing);
            } else if t.is_file() {
                self.check_file(&child, &backing);
                (self.progress)(self.report.files + self.report.directories);
            } else if t.is_symlink() {
                self.report.symlinks += 1;
                let Some(v) = self.volume else { continue };
                let ok = std::fs::read_link(&backing)
                    .ok()
                    .and_then(|t| {
                        cipherdir::decrypt_symlink(&v.keys, t.as_os_str().as_encoded_bytes())
                    })
                    .is_some();
                if !ok {
                    self.find(
                        &child,
                        &backing,
                        Problem::CorruptSymlink,
                        "the target fails authentication",
                    );
                }
            }
        }
    }
}

/// Repairs what the name findings allow: orphan long-name side files are removed, and entries
/// whose names do not decrypt are moved into `/lost+found` under new names (their contents, keyed
/// by their own headers, stay readable there).
pub fn repair_names(
    root: &Path,
    report: &mut Report,
    provider: &dyn KeyProvider,
    caller: &Caller,
    key: &str,
) -> Result<()> {
    let io = |p: &Path, e: std::io::Error| KmsError::validation(format!("{}: {e}", p.display()));
    let lost: Vec<PathBuf> = report
        .findings
        .iter()
        .filter(|f| f.problem == Problem::UndecryptableName)
        .map(|f| f.backing.clone())
        .collect();
    for f in report.findings.iter().chain(&report.leftovers).filter(|f| {
        matches!(
            f.problem,
            Problem::OrphanLongName | Problem::OrphanUndoRecord | Problem::OrphanTemporary
        )
    }) {
        std::fs::remove_file(&f.backing).map_err(|e| io(&f.backing, e))?;
        report
            .repairs
            .push(format!("removed orphan {}", f.backing.display()));
    }
    if lost.is_empty() {
        return Ok(());
    }
    let names_of = |dir: &Path| -> Result<zeroize::Zeroizing<[u8; 64]>> {
        let data = std::fs::read(dir.join(DIRKEY_FILE)).map_err(|e| io(dir, e))?;
        let u = cipherdir::unwrap_header(Kind::DirKey, &data, provider, caller).map_err(
            |f| match f {
                HeaderFailure::Kms(e) => e,
                HeaderFailure::Corrupt(why) => {
                    KmsError::validation(format!("{}: {why}", dir.display()))
                }
            },
        )?;
        Ok(DataKeys::derive(&u.data_key, &u.id).names)
    };
    let lf_name = nt::encrypt(&*names_of(root)?, LOST_FOUND.as_bytes())
        .map_err(|_| KmsError::internal("lost+found name"))?;
    let lf = root.join(lf_name.entry());
    if !lf.exists() {
        std::fs::create_dir(&lf).map_err(|e| io(&lf, e))?;
        cipherdir::create_dirkey(&lf, provider, caller, key)?;
        report.repairs.push(format!("created /{LOST_FOUND}"));
    }
    let lf_names = names_of(&lf)?;
    for from in lost {
        let backing = from.file_name().and_then(|n| n.to_str()).unwrap_or("entry");
        let digest = hex::encode(&crate::cryptocore::sha256(backing.as_bytes())[..6]);
        let plain = format!("lost-{digest}");
        let bn = nt::encrypt(&lf_names, plain.as_bytes())
            .map_err(|_| KmsError::internal("lost name"))?;
        let to = lf.join(bn.entry());
        std::fs::rename(&from, &to).map_err(|e| io(&from, e))?;
        report
            .repairs
            .push(format!("moved {} to /{LOST_FOUND}/{plain}", from.display()));
    }
    Ok(())
}

/// Checks a whole cipher directory. `progress` gets the number of inodes checked so far.
pub fn fsck(
    root: &Path,
    provider: &dyn KeyProvider,
    caller: &Caller,
    progress: &mut dyn FnMut(u64),
) -> Result<Report> {
    if !root.join(crate::fs::nametransform::CONFIG_FILE).is_file() {
        return Err(KmsError::validation(format!(
            "{} is not a kmsfs cipher directory",
            root.display()
        )));
    }
    let (volume, volume_problem) = match cipherdir::open(root, provider, caller) {
        Ok(v) => (Some(v), None),
        Err(e) if e.kind == ErrorKind::Validation => return Err(e),
        Err(e) => (None, Some(e)),
    };
    let mut c = Checker {
        provider,
        caller,
        volume: volume.as_ref(),
        report: Report::default(),
        progress,
        journal: Journal::open(root, false).ok().flatten(),
        ids: HashSet::new(),
    };
    if let Some(e) = volume_problem {
        let p = kms_problem(&e);
        c.find(
            "/",
            &root.join(crate::fs::nametransform::CONFIG_FILE),
            p,
            format!("volume key: {e}"),
        );
    }
    c.check_dir("", root);
    let ids = Journal::ids(root).map_err(|e| KmsError::io(root.display(), e))?;
    let orphans: Vec<_> = ids.into_iter().filter(|id| !c.ids.contains(id)).collect();
    for id in orphans {
        let backing = root.join(undo::JOURNAL_DIR).join(hex::encode(id));
        c.find(
            "/",
            &backing,
            Problem::OrphanUndoRecord,
            "an undo record for a file that no longer exists",
        );
    }
    Ok(c.report)
}
