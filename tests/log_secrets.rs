//! No plaintext and no key material in any log line: a full workload (KMS commands, a mount with
//! every kind of entry, lifecycle operations, damage, fsck) runs at the most verbose log level,
//! and every log it produced (the daemon's log file, the commands' standard error, the audit
//! log) is searched for the plaintext markers and key bytes it used, raw, in hex and in base64.

mod common;
use base64::Engine;
use common::*;
use std::fs;

const MARKER: &str = "PLAINTEXT-MARKER-7d1e";

/// The forms a secret could take in a text log.
fn forms(secret: &[u8]) -> Vec<Vec<u8>> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    vec![
        secret.to_vec(),
        hex::encode(secret).into_bytes(),
        hex::encode_upper(secret).into_bytes(),
        b64.encode(secret).into_bytes(),
        url.encode(secret).into_bytes(),
        format!("{secret:?}").into_bytes(),
    ]
}

#[test]
fn logs_never_hold_plaintext_or_key_material() {
    let m = Mounted::with_args(&[]);
    m.unmount();
    let mut stderr_all: Vec<u8> = Vec::new();
    let run = |args: &[&str], stdin: &[u8], sink: &mut Vec<u8>| -> Vec<u8> {
        let mut c = m.env.command(args);
        c.env("RUST_LOG", "trace");
        let out = feed(c, stdin);
        sink.extend_from_slice(&out.stderr);
        assert!(
            out.status.success(),
            "kmsfs {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    // Key material we choose, imported into an external key.
    let material: Vec<u8> = (0..32u8)
        .map(|i| i.wrapping_mul(37).wrapping_add(11))
        .collect();
    let mat_file = m.env.path("material.bin");
    fs::write(&mat_file, &material).unwrap();
    let imported = String::from_utf8(run(
        &["key", "create", "--origin", "external", "--alias", "imp"],
        b"",
        &mut stderr_all,
    ))
    .unwrap()
    .trim()
    .to_string();
    run(
        &[
            "key",
            "import",
            &imported,
            "--material-file",
            mat_file.to_str().unwrap(),
        ],
        b"",
        &mut stderr_all,
    );
    // A data key handed out in plaintext.
    let dk: serde_json::Value = serde_json::from_slice(&run(
        &["generate-data-key", "--key", "alias/fs"],
        b"",
        &mut stderr_all,
    ))
    .unwrap();
    let data_key = base64::engine::general_purpose::STANDARD
        .decode(dk["Plaintext"].as_str().unwrap())
        .unwrap();
    let blob = run(
        &["encrypt", "--key", "alias/imp", "--context", "k=v"],
        MARKER.as_bytes(),
        &mut stderr_all,
    );
    assert_eq!(
        run(&["decrypt", "--context", "k=v"], &blob, &mut stderr_all),
        MARKER.as_bytes()
    );
    // The daemon at trace level.
    let mut c = m.env.command(&[
        "mount",
        m.cipher.to_str().unwrap(),
        m.mnt.to_str().unwrap(),
        "--log-file",
        m.log.to_str().unwrap(),
    ]);
    c.env("RUST_LOG", "trace");
    assert!(feed(c, b"").status.success());
    let name = format!("{MARKER}-name.txt");
    let content = format!("{MARKER} content ").repeat(500);
    fs::create_dir(m.p(&format!("{MARKER}-dir"))).unwrap();
    fs::write(m.p(&format!("{MARKER}-dir/{name}")), &content).unwrap();
    fs::write(m.p("plain"), &content).unwrap();
    std::os::unix::fs::symlink(format!("/target/{MARKER}"), m.p("link")).unwrap();
    set_xattr(
        &m.p("plain"),
        "user.note",
        format!("{MARKER} xattr value").as_bytes(),
    )
    .unwrap();
    fs::rename(m.p("plain"), m.p(&format!("{MARKER}-renamed"))).unwrap();
    assert_eq!(
        fs::read_to_string(m.p(&format!("{MARKER}-dir/{name}"))).unwrap(),
        content
    );
    assert!(fs::read_dir(m.p("")).unwrap().count() >= 3);
    let mnt = m.mnt.to_str().unwrap();
    run(
        &["set-key", &format!("{mnt}/{MARKER}-dir"), "alias/imp"],
        b"",
        &mut stderr_all,
    );
    fs::write(m.p(&format!("{MARKER}-dir/under-imp")), &content).unwrap();
    run(&["key", "rotate", "alias/fs"], b"", &mut stderr_all);
    run(&["rewrap", "-q", mnt], b"", &mut stderr_all);
    // A rewrap that fails for every entry logs each failure in the daemon; the command's own
    // report names the plaintext paths, as it should, on its standard error (not kept here).
    let out = m
        .env
        .run(&["rewrap", "-q", mnt, "--to", "alias/no-such-key"]);
    assert!(!out.status.success());
    run(&["reencrypt", "-q", mnt], b"", &mut stderr_all);
    run(&["key", "disable", "alias/imp"], b"", &mut stderr_all);
    std::thread::sleep(std::time::Duration::from_millis(600));
    assert!(fs::read(m.p(&format!("{MARKER}-dir/under-imp"))).is_err());
    run(&["key", "enable", "alias/imp"], b"", &mut stderr_all);
    run(&["status"], b"", &mut stderr_all);
    m.unmount();
    // Damage, so the error paths log too.
    let victim = m
        .cipher_files()
        .into_iter()
        .max_by_key(|p| fs::metadata(p).unwrap().len())
        .unwrap();
    let mut d = fs::read(&victim).unwrap();
    let n = d.len();
    d[n - 100] ^= 1;
    fs::write(&victim, d).unwrap();
    let out = feed(
        {
            let mut c = m.env.command(&["fsck", m.cipher.to_str().unwrap()]);
            c.env("RUST_LOG", "trace");
            c
        },
        b"",
    );
    // Its report on standard output names plaintext paths, as it should; its log must not.
    stderr_all.extend_from_slice(&out.stderr);
    assert!(!out.status.success(), "fsck missed the damage");
    m.mount(&[]);
    // Reading the damaged file fails and logs.
    let failed = [
        format!("{MARKER}-renamed"),
        format!("{MARKER}-dir/{name}"),
        format!("{MARKER}-dir/under-imp"),
    ]
    .iter()
    .filter(|p| fs::read(m.p(p)).is_err())
    .count();
    assert_eq!(failed, 1, "the damaged file reads with EIO");
    m.unmount();

    let daemon_log = fs::read(&m.log).unwrap();
    let text = String::from_utf8_lossy(&daemon_log);
    assert!(
        text.contains("DEBUG")
            && text.contains("failed authentication")
            && text.contains("not re-wrapped"),
        "the daemon did not log its debug and error paths: {text}"
    );
    let audit = fs::read(m.env.store.join("audit.log")).unwrap();
    let root_key = fs::read(&m.env.root_key).unwrap();
    let secrets: Vec<(&str, Vec<u8>)> = vec![
        ("plaintext marker", MARKER.as_bytes().to_vec()),
        ("imported key material", material),
        ("data key", data_key),
        ("root key", root_key),
    ];
    for (log_name, log) in [
        ("daemon log", &daemon_log),
        ("command stderr", &stderr_all),
        ("audit log", &audit),
    ] {
        for (what, secret) in &secrets {
            for form in forms(secret) {
                if let Some(at) = log.windows(form.len()).position(|w| w == form.as_slice()) {
                    let line = log[..at]
                        .iter()
                        .rposition(|b| *b == b'\n')
                        .map_or(0, |i| i + 1);
                    let end = log[at..]
                        .iter()
                        .position(|b| *b == b'\n')
                        .map_or(log.len(), |i| at + i);
                    panic!(
                        "{what} found in the {log_name} as {:?}: {}",
                        String::from_utf8_lossy(&form),
                        String::from_utf8_lossy(&log[line..end])
                    );
                }
            }
        }
    }
}
