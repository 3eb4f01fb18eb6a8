//! AWS KMS JSON 1.1 operations: each `TrentService.<Operation>` request body (AWS's field
//! names, base64 blobs, epoch-second timestamps) mapped onto one `Kms` call and its answer.

use crate::encoding::{b64_decode, b64_encode};
use crate::error::{ErrorKind, KmsError, Result};
use crate::kms::asymmetric::SignRequest;
use crate::kms::key::{Origin, key_arn};
use crate::kms::keyspec::{
    EncryptionAlgorithm, KeyPairSpec, KeySpec, KeyUsage, MacAlgorithm, MessageType,
    SigningAlgorithm,
};
use crate::kms::types::{CreateKeyRequest, KeyMetadata, ReEncryptRequest};
use crate::kms::{Caller, EncryptionContext, Kms};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

/// The operations `kmsfs serve` answers.
pub const OPERATIONS: &[&str] = &[
    "CancelKeyDeletion",
    "CreateAlias",
    "CreateKey",
    "Decrypt",
    "DeleteAlias",
    "DescribeKey",
    "DisableKey",
    "DisableKeyRotation",
    "EnableKey",
    "EnableKeyRotation",
    "Encrypt",
    "GenerateDataKey",
    "GenerateDataKeyPair",
    "GenerateDataKeyPairWithoutPlaintext",
    "GenerateDataKeyWithoutPlaintext",
    "GenerateMac",
    "GenerateRandom",
    "GetKeyPolicy",
    "GetKeyRotationStatus",
    "GetParametersForImport",
    "GetPublicKey",
    "ImportKeyMaterial",
    "ListAliases",
    "ListKeyPolicies",
    "ListKeyRotations",
    "ListKeys",
    "ListResourceTags",
    "PutKeyPolicy",
    "ReEncrypt",
    "RotateKeyOnDemand",
    "ScheduleKeyDeletion",
    "Sign",
    "TagResource",
    "UntagResource",
    "Verify",
    "VerifyMac",
];

/// The request body, with typed getters that answer ValidationException for bad input.
struct Params<'a>(&'a Map<String, Value>);

impl Params<'_> {
    fn opt_str(&self, name: &str) -> Result<Option<&str>> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(KmsError::validation(format!("{name} must be a string"))),
        }
    }

    fn str(&self, name: &str) -> Result<&str> {
        self.opt_str(name)?
            .ok_or_else(|| KmsError::validation(format!("{name} is required")))
    }

    fn opt_blob(&self, name: &str) -> Result<Option<Vec<u8>>> {
        self.opt_str(name)?
            .map(|s| {
                b64_decode(s).map_err(|_| KmsError::validation(format!("{name} is not base64")))
            })
            .transpose()
    }

    fn blob(&self, name: &str) -> Result<Vec<u8>> {
        self.opt_blob(name)?
            .ok_or_else(|| KmsError::validation(format!("{name} is required")))
    }

    fn opt_u64(&self, name: &str) -> Result<Option<u64>> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| KmsError::validation(format!("{name} must be a whole number"))),
        }
    }

    fn bool(&self, name: &str) -> Result<bool> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(KmsError::validation(format!(
                "{name} must be true or false"
            ))),
        }
    }

    fn context(&self, name: &str) -> Result<EncryptionContext> {
        let mut map = BTreeMap::new();
        match self.0.get(name) {
            None | Some(Value::Null) => {}
            Some(Value::Object(o)) => {
                for (k, v) in o {
                    let v = v.as_str().ok_or_else(|| {
                        KmsError::validation(format!("{name} values must be strings"))
                    })?;
                    map.insert(k.clone(), v.to_string());
                }
            }
            Some(_) => return Err(KmsError::validation(format!("{name} must be a map"))),
        }
        let ctx = EncryptionContext(map);
        ctx.validate()?;
        Ok(ctx)
    }

    fn parsed<T>(&self, name: &str, parse: fn(&str) -> Result<T>) -> Result<Option<T>> {
        self.opt_str(name)?.map(parse).transpose()
    }

    fn required<T>(&self, name: &str, parse: fn(&str) -> Result<T>) -> Result<T> {
        parse(self.str(name)?)
    }

    fn tags(&self, name: &str) -> Result<BTreeMap<String, String>> {
        let mut out = BTreeMap::new();
        let Some(list) = self.0.get(name) else {
            return Ok(out);
        };
        let list = list
            .as_array()
            .ok_or_else(|| KmsError::validation(format!("{name} must be a list")))?;
        for t in list {
            let (Some(k), Some(v)) = (
                t.get("TagKey").and_then(Value::as_str),
                t.get("TagValue").and_then(Value::as_str),
            ) else {
                return Err(KmsError::validation("each tag needs TagKey and TagValue"));
            };
            out.insert(k.to_string(), v.to_string());
        }
        Ok(out)
    }

    /// Limit and Marker of the List operations: (start, count).
    fn page(&self) -> Result<(usize, usize)> {
        let limit = self.opt_u64("Limit")?.unwrap_or(100);
        if !(1..=1000).contains(&limit) {
            return Err(KmsError::validation("Limit must be 1 to 1000"));
        }
        let start = match self.opt_str("Marker")? {
            Some(m) => m
                .parse()
                .map_err(|_| KmsError::validation("Marker is not one this server gave"))?,
            None => 0,
        };
        Ok((start, limit as usize))
    }
}

