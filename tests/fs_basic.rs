//! The filesystem through a real mount: contents, sizes, holes, truncation, and what the cipher
//! directory holds.

mod common;
use common::*;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn files_of_every_size_round_trip_and_survive_remount() {
    let m = Mounted::new();
    let sizes = [
        0usize,
        1,
        100,
        4095,
        4096,
        4097,
        8192,
        3 * 4096 + 17,
        (1 << 20) + 3,
    ];
    for (i, n) in sizes.iter().enumerate() {
        let data = pattern(*n, i as u8);
        fs::write(m.p(&format!("f{n}")), &data).unwrap();
        assert_eq!(fs::read(m.p(&format!("f{n}"))).unwrap(), data, "size {n}");
        assert_eq!(
            fs::metadata(m.p(&format!("f{n}"))).unwrap().len(),
            *n as u64
        );
    }
    m.unmount();
    m.mount(&[]);
    for (i, n) in sizes.iter().enumerate() {
        assert_eq!(
            fs::read(m.p(&format!("f{n}"))).unwrap(),
            pattern(*n, i as u8),
            "after remount, size {n}"
        );
    }
}

#[test]
fn cipher_directory_holds_no_plaintext_names_or_content() {
    let m = Mounted::new();
    let marker = b"PLAINTEXT-MARKER-kmsfs-0123456789";
    let mut body = Vec::new();
    for _ in 0..300 {
        body.extend_from_slice(marker);
    }
    fs::create_dir(m.p("secret-dir-name")).unwrap();
    fs::write(m.p("secret-dir-name/secret-file-name.txt"), &body).unwrap();
    std::os::unix::fs::symlink("secret-link-target", m.p("secret-link")).unwrap();
    set_xattr(
        &m.p("secret-dir-name/secret-file-name.txt"),
        "user.secret-attr",
        b"SECRET-XATTR-VALUE",
    )
    .unwrap();
    for f in files_under(&m.cipher) {
        // An undo record may be removed between the listing and the read.
        let Ok(data) = fs::read(&f) else { continue };
        assert!(
            !contains(&data, &marker[..16]),
            "{} holds plaintext",
            f.display()
        );
        assert!(!contains(&data, b"SECRET-XATTR-VALUE"));
        let name = f.to_string_lossy().to_string();
        assert!(!name.contains("secret"), "plaintext name in {name}");
    }
    let links: Vec<_> = fs::read_dir(&m.cipher)
        .unwrap()
        .flatten()
        .filter(|e| e.file_type().unwrap().is_symlink())
        .collect();
    assert_eq!(links.len(), 1);
    assert!(
        !fs::read_link(links[0].path())
            .unwrap()
            .to_string_lossy()
            .contains("secret")
    );
}

#[test]
fn writes_at_offsets_holes_and_sparse_files() {
    let m = Mounted::new();
    let p = m.p("sparse");
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&p)
        .unwrap();
    f.write_all_at(b"start", 0).unwrap();
    f.write_all_at(b"far away", 10 * 1024 * 1024).unwrap();
    let meta = fs::metadata(&p).unwrap();
    assert_eq!(meta.len(), 10 * 1024 * 1024 + 8);
    assert!(
        meta.blocks() * 512 < 1024 * 1024,
        "holes stay holes: {} blocks",
        meta.blocks()
    );
    let mut buf = vec![1u8; 8192];
    f.read_exact_at(&mut buf, 5 * 1024 * 1024).unwrap();
    assert!(buf.iter().all(|b| *b == 0), "holes read as zeros");
    let mut head = [0u8; 16];
    f.read_exact_at(&mut head, 0).unwrap();
    assert_eq!(&head[..5], b"start");
    assert!(head[5..].iter().all(|b| *b == 0));
    // Read-modify-write across a block boundary, inside existing data.
    let data = pattern(20000, 7);
    let q = m.p("rmw");
    fs::write(&q, &data).unwrap();
    let g = fs::OpenOptions::new().write(true).open(&q).unwrap();
    g.write_all_at(b"XYZXYZXYZ", 4092).unwrap();
    let mut want = data.clone();
    want[4092..4101].copy_from_slice(b"XYZXYZXYZ");
    assert_eq!(fs::read(&q).unwrap(), want);
    // Extending a partial last block pads it with zeros.
    g.write_all_at(b"end", 30000).unwrap();
    want.resize(30000, 0);
    want.extend_from_slice(b"end");
    assert_eq!(fs::read(&q).unwrap(), want);
}

