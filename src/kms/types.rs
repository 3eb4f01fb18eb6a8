//! Request and response shapes, with AWS KMS field names so `--output json` reads like AWS's.

use crate::clock::format_time;
use crate::kms::key::{KeyRecord, KeyState, Origin};
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
    pub encryption_algorithms: Vec<&'static str>,
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
            key_usage: "ENCRYPT_DECRYPT",
            key_spec: "SYMMETRIC_DEFAULT",
            key_state: r.state.as_str(),
            deletion_date: r.deletion_date.as_ref().map(format_time),
            origin: r.origin.as_str(),
            key_manager: "CUSTOMER",
            encryption_algorithms: vec!["SYMMETRIC_DEFAULT"],
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
