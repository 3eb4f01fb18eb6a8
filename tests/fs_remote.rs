//! A cipher directory whose CMKs live in a remote AWS-KMS-compatible service, mounted for real:
//! against `kmsfs serve` (another key store, SigV4 checked) and against moto's KMS server
//! (`pip install 'moto[server]'`, installed by .ci/run). Create, write, read, rotate, rewrap,
//! disable -> EACCES (also for an open file), enable, and an unreachable service.

mod common;
use common::*;
use kmsfs::aws::client::KmsClient;
use kmsfs::aws::sigv4::Credentials;
use serde_json::json;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ACCESS_KEY: &str = "AKIAKMSFSREMOTE";
const SECRET: &str = "remote-secret-for-tests";
const REGION: &str = "us-east-1";

/// A key service on loopback, stopped when dropped.
struct Service {
    child: Child,
    endpoint: String,
    /// Keeps the serving key store alive.
    _env: Option<Env>,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Service {
    fn client(&self) -> KmsClient {
        KmsClient::new(
            &self.endpoint,
            REGION,
            Credentials {
                access_key_id: ACCESS_KEY.into(),
                secret_access_key: SECRET.into(),
                session_token: None,
            },
        )
        .unwrap()
    }

    fn create_key(&self) -> String {
        let v = self.client().call("CreateKey", &json!({})).unwrap();
        v["KeyMetadata"]["Arn"].as_str().unwrap().to_string()
    }

    /// An administrative call at the service, naming the key by id (moto wants ids there).
    fn call(&self, op: &str, key_arn: &str) {
        let id = key_arn.rsplit('/').next().unwrap();
        self.client().call(op, &json!({ "KeyId": id })).unwrap();
    }
}

fn kmsfs_serve() -> Service {
    let e = Env::new();
    let creds = write_api_credentials(&e, "creds.toml", &[(ACCESS_KEY, SECRET, "uid:0")]);
    // Everything the server logs, at the most verbose level, for the secrets test.
    let log = std::fs::File::create(e.path("serve.log")).unwrap();
    let mut c = e.command(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--credentials",
        &creds,
        "--verify-signatures",
    ]);
    c.env("RUST_LOG", "trace").stderr(log);
    let (child, endpoint) = spawn_serve(c);
    Service {
        child,
        endpoint,
        _env: Some(e),
    }
}

