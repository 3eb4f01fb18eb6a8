//! The local KMS through the real `kmsfs` binary: every command, and each of its error paths.

mod common;
use common::*;

const NOT_FOUND: i32 = 10;
const DISABLED: i32 = 11;
const INVALID_STATE: i32 = 12;
const INVALID_CIPHERTEXT: i32 = 13;
const ACCESS_DENIED: i32 = 14;
const VALIDATION: i32 = 15;
const INCORRECT_KEY: i32 = 16;
const INCORRECT_MATERIAL: i32 = 17;
const ALREADY_EXISTS: i32 = 18;
const UNSUPPORTED: i32 = 19;
const WRONG_PASSPHRASE: i32 = 20;
const KEYSTORE: i32 = 21;
const AUDIT_INVALID: i32 = 22;

fn b64(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .expect("base64")
}

#[test]
fn keystore_init_info_and_reinit() {
    let e = Env::new();
    let info = e.json(&["keystore", "info"]);
    assert_eq!(info["RootKey"], "key-file");
    assert_eq!(info["FormatVersion"], 1);
    e.fails(&["keystore", "init"], ALREADY_EXISTS);
    let mode = |p: &std::path::Path| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    };
    assert_eq!(mode(&e.store), 0o700);
    e.create_key(&[]);
    for f in files_under(&e.store) {
        assert_eq!(mode(&f), 0o600, "{}", f.display());
    }
}

#[test]
fn passphrase_store_right_wrong_and_missing() {
    let e = Env::bare();
    let mut init = e.command(&[
        "keystore",
        "init",
        "--kdf-memory-kib",
        "8192",
        "--kdf-iterations",
        "1",
    ]);
    init.env_remove("KMSFS_ROOT_KEY_FILE")
        .env("KMSFS_PASSPHRASE", "correct horse");
    assert!(init.output().unwrap().status.success());
    let run = |setup: &dyn Fn(&mut std::process::Command)| {
        let mut c = e.command(&["key", "create"]);
        c.env_remove("KMSFS_ROOT_KEY_FILE");
        setup(&mut c);
        c.output().unwrap()
    };
    let good = run(&|c| {
        c.env("KMSFS_PASSPHRASE", "correct horse");
    });
    assert!(
        good.status.success(),
        "{}",
        String::from_utf8_lossy(&good.stderr)
    );
    let wrong = run(&|c| {
        c.env("KMSFS_PASSPHRASE", "wrong horse");
    });
    assert_eq!(wrong.status.code(), Some(WRONG_PASSPHRASE));
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("does not unlock"));
    let pf = e.path("pass");
    std::fs::write(&pf, "correct horse\n").unwrap();
    let from_file = run(&|c| {
        c.arg("--passphrase-file").arg(&pf);
    });
    assert!(from_file.status.success());
    let missing = run(&|_| {});
    assert_eq!(missing.status.code(), Some(VALIDATION));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("--passphrase-file"));
    // A root key file does not open a passphrase store.
    let key_file = e.command(&["key", "list"]).output().unwrap();
    assert_eq!(key_file.status.code(), Some(WRONG_PASSPHRASE));
}

#[test]
fn missing_and_damaged_store_are_clear_errors() {
    let e = Env::bare();
    let err = e.fails(&["key", "list"], KEYSTORE);
    assert!(err.contains("keystore init"), "{err}");
    let e = Env::new();
    let db = e.store.join("keys.db");
    let mut bytes = std::fs::read(&db).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&db, &bytes).unwrap();
    let err = e.fails(&["key", "list"], KEYSTORE);
    assert!(err.contains("damaged or was modified"), "{err}");
    std::fs::write(e.store.join("keystore.json"), "{").unwrap();
    e.fails(&["key", "list"], KEYSTORE);
}

#[test]
fn create_describe_list_and_key_names() {
    let e = Env::new();
    let id = e.create_key(&[
        "--alias",
        "finance",
        "--description",
        "books",
        "--tag",
        "team=fin",
    ]);
    assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id}");
    for name in [
        id.clone(),
        "alias/finance".into(),
        format!("kmsfs:key/{id}"),
        "kmsfs:alias/finance".into(),
    ] {
        let m = &e.json(&["key", "describe", &name])["KeyMetadata"];
        assert_eq!(m["KeyId"], id.as_str());
    }
    let m = &e.json(&["key", "describe", &id])["KeyMetadata"];
    assert_eq!(m["KeyState"], "Enabled");
    assert_eq!(m["Origin"], "AWS_KMS");
    assert_eq!(m["Description"], "books");
    assert_eq!(m["CurrentKeyVersion"], 1);
    assert_eq!(m["KeyRotationEnabled"], false);
    assert_eq!(m["Aliases"][0], "alias/finance");
    assert_eq!(m["Tags"]["team"], "fin");
    assert!(m["CreationDate"].as_str().unwrap().ends_with('Z'));
    let text = e.ok(&["key", "describe", "alias/finance"]);
    assert!(
        text.contains("Enabled") && text.contains("alias/finance"),
        "{text}"
    );
    let other = e.create_key(&[]);
    let list = e.json(&["key", "list"]);
    let ids: Vec<&str> = list["Keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["KeyId"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&id.as_str()) && ids.contains(&other.as_str()));
    assert!(e.ok(&["key", "list"]).contains(&other));
    e.fails(&["key", "describe", "alias/nope"], NOT_FOUND);
    e.fails(
        &["key", "describe", &uuid::Uuid::new_v4().to_string()],
        NOT_FOUND,
    );
    e.fails(&["key", "describe", "garbage"], NOT_FOUND);
    e.fails(&["key", "create", "--alias", "finance"], ALREADY_EXISTS);
    e.fails(&["key", "create", "--tag", "novalue"], VALIDATION);
}

