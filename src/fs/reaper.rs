//! Frees deleted backing files off the request path.
//!
//! When an unlink removes a backing file's last name, the backing filesystem frees the file
//! inside that unlinkat (every page on tmpfs, the blocks and inode on a disk filesystem), and
//! the process that unlinked waits for all of it; a large file holds up the whole queue that
//! serves the request. So an unlink holds the file open (O_PATH) across its unlinkat, and the
//! reaper closes that descriptor a moment later on a thread of its own (normal priority, any
//! CPU): the kernel frees the file then, after the reply has gone.
//!
//! Space comes back a moment later than the name goes. So statfs first `settle`s (frees what
//! is pending, waits for a free in progress), and `df` right after `rm` shows the space free;
//! every operation that takes space first calls `settle_for` its size, which settles when the
//! backing filesystem has less than that plus `MARGIN` free, so an operation that follows a
//! delete on a nearly full volume finds the space it gave back. At most `limit` descriptors
//! wait; past that a descriptor is closed on the spot. A crash loses nothing: the kernel
//! closes the daemon's descriptors, and frees the files, when the process ends.
//!
//! Only on local filesystems (`sys::on_local_fs`): on NFS a held file's unlink becomes a
//! rename to `.nfsXXXX`, which would keep its directory from being removed.

use crate::fs::lock;
use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use nix::fcntl::OFlag;

/// How long the thread rests after being woken, so that a run of unlinks costs one wake-up
/// and not one per file.
const REST: Duration = Duration::from_millis(1);

/// Descriptors held at most: 1024, or a sixteenth of the descriptor limit if that is lower.
const HELD_MAX: usize = 1024;

/// Free space beyond an operation's own size under which it waits for pending frees: room
/// for its metadata (headers, directory entries, undo records) and for other writers.
const MARGIN: u64 = 64 << 20;

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
    /// The backing filesystem's root (for its free space).
    root: PathBuf,
    /// Files handed over so far, to be freed later (`kmsfs status`).
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

impl Reaper {
    /// A reaper for the cipher directory at `root`: holding files only on a local filesystem.
    pub fn for_dir(root: &Path) -> Reaper {
        let local = std::fs::File::open(root)
            .is_ok_and(|d| crate::fs::sys::on_local_fs(&d).unwrap_or(false));
        if !local {
            log::info!(
                "{}: not a local filesystem, deletes free inline",
                root.display()
            );
            return Reaper::with_limit(root, 0);
        }
        let soft = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .map_or(1024, |(soft, _)| soft);
        Reaper::with_limit(
            root,
            HELD_MAX.min(usize::try_from(soft / 16).unwrap_or(HELD_MAX)),
        )
    }

