//! The audit log: one JSON record per line, each carrying an HMAC over its content and the previous
//! record's MAC. Only a holder of the root key can extend the chain, so an edited, removed, inserted
//! or reordered line breaks it; audit.head holds the newest MAC, so cutting the tail is noticed too.

use crate::cryptocore;
use crate::error::{ErrorKind, KmsError, Result};
use crate::keystore::atomic;
use crate::kms::context::EncryptionContext;
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
const RECORD_LABEL: &[u8] = b"kmsfs audit record v1";
const HEAD_LABEL: &[u8] = b"kmsfs audit head v1";
const SLOT_LABEL: &[u8] = b"kmsfs audit head slot v2";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditCaller {
    pub uid: u32,
    pub user: Option<String>,
    pub pid: u32,
}

/// One audit record. Never holds plaintext or key material. Unknown fields are refused so that a
/// renamed field cannot hide from the MAC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditRecord {
    pub seq: u64,
    pub time: String,
    pub request_id: String,
    pub operation: String,
    pub caller: AuditCaller,
    pub key_id: Option<String>,
    pub key_version: Option<u32>,
    pub context: EncryptionContext,
    /// "Success", or the error's exception name.
    pub result: String,
    pub message: Option<String>,
    pub prev: String,
    pub mac: String,
}

/// What an operation reports; the log adds sequence number and chain fields.
#[derive(Debug, Clone)]
pub struct AuditEvent {
    pub time: String,
    pub request_id: String,
    pub operation: String,
    pub caller: AuditCaller,
    pub key_id: Option<String>,
    pub key_version: Option<u32>,
    pub context: EncryptionContext,
    pub result: String,
    pub message: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Head {
    seq: u64,
    mac: String,
    /// Length of audit.log after the record `seq`.
    len: u64,
    head_mac: String,
}

/// The MAC input is the record's canonical JSON with `mac` removed: keys sorted, compact (what
/// serde_json writes for a `Value`, whose maps are sorted). `MacInput` declares the fields in
/// that order and borrows them, so the form is written directly (a test checks it against the
/// `Value` route).
fn record_mac(key: &[u8], rec: &AuditRecord) -> Result<String> {
    let canonical = serde_json::to_vec(&MacInput::of(rec))
        .map_err(|e| KmsError::internal(format!("encoding audit record: {e}")))?;
    Ok(hex::encode(cryptocore::hmac_sha256(
        key,
        &[RECORD_LABEL, &canonical],
    )))
}

/// An `AuditRecord` without `mac`, its fields (and the caller's) in sorted order.
#[derive(Serialize)]
struct MacInput<'a> {
    caller: MacCaller<'a>,
    context: &'a EncryptionContext,
    key_id: &'a Option<String>,
    key_version: Option<u32>,
    message: &'a Option<String>,
    operation: &'a str,
    prev: &'a str,
    request_id: &'a str,
    result: &'a str,
    seq: u64,
    time: &'a str,
}

#[derive(Serialize)]
struct MacCaller<'a> {
    pid: u32,
    uid: u32,
    user: &'a Option<String>,
}

impl<'a> MacInput<'a> {
    fn of(r: &'a AuditRecord) -> Self {
        MacInput {
            caller: MacCaller {
                pid: r.caller.pid,
                uid: r.caller.uid,
                user: &r.caller.user,
            },
            context: &r.context,
            key_id: &r.key_id,
            key_version: r.key_version,
            message: &r.message,
            operation: &r.operation,
            prev: &r.prev,
            request_id: &r.request_id,
            result: &r.result,
            seq: r.seq,
            time: &r.time,
        }
    }
}

/// The MAC of a first-format head (the whole of audit.head).
fn head_mac(key: &[u8], seq: u64, mac: &str, len: u64) -> String {
    hex::encode(cryptocore::hmac_sha256(
        key,
        &[
            HEAD_LABEL,
            &seq.to_be_bytes(),
            mac.as_bytes(),
            &len.to_be_bytes(),
        ],
    ))
}

/// The MAC of a head in slot `seq % 2`: bound to that slot, so a slot copied over the other
/// one (or cut out as a whole file) does not verify.
fn slot_mac(key: &[u8], seq: u64, mac: &str, len: u64) -> String {
    hex::encode(cryptocore::hmac_sha256(
        key,
        &[
            SLOT_LABEL,
            &[(seq % 2) as u8],
            &seq.to_be_bytes(),
            mac.as_bytes(),
            &len.to_be_bytes(),
        ],
    ))
}

/// audit.head holds two slots of this many bytes (JSON padded with spaces). The head after
/// record `seq` is written in place into slot `seq % 2`, and the other slot holds the head
/// before it (record `seq - 1`; seq 0 is the empty log).
const HEAD_SLOT: usize = 256;

impl Head {
    fn for_slot(key: &[u8], seq: u64, mac: &str, len: u64) -> Head {
        Head {
            seq,
            head_mac: slot_mac(key, seq, mac, len),
            mac: mac.to_string(),
            len,
        }
    }

    fn slot(&self) -> Result<[u8; HEAD_SLOT]> {
        let json = serde_json::to_vec(self)
            .map_err(|e| KmsError::internal(format!("encoding audit head: {e}")))?;
        let mut slot = [b' '; HEAD_SLOT];
        if json.len() >= HEAD_SLOT {
            return Err(KmsError::internal("audit head longer than its slot"));
        }
        slot[..json.len()].copy_from_slice(&json);
        slot[HEAD_SLOT - 1] = b'\n';
        Ok(slot)
    }

