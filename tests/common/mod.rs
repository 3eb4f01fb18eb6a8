//! Helpers for CLI integration tests: a private key store per test, run through the real binary.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub const BIN: &str = env!("CARGO_BIN_EXE_kmsfs");

pub struct Env {
    pub tmp: tempfile::TempDir,
    pub store: PathBuf,
    pub root_key: PathBuf,
    pub now: Option<String>,
}

impl Env {
    /// A fresh key store unlocked by a root key file.
    pub fn new() -> Env {
        let e = Env::bare();
        e.ok(&["keystore", "init"]);
        e
    }

    /// Paths only; no store yet.
    pub fn bare() -> Env {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = tmp.path().join("ks");
        let root_key = tmp.path().join("root.key");
        std::fs::write(&root_key, [0x5au8; 32]).expect("write root key");
        Env {
            tmp,
            store,
            root_key,
            now: None,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.tmp.path())
            .env("KMSFS_KEYSTORE", &self.store)
            .env("KMSFS_ROOT_KEY_FILE", &self.root_key)
            .stdin(Stdio::null());
        if let Some(n) = &self.now {
            c.env("KMSFS_NOW", n);
        }
        c
    }

    /// The same command, run by `wrapper` with `wrapper_args` before the binary (with the same
    /// environment).
    pub fn command_via(&self, wrapper: &str, wrapper_args: &[&str], args: &[&str]) -> Command {
        let base = self.command(args);
        let mut c = Command::new(wrapper);
        c.args(wrapper_args).arg(BIN).args(args).env_clear();
        for (k, v) in base.get_envs() {
            if let Some(v) = v {
                c.env(k, v);
            }
        }
        c
    }

    /// The same command, run as another user (real uid and gid, no supplementary groups).
    pub fn command_as(&self, uid: u32, gid: u32, args: &[&str]) -> Command {
        let (uid, gid) = (uid.to_string(), gid.to_string());
        let mut c = self.command_via(
            "setpriv",
            &["--reuid", &uid, "--regid", &gid, "--clear-groups"],
            args,
        );
        c.env("HOME", "/");
        c
    }

    pub fn run_with(&self, args: &[&str], stdin: &[u8]) -> Output {
        feed(self.command(args), stdin)
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.run_with(args, b"")
    }

    /// Runs and requires success; returns stdout.
    pub fn ok_with(&self, args: &[&str], stdin: &[u8]) -> Vec<u8> {
        let out = self.run_with(args, stdin);
        assert!(
            out.status.success(),
            "kmsfs {args:?} failed ({:?}): {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    pub fn ok(&self, args: &[&str]) -> String {
        String::from_utf8(self.ok_with(args, b"")).expect("utf8 stdout")
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.extend(["--output", "json"]);
        serde_json::from_str(&self.ok(&a)).expect("json output")
    }

    /// Runs and requires the given exit code; returns stderr. Failures print nothing on stdout.
    pub fn fails_with(&self, args: &[&str], stdin: &[u8], code: i32) -> String {
        let out = self.run_with(args, stdin);
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(out.status.code(), Some(code), "kmsfs {args:?}: {err}");
        assert!(out.stdout.is_empty(), "kmsfs {args:?} printed on failure");
        err
    }

    pub fn fails(&self, args: &[&str], code: i32) -> String {
        self.fails_with(args, b"", code)
    }

    pub fn create_key(&self, extra: &[&str]) -> String {
        let mut a = vec!["key", "create"];
        a.extend(extra);
        self.ok(&a).trim().to_string()
    }

    pub fn encrypt(&self, key: &str, plaintext: &[u8], ctx: &[&str]) -> Vec<u8> {
        let mut a = vec!["encrypt", "--key", key];
        for c in ctx {
            a.extend(["--context", c]);
        }
        self.ok_with(&a, plaintext)
    }

    pub fn decrypt(&self, blob: &[u8], ctx: &[&str]) -> Vec<u8> {
        let mut a = vec!["decrypt"];
        for c in ctx {
            a.extend(["--context", c]);
        }
        self.ok_with(&a, blob)
    }

    pub fn audit_lines(&self) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(self.store.join("audit.log")).unwrap_or_default();
        text.lines()
            .map(|l| serde_json::from_str(l).expect("audit line is JSON"))
            .collect()
    }
}

