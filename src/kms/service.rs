//! The local KMS: every operation runs as one transaction on the key store (lock, load, act, save,
//! audit), checks the caller against the key's policy, and honours the key's state.

use crate::clock::{Clock, format_time};
use crate::cryptocore::{self, SecretKey};
use crate::error::{ErrorKind, KmsError, Result};
use crate::keystore::{KeyDb, KeyStore};
use crate::kms::audit::{AuditCaller, AuditEvent, AuditRecord};
use crate::kms::blob::{self, BlobHeader};
use crate::kms::caller::Caller;
use crate::kms::context::EncryptionContext;
use crate::kms::key::{DEFAULT_ROTATION_DAYS, KeyRecord, KeyState, Origin, VersionSource, key_arn};
use crate::kms::keypair;
use crate::kms::keyspec::{self, EncryptionAlgorithm, KeySpec, KeyUsage};
use crate::kms::policy::{self, Decision, Reach, Request};
use crate::kms::types::*;
use chrono::{DateTime, Utc};
use std::collections::BTreeMap;
use uuid::Uuid;
use zeroize::Zeroizing;

/// The most plaintext one Encrypt call takes, as AWS.
pub const MAX_PLAINTEXT: usize = 4096;
/// The most bytes GenerateDataKey and GenerateRandom return, as AWS.
pub const MAX_DATA_KEY_BYTES: usize = 1024;
const MAX_DESCRIPTION: usize = 8192;
const MAX_ALIAS: usize = 256;
const MAX_TAG_KEY: usize = 128;
const MAX_TAG_VALUE: usize = 256;

pub struct Kms {
    store: KeyStore,
    clock: Clock,
    policies: policy::ParsedPolicies,
}

/// How a key is named: its id, its ARN, or an alias (with or without the `kmsfs:` prefix).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyRef {
    Id(Uuid),
    Alias(String),
}

impl KeyRef {
    pub fn parse(s: &str) -> Result<KeyRef> {
        let s = s.trim();
        // AWS-style ARNs (arn:aws:kms:REGION:ACCOUNT:key/ID or :alias/NAME) name keys too, so
        // clients that build ARNs work against `kmsfs serve`.
        if let Some(rest) = s.strip_prefix("arn:") {
            let resource = rest.splitn(5, ':').nth(4).unwrap_or_default();
            if let Some(id) = resource.strip_prefix("key/") {
                return Uuid::parse_str(id)
                    .map(KeyRef::Id)
                    .map_err(|_| KmsError::not_found(format!("{s:?} is not a key ARN")));
            }
            if resource.starts_with("alias/") {
                return Ok(KeyRef::Alias(resource.to_string()));
            }
            return Err(KmsError::not_found(format!(
                "{s:?} is not a key or alias ARN"
            )));
        }
        if let Some(rest) = s.strip_prefix("kmsfs:key/") {
            return Uuid::parse_str(rest)
                .map(KeyRef::Id)
                .map_err(|_| KmsError::not_found(format!("{s:?} is not a key ARN")));
        }
        let alias = s.strip_prefix("kmsfs:").unwrap_or(s);
        if alias.starts_with("alias/") {
            return Ok(KeyRef::Alias(alias.to_string()));
        }
        Uuid::parse_str(s).map(KeyRef::Id).map_err(|_| {
            KmsError::not_found(format!(
                "{s:?} names no key: use a key id, kmsfs:key/<id> or alias/NAME"
            ))
        })
    }
}

/// Normalizes an alias to `alias/NAME` and checks AWS's alias rules.
pub fn normalize_alias(name: &str) -> Result<String> {
    let full = if name.starts_with("alias/") {
        name.to_string()
    } else {
        format!("alias/{name}")
    };
    let rest = &full["alias/".len()..];
    if rest.is_empty()
        || full.len() > MAX_ALIAS
        || !rest
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '_' | '-'))
    {
        return Err(KmsError::validation(format!(
            "alias {name:?}: 1 to 250 characters of A-Z a-z 0-9 / _ -"
        )));
    }
    if rest.starts_with("aws/") {
        return Err(KmsError::validation(
            "aliases under alias/aws/ are reserved",
        ));
    }
    Ok(full)
}

fn validate_tags(tags: &BTreeMap<String, String>) -> Result<()> {
    for (k, v) in tags {
        if k.is_empty() || k.len() > MAX_TAG_KEY || v.len() > MAX_TAG_VALUE {
            return Err(KmsError::validation(format!(
                "tag {k:?}: keys are 1 to {MAX_TAG_KEY} bytes, values at most {MAX_TAG_VALUE}"
            )));
        }
    }
    Ok(())
}

/// The AES-256-GCM key one CMK version uses for ciphertext blobs.
fn blob_key(material: &SecretKey, key_id: &Uuid) -> SecretKey {
    cryptocore::derive_key(material.as_ref(), key_id.as_bytes(), b"kmsfs/cmk/v1/blob")
}

/// Which outcomes of an operation get their own audit record (side effects always do).
#[derive(Clone, Copy, PartialEq, Eq)]
enum AuditWhen {
    Always,
    Failure,
    Never,
}

/// What the audit record of the running operation will say about its key.
#[derive(Default)]
pub(super) struct Draft {
    pub(super) key_id: Option<Uuid>,
    pub(super) key_version: Option<u32>,
    pub(super) context: EncryptionContext,
    pub(super) message: Option<String>,
}

/// A CreateKey request after its checks.
struct CreateChecked {
    alias: Option<String>,
    policy: String,
    origin: Origin,
    key_spec: KeySpec,
    key_usage: KeyUsage,
}

/// One operation's view of the key database, under the store lock.
pub(super) struct Txn<'a> {
    pub(super) store: &'a KeyStore,
    policies: &'a policy::ParsedPolicies,
    caller: &'a Caller,
    /// Shared with the store's cached copy until an operation changes it (`db_mut`).
    db: std::sync::Arc<KeyDb>,
    pub(super) now: DateTime<Utc>,
    dirty: bool,
    /// Audit events of side effects (scheduled deletions, automatic rotations).
    events: Vec<AuditEvent>,
    request_id: String,
}

