//! Crash-atomic file replacement and private file creation.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Private files: owner read/write only.
pub const FILE_MODE: u32 = 0o600;
pub const DIR_MODE: u32 = 0o700;

/// Writes `data` to a temporary file beside `path`, fsyncs it, renames it over `path` and fsyncs
/// the directory, so a crash leaves either the old or the new content, never a mix.
pub fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    replace(path, data, true)
}

/// `write_atomic` without syncing the directory: after a power loss the rename may be undone
/// (the old file comes back whole). For files whose staleness is detected and tolerated, such
/// as audit.head, this saves a directory sync on every write.
pub fn write_atomic_lazy_rename(path: &Path, data: &[u8]) -> io::Result<()> {
    replace(path, data, false)
}

fn replace(path: &Path, data: &[u8], durable_rename: bool) -> io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no parent"))?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let tmp = dir.join(format!(
        ".{}.tmp.{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(FILE_MODE)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        if durable_rename {
            sync_dir(dir)?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// `write_atomic` relative to an open directory, for paths that may exceed PATH_MAX.
pub fn write_atomic_at(dir: &std::os::fd::OwnedFd, name: &str, data: &[u8]) -> io::Result<()> {
    use nix::fcntl::{OFlag, openat, renameat};
    use nix::sys::stat::Mode;
    let tmp = format!(".{name}.tmp.{}", std::process::id());
    let result = (|| {
        let fd = openat(
            dir,
            tmp.as_str(),
            OFlag::O_WRONLY
                | OFlag::O_CREAT
                | OFlag::O_TRUNC
                | OFlag::O_CLOEXEC
                | OFlag::O_NOFOLLOW,
            Mode::from_bits_truncate(FILE_MODE),
        )?;
        let mut f = File::from(fd);
        f.write_all(data)?;
        f.sync_all()?;
        renameat(dir, tmp.as_str(), dir, name)?;
        let d = openat(
            dir,
            ".",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        File::from(d).sync_all()
    })();
    if result.is_err() {
        let _ = nix::unistd::unlinkat(dir, tmp.as_str(), nix::unistd::UnlinkatFlags::NoRemoveDir);
    }
    result
}

/// Creates `name` in `dir` (which must not have it) holding `data`, synced: one sync where
/// `write_atomic_at` needs two and a rename. For a file in a directory no one else uses yet
/// (a new directory's key, written before the mkdir returns), where a crash can only leave the
/// file short in an otherwise empty directory, which the rename would not save either (the
/// directory would then have no key at all).
pub fn write_new_at(dir: &std::os::fd::OwnedFd, name: &str, data: &[u8]) -> io::Result<()> {
    use nix::fcntl::{OFlag, openat};
    use nix::sys::stat::Mode;
    let fd = openat(
        dir,
        name,
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
        Mode::from_bits_truncate(FILE_MODE),
    )?;
    let mut f = File::from(fd);
    let result = f.write_all(data).and_then(|_| f.sync_all());
    if result.is_err() {
        let _ = nix::unistd::unlinkat(dir, name, nix::unistd::UnlinkatFlags::NoRemoveDir);
    }
    result
}

pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates a directory (and parents) and makes the last component private.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(DIR_MODE))
}

/// Opens (creating if needed) a private file for appending.
pub fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .read(true)
        .mode(FILE_MODE)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_content_with_private_mode() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            FILE_MODE
        );
        assert_eq!(
            fs::read_dir(d.path()).unwrap().count(),
            1,
            "no temp file left"
        );
    }

    #[test]
    fn a_new_file_is_made_once_and_never_through_a_link() {
        let d = tempfile::tempdir().unwrap();
        let dir = std::os::fd::OwnedFd::from(File::open(d.path()).unwrap());
        write_new_at(&dir, "k", b"key").unwrap();
        assert_eq!(fs::read(d.path().join("k")).unwrap(), b"key");
        assert_eq!(
            fs::metadata(d.path().join("k"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            FILE_MODE
        );
        let e = write_new_at(&dir, "k", b"other").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(d.path().join("k")).unwrap(), b"key", "left alone");
        std::os::unix::fs::symlink(d.path().join("target"), d.path().join("l")).unwrap();
        assert!(write_new_at(&dir, "l", b"x").is_err());
        assert!(!d.path().join("target").exists());
    }
}
