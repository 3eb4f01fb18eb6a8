//! Tampering with the cipher directory (threat model: an attacker with write access to it). Each
//! kind is applied at 200 seeded random positions; the affected read must fail (EIO, or the entry
//! disappears for names) and fsck must report it; no read may return wrong plaintext, and the
//! daemon must survive all of it. KMSFS_TAMPER_SEED repeats a run, KMSFS_TAMPER_CASES changes the
//! number of cases per kind.

mod common;
use common::*;
use kmsfs::fs::fsck::{Problem, Report};
use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

const BLOCK: usize = 4124;
const HEADER: usize = 1024;

fn cases() -> usize {
    std::env::var("KMSFS_TAMPER_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200)
}

fn content(i: usize) -> Vec<u8> {
    (0..5 * 4096 + 100 + i).map(|j| (j * 7 + i) as u8).collect()
}

struct Lab {
    m: Mounted,
    provider: kmsfs::provider::LocalProvider,
    /// Plaintext name → backing path.
    backing: HashMap<String, PathBuf>,
    rng: Rng,
}

impl Lab {
    fn new() -> Lab {
        let m = Mounted::new();
        // No kernel caching of names or attributes: every lookup reaches the daemon.
        let cfg = m.env.path("kmsfs.toml");
        fs::write(&cfg, "[mount]\nattr_ttl_ms = 0\n").unwrap();
        m.unmount();
        m.mount(&["--config", cfg.to_str().unwrap()]);
        fs::create_dir(m.p("d")).unwrap();
        for i in 0..4 {
            fs::write(m.p(&format!("f{i}")), content(i)).unwrap();
        }
        for i in 0..2 {
            fs::write(m.p(&format!("d/g{i}")), content(10 + i)).unwrap();
        }
        let mut backing = HashMap::new();
        // Undo records come and go with open files: only what is still there counts.
        let by_ino: HashMap<u64, PathBuf> = files_under(&m.cipher)
            .into_iter()
            .filter_map(|p| Some((fs::metadata(&p).ok()?.ino(), p)))
            .collect();
        for n in ["f0", "f1", "f2", "f3", "d/g0", "d/g1"] {
            let ino = fs::metadata(m.p(n)).unwrap().ino();
            backing.insert(n.to_string(), by_ino[&ino].clone());
        }
        let ks = kmsfs::keystore::KeyStore::open(
            &m.env.store,
            &kmsfs::keystore::rootkey::RootSecret::key_from_file(&m.env.root_key).unwrap(),
        )
        .unwrap();
        let provider = kmsfs::provider::LocalProvider::new(kmsfs::kms::Kms::new(
            ks,
            kmsfs::clock::Clock::System,
        ));
        let seed = seed_from("KMSFS_TAMPER_SEED");
        Lab {
            m,
            provider,
            backing,
            rng: Rng(seed),
        }
    }

    fn fsck(&self) -> Report {
        kmsfs::fs::fsck::fsck(
            &self.m.cipher,
            &self.provider,
            &kmsfs::kms::Caller::current(),
            &mut |_| {},
        )
        .unwrap()
    }

    fn file(&mut self) -> (String, usize) {
        let i = self.rng.below(4);
        (format!("f{i}"), i)
    }

    /// Reading `name` must fail with EIO, and never return other bytes than its content. A
    /// header is checked when the file is opened while no handle has it open, and the release
    /// of the last read's handle reaches the daemon a moment after close returns: a read that
    /// raced it may still be served, with the data key already in memory (the right bytes), so
    /// that read is tried again once the daemon has let the file go.
    fn read_fails(&self, name: &str, i: usize, case: &str) {
        for attempt in 0..2 {
            match fs::read(self.m.p(name)) {
                Ok(data) => assert_eq!(data, content(i), "{case}: wrong plaintext returned"),
                Err(e) => {
                    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{case}: {e}");
                    return;
                }
            }
            if attempt == 0 {
                self.m.wait_released();
            }
        }
        panic!("{case}: the damage went unnoticed");
    }

    fn fsck_reports(&self, name: &str, problems: &[Problem], case: &str) {
        let r = self.fsck();
        let want = format!("/{name}");
        assert!(
            r.findings
                .iter()
                .any(|f| (f.path == want || f.backing == self.backing[name])
                    && problems.contains(&f.problem)),
            "{case}: fsck did not report it: {:?}",
            r.findings
        );
    }

    fn alive(&self) {
        assert_eq!(
            fs::read(self.m.p("d/g1")).unwrap(),
            content(11),
            "the daemon serves on"
        );
    }
}

fn with_restored(p: &Path, f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let good = fs::read(p).unwrap();
    let mut bad = good.clone();
    f(&mut bad);
    fs::write(p, &bad).unwrap();
    good
}

#[test]
fn block_and_header_damage_is_eio_and_reported() {
    let mut lab = Lab::new();
    for case in 0..cases() {
        // A flipped bit in a block.
        let (name, i) = lab.file();
        let p = lab.backing[&name].clone();
        let len = fs::metadata(&p).unwrap().len() as usize;
        let pos = HEADER + lab.rng.below(len - HEADER);
        let bit = 1u8 << lab.rng.below(8);
        let good = with_restored(&p, |b| b[pos] ^= bit);
        lab.read_fails(&name, i, &format!("block bit, case {case}, byte {pos}"));
        lab.fsck_reports(
            &name,
            &[Problem::CorruptBlocks],
            &format!("block bit {case}"),
        );
        fs::write(&p, &good).unwrap();

        // A flipped bit in the authenticated part of the header (prefix or the live slot).
        let h = kmsfs::fs::header::parse(kmsfs::fs::header::Kind::File, &good).unwrap();
        let slot = &h.slots[0];
        let start = kmsfs::fs::header::slot_offset(slot.index);
        let used: Vec<usize> = (0..24)
            .chain(start..start + 10 + slot.blob.len())
            .chain(start + kmsfs::fs::header::SLOT_LEN - 32..start + kmsfs::fs::header::SLOT_LEN)
            .collect();
        let pos = used[lab.rng.below(used.len())];
        let good = with_restored(&p, |b| b[pos] ^= bit);
        lab.read_fails(&name, i, &format!("header bit, case {case}, byte {pos}"));
        lab.fsck_reports(
            &name,
            &[Problem::CorruptHeader],
            &format!("header bit {case}"),
        );
        fs::write(&p, &good).unwrap();
    }
    lab.alive();
}

#[test]
fn moved_swapped_cut_and_copied_blocks_and_headers_are_eio() {
    let mut lab = Lab::new();
    for case in 0..cases() {
        let (name, i) = lab.file();
        let p = lab.backing[&name].clone();
        // Two different full blocks of one file swapped.
        let (a, b) = (lab.rng.below(5), lab.rng.below(5));
        if a != b {
            let good = with_restored(&p, |d| {
                let (x, y) = (HEADER + a * BLOCK, HEADER + b * BLOCK);
                let ba = d[x..x + BLOCK].to_vec();
                let bb = d[y..y + BLOCK].to_vec();
                d[x..x + BLOCK].copy_from_slice(&bb);
                d[y..y + BLOCK].copy_from_slice(&ba);
            });
            lab.read_fails(&name, i, &format!("swap within, case {case}"));
            lab.fsck_reports(&name, &[Problem::CorruptBlocks], "swap within");
            fs::write(&p, &good).unwrap();
        }
        // The same block of another file put in.
        let (other, _) = lab.file();
        if other != name {
            let k = lab.rng.below(5);
            let src = fs::read(&lab.backing[&other]).unwrap();
            let good = with_restored(&p, |d| {
                let x = HEADER + k * BLOCK;
                d[x..x + BLOCK].copy_from_slice(&src[x..x + BLOCK]);
            });
            lab.read_fails(&name, i, &format!("swap between, case {case}"));
            lab.fsck_reports(&name, &[Problem::CorruptBlocks], "swap between");
            fs::write(&p, &good).unwrap();

            // The whole header of the other file copied over this one's.
            let good = with_restored(&p, |d| d[..HEADER].copy_from_slice(&src[..HEADER]));
            lab.read_fails(&name, i, &format!("copied header, case {case}"));
            lab.fsck_reports(
                &name,
                &[Problem::CorruptBlocks, Problem::Truncated],
                "copied header",
            );
            fs::write(&p, &good).unwrap();
        }
        // Whole trailing blocks cut off.
        let cut = 1 + lab.rng.below(5);
        let good = with_restored(&p, |d| {
            let n = d.len();
            d.truncate(n - (n - HEADER) % BLOCK - (cut - 1) * BLOCK);
        });
        lab.read_fails(&name, i, &format!("cut {cut} blocks, case {case}"));
        lab.fsck_reports(&name, &[Problem::CorruptBlocks, Problem::Truncated], "cut");
        fs::write(&p, &good).unwrap();
    }
    lab.alive();
}

#[test]
fn tampered_and_foreign_names_disappear_and_are_reported() {
    let mut lab = Lab::new();
    let root_entries = |cipher: &Path| -> Vec<PathBuf> {
        fs::read_dir(cipher)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                !p.file_name()
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .starts_with("kmsfs.")
            })
            .collect()
    };
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    for case in 0..cases() {
        // One character of an encrypted name changed.
        let (name, _) = lab.file();
        let p = lab.backing[&name].clone();
        let enc = p.file_name().unwrap().to_str().unwrap().to_string();
        let k = lab.rng.below(enc.len());
        let mut chars = enc.clone().into_bytes();
        let c = loop {
            let c = alphabet[lab.rng.below(alphabet.len())];
            if c != chars[k] {
                break c;
            }
        };
        chars[k] = c;
        let bad = p.with_file_name(String::from_utf8(chars).unwrap());
        fs::rename(&p, &bad).unwrap();
        assert_eq!(
            fs::metadata(lab.m.p(&name)).unwrap_err().raw_os_error(),
            Some(libc::ENOENT),
            "case {case}"
        );
        assert!(
            !fs::read_dir(&lab.m.mnt)
                .unwrap()
                .any(|e| e.unwrap().file_name().to_str() == Some(name.as_str()))
        );
        let r = lab.fsck();
        assert!(
            r.findings
                .iter()
                .any(|f| f.problem == Problem::UndecryptableName && f.backing == bad),
            "case {case}: {:?}",
            r.findings
        );
        fs::rename(&bad, &p).unwrap();

        // An entry of the subdirectory moved into the root: its name does not decrypt there.
        let g = format!("d/g{}", lab.rng.below(2));
        let src = lab.backing[&g].clone();
        let moved = lab.m.cipher.join(src.file_name().unwrap());
        fs::rename(&src, &moved).unwrap();
        let listed: Vec<String> = fs::read_dir(&lab.m.mnt)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(
            listed.len(),
            5,
            "case {case}: the foreign entry stays hidden: {listed:?}"
        );
        let r = lab.fsck();
        assert!(
            r.findings
                .iter()
                .any(|f| f.problem == Problem::UndecryptableName && f.backing == moved),
            "case {case}"
        );
        fs::rename(&moved, &src).unwrap();
    }
    assert_eq!(root_entries(&lab.m.cipher).len(), 5);
    assert!(lab.fsck().findings.is_empty());
    lab.alive();
}

