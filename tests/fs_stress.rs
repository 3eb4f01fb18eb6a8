//! Stress: many writers and readers at once, running out of space, and 10,000 files open at once.

mod common;
use common::*;
use std::fs;
use std::io::Write;
use std::os::unix::fs::FileExt;

fn pattern(w: usize, round: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (w * 29 + round * 7 + i / 4096) as u8)
        .collect()
}

/// Writers on the same and on different files, readers checking every 4 KiB block they see is
/// one writer's whole block (O_DIRECT, so each request reaches the daemon).
#[test]
fn parallel_writers_and_readers_on_shared_and_private_files() {
    use std::os::unix::fs::OpenOptionsExt;
    let m = Mounted::new();
    for f in ["shared", "p0", "p1", "p2", "p3"] {
        fs::write(m.p(f), vec![0u8; 64 * 4096]).unwrap();
    }
    let mut threads = Vec::new();
    for w in 0..4 {
        for target in ["shared".to_string(), format!("p{w}")] {
            let p = m.p(&target);
            threads.push(std::thread::spawn(move || {
                let f = fs::OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_DIRECT)
                    .open(&p)
                    .unwrap();
                for round in 0..40 {
                    let blocks = 1 + (w + round) % 8;
                    let at = ((w * 13 + round * 5) % (64 - blocks)) as u64 * 4096;
                    f.write_all_at(&pattern(w, round, blocks * 4096), at)
                        .unwrap();
                }
            }));
        }
    }
    let mut readers = Vec::new();
    for r in 0..3 {
        let p = m.p(if r == 0 { "shared" } else { "p1" });
        readers.push(std::thread::spawn(move || {
            let f = fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_DIRECT)
                .open(&p)
                .unwrap();
            let mut buf = vec![0u8; 64 * 4096];
            for _ in 0..30 {
                f.read_exact_at(&mut buf, 0).unwrap();
                for (i, b) in buf.chunks(4096).enumerate() {
                    assert!(b.iter().all(|x| *x == b[0]), "block {i} mixes writers");
                }
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
        }));
    }
    for t in threads.into_iter().chain(readers) {
        t.join().unwrap();
    }
    // Each private file ends as its writer's last writes made it.
    for w in 0..4 {
        let data = fs::read(m.p(&format!("p{w}"))).unwrap();
        let mut want = vec![0u8; 64 * 4096];
        for round in 0..40 {
            let blocks = 1 + (w + round) % 8;
            let at = (w * 13 + round * 5) % (64 - blocks) * 4096;
            want[at..at + blocks * 4096].copy_from_slice(&pattern(w, round, blocks * 4096));
        }
        assert_eq!(data, want, "p{w}");
    }
}

/// Undoes a mount lazily when dropped (a tmpfs, or kmsfs with fusermount3).
struct Lazy(std::path::PathBuf, bool);

