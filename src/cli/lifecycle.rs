//! `kmsfs set-key`, `kmsfs rewrap` and `kmsfs key versions-in-use`.

use crate::cli::args::{Global, RewrapArgs, SetKeyArgs};
use crate::cli::commands::open_kms;
use crate::cli::interrupt;
use crate::cli::output;
use crate::cli::progress::Progress;
use crate::config::Config;
use crate::error::{KmsError, Result};
use crate::fs::mount::is_mount_point;
use crate::fs::nametransform::CONFIG_FILE;
use crate::fs::ops::{KEY_XATTR, REENCRYPT_XATTR, REWRAP_ENTRIES_XATTR, REWRAP_XATTR};
use crate::fs::{rewrap, sys};
use crate::kms::Caller;
use crate::provider::LocalProvider;
use serde_json::json;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

fn xattr_error(path: &Path, e: crate::fs::errno::Errno) -> KmsError {
    let why = match e.0 {
        libc::EOPNOTSUPP | libc::ENODATA => "not on a kmsfs mount".to_string(),
        libc::EACCES => {
            "access denied (file permissions, or the key policy: see `kmsfs audit show`)".into()
        }
        libc::EINVAL => "invalid request (a key for a directory only; see the mount's log)".into(),
        libc::EIO => "the header failed authentication (see the mount's log)".into(),
        libc::ENOENT => "no such file (removed or replaced while it was worked on?)".into(),
        n => std::io::Error::from_raw_os_error(n).to_string(),
    };
    KmsError::validation(format!("{}: {why}", path.display()))
}

pub fn set_key(a: &SetKeyArgs) -> Result<()> {
    let f = File::open(&a.dir)
        .map_err(|e| KmsError::validation(format!("{}: {e}", a.dir.display())))?;
    sys::fsetxattr(&f, KEY_XATTR.as_bytes(), a.key.as_bytes(), 0)
        .map_err(|e| xattr_error(&a.dir, e))?;
    println!("new files under {} use {}", a.dir.display(), a.key);
    Ok(())
}

/// The `<key id>:<version>` a mounted file's or directory's header names.
pub fn key_of_path(p: &Path) -> Result<String> {
    let f = File::open(p).map_err(|e| KmsError::validation(format!("{}: {e}", p.display())))?;
    let v = sys::fgetxattr(&f, KEY_XATTR.as_bytes()).map_err(|e| xattr_error(p, e))?;
    Ok(String::from_utf8_lossy(&v).into_owned())
}

/// Directories (first) and regular files under a mounted tree; symlinks are not followed.
fn mounted_entries(root: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    visit_mounted(root, |p, _| {
        out.push(p.to_path_buf());
        Ok(true)
    })?;
    Ok(out)
}

/// Calls `f` on `root` and on each directory, then at once on the regular files just listed in it (so their
/// names are still cached by the kernel: no LOOKUP per file), then goes on to the
/// subdirectories. `f` (given whether the path is a directory) returns false to stop. Symlinks
/// are not followed.
fn visit_mounted(root: &Path, mut f: impl FnMut(&Path, bool) -> Result<bool>) -> Result<()> {
    let mut dirs = std::collections::VecDeque::from([root.to_path_buf()]);
    while let Some(d) = dirs.pop_front() {
        // The root may be a single file.
        let is_dir = d.symlink_metadata().is_ok_and(|m| m.is_dir());
        if !f(&d, is_dir)? {
            return Ok(());
        }
        if !is_dir {
            continue;
        }
        let rd = std::fs::read_dir(&d)
            .map_err(|e| KmsError::validation(format!("{}: {e}", d.display())))?;
        for e in rd.flatten() {
            let Ok(t) = e.file_type() else { continue };
            if t.is_dir() {
                dirs.push_back(e.path());
            } else if t.is_file() && !f(&e.path(), false)? {
                return Ok(());
            }
        }
    }
    Ok(())
}

