//! POSIX operations through a real mount, through std::fs and libc calls.

mod common;
use common::*;
use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

fn c(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn errno_of(rc: i32) -> i32 {
    if rc == 0 {
        0
    } else {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
    }
}

fn rename2(a: &Path, b: &Path, flags: u32) -> i32 {
    errno_of(unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            c(a).as_ptr(),
            libc::AT_FDCWD,
            c(b).as_ptr(),
            flags,
        )
    })
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn directories_and_readdir() {
    let m = Mounted::new();
    fs::create_dir_all(m.p("a/b/c")).unwrap();
    for n in ["x", "y", "z"] {
        fs::write(m.p(&format!("a/b/{n}")), n).unwrap();
    }
    assert_eq!(names(&m.p("a/b")), ["c", "x", "y", "z"]);
    assert_eq!(
        fs::remove_dir(m.p("a/b")).unwrap_err().raw_os_error(),
        Some(libc::ENOTEMPTY)
    );
    fs::remove_dir(m.p("a/b/c")).unwrap();
    assert_eq!(names(&m.p("a/b")), ["x", "y", "z"]);
    assert!(fs::metadata(m.p("a")).unwrap().is_dir());
    assert_eq!(fs::metadata(m.p("a")).unwrap().nlink(), 3);
    assert_eq!(
        fs::create_dir(m.p("a")).unwrap_err().kind(),
        std::io::ErrorKind::AlreadyExists
    );
    assert_eq!(
        fs::remove_dir(m.p("a/b/x")).unwrap_err().raw_os_error(),
        Some(libc::ENOTDIR)
    );
    assert_eq!(
        fs::remove_file(m.p("a/b")).unwrap_err().raw_os_error(),
        Some(libc::EISDIR)
    );
    assert_eq!(
        fs::metadata(m.p("nope")).unwrap_err().kind(),
        std::io::ErrorKind::NotFound
    );
    // A large directory lists completely.
    fs::create_dir(m.p("many")).unwrap();
    for i in 0..500 {
        fs::write(m.p(&format!("many/file-{i:04}")), b"").unwrap();
    }
    assert_eq!(names(&m.p("many")).len(), 500);
    fs::remove_dir_all(m.p("a")).unwrap();
    assert!(!m.p("a").exists());
}

#[test]
fn renames_of_every_kind() {
    let m = Mounted::new();
    fs::create_dir_all(m.p("d1/sub")).unwrap();
    fs::create_dir(m.p("d2")).unwrap();
    fs::write(m.p("d1/f"), b"file").unwrap();
    fs::write(m.p("d1/sub/deep"), b"deep").unwrap();
    // Plain, across directories, over an existing file.
    fs::rename(m.p("d1/f"), m.p("d1/g")).unwrap();
    fs::rename(m.p("d1/g"), m.p("d2/g")).unwrap();
    fs::write(m.p("d2/h"), b"old").unwrap();
    fs::rename(m.p("d2/g"), m.p("d2/h")).unwrap();
    assert_eq!(fs::read(m.p("d2/h")).unwrap(), b"file");
    assert_eq!(names(&m.p("d2")), ["h"]);
    // A directory with contents, across directories; then over an empty directory.
    fs::rename(m.p("d1/sub"), m.p("d2/sub2")).unwrap();
    assert_eq!(fs::read(m.p("d2/sub2/deep")).unwrap(), b"deep");
    fs::create_dir(m.p("empty")).unwrap();
    fs::rename(m.p("d2/sub2"), m.p("empty")).unwrap();
    assert_eq!(fs::read(m.p("empty/deep")).unwrap(), b"deep");
    fs::create_dir(m.p("full")).unwrap();
    fs::write(m.p("full/x"), b"").unwrap();
    assert_eq!(
        fs::rename(m.p("empty"), m.p("full"))
            .unwrap_err()
            .raw_os_error(),
        Some(libc::ENOTEMPTY)
    );
    assert_eq!(
        fs::read(m.p("empty/deep")).unwrap(),
        b"deep",
        "a failed rename changes nothing"
    );
    assert_eq!(names(&m.p("full")), ["x"]);
    // RENAME_NOREPLACE and RENAME_EXCHANGE.
    fs::write(m.p("a"), b"A").unwrap();
    fs::write(m.p("b"), b"B").unwrap();
    assert_eq!(
        rename2(&m.p("a"), &m.p("b"), libc::RENAME_NOREPLACE),
        libc::EEXIST
    );
    assert_eq!(rename2(&m.p("a"), &m.p("c"), libc::RENAME_NOREPLACE), 0);
    assert_eq!(rename2(&m.p("c"), &m.p("b"), libc::RENAME_EXCHANGE), 0);
    assert_eq!(fs::read(m.p("b")).unwrap(), b"A");
    assert_eq!(fs::read(m.p("c")).unwrap(), b"B");
    assert_eq!(rename2(&m.p("c"), &m.p("empty"), libc::RENAME_EXCHANGE), 0);
    assert_eq!(fs::read(m.p("c/deep")).unwrap(), b"deep");
    assert_eq!(fs::read(m.p("empty")).unwrap(), b"B");
    // Still right after the kernel forgets everything.
    m.unmount();
    m.mount(&[]);
    assert_eq!(fs::read(m.p("c/deep")).unwrap(), b"deep");
    assert_eq!(fs::read(m.p("d2/h")).unwrap(), b"file");
}

