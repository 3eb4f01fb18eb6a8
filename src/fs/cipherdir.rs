//! The cipher directory: its authenticated config file (`kmsfs.conf`) and the per-directory name
//! key files (`kmsfs.dirkey`), both holding only keys wrapped by a CMK through the key provider.

use crate::cryptocore::{self, SecretKey};
use crate::error::{KmsError, Result};
use crate::fs::header::{self, DataKeys, Kind};
use crate::fs::nametransform::{CONFIG_FILE, DIRKEY_FILE};
use crate::keystore::atomic;
use crate::kms::{Caller, EncryptionContext};
use crate::provider::KeyProvider;
use serde::{Deserialize, Serialize};
use std::path::Path;
use uuid::Uuid;
use zeroize::Zeroizing;

pub const FORMAT: &str = "kmsfs-cipherdir";
pub const VERSION: u32 = 1;

/// kmsfs.conf. The MAC covers every other field, under a key derived from the volume key.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeConfig {
    pub format: String,
    pub version: u32,
    pub volume_id: Uuid,
    /// The CMK new files and directories are wrapped by (a key id).
    pub key: String,
    pub created: String,
    pub block_size: u32,
    /// The volume key, wrapped by the CMK under context {"kmsfs:volume-id": hex(volume_id)}.
    #[serde(with = "crate::encoding::b64")]
    pub volume_key: Vec<u8>,
    /// A remote key service holding the CMKs; absent: this host's key store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<crate::aws::remote::RemoteConfig>,
    pub mac: String,
}

/// Keys derived from the unwrapped volume key.
pub struct VolumeKeys {
    pub config_mac: SecretKey,
    /// Encrypts symlink targets (volume-wide: a symlink may be linked into any directory).
    pub symlink: SecretKey,
}

impl VolumeKeys {
    fn derive(volume_key: &[u8], id: &Uuid) -> VolumeKeys {
        VolumeKeys {
            config_mac: cryptocore::derive_key(volume_key, id.as_bytes(), b"kmsfs/v1/config-mac"),
            symlink: cryptocore::derive_key(volume_key, id.as_bytes(), b"kmsfs/v1/symlink"),
        }
    }
}

pub fn volume_context(id: &Uuid) -> EncryptionContext {
    EncryptionContext(
        [("kmsfs:volume-id".to_string(), hex::encode(id.as_bytes()))]
            .into_iter()
            .collect(),
    )
}

/// The MAC of a config under its (unwrapped) volume key.
pub fn config_mac(c: &VolumeConfig, volume_key: &[u8]) -> Result<String> {
    let keys = VolumeKeys::derive(volume_key, &c.volume_id);
    Ok(hex::encode(cryptocore::hmac_sha256(
        keys.config_mac.as_ref(),
        &[&config_mac_input(c)?],
    )))
}

fn config_mac_input(c: &VolumeConfig) -> Result<Vec<u8>> {
    let mut v = serde_json::to_value(c).map_err(|e| KmsError::internal(e.to_string()))?;
    if let Some(o) = v.as_object_mut() {
        o.remove("mac");
    }
    let mut out = b"kmsfs config v1".to_vec();
    out.extend(serde_json::to_vec(&v).map_err(|e| KmsError::internal(e.to_string()))?);
    Ok(out)
}

fn invalid(dir: &Path, why: impl std::fmt::Display) -> KmsError {
    KmsError::validation(format!("{}: {why}", dir.join(CONFIG_FILE).display()))
}

/// An opened cipher directory.
pub struct Volume {
    pub config: VolumeConfig,
    pub keys: VolumeKeys,
}