#[test]
fn aliases_and_tags() {
    let e = Env::new();
    let a = e.create_key(&[]);
    let b = e.create_key(&[]);
    e.ok(&["key", "alias", "create", "one", &a]);
    e.ok(&["key", "alias", "create", "alias/two", &a]);
    e.fails(&["key", "alias", "create", "one", &b], ALREADY_EXISTS);
    e.fails(&["key", "alias", "create", "bad name!", &a], VALIDATION);
    e.fails(&["key", "alias", "create", "aws/reserved", &a], VALIDATION);
    e.fails(
        &["key", "alias", "create", "three", "alias/missing"],
        NOT_FOUND,
    );
    let all = e.json(&["key", "alias", "list"]);
    assert_eq!(all["Aliases"].as_array().unwrap().len(), 2);
    let of_b = e.json(&["key", "alias", "list", "--key", &b]);
    assert!(of_b["Aliases"].as_array().unwrap().is_empty());
    e.ok(&["key", "alias", "delete", "one"]);
    e.fails(&["key", "alias", "delete", "one"], NOT_FOUND);
    e.fails(&["key", "describe", "alias/one"], NOT_FOUND);
    assert!(e.ok(&["key", "alias", "list"]).contains("alias/two"));

    e.ok(&["key", "tag", &a, "env=prod", "owner=ops"]);
    e.ok(&["key", "untag", &a, "owner"]);
    let tags = e.json(&["key", "tags", &a]);
    assert_eq!(
        tags["Tags"],
        serde_json::json!([{"TagKey": "env", "TagValue": "prod"}])
    );
    e.fails(&["key", "tag", &a, "=x"], VALIDATION);
}

#[test]
fn encrypt_decrypt_limits_formats_and_context() {
    let e = Env::new();
    let k = e.create_key(&["--alias", "app"]);
    let max = vec![7u8; 4096];
    let blob = e.encrypt("alias/app", &max, &[]);
    assert_eq!(e.decrypt(&blob, &[]), max);
    let err = e.fails_with(&["encrypt", "--key", "alias/app"], &[7u8; 4097], VALIDATION);
    assert!(err.contains("4096"), "{err}");
    // Empty plaintext is allowed, as is a context.
    let blob = e.encrypt(&k, b"", &["a=b"]);
    assert_eq!(e.decrypt(&blob, &["a=b"]), b"");
    // Base64 output, file in/out, JSON with AWS names.
    std::fs::write(e.path("p"), b"file text").unwrap();
    let out = e.path("c.b64");
    e.ok(&[
        "encrypt",
        "--key",
        &k,
        "--in",
        e.path("p").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--base64",
    ]);
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(text.trim().starts_with("S01TQ"), "{text}");
    assert_eq!(
        e.ok_with(&["decrypt", "--in", out.to_str().unwrap()], b""),
        b"file text"
    );
    let j = serde_json::from_slice::<serde_json::Value>(
        &e.ok_with(&["encrypt", "--key", &k, "-o", "json"], b"x"),
    )
    .unwrap();
    assert_eq!(j["KeyId"], format!("kmsfs:key/{k}"));
    assert_eq!(j["EncryptionAlgorithm"], "SYMMETRIC_DEFAULT");
    let d = serde_json::from_slice::<serde_json::Value>(&e.ok_with(
        &["decrypt", "-o", "json"],
        &b64(j["CiphertextBlob"].as_str().unwrap()),
    ))
    .unwrap();
    assert_eq!(b64(d["Plaintext"].as_str().unwrap()), b"x");
    assert_eq!(d["KeyId"], format!("kmsfs:key/{k}"));

    // Contexts must match exactly, and are encoded unambiguously.
    let blob = e.encrypt(&k, b"secret", &["ab=c"]);
    e.fails_with(&["decrypt", "--context", "a=bc"], &blob, INVALID_CIPHERTEXT);
    e.fails_with(&["decrypt"], &blob, INVALID_CIPHERTEXT);
    e.fails_with(
        &["decrypt", "--context", "ab=c", "--context", "x=y"],
        &blob,
        INVALID_CIPHERTEXT,
    );
    e.fails_with(&["decrypt", "--context", "ab"], &blob, VALIDATION);
    assert_eq!(e.decrypt(&blob, &["ab=c"]), b"secret");
}

