//! Frees deleted backing files off the request path.
//!
//! When an unlink removes a backing file's last name, the backing filesystem frees the file
//! inside that unlinkat (every page on tmpfs, the blocks and inode on a disk filesystem), and
//! the process that unlinked waits for all of it; a large file holds up the whole queue that
//! serves the request. So an unlink holds the file open (O_PATH) across its unlinkat, and the
//! reaper closes that descriptor later on a thread of its own, in the idle scheduling class:
//! the kernel frees the file then, on a CPU with nothing else to do, after the reply has gone.
//!
//! Space comes back a moment later than the name goes, and nothing is lost: an operation that
//! runs out of backing space while frees are pending waits for them (`settle`) and tries once
//! more, and statfs settles first, so `df` right after `rm` shows the space as free. At most
//! `limit` descriptors wait; past that, and whenever the queue's lock is taken, a descriptor
//! is closed on the spot as before. A crash loses nothing either: the kernel closes the
//! daemon's descriptors, and frees the files, when the process ends.

use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError, TryLockError};
use std::thread::JoinHandle;
use std::time::Duration;

use nix::fcntl::OFlag;

/// How long the thread rests after being woken, so that a run of unlinks costs one wake-up
/// and not one per file.
const REST: Duration = Duration::from_millis(1);

/// Descriptors held at most: 1024, or an eighth of the descriptor limit if that is lower.
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
}

pub struct Reaper {
    shared: Arc<Shared>,
    /// Started with the first descriptor; None if it could not be.
    thread: OnceLock<Option<JoinHandle<()>>>,
    limit: usize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Default for Reaper {
    fn default() -> Reaper {
        let soft = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .map_or(1024, |(soft, _)| soft);
        Reaper::with_limit(HELD_MAX.min(usize::try_from(soft / 8).unwrap_or(HELD_MAX)))
    }
}

impl Reaper {
    pub fn with_limit(limit: usize) -> Reaper {
        Reaper {
            shared: Arc::default(),
            thread: OnceLock::new(),
            limit,
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
        // Never wait for the reaper, which may be preempted holding the lock: close here.
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
        q.held.push(fd);
        if std::mem::take(&mut q.waiting) {
            self.shared.wake.notify_one();
        }
    }

    /// Frees what is pending now, waiting for a free in progress; says whether there was any
    /// (space may have come back since an operation ran out of it).
    pub fn settle(&self) -> bool {
        let pending = std::mem::take(&mut lock(&self.shared.queue).held);
        let had = !pending.is_empty();
        drop(pending);
        let busy = matches!(
            self.shared.closing.try_lock(),
            Err(TryLockError::WouldBlock)
        );
        if busy {
            drop(lock(&self.shared.closing));
        }
        had || busy
    }

    /// Descriptors waiting now (`kmsfs status`, tests).
    pub fn pending(&self) -> usize {
        lock(&self.shared.queue).held.len()
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
    // It only ever enters the idle class, which needs no privilege.
    if let Err(e) = crate::fs::sys::set_sched_policy(libc::SCHED_IDLE) {
        log::debug!("reaper stays at normal priority: {e}");
    }
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
        assert_eq!(r.pending(), 0);
    }

    #[test]
    fn the_thread_closes_released_descriptors_by_itself() {
        let r = Reaper::with_limit(64);
        let (mut rd, w) = pipe();
        r.release(w);
        let start = Instant::now();
        while !closed(&mut rd) {
            assert!(start.elapsed() < Duration::from_secs(10), "never closed");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(r.pending(), 0);
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
        assert!(r.pending() <= 2);
        assert_eq!(open, r.pending(), "each one is either held or closed");
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
        let (mut rd, w) = pipe();
        let waited = std::thread::scope(|s| {
            let t = s.spawn(|| r.settle());
            std::thread::sleep(Duration::from_millis(50));
            assert!(
                !t.is_finished(),
                "settle returned while a close was running"
            );
            drop(w);
            drop(closing);
            t.join().unwrap()
        });
        assert!(waited);
        assert!(closed(&mut rd));
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
        assert_eq!(r.pending(), 0);
        assert!(r.hold(&dir, OsStr::new("f")).is_none(), "nothing to hold");
    }
}