    /// The head in `bytes`, if its `head_mac` is the one `mac_of` computes for it.
    fn parse_checked(bytes: &[u8], mac_of: impl Fn(&Head) -> String) -> Option<Head> {
        let h: Head = serde_json::from_slice(bytes).ok()?;
        cryptocore::ct_eq(mac_of(&h).as_bytes(), h.head_mac.as_bytes()).then_some(h)
    }

    /// The head in slot `index`, if it belongs there and its MAC is right.
    fn parse_slot(key: &[u8], index: u64, bytes: &[u8]) -> Option<Head> {
        Self::parse_checked(bytes, |h| slot_mac(key, h.seq, &h.mac, h.len))
            .filter(|h| h.seq % 2 == index)
    }

    /// A first-format head whose MAC is right.
    fn parse_first_format(key: &[u8], bytes: &[u8]) -> Option<Head> {
        Self::parse_checked(bytes, |h| head_mac(key, h.seq, &h.mac, h.len))
    }

    /// Whether this head names the empty log (the one before record 1).
    fn is_genesis(&self) -> bool {
        self.seq == 0 && self.mac == GENESIS && self.len == 0
    }
}

/// What audit.head holds.
#[derive(Debug, PartialEq, Eq)]
enum HeadState {
    /// Both slots valid, one record apart.
    Slots { newest: Head, older: Head },
    /// One slot valid and the other, the next one to be written, not: a crash tore the write
    /// of the head after `newest`, whose record must then be in the log.
    Torn { newest: Head },
    /// The first format: one head, the whole file.
    Single(Head),
    /// Anything else: damaged or modified.
    Bad,
}

impl HeadState {
    fn newest(&self) -> Option<&Head> {
        match self {
            HeadState::Slots { newest, .. } | HeadState::Torn { newest } => Some(newest),
            HeadState::Single(h) => Some(h),
            HeadState::Bad => None,
        }
    }
}

/// Reads audit.head's content: two slots, or (format 1, replaced whole by rename) one JSON head.
fn read_heads(key: &[u8], data: &[u8]) -> HeadState {
    if data.len() != 2 * HEAD_SLOT {
        return Head::parse_first_format(key, data).map_or(HeadState::Bad, HeadState::Single);
    }
    let a = Head::parse_slot(key, 0, &data[..HEAD_SLOT]);
    let b = Head::parse_slot(key, 1, &data[HEAD_SLOT..]);
    match (a, b) {
        (Some(a), Some(b)) => {
            let (newest, older) = if a.seq > b.seq { (a, b) } else { (b, a) };
            if newest.seq == older.seq + 1 {
                HeadState::Slots { newest, older }
            } else {
                HeadState::Bad
            }
        }
        // The invalid slot is the other one, (newest.seq + 1) % 2: the next to be written.
        (Some(newest), None) | (None, Some(newest)) => HeadState::Torn { newest },
        (None, None) => HeadState::Bad,
    }
}

pub struct AuditLog<'k> {
    log: PathBuf,
    head: PathBuf,
    key: &'k [u8],
    tail: Option<&'k Mutex<Option<Tail>>>,
    /// Records are written at once but synced (and named by the head) only at `flush`.
    deferred: bool,
}

/// Where this process's last append left the log: the file (held open, so its inode number
/// cannot be reused), its length and the chain's last record. While the file at the log's path
/// is that file at that length, no one else appended, and the next append starts from here
/// instead of reopening the log and reading audit.head.
pub struct Tail {
    file: File,
    /// audit.head, once it has the two-slot form (it is then written in place).
    head: Option<HeadFile>,
    dev: u64,
    ino: u64,
    len: u64,
    seq: u64,
    mac: String,
    /// Deferred mode: the head after the last record and the one before it, to write once
    /// `flush` has synced the records (a head must never name records a crash can still lose).
    unsynced: Option<(Head, Head)>,
    /// The length of the log known synced.
    synced: u64,
}

/// audit.head held open, with the identity it had when opened.
struct HeadFile {
    file: File,
    dev: u64,
    ino: u64,
}

/// The outcome of a full verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub records: u64,
}

impl<'k> AuditLog<'k> {
    pub fn new(dir: &Path, key: &'k [u8]) -> Self {
        AuditLog {
            log: dir.join(crate::keystore::AUDIT_FILE),
            head: dir.join(crate::keystore::AUDIT_HEAD_FILE),
            key,
            tail: None,
            deferred: false,
        }
    }

    /// Appends through a kept tail (see `cached`) write their records without syncing them or
    /// moving the head; `flush` does both. For a mount, which flushes every few hundred
    /// milliseconds and before any fsync: a sync per key use made creating a file several
    /// times slower on a disk.
    pub fn deferred(mut self, on: bool) -> Self {
        self.deferred = on;
        self
    }

    /// Appends continue from `tail` while the log is as this process left it, and record
    /// there where they ended.
    pub fn cached(mut self, tail: &'k Mutex<Option<Tail>>) -> Self {
        self.tail = Some(tail);
        self
    }