#[test]
fn tampered_truncated_and_foreign_blobs_are_invalid_ciphertext() {
    let e = Env::new();
    let k = e.create_key(&[]);
    let blob = e.encrypt(&k, b"attack at dawn", &["file=1"]);
    // Every byte past the header (nonce, ciphertext, tag) and the version-number bytes.
    for i in (21..blob.len()).step_by(3) {
        let mut t = blob.clone();
        t[i] ^= 0x01;
        let code = e.run_with(&["decrypt", "--context", "file=1"], &t);
        assert!(code.stdout.is_empty(), "flip at {i} printed plaintext");
        assert!(
            matches!(code.status.code(), Some(INVALID_CIPHERTEXT)),
            "flip at {i}: {:?}",
            code.status
        );
    }
    e.fails_with(
        &["decrypt", "--context", "file=1"],
        &blob[..blob.len() - 1],
        INVALID_CIPHERTEXT,
    );
    e.fails_with(
        &["decrypt", "--context", "file=1"],
        &blob[..30],
        INVALID_CIPHERTEXT,
    );
    e.fails_with(&["decrypt"], b"not a blob at all", INVALID_CIPHERTEXT);
    e.fails_with(&["decrypt"], b"", INVALID_CIPHERTEXT);
    // A flipped key id names a key that does not exist.
    let mut t = blob.clone();
    t[6] ^= 1;
    e.fails_with(&["decrypt", "--context", "file=1"], &t, NOT_FOUND);
    // --key pins the expected key.
    let other = e.create_key(&[]);
    e.fails_with(
        &["decrypt", "--context", "file=1", "--key", &other],
        &blob,
        INCORRECT_KEY,
    );
    assert_eq!(
        e.ok_with(&["decrypt", "--context", "file=1", "--key", &k], &blob),
        b"attack at dawn"
    );
}

#[test]
fn disable_and_enable() {
    let e = Env::new();
    let k = e.create_key(&[]);
    let blob = e.encrypt(&k, b"data", &[]);
    e.ok(&["key", "disable", &k]);
    assert_eq!(
        e.json(&["key", "describe", &k])["KeyMetadata"]["KeyState"],
        "Disabled"
    );
    let err = e.fails_with(&["encrypt", "--key", &k], b"x", DISABLED);
    assert!(
        err.contains("kmsfs key enable"),
        "the error says what to do: {err}"
    );
    e.fails_with(&["decrypt"], &blob, DISABLED);
    e.fails(&["generate-data-key", "--key", &k], DISABLED);
    e.fails(&["key", "rotate", &k], DISABLED);
    e.ok(&["key", "enable", &k]);
    assert_eq!(e.decrypt(&blob, &[]), b"data");
}

#[test]
fn rotation_on_demand_keeps_old_versions() {
    let e = Env::new();
    let k = e.create_key(&[]);
    let v1 = e.encrypt(&k, b"one", &["c=1"]);
    assert_eq!(e.json(&["key", "rotate", &k])["KeyVersion"], 2);
    let v2 = e.ok_with(
        &["encrypt", "--key", &k, "--context", "c=1", "-o", "json"],
        b"two",
    );
    let v2: serde_json::Value = serde_json::from_slice(&v2).unwrap();
    assert_eq!(v2["KeyVersion"], 2);
    assert_eq!(e.decrypt(&v1, &["c=1"]), b"one");
    assert_eq!(
        e.decrypt(&b64(v2["CiphertextBlob"].as_str().unwrap()), &["c=1"]),
        b"two"
    );
    let rot = e.json(&["key", "rotations", &k]);
    let r = rot["Rotations"].as_array().unwrap();
    assert_eq!(r.len(), 2);
    assert_eq!(r[0]["RotationType"], "INITIAL");
    assert_eq!(r[1]["RotationType"], "ON_DEMAND");
    assert_eq!(r[1]["Current"], true);
    assert!(e.ok(&["key", "rotations", &k]).contains("current"));
    // Re-encrypting an old blob to its own key moves it to the current version.
    let moved = e.ok_with(
        &["re-encrypt", "--to", &k, "--context", "c=1", "-o", "json"],
        &v1,
    );
    let moved: serde_json::Value = serde_json::from_slice(&moved).unwrap();
    assert_eq!(moved["SourceKeyVersion"], 1);
    assert_eq!(moved["KeyVersion"], 2);
    assert_eq!(
        e.decrypt(&b64(moved["CiphertextBlob"].as_str().unwrap()), &["c=1"]),
        b"one"
    );
}