#[test]
fn hard_links_and_symlinks() {
    let m = Mounted::new();
    fs::create_dir(m.p("d")).unwrap();
    fs::write(m.p("orig"), b"shared").unwrap();
    fs::hard_link(m.p("orig"), m.p("d/link")).unwrap();
    assert_eq!(fs::metadata(m.p("orig")).unwrap().nlink(), 2);
    assert_eq!(
        fs::metadata(m.p("orig")).unwrap().ino(),
        fs::metadata(m.p("d/link")).unwrap().ino()
    );
    fs::write(m.p("d/link"), b"changed through the link").unwrap();
    assert_eq!(fs::read(m.p("orig")).unwrap(), b"changed through the link");
    fs::remove_file(m.p("orig")).unwrap();
    assert_eq!(
        fs::read(m.p("d/link")).unwrap(),
        b"changed through the link"
    );
    assert_eq!(fs::metadata(m.p("d/link")).unwrap().nlink(), 1);

    std::os::unix::fs::symlink("d/link", m.p("sym")).unwrap();
    assert_eq!(fs::read_link(m.p("sym")).unwrap(), Path::new("d/link"));
    assert_eq!(fs::read(m.p("sym")).unwrap(), b"changed through the link");
    let meta = fs::symlink_metadata(m.p("sym")).unwrap();
    assert!(meta.file_type().is_symlink());
    assert_eq!(meta.len(), 6, "st_size of a symlink is its target's length");
    let long = "t/".repeat(1500);
    std::os::unix::fs::symlink(&long, m.p("long")).unwrap();
    assert_eq!(fs::read_link(m.p("long")).unwrap(), Path::new(&long));
    std::os::unix::fs::symlink("/nonexistent/dangling", m.p("dangling")).unwrap();
    assert_eq!(
        fs::read_link(m.p("dangling")).unwrap(),
        Path::new("/nonexistent/dangling")
    );
    // A symlink renamed into another directory keeps its target.
    fs::rename(m.p("sym"), m.p("d/sym")).unwrap();
    assert_eq!(fs::read_link(m.p("d/sym")).unwrap(), Path::new("d/link"));
}

#[test]
fn long_names_up_to_255_bytes() {
    let m = Mounted::new();
    let n255 = "n".repeat(255);
    let n200 = "é".repeat(100);
    fs::write(m.p(&n255), b"long").unwrap();
    fs::create_dir(m.p(&n200)).unwrap();
    fs::write(m.p(&format!("{n200}/{n255}")), b"inner").unwrap();
    assert_eq!(fs::read(m.p(&n255)).unwrap(), b"long");
    assert_eq!(names(&m.mnt), {
        let mut v = vec![n200.clone(), n255.clone()];
        v.sort();
        v
    });
    let n256 = "n".repeat(256);
    assert_eq!(
        fs::write(m.p(&n256), b"").unwrap_err().raw_os_error(),
        Some(libc::ENAMETOOLONG)
    );
    let other = "m".repeat(250);
    fs::rename(m.p(&n255), m.p(&other)).unwrap();
    assert_eq!(fs::read(m.p(&other)).unwrap(), b"long");
    fs::hard_link(m.p(&other), m.p(&format!("{n200}/{}", "h".repeat(240)))).unwrap();
    fs::remove_file(m.p(&other)).unwrap();
    fs::remove_dir_all(m.p(&n200)).unwrap();
    assert!(names(&m.mnt).is_empty());
    let left: Vec<_> = fs::read_dir(&m.cipher)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n != "kmsfs.journal")
        .collect();
    assert_eq!(
        fs::read_dir(m.cipher.join("kmsfs.journal"))
            .unwrap()
            .count(),
        0,
        "no undo records after the files are closed"
    );
    assert_eq!(
        left.len(),
        2,
        "only kmsfs.conf and kmsfs.dirkey remain: {left:?}"
    );
}

