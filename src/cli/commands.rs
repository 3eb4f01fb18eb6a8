//! What each subcommand does: parse its inputs, call the KMS, print the result.

use crate::cli::args::*;
use crate::cli::output;
use crate::cli::unlock;
use crate::clock::{self, Clock, format_time};
use crate::config::Config;
use crate::encoding::{b64_decode, b64_encode};
use crate::error::{KmsError, Result};
use crate::keystore::KeyStore;
use crate::keystore::rootkey::{KdfParams, RootKind};
use crate::kms::blob;
use crate::kms::key::Origin;
use crate::kms::keyspec::EncryptionAlgorithm;
use crate::kms::service::MAX_PLAINTEXT;
use crate::kms::types::{CreateKeyRequest, KeyMetadata, ReEncryptRequest, Wrapped};
use crate::kms::{Caller, EncryptionContext, Kms, key::key_arn};
use serde_json::json;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use zeroize::Zeroizing;

pub fn run(cli: Cli) -> Result<()> {
    let cfg = Config::load(cli.global.config.as_deref())?;
    let g = &cli.global;
    match cli.command {
        Command::Keystore(KeystoreCmd::Init(a)) => keystore_init(g, &cfg, &a),
        Command::Keystore(KeystoreCmd::Info) => keystore_info(g, &cfg),
        Command::Init(a) => crate::cli::mountcmd::init(g, &cfg, &a),
        Command::Mount(a) => crate::cli::mountcmd::mount(g, &cfg, &a),
        Command::Umount(a) => crate::cli::mountcmd::umount(&a),
        Command::SetKey(a) => crate::cli::lifecycle::set_key(&a),
        Command::Rewrap(a) => crate::cli::lifecycle::rewrap(g, &cfg, &a),
        Command::Fsck(a) => crate::cli::lifecycle::fsck(g, &cfg, &a),
        Command::Reencrypt(a) => crate::cli::lifecycle::reencrypt(g, &a),
        Command::Status(a) => crate::cli::status::status(g, &cfg, &a),
        Command::Completions { shell } => crate::cli::docs::completions(shell),
        Command::Man { dir } => crate::cli::docs::man_pages(&dir),
        Command::Serve(a) => {
            let credentials = crate::aws::credentials::CredentialMap::load(&a.credentials)?;
            let kms = open_kms(g, &cfg)?;
            crate::aws::server::serve(
                kms,
                crate::aws::server::ServeOptions {
                    listen: a.listen,
                    unix: a.unix,
                    credentials,
                    verify_signatures: !a.no_verify_signatures,
                    hosts: a.hosts,
                },
            )
        }
        Command::Key(KeyCmd::VersionsInUse { cipherdir }) => {
            crate::cli::lifecycle::versions_in_use(g, &cfg, &cipherdir)
        }
        Command::Key(KeyCmd::RetireVersion { key, below }) => {
            crate::cli::lifecycle::retire_version(g, &cfg, &key, below)
        }
        cmd => {
            let kms = open_kms(g, &cfg)?;
            let caller = Caller::current();
            let ctx = Ctx {
                kms: &kms,
                caller: &caller,
                json: g.output == OutputFormat::Json,
            };
            match cmd {
                Command::Key(k) => ctx.key(k),
                Command::Encrypt(a) => ctx.encrypt(&a),
                Command::Decrypt(a) => ctx.decrypt(&a),
                Command::ReEncrypt(a) => ctx.re_encrypt(&a),
                Command::GenerateDataKey(a) => ctx.generate_data_key(&a),
                Command::Random(a) => ctx.random(&a),
                Command::GenerateDataKeyPair(a) => ctx.generate_data_key_pair(&a),
                Command::Sign(a) => ctx.sign(&a),
                Command::Verify(a) => ctx.verify(&a),
                Command::GetPublicKey(a) => ctx.get_public_key(&a),
                Command::GenerateMac(a) => ctx.generate_mac(&a),
                Command::VerifyMac(a) => ctx.verify_mac(&a),
                Command::Audit(a) => ctx.audit(a),
                // Handled above, before the key store is opened.
                Command::Keystore(_)
                | Command::Init(_)
                | Command::Mount(_)
                | Command::Umount(_)
                | Command::SetKey(_)
                | Command::Rewrap(_)
                | Command::Fsck(_)
                | Command::Status(_)
                | Command::Completions { .. }
                | Command::Man { .. }
                | Command::Serve(_)
                | Command::Reencrypt(_) => Err(KmsError::internal(
                    "dispatched before the key store is opened",
                )),
            }
        }
    }
}

