//! What the kernel's page cache holds of a file: the flags of OPEN and CREATE replies.
//!
//! **Direct writes.** Writes are synchronous here (no write-back cache: a write reaches the
//! backing file before it returns), so caching a write costs a copy of it into pages that
//! seldom serve a read. A file opened for writing while it has no other open descriptor gets
//! FOPEN_DIRECT_IO: its writes go from the caller's memory to the daemon, and written plaintext
//! does not stay in kernel memory. A file's open descriptors are all direct or all cached: the
//! first open decides, and later opens follow it while any is open. The kernel drops cached
//! pages only before a direct write, so a cached reader beside a direct writer could cache old
//! bytes in between and keep them; with one mode per file a reader opened first keeps the
//! writes cached (and coherent, as before), and a reader opened beside a direct writer reads
//! past the cache. (A descriptor closed a moment ago counts until its release reaches the
//! daemon: an open right after it may follow its mode, which costs speed, not coherence.)
//! Shared mappings of a direct descriptor still use the page cache
//! (FUSE_DIRECT_IO_ALLOW_MMAP, Linux 6.6+; without it the mount caches every write).
//!
//! **Kept cache.** What the kernel cached of a file survives the next open (FOPEN_KEEP_CACHE)
//! when the backing file is as it was at an earlier open: same inode, size, mtime and ctime
//! (as libfuse's auto_cache). Any change behind the mount, or through it, drops the cache at the
//! next open. Timestamps are coarse (a clock tick, or whole seconds on some filesystems), so a
//! change in the same tick as the one before leaves them as they were: a state is only recorded
//! once its ctime is older than the tick (git's "racily clean" entries, the same problem). And
//! a state recorded by an open whose reply the kernel may not have acted on yet (that reply is
//! what drops the old pages) is not trusted for a while either.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// FOPEN_DIRECT_IO: reads and writes through this descriptor go to the daemon as they are.
pub const FOPEN_DIRECT_IO: u32 = 1 << 0;

/// FOPEN_KEEP_CACHE: the kernel keeps the file's cached pages at this open.
pub const FOPEN_KEEP_CACHE: u32 = 1 << 1;

/// The reply flags for a descriptor that is `direct` or not, and for which the kernel may keep
/// what it cached (`keep_cache`).
pub fn open_reply_flags(direct: bool, keep_cache: bool) -> u32 {
    let mut f = 0;
    if direct {
        f |= FOPEN_DIRECT_IO;
    }
    if keep_cache {
        f |= FOPEN_KEEP_CACHE;
    }
    f
}

/// Whether an open with `flags` (the open(2) flags the kernel passes on) would like to be
/// direct, with `direct_writes` as the mount has it: if it may write.
pub fn wants_direct(flags: i32, direct_writes: bool) -> bool {
    direct_writes && flags & libc::O_ACCMODE != libc::O_RDONLY
}

/// The descriptors a file has open, by mode: never both at once (see the module comment).
#[derive(Debug, Default)]
pub struct Modes {
    cached: u64,
    direct: u64,
}

impl Modes {
    /// Counts a new descriptor and says whether it is direct: as it wants if it is the only
    /// one, else as the others are.
    pub fn admit(&mut self, wants_direct: bool) -> bool {
        let direct = match (self.cached, self.direct) {
            (0, 0) => wants_direct,
            (_, 0) => false,
            _ => true,
        };
        if direct {
            self.direct += 1;
        } else {
            self.cached += 1;
        }
        direct
    }

    /// A descriptor admitted as `direct` was released.
    pub fn leave(&mut self, direct: bool) {
        let n = if direct {
            &mut self.direct
        } else {
            &mut self.cached
        };
        *n = n.saturating_sub(1);
    }
}

/// A backing file's state as far as cached content goes: a write, truncation or replacement
/// changes at least one of these (ctime cannot be set back by users).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

/// How much older than now a ctime must be to be trusted. Linux stamps files from a clock that
/// advances every 1 to 10 ms; whole seconds where the filesystem keeps no fraction.
const FINE_TICK: Duration = Duration::from_millis(100);
const WHOLE_SECONDS_TICK: Duration = Duration::from_secs(2);

impl Stamp {
    /// Whether a change after `now` would leave a different stamp: the ctime is more than a
    /// timestamp tick in the past.
    pub fn settled(&self, now: SystemTime) -> bool {
        let tick = if self.ctime.1 == 0 && self.mtime.1 == 0 {
            WHOLE_SECONDS_TICK
        } else {
            FINE_TICK
        };
        let (Ok(secs), Ok(nanos)) = (u64::try_from(self.ctime.0), u32::try_from(self.ctime.1))
        else {
            return false;
        };
        let ctime = UNIX_EPOCH + Duration::new(secs, nanos);
        now.duration_since(ctime).is_ok_and(|age| age > tick)
    }