#[test]
fn replayed_header_after_rewrap_and_retire_is_refused() {
    let mut lab = Lab::new();
    let mnt = lab.m.mnt.to_str().unwrap().to_string();
    // Two generations of headers re-wrapped away, their versions retired.
    let mut old: Vec<(String, Vec<u8>)> = Vec::new();
    for _ in 0..2 {
        for (name, p) in &lab.backing {
            if name.starts_with('f') {
                old.push((name.clone(), fs::read(p).unwrap()[..HEADER].to_vec()));
            }
        }
        lab.m.env.ok(&["key", "rotate", "alias/fs"]);
        lab.m.env.ok(&["rewrap", "-q", &mnt]);
    }
    lab.m
        .env
        .ok(&["key", "retire-version", "alias/fs", "--below", "3"]);
    std::thread::sleep(std::time::Duration::from_millis(400));
    for case in 0..cases() {
        let (name, header) = old[lab.rng.below(old.len())].clone();
        let i: usize = name[1..].parse().unwrap();
        let p = lab.backing[&name].clone();
        let good = with_restored(&p, |d| d[..HEADER].copy_from_slice(&header));
        match fs::read(lab.m.p(&name)) {
            Ok(data) => panic!(
                "case {case}: replayed header accepted (right plaintext: {})",
                data == content(i)
            ),
            Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EACCES), "case {case}"),
        }
        lab.fsck_reports(&name, &[Problem::KeyUnusable], "replay");
        fs::write(&p, &good).unwrap();
    }
    lab.alive();
}

