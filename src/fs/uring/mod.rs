//! FUSE over io_uring (Linux 6.14+): the kernel queues each request on a ring of the CPU its
//! caller runs on, and a daemon thread pinned to that CPU serves it, so a request and its reply
//! need no hand-off between CPUs. On a VM those hand-offs (an inter-processor interrupt and a
//! wake-up of a halted vCPU each way) bound small I/O; see docs/PERFORMANCE.md.
//!
//! The /dev/fuse session (fuser) still does the INIT handshake and serves FORGET and INTERRUPT,
//! which the kernel keeps on the device, and whatever arrives before every queue is registered.
//! `abi` owns the wire format, `dispatch` maps requests onto `KmsFs` like `fs::fuse` does, and
//! this file owns the rings and their threads.

pub mod abi;
mod dispatch;
pub mod pace;

use crate::fs::errno::Errno;
use crate::fs::ops::{KmsFs, Requester};
use abi::{InHeader, Out};
use io_uring::{IoUring, cqueue, opcode, squeue, types};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use zeroize::Zeroize;

/// The fuse module's switch; off by default in the kernels that have it.
pub const ENABLE_PARAM: &str = "/sys/module/fuse/parameters/enable_uring";
/// Ring entries per queue: requests in service at once (large reads and writes go to workers).
const ENTRIES_PER_QUEUE: usize = 4;
/// Submission slots: every entry's command, the tick and the wake-up read.
const RING_DEPTH: u32 = 2 * ENTRIES_PER_QUEUE as u32 + 4;

/// How the mount's requests travel; `kmsfs status` shows it.
#[derive(Default)]
pub struct Stats {
    /// Queues registered with the kernel: one per possible CPU, or 0 on /dev/fuse alone.
    pub queues: AtomicUsize,
    /// Requests served through the rings.
    pub requests: AtomicU64,
}

/// Whether the kernel offers FUSE over io_uring to new mounts now.
pub fn enabled() -> bool {
    std::fs::read_to_string(ENABLE_PARAM).is_ok_and(|s| s.trim() == "Y")
}

/// Turns the fuse module's io_uring switch on (root only); an error if this kernel lacks it.
pub fn enable() -> io::Result<()> {
    if enabled() {
        return Ok(());
    }
    if !Path::new(ENABLE_PARAM).exists() {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "this kernel has no FUSE over io_uring (Linux 6.14 or later, fuse module)",
        ));
    }
    std::fs::write(ENABLE_PARAM, "Y")?;
    log::info!("turned on {ENABLE_PARAM}");
    Ok(())
}

/// The number of queues the kernel expects: one per possible CPU ("0-3", "0,2-5").
pub fn parse_cpu_list(s: &str) -> Option<usize> {
    let mut max = None;
    for part in s.trim().split(',') {
        let last = part.rsplit('-').next()?.trim().parse::<usize>().ok()?;
        max = max.max(Some(last));
    }
    max.map(|m| m + 1)
}

fn possible_cpus() -> io::Result<usize> {
    let s = std::fs::read_to_string("/sys/devices/system/cpu/possible")?;
    parse_cpu_list(&s).ok_or_else(|| io::Error::other(format!("cpu list {s:?}")))
}

/// What the queue threads serve with.
pub struct Served {
    pub fs: Arc<KmsFs>,
    pub ttl: Duration,
    pub owner_only: Option<u32>,
    /// Bytes of payload buffer per entry: at least the negotiated max_write and max_pages.
    pub payload_size: usize,
}

impl Served {
    fn ctx(&self) -> dispatch::Ctx<'_> {
        dispatch::Ctx {
            fs: &self.fs,
            ttl: self.ttl,
            owner_only: self.owner_only,
        }
    }
}

