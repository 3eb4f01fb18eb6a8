//! Several local users: a non-root user runs its own key store and mount (through the setuid
//! fusermount3), and a root mount with --allow-other serves other users under normal permissions.

mod common;
use common::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

const USER: u32 = 4242;
const DENIED: u32 = 4243;

fn as_user(uid: u32, script: &str, envs: &[(&str, &std::path::Path)]) -> std::process::Output {
    let mut c = Command::new("setpriv");
    c.args([
        "--reuid",
        &uid.to_string(),
        "--regid",
        &uid.to_string(),
        "--clear-groups",
        "sh",
        "-c",
        script,
    ])
    .env_clear()
    .env("PATH", std::env::var_os("PATH").unwrap_or_default())
    .env("KMSFS", BIN);
    for (k, v) in envs {
        c.env(k, v);
    }
    c.output().unwrap()
}

/// Gives the mount's CMK a policy of root (everything) plus `statements`, and lets other users
/// reach the mount's parent directory.
fn open_to_users(m: &Mounted, statements: &str) {
    let policy = m.env.path("policy.json");
    fs::write(
        &policy,
        format!(
            r#"{{"Version":"2012-10-17","Statement":[
            {{"Sid":"admin","Effect":"Allow","Principal":{{"Local":"uid:0"}},"Action":"kms:*","Resource":"*"}},
            {statements}]}}"#
        ),
    )
    .unwrap();
    m.env.ok(&[
        "key",
        "policy",
        "put",
        "alias/fs",
        "--file",
        policy.to_str().unwrap(),
    ]);
    fs::set_permissions(m.env.tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
}

/// Non-root users open /dev/fuse as on any desktop system (mode 0666, as udev sets it).
fn fuse_device_for_users() {
    let _ = fs::set_permissions("/dev/fuse", fs::Permissions::from_mode(0o666));
}

#[test]
fn ordinary_user_inits_mounts_and_unmounts_their_own_directory() {
    fuse_device_for_users();
    ensure_user(USER, "kmsfstest1");
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    fs::create_dir(&home).unwrap();
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::chown(&home, Some(USER), Some(USER)).unwrap();
    let mnt = home.join("mnt");
    struct Guard(std::path::PathBuf);
    impl Drop for Guard {
        fn drop(&mut self) {
            if is_mounted(&self.0) {
                let _ = Command::new("fusermount3").arg("-uz").arg(&self.0).status();
            }
        }
    }
    let _guard = Guard(mnt.clone());
    let out = as_user(
        USER,
        r#"set -e
        cd "$HOME"
        head -c 32 /dev/urandom > root.key
        export KMSFS_ROOT_KEY_FILE="$HOME/root.key" KMSFS_KEYSTORE="$HOME/ks"
        "$KMSFS" keystore init
        "$KMSFS" key create --alias mine >/dev/null
        "$KMSFS" init cipher --key alias/mine
        mkdir mnt
        "$KMSFS" mount cipher mnt
        echo "user data" > mnt/file
        test "$(cat mnt/file)" = "user data"
        ls -ln mnt
        "$KMSFS" umount mnt
        test ! -e mnt/file
        "$KMSFS" mount cipher mnt
        cat mnt/file
        "$KMSFS" umount mnt
        "#,
        &[("HOME", &home)],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!(" {USER} {USER} ")),
        "the user's files are theirs: {stdout}"
    );
    assert!(stdout.trim_end().ends_with("user data"), "{stdout}");
    assert!(!is_mounted(&mnt));
}