    /// A reaper for `root` holding at most `limit` descriptors (0: none, every file freed
    /// inline).
    pub fn with_limit(root: &Path, limit: usize) -> Reaper {
        Reaper {
            shared: Arc::default(),
            thread: OnceLock::new(),
            limit,
            root: root.to_path_buf(),
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
        let mut q = lock(&self.shared.queue);
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
    /// for a close in progress (the thread's, or another settle's: `closing` is held
    /// throughout).
    pub fn settle(&self) {
        if self.shared.outstanding.load(Ordering::SeqCst) == 0 {
            return;
        }
        let _closing = lock(&self.shared.closing);
        let pending = std::mem::take(&mut lock(&self.shared.queue).held);
        let n = pending.len();
        drop(pending);
        self.shared.outstanding.fetch_sub(n, Ordering::SeqCst);
    }

    /// Before an operation that takes about `need` bytes: settles if frees are pending and
    /// the backing filesystem has less than `need` + `MARGIN` free (or cannot say).
    pub fn settle_for(&self, need: u64) {
        if self.shared.outstanding.load(Ordering::SeqCst) == 0 {
            return;
        }
        let free = nix::sys::statvfs::statvfs(&self.root)
            .ok()
            .map(|s| s.blocks_available().saturating_mul(s.fragment_size()));
        if short_of(free, need) {
            self.settle();
        }
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

/// Whether `free` bytes (None: unknown) may be too few for an operation taking `need`.
fn short_of(free: Option<u64>, need: u64) -> bool {
    free.is_none_or(|f| f < need.saturating_add(MARGIN))
}

fn run(shared: &Shared) {
    // Started from an unlink, maybe on a queue thread pinned to one CPU and in the idle
    // class: run on any CPU, at normal priority (a settle may wait for this thread).
    crate::fs::sys::unpin_thread();
    if let Err(e) = crate::fs::sys::set_sched_policy(libc::SCHED_OTHER) {
        log::debug!("reaper thread's scheduling policy: {e}");
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

    /// Releases the write ends of `n` pipes to `r`; returns their read ends.
    fn release_pipes(r: &Reaper, n: usize) -> Vec<std::fs::File> {
        (0..n)
            .map(|_| {
                let (rd, w) = pipe();
                r.release(w);
                rd
            })
            .collect()
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
        let r = Reaper::with_limit(Path::new("/"), 64);
        let mut ends = release_pipes(&r, 50);
        r.settle();
        assert!(ends.iter_mut().all(closed));
        assert_eq!(r.stats().pending, 0);
    }

    #[test]
    fn the_thread_closes_released_descriptors_by_itself() {
        let r = Reaper::with_limit(Path::new("/"), 64);
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
        let r = Reaper::with_limit(Path::new("/"), 2);
        // Keeps the thread from closing any while the queue fills.
        let closing = lock(&r.shared.closing);
        let mut ends = release_pipes(&r, 20);
        let open = ends.iter_mut().map(closed).filter(|c| !c).count();
        assert_eq!(r.stats().pending, 2);
        assert_eq!(open, 2, "the rest were closed at once");
        drop(closing);
        r.settle();
        assert!(ends.iter_mut().all(closed));
    }

    #[test]
    fn dropping_the_reaper_closes_what_it_holds() {
        let r = Reaper::with_limit(Path::new("/"), 64);
        let closing = lock(&r.shared.closing);
        let mut ends = release_pipes(&r, 10);
        drop(closing);
        drop(r);
        assert!(ends.iter_mut().all(closed));
    }

    #[test]
    fn settle_waits_for_a_close_in_progress() {
        let r = Reaper::with_limit(Path::new("/"), 64);
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
        let r = Reaper::with_limit(Path::new("/"), 64);
        let closing = lock(&r.shared.closing);
        std::thread::scope(|s| {
            let t = s.spawn(|| r.settle());
            let start = Instant::now();
            while !t.is_finished() && start.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(1));
            }
            let done = t.is_finished();
            drop(closing);
            assert!(done, "settle waited with nothing outstanding");
        });
    }

    #[test]
    fn an_operation_settles_unless_there_is_room_to_spare() {
        assert!(short_of(None, 0), "unknown free space");
        assert!(short_of(Some(MARGIN - 1), 0));
        assert!(!short_of(Some(MARGIN), 0));
        assert!(short_of(Some(MARGIN + 99), 100));
        assert!(!short_of(Some(MARGIN + 100), 100));
        assert!(short_of(Some(u64::MAX - 1), u64::MAX), "no overflow");
    }

    #[test]
    fn settle_for_more_than_is_free_frees_what_is_pending() {
        let r = Reaper::with_limit(Path::new("/"), 64);
        let closing = lock(&r.shared.closing);
        let (mut rd, w) = pipe();
        r.release(w);
        drop(closing);
        r.settle_for(u64::MAX);
        assert!(closed(&mut rd));
        assert_eq!(r.stats().pending, 0);
    }

    /// A thread's CPU mask (empty if it cannot be read).
    fn mask_of(tid: libc::pid_t) -> Vec<usize> {
        // SAFETY: a zeroed cpu_set_t is a valid set, filled by the kernel; CPU_ISSET reads it.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            if libc::sched_getaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
                return Vec::new();
            }
            (0..libc::CPU_SETSIZE as usize)
                .filter(|&c| libc::CPU_ISSET(c, &set))
                .collect()
        }
    }

    /// Started from a queue thread pinned to one CPU and in the idle class, the thread still
    /// runs at normal priority (a settle may wait for it) on the process's CPUs.
    #[test]
    fn the_thread_runs_at_normal_priority_whoever_starts_it() {
        if !nix::unistd::geteuid().is_root() {
            return; // leaving the idle class takes CAP_SYS_NICE
        }
        let r = Reaper::with_limit(Path::new("/"), 8);
        std::thread::scope(|s| {
            s.spawn(|| {
                crate::fs::sys::pin_thread(0).unwrap();
                crate::fs::sys::set_sched_policy(libc::SCHED_IDLE).unwrap();
                started(&r);
            })
            .join()
            .unwrap()
        });
        let mut seen = 0;
        for task in std::fs::read_dir("/proc/self/task").unwrap() {
            let task = task.unwrap();
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            if comm.trim() != "kmsfs-reaper" {
                continue;
            }
            let tid: libc::pid_t = task.file_name().to_string_lossy().parse().unwrap();
            // SAFETY: queries another thread's policy by id; no memory is passed.
            let policy = unsafe { libc::sched_getscheduler(tid) };
            // A reaper of another test may have ended since the listing (-1: ESRCH).
            if policy == -1 {
                continue;
            }
            assert_eq!(policy, libc::SCHED_OTHER);
            let main = nix::unistd::getpid().as_raw();
            assert_eq!(mask_of(tid), mask_of(main), "CPUs of the process");
            seen += 1;
        }
        assert!(seen > 0, "no reaper thread found");
    }

    #[test]
    fn a_held_file_outlives_its_unlink_until_released() {
        let d = tempfile::tempdir().unwrap();
        let dir: OwnedFd = std::fs::File::open(d.path()).unwrap().into();
        std::fs::write(d.path().join("f"), b"data").unwrap();
        let r = Reaper::with_limit(Path::new("/"), 8);
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
            Reaper::with_limit(Path::new("/"), 0)
                .hold(&dir, OsStr::new("."))
                .is_none(),
            "disabled"
        );
    }
}
