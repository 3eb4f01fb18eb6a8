//! Frees deleted backing files off the request path.
//!
//! When an unlink removes a backing file's last name, the backing filesystem frees the file
//! inside that unlinkat (every page on tmpfs, the blocks and inode on a disk filesystem), and
//! the process that unlinked waits for all of it; a large file holds up the whole queue that
//! serves the request. So an unlink holds the file open (O_PATH) across its unlinkat, and the
//! reaper closes that descriptor a moment later on a thread of its own: the kernel frees the
//! file then, after the reply has gone, on whichever CPU is free.
//!
//! Space comes back a moment later than the name goes: every operation that takes space
//! (create, write, mkdir, rename, setxattr...) and statfs first `settle` (free what is
//! pending, wait for a free in progress), so an operation that follows a delete finds its
//! space free, and `df` right after `rm` shows it. At most `limit` descriptors wait; past
//! that, and whenever the queue's lock is taken, a descriptor is closed on the spot. A crash
//! loses nothing: the kernel closes the daemon's descriptors, and frees the files, when the
//! process ends. Only on local filesystems (`sys::on_local_fs`): on NFS a held file's unlink
//! becomes a rename to `.nfsXXXX`, which would keep its directory from being removed.

use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError, TryLockError};
use std::thread::JoinHandle;
use std::time::Duration;

use nix::fcntl::OFlag;

/// How long the thread rests after being woken, so that a run of unlinks costs one wake-up
/// and not one per file.
const REST: Duration = Duration::from_millis(1);

/// Descriptors held at most: 1024, or a sixteenth of the descriptor limit if that is lower.
const HELD_MAX: usize = 1024;

#[derive(Default)]
struct Queue {
    held: Vec<OwnedFd>,
    /// The thread is waiting for a descriptor, and must be woken for one.
    waiting: bool,
    stopping: bool,
}

#[derive(Default)]
struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    /// Held by the thread around each close (taken before the pop), so `settle` can wait for
    /// the one in progress.
    closing: Mutex<()>,
    /// Descriptors queued or being closed: `settle` has nothing to do while it is 0.
    outstanding: AtomicUsize,
}

pub struct Reaper {
    shared: Arc<Shared>,
    /// Started with the first descriptor (from whichever thread unlinks); None if it could
    /// not be.
    thread: OnceLock<Option<JoinHandle<()>>>,
    limit: usize,
    /// Files freed here so far (`kmsfs status`).
    deferred: AtomicU64,
}