pub fn rewrap(g: &Global, cfg: &Config, a: &RewrapArgs) -> Result<()> {
    interrupt::install();
    if a.path.join(CONFIG_FILE).is_file() {
        return rewrap_offline(g, cfg, a);
    }
    if !is_mount_point(&a.path) {
        return Err(KmsError::validation(format!(
            "{} is neither a kmsfs mount point nor a cipher directory",
            a.path.display()
        )));
    }
    key_of_path(&a.path)?;
    let only = match &a.key {
        Some(k) => Some(open_kms(g, cfg)?.resolve_quiet(k)?.to_string()),
        None => None,
    };
    // Counted first, for the progress line; then visited directory by directory.
    let mut total = 0u64;
    visit_mounted(&a.path, |_, _| {
        total += 1;
        Ok(true)
    })?;
    let mut progress = Progress::new("rewrap", total, a.quiet);
    let value = a.to.clone().unwrap_or_default();
    // Siblings go in batches: the files of one directory, and (apart) its subdirectories.
    let (mut files, mut dirs) = (Batch::new(&value), Batch::new(&value));
    let (mut skipped, mut seen) = (0u64, 0u64);
    visit_mounted(&a.path, |p, is_dir| {
        if interrupt::requested() {
            return Ok(false);
        }
        let selected = match &only {
            Some(k) => key_of_path(p).is_ok_and(|v| v.split(':').next() == Some(k.as_str())),
            None => true,
        };
        if !selected {
            skipped += 1;
            seen += 1;
        } else if p == a.path {
            // The root's key, and the volume key with it.
            files.one(p);
            seen += 1;
        } else if is_dir {
            seen += dirs.add(p);
        } else {
            seen += files.add(p);
        }
        progress.update(seen);
        Ok(true)
    })?;
    if !interrupt::requested() {
        seen += files.send() + dirs.send();
        progress.update(seen);
    }
    progress.finish();
    if interrupt::requested() {
        return Err(interrupt::stopped("rewrap", seen, total));
    }
    files.failed.append(&mut dirs.failed);
    report(g, files.done + dirs.done, skipped, &files.failed)
}

/// The largest `user.kmsfs.rewrap.entries` value sent (the kernel takes up to 64 KiB).
const BATCH_VALUE_MAX: usize = 60 << 10;

/// Entries of one directory that wait to be re-wrapped together, in one request and with one
/// sync in the daemon (`user.kmsfs.rewrap.entries`).
struct Batch<'a> {
    /// The target key (or empty).
    to: &'a str,
    paths: Vec<PathBuf>,
    bytes: usize,
    done: u64,
    failed: Vec<String>,
}

impl<'a> Batch<'a> {
    fn new(to: &'a str) -> Self {
        Batch {
            to,
            paths: Vec::new(),
            bytes: to.len(),
            done: 0,
            failed: Vec::new(),
        }
    }

    /// Adds `p`, first sending the batch if `p` does not fit in it; returns how many were sent.
    fn add(&mut self, p: &Path) -> u64 {
        let len = p.file_name().map_or(0, |n| n.len()) + 1;
        let fits = self.paths.len() < rewrap::MAX_BATCH
            && self.bytes + len <= BATCH_VALUE_MAX
            && self.paths.first().is_none_or(|f| f.parent() == p.parent());
        let sent = if fits { 0 } else { self.send() };
        self.paths.push(p.to_path_buf());
        self.bytes += len;
        sent
    }

    /// Re-wraps the entries waiting; returns how many there were.
    fn send(&mut self) -> u64 {
        let files = std::mem::take(&mut self.paths);
        self.bytes = self.to.len();
        let Some(dir) = files.first().and_then(|p| p.parent()) else {
            return 0;
        };
        let mut value = self.to.as_bytes().to_vec();
        for p in &files {
            value.push(0);
            value.extend_from_slice(p.file_name().unwrap_or_default().as_bytes());
        }
        if sys::lsetxattr(dir, REWRAP_ENTRIES_XATTR.as_bytes(), &value).is_ok() {
            self.done += files.len() as u64;
            return files.len() as u64;
        }
        // One of them failed (the others are done): one at a time, to learn which and why.
        let mut sent = 0;
        for p in &files {
            if interrupt::requested() {
                break;
            }
            self.one(p);
            sent += 1;
        }
        sent
    }

    /// Re-wraps `p` alone (`user.kmsfs.rewrap`), and counts it.
    fn one(&mut self, p: &Path) {
        match sys::lsetxattr(p, REWRAP_XATTR.as_bytes(), self.to.as_bytes()) {
            Ok(()) => self.done += 1,
            Err(e) => self.failed.push(xattr_error(p, e).to_string()),
        }
    }
}

fn report(g: &Global, done: u64, skipped: u64, failed: &[String]) -> Result<()> {
    if !failed.is_empty() {
        for f in failed {
            eprintln!("  {f}");
        }
        return Err(KmsError::validation(format!(
            "{} headers could not be re-wrapped ({done} were checked or re-wrapped); a rerun resumes",
            failed.len()
        )));
    }
    if g.output == crate::cli::args::OutputFormat::Json {
        output::json(&json!({"Checked": done, "Skipped": skipped}))
    } else {
        println!("rewrap: {done} headers checked or re-wrapped, {skipped} skipped, 0 failed");
        Ok(())
    }
}

