//! Crash safety of re-wrapping: SIGKILL the rewrap (offline) or the daemon (online rewrap) at
//! random moments; every file must stay readable with its old or new wrapping, and a rerun must
//! finish the job. KMSFS_CRASH_SEED repeats a run.

mod common;
use common::*;
use std::fs;
use std::time::Duration;

struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn seed() -> u64 {
    let s = std::env::var("KMSFS_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("crash test seed {s} (KMSFS_CRASH_SEED={s} to repeat)");
    s
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
        std::thread::sleep(Duration::from_micros(rng.below(60_000)));
        let _ = child.kill();
        let _ = child.wait();
        fsck_clean(&m, &format!("after kill {round}"));
    }
    m.env.ok(&["rewrap", "-q", &cipher]);
    assert!(latest_only(&m), "a rerun finishes the job");
    m.mount(&[]);
    check_all(&m, n);
}

fn daemon_pid(cipher: &std::path::Path) -> Option<i32> {
    let want = cipher.to_str()?;
    for e in fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmd) = fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmd
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.iter().any(|a| a == "--daemon-child") && args.iter().any(|a| a == want) {
            return Some(pid);
        }
    }
    None
}

#[test]
fn killing_the_daemon_during_online_rewrap_loses_nothing() {
    let mut rng = Rng(seed());
    let n = 100;
    let m = Mounted::new();
    populate(&m, n);
    for round in 0..10 {
        m.env.ok(&["key", "rotate", "alias/fs"]);
        let mut child = m
            .env
            .command(&["rewrap", "-q", m.mnt.to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_micros(rng.below(80_000)));
        let pid = daemon_pid(&m.cipher).expect("the mount daemon");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        let _ = child.wait();
        let _ = std::process::Command::new("fusermount3")
            .arg("-uz")
            .arg(&m.mnt)
            .status();
        for _ in 0..100 {
            if !is_mounted(&m.mnt) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        fsck_clean(&m, &format!("after daemon kill {round}"));
        m.mount(&[]);
    }
    m.env.ok(&["rewrap", "-q", m.mnt.to_str().unwrap()]);
    check_all(&m, n);
    m.unmount();
    assert!(latest_only(&m));
}
