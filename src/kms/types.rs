//! Request and response shapes, with AWS KMS field names so `--output json` reads like AWS's.

use crate::clock::format_time;
use crate::kms::key::{KeyRecord, KeyState, Origin};
use crate::kms::keyspec::{self, KeySpec, KeyUsage};
use crate::kms::policy::Decision;
use serde::Serialize;
use std::collections::BTreeMap;
use zeroize::Zeroizing;

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct KeyMetadata {
    pub key_id: String,
    pub arn: String,
    pub creation_date: String,
    pub enabled: bool,
    pub description: String,
    pub key_usage: &'static str,
    pub key_spec: &'static str,
    pub key_state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deletion_date: Option<String>,
    pub origin: &'static str,
    pub key_manager: &'static str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub encryption_algorithms: Vec<&'static str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub signing_algorithms: Vec<&'static str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mac_algorithms: Vec<&'static str>,
    /// kmsfs: the key-material version new encryptions use (0 before import).
    pub current_key_version: u32,
    pub key_rotation_enabled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rotation_period_in_days: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_rotation_date: Option<String>,
    pub aliases: Vec<String>,
    pub tags: BTreeMap<String, String>,
    /// kmsfs: versions below this no longer decrypt (0: none retired).
    pub min_decryption_version: u32,
}

impl KeyMetadata {
    pub fn from_record(r: &KeyRecord, aliases: Vec<String>) -> Self {
        KeyMetadata {
            key_id: r.id.to_string(),
            arn: r.arn(),
            creation_date: format_time(&r.created),
            enabled: r.state == KeyState::Enabled,
            description: r.description.clone(),
            key_usage: r.key_usage.as_str(),
            key_spec: r.key_spec.as_str(),
            key_state: r.state.as_str(),
            deletion_date: r.deletion_date.as_ref().map(format_time),
            origin: r.origin.as_str(),
            key_manager: "CUSTOMER",
            encryption_algorithms: keyspec::encryption_algorithms(r.key_spec, r.key_usage)
                .iter()
                .map(|a| a.as_str())
                .collect(),
            signing_algorithms: keyspec::signing_algorithms(r.key_spec, r.key_usage)
                .iter()
                .map(|a| a.as_str())
                .collect(),
            mac_algorithms: keyspec::mac_algorithms(r.key_spec)
                .iter()
                .map(|a| a.as_str())
                .collect(),
            current_key_version: r.current_version().map_or(0, |v| v.number),
            key_rotation_enabled: r.rotation.is_some(),
            rotation_period_in_days: r.rotation.as_ref().map(|s| s.period_days),
            next_rotation_date: r.rotation.as_ref().map(|s| format_time(&s.next_rotation)),
            aliases,
            tags: r.tags.clone(),
            min_decryption_version: r.min_decryption_version,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct CreateKeyRequest {
    pub description: String,
    pub alias: Option<String>,
    pub policy: Option<String>,
    pub bypass_lockout_check: bool,
    pub origin: Option<Origin>,
    pub tags: BTreeMap<String, String>,
    /// None: SYMMETRIC_DEFAULT.
    pub key_spec: Option<KeySpec>,
    /// None: the spec's default (ENCRYPT_DECRYPT for symmetric and RSA keys).
    pub key_usage: Option<KeyUsage>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct KeyListEntry {
    pub key_id: String,
    pub key_arn: String,
    pub key_state: &'static str,
    pub aliases: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct AliasEntry {
    pub alias_name: String,
    pub alias_arn: String,
    pub target_key_id: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct RotationStatus {
    pub key_id: String,
    pub key_rotation_enabled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rotation_period_in_days: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_rotation_date: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct RotationEntry {
    pub key_id: String,
    pub key_version: u32,
    pub created: String,
    /// AUTOMATIC or ON_DEMAND for rotations; INITIAL or IMPORTED for the first material.
    pub rotation_type: &'static str,
    pub current: bool,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct DeletionResult {
    pub key_id: String,
    pub deletion_date: String,
    pub key_state: &'static str,
    pub pending_window_in_days: u32,
}

/// A ciphertext blob with the key and version that made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wrapped {
    pub blob: Vec<u8>,
    pub key_id: uuid::Uuid,
    pub key_version: u32,
}

/// Plaintext out of Decrypt, or a data key out of GenerateDataKey; wiped when dropped.
pub struct Unwrapped {
    pub plaintext: Zeroizing<Vec<u8>>,
    pub key_id: uuid::Uuid,
    pub key_version: u32,
}

/// GetPublicKey's answer: the DER SubjectPublicKeyInfo and what the key may do.
#[derive(Debug, Clone)]
pub struct PublicKeyInfo {
    pub key_id: uuid::Uuid,
    pub public_key: Vec<u8>,
    pub key_spec: KeySpec,
    pub key_usage: KeyUsage,
}

/// GenerateDataKeyPair's answer; the private key is PKCS#8 DER, wiped when dropped.
pub struct DataKeyPair {
    pub private_plaintext: Option<Zeroizing<Vec<u8>>>,
    pub private_wrapped: Wrapped,
    pub public_key: Vec<u8>,
    pub spec: keyspec::KeyPairSpec,
}

pub struct DataKey {
    /// None for GenerateDataKeyWithoutPlaintext.
    pub plaintext: Option<Zeroizing<Vec<u8>>>,
    pub wrapped: Wrapped,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Explanation {
    pub key_id: String,
    pub action: String,
    pub principal: String,
    /// "Allow" or "Deny".
    pub decision: &'static str,
    /// "explicit" (a Deny statement), "allow", or "implicit" (nothing allows it).
    pub reason: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub statement: Option<String>,
}

impl Explanation {
    pub fn new(key_id: String, action: String, principal: String, d: &Decision) -> Self {
        let (decision, reason, statement) = match d {
            Decision::Allow { statement } => ("Allow", "allow", Some(statement.clone())),
            Decision::ExplicitDeny { statement } => ("Deny", "explicit", Some(statement.clone())),
            Decision::ImplicitDeny => ("Deny", "implicit", None),
        };
        Explanation {
            key_id,
            action,
            principal,
            decision,
            reason,
            statement,
        }
    }
}

/// ReEncrypt's inputs; the algorithms are None for ciphertext blobs (SYMMETRIC_DEFAULT).
pub struct ReEncryptRequest<'a> {
    pub data: &'a [u8],
    pub source_ctx: &'a crate::kms::EncryptionContext,
    pub source_key: Option<&'a str>,
    pub source_alg: Option<keyspec::EncryptionAlgorithm>,
    pub to: &'a str,
    pub dest_ctx: &'a crate::kms::EncryptionContext,
    pub dest_alg: Option<keyspec::EncryptionAlgorithm>,
}