impl Drop for Lazy {
    fn drop(&mut self) {
        if self.1 {
            let _ = std::process::Command::new("fusermount3")
                .arg("-uz")
                .arg(&self.0)
                .status();
        } else {
            let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// A volume whose cipher directory is on a tmpfs of `size`, mounted (with the guards that
/// unmount both, kmsfs first).
fn on_small_tmpfs(size: &str) -> (Mounted, [Lazy; 2]) {
    let m = Mounted::new();
    m.unmount();
    let small = m.env.path("small");
    fs::create_dir(&small).unwrap();
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(&small)
        .status()
        .unwrap()
        .success();
    assert!(ok, "mounting a tmpfs needs root");
    let tmpfs = Lazy(small.clone(), false);
    let cipher = small.join("c");
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(&m.cipher)
        .arg(&cipher)
        .status()
        .unwrap();
    assert!(status.success());
    let mnt = m.mnt.to_str().unwrap().to_string();
    m.env.ok(&["mount", cipher.to_str().unwrap(), &mnt]);
    let kmsfs = Lazy(m.mnt.clone(), true);
    (m, [kmsfs, tmpfs])
}

/// A cipher directory on a tiny tmpfs: writes fail with ENOSPC, nothing written before is lost,
/// and the mount works again once space is freed.
#[test]
fn running_out_of_space() {
    let (m, _guards) = on_small_tmpfs("2m");

    fs::write(m.p("keep"), vec![9u8; 300_000]).unwrap();
    let mut written = 0usize;
    let mut hit = None;
    for i in 0..100 {
        match fs::write(m.p(&format!("fill{i}")), vec![i as u8; 200_000]) {
            Ok(()) => written += 1,
            Err(e) => {
                hit = e.raw_os_error();
                break;
            }
        }
    }
    assert_eq!(hit, Some(libc::ENOSPC), "after {written} files");
    assert_eq!(
        fs::read(m.p("keep")).unwrap(),
        vec![9u8; 300_000],
        "earlier data intact"
    );
    for i in 0..written {
        assert_eq!(
            fs::read(m.p(&format!("fill{i}"))).unwrap(),
            vec![i as u8; 200_000]
        );
    }
    // The reads' RELEASEs reach the daemon after close returns; a file deleted before its
    // RELEASE keeps its space until then.
    m.wait_released();
    for i in 0..=written {
        let _ = fs::remove_file(m.p(&format!("fill{i}")));
    }
    fs::write(m.p("after"), vec![1u8; 500_000]).unwrap();
    assert_eq!(fs::read(m.p("after")).unwrap(), vec![1u8; 500_000]);
    assert_eq!(fs::read(m.p("keep")).unwrap(), vec![9u8; 300_000]);
}

fn free_bytes(p: &std::path::Path) -> u64 {
    let s = nix::sys::statvfs::statvfs(p).unwrap();
    s.blocks_available() * s.fragment_size()
}

/// The daemon frees a deleted file's backing space after answering the unlink (see
/// `reaper`); on a full volume that space is there for the very next write, and statfs right
/// after the delete counts it as free.
#[test]
fn space_a_delete_gives_back_is_free_at_once() {
    let (m, _guards) = on_small_tmpfs("8m");
    const BIG: usize = 5 << 20;
    // The first delete starts the reaper's thread; from then on deletes are held.
    fs::write(m.p("first"), b"x").unwrap();
    fs::remove_file(m.p("first")).unwrap();
    fs::write(m.p("big"), vec![1u8; BIG]).unwrap();
    let mut hit = None;
    for i in 0..100 {
        if let Err(e) = fs::write(m.p(&format!("fill{i}")), vec![2u8; 128 << 10]) {
            hit = e.raw_os_error();
            break;
        }
    }
    assert_eq!(hit, Some(libc::ENOSPC), "the volume is full");
    // Room for the headers of the files each round makes (statfs frees it at once).
    fs::remove_file(m.p("fill0")).unwrap();
    assert!(free_bytes(&m.mnt) >= 128 << 10);
    let frees = &m.status()["DeferredFrees"];
    assert_eq!(frees["Enabled"], true, "tmpfs is local: {frees}");
    let deferred = frees["Deferred"].as_u64().unwrap();
    for round in 0..6u8 {
        // A close's RELEASE reaches the daemon after close returns; until then the daemon
        // holds the file open, and its space stays in use whatever the reaper does.
        m.wait_released();
        let full = free_bytes(&m.mnt);
        let data = vec![round; BIG - (64 << 10)];
        if round % 2 == 0 {
            // Opened before the delete, so the write follows it at once: it must not find the
            // disk still full.
            let mut next = fs::File::create(m.p("next")).unwrap();
            fs::remove_file(m.p("big")).unwrap();
            next.write_all(&data)
                .unwrap_or_else(|e| panic!("round {round}: {e}"));
            drop(next);
            fs::rename(m.p("next"), m.p("big")).unwrap();
        } else {
            fs::remove_file(m.p("big")).unwrap();
            let freed = free_bytes(&m.mnt).saturating_sub(full);
            // The file deleted was the previous round's, of BIG - 64 KiB.
            assert!(
                freed >= (BIG - (64 << 10)) as u64,
                "round {round}: only {freed} freed"
            );
            fs::write(m.p("big"), &data).unwrap();
        }
        assert_eq!(fs::read(m.p("big")).unwrap(), data, "round {round}");
    }
    // Every delete was held open past its unlink, not freed inline: six rounds, and a file
    // replaced by a rename.
    fs::write(m.p("old"), b"old").unwrap();
    fs::write(m.p("new"), b"new").unwrap();
    m.wait_released();
    fs::rename(m.p("new"), m.p("old")).unwrap();
    let now = m.status()["DeferredFrees"]["Deferred"].as_u64().unwrap();
    assert_eq!(now - deferred, 7);
}

fn rss_kib(pid: i32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// 10,000 files open at once: the daemon keeps one descriptor and one small state per open
/// file, and its memory stays bounded.
#[test]
fn ten_thousand_open_files() {
    let m = Mounted::new();
    let n = 10_000;
    // The test process itself needs the descriptors.
    let (_, hard) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    nix::sys::resource::setrlimit(
        nix::sys::resource::Resource::RLIMIT_NOFILE,
        hard.min(1 << 20),
        hard,
    )
    .unwrap();
    for d in 0..10 {
        fs::create_dir(m.p(&format!("d{d}"))).unwrap();
    }
    for i in 0..n {
        fs::write(m.p(&format!("d{}/f{i}", i % 10)), format!("file {i}")).unwrap();
    }
    let pid = daemon_pid(&m.cipher).expect("the mount daemon");
    let before = rss_kib(pid);
    let handles: Vec<fs::File> = (0..n)
        .map(|i| fs::File::open(m.p(&format!("d{}/f{i}", i % 10))).unwrap())
        .collect();
    let mut buf = [0u8; 16];
    for (i, h) in handles.iter().enumerate().step_by(97) {
        let len = h.read_at(&mut buf, 0).unwrap();
        assert_eq!(&buf[..len], format!("file {i}").as_bytes());
    }
    let during = rss_kib(pid);
    eprintln!("daemon RSS: {before} KiB idle, {during} KiB with {n} files open");
    assert!(
        during < 256 * 1024,
        "daemon RSS {during} KiB with {n} open files"
    );
    drop(handles);
}
