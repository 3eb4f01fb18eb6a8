//! GetParametersForImport and wrapped ImportKeyMaterial, as AWS: the caller gets a fresh RSA
//! wrapping public key and an opaque token, encrypts its 256-bit material to that key with
//! RSA-OAEP, and sends both back. The token is the wrapping private key sealed under the key
//! store (bound to the CMK), with its expiry; nothing is stored between the two calls.

use crate::error::{ErrorKind, KmsError, Result};
use crate::kms::caller::Caller;
use crate::kms::context::EncryptionContext;
use crate::kms::keypair;
use crate::kms::keyspec::{EncryptionAlgorithm, KeySpec};
use crate::kms::service::Kms;
use chrono::{DateTime, Duration, Utc};
use zeroize::Zeroizing;

/// How long import parameters stay valid (AWS: 24 hours).
pub const IMPORT_TOKEN_HOURS: i64 = 24;

pub struct ImportParameters {
    pub key_id: uuid::Uuid,
    pub import_token: Vec<u8>,
    pub public_key: Vec<u8>,
    pub valid_to: DateTime<Utc>,
}

fn alg_byte(a: EncryptionAlgorithm) -> u8 {
    match a {
        EncryptionAlgorithm::RsaesOaepSha1 => 1,
        _ => 2,
    }
}

impl Kms {
    pub fn get_parameters_for_import(
        &self,
        caller: &Caller,
        key: &str,
        wrapping: EncryptionAlgorithm,
        wrapping_spec: KeySpec,
    ) -> Result<ImportParameters> {
        if wrapping == EncryptionAlgorithm::SymmetricDefault || !wrapping_spec.is_rsa() {
            return Err(KmsError::validation(
                "wrapping: RSAES_OAEP_SHA_1 or RSAES_OAEP_SHA_256 with RSA_2048, RSA_3072 or RSA_4096",
            ));
        }
        // Key generation outside the store lock (RSA_4096 takes a while), and only for a caller
        // the policy allows.
        self.precheck(
            caller,
            key,
            "kms:GetParametersForImport",
            &EncryptionContext::default(),
            |t, id| t.check_importable(id),
        )?;
        let private = keypair::generate(wrapping_spec)?;
        let public_key = keypair::public_key_der(wrapping_spec, &private)?;
        self.run(caller, "GetParametersForImport", |t, d| {
            let id = t.resolve(key, d)?;
            t.authorize(
                id,
                "kms:GetParametersForImport",
                &EncryptionContext::default(),
            )?;
            t.check_importable(id)?;
            let valid_to = t.now + Duration::hours(IMPORT_TOKEN_HOURS);
            let mut plain = Zeroizing::new(Vec::with_capacity(private.len() + 10));
            plain.extend_from_slice(&valid_to.timestamp().to_be_bytes());
            plain.push(alg_byte(wrapping));
            plain.push(match wrapping_spec {
                KeySpec::Rsa2048 => 1,
                KeySpec::Rsa3072 => 2,
                _ => 3,
            });
            plain.extend_from_slice(&private);
            Ok(ImportParameters {
                key_id: id,
                import_token: t.store.seal_import_token(&id, &plain)?,
                public_key: public_key.clone(),
                valid_to,
            })
        })
    }

    /// Opens an import token, decrypts the wrapped material with it and imports the material:
    /// one audited transaction, authorized before the token is even opened.
    pub fn import_wrapped_key_material(
        &self,
        caller: &Caller,
        key: &str,
        import_token: &[u8],
        encrypted_material: &[u8],
    ) -> Result<()> {
        self.run(caller, "ImportKeyMaterial", |t, d| {
            let id = t.resolve(key, d)?;
            t.authorize(id, "kms:ImportKeyMaterial", &EncryptionContext::default())?;
            let bad_token = |why: &str| {
                KmsError::new(
                    ErrorKind::InvalidImportToken,
                    format!("the import token {why}: call GetParametersForImport for key {id}"),
                )
            };
            let plain = t
                .store
                .unseal_import_token(&id, import_token)
                .map_err(|_| bad_token("was not issued for this key by this key store"))?;
            if plain.len() < 10 {
                return Err(bad_token("is damaged"));
            }
            let mut ts = [0u8; 8];
            ts.copy_from_slice(&plain[..8]);
            let valid_to = DateTime::from_timestamp(i64::from_be_bytes(ts), 0).unwrap_or_default();
            if t.now > valid_to {
                return Err(KmsError::new(
                    ErrorKind::ExpiredImportToken,
                    "the import token has expired: call GetParametersForImport again",
                ));
            }
            let alg = if plain[8] == 1 {
                EncryptionAlgorithm::RsaesOaepSha1
            } else {
                EncryptionAlgorithm::RsaesOaepSha256
            };
            let material = keypair::rsa_decrypt(&plain[10..], alg, encrypted_material)?;
            t.import_material(id, &material, d)
        })
    }
}