/// One page of `items` with AWS's Truncated/NextMarker.
fn paged(field: &str, items: Vec<Value>, (start, limit): (usize, usize)) -> Value {
    let total = items.len();
    let page: Vec<Value> = items.into_iter().skip(start).take(limit).collect();
    let end = start + page.len();
    let mut v = json!({ field: page, "Truncated": end < total });
    if end < total {
        v["NextMarker"] = json!(end.to_string());
    }
    v
}

/// An RFC 3339 time from the KMS as the JSON protocol's epoch seconds.
fn epoch(t: &str) -> Value {
    chrono::DateTime::parse_from_rfc3339(t)
        .map(|d| json!(d.timestamp_millis() as f64 / 1000.0))
        .unwrap_or(Value::Null)
}

fn metadata(m: &KeyMetadata) -> Value {
    let mut v = json!({
        "AWSAccountId": "000000000000",
        "KeyId": m.key_id,
        "Arn": m.arn,
        "CreationDate": epoch(&m.creation_date),
        "Enabled": m.enabled,
        "Description": m.description,
        "KeyUsage": m.key_usage,
        "KeyState": m.key_state,
        "Origin": m.origin,
        "KeyManager": m.key_manager,
        "CustomerMasterKeySpec": m.key_spec,
        "KeySpec": m.key_spec,
        "MultiRegion": false,
    });
    if let Some(d) = &m.deletion_date {
        v["DeletionDate"] = epoch(d);
    }
    for (field, list) in [
        ("EncryptionAlgorithms", &m.encryption_algorithms),
        ("SigningAlgorithms", &m.signing_algorithms),
        ("MacAlgorithms", &m.mac_algorithms),
    ] {
        if !list.is_empty() {
            v[field] = json!(list);
        }
    }
    v
}

fn tag_list(tags: &BTreeMap<String, String>) -> Vec<Value> {
    tags.iter()
        .map(|(k, v)| json!({ "TagKey": k, "TagValue": v }))
        .collect()
}

fn data_key_bytes(p: &Params) -> Result<usize> {
    match (p.opt_u64("NumberOfBytes")?, p.opt_str("KeySpec")?) {
        (Some(_), Some(_)) => Err(KmsError::validation(
            "give NumberOfBytes or KeySpec, not both",
        )),
        (Some(n), None) => Ok(n as usize),
        (None, Some("AES_256")) => Ok(32),
        (None, Some("AES_128")) => Ok(16),
        (None, Some(s)) => Err(KmsError::validation(format!(
            "KeySpec {s:?}: AES_256 or AES_128"
        ))),
        (None, None) => Err(KmsError::validation("NumberOfBytes or KeySpec is required")),
    }
}

fn check_policy_name(p: &Params) -> Result<()> {
    match p.opt_str("PolicyName")? {
        None | Some("default") => Ok(()),
        Some(n) => Err(KmsError::not_found(format!(
            "policy {n:?}: a key has one policy, \"default\""
        ))),
    }
}