fn moto() -> Service {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("python3")
        .args([
            "-m",
            "moto.server",
            "-H",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("moto's server starts (pip install 'moto[server]')");
    let s = Service {
        child,
        endpoint: format!("http://127.0.0.1:{port}"),
        _env: None,
    };
    let t = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(t.elapsed() < Duration::from_secs(30), "moto did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    s
}

/// A mount of a remote-provider cipher directory; unmounted lazily when dropped.
struct RemoteMount {
    env: Env,
    cipher: PathBuf,
    mnt: PathBuf,
    /// Credentials from a profile of a shared credentials file instead of AWS_ACCESS_KEY_ID.
    profile: bool,
}

impl Drop for RemoteMount {
    fn drop(&mut self) {
        if is_mounted(&self.mnt) {
            let _ = nix::mount::umount2(&self.mnt, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

impl RemoteMount {
    fn kmsfs(&self, args: &[&str]) -> std::process::Output {
        self.kmsfs_env(args, &[])
    }

    fn kmsfs_env(&self, args: &[&str], vars: &[(&str, &str)]) -> std::process::Output {
        // No key store at all: a remote cipher directory needs none.
        let mut c = self.env.command(args);
        c.envs(vars.iter().copied());
        c.env_remove("KMSFS_KEYSTORE")
            .env_remove("KMSFS_ROOT_KEY_FILE")
            .env("KMSFS_KEYSTORE", self.env.path("no-such-store"));
        if self.profile {
            let file = self.env.path("aws-credentials");
            std::fs::write(
                &file,
                format!(
                    "[default]\naws_access_key_id = wrong\naws_secret_access_key = wrong\n\n\
                     [kmsfs-test]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET}\n"
                ),
            )
            .unwrap();
            c.env("AWS_SHARED_CREDENTIALS_FILE", file)
                .env("AWS_PROFILE", "kmsfs-test");
        } else {
            c.env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
                .env("AWS_SECRET_ACCESS_KEY", SECRET);
        }
        c.output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.kmsfs(args);
        assert!(
            out.status.success(),
            "kmsfs {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    fn new(s: &Service, key: &str, profile: bool) -> RemoteMount {
        let env = Env::bare();
        let cipher = env.path("cipher");
        let mnt = env.path("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let m = RemoteMount {
            env,
            cipher,
            mnt,
            profile,
        };
        m.ok(&[
            "init",
            m.cipher.to_str().unwrap(),
            "--provider",
            "aws-kms",
            "--endpoint",
            &s.endpoint,
            "--region",
            REGION,
            "--key",
            key,
            "--key-cache-seconds",
            "1",
        ]);
        m.mount();
        m
    }

    fn mount(&self) {
        self.ok(&[
            "mount",
            self.cipher.to_str().unwrap(),
            self.mnt.to_str().unwrap(),
        ]);
        assert!(is_mounted(&self.mnt));
    }

    fn unmount(&self) {
        self.ok(&["umount", self.mnt.to_str().unwrap()]);
        let t = Instant::now();
        while is_mounted(&self.mnt) {
            assert!(t.elapsed() < Duration::from_secs(5), "still mounted");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }
}

/// Waits (bounded) until reading `p` fails with `errno`; the key cache lasts 1 s.
fn until_read_fails(p: &std::path::Path, errno: i32) {
    let t = Instant::now();
    loop {
        match std::fs::read(p) {
            Err(e) if e.raw_os_error() == Some(errno) => return,
            _ if t.elapsed() > Duration::from_secs(10) => {
                panic!("{} still readable 10 s after the key changed", p.display())
            }
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

fn lifecycle(s: &Service, profile: bool) {
    let key = s.create_key();
    let other = s.create_key();
    let m = RemoteMount::new(s, &key, profile);
    let conf = std::fs::read_to_string(m.cipher.join("kmsfs.conf")).unwrap();
    assert!(
        conf.contains("aws-kms") && conf.contains(&s.endpoint),
        "{conf}"
    );
    std::fs::create_dir(m.p("docs")).unwrap();
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(m.p("docs/report.bin"), &data).unwrap();
    std::fs::write(m.p("small.txt"), b"hello remote").unwrap();
    assert_eq!(std::fs::read(m.p("docs/report.bin")).unwrap(), data);
    // The cipher directory holds no plaintext.
    for f in files_under(&m.cipher) {
        let bytes = std::fs::read(&f).unwrap();
        assert!(!contains(&bytes, b"hello remote"), "{}", f.display());
    }
    // Rotation at the service, then an online rewrap: every header is re-wrapped by ReEncrypt
    // (the service's versions are not visible, so all are done), and everything still reads.
    s.call("RotateKeyOnDemand", &key);
    let out = m.ok(&["rewrap", m.mnt.to_str().unwrap()]);
    assert!(
        out.contains("re-wrapped") || out.contains("rewrapped"),
        "{out}"
    );
    assert_eq!(std::fs::read(m.p("small.txt")).unwrap(), b"hello remote");
    // Offline rewrap to another key of the service; the volume key moves with it.
    m.unmount();
    m.ok(&["rewrap", m.cipher.to_str().unwrap(), "--to", &other]);
    let conf = std::fs::read_to_string(m.cipher.join("kmsfs.conf")).unwrap();
    assert!(conf.contains(&other), "{conf}");
    let fsck = m.ok(&["fsck", m.cipher.to_str().unwrap()]);
    assert!(fsck.contains("0 problems"), "{fsck}");
    m.mount();
    assert_eq!(std::fs::read(m.p("docs/report.bin")).unwrap(), data);
    // Disable at the service: new opens and an already-open file fail within the cache bound.
    let open = std::fs::File::open(m.p("small.txt")).unwrap();
    s.call("DisableKey", &other);
    until_read_fails(&m.p("small.txt"), libc::EACCES);
    // The open file loses its data key at the key watcher's next poll (0.2 s) after the
    // cache period turns; until then it may still read.
    let t = Instant::now();
    loop {
        use std::os::unix::fs::FileExt;
        let mut buf = [0u8; 16];
        match open.read_at(&mut buf, 0) {
            Err(e) if e.raw_os_error() == Some(libc::EACCES) => break,
            _ if t.elapsed() > Duration::from_secs(10) => {
                panic!("the open file still reads 10 s after the disable")
            }
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    assert!(std::fs::write(m.p("new.txt"), b"x").is_err());
    s.call("EnableKey", &other);
    let t = Instant::now();
    while std::fs::read(m.p("small.txt")).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "not readable again after enable"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(open);
    m.unmount();
}

#[test]
fn remote_provider_against_kmsfs_serve() {
    let s = kmsfs_serve();
    // Credentials from a named profile of a shared credentials file, as the AWS SDKs read them
    // (its [default] profile is wrong, and this server checks signatures).
    lifecycle(&s, true);
}

#[test]
fn remote_provider_against_moto() {
    let s = moto();
    lifecycle(&s, false);
}

/// At RUST_LOG=trace, neither the mount's log nor the server's holds file names, contents, or
/// the wire format's plaintext-bearing fields (ureq dumps bodies at trace; it is capped).
#[test]
fn nothing_secret_reaches_the_logs_at_trace() {
    let s = kmsfs_serve();
    let key = s.create_key();
    let m = RemoteMount::new(&s, &key, false);
    m.unmount();
    let log = m.env.path("mount.log");
    let out = m.kmsfs_env(
        &[
            "mount",
            m.cipher.to_str().unwrap(),
            m.mnt.to_str().unwrap(),
            "--log-file",
            log.to_str().unwrap(),
        ],
        &[(
            "RUST_LOG",
            "trace,ureq_proto::util=trace,fuser::request=trace",
        )],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let marker = "SECRET-MARKER-7f3a";
    std::fs::write(m.p(&format!("{marker}.txt")), marker.repeat(10)).unwrap();
    assert_eq!(
        std::fs::read_to_string(m.p(&format!("{marker}.txt"))).unwrap(),
        marker.repeat(10)
    );
    m.unmount();
    let mount_log = std::fs::read_to_string(&log).unwrap();
    let serve_log = std::fs::read_to_string(s._env.as_ref().unwrap().path("serve.log")).unwrap();
    assert!(
        mount_log.len() > 100,
        "the mount logged at trace: {mount_log}"
    );
    for (name, text) in [("mount", &mount_log), ("serve", &serve_log)] {
        for needle in [
            marker,
            "\"Plaintext\"",
            "Plaintext\":",
            "CiphertextBlob",
            SECRET,
        ] {
            assert!(!text.contains(needle), "{name} log contains {needle:?}");
        }
    }
}

/// kmsfs.conf is authenticated only with a key the service returns, so an endpoint rewritten
/// in it must not be trusted: the mount refuses a service nobody on this host chose.
#[test]
fn a_rewritten_endpoint_is_refused() {
    let s = kmsfs_serve();
    let key = s.create_key();
    let m = RemoteMount::new(&s, &key, false);
    m.unmount();
    let conf_path = m.cipher.join("kmsfs.conf");
    let conf = std::fs::read_to_string(&conf_path).unwrap();
    let other = kmsfs_serve();
    std::fs::write(&conf_path, conf.replace(&s.endpoint, &other.endpoint)).unwrap();
    let out = m.kmsfs(&["mount", m.cipher.to_str().unwrap(), m.mnt.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "mounted with a rewritten endpoint");
    assert!(err.contains("nobody on this host chose"), "{err}");
    assert!(!is_mounted(&m.mnt));
    // The original endpoint still mounts.
    std::fs::write(&conf_path, &conf).unwrap();
    m.mount();
}

#[test]
fn an_unreachable_service_is_a_clear_error() {
    let s = kmsfs_serve();
    let key = s.create_key();
    let m = RemoteMount::new(&s, &key, false);
    m.unmount();
    drop(s);
    let out = m.kmsfs(&["mount", m.cipher.to_str().unwrap(), m.mnt.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("did not answer") && err.contains("127.0.0.1"),
        "{err}"
    );
    assert_eq!(out.status.code(), Some(27), "{err}");
    // Wrong credentials are the service's AccessDenied, not a retry loop.
    let s = kmsfs_serve();
    let key = s.create_key();
    let env = Env::bare();
    let init = |dir: &str| {
        let cipher = env.path(dir);
        env.command(&[
            "init",
            cipher.to_str().unwrap(),
            "--provider",
            "aws-kms",
            "--endpoint",
            &s.endpoint,
            "--region",
            REGION,
            "--key",
            &key,
        ])
    };
    let out = init("c")
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", "wrong")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(14), "{err}");
    // No credentials at all: says where they come from.
    let out = init("d").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("AWS_ACCESS_KEY_ID"), "{err}");
}