fn rewrap_offline(g: &Global, cfg: &Config, a: &RewrapArgs) -> Result<()> {
    if let Some(mp) = crate::fs::mount::mounted_at(&a.path) {
        return Err(KmsError::validation(format!(
            "{} is mounted at {}: re-wrap through the mount (`kmsfs rewrap {}`)",
            a.path.display(),
            mp.display(),
            mp.display()
        )));
    }
    let provider = crate::cli::providers::for_cipherdir(g, cfg, &a.path)?;
    let caller = Caller::current();
    let only = a
        .key
        .as_deref()
        .map(|k| provider.key_of_name(&caller, k))
        .transpose()?;
    let mut progress: Option<Progress> = None;
    let s = rewrap::rewrap_offline(
        &a.path,
        provider.as_ref(),
        &caller,
        a.to.as_deref(),
        only.as_deref(),
        |done, total| {
            progress
                .get_or_insert_with(|| Progress::new("rewrap", total, a.quiet))
                .update(done);
            !interrupt::requested()
        },
    )?;
    if let Some(p) = progress.as_mut() {
        p.finish();
    }
    if let Some((done, total)) = s.stopped {
        return Err(interrupt::stopped("rewrap", done, total));
    }
    let failed: Vec<String> = s
        .failed
        .iter()
        .map(|(p, e)| format!("{}: {e}", p.display()))
        .collect();
    report(g, s.rewrapped + s.current, 0, &failed)
}

pub fn versions_in_use(g: &Global, cfg: &Config, cipherdir: &Path) -> Result<()> {
    let provider = crate::cli::providers::for_cipherdir(g, cfg, cipherdir)?;
    let inv = rewrap::inventory(cipherdir, provider.as_ref())?;
    let mut rows: std::collections::BTreeMap<(String, Option<u32>), (u64, u64)> =
        Default::default();
    for (k, n) in &inv.files {
        rows.entry(k.clone()).or_default().0 += n;
    }
    for (k, n) in &inv.dirs {
        rows.entry(k.clone()).or_default().1 += n;
    }
    if g.output == crate::cli::args::OutputFormat::Json {
        let keys: Vec<_> = rows
            .iter()
            .map(|((k, v), (f, d))| json!({"KeyId": k, "KeyVersion": v, "Files": f, "Directories": d}))
            .collect();
        return output::json(&json!({
            "Keys": keys,
            "VolumeKey": inv.volume.as_ref().map(|(k, v)| json!({"KeyId": k, "KeyVersion": v})),
            "Unreadable": inv.unreadable,
        }));
    }
    println!(
        "{:<38} {:>7} {:>9} {:>11}",
        "KEY", "VERSION", "FILES", "DIRECTORIES"
    );
    for ((k, v), (f, d)) in &rows {
        let v = v.map_or("-".into(), |v| v.to_string());
        println!("{k:<38} {v:>7} {f:>9} {d:>11}");
    }
    if let Some((k, v)) = &inv.volume {
        println!(
            "volume key: {k} version {}",
            v.map_or("-".into(), |v| v.to_string())
        );
    }
    for p in &inv.unreadable {
        eprintln!("unreadable header: {}", p.display());
    }
    Ok(())
}

pub fn fsck(g: &Global, cfg: &Config, a: &crate::cli::args::FsckArgs) -> Result<()> {
    if let Some(mp) = crate::fs::mount::mounted_at(&a.cipherdir) {
        return Err(KmsError::validation(format!(
            "{} is mounted at {}: unmount it first (`kmsfs umount {}`)",
            a.cipherdir.display(),
            mp.display(),
            mp.display()
        )));
    }
    let provider = crate::cli::providers::for_cipherdir(g, cfg, &a.cipherdir)?;
    let provider = provider.as_ref();
    let mut progress = Progress::counter("fsck", a.quiet);
    let caller = Caller::current();
    let mut report =
        crate::fs::fsck::fsck(&a.cipherdir, provider, &caller, &mut |n| progress.update(n))?;
    progress.finish();
    if a.repair_names {
        let cfg = crate::fs::cipherdir::read_config(&a.cipherdir)?;
        crate::fs::fsck::repair_names(&a.cipherdir, &mut report, provider, &caller, &cfg.key)?;
        let left = crate::fs::fsck::fsck(&a.cipherdir, provider, &caller, &mut |_| {})?;
        let repairs = std::mem::take(&mut report.repairs);
        report = left;
        report.repairs = repairs;
    }
    if g.output == crate::cli::args::OutputFormat::Json {
        output::json(&report)?;
    } else {
        for r in &report.repairs {
            println!("repaired: {r}");
        }
        for f in &report.findings {
            println!(
                "{:?}: {} ({}): {}",
                f.problem,
                f.path,
                f.backing.display(),
                f.detail
            );
        }
        for f in &report.leftovers {
            println!(
                "leftover {:?}: {}: {} (`--repair-names` removes it)",
                f.problem,
                f.backing.display(),
                f.detail
            );
        }
        println!(
            "fsck: {} files, {} directories, {} symlinks checked; {} problems, {} leftovers",
            report.files,
            report.directories,
            report.symlinks,
            report.findings.len(),
            report.leftovers.len()
        );
    }
    if report.findings.is_empty() {
        Ok(())
    } else {
        Err(KmsError::new(
            crate::error::ErrorKind::FsckProblems,
            format!(
                "{} problems in {}",
                report.findings.len(),
                a.cipherdir.display()
            ),
        ))
    }
}