/// What `kmsfs status` shows of the reaper.
#[derive(Debug, Clone, Copy, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ReaperStats {
    pub enabled: bool,
    pub pending: usize,
    pub deferred: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Reaper {
    /// A reaper for the cipher directory at `root`: holding files only on a local filesystem.
    pub fn for_dir(root: &std::path::Path) -> Reaper {
        let local = std::fs::File::open(root)
            .is_ok_and(|d| crate::fs::sys::on_local_fs(&d).unwrap_or(false));
        if !local {
            log::info!(
                "{}: not a local filesystem, deletes free inline",
                root.display()
            );
            return Reaper::with_limit(0);
        }
        let soft = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .map_or(1024, |(soft, _)| soft);
        Reaper::with_limit(HELD_MAX.min(usize::try_from(soft / 16).unwrap_or(HELD_MAX)))
    }

    /// A reaper holding at most `limit` descriptors (0: none, every file freed inline).
    pub fn with_limit(limit: usize) -> Reaper {
        Reaper {
            shared: Arc::default(),
            thread: OnceLock::new(),
            limit,
            deferred: AtomicU64::new(0),
        }
    }

    /// Opens `dir/name` (O_PATH, not through a symlink) to keep the file from being freed by
    /// the unlink about to remove it; None if it cannot be held, and it is freed as before.
    pub fn hold(&self, dir: &OwnedFd, name: &OsStr) -> Option<OwnedFd> {
        if self.limit == 0 || self.thread().is_none() {
            return None;
        }
        nix::fcntl::openat(
            dir,
            name,
            OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .ok()
    }

    /// Closes `fd` later, on the reaper's thread (now, if it cannot wait).
    pub fn release(&self, fd: OwnedFd) {
        if self.thread().is_none() {
            return;
        }
        // Never wait for the reaper's thread, which may be preempted holding the lock.
        let mut q = match self.shared.queue.try_lock() {
            Ok(q) => q,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return,
        };
        if q.stopping || q.held.len() >= self.limit {
            drop(q);
            drop(fd);
            return;
        }
        // Counted before it can be taken (under this lock) and uncounted once closed.
        self.shared.outstanding.fetch_add(1, Ordering::SeqCst);
        q.held.push(fd);
        self.deferred.fetch_add(1, Ordering::Relaxed);
        if std::mem::take(&mut q.waiting) {
            self.shared.wake.notify_one();
        }
    }

    /// Frees everything released before this call: closes what is queued here, and waits
    /// for the thread's close in progress.
    pub fn settle(&self) {
        if self.shared.outstanding.load(Ordering::SeqCst) == 0 {
            return;
        }
        let pending = std::mem::take(&mut lock(&self.shared.queue).held);
        let n = pending.len();
        drop(pending);
        self.shared.outstanding.fetch_sub(n, Ordering::SeqCst);
        drop(lock(&self.shared.closing));
    }

    pub fn stats(&self) -> ReaperStats {
        ReaperStats {
            enabled: self.limit > 0,
            pending: self.shared.outstanding.load(Ordering::SeqCst),
            deferred: self.deferred.load(Ordering::Relaxed),
        }
    }

    fn thread(&self) -> Option<&JoinHandle<()>> {
        self.thread
            .get_or_init(|| {
                let shared = self.shared.clone();
                std::thread::Builder::new()
                    .name("kmsfs-reaper".into())
                    .spawn(move || run(&shared))
                    .map_err(|e| log::warn!("no reaper thread (deletes free inline): {e}"))
                    .ok()
            })
            .as_ref()
    }
}

impl Drop for Reaper {
    /// Frees everything still held before the filesystem goes.
    fn drop(&mut self) {
        lock(&self.shared.queue).stopping = true;
        self.shared.wake.notify_one();
        if let Some(Some(t)) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(shared: &Shared) {
    // Started from an unlink, maybe on a queue thread pinned to one CPU: run on any.
    crate::fs::sys::unpin_thread();
    loop {
        let stopping = {
            let mut q = lock(&shared.queue);
            while q.held.is_empty() && !q.stopping {
                q.waiting = true;
                q = shared.wake.wait(q).unwrap_or_else(PoisonError::into_inner);
            }
            if q.held.is_empty() {
                return;
            }
            q.stopping
        };
        if !stopping {
            std::thread::sleep(REST);
        }
        loop {
            let _closing = lock(&shared.closing);
            let Some(fd) = lock(&shared.queue).held.pop() else {
                break;
            };
            drop(fd);
            shared.outstanding.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::time::Instant;

    /// A pipe whose write end is the held descriptor: the read end sees end-of-file once it
    /// is closed (read returns 0), and EAGAIN while it is open.
    fn pipe() -> (std::fs::File, OwnedFd) {
        let (r, w) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC).unwrap();
        (std::fs::File::from(r), w)
    }

    fn closed(r: &mut std::fs::File) -> bool {
        let mut b = [0u8; 1];
        match r.read(&mut b) {
            Ok(0) => true,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
            other => panic!("unexpected read: {other:?}"),
        }
    }

    /// Waits until the reaper's thread runs and waits for work, so that nothing else takes
    /// the queue's lock.
    fn started(r: &Reaper) {
        assert!(r.thread().is_some());
        let start = Instant::now();
        while !lock(&r.shared.queue).waiting {
            assert!(start.elapsed() < Duration::from_secs(10), "never started");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn settle_closes_everything_released_before_it() {
        let r = Reaper::with_limit(64);
        let mut ends = Vec::new();
        for _ in 0..50 {
            let (rd, w) = pipe();
            r.release(w);
            ends.push(rd);
        }
        r.settle();
        assert!(ends.iter_mut().all(closed));
        assert_eq!(r.stats().pending, 0);
    }

    #[test]
    fn the_thread_closes_released_descriptors_by_itself() {
        let r = Reaper::with_limit(64);
        started(&r);
        let closing = lock(&r.shared.closing);
        let (mut rd, w) = pipe();
        r.release(w);
        assert_eq!(r.stats().pending, 1, "queued, not closed here");
        assert!(!closed(&mut rd));
        drop(closing);
        let start = Instant::now();
        while !closed(&mut rd) {
            assert!(start.elapsed() < Duration::from_secs(10), "never closed");
            std::thread::sleep(Duration::from_millis(1));
        }
        while r.stats().pending > 0 {
            assert!(start.elapsed() < Duration::from_secs(10), "never uncounted");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(r.stats().deferred, 1);
    }

    #[test]
    fn past_the_limit_a_descriptor_is_closed_at_once() {
        let r = Reaper::with_limit(2);
        // Keeps the thread from closing any while the queue fills.
        let closing = lock(&r.shared.closing);
        let mut ends = Vec::new();
        for _ in 0..20 {
            let (rd, w) = pipe();
            r.release(w);
            ends.push(rd);
        }
        let open = ends.iter_mut().map(closed).filter(|c| !c).count();
        assert!(r.stats().pending <= 2);
        assert_eq!(open, r.stats().pending, "each one is either held or closed");
        drop(closing);
        r.settle();
        assert!(ends.iter_mut().all(closed));
    }

    #[test]
    fn dropping_the_reaper_closes_what_it_holds() {
        let r = Reaper::with_limit(64);
        let closing = lock(&r.shared.closing);
        let mut ends = Vec::new();
        for _ in 0..10 {
            let (rd, w) = pipe();
            r.release(w);
            ends.push(rd);
        }
        drop(closing);
        drop(r);
        assert!(ends.iter_mut().all(closed));
    }

    #[test]
    fn settle_waits_for_a_close_in_progress() {
        let r = Reaper::with_limit(64);
        // Stand in for the thread in the middle of a close.
        let closing = lock(&r.shared.closing);
        r.shared.outstanding.fetch_add(1, Ordering::SeqCst);
        let (mut rd, w) = pipe();
        std::thread::scope(|s| {
            let t = s.spawn(|| r.settle());
            std::thread::sleep(Duration::from_millis(50));
            let early = t.is_finished();
            drop(w);
            r.shared.outstanding.fetch_sub(1, Ordering::SeqCst);
            drop(closing);
            t.join().unwrap();
            assert!(!early, "settle returned while a close was running");
        });
        assert!(closed(&mut rd));
    }

    #[test]
    fn with_nothing_outstanding_settle_does_not_wait() {
        let r = Reaper::with_limit(64);
        let _closing = lock(&r.shared.closing);
        r.settle();
    }

    #[test]
    fn a_held_file_outlives_its_unlink_until_released() {
        let d = tempfile::tempdir().unwrap();
        let dir: OwnedFd = std::fs::File::open(d.path()).unwrap().into();
        std::fs::write(d.path().join("f"), b"data").unwrap();
        let r = Reaper::with_limit(8);
        let held = r.hold(&dir, OsStr::new("f")).expect("held");
        let st = nix::sys::stat::fstat(&held).unwrap();
        nix::unistd::unlinkat(&dir, "f", nix::unistd::UnlinkatFlags::NoRemoveDir).unwrap();
        assert_eq!(nix::sys::stat::fstat(&held).unwrap().st_nlink, 0);
        assert_eq!(nix::sys::stat::fstat(&held).unwrap().st_ino, st.st_ino);
        r.release(held);
        r.settle();
        assert_eq!(r.stats().pending, 0);
        assert!(r.hold(&dir, OsStr::new("f")).is_none(), "nothing to hold");
        assert!(
            Reaper::with_limit(0).hold(&dir, OsStr::new(".")).is_none(),
            "disabled"
        );
    }
}
