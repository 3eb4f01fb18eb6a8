//! The seam between the filesystem and whatever holds its CMKs. The filesystem asks for data keys
//! through `KeyProvider` only, so it never knows whether the KMS is this host's or a remote one.

use crate::error::Result;
use crate::kms::types::Wrapped;
use crate::kms::{Caller, EncryptionContext, Kms};
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
    /// checks the key's state and policy without unwrapping anything.
    fn authorize(
        &self,
        caller: &Caller,
        key: &str,
        action: &str,
        ctx: &EncryptionContext,
    ) -> Result<()>;

    /// The key (and version, where known) a wrapped key names, read without the KMS.
    fn key_of(&self, blob: &[u8]) -> Option<(String, Option<u32>)>;

    /// The id of the key a name (id, alias, ARN) refers to.
    fn key_of_name(&self, caller: &Caller, key: &str) -> Result<String>;

    /// The current version of `key`, if the provider versions keys.
    fn current_version(&self, caller: &Caller, key: &str) -> Result<Option<u32>>;

    /// A key's state ("Enabled", "Disabled", ...) and current version, for `kmsfs status`.
    fn key_status(&self, caller: &Caller, key: &str) -> Result<KeyStatus>;

    /// Changes whenever key states or policies may have changed (polled by mounts).
    fn change_stamp(&self) -> u64;

    /// Applies due automatic rotations and deletions; returns how many happened.
    fn maintain(&self, caller: &Caller) -> Result<usize>;
}

#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct KeyStatus {
    pub state: String,
    pub current_version: Option<u32>,
}

/// The local KMS behind the seam.
pub struct LocalProvider {
    kms: Kms,
}

impl LocalProvider {
    pub fn new(kms: Kms) -> Self {
        LocalProvider { kms }
    }

    pub fn kms(&self) -> &Kms {
        &self.kms
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
    ) -> Result<()> {
        self.kms.authorize_use(caller, key, action, ctx)
    }

    fn key_of(&self, blob: &[u8]) -> Option<(String, Option<u32>)> {
        crate::kms::blob::parse(blob)
            .ok()
            .map(|(h, _)| (h.key_id.to_string(), Some(h.key_version)))
    }

    fn key_of_name(&self, caller: &Caller, key: &str) -> Result<String> {
        Ok(self.kms.describe_key(caller, key)?.key_id)
    }

    fn current_version(&self, caller: &Caller, key: &str) -> Result<Option<u32>> {
        Ok(Some(
            self.kms.describe_key(caller, key)?.current_key_version,
        ))
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
}
