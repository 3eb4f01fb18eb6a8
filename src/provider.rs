//! The seam between the filesystem and whatever holds its CMKs. The filesystem asks for data keys
//! through `KeyProvider` only, so it never knows whether the KMS is this host's or a remote one.

use crate::error::Result;
pub use crate::kms::policy::Reach;
use crate::kms::types::Wrapped;
use crate::kms::{Caller, EncryptionContext, Kms};
use std::collections::HashMap;
use std::sync::Mutex;
use zeroize::Zeroizing;

/// A wrapped data key as stored, with the key that wrapped it as the provider names keys (a
/// local key id, or a remote service's key ARN) and the key version where the provider has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrappedKey {
    pub blob: Vec<u8>,
    pub key: String,
    pub version: Option<u32>,
}

impl From<Wrapped> for WrappedKey {
    fn from(w: Wrapped) -> WrappedKey {
        WrappedKey {
            blob: w.blob,
            key: w.key_id.to_string(),
            version: Some(w.key_version),
        }
    }
}

/// A data key: the plaintext for immediate use (wiped on drop) and its wrapped form to store.
pub struct ProvidedKey {
    pub plaintext: Zeroizing<Vec<u8>>,
    pub wrapped: WrappedKey,
}

pub trait KeyProvider: Send + Sync {
    /// A fresh 256-bit data key wrapped by the current version of `key`.
    fn generate_data_key(
        &self,
        caller: &Caller,
        key: &str,
        ctx: &EncryptionContext,
    ) -> Result<ProvidedKey>;

    /// Unwraps a data key; the blob names its key and version.
    fn decrypt_data_key(
        &self,
        caller: &Caller,
        blob: &[u8],
        ctx: &EncryptionContext,
    ) -> Result<Zeroizing<Vec<u8>>>;

    /// Re-wraps a data key under `to` (or the current version of its own key) without exposing it.
    fn re_encrypt(
        &self,
        caller: &Caller,
        blob: &[u8],
        ctx: &EncryptionContext,
        to: Option<&str>,
    ) -> Result<WrappedKey>;

    /// Wraps a data key the caller already holds under `key` (for re-wrapping headers).
    fn wrap(
        &self,
        caller: &Caller,
        key: &str,
        data_key: &[u8],
        ctx: &EncryptionContext,
    ) -> Result<WrappedKey>;

    /// Re-wraps a stored data key (`blob`, whose plaintext `data_key` the caller already
    /// unwrapped to check the header) under `to`. Locally this is one Encrypt; a remote
    /// provider uses ReEncrypt, so the service sees the move.
    fn rewrap_key(
        &self,
        caller: &Caller,
        blob: &[u8],
        data_key: &[u8],
        ctx: &EncryptionContext,
        to: &str,
    ) -> Result<WrappedKey> {
        let _ = blob;
        self.wrap(caller, to, data_key, ctx)
    }

    /// May `caller` still use `key` for `action` under `ctx`? For data keys held already:
    /// checks the key's state and policy without unwrapping anything. An allow says whether it
    /// holds for this context only or for any (until the key store changes).
    fn authorize(
        &self,
        caller: &Caller,
        key: &str,
        action: &str,
        ctx: &EncryptionContext,
    ) -> Result<Reach>;

    /// The key (and version, where known) a wrapped key names, read without the KMS.
    fn key_of(&self, blob: &[u8]) -> Option<(String, Option<u32>)>;

    /// The id of the key a name (id, alias, ARN) refers to.
    fn key_of_name(&self, caller: &Caller, key: &str) -> Result<String>;

    /// The id of `key` (as `key_of_name`) and its current version, if the provider versions
    /// keys: what a wrapping must name to be current.
    fn current_key(&self, caller: &Caller, key: &str) -> Result<(String, Option<u32>)>;

    /// A key's state ("Enabled", "Disabled", ...) and current version, for `kmsfs status`.
    fn key_status(&self, caller: &Caller, key: &str) -> Result<KeyStatus>;

    /// Changes whenever key states or policies may have changed (polled by mounts).
    fn change_stamp(&self) -> u64;

    /// Applies due automatic rotations and deletions; returns how many happened.
    fn maintain(&self, caller: &Caller) -> Result<usize>;

    /// Lets audit records wait for `flush_audit` to be synced (a mount, which flushes every
    /// `KEY_POLL` and before each fsync). Local key stores only; a remote service keeps its own.
    fn defer_audit_sync(&self) {}

    /// Makes the audit records written so far durable (see `defer_audit_sync`).
    fn flush_audit(&self) -> Result<()> {
        Ok(())
    }