#[test]
fn automatic_rotation_happens_when_due() {
    let mut e = Env::new();
    e.now = Some("2026-01-01T00:00:00Z".into());
    let k = e.create_key(&[]);
    e.fails(
        &["key", "rotation", "enable", &k, "--period-days", "0"],
        VALIDATION,
    );
    e.fails(
        &["key", "rotation", "enable", &k, "--period-days", "2561"],
        VALIDATION,
    );
    e.ok(&["key", "rotation", "enable", &k, "--period-days", "10"]);
    let s = e.json(&["key", "rotation", "status", &k]);
    assert_eq!(s["KeyRotationEnabled"], true);
    assert_eq!(s["RotationPeriodInDays"], 10);
    assert_eq!(s["NextRotationDate"], "2026-01-11T00:00:00.000Z");
    let old = e.encrypt(&k, b"old", &[]);
    e.now = Some("2026-01-10T23:59:59Z".into());
    assert_eq!(
        e.json(&["key", "describe", &k])["KeyMetadata"]["CurrentKeyVersion"],
        1
    );
    e.now = Some("2026-01-11T00:00:00Z".into());
    let m = e.json(&["key", "describe", &k]);
    assert_eq!(m["KeyMetadata"]["CurrentKeyVersion"], 2);
    assert_eq!(
        m["KeyMetadata"]["NextRotationDate"],
        "2026-01-21T00:00:00.000Z"
    );
    assert_eq!(e.decrypt(&old, &[]), b"old");
    let rot = e.json(&["key", "rotations", &k]);
    assert_eq!(rot["Rotations"][1]["RotationType"], "AUTOMATIC");
    let auto: Vec<_> = e
        .audit_lines()
        .into_iter()
        .filter(|l| l["operation"] == "RotateKey")
        .collect();
    assert_eq!(auto.len(), 1);
    assert_eq!(auto[0]["message"], "automatic rotation");
    e.ok(&["key", "rotation", "disable", &k]);
    e.now = Some("2027-01-01T00:00:00Z".into());
    assert_eq!(
        e.json(&["key", "describe", &k])["KeyMetadata"]["CurrentKeyVersion"],
        2
    );
    e.fails(
        &[
            "key",
            "rotation",
            "enable",
            &k,
            "--period-days",
            "5",
            "--bogus",
        ],
        2,
    );
}

#[test]
fn scheduled_deletion_cancel_and_destruction() {
    let mut e = Env::new();
    e.now = Some("2026-03-01T00:00:00Z".into());
    let k = e.create_key(&["--alias", "doomed"]);
    let blob = e.encrypt(&k, b"bye", &[]);
    e.fails(&["key", "schedule-deletion", &k, "--days", "6"], VALIDATION);
    e.fails(
        &["key", "schedule-deletion", &k, "--days", "31"],
        VALIDATION,
    );
    let r = e.json(&["key", "schedule-deletion", &k]);
    assert_eq!(
        r["DeletionDate"], "2026-03-31T00:00:00.000Z",
        "default 30 days"
    );
    assert_eq!(r["KeyState"], "PendingDeletion");
    e.fails_with(&["encrypt", "--key", &k], b"x", INVALID_STATE);
    e.fails_with(&["decrypt"], &blob, INVALID_STATE);
    e.fails(&["key", "enable", &k], INVALID_STATE);
    e.fails(
        &["key", "schedule-deletion", &k, "--days", "7"],
        INVALID_STATE,
    );
    e.ok(&["key", "cancel-deletion", &k]);
    assert_eq!(
        e.json(&["key", "describe", &k])["KeyMetadata"]["KeyState"],
        "Disabled"
    );
    e.fails(&["key", "cancel-deletion", &k], INVALID_STATE);
    e.ok(&["key", "enable", &k]);
    assert_eq!(e.decrypt(&blob, &[]), b"bye");

    e.ok(&["key", "schedule-deletion", &k, "--days", "7"]);
    e.now = Some("2026-03-07T23:59:59Z".into());
    assert_eq!(
        e.json(&["key", "describe", &k])["KeyMetadata"]["KeyState"],
        "PendingDeletion"
    );
    e.now = Some("2026-03-08T00:00:00Z".into());
    let err = e.fails(&["key", "describe", &k], NOT_FOUND);
    assert!(err.contains("deleted"), "{err}");
    let err = e.fails_with(&["decrypt"], &blob, NOT_FOUND);
    assert!(err.contains("destroyed"), "{err}");
    e.fails(&["key", "describe", "alias/doomed"], NOT_FOUND);
    assert!(!e.ok(&["key", "list"]).contains(&k));
    let deletes: Vec<_> = e
        .audit_lines()
        .into_iter()
        .filter(|l| l["operation"] == "DeleteKey")
        .collect();
    assert_eq!(deletes.len(), 1);
    assert_eq!(deletes[0]["key_id"], k.as_str());
}

