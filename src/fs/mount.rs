//! Mounting: checks on the mount point, the FUSE session, signals, and unmounting.

use crate::error::{KmsError, Result};
use crate::fs::fuse::Fuse;
use crate::fs::ops::KmsFs;
use crate::fs::uring;
use fuser::{Config, MountOption, SessionACL};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct MountOptions {
    pub read_only: bool,
    pub allow_other: bool,
    pub threads: usize,
    pub attr_ttl: Duration,
    /// Unmount after this long without requests while no file is open.
    pub idle: Option<Duration>,
    pub noexec: bool,
    /// Kernel permission checks even where only root can reach the mount.
    pub default_permissions: bool,
    /// Readahead for the mount's backing device info, in KiB; 0 keeps the kernel's.
    pub readahead_kib: u32,
    pub io_uring: IoUringMode,
    pub audit_sync: AuditSync,
    /// Data keys kept after their files close (0: a KMS Decrypt for every open).
    pub data_key_cache: usize,
    /// Writable opens bypass the page cache (see `pagecache`), where the kernel allows.
    pub direct_writes: bool,
    /// Opens of unchanged files keep the kernel's cached pages (see `pagecache`).
    pub keep_cache: bool,
}

/// When a mount's audit records reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditSync {
    /// Every `KEY_POLL`, and before an fsync through the mount returns.
    #[default]
    Batched,
    /// Before each key use returns.
    Each,
}

/// Whether requests travel over io_uring (per-CPU queues) or /dev/fuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IoUringMode {
    /// io_uring when the kernel offers it (the fuse module's enable_uring is on).
    #[default]
    Auto,
    /// io_uring, turning the fuse module's switch on if needed (root); an error without it.
    On,
    /// /dev/fuse only.
    Off,
}

/// Readahead set on mounts by default. FUSE starts at 128 KiB (and the INIT reply may only
/// lower it), so a cold sequential read arrives as 128 KiB requests: a round trip and a
/// decryption too short to spread over the CPUs for each. 4 MiB gives 1 MiB requests (the
/// largest a request carries) with more in flight; the kernel only widens the window for
/// sequential readers.
pub const DEFAULT_READAHEAD_KIB: u32 = 4096;

/// Undoes the escaping of /proc/self/mountinfo fields (`\040` for a space, and so on).
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One line of mountinfo: the device number ("major:minor"), the source and the mount point.
struct MountEntry {
    device: String,
    source: PathBuf,
    point: PathBuf,
}

/// Every mount in mountinfo text, in its order (later lines are mounted on top).
fn entries(mountinfo: &str) -> Vec<MountEntry> {
    mountinfo
        .lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let mut fields = pre.split(' ');
            let device = fields.nth(2)?;
            let point = fields.nth(1)?;
            let source = post.split(' ').nth(1)?;
            Some(MountEntry {
                device: device.to_string(),
                source: PathBuf::from(unescape_mountinfo(source)),
                point: PathBuf::from(unescape_mountinfo(point)),
            })
        })
        .collect()
}

/// (mount source, mount point) of each mount in mountinfo text.
pub fn mounts(mountinfo: &str) -> Vec<(PathBuf, PathBuf)> {
    entries(mountinfo)
        .into_iter()
        .map(|e| (e.source, e.point))
        .collect()
}

/// The device number ("major:minor") of the mount at `point` in mountinfo text: the topmost
/// if several are stacked there.
pub fn device_of(mountinfo: &str, point: &Path) -> Option<String> {
    entries(mountinfo)
        .into_iter()
        .rev()
        .find(|e| e.point == point)
        .map(|e| e.device)
}

/// The device number of the topmost mount at `point`, from this process's mountinfo: read
/// rather than a stat of the mount point, which could wait on a daemon that does not serve (yet
/// or any more).
fn mounted_device(point: &Path) -> Option<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .ok()
        .and_then(|info| device_of(&info, point))
}