    /// The remote service this provider speaks to, as a cipher directory's config names it
    /// (None: the local key store).
    fn remote_config(&self) -> Option<&crate::aws::remote::RemoteConfig> {
        None
    }
}

#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct KeyStatus {
    pub state: String,
    pub current_version: Option<u32>,
}

/// (caller uid, caller gids, key name) -> (key store stamp, key id, current version).
type DescribeCache = HashMap<(u32, Vec<u32>, String), (u64, String, u32)>;

/// Described keys kept at most (a rewrap asks about one or two names; the bound is for safety).
const DESCRIBE_CACHE_MAX: usize = 1024;

/// The local KMS behind the seam.
pub struct LocalProvider {
    kms: Kms,
    /// Rewrap asks for each header which key and version are current; the answer only changes
    /// when keys.db does, so it is reused while the store's change stamp is the same. Keyed by
    /// caller too: the first answer was the caller's own, policy-checked and audited.
    described: Mutex<DescribeCache>,
}

impl LocalProvider {
    pub fn new(kms: Kms) -> Self {
        LocalProvider {
            kms,
            described: Mutex::new(HashMap::new()),
        }
    }

    pub fn kms(&self) -> &Kms {
        &self.kms
    }

    /// The id and current version of `key`, as DescribeKey for `caller` answered it since the
    /// key store last changed.
    fn describe(&self, caller: &Caller, key: &str) -> Result<(String, u32)> {
        let k = (caller.uid, caller.gids.clone(), key.to_string());
        let stamp = self.kms.change_stamp();
        let mut cache = self.described.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((s, id, v)) = cache.get(&k) {
            if *s == stamp {
                return Ok((id.clone(), *v));
            }
        }
        drop(cache);
        // The stamp was read first: if keys.db changes meanwhile, the entry is stale at once.
        let m = self.kms.describe_key(caller, key)?;
        cache = self.described.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= DESCRIBE_CACHE_MAX {
            cache.clear();
        }
        cache.insert(k, (stamp, m.key_id.clone(), m.current_key_version));
        Ok((m.key_id, m.current_key_version))
    }
}

/// Data keys for file contents are AES-256 keys.
pub const DATA_KEY_BYTES: usize = 32;

impl KeyProvider for LocalProvider {
    fn generate_data_key(
        &self,
        caller: &Caller,
        key: &str,
        ctx: &EncryptionContext,
    ) -> Result<ProvidedKey> {
        let dk = self
            .kms
            .generate_data_key(caller, key, DATA_KEY_BYTES, ctx, true)?;
        let plaintext = dk.plaintext.ok_or_else(|| {
            crate::error::KmsError::internal("GenerateDataKey returned no plaintext")
        })?;
        Ok(ProvidedKey {
            plaintext,
            wrapped: dk.wrapped.into(),
        })
    }

    fn decrypt_data_key(
        &self,
        caller: &Caller,
        blob: &[u8],
        ctx: &EncryptionContext,
    ) -> Result<Zeroizing<Vec<u8>>> {
        Ok(self.kms.decrypt(caller, blob, ctx, None)?.plaintext)
    }

    fn re_encrypt(
        &self,
        caller: &Caller,
        blob: &[u8],
        ctx: &EncryptionContext,
        to: Option<&str>,
    ) -> Result<WrappedKey> {
        let to = match to {
            Some(t) => t.to_string(),
            None => crate::kms::blob::parse(blob)?.0.key_id.to_string(),
        };
        Ok(self.kms.re_encrypt(caller, blob, ctx, &to, ctx)?.into())
    }

    fn wrap(
        &self,
        caller: &Caller,
        key: &str,
        data_key: &[u8],
        ctx: &EncryptionContext,
    ) -> Result<WrappedKey> {
        Ok(self.kms.encrypt(caller, key, data_key, ctx)?.into())
    }

    fn authorize(
        &self,
        caller: &Caller,
        key: &str,
        action: &str,
        ctx: &EncryptionContext,
    ) -> Result<Reach> {
        self.kms.authorize_use(caller, key, action, ctx)
    }

    fn key_of(&self, blob: &[u8]) -> Option<(String, Option<u32>)> {
        crate::kms::blob::parse(blob)
            .ok()
            .map(|(h, _)| (h.key_id.to_string(), Some(h.key_version)))
    }

    fn key_of_name(&self, caller: &Caller, key: &str) -> Result<String> {
        Ok(self.describe(caller, key)?.0)
    }

    fn current_key(&self, caller: &Caller, key: &str) -> Result<(String, Option<u32>)> {
        let (id, version) = self.describe(caller, key)?;
        Ok((id, Some(version)))
    }

