//! Differential test: a long seeded random sequence of operations applied to a kmsfs mount and to a
//! plain directory must give the same results and leave identical trees.
//! KMSFS_DIFF_SEED and KMSFS_DIFF_OPS override the seed and the number of operations.

mod common;
use common::*;
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // SplitMix64.
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len() as u64) as usize]
    }
}

const DIRS: [&str; 3] = ["", "d1", "d1/d2"];
const NAMES: [&str; 5] = ["a", "b", "c", "long-name-with-some-length", "e"];

fn rel(rng: &mut Rng) -> String {
    let d = rng.pick(&DIRS);
    let n = rng.pick(&NAMES);
    if d.is_empty() {
        n.to_string()
    } else {
        format!("{d}/{n}")
    }
}

/// One operation's outcome, comparable between the two trees.
fn outcome<T: std::fmt::Debug>(r: std::io::Result<T>) -> String {
    match r {
        Ok(v) => format!("ok {v:?}"),
        Err(e) => format!("err {:?}", e.raw_os_error()),
    }
}

fn apply(root: &Path, op: &Op) -> String {
    let p = |r: &str| root.join(r);
    match op {
        Op::Write { path, offset, data } => outcome(
            fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(p(path))
                .and_then(|f| f.write_all_at(data, *offset)),
        ),
        Op::Append { path, data } => outcome(
            fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p(path))
                .and_then(|mut f| {
                    use std::io::Write;
                    f.write_all(data)
                }),
        ),
        Op::Truncate { path, size } => outcome(
            fs::OpenOptions::new()
                .write(true)
                .open(p(path))
                .and_then(|f| f.set_len(*size)),
        ),
        Op::Read { path, offset, len } => outcome(fs::File::open(p(path)).and_then(|f| {
            let mut buf = vec![0u8; *len];
            let n = f.read_at(&mut buf, *offset)?;
            buf.truncate(n);
            Ok(crate_hash(&buf))
        })),
        Op::Rename { from, to } => outcome(fs::rename(p(from), p(to))),
        Op::Link { from, to } => outcome(fs::hard_link(p(from), p(to))),
        Op::Unlink { path } => outcome(fs::remove_file(p(path))),
        Op::Mkdir { path } => outcome(fs::create_dir(p(path))),
        Op::Rmdir { path } => outcome(fs::remove_dir(p(path))),
    }
}

fn crate_hash(b: &[u8]) -> (usize, u64) {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for x in b {
        h = (h ^ u64::from(*x)).wrapping_mul(0x100_0000_01b3);
    }
    (b.len(), h)
}

#[derive(Debug)]
enum Op {
    Write {
        path: String,
        offset: u64,
        data: Vec<u8>,
    },
    Append {
        path: String,
        data: Vec<u8>,
    },
    Truncate {
        path: String,
        size: u64,
    },
    Read {
        path: String,
        offset: u64,
        len: usize,
    },
    Rename {
        from: String,
        to: String,
    },
    Link {
        from: String,
        to: String,
    },
    Unlink {
        path: String,
    },
    Mkdir {
        path: String,
    },
    Rmdir {
        path: String,
    },
}

fn random_op(rng: &mut Rng) -> Op {
    let data = |rng: &mut Rng| {
        let n = match rng.below(4) {
            0 => 1 + rng.below(16),
            1 => 4096,
            2 => 1 + rng.below(9000),
            _ => 1 + rng.below(300),
        } as usize;
        let b = rng.next() as u8;
        (0..n).map(|i| b.wrapping_add(i as u8)).collect::<Vec<u8>>()
    };
    let offset = |rng: &mut Rng| match rng.below(3) {
        0 => rng.below(100),
        1 => rng.below(8) * 4096 + rng.below(3),
        _ => rng.below(70_000),
    };
    match rng.below(20) {
        0..=5 => Op::Write {
            path: rel(rng),
            offset: offset(rng),
            data: data(rng),
        },
        6 => Op::Append {
            path: rel(rng),
            data: data(rng),
        },
        7 | 8 => Op::Truncate {
            path: rel(rng),
            size: offset(rng),
        },
        9..=11 => Op::Read {
            path: rel(rng),
            offset: offset(rng),
            len: 1 + rng.below(20_000) as usize,
        },
        12 | 13 => Op::Rename {
            from: rel(rng),
            to: rel(rng),
        },
        14 => Op::Link {
            from: rel(rng),
            to: rel(rng),
        },
        15 | 16 => Op::Unlink { path: rel(rng) },
        17 | 18 => Op::Mkdir {
            path: rng.pick(&["d1", "d1/d2", "d1/a", "b"]).to_string(),
        },
        _ => Op::Rmdir {
            path: rng.pick(&["d1", "d1/d2", "d1/a", "b"]).to_string(),
        },
    }
}

/// Everything observable about a tree: per path, type, size, content hash, mode and link count.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let m = fs::symlink_metadata(e.path()).unwrap();
            let rel = e.path().strip_prefix(root).unwrap().to_path_buf();
            if m.is_dir() {
                stack.push(e.path());
                out.insert(rel, format!("dir nlink={}", m.nlink()));
            } else {
                let data = fs::read(e.path()).unwrap();
                out.insert(
                    rel,
                    format!(
                        "file size={} nlink={} hash={:?} mode={:o}",
                        m.len(),
                        m.nlink(),
                        crate_hash(&data),
                        m.mode()
                    ),
                );
            }
        }
    }
    out
}

#[test]
fn random_operations_match_a_plain_directory() {
    let seed = seed_from("KMSFS_DIFF_SEED");
    let ops: usize = std::env::var("KMSFS_DIFF_OPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3000);
    eprintln!("differential test: {ops} operations (KMSFS_DIFF_OPS)");
    let m = Mounted::new();
    let plain = m.env.path("plain");
    fs::create_dir(&plain).unwrap();
    let mut rng = Rng(seed);
    for i in 0..ops {
        let op = random_op(&mut rng);
        let want = apply(&plain, &op);
        let got = apply(&m.mnt, &op);
        assert_eq!(got, want, "seed {seed}, op {i}: {op:?}");
        if i % 500 == 499 {
            assert_eq!(
                snapshot(&m.mnt),
                snapshot(&plain),
                "seed {seed}, after op {i}"
            );
        }
    }
    assert_eq!(
        snapshot(&m.mnt),
        snapshot(&plain),
        "seed {seed}, at the end"
    );
    m.unmount();
    m.mount(&[]);
    assert_eq!(
        snapshot(&m.mnt),
        snapshot(&plain),
        "seed {seed}, after remount"
    );
}
