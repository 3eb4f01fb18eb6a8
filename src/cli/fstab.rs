//! The mount(8) helper convention: `mount -t fuse.kmsfs CIPHERDIR MOUNTPOINT -o OPTS` runs
//! `mount.fuse3`, which runs `kmsfs CIPHERDIR MOUNTPOINT -o OPTS`; `/sbin/mount.fuse.kmsfs`
//! (a link to kmsfs) is called as `mount.fuse.kmsfs CIPHERDIR MOUNTPOINT [-sfnv] [-o OPTS]`.
//! Both are rewritten here into the `kmsfs mount` command line.

use std::ffi::OsString;

/// Options mount(8) and fstab use that mean nothing to the daemon. kmsfs mounts are always
/// nosuid,nodev, so `suid`/`dev` (which mount.fuse3 adds to every call) change nothing, and
/// `exec` is the default; `noexec` is passed on (see `translate`).
const IGNORED: &[&str] = &[
    "rw",
    "defaults",
    "auto",
    "noauto",
    "user",
    "nouser",
    "users",
    "owner",
    "group",
    "_netdev",
    "nofail",
    "exec",
    "nosuid",
    "nodev",
    "suid",
    "dev",
    "atime",
    "noatime",
    "relatime",
    "norelatime",
    "strictatime",
    "nodiratime",
    "diratime",
    "sync",
    "async",
    "lazytime",
    "nolazytime",
    "silent",
    "loud",
];

/// Whether `argv` is a mount(8)-style call: run as `mount.kmsfs`/`mount.fuse.kmsfs`, or with a
/// first argument that is not a subcommand or a flag.
pub fn is_helper_call(argv: &[OsString], subcommands: &[String]) -> bool {
    let prog = argv
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .and_then(|n| n.to_str())
        .unwrap_or("");
    if prog.starts_with("mount.") {
        return true;
    }
    match argv.get(1).and_then(|a| a.to_str()) {
        Some(first) => {
            argv.len() >= 3 && !first.starts_with('-') && !subcommands.iter().any(|s| s == first)
        }
        None => false,
    }
}

