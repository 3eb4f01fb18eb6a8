//! Key lifecycle inside a mounted filesystem: disable and enable take effect live, several CMKs in
//! one mount, rotation, rewrap (online and offline) and the inventory of versions in use.

mod common;
use common::*;
use std::fs;
use std::os::unix::fs::FileExt;
use std::time::Duration;

/// The requirement is one second; the mount polls the key store every 200 ms.
const PROPAGATION: Duration = Duration::from_secs(1);

/// The errno a call failed with, if it failed.
fn errno(r: std::io::Result<impl Sized>) -> Option<i32> {
    r.err().and_then(|e| e.raw_os_error())
}

#[test]
fn disable_is_honoured_live_and_enable_restores_without_remount() {
    let m = Mounted::new();
    let other = m.env.create_key(&["--alias", "other"]);
    fs::write(m.p("a"), b"under fs").unwrap();
    fs::create_dir(m.p("fsdir")).unwrap();
    fs::write(m.p("fsdir/x"), b"x").unwrap();
    // From here on, new entries in the root (and below) use the other key.
    m.env
        .ok(&["set-key", m.mnt.to_str().unwrap(), "alias/other"]);
    fs::create_dir(m.p("other")).unwrap();
    fs::write(m.p("other/b"), b"under other").unwrap();
    assert!(key_of(&m.p("other/b")).starts_with(&other));
    assert!(key_of(&m.p("a")).starts_with(&m.key));

    let h = fs::File::open(m.p("a")).unwrap();
    let mut buf = [0u8; 8];
    h.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(&buf, b"under fs");
    let w = fs::OpenOptions::new().write(true).open(m.p("a")).unwrap();
    fs::create_dir(m.p("other/sub")).unwrap();
    fs::write(m.p("other/sub/deep"), b"inherited").unwrap();
    assert!(
        key_of(&m.p("other/sub/deep")).starts_with(&other),
        "new subdirectories inherit the key"
    );

    m.env.ok(&["key", "disable", "alias/fs"]);
    std::thread::sleep(PROPAGATION);
    assert_eq!(
        errno(h.read_exact_at(&mut buf, 0)),
        Some(libc::EACCES),
        "an open handle stops reading"
    );
    assert_eq!(
        errno(w.write_all_at(b"x", 0)),
        Some(libc::EACCES),
        "and writing"
    );
    assert_eq!(
        errno(fs::read(m.p("a"))),
        Some(libc::EACCES),
        "new opens fail"
    );
    assert_eq!(
        errno(fs::write(m.p("fsdir/new"), b"x")),
        Some(libc::EACCES),
        "no new data keys"
    );
    assert_eq!(
        fs::read(m.p("other/b")).unwrap(),
        b"under other",
        "other keys keep working"
    );
    fs::write(m.p("other/c"), b"still fine").unwrap();
    // A directory's names are protected by its own key's CMK: fsdir's are unreadable now.
    assert_eq!(
        errno(fs::read_dir(m.p("fsdir")).map(|d| d.count())),
        Some(libc::EACCES)
    );
    assert!(
        m.log_text().contains("is no longer usable"),
        "{}",
        m.log_text()
    );

    m.env.ok(&["key", "enable", "alias/fs"]);
    std::thread::sleep(PROPAGATION);
    h.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(&buf, b"under fs", "the same handle reads again");
    w.write_all_at(b"U", 0).unwrap();
    drop(w);
    assert_eq!(fs::read(m.p("a")).unwrap(), b"Under fs");
    let denied: Vec<_> = m
        .env
        .audit_lines()
        .into_iter()
        .filter(|l| l["result"] == "DisabledException")
        .collect();
    assert!(!denied.is_empty());
    assert!(
        denied
            .iter()
            .any(|l| l["context"]["kmsfs:file-id"].is_string()),
        "denials name the file"
    );
}

#[test]
fn pending_deletion_acts_like_disabled_and_deletion_shreds() {
    let mut m = Mounted::new();
    fs::write(m.p("doomed"), b"bye").unwrap();
    m.env
        .ok(&["key", "schedule-deletion", "alias/fs", "--days", "7"]);
    std::thread::sleep(PROPAGATION);
    assert_eq!(errno(fs::read(m.p("doomed"))), Some(libc::EACCES));
    m.env.ok(&["key", "cancel-deletion", "alias/fs"]);
    std::thread::sleep(PROPAGATION);
    assert_eq!(
        errno(fs::read(m.p("doomed"))),
        Some(libc::EACCES),
        "cancelled means Disabled"
    );
    m.env.ok(&["key", "enable", "alias/fs"]);
    std::thread::sleep(PROPAGATION);
    assert_eq!(fs::read(m.p("doomed")).unwrap(), b"bye");
    // Past the deletion date the material is destroyed: unreadable for good.
    m.env
        .ok(&["key", "schedule-deletion", "alias/fs", "--days", "7"]);
    let later = chrono::Utc::now() + chrono::Duration::days(8);
    m.env.now = Some(later.to_rfc3339());
    m.env.ok(&["key", "list"]);
    m.env.now = None;
    std::thread::sleep(PROPAGATION);
    assert_eq!(errno(fs::read(m.p("doomed"))), Some(libc::EACCES));
    m.unmount();
    let mnt = m.mnt.to_str().unwrap().to_string();
    let err = m
        .env
        .fails(&["mount", m.cipher.to_str().unwrap(), &mnt], 10);
    assert!(err.contains("deleted"), "{err}");
}

