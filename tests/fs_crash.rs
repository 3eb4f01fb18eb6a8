//! Crash safety of re-wrapping: SIGKILL the rewrap (offline) or the daemon (online rewrap) at
//! random moments; every file must stay readable with its old or new wrapping, and a rerun must
//! finish the job. KMSFS_CRASH_SEED repeats a run.

mod common;
use common::*;
use std::fs;
use std::time::Duration;

fn seed() -> u64 {
    seed_from("KMSFS_CRASH_SEED")
}

fn content(i: usize) -> Vec<u8> {
    (0..(i * 37 % 9000 + 1)).map(|j| (i + j) as u8).collect()
}

fn populate(m: &Mounted, n: usize) {
    for d in 0..10 {
        fs::create_dir(m.p(&format!("d{d}"))).unwrap();
    }
    for i in 0..n {
        fs::write(m.p(&format!("d{}/f{i}", i % 10)), content(i)).unwrap();
    }
}

fn check_all(m: &Mounted, n: usize) {
    for i in 0..n {
        assert_eq!(
            fs::read(m.p(&format!("d{}/f{i}", i % 10))).unwrap(),
            content(i),
            "file {i}"
        );
    }
}

fn fsck_clean(m: &Mounted, when: &str) {
    let out = m.env.run(&["fsck", "-q", m.cipher.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{when}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn latest_only(m: &Mounted) -> bool {
    let inv = m
        .env
        .json(&["key", "versions-in-use", m.cipher.to_str().unwrap()]);
    inv["Keys"].as_array().is_some_and(|k| k.len() == 1)
}

#[test]
fn killing_offline_rewrap_at_50_random_moments_loses_nothing() {
    let mut rng = Rng(seed());
    let n = 150;
    let m = Mounted::new();
    populate(&m, n);
    m.unmount();
    let cipher = m.cipher.to_str().unwrap().to_string();
    for round in 0..50 {
        m.env.ok(&["key", "rotate", "alias/fs"]);
        let mut child = m
            .env
            .command(&["rewrap", "-q", &cipher])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_micros(rng.below(60_000) as u64));
        let _ = child.kill();
        let _ = child.wait();
        fsck_clean(&m, &format!("after kill {round}"));
    }
    m.env.ok(&["rewrap", "-q", &cipher]);
    assert!(latest_only(&m), "a rerun finishes the job");
    // ... and leaves no second (older) wrapping in any header.
    kmsfs::fs::rewrap::walk(&m.cipher, |p, kind| {
        let h = fs::read(p).unwrap();
        let slots = kmsfs::fs::header::parse(kind, &h).unwrap().slots;
        assert_eq!(slots.len(), 1, "{} keeps a stale slot", p.display());
    })
    .unwrap();
    m.mount(&[]);
    check_all(&m, n);
}

/// SIGKILL for the mount's daemon.
fn kill_daemon(m: &Mounted) {
    let pid = daemon_pid(&m.cipher).expect("the mount daemon");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
}

/// Lazily unmounts a mount whose daemon died, and waits until it is gone.
fn detach(m: &Mounted) {
    let _ = std::process::Command::new("fusermount3")
        .arg("-uz")
        .arg(&m.mnt)
        .status();
    for _ in 0..100 {
        if !is_mounted(&m.mnt) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn killing_the_daemon_during_online_rewrap_or_reencrypt_loses_nothing() {
    let mut rng = Rng(seed());
    let n = 100;
    let m = Mounted::new();
    populate(&m, n);
    for round in 0..10 {
        m.env.ok(&["key", "rotate", "alias/fs"]);
        // Odd rounds kill a data-key rotation (reencrypt) instead of a rewrap.
        let op = if round % 2 == 0 {
            "rewrap"
        } else {
            "reencrypt"
        };
        let mut child = m
            .env
            .command(&[op, "-q", m.mnt.to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_micros(rng.below(80_000) as u64));
        kill_daemon(&m);
        let _ = child.wait();
        detach(&m);
        fsck_clean(&m, &format!("after daemon kill {round}"));
        m.mount(&[]);
    }
    m.env.ok(&["rewrap", "-q", m.mnt.to_str().unwrap()]);
    check_all(&m, n);
    m.unmount();
    assert!(latest_only(&m));
    fsck_clean(&m, "at the end");
}

fn append_chunk(t: usize, k: usize) -> Vec<u8> {
    let n = 1 + (t * 7919 + k * 104_729) % 20_000;
    (0..n).map(|j| (t * 31 + k * 17 + j) as u8).collect()
}

fn expected(t: usize, chunks: usize) -> Vec<u8> {
    (0..chunks).flat_map(|k| append_chunk(t, k)).collect()
}

/// Writers append and fsync while the daemon is killed at 50 random moments: after each
/// remount every fsync'd byte is there, every file reads fully, and fsck is clean.
///
/// Ignored in the suite: it passes most runs, but now and then the kill lands inside an
/// in-place rewrite of one block (the old final block being re-flagged after an append), which
/// the kernel stops at a page boundary, and that block is unreadable afterwards. That is the
/// open gap of issue 6 (it needs a write-ahead record per rewritten block). Run it with
/// `cargo test --test fs_crash -- --ignored`.
#[test]
#[ignore = "in-place block rewrites can tear when the daemon is killed (open gap, issue 6)"]
fn killing_the_daemon_under_writers_keeps_every_fsynced_byte() {
    use std::io::Write;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let mut rng = Rng(seed());
    let m = Mounted::new();
    let ks = kmsfs::keystore::KeyStore::open(
        &m.env.store,
        &kmsfs::keystore::rootkey::RootSecret::key_from_file(&m.env.root_key).unwrap(),
    )
    .unwrap();
    let provider =
        kmsfs::provider::LocalProvider::new(kmsfs::kms::Kms::new(ks, kmsfs::clock::Clock::System));
    const WRITERS: usize = 3;
    let synced: Vec<Arc<AtomicUsize>> = (0..WRITERS)
        .map(|_| Arc::new(AtomicUsize::new(0)))
        .collect();
    for round in 0..50 {
        let threads: Vec<_> = (0..WRITERS)
            .map(|t| {
                let path = m.p(&format!("w{t}"));
                let synced = synced[t].clone();
                std::thread::spawn(move || {
                    let Ok(mut f) = fs::OpenOptions::new().create(true).append(true).open(&path)
                    else {
                        return;
                    };
                    let mut k = synced.load(Ordering::SeqCst);
                    loop {
                        if f.write_all(&append_chunk(t, k)).is_err() || f.sync_all().is_err() {
                            return;
                        }
                        k += 1;
                        synced.store(k, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_micros(5_000 + rng.below(60_000) as u64));
        kill_daemon(&m);
        for t in threads {
            let _ = t.join();
        }
        detach(&m);
        m.mount(&[]);
        for (t, s) in synced.iter().enumerate() {
            let path = m.p(&format!("w{t}"));
            if !path.exists() {
                assert_eq!(s.load(Ordering::SeqCst), 0);
                continue;
            }
            let data = fs::read(&path).unwrap_or_else(|e| {
                use std::os::unix::fs::MetadataExt;
                let ino = fs::metadata(&path).map(|m| m.ino()).unwrap_or(0);
                let backing = files_under(&m.cipher).into_iter().find(|p| fs::metadata(p).unwrap().ino() == ino);
                let len = backing.as_ref().map(|b| fs::metadata(b).unwrap().len()).unwrap_or(0);
                if let Some(b) = &backing {
                    let _ = fs::copy(b, "/tmp/kmsfs-crash-evidence.bin");
                }
                panic!(
                    "round {round}: w{t} unreadable: {e}; backing {len} bytes, (len-1024)%4124 = {}, synced chunks {}; log: {}",
                    (len.saturating_sub(1024)) % 4124,
                    s.load(Ordering::SeqCst),
                    m.log_text().lines().rev().take(4).collect::<Vec<_>>().join(" | ")
                )
            });
            let chunks = s.load(Ordering::SeqCst);
            let want = expected(t, chunks + 1);
            let synced_len = expected(t, chunks).len();
            assert!(
                data.len() >= synced_len,
                "round {round}: w{t} lost fsync'd bytes ({} < {synced_len})",
                data.len()
            );
            assert_eq!(
                &data[..],
                &want[..data.len().min(want.len())],
                "round {round}: w{t} is not what was written"
            );
            // Continue from what is there: the unsynced tail of the interrupted chunk is cut.
            fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .unwrap()
                .set_len(synced_len as u64)
                .unwrap();
        }
        let r = kmsfs::fs::fsck::fsck(
            &m.cipher,
            &provider,
            &kmsfs::kms::Caller::current(),
            &mut |_| {},
        )
        .unwrap();
        assert!(r.findings.is_empty(), "round {round}: {:?}", r.findings);
    }
}

/// CLI processes changing the key store are killed at random moments: the store always loads
/// and the audit log always verifies.
#[test]
fn killing_cli_writers_never_damages_the_key_store() {
    let mut rng = Rng(seed());
    let e = Env::new();
    for round in 0..10 {
        let procs: Vec<_> = (0..4)
            .map(|p| {
                shell(&e, &format!("for i in 1 2 3 4 5 6 7 8; do \"$0\" key create --alias r{round}-p{p}-$i >/dev/null 2>&1; done"))
                    .spawn()
                    .unwrap()
            })
            .collect();
        std::thread::sleep(Duration::from_micros(rng.below(50_000) as u64));
        // Kill every kmsfs process of this test's store.
        for entry in fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let env = fs::read(entry.path().join("environ")).unwrap_or_default();
            let store = format!("KMSFS_KEYSTORE={}", e.store.display());
            if env.split(|b| *b == 0).any(|v| v == store.as_bytes()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        for mut p in procs {
            let _ = p.wait();
        }
        e.ok(&["key", "list"]);
        let v = e.ok(&["audit", "verify"]);
        assert!(v.contains("intact"), "round {round}: {v}");
    }
}