pub fn open_kms(g: &Global, cfg: &Config) -> Result<Kms> {
    let dir = unlock::keystore_dir(g, cfg);
    let meta = KeyStore::probe(&dir)?;
    let secret = unlock::secret_for_open(g, cfg, meta.root)?;
    let store = KeyStore::open(&dir, &secret)?;
    Ok(Kms::new(store, Clock::from_env()?))
}

fn keystore_init(g: &Global, cfg: &Config, a: &InitArgs) -> Result<()> {
    let dir = unlock::keystore_dir(g, cfg);
    let mut kdf = cfg.keystore.kdf.unwrap_or_default();
    if let Some(m) = a.kdf_memory_kib {
        kdf.memory_kib = m;
    }
    if let Some(t) = a.kdf_iterations {
        kdf.iterations = t;
    }
    let secret = unlock::secret_for_init(g, cfg)?;
    let store = KeyStore::init(&dir, &secret, kdf, Clock::from_env()?.now())?;
    if g.output == OutputFormat::Json {
        return output::json(&json!({
            "KeyStore": dir,
            "StoreId": store.meta().store_id,
            "RootKey": store.meta().root,
        }));
    }
    println!("created key store {}", dir.display());
    Ok(())
}

fn keystore_info(g: &Global, cfg: &Config) -> Result<()> {
    let dir = unlock::keystore_dir(g, cfg);
    let m = KeyStore::probe(&dir)?;
    if g.output == OutputFormat::Json {
        return output::json(&json!({
            "KeyStore": dir,
            "StoreId": m.store_id,
            "FormatVersion": m.version,
            "Created": format_time(&m.created),
            "RootKey": m.root,
            "Kdf": m.kdf,
        }));
    }
    let kdf = m.kdf.map_or_else(
        || "none (root key file)".to_string(),
        |k: KdfParams| {
            format!(
                "Argon2id, {} KiB, {} iterations, {} lanes",
                k.memory_kib, k.iterations, k.parallelism
            )
        },
    );
    output::rows(&[
        ("key store", dir.display().to_string()),
        ("store id", m.store_id.to_string()),
        ("format", format!("version {}", m.version)),
        ("created", format_time(&m.created)),
        (
            "unlocked by",
            match m.root {
                RootKind::Passphrase => "passphrase".into(),
                RootKind::KeyFile => "root key file".into(),
            },
        ),
        ("kdf", kdf),
    ]);
    Ok(())
}

pub(super) fn read_limited(input: Option<&Path>, limit: usize) -> Result<Zeroizing<Vec<u8>>> {
    let mut buf = Zeroizing::new(Vec::new());
    let res = match input {
        Some(p) => std::fs::File::open(p)
            .and_then(|f| f.take(limit as u64).read_to_end(&mut buf))
            .map_err(|e| KmsError::validation(format!("{}: {e}", p.display()))),
        None => std::io::stdin()
            .lock()
            .take(limit as u64)
            .read_to_end(&mut buf)
            .map_err(|e| KmsError::validation(format!("reading standard input: {e}"))),
    };
    res.map(|_| buf)
}

/// Reads a ciphertext blob, raw or base64 (a raw blob starts with its magic).
fn read_blob(input: Option<&Path>) -> Result<Vec<u8>> {
    let data = read_limited(input, 2 * blob::MAX_LEN + 64)?;
    if data.starts_with(blob::MAGIC) {
        return Ok(data.to_vec());
    }
    decode_text(&data)
}

/// Base64 text, or else the bytes themselves (RSA ciphertext, signatures, MACs).
pub(super) fn read_raw_or_base64(input: Option<&Path>, limit: usize) -> Result<Vec<u8>> {
    let data = read_limited(input, limit)?;
    Ok(decode_text(&data).unwrap_or_else(|_| data.to_vec()))
}

fn decode_text(data: &[u8]) -> Result<Vec<u8>> {
    let text = std::str::from_utf8(data).map_err(|_| {
        KmsError::invalid_ciphertext("input is neither a ciphertext blob nor base64")
    })?;
    b64_decode(text)
        .map_err(|_| KmsError::invalid_ciphertext("input is neither a ciphertext blob nor base64"))
}