    /// The kept tail, if the file at the log's path is still that file at that length. A tail
    /// dropped with records it had not synced syncs them first: whoever appended since keeps
    /// the head, but may not have synced (a killed mount).
    fn take_tail(&self, kept: &mut Option<Tail>) -> Option<Tail> {
        let mut t = kept.take()?;
        if !self.is_current(&t) {
            if t.unsynced.is_some() {
                if let Err(e) = t.file.sync_data() {
                    log::error!("{}: syncing audit records: {e}", self.log.display());
                }
            }
            return None;
        }
        // A head removed or replaced meanwhile is made anew, not written where no one reads.
        if let Some(h) = &t.head {
            let same = std::fs::symlink_metadata(&self.head)
                .is_ok_and(|m| (m.dev(), m.ino()) == (h.dev, h.ino));
            if !same {
                t.head = None;
            }
        }
        Some(t)
    }

    /// The log opened for appending, with its length and last (seq, mac): from audit.head if
    /// that matches the log's length, else from the log's last line.
    fn open_tail(&self) -> Result<Tail> {
        let mut file =
            atomic::open_append(&self.log).map_err(|e| KmsError::io(self.log.display(), e))?;
        let m = file
            .metadata()
            .map_err(|e| KmsError::io(self.log.display(), e))?;
        let mut len = file
            .seek(SeekFrom::End(0))
            .map_err(|e| KmsError::io(self.log.display(), e))?;
        let state = self.head_state();
        let newest = state.as_ref().and_then(HeadState::newest);
        if let Some(h) = newest.filter(|h| h.len > len) {
            log::error!(
                "{} is shorter than audit.head says ({len} < {} bytes): records were removed from its end",
                self.log.display(),
                h.len
            );
        }
        let current = newest.is_some_and(|h| h.len == len);
        let (seq, mac) = match newest {
            Some(h) if current => (h.seq, h.mac.clone()),
            _ => {
                let (s, m, l) = self.tail_of_log(&file)?;
                len = l;
                (s, m)
            }
        };
        // Written in place only while whole and current (the other slot then holds the head
        // before the next one); otherwise the next append makes it anew.
        let head = match state {
            Some(HeadState::Slots { .. }) if current => self.open_head_slots(),
            _ => None,
        };
        Ok(Tail {
            file,
            head,
            dev: m.dev(),
            ino: m.ino(),
            len,
            seq,
            mac,
            unsynced: None,
            synced: len,
        })
    }

    /// None if audit.head does not exist (or cannot be read).
    fn head_state(&self) -> Option<HeadState> {
        let data = std::fs::read(&self.head).ok()?;
        Some(read_heads(self.key, &data))
    }