/// Sets the kernel's readahead for the mount whose device is `dev` (a sysfs file only root may
/// write).
fn set_readahead(dev: Option<&str>, kib: u32) {
    let Some(dev) = dev else {
        log::info!("readahead left at the kernel's default: mount not found in mountinfo");
        return;
    };
    let path = format!("/sys/class/bdi/{dev}/read_ahead_kb");
    match std::fs::write(&path, format!("{kib}\n")) {
        Ok(()) => log::debug!("readahead {kib} KiB ({path})"),
        Err(e) => log::info!("readahead left at the kernel's default: {path}: {e}"),
    }
}

/// Mount points listed in mountinfo text.
pub fn mount_points(mountinfo: &str) -> Vec<PathBuf> {
    mounts(mountinfo).into_iter().map(|(_, p)| p).collect()
}

/// Where the cipher directory `dir` is mounted (kmsfs mounts name it as their source), if it is.
pub fn mounted_at(dir: &Path) -> Option<PathBuf> {
    let canon = dir.canonicalize().ok()?;
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mounts(&info)
        .into_iter()
        .find(|(s, _)| *s == canon)
        .map(|(_, p)| p)
}

pub fn is_mount_point(p: &Path) -> bool {
    let Ok(canon) = p.canonicalize() else {
        return false;
    };
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|t| mount_points(&t).contains(&canon))
        .unwrap_or(false)
}

/// The mount point must exist, be a directory, be empty and not be mounted on already.
pub fn check_mount_point(p: &Path) -> Result<()> {
    let m = std::fs::metadata(p).map_err(|e| {
        KmsError::validation(format!(
            "mount point {}: {e} (create it with mkdir)",
            p.display()
        ))
    })?;
    if !m.is_dir() {
        return Err(KmsError::validation(format!(
            "mount point {} is not a directory",
            p.display()
        )));
    }
    if is_mount_point(p) {
        return Err(KmsError::validation(format!(
            "{} is already a mount point (busy): `kmsfs umount {}` first",
            p.display(),
            p.display()
        )));
    }
    let mut entries =
        std::fs::read_dir(p).map_err(|e| KmsError::validation(format!("{}: {e}", p.display())))?;
    if entries.next().is_some() {
        return Err(KmsError::validation(format!(
            "mount point {} is not empty: mounting over files would hide them",
            p.display()
        )));
    }
    Ok(())
}

/// `rings`: requests will travel over io_uring, leaving /dev/fuse only FORGET and INTERRUPT
/// (one thread is plenty for them).
fn fuse_config(cipherdir: &Path, o: &MountOptions, rings: bool) -> Config {
    let mut opts = vec![
        MountOption::FSName(cipherdir.display().to_string()),
        MountOption::Subtype("kmsfs".into()),
        MountOption::NoAtime,
    ];
    // The kernel checks modes and owners whenever another user can reach the mount, and for
    // ordinary users' mounts. A root mount without allow_other serves only root, whom those
    // checks always let through; leaving them out there saves a GETATTR of the directory
    // before every unlink, rename or create that follows a change to it.
    if o.allow_other || o.default_permissions || !nix::unistd::geteuid().is_root() {
        opts.push(MountOption::DefaultPermissions);
    }
    if o.noexec {
        opts.push(MountOption::NoExec);
    }
    if o.read_only {
        opts.push(MountOption::RO);
    }
    let mut c = Config::default();
    c.mount_options = opts;
    c.acl = if o.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    let threads = if rings { 1 } else { o.threads.max(1) };
    c.n_threads = Some(threads);
    c.clone_fd = threads > 1;
    c
}