#[test]
fn imported_key_material() {
    let e = Env::new();
    let k = e.create_key(&["--origin", "external"]);
    let m = &e.json(&["key", "describe", &k])["KeyMetadata"];
    assert_eq!(m["KeyState"], "PendingImport");
    assert_eq!(m["Origin"], "EXTERNAL");
    e.fails_with(&["encrypt", "--key", &k], b"x", INVALID_STATE);
    let write = |name: &str, n: usize, b: u8| {
        let p = e.path(name);
        std::fs::write(&p, vec![b; n]).unwrap();
        p.to_str().unwrap().to_string()
    };
    let short = write("m31", 31, 1);
    let long = write("m33", 33, 1);
    let good = write("m32", 32, 1);
    let other = write("o32", 32, 2);
    e.fails(
        &["key", "import", &k, "--material-file", &short],
        VALIDATION,
    );
    e.fails(&["key", "import", &k, "--material-file", &long], VALIDATION);
    e.ok(&["key", "import", &k, "--material-file", &good]);
    assert_eq!(
        e.json(&["key", "describe", &k])["KeyMetadata"]["KeyState"],
        "Enabled"
    );
    let blob = e.encrypt(&k, b"imported", &[]);
    assert_eq!(e.decrypt(&blob, &[]), b"imported");
    e.ok(&["key", "import", &k, "--material-file", &good]);
    e.fails(
        &["key", "import", &k, "--material-file", &other],
        INCORRECT_MATERIAL,
    );
    e.fails(&["key", "rotate", &k], UNSUPPORTED);
    e.fails(&["key", "rotation", "enable", &k], UNSUPPORTED);
    let native = e.create_key(&[]);
    e.fails(
        &["key", "import", &native, "--material-file", &good],
        UNSUPPORTED,
    );
    // The same material imported into a second key gives a key that cannot read the first's blobs.
    let k2 = e.create_key(&["--origin", "external"]);
    e.ok(&["key", "import", &k2, "--material-file", &good]);
    e.fails_with(&["decrypt", "--key", &k2], &blob, INCORRECT_KEY);
}

#[test]
fn re_encrypt_between_keys() {
    let e = Env::new();
    let a = e.create_key(&[]);
    let b = e.create_key(&[]);
    let blob = e.encrypt(&a, b"payload", &["x=1"]);
    let moved = e.ok_with(
        &[
            "re-encrypt",
            "--to",
            &b,
            "--context",
            "x=1",
            "--to-context",
            "y=2",
        ],
        &blob,
    );
    let out = e.ok_with(&["decrypt", "--context", "y=2", "--key", &b], &moved);
    assert_eq!(out, b"payload");
    e.fails_with(&["decrypt", "--context", "x=1"], &moved, INVALID_CIPHERTEXT);
    // Same context is kept when --to-context is not given.
    let kept = e.ok_with(&["re-encrypt", "--to", &b, "--context", "x=1"], &blob);
    assert_eq!(e.decrypt(&kept, &["x=1"]), b"payload");
    e.fails_with(
        &["re-encrypt", "--to", &b, "--context", "x=2"],
        &blob,
        INVALID_CIPHERTEXT,
    );
    e.ok(&["key", "disable", &b]);
    e.fails_with(
        &["re-encrypt", "--to", &b, "--context", "x=1"],
        &blob,
        DISABLED,
    );
}

#[test]
fn data_keys_and_random() {
    let e = Env::new();
    let k = e.create_key(&[]);
    let dk = e.json(&["generate-data-key", "--key", &k, "--context", "f=1"]);
    let plain = b64(dk["Plaintext"].as_str().unwrap());
    assert_eq!(plain.len(), 32);
    let blob = b64(dk["CiphertextBlob"].as_str().unwrap());
    assert_eq!(e.decrypt(&blob, &["f=1"]), plain);
    assert_eq!(dk["KeyId"], format!("kmsfs:key/{k}"));
    let dk16 = e.json(&["generate-data-key", "--key", &k, "--spec", "AES_128"]);
    assert_eq!(b64(dk16["Plaintext"].as_str().unwrap()).len(), 16);
    let dk64 = e.json(&["generate-data-key", "--key", &k, "--bytes", "64"]);
    assert_eq!(b64(dk64["Plaintext"].as_str().unwrap()).len(), 64);
    let wp = e.json(&["generate-data-key", "--key", &k, "--without-plaintext"]);
    assert!(wp.get("Plaintext").is_none());
    assert_eq!(
        e.decrypt(&b64(wp["CiphertextBlob"].as_str().unwrap()), &[])
            .len(),
        32
    );
    e.fails(
        &["generate-data-key", "--key", &k, "--bytes", "0"],
        VALIDATION,
    );
    e.fails(
        &["generate-data-key", "--key", &k, "--bytes", "1025"],
        VALIDATION,
    );
    e.fails(
        &[
            "generate-data-key",
            "--key",
            &k,
            "--bytes",
            "16",
            "--spec",
            "AES_256",
        ],
        2,
    );
    assert_eq!(e.ok_with(&["random", "--bytes", "16"], b"").len(), 16);
    let r = e.json(&["random", "--bytes", "24"]);
    assert_eq!(b64(r["Plaintext"].as_str().unwrap()).len(), 24);
    e.fails(&["random", "--bytes", "1025"], VALIDATION);
    e.fails(&["random", "--bytes", "0"], VALIDATION);
}

