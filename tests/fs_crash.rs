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

/// The local KMS over the mount's key store, for fsck while mounted.
fn local_kms(m: &Mounted) -> kmsfs::provider::LocalProvider {
    let ks = kmsfs::keystore::KeyStore::open(
        &m.env.store,
        &kmsfs::keystore::rootkey::RootSecret::key_from_file(&m.env.root_key).unwrap(),
    )
    .unwrap();
    kmsfs::provider::LocalProvider::new(kmsfs::kms::Kms::new(ks, kmsfs::clock::Clock::System))
}

/// `fsck_clean` for a mounted cipher dir: the CLI refuses one, the library reads it as is.
fn fsck_clean_mounted(m: &Mounted, provider: &kmsfs::provider::LocalProvider, when: &str) {
    let r = kmsfs::fs::fsck::fsck(
        &m.cipher,
        provider,
        &kmsfs::kms::Caller::current(),
        &mut |_| {},
    )
    .unwrap();
    assert!(r.findings.is_empty(), "{when}: {:?}", r.findings);
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

/// What an overwriter has made durable, and the write it has in flight.
#[derive(Default)]
struct Overwrites {
    synced: Vec<u8>,
    inflight: Option<(usize, Vec<u8>)>,
}

fn overwrite_at(k: usize, len: usize) -> (usize, Vec<u8>) {
    let n = 1 + (k * 7_727) % 30_000;
    let off = (k * 104_723) % (len - n);
    (off, (0..n).map(|j| (k * 13 + j * 7) as u8).collect())
}

/// Overwrites random ranges of `path` in place, fsyncing each, and records its progress.
fn overwriter(path: std::path::PathBuf, state: std::sync::Arc<std::sync::Mutex<Overwrites>>) {
    use std::io::{Seek, SeekFrom, Write};
    let Ok(mut f) = fs::OpenOptions::new().write(true).open(&path) else {
        return;
    };
    let mut k = 0;
    loop {
        let (off, data) = {
            let mut s = state.lock().unwrap();
            let w = overwrite_at(k + s.synced.len(), s.synced.len());
            s.inflight = Some(w.clone());
            w
        };
        k += 1;
        let ok = f.seek(SeekFrom::Start(off as u64)).is_ok()
            && f.write_all(&data).is_ok()
            && f.sync_all().is_ok();
        if !ok {
            return;
        }
        let mut s = state.lock().unwrap();
        s.synced[off..off + data.len()].copy_from_slice(&data);
        s.inflight = None;
    }
}

/// Writers append and fsync, and one overwrites a file in place, while the daemon is killed at
/// 50 random moments: after each remount every fsync'd byte is there, each block of the write in
/// flight is old or new, every file reads fully, and fsck is clean. The kernel
/// can stop a write at a page boundary when the daemon dies, inside the rewrite of an existing
/// block (the old final block re-flagged after an append): the undo record brings it back.
#[test]
fn killing_the_daemon_under_writers_keeps_every_fsynced_byte() {
    use std::io::Write;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let mut rng = Rng(seed());
    let m = Mounted::new();
    let provider = local_kms(&m);
    const WRITERS: usize = 3;
    let synced: Vec<Arc<AtomicUsize>> = (0..WRITERS)
        .map(|_| Arc::new(AtomicUsize::new(0)))
        .collect();
    let initial: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    fs::write(m.p("ow"), &initial).unwrap();
    let over = Arc::new(std::sync::Mutex::new(Overwrites {
        synced: initial,
        inflight: None,
    }));
    let mut undone = 0;
    for round in 0..50 {
        let ow = {
            let (path, state) = (m.p("ow"), over.clone());
            std::thread::spawn(move || overwriter(path, state))
        };
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
        let _ = ow.join();
        detach(&m);
        m.mount(&[]);
        {
            let mut s = over.lock().unwrap();
            let data = fs::read(m.p("ow"))
                .unwrap_or_else(|e| panic!("round {round}: the overwritten file: {e}"));
            let mut new = s.synced.clone();
            let inflight = s.inflight.take();
            if let Some((off, d)) = &inflight {
                new[*off..off + d.len()].copy_from_slice(d);
            }
            // The kernel may split one write(2) into several requests, so the promise is per
            // 4 KiB block: each is as before the write or as after it.
            assert_eq!(
                data.len(),
                new.len(),
                "round {round}: the overwritten file's size"
            );
            for (b, got) in data.chunks(4096).enumerate() {
                let r = b * 4096..(b * 4096 + got.len());
                assert!(
                    got == &s.synced[r.clone()] || got == &new[r],
                    "round {round}: block {b} of the overwritten file is neither before nor \
                     after the write in flight ({:?})",
                    inflight.as_ref().map(|(o, d)| (o, d.len()))
                );
            }
            s.synced = data;
        }
        for (t, s) in synced.iter().enumerate() {
            let path = m.p(&format!("w{t}"));
            if !path.exists() {
                assert_eq!(s.load(Ordering::SeqCst), 0);
                continue;
            }
            let data = fs::read(&path).unwrap_or_else(|e| {
                use std::os::unix::fs::MetadataExt;
                let ino = fs::metadata(&path).map(|m| m.ino()).unwrap_or(0);
                let backing = files_under(&m.cipher).into_iter().find(|p| fs::metadata(p).is_ok_and(|x| x.ino() == ino));
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
        fsck_clean_mounted(&m, &provider, &format!("round {round}"));
        undone = m.log_text().matches("undid a write interrupted").count();
    }
    // How often a kill landed inside an in-place rewrite (all rounds share one log file).
    eprintln!("interrupted in-place writes undone: {undone}");
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

/// Small files created and written in one write each (their first write goes without an undo
/// record, the bytes over the empty block last) while the daemon is killed at 30 random
/// moments: after each remount every file whose write returned is whole, the one in flight is
/// absent, empty or whole, and fsck is clean.
#[test]
fn killing_the_daemon_while_small_files_are_written_leaves_each_empty_or_whole() {
    use std::io::Write;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let mut rng = Rng(seed());
    let m = Mounted::new();
    let provider = local_kms(&m);
    for round in 0..30 {
        let dir = format!("r{round}");
        fs::create_dir(m.p(&dir)).unwrap();
        let done = Arc::new(AtomicUsize::new(0));
        let writer = {
            let (dir, done) = (m.p(&dir), done.clone());
            std::thread::spawn(move || {
                for i in 0.. {
                    let Ok(mut f) = fs::File::create(dir.join(format!("f{i}"))) else {
                        return;
                    };
                    if f.write_all(&content(i * 7)).is_err() {
                        return;
                    }
                    drop(f);
                    done.store(i + 1, Ordering::SeqCst);
                }
            })
        };
        std::thread::sleep(Duration::from_micros(2_000 + rng.below(30_000) as u64));
        kill_daemon(&m);
        let _ = writer.join();
        detach(&m);
        m.mount(&[]);
        let done = done.load(Ordering::SeqCst);
        for i in 0..=done {
            let path = m.p(&format!("{dir}/f{i}"));
            let got = match fs::read(&path) {
                Ok(d) => d,
                Err(e) if i == done && e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => panic!("round {round}: f{i} of {done}: {e}"),
            };
            if i == done && got.is_empty() {
                continue;
            }
            assert!(
                got == content(i * 7),
                "round {round}: f{i} of {done} is not what was written ({} bytes)",
                got.len()
            );
        }
        fsck_clean_mounted(&m, &provider, &format!("round {round}"));
    }
    let cut = m.log_text().matches("removed the incomplete tail").count();
    eprintln!("interrupted first writes cut back to empty: {cut}");
}