/// Starts one pinned thread per possible CPU, each registering its ring entries on `dev`, the
/// session's /dev/fuse descriptor. Returns once every queue is registered (or one failed);
/// threads end when the connection goes away.
pub fn start(dev: OwnedFd, served: Served) -> io::Result<()> {
    let queues = possible_cpus()?;
    // Started here, not from a (pinned) queue thread: threads inherit their CPU mask.
    workers()?;
    let dev = Arc::new(dev);
    let served = Arc::new(served);
    let (tx, rx) = std::sync::mpsc::channel();
    for qid in 0..queues {
        let (dev, served, tx) = (dev.clone(), served.clone(), tx.clone());
        std::thread::Builder::new()
            .name(format!("kmsfs-ring{qid}"))
            .spawn(move || {
                let ring = match register(qid, &dev, served.payload_size) {
                    Ok(r) => {
                        let _ = tx.send(Ok(()));
                        r
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                drop(tx);
                if let Err(e) = serve_queue(ring, &dev, &served) {
                    // The kernel keeps routing this CPU's requests here: rather than leave
                    // callers hanging, end the daemon (the kernel then fails them, ENOTCONN).
                    log::error!("io_uring queue {qid}: {e}; stopping the mount daemon");
                    std::process::exit(1);
                }
            })?;
    }
    drop(tx);
    for r in rx {
        r?;
    }
    // Every queue is registered: the kernel now routes requests to the rings.
    served.fs.ring.queues.store(queues, Ordering::Relaxed);
    Ok(())
}

/// One ring entry's buffers, at fixed addresses for as long as the kernel holds them.
struct Entry {
    header: Box<[u8; abi::RING_HEADER_SIZE]>,
    payload: Box<[u8]>,
    iov: Box<[libc::iovec; 2]>,
    /// Bytes of `payload` the last request and reply used (see `settle`).
    dirty: usize,
}

impl Drop for Entry {
    fn drop(&mut self) {
        self.payload.zeroize();
    }
}

// SAFETY: the iovecs' pointers only name the entry's own boxed buffers, which move with it; the
// kernel writes them only between a command's submission and its completion, when no thread
// holds the entry.
unsafe impl Send for Entry {}

impl Entry {
    fn new(payload_size: usize) -> Entry {
        let mut header = Box::new([0u8; abi::RING_HEADER_SIZE]);
        let mut payload = vec![0u8; payload_size].into_boxed_slice();
        let iov = Box::new([
            libc::iovec {
                iov_base: header.as_mut_ptr().cast(),
                iov_len: header.len(),
            },
            libc::iovec {
                iov_base: payload.as_mut_ptr().cast(),
                iov_len: payload.len(),
            },
        ]);
        Entry {
            header,
            payload,
            iov,
            dirty: 0,
        }
    }

    /// Records that the request just served (its data and its reply) used the payload's first
    /// `used` bytes, and wipes what the previous one left beyond them (write data, a READ's
    /// plaintext); what lies below, this one overwrote. Wiping after serving rather than
    /// before spares a stream of 1 MiB READs or WRITEs a memset of each MiB that the next
    /// request overwrites anyway.
    fn settle(&mut self, used: usize) {
        let len = self.payload.len();
        let stale = used.min(len)..self.dirty.min(len);
        if !stale.is_empty() {
            self.payload[stale].zeroize();
        }
        self.dirty = used;
    }
}

/// A FUSE ring command. The crate's builder has no way to set `len`, which REGISTER must set
/// to the iovec count; `Entry128` is `repr(C)` over the kernel's SQE, whose `len` is at byte 24.
fn command(
    dev: i32,
    cmd_op: u32,
    cmd: [u8; 80],
    iov: Option<&[libc::iovec; 2]>,
) -> squeue::Entry128 {
    let mut c = opcode::UringCmd80::new(types::Fd(dev), cmd_op).cmd(cmd);
    if let Some(iov) = iov {
        c = c.addr(Some(iov.as_ptr() as u64));
    }
    let entry = c.build();
    if iov.is_none() {
        return entry;
    }
    // SAFETY: Entry128 is repr(C), 128 plain bytes (size checked by transmute); we only set the
    // SQE's u32 `len` field at its uapi offset.
    let mut raw: [u8; 128] = unsafe { std::mem::transmute::<squeue::Entry128, [u8; 128]>(entry) };
    raw[24..28].copy_from_slice(&2u32.to_le_bytes());
    unsafe { std::mem::transmute::<[u8; 128], squeue::Entry128>(raw) }
}

fn pin_to(cpu: usize) {
    if let Err(e) = crate::fs::sys::pin_thread(cpu) {
        // An offline CPU: its queue still has to be registered, and serves no one.
        log::debug!("pinning ring thread to CPU {cpu}: {e}");
    }
}

/// How often a queue thread checks that it is not being starved.
const TICK: Duration = Duration::from_millis(100);
/// A tick this late means other work kept the thread off its CPU.
const STARVED: Duration = Duration::from_millis(10);
/// How long a starved thread stays at normal priority before trying idle again.
const PROMOTED_FOR: Duration = Duration::from_secs(5);

/// The queue threads' scheduling class. While a thread runs SCHED_IDLE, the scheduler counts
/// its CPU as free when the caller it just answered wakes up, and wakes the caller there instead
/// of on another (idle, halted) vCPU; the caller's next request then lands on this same queue.
/// That keeps a request-reply pair on one CPU: 2x the small I/O rate on a VM (README). The price
/// is that normal work on the CPU (a compiler, say) starves an idle-class thread; a thread that
/// sees its own timer tick run late therefore goes back to normal priority for a while.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Idle,
    Normal { until: std::time::Instant },
}

impl Class {
    /// The class after a tick that fired `late` after it was due; `now` is when it was seen.
    fn after_tick(self, now: std::time::Instant, late: Duration) -> Class {
        match self {
            _ if late >= STARVED => Class::Normal {
                until: now + PROMOTED_FOR,
            },
            Class::Normal { until } if now < until => self,
            _ => Class::Idle,
        }
    }

    fn apply(self) {
        apply_idle(self == Class::Idle);
    }
}

/// Puts the calling thread in the idle class (where it could leave it again) or the normal one.
fn apply_idle(idle: bool) {
    let policy = match idle {
        true if !idle_class_usable() => return,
        true => libc::SCHED_IDLE,
        false => libc::SCHED_OTHER,
    };
    if let Err(e) = crate::fs::sys::set_sched_policy(policy) {
        log::warn!("scheduling policy {policy}: {e}");
    }
}

/// Whether a thread in the idle class may leave it again: that takes CAP_SYS_NICE or an
/// RLIMIT_NICE allowing nice 0, which an ordinary user's mount often lacks. Without it the
/// starvation guard could not work, so nothing enters the idle class. Probed once, on a
/// throwaway thread.
fn idle_class_usable() -> bool {
    static USABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *USABLE.get_or_init(|| {
        let ok = std::thread::spawn(|| {
            crate::fs::sys::set_sched_policy(libc::SCHED_IDLE).is_ok()
                && crate::fs::sys::set_sched_policy(libc::SCHED_OTHER).is_ok()
        })
        .join()
        .unwrap_or(false);
        if !ok {
            log::info!(
                "io_uring threads stay at normal priority: leaving the idle class needs \
                 CAP_SYS_NICE or RLIMIT_NICE (small I/O is slower)"
            );
        }
        ok
    })
}

/// Puts the calling thread (and the threads it starts) in the idle scheduling class.
pub fn set_idle_class() {
    apply_idle(true);
}

/// The user_data of the tick's timeout and of the workers' wake-up; entries use their index.
const TICK_DATA: u64 = u64::MAX;
const WAKE_DATA: u64 = u64::MAX - 1;
/// READs and WRITEs of at least this many bytes are served on a worker (see `offloaded`).
const OFFLOAD_SIZE: u32 = 128 << 10;

type Ring = IoUring<squeue::Entry128, cqueue::Entry>;

/// A queue's ring with its registered entries.
struct Queue {
    qid: u16,
    ring: Ring,
    entries: Vec<Entry>,
}

/// Creates queue `qid`'s ring and registers its entries; the kernel refuses a bad registration
/// at once, so an error shows up here.
fn register(qid: usize, dev: &OwnedFd, payload_size: usize) -> io::Result<Queue> {
    pin_to(qid);
    let qid = u16::try_from(qid).map_err(io::Error::other)?;
    let entries: Vec<Entry> = (0..ENTRIES_PER_QUEUE)
        .map(|_| Entry::new(payload_size))
        .collect();
    // After the entries: on an early return the ring goes first, cancelling what it holds.
    let mut ring: Ring = IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(RING_DEPTH)?;
    for (i, e) in entries.iter().enumerate() {
        let sqe = command(
            dev.as_raw_fd(),
            abi::CMD_REGISTER,
            abi::cmd_req(0, qid),
            Some(&e.iov),
        );
        // The entries' buffers live in the Queue, which drops its ring before them.
        submit(&mut ring, sqe.user_data(i as u64))?;
    }
    ring.submit()?;
    if let Some(c) = ring.completion().next() {
        if c.result() < 0 {
            return Err(io::Error::from_raw_os_error(-c.result()));
        }
        return Err(io::Error::other("unexpected completion of a registration"));
    }
    Ok(Queue { qid, ring, entries })
}

/// A request served off the queue thread, handed back for its commit.
struct Done {
    slot: usize,
    entry: Entry,
    commit_id: u64,
}

/// Whether the request in `header` is a READ or WRITE large enough to serve on a worker
/// thread. The kernel's readahead sends several READs at once, and serving them one after
/// another on the queue thread would leave the other CPUs idle between decryptions. A large
/// WRITE ran slower on the queue thread, pinned to the writer's CPU, than on a worker free to
/// run where there is room (fio 1 MiB writes: 598-640 vs 697-724 MiB/s).
fn offloaded(header: &[u8]) -> bool {
    // `size` sits at the same offset in fuse_read_in and fuse_write_in.
    let size = abi::u32_at(header, abi::OP_IN_OFFSET + 16).unwrap_or(0);
    InHeader::parse(header).is_ok_and(|h| h.opcode == abi::op::READ || h.opcode == abi::op::WRITE)
        && size >= OFFLOAD_SIZE
}

fn submit(ring: &mut Ring, sqe: squeue::Entry128) -> io::Result<()> {
    // SAFETY: every buffer a queued command names (entry buffers and their iovecs, the tick,
    // the wake-up counter) lives until the ring is dropped, which cancels what is still queued.
    unsafe { ring.submission().push(&sqe) }.map_err(|_| io::Error::other("submission queue full"))
}

/// A request for a worker, with when it was queued.
type IoJob = (std::time::Instant, Box<dyn FnOnce() + Send>);

/// Workers for offloaded READs and WRITEs: plain threads, one request each at a time, so a
/// worker never picks up another job while it holds a file's lock (a thread-pool worker
/// waiting inside a parallel decryption would, and a second READ of the same file queued
/// behind a writer would then wait for the first forever; their decryption still spreads over
/// the crypto pool, whose jobs take no locks). They run in the idle class: the reader they
/// serve then gets a CPU at once when its data arrives, and asks for more sooner (cold reads
/// 1.2 -> 1.4 GB/s here); a worker whose job waited for it `STARVED` longer than requests
/// queue behind each other goes to normal priority for a while, as the queue threads do.
fn workers() -> io::Result<&'static std::sync::mpsc::SyncSender<IoJob>> {
    static WORKERS: std::sync::OnceLock<std::sync::mpsc::SyncSender<IoJob>> =
        std::sync::OnceLock::new();
    if let Some(tx) = WORKERS.get() {
        return Ok(tx);
    }
    let (tx, rx) = std::sync::mpsc::sync_channel::<IoJob>(64);
    let rx = Arc::new(std::sync::Mutex::new(rx));
    for i in 0..std::thread::available_parallelism().map_or(2, |n| n.get()) {
        let rx = rx.clone();
        std::thread::Builder::new()
            .name(format!("kmsfs-io{i}"))
            .spawn(move || {
                Class::Idle.apply();
                loop {
                    let job = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                    let Ok((queued, job)) = job else { return };
                    worker_class(queued);
                    job();
                }
            })?;
    }
    Ok(WORKERS.get_or_init(|| tx))
}