#[test]
fn attributes_chmod_chown_utimens() {
    let m = Mounted::new();
    let p = m.p("f");
    fs::write(&p, b"x").unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o4751)).unwrap();
    assert_eq!(fs::metadata(&p).unwrap().mode() & 0o7777, 0o4751);
    std::os::unix::fs::chown(&p, Some(1234), Some(5678)).unwrap();
    let meta = fs::metadata(&p).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (1234, 5678));
    let times = [
        libc::timespec {
            tv_sec: 1_000_000_000,
            tv_nsec: 5,
        },
        libc::timespec {
            tv_sec: 1_500_000_000,
            tv_nsec: 123_456_789,
        },
    ];
    assert_eq!(
        errno_of(unsafe { libc::utimensat(libc::AT_FDCWD, c(&p).as_ptr(), times.as_ptr(), 0) }),
        0
    );
    let meta = fs::metadata(&p).unwrap();
    assert_eq!(
        (meta.atime(), meta.mtime(), meta.mtime_nsec()),
        (1_000_000_000, 1_500_000_000, 123_456_789)
    );
    std::os::unix::fs::symlink("f", m.p("s")).unwrap();
    std::os::unix::fs::lchown(m.p("s"), Some(42), Some(43)).unwrap();
    let sm = fs::symlink_metadata(m.p("s")).unwrap();
    assert_eq!((sm.uid(), sm.gid()), (42, 43));
    assert_eq!(
        fs::metadata(&p).unwrap().uid(),
        1234,
        "lchown does not follow"
    );
    // New entries in a setgid directory take its group; subdirectories inherit the bit.
    fs::create_dir(m.p("g")).unwrap();
    std::os::unix::fs::chown(m.p("g"), None, Some(777)).unwrap();
    fs::set_permissions(m.p("g"), fs::Permissions::from_mode(0o2775)).unwrap();
    fs::write(m.p("g/f"), b"").unwrap();
    fs::create_dir(m.p("g/sub")).unwrap();
    assert_eq!(fs::metadata(m.p("g/f")).unwrap().gid(), 777);
    assert_eq!(fs::metadata(m.p("g/sub")).unwrap().mode() & 0o2000, 0o2000);
}

