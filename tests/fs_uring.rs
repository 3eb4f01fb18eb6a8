//! FUSE over io_uring: with `--io-uring on` the mount serves through per-CPU rings and answers
//! every operation as the /dev/fuse transport does (the same workload on both, compared, and
//! checked against what it must give); `--io-uring off` stays on /dev/fuse.

mod common;
use common::*;
use std::ffi::CString;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

const PARAM: &str = "/sys/module/fuse/parameters/enable_uring";

/// The kernels this runs on (Linux 6.14+) have the fuse module's switch; older ones cannot.
fn kernel_has_uring() -> bool {
    let has = Path::new(PARAM).exists();
    if !has {
        eprintln!("{PARAM} missing: this kernel has no FUSE over io_uring; nothing to test");
    }
    has
}

fn transport(m: &Mounted) -> serde_json::Value {
    m.status()["Transport"].clone()
}

fn possible_cpus() -> u64 {
    let s = fs::read_to_string("/sys/devices/system/cpu/possible").expect("cpu list");
    kmsfs::fs::uring::parse_cpu_list(&s).expect("cpu list") as u64
}

fn c(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("no NUL")
}

fn errno_of(rc: isize) -> String {
    if rc < 0 {
        format!(
            "err {}",
            std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
        )
    } else {
        format!("ok {rc}")
    }
}

fn getxattr(p: &Path, name: &str, size: usize) -> (String, Vec<u8>) {
    let n = CString::new(name).expect("name");
    let mut buf = vec![0u8; size];
    // SAFETY: buf is `size` bytes long.
    let rc = unsafe { libc::getxattr(c(p).as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), size) };
    buf.truncate(rc.max(0) as usize);
    (errno_of(rc), if size == 0 { Vec::new() } else { buf })
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(13) ^ seed).collect()
}