/// Runs one operation. Unknown operations are reported by the caller (they have no ErrorKind).
pub fn dispatch(kms: &Kms, caller: &Caller, op: &str, body: &Map<String, Value>) -> Result<Value> {
    let p = Params(body);
    let c = caller;
    match op {
        "CreateKey" => {
            if p.bool("MultiRegion")? {
                return Err(KmsError::new(
                    ErrorKind::UnsupportedOperation,
                    "multi-Region keys are not supported",
                ));
            }
            let spec = match p.parsed("KeySpec", KeySpec::parse)? {
                Some(s) => Some(s),
                None => p.parsed("CustomerMasterKeySpec", KeySpec::parse)?,
            };
            let origin = match p.opt_str("Origin")? {
                None | Some("AWS_KMS") => Origin::AwsKms,
                Some("EXTERNAL") => Origin::External,
                Some(o) => {
                    return Err(KmsError::new(
                        ErrorKind::UnsupportedOperation,
                        format!("Origin {o}: AWS_KMS or EXTERNAL"),
                    ));
                }
            };
            let m = kms.create_key(
                c,
                CreateKeyRequest {
                    description: p.opt_str("Description")?.unwrap_or_default().to_string(),
                    alias: None,
                    policy: p.opt_str("Policy")?.map(str::to_string),
                    bypass_lockout_check: p.bool("BypassPolicyLockoutSafetyCheck")?,
                    origin: Some(origin),
                    tags: p.tags("Tags")?,
                    key_spec: spec,
                    key_usage: p.parsed("KeyUsage", KeyUsage::parse)?,
                },
            )?;
            Ok(json!({ "KeyMetadata": metadata(&m) }))
        }
        "DescribeKey" => {
            let m = kms.describe_key(c, p.str("KeyId")?)?;
            Ok(json!({ "KeyMetadata": metadata(&m) }))
        }
        "ListKeys" => {
            let page = p.page()?;
            let keys = kms
                .list_keys(c)?
                .into_iter()
                .map(|k| json!({ "KeyId": k.key_id, "KeyArn": k.key_arn }))
                .collect();
            Ok(paged("Keys", keys, page))
        }
        "ListAliases" => {
            let page = p.page()?;
            let aliases = kms
                .list_aliases(c, p.opt_str("KeyId")?)?
                .into_iter()
                .map(|a| {
                    json!({
                        "AliasName": a.alias_name,
                        "AliasArn": a.alias_arn,
                        "TargetKeyId": a.target_key_id,
                    })
                })
                .collect();
            Ok(paged("Aliases", aliases, page))
        }
        "CreateAlias" => {
            kms.create_alias(c, p.str("AliasName")?, p.str("TargetKeyId")?)?;
            Ok(json!({}))
        }
        "DeleteAlias" => {
            kms.delete_alias(c, p.str("AliasName")?)?;
            Ok(json!({}))
        }
        "EnableKey" => kms.enable_key(c, p.str("KeyId")?).map(|_| json!({})),
        "DisableKey" => kms.disable_key(c, p.str("KeyId")?).map(|_| json!({})),
        "EnableKeyRotation" => {
            let days = p
                .opt_u64("RotationPeriodInDays")?
                .map(|d| d.min(u32::MAX as u64) as u32);
            kms.enable_key_rotation(c, p.str("KeyId")?, days)
                .map(|_| json!({}))
        }
        "DisableKeyRotation" => kms
            .disable_key_rotation(c, p.str("KeyId")?)
            .map(|_| json!({})),
        "GetKeyRotationStatus" => {
            let s = kms.get_key_rotation_status(c, p.str("KeyId")?)?;
            let mut v = json!({
                "KeyId": s.key_id,
                "KeyRotationEnabled": s.key_rotation_enabled,
            });
            if let Some(d) = s.rotation_period_in_days {
                v["RotationPeriodInDays"] = json!(d);
            }
            if let Some(n) = &s.next_rotation_date {
                v["NextRotationDate"] = epoch(n);
            }
            Ok(v)
        }
        "RotateKeyOnDemand" => {
            let (id, _) = kms.rotate_key_on_demand(c, p.str("KeyId")?)?;
            Ok(json!({ "KeyId": id.to_string() }))
        }
        "ListKeyRotations" => {
            let page = p.page()?;
            // AWS lists rotations only, not the key's first material.
            let rotations = kms
                .list_key_rotations(c, p.str("KeyId")?)?
                .into_iter()
                .filter(|r| matches!(r.rotation_type, "AUTOMATIC" | "ON_DEMAND"))
                .map(|r| {
                    json!({
                        "KeyId": r.key_id,
                        "RotationDate": epoch(&r.created),
                        "RotationType": r.rotation_type,
                    })
                })
                .collect();
            Ok(paged("Rotations", rotations, page))
        }
        "ScheduleKeyDeletion" => {
            let days = p.opt_u64("PendingWindowInDays")?.unwrap_or(30);
            let days = u32::try_from(days).unwrap_or(u32::MAX);
            let r = kms.schedule_key_deletion(c, p.str("KeyId")?, days)?;
            Ok(json!({
                "KeyId": arn_of(&r.key_id),
                "DeletionDate": epoch(&r.deletion_date),
                "KeyState": r.key_state,
                "PendingWindowInDays": r.pending_window_in_days,
            }))
        }
        "CancelKeyDeletion" => {
            let id = kms.cancel_key_deletion(c, p.str("KeyId")?)?;
            Ok(json!({ "KeyId": key_arn(&id) }))
        }
        "GetKeyPolicy" => {
            check_policy_name(&p)?;
            let policy = kms.get_key_policy(c, p.str("KeyId")?)?;
            Ok(json!({ "Policy": policy, "PolicyName": "default" }))
        }
        "ListKeyPolicies" => {
            let names = kms.list_key_policies(c, p.str("KeyId")?)?;
            Ok(json!({ "PolicyNames": names, "Truncated": false }))
        }
        "PutKeyPolicy" => {
            check_policy_name(&p)?;
            kms.put_key_policy(
                c,
                p.str("KeyId")?,
                p.str("Policy")?,
                p.bool("BypassPolicyLockoutSafetyCheck")?,
            )?;
            Ok(json!({}))
        }
        "TagResource" => kms
            .tag_resource(c, p.str("KeyId")?, &p.tags("Tags")?)
            .map(|_| json!({})),
        "UntagResource" => {
            let keys: Vec<String> = match body.get("TagKeys") {
                Some(Value::Array(a)) => a
                    .iter()
                    .map(|v| v.as_str().map(str::to_string))
                    .collect::<Option<_>>()
                    .ok_or_else(|| KmsError::validation("TagKeys must be strings"))?,
                _ => return Err(KmsError::validation("TagKeys is required")),
            };
            kms.untag_resource(c, p.str("KeyId")?, &keys)
                .map(|_| json!({}))
        }
        "ListResourceTags" => {
            let page = p.page()?;
            let tags = kms.list_resource_tags(c, p.str("KeyId")?)?;
            Ok(paged("Tags", tag_list(&tags), page))
        }
        "Encrypt" => {
            let alg = p.parsed("EncryptionAlgorithm", EncryptionAlgorithm::parse)?;
            let w = kms.encrypt_with(
                c,
                p.str("KeyId")?,
                &p.blob("Plaintext")?,
                &p.context("EncryptionContext")?,
                alg,
            )?;
            Ok(json!({
                "CiphertextBlob": b64_encode(&w.blob),
                "KeyId": key_arn(&w.key_id),
                "EncryptionAlgorithm": alg.unwrap_or(EncryptionAlgorithm::SymmetricDefault).as_str(),
            }))
        }
        "Decrypt" => {
            let alg = p.parsed("EncryptionAlgorithm", EncryptionAlgorithm::parse)?;
            let u = kms.decrypt_with(
                c,
                &p.blob("CiphertextBlob")?,
                &p.context("EncryptionContext")?,
                p.opt_str("KeyId")?,
                alg,
            )?;
            Ok(json!({
                "KeyId": key_arn(&u.key_id),
                "Plaintext": b64_encode(&u.plaintext),
                "EncryptionAlgorithm": alg.unwrap_or(EncryptionAlgorithm::SymmetricDefault).as_str(),
            }))
        }
        "ReEncrypt" => {
            let data = p.blob("CiphertextBlob")?;
            let source_ctx = p.context("SourceEncryptionContext")?;
            let dest_ctx = p.context("DestinationEncryptionContext")?;
            let source_alg = p.parsed("SourceEncryptionAlgorithm", EncryptionAlgorithm::parse)?;
            let dest_alg =
                p.parsed("DestinationEncryptionAlgorithm", EncryptionAlgorithm::parse)?;
            let source_alg = source_alg.filter(|a| *a != EncryptionAlgorithm::SymmetricDefault);
            let source_key = p.opt_str("SourceKeyId")?;
            let (w, source_id) = kms.re_encrypt_with(
                c,
                &ReEncryptRequest {
                    data: &data,
                    source_ctx: &source_ctx,
                    // A blob names its key; a named SourceKeyId must then match it.
                    source_key,
                    source_alg,
                    to: p.str("DestinationKeyId")?,
                    dest_ctx: &dest_ctx,
                    dest_alg,
                },
            )?;
            Ok(json!({
                "CiphertextBlob": b64_encode(&w.blob),
                "SourceKeyId": key_arn(&source_id),
                "KeyId": key_arn(&w.key_id),
                "SourceEncryptionAlgorithm": source_alg.unwrap_or(EncryptionAlgorithm::SymmetricDefault).as_str(),
                "DestinationEncryptionAlgorithm": dest_alg.unwrap_or(EncryptionAlgorithm::SymmetricDefault).as_str(),
            }))
        }
        "GenerateDataKey" | "GenerateDataKeyWithoutPlaintext" => {
            let with_plaintext = op == "GenerateDataKey";
            let dk = kms.generate_data_key(
                c,
                p.str("KeyId")?,
                data_key_bytes(&p)?,
                &p.context("EncryptionContext")?,
                with_plaintext,
            )?;
            let mut v = json!({
                "CiphertextBlob": b64_encode(&dk.wrapped.blob),
                "KeyId": key_arn(&dk.wrapped.key_id),
            });
            if let Some(pt) = &dk.plaintext {
                v["Plaintext"] = json!(b64_encode(pt));
            }
            Ok(v)
        }
        "GenerateDataKeyPair" | "GenerateDataKeyPairWithoutPlaintext" => {
            let kp = kms.generate_data_key_pair(
                c,
                p.str("KeyId")?,
                p.required("KeyPairSpec", KeyPairSpec::parse)?,
                &p.context("EncryptionContext")?,
                op == "GenerateDataKeyPair",
            )?;
            let mut v = json!({
                "PrivateKeyCiphertextBlob": b64_encode(&kp.private_wrapped.blob),
                "PublicKey": b64_encode(&kp.public_key),
                "KeyId": key_arn(&kp.private_wrapped.key_id),
                "KeyPairSpec": kp.spec.as_str(),
            });
            if let Some(pt) = &kp.private_plaintext {
                v["PrivateKeyPlaintext"] = json!(b64_encode(pt));
            }
            Ok(v)
        }
        "GenerateRandom" => {
            let n = p
                .opt_u64("NumberOfBytes")?
                .ok_or_else(|| KmsError::validation("NumberOfBytes is required"))?;
            let r = kms.generate_random(c, n as usize)?;
            Ok(json!({ "Plaintext": b64_encode(&r) }))
        }
        "GetParametersForImport" => {
            let wrapping = p.required("WrappingAlgorithm", EncryptionAlgorithm::parse)?;
            let spec = p.required("WrappingKeySpec", KeySpec::parse)?;
            let r = kms.get_parameters_for_import(c, p.str("KeyId")?, wrapping, spec)?;
            Ok(json!({
                "KeyId": key_arn(&r.key_id),
                "ImportToken": b64_encode(&r.import_token),
                "PublicKey": b64_encode(&r.public_key),
                "ParametersValidTo": r.valid_to.timestamp(),
            }))
        }
        "ImportKeyMaterial" => {
            match p.opt_str("ExpirationModel")? {
                None | Some("KEY_MATERIAL_DOES_NOT_EXPIRE") => {}
                Some(m) => {
                    return Err(KmsError::new(
                        ErrorKind::UnsupportedOperation,
                        format!("ExpirationModel {m}: only KEY_MATERIAL_DOES_NOT_EXPIRE"),
                    ));
                }
            }
            kms.import_wrapped_key_material(
                c,
                p.str("KeyId")?,
                &p.blob("ImportToken")?,
                &p.blob("EncryptedKeyMaterial")?,
            )?;
            Ok(json!({}))
        }
        "Sign" | "Verify" => {
            let message = p.blob("Message")?;
            let req = SignRequest {
                key: p.str("KeyId")?,
                message: &message,
                message_type: p
                    .parsed("MessageType", MessageType::parse)?
                    .unwrap_or(MessageType::Raw),
                algorithm: p.required("SigningAlgorithm", SigningAlgorithm::parse)?,
            };
            let alg = req.algorithm.as_str();
            if op == "Sign" {
                let s = kms.sign(c, &req)?;
                return Ok(json!({
                    "KeyId": key_arn(&s.key_id),
                    "Signature": b64_encode(&s.signature),
                    "SigningAlgorithm": alg,
                }));
            }
            let id = kms.verify(c, &req, &p.blob("Signature")?)?;
            Ok(json!({ "KeyId": key_arn(&id), "SignatureValid": true, "SigningAlgorithm": alg }))
        }
        "GetPublicKey" => {
            let k = kms.get_public_key(c, p.str("KeyId")?)?;
            let mut v = json!({
                "KeyId": key_arn(&k.key_id),
                "PublicKey": b64_encode(&k.public_key),
                "CustomerMasterKeySpec": k.key_spec.as_str(),
                "KeySpec": k.key_spec.as_str(),
                "KeyUsage": k.key_usage.as_str(),
            });
            let enc = crate::kms::keyspec::encryption_algorithms(k.key_spec, k.key_usage);
            let sig = crate::kms::keyspec::signing_algorithms(k.key_spec, k.key_usage);
            if !enc.is_empty() {
                v["EncryptionAlgorithms"] =
                    json!(enc.iter().map(|a| a.as_str()).collect::<Vec<_>>());
            }
            if !sig.is_empty() {
                v["SigningAlgorithms"] = json!(sig.iter().map(|a| a.as_str()).collect::<Vec<_>>());
            }
            Ok(v)
        }
        "GenerateMac" => {
            let alg = p.required("MacAlgorithm", MacAlgorithm::parse)?;
            let (id, mac) = kms.generate_mac(c, p.str("KeyId")?, alg, &p.blob("Message")?)?;
            Ok(
                json!({ "Mac": b64_encode(&mac), "MacAlgorithm": alg.as_str(), "KeyId": key_arn(&id) }),
            )
        }
        "VerifyMac" => {
            let alg = p.required("MacAlgorithm", MacAlgorithm::parse)?;
            let id = kms.verify_mac(
                c,
                p.str("KeyId")?,
                alg,
                &p.blob("Message")?,
                &p.blob("Mac")?,
            )?;
            Ok(json!({ "KeyId": key_arn(&id), "MacValid": true, "MacAlgorithm": alg.as_str() }))
        }
        other => Err(KmsError::new(
            ErrorKind::UnsupportedOperation,
            format!("operation {other} is not supported by kmsfs"),
        )),
    }
}