impl Txn<'_> {
    fn event(
        &self,
        operation: &str,
        key: Option<Uuid>,
        version: Option<u32>,
        result: &Result<()>,
    ) -> AuditEvent {
        AuditEvent {
            time: format_time(&self.now),
            request_id: self.request_id.clone(),
            operation: operation.to_string(),
            caller: AuditCaller {
                uid: self.caller.uid,
                user: self.caller.user.clone(),
                pid: self.caller.pid,
            },
            key_id: key.map(|k| k.to_string()),
            key_version: version,
            context: EncryptionContext::default(),
            result: match result {
                Ok(()) => "Success".to_string(),
                Err(e) => e.kind.name().to_string(),
            },
            message: result.as_ref().err().map(|e| e.message.clone()),
        }
    }

    /// Destroys the material of keys whose deletion date has passed.
    fn sweep_deletions(&mut self) {
        let due: Vec<Uuid> = self
            .db
            .keys
            .values()
            .filter(|k| k.deletion_due(self.now))
            .map(|k| k.id)
            .collect();
        for id in due {
            let now = self.now;
            let db = self.db_mut();
            db.keys.remove(&id);
            db.aliases.retain(|_, k| *k != id);
            db.deleted.insert(id, now);
            let ev = self.event("DeleteKey", Some(id), None, &Ok(()));
            self.events.push(AuditEvent {
                message: Some("scheduled deletion: key material destroyed".into()),
                ..ev
            });
        }
    }

    fn lookup(&self, r: &KeyRef) -> Result<Uuid> {
        let id = match r {
            KeyRef::Id(id) => *id,
            KeyRef::Alias(a) => *self
                .db
                .aliases
                .get(a)
                .ok_or_else(|| KmsError::not_found(format!("alias {a} does not exist")))?,
        };
        if self.db.keys.contains_key(&id) {
            return Ok(id);
        }
        Err(match self.db.deleted.get(&id) {
            Some(when) => KmsError::not_found(format!(
                "key {id} was deleted on {}; {}",
                format_time(when),
                crate::error::DELETED_MARK
            )),
            None => KmsError::not_found(format!("key {id} does not exist")),
        })
    }

    /// Resolves a key name, notes it for the audit record, and applies a due automatic rotation.
    pub(super) fn resolve(&mut self, name: &str, draft: &mut Draft) -> Result<Uuid> {
        let id = self.lookup(&KeyRef::parse(name)?)?;
        draft.key_id = Some(id);
        self.touch(id)?;
        Ok(id)
    }

    fn touch(&mut self, id: Uuid) -> Result<()> {
        if self.key(id)?.rotation_due(self.now) {
            let r = self.add_material(id, VersionSource::AutomaticRotation);
            let version = r.as_ref().ok().copied();
            let ev = self.event("RotateKey", Some(id), version, &r.map(|_| ()));
            self.events.push(AuditEvent {
                message: Some("automatic rotation".into()),
                ..ev
            });
        }
        Ok(())
    }

    pub(super) fn key(&self, id: Uuid) -> Result<&KeyRecord> {
        self.db
            .keys
            .get(&id)
            .ok_or_else(|| KmsError::not_found(format!("key {id} does not exist")))
    }

    /// The database, to change: copied from the shared one on the first change, and saved
    /// when the operation ends.
    fn db_mut(&mut self) -> &mut KeyDb {
        self.dirty = true;
        std::sync::Arc::make_mut(&mut self.db)
    }

    fn key_mut(&mut self, id: Uuid) -> Result<&mut KeyRecord> {
        self.db_mut()
            .keys
            .get_mut(&id)
            .ok_or_else(|| KmsError::not_found(format!("key {id} does not exist")))
    }

    fn decide(
        &self,
        id: Uuid,
        caller: &Caller,
        action: &str,
        ctx: &EncryptionContext,
    ) -> Result<Decision> {
        let k = self.key(id)?;
        // A stored policy was validated when put; if it no longer parses, nothing is allowed.
        let Ok(p) = self.policies.get(&k.policy) else {
            return Ok(Decision::ImplicitDeny);
        };
        Ok(policy::evaluate(
            &p,
            &Request {
                caller,
                action,
                resource: &k.arn(),
                context: ctx,
            },
        ))
    }

    /// How far a decision on key `id` carries over to other encryption contexts.
    fn reach(&self, id: Uuid) -> Result<Reach> {
        let k = self.key(id)?;
        Ok(match self.policies.get(&k.policy) {
            Ok(p) if !p.reads_context() => Reach::AnyContext,
            _ => Reach::ThisContext,
        })
    }

    pub(super) fn authorize(&self, id: Uuid, action: &str, ctx: &EncryptionContext) -> Result<()> {
        let why = match self.decide(id, self.caller, action, ctx)? {
            Decision::Allow { .. } => return Ok(()),
            Decision::ExplicitDeny { statement } => format!("denied by statement {statement:?}"),
            Decision::ImplicitDeny => "no policy statement allows it".to_string(),
        };
        let who = match &self.caller.user {
            Some(u) => format!("uid {} ({u})", self.caller.uid),
            None => format!("uid {}", self.caller.uid),
        };
        Err(KmsError::new(
            ErrorKind::AccessDenied,
            format!("{who} may not {action} on key {id}: {why}"),
        ))
    }

    /// Generates and seals new material as the key's next version.
    fn add_material(&mut self, id: Uuid, source: VersionSource) -> Result<u32> {
        let spec = self.key(id)?.key_spec;
        if spec == KeySpec::SymmetricDefault {
            let material = cryptocore::random_key()
                .map_err(|_| KmsError::internal("the system random source failed"))?;
            return self.add_sealed(id, source, &material[..]);
        }
        let material = keypair::generate(spec)?;
        self.add_sealed(id, source, &material)
    }

    fn add_sealed(&mut self, id: Uuid, source: VersionSource, material: &[u8]) -> Result<u32> {
        let number = self.key(id)?.next_version_number();
        let sealed = self.store.seal_material(&id, number, material)?;
        let now = self.now;
        Ok(self.key_mut(id)?.add_version(source, sealed, now))
    }

    fn material(&self, id: Uuid, version: u32) -> Result<SecretKey> {
        let v = self.key(id)?.version(version).ok_or_else(|| {
            KmsError::invalid_ciphertext(format!("key {id} has no version {version}"))
        })?;
        self.store.unseal_material(&id, version, &v.sealed_material)
    }

    /// The current material of an asymmetric or HMAC key (they have one version), which must
    /// be usable; its version is noted for the audit record.
    pub(super) fn usable_secret(
        &self,
        id: Uuid,
        draft: &mut Draft,
    ) -> Result<(u32, Zeroizing<Vec<u8>>)> {
        let k = self.key(id)?;
        k.check_usable()?;
        let v = k
            .current_version()
            .ok_or_else(|| KmsError::invalid_state(format!("key {id} has no key material")))?;
        let material = self
            .store
            .unseal_secret(&id, v.number, &v.sealed_material)?;
        draft.key_version = Some(v.number);
        Ok((v.number, material))
    }

    /// Refuses keys that are not symmetric ENCRYPT_DECRYPT keys (data keys, key pairs).
    pub(super) fn check_symmetric(&self, id: Uuid, op: &str) -> Result<()> {
        let k = self.key(id)?;
        if k.key_spec == KeySpec::SymmetricDefault && k.key_usage == KeyUsage::EncryptDecrypt {
            return Ok(());
        }
        Err(KmsError::new(
            ErrorKind::InvalidKeyUsage,
            format!(
                "{op} needs a SYMMETRIC_DEFAULT key; key {id} is {} for {}",
                k.key_spec.as_str(),
                k.key_usage.as_str()
            ),
        ))
    }

    fn aliases_of(&self, id: Uuid) -> Vec<String> {
        self.db
            .aliases
            .iter()
            .filter(|(_, k)| **k == id)
            .map(|(a, _)| a.clone())
            .collect()
    }

    pub(super) fn metadata(&self, id: Uuid) -> Result<KeyMetadata> {
        Ok(KeyMetadata::from_record(self.key(id)?, self.aliases_of(id)))
    }

    /// Material can be imported (and import parameters issued) only for an EXTERNAL key that
    /// is not pending deletion.
    pub(super) fn check_importable(&self, id: Uuid) -> Result<()> {
        let k = self.key(id)?;
        if k.origin != Origin::External {
            return Err(KmsError::new(
                ErrorKind::UnsupportedOperation,
                format!("key {id} was not created with origin EXTERNAL (--origin external)"),
            ));
        }
        if k.state == KeyState::PendingDeletion {
            return Err(KmsError::invalid_state(format!(
                "key {id} is pending deletion"
            )));
        }
        Ok(())
    }

    /// Imports 256-bit material into an EXTERNAL key (the caller was authorized). Importing the
    /// same material again is a no-op (it re-enables a key that was waiting for it); different
    /// material is refused.
    pub(super) fn import_material(
        &mut self,
        id: Uuid,
        material: &[u8],
        d: &mut Draft,
    ) -> Result<()> {
        if material.len() != cryptocore::KEY_LEN {
            return Err(KmsError::validation(format!(
                "key material must be exactly 256 bits (32 bytes); got {} bytes",
                material.len()
            )));
        }
        self.check_importable(id)?;
        let k = self.key(id)?;
        let mut m = Zeroizing::new([0u8; cryptocore::KEY_LEN]);
        m.copy_from_slice(material);
        if let Some(v) = k.current_version().map(|v| v.number) {
            d.key_version = Some(v);
            if !cryptocore::ct_eq(self.material(id, v)?.as_ref(), m.as_ref()) {
                return Err(KmsError::new(
                    ErrorKind::IncorrectKeyMaterial,
                    format!("key {id} already has different key material"),
                ));
            }
        } else {
            d.key_version = Some(self.add_sealed(id, VersionSource::Imported, &m[..])?);
        }
        let k = self.key_mut(id)?;
        if k.state == KeyState::PendingImport {
            k.state = KeyState::Enabled;
        }
        Ok(())
    }

    /// Every check of a CreateKey request, and what it settles: the alias, the policy text,
    /// origin, spec and usage. Changes nothing.
    fn check_create(&self, req: &CreateKeyRequest, id: Uuid) -> Result<CreateChecked> {
        if req.description.len() > MAX_DESCRIPTION {
            return Err(KmsError::validation(format!(
                "description is longer than {MAX_DESCRIPTION} bytes"
            )));
        }
        validate_tags(&req.tags)?;
        let alias = req.alias.as_deref().map(normalize_alias).transpose()?;
        if let Some(a) = &alias {
            if self.db.aliases.contains_key(a) {
                return Err(KmsError::new(
                    ErrorKind::AlreadyExists,
                    format!("alias {a} already exists"),
                ));
            }
        }
        let policy = match &req.policy {
            Some(p) => {
                let parsed = policy::parse(p)?;
                check_lockout(
                    &parsed,
                    self.caller,
                    req.bypass_lockout_check,
                    &key_arn(&id),
                )?;
                p.clone()
            }
            None => policy::default_policy(self.caller.uid),
        };
        let origin = req.origin.unwrap_or(Origin::AwsKms);
        let key_spec = req.key_spec.unwrap_or_default();
        let key_usage = req.key_usage.unwrap_or(key_spec.default_usage());
        key_spec.check_usage(key_usage)?;
        if origin == Origin::External && key_spec != KeySpec::SymmetricDefault {
            return Err(KmsError::new(
                ErrorKind::UnsupportedOperation,
                "only SYMMETRIC_DEFAULT keys take imported material",
            ));
        }
        Ok(CreateChecked {
            alias,
            policy,
            origin,
            key_spec,
            key_usage,
        })
    }

    /// Encrypts under the key's current version with `alg` (None: SYMMETRIC_DEFAULT, which
    /// makes a ciphertext blob; RSA algorithms make raw RSA-OAEP ciphertext, as AWS). The key
    /// must be Enabled.
    fn seal_with(
        &self,
        id: Uuid,
        plaintext: &[u8],
        ctx: &EncryptionContext,
        alg: Option<EncryptionAlgorithm>,
        draft: &mut Draft,
    ) -> Result<Wrapped> {
        let k = self.key(id)?;
        let alg = keyspec::check_encryption(k.key_spec, k.key_usage, alg)?;
        let limit = keyspec::max_plaintext(k.key_spec, alg);
        if plaintext.len() > limit {
            return Err(KmsError::validation(format!(
                "plaintext is {} bytes; {} with {} takes at most {limit}",
                plaintext.len(),
                k.key_spec.as_str(),
                alg.as_str()
            )));
        }
        if alg == EncryptionAlgorithm::SymmetricDefault {
            return self.seal_blob(id, plaintext, ctx, draft);
        }
        no_context(ctx)?;
        let (version, material) = self.usable_secret(id, draft)?;
        let public = keypair::public_key_der(k.key_spec, &material)?;
        Ok(Wrapped {
            blob: keypair::rsa_encrypt(&public, alg, plaintext)?,
            key_id: id,
            key_version: version,
        })
    }

    /// Decrypts with `alg`: a ciphertext blob (None or SYMMETRIC_DEFAULT; the blob names its
    /// key), or raw RSA-OAEP ciphertext, which needs the key named.
    fn open_with(
        &mut self,
        data: &[u8],
        ctx: &EncryptionContext,
        key: Option<&str>,
        alg: Option<EncryptionAlgorithm>,
        action: &str,
        draft: &mut Draft,
    ) -> Result<Unwrapped> {
        let alg = alg.unwrap_or(EncryptionAlgorithm::SymmetricDefault);
        if alg == EncryptionAlgorithm::SymmetricDefault {
            return self.open_blob(data, ctx, key, action, draft);
        }
        let name = key.ok_or_else(|| {
            KmsError::validation(format!(
                "decrypting with {} needs the key named (--key / KeyId)",
                alg.as_str()
            ))
        })?;
        let id = self.resolve(name, draft)?;
        self.authorize(id, action, ctx)?;
        let k = self.key(id)?;
        keyspec::check_encryption(k.key_spec, k.key_usage, Some(alg))?;
        no_context(ctx)?;
        let (version, material) = self.usable_secret(id, draft)?;
        Ok(Unwrapped {
            plaintext: keypair::rsa_decrypt(&material, alg, data)?,
            key_id: id,
            key_version: version,
        })
    }

    /// Encrypts under the key's current version; the key must be Enabled.
    pub(super) fn seal_blob(
        &self,
        id: Uuid,
        plaintext: &[u8],
        ctx: &EncryptionContext,
        draft: &mut Draft,
    ) -> Result<Wrapped> {
        let k = self.key(id)?;
        k.check_usable()?;
        let version = k
            .current_version()
            .map(|v| v.number)
            .ok_or_else(|| KmsError::invalid_state(format!("key {id} has no key material")))?;
        draft.key_version = Some(version);
        let material = self.material(id, version)?;
        let header = BlobHeader {
            key_id: id,
            key_version: version,
        };
        let sealed = cryptocore::seal(
            &blob_key(&material, &id),
            &header.aad(&ctx.canonical()),
            plaintext,
        )
        .map_err(|_| KmsError::internal("the system random source failed"))?;
        Ok(Wrapped {
            blob: blob::assemble(&header, &sealed),
            key_id: id,
            key_version: version,
        })
    }

    /// Authenticates and decrypts a blob, checking `action` on the key it names.
    fn open_blob(
        &mut self,
        data: &[u8],
        ctx: &EncryptionContext,
        expected: Option<&str>,
        action: &str,
        draft: &mut Draft,
    ) -> Result<Unwrapped> {
        let (header, sealed) = blob::parse(data)?;
        draft.key_id = Some(header.key_id);
        draft.key_version = Some(header.key_version);
        if let Some(name) = expected {
            let want = self.lookup(&KeyRef::parse(name)?)?;
            if want != header.key_id {
                return Err(KmsError::new(
                    ErrorKind::IncorrectKey,
                    format!(
                        "the ciphertext was made under key {}, not {name}",
                        header.key_id
                    ),
                ));
            }
        }
        let id = self.lookup(&KeyRef::Id(header.key_id))?;
        self.check_symmetric(id, "SYMMETRIC_DEFAULT decryption")?;
        self.touch(id)?;
        self.authorize(id, action, ctx)?;
        self.key(id)?.check_usable()?;
        self.key(id)?.check_version(header.key_version)?;
        let material = self.material(id, header.key_version)?;
        let plaintext = cryptocore::open(&blob_key(&material, &id), &header.aad(&ctx.canonical()), sealed)
            .map_err(|_| {
                KmsError::invalid_ciphertext(
                    "the ciphertext failed authentication: wrong encryption context, or the blob was modified",
                )
            })?;
        Ok(Unwrapped {
            plaintext,
            key_id: id,
            key_version: header.key_version,
        })
    }
}

