//! `kmsfs init`, `kmsfs mount` and `kmsfs umount`.

use crate::aws::remote::{PROVIDER_KIND, RemoteConfig};
use crate::cli::args::{Global, InitFsArgs, MountArgs, ProviderArg, UmountArgs};
use crate::cli::commands::open_kms;
use crate::cli::unlock;
use crate::clock::format_time;
use crate::config::Config;
use crate::error::{KmsError, Result};
use crate::fs::{cipherdir, mount, nametransform::CONFIG_FILE, ops::KmsFs};
use crate::keystore::KeyStore;
use crate::keystore::rootkey::RootSecret;
use crate::kms::Caller;
use crate::provider::{KeyProvider, LocalProvider};
use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

pub fn init(g: &Global, cfg: &Config, a: &InitFsArgs) -> Result<()> {
    let caller = Caller::current();
    let v = match a.provider {
        ProviderArg::Local => {
            if a.endpoint.is_some() {
                return Err(KmsError::validation("--endpoint is for --provider aws-kms"));
            }
            let kms = open_kms(g, cfg)?;
            let now = format_time(&kms.now());
            let provider = LocalProvider::new(kms);
            let v = cipherdir::init(&a.cipherdir, &provider, &caller, &a.key, &now, None)?;
            if let Ok(c) = a.cipherdir.canonicalize() {
                provider.kms().register_cipherdir(&c)?;
            }
            v
        }
        ProviderArg::AwsKms => {
            let remote = RemoteConfig {
                kind: PROVIDER_KIND.to_string(),
                endpoint: a.endpoint.clone().ok_or_else(|| {
                    KmsError::validation("--provider aws-kms needs --endpoint URL")
                })?,
                region: a
                    .region
                    .clone()
                    .or_else(|| std::env::var("AWS_REGION").ok())
                    .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
                    .ok_or_else(|| {
                        KmsError::validation("--provider aws-kms needs --region (or AWS_REGION)")
                    })?,
                key_cache_seconds: a.key_cache_seconds,
            };
            let provider = crate::cli::providers::remote(&remote)?;
            let now = format_time(&chrono::Utc::now());
            // The user chose this endpoint: later mounts may trust it (see cli/providers.rs). A
            // failure to record it only warns: the config file can still list it.
            if let Err(e) = crate::cli::providers::trust(&remote.endpoint) {
                eprintln!(
                    "kmsfs: could not record {} as a trusted endpoint ({}); list it in \
                     [remote] trusted_endpoints of the config file to mount this directory",
                    remote.endpoint, e.message
                );
            }
            cipherdir::init(
                &a.cipherdir,
                provider.as_ref(),
                &caller,
                &a.key,
                &now,
                Some(remote),
            )?
        }
    };
    println!(
        "prepared {} (volume {}, key {}); mount it with `kmsfs mount {} MOUNTPOINT`",
        a.cipherdir.display(),
        v.config.volume_id,
        v.config.key,
        a.cipherdir.display()
    );
    Ok(())
}

pub fn umount(a: &UmountArgs) -> Result<()> {
    mount::unmount(&a.mountpoint, a.lazy)
}

fn options(a: &MountArgs, cfg: &Config) -> Result<mount::MountOptions> {
    let m = &cfg.mount;
    let idle = match (&a.idle, &m.idle) {
        (Some(d), _) => Some(*d),
        (None, Some(s)) => Some(humantime::parse_duration(s).map_err(|e| {
            KmsError::validation(format!("[mount] idle = {s:?} in the config: {e}"))
        })?),
        (None, None) => None,
    };
    Ok(mount::MountOptions {
        idle,
        noexec: a.noexec || m.noexec.unwrap_or(false),
        default_permissions: a.default_permissions || m.default_permissions.unwrap_or(false),
        read_only: a.read_only || m.read_only.unwrap_or(false),
        allow_other: a.allow_other || m.allow_other.unwrap_or(false),
        threads: a
            .threads
            .or(m.threads)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get())),
        attr_ttl: Duration::from_millis(m.attr_ttl_ms.unwrap_or(1000)),
        readahead_kib: a
            .readahead_kib
            .or(m.readahead_kib)
            .unwrap_or(mount::DEFAULT_READAHEAD_KIB),
        io_uring: a.io_uring.or(m.io_uring).unwrap_or_default(),
        audit_sync: a.audit_sync.or(m.audit_sync).unwrap_or_default(),
        data_key_cache: a
            .data_key_cache
            .or(m.data_key_cache)
            .unwrap_or(crate::fs::dekcache::DEFAULT_ENTRIES),
        direct_writes: a.direct_writes.or(m.direct_writes).unwrap_or(true),
        keep_cache: a.keep_cache.or(m.keep_cache).unwrap_or(true),
    })
}

fn not_a_cipherdir(a: &MountArgs) -> Result<()> {
    if a.cipherdir.join(CONFIG_FILE).is_file() {
        return Ok(());
    }
    Err(KmsError::validation(format!(
        "{} is not a kmsfs cipher directory (no {CONFIG_FILE}): prepare one with `kmsfs init`",
        a.cipherdir.display()
    )))
}