#[test]
fn fifos_xattrs_statfs_fallocate_fsync() {
    let m = Mounted::new();
    let fifo = m.p("fifo");
    assert_eq!(
        errno_of(unsafe { libc::mkfifo(c(&fifo).as_ptr(), 0o644) }),
        0
    );
    use std::os::unix::fs::FileTypeExt;
    assert!(fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());
    fs::remove_file(&fifo).unwrap();

    let p = m.p("x");
    fs::write(&p, b"").unwrap();
    fs::create_dir(m.p("dir")).unwrap();
    for target in [p.clone(), m.p("dir")] {
        let cp = c(&target);
        let set = |n: &str, v: &[u8], flags: i32| {
            let cn = CString::new(n).unwrap();
            errno_of(unsafe {
                libc::setxattr(cp.as_ptr(), cn.as_ptr(), v.as_ptr().cast(), v.len(), flags)
            })
        };
        let get = |n: &str| get_xattr(&target, n).map_err(|e| e.raw_os_error().unwrap());
        assert_eq!(set("user.color", b"blue", 0), 0);
        assert_eq!(get("user.color").unwrap(), b"blue");
        assert_eq!(set("user.color", b"red", libc::XATTR_CREATE), libc::EEXIST);
        assert_eq!(set("user.other", b"v", libc::XATTR_REPLACE), libc::ENODATA);
        assert_eq!(set("user.color", b"green", libc::XATTR_REPLACE), 0);
        assert_eq!(get("user.color").unwrap(), b"green");
        assert_eq!(get("user.none"), Err(libc::ENODATA));
        let mut list = vec![0u8; 256];
        let n = unsafe { libc::listxattr(cp.as_ptr(), list.as_mut_ptr().cast(), list.len()) };
        assert_eq!(&list[..n as usize], b"user.color\0");
        let cn = CString::new("user.color").unwrap();
        assert_eq!(
            errno_of(unsafe { libc::removexattr(cp.as_ptr(), cn.as_ptr()) }),
            0
        );
        assert_eq!(get("user.color"), Err(libc::ENODATA));
        assert_eq!(set("trusted.x", b"v", 0), libc::EOPNOTSUPP);
    }

    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(
        errno_of(unsafe { libc::statvfs(c(&m.mnt).as_ptr(), &mut st) }),
        0
    );
    assert_eq!(st.f_namemax, 255);
    assert!(st.f_blocks > 0);

    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&p)
        .unwrap();
    use std::os::fd::AsRawFd;
    assert_eq!(
        errno_of(unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, 10000) }),
        0
    );
    assert_eq!(fs::metadata(&p).unwrap().len(), 10000);
    assert_eq!(
        errno_of(unsafe { libc::fallocate(f.as_raw_fd(), libc::FALLOC_FL_KEEP_SIZE, 0, 50000) }),
        0
    );
    assert_eq!(fs::metadata(&p).unwrap().len(), 10000);
    f.write_all_at(b"synced", 9000).unwrap();
    f.sync_all().unwrap();
    f.sync_data().unwrap();
    let mut b = [0u8; 6];
    f.read_exact_at(&mut b, 9000).unwrap();
    assert_eq!(&b, b"synced");
}

#[test]
fn shared_writable_mmap() {
    let m = Mounted::new();
    let p = m.p("mapped");
    fs::write(&p, vec![b'.'; 3 * 4096]).unwrap();
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&p)
        .unwrap();
    use std::os::fd::AsRawFd;
    unsafe {
        let len = 3 * 4096;
        let ptr = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        );
        assert_ne!(ptr, libc::MAP_FAILED);
        let s = std::slice::from_raw_parts_mut(ptr as *mut u8, len);
        assert_eq!(s[5000], b'.');
        s[4096..4096 + 7].copy_from_slice(b"MMAPPED");
        assert_eq!(libc::msync(ptr, len, libc::MS_SYNC), 0);
        libc::munmap(ptr, len);
    }
    drop(f);
    m.unmount();
    m.mount(&[]);
    let data = fs::read(&p).unwrap();
    assert_eq!(&data[4096..4103], b"MMAPPED");
    assert_eq!(data.len(), 3 * 4096);
}

/// Pages of a mapping of `len` bytes that are in the page cache.
fn resident_pages(map: *mut libc::c_void, len: usize) -> usize {
    let mut v = vec![0u8; len.div_ceil(4096)];
    assert_eq!(
        unsafe { libc::mincore(map, len, v.as_mut_ptr()) },
        0,
        "mincore"
    );
    v.iter().filter(|b| **b & 1 != 0).count()
}

/// A shared read-only mapping of a whole file, for `resident_pages`.
struct Mapping {
    ptr: *mut libc::c_void,
    len: usize,
    file: fs::File,
}

impl Mapping {
    fn new(p: &Path, len: usize) -> Mapping {
        Mapping::of(fs::File::open(p).unwrap(), len)
    }

