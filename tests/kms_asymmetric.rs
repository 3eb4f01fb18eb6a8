//! Asymmetric and HMAC keys through the real `kmsfs` binary, checked against `openssl`: a
//! signature kmsfs makes verifies with openssl and the exported public key, and what openssl
//! encrypts to that public key kmsfs decrypts.

mod common;
use common::*;
use std::process::Command;

const DISABLED: i32 = 11;
const INVALID_STATE: i32 = 12;
const INVALID_CIPHERTEXT: i32 = 13;
const VALIDATION: i32 = 15;
const UNSUPPORTED: i32 = 19;
const INVALID_KEY_USAGE: i32 = 24;
const INVALID_SIGNATURE: i32 = 25;
const INVALID_MAC: i32 = 26;

fn b64(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .expect("base64")
}

fn openssl(args: &[&str]) -> std::process::Output {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The key's public key as a PEM file, exported by kmsfs.
fn export_pem(e: &Env, key: &str, name: &str) -> String {
    let pem = e.path(name);
    let pem = pem.to_str().unwrap().to_string();
    e.ok(&["get-public-key", key, "--pem", "--out", &pem]);
    pem
}

/// A signing algorithm, openssl's digest name for it, and openssl's extra verify options.
type SigCase<'a> = (&'a str, &'a str, &'a [&'a str]);

#[test]
fn signatures_verify_with_openssl_for_every_algorithm() {
    let e = Env::new();
    let msg = e.path("msg");
    std::fs::write(&msg, b"release 1.2.3\n").unwrap();
    let msg = msg.to_str().unwrap();
    let cases: &[(&str, &[SigCase])] = &[
        (
            "RSA_2048",
            &[
                (
                    "RSASSA_PSS_SHA_256",
                    "sha256",
                    &[
                        "-sigopt",
                        "rsa_padding_mode:pss",
                        "-sigopt",
                        "rsa_pss_saltlen:32",
                    ],
                ),
                (
                    "RSASSA_PSS_SHA_512",
                    "sha512",
                    &[
                        "-sigopt",
                        "rsa_padding_mode:pss",
                        "-sigopt",
                        "rsa_pss_saltlen:64",
                    ],
                ),
                ("RSASSA_PKCS1_V1_5_SHA_384", "sha384", &[]),
            ],
        ),
        (
            "RSA_3072",
            &[
                ("RSASSA_PKCS1_V1_5_SHA_256", "sha256", &[]),
                (
                    "RSASSA_PSS_SHA_384",
                    "sha384",
                    &[
                        "-sigopt",
                        "rsa_padding_mode:pss",
                        "-sigopt",
                        "rsa_pss_saltlen:48",
                    ],
                ),
            ],
        ),
        (
            "RSA_4096",
            &[
                ("RSASSA_PKCS1_V1_5_SHA_512", "sha512", &[]),
                (
                    "RSASSA_PSS_SHA_256",
                    "sha256",
                    &[
                        "-sigopt",
                        "rsa_padding_mode:pss",
                        "-sigopt",
                        "rsa_pss_saltlen:32",
                    ],
                ),
            ],
        ),
        ("ECC_NIST_P256", &[("ECDSA_SHA_256", "sha256", &[])]),
        ("ECC_NIST_P384", &[("ECDSA_SHA_384", "sha384", &[])]),
    ];
    for (spec, algs) in cases {
        let k = e.create_key(&["--spec", spec, "--usage", "SIGN_VERIFY"]);
        let d = e.json(&["key", "describe", &k]);
        assert_eq!(d["KeyMetadata"]["KeySpec"], *spec);
        assert_eq!(d["KeyMetadata"]["KeyUsage"], "SIGN_VERIFY");
        assert!(d["KeyMetadata"].get("EncryptionAlgorithms").is_none());
        let pem = export_pem(&e, &k, &format!("{spec}.pem"));
        // The DER form is the same key.
        let der = e.ok_with(&["get-public-key", &k], b"");
        let conv = openssl(&["pkey", "-pubin", "-in", &pem, "-outform", "DER"]);
        assert_eq!(conv.stdout, der, "{spec}: DER and PEM exports differ");
        for (alg, md, opts) in *algs {
            let sig = e.path(&format!("{spec}-{alg}.sig"));
            let sig = sig.to_str().unwrap();
            e.ok(&[
                "sign",
                "--key",
                &k,
                "--algorithm",
                alg,
                "--in",
                msg,
                "--out",
                sig,
            ]);
            let mut args = vec!["dgst", "-verify", &pem, "-signature", sig];
            let mdflag = format!("-{md}");
            args.insert(1, &mdflag);
            for o in opts.iter() {
                args.push(o);
            }
            args.push(msg);
            let out = openssl(&args);
            assert!(
                String::from_utf8_lossy(&out.stdout).contains("Verified OK"),
                "{spec} {alg}"
            );
            // kmsfs verifies its own signature, and refuses it for another message.
            let v = e.json(&[
                "verify",
                "--key",
                &k,
                "--algorithm",
                alg,
                "--in",
                msg,
                "--signature",
                sig,
            ]);
            assert_eq!(v["SignatureValid"], true);
            e.fails_with(
                &[
                    "verify",
                    "--key",
                    &k,
                    "--algorithm",
                    alg,
                    "--signature",
                    sig,
                ],
                b"another message",
                INVALID_SIGNATURE,
            );
        }
    }
}

#[test]
fn openssl_signatures_and_digests_verify_in_kmsfs() {
    let e = Env::new();
    let k = e.create_key(&["--spec", "ECC_NIST_P256"]);
    // An ECC key's only usage is the default.
    let d = e.json(&["key", "describe", &k]);
    assert_eq!(d["KeyMetadata"]["KeyUsage"], "SIGN_VERIFY");
    assert_eq!(
        d["KeyMetadata"]["SigningAlgorithms"],
        serde_json::json!(["ECDSA_SHA_256"])
    );
    let msg = e.path("m");
    std::fs::write(&msg, b"hello").unwrap();
    let msg = msg.to_str().unwrap();
    // DIGEST: the caller hashes; kmsfs signs the 32 bytes without hashing again, so the
    // signature verifies over the original message.
    let digest = openssl(&["dgst", "-sha256", "-binary", msg]).stdout;
    assert_eq!(digest.len(), 32);
    let sig = e.ok_with(
        &[
            "sign",
            "--key",
            &k,
            "--algorithm",
            "ECDSA_SHA_256",
            "--message-type",
            "DIGEST",
            "--base64",
        ],
        &digest,
    );
    let sigf = e.path("d.sig");
    std::fs::write(&sigf, &sig).unwrap();
    let sigf = sigf.to_str().unwrap();
    e.ok(&[
        "verify",
        "--key",
        &k,
        "--algorithm",
        "ECDSA_SHA_256",
        "--in",
        msg,
        "--signature",
        sigf,
    ]);
    // A digest of the wrong length is refused; so is an algorithm the key does not have.
    e.fails_with(
        &[
            "sign",
            "--key",
            &k,
            "--algorithm",
            "ECDSA_SHA_256",
            "--message-type",
            "DIGEST",
        ],
        &digest[..20],
        VALIDATION,
    );
    e.fails_with(
        &["sign", "--key", &k, "--algorithm", "ECDSA_SHA_384"],
        b"x",
        INVALID_KEY_USAGE,
    );
    e.fails_with(&["encrypt", "--key", &k], b"x", INVALID_KEY_USAGE);
    // A RAW message over 4096 bytes is refused.
    e.fails_with(
        &["sign", "--key", &k, "--algorithm", "ECDSA_SHA_256"],
        &[0u8; 4097],
        VALIDATION,
    );
    // Rotation is for symmetric keys only.
    e.fails(&["key", "rotate", &k], UNSUPPORTED);
    e.fails(&["key", "rotation", "enable", &k], UNSUPPORTED);
    // Disabled keys neither sign nor export.
    e.ok(&["key", "disable", &k]);
    e.fails_with(
        &["sign", "--key", &k, "--algorithm", "ECDSA_SHA_256"],
        b"x",
        DISABLED,
    );
    e.fails(&["get-public-key", &k], DISABLED);
    e.ok(&["key", "enable", &k]);
    e.ok(&["key", "schedule-deletion", &k, "--days", "7"]);
    e.fails_with(
        &["sign", "--key", &k, "--algorithm", "ECDSA_SHA_256"],
        b"x",
        INVALID_STATE,
    );
}

#[test]
fn rsa_oaep_interoperates_with_openssl_both_ways() {
    let e = Env::new();
    let k = e.create_key(&["--spec", "RSA_2048"]);
    let d = e.json(&["key", "describe", &k]);
    assert_eq!(d["KeyMetadata"]["KeyUsage"], "ENCRYPT_DECRYPT");
    assert_eq!(
        d["KeyMetadata"]["EncryptionAlgorithms"],
        serde_json::json!(["RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256"])
    );
    let pem = export_pem(&e, &k, "rsa.pem");
    let plain = e.path("plain");
    std::fs::write(&plain, b"a secret for the KMS").unwrap();
    let plain = plain.to_str().unwrap();
    for (alg, md) in [
        ("RSAES_OAEP_SHA_256", "sha256"),
        ("RSAES_OAEP_SHA_1", "sha1"),
    ] {
        // openssl encrypts to the exported public key; kmsfs decrypts.
        let ct = e.path(&format!("ct-{md}"));
        let ct = ct.to_str().unwrap();
        let mdopt = format!("rsa_oaep_md:{md}");
        let mgfopt = format!("rsa_mgf1_md:{md}");
        openssl(&[
            "pkeyutl",
            "-encrypt",
            "-pubin",
            "-inkey",
            &pem,
            "-in",
            plain,
            "-out",
            ct,
            "-pkeyopt",
            "rsa_padding_mode:oaep",
            "-pkeyopt",
            &mdopt,
            "-pkeyopt",
            &mgfopt,
        ]);
        let out = e.ok_with(
            &["decrypt", "--key", &k, "--algorithm", alg, "--in", ct],
            b"",
        );
        assert_eq!(out, b"a secret for the KMS");
        // The other OAEP hash does not decrypt it, and says nothing more.
        let other = if md == "sha1" {
            "RSAES_OAEP_SHA_256"
        } else {
            "RSAES_OAEP_SHA_1"
        };
        e.fails(
            &["decrypt", "--key", &k, "--algorithm", other, "--in", ct],
            INVALID_CIPHERTEXT,
        );
        // kmsfs encrypts; the ciphertext is raw RSA (256 bytes), and kmsfs decrypts it again.
        let mine = e.ok_with(&["encrypt", "--key", &k, "--algorithm", alg], b"round trip");
        assert_eq!(mine.len(), 256);
        assert_eq!(
            e.ok_with(&["decrypt", "--key", &k, "--algorithm", alg], &mine),
            b"round trip"
        );
    }
    // AWS's limits: RSA_2048 with OAEP SHA-256 takes at most 190 bytes, SHA-1 214.
    e.ok_with(
        &["encrypt", "--key", &k, "--algorithm", "RSAES_OAEP_SHA_256"],
        &[1u8; 190],
    );
    e.fails_with(
        &["encrypt", "--key", &k, "--algorithm", "RSAES_OAEP_SHA_256"],
        &[1u8; 191],
        VALIDATION,
    );
    e.ok_with(
        &["encrypt", "--key", &k, "--algorithm", "RSAES_OAEP_SHA_1"],
        &[1u8; 214],
    );
    e.fails_with(
        &["encrypt", "--key", &k, "--algorithm", "RSAES_OAEP_SHA_1"],
        &[1u8; 215],
        VALIDATION,
    );
    // The larger moduli: exactly AWS's limits pass, one byte more is refused, and the
    // ciphertext is the modulus length.
    for (spec, len, sha1, sha256) in [("RSA_3072", 384, 342, 318), ("RSA_4096", 512, 470, 446)] {
        let big = e.create_key(&["--spec", spec, "--usage", "ENCRYPT_DECRYPT"]);
        for (alg, limit) in [("RSAES_OAEP_SHA_1", sha1), ("RSAES_OAEP_SHA_256", sha256)] {
            let msg = vec![9u8; limit];
            let ct = e.ok_with(&["encrypt", "--key", &big, "--algorithm", alg], &msg);
            assert_eq!(ct.len(), len, "{spec} {alg}");
            let back = e.ok_with(&["decrypt", "--key", &big, "--algorithm", alg], &ct);
            assert_eq!(back, msg, "{spec} {alg}");
            e.fails_with(
                &["encrypt", "--key", &big, "--algorithm", alg],
                &vec![9u8; limit + 1],
                VALIDATION,
            );
        }
    }
    // An RSA key takes no encryption context and no SYMMETRIC_DEFAULT; a symmetric key takes
    // no RSA algorithm; generate-data-key needs a symmetric key.
    e.fails_with(
        &[
            "encrypt",
            "--key",
            &k,
            "--algorithm",
            "RSAES_OAEP_SHA_256",
            "--context",
            "a=b",
        ],
        b"x",
        VALIDATION,
    );
    e.fails_with(&["encrypt", "--key", &k], b"x", INVALID_KEY_USAGE);
    let sym = e.create_key(&[]);
    e.fails_with(
        &[
            "encrypt",
            "--key",
            &sym,
            "--algorithm",
            "RSAES_OAEP_SHA_256",
        ],
        b"x",
        INVALID_KEY_USAGE,
    );
    e.fails(&["generate-data-key", "--key", &k], INVALID_KEY_USAGE);
    e.fails(&["get-public-key", &sym], UNSUPPORTED);
    // ReEncrypt from RSA ciphertext to a symmetric blob, and from a blob to RSA.
    let ct = e.ok_with(
        &["encrypt", "--key", &k, "--algorithm", "RSAES_OAEP_SHA_1"],
        b"moved",
    );
    let ctf = e.path("ct-move");
    std::fs::write(&ctf, &ct).unwrap();
    let ctf = ctf.to_str().unwrap();
    let blob = e.ok(&[
        "re-encrypt",
        "--to",
        &sym,
        "--source-key",
        &k,
        "--source-algorithm",
        "RSAES_OAEP_SHA_1",
        "--in",
        ctf,
        "--base64",
    ]);
    let blob = b64(blob.trim());
    assert_eq!(e.decrypt(&blob, &[]), b"moved");
    let bf = e.path("blob");
    std::fs::write(&bf, &blob).unwrap();
    let back = e.ok_with(
        &[
            "re-encrypt",
            "--to",
            &k,
            "--to-algorithm",
            "RSAES_OAEP_SHA_256",
            "--in",
            bf.to_str().unwrap(),
        ],
        b"",
    );
    assert_eq!(
        e.ok_with(
            &["decrypt", "--key", &k, "--algorithm", "RSAES_OAEP_SHA_256"],
            &back
        ),
        b"moved"
    );
}

#[test]
fn hmac_keys_generate_and_verify_macs() {
    let e = Env::new();
    let k = e.create_key(&["--spec", "HMAC_256"]);
    let d = e.json(&["key", "describe", &k]);
    assert_eq!(d["KeyMetadata"]["KeyUsage"], "GENERATE_VERIFY_MAC");
    assert_eq!(
        d["KeyMetadata"]["MacAlgorithms"],
        serde_json::json!(["HMAC_SHA_256"])
    );
    let mac = e.ok_with(
        &["generate-mac", "--key", &k, "--algorithm", "HMAC_SHA_256"],
        b"token",
    );
    assert_eq!(mac.len(), 32);
    // HMAC is deterministic: the same message gives the same MAC.
    let again = e.ok_with(
        &["generate-mac", "--key", &k, "--algorithm", "HMAC_SHA_256"],
        b"token",
    );
    assert_eq!(mac, again);
    let mf = e.path("mac");
    std::fs::write(&mf, &mac).unwrap();
    let mf = mf.to_str().unwrap();
    let ok = e.ok_with(
        &[
            "verify-mac",
            "--key",
            &k,
            "--algorithm",
            "HMAC_SHA_256",
            "--mac",
            mf,
        ],
        b"token",
    );
    assert_eq!(String::from_utf8_lossy(&ok).trim(), "MAC valid");
    e.fails_with(
        &[
            "verify-mac",
            "--key",
            &k,
            "--algorithm",
            "HMAC_SHA_256",
            "--mac",
            mf,
        ],
        b"tokem",
        INVALID_MAC,
    );
    let mut bad = mac.clone();
    bad[0] ^= 1;
    std::fs::write(e.path("bad"), &bad).unwrap();
    e.fails_with(
        &[
            "verify-mac",
            "--key",
            &k,
            "--algorithm",
            "HMAC_SHA_256",
            "--mac",
            e.path("bad").to_str().unwrap(),
        ],
        b"token",
        INVALID_MAC,
    );
    // Empty and over-long messages, the wrong algorithm, and non-MAC operations are refused.
    e.fails_with(
        &["generate-mac", "--key", &k, "--algorithm", "HMAC_SHA_256"],
        b"",
        VALIDATION,
    );
    e.fails_with(
        &["generate-mac", "--key", &k, "--algorithm", "HMAC_SHA_256"],
        &[0u8; 4097],
        VALIDATION,
    );
    e.fails_with(
        &["generate-mac", "--key", &k, "--algorithm", "HMAC_SHA_512"],
        b"x",
        INVALID_KEY_USAGE,
    );
    e.fails_with(&["encrypt", "--key", &k], b"x", INVALID_KEY_USAGE);
    e.fails(&["key", "rotate", &k], UNSUPPORTED);
    let sym = e.create_key(&[]);
    e.fails_with(
        &["generate-mac", "--key", &sym, "--algorithm", "HMAC_SHA_256"],
        b"x",
        INVALID_KEY_USAGE,
    );
    // Wrong spec/usage pairs are refused at creation.
    e.fails(
        &[
            "key",
            "create",
            "--spec",
            "HMAC_256",
            "--usage",
            "ENCRYPT_DECRYPT",
        ],
        VALIDATION,
    );
    e.fails(
        &[
            "key",
            "create",
            "--spec",
            "ECC_NIST_P256",
            "--usage",
            "ENCRYPT_DECRYPT",
        ],
        VALIDATION,
    );
    e.fails(
        &[
            "key", "create", "--spec", "RSA_2048", "--origin", "external",
        ],
        UNSUPPORTED,
    );
    let big = e.create_key(&["--spec", "HMAC_512"]);
    let m = e.ok_with(
        &["generate-mac", "--key", &big, "--algorithm", "HMAC_SHA_512"],
        b"x",
    );
    assert_eq!(m.len(), 64);
}

#[test]
fn data_key_pairs_work_with_openssl() {
    let e = Env::new();
    let k = e.create_key(&[]);
    for (spec, bits) in [("ECC_NIST_P384", "384"), ("RSA_2048", "2048")] {
        let kp = e.json(&[
            "generate-data-key-pair",
            "--key",
            &k,
            "--spec",
            spec,
            "--context",
            "app=x",
        ]);
        assert_eq!(kp["KeyPairSpec"], spec);
        let private = b64(kp["PrivateKeyPlaintext"].as_str().unwrap());
        let public = b64(kp["PublicKey"].as_str().unwrap());
        // The encrypted private key decrypts (with the context) to the plaintext one.
        let blob = b64(kp["PrivateKeyCiphertextBlob"].as_str().unwrap());
        assert_eq!(e.decrypt(&blob, &["app=x"]), private);
        // openssl reads the PKCS#8 private key, and its public half is the one returned.
        let der = e.path(&format!("{spec}.der"));
        std::fs::write(&der, &private).unwrap();
        let text = openssl(&[
            "pkey",
            "-inform",
            "DER",
            "-in",
            der.to_str().unwrap(),
            "-noout",
            "-text",
        ]);
        assert!(
            String::from_utf8_lossy(&text.stdout).contains(bits),
            "{spec}"
        );
        let pubout = openssl(&[
            "pkey",
            "-inform",
            "DER",
            "-in",
            der.to_str().unwrap(),
            "-pubout",
            "-outform",
            "DER",
        ]);
        assert_eq!(pubout.stdout, public, "{spec}");
        let wp = e.json(&[
            "generate-data-key-pair",
            "--key",
            &k,
            "--spec",
            spec,
            "--without-plaintext",
        ]);
        assert!(wp.get("PrivateKeyPlaintext").is_none());
    }
    let signer = e.create_key(&["--spec", "ECC_NIST_P256"]);
    e.fails(
        &[
            "generate-data-key-pair",
            "--key",
            &signer,
            "--spec",
            "ECC_NIST_P256",
        ],
        INVALID_KEY_USAGE,
    );
    e.fails(
        &["generate-data-key-pair", "--key", &k, "--spec", "RSA_1024"],
        2,
    );
    // Every use is in the audit log, by name.
    let ops: Vec<String> = e
        .audit_lines()
        .iter()
        .map(|l| l["operation"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(ops.iter().any(|o| o == "GenerateDataKeyPair"), "{ops:?}");
    assert!(
        ops.iter()
            .any(|o| o == "GenerateDataKeyPairWithoutPlaintext"),
        "{ops:?}"
    );
}
