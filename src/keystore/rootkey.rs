//! The key store's root key: from a passphrase through Argon2id, or from a 32-byte key file.
//! Every key the store uses is derived from it with HKDF, one per purpose.

use crate::cryptocore::{self, KEY_LEN, SecretKey};
use crate::error::{ErrorKind, KmsError, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;
use zeroize::{Zeroize, Zeroizing};

/// Argon2id cost parameters, stored with the key store so the same ones derive the key again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl Default for KdfParams {
    fn default() -> Self {
        KdfParams {
            memory_kib: 64 * 1024,
            iterations: 3,
            parallelism: 1,
        }
    }
}

/// Lower bounds below which a passphrase is too cheap to guess; tests use the minimum.
pub const MIN_MEMORY_KIB: u32 = 8 * 1024;
pub const MAX_MEMORY_KIB: u32 = 4 * 1024 * 1024;

impl KdfParams {
    pub fn validate(&self) -> Result<()> {
        if !(MIN_MEMORY_KIB..=MAX_MEMORY_KIB).contains(&self.memory_kib)
            || !(1..=64).contains(&self.iterations)
            || !(1..=16).contains(&self.parallelism)
        {
            return Err(KmsError::validation(format!(
                "Argon2id parameters out of range: memory {MIN_MEMORY_KIB}..{MAX_MEMORY_KIB} KiB, \
                 iterations 1..64, parallelism 1..16 (got {self:?})"
            )));
        }
        Ok(())
    }
}

/// What the user holds to unlock the store.
pub enum RootSecret {
    Passphrase(Zeroizing<Vec<u8>>),
    KeyFile(SecretKey),
}

impl RootSecret {
    /// Reads a passphrase file: its first line, without the line ending.
    pub fn passphrase_from_file(path: &Path) -> Result<RootSecret> {
        let data = Zeroizing::new(
            std::fs::read(path)
                .map_err(|e| KmsError::validation(format!("{}: {e}", path.display())))?,
        );
        let line = data.split(|b| *b == b'\n').next().unwrap_or_default();
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        Self::passphrase(line.to_vec())
    }

    pub fn passphrase(p: Vec<u8>) -> Result<RootSecret> {
        let p = Zeroizing::new(p);
        if p.is_empty() {
            return Err(KmsError::validation("the passphrase is empty"));
        }
        Ok(RootSecret::Passphrase(p))
    }

    /// A root key file holds exactly 32 raw bytes, or 64 hex digits (one trailing newline allowed).
    pub fn key_from_file(path: &Path) -> Result<RootSecret> {
        let data = Zeroizing::new(
            std::fs::read(path)
                .map_err(|e| KmsError::validation(format!("{}: {e}", path.display())))?,
        );
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        if data.len() == KEY_LEN {
            key.copy_from_slice(&data);
            return Ok(RootSecret::KeyFile(key));
        }
        let trimmed = data.strip_suffix(b"\n").unwrap_or(&data);
        if trimmed.len() == 2 * KEY_LEN && hex::decode_to_slice(trimmed, key.as_mut()).is_ok() {
            return Ok(RootSecret::KeyFile(key));
        }
        Err(KmsError::validation(format!(
            "{}: a root key file holds exactly 32 bytes or 64 hex digits (it has {} bytes)",
            path.display(),
            data.len()
        )))
    }