/// Starts the io_uring queues once INIT granted them; without them requests stay on /dev/fuse,
/// which is an error only when io_uring was asked for by name. Ok(true): the rings serve.
fn start_rings(
    session: &fuser::Session<Fuse>,
    fs: &Arc<KmsFs>,
    o: &MountOptions,
    granted: bool,
) -> Result<bool> {
    let started = if granted {
        session
            .as_fd()
            .try_clone_to_owned()
            .and_then(|dev| {
                uring::start(
                    dev,
                    uring::Served {
                        fs: fs.clone(),
                        ttl: o.attr_ttl,
                        owner_only: (!o.allow_other).then(|| nix::unistd::geteuid().as_raw()),
                        // A READ decrypts whole blocks in place: room for two more.
                        payload_size: crate::fs::fuse::MAX_WRITE as usize
                            + 2 * crate::fs::contentenc::BLOCK as usize,
                    },
                )
            })
            .map_err(|e| format!("starting the io_uring queues: {e}"))
    } else {
        Err("the kernel did not grant FUSE over io_uring".to_string())
    };
    match started {
        Ok(()) => Ok(true),
        Err(e) if o.io_uring == IoUringMode::On => Err(KmsError::validation(e)),
        Err(e) => {
            log::warn!(
                "{e}: serving through /dev/fuse, on one thread (--threads applies only without io_uring)"
            );
            Ok(false)
        }
    }
}

/// Mounts and serves until unmounted or sent SIGTERM/SIGINT/SIGHUP (which unmount cleanly).
/// `ready` runs once the mount is live.
pub fn serve(fs: KmsFs, mountpoint: &Path, o: &MountOptions, ready: impl FnOnce()) -> Result<()> {
    use nix::sys::signal::{SigSet, Signal};
    let cipherdir = fs.root().to_path_buf();
    // Block the signals in every thread; one thread waits for them.
    let mut sigs = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        sigs.add(s);
    }
    sigs.thread_block()
        .map_err(|e| KmsError::internal(format!("signal mask: {e}")))?;
    let fs = Arc::new(fs);
    // The crypto workers start now, from this thread: threads inherit their creator's name and
    // scheduling class, and the first parallel run may otherwise come from an idle-class ring
    // thread (workers at idle priority, named after it).
    if let Err(e) = rayon::ThreadPoolBuilder::new()
        .thread_name(|i| format!("kmsfs-crypt{i}"))
        .build_global()
    {
        log::debug!("crypto workers: {e}");
    }
    let want_ring = match o.io_uring {
        IoUringMode::Off => false,
        IoUringMode::Auto => uring::enabled(),
        IoUringMode::On => {
            uring::enable().map_err(|e| {
                KmsError::validation(format!(
                    "--io-uring on: turning on {}: {e}",
                    uring::ENABLE_PARAM
                ))
            })?;
            true
        }
    };
    let granted = Arc::new(AtomicBool::new(false));
    let fuse = Fuse {
        fs: fs.clone(),
        ttl: o.attr_ttl,
        io_uring: want_ring.then(|| granted.clone()),
        forget_pace: Default::default(),
    };
    // Resolved before mounting: once mounted, the path's last step is served by this daemon.
    let canonical = mountpoint
        .canonicalize()
        .unwrap_or_else(|_| mountpoint.to_path_buf());
    let session = fuser::Session::new(fuse, mountpoint, &fuse_config(&cipherdir, o, want_ring))
        .map_err(|e| KmsError::validation(format!("mounting on {}: {e}", mountpoint.display())))?;
    let device = mounted_device(&canonical);
    // After the INIT handshake (done by Session::new), which would lower it again.
    if o.readahead_kib > 0 {
        set_readahead(device.as_deref(), o.readahead_kib);
    }
    let rings = want_ring && start_rings(&session, &fs, o, granted.load(Ordering::SeqCst))?;
    let own = OwnMount {
        dev: Arc::new(
            session
                .as_fd()
                .try_clone_to_owned()
                .map_err(|e| KmsError::internal(format!("FUSE device: {e}")))?,
        ),
        device,
        path: canonical,
    };
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let idle = o.idle.map(|limit| (limit, own.clone()));
    let watcher = spawn_key_watcher(fs, session.notifier(), idle, stop.clone());
    let on_signal = own.clone();
    // Every signal tries again: an unmount refused while the mount is busy (a process has its
    // working directory inside) can be asked for once that process has left.
    std::thread::spawn(move || {
        while let Ok(sig) = sigs.wait() {
            log::info!("{sig:?}: unmounting {}", on_signal.path.display());
            if let Err(e) = on_signal.unmount(false) {
                log::error!("{e}");
            }
        }
    });
    ready();
    crate::fs::notify::ready();
    if rings {
        // The session's thread (started from this one, inheriting its class) now only gets
        // FORGETs: at idle priority it wakes less often and takes them in batches.
        uring::set_idle_class();
    }
    // fuser unmounts the path when its mount handle drops, also after the kernel ended the
    // session (0.18 reads the device's POLLERR the wrong way round, fixed upstream in
    // fuser#703): a mount made at the same path since would go down with this daemon. spawn()
    // moves that handle out of the session; it is never dropped, and unmounting is ours.
    let mut background = session
        .spawn()
        .map_err(|e| KmsError::internal(format!("FUSE session: {e}")))?;
    let events = std::mem::replace(&mut background.guard, std::thread::spawn(|| Ok(())));
    let r = match events.join() {
        Ok(r) => r.map_err(|e| KmsError::internal(format!("FUSE session: {e}"))),
        Err(_) => Err(KmsError::internal("FUSE session thread panicked")),
    };
    // The session ended with an error while the kernel still serves the mount: take it down.
    if let Err(e) = own.unmount(true) {
        log::error!("{e}");
    }
    // What it holds (the mount handle, a sender on the device) goes with the process, which
    // ends once serve returns.
    std::mem::forget(background);
    crate::fs::notify::stopping();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let _ = watcher.join();
    r
}