    /// audit.head opened for writing in place, if it is a regular file of two slots (never
    /// through a symbolic link).
    fn open_head_slots(&self) -> Option<HeadFile> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&self.head)
            .ok()?;
        let m = file.metadata().ok()?;
        (m.is_file() && m.len() == 2 * HEAD_SLOT as u64).then(|| HeadFile {
            file,
            dev: m.dev(),
            ino: m.ino(),
        })
    }

    /// Records `head`: in place into its slot, or, where audit.head is missing, damaged or in
    /// the first format, as a new two-slot file (`head` and `before`, the head one record
    /// earlier) put in place by rename. `batch`: more than one record was appended.
    fn write_head(
        &self,
        file: &mut Option<HeadFile>,
        head: &Head,
        before: &Head,
        batch: bool,
    ) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let slot = head.slot()?;
        let io = |e| KmsError::io(self.head.display(), e);
        let mut both = [[0u8; HEAD_SLOT]; 2];
        both[(head.seq % 2) as usize] = slot;
        both[(before.seq % 2) as usize] = before.slot()?;
        if let Some(h) = file {
            // After a batch of records the other slot is behind too: both slots go in one
            // write (one sector), so no kill leaves them more than one record apart.
            if batch {
                return h.file.write_all_at(both.as_flattened(), 0).map_err(io);
            }
            return h
                .file
                .write_all_at(&slot, (head.seq % 2) * HEAD_SLOT as u64)
                .map_err(io);
        }
        // A head older than the log is tolerated (a crash between the two writes), so its
        // rename need not be made durable on its own.
        atomic::write_atomic_lazy_rename(&self.head, both.as_flattened()).map_err(io)?;
        *file = self.open_head_slots();
        Ok(())
    }

    /// (last seq, last mac, length) from the log itself, for when audit.head is stale after a
    /// crash. A torn last line (no newline) is cut off so new records start on a line of their own.
    fn tail_of_log(&self, file: &std::fs::File) -> Result<(u64, String, u64)> {
        let mut data = Vec::new();
        let mut f = file;
        f.seek(SeekFrom::Start(0))
            .and_then(|_| f.read_to_end(&mut data))
            .map_err(|e| KmsError::io(self.log.display(), e))?;
        let keep = data.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        if keep < data.len() {
            log::warn!(
                "{}: cutting a torn last record ({} bytes)",
                self.log.display(),
                data.len() - keep
            );
            file.set_len(keep as u64)
                .map_err(|e| KmsError::io(self.log.display(), e))?;
        }
        let mut last = (0u64, GENESIS.to_string());
        if let Some(line) = data[..keep].split(|b| *b == b'\n').rfind(|l| !l.is_empty()) {
            if let Ok(r) = serde_json::from_slice::<AuditRecord>(line) {
                last = (r.seq, r.mac);
            }
        }
        Ok((last.0, last.1, keep as u64))
    }

    /// Appends events in order. Call with the key store lock held, which orders the chain.
    pub fn append(&self, events: &[AuditEvent]) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let mut kept = self
            .tail
            .map(|m| m.lock().unwrap_or_else(|p| p.into_inner()));
        let tail = match kept.as_mut().and_then(|k| self.take_tail(k)) {
            Some(t) => t,
            None => self.open_tail()?,
        };
        let Tail {
            mut file,
            head: mut head_file,
            dev,
            ino,
            len,
            mut seq,
            mac: mut prev,
            unsynced,
            synced,
        } = tail;
        // Only a kept tail can carry heads over to the flush, and only to a head written in
        // place: a missing, damaged or stale one is made now, or the records would sit
        // without any head until the flush.
        let deferred = self.deferred && kept.is_some() && head_file.is_some();
        let mut out = Vec::new();
        // The chain's end before the last record: the head the other slot holds.
        let mut before = (seq, prev.clone(), len);
        for ev in events {
            before = (seq, prev.clone(), len + out.len() as u64);
            seq += 1;
            let mut rec = AuditRecord {
                seq,
                time: ev.time.clone(),
                request_id: ev.request_id.clone(),
                operation: ev.operation.clone(),
                caller: ev.caller.clone(),
                key_id: ev.key_id.clone(),
                key_version: ev.key_version,
                context: ev.context.clone(),
                result: ev.result.clone(),
                message: ev.message.clone(),
                prev: prev.clone(),
                mac: String::new(),
            };
            rec.mac = record_mac(self.key, &rec)?;
            prev = rec.mac.clone();
            serde_json::to_writer(&mut out, &rec)
                .map_err(|e| KmsError::internal(format!("encoding audit record: {e}")))?;
            out.push(b'\n');
        }
        let written = file.write_all(&out);
        if let Err(e) = written.and_then(|_| if deferred { Ok(()) } else { file.sync_data() }) {
            // Leave no torn record behind (a full disk, say). Records of earlier appends not
            // yet synced are synced now, or cut too (see `flush`).
            let _ = file.set_len(len);
            if unsynced.is_some() {
                if let Err(se) = file.sync_data() {
                    self.sync_failed(&file, synced, &se);
                }
            }
            return Err(KmsError::io(self.log.display(), e));
        }
        let new_len = len + out.len() as u64;
        let head = Head::for_slot(self.key, seq, &prev, new_len);
        let before = Head::for_slot(self.key, before.0, &before.1, before.2);
        let (unsynced, synced) = if deferred {
            (Some((head, before)), synced)
        } else {
            self.write_head(&mut head_file, &head, &before, events.len() > 1)?;
            (None, new_len)
        };
        if let Some(k) = kept.as_mut() {
            **k = Some(Tail {
                file,
                head: head_file,
                dev,
                ino,
                len: new_len,
                seq,
                mac: prev,
                unsynced,
                synced,
            });
        }
        Ok(())
    }

    /// Whether the file at the log's path is `t`'s, at `t`'s length.
    fn is_current(&self, t: &Tail) -> bool {
        std::fs::metadata(&self.log)
            .is_ok_and(|m| m.dev() == t.dev && m.ino() == t.ino && m.len() == t.len)
    }

    /// Records written but not synced, whose sync failed, are cut: a later sync could succeed
    /// without them on disk, and a head naming them would then report a cut log after a
    /// power loss. Their operations are not recorded; the error says so.
    fn sync_failed(&self, file: &File, synced: u64, e: &std::io::Error) {
        log::error!(
            "{}: audit records could not be synced ({e}); cutting the log back to its last synced end ({synced} bytes): the records of the operations since are lost",
            self.log.display()
        );
        if let Err(e) = file.set_len(synced) {
            log::error!("{}: cutting: {e}", self.log.display());
        }
    }

    /// Syncs the records appended since the last flush (deferred mode), then has audit.head
    /// name the last of them, unless another process appended meanwhile (it then synced them,
    /// or will, and keeps the head). Call with the key store lock held.
    pub fn flush(&self) -> Result<()> {
        let Some(m) = self.tail else { return Ok(()) };
        let mut kept = m.lock().unwrap_or_else(|p| p.into_inner());
        let Some((head, before)) = kept.as_mut().and_then(|t| t.unsynced.take()) else {
            return Ok(());
        };
        if let Some(t) = kept.as_mut() {
            if let Err(e) = t.file.sync_data() {
                // Not retried: after a failed writeback the next sync may succeed without the
                // pages having reached the disk, and a head must not name them.
                let t = kept.take();
                if let Some(t) = t.filter(|t| self.is_current(t)) {
                    self.sync_failed(&t.file, t.synced, &e);
                }
                return Err(KmsError::io(self.log.display(), e));
            }
            t.synced = t.len;
        }
        let Some(mut t) = self.take_tail(&mut kept) else {
            return Ok(());
        };
        let r = self.write_head(&mut t.head, &head, &before, true);
        *kept = Some(t);
        r
    }

    /// Whether records await a `flush`.
    pub fn unflushed(&self) -> bool {
        self.tail.is_some_and(|m| {
            m.lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
                .is_some_and(|t| t.unsynced.is_some())
        })
    }

    /// Reads every record, verifying the chain as it goes.
    pub fn read_verified(&self) -> Result<(Vec<AuditRecord>, Verified)> {
        let mut data = String::new();
        match std::fs::File::open(&self.log) {
            Ok(mut f) => {
                f.read_to_string(&mut data)
                    .map_err(|e| KmsError::io(self.log.display(), e))?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(KmsError::io(self.log.display(), e)),
        }
        let (records, head_at) = verify_lines(self.key, &data)?;
        let bad = |m: String| KmsError::new(ErrorKind::AuditInvalid, m);
        let names = |h: &Head| {
            h.is_genesis()
                || head_at
                    .iter()
                    .any(|(s, mac, end)| *s == h.seq && *mac == h.mac && *end == h.len)
        };
        let removed = |seq: u64| {
            bad(format!(
                "the log ends before record {seq} named by audit.head: records were removed from the end"
            ))
        };
        // Records after the newest head are allowed: a crash may land between log and head.
        match self.head_state() {
            None if records.is_empty() && !self.head.exists() => {}
            None | Some(HeadState::Bad) => {
                return Err(bad("audit.head is missing or was modified".to_string()));
            }
            Some(HeadState::Single(h)) if !names(&h) => return Err(removed(h.seq)),
            Some(HeadState::Single(_)) => {}
            Some(HeadState::Slots { newest, older }) => {
                for h in [&older, &newest] {
                    if !names(h) {
                        return Err(removed(h.seq));
                    }
                }
            }
            // A torn slot is the write of the head after `newest`: that record was appended.
            Some(HeadState::Torn { newest }) => {
                if !names(&newest) {
                    return Err(removed(newest.seq));
                }
                if !head_at.iter().any(|(s, _, _)| *s == newest.seq + 1) {
                    return Err(removed(newest.seq + 1));
                }
            }
        }
        let n = records.len() as u64;
        Ok((records, Verified { records: n }))
    }
}