fn arn_of(key_id: &str) -> String {
    uuid::Uuid::parse_str(key_id)
        .map(|u| key_arn(&u))
        .unwrap_or_else(|_| key_id.to_string())
}

/// The HTTP status AWS uses for an error kind: 400 for the caller's errors, 500/503 for ours.
pub fn status_of(kind: ErrorKind) -> u16 {
    match kind {
        ErrorKind::Internal
        | ErrorKind::KeyStore
        | ErrorKind::AuditInvalid
        | ErrorKind::WrongPassphrase
        | ErrorKind::FsckProblems
        | ErrorKind::Interrupted => 500,
        ErrorKind::Unavailable => 503,
        _ => 400,
    }
}

/// The exception name on the wire: our own failures are KMSInternalException to clients.
pub fn wire_name(kind: ErrorKind) -> &'static str {
    if status_of(kind) == 500 {
        ErrorKind::Internal.name()
    } else {
        kind.name()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_follow_limit_and_marker() {
        let items: Vec<Value> = (0..5).map(|i| json!(i)).collect();
        let v = paged("Keys", items.clone(), (0, 2));
        assert_eq!(v["Keys"], json!([0, 1]));
        assert_eq!(v["Truncated"], true);
        assert_eq!(v["NextMarker"], "2");
        let v = paged("Keys", items, (4, 2));
        assert_eq!(v["Keys"], json!([4]));
        assert_eq!(v["Truncated"], false);
        assert!(v.get("NextMarker").is_none());
    }

    #[test]
    fn params_check_types() {
        let body = json!({"KeyId": 5, "Plaintext": "!!", "EncryptionContext": {"a": 1}});
        let p = Params(body.as_object().unwrap());
        assert_eq!(p.str("KeyId").unwrap_err().kind, ErrorKind::Validation);
        assert_eq!(p.blob("Plaintext").unwrap_err().kind, ErrorKind::Validation);
        assert_eq!(
            p.context("EncryptionContext").unwrap_err().kind,
            ErrorKind::Validation
        );
        assert!(p.opt_str("Missing").unwrap().is_none());
        assert_eq!(p.str("Missing").unwrap_err().kind, ErrorKind::Validation);
    }

    #[test]
    fn internal_failures_are_500_and_not_named() {
        assert_eq!(status_of(ErrorKind::Disabled), 400);
        assert_eq!(status_of(ErrorKind::KeyStore), 500);
        assert_eq!(wire_name(ErrorKind::KeyStore), "KMSInternalException");
        assert_eq!(wire_name(ErrorKind::AccessDenied), "AccessDeniedException");
        assert_eq!(epoch("2026-11-28T12:00:00.500Z"), json!(1795867200.5));
    }
}