/// This daemon's mount: unmounted only while its kernel session is live and the topmost mount
/// at its path is still this one, so that a mount made at the same path since (after this one
/// ended, or was detached lazily and still serves open files) is never taken down.
#[derive(Clone)]
struct OwnMount {
    dev: Arc<OwnedFd>,
    path: PathBuf,
    /// The mount's device number in mountinfo, as found once mounted.
    device: Option<String>,
}

impl OwnMount {
    fn unmount(&self, lazy: bool) -> Result<()> {
        if !session_live(self.dev.as_fd()) {
            return Ok(());
        }
        if let Some(ours) = &self.device {
            if mounted_device(&self.path).as_ref() != Some(ours) {
                log::info!(
                    "{} is no longer this daemon's mount: not unmounting it",
                    self.path.display()
                );
                return Ok(());
            }
        }
        unmount(&self.path, lazy)
    }
}

/// Whether the kernel still serves the FUSE connection behind `dev`. It reports POLLERR on the
/// device once the mount is gone or the connection aborted (what libfuse checks before it
/// unmounts). Any descriptor reporting an error or hang-up counts as ended.
fn session_live(dev: BorrowedFd<'_>) -> bool {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let mut fds = [PollFd::new(dev, PollFlags::empty())];
    loop {
        match poll(&mut fds, PollTimeout::ZERO) {
            Ok(0) => return true,
            Ok(_) => {
                let ended = PollFlags::POLLERR | PollFlags::POLLHUP | PollFlags::POLLNVAL;
                return !fds[0].revents().is_some_and(|r| r.intersects(ended));
            }
            Err(nix::errno::Errno::EINTR) => continue,
            // Cannot tell (ENOMEM): unmount, rather than leave a dead mount behind.
            Err(_) => return true,
        }
    }
}

/// How often a mount looks for key state changes: well inside the one second in which a
/// disabled key must stop serving plaintext.
pub const KEY_POLL: Duration = Duration::from_millis(200);
/// How often a mount applies due automatic rotations and deletions.
pub const MAINTENANCE_EVERY: Duration = Duration::from_secs(60);