fn write_policy(e: &Env, name: &str, text: &str) -> String {
    let p = e.path(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_string()
}

#[test]
fn policies_deny_wins_lockout_and_explain() {
    let e = Env::new();
    let k = e.create_key(&[]);
    let default = e.ok(&["key", "policy", "get", &k]);
    assert!(
        default.contains("uid:0") && default.contains("kms:*"),
        "{default}"
    );
    let blob = e.encrypt(&k, b"p", &[]);
    // Allow everything, but deny root Encrypt outright and Decrypt without the right context.
    let p = write_policy(
        &e,
        "deny.json",
        r#"{"Version":"2012-10-17","Statement":[
        {"Sid":"all","Effect":"Allow","Principal":{"Local":["uid:0"]},"Action":"kms:*","Resource":"*"},
        {"Sid":"no-encrypt","Effect":"Deny","Principal":{"Local":["user:root"]},"Action":"kms:Encrypt","Resource":"*"},
        {"Sid":"ctx","Effect":"Deny","Principal":"*","Action":"kms:Decrypt","Resource":"*",
         "Condition":{"StringNotEquals":{"kms:EncryptionContext:dept":"fin"}}}]}"#,
    );
    e.ok(&["key", "policy", "put", &k, "--file", &p]);
    let err = e.fails_with(&["encrypt", "--key", &k], b"x", ACCESS_DENIED);
    assert!(err.contains("no-encrypt"), "{err}");
    e.fails_with(&["decrypt"], &blob, ACCESS_DENIED);
    let fin = e.json(&["generate-data-key", "--key", &k, "--context", "dept=fin"]);
    assert_eq!(
        e.decrypt(&b64(fin["CiphertextBlob"].as_str().unwrap()), &["dept=fin"])
            .len(),
        32
    );
    let denied: Vec<_> = e
        .audit_lines()
        .into_iter()
        .filter(|l| l["result"] == "AccessDeniedException")
        .collect();
    assert_eq!(denied.len(), 2, "denials are audited");

    let x = e.json(&[
        "key",
        "policy",
        "explain",
        &k,
        "--action",
        "kms:Encrypt",
        "--as",
        "uid:0",
    ]);
    assert_eq!(x["Decision"], "Deny");
    assert_eq!(x["Statement"], "no-encrypt");
    let x = e.json(&[
        "key",
        "policy",
        "explain",
        &k,
        "--action",
        "kms:DescribeKey",
        "--as",
        "uid:0",
    ]);
    assert_eq!(x["Decision"], "Allow");
    assert_eq!(x["Statement"], "all");
    let x = e.json(&[
        "key",
        "policy",
        "explain",
        &k,
        "--action",
        "kms:Decrypt",
        "--as",
        "uid:0",
        "--context",
        "dept=fin",
    ]);
    assert_eq!(x["Decision"], "Allow");
    let txt = e.ok(&[
        "key",
        "policy",
        "explain",
        &k,
        "--action",
        "kms:DescribeKey",
        "--as",
        "uid:4321",
    ]);
    assert!(
        txt.starts_with("DENY") && txt.contains("no statement allows it"),
        "{txt}"
    );
    e.fails(
        &[
            "key",
            "policy",
            "explain",
            &k,
            "--action",
            "kms:Decrypt",
            "--as",
            "nobody-format",
        ],
        VALIDATION,
    );

    // A policy that would lock root out of PutKeyPolicy is refused unless bypassed.
    let lock = write_policy(
        &e,
        "lock.json",
        r#"{"Version":"2012-10-17","Statement":[
        {"Effect":"Allow","Principal":{"Local":"uid:0"},"Action":["kms:Encrypt","kms:Decrypt","kms:GetKeyPolicy"],"Resource":"*"}]}"#,
    );
    let err = e.fails(&["key", "policy", "put", &k, "--file", &lock], VALIDATION);
    assert!(err.contains("--bypass-lockout-check"), "{err}");
    e.ok(&[
        "key",
        "policy",
        "put",
        &k,
        "--file",
        &lock,
        "--bypass-lockout-check",
    ]);
    e.fails(&["key", "policy", "put", &k, "--file", &p], ACCESS_DENIED);
    e.fails(&["key", "disable", &k], ACCESS_DENIED);
    let bad = write_policy(
        &e,
        "bad.json",
        r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":"*","NotAction":"kms:*","Resource":"*"}]}"#,
    );
    let k2 = e.create_key(&[]);
    e.fails(&["key", "policy", "put", &k2, "--file", &bad], VALIDATION);
    e.fails(&["key", "create", "--policy-file", &bad], VALIDATION);
    e.fails(&["key", "create", "--policy-file", &lock], VALIDATION);
    let k3 = e.create_key(&["--policy-file", &p]);
    e.fails_with(&["encrypt", "--key", &k3], b"x", ACCESS_DENIED);
}