/// Runs one workload of every kind of request under `root` and records what each gave (values
/// that differ between mounts, such as inode numbers and times of now, left out).
fn exercise(root: &Path) -> Vec<String> {
    let mut log = Vec::new();
    let p = |rel: &str| root.join(rel);
    fs::create_dir_all(p("d/sub")).expect("mkdir");
    for (i, n) in [0usize, 5, 4096, 300_000, (1 << 20) + 7].iter().enumerate() {
        fs::write(p(&format!("d/f{n}")), pattern(*n, i as u8)).expect("write");
    }
    // Large reads are served off the queue thread; small ones on it.
    for (i, n) in [0usize, 5, 4096, 300_000, (1 << 20) + 7].iter().enumerate() {
        let back = fs::read(p(&format!("d/f{n}"))).expect("read");
        assert_eq!(back, pattern(*n, i as u8), "file of {n} bytes");
        log.push(format!("read {n}: {}", back.len()));
    }
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(p("d/f300000"))
        .expect("open");
    f.write_all_at(b"MIDDLE", 150_001).expect("pwrite");
    let mut mid = [0u8; 10];
    f.read_exact_at(&mut mid, 149_999).expect("pread");
    let want = pattern(300_000, 3);
    assert_eq!(&mid[..2], &want[149_999..150_001]);
    assert_eq!(&mid[2..8], b"MIDDLE");
    f.sync_all().expect("fsync");
    f.sync_data().expect("fdatasync");
    f.set_len(100).expect("truncate");
    f.set_len(10_000).expect("extend");
    let mut tail = vec![1u8; 9_900];
    f.read_exact_at(&mut tail, 100).expect("read extension");
    assert!(tail.iter().all(|b| *b == 0), "an extension reads as zeros");
    drop(f);
    log.push(format!(
        "size {}",
        fs::metadata(p("d/f300000")).expect("stat").len()
    ));

    // A directory whose listing takes several replies, with and without attributes.
    for i in 0..300 {
        fs::write(p(&format!("d/sub/entry-with-a-longer-name-{i:04}")), b"x").expect("create");
    }
    let mut names: Vec<String> = fs::read_dir(p("d/sub"))
        .expect("readdir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names.len(), 300);
    assert_eq!(names[299], "entry-with-a-longer-name-0299");
    let sizes: u64 = fs::read_dir(p("d/sub"))
        .expect("readdir")
        .map(|e| e.expect("entry").metadata().expect("attr").len())
        .sum();
    assert_eq!(sizes, 300);
    log.push(format!("listed {} first {}", names.len(), names[0]));

    // Names: rename (also RENAME_EXCHANGE, a flag the kernel leaves to us), hard and symbolic
    // links, unlink, rmdir.
    fs::rename(p("d/f5"), p("d/renamed")).expect("rename");
    fs::write(p("d/other"), b"other").expect("write");
    let (a, b) = (c(&p("d/renamed")), c(&p("d/other")));
    let swap = || {
        // SAFETY: two valid C paths.
        let rc = unsafe {
            libc::renameat2(
                libc::AT_FDCWD,
                a.as_ptr(),
                libc::AT_FDCWD,
                b.as_ptr(),
                libc::RENAME_EXCHANGE,
            )
        };
        assert_eq!(rc, 0, "exchange {}", std::io::Error::last_os_error());
    };
    swap();
    assert_eq!(fs::read(p("d/renamed")).expect("read"), b"other");
    assert_eq!(fs::read(p("d/other")).expect("read"), pattern(5, 1));
    swap();
    log.push("exchanged twice".into());
    fs::hard_link(p("d/renamed"), p("d/hard")).expect("link");
    assert_eq!(fs::metadata(p("d/renamed")).expect("stat").nlink(), 2);
    std::os::unix::fs::symlink("../target/of/link", p("d/sym")).expect("symlink");
    let target = fs::read_link(p("d/sym")).expect("readlink");
    assert_eq!(target, Path::new("../target/of/link"));
    log.push(format!("link {}", target.display()));
    fs::remove_file(p("d/hard")).expect("unlink");
    let e = fs::remove_dir(p("d/sub")).expect_err("not empty");
    log.push(format!("rmdir {:?}", e.raw_os_error()));
    assert_eq!(e.raw_os_error(), Some(libc::ENOTEMPTY));
    let e = fs::metadata(p("d/missing")).expect_err("missing");
    assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
    let e = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(p("d/other"))
        .expect_err("exists");
    assert_eq!(e.raw_os_error(), Some(libc::EEXIST));
    log.push("create_new EEXIST".into());

    // Extended attributes: set, probe the size, too small a buffer, list, remove.
    let x = p("d/renamed");
    let (n, v) = (CString::new("user.colour").expect("name"), b"ultramarine");
    // SAFETY: valid path, name and value.
    let rc = unsafe { libc::setxattr(c(&x).as_ptr(), n.as_ptr(), v.as_ptr().cast(), v.len(), 0) };
    assert_eq!(rc, 0, "setxattr {}", std::io::Error::last_os_error());
    let probe = getxattr(&x, "user.colour", 0);
    assert_eq!(probe.0, "ok 11");
    assert_eq!(
        getxattr(&x, "user.colour", 64),
        ("ok 11".into(), v.to_vec())
    );
    assert_eq!(
        getxattr(&x, "user.colour", 3).0,
        format!("err {}", libc::ERANGE)
    );
    let mut list = vec![0u8; 256];
    // SAFETY: list is 256 bytes.
    let rc = unsafe { libc::listxattr(c(&x).as_ptr(), list.as_mut_ptr().cast(), list.len()) };
    list.truncate(rc.max(0) as usize);
    assert!(list.windows(12).any(|w| w == b"user.colour\0"), "{list:?}");
    // SAFETY: valid path and name.
    assert_eq!(unsafe { libc::removexattr(c(&x).as_ptr(), n.as_ptr()) }, 0);
    assert_eq!(
        getxattr(&x, "user.colour", 64).0,
        format!("err {}", libc::ENODATA)
    );
    log.push(format!("xattr {probe:?}"));

    // Attributes: mode, owner, times; statfs; fallocate; a FIFO.
    fs::set_permissions(&x, fs::Permissions::from_mode(0o640)).expect("chmod");
    std::os::unix::fs::chown(&x, Some(1234), Some(5678)).expect("chown");
    let when = std::time::UNIX_EPOCH + std::time::Duration::new(1_000_000_000, 500);
    fs::File::options()
        .write(true)
        .open(&x)
        .expect("open")
        .set_modified(when)
        .expect("utimes");
    let md = fs::metadata(&x).expect("stat");
    assert_eq!(md.mode() & 0o7777, 0o640);
    assert_eq!((md.uid(), md.gid()), (1234, 5678));
    assert_eq!((md.mtime(), md.mtime_nsec()), (1_000_000_000, 500));
    log.push(format!("attr {:o} {} {}", md.mode(), md.uid(), md.mtime()));
    let cr = c(root);
    // SAFETY: a zeroed statvfs is a valid out buffer.
    let mut sv: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and out buffer.
    assert_eq!(unsafe { libc::statvfs(cr.as_ptr(), &mut sv) }, 0);
    assert!(
        sv.f_bsize > 0 && sv.f_namemax > 0 && sv.f_blocks > 0,
        "statfs"
    );
    let g = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(p("d/alloc"))
        .expect("create");
    // SAFETY: a valid descriptor.
    let rc = unsafe { libc::fallocate(std::os::fd::AsRawFd::as_raw_fd(&g), 0, 0, 20_000) };
    assert_eq!(rc, 0, "fallocate {}", std::io::Error::last_os_error());
    (&g).write_all(b"head").expect("write");
    drop(g);
    let alloc = fs::read(p("d/alloc")).expect("read");
    assert_eq!(alloc.len(), 20_000);
    assert_eq!(&alloc[..4], b"head");
    log.push(format!("fallocate {}", alloc.len()));
    let fifo = c(&p("d/fifo"));
    // SAFETY: a valid path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    assert!(
        fs::symlink_metadata(p("d/fifo"))
            .expect("stat")
            .file_type()
            .is_fifo()
    );
    fs::File::open(p("d"))
        .expect("open dir")
        .sync_all()
        .expect("fsyncdir");
    log.push("fifo".into());
    log
}