/// Runs a command with `stdin` as its input and collects its output.
pub fn feed(mut c: Command, stdin: &[u8]) -> Output {
    c.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("spawn");
    let mut input = child.stdin.take().expect("stdin");
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let out = child.wait_with_output().expect("wait");
    let _ = writer.join();
    out
}

/// Every regular file below `dir`, recursively (symlinks are not followed).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let t = e.file_type().expect("file type");
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                out.push(e.path());
            }
        }
    }
    out
}

pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// A mounted kmsfs: its own key store, CMK, cipher directory and mount point. Dropping it
/// unmounts lazily, also when the test failed.
pub struct Mounted {
    pub env: Env,
    pub cipher: PathBuf,
    pub mnt: PathBuf,
    pub key: String,
    pub log: PathBuf,
}

impl Mounted {
    pub fn new() -> Mounted {
        Mounted::with_args(&[])
    }

    pub fn with_args(extra: &[&str]) -> Mounted {
        let env = Env::new();
        let key = env.create_key(&["--alias", "fs"]);
        let cipher = env.path("cipher");
        let mnt = env.path("mnt");
        std::fs::create_dir(&mnt).expect("mkdir mnt");
        env.ok(&["init", cipher.to_str().expect("utf8"), "--key", "alias/fs"]);
        let log = env.path("kmsfs.log");
        let m = Mounted {
            env,
            cipher,
            mnt,
            key,
            log,
        };
        m.mount(extra);
        m
    }

    pub fn mount(&self, extra: &[&str]) {
        let mut args = vec![
            "mount",
            self.cipher.to_str().expect("utf8"),
            self.mnt.to_str().expect("utf8"),
            "--log-file",
            self.log.to_str().expect("utf8"),
        ];
        args.extend(extra);
        self.env.ok(&args);
        assert!(
            is_mounted(&self.mnt),
            "mount returned before the mount was live"
        );
    }