fn parse_tags(pairs: &[String]) -> Result<BTreeMap<String, String>> {
    Ok(EncryptionContext::from_pairs(pairs)
        .map_err(|e| KmsError::validation(e.message.replace("encryption context", "tag")))?
        .0)
}

pub(super) struct Ctx<'a> {
    pub(super) kms: &'a Kms,
    pub(super) caller: &'a Caller,
    pub(super) json: bool,
}

impl Ctx<'_> {
    fn key(&self, cmd: KeyCmd) -> Result<()> {
        let (kms, c) = (self.kms, self.caller);
        match cmd {
            KeyCmd::Create(a) => {
                let policy = a
                    .policy_file
                    .as_ref()
                    .map(|p| {
                        std::fs::read_to_string(p)
                            .map_err(|e| KmsError::validation(format!("{}: {e}", p.display())))
                    })
                    .transpose()?;
                let m = kms.create_key(
                    c,
                    CreateKeyRequest {
                        description: a.description,
                        alias: a.alias,
                        policy,
                        bypass_lockout_check: a.bypass_lockout_check,
                        origin: Some(match a.origin {
                            OriginArg::AwsKms => Origin::AwsKms,
                            OriginArg::External => Origin::External,
                        }),
                        tags: parse_tags(&a.tags)?,
                        key_spec: Some(a.spec),
                        key_usage: a.usage,
                    },
                )?;
                if self.json {
                    return output::json(&json!({ "KeyMetadata": m }));
                }
                println!("{}", m.key_id);
                Ok(())
            }
            KeyCmd::Maintain => {
                let n = kms.maintain(c)?;
                if self.json {
                    output::json(&serde_json::json!({ "Applied": n }))
                } else {
                    println!("maintenance: {n} rotations or deletions applied");
                    Ok(())
                }
            }
            KeyCmd::List => {
                let keys = kms.list_keys(c)?;
                if self.json {
                    return output::json(&json!({ "Keys": keys }));
                }
                for k in keys {
                    println!("{}  {:<15}  {}", k.key_id, k.key_state, k.aliases.join(","));
                }
                Ok(())
            }
            KeyCmd::Describe(k) => {
                let m = kms.describe_key(c, &k.key)?;
                if self.json {
                    return output::json(&json!({ "KeyMetadata": m }));
                }
                print_metadata(&m);
                Ok(())
            }
            KeyCmd::Enable(k) => self.done(kms.enable_key(c, &k.key), &k.key, "enabled"),
            KeyCmd::Disable(k) => self.done(kms.disable_key(c, &k.key), &k.key, "disabled"),
            KeyCmd::Rotate(k) => {
                let (_, v) = kms.rotate_key_on_demand(c, &k.key)?;
                if self.json {
                    return output::json(&json!({ "KeyId": k.key, "KeyVersion": v }));
                }
                println!("rotated {}: version {v} is current", k.key);
                Ok(())
            }
            KeyCmd::Rotation(RotationCmd::Enable(a)) => self.done(
                kms.enable_key_rotation(c, &a.key, a.period_days),
                &a.key,
                "will rotate automatically",
            ),
            KeyCmd::Rotation(RotationCmd::Disable(k)) => self.done(
                kms.disable_key_rotation(c, &k.key),
                &k.key,
                "will not rotate automatically",
            ),
            KeyCmd::Rotation(RotationCmd::Status(k)) => {
                let s = kms.get_key_rotation_status(c, &k.key)?;
                if self.json {
                    return output::json(&s);
                }
                output::rows(&[
                    ("automatic rotation", on_off(s.key_rotation_enabled)),
                    (
                        "period",
                        s.rotation_period_in_days
                            .map_or("-".into(), |d| format!("{d} days")),
                    ),
                    ("next rotation", s.next_rotation_date.unwrap_or("-".into())),
                ]);
                Ok(())
            }
            KeyCmd::Rotations(k) => {
                let r = kms.list_key_rotations(c, &k.key)?;
                if self.json {
                    return output::json(&json!({ "Rotations": r }));
                }
                for e in r {
                    println!(
                        "version {:<4} {}  {:<9}{}",
                        e.key_version,
                        e.created,
                        e.rotation_type,
                        if e.current { "  current" } else { "" }
                    );
                }
                Ok(())
            }
            KeyCmd::ScheduleDeletion(a) => {
                let r = kms.schedule_key_deletion(c, &a.key, a.days)?;
                if self.json {
                    return output::json(&r);
                }
                println!(
                    "key {} will be deleted on {}; `kmsfs key cancel-deletion {}` stops it",
                    r.key_id, r.deletion_date, a.key
                );
                Ok(())
            }
            KeyCmd::CancelDeletion(k) => self.done(
                kms.cancel_key_deletion(c, &k.key).map(|_| ()),
                &k.key,
                "is no longer pending deletion (it is Disabled: `kmsfs key enable` it)",
            ),
            KeyCmd::Import(a) => {
                // Read one byte more than allowed, so an oversized file is refused, not cut.
                let m = read_limited(Some(&a.material_file), 33)?;
                self.done(
                    kms.import_key_material(c, &a.key, &m),
                    &a.key,
                    "has its key material",
                )
            }
            KeyCmd::Alias(AliasCmd::Create { alias, key }) => {
                self.done(kms.create_alias(c, &alias, &key), &alias, "created")
            }
            KeyCmd::Alias(AliasCmd::Delete { alias }) => {
                self.done(kms.delete_alias(c, &alias), &alias, "deleted")
            }
            KeyCmd::Alias(AliasCmd::List { key }) => {
                let a = kms.list_aliases(c, key.as_deref())?;
                if self.json {
                    return output::json(&json!({ "Aliases": a }));
                }
                for e in a {
                    println!("{}  {}", e.alias_name, e.target_key_id);
                }
                Ok(())
            }
            KeyCmd::Tag(a) => {
                let tags = parse_tags(&a.tags)?;
                self.done(kms.tag_resource(c, &a.key, &tags), &a.key, "tagged")
            }
            KeyCmd::Untag(a) => self.done(
                kms.untag_resource(c, &a.key, &a.tag_keys),
                &a.key,
                "untagged",
            ),
            KeyCmd::Tags(k) => {
                let t = kms.list_resource_tags(c, &k.key)?;
                if self.json {
                    let list: Vec<_> = t
                        .iter()
                        .map(|(k, v)| json!({"TagKey": k, "TagValue": v}))
                        .collect();
                    return output::json(&json!({ "Tags": list }));
                }
                for (k, v) in t {
                    println!("{k}={v}");
                }
                Ok(())
            }
            KeyCmd::Policy(PolicyCmd::Get(k)) => {
                let p = kms.get_key_policy(c, &k.key)?;
                if self.json {
                    return output::json(&json!({ "Policy": p, "PolicyName": "default" }));
                }
                println!("{p}");
                Ok(())
            }
            KeyCmd::Policy(PolicyCmd::Put(a)) => {
                let text = std::fs::read_to_string(&a.file)
                    .map_err(|e| KmsError::validation(format!("{}: {e}", a.file.display())))?;
                self.done(
                    kms.put_key_policy(c, &a.key, &text, a.bypass_lockout_check),
                    &a.key,
                    "has a new policy",
                )
            }
            KeyCmd::VersionsInUse { .. } | KeyCmd::RetireVersion { .. } => Err(KmsError::internal(
                "dispatched before the key store is opened",
            )),
            KeyCmd::Policy(PolicyCmd::Explain(a)) => {
                let ctx = EncryptionContext::from_pairs(&a.context)?;
                let e = kms.explain_policy(c, &a.key, &a.action, &a.principal, &ctx)?;
                if self.json {
                    return output::json(&e);
                }
                let why = match (e.reason, &e.statement) {
                    ("implicit", _) => "no statement allows it".to_string(),
                    ("explicit", Some(s)) => format!("explicit deny by statement {s:?}"),
                    (_, Some(s)) => format!("allowed by statement {s:?}"),
                    _ => String::new(),
                };
                println!(
                    "{}: {} {} on {} ({why})",
                    e.decision.to_uppercase(),
                    e.principal,
                    e.action,
                    e.key_id
                );
                Ok(())
            }
        }
    }

    /// Prints the confirmation of an operation that returns nothing.
    fn done(&self, r: Result<()>, subject: &str, what: &str) -> Result<()> {
        r?;
        if self.json {
            return output::json(&json!({ "Result": "Success", "Subject": subject }));
        }
        println!("{subject} {what}");
        Ok(())
    }

    fn write_blob(
        &self,
        w: &Wrapped,
        alg: Option<EncryptionAlgorithm>,
        io: &IoArgs,
        extra: serde_json::Value,
    ) -> Result<()> {
        if self.json {
            let mut v = json!({
                "CiphertextBlob": b64_encode(&w.blob),
                "KeyId": key_arn(&w.key_id),
                "KeyVersion": w.key_version,
                "EncryptionAlgorithm": alg.unwrap_or(EncryptionAlgorithm::SymmetricDefault).as_str(),
            });
            if let (Some(o), serde_json::Value::Object(e)) = (v.as_object_mut(), extra) {
                o.extend(e);
            }
            let s = serde_json::to_string_pretty(&v)
                .map_err(|e| KmsError::internal(format!("encoding output: {e}")))?;
            return output::bytes(format!("{s}\n").as_bytes(), io.output_file.as_deref());
        }
        if io.base64 {
            output::bytes(
                format!("{}\n", b64_encode(&w.blob)).as_bytes(),
                io.output_file.as_deref(),
            )
        } else {
            output::bytes(&w.blob, io.output_file.as_deref())
        }
    }

    fn encrypt(&self, a: &EncryptArgs) -> Result<()> {
        let ctx = EncryptionContext::from_pairs(&a.context)?;
        let plaintext = read_limited(a.io.input.as_deref(), MAX_PLAINTEXT + 1)?;
        let w = self
            .kms
            .encrypt_with(self.caller, &a.key, &plaintext, &ctx, a.algorithm)?;
        self.write_blob(&w, a.algorithm, &a.io, json!({}))
    }

    fn decrypt(&self, a: &DecryptArgs) -> Result<()> {
        let ctx = EncryptionContext::from_pairs(&a.context)?;
        let data = match a.algorithm {
            Some(_) => read_raw_or_base64(a.io.input.as_deref(), 2 * blob::MAX_LEN + 64)?,
            None => read_blob(a.io.input.as_deref())?,
        };
        let u = self
            .kms
            .decrypt_with(self.caller, &data, &ctx, a.key.as_deref(), a.algorithm)?;
        if self.json {
            let v = json!({
                "KeyId": key_arn(&u.key_id),
                "KeyVersion": u.key_version,
                "Plaintext": b64_encode(&u.plaintext),
                "EncryptionAlgorithm": a.algorithm.unwrap_or(EncryptionAlgorithm::SymmetricDefault).as_str(),
            });
            return output::secret_json(&v, a.io.output_file.as_deref());
        }
        if a.io.base64 {
            let s = Zeroizing::new(format!("{}\n", b64_encode(&u.plaintext)));
            output::bytes(s.as_bytes(), a.io.output_file.as_deref())
        } else {
            output::bytes(&u.plaintext, a.io.output_file.as_deref())
        }
    }

    fn re_encrypt(&self, a: &ReEncryptArgs) -> Result<()> {
        let src = EncryptionContext::from_pairs(&a.context)?;
        let dst = match &a.to_context {
            Some(p) => EncryptionContext::from_pairs(p)?,
            None => src.clone(),
        };
        let data = match a.source_algorithm {
            Some(_) => read_raw_or_base64(a.io.input.as_deref(), 2 * blob::MAX_LEN + 64)?,
            None => read_blob(a.io.input.as_deref())?,
        };
        let source = blob::parse(&data).ok().map(|(h, _)| h);
        let (w, _) = self.kms.re_encrypt_with(
            self.caller,
            &ReEncryptRequest {
                data: &data,
                source_ctx: &src,
                source_key: a.source_key.as_deref(),
                source_alg: a.source_algorithm,
                to: &a.to,
                dest_ctx: &dst,
                dest_alg: a.to_algorithm,
            },
        )?;
        let extra = match source {
            Some(h) => json!({
                "SourceKeyId": key_arn(&h.key_id),
                "SourceKeyVersion": h.key_version,
            }),
            None => json!({}),
        };
        self.write_blob(&w, a.to_algorithm, &a.io, extra)
    }

    fn generate_data_key(&self, a: &DataKeyArgs) -> Result<()> {
        let ctx = EncryptionContext::from_pairs(&a.context)?;
        let bytes = match (a.bytes, a.spec) {
            (Some(n), _) => n,
            (None, Some(KeySpecArg::Aes128)) => 16,
            (None, _) => 32,
        };
        let dk =
            self.kms
                .generate_data_key(self.caller, &a.key, bytes, &ctx, !a.without_plaintext)?;
        let mut v = json!({
            "CiphertextBlob": b64_encode(&dk.wrapped.blob),
            "KeyId": key_arn(&dk.wrapped.key_id),
            "KeyVersion": dk.wrapped.key_version,
        });
        if let (Some(p), Some(o)) = (&dk.plaintext, v.as_object_mut()) {
            o.insert("Plaintext".into(), b64_encode(p).into());
        }
        output::secret_json(&v, None)
    }

    fn random(&self, a: &RandomArgs) -> Result<()> {
        let r = self.kms.generate_random(self.caller, a.bytes)?;
        if self.json {
            return output::json(&json!({ "Plaintext": b64_encode(&r) }));
        }
        if a.base64 {
            output::bytes(
                format!("{}\n", b64_encode(&r)).as_bytes(),
                a.output_file.as_deref(),
            )
        } else {
            output::bytes(&r, a.output_file.as_deref())
        }
    }

    fn audit(&self, cmd: AuditCmd) -> Result<()> {
        match cmd {
            AuditCmd::Verify => {
                let n = self.kms.audit_records()?.len();
                if self.json {
                    return output::json(&json!({ "Valid": true, "Records": n }));
                }
                println!("audit log intact: {n} records");
                Ok(())
            }
            AuditCmd::Show(a) => {
                let key = a
                    .key
                    .as_deref()
                    .map(|k| self.kms.resolve_quiet(k))
                    .transpose()?
                    .map(|id| id.to_string());
                let since = a.since.as_deref().map(clock::parse_time).transpose()?;
                let mut recs: Vec<_> = self
                    .kms
                    .audit_records()?
                    .into_iter()
                    .filter(|r| key.is_none() || r.key_id == key)
                    .filter(|r| {
                        a.operation
                            .as_ref()
                            .is_none_or(|o| o.eq_ignore_ascii_case(&r.operation))
                    })
                    .filter(|r| {
                        since.is_none_or(|s| clock::parse_time(&r.time).is_ok_and(|t| t >= s))
                    })
                    .collect();
                if let Some(n) = a.limit {
                    let skip = recs.len().saturating_sub(n);
                    recs.drain(..skip);
                }
                if self.json {
                    return output::json(&recs);
                }
                for r in recs {
                    let who = r
                        .caller
                        .user
                        .clone()
                        .unwrap_or_else(|| format!("uid:{}", r.caller.uid));
                    let key = match (&r.key_id, r.key_version) {
                        (Some(k), Some(v)) => format!("{k} v{v}"),
                        (Some(k), None) => k.clone(),
                        _ => "-".into(),
                    };
                    println!(
                        "{:>5} {} {:<22} {:<44} {:<28} {} pid {}",
                        r.seq, r.time, r.operation, key, r.result, who, r.caller.pid
                    );
                }
                Ok(())
            }
        }
    }
}