/// Polls the key store; when it changes, wipes data keys that may no longer be used and has the
/// kernel drop what it cached of those files, and syncs the mount's audit records, each round.
/// With `idle`, also unmounts once the mount has had no requests for that long and no open
/// files (as gocryptfs -idle).
fn spawn_key_watcher(
    fs: Arc<KmsFs>,
    notifier: fuser::Notifier,
    mut idle: Option<(Duration, OwnMount)>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut last_maintenance = std::time::Instant::now() - MAINTENANCE_EVERY;
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            if let Some((limit, unmounter)) = &mut idle {
                if fs.idle_for() >= *limit && fs.open_handles() == 0 {
                    log::info!(
                        "idle for {}: unmounting",
                        humantime::format_duration(*limit)
                    );
                    match unmounter.unmount(false) {
                        Ok(()) => idle = None,
                        // Busy (a process has its working directory inside): try again later.
                        Err(e) => log::info!("idle unmount: {e}"),
                    }
                }
            }
            if last_maintenance.elapsed() >= MAINTENANCE_EVERY {
                fs.maintain();
                last_maintenance = std::time::Instant::now();
            }
            for ino in fs.revalidate() {
                if let Err(e) = notifier.inval_inode(fuser::INodeNo(ino), 0, 0) {
                    log::debug!("invalidating inode {ino}: {e}");
                }
            }
            let _ = fs.flush_audit();
            std::thread::sleep(KEY_POLL);
        }
        // The mount is gone: nothing it did stays unsynced in the audit log.
        let _ = fs.flush_audit();
    })
}

/// Unmounts through fusermount3 (works for the mount's owner), falling back to umount2 as root.
pub fn unmount(mountpoint: &Path, lazy: bool) -> Result<()> {
    let mut cmd = std::process::Command::new("fusermount3");
    cmd.arg("-u").arg("-q");
    if lazy {
        cmd.arg("-z");
    }
    match cmd.arg(mountpoint).status() {
        Ok(s) if s.success() => return Ok(()),
        _ => {}
    }
    let flags = if lazy {
        nix::mount::MntFlags::MNT_DETACH
    } else {
        nix::mount::MntFlags::empty()
    };
    nix::mount::umount2(mountpoint, flags)
        .map_err(|e| KmsError::validation(format!("unmounting {}: {e}", mountpoint.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_ends_when_its_descriptor_reports_an_error() {
        // A pipe's write end reports POLLERR once its read end is gone, as /dev/fuse does once
        // the kernel ends the session.
        let (r, w) = nix::unistd::pipe().expect("pipe");
        assert!(session_live(w.as_fd()));
        drop(r);
        assert!(!session_live(w.as_fd()));
    }

    #[test]
    fn parses_mountinfo() {
        let t = "36 35 98:0 /mnt1 /mnt/with\\040space rw,noatime master:1 - ext3 /dev/root rw\n\
                 37 35 0:5 / /proc rw - proc proc rw\n";
        assert_eq!(
            mount_points(t),
            vec![PathBuf::from("/mnt/with space"), PathBuf::from("/proc")]
        );
        assert_eq!(
            mounts(t)[1],
            (PathBuf::from("proc"), PathBuf::from("/proc"))
        );
        assert_eq!(unescape_mountinfo("a\\011b"), "a\tb");
        assert_eq!(
            device_of(t, Path::new("/mnt/with space")).as_deref(),
            Some("98:0")
        );
        let stacked = format!("{t}40 36 0:41 / /mnt/with\\040space rw - fuse.kmsfs /c rw\n");
        assert_eq!(
            device_of(&stacked, Path::new("/mnt/with space")).as_deref(),
            Some("0:41")
        );
        assert_eq!(device_of(t, Path::new("/mnt")), None);
        assert_eq!(unescape_mountinfo("trailing\\"), "trailing\\");
    }
}