/// Prepares an empty directory (created if missing) as a cipher directory whose new files use `key`.
pub fn init(
    dir: &Path,
    provider: &dyn KeyProvider,
    caller: &Caller,
    key: &str,
    now: &str,
    remote: Option<crate::aws::remote::RemoteConfig>,
) -> Result<Volume> {
    if dir.exists() {
        let mut entries = std::fs::read_dir(dir)
            .map_err(|e| KmsError::validation(format!("{}: {e}", dir.display())))?;
        if entries.next().is_some() {
            return Err(KmsError::validation(format!(
                "{} is not empty: a cipher directory starts empty",
                dir.display()
            )));
        }
    } else {
        std::fs::create_dir_all(dir)
            .map_err(|e| KmsError::validation(format!("{}: {e}", dir.display())))?;
    }
    let volume_id = Uuid::new_v4();
    let vk = provider.generate_data_key(caller, key, &volume_context(&volume_id))?;
    let mut config = VolumeConfig {
        format: FORMAT.into(),
        version: VERSION,
        volume_id,
        key: vk.wrapped.key.clone(),
        created: now.into(),
        block_size: crate::fs::contentenc::BLOCK as u32,
        volume_key: vk.wrapped.blob.clone(),
        provider: remote,
        mac: String::new(),
    };
    let keys = VolumeKeys::derive(&vk.plaintext, &volume_id);
    config.mac = hex::encode(cryptocore::hmac_sha256(
        keys.config_mac.as_ref(),
        &[&config_mac_input(&config)?],
    ));
    create_dirkey(dir, provider, caller, &config.key)?;
    let json = serde_json::to_vec_pretty(&config).map_err(|e| KmsError::internal(e.to_string()))?;
    atomic::write_atomic(&dir.join(CONFIG_FILE), &json)
        .map_err(|e| KmsError::io(dir.display(), e))?;
    Ok(Volume { config, keys })
}

/// Reads kmsfs.conf and checks its format and version (not yet its MAC: that needs the KMS).
pub fn read_config(dir: &Path) -> Result<VolumeConfig> {
    let path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            KmsError::validation(format!(
                "{} is not a kmsfs cipher directory (no {CONFIG_FILE}): prepare one with `kmsfs init`",
                dir.display()
            ))
        } else {
            invalid(dir, e)
        }
    })?;
    let config: VolumeConfig =
        serde_json::from_str(&text).map_err(|e| invalid(dir, format!("damaged: {e}")))?;
    if config.format != FORMAT {
        return Err(invalid(dir, "not a kmsfs config"));
    }
    if config.version != VERSION {
        return Err(invalid(
            dir,
            format!(
                "format version {} is not supported (this kmsfs reads {VERSION})",
                config.version
            ),
        ));
    }
    Ok(config)
}

/// Opens a cipher directory: reads and authenticates kmsfs.conf.
pub fn open(dir: &Path, provider: &dyn KeyProvider, caller: &Caller) -> Result<Volume> {
    let config = read_config(dir)?;
    let vk = provider.decrypt_data_key(
        caller,
        &config.volume_key,
        &volume_context(&config.volume_id),
    )?;
    let keys = VolumeKeys::derive(&vk, &config.volume_id);
    let mac = hex::decode(&config.mac).map_err(|_| invalid(dir, "damaged MAC"))?;
    if !cryptocore::hmac_verify(
        keys.config_mac.as_ref(),
        &[&config_mac_input(&config)?],
        &mac,
    ) {
        return Err(invalid(dir, "was modified (authentication failed)"));
    }
    // The provider was built from an earlier read of the file; the MAC covers this one. They
    // must agree, or a file that changed between the reads would have chosen the service.
    if config.provider.as_ref() != provider.remote_config() {
        return Err(invalid(
            dir,
            "names another key service than the one this mount was set up with",
        ));
    }
    Ok(Volume { config, keys })
}

/// A file's or directory's unwrapped data key, with the id it belongs to.
#[derive(Clone)]
pub struct Unwrapped {
    pub id: [u8; 16],
    pub data_key: Zeroizing<Vec<u8>>,
    /// The wrapped form in use.
    pub blob: Vec<u8>,
    /// The slot used and its generation, for re-wrapping.
    pub slot: usize,
    pub generation: u64,
}

/// Why a header could not be opened.
pub enum HeaderFailure {
    /// Not a kmsfs header, or no slot authenticates: the bytes are wrong.
    Corrupt(String),
    /// The KMS refused (key disabled, deleted, access denied...).
    Kms(KmsError),
}