/// How long a request may wait for a worker behind others (readahead queues a few 1 MiB
/// READs, about 1.5 ms each) before the wait counts as starvation.
const QUEUEING: Duration = Duration::from_millis(10);

/// An I/O worker's class before a job queued at `queued` (see `workers`).
fn worker_class(queued: std::time::Instant) {
    thread_local! {
        static CLASS: std::cell::Cell<Class> = const { std::cell::Cell::new(Class::Idle) };
    }
    let now = std::time::Instant::now();
    CLASS.with(|c| {
        let waited = now.saturating_duration_since(queued);
        let next = c.get().after_tick(now, waited.saturating_sub(QUEUEING));
        if std::mem::discriminant(&next) != std::mem::discriminant(&c.get()) {
            next.apply();
        }
        c.set(next);
    });
}

fn serve_queue(q: Queue, dev: &OwnedFd, s: &Arc<Served>) -> io::Result<()> {
    let workers = workers()?;
    let ctx = s.ctx();
    let Queue { qid, ring, entries } = q;
    let mut slots: Vec<Option<Entry>> = entries.into_iter().map(Some).collect();
    let tick = types::Timespec::new()
        .sec(TICK.as_secs())
        .nsec(TICK.subsec_nanos());
    let mut wake_buf = Box::new([0u8; 8]);
    // Declared after every buffer its commands name, so it is dropped (cancelling them) first.
    let mut ring = ring;
    let mut scratch = Vec::new();
    let mut class = Class::Idle;
    class.apply();
    // While workers serve offloaded requests, this thread runs at normal priority: at idle it
    // would wait behind those very workers to commit their replies.
    let mut outstanding = 0usize;
    let mut normal_now = false;
    let mut settle = |class: Class, outstanding: usize| {
        let normal = outstanding > 0 || matches!(class, Class::Normal { .. });
        if normal != normal_now {
            normal_now = normal;
            apply_idle(!normal);
        }
    };
    let mut tick_armed = std::time::Instant::now();
    let arm_tick = |ring: &mut Ring| {
        submit(
            ring,
            opcode::Timeout::new(&tick)
                .build()
                .user_data(TICK_DATA)
                .into(),
        )
    };
    // Workers hand served entries back and bump `wake`, whose pending read wakes this thread.
    // SAFETY: eventfd(2) returns a new descriptor or -1.
    let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor nobody else owns.
    let wake = Arc::new(unsafe { OwnedFd::from_raw_fd(raw) });
    let arm_wake = |ring: &mut Ring, buf: &mut [u8; 8]| {
        let r = opcode::Read::new(types::Fd(wake.as_raw_fd()), buf.as_mut_ptr(), 8);
        submit(ring, r.build().user_data(WAKE_DATA).into())
    };
    let (done_tx, done_rx) = std::sync::mpsc::channel::<Done>();
    arm_tick(&mut ring)?;
    arm_wake(&mut ring, &mut wake_buf)?;
    let commit = |ring: &mut Ring, slot: usize, commit_id: u64| {
        let c = command(
            dev.as_raw_fd(),
            abi::CMD_COMMIT_AND_FETCH,
            abi::cmd_req(commit_id, qid),
            None,
        );
        submit(ring, c.user_data(slot as u64))
    };
    let mut completed: Vec<(u64, i32)> = Vec::new();
    loop {
        match ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e) => return Err(e),
        }
        completed.clear();
        completed.extend(ring.completion().map(|c| (c.user_data(), c.result())));
        for &(data, res) in &completed {
            if data == TICK_DATA {
                let now = std::time::Instant::now();
                let late = now.duration_since(tick_armed).saturating_sub(TICK);
                let next = class.after_tick(now, late);
                if std::mem::discriminant(&next) != std::mem::discriminant(&class) {
                    log::debug!("io_uring queue {}: {next:?} (tick {late:?} late)", qid);
                }
                class = next;
                settle(class, outstanding);
                tick_armed = now;
                arm_tick(&mut ring)?;
                continue;
            }
            if data == WAKE_DATA {
                for d in done_rx.try_iter() {
                    outstanding = outstanding.saturating_sub(1);
                    if let Some(slot) = slots.get_mut(d.slot) {
                        *slot = Some(d.entry);
                        commit(&mut ring, d.slot, d.commit_id)?;
                    }
                }
                settle(class, outstanding);
                arm_wake(&mut ring, &mut wake_buf)?;
                continue;
            }
            if res < 0 {
                return match -res {
                    // Unmounted or aborted: the connection is gone.
                    libc::ENOTCONN | libc::ECONNABORTED | libc::ECANCELED | libc::ENODEV => Ok(()),
                    _ => Err(io::Error::from_raw_os_error(-res)),
                };
            }
            let slot = data as usize;
            let mut e = slots
                .get_mut(slot)
                .and_then(Option::take)
                .ok_or_else(|| io::Error::other("completion for an entry not in the ring"))?;
            if offloaded(&e.header[..]) {
                outstanding += 1;
                settle(class, outstanding);
                let (s, tx, wake) = (s.clone(), done_tx.clone(), wake.clone());
                let queued = std::time::Instant::now();
                let job = move || {
                    let commit_id = serve_entry(&s.ctx(), &mut e, &mut Vec::new());
                    if tx
                        .send(Done {
                            slot,
                            entry: e,
                            commit_id,
                        })
                        .is_ok()
                    {
                        let one = 1u64.to_ne_bytes();
                        // SAFETY: writes 8 bytes from a live buffer to our eventfd.
                        unsafe { libc::write(wake.as_raw_fd(), one.as_ptr().cast(), 8) };
                    }
                };
                workers
                    .send((queued, Box::new(job)))
                    .map_err(|_| io::Error::other("the I/O workers are gone"))?;
                continue;
            }
            let commit_id = serve_entry(&ctx, &mut e, &mut scratch);
            slots[slot] = Some(e);
            commit(&mut ring, slot, commit_id)?;
        }
    }
}

