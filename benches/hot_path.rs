//! The hot paths without a mount: block encryption and decryption (4 KiB and 1 MiB), and a
//! file header's data key wrapped and unwrapped through the local KMS (GenerateDataKey and
//! Decrypt, each with its audit record). `cargo bench`; compare runs on the same machine.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kmsfs::fs::cipherdir;
use kmsfs::fs::contentenc::{BLOCK, ContentCipher};
use kmsfs::fs::header::Kind;
use kmsfs::kms::Caller;
use kmsfs::provider::LocalProvider;
use std::hint::black_box;

fn blocks(c: &mut Criterion) {
    let cipher = ContentCipher::new(&[7u8; 32], [1u8; 16]);
    let plain = vec![0x5au8; BLOCK as usize];
    let mut g = c.benchmark_group("blocks");
    for (name, n) in [("4KiB", 1u64), ("1MiB", 256)] {
        g.throughput(Throughput::Bytes(n * BLOCK));
        g.bench_function(format!("encrypt_{name}"), |b| {
            let mut out = Vec::with_capacity((n * 4124) as usize);
            b.iter(|| {
                out.clear();
                for i in 0..n {
                    cipher.encrypt_block(i, false, &plain, &mut out).unwrap();
                }
                black_box(&out);
            })
        });
        let mut sealed = Vec::new();
        for i in 0..n {
            cipher.encrypt_block(i, false, &plain, &mut sealed).unwrap();
        }
        g.bench_function(format!("decrypt_{name}"), |b| {
            let mut out = Vec::with_capacity((n * BLOCK) as usize);
            b.iter(|| {
                out.clear();
                for (i, chunk) in sealed.chunks(4124).enumerate() {
                    cipher
                        .decrypt_block(i as u64, false, chunk, &mut out)
                        .unwrap();
                }
                black_box(&out);
            })
        });
    }
    g.finish();
}

/// A key store with one CMK in a temporary directory (tmpfs if /dev/shm exists), made by the
/// real binary.
fn provider() -> (tempfile::TempDir, LocalProvider) {
    let base = if std::path::Path::new("/dev/shm").is_dir() {
        tempfile::tempdir_in("/dev/shm").unwrap()
    } else {
        tempfile::tempdir().unwrap()
    };
    let store = base.path().join("ks");
    let rk = base.path().join("root.key");
    std::fs::write(&rk, [3u8; 32]).unwrap();
    let run = |args: &[&str]| {
        let ok = std::process::Command::new(env!("CARGO_BIN_EXE_kmsfs"))
            .args(args)
            .env("KMSFS_KEYSTORE", &store)
            .env("KMSFS_ROOT_KEY_FILE", &rk)
            .output()
            .unwrap()
            .status
            .success();
        assert!(ok, "kmsfs {args:?}");
    };
    run(&["keystore", "init"]);
    run(&["key", "create", "--alias", "bench"]);
    let secret = kmsfs::keystore::rootkey::RootSecret::key_from_file(&rk).unwrap();
    let ks = kmsfs::keystore::KeyStore::open(&store, &secret).unwrap();
    let p = LocalProvider::new(kmsfs::kms::Kms::new(ks, kmsfs::clock::Clock::System));
    (base, p)
}

fn headers(c: &mut Criterion) {
    let (_dir, p) = provider();
    let caller = Caller::current();
    let mut g = c.benchmark_group("header");
    g.bench_function("wrap_new_file_key", |b| {
        b.iter(|| black_box(cipherdir::new_header(Kind::File, &p, &caller, "alias/bench").unwrap()))
    });
    let (h, _) = cipherdir::new_header(Kind::File, &p, &caller, "alias/bench").unwrap();
    g.bench_function("unwrap_file_key", |b| {
        b.iter(|| black_box(cipherdir::unwrap_header(Kind::File, &h, &p, &caller).is_ok()))
    });
    g.finish();
}

criterion_group!(benches, blocks, headers);
criterion_main!(benches);