#[test]
fn rotation_then_online_rewrap_moves_every_header_to_the_new_version() {
    let m = Mounted::new();
    fs::create_dir_all(m.p("d/e")).unwrap();
    for (i, p) in ["f1", "d/f2", "d/e/f3"].iter().enumerate() {
        fs::write(m.p(p), vec![i as u8; 10_000]).unwrap();
    }
    std::os::unix::fs::symlink("f1", m.p("link")).unwrap();
    m.env.ok(&["key", "rotate", "alias/fs"]);
    fs::write(m.p("after"), b"new").unwrap();
    assert!(
        key_of(&m.p("after")).ends_with(":2"),
        "new files use the new version"
    );
    assert!(key_of(&m.p("f1")).ends_with(":1"), "old files keep theirs");
    let before: Vec<Vec<u8>> = m
        .cipher_files()
        .iter()
        .map(|p| fs::read(p).unwrap())
        .collect();

    m.env.ok(&["rewrap", m.mnt.to_str().unwrap()]);
    for p in ["f1", "d/f2", "d/e/f3", "after", "d", "d/e", "."] {
        assert!(key_of(&m.p(p)).ends_with(":2"), "{p}: {}", key_of(&m.p(p)));
    }
    for (i, p) in ["f1", "d/f2", "d/e/f3"].iter().enumerate() {
        assert_eq!(fs::read(m.p(p)).unwrap(), vec![i as u8; 10_000]);
    }
    assert_eq!(fs::read_link(m.p("link")).unwrap().to_str(), Some("f1"));
    // Only headers changed: every data block is byte for byte what it was.
    let after: Vec<Vec<u8>> = m
        .cipher_files()
        .iter()
        .map(|p| fs::read(p).unwrap())
        .collect();
    for (b, a) in before.iter().zip(&after) {
        if b.len() == a.len() && b.len() > 1024 {
            assert_eq!(&b[1024..], &a[1024..], "data blocks untouched");
        }
    }
    let inv = m
        .env
        .json(&["key", "versions-in-use", m.cipher.to_str().unwrap()]);
    let keys = inv["Keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1, "{inv}");
    assert_eq!(keys[0]["KeyVersion"], 2);
    assert_eq!(keys[0]["Files"], 4);
    assert_eq!(keys[0]["Directories"], 3);
    assert_eq!(inv["VolumeKey"]["KeyVersion"], 2);

    // Move everything to another CMK. A file kept open across the re-wrap is governed by the
    // key it has now: disabling that one stops its reads at once...
    let held = fs::File::open(m.p("d/f2")).unwrap();
    let mut buf = vec![0u8; 10_000];
    m.env.create_key(&["--alias", "next"]);
    m.env
        .ok(&["rewrap", m.mnt.to_str().unwrap(), "--to", "alias/next"]);
    m.env.ok(&["key", "disable", "alias/next"]);
    std::thread::sleep(PROPAGATION);
    assert_eq!(errno(held.read_exact_at(&mut buf, 0)), Some(libc::EACCES));
    m.env.ok(&["key", "enable", "alias/next"]);
    // ... and the first one can go.
    m.env.ok(&["key", "disable", "alias/fs"]);
    std::thread::sleep(PROPAGATION);
    held.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(
        buf,
        vec![1u8; 10_000],
        "the open file reads on under the new key"
    );
    drop(held);
    let r = fs::read(m.p("d/e/f3"));
    assert!(r.is_ok(), "{r:?}: {}", m.log_text());
    assert_eq!(r.unwrap(), vec![2u8; 10_000]);
    assert_eq!(fs::read_link(m.p("link")).unwrap().to_str(), Some("f1"));
    fs::write(m.p("d/new"), b"x").unwrap();
    m.unmount();
    m.mount(&[]);
    assert_eq!(fs::read(m.p("d/f2")).unwrap(), vec![1u8; 10_000]);
}

/// Headers are re-wrapped a directory's entries at a time; one that fails is named with its
/// reason, and every other one is done.
#[test]
fn online_rewrap_names_the_header_it_cannot_rewrap_and_does_the_rest() {
    let m = Mounted::new();
    fs::create_dir_all(m.p("d/sub")).unwrap();
    for i in 0..300 {
        // 300 files: more than one batch.
        fs::write(m.p(&format!("d/f{i}")), vec![7u8; 100 + i]).unwrap();
    }
    // Known by its size: 123 bytes more than that of d/f0, the smallest.
    let sized: Vec<(u64, std::path::PathBuf)> = m
        .cipher_files()
        .into_iter()
        .map(|p| (fs::metadata(&p).unwrap().len(), p))
        .filter(|(len, _)| *len > 1024)
        .collect();
    let smallest = sized.iter().map(|(len, _)| *len).min().unwrap();
    let victim = &sized
        .iter()
        .find(|(len, _)| *len == smallest + 123)
        .expect("the backing file of d/f123")
        .1;
    m.env.ok(&["key", "rotate", "alias/fs"]);
    // A slot MAC no longer authenticates.
    let mut h = fs::read(victim).unwrap();
    h[32 + 496 - 1] ^= 1;
    fs::write(victim, &h).unwrap();

    // The batch request itself: the entries named, re-wrapped at once; a malformed one refused.
    let entries = |value: &[u8]| set_xattr(&m.p("d"), "user.kmsfs.rewrap.entries", value);
    entries(b"\0f1\0sub\0f2").unwrap();
    for p in ["d/f1", "d/sub", "d/f2"] {
        assert!(key_of(&m.p(p)).ends_with(":2"), "{p}");
    }
    assert!(key_of(&m.p("d/f3")).ends_with(":1"), "not named");
    for bad in [&b""[..], b"\0", b"\0f1\0", b"\0sub/x", b"\0.."] {
        assert_eq!(errno(entries(bad)), Some(libc::EINVAL), "{bad:?}");
    }
    assert_eq!(errno(entries(b"\0nothing")), Some(libc::ENOENT));

    let err = m.env.fails(&["rewrap", m.mnt.to_str().unwrap()], 15);
    assert!(
        err.contains("d/f123: the header failed authentication")
            && err.contains("1 headers could not be re-wrapped (302 were"),
        "{err}"
    );
    let inv = m
        .env
        .json(&["key", "versions-in-use", m.cipher.to_str().unwrap()]);
    let keys = inv["Keys"].as_array().unwrap();
    let count = |v: u64| {
        keys.iter().find(|k| k["KeyVersion"] == v).map(|k| {
            (
                k["Files"].as_u64().unwrap(),
                k["Directories"].as_u64().unwrap(),
            )
        })
    };
    assert_eq!(count(2), Some((299, 3)), "{inv}");
    assert_eq!(count(1), Some((1, 0)), "{inv}");
    assert_eq!(fs::read(m.p("d/f299")).unwrap(), vec![7u8; 399]);
}

#[test]
fn offline_rewrap_of_an_unmounted_cipher_directory() {
    let m = Mounted::new();
    fs::create_dir(m.p("d")).unwrap();
    fs::write(m.p("d/f"), b"offline").unwrap();
    m.env.ok(&["key", "rotate", "alias/fs"]);
    let cipher = m.cipher.to_str().unwrap().to_string();
    let err = m.env.fails(&["rewrap", &cipher], 15);
    assert!(err.contains("is mounted at"), "{err}");
    m.unmount();
    let out = m.env.ok(&["rewrap", &cipher]);
    assert!(out.contains("0 failed"), "{out}");
    let inv = m.env.json(&["key", "versions-in-use", &cipher]);
    assert_eq!(inv["Keys"][0]["KeyVersion"], 2, "{inv}");
    m.mount(&[]);
    assert_eq!(fs::read(m.p("d/f")).unwrap(), b"offline");
}

#[test]
fn retire_version_waits_until_nothing_uses_the_old_version() {
    let m = Mounted::new();
    fs::write(m.p("f"), b"old version").unwrap();
    let old_blob = m.env.encrypt("alias/fs", b"cli blob", &[]);
    m.env.ok(&["key", "rotate", "alias/fs"]);
    let err = m
        .env
        .fails(&["key", "retire-version", "alias/fs", "--below", "2"], 12);
    assert!(
        err.contains("still in use") && err.contains("kmsfs rewrap"),
        "{err}"
    );
    m.env.ok(&["rewrap", m.mnt.to_str().unwrap()]);
    m.env
        .ok(&["key", "retire-version", "alias/fs", "--below", "2"]);
    assert_eq!(
        m.env.json(&["key", "describe", "alias/fs"])["KeyMetadata"]["MinDecryptionVersion"],
        2
    );
    let err = m.env.fails_with(&["decrypt"], &old_blob, 12);
    assert!(err.contains("retired"), "{err}");
    std::thread::sleep(PROPAGATION);
    assert_eq!(fs::read(m.p("f")).unwrap(), b"old version");
    m.env
        .fails(&["key", "retire-version", "alias/fs", "--below", "3"], 15);
}

#[test]
fn reencrypt_gives_a_file_a_fresh_data_key_online() {
    let m = Mounted::new();
    let data: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
    fs::write(m.p("secret"), &data).unwrap();
    set_xattr(&m.p("secret"), "user.note", b"hi").unwrap();
    let id = |m: &Mounted| fs::read(&m.cipher_files()[0]).unwrap()[8..24].to_vec();
    let before = id(&m);
    let h = fs::File::open(m.p("secret")).unwrap();
    let out = m.env.ok(&["reencrypt", m.p("secret").to_str().unwrap()]);
    assert!(out.contains("1 files re-encrypted"), "{out}");
    assert_ne!(id(&m), before, "a new file id and data key");
    let mut buf = vec![0u8; data.len()];
    h.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(buf, data, "open handles keep working");
    assert_eq!(fs::read(m.p("secret")).unwrap(), data);
    assert_eq!(get_xattr(&m.p("secret"), "user.note").unwrap(), b"hi");
    fs::hard_link(m.p("secret"), m.p("twin")).unwrap();
    let err = m
        .env
        .fails(&["reencrypt", m.p("twin").to_str().unwrap()], 15);
    assert!(err.contains("hard links"), "{err}");
    drop(h);
    m.unmount();
    assert_fsck_clean(&m);
}

/// `--key` limits a rewrap to the headers wrapped by that CMK, online (where the files of one
/// directory go in batches) and offline; the others are counted as skipped and left alone.
#[test]
fn rewrap_with_key_touches_only_that_keys_headers() {
    let m = Mounted::new();
    m.env.create_key(&["--alias", "other"]);
    fs::create_dir(m.p("mixed")).unwrap();
    for i in 0..5 {
        fs::write(m.p(&format!("mixed/fs{i}")), b"under fs").unwrap();
    }
    m.env
        .ok(&["set-key", m.p("mixed").to_str().unwrap(), "alias/other"]);
    for i in 0..3 {
        fs::write(m.p(&format!("mixed/other{i}")), b"under other").unwrap();
    }
    m.env.ok(&["key", "rotate", "alias/fs"]);
    m.env.ok(&["key", "rotate", "alias/other"]);
    let other = m.env.json(&["key", "describe", "alias/other"])["KeyMetadata"]["KeyId"]
        .as_str()
        .unwrap()
        .to_string();

    let out = m
        .env
        .json(&["rewrap", m.mnt.to_str().unwrap(), "--key", "alias/other"]);
    // "mixed" (set-key re-wrapped its key under other) and its three files.
    assert_eq!(out["Checked"], 4, "{out}");
    assert_eq!(out["Skipped"], 6, "{out}");
    for i in 0..3 {
        let k = key_of(&m.p(&format!("mixed/other{i}")));
        assert_eq!(k, format!("{other}:2"));
    }
    for p in ["mixed/fs0", "mixed/fs4", "."] {
        assert!(key_of(&m.p(p)).ends_with(":1"), "{p}: left alone");
    }
    m.unmount();
    let cipher = m.cipher.to_str().unwrap();
    m.env.ok(&["rewrap", "-q", cipher, "--key", "alias/fs"]);
    let inv = m.env.json(&["key", "versions-in-use", cipher]);
    let keys = inv["Keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2, "{inv}");
    assert!(keys.iter().all(|k| k["KeyVersion"] == 2), "{inv}");
}

/// A reencrypt gives the file a new backing inode, and the kernel keeps its one inode for it:
/// a descriptor opened before and one opened after a fresh lookup share it (one size, so
/// O_APPEND writes through both go to the end of the file).
#[test]
fn a_reencrypted_file_keeps_its_inode_for_descriptors_old_and_new() {
    use std::io::Write;
    let m = Mounted::new();
    let p = m.p("log");
    fs::write(&p, b"0123").unwrap();
    let append = || fs::OpenOptions::new().append(true).open(&p).unwrap();
    let mut old = append();
    let old_ino = std::os::unix::fs::MetadataExt::ino(&old.metadata().unwrap());
    m.env.ok(&["reencrypt", "-q", p.to_str().unwrap()]);
    // Past the entry's time to live (1 s): the next open looks the name up again.
    std::thread::sleep(std::time::Duration::from_millis(1300));
    let mut new = append();
    let new_ino = std::os::unix::fs::MetadataExt::ino(&new.metadata().unwrap());
    assert_eq!(old_ino, new_ino, "one inode in the kernel");
    assert_eq!(m.status()["Caches"]["ReencryptedInodes"], 1);
    old.write_all(b"A").unwrap();
    new.write_all(b"B").unwrap();
    old.write_all(b"C").unwrap();
    drop((old, new));
    assert_eq!(fs::read(&p).unwrap(), b"0123ABC");
    m.unmount();
}

/// After a reencrypt and a fresh lookup of the name, what a descriptor opened before does
/// reaches the file: its stat, xattrs, truncate and chmod, also after more reencrypts; and a key
/// disable stops its cached pages.
#[test]
fn a_descriptor_from_before_a_reencrypt_keeps_working_after_a_fresh_lookup() {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let m = Mounted::new();
    let p = m.p("f");
    fs::write(&p, b"0123456789").unwrap();
    // The reader first: a file's descriptors all use the page cache, or none does (the first
    // open decides), and this test needs cached pages.
    let reader = fs::File::open(&p).unwrap();
    let old = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&p)
        .unwrap();
    let mut buf = [0u8; 10];
    reader.read_exact_at(&mut buf, 0).unwrap();
    let old_ino = old.metadata().unwrap().ino();
    m.env.ok(&["reencrypt", "-q", p.to_str().unwrap()]);
    // Past the entry's and the attributes' time to live (1 s): the name is looked up afresh,
    // and the node's attributes are asked for again.
    std::thread::sleep(Duration::from_millis(1300));
    assert_eq!(fs::metadata(&p).unwrap().ino(), old_ino, "the same node");
    let by_fd = std::path::PathBuf::from(format!("/proc/self/fd/{}", old.as_raw_fd()));
    let st = old.metadata().expect("fstat through the descriptor");
    assert_eq!(st.len(), 10);
    assert_eq!(st.ino(), old_ino, "a descriptor keeps its inode number");
    set_xattr(&by_fd, "user.colour", b"blue").expect("setxattr through the descriptor");
    assert_eq!(get_xattr(&by_fd, "user.colour").unwrap(), b"blue");
    assert_eq!(get_xattr(&p, "user.colour").unwrap(), b"blue");
    old.set_len(4).expect("ftruncate through the descriptor");
    old.set_permissions(fs::Permissions::from_mode(0o600))
        .expect("fchmod through the descriptor");
    let st = old.metadata().unwrap();
    assert_eq!((st.len(), st.mode() & 0o777), (4, 0o600));
    let st = fs::metadata(&p).unwrap();
    assert_eq!((st.len(), st.mode() & 0o777), (4, 0o600));
    assert_eq!(fs::read(&p).unwrap(), b"0123");
    // Twice more, with a fresh lookup between: still the same node.
    m.env.ok(&["reencrypt", "-q", p.to_str().unwrap()]);
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(fs::metadata(&p).unwrap().ino(), old_ino);
    m.env.ok(&["reencrypt", "-q", p.to_str().unwrap()]);
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(
        old.metadata().expect("fstat after three reencrypts").len(),
        4
    );
    assert_eq!(get_xattr(&by_fd, "user.colour").unwrap(), b"blue");
    old.write_all_at(b"45", 4).unwrap();
    assert_eq!(fs::read(&p).unwrap(), b"012345");

    // A key store change first (the kernel's pages of closed files are marked dropped), then
    // the disable: the cached pages must go too.
    reader.read_exact_at(&mut buf[..4], 0).unwrap();
    m.env.create_key(&["--alias", "unrelated"]);
    std::thread::sleep(PROPAGATION);
    reader.read_exact_at(&mut buf[..4], 0).unwrap();
    m.env.ok(&["key", "disable", "alias/fs"]);
    std::thread::sleep(PROPAGATION);
    assert_eq!(
        errno(reader.read_exact_at(&mut buf[..4], 0)),
        Some(libc::EACCES),
        "the page cache outlived a disable"
    );
    m.env.ok(&["key", "enable", "alias/fs"]);
    drop((old, reader));
    m.unmount();
}

/// Each file keeps its inode number through reencrypts while the kernel keeps its node, even
/// when the backing filesystem gives one file's old backing inode number to the other's copy
/// (ext4 does), and the daemon keeps no old copy open.
#[test]
fn reencrypted_files_keep_their_inode_numbers_apart_and_no_old_copy() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let m = Mounted::new();
    let (p, q) = (m.p("p"), m.p("q"));
    fs::write(&p, b"pppppppppp").unwrap();
    fs::write(&q, b"qqq").unwrap();
    let held = fs::OpenOptions::new().write(true).open(&p).unwrap();
    // A descriptor holds q's node too: an unused one may be forgotten at any time.
    let q_reader = fs::File::open(&q).unwrap();
    let (p_ino, q_ino) = (
        fs::metadata(&p).unwrap().ino(),
        fs::metadata(&q).unwrap().ino(),
    );
    for _ in 0..3 {
        m.env.ok(&["reencrypt", "-q", p.to_str().unwrap()]);
        m.env.ok(&["reencrypt", "-q", q.to_str().unwrap()]);
    }
    // Past the time to live of the names and of the descriptor's attributes.
    std::thread::sleep(Duration::from_millis(1100));
    let (p_now, q_now) = (
        fs::metadata(&p).unwrap().ino(),
        fs::metadata(&q).unwrap().ino(),
    );
    assert_eq!((p_now, q_now), (p_ino, q_ino));
    let status = m.status();
    let cipher = fs::canonicalize(&m.cipher).unwrap();
    let fds = format!("/proc/{}/fd", status["Pid"]);
    for e in fs::read_dir(&fds).unwrap() {
        let Ok(target) = fs::read_link(e.unwrap().path()) else {
            continue;
        };
        let target = target.to_string_lossy().into_owned();
        assert!(
            !(target.starts_with(cipher.to_str().unwrap()) && target.ends_with(" (deleted)")),
            "an old copy is held: {target}"
        );
    }
    assert_eq!(held.metadata().unwrap().len(), 10);
    held.set_len(4).unwrap();
    assert_eq!(fs::read(&p).unwrap(), b"pppp");
    assert_eq!(fs::read(&q).unwrap(), b"qqq", "q untouched");
    // New files may get the old backing numbers (on ext4 they do): each is its own inode.
    let mut seen = std::collections::HashSet::from([p_ino, q_ino]);
    for i in 0..4 {
        let r = m.p(&format!("r{i}"));
        fs::write(&r, b"rr").unwrap();
        assert!(
            seen.insert(fs::metadata(&r).unwrap().ino()),
            "r{i}: a number in use"
        );
        fs::set_permissions(&r, fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(&r, b"r").unwrap();
    }
    assert_eq!(fs::read(&p).unwrap(), b"pppp");
    assert_eq!(fs::metadata(&p).unwrap().mode() & 0o777, 0o644);
    assert_eq!(fs::read(&q).unwrap(), b"qqq");
    drop((held, q_reader));
    m.unmount();
}

/// After a reencrypt a write through a descriptor opened after it reaches at once what a
/// descriptor opened before reads from the page cache (one inode, one cache).
#[test]
fn after_a_reencrypt_pages_stay_coherent() {
    use std::os::unix::fs::MetadataExt;
    let m = Mounted::new();
    let rebased = |m: &Mounted| m.status()["Caches"]["ReencryptedInodes"].as_u64();
    let p = m.p("f");
    fs::write(&p, b"before").unwrap();
    let ino = fs::metadata(&p).unwrap().ino();
    let reader = fs::File::open(&p).unwrap();
    let mut buf = [0u8; 6];
    reader.read_exact_at(&mut buf, 0).unwrap();
    m.env.ok(&["reencrypt", "-q", p.to_str().unwrap()]);
    assert_eq!(rebased(&m), Some(1));
    reader.read_exact_at(&mut buf, 0).unwrap();
    let w = fs::OpenOptions::new().write(true).open(&p).unwrap();
    assert_eq!(w.metadata().unwrap().ino(), ino);
    w.write_all_at(b"AFTER!", 0).unwrap();
    reader.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(&buf, b"AFTER!");
    drop((w, reader));
    assert_eq!(fs::read(&p).unwrap(), b"AFTER!");
    m.unmount();
}

/// A reencrypt renames its copy over the name only while the name is still the file it copied:
/// a name removed meanwhile (here behind the mount, as another writer of the cipher directory
/// could) does not come back.
#[test]
fn a_reencrypt_does_not_bring_back_a_name_removed_during_its_copy() {
    let m = Mounted::new();
    let p = m.p("p");
    fs::write(&p, vec![1u8; 64 << 20]).unwrap();
    let backing = m.cipher_files().pop().unwrap();
    let child = m
        .env
        .command(&["reencrypt", "-q", p.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Its copy has begun once its temporary is in the cipher directory.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !fs::read_dir(&m.cipher).unwrap().any(|e| {
        let name = e.unwrap().file_name();
        name.to_string_lossy().starts_with(".kmsfs.reencrypt.")
    }) {
        assert!(std::time::Instant::now() < deadline, "no temporary seen");
        std::thread::sleep(Duration::from_millis(1));
    }
    fs::remove_file(&backing).unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("no such file"), "ENOENT: {err}");
    assert!(!backing.exists(), "the name came back");
    assert!(
        fs::read_dir(&m.cipher).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .contains("reencrypt")),
        "the temporary is removed"
    );
    m.unmount();
}

/// Appends "line N" through a fresh O_APPEND open each while `p` is re-encrypted `rounds`
/// times; every line must land, in order. With `ino`, every descriptor must have that inode.
fn appends_racing_reencrypts_all_land(
    m: &Mounted,
    p: &std::path::Path,
    rounds: u32,
    ino: Option<u64>,
) {
    use std::io::Write;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let appender = {
        let (p, stop) = (p.to_path_buf(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0u32;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let mut f = fs::OpenOptions::new().append(true).open(&p).unwrap();
                if let Some(ino) = ino {
                    let now = std::os::unix::fs::MetadataExt::ino(&f.metadata().unwrap());
                    assert_eq!(now, ino, "a second inode for the file");
                }
                writeln!(f, "line {n}").unwrap();
                n += 1;
            }
            n
        })
    };
    for _ in 0..rounds {
        m.env.ok(&["reencrypt", "-q", p.to_str().unwrap()]);
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let n = appender.join().unwrap();
    let expected: String = (0..n).map(|i| format!("line {i}\n")).collect();
    assert!(n > rounds, "{n} appends");
    assert_eq!(fs::read_to_string(p).unwrap(), expected);
}

fn assert_fsck_clean(m: &Mounted) {
    let out = m.env.ok(&["fsck", m.cipher.to_str().unwrap()]);
    assert!(out.contains("0 problems"), "{out}");
}

/// Opens that race a data-key rotation share the file's one state: appends through fresh opens
/// while the file is re-encrypted again and again all land, in order.
#[test]
fn appends_through_fresh_opens_racing_reencrypt_all_land() {
    let m = Mounted::new();
    let p = m.p("log");
    fs::write(&p, b"").unwrap();
    appends_racing_reencrypts_all_land(&m, &p, 60, None);
    m.unmount();
    assert_fsck_clean(&m);
}

/// As above, with a reader holding the file open (so every descriptor uses the page cache,
/// whose O_APPEND offsets come from the kernel's size of the inode) and names cached for 50 ms
/// only (so opens keep looking the name up again between reencrypts): one inode throughout.
#[test]
fn appends_beside_a_reader_racing_reencrypt_all_land() {
    let m = Mounted::new();
    let cfg = m.env.path("kmsfs.toml");
    fs::write(&cfg, "[mount]\nattr_ttl_ms = 50\n").unwrap();
    m.unmount();
    m.mount(&["--config", cfg.to_str().unwrap()]);
    let p = m.p("log");
    fs::write(&p, b"").unwrap();
    let reader = fs::File::open(&p).unwrap();
    let ino = std::os::unix::fs::MetadataExt::ino(&reader.metadata().unwrap());
    appends_racing_reencrypts_all_land(&m, &p, 100, Some(ino));
    drop(reader);
    m.unmount();
    assert_fsck_clean(&m);
}

#[test]
fn the_daemon_applies_due_automatic_rotation() {
    let mut m = Mounted::new();
    m.env.ok(&[
        "key",
        "rotation",
        "enable",
        "alias/fs",
        "--period-days",
        "1",
    ]);
    m.unmount();
    // The daemon's clock two days on: rotation is due when it starts.
    m.env.now = Some((chrono::Utc::now() + chrono::Duration::days(2)).to_rfc3339());
    m.mount(&[]);
    m.env.now = None;
    std::thread::sleep(PROPAGATION);
    fs::write(m.p("new"), b"x").unwrap();
    assert!(
        key_of(&m.p("new")).ends_with(":2"),
        "{}",
        key_of(&m.p("new"))
    );
    let auto: Vec<_> = m
        .env
        .audit_lines()
        .into_iter()
        .filter(|l| l["operation"] == "RotateKey" && l["message"] == "automatic rotation")
        .collect();
    assert_eq!(auto.len(), 1);
}

/// Decrypts of file data keys in the audit log.
fn decrypts(m: &Mounted) -> usize {
    m.env
        .audit_lines()
        .iter()
        .filter(|l| l["operation"] == "Decrypt" && l["context"]["kmsfs:file-id"].is_string())
        .count()
}

/// Reads a file and waits until the daemon has let go of it: the kernel sends RELEASE after
/// close() returns, and an open that comes first shares the open file's key (no Decrypt and no
/// cache lookup to count).
fn read_and_release(m: &Mounted, name: &str) -> Vec<u8> {
    let data = fs::read(m.p(name)).unwrap();
    released(m);
    data
}

fn released(m: &Mounted) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while m.status()["OpenFiles"].as_u64() != Some(0) {
        assert!(std::time::Instant::now() < deadline, "a file is still open");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// A file reopened soon after it was made or closed takes its data key from the daemon's cache,
/// not from a KMS Decrypt; a disable wipes the cache at once (the reopen fails), and with
/// `--data-key-cache 0` every open asks the KMS again.
#[test]
fn reopening_uses_the_data_key_cache_until_a_key_store_change() {
    let m = Mounted::new();
    fs::write(m.p("a"), b"cached").unwrap();
    released(&m);
    let before = decrypts(&m);
    for _ in 0..3 {
        assert_eq!(read_and_release(&m, "a"), b"cached");
    }
    assert_eq!(decrypts(&m), before, "reopens asked the KMS");
    let mine = m.status();
    let dk = &mine["Caches"]["DataKeys"];
    assert!(dk["Hits"].as_u64().unwrap() >= 3, "{dk}");
    assert_eq!(dk["Limit"].as_u64(), Some(16384), "{dk}");

    m.env.ok(&["key", "disable", "alias/fs"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        match fs::read(m.p("a")) {
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::EACCES), "{e}");
                break;
            }
            Ok(_) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(50))
            }
            Ok(_) => panic!("a disabled key's file still opens after 2 s"),
        }
    }
    m.env.ok(&["key", "enable", "alias/fs"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while fs::read(m.p("a")).is_err() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(fs::read(m.p("a")).unwrap(), b"cached");
    assert!(decrypts(&m) > before, "the cache outlived the disable");

    m.unmount();
    m.mount(&["--data-key-cache", "0"]);
    let before = decrypts(&m);
    for _ in 0..3 {
        assert_eq!(read_and_release(&m, "a"), b"cached");
    }
    assert_eq!(
        decrypts(&m),
        before + 3,
        "one Decrypt per open without the cache"
    );
}

/// The newest record audit.head names (its two slots, each a JSON head padded to 256 bytes).
fn head_seq(m: &Mounted) -> u64 {
    let data = fs::read(m.env.store.join("audit.head")).unwrap();
    data.chunks(256)
        .filter_map(|s| serde_json::from_slice::<serde_json::Value>(s.trim_ascii()).ok())
        .filter_map(|h| h["seq"].as_u64())
        .max()
        .unwrap_or(0)
}

/// Seq of the last GenerateDataKey record (the data key of the file just made).
fn last_generated(m: &Mounted) -> u64 {
    m.env
        .audit_lines()
        .iter()
        .rev()
        .find(|l| l["operation"] == "GenerateDataKey")
        .and_then(|l| l["seq"].as_u64())
        .expect("a GenerateDataKey record")
}

/// A mount's audit records are in the log when their key use returns; they are synced and
/// named by the head before an fsync through the mount returns, within a watcher round
/// otherwise, and at unmount. The log verifies all along. `--audit-sync each` moves the head
/// with every record.
#[test]
fn audit_records_are_written_at_once_and_confirmed_by_fsync_the_watcher_and_unmount() {
    let m = Mounted::new();
    let before = m.env.audit_lines().len();
    fs::write(m.p("a"), b"one").unwrap();
    let seq = last_generated(&m);
    assert!(m.env.audit_lines().len() > before, "written at once");
    m.env.ok(&["audit", "verify"]);
    let f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(m.p("b"))
        .unwrap();
    let seq_b = last_generated(&m);
    assert!(seq_b > seq);
    f.sync_all().unwrap();
    assert!(
        head_seq(&m) >= seq_b,
        "an fsync confirms the records before it"
    );
    drop(f);
    for i in 0..20 {
        fs::write(m.p(&format!("c{i}")), b"x").unwrap();
    }
    let seq_c = last_generated(&m);
    m.env.ok(&["audit", "verify"]);
    let deadline = std::time::Instant::now() + PROPAGATION;
    while head_seq(&m) < seq_c && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        head_seq(&m) >= seq_c,
        "the watcher confirms them within a round"
    );
    fs::write(m.p("d"), b"x").unwrap();
    let seq_d = last_generated(&m);
    let daemon = daemon_pid(&m.cipher).expect("the mount's daemon");
    m.unmount();
    // The daemon flushes on its way out, after the kernel ended the session.
    // Gone, or a zombie no one reaped yet (its parent, `kmsfs mount`, exited long ago).
    let running = || {
        fs::read_to_string(format!("/proc/{daemon}/stat")).is_ok_and(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|r| !r.trim_start().starts_with('Z'))
        })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while running() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!running(), "the daemon exits");
    assert!(head_seq(&m) >= seq_d, "unmounting confirms the rest");
    m.env.ok(&["audit", "verify"]);

    let e = Mounted::with_args(&["--audit-sync", "each"]);
    for i in 0..5 {
        fs::write(e.p(&format!("e{i}")), b"x").unwrap();
        let last = e.env.audit_lines().last().and_then(|l| l["seq"].as_u64());
        assert_eq!(
            Some(head_seq(&e)),
            last,
            "each record confirmed before its key use returned"
        );
    }
}

