//! The filesystem's side of the KMS: who is asking (the FUSE request's uid, groups and pid), data
//! keys unwrapped and wrapped as that caller, and per-caller decisions cached until the key
//! store changes. A denial is EACCES for that caller only.

use crate::fs::cipherdir::{self, HeaderFailure, Unwrapped};
use crate::fs::dekcache::{self, DekCache};
use crate::fs::errno::{self, Errno, FsResult};
use crate::fs::header::{self, Kind};
use crate::fs::lock;
use crate::kms::{Caller, EncryptionContext};
use crate::provider::{KeyProvider, Reach};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

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

/// (uid, hash of the sorted group ids, key, id; None: any id, the key's policy reads no
/// encryption context).
type DecisionKey = (u32, u64, String, Option<[u8; 16]>);

/// How long a process's group list is reused before /proc is read again.
const GROUPS_TTL: std::time::Duration = std::time::Duration::from_secs(1);

pub struct Keyring {
    provider: Arc<dyn KeyProvider>,
    /// The mounting user, for the daemon's own checks.
    daemon: Caller,
    /// Names resolved per (uid, sorted groups).
    callers: Mutex<HashMap<(u32, Vec<u32>), Caller>>,
    /// Each process's groups, read from /proc, with when they were read.
    groups: Mutex<HashMap<u32, (std::time::Instant, Vec<u32>)>>,
    decisions: Mutex<HashMap<DecisionKey, Result<(), Errno>>>,
    /// Data keys unwrapped (or generated) lately, for reopening without a KMS Decrypt.
    deks: Mutex<DekCache>,
    /// Headers unwrapped through the KMS (data key cache misses).
    unwraps: AtomicU64,
    stamp: AtomicU64,
    /// Bumped on every key store change; a decision computed in an older epoch is not kept.
    epoch: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
}

/// Cached decisions kept at most; the cache starts over when full (each entry is one
/// user-and-file pair, or user-and-key, so this covers 100,000 files in use at once).
pub const DECISIONS_MAX: usize = 100_000;

/// Size and hit counts of the decision cache.
#[derive(Debug, Clone, Copy, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CacheStats {
    pub entries: usize,
    pub limit: usize,
    pub hits: u64,
    pub misses: u64,
}

