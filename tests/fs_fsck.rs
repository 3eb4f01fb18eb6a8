//! `kmsfs fsck`: a clean cipher directory passes; damage and crypto-shredding are reported with
//! plaintext paths where they can be recovered.

mod common;
use common::*;
use std::fs;

const PROBLEMS: i32 = 23;

fn fsck_json(m: &Mounted) -> serde_json::Value {
    let out = m
        .env
        .run(&["fsck", m.cipher.to_str().unwrap(), "--output", "json"]);
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)))
}

fn problems(v: &serde_json::Value) -> Vec<(String, String)> {
    v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["problem"].as_str().unwrap().to_string(),
                f["path"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn clean_then_damaged() {
    let m = Mounted::new();
    fs::create_dir(m.p("docs")).unwrap();
    fs::write(m.p("docs/report.txt"), vec![7u8; 3 * 4096 + 5]).unwrap();
    fs::write(m.p("small"), b"s").unwrap();
    std::os::unix::fs::symlink("docs/report.txt", m.p("link")).unwrap();
    let err = m.env.fails(&["fsck", m.cipher.to_str().unwrap()], 15);
    assert!(err.contains("is mounted at"), "{err}");
    m.unmount();
    let out = m.env.ok(&["fsck", m.cipher.to_str().unwrap()]);
    assert!(
        out.contains("2 files, 2 directories, 1 symlinks checked; 0 problems"),
        "{out}"
    );

    // A flipped bit in block 1 of the report, and a garbled name in the root.
    let report = m
        .cipher_files()
        .into_iter()
        .max_by_key(|p| fs::metadata(p).unwrap().len())
        .unwrap();
    let mut data = fs::read(&report).unwrap();
    data[1024 + 4124 + 50] ^= 1;
    fs::write(&report, data).unwrap();
    let small = m
        .cipher_files()
        .into_iter()
        .min_by_key(|p| fs::metadata(p).unwrap().len())
        .unwrap();
    let name = small.file_name().unwrap().to_str().unwrap().to_string();
    let flipped: String = name.chars().rev().collect();
    fs::rename(&small, small.with_file_name(flipped)).unwrap();
    let v = fsck_json(&m);
    let p = problems(&v);
    assert!(
        p.contains(&("CorruptBlocks".into(), "/docs/report.txt".into())),
        "{p:?}"
    );
    assert!(p.iter().any(|(k, _)| k == "UndecryptableName"), "{p:?}");
    assert!(v["findings"].to_string().contains("blocks 1 fail"), "{v}");
    let out = m.env.run(&["fsck", m.cipher.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(PROBLEMS));
    assert!(String::from_utf8_lossy(&out.stdout).contains("CorruptBlocks: /docs/report.txt"));
}

#[test]
fn crypto_shredded_files_are_reported_as_such() {
    let mut m = Mounted::new();
    m.env.create_key(&["--alias", "temp"]);
    fs::create_dir(m.p("project")).unwrap();
    m.env
        .ok(&["set-key", m.p("project").to_str().unwrap(), "alias/temp"]);
    fs::write(m.p("project/plan"), b"plan").unwrap();
    fs::write(m.p("keep"), b"keep").unwrap();
    m.unmount();
    m.env
        .ok(&["key", "schedule-deletion", "alias/temp", "--days", "7"]);
    m.env.now = Some((chrono::Utc::now() + chrono::Duration::days(8)).to_rfc3339());
    let v = fsck_json(&m);
    let p = problems(&v);
    assert!(
        p.contains(&("CryptoShredded".into(), "/project".into())),
        "{p:?}"
    );
    assert!(
        p.iter()
            .any(|(k, path)| k == "CryptoShredded" && path.starts_with("/project/")),
        "{p:?}"
    );
    assert!(
        !p.iter()
            .any(|(k, _)| k == "CorruptBlocks" || k == "CorruptHeader"),
        "not corruption: {p:?}"
    );
    assert!(!p.iter().any(|(_, path)| path == "/keep"));
}

#[test]
fn repair_names_moves_lost_entries_to_lost_and_found() {
    let m = Mounted::new();
    fs::create_dir(m.p("a")).unwrap();
    fs::write(m.p("a/x"), b"still mine").unwrap();
    let long = "L".repeat(240);
    fs::write(m.p(&long), b"long").unwrap();
    m.unmount();
    // An entry moved in from another directory: its name does not decrypt here. (The cipher
    // dir's other directory, kmsfs.journal, may come first in a listing.)
    let sub = fs::read_dir(&m.cipher)
        .unwrap()
        .flatten()
        .find(|e| {
            e.file_type().unwrap().is_dir()
                && !e.file_name().to_string_lossy().starts_with("kmsfs.")
        })
        .unwrap()
        .path();
    let inner = fs::read_dir(&sub)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| !p.ends_with("kmsfs.dirkey"))
        .unwrap();
    fs::rename(&inner, m.cipher.join(inner.file_name().unwrap())).unwrap();
    // An orphan side file.
    let side = fs::read_dir(&m.cipher)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_str().unwrap().ends_with(".name"))
        .unwrap();
    fs::copy(&side, m.cipher.join("kmsfs.longname.AAAAorphan.name")).unwrap();
    // An undo record of a file that is gone, and a temporary of a killed reencrypt.
    let journal = m.cipher.join("kmsfs.journal");
    fs::create_dir_all(&journal).unwrap();
    fs::write(journal.join("ab".repeat(16)), b"").unwrap();
    fs::write(m.cipher.join(".kmsfs.reencrypt.0011223344556677.tmp"), b"x").unwrap();
    let v = fsck_json(&m);
    let p: Vec<String> = problems(&v).into_iter().map(|(p, _)| p).collect();
    for want in ["OrphanLongName", "UndecryptableName"] {
        assert!(p.iter().any(|x| x == want), "{want} in {p:?}");
    }
    let left: Vec<&str> = v["leftovers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["problem"].as_str().unwrap())
        .collect();
    assert_eq!(left, ["OrphanTemporary", "OrphanUndoRecord"]);
    let out = m
        .env
        .run(&["fsck", m.cipher.to_str().unwrap(), "--repair-names"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.matches("removed orphan").count() == 3
            && text.contains("moved")
            && text.contains("0 problems"),
        "{text}"
    );
    m.mount(&[]);
    let lost: Vec<_> = fs::read_dir(m.p("lost+found")).unwrap().flatten().collect();
    assert_eq!(lost.len(), 1);
    assert_eq!(fs::read(lost[0].path()).unwrap(), b"still mine");
    assert_eq!(fs::read(m.p(&long)).unwrap(), b"long");
}

/// Leftovers of a crash, made by hand: a rewrite torn half way with its undo record, and a file
/// whose creation stopped before its header. fsck names the first (and leaves the second, an
/// empty file); the next open through a mount undoes the rewrite and gives the empty file a
/// header; fsck is then clean.
#[test]
fn a_torn_rewrite_is_undone_and_a_headerless_file_opens_empty() {
    use std::os::unix::fs::MetadataExt;
    let m = Mounted::new();
    let data: Vec<u8> = (0..20_000u32).map(|i| (i % 253) as u8).collect();
    fs::write(m.p("a"), &data).unwrap();
    fs::write(m.p("b"), b"was being created").unwrap();
    let (ia, ib) = (
        fs::metadata(m.p("a")).unwrap().ino(),
        fs::metadata(m.p("b")).unwrap().ino(),
    );
    m.unmount();
    let backing = |ino: u64| {
        m.cipher_files()
            .into_iter()
            .find(|p| fs::metadata(p).unwrap().ino() == ino)
            .unwrap()
    };
    let (a, b) = (backing(ia), backing(ib));
    let old = fs::read(&a).unwrap();
    let mut id = [0u8; 16];
    id.copy_from_slice(&old[8..24]);
    let off = 1024 + 4124;
    let rec = kmsfs::fs::undo::encode(&id, off as u64, old.len() as u64, &old[off..off + 2 * 4124]);
    let journal = m.cipher.join("kmsfs.journal");
    fs::create_dir_all(&journal).unwrap();
    fs::write(journal.join(hex::encode(id)), rec).unwrap();
    let mut torn = old.clone();
    torn[off + 100..off + 4000].fill(0x5a);
    torn.extend_from_slice(&[7u8; 3000]);
    fs::write(&a, &torn).unwrap();
    fs::write(&b, b"").unwrap();
    let p = problems(&fsck_json(&m));
    assert_eq!(p, vec![("InterruptedWrite".to_string(), "/a".to_string())]);
    m.mount(&[]);
    assert_eq!(fs::read(m.p("a")).unwrap(), data);
    assert_eq!(fs::read(m.p("b")).unwrap(), b"");
    fs::write(m.p("b"), b"written after").unwrap();
    assert_eq!(fs::read(m.p("b")).unwrap(), b"written after");
    m.unmount();
    assert_eq!(
        fs::read(&a).unwrap(),
        old,
        "the old bytes and length are back"
    );
    assert!(problems(&fsck_json(&m)).is_empty());
    assert_eq!(
        fs::read_dir(&journal).unwrap().count(),
        0,
        "records removed"
    );
}