/// An open that races an online rewrap of the closed file to another CMK ends up under the CMK
/// the header names: its state is checked, and a reencrypt wraps the fresh data key, under the
/// new CMK, not the one it read before the rewrap (a disable of the new one must reach it).
#[test]
fn an_open_racing_a_rewrap_to_another_cmk_follows_the_header() {
    let m = Mounted::new();
    let other = m.env.create_key(&["--alias", "other"]);
    let p = m.p("f");
    fs::write(&p, b"racing").unwrap();
    let mut misses = Vec::new();
    for i in 0..200 {
        let (to, id) = if i % 2 == 0 {
            ("alias/other", &other)
        } else {
            ("alias/fs", &m.key)
        };
        let barrier = std::sync::Barrier::new(2);
        let h = std::thread::scope(|s| {
            let reader = s.spawn(|| {
                barrier.wait();
                fs::File::open(&p).unwrap()
            });
            barrier.wait();
            set_xattr(&p, "user.kmsfs.rewrap", to.as_bytes()).unwrap();
            reader.join().unwrap()
        });
        // The open state's CMK is the one a reencrypt wraps under.
        set_xattr(&p, "user.kmsfs.reencrypt", b"").unwrap();
        if !key_of(&p).starts_with(id.as_str()) {
            misses.push(i);
        }
        let mut buf = [0u8; 6];
        h.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"racing");
    }
    assert!(
        misses.is_empty(),
        "left under the old CMK in rounds {misses:?}"
    );
    m.unmount();
    assert_fsck_clean(&m);
}