#[test]
fn every_operation_answers_over_io_uring_as_over_dev_fuse() {
    if !kernel_has_uring() {
        return;
    }
    let ring = Mounted::with_args(&["--io-uring", "on"]);
    assert_eq!(fs::read_to_string(PARAM).expect("param").trim(), "Y");
    let got = exercise(&ring.mnt);
    let t = transport(&ring);
    assert_eq!(t["Kind"], "io_uring", "{t}");
    assert_eq!(t["RingQueues"].as_u64(), Some(possible_cpus()), "{t}");
    assert!(t["RingRequests"].as_u64().expect("count") > 1000, "{t}");
    let text = ring.env.ok(&["status", "--events", "0"]);
    assert!(text.contains("requests over io_uring: "), "{text}");

    let dev = Mounted::with_args(&["--io-uring", "off"]);
    let want = exercise(&dev.mnt);
    let t = transport(&dev);
    assert_eq!(t["Kind"], "/dev/fuse", "{t}");
    assert_eq!(t["RingRequests"].as_u64(), Some(0), "{t}");
    let text = dev.env.ok(&["status", "--events", "0"]);
    assert!(text.contains("requests over /dev/fuse"), "{text}");
    assert_eq!(got, want);

    // What the rings wrote is what /dev/fuse reads back, and the other way round.
    ring.unmount();
    ring.mount(&["--io-uring", "off"]);
    dev.unmount();
    dev.mount(&["--io-uring", "on"]);
    for m in [&ring, &dev] {
        assert_eq!(
            fs::read(m.p("d/f1048583")).expect("read"),
            pattern((1 << 20) + 7, 4)
        );
        assert_eq!(fs::read(m.p("d/other")).expect("read"), b"other");
    }
}

/// A disabled key stops files at once on the rings too, open ones included.
#[test]
fn a_disabled_key_stops_open_files_over_io_uring() {
    if !kernel_has_uring() {
        return;
    }
    let m = Mounted::with_args(&["--io-uring", "on"]);
    fs::write(m.p("secret"), pattern(200_000, 9)).expect("write");
    let f = fs::File::open(m.p("secret")).expect("open");
    let mut buf = vec![0u8; 4096];
    f.read_exact_at(&mut buf, 8192).expect("read while enabled");
    assert_eq!(transport(&m)["Kind"], "io_uring");
    m.env.ok(&["key", "disable", "alias/fs"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    let err = loop {
        match f.read_exact_at(&mut buf, 100_000) {
            Err(e) => break e,
            Ok(()) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(50))
            }
            Ok(()) => panic!("an open file still reads 2 s after its key was disabled"),
        }
    };
    assert_eq!(err.raw_os_error(), Some(libc::EACCES), "{err}");
    let e = fs::read(m.p("secret")).expect_err("new opens fail too");
    assert_eq!(e.raw_os_error(), Some(libc::EACCES));
    m.env.ok(&["key", "enable", "alias/fs"]);
    assert_eq!(fs::read(m.p("secret")).expect("read"), pattern(200_000, 9));
}
