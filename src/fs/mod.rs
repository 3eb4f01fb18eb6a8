//! The encrypted filesystem: a FUSE view of a cipher directory, with per-file data keys wrapped by
//! a CMK through the key provider.

pub mod cipherdir;
pub mod contentenc;
pub mod dekcache;
pub mod errno;
pub mod fileio;
pub mod fsck;
pub mod fuse;
pub mod header;
pub mod inodes;
pub mod keyring;
pub mod mount;
pub mod nametransform;
pub mod notify;
pub mod ops;
pub mod pagecache;
pub mod reaper;
pub mod rewrap;
pub mod sys;
pub mod undo;
pub mod uring;

/// Locks `m`. A panic while holding a lock would poison it; the data stays consistent for
/// the filesystem's uses, so the lock is taken anyway.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