#[test]
fn truncate_shrink_extend_and_zero_gives_a_new_file_id() {
    let m = Mounted::new();
    let p = m.p("t");
    let data = pattern(3 * 4096 + 100, 3);
    fs::write(&p, &data).unwrap();
    let header = |m: &Mounted| {
        let f = m.cipher_files();
        assert_eq!(f.len(), 1);
        fs::read(&f[0]).unwrap()[8..24].to_vec()
    };
    let id1 = header(&m);
    let f = fs::OpenOptions::new().write(true).open(&p).unwrap();
    f.set_len(5000).unwrap();
    assert_eq!(fs::read(&p).unwrap(), &data[..5000]);
    f.set_len(4096).unwrap();
    assert_eq!(fs::read(&p).unwrap(), &data[..4096]);
    f.set_len(9000).unwrap();
    let mut want = data[..4096].to_vec();
    want.resize(9000, 0);
    assert_eq!(fs::read(&p).unwrap(), want);
    assert_eq!(header(&m), id1, "truncation keeps the id");
    f.set_len(0).unwrap();
    assert_eq!(fs::read(&p).unwrap(), b"");
    let id2 = header(&m);
    assert_ne!(id1, id2, "truncation to zero gives a new file id and key");
    fs::write(&p, b"again").unwrap();
    assert_ne!(header(&m), id2, "O_TRUNC rewrite too");
    assert_eq!(fs::read(&p).unwrap(), b"again");
}

#[test]
fn append_excl_and_seek() {
    let m = Mounted::new();
    let p = m.p("log");
    fs::write(&p, b"one\n").unwrap();
    for line in [&b"two\n"[..], b"three\n"] {
        let mut f = fs::OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(line).unwrap();
    }
    assert_eq!(fs::read(&p).unwrap(), b"one\ntwo\nthree\n");
    let e = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&p)
        .unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists);
    let mut f = fs::File::open(&p).unwrap();
    f.seek(SeekFrom::Start(4)).unwrap();
    let mut s = String::new();
    f.read_to_string(&mut s).unwrap();
    assert_eq!(s, "two\nthree\n");
    let mode = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o640)
        .open(m.p("m"))
        .unwrap();
    drop(mode);
    assert_eq!(fs::metadata(m.p("m")).unwrap().mode() & 0o777, 0o640);
}

#[test]
fn corruption_is_eio_never_wrong_bytes() {
    let m = Mounted::new();
    let data = pattern(5 * 4096, 9);
    fs::write(m.p("c"), &data).unwrap();
    let cf = m.cipher_files()[0].clone();
    let good = fs::read(&cf).unwrap();
    // A flipped bit in block 2 fails reads of block 2 only.
    let mut bad = good.clone();
    bad[1024 + 2 * 4124 + 100] ^= 0x04;
    fs::write(&cf, &bad).unwrap();
    m.unmount();
    m.mount(&[]);
    let f = fs::File::open(m.p("c")).unwrap();
    let mut b = vec![0u8; 4096];
    f.read_exact_at(&mut b, 0).unwrap();
    assert_eq!(b, &data[..4096]);
    let e = f.read_exact_at(&mut b, 2 * 4096).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO));
    assert!(fs::read(m.p("c")).is_err());
    drop(f);
    assert!(
        m.log_text().contains("block 2 failed authentication"),
        "{}",
        m.log_text()
    );
    // Cutting the last whole block off is detected, not read as a shorter file.
    fs::write(&cf, &good[..good.len() - 4124]).unwrap();
    m.unmount();
    m.mount(&[]);
    assert_eq!(
        fs::read(m.p("c")).unwrap_err().raw_os_error(),
        Some(libc::EIO)
    );
    // A damaged header makes the file unreadable.
    let mut bad = good.clone();
    bad[40] ^= 1;
    fs::write(&cf, &bad).unwrap();
    m.unmount();
    m.mount(&[]);
    assert_eq!(
        fs::File::open(m.p("c")).unwrap_err().raw_os_error(),
        Some(libc::EIO)
    );
    fs::write(&cf, &good).unwrap();
    m.unmount();
    m.mount(&[]);
    assert_eq!(fs::read(m.p("c")).unwrap(), data);
}