fn decision_key(r: Requester, gids: &[u32], key: &str, id: [u8; 16]) -> DecisionKey {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    gids.hash(&mut h);
    (r.uid, h.finish(), key.to_string(), Some(id))
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
            groups: Mutex::new(HashMap::new()),
            decisions: Mutex::new(HashMap::new()),
            deks: Mutex::new(DekCache::new(dekcache::DEFAULT_ENTRIES, dekcache::MAX_AGE)),
            unwraps: AtomicU64::new(0),
            stamp: AtomicU64::new(stamp),
            epoch: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
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
        self.caller_with(r, self.gids(r))
    }

    /// `caller` with the groups already read.
    fn caller_with(&self, r: Requester, gids: Vec<u32>) -> Caller {
        let mut c = lock(&self.callers)
            .entry((r.uid, gids.clone()))
            .or_insert_with(|| Caller::from_ids(r.uid, gids, r.pid))
            .clone();
        c.pid = r.pid;
        c
    }

    /// The requesting process's primary and supplementary groups, sorted: re-read from /proc
    /// at most once a second per process, so a changed membership counts within a second.
    fn gids(&self, r: Requester) -> Vec<u32> {
        let mut cache = lock(&self.groups);
        if let Some((at, g)) = cache.get(&r.pid) {
            if at.elapsed() < GROUPS_TTL {
                return g.clone();
            }
        }
        let mut g = process_groups(r.pid);
        g.push(r.gid);
        g.sort_unstable();
        g.dedup();
        if cache.len() > 4096 {
            cache.clear();
        }
        cache.insert(r.pid, (std::time::Instant::now(), g.clone()));
        g
    }

    /// The CMK a wrapped key names.
    pub fn key_of(&self, blob: &[u8]) -> Option<String> {
        self.provider.key_of(blob).map(|(k, _)| k)
    }

    /// Keeps an allow or a denial, unless the key store changed since `epoch` (the decision may
    /// be stale) or the outcome was not a decision (an I/O error, say).
    fn remember(&self, dk: DecisionKey, epoch: u64, d: Result<(), Errno>) {
        if !matches!(d, Ok(()) | Err(Errno::EACCES)) {
            return;
        }
        let mut decisions = lock(&self.decisions);
        if self.epoch.load(Ordering::SeqCst) == epoch {
            if decisions.len() >= DECISIONS_MAX {
                decisions.clear();
            }
            decisions.insert(dk, d);
        }
    }

    /// Unwraps a header's data key as the requester (audited by the KMS), or takes it from the
    /// data key cache after checking the requester may use it (a cached KMS decision, else
    /// the key's policy and state asked afresh).
    pub fn unwrap(
        &self,
        kind: Kind,
        data: &[u8],
        r: Requester,
        what: impl FnOnce() -> String,
    ) -> FsResult<(Unwrapped, Option<String>)> {
        let digest = dekcache::digest(kind as u8, data);
        let cached = lock(&self.deks)
            .get(&digest, std::time::Instant::now())
            .map(|c| (c.unwrapped.clone(), c.key.clone()));
        if let Some((u, key)) = cached {
            self.authorize(r, Some(&key), kind, u.id)?;
            return Ok((u, Some(key)));
        }
        self.unwraps.fetch_add(1, Ordering::Relaxed);
        let epoch = self.epoch.load(Ordering::SeqCst);
        let gids = self.gids(r);
        let caller = self.caller_with(r, gids.clone());
        let u = cipherdir::unwrap_header(kind, data, self.provider.as_ref(), &caller)
            .map_err(|f| header_errno(&what(), f))?;
        let key = self.key_of(&u.blob);
        if let Some(k) = &key {
            self.remember(decision_key(r, &gids, k, u.id), epoch, Ok(()));
            self.keep(digest, epoch, &u, k);
        }
        Ok((u, key))
    }

    /// Caches a data key, unless the key store changed since `epoch` (it may be revoked).
    fn keep(&self, digest: [u8; 32], epoch: u64, u: &Unwrapped, key: &str) {
        let mut deks = lock(&self.deks);
        if self.epoch.load(Ordering::SeqCst) == epoch && deks.limit() > 0 {
            deks.insert(
                digest,
                u.clone(),
                key.to_string(),
                std::time::Instant::now(),
            );
        }
    }

    /// Wipes cached data keys past their maximum age (called by the mount's key watcher).
    pub fn sweep_data_keys(&self) {
        lock(&self.deks).sweep(std::time::Instant::now());
    }

    /// Sets how many data keys the cache keeps (0: none, every open asks the KMS).
    pub fn set_data_key_cache(&self, entries: usize) {
        lock(&self.deks).set_limit(entries);
    }

    /// A fresh header wrapped by `key`, made as the requester.
    pub fn new_header(
        &self,
        kind: Kind,
        key: &str,
        r: Requester,
    ) -> FsResult<([u8; header::HEADER_LEN], Unwrapped)> {
        let epoch = self.epoch.load(Ordering::SeqCst);
        let (h, u) = cipherdir::new_header(kind, self.provider.as_ref(), &self.caller(r), key)
            .map_err(|e| {
                log::warn!("no data key from {key}: {e}");
                errno::from_kms(&e)
            })?;
        // The first open of a file just made needs no Decrypt.
        if let Some(k) = self.key_of(&u.blob) {
            self.keep(dekcache::digest(kind as u8, &h), epoch, &u, &k);
        }
        Ok((h, u))
    }

    /// May the requester use a data key it is about to use from memory? Decided by the KMS
    /// once per (uid, gid, key, id) until the key store changes, or once per (uid, gid, key)
    /// if the key's policy reads no context (a file just made needs no KMS call then);
    /// denials are audited there.
    pub fn authorize(
        &self,
        r: Requester,
        key: Option<&str>,
        kind: Kind,
        id: [u8; 16],
    ) -> FsResult<()> {
        self.authorize_ctx(r, key, || kind.context(&id), id)
    }

    /// `authorize` for any encryption context, built only when the KMS is asked (a cached
    /// decision needs none); `id` keys the cached decision.
    pub fn authorize_ctx(
        &self,
        r: Requester,
        key: Option<&str>,
        ctx: impl FnOnce() -> EncryptionContext,
        id: [u8; 16],
    ) -> FsResult<()> {
        let Some(key) = key else { return Ok(()) };
        // One read of the groups: the decision is kept under the groups it was made for.
        let gids = self.gids(r);
        let mut dk = decision_key(r, &gids, key, id);
        let cached = {
            let decisions = lock(&self.decisions);
            decisions.get(&dk).copied().or_else(|| {
                dk.3 = None;
                let d = decisions.get(&dk).copied();
                dk.3 = Some(id);
                d
            })
        };
        if let Some(d) = cached {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return d;
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let epoch = self.epoch.load(Ordering::SeqCst);
        let d = self
            .provider
            .authorize(&self.caller_with(r, gids), key, "kms:Decrypt", &ctx())
            .map_err(|e| errno::from_kms(&e));
        if d == Ok(Reach::AnyContext) {
            dk.3 = None;
        }
        let d = d.map(|_| ());
        self.remember(dk, epoch, d);
        d
    }

    pub fn data_key_stats(&self) -> CacheStats {
        let d = lock(&self.deks);
        CacheStats {
            entries: d.len(),
            limit: d.limit(),
            hits: d.hits,
            misses: self.unwraps.load(Ordering::Relaxed),
        }
    }

    pub fn decision_stats(&self) -> CacheStats {
        CacheStats {
            entries: lock(&self.decisions).len(),
            limit: DECISIONS_MAX,
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
        }
    }

    /// Key store changes seen so far: what was unwrapped in an older epoch may be revoked.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// Whether the key store changed since the last call; forgets cached decisions if so.
    pub fn refresh(&self) -> bool {
        let now = self.provider.change_stamp();
        if self.stamp.swap(now, Ordering::SeqCst) == now {
            return false;
        }
        let mut decisions = lock(&self.decisions);
        let mut deks = lock(&self.deks);
        self.epoch.fetch_add(1, Ordering::SeqCst);
        decisions.clear();
        deks.clear();
        true
    }

    /// Whether the daemon itself may still use `key` under `ctx` (state and policy).
    pub fn usable(&self, key: &str, ctx: &EncryptionContext) -> bool {
        self.provider
            .authorize(&self.daemon, key, "kms:Decrypt", ctx)
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::LocalProvider;
    use std::cell::Cell;

    /// A keyring over a fresh local KMS with one key made by root, and root as a requester.
    fn ring_with_key() -> (
        tempfile::TempDir,
        Arc<LocalProvider>,
        Caller,
        String,
        Keyring,
        Requester,
    ) {
        let (d, local, root, key) = crate::provider::tests::provider_with_key();
        let local = Arc::new(local);
        let ring = Keyring::new(local.clone(), root.clone());
        let me = Requester {
            uid: 0,
            gid: 0,
            pid: std::process::id(),
        };
        (d, local, root, key, ring, me)
    }

    /// Asks `ring` whether a requester may use a file of `key`, counting in `built` the
    /// encryption contexts built (each one a question to the KMS).
    fn asker<'a>(
        ring: &'a Keyring,
        key: &'a str,
        built: &'a Cell<u32>,
    ) -> impl Fn(Requester, [u8; 16]) -> FsResult<()> + 'a {
        move |r, id| {
            ring.authorize_ctx(
                r,
                Some(key),
                || {
                    built.set(built.get() + 1);
                    Kind::File.context(&id)
                },
                id,
            )
        }
    }

    #[test]
    fn a_cached_decision_is_answered_without_building_the_context_until_the_store_changes() {
        let (_d, local, root, key, ring, me) = ring_with_key();
        let id = [7u8; 16];
        let built = Cell::new(0);
        let ask = |r: Requester| asker(&ring, &key, &built)(r, id);
        assert_eq!(ask(me), Ok(()));
        assert_eq!(ask(me), Ok(()));
        assert_eq!(built.get(), 1, "the second answer came from the cache");
        let s = ring.decision_stats();
        assert_eq!((s.hits, s.misses), (1, 1));

        // Another user is decided (and cached) on its own: the default policy denies it.
        let other = Requester { uid: 4242, ..me };
        assert_eq!(ask(other), Err(Errno::EACCES));
        assert_eq!(ask(other), Err(Errno::EACCES));
        assert_eq!(built.get(), 2);

        // A disable changes the store: the cached allow goes, and the KMS is asked again.
        local.kms().disable_key(&root, &key).unwrap();
        assert!(ring.refresh());
        assert!(ask(me).is_err());
        assert_eq!(built.get(), 3);
    }

    #[test]
    fn an_allow_covers_every_file_of_the_key_only_while_its_policy_reads_no_context() {
        let (_d, local, root, key, ring, me) = ring_with_key();
        let asked = Cell::new(0);
        let ask = asker(&ring, &key, &asked);
        // The default policy has no condition: one KMS answer serves every file id.
        assert_eq!(ask(me, [1; 16]), Ok(()));
        assert_eq!(ask(me, [2; 16]), Ok(()));
        assert_eq!(asked.get(), 1);
        // Not for another user, whom the default policy denies (per file, as before).
        let other = Requester { uid: 4242, ..me };
        assert_eq!(ask(other, [1; 16]), Err(Errno::EACCES));
        assert_eq!(ask(other, [2; 16]), Err(Errno::EACCES));
        assert_eq!(asked.get(), 3);

        // A policy that reads the context: each file is decided on its own.
        let id1 = hex::encode([1u8; 16]);
        let policy = serde_json::json!({
            "Version": "2012-10-17",
            "Statement": [{
                "Effect": "Allow", "Principal": "*", "Action": "kms:*", "Resource": "*",
                "Condition": {"StringEquals": {"kms:EncryptionContext:kmsfs:file-id": id1}}
            }]
        })
        .to_string();
        local
            .kms()
            .put_key_policy(&root, &key, &policy, true)
            .unwrap();
        assert!(ring.refresh());
        assert_eq!(ask(me, [1; 16]), Ok(()));
        assert_eq!(
            ask(me, [2; 16]),
            Err(Errno::EACCES),
            "not served by file 1's allow"
        );
        assert_eq!(ask(me, [1; 16]), Ok(()));
        assert_eq!(asked.get(), 5);
    }
}