    pub fn kind(&self) -> RootKind {
        match self {
            RootSecret::Passphrase(_) => RootKind::Passphrase,
            RootSecret::KeyFile(_) => RootKind::KeyFile,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RootKind {
    Passphrase,
    KeyFile,
}

/// Derives the 32-byte root key. For a passphrase, Argon2id with the stored salt and costs.
pub fn derive_root_key(secret: &RootSecret, salt: &[u8], kdf: &KdfParams) -> Result<SecretKey> {
    match secret {
        RootSecret::KeyFile(k) => Ok(k.clone()),
        RootSecret::Passphrase(p) => {
            kdf.validate()?;
            let params = argon2::Params::new(
                kdf.memory_kib,
                kdf.iterations,
                kdf.parallelism,
                Some(KEY_LEN),
            )
            .map_err(|e| KmsError::validation(format!("Argon2id parameters: {e}")))?;
            let a =
                argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
            let mut out = Zeroizing::new([0u8; KEY_LEN]);
            a.hash_password_into(p, salt, out.as_mut())
                .map_err(|e| KmsError::internal(format!("Argon2id: {e}")))?;
            Ok(out)
        }
    }
}

/// The keys the store uses, each derived from the root key for one purpose.
pub struct StoreKeys {
    /// Seals the key database.
    pub db: SecretKey,
    /// Seals each key-material version.
    pub material: SecretKey,
    /// Keys the audit log's MAC chain.
    pub audit: SecretKey,
    /// Proves the passphrase is right, without decrypting anything.
    pub verifier: SecretKey,
}

impl StoreKeys {
    pub fn derive(root: &SecretKey, store_id: &[u8]) -> StoreKeys {
        let d = |info: &[u8]| cryptocore::derive_key(root.as_ref(), store_id, info);
        StoreKeys {
            db: d(b"kmsfs/keystore/v1/db"),
            material: d(b"kmsfs/keystore/v1/material"),
            audit: d(b"kmsfs/keystore/v1/audit"),
            verifier: d(b"kmsfs/keystore/v1/verifier"),
        }
    }

    /// The verifier stored in keystore.json; recomputing it checks a passphrase in constant time.
    pub fn verifier_tag(&self) -> [u8; 32] {
        cryptocore::hmac_sha256(self.verifier.as_ref(), &[VERIFIER_LABEL])
    }

    pub fn check_verifier(&self, tag: &[u8]) -> Result<()> {
        if cryptocore::hmac_verify(self.verifier.as_ref(), &[VERIFIER_LABEL], tag) {
            Ok(())
        } else {
            Err(KmsError::new(
                ErrorKind::WrongPassphrase,
                "the passphrase or root key does not unlock this key store",
            ))
        }
    }
}

const VERIFIER_LABEL: &[u8] = b"kmsfs keystore verifier v1";

impl Drop for StoreKeys {
    fn drop(&mut self) {
        // Each field zeroizes itself; this makes the intent explicit for readers.
        self.db.zeroize();
        self.material.zeroize();
        self.audit.zeroize();
        self.verifier.zeroize();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAST: KdfParams = KdfParams {
        memory_kib: MIN_MEMORY_KIB,
        iterations: 1,
        parallelism: 1,
    };

    #[test]
    fn passphrase_derivation_is_deterministic_and_salted() {
        let p = |s: &str| RootSecret::passphrase(s.as_bytes().to_vec()).unwrap();
        let a = derive_root_key(&p("pw"), b"salt-salt-salt-1", &FAST).unwrap();
        let b = derive_root_key(&p("pw"), b"salt-salt-salt-1", &FAST).unwrap();
        let c = derive_root_key(&p("pw"), b"salt-salt-salt-2", &FAST).unwrap();
        let d = derive_root_key(&p("pW"), b"salt-salt-salt-1", &FAST).unwrap();
        assert_eq!(*a, *b);
        assert_ne!(*a, *c);
        assert_ne!(*a, *d);
    }

    #[test]
    fn verifier_rejects_other_keys() {
        let k1 = StoreKeys::derive(&cryptocore::random_key().unwrap(), b"id");
        let k2 = StoreKeys::derive(&cryptocore::random_key().unwrap(), b"id");
        assert!(k1.check_verifier(&k1.verifier_tag()).is_ok());
        assert_eq!(
            k2.check_verifier(&k1.verifier_tag()).unwrap_err().kind,
            ErrorKind::WrongPassphrase
        );
    }

    #[test]
    fn key_file_forms() {
        let d = tempfile::tempdir().unwrap();
        let raw = d.path().join("raw");
        std::fs::write(&raw, [7u8; 32]).unwrap();
        assert!(
            matches!(RootSecret::key_from_file(&raw).unwrap(), RootSecret::KeyFile(k) if *k == [7u8; 32])
        );
        let hexf = d.path().join("hex");
        std::fs::write(&hexf, format!("{}\n", "07".repeat(32))).unwrap();
        assert!(
            matches!(RootSecret::key_from_file(&hexf).unwrap(), RootSecret::KeyFile(k) if *k == [7u8; 32])
        );
        let short = d.path().join("short");
        std::fs::write(&short, [7u8; 31]).unwrap();
        assert!(RootSecret::key_from_file(&short).is_err());
        let pw = d.path().join("pw");
        std::fs::write(&pw, "secret\nignored").unwrap();
        assert!(
            matches!(RootSecret::passphrase_from_file(&pw).unwrap(), RootSecret::Passphrase(p) if &p[..] == b"secret")
        );
        std::fs::write(&pw, "\n").unwrap();
        assert!(RootSecret::passphrase_from_file(&pw).is_err());
    }

    #[test]
    fn kdf_bounds() {
        assert!(FAST.validate().is_ok());
        assert!(
            KdfParams {
                memory_kib: 1024,
                ..FAST
            }
            .validate()
            .is_err()
        );
        assert!(
            KdfParams {
                iterations: 0,
                ..FAST
            }
            .validate()
            .is_err()
        );
    }
}