/// The `kmsfs ... mount ...` arguments for a mount(8)-style call, or what is wrong with it.
/// `Ok(None)` for `-f` (mount(8)'s "fake": do everything but mount).
pub fn translate(argv: &[OsString]) -> Result<Option<Vec<OsString>>, String> {
    let mut positional = Vec::new();
    let mut opts: Vec<String> = Vec::new();
    let mut fake = false;
    let mut it = argv.iter().skip(1);
    while let Some(a) = it.next() {
        match a.to_str() {
            Some("-o") => {
                let o = it.next().ok_or("-o needs a value")?;
                let o = o.to_str().ok_or("mount options must be UTF-8")?;
                opts.extend(o.split(',').filter(|s| !s.is_empty()).map(String::from));
            }
            Some("-t") => {
                it.next();
            }
            Some(s) if s.starts_with("-o") && s.len() > 2 => {
                opts.extend(
                    s[2..]
                        .split(',')
                        .filter(|s| !s.is_empty())
                        .map(String::from),
                );
            }
            Some(s) if s.starts_with('-') && s.len() > 1 && !s.starts_with("--") => {
                // mount(8) helper flags: -s sloppy, -n no mtab, -v verbose, -f fake.
                for c in s[1..].chars() {
                    match c {
                        'f' => fake = true,
                        's' | 'n' | 'v' => {}
                        _ => return Err(format!("unknown flag -{c}")),
                    }
                }
            }
            _ => positional.push(a.clone()),
        }
    }
    let [source, mountpoint] = <[OsString; 2]>::try_from(positional)
        .map_err(|_| "usage: mount.fuse.kmsfs CIPHERDIR MOUNTPOINT [-o OPTIONS]".to_string())?;
    let mut global: Vec<OsString> = vec!["kmsfs".into()];
    let mut mount: Vec<OsString> = vec!["mount".into(), source, mountpoint];
    for o in opts {
        let (k, v) = match o.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (o.as_str(), None),
        };
        let value = |name: &str| {
            v.filter(|v| !v.is_empty())
                .map(OsString::from)
                .ok_or(format!("option {name} needs a value ({name}=...)"))
        };
        match k {
            "ro" => mount.push("--read-only".into()),
            "noexec" => mount.push("--noexec".into()),
            "default_permissions" => mount.push("--default-permissions".into()),

            "allow_other" => mount.push("--allow-other".into()),
            "keystore" => global.extend(["--keystore".into(), value(k)?]),
            "key" | "keyfile" | "root_key_file" => {
                global.extend(["--root-key-file".into(), value(k)?])
            }
            "passfile" | "passphrase_file" => {
                global.extend(["--passphrase-file".into(), value(k)?])
            }
            "config" => global.extend(["--config".into(), value(k)?]),
            "idle" => mount.extend(["--idle".into(), value(k)?]),
            "threads" => mount.extend(["--threads".into(), value(k)?]),
            "readahead_kib" => mount.extend(["--readahead-kib".into(), value(k)?]),
            "io_uring" => mount.extend(["--io-uring".into(), value(k)?]),
            "audit_sync" => mount.extend(["--audit-sync".into(), value(k)?]),
            "data_key_cache" => mount.extend(["--data-key-cache".into(), value(k)?]),
            "direct_writes" => mount.extend(["--direct-writes".into(), value(k)?]),
            "keep_cache" => mount.extend(["--keep-cache".into(), value(k)?]),
            "log_file" => mount.extend(["--log-file".into(), value(k)?]),
            "foreground" => mount.push("--foreground".into()),
            k if IGNORED.contains(&k) || k.starts_with("x-") || k == "comment" => {}
            _ => {
                return Err(format!(
                    "unknown mount option {o:?} (see `kmsfs mount --help`)"
                ));
            }
        }
    }
    if fake {
        return Ok(None);
    }
    global.extend(mount);
    Ok(Some(global))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(a: &[&str]) -> Vec<OsString> {
        a.iter().map(OsString::from).collect()
    }

    #[test]
    fn helper_calls_are_recognized() {
        let subs = vec!["mount".to_string(), "key".to_string()];
        assert!(is_helper_call(
            &v(&["/sbin/mount.fuse.kmsfs", "a", "b"]),
            &subs
        ));
        assert!(is_helper_call(
            &v(&["kmsfs", "/c", "/m", "-o", "ro"]),
            &subs
        ));
        assert!(!is_helper_call(&v(&["kmsfs", "mount", "/c", "/m"]), &subs));
        assert!(!is_helper_call(
            &v(&["kmsfs", "--keystore", "s", "key"]),
            &subs
        ));
        assert!(!is_helper_call(&v(&["kmsfs", "key"]), &subs));
    }

    #[test]
    fn fstab_options_become_flags() {
        let got = translate(&v(&[
            "mount.fuse.kmsfs",
            "/c",
            "/m",
            "-n",
            "-o",
            "rw,noauto,ro,noexec,allow_other,keystore=/s,key=/k,idle=15m,io_uring=off,direct_writes=off,x-systemd.automount,_netdev",
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(
            got,
            v(&[
                "kmsfs",
                "--keystore",
                "/s",
                "--root-key-file",
                "/k",
                "mount",
                "/c",
                "/m",
                "--read-only",
                "--noexec",
                "--allow-other",
                "--idle",
                "15m",
                "--io-uring",
                "off",
                "--direct-writes",
                "off"
            ])
        );
    }

    #[test]
    fn bad_calls_say_why() {
        assert!(
            translate(&v(&["kmsfs", "/c"]))
                .unwrap_err()
                .contains("usage")
        );
        assert!(
            translate(&v(&["kmsfs", "/c", "/m", "-o", "bogus"]))
                .unwrap_err()
                .contains("bogus")
        );
        assert!(
            translate(&v(&["kmsfs", "/c", "/m", "-o", "keystore="]))
                .unwrap_err()
                .contains("needs a value")
        );
        assert_eq!(translate(&v(&["kmsfs", "/c", "/m", "-f"])), Ok(None));
        let with_suid = translate(&v(&["kmsfs", "/c", "/m", "-o", "suid,dev"])).unwrap();
        assert!(
            with_suid.unwrap().iter().all(|a| a != "--suid"),
            "always nosuid"
        );
    }
}