/// A directory's keys loaded by a lookup that races an online rewrap of the directory to another
/// CMK are those the rewrap wrote: files created in it afterwards are under the new CMK. (The
/// window, a load spanning a whole batch, is narrow: this did not catch the race it guards
/// against in 1,500 rounds before the fix, but it does catch keys the rewraps leave cached.)
#[test]
fn a_lookup_racing_a_rewrap_of_its_directory_follows_the_new_cmk() {
    // No data key cache: every load of the directory's keys asks the KMS.
    let m = Mounted::with_args(&["--data-key-cache", "0"]);
    m.env.create_key(&["--alias", "other"]);
    let d = m.p("d");
    fs::create_dir(&d).unwrap();
    // In batches set on the parent, as `kmsfs rewrap` does: the kernel locks the parent for
    // them, not the directory looked into.
    let rewrap = |to: &str| {
        let batch = format!("{to}\0d");
        set_xattr(&m.mnt, "user.kmsfs.rewrap.entries", batch.as_bytes())
    };
    let mut misses = Vec::new();
    for i in 0..100 {
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            // Lookups load the directory's keys whenever the first rewrap has dropped them.
            s.spawn(|| {
                let mut k = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let e = fs::metadata(d.join(format!("absent{i}.{k}"))).unwrap_err();
                    assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
                    k += 1;
                }
            });
            // Away from the CMK it is under, and back.
            let done = rewrap("alias/other").and_then(|()| rewrap("alias/fs"));
            // Before any assertion, so that the lookups end and the scope can.
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            done.unwrap();
        });
        let f = d.join(format!("f{i}"));
        fs::write(&f, b"x").unwrap();
        if !key_of(&f).starts_with(m.key.as_str()) {
            misses.push(i);
        }
    }
    assert!(
        misses.is_empty(),
        "created under the old CMK in rounds {misses:?}"
    );
    m.unmount();
    assert_fsck_clean(&m);
}