    /// A mapping through `file`, which it keeps open.
    fn of(file: fs::File, len: usize) -> Mapping {
        use std::os::fd::AsRawFd;
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED);
        Mapping { ptr, len, file }
    }

    fn resident(&self) -> usize {
        resident_pages(self.ptr, self.len)
    }

    fn file(&self) -> &fs::File {
        &self.file
    }

    /// The mapped bytes (faulting in what is not resident).
    fn bytes(&self) -> Vec<u8> {
        unsafe { std::slice::from_raw_parts(self.ptr as *const u8, self.len) }.to_vec()
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

/// Pages of a 64 KiB file in the page cache right after a write through a read-write
/// descriptor, seen through a shared mapping faulted in before the write. With `writer_first`
/// the writer opens before the mapping's descriptor (which then follows the writer's mode),
/// else after it (and follows the mapping's). The mapping must show the written bytes either
/// way.
fn cached_after_write(extra: &[&str], writer_first: bool) -> usize {
    const LEN: usize = 64 * 1024;
    let m = Mounted::with_args(extra);
    let p = m.p("f");
    fs::write(&p, vec![0u8; LEN]).unwrap();
    // The next open must find no handle of the create's to follow.
    m.wait_released();
    let open_rw = || {
        fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&p)
            .unwrap()
    };
    let (rw, map) = if writer_first {
        let rw = open_rw();
        (rw, Mapping::new(&p, LEN))
    } else {
        let map = Mapping::new(&p, LEN);
        (open_rw(), map)
    };
    assert!(map.bytes().iter().all(|b| *b == 0));
    assert_eq!(map.resident(), 16, "the mapping faulted its pages in");
    let want: Vec<u8> = (0..LEN).map(|i| (i % 251) as u8).collect();
    rw.write_all_at(&want, 0).unwrap();
    let after = map.resident();
    assert!(
        map.bytes() == want,
        "the mapping shows stale bytes after a write ({extra:?}, writer first: {writer_first})"
    );
    after
}

/// Pages cached of a file just created read-write and written through that descriptor, seen by
/// mapping that same descriptor (a mapping of a direct descriptor starts from an empty cache).
fn cached_after_create_and_write(extra: &[&str]) -> usize {
    const LEN: usize = 64 * 1024;
    let m = Mounted::with_args(extra);
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(m.p("new"))
        .unwrap();
    f.write_all_at(&vec![5u8; LEN], 0).unwrap();
    Mapping::of(f, LEN).resident()
}

/// A file opened for writing with no other descriptor open bypasses the page cache (direct
/// I/O): written plaintext is not left in kernel memory, and shared mappings stay coherent
/// with the writes. A writer beside a cached descriptor writes through the cache, so that
/// descriptor never holds stale bytes. A lone read-only descriptor keeps the cache.
/// `--direct-writes off` caches every write. On both transports.
#[test]
fn writable_descriptors_bypass_the_page_cache_unless_turned_off() {
    let mut transports = vec!["off"];
    if Path::new("/sys/module/fuse/parameters/enable_uring").exists() {
        transports.push("on");
    }
    for t in transports {
        let io = ["--io-uring", t];
        let off = ["--io-uring", t, "--direct-writes", "off"];
        assert_eq!(cached_after_write(&io, true), 0, "io_uring {t}");
        assert_eq!(cached_after_write(&io, false), 16, "io_uring {t}");
        assert_eq!(cached_after_write(&off, true), 16, "io_uring {t}");
        assert_eq!(cached_after_create_and_write(&io), 0, "io_uring {t}");
        assert_eq!(cached_after_create_and_write(&off), 16, "io_uring {t}");

        let m = Mounted::with_args(&io);
        fs::write(m.p("r"), vec![1u8; 64 * 1024]).unwrap();
        m.wait_released();
        let map = Mapping::new(&m.p("r"), 64 * 1024);
        let mut b = vec![0u8; 64 * 1024];
        map.file().read_exact_at(&mut b, 0).unwrap();
        assert_eq!(
            map.resident(),
            16,
            "a read-only descriptor's read (io_uring {t})"
        );
    }
}