    fn key_status(&self, caller: &Caller, key: &str) -> Result<KeyStatus> {
        let m = self.kms.describe_key(caller, key)?;
        Ok(KeyStatus {
            state: m.key_state.to_string(),
            current_version: Some(m.current_key_version),
        })
    }

    fn change_stamp(&self) -> u64 {
        self.kms.change_stamp()
    }

    fn maintain(&self, caller: &Caller) -> Result<usize> {
        self.kms.maintain(caller)
    }

    fn defer_audit_sync(&self) {
        self.kms.defer_audit_sync();
    }

    fn flush_audit(&self) -> Result<()> {
        self.kms.flush_audit()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::clock::Clock;
    use crate::keystore::KeyStore;
    use crate::keystore::rootkey::{KdfParams, MIN_MEMORY_KIB, RootSecret};
    use crate::kms::types::CreateKeyRequest;

    /// A local KMS in a fresh key store (cheap KDF settings).
    pub(crate) fn provider() -> (tempfile::TempDir, LocalProvider) {
        let d = tempfile::tempdir().unwrap();
        let secret = RootSecret::passphrase(b"p".to_vec()).unwrap();
        let kdf = KdfParams {
            memory_kib: MIN_MEMORY_KIB,
            iterations: 1,
            parallelism: 1,
        };
        let store = KeyStore::init(&d.path().join("ks"), &secret, kdf, chrono::Utc::now()).unwrap();
        let kms = Kms::new(store, Clock::from_env().unwrap());
        (d, LocalProvider::new(kms))
    }

    /// `provider` with a symmetric key made by root (the caller returned, this process).
    pub(crate) fn provider_with_key() -> (tempfile::TempDir, LocalProvider, Caller, String) {
        let (d, p) = provider();
        let root = Caller::from_ids(0, vec![0], std::process::id());
        let key = p
            .kms()
            .create_key(&root, CreateKeyRequest::default())
            .unwrap()
            .key_id;
        (d, p, root, key)
    }

    /// The newest record audit.head names.
    fn head_seq(d: &std::path::Path) -> u64 {
        let data = std::fs::read(d.join("ks").join(crate::keystore::AUDIT_HEAD_FILE)).unwrap();
        data.chunks(256)
            .filter_map(|s| serde_json::from_slice::<serde_json::Value>(s.trim_ascii()).ok())
            .filter_map(|h| h["seq"].as_u64())
            .max()
            .unwrap()
    }

    /// Deferred key uses wait for a flush; a key store change, whose keys.db is durable at
    /// once, flushes them with its own records.
    #[test]
    fn deferred_records_wait_for_a_flush_or_a_key_store_change() {
        let (d, p, root, key) = provider_with_key();
        p.defer_audit_sync();
        let ctx = EncryptionContext::default();
        let records = || p.kms().audit_records().unwrap().len() as u64;
        let synced = head_seq(d.path());
        p.generate_data_key(&root, &key, &ctx).unwrap();
        p.generate_data_key(&root, &key, &ctx).unwrap();
        assert_eq!(records(), synced + 2, "written at once");
        assert_eq!(head_seq(d.path()), synced, "not yet confirmed");
        p.flush_audit().unwrap();
        assert_eq!(head_seq(d.path()), synced + 2);
        p.generate_data_key(&root, &key, &ctx).unwrap();
        p.kms().disable_key(&root, &key).unwrap();
        assert_eq!(head_seq(d.path()), records(), "the change flushed it all");
    }

    #[test]
    fn described_keys_are_reused_only_until_the_store_changes_and_per_caller() {
        let (_d, p, root, id) = provider_with_key();
        let audited = |p: &LocalProvider| {
            let records = p.kms().audit_records().unwrap();
            records
                .iter()
                .filter(|r| r.operation == "DescribeKey")
                .count()
        };
        assert_eq!(p.current_key(&root, &id).unwrap(), (id.clone(), Some(1)));
        assert_eq!(p.key_of_name(&root, &id).unwrap(), id);
        assert_eq!(
            audited(&p),
            1,
            "the second question was answered from the cache"
        );
        // A rotation rewrites keys.db: the next answer is the new version.
        p.kms().rotate_key_on_demand(&root, &id).unwrap();
        assert_eq!(p.current_key(&root, &id).unwrap().1, Some(2));
        assert_eq!(audited(&p), 2);
        // Another caller is not answered from root's entry: the default policy denies uid 4242.
        let other = Caller::from_ids(4242, vec![4242], 2);
        let e = p.current_key(&other, &id).unwrap_err();
        assert_eq!(e.kind, crate::error::ErrorKind::AccessDenied);
    }
}