/// Serves the request in `e` and writes the reply into it; returns the commit id.
fn serve_entry(ctx: &dispatch::Ctx, e: &mut Entry, scratch: &mut Vec<u8>) -> u64 {
    let (commit_id, payload_len) = abi::ent_in(&e.header[..]).unwrap_or((0, 0));
    let (unique, result, written) = match InHeader::parse(&e.header[..]) {
        Ok(h) => {
            // A bug in one request must not take the CPU's queue (and its callers) with it.
            let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                serve_request(ctx, &h, e, payload_len, scratch)
            }));
            let (result, written) = served.unwrap_or((Err(Errno::EIO), e.payload.len()));
            (h.unique, result, written)
        }
        Err(err) => (commit_id, Err(err), 0),
    };
    ctx.fs.ring.requests.fetch_add(1, Ordering::Relaxed);
    let reply = result.as_ref().map_or(0, |n| *n);
    // What the last request left is wiped now, as far as this one did not overwrite it (the
    // kernel had read that reply before handing the entry back). A failed request may have
    // written part of a reply (a listing, say): counted, so the next one wipes it.
    e.settle(written.max(reply).max(payload_len));
    match result {
        Ok(n) => abi::set_reply(&mut e.header[..], unique, None, n),
        Err(err) => abi::set_reply(&mut e.header[..], unique, Some(err), 0),
    }
    commit_id
}