#[test]
fn allow_other_serves_other_users_under_normal_permissions() {
    ensure_user(USER, "kmsfstest1");
    ensure_user(DENIED, "kmsfstest2");
    let m = Mounted::with_args(&["--allow-other"]);
    // The key policy decides who may use the files' keys: USER may; DENIED is allowed by uid but
    // its group is denied, and the Deny wins.
    open_to_users(
        &m,
        &format!(
            r#"{{"Sid":"users","Effect":"Allow","Principal":{{"Local":["uid:{USER}","uid:{DENIED}"]}},"Action":["kms:Decrypt","kms:GenerateDataKey*"],"Resource":"*"}},
            {{"Sid":"no-group","Effect":"Deny","Principal":{{"Local":"group:kmsfstest2"}},"Action":"kms:*","Resource":"*"}}"#
        ),
    );
    fs::set_permissions(&m.mnt, fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(m.p("public"), b"for everyone").unwrap();
    fs::set_permissions(m.p("public"), fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(m.p("private"), b"root only").unwrap();
    fs::set_permissions(m.p("private"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::create_dir(m.p("drop")).unwrap();
    fs::set_permissions(m.p("drop"), fs::Permissions::from_mode(0o777)).unwrap();
    let mp = m.mnt.clone();
    let out = as_user(USER, r#"cat "$M/public""#, &[("M", &mp)]);
    assert_eq!(
        out.stdout,
        b"for everyone",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = as_user(USER, r#"cat "$M/private""#, &[("M", &mp)]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Permission denied"));
    let out = as_user(
        USER,
        r#"echo mine > "$M/drop/new" && stat -c '%u %g' "$M/drop/new""#,
        &[("M", &mp)],
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("{USER} {USER}"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = as_user(USER, r#"echo x > "$M/public""#, &[("M", &mp)]);
    assert!(
        !out.status.success(),
        "no write to another user's 0644 file"
    );
    assert_eq!(fs::read(m.p("drop/new")).unwrap(), b"mine\n");
    // Mode bits let DENIED read "public", the key policy does not: EACCES for that user only,
    // and an audit line naming them.
    let out = as_user(DENIED, r#"cat "$M/public""#, &[("M", &mp)]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Permission denied"));
    let out = as_user(USER, r#"cat "$M/public""#, &[("M", &mp)]);
    assert_eq!(out.stdout, b"for everyone");
    assert!(
        m.env
            .audit_lines()
            .iter()
            .any(|l| l["result"] == "AccessDeniedException" && l["caller"]["uid"] == DENIED)
    );

    // Without --allow-other, other users cannot even look.
    m.unmount();
    m.mount(&[]);
    let out = as_user(USER, r#"ls "$M""#, &[("M", &mp)]);
    assert!(!out.status.success());
}

/// A write or truncate by an unprivileged user clears set-user-id (and set-group-id where group
/// execution is allowed), as on a local filesystem; root's writes keep them. The daemon does it
/// (the kernel leaves it to the filesystem that says it handles it, FUSE_HANDLE_KILLPRIV_V2).
#[test]
fn unprivileged_writes_clear_set_id_bits() {
    ensure_user(USER, "kmsfstest1");
    let m = Mounted::with_args(&["--allow-other"]);
    open_to_users(
        &m,
        &format!(
            r#"{{"Sid":"user","Effect":"Allow","Principal":{{"Local":"uid:{USER}"}},"Action":["kms:Decrypt","kms:GenerateDataKey*"],"Resource":"*"}}"#
        ),
    );
    let mode = |p: &str| fs::metadata(m.p(p)).unwrap().permissions().mode() & 0o7777;
    // USER runs `cmd` on `name`; once the kernel's cached attributes expire, its mode is `want`.
    let by_user = |cmd: &str, name: &str, want: u32, what: &str| {
        let out = as_user(USER, &format!("{cmd} '{}'", m.p(name).display()), &[]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(std::time::Duration::from_millis(1100));
        assert_eq!(mode(name), want, "{what}");
    };
    for (name, start, after) in [
        ("suid", 0o4777, 0o777),
        ("sgid", 0o6777, 0o777),
        ("sgid-noexec", 0o2767, 0o2767),
    ] {
        fs::write(m.p(name), b"root wrote this").unwrap();
        fs::set_permissions(m.p(name), fs::Permissions::from_mode(start)).unwrap();
        std::io::Write::write_all(
            &mut fs::OpenOptions::new().append(true).open(m.p(name)).unwrap(),
            b" and root",
        )
        .unwrap();
        assert_eq!(mode(name), start, "{name}: root's write keeps the bits");
        by_user("printf more >>", name, after, name);
    }
    fs::set_permissions(m.p("suid"), fs::Permissions::from_mode(0o4777)).unwrap();
    by_user("truncate -s 3", "suid", 0o777, "truncate by a user");
}

/// A user's `kmsfs rewrap` of a shared mount re-wraps what that user may write and names the
/// rest: a batch is asked for on the directory, so the daemon checks each entry as the kernel
/// checks one file.
#[test]
fn a_users_rewrap_touches_only_what_they_may_write() {
    ensure_user(USER, "kmsfstest1");
    let m = Mounted::with_args(&["--allow-other"]);
    open_to_users(
        &m,
        &format!(
            r#"{{"Sid":"user","Effect":"Allow","Principal":{{"Local":"uid:{USER}"}},"Action":"kms:*","Resource":"*"}}"#
        ),
    );
    fs::set_permissions(&m.mnt, fs::Permissions::from_mode(0o755)).unwrap();
    fs::create_dir(m.p("shared")).unwrap();
    fs::set_permissions(m.p("shared"), fs::Permissions::from_mode(0o777)).unwrap();
    fs::write(m.p("shared/theirs"), b"root's").unwrap();
    let mp = m.mnt.clone();
    let out = as_user(USER, r#"echo mine > "$M/shared/mine""#, &[("M", &mp)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    m.env.ok(&["key", "rotate", "alias/fs"]);

    let out = as_user(USER, r#""$KMSFS" rewrap -q "$M""#, &[("M", &mp)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("shared/theirs: access denied"), "{err}");
    assert!(!err.contains("shared/mine"), "{err}");
    assert!(key_of(&m.p("shared/mine")).ends_with(":2"));
    assert!(
        key_of(&m.p("shared")).ends_with(":2"),
        "a 0777 directory's key"
    );
    assert!(key_of(&m.p("shared/theirs")).ends_with(":1"), "untouched");
    assert!(
        key_of(&m.mnt).ends_with(":1"),
        "root's directory: untouched"
    );
    assert_eq!(fs::read(m.p("shared/theirs")).unwrap(), b"root's");

    // A batch names entries of the directory it is set on: the caller must be able to look into
    // that directory (search), not only to write it.
    fs::create_dir(m.p("blind")).unwrap();
    fs::write(m.p("blind/open"), b"anyone may write").unwrap();
    fs::set_permissions(m.p("blind/open"), fs::Permissions::from_mode(0o666)).unwrap();
    m.env.ok(&["key", "rotate", "alias/fs"]);
    let batch = r#"python3 -c 'import os, sys; os.setxattr(sys.argv[1], "user.kmsfs.rewrap.entries", b"\0open")' "$M/blind""#;
    for (mode, ok) in [(0o772, false), (0o773, true)] {
        fs::set_permissions(m.p("blind"), fs::Permissions::from_mode(mode)).unwrap();
        let out = as_user(USER, batch, &[("M", &mp)]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.success(), ok, "{mode:o}: {err}");
        assert!(ok || err.contains("Permission denied"), "{err}");
        let want = if ok { ":3" } else { ":2" };
        assert!(key_of(&m.p("blind/open")).ends_with(want), "{mode:o}");
    }
}