impl Kms {
    pub fn new(store: KeyStore, clock: Clock) -> Kms {
        Kms {
            store,
            clock,
            policies: policy::ParsedPolicies::default(),
        }
    }

    pub fn store(&self) -> &KeyStore {
        &self.store
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// Runs one operation as a transaction and writes its audit record, whatever the outcome.
    pub(super) fn run<T>(
        &self,
        caller: &Caller,
        operation: &str,
        f: impl FnOnce(&mut Txn, &mut Draft) -> Result<T>,
    ) -> Result<T> {
        self.run_audited(caller, operation, AuditWhen::Always, f)
    }

    fn run_audited<T>(
        &self,
        caller: &Caller,
        operation: &str,
        when: AuditWhen,
        f: impl FnOnce(&mut Txn, &mut Draft) -> Result<T>,
    ) -> Result<T> {
        let lock = self.store.lock()?;
        let db = self.store.load_shared(&lock)?;
        let mut txn = Txn {
            store: &self.store,
            policies: &self.policies,
            caller,
            db,
            now: self.clock.now(),
            dirty: false,
            events: Vec::new(),
            request_id: Uuid::new_v4().to_string(),
        };
        txn.sweep_deletions();
        let mut draft = Draft::default();
        let result = f(&mut txn, &mut draft);
        // Operations validate before they mutate, so a failed one leaves only side effects to save.
        if txn.dirty {
            self.store.save(&lock, &txn.db)?;
        }
        let outcome = result.as_ref().map(|_| ()).map_err(Clone::clone);
        let mut ev = txn.event(operation, draft.key_id, draft.key_version, &outcome);
        ev.context = draft.context;
        if outcome.is_ok() {
            ev.message = draft.message;
        }
        let mut events = txn.events;
        if when == AuditWhen::Always || (when == AuditWhen::Failure && outcome.is_err()) {
            events.push(ev);
        }
        let log = self.store.audit_log();
        log.append(&events)?;
        // A change to keys.db is durable already: its records may not wait for a flush.
        if txn.dirty {
            log.flush()?;
        }
        result
    }

    /// May `caller` use `key` for `action` under `ctx` now (state and policy)? For callers that
    /// hold a data key already: a denial is audited, an allowed check is not (it uses no key).
    /// An allow says how far it reaches: until the key store changes, the same answer holds for
    /// any context if the key's policy reads none.
    pub fn authorize_use(
        &self,
        caller: &Caller,
        key: &str,
        action: &str,
        ctx: &EncryptionContext,
    ) -> Result<Reach> {
        self.precheck(caller, key, action, ctx, |t, id| {
            t.key(id)?.check_usable()?;
            t.reach(id)
        })
    }

    /// Checks `action` on `key` for `caller`, then `also` (the operation's own state checks),
    /// without using the key: a denial is audited, a pass is not (the operation that follows
    /// is). Used before expensive work such as key-pair generation, so a request that will be
    /// refused costs nothing.
    pub(super) fn precheck<T>(
        &self,
        caller: &Caller,
        key: &str,
        action: &str,
        ctx: &EncryptionContext,
        also: impl FnOnce(&Txn, Uuid) -> Result<T>,
    ) -> Result<T> {
        let op = action.strip_prefix("kms:").unwrap_or(action);
        self.run_audited(caller, op, AuditWhen::Failure, |t, d| {
            d.context = ctx.clone();
            let id = t.resolve(key, d)?;
            t.authorize(id, action, ctx)?;
            also(t, id)
        })
    }

    /// Applies due automatic rotations and scheduled deletions to every key (each audited as it
    /// happens); returns how many happened.
    pub fn maintain(&self, caller: &Caller) -> Result<usize> {
        self.run_audited(caller, "Maintenance", AuditWhen::Never, |t, _| {
            let ids: Vec<Uuid> = t.db.keys.keys().copied().collect();
            for id in ids {
                t.touch(id)?;
            }
            Ok(t.events.len())
        })
    }

    /// Makes versions below `below` of `key` unusable for decryption. The caller checks first that
    /// no known cipher directory still uses them (see `cipherdirs`).
    pub fn retire_versions(&self, caller: &Caller, key: &str, below: u32) -> Result<()> {
        self.modify(caller, "RetireKeyVersion", key, |k, _| {
            k.retire_versions(below)
        })
    }

    /// Remembers a cipher directory that uses this store's keys.
    pub fn register_cipherdir(&self, dir: &std::path::Path) -> Result<()> {
        let lock = self.store.lock()?;
        let mut db = self.store.load(&lock)?;
        if db.cipherdirs.insert(dir.to_path_buf()) {
            self.store.save(&lock, &db)?;
        }
        Ok(())
    }

    /// The cipher directories registered with this store.
    pub fn cipherdirs(&self) -> Result<Vec<std::path::PathBuf>> {
        let lock = self.store.lock()?;
        Ok(self.store.load(&lock)?.cipherdirs.into_iter().collect())
    }

    /// Changes whenever the key database is rewritten: a cheap poll for key state changes.
    pub fn change_stamp(&self) -> u64 {
        self.store.change_stamp()
    }

    pub fn create_key(&self, caller: &Caller, req: CreateKeyRequest) -> Result<KeyMetadata> {
        let id = Uuid::new_v4();
        // Key pairs are generated before the store lock is taken (an RSA_4096 pair can take
        // seconds, and the lock serves every other caller, mounts included), and only once the
        // request has passed every check (a refusal is audited as CreateKey).
        let pregenerated = match &req {
            CreateKeyRequest {
                key_spec: Some(spec),
                origin: None | Some(Origin::AwsKms),
                ..
            } if *spec != KeySpec::SymmetricDefault => {
                self.run_audited(caller, "CreateKey", AuditWhen::Failure, |t, d| {
                    d.key_id = Some(id);
                    t.check_create(&req, id).map(|_| ())
                })?;
                Some(keypair::generate(*spec)?)
            }
            _ => None,
        };
        self.run(caller, "CreateKey", |t, d| {
            d.key_id = Some(id);
            let c = t.check_create(&req, id)?;
            let (created, creator_uid) = (t.now, t.caller.uid);
            t.db_mut().keys.insert(
                id,
                KeyRecord {
                    id,
                    description: req.description.clone(),
                    created,
                    creator_uid,
                    origin: c.origin,
                    state: match c.origin {
                        Origin::AwsKms => KeyState::Enabled,
                        Origin::External => KeyState::PendingImport,
                    },
                    deletion_date: None,
                    versions: Vec::new(),
                    rotation: None,
                    policy: c.policy,
                    tags: req.tags.clone(),
                    min_decryption_version: 0,
                    key_spec: c.key_spec,
                    key_usage: c.key_usage,
                },
            );
            if c.origin == Origin::AwsKms {
                d.key_version = Some(match &pregenerated {
                    Some(m) => t.add_sealed(id, VersionSource::Initial, m)?,
                    None => t.add_material(id, VersionSource::Initial)?,
                });
            }
            if let Some(a) = c.alias {
                t.db_mut().aliases.insert(a, id);
            }
            t.metadata(id)
        })
    }

    pub fn describe_key(&self, caller: &Caller, key: &str) -> Result<KeyMetadata> {
        self.run(caller, "DescribeKey", |t, d| {
            let id = t.resolve(key, d)?;
            t.authorize(id, "kms:DescribeKey", &EncryptionContext::default())?;
            t.metadata(id)
        })
    }

    pub fn list_keys(&self, caller: &Caller) -> Result<Vec<KeyListEntry>> {
        self.run(caller, "ListKeys", |t, _| {
            Ok(t.db
                .keys
                .values()
                .map(|k| KeyListEntry {
                    key_id: k.id.to_string(),
                    key_arn: k.arn(),
                    key_state: k.state.as_str(),
                    aliases: t.aliases_of(k.id),
                })
                .collect())
        })
    }

    pub fn list_aliases(&self, caller: &Caller, key: Option<&str>) -> Result<Vec<AliasEntry>> {
        self.run(caller, "ListAliases", |t, d| {
            let only = key.map(|k| t.resolve(k, d)).transpose()?;
            Ok(t.db
                .aliases
                .iter()
                .filter(|(_, id)| only.is_none_or(|o| o == **id))
                .map(|(a, id)| AliasEntry {
                    alias_name: a.clone(),
                    alias_arn: format!("kmsfs:{a}"),
                    target_key_id: id.to_string(),
                })
                .collect())
        })
    }

    pub fn create_alias(&self, caller: &Caller, alias: &str, key: &str) -> Result<()> {
        self.run(caller, "CreateAlias", |t, d| {
            let alias = normalize_alias(alias)?;
            let id = t.resolve(key, d)?;
            t.authorize(id, "kms:CreateAlias", &EncryptionContext::default())?;
            if t.key(id)?.state == KeyState::PendingDeletion {
                return Err(KmsError::invalid_state(format!(
                    "key {id} is pending deletion"
                )));
            }
            if t.db.aliases.contains_key(&alias) {
                return Err(KmsError::new(
                    ErrorKind::AlreadyExists,
                    format!("alias {alias} already exists"),
                ));
            }
            d.message = Some(alias.clone());
            t.db_mut().aliases.insert(alias, id);
            Ok(())
        })
    }

    pub fn delete_alias(&self, caller: &Caller, alias: &str) -> Result<()> {
        self.run(caller, "DeleteAlias", |t, d| {
            let alias = normalize_alias(alias)?;
            let id = t.resolve(&alias, d)?;
            t.authorize(id, "kms:DeleteAlias", &EncryptionContext::default())?;
            d.message = Some(alias.clone());
            t.db_mut().aliases.remove(&alias);
            Ok(())
        })
    }

    /// Shared shape of operations that check one action and then change the key record.
    fn modify<T>(
        &self,
        caller: &Caller,
        operation: &str,
        key: &str,
        f: impl FnOnce(&mut KeyRecord, DateTime<Utc>) -> Result<T>,
    ) -> Result<T> {
        self.run(caller, operation, |t, d| {
            let id = t.resolve(key, d)?;
            t.authorize(
                id,
                &format!("kms:{operation}"),
                &EncryptionContext::default(),
            )?;
            let now = t.now;
            let mut rec = t.key(id)?.clone();
            let out = f(&mut rec, now)?;
            *t.key_mut(id)? = rec;
            Ok(out)
        })
    }

    pub fn enable_key(&self, caller: &Caller, key: &str) -> Result<()> {
        self.modify(caller, "EnableKey", key, |k, _| k.enable())
    }

    pub fn disable_key(&self, caller: &Caller, key: &str) -> Result<()> {
        self.modify(caller, "DisableKey", key, |k, _| k.disable())
    }

    pub fn enable_key_rotation(
        &self,
        caller: &Caller,
        key: &str,
        period_days: Option<u32>,
    ) -> Result<()> {
        self.modify(caller, "EnableKeyRotation", key, |k, now| {
            k.enable_rotation(period_days.unwrap_or(DEFAULT_ROTATION_DAYS), now)
        })
    }

    pub fn disable_key_rotation(&self, caller: &Caller, key: &str) -> Result<()> {
        self.modify(caller, "DisableKeyRotation", key, |k, _| {
            k.disable_rotation()
        })
    }

    pub fn schedule_key_deletion(
        &self,
        caller: &Caller,
        key: &str,
        days: u32,
    ) -> Result<DeletionResult> {
        self.modify(caller, "ScheduleKeyDeletion", key, |k, now| {
            let when = k.schedule_deletion(days, now)?;
            Ok(DeletionResult {
                key_id: k.id.to_string(),
                deletion_date: format_time(&when),
                key_state: k.state.as_str(),
                pending_window_in_days: days,
            })
        })
    }

    /// Returns the key's id.
    pub fn cancel_key_deletion(&self, caller: &Caller, key: &str) -> Result<Uuid> {
        self.modify(caller, "CancelKeyDeletion", key, |k, _| {
            k.cancel_deletion().map(|_| k.id)
        })
    }

    /// The names of a key's policies: always just "default", as AWS.
    pub fn list_key_policies(&self, caller: &Caller, key: &str) -> Result<Vec<String>> {
        self.run(caller, "ListKeyPolicies", |t, d| {
            let id = t.resolve(key, d)?;
            t.authorize(id, "kms:ListKeyPolicies", &EncryptionContext::default())?;
            Ok(vec!["default".to_string()])
        })
    }

    /// Returns the key's id and its new current version.
    pub fn rotate_key_on_demand(&self, caller: &Caller, key: &str) -> Result<(Uuid, u32)> {
        self.run(caller, "RotateKeyOnDemand", |t, d| {
            let id = t.resolve(key, d)?;
            t.authorize(id, "kms:RotateKeyOnDemand", &EncryptionContext::default())?;
            t.key(id)?.check_rotate()?;
            let v = t.add_material(id, VersionSource::OnDemandRotation)?;
            d.key_version = Some(v);
            Ok((id, v))
        })
    }

    pub fn get_key_rotation_status(&self, caller: &Caller, key: &str) -> Result<RotationStatus> {
        self.run(caller, "GetKeyRotationStatus", |t, d| {
            let id = t.resolve(key, d)?;
            t.authorize(
                id,
                "kms:GetKeyRotationStatus",
                &EncryptionContext::default(),
            )?;
            let m = t.metadata(id)?;
            Ok(RotationStatus {
                key_id: m.key_id,
                key_rotation_enabled: m.key_rotation_enabled,
                rotation_period_in_days: m.rotation_period_in_days,
                next_rotation_date: m.next_rotation_date,
            })
        })
    }

    pub fn list_key_rotations(&self, caller: &Caller, key: &str) -> Result<Vec<RotationEntry>> {
        self.run(caller, "ListKeyRotations", |t, d| {
            let id = t.resolve(key, d)?;
            t.authorize(id, "kms:ListKeyRotations", &EncryptionContext::default())?;
            let k = t.key(id)?;
            let current = k.current_version().map(|v| v.number);
            Ok(k.versions
                .iter()
                .map(|v| RotationEntry {
                    key_id: id.to_string(),
                    key_version: v.number,
                    created: format_time(&v.created),
                    rotation_type: v.source.rotation_type().unwrap_or(match v.source {
                        VersionSource::Imported => "IMPORTED",
                        _ => "INITIAL",
                    }),
                    current: Some(v.number) == current,
                })
                .collect())
        })
    }

    /// Imports 256-bit material into an EXTERNAL key. Importing the same material again is a no-op
    /// (it re-enables a key that was waiting for it); different material is refused.
    pub fn import_key_material(&self, caller: &Caller, key: &str, material: &[u8]) -> Result<()> {
        self.run(caller, "ImportKeyMaterial", |t, d| {
            let id = t.resolve(key, d)?;
            t.authorize(id, "kms:ImportKeyMaterial", &EncryptionContext::default())?;
            t.import_material(id, material, d)
        })
    }

    pub fn tag_resource(
        &self,
        caller: &Caller,
        key: &str,
        tags: &BTreeMap<String, String>,
    ) -> Result<()> {
        validate_tags(tags)?;
        self.modify(caller, "TagResource", key, |k, _| {
            k.tags
                .extend(tags.iter().map(|(a, b)| (a.clone(), b.clone())));
            Ok(())
        })
    }

    pub fn untag_resource(&self, caller: &Caller, key: &str, tag_keys: &[String]) -> Result<()> {
        self.modify(caller, "UntagResource", key, |k, _| {
            for t in tag_keys {
                k.tags.remove(t);
            }
            Ok(())
        })
    }

    pub fn list_resource_tags(
        &self,
        caller: &Caller,
        key: &str,
    ) -> Result<BTreeMap<String, String>> {
        self.run(caller, "ListResourceTags", |t, d| {
            let id = t.resolve(key, d)?;
            t.authorize(id, "kms:ListResourceTags", &EncryptionContext::default())?;
            Ok(t.key(id)?.tags.clone())
        })
    }

    pub fn get_key_policy(&self, caller: &Caller, key: &str) -> Result<String> {
        self.run(caller, "GetKeyPolicy", |t, d| {
            let id = t.resolve(key, d)?;
            t.authorize(id, "kms:GetKeyPolicy", &EncryptionContext::default())?;
            Ok(t.key(id)?.policy.clone())
        })
    }

    /// Replaces a key's policy. Refuses one that would stop the caller changing it again, unless
    /// `bypass_lockout_check` (as AWS's BypassPolicyLockoutSafetyCheck).
    pub fn put_key_policy(
        &self,
        caller: &Caller,
        key: &str,
        text: &str,
        bypass_lockout_check: bool,
    ) -> Result<()> {
        self.run(caller, "PutKeyPolicy", |t, d| {
            let id = t.resolve(key, d)?;
            t.authorize(id, "kms:PutKeyPolicy", &EncryptionContext::default())?;
            let parsed = policy::parse(text)?;
            check_lockout(&parsed, t.caller, bypass_lockout_check, &key_arn(&id))?;
            t.key_mut(id)?.policy = text.to_string();
            Ok(())
        })
    }

    /// Says whether `principal` may do `action` on the key, and which statement decides it.
    pub fn explain_policy(
        &self,
        caller: &Caller,
        key: &str,
        action: &str,
        principal: &str,
        ctx: &EncryptionContext,
    ) -> Result<Explanation> {
        let subject = Caller::for_principal(principal)?;
        self.run(caller, "GetKeyPolicy", |t, d| {
            let id = t.resolve(key, d)?;
            t.authorize(id, "kms:GetKeyPolicy", &EncryptionContext::default())?;
            let decision = t.decide(id, &subject, action, ctx)?;
            Ok(Explanation::new(
                id.to_string(),
                action.to_string(),
                principal.to_string(),
                &decision,
            ))
        })
    }

    pub fn encrypt(
        &self,
        caller: &Caller,
        key: &str,
        plaintext: &[u8],
        ctx: &EncryptionContext,
    ) -> Result<Wrapped> {
        self.encrypt_with(caller, key, plaintext, ctx, None)
    }

    /// Encrypt with an algorithm: None or SYMMETRIC_DEFAULT for symmetric keys, RSAES_OAEP_* for
    /// RSA ENCRYPT_DECRYPT keys.
    pub fn encrypt_with(
        &self,
        caller: &Caller,
        key: &str,
        plaintext: &[u8],
        ctx: &EncryptionContext,
        alg: Option<EncryptionAlgorithm>,
    ) -> Result<Wrapped> {
        self.run(caller, "Encrypt", |t, d| {
            d.context = ctx.clone();
            let id = t.resolve(key, d)?;
            if plaintext.len() > MAX_PLAINTEXT {
                return Err(KmsError::validation(format!(
                    "plaintext is {} bytes; Encrypt takes at most {MAX_PLAINTEXT} (use generate-data-key for more)",
                    plaintext.len()
                )));
            }
            ctx.validate()?;
            t.authorize(id, "kms:Encrypt", ctx)?;
            t.seal_with(id, plaintext, ctx, alg, d)
        })
    }

    /// Decrypts a blob; the blob names its key. With `expected`, a blob of another key is
    /// IncorrectKeyException.
    pub fn decrypt(
        &self,
        caller: &Caller,
        data: &[u8],
        ctx: &EncryptionContext,
        expected: Option<&str>,
    ) -> Result<Unwrapped> {
        self.decrypt_with(caller, data, ctx, expected, None)
    }

    /// Decrypt with an algorithm; RSA algorithms need the key named in `key`.
    pub fn decrypt_with(
        &self,
        caller: &Caller,
        data: &[u8],
        ctx: &EncryptionContext,
        key: Option<&str>,
        alg: Option<EncryptionAlgorithm>,
    ) -> Result<Unwrapped> {
        self.run(caller, "Decrypt", |t, d| {
            d.context = ctx.clone();
            t.open_with(data, ctx, key, alg, "kms:Decrypt", d)
        })
    }

    /// Decrypts under the source key and encrypts under `to` without the plaintext leaving here.
    pub fn re_encrypt(
        &self,
        caller: &Caller,
        data: &[u8],
        source_ctx: &EncryptionContext,
        to: &str,
        dest_ctx: &EncryptionContext,
    ) -> Result<Wrapped> {
        let req = ReEncryptRequest {
            data,
            source_ctx,
            source_key: None,
            source_alg: None,
            to,
            dest_ctx,
            dest_alg: None,
        };
        self.re_encrypt_with(caller, &req).map(|(w, _)| w)
    }

    /// ReEncrypt with algorithms on either side (RSA sources need `source_key`). Returns the
    /// new ciphertext and the source key's id.
    pub fn re_encrypt_with(
        &self,
        caller: &Caller,
        r: &ReEncryptRequest,
    ) -> Result<(Wrapped, Uuid)> {
        self.run(caller, "ReEncrypt", |t, d| {
            d.context = r.source_ctx.clone();
            let inner = t.open_with(
                r.data,
                r.source_ctx,
                r.source_key,
                r.source_alg,
                "kms:ReEncryptFrom",
                d,
            )?;
            let mut dest_draft = Draft::default();
            let dest = t.resolve(r.to, &mut dest_draft)?;
            r.dest_ctx.validate()?;
            t.authorize(dest, "kms:ReEncryptTo", r.dest_ctx)?;
            let out = t.seal_with(
                dest,
                &inner.plaintext,
                r.dest_ctx,
                r.dest_alg,
                &mut dest_draft,
            )?;
            d.message = Some(format!(
                "re-encrypted to key {} version {}",
                out.key_id, out.key_version
            ));
            Ok((out, inner.key_id))
        })
    }

    /// A fresh random data key of `bytes` bytes, encrypted under `key` (and returned in plaintext
    /// unless `with_plaintext` is false).
    pub fn generate_data_key(
        &self,
        caller: &Caller,
        key: &str,
        bytes: usize,
        ctx: &EncryptionContext,
        with_plaintext: bool,
    ) -> Result<DataKey> {
        let op = if with_plaintext {
            "GenerateDataKey"
        } else {
            "GenerateDataKeyWithoutPlaintext"
        };
        self.run(caller, op, |t, d| {
            d.context = ctx.clone();
            let id = t.resolve(key, d)?;
            if !(1..=MAX_DATA_KEY_BYTES).contains(&bytes) {
                return Err(KmsError::validation(format!(
                    "data keys are 1 to {MAX_DATA_KEY_BYTES} bytes; {bytes} was asked"
                )));
            }
            ctx.validate()?;
            t.authorize(id, &format!("kms:{op}"), ctx)?;
            t.check_symmetric(id, op)?;
            let mut plaintext = Zeroizing::new(vec![0u8; bytes]);
            cryptocore::fill_random(&mut plaintext)
                .map_err(|_| KmsError::internal("the system random source failed"))?;
            let wrapped = t.seal_blob(id, &plaintext, ctx, d)?;
            Ok(DataKey {
                plaintext: with_plaintext.then_some(plaintext),
                wrapped,
            })
        })
    }

    pub fn generate_random(&self, caller: &Caller, bytes: usize) -> Result<Zeroizing<Vec<u8>>> {
        self.run(caller, "GenerateRandom", |_, _| {
            if !(1..=MAX_DATA_KEY_BYTES).contains(&bytes) {
                return Err(KmsError::validation(format!(
                    "random output is 1 to {MAX_DATA_KEY_BYTES} bytes; {bytes} was asked"
                )));
            }
            let mut out = Zeroizing::new(vec![0u8; bytes]);
            cryptocore::fill_random(&mut out)
                .map_err(|_| KmsError::internal("the system random source failed"))?;
            Ok(out)
        })
    }

    /// Audit records of this process wait for `flush_audit` to be synced (a mount's choice).
    pub fn defer_audit_sync(&self) {
        self.store.defer_audit_sync();
    }

    /// Syncs this process's audit records not yet synced, and moves audit.head past them.
    pub fn flush_audit(&self) -> Result<()> {
        if !self.store.audit_log().unflushed() {
            return Ok(());
        }
        let _lock = self.store.lock()?;
        self.store.audit_log().flush()
    }

    /// Verifies the audit chain and returns its records.
    pub fn audit_records(&self) -> Result<Vec<AuditRecord>> {
        let _lock = self.store.lock()?;
        self.store.audit_log().read_verified().map(|(r, _)| r)
    }

    /// Resolves a key name to its id without auditing (for filters such as `audit show --key`).
    pub fn resolve_quiet(&self, key: &str) -> Result<Uuid> {
        let lock = self.store.lock()?;
        let db = self.store.load(&lock)?;
        match KeyRef::parse(key)? {
            KeyRef::Id(id) => Ok(id),
            KeyRef::Alias(a) => db
                .aliases
                .get(&a)
                .copied()
                .ok_or_else(|| KmsError::not_found(format!("alias {a} does not exist"))),
        }
    }
}

/// Asymmetric keys take no encryption context (as AWS).
fn no_context(ctx: &EncryptionContext) -> Result<()> {
    if ctx.is_empty() {
        return Ok(());
    }
    Err(KmsError::validation(
        "asymmetric keys take no encryption context",
    ))
}

fn check_lockout(p: &policy::Policy, caller: &Caller, bypass: bool, resource: &str) -> Result<()> {
    if bypass {
        return Ok(());
    }
    let d = policy::evaluate(
        p,
        &Request {
            caller,
            action: "kms:PutKeyPolicy",
            resource,
            context: &EncryptionContext::default(),
        },
    );
    if d.allowed() {
        return Ok(());
    }
    Err(KmsError::validation(format!(
        "this policy would not let you (uid {}) change it again (kms:PutKeyPolicy): \
         fix it, or pass --bypass-lockout-check if that is intended",
        caller.uid
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_names_parse() {
        let id = Uuid::new_v4();
        assert_eq!(KeyRef::parse(&id.to_string()).unwrap(), KeyRef::Id(id));
        assert_eq!(
            KeyRef::parse(&format!("kmsfs:key/{id}")).unwrap(),
            KeyRef::Id(id)
        );
        assert_eq!(
            KeyRef::parse(&format!("arn:aws:kms:us-east-1:123456789012:key/{id}")).unwrap(),
            KeyRef::Id(id)
        );
        assert_eq!(
            KeyRef::parse("arn:aws:kms:us-east-1:123456789012:alias/app").unwrap(),
            KeyRef::Alias("alias/app".into())
        );
        assert_eq!(
            KeyRef::parse("kmsfs:alias/a").unwrap(),
            KeyRef::Alias("alias/a".into())
        );
        assert!(KeyRef::parse("arn:aws:kms:us-east-1:1:key/nope").is_err());
        assert!(KeyRef::parse("arn:aws:s3:::bucket").is_err());
        assert!(KeyRef::parse("nonsense").is_err());
    }
}
