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

/// FOPEN_DIRECT_IO: reads and writes through this descriptor go to the daemon as they are.
pub const FOPEN_DIRECT_IO: u32 = 1 << 0;

/// The reply flags for an open with `flags` (the open(2) flags the kernel passes on), with
/// `direct_writes` as the mount has it.
pub fn open_reply_flags(flags: i32, direct_writes: bool) -> u32 {
    let writable = flags & libc::O_ACCMODE != libc::O_RDONLY;
    if direct_writes && writable {
        FOPEN_DIRECT_IO
    } else {
        0
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
            assert_eq!(open_reply_flags(flags, true), want, "flags {flags:#o}");
            assert_eq!(open_reply_flags(flags, false), 0, "flags {flags:#o}");
        }
    }
}