/// A hard link made while a file is being reencrypted, through the mount or behind it in the
/// cipher directory, stays a name of the file: the reencrypt that sees it refuses (EMLINK), and
/// no rename takes the file away from it.
#[test]
fn a_link_racing_reencrypts_stays_a_name_of_the_file() {
    use std::os::unix::fs::MetadataExt;
    let m = Mounted::new();
    let p = m.p("f");
    // Large enough that a copy takes a while.
    let data: Vec<u8> = (0..4u32 << 20).map(|i| (i % 251) as u8).collect();
    fs::write(&p, &data).unwrap();
    let backing = m.cipher_files()[0].clone();
    for round in 0..6u64 {
        let through_mount = round % 2 == 0;
        let link = if through_mount {
            m.p(&format!("link{round}"))
        } else {
            backing.with_file_name(format!("behind{round}"))
        };
        let made = std::sync::atomic::AtomicBool::new(false);
        let (done, refused) = std::thread::scope(|s| {
            // Until one that started after the link was made has ended.
            let reencrypts = s.spawn(|| {
                for n in 0.. {
                    let after = made.load(std::sync::atomic::Ordering::SeqCst);
                    if let Err(e) = set_xattr(&p, "user.kmsfs.reencrypt", b"") {
                        return (n, e.raw_os_error());
                    }
                    if after {
                        return (n + 1, None);
                    }
                }
                unreachable!()
            });
            std::thread::sleep(Duration::from_millis(3 + 5 * round));
            let linked = fs::hard_link(if through_mount { &p } else { &backing }, &link);
            // Set either way, so that the reencrypts end and the scope can.
            made.store(true, std::sync::atomic::Ordering::SeqCst);
            let done = reencrypts.join().unwrap();
            linked.unwrap();
            done
        });
        assert_eq!(
            refused,
            Some(libc::EMLINK),
            "round {round}, {done} reencrypts"
        );
        // Both names, whichever way the link was made.
        let on_disk = m.cipher_files();
        let inos: Vec<u64> = on_disk
            .iter()
            .map(|f| fs::metadata(f).unwrap().ino())
            .collect();
        assert_eq!(inos.len(), 2, "round {round}: {on_disk:?}");
        assert_eq!(inos[0], inos[1], "round {round}: one file, two names");
        if through_mount {
            let mut w = fs::OpenOptions::new().append(true).open(&link).unwrap();
            std::io::Write::write_all(&mut w, b"tail").unwrap();
            drop(w);
            let got = fs::read(&p).unwrap();
            assert_eq!(&got[..data.len()], &data[..], "round {round}");
            assert_eq!(&got[data.len()..], b"tail", "round {round}");
            fs::remove_file(&link).unwrap();
            let f = fs::OpenOptions::new().write(true).open(&p).unwrap();
            f.set_len(data.len() as u64).unwrap();
        } else {
            fs::remove_file(&link).unwrap();
        }
        assert_eq!(fs::read(&p).unwrap(), data, "round {round}");
    }
    m.unmount();
    assert_fsck_clean(&m);
}