#[test]
fn garbled_config_and_key_store_are_clear_errors_at_mount() {
    let mut lab = Lab::new();
    lab.m.unmount();
    let mnt = lab.m.mnt.to_str().unwrap().to_string();
    let cipher = lab.m.cipher.to_str().unwrap().to_string();
    let targets = [
        lab.m.cipher.join("kmsfs.conf"),
        lab.m.env.store.join("keystore.json"),
        lab.m.env.store.join("keys.db"),
    ];
    for case in 0..cases() {
        let t = &targets[case % targets.len()];
        let good = with_restored(t, |d| {
            if lab.rng.below(2) == 0 {
                let n = lab.rng.below(d.len());
                d.truncate(n);
            } else {
                for _ in 0..1 + lab.rng.below(4) {
                    let i = lab.rng.below(d.len());
                    d[i] ^= 1 << lab.rng.below(8);
                }
            }
        });
        let out = lab.m.env.run(&["mount", &cipher, &mnt]);
        if out.status.success() {
            // A change that leaves the file meaning the same (JSON whitespace, say) may mount.
            lab.alive();
            lab.m.unmount();
        } else {
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                err.starts_with("kmsfs: ") && err.contains("Exception"),
                "case {case}: unclear error: {err}"
            );
            assert!(!err.contains("panicked"), "case {case}: {err}");
            assert!(!is_mounted(&lab.m.mnt));
        }
        fs::write(t, &good).unwrap();
    }
    lab.m.mount(&[]);
    lab.alive();
}
