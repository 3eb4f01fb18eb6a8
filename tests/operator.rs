//! Running kmsfs the Linux way: mount(8) and fstab through the fuse.kmsfs helper convention,
//! the systemd unit's command with its readiness message, and idle unmounting.

mod common;
use common::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A prepared but unmounted cipher directory.
fn unmounted() -> Mounted {
    let m = Mounted::new();
    fs::write(m.p("hello.txt"), b"from fstab").unwrap();
    m.unmount();
    m
}

/// A directory holding `name` as a link to the kmsfs binary, to put first on PATH.
fn bin_dir(m: &Mounted, name: &str) -> PathBuf {
    let dir = m.env.path("bin");
    fs::create_dir_all(&dir).unwrap();
    let link = dir.join(name);
    if !link.exists() {
        std::os::unix::fs::symlink(BIN, &link).unwrap();
    }
    dir
}

fn wait_unmounted(mnt: &Path, within: Duration) -> bool {
    let t = Instant::now();
    while t.elapsed() < within {
        if !is_mounted(mnt) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn options(m: &Mounted, extra: &str) -> String {
    format!(
        "keystore={},key={},log_file={}{extra}",
        m.env.store.display(),
        m.env.root_key.display(),
        m.log.display()
    )
}

fn run(c: &mut Command) -> String {
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{c:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Kills the daemons serving a cipher dir (their mounts live in a private mount namespace that
/// ends with them), also when the test failed.
struct KillDaemons<'a>(&'a Path);

impl Drop for KillDaemons<'_> {
    fn drop(&mut self) {
        while let Some(pid) = daemon_pid(self.0) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// mount(8) runs helpers with a fixed PATH, so this runs in a private mount namespace where
/// /usr/local/bin holds only this build's kmsfs (as scripts/install.sh puts it there). There:
/// an fstab line of type fuse.kmsfs (mount(8) -> mount.fuse3 -> `kmsfs CIPHERDIR MOUNTPOINT -o
/// OPTIONS`) with `noauto` (left alone by `mount -a`), `ro` and `allow_other`; then `mount -t
/// fuse.kmsfs` on the command line; `umount` for both.
#[test]
fn fstab_lines_and_mount_t_work_through_mount_and_mount_fuse3() {
    let m = unmounted();
    let _guard = KillDaemons(&m.cipher);
    let bin = bin_dir(&m, "kmsfs");
    let fstab = m.env.path("fstab");
    fs::write(
        &fstab,
        format!(
            "# test fstab\n{} {} fuse.kmsfs noauto,ro,{} 0 0\n",
            m.cipher.display(),
            m.mnt.display(),
            options(&m, ",allow_other")
        ),
    )
    .unwrap();
    let script = format!(
        r#"set -e
mount --bind {bin} /usr/local/bin
mount -a -T {fstab}
if mountpoint -q {mnt}; then echo "noauto ignored"; exit 1; fi
mount -T {fstab} {mnt}
echo "read: $(cat {mnt}/hello.txt)"
if echo x 2>/dev/null > {mnt}/new; then echo "ro ignored"; exit 1; fi
grep -F " {mnt} " /proc/self/mountinfo
umount {mnt}
mount -t fuse.kmsfs {cipher} {mnt} -o {opts}
echo written > {mnt}/rw
echo "rw: $(cat {mnt}/rw)"
umount {mnt}
"#,
        bin = bin.display(),
        fstab = fstab.display(),
        mnt = m.mnt.display(),
        cipher = m.cipher.display(),
        opts = options(&m, ""),
    );
    let out = run(Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(&script));
    assert!(out.contains("read: from fstab"), "{out}");
    assert!(out.contains("allow_other"), "{out}");
    assert!(out.contains("rw: written"), "{out}");
    m.mount(&[]);
    assert_eq!(fs::read(m.p("rw")).unwrap(), b"written\n");
    m.unmount();
}

/// The helper called by its mount(8) name (what /sbin/mount.fuse.kmsfs, a link to kmsfs,
/// receives, with mount(8)'s flags); a bad option is refused by name and nothing is mounted.
#[test]
fn the_mount_helper_name_works() {
    let m = unmounted();
    let helper = bin_dir(&m, "mount.fuse.kmsfs").join("mount.fuse.kmsfs");
    run(Command::new(&helper).arg(&m.cipher).arg(&m.mnt).args([
        "-n",
        "-o",
        &options(&m, ",rw,nodev,nosuid,_netdev"),
    ]));
    assert_eq!(fs::read(m.p("hello.txt")).unwrap(), b"from fstab");
    fs::write(m.p("rw"), b"writable").unwrap();
    m.unmount();
    let out = Command::new(&helper)
        .arg(&m.cipher)
        .arg(&m.mnt)
        .args(["-o", "bogus_option"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bogus_option"));
    assert!(!is_mounted(&m.mnt));
}

/// The ExecStart line of config/systemd/kmsfs@.service, run as systemd would (its environment
/// file, NOTIFY_SOCKET): READY=1 arrives once the mount is live; SIGTERM unmounts, with
/// STOPPING=1.
#[test]
fn the_systemd_unit_command_signals_readiness() {
    use std::os::unix::net::UnixDatagram;
    let m = unmounted();
    let unit = fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("config/systemd/kmsfs@.service"),
    )
    .unwrap();
    assert!(unit.contains("Type=notify"));
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .unwrap();
    let vars = [
        ("${CIPHERDIR}", m.cipher.to_str().unwrap().to_string()),
        ("${MOUNTPOINT}", m.mnt.to_str().unwrap().to_string()),
        ("$KMSFS_PASSPHRASE_FILE_OPT", String::new()),
        (
            "$KMSFS_MOUNT_OPTS",
            format!("--idle 1h --log-file {}", m.log.display()),
        ),
    ];
    let mut line = exec.to_string();
    for (k, v) in vars {
        line = line.replace(k, &v);
    }
    let mut words = line.split_whitespace();
    assert_eq!(words.next(), Some("/usr/local/bin/kmsfs"));
    let sock_path = m.env.path("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut child = m
        .env
        .command(&words.collect::<Vec<_>>())
        .env("NOTIFY_SOCKET", &sock_path)
        .spawn()
        .unwrap();
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).expect("READY=1 within 20 s");
    let msg = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(msg.contains("READY=1"), "{msg}");
    assert!(msg.contains(&format!("MAINPID={}", child.id())), "{msg}");
    assert!(is_mounted(&m.mnt), "READY=1 before the mount was live");
    assert_eq!(fs::read(m.p("hello.txt")).unwrap(), b"from fstab");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let n = sock.recv(&mut buf).expect("STOPPING=1");
    assert!(String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1"));
    assert!(child.wait().unwrap().success());
    assert!(wait_unmounted(&m.mnt, Duration::from_secs(5)));
}

/// SIGTERM while a process has its working directory inside: the unmount is refused (busy) and
/// the mount keeps serving; once that process is gone, the next SIGTERM unmounts.
#[test]
fn a_refused_unmount_is_tried_again_at_the_next_signal() {
    let m = unmounted();
    m.mount(&[]);
    let pid = nix::unistd::Pid::from_raw(
        i32::try_from(m.status()["Pid"].as_u64().expect("daemon pid")).unwrap(),
    );
    let mut inside = Command::new("sleep")
        .arg("60")
        .current_dir(&m.mnt)
        .spawn()
        .unwrap();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(is_mounted(&m.mnt), "unmounted while busy");
    assert_eq!(fs::read(m.p("hello.txt")).unwrap(), b"from fstab");
    inside.kill().unwrap();
    inside.wait().unwrap();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    assert!(
        wait_unmounted(&m.mnt, Duration::from_secs(5)),
        "the second SIGTERM did not unmount"
    );
}

/// `--idle`: no unmount while a file is open, unmount soon after the last use.
#[test]
fn idle_mounts_unmount_once_unused() {
    let m = unmounted();
    m.mount(&["--idle", "1s"]);
    let f = fs::File::open(m.p("hello.txt")).unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    assert!(is_mounted(&m.mnt), "unmounted with a file open");
    drop(f);
    assert!(
        wait_unmounted(&m.mnt, Duration::from_secs(10)),
        "still mounted 10 s after the last use"
    );
    assert!(m.log_text().contains("idle for 1s: unmounting"));
}

/// A mount made at a path whose previous mount is still winding down (detached lazily while a
/// file was open) stays up when the old daemon exits: the old one must not unmount the path.
#[test]
fn a_new_mount_survives_the_exit_of_the_previous_daemon_at_that_path() {
    let m = unmounted();
    m.mount(&[]);
    let old = m.status()["Pid"].as_u64().expect("daemon pid");
    let held = fs::File::open(m.p("hello.txt")).unwrap();
    m.env.ok(&["umount", "--lazy", m.mnt.to_str().unwrap()]);
    assert!(wait_unmounted(&m.mnt, Duration::from_secs(5)));
    m.mount(&[]);
    let new = m.status()["Pid"].as_u64().expect("daemon pid");
    assert_ne!(old, new);
    // Told to stop while its detached mount still serves the open file, the old daemon must
    // leave the path alone: the mount there is not its own.
    let old_pid = nix::unistd::Pid::from_raw(i32::try_from(old).unwrap());
    nix::sys::signal::kill(old_pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        is_mounted(&m.mnt),
        "the old daemon's SIGTERM took the new mount down"
    );
    // The last reference to the detached mount goes: its session ends and its daemon exits.
    drop(held);
    let proc_dir = PathBuf::from(format!("/proc/{old}"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while daemon_alive(&proc_dir) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!daemon_alive(&proc_dir), "the old daemon did not exit");
    assert!(is_mounted(&m.mnt), "the old daemon took the new mount down");
    assert_eq!(fs::read(m.p("hello.txt")).unwrap(), b"from fstab");
}

/// Whether a process runs (a zombie left for a reaper counts as gone).
fn daemon_alive(proc_dir: &Path) -> bool {
    match fs::read_to_string(proc_dir.join("stat")) {
        Ok(s) => !s
            .rsplit_once(')')
            .is_some_and(|(_, r)| r.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// `kmsfs status` shows each mount with its cipher dir, the keys its open files use with their
/// state and version, cache counters and the latest audit events; a disable shows at once.
#[test]
fn status_reports_mounts_keys_caches_and_audit() {
    let m = Mounted::new();
    fs::write(m.p("a"), b"status").unwrap();
    let held = fs::File::open(m.p("a")).unwrap();
    let _ = fs::read(m.p("a")).unwrap();
    let v = m.env.json(&["status", "--events", "3"]);
    let mine = mount_in(&v, &m.mnt);
    assert_eq!(mine["CipherDir"].as_str(), m.cipher.to_str());
    assert!(mine["OpenFiles"].as_u64().unwrap() >= 1, "{mine}");
    let key = mine["Keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["KeyId"].as_str() == Some(m.key.as_str()))
        .cloned()
        .unwrap_or_else(|| panic!("our key in {mine}"));
    assert_eq!(key["State"], "Enabled");
    assert_eq!(key["CurrentVersion"], 1);
    assert!(key["OpenFiles"].as_u64().unwrap() >= 1);
    let d = &mine["Caches"]["Decisions"];
    assert!(
        d["Hits"].as_u64().unwrap() + d["Misses"].as_u64().unwrap() >= 1,
        "{d}"
    );
    assert!(d["Limit"].as_u64().unwrap() > 0);
    assert_eq!(v["RecentAudit"].as_array().unwrap().len(), 3, "{v}");
    assert!(mine["DeferredFrees"]["Enabled"].is_boolean(), "{mine}");
    m.env.ok(&["key", "disable", "alias/fs"]);
    let text = m.env.ok(&["status"]);
    assert!(text.contains(&format!("on {}", m.mnt.display())), "{text}");
    assert!(text.contains(&format!("key {}  Disabled", m.key)), "{text}");
    assert!(text.contains("DisableKey"), "{text}");
    assert!(text.contains("deleted files freed"), "{text}");
    drop(held);
    m.env.ok(&["key", "enable", "alias/fs"]);
}

/// Completion scripts for bash, zsh and fish, and man pages for every subcommand, come from
/// the command-line definition.
#[test]
fn completions_and_man_pages_are_generated() {
    let e = Env::bare();
    for (shell, marker) in [
        ("bash", "_kmsfs()"),
        ("zsh", "#compdef kmsfs"),
        ("fish", "complete -c kmsfs"),
    ] {
        let out = e.ok(&["completions", shell]);
        assert!(
            out.contains(marker),
            "{shell}: {}",
            &out[..out.len().min(200)]
        );
        assert!(out.contains("rewrap") && out.contains("status"), "{shell}");
    }
    let dir = e.path("man");
    let out = e.ok(&["man", "--dir", dir.to_str().unwrap()]);
    assert!(out.contains("man pages written"), "{out}");
    let page = fs::read_to_string(dir.join("kmsfs-rewrap.1")).unwrap();
    assert!(page.contains(".TH") && page.contains("Example"), "{page}");
    let help = e.ok(&["mount", "--help"]);
    assert!(
        help.contains("Example") && help.contains("--idle"),
        "{help}"
    );
}

/// Ctrl-C stops a rewrap between two batches of headers (exit 130, saying how far it got);
/// nothing is damaged, and the same command run again finishes the job.
#[test]
fn ctrl_c_stops_rewrap_cleanly_and_a_rerun_finishes() {
    let m = Mounted::new();
    for d in 0..10 {
        fs::create_dir(m.p(&format!("d{d}"))).unwrap();
        for i in 0..100 {
            fs::write(m.p(&format!("d{d}/f{i}")), format!("{d}/{i}")).unwrap();
        }
    }
    m.unmount();
    m.env.ok(&["key", "rotate", "alias/fs"]);
    let child = m
        .env
        .command(&["rewrap", m.cipher.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // As soon as it catches SIGINT: it stops after its first batch of the 1,011 headers.
    let caught = || {
        let status = fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("SigCgt:"))
            .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
            .is_some_and(|m| m & (1 << (libc::SIGINT - 1)) != 0)
    };
    for _ in 0..500 {
        if caught() {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(
        err.contains("interrupted after") && err.contains("run the same command again"),
        "{err}"
    );
    let out = m.env.run(&["fsck", "-q", m.cipher.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    m.env.ok(&["rewrap", "-q", m.cipher.to_str().unwrap()]);
    let inv = m
        .env
        .json(&["key", "versions-in-use", m.cipher.to_str().unwrap()]);
    let keys = inv["Keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1, "{inv}");
    assert_eq!(keys[0]["KeyVersion"], 2, "{inv}");
    m.mount(&[]);
    assert_eq!(fs::read(m.p("d9/f99")).unwrap(), b"9/99");
}

/// scripts/install.sh, staged into a directory: binary, mount helper, man pages, completions,
/// systemd units (pointing at the installed binary) and the sample config.
#[test]
fn install_script_puts_everything_in_place() {
    let e = Env::bare();
    let stage = e.path("stage");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/install.sh");
    run(Command::new("bash")
        .arg(&script)
        .args([
            "--no-deps",
            "--prefix",
            "/opt/kmsfs",
            "--bin",
            BIN,
            "--destdir",
        ])
        .arg(&stage));
    for f in [
        "opt/kmsfs/bin/kmsfs",
        "opt/kmsfs/share/man/man1/kmsfs.1",
        "opt/kmsfs/share/man/man1/kmsfs-mount.1",
        "opt/kmsfs/share/bash-completion/completions/kmsfs",
        "opt/kmsfs/share/zsh/site-functions/_kmsfs",
        "opt/kmsfs/share/fish/vendor_completions.d/kmsfs.fish",
        "etc/systemd/system/kmsfs@.service",
        "etc/systemd/system/kmsfs-maintenance.timer",
        "etc/kmsfs/kmsfs.toml",
    ] {
        assert!(stage.join(f).is_file(), "{f} missing");
    }
    assert_eq!(
        fs::read_link(stage.join("sbin/mount.fuse.kmsfs")).unwrap(),
        Path::new("/opt/kmsfs/bin/kmsfs")
    );
    let unit = fs::read_to_string(stage.join("etc/systemd/system/kmsfs@.service")).unwrap();
    assert!(unit.contains("ExecStart=/opt/kmsfs/bin/kmsfs "), "{unit}");
    let out = run(Command::new(stage.join("opt/kmsfs/bin/kmsfs")).arg("--version"));
    assert!(out.starts_with("kmsfs "), "{out}");
}

/// Errors name the next step.
#[test]
fn errors_say_what_to_do_next() {
    let e = Env::new();
    e.create_key(&["--alias", "finance"]);
    e.ok(&["key", "disable", "alias/finance"]);
    let err = e.fails_with(&["encrypt", "--key", "alias/finance"], b"x", 11);
    assert!(err.contains("kmsfs key enable"), "{err}");
    e.ok(&["key", "enable", "alias/finance"]);
    e.ok(&["key", "schedule-deletion", "alias/finance", "--days", "7"]);
    let err = e.fails_with(&["encrypt", "--key", "alias/finance"], b"x", 12);
    assert!(err.contains("kmsfs key cancel-deletion"), "{err}");
    let bare = Env::bare();
    let err = bare.fails(&["key", "list"], 21);
    assert!(err.contains("kmsfs keystore init"), "{err}");
    let dir = e.path("not-a-cipherdir");
    fs::create_dir(&dir).unwrap();
    let mnt = e.path("mnt");
    fs::create_dir(&mnt).unwrap();
    let err = e.fails(&["mount", dir.to_str().unwrap(), mnt.to_str().unwrap()], 15);
    assert!(err.contains("kmsfs init"), "{err}");
}