/// Mounts. Without --foreground, starts the daemon and returns once the mount is live.
pub fn mount(g: &Global, cfg: &Config, a: &MountArgs) -> Result<()> {
    not_a_cipherdir(a)?;
    mount::check_mount_point(&a.mountpoint)?;
    if !a.foreground && !a.daemon_child {
        return spawn_daemon(g, cfg, a);
    }
    if a.daemon_child {
        // Leave the caller's session, so closing its terminal does not stop the mount.
        let _ = nix::unistd::setsid();
    }
    // One backing descriptor per open file: allow as many as the hard limit does.
    if let Ok((soft, hard)) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
    {
        if soft < hard {
            let _ = nix::sys::resource::setrlimit(
                nix::sys::resource::Resource::RLIMIT_NOFILE,
                hard,
                hard,
            );
        }
    }
    let o = options(a, cfg)?;
    let provider: Arc<dyn KeyProvider> =
        crate::cli::providers::for_cipherdir(g, cfg, &a.cipherdir)?;
    let audit = provider.clone();
    let caller = Caller::current();
    let volume = cipherdir::open(&a.cipherdir, provider.as_ref(), &caller)?;
    let root = a
        .cipherdir
        .canonicalize()
        .map_err(|e| KmsError::validation(format!("{}: {e}", a.cipherdir.display())))?;
    let fs = KmsFs::new(root, provider, caller, volume)
        .map_err(|e| KmsError::validation(format!("{}: errno {}", a.cipherdir.display(), e.0)))?;
    fs.set_data_key_cache(o.data_key_cache);
    fs.set_keep_cache(o.keep_cache);
    fs.set_direct_writes(o.direct_writes);
    let daemon = a.daemon_child;
    let (cd, mp) = (
        a.cipherdir.display().to_string(),
        a.mountpoint.display().to_string(),
    );
    log::info!("mounting {cd} on {mp}");
    let ready_mp = mp.clone();
    // From here on the mount's key watcher flushes, also when the mount ends.
    if o.audit_sync == mount::AuditSync::Batched {
        audit.defer_audit_sync();
    }
    mount::serve(fs, &a.mountpoint, &o, move || {
        if daemon {
            println!("READY");
            let _ = std::io::stdout().flush();
            detach_stdio();
        } else {
            eprintln!(
                "mounted {cd} on {ready_mp}; unmount with `kmsfs umount {ready_mp}` (or Ctrl-C)"
            );
        }
    })
    .inspect_err(|e| log::error!("{e}"))?;
    log::info!("unmounted {mp}");
    Ok(())
}

/// Points standard input, output and error at /dev/null once the daemon runs on its own.
fn detach_stdio() {
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        use std::os::fd::AsRawFd;
        for fd in 0..3 {
            // SAFETY: dup2 onto the standard descriptors, from a descriptor we own.
            unsafe { libc::dup2(null.as_raw_fd(), fd) };
        }
    }
}

/// Starts `kmsfs mount --daemon-child ...` and waits until it says the mount is live.
fn spawn_daemon(g: &Global, cfg: &Config, a: &MountArgs) -> Result<()> {
    let exe = std::env::current_exe().map_err(|e| KmsError::internal(format!("own path: {e}")))?;
    let mut args: Vec<std::ffi::OsString> = crate::cli::argv().into_iter().skip(1).collect();
    args.push("--daemon-child".into());
    let mut cmd = Command::new(exe);
    cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
    // A passphrase typed here is handed to the daemon on its standard input, never in argv or env.
    let mut typed = None;
    let dir = unlock::keystore_dir(g, cfg);
    if let Ok(meta) = KeyStore::probe(&dir) {
        if !unlock::has_configured_secret(g, cfg) && std::io::stdin().is_terminal() {
            if let RootSecret::Passphrase(p) = unlock::secret_for_open(g, cfg, meta.root)? {
                typed = Some(p);
                args.push("--passphrase-file".into());
                args.push("/dev/stdin".into());
            }
        }
    }
    cmd.args(&args).stdin(if typed.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = cmd
        .spawn()
        .map_err(|e| KmsError::internal(format!("starting the mount daemon: {e}")))?;
    if let (Some(p), Some(mut stdin)) = (typed, child.stdin.take()) {
        let _ = stdin.write_all(&p).and_then(|_| stdin.write_all(b"\n"));
    }
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        let _ = BufReader::new(out).read_line(&mut line);
    }
    if line.trim() == "READY" {
        let mp = a.mountpoint.display();
        println!(
            "mounted {} on {mp}; unmount with `kmsfs umount {mp}`",
            a.cipherdir.display()
        );
        return Ok(());
    }
    let status = child
        .wait()
        .map_err(|e| KmsError::internal(format!("waiting for the mount daemon: {e}")))?;
    // The daemon printed its own error; exit with its code.
    std::process::exit(status.code().unwrap_or(1));
}