#[test]
fn mount_refuses_foreign_dirs_and_bad_mount_points() {
    let m = Mounted::new();
    let e = &m.env;
    let plain = e.path("plain");
    fs::create_dir(&plain).unwrap();
    let mp = e.path("mp2");
    fs::create_dir(&mp).unwrap();
    let err = e.fails(
        &["mount", plain.to_str().unwrap(), mp.to_str().unwrap()],
        15,
    );
    assert!(err.contains("not a kmsfs cipher directory"), "{err}");
    let err = e.fails(
        &[
            "mount",
            m.cipher.to_str().unwrap(),
            e.path("missing").to_str().unwrap(),
        ],
        15,
    );
    assert!(err.contains("mkdir"), "{err}");
    let err = e.fails(
        &["mount", m.cipher.to_str().unwrap(), m.mnt.to_str().unwrap()],
        15,
    );
    assert!(err.contains("already a mount point"), "{err}");
    fs::write(mp.join("x"), b"").unwrap();
    let err = e.fails(
        &["mount", m.cipher.to_str().unwrap(), mp.to_str().unwrap()],
        15,
    );
    assert!(err.contains("not empty"), "{err}");
    // A modified config is refused.
    let cfg = m.cipher.join("kmsfs.conf");
    let text = fs::read_to_string(&cfg).unwrap();
    fs::write(
        &cfg,
        text.replace("\"block_size\": 4096", "\"block_size\": 4097"),
    )
    .unwrap();
    fs::remove_file(mp.join("x")).unwrap();
    let err = e.fails(
        &["mount", m.cipher.to_str().unwrap(), mp.to_str().unwrap()],
        15,
    );
    assert!(err.contains("modified"), "{err}");
    // init refuses a non-empty directory.
    let err = e.fails(
        &["init", m.cipher.to_str().unwrap(), "--key", "alias/fs"],
        15,
    );
    assert!(err.contains("not empty"), "{err}");
}

#[test]
fn read_only_mount() {
    let m = Mounted::new();
    fs::write(m.p("r"), b"data").unwrap();
    m.unmount();
    m.mount(&["--read-only"]);
    assert_eq!(fs::read(m.p("r")).unwrap(), b"data");
    let e = fs::write(m.p("r"), b"x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS));
    assert_eq!(
        fs::create_dir(m.p("d")).unwrap_err().raw_os_error(),
        Some(libc::EROFS)
    );
}

#[test]
fn mount_widens_the_kernel_readahead_and_reads_stay_exact() {
    let readahead = |m: &Mounted| -> u32 {
        let dev = fs::metadata(&m.mnt).unwrap().dev();
        let (maj, min) = (nix::sys::stat::major(dev), nix::sys::stat::minor(dev));
        fs::read_to_string(format!("/sys/class/bdi/{maj}:{min}/read_ahead_kb"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let m = Mounted::new();
    assert_eq!(readahead(&m), 4096);
    // A cold sequential read now arrives as 1 MiB requests: every byte must still be exact.
    let data = pattern(9 << 20, 3);
    fs::write(m.p("big"), &data).unwrap();
    m.unmount();
    m.mount(&["--readahead-kib", "512"]);
    assert_eq!(readahead(&m), 512);
    assert!(fs::read(m.p("big")).unwrap() == data);
    m.unmount();
    m.mount(&[]);
    assert!(fs::read(m.p("big")).unwrap() == data);
}
