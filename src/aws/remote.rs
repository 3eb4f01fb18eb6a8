//! The remote key provider: a cipher directory whose CMKs live in an AWS-KMS-compatible service
//! (AWS KMS, `kmsfs serve` on another host, moto in tests). Data keys come from GenerateDataKey
//! and Decrypt, re-wrapping uses ReEncrypt, and key states are cached for at most
//! `key_cache_seconds`, so a key disabled at the service stops the mount within that bound.
//!
//! The service's ciphertext is opaque, so the stored blob is an envelope naming its key
//! (docs/FORMAT.md, "Remote ciphertext envelopes"): `KMSR`, version 1, the key ARN's length
//! (u16, big endian), the ARN, then the service's CiphertextBlob.

use crate::aws::client::KmsClient;
use crate::encoding::{b64_decode, b64_encode};
use crate::error::{ErrorKind, KmsError, Result};
use crate::kms::{Caller, EncryptionContext};
use crate::provider::{DATA_KEY_BYTES, KeyProvider, KeyStatus, ProvidedKey, Reach, WrappedKey};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use zeroize::Zeroizing;

pub const ENVELOPE_MAGIC: &[u8; 4] = b"KMSR";
pub const ENVELOPE_VERSION: u8 = 1;
pub const PROVIDER_KIND: &str = "aws-kms";
pub const DEFAULT_KEY_CACHE_SECONDS: u64 = 60;

/// How a cipher directory reaches its remote service (kept in kmsfs.conf, under its MAC).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteConfig {
    /// "aws-kms".
    pub kind: String,
    pub endpoint: String,
    pub region: String,
    /// How long a key's state is trusted before the service is asked again (0: every time).
    pub key_cache_seconds: u64,
}

/// Wraps the service's ciphertext with the ARN of the key that made it.
pub fn envelope(arn: &str, ciphertext: &[u8]) -> Result<Vec<u8>> {
    let len = u16::try_from(arn.len())
        .map_err(|_| KmsError::validation("the service's key ARN is too long"))?;
    let mut out = Vec::with_capacity(7 + arn.len() + ciphertext.len());
    out.extend_from_slice(ENVELOPE_MAGIC);
    out.push(ENVELOPE_VERSION);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(arn.as_bytes());
    out.extend_from_slice(ciphertext);
    Ok(out)
}

/// Splits an envelope into the key ARN and the service's ciphertext.
pub fn open_envelope(blob: &[u8]) -> Result<(&str, &[u8])> {
    let bad = || KmsError::invalid_ciphertext("not a remote key envelope (KMSR)");
    if blob.len() < 7 || &blob[..4] != ENVELOPE_MAGIC || blob[4] != ENVELOPE_VERSION {
        return Err(bad());
    }
    let n = usize::from(u16::from_be_bytes([blob[5], blob[6]]));
    let arn = blob.get(7..7 + n).ok_or_else(bad)?;
    let rest = &blob[7 + n..];
    if n == 0 || rest.is_empty() {
        return Err(bad());
    }
    Ok((std::str::from_utf8(arn).map_err(|_| bad())?, rest))
}

/// A key's state and ARN as last described, with the cache period they belong to.
struct Described {
    period: u64,
    arn: String,
    state: String,
}

pub struct RemoteProvider {
    config: RemoteConfig,
    client: KmsClient,
    described: Mutex<HashMap<String, Described>>,
    /// For key_cache_seconds = 0: each poll of `change_stamp` is a change.
    polls: AtomicU64,
}

fn field<'a>(v: &'a Value, name: &str) -> Result<&'a str> {
    v.get(name).and_then(Value::as_str).ok_or_else(|| {
        KmsError::new(
            ErrorKind::Internal,
            format!("the key service's answer has no {name}"),
        )
    })
}

fn blob_field(v: &Value, name: &str) -> Result<Vec<u8>> {
    b64_decode(field(v, name)?)
        .map_err(|_| KmsError::internal(format!("the key service's {name} is not base64")))
}

