//! The filesystem's side of the KMS: who is asking (the FUSE request's uid, groups and pid), data
//! keys unwrapped and wrapped as that caller, and per-caller decisions cached until the key
//! store changes. A denial is EACCES for that caller only.

use crate::fs::cipherdir::{self, HeaderFailure, Unwrapped};
use crate::fs::errno::{self, Errno, FsResult};
use crate::fs::header::{self, Kind};
use crate::kms::{Caller, EncryptionContext};
use crate::provider::KeyProvider;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// A directory's keys, cached on its node, with the CMK that wraps them.
pub struct DirKeys {
    pub keys: header::DataKeys,
    pub id: [u8; 16],
    pub key: Option<String>,
}

/// Who sent a FUSE request.
#[derive(Debug, Clone, Copy)]
pub struct Requester {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
}

type DecisionKey = (u32, u32, String, [u8; 16]);

pub struct Keyring {
    provider: Arc<dyn KeyProvider>,
    /// The mounting user, for the daemon's own checks.
    daemon: Caller,
    callers: Mutex<HashMap<(u32, u32), Caller>>,
    decisions: Mutex<HashMap<DecisionKey, Result<(), Errno>>>,
    stamp: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Supplementary groups of a process, from /proc (empty if it is gone).
fn process_groups(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("Groups:")).map(|g| {
                g.split_whitespace()
                    .filter_map(|n| n.parse().ok())
                    .collect()
            })
        })
        .unwrap_or_default()
}

fn header_errno(what: &str, f: HeaderFailure) -> Errno {
    match f {
        HeaderFailure::Corrupt(why) => {
            log::error!("{what}: header failed authentication: {why}");
            Errno::EIO
        }
        HeaderFailure::Kms(e) => {
            log::warn!("{what}: the KMS refused its key: {e}");
            errno::from_kms(&e)
        }
    }
}

impl Keyring {
    pub fn new(provider: Arc<dyn KeyProvider>, daemon: Caller) -> Keyring {
        let stamp = provider.change_stamp();
        Keyring {
            provider,
            daemon,
            callers: Mutex::new(HashMap::new()),
            decisions: Mutex::new(HashMap::new()),
            stamp: AtomicU64::new(stamp),
        }
    }

    pub fn provider(&self) -> &dyn KeyProvider {
        self.provider.as_ref()
    }

    pub fn daemon(&self) -> &Caller {
        &self.daemon
    }

    /// The requester as a KMS caller: its groups read once per (uid, gid), names resolved.
    pub fn caller(&self, r: Requester) -> Caller {
        let mut c = lock(&self.callers)
            .entry((r.uid, r.gid))
            .or_insert_with(|| {
                let mut gids = process_groups(r.pid);
                gids.push(r.gid);
                Caller::from_ids(r.uid, gids, r.pid)
            })
            .clone();
        c.pid = r.pid;
        c
    }

    /// The CMK a wrapped key names.
    pub fn key_of(&self, blob: &[u8]) -> Option<String> {
        self.provider.key_of(blob).map(|(k, _)| k)
    }

    fn remember(&self, r: Requester, key: &Option<String>, id: [u8; 16], d: Result<(), Errno>) {
        if let Some(k) = key {
            lock(&self.decisions).insert((r.uid, r.gid, k.clone(), id), d);
        }
    }

    /// Unwraps a header's data key as the requester (audited by the KMS).
    pub fn unwrap(
        &self,
        kind: Kind,
        data: &[u8],
        r: Requester,
        what: &str,
    ) -> FsResult<(Unwrapped, Option<String>)> {
        let u = cipherdir::unwrap_header(kind, data, self.provider.as_ref(), &self.caller(r))
            .map_err(|f| header_errno(what, f))?;
        let key = self.key_of(&u.blob);
        self.remember(r, &key, u.id, Ok(()));
        Ok((u, key))
    }

    /// A fresh header wrapped by `key`, made as the requester.
    pub fn new_header(
        &self,
        kind: Kind,
        key: &str,
        r: Requester,
    ) -> FsResult<([u8; header::HEADER_LEN], Unwrapped)> {
        cipherdir::new_header(kind, self.provider.as_ref(), &self.caller(r), key).map_err(|e| {
            log::warn!("no data key from {key}: {e}");
            errno::from_kms(&e)
        })
    }

    /// May the requester use a data key it is about to use from memory? Decided by the KMS
    /// once per (uid, gid, key, id) until the key store changes; denials are audited there.
    pub fn authorize(
        &self,
        r: Requester,
        key: Option<&str>,
        kind: Kind,
        id: [u8; 16],
    ) -> FsResult<()> {
        self.authorize_ctx(r, key, &kind.context(&id), id)
    }

    /// `authorize` for any encryption context; `id` keys the cached decision.
    pub fn authorize_ctx(
        &self,
        r: Requester,
        key: Option<&str>,
        ctx: &EncryptionContext,
        id: [u8; 16],
    ) -> FsResult<()> {
        let Some(key) = key else { return Ok(()) };
        let dk = (r.uid, r.gid, key.to_string(), id);
        if let Some(d) = lock(&self.decisions).get(&dk) {
            return *d;
        }
        let d = self
            .provider
            .authorize(&self.caller(r), key, "kms:Decrypt", ctx)
            .map_err(|e| errno::from_kms(&e));
        lock(&self.decisions).insert(dk, d);
        d
    }

    /// Whether the key store changed since the last call; forgets cached decisions if so.
    pub fn refresh(&self) -> bool {
        let now = self.provider.change_stamp();
        if self.stamp.swap(now, Ordering::SeqCst) == now {
            return false;
        }
        lock(&self.decisions).clear();
        true
    }

    /// Whether the daemon itself may still use `key` under `ctx` (state and policy).
    pub fn usable(&self, key: &str, ctx: &EncryptionContext) -> bool {
        self.provider
            .authorize(&self.daemon, key, "kms:Decrypt", ctx)
            .is_ok()
    }
}