/// Writes whose data comes from kernel buffers rather than user memory (sendfile, splice from a
/// pipe, copy_file_range) reach files opened for writing, which bypass the page cache.
#[test]
fn sendfile_splice_and_copy_file_range_write_direct_io_files() {
    use std::os::fd::AsRawFd;
    let m = Mounted::new();
    let data: Vec<u8> = (0..(3 << 20) + 123).map(|i| (i * 31 % 253) as u8).collect();
    let src_path = m.env.path("src.bin");
    fs::write(&src_path, &data).unwrap();
    let src = fs::File::open(&src_path).unwrap();
    let create = |name: &str| {
        fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(m.p(name))
            .unwrap()
    };

    let out = create("sendfile");
    let mut off: libc::off_t = 0;
    while (off as usize) < data.len() {
        let n = unsafe {
            libc::sendfile(
                out.as_raw_fd(),
                src.as_raw_fd(),
                &mut off,
                data.len() - off as usize,
            )
        };
        assert!(n > 0, "sendfile: {}", std::io::Error::last_os_error());
    }
    drop(out);

    let out = create("splice");
    let mut pipe = [0i32; 2];
    assert_eq!(unsafe { libc::pipe(pipe.as_mut_ptr()) }, 0);
    let mut at: libc::loff_t = 0;
    while (at as usize) < data.len() {
        let chunk = (data.len() - at as usize).min(64 * 1024);
        let n = unsafe {
            libc::splice(
                src.as_raw_fd(),
                &mut at,
                pipe[1],
                std::ptr::null_mut(),
                chunk,
                0,
            )
        };
        assert!(n > 0, "splice in: {}", std::io::Error::last_os_error());
        let mut moved = 0;
        while moved < n {
            let k = unsafe {
                libc::splice(
                    pipe[0],
                    std::ptr::null_mut(),
                    out.as_raw_fd(),
                    std::ptr::null_mut(),
                    (n - moved) as usize,
                    0,
                )
            };
            assert!(k > 0, "splice out: {}", std::io::Error::last_os_error());
            moved += k;
        }
    }
    unsafe {
        libc::close(pipe[0]);
        libc::close(pipe[1]);
    }
    drop(out);

    let from = fs::File::open(m.p("sendfile")).unwrap();
    let out = create("copied");
    let mut left = data.len();
    while left > 0 {
        let n = unsafe {
            libc::copy_file_range(
                from.as_raw_fd(),
                std::ptr::null_mut(),
                out.as_raw_fd(),
                std::ptr::null_mut(),
                left,
                0,
            )
        };
        assert!(
            n > 0,
            "copy_file_range: {}",
            std::io::Error::last_os_error()
        );
        left -= n as usize;
    }
    drop(out);

    for name in ["sendfile", "splice", "copied"] {
        assert!(
            fs::read(m.p(name)).unwrap() == data,
            "{name}: other bytes read back"
        );
    }
}

/// Reads a whole file through a new read-only descriptor.
fn read_through_new_open(p: &Path, len: usize) {
    let mut b = vec![0u8; len];
    fs::File::open(p).unwrap().read_exact_at(&mut b, 0).unwrap();
}

/// What the kernel cached of a file survives its next open while the backing file is unchanged,
/// and is dropped at the next open after a change behind the mount or a key store change
/// (and, for open files, at the change). `--keep-cache off` drops it at every open. A state is
/// only trusted once its ctime is older than a timestamp tick (100 ms here) and the open that
/// recorded it is 100 ms old: hence the pauses.
#[test]
fn cached_pages_survive_reopening_only_an_unchanged_file() {
    const LEN: usize = 64 * 1024;
    const SETTLE: std::time::Duration = std::time::Duration::from_millis(150);
    let mut transports = vec!["off"];
    if Path::new("/sys/module/fuse/parameters/enable_uring").exists() {
        transports.push("on");
    }
    for t in transports {
        let m = Mounted::with_args(&["--io-uring", t]);
        let p = m.p("f");
        fs::write(&p, vec![7u8; LEN]).unwrap();
        m.wait_released();
        std::thread::sleep(SETTLE);
        read_through_new_open(&p, LEN);
        std::thread::sleep(SETTLE);
        let map = Mapping::new(&p, LEN);
        assert_eq!(map.resident(), 16, "kept at an unchanged file's open ({t})");

        let backing = m.cipher_files();
        let backing = backing
            .iter()
            .max_by_key(|b| fs::metadata(b).unwrap().len())
            .unwrap();
        fs::File::options()
            .write(true)
            .open(backing)
            .unwrap()
            .set_times(fs::FileTimes::new().set_modified(std::time::UNIX_EPOCH))
            .unwrap();
        let _ = fs::File::open(&p).unwrap();
        assert_eq!(
            map.resident(),
            0,
            "kept after a change behind the mount ({t})"
        );
        std::thread::sleep(SETTLE);
        read_through_new_open(&p, LEN);
        std::thread::sleep(SETTLE);
        let _ = fs::File::open(&p).unwrap();
        assert_eq!(map.resident(), 16, "({t})");

        // Any key store change drops an open file's pages at once...
        m.env.create_key(&[]);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
        while map.resident() > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "pages kept after a key store change ({t})"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        // ... and the next open drops what is cached from before the change.
        assert!(map.bytes().iter().all(|b| *b == 7));
        assert_eq!(map.resident(), 16, "({t})");
        let _ = fs::File::open(&p).unwrap();
        assert_eq!(map.resident(), 0, "kept across a key store change ({t})");
        drop(map);

        m.unmount();
        m.mount(&["--io-uring", t, "--keep-cache", "off"]);
        read_through_new_open(&p, LEN);
        let map = Mapping::new(&p, LEN);
        assert_eq!(map.resident(), 0, "--keep-cache off ({t})");
    }
}