/// A rewrap of an open file, alone or in a batch, moves its open state to the new CMK at once: a
/// reencrypt right after wraps the fresh data key under it, and a disable of it stops the
/// descriptor opened before.
#[test]
fn a_rewrap_of_an_open_file_moves_its_state_to_the_new_cmk() {
    let m = Mounted::new();
    let other = m.env.create_key(&["--alias", "other"]);
    for name in ["single", "batched"] {
        fs::write(m.p(name), name).unwrap();
    }
    let held: Vec<fs::File> = ["single", "batched"]
        .iter()
        .map(|n| fs::File::open(m.p(n)).unwrap())
        .collect();
    set_xattr(&m.p("single"), "user.kmsfs.rewrap", b"alias/other").unwrap();
    set_xattr(&m.mnt, "user.kmsfs.rewrap.entries", b"alias/other\0batched").unwrap();
    for name in ["single", "batched"] {
        set_xattr(&m.p(name), "user.kmsfs.reencrypt", b"").unwrap();
        assert!(key_of(&m.p(name)).starts_with(&other), "{name}");
    }
    m.env.ok(&["key", "disable", "alias/other"]);
    std::thread::sleep(PROPAGATION);
    for (h, name) in held.iter().zip(["single", "batched"]) {
        let mut buf = [0u8; 6];
        assert_eq!(
            errno(h.read_exact_at(&mut buf, 0)),
            Some(libc::EACCES),
            "{name}"
        );
    }
    m.env.ok(&["key", "enable", "alias/other"]);
    drop(held);
    m.unmount();
    assert_fsck_clean(&m);
}