type HeadPoint = (u64, String, u64);

/// Verifies a whole log's text. Returns the records and, per record, (seq, mac, byte offset after it).
/// The error names the first bad line (1-based).
pub fn verify_lines(key: &[u8], data: &str) -> Result<(Vec<AuditRecord>, Vec<HeadPoint>)> {
    let mut prev = GENESIS.to_string();
    let mut records = Vec::new();
    let mut points = Vec::new();
    let mut offset = 0u64;
    for (i, line) in data.split_inclusive('\n').enumerate() {
        let n = i + 1;
        offset += line.len() as u64;
        let bad = |why: &str| KmsError::new(ErrorKind::AuditInvalid, format!("line {n}: {why}"));
        let text = line
            .strip_suffix('\n')
            .ok_or_else(|| bad("unterminated record (the log was cut mid-line)"))?;
        let rec: AuditRecord =
            serde_json::from_str(text).map_err(|e| bad(&format!("not an audit record: {e}")))?;
        let want_seq = records.len() as u64 + 1;
        if rec.seq != want_seq {
            return Err(bad(&format!(
                "sequence {} where {want_seq} was expected: a record was removed, inserted or moved",
                rec.seq
            )));
        }
        if rec.prev != prev {
            return Err(bad(
                "does not follow the previous record: the chain is broken",
            ));
        }
        let want = record_mac(key, &rec)?;
        if !cryptocore::ct_eq(want.as_bytes(), rec.mac.as_bytes()) {
            return Err(bad("MAC mismatch: the record was modified"));
        }
        prev = rec.mac.clone();
        points.push((rec.seq, rec.mac.clone(), offset));
        records.push(rec);
    }
    Ok((records, points))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ev(op: &str) -> AuditEvent {
        AuditEvent {
            time: "2026-01-01T00:00:00.000Z".into(),
            request_id: "r".into(),
            operation: op.into(),
            caller: AuditCaller {
                uid: 0,
                user: None,
                pid: 1,
            },
            key_id: Some("k".into()),
            key_version: Some(1),
            context: EncryptionContext::default(),
            result: "Success".into(),
            message: None,
        }
    }

    fn log_with(n: usize) -> (tempfile::TempDir, String) {
        let d = tempfile::tempdir().unwrap();
        let log = AuditLog::new(d.path(), b"key");
        for i in 0..n {
            log.append(&[ev(&format!("Op{i}"))]).unwrap();
        }
        let text = std::fs::read_to_string(d.path().join("audit.log")).unwrap();
        (d, text)
    }

    fn first_bad_line(e: KmsError) -> usize {
        let m = e.message;
        m.strip_prefix("line ")
            .and_then(|r| r.split(':').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    #[test]
    fn intact_log_verifies() {
        let (d, _) = log_with(5);
        let log = AuditLog::new(d.path(), b"key");
        let (recs, v) = log.read_verified().unwrap();
        assert_eq!(v.records, 5);
        assert_eq!(recs[4].operation, "Op4");
        assert!(AuditLog::new(d.path(), b"other").read_verified().is_err());
    }

    #[test]
    fn detects_edit_removal_insertion_reorder_and_truncation() {
        let (d, text) = log_with(5);
        let lines: Vec<&str> = text.lines().collect();
        let join = |v: Vec<&str>| v.iter().map(|l| format!("{l}\n")).collect::<String>();

        let edited = text.replacen("Op2", "Op9", 1);
        assert_eq!(
            first_bad_line(verify_lines(b"key", &edited).unwrap_err()),
            3
        );

        let mut removed = lines.clone();
        removed.remove(1);
        assert_eq!(
            first_bad_line(verify_lines(b"key", &join(removed)).unwrap_err()),
            2
        );

        let mut inserted = lines.clone();
        inserted.insert(2, lines[1]);
        assert_eq!(
            first_bad_line(verify_lines(b"key", &join(inserted)).unwrap_err()),
            3
        );

        let mut swapped = lines.clone();
        swapped.swap(2, 3);
        assert_eq!(
            first_bad_line(verify_lines(b"key", &join(swapped)).unwrap_err()),
            3
        );

        // Dropping the last line keeps the chain intact; only audit.head notices.
        std::fs::write(d.path().join("audit.log"), join(lines[..4].to_vec())).unwrap();
        let e = AuditLog::new(d.path(), b"key").read_verified().unwrap_err();
        assert!(e.message.contains("removed from the end"), "{}", e.message);
    }

    #[test]
    fn kept_tails_follow_other_writers_and_a_replaced_log() {
        let d = tempfile::tempdir().unwrap();
        let (ta, tb) = (Mutex::new(None), Mutex::new(None));
        let a = || AuditLog::new(d.path(), b"key").cached(&ta);
        let b = || AuditLog::new(d.path(), b"key").cached(&tb);
        a().append(&[ev("A1")]).unwrap();
        a().append(&[ev("A2")]).unwrap();
        b().append(&[ev("B1")]).unwrap();
        a().append(&[ev("A3")]).unwrap();
        let (recs, _) = a().read_verified().unwrap();
        let ops: Vec<_> = recs.iter().map(|r| (r.seq, r.operation.as_str())).collect();
        assert_eq!(ops, vec![(1, "A1"), (2, "A2"), (3, "B1"), (4, "A3")]);
        // The log moved away: the next append goes to the file at the path, not the kept one.
        let log = d.path().join("audit.log");
        std::fs::rename(&log, d.path().join("old.log")).unwrap();
        std::fs::remove_file(d.path().join("audit.head")).unwrap();
        a().append(&[ev("A4")]).unwrap();
        assert!(std::fs::read_to_string(&log).unwrap().contains("\"A4\""));
        let old = std::fs::read_to_string(d.path().join("old.log")).unwrap();
        assert!(!old.contains("\"A4\""));
        let (recs, _) = a().read_verified().unwrap();
        assert_eq!(recs.len(), 1);
    }

    /// Deferred appends write their records at once (a killed process loses none) but move
    /// the head only at `flush`, after the sync: until then the records are the unconfirmed
    /// tail that verification accepts, and a cut of them goes unnoticed; after it, a cut is
    /// caught.
    #[test]
    fn deferred_records_are_written_at_once_and_the_head_moves_at_the_flush() {
        let (d, _) = log_with(2);
        let path = d.path().join("audit.head");
        let tail = Mutex::new(None);
        let log = || AuditLog::new(d.path(), b"key").cached(&tail).deferred(true);
        assert!(!log().unflushed());
        log().append(&[ev("D1")]).unwrap();
        log().append(&[ev("D2"), ev("D3")]).unwrap();
        log().append(&[ev("D4")]).unwrap();
        assert!(log().unflushed());
        assert_eq!(slot_seqs(&path), (Some(2), Some(1)), "head not moved");
        let (recs, _) = log().read_verified().unwrap();
        assert_eq!(recs.len(), 6, "every record is in the log already");
        log().flush().unwrap();
        assert!(!log().unflushed());
        assert_eq!(
            slot_seqs(&path),
            (Some(6), Some(5)),
            "both slots, one apart"
        );
        log().read_verified().unwrap();
        log().flush().unwrap();
        // Continues in place after a flush, and a cut is caught once the head names it.
        log().append(&[ev("D5")]).unwrap();
        log().flush().unwrap();
        assert_eq!(slot_seqs(&path), (Some(6), Some(7)));
        drop_last_record(d.path());
        let e = log().read_verified().unwrap_err();
        assert!(e.message.contains("removed from the end"), "{}", e.message);
    }

    /// With no head to write in place (a new log, or one removed), a deferred append is synced
    /// and gets its head at once: records never sit with no head at all.
    #[test]
    fn a_deferred_append_without_a_head_makes_one_at_once() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("audit.head");
        let tail = Mutex::new(None);
        let log = || AuditLog::new(d.path(), b"key").cached(&tail).deferred(true);
        log().append(&[ev("First")]).unwrap();
        assert_eq!(slot_seqs(&path), (Some(0), Some(1)));
        assert!(!log().unflushed());
        log().append(&[ev("Second")]).unwrap();
        assert!(log().unflushed(), "deferred once a head is in place");
        std::fs::remove_file(&path).unwrap();
        log().append(&[ev("Third")]).unwrap();
        assert_eq!(slot_seqs(&path), (Some(2), Some(3)));
        log().read_verified().unwrap();
    }

    /// Another writer appending between a deferred append and its flush keeps the head: the
    /// flush syncs but must not write its older head over the newer one.
    #[test]
    fn a_flush_after_another_writer_leaves_that_writers_head() {
        let (d, _) = log_with(1);
        let path = d.path().join("audit.head");
        let (ta, tb) = (Mutex::new(None), Mutex::new(None));
        let a = || AuditLog::new(d.path(), b"key").cached(&ta).deferred(true);
        let b = || AuditLog::new(d.path(), b"key").cached(&tb);
        a().append(&[ev("A1")]).unwrap();
        b().append(&[ev("B1")]).unwrap();
        assert_eq!(slot_seqs(&path), (Some(2), Some(3)));
        a().flush().unwrap();
        assert_eq!(slot_seqs(&path), (Some(2), Some(3)), "B's head stands");
        assert!(!a().unflushed());
        a().append(&[ev("A2")]).unwrap();
        a().flush().unwrap();
        assert_eq!(slot_seqs(&path), (Some(4), Some(3)));
        let (recs, _) = b().read_verified().unwrap();
        let ops: Vec<_> = recs.iter().map(|r| r.operation.as_str()).collect();
        assert_eq!(ops, ["Op0", "A1", "B1", "A2"]);
        // Without a kept tail there is nothing to carry to a flush: each record syncs at once.
        let plain = AuditLog::new(d.path(), b"key").deferred(true);
        plain.append(&[ev("P1")]).unwrap();
        assert_eq!(slot_seqs(&path), (Some(4), Some(5)));
    }

    #[test]
    fn append_recovers_after_stale_head() {
        let (d, _) = log_with(2);
        let head = std::fs::read(d.path().join("audit.head")).unwrap();
        let log = AuditLog::new(d.path(), b"key");
        log.append(&[ev("Op2")]).unwrap();
        // Simulate a crash between the log append and the head update.
        std::fs::write(d.path().join("audit.head"), head).unwrap();
        log.read_verified().unwrap();
        log.append(&[ev("Op3")]).unwrap();
        let (recs, _) = log.read_verified().unwrap();
        assert_eq!(
            recs.iter().map(|r| r.seq).collect::<Vec<_>>(),
            vec![1, 2, 3, 4]
        );
    }

    #[test]
    fn append_after_a_torn_record_keeps_the_log_verifiable() {
        let (d, text) = log_with(2);
        let head = std::fs::read(d.path().join("audit.head")).unwrap();
        // A crash mid-append: half a record, and the head from before it.
        let mut torn = text.clone();
        torn.push_str(&text.lines().next().unwrap()[..40]);
        std::fs::write(d.path().join("audit.log"), torn).unwrap();
        std::fs::write(d.path().join("audit.head"), head).unwrap();
        let log = AuditLog::new(d.path(), b"key");
        log.append(&[ev("Op2")]).unwrap();
        let (recs, _) = log.read_verified().unwrap();
        assert_eq!(recs.len(), 3);
    }

    /// The MAC input as it was defined first: the record as a JSON value without `mac`.
    fn mac_input_by_value(rec: &AuditRecord) -> Vec<u8> {
        let mut v = serde_json::to_value(rec).unwrap();
        v.as_object_mut().unwrap().remove("mac");
        serde_json::to_vec(&v).unwrap()
    }

    fn slot_seqs(path: &Path) -> (Option<u64>, Option<u64>) {
        let data = std::fs::read(path).unwrap();
        assert_eq!(data.len(), 2 * HEAD_SLOT);
        let seq = |i: usize| {
            Head::parse_slot(b"key", i as u64, &data[i * HEAD_SLOT..(i + 1) * HEAD_SLOT])
                .map(|h| h.seq)
        };
        (seq(0), seq(1))
    }

    fn drop_last_record(d: &Path) {
        let log = d.join("audit.log");
        let text = std::fs::read_to_string(&log).unwrap();
        let keep: String = text
            .split_inclusive('\n')
            .take(text.lines().count() - 1)
            .collect();
        std::fs::write(&log, keep).unwrap();
    }

    #[test]
    fn the_head_is_two_slots_one_record_apart() {
        let (d, _) = log_with(3);
        let path = d.path().join("audit.head");
        // Record 3's head in slot 1, record 2's in slot 0.
        assert_eq!(slot_seqs(&path), (Some(2), Some(3)));
        let log = AuditLog::new(d.path(), b"key");
        log.read_verified().unwrap();
        // A batch of records: both slots move, still one record apart.
        log.append(&[ev("Op3"), ev("Op4")]).unwrap();
        assert_eq!(slot_seqs(&path), (Some(4), Some(5)));
        let tail = Mutex::new(None);
        let kept = || AuditLog::new(d.path(), b"key").cached(&tail);
        kept().append(&[ev("Op5")]).unwrap();
        kept().append(&[ev("Op6"), ev("Op7"), ev("Op8")]).unwrap();
        assert_eq!(slot_seqs(&path), (Some(8), Some(9)));
        assert_eq!(log.read_verified().unwrap().1.records, 9);
    }

    #[test]
    fn the_last_record_cannot_be_cut_with_the_older_slot() {
        let (d, _) = log_with(3);
        let path = d.path().join("audit.head");
        let data = std::fs::read(&path).unwrap();
        let log = AuditLog::new(d.path(), b"key");
        drop_last_record(d.path());
        // The older slot (record 2's) copied over the newer one: it does not belong there.
        let mut copied = data.clone();
        copied.copy_within(..HEAD_SLOT, HEAD_SLOT);
        std::fs::write(&path, &copied).unwrap();
        assert!(log.read_verified().is_err());
        // The file cut to the older slot alone is no first-format head either.
        std::fs::write(&path, &data[..HEAD_SLOT]).unwrap();
        assert!(log.read_verified().is_err());
        // The newer slot damaged: taken for a torn write, which needs record 3 in the log.
        let mut torn = data.clone();
        torn[HEAD_SLOT + 10] ^= 1;
        std::fs::write(&path, &torn).unwrap();
        assert!(log.read_verified().is_err());
    }

    #[test]
    fn a_torn_slot_is_a_crash_while_its_record_is_in_the_log() {
        let (d, _) = log_with(3);
        let path = d.path().join("audit.head");
        let mut data = std::fs::read(&path).unwrap();
        // Record 3's head (slot 1) torn by a crash: record 3 is in the log, so this is no
        // tampering; the next append makes the head whole again.
        data[HEAD_SLOT + 10] ^= 1;
        std::fs::write(&path, &data).unwrap();
        let log = AuditLog::new(d.path(), b"key");
        assert_eq!(log.read_verified().unwrap().1.records, 3);
        log.append(&[ev("Op3")]).unwrap();
        assert_eq!(slot_seqs(&path), (Some(4), Some(3)));
        // The older slot damaged instead: that would be the write for record 4, which the log
        // does not have.
        let (d, _) = log_with(3);
        let path = d.path().join("audit.head");
        let mut data = std::fs::read(&path).unwrap();
        data[10] ^= 1;
        std::fs::write(&path, &data).unwrap();
        let e = AuditLog::new(d.path(), b"key").read_verified().unwrap_err();
        assert!(e.message.contains("record 4"), "{}", e.message);
    }

    #[test]
    fn a_kept_tail_makes_a_removed_head_anew() {
        let d = tempfile::tempdir().unwrap();
        let tail = Mutex::new(None);
        let log = || AuditLog::new(d.path(), b"key").cached(&tail);
        log().append(&[ev("A1")]).unwrap();
        std::fs::remove_file(d.path().join("audit.head")).unwrap();
        log().append(&[ev("A2")]).unwrap();
        assert_eq!(log().read_verified().unwrap().1.records, 2);
    }

    #[test]
    fn a_head_of_the_first_format_is_read_then_replaced_by_slots() {
        let (d, text) = log_with(2);
        let path = d.path().join("audit.head");
        // What version 1 wrote after record 2: one head, the whole file.
        let end = text.len() as u64;
        let last: AuditRecord = serde_json::from_str(text.lines().last().unwrap()).unwrap();
        let v1 = Head {
            seq: 2,
            head_mac: head_mac(b"key", 2, &last.mac, end),
            mac: last.mac.clone(),
            len: end,
        };
        std::fs::write(&path, serde_json::to_vec(&v1).unwrap()).unwrap();
        let log = AuditLog::new(d.path(), b"key");
        assert_eq!(log.read_verified().unwrap().1.records, 2);
        // A first-format head naming a removed record is caught as before.
        drop_last_record(d.path());
        assert!(log.read_verified().is_err());
        std::fs::write(d.path().join("audit.log"), &text).unwrap();
        log.append(&[ev("Op2")]).unwrap();
        assert_eq!(slot_seqs(&path), (Some(2), Some(3)));
        assert_eq!(log.read_verified().unwrap().1.records, 3);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// The MAC input written directly is byte for byte the sorted JSON value's.
        #[test]
        fn mac_input_is_the_sorted_json_of_the_record(
            strings in prop::collection::vec(any::<String>(), 8),
            ctx in prop::collection::btree_map(any::<String>(), any::<String>(), 0..4),
            nums in (any::<u64>(), any::<u32>(), any::<u32>(), any::<Option<u32>>()),
            some in any::<(bool, bool, bool)>(),
        ) {
            let opt = |b: bool, s: &str| b.then(|| s.to_string());
            let rec = AuditRecord {
                seq: nums.0,
                time: strings[0].clone(),
                request_id: strings[1].clone(),
                operation: strings[2].clone(),
                caller: AuditCaller { uid: nums.1, user: opt(some.0, &strings[3]), pid: nums.2 },
                key_id: opt(some.1, &strings[4]),
                key_version: nums.3,
                context: EncryptionContext(ctx),
                result: strings[5].clone(),
                message: opt(some.2, &strings[6]),
                prev: strings[7].clone(),
                mac: "ignored".into(),
            };
            prop_assert_eq!(serde_json::to_vec(&MacInput::of(&rec)).unwrap(), mac_input_by_value(&rec));
        }

        /// Any single changed byte in any line is caught, and at that line or earlier.
        #[test]
        fn any_byte_change_is_caught(pos in any::<prop::sample::Index>(), b in any::<u8>()) {
            let (_d, text) = log_with(4);
            let mut bytes = text.into_bytes();
            let i = pos.index(bytes.len());
            prop_assume!(bytes[i] != b);
            bytes[i] = b;
            if let Ok(s) = String::from_utf8(bytes) {
                prop_assert!(verify_lines(b"key", &s).is_err());
            }
        }
    }
}
