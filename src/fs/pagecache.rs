//! What the kernel's page cache holds of an open file: the flags of an OPEN or CREATE reply.
//!
//! A descriptor opened for writing bypasses the page cache (direct I/O). Writes are synchronous
//! here anyway (no write-back cache: a write reaches the backing file before it returns), and
//! every open drops the file's cached pages (no FOPEN_KEEP_CACHE), so caching a write only cost
//! a copy of it into pages that seldom served a read; without it a 1 MiB write is one copy
//! shorter, and written plaintext does not stay in kernel memory. Reads through such a
//! descriptor are not cached either (each reaches the daemon). Shared mappings still use the
//! page cache, which the kernel keeps coherent with direct writes (FUSE_DIRECT_IO_ALLOW_MMAP,
//! Linux 6.6+; without it the mount caches writes as before). Read-only descriptors keep the
//! page cache and its readahead.
//!
//! What the kernel cached of a file survives the next open (FOPEN_KEEP_CACHE) when the backing
//! file is as it was at the previous open: same inode, size, mtime and ctime (as libfuse's
//! auto_cache). Any change behind the mount, or through it, drops the cache at the next open.
//! Timestamps are coarse (a clock tick, or whole seconds on some filesystems), so a change in
//! the same tick as the one before leaves them as they were: a state is only recorded once its
//! ctime is older than the tick (git's "racily clean" entries, the same problem).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// FOPEN_DIRECT_IO: reads and writes through this descriptor go to the daemon as they are.
pub const FOPEN_DIRECT_IO: u32 = 1 << 0;

/// FOPEN_KEEP_CACHE: the kernel keeps the file's cached pages at this open.
pub const FOPEN_KEEP_CACHE: u32 = 1 << 1;

/// The reply flags for an open with `flags` (the open(2) flags the kernel passes on), with
/// `direct_writes` as the mount has it; `keep_cache` when what the kernel cached is current.
pub fn open_reply_flags(flags: i32, direct_writes: bool, keep_cache: bool) -> u32 {
    let writable = flags & libc::O_ACCMODE != libc::O_RDONLY;
    let mut f = 0;
    if direct_writes && writable {
        f |= FOPEN_DIRECT_IO;
    }
    if keep_cache {
        f |= FOPEN_KEEP_CACHE;
    }
    f
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_writable_opens_bypass_the_cache_and_only_when_the_mount_says_so() {
        for (flags, writable) in [
            (libc::O_RDONLY, false),
            (libc::O_RDONLY | libc::O_NONBLOCK | libc::O_CLOEXEC, false),
            (libc::O_WRONLY, true),
            (libc::O_WRONLY | libc::O_APPEND | libc::O_CREAT, true),
            (libc::O_RDWR, true),
            (libc::O_RDWR | libc::O_TRUNC, true),
        ] {
            let want = if writable { FOPEN_DIRECT_IO } else { 0 };
            assert_eq!(
                open_reply_flags(flags, true, false),
                want,
                "flags {flags:#o}"
            );
            assert_eq!(open_reply_flags(flags, false, false), 0, "flags {flags:#o}");
            assert_eq!(
                open_reply_flags(flags, true, true),
                want | FOPEN_KEEP_CACHE,
                "flags {flags:#o}"
            );
            assert_eq!(open_reply_flags(flags, false, true), FOPEN_KEEP_CACHE);
        }
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