/// The reply's length, and how many bytes of the payload the reply wrote (even if it failed).
fn serve_request(
    ctx: &dispatch::Ctx,
    h: &InHeader,
    e: &mut Entry,
    payload_len: usize,
    scratch: &mut Vec<u8>,
) -> (Result<usize, Errno>, usize) {
    let r = Requester {
        uid: h.uid,
        gid: h.gid,
        pid: h.pid,
    };
    let mut op_in = [0u8; abi::OP_IN_SIZE];
    op_in.copy_from_slice(&e.header[abi::OP_IN_OFFSET..abi::OP_IN_OFFSET + abi::OP_IN_SIZE]);
    let Some(given) = e.payload.get(..payload_len) else {
        return (Err(Errno::EINVAL), 0);
    };
    if h.opcode == abi::op::WRITE {
        // The data stays where the kernel put it; the 8-byte reply waits aside.
        let mut small = [0u8; 16];
        let served = abi::parse(h.opcode, &op_in, given).and_then(|op| {
            let mut out = Out::new(&mut small);
            dispatch::serve(ctx, h.nodeid, r, op, &mut out).map(|()| out.len())
        });
        if let Ok(n) = served {
            e.payload[..n].copy_from_slice(&small[..n]);
        }
        return (served, 0);
    }
    // Names and xattr values (small) move aside so the reply can use the payload buffer.
    scratch.clear();
    scratch.extend_from_slice(given);
    let mut out = Out::new(&mut e.payload[..]);
    let served = abi::parse(h.opcode, &op_in, scratch)
        .and_then(|op| dispatch::serve(ctx, h.nodeid, r, op, &mut out))
        .map(|()| out.len());
    let written = out.len();
    scratch.as_mut_slice().zeroize();
    (served, written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_late_tick_promotes_for_a_while_then_idle_again() {
        let t0 = std::time::Instant::now();
        let ms = Duration::from_millis;
        assert_eq!(Class::Idle.after_tick(t0, ms(1)), Class::Idle);
        let promoted = Class::Idle.after_tick(t0, STARVED);
        assert_eq!(
            promoted,
            Class::Normal {
                until: t0 + PROMOTED_FOR
            }
        );
        assert_eq!(promoted.after_tick(t0 + ms(100), ms(0)), promoted);
        // Starved again while promoted: the period starts over.
        assert_eq!(
            promoted.after_tick(t0 + ms(200), ms(50)),
            Class::Normal {
                until: t0 + ms(200) + PROMOTED_FOR
            }
        );
        assert_eq!(promoted.after_tick(t0 + PROMOTED_FOR, ms(0)), Class::Idle);
    }

    #[test]
    fn counts_possible_cpus() {
        assert_eq!(parse_cpu_list("0-1\n"), Some(2));
        assert_eq!(parse_cpu_list("0"), Some(1));
        assert_eq!(parse_cpu_list("0,2-5,7"), Some(8));
        assert_eq!(parse_cpu_list(""), None);
        assert_eq!(parse_cpu_list("x-y"), None);
    }

    #[test]
    fn what_a_request_leaves_beyond_the_next_ones_use_is_wiped() {
        let mut e = Entry::new(8192);
        e.payload[..5000].fill(0xaa);
        e.settle(5000);
        assert!(
            e.payload[..5000].iter().all(|&b| b == 0xaa),
            "its own bytes stay"
        );
        // A shorter request overwrites the start: the rest of the old bytes go.
        e.payload[..100].fill(0xbb);
        e.settle(100);
        assert!(e.payload[..100].iter().all(|&b| b == 0xbb));
        assert!(e.payload[100..].iter().all(|&b| b == 0));
        assert_eq!(e.dirty, 100);
        // A longer one leaves nothing stale; a use past the buffer (a failed request counts
        // the whole payload) is clamped.
        e.payload[..6000].fill(0xcc);
        e.settle(6000);
        assert!(e.payload[..6000].iter().all(|&b| b == 0xcc));
        e.settle(usize::MAX);
        e.settle(0);
        assert!(e.payload.iter().all(|&b| b == 0));
    }

    #[test]
    fn register_commands_carry_the_iovec_count_and_queue() {
        let e = Entry::new(8192);
        let sqe = command(7, abi::CMD_REGISTER, abi::cmd_req(0, 1), Some(&e.iov));
        // SAFETY: as in `command`.
        let raw: [u8; 128] = unsafe { std::mem::transmute::<squeue::Entry128, [u8; 128]>(sqe) };
        assert_eq!(raw[0], io_uring::opcode::UringCmd80::CODE);
        assert_eq!(&raw[4..8], &7i32.to_le_bytes());
        assert_eq!(&raw[8..12], &abi::CMD_REGISTER.to_le_bytes());
        assert_eq!(&raw[16..24], &(e.iov.as_ptr() as u64).to_le_bytes());
        assert_eq!(&raw[24..28], &2u32.to_le_bytes());
        // The command area starts at byte 48: flags, commit_id, qid.
        assert_eq!(&raw[64..66], &1u16.to_le_bytes());
        assert_eq!(e.iov[0].iov_len, abi::RING_HEADER_SIZE);
        assert_eq!(e.iov[1].iov_len, 8192);
    }
}