/// Policies are checked against the real uid of the calling process: run as other users.
#[test]
fn policies_apply_to_other_real_users() {
    let e = Env::new();
    let k = e.create_key(&[]);
    let p = write_policy(
        &e,
        "users.json",
        r#"{"Version":"2012-10-17","Statement":[
        {"Sid":"admin","Effect":"Allow","Principal":{"Local":"uid:0"},"Action":"kms:*","Resource":"*"},
        {"Sid":"users","Effect":"Allow","Principal":{"Local":["uid:4242","uid:4243"]},"Action":["kms:Encrypt","kms:Decrypt"],"Resource":"*"},
        {"Sid":"not-4243","Effect":"Deny","Principal":{"Local":["gid:4343"]},"Action":"kms:Decrypt","Resource":"*"}]}"#,
    );
    e.ok(&["key", "policy", "put", &k, "--file", &p]);
    let as_user = |uid: u32, gid: u32, args: &[&str], stdin: &[u8]| {
        // Hand the store to that user, as a per-user store would be.
        for f in files_under(&e.store)
            .into_iter()
            .chain([e.store.clone(), e.root_key.clone()])
        {
            std::os::unix::fs::chown(&f, Some(uid), Some(gid)).unwrap();
        }
        feed(e.command_as(uid, gid, args), stdin)
    };
    let enc = as_user(4242, 4242, &["encrypt", "--key", &k], b"from 4242");
    assert!(
        enc.status.success(),
        "{}",
        String::from_utf8_lossy(&enc.stderr)
    );
    let dec = as_user(4242, 4242, &["decrypt"], &enc.stdout);
    assert_eq!(dec.stdout, b"from 4242");
    // 4243 is allowed by uid but its group is denied Decrypt: Deny wins.
    let dec = as_user(4243, 4343, &["decrypt"], &enc.stdout);
    assert_eq!(
        dec.status.code(),
        Some(ACCESS_DENIED),
        "{}",
        String::from_utf8_lossy(&dec.stderr)
    );
    assert!(dec.stdout.is_empty());
    assert!(String::from_utf8_lossy(&dec.stderr).contains("not-4243"));
    // 4244 is in no statement: implicitly denied, even to describe.
    let d = as_user(4244, 4244, &["key", "describe", &k], b"");
    assert_eq!(d.status.code(), Some(ACCESS_DENIED));
    // Keys a user creates are theirs by default.
    let mine = as_user(4244, 4244, &["key", "create"], b"");
    assert!(mine.status.success());
    let mine = String::from_utf8(mine.stdout).unwrap();
    let enc = as_user(4244, 4244, &["encrypt", "--key", mine.trim()], b"mine");
    assert!(enc.status.success());
    let audit = e.audit_lines();
    let denied: Vec<u64> = audit
        .iter()
        .filter(|l| l["result"] == "AccessDeniedException")
        .map(|l| l["caller"]["uid"].as_u64().unwrap())
        .collect();
    assert_eq!(denied, vec![4243, 4244]);
    for f in files_under(&e.store)
        .into_iter()
        .chain([e.store.clone(), e.root_key.clone()])
    {
        std::os::unix::fs::chown(&f, Some(0), Some(0)).unwrap();
    }
    let v = e.ok(&["audit", "verify"]);
    assert!(v.contains("intact"));
}

#[test]
fn audit_records_every_operation_and_detects_tampering() {
    let e = Env::new();
    let k = e.create_key(&["--alias", "aud"]);
    let blob = e.encrypt(&k, b"PLAINTEXT-MARKER-123", &["purpose=test"]);
    e.decrypt(&blob, &["purpose=test"]);
    e.fails_with(
        &["decrypt", "--context", "purpose=wrong"],
        &blob,
        INVALID_CIPHERTEXT,
    );
    e.ok(&["key", "describe", "alias/aud"]);
    let lines = e.audit_lines();
    let ops: Vec<&str> = lines
        .iter()
        .map(|l| l["operation"].as_str().unwrap())
        .collect();
    assert_eq!(
        ops,
        ["CreateKey", "Encrypt", "Decrypt", "Decrypt", "DescribeKey"]
    );
    let dec = &lines[2];
    assert_eq!(dec["key_id"], k.as_str());
    assert_eq!(dec["key_version"], 1);
    assert_eq!(dec["context"]["purpose"], "test");
    assert_eq!(dec["caller"]["uid"], 0);
    assert!(dec["caller"]["pid"].as_u64().unwrap() > 0);
    assert!(!dec["request_id"].as_str().unwrap().is_empty());
    assert_eq!(lines[3]["result"], "InvalidCiphertextException");
    let raw = std::fs::read(e.store.join("audit.log")).unwrap();
    assert!(!contains(&raw, b"PLAINTEXT-MARKER-123"));

    let shown = e.json(&[
        "audit",
        "show",
        "--key",
        "alias/aud",
        "--operation",
        "decrypt",
    ]);
    assert_eq!(shown.as_array().unwrap().len(), 2);
    let shown = e.json(&["audit", "show", "--limit", "1"]);
    assert_eq!(shown[0]["operation"], "DescribeKey");
    assert_eq!(
        e.json(&["audit", "show", "--since", "2999-01-01"])
            .as_array()
            .unwrap()
            .len(),
        0
    );
    assert!(e.ok(&["audit", "show"]).contains("Encrypt"));
    e.fails(&["audit", "show", "--since", "someday"], VALIDATION);
    assert!(e.ok(&["audit", "verify"]).contains("5 records"));

    let path = e.store.join("audit.log");
    let good = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = good.lines().collect();
    let join = |v: &[&str]| v.iter().map(|l| format!("{l}\n")).collect::<String>();
    let check = |text: String, bad_line: Option<usize>| {
        std::fs::write(&path, text).unwrap();
        let err = e.fails(&["audit", "verify"], AUDIT_INVALID);
        if let Some(n) = bad_line {
            assert!(err.contains(&format!("line {n}:")), "{err}");
        }
        std::fs::write(&path, &good).unwrap();
    };
    check(good.replacen("\"uid\":0", "\"uid\":1", 2), Some(1));
    check(join(&[lines[0], lines[2], lines[3], lines[4]]), Some(2));
    check(
        join(&[lines[0], lines[1], lines[1], lines[2], lines[3], lines[4]]),
        Some(3),
    );
    check(
        join(&[lines[0], lines[1], lines[3], lines[2], lines[4]]),
        Some(3),
    );
    check(join(&lines[..4]), None);
    check(String::new(), None);
    assert!(e.ok(&["audit", "verify"]).contains("intact"));
}