/// Writers replace whole 8 KiB records (spanning two blocks) while readers check that every
/// record they see is entirely one writer's. Both use O_DIRECT, so every request reaches the
/// daemon: the kernel's page cache by itself does not promise atomic reads against writes.
#[test]
fn concurrent_readers_and_writers_never_see_mixed_blocks() {
    let m = Mounted::new();
    let p = m.p("shared");
    const REC: usize = 8192;
    const RECS: u64 = 16;
    fs::write(&p, vec![0u8; REC * RECS as usize]).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut threads = Vec::new();
    for w in 1..=3u8 {
        let p = p.clone();
        threads.push(std::thread::spawn(move || {
            let f = fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_DIRECT)
                .open(&p)
                .unwrap();
            for i in 0..200u64 {
                f.write_all_at(
                    &[w.wrapping_mul(50).wrapping_add(i as u8); REC],
                    (i % RECS) * REC as u64,
                )
                .unwrap();
            }
        }));
    }
    let mut readers = Vec::new();
    for _ in 0..2 {
        let (p, stop) = (p.clone(), stop.clone());
        readers.push(std::thread::spawn(move || {
            let f = fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_DIRECT)
                .open(&p)
                .unwrap();
            let mut buf = vec![0u8; REC];
            let mut checked = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) || checked == 0 {
                for r in 0..RECS {
                    f.read_exact_at(&mut buf, r * REC as u64).unwrap();
                    assert!(buf.iter().all(|b| *b == buf[0]), "record {r} mixes writers");
                    checked += 1;
                }
                // Leave the daemon's threads to the writers now and then.
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            checked
        }));
    }
    for t in threads {
        t.join().unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for r in readers {
        assert!(r.join().unwrap() > 0);
    }
}

#[test]
fn an_unlinked_open_file_can_still_be_changed() {
    let m = Mounted::new();
    let p = m.p("tmp");
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&p)
        .unwrap();
    f.write_all_at(b"scratch data", 0).unwrap();
    fs::remove_file(&p).unwrap();
    f.set_len(7).unwrap();
    f.set_permissions(fs::Permissions::from_mode(0o600))
        .unwrap();
    use std::os::fd::AsRawFd;
    let times = [
        libc::timespec {
            tv_sec: 5,
            tv_nsec: 0,
        },
        libc::timespec {
            tv_sec: 7,
            tv_nsec: 0,
        },
    ];
    assert_eq!(
        errno_of(unsafe { libc::futimens(f.as_raw_fd(), times.as_ptr()) }),
        0
    );
    let meta = f.metadata().unwrap();
    assert_eq!(
        (meta.len(), meta.mode() & 0o777, meta.mtime()),
        (7, 0o600, 7)
    );
    let mut b = [0u8; 7];
    f.read_exact_at(&mut b, 0).unwrap();
    assert_eq!(&b, b"scratch");
}

#[test]
fn xattrs_survive_truncation_to_zero() {
    let m = Mounted::new();
    let p = m.p("x");
    fs::write(&p, b"content").unwrap();
    set_xattr(&p, "user.tag", b"kept").unwrap();
    fs::write(&p, b"").unwrap();
    fs::write(&p, b"new content").unwrap();
    assert_eq!(get_xattr(&p, "user.tag").unwrap(), b"kept");
}