/// Unwraps the data key of a header, trying slots from the newest generation down.
pub fn unwrap_header(
    kind: Kind,
    data: &[u8],
    provider: &dyn KeyProvider,
    caller: &Caller,
) -> std::result::Result<Unwrapped, HeaderFailure> {
    let h = header::parse(kind, data).map_err(|e| HeaderFailure::Corrupt(format!("{e:?}")))?;
    let ctx = kind.context(&h.id);
    // The newest slot decides. An older one is used only if the newest is damaged (a torn
    // re-wrap): if the KMS refuses the newest slot's key, that refusal stands, so re-wrapping
    // to a key and then disabling or deleting it is never undone by a stale wrapping.
    for slot in &h.slots {
        match provider.decrypt_data_key(caller, &slot.blob, &ctx) {
            Ok(dk) if slot.verify(kind, &h.id, &dk) => {
                return Ok(Unwrapped {
                    id: h.id,
                    data_key: dk,
                    blob: slot.blob.clone(),
                    slot: slot.index,
                    generation: slot.generation,
                });
            }
            Ok(_) => {}
            Err(e) if e.kind == crate::error::ErrorKind::InvalidCiphertext => {}
            Err(e) => return Err(HeaderFailure::Kms(e)),
        }
    }
    Err(HeaderFailure::Corrupt(
        "no header slot authenticates".into(),
    ))
}

/// A fresh id and data key, wrapped by `key`; returns the encoded header and the key.
pub fn new_header(
    kind: Kind,
    provider: &dyn KeyProvider,
    caller: &Caller,
    key: &str,
) -> Result<([u8; header::HEADER_LEN], Unwrapped)> {
    let mut id = [0u8; 16];
    cryptocore::fill_random(&mut id)
        .map_err(|_| KmsError::internal("the system random source failed"))?;
    let dk = provider.generate_data_key(caller, key, &kind.context(&id))?;
    let h = header::encode_new(kind, &id, &dk.wrapped.blob, &dk.plaintext)
        .map_err(|e| KmsError::internal(format!("header: {e:?}")))?;
    Ok((
        h,
        Unwrapped {
            id,
            blob: dk.wrapped.blob.clone(),
            data_key: dk.plaintext,
            slot: 0,
            generation: 1,
        },
    ))
}

/// Writes a new directory key file into `dir`.
pub fn create_dirkey(
    dir: &Path,
    provider: &dyn KeyProvider,
    caller: &Caller,
    key: &str,
) -> Result<DataKeys> {
    let (h, u) = new_header(Kind::DirKey, provider, caller, key)?;
    atomic::write_atomic(&dir.join(DIRKEY_FILE), &h).map_err(|e| KmsError::io(dir.display(), e))?;
    Ok(DataKeys::derive(&u.data_key, &u.id))
}

/// Encrypts a symlink target: base64url(nonce || AES-256-GCM(target)), AAD binds the purpose.
pub fn encrypt_symlink(keys: &VolumeKeys, target: &[u8]) -> Result<String> {
    let sealed = cryptocore::seal(&keys.symlink, b"kmsfs symlink v1", target)
        .map_err(|_| KmsError::internal("the system random source failed"))?;
    Ok(base64::Engine::encode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        sealed,
    ))
}

pub fn decrypt_symlink(keys: &VolumeKeys, stored: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    let raw =
        base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, stored).ok()?;
    cryptocore::open(&keys.symlink, b"kmsfs symlink v1", &raw).ok()
}

/// Encrypts an xattr value, bound to the attribute's name and the inode's id.
pub fn encrypt_xattr(key: &SecretKey, id: &[u8; 16], name: &[u8], value: &[u8]) -> Result<Vec<u8>> {
    let mut aad = b"kmsfs xattr v1".to_vec();
    aad.extend_from_slice(id);
    aad.extend_from_slice(name);
    cryptocore::seal(key, &aad, value)
        .map_err(|_| KmsError::internal("the system random source failed"))
}

pub fn decrypt_xattr(
    key: &SecretKey,
    id: &[u8; 16],
    name: &[u8],
    stored: &[u8],
) -> Option<Zeroizing<Vec<u8>>> {
    let mut aad = b"kmsfs xattr v1".to_vec();
    aad.extend_from_slice(id);
    aad.extend_from_slice(name);
    cryptocore::open(key, &aad, stored).ok()
}
