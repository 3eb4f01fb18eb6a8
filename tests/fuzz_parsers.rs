//! Property-based fuzzing of every parser that reads untrusted bytes: headers, encrypted names,
//! ciphertext blobs, key policies, config files, audit logs, undo records, block decryption and the layout
//! arithmetic. None may panic or allocate without bound. Seeds from tests/corpus are mutated too.
//! PROPTEST_CASES raises the number of cases (CI uses the default below; see README for a
//! longer run).

use kmsfs::fs::contentenc::{self, ContentCipher};
use kmsfs::fs::header::{self, Kind};
use kmsfs::fs::nametransform;
use kmsfs::fs::undo;
use kmsfs::kms::{audit, blob, policy};
use proptest::prelude::*;
use std::path::Path;

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000)
}

fn corpus(kind: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus")
        .join(kind);
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let data = std::fs::read(e.path()).unwrap();
        if e.path().extension().is_some_and(|x| x == "hex") {
            out.push(hex::decode(String::from_utf8(data).unwrap().trim()).unwrap());
        } else {
            out.push(data);
        }
    }
    assert!(!out.is_empty(), "corpus {kind} is empty");
    out
}

/// A seed with a few bytes changed, cut or extended.
fn mutate(seed: &[u8], edits: &[(usize, u8)], cut: usize, extra: &[u8]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for (pos, b) in edits {
        if !v.is_empty() {
            let i = pos % v.len();
            v[i] ^= b;
        }
    }
    v.truncate(v.len().saturating_sub(cut % 8));
    v.extend_from_slice(extra);
    v
}

fn mutated(kind: &'static str) -> impl Strategy<Value = Vec<u8>> {
    let seeds = corpus(kind);
    (
        0..seeds.len(),
        proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6),
        any::<usize>(),
        proptest::collection::vec(any::<u8>(), 0..16),
    )
        .prop_map(move |(s, e, c, x)| mutate(&seeds[s], &e, c, &x))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn headers(data in prop_oneof![mutated("header"), proptest::collection::vec(any::<u8>(), 0..2048)]) {
        let mut padded = data.clone();
        padded.resize(header::HEADER_LEN.max(data.len()), 0);
        for d in [&data, &padded] {
            for kind in [Kind::File, Kind::DirKey] {
                if let Ok(h) = header::parse(kind, d) {
                    prop_assert!(h.slots.len() <= 2);
                    for s in &h.slots {
                        prop_assert!(s.blob.len() <= header::MAX_BLOB);
                    }
                }
            }
        }
    }

    /// Any change to the authenticated part of a valid header makes its slot fail to verify.
    #[test]
    fn changed_headers_never_verify(pos in 0usize..(header::slot_offset(0) + 10 + 8 + 32), bit in 0u8..8) {
        let id = [5u8; 16];
        let dk = [6u8; 32];
        let mut h = header::encode_new(Kind::File, &id, &[7u8; 8], &dk).unwrap();
        // Authenticated: magic, version, flags and id (0..24), slot 0's fields and MAC.
        let covered = pos < 24 || pos >= header::slot_offset(0);
        prop_assume!(covered);
        let i = if pos >= header::slot_offset(0) + 18 { header::slot_offset(1) - 32 + (pos - header::slot_offset(0) - 18) } else { pos };
        h[i] ^= 1 << bit;
        if let Ok(p) = header::parse(Kind::File, &h) {
            for s in &p.slots {
                prop_assert!(!s.verify(Kind::File, &p.id, &dk), "byte {i} changed but the slot verifies");
            }
        }
    }

    #[test]
    fn names(data in prop_oneof![mutated("names"), proptest::collection::vec(any::<u8>(), 0..400)]) {
        let s = String::from_utf8_lossy(&data).into_owned();
        for line in s.lines().chain([s.as_str()]) {
            let _ = nametransform::decrypt(&[3u8; 64], line);
            let _ = nametransform::classify(line);
            let _ = nametransform::long_name_matches(line, line);
            if let Ok(b) = nametransform::encrypt(&[3u8; 64], line.as_bytes()) {
                prop_assert!(b.entry().len() <= nametransform::NAME_MAX);
            }
        }
    }

    #[test]
    fn blobs(data in prop_oneof![mutated("blob"), proptest::collection::vec(any::<u8>(), 0..7000)]) {
        if let Ok((_, sealed)) = blob::parse(&data) {
            prop_assert!(data.len() <= blob::MAX_LEN);
            prop_assert!(sealed.len() + blob::HEADER_LEN == data.len());
        }
    }

    #[test]
    fn policies(data in prop_oneof![mutated("policy"), ".{0,300}".prop_map(String::into_bytes)]) {
        if let Ok(text) = std::str::from_utf8(&data) {
            let _ = policy::parse(text);
        }
    }

    #[test]
    fn configs(data in prop_oneof![mutated("config"), ".{0,300}".prop_map(String::into_bytes)]) {
        if let Ok(text) = std::str::from_utf8(&data) {
            let _ = kmsfs::config::Config::parse(text, Path::new("fuzz.toml"));
        }
    }

    #[test]
    fn undo_records(data in prop_oneof![mutated("undo"), proptest::collection::vec(any::<u8>(), 0..200)]) {
        if let Ok(r) = undo::Record::decode(&data) {
            prop_assert!(r.bytes.len() <= undo::MAX_BYTES);
            prop_assert!(r.offset >= header::HEADER_LEN as u64);
            prop_assert!(r.offset + r.bytes.len() as u64 <= r.old_len);
            prop_assert_eq!(r.encode(), data);
        }
    }

    #[test]
    fn audit_logs(text in ".{0,600}") {
        let _ = audit::verify_lines(b"key", &text);
    }

    #[test]
    fn blocks(data in proptest::collection::vec(any::<u8>(), 0..4200), index in any::<u64>(), fin in any::<bool>()) {
        let c = ContentCipher::new(&[1u8; 32], [2u8; 16]);
        let mut out = Vec::new();
        if c.decrypt_block(index, fin, &data, &mut out).is_err() {
            prop_assert!(out.is_empty(), "no partial plaintext on failure");
        }
        let l = contentenc::layout(index);
        prop_assert!(l.size <= index);
    }
}