impl RemoteProvider {
    pub fn new(config: &RemoteConfig, credentials: crate::aws::sigv4::Credentials) -> Result<Self> {
        if config.kind != PROVIDER_KIND {
            return Err(KmsError::validation(format!(
                "provider {:?}: this kmsfs knows {PROVIDER_KIND}",
                config.kind
            )));
        }
        Ok(RemoteProvider {
            config: config.clone(),
            client: KmsClient::new(&config.endpoint, &config.region, credentials)?,
            described: Mutex::new(HashMap::new()),
            polls: AtomicU64::new(0),
        })
    }

    fn period(&self) -> u64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        now / self.config.key_cache_seconds.max(1)
    }

    /// DescribeKey, answered from the cache within the current period (never with 0 seconds).
    fn describe(&self, key: &str) -> Result<(String, String)> {
        let period = self.period();
        if self.config.key_cache_seconds > 0 {
            if let Some(d) = self.cache().get(key) {
                if d.period == period {
                    return Ok((d.arn.clone(), d.state.clone()));
                }
            }
        }
        let v = self.client.call("DescribeKey", &json!({ "KeyId": key }))?;
        let m = v
            .get("KeyMetadata")
            .ok_or_else(|| KmsError::internal("DescribeKey answered no KeyMetadata"))?;
        let arn = field(m, "Arn")?.to_string();
        let state = field(m, "KeyState")?.to_string();
        self.cache().insert(
            key.to_string(),
            Described {
                period,
                arn: arn.clone(),
                state: state.clone(),
            },
        );
        Ok((arn, state))
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<String, Described>> {
        self.described.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wrapped(&self, v: &Value) -> Result<WrappedKey> {
        let arn = field(v, "KeyId")?.to_string();
        Ok(WrappedKey {
            blob: envelope(&arn, &blob_field(v, "CiphertextBlob")?)?,
            key: arn,
            version: None,
        })
    }
}

impl KeyProvider for RemoteProvider {
    fn generate_data_key(
        &self,
        caller: &Caller,
        key: &str,
        ctx: &EncryptionContext,
    ) -> Result<ProvidedKey> {
        self.authorize(caller, key, "kms:GenerateDataKey", ctx)?;
        let v = self.client.call(
            "GenerateDataKey",
            &json!({ "KeyId": key, "NumberOfBytes": DATA_KEY_BYTES, "EncryptionContext": ctx }),
        )?;
        let plaintext = Zeroizing::new(blob_field(&v, "Plaintext")?);
        if plaintext.len() != DATA_KEY_BYTES {
            return Err(KmsError::internal(
                "GenerateDataKey returned a key of the wrong size",
            ));
        }
        Ok(ProvidedKey {
            plaintext,
            wrapped: self.wrapped(&v)?,
        })
    }

    fn decrypt_data_key(
        &self,
        caller: &Caller,
        blob: &[u8],
        ctx: &EncryptionContext,
    ) -> Result<Zeroizing<Vec<u8>>> {
        let (arn, ct) = open_envelope(blob)?;
        // The key's state, from the cache: not every service refuses disabled keys itself.
        self.authorize(caller, arn, "kms:Decrypt", ctx)?;
        let v = self.client.call(
            "Decrypt",
            &json!({ "CiphertextBlob": b64_encode(ct), "EncryptionContext": ctx, "KeyId": arn }),
        )?;
        let text = Zeroizing::new(field(&v, "Plaintext")?.to_string());
        b64_decode(&text)
            .map(Zeroizing::new)
            .map_err(|_| KmsError::internal("the key service's Plaintext is not base64"))
    }

    fn re_encrypt(
        &self,
        _caller: &Caller,
        blob: &[u8],
        ctx: &EncryptionContext,
        to: Option<&str>,
    ) -> Result<WrappedKey> {
        let (arn, ct) = open_envelope(blob)?;
        let v = self.client.call(
            "ReEncrypt",
            &json!({
                "CiphertextBlob": b64_encode(ct),
                "SourceKeyId": arn,
                "SourceEncryptionContext": ctx,
                "DestinationKeyId": to.unwrap_or(arn),
                "DestinationEncryptionContext": ctx,
            }),
        )?;
        self.wrapped(&v)
    }

    fn wrap(
        &self,
        _caller: &Caller,
        key: &str,
        data_key: &[u8],
        ctx: &EncryptionContext,
    ) -> Result<WrappedKey> {
        let v = self.client.call(
            "Encrypt",
            &json!({ "KeyId": key, "Plaintext": b64_encode(data_key), "EncryptionContext": ctx }),
        )?;
        self.wrapped(&v)
    }

    fn rewrap_key(
        &self,
        caller: &Caller,
        blob: &[u8],
        _data_key: &[u8],
        ctx: &EncryptionContext,
        to: &str,
    ) -> Result<WrappedKey> {
        self.re_encrypt(caller, blob, ctx, Some(to))
    }

    /// The service decides who may use its keys (for the mount's AWS identity); here only the
    /// key's state is checked, from the cache.
    fn authorize(
        &self,
        _caller: &Caller,
        key: &str,
        _action: &str,
        _ctx: &EncryptionContext,
    ) -> Result<Reach> {
        // Only the key's state is checked here, for any caller and context: the service's
        // policy sees the daemon's calls (its credentials), not the users behind them.
        let (arn, state) = self.describe(key)?;
        match state.as_str() {
            "Enabled" => Ok(Reach::AnyContext),
            "Disabled" => Err(KmsError::new(
                ErrorKind::Disabled,
                format!("key {arn} is disabled at {}", self.client.endpoint()),
            )),
            s => Err(KmsError::invalid_state(format!(
                "key {arn} is {s} at {}",
                self.client.endpoint()
            ))),
        }
    }

    fn key_of(&self, blob: &[u8]) -> Option<(String, Option<u32>)> {
        open_envelope(blob)
            .ok()
            .map(|(arn, _)| (arn.to_string(), None))
    }

    fn key_of_name(&self, _caller: &Caller, key: &str) -> Result<String> {
        Ok(self.describe(key)?.0)
    }

    /// The service's key versions are not visible: every rewrap re-wraps.
    fn current_key(&self, _caller: &Caller, key: &str) -> Result<(String, Option<u32>)> {
        Ok((self.describe(key)?.0, None))
    }

    fn key_status(&self, _caller: &Caller, key: &str) -> Result<KeyStatus> {
        Ok(KeyStatus {
            state: self.describe(key)?.1,
            current_version: None,
        })
    }

    fn change_stamp(&self) -> u64 {
        if self.config.key_cache_seconds == 0 {
            return self.polls.fetch_add(1, Ordering::SeqCst) + 1;
        }
        self.period()
    }

    /// The service rotates and deletes its own keys.
    fn maintain(&self, _caller: &Caller) -> Result<usize> {
        Ok(0)
    }

    fn remote_config(&self) -> Option<&RemoteConfig> {
        Some(&self.config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_round_trip_and_reject_garbage() {
        let arn = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";
        let e = envelope(arn, b"ciphertext").unwrap();
        assert_eq!(&e[..4], b"KMSR");
        let (a, c) = open_envelope(&e).unwrap();
        assert_eq!((a, c), (arn, &b"ciphertext"[..]));
        assert!(open_envelope(&e[..7 + arn.len()]).is_err(), "no ciphertext");
        assert!(open_envelope(&e[..10]).is_err());
        assert!(open_envelope(b"KMSB\x01\x00\x01ab").is_err());
        let mut v2 = e.clone();
        v2[4] = 2;
        assert!(open_envelope(&v2).is_err());
    }
}