    pub fn unmount(&self) {
        // A file this test just closed can still be open for a moment in a child that another
        // test thread is starting (fork copies descriptors until exec closes them), which makes
        // the unmount EBUSY: that one answer is tried again, for a few seconds at most.
        let args = ["umount", self.mnt.to_str().expect("utf8")];
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
        loop {
            let out = self.env.run(&args);
            if out.status.success() {
                break;
            }
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                err.contains("EBUSY") && std::time::Instant::now() < deadline,
                "kmsfs {args:?} failed ({:?}): {err}",
                out.status.code()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        // The daemon exits when the kernel ends the session.
        for _ in 0..100 {
            if !is_mounted(&self.mnt) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        panic!("still mounted after umount");
    }

    pub fn p(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    /// Regular files in the cipher directory (kmsfs's own files excluded).
    pub fn cipher_files(&self) -> Vec<PathBuf> {
        files_under(&self.cipher)
            .into_iter()
            .filter(|p| {
                let n = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                let journal = p.components().any(|c| c.as_os_str() == "kmsfs.journal");
                !journal && !n.starts_with("kmsfs.")
                    || (n.starts_with("kmsfs.longname.") && !n.ends_with(".name"))
            })
            .collect()
    }

    /// This mount's entry in `kmsfs status` (other tests' mounts are listed too).
    pub fn status(&self) -> serde_json::Value {
        mount_in(&self.env.json(&["status", "--events", "0"]), &self.mnt)
    }

    /// Waits until the daemon has no file open: close() returns before its release reaches
    /// the daemon, and what the next open finds (a header checked or not, a page-cache mode
    /// to follow) depends on it.
    pub fn wait_released(&self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
        while self.status()["OpenFiles"].as_u64() != Some(0) {
            assert!(
                std::time::Instant::now() < deadline,
                "the daemon keeps a file open"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if is_mounted(&self.mnt) {
            let _ = Command::new("fusermount3")
                .arg("-u")
                .arg("-z")
                .arg(&self.mnt)
                .status();
            if is_mounted(&self.mnt) {
                let _ = nix::mount::umount2(&self.mnt, nix::mount::MntFlags::MNT_DETACH);
            }
        }
    }
}

/// The entry for mount point `mnt` in `kmsfs status` output.
pub fn mount_in(status: &serde_json::Value, mnt: &Path) -> serde_json::Value {
    status["Mounts"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|x| x["MountPoint"].as_str() == mnt.to_str())
        .cloned()
        .unwrap_or_else(|| panic!("{} in {status}", mnt.display()))
}

pub fn is_mounted(p: &Path) -> bool {
    let Ok(canon) = p.canonicalize() else {
        return false;
    };
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    kmsfs::fs::mount::mount_points(&info).contains(&canon)
}

/// Makes sure a local user with this uid exists (fusermount3 needs a passwd entry), creating it
/// with a group of the same id if needed. Tests run as root.
pub fn ensure_user(uid: u32, name: &str) {
    if nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .is_some()
    {
        return;
    }
    let _ = Command::new("groupadd")
        .args(["--gid", &uid.to_string(), name])
        .output();
    let _ = Command::new("useradd")
        .args([
            "--uid",
            &uid.to_string(),
            "--gid",
            &uid.to_string(),
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            name,
        ])
        .output();
    assert!(
        nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .ok()
            .flatten()
            .is_some(),
        "could not create user {name} ({uid})"
    );
}

/// A small seeded generator (xorshift64) for tests that must print and repeat their seed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// The seed from `var` if set, else from the clock; printed so a failure can be repeated.
pub fn seed_from(var: &str) -> u64 {
    let s = std::env::var(var)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("seed {s} ({var}={s} to repeat)");
    s
}

/// `sh -c script` with the environment `e` gives its commands; `$0` is the kmsfs binary.
pub fn shell(e: &Env, script: &str) -> Command {
    let base = e.command(&[]);
    let mut sh = Command::new("sh");
    sh.arg("-c").arg(script).arg(BIN);
    for (k, v) in base.get_envs() {
        if let Some(v) = v {
            sh.env(k, v);
        }
    }
    sh
}

/// The pid of the daemon serving the cipher directory `cipher`.
pub fn daemon_pid(cipher: &std::path::Path) -> Option<i32> {
    let want = cipher.to_str()?;
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmd
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.iter().any(|a| a == "--daemon-child") && args.iter().any(|a| a == want) {
            return Some(pid);
        }
    }
    None
}

/// Writes a `kmsfs serve` credentials file (mode 600) of (access key id, secret, principal).
pub fn write_api_credentials(e: &Env, name: &str, keys: &[(&str, &str, &str)]) -> String {
    let p = e.path(name);
    let text: String = keys
        .iter()
        .map(|(id, secret, principal)| {
            format!(
                "[[credential]]\naccess_key_id = \"{id}\"\nsecret_access_key = \"{secret}\"\nprincipal = \"{principal}\"\n\n"
            )
        })
        .collect();
    std::fs::write(&p, text).expect("write credentials");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    p.to_str().expect("utf8").to_string()
}

/// Starts a prepared `kmsfs serve ... --listen 127.0.0.1:0` command; returns the process and the
/// URL of the listener it printed first.
pub fn spawn_serve(mut c: Command) -> (std::process::Child, String) {
    use std::io::{BufRead, BufReader};
    let mut child = c
        .stdout(Stdio::piped())
        .spawn()
        .expect("kmsfs serve starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("the listening line");
    let endpoint = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    (child, endpoint)
}

/// The `<key id>:<version>` a mounted path's header names (`user.kmsfs.key`).
pub fn key_of(p: &Path) -> String {
    let v = get_xattr(p, "user.kmsfs.key").unwrap_or_else(|e| panic!("getxattr: {e}"));
    String::from_utf8(v).unwrap()
}

/// getxattr(2) of `name` on `p` (values up to 4 KiB).
pub fn get_xattr(p: &Path, name: &str) -> std::io::Result<Vec<u8>> {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    let mut buf = vec![0u8; 4096];
    // SAFETY: valid C strings and a buffer of buf.len() bytes.
    let len = unsafe { libc::getxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if len < 0 {
        return Err(std::io::Error::last_os_error());
    }
    buf.truncate(len as usize);
    Ok(buf)
}

/// setxattr(2) of `name` on `p`.
pub fn set_xattr(p: &Path, name: &str, value: &[u8]) -> std::io::Result<()> {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    // SAFETY: valid C strings and a buffer of value.len() bytes.
    let rc = unsafe {
        libc::setxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