fn on_off(b: bool) -> String {
    if b {
        "enabled".into()
    } else {
        "disabled".into()
    }
}

fn print_metadata(m: &KeyMetadata) {
    let tags: Vec<String> = m.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
    output::rows(&[
        ("key id", m.key_id.clone()),
        ("arn", m.arn.clone()),
        ("state", m.key_state.to_string()),
        ("description", m.description.clone()),
        ("origin", m.origin.to_string()),
        ("spec", format!("{} ({})", m.key_spec, m.key_usage)),
        (
            "algorithms",
            [
                &m.encryption_algorithms,
                &m.signing_algorithms,
                &m.mac_algorithms,
            ]
            .iter()
            .flat_map(|l| l.iter().copied())
            .collect::<Vec<_>>()
            .join(", "),
        ),
        ("created", m.creation_date.clone()),
        ("current version", m.current_key_version.to_string()),
        (
            "rotation",
            match (m.rotation_period_in_days, &m.next_rotation_date) {
                (Some(d), Some(n)) => format!("every {d} days, next {n}"),
                _ => "disabled".into(),
            },
        ),
        (
            "deletion date",
            m.deletion_date.clone().unwrap_or("-".into()),
        ),
        ("aliases", m.aliases.join(", ")),
        ("tags", tags.join(", ")),
    ]);
}