    pub fn of(m: &std::fs::Metadata) -> Stamp {
        use std::os::unix::fs::MetadataExt;
        Stamp {
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
    }
}

/// How long after an open a state it recorded is trusted: until then the kernel may not have
/// acted on that open's reply, which drops the pages cached before a change.
const REPLY_SETTLE: Duration = Duration::from_millis(100);

/// A state recorded at an open, and when.
#[derive(Debug, Clone, Copy)]
pub struct Recorded {
    stamp: Stamp,
    at: Instant,
}

impl Recorded {
    pub fn new(stamp: Stamp, at: Instant) -> Recorded {
        Recorded { stamp, at }
    }

    pub fn stamp(&self) -> Stamp {
        self.stamp
    }

    /// Whether an open at `at` that sees `now` may keep the kernel's cache.
    pub fn keeps(&self, now: Stamp, at: Instant) -> bool {
        self.stamp == now && at.saturating_duration_since(self.at) >= REPLY_SETTLE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_writable_opens_want_direct_and_only_when_the_mount_says_so() {
        for (flags, writable) in [
            (libc::O_RDONLY, false),
            (libc::O_RDONLY | libc::O_NONBLOCK | libc::O_CLOEXEC, false),
            (libc::O_WRONLY, true),
            (libc::O_WRONLY | libc::O_APPEND | libc::O_CREAT, true),
            (libc::O_RDWR, true),
            (libc::O_RDWR | libc::O_TRUNC, true),
        ] {
            assert_eq!(wants_direct(flags, true), writable, "flags {flags:#o}");
            assert!(!wants_direct(flags, false), "flags {flags:#o}");
        }
    }

    #[test]
    fn reply_flags() {
        assert_eq!(open_reply_flags(false, false), 0);
        assert_eq!(open_reply_flags(true, false), FOPEN_DIRECT_IO);
        assert_eq!(open_reply_flags(false, true), FOPEN_KEEP_CACHE);
        assert_eq!(
            open_reply_flags(true, true),
            FOPEN_DIRECT_IO | FOPEN_KEEP_CACHE
        );
    }

    #[test]
    fn the_first_descriptor_decides_and_later_ones_follow_while_any_is_open() {
        let mut m = Modes::default();
        assert!(m.admit(true), "alone: as it wants");
        assert!(
            m.admit(false),
            "a reader beside a direct writer is direct too"
        );
        m.leave(true);
        m.leave(true);
        assert!(!m.admit(false), "alone again: cached");
        assert!(
            !m.admit(true),
            "a writer beside a cached reader stays cached"
        );
        m.leave(false);
        assert!(!m.admit(true), "one cached descriptor still open");
        m.leave(false);
        m.leave(false);
        assert!(m.admit(true), "all closed: the next decides");
    }

    #[test]
    fn a_recorded_state_is_trusted_once_its_open_has_settled() {
        let s = Stamp {
            ino: 1,
            size: 2,
            mtime: (3, 4),
            ctime: (5, 6),
        };
        let t0 = Instant::now();
        let r = Recorded::new(s, t0);
        assert!(
            !r.keeps(s, t0 + Duration::from_millis(10)),
            "its reply may be in flight"
        );
        assert!(r.keeps(s, t0 + Duration::from_millis(150)));
        let other = Stamp { size: 3, ..s };
        assert!(!r.keeps(other, t0 + Duration::from_secs(5)), "changed");
    }

    #[test]
    fn a_stamp_settles_once_its_ctime_is_a_tick_old() {
        let at = |secs: i64, nanos: i64| Stamp {
            ino: 1,
            size: 1,
            mtime: (secs, nanos),
            ctime: (secs, nanos),
        };
        let now = UNIX_EPOCH + Duration::new(1_000_000, 500_000_000);
        assert!(!at(1_000_000, 450_000_000).settled(now), "50 ms old");
        assert!(at(1_000_000, 300_000_000).settled(now), "200 ms old");
        assert!(!at(1_000_001, 0).settled(now), "in the future");
        assert!(!at(1_000_000, 0).settled(now), "whole seconds, 1.5 s old");
        assert!(at(999_997, 0).settled(now), "whole seconds, 3.5 s old");
        assert!(!at(-5, 0).settled(now), "before 1970: not trusted");
    }

    #[test]
    fn stamps_change_with_content_times_and_identity() {
        use std::io::Write;
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("f");
        std::fs::write(&p, b"abc").expect("write");
        let stamp = || Stamp::of(&std::fs::metadata(&p).expect("stat"));
        let first = stamp();
        assert_eq!(stamp(), first, "unchanged, same stamp");
        let f = std::fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .expect("open");
        (&f).write_all(b"d").expect("append");
        let grown = stamp();
        assert_ne!(grown, first);
        // Same size, mtime set back by hand.
        f.set_times(std::fs::FileTimes::new().set_modified(std::time::UNIX_EPOCH))
            .expect("set mtime");
        let touched = stamp();
        assert_ne!(touched, grown);
        // Replaced by another file with the same bytes: another inode.
        let q = dir.path().join("g");
        std::fs::write(&q, b"abcd").expect("write");
        let same_bytes = Stamp::of(&std::fs::metadata(&q).expect("stat"));
        std::fs::rename(&q, &p).expect("rename");
        assert_ne!(stamp(), touched);
        assert_eq!(stamp().ino, same_bytes.ino);
    }
}