/// Many CLI processes changing the store at once never lose an update.
#[test]
fn concurrent_writers_lose_nothing() {
    let e = Env::new();
    let procs: Vec<_> = (0..8)
        .map(|p| {
            shell(&e, &format!("for i in 1 2 3 4 5; do \"$0\" key create --alias p{p}-$i >/dev/null || exit 1; done"))
                .spawn()
                .unwrap()
        })
        .collect();
    for mut p in procs {
        assert!(p.wait().unwrap().success());
    }
    let keys = e.json(&["key", "list"]);
    assert_eq!(keys["Keys"].as_array().unwrap().len(), 40);
    let aliases = e.json(&["key", "alias", "list"]);
    assert_eq!(aliases["Aliases"].as_array().unwrap().len(), 40);
    // 40 CreateKey records, then ListKeys and ListAliases.
    assert!(e.ok(&["audit", "verify"]).contains("42 records"));
}

/// Raw key material never reaches the disk: import known material and look for it everywhere.
#[test]
fn no_key_material_or_plaintext_in_store_files() {
    let e = Env::new();
    let material: Vec<u8> = (0u8..32)
        .map(|i| i.wrapping_mul(37).wrapping_add(11))
        .collect();
    let mf = e.path("material");
    std::fs::write(&mf, &material).unwrap();
    let k = e.create_key(&["--origin", "external", "--alias", "known"]);
    e.ok(&["key", "import", &k, "--material-file", mf.to_str().unwrap()]);
    std::fs::remove_file(&mf).unwrap();
    let dk = e.json(&["generate-data-key", "--key", &k]);
    let data_key = b64(dk["Plaintext"].as_str().unwrap());
    e.encrypt(&k, b"PLAINTEXT-IN-STORE?", &[]);
    e.ok(&["key", "rotate", &e.create_key(&[])]);
    use base64::Engine;
    let needles: Vec<Vec<u8>> = [material.clone(), data_key.clone()]
        .iter()
        .flat_map(|m| {
            vec![
                m.clone(),
                m[..16].to_vec(),
                m[16..].to_vec(),
                hex::encode(m).into_bytes(),
                base64::engine::general_purpose::STANDARD
                    .encode(m)
                    .into_bytes(),
            ]
        })
        .chain([b"PLAINTEXT-IN-STORE?".to_vec()])
        .collect();
    let files = files_under(&e.store);
    assert!(files.len() >= 4);
    for f in files {
        let data = std::fs::read(&f).unwrap();
        for n in &needles {
            assert!(!contains(&data, n), "{} holds secret bytes", f.display());
        }
    }
}

#[test]
fn errors_in_json_and_config_file() {
    let e = Env::new();
    let out = e.run(&["key", "describe", "alias/none", "-o", "json"]);
    assert_eq!(out.status.code(), Some(NOT_FOUND));
    let err: serde_json::Value = serde_json::from_slice(&out.stderr).unwrap();
    assert_eq!(err["__type"], "NotFoundException");

    // The key store path and its unlocking secret may come from the config file.
    let cfg = e.path("kmsfs.toml");
    std::fs::write(
        &cfg,
        format!(
            "[keystore]\npath = {:?}\nroot_key_file = {:?}\n",
            e.store.to_str().unwrap(),
            e.root_key.to_str().unwrap()
        ),
    )
    .unwrap();
    let mut c = e.command(&["key", "create", "--config", cfg.to_str().unwrap()]);
    c.env_remove("KMSFS_KEYSTORE")
        .env_remove("KMSFS_ROOT_KEY_FILE");
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(&cfg, "[keystore]\nnot_a_key = 1\n").unwrap();
    e.fails(
        &["key", "list", "--config", cfg.to_str().unwrap()],
        VALIDATION,
    );
    e.fails(
        &["key", "list", "--config", "/nonexistent.toml"],
        VALIDATION,
    );
    let mut bad_now = e.command(&["key", "list"]);
    bad_now.env("KMSFS_NOW", "tomorrow");
    assert_eq!(bad_now.output().unwrap().status.code(), Some(VALIDATION));
}