/// `user.kmsfs.key` read in a loop while a file and a directory are rewrapped back and forth
/// between two CMKs: every read names one of the two, never an error. (A header read in the
/// middle of a rewrap's slot write, which named no key and gave EIO before, now takes the whole
/// slot before it; that torn read did not show here on the old code in 5 runs, so this
/// guards the rest: the header is readable and names a CMK at every moment of a rewrap.)
#[test]
fn the_key_read_racing_rewraps_names_one_of_the_two_cmks() {
    let m = Mounted::new();
    let other = m.env.create_key(&["--alias", "other"]);
    fs::create_dir(m.p("d")).unwrap();
    fs::write(m.p("d/f"), b"racing").unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (mut reads, mut bad) = (0, Vec::new());
    std::thread::scope(|s| {
        let reader = s.spawn(|| {
            let (mut reads, mut bad) = (0, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for p in [m.p("d"), m.p("d/f")] {
                    reads += 1;
                    match get_xattr(&p, "user.kmsfs.key") {
                        Ok(k) if k.starts_with(m.key.as_bytes()) => {}
                        Ok(k) if k.starts_with(other.as_bytes()) => {}
                        r => bad.push(format!("{}: {r:?}", p.display())),
                    }
                }
            }
            (reads, bad)
        });
        for i in 0..100 {
            let to = if i % 2 == 0 {
                "alias/other"
            } else {
                "alias/fs"
            };
            for p in [m.p("d"), m.p("d/f")] {
                set_xattr(&p, "user.kmsfs.rewrap", to.as_bytes()).unwrap();
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (reads, bad) = reader.join().unwrap();
    });
    assert!(reads > 0);
    assert!(bad.is_empty(), "{} of {reads} reads: {bad:#?}", bad.len());
    m.unmount();
    assert_fsck_clean(&m);
}

/// Opens and closes of a file, in a loop, racing rewraps of it between two CMKs (which find it
/// open or closed, and may see its last handle close mid-rewrap): after each rewrap returns,
/// the open state a new descriptor gets is under the CMK the header names, as a reencrypt
/// shows. (It catches opens that read the header before a rewrap; the narrowest case, a state
/// made between a rewrap's write and its count, did not show here without its fix.)
#[test]
fn opens_and_closes_racing_rewraps_leave_the_state_on_the_headers_cmk() {
    let m = Mounted::new();
    let other = m.env.create_key(&["--alias", "other"]);
    let p = m.p("f");
    fs::write(&p, b"racing").unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let mut misses = Vec::new();
    std::thread::scope(|s| {
        let opener = s.spawn(|| {
            let mut buf = [0u8; 6];
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let f = fs::File::open(&p)?;
                f.read_exact_at(&mut buf, 0)?;
            }
            std::io::Result::Ok(())
        });
        for i in 0..150 {
            let (to, id) = if i % 2 == 0 {
                ("alias/other", &other)
            } else {
                ("alias/fs", &m.key)
            };
            let rewrapped = set_xattr(&p, "user.kmsfs.rewrap", to.as_bytes());
            let held = fs::File::open(&p);
            let reencrypted = set_xattr(&p, "user.kmsfs.reencrypt", b"");
            let key =
                get_xattr(&p, "user.kmsfs.key").map(|k| String::from_utf8_lossy(&k).into_owned());
            drop(held);
            match (rewrapped, reencrypted, key) {
                (Ok(()), Ok(()), Ok(k)) if k.starts_with(id.as_str()) => {}
                other => misses.push(format!("round {i}: {other:?}")),
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        opener.join().unwrap().unwrap();
    });
    assert!(misses.is_empty(), "{misses:#?}");
    m.unmount();
    assert_fsck_clean(&m);
}