pub fn retire_version(g: &Global, cfg: &Config, key: &str, below: u32) -> Result<()> {
    let kms = open_kms(g, cfg)?;
    let current = kms
        .describe_key(&Caller::current(), key)?
        .current_key_version;
    if below > current {
        return Err(KmsError::validation(format!(
            "cannot retire version {current} of {key}: it is current (rotate first)"
        )));
    }
    let id = kms.resolve_quiet(key)?.to_string();
    let dirs = kms.cipherdirs()?;
    let provider = LocalProvider::new(kms);
    let mut users = Vec::new();
    for d in dirs.iter().filter(|d| d.join(CONFIG_FILE).is_file()) {
        let inv = rewrap::inventory(d, &provider)?;
        if !inv.unreadable.is_empty() {
            return Err(KmsError::invalid_state(format!(
                "{} has {} headers that cannot be read: retiring could make them unreadable for good",
                d.display(),
                inv.unreadable.len()
            )));
        }
        let old = |k: &(String, Option<u32>)| k.0 == id && k.1.is_some_and(|v| v < below);
        let n: u64 = inv
            .any_slot
            .iter()
            .filter(|(k, _)| old(k))
            .map(|(_, n)| n)
            .sum::<u64>()
            + u64::from(inv.volume.as_ref().is_some_and(old));
        if n > 0 {
            users.push(format!("{} ({n} headers)", d.display()));
        }
    }
    if !users.is_empty() {
        return Err(KmsError::invalid_state(format!(
            "versions below {below} of {key} are still in use by {}: run `kmsfs rewrap` on them first",
            users.join(", ")
        )));
    }
    provider
        .kms()
        .retire_versions(&Caller::current(), key, below)?;
    println!("versions below {below} of {key} no longer decrypt");
    Ok(())
}

pub fn reencrypt(g: &Global, a: &crate::cli::args::ReencryptArgs) -> Result<()> {
    interrupt::install();
    let mut files = Vec::new();
    for p in &a.paths {
        key_of_path(p)?;
        files.extend(
            mounted_entries(p)?
                .into_iter()
                .filter(|e| e.symlink_metadata().is_ok_and(|m| m.is_file())),
        );
    }
    let mut progress = Progress::new("reencrypt", files.len() as u64, a.quiet);
    let (mut done, mut failed) = (0u64, Vec::new());
    for (i, p) in files.iter().enumerate() {
        if interrupt::requested() {
            progress.finish();
            return Err(interrupt::stopped(
                "reencrypt",
                i as u64,
                files.len() as u64,
            ));
        }
        // By path, not through an open descriptor: a read-only open would make the file's
        // descriptors opened meanwhile use the page cache (see `pagecache`: a file's
        // descriptors all follow the first one's mode), writers included.
        let r = std::fs::canonicalize(p)
            .map_err(|e| KmsError::validation(format!("{}: {e}", p.display())))
            .and_then(|real| {
                sys::lsetxattr(&real, REENCRYPT_XATTR.as_bytes(), b"").map_err(|e| match e.0 {
                    libc::EMLINK => KmsError::validation(format!(
                        "{}: has several hard links; re-encrypting would split them",
                        p.display()
                    )),
                    _ => xattr_error(p, e),
                })
            });
        match r {
            Ok(()) => done += 1,
            Err(e) => failed.push(e.to_string()),
        }
        progress.update(i as u64 + 1);
    }
    progress.finish();
    if !failed.is_empty() {
        for f in &failed {
            eprintln!("  {f}");
        }
        return Err(KmsError::validation(format!(
            "{} of {} files could not be re-encrypted ({done} were)",
            failed.len(),
            files.len()
        )));
    }
    if g.output == crate::cli::args::OutputFormat::Json {
        output::json(&json!({ "Reencrypted": done }))
    } else {
        println!("reencrypt: {done} files re-encrypted");
        Ok(())
    }
}
